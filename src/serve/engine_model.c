/* engine_model.c - the engine on a loaded model: the backend table over model.h and the
 * text streams of generate.h, and mc_engine_create.
 *
 * Each sequence gets its own KV cache (mc_kv_create, sized to its prompt plus its
 * completion limit) and its own text stream; the engine's one forward context (mc_ctx)
 * and its row buffer belong to the loop thread. Nothing is cached or shared between
 * sequences beyond the immutable model and the immutable, reference-counted adapters.
 *
 * Adapters: an mc_lora_runner is installed on the forward context as its projection
 * hook. Each batch row carries its request's adapter and scale; the base projection runs
 * once for the whole batch and the runner adds the low-rank terms, grouped by adapter.
 * The engine keeps every adapter in the batch alive until the forward returns. */
#include "serve/engine.h"

#include "adapter/lora.h"
#include "base/mem.h"
#include "model/generate.h"
#include "model/model.h"
#include "serve/engine_int.h"

struct model_backend {
    const struct mc_model *m;
    const struct mc_tokenizer *tok;
    struct mc_ctx *ctx;
    struct mc_lora_runner *runner; /* the projection hook on ctx */
    struct mc_lora_base shape;     /* what an adapter must be bound to */
    struct mc_batch_row *rows;     /* (max_rows) */
    int32_t max_rows;
};

static size_t mb_kv_bytes(void *impl, int32_t n_ctx) {
    struct model_backend *b = impl;
    return mc_kv_bytes(b->m, n_ctx);
}

static int mb_kv_create(void *impl, int32_t n_ctx, void **out, struct mc_err *err) {
    struct model_backend *b = impl;
    struct mc_kv *kv = NULL;
    int rc = mc_kv_create(b->m, n_ctx, &kv, err);
    *out = kv;
    return rc;
}

static void mb_kv_free(void *impl, void *kv) {
    (void)impl;
    mc_kv_free(kv);
}

static int mb_prepare(void *impl, int32_t max_rows, int n_threads, struct mc_err *err) {
    struct model_backend *b = impl;
    b->rows = mc_malloc((size_t)max_rows * sizeof(*b->rows));
    if (!b->rows)
        return mc_err_set(err, MC_ENOMEM, "out of memory for a batch of %d rows", max_rows);
    b->max_rows = max_rows;
    int rc = mc_ctx_create(b->m, max_rows, n_threads, &b->ctx, err);
    if (rc != MC_OK)
        return rc;
    return mc_lora_runner_create(b->ctx, &b->runner, err);
}

static int mb_adapter_check(void *impl, const struct mc_lora *adapter, struct mc_err *err) {
    struct model_backend *b = impl;
    if (mc_lora_fits(adapter, &b->shape))
        return MC_OK;
    return mc_err_set(err, MC_EINVAL,
                      "adapter '%s' is not bound to this model (%s, %d layers, n_embd %d); "
                      "open it against the served model",
                      mc_lora_info(adapter)->name, b->shape.arch, b->shape.n_layer,
                      b->shape.n_embd);
}

static int mb_forward(void *impl, const struct engine_row *rows, int32_t n_rows, float *logits,
                      struct mc_err *err) {
    struct model_backend *b = impl;
    MC_ASSERT(n_rows <= b->max_rows);
    for (int32_t i = 0; i < n_rows; i++)
        b->rows[i] = (struct mc_batch_row){
            .token = rows[i].token,
            .pos = rows[i].pos,
            .kv = rows[i].kv,
            .want_logits = rows[i].want_logits,
            .adapter = rows[i].adapter,
            .adapter_scale = rows[i].adapter_scale,
        };
    return mc_forward(b->ctx, b->rows, n_rows, logits, NULL, err);
}

static int mb_stream_create(void *impl, const struct engine_stream_params *p, void **out,
                            struct mc_err *err) {
    struct model_backend *b = impl;
    struct mc_gen_params gp = {
        .max_tokens = p->max_tokens,
        .stop = p->stop,
        .n_stop = (size_t)p->n_stop,
        .ignore_eos = p->ignore_eos,
        .n_logprobs = 0,
    };
    struct mc_gen_stream *s = NULL;
    int rc = mc_gen_stream_create(b->tok, &gp, &s, err);
    *out = s;
    return rc;
}

static enum engine_finish mb_stream_push(void *stream, int32_t token, bool last, const char **text,
                                         size_t *len) {
    switch (mc_gen_stream_push(stream, token, last, text, len)) {
    case MC_FINISH_NONE:
        return ENGINE_FINISH_NONE;
    case MC_FINISH_STOP:
        return ENGINE_FINISH_STOP;
    case MC_FINISH_LENGTH:
        return ENGINE_FINISH_LENGTH;
    }
    return ENGINE_FINISH_LENGTH;
}

static void mb_stream_free(void *stream) {
    mc_gen_stream_free(stream);
}

static void mb_destroy(void *impl) {
    struct model_backend *b = impl;
    mc_lora_runner_free(b->runner);
    mc_ctx_free(b->ctx);
    mc_free(b->rows);
    mc_free(b);
}

int mc_engine_create(const struct mc_model *m, const struct mc_engine_config *cfg,
                     struct mc_engine **out, struct mc_err *err) {
    *out = NULL;
    if (!m)
        return mc_err_set(err, MC_EINVAL, "no model given to the engine");
    struct model_backend *b = mc_calloc(1, sizeof(*b));
    if (!b)
        return mc_err_set(err, MC_ENOMEM, "out of memory for the engine backend");
    b->m = m;
    b->tok = mc_model_tokenizer(m);
    mc_lora_base_from_model(m, &b->shape);
    const struct mc_hparams *hp = mc_model_hparams(m);
    struct engine_backend be = {
        .impl = b,
        .n_vocab = hp->n_vocab,
        .n_ctx_train = hp->n_ctx_train,
        .kv_bytes = mb_kv_bytes,
        .kv_create = mb_kv_create,
        .kv_free = mb_kv_free,
        .adapter_check = mb_adapter_check,
        .prepare = mb_prepare,
        .forward = mb_forward,
        .stream_create = mb_stream_create,
        .stream_push = mb_stream_push,
        .stream_free = mb_stream_free,
        .destroy = mb_destroy,
    };
    return engine_create_with_backend(&be, cfg, out, err);
}
