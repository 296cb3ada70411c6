/* generate.c - the token-to-text stream (stop strings, UTF-8 boundaries, finish
 * reasons) and the single-sequence generation loop (see generate.h).
 *
 * The stream keeps a small "pending" buffer of bytes not yet released: at most the
 * longest proper prefix of a stop string plus an incomplete UTF-8 character, so it
 * stays under MC_GEN_MAX_STOP_LEN + 4 bytes between pushes. Released bytes are copied
 * into an output buffer that is sanitised on the way (invalid UTF-8 becomes U+FFFD), so
 * a caller can put them into JSON unchanged. Neither buffer is reallocated per token
 * once it has reached the size of the longest piece. The loop allocates its logits and
 * sampler once per call. Not here: batching of several sequences (the server's
 * scheduler drives mc_forward and the stream itself). */
#include "model/generate.h"

#include "base/mem.h"

#include <string.h>
#include <time.h>

enum { PIECE_CAP = 64 };

struct bytes {
    char *p;
    size_t len;
    size_t cap;
};

struct mc_gen_stream {
    const struct mc_tokenizer *tok;
    char *stop[MC_GEN_MAX_STOP];
    size_t stop_len[MC_GEN_MAX_STOP];
    size_t n_stop;
    int32_t max_tokens;
    bool ignore_eos;
    int32_t n_tokens;
    enum mc_finish finish;
    struct bytes pending;
    struct bytes out;
    char *piece;
    size_t piece_cap;
};

const char *mc_finish_name(enum mc_finish f) {
    switch (f) {
    case MC_FINISH_STOP:
        return "stop";
    case MC_FINISH_LENGTH:
        return "length";
    default:
        return "none";
    }
}

/* Grows b to hold n bytes; false when memory is short (the stream then drops text
 * rather than crash, and the caller sees a shorter output). */
static bool reserve(struct bytes *b, size_t n) {
    if (n <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < n)
        cap *= 2;
    char *p = mc_realloc(b->p, cap);
    if (!p)
        return false;
    b->p = p;
    b->cap = cap;
    return true;
}

int mc_gen_stream_create(const struct mc_tokenizer *tok, const struct mc_gen_params *p,
                         struct mc_gen_stream **out, struct mc_err *err) {
    *out = NULL;
    if (p->n_stop > MC_GEN_MAX_STOP)
        return mc_err_set(err, MC_EINVAL, "%zu stop strings exceed the limit of %d", p->n_stop,
                          MC_GEN_MAX_STOP);
    for (size_t i = 0; i < p->n_stop; i++) {
        size_t n = p->stop[i] ? strlen(p->stop[i]) : 0;
        if (n == 0 || n > MC_GEN_MAX_STOP_LEN)
            return mc_err_set(err, MC_EINVAL, "stop string %zu has length %zu (allowed 1..%d)", i,
                              n, MC_GEN_MAX_STOP_LEN);
    }
    struct mc_gen_stream *s = mc_calloc(1, sizeof(*s));
    if (!s)
        return mc_err_set(err, MC_ENOMEM, "stream allocation failed");
    s->tok = tok;
    s->max_tokens = p->max_tokens;
    s->ignore_eos = p->ignore_eos;
    s->piece_cap = PIECE_CAP;
    s->piece = mc_malloc(s->piece_cap);
    bool ok = s->piece && reserve(&s->pending, MC_GEN_MAX_STOP_LEN + PIECE_CAP) &&
              reserve(&s->out, 4 * (MC_GEN_MAX_STOP_LEN + PIECE_CAP));
    for (size_t i = 0; ok && i < p->n_stop; i++) {
        s->stop[i] = mc_strdup(p->stop[i]);
        s->stop_len[i] = strlen(p->stop[i]);
        s->n_stop = i + 1;
        ok = s->stop[i] != NULL;
    }
    if (!ok) {
        mc_gen_stream_free(s);
        return mc_err_set(err, MC_ENOMEM, "stream allocation failed");
    }
    *out = s;
    return MC_OK;
}

void mc_gen_stream_free(struct mc_gen_stream *s) {
    if (!s)
        return;
    for (size_t i = 0; i < s->n_stop; i++)
        mc_free(s->stop[i]);
    mc_free(s->pending.p);
    mc_free(s->out.p);
    mc_free(s->piece);
    mc_free(s);
}

int32_t mc_gen_stream_n_tokens(const struct mc_gen_stream *s) {
    return s->n_tokens;
}

/* ---- UTF-8 --------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p (n bytes available): 1..4, 0 if invalid,
 * -1 if it is a valid start cut short by the end of the buffer. */
static int utf8_seq(const unsigned char *p, size_t n) {
    unsigned c = p[0];
    int len;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, min = 0x10000;
    else
        return 0;
    unsigned cp = c & (0x7F >> len);
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n)
            return -1;
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

/* Appends n bytes to the output, replacing invalid sequences by U+FFFD. An incomplete
 * sequence at the end also becomes U+FFFD: callers pass one only when the stream ends. */
static void release(struct mc_gen_stream *s, const char *src, size_t n) {
    const unsigned char *p = (const unsigned char *)src;
    if (!reserve(&s->out, s->out.len + 3 * n + 1))
        return;
    size_t i = 0;
    while (i < n) {
        int l = utf8_seq(p + i, n - i);
        if (l > 0) {
            memcpy(s->out.p + s->out.len, p + i, (size_t)l);
            s->out.len += (size_t)l;
            i += (size_t)l;
        } else {
            memcpy(s->out.p + s->out.len, "\xEF\xBF\xBD", 3);
            s->out.len += 3;
            i++;
        }
    }
}

/* Where an incomplete (but so far valid) UTF-8 character starts at the end of p[0..n),
 * or n if the text ends on a boundary. */
static size_t utf8_cut(const char *src, size_t n) {
    const unsigned char *p = (const unsigned char *)src;
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned c = p[n - k];
        if ((c & 0xC0) == 0x80)
            continue;
        return utf8_seq(p + n - k, k) == -1 ? n - k : n;
    }
    return n;
}

/* ---- Stream -------------------------------------------------------------------- */

/* Longest suffix of pending that is a proper prefix of some stop string. */
static size_t stop_hold(const struct mc_gen_stream *s) {
    size_t hold = 0, n = s->pending.len;
    for (size_t i = 0; i < s->n_stop; i++) {
        size_t max = s->stop_len[i] - 1 < n ? s->stop_len[i] - 1 : n;
        for (size_t j = max; j > hold; j--) {
            if (memcmp(s->pending.p + n - j, s->stop[i], j) == 0) {
                hold = j;
                break;
            }
        }
    }
    return hold;
}

/* Earliest position of a complete stop string in pending, or -1. */
static long stop_find(const struct mc_gen_stream *s) {
    long best = -1;
    for (size_t i = 0; i < s->n_stop; i++) {
        const char *hit = memmem(s->pending.p, s->pending.len, s->stop[i], s->stop_len[i]);
        if (hit && (best < 0 || hit - s->pending.p < best))
            best = hit - s->pending.p;
    }
    return best;
}

static bool append_piece(struct mc_gen_stream *s, int32_t token) {
    int n = mc_token_to_piece(s->tok, token, false, s->piece, s->piece_cap);
    if (n > 0 && (size_t)n > s->piece_cap) {
        char *p = mc_realloc(s->piece, (size_t)n);
        if (!p)
            return false;
        s->piece = p;
        s->piece_cap = (size_t)n;
        n = mc_token_to_piece(s->tok, token, false, s->piece, s->piece_cap);
    }
    if (n <= 0)
        return true; /* special tokens and bad ids render as nothing */
    if (!reserve(&s->pending, s->pending.len + (size_t)n))
        return false;
    memcpy(s->pending.p + s->pending.len, s->piece, (size_t)n);
    s->pending.len += (size_t)n;
    return true;
}

/* Releases pending[0..n) and keeps the rest. */
static void release_prefix(struct mc_gen_stream *s, size_t n) {
    release(s, s->pending.p, n);
    memmove(s->pending.p, s->pending.p + n, s->pending.len - n);
    s->pending.len -= n;
}

static enum mc_finish end(struct mc_gen_stream *s, enum mc_finish why, size_t keep) {
    release(s, s->pending.p, keep);
    s->pending.len = 0;
    s->finish = why;
    return why;
}

enum mc_finish mc_gen_stream_push(struct mc_gen_stream *s, int32_t token, bool last,
                                  const char **text, size_t *len) {
    s->out.len = 0;
    *text = s->out.p;
    *len = 0;
    if (s->finish != MC_FINISH_NONE)
        return s->finish;
    s->n_tokens++;

    if (!s->ignore_eos && mc_tokenizer_is_eog(s->tok, token)) {
        end(s, MC_FINISH_STOP, s->pending.len);
    } else {
        append_piece(s, token);
        long at = stop_find(s);
        if (at >= 0)
            end(s, MC_FINISH_STOP, (size_t)at);
        else if (last || (s->max_tokens > 0 && s->n_tokens >= s->max_tokens))
            end(s, MC_FINISH_LENGTH, s->pending.len);
        else
            release_prefix(s, utf8_cut(s->pending.p, s->pending.len - stop_hold(s)));
    }
    *text = s->out.p;
    *len = s->out.len;
    return s->finish;
}

void mc_gen_stream_flush(struct mc_gen_stream *s, const char **text, size_t *len) {
    s->out.len = 0;
    if (s->finish == MC_FINISH_NONE)
        end(s, MC_FINISH_LENGTH, s->pending.len);
    *text = s->out.p;
    *len = s->out.len;
}

/* ---- Loop ---------------------------------------------------------------------- */

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Feeds tokens into kv in batches of the context's size; logits of the last one. */
static int prefill(struct mc_ctx *ctx, struct mc_kv *kv, const int32_t *ids, size_t n,
                   const struct mc_gen_params *gp, float *logits, struct mc_err *err) {
    int32_t max_rows = mc_ctx_max_rows(ctx);
    struct mc_batch_row *rows = mc_malloc((size_t)max_rows * sizeof(*rows));
    if (!rows)
        return mc_err_set(err, MC_ENOMEM, "batch allocation failed");
    int rc = MC_OK;
    for (size_t done = 0; done < n && rc == MC_OK;) {
        int32_t m = n - done < (size_t)max_rows ? (int32_t)(n - done) : max_rows;
        int32_t pos = mc_kv_n_used(kv);
        for (int32_t i = 0; i < m; i++) {
            rows[i].token = ids[done + (size_t)i];
            rows[i].pos = pos + i;
            rows[i].kv = kv;
            rows[i].want_logits = done + (size_t)i == n - 1;
            rows[i].adapter = gp->adapter;
            rows[i].adapter_scale = gp->adapter_scale;
        }
        rc = mc_forward(ctx, rows, m, logits, NULL, err);
        done += (size_t)m;
    }
    mc_free(rows);
    return rc;
}

struct loop {
    struct mc_ctx *ctx;
    struct mc_kv *kv;
    struct mc_sampler *smp;
    struct mc_gen_stream *st;
    const struct mc_gen_params *gp;
    float *logits;
    struct mc_logprob top[MC_GEN_MAX_LOGPROBS];
};

/* Samples, streams and feeds back until the end; returns the finish reason or an
 * error code (negative). */
static int decode(struct loop *L, mc_gen_fn fn, void *user, struct mc_err *err) {
    for (;;) {
        struct mc_gen_token t = {0};
        float lp = 0.0f;
        bool want_lp = L->gp->n_logprobs > 0;
        t.id = mc_sampler_sample(L->smp, L->logits, want_lp ? &lp : NULL, L->top,
                                 want_lp ? L->gp->n_logprobs : 0);
        mc_sampler_accept(L->smp, t.id);
        /* A full context cannot take this token back in, so it is the last one. */
        bool last = mc_kv_n_used(L->kv) >= mc_kv_n_ctx(L->kv);
        enum mc_finish f = mc_gen_stream_push(L->st, t.id, last, &t.text, &t.text_len);
        t.logprob = lp;
        t.top = want_lp ? L->top : NULL;
        t.n_top = want_lp ? L->gp->n_logprobs : 0;
        if (fn && fn(&t, user))
            return mc_err_set(err, MC_ECANCEL, "generation cancelled");
        if (f != MC_FINISH_NONE)
            return (int)f;

        struct mc_batch_row row = {.token = t.id,
                                   .pos = mc_kv_n_used(L->kv),
                                   .kv = L->kv,
                                   .want_logits = true,
                                   .adapter = L->gp->adapter,
                                   .adapter_scale = L->gp->adapter_scale};
        int rc = mc_forward(L->ctx, &row, 1, L->logits, NULL, err);
        if (rc != MC_OK)
            return rc;
    }
}

int mc_generate(struct mc_ctx *ctx, struct mc_kv *kv, const struct mc_tokenizer *tok,
                const int32_t *prompt, size_t n_prompt, const struct mc_sample_params *sp,
                const struct mc_gen_params *gp, mc_gen_fn fn, void *user, struct mc_gen_result *res,
                struct mc_err *err) {
    memset(res, 0, sizeof(*res));
    const struct mc_model *m = mc_ctx_model(ctx);
    int32_t n_vocab = mc_model_hparams(m)->n_vocab;
    if (n_prompt < 1)
        return mc_err_set(err, MC_EINVAL, "empty prompt (at least one token is needed)");
    if (n_prompt > (size_t)(mc_kv_n_ctx(kv) - mc_kv_n_used(kv)))
        return mc_err_set(err, MC_EFULL, "prompt of %zu tokens does not fit the %d free positions",
                          n_prompt, mc_kv_n_ctx(kv) - mc_kv_n_used(kv));
    if (gp->n_logprobs < 0 || gp->n_logprobs > MC_GEN_MAX_LOGPROBS)
        return mc_err_set(err, MC_EINVAL, "logprobs %d is out of range 0..%d", gp->n_logprobs,
                          MC_GEN_MAX_LOGPROBS);

    struct loop L = {.ctx = ctx, .kv = kv, .gp = gp};
    int rc = mc_sampler_create(sp, n_vocab, &L.smp, err);
    if (rc != MC_OK)
        return rc;
    if ((rc = mc_gen_stream_create(tok, gp, &L.st, err)) != MC_OK)
        goto out_free;
    L.logits = mc_malloc((size_t)n_vocab * sizeof(float));
    if (!L.logits) {
        rc = mc_err_set(err, MC_ENOMEM, "logits allocation failed");
        goto out_free;
    }
    for (size_t i = 0; i < n_prompt; i++)
        mc_sampler_accept(L.smp, prompt[i]);

    double t0 = now_ms();
    if ((rc = prefill(ctx, kv, prompt, n_prompt, gp, L.logits, err)) != MC_OK)
        goto out_free;
    double t1 = now_ms();
    res->n_prompt = (int32_t)n_prompt;
    res->prompt_ms = t1 - t0;

    rc = decode(&L, fn, user, err);
    res->n_gen = mc_gen_stream_n_tokens(L.st);
    res->gen_ms = now_ms() - t1;
    if (rc >= 0) {
        res->finish = (enum mc_finish)rc;
        rc = MC_OK;
    }

out_free:
    mc_free(L.logits);
    mc_gen_stream_free(L.st);
    mc_sampler_free(L.smp);
    return rc;
}
