// unmix_run_raw MODEL_DIR BACKEND CUBE.hdr OUT_PREFIX [--file] [scratch=DIR] [threads=N] [repeat=N]
//               [fixed_endmembers=1] [name=value ...]
// Unmixes an ENVI cube through the C ABI and writes OUT_PREFIX.abundances.f32 (H, W, p),
// OUT_PREFIX.endmembers.f32 (p, B), OUT_PREFIX.rmse.f32 (H, W) and OUT_PREFIX.uncertainty.f32 (H, W; NaN
// for one sample) as raw little-endian float32, and prints "H W B p seconds peak_rss_kib" (seconds: the
// best of repeat=N runs, default 1; peak RSS: VmHWM of /proc/self/status at the end, -1 where unknown).
// Default: the whole cube (float32, bsq / bil / bip, little-endian) is read into memory, row by row
// into one buffer, and unmixed with unmix_run_ex. --file: unmix_run_file reads the cube (any type it
// takes) row window by row window and its finished rows go straight to the output files; the passes'
// abundances stay in a scratch file in DIR (scratch=DIR; default the output folder; scratch=memory keeps
// them in memory). fixed_endmembers=1: the manifest's endmembers, kept fixed (refine_spectra = 0,
// rounds = 1; what a stream gives). threads=N: the backend's threads (default: its own choice).
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "unmix.h"

namespace {

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

std::string trim(const std::string& s) {
    const size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
    return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

bool read_envi(const std::string& header, std::vector<float>& cube, long& H, long& W, long& B, std::string& error) {
    std::ifstream in(header);
    if (!in) {
        error = header + ": cannot be read";
        return false;
    }
    std::map<std::string, std::string> keys;
    std::string line, pending_key, pending;
    bool first = true;
    while (std::getline(in, line)) {
        if (first) {
            first = false;
            if (trim(line) != "ENVI") {
                error = header + ": not an ENVI header";
                return false;
            }
            continue;
        }
        if (!pending_key.empty()) {  // a {...} value spanning lines
            pending += line;
            if (line.find('}') != std::string::npos) {
                keys[pending_key] = pending;
                pending_key.clear();
            }
            continue;
        }
        const size_t eq = line.find('=');
        if (eq == std::string::npos) continue;
        const std::string key = lower(trim(line.substr(0, eq))), value = trim(line.substr(eq + 1));
        if (!value.empty() && value[0] == '{' && value.find('}') == std::string::npos) {
            pending_key = key;
            pending = value;
        } else {
            keys[key] = value;
        }
    }
    try {
        W = std::stol(keys.at("samples"));
        H = std::stol(keys.at("lines"));
        B = std::stol(keys.at("bands"));
    } catch (const std::exception&) {
        error = header + ": needs samples, lines and bands";
        return false;
    }
    if (keys.count("data type") && keys["data type"] != "4") {
        error = header + ": data type " + keys["data type"] + " (only 4, float32, is read)";
        return false;
    }
    if (keys.count("byte order") && keys["byte order"] != "0") {
        error = header + ": big-endian data is not read";
        return false;
    }
    const long offset = keys.count("header offset") ? std::stol(keys["header offset"]) : 0;
    const std::string interleave = keys.count("interleave") ? lower(keys["interleave"]) : "bsq";
    std::string data = header.substr(0, header.size() - 4);
    if (lower(header.substr(header.size() - 4)) != ".hdr") data = header + ".img";
    std::ifstream raw(data, std::ios::binary);
    if (!raw) {
        raw.open(data + ".img", std::ios::binary);
        if (!raw) {
            error = data + ": cannot be read";
            return false;
        }
    }
    // Row by row into the cube: the cube is the only scene-sized buffer (one row of the file besides).
    cube.resize(static_cast<size_t>(H) * W * B);
    std::vector<float> row(static_cast<size_t>(W) * B);
    for (long r = 0; r < H && raw; ++r) {
        float* out = cube.data() + static_cast<size_t>(r) * W * B;
        if (interleave == "bip") {
            raw.seekg(offset + static_cast<std::streamoff>(r) * W * B * 4);
            raw.read(reinterpret_cast<char*>(out), static_cast<std::streamsize>(W * B * 4));
            continue;
        }
        for (long b = 0; b < B && raw; ++b) {  // bil: band lines of row r; bsq: row r of each band
            const std::streamoff at = interleave == "bil" ? (static_cast<std::streamoff>(r) * B + b) * W
                                                          : (static_cast<std::streamoff>(b) * H + r) * W;
            raw.seekg(offset + at * 4);
            raw.read(reinterpret_cast<char*>(row.data() + static_cast<size_t>(b) * W), static_cast<std::streamsize>(W * 4));
        }
        for (long c = 0; c < W; ++c)
            for (long b = 0; b < B; ++b) out[static_cast<size_t>(c) * B + b] = row[static_cast<size_t>(b) * W + c];
    }
    if (!raw) {
        error = data + ": shorter than the header says";
        return false;
    }
    return true;
}

bool write_raw(const std::string& path, const std::vector<float>& values) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(values.size() * sizeof(float)));
    return static_cast<bool>(out);
}

long peak_rss_kib() {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line))
        if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
    return -1;
}

// --file: finished rows appended to the three output files.
struct RowFiles {
    std::FILE* abundances = nullptr;
    std::FILE* rmse = nullptr;
    std::FILE* uncertainty = nullptr;
    long W = 0;
    int p = 0;
};

int write_row(void* data, int64_t, const float* abundances, const float* rmse, const float* uncertainty) {
    RowFiles& f = *static_cast<RowFiles*>(data);
    const size_t W = static_cast<size_t>(f.W);
    const bool ok = std::fwrite(abundances, sizeof(float), W * f.p, f.abundances) == W * f.p &&
                    std::fwrite(rmse, sizeof(float), W, f.rmse) == W &&
                    std::fwrite(uncertainty, sizeof(float), W, f.uncertainty) == W;
    return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: %s MODEL_DIR BACKEND CUBE.hdr OUT_PREFIX [--file] [scratch=DIR] [name=value ...]\n",
                     argv[0]);
        return 2;
    }
    const std::string prefix = argv[4];
    int threads = 0, repeat = 1;
    bool fixed = false, from_file = false;
    std::string scratch = prefix.find('/') == std::string::npos ? "." : prefix.substr(0, prefix.rfind('/'));
    if (scratch.empty()) scratch = "/";
    std::vector<std::string> settings;
    for (int i = 5; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--file") from_file = true;
        else if (arg.rfind("scratch=", 0) == 0) scratch = arg.substr(8);
        else if (arg.rfind("threads=", 0) == 0) threads = std::atoi(arg.c_str() + 8);
        else if (arg.rfind("repeat=", 0) == 0) repeat = std::max(1, std::atoi(arg.c_str() + 7));
        else if (arg.rfind("fixed_endmembers=", 0) == 0) fixed = std::atoi(arg.c_str() + 17) != 0;
        else settings.push_back(arg);
    }
    std::vector<float> cube;
    long H = 0, W = 0, B = 0;
    std::string error;
    if (from_file) {
        int64_t h = 0, w = 0, b = 0;
        if (unmix_file_shape(argv[3], &h, &w, &b) != UNMIX_OK) {
            std::fprintf(stderr, "error: %s\n", unmix_last_error(nullptr));
            return 3;
        }
        H = static_cast<long>(h);
        W = static_cast<long>(w);
        B = static_cast<long>(b);
    } else if (!read_envi(argv[3], cube, H, W, B, error)) {
        std::fprintf(stderr, "error: %s\n", error.c_str());
        return 3;
    }
    if (fixed) {
        settings.insert(settings.begin(), "rounds=1");
        settings.insert(settings.begin(), "refine_spectra=0");
    }
    unmix_handle* h = nullptr;
    if (unmix_open(argv[1], argv[2], threads, &h) != UNMIX_OK) {
        std::fprintf(stderr, "error: %s\n", unmix_last_error(nullptr));
        return 4;
    }
    for (const std::string& arg : settings) {
        const size_t eq = arg.find('=');
        if (eq == std::string::npos || unmix_set_option(h, arg.substr(0, eq).c_str(), std::atof(arg.c_str() + eq + 1)) != UNMIX_OK) {
            std::fprintf(stderr, "error: bad setting '%s': %s\n", arg.c_str(), unmix_last_error(h));
            unmix_close(h);
            return 2;
        }
    }
    const int p = unmix_endmember_count(h);
    std::vector<float> E(static_cast<size_t>(p) * B), given(static_cast<size_t>(p) * B);
    if (fixed && unmix_model_endmembers(h, given.data(), static_cast<int64_t>(given.size())) != UNMIX_OK) {
        std::fprintf(stderr, "error: %s\n", unmix_last_error(h));
        unmix_close(h);
        return 5;
    }
    std::vector<float> A, rmse, uncertainty;
    if (!from_file) {
        A.resize(static_cast<size_t>(H) * W * p);
        rmse.resize(static_cast<size_t>(H) * W);
        uncertainty.resize(static_cast<size_t>(H) * W);
    }
    unmix_status status = UNMIX_OK;
    double seconds = 0.0;
    bool written = true;
    for (int run = 0; run < repeat && status == UNMIX_OK; ++run) {
        const auto start = std::chrono::steady_clock::now();
        if (from_file) {
            RowFiles files;
            files.W = W;
            files.p = p;
            files.abundances = std::fopen((prefix + ".abundances.f32").c_str(), "wb");
            files.rmse = std::fopen((prefix + ".rmse.f32").c_str(), "wb");
            files.uncertainty = std::fopen((prefix + ".uncertainty.f32").c_str(), "wb");
            if (files.abundances && files.rmse && files.uncertainty)
                status = unmix_run_file(h, argv[3], fixed ? given.data() : nullptr, write_row, &files, E.data(),
                                        scratch == "memory" ? nullptr : scratch.c_str());
            else
                written = false;
            for (std::FILE* f : {files.abundances, files.rmse, files.uncertainty})
                if (f && std::fclose(f) != 0) written = false;
        } else {
            status = unmix_run_ex(h, cube.data(), H, W, B, fixed ? given.data() : nullptr, A.data(), E.data(), rmse.data(),
                                  uncertainty.data());
        }
        const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        seconds = run == 0 ? took : std::min(seconds, took);
    }
    if (status != UNMIX_OK) {
        std::fprintf(stderr, "error: %s\n", unmix_last_error(h));
        unmix_close(h);
        return 5;
    }
    unmix_close(h);
    if (!from_file)
        written = write_raw(prefix + ".abundances.f32", A) && write_raw(prefix + ".rmse.f32", rmse) &&
                  write_raw(prefix + ".uncertainty.f32", uncertainty);
    if (!written || !write_raw(prefix + ".endmembers.f32", E)) {
        std::fprintf(stderr, "error: cannot write %s.*.f32\n", prefix.c_str());
        return 6;
    }
    std::printf("%ld %ld %ld %d %.4f %ld\n", H, W, B, p, seconds, peak_rss_kib());
    return 0;
}
