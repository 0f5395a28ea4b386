// The files behind unmix_run_file and unmix_run_rows: an ENVI cube read a row window at a time, and the
// scratch store of the passes' abundances (a file, or memory). POSIX (open, pread, pwrite).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "../core/pipeline.hpp"

namespace unmix {

// An ENVI cube (examples/envi_header.c, envi_header_read_any): data types 1, 2, 3, 4, 5, 12, 13, 14, 15,
// either byte order, bsq / bil / bip, header offset. Values as unmix.io.envi gives them: stored value
// -> float32, `data ignore value` (compared on the stored value) -> NaN, divided by the float32
// `reflectance scale factor`, bands with bbl = 0 dropped. Errors name the file and the key
// (InputError; MissingInputError when a file does not exist).
class EnviCube : public CubeSource {
public:
    explicit EnviCube(const std::string& header_path);
    ~EnviCube() override;
    EnviCube(const EnviCube&) = delete;
    EnviCube& operator=(const EnviCube&) = delete;

    int lines() const { return H_; }
    int samples() const { return W_; }
    int bands() const { return B_; }  // kept bands (bbl)

    void read(int row, int col0, int cols, float* out) override;

private:
    void read_bytes(unsigned char* to, size_t count, uint64_t offset);
    std::string data_path_;
    int fd_ = -1;
    int H_ = 0, W_ = 0, B_ = 0, stored_bands_ = 0, data_type_ = 4, value_bytes_ = 4;
    int interleave_ = 0;  // envi_interleave
    bool swap_ = false, has_ignore_ = false;
    double ignore_ = 0.0;
    float scale_ = 1.0f;
    uint64_t offset_ = 0;
    std::vector<int> kept_;  // stored band index of each kept band
    std::vector<unsigned char> raw_;
};

// The (H, W, p) float32 abundances between passes: in a scratch file in `dir` (created with mkstemp and
// unlinked at once: nothing is left behind, also after a crash; positioned reads and writes, no
// mapping, so it does not count as resident memory), or in memory when dir is NULL.
class ScratchStore : public AbundanceStore {
public:
    ScratchStore(const char* dir, int H, int W, int p);
    ~ScratchStore() override;
    ScratchStore(const ScratchStore&) = delete;
    ScratchStore& operator=(const ScratchStore&) = delete;

    void read(int row, int col0, int cols, float* out) override;
    void write_row(int row, const float* values) override;

private:
    std::string dir_;
    int fd_ = -1;
    int W_, p_;
    std::vector<float> memory_;
};

}  // namespace unmix
