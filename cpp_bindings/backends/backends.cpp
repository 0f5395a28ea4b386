#include "backends.hpp"

#include "../core/analytic_backend.hpp"

namespace unmix {

#ifndef UNMIX_WITH_OPENVINO
std::unique_ptr<Backend> make_openvino_backend(const Manifest&, int) {
    throw BackendError("backend 'openvino' was not built (configure with OpenVINO found)");
}
#endif

std::unique_ptr<Backend> make_backend(const std::string& name, const Manifest& manifest, int threads) {
    if (name == "openvino") return make_openvino_backend(manifest, threads);
    if (name == "analytic")
        return std::unique_ptr<Backend>(new AnalyticBackend(manifest.endmembers, manifest.endmember_count(), manifest.bands));
    if (name == "onnxruntime" || name == "tensorrt")
        // Gated: compiled only where onnxruntime_cxx_api.h / NvInfer.h are found; not written yet.
        throw BackendError("backend '" + name + "' was not built");
    throw UsageError("unknown backend '" + name + "'; known: openvino, onnxruntime, tensorrt, analytic");
}

}  // namespace unmix
