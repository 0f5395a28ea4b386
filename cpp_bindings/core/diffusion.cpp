#include "diffusion.hpp"

#include <algorithm>
#include <cmath>

namespace unmix {

namespace {
constexpr double kCosineS = 0.008;
constexpr double kMaxBeta = 0.999;
constexpr double kPi = 3.141592653589793;
constexpr double kTwoPi = 6.283185307179586;
constexpr double kTwoPowMinus32 = 1.0 / 4294967296.0;
}  // namespace

const char* const kTableColumnNames[kTableColumns] = {
    "sqrt_alpha_bar_t", "sqrt_one_minus_alpha_bar_t", "sqrt_alpha_bar_prev", "dir_coef", "sigma", "x0_from_x",
    "x0_from_out"};

void Schedule::validate() const {
    if (kind != "linear" && kind != "cosine")
        throw UsageError("schedule kind must be one of linear, cosine, got '" + kind + "'");
    if (prediction != "epsilon" && prediction != "v")
        throw UsageError("schedule prediction must be one of epsilon, v, got '" + prediction + "'");
    if (T < 2) throw UsageError("schedule T must be >= 2, got " + std::to_string(T));
    if (!(std::isfinite(beta_start) && std::isfinite(beta_end) && 0.0 < beta_start && beta_start <= beta_end &&
          beta_end < 1.0))
        throw UsageError("schedule betas must satisfy 0 < beta_start <= beta_end < 1");
}

std::vector<double> Schedule::betas() const {
    validate();
    std::vector<double> out(static_cast<size_t>(T));
    if (kind == "linear") {
        double step = (beta_end - beta_start) / (T - 1);
        for (int t = 0; t < T; ++t) out[t] = beta_start + static_cast<double>(t) * step;
        return out;
    }
    std::vector<double> f(static_cast<size_t>(T) + 1);
    for (int s = 0; s <= T; ++s) {
        double c = std::cos((static_cast<double>(s) / T + kCosineS) / (1.0 + kCosineS) * (kPi / 2.0));
        f[s] = c * c;
    }
    for (int t = 0; t < T; ++t) out[t] = std::min(1.0 - f[t + 1] / f[t], kMaxBeta);
    return out;
}

std::vector<double> Schedule::alphas_cumprod() const {
    std::vector<double> b = betas();
    double product = 1.0;
    for (auto& value : b) {
        product *= 1.0 - value;
        value = product;
    }
    return b;
}

std::vector<int64_t> ddim_timesteps(int T, int K, int t0) {
    if (T < 2) throw UsageError("T must be >= 2, got " + std::to_string(T));
    if (K < 1) throw UsageError("K (DDIM steps) must be >= 1, got " + std::to_string(K));
    if (t0 < 0) t0 = T - 1;
    if (t0 > T - 1) throw UsageError("t0 must be in 0.." + std::to_string(T - 1) + ", got " + std::to_string(t0));
    if (K > t0 + 1)
        throw UsageError("K (DDIM steps) must be <= t0 + 1 = " + std::to_string(t0 + 1) + ", got " +
                         std::to_string(K));
    std::vector<int64_t> out(static_cast<size_t>(K));
    for (int64_t i = 0; i < K; ++i) out[i] = (2 * int64_t(t0 + 1) * (K - i) + K) / (2 * int64_t(K)) - 1;
    return out;
}

std::vector<float> DDIMCoefficients::table() const {
    const int K = steps();
    std::vector<float> out(static_cast<size_t>(K) * kTableColumns);
    for (int i = 0; i < K; ++i)
        for (int c = 0; c < kTableColumns; ++c) out[size_t(i) * kTableColumns + c] = static_cast<float>(columns[c][i]);
    return out;
}

DDIMCoefficients ddim_coefficients(const Schedule& schedule, const std::vector<int64_t>& timesteps, double eta) {
    if (!std::isfinite(eta) || eta < 0.0 || eta > 1.0) throw UsageError("eta must be in [0, 1]");
    if (timesteps.empty()) throw UsageError("timesteps must be a non-empty 1D sequence");
    for (size_t i = 0; i < timesteps.size(); ++i) {
        if (timesteps[i] < 0 || timesteps[i] > schedule.T - 1)
            throw UsageError("timesteps must be in 0.." + std::to_string(schedule.T - 1));
        if (i && timesteps[i] >= timesteps[i - 1]) throw UsageError("timesteps must be strictly descending");
    }
    const std::vector<double> cumprod = schedule.alphas_cumprod();
    auto alpha_bar = [&](int64_t t) { return t < 0 ? 1.0 : cumprod[static_cast<size_t>(t)]; };
    DDIMCoefficients c;
    c.timesteps = timesteps;
    const size_t K = timesteps.size();
    c.prev_timesteps.resize(K);
    for (size_t i = 0; i < K; ++i) c.prev_timesteps[i] = i + 1 < K ? timesteps[i + 1] : -1;
    c.alpha_bar_t.resize(K);
    c.alpha_bar_prev.resize(K);
    for (auto& column : c.columns) column.resize(K);
    const bool epsilon = schedule.prediction == "epsilon";
    for (size_t i = 0; i < K; ++i) {
        double a = alpha_bar(timesteps[i]);
        double p = alpha_bar(c.prev_timesteps[i]);
        double sigma = eta * std::sqrt((1.0 - p) / (1.0 - a)) * std::sqrt(1.0 - a / p);
        double dir = std::sqrt(std::max(1.0 - p - sigma * sigma, 0.0));
        double sqrt_a = std::sqrt(a), sqrt_1ma = std::sqrt(1.0 - a), sqrt_p = std::sqrt(p);
        const double x0_from_x = epsilon ? 1.0 / sqrt_a : sqrt_a;
        const double x0_from_out = epsilon ? -sqrt_1ma / sqrt_a : -sqrt_1ma;
        c.alpha_bar_t[i] = a;
        c.alpha_bar_prev[i] = p;
        double values[kTableColumns];
        values[kSqrtAlphaBarT] = sqrt_a;
        values[kSqrtOneMinusAlphaBarT] = sqrt_1ma;
        values[kSqrtAlphaBarPrev] = sqrt_p;
        values[kDirCoef] = dir;
        values[kSigma] = sigma;
        values[kX0FromX] = x0_from_x;
        values[kX0FromOut] = x0_from_out;
        for (int col = 0; col < kTableColumns; ++col) c.columns[col][i] = values[col];
    }
    return c;
}

void ddim_step(const DDIMCoefficients& c, const std::string& prediction, int i, const double* x_t, const double* out,
               const double* noise, double* x_prev, size_t n) {
    if (i < 0 || i >= c.steps()) throw UsageError("step index must be < K = " + std::to_string(c.steps()));
    const double a = c.alpha_bar_t[i], p = c.alpha_bar_prev[i], sigma = c.columns[kSigma][i];
    if (sigma > 0.0 && !noise) throw UsageError("DDIM step " + std::to_string(i) + " has sigma > 0 (eta > 0) and needs noise");
    const double dir = std::sqrt(std::max(1.0 - p - sigma * sigma, 0.0));
    for (size_t k = 0; k < n; ++k) {
        double x0, eps;
        if (prediction == "epsilon") {
            eps = out[k];
            x0 = (x_t[k] - std::sqrt(1.0 - a) * eps) / std::sqrt(a);
        } else {
            x0 = std::sqrt(a) * x_t[k] - std::sqrt(1.0 - a) * out[k];
            eps = std::sqrt(1.0 - a) * x_t[k] + std::sqrt(a) * out[k];
        }
        double next = std::sqrt(p) * x0 + dir * eps;
        if (sigma > 0.0) next = next + sigma * noise[k];
        x_prev[k] = next;
    }
}

// ---- Philox4x32-10 -------------------------------------------------------------------------------
std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> x, std::array<uint32_t, 2> key) {
    constexpr uint64_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; ++round) {
        if (round) {
            k0 += W0;
            k1 += W1;
        }
        uint64_t p0 = M0 * x[0];
        uint64_t p1 = M1 * x[2];
        x = {static_cast<uint32_t>(p1 >> 32) ^ x[1] ^ k0, static_cast<uint32_t>(p1),
             static_cast<uint32_t>(p0 >> 32) ^ x[3] ^ k1, static_cast<uint32_t>(p0)};
    }
    return x;
}

namespace {
void check_counters(uint32_t stream, uint32_t step, uint32_t sample) {
    if (stream > 255) throw UsageError("noise: stream must be in 0..255");
    if (step > 65535) throw UsageError("noise: step must be in 0..65535");
    if (sample > 65535) throw UsageError("noise: sample must be in 0..65535");
}

inline void box_muller(const std::array<uint32_t, 4>& w, float out[4]) {
    double u0 = (static_cast<double>(w[0]) + 0.5) * kTwoPowMinus32;
    double u1 = (static_cast<double>(w[1]) + 0.5) * kTwoPowMinus32;
    double u2 = (static_cast<double>(w[2]) + 0.5) * kTwoPowMinus32;
    double u3 = (static_cast<double>(w[3]) + 0.5) * kTwoPowMinus32;
    double r01 = std::sqrt(-2.0 * std::log(u0));
    double r23 = std::sqrt(-2.0 * std::log(u2));
    double a1 = kTwoPi * u1, a3 = kTwoPi * u3;
    out[0] = static_cast<float>(r01 * std::cos(a1));
    out[1] = static_cast<float>(r01 * std::sin(a1));
    out[2] = static_cast<float>(r23 * std::cos(a3));
    out[3] = static_cast<float>(r23 * std::sin(a3));
}

template <typename Store>
void window(uint64_t seed, uint32_t stream, uint32_t step, uint32_t sample, uint32_t row0, uint32_t rows,
            uint32_t col0, uint32_t cols, uint32_t channels, Store store) {
    check_counters(stream, step, sample);
    if (channels == 0) throw UsageError("noise: channels must be >= 1, got 0");
    const std::array<uint32_t, 2> key = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
    const uint32_t blocks = (channels + 3) / 4;
    const uint32_t c3 = (step << 16) | sample;
    float values[4];
    for (uint32_t i = 0; i < rows; ++i)
        for (uint32_t j = 0; j < cols; ++j)
            for (uint32_t b = 0; b < blocks; ++b) {
                box_muller(philox4x32_10({col0 + j, row0 + i, b | (stream << 24), c3}, key), values);
                for (uint32_t w = 0; w < 4 && 4 * b + w < channels; ++w) store(i, j, 4 * b + w, values[w]);
            }
}
}  // namespace

void gaussian_window(uint64_t seed, uint32_t stream, uint32_t step, uint32_t sample, uint32_t row0, uint32_t rows,
                     uint32_t col0, uint32_t cols, uint32_t channels, float* out) {
    window(seed, stream, step, sample, row0, rows, col0, cols, channels,
           [&](uint32_t i, uint32_t j, uint32_t c, float v) { out[(size_t(i) * cols + j) * channels + c] = v; });
}

void gaussian_window_chw(uint64_t seed, uint32_t stream, uint32_t step, uint32_t sample, uint32_t row0,
                         uint32_t rows, uint32_t col0, uint32_t cols, uint32_t channels, float* out) {
    window(seed, stream, step, sample, row0, rows, col0, cols, channels,
           [&](uint32_t i, uint32_t j, uint32_t c, float v) { out[(size_t(c) * rows + i) * cols + j] = v; });
}

void spectra_noise(uint64_t seed, uint32_t step, uint32_t sample, uint32_t endmembers, uint32_t bands, float* out) {
    gaussian_window(seed, kStreamSpectra, step, sample, 0, endmembers, 0, bands, 1, out);
}

uint32_t counter_step(int steps, int index, int round_index) {
    if (steps < 1 || steps > 65535) throw UsageError("noise: steps must be in 1..65535");
    if (round_index < 0 || round_index > 65535) throw UsageError("noise: round_index must be in 0..65535");
    if (index < -1 || index >= steps) throw UsageError("noise: index must be in 0..steps-1");
    int64_t value = int64_t(round_index) * (steps + 1) + (index + 1);
    if (value >= 65536)
        throw UsageError("noise: counter step " + std::to_string(value) + " exceeds 65535");
    return static_cast<uint32_t>(value);
}

// ---- tiling --------------------------------------------------------------------------------------
std::vector<int> tile_starts(int size, int tile, int overlap) {
    if (size < 1 || tile < 1 || overlap < 0) throw UsageError("tile_starts: size, tile >= 1 and overlap >= 0");
    if (overlap >= tile) throw UsageError("overlap must be smaller than the tile");
    if (size <= tile) return {0};
    std::vector<int> starts;
    const int stride = tile - overlap;
    for (int s = 0; s < size - tile; s += stride) starts.push_back(s);
    starts.push_back(size - tile);
    return starts;
}

std::vector<Tile> tile_grid(int height, int width, int tile, int overlap) {
    std::vector<Tile> grid;
    for (int r : tile_starts(height, tile, overlap))
        for (int c : tile_starts(width, tile, overlap))
            grid.push_back({r, c, std::min(tile, height), std::min(tile, width)});
    return grid;
}

std::vector<double> blend_window(int tile, int overlap) {
    if (tile < 1 || overlap < 0 || overlap >= tile) throw UsageError("blend_window: 0 <= overlap < tile");
    std::vector<double> w(static_cast<size_t>(tile));
    for (int i = 0; i < tile; ++i) {
        int d = std::min(i, tile - 1 - i);
        double s = std::sin(0.5 * kPi * (d + 1) / (overlap + 1));
        w[i] = d < overlap ? s * s : 1.0;
    }
    return w;
}

}  // namespace unmix
