/* A minimal ENVI header reader (plain C99) for float32 cubes: the keys a line-by-line reader needs.
 *
 * Read: samples, lines, bands, header offset, data type (only 4 = float32 is accepted), byte order
 * (only 0 = little-endian), interleave (bsq, bil, bip; any case), reflectance scale factor (divided out),
 * data ignore value (stored value -> NaN, compared before scaling), bbl (bands with bbl = 0 dropped).
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
} envi_header;

/* Parses `length` bytes of header text. 0 on success (free with envi_header_free); otherwise -1 and a
 * one-line message in error (error_size bytes, always NUL-terminated when error_size > 0). */
int envi_header_parse(const char* text, size_t length, envi_header* out, char* error, size_t error_size);

/* Reads and parses the file at path (at most 1 MiB). */
int envi_header_read(const char* path, envi_header* out, char* error, size_t error_size);

void envi_header_free(envi_header* header);

/* The data file beside a header: X.hdr -> X, else X.img (the first that exists); 0 on success. */
int envi_data_path(const char* header_path, char* out, size_t out_size);

#ifdef __cplusplus
}
#endif

#endif /* UNMIX_ENVI_HEADER_H */
