#include "scene_files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "../core/manifest.hpp"
#include "envi_header.h"

namespace unmix {

namespace {

bool host_big_endian() {
    const uint16_t one = 1;
    unsigned char first;
    std::memcpy(&first, &one, 1);
    return first == 0;
}

template <typename V>
V load(const unsigned char* at, bool swap) {
    unsigned char bytes[sizeof(V)];
    std::memcpy(bytes, at, sizeof(V));
    if (swap)
        for (size_t i = 0; i < sizeof(V) / 2; ++i) std::swap(bytes[i], bytes[sizeof(V) - 1 - i]);
    V value;
    std::memcpy(&value, bytes, sizeof(V));
    return value;
}

// Whether a stored value is the ignore value, compared as numpy compares an array of the stored type
// with a Python float: float32 in float32, the others in float64; a NaN ignore value matches NaN.
template <typename V>
bool ignored(V value, double ignore) {
    if (std::isnan(ignore)) return std::isnan(static_cast<double>(value));
    if (std::is_same<V, float>::value) {
        const float as_float = std::fabs(ignore) > FLT_MAX ? std::copysign(std::numeric_limits<float>::infinity(), ignore)
                                                           : static_cast<float>(ignore);
        return static_cast<float>(value) == as_float;
    }
    return static_cast<double>(value) == ignore;
}

// n values, `stride` bytes apart from `from`, to out[0], out[step], ...
template <typename V>
void convert(const unsigned char* from, size_t stride, size_t n, float* out, size_t step, bool swap, bool has_ignore,
             double ignore, float scale) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (size_t i = 0; i < n; ++i) {
        const V stored = load<V>(from + i * stride, swap);
        float value = static_cast<float>(stored);
        if (has_ignore && ignored(stored, ignore)) value = nan;
        out[i * step] = value / scale;
    }
}

using Converter = void (*)(const unsigned char*, size_t, size_t, float*, size_t, bool, bool, double, float);

Converter converter(int data_type) {
    switch (data_type) {
        case 1: return convert<uint8_t>;
        case 2: return convert<int16_t>;
        case 3: return convert<int32_t>;
        case 4: return convert<float>;
        case 5: return convert<double>;
        case 12: return convert<uint16_t>;
        case 13: return convert<uint32_t>;
        case 14: return convert<int64_t>;
        case 15: return convert<uint64_t>;
        default: throw UsageError("data type " + std::to_string(data_type) + " is not read");
    }
}

std::string errno_text() { return std::strerror(errno); }

}  // namespace

EnviCube::EnviCube(const std::string& header_path) {
    struct stat info;
    if (::stat(header_path.c_str(), &info) != 0)
        throw MissingInputError(header_path + ": the ENVI header cannot be opened (" + errno_text() + ")");
    envi_header h;
    char error[512];
    if (envi_header_read_any(header_path.c_str(), &h, error, sizeof error) != 0) throw InputError(error);
    struct Free {
        envi_header* h;
        ~Free() { envi_header_free(h); }
    } free_header{&h};
    if (h.lines > 2000000000L || h.samples > 1000000L)
        throw InputError(header_path + ": lines must be <= 2000000000 and samples <= 1000000");
    H_ = static_cast<int>(h.lines);
    W_ = static_cast<int>(h.samples);
    stored_bands_ = static_cast<int>(h.bands);
    B_ = static_cast<int>(h.good_bands);
    data_type_ = h.data_type;
    value_bytes_ = envi_header_value_bytes(h.data_type);
    interleave_ = h.interleave;
    swap_ = (h.byte_order == 1) != host_big_endian();
    has_ignore_ = h.has_ignore != 0;
    ignore_ = h.ignore_value;
    if (!(h.scale <= FLT_MAX) || !(static_cast<float>(h.scale) > 0.0f))
        throw InputError(header_path + ": reflectance scale factor: " + std::to_string(h.scale) +
                         " is outside the float32 range");
    scale_ = static_cast<float>(h.scale);
    offset_ = static_cast<uint64_t>(h.header_offset);
    for (int b = 0; b < stored_bands_; ++b)
        if (!h.good || h.good[b]) kept_.push_back(b);

    char data[4096];
    if (envi_data_path(header_path.c_str(), data, sizeof data) != 0)
        throw InputError(header_path + ": the path is too long to name its data file");
    data_path_ = data;
    fd_ = ::open(data, O_RDONLY);
    if (fd_ < 0)
        throw MissingInputError(header_path + ": its data file " + data_path_ + " cannot be opened (" + errno_text() + ")");
    struct stat data_info;
    if (::fstat(fd_, &data_info) != 0) {
        ::close(fd_);
        fd_ = -1;
        throw InputError(data_path_ + ": cannot be read (" + errno_text() + ")");
    }
    const uint64_t needed = offset_ + static_cast<uint64_t>(H_) * W_ * stored_bands_ * value_bytes_;
    if (static_cast<uint64_t>(data_info.st_size) < needed) {
        ::close(fd_);
        fd_ = -1;
        throw InputError(data_path_ + ": " + std::to_string(data_info.st_size) + " bytes, but " + header_path +
                         " (lines x samples x bands x " + std::to_string(value_bytes_) +
                         " bytes + header offset) needs " + std::to_string(needed));
    }
}

EnviCube::~EnviCube() {
    if (fd_ >= 0) ::close(fd_);
}

void EnviCube::read_bytes(unsigned char* to, size_t count, uint64_t offset) {
    while (count > 0) {
        const ssize_t got = ::pread(fd_, to, count, static_cast<off_t>(offset));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0)
            throw InputError(data_path_ + ": read failed at byte " + std::to_string(offset) +
                             (got < 0 ? " (" + errno_text() + ")" : std::string(" (end of file)")));
        to += got;
        offset += static_cast<uint64_t>(got);
        count -= static_cast<size_t>(got);
    }
}

void EnviCube::read(int row, int col0, int cols, float* out) {
    if (row < 0 || row >= H_ || col0 < 0 || cols < 1 || col0 + cols > W_)
        throw UsageError(data_path_ + ": window outside the cube");
    const Converter put = converter(data_type_);
    const size_t vb = static_cast<size_t>(value_bytes_), n = static_cast<size_t>(cols), B = static_cast<size_t>(B_);
    const uint64_t H = static_cast<uint64_t>(H_), W = static_cast<uint64_t>(W_), Bs = static_cast<uint64_t>(stored_bands_);
    if (interleave_ == ENVI_BIP) {
        // one read: the window's pixels, every stored band
        const size_t bytes = n * stored_bands_ * vb;
        if (raw_.size() < bytes) raw_.resize(bytes);
        read_bytes(raw_.data(), bytes, offset_ + ((static_cast<uint64_t>(row) * W + col0) * Bs) * vb);
        for (size_t k = 0; k < kept_.size(); ++k)
            put(raw_.data() + kept_[k] * vb, stored_bands_ * vb, n, out + k, B, swap_, has_ignore_, ignore_, scale_);
        return;
    }
    // bil and bsq: one read per kept band
    if (raw_.size() < n * vb) raw_.resize(n * vb);
    for (size_t k = 0; k < kept_.size(); ++k) {
        const uint64_t b = static_cast<uint64_t>(kept_[k]);
        const uint64_t first = interleave_ == ENVI_BIL ? (static_cast<uint64_t>(row) * Bs + b) * W + col0
                                                       : (b * H + static_cast<uint64_t>(row)) * W + col0;
        read_bytes(raw_.data(), n * vb, offset_ + first * vb);
        put(raw_.data(), vb, n, out + k, B, swap_, has_ignore_, ignore_, scale_);
    }
}

ScratchStore::ScratchStore(const char* dir, int H, int W, int p) : W_(W), p_(p) {
    if (!dir) {
        memory_.assign(static_cast<size_t>(H) * W * p, 0.0f);
        return;
    }
    dir_ = dir;
    std::string path = dir_ + "/unmix-abundances-XXXXXX";
    std::vector<char> name(path.begin(), path.end());
    name.push_back('\0');
    fd_ = ::mkstemp(name.data());
    if (fd_ < 0)
        throw UsageError("scratch_dir: cannot create a file in '" + dir_ + "' (" + errno_text() + ")");
    ::unlink(name.data());  // gone once closed, whatever happens
}

ScratchStore::~ScratchStore() {
    if (fd_ >= 0) ::close(fd_);
}

void ScratchStore::read(int row, int col0, int cols, float* out) {
    const size_t at = (static_cast<size_t>(row) * W_ + col0) * p_, count = static_cast<size_t>(cols) * p_;
    if (fd_ < 0) {
        std::copy(memory_.begin() + static_cast<long>(at), memory_.begin() + static_cast<long>(at + count), out);
        return;
    }
    unsigned char* to = reinterpret_cast<unsigned char*>(out);
    size_t left = count * sizeof(float);
    uint64_t offset = static_cast<uint64_t>(at) * sizeof(float);
    while (left > 0) {
        const ssize_t got = ::pread(fd_, to, left, static_cast<off_t>(offset));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) throw InputError("scratch file in '" + dir_ + "': read failed" + (got < 0 ? " (" + errno_text() + ")" : ""));
        to += got;
        offset += static_cast<uint64_t>(got);
        left -= static_cast<size_t>(got);
    }
}

void ScratchStore::write_row(int row, const float* values) {
    const size_t at = static_cast<size_t>(row) * W_ * p_, count = static_cast<size_t>(W_) * p_;
    if (fd_ < 0) {
        std::copy(values, values + count, memory_.begin() + static_cast<long>(at));
        return;
    }
    const unsigned char* from = reinterpret_cast<const unsigned char*>(values);
    size_t left = count * sizeof(float);
    uint64_t offset = static_cast<uint64_t>(at) * sizeof(float);
    while (left > 0) {
        const ssize_t put = ::pwrite(fd_, from, left, static_cast<off_t>(offset));
        if (put < 0 && errno == EINTR) continue;
        if (put <= 0) throw InputError("scratch file in '" + dir_ + "': write failed" + (put < 0 ? " (" + errno_text() + ")" : ""));
        from += put;
        offset += static_cast<uint64_t>(put);
        left -= static_cast<size_t>(put);
    }
}

}  // namespace unmix
