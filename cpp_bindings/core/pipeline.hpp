// The two-pass unmixing flow of unmix/runtime/pipeline.py over a Backend that runs the three networks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffusion.hpp"
#include "settings.hpp"

namespace unmix {

// A float32 tensor the caller owns; shape of rank <= 4 held inline (no allocation).
struct TensorView {
    const char* name = "";
    float* data = nullptr;
    int rank = 0;
    int64_t shape[4] = {0, 0, 0, 0};

    TensorView() = default;
    TensorView(const char* name_, float* data_, std::initializer_list<int64_t> dims);
    size_t numel() const;
};

class BackendError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Runs one network. Inputs come in the order of unmix.runtime.network.pipeline_specs; the backend
// writes every output into the caller's buffer. Must not keep pointers after returning.
class Backend {
public:
    virtual ~Backend() = default;
    virtual void run(const std::string& network, const std::vector<TensorView>& in, std::vector<TensorView>& out) = 0;
};

// The largest seed, 2^53 (unmix.runtime.settings.SEED_MAX): seeds travel as doubles (JSON,
// unmix_set_option), which hold every integer up to 2^53 exactly.
constexpr uint64_t kMaxSeed = 9007199254740992ull;

// Every inference setting, from settings.inc (unmix.runtime.settings.PipelineConfig), with its default.
// initial_endmembers: true "model", false "statistics".
struct PipelineConfig {
#define UNMIX_SETTING(NAME, KIND, FIXED, MINIMUM, MAXIMUM, DEFAULT, CHOICES) UNMIX_SETTING_TYPE_##KIND NAME = DEFAULT;
#include "settings.inc"
#undef UNMIX_SETTING

    void validate() const;  // throws UsageError: the ranges of settings.inc, overlap < tile, the noise counters
};

struct PipelineStats {
    long network_calls = 0;
};

// Non-negative least squares for every band from the statistics: min_{e>=0} e'Ge - 2 c'e, G = AtA (p, p),
// c = AtY[:, b]; Lawson-Hanson active set on the p x p Gram system, the same operations in the same order
// as unmix.physics.mixing.endmembers_from_abundances (the same bits, also where AtA is singular and the
// minimiser is not unique). AtY (p, B) -> E (p, B).
std::vector<double> nnls_endmembers(const std::vector<double>& AtA, const std::vector<double>& AtY, int p, int B);

// Euclidean projection of v (length p) onto the probability simplex, in place (NaN in -> all NaN).
void project_simplex(double* v, int p);

class TileSteps;

// Where a scene's cube comes from, a window of one row at a time: pixels [col0, col0 + cols) of `row`
// into out, (cols, B) float32, BIP. Pipeline::run_rows reads each pass's tiles (cols <= T) and the
// statistics' blocks (cols <= 256) this way; a row is read again by every pass.
class CubeSource {
public:
    virtual ~CubeSource() = default;
    virtual void read(int row, int col0, int cols, float* out) = 0;
};

// The scene-sized (H, W, p) float32 abundances kept between the passes (the caller's output buffer, or a
// scratch file). read: pixels [col0, col0 + cols) of `row`, (cols, p); write_row: a whole row (W, p).
class AbundanceStore {
public:
    virtual ~AbundanceStore() = default;
    virtual void read(int row, int col0, int cols, float* out) = 0;
    virtual void write_row(int row, const float* values) = 0;
};

// The finished rows of the last pass, in row order: abundances (W, p) (NaN at invalid pixels), rmse (W,),
// uncertainty (W,) (NaN unless samples > 1, and at invalid pixels).
class RowSink {
public:
    virtual ~RowSink() = default;
    virtual void write_row(int row, const float* abundances, const float* rmse, const float* uncertainty) = 0;
};

class Pipeline {
public:
    // B bands, p endmembers, T the networks' tile size.
    Pipeline(Backend& backend, const Schedule& schedule, int bands, int endmembers, int tile);
    ~Pipeline();
    Pipeline(const Pipeline&) = delete;  // one TileSteps per Pipeline: its buffers are not shared
    Pipeline& operator=(const Pipeline&) = delete;
    Pipeline(Pipeline&&) noexcept;
    Pipeline& operator=(Pipeline&&) = delete;  // backend_ is a reference

    // cube (H, W, B) float32 row-major; outputs (H, W, p), (p, B), (H, W). Throws on error.
    // initial_endmembers (p, B), optional: the model's (or the caller's) endmembers, E0 when
    // config.initial_endmembers; otherwise (or when NULL) E0 is the NNLS estimate from pass 1's statistics
    // (run_pipeline's `endmembers`). uncertainty (H, W), optional: written when samples > 1 (the mean over
    // endmembers of the per-pixel standard deviation across samples), else filled with NaN.
    // Memory: the cube and the outputs (the abundances buffer holds the passes' abundances), plus a band of
    // T rows of blend sums and one tile's buffers; nothing else grows with H or W.
    void run(const float* cube, int H, int W, const PipelineConfig& config, float* abundances, float* endmembers,
             float* rmse, const float* initial_endmembers = nullptr, float* uncertainty = nullptr);

    // The same flow and the same values, bit for bit, with the cube read from `cube` (each pass reads it
    // again), the passes' abundances in `store` and the last pass's rows written to `sink` as they finish
    // (before the call returns; rows already written stay written when it throws later). endmembers (p, B)
    // is written once every row is out. Memory beyond the store: T rows x W of blend sums (T the tile)
    // and one tile's buffers.
    void run_rows(CubeSource& cube, int H, int W, const PipelineConfig& config, AbundanceStore& store, RowSink& sink,
                  float* endmembers, const float* initial_endmembers = nullptr);

    const PipelineStats& stats() const { return stats_; }

private:
    Backend& backend_;
    Schedule schedule_;
    int B_, p_, T_;
    PipelineStats stats_;
    std::unique_ptr<TileSteps> steps_;
};

// Checks a caller's (p, B) endmembers: finite and >= 0 (UsageError otherwise).
void check_endmembers(const float* endmembers, int p, int B);

}  // namespace unmix
