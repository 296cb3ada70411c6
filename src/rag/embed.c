/* embed.c - mean-pooled hidden-state embeddings, batched over many texts (see embed.h).
 *
 * A model embedder owns, created on first use: one forward context of up to MAX_ROWS rows
 * and a small pool of KV caches of max_tokens positions. Texts are tokenized, then laid
 * out as rows one after another: a forward call takes pieces of consecutive texts until
 * its rows are full, each text in its own KV cache; a text cut by the end of a call goes
 * on in the next call with the same cache. Hidden states are summed per text in double
 * precision, then divided by the token count and L2-normalised.
 *
 * The pool holds KV_POOL caches, fewer when a cache is large (KV_BUDGET_BYTES in all), and
 * a call holds at most as many texts as there are caches, which keeps a continuing text's
 * cache distinct from the new texts' caches (they are assigned round robin).
 *
 * Does not implement other poolings (CLS, last token) nor instruction prefixes. */
#include "rag/embed.h"

#include "base/mem.h"
#include "model/gguf.h"

#include <math.h>
#include <pthread.h>
#include <sodium.h> /* crypto_generichash: the weights' fingerprint */
#include <stdio.h>
#include <string.h>

#define MAX_ROWS           64 /* rows per forward call */
#define KV_POOL            16 /* KV caches at most */
#define KV_BUDGET_BYTES    ((size_t)256 << 20)
#define DEFAULT_MAX_TOKENS 512

struct mc_embedder {
    char name[MC_EMBED_NAME_MAX + 1];
    int dim;
    mc_embed_fn fn; /* custom embedders */
    void *fn_ctx;

    const struct mc_model *model; /* model embedders */
    int n_threads;
    int max_tokens;
    pthread_mutex_t lock;
    struct mc_ctx *ctx; /* created on first use */
    struct mc_kv *kv[KV_POOL];
    int n_kv;
    float *logits; /* (MAX_ROWS, n_vocab), required by mc_forward */
    float *hidden; /* (MAX_ROWS, dim) */
};

/* The embedder's name: the model's general.name and a fingerprint of its weights (the
 * first 4 MiB of the token embeddings, with their type and shape), so that vectors of
 * two different models that share a name and a width are never mixed in one index. */
static void model_embed_name(const struct mc_model *m, char *out, size_t size) {
    const struct mc_gguf_tensor *t = mc_gguf_find_tensor(mc_model_gguf(m), "token_embd.weight");
    uint8_t h[8] = {0};
    if (t) {
        crypto_generichash_state st;
        crypto_generichash_init(&st, NULL, 0, sizeof(h));
        int64_t shape[3] = {(int64_t)t->type, t->ne[0], t->ne[1]};
        crypto_generichash_update(&st, (const uint8_t *)shape, sizeof(shape));
        size_t n = t->size_bytes < ((size_t)4 << 20) ? t->size_bytes : (size_t)4 << 20;
        crypto_generichash_update(&st, t->data, n);
        crypto_generichash_final(&st, h, sizeof(h));
    }
    const char *name = mc_model_hparams(m)->name;
    snprintf(out, size, "%.*s#%02x%02x%02x%02x%02x%02x%02x%02x", MC_EMBED_NAME_MAX - 17, name, h[0],
             h[1], h[2], h[3], h[4], h[5], h[6], h[7]);
}

int mc_embedder_create(const struct mc_model *m, int n_threads, int max_tokens,
                       struct mc_embedder **out, struct mc_err *err) {
    *out = NULL;
    const struct mc_hparams *hp = mc_model_hparams(m);
    if (max_tokens < 0)
        return mc_err_set(err, MC_EINVAL, "max_tokens %d is negative", max_tokens);
    if (max_tokens == 0)
        max_tokens = DEFAULT_MAX_TOKENS;
    if (hp->n_ctx_train > 0 && max_tokens > hp->n_ctx_train)
        max_tokens = hp->n_ctx_train;
    struct mc_embedder *e = mc_calloc(1, sizeof(*e));
    if (!e)
        return mc_err_set(err, MC_ENOMEM, "out of memory creating an embedder");
    model_embed_name(m, e->name, sizeof(e->name));
    e->dim = hp->n_embd;
    e->model = m;
    e->n_threads = n_threads;
    e->max_tokens = max_tokens;
    pthread_mutex_init(&e->lock, NULL);
    *out = e;
    return MC_OK;
}

int mc_embedder_create_custom(const char *name, int dim, mc_embed_fn fn, void *ctx,
                              struct mc_embedder **out, struct mc_err *err) {
    *out = NULL;
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > MC_EMBED_NAME_MAX)
        return mc_err_set(err, MC_EINVAL, "embedder name must be 1..%d bytes, got %zu",
                          MC_EMBED_NAME_MAX, n);
    if (dim < 1 || dim > 65536)
        return mc_err_set(err, MC_EINVAL, "embedding dimension %d is out of range 1..65536", dim);
    if (!fn)
        return mc_err_set(err, MC_EINVAL, "embedder function is NULL");
    struct mc_embedder *e = mc_calloc(1, sizeof(*e));
    if (!e)
        return mc_err_set(err, MC_ENOMEM, "out of memory creating an embedder");
    memcpy(e->name, name, n + 1);
    e->dim = dim;
    e->fn = fn;
    e->fn_ctx = ctx;
    pthread_mutex_init(&e->lock, NULL);
    *out = e;
    return MC_OK;
}

void mc_embedder_free(struct mc_embedder *e) {
    if (!e)
        return;
    for (int i = 0; i < e->n_kv; i++)
        mc_kv_free(e->kv[i]);
    mc_ctx_free(e->ctx);
    mc_free(e->logits);
    mc_free(e->hidden);
    pthread_mutex_destroy(&e->lock);
    mc_free(e);
}

int mc_embedder_dim(const struct mc_embedder *e) {
    return e->dim;
}

const char *mc_embedder_name(const struct mc_embedder *e) {
    return e->name;
}

/* Creates the context, buffers and caches on first use. */
static int embedder_ready(struct mc_embedder *e, struct mc_err *err) {
    if (e->ctx)
        return MC_OK;
    const struct mc_hparams *hp = mc_model_hparams(e->model);
    size_t kv_bytes = mc_kv_bytes(e->model, e->max_tokens);
    int n_kv = kv_bytes ? (int)(KV_BUDGET_BYTES / kv_bytes) : KV_POOL;
    n_kv = n_kv < 1 ? 1 : n_kv > KV_POOL ? KV_POOL : n_kv;
    e->logits = mc_malloc((size_t)MAX_ROWS * (size_t)hp->n_vocab * sizeof(float));
    e->hidden = mc_malloc((size_t)MAX_ROWS * (size_t)hp->n_embd * sizeof(float));
    if (!e->logits || !e->hidden)
        return mc_err_set(err, MC_ENOMEM, "out of memory for embedding buffers");
    for (; e->n_kv < n_kv; e->n_kv++) {
        int rc = mc_kv_create(e->model, e->max_tokens, &e->kv[e->n_kv], err);
        if (rc != MC_OK)
            return rc;
    }
    return mc_ctx_create(e->model, MAX_ROWS, e->n_threads, &e->ctx, err);
}

/* Runs the rows of one forward call and adds each row's hidden state to its text's sum. */
static int run_rows(struct mc_embedder *e, const struct mc_batch_row *rows, const size_t *owner,
                    int32_t n_rows, double *sums, struct mc_err *err) {
    int rc = mc_forward(e->ctx, rows, n_rows, e->logits, e->hidden, err);
    if (rc != MC_OK)
        return rc;
    for (int32_t r = 0; r < n_rows; r++) {
        const float *h = e->hidden + (size_t)r * (size_t)e->dim;
        double *s = sums + owner[r] * (size_t)e->dim;
        for (int d = 0; d < e->dim; d++)
            s[d] += h[d];
    }
    return MC_OK;
}

static void finish_vector(const double *sum, int dim, float *out) {
    double norm = 0;
    for (int d = 0; d < dim; d++)
        norm += sum[d] * sum[d];
    norm = sqrt(norm);
    for (int d = 0; d < dim; d++)
        out[d] = norm > 0 ? (float)(sum[d] / norm) : 0.0f;
}

/* Embeds with the model; called with the lock held. */
static int embed_model(struct mc_embedder *e, const char *const *texts, const size_t *lens,
                       size_t n, float *out, struct mc_err *err) {
    int rc = embedder_ready(e, err);
    if (rc != MC_OK)
        return rc;
    const struct mc_tokenizer *tok = mc_model_tokenizer(e->model);
    double *sums = mc_calloc(n ? n : 1, (size_t)e->dim * sizeof(double));
    if (!sums)
        return mc_err_set(err, MC_ENOMEM, "out of memory embedding %zu texts", n);

    struct mc_batch_row rows[MAX_ROWS];
    size_t owner[MAX_ROWS];
    int32_t n_rows = 0;
    int n_seq_in_call = 0, slot = -1;
    for (size_t i = 0; i < n && rc == MC_OK; i++) {
        int32_t *ids = NULL;
        size_t n_ids = 0;
        rc = mc_tokenize(tok, texts[i], lens[i], true, false, &ids, &n_ids, err);
        if (rc != MC_OK)
            break;
        if (n_ids > (size_t)e->max_tokens)
            n_ids = (size_t)e->max_tokens;
        if (n_ids > 0) {
            if (n_seq_in_call == e->n_kv && n_rows > 0) {
                rc = run_rows(e, rows, owner, n_rows, sums, err);
                n_rows = 0;
                n_seq_in_call = 0;
            }
            slot = (slot + 1) % e->n_kv;
            mc_kv_truncate(e->kv[slot], 0);
            n_seq_in_call++;
        }
        for (size_t t = 0; t < n_ids && rc == MC_OK; t++) {
            rows[n_rows] = (struct mc_batch_row){
                .token = ids[t], .pos = (int32_t)t, .kv = e->kv[slot], .want_logits = true};
            owner[n_rows++] = i;
            if (n_rows == MAX_ROWS) {
                rc = run_rows(e, rows, owner, n_rows, sums, err);
                n_rows = 0;
                n_seq_in_call = t + 1 < n_ids; /* the text goes on in the next call */
            }
        }
        mc_free(ids);
    }
    if (rc == MC_OK && n_rows > 0)
        rc = run_rows(e, rows, owner, n_rows, sums, err);

    /* A text is only complete once its last rows ran, so normalise after the final call.
     * The mean and the sum have the same direction: dividing by the count is skipped. */
    if (rc == MC_OK)
        for (size_t i = 0; i < n; i++)
            finish_vector(sums + i * (size_t)e->dim, e->dim, out + i * (size_t)e->dim);
    mc_free(sums);
    return rc;
}

int mc_embed(struct mc_embedder *e, const char *const *texts, const size_t *lens, size_t n,
             float *out, struct mc_err *err) {
    pthread_mutex_lock(&e->lock);
    int rc = e->fn ? e->fn(e->fn_ctx, texts, lens, n, out, err)
                   : embed_model(e, texts, lens, n, out, err);
    pthread_mutex_unlock(&e->lock);
    return rc;
}
