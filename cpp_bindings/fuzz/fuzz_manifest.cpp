// libFuzzer target: the JSON reader and the manifest validator on arbitrary bytes. Every input must end
// in a parsed manifest or one of the documented errors (JsonError, InputError, UsageError); anything
// else (a crash, a sanitizer report, another exception) is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "json.hpp"
#include "manifest.hpp"

namespace {
std::string g_model_dir;  // a folder with the network files a manifest names, so validation goes deep
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    char pattern[] = "/tmp/unmix_fuzz_model_XXXXXX";
    const char* dir = ::mkdtemp(pattern);
    if (!dir) std::abort();
    g_model_dir = dir;
    for (const char* name : {"hybridstu.onnx", "abundance_step.onnx", "spectra_step.onnx", "hybridstu.fp32.onnx"})
        std::ofstream(g_model_dir + "/" + name) << "x";
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    unmix::Json json;
    try {
        json = unmix::Json::parse(text);
    } catch (const unmix::JsonError&) {
        return 0;
    }
    try {
        const unmix::Manifest m = unmix::parse_manifest(json, g_model_dir, g_model_dir + "/manifest.json");
        // what a loaded manifest promises
        if (m.endmembers.size() != static_cast<size_t>(m.endmember_count()) * static_cast<size_t>(m.bands)) std::abort();
        if (m.schedule.T < 1 || m.betas.size() != static_cast<size_t>(m.schedule.T)) std::abort();
    } catch (const unmix::InputError&) {
    } catch (const unmix::UsageError&) {
    }
    return 0;
}
