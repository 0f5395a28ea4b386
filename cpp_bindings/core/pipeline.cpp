#include "pipeline.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "manifest.hpp"
#include "tile_steps.hpp"

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

namespace {

std::string number_text(double value) {
    char text[32];
    std::snprintf(text, sizeof text, "%.17g", value);
    return text;
}

template <typename Value>
void check_range(const char* name, Value value, double minimum, double maximum) {
    const double v = static_cast<double>(value);
    if (!(v >= minimum && v <= maximum))
        throw UsageError(std::string(name) + " must be >= " + number_text(minimum) + " and <= " + number_text(maximum) +
                         ", got " + number_text(v));
}

}  // namespace

void PipelineConfig::validate() const {
#define UNMIX_SETTING(NAME, KIND, FIXED, MINIMUM, MAXIMUM, DEFAULT, CHOICES) \
    check_range(#NAME, NAME, static_cast<double>(MINIMUM), static_cast<double>(MAXIMUM));
#include "settings.inc"
#undef UNMIX_SETTING
    if (overlap >= tile)
        throw UsageError("overlap must be smaller than tile (" + std::to_string(tile) + "), got " + std::to_string(overlap));
    counter_step(steps, steps - 1, rounds - 1);
    counter_step(spectra_steps, spectra_steps - 1, rounds - 1);
}

// ---- linear algebra ------------------------------------------------------------------------------

namespace {

// Solves G[P,P] z = c[P] by Gaussian elimination with partial pivoting (the first largest pivot); false
// when a pivot is <= 1e-13 n max|G[P,P]| (singular).
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

// Below this an entry of the active-set iterate counts as zero and leaves the passive set.
constexpr double kZero = 1e-300;

// min_{e>=0} e'Ge - 2c'e, Lawson-Hanson: unmix.physics.mixing.nnls_gram step for step (same order of
// operations, same tolerances), so the two agree also where G is singular and the minimiser is not
// unique (tests/golden/nnls_rank_deficient.json).
void nnls_gram(const std::vector<double>& G, const double* c, int p, double* e) {
    std::vector<char> passive(static_cast<size_t>(p), 0), dependent(static_cast<size_t>(p), 0);
    std::vector<double> x(static_cast<size_t>(p), 0.0), z, work;
    std::vector<int> set;
    double gmax = 0.0;
    for (double g : G) gmax = std::max(gmax, std::fabs(g));
    double cmax = 0.0;
    for (int i = 0; i < p; ++i) cmax = std::max(cmax, std::fabs(c[i]));
    const double tol = 10.0 * std::numeric_limits<double>::epsilon() * p * std::max(gmax, cmax);
    for (int outer = 0; outer < 3 * p + 3; ++outer) {
        // the free index with the largest gradient w_j = (c - G x)_j, the first on ties
        int best = -1;
        double best_w = 0.0;
        for (int j = 0; j < p; ++j) {
            double s = c[j];
            for (int k = 0; k < p; ++k) s -= G[j * p + k] * x[k];
            if (!passive[j] && !dependent[j] && (best < 0 || s > best_w)) {
                best_w = s;
                best = j;
            }
        }
        if (best < 0 || !(best_w > tol)) break;
        passive[best] = 1;
        for (int inner = 0; inner < 3 * p + 3; ++inner) {
            set.clear();
            for (int j = 0; j < p; ++j)
                if (passive[j]) set.push_back(j);
            if (!solve_subset(G, c, p, set, work, z)) {  // column `best` depends on the others: never again
                passive[best] = 0;
                dependent[best] = 1;
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
                if (z[i] <= 0.0 && x[set[i]] - z[i] > 0.0) alpha = std::min(alpha, x[set[i]] / (x[set[i]] - z[i]));
            for (size_t i = 0; i < set.size(); ++i) {
                x[set[i]] += alpha * (z[i] - x[set[i]]);
                if (x[set[i]] <= kZero) {
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
// Pipeline::run_rows follows run_pipeline step by step; the per-tile bodies live in TileSteps (shared with
// the push-broom Stream), the blending of a band of rows and the statistics here. Pass by pass, the row
// tiles run top to bottom; once a row tile is done, the rows above the next one are final (no later tile
// covers them): they leave the blend band and go to the store (or, in the last pass, to the sink). A pass
// reads the abundances of a tile from the store only where no finished row has been written yet, so the
// previous pass's values are what it sees, as with a whole-image copy.

namespace {
constexpr int kStatisticsBlock = 256;

// Weighted (h, w, C) tile values summed over a band of rows (tiling.Blender): row r in slot r % rows.
// Tiles are added in the grid's order, so every pixel's sums are those of a whole-image blend.
struct RowBlender {
    int W = 0, C = 0, T = 0, rows = 0;
    std::vector<double> weights, sum, weight_sum;
    RowBlender(int W_, int max_channels, int rows_, int T_, int overlap) : W(W_), C(max_channels), T(T_), rows(rows_) {
        weights = blend_weights(T, overlap);
        sum.assign(static_cast<size_t>(rows) * W * max_channels, 0.0);
        weight_sum.assign(static_cast<size_t>(rows) * W, 0.0);
    }
    void reset(int channels) {
        C = channels;
        std::fill(sum.begin(), sum.end(), 0.0);
        std::fill(weight_sum.begin(), weight_sum.end(), 0.0);
    }
    size_t pixel(int row, int col) const { return static_cast<size_t>(row % rows) * W + col; }
    // channel-first (C, T, T) tile output
    void add_chw(const Tile& tile, const float* chw) {
        for (int i = 0; i < tile.height; ++i)
            for (int j = 0; j < tile.width; ++j) {
                const double wt = weights[i * T + j];
                const size_t at = pixel(tile.row0 + i, tile.col0 + j);
                for (int c = 0; c < C; ++c)
                    sum[at * C + c] += wt * static_cast<double>(chw[(static_cast<size_t>(c) * T + i) * T + j]);
                weight_sum[at] += wt;
            }
    }
    // (h, w, C) row-major tile values
    void add_hwc(const Tile& tile, const float* hwc) {
        for (int i = 0; i < tile.height; ++i)
            for (int j = 0; j < tile.width; ++j) {
                const double wt = weights[i * T + j];
                const size_t at = pixel(tile.row0 + i, tile.col0 + j);
                const float* v = hwc + (static_cast<size_t>(i) * tile.width + j) * C;
                for (int c = 0; c < C; ++c) sum[at * C + c] += wt * static_cast<double>(v[c]);
                weight_sum[at] += wt;
            }
    }
    // channel c of the weighted mean, float32, at (row, col)
    float value(int row, int col, int c) const {
        const size_t at = pixel(row, col);
        if (!(weight_sum[at] > 0)) throw UsageError("some pixels were covered by no tile");
        return static_cast<float>(sum[at * C + c] / weight_sum[at]);
    }
    // a finished row's slot, emptied for the row `rows` further down
    void clear_row(int row) {
        const size_t at = pixel(row, 0);
        std::fill(sum.begin() + static_cast<long>(at * C), sum.begin() + static_cast<long>((at + W) * C), 0.0);
        std::fill(weight_sum.begin() + static_cast<long>(at), weight_sum.begin() + static_cast<long>(at + W), 0.0);
    }
};

struct Statistics {
    std::vector<double> AtA, AtY;
    long long count = 0;
};

// AtA, AtY over valid pixels in blocks of kStatisticsBlock (rows, then columns, inside a block), the
// abundances from the store. y and a: buffers of kStatisticsBlock pixels (B and p floats each).
void statistics(CubeSource& cube, AbundanceStore& store, int H, int W, int B, int p, Statistics& s,
                std::vector<double>& work, float* y, float* a32) {
    s.AtA.assign(static_cast<size_t>(p) * p, 0.0);
    s.AtY.assign(static_cast<size_t>(p) * B, 0.0);
    s.count = 0;
    std::vector<double>& blockAtA = work;
    blockAtA.assign(static_cast<size_t>(p) * p + static_cast<size_t>(p) * B + p, 0.0);
    double* blockAtY = blockAtA.data() + p * p;
    double* a = blockAtY + p * B;
    for (int r0 = 0; r0 < H; r0 += kStatisticsBlock)
        for (int c0 = 0; c0 < W; c0 += kStatisticsBlock) {
            const int cols = std::min(W, c0 + kStatisticsBlock) - c0;
            std::fill(blockAtA.begin(), blockAtA.begin() + p * p + p * B, 0.0);
            for (int r = r0; r < std::min(H, r0 + kStatisticsBlock); ++r) {
                cube.read(r, c0, cols, y);
                store.read(r, c0, cols, a32);
                for (int c = 0; c < cols; ++c) {
                    const float* yc = y + static_cast<size_t>(c) * B;
                    if (!pixel_valid(yc, B)) continue;
                    for (int k = 0; k < p; ++k) a[k] = static_cast<double>(a32[static_cast<size_t>(c) * p + k]);
                    for (int k = 0; k < p; ++k) {
                        for (int l = 0; l < p; ++l) blockAtA[k * p + l] += a[k] * a[l];
                        for (int b = 0; b < B; ++b) blockAtY[k * B + b] += a[k] * static_cast<double>(yc[b]);
                    }
                    ++s.count;
                }
            }
            for (int i = 0; i < p * p; ++i) s.AtA[i] += blockAtA[i];
            for (int i = 0; i < p * B; ++i) s.AtY[i] += blockAtY[i];
        }
    if (s.count == 0) throw InputError("the cube: no pixel is finite in every band; nothing to unmix");
}

// A tile's (height, width, B) window of the cube with invalid pixels set to 0 (fed to the networks) and
// their flags.
void read_window(CubeSource& cube, const Tile& tile, int B, float* window, char* valid) {
    for (int i = 0; i < tile.height; ++i) {
        float* row = window + static_cast<size_t>(i) * tile.width * B;
        cube.read(tile.row0 + i, tile.col0, tile.width, row);
        for (int j = 0; j < tile.width; ++j) {
            float* y = row + static_cast<size_t>(j) * B;
            const bool ok = pixel_valid(y, B);
            valid[static_cast<size_t>(i) * tile.width + j] = ok;
            if (!ok) std::fill(y, y + B, 0.0f);
        }
    }
}

// The whole-buffer call's cube, store and sink: the caller's arrays.
class BufferCube : public CubeSource {
public:
    BufferCube(const float* cube, int W, int B) : cube_(cube), W_(W), B_(B) {}
    void read(int row, int col0, int cols, float* out) override {
        const float* from = cube_ + (static_cast<size_t>(row) * W_ + col0) * B_;
        std::copy(from, from + static_cast<size_t>(cols) * B_, out);
    }

private:
    const float* cube_;
    int W_, B_;
};

class BufferStore : public AbundanceStore {
public:
    BufferStore(float* abundances, int W, int p) : A_(abundances), W_(W), p_(p) {}
    void read(int row, int col0, int cols, float* out) override {
        const float* from = A_ + (static_cast<size_t>(row) * W_ + col0) * p_;
        std::copy(from, from + static_cast<size_t>(cols) * p_, out);
    }
    void write_row(int row, const float* values) override {
        std::copy(values, values + static_cast<size_t>(W_) * p_, A_ + static_cast<size_t>(row) * W_ * p_);
    }

private:
    float* A_;
    int W_, p_;
};

class BufferSink : public RowSink {
public:
    BufferSink(float* abundances, float* rmse, float* uncertainty, int W, int p)
        : A_(abundances), rmse_(rmse), uncertainty_(uncertainty), W_(W), p_(p) {}
    void write_row(int row, const float* abundances, const float* rmse, const float* uncertainty) override {
        const size_t at = static_cast<size_t>(row) * W_;
        std::copy(abundances, abundances + static_cast<size_t>(W_) * p_, A_ + at * p_);
        std::copy(rmse, rmse + W_, rmse_ + at);
        if (uncertainty_) std::copy(uncertainty, uncertainty + W_, uncertainty_ + at);
    }

private:
    float* A_;
    float* rmse_;
    float* uncertainty_;
    int W_, p_;
};

}  // namespace

void check_endmembers(const float* endmembers, int p, int B) {
    for (size_t i = 0; i < static_cast<size_t>(p) * B; ++i)
        if (!std::isfinite(endmembers[i]) || endmembers[i] < 0.0f)
            throw UsageError("endmembers must be a finite non-negative (" + std::to_string(p) + ", " + std::to_string(B) +
                             ") array");
}

Pipeline::Pipeline(Backend& backend, const Schedule& schedule, int bands, int endmembers, int tile)
    : backend_(backend), schedule_(schedule), B_(bands), p_(endmembers), T_(tile),
      steps_(new TileSteps(backend_, schedule_, B_, p_, T_)) {}

// Out of line: TileSteps is complete here.
Pipeline::~Pipeline() = default;
Pipeline::Pipeline(Pipeline&&) noexcept = default;

void Pipeline::run(const float* cube, int H, int W, const PipelineConfig& cfg, float* abundances_out,
                   float* endmembers_out, float* rmse_out, const float* initial_endmembers, float* uncertainty_out) {
    if (!cube || !abundances_out || !endmembers_out || !rmse_out) throw UsageError("null buffer");
    if (H < 1 || W < 1) throw UsageError("the cube must have H >= 1 and W >= 1");
    BufferCube source(cube, W, B_);
    BufferStore store(abundances_out, W, p_);  // the passes' abundances; the last pass's rows replace them
    BufferSink sink(abundances_out, rmse_out, uncertainty_out, W, p_);
    run_rows(source, H, W, cfg, store, sink, endmembers_out, initial_endmembers);
}

void Pipeline::run_rows(CubeSource& cube, int H, int W, const PipelineConfig& cfg, AbundanceStore& store, RowSink& sink,
                        float* endmembers_out, const float* initial_endmembers) {
    if (!endmembers_out) throw UsageError("null buffer");
    if (H < 1 || W < 1) throw UsageError("the cube must have H >= 1 and W >= 1");
    const int B = B_, p = p_, T = T_;
    if (initial_endmembers) check_endmembers(initial_endmembers, p, B);
    TileSteps& steps = *steps_;
    steps.configure(cfg);  // fails on bad step settings before any work
    const std::vector<int> row_starts = tile_starts(H, T, cfg.overlap), col_starts = tile_starts(W, T, cfg.overlap);
    const int th = std::min(T, H), tw = std::min(T, W), block = std::min(W, kStatisticsBlock);
    const int n_row_tiles = static_cast<int>(row_starts.size());
    stats_ = PipelineStats{};

    // Every buffer the loops use, allocated once; none grows with H, and only the blend band with W.
    RowBlender blender(W, std::max(p, steps.refine_channels()), th, T, cfg.overlap);
    std::vector<float> window(static_cast<size_t>(th) * tw * B), current(static_cast<size_t>(th) * tw * p);
    std::vector<char> valid(static_cast<size_t>(th) * tw);
    std::vector<float> row_a(static_cast<size_t>(W) * p), row_rmse(W), row_u(W);
    std::vector<float> block_y(static_cast<size_t>(block) * B), block_a(static_cast<size_t>(block) * p);
    Statistics st;
    std::vector<double> stats_work, refined(p);
    std::vector<float> E32(static_cast<size_t>(p) * B);
    const float nan = std::numeric_limits<float>::quiet_NaN();

    // Pass 1: HybridSTU tile by tile, blended; finished rows go to the store.
    blender.reset(p);
    int finished = 0;
    for (int k = 0; k < n_row_tiles; ++k) {
        for (int c0 : col_starts) {
            const Tile tile{row_starts[k], c0, th, tw};
            read_window(cube, tile, B, window.data(), valid.data());
            channels_first_rows([&](int i) { return window.data() + static_cast<size_t>(i) * tw * B; }, th, tw, B, T,
                                steps.cube_buffer());
            blender.add_chw(tile, steps.hybridstu_tile());
        }
        for (const int end = k + 1 < n_row_tiles ? row_starts[k + 1] : H; finished < end; ++finished) {
            for (int j = 0; j < W; ++j)
                for (int c = 0; c < p; ++c) row_a[static_cast<size_t>(j) * p + c] = blender.value(finished, j, c);
            store.write_row(finished, row_a.data());
            blender.clear_row(finished);
        }
    }

    statistics(cube, store, H, W, B, p, st, stats_work, block_y.data(), block_a.data());
    std::vector<double> E;
    if (initial_endmembers && cfg.initial_endmembers)
        E.assign(initial_endmembers, initial_endmembers + static_cast<size_t>(p) * B);
    else
        E = nnls_endmembers(st.AtA, st.AtY, p, B);

    for (int round = 0; round < cfg.rounds; ++round) {
        const bool last = round + 1 == cfg.rounds;
        if (round > 0 && !cfg.refine_spectra) {
            // An endmember no pixel uses gets a zero spectrum from NNLS: keep its previous one.
            const std::vector<double> update = nnls_endmembers(st.AtA, st.AtY, p, B);
            for (int k = 0; k < p; ++k) {
                const auto row = update.begin() + static_cast<long>(k) * B;
                if (*std::max_element(row, row + B) > kMinSpectraScale) std::copy(row, row + B, E.begin() + (row - update.begin()));
            }
        }
        if (cfg.refine_spectra) steps.refine_spectra(E, st.AtA, st.AtY, st.count, round);
        for (int i = 0; i < p * B; ++i) {
            E32[i] = static_cast<float>(E[i]);
            E[i] = static_cast<double>(E32[i]);  // the float32 E the step networks see
        }

        // Pass 2: the 2D DDIM refinement of every tile, blended.
        blender.reset(steps.refine_channels());
        finished = 0;
        for (int k = 0; k < n_row_tiles; ++k) {
            for (int c0 : col_starts) {
                const Tile tile{row_starts[k], c0, th, tw};
                // The tile's cube; invalid pixels get the current reconstruction A E. The store still holds
                // the previous pass's abundances for every row of this tile (none of them is finished).
                read_window(cube, tile, B, window.data(), valid.data());
                for (int i = 0; i < th; ++i)
                    store.read(tile.row0 + i, c0, tw, current.data() + static_cast<size_t>(i) * tw * p);
                for (size_t n = 0; n < valid.size(); ++n) {
                    if (valid[n]) continue;
                    const float* a = current.data() + n * p;
                    float* y = window.data() + n * B;
                    for (int b = 0; b < B; ++b) {
                        float v = 0.0f;
                        for (int c = 0; c < p; ++c) v += a[c] * E32[c * B + b];
                        y[b] = v;
                    }
                }
                channels_first_rows([&](int i) { return window.data() + static_cast<size_t>(i) * tw * B; }, th, tw, B,
                                    T, steps.cube_buffer());
                channels_first_rows([&](int i) { return current.data() + static_cast<size_t>(i) * tw * p; }, th, tw, p,
                                    T, steps.x0_buffer());
                blender.add_hwc(tile, steps.refine_tile(tile, round, E32.data()));
            }
            for (const int end = k + 1 < n_row_tiles ? row_starts[k + 1] : H; finished < end; ++finished) {
                for (int j = 0; j < W; ++j) {  // float32 before the projection
                    for (int c = 0; c < p; ++c) refined[c] = static_cast<double>(blender.value(finished, j, c));
                    project_simplex(refined.data(), p);
                    for (int c = 0; c < p; ++c) row_a[static_cast<size_t>(j) * p + c] = static_cast<float>(refined[c]);
                    row_u[j] = cfg.samples > 1 ? blender.value(finished, j, p) : nan;
                }
                blender.clear_row(finished);
                if (!last) {
                    store.write_row(finished, row_a.data());
                    continue;
                }
                // The last pass: the RMSE against the cube, NaN at invalid pixels, and the row out.
                for (int c0 = 0; c0 < W; c0 += block) {
                    const int cols = std::min(W, c0 + block) - c0;
                    cube.read(finished, c0, cols, block_y.data());
                    for (int j = 0; j < cols; ++j) {
                        const float* y = block_y.data() + static_cast<size_t>(j) * B;
                        float* a = row_a.data() + static_cast<size_t>(c0 + j) * p;
                        if (pixel_valid(y, B)) {
                            row_rmse[c0 + j] = pixel_rmse(y, a, E.data(), p, B);
                        } else {
                            std::fill(a, a + p, nan);
                            row_rmse[c0 + j] = nan;
                            row_u[c0 + j] = nan;
                        }
                    }
                }
                sink.write_row(finished, row_a.data(), row_rmse.data(), row_u.data());
            }
        }
        if (!last) statistics(cube, store, H, W, B, p, st, stats_work, block_y.data(), block_a.data());
    }
    stats_.network_calls = steps.network_calls();
    std::copy(E32.begin(), E32.end(), endmembers_out);
}

}  // namespace unmix
