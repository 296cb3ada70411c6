/* engine_sched.c - the scheduler core: per-tenant queues, fair admission, step planning.
 *
 * Tenants with a queued or running request have a record (struct sched_tenant) holding a
 * FIFO of queued sequences and the list of its running ones; a tenant with neither is
 * forgotten, so idle tenants cost nothing here. Admission is start-time fair queuing: each
 * tenant's head request carries a start tag max(vtime, tenant's last finish tag) and the
 * smallest tag is admitted next, its finish tag being start + cost / weight; vtime is the
 * start tag of the latest admission. A tenant that was idle thus starts at the current
 * vtime, ahead of every busy tenant, without saving up credit while idle.
 *
 * The head request is admitted when a sequence slot is free and its KV reservation fits
 * the budget. If not, and its tenant is under its fair share (or runs nothing), the
 * youngest sequences of tenants over their share are preempted until it fits, never a
 * tenant's last running sequence. Shares are weights over the tenants with demand, usage
 * is the larger of the slot and KV fractions. Otherwise admission stops for this step
 * (head-of-line), so a large request cannot be starved by a stream of small ones.
 *
 * Plain data, no locks: the engine calls it under its own lock. No model, no KV memory:
 * the caller creates and frees the caches the decisions name. */
#include "serve/engine_int.h"

#include "base/mem.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

void sched_init(struct sched *s, int32_t max_seqs, int32_t prefill_chunk, int32_t max_queue,
                size_t kv_budget) {
    memset(s, 0, sizeof(*s));
    s->max_seqs = max_seqs;
    s->prefill_chunk = prefill_chunk;
    s->max_queue = max_queue;
    s->kv_budget = kv_budget;
}

void sched_deinit(struct sched *s) {
    struct sched_tenant *t = s->tenants;
    while (t) {
        struct sched_tenant *next = t->next;
        mc_free(t);
        t = next;
    }
    s->tenants = NULL;
}

struct sched_tenant *sched_tenant_find(struct sched *s, const char *name) {
    for (struct sched_tenant *t = s->tenants; t; t = t->next)
        if (strcmp(t->name, name) == 0)
            return t;
    return NULL;
}

static void tenant_forget_if_idle(struct sched *s, struct sched_tenant *t) {
    if (t->n_queued || t->n_active)
        return;
    if (t->prev)
        t->prev->next = t->next;
    else
        s->tenants = t->next;
    if (t->next)
        t->next->prev = t->prev;
    mc_free(t);
}

/* ================================ Queues and lists ================================== */

static void queue_push_back(struct sched_tenant *t, struct sched_seq *q) {
    q->prev = t->q_tail;
    q->next = NULL;
    if (t->q_tail)
        t->q_tail->next = q;
    else
        t->q_head = q;
    t->q_tail = q;
    t->n_queued++;
}

static void queue_push_front(struct sched_tenant *t, struct sched_seq *q) {
    q->prev = NULL;
    q->next = t->q_head;
    if (t->q_head)
        t->q_head->prev = q;
    else
        t->q_tail = q;
    t->q_head = q;
    t->n_queued++;
}

/* Unlinks q from a tenant list given by its head and tail pointers. */
static void list_unlink(struct sched_seq **head, struct sched_seq **tail, struct sched_seq *q) {
    if (q->prev)
        q->prev->next = q->next;
    else
        *head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        *tail = q->prev;
    q->prev = q->next = NULL;
}

static void active_unlink(struct sched *s, struct sched_seq *q) {
    struct sched_tenant *t = q->tenant;
    list_unlink(&t->a_head, &t->a_tail, q);
    if (q->act_prev)
        q->act_prev->act_next = q->act_next;
    else
        s->act_head = q->act_next;
    if (q->act_next)
        q->act_next->act_prev = q->act_prev;
    else
        s->act_tail = q->act_prev;
    q->act_prev = q->act_next = NULL;
    t->n_active--;
    t->kv_used -= q->kv_bytes;
    s->n_active--;
    s->kv_used -= q->kv_bytes;
}

static void active_append(struct sched *s, struct sched_seq *q) {
    struct sched_tenant *t = q->tenant;
    q->prev = t->a_tail;
    q->next = NULL;
    if (t->a_tail)
        t->a_tail->next = q;
    else
        t->a_head = q;
    t->a_tail = q;
    q->act_prev = s->act_tail;
    q->act_next = NULL;
    if (s->act_tail)
        s->act_tail->act_next = q;
    else
        s->act_head = q;
    s->act_tail = q;
    t->n_active++;
    t->kv_used += q->kv_bytes;
    s->n_active++;
    s->kv_used += q->kv_bytes;
}

static double max_d(double a, double b) {
    return a > b ? a : b;
}

int sched_enqueue(struct sched *s, const char *tenant, uint32_t weight, struct sched_seq *seq,
                  struct mc_err *err) {
    struct sched_tenant *t = sched_tenant_find(s, tenant);
    if (t && t->n_queued >= s->max_queue)
        return mc_err_set(err, MC_EFULL, "tenant=%s queue holds %d requests (max_queue %d)", tenant,
                          t->n_queued, s->max_queue);

    if (!t) {
        t = mc_calloc(1, sizeof(*t));
        if (!t)
            return mc_err_set(err, MC_ENOMEM, "out of memory for a tenant record");
        snprintf(t->name, sizeof(t->name), "%s", tenant);
        t->order = s->n_tenants_made++;
        t->finish = s->vtime;
        t->next = s->tenants;
        if (s->tenants)
            s->tenants->prev = t;
        s->tenants = t;
    }
    t->weight = weight ? weight : 1;

    /* A tenant that had nothing queued starts at the current virtual time: it neither
     * keeps credit from an idle period nor waits behind the busy tenants' backlog. */
    if (!t->q_head)
        t->head_start = max_d(s->vtime, t->finish);
    seq->tenant = t;
    seq->state = SCHED_QUEUED;
    seq->n_kv = 0;
    seq->admit_seq = 0;
    seq->charged = false;
    seq->preempt_mark = false;
    queue_push_back(t, seq);
    s->n_queued++;
    return MC_OK;
}

void sched_remove(struct sched *s, struct sched_seq *seq) {
    struct sched_tenant *t = seq->tenant;
    if (seq->state == SCHED_QUEUED) {
        bool was_head = t->q_head == seq;
        list_unlink(&t->q_head, &t->q_tail, seq);
        t->n_queued--;
        s->n_queued--;
        if (was_head && t->q_head)
            t->head_start = max_d(s->vtime, t->finish);
    } else if (seq->state == SCHED_ACTIVE) {
        active_unlink(s, seq);
    } else {
        return;
    }
    seq->state = SCHED_GONE;
    tenant_forget_if_idle(s, t);
}

/* ================================ Admission ========================================= */

static bool fits(const struct sched *s, const struct sched_seq *q) {
    return s->n_active < s->max_seqs && s->kv_used <= s->kv_budget &&
           q->kv_bytes <= s->kv_budget - s->kv_used;
}

/* Usage of a tenant as a fraction of the engine: the larger of slots and KV. */
static double usage(const struct sched *s, int32_t n_active, size_t kv) {
    double u = (double)n_active / (double)s->max_seqs;
    if (s->kv_budget != SIZE_MAX && s->kv_budget > 0) {
        double k = (double)kv / (double)s->kv_budget;
        if (k > u)
            u = k;
    }
    return u;
}

static double total_weight(const struct sched *s) {
    double w = 0;
    for (const struct sched_tenant *t = s->tenants; t; t = t->next)
        w += t->weight;
    return w;
}

static struct sched_tenant *pick_tenant(struct sched *s) {
    struct sched_tenant *best = NULL;
    for (struct sched_tenant *t = s->tenants; t; t = t->next) {
        if (!t->q_head || t->skip)
            continue;
        if (!best || t->head_start < best->head_start ||
            (t->head_start == best->head_start && t->order < best->order))
            best = t;
    }
    return best;
}

/* True when admitting t's head keeps t within its weighted share, or t runs nothing. */
static bool under_share(const struct sched *s, const struct sched_tenant *t) {
    if (t->n_active == 0)
        return true;
    double share = (double)t->weight / total_weight(s);
    return usage(s, t->n_active + 1, t->kv_used + t->q_head->kv_bytes) <= share;
}

/* Admits t's head. A request is charged to its tenant once: readmitting a preempted
 * sequence costs nothing more, so preemption never bills the victim twice. */
static void admit(struct sched *s, struct sched_tenant *t) {
    struct sched_seq *q = t->q_head;
    list_unlink(&t->q_head, &t->q_tail, q);
    t->n_queued--;
    s->n_queued--;
    s->vtime = max_d(s->vtime, t->head_start);
    if (!q->charged) {
        t->finish = t->head_start + q->cost / (double)t->weight;
        q->charged = true;
    }
    if (t->q_head)
        t->head_start = max_d(s->vtime, t->finish);
    q->state = SCHED_ACTIVE;
    q->admit_seq = ++s->n_admits;
    active_append(s, q);
}

/* The next sequence to preempt on behalf of tenant me: the youngest unmarked sequence of
 * the tenant most over its share (simulated counts), never a tenant's last one. */
static struct sched_seq *pick_victim(struct sched *s, const struct sched_tenant *me, double w) {
    struct sched_tenant *best = NULL;
    double best_ratio = 1.0;
    for (struct sched_tenant *t = s->tenants; t; t = t->next) {
        if (t == me || t->sim_active < 2)
            continue;
        double ratio = usage(s, t->sim_active, t->sim_kv) / ((double)t->weight / w);
        if (ratio > best_ratio) {
            best_ratio = ratio;
            best = t;
        }
    }
    if (!best)
        return NULL;
    for (struct sched_seq *q = best->a_tail; q; q = q->prev)
        if (!q->preempt_mark)
            return q;
    return NULL;
}

/* Plans preemptions that let the head of me fit; applies them only if they suffice.
 * Returns true when the head now fits. */
static bool preempt_for(struct sched *s, struct sched_tenant *me, struct sched_seq **out,
                        int32_t *n_out) {
    struct sched_seq *head = me->q_head;
    double w = total_weight(s);
    for (struct sched_tenant *t = s->tenants; t; t = t->next) {
        t->sim_active = t->n_active;
        t->sim_kv = t->kv_used;
    }
    int32_t free_slots = s->max_seqs - s->n_active;
    size_t free_kv = s->kv_used <= s->kv_budget ? s->kv_budget - s->kv_used : 0;
    int32_t n_marked = 0;
    while (free_slots < 1 || head->kv_bytes > free_kv) {
        struct sched_seq *v = pick_victim(s, me, w);
        if (!v)
            break;
        v->preempt_mark = true;
        v->tenant->sim_active--;
        v->tenant->sim_kv -= v->kv_bytes;
        free_slots++;
        free_kv += v->kv_bytes;
        n_marked++;
    }
    bool enough = free_slots >= 1 && head->kv_bytes <= free_kv;

    /* Apply (or just clear) the marks. */
    struct sched_seq *q = s->act_head;
    while (q && n_marked > 0) {
        struct sched_seq *next = q->act_next;
        if (q->preempt_mark) {
            q->preempt_mark = false;
            n_marked--;
            if (enough) {
                active_unlink(s, q);
                q->state = SCHED_QUEUED;
                q->n_kv = 0;
                q->admit_seq = 0;
                struct sched_tenant *t = q->tenant;
                queue_push_front(t, q);
                s->n_queued++;
                t->head_start = max_d(s->vtime, t->finish);
                s->n_preemptions++;
                out[(*n_out)++] = q;
            }
        }
        q = next;
    }
    return enough;
}

void sched_admit(struct sched *s, struct sched_seq **preempted, int32_t *n_preempted,
                 struct sched_seq **admitted, int32_t *n_admitted) {
    *n_preempted = 0;
    *n_admitted = 0;

    /* Each pass admits one request; preempt_for adds fewer than max_seqs entries, so
     * the caps keep both arrays within 2 * max_seqs. */
    for (struct sched_tenant *t = s->tenants; t; t = t->next)
        t->skip = false;
    while (*n_admitted < s->max_seqs && *n_preempted < s->max_seqs) {
        struct sched_tenant *t = pick_tenant(s);
        if (!t)
            break;
        if (!fits(s, t->q_head)) {
            /* A tenant over its share waits without holding up the others; one under
             * its share that still cannot get room holds the line (head-of-line), so
             * the room that frees up goes to it first. */
            if (!under_share(s, t)) {
                t->skip = true;
                continue;
            }
            if (!preempt_for(s, t, preempted, n_preempted))
                break;
        }
        admitted[(*n_admitted)++] = t->q_head;
        admit(s, t);
    }
}

void sched_unadmit(struct sched *s, struct sched_seq *seq) {
    struct sched_tenant *t = seq->tenant;
    active_unlink(s, seq);
    seq->state = SCHED_QUEUED;
    seq->n_kv = 0;
    seq->admit_seq = 0;
    queue_push_front(t, seq);
    s->n_queued++;
    t->head_start = max_d(s->vtime, t->finish);
}

/* ================================ Step planning ===================================== */

int32_t sched_plan(struct sched *s, struct sched_work *work, int32_t *n_rows) {
    int32_t n = 0, rows = 0;

    /* Decode rows first: every running sequence advances by one token each step. */
    for (struct sched_seq *q = s->act_head; q; q = q->act_next) {
        if (q->n_tokens - q->n_kv != 1)
            continue;
        work[n++] = (struct sched_work){q, q->n_kv, 1, true};
        rows++;
    }

    /* Prefill: the chunk goes round robin over the sequences still reading tokens,
     * starting after the one served last, so every prompt progresses within a few steps
     * and a long prompt cannot hold back a short one for its whole length. */
    int32_t budget = s->prefill_chunk;
    struct sched_seq *start = s->act_head;
    for (struct sched_seq *q = s->act_head; q; q = q->act_next) {
        if (q->admit_seq > s->prefill_cursor) {
            start = q;
            break;
        }
    }
    struct sched_seq *q = start;
    for (int32_t visited = 0; q && visited < s->n_active && budget > 0; visited++) {
        int32_t pending = q->n_tokens - q->n_kv;
        if (pending > 1) {
            int32_t take = pending < budget ? pending : budget;
            work[n++] = (struct sched_work){q, q->n_kv, take, take == pending};
            rows += take;
            budget -= take;
            s->prefill_cursor = q->admit_seq;
        }
        q = q->act_next ? q->act_next : s->act_head;
    }
    *n_rows = rows;
    return n;
}
