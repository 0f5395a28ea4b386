// The analytic model folder the C ABI tests open: a manifest whose three networks the analytic backend
// computes in closed form (the .onnx files are placeholders).
#pragma once

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>

namespace fixture {

const int H = 13, W = 11, B = 5, P = 3, T = 8;
const float E_TRUE[P * B] = {0.9f, 0.7f, 0.5f, 0.3f, 0.1f, 0.1f, 0.3f, 0.5f, 0.7f, 0.9f, 0.2f, 0.8f, 0.2f, 0.8f, 0.2f};

inline std::string spec(const char* name, const std::string& shape) {
    return std::string("{\"name\": \"") + name + "\", \"shape\": " + shape + ", \"dtype\": \"float32\"}";
}

inline std::string manifest(const std::string& hybridstu_file) {
    const std::string sha(64, 'a');
    const std::string tile = std::to_string(T), p = std::to_string(P), b = std::to_string(B);
    const std::string x = "[1, " + p + ", " + tile + ", " + tile + "]", cube = "[1, " + b + ", " + tile + ", " + tile + "]";
    auto entry = [&](const std::string& file, const std::string& inputs, const std::string& outputs) {
        return "{\"file\": \"" + file + "\", \"sha256\": \"" + sha + "\", \"opset\": 20, \"precision\": \"fp32\", \"inputs\": [" +
               inputs + "], \"outputs\": [" + outputs + "]}";
    };
    // The cosine schedule's betas (T = 1000, s = 0.008, at most 0.999), as the reader checks them.
    std::string betas;
    const double pi = 3.14159265358979323846;
    auto f = [&](int t) {
        const double c = std::cos((t / 1000.0 + 0.008) / 1.008 * (pi / 2.0));
        return c * c;
    };
    for (int t = 0; t < 1000; ++t) {
        char value[32];
        std::snprintf(value, sizeof value, "%.17g", std::min(1.0 - f(t + 1) / f(t), 0.999));
        betas += (t ? ", " : "") + std::string(value);
    }
    std::string spectra;
    for (int k = 0; k < P; ++k) {
        spectra += k ? ", [" : "[";
        for (int j = 0; j < B; ++j) spectra += (j ? ", " : "") + std::to_string(E_TRUE[k * B + j]);
        spectra += "]";
    }
    return "{\n\"format\": \"unmix-manifest/1\",\n\"networks\": {\n"
           "\"hybridstu\": " + entry(hybridstu_file, spec("cube", cube), spec("abundances", x)) + ",\n"
           "\"abundance_step\": " + entry("abundance_step.onnx",
               spec("x_t", x) + ", " + spec("t", "[1]") + ", " + spec("coef", "[7]") + ", " + spec("noise", x) + ", " +
               spec("cube", cube) + ", " + spec("endmembers", "[" + p + ", " + b + "]") + ", " + spec("dc_weight", "[1]"),
               spec("x_prev", x)) + ",\n"
           "\"spectra_step\": " + entry("spectra_step.onnx",
               spec("x_t", "[" + p + ", 1, " + b + "]") + ", " + spec("t", "[" + p + "]") + ", " + spec("coef", "[7]") + ", " +
               spec("noise", "[" + p + ", 1, " + b + "]") + ", " + spec("AtA", "[" + p + ", " + p + "]") + ", " +
               spec("AtY", "[" + p + ", " + b + "]") + ", " + spec("scale", "[" + p + "]") + ", " + spec("dc_weight", "[1]"),
               spec("x_prev", "[" + p + ", 1, " + b + "]")) + "},\n"
           "\"schedule\": {\"kind\": \"cosine\", \"T\": 1000, \"beta_start\": 0.0001, \"beta_end\": 0.02, \"prediction\": \"epsilon\", \"betas\": [" + betas + "]},\n"
           "\"inference\": {\"steps\": 4, \"t0\": 60, \"eta\": 0.0, \"samples\": 1, \"rounds\": 1, \"tile\": " + tile + ", \"overlap\": 3, \"spectra_steps\": 3, \"spectra_t0\": 40},\n"
           "\"sensor\": {\"bands\": " + b + ", \"wavelengths\": null},\n"
           "\"endmembers\": {\"names\": [\"a\", \"b\", \"c\"], \"spectra\": [" + spectra + "]},\n"
           "\"versions\": {\"unmix\": \"0\", \"torch\": null}\n}\n";
}

inline void write(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
}

inline void make_model(const std::string& dir, const std::string& hybridstu_file = "hybridstu.onnx") {
    ::mkdir(dir.c_str(), 0755);
    for (const char* name : {"hybridstu.onnx", "abundance_step.onnx", "spectra_step.onnx"}) write(dir + "/" + name, "x");
    write(dir + "/manifest.json", manifest(hybridstu_file));
}

}  // namespace fixture
