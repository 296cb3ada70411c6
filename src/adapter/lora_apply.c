/* lora_apply.c - applying many LoRA adapters in one batch (the projection hook).
 *
 * After the base product y = x·Wᵀ of a projection (one matrix product for the whole
 * batch, in llama.c), the hook adds for every row r with adapter a and scale s:
 *   y[r] += (s · factor) · (x[r]·Aᵀ)·Bᵀ
 * Rows are grouped by adapter (a stable sort of row indices by adapter pointer), so each
 * group reads its A and B once per projection however many rows it has (the Punica /
 * S-LoRA shrink-expand scheme, here on the CPU). A group's work is a "shrink"
 * t = s·(x·Aᵀ), then an "expand" y += t·Bᵀ. How it is spread over the context's threads
 * depends on the batch:
 * - many groups, none of them a large share of the work (many tenants' adapters, one or
 *   a few rows each): each thread runs whole groups, shrink then expand, with no barrier
 *   between the two; the groups are split by cost (bytes read plus rows' arithmetic);
 * - otherwise (one adapter shared by most rows): two phases, shrink with work items
 *   (group, rank row), then expand with items (group, output row), each phase's flat
 *   item range split evenly across threads.
 * Every item writes only its own cells, so no locks are needed. Small products run on
 * the calling thread (waking the pool costs microseconds).
 *
 * With many different adapters the hook is bound by memory (each adapter's bytes are
 * read once per step for one row's arithmetic) while the base product before it is bound
 * by arithmetic, so the runner also tells the model which bytes the hook is going to
 * read (prefetch) and the base product prefetches them while it computes.
 *
 * A row's result does not depend on which other rows share the batch: each dot product
 * runs over the same elements in the same order whatever the grouping or the split.
 *
 * Threads: a runner belongs to one context and runs on the thread that calls mc_forward.
 * It holds no references; the caller keeps each row's adapter alive during the call. */
#include "adapter/lora_int.h"

#include "base/mem.h"
#include "base/pool.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

struct group {
    const struct lora_pair *p;
    int32_t first;   /* into runner.idx */
    int32_t n;       /* rows in the group */
    size_t t_off;    /* into runner.t: (n, rank) */
    int64_t item0;   /* first item (or first unit of cost) of this group */
    int64_t cost;    /* bytes and arithmetic, for splitting whole groups */
    enum mc_type wt; /* the adapter's storage type */
};

struct mc_lora_runner {
    struct mc_ctx *ctx;
    struct mc_pool *pool;
    struct mc_lora_base base;
    int32_t *idx;         /* (max_rows) row indices sorted by adapter */
    float *scale;         /* (max_rows) s · factor per row, by position in idx */
    struct group *groups; /* (max_rows) */
    float *t;             /* shrink output; grows */
    size_t t_cap;
    /* The call in progress. */
    const struct mc_batch_row *rows;
    const float *x;
    float *y;
    int64_t n_in;
    int64_t n_out;
    int32_t n_groups;
    /* Set by prefetch, which groups the rows just before the base product, and cleared
     * by the hook that follows it: the hook then uses those groups as they are, if they
     * are for the same projection and batch (a failed base product skips the hook). */
    bool grouped;
    int32_t grouped_layer;
    enum mc_proj grouped_proj;
    int32_t grouped_n;
    int64_t n_items;
    bool expand;
    float (*dot)(const float *x, const void *w, enum mc_type t, int64_t n);
    void (*expand_fn)(float *y, const float *t, const void *bt, enum mc_type wt, int32_t rank,
                      int64_t n_out, int64_t j0, int64_t j1);
};

/* Below this many multiply-adds a projection's low-rank part runs on one thread. */
enum { POOL_MIN_MACS = 1 << 15 };

typedef float v8f __attribute__((vector_size(32)));

static float dot(const float *a, const float *b, int64_t n) {
    v8f acc0 = {0}, acc1 = {0}, x0, y0, x1, y1;
    int64_t i = 0;
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

/* ---- Runner ---------------------------------------------------------------------- */

static int hook(void *user, int32_t layer, enum mc_proj proj, const struct mc_batch_row *rows,
                int32_t n_rows, const float *x, int64_t n_in, float *y, int64_t n_out,
                struct mc_err *err);
static int32_t prefetch(void *user, int32_t layer, enum mc_proj proj,
                        const struct mc_batch_row *rows, int32_t n_rows, struct mc_span *spans,
                        int32_t cap);

int mc_lora_runner_create(struct mc_ctx *ctx, struct mc_lora_runner **out, struct mc_err *err) {
    *out = NULL;
    struct mc_lora_runner *r = mc_calloc(1, sizeof(*r));
    if (!r)
        return mc_err_set(err, MC_ENOMEM, "lora runner allocation failed");
    size_t n = (size_t)mc_ctx_max_rows(ctx);
    r->ctx = ctx;
    r->pool = mc_ctx_pool(ctx);
    mc_lora_base_from_model(mc_ctx_model(ctx), &r->base);
    r->idx = mc_malloc(n * sizeof(*r->idx));
    r->scale = mc_malloc(n * sizeof(*r->scale));
    r->groups = mc_malloc(n * sizeof(*r->groups));
    if (!r->idx || !r->scale || !r->groups) {
        mc_lora_runner_free(r);
        return mc_err_set(err, MC_ENOMEM, "lora runner buffers for %zu rows: allocation failed", n);
    }
    enum mc_simd simd = mc_simd_get();
    r->dot = simd >= MC_SIMD_AVX512 ? lora_dot_avx512
             : simd >= MC_SIMD_AVX2 ? lora_dot_avx2
                                    : lora_dot_portable;
    r->expand_fn = simd >= MC_SIMD_AVX512 ? lora_expand_avx512
                   : simd >= MC_SIMD_AVX2 ? lora_expand_avx2
                                          : lora_expand_portable;
    mc_ctx_set_proj_hook(ctx, hook, prefetch, r);
    *out = r;
    return MC_OK;
}

void mc_lora_runner_set_prefetch(struct mc_lora_runner *r, bool on) {
    r->grouped = false;
    mc_ctx_set_proj_hook(r->ctx, hook, on ? prefetch : NULL, r);
}

void mc_lora_runner_free(struct mc_lora_runner *r) {
    if (!r)
        return;
    mc_ctx_set_proj_hook(r->ctx, NULL, NULL, NULL);
    mc_free(r->idx);
    mc_free(r->scale);
    mc_free(r->groups);
    mc_free(r->t);
    mc_free(r);
}

/* ---- Grouping -------------------------------------------------------------------- */

/* Orders row indices by adapter pointer, then by index. */
static bool row_before(const struct mc_batch_row *rows, int32_t a, int32_t b) {
    uintptr_t x = (uintptr_t)rows[a].adapter, y = (uintptr_t)rows[b].adapter;
    return x != y ? x < y : a < b;
}

/* Collects the rows that have an adapter into idx, sorted by adapter. Insertion sort:
 * batches are small and usually already grouped. Returns their number. */
static int32_t sort_by_adapter(struct mc_lora_runner *r, int32_t n_rows) {
    int32_t n = 0;
    for (int32_t i = 0; i < n_rows; i++)
        if (r->rows[i].adapter)
            r->idx[n++] = i;
    for (int32_t i = 1; i < n; i++) {
        int32_t v = r->idx[i], j = i;
        while (j > 0 && row_before(r->rows, v, r->idx[j - 1])) {
            r->idx[j] = r->idx[j - 1];
            j--;
        }
        r->idx[j] = v;
    }
    return n;
}

/* One group per adapter that has a pair for (layer, proj), with each row's scale. */
static int make_groups(struct mc_lora_runner *r, int32_t layer, enum mc_proj proj, int32_t n_rows,
                       struct mc_err *err) {
    int32_t n = sort_by_adapter(r, n_rows);
    size_t t_need = 0;
    r->n_groups = 0;
    for (int32_t i = 0; i < n;) {
        const struct mc_lora *l = r->rows[r->idx[i]].adapter;
        int32_t j = i;
        while (j < n && r->rows[r->idx[j]].adapter == l)
            j++;
        if (!mc_lora_fits(l, &r->base))
            return mc_err_set(err, MC_EINVAL, "row %d: adapter %s was not loaded for this model",
                              r->idx[i], l->info.name);
        int32_t s = layer * MC_PROJ_COUNT + (int32_t)proj;
        const struct lora_pair *p = s < l->n_slots ? l->slot[s] : NULL;
        if (p) {
            struct group *g = &r->groups[r->n_groups++];
            g->p = p;
            g->wt = l->wtype;
            g->first = i;
            g->n = j - i;
            g->t_off = t_need;
            t_need += (size_t)g->n * p->rank;
            for (int32_t k = i; k < j; k++)
                r->scale[k] = r->rows[r->idx[k]].adapter_scale * p->factor;
        }
        i = j;
    }
    if (t_need > r->t_cap) {
        float *t = mc_realloc(r->t, t_need * sizeof(float));
        if (!t)
            return mc_err_set(err, MC_ENOMEM, "lora scratch of %zu floats: allocation failed",
                              t_need);
        r->t = t;
        r->t_cap = t_need;
    }
    return MC_OK;
}

/* ---- Kernels --------------------------------------------------------------------- */

/* One Q8_0 block: its scale and its 32 values as floats. */
static float q8_block(const uint8_t *b, float *v) {
    uint16_t d;
    memcpy(&d, b, 2);
    for (int i = 0; i < LORA_Q8_BLOCK; i++)
        v[i] = (float)(int8_t)b[2 + i];
    return mc_fp16_to_fp32(d);
}

float lora_dot_portable(const float *x, const void *w, enum mc_type t, int64_t n) {
    if (t == MC_TYPE_F32)
        return dot(x, w, n);
    if (t == MC_TYPE_Q8_0) {
        float s = 0, v[LORA_Q8_BLOCK];
        for (int64_t i = 0; i < n; i += LORA_Q8_BLOCK) {
            float d = q8_block((const uint8_t *)w + lora_offset(t, (size_t)i), v);
            s += d * dot(x + i, v, LORA_Q8_BLOCK);
        }
        return s;
    }
    const uint16_t *h = w;
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += x[i + l] * mc_fp16_to_fp32(h[i + l]);
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        s += x[i] * mc_fp16_to_fp32(h[i]);
    return s;
}

void lora_expand_portable(float *y, const float *t, const void *bt, enum mc_type wt, int32_t rank,
                          int64_t n_out, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; j++) {
        float acc = y[j];
        for (int32_t k = 0; k < rank; k++)
            acc += t[k] * lora_get(bt, wt, (size_t)(k * n_out + j));
        y[j] = acc;
    }
}

static const void *elem(const void *w, enum mc_type t, size_t i) {
    return (const uint8_t *)w + lora_offset(t, i);
}

/* Shrink rows [k0, k1) of A for group g: t[i][k] = scale_i · x[row_i]·A[k]. */
static void shrink_range(struct mc_lora_runner *r, const struct group *g, int64_t k0, int64_t k1) {
    const struct lora_pair *p = g->p;
    float *t = r->t + g->t_off;
    for (int64_t k = k0; k < k1; k++) {
        const void *a = elem(p->a, g->wt, (size_t)k * p->n_in);
        for (int32_t i = 0; i < g->n; i++) {
            int32_t row = r->idx[g->first + i];
            t[(size_t)i * p->rank + k] =
                r->scale[g->first + i] * r->dot(r->x + row * r->n_in, a, g->wt, p->n_in);
        }
    }
}

/* Expand outputs [j0, j1) for group g: y[row_i][j] += Σ_k t[i][k] · Bᵀ[k][j], k in
 * order, so every output gets the same sequence of operations whatever the split. */
static void expand_range(struct mc_lora_runner *r, const struct group *g, int64_t j0, int64_t j1) {
    const struct lora_pair *p = g->p;
    const float *t = r->t + g->t_off;
    for (int32_t i = 0; i < g->n; i++)
        r->expand_fn(r->y + r->idx[g->first + i] * r->n_out, t + (size_t)i * p->rank, p->bt, g->wt,
                     p->rank, p->n_out, j0, j1);
}

/* Runs items [begin, end) of the current phase; items are numbered group by group
 * (rank rows of A when shrinking, output columns when expanding). */
static void phase_part(void *arg, int ith, int nth) {
    struct mc_lora_runner *r = arg;
    int64_t begin = r->n_items * ith / nth, end = r->n_items * (ith + 1) / nth;
    for (int32_t g = 0; g < r->n_groups && begin < end; g++) {
        const struct group *gr = &r->groups[g];
        int64_t n = r->expand ? gr->p->n_out : gr->p->rank;
        int64_t lo = begin - gr->item0, hi = end - gr->item0;
        if (hi <= 0 || lo >= n)
            continue;
        /* Output ranges end on multiples of 32 (Q8_0 blocks, whole vectors); rounding both
         * ends the same way keeps the threads' ranges a partition. */
        int64_t mask = r->expand ? ~(int64_t)31 : ~(int64_t)0;
        lo = lo <= 0 ? 0 : lo & mask;
        hi = hi >= n ? n : hi & mask;
        if (hi <= lo)
            continue;
        if (r->expand)
            expand_range(r, gr, lo, hi);
        else
            shrink_range(r, gr, lo, hi);
    }
}

/* Runs whole groups, shrink then expand, for the groups whose cost midpoints fall in
 * this thread's share of the total cost. */
static void groups_part(void *arg, int ith, int nth) {
    struct mc_lora_runner *r = arg;
    int64_t lo = r->n_items * ith / nth, hi = r->n_items * (ith + 1) / nth;
    for (int32_t g = 0; g < r->n_groups; g++) {
        const struct group *gr = &r->groups[g];
        int64_t mid = gr->item0 + gr->cost / 2;
        if (mid < lo || mid >= hi)
            continue;
        shrink_range(r, gr, 0, gr->p->rank);
        expand_range(r, gr, 0, gr->p->n_out);
    }
}

static void run_phase(struct mc_lora_runner *r, bool expand, int64_t macs) {
    r->expand = expand;
    r->n_items = 0;
    for (int32_t g = 0; g < r->n_groups; g++) {
        r->groups[g].item0 = r->n_items;
        r->n_items += expand ? r->groups[g].p->n_out : r->groups[g].p->rank;
    }
    if (macs < POOL_MIN_MACS || !r->pool)
        phase_part(r, 0, 1);
    else
        mc_pool_run(r->pool, phase_part, r);
}

static int hook(void *user, int32_t layer, enum mc_proj proj, const struct mc_batch_row *rows,
                int32_t n_rows, const float *x, int64_t n_in, float *y, int64_t n_out,
                struct mc_err *err) {
    struct mc_lora_runner *r = user;
    int rc = MC_OK;
    if (!r->grouped || r->grouped_layer != layer || r->grouped_proj != proj ||
        r->grouped_n != n_rows || r->rows != rows) {
        r->rows = rows;
        rc = make_groups(r, layer, proj, n_rows, err);
    }
    r->grouped = false;
    if (rc != MC_OK || r->n_groups == 0)
        return rc;
    int64_t macs_in = 0, macs_out = 0;
    for (int32_t g = 0; g < r->n_groups; g++) {
        const struct lora_pair *p = r->groups[g].p;
        if (p->n_in != n_in || p->n_out != n_out)
            return mc_err_set(err, MC_EINTERNAL, "blk.%d.%s: adapter pair shape does not match",
                              layer, mc_lora_proj_gguf(proj));
        macs_in += (int64_t)r->groups[g].n * p->rank * n_in;
        macs_out += (int64_t)r->groups[g].n * p->rank * n_out;
    }
    r->x = x;
    r->y = y;
    r->n_in = n_in;
    r->n_out = n_out;
    /* An element of A or B costs about as much to fetch as one row's multiply-add on it
     * (memory-bound with one row, compute-bound with many). Whole groups are split only
     * when no group is more than half a thread's share, which keeps threads within about
     * a group of each other. */
    int64_t total = 0, most = 0;
    for (int32_t g = 0; g < r->n_groups; g++) {
        struct group *gr = &r->groups[g];
        gr->cost = (int64_t)gr->p->rank * (n_in + n_out) * (1 + gr->n);
        gr->item0 = total;
        total += gr->cost;
        if (gr->cost > most)
            most = gr->cost;
    }
    int nth = r->pool ? mc_pool_n_threads(r->pool) : 1;
    if (r->pool && macs_in + macs_out >= POOL_MIN_MACS && most * 2 * nth <= total) {
        r->n_items = total;
        mc_pool_run(r->pool, groups_part, r);
        return MC_OK;
    }
    run_phase(r, false, macs_in);
    run_phase(r, true, macs_out);
    return MC_OK;
}

/* Groups the rows for the hook that follows (the model calls the two in turn for one
 * projection and batch) and lists the A and Bᵀ of every group, for the base product to
 * prefetch. A batch make_groups refuses prefetches nothing: the hook, grouping again,
 * reports the error. */
static int32_t prefetch(void *user, int32_t layer, enum mc_proj proj,
                        const struct mc_batch_row *rows, int32_t n_rows, struct mc_span *spans,
                        int32_t cap) {
    struct mc_lora_runner *r = user;
    struct mc_err err = {0};
    r->rows = rows;
    r->grouped = make_groups(r, layer, proj, n_rows, &err) == MC_OK;
    if (!r->grouped)
        return 0;
    r->grouped_layer = layer;
    r->grouped_proj = proj;
    r->grouped_n = n_rows;
    int32_t n = 0;
    for (int32_t g = 0; g < r->n_groups && n + 2 <= cap; g++) {
        const struct lora_pair *p = r->groups[g].p;
        enum mc_type t = r->groups[g].wt;
        spans[n++] = (struct mc_span){p->a, lora_offset(t, (size_t)p->rank * (size_t)p->n_in)};
        spans[n++] = (struct mc_span){p->bt, lora_offset(t, (size_t)p->rank * (size_t)p->n_out)};
    }
    return n;
}
