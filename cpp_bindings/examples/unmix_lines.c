/* unmix_lines: a push-broom payload in plain C over the streaming C ABI (unmix.h).
 *
 *   unmix_lines MODEL_DIR CUBE.hdr OUT_PREFIX [--backend NAME] [--threads N] [--max-lines N] [name=value ...]
 *
 * Reads an ENVI float32 cube (bsq, bil or bip) one line at a time, as a sensor would deliver it, pushes
 * each line (BIP, W x B) into an unmix stream with the manifest's endmembers, and appends every finished
 * row to OUT_PREFIX.abundances.f32 (H, W, p), OUT_PREFIX.rmse.f32 (H, W) and, when samples > 1,
 * OUT_PREFIX.uncertainty.f32 (H, W), raw little-endian float32, plus OUT_PREFIX.abundances.hdr (ENVI, bip).
 * Memory does not depend on the number of lines: one line buffer, one row buffer and the stream's ring.
 * Prints "lines samples bands endmembers seconds peak_rss_kib" on success.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <time.h>

#include "envi_header.h"
#include "unmix.h"

typedef struct outputs {
    FILE* abundances;
    FILE* rmse;
    FILE* uncertainty; /* NULL unless samples > 1 */
    float* row_abundances;
    float* row_rmse;
    float* row_uncertainty;
    long width, rows_written;
    int p;
} outputs;

static FILE* open_output(const char* prefix, const char* suffix) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s%s", prefix, suffix) >= (int)sizeof path) return NULL;
    return fopen(path, "wb");
}

/* Reads line `row` of the cube into line_wb (W, B) BIP, good bands only, ignore value -> NaN, scale divided out. */
static int read_line(FILE* data, const envi_header* h, long row, float* raw, float* line_wb) {
    const long W = h->samples, C = h->bands;
    const off_t offset = (off_t)h->header_offset;
    if (h->interleave == ENVI_BSQ) { /* band c's line: W values at ((c * H) + row) * W */
        for (long c = 0; c < C; ++c) {
            if (fseeko(data, offset + (((off_t)c * h->lines + row) * W) * 4, SEEK_SET) != 0) return -1;
            if (fread(raw + c * W, 4, (size_t)W, data) != (size_t)W) return -1;
        }
    } else { /* bil and bip: one contiguous block of W x C values */
        if (fseeko(data, offset + ((off_t)row * W * C) * 4, SEEK_SET) != 0) return -1;
        if (fread(raw, 4, (size_t)(W * C), data) != (size_t)(W * C)) return -1;
    }
    const float scale = (float)h->scale;
    for (long j = 0; j < W; ++j) {
        long b = 0;
        for (long c = 0; c < C; ++c) {
            if (h->good && !h->good[c]) continue;
            float v;
            if (h->interleave == ENVI_BIP) v = raw[j * C + c];
            else v = raw[c * W + j]; /* bsq (as read above) and bil are band-major within the line */
            if (h->has_ignore && (isnan(h->ignore_value) ? isnan(v) : (double)v == h->ignore_value)) v = NAN;
            if (h->scale != 1.0) v /= scale;
            line_wb[j * h->good_bands + b++] = v;
        }
    }
    return 0;
}

/* Pops every finished row of the stream and appends it to the outputs. */
static int drain(unmix_stream* stream, outputs* out) {
    while (unmix_stream_rows_ready(stream) > 0) {
        int64_t row = -1;
        if (unmix_stream_pop_row(stream, &row, out->row_abundances, out->row_rmse, out->row_uncertainty) != UNMIX_OK) {
            fprintf(stderr, "error: %s\n", unmix_stream_last_error(stream));
            return -1;
        }
        if (row != out->rows_written) {
            fprintf(stderr, "error: row %lld came out of order\n", (long long)row);
            return -1;
        }
        const size_t n = (size_t)out->width;
        if (fwrite(out->row_abundances, 4, n * (size_t)out->p, out->abundances) != n * (size_t)out->p ||
            fwrite(out->row_rmse, 4, n, out->rmse) != n ||
            (out->uncertainty && fwrite(out->row_uncertainty, 4, n, out->uncertainty) != n)) {
            fprintf(stderr, "error: cannot write the outputs\n");
            return -1;
        }
        ++out->rows_written;
    }
    return 0;
}

static long peak_rss_kib(void) {
    struct rusage usage;
    if (getrusage(RUSAGE_SELF, &usage) != 0) return -1;
    return usage.ru_maxrss; /* KiB on Linux */
}

static int usage(const char* program) {
    fprintf(stderr,
            "usage: %s MODEL_DIR CUBE.hdr OUT_PREFIX [--backend NAME] [--threads N] [--max-lines N] [name=value ...]\n",
            program);
    return 2;
}

int main(int argc, char** argv) {
    if (argc < 4) return usage(argv[0]);
    const char* model = argv[1];
    const char* header_path = argv[2];
    const char* prefix = argv[3];
    const char* backend = "openvino";
    int threads = 0;
    long max_lines = -1;
    int first_setting = argc;
    for (int i = 4; i < argc; ++i) {
        if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc) backend = argv[++i];
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--max-lines") == 0 && i + 1 < argc) max_lines = atol(argv[++i]);
        else if (strchr(argv[i], '=')) {
            first_setting = i;
            break;
        } else return usage(argv[0]);
    }

    envi_header h;
    char error[512];
    if (envi_header_read(header_path, &h, error, sizeof error) != 0) {
        fprintf(stderr, "error: %s\n", error);
        return 3;
    }
    char data_path[4096];
    FILE* data = NULL;
    if (envi_data_path(header_path, data_path, sizeof data_path) != 0 || !(data = fopen(data_path, "rb"))) {
        fprintf(stderr, "error: %s: the data file beside it cannot be opened\n", header_path);
        envi_header_free(&h);
        return 3;
    }
    const long H = max_lines > 0 && max_lines < h.lines ? max_lines : h.lines;
    const long W = h.samples, B = h.good_bands;

    unmix_handle* model_handle = NULL;
    if (unmix_open(model, backend, threads, &model_handle) != UNMIX_OK) {
        fprintf(stderr, "error: %s\n", unmix_last_error(NULL));
        fclose(data);
        envi_header_free(&h);
        return 4;
    }
    int status = 0;
    for (int i = first_setting; i < argc; ++i) {
        const char* eq = strchr(argv[i], '=');
        char name[64];
        size_t n = eq ? (size_t)(eq - argv[i]) : 0;
        if (!eq || n >= sizeof name) {
            fprintf(stderr, "error: bad setting '%s' (name=value)\n", argv[i]);
            status = 2;
            break;
        }
        memcpy(name, argv[i], n);
        name[n] = '\0';
        if (unmix_set_option(model_handle, name, atof(eq + 1)) != UNMIX_OK) {
            fprintf(stderr, "error: %s\n", unmix_last_error(model_handle));
            status = 2;
            break;
        }
    }
    double samples = 1.0;
    if (!status && unmix_get_option(model_handle, "samples", &samples) != UNMIX_OK) status = 2;
    const int p = unmix_endmember_count(model_handle);
    unmix_stream* stream = NULL;
    outputs out;
    memset(&out, 0, sizeof out);
    out.width = W;
    out.p = p;
    float* raw = (float*)malloc(sizeof(float) * (size_t)W * (size_t)h.bands);
    float* line = (float*)malloc(sizeof(float) * (size_t)W * (size_t)B);
    out.row_abundances = (float*)malloc(sizeof(float) * (size_t)W * (size_t)(p > 0 ? p : 1));
    out.row_rmse = (float*)malloc(sizeof(float) * (size_t)W);
    out.row_uncertainty = (float*)malloc(sizeof(float) * (size_t)W);
    if (!status && (!raw || !line || !out.row_abundances || !out.row_rmse || !out.row_uncertainty)) {
        fprintf(stderr, "error: out of memory\n");
        status = 5;
    }
    if (!status && unmix_stream_open(model_handle, W, B, NULL, &stream) != UNMIX_OK) {
        fprintf(stderr, "error: %s: %s\n", header_path, unmix_last_error(model_handle));
        status = 5;
    }
    if (!status) {
        out.abundances = open_output(prefix, ".abundances.f32");
        out.rmse = open_output(prefix, ".rmse.f32");
        if (samples > 1) out.uncertainty = open_output(prefix, ".uncertainty.f32");
        if (!out.abundances || !out.rmse || (samples > 1 && !out.uncertainty)) {
            fprintf(stderr, "error: cannot create %s.*.f32\n", prefix);
            status = 6;
        }
    }
    struct timespec start, stop;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long row = 0; !status && row < H; ++row) {
        if (read_line(data, &h, row, raw, line) != 0) {
            fprintf(stderr, "error: %s: line %ld cannot be read (shorter than the header says?)\n", data_path, row);
            status = 3;
        } else if (unmix_stream_push_line(stream, line, (int64_t)W * B) != UNMIX_OK) {
            fprintf(stderr, "error: line %ld: %s\n", row, unmix_stream_last_error(stream));
            status = 5;
        } else if (drain(stream, &out) != 0) {
            status = 5;
        }
    }
    if (!status && unmix_stream_finish(stream) != UNMIX_OK) {
        fprintf(stderr, "error: %s\n", unmix_stream_last_error(stream));
        status = 5;
    }
    if (!status && drain(stream, &out) != 0) status = 5;
    clock_gettime(CLOCK_MONOTONIC, &stop);
    const double seconds = (double)(stop.tv_sec - start.tv_sec) + 1e-9 * (double)(stop.tv_nsec - start.tv_nsec);

    if (out.abundances && fclose(out.abundances) != 0) status = status ? status : 6;
    if (out.rmse && fclose(out.rmse) != 0) status = status ? status : 6;
    if (out.uncertainty && fclose(out.uncertainty) != 0) status = status ? status : 6;
    if (!status) {
        FILE* hdr = open_output(prefix, ".abundances.hdr");
        if (!hdr) status = 6;
        else {
            fprintf(hdr, "ENVI\ndescription = {unmix_lines abundances}\nsamples = %ld\nlines = %ld\nbands = %d\n"
                         "header offset = 0\nfile type = ENVI Standard\ndata type = 4\ninterleave = bip\nbyte order = 0\n",
                    W, out.rows_written, p);
            if (fclose(hdr) != 0) status = 6;
        }
    }
    if (!status) printf("%ld %ld %ld %d %.4f %ld\n", out.rows_written, W, B, p, seconds, peak_rss_kib());
    unmix_stream_close(stream);
    unmix_close(model_handle);
    free(raw);
    free(line);
    free(out.row_abundances);
    free(out.row_rmse);
    free(out.row_uncertainty);
    fclose(data);
    envi_header_free(&h);
    return status;
}
