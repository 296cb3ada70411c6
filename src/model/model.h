/* model.h - a llama-family model (llama, qwen2) loaded once, and its forward pass.
 *
 * The model owns the GGUF mapping; weights are views into it and are never copied. A
 * model is immutable after load and shared by every sequence of every tenant. Per-sequence
 * state lives in a KV cache (struct mc_kv); scratch memory for one forward call lives in a
 * context (struct mc_ctx), used by one thread at a time (the engine loop). */
#ifndef MC_MODEL_H
#define MC_MODEL_H

#include "base/err.h"
#include "base/pool.h"
#include "model/gguf.h"
#include "model/quant.h"
#include "model/tokenizer.h"

#include <stdbool.h>
#include <stdint.h>

struct mc_hparams {
    char arch[32]; /* "llama" or "qwen2" */
    char name[64]; /* general.name, or the file's base name */
    int32_t n_vocab;
    int32_t n_ctx_train;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t n_ff;
    int32_t head_dim; /* n_embd / n_head unless the file says otherwise */
    int32_t n_rot;    /* rotary dimensions per head */
    float rms_eps;
    float rope_base;
    float rope_scale;      /* linear scaling factor (1 = none) */
    bool tied_output;      /* output matrix is token_embd */
    enum mc_type wtype;    /* type of most matrices, for display */
    uint64_t weight_bytes; /* bytes of all weight tensors */
};

struct mc_model; /* opaque; see llama.c */

/* Loads path (mapped, not copied) and its tokenizer. Any architecture other than
 * llama/qwen2 gives MC_ENOTSUP with a message listing the supported ones; missing
 * metadata keys or missing/ill-shaped tensors give MC_EFORMAT naming the key or tensor
 * and the file; unsupported tensor types or rope scaling MC_ENOTSUP. On failure *out is
 * NULL. The model is immutable afterwards and may be shared by any number of threads. */
int mc_model_load(const char *path, struct mc_model **out, struct mc_err *err);
/* Frees the model and unmaps the file; every kv and ctx made from it must be freed
 * first. Accepts NULL. */
void mc_model_free(struct mc_model *m);
/* The accessors below return borrowed pointers, valid until mc_model_free. */
const struct mc_hparams *mc_model_hparams(const struct mc_model *m);
const struct mc_tokenizer *mc_model_tokenizer(const struct mc_model *m);
const struct mc_gguf *mc_model_gguf(const struct mc_model *m);
/* tokenizer.chat_template, NUL-terminated, or NULL if the file has none. */
const char *mc_model_chat_template(const struct mc_model *m);
/* Bytes of weights one decode step reads: every layer matrix, the output matrix, one
 * embedding row and the norm vectors (the numerator of the bandwidth bound). */
uint64_t mc_model_bytes_per_token(const struct mc_model *m);

/* ---- KV cache: one per sequence ------------------------------------------------- */

struct mc_kv;
/* A cache of n_ctx positions (F32 keys and values) for every layer of m; m must outlive
 * it. MC_EINVAL for n_ctx outside 1..2^20, MC_ENOMEM naming the size. */
int mc_kv_create(const struct mc_model *m, int32_t n_ctx, struct mc_kv **out, struct mc_err *err);
void mc_kv_free(struct mc_kv *kv); /* accepts NULL */
int32_t mc_kv_n_ctx(const struct mc_kv *kv);
int32_t mc_kv_n_used(const struct mc_kv *kv); /* positions written so far */
/* Forgets positions >= n (n >= n_used does nothing): the next row of this sequence
 * must then have position n. Used to reuse a common prefix or to roll back. */
void mc_kv_truncate(struct mc_kv *kv, int32_t n);
/* Bytes a cache of n_ctx positions takes for m. */
size_t mc_kv_bytes(const struct mc_model *m, int32_t n_ctx);

/* ---- Forward pass --------------------------------------------------------------- */

/* One token of one sequence in a batch. Rows of the same sequence must be consecutive
 * positions in increasing order, starting at mc_kv_n_used(kv); a row attends to positions
 * 0..pos of its own kv only. */
struct mc_batch_row {
    int32_t token;
    int32_t pos;
    struct mc_kv *kv;
    bool want_logits;
    /* Per-row low-rank adapter, opaque to the model: it is only handed to the context's
     * projection hook (see mc_ctx_set_proj_hook). NULL = base model only. adapter_scale is
     * the per-request scale, used as given (0 cancels the adapter's effect). */
    const void *adapter;
    float adapter_scale;
};

struct mc_ctx;
/* Scratch for batches of up to max_rows rows (1..65536), and a pool of n_threads
 * threads (<= 0: all CPUs). All memory a forward call needs is allocated here, except
 * attention scores, which grow (rarely) with the longest context seen. m must outlive
 * the context. MC_EINVAL for max_rows out of range, MC_ENOMEM. */
int mc_ctx_create(const struct mc_model *m, int32_t max_rows, int n_threads, struct mc_ctx **out,
                  struct mc_err *err);
void mc_ctx_free(struct mc_ctx *ctx); /* accepts NULL; stops the pool's threads */
int mc_ctx_n_threads(const struct mc_ctx *ctx);
const struct mc_model *mc_ctx_model(const struct mc_ctx *ctx);
/* The context's thread pool, for work the caller wants to run on the same threads
 * between forward calls (benchmarks). Valid until mc_ctx_free. */
struct mc_pool *mc_ctx_pool(struct mc_ctx *ctx);
int32_t mc_ctx_max_rows(const struct mc_ctx *ctx);

/* The seven layer projections a hook sees, in the order they run. */
enum mc_proj {
    MC_PROJ_Q = 0, /* attn_q: n_embd -> n_head * head_dim */
    MC_PROJ_K,     /* attn_k: n_embd -> n_head_kv * head_dim */
    MC_PROJ_V,     /* attn_v: n_embd -> n_head_kv * head_dim */
    MC_PROJ_O,     /* attn_output: n_head * head_dim -> n_embd */
    MC_PROJ_GATE,  /* ffn_gate: n_embd -> n_ff */
    MC_PROJ_UP,    /* ffn_up: n_embd -> n_ff */
    MC_PROJ_DOWN,  /* ffn_down: n_ff -> n_embd */
    MC_PROJ_COUNT
};

/* Called after the base product y (n_rows, n_out) = x (n_rows, n_in) · Wᵀ of projection
 * proj of layer `layer` (before any bias or rope), when at least one row of the batch has
 * an adapter; it adds each row's own low-rank term to y in place. rows are the batch's
 * rows (for their adapter and adapter_scale). A non-MC_OK return fails mc_forward with
 * that error (no kv advances). */
typedef int (*mc_proj_hook_fn)(void *user, int32_t layer, enum mc_proj proj,
                               const struct mc_batch_row *rows, int32_t n_rows, const float *x,
                               int64_t n_in, float *y, int64_t n_out, struct mc_err *err);

/* Optional companion of the hook, called before the base product of the same projection:
 * writes into spans (at most cap, which is 2 × max_rows) the memory the hook is going to
 * read and returns how many it wrote (0: nothing). The base product prefetches them while
 * it computes (mc_matmul_prefetch): at batch sizes where the product is bound by
 * arithmetic and the hook, with many different adapters, by memory, the two overlap. The
 * spans are only a hint; the hook must not rely on them. When the base product succeeds,
 * the hook of the same projection and rows is the next call. */
typedef int32_t (*mc_proj_prefetch_fn)(void *user, int32_t layer, enum mc_proj proj,
                                       const struct mc_batch_row *rows, int32_t n_rows,
                                       struct mc_span *spans, int32_t cap);

/* Installs (or with fn NULL removes) the projection hook of ctx and its optional
 * prefetch; user is passed back to both. A batch whose rows carry an adapter while no
 * hook is installed fails with MC_EINVAL. The model itself knows nothing of adapters. */
void mc_ctx_set_proj_hook(struct mc_ctx *ctx, mc_proj_hook_fn fn, mc_proj_prefetch_fn prefetch,
                          void *user);

/* Runs the batch: appends each row's key and value to its cache and advances every
 * sequence by its rows. logits (may be NULL) receives n_vocab floats for each row with
 * want_logits, in row order; hidden, if non-NULL, the final-norm hidden state (n_embd
 * floats) of each such row, for embeddings. Errors: MC_EINVAL for a bad row (token out
 * of range, kv missing or of another model, position not the next of its sequence),
 * MC_EFULL past the cache size, MC_ENOMEM growing the attention scratch; the message
 * names the row. On error no kv is advanced. One call at a time per ctx. */
int mc_forward(struct mc_ctx *ctx, const struct mc_batch_row *rows, int32_t n_rows, float *logits,
               float *hidden, struct mc_err *err);

#endif
