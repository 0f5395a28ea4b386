// The per-tile arithmetic of unmix/runtime/pipeline.py, shared by Pipeline (whole buffer) and Stream
// (push-broom lines), so both give a tile the same inputs and get the same float32 values back:
//   hybridstu_tile  = the body of _first_pass for one tile
//   refine_tile     = the body of _refine_abundances for one tile (samples, mean and spread)
//   pixel_rmse      = the per-pixel RMSE of _statistics
// The callers own the blending (whole image or a ring of rows) and add tiles in the same order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "diffusion.hpp"
#include "pipeline.hpp"

namespace unmix {

constexpr double kMinSpectraScale = 1e-6;

// Valid when every band is finite.
bool pixel_valid(const float* y, int B);

// sqrt(mean_b (y_b - sum_k a_k E_kb)^2) in float64, a (p,) float32, E (p, B) float64.
float pixel_rmse(const float* y, const float* a, const double* E, int p, int B);

// The separable blend weights w(i) w(j), (T, T) row-major.
std::vector<double> blend_weights(int T, int overlap);

// A (h, w, C) window of rows -> padded channel-first (C, T, T); rows and columns past the window repeat
// its last one (pad_to_tile). row(i) returns the first pixel of the window's row i (C floats per pixel).
template <typename RowPointer>
void channels_first_rows(RowPointer row, int height, int width, int C, int T, float* out) {
    for (int i = 0; i < T; ++i) {
        const float* src_row = row(i < height ? i : height - 1);
        for (int j = 0; j < T; ++j) {
            const float* src = src_row + static_cast<size_t>(j < width ? j : width - 1) * C;
            for (int k = 0; k < C; ++k) out[(static_cast<size_t>(k) * T + i) * T + j] = src[k];
        }
    }
}

class TileSteps {
public:
    TileSteps(Backend& backend, const Schedule& schedule, int bands, int endmembers, int tile);

    // DDIM tables for cfg (throws UsageError on bad settings); call before the tile functions.
    void configure(const PipelineConfig& cfg);

    // Blended channels per pixel of refine_tile: p means, then the mean spread when samples > 1.
    int refine_channels() const { return p_ + (samples_ > 1 ? 1 : 0); }

    // (B, T, T) channel-first cube of the tile (invalid pixels 0) -> (p, T, T) HybridSTU abundances.
    float* cube_buffer() { return tile_cube_.data(); }
    const float* hybridstu_tile();  // runs on cube_buffer()

    // Pass 2 of one tile: cube_buffer() holds the tile's (B, T, T) cube (invalid pixels already replaced
    // by A E), x0_buffer() its current abundances (p, T, T) channel-first. endmembers (p, B) float32.
    // Returns (tile.height, tile.width, refine_channels()) float32 values, row-major.
    float* x0_buffer() { return x0_.data(); }
    const float* refine_tile(const Tile& tile, int round, const float* endmembers);

    long network_calls() const { return calls_; }

    // The 1D DDIM loop over the endmembers (_refine_spectra): E (p, B) float64 in and out.
    void refine_spectra(std::vector<double>& E, const std::vector<double>& AtA, const std::vector<double>& AtY,
                        long long count, int round);

private:
    Backend& backend_;
    Schedule schedule_;
    int B_, p_, T_;
    PipelineConfig cfg_;
    int samples_ = 1;
    long calls_ = 0;
    std::vector<int64_t> timesteps_, spectra_timesteps_;
    std::vector<float> table_, spectra_table_;
    // tile buffers, allocated once
    std::vector<float> tile_cube_, tile_out_, x_a_, x_b_, x0_, z_, zeros_, values_, E32_;
    std::vector<double> sample_sum_, spread_mean_, spread_m2_;
    float t_value_[1] = {0.0f};
    float coef_[kTableColumns] = {};
    float dc_ = 100.0f;
    float spectra_dc_ = 1.0f;
    std::vector<float> s_x_a_, s_x_b_, s_noise_, s_AtA_, s_AtY_, s_scale_, s_t_;
    std::vector<TensorView> h_in_, h_out_, a_in_, a_out_, s_in_, s_out_;
    const std::string hybridstu_ = "hybridstu", abundance_step_ = "abundance_step", spectra_step_ = "spectra_step";
};

}  // namespace unmix
