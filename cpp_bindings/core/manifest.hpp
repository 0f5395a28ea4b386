// manifest.json reader (format "unmix-manifest/1"), validated like unmix/runtime/manifest.py.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "diffusion.hpp"
#include "json.hpp"

namespace unmix {

class InputError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};
// A model folder, manifest or named file that does not exist.
class MissingInputError : public InputError {
public:
    using InputError::InputError;
};

struct TensorSpec {
    std::string name;
    std::vector<int64_t> shape;
    std::string dtype;
};

struct NetworkEntry {
    std::string name, file, path, sha256, precision;
    int opset = 0;
    std::vector<TensorSpec> inputs, outputs;  // inputs in call order
    std::string reference_file, reference_path, reference_sha256;  // empty when absent
};

// The path a backend should load for `entry` (its fp32 reference when `prefer_reference` and one is
// named), after checking that file's sha256 against the manifest (InputError on a mismatch).
std::string verified_network_file(const std::string& manifest_path, const NetworkEntry& entry, bool prefer_reference);

struct Manifest {
    std::string path, model_dir;
    std::vector<NetworkEntry> networks;
    Schedule schedule;
    std::vector<double> betas;  // as written; equal (to 1e-9 relative) to schedule.betas()
    int tile = 64;   // inference.tile, the networks' tile size
    Json inference;  // the inference defaults as written, each checked against settings.inc; absent ones
                     // keep PipelineConfig's defaults
    int bands = 0;
    std::vector<double> wavelengths;  // empty when null
    std::vector<std::string> endmember_names;
    std::vector<float> endmembers;  // (p, B)

    const NetworkEntry* network(const std::string& name) const;
    int endmember_count() const { return static_cast<int>(endmember_names.size()); }
};

// Reads and validates model_dir/manifest.json (model_dir may also be the manifest file).
// Throws MissingInputError / InputError with one line naming the file, the key and what was expected.
Manifest load_manifest(const std::string& model_dir);
Manifest parse_manifest(const Json& data, const std::string& model_dir, const std::string& path);

}  // namespace unmix
