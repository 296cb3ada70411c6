/* lora_int.h - the inside of struct mc_lora, shared by the adapter module's files
 * (lora.c: object, info, synth, save; lora_load.c: GGUF and PEFT parsing; lora_apply.c:
 * the projection hook; lora_merge.c; lora_cache.c). Other modules never include it. */
#ifndef MC_LORA_INT_H
#define MC_LORA_INT_H

#include "adapter/lora.h"
#include "model/quant.h"

#include <stdatomic.h>
#include <string.h>

struct lora_pair {
    int32_t layer;
    enum mc_proj proj;
    int32_t rank;
    int64_t n_in;
    int64_t n_out;
    float factor; /* alpha / r, alpha / √r, or 1 */
    void *a;      /* (rank, n_in) of mc_lora.wtype, into mc_lora.data */
    void *bt;     /* (rank, n_out): B transposed, so the expand reads rows contiguously */
};

struct mc_lora {
    atomic_int refs;
    struct mc_lora_info info;
    struct mc_lora_base base; /* valid when info.bound */
    struct lora_pair *pairs;  /* (n_pairs), sorted by (layer, proj) */
    int32_t n_slots;          /* n_layer_max * MC_PROJ_COUNT */
    struct lora_pair **slot;  /* (n_slots): pair of (layer, proj) or NULL */
    enum mc_type wtype;       /* F32, F16 (file all F16) or Q8_0 (mc_lora_convert) */
    void *data;               /* every A and Bᵀ, one block */
};

/* Q8_0 as GGUF stores it: blocks of 32 values, an F16 scale d then 32 int8 q, value
 * d·q. Rows of adapters stored this way are multiples of 32, so blocks never straddle
 * rows and element i of a matrix is in block i / 32. */
enum { LORA_Q8_BLOCK = 32, LORA_Q8_BYTES = 34 };

/* Byte offset of element i (at a block boundary for Q8_0) in storage of type t. */
static inline size_t lora_offset(enum mc_type t, size_t i) {
    if (t == MC_TYPE_Q8_0)
        return i / LORA_Q8_BLOCK * LORA_Q8_BYTES;
    return i * (t == MC_TYPE_F16 ? 2 : 4);
}

/* Element i of a stored half (F32, F16 or Q8_0). */
static inline float lora_get(const void *w, enum mc_type t, size_t i) {
    if (t == MC_TYPE_Q8_0) {
        const uint8_t *b = (const uint8_t *)w + lora_offset(t, i);
        uint16_t d;
        memcpy(&d, b, 2);
        return mc_fp16_to_fp32(d) * (float)(int8_t)b[2 + i % LORA_Q8_BLOCK];
    }
    return t == MC_TYPE_F16 ? mc_fp16_to_fp32(((const uint16_t *)w)[i]) : ((const float *)w)[i];
}

/* Kernels of the projection hook (lora_apply.c, lora_avx2.c). w is F32 or F16 (t). */
/* dot: x (n) · w (n). expand: y[j] += Σ_k t[k] · bt[k][j] for j in [j0, j1), k in
 * order, bt being (rank, n_out); for Q8_0, j0 and n_out are multiples of 32 and j1 is one
 * or n_out. */
float lora_dot_portable(const float *x, const void *w, enum mc_type t, int64_t n);
void lora_expand_portable(float *y, const float *t, const void *bt, enum mc_type wt, int32_t rank,
                          int64_t n_out, int64_t j0, int64_t j1);
float lora_dot_avx2(const float *x, const void *w, enum mc_type t, int64_t n);
void lora_expand_avx2(float *y, const float *t, const void *bt, enum mc_type wt, int32_t rank,
                      int64_t n_out, int64_t j0, int64_t j1);
float lora_dot_avx512(const float *x, const void *w, enum mc_type t, int64_t n);
void lora_expand_avx512(float *y, const float *t, const void *bt, enum mc_type wt, int32_t rank,
                        int64_t n_out, int64_t j0, int64_t j1);

/* Quantizes n values (a multiple of 32) of w, F32 or F16 (t), to Q8_0 blocks at dst,
 * giving the bytes mc_quantize_row(MC_TYPE_Q8_0) gives for the same values as F32. */
void lora_q8_row_avx2(const void *w, enum mc_type t, uint8_t *dst, int64_t n);

/* A pair being collected by a parser before the adapter is built: data pointers are
 * views into the file (any supported type), converted when the adapter is built. */
struct lora_src {
    char name[48]; /* base tensor name */
    int32_t layer;
    enum mc_proj proj;
    int32_t rank;
    int64_t n_in;
    int64_t n_out;
    /* Each half: element type (enum mc_type) and data in GGUF row order. */
    enum mc_type a_type;
    enum mc_type b_type;
    const void *a;
    const void *b;
    bool permute_b; /* apply HF -> GGUF rope row order with n_heads */
    int32_t n_heads;
};

/* Builds the adapter from n parsed pairs (converting and permuting), computing each
 * factor from info's alpha/rslora and the pair's rank. info is copied. */
int lora_build(const struct mc_lora_info *info, const struct mc_lora_base *base,
               struct lora_src *src, int32_t n, struct mc_lora **out, struct mc_err *err);

/* Checks (layer, proj, n_in, n_out) of a pair named `name` against base. */
int lora_check_pair(const struct mc_lora_base *base, const char *name, int32_t layer,
                    enum mc_proj proj, int64_t n_in, int64_t n_out, struct mc_err *err);
/* Expected (n_in, n_out) of proj under base. */
void lora_proj_shape(const struct mc_lora_base *base, enum mc_proj proj, int64_t *n_in,
                     int64_t *n_out);
/* Parses "blk.N.attn_q.weight" into (layer, proj); false if it is not one of the seven. */
bool lora_parse_gguf_name(const char *s, size_t len, int32_t *layer, enum mc_proj *proj);

#endif
