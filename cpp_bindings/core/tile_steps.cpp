#include "tile_steps.hpp"

#include <algorithm>
#include <cmath>

namespace unmix {

bool pixel_valid(const float* y, int B) {
    for (int b = 0; b < B; ++b)
        if (!std::isfinite(y[b])) return false;
    return true;
}

float pixel_rmse(const float* y, const float* a, const double* E, int p, int B) {
    double total = 0.0;
    for (int b = 0; b < B; ++b) {
        double model = 0.0;
        for (int k = 0; k < p; ++k) model += static_cast<double>(a[k]) * E[k * B + b];
        const double d = static_cast<double>(y[b]) - model;
        total += d * d;
    }
    return static_cast<float>(std::sqrt(total / B));
}

std::vector<double> blend_weights(int T, int overlap) {
    const std::vector<double> w = blend_window(T, overlap);
    std::vector<double> weights(static_cast<size_t>(T) * T);
    for (int i = 0; i < T; ++i)
        for (int j = 0; j < T; ++j) weights[static_cast<size_t>(i) * T + j] = w[i] * w[j];
    return weights;
}

TileSteps::TileSteps(Backend& backend, const Schedule& schedule, int bands, int endmembers, int tile)
    : backend_(backend), schedule_(schedule), B_(bands), p_(endmembers), T_(tile) {
    schedule_.validate();
    if (B_ < 1 || p_ < 2 || T_ < 1) throw UsageError("Pipeline: bands >= 1, endmembers >= 2 and tile >= 1");
    const int B = B_, p = p_, T = T_;
    const size_t TT = static_cast<size_t>(T) * T;
    tile_cube_.assign(B * TT, 0.0f);
    tile_out_.assign(p * TT, 0.0f);
    x_a_.assign(p * TT, 0.0f);
    x_b_.assign(p * TT, 0.0f);
    x0_.assign(p * TT, 0.0f);
    z_.assign(p * TT, 0.0f);
    zeros_.assign(p * TT, 0.0f);
    values_.assign((2 * p + 1) * TT, 0.0f);
    E32_.assign(static_cast<size_t>(p) * B, 0.0f);
    sample_sum_.assign(TT * p, 0.0);
    spread_mean_.assign(TT * p, 0.0);
    spread_m2_.assign(TT * p, 0.0);
    const size_t pB = static_cast<size_t>(p) * B;
    s_x_a_.assign(pB, 0.0f);
    s_x_b_.assign(pB, 0.0f);
    s_noise_.assign(pB, 0.0f);
    s_AtA_.assign(static_cast<size_t>(p) * p, 0.0f);
    s_AtY_.assign(pB, 0.0f);
    s_scale_.assign(p, 0.0f);
    s_t_.assign(p, 0.0f);
    // Network I/O views, built once; only data pointers change inside the loops.
    h_in_ = {TensorView("cube", tile_cube_.data(), {1, B, T, T})};
    h_out_ = {TensorView("abundances", tile_out_.data(), {1, p, T, T})};
    a_in_ = {TensorView("x_t", x_a_.data(), {1, p, T, T}),      TensorView("t", t_value_, {1}),
             TensorView("coef", coef_, {kTableColumns}),          TensorView("noise", zeros_.data(), {1, p, T, T}),
             TensorView("cube", tile_cube_.data(), {1, B, T, T}), TensorView("endmembers", E32_.data(), {p, B}),
             TensorView("dc_weight", &dc_, {1})};
    a_out_ = {TensorView("x_prev", x_b_.data(), {1, p, T, T})};
    s_in_ = {TensorView("x_t", s_x_a_.data(), {p, 1, B}), TensorView("t", s_t_.data(), {p}),
             TensorView("coef", coef_, {kTableColumns}),   TensorView("noise", s_noise_.data(), {p, 1, B}),
             TensorView("AtA", s_AtA_.data(), {p, p}),     TensorView("AtY", s_AtY_.data(), {p, B}),
             TensorView("scale", s_scale_.data(), {p}),    TensorView("dc_weight", &spectra_dc_, {1})};
    s_out_ = {TensorView("x_prev", s_x_b_.data(), {p, 1, B})};
}

void TileSteps::configure(const PipelineConfig& cfg) {
    cfg.validate();
    if (cfg.tile != T_)
        throw UsageError("the networks were built for " + std::to_string(T_) + "x" + std::to_string(T_) +
                         " tiles, but the tile setting is " + std::to_string(cfg.tile));
    timesteps_ = ddim_timesteps(schedule_.T, cfg.steps, cfg.t0);
    table_ = ddim_coefficients(schedule_, timesteps_, cfg.eta).table();
    spectra_timesteps_.clear();
    spectra_table_.clear();
    if (cfg.refine_spectra) {
        spectra_timesteps_ = ddim_timesteps(schedule_.T, cfg.spectra_steps, cfg.spectra_t0);
        spectra_table_ = ddim_coefficients(schedule_, spectra_timesteps_, cfg.spectra_eta).table();
    }
    cfg_ = cfg;
    samples_ = cfg.samples;
    dc_ = static_cast<float>(cfg.dc_weight);
    spectra_dc_ = static_cast<float>(cfg.spectra_dc_weight);
    calls_ = 0;
}

const float* TileSteps::hybridstu_tile() {
    backend_.run(hybridstu_, h_in_, h_out_);
    ++calls_;
    return tile_out_.data();
}

const float* TileSteps::refine_tile(const Tile& tile, int round, const float* endmembers) {
    const int p = p_, T = T_, K = cfg_.steps, S = samples_;
    const size_t TT = static_cast<size_t>(T) * T;
    std::copy(endmembers, endmembers + static_cast<size_t>(p) * B_, E32_.begin());
    for (size_t n = 0; n < p * TT; ++n) x0_[n] = 2.0f * x0_[n] - 1.0f;
    std::fill(sample_sum_.begin(), sample_sum_.end(), 0.0);
    std::fill(spread_mean_.begin(), spread_mean_.end(), 0.0);
    std::fill(spread_m2_.begin(), spread_m2_.end(), 0.0);
    const uint32_t row0 = static_cast<uint32_t>(tile.row0), col0 = static_cast<uint32_t>(tile.col0);
    for (int s = 0; s < S; ++s) {
        // forward noising to t0: x = sqrt(alpha_bar_t0) x0 + sqrt(1 - alpha_bar_t0) z (float32)
        gaussian_window_chw(cfg_.seed, kStreamAbundance, counter_step(K, -1, round), static_cast<uint32_t>(s), row0, T,
                            col0, T, p, z_.data());
        const float c2 = table_[kSqrtAlphaBarT], c3 = table_[kSqrtOneMinusAlphaBarT];
        for (size_t n = 0; n < p * TT; ++n) {
            const float lhs = c2 * x0_[n], rhs = c3 * z_[n];
            x_a_[n] = lhs + rhs;
        }
        float* cur = x_a_.data();
        float* next = x_b_.data();
        for (int i = 0; i < K; ++i) {
            for (int c = 0; c < kTableColumns; ++c) coef_[c] = table_[i * kTableColumns + c];
            if (coef_[kSigma] > 0.0f) {
                gaussian_window_chw(cfg_.seed, kStreamAbundance, counter_step(K, i, round), static_cast<uint32_t>(s),
                                    row0, T, col0, T, p, z_.data());
                a_in_[3].data = z_.data();
            } else {
                a_in_[3].data = zeros_.data();
            }
            t_value_[0] = static_cast<float>(timesteps_[i]);
            a_in_[0].data = cur;
            a_out_[0].data = next;
            backend_.run(abundance_step_, a_in_, a_out_);
            ++calls_;
            std::swap(cur, next);
        }
        for (int i = 0; i < tile.height; ++i)
            for (int j = 0; j < tile.width; ++j)
                for (int k = 0; k < p; ++k) {
                    const size_t at = (static_cast<size_t>(i) * T + j) * p + k;
                    const double a = (static_cast<double>(cur[(static_cast<size_t>(k) * T + i) * T + j]) + 1.0) / 2.0;
                    sample_sum_[at] += a;
                    if (S > 1) {  // Welford: the spread across samples
                        const double delta = a - spread_mean_[at];
                        spread_mean_[at] += delta / (s + 1);
                        spread_m2_[at] += delta * (a - spread_mean_[at]);
                    }
                }
    }
    // float32 values before blending (tiled = untiled for pixelwise networks)
    const int C = refine_channels();
    for (int i = 0; i < tile.height; ++i)
        for (int j = 0; j < tile.width; ++j) {
            const size_t at = (static_cast<size_t>(i) * T + j) * p;
            float* out = values_.data() + (static_cast<size_t>(i) * tile.width + j) * C;
            double spread = 0.0;
            for (int k = 0; k < p; ++k) {
                double mean = sample_sum_[at + k];
                if (S > 1) {
                    mean /= S;
                    spread += std::sqrt(spread_m2_[at + k] / (S - 1));
                }
                out[k] = static_cast<float>(mean);
            }
            if (S > 1) out[p] = static_cast<float>(spread / p);
        }
    return values_.data();
}

void TileSteps::refine_spectra(std::vector<double>& E, const std::vector<double>& AtA, const std::vector<double>& AtY,
                               long long count, int round) {
    const int p = p_, B = B_, KS = cfg_.spectra_steps;
    for (int k = 0; k < p; ++k) {
        double m = E[k * B];
        for (int b = 1; b < B; ++b) m = std::max(m, E[k * B + b]);
        s_scale_[k] = static_cast<float>(std::max(m, kMinSpectraScale));
    }
    spectra_noise(cfg_.seed, counter_step(KS, -1, round), 0, p, B, s_noise_.data());
    const float c2 = spectra_table_[kSqrtAlphaBarT], c3 = spectra_table_[kSqrtOneMinusAlphaBarT];
    for (int k = 0; k < p; ++k)
        for (int b = 0; b < B; ++b) {
            const float e = static_cast<float>(E[k * B + b]);
            const float x0v = 2.0f * e / s_scale_[k] - 1.0f;
            const float lhs = c2 * x0v, rhs = c3 * s_noise_[k * B + b];
            s_x_a_[k * B + b] = lhs + rhs;
        }
    for (int i = 0; i < p * p; ++i) s_AtA_[i] = static_cast<float>(AtA[i] / static_cast<double>(count));
    for (int i = 0; i < p * B; ++i) s_AtY_[i] = static_cast<float>(AtY[i] / static_cast<double>(count));
    float* cur = s_x_a_.data();
    float* next = s_x_b_.data();
    for (int i = 0; i < KS; ++i) {
        for (int c = 0; c < kTableColumns; ++c) coef_[c] = spectra_table_[i * kTableColumns + c];
        if (coef_[kSigma] > 0.0f)
            spectra_noise(cfg_.seed, counter_step(KS, i, round), 0, p, B, s_noise_.data());
        else
            std::fill(s_noise_.begin(), s_noise_.end(), 0.0f);
        for (int k = 0; k < p; ++k) s_t_[k] = static_cast<float>(spectra_timesteps_[i]);
        s_in_[0].data = cur;
        s_out_[0].data = next;
        backend_.run(spectra_step_, s_in_, s_out_);
        ++calls_;
        std::swap(cur, next);
    }
    for (int k = 0; k < p; ++k)
        for (int b = 0; b < B; ++b)
            E[k * B + b] =
                std::max(static_cast<double>(s_scale_[k]) * (static_cast<double>(cur[k * B + b]) + 1.0) / 2.0, 0.0);
}

}  // namespace unmix
