/* lora.h - LoRA adapters: loading (GGUF LoRA, Hugging Face PEFT), applying many of them
 * in one batch, merging into a model, and a residency cache.
 *
 * An adapter is a set of low-rank pairs (A, B) for some of the seven layer projections
 * q, k, v, o, gate, up, down; the projection y = x·Wᵀ becomes y + s·(x·Aᵀ)·Bᵀ with
 * s = factor · request scale, factor = alpha / r (alpha / √r with rsLoRA; 1 when a GGUF
 * adapter has no alpha, as llama.cpp does). Pairs are kept as A (r, n_in) and Bᵀ
 * (r, n_out), with PEFT's q/k lora_B rows already permuted to GGUF's rope order, in F16
 * when every tensor of the file was F16 and in F32 otherwise (F32 files stay exact,
 * BF16/Q8_0 are widened). An adapter is immutable after load and reference-counted: any number of
 * threads and sequences may hold it; the last mc_lora_release frees it. */
#ifndef MC_LORA_H
#define MC_LORA_H

#include "base/err.h"
#include "model/gguf.h"
#include "model/model.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits on what an adapter may declare. Alpha: real adapters use up to a few hundred;
 * the bound keeps alpha / r a finite float with room for the per-request scale. */
enum { MC_LORA_MAX_RANK = 1024, MC_LORA_MAX_ALPHA = 65536 };
/* Largest per-request (or --lora FILE:SCALE) scale, the server's and the CLI's. */
#define MC_LORA_MAX_SCALE 16.0f

/* The base-model shape an adapter is checked against (and bound to). */
struct mc_lora_base {
    char arch[32]; /* "llama" or "qwen2" */
    int32_t n_layer;
    int32_t n_embd;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;
    int32_t n_ff;
};

void mc_lora_base_from_model(const struct mc_model *m, struct mc_lora_base *out);

enum mc_lora_format { MC_LORA_FORMAT_GGUF = 0, MC_LORA_FORMAT_PEFT, MC_LORA_FORMAT_SYNTH };

struct mc_lora_info {
    enum mc_lora_format format;
    char name[128];       /* file or directory base name, or the caller's name */
    char arch[32];        /* general.architecture (GGUF), or the base's arch, or "" */
    char base_model[128]; /* PEFT base_model_name_or_path; GGUF general.base_model... or "" */
    int32_t rank;         /* largest rank of any pair */
    float alpha;          /* 0 when has_alpha is false */
    bool has_alpha;
    bool rslora;
    bool bound;        /* checked against a base (usable in a forward pass) */
    bool hf_row_order; /* PEFT q/k lora_B not yet permuted (opened without a base) */
    int32_t n_pairs;
    uint32_t targets;      /* bit (1 << enum mc_proj) for each projection present */
    size_t resident_bytes; /* heap bytes held by the adapter */
};

struct mc_lora_pair_info {
    char name[48]; /* the base tensor, e.g. "blk.3.attn_q.weight" */
    int32_t layer;
    enum mc_proj proj;
    int32_t rank;
    int64_t n_in;
    int64_t n_out;
    float factor;      /* alpha / r, alpha / √r or 1 */
    enum mc_type type; /* of a and bt: F32, F16 (file all F16) or Q8_0 (converted) */
    const void *a;     /* (rank, n_in) */
    const void *bt;    /* (rank, n_out): B transposed */
};

struct mc_lora; /* opaque; see lora.c */

/* Opens path: a directory is read as PEFT (adapter_config.json + adapter_model.safetensors),
 * a file as GGUF. With base non-NULL the adapter is checked against it (architecture,
 * layer count, every pair's shape; errors name the tensor) and bound, which a forward pass
 * requires; PEFT q_proj/k_proj lora_B rows are then permuted to GGUF order (llama only:
 * qwen2's rope needs no permutation). With base NULL the adapter can only be inspected or,
 * without q/k pairs, converted. Errors: MC_EFORMAT (file content), MC_ENOTSUP (a valid
 * feature not implemented: DoRA, biases, embedding/output targets, rank_pattern), MC_EINVAL
 * (does not fit base), MC_EIO. On failure *out is NULL. */
int mc_lora_open(const char *path, const struct mc_lora_base *base, struct mc_lora **out,
                 struct mc_err *err);
/* The same from memory (a decrypted upload). The buffers are only read during the call.
 * name is used in messages and info. */
int mc_lora_open_gguf_buffer(const void *buf, size_t size, const char *name,
                             const struct mc_lora_base *base, struct mc_lora **out,
                             struct mc_err *err);
int mc_lora_open_peft_buffers(const char *config_json, size_t config_len, const void *st,
                              size_t st_size, const char *name, const struct mc_lora_base *base,
                              struct mc_lora **out, struct mc_err *err);

/* A random adapter (for tests and benchmarks): pairs of rank for every layer and every
 * projection whose bit is set in targets; A ~ N(0, 1/n_in), B ~ N(0, 0.25/rank), from seed.
 * alpha <= 0 means alpha = rank (factor 1). Bound to base. */
int mc_lora_synth(const struct mc_lora_base *base, int32_t rank, uint32_t targets, float alpha,
                  uint64_t seed, const char *name, struct mc_lora **out, struct mc_err *err);

/* Reference counting: a new adapter has one reference. Both accept NULL. */
struct mc_lora *mc_lora_retain(struct mc_lora *l);
void mc_lora_release(struct mc_lora *l);
int mc_lora_refcount(const struct mc_lora *l);

const struct mc_lora_info *mc_lora_info(const struct mc_lora *l);
int32_t mc_lora_n_pairs(const struct mc_lora *l);
/* Pair i in (layer, proj) order; the pointers are valid while l is held. */
void mc_lora_pair(const struct mc_lora *l, int32_t i, struct mc_lora_pair_info *out);
/* The multiplier of B·A for (layer, proj) at request scale user_scale: factor·user_scale,
 * or 0 if the adapter has no pair there. */
float mc_lora_scale(const struct mc_lora *l, int32_t layer, enum mc_proj proj, float user_scale);
/* "q", "k", "v", "o", "gate", "up", "down"; and GGUF's "attn_q" ... "ffn_down". */
const char *mc_lora_proj_short(enum mc_proj p);
const char *mc_lora_proj_gguf(enum mc_proj p);
/* Parses "q,k,v" / "all" into a targets mask; MC_EINVAL naming the bad item. */
int mc_lora_parse_targets(const char *s, uint32_t *out, struct mc_err *err);
/* True if l is bound to a base equal to b. */
bool mc_lora_fits(const struct mc_lora *l, const struct mc_lora_base *b);

/* A copy of l whose pairs are stored as type t: F32, F16 or Q8_0 (blocks of 32 with an
 * F16 scale: about half the bytes of F16, and half the memory traffic per decode step,
 * for a relative rounding error of the adapter's weights near 0.4 %). Q8_0 needs every
 * n_in and n_out to be a multiple of 32 (MC_ENOTSUP naming the tensor otherwise). For a
 * server that keeps many adapters resident. The copy is a new object (refcount 1); l is
 * unchanged. */
int mc_lora_convert(const struct mc_lora *l, enum mc_type t, struct mc_lora **out,
                    struct mc_err *err);

/* Writes l as a GGUF LoRA file with tensors of type F32, F16 or BF16. rsLoRA adapters are
 * written with alpha·√r as alpha so that alpha/r reproduces the factor. MC_EINVAL for a
 * PEFT adapter whose q/k rows are still in HF order (open it with a base). */
int mc_lora_save_gguf(const struct mc_lora *l, enum mc_type type, const char *path,
                      struct mc_err *err);

/* Writes the model m with W + scale·factor·B·A in place of every targeted matrix to path.
 * F32/F16/BF16 matrices are updated in their type; quantized ones are dequantized, updated
 * and quantized again to the same type (which adds that type's rounding error once).
 * l must be bound to m's shape. */
int mc_lora_merge(const struct mc_model *m, const struct mc_lora *l, float scale, const char *path,
                  struct mc_err *err);

/* ---- Applying adapters in a forward pass ------------------------------------------ */

/* Installs the projection hook on ctx: rows whose adapter is a struct mc_lora * get
 * y += (row scale · factor) · (x·Aᵀ)·Bᵀ for each pair of the adapter. Rows are grouped by
 * adapter, and each group's A and B are read once per projection. The runner does not
 * take references: whoever puts an adapter in a row keeps it alive until mc_forward
 * returns. An adapter bound to another shape fails the forward with MC_EINVAL. */
struct mc_lora_runner;
int mc_lora_runner_create(struct mc_ctx *ctx, struct mc_lora_runner **out, struct mc_err *err);
/* Removes the hook from its context and frees the runner; accepts NULL. */
void mc_lora_runner_free(struct mc_lora_runner *r);
/* Whether the base product prefetches the adapters the hook is about to read (on by
 * default; see docs/lora.md). Off only to measure what the prefetch is worth. */
void mc_lora_runner_set_prefetch(struct mc_lora_runner *r, bool on);

/* ---- Residency cache ------------------------------------------------------------- */

/* Loads adapter (id, version) on a cache miss; returns a new reference in *out. The
 * server's loader reads and decrypts the tenant's sealed blob. Called without the cache
 * lock held, possibly from several threads at once. */
typedef int (*mc_lora_loader_fn)(void *user, const char *id, uint64_t version, struct mc_lora **out,
                                 struct mc_err *err);

struct mc_lora_cache_params {
    size_t budget_bytes; /* sum of resident_bytes allowed; 0 = no byte limit */
    int32_t max_entries; /* resident adapters allowed; 0 = no count limit */
    mc_lora_loader_fn loader;
    void *user;
};

struct mc_lora_cache_stats {
    uint64_t hits;
    uint64_t misses;
    uint64_t evictions;
    uint64_t load_errors;
    int32_t n_resident;
    size_t resident_bytes;
};

struct mc_lora_cache;
int mc_lora_cache_create(const struct mc_lora_cache_params *p, struct mc_lora_cache **out,
                         struct mc_err *err);
/* Drops the cache's references (users keep theirs); accepts NULL. */
void mc_lora_cache_free(struct mc_lora_cache *c);
/* The adapter (id, version) with a new reference for the caller (release it when the
 * sequence ends). A miss calls the loader, then evicts least recently used adapters that
 * are neither pinned nor in use (held by anyone but the cache) until the budget holds;
 * if it cannot (everything else pinned or in use), the new adapter is returned to the
 * caller but not kept. Loader errors are returned as is. Keys are (id, version): a new
 * version never returns an old one. */
int mc_lora_cache_get(struct mc_lora_cache *c, const char *id, uint64_t version,
                      struct mc_lora **out, struct mc_err *err);
/* Pins or unpins (id, version), loading it if needed; pinned adapters are never evicted.
 * MC_EFULL if pinning would leave the budget exceeded by pinned/in-use adapters alone. */
int mc_lora_cache_pin(struct mc_lora_cache *c, const char *id, uint64_t version, bool pin,
                      struct mc_err *err);
/* Forgets every version of id (delete or replace): the cache drops its references and
 * sequences still running keep the version they hold. Returns the number dropped. */
int mc_lora_cache_remove(struct mc_lora_cache *c, const char *id);
bool mc_lora_cache_contains(struct mc_lora_cache *c, const char *id, uint64_t version);
void mc_lora_cache_stats(struct mc_lora_cache *c, struct mc_lora_cache_stats *out);

#endif
