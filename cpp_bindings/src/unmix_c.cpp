// The C ABI over the core: exceptions become status codes and a per-handle message.
#include "unmix.h"

#include <cmath>
#include <memory>
#include <new>
#include <string>

#include "../backends/backends.hpp"
#include "../core/manifest.hpp"
#include "../core/pipeline.hpp"

struct unmix_handle {
    unmix::Manifest manifest;
    std::unique_ptr<unmix::Backend> backend;
    std::unique_ptr<unmix::Pipeline> pipeline;
    unmix::PipelineConfig config;
    int p = 0, B = 0, T = 0;
    std::string error;
};

namespace {

thread_local std::string g_open_error;

template <typename Body>
unmix_status guarded(std::string& error, Body body) {
    try {
        body();
        error.clear();
        return UNMIX_OK;
    } catch (const unmix::UsageError& e) {
        error = e.what();
        return UNMIX_ERROR_USAGE;
    } catch (const unmix::MissingInputError& e) {
        error = e.what();
        return UNMIX_ERROR_MISSING_INPUT;
    } catch (const unmix::InputError& e) {
        error = e.what();
        return UNMIX_ERROR_INPUT;
    } catch (const unmix::BackendError& e) {
        error = e.what();
        return UNMIX_ERROR_BACKEND;
    } catch (const std::bad_alloc&) {
        error = "out of memory";
        return UNMIX_ERROR_INTERNAL;
    } catch (const std::exception& e) {
        error = std::string("internal error: ") + e.what();
        return UNMIX_ERROR_INTERNAL;
    } catch (...) {
        error = "internal error";
        return UNMIX_ERROR_INTERNAL;
    }
}

// p and T from hybridstu's declared output (1, p, T, T), checked against the manifest.
void shapes(unmix_handle& h) {
    const unmix::NetworkEntry* net = h.manifest.network("hybridstu");
    if (!net) throw unmix::InputError(h.manifest.path + ": key 'networks': expected a 'hybridstu' network");
    const unmix::TensorSpec* head = nullptr;
    for (const auto& spec : net->outputs)
        if (spec.name == "abundances") head = &spec;
    if (!head || head->shape.size() != 4)
        throw unmix::InputError("network 'hybridstu' must declare output 'abundances' (1, p, T, T)");
    h.p = static_cast<int>(head->shape[1]);
    h.T = static_cast<int>(head->shape[2]);
    h.B = h.manifest.bands;
    if (h.p != h.manifest.endmember_count())
        throw unmix::InputError(h.manifest.path + ": hybridstu gives " + std::to_string(h.p) + " endmembers, the manifest names " +
                                std::to_string(h.manifest.endmember_count()));
}

void defaults(unmix_handle& h) {
    unmix::PipelineConfig& c = h.config;
    const unmix::Manifest& m = h.manifest;
    c.steps = m.steps;
    c.t0 = m.t0;
    c.eta = m.eta;
    c.samples = m.samples;
    c.rounds = m.rounds;
    c.tile = m.tile;
    const unmix::Json& inf = m.inference;
    if (inf.has("overlap") && inf["overlap"].is_integer()) c.overlap = static_cast<int>(inf["overlap"].as_integer());
    if (inf.has("dc_weight") && inf["dc_weight"].is_number()) c.dc_weight = inf["dc_weight"].as_number();
    if (inf.has("spectra_steps") && inf["spectra_steps"].is_integer())
        c.spectra_steps = static_cast<int>(inf["spectra_steps"].as_integer());
    if (inf.has("spectra_t0") && inf["spectra_t0"].is_integer()) c.spectra_t0 = static_cast<int>(inf["spectra_t0"].as_integer());
    if (inf.has("spectra_eta") && inf["spectra_eta"].is_number()) c.spectra_eta = inf["spectra_eta"].as_number();
    if (inf.has("refine_spectra") && inf["refine_spectra"].is_bool()) c.refine_spectra = inf["refine_spectra"].as_bool();
    if (inf.has("seed") && inf["seed"].is_integer() && inf["seed"].as_integer() >= 0)
        c.seed = static_cast<uint64_t>(inf["seed"].as_integer());
}

int integer_option(const char* name, double value, double minimum) {
    if (!std::isfinite(value) || value != std::floor(value) || value < minimum || value > 2147483647.0)
        throw unmix::UsageError(std::string(name) + " must be an integer >= " + std::to_string(static_cast<long>(minimum)));
    return static_cast<int>(value);
}

}  // namespace

extern "C" {

int unmix_abi_version(void) { return UNMIX_ABI_VERSION; }

unmix_status unmix_open(const char* model_dir, const char* backend_name, int threads, unmix_handle** handle) {
    if (handle) *handle = nullptr;
    std::unique_ptr<unmix_handle> h;
    unmix_status status = guarded(g_open_error, [&] {
        if (!handle) throw unmix::UsageError("unmix_open: handle is NULL");
        if (!model_dir || !*model_dir) throw unmix::UsageError("unmix_open: model_dir is NULL or empty");
        if (!backend_name || !*backend_name) throw unmix::UsageError("unmix_open: backend_name is NULL or empty");
        h.reset(new unmix_handle());
        h->manifest = unmix::load_manifest(model_dir);
        shapes(*h);
        defaults(*h);
        h->backend = unmix::make_backend(backend_name, h->manifest, threads);
        h->pipeline.reset(new unmix::Pipeline(*h->backend, h->manifest.schedule, h->B, h->p, h->T));
    });
    if (status == UNMIX_OK) *handle = h.release();
    return status;
}

unmix_status unmix_set_option(unmix_handle* handle, const char* name, double value) {
    if (!handle) {
        g_open_error = "unmix_set_option: handle is NULL";
        return UNMIX_ERROR_USAGE;
    }
    return guarded(handle->error, [&] {
        if (!name) throw unmix::UsageError("unmix_set_option: name is NULL");
        unmix::PipelineConfig c = handle->config;
        const std::string key = name;
        if (key == "steps") c.steps = integer_option(name, value, 1);
        else if (key == "t0") c.t0 = integer_option(name, value, 0);
        else if (key == "eta") c.eta = value;
        else if (key == "samples") c.samples = integer_option(name, value, 1);
        else if (key == "rounds") c.rounds = integer_option(name, value, 1);
        else if (key == "overlap") c.overlap = integer_option(name, value, 0);
        else if (key == "dc_weight") c.dc_weight = value;
        else if (key == "spectra_steps") c.spectra_steps = integer_option(name, value, 1);
        else if (key == "spectra_t0") c.spectra_t0 = integer_option(name, value, 0);
        else if (key == "spectra_eta") c.spectra_eta = value;
        else if (key == "refine_spectra") c.refine_spectra = value != 0.0;
        else if (key == "seed") {
            if (!std::isfinite(value) || value != std::floor(value) || value < 0 || value > 9007199254740992.0)
                throw unmix::UsageError("seed must be an integer in 0..2^53");
            c.seed = static_cast<uint64_t>(value);
        } else {
            throw unmix::UsageError("unknown inference setting '" + key + "'");
        }
        c.validate();
        handle->config = c;
    });
}

unmix_status unmix_run(unmix_handle* handle, const float* cube_hwb, int64_t H, int64_t W, int64_t B,
                       float* abundances_hwp, float* endmembers_pb, float* rmse_hw) {
    if (!handle) {
        g_open_error = "unmix_run: handle is NULL";
        return UNMIX_ERROR_USAGE;
    }
    return guarded(handle->error, [&] {
        if (!cube_hwb || !abundances_hwp || !endmembers_pb || !rmse_hw)
            throw unmix::UsageError("unmix_run: a buffer is NULL (cube, abundances, endmembers and rmse are required)");
        if (H < 1 || W < 1 || H > 1000000 || W > 1000000)
            throw unmix::UsageError("unmix_run: H and W must be in 1..1000000");
        if (B != handle->B)
            throw unmix::InputError("the cube has " + std::to_string(B) + " bands but the model expects " +
                                    std::to_string(handle->B));
        handle->pipeline->run(cube_hwb, static_cast<int>(H), static_cast<int>(W), handle->config, abundances_hwp,
                              endmembers_pb, rmse_hw);
    });
}

int unmix_endmember_count(const unmix_handle* handle) { return handle ? handle->p : -1; }
int unmix_band_count(const unmix_handle* handle) { return handle ? handle->B : -1; }
int unmix_tile_size(const unmix_handle* handle) { return handle ? handle->T : -1; }

const char* unmix_last_error(const unmix_handle* handle) {
    return handle ? handle->error.c_str() : g_open_error.c_str();
}

void unmix_close(unmix_handle* handle) { delete handle; }

}  // extern "C"
