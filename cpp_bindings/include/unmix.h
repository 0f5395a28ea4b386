/* unmix C ABI: semi-blind hyperspectral unmixing on exported models (stable, plain C99).
 *
 * Every function returns an unmix_status; no C++ exception crosses this boundary. After a failure,
 * unmix_last_error(handle) gives a one-line message (thread-local text for a NULL handle, e.g. when
 * unmix_open fails). Buffers are row-major float32 owned by the caller:
 *   cube        (H, W, B)  reflectance; a pixel with any non-finite band is left out (NaN outputs)
 *   abundances  (H, W, p)  on the simplex
 *   endmembers  (p, B)     >= 0
 *   rmse        (H, W)     per-pixel reconstruction RMSE
 * Versioning: UNMIX_ABI_VERSION grows when functions are added; existing signatures never change.
 * Reserved for later: unmix_stream_begin / unmix_stream_push_lines / unmix_stream_end (push-broom lines).
 */
#ifndef UNMIX_H
#define UNMIX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UNMIX_ABI_VERSION 1

#if defined(_WIN32)
#define UNMIX_API __declspec(dllexport)
#else
#define UNMIX_API __attribute__((visibility("default")))
#endif

typedef enum unmix_status {
    UNMIX_OK = 0,
    UNMIX_ERROR_USAGE = 1,          /* bad argument: NULL pointer, size, setting */
    UNMIX_ERROR_MISSING_INPUT = 2,  /* model folder, manifest or network file not found */
    UNMIX_ERROR_INPUT = 3,          /* invalid manifest, cube that does not fit the model */
    UNMIX_ERROR_BACKEND = 4,        /* the backend failed, or was not built */
    UNMIX_ERROR_INTERNAL = 5        /* anything else (out of memory, ...) */
} unmix_status;

typedef struct unmix_handle unmix_handle;

UNMIX_API int unmix_abi_version(void);

/* Opens model_dir (its manifest.json) on backend_name: "openvino", "onnxruntime", "tensorrt" or
 * "analytic" (closed-form test networks, for checking the loop). threads <= 0: the backend's default. */
UNMIX_API unmix_status unmix_open(const char* model_dir, const char* backend_name, int threads, unmix_handle** handle);

/* Sets one inference setting by name (steps, t0, eta, samples, rounds, overlap, dc_weight,
 * spectra_steps, spectra_t0, spectra_eta, refine_spectra, seed); defaults come from the manifest. */
UNMIX_API unmix_status unmix_set_option(unmix_handle* handle, const char* name, double value);

UNMIX_API unmix_status unmix_run(unmix_handle* handle, const float* cube_hwb, int64_t H, int64_t W, int64_t B,
                                 float* abundances_hwp, float* endmembers_pb, float* rmse_hw);

UNMIX_API int unmix_endmember_count(const unmix_handle* handle); /* p, or -1 for NULL */
UNMIX_API int unmix_band_count(const unmix_handle* handle);      /* B, or -1 for NULL */
UNMIX_API int unmix_tile_size(const unmix_handle* handle);       /* T, or -1 for NULL */

/* The last error message for this handle (or, with NULL, the calling thread's last open error). */
UNMIX_API const char* unmix_last_error(const unmix_handle* handle);

UNMIX_API void unmix_close(unmix_handle* handle);

#ifdef __cplusplus
}
#endif

#endif /* UNMIX_H */
