#include "backends.hpp"

#ifdef UNMIX_WITH_ANALYTIC
#include "../tests/analytic_backend.hpp"  // the test library only (cpp_bindings/CMakeLists.txt)
#endif

namespace unmix {

#ifndef UNMIX_WITH_OPENVINO
std::unique_ptr<Backend> make_openvino_backend(const Manifest&, int) {
    throw BackendError("backend 'openvino' was not built (configure with OpenVINO found)");
}
#endif

std::unique_ptr<Backend> make_backend(const std::string& name, const Manifest& manifest, int threads) {
    if (name == "openvino") return make_openvino_backend(manifest, threads);
#ifdef UNMIX_WITH_ANALYTIC
    if (name == "analytic")
        return std::unique_ptr<Backend>(new AnalyticBackend(manifest.endmembers, manifest.endmember_count(), manifest.bands));
#endif
    throw UsageError("unknown backend '" + name + "'; known: openvino");
}

}  // namespace unmix
