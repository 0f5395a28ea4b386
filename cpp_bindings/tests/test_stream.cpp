// Push-broom streaming: finished rows equal the whole-buffer call with the same fixed endmembers, bit for
// bit, for line counts below, at and above the tile size and with or without a moved last row tile; the
// ring stays 2T + 1 rows; the C ABI's stream functions and their error paths.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "analytic_backend.hpp"
#include "check.hpp"
#include "fixture.hpp"
#include "pipeline.hpp"
#include "stream.hpp"
#include "unmix.h"

using namespace unmix;

namespace {

// The analytic networks plus a term that depends on the whole tile (like GroupNorm statistics), so a
// pixel's result depends on which tiles cover it: equality then needs the same tile grid.
class ContextBackend : public Backend {
public:
    ContextBackend(std::vector<float> spectra, int p, int B) : inner_(std::move(spectra), p, B, 0.1f) {}
    void run(const std::string& network, const std::vector<TensorView>& in, std::vector<TensorView>& out) override {
        inner_.run(network, in, out);
        if (network == "spectra_step") return;
        const TensorView& x = in[0];  // hybridstu: cube; abundance_step: x_t
        double mean = 0.0;
        for (size_t n = 0; n < x.numel(); ++n) mean += x.data[n];
        mean /= static_cast<double>(x.numel());
        const float shift = static_cast<float>(0.01 * mean);
        TensorView& y = out[0];
        if (network == "hybridstu") {  // keep (1, p, T, T) on the simplex: move mass between the first two
            const size_t plane = static_cast<size_t>(y.shape[2]) * y.shape[3];
            for (size_t n = 0; n < plane; ++n) {
                const float moved = std::fmin(std::fmax(shift, -y.data[n]), y.data[plane + n]);
                y.data[n] += moved;
                y.data[plane + n] -= moved;
            }
        } else {
            for (size_t n = 0; n < y.numel(); ++n) y.data[n] += shift;
        }
    }

private:
    AnalyticBackend inner_;
};

struct Scene {
    int H, W, B, p;
    std::vector<float> E, cube;
};

Scene make_scene(int H, int W, int B, int p, unsigned seed) {
    Scene s{H, W, B, p, {}, {}};
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(0.05f, 1.0f);
    s.E.resize(static_cast<size_t>(p) * B);
    for (auto& v : s.E) v = u(rng);
    s.cube.resize(static_cast<size_t>(H) * W * B);
    std::vector<float> a(p);
    for (int n = 0; n < H * W; ++n) {
        float total = 0.0f;
        for (int k = 0; k < p; ++k) total += (a[k] = u(rng));
        for (int b = 0; b < B; ++b) {
            float y = 0.0f;
            for (int k = 0; k < p; ++k) y += a[k] / total * s.E[k * B + b];
            s.cube[static_cast<size_t>(n) * B + b] = y + 0.01f * (u(rng) - 0.5f);
        }
    }
    if (H * W > 7) s.cube[static_cast<size_t>(7) * B + 1] = NAN;  // one invalid pixel
    return s;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
    double d = 0.0;
    for (size_t i = 0; i < a.size(); ++i)
        if (!(std::isnan(a[i]) && std::isnan(b[i]))) d = std::fmax(d, std::fabs(double(a[i]) - double(b[i])));
    return d;
}

struct Rows {
    std::vector<float> A, rmse, uncertainty;
};

// Streams the scene line by line, popping whatever is finished after each line (or only every
// `pop_every` lines, to hit the full-ring refusal); checks the latency bound on the way.
Rows stream_scene(std::shared_ptr<Backend> backend, const Scene& s, int T, const PipelineConfig& cfg, int pop_every = 1,
                  int* refusals = nullptr) {
    Stream stream(backend, Schedule{}, s.B, s.p, T, s.W, cfg, s.E.data());
    CHECK(stream.ring_rows() == 2 * T + 1);
    Rows out{std::vector<float>(static_cast<size_t>(s.H) * s.W * s.p), std::vector<float>(static_cast<size_t>(s.H) * s.W),
             std::vector<float>(static_cast<size_t>(s.H) * s.W)};
    int64_t expected_row = 0;
    auto pop_all = [&] {
        while (stream.rows_ready() > 0) {
            const size_t at = static_cast<size_t>(expected_row) * s.W;
            const int64_t row = stream.pop_row(out.A.data() + at * s.p, out.rmse.data() + at, out.uncertainty.data() + at);
            CHECK(row == expected_row);
            ++expected_row;
        }
    };
    for (int r = 0; r < s.H; ++r) {
        const float* line = s.cube.data() + static_cast<size_t>(r) * s.W * s.B;
        try {
            stream.push_line(line);
        } catch (const UsageError& e) {
            CHECK_MSG(std::string(e.what()).find("pop them") != std::string::npos, e.what());
            if (refusals) ++*refusals;
            pop_all();
            stream.push_line(line);
        }
        if ((r + 1) % pop_every == 0) pop_all();
        if (pop_every == 1) CHECK_MSG(expected_row >= r + 1 - 2 * T, std::to_string(r) + " " + std::to_string(expected_row));
    }
    stream.finish();
    pop_all();
    CHECK(expected_row == s.H);
    CHECK_THROWS(stream.pop_row(out.A.data(), out.rmse.data(), nullptr), UsageError, "every row was popped");
    CHECK_THROWS(stream.push_line(s.cube.data()), UsageError, "finished");
    return out;
}

void test_stream_equals_whole_buffer() {
    const int T = 8, overlap = 3;  // stride 5
    // below, at and above the tile; last row tile regular (8 + 5k) or moved back to H - T
    const int heights[] = {1, 5, 8, 13, 14, 17, 23, 41};
    for (int samples : {1, 2}) {
        for (int H : heights) {
            const Scene s = make_scene(H, 11, 6, 3, 100u + H);
            auto backend = std::make_shared<ContextBackend>(s.E, s.p, s.B);
            PipelineConfig cfg;
            cfg.tile = T;
            cfg.overlap = overlap;
            cfg.steps = 4;
            cfg.t0 = 100;
            cfg.samples = samples;
            cfg.eta = samples > 1 ? 0.7 : 0.0;
            cfg.seed = 5;
            cfg.refine_spectra = false;
            cfg.rounds = 1;
            Pipeline pipeline(*backend, Schedule{}, s.B, s.p, T);
            const size_t HW = static_cast<size_t>(H) * s.W;
            std::vector<float> A(HW * s.p), E(static_cast<size_t>(s.p) * s.B), rmse(HW), unc(HW);
            pipeline.run(s.cube.data(), H, s.W, cfg, A.data(), E.data(), rmse.data(), s.E.data(), unc.data());
            CHECK(same_bits(E, s.E));
            const Rows rows = stream_scene(backend, s, T, cfg);
            const std::string what = "H=" + std::to_string(H) + " samples=" + std::to_string(samples);
            CHECK_MSG(same_bits(rows.A, A), what + " abundances max diff " + std::to_string(max_diff(rows.A, A)));
            CHECK_MSG(same_bits(rows.rmse, rmse), what + " rmse max diff " + std::to_string(max_diff(rows.rmse, rmse)));
            CHECK_MSG(same_bits(rows.uncertainty, unc), what + " uncertainty");
            if (H > 7) CHECK(std::isnan(rows.A[7 * s.p]) && std::isnan(rows.rmse[7]) && std::isnan(rows.uncertainty[7]));
            if (samples > 1) CHECK(rows.uncertainty[0] > 0.0f);
            // the context term makes the tiling matter: the same cube in one tile gives other values
            if (H == 23 && samples == 1) {
                PipelineConfig whole = cfg;
                whole.tile = 32;
                whole.overlap = 3;
                Pipeline big(*backend, Schedule{}, s.B, s.p, 32);
                std::vector<float> A2(HW * s.p);
                big.run(s.cube.data(), H, s.W, whole, A2.data(), E.data(), rmse.data(), s.E.data(), nullptr);
                CHECK_MSG(max_diff(A, A2) > 1e-6, "the tile grid should matter with context networks");
            }
        }
    }
    std::printf("  stream == whole buffer (bit for bit) for %zu line counts x 2 sample settings\n",
                sizeof(heights) / sizeof(heights[0]));
}

void test_full_ring_refused_then_continues() {
    const int T = 8;
    const Scene s = make_scene(60, 9, 5, 3, 7);
    auto backend = std::make_shared<ContextBackend>(s.E, s.p, s.B);
    PipelineConfig cfg;
    cfg.tile = T;
    cfg.overlap = 2;
    cfg.steps = 3;
    cfg.t0 = 50;
    cfg.refine_spectra = false;
    const Rows eager = stream_scene(backend, s, T, cfg);
    int refusals = 0;
    const Rows lazy = stream_scene(backend, s, T, cfg, 1000, &refusals);  // pops only when refused
    CHECK_MSG(refusals > 0, std::to_string(refusals));
    CHECK(same_bits(eager.A, lazy.A) && same_bits(eager.rmse, lazy.rmse));
}

// ---- the C ABI -----------------------------------------------------------------------------------

void test_capi_stream(const std::string& dir) {
    using fixture::B;
    using fixture::P;
    using fixture::T;
    fixture::make_model(dir);
    unmix_handle* h = nullptr;
    CHECK_MSG(unmix_open(dir.c_str(), "analytic", 1, &h) == UNMIX_OK, unmix_last_error(nullptr));
    if (!h) return;
    CHECK(unmix_abi_version() >= 2);  // the stream functions came with ABI 2
    const int H = 29, W = 10;
    const Scene s = make_scene(H, W, B, P, 3);
    std::vector<float> E(P * B), Eout(P * B), A(H * W * P), rmse(H * W), unc(H * W);
    CHECK(unmix_model_endmembers(h, E.data(), P * B) == UNMIX_OK);
    CHECK(std::memcmp(E.data(), fixture::E_TRUE, sizeof(float) * P * B) == 0);
    CHECK(unmix_set_option(h, "refine_spectra", 0) == UNMIX_OK);  // E fixed: the stream's setting
    CHECK(unmix_set_option(h, "rounds", 1) == UNMIX_OK);
    CHECK(unmix_set_option(h, "samples", 3) == UNMIX_OK);
    CHECK(unmix_set_option(h, "eta", 0.5) == UNMIX_OK);
    CHECK(unmix_run_ex(h, s.cube.data(), H, W, B, E.data(), A.data(), Eout.data(), rmse.data(), unc.data()) == UNMIX_OK);

    unmix_stream* st = nullptr;
    CHECK_MSG(unmix_stream_open(h, W, B, nullptr, &st) == UNMIX_OK, unmix_last_error(h));
    if (!st) return;
    CHECK(unmix_stream_ring_rows(st) == 2 * T + 1);
    std::vector<float> sA(H * W * P), sr(H * W), su(H * W);
    int64_t next = 0, row = -7;
    auto pop = [&] {
        while (unmix_stream_rows_ready(st) > 0) {
            CHECK(unmix_stream_pop_row(st, &row, sA.data() + next * W * P, sr.data() + next * W, su.data() + next * W) == UNMIX_OK);
            CHECK(row == next);
            ++next;
        }
    };
    for (int r = 0; r < H; ++r) {
        CHECK(unmix_stream_push_line(st, s.cube.data() + r * W * B, W * B) == UNMIX_OK);
        pop();
    }
    CHECK(unmix_stream_finish(st) == UNMIX_OK);
    pop();
    CHECK(next == H);
    CHECK(std::memcmp(sA.data(), A.data(), A.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(sr.data(), rmse.data(), rmse.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(su.data(), unc.data(), unc.size() * sizeof(float)) == 0);
    // the running sums re-estimate E (the scene's own endmembers, noise 0.01)
    std::vector<float> Eest(P * B);
    CHECK(unmix_stream_estimate_endmembers(st, Eest.data(), P * B) == UNMIX_OK);
    CHECK(std::isfinite(Eest[0]) && Eest[0] >= 0.0f);

    // errors: every stream entry point, NULL pointers and wrong sizes
    CHECK(unmix_stream_pop_row(st, &row, sA.data(), sr.data(), nullptr) == UNMIX_ERROR_USAGE && row == -1);
    CHECK(std::string(unmix_stream_last_error(st)).find("every row was popped") != std::string::npos);
    CHECK(unmix_stream_push_line(st, s.cube.data(), W * B) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_stream_last_error(st)).find("finished") != std::string::npos);
    CHECK(unmix_stream_estimate_endmembers(st, Eest.data(), P * B + 1) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_stream_last_error(st)).find("expected p * B = 15") != std::string::npos);
    CHECK(unmix_stream_estimate_endmembers(st, nullptr, P * B) == UNMIX_ERROR_USAGE);
    unmix_stream_close(st);

    st = reinterpret_cast<unmix_stream*>(0x1);
    CHECK(unmix_stream_open(h, W, B + 1, nullptr, &st) == UNMIX_ERROR_INPUT && st == nullptr);
    CHECK(std::string(unmix_last_error(h)).find("the cube has 6 bands but the model expects 5") != std::string::npos);
    CHECK(unmix_stream_open(h, 0, B, nullptr, &st) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_last_error(h)).find("width") != std::string::npos);
    CHECK(unmix_stream_open(h, W, B, nullptr, nullptr) == UNMIX_ERROR_USAGE);
    CHECK(unmix_stream_open(nullptr, W, B, nullptr, &st) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_last_error(nullptr)).find("unmix_stream_open: handle is NULL") != std::string::npos);
    std::vector<float> negative(E);
    negative[3] = -1.0f;
    CHECK(unmix_stream_open(h, W, B, negative.data(), &st) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_last_error(h)).find("finite non-negative") != std::string::npos);
    CHECK(unmix_stream_open(h, W, B, E.data(), &st) == UNMIX_OK);
    CHECK(unmix_stream_push_line(st, nullptr, W * B) == UNMIX_ERROR_USAGE);
    CHECK(unmix_stream_push_line(st, s.cube.data(), W * B - 1) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_stream_last_error(st)).find("expected width * bands = 50") != std::string::npos);
    CHECK(unmix_stream_rows_ready(st) == 0);
    CHECK(unmix_stream_pop_row(st, &row, sA.data(), sr.data(), nullptr) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_stream_last_error(st)).find("no finished row yet") != std::string::npos);
    CHECK(unmix_stream_pop_row(st, nullptr, sA.data(), sr.data(), nullptr) == UNMIX_ERROR_USAGE);
    CHECK(unmix_stream_estimate_endmembers(st, Eest.data(), P * B) == UNMIX_ERROR_INPUT);
    CHECK(unmix_stream_finish(st) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_stream_last_error(st)).find("no line was pushed") != std::string::npos);
    // the handle may go first: the stream keeps its backend
    CHECK(unmix_stream_push_line(st, s.cube.data(), W * B) == UNMIX_OK);
    unmix_close(h);
    CHECK(unmix_stream_finish(st) == UNMIX_OK && unmix_stream_rows_ready(st) == 1);
    CHECK(unmix_stream_pop_row(st, &row, sA.data(), sr.data(), su.data()) == UNMIX_OK && row == 0);
    unmix_stream_close(st);
    // NULL stream everywhere
    CHECK(unmix_stream_push_line(nullptr, s.cube.data(), W * B) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_stream_last_error(nullptr)).find("unmix_stream_push_line: stream is NULL") != std::string::npos);
    CHECK(unmix_stream_finish(nullptr) == UNMIX_ERROR_USAGE);
    CHECK(unmix_stream_pop_row(nullptr, &row, sA.data(), sr.data(), nullptr) == UNMIX_ERROR_USAGE);
    CHECK(unmix_stream_estimate_endmembers(nullptr, Eest.data(), P * B) == UNMIX_ERROR_USAGE);
    CHECK(unmix_stream_rows_ready(nullptr) == -1 && unmix_stream_ring_rows(nullptr) == -1);
    unmix_stream_close(nullptr);
}

// unmix_run_ex, unmix_model_endmembers, unmix_get_option, unmix_set_option: NULL pointers, sizes, band
// mismatch, bad endmembers, unknown names (unmix_open's and unmix_run's errors: test_capi).
void test_capi_run_ex_errors(const std::string& dir) {
    using fixture::B;
    using fixture::P;
    unmix_handle* h = nullptr;
    CHECK(unmix_open(dir.c_str(), "analytic", 1, &h) == UNMIX_OK);
    if (!h) return;
    const int H = 6, W = 7;
    const Scene s = make_scene(H, W, B, P, 4);
    std::vector<float> E(P * B), A(H * W * P), rmse(H * W), unc(H * W);
    CHECK(unmix_model_endmembers(h, E.data(), P * B - 1) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_last_error(h)).find("expected p * B = 15") != std::string::npos);
    CHECK(unmix_model_endmembers(h, nullptr, P * B) == UNMIX_ERROR_USAGE);
    CHECK(unmix_model_endmembers(h, E.data(), P * B) == UNMIX_OK);
    CHECK(unmix_run_ex(nullptr, s.cube.data(), H, W, B, nullptr, A.data(), E.data(), rmse.data(), nullptr) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_last_error(nullptr)).find("unmix_run_ex: handle is NULL") != std::string::npos);
    CHECK(unmix_run_ex(h, nullptr, H, W, B, nullptr, A.data(), E.data(), rmse.data(), nullptr) == UNMIX_ERROR_USAGE);
    CHECK(unmix_run_ex(h, s.cube.data(), H, -1, B, nullptr, A.data(), E.data(), rmse.data(), nullptr) == UNMIX_ERROR_USAGE);
    CHECK(unmix_run_ex(h, s.cube.data(), H, W, B - 1, nullptr, A.data(), E.data(), rmse.data(), nullptr) == UNMIX_ERROR_INPUT);
    std::vector<float> bad(E);
    bad[0] = NAN;
    CHECK(unmix_run_ex(h, s.cube.data(), H, W, B, bad.data(), A.data(), E.data(), rmse.data(), nullptr) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_last_error(h)).find("finite non-negative") != std::string::npos);
    // unmix_get_option / unmix_set_option
    double value = -1.0;
    CHECK(unmix_get_option(h, "samples", &value) == UNMIX_OK && value == 1.0);
    CHECK(unmix_get_option(h, "tile", &value) == UNMIX_OK && value == fixture::T);
    CHECK(unmix_set_option(h, "tile", 32) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_last_error(h)).find("tile is fixed by the exported networks") != std::string::npos);
    // Every setting reads back what was set (flags as 0 / 1), on a handle of its own.
    unmix_handle* h2 = nullptr;
    CHECK(unmix_open(dir.c_str(), "analytic", 1, &h2) == UNMIX_OK);
    const struct { const char* name; double set, read; } round_trips[] = {
        {"steps", 7, 7}, {"t0", 50, 50}, {"eta", 0.25, 0.25}, {"samples", 2, 2}, {"rounds", 2, 2}, {"overlap", 2, 2},
        {"dc_weight", 30, 30}, {"spectra_steps", 4, 4}, {"spectra_t0", 90, 90}, {"spectra_eta", 0.5, 0.5},
        {"refine_spectra", 2, 1}, {"spectra_dc_weight", 3, 3}, {"initial_endmembers", 0, 0}, {"seed", 12345, 12345}};
    for (const auto& r : round_trips) {
        CHECK_MSG(unmix_set_option(h2, r.name, r.set) == UNMIX_OK, r.name);
        CHECK_MSG(unmix_get_option(h2, r.name, &value) == UNMIX_OK && value == r.read, r.name);
    }
    CHECK(unmix_set_option(h2, "steps", 1.5) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_last_error(h2)).find("steps must be an integer >= 1") != std::string::npos);
    CHECK(unmix_get_option(h2, "steps", &value) == UNMIX_OK && value == 7);   // a refused value changes nothing
    CHECK(unmix_set_option(h2, "seed", -1) == UNMIX_ERROR_USAGE);
    unmix_close(h2);
    CHECK(unmix_get_option(h, "bogus", &value) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_last_error(h)).find("unknown inference setting 'bogus'") != std::string::npos);
    CHECK(unmix_get_option(h, nullptr, &value) == UNMIX_ERROR_USAGE);
    CHECK(unmix_get_option(h, "steps", nullptr) == UNMIX_ERROR_USAGE);
    CHECK(unmix_get_option(nullptr, "steps", &value) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_last_error(nullptr)).find("unmix_get_option: handle is NULL") != std::string::npos);
    CHECK(unmix_set_option(nullptr, "steps", 2) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_last_error(nullptr)).find("unmix_set_option: handle is NULL") != std::string::npos);
    CHECK(unmix_model_endmembers(nullptr, E.data(), P * B) == UNMIX_ERROR_USAGE);
    CHECK(unmix_tile_size(nullptr) == -1);
    // one sample: the uncertainty is NaN
    CHECK(unmix_set_option(h, "refine_spectra", 0) == UNMIX_OK);
    const std::vector<float> given(E);
    CHECK_MSG(unmix_run_ex(h, s.cube.data(), H, W, B, given.data(), A.data(), E.data(), rmse.data(), unc.data()) == UNMIX_OK,
              unmix_last_error(h));
    CHECK(std::isnan(unc[0]) && std::isnan(unc[H * W - 1]));
    unmix_close(h);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    try {
        test_stream_equals_whole_buffer();
        test_full_ring_refused_then_continues();
        test_capi_stream(argv[1]);
        test_capi_run_ex_errors(argv[1]);
    } catch (const std::exception& error) {
        check::fail(__FILE__, __LINE__, std::string("unexpected exception: ") + error.what());
    }
    return check::finish("test_stream");
}
