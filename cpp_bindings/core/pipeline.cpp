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
// Pipeline::run follows run_pipeline step by step; the per-tile bodies live in TileSteps (shared with the
// push-broom Stream), the whole-image blending and the statistics here.

namespace {
constexpr int kStatisticsBlock = 256;

// Accumulates weighted (h, w, C) tile values into an (H, W, C) image (tiling.Blender).
struct Blender {
    int H, W, C, T;
    std::vector<double> weights, sum, weight_sum;
    Blender(int H_, int W_, int C_, int T_, int overlap) : H(H_), W(W_), C(C_), T(T_) {
        weights = blend_weights(T, overlap);
        sum.assign(static_cast<size_t>(H) * W * C, 0.0);
        weight_sum.assign(static_cast<size_t>(H) * W, 0.0);
    }
    void reset(int channels) {
        C = channels;
        sum.assign(static_cast<size_t>(H) * W * C, 0.0);
        std::fill(weight_sum.begin(), weight_sum.end(), 0.0);
    }
    // channel-first (C, T, T) tile output
    void add_chw(const Tile& tile, const float* chw) {
        for (int i = 0; i < tile.height; ++i)
            for (int j = 0; j < tile.width; ++j) {
                const double wt = weights[i * T + j];
                const size_t pixel = static_cast<size_t>(tile.row0 + i) * W + (tile.col0 + j);
                for (int c = 0; c < C; ++c)
                    sum[pixel * C + c] += wt * static_cast<double>(chw[(static_cast<size_t>(c) * T + i) * T + j]);
                weight_sum[pixel] += wt;
            }
    }
    // (h, w, C) row-major tile values
    void add_hwc(const Tile& tile, const float* hwc) {
        for (int i = 0; i < tile.height; ++i)
            for (int j = 0; j < tile.width; ++j) {
                const double wt = weights[i * T + j];
                const size_t pixel = static_cast<size_t>(tile.row0 + i) * W + (tile.col0 + j);
                const float* v = hwc + (static_cast<size_t>(i) * tile.width + j) * C;
                for (int c = 0; c < C; ++c) sum[pixel * C + c] += wt * static_cast<double>(v[c]);
                weight_sum[pixel] += wt;
            }
    }
    // channel c of the weighted mean, float32, at pixel
    float value(size_t pixel, int c) const {
        if (!(weight_sum[pixel] > 0)) throw UsageError("some pixels were covered by no tile");
        return static_cast<float>(sum[pixel * C + c] / weight_sum[pixel]);
    }
};

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
                    if (E && rmse) rmse[pixel] = pixel_rmse(y, A + pixel * p, E, p, B);
                }
            for (int i = 0; i < p * p; ++i) s.AtA[i] += blockAtA[i];
            for (int i = 0; i < p * B; ++i) s.AtY[i] += blockAtY[i];
        }
    if (s.count == 0) throw InputError("the cube: no pixel is finite in every band; nothing to unmix");
}

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
    const int B = B_, p = p_, T = T_;
    if (initial_endmembers) check_endmembers(initial_endmembers, p, B);
    TileSteps& steps = *steps_;
    steps.configure(cfg);  // fails on bad step settings before any work
    const size_t HW = static_cast<size_t>(H) * W;
    const std::vector<Tile> grid = tile_grid(H, W, T, cfg.overlap);
    stats_ = PipelineStats{};

    // Every buffer the loops use, allocated once.
    std::vector<char> mask(HW);
    std::vector<float> clean(HW * B);  // the cube with invalid pixels set to 0 (fed to the networks)
    for (size_t pixel = 0; pixel < HW; ++pixel) {
        mask[pixel] = pixel_valid(cube + pixel * B, B);
        for (int b = 0; b < B; ++b) clean[pixel * B + b] = mask[pixel] ? cube[pixel * B + b] : 0.0f;
    }
    std::vector<float> A(HW * p), current(HW * p), work_tile(static_cast<size_t>(T) * T * B), uncertainty;
    Blender blender(H, W, p, T, cfg.overlap);
    Statistics st;
    std::vector<double> stats_work, refined(p);
    std::vector<float> E32(static_cast<size_t>(p) * B);

    // Pass 1: HybridSTU tile by tile, blended.
    for (const Tile& tile : grid) {
        channels_first_rows([&](int i) { return clean.data() + (static_cast<size_t>(tile.row0 + i) * W + tile.col0) * B; },
                            tile.height, tile.width, B, T, steps.cube_buffer());
        blender.add_chw(tile, steps.hybridstu_tile());
    }
    for (size_t pixel = 0; pixel < HW; ++pixel)
        for (int k = 0; k < p; ++k) A[pixel * p + k] = blender.value(pixel, k);

    statistics(cube, mask, A.data(), H, W, B, p, nullptr, nullptr, st, stats_work);
    std::vector<double> E;
    if (initial_endmembers && cfg.initial_endmembers)
        E.assign(initial_endmembers, initial_endmembers + static_cast<size_t>(p) * B);
    else
        E = nnls_endmembers(st.AtA, st.AtY, p, B);

    for (int round = 0; round < cfg.rounds; ++round) {
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
        std::copy(A.begin(), A.end(), current.begin());

        // Pass 2: the 2D DDIM refinement of every tile, blended.
        blender.reset(steps.refine_channels());
        for (const Tile& tile : grid) {
            // The tile's cube; invalid pixels get the current reconstruction A E.
            for (int i = 0; i < tile.height; ++i)
                for (int j = 0; j < tile.width; ++j) {
                    const size_t pixel = static_cast<size_t>(tile.row0 + i) * W + (tile.col0 + j);
                    float* y = work_tile.data() + (static_cast<size_t>(i) * tile.width + j) * B;
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
            channels_first_rows([&](int i) { return work_tile.data() + static_cast<size_t>(i) * tile.width * B; },
                                tile.height, tile.width, B, T, steps.cube_buffer());
            channels_first_rows([&](int i) { return current.data() + (static_cast<size_t>(tile.row0 + i) * W + tile.col0) * p; },
                                tile.height, tile.width, p, T, steps.x0_buffer());
            blender.add_hwc(tile, steps.refine_tile(tile, round, E32.data()));
        }
        for (size_t pixel = 0; pixel < HW; ++pixel) {  // float32 before the projection
            for (int k = 0; k < p; ++k) refined[k] = static_cast<double>(blender.value(pixel, k));
            project_simplex(refined.data(), p);
            for (int k = 0; k < p; ++k) A[pixel * p + k] = static_cast<float>(refined[k]);
        }
        if (cfg.samples > 1 && uncertainty_out) {
            uncertainty.resize(HW);
            for (size_t pixel = 0; pixel < HW; ++pixel) uncertainty[pixel] = blender.value(pixel, p);
        }
        statistics(cube, mask, A.data(), H, W, B, p, E.data(), rmse_out, st, stats_work);
    }
    stats_.network_calls = steps.network_calls();

    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (size_t pixel = 0; pixel < HW; ++pixel)
        for (int k = 0; k < p; ++k) abundances_out[pixel * p + k] = mask[pixel] ? A[pixel * p + k] : nan;
    std::copy(E32.begin(), E32.end(), endmembers_out);
    if (uncertainty_out)
        for (size_t pixel = 0; pixel < HW; ++pixel)
            uncertainty_out[pixel] = (cfg.samples > 1 && mask[pixel]) ? uncertainty[pixel] : nan;
}

}  // namespace unmix
