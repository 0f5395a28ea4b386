// DDIM schedule and coefficients (double), Philox4x32-10 Gaussian noise, tiles and blend weights.
// Same rules as unmix/diffusion/schedule.py, unmix/diffusion/noise.py and unmix/runtime/tiling.py.
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace unmix {

class UsageError : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

// ---- schedule ------------------------------------------------------------------------------------
struct Schedule {
    std::string kind = "cosine";  // "linear" | "cosine"
    int T = 1000;
    double beta_start = 1e-4;
    double beta_end = 0.02;
    std::string prediction = "epsilon";  // "epsilon" | "v"

    void validate() const;                     // throws UsageError
    std::vector<double> betas() const;         // (T,)
    std::vector<double> alphas_cumprod() const;  // (T,) sequential product of (1 - beta)
};

// The columns of the DDIM table a fused-step graph reads (its "coef" input), in the order and with the
// names of unmix.diffusion.schedule.Coef (the golden test checks kTableColumnNames against the golden
// files' table_columns, written from the Python list).
enum Coef : int {
    kSqrtAlphaBarT,         // sqrt(alpha_bar_t)
    kSqrtOneMinusAlphaBarT, // sqrt(1 - alpha_bar_t)
    kSqrtAlphaBarPrev,      // sqrt(alpha_bar_prev)
    kDirCoef,               // sqrt(1 - alpha_bar_prev - sigma^2)
    kSigma,
    kX0FromX,               // x0_hat = x0_from_x * x_t + x0_from_out * out
    kX0FromOut,
    kTableColumns
};

extern const char* const kTableColumnNames[kTableColumns];

std::vector<int64_t> ddim_timesteps(int T, int K, int t0 = -1);  // t0 = -1: T - 1

struct DDIMCoefficients {
    std::vector<int64_t> timesteps, prev_timesteps;
    std::vector<double> alpha_bar_t, alpha_bar_prev;         // each (K,)
    std::array<std::vector<double>, kTableColumns> columns;  // in Coef order, each (K,)
    int steps() const { return static_cast<int>(timesteps.size()); }
    std::vector<float> table() const;  // (K, kTableColumns) row-major float32
};

DDIMCoefficients ddim_coefficients(const Schedule& schedule, const std::vector<int64_t>& timesteps, double eta);

// DDIM step i in its explicit (reference) form, float64, over n values: x0_hat and eps_hat from the
// network output `out` (eps or v per `prediction`), then
// x_prev = sqrt(a_prev) x0_hat + sqrt(max(1 - a_prev - sigma^2, 0)) eps_hat + sigma z  (z unused when sigma = 0).
void ddim_step(const DDIMCoefficients& c, const std::string& prediction, int i, const double* x_t, const double* out,
               const double* noise, double* x_prev, size_t n);

// ---- noise ---------------------------------------------------------------------------------------
constexpr uint32_t kStreamAbundance = 0;
constexpr uint32_t kStreamSpectra = 1;

std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// Standard normals for the window rows x cols (global indices row0.., col0..), `channels` from 0:
// out[(i * cols + j) * channels + c]  (HWC, float32).
void gaussian_window(uint64_t seed, uint32_t stream, uint32_t step, uint32_t sample, uint32_t row0, uint32_t rows,
                     uint32_t col0, uint32_t cols, uint32_t channels, float* out);
// The same window written channel-first: out[(c * rows + i) * cols + j]  (CHW).
void gaussian_window_chw(uint64_t seed, uint32_t stream, uint32_t step, uint32_t sample, uint32_t row0,
                         uint32_t rows, uint32_t col0, uint32_t cols, uint32_t channels, float* out);
// (endmembers, bands) row-major: gaussian(seed, STREAM_SPECTRA, step, sample, rows=p, cols=B, channels=1).
void spectra_noise(uint64_t seed, uint32_t step, uint32_t sample, uint32_t endmembers, uint32_t bands, float* out);
uint32_t counter_step(int steps, int index /* -1: forward noising */, int round_index);

// ---- tiling --------------------------------------------------------------------------------------
struct Tile {
    int row0, col0, height, width;
};
std::vector<int> tile_starts(int size, int tile, int overlap);
std::vector<Tile> tile_grid(int height, int width, int tile, int overlap);
std::vector<double> blend_window(int tile, int overlap);

}  // namespace unmix
