#include "stream.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "manifest.hpp"

namespace unmix {

namespace {
PipelineConfig fixed_endmember_config(PipelineConfig cfg) {
    cfg.refine_spectra = false;  // the 1D loop needs the whole cube's statistics
    cfg.rounds = 1;
    return cfg;
}
constexpr int64_t kMaxLines = 2000000000;  // Philox row coordinates are uint32; tiles use int
}  // namespace

Stream::Stream(std::shared_ptr<Backend> backend, const Schedule& schedule, int bands, int endmembers, int tile,
               int width, const PipelineConfig& config, const float* endmembers_pb)
    : backend_(std::move(backend)),
      steps_(*backend_, schedule, bands, endmembers, tile),
      B_(bands),
      p_(endmembers),
      T_(tile),
      W_(width) {
    if (W_ < 1 || W_ > 1000000) throw UsageError("stream: width must be in 1..1000000");
    if (!endmembers_pb) throw UsageError("stream: endmembers are NULL");
    check_endmembers(endmembers_pb, p_, B_);
    const PipelineConfig cfg = fixed_endmember_config(config);
    steps_.configure(cfg);
    overlap_ = cfg.overlap;
    stride_ = T_ - overlap_;
    C_ = steps_.refine_channels();
    capacity_ = 2 * T_ + 1;
    col_starts_ = tile_starts(W_, T_, overlap_);
    weights_ = blend_weights(T_, overlap_);
    E32_.assign(endmembers_pb, endmembers_pb + static_cast<size_t>(p_) * B_);
    E64_.assign(E32_.begin(), E32_.end());
    const size_t rows = static_cast<size_t>(capacity_), W = static_cast<size_t>(W_);
    clean_.assign(rows * W * B_, 0.0f);
    valid_.assign(rows * W, 0);
    a0_sum_.assign(rows * W * p_, 0.0);
    a0_weight_.assign(rows * W, 0.0);
    out_sum_.assign(rows * W * C_, 0.0);
    out_weight_.assign(rows * W, 0.0);
    current_.assign(static_cast<size_t>(T_) * T_ * p_, 0.0f);
    work_tile_.assign(static_cast<size_t>(T_) * T_ * B_, 0.0f);
    refined_.assign(p_, 0.0);
    AtA_.assign(static_cast<size_t>(p_) * p_, 0.0);
    AtY_.assign(static_cast<size_t>(p_) * B_, 0.0);
}

void Stream::push_line(const float* line) {
    if (!line) throw UsageError("stream: the line is NULL");
    if (finished_) throw UsageError("stream: finished; no more lines can be pushed");
    if (lines_ >= kMaxLines) throw UsageError("stream: more than 2000000000 lines");
    if (lines_ + 1 - popped_ > capacity_)
        throw UsageError("stream: " + std::to_string(rows_ready()) +
                         " finished rows are waiting; pop them (unmix_stream_pop_row) before pushing more lines");
    const size_t s = slot(lines_), W = static_cast<size_t>(W_);
    float* clean = clean_.data() + s * W * B_;
    char* valid = valid_.data() + s * W;
    for (size_t j = 0; j < W; ++j) {
        const float* y = line + j * B_;
        valid[j] = pixel_valid(y, B_);
        for (int b = 0; b < B_; ++b) clean[j * B_ + b] = valid[j] ? y[b] : 0.0f;
    }
    std::fill(a0_sum_.begin() + s * W * p_, a0_sum_.begin() + (s + 1) * W * p_, 0.0);
    std::fill(a0_weight_.begin() + s * W, a0_weight_.begin() + (s + 1) * W, 0.0);
    std::fill(out_sum_.begin() + s * W * C_, out_sum_.begin() + (s + 1) * W * C_, 0.0);
    std::fill(out_weight_.begin() + s * W, out_weight_.begin() + (s + 1) * W, 0.0);
    ++lines_;
    advance();
}

// Runs every tile row whose inputs are final (stream.hpp), and moves the finished-row mark.
void Stream::advance() {
    const int64_t L = lines_;
    while (static_cast<int64_t>(first_done_) * stride_ + T_ <= L) {  // regular row tile: its T lines are in
        first_pass(first_done_ * stride_, T_);
        ++first_done_;
    }
    // pass 2 of a row tile needs its A0 rows final: below L - T no later tile (the last one at H - T >= L - T) reaches
    while (second_done_ < first_done_ && static_cast<int64_t>(second_done_) * stride_ + 2 * T_ <= L) {
        second_pass(second_done_ * stride_, T_);
        ++second_done_;
    }
    ready_end_ = std::max(ready_end_, std::min<int64_t>(static_cast<int64_t>(second_done_) * stride_, L - T_));
}

void Stream::finish() {
    if (finished_) return;
    if (lines_ == 0) throw UsageError("stream: no line was pushed");
    const int H = static_cast<int>(lines_);
    const std::vector<int> starts = tile_starts(H, T_, overlap_);  // the whole-buffer call's row tiles
    const int height = std::min(T_, H);
    // The row tiles run so far are a prefix of `starts` (a regular start js with js + T <= H).
    for (size_t k = static_cast<size_t>(first_done_); k < starts.size(); ++k) first_pass(starts[k], height);
    for (size_t k = static_cast<size_t>(second_done_); k < starts.size(); ++k) second_pass(starts[k], height);
    first_done_ = second_done_ = static_cast<int>(starts.size());
    ready_end_ = lines_;
    finished_ = true;
}

void Stream::first_pass(int row0, int height) {
    const size_t W = static_cast<size_t>(W_);
    const int width = std::min(T_, W_);
    for (int c0 : col_starts_) {
        channels_first_rows([&](int i) { return clean_.data() + (slot(row0 + i) * W + c0) * B_; }, height, width, B_, T_,
                            steps_.cube_buffer());
        const float* out = steps_.hybridstu_tile();  // (p, T, T)
        for (int i = 0; i < height; ++i) {
            const size_t s = slot(row0 + i);
            for (int j = 0; j < width; ++j) {
                const double wt = weights_[static_cast<size_t>(i) * T_ + j];
                const size_t pixel = s * W + c0 + j;
                for (int k = 0; k < p_; ++k)
                    a0_sum_[pixel * p_ + k] += wt * static_cast<double>(out[(static_cast<size_t>(k) * T_ + i) * T_ + j]);
                a0_weight_[pixel] += wt;
            }
        }
    }
}

void Stream::second_pass(int row0, int height) {
    const size_t W = static_cast<size_t>(W_);
    const int width = std::min(T_, W_);
    for (int c0 : col_starts_) {
        // current A (the pass-1 blend, float32) and the tile's cube; invalid pixels get A E
        for (int i = 0; i < height; ++i) {
            const size_t s = slot(row0 + i);
            for (int j = 0; j < width; ++j) {
                const size_t pixel = s * W + c0 + j;
                if (!(a0_weight_[pixel] > 0)) throw UsageError("some pixels were covered by no tile");
                float* a = current_.data() + (static_cast<size_t>(i) * width + j) * p_;
                for (int k = 0; k < p_; ++k) a[k] = static_cast<float>(a0_sum_[pixel * p_ + k] / a0_weight_[pixel]);
                float* y = work_tile_.data() + (static_cast<size_t>(i) * width + j) * B_;
                if (valid_[pixel]) {
                    std::copy(clean_.begin() + pixel * B_, clean_.begin() + (pixel + 1) * B_, y);
                } else {
                    for (int b = 0; b < B_; ++b) {
                        float v = 0.0f;
                        for (int k = 0; k < p_; ++k) v += a[k] * E32_[static_cast<size_t>(k) * B_ + b];
                        y[b] = v;
                    }
                }
            }
        }
        channels_first_rows([&](int i) { return work_tile_.data() + static_cast<size_t>(i) * width * B_; }, height, width,
                            B_, T_, steps_.cube_buffer());
        channels_first_rows([&](int i) { return current_.data() + static_cast<size_t>(i) * width * p_; }, height, width,
                            p_, T_, steps_.x0_buffer());
        const Tile tile{row0, c0, height, width};
        const float* values = steps_.refine_tile(tile, 0, E32_.data());  // (height, width, C)
        for (int i = 0; i < height; ++i) {
            const size_t s = slot(row0 + i);
            for (int j = 0; j < width; ++j) {
                const double wt = weights_[static_cast<size_t>(i) * T_ + j];
                const size_t pixel = s * W + c0 + j;
                const float* v = values + (static_cast<size_t>(i) * width + j) * C_;
                for (int c = 0; c < C_; ++c) out_sum_[pixel * C_ + c] += wt * static_cast<double>(v[c]);
                out_weight_[pixel] += wt;
            }
        }
    }
}

int64_t Stream::pop_row(float* abundances, float* rmse, float* uncertainty) {
    if (!abundances || !rmse) throw UsageError("stream: the abundances or rmse buffer is NULL");
    if (rows_ready() <= 0)
        throw UsageError(finished_ ? "stream: every row was popped" : "stream: no finished row yet (push more lines)");
    const int64_t row = popped_;
    const size_t s = slot(row), W = static_cast<size_t>(W_);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (size_t j = 0; j < W; ++j) {
        const size_t pixel = s * W + j;
        if (!(out_weight_[pixel] > 0)) throw UsageError("some pixels were covered by no tile");
        float* a = abundances + j * p_;
        for (int k = 0; k < p_; ++k)  // float32 before the projection, as the whole-buffer call
            refined_[k] = static_cast<double>(static_cast<float>(out_sum_[pixel * C_ + k] / out_weight_[pixel]));
        project_simplex(refined_.data(), p_);
        if (!valid_[pixel]) {
            for (int k = 0; k < p_; ++k) a[k] = nan;
            rmse[j] = nan;
            if (uncertainty) uncertainty[j] = nan;
            continue;
        }
        for (int k = 0; k < p_; ++k) a[k] = static_cast<float>(refined_[k]);
        const float* y = clean_.data() + pixel * B_;
        rmse[j] = pixel_rmse(y, a, E64_.data(), p_, B_);
        if (uncertainty) uncertainty[j] = C_ > p_ ? static_cast<float>(out_sum_[pixel * C_ + p_] / out_weight_[pixel]) : nan;
        for (int k = 0; k < p_; ++k) {  // running sums for estimate_endmembers
            const double ak = a[k];
            for (int l = 0; l < p_; ++l) AtA_[static_cast<size_t>(k) * p_ + l] += ak * static_cast<double>(a[l]);
            for (int b = 0; b < B_; ++b) AtY_[static_cast<size_t>(k) * B_ + b] += ak * static_cast<double>(y[b]);
        }
        ++count_;
    }
    ++popped_;
    return row;
}

std::vector<double> Stream::estimate_endmembers() const {
    if (count_ == 0) throw InputError("stream: no finished valid pixel yet; the endmembers cannot be estimated");
    return nnls_endmembers(AtA_, AtY_, p_, B_);
}

}  // namespace unmix
