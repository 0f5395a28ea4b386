// Backend factory: "openvino" (reports "not built" where OpenVINO was not found at configure time).
#pragma once

#include <memory>
#include <string>

#include "../core/manifest.hpp"
#include "../core/pipeline.hpp"

namespace unmix {

std::unique_ptr<Backend> make_backend(const std::string& name, const Manifest& manifest, int threads);
std::unique_ptr<Backend> make_openvino_backend(const Manifest& manifest, int threads);  // throws when not built

}  // namespace unmix
