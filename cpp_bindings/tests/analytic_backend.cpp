#include "analytic_backend.hpp"

#include <cmath>
#include <cstring>

namespace unmix {

namespace {
void expect(bool ok, const std::string& network, const char* what) {
    if (!ok) throw BackendError("analytic backend: network '" + network + "': " + what);
}

// inverse (p, p) of the symmetric matrix m (p, p) by Gauss-Jordan in gauss (p, 2p).
void invert(const double* m, int p, double* gauss, double* inverse, const std::string& network) {
    for (int i = 0; i < p; ++i)
        for (int j = 0; j < 2 * p; ++j) gauss[i * 2 * p + j] = j < p ? m[i * p + j] : (j - p == i ? 1.0 : 0.0);
    for (int c = 0; c < p; ++c) {
        int pivot = c;
        for (int r = c + 1; r < p; ++r)
            if (std::fabs(gauss[r * 2 * p + c]) > std::fabs(gauss[pivot * 2 * p + c])) pivot = r;
        expect(std::fabs(gauss[pivot * 2 * p + c]) > 1e-12, network, "singular Gram matrix");
        for (int k = 0; k < 2 * p; ++k) std::swap(gauss[c * 2 * p + k], gauss[pivot * 2 * p + k]);
        const double d = gauss[c * 2 * p + c];
        for (int k = 0; k < 2 * p; ++k) gauss[c * 2 * p + k] /= d;
        for (int r = 0; r < p; ++r)
            if (r != c) {
                const double f = gauss[r * 2 * p + c];
                for (int k = 0; k < 2 * p; ++k) gauss[r * 2 * p + k] -= f * gauss[c * 2 * p + k];
            }
    }
    for (int i = 0; i < p; ++i)
        for (int j = 0; j < p; ++j) inverse[i * p + j] = gauss[i * 2 * p + p + j];
}

// The fused step from x0_hat: x_prev = sqrt(a_prev) x0 + dir * (x_t - sqrt(a_t) x0) / sqrt(1 - a_t) + sigma z.
inline float step(const float* coef, float x_t, float x0, float noise) {
    const double eps = (double(x_t) - double(coef[kSqrtAlphaBarT]) * x0) / double(coef[kSqrtOneMinusAlphaBarT]);
    return static_cast<float>(double(coef[kSqrtAlphaBarPrev]) * x0 + double(coef[kDirCoef]) * eps +
                              double(coef[kSigma]) * noise);
}
}  // namespace

AnalyticBackend::AnalyticBackend(std::vector<float> spectra, int endmembers, int bands, float leak)
    : spectra_(std::move(spectra)), p_(endmembers), B_(bands), leak_(leak) {
    if (p_ < 1 || B_ < 1 || static_cast<int>(spectra_.size()) != p_ * B_)
        throw BackendError("analytic backend: spectra must be (p, B)");
    const size_t p = static_cast<size_t>(p_);
    inverse_.resize(p * p);
    gauss_.resize(2 * p * p);
    rhs_.resize(p * static_cast<size_t>(B_) + p * p);
    a_.resize(p);
}

// Per pixel of a (B, plane) channel-first cube: projected least-squares abundances against spectra
// (p, B), kept in the caller's loop through a_ (uses inverse_ computed for these spectra).
void AnalyticBackend::least_squares(const float* spectra_pb, const float* cube, size_t plane, int px) {
    const int p = p_;
    double* rhs = rhs_.data();
    for (int k = 0; k < p; ++k) {
        double s = 0.0;
        for (int b = 0; b < B_; ++b) s += double(spectra_pb[k * B_ + b]) * cube[b * plane + static_cast<size_t>(px)];
        rhs[k] = s;
    }
    for (int k = 0; k < p; ++k) {
        double s = 0.0;
        for (int l = 0; l < p; ++l) s += inverse_[k * p + l] * rhs[l];
        a_[k] = s;
    }
    project_simplex(a_.data(), p);
}

void AnalyticBackend::run(const std::string& network, const std::vector<TensorView>& in, std::vector<TensorView>& out) {
    ++calls_;
    const int p = p_, B = B_;
    auto gram_of = [&](const float* spectra) {
        double* gram = rhs_.data() + static_cast<size_t>(p) * B;
        for (int i = 0; i < p; ++i)
            for (int j = 0; j < p; ++j) {
                double s = 0.0;
                for (int b = 0; b < B; ++b) s += double(spectra[i * B + b]) * spectra[j * B + b];
                gram[i * p + j] = s;
            }
        invert(gram, p, gauss_.data(), inverse_.data(), network);
    };
    if (network == "hybridstu" || network == "abundance_step") {
        const bool head = network == "hybridstu";
        expect(in.size() == (head ? 1u : 7u) && out.size() == 1, network, "wrong number of inputs or outputs");
        const TensorView& cube = in[head ? 0 : 4];
        TensorView& result = out[0];
        expect(cube.rank == 4 && cube.shape[1] == B && result.rank == 4 && result.shape[1] == p &&
                   cube.shape[2] == result.shape[2] && cube.shape[3] == result.shape[3],
               network, "shapes must be cube (1, B, T, T) -> (1, p, T, T)");
        const float* spectra = head ? spectra_.data() : in[5].data;
        if (!head) expect(in[5].numel() == size_t(p) * B && in[2].numel() == kTableColumns && in[0].numel() == result.numel() &&
                              in[3].numel() == result.numel(), network, "endmembers (p, B), coef (kTableColumns,), x_t/noise (1, p, T, T)");
        gram_of(spectra);
        const size_t plane = static_cast<size_t>(cube.shape[2]) * cube.shape[3];
        for (size_t px = 0; px < plane; ++px) {
            least_squares(spectra, cube.data, plane, static_cast<int>(px));
            for (int k = 0; k < p; ++k) {
                const size_t at = k * plane + px;
                if (head) {
                    result.data[at] = static_cast<float>(a_[k]);
                } else {
                    const float x0 = static_cast<float>(2.0 * a_[k] - 1.0 + double(leak_) * in[0].data[at]);
                    result.data[at] = step(in[2].data, in[0].data[at], x0, in[3].data[at]);
                }
            }
        }
        return;
    }
    if (network == "spectra_step") {
        expect(in.size() == 8 && out.size() == 1, network, "expects 8 inputs and 1 output");
        expect(in[0].numel() == size_t(p) * B && out[0].numel() == in[0].numel() && in[3].numel() == in[0].numel() &&
                   in[2].numel() == kTableColumns && in[4].numel() == size_t(p) * p && in[5].numel() == size_t(p) * B &&
                   in[6].numel() == size_t(p),
               network, "x_t (p, 1, B), AtA (p, p), AtY (p, B), scale (p,)");
        double* gram = rhs_.data() + static_cast<size_t>(p) * B;
        for (int i = 0; i < p * p; ++i) gram[i] = in[4].data[i];
        invert(gram, p, gauss_.data(), inverse_.data(), network);
        for (int k = 0; k < p; ++k)
            for (int b = 0; b < B; ++b) {
                const size_t at = static_cast<size_t>(k) * B + b;
                double e = 0.0;
                for (int l = 0; l < p; ++l) e += inverse_[k * p + l] * in[5].data[l * B + b];
                const float x0 = static_cast<float>(2.0 * e / in[6].data[k] - 1.0 + double(leak_) * in[0].data[at]);
                out[0].data[at] = step(in[2].data, in[0].data[at], x0, in[3].data[at]);
            }
        return;
    }
    throw BackendError("analytic backend: unknown network '" + network + "'");
}

}  // namespace unmix
