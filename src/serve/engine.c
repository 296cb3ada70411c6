/* engine.c - the engine loop: one thread, continuous batching over every tenant.
 *
 * A request (struct mc_gen) is created by mc_engine_submit with a copy of everything it
 * needs and a place in the scheduler (engine_sched.c). The loop thread repeats one step:
 * handle cancellations, admit (creating the KV caches and samplers of admitted sequences,
 * dropping those of preempted ones), plan, run the planned rows in one forward batch,
 * then sample one token for every row that asked for logits, turn it into text through
 * the sequence's text stream (UTF-8 holdback, stop strings) and deliver the events.
 *
 * Locking: one mutex guards the scheduler, the list of live requests and the counters.
 * Submitters take it briefly; the loop holds it for bookkeeping only, never during the
 * forward pass or an event callback. A request's tokens, KV, sampler and stream are
 * touched by the loop thread alone. Cancellation is an atomic flag the loop reads each
 * step, so mc_engine_cancel never needs the engine to still exist.
 *
 * Reference counts: a request starts with one reference for the engine and one for the
 * caller (unless the caller passed out = NULL). The engine drops its own after the
 * request's last event; the memory goes with the last reference. A request's LoRA
 * adapter is retained at submit and released just before its last event is delivered (or with the
 * request's memory when submit fails), so the residency cache sees it in use for exactly
 * as long as a sequence may still run with it; preemption keeps it.
 *
 * Adapters: each row of a forward batch carries its request's adapter and scale; the
 * backend's forward applies them (engine_model.c groups rows by adapter). The scheduler
 * does not look at adapters.
 *
 * Not here: KV or prefix sharing between requests (none, on purpose: see engine.h),
 * speculative decoding. */
#include "serve/engine.h"

#include "adapter/lora.h" /* mc_lora_retain, mc_lora_release */
#include "base/log.h"
#include "base/mem.h"
#include "model/sample.h"
#include "serve/engine_int.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define DEFAULT_MAX_SEQS       32
#define DEFAULT_PREFILL_CHUNK  64
#define DEFAULT_MAX_QUEUE      256
#define DEFAULT_PENALTY_LAST_N 64
#define MAX_WEIGHT             1000
#define MAX_SEQS_LIMIT         4096
#define PREFILL_CHUNK_LIMIT    8192

enum out_kind {
    OUT_NONE = 0,
    OUT_TEXT,  /* a TEXT event only */
    OUT_DONE,  /* a TEXT event (possibly empty) then DONE */
    OUT_ERROR, /* an ERROR event */
};

struct mc_gen {
    atomic_int refs;
    atomic_bool cancel;
    struct mc_engine *e; /* valid until the request's last event */
    mc_engine_event_fn fn;
    void *user;

    /* The request, copied at submit. */
    char tenant[MC_ENGINE_TENANT_MAX + 1];
    int32_t *tokens; /* (n_ctx_seq) prompt, then sampled tokens */
    int32_t n_prompt;
    int32_t max_tokens; /* effective: n_prompt + max_tokens <= n_ctx */
    int32_t n_ctx_seq;  /* KV positions of this sequence */
    struct mc_sample_params sp;
    struct engine_stream_params stp;
    char **stop;
    bool logprobs;
    int32_t top_logprobs;
    struct mc_lora *adapter; /* a reference of the engine's own, or NULL */
    float adapter_scale;

    /* Engine-thread state. */
    struct sched_seq seq;
    void *kv;                   /* NULL while queued */
    struct mc_sampler *sampler; /* created at first admission, kept when preempted */
    void *stream;
    int32_t n_gen;
    int64_t t_submit_ns;
    int64_t t_last_ns;
    bool finished;

    /* Tokens sampled but not yet handed over in a TEXT event. */
    int32_t *pend_tokens;              /* (pend_cap) */
    struct mc_engine_logprob *pend_lp; /* (pend_cap) when logprobs, else NULL */
    int32_t n_pend;
    int32_t pend_cap; /* grows: text is usually held back a token or two */

    /* This step's output, delivered after the step's bookkeeping. */
    enum out_kind out;
    const char *out_text;
    size_t out_len;
    enum engine_finish out_finish;
    int out_code;
    char out_msg[sizeof(((struct mc_err *)0)->msg)];
    struct mc_gen *out_next;
    bool in_outbox;

    struct mc_gen *live_prev, *live_next; /* every request not yet finished */
};

struct mc_engine {
    struct engine_backend be;
    struct mc_engine_config cfg; /* with defaults filled in */
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* the loop waits here for requests */
    pthread_cond_t idle_cv; /* drain waits here for the live list to empty */
    struct sched sched;
    struct mc_gen *live_head;
    int32_t n_live;
    bool draining;   /* submits refused */
    bool cancel_all; /* the loop cancels every live request */
    bool stopping;   /* the loop exits once nothing is live */
    int32_t n_drain_cancelled;
    struct mc_engine_stats stats;

    /* Loop-thread scratch. */
    struct engine_row *rows;       /* (max_seqs + prefill_chunk) */
    float *logits;                 /* (max_seqs, n_vocab) */
    struct sched_work *work;       /* (max_seqs) */
    struct sched_seq **pre, **adm; /* (2 * max_seqs) each */
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ================================ Requests ========================================== */

static void gen_free_memory(struct mc_gen *g) {
    mc_lora_release(g->adapter);
    if (g->stop)
        for (int32_t i = 0; i < g->stp.n_stop; i++)
            mc_free(g->stop[i]);
    mc_free(g->stop);
    mc_free(g->tokens);
    mc_free(g->pend_tokens);
    mc_free(g->pend_lp);
    mc_free(g);
}

static void gen_unref(struct mc_gen *g) {
    if (atomic_fetch_sub(&g->refs, 1) == 1)
        gen_free_memory(g);
}

void mc_gen_release(struct mc_gen *gen) {
    if (gen)
        gen_unref(gen);
}

void mc_engine_cancel(struct mc_gen *gen) {
    if (gen)
        atomic_store(&gen->cancel, true);
}

/* Frees what the loop thread created for g (KV, sampler, stream). */
static void gen_free_engine_side(struct mc_engine *e, struct mc_gen *g) {
    if (g->kv)
        e->be.kv_free(e->be.impl, g->kv);
    g->kv = NULL;
    mc_sampler_free(g->sampler);
    g->sampler = NULL;
    if (g->stream)
        e->be.stream_free(g->stream);
    g->stream = NULL;
}

/* ================================ Submit ============================================ */

static bool tenant_id_ok(const char *s) {
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char c = (unsigned char)s[n];
        if (c <= ' ' || c >= 0x7f || c == '"' || c == '\\' || c == '=')
            return false;
    }
    return n >= 1 && n <= MC_ENGINE_TENANT_MAX;
}

static void sampling_convert(const struct mc_engine_sampling *in, struct mc_sample_params *out) {
    out->temp = in->temperature;
    out->top_k = in->top_k;
    /* Only an exact zero means "off"; anything else, negative values included, goes to
     * the sampler's own checks. */
    out->top_p = in->top_p != 0 ? in->top_p : 1.0f;
    out->min_p = in->min_p;
    out->repeat_penalty = in->repeat_penalty != 0 ? in->repeat_penalty : 1.0f;
    out->repeat_last_n = in->penalty_last_n != 0 ? in->penalty_last_n : DEFAULT_PENALTY_LAST_N;
    out->freq_penalty = in->frequency_penalty;
    out->presence_penalty = in->presence_penalty;
    out->seed = in->seed;
}

static int check_params(const struct mc_engine *e, const struct mc_engine_params *p,
                        struct mc_err *err) {
    int32_t n_ctx = e->cfg.n_ctx;
    if (!p->tenant || !tenant_id_ok(p->tenant))
        return mc_err_set(err, MC_EINVAL,
                          "tenant id must be 1..%d printable bytes without space, \", \\ or =",
                          MC_ENGINE_TENANT_MAX);
    if (p->weight > MAX_WEIGHT)
        return mc_err_set(err, MC_EINVAL, "weight %u exceeds %d", p->weight, MAX_WEIGHT);
    if (!p->prompt || p->n_prompt < 1)
        return mc_err_set(err, MC_EINVAL, "prompt must have at least one token");
    if (p->n_prompt >= n_ctx)
        return mc_err_set(err, MC_EINVAL,
                          "prompt of %d tokens leaves no room in the context of %d tokens",
                          p->n_prompt, n_ctx);
    for (int32_t i = 0; i < p->n_prompt; i++)
        if (p->prompt[i] < 0 || p->prompt[i] >= e->be.n_vocab)
            return mc_err_set(err, MC_EINVAL, "prompt token %d at index %d is not in 0..%d",
                              p->prompt[i], i, e->be.n_vocab - 1);
    if (p->n_stop < 0 || p->n_stop > MC_ENGINE_MAX_STOP || (p->n_stop && !p->stop))
        return mc_err_set(err, MC_EINVAL, "n_stop %d is outside 0..%d", p->n_stop,
                          MC_ENGINE_MAX_STOP);
    for (int32_t i = 0; i < p->n_stop; i++) {
        size_t len = p->stop[i] ? strlen(p->stop[i]) : 0;
        if (len == 0 || len > MC_ENGINE_STOP_MAX_BYTES)
            return mc_err_set(err, MC_EINVAL, "stop string %d must be 1..%d bytes", i,
                              MC_ENGINE_STOP_MAX_BYTES);
    }
    if (p->top_logprobs < 0 || p->top_logprobs > MC_ENGINE_MAX_TOP_LOGPROBS)
        return mc_err_set(err, MC_EINVAL, "top_logprobs %d is outside 0..%d", p->top_logprobs,
                          MC_ENGINE_MAX_TOP_LOGPROBS);
    float scale = p->adapter_scale;
    if (!(scale == 0 || (scale > 0 && scale <= MC_ENGINE_MAX_ADAPTER_SCALE)))
        return mc_err_set(err, MC_EINVAL, "adapter_scale %g is outside (0, %g]", (double)scale,
                          (double)MC_ENGINE_MAX_ADAPTER_SCALE);
    if (p->adapter && e->be.adapter_check) {
        int arc = e->be.adapter_check(e->be.impl, p->adapter, err);
        if (arc != MC_OK)
            return arc;
    }

    /* The sampler checks its own parameters; a one-entry vocabulary keeps it cheap. */
    struct mc_sample_params sp;
    struct mc_sampler *probe = NULL;
    sampling_convert(&p->sampling, &sp);
    int rc = mc_sampler_create(&sp, 1, &probe, err);
    mc_sampler_free(probe);
    return rc;
}

/* Builds the request record; the caller checked p. */
static int gen_build(struct mc_engine *e, const struct mc_engine_params *p, struct mc_gen **out,
                     struct mc_err *err) {
    struct mc_gen *g = mc_calloc(1, sizeof(*g));
    if (!g)
        return mc_err_set(err, MC_ENOMEM, "out of memory for a request");
    int32_t room = e->cfg.n_ctx - p->n_prompt;
    g->max_tokens = p->max_tokens > 0 && p->max_tokens < room ? p->max_tokens : room;
    g->n_ctx_seq = p->n_prompt + g->max_tokens;
    g->n_prompt = p->n_prompt;
    snprintf(g->tenant, sizeof(g->tenant), "%s", p->tenant);
    sampling_convert(&p->sampling, &g->sp);
    g->logprobs = p->logprobs;
    g->top_logprobs = p->logprobs ? p->top_logprobs : 0;
    g->stp.max_tokens = g->max_tokens;
    g->stp.ignore_eos = p->ignore_eos;

    g->tokens = mc_malloc((size_t)g->n_ctx_seq * sizeof(*g->tokens));
    if (p->n_stop)
        g->stop = mc_calloc((size_t)p->n_stop, sizeof(*g->stop));
    if (!g->tokens || (p->n_stop && !g->stop))
        goto out_nomem;
    for (int32_t i = 0; i < p->n_stop; i++) {
        g->stop[i] = mc_strdup(p->stop[i]);
        g->stp.n_stop = i + 1;
        if (!g->stop[i])
            goto out_nomem;
    }
    g->stp.stop = (const char *const *)g->stop;
    memcpy(g->tokens, p->prompt, (size_t)p->n_prompt * sizeof(*g->tokens));

    g->seq.n_tokens = p->n_prompt;
    g->seq.kv_bytes = e->be.kv_bytes(e->be.impl, g->n_ctx_seq);
    g->seq.cost = (double)g->n_ctx_seq;
    g->adapter = mc_lora_retain(p->adapter);
    g->adapter_scale = p->adapter_scale != 0 ? p->adapter_scale : 1.0f;
    g->seq.owner = g;
    *out = g;
    return MC_OK;

out_nomem:;
    int32_t n = g->n_ctx_seq;
    gen_free_memory(g);
    return mc_err_set(err, MC_ENOMEM, "out of memory for a request of %d tokens", n);
}

int mc_engine_submit(struct mc_engine *e, const struct mc_engine_params *p,
                     mc_engine_event_fn on_event, void *user, struct mc_gen **out,
                     struct mc_err *err) {
    if (out)
        *out = NULL;
    if (!e || !p || !on_event)
        return mc_err_set(err, MC_EINVAL, "engine, params and on_event are required");
    int rc = check_params(e, p, err);
    if (rc != MC_OK)
        return rc;

    struct mc_gen *g = NULL;
    rc = gen_build(e, p, &g, err);
    if (rc != MC_OK)
        return rc;
    if (g->seq.kv_bytes > e->cfg.kv_budget_bytes) {
        rc = mc_err_set(err, MC_EINVAL, "request needs %zu bytes of KV cache, budget is %zu",
                        g->seq.kv_bytes, e->cfg.kv_budget_bytes);
        gen_free_memory(g);
        return rc;
    }
    g->e = e;
    g->fn = on_event;
    g->user = user;
    atomic_init(&g->refs, out ? 2 : 1);
    atomic_init(&g->cancel, false);
    g->t_submit_ns = now_ns();

    pthread_mutex_lock(&e->mu);
    if (e->draining || e->stopping) {
        rc = mc_err_set(err, MC_ECANCEL, "engine is shutting down and accepts no requests");
    } else {
        rc = sched_enqueue(&e->sched, g->tenant, p->weight, &g->seq, err);
    }
    if (rc != MC_OK) {
        pthread_mutex_unlock(&e->mu);
        gen_free_memory(g);
        return rc;
    }
    g->live_next = e->live_head;
    if (e->live_head)
        e->live_head->live_prev = g;
    e->live_head = g;
    e->n_live++;
    pthread_cond_signal(&e->work_cv);
    pthread_mutex_unlock(&e->mu);

    if (out)
        *out = g;
    return MC_OK;
}

/* ================================ The loop ========================================== */

static void outbox_add(struct mc_gen **outbox, struct mc_gen *g) {
    if (g->in_outbox)
        return;
    g->in_outbox = true;
    g->out_next = *outbox;
    *outbox = g;
}

/* Queues g's final output; the caller holds the lock. The request leaves the scheduler
 * and the live list now; its resources go after delivery. */
static void finish_locked(struct mc_engine *e, struct mc_gen *g, struct mc_gen **outbox) {
    g->finished = true;
    sched_remove(&e->sched, &g->seq);
    if (g->live_prev)
        g->live_prev->live_next = g->live_next;
    else
        e->live_head = g->live_next;
    if (g->live_next)
        g->live_next->live_prev = g->live_prev;
    g->live_prev = g->live_next = NULL;
    e->n_live--;
    if (g->out == OUT_ERROR)
        e->stats.n_requests_failed++;
    else
        e->stats.n_requests_done++;
    outbox_add(outbox, g);
}

static void set_error(struct mc_gen *g, int code, const char *msg) {
    g->out = OUT_ERROR;
    g->out_code = code;
    snprintf(g->out_msg, sizeof(g->out_msg), "%s", msg);
}

/* Cancels what must be cancelled this step: flagged requests, or all of them. */
static void reap_cancelled_locked(struct mc_engine *e, struct mc_gen **outbox) {
    struct mc_gen *g = e->live_head;
    while (g) {
        struct mc_gen *next = g->live_next;
        if (e->cancel_all) {
            set_error(g, MC_ECANCEL, "engine is shutting down");
            if (e->draining && !e->stopping)
                e->n_drain_cancelled++;
            finish_locked(e, g, outbox);
        } else if (atomic_load(&g->cancel)) {
            set_error(g, MC_ECANCEL, "request cancelled");
            finish_locked(e, g, outbox);
        }
        g = next;
    }
}

/* Creates the KV (and, at first admission, the sampler and text stream) of an admitted
 * request. */
static int gen_activate(struct mc_engine *e, struct mc_gen *g, struct mc_err *err) {
    int rc = e->be.kv_create(e->be.impl, g->n_ctx_seq, &g->kv, err);
    if (rc != MC_OK)
        return rc;
    if (g->sampler)
        return MC_OK;
    rc = mc_sampler_create(&g->sp, e->be.n_vocab, &g->sampler, err);
    if (rc != MC_OK)
        return rc;
    for (int32_t i = 0; i < g->n_prompt; i++)
        mc_sampler_accept(g->sampler, g->tokens[i]);
    return e->be.stream_create(e->be.impl, &g->stp, &g->stream, err);
}

static void admit_locked(struct mc_engine *e, struct mc_gen **outbox) {
    int32_t n_pre, n_adm;
    sched_admit(&e->sched, e->pre, &n_pre, e->adm, &n_adm);
    for (int32_t i = 0; i < n_pre; i++) {
        struct mc_gen *g = e->pre[i]->owner;
        if (g->kv)
            e->be.kv_free(e->be.impl, g->kv);
        g->kv = NULL;
    }
    e->stats.n_preemptions = e->sched.n_preemptions;
    for (int32_t i = 0; i < n_adm; i++) {
        struct mc_gen *g = e->adm[i]->owner;
        if (g->seq.state != SCHED_ACTIVE || g->kv)
            continue;
        struct mc_err err = {0};
        if (gen_activate(e, g, &err) != MC_OK) {
            MC_LOG_WARN("engine", "admit_failed", "tenant=%s code=%d", g->tenant, err.code);
            set_error(g, err.code, err.msg);
            finish_locked(e, g, outbox);
        }
    }
}

/* Makes room for one more pending token. */
static int pend_reserve(struct mc_gen *g) {
    if (g->n_pend < g->pend_cap)
        return MC_OK;
    int32_t cap = g->pend_cap ? 2 * g->pend_cap : 8;
    int32_t *t = mc_realloc(g->pend_tokens, (size_t)cap * sizeof(*t));
    if (!t)
        return MC_ENOMEM;
    g->pend_tokens = t;
    if (g->logprobs) {
        struct mc_engine_logprob *l = mc_realloc(g->pend_lp, (size_t)cap * sizeof(*l));
        if (!l)
            return MC_ENOMEM;
        g->pend_lp = l;
    }
    g->pend_cap = cap;
    return MC_OK;
}

/* Samples g's next token from its logits row and feeds it to the text stream. Runs on
 * the loop thread without the lock: it touches only g's own generation state. */
static void gen_take_token(struct mc_engine *e, struct mc_gen *g, const float *logits, int64_t t) {
    struct mc_logprob top[MC_ENGINE_MAX_TOP_LOGPROBS];
    float lp = 0;
    if (pend_reserve(g) != MC_OK) {
        set_error(g, MC_ENOMEM, "out of memory for pending tokens");
        return;
    }
    int32_t tok =
        mc_sampler_sample(g->sampler, logits, g->logprobs ? &lp : NULL, top, g->top_logprobs);
    mc_sampler_accept(g->sampler, tok);
    g->tokens[g->seq.n_tokens++] = tok;
    g->n_gen++;

    g->pend_tokens[g->n_pend] = tok;
    if (g->pend_lp) {
        struct mc_engine_logprob *l = &g->pend_lp[g->n_pend];
        l->token = tok;
        l->logprob = lp;
        l->n_top = g->top_logprobs;
        for (int32_t i = 0; i < g->top_logprobs; i++) {
            l->top[i].token = top[i].id;
            l->top[i].logprob = top[i].logprob;
        }
    }
    g->n_pend++;

    if (e->cfg.on_token) {
        bool first = g->n_gen == 1;
        double dt = (double)(t - (first ? g->t_submit_ns : g->t_last_ns)) / 1e9;
        e->cfg.on_token(e->cfg.on_token_user, g->tenant, first, dt);
    }
    g->t_last_ns = t;

    bool last = g->n_gen >= g->max_tokens;
    enum engine_finish fin = e->be.stream_push(g->stream, tok, last, &g->out_text, &g->out_len);
    if (fin == ENGINE_FINISH_NONE && last)
        fin = ENGINE_FINISH_LENGTH;
    if (fin != ENGINE_FINISH_NONE) {
        g->out = OUT_DONE;
        g->out_finish = fin;
    } else if (g->out_len > 0) {
        g->out = OUT_TEXT;
    }
}

/* Delivers the queued events and drops the engine's references of finished requests.
 * Runs without the lock. */
static void deliver(struct mc_engine *e, struct mc_gen *outbox) {
    while (outbox) {
        struct mc_gen *g = outbox;
        outbox = g->out_next;
        g->out_next = NULL;
        g->in_outbox = false;
        if (g->finished) {
            /* Before the last event, so that whoever sees it knows the engine no longer
             * holds the adapter. */
            mc_lora_release(g->adapter);
            g->adapter = NULL;
        }
        struct mc_engine_event ev = {0};
        ev.time_ns = now_ns();
        ev.prompt_tokens = g->n_prompt;
        ev.completion_tokens = g->n_gen;
        if (g->out == OUT_TEXT || g->out == OUT_DONE) {
            ev.type = MC_ENGINE_EV_TEXT;
            ev.text = g->out_len ? g->out_text : "";
            ev.text_len = g->out_len;
            ev.tokens = g->pend_tokens;
            ev.n_tokens = g->n_pend;
            ev.logprobs = g->pend_lp;
            if (g->out_len > 0 || g->n_pend > 0)
                g->fn(&ev, g->user);
            g->n_pend = 0;
        }
        if (g->out == OUT_DONE) {
            ev.type = MC_ENGINE_EV_DONE;
            ev.text = NULL;
            ev.text_len = 0;
            ev.tokens = NULL;
            ev.n_tokens = 0;
            ev.logprobs = NULL;
            ev.finish_reason = g->out_finish == ENGINE_FINISH_STOP ? "stop" : "length";
            g->fn(&ev, g->user);
        } else if (g->out == OUT_ERROR) {
            ev.type = MC_ENGINE_EV_ERROR;
            ev.code = g->out_code;
            ev.message = g->out_msg;
            g->fn(&ev, g->user);
        }
        g->out = OUT_NONE;
        g->out_len = 0;
        if (g->finished) {
            MC_LOG_DEBUG("engine", "request_done", "tenant=%s prompt=%d completion=%d code=%d",
                         g->tenant, g->n_prompt, g->n_gen, g->out_code);
            gen_free_engine_side(e, g);
            g->e = NULL;
            gen_unref(g);
        }
    }
}

/* Runs the planned work; on failure every request in the batch fails. */
static void run_batch(struct mc_engine *e, int32_t n_work, int32_t n_rows, struct mc_gen **outbox) {
    int32_t r = 0;
    for (int32_t i = 0; i < n_work; i++) {
        struct sched_work *w = &e->work[i];
        struct mc_gen *g = w->seq->owner;
        for (int32_t k = 0; k < w->count; k++) {
            int32_t pos = w->start + k;
            e->rows[r++] = (struct engine_row){
                .token = g->tokens[pos],
                .pos = pos,
                .kv = g->kv,
                .want_logits = w->want_logits && k == w->count - 1,
                .adapter = g->adapter,
                .adapter_scale = g->adapter_scale,
            };
        }
    }
    MC_ASSERT(r == n_rows);

    struct mc_err err = {0};
    int rc = e->be.forward(e->be.impl, e->rows, n_rows, e->logits, &err);
    int64_t t = now_ns();

    /* Sampling and text happen outside the lock: only this thread touches a running
     * sequence's tokens, sampler and stream. */
    int32_t n_logits = 0;
    uint64_t n_prompt = 0;
    for (int32_t i = 0; i < n_work && rc == MC_OK; i++) {
        struct sched_work *w = &e->work[i];
        struct mc_gen *g = w->seq->owner;
        w->seq->n_kv += w->count;
        bool decode = w->want_logits && w->count == 1 && g->n_gen > 0;
        if (!decode)
            n_prompt += (uint64_t)w->count;
        if (w->want_logits)
            gen_take_token(e, g, e->logits + (size_t)n_logits++ * e->be.n_vocab, t);
    }

    pthread_mutex_lock(&e->mu);
    e->stats.n_steps++;
    e->stats.n_prompt_tokens += n_prompt;
    e->stats.n_gen_tokens += (uint64_t)n_logits;
    for (int32_t i = 0; i < n_work; i++) {
        struct mc_gen *g = e->work[i].seq->owner;
        if (rc != MC_OK)
            set_error(g, rc, err.msg);
        if (g->out == OUT_DONE || g->out == OUT_ERROR)
            finish_locked(e, g, outbox);
        else if (g->out == OUT_TEXT)
            outbox_add(outbox, g);
    }
    pthread_mutex_unlock(&e->mu);
    if (rc != MC_OK)
        MC_LOG_ERROR("engine", "forward_failed", "rows=%d code=%d", n_rows, rc);
}

static void deadline_after(struct timespec *ts, int64_t ms) {
    clock_gettime(CLOCK_REALTIME, ts);
    int64_t ns = ts->tv_nsec + (ms % 1000) * 1000000;
    ts->tv_sec += (time_t)(ms / 1000 + ns / 1000000000);
    ts->tv_nsec = (long)(ns % 1000000000);
}

static void *loop_main(void *arg) {
    struct mc_engine *e = arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        while (!e->live_head && !e->stopping) {
            pthread_cond_broadcast(&e->idle_cv);
            pthread_cond_wait(&e->work_cv, &e->mu);
        }
        if (!e->live_head && e->stopping)
            break;

        struct mc_gen *outbox = NULL;
        reap_cancelled_locked(e, &outbox);
        admit_locked(e, &outbox);
        int32_t n_rows = 0;
        int32_t n_work = sched_plan(&e->sched, e->work, &n_rows);
        pthread_mutex_unlock(&e->mu);

        if (n_work > 0)
            run_batch(e, n_work, n_rows, &outbox);
        deliver(e, outbox);
        pthread_mutex_lock(&e->mu);

        /* Requests live but nothing ran and nothing was said: cannot happen with the
         * admission rules (an empty engine admits any request that passed submit), but a
         * short wait keeps a broken invariant from spinning a core. */
        if (n_work == 0 && !outbox && e->live_head && !e->cancel_all) {
            struct timespec ts;
            deadline_after(&ts, 1);
            pthread_cond_timedwait(&e->work_cv, &e->mu, &ts);
        }
    }
    pthread_cond_broadcast(&e->idle_cv);
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* ================================ Engine ============================================ */

static int check_config(const struct engine_backend *be, struct mc_engine_config *c,
                        struct mc_err *err) {
    if (c->max_seqs == 0)
        c->max_seqs = DEFAULT_MAX_SEQS;
    if (c->prefill_chunk == 0)
        c->prefill_chunk = DEFAULT_PREFILL_CHUNK;
    if (c->kv_budget_bytes == 0)
        c->kv_budget_bytes = SIZE_MAX;
    if (c->n_ctx == 0)
        c->n_ctx = be->n_ctx_train;
    if (c->max_queue == 0)
        c->max_queue = DEFAULT_MAX_QUEUE;
    if (c->max_seqs < 1 || c->max_seqs > MAX_SEQS_LIMIT)
        return mc_err_set(err, MC_EINVAL, "max_seqs %d is outside 1..%d", c->max_seqs,
                          MAX_SEQS_LIMIT);
    if (c->prefill_chunk < 1 || c->prefill_chunk > PREFILL_CHUNK_LIMIT)
        return mc_err_set(err, MC_EINVAL, "prefill_chunk %d is outside 1..%d", c->prefill_chunk,
                          PREFILL_CHUNK_LIMIT);
    if (c->n_ctx < 2 || c->n_ctx > be->n_ctx_train)
        return mc_err_set(err, MC_EINVAL, "n_ctx %d is outside 2..%d (training context)", c->n_ctx,
                          be->n_ctx_train);
    if (c->max_queue < 1)
        return mc_err_set(err, MC_EINVAL, "max_queue %d must be at least 1", c->max_queue);
    if (c->n_threads < 0)
        return mc_err_set(err, MC_EINVAL, "n_threads %d must not be negative", c->n_threads);
    return MC_OK;
}

static int alloc_scratch(struct mc_engine *e, struct mc_err *err) {
    int32_t n = e->cfg.max_seqs;
    e->rows = mc_malloc((size_t)(n + e->cfg.prefill_chunk) * sizeof(*e->rows));
    e->logits = mc_malloc((size_t)n * (size_t)e->be.n_vocab * sizeof(*e->logits));
    e->work = mc_malloc((size_t)n * sizeof(*e->work));
    e->pre = mc_malloc((size_t)2 * n * sizeof(*e->pre));
    e->adm = mc_malloc((size_t)2 * n * sizeof(*e->adm));
    if (!e->rows || !e->logits || !e->work || !e->pre || !e->adm)
        return mc_err_set(err, MC_ENOMEM, "out of memory for engine scratch (max_seqs %d)", n);
    return MC_OK;
}

static void engine_destroy(struct mc_engine *e) {
    sched_deinit(&e->sched);
    mc_free(e->rows);
    mc_free(e->logits);
    mc_free(e->work);
    mc_free(e->pre);
    mc_free(e->adm);
    if (e->be.destroy)
        e->be.destroy(e->be.impl);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->work_cv);
    pthread_cond_destroy(&e->idle_cv);
    mc_free(e);
}

int engine_create_with_backend(const struct engine_backend *be, const struct mc_engine_config *cfg,
                               struct mc_engine **out, struct mc_err *err) {
    *out = NULL;
    struct mc_engine_config c = cfg ? *cfg : (struct mc_engine_config){0};
    int rc = check_config(be, &c, err);
    if (rc != MC_OK) {
        if (be->destroy)
            be->destroy(be->impl);
        return rc;
    }
    struct mc_engine *e = mc_calloc(1, sizeof(*e));
    if (!e) {
        if (be->destroy)
            be->destroy(be->impl);
        return mc_err_set(err, MC_ENOMEM, "out of memory for the engine");
    }
    e->be = *be;
    e->cfg = c;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->work_cv, NULL);
    pthread_cond_init(&e->idle_cv, NULL);
    sched_init(&e->sched, c.max_seqs, c.prefill_chunk, c.max_queue, c.kv_budget_bytes);
    e->stats.kv_budget_bytes = c.kv_budget_bytes;

    rc = alloc_scratch(e, err);
    if (rc == MC_OK)
        rc = be->prepare(be->impl, c.max_seqs + c.prefill_chunk, c.n_threads, err);
    if (rc == MC_OK && pthread_create(&e->thread, NULL, loop_main, e) != 0)
        rc = mc_err_set(err, MC_ENOMEM, "cannot start the engine thread");
    if (rc != MC_OK) {
        engine_destroy(e);
        return rc;
    }
    e->thread_started = true;
    char budget[32] = "none";
    if (c.kv_budget_bytes != SIZE_MAX)
        snprintf(budget, sizeof(budget), "%zu", c.kv_budget_bytes);
    MC_LOG_INFO("engine", "engine_started", "max_seqs=%d prefill_chunk=%d n_ctx=%d kv_budget=%s",
                c.max_seqs, c.prefill_chunk, c.n_ctx, budget);
    *out = e;
    return MC_OK;
}

void mc_engine_free(struct mc_engine *e) {
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    e->draining = true;
    e->stopping = true;
    e->cancel_all = true;
    pthread_cond_broadcast(&e->work_cv);
    pthread_mutex_unlock(&e->mu);
    if (e->thread_started)
        pthread_join(e->thread, NULL);
    engine_destroy(e);
}

int mc_engine_drain(struct mc_engine *e, int64_t timeout_ms) {
    struct timespec deadline;
    deadline_after(&deadline, timeout_ms > 0 ? timeout_ms : 0);
    pthread_mutex_lock(&e->mu);
    e->draining = true;
    e->n_drain_cancelled = 0;
    while (e->live_head && !e->cancel_all) {
        if (pthread_cond_timedwait(&e->idle_cv, &e->mu, &deadline) != 0 && e->live_head) {
            e->cancel_all = true;
            pthread_cond_broadcast(&e->work_cv);
        }
    }
    while (e->live_head)
        pthread_cond_wait(&e->idle_cv, &e->mu);
    int n = e->n_drain_cancelled;
    MC_LOG_INFO("engine", "drained", "cancelled=%d", n);
    pthread_mutex_unlock(&e->mu);
    return n;
}

/* ================================ Statistics ======================================== */

void mc_engine_stats(struct mc_engine *e, struct mc_engine_stats *out) {
    pthread_mutex_lock(&e->mu);
    *out = e->stats;
    out->n_active = e->sched.n_active;
    out->n_queued = e->sched.n_queued;
    out->kv_bytes_used = e->sched.kv_used;
    pthread_mutex_unlock(&e->mu);
}

void mc_engine_tenant_load(struct mc_engine *e, const char *tenant, int32_t *n_queued,
                           int32_t *n_active) {
    pthread_mutex_lock(&e->mu);
    const struct sched_tenant *t = tenant ? sched_tenant_find(&e->sched, tenant) : NULL;
    *n_queued = t ? t->n_queued : 0;
    *n_active = t ? t->n_active : 0;
    pthread_mutex_unlock(&e->mu);
}

void mc_engine_tenant_loads(struct mc_engine *e, mc_engine_tenant_fn fn, void *user) {
    pthread_mutex_lock(&e->mu);
    for (const struct sched_tenant *t = e->sched.tenants; t; t = t->next)
        fn(user, t->name, t->n_queued, t->n_active);
    pthread_mutex_unlock(&e->mu);
}
