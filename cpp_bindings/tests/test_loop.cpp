// The two-pass flow over the analytic backend: recovery of a synthetic mixture, tiled = untiled,
// invalid pixels, determinism, settings errors, a moved Pipeline and no allocation inside the DDIM loops.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include "analytic_backend.hpp"
#include "check.hpp"
#include "manifest.hpp"
#include "pipeline.hpp"

// Every allocation of the process is counted, so the test can see whether the loops allocate.
static long g_allocations = 0;
void* operator new(std::size_t size) {
    ++g_allocations;
    if (void* p = std::malloc(size ? size : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

using namespace unmix;

namespace {

struct Scene {
    int H, W, B, p;
    std::vector<float> A, E, cube;
};

Scene make_scene(int H, int W, int B, int p, unsigned seed) {
    Scene s{H, W, B, p, {}, {}, {}};
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(0.05f, 1.0f);
    s.E.resize(static_cast<size_t>(p) * B);
    for (auto& v : s.E) v = u(rng);
    s.A.resize(static_cast<size_t>(H) * W * p);
    for (int n = 0; n < H * W; ++n) {
        float total = 0.0f;
        for (int k = 0; k < p; ++k) total += (s.A[n * p + k] = u(rng));
        for (int k = 0; k < p; ++k) s.A[n * p + k] /= total;
    }
    s.cube.resize(static_cast<size_t>(H) * W * B);
    for (int n = 0; n < H * W; ++n)
        for (int b = 0; b < B; ++b) {
            float y = 0.0f;
            for (int k = 0; k < p; ++k) y += s.A[n * p + k] * s.E[k * B + b];
            s.cube[n * B + b] = y;
        }
    return s;
}

Schedule cosine() { return Schedule{}; }

struct Outputs {
    std::vector<float> A, E, rmse;
};

Outputs run(Backend& backend, const Scene& s, int tile, const PipelineConfig& cfg, PipelineStats* stats = nullptr) {
    Pipeline pipeline(backend, cosine(), s.B, s.p, tile);
    Outputs o{std::vector<float>(s.A.size()), std::vector<float>(s.E.size()), std::vector<float>(size_t(s.H) * s.W)};
    pipeline.run(s.cube.data(), s.H, s.W, cfg, o.A.data(), o.E.data(), o.rmse.data());
    if (stats) *stats = pipeline.stats();
    return o;
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
    double worst = 0.0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, double(std::fabs(a[i] - b[i])));
    return worst;
}

bool identical(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

PipelineConfig config(int tile, int overlap) {
    PipelineConfig c;
    c.tile = tile;
    c.overlap = overlap;
    c.steps = 5;
    c.t0 = 100;
    c.spectra_steps = 4;
    c.spectra_t0 = 50;
    c.refine_spectra = true;  // exercise both loops (the default runs the 2D loop only)
    return c;
}

void test_recovery() {
    // Oracle step networks (x0_hat from the data alone): with eta = 0 the last DDIM step returns x0_hat,
    // so the flow recovers the abundances and endmembers of an exact mixture.
    const Scene s = make_scene(23, 19, 6, 3, 7);
    AnalyticBackend backend(s.E, s.p, s.B);
    PipelineConfig cfg = config(8, 3);
    cfg.rounds = 2;
    PipelineStats stats;
    const Outputs o = run(backend, s, 8, cfg, &stats);
    const double dA = max_diff(o.A, s.A), dE = max_diff(o.E, s.E);
    float worst_rmse = 0.0f;
    for (float r : o.rmse) worst_rmse = std::max(worst_rmse, r);
    CHECK_MSG(dA < 2e-5, std::to_string(dA));
    CHECK_MSG(dE < 2e-5, std::to_string(dE));
    CHECK_MSG(worst_rmse < 2e-5f, std::to_string(worst_rmse));
    for (int n = 0; n < s.H * s.W; ++n) {
        float total = 0.0f;
        for (int k = 0; k < s.p; ++k) {
            CHECK(o.A[n * s.p + k] >= 0.0f);
            total += o.A[n * s.p + k];
        }
        CHECK(std::fabs(total - 1.0f) < 1e-5f);
    }
    // tiles: rows {0, 5, 10, 15}, cols {0, 5, 10, 11} -> 16; calls = 16 + rounds * (4 + 16 * 5)
    CHECK_MSG(stats.network_calls == 16 + 2 * (4 + 16 * 5), std::to_string(stats.network_calls));
    std::printf("  recovery: max |A - A_true| %.2g, max |E - E_true| %.2g, max rmse %.2g\n", dA, dE, double(worst_rmse));
}

void test_tiled_equals_untiled() {
    // Pixelwise networks and noise drawn at global pixel coordinates: the tiling cannot show.
    const Scene s = make_scene(21, 26, 5, 4, 11);
    AnalyticBackend backend(s.E, s.p, s.B, 0.1f);
    PipelineConfig tiled = config(8, 3);
    tiled.eta = 0.7;
    tiled.spectra_eta = 0.4;
    tiled.samples = 2;
    tiled.seed = 123456789012345ull;
    PipelineConfig whole = tiled;
    whole.tile = 32;
    whole.overlap = 0;
    const Outputs a = run(backend, s, 8, tiled), b = run(backend, s, 32, whole);
    CHECK(identical(a.A, b.A));
    CHECK(identical(a.E, b.E));
    CHECK(identical(a.rmse, b.rmse));
    // the same settings replay bit for bit; another seed changes the result
    const Outputs again = run(backend, s, 8, tiled);
    CHECK(identical(a.A, again.A) && identical(a.E, again.E));
    tiled.seed = 1;
    const Outputs other = run(backend, s, 8, tiled);
    CHECK(!identical(a.A, other.A));
    std::printf("  tiled (8 px, overlap 3) = untiled: bit exact; other seed differs by %.2g\n", max_diff(a.A, other.A));
}

void test_invalid_pixels() {
    Scene s = make_scene(12, 10, 5, 3, 3);
    s.cube[(4 * 10 + 6) * 5 + 2] = std::numeric_limits<float>::quiet_NaN();
    s.cube[(0 * 10 + 0) * 5 + 0] = std::numeric_limits<float>::infinity();
    AnalyticBackend backend(s.E, s.p, s.B);
    const Outputs o = run(backend, s, 8, config(8, 2));
    for (int n = 0; n < s.H * s.W; ++n) {
        const bool invalid = n == 46 || n == 0;
        CHECK(std::isnan(o.rmse[n]) == invalid);
        for (int k = 0; k < s.p; ++k) CHECK(std::isnan(o.A[n * s.p + k]) == invalid);
    }
    CHECK(max_diff(o.E, s.E) < 2e-5);
    // every pixel invalid: nothing to unmix
    for (auto& v : s.cube) v = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS(run(backend, s, 8, config(8, 2)), InputError, "no pixel is finite");
}

void test_settings_errors() {
    const Scene s = make_scene(9, 9, 4, 2, 5);
    AnalyticBackend backend(s.E, s.p, s.B);
    CHECK_THROWS(run(backend, s, 16, config(8, 2)), UsageError, "the networks were built for 16x16 tiles");
    PipelineConfig c = config(8, 2);
    c.steps = 200;
    CHECK_THROWS(run(backend, s, 8, c), UsageError, "K (DDIM steps) must be <= t0 + 1 = 101");
    c = config(8, 8);
    CHECK_THROWS(run(backend, s, 8, c), UsageError, "overlap must be smaller than tile");
    c = config(8, 2);
    c.eta = 1.5;
    CHECK_THROWS(run(backend, s, 8, c), UsageError, "eta must be");
    c = config(8, 2);
    c.rounds = 20000;
    CHECK_THROWS(run(backend, s, 8, c), UsageError, "exceeds 65535");
    Pipeline pipeline(backend, cosine(), s.B, s.p, 8);
    std::vector<float> out(100);
    CHECK_THROWS(pipeline.run(nullptr, 9, 9, config(8, 2), out.data(), out.data(), out.data()), UsageError, "null buffer");
}

// A Pipeline owns its TileSteps: it cannot be copied, and a moved one runs as the original would.
static_assert(!std::is_copy_constructible<Pipeline>::value && !std::is_copy_assignable<Pipeline>::value,
              "Pipeline must not be copyable");
static_assert(std::is_nothrow_move_constructible<Pipeline>::value, "Pipeline must be movable");

void test_moved_pipeline() {
    const Scene s = make_scene(12, 10, 5, 3, 4);
    AnalyticBackend backend(s.E, s.p, s.B);
    const PipelineConfig cfg = config(8, 2);
    const Outputs expected = run(backend, s, 8, cfg);
    Pipeline first(backend, cosine(), s.B, s.p, 8);
    Pipeline moved(std::move(first));
    Outputs o{std::vector<float>(s.A.size()), std::vector<float>(s.E.size()), std::vector<float>(size_t(s.H) * s.W)};
    moved.run(s.cube.data(), s.H, s.W, cfg, o.A.data(), o.E.data(), o.rmse.data());
    CHECK(identical(o.A, expected.A) && identical(o.E, expected.E) && identical(o.rmse, expected.rmse));
}

// Records the allocation counter at every step-network call.
class Watching : public Backend {
public:
    explicit Watching(Backend& inner) : inner_(inner) {}
    void run(const std::string& network, const std::vector<TensorView>& in, std::vector<TensorView>& out) override {
        if (network == last_ && network != "hybridstu" && g_allocations != last_count_) ++allocating_steps_;
        inner_.run(network, in, out);
        last_ = network;
        last_count_ = g_allocations;
    }
    long allocating_steps_ = 0;

private:
    Backend& inner_;
    std::string last_;
    long last_count_ = 0;
};

void test_no_allocation_in_loops() {
    const Scene s = make_scene(20, 20, 6, 3, 9);
    AnalyticBackend analytic(s.E, s.p, s.B, 0.1f);
    Watching watching(analytic);
    PipelineConfig c = config(8, 2);
    c.eta = 1.0;
    c.spectra_eta = 1.0;
    c.samples = 2;
    c.rounds = 2;
    run(watching, s, 8, c);
    CHECK_MSG(watching.allocating_steps_ == 0, std::to_string(watching.allocating_steps_));
}

}  // namespace

int main() {
    try {
        test_recovery();
        test_tiled_equals_untiled();
        test_invalid_pixels();
        test_settings_errors();
        test_moved_pipeline();
        test_no_allocation_in_loops();
    } catch (const std::exception& error) {
        check::fail(__FILE__, __LINE__, std::string("unexpected exception: ") + error.what());
    }
    return check::finish("test_loop");
}
