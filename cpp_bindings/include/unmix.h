/* unmix C ABI: semi-blind hyperspectral unmixing on exported models (stable, plain C99).
 *
 * Every function returns an unmix_status; no C++ exception crosses this boundary. After a failure,
 * unmix_last_error(handle) gives a one-line message (thread-local text for a NULL handle, e.g. when
 * unmix_open fails). Buffers are row-major float32 owned by the caller:
 *   cube        (H, W, B)  reflectance; a pixel with any non-finite band is left out (NaN outputs)
 *   abundances  (H, W, p)  on the simplex
 *   endmembers  (p, B)     >= 0
 *   rmse        (H, W)     per-pixel reconstruction RMSE
 *   uncertainty (H, W)     mean over endmembers of the per-pixel standard deviation across samples
 * Sizes are checked on every call: a buffer length passed as `count` must equal what the model needs.
 * Versioning: UNMIX_ABI_VERSION grows when functions are added; existing signatures never change.
 * Threads: a handle and its streams are used from one thread at a time; separate handles are independent.
 */
#ifndef UNMIX_H
#define UNMIX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UNMIX_ABI_VERSION 3

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

/* Opens model_dir (its manifest.json) on backend_name "openvino" (UNMIX_ERROR_BACKEND where it was not
 * built). threads <= 0: the backend's default. */
UNMIX_API unmix_status unmix_open(const char* model_dir, const char* backend_name, int threads, unmix_handle** handle);

/* Sets one inference setting by name (steps, t0, eta, samples, rounds, overlap, dc_weight,
 * spectra_steps, spectra_t0, spectra_eta, spectra_dc_weight, refine_spectra, initial_endmembers
 * (1: the model's, 0: the NNLS estimate from pass 1), seed (an integer in 0..2^53: every one is exact as a
 * double, and Python takes the same range)); defaults come from the manifest. */
UNMIX_API unmix_status unmix_set_option(unmix_handle* handle, const char* name, double value);

/* Reads one setting (the names above, and "tile") into *value (ABI 2). */
UNMIX_API unmix_status unmix_get_option(unmix_handle* handle, const char* name, double* value);

UNMIX_API unmix_status unmix_run(unmix_handle* handle, const float* cube_hwb, int64_t H, int64_t W, int64_t B,
                                 float* abundances_hwp, float* endmembers_pb, float* rmse_hw);

/* unmix_run starts from the manifest's endmembers (or, with initial_endmembers = 0, from pass 1's NNLS
 * estimate). unmix_run_ex (ABI 2) adds two optional buffers: endmembers_in_pb (p, B), or NULL: the
 * starting endmembers instead of the manifest's (with refine_spectra = 0 and rounds = 1 they stay fixed:
 * the result a stream gives). uncertainty_hw (H, W), or NULL: written when samples > 1, NaN otherwise. */
UNMIX_API unmix_status unmix_run_ex(unmix_handle* handle, const float* cube_hwb, int64_t H, int64_t W, int64_t B,
                                    const float* endmembers_in_pb, float* abundances_hwp, float* endmembers_pb,
                                    float* rmse_hw, float* uncertainty_hw);

/* Memory of unmix_run / unmix_run_ex: the caller's cube and outputs (the abundances buffer also holds
 * the passes' intermediate abundances), plus T rows x W of blend sums and one tile's buffers; no copy of
 * the cube and nothing else that grows with H or W. */

/* Copies the manifest's endmembers (p, B) into endmembers_pb; count must be p * B. */
UNMIX_API unmix_status unmix_model_endmembers(unmix_handle* handle, float* endmembers_pb, int64_t count);

UNMIX_API int unmix_endmember_count(const unmix_handle* handle); /* p, or -1 for NULL */
UNMIX_API int unmix_band_count(const unmix_handle* handle);      /* B, or -1 for NULL */
UNMIX_API int unmix_tile_size(const unmix_handle* handle);       /* T, or -1 for NULL */

/* The last error message for this handle (or, with NULL, the calling thread's last open error). */
UNMIX_API const char* unmix_last_error(const unmix_handle* handle);

UNMIX_API void unmix_close(unmix_handle* handle);

/* ---- whole scenes read row by row (ABI 3) ------------------------------------------------------------
 * unmix_run_ex's flow and result (every round and pass; the same values bit for bit on the same backend
 * and settings) without the cube in memory: the cube comes through a callback, a window of one row at a
 * time, and is read again by every pass (about 2 + 2 * rounds times); the last pass's rows go to a
 * callback as they finish, in row order. Between passes the (H, W, p) abundances stay in a scratch file in
 * scratch_dir (created and unlinked at once, nothing left behind; positioned reads and writes, no
 * mapping), or in memory when scratch_dir is NULL (H x W x p floats). Memory otherwise: T rows x W of
 * blend sums (T the tile size), one tile's buffers and one row of outputs, whatever H.
 *
 *   reader: fills pixels col0 .. col0 + cols - 1 of cube row `row` (0-based) into pixels_cb, (cols, B)
 *           float32, BIP: pixels_cb[j * B + b]. Windows are at most max(T, 256) pixels wide; a pixel with
 *           any non-finite band is left out (NaN outputs). Returns 0, or anything else to stop the run
 *           (UNMIX_ERROR_INPUT).
 *   writer: takes finished row `row`: abundances (W, p), rmse (W), uncertainty (W; NaN unless samples > 1),
 *           valid only during the call. Returns 0, or anything else to stop the run (UNMIX_ERROR_INPUT).
 *
 * endmembers_in_pb and endmembers_pb as in unmix_run_ex; endmembers_pb is written once every row is
 * out. On an error, rows already written stay written. */
typedef int (*unmix_row_reader)(void* user_data, int64_t row, int64_t col0, int64_t cols, float* pixels_cb);
typedef int (*unmix_row_writer)(void* user_data, int64_t row, const float* abundances_wp, const float* rmse_w,
                                const float* uncertainty_w);

UNMIX_API unmix_status unmix_run_rows(unmix_handle* handle, int64_t H, int64_t W, int64_t B, unmix_row_reader reader,
                                      void* reader_data, const float* endmembers_in_pb, unmix_row_writer writer,
                                      void* writer_data, float* endmembers_pb, const char* scratch_dir);

/* unmix_run_rows on an ENVI cube: header_path (X.hdr; the data in X, else X.img), interleave bsq, bil or
 * bip, data type 1, 2, 3, 4, 5, 12, 13, 14 or 15 (uint8, int16, int32, float32, float64, uint16,
 * uint32, int64, uint64), either byte order, header offset; values as unmix.read_cube gives them (data
 * ignore value -> NaN, reflectance scale factor divided out, bands with bbl = 0 dropped). A bad header is
 * UNMIX_ERROR_INPUT with one line naming the file and the key; a missing file UNMIX_ERROR_MISSING_INPUT. */
UNMIX_API unmix_status unmix_run_file(unmix_handle* handle, const char* header_path, const float* endmembers_in_pb,
                                      unmix_row_writer writer, void* writer_data, float* endmembers_pb,
                                      const char* scratch_dir);

/* The cube's H (lines), W (samples) and B (bands kept) from an ENVI header, checked as unmix_run_file
 * checks it (its data file included); errors through unmix_last_error(NULL). */
UNMIX_API unmix_status unmix_file_shape(const char* header_path, int64_t* H, int64_t* W, int64_t* B);

/* ---- push-broom streaming (ABI 2) ---------------------------------------------------------------
 * Lines of W pixels go in one at a time, BIP within the line: line_wb[j * B + b] for pixel j, band b.
 * Finished rows come out in order: abundances (W, p), rmse (W), uncertainty (W) when samples > 1.
 * The endmembers stay fixed (the manifest's, or the caller's); the stream runs the same tiles as
 * unmix_run_ex(endmembers_in = the same E, refine_spectra = 0, rounds = 1) and its rows equal that call's
 * rows bit for bit on the same backend and settings. Memory: a ring of 2T + 1 rows (T the tile size),
 * whatever the number of lines; a row is finished about 2T lines after it was pushed, the rest at
 * unmix_stream_finish. Settings are taken from the handle when the stream opens (rounds and
 * refine_spectra do not apply). The handle may be closed before its streams.
 *
 *   unmix_stream* s = NULL;
 *   unmix_stream_open(h, W, B, NULL, &s);               // NULL: the manifest's endmembers
 *   for each line: unmix_stream_push_line(s, line, W * B);
 *                  while (unmix_stream_rows_ready(s) > 0) unmix_stream_pop_row(s, &row, a, rmse, unc);
 *   unmix_stream_finish(s); then pop the remaining rows; unmix_stream_close(s);
 */
typedef struct unmix_stream unmix_stream;

/* bands must be the model's B; endmembers_pb (p, B) finite and >= 0, or NULL for the manifest's. */
UNMIX_API unmix_status unmix_stream_open(unmix_handle* handle, int64_t width, int64_t bands, const float* endmembers_pb,
                                         unmix_stream** stream);
/* count must be width * bands. Refused (UNMIX_ERROR_USAGE) while the ring is full of finished rows
 * that were not popped, and after unmix_stream_finish. */
UNMIX_API unmix_status unmix_stream_push_line(unmix_stream* stream, const float* line_wb, int64_t count);
/* No more lines: the last rows are finished (the last row tile moves to H - T, as in unmix_run). */
UNMIX_API unmix_status unmix_stream_finish(unmix_stream* stream);
/* Finished rows waiting to be popped; -1 for NULL. */
UNMIX_API int64_t unmix_stream_rows_ready(const unmix_stream* stream);
/* Copies the next finished row out and sets *row_index (0-based); uncertainty_w may be NULL.
 * UNMIX_ERROR_USAGE when no row is ready. */
UNMIX_API unmix_status unmix_stream_pop_row(unmix_stream* stream, int64_t* row_index, float* abundances_wp, float* rmse_w,
                                            float* uncertainty_w);
/* Endmembers (p, B) re-estimated (NNLS) from the running sums A^T A and A^T Y of the popped rows: feed them
 * to the next stream's unmix_stream_open to update E between flight lines. count must be p * B. */
UNMIX_API unmix_status unmix_stream_estimate_endmembers(unmix_stream* stream, float* endmembers_pb, int64_t count);
/* Rows the stream's ring holds (2T + 1); -1 for NULL. */
UNMIX_API int unmix_stream_ring_rows(const unmix_stream* stream);
/* The stream's last error (with NULL: the calling thread's last error from a NULL handle or stream). */
UNMIX_API const char* unmix_stream_last_error(const unmix_stream* stream);
UNMIX_API void unmix_stream_close(unmix_stream* stream);

#ifdef __cplusplus
}
#endif

#endif /* UNMIX_H */
