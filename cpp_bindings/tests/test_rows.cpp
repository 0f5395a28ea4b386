// Whole scenes read row by row (ABI 3): unmix_run_rows (a reader callback) and unmix_run_file (an ENVI
// file: bsq / bil / bip, float32 / float64 / int16 / uint16, either byte order, header offset, scale
// factor, data ignore value, bbl) give unmix_run_ex's outputs bit for bit on the analytic backend, with
// the abundances kept in memory or in a scratch file; rows come out once each, in order; the reader is
// asked for narrow windows only; bad headers and failing callbacks are refused with one clear line.
//   unmix_test_rows SCRATCH_DIR
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "check.hpp"
#include "fixture.hpp"
#include "unmix.h"

namespace {

using fixture::B;
using fixture::P;
using fixture::T;

std::string g_dir;

// (H, W, B) mixtures of the fixture's endmembers with a deterministic wiggle; a few invalid pixels.
std::vector<float> make_cube(int H, int W) {
    std::vector<float> cube(static_cast<size_t>(H) * W * B);
    for (int r = 0; r < H; ++r)
        for (int c = 0; c < W; ++c) {
            const float a0 = 0.1f + 0.8f * float((c * 7 + r * 3) % 17) / 17.0f;
            const float a1 = (1.0f - a0) * float((r * 5 + c) % 11) / 11.0f, a2 = 1.0f - a0 - a1;
            for (int b = 0; b < B; ++b)
                cube[(static_cast<size_t>(r) * W + c) * B + b] = a0 * fixture::E_TRUE[b] + a1 * fixture::E_TRUE[B + b] +
                                                                 a2 * fixture::E_TRUE[2 * B + b] +
                                                                 0.002f * float((r * 31 + c * 17 + b * 13) % 7);
        }
    if (H > 3 && W > 3) {
        cube[(static_cast<size_t>(2) * W + 3) * B + 1] = NAN;
        cube[(static_cast<size_t>(H - 1) * W + W - 1) * B + B - 1] = INFINITY;
    }
    return cube;
}

struct Setting {
    const char* name;
    double value;
};

struct Outputs {
    std::vector<float> A, E, rmse, unc;
    std::vector<int64_t> order;  // rows in the order the writer got them
    unmix_status status = UNMIX_OK;
    std::string error;
};

unmix_handle* open_with(const std::vector<Setting>& settings) {
    unmix_handle* h = nullptr;
    if (unmix_open(g_dir.c_str(), "analytic", 1, &h) != UNMIX_OK) {
        check::fail(__FILE__, __LINE__, unmix_last_error(nullptr));
        return nullptr;
    }
    for (const Setting& s : settings) CHECK_MSG(unmix_set_option(h, s.name, s.value) == UNMIX_OK, s.name);
    return h;
}

Outputs whole(const std::vector<float>& cube, int H, int W, const std::vector<Setting>& settings, const float* E_in) {
    Outputs o;
    unmix_handle* h = open_with(settings);
    if (!h) return o;
    o.A.resize(static_cast<size_t>(H) * W * P);
    o.E.resize(P * B);
    o.rmse.resize(static_cast<size_t>(H) * W);
    o.unc.resize(static_cast<size_t>(H) * W);
    o.status = unmix_run_ex(h, cube.data(), H, W, B, E_in, o.A.data(), o.E.data(), o.rmse.data(), o.unc.data());
    o.error = unmix_last_error(h);
    unmix_close(h);
    return o;
}

struct Reader {
    const std::vector<float>* cube;
    int H, W;
    int64_t widest = 0, reads = 0;
    bool out_of_bounds = false;
    int64_t fail_at_read = -1;  // >= 0: return 7 at that read
};

int read_rows(void* data, int64_t row, int64_t col0, int64_t cols, float* out) {
    Reader& r = *static_cast<Reader*>(data);
    if (r.fail_at_read >= 0 && r.reads == r.fail_at_read) return 7;
    ++r.reads;
    r.widest = std::max(r.widest, cols);
    if (row < 0 || row >= r.H || col0 < 0 || cols < 1 || col0 + cols > r.W) {
        r.out_of_bounds = true;
        return 1;
    }
    const float* from = r.cube->data() + (static_cast<size_t>(row) * r.W + col0) * B;
    std::copy(from, from + cols * B, out);
    return 0;
}

struct Writer {
    Outputs* out;
    int W;
    int64_t fail_at_row = -1;
};

int write_rows(void* data, int64_t row, const float* a, const float* rmse, const float* unc) {
    Writer& w = *static_cast<Writer*>(data);
    if (row == w.fail_at_row) return 9;
    Outputs& o = *w.out;
    o.order.push_back(row);
    const size_t at = static_cast<size_t>(row) * w.W;
    if ((at + w.W) * P > o.A.size()) return 1;
    std::copy(a, a + static_cast<size_t>(w.W) * P, o.A.begin() + static_cast<long>(at * P));
    std::copy(rmse, rmse + w.W, o.rmse.begin() + static_cast<long>(at));
    std::copy(unc, unc + w.W, o.unc.begin() + static_cast<long>(at));
    return 0;
}

Outputs sized(int H, int W) {
    Outputs o;
    o.A.assign(static_cast<size_t>(H) * W * P, -1.0f);
    o.E.assign(P * B, -1.0f);
    o.rmse.assign(static_cast<size_t>(H) * W, -1.0f);
    o.unc.assign(static_cast<size_t>(H) * W, -1.0f);
    return o;
}

Outputs by_rows(const std::vector<float>& cube, int H, int W, const std::vector<Setting>& settings, const float* E_in,
                const char* scratch, Reader* reader_out = nullptr) {
    Outputs o = sized(H, W);
    unmix_handle* h = open_with(settings);
    if (!h) return o;
    Reader reader{&cube, H, W};
    Writer writer{&o, W};
    o.status = unmix_run_rows(h, H, W, B, read_rows, &reader, E_in, write_rows, &writer, o.E.data(), scratch);
    o.error = unmix_last_error(h);
    unmix_close(h);
    CHECK(!reader.out_of_bounds);
    if (reader_out) *reader_out = reader;
    return o;
}

Outputs by_file(const std::string& header, int H, int W, const std::vector<Setting>& settings, const char* scratch) {
    Outputs o = sized(H, W);
    unmix_handle* h = open_with(settings);
    if (!h) return o;
    Writer writer{&o, W};
    o.status = unmix_run_file(h, header.c_str(), nullptr, write_rows, &writer, o.E.data(), scratch);
    o.error = unmix_last_error(h);
    unmix_close(h);
    return o;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

bool in_order(const Outputs& o, int H) {
    if (static_cast<int>(o.order.size()) != H) return false;
    for (int r = 0; r < H; ++r)
        if (o.order[r] != r) return false;
    return true;
}

void check_equal(const Outputs& got, const Outputs& want, int H, const std::string& what) {
    CHECK_MSG(want.status == UNMIX_OK, want.error);
    CHECK_MSG(got.status == UNMIX_OK, what + ": " + got.error);
    CHECK_MSG(in_order(got, H), what + ": rows not written once each in order");
    CHECK_MSG(same_bits(got.A, want.A), what + ": abundances");
    CHECK_MSG(same_bits(got.E, want.E), what + ": endmembers");
    CHECK_MSG(same_bits(got.rmse, want.rmse), what + ": rmse");
    CHECK_MSG(same_bits(got.unc, want.unc), what + ": uncertainty");
}

const std::vector<std::vector<Setting>> kSettings = {
    {},
    {{"samples", 2}, {"eta", 0.6}, {"rounds", 3}, {"seed", 7}},
    {{"refine_spectra", 0}, {"rounds", 2}, {"initial_endmembers", 0}, {"overlap", 0}},
    {{"refine_spectra", 1}, {"rounds", 2}, {"overlap", 6}, {"samples", 3}, {"eta", 1.0}},
};

void test_rows_equal_whole_buffer() {
    const std::string scratch = g_dir + "/scratch";
    ::mkdir(scratch.c_str(), 0755);
    int cases = 0;
    // shapes: smaller than a tile, a few tiles, more than one statistics block (256) across and down
    const int shapes[][2] = {{5, 6}, {13, 11}, {41, 23}, {270, 9}, {9, 300}};
    std::vector<float> E_in(fixture::E_TRUE, fixture::E_TRUE + P * B);
    for (float& v : E_in) v *= 0.8f;
    for (const auto& shape : shapes) {
        const int H = shape[0], W = shape[1];
        const std::vector<float> cube = make_cube(H, W);
        for (size_t s = 0; s < kSettings.size(); ++s)
            for (int given = 0; given < 2; ++given) {
                const float* E = given ? E_in.data() : nullptr;
                const Outputs want = whole(cube, H, W, kSettings[s], E);
                const std::string what = std::to_string(H) + "x" + std::to_string(W) + " settings " + std::to_string(s) +
                                         (given ? " given E" : "");
                Reader reader{};
                check_equal(by_rows(cube, H, W, kSettings[s], E, nullptr, &reader), want, H, what + " (memory)");
                CHECK_MSG(reader.widest <= std::max(T, 256), std::to_string(reader.widest));
                check_equal(by_rows(cube, H, W, kSettings[s], E, scratch.c_str()), want, H, what + " (scratch file)");
                cases += 2;
            }
    }
    // the scratch file is unlinked at once: nothing is left in the folder
    int left = -1;
    if (DIR* folder = ::opendir(scratch.c_str())) {
        left = 0;
        while (const dirent* entry = ::readdir(folder))
            if (std::strcmp(entry->d_name, ".") != 0 && std::strcmp(entry->d_name, "..") != 0) ++left;
        ::closedir(folder);
    }
    CHECK_MSG(left == 0, std::to_string(left) + " files left in the scratch folder");
    std::printf("  unmix_run_rows == unmix_run_ex, bit for bit: %d runs (memory and scratch file)\n", cases);
}

// ---- ENVI files ----------------------------------------------------------------------------------

struct Layout {
    const char* interleave = "bip";
    int data_type = 4;        // 2 int16, 4 float32, 5 float64, 12 uint16
    int byte_order = 0;       // of the stored values
    double scale = 0.0;       // reflectance scale factor (0: none); the stored value is round(v * scale)
    long offset = 0;          // header offset
    bool bbl = false;         // one extra stored band (the second), marked bad
    bool ignore = false;      // data ignore value -9999 at one pixel of the integer types
};

void put_bytes(std::vector<unsigned char>& bytes, size_t at, const void* value, int size, bool big) {
    const unsigned char* v = static_cast<const unsigned char*>(value);
    for (int i = 0; i < size; ++i) bytes[at + i] = v[big ? size - 1 - i : i];  // the host is little-endian
}

// Writes the cube in `layout`; returns the cube the reader should give (stored -> float32 -> / scale).
std::vector<float> write_envi(const std::string& stem, const std::vector<float>& cube, int H, int W, const Layout& L) {
    const int Bs = B + (L.bbl ? 1 : 0);
    const int size = L.data_type == 5 ? 8 : L.data_type == 4 ? 4 : 2;
    std::vector<unsigned char> bytes(L.offset + static_cast<size_t>(H) * W * Bs * size, 0xAB);
    std::vector<float> expect(cube.size());
    const std::string il = L.interleave;
    for (int r = 0; r < H; ++r)
        for (int c = 0; c < W; ++c)
            for (int s = 0; s < Bs; ++s) {
                const int b = L.bbl ? (s == 0 ? 0 : s == 1 ? -1 : s - 1) : s;  // stored band 1 is the bad one
                const float v = b < 0 ? 123.0f : cube[(static_cast<size_t>(r) * W + c) * B + b];
                size_t index;
                if (il == "bsq") index = (static_cast<size_t>(s) * H + r) * W + c;
                else if (il == "bil") index = (static_cast<size_t>(r) * Bs + s) * W + c;
                else index = (static_cast<size_t>(r) * W + c) * Bs + s;
                const size_t at = L.offset + index * size;
                const bool big = L.byte_order == 1;
                float got;
                if (L.data_type == 4) {
                    const float stored = L.scale > 0 ? v * static_cast<float>(L.scale) : v;
                    put_bytes(bytes, at, &stored, 4, big);
                    got = stored;
                } else if (L.data_type == 5) {
                    const double stored = static_cast<double>(v) * (L.scale > 0 ? L.scale : 1.0);
                    put_bytes(bytes, at, &stored, 8, big);
                    got = static_cast<float>(stored);
                } else {
                    const bool nodata = L.ignore && r == 1 && c == 1 && b == 2;
                    const double scaled = std::isfinite(v) ? std::round(static_cast<double>(v) * L.scale) : 0.0;
                    if (L.data_type == 2) {
                        const int16_t stored = nodata ? int16_t(-9999) : static_cast<int16_t>(scaled);
                        put_bytes(bytes, at, &stored, 2, big);
                        got = nodata ? NAN : static_cast<float>(stored);
                    } else {
                        const uint16_t stored = static_cast<uint16_t>(scaled);
                        put_bytes(bytes, at, &stored, 2, big);
                        got = static_cast<float>(stored);
                    }
                }
                if (b >= 0) {
                    const float scale = L.scale > 0 ? static_cast<float>(L.scale) : 1.0f;
                    expect[(static_cast<size_t>(r) * W + c) * B + b] = got / scale;
                }
            }
    std::ofstream raw(stem + ".img", std::ios::binary);
    raw.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    std::ofstream hdr(stem + ".hdr");
    hdr << "ENVI\ndescription = {test cube,\n written by test_rows}\nsamples = " << W << "\nlines   = " << H
        << "\nbands = " << Bs << "\nheader offset = " << L.offset << "\nfile type = ENVI Standard\ndata type = "
        << L.data_type << "\ninterleave = " << L.interleave << "\nbyte order = " << L.byte_order << "\n";
    if (L.scale > 0) hdr << "reflectance scale factor = " << L.scale << "\n";
    if (L.ignore) hdr << "data ignore value = -9999\n";
    if (L.bbl) {
        hdr << "bbl = {1, 0";
        for (int s = 2; s < Bs; ++s) hdr << ", 1";
        hdr << "}\n";
    }
    return expect;
}

void test_files_equal_whole_buffer() {
    const int H = 29, W = 17;
    std::vector<float> cube = make_cube(H, W);
    const std::string scratch = g_dir + "/scratch";
    std::vector<Layout> layouts;
    for (const char* il : {"bsq", "bil", "bip"}) {
        Layout L;
        L.interleave = il;
        layouts.push_back(L);  // float32 little-endian
    }
    Layout be;  // float32 big-endian, header offset, a bad band
    be.interleave = "bil";
    be.byte_order = 1;
    be.offset = 37;
    be.bbl = true;
    layouts.push_back(be);
    Layout f64;
    f64.interleave = "bsq";
    f64.data_type = 5;
    f64.scale = 2.5;
    layouts.push_back(f64);
    Layout i16;  // int16 x 10000 with an ignore value, as many reflectance products are stored
    i16.interleave = "bip";
    i16.data_type = 2;
    i16.scale = 10000;
    i16.ignore = true;
    layouts.push_back(i16);
    Layout u16;
    u16.interleave = "bsq";
    u16.data_type = 12;
    u16.byte_order = 1;
    u16.scale = 20000;
    u16.bbl = true;
    layouts.push_back(u16);
    // the integer types cannot store NaN/inf: the cube's invalid pixels become 0 in that band there
    int index = 0;
    for (const Layout& L : layouts) {
        const std::string stem = g_dir + "/file" + std::to_string(index++);
        const std::vector<float> expect = write_envi(stem, cube, H, W, L);
        const std::vector<Setting>& settings = kSettings[1];
        const Outputs want = whole(expect, H, W, settings, nullptr);
        const std::string what = std::string(L.interleave) + " type " + std::to_string(L.data_type) + " order " +
                                 std::to_string(L.byte_order);
        check_equal(by_file(stem + ".hdr", H, W, settings, scratch.c_str()), want, H, what);
        check_equal(by_file(stem + ".hdr", H, W, settings, nullptr), want, H, what + " (memory)");
        int64_t h = 0, w = 0, b = 0;
        CHECK_MSG(unmix_file_shape((stem + ".hdr").c_str(), &h, &w, &b) == UNMIX_OK, unmix_last_error(nullptr));
        CHECK(h == H && w == W && b == B);
    }
    // the int16 cube's ignore value made its pixel invalid: NaN outputs there
    const Outputs i16_out = by_file(g_dir + "/file5.hdr", H, W, kSettings[0], nullptr);
    CHECK(std::isnan(i16_out.A[(static_cast<size_t>(1) * W + 1) * P]) && std::isnan(i16_out.rmse[W + 1]));
    CHECK(!std::isnan(i16_out.A[(static_cast<size_t>(1) * W + 2) * P]));
    std::printf("  unmix_run_file == unmix_run_ex, bit for bit: bsq/bil/bip float32, big-endian + offset + bbl, "
                "float64 x2.5, int16 x10000 + ignore, uint16 big-endian + bbl\n");
}

void write_text(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
}

// unmix_run_file's status and message for a header text (the data file: `data_bytes` bytes).
unmix_status run_header(const std::string& name, const std::string& text, size_t data_bytes, std::string& message) {
    const std::string stem = g_dir + "/" + name;
    write_text(stem + ".hdr", text);
    write_text(stem + ".img", std::string(data_bytes, '\0'));
    unmix_handle* h = open_with({});
    if (!h) return UNMIX_ERROR_INTERNAL;
    Outputs o = sized(1, 1);
    Writer writer{&o, 1};
    const unmix_status status = unmix_run_file(h, (stem + ".hdr").c_str(), nullptr, write_rows, &writer, o.E.data(), nullptr);
    message = unmix_last_error(h);
    unmix_close(h);
    return status;
}

void test_bad_headers() {
    const std::string good = "ENVI\nsamples = 4\nlines = 3\nbands = 5\ndata type = 4\ninterleave = bsq\n";
    const size_t bytes = 4 * 3 * 5 * 4;
    struct Case {
        const char* name;
        std::string text;
        size_t data;
        unmix_status status;
        const char* fragment;
    };
    const Case cases[] = {
        {"not_envi", "ENVY\nsamples = 4\n", bytes, UNMIX_ERROR_INPUT, "first line: expected 'ENVI'"},
        {"no_samples", "ENVI\nlines = 3\nbands = 5\ndata type = 4\ninterleave = bsq\n", bytes, UNMIX_ERROR_INPUT,
         "samples: expected a positive integer"},
        {"bad_lines", "ENVI\nsamples = 4\nlines = three\nbands = 5\ndata type = 4\ninterleave = bsq\n", bytes,
         UNMIX_ERROR_INPUT, "lines: expected a positive integer"},
        {"complex", "ENVI\nsamples = 4\nlines = 3\nbands = 5\ndata type = 6\ninterleave = bsq\n", bytes, UNMIX_ERROR_INPUT,
         "data type: 6 is not read"},
        {"no_type", "ENVI\nsamples = 4\nlines = 3\nbands = 5\ninterleave = bsq\n", bytes, UNMIX_ERROR_INPUT,
         "data type: expected an integer"},
        {"bad_order", good + "byte order = 2\n", bytes, UNMIX_ERROR_INPUT, "byte order: expected 0"},
        {"bad_interleave", "ENVI\nsamples = 4\nlines = 3\nbands = 5\ndata type = 4\ninterleave = bsx\n", bytes,
         UNMIX_ERROR_INPUT, "interleave: expected bsq, bil or bip, got 'bsx'"},
        {"no_interleave", "ENVI\nsamples = 4\nlines = 3\nbands = 5\ndata type = 4\n", bytes, UNMIX_ERROR_INPUT,
         "interleave: missing"},
        {"bad_scale", good + "reflectance scale factor = -3\n", bytes, UNMIX_ERROR_INPUT, "reflectance scale factor"},
        {"bad_bbl", good + "bbl = {1, 1, 0}\n", bytes, UNMIX_ERROR_INPUT, "bbl: expected 5 values"},
        {"short", good, bytes - 1, UNMIX_ERROR_INPUT, "239 bytes, but"},
        {"offset", good + "header offset = 8\n", bytes, UNMIX_ERROR_INPUT, "needs 248"},
        {"bands", "ENVI\nsamples = 4\nlines = 3\nbands = 6\ndata type = 4\ninterleave = bsq\n", 4 * 3 * 6 * 4,
         UNMIX_ERROR_INPUT, "bands: the cube has 6 bands (after bbl) but the model expects 5"},
        {"unclosed", good + "wavelength = {400, 500\n", bytes, UNMIX_ERROR_INPUT, "wavelength: '{' is never closed"},
    };
    for (const Case& c : cases) {
        std::string message;
        const unmix_status status = run_header(c.name, c.text, c.data, message);
        CHECK_MSG(status == c.status, std::string(c.name) + ": status " + std::to_string(status) + ": " + message);
        CHECK_MSG(message.find(c.fragment) != std::string::npos, std::string(c.name) + ": " + message);
        // one line naming the file
        CHECK_MSG(message.find(g_dir + "/" + c.name) != std::string::npos, message);
        CHECK_MSG(message.find('\n') == std::string::npos, message);
        int64_t h = 0, w = 0, b = 0;
        if (std::string(c.name) != "bands")
            CHECK_MSG(unmix_file_shape((g_dir + "/" + c.name + ".hdr").c_str(), &h, &w, &b) == c.status, c.name);
    }
    // missing files
    unmix_handle* h = open_with({});
    if (!h) return;
    Outputs o = sized(1, 1);
    Writer writer{&o, 1};
    CHECK(unmix_run_file(h, (g_dir + "/absent.hdr").c_str(), nullptr, write_rows, &writer, o.E.data(), nullptr) ==
          UNMIX_ERROR_MISSING_INPUT);
    CHECK_MSG(std::string(unmix_last_error(h)).find("absent.hdr: the ENVI header cannot be opened") != std::string::npos,
              unmix_last_error(h));
    write_text(g_dir + "/lonely.hdr", good);
    CHECK(unmix_run_file(h, (g_dir + "/lonely.hdr").c_str(), nullptr, write_rows, &writer, o.E.data(), nullptr) ==
          UNMIX_ERROR_MISSING_INPUT);
    CHECK_MSG(std::string(unmix_last_error(h)).find("lonely.img cannot be opened") != std::string::npos, unmix_last_error(h));
    CHECK(unmix_run_file(h, nullptr, nullptr, write_rows, &writer, o.E.data(), nullptr) == UNMIX_ERROR_USAGE);
    int64_t H = 0, W = 0, B_ = 0;
    CHECK(unmix_file_shape((g_dir + "/absent.hdr").c_str(), &H, &W, &B_) == UNMIX_ERROR_MISSING_INPUT);
    CHECK(std::string(unmix_last_error(nullptr)).find("absent.hdr") != std::string::npos);
    CHECK(unmix_file_shape(nullptr, &H, &W, &B_) == UNMIX_ERROR_USAGE);
    unmix_close(h);
    std::printf("  %zu bad headers refused with one line naming the file and the key\n", sizeof cases / sizeof cases[0]);
}

void test_errors() {
    const int H = 20, W = 12;
    const std::vector<float> cube = make_cube(H, W);
    unmix_handle* h = open_with({});
    if (!h) return;
    Outputs o = sized(H, W);
    Reader reader{&cube, H, W};
    Writer writer{&o, W};
    float* E = o.E.data();
    CHECK(unmix_run_rows(nullptr, H, W, B, read_rows, &reader, nullptr, write_rows, &writer, E, nullptr) == UNMIX_ERROR_USAGE);
    CHECK(unmix_run_rows(h, H, W, B, nullptr, &reader, nullptr, write_rows, &writer, E, nullptr) == UNMIX_ERROR_USAGE);
    CHECK(unmix_run_rows(h, H, W, B, read_rows, &reader, nullptr, nullptr, &writer, E, nullptr) == UNMIX_ERROR_USAGE);
    CHECK(unmix_run_rows(h, H, W, B, read_rows, &reader, nullptr, write_rows, &writer, nullptr, nullptr) == UNMIX_ERROR_USAGE);
    CHECK(unmix_run_rows(h, 0, W, B, read_rows, &reader, nullptr, write_rows, &writer, E, nullptr) == UNMIX_ERROR_USAGE);
    CHECK(unmix_run_rows(h, H, W, B + 1, read_rows, &reader, nullptr, write_rows, &writer, E, nullptr) == UNMIX_ERROR_INPUT);
    CHECK(unmix_run_rows(h, H, W, B, read_rows, &reader, nullptr, write_rows, &writer, E,
                         (g_dir + "/no/such/folder").c_str()) == UNMIX_ERROR_USAGE);
    CHECK_MSG(std::string(unmix_last_error(h)).find("scratch_dir: cannot create a file in") != std::string::npos,
              unmix_last_error(h));
    std::vector<float> bad_E(P * B, -1.0f);
    CHECK(unmix_run_rows(h, H, W, B, read_rows, &reader, bad_E.data(), write_rows, &writer, E, nullptr) == UNMIX_ERROR_USAGE);
    // a reader that fails in a later pass, and a writer that fails
    reader.fail_at_read = 100;  // in pass 2 (pass 1 and the statistics read 84 windows)
    CHECK(unmix_run_rows(h, H, W, B, read_rows, &reader, nullptr, write_rows, &writer, E, nullptr) == UNMIX_ERROR_INPUT);
    CHECK_MSG(std::string(unmix_last_error(h)).find("unmix_run_rows: the reader returned 7 for row") != std::string::npos,
              unmix_last_error(h));
    reader.fail_at_read = -1;
    writer.fail_at_row = 5;
    o.order.clear();
    CHECK(unmix_run_rows(h, H, W, B, read_rows, &reader, nullptr, write_rows, &writer, E, nullptr) == UNMIX_ERROR_INPUT);
    CHECK_MSG(std::string(unmix_last_error(h)).find("unmix_run_rows: the writer returned 9 for row 5") != std::string::npos,
              unmix_last_error(h));
    CHECK(o.order.size() == 5);  // rows 0..4 were out before
    // every pixel invalid: the same error as the whole-buffer call
    std::vector<float> nan_cube(cube.size(), NAN);
    Reader nan_reader{&nan_cube, H, W};
    writer.fail_at_row = -1;
    CHECK(unmix_run_rows(h, H, W, B, read_rows, &nan_reader, nullptr, write_rows, &writer, E, nullptr) == UNMIX_ERROR_INPUT);
    CHECK_MSG(std::string(unmix_last_error(h)).find("no pixel is finite in every band") != std::string::npos,
              unmix_last_error(h));
    // and the handle still works
    o.order.clear();
    CHECK(unmix_run_rows(h, H, W, B, read_rows, &reader, nullptr, write_rows, &writer, E, nullptr) == UNMIX_OK);
    CHECK(in_order(o, H));
    CHECK(unmix_abi_version() == 3);
    unmix_close(h);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    g_dir = argv[1];
    fixture::make_model(g_dir);
    test_rows_equal_whole_buffer();
    test_files_equal_whole_buffer();
    test_bad_headers();
    test_errors();
    return check::finish("test_rows");
}
