#include "pipeline.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "manifest.hpp"

namespace unmix {

TensorView::TensorView(const char* name_, float* data_, std::initializer_list<int64_t> dims) : name(name_), data(data_) {
    if (dims.size() > 4) throw UsageError("TensorView: rank above 4");
    for (int64_t d : dims) shape[rank++] = d;
}

size_t TensorView::numel() const {
    size_t n = 1;
    for (int i = 0; i < rank; ++i) n *= static_cast<size_t>(shape[i]);
    return n;
}

void PipelineConfig::validate() const {
    if (steps < 1) throw UsageError("steps must be >= 1, got " + std::to_string(steps));
    if (t0 < 0) throw UsageError("t0 must be >= 0, got " + std::to_string(t0));
    if (!(eta >= 0.0 && eta <= 1.0)) throw UsageError("eta must be >= 0.0 and <= 1.0");
    if (samples < 1 || samples > 65535) throw UsageError("samples must be >= 1 and <= 65535");
    if (rounds < 1) throw UsageError("rounds must be >= 1");
    if (tile < 1) throw UsageError("tile must be >= 1");
    if (overlap < 0 || overlap >= tile)
        throw UsageError("overlap must be smaller than tile (" + std::to_string(tile) + "), got " + std::to_string(overlap));
    if (!(dc_weight >= 0.0) || !std::isfinite(dc_weight)) throw UsageError("dc_weight must be >= 0.0");
    if (spectra_steps < 1) throw UsageError("spectra_steps must be >= 1");
    if (spectra_t0 < 0) throw UsageError("spectra_t0 must be >= 0");
    if (!(spectra_eta >= 0.0 && spectra_eta <= 1.0)) throw UsageError("spectra_eta must be >= 0.0 and <= 1.0");
    counter_step(steps, steps - 1, rounds - 1);
    counter_step(spectra_steps, spectra_steps - 1, rounds - 1);
}

// ---- linear algebra ------------------------------------------------------------------------------

namespace {

// Solves G[P,P] z = c[P] by Gaussian elimination with partial pivoting; false when singular.
bool solve_subset(const std::vector<double>& G, const double* c, int p, const std::vector<int>& set, std::vector<double>& work,
                  std::vector<double>& z) {
    const int n = static_cast<int>(set.size());
    work.assign(static_cast<size_t>(n) * (n + 1), 0.0);
    double scale = 0.0;
    for (int i = 0; i < n; ++i) {
        for (int j = 0; j < n; ++j) {
            work[i * (n + 1) + j] = G[set[i] * p + set[j]];
            scale = std::max(scale, std::fabs(G[set[i] * p + set[j]]));
        }
        work[i * (n + 1) + n] = c[set[i]];
    }
    const double tiny = scale * 1e-13 * n;
    for (int col = 0; col < n; ++col) {
        int pivot = col;
        for (int r = col + 1; r < n; ++r)
            if (std::fabs(work[r * (n + 1) + col]) > std::fabs(work[pivot * (n + 1) + col])) pivot = r;
        if (!(std::fabs(work[pivot * (n + 1) + col]) > tiny)) return false;
        if (pivot != col)
            for (int k = 0; k <= n; ++k) std::swap(work[col * (n + 1) + k], work[pivot * (n + 1) + k]);
        for (int r = col + 1; r < n; ++r) {
            double f = work[r * (n + 1) + col] / work[col * (n + 1) + col];
            for (int k = col; k <= n; ++k) work[r * (n + 1) + k] -= f * work[col * (n + 1) + k];
        }
    }
    z.assign(static_cast<size_t>(n), 0.0);
    for (int i = n - 1; i >= 0; --i) {
        double s = work[i * (n + 1) + n];
        for (int k = i + 1; k < n; ++k) s -= work[i * (n + 1) + k] * z[k];
        z[i] = s / work[i * (n + 1) + i];
    }
    return true;
}

void nnls_gram(const std::vector<double>& G, const double* c, int p, double* e) {
    std::vector<char> passive(static_cast<size_t>(p), 0);
    std::vector<double> x(static_cast<size_t>(p), 0.0), w(static_cast<size_t>(p)), z, work;
    std::vector<int> set;
    double gmax = 0.0;
    for (double g : G) gmax = std::max(gmax, std::fabs(g));
    double cmax = 0.0;
    for (int i = 0; i < p; ++i) cmax = std::max(cmax, std::fabs(c[i]));
    const double tol = 10.0 * std::numeric_limits<double>::epsilon() * p * std::max(gmax, cmax);
    for (int outer = 0; outer < 3 * p + 3; ++outer) {
        int best = -1;
        double best_w = tol;
        for (int j = 0; j < p; ++j) {
            double s = c[j];
            for (int k = 0; k < p; ++k) s -= G[j * p + k] * x[k];
            w[j] = s;
            if (!passive[j] && s > best_w) {
                best_w = s;
                best = j;
            }
        }
        if (best < 0) break;
        passive[best] = 1;
        for (int inner = 0; inner < 3 * p + 3; ++inner) {
            set.clear();
            for (int j = 0; j < p; ++j)
                if (passive[j]) set.push_back(j);
            if (!solve_subset(G, c, p, set, work, z)) {  // singular: drop the newest index and stop
                passive[best] = 0;
                break;
            }
            bool feasible = true;
            for (double v : z) feasible = feasible && v > 0.0;
            if (feasible) {
                std::fill(x.begin(), x.end(), 0.0);
                for (size_t i = 0; i < set.size(); ++i) x[set[i]] = z[i];
                break;
            }
            double alpha = 1.0;
            for (size_t i = 0; i < set.size(); ++i)
                if (z[i] <= 0.0) alpha = std::min(alpha, x[set[i]] / (x[set[i]] - z[i]));
            for (size_t i = 0; i < set.size(); ++i) {
                x[set[i]] += alpha * (z[i] - x[set[i]]);
                if (x[set[i]] <= 1e-300 || (z[i] <= 0.0 && x[set[i]] <= 0.0)) {
                    x[set[i]] = 0.0;
                    passive[set[i]] = 0;
                }
            }
        }
    }
    for (int i = 0; i < p; ++i) e[i] = std::max(x[i], 0.0);
}

}  // namespace

std::vector<double> nnls_endmembers(const std::vector<double>& AtA, const std::vector<double>& AtY, int p, int B) {
    if (static_cast<int>(AtA.size()) != p * p || static_cast<int>(AtY.size()) != p * B)
        throw UsageError("nnls_endmembers: AtA must be (p, p) and AtY (p, B)");
    std::vector<double> G(static_cast<size_t>(p) * p);
    for (int i = 0; i < p; ++i)
        for (int j = 0; j < p; ++j) G[i * p + j] = 0.5 * (AtA[i * p + j] + AtA[j * p + i]);
    for (double v : G)
        if (!std::isfinite(v)) throw InputError("endmembers_from_abundances: AtA and AtY must be finite");
    std::vector<double> E(static_cast<size_t>(p) * B), c(static_cast<size_t>(p)), e(static_cast<size_t>(p));
    for (int b = 0; b < B; ++b) {
        for (int k = 0; k < p; ++k) {
            c[k] = AtY[k * B + b];
            if (!std::isfinite(c[k])) throw InputError("endmembers_from_abundances: AtA and AtY must be finite");
        }
        nnls_gram(G, c.data(), p, e.data());
        for (int k = 0; k < p; ++k) E[k * B + b] = e[k];
    }
    return E;
}

void project_simplex(double* v, int p) {
    double u[64];
    std::vector<double> big;
    double* sorted = u;
    if (p > 64) {
        big.resize(static_cast<size_t>(p));
        sorted = big.data();
    }
    for (int k = 0; k < p; ++k) {
        if (std::isnan(v[k])) {
            for (int j = 0; j < p; ++j) v[j] = std::numeric_limits<double>::quiet_NaN();
            return;
        }
        sorted[k] = v[k];
    }
    std::sort(sorted, sorted + p, [](double a, double b) { return a > b; });
    double css = 0.0, theta = 0.0;
    for (int k = 0; k < p; ++k) {
        css += sorted[k];
        double c = css - 1.0;
        if (sorted[k] * (k + 1) > c) theta = c / (k + 1);
    }
    for (int k = 0; k < p; ++k) v[k] = std::max(v[k] - theta, 0.0);
}

// ---- the pipeline ----------------------------------------------------------------------------------

namespace {
constexpr int kStatisticsBlock = 256;
constexpr double kMinScale = 1e-6;

struct Blender {
    int H, W, C, T;
    std::vector<double> weights, sum, weight_sum;
    Blender(int H_, int W_, int C_, int T_, int overlap) : H(H_), W(W_), C(C_), T(T_) {
        std::vector<double> w = blend_window(T, overlap);
        weights.resize(static_cast<size_t>(T) * T);
        for (int i = 0; i < T; ++i)
            for (int j = 0; j < T; ++j) weights[i * T + j] = w[i] * w[j];
        sum.assign(static_cast<size_t>(H) * W * C, 0.0);
        weight_sum.assign(static_cast<size_t>(H) * W, 0.0);
    }
    void reset() {
        std::fill(sum.begin(), sum.end(), 0.0);
        std::fill(weight_sum.begin(), weight_sum.end(), 0.0);
    }
    // values (h, w, C) float32-valued doubles or floats via accessor
    template <typename Get>
    void add(const Tile& tile, Get get) {
        for (int i = 0; i < tile.height; ++i)
            for (int j = 0; j < tile.width; ++j) {
                const double wt = weights[i * T + j];
                const size_t pixel = static_cast<size_t>(tile.row0 + i) * W + (tile.col0 + j);
                for (int c = 0; c < C; ++c) sum[pixel * C + c] += wt * static_cast<double>(get(i, j, c));
                weight_sum[pixel] += wt;
            }
    }
    // result as float32 (H, W, C)
    void result(float* out) const {
        for (size_t pixel = 0; pixel < weight_sum.size(); ++pixel) {
            if (!(weight_sum[pixel] > 0)) throw UsageError("some pixels were covered by no tile");
            for (int c = 0; c < C; ++c) out[pixel * C + c] = static_cast<float>(sum[pixel * C + c] / weight_sum[pixel]);
        }
    }
};

bool pixel_valid(const float* y, int B) {
    for (int b = 0; b < B; ++b)
        if (!std::isfinite(y[b])) return false;
    return true;
}

// (h, w, C) window of an (H, W, C) image -> padded channel-first (C, T, T), edge rows/cols repeated.
void channels_first(const float* image, int W, int C, const Tile& tile, int T, float* out) {
    for (int i = 0; i < T; ++i) {
        const int r = tile.row0 + std::min(i, tile.height - 1);
        for (int j = 0; j < T; ++j) {
            const int c = tile.col0 + std::min(j, tile.width - 1);
            const float* src = image + (static_cast<size_t>(r) * W + c) * C;
            for (int k = 0; k < C; ++k) out[(static_cast<size_t>(k) * T + i) * T + j] = src[k];
        }
    }
}

struct Statistics {
    std::vector<double> AtA, AtY;
    long long count = 0;
};

// AtA, AtY over valid pixels in blocks of kStatisticsBlock; with E also the (H, W) RMSE (NaN invalid).
void statistics(const float* cube, const std::vector<char>& mask, const float* A, int H, int W, int B, int p,
                const double* E, float* rmse, Statistics& s, std::vector<double>& work) {
    s.AtA.assign(static_cast<size_t>(p) * p, 0.0);
    s.AtY.assign(static_cast<size_t>(p) * B, 0.0);
    s.count = 0;
    std::vector<double>& blockAtA = work;
    blockAtA.assign(static_cast<size_t>(p) * p + static_cast<size_t>(p) * B + p, 0.0);
    double* blockAtY = blockAtA.data() + p * p;
    double* a = blockAtY + p * B;
    for (int r0 = 0; r0 < H; r0 += kStatisticsBlock)
        for (int c0 = 0; c0 < W; c0 += kStatisticsBlock) {
            std::fill(blockAtA.begin(), blockAtA.begin() + p * p + p * B, 0.0);
            for (int r = r0; r < std::min(H, r0 + kStatisticsBlock); ++r)
                for (int c = c0; c < std::min(W, c0 + kStatisticsBlock); ++c) {
                    const size_t pixel = static_cast<size_t>(r) * W + c;
                    if (!mask[pixel]) {
                        if (rmse) rmse[pixel] = std::numeric_limits<float>::quiet_NaN();
                        continue;
                    }
                    const float* y = cube + pixel * B;
                    for (int k = 0; k < p; ++k) a[k] = static_cast<double>(A[pixel * p + k]);
                    for (int k = 0; k < p; ++k) {
                        for (int l = 0; l < p; ++l) blockAtA[k * p + l] += a[k] * a[l];
                        for (int b = 0; b < B; ++b) blockAtY[k * B + b] += a[k] * static_cast<double>(y[b]);
                    }
                    ++s.count;
                    if (E && rmse) {
                        double total = 0.0;
                        for (int b = 0; b < B; ++b) {
                            double model = 0.0;
                            for (int k = 0; k < p; ++k) model += a[k] * E[k * B + b];
                            double d = static_cast<double>(y[b]) - model;
                            total += d * d;
                        }
                        rmse[pixel] = static_cast<float>(std::sqrt(total / B));
                    }
                }
            for (int i = 0; i < p * p; ++i) s.AtA[i] += blockAtA[i];
            for (int i = 0; i < p * B; ++i) s.AtY[i] += blockAtY[i];
        }
    if (s.count == 0) throw InputError("the cube: no pixel is finite in every band; nothing to unmix");
}

}  // namespace

Pipeline::Pipeline(Backend& backend, const Schedule& schedule, int bands, int endmembers, int tile)
    : backend_(backend), schedule_(schedule), B_(bands), p_(endmembers), T_(tile) {
    schedule_.validate();
    if (B_ < 1 || p_ < 2 || T_ < 1) throw UsageError("Pipeline: bands >= 1, endmembers >= 2 and tile >= 1");
}

void Pipeline::run(const float* cube, int H, int W, const PipelineConfig& cfg, float* abundances_out,
                   float* endmembers_out, float* rmse_out) {
    if (!cube || !abundances_out || !endmembers_out || !rmse_out) throw UsageError("null buffer");
    if (H < 1 || W < 1) throw UsageError("the cube must have H >= 1 and W >= 1");
    cfg.validate();
    if (cfg.tile != T_)
        throw UsageError("the networks were built for " + std::to_string(T_) + "x" + std::to_string(T_) +
                         " tiles, but the tile setting is " + std::to_string(cfg.tile));
    const int B = B_, p = p_, T = T_, K = cfg.steps, S = cfg.samples;
    const size_t TT = static_cast<size_t>(T) * T, HW = static_cast<size_t>(H) * W;
    // Fail on bad step settings before any work.
    const std::vector<int64_t> timesteps = ddim_timesteps(schedule_.T, K, cfg.t0);
    const std::vector<float> table = ddim_coefficients(schedule_, timesteps, cfg.eta).table();
    std::vector<int64_t> spectra_timesteps;
    std::vector<float> spectra_table;
    if (cfg.refine_spectra) {
        spectra_timesteps = ddim_timesteps(schedule_.T, cfg.spectra_steps, cfg.spectra_t0);
        spectra_table = ddim_coefficients(schedule_, spectra_timesteps, cfg.spectra_eta).table();
    }
    const std::vector<Tile> grid = tile_grid(H, W, T, cfg.overlap);
    stats_ = PipelineStats{};

    // Every buffer the loops use, allocated once.
    std::vector<char> mask(HW);
    std::vector<float> clean(HW * B);  // the cube with invalid pixels set to 0 (fed to the networks)
    for (size_t pixel = 0; pixel < HW; ++pixel) {
        mask[pixel] = pixel_valid(cube + pixel * B, B);
        for (int b = 0; b < B; ++b) clean[pixel * B + b] = mask[pixel] ? cube[pixel * B + b] : 0.0f;
    }
    std::vector<float> tile_cube(B * TT), tile_out(p * TT), A(HW * p), current(HW * p, 0.0f);
    std::vector<float> x_a(p * TT), x_b(p * TT), x0(p * TT), z(p * TT), zeros(p * TT, 0.0f), work_tile(TT * B);
    std::vector<double> sample_sum(TT * p);
    float t_value[1] = {0.0f};
    float coef[kTableColumns];
    float dc = static_cast<float>(cfg.dc_weight);
    Blender blender(H, W, p, T, cfg.overlap);
    Statistics st;
    std::vector<double> stats_work;
    std::vector<float> E32(static_cast<size_t>(p) * B);
    std::vector<float> s_x_a(static_cast<size_t>(p) * B), s_x_b(static_cast<size_t>(p) * B), s_noise(static_cast<size_t>(p) * B);
    std::vector<float> s_AtA(static_cast<size_t>(p) * p), s_AtY(static_cast<size_t>(p) * B), s_scale(static_cast<size_t>(p));
    std::vector<float> s_t(static_cast<size_t>(p));
    std::vector<double> refined(p);

    // Network I/O views, built once; only data pointers change inside the loops.
    std::vector<TensorView> h_in = {TensorView("cube", tile_cube.data(), {1, B, T, T})};
    std::vector<TensorView> h_out = {TensorView("abundances", tile_out.data(), {1, p, T, T})};
    std::vector<TensorView> a_in = {TensorView("x_t", x_a.data(), {1, p, T, T}), TensorView("t", t_value, {1}),
                                    TensorView("coef", coef, {kTableColumns}),
                                    TensorView("noise", zeros.data(), {1, p, T, T}),
                                    TensorView("cube", tile_cube.data(), {1, B, T, T}),
                                    TensorView("endmembers", E32.data(), {p, B}), TensorView("dc_weight", &dc, {1})};
    std::vector<TensorView> a_out = {TensorView("x_prev", x_b.data(), {1, p, T, T})};
    std::vector<TensorView> s_in = {
        TensorView("x_t", s_x_a.data(), {p, 1, B}),      TensorView("t", s_t.data(), {p}),
        TensorView("coef", coef, {kTableColumns}),        TensorView("noise", s_noise.data(), {p, 1, B}),
        TensorView("AtA", s_AtA.data(), {p, p}),          TensorView("AtY", s_AtY.data(), {p, B}),
        TensorView("scale", s_scale.data(), {p}),         TensorView("dc_weight", &dc, {1})};
    std::vector<TensorView> s_out = {TensorView("x_prev", s_x_b.data(), {p, 1, B})};

    // Pass 1: HybridSTU tile by tile, blended.
    for (const Tile& tile : grid) {
        channels_first(clean.data(), W, B, tile, T, tile_cube.data());
        backend_.run(hybridstu_, h_in, h_out);
        ++stats_.network_calls;
        blender.add(tile, [&](int i, int j, int k) { return tile_out[(static_cast<size_t>(k) * T + i) * T + j]; });
    }
    blender.result(A.data());

    statistics(cube, mask, A.data(), H, W, B, p, nullptr, nullptr, st, stats_work);
    std::vector<double> E = nnls_endmembers(st.AtA, st.AtY, p, B);

    for (int round = 0; round < cfg.rounds; ++round) {
        if (round > 0) E = nnls_endmembers(st.AtA, st.AtY, p, B);
        if (cfg.refine_spectra) {
            const int KS = cfg.spectra_steps;
            for (int k = 0; k < p; ++k) {
                double m = E[k * B];
                for (int b = 1; b < B; ++b) m = std::max(m, E[k * B + b]);
                s_scale[k] = static_cast<float>(std::max(m, kMinScale));
            }
            spectra_noise(cfg.seed, counter_step(KS, -1, round), 0, p, B, s_noise.data());
            const float c2 = spectra_table[2], c3 = spectra_table[3];
            for (int k = 0; k < p; ++k)
                for (int b = 0; b < B; ++b) {
                    const float e = static_cast<float>(E[k * B + b]);
                    const float x0v = 2.0f * e / s_scale[k] - 1.0f;
                    const float lhs = c2 * x0v, rhs = c3 * s_noise[k * B + b];
                    s_x_a[k * B + b] = lhs + rhs;
                }
            for (int i = 0; i < p * p; ++i) s_AtA[i] = static_cast<float>(st.AtA[i] / static_cast<double>(st.count));
            for (int i = 0; i < p * B; ++i) s_AtY[i] = static_cast<float>(st.AtY[i] / static_cast<double>(st.count));
            float* cur = s_x_a.data();
            float* next = s_x_b.data();
            for (int i = 0; i < KS; ++i) {
                for (int c = 0; c < kTableColumns; ++c) coef[c] = spectra_table[i * kTableColumns + c];
                if (coef[6] > 0.0f)
                    spectra_noise(cfg.seed, counter_step(KS, i, round), 0, p, B, s_noise.data());
                else
                    std::fill(s_noise.begin(), s_noise.end(), 0.0f);
                for (int k = 0; k < p; ++k) s_t[k] = static_cast<float>(spectra_timesteps[i]);
                s_in[0].data = cur;
                s_out[0].data = next;
                backend_.run(spectra_step_, s_in, s_out);
                ++stats_.network_calls;
                std::swap(cur, next);
            }
            for (int k = 0; k < p; ++k)
                for (int b = 0; b < B; ++b)
                    E[k * B + b] = std::max(static_cast<double>(s_scale[k]) *
                                                (static_cast<double>(cur[k * B + b]) + 1.0) / 2.0,
                                            0.0);
        }
        for (int i = 0; i < p * B; ++i) {
            E32[i] = static_cast<float>(E[i]);
            E[i] = static_cast<double>(E32[i]);  // the float32 E the step networks see
        }
        std::copy(A.begin(), A.end(), current.begin());

        // Pass 2: the 2D DDIM refinement of every tile, blended.
        blender.reset();
        for (const Tile& tile : grid) {
            // The tile's cube; invalid pixels get the current reconstruction A E.
            for (int i = 0; i < tile.height; ++i)
                for (int j = 0; j < tile.width; ++j) {
                    const size_t pixel = static_cast<size_t>(tile.row0 + i) * W + (tile.col0 + j);
                    float* y = work_tile.data() + (static_cast<size_t>(i) * T + j) * B;
                    if (mask[pixel]) {
                        std::copy(clean.begin() + pixel * B, clean.begin() + (pixel + 1) * B, y);
                    } else {
                        for (int b = 0; b < B; ++b) {
                            float v = 0.0f;
                            for (int k = 0; k < p; ++k) v += current[pixel * p + k] * E32[k * B + b];
                            y[b] = v;
                        }
                    }
                }
            const Tile local{0, 0, tile.height, tile.width};
            channels_first(work_tile.data(), T, B, local, T, tile_cube.data());
            channels_first(current.data() + 0, W, p, tile, T, x0.data());
            for (size_t n = 0; n < p * TT; ++n) x0[n] = 2.0f * x0[n] - 1.0f;
            std::fill(sample_sum.begin(), sample_sum.end(), 0.0);
            for (int s = 0; s < S; ++s) {
                gaussian_window_chw(cfg.seed, kStreamAbundance, counter_step(K, -1, round), static_cast<uint32_t>(s),
                                    static_cast<uint32_t>(tile.row0), T, static_cast<uint32_t>(tile.col0), T, p,
                                    z.data());
                const float c2 = table[2], c3 = table[3];
                for (size_t n = 0; n < p * TT; ++n) {
                    const float lhs = c2 * x0[n], rhs = c3 * z[n];
                    x_a[n] = lhs + rhs;
                }
                float* cur = x_a.data();
                float* next = x_b.data();
                for (int i = 0; i < K; ++i) {
                    for (int c = 0; c < kTableColumns; ++c) coef[c] = table[i * kTableColumns + c];
                    if (coef[6] > 0.0f) {
                        gaussian_window_chw(cfg.seed, kStreamAbundance, counter_step(K, i, round),
                                            static_cast<uint32_t>(s), static_cast<uint32_t>(tile.row0), T,
                                            static_cast<uint32_t>(tile.col0), T, p, z.data());
                        a_in[3].data = z.data();
                    } else {
                        a_in[3].data = zeros.data();
                    }
                    t_value[0] = static_cast<float>(timesteps[i]);
                    a_in[0].data = cur;
                    a_out[0].data = next;
                    backend_.run(abundance_step_, a_in, a_out);
                    ++stats_.network_calls;
                    std::swap(cur, next);
                }
                for (int i = 0; i < tile.height; ++i)
                    for (int j = 0; j < tile.width; ++j)
                        for (int k = 0; k < p; ++k)
                            sample_sum[(static_cast<size_t>(i) * T + j) * p + k] +=
                                (static_cast<double>(cur[(static_cast<size_t>(k) * T + i) * T + j]) + 1.0) / 2.0;
            }
            blender.add(tile, [&](int i, int j, int k) {
                double mean = sample_sum[(static_cast<size_t>(i) * T + j) * p + k];
                if (S > 1) mean /= S;
                return static_cast<float>(mean);
            });
        }
        blender.result(A.data());  // float32 before the projection
        for (size_t pixel = 0; pixel < HW; ++pixel) {
            for (int k = 0; k < p; ++k) refined[k] = static_cast<double>(A[pixel * p + k]);
            project_simplex(refined.data(), p);
            for (int k = 0; k < p; ++k) A[pixel * p + k] = static_cast<float>(refined[k]);
        }
        statistics(cube, mask, A.data(), H, W, B, p, E.data(), rmse_out, st, stats_work);
    }

    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (size_t pixel = 0; pixel < HW; ++pixel)
        for (int k = 0; k < p; ++k) abundances_out[pixel * p + k] = mask[pixel] ? A[pixel * p + k] : nan;
    std::copy(E32.begin(), E32.end(), endmembers_out);
}

}  // namespace unmix
