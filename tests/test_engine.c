/* test_engine.c - the engine: scheduler decisions counted in steps (fairness, weights, KV
 * budget, chunked prefill, preemption), then the whole loop on a fake model (events, stop
 * strings, UTF-8, cancellation, drain), then end to end on stories260K when the model
 * loads. Nothing here measures time: every fairness claim is a count of steps. */
#include "adapter/lora.h"
#include "base/err.h"
#include "base/log.h"
#include "base/mem.h"
#include "model/model.h"
#include "serve/engine.h"
#include "serve/engine_int.h"
#include "test_util.h"

#include <jansson.h> /* json_load_file, json_object_get */
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* ================================ Scheduler simulation ============================== */

/* A simulated request: a prompt of n_prompt tokens, then max_gen sampled tokens. */
struct sim_req {
    struct sched_seq seq;
    int32_t n_prompt;
    int32_t max_gen;
    int32_t n_gen;
    int64_t first_token_step; /* -1 until its first token */
    bool done;
};

struct sim {
    struct sched s;
    int64_t step;
    int32_t max_active_seen;
    int32_t max_rows_seen;
    size_t max_kv_seen;
};

static void sim_init(struct sim *m, int32_t max_seqs, int32_t chunk, size_t kv_budget) {
    memset(m, 0, sizeof(*m));
    sched_init(&m->s, max_seqs, chunk, 1000, kv_budget);
}

static void sim_submit(struct sim *m, const char *tenant, uint32_t weight, struct sim_req *r,
                       int32_t n_prompt, int32_t max_gen, size_t kv_bytes) {
    memset(r, 0, sizeof(*r));
    r->n_prompt = n_prompt;
    r->max_gen = max_gen;
    r->first_token_step = -1;
    r->seq.n_tokens = n_prompt;
    r->seq.kv_bytes = kv_bytes;
    r->seq.cost = n_prompt + max_gen;
    r->seq.owner = r;
    struct mc_err err = {0};
    assert_int_equal(sched_enqueue(&m->s, tenant, weight, &r->seq, &err), MC_OK);
}

/* One step: admit, plan, then "run" the plan as the engine would. */
static void sim_step(struct sim *m) {
    struct sched_seq *pre[64], *adm[64];
    struct sched_work work[32];
    int32_t n_pre, n_adm, n_rows;
    sched_admit(&m->s, pre, &n_pre, adm, &n_adm);
    int32_t n = sched_plan(&m->s, work, &n_rows);
    m->step++;
    if (m->s.n_active > m->max_active_seen)
        m->max_active_seen = m->s.n_active;
    if (n_rows > m->max_rows_seen)
        m->max_rows_seen = n_rows;
    if (m->s.kv_used > m->max_kv_seen)
        m->max_kv_seen = m->s.kv_used;
    for (int32_t i = 0; i < n; i++) {
        struct sched_seq *q = work[i].seq;
        struct sim_req *r = q->owner;
        assert_int_equal(work[i].start, q->n_kv);
        q->n_kv += work[i].count;
        if (!work[i].want_logits)
            continue;
        assert_int_equal(q->n_kv, q->n_tokens);
        q->n_tokens++;
        r->n_gen++;
        if (r->first_token_step < 0)
            r->first_token_step = m->step;
        if (r->n_gen == r->max_gen) {
            r->done = true;
            sched_remove(&m->s, q);
        }
    }
}

static void sim_run_until_idle(struct sim *m, int64_t max_steps) {
    while ((m->s.n_active || m->s.n_queued) && max_steps-- > 0)
        sim_step(m);
    assert_int_equal(m->s.n_active + m->s.n_queued, 0);
}

static void test_sched_quiet_tenant_starts_within_two_steps(void **state) {
    (void)state;
    static struct sim_req a[100], b;
    struct sim m;
    sim_init(&m, 8, 64, SIZE_MAX);
    for (int i = 0; i < 100; i++)
        sim_submit(&m, "A", 1, &a[i], 12, 200, 1000);
    for (int i = 0; i < 5; i++)
        sim_step(&m);
    assert_int_equal(m.s.n_active, 8);

    sim_submit(&m, "B", 1, &b, 12, 5, 1000);
    int64_t submitted_at = m.step;
    while (b.first_token_step < 0 && m.step < 1000)
        sim_step(&m);
    /* B is admitted at the next step by preempting A's youngest sequence and its whole
     * 12-token prompt fits that step's prefill chunk: first token one step later. */
    assert_int_equal(b.first_token_step - submitted_at, 1);
    assert_int_equal(m.s.n_preemptions, 1);
    assert_int_equal(m.max_active_seen, 8);
    sched_deinit(&m.s);
}

static void test_sched_quiet_tenant_gets_half_under_equal_weights(void **state) {
    (void)state;
    static struct sim_req a[100], b[100];
    struct sim m;
    sim_init(&m, 8, 64, SIZE_MAX);
    for (int i = 0; i < 100; i++)
        sim_submit(&m, "A", 1, &a[i], 4, 100, 1);
    for (int i = 0; i < 3; i++)
        sim_step(&m);
    for (int i = 0; i < 100; i++)
        sim_submit(&m, "B", 1, &b[i], 4, 100, 1);
    sim_step(&m);
    sim_step(&m);
    /* Equal weights: B preempts A down to half of the eight slots, no further. */
    struct sched_tenant *ta = sched_tenant_find(&m.s, "A");
    struct sched_tenant *tb = sched_tenant_find(&m.s, "B");
    assert_int_equal(ta->n_active, 4);
    assert_int_equal(tb->n_active, 4);
    assert_int_equal(m.s.n_preemptions, 4);
    sim_run_until_idle(&m, 100000);
    sched_deinit(&m.s);
}

static void test_sched_weights_split_admissions_three_to_one(void **state) {
    (void)state;
    static struct sim_req a[200], b[200];
    struct sim m;
    sim_init(&m, 4, 64, SIZE_MAX);
    for (int i = 0; i < 200; i++) {
        sim_submit(&m, "A", 3, &a[i], 1, 1, 1);
        sim_submit(&m, "B", 1, &b[i], 1, 1, 1);
    }
    /* Every request takes one step; count completions after 20 steps (80 requests). */
    for (int i = 0; i < 20; i++)
        sim_step(&m);
    int na = 0, nb = 0;
    for (int i = 0; i < 200; i++) {
        na += a[i].done;
        nb += b[i].done;
    }
    assert_int_equal(na + nb, 80);
    assert_in_range(na, 59, 61);
    sim_run_until_idle(&m, 100000);
    sched_deinit(&m.s);
}

static void test_sched_kv_budget_bounds_concurrency(void **state) {
    (void)state;
    static struct sim_req r[20];
    struct sim m;
    sim_init(&m, 16, 64, 350);
    for (int i = 0; i < 20; i++)
        sim_submit(&m, i % 2 ? "A" : "B", 1, &r[i], 3, 10, 100);
    sim_run_until_idle(&m, 10000);
    assert_int_equal(m.max_active_seen, 3);
    assert_int_equal(m.max_kv_seen, 300);
    for (int i = 0; i < 20; i++)
        assert_true(r[i].done);
    assert_int_equal(m.s.kv_used, 0);
    sched_deinit(&m.s);
}

static void test_sched_prefill_is_chunked_round_robin(void **state) {
    (void)state;
    struct sim_req big, small;
    struct sim m;
    sim_init(&m, 8, 64, SIZE_MAX);
    sim_submit(&m, "A", 1, &big, 200, 2, 1);
    sim_submit(&m, "B", 1, &small, 10, 2, 1);
    struct sched_seq *pre[16], *adm[16];
    struct sched_work w[8];
    int32_t n_pre, n_adm, n_rows;

    sched_admit(&m.s, pre, &n_pre, adm, &n_adm);
    assert_int_equal(n_adm, 2);
    assert_int_equal(sched_plan(&m.s, w, &n_rows), 1);
    assert_ptr_equal(w[0].seq, &big.seq);
    assert_int_equal(w[0].count, 64);
    assert_false(w[0].want_logits);
    assert_int_equal(n_rows, 64);
    big.seq.n_kv += 64;

    /* Next step the small prompt is served first, the rest of the chunk goes on. */
    assert_int_equal(sched_plan(&m.s, w, &n_rows), 2);
    assert_ptr_equal(w[0].seq, &small.seq);
    assert_int_equal(w[0].count, 10);
    assert_true(w[0].want_logits);
    assert_ptr_equal(w[1].seq, &big.seq);
    assert_int_equal(w[1].start, 64);
    assert_int_equal(w[1].count, 54);
    assert_int_equal(n_rows, 64);
    sched_deinit(&m.s);
}

static void test_sched_preempted_sequence_is_recomputed_and_finishes(void **state) {
    (void)state;
    static struct sim_req a[4], b;
    struct sim m;
    sim_init(&m, 4, 64, SIZE_MAX);
    for (int i = 0; i < 4; i++)
        sim_submit(&m, "A", 1, &a[i], 5, 30, 1);
    for (int i = 0; i < 10; i++)
        sim_step(&m);
    sim_submit(&m, "B", 1, &b, 5, 3, 1);
    sim_step(&m);
    /* A's youngest (the last admitted) went back to the front of A's queue with its
     * sampled tokens kept and its KV dropped. */
    assert_int_equal(a[3].seq.state, SCHED_QUEUED);
    assert_int_equal(a[3].seq.n_kv, 0);
    assert_int_equal(a[3].seq.n_tokens, 5 + a[3].n_gen);
    assert_int_equal(a[3].n_gen, 10);
    sim_run_until_idle(&m, 1000);
    for (int i = 0; i < 4; i++)
        assert_int_equal(a[i].n_gen, 30);
    assert_true(b.done);
    sched_deinit(&m.s);
}

static void test_sched_queue_full_names_tenant(void **state) {
    (void)state;
    struct sched s;
    struct sched_seq q[3];
    struct mc_err err = {0};
    memset(q, 0, sizeof(q));
    sched_init(&s, 4, 64, 2, SIZE_MAX);
    assert_int_equal(sched_enqueue(&s, "acme", 1, &q[0], &err), MC_OK);
    assert_int_equal(sched_enqueue(&s, "acme", 1, &q[1], &err), MC_OK);
    assert_int_equal(sched_enqueue(&s, "acme", 1, &q[2], &err), MC_EFULL);
    assert_string_equal(err.msg, "tenant=acme queue holds 2 requests (max_queue 2)");
    assert_int_equal(sched_enqueue(&s, "other", 1, &q[2], &err), MC_OK);

    /* Removing every request of a tenant forgets its record. */
    sched_remove(&s, &q[2]);
    assert_null(sched_tenant_find(&s, "other"));
    assert_non_null(sched_tenant_find(&s, "acme"));
    sched_remove(&s, &q[0]);
    sched_remove(&s, &q[1]);
    assert_null(s.tenants);
    assert_int_equal(s.n_queued, 0);
    sched_deinit(&s);
}

/* ================================ Fake model ======================================== */

/* A model whose next token is a function of the whole history in its own KV cache, so a
 * row that reads another sequence's cache, a wrong position or a skipped token changes
 * the output. Token 0 is end-of-generation; token t's text is the letter 'a' + t. */
#define FAKE_VOCAB 32
#define FAKE_CTX   256

struct fake_kv {
    int32_t n_ctx;
    int32_t n_used;
    int32_t tok[FAKE_CTX];
};

struct fake {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t n_steps;
    int32_t n_kv_live;
    int32_t max_kv_live;
    int32_t max_rows;
    int32_t max_logit_rows; /* most want_logits rows in one batch */
    bool gated;             /* each forward waits for a permit */
    int64_t permits;
    int delay_us; /* sleep per forward */
};

static int32_t fake_next(const int32_t *tok, int32_t n) {
    uint32_t h = 2166136261u;
    for (int32_t i = 0; i < n; i++)
        h = (h ^ (uint32_t)tok[i]) * 16777619u;
    if (tok[n - 1] == FAKE_VOCAB - 1)
        return 0;
    return 1 + (int32_t)(h % (FAKE_VOCAB - 2));
}

/* The greedy completion of one prompt, computed directly. */
static int32_t fake_reference(const int32_t *prompt, int32_t n_prompt, int32_t max_tokens,
                              int32_t *out) {
    int32_t hist[FAKE_CTX];
    memcpy(hist, prompt, (size_t)n_prompt * sizeof(*hist));
    int32_t n = n_prompt, k = 0;
    while (k < max_tokens) {
        int32_t t = fake_next(hist, n);
        out[k++] = t;
        if (t == 0)
            break;
        hist[n++] = t;
    }
    return k;
}

static size_t fake_kv_bytes(void *impl, int32_t n_ctx) {
    (void)impl;
    return 1000 + (size_t)n_ctx * 10;
}

static int fake_kv_create(void *impl, int32_t n_ctx, void **out, struct mc_err *err) {
    struct fake *f = impl;
    struct fake_kv *kv = mc_calloc(1, sizeof(*kv));
    if (!kv)
        return mc_err_set(err, MC_ENOMEM, "fake kv");
    kv->n_ctx = n_ctx;
    pthread_mutex_lock(&f->mu);
    if (++f->n_kv_live > f->max_kv_live)
        f->max_kv_live = f->n_kv_live;
    pthread_mutex_unlock(&f->mu);
    *out = kv;
    return MC_OK;
}

static void fake_kv_free(void *impl, void *kv) {
    struct fake *f = impl;
    pthread_mutex_lock(&f->mu);
    f->n_kv_live--;
    pthread_mutex_unlock(&f->mu);
    mc_free(kv);
}

static int fake_prepare(void *impl, int32_t max_rows, int n_threads, struct mc_err *err) {
    struct fake *f = impl;
    (void)n_threads;
    (void)err;
    f->max_rows = max_rows;
    return MC_OK;
}

static int fake_forward(void *impl, const struct engine_row *rows, int32_t n_rows, float *logits,
                        struct mc_err *err) {
    struct fake *f = impl;
    pthread_mutex_lock(&f->mu);
    while (f->gated && f->permits == 0)
        pthread_cond_wait(&f->cv, &f->mu);
    if (f->gated)
        f->permits--;
    pthread_mutex_unlock(&f->mu);
    if (f->delay_us)
        usleep((useconds_t)f->delay_us);
    if (n_rows > f->max_rows)
        return mc_err_set(err, MC_EINTERNAL, "batch of %d rows, prepared for %d", n_rows,
                          f->max_rows);

    /* A planning bug shows up as a position that does not continue its own cache (the
     * fake then leaves that cache half advanced; the test fails anyway). */
    int32_t n_out = 0;
    for (int32_t i = 0; i < n_rows; i++) {
        struct fake_kv *kv = rows[i].kv;
        if (rows[i].pos != kv->n_used || kv->n_used >= kv->n_ctx)
            return mc_err_set(err, MC_EINTERNAL, "row %d at pos %d, kv holds %d of %d", i,
                              rows[i].pos, kv->n_used, kv->n_ctx);
        kv->tok[kv->n_used++] = rows[i].token;
        if (!rows[i].want_logits)
            continue;
        float *l = logits + (size_t)n_out++ * FAKE_VOCAB;
        for (int32_t v = 0; v < FAKE_VOCAB; v++)
            l[v] = 0.0f;
        l[fake_next(kv->tok, kv->n_used)] = 1.0f;
    }
    pthread_mutex_lock(&f->mu);
    f->n_steps++;
    if (n_out > f->max_logit_rows)
        f->max_logit_rows = n_out;
    pthread_mutex_unlock(&f->mu);
    return MC_OK;
}

struct fake_stream {
    struct engine_stream_params p;
    int32_t n;
    bool ended;
    char buf[1];
};

static int fake_stream_create(void *impl, const struct engine_stream_params *p, void **out,
                              struct mc_err *err) {
    (void)impl;
    struct fake_stream *s = mc_calloc(1, sizeof(*s));
    if (!s)
        return mc_err_set(err, MC_ENOMEM, "fake stream");
    s->p = *p;
    *out = s;
    return MC_OK;
}

static enum engine_finish fake_stream_push(void *stream, int32_t token, bool last,
                                           const char **text, size_t *len) {
    struct fake_stream *s = stream;
    *text = s->buf;
    *len = 0;
    if (s->ended)
        return ENGINE_FINISH_NONE;
    s->n++;
    if (token == 0 && !s->p.ignore_eos) {
        s->ended = true;
        return ENGINE_FINISH_STOP;
    }
    s->buf[0] = (char)('a' + token);
    *len = 1;
    if (last || s->n >= s->p.max_tokens) {
        s->ended = true;
        return ENGINE_FINISH_LENGTH;
    }
    return ENGINE_FINISH_NONE;
}

static void fake_stream_free(void *stream) {
    mc_free(stream);
}

static struct fake *fake_engine(struct mc_engine_config *cfg, struct mc_engine **out) {
    struct fake *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    struct engine_backend be = {
        .impl = f,
        .n_vocab = FAKE_VOCAB,
        .n_ctx_train = FAKE_CTX,
        .kv_bytes = fake_kv_bytes,
        .kv_create = fake_kv_create,
        .kv_free = fake_kv_free,
        .prepare = fake_prepare,
        .forward = fake_forward,
        .stream_create = fake_stream_create,
        .stream_push = fake_stream_push,
        .stream_free = fake_stream_free,
        .destroy = NULL, /* the test frees f after the engine */
    };
    struct mc_err err = {0};
    int rc = engine_create_with_backend(&be, cfg, out, &err);
    if (rc != MC_OK)
        fail_msg("engine_create_with_backend: %s", err.msg);
    return f;
}

static void fake_allow(struct fake *f, int64_t n) {
    pthread_mutex_lock(&f->mu);
    f->permits += n;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static void fake_set_gate(struct fake *f, bool gated) {
    pthread_mutex_lock(&f->mu);
    f->gated = gated;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static int64_t fake_steps(struct fake *f) {
    pthread_mutex_lock(&f->mu);
    int64_t n = f->n_steps;
    pthread_mutex_unlock(&f->mu);
    return n;
}

static void fake_free(struct fake *f) {
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f);
}

/* ================================ Event recorder ==================================== */

struct rec {
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    struct fake *fake;
    char text[1024];
    size_t text_len;
    int32_t tokens[FAKE_CTX];
    int32_t n_tokens;
    struct mc_engine_logprob lp[8];
    int32_t n_lp;
    int n_text_events;
    int n_final;       /* DONE + ERROR events: must end at exactly 1 */
    int n_after_final; /* events after the final one: must stay 0 */
    bool done;
    char finish[16];
    int code;
    char message[256];
    int32_t prompt_tokens, completion_tokens;
    int64_t first_text_step;  /* fake step count when the first TEXT arrived, -1 before */
    struct mc_engine *engine; /* if set: engine step count and load read at each event */
    int64_t first_engine_step;
    int32_t max_active_seen;
    struct mc_gen *gen; /* with cancel_after > 0: cancelled from the callback */
    int32_t cancel_after;
};

static pthread_mutex_t rec_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t rec_cv = PTHREAD_COND_INITIALIZER;

static void rec_init(struct rec *r, struct fake *f) {
    memset(r, 0, sizeof(*r));
    r->mu = &rec_mu;
    r->cv = &rec_cv;
    r->fake = f;
    r->first_text_step = -1;
    r->first_engine_step = -1;
}

static void rec_on_event(const struct mc_engine_event *ev, void *user) {
    struct rec *r = user;
    int64_t step = r->fake ? fake_steps(r->fake) : 0;
    struct mc_engine_stats st = {0};
    if (r->engine)
        mc_engine_stats(r->engine, &st);
    pthread_mutex_lock(r->mu);
    if (st.n_active > r->max_active_seen)
        r->max_active_seen = st.n_active;
    if (ev->type == MC_ENGINE_EV_TEXT && r->first_engine_step < 0)
        r->first_engine_step = (int64_t)st.n_steps;
    if (r->n_final)
        r->n_after_final++;
    switch (ev->type) {
    case MC_ENGINE_EV_TEXT:
        r->n_text_events++;
        if (r->first_text_step < 0)
            r->first_text_step = step;
        if (r->text_len + ev->text_len < sizeof(r->text)) {
            memcpy(r->text + r->text_len, ev->text, ev->text_len);
            r->text_len += ev->text_len;
            r->text[r->text_len] = '\0';
        }
        for (int32_t i = 0; i < ev->n_tokens && r->n_tokens < FAKE_CTX; i++) {
            if (ev->logprobs && r->n_lp < 8)
                r->lp[r->n_lp++] = ev->logprobs[i];
            r->tokens[r->n_tokens++] = ev->tokens[i];
        }
        if (r->cancel_after > 0 && r->n_tokens >= r->cancel_after)
            mc_engine_cancel(r->gen);
        break;
    case MC_ENGINE_EV_DONE:
        r->n_final++;
        snprintf(r->finish, sizeof(r->finish), "%s", ev->finish_reason);
        r->prompt_tokens = ev->prompt_tokens;
        r->completion_tokens = ev->completion_tokens;
        break;
    case MC_ENGINE_EV_ERROR:
        r->n_final++;
        r->code = ev->code;
        snprintf(r->message, sizeof(r->message), "%s", ev->message);
        r->completion_tokens = ev->completion_tokens;
        break;
    }
    r->done = r->n_final > 0;
    pthread_cond_broadcast(r->cv);
    pthread_mutex_unlock(r->mu);
}

static void rec_wait(struct rec *r) {
    pthread_mutex_lock(r->mu);
    while (!r->done)
        pthread_cond_wait(r->cv, r->mu);
    pthread_mutex_unlock(r->mu);
}

static void rec_wait_tokens(struct rec *r, int32_t n) {
    pthread_mutex_lock(r->mu);
    while (r->n_tokens < n && !r->done)
        pthread_cond_wait(r->cv, r->mu);
    pthread_mutex_unlock(r->mu);
}

static void rec_check_final(struct rec *r) {
    pthread_mutex_lock(r->mu);
    int n_final = r->n_final, n_after = r->n_after_final;
    pthread_mutex_unlock(r->mu);
    assert_int_equal(n_final, 1);
    assert_int_equal(n_after, 0);
}

static struct mc_engine_params greedy_params(const char *tenant, const int32_t *prompt,
                                             int32_t n_prompt, int32_t max_tokens) {
    struct mc_engine_params p = {0};
    p.tenant = tenant;
    p.prompt = prompt;
    p.n_prompt = n_prompt;
    p.max_tokens = max_tokens;
    p.sampling.temperature = 0;
    return p;
}

static void submit_ok(struct mc_engine *e, const struct mc_engine_params *p, struct rec *r) {
    struct mc_err err = {0};
    int rc = mc_engine_submit(e, p, rec_on_event, r, NULL, &err);
    if (rc != MC_OK)
        fail_msg("mc_engine_submit: %s", err.msg);
}

/* ================================ Engine on the fake model ========================= */

static void test_engine_batch_of_eight_matches_single_sequences(void **state) {
    (void)state;
    struct mc_engine_config cfg = {.max_seqs = 8, .prefill_chunk = 16};
    struct mc_engine *e;
    struct fake *f = fake_engine(&cfg, &e);
    static struct rec r[8];
    int32_t prompts[8][40];
    fake_set_gate(f, true);
    for (int i = 0; i < 8; i++) {
        for (int k = 0; k < 40; k++)
            prompts[i][k] = 1 + (i * 7 + k * 3) % 29;
        rec_init(&r[i], f);
        /* Prompts of 5..40 tokens: several prefill chunks interleaved with decodes. */
        struct mc_engine_params p = greedy_params(i % 2 ? "A" : "B", prompts[i], 5 + 5 * i, 30);
        submit_ok(e, &p, &r[i]);
    }
    fake_set_gate(f, false);
    for (int i = 0; i < 8; i++) {
        rec_wait(&r[i]);
        rec_check_final(&r[i]);
        int32_t want[64];
        int32_t n = fake_reference(prompts[i], 5 + 5 * i, 30, want);
        assert_int_equal(r[i].n_tokens, n);
        assert_memory_equal(r[i].tokens, want, (size_t)n * sizeof(*want));
        assert_int_equal(r[i].completion_tokens, n);
        assert_int_equal(r[i].prompt_tokens, 5 + 5 * i);
        assert_string_equal(r[i].finish, want[n - 1] == 0 ? "stop" : "length");
        for (int32_t k = 0; k < n && want[k] != 0; k++)
            assert_int_equal(r[i].text[k], 'a' + want[k]);
    }
    /* All eight ran together: eight caches at once, eight logits rows in one batch. */
    assert_int_equal(f->max_kv_live, 8);
    assert_int_equal(f->max_logit_rows, 8);
    mc_engine_free(e);
    assert_int_equal(f->n_kv_live, 0);
    fake_free(f);
}

static void test_engine_end_of_generation_finishes_with_stop(void **state) {
    (void)state;
    struct mc_engine_config cfg = {.max_seqs = 4};
    struct mc_engine *e;
    struct fake *f = fake_engine(&cfg, &e);
    int32_t prompt[] = {3, 4, FAKE_VOCAB - 1}; /* the fake answers 0 (end) after 31 */
    struct rec r;
    rec_init(&r, f);
    struct mc_engine_params p = greedy_params("A", prompt, 3, 10);
    submit_ok(e, &p, &r);
    rec_wait(&r);
    rec_check_final(&r);
    assert_string_equal(r.finish, "stop");
    assert_int_equal(r.completion_tokens, 1);
    assert_int_equal(r.n_tokens, 1);
    assert_int_equal(r.tokens[0], 0);
    assert_int_equal(r.text_len, 0);
    /* The end token comes in one empty TEXT event right before DONE. */
    assert_int_equal(r.n_text_events, 1);
    mc_engine_free(e);
    fake_free(f);
}

static void test_engine_reports_logprobs_of_the_model_distribution(void **state) {
    (void)state;
    struct mc_engine_config cfg = {.max_seqs = 4};
    struct mc_engine *e;
    struct fake *f = fake_engine(&cfg, &e);
    int32_t prompt[] = {5, 6, 7};
    struct rec r;
    rec_init(&r, f);
    struct mc_engine_params p = greedy_params("A", prompt, 3, 3);
    p.logprobs = true;
    p.top_logprobs = 2;
    submit_ok(e, &p, &r);
    rec_wait(&r);
    rec_check_final(&r);
    /* Logits are 1 for the chosen token and 0 for the 31 others. */
    double z = log(exp(1.0) + (FAKE_VOCAB - 1));
    assert_int_equal(r.n_lp, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r.lp[i].token, r.tokens[i]);
        assert_float_near(r.lp[i].logprob, 1.0 - z, 1e-5);
        assert_int_equal(r.lp[i].n_top, 2);
        assert_int_equal(r.lp[i].top[0].token, r.tokens[i]);
        assert_float_near(r.lp[i].top[0].logprob, 1.0 - z, 1e-5);
        assert_int_equal(r.lp[i].top[1].token, r.tokens[i] == 0 ? 1 : 0);
        assert_float_near(r.lp[i].top[1].logprob, -z, 1e-5);
    }
    mc_engine_free(e);
    fake_free(f);
}

struct loads {
    int n_tenants;
    int32_t n_queued, n_active;
};

static void count_loads(void *user, const char *tenant, int32_t n_queued, int32_t n_active) {
    struct loads *l = user;
    assert_true(strcmp(tenant, "A") == 0 || strcmp(tenant, "B") == 0);
    l->n_tenants++;
    l->n_queued += n_queued;
    l->n_active += n_active;
}

static void test_engine_quiet_tenant_first_token_within_two_steps(void **state) {
    (void)state;
    struct mc_engine_config cfg = {.max_seqs = 4, .prefill_chunk = 32};
    struct mc_engine *e;
    struct fake *f = fake_engine(&cfg, &e);
    static struct rec a[100], b;
    int32_t prompt[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    fake_set_gate(f, true);
    for (int i = 0; i < 100; i++) {
        rec_init(&a[i], f);
        struct mc_engine_params p = greedy_params("A", prompt, 8, 40);
        p.ignore_eos = true;
        submit_ok(e, &p, &a[i]);
    }
    fake_allow(f, 5);
    while (fake_steps(f) < 5)
        usleep(100);

    /* Steps now run one permit at a time, so the count below is exact. */
    rec_init(&b, f);
    struct mc_engine_params p = greedy_params("B", prompt, 8, 5);
    int64_t submitted_at = fake_steps(f);
    submit_ok(e, &p, &b);
    for (int64_t k = submitted_at + 1; k <= submitted_at + 10; k++) {
        fake_allow(f, 1);
        while (fake_steps(f) < k)
            usleep(100);
        usleep(1000); /* the step's events are delivered right after its forward */
        pthread_mutex_lock(&rec_mu);
        bool started = b.first_text_step >= 0;
        pthread_mutex_unlock(&rec_mu);
        if (started)
            break;
    }
    int32_t nq, na;
    mc_engine_tenant_load(e, "A", &nq, &na);
    assert_int_equal(nq, 100 - 4 + 1); /* plus the preempted one, at the front again */
    assert_int_equal(na, 3);
    struct loads l = {0};
    mc_engine_tenant_loads(e, count_loads, &l);
    assert_int_equal(l.n_tenants, 2);
    assert_int_equal(l.n_queued, 97);
    assert_int_equal(l.n_active, 4);
    fake_set_gate(f, false);
    rec_wait(&b);
    rec_check_final(&b);
    /* The step running at submit time may finish first; B is admitted (preempting one
     * of A's four sequences) at the next one and its prompt fits one chunk. */
    assert_in_range(b.first_text_step - submitted_at, 1, 2);
    struct mc_engine_stats st;
    mc_engine_stats(e, &st);
    if (st.n_preemptions < 1)
        fail_msg("no preemption: steps %lld..%lld, active %d queued %d", (long long)submitted_at,
                 (long long)b.first_text_step, st.n_active, st.n_queued);

    /* Every A request, the preempted and recomputed one included, gets exactly the
     * tokens it would get alone. */
    int32_t want[40];
    assert_int_equal(fake_reference(prompt, 8, 40, want), 40);
    for (int i = 0; i < 100; i++) {
        rec_wait(&a[i]);
        rec_check_final(&a[i]);
        assert_int_equal(a[i].n_tokens, 40);
        assert_memory_equal(a[i].tokens, want, sizeof(want));
    }
    mc_engine_free(e);
    fake_free(f);
}

static void test_engine_kv_budget_limits_running_sequences(void **state) {
    (void)state;
    /* Each request reserves 1000 + 10 * (4 + 20) = 1240 bytes: two fit in 3000. */
    struct mc_engine_config cfg = {.max_seqs = 8, .kv_budget_bytes = 3000};
    struct mc_engine *e;
    struct fake *f = fake_engine(&cfg, &e);
    static struct rec r[6];
    int32_t prompt[4] = {9, 8, 7, 6};
    for (int i = 0; i < 6; i++) {
        rec_init(&r[i], f);
        struct mc_engine_params p = greedy_params("A", prompt, 4, 20);
        p.ignore_eos = true;
        submit_ok(e, &p, &r[i]);
    }
    for (int i = 0; i < 6; i++) {
        rec_wait(&r[i]);
        rec_check_final(&r[i]);
        assert_int_equal(r[i].completion_tokens, 20);
    }
    assert_int_equal(f->max_kv_live, 2);
    struct mc_engine_stats st;
    mc_engine_stats(e, &st);
    assert_int_equal(st.kv_bytes_used, 0);
    assert_int_equal(st.n_gen_tokens, 120);
    assert_int_equal(st.n_requests_done, 6);
    mc_engine_free(e);
    fake_free(f);
}

static void test_engine_cancel_stops_a_running_request(void **state) {
    (void)state;
    struct mc_engine_config cfg = {.max_seqs = 4};
    struct mc_engine *e;
    struct fake *f = fake_engine(&cfg, &e);
    fake_set_gate(f, true);
    int32_t prompt[3] = {1, 2, 3};
    struct rec r;
    rec_init(&r, f);
    struct mc_engine_params p = greedy_params("A", prompt, 3, 200);
    p.ignore_eos = true;
    struct mc_gen *g;
    struct mc_err err = {0};
    assert_int_equal(mc_engine_submit(e, &p, rec_on_event, &r, &g, &err), MC_OK);
    fake_allow(f, 5);
    rec_wait_tokens(&r, 5);
    mc_engine_cancel(g);
    fake_allow(f, 1000);
    rec_wait(&r);
    rec_check_final(&r);
    assert_int_equal(r.code, MC_ECANCEL);
    assert_string_equal(r.message, "request cancelled");
    /* Cancelled at the step after the fifth token at the latest. */
    assert_in_range(r.completion_tokens, 5, 7);
    mc_gen_release(g);
    mc_engine_free(e);
    assert_int_equal(f->n_kv_live, 0);
    fake_free(f);
}

static void test_engine_submit_rejects_bad_requests(void **state) {
    (void)state;
    struct mc_engine_config cfg = {
        .max_seqs = 1, .max_queue = 1, .n_ctx = 64, .kv_budget_bytes = 1500};
    struct mc_engine *e;
    struct fake *f = fake_engine(&cfg, &e);
    fake_set_gate(f, true);
    int32_t prompt[70] = {0};
    for (int i = 0; i < 70; i++)
        prompt[i] = 1 + i % 20;
    struct mc_err err = {0};
    struct mc_gen *g = (struct mc_gen *)&err;
    struct rec r;
    rec_init(&r, f);

    struct mc_engine_params p = greedy_params("A", prompt, 64, 10);
    assert_int_equal(mc_engine_submit(e, &p, rec_on_event, &r, &g, &err), MC_EINVAL);
    assert_string_equal(err.msg, "prompt of 64 tokens leaves no room in the context of 64 tokens");
    assert_null(g);

    p = greedy_params("A", prompt, 3, 10);
    p.prompt = (int32_t[]){1, 32, 2};
    assert_int_equal(mc_engine_submit(e, &p, rec_on_event, &r, NULL, &err), MC_EINVAL);
    assert_string_equal(err.msg, "prompt token 32 at index 1 is not in 0..31");

    p = greedy_params("", prompt, 3, 10);
    assert_int_equal(mc_engine_submit(e, &p, rec_on_event, &r, NULL, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "tenant id must be 1..64 printable bytes"));

    p = greedy_params("A", prompt, 3, 10);
    p.adapter_scale = -0.5f;
    assert_int_equal(mc_engine_submit(e, &p, rec_on_event, &r, NULL, &err), MC_EINVAL);
    assert_string_equal(err.msg, "adapter_scale -0.5 is outside (0, 16]");
    p.adapter_scale = 17;
    assert_int_equal(mc_engine_submit(e, &p, rec_on_event, &r, NULL, &err), MC_EINVAL);

    p = greedy_params("A", prompt, 3, 10);
    p.sampling.top_p = -1;
    assert_int_equal(mc_engine_submit(e, &p, rec_on_event, &r, NULL, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "top_p"));

    p = greedy_params("A", prompt, 3, 10);
    p.stop = (const char *const[]){"ok", ""};
    p.n_stop = 2;
    assert_int_equal(mc_engine_submit(e, &p, rec_on_event, &r, NULL, &err), MC_EINVAL);
    assert_string_equal(err.msg, "stop string 1 must be 1..256 bytes");

    /* 1000 + 10 * 60 = 1600 bytes of KV for a 60-position sequence: over the budget. */
    p = greedy_params("A", prompt, 50, 10);
    assert_int_equal(mc_engine_submit(e, &p, rec_on_event, &r, NULL, &err), MC_EINVAL);
    assert_string_equal(err.msg, "request needs 1600 bytes of KV cache, budget is 1500");

    /* One running (the gate holds it), one queued, the next one is refused. */
    static struct rec ok[2];
    for (int i = 0; i < 2; i++) {
        rec_init(&ok[i], f);
        p = greedy_params("A", prompt, 3, 10);
        submit_ok(e, &p, &ok[i]);
        for (int spin = 0; i == 0 && spin < 20000; spin++) {
            int32_t nq, na;
            mc_engine_tenant_load(e, "A", &nq, &na);
            if (na == 1)
                break;
            usleep(1000);
        }
    }
    p = greedy_params("A", prompt, 3, 10);
    assert_int_equal(mc_engine_submit(e, &p, rec_on_event, &r, NULL, &err), MC_EFULL);
    assert_string_equal(err.msg, "tenant=A queue holds 1 requests (max_queue 1)");
    p = greedy_params("B", prompt, 3, 10);
    static struct rec other;
    rec_init(&other, f);
    submit_ok(e, &p, &other);

    fake_set_gate(f, false);
    rec_wait(&ok[0]);
    rec_wait(&ok[1]);
    rec_wait(&other);
    assert_false(r.done);
    mc_engine_free(e);
    fake_free(f);
}

static void test_engine_drain_lets_running_requests_finish(void **state) {
    (void)state;
    struct mc_engine_config cfg = {.max_seqs = 2};
    struct mc_engine *e;
    struct fake *f = fake_engine(&cfg, &e);
    static struct rec r[4];
    int32_t prompt[3] = {4, 5, 6};
    for (int i = 0; i < 4; i++) {
        rec_init(&r[i], f);
        struct mc_engine_params p = greedy_params("A", prompt, 3, 20);
        p.ignore_eos = true;
        submit_ok(e, &p, &r[i]);
    }
    assert_int_equal(mc_engine_drain(e, 60000), 0);
    for (int i = 0; i < 4; i++) {
        rec_check_final(&r[i]);
        assert_string_equal(r[i].finish, "length");
        assert_int_equal(r[i].completion_tokens, 20);
    }
    struct rec late;
    rec_init(&late, f);
    struct mc_engine_params p = greedy_params("A", prompt, 3, 20);
    struct mc_err err = {0};
    assert_int_equal(mc_engine_submit(e, &p, rec_on_event, &late, NULL, &err), MC_ECANCEL);
    assert_string_equal(err.msg, "engine is shutting down and accepts no requests");
    mc_engine_free(e);
    fake_free(f);
}

static void test_engine_drain_timeout_cancels_the_rest(void **state) {
    (void)state;
    struct mc_engine_config cfg = {.max_seqs = 2};
    struct mc_engine *e;
    struct fake *f = fake_engine(&cfg, &e);
    f->delay_us = 2000; /* 200 tokens take at least 0.4 s; the drain allows 20 ms */
    static struct rec r[3];
    int32_t prompt[3] = {4, 5, 6};
    for (int i = 0; i < 3; i++) {
        rec_init(&r[i], f);
        struct mc_engine_params p = greedy_params("A", prompt, 3, 200);
        p.ignore_eos = true;
        submit_ok(e, &p, &r[i]);
    }
    assert_int_equal(mc_engine_drain(e, 20), 3);
    for (int i = 0; i < 3; i++) {
        rec_check_final(&r[i]);
        assert_int_equal(r[i].code, MC_ECANCEL);
        assert_string_equal(r[i].message, "engine is shutting down");
    }
    assert_int_equal(f->n_kv_live, 0);
    mc_engine_free(e);
    fake_free(f);
}

static void test_engine_free_ends_every_request_once(void **state) {
    (void)state;
    struct mc_engine_config cfg = {.max_seqs = 3};
    struct mc_engine *e;
    struct fake *f = fake_engine(&cfg, &e);
    static struct rec r[20];
    struct mc_gen *g[20];
    int32_t prompt[3] = {4, 5, 6};
    for (int i = 0; i < 20; i++) {
        rec_init(&r[i], f);
        struct mc_engine_params p = greedy_params(i % 3 ? "A" : "B", prompt, 3, 50);
        p.ignore_eos = true;
        struct mc_err err = {0};
        assert_int_equal(mc_engine_submit(e, &p, rec_on_event, &r[i], &g[i], &err), MC_OK);
    }
    mc_engine_free(e);
    for (int i = 0; i < 20; i++) {
        rec_check_final(&r[i]);
        assert_true(r[i].code == MC_ECANCEL || strcmp(r[i].finish, "length") == 0);
        /* Handles outlive the engine: cancel and release are still safe. */
        mc_engine_cancel(g[i]);
        mc_gen_release(g[i]);
    }
    assert_int_equal(f->n_kv_live, 0);
    fake_free(f);
}

struct token_obs {
    pthread_mutex_t mu;
    int n_first, n_next;
    double min_seconds;
};

static void on_token(void *user, const char *tenant, bool first, double seconds) {
    struct token_obs *o = user;
    (void)tenant;
    pthread_mutex_lock(&o->mu);
    if (first)
        o->n_first++;
    else
        o->n_next++;
    if (seconds < o->min_seconds)
        o->min_seconds = seconds;
    pthread_mutex_unlock(&o->mu);
}

static void test_engine_observer_sees_every_token(void **state) {
    (void)state;
    struct token_obs obs = {.mu = PTHREAD_MUTEX_INITIALIZER, .min_seconds = 1e9};
    struct mc_engine_config cfg = {.max_seqs = 4, .on_token = on_token, .on_token_user = &obs};
    struct mc_engine *e;
    struct fake *f = fake_engine(&cfg, &e);
    static struct rec r[5];
    int32_t prompt[3] = {4, 5, 6};
    for (int i = 0; i < 5; i++) {
        rec_init(&r[i], f);
        struct mc_engine_params p = greedy_params("T", prompt, 3, 7);
        p.ignore_eos = true;
        submit_ok(e, &p, &r[i]);
    }
    for (int i = 0; i < 5; i++)
        rec_wait(&r[i]);
    mc_engine_free(e);
    assert_int_equal(obs.n_first, 5);
    assert_int_equal(obs.n_next, 30);
    assert_true(obs.min_seconds >= 0);
    fake_free(f);
}

struct submitter {
    struct mc_engine *e;
    struct fake *f;
    char tenant[16];
    struct rec r[40];
    struct mc_gen *g[40];
};

static void *submit_many(void *arg) {
    struct submitter *s = arg;
    int32_t prompt[4] = {2, 7, 1, 8};
    for (int i = 0; i < 40; i++) {
        rec_init(&s->r[i], s->f);
        struct mc_engine_params p = greedy_params(s->tenant, prompt, 4, 12);
        p.ignore_eos = true;
        struct mc_err err = {0};
        if (mc_engine_submit(s->e, &p, rec_on_event, &s->r[i], &s->g[i], &err) != MC_OK)
            s->g[i] = NULL;
        if (i % 3 == 0 && s->g[i])
            mc_engine_cancel(s->g[i]);
    }
    return NULL;
}

static void test_engine_concurrent_submitters_and_cancels(void **state) {
    (void)state;
    struct mc_engine_config cfg = {.max_seqs = 6, .prefill_chunk = 5, .max_queue = 1000};
    struct mc_engine *e;
    struct fake *f = fake_engine(&cfg, &e);
    static struct submitter sub[4];
    pthread_t th[4];
    for (int k = 0; k < 4; k++) {
        sub[k].e = e;
        sub[k].f = f;
        snprintf(sub[k].tenant, sizeof(sub[k].tenant), "t%d", k);
        assert_int_equal(pthread_create(&th[k], NULL, submit_many, &sub[k]), 0);
    }
    for (int k = 0; k < 4; k++)
        pthread_join(th[k], NULL);

    int32_t prompt[4] = {2, 7, 1, 8};
    int32_t want[12];
    fake_reference(prompt, 4, 12, want);
    int n_cancelled = 0, n_done = 0;
    for (int k = 0; k < 4; k++) {
        for (int i = 0; i < 40; i++) {
            struct rec *r = &sub[k].r[i];
            assert_non_null(sub[k].g[i]);
            rec_wait(r);
            rec_check_final(r);
            if (r->code == MC_ECANCEL) {
                n_cancelled++;
            } else {
                assert_int_equal(r->code, MC_OK);
                assert_memory_equal(r->tokens, want, sizeof(want));
                n_done++;
            }
            mc_gen_release(sub[k].g[i]);
        }
    }
    /* Every third request was cancelled right after submit; it may still have finished
     * first, never the other way round. */
    assert_in_range(n_cancelled, 1, 4 * 14);
    assert_int_equal(n_cancelled + n_done, 160);
    assert_true(n_done >= 160 - 4 * 14);
    mc_engine_free(e);
    assert_int_equal(f->n_kv_live, 0);
    fake_free(f);
}

/* Walks an allocation failure through create, submit, a whole generation and free. The
 * main thread and the loop thread never allocate at the same time here (the main thread
 * only waits while the loop runs), so the failure counter sees one sequence of calls. */
static void test_engine_survives_every_allocation_failure(void **state) {
    (void)state;
    int32_t prompt[4] = {3, 1, 4, 1};
    int32_t want[6];
    assert_int_equal(fake_reference(prompt, 4, 6, want), 6);
    int n_done = 0, n_submit_failed = 0, n_event_failed = 0, n_create_failed = 0;
    for (long nth = 1; nth < 200; nth++) {
        struct mc_engine_config cfg = {.max_seqs = 2};
        struct fake *f = calloc(1, sizeof(*f));
        pthread_mutex_init(&f->mu, NULL);
        pthread_cond_init(&f->cv, NULL);
        struct engine_backend be = {
            .impl = f,
            .n_vocab = FAKE_VOCAB,
            .n_ctx_train = FAKE_CTX,
            .kv_bytes = fake_kv_bytes,
            .kv_create = fake_kv_create,
            .kv_free = fake_kv_free,
            .prepare = fake_prepare,
            .forward = fake_forward,
            .stream_create = fake_stream_create,
            .stream_push = fake_stream_push,
            .stream_free = fake_stream_free,
        };
        struct mc_engine *e = NULL;
        struct mc_err err = {0};
        mc_mem_fail_after(nth);
        int rc = engine_create_with_backend(&be, &cfg, &e, &err);
        if (rc != MC_OK) {
            mc_mem_fail_after(0);
            assert_int_equal(rc, MC_ENOMEM);
            assert_null(e);
            n_create_failed++;
            fake_free(f);
            continue;
        }
        struct rec r;
        rec_init(&r, f);
        struct mc_engine_params p = greedy_params("A", prompt, 4, 6);
        rc = mc_engine_submit(e, &p, rec_on_event, &r, NULL, &err);
        if (rc == MC_OK) {
            rec_wait(&r);
            rec_check_final(&r);
            if (r.code == MC_OK) {
                assert_int_equal(r.n_tokens, 6);
                assert_memory_equal(r.tokens, want, sizeof(want));
                n_done++;
            } else {
                assert_int_equal(r.code, MC_ENOMEM);
                n_event_failed++;
            }
        } else {
            assert_int_equal(rc, MC_ENOMEM);
            n_submit_failed++;
        }
        mc_engine_free(e);
        long used = mc_mem_fail_after(0);
        assert_int_equal(f->n_kv_live, 0);
        fake_free(f);
        if (used < nth)
            break; /* this run had no failure: every allocation has been tried */
    }
    assert_true(n_create_failed >= 1);
    assert_true(n_submit_failed >= 1);
    assert_true(n_event_failed >= 1);
    assert_int_equal(n_done, 1);
}

/* ================================ End to end on stories260K ========================= */

#define REF_MAX_CASES 8
#define REF_N_PREDICT 32

struct ref_case {
    int32_t prompt[64];
    int32_t n_prompt;
    int32_t greedy[REF_N_PREDICT];
    char text[512];
    double first_logprob[3]; /* log-softmax of the 3 best logits after the prompt */
    int32_t first_top[3];    /* their ids, best first (ties: lower id) */
};

/* Fills the first-token log-probabilities of c from the reference's logit vector. */
static void ref_first_logprobs(struct ref_case *c, json_t *logits) {
    size_t n = json_array_size(logits);
    assert_true(n > 3);
    double mx = -1e30, sum = 0;
    for (size_t k = 0; k < n; k++)
        mx = fmax(mx, json_real_value(json_array_get(logits, k)));
    for (size_t k = 0; k < n; k++)
        sum += exp(json_real_value(json_array_get(logits, k)) - mx);
    double z = mx + log(sum);
    for (int j = 0; j < 3; j++) {
        int32_t best = -1;
        double bv = -1e30;
        for (size_t k = 0; k < n; k++) {
            double v = json_real_value(json_array_get(logits, k));
            bool taken = false;
            for (int q = 0; q < j; q++)
                taken |= c->first_top[q] == (int32_t)k;
            if (!taken && v > bv) {
                bv = v;
                best = (int32_t)k;
            }
        }
        c->first_top[j] = best;
        c->first_logprob[j] = bv - z;
    }
}

static int ref_load(struct ref_case *cases) {
    char path[512];
    json_error_t jerr;
    json_t *root = json_load_file(
        test_shared_path(path, sizeof(path), "reference/stories260K.greedy.json"), 0, &jerr);
    if (!root)
        fail_msg("%s: %s at line %d", path, jerr.text, jerr.line);
    json_t *arr = json_object_get(root, "cases");
    int n = 0;
    for (size_t i = 0; i < json_array_size(arr) && n < REF_MAX_CASES; i++) {
        json_t *c = json_array_get(arr, i);
        json_t *pt = json_object_get(c, "prompt_tokens");
        json_t *gt = json_object_get(c, "greedy_tokens");
        struct ref_case *rc = &cases[n++];
        rc->n_prompt = (int32_t)json_array_size(pt);
        assert_in_range(rc->n_prompt, 1, 64);
        for (int32_t k = 0; k < rc->n_prompt; k++)
            rc->prompt[k] = (int32_t)json_integer_value(json_array_get(pt, (size_t)k));
        assert_int_equal(json_array_size(gt), REF_N_PREDICT);
        for (int32_t k = 0; k < REF_N_PREDICT; k++)
            rc->greedy[k] = (int32_t)json_integer_value(json_array_get(gt, (size_t)k));
        snprintf(rc->text, sizeof(rc->text), "%s",
                 json_string_value(json_object_get(c, "greedy_text")));
        json_t *logits = json_object_get(c, "last_prompt_pos_logits");
        assert_non_null(logits);
        ref_first_logprobs(rc, logits);
    }
    json_decref(root);
    return n;
}

static struct mc_model *e2e_model(void) {
    char path[512];
    struct mc_model *m = NULL;
    struct mc_err err = {0};
    if (mc_model_load(test_shared_path(path, sizeof(path), "models/stories260K.gguf"), &m, &err) !=
        MC_OK)
        fail_msg("mc_model_load: %s", err.msg);
    return m;
}

static struct mc_engine *e2e_engine(const struct mc_model *m, struct mc_engine_config *cfg) {
    struct mc_engine *e = NULL;
    struct mc_err err = {0};
    cfg->n_threads = 1;
    if (mc_engine_create(m, cfg, &e, &err) != MC_OK)
        fail_msg("mc_engine_create: %s", err.msg);
    return e;
}

static void test_e2e_batch_of_eight_matches_reference_greedy(void **state) {
    (void)state;
    struct ref_case cases[REF_MAX_CASES];
    int n_cases = ref_load(cases);
    assert_true(n_cases >= 4);
    struct mc_model *m = e2e_model();
    /* An 8-token chunk makes the longer prompts take several steps, interleaved with the
     * decode rows of the others. */
    struct mc_engine_config cfg = {.max_seqs = 8, .prefill_chunk = 8};
    struct mc_engine *e = e2e_engine(m, &cfg);
    static struct rec r[8];
    for (int i = 0; i < 8; i++)
        rec_init(&r[i], NULL);
    /* The loop stops at its first event while the recorders' lock is held, so all eight
     * are queued before a second step can run. */
    pthread_mutex_lock(&rec_mu);
    for (int i = 0; i < 8; i++) {
        struct ref_case *c = &cases[i % 4];
        r[i].engine = e;
        struct mc_engine_params p =
            greedy_params(i % 2 ? "acme" : "globex", c->prompt, c->n_prompt, REF_N_PREDICT);
        p.ignore_eos = true; /* the reference does not stop at end-of-generation */
        submit_ok(e, &p, &r[i]);
    }
    pthread_mutex_unlock(&rec_mu);
    for (int i = 0; i < 8; i++) {
        struct ref_case *c = &cases[i % 4];
        rec_wait(&r[i]);
        rec_check_final(&r[i]);
        assert_string_equal(r[i].finish, "length");
        assert_int_equal(r[i].n_tokens, REF_N_PREDICT);
        assert_memory_equal(r[i].tokens, c->greedy, sizeof(c->greedy));
        assert_string_equal(r[i].text, c->text);
        assert_int_equal(r[i].prompt_tokens, c->n_prompt);
        assert_int_equal(r[i].completion_tokens, REF_N_PREDICT);
    }
    int32_t most = 0;
    for (int i = 0; i < 8; i++)
        most = r[i].max_active_seen > most ? r[i].max_active_seen : most;
    assert_int_equal(most, 8);
    mc_engine_free(e);
    mc_model_free(m);
}

static void test_e2e_stop_string_split_across_tokens(void **state) {
    (void)state;
    struct ref_case cases[REF_MAX_CASES];
    ref_load(cases);
    struct ref_case *c = &cases[0];
    struct mc_model *m = e2e_model();

    /* The stop string is the last two bytes of one generated token's piece and the first
     * two of the next one's, so it can only match across the token boundary. */
    const struct mc_tokenizer *tok = mc_model_tokenizer(m);
    char a[64], b[64], stop[5];
    int k = 8, la = 0, lb = 0;
    for (; k + 1 < REF_N_PREDICT; k++) {
        la = mc_token_to_piece(tok, c->greedy[k], false, a, sizeof(a));
        lb = mc_token_to_piece(tok, c->greedy[k + 1], false, b, sizeof(b));
        if (la >= 2 && lb >= 2 && la < 64 && lb < 64)
            break;
    }
    assert_true(k + 1 < REF_N_PREDICT);
    memcpy(stop, a + la - 2, 2);
    memcpy(stop + 2, b, 2);
    stop[4] = '\0';
    size_t cut = (size_t)(strstr(c->text, stop) - c->text);

    struct mc_engine_config cfg = {.max_seqs = 4};
    struct mc_engine *e = e2e_engine(m, &cfg);
    struct rec r;
    rec_init(&r, NULL);
    struct mc_engine_params p = greedy_params("acme", c->prompt, c->n_prompt, REF_N_PREDICT);
    p.ignore_eos = true;
    p.stop = (const char *const[]){"never-in-a-story", stop};
    p.n_stop = 2;
    submit_ok(e, &p, &r);
    rec_wait(&r);
    rec_check_final(&r);
    assert_string_equal(r.finish, "stop");
    assert_int_equal(r.text_len, cut);
    assert_memory_equal(r.text, c->text, cut);
    assert_null(strstr(r.text, stop));
    /* Generation ends with the token that completes the match, no later. */
    assert_true(r.completion_tokens <= k + 2);
    assert_memory_equal(r.tokens, c->greedy, (size_t)r.n_tokens * sizeof(int32_t));
    mc_engine_free(e);
    mc_model_free(m);
}

static void test_e2e_cancelled_request_stops_at_the_next_step(void **state) {
    (void)state;
    struct ref_case cases[REF_MAX_CASES];
    ref_load(cases);
    struct mc_model *m = e2e_model();
    struct mc_engine_config cfg = {.max_seqs = 4};
    struct mc_engine *e = e2e_engine(m, &cfg);
    struct rec r;
    rec_init(&r, NULL);
    r.cancel_after = 3;
    struct mc_engine_params p = greedy_params("acme", cases[0].prompt, cases[0].n_prompt, 200);
    p.ignore_eos = true;
    struct mc_err err = {0};
    /* Holding the recorder's lock keeps the callback from running before r.gen is set. */
    pthread_mutex_lock(&rec_mu);
    assert_int_equal(mc_engine_submit(e, &p, rec_on_event, &r, &r.gen, &err), MC_OK);
    pthread_mutex_unlock(&rec_mu);
    rec_wait(&r);
    rec_check_final(&r);
    assert_int_equal(r.code, MC_ECANCEL);
    assert_int_equal(r.completion_tokens, 3);
    struct mc_engine_stats st;
    mc_engine_stats(e, &st);
    assert_int_equal(st.n_active, 0);
    assert_int_equal(st.kv_bytes_used, 0);
    assert_int_equal(st.n_requests_failed, 1);
    mc_gen_release(r.gen);
    mc_engine_free(e);
    mc_model_free(m);
}

static void test_e2e_quiet_tenant_starts_within_two_steps(void **state) {
    (void)state;
    struct ref_case cases[REF_MAX_CASES];
    ref_load(cases);
    struct mc_model *m = e2e_model();
    /* A 64-token chunk holds B's 12-token prompt next to those of up to four of A's
     * sequences admitted in the same step (when A's running ones finish together), so
     * B's prompt never has to wait for a second chunk. */
    struct mc_engine_config cfg = {.max_seqs = 4, .prefill_chunk = 64};
    struct mc_engine *e = e2e_engine(m, &cfg);
    static struct rec a[100], b;
    struct ref_case *c = &cases[1];
    for (int i = 0; i < 100; i++) {
        rec_init(&a[i], NULL);
        struct mc_engine_params p = greedy_params("busy", c->prompt, c->n_prompt, 32);
        p.ignore_eos = true;
        submit_ok(e, &p, &a[i]);
    }
    rec_wait_tokens(&a[0], 2);

    rec_init(&b, NULL);
    b.engine = e;
    struct mc_engine_params p = greedy_params("quiet", c->prompt, c->n_prompt, 4);
    p.ignore_eos = true;
    struct mc_engine_stats st;
    mc_engine_stats(e, &st);
    submit_ok(e, &p, &b);
    rec_wait(&b);
    rec_check_final(&b);
    /* Submitted during step k: admitted at step k + 1 (or k + 2 if step k + 1 had already
     * been planned), its prompt fits the chunk, so its first token ends that step. */
    assert_in_range(b.first_engine_step - (int64_t)st.n_steps, 1, 2);
    assert_memory_equal(b.tokens, c->greedy, 4 * sizeof(int32_t));
    mc_engine_free(e);
    mc_model_free(m);
}

static void test_e2e_kv_budget_limits_concurrency(void **state) {
    (void)state;
    struct ref_case cases[REF_MAX_CASES];
    ref_load(cases);
    struct ref_case *c = &cases[0];
    struct mc_model *m = e2e_model();
    size_t per_seq = mc_kv_bytes(m, c->n_prompt + 20);
    struct mc_engine_config cfg = {.max_seqs = 8, .kv_budget_bytes = 3 * per_seq + per_seq / 2};
    struct mc_engine *e = e2e_engine(m, &cfg);
    static struct rec r[8];
    for (int i = 0; i < 8; i++) {
        rec_init(&r[i], NULL);
        r[i].engine = e;
    }
    pthread_mutex_lock(&rec_mu); /* all eight queued before a second step (see above) */
    for (int i = 0; i < 8; i++) {
        struct mc_engine_params p = greedy_params("acme", c->prompt, c->n_prompt, 20);
        p.ignore_eos = true;
        submit_ok(e, &p, &r[i]);
    }
    pthread_mutex_unlock(&rec_mu);
    int32_t most = 0;
    for (int i = 0; i < 8; i++) {
        rec_wait(&r[i]);
        rec_check_final(&r[i]);
        assert_memory_equal(r[i].tokens, c->greedy, 20 * sizeof(int32_t));
        most = r[i].max_active_seen > most ? r[i].max_active_seen : most;
    }
    assert_int_equal(most, 3);
    mc_engine_free(e);
    mc_model_free(m);
}

static void test_e2e_two_tenants_same_prompt_share_nothing(void **state) {
    (void)state;
    struct ref_case cases[REF_MAX_CASES];
    ref_load(cases);
    struct ref_case *c = &cases[2];
    struct mc_model *m = e2e_model();
    struct mc_engine_config cfg = {.max_seqs = 4};
    struct mc_engine *e = e2e_engine(m, &cfg);
    struct rec ra, rb;
    rec_init(&ra, NULL);
    rec_init(&rb, NULL);
    struct mc_engine_params p = greedy_params("acme", c->prompt, c->n_prompt, 8);
    submit_ok(e, &p, &ra);
    rec_wait(&ra);
    p.tenant = "globex";
    submit_ok(e, &p, &rb);
    rec_wait(&rb);
    /* Same answer, and the second prompt was computed in full again: no KV or prefix
     * cache carries anything from one request (or tenant) to another. */
    assert_memory_equal(ra.tokens, rb.tokens, 8 * sizeof(int32_t));
    struct mc_engine_stats st;
    mc_engine_stats(e, &st);
    assert_int_equal(st.n_prompt_tokens, 2 * (uint64_t)c->n_prompt);
    mc_engine_free(e);
    mc_model_free(m);
}

static void test_e2e_logprobs_match_reference_logits(void **state) {
    (void)state;
    struct ref_case cases[REF_MAX_CASES];
    int n_cases = ref_load(cases);
    struct mc_model *m = e2e_model();
    struct mc_engine_config cfg = {.max_seqs = 4, .prefill_chunk = 4};
    struct mc_engine *e = e2e_engine(m, &cfg);
    static struct rec r[4];
    for (int i = 0; i < n_cases && i < 4; i++) {
        rec_init(&r[i], NULL);
        struct mc_engine_params p = greedy_params("acme", cases[i].prompt, cases[i].n_prompt, 2);
        p.ignore_eos = true;
        p.logprobs = true;
        p.top_logprobs = 3;
        submit_ok(e, &p, &r[i]);
    }
    /* All four run together (prompts in 4-token chunks), yet each first token's
     * distribution is exactly its own prompt's, as llama.cpp computed it. */
    for (int i = 0; i < n_cases && i < 4; i++) {
        rec_wait(&r[i]);
        rec_check_final(&r[i]);
        assert_int_equal(r[i].n_lp, 2);
        const struct mc_engine_logprob *lp = &r[i].lp[0];
        assert_int_equal(lp->token, cases[i].greedy[0]);
        assert_float_near(lp->logprob, cases[i].first_logprob[0], 1e-3);
        assert_int_equal(lp->n_top, 3);
        for (int j = 0; j < 3; j++) {
            assert_int_equal(lp->top[j].token, cases[i].first_top[j]);
            assert_float_near(lp->top[j].logprob, cases[i].first_logprob[j], 1e-3);
        }
    }
    mc_engine_free(e);
    mc_model_free(m);
}

/* ---- Adapters ---------------------------------------------------------------------- */

/* The cases of the LoRA reference: prompt, greedy ids and the adapter's scale (0: none). */
struct lora_case {
    int32_t prompt[64];
    int32_t n_prompt;
    int32_t greedy[REF_N_PREDICT];
    float scale;
};

static int lora_ref_load(struct lora_case *cases, int max) {
    char path[512];
    json_error_t jerr;
    json_t *root = json_load_file(
        test_shared_path(path, sizeof(path), "reference/stories260K-lora-r4.greedy.json"), 0,
        &jerr);
    if (!root)
        fail_msg("%s: %s at line %d", path, jerr.text, jerr.line);
    json_t *arr = json_object_get(root, "cases");
    int n = 0;
    for (size_t i = 0; i < json_array_size(arr) && n < max; i++) {
        json_t *c = json_array_get(arr, i);
        json_t *pt = json_object_get(c, "prompt_tokens");
        json_t *gt = json_object_get(c, "greedy_tokens");
        json_t *lj = json_object_get(c, "lora");
        struct lora_case *lc = &cases[n++];
        lc->n_prompt = (int32_t)json_array_size(pt);
        assert_in_range(lc->n_prompt, 1, 64);
        for (int32_t k = 0; k < lc->n_prompt; k++)
            lc->prompt[k] = (int32_t)json_integer_value(json_array_get(pt, (size_t)k));
        assert_int_equal(json_array_size(gt), REF_N_PREDICT);
        for (int32_t k = 0; k < REF_N_PREDICT; k++)
            lc->greedy[k] = (int32_t)json_integer_value(json_array_get(gt, (size_t)k));
        lc->scale = lj ? (float)json_number_value(json_object_get(lj, "scale")) : 0.0f;
    }
    json_decref(root);
    return n;
}

static struct mc_lora *e2e_lora(const struct mc_model *m) {
    char path[512];
    struct mc_lora_base base;
    struct mc_lora *l = NULL;
    struct mc_err err = {0};
    mc_lora_base_from_model(m, &base);
    if (mc_lora_open(test_shared_path(path, sizeof(path), "models/stories260K-lora-r4.gguf"), &base,
                     &l, &err) != MC_OK)
        fail_msg("mc_lora_open: %s", err.msg);
    return l;
}

static void test_e2e_reference_adapter_reproduces_llama_cpp_greedy(void **state) {
    (void)state;
    struct lora_case cases[8];
    int n_cases = lora_ref_load(cases, 8);
    assert_int_equal(n_cases, 6);
    struct mc_model *m = e2e_model();
    struct mc_lora *l = e2e_lora(m);
    struct mc_engine_config cfg = {.max_seqs = 8, .prefill_chunk = 8};
    struct mc_engine *e = e2e_engine(m, &cfg);
    static struct rec r[6];
    /* All six together: rows with the adapter at three scales and rows without it share
     * every batch. */
    pthread_mutex_lock(&rec_mu);
    for (int i = 0; i < n_cases; i++) {
        rec_init(&r[i], NULL);
        struct mc_engine_params p = greedy_params(i % 2 ? "acme" : "globex", cases[i].prompt,
                                                  cases[i].n_prompt, REF_N_PREDICT);
        p.ignore_eos = true;
        p.adapter = cases[i].scale > 0 ? l : NULL;
        p.adapter_scale = cases[i].scale;
        submit_ok(e, &p, &r[i]);
    }
    pthread_mutex_unlock(&rec_mu);
    for (int i = 0; i < n_cases; i++) {
        rec_wait(&r[i]);
        rec_check_final(&r[i]);
        assert_int_equal(r[i].n_tokens, REF_N_PREDICT);
        assert_memory_equal(r[i].tokens, cases[i].greedy, sizeof(cases[i].greedy));
    }
    /* Every request ended, so the engine holds no reference any more. */
    assert_int_equal(mc_lora_refcount(l), 1);
    mc_engine_free(e);
    mc_lora_release(l);
    mc_model_free(m);
}

enum { N_MIX = 16, MIX_TOKENS = 16 };

/* Runs one request alone and returns its greedy tokens in out. */
static void run_alone(struct mc_engine *e, const struct lora_case *c, struct mc_lora *l,
                      float scale, int32_t *out) {
    struct rec r;
    rec_init(&r, NULL);
    struct mc_engine_params p = greedy_params("solo", c->prompt, c->n_prompt, MIX_TOKENS);
    p.ignore_eos = true;
    p.adapter = l;
    p.adapter_scale = scale;
    submit_ok(e, &p, &r);
    rec_wait(&r);
    rec_check_final(&r);
    assert_int_equal(r.n_tokens, MIX_TOKENS);
    memcpy(out, r.tokens, MIX_TOKENS * sizeof(*out));
}

static void test_e2e_sixteen_rows_with_different_adapters_match_alone(void **state) {
    (void)state;
    struct lora_case cases[8];
    int n_cases = lora_ref_load(cases, 8);
    struct mc_model *m = e2e_model();
    struct mc_lora_base base;
    mc_lora_base_from_model(m, &base);
    /* Twelve random adapters on every projection, the reference adapter, and three rows
     * with none; different adapters give different tokens, so a row that got another
     * row's adapter would show. */
    struct mc_lora *ad[N_MIX] = {0};
    float scale[N_MIX];
    for (int i = 0; i < N_MIX; i++) {
        struct mc_err err = {0};
        scale[i] = i % 3 == 0 ? 0.5f : 1.0f;
        if (i == 12)
            ad[i] = e2e_lora(m);
        else if (i < 12 && mc_lora_synth(&base, 2 + i % 3, (1u << MC_PROJ_COUNT) - 1, 0,
                                         1000 + (uint64_t)i, "mix", &ad[i], &err) != MC_OK)
            fail_msg("mc_lora_synth: %s", err.msg);
    }
    struct mc_engine_config cfg = {.max_seqs = N_MIX, .prefill_chunk = 16};
    struct mc_engine *e = e2e_engine(m, &cfg);
    static int32_t alone[N_MIX][MIX_TOKENS];
    for (int i = 0; i < N_MIX; i++)
        run_alone(e, &cases[i % n_cases], ad[i], scale[i], alone[i]);

    static struct rec r[N_MIX];
    pthread_mutex_lock(&rec_mu);
    for (int i = 0; i < N_MIX; i++) {
        const struct lora_case *c = &cases[i % n_cases];
        rec_init(&r[i], NULL);
        r[i].engine = e;
        struct mc_engine_params p =
            greedy_params(i % 2 ? "acme" : "globex", c->prompt, c->n_prompt, MIX_TOKENS);
        p.ignore_eos = true;
        p.adapter = ad[i];
        p.adapter_scale = scale[i];
        submit_ok(e, &p, &r[i]);
    }
    pthread_mutex_unlock(&rec_mu);
    /* The engine holds its own references: dropping ours now must not matter. */
    for (int i = 0; i < N_MIX; i++)
        mc_lora_release(ad[i]);
    int32_t most = 0;
    for (int i = 0; i < N_MIX; i++) {
        rec_wait(&r[i]);
        rec_check_final(&r[i]);
        assert_int_equal(r[i].n_tokens, MIX_TOKENS);
        assert_memory_equal(r[i].tokens, alone[i], sizeof(alone[i]));
        most = r[i].max_active_seen > most ? r[i].max_active_seen : most;
    }
    assert_int_equal(most, N_MIX);
    /* And the adapters really changed something: rows 0 and 6 share a prompt and
     * scale but not their adapter. */
    assert_true(memcmp(alone[0], alone[6], sizeof(alone[0])) != 0 ||
                memcmp(alone[1], alone[7], sizeof(alone[1])) != 0);
    mc_engine_free(e);
    mc_model_free(m);
}

static void test_e2e_adapter_of_another_shape_is_refused_at_submit(void **state) {
    (void)state;
    struct mc_model *m = e2e_model();
    struct mc_lora_base base;
    mc_lora_base_from_model(m, &base);
    base.n_layer += 1;
    struct mc_lora *l = NULL;
    struct mc_err err = {0};
    assert_int_equal(mc_lora_synth(&base, 2, 1u << MC_PROJ_Q, 0, 7, "other", &l, &err), MC_OK);
    struct mc_engine_config cfg = {.max_seqs = 2};
    struct mc_engine *e = e2e_engine(m, &cfg);
    int32_t prompt[3] = {1, 403, 407};
    struct mc_engine_params p = greedy_params("acme", prompt, 3, 4);
    p.adapter = l;
    struct mc_gen *g = NULL;
    assert_int_equal(mc_engine_submit(e, &p, rec_on_event, NULL, &g, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "adapter 'other' is not bound to this model"));
    assert_null(g);
    assert_int_equal(mc_lora_refcount(l), 1);
    mc_engine_free(e);
    mc_lora_release(l);
    mc_model_free(m);
}

static void test_e2e_cancelled_and_preempted_requests_release_their_adapter(void **state) {
    (void)state;
    struct lora_case cases[8];
    lora_ref_load(cases, 8);
    struct mc_model *m = e2e_model();
    struct mc_lora *l = e2e_lora(m);
    /* One slot: the second tenant's arrival preempts the first (recomputed later, with
     * the same adapter); a third request is cancelled while queued. */
    struct mc_engine_config cfg = {.max_seqs = 1};
    struct mc_engine *e = e2e_engine(m, &cfg);
    struct rec ra, rb, rc;
    rec_init(&ra, NULL);
    rec_init(&rb, NULL);
    rec_init(&rc, NULL);
    struct mc_engine_params p =
        greedy_params("busy", cases[1].prompt, cases[1].n_prompt, REF_N_PREDICT);
    p.ignore_eos = true;
    p.adapter = l;
    p.adapter_scale = cases[1].scale;
    submit_ok(e, &p, &ra);
    rec_wait_tokens(&ra, 2);
    struct mc_gen *gc = NULL;
    struct mc_err err = {0};
    assert_int_equal(mc_engine_submit(e, &p, rec_on_event, &rc, &gc, &err), MC_OK);
    mc_engine_cancel(gc);
    struct mc_engine_params q = p;
    q.tenant = "quiet";
    q.max_tokens = 4;
    submit_ok(e, &q, &rb);
    rec_wait(&ra);
    rec_wait(&rb);
    rec_wait(&rc);
    mc_gen_release(gc);
    assert_int_equal(ra.n_tokens, REF_N_PREDICT);
    assert_memory_equal(ra.tokens, cases[1].greedy, sizeof(cases[1].greedy));
    assert_memory_equal(rb.tokens, cases[1].greedy, 4 * sizeof(int32_t));
    assert_int_equal(rc.code, MC_ECANCEL);
    assert_int_equal(mc_lora_refcount(l), 1);
    mc_engine_free(e);
    mc_lora_release(l);
    mc_model_free(m);
}

int main(void) {
    mc_log_set_level(MC_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sched_quiet_tenant_starts_within_two_steps),
        cmocka_unit_test(test_sched_quiet_tenant_gets_half_under_equal_weights),
        cmocka_unit_test(test_sched_weights_split_admissions_three_to_one),
        cmocka_unit_test(test_sched_kv_budget_bounds_concurrency),
        cmocka_unit_test(test_sched_prefill_is_chunked_round_robin),
        cmocka_unit_test(test_sched_preempted_sequence_is_recomputed_and_finishes),
        cmocka_unit_test(test_sched_queue_full_names_tenant),
        cmocka_unit_test(test_engine_batch_of_eight_matches_single_sequences),
        cmocka_unit_test(test_engine_end_of_generation_finishes_with_stop),
        cmocka_unit_test(test_engine_reports_logprobs_of_the_model_distribution),
        cmocka_unit_test(test_engine_quiet_tenant_first_token_within_two_steps),
        cmocka_unit_test(test_engine_kv_budget_limits_running_sequences),
        cmocka_unit_test(test_engine_cancel_stops_a_running_request),
        cmocka_unit_test(test_engine_submit_rejects_bad_requests),
        cmocka_unit_test(test_engine_drain_lets_running_requests_finish),
        cmocka_unit_test(test_engine_drain_timeout_cancels_the_rest),
        cmocka_unit_test(test_engine_free_ends_every_request_once),
        cmocka_unit_test(test_engine_observer_sees_every_token),
        cmocka_unit_test(test_engine_concurrent_submitters_and_cancels),
        cmocka_unit_test(test_engine_survives_every_allocation_failure),
        cmocka_unit_test(test_e2e_batch_of_eight_matches_reference_greedy),
        cmocka_unit_test(test_e2e_stop_string_split_across_tokens),
        cmocka_unit_test(test_e2e_cancelled_request_stops_at_the_next_step),
        cmocka_unit_test(test_e2e_quiet_tenant_starts_within_two_steps),
        cmocka_unit_test(test_e2e_kv_budget_limits_concurrency),
        cmocka_unit_test(test_e2e_two_tenants_same_prompt_share_nothing),
        cmocka_unit_test(test_e2e_logprobs_match_reference_logits),
        cmocka_unit_test(test_e2e_reference_adapter_reproduces_llama_cpp_greedy),
        cmocka_unit_test(test_e2e_sixteen_rows_with_different_adapters_match_alone),
        cmocka_unit_test(test_e2e_adapter_of_another_shape_is_refused_at_submit),
        cmocka_unit_test(test_e2e_cancelled_and_preempted_requests_release_their_adapter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
