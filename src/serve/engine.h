/* engine.h - the generation engine: one loop thread, continuous batching, fair admission.
 *
 * One engine serves every tenant on one loaded model. A single loop thread owns the
 * model's forward context; each step it runs, in one mc_forward batch, the next token of
 * every active sequence (decode) plus up to prefill_chunk prompt tokens of sequences still
 * reading their prompt (chunked prefill). Requests wait in per-tenant queues; admission
 * picks the next request by start-time fair queuing over tenants (weights from the
 * request) and admits it when a sequence slot and its KV memory fit in the budget. A
 * tenant that has nothing running and is under its fair share may preempt the youngest
 * sequence of a tenant that is over its share (the preempted sequence keeps its tokens and
 * is recomputed later), so a quiet tenant starts within a few steps even when a busy one
 * fills the engine. docs/scheduler.md describes the policy.
 *
 * Isolation: there is no KV or prefix reuse across requests at all; every sequence gets a
 * fresh KV cache, so two tenants sending the same prompt share nothing.
 *
 * Threading: every function here may be called from any thread. Event callbacks run on the
 * engine thread, one at a time, never with an engine lock held; they must not block (copy
 * the event into your own queue) and may call mc_engine_cancel, mc_gen_release,
 * mc_engine_stats and mc_engine_tenant_load, but not mc_engine_submit, mc_engine_drain or
 * mc_engine_free.
 *
 * Choices n > 1: the engine runs one sequence per request; the HTTP layer submits n
 * requests (with seeds seed, seed + 1, ...) and merges their events by choice index. */
#ifndef MC_ENGINE_H
#define MC_ENGINE_H

#include "adapter/lora.h" /* MC_LORA_MAX_SCALE */
#include "base/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mc_model;
struct mc_lora;
struct mc_engine; /* opaque; see engine.c */
struct mc_gen;    /* one submitted request; opaque, reference-counted */

#define MC_ENGINE_TENANT_MAX        64  /* bytes of a tenant id, NUL excluded */
#define MC_ENGINE_MAX_STOP          16  /* stop strings per request */
#define MC_ENGINE_STOP_MAX_BYTES    256 /* bytes of one stop string */
#define MC_ENGINE_MAX_TOP_LOGPROBS  20
#define MC_ENGINE_MAX_ADAPTER_SCALE MC_LORA_MAX_SCALE /* largest per-request adapter scale */

/* ---- Configuration ---------------------------------------------------------------- */

/* Zero in any field means "the default" given in its comment. */
struct mc_engine_config {
    int32_t max_seqs;       /* sequences running at once (default 32) */
    int32_t prefill_chunk;  /* prompt tokens per step, all sequences together (default 64);
                             * one forward batch has at most max_seqs + prefill_chunk rows */
    size_t kv_budget_bytes; /* KV memory of all running sequences (default: unlimited) */
    int32_t n_ctx;          /* positions per sequence, prompt + completion (default: the
                             * model's training context) */
    int n_threads;          /* forward-pass threads (default: all CPUs) */
    int32_t max_queue;      /* queued (not yet running) requests per tenant (default 256) */

    /* Optional observer for latency metrics, called on the engine thread for every
     * sampled token: first is true for a request's first token, and seconds is then the
     * time from submit to that token (time to first token); otherwise it is the time
     * since the request's previous token (inter-token latency). Must not block or call
     * into the engine. */
    void (*on_token)(void *user, const char *tenant, bool first, double seconds);
    void *on_token_user;
};

/* ---- Requests --------------------------------------------------------------------- */

/* Sampling. temperature <= 0 means greedy (argmax). Zero values disable each filter. */
struct mc_engine_sampling {
    float temperature;
    int32_t top_k;           /* keep the k most likely tokens (0: all) */
    float top_p;             /* nucleus mass (0 or >= 1: off) */
    float min_p;             /* drop tokens below min_p * p(best) (0: off) */
    float repeat_penalty;    /* llama.cpp-style multiplicative penalty (0 or 1: off) */
    float presence_penalty;  /* OpenAI-style, subtracted once per seen token */
    float frequency_penalty; /* OpenAI-style, subtracted per occurrence */
    int32_t penalty_last_n;  /* window of recent tokens the penalties look at (0: 64) */
    uint64_t seed;           /* with the same seed and prompt the output is reproducible */
};

/* One request. Everything is copied by mc_engine_submit; the caller may free it right
 * after. (Not struct mc_gen_params: that name belongs to model/generate.h.) */
struct mc_engine_params {
    const char *tenant;    /* tenant id, 1..MC_ENGINE_TENANT_MAX bytes */
    uint32_t weight;       /* tenant's share weight, 1..1000 (0: 1); the latest wins */
    const int32_t *prompt; /* prompt token ids, already rendered and tokenized */
    int32_t n_prompt;      /* >= 1 and < n_ctx */
    int32_t max_tokens;    /* completion tokens (<= 0, or more than the context leaves:
                            * until the context is full, finish_reason "length") */
    struct mc_engine_sampling sampling;
    const char *const *stop; /* stop strings (may be split across tokens), or NULL */
    int32_t n_stop;          /* 0..MC_ENGINE_MAX_STOP */
    bool logprobs;           /* report each sampled token's log-probability */
    int32_t top_logprobs;    /* and this many alternatives (0..MC_ENGINE_MAX_TOP_LOGPROBS) */
    bool ignore_eos;         /* keep going past end-of-generation tokens */
    /* LoRA adapter of this request, or NULL for the base model alone. The engine takes
     * its own reference (mc_lora_retain) at submit and drops it before the request's
     * last event (DONE or ERROR) is delivered, so the caller may release its own right
     * after submit, and an adapter deleted or replaced meanwhile stays valid for the
     * sequences that use it. It must be bound to the engine's model (else MC_EINVAL). */
    struct mc_lora *adapter;
    float adapter_scale; /* per-request multiplier of the adapter's alpha/r: 0 means 1;
                          * otherwise finite, in (0, MC_ENGINE_MAX_ADAPTER_SCALE] */
};

/* ---- Events ----------------------------------------------------------------------- */

enum mc_engine_event_type {
    MC_ENGINE_EV_TEXT = 1, /* new completion text (and the tokens that produced it) */
    MC_ENGINE_EV_DONE,     /* the request finished normally; always the last event */
    MC_ENGINE_EV_ERROR,    /* the request failed or was cancelled; always the last event */
};

struct mc_engine_top_logprob {
    int32_t token;
    float logprob;
};

struct mc_engine_logprob {
    int32_t token; /* the sampled token */
    float logprob; /* its natural log-probability after penalties and temperature (1 when
                    * greedy), before top-k/top-p/min-p truncation */
    int32_t n_top; /* entries in top, most likely first */
    struct mc_engine_top_logprob top[MC_ENGINE_MAX_TOP_LOGPROBS];
};

/* Every pointer in an event is valid only during the callback. */
struct mc_engine_event {
    enum mc_engine_event_type type;

    /* TEXT: a delta of valid, complete UTF-8 that never contains any part of a stop
     * string. Each sampled token appears in exactly one TEXT event's tokens (end-of-
     * generation tokens and tokens inside a matched stop string included); a TEXT
     * event whose text is empty only occurs right before DONE, to hand over the last
     * tokens. Concatenating every TEXT delta gives the whole completion. */
    const char *text;
    size_t text_len;
    const int32_t *tokens;
    int32_t n_tokens;
    const struct mc_engine_logprob *logprobs; /* n_tokens entries, or NULL if not asked */

    /* DONE: finish_reason is "stop" (end-of-generation token or stop string) or "length"
     * (max_tokens or the context ran out). DONE and ERROR carry the usage so far. */
    const char *finish_reason;
    int32_t prompt_tokens;
    int32_t completion_tokens;

    /* ERROR: code is MC_ECANCEL for mc_engine_cancel, drain timeout or engine shutdown,
     * else the failure's code; message is one line without content from the request. */
    int code;
    const char *message;

    int64_t time_ns; /* CLOCK_MONOTONIC time the event was produced */
};

typedef void (*mc_engine_event_fn)(const struct mc_engine_event *ev, void *user);

/* ---- Engine ----------------------------------------------------------------------- */

/* Creates an engine on m (borrowed; it must outlive the engine) and starts its loop
 * thread. MC_EINVAL naming the field for a bad config value; MC_ENOMEM. */
int mc_engine_create(const struct mc_model *m, const struct mc_engine_config *cfg,
                     struct mc_engine **out, struct mc_err *err);

/* Stops the loop: every queued or running request gets an ERROR event (MC_ECANCEL), the
 * thread is joined and everything is freed. Handles the caller still holds stay valid
 * until mc_gen_release. Accepts NULL. */
void mc_engine_free(struct mc_engine *e);

/* Queues a request. On success *out is a handle the caller must mc_gen_release (pass
 * out = NULL to release it at once) and on_event(ev, user) will be called for its events,
 * possibly before this function returns, ending with exactly one DONE or ERROR. On failure
 * no event is ever delivered and *out is NULL:
 *   MC_EINVAL  a bad field (named in the message), including a prompt that does not fit
 *              the context ("prompt of N tokens leaves no room in the context of M tokens",
 *              i.e. n_prompt >= n_ctx: the HTTP layer's context_length_exceeded), a token
 *              id out of the vocabulary, an adapter not bound to this model or a scale out
 *              of range, or a request whose KV cache alone exceeds the budget;
 *   MC_EFULL   the tenant's queue holds max_queue requests already;
 *   MC_ECANCEL the engine is draining or stopping;
 *   MC_ENOMEM. */
int mc_engine_submit(struct mc_engine *e, const struct mc_engine_params *p,
                     mc_engine_event_fn on_event, void *user, struct mc_gen **out,
                     struct mc_err *err);

/* Asks the engine to stop gen (its client went away). The sequence is freed at the next
 * step and gets an ERROR event with MC_ECANCEL, unless it already finished. Any thread;
 * idempotent; gen must not have been released. */
void mc_engine_cancel(struct mc_gen *gen);

/* Drops the caller's reference to gen. The engine keeps its own until the last event, so
 * releasing does not cancel. Accepts NULL. */
void mc_gen_release(struct mc_gen *gen);

/* Graceful shutdown: from now on submits fail with MC_ECANCEL; requests already accepted
 * (queued or running) may finish for up to timeout_ms, then the rest are cancelled (ERROR
 * with MC_ECANCEL). Blocks until no request is left. Returns the number of requests that
 * had to be cancelled (0 when everything finished in time). */
int mc_engine_drain(struct mc_engine *e, int64_t timeout_ms);

/* ---- Statistics ------------------------------------------------------------------- */

struct mc_engine_stats {
    uint64_t n_steps;           /* forward batches run */
    uint64_t n_prompt_tokens;   /* prompt tokens processed (recomputation included) */
    uint64_t n_gen_tokens;      /* tokens sampled */
    uint64_t n_requests_done;   /* requests that ended with DONE */
    uint64_t n_requests_failed; /* requests that ended with ERROR (cancellations included) */
    uint64_t n_preemptions;     /* sequences preempted for fairness */
    int32_t n_active;           /* sequences admitted and running */
    int32_t n_queued;           /* requests waiting in all tenant queues */
    size_t kv_bytes_used;       /* KV memory reserved by running sequences */
    size_t kv_budget_bytes;     /* the configured budget (SIZE_MAX: unlimited) */
};

/* A consistent snapshot of the counters (any thread). */
void mc_engine_stats(struct mc_engine *e, struct mc_engine_stats *out);

/* Queued and running requests of one tenant (both 0 for a tenant the engine has no
 * request of). */
void mc_engine_tenant_load(struct mc_engine *e, const char *tenant, int32_t *n_queued,
                           int32_t *n_active);

/* Calls fn once for every tenant that has a queued or running request (for per-tenant
 * queue-depth gauges). fn runs under the engine's lock: it must be quick and must not
 * call back into the engine. */
typedef void (*mc_engine_tenant_fn)(void *user, const char *tenant, int32_t n_queued,
                                    int32_t n_active);
void mc_engine_tenant_loads(struct mc_engine *e, mc_engine_tenant_fn fn, void *user);

#endif
