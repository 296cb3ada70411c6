/* llama.c - the llama-family forward pass (architectures llama and qwen2), the KV cache
 * and the per-call scratch context.
 *
 * A model is the GGUF mapping plus views of its tensors: nothing is copied except the
 * tokenizer and the chat template. One mc_forward call runs a batch of rows, each row
 * being one token of one sequence (its own KV cache and position); rows of several
 * sequences may share a call. Every projection is one matrix-matrix product over all
 * rows of the batch (mc_matmul with n_tok = n_rows), so the weights are read once per
 * call; attention then runs per (row, head) over that row's own cache positions 0..pos.
 * A batch of one row (decoding) takes a path with fewer thread-pool jobs per layer (see
 * "Decode path" below); its results are the same.
 *
 * The layer is written as named steps (attention norm, q/k/v projections, rope, cache
 * write, attention, output projection, residual, ffn norm, gate/up, swiglu, down,
 * residual) over buffers of struct mc_ctx, and every projection goes through proj(), so
 * that per-row LoRA deltas and a backward pass can be added step by step. In inference
 * the buffers of one layer are overwritten by the next; a trainer would keep them.
 *
 * Numerics follow the reference implementation: F32 activations and F32 KV cache, rope
 * angles computed as ggml does (iterated powers of the frequency base), softmax with the
 * 1/sqrt(head_dim) scale folded in. Threads: one mc_ctx is used by one caller at a time;
 * a model may be shared by any number of contexts. Not done here: the tokenizer, the
 * kernels (quant.c), sampling, and rope scaling other than linear (YaRN is refused). */
#include "model/model.h"

#include "base/mem.h"
#include "base/pool.h"
#include "model/llama_int.h"
#include "model/quant.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h> /* the packed weights' mapping */
#include <unistd.h>   /* sysconf */

enum {
    MAX_LAYERS = 1024,
    MAX_DIM = 1 << 16, /* n_embd, n_ff, head_dim caps */
    MAX_VOCAB = 1 << 22,
    MAX_ROWS = 1 << 16, /* rows per forward call */
    MAX_KV_CTX = 1 << 20,
};

static const char *const supported_archs = "llama, qwen2";

/* A matrix view: rows of cols elements of type `type`, row-major in the mapping, or in
 * the model's packed copy when `packed` (quant.h, "Packed weights"; same row bytes). */
struct weight {
    enum mc_type type;
    const void *data;
    int64_t rows;
    int64_t cols;
    size_t row_bytes;
    bool packed;
};

struct layer {
    const float *attn_norm; /* (n_embd) */
    struct weight wq;       /* (n_head * head_dim, n_embd) */
    struct weight wk;       /* (n_head_kv * head_dim, n_embd) */
    struct weight wv;       /* (n_head_kv * head_dim, n_embd) */
    struct weight wo;       /* (n_embd, n_head * head_dim) */
    const float *bq;        /* (n_head * head_dim) or NULL; qwen2 */
    const float *bk;        /* (n_head_kv * head_dim) or NULL */
    const float *bv;        /* (n_head_kv * head_dim) or NULL */
    const float *ffn_norm;  /* (n_embd) */
    struct weight w_gate;   /* (n_ff, n_embd) */
    struct weight w_up;     /* (n_ff, n_embd) */
    struct weight w_down;   /* (n_embd, n_ff) */
};

struct mc_model {
    struct mc_gguf *gguf;
    struct mc_tokenizer *tok;
    char *chat_template;
    struct mc_hparams hp;
    bool rope_neox;          /* qwen2: rotate halves; llama: adjacent pairs */
    struct weight tok_embd;  /* (n_vocab, n_embd) */
    struct weight output;    /* (n_vocab, n_embd); same as tok_embd when tied */
    const float *out_norm;   /* (n_embd) */
    const float *rope_freqs; /* (n_rot / 2) or NULL: per-pair frequency divisors */
    struct layer *layers;    /* (n_layer) */
    void *pack_map;          /* anonymous mapping holding the packed matrices, or NULL */
    size_t pack_map_bytes;
};

struct mc_kv {
    const struct mc_model *m;
    int32_t n_ctx;
    int32_t n_used;
    int32_t next; /* scratch of mc_forward's validation */
    int32_t kv_dim;
    float *k; /* (n_layer, n_ctx, kv_dim), keys after rope */
    float *v; /* (n_layer, n_ctx, kv_dim) */
};

struct mc_ctx {
    const struct mc_model *m;
    struct mc_pool *pool;
    int32_t max_rows;
    /* Activations, each (max_rows, width). */
    float *x;    /* (rows, n_embd) residual stream */
    float *xn;   /* (rows, n_embd) normed input of the current step */
    float *q;    /* (rows, n_head * head_dim) */
    float *k;    /* (rows, n_head_kv * head_dim) */
    float *v;    /* (rows, n_head_kv * head_dim) */
    float *att;  /* (rows, n_head * head_dim) attention output */
    float *proj; /* (rows, n_embd) output of wo / w_down */
    float *gate; /* (rows, n_ff) */
    float *up;   /* (rows, n_ff) */
    float *rope; /* (rows, n_rot) cos/sin pairs per row */
    void *work;  /* mc_matmul scratch */
    size_t work_bytes;
    float *scores; /* (n_threads, scores_cap) attention scores per thread */
    int32_t scores_cap;
    void *twork; /* (n_threads, twork_bytes) per-thread matmul scratch, decode path */
    size_t twork_bytes;
    int *trc;                        /* (n_threads) per-thread result of the decode path */
    const struct layer *cur;         /* layer being run by a decode-path job */
    enum mc_simd simd;               /* kernel level for this forward call */
    const struct mc_batch_row *rows; /* the batch being run */
    int32_t n_rows;
    int layer;
    /* Projection hook for per-row adapters (see mc_ctx_set_proj_hook). */
    mc_proj_hook_fn hook;
    mc_proj_prefetch_fn prefetch; /* may be NULL */
    struct mc_span *spans;        /* (2 * max_rows) what prefetch lists */
    void *hook_user;
    bool any_adapter; /* some row of the current batch has an adapter */
};

/* ---- Loading ------------------------------------------------------------------- */

static int get_u32(const struct mc_gguf *g, const char *arch, const char *suffix, bool required,
                   uint32_t def, uint32_t *out, struct mc_err *err) {
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", arch, suffix);
    int rc = mc_gguf_get_u32(g, key, out, err);
    if (rc == MC_ENOTFOUND && !required) {
        *out = def;
        return MC_OK;
    }
    if (rc == MC_ENOTFOUND)
        return mc_err_set(err, MC_EFORMAT, "missing metadata key %s", key);
    return rc;
}

static int get_f32(const struct mc_gguf *g, const char *arch, const char *suffix, float def,
                   float *out, struct mc_err *err) {
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", arch, suffix);
    int rc = mc_gguf_get_f32(g, key, out, err);
    if (rc == MC_ENOTFOUND) {
        *out = def;
        return MC_OK;
    }
    return rc;
}

static int check_dim(const char *what, uint32_t v, uint32_t cap, struct mc_err *err) {
    if (v == 0 || v > cap)
        return mc_err_set(err, MC_EFORMAT, "%s = %u is out of range 1..%u", what, v, cap);
    return MC_OK;
}

/* Reads the architecture name and rejects anything but llama and qwen2. */
static int read_arch(struct mc_model *m, struct mc_err *err) {
    const char *s;
    uint64_t len;
    int rc = mc_gguf_get_str(m->gguf, "general.architecture", &s, &len, err);
    if (rc == MC_ENOTFOUND)
        return mc_err_set(err, MC_EFORMAT, "missing metadata key general.architecture");
    if (rc != MC_OK)
        return rc;
    if (len >= sizeof(m->hp.arch))
        len = sizeof(m->hp.arch) - 1;
    memcpy(m->hp.arch, s, len);
    m->hp.arch[len] = '\0';
    if (strcmp(m->hp.arch, "llama") != 0 && strcmp(m->hp.arch, "qwen2") != 0)
        return mc_err_set(err, MC_ENOTSUP, "unsupported architecture '%s' (supported: %s)",
                          m->hp.arch, supported_archs);
    m->rope_neox = strcmp(m->hp.arch, "qwen2") == 0;
    return MC_OK;
}

static void read_name(struct mc_model *m, const char *path) {
    const char *s;
    uint64_t len;
    if (mc_gguf_get_str(m->gguf, "general.name", &s, &len, NULL) != MC_OK) {
        const char *slash = strrchr(path, '/');
        s = slash ? slash + 1 : path;
        len = strlen(s);
    }
    if (len >= sizeof(m->hp.name))
        len = sizeof(m->hp.name) - 1;
    memcpy(m->hp.name, s, len);
    m->hp.name[len] = '\0';
}

/* Rope scaling: "linear" (or the older scale_linear key) divides positions by the
 * factor; YaRN and other schemes are refused rather than run with wrong angles. */
static int read_rope_scaling(struct mc_model *m, struct mc_err *err) {
    const char *arch = m->hp.arch;
    char key[128];
    const char *s;
    uint64_t len;
    float factor = 0.0f;
    snprintf(key, sizeof(key), "%s.rope.scaling.type", arch);
    int rc = mc_gguf_get_str(m->gguf, key, &s, &len, err);
    bool linear = rc == MC_ENOTFOUND || (len == 6 && memcmp(s, "linear", 6) == 0) ||
                  (len == 4 && memcmp(s, "none", 4) == 0);
    if (rc != MC_OK && rc != MC_ENOTFOUND)
        return rc;
    if (!linear)
        return mc_err_set(err, MC_ENOTSUP,
                          "rope scaling type '%.*s' is not supported (only linear)",
                          (int)(len > 32 ? 32 : len), s);
    if (rc == MC_OK && len == 4)
        return MC_OK; /* "none" */
    rc = get_f32(m->gguf, arch, "rope.scaling.factor", 0.0f, &factor, err);
    if (rc == MC_OK && factor == 0.0f)
        rc = get_f32(m->gguf, arch, "rope.scale_linear", 0.0f, &factor, err);
    if (rc != MC_OK)
        return rc;
    if (factor != 0.0f && !(factor >= 1e-3f && factor <= 1e3f))
        return mc_err_set(err, MC_EFORMAT, "rope scaling factor %g is out of range", factor);
    m->hp.rope_scale = factor != 0.0f ? factor : 1.0f;
    return MC_OK;
}

static int read_hparams(struct mc_model *m, struct mc_err *err) {
    const struct mc_gguf *g = m->gguf;
    const char *a = m->hp.arch;
    struct mc_hparams *hp = &m->hp;
    uint32_t n_ctx, n_embd, n_layer, n_head, n_head_kv, n_ff, head_dim, n_rot;
    int rc;

    if ((rc = get_u32(g, a, "context_length", false, 2048, &n_ctx, err)) ||
        (rc = get_u32(g, a, "embedding_length", true, 0, &n_embd, err)) ||
        (rc = get_u32(g, a, "block_count", true, 0, &n_layer, err)) ||
        (rc = get_u32(g, a, "attention.head_count", true, 0, &n_head, err)) ||
        (rc = get_u32(g, a, "feed_forward_length", true, 0, &n_ff, err)))
        return rc;
    if ((rc = check_dim("embedding_length", n_embd, MAX_DIM, err)) ||
        (rc = check_dim("block_count", n_layer, MAX_LAYERS, err)) ||
        (rc = check_dim("attention.head_count", n_head, n_embd, err)) ||
        (rc = check_dim("feed_forward_length", n_ff, MAX_DIM * 4u, err)))
        return rc;
    if ((rc = get_u32(g, a, "attention.head_count_kv", false, n_head, &n_head_kv, err)) ||
        (rc = check_dim("attention.head_count_kv", n_head_kv, n_head, err)))
        return rc;
    if (n_head % n_head_kv != 0)
        return mc_err_set(err, MC_EFORMAT, "head_count %u is not a multiple of head_count_kv %u",
                          n_head, n_head_kv);
    if ((rc = get_u32(g, a, "attention.key_length", false, n_embd / n_head, &head_dim, err)) ||
        (rc = check_dim("attention.key_length", head_dim, MAX_DIM, err)))
        return rc;
    if ((rc = get_u32(g, a, "rope.dimension_count", false, head_dim, &n_rot, err)) ||
        (rc = check_dim("rope.dimension_count", n_rot, head_dim, err)))
        return rc;
    if (n_rot % 2 != 0)
        return mc_err_set(err, MC_EFORMAT, "rope.dimension_count %u is odd", n_rot);
    if ((uint64_t)n_head * head_dim > MAX_DIM * 4u)
        return mc_err_set(err, MC_EFORMAT, "head_count %u x key_length %u exceeds %u", n_head,
                          head_dim, MAX_DIM * 4u);
    uint32_t v_len;
    if ((rc = get_u32(g, a, "attention.value_length", false, head_dim, &v_len, err)))
        return rc;
    if (v_len != head_dim)
        return mc_err_set(err, MC_ENOTSUP, "attention.value_length %u differs from key_length %u",
                          v_len, head_dim);

    hp->n_ctx_train = (int32_t)n_ctx;
    hp->n_embd = (int32_t)n_embd;
    hp->n_layer = (int32_t)n_layer;
    hp->n_head = (int32_t)n_head;
    hp->n_head_kv = (int32_t)n_head_kv;
    hp->n_ff = (int32_t)n_ff;
    hp->head_dim = (int32_t)head_dim;
    hp->n_rot = (int32_t)n_rot;
    if ((rc = get_f32(g, a, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->rms_eps, err)) ||
        (rc = get_f32(g, a, "rope.freq_base", 10000.0f, &hp->rope_base, err)))
        return rc;
    if (!(hp->rms_eps > 0.0f && hp->rms_eps < 1.0f))
        return mc_err_set(err, MC_EFORMAT, "layer_norm_rms_epsilon %g is out of range",
                          hp->rms_eps);
    if (!(hp->rope_base > 1.0f && hp->rope_base < 1e12f))
        return mc_err_set(err, MC_EFORMAT, "rope.freq_base %g is out of range", hp->rope_base);
    return read_rope_scaling(m, err);
}

/* Finds a 2-D matrix of shape (rows, cols) with a type the kernels compute. */
static int load_matrix(struct mc_model *m, const char *name, int64_t rows, int64_t cols,
                       bool required, struct weight *w, struct mc_err *err) {
    const struct mc_gguf_tensor *t = mc_gguf_find_tensor(m->gguf, name);
    memset(w, 0, sizeof(*w));
    if (!t) {
        if (!required)
            return MC_ENOTFOUND;
        return mc_err_set(err, MC_EFORMAT, "missing tensor %s", name);
    }
    if (t->n_dims != 2 || t->ne[0] != cols || (rows > 0 && t->ne[1] != rows)) {
        /* rows 0: any row count (the vocabulary size is not known before token_embd). */
        char want_rows[24] = "any";
        if (rows > 0)
            snprintf(want_rows, sizeof(want_rows), "%lld", (long long)rows);
        return mc_err_set(
            err, MC_EFORMAT, "tensor %s has shape [%lld, %lld] (%d dims), expected [%lld, %s]",
            name, (long long)t->ne[0], (long long)t->ne[1], t->n_dims, (long long)cols, want_rows);
    }
    if (!mc_type_is_supported(t->type))
        return mc_err_set(err, MC_ENOTSUP, "tensor %s has type %s (%d), which is not supported",
                          name, mc_type_name(t->type), (int)t->type);
    size_t rb = mc_type_row_size(t->type, cols);
    if (rb == 0 || rb * (size_t)t->ne[1] > t->size_bytes)
        return mc_err_set(err, MC_EFORMAT, "tensor %s: row of %lld elements does not fit type %s",
                          name, (long long)cols, mc_type_name(t->type));
    w->type = t->type;
    w->data = t->data;
    w->rows = t->ne[1];
    w->cols = cols;
    w->row_bytes = rb;
    return MC_OK;
}

/* Finds an F32 vector of n elements (norm weights, biases, rope factors). */
static int load_vector(struct mc_model *m, const char *name, int64_t n, bool required,
                       const float **out, struct mc_err *err) {
    const struct mc_gguf_tensor *t = mc_gguf_find_tensor(m->gguf, name);
    *out = NULL;
    if (!t) {
        if (!required)
            return MC_OK;
        return mc_err_set(err, MC_EFORMAT, "missing tensor %s", name);
    }
    if (t->n_dims != 1 || t->ne[0] != n)
        return mc_err_set(err, MC_EFORMAT, "tensor %s has %lld elements (%d dims), expected %lld",
                          name, (long long)t->ne[0], t->n_dims, (long long)n);
    if (t->type != MC_TYPE_F32)
        return mc_err_set(err, MC_ENOTSUP, "tensor %s has type %s; only F32 is supported here",
                          name, mc_type_name(t->type));
    if (t->size_bytes < (size_t)n * sizeof(float) || ((uintptr_t)t->data % sizeof(float)) != 0)
        return mc_err_set(err, MC_EFORMAT, "tensor %s data is short or misaligned", name);
    *out = t->data;
    return MC_OK;
}

static int load_layer(struct mc_model *m, int il, struct mc_err *err) {
    const struct mc_hparams *hp = &m->hp;
    struct layer *L = &m->layers[il];
    int64_t d = hp->n_embd, dq = (int64_t)hp->n_head * hp->head_dim;
    int64_t dkv = (int64_t)hp->n_head_kv * hp->head_dim;
    char n[12][64];
    static const char *const sfx[12] = {
        "attn_norm.weight",   "attn_q.weight",   "attn_k.weight", "attn_v.weight",
        "attn_output.weight", "attn_q.bias",     "attn_k.bias",   "attn_v.bias",
        "ffn_norm.weight",    "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"};
    for (int i = 0; i < 12; i++)
        snprintf(n[i], sizeof(n[i]), "blk.%d.%s", il, sfx[i]);
    int rc;
    if ((rc = load_vector(m, n[0], d, true, &L->attn_norm, err)) ||
        (rc = load_matrix(m, n[1], dq, d, true, &L->wq, err)) ||
        (rc = load_matrix(m, n[2], dkv, d, true, &L->wk, err)) ||
        (rc = load_matrix(m, n[3], dkv, d, true, &L->wv, err)) ||
        (rc = load_matrix(m, n[4], d, dq, true, &L->wo, err)) ||
        (rc = load_vector(m, n[5], dq, false, &L->bq, err)) ||
        (rc = load_vector(m, n[6], dkv, false, &L->bk, err)) ||
        (rc = load_vector(m, n[7], dkv, false, &L->bv, err)) ||
        (rc = load_vector(m, n[8], d, true, &L->ffn_norm, err)) ||
        (rc = load_matrix(m, n[9], hp->n_ff, d, true, &L->w_gate, err)) ||
        (rc = load_matrix(m, n[10], hp->n_ff, d, true, &L->w_up, err)) ||
        (rc = load_matrix(m, n[11], d, hp->n_ff, true, &L->w_down, err)))
        return rc;
    return MC_OK;
}

static uint64_t weight_bytes(const struct weight *w) {
    return (uint64_t)w->row_bytes * (uint64_t)w->rows;
}

static int load_tensors(struct mc_model *m, struct mc_err *err) {
    struct mc_hparams *hp = &m->hp;
    int rc = load_matrix(m, "token_embd.weight", 0, hp->n_embd, true, &m->tok_embd, err);
    if (rc != MC_OK)
        return rc;
    if (m->tok_embd.rows < 1 || m->tok_embd.rows > MAX_VOCAB)
        return mc_err_set(err, MC_EFORMAT, "token_embd.weight has %lld rows, limit %d",
                          (long long)m->tok_embd.rows, MAX_VOCAB);
    hp->n_vocab = (int32_t)m->tok_embd.rows;
    rc = load_matrix(m, "output.weight", hp->n_vocab, hp->n_embd, false, &m->output, err);
    if (rc == MC_ENOTFOUND) {
        m->output = m->tok_embd;
        hp->tied_output = true;
    } else if (rc != MC_OK) {
        return rc;
    }
    if ((rc = load_vector(m, "output_norm.weight", hp->n_embd, true, &m->out_norm, err)) ||
        (rc = load_vector(m, "rope_freqs.weight", hp->n_rot / 2, false, &m->rope_freqs, err)))
        return rc;

    m->layers = mc_calloc((size_t)hp->n_layer, sizeof(*m->layers));
    if (!m->layers)
        return mc_err_set(err, MC_ENOMEM, "layer table allocation failed");
    uint64_t total = weight_bytes(&m->tok_embd) + (hp->tied_output ? 0 : weight_bytes(&m->output));
    for (int il = 0; il < hp->n_layer; il++) {
        if ((rc = load_layer(m, il, err)) != MC_OK)
            return rc;
        const struct layer *L = &m->layers[il];
        total += weight_bytes(&L->wq) + weight_bytes(&L->wk) + weight_bytes(&L->wv) +
                 weight_bytes(&L->wo) + weight_bytes(&L->w_gate) + weight_bytes(&L->w_up) +
                 weight_bytes(&L->w_down);
    }
    hp->weight_bytes = total;
    hp->wtype = m->layers[0].w_gate.type;
    return MC_OK;
}

/* ---- Packed weights ------------------------------------------------------------------
 *
 * Where the CPU's kernels read packed rows faster (mc_pack_is_fast: Q8_0 and Q4_0 with
 * AVX-512), every such matrix is packed once at load into one anonymous mapping. The
 * mapping asks for transparent huge pages: decoding streams all weights once per token,
 * and on 4 KiB file pages the TLB misses and page-bounded prefetch cost a good part of
 * the memory bandwidth. The file's pages of the packed matrices are then dropped, so the
 * process holds one copy of the weights, as before. An unshared token_embd stays in the
 * file (only one row per token is read from it); a tied one is packed with the output. */

enum { HUGE_PAGE = 2 << 20 };

static bool pack_wanted(const struct weight *w) {
    return mc_pack_is_fast(w->type);
}

/* Calls fn on every matrix that the forward pass multiplies, each once (a tied output is
 * the token embedding and is visited as the output). */
static void for_each_matrix(struct mc_model *m,
                            void (*fn)(struct mc_model *, struct weight *, void *), void *arg) {
    fn(m, &m->output, arg);
    for (int il = 0; il < m->hp.n_layer; il++) {
        struct layer *L = &m->layers[il];
        struct weight *ws[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++)
            fn(m, ws[i], arg);
    }
}

static void pack_size(struct mc_model *m, struct weight *w, void *arg) {
    (void)m;
    if (pack_wanted(w))
        *(size_t *)arg += (weight_bytes(w) + 63) & ~(size_t)63;
}

struct pack_cursor {
    uint8_t *next; /* where the next packed matrix goes */
};

/* Copies w into the mapping at the cursor, then drops the file's pages of it (the
 * file is mapped MAP_PRIVATE and never written, so a later read of them, as
 * mc_lora_merge does, faults the same bytes back in from the file). */
static void pack_one(struct mc_model *m, struct weight *w, void *arg) {
    struct pack_cursor *cur = arg;
    (void)m;
    if (!pack_wanted(w))
        return;
    uint8_t *dst = cur->next;
    if (mc_pack_rows(w->type, w->data, dst, w->rows, w->cols, NULL) != MC_OK)
        return; /* cannot happen for a type pack_wanted accepts; the file copy stays */
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)w->data + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t hi = ((uintptr_t)w->data + weight_bytes(w)) & ~((uintptr_t)page - 1);
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
    w->data = dst;
    w->packed = true;
    cur->next += (weight_bytes(w) + 63) & ~(size_t)63;
}

/* Packs the matrices pack_wanted picks. Not packing is never an error: without the
 * mapping the weights are used from the file as they are. */
static void pack_weights(struct mc_model *m) {
    size_t bytes = 0;
    for_each_matrix(m, pack_size, &bytes);
    if (bytes == 0)
        return;
    /* Over-allocated by a huge page so the copy can start on a huge-page boundary. This
     * one buffer bypasses mc_malloc: huge pages need a mapping of its own. */
    size_t len = bytes + HUGE_PAGE;
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
        return;
    uint8_t *start = (uint8_t *)(((uintptr_t)map + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    madvise(start, bytes, MADV_HUGEPAGE); /* advice only: 4 KiB pages work too */
    m->pack_map = map;
    m->pack_map_bytes = len;
    struct pack_cursor cur = {start};
    for_each_matrix(m, pack_one, &cur);
    if (m->hp.tied_output)
        m->tok_embd = m->output;
    mprotect(start, bytes, PROT_READ); /* shared by every context: nothing writes it */
}

static int load_chat_template(struct mc_model *m, struct mc_err *err) {
    const char *s;
    uint64_t len;
    int rc = mc_gguf_get_str(m->gguf, "tokenizer.chat_template", &s, &len, err);
    if (rc == MC_ENOTFOUND)
        return MC_OK;
    if (rc != MC_OK)
        return rc;
    m->chat_template = mc_strndup(s, (size_t)len);
    if (!m->chat_template)
        return mc_err_set(err, MC_ENOMEM, "chat template allocation failed (%llu bytes)",
                          (unsigned long long)len);
    return MC_OK;
}

int mc_model_load(const char *path, struct mc_model **out, struct mc_err *err) {
    *out = NULL;
    struct mc_model *m = mc_calloc(1, sizeof(*m));
    if (!m)
        return mc_err_set(err, MC_ENOMEM, "model allocation failed");
    int rc = mc_gguf_open(path, &m->gguf, err);
    if (rc != MC_OK)
        goto out_free;
    if ((rc = read_arch(m, err)) || (rc = read_hparams(m, err)) || (rc = load_tensors(m, err)) ||
        (rc = load_chat_template(m, err))) {
        mc_err_prefix(err, "%s", path);
        goto out_free;
    }
    read_name(m, path);
    pack_weights(m);
    if ((rc = mc_tokenizer_load(m->gguf, &m->tok, err)) != MC_OK) {
        mc_err_prefix(err, "%s", path);
        goto out_free;
    }
    if (mc_tokenizer_n_vocab(m->tok) > m->hp.n_vocab) {
        rc = mc_err_set(err, MC_EFORMAT, "%s: tokenizer has %d tokens but token_embd only %d rows",
                        path, mc_tokenizer_n_vocab(m->tok), m->hp.n_vocab);
        goto out_free;
    }
    *out = m;
    return MC_OK;

out_free:
    mc_model_free(m);
    return rc;
}

void mc_model_free(struct mc_model *m) {
    if (!m)
        return;
    mc_tokenizer_free(m->tok);
    mc_free(m->chat_template);
    mc_free(m->layers);
    if (m->pack_map)
        munmap(m->pack_map, m->pack_map_bytes);
    mc_gguf_close(m->gguf);
    mc_free(m);
}

const struct mc_hparams *mc_model_hparams(const struct mc_model *m) {
    return &m->hp;
}

const struct mc_tokenizer *mc_model_tokenizer(const struct mc_model *m) {
    return m->tok;
}

const struct mc_gguf *mc_model_gguf(const struct mc_model *m) {
    return m->gguf;
}

const char *mc_model_chat_template(const struct mc_model *m) {
    return m->chat_template;
}

uint64_t mc_model_bytes_per_token(const struct mc_model *m) {
    const struct mc_hparams *hp = &m->hp;
    uint64_t total = weight_bytes(&m->output) + m->tok_embd.row_bytes;
    for (int il = 0; il < hp->n_layer; il++) {
        const struct layer *L = &m->layers[il];
        total += weight_bytes(&L->wq) + weight_bytes(&L->wk) + weight_bytes(&L->wv) +
                 weight_bytes(&L->wo) + weight_bytes(&L->w_gate) + weight_bytes(&L->w_up) +
                 weight_bytes(&L->w_down) + 2 * (uint64_t)hp->n_embd * sizeof(float);
    }
    return total + (uint64_t)hp->n_embd * sizeof(float);
}

/* ---- KV cache ------------------------------------------------------------------ */

size_t mc_kv_bytes(const struct mc_model *m, int32_t n_ctx) {
    const struct mc_hparams *hp = &m->hp;
    return 2 * (size_t)hp->n_layer * (size_t)n_ctx * (size_t)hp->n_head_kv * (size_t)hp->head_dim *
           sizeof(float);
}

int mc_kv_create(const struct mc_model *m, int32_t n_ctx, struct mc_kv **out, struct mc_err *err) {
    *out = NULL;
    if (n_ctx < 1 || n_ctx > MAX_KV_CTX)
        return mc_err_set(err, MC_EINVAL, "kv cache size %d is out of range 1..%d", n_ctx,
                          MAX_KV_CTX);
    struct mc_kv *kv = mc_calloc(1, sizeof(*kv));
    if (!kv)
        return mc_err_set(err, MC_ENOMEM, "kv cache allocation failed");
    kv->m = m;
    kv->n_ctx = n_ctx;
    kv->kv_dim = m->hp.n_head_kv * m->hp.head_dim;
    size_t n = (size_t)m->hp.n_layer * (size_t)n_ctx * (size_t)kv->kv_dim;
    kv->k = mc_malloc(n * sizeof(float));
    kv->v = mc_malloc(n * sizeof(float));
    if (!kv->k || !kv->v) {
        mc_kv_free(kv);
        return mc_err_set(err, MC_ENOMEM, "kv cache allocation failed (%zu bytes)",
                          mc_kv_bytes(m, n_ctx));
    }
    *out = kv;
    return MC_OK;
}

void mc_kv_free(struct mc_kv *kv) {
    if (!kv)
        return;
    mc_free(kv->k);
    mc_free(kv->v);
    mc_free(kv);
}

int32_t mc_kv_n_ctx(const struct mc_kv *kv) {
    return kv->n_ctx;
}

int32_t mc_kv_n_used(const struct mc_kv *kv) {
    return kv->n_used;
}

void mc_kv_truncate(struct mc_kv *kv, int32_t n) {
    if (n < 0)
        n = 0;
    if (n < kv->n_used)
        kv->n_used = n;
}

/* ---- Context ------------------------------------------------------------------- */

static size_t max_work(const struct mc_model *m, int32_t rows) {
    size_t w = mc_matmul_work_size(m->output.type, m->output.cols, rows);
    for (int il = 0; il < m->hp.n_layer; il++) {
        const struct layer *L = &m->layers[il];
        const struct weight *ws[7] = {&L->wq,     &L->wk,   &L->wv,    &L->wo,
                                      &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++) {
            size_t s = mc_matmul_work_size(ws[i]->type, ws[i]->cols, rows);
            if (s > w)
                w = s;
        }
    }
    return w;
}

int mc_ctx_create(const struct mc_model *m, int32_t max_rows, int n_threads, struct mc_ctx **out,
                  struct mc_err *err) {
    *out = NULL;
    if (max_rows < 1 || max_rows > MAX_ROWS)
        return mc_err_set(err, MC_EINVAL, "batch size %d is out of range 1..%d", max_rows,
                          MAX_ROWS);
    struct mc_ctx *c = mc_calloc(1, sizeof(*c));
    if (!c)
        return mc_err_set(err, MC_ENOMEM, "context allocation failed");
    c->m = m;
    c->max_rows = max_rows;
    int rc = mc_pool_create(n_threads, &c->pool, err);
    if (rc != MC_OK) {
        mc_free(c);
        return rc;
    }
    const struct mc_hparams *hp = &m->hp;
    size_t r = (size_t)max_rows;
    size_t dq = (size_t)hp->n_head * hp->head_dim, dkv = (size_t)hp->n_head_kv * hp->head_dim;
    c->x = mc_malloc(r * hp->n_embd * sizeof(float));
    c->xn = mc_malloc(r * hp->n_embd * sizeof(float));
    c->q = mc_malloc(r * dq * sizeof(float));
    c->k = mc_malloc(r * dkv * sizeof(float));
    c->v = mc_malloc(r * dkv * sizeof(float));
    c->att = mc_malloc(r * dq * sizeof(float));
    c->proj = mc_malloc(r * hp->n_embd * sizeof(float));
    c->gate = mc_malloc(r * hp->n_ff * sizeof(float));
    c->up = mc_malloc(r * hp->n_ff * sizeof(float));
    c->rope = mc_malloc(r * hp->n_rot * sizeof(float));
    c->work_bytes = max_work(m, max_rows);
    int nt = mc_pool_n_threads(c->pool);
    c->twork_bytes = (max_work(m, 1) + 63) & ~(size_t)63;
    c->twork = mc_malloc((size_t)nt * (c->twork_bytes ? c->twork_bytes : 64));
    c->trc = mc_calloc((size_t)nt, sizeof(int));
    c->work = mc_malloc(c->work_bytes ? c->work_bytes : 1);
    c->spans = mc_malloc(2 * r * sizeof(*c->spans));
    if (!c->x || !c->xn || !c->q || !c->k || !c->v || !c->att || !c->proj || !c->gate || !c->up ||
        !c->rope || !c->work || !c->twork || !c->trc || !c->spans) {
        mc_ctx_free(c);
        return mc_err_set(err, MC_ENOMEM, "context buffers for %d rows: allocation failed",
                          max_rows);
    }
    *out = c;
    return MC_OK;
}

void mc_ctx_free(struct mc_ctx *c) {
    if (!c)
        return;
    mc_pool_free(c->pool);
    float *bufs[] = {c->x,    c->xn,   c->q,  c->k,    c->v,     c->att,
                     c->proj, c->gate, c->up, c->rope, c->scores};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        mc_free(bufs[i]);
    mc_free(c->work);
    mc_free(c->twork);
    mc_free(c->trc);
    mc_free(c->spans);
    mc_free(c);
}

int mc_ctx_n_threads(const struct mc_ctx *c) {
    return mc_pool_n_threads(c->pool);
}

struct mc_pool *mc_ctx_pool(struct mc_ctx *c) {
    return c->pool;
}

const struct mc_model *mc_ctx_model(const struct mc_ctx *c) {
    return c->m;
}

int32_t mc_ctx_max_rows(const struct mc_ctx *c) {
    return c->max_rows;
}

/* Grows the per-thread score buffers to hold n positions. Called before a batch, so
 * attention itself never allocates. */
static int ensure_scores(struct mc_ctx *c, int32_t n, struct mc_err *err) {
    if (n <= c->scores_cap)
        return MC_OK;
    int32_t cap = c->scores_cap ? c->scores_cap : 256;
    while (cap < n)
        cap *= 2;
    size_t nt = (size_t)mc_pool_n_threads(c->pool);
    float *s = mc_realloc(c->scores, nt * (size_t)cap * sizeof(float));
    if (!s)
        return mc_err_set(err, MC_ENOMEM, "attention scratch for %d positions: allocation failed",
                          cap);
    c->scores = s;
    c->scores_cap = cap;
    return MC_OK;
}

/* ---- Forward steps --------------------------------------------------------------- */

/* rows rows of w starting at data (inside w's matrix) times n rows of x, in w's layout
 * (packed or GGUF). */
static int weight_matmul(const struct weight *w, const void *data, int64_t rows, const float *x,
                         int64_t n, float *y, void *work, struct mc_pool *pool,
                         struct mc_err *err) {
    if (w->packed)
        return mc_matmul_packed(w->type, data, rows, w->cols, x, n, y, work, pool, err);
    return mc_matmul(w->type, data, rows, w->cols, x, n, y, work, pool, err);
}

/* y (n, w->rows) = x (n, w->cols) · Wᵀ. The single place where a weight multiplies
 * activations: per-row adapter deltas belong here. */
static int proj(struct mc_ctx *c, const struct weight *w, const float *x, float *y, int32_t n,
                struct mc_err *err) {
    return weight_matmul(w, w->data, w->rows, x, n, y, c->work, c->pool, err);
}

/* A layer projection: the base product for all rows, then, when some row carries an
 * adapter, the hook adds the per-row low-rank terms. */
static int layer_proj(struct mc_ctx *c, enum mc_proj which, const struct weight *w, const float *x,
                      float *y, int32_t n, struct mc_err *err) {
    if (!c->any_adapter)
        return proj(c, w, x, y, n, err);
    int32_t n_spans = 0;
    if (c->prefetch)
        n_spans = c->prefetch(c->hook_user, c->layer, which, c->rows, n, c->spans, 2 * c->max_rows);
    int rc = mc_matmul_prefetch(w->packed, w->type, w->data, w->rows, w->cols, x, n, y, c->work,
                                c->pool, c->spans, n_spans, err);
    if (rc != MC_OK)
        return rc;
    return c->hook(c->hook_user, c->layer, which, c->rows, n, x, w->cols, y, w->rows, err);
}

void mc_ctx_set_proj_hook(struct mc_ctx *c, mc_proj_hook_fn fn, mc_proj_prefetch_fn prefetch,
                          void *user) {
    c->hook = fn;
    c->prefetch = fn ? prefetch : NULL;
    c->hook_user = fn ? user : NULL;
}

static void add_bias(float *y, const float *b, int32_t n, int64_t width) {
    if (!b)
        return;
    for (int32_t r = 0; r < n; r++)
        for (int64_t i = 0; i < width; i++)
            y[r * width + i] += b[i];
}

static void rmsnorm_rows(float *out, const float *x, const float *w, int32_t n, int64_t d,
                         float eps) {
    for (int32_t r = 0; r < n; r++)
        mc_rmsnorm(out + r * d, x + r * d, w, d, eps);
}

/* Embedding rows; quantized tables are dequantized one row at a time. */
static int embed(struct mc_ctx *c, struct mc_err *err) {
    const struct weight *e = &c->m->tok_embd;
    for (int32_t r = 0; r < c->n_rows; r++) {
        const uint8_t *src = (const uint8_t *)e->data + (size_t)c->rows[r].token * e->row_bytes;
        float *dst = c->x + (size_t)r * e->cols;
        int rc = e->packed ? mc_dequantize_row_packed(e->type, src, dst, e->cols, err)
                           : mc_dequantize_row(e->type, src, dst, e->cols, err);
        if (rc != MC_OK)
            return rc;
    }
    return MC_OK;
}

/* cos/sin of every rotated pair of every row, as ggml computes them: the angle of pair
 * i is pos * base^(-2i/n_rot), the power built by repeated multiplication in float,
 * then divided by the file's per-pair factor and by the linear scaling factor. */
static void rope_tables(struct mc_ctx *c) {
    const struct mc_hparams *hp = &c->m->hp;
    int32_t half = hp->n_rot / 2;
    float theta_scale = powf(hp->rope_base, -2.0f / (float)hp->n_rot);
    float freq_scale = 1.0f / hp->rope_scale;
    for (int32_t r = 0; r < c->n_rows; r++) {
        float *t = c->rope + (size_t)r * hp->n_rot;
        float theta_base = (float)c->rows[r].pos;
        for (int32_t i = 0; i < half; i++) {
            float ff = c->m->rope_freqs ? c->m->rope_freqs[i] : 1.0f;
            float theta = freq_scale * (theta_base / ff);
            t[2 * i] = cosf(theta);
            t[2 * i + 1] = sinf(theta);
            theta_base *= theta_scale;
        }
    }
}

/* Rotates heads h0..h1-1 (of n_heads) of row r of x (n, n_heads * head_dim). */
static void rope_heads(const struct mc_ctx *c, float *x, int32_t n_heads, int32_t r, int32_t h0,
                       int32_t h1) {
    const struct mc_hparams *hp = &c->m->hp;
    int32_t half = hp->n_rot / 2, hd = hp->head_dim;
    const float *t = c->rope + (size_t)r * hp->n_rot;
    for (int32_t h = h0; h < h1; h++) {
        float *v = x + ((size_t)r * n_heads + h) * hd;
        for (int32_t i = 0; i < half; i++) {
            /* llama: adjacent pairs (GGUF stores q/k permuted for this); qwen2
             * (NEOX): element i pairs with element i + n_rot/2. */
            int32_t a = c->m->rope_neox ? i : 2 * i;
            int32_t b = c->m->rope_neox ? i + half : 2 * i + 1;
            float x0 = v[a], x1 = v[b];
            v[a] = x0 * t[2 * i] - x1 * t[2 * i + 1];
            v[b] = x0 * t[2 * i + 1] + x1 * t[2 * i];
        }
    }
}

static void rope_apply(struct mc_ctx *c, float *x, int32_t n_heads) {
    for (int32_t r = 0; r < c->n_rows; r++)
        rope_heads(c, x, n_heads, r, 0, n_heads);
}

static void kv_store(struct mc_ctx *c) {
    int32_t dkv = c->m->hp.n_head_kv * c->m->hp.head_dim;
    for (int32_t r = 0; r < c->n_rows; r++) {
        struct mc_kv *kv = c->rows[r].kv;
        size_t off = ((size_t)c->layer * kv->n_ctx + (size_t)c->rows[r].pos) * dkv;
        memcpy(kv->k + off, c->k + (size_t)r * dkv, (size_t)dkv * sizeof(float));
        memcpy(kv->v + off, c->v + (size_t)r * dkv, (size_t)dkv * sizeof(float));
    }
}

/* Portable dot product and axpy on GCC vector types: 8 floats per operation (two SSE
 * registers on a baseline x86-64 build), two independent accumulators; llama_avx2.c has
 * the AVX2/FMA versions. Head sizes are usually multiples of 16; the tail is scalar. */
typedef float v8f __attribute__((vector_size(32)));

static float dot_f32(const float *a, const float *b, int32_t n) {
    v8f acc0 = {0}, acc1 = {0}, x0, y0, x1, y1;
    int32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        memcpy(&x0, a + i, sizeof(x0));
        memcpy(&y0, b + i, sizeof(y0));
        memcpy(&x1, a + i + 8, sizeof(x1));
        memcpy(&y1, b + i + 8, sizeof(y1));
        acc0 += x0 * y0;
        acc1 += x1 * y1;
    }
    acc0 += acc1;
    float s =
        ((acc0[0] + acc0[4]) + (acc0[1] + acc0[5])) + ((acc0[2] + acc0[6]) + (acc0[3] + acc0[7]));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* y += a * x */
static void axpy_f32(float *y, float a, const float *x, int32_t n) {
    v8f va = {a, a, a, a, a, a, a, a}, vx, vy;
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&vx, x + i, sizeof(vx));
        memcpy(&vy, y + i, sizeof(vy));
        vy += va * vx;
        memcpy(y + i, &vy, sizeof(vy));
    }
    for (; i < n; i++)
        y[i] += a * x[i];
}

/* One (row, head): softmax(q·Kᵀ / sqrt(hd)) · V over the row's positions 0..pos. */
static void attend_one(struct mc_ctx *c, int32_t r, int32_t h, float *s) {
    const struct mc_hparams *hp = &c->m->hp;
    int32_t hd = hp->head_dim, dkv = hp->n_head_kv * hd;
    int32_t g = h / (hp->n_head / hp->n_head_kv);
    const struct mc_kv *kv = c->rows[r].kv;
    int32_t n = c->rows[r].pos + 1;
    const float *q = c->q + ((size_t)r * hp->n_head + h) * hd;
    const float *kb = kv->k + (size_t)c->layer * kv->n_ctx * dkv + (size_t)g * hd;
    const float *vb = kv->v + (size_t)c->layer * kv->n_ctx * dkv + (size_t)g * hd;
    float scale = 1.0f / sqrtf((float)hd);
    bool avx2 = c->simd >= MC_SIMD_AVX2;

    for (int32_t t = 0; t < n; t++) {
        const float *k = kb + (size_t)t * dkv;
        s[t] = (avx2 ? mc_attn_dot_avx2(q, k, hd) : dot_f32(q, k, hd)) * scale;
    }
    mc_softmax(s, n);

    float *o = c->att + ((size_t)r * hp->n_head + h) * hd;
    memset(o, 0, (size_t)hd * sizeof(float));
    for (int32_t t = 0; t < n; t++) {
        if (avx2)
            mc_attn_axpy_avx2(o, s[t], vb + (size_t)t * dkv, hd);
        else
            axpy_f32(o, s[t], vb + (size_t)t * dkv, hd);
    }
}

static void attend_part(void *arg, int ith, int nth) {
    struct mc_ctx *c = arg;
    int32_t n_head = c->m->hp.n_head;
    int32_t n_tasks = c->n_rows * n_head;
    float *s = c->scores + (size_t)ith * c->scores_cap;
    /* Strided split: prompt rows have growing lengths, so interleaving balances them. */
    for (int32_t t = ith; t < n_tasks; t += nth)
        attend_one(c, t / n_head, t % n_head, s);
}

/* Waking the pool costs microseconds; below this many multiply-adds the calling thread
 * does the attention alone. */
enum { ATTN_POOL_MIN_FLOPS = 1 << 16 };

static bool attention_is_small(const struct mc_ctx *c) {
    int64_t work = 0;
    for (int32_t r = 0; r < c->n_rows; r++)
        work += (int64_t)(c->rows[r].pos + 1) * c->m->hp.n_head * c->m->hp.head_dim * 2;
    return work < ATTN_POOL_MIN_FLOPS;
}

/* ---- Decode path (one row) ------------------------------------------------------
 *
 * With a single row every projection is a matrix-vector product and the cost of waking
 * the pool (about one per matmul, ~100 per token) matters, most of all on a machine with
 * more threads than free cores. So for one row the projections that can run side by
 * side share one pool job, each thread taking a slice of the rows of each matrix with
 * its own scratch: q/k/v, rope, the cache write and the attention of a thread's own
 * key/value groups form one job (a head only needs its own group), gate/up and SwiGLU
 * another. Four jobs per layer instead of eight. The per-row results are the same as
 * mc_matmul's over all rows: a row's dot product does not depend on the slicing. */

/* Rows [*r0, *r1) of `rows` for thread ith of nth, in multiples of `align`. */
static void slice(int64_t rows, int ith, int nth, int64_t align, int64_t *r0, int64_t *r1) {
    int64_t chunk = ((rows + nth - 1) / nth + align - 1) / align * align;
    *r0 = (int64_t)ith * chunk < rows ? (int64_t)ith * chunk : rows;
    *r1 = *r0 + chunk < rows ? *r0 + chunk : rows;
}

/* y[r0..r1) = rows r0..r1 of W · x, for one row of activations, on the calling thread. */
static int proj_rows(struct mc_ctx *c, const struct weight *w, const float *x, float *y, int64_t r0,
                     int64_t r1, int ith) {
    if (r1 <= r0)
        return MC_OK;
    void *work = (uint8_t *)c->twork + (size_t)ith * c->twork_bytes;
    const uint8_t *data = (const uint8_t *)w->data + (size_t)r0 * w->row_bytes;
    return weight_matmul(w, data, r1 - r0, x, 1, y + r0, work, NULL, NULL);
}

static void attn_decode_part(void *arg, int ith, int nth) {
    struct mc_ctx *c = arg;
    const struct layer *L = c->cur;
    const struct mc_hparams *hp = &c->m->hp;
    int32_t hd = hp->head_dim, gqa = hp->n_head / hp->n_head_kv;
    int32_t g0 = (int32_t)((int64_t)ith * hp->n_head_kv / nth);
    int32_t g1 = (int32_t)((int64_t)(ith + 1) * hp->n_head_kv / nth);
    int64_t q0 = (int64_t)g0 * gqa * hd, q1 = (int64_t)g1 * gqa * hd;
    int64_t k0 = (int64_t)g0 * hd, k1 = (int64_t)g1 * hd;
    int rc;
    if ((rc = proj_rows(c, &L->wq, c->xn, c->q, q0, q1, ith)) ||
        (rc = proj_rows(c, &L->wk, c->xn, c->k, k0, k1, ith)) ||
        (rc = proj_rows(c, &L->wv, c->xn, c->v, k0, k1, ith))) {
        c->trc[ith] = rc;
        return;
    }
    for (int64_t i = q0; L->bq && i < q1; i++)
        c->q[i] += L->bq[i];
    for (int64_t i = k0; L->bk && i < k1; i++)
        c->k[i] += L->bk[i];
    for (int64_t i = k0; L->bv && i < k1; i++)
        c->v[i] += L->bv[i];
    rope_heads(c, c->q, hp->n_head, 0, g0 * gqa, g1 * gqa);
    rope_heads(c, c->k, hp->n_head_kv, 0, g0, g1);

    struct mc_kv *kv = c->rows[0].kv;
    size_t off = ((size_t)c->layer * kv->n_ctx + (size_t)c->rows[0].pos) * kv->kv_dim + k0;
    memcpy(kv->k + off, c->k + k0, (size_t)(k1 - k0) * sizeof(float));
    memcpy(kv->v + off, c->v + k0, (size_t)(k1 - k0) * sizeof(float));
    for (int32_t h = g0 * gqa; h < g1 * gqa; h++)
        attend_one(c, 0, h, c->scores + (size_t)ith * c->scores_cap);
    c->trc[ith] = MC_OK;
}

static void ffn_decode_part(void *arg, int ith, int nth) {
    struct mc_ctx *c = arg;
    const struct layer *L = c->cur;
    int64_t r0, r1;
    int rc;
    slice(c->m->hp.n_ff, ith, nth, 32, &r0, &r1);
    if ((rc = proj_rows(c, &L->w_gate, c->xn, c->gate, r0, r1, ith)) ||
        (rc = proj_rows(c, &L->w_up, c->xn, c->up, r0, r1, ith))) {
        c->trc[ith] = rc;
        return;
    }
    if (r1 > r0)
        mc_silu_mul(c->gate + r0, c->up + r0, r1 - r0);
    c->trc[ith] = MC_OK;
}

/* Runs a decode job and returns the first thread's error, with a message. */
static int run_decode_job(struct mc_ctx *c, mc_pool_fn fn, const struct layer *L,
                          struct mc_err *err) {
    c->cur = L;
    mc_pool_run(c->pool, fn, c);
    for (int i = 0; i < mc_pool_n_threads(c->pool); i++)
        if (c->trc[i] != MC_OK)
            return mc_err_set(err, c->trc[i], "layer %d: matrix product failed (%s)", c->layer,
                              mc_strerror(c->trc[i]));
    return MC_OK;
}

/* The decode path needs one row and at least one key/value group per thread. A row with
 * an adapter takes the general path, where the projection hook runs. */
static bool use_decode_path(const struct mc_ctx *c) {
    return c->n_rows == 1 && c->m->hp.n_head_kv >= mc_pool_n_threads(c->pool) && !c->any_adapter;
}

static int attention_block(struct mc_ctx *c, const struct layer *L, struct mc_err *err) {
    const struct mc_hparams *hp = &c->m->hp;
    int32_t n = c->n_rows, d = hp->n_embd;
    int32_t dq = hp->n_head * hp->head_dim, dkv = hp->n_head_kv * hp->head_dim;
    int rc;

    rmsnorm_rows(c->xn, c->x, L->attn_norm, n, d, hp->rms_eps);

    if (use_decode_path(c)) {
        if ((rc = run_decode_job(c, attn_decode_part, L, err)))
            return rc;
        goto out_proj;
    }
    if ((rc = layer_proj(c, MC_PROJ_Q, &L->wq, c->xn, c->q, n, err)) ||
        (rc = layer_proj(c, MC_PROJ_K, &L->wk, c->xn, c->k, n, err)) ||
        (rc = layer_proj(c, MC_PROJ_V, &L->wv, c->xn, c->v, n, err)))
        return rc;
    add_bias(c->q, L->bq, n, dq);
    add_bias(c->k, L->bk, n, dkv);
    add_bias(c->v, L->bv, n, dkv);

    rope_apply(c, c->q, hp->n_head);
    rope_apply(c, c->k, hp->n_head_kv);

    /* Every row's K/V goes into its cache before any attention, so a prompt row sees
     * the earlier rows of its own sequence from the same batch. */
    kv_store(c);
    if (attention_is_small(c))
        attend_part(c, 0, 1);
    else
        mc_pool_run(c->pool, attend_part, c);

out_proj:
    if ((rc = layer_proj(c, MC_PROJ_O, &L->wo, c->att, c->proj, n, err)))
        return rc;
    for (size_t i = 0; i < (size_t)n * d; i++)
        c->x[i] += c->proj[i];
    return MC_OK;
}

static int ffn_block(struct mc_ctx *c, const struct layer *L, struct mc_err *err) {
    const struct mc_hparams *hp = &c->m->hp;
    int32_t n = c->n_rows, d = hp->n_embd;
    int rc;

    rmsnorm_rows(c->xn, c->x, L->ffn_norm, n, d, hp->rms_eps);

    if (use_decode_path(c)) {
        if ((rc = run_decode_job(c, ffn_decode_part, L, err)))
            return rc;
    } else {
        if ((rc = layer_proj(c, MC_PROJ_GATE, &L->w_gate, c->xn, c->gate, n, err)) ||
            (rc = layer_proj(c, MC_PROJ_UP, &L->w_up, c->xn, c->up, n, err)))
            return rc;
        mc_silu_mul(c->gate, c->up, (int64_t)n * hp->n_ff);
    }

    if ((rc = layer_proj(c, MC_PROJ_DOWN, &L->w_down, c->gate, c->proj, n, err)))
        return rc;
    for (size_t i = 0; i < (size_t)n * d; i++)
        c->x[i] += c->proj[i];
    return MC_OK;
}

/* Final norm and output matrix for the rows that want logits, gathered to the front. */
static int output_block(struct mc_ctx *c, float *logits, float *hidden, struct mc_err *err) {
    const struct mc_hparams *hp = &c->m->hp;
    int32_t d = hp->n_embd, n_out = 0;
    for (int32_t r = 0; r < c->n_rows; r++) {
        if (!c->rows[r].want_logits)
            continue;
        mc_rmsnorm(c->xn + (size_t)n_out * d, c->x + (size_t)r * d, c->m->out_norm, d, hp->rms_eps);
        n_out++;
    }
    if (n_out == 0)
        return MC_OK;
    if (hidden)
        memcpy(hidden, c->xn, (size_t)n_out * d * sizeof(float));
    if (!logits)
        return MC_OK;
    return proj(c, &c->m->output, c->xn, logits, n_out, err);
}

/* Checks the batch and sets each kv's `next` to one past its last row. */
static int validate_batch(struct mc_ctx *c, const struct mc_batch_row *rows, int32_t n,
                          struct mc_err *err) {
    const struct mc_model *m = c->m;
    if (n < 1 || n > c->max_rows)
        return mc_err_set(err, MC_EINVAL, "batch of %d rows is out of range 1..%d", n, c->max_rows);
    for (int32_t r = 0; r < n; r++) {
        struct mc_kv *kv = rows[r].kv;
        if (!kv || kv->m != m)
            return mc_err_set(err, MC_EINVAL, "row %d: kv cache missing or made for another model",
                              r);
        kv->next = kv->n_used;
    }
    for (int32_t r = 0; r < n; r++) {
        struct mc_kv *kv = rows[r].kv;
        if (rows[r].token < 0 || rows[r].token >= m->hp.n_vocab)
            return mc_err_set(err, MC_EINVAL, "row %d: token id %d is out of range 0..%d", r,
                              rows[r].token, m->hp.n_vocab - 1);
        if (rows[r].pos != kv->next)
            return mc_err_set(err, MC_EINVAL, "row %d: position %d, expected %d for its sequence",
                              r, rows[r].pos, kv->next);
        if (rows[r].pos >= kv->n_ctx)
            return mc_err_set(err, MC_EFULL, "row %d: position %d exceeds kv cache size %d", r,
                              rows[r].pos, kv->n_ctx);
        kv->next++;
    }
    c->any_adapter = false;
    for (int32_t r = 0; r < n; r++)
        c->any_adapter |= rows[r].adapter != NULL;
    if (c->any_adapter && !c->hook)
        return mc_err_set(err, MC_EINVAL, "a row has an adapter but no projection hook is set");
    return MC_OK;
}

int mc_forward(struct mc_ctx *c, const struct mc_batch_row *rows, int32_t n_rows, float *logits,
               float *hidden, struct mc_err *err) {
    int rc = validate_batch(c, rows, n_rows, err);
    if (rc != MC_OK)
        return rc;
    int32_t max_pos = 0;
    for (int32_t r = 0; r < n_rows; r++)
        if (rows[r].pos > max_pos)
            max_pos = rows[r].pos;
    if ((rc = ensure_scores(c, max_pos + 1, err)) != MC_OK)
        return rc;
    c->rows = rows;
    c->n_rows = n_rows;
    c->simd = mc_simd_get();

    if ((rc = embed(c, err)) != MC_OK)
        return rc;
    rope_tables(c);
    for (c->layer = 0; c->layer < c->m->hp.n_layer; c->layer++) {
        const struct layer *L = &c->m->layers[c->layer];
        if ((rc = attention_block(c, L, err)) || (rc = ffn_block(c, L, err)))
            return rc;
    }
    if ((rc = output_block(c, logits, hidden, err)) != MC_OK)
        return rc;

    /* Only now, with nothing left to fail, do the sequences advance. */
    for (int32_t r = 0; r < n_rows; r++)
        rows[r].kv->n_used = rows[r].kv->next;
    return MC_OK;
}
