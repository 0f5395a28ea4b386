/* A minimal ENVI header reader (plain C99): the keys a line-by-line reader needs.
 *
 * Read: samples, lines, bands, header offset, data type, byte order, interleave (bsq, bil, bip; any
 * case), reflectance scale factor (divided out), data ignore value (stored value -> NaN, compared before
 * scaling), bbl (bands with bbl = 0 dropped). envi_header_parse / envi_header_read accept float32
 * little-endian cubes only (data type 4, byte order 0; interleave bsq when absent), for the C example;
 * envi_header_parse_any / envi_header_read_any (libunmix's unmix_run_file) accept the data types
 * 1, 2, 3, 4, 5, 12, 13, 14, 15 (uint8, int16, int32, float32, float64, uint16, uint32, int64, uint64),
 * either byte order, and need interleave when bands > 1, as unmix.io.envi does.
 * Other keys are skipped; a {...} value may span lines. Every failure is one line naming the key.
 */
#ifndef UNMIX_ENVI_HEADER_H
#define UNMIX_ENVI_HEADER_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum envi_interleave { ENVI_BSQ = 0, ENVI_BIL = 1, ENVI_BIP = 2 } envi_interleave;

typedef struct envi_header {
    long samples, lines, bands; /* W, H and the stored band count */
    long header_offset;         /* bytes before the data */
    envi_interleave interleave;
    double scale;          /* reflectance scale factor; 1 when absent */
    int has_ignore;        /* 1 when `data ignore value` is given */
    double ignore_value;
    unsigned char* good;   /* (bands,) 1 = kept; NULL when every band is kept */
    long good_bands;       /* bands kept (the cube's B) */
    int data_type;         /* ENVI code: 4 = float32, ...; envi_header_value_bytes gives its size */
    int byte_order;        /* 0 little-endian, 1 big-endian */
} envi_header;

/* Parses `length` bytes of header text. 0 on success (free with envi_header_free); otherwise -1 and a
 * one-line message in error (error_size bytes, always NUL-terminated when error_size > 0). */
int envi_header_parse(const char* text, size_t length, envi_header* out, char* error, size_t error_size);

/* Reads and parses the file at path (at most 1 MiB). */
int envi_header_read(const char* path, envi_header* out, char* error, size_t error_size);

/* The same for any data type and byte order listed above. */
int envi_header_parse_any(const char* text, size_t length, envi_header* out, char* error, size_t error_size);
int envi_header_read_any(const char* path, envi_header* out, char* error, size_t error_size);

/* Bytes per stored value of an ENVI data type code (0 for a code not read here). */
int envi_header_value_bytes(int data_type);

void envi_header_free(envi_header* header);

/* The data file beside a header: X.hdr -> X, else X.img (the first that exists); 0 on success. */
int envi_data_path(const char* header_path, char* out, size_t out_size);

#ifdef __cplusplus
}
#endif

#endif /* UNMIX_ENVI_HEADER_H */
