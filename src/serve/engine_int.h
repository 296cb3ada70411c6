/* engine_int.h - the engine's internals, shared by engine.c, engine_sched.c and the tests.
 *
 * Two layers: the scheduler core (struct sched: per-tenant queues, fair admission under a
 * sequence and KV budget, preemption, step planning) is plain data with no threads and no
 * model, so its decisions can be tested step by step; the engine (engine.c) wraps it with
 * the loop thread, the forward pass and token generation, reaching the model through a
 * small backend table so tests can also run the whole loop on a fake model. Other modules
 * include engine.h only. */
#ifndef MC_ENGINE_INT_H
#define MC_ENGINE_INT_H

#include "base/err.h"
#include "serve/engine.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Scheduler core ----------------------------------------------------------------- */

enum sched_state {
    SCHED_QUEUED = 0, /* in its tenant's queue, no KV */
    SCHED_ACTIVE,     /* admitted: holds a slot, its KV reservation and (in the engine) a KV */
    SCHED_GONE,       /* removed (finished, failed or cancelled) */
};

struct sched_tenant;

/* One sequence as the scheduler sees it. The owner fills the fields marked "in" before
 * sched_enqueue and advances n_kv / n_tokens as steps run. */
struct sched_seq {
    struct sched_tenant *tenant;
    struct sched_seq *prev, *next;         /* tenant queue, or tenant active list */
    struct sched_seq *act_prev, *act_next; /* global active list, admission order */
    enum sched_state state;
    int32_t n_tokens;   /* in: tokens known (prompt, then prompt + sampled) */
    int32_t n_kv;       /* tokens already written to its KV (0 while queued) */
    size_t kv_bytes;    /* in: KV memory reserved while active */
    double cost;        /* in: fair-queuing cost (tokens the request may occupy) */
    uint64_t admit_seq; /* order of the latest admission, 0 while queued */
    bool preempt_mark;  /* scratch for sched_admit's preemption plan */
    bool charged;       /* its cost was added to its tenant's finish tag */
    void *owner;        /* the engine's request */
};

struct sched_tenant {
    char name[MC_ENGINE_TENANT_MAX + 1];
    uint32_t weight;
    uint64_t order;                    /* creation order, breaks ties */
    struct sched_tenant *prev, *next;  /* list of tenants with any request */
    struct sched_seq *q_head, *q_tail; /* queued requests, oldest first */
    struct sched_seq *a_head, *a_tail; /* active sequences, oldest admission first */
    int32_t n_queued;
    int32_t n_active;
    size_t kv_used;
    double head_start;  /* fair-queuing start tag of q_head */
    double finish;      /* finish tag of the latest admission */
    bool skip;          /* over its share this admission round */
    int32_t sim_active; /* scratch for preemption planning */
    size_t sim_kv;
};

struct sched {
    int32_t max_seqs;
    int32_t prefill_chunk;
    int32_t max_queue;
    size_t kv_budget;             /* SIZE_MAX: unlimited */
    struct sched_tenant *tenants; /* every tenant with a queued or active request */
    struct sched_seq *act_head, *act_tail;
    int32_t n_active;
    int32_t n_queued;
    size_t kv_used;
    double vtime; /* system virtual time: start tag of the latest admission */
    uint64_t n_admits;
    uint64_t n_tenants_made;
    uint64_t prefill_cursor; /* admit_seq of the last sequence given prefill tokens */
    uint64_t n_preemptions;
};

/* One piece of work for a step: tokens [start, start + count) of seq, logits for the
 * last one when want_logits. */
struct sched_work {
    struct sched_seq *seq;
    int32_t start;
    int32_t count;
    bool want_logits;
};

void sched_init(struct sched *s, int32_t max_seqs, int32_t prefill_chunk, int32_t max_queue,
                size_t kv_budget);
/* Frees the tenant records; the sequences belong to the caller. */
void sched_deinit(struct sched *s);

/* Finds a tenant with requests, or NULL. */
struct sched_tenant *sched_tenant_find(struct sched *s, const char *name);

/* Puts seq (state QUEUED, fields marked "in" set) at the back of tenant's queue, creating
 * the tenant record if needed and setting its weight. MC_EFULL when the tenant already
 * has max_queue queued requests; MC_ENOMEM. */
int sched_enqueue(struct sched *s, const char *tenant, uint32_t weight, struct sched_seq *seq,
                  struct mc_err *err);

/* Removes seq from whatever it is in (queue or active set) and marks it GONE. A tenant
 * left with no request is forgotten. */
void sched_remove(struct sched *s, struct sched_seq *seq);

/* Admission for one step. Appends the sequences it preempted (now QUEUED again, at the
 * front of their tenant's queue, n_kv reset to 0: their KV must be freed) to preempted and
 * the sequences it admitted (ACTIVE: they need a KV) to admitted; each array must have room
 * for 2 * max_seqs entries. A sequence may appear in both lists, even twice in one: handle
 * preempted first (free a KV if it has one), then create a KV for each admitted entry
 * that is ACTIVE and has none. */
void sched_admit(struct sched *s, struct sched_seq **preempted, int32_t *n_preempted,
                 struct sched_seq **admitted, int32_t *n_admitted);

/* Undoes the admission of seq (its KV could not be created): back to the front of its
 * queue; it is not charged again when readmitted. */
void sched_unadmit(struct sched *s, struct sched_seq *seq);

/* Plans one step: one decode row for every active sequence with exactly one pending
 * token, then up to prefill_chunk prompt tokens for the others, handed out round robin in
 * admission order. Fills work (room for max_seqs entries) and returns its length; *n_rows
 * gets the total token count. */
int32_t sched_plan(struct sched *s, struct sched_work *work, int32_t *n_rows);

/* ---- Backend: what the engine needs from a model ------------------------------------ */

/* How a sequence's text stream ends (the model's enum mc_finish, mirrored so that the
 * scheduler core does not depend on the generation code). */
enum engine_finish {
    ENGINE_FINISH_NONE = 0,
    ENGINE_FINISH_STOP,
    ENGINE_FINISH_LENGTH,
};

struct engine_stream_params {
    int32_t max_tokens;
    const char *const *stop;
    int32_t n_stop;
    bool ignore_eos;
};

struct engine_row {
    int32_t token;
    int32_t pos;
    void *kv;
    bool want_logits;
    const struct mc_lora *adapter; /* NULL: the base model alone */
    float adapter_scale;
};

struct engine_backend {
    void *impl;
    int32_t n_vocab;
    int32_t n_ctx_train;
    size_t (*kv_bytes)(void *impl, int32_t n_ctx);
    int (*kv_create)(void *impl, int32_t n_ctx, void **out, struct mc_err *err);
    void (*kv_free)(void *impl, void *kv);
    /* MC_OK if adapter can run on this model, else MC_EINVAL naming the mismatch. May be
     * NULL (every adapter is accepted, as the fake models of the tests do). */
    int (*adapter_check)(void *impl, const struct mc_lora *adapter, struct mc_err *err);
    /* Prepares scratch for batches of up to max_rows rows. */
    int (*prepare)(void *impl, int32_t max_rows, int n_threads, struct mc_err *err);
    /* Runs rows; logits gets n_vocab floats per want_logits row, in row order. */
    int (*forward)(void *impl, const struct engine_row *rows, int32_t n_rows, float *logits,
                   struct mc_err *err);
    /* A text stream per sequence: push takes one sampled token (last: no token can follow
     * it), points text at the bytes that may be shown now (valid until the next push) and
     * says whether generation ended (end-of-generation token, stop string, max_tokens). */
    int (*stream_create)(void *impl, const struct engine_stream_params *p, void **out,
                         struct mc_err *err);
    enum engine_finish (*stream_push)(void *stream, int32_t token, bool last, const char **text,
                                      size_t *len);
    void (*stream_free)(void *stream);
    /* Frees impl (called by mc_engine_free). May be NULL. */
    void (*destroy)(void *impl);
};

/* mc_engine_create on any backend (the test programs pass a fake model). Takes ownership
 * of be->impl (destroyed with the engine, also when creation fails). */
int engine_create_with_backend(const struct engine_backend *be, const struct mc_engine_config *cfg,
                               struct mc_engine **out, struct mc_err *err);

#endif
