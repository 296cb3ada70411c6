/* safetensors.h - a hardened reader for .safetensors files (Hugging Face), as used by
 * PEFT LoRA adapters.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON (an object mapping tensor
 * names to {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional
 * "__metadata__" object of strings), then the data section; offsets are relative to its
 * start. The reader maps the file read-only, parses the header with jansson (duplicate
 * keys rejected) and checks every tensor before use: begin <= end <= data size, end -
 * begin = product(shape) * dtype size, no two tensors overlapping. Tensors are views into
 * the mapping. Errors: MC_EFORMAT with "FILE: FIELD at offset N: what is wrong";
 * MC_ENOTSUP for a valid dtype other than F32, F16 and BF16. */
#ifndef MC_SAFETENSORS_H
#define MC_SAFETENSORS_H

#include "base/err.h"

#include <stddef.h>
#include <stdint.h>

#define MC_SAFETENSORS_MAX_DIMS 8

enum mc_safetensors_dtype {
    MC_SAFETENSORS_F32 = 0,
    MC_SAFETENSORS_F16 = 1,
    MC_SAFETENSORS_BF16 = 2,
};

struct mc_safetensors_tensor {
    const char *name; /* NUL-terminated, valid until mc_safetensors_close */
    enum mc_safetensors_dtype dtype;
    int n_dims; /* 0 (a scalar) .. MC_SAFETENSORS_MAX_DIMS */
    /* Row-major as in the file: shape[n_dims - 1] varies fastest. This is the reverse of
     * GGUF's ne[] order (a PyTorch Linear weight (out, in) is ne = {in, out} in GGUF). */
    int64_t shape[MC_SAFETENSORS_MAX_DIMS];
    uint64_t offset;   /* from the start of the data section */
    size_t size_bytes; /* product(shape) * dtype size; may be 0 for an empty tensor */
    const void *data;  /* view into the file; aligned only as the file happens to be */
};

struct mc_safetensors; /* opaque; see safetensors.c */

/* Maps and validates path. On failure *out is NULL and err names file, field, offset. */
int mc_safetensors_open(const char *path, struct mc_safetensors **out, struct mc_err *err);
/* Parses a buffer the caller keeps alive until mc_safetensors_close; name is used in
 * messages. */
int mc_safetensors_open_buffer(const void *buf, size_t size, const char *name,
                               struct mc_safetensors **out, struct mc_err *err);
/* Accepts NULL. */
void mc_safetensors_close(struct mc_safetensors *st);

/* Tensors in the order of their data offsets. Pointers are valid until close. */
int64_t mc_safetensors_n_tensors(const struct mc_safetensors *st);
const struct mc_safetensors_tensor *mc_safetensors_tensor(const struct mc_safetensors *st,
                                                          int64_t i);
/* NULL if absent. */
const struct mc_safetensors_tensor *mc_safetensors_find(const struct mc_safetensors *st,
                                                        const char *name);

/* "__metadata__" entries (string values), in header order; NULL if absent. */
int64_t mc_safetensors_n_metadata(const struct mc_safetensors *st);
const char *mc_safetensors_metadata_key(const struct mc_safetensors *st, int64_t i);
const char *mc_safetensors_metadata_value(const struct mc_safetensors *st, int64_t i);
const char *mc_safetensors_metadata(const struct mc_safetensors *st, const char *key);

/* "F32", "F16", "BF16"; and bytes per element (4, 2, 2). */
const char *mc_safetensors_dtype_name(enum mc_safetensors_dtype t);
size_t mc_safetensors_dtype_size(enum mc_safetensors_dtype t);

#endif
