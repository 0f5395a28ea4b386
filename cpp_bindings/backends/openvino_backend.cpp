// OpenVINO backend: one compiled model and infer request per network; caller buffers are wrapped
// as ov::Tensor (no copy) for both inputs and outputs.
#include <map>
#include <openvino/openvino.hpp>

#include "backends.hpp"

namespace unmix {

namespace {

class OpenVINOBackend : public Backend {
public:
    OpenVINOBackend(const Manifest& manifest, int threads) {
        ov::AnyMap config;
        if (threads > 0) config[ov::inference_num_threads.name()] = threads;
        config[ov::hint::inference_precision.name()] = ov::element::f32;
        for (const auto& entry : manifest.networks) {
            // An fp16 graph runs through its fp32 reference where the manifest names one.
            const std::string file = verified_network_file(manifest.path, entry, true);
            Slot slot;
            std::shared_ptr<ov::Model> model = core_.read_model(file);
            slot.compiled = core_.compile_model(model, "CPU", config);
            slot.request = slot.compiled.create_infer_request();
            for (const auto& spec : entry.inputs) slot.inputs.push_back(spec.name);
            for (const auto& spec : entry.outputs) slot.outputs.push_back(spec.name);
            slots_.emplace(entry.name, std::move(slot));
        }
    }

    void run(const std::string& network, const std::vector<TensorView>& in, std::vector<TensorView>& out) override {
        auto found = slots_.find(network);
        if (found == slots_.end()) throw BackendError("openvino: the model has no network '" + network + "'");
        Slot& slot = found->second;
        try {
            for (const TensorView& view : in) slot.request.set_tensor(view.name, wrap(view));
            for (TensorView& view : out) slot.request.set_tensor(view.name, wrap(view));
            slot.request.infer();
        } catch (const ov::Exception& error) {
            throw BackendError("openvino: network '" + network + "': " + error.what());
        }
    }

private:
    struct Slot {
        ov::CompiledModel compiled;
        ov::InferRequest request;
        std::vector<std::string> inputs, outputs;
    };

    static ov::Tensor wrap(const TensorView& view) {
        ov::Shape shape(view.shape, view.shape + view.rank);
        return ov::Tensor(ov::element::f32, shape, view.data);
    }

    ov::Core core_;
    std::map<std::string, Slot> slots_;
};

}  // namespace

std::unique_ptr<Backend> make_openvino_backend(const Manifest& manifest, int threads) {
    try {
        return std::unique_ptr<Backend>(new OpenVINOBackend(manifest, threads));
    } catch (const ov::Exception& error) {
        throw BackendError(std::string("openvino: cannot open the model: ") + error.what());
    }
}

}  // namespace unmix
