/* A minimal ENVI header reader (envi_header.h). Bounded: no recursion, every length checked. */
#define _POSIX_C_SOURCE 200809L
#include "envi_header.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENVI_MAX_HEADER (1L << 20)
#define ENVI_MAX_DIMENSION 2147483647L

static int fail(char* error, size_t size, const char* format, ...) {
    if (error && size > 0) {
        va_list args;
        va_start(args, format);
        vsnprintf(error, size, format, args);
        va_end(args);
    }
    return -1;
}

/* [begin, end) with surrounding whitespace removed */
static void trim(const char** begin, const char** end) {
    while (*begin < *end && isspace((unsigned char)**begin)) ++*begin;
    while (*end > *begin && isspace((unsigned char)(*end)[-1])) --*end;
}

/* The value text as a NUL-terminated copy in buffer (size bytes); 0 when it fits. */
static int copy_value(const char* begin, const char* end, char* buffer, size_t size) {
    trim(&begin, &end);
    size_t n = (size_t)(end - begin);
    if (n + 1 > size) return -1;
    memcpy(buffer, begin, n);
    buffer[n] = '\0';
    return 0;
}

static int parse_long(const char* begin, const char* end, long minimum, long maximum, long* out) {
    char buffer[32];
    if (copy_value(begin, end, buffer, sizeof buffer) != 0 || buffer[0] == '\0') return -1;
    errno = 0;
    char* stop = NULL;
    long value = strtol(buffer, &stop, 10);
    if (errno != 0 || *stop != '\0' || value < minimum || value > maximum) return -1;
    *out = value;
    return 0;
}

static int parse_double(const char* begin, const char* end, double* out) {
    char buffer[64];
    if (copy_value(begin, end, buffer, sizeof buffer) != 0 || buffer[0] == '\0') return -1;
    errno = 0;
    char* stop = NULL;
    double value = strtod(buffer, &stop);
    if (errno == ERANGE || *stop != '\0') return -1;
    *out = value;
    return 0;
}

/* Lower-cased key with runs of whitespace collapsed to one space, into buffer. */
static void normalise_key(const char* begin, const char* end, char* buffer, size_t size) {
    size_t n = 0;
    int space = 0;
    trim(&begin, &end);
    for (const char* c = begin; c < end && n + 1 < size; ++c) {
        if (isspace((unsigned char)*c)) {
            space = 1;
            continue;
        }
        if (space && n + 2 < size) buffer[n++] = ' ';
        space = 0;
        buffer[n++] = (char)tolower((unsigned char)*c);
    }
    buffer[n] = '\0';
}

typedef struct span {
    const char* begin;
    const char* end;
} span;

typedef struct entries {
    span samples, lines, bands, offset, data_type, byte_order, interleave, scale, ignore, bbl;
} entries;

static span* slot_for(entries* e, const char* key) {
    if (strcmp(key, "samples") == 0) return &e->samples;
    if (strcmp(key, "lines") == 0) return &e->lines;
    if (strcmp(key, "bands") == 0) return &e->bands;
    if (strcmp(key, "header offset") == 0) return &e->offset;
    if (strcmp(key, "data type") == 0) return &e->data_type;
    if (strcmp(key, "byte order") == 0) return &e->byte_order;
    if (strcmp(key, "interleave") == 0) return &e->interleave;
    if (strcmp(key, "reflectance scale factor") == 0) return &e->scale;
    if (strcmp(key, "data ignore value") == 0) return &e->ignore;
    if (strcmp(key, "bbl") == 0) return &e->bbl;
    return NULL;
}

/* Splits the text into key = value entries (the keys envi_header reads); braces removed. */
static int split_entries(const char* text, size_t length, entries* e, char* error, size_t size) {
    const char* at = text;
    const char* stop = text + length;
    if (length >= 3 && (unsigned char)text[0] == 0xEF && (unsigned char)text[1] == 0xBB && (unsigned char)text[2] == 0xBF)
        at += 3; /* UTF-8 byte order mark */
    const char* eol = at;
    while (eol < stop && *eol != '\n' && *eol != '\r') ++eol;
    const char* b = at;
    const char* f = eol;
    trim(&b, &f);
    if (f - b != 4 || strncmp(b, "ENVI", 4) != 0) return fail(error, size, "first line: expected 'ENVI'");
    at = eol;
    while (at < stop) {
        while (at < stop && (*at == '\n' || *at == '\r')) ++at;
        const char* line = at;
        while (at < stop && *at != '\n' && *at != '\r') ++at;
        const char* line_end = at;
        const char* eq = memchr(line, '=', (size_t)(line_end - line));
        if (!eq) continue; /* blank, comment or a line ENVI ignores */
        const char* lb = line;
        const char* le = line_end;
        trim(&lb, &le);
        if (lb < le && *lb == ';') continue;
        char key[64];
        normalise_key(line, eq, key, sizeof key);
        const char* value = eq + 1;
        const char* value_end = line_end;
        trim(&value, &value_end);
        if (value < value_end && *value == '{') {
            /* a braced value: to the matching '}', possibly lines later */
            int depth = 0;
            const char* c = value;
            for (; c < stop; ++c) {
                if (*c == '{') ++depth;
                else if (*c == '}' && --depth == 0) break;
            }
            if (c >= stop) return fail(error, size, "%s: '{' is never closed", key[0] ? key : "a value");
            value = value + 1;
            value_end = c;
            at = c + 1;
            while (at < stop && *at != '\n' && *at != '\r') ++at; /* the rest of the closing line */
        }
        if (!key[0]) continue;
        span* target = slot_for(e, key);
        if (target) {
            target->begin = value;
            target->end = value_end;
        }
    }
    return 0;
}

int envi_header_value_bytes(int data_type) {
    switch (data_type) {
        case 1: return 1;
        case 2: case 12: return 2;
        case 3: case 4: case 13: return 4;
        case 5: case 14: case 15: return 8;
        default: return 0;
    }
}

/* any_type: every data type of envi_header_value_bytes, either byte order, interleave required for
 * bands > 1; otherwise float32 little-endian only, bsq when interleave is absent. */
static int parse_header(const char* text, size_t length, envi_header* out, char* error, size_t size, int any_type) {
    if (error && size > 0) error[0] = '\0';
    if (!out) return fail(error, size, "envi_header_parse: out is NULL");
    memset(out, 0, sizeof *out);
    out->scale = 1.0;
    if (!text) return fail(error, size, "envi_header_parse: text is NULL");
    if (length > (size_t)ENVI_MAX_HEADER) return fail(error, size, "header larger than 1 MiB");
    entries e;
    memset(&e, 0, sizeof e);
    if (split_entries(text, length, &e, error, size) != 0) return -1;

    if (!e.samples.begin || parse_long(e.samples.begin, e.samples.end, 1, ENVI_MAX_DIMENSION, &out->samples) != 0)
        return fail(error, size, "samples: expected a positive integer");
    if (!e.lines.begin || parse_long(e.lines.begin, e.lines.end, 1, ENVI_MAX_DIMENSION, &out->lines) != 0)
        return fail(error, size, "lines: expected a positive integer");
    if (!e.bands.begin || parse_long(e.bands.begin, e.bands.end, 1, 100000, &out->bands) != 0)
        return fail(error, size, "bands: expected an integer in 1..100000");
    if (out->samples > ENVI_MAX_DIMENSION / out->bands)
        return fail(error, size, "samples x bands: a line of %ld x %ld values is too large", out->samples, out->bands);
    if (e.offset.begin && parse_long(e.offset.begin, e.offset.end, 0, LONG_MAX, &out->header_offset) != 0)
        return fail(error, size, "header offset: expected an integer >= 0");
    long data_type = -1;
    if (!e.data_type.begin || parse_long(e.data_type.begin, e.data_type.end, LONG_MIN, LONG_MAX, &data_type) != 0)
        return fail(error, size, "data type: expected an integer (4 = float32)");
    if (any_type && (data_type < 1 || data_type > 15 || envi_header_value_bytes((int)data_type) == 0))
        return fail(error, size, "data type: %ld is not read; expected 1, 2, 3, 4, 5, 12, 13, 14 or 15 (complex types are not)",
                    data_type);
    if (!any_type && data_type != 4)
        return fail(error, size, "data type: %ld is not read; only 4 (float32) is (convert the cube to float32)", data_type);
    out->data_type = (int)data_type;
    long byte_order = 0;
    if (any_type) {
        if (e.byte_order.begin && parse_long(e.byte_order.begin, e.byte_order.end, 0, 1, &byte_order) != 0)
            return fail(error, size, "byte order: expected 0 (little-endian) or 1 (big-endian)");
    } else if (e.byte_order.begin &&
               (parse_long(e.byte_order.begin, e.byte_order.end, 0, 1, &byte_order) != 0 || byte_order != 0)) {
        return fail(error, size, "byte order: only 0 (little-endian) is read");
    }
    out->byte_order = (int)byte_order;
    out->interleave = ENVI_BSQ;
    if (any_type && !e.interleave.begin && out->bands > 1)
        return fail(error, size, "interleave: missing; expected bsq, bil or bip (required when bands > 1)");
    if (e.interleave.begin) {
        char value[8];
        if (copy_value(e.interleave.begin, e.interleave.end, value, sizeof value) != 0)
            return fail(error, size, "interleave: expected bsq, bil or bip");
        for (char* c = value; *c; ++c) *c = (char)tolower((unsigned char)*c);
        if (strcmp(value, "bsq") == 0) out->interleave = ENVI_BSQ;
        else if (strcmp(value, "bil") == 0) out->interleave = ENVI_BIL;
        else if (strcmp(value, "bip") == 0) out->interleave = ENVI_BIP;
        else return fail(error, size, "interleave: expected bsq, bil or bip, got '%s'", value);
    }
    if (e.scale.begin) {
        if (parse_double(e.scale.begin, e.scale.end, &out->scale) != 0 || !isfinite(out->scale) || !(out->scale > 0))
            return fail(error, size, "reflectance scale factor: expected a positive finite number");
    }
    if (e.ignore.begin) {
        if (parse_double(e.ignore.begin, e.ignore.end, &out->ignore_value) != 0)
            return fail(error, size, "data ignore value: expected a number");
        out->has_ignore = 1;
    }
    out->good_bands = out->bands;
    if (e.bbl.begin) {
        unsigned char* good = (unsigned char*)malloc((size_t)out->bands);
        if (!good) return fail(error, size, "bbl: out of memory");
        long count = 0, kept = 0;
        const char* item = e.bbl.begin;
        while (item <= e.bbl.end) {
            const char* comma = item;
            while (comma < e.bbl.end && *comma != ',') ++comma;
            const char* ib = item;
            const char* ie = comma;
            trim(&ib, &ie);
            if (!(ib == ie && comma == e.bbl.end && count > 0)) { /* a trailing comma is allowed */
                double flag = 0.0;
                if (count >= out->bands || parse_double(item, comma, &flag) != 0 || !isfinite(flag)) {
                    free(good);
                    return fail(error, size, "bbl: expected %ld numbers (one per band) separated by commas", out->bands);
                }
                good[count] = flag != 0.0;
                kept += good[count];
                ++count;
            }
            item = comma + 1;
        }
        if (count != out->bands) {
            free(good);
            return fail(error, size, "bbl: expected %ld values (one per band), got %ld", out->bands, count);
        }
        if (kept == 0) {
            free(good);
            return fail(error, size, "bbl: every band is marked bad");
        }
        if (kept == out->bands) {
            free(good);
        } else {
            out->good = good;
            out->good_bands = kept;
        }
    }
    return 0;
}

int envi_header_parse(const char* text, size_t length, envi_header* out, char* error, size_t size) {
    return parse_header(text, length, out, error, size, 0);
}

int envi_header_parse_any(const char* text, size_t length, envi_header* out, char* error, size_t size) {
    return parse_header(text, length, out, error, size, 1);
}

static int read_header(const char* path, envi_header* out, char* error, size_t size, int any_type) {
    if (!path || !out) return fail(error, size, "envi_header_read: path or out is NULL");
    FILE* file = fopen(path, "rb");
    if (!file) return fail(error, size, "%s: cannot be opened", path);
    char* text = (char*)malloc((size_t)ENVI_MAX_HEADER + 1);
    if (!text) {
        fclose(file);
        return fail(error, size, "%s: out of memory", path);
    }
    size_t length = fread(text, 1, (size_t)ENVI_MAX_HEADER + 1, file);
    fclose(file);
    if (length > (size_t)ENVI_MAX_HEADER) {
        free(text);
        return fail(error, size, "%s: larger than 1 MiB; not an ENVI header", path);
    }
    char inner[256];
    int status = parse_header(text, length, out, inner, sizeof inner, any_type);
    free(text);
    if (status != 0) return fail(error, size, "%s: %s", path, inner);
    return 0;
}

int envi_header_read(const char* path, envi_header* out, char* error, size_t size) {
    return read_header(path, out, error, size, 0);
}

int envi_header_read_any(const char* path, envi_header* out, char* error, size_t size) {
    return read_header(path, out, error, size, 1);
}

void envi_header_free(envi_header* header) {
    if (!header) return;
    free(header->good);
    header->good = NULL;
}

int envi_data_path(const char* header_path, char* out, size_t out_size) {
    if (!header_path || !out || out_size == 0) return -1;
    size_t n = strlen(header_path);
    if (n >= 4 && (strcmp(header_path + n - 4, ".hdr") == 0 || strcmp(header_path + n - 4, ".HDR") == 0)) {
        if (n - 4 + 1 > out_size) return -1;
        memcpy(out, header_path, n - 4);
        out[n - 4] = '\0';
        FILE* probe = fopen(out, "rb");
        if (probe) {
            fclose(probe);
            return 0;
        }
        if (n + 1 > out_size) return -1;
        memcpy(out + n - 4, ".img", 5);
        return 0;
    }
    if (n + 5 > out_size) return -1;
    memcpy(out, header_path, n);
    memcpy(out + n, ".img", 5);
    return 0;
}
