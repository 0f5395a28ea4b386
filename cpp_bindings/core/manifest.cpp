#include "manifest.hpp"

#include "settings.hpp"
#include "sha256.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>

namespace unmix {

namespace {

const char* const kFormat = "unmix-manifest/1";
// unmix.runtime.manifest.BETAS_RTOL
constexpr double kBetasRtol = 1e-9;

bool is_dir(const std::string& path) {
    struct stat info;
    return ::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

bool is_file(const std::string& path) {
    struct stat info;
    return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

std::string real_path(const std::string& path) {
    std::unique_ptr<char, decltype(&std::free)> resolved(::realpath(path.c_str(), nullptr), &std::free);
    return resolved ? std::string(resolved.get()) : std::string();
}

std::string describe(const Json& value) {
    switch (value.type()) {
        case Json::Type::String: return "'" + value.as_string() + "'";
        case Json::Type::Number: {
            if (value.is_integer()) return std::to_string(value.as_integer());
            return std::to_string(value.as_number());
        }
        case Json::Type::Bool: return value.as_bool() ? "true" : "false";
        default: return Json::type_name(value.type());
    }
}

class Checker {
public:
    explicit Checker(std::string path) : path_(std::move(path)) {}
    [[noreturn]] void fail(const std::string& key, const std::string& expected) const {
        throw InputError(path_ + ": key '" + key + "': expected " + expected);
    }
    [[noreturn]] void fail(const std::string& key, const std::string& expected, const Json& got) const {
        throw InputError(path_ + ": key '" + key + "': expected " + expected + ", got " + describe(got));
    }
    const Json& mapping(const Json& value, const std::string& key, std::initializer_list<const char*> required) const {
        if (!value.is_object()) fail(key.empty() ? "(document)" : key, "a mapping", value);
        for (const char* name : required)
            if (!value.has(name)) fail(key.empty() ? name : key + "." + name, "to be present");
        return value;
    }
    const std::string& string(const Json& value, const std::string& key) const {
        if (!value.is_string() || value.as_string().empty()) fail(key, "a non-empty string", value);
        return value.as_string();
    }
    long long integer(const Json& value, const std::string& key, long long minimum) const {
        if (!value.is_integer() || value.as_integer() < minimum)
            fail(key, "an integer >= " + std::to_string(minimum), value);
        return value.as_integer();
    }
    double number(const Json& value, const std::string& key) const {
        if (!value.is_number()) fail(key, "a number", value);
        return value.as_number();
    }
    std::vector<double> numbers(const Json& value, const std::string& key, long long length) const {
        if (!value.is_array()) fail(key, "a list of numbers", value);
        std::vector<double> out;
        out.reserve(value.size());
        for (const Json& item : value.as_array()) {
            if (!item.is_number()) fail(key, "a list of numbers", item);
            out.push_back(item.as_number());
        }
        if (length >= 0 && static_cast<long long>(out.size()) != length)
            fail(key, std::to_string(length) + " numbers", Json::parse(std::to_string(out.size())));
        return out;
    }
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

std::string contained_file(const Checker& check, const std::string& model_dir, const Json& value,
                           const std::string& key) {
    const std::string& name = check.string(value, key);
    if (name[0] == '/' || name[0] == '\\')
        check.fail(key, "a file name relative to the model folder, not an absolute path", value);
    if (name.find('\\') != std::string::npos)
        check.fail(key, "a file name inside the model folder (no '..' and no backslash)", value);
    size_t start = 0;
    while (start <= name.size()) {
        size_t end = name.find('/', start);
        if (end == std::string::npos) end = name.size();
        if (name.compare(start, end - start, "..") == 0 && end - start == 2)
            check.fail(key, "a file name inside the model folder (no '..' and no backslash)", value);
        start = end + 1;
    }
    const std::string root = real_path(model_dir);
    const std::string target = model_dir + "/" + name;
    const std::string resolved = real_path(target);
    if (resolved.empty() || !is_file(resolved))
        throw MissingInputError(check.path() + ": key '" + key + "': file '" + name + "' not found in " + model_dir);
    if (root.empty() || resolved.compare(0, root.size(), root) != 0 ||
        (resolved.size() > root.size() && resolved[root.size()] != '/'))
        check.fail(key, "a file inside the model folder, but it resolves to " + resolved + " (a symlink out of it)",
                   value);
    return target;
}

std::vector<TensorSpec> tensor_specs(const Checker& check, const Json& items, const std::string& key) {
    if (!items.is_array() || items.size() == 0) check.fail(key, "a non-empty list of {name, shape, dtype}", items);
    std::vector<TensorSpec> specs;
    for (size_t i = 0; i < items.size(); ++i) {
        const std::string where = key + "[" + std::to_string(i) + "]";
        const Json& item = check.mapping(items[i], where, {"name", "shape", "dtype"});
        TensorSpec spec;
        spec.name = check.string(item["name"], where + ".name");
        for (const auto& other : specs)
            if (other.name == spec.name) check.fail(where + ".name", "a name used once", item["name"]);
        const Json& shape = item["shape"];
        if (!shape.is_array() || shape.size() == 0) check.fail(where + ".shape", "a static shape (a list of integers >= 1)", shape);
        for (const Json& size : shape.as_array()) {
            if (!size.is_integer() || size.as_integer() < 1)
                check.fail(where + ".shape", "a static shape (a list of integers >= 1)", size);
            spec.shape.push_back(size.as_integer());
        }
        const Json& dtype = item["dtype"];
        if (!dtype.is_string() || (dtype.as_string() != "float32" && dtype.as_string() != "float16" &&
                                   dtype.as_string() != "int64" && dtype.as_string() != "int32"))
            check.fail(where + ".dtype", "one of float32, float16, int64, int32", dtype);
        spec.dtype = dtype.as_string();
        specs.push_back(std::move(spec));
    }
    return specs;
}

void check_sha(const Checker& check, const Json& sha, const std::string& key) {
    bool ok = sha.is_string() && sha.as_string().size() == 64;
    if (ok)
        for (char c : sha.as_string()) ok = ok && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
    if (!ok) check.fail(key, "64 lowercase hex digits", sha);
}

void check_precision(const Checker& check, const Json& precision, const std::string& key) {
    if (!precision.is_string() || (precision.as_string() != "fp32" && precision.as_string() != "fp16"))
        check.fail(key, "one of fp32, fp16", precision);
}

std::string bound(double value) {
    char text[32];
    std::snprintf(text, sizeof text, "%.17g", value);
    return text;
}

// A setting of the manifest's "inference" against its kind and range (settings.inc).
void check_setting(const Checker& check, const Json& value, const std::string& key, SettingKind kind, double minimum,
                   double maximum, const std::string& choices) {
    switch (kind) {
        case SettingKind::Integer:
        case SettingKind::Seed:
            if (!value.is_integer() || value.as_integer() < minimum || static_cast<double>(value.as_integer()) > maximum)
                check.fail(key, "an integer in [" + bound(minimum) + ", " + bound(maximum) + "]", value);
            return;
        case SettingKind::Number:
            if (!value.is_number() || !(value.as_number() >= minimum && value.as_number() <= maximum))
                check.fail(key, "a number in [" + bound(minimum) + ", " + bound(maximum) + "]", value);
            return;
        case SettingKind::Flag:
            if (!value.is_bool()) check.fail(key, "true or false", value);
            return;
        case SettingKind::Choice:
            if (!value.is_string() || value.as_string().empty() || value.as_string().find(' ') != std::string::npos ||
                (" " + choices + " ").find(" " + value.as_string() + " ") == std::string::npos)
                check.fail(key, "one of " + choices, value);
            return;
    }
}

}  // namespace

std::string verified_network_file(const std::string& manifest_path, const NetworkEntry& entry, bool prefer_reference) {
    const bool reference = prefer_reference && !entry.reference_path.empty();
    const std::string& path = reference ? entry.reference_path : entry.path;
    const std::string& expected = reference ? entry.reference_sha256 : entry.sha256;
    const std::string key = "networks." + entry.name + (reference ? ".reference" : "") + ".sha256";
    const std::string actual = file_sha256(path);
    if (actual != expected)
        throw InputError(manifest_path + ": key '" + key + "': expected the sha256 of " + path + ", got " + actual +
                         " (the file changed after export)");
    return path;
}

const NetworkEntry* Manifest::network(const std::string& name) const {
    for (const auto& entry : networks)
        if (entry.name == name) return &entry;
    return nullptr;
}

Manifest parse_manifest(const Json& data, const std::string& model_dir, const std::string& path) {
    Checker check(path);
    check.mapping(data, "", {"format", "networks", "schedule", "inference", "sensor", "endmembers", "versions"});
    if (!data["format"].is_string() || data["format"].as_string() != kFormat)
        check.fail("format", std::string("'") + kFormat + "' (re-export the model with this version of unmix)",
                   data["format"]);
    Manifest m;
    m.path = path;
    m.model_dir = model_dir;

    const Json& networks = check.mapping(data["networks"], "networks", {});
    if (networks.size() == 0) check.fail("networks", "at least one network");
    for (const auto& member : networks.as_object()) {
        const std::string& name = member.first;
        bool good = !name.empty();
        for (char c : name)
            good = good && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                            c == '-');
        if (!good) check.fail("networks", "network names of letters, digits, '_' or '-', got '" + name + "'");
        const std::string key = "networks." + name;
        const Json& entry = check.mapping(member.second, key, {"file", "sha256", "opset", "precision", "inputs", "outputs"});
        NetworkEntry net;
        net.name = name;
        net.file = entry["file"].is_string() ? entry["file"].as_string() : std::string();
        net.path = contained_file(check, model_dir, entry["file"], key + ".file");
        check_sha(check, entry["sha256"], key + ".sha256");
        net.sha256 = entry["sha256"].as_string();
        check_precision(check, entry["precision"], key + ".precision");
        net.precision = entry["precision"].as_string();
        net.opset = static_cast<int>(check.integer(entry["opset"], key + ".opset", 1));
        net.inputs = tensor_specs(check, entry["inputs"], key + ".inputs");
        net.outputs = tensor_specs(check, entry["outputs"], key + ".outputs");
        if (entry.has("reference") && !entry["reference"].is_null()) {
            const Json& ref = check.mapping(entry["reference"], key + ".reference", {"file", "sha256", "precision"});
            net.reference_path = contained_file(check, model_dir, ref["file"], key + ".reference.file");
            net.reference_file = ref["file"].as_string();
            check_sha(check, ref["sha256"], key + ".reference.sha256");
            net.reference_sha256 = ref["sha256"].as_string();
            check_precision(check, ref["precision"], key + ".reference.precision");
        }
        m.networks.push_back(std::move(net));
    }

    const Json& schedule = check.mapping(data["schedule"], "schedule", {"kind", "T", "betas"});
    for (const auto& member : schedule.as_object()) {
        const std::string& k = member.first;
        if (k != "kind" && k != "T" && k != "beta_start" && k != "beta_end" && k != "prediction" && k != "betas")
            check.fail("schedule", "a valid schedule (unknown key '" + k + "')");
    }
    if (!schedule["kind"].is_string()) check.fail("schedule.kind", "linear or cosine", schedule["kind"]);
    m.schedule.kind = schedule["kind"].as_string();
    m.schedule.T = static_cast<int>(check.integer(schedule["T"], "schedule.T", 2));
    if (schedule.has("beta_start")) m.schedule.beta_start = check.number(schedule["beta_start"], "schedule.beta_start");
    if (schedule.has("beta_end")) m.schedule.beta_end = check.number(schedule["beta_end"], "schedule.beta_end");
    if (schedule.has("prediction")) {
        if (!schedule["prediction"].is_string()) check.fail("schedule.prediction", "epsilon or v", schedule["prediction"]);
        m.schedule.prediction = schedule["prediction"].as_string();
    }
    try {
        m.schedule.validate();
    } catch (const UsageError& error) {
        check.fail("schedule", std::string("a valid schedule (") + error.what() + ")");
    }
    // The betas spell the schedule out; they must be the ones rebuilt from its configuration.
    m.betas = check.numbers(schedule["betas"], "schedule.betas", m.schedule.T);
    const std::vector<double> expected = m.schedule.betas();
    for (size_t t = 0; t < expected.size(); ++t)
        if (!(std::fabs(m.betas[t] - expected[t]) <= kBetasRtol * expected[t]))
            check.fail("schedule.betas", "the betas of the " + m.schedule.kind + " schedule with T = " +
                                             std::to_string(m.schedule.T) + " (index " + std::to_string(t) + ")",
                       schedule["betas"][t]);

    const Json& inference = check.mapping(data["inference"], "inference", {"steps", "t0", "samples", "rounds", "tile", "eta"});
    m.inference = inference;
#define UNMIX_SETTING(NAME, KIND, FIXED, MINIMUM, MAXIMUM, DEFAULT, CHOICES)                                          \
    if (inference.has(#NAME))                                                                                          \
        check_setting(check, inference[#NAME], "inference." #NAME, SettingKind::KIND, static_cast<double>(MINIMUM), \
                      static_cast<double>(MAXIMUM), CHOICES);
#include "settings.inc"
#undef UNMIX_SETTING
    m.tile = static_cast<int>(inference["tile"].as_integer());
    if (inference["t0"].as_integer() >= m.schedule.T)
        check.fail("inference.t0", "an integer below schedule.T = " + std::to_string(m.schedule.T), inference["t0"]);

    const Json& sensor = check.mapping(data["sensor"], "sensor", {"bands", "wavelengths"});
    m.bands = static_cast<int>(check.integer(sensor["bands"], "sensor.bands", 1));
    if (!sensor["wavelengths"].is_null()) {
        m.wavelengths = check.numbers(sensor["wavelengths"], "sensor.wavelengths", m.bands);
        for (double w : m.wavelengths)
            if (!std::isfinite(w)) check.fail("sensor.wavelengths", "finite numbers");
    }

    const Json& endmembers = check.mapping(data["endmembers"], "endmembers", {"names", "spectra"});
    const Json& names = endmembers["names"];
    if (!names.is_array() || names.size() < 2) check.fail("endmembers.names", "a list of at least 2 non-empty strings", names);
    for (const Json& name : names.as_array()) m.endmember_names.push_back(check.string(name, "endmembers.names"));
    const Json& spectra = endmembers["spectra"];
    if (!spectra.is_array() || spectra.size() != names.size())
        check.fail("endmembers.spectra", std::to_string(names.size()) + " spectra (one per name)", spectra);
    for (size_t k = 0; k < spectra.size(); ++k)
        for (double v : check.numbers(spectra[k], "endmembers.spectra[" + std::to_string(k) + "]", m.bands))
            m.endmembers.push_back(static_cast<float>(v));

    const Json& versions = check.mapping(data["versions"], "versions", {});
    for (const auto& member : versions.as_object())
        if (!member.second.is_null() && !member.second.is_string())
            check.fail("versions." + member.first, "a version string or null", member.second);
    return m;
}

Manifest load_manifest(const std::string& model_dir) {
    if (model_dir.empty()) throw MissingInputError("model folder not given");
    std::string path, folder;
    if (is_file(model_dir)) {
        path = model_dir;
        size_t slash = model_dir.find_last_of('/');
        folder = slash == std::string::npos ? "." : (slash == 0 ? "/" : model_dir.substr(0, slash));
    } else {
        folder = model_dir;
        path = model_dir + "/manifest.json";
        if (!is_dir(model_dir)) throw MissingInputError(model_dir + ": model folder not found");
        if (!is_file(path)) throw MissingInputError(path + ": not found (not an exported unmix model; run unmix-export)");
    }
    Json data;
    try {
        data = Json::parse_file(path);
    } catch (const JsonError& error) {
        throw InputError(std::string(error.what()));
    }
    return parse_manifest(data, folder, path);
}

}  // namespace unmix
