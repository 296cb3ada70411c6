/* lora_int.h - the inside of struct mc_lora, shared by the adapter module's files
 * (lora.c: object, info, synth, save; lora_load.c: GGUF and PEFT parsing; lora_apply.c:
 * the projection hook; lora_merge.c; lora_cache.c). Other modules never include it. */
#ifndef MC_LORA_INT_H
#define MC_LORA_INT_H

#include "adapter/lora.h"

#include <stdatomic.h>

struct lora_pair {
    int32_t layer;
    enum mc_proj proj;
    int32_t rank;
    int64_t n_in;
    int64_t n_out;
    float factor; /* alpha / r, alpha / √r, or 1 */
    float *a;     /* (rank, n_in), into mc_lora.data */
    float *b;     /* (n_out, rank), into mc_lora.data */
};

struct mc_lora {
    atomic_int refs;
    struct mc_lora_info info;
    struct mc_lora_base base; /* valid when info.bound */
    struct lora_pair *pairs;  /* (n_pairs), sorted by (layer, proj) */
    int32_t n_slots;          /* n_layer_max * MC_PROJ_COUNT */
    struct lora_pair **slot;  /* (n_slots): pair of (layer, proj) or NULL */
    float *data;              /* every A and B, one block */
};

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
