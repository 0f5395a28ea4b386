// libFuzzer target: the ENVI header reader of the C example and libunmix (examples/envi_header.c) on arbitrary bytes.
// Every input must give 0 and a consistent header, or -1 and a message; anything else is a finding.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "envi_header.h"

namespace {
void check(int status, envi_header& h, const char* error) {
    if (status == 0) {
        if (h.samples < 1 || h.lines < 1 || h.bands < 1 || h.good_bands < 1 || h.good_bands > h.bands) std::abort();
        if (h.header_offset < 0 || !(h.scale > 0)) std::abort();
        if (envi_header_value_bytes(h.data_type) == 0 || (h.byte_order != 0 && h.byte_order != 1)) std::abort();
        long kept = 0;
        for (long b = 0; h.good && b < h.bands; ++b) kept += h.good[b];
        if (h.good && kept != h.good_bands) std::abort();
        envi_header_free(&h);
    } else if (status != -1 || std::strlen(error) == 0) {
        std::abort();
    }
}
}  // namespace

// Both entry points: float32 only (the C example) and any data type (libunmix's unmix_run_file).
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    envi_header h;
    char error[256];
    check(envi_header_parse(reinterpret_cast<const char*>(data), size, &h, error, sizeof error), h, error);
    check(envi_header_parse_any(reinterpret_cast<const char*>(data), size, &h, error, sizeof error), h, error);
    return 0;
}
