// Core against the golden files of tests/golden (written by the Python side): JSON, schedule, Philox,
// tiling, NNLS (rank-deficient cases bit for bit) and the simplex projection.
#include <dirent.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "check.hpp"
#include "diffusion.hpp"
#include "json.hpp"
#include "manifest.hpp"
#include "pipeline.hpp"
#include "sha256.hpp"

using namespace unmix;

namespace {

uint32_t hex(const Json& value) { return static_cast<uint32_t>(std::stoul(value.as_string(), nullptr, 16)); }

uint32_t bits(float value) {
    uint32_t out;
    std::memcpy(&out, &value, 4);
    return out;
}

void test_json() {
    Json doc = Json::parse(R"({"a": [1, -2.5e3, true, null, "x\u00e9\n"], "b": {"c": 18446744073709551615}})");
    CHECK(doc["a"].size() == 5);
    CHECK(doc["a"][0].is_integer() && doc["a"][0].as_integer() == 1);
    CHECK(doc["a"][1].as_number() == -2500.0 && !doc["a"][1].is_integer());
    CHECK(doc["a"][2].as_bool());
    CHECK(doc["a"][3].is_null());
    CHECK(doc["a"][4].as_string() == "x\xc3\xa9\n");
    CHECK(doc["b"]["c"].as_uint64() == 18446744073709551615ull);
    CHECK_THROWS(Json::parse("{\"a\": 1,}"), JsonError, "line 1, column 9");
    CHECK_THROWS(Json::parse("{\"a\": 1, \"a\": 2}"), JsonError, "duplicate key");
    CHECK_THROWS(Json::parse("[1, 2"), JsonError, "expected ',' or ']'");
    CHECK_THROWS(Json::parse("\"abc"), JsonError, "unterminated string");
    CHECK_THROWS(Json::parse("01"), JsonError, "unexpected characters");
    CHECK_THROWS(Json::parse("1e999"), JsonError, "out of range");
    CHECK_THROWS(Json::parse("NaN"), JsonError, "unexpected character");
    CHECK_THROWS(Json::parse("\"\\ud800\""), JsonError, "surrogate");
    CHECK_THROWS(Json::parse(std::string(100000, '[')), JsonError, "nesting deeper than 64");
    CHECK_THROWS(Json::parse("{}")["missing"], JsonError, "missing key 'missing'");
    CHECK_THROWS(Json::parse("[1]").as_string(), JsonError, "expected a string, got a list");
    CHECK_THROWS(Json::parse_file("/nonexistent/file.json"), JsonError, "cannot be read");
}

void test_sha256() {
    CHECK(sha256_hex("", 0) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(sha256_hex("abc", 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    CHECK(sha256_hex(two_blocks.data(), two_blocks.size()) ==
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const std::string million(1000000, 'a');
    CHECK(sha256_hex(million.data(), million.size()) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    CHECK_THROWS(file_sha256("/nonexistent/x.onnx"), InputError, "cannot be read");
}

void test_ddim_golden(const std::string& golden, const char* name) {
    const Json g = Json::parse_file(golden + "/" + name);
    const Json& sc = g["schedule"];
    Schedule s;
    s.kind = sc["kind"].as_string();
    s.T = static_cast<int>(sc["T"].as_integer());
    s.beta_start = sc["beta_start"].as_number();
    s.beta_end = sc["beta_end"].as_number();
    s.prediction = sc["prediction"].as_string();
    const std::vector<double> cumprod = s.alphas_cumprod();
    double worst = 0.0;
    for (const auto& member : g["alphas_cumprod_at"].as_object())
        worst = std::max(worst, std::fabs(cumprod[std::stoul(member.first)] - member.second.as_number()));
    const int K = static_cast<int>(g["K"].as_integer());
    const int t0 = g["t0"].is_null() ? -1 : static_cast<int>(g["t0"].as_integer());
    const std::vector<int64_t> steps = ddim_timesteps(s.T, K, t0);
    const Json& c = g["coefficients"];
    CHECK_MSG(steps.size() == c["timesteps"].size(), name);
    for (size_t i = 0; i < steps.size(); ++i) CHECK_MSG(steps[i] == c["timesteps"][i].as_integer(), name);
    const DDIMCoefficients co = ddim_coefficients(s, steps, g["eta"].as_number());
    for (size_t i = 0; i < steps.size(); ++i) CHECK_MSG(co.prev_timesteps[i] == c["prev_timesteps"][i].as_integer(), name);
    // the C++ column names and order are Python's (unmix.diffusion.schedule.Coef, written as table_columns)
    CHECK_MSG(g["table_columns"].size() == static_cast<size_t>(kTableColumns), name);
    for (int col = 0; col < kTableColumns; ++col)
        CHECK_MSG(g["table_columns"][col].as_string() == kTableColumnNames[col], kTableColumnNames[col]);
    for (size_t i = 0; i < steps.size(); ++i) {
        worst = std::max(worst, std::fabs(co.alpha_bar_t[i] - c["alpha_bar_t"][i].as_number()));
        worst = std::max(worst, std::fabs(co.alpha_bar_prev[i] - c["alpha_bar_prev"][i].as_number()));
    }
    for (int col = 0; col < kTableColumns; ++col) {
        const Json& expected = c[kTableColumnNames[col]];
        CHECK_MSG(expected.size() == steps.size(), kTableColumnNames[col]);
        for (size_t i = 0; i < steps.size(); ++i)
            worst = std::max(worst, std::fabs(co.columns[col][i] - expected[i].as_number()));
    }
    CHECK_MSG(worst <= 1e-12, std::string(name) + ": max abs diff " + std::to_string(worst));
    // the float32 table is the float64 columns rounded
    const std::vector<float> table = co.table();
    for (int col = 0; col < kTableColumns; ++col)
        CHECK(table[col] == static_cast<float>(c[kTableColumnNames[col]][0].as_number()));
    // The reference loop from x_T under the two analytic predictors, with this core's Philox noise.
    const size_t n = 2 * 3 * 4;
    std::vector<double> x(n), out(n), next(n), z(n), m(n);
    std::vector<float> z32(n);
    double worst_state = 0.0;
    for (const char* predictor : {"known_target", "tanh"}) {
        const Json& entry = g["predictors"][predictor];
        const Json& trajectory = entry["trajectory"];
        for (size_t k = 0; k < n; ++k) x[k] = g["x_T"][k / 12][(k / 4) % 3][k % 4].as_number();
        if (entry.has("m"))
            for (size_t k = 0; k < n; ++k) m[k] = entry["m"][k / 12][(k / 4) % 3][k % 4].as_number();
        for (int i = 0; i < K; ++i) {
            const double t = static_cast<double>(steps[i]), a = cumprod[static_cast<size_t>(steps[i])];
            for (size_t k = 0; k < n; ++k) {
                if (std::string(predictor) == "tanh") out[k] = 0.3 * std::tanh(x[k]) + 0.01 * t / s.T;
                else if (s.prediction == "epsilon") out[k] = (x[k] - std::sqrt(a) * m[k]) / std::sqrt(1.0 - a);
                else out[k] = (std::sqrt(a) * x[k] - m[k]) / std::sqrt(1.0 - a);
            }
            const bool stochastic = co.columns[kSigma][i] > 0.0;
            if (stochastic) {
                const uint32_t seed = static_cast<uint32_t>(g["noise"]["seed"].as_integer());
                gaussian_window(seed, kStreamAbundance, counter_step(K, i, 0), 0, 0, 2, 0, 3, 4, z32.data());
                const Json& golden_z = g["noise"]["steps"][std::to_string(i)];
                for (size_t k = 0; k < n; ++k) {
                    z[k] = z32[k];
                    CHECK(std::fabs(z[k] - golden_z[k / 12][(k / 4) % 3][k % 4].as_number()) <= 1e-6 * std::fabs(z[k]) + 1e-30);
                }
            }
            ddim_step(co, s.prediction, i, x.data(), out.data(), stochastic ? z.data() : nullptr, next.data(), n);
            x.swap(next);
            for (size_t k = 0; k < n; ++k)
                worst_state = std::max(worst_state, std::fabs(x[k] - trajectory[i + 1][k / 12][(k / 4) % 3][k % 4].as_number()));
        }
    }
    CHECK_MSG(worst_state <= 1e-12, std::string(name) + ": trajectory max abs diff " + std::to_string(worst_state));
    std::printf("  %s: K=%d, coefficients max abs diff %.3g, trajectories max abs diff %.3g\n", name, K, worst,
                worst_state);
}

void test_schedule_rules() {
    CHECK(ddim_timesteps(1000, 1, 50) == std::vector<int64_t>({50}));
    CHECK(ddim_timesteps(10, 10) == std::vector<int64_t>({9, 8, 7, 6, 5, 4, 3, 2, 1, 0}));
    CHECK_THROWS(ddim_timesteps(1000, 302, 300), UsageError, "K (DDIM steps) must be <= t0 + 1 = 301");
    CHECK_THROWS(ddim_timesteps(1000, 5, 1000), UsageError, "t0 must be in 0..999");
    Schedule s;
    s.kind = "quadratic";
    CHECK_THROWS(s.betas(), UsageError, "schedule kind must be one of linear, cosine");
    Schedule ok;
    CHECK_THROWS(ddim_coefficients(ok, {5, 7}, 0.0), UsageError, "strictly descending");
    CHECK_THROWS(ddim_coefficients(ok, {5}, 1.5), UsageError, "eta must be in [0, 1]");
}

void test_philox_golden(const std::string& golden) {
    const Json g = Json::parse_file(golden + "/noise_philox.json");
    for (const Json& kat : g["kat_philox4x32_10"].as_array()) {
        auto out = philox4x32_10({hex(kat["counter"][0]), hex(kat["counter"][1]), hex(kat["counter"][2]), hex(kat["counter"][3])},
                                 {hex(kat["key"][0]), hex(kat["key"][1])});
        for (int w = 0; w < 4; ++w) CHECK(out[w] == hex(kat["result"][w]));
    }
    long exact = 0, one_ulp = 0, words = 0;
    for (const Json& c : g["gaussian"].as_array()) {
        const uint64_t seed = c["seed"].as_uint64();
        const uint32_t stream = static_cast<uint32_t>(c["stream"].as_integer());
        const uint32_t step = static_cast<uint32_t>(c["step"].as_integer());
        const uint32_t sample = static_cast<uint32_t>(c["sample"].as_integer());
        const uint32_t channels = static_cast<uint32_t>(c["channels"].as_integer());
        const uint32_t blocks = (channels + 3) / 4;
        std::vector<float> out(channels);
        for (size_t i = 0; i < c["rows"].size(); ++i)
            for (size_t j = 0; j < c["cols"].size(); ++j) {
                const uint32_t row = static_cast<uint32_t>(c["rows"][i].as_uint64());
                const uint32_t col = static_cast<uint32_t>(c["cols"][j].as_uint64());
                gaussian_window(seed, stream, step, sample, row, 1, col, 1, channels, out.data());
                for (uint32_t k = 0; k < channels; ++k) {
                    const uint32_t want = hex(c["float32_bits"][i][j][k]), got = bits(out[k]);
                    const int64_t diff = int64_t(want) - int64_t(got);
                    if (diff == 0) ++exact;
                    else if (diff == 1 || diff == -1) ++one_ulp;
                    else CHECK_MSG(false, "gaussian differs by more than 1 ulp");
                }
                if (c.has("philox_words")) {
                    const std::array<uint32_t, 2> key = {uint32_t(seed), uint32_t(seed >> 32)};
                    for (uint32_t b = 0; b < blocks; ++b) {
                        auto w = philox4x32_10({col, row, b | (stream << 24), (step << 16) | sample}, key);
                        for (int q = 0; q < 4; ++q) {
                            CHECK(w[q] == hex(c["philox_words"][i][j][b][q]));
                            ++words;
                        }
                    }
                }
            }
    }
    const Json& sn = g["spectra_noise"];
    const uint32_t p = static_cast<uint32_t>(sn["endmembers"].as_integer()), B = static_cast<uint32_t>(sn["bands"].as_integer());
    std::vector<float> spectra(p * B);
    spectra_noise(sn["seed"].as_uint64(), static_cast<uint32_t>(sn["step"].as_integer()),
                  static_cast<uint32_t>(sn["sample"].as_integer()), p, B, spectra.data());
    for (uint32_t k = 0; k < p; ++k)
        for (uint32_t b = 0; b < B; ++b) {
            const int64_t diff = int64_t(hex(sn["float32_bits"][k][b])) - int64_t(bits(spectra[k * B + b]));
            CHECK(diff >= -1 && diff <= 1);
            if (diff == 0) ++exact;
            else ++one_ulp;
        }
    for (const Json& c : g["counter_step"].as_array()) {
        const int index = c["index"].is_null() ? -1 : static_cast<int>(c["index"].as_integer());
        CHECK(counter_step(static_cast<int>(c["K"].as_integer()), index, static_cast<int>(c["round_index"].as_integer())) ==
              c["step"].as_integer());
    }
    CHECK_THROWS(counter_step(10, 9, 6000), UsageError, "exceeds 65535");
    // the CHW writer is the HWC window transposed
    std::vector<float> hwc(5 * 7 * 6), chw(5 * 7 * 6);
    gaussian_window(9, 0, 1, 2, 3, 5, 11, 7, 6, hwc.data());
    gaussian_window_chw(9, 0, 1, 2, 3, 5, 11, 7, 6, chw.data());
    bool same = true;
    for (int i = 0; i < 5; ++i)
        for (int j = 0; j < 7; ++j)
            for (int k = 0; k < 6; ++k) same = same && hwc[(i * 7 + j) * 6 + k] == chw[(k * 5 + i) * 7 + j];
    CHECK(same);
    std::printf("  philox: %ld words bit exact; gaussians %ld bit exact, %ld within 1 ulp\n", words, exact, one_ulp);
}

void test_tiling() {
    CHECK(tile_starts(100, 32, 8) == std::vector<int>({0, 24, 48, 68}));
    CHECK(tile_starts(20, 32, 8) == std::vector<int>({0}));
    CHECK(tile_starts(32, 32, 8) == std::vector<int>({0}));
    CHECK(tile_starts(33, 32, 0) == std::vector<int>({0, 1}));
    const auto grid = tile_grid(20, 70, 32, 16);
    CHECK(grid.size() == 4 && grid[2].col0 == 32 && grid[3].col0 == 38 && grid[3].height == 20 && grid[3].width == 32);
    const auto w = blend_window(8, 3);
    CHECK(std::fabs(w[0] - 0.5 * (1 - std::cos(3.141592653589793 / 4))) < 1e-15);  // sin^2(pi/8)
    CHECK(w[0] == w[7] && w[1] == w[6] && w[3] == 1.0 && w[2] == 1.0 * w[2] && w[2] < 1.0);
    for (double v : blend_window(5, 0)) CHECK(v == 1.0);
    CHECK_THROWS(tile_starts(10, 4, 4), UsageError, "overlap must be smaller");
}

void test_nnls_and_simplex() {
    // Y = A E exactly -> E recovered; a column whose least-squares solution is negative is clipped.
    const int p = 3, B = 4;
    const double E[p * B] = {0.1, 0.5, 0.9, 0.2, 0.8, 0.3, 0.1, 0.6, 0.05, 0.05, 0.4, 0.7};
    const double A[5 * p] = {0.2, 0.3, 0.5, 0.7, 0.1, 0.2, 0.1, 0.8, 0.1, 0.3, 0.3, 0.4, 0.5, 0.25, 0.25};
    std::vector<double> AtA(p * p, 0.0), AtY(p * B, 0.0);
    for (int n = 0; n < 5; ++n)
        for (int k = 0; k < p; ++k) {
            for (int l = 0; l < p; ++l) AtA[k * p + l] += A[n * p + k] * A[n * p + l];
            for (int b = 0; b < B; ++b) {
                double y = 0.0;
                for (int l = 0; l < p; ++l) y += A[n * p + l] * E[l * B + b];
                AtY[k * B + b] += A[n * p + k] * y;
            }
        }
    std::vector<double> got = nnls_endmembers(AtA, AtY, p, B);
    double worst = 0.0;
    for (int i = 0; i < p * B; ++i) worst = std::max(worst, std::fabs(got[i] - E[i]));
    CHECK_MSG(worst < 1e-12, std::to_string(worst));
    // G = I, c = (1, -2): e = (1, 0)
    std::vector<double> G = {1, 0, 0, 1}, c = {1, -2};
    got = nnls_endmembers(G, c, 2, 1);
    CHECK(got[0] == 1.0 && got[1] == 0.0);
    // G = [[2, 1], [1, 2]], c = (3, -1): unconstrained (7/3, -5/3) -> constrained (1.5, 0)
    G = {2, 1, 1, 2};
    c = {3, -1};
    got = nnls_endmembers(G, c, 2, 1);
    CHECK(std::fabs(got[0] - 1.5) < 1e-15 && got[1] == 0.0);
    // an absent endmember (zero row/column) comes back as zeros
    G = {1, 0, 0, 0};
    c = {0.5, 0.0};
    got = nnls_endmembers(G, c, 2, 1);
    CHECK(got[0] == 0.5 && got[1] == 0.0);

    // unused: nothing to solve
    got = nnls_endmembers({0.0}, {0.0}, 1, 1);
    CHECK(got[0] == 0.0);

    double v[3] = {0.5, 0.4, 0.3};
    project_simplex(v, 3);
    CHECK(std::fabs(v[0] - (0.5 - 0.2 / 3)) < 1e-15 && std::fabs(v[1] - (0.4 - 0.2 / 3)) < 1e-15 &&
          std::fabs(v[2] - (0.3 - 0.2 / 3)) < 1e-15);
    double w[3] = {2.0, -1.0, 0.0};
    project_simplex(w, 3);
    CHECK(w[0] == 1.0 && w[1] == 0.0 && w[2] == 0.0);
    double n[2] = {std::nan(""), 0.5};
    project_simplex(n, 2);
    CHECK(std::isnan(n[0]) && std::isnan(n[1]));
}

// Singular A^T A: the minimiser is not unique, and the file pins the one unmix.physics.mixing returns.
void test_nnls_golden(const std::string& golden) {
    const Json g = Json::parse_file(golden + "/nnls_rank_deficient.json");
    long cases = 0, values = 0;
    for (const Json& c : g["cases"].as_array()) {
        const int p = static_cast<int>(c["AtA"].size()), B = static_cast<int>(c["AtY"][0].size());
        std::vector<double> AtA, AtY;
        for (int i = 0; i < p; ++i) {
            for (int j = 0; j < p; ++j) AtA.push_back(c["AtA"][i][j].as_number());
            for (int b = 0; b < B; ++b) AtY.push_back(c["AtY"][i][b].as_number());
        }
        const std::vector<double> E = nnls_endmembers(AtA, AtY, p, B);
        for (int k = 0; k < p; ++k)
            for (int b = 0; b < B; ++b) {
                CHECK_MSG(E[k * B + b] == c["endmembers"][k][b].as_number(), c["name"].as_string());
                ++values;
            }
        ++cases;
    }
    CHECK(cases >= 5);
    std::printf("  nnls rank-deficient: %ld cases, %ld values bit exact\n", cases, values);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s GOLDEN_DIR\n", argv[0]);
        return 2;
    }
    const std::string golden = argv[1];
    try {
        test_json();
        test_sha256();
        std::vector<std::string> cases;
        if (DIR* dir = ::opendir(golden.c_str())) {
            while (const dirent* entry = ::readdir(dir)) {
                const std::string name = entry->d_name;
                if (name.rfind("ddim_", 0) == 0 && name.size() > 5 && name.compare(name.size() - 5, 5, ".json") == 0)
                    cases.push_back(name);
            }
            ::closedir(dir);
        }
        std::sort(cases.begin(), cases.end());
        CHECK_MSG(cases.size() >= 4, "expected the ddim_*.json golden files in " + golden);
        for (const std::string& name : cases) test_ddim_golden(golden, name.c_str());
        test_schedule_rules();
        test_philox_golden(golden);
        test_tiling();
        test_nnls_and_simplex();
        test_nnls_golden(golden);
    } catch (const std::exception& error) {
        check::fail(__FILE__, __LINE__, std::string("unexpected exception: ") + error.what());
    }
    return check::finish("test_core");
}
