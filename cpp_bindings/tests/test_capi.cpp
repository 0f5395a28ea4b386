// The C ABI: open a model folder on the analytic backend, run, and every error path's status code.
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "check.hpp"
#include "unmix.h"

namespace {

const int H = 13, W = 11, B = 5, P = 3, T = 8;
const float E_TRUE[P * B] = {0.9f, 0.7f, 0.5f, 0.3f, 0.1f, 0.1f, 0.3f, 0.5f, 0.7f, 0.9f, 0.2f, 0.8f, 0.2f, 0.8f, 0.2f};

std::string spec(const char* name, const std::string& shape) {
    return std::string("{\"name\": \"") + name + "\", \"shape\": " + shape + ", \"dtype\": \"float32\"}";
}

std::string manifest(const std::string& hybridstu_file) {
    const std::string sha(64, 'a');
    const std::string tile = std::to_string(T), p = std::to_string(P), b = std::to_string(B);
    const std::string x = "[1, " + p + ", " + tile + ", " + tile + "]", cube = "[1, " + b + ", " + tile + ", " + tile + "]";
    auto entry = [&](const std::string& file, const std::string& inputs, const std::string& outputs) {
        return "{\"file\": \"" + file + "\", \"sha256\": \"" + sha + "\", \"opset\": 20, \"precision\": \"fp32\", \"inputs\": [" +
               inputs + "], \"outputs\": [" + outputs + "]}";
    };
    std::string betas;
    for (int t = 0; t < 1000; ++t) betas += (t ? ", " : "") + std::string("0.01");
    std::string spectra;
    for (int k = 0; k < P; ++k) {
        spectra += k ? ", [" : "[";
        for (int j = 0; j < B; ++j) spectra += (j ? ", " : "") + std::to_string(E_TRUE[k * B + j]);
        spectra += "]";
    }
    return "{\n\"format\": \"unmix-manifest/1\",\n\"networks\": {\n"
           "\"hybridstu\": " + entry(hybridstu_file, spec("cube", cube), spec("abundances", x)) + ",\n"
           "\"abundance_step\": " + entry("abundance_step.onnx",
               spec("x_t", x) + ", " + spec("t", "[1]") + ", " + spec("coef", "[13]") + ", " + spec("noise", x) + ", " +
               spec("cube", cube) + ", " + spec("endmembers", "[" + p + ", " + b + "]") + ", " + spec("dc_weight", "[1]"),
               spec("x_prev", x)) + ",\n"
           "\"spectra_step\": " + entry("spectra_step.onnx",
               spec("x_t", "[" + p + ", 1, " + b + "]") + ", " + spec("t", "[" + p + "]") + ", " + spec("coef", "[13]") + ", " +
               spec("noise", "[" + p + ", 1, " + b + "]") + ", " + spec("AtA", "[" + p + ", " + p + "]") + ", " +
               spec("AtY", "[" + p + ", " + b + "]") + ", " + spec("scale", "[" + p + "]") + ", " + spec("dc_weight", "[1]"),
               spec("x_prev", "[" + p + ", 1, " + b + "]")) + "},\n"
           "\"schedule\": {\"kind\": \"cosine\", \"T\": 1000, \"beta_start\": 0.0001, \"beta_end\": 0.02, \"prediction\": \"epsilon\", \"betas\": [" + betas + "]},\n"
           "\"inference\": {\"steps\": 4, \"t0\": 60, \"eta\": 0.0, \"samples\": 1, \"rounds\": 1, \"tile\": " + tile + ", \"overlap\": 3, \"spectra_steps\": 3, \"spectra_t0\": 40},\n"
           "\"sensor\": {\"bands\": " + b + ", \"wavelengths\": null},\n"
           "\"endmembers\": {\"names\": [\"a\", \"b\", \"c\"], \"spectra\": [" + spectra + "]},\n"
           "\"versions\": {\"unmix\": \"0\", \"torch\": null}\n}\n";
}

void write(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
}

void make_model(const std::string& dir, const std::string& hybridstu_file = "hybridstu.onnx") {
    ::mkdir(dir.c_str(), 0755);
    for (const char* name : {"hybridstu.onnx", "abundance_step.onnx", "spectra_step.onnx"}) write(dir + "/" + name, "x");
    write(dir + "/manifest.json", manifest(hybridstu_file));
}

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
    CHECK(open_status(good, "tensorrt", &message) == UNMIX_ERROR_BACKEND);
    CHECK(message.find("not built") != std::string::npos);
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
