// The C ABI over the core: exceptions become status codes and a per-handle message.
#include "unmix.h"

#include <cmath>
#include <memory>
#include <new>
#include <string>

#include "../backends/backends.hpp"
#include "../core/manifest.hpp"
#include "../core/pipeline.hpp"
#include "../core/stream.hpp"
#include "scene_files.hpp"

struct unmix_handle {
    unmix::Manifest manifest;
    std::shared_ptr<unmix::Backend> backend;  // shared with the handle's streams
    std::unique_ptr<unmix::Pipeline> pipeline;
    unmix::PipelineConfig config;
    int p = 0, B = 0, T = 0;
    std::string error;
};

struct unmix_stream {
    std::unique_ptr<unmix::Stream> stream;
    int p = 0, B = 0, W = 0;
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

// Every inference setting (settings.inc, written from unmix.runtime.settings): its name in the C ABI and
// in the manifest's "inference", how a value is checked, and where it lives in PipelineConfig.
// defaults(), unmix_set_option and unmix_get_option all go through this table.
enum class Kind { Integer, Number, Flag, Seed, Choice, ReadOnly };

struct Setting {
    const char* name;
    Kind kind;
    int minimum;  // Integer only
    double (*get)(const unmix::PipelineConfig&);
    void (*set)(unmix::PipelineConfig&, double);
};

#define UNMIX_SETTING(NAME, KIND, FIXED, MINIMUM, MAXIMUM, DEFAULT, CHOICES)                                   \
    Setting{#NAME, (FIXED) ? Kind::ReadOnly : Kind::KIND, static_cast<int>(MINIMUM),                            \
            [](const unmix::PipelineConfig& c) { return static_cast<double>(c.NAME); },                         \
            [](unmix::PipelineConfig& c, double v) { c.NAME = static_cast<decltype(c.NAME)>(v); }},

const Setting kSettings[] = {
#include "../core/settings.inc"
};

#undef UNMIX_SETTING

const Setting& find_setting(const char* name) {
    for (const Setting& s : kSettings)
        if (std::string(name) == s.name) return s;
    throw unmix::UsageError(std::string("unknown inference setting '") + name + "'");
}

// A value given through unmix_set_option, checked for its kind (ranges: PipelineConfig::validate).
double checked(const Setting& s, double value) {
    switch (s.kind) {
        case Kind::Integer:
            if (!std::isfinite(value) || value != std::floor(value) || value < s.minimum || value > 2147483647.0)
                throw unmix::UsageError(std::string(s.name) + " must be an integer >= " + std::to_string(s.minimum));
            return value;
        case Kind::Seed:
            if (!std::isfinite(value) || value != std::floor(value) || value < 0 || value > double(unmix::kMaxSeed))
                throw unmix::UsageError("seed must be an integer in 0..2^53");
            return value;
        case Kind::Flag:
        case Kind::Choice:  // 1: the first choice ("model"), 0: the second ("statistics")
            return value != 0.0 ? 1.0 : 0.0;
        case Kind::ReadOnly:
            throw unmix::UsageError(std::string(s.name) + " is fixed by the exported networks and cannot be set");
        case Kind::Number:
            break;
    }
    return value;
}

// The manifest's value of a setting, when it has one of the expected JSON type (others are left at
// the built-in default; load_manifest has already checked the keys it requires).
bool from_manifest(const Setting& s, const unmix::Json& value, double* out) {
    switch (s.kind) {
        case Kind::Integer:
            if (!value.is_integer()) return false;
            *out = static_cast<double>(value.as_integer());
            return true;
        case Kind::Seed:
            if (!value.is_integer() || value.as_integer() < 0 || value.as_integer() > int64_t(unmix::kMaxSeed)) return false;
            *out = static_cast<double>(value.as_integer());
            return true;
        case Kind::Number:
            if (!value.is_number()) return false;
            *out = value.as_number();
            return true;
        case Kind::Flag:
            if (!value.is_bool()) return false;
            *out = value.as_bool() ? 1.0 : 0.0;
            return true;
        case Kind::Choice:
            if (!value.is_string()) return false;
            *out = value.as_string() != "statistics" ? 1.0 : 0.0;
            return true;
        case Kind::ReadOnly:
            break;
    }
    return false;
}

void defaults(unmix_handle& h) {
    h.config.tile = h.manifest.tile;
    const unmix::Json& inference = h.manifest.inference;
    for (const Setting& s : kSettings) {
        double value = 0.0;
        if (inference.has(s.name) && from_manifest(s, inference[s.name], &value)) s.set(h.config, value);
    }
}

unmix_status null_handle(const char* function, const char* what = "handle") {
    g_open_error = std::string(function) + ": " + what + " is NULL";
    return UNMIX_ERROR_USAGE;
}

void check_count(const char* function, int64_t count, int64_t expected, const char* what) {
    if (count != expected)
        throw unmix::UsageError(std::string(function) + ": count is " + std::to_string(count) + ", expected " + what + " = " +
                                std::to_string(expected));
}

void check_bands(const unmix_handle& h, int64_t B) {
    if (B != h.B)
        throw unmix::InputError("the cube has " + std::to_string(B) + " bands but the model expects " + std::to_string(h.B));
}

void run_checked(unmix_handle& h, const char* function, const float* cube, int64_t H, int64_t W, int64_t B,
                 const float* endmembers_in, float* abundances, float* endmembers, float* rmse, float* uncertainty) {
    if (H < 1 || W < 1 || H > 1000000 || W > 1000000)
        throw unmix::UsageError(std::string(function) + ": H and W must be in 1..1000000");
    check_bands(h, B);
    // Without the caller's endmembers the manifest's (learnt with HybridSTU) start the pipeline, as in
    // unmix.Unmixer; config.initial_endmembers = false uses the NNLS estimate instead.
    const float* start = endmembers_in ? endmembers_in : h.manifest.endmembers.data();
    h.pipeline->run(cube, static_cast<int>(H), static_cast<int>(W), h.config, abundances, endmembers, rmse, start,
                    uncertainty);
}

// unmix_run_rows's callbacks as the pipeline's source and sink.
class ReaderCube : public unmix::CubeSource {
public:
    ReaderCube(const char* function, unmix_row_reader reader, void* data) : function_(function), reader_(reader), data_(data) {}
    void read(int row, int col0, int cols, float* out) override {
        const int rc = reader_(data_, row, col0, cols, out);
        if (rc != 0)
            throw unmix::InputError(std::string(function_) + ": the reader returned " + std::to_string(rc) + " for row " +
                                    std::to_string(row) + ", columns " + std::to_string(col0) + ".." +
                                    std::to_string(col0 + cols - 1));
    }

private:
    const char* function_;
    unmix_row_reader reader_;
    void* data_;
};

class WriterSink : public unmix::RowSink {
public:
    WriterSink(const char* function, unmix_row_writer writer, void* data) : function_(function), writer_(writer), data_(data) {}
    void write_row(int row, const float* abundances, const float* rmse, const float* uncertainty) override {
        const int rc = writer_(data_, row, abundances, rmse, uncertainty);
        if (rc != 0)
            throw unmix::InputError(std::string(function_) + ": the writer returned " + std::to_string(rc) + " for row " +
                                    std::to_string(row));
    }

private:
    const char* function_;
    unmix_row_writer writer_;
    void* data_;
};

void run_rows_checked(unmix_handle& h, const char* function, unmix::CubeSource& cube, int64_t H, int64_t W, int64_t B,
                      const float* endmembers_in, unmix_row_writer writer, void* writer_data, float* endmembers,
                      const char* scratch_dir) {
    if (!writer || !endmembers) throw unmix::UsageError(std::string(function) + ": writer or endmembers is NULL");
    if (H < 1 || W < 1 || H > 1000000 || W > 1000000)
        throw unmix::UsageError(std::string(function) + ": H and W must be in 1..1000000");
    check_bands(h, B);
    const float* start = endmembers_in ? endmembers_in : h.manifest.endmembers.data();
    unmix::ScratchStore store(scratch_dir, static_cast<int>(H), static_cast<int>(W), h.p);
    WriterSink sink(function, writer, writer_data);
    h.pipeline->run_rows(cube, static_cast<int>(H), static_cast<int>(W), h.config, store, sink, endmembers, start);
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
        h->backend = std::shared_ptr<unmix::Backend>(unmix::make_backend(backend_name, h->manifest, threads));
        h->pipeline.reset(new unmix::Pipeline(*h->backend, h->manifest.schedule, h->B, h->p, h->T));
    });
    if (status == UNMIX_OK) *handle = h.release();
    return status;
}

unmix_status unmix_set_option(unmix_handle* handle, const char* name, double value) {
    if (!handle) return null_handle("unmix_set_option");
    return guarded(handle->error, [&] {
        if (!name) throw unmix::UsageError("unmix_set_option: name is NULL");
        const Setting& setting = find_setting(name);
        unmix::PipelineConfig c = handle->config;
        setting.set(c, checked(setting, value));
        c.validate();
        handle->config = c;
    });
}

unmix_status unmix_get_option(unmix_handle* handle, const char* name, double* value) {
    if (!handle) return null_handle("unmix_get_option");
    return guarded(handle->error, [&] {
        if (!name || !value) throw unmix::UsageError("unmix_get_option: name or value is NULL");
        *value = find_setting(name).get(handle->config);
    });
}

unmix_status unmix_run(unmix_handle* handle, const float* cube_hwb, int64_t H, int64_t W, int64_t B,
                       float* abundances_hwp, float* endmembers_pb, float* rmse_hw) {
    if (!handle) return null_handle("unmix_run");
    return guarded(handle->error, [&] {
        if (!cube_hwb || !abundances_hwp || !endmembers_pb || !rmse_hw)
            throw unmix::UsageError("unmix_run: a buffer is NULL (cube, abundances, endmembers and rmse are required)");
        run_checked(*handle, "unmix_run", cube_hwb, H, W, B, nullptr, abundances_hwp, endmembers_pb, rmse_hw, nullptr);
    });
}

unmix_status unmix_run_ex(unmix_handle* handle, const float* cube_hwb, int64_t H, int64_t W, int64_t B,
                          const float* endmembers_in_pb, float* abundances_hwp, float* endmembers_pb, float* rmse_hw,
                          float* uncertainty_hw) {
    if (!handle) return null_handle("unmix_run_ex");
    return guarded(handle->error, [&] {
        if (!cube_hwb || !abundances_hwp || !endmembers_pb || !rmse_hw)
            throw unmix::UsageError(
                "unmix_run_ex: a buffer is NULL (cube, abundances, endmembers and rmse are required)");
        run_checked(*handle, "unmix_run_ex", cube_hwb, H, W, B, endmembers_in_pb, abundances_hwp, endmembers_pb, rmse_hw,
                    uncertainty_hw);
    });
}

unmix_status unmix_run_rows(unmix_handle* handle, int64_t H, int64_t W, int64_t B, unmix_row_reader reader,
                            void* reader_data, const float* endmembers_in_pb, unmix_row_writer writer, void* writer_data,
                            float* endmembers_pb, const char* scratch_dir) {
    if (!handle) return null_handle("unmix_run_rows");
    return guarded(handle->error, [&] {
        if (!reader) throw unmix::UsageError("unmix_run_rows: reader is NULL");
        ReaderCube cube("unmix_run_rows", reader, reader_data);
        run_rows_checked(*handle, "unmix_run_rows", cube, H, W, B, endmembers_in_pb, writer, writer_data, endmembers_pb,
                         scratch_dir);
    });
}

unmix_status unmix_run_file(unmix_handle* handle, const char* header_path, const float* endmembers_in_pb,
                            unmix_row_writer writer, void* writer_data, float* endmembers_pb, const char* scratch_dir) {
    if (!handle) return null_handle("unmix_run_file");
    return guarded(handle->error, [&] {
        if (!header_path || !*header_path) throw unmix::UsageError("unmix_run_file: header_path is NULL or empty");
        unmix::EnviCube cube(header_path);
        if (cube.bands() != handle->B)
            throw unmix::InputError(std::string(header_path) + ": bands: the cube has " + std::to_string(cube.bands()) +
                                    " bands (after bbl) but the model expects " + std::to_string(handle->B));
        run_rows_checked(*handle, "unmix_run_file", cube, cube.lines(), cube.samples(), cube.bands(), endmembers_in_pb,
                         writer, writer_data, endmembers_pb, scratch_dir);
    });
}

unmix_status unmix_file_shape(const char* header_path, int64_t* H, int64_t* W, int64_t* B) {
    return guarded(g_open_error, [&] {
        if (!header_path || !H || !W || !B) throw unmix::UsageError("unmix_file_shape: an argument is NULL");
        const unmix::EnviCube cube(header_path);
        *H = cube.lines();
        *W = cube.samples();
        *B = cube.bands();
    });
}

unmix_status unmix_model_endmembers(unmix_handle* handle, float* endmembers_pb, int64_t count) {
    if (!handle) return null_handle("unmix_model_endmembers");
    return guarded(handle->error, [&] {
        if (!endmembers_pb) throw unmix::UsageError("unmix_model_endmembers: endmembers is NULL");
        check_count("unmix_model_endmembers", count, static_cast<int64_t>(handle->p) * handle->B, "p * B");
        std::copy(handle->manifest.endmembers.begin(), handle->manifest.endmembers.end(), endmembers_pb);
    });
}

// ---- streaming ------------------------------------------------------------------------------------

unmix_status unmix_stream_open(unmix_handle* handle, int64_t width, int64_t bands, const float* endmembers_pb,
                               unmix_stream** stream) {
    if (stream) *stream = nullptr;
    if (!handle) return null_handle("unmix_stream_open");
    std::unique_ptr<unmix_stream> s;
    const unmix_status status = guarded(handle->error, [&] {
        if (!stream) throw unmix::UsageError("unmix_stream_open: stream is NULL");
        if (width < 1 || width > 1000000) throw unmix::UsageError("unmix_stream_open: width must be in 1..1000000");
        check_bands(*handle, bands);
        s.reset(new unmix_stream());
        s->p = handle->p;
        s->B = handle->B;
        s->W = static_cast<int>(width);
        const float* E = endmembers_pb ? endmembers_pb : handle->manifest.endmembers.data();
        s->stream.reset(new unmix::Stream(handle->backend, handle->manifest.schedule, handle->B, handle->p, handle->T,
                                          s->W, handle->config, E));
    });
    if (status == UNMIX_OK) *stream = s.release();
    return status;
}

unmix_status unmix_stream_push_line(unmix_stream* stream, const float* line_wb, int64_t count) {
    if (!stream) return null_handle("unmix_stream_push_line", "stream");
    return guarded(stream->error, [&] {
        if (!line_wb) throw unmix::UsageError("unmix_stream_push_line: line is NULL");
        check_count("unmix_stream_push_line", count, static_cast<int64_t>(stream->W) * stream->B, "width * bands");
        stream->stream->push_line(line_wb);
    });
}

unmix_status unmix_stream_finish(unmix_stream* stream) {
    if (!stream) return null_handle("unmix_stream_finish", "stream");
    return guarded(stream->error, [&] { stream->stream->finish(); });
}

int64_t unmix_stream_rows_ready(const unmix_stream* stream) { return stream ? stream->stream->rows_ready() : -1; }

unmix_status unmix_stream_pop_row(unmix_stream* stream, int64_t* row_index, float* abundances_wp, float* rmse_w,
                                  float* uncertainty_w) {
    if (row_index) *row_index = -1;
    if (!stream) return null_handle("unmix_stream_pop_row", "stream");
    return guarded(stream->error, [&] {
        if (!row_index || !abundances_wp || !rmse_w)
            throw unmix::UsageError("unmix_stream_pop_row: row_index, abundances and rmse must not be NULL");
        *row_index = stream->stream->pop_row(abundances_wp, rmse_w, uncertainty_w);
    });
}

unmix_status unmix_stream_estimate_endmembers(unmix_stream* stream, float* endmembers_pb, int64_t count) {
    if (!stream) return null_handle("unmix_stream_estimate_endmembers", "stream");
    return guarded(stream->error, [&] {
        if (!endmembers_pb) throw unmix::UsageError("unmix_stream_estimate_endmembers: endmembers is NULL");
        check_count("unmix_stream_estimate_endmembers", count, static_cast<int64_t>(stream->p) * stream->B, "p * B");
        const std::vector<double> E = stream->stream->estimate_endmembers();
        for (size_t i = 0; i < E.size(); ++i) endmembers_pb[i] = static_cast<float>(E[i]);
    });
}

int unmix_stream_ring_rows(const unmix_stream* stream) { return stream ? stream->stream->ring_rows() : -1; }

const char* unmix_stream_last_error(const unmix_stream* stream) {
    return stream ? stream->error.c_str() : g_open_error.c_str();
}

void unmix_stream_close(unmix_stream* stream) { delete stream; }

int unmix_endmember_count(const unmix_handle* handle) { return handle ? handle->p : -1; }
int unmix_band_count(const unmix_handle* handle) { return handle ? handle->B : -1; }
int unmix_tile_size(const unmix_handle* handle) { return handle ? handle->T : -1; }

const char* unmix_last_error(const unmix_handle* handle) {
    return handle ? handle->error.c_str() : g_open_error.c_str();
}

void unmix_close(unmix_handle* handle) { delete handle; }

}  // extern "C"
