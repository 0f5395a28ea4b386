// unmix_cpp._core: the C ABI (unmix.h) as Python classes. Status codes become exceptions with the
// library's message; buffers are numpy float32 arrays; the GIL is released while the runtime works.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "unmix.h"

namespace nb = nanobind;

namespace {

template <size_t N>
using Input = nb::ndarray<const float, nb::ndim<N>, nb::c_contig, nb::device::cpu>;
template <size_t N>
using Output = nb::ndarray<nb::numpy, float, nb::ndim<N>>;

// A new numpy float32 array of `shape`, owning its buffer.
template <size_t N>
Output<N> new_array(std::initializer_list<size_t> shape, float** data) {
    size_t n = 1;
    for (size_t d : shape) n *= d;
    float* buffer = new float[n > 0 ? n : 1];
    nb::capsule owner(buffer, [](void* p) noexcept { delete[] static_cast<float*>(p); });
    *data = buffer;
    return Output<N>(buffer, shape, owner);
}

// The library's status as a Python exception: FileNotFoundError (missing model folder or file),
// ValueError (bad argument, cube that does not fit), RuntimeError (backend, internal).
[[noreturn]] void raise(unmix_status status, const char* message) {
    PyObject* type = PyExc_RuntimeError;
    if (status == UNMIX_ERROR_MISSING_INPUT) type = PyExc_FileNotFoundError;
    else if (status == UNMIX_ERROR_USAGE || status == UNMIX_ERROR_INPUT) type = PyExc_ValueError;
    PyErr_SetString(type, message && *message ? message : "unknown error");
    throw nb::python_error();
}

class Stream;

class Model {
public:
    Model(const std::string& model_dir, const std::string& backend, int threads) {
        const unmix_status status = unmix_open(model_dir.c_str(), backend.c_str(), threads, &handle_);
        if (status != UNMIX_OK) raise(status, unmix_last_error(nullptr));
    }
    ~Model() { close(); }
    void close() {
        if (handle_) unmix_close(handle_);
        handle_ = nullptr;
    }
    unmix_handle* get() const {
        if (!handle_) throw nb::value_error("the model is closed");
        return handle_;
    }
    void check(unmix_status status) const {
        if (status != UNMIX_OK) raise(status, unmix_last_error(handle_));
    }
    int endmembers() const { return unmix_endmember_count(get()); }
    int bands() const { return unmix_band_count(get()); }
    int tile() const { return unmix_tile_size(get()); }
    void set_option(const std::string& name, double value) { check(unmix_set_option(get(), name.c_str(), value)); }
    double get_option(const std::string& name) const {
        double value = 0.0;
        check(unmix_get_option(get(), name.c_str(), &value));
        return value;
    }
    Output<2> model_endmembers() const {
        const size_t p = endmembers(), B = bands();
        float* E = nullptr;
        Output<2> out = new_array<2>({p, B}, &E);
        check(unmix_model_endmembers(get(), E, static_cast<int64_t>(p * B)));
        return out;
    }
    // cube (H, W, B) float32 -> dict(abundances (H, W, p), endmembers (p, B), rmse (H, W), uncertainty (H, W))
    nb::dict run(Input<3> cube, std::optional<Input<2>> endmembers) {
        unmix_handle* h = get();
        const size_t H = cube.shape(0), W = cube.shape(1), B = cube.shape(2), p = endmembers_count(h);
        const float* given = nullptr;
        if (endmembers) {
            if (endmembers->shape(0) != p || endmembers->shape(1) != static_cast<size_t>(unmix_band_count(h)))
                throw nb::value_error(("endmembers must be (" + std::to_string(p) + ", " + std::to_string(unmix_band_count(h)) + ")").c_str());
            given = endmembers->data();
        }
        float *A = nullptr, *E = nullptr, *rmse = nullptr, *unc = nullptr;
        Output<3> a = new_array<3>({H, W, p}, &A);
        Output<2> e = new_array<2>({p, B}, &E);
        Output<2> r = new_array<2>({H, W}, &rmse);
        Output<2> u = new_array<2>({H, W}, &unc);
        unmix_status status;
        {
            nb::gil_scoped_release release;
            status = unmix_run_ex(h, cube.data(), static_cast<int64_t>(H), static_cast<int64_t>(W), static_cast<int64_t>(B),
                                  given, A, E, rmse, unc);
        }
        check(status);
        nb::dict out;
        out["abundances"] = a;
        out["endmembers"] = e;
        out["rmse"] = r;
        out["uncertainty"] = u;
        return out;
    }

private:
    static size_t endmembers_count(unmix_handle* h) { return static_cast<size_t>(unmix_endmember_count(h)); }
    unmix_handle* handle_ = nullptr;
};

// A push-broom stream: push(line (W, B)) and finish() return the rows finished so far as
// (first_row, abundances (n, W, p), rmse (n, W), uncertainty (n, W)).
class Stream {
public:
    Stream(Model& model, int64_t width, std::optional<Input<2>> endmembers) : width_(width) {
        unmix_handle* h = model.get();
        p_ = unmix_endmember_count(h);
        B_ = unmix_band_count(h);
        const float* given = nullptr;
        if (endmembers) {
            if (endmembers->shape(0) != static_cast<size_t>(p_) || endmembers->shape(1) != static_cast<size_t>(B_))
                throw nb::value_error("endmembers must be (p, B)");
            given = endmembers->data();
        }
        model.check(unmix_stream_open(h, width, B_, given, &stream_));
    }
    ~Stream() { close(); }
    void close() {
        if (stream_) unmix_stream_close(stream_);
        stream_ = nullptr;
    }
    nb::tuple push(Input<2> line) {
        unmix_stream* s = get();
        if (line.shape(0) != static_cast<size_t>(width_) || line.shape(1) != static_cast<size_t>(B_))
            throw nb::value_error(("a line must be (" + std::to_string(width_) + ", " + std::to_string(B_) + ")").c_str());
        unmix_status status;
        {
            nb::gil_scoped_release release;
            status = unmix_stream_push_line(s, line.data(), width_ * B_);
        }
        check(status);
        return drain();
    }
    nb::tuple finish() {
        unmix_status status;
        {
            nb::gil_scoped_release release;
            status = unmix_stream_finish(get());
        }
        check(status);
        return drain();
    }
    Output<2> estimate_endmembers() {
        float* E = nullptr;
        Output<2> out = new_array<2>({static_cast<size_t>(p_), static_cast<size_t>(B_)}, &E);
        check(unmix_stream_estimate_endmembers(get(), E, static_cast<int64_t>(p_) * B_));
        return out;
    }
    int ring_rows() { return unmix_stream_ring_rows(get()); }

private:
    unmix_stream* get() const {
        if (!stream_) throw nb::value_error("the stream is closed");
        return stream_;
    }
    void check(unmix_status status) const {
        if (status != UNMIX_OK) raise(status, unmix_stream_last_error(stream_));
    }
    nb::tuple drain() {
        const size_t n = static_cast<size_t>(unmix_stream_rows_ready(stream_)), W = static_cast<size_t>(width_);
        float *A = nullptr, *rmse = nullptr, *unc = nullptr;
        Output<3> a = new_array<3>({n, W, static_cast<size_t>(p_)}, &A);
        Output<2> r = new_array<2>({n, W}, &rmse);
        Output<2> u = new_array<2>({n, W}, &unc);
        int64_t first = -1;
        for (size_t i = 0; i < n; ++i) {
            int64_t row = -1;
            check(unmix_stream_pop_row(stream_, &row, A + i * W * p_, rmse + i * W, unc + i * W));
            if (i == 0) first = row;
        }
        return nb::make_tuple(first, a, r, u);
    }
    unmix_stream* stream_ = nullptr;
    int64_t width_;
    int p_ = 0, B_ = 0;
};

}  // namespace

NB_MODULE(_core, m) {
    m.doc() = "The unmix C++ runtime over its C ABI (unmix.h).";
    m.def("abi_version", &unmix_abi_version);
    nb::class_<Model>(m, "Model")
        .def(nb::init<const std::string&, const std::string&, int>(), nb::arg("model_dir"), nb::arg("backend") = "openvino",
             nb::arg("threads") = 0)
        .def("close", &Model::close)
        .def_prop_ro("endmembers", &Model::endmembers)
        .def_prop_ro("bands", &Model::bands)
        .def_prop_ro("tile", &Model::tile)
        .def("set_option", &Model::set_option, nb::arg("name"), nb::arg("value"))
        .def("get_option", &Model::get_option, nb::arg("name"))
        .def("model_endmembers", &Model::model_endmembers)
        .def("run", &Model::run, nb::arg("cube"), nb::arg("endmembers") = nb::none());
    nb::class_<Stream>(m, "Stream")
        .def(nb::init<Model&, int64_t, std::optional<Input<2>>>(), nb::arg("model"), nb::arg("width"),
             nb::arg("endmembers") = nb::none(), nb::keep_alive<1, 2>())
        .def("push", &Stream::push, nb::arg("line"))
        .def("finish", &Stream::finish)
        .def("estimate_endmembers", &Stream::estimate_endmembers)
        .def_prop_ro("ring_rows", &Stream::ring_rows)
        .def("close", &Stream::close);
}
