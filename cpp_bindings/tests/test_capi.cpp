// The C ABI: open a model folder on the analytic backend, run, and every error path's status code.
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "check.hpp"
#include "fixture.hpp"
#include "unmix.h"

namespace {

using namespace fixture;

void test_run(const std::string& dir) {
    make_model(dir);
    unmix_handle* h = nullptr;
    CHECK(unmix_abi_version() == UNMIX_ABI_VERSION);
    unmix_status status = unmix_open(dir.c_str(), "analytic", 1, &h);
    CHECK_MSG(status == UNMIX_OK, unmix_last_error(nullptr));
    if (!h) return;
    CHECK(unmix_endmember_count(h) == P && unmix_band_count(h) == B && unmix_tile_size(h) == T);
    std::vector<float> cube(H * W * B), A(H * W * P), E(P * B), rmse(H * W);
    for (int n = 0; n < H * W; ++n) {
        const float a0 = 0.1f + 0.8f * float(n % W) / W, a1 = (1.0f - a0) * float(n / W) / H, a2 = 1.0f - a0 - a1;
        for (int b = 0; b < B; ++b) cube[n * B + b] = a0 * E_TRUE[b] + a1 * E_TRUE[B + b] + a2 * E_TRUE[2 * B + b];
    }
    cube[7 * B + 1] = NAN;
    status = unmix_run(h, cube.data(), H, W, B, A.data(), E.data(), rmse.data());
    CHECK_MSG(status == UNMIX_OK, unmix_last_error(h));
    CHECK(std::string(unmix_last_error(h)).empty());
    double dE = 0.0;
    for (int i = 0; i < P * B; ++i) dE = std::max(dE, double(std::fabs(E[i] - E_TRUE[i])));
    CHECK_MSG(dE < 1e-4, std::to_string(dE));
    CHECK(std::isnan(A[7 * P]) && std::isnan(rmse[7]) && !std::isnan(A[8 * P]) && rmse[8] < 1e-4f);
    // settings
    CHECK(unmix_set_option(h, "eta", 0.5) == UNMIX_OK);
    CHECK(unmix_set_option(h, "seed", 42) == UNMIX_OK);
    CHECK(unmix_set_option(h, "seed", 9007199254740992.0) == UNMIX_OK);  // 2^53, as in Python
    CHECK(unmix_set_option(h, "seed", 9007199254740994.0) == UNMIX_ERROR_USAGE);
    CHECK(unmix_set_option(h, "seed", 42) == UNMIX_OK);
    CHECK(unmix_run(h, cube.data(), H, W, B, A.data(), E.data(), rmse.data()) == UNMIX_OK);
    CHECK(unmix_set_option(h, "steps", 500) == UNMIX_OK);  // checked against t0 at run time
    CHECK(unmix_run(h, cube.data(), H, W, B, A.data(), E.data(), rmse.data()) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_last_error(h)).find("K (DDIM steps) must be <= t0 + 1") != std::string::npos);
    CHECK(unmix_set_option(h, "steps", 4) == UNMIX_OK);
    CHECK(unmix_set_option(h, "bogus", 1) == UNMIX_ERROR_USAGE);
    CHECK(unmix_set_option(h, "steps", 2.5) == UNMIX_ERROR_USAGE);
    CHECK(unmix_set_option(h, "overlap", 8) == UNMIX_ERROR_USAGE);
    CHECK(unmix_set_option(h, nullptr, 1) == UNMIX_ERROR_USAGE);
    // null buffers and a cube from another sensor
    CHECK(unmix_run(h, nullptr, H, W, B, A.data(), E.data(), rmse.data()) == UNMIX_ERROR_USAGE);
    CHECK(std::string(unmix_last_error(h)).find("NULL") != std::string::npos);
    CHECK(unmix_run(h, cube.data(), H, W, B, nullptr, E.data(), rmse.data()) == UNMIX_ERROR_USAGE);
    CHECK(unmix_run(h, cube.data(), H, W, B, A.data(), nullptr, rmse.data()) == UNMIX_ERROR_USAGE);
    CHECK(unmix_run(h, cube.data(), H, W, B, A.data(), E.data(), nullptr) == UNMIX_ERROR_USAGE);
    CHECK(unmix_run(h, cube.data(), 0, W, B, A.data(), E.data(), rmse.data()) == UNMIX_ERROR_USAGE);
    CHECK(unmix_run(h, cube.data(), H, W, B + 1, A.data(), E.data(), rmse.data()) == UNMIX_ERROR_INPUT);
    CHECK(std::string(unmix_last_error(h)).find("the cube has 6 bands but the model expects 5") != std::string::npos);
    std::vector<float> nan_cube(cube.size(), NAN);
    CHECK(unmix_run(h, nan_cube.data(), H, W, B, A.data(), E.data(), rmse.data()) == UNMIX_ERROR_INPUT);
    // a good run after errors still works
    CHECK(unmix_run(h, cube.data(), H, W, B, A.data(), E.data(), rmse.data()) == UNMIX_OK);
    unmix_close(h);
    std::printf("  C ABI run: max |E - E_true| %.2g\n", dE);
}

unmix_status open_status(const std::string& dir, const char* backend, std::string* message = nullptr) {
    unmix_handle* h = reinterpret_cast<unmix_handle*>(0x1);
    unmix_status status = unmix_open(dir.c_str(), backend, 0, &h);
    if (message) *message = unmix_last_error(nullptr);
    if (status == UNMIX_OK) {
        unmix_close(h);
    } else {
        CHECK(h == nullptr);
    }
    return status;
}

void test_errors(const std::string& base) {
    std::string message;
    CHECK(open_status(base + "/does-not-exist", "analytic", &message) == UNMIX_ERROR_MISSING_INPUT);
    CHECK(message.find("model folder not found") != std::string::npos);
    const std::string empty = base + "_empty";
    ::mkdir(empty.c_str(), 0755);
    CHECK(open_status(empty, "analytic", &message) == UNMIX_ERROR_MISSING_INPUT);
    CHECK(message.find("manifest.json: not found") != std::string::npos);
    const std::string broken = base + "_broken";
    make_model(broken);
    write(broken + "/manifest.json", "{\"format\": ");
    CHECK(open_status(broken, "analytic", &message) == UNMIX_ERROR_INPUT);
    CHECK(message.find("invalid JSON at line 1") != std::string::npos);
    const std::string escape = base + "_escape";
    make_model(escape, "../outside.onnx");
    CHECK(open_status(escape, "analytic", &message) == UNMIX_ERROR_INPUT);
    CHECK(message.find("networks.hybridstu.file") != std::string::npos);
    // betas that are not the schedule's (here the first one) are refused
    const std::string drifted = base + "_betas";
    make_model(drifted);
    std::string text = manifest("hybridstu.onnx");
    const size_t first = text.find("\"betas\": [") + 10;
    text.replace(first, text.find(',', first) - first, "0.5");
    write(drifted + "/manifest.json", text);
    CHECK(open_status(drifted, "analytic", &message) == UNMIX_ERROR_INPUT);
    CHECK(message.find("'schedule.betas': expected the betas of the cosine schedule with T = 1000 (index 0)") !=
          std::string::npos);
    const std::string missing = base + "_missing";
    make_model(missing, "absent.onnx");
    CHECK(open_status(missing, "analytic", &message) == UNMIX_ERROR_MISSING_INPUT);
    CHECK(message.find("file 'absent.onnx' not found") != std::string::npos);
    const std::string good = base + "_good";
    make_model(good);
    CHECK(open_status(good, "nonsense", &message) == UNMIX_ERROR_USAGE);
    CHECK(message.find("unknown backend 'nonsense'") != std::string::npos);
    // the placeholder files do not match the manifest's sha256: refused before any graph is read
    const unmix_status ov = open_status(good, "openvino", &message);
    CHECK_MSG(ov == UNMIX_ERROR_INPUT || (ov == UNMIX_ERROR_BACKEND && message.find("not built") != std::string::npos), message);
    if (ov == UNMIX_ERROR_INPUT) CHECK(message.find(".sha256': expected the sha256 of") != std::string::npos);
    CHECK(unmix_open(nullptr, "analytic", 0, nullptr) == UNMIX_ERROR_USAGE);
    unmix_handle* h = nullptr;
    CHECK(unmix_open(good.c_str(), nullptr, 0, &h) == UNMIX_ERROR_USAGE && h == nullptr);
    CHECK(unmix_run(nullptr, nullptr, 1, 1, 1, nullptr, nullptr, nullptr) == UNMIX_ERROR_USAGE);
    CHECK(unmix_endmember_count(nullptr) == -1 && unmix_band_count(nullptr) == -1);
    unmix_close(nullptr);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    test_run(argv[1]);
    test_errors(argv[1]);
    return check::finish("test_capi");
}
