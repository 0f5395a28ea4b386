// Push-broom streaming: lines of W pixels x B bands in, finished rows out, the endmembers E fixed.
//
// The same two passes as Pipeline::run with E given, refine_spectra off and one round, on the same
// tile grid: row tiles start at 0, s, 2s, ... (s = T - overlap) and, once the last line is known, at
// H - T; columns as tile_starts(W). A tile row runs pass 1 as soon as its T lines are in; it runs
// pass 2 once every tile that covers its rows has run pass 1 (no later tile can cover a row above
// lines - T); a row is finished once every tile that covers it has run pass 2. Tiles are blended in the
// order of the whole-buffer call and draw their noise at global coordinates, so a finished row equals
// the whole-buffer result (Pipeline::run with initial_endmembers = E, refine_spectra = false,
// rounds = 1) bit for bit with the same backend.
//
// Memory: a ring of 2T + 1 rows (cube, validity, blend sums), independent of the number of lines.
// A row is finished about 2T lines after it was pushed.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "pipeline.hpp"
#include "tile_steps.hpp"

namespace unmix {

class Stream {
public:
    // endmembers (p, B) float32 >= 0, copied. config: rounds and refine_spectra do not apply.
    Stream(std::shared_ptr<Backend> backend, const Schedule& schedule, int bands, int endmembers, int tile, int width,
           const PipelineConfig& config, const float* endmembers_pb);

    // One line, BIP: (W, B) float32 reflectance; a pixel with any non-finite band is left out (NaN outputs).
    // Refused (UsageError) when the ring is full of finished rows that were not popped.
    void push_line(const float* line_wb);
    // No more lines: the remaining rows are finished (the last row tile moves to H - T).
    void finish();
    bool finished() const { return finished_; }

    int64_t lines() const { return lines_; }
    int64_t rows_ready() const { return ready_end_ - popped_; }
    int ring_rows() const { return capacity_; }

    // Copies the next finished row out: abundances (W, p), rmse (W,), uncertainty (W,) or NULL (NaN
    // unless samples > 1). Returns its row index. UsageError when no row is ready.
    int64_t pop_row(float* abundances_wp, float* rmse_w, float* uncertainty_w);

    // NNLS endmembers (p, B) from the running sums A^T A and A^T Y of the popped rows' valid pixels.
    std::vector<double> estimate_endmembers() const;

private:
    size_t slot(int64_t row) const { return static_cast<size_t>(row % capacity_); }
    void advance();
    void first_pass(int row0, int height);
    void second_pass(int row0, int height);

    std::shared_ptr<Backend> backend_;
    TileSteps steps_;
    int B_, p_, T_, W_, overlap_, stride_, C_;
    int capacity_;
    std::vector<int> col_starts_;
    std::vector<double> weights_;
    std::vector<float> E32_;
    std::vector<double> E64_;
    // ring of capacity_ rows
    std::vector<float> clean_;    // (W, B) per row, invalid pixels 0
    std::vector<char> valid_;     // (W,)
    std::vector<double> a0_sum_, a0_weight_;    // pass-1 blend: (W, p), (W,)
    std::vector<double> out_sum_, out_weight_;  // pass-2 blend: (W, C), (W,)
    // per-tile scratch
    std::vector<float> current_, work_tile_;
    std::vector<double> refined_, AtA_, AtY_;
    long long count_ = 0;
    int64_t lines_ = 0, popped_ = 0, ready_end_ = 0;
    int first_done_ = 0, second_done_ = 0;  // row tiles through pass 1 / pass 2
    bool finished_ = false;
};

}  // namespace unmix
