/* gguf.h - reading and writing GGUF files (v2 and v3).
 *
 * Reading maps the file read-only and validates every count, length, type, dimension,
 * alignment and tensor extent against the file size and fixed caps before anything is
 * used; tensors are views into the mapping. A malformed file gives MC_EFORMAT with a
 * message naming the file, the field and the byte offset. Writing builds the file in
 * memory (metadata and tensor copies) and writes it once, to a temporary name renamed
 * into place, so a failed write leaves no half file. */
#ifndef MC_GGUF_H
#define MC_GGUF_H

#include "base/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Tensor element types, numbered as in ggml so that files interoperate. */
enum mc_type {
    MC_TYPE_F32 = 0,
    MC_TYPE_F16 = 1,
    MC_TYPE_Q4_0 = 2,
    MC_TYPE_Q4_1 = 3,
    MC_TYPE_Q5_0 = 6,
    MC_TYPE_Q5_1 = 7,
    MC_TYPE_Q8_0 = 8,
    MC_TYPE_Q8_1 = 9,
    MC_TYPE_Q2_K = 10,
    MC_TYPE_Q3_K = 11,
    MC_TYPE_Q4_K = 12,
    MC_TYPE_Q5_K = 13,
    MC_TYPE_Q6_K = 14,
    MC_TYPE_Q8_K = 15,
    MC_TYPE_BF16 = 30,
    MC_TYPE_COUNT = 40 /* upper bound of type ids the reader accepts as known-sized */
};

/* Metadata value types, numbered as in the GGUF specification. */
enum mc_gguf_vtype {
    MC_GGUF_UINT8 = 0,
    MC_GGUF_INT8 = 1,
    MC_GGUF_UINT16 = 2,
    MC_GGUF_INT16 = 3,
    MC_GGUF_UINT32 = 4,
    MC_GGUF_INT32 = 5,
    MC_GGUF_FLOAT32 = 6,
    MC_GGUF_BOOL = 7,
    MC_GGUF_STRING = 8,
    MC_GGUF_ARRAY = 9,
    MC_GGUF_UINT64 = 10,
    MC_GGUF_INT64 = 11,
    MC_GGUF_FLOAT64 = 12,
};

#define MC_GGUF_MAX_DIMS 4

struct mc_gguf_tensor {
    const char *name; /* NUL-terminated, valid until mc_gguf_close */
    enum mc_type type;
    int n_dims;                   /* 1..MC_GGUF_MAX_DIMS */
    int64_t ne[MC_GGUF_MAX_DIMS]; /* ne[0] is the row length (fastest varying); unused = 1 */
    uint64_t offset;              /* from the start of the data section */
    size_t size_bytes;
    const void *data; /* view into the mapping */
};

struct mc_gguf; /* opaque; see gguf.c */

/* Opens and validates path. On failure *out is NULL and err names file, field, offset. */
int mc_gguf_open(const char *path, struct mc_gguf **out, struct mc_err *err);
/* Parses a buffer the caller keeps alive until mc_gguf_close (fuzzing, tests). name is
 * used in error messages. */
int mc_gguf_open_buffer(const void *buf, size_t size, const char *name, struct mc_gguf **out,
                        struct mc_err *err);
void mc_gguf_close(struct mc_gguf *g);

uint32_t mc_gguf_version(const struct mc_gguf *g);
size_t mc_gguf_alignment(const struct mc_gguf *g);
/* File offset of the data section (tensor offsets are relative to it), and file size. */
size_t mc_gguf_data_offset(const struct mc_gguf *g);
size_t mc_gguf_file_size(const struct mc_gguf *g);

/* Names for messages and listings: "Q4_0" / "unknown", "u32" / "str" / "arr" / "unknown".
 * These come from the reader's own size table, not from quant.c. */
const char *mc_gguf_type_name(enum mc_type t);
const char *mc_gguf_vtype_name(enum mc_gguf_vtype t);

/* Metadata: keys are looked up by exact name; the index is valid until close. */
int64_t mc_gguf_n_kv(const struct mc_gguf *g);
int64_t mc_gguf_find_key(const struct mc_gguf *g, const char *key); /* -1 if absent */
const char *mc_gguf_key_name(const struct mc_gguf *g, int64_t i);
enum mc_gguf_vtype mc_gguf_key_type(const struct mc_gguf *g, int64_t i);
/* For arrays: element type and count (for a scalar key: its own type and 0). Out-of-range
 * indices give MC_GGUF_UINT8 / 0 / NULL from these accessors. */
enum mc_gguf_vtype mc_gguf_arr_type(const struct mc_gguf *g, int64_t i);
uint64_t mc_gguf_arr_n(const struct mc_gguf *g, int64_t i);
/* Raw element data of a numeric array (little-endian, packed), or NULL for strings. The
 * pointer is aligned to the element size (misaligned arrays in the file are copied), so
 * it may be read as e.g. const float *. */
const void *mc_gguf_arr_data(const struct mc_gguf *g, int64_t i);
/* String element j of a string array; *len receives its length (strings are not
 * NUL-terminated inside the file). */
const char *mc_gguf_arr_str(const struct mc_gguf *g, int64_t i, uint64_t j, uint64_t *len);

/* Raw bytes of a fixed-size scalar value (read with memcpy; may be unaligned), or NULL for
 * strings, arrays and bad indices. */
const void *mc_gguf_val_data(const struct mc_gguf *g, int64_t i);

/* Typed getters: look up key, convert any integer type that fits (or float for the float
 * getter); MC_ENOTFOUND if absent, MC_EFORMAT (naming the key) on a type that does not
 * convert. */
int mc_gguf_get_u32(const struct mc_gguf *g, const char *key, uint32_t *out, struct mc_err *err);
int mc_gguf_get_i64(const struct mc_gguf *g, const char *key, int64_t *out, struct mc_err *err);
int mc_gguf_get_f32(const struct mc_gguf *g, const char *key, float *out, struct mc_err *err);
int mc_gguf_get_bool(const struct mc_gguf *g, const char *key, bool *out, struct mc_err *err);
/* A string value: pointer into the file (not NUL-terminated) and length. */
int mc_gguf_get_str(const struct mc_gguf *g, const char *key, const char **out, uint64_t *len,
                    struct mc_err *err);

/* Tensors, in file order. */
int64_t mc_gguf_n_tensors(const struct mc_gguf *g);
const struct mc_gguf_tensor *mc_gguf_tensor(const struct mc_gguf *g, int64_t i);
const struct mc_gguf_tensor *mc_gguf_find_tensor(const struct mc_gguf *g, const char *name);

/* ---- Writer ---------------------------------------------------------------------- */

struct mc_gguf_writer; /* opaque */

int mc_gguf_writer_create(struct mc_gguf_writer **out, struct mc_err *err);
void mc_gguf_writer_free(struct mc_gguf_writer *w);
/* Setting a key twice replaces the value. Strings and arrays are copied. Keys must be
 * non-empty; general.alignment may only be set to u32 32 (the layout written). */
/* Any fixed-size scalar type t (not string or array); v points at its bytes. */
int mc_gguf_writer_set_val(struct mc_gguf_writer *w, const char *key, enum mc_gguf_vtype t,
                           const void *v, struct mc_err *err);
int mc_gguf_writer_set_u32(struct mc_gguf_writer *w, const char *key, uint32_t v,
                           struct mc_err *err);
int mc_gguf_writer_set_i32(struct mc_gguf_writer *w, const char *key, int32_t v,
                           struct mc_err *err);
int mc_gguf_writer_set_f32(struct mc_gguf_writer *w, const char *key, float v, struct mc_err *err);
int mc_gguf_writer_set_bool(struct mc_gguf_writer *w, const char *key, bool v, struct mc_err *err);
int mc_gguf_writer_set_str(struct mc_gguf_writer *w, const char *key, const char *v, size_t len,
                           struct mc_err *err);
/* A numeric array: n elements of type t, packed little-endian at data. */
int mc_gguf_writer_set_arr(struct mc_gguf_writer *w, const char *key, enum mc_gguf_vtype t,
                           const void *data, uint64_t n, struct mc_err *err);
/* A string array: n strings with their lengths. */
int mc_gguf_writer_set_arr_str(struct mc_gguf_writer *w, const char *key, const char *const *strs,
                               const uint64_t *lens, uint64_t n, struct mc_err *err);
/* Copies every key of g, in file order, except those for which skip(key) is true (skip
 * may be NULL) and a general.alignment other than u32 32 (the writer's own layout). */
int mc_gguf_writer_copy_kv(struct mc_gguf_writer *w, const struct mc_gguf *g,
                           bool (*skip)(const char *key), struct mc_err *err);
/* Adds a tensor; data (mc_type_row_size(type, ne[0]) * rows bytes) is copied. Tensors are
 * written in the order added. MC_EINVAL for a bad shape or type, MC_EEXIST for a name
 * already added. */
int mc_gguf_writer_add_tensor(struct mc_gguf_writer *w, const char *name, enum mc_type type,
                              int n_dims, const int64_t *ne, const void *data, struct mc_err *err);
/* Writes version 3 with alignment 32 to path (via path.tmp and rename). */
int mc_gguf_writer_write(struct mc_gguf_writer *w, const char *path, struct mc_err *err);

#endif
