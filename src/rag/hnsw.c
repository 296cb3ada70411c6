/* hnsw.c - HNSW approximate nearest-neighbour index (Malkov & Yashunin, 2016).
 *
 * Data structure. Nodes are numbered 0..n_nodes-1 in insertion order. Their vectors sit
 * in one contiguous array, each padded with zeros to a multiple of 16 floats so the SIMD
 * kernels have no tail. Level-0 links live in one fixed-stride array, (count, 2m ids) per
 * node; a node on level L > 0 also owns L lists of (count, m ids). A label -> node hash
 * (idmap.h) holds live nodes only.
 *
 * Invariants: every link points to another node that exists on that level; the entry
 * point is a node on the top level (max_level); n_live counts nodes not deleted.
 *
 * Deletion marks a node. It keeps its links and is still walked through, so the graph
 * never loses connectivity, but the level-0 search only admits live nodes to its result
 * list and keeps walking until it holds ef live ones. If the walk still comes back short
 * (nodes the graph cannot reach, or nearly everything deleted), an exact scan answers.
 * Deleted nodes are never reclaimed; rebuild the index after heavy churn.
 *
 * Construction follows hnswlib: the neighbour-selection heuristic for both the new node's
 * links and the pruning of a full neighbour list, 2m links on level 0, levels drawn as
 * floor(-ln(u) / ln(m)) from a seeded generator, so a seed and an insertion order give one
 * graph. Distances use AVX-512 or AVX2 kernels when the CPU has them (checked at run
 * time), and L2 distances stop early once they pass the worst result kept.
 *
 * Not thread-safe for writers; see hnsw.h for concurrent searches. Does not print. */
#include "rag/hnsw.h"

#include "base/mem.h"
#include "rag/hnsw_int.h"
#include "rag/idmap.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX

struct cand {
    float d;
    uint32_t id;
};

struct heap {
    struct cand *a;
    size_t n, cap;
};

struct mc_hnsw_scratch {
    uint16_t *visited; /* (visited_cap) generation at which a node was last seen */
    size_t visited_cap;
    uint16_t gen;
    struct heap cands; /* min-heap: nodes still to expand */
    struct heap res;   /* max-heap: the best nodes found so far */
    float *q;          /* (q_cap) padded, normalised query */
    size_t q_cap;
};

typedef float (*dist_fn)(const float *a, const float *b, size_t n);
typedef float (*bound_fn)(const float *a, const float *b, size_t n, float bound);

struct mc_hnsw {
    int dim, dim_pad, metric;
    int m, m0, ef_construction, ef_search;
    uint64_t seed, rng;
    double level_mult;

    uint32_t n_nodes, cap, n_live;
    int max_level;
    uint32_t entry;

    float *vecs;      /* (cap, dim_pad) */
    uint32_t *links0; /* (cap, 1 + m0): count, then ids */
    uint32_t **upper; /* (cap) NULL, or (levels[i], 1 + m) for levels 1..levels[i] */
    uint8_t *levels;  /* (cap) */
    uint8_t *deleted; /* (cap) */
    uint64_t *labels; /* (cap) */

    struct idmap labels_map; /* live labels -> node */

    struct mc_hnsw_scratch scratch; /* for inserts and mc_hnsw_search */
    struct cand *sorted;            /* (ef_construction + m0 + 1) insert work space */
    struct cand *picked;            /* (m0 + 1) */

    dist_fn l2, dot;
    bound_fn l2_bounded;
};

/* ---------------------------------------------------------------- kernels */

float hnsw_l2_scalar(const float *a, const float *b, size_t n) {
    float s = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = a[i] - b[i];
        s += d * d;
    }
    return s;
}

float hnsw_l2_bounded_scalar(const float *a, const float *b, size_t n, float bound) {
    float s = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = a[i] - b[i];
        s += d * d;
        if ((i + 1) % HNSW_BOUND_BLOCK == 0 && s > bound)
            return s;
    }
    return s;
}

float hnsw_dot_scalar(const float *a, const float *b, size_t n) {
    float s = 0.0f;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void pick_kernels(struct mc_hnsw *h) {
    h->l2 = hnsw_l2_scalar;
    h->l2_bounded = hnsw_l2_bounded_scalar;
    h->dot = hnsw_dot_scalar;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        h->l2 = hnsw_l2_avx512;
        h->l2_bounded = hnsw_l2_bounded_avx512;
        h->dot = hnsw_dot_avx512;
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        h->l2 = hnsw_l2_avx2;
        h->l2_bounded = hnsw_l2_bounded_avx2;
        h->dot = hnsw_dot_avx2;
    }
}

static inline const float *vec_of(const struct mc_hnsw *h, uint32_t id) {
    return h->vecs + (size_t)id * h->dim_pad;
}

static inline float dist_to(const struct mc_hnsw *h, const float *q, uint32_t id) {
    if (h->metric == MC_HNSW_L2)
        return h->l2(q, vec_of(h, id), h->dim_pad);
    return 1.0f - h->dot(q, vec_of(h, id), h->dim_pad);
}

/* Exact when the result is <= bound; some value above bound otherwise. */
static inline float dist_bounded(const struct mc_hnsw *h, const float *q, uint32_t id,
                                 float bound) {
    if (h->metric == MC_HNSW_L2)
        return h->l2_bounded(q, vec_of(h, id), h->dim_pad, bound);
    return 1.0f - h->dot(q, vec_of(h, id), h->dim_pad);
}

static inline uint32_t *links_at(const struct mc_hnsw *h, uint32_t id, int level) {
    if (level == 0)
        return h->links0 + (size_t)id * (1 + h->m0);
    return h->upper[id] + (size_t)(level - 1) * (1 + h->m);
}

/* ---------------------------------------------------------------- heaps */

static inline void heap_push_min(struct heap *hp, float d, uint32_t id) {
    size_t i = hp->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (hp->a[p].d <= d)
            break;
        hp->a[i] = hp->a[p];
        i = p;
    }
    hp->a[i] = (struct cand){d, id};
}

static inline void heap_pop_min(struct heap *hp) {
    struct cand last = hp->a[--hp->n];
    size_t i = 0, n = hp->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && hp->a[c + 1].d < hp->a[c].d)
            c++;
        if (last.d <= hp->a[c].d)
            break;
        hp->a[i] = hp->a[c];
        i = c;
    }
    if (n)
        hp->a[i] = last;
}

/* The max-heap orders by distance, then by node id, so that equal distances resolve the
 * same way in every run. */
static inline bool above(struct cand x, struct cand y) {
    return x.d > y.d || (x.d == y.d && x.id > y.id);
}

static inline void heap_push_max(struct heap *hp, float d, uint32_t id) {
    struct cand c = {d, id};
    size_t i = hp->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!above(c, hp->a[p]))
            break;
        hp->a[i] = hp->a[p];
        i = p;
    }
    hp->a[i] = c;
}

static inline void heap_pop_max(struct heap *hp) {
    struct cand last = hp->a[--hp->n];
    size_t i = 0, n = hp->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && above(hp->a[c + 1], hp->a[c]))
            c++;
        if (!above(hp->a[c], last))
            break;
        hp->a[i] = hp->a[c];
        i = c;
    }
    if (n)
        hp->a[i] = last;
}

static int heap_reserve(struct heap *hp, size_t need) {
    if (need <= hp->cap)
        return MC_OK;
    size_t cap = hp->cap ? hp->cap : 64;
    while (cap < need)
        cap *= 2;
    struct cand *a = mc_realloc(hp->a, cap * sizeof(*a));
    if (!a)
        return MC_ENOMEM;
    hp->a = a;
    hp->cap = cap;
    return MC_OK;
}

/* ---------------------------------------------------------------- scratch */

static void scratch_deinit(struct mc_hnsw_scratch *s) {
    mc_free(s->visited);
    mc_free(s->cands.a);
    mc_free(s->res.a);
    mc_free(s->q);
    memset(s, 0, sizeof(*s));
}

/* Sizes s for a walk over n_nodes nodes keeping up to n_res results; afterwards no walk
 * allocates. The candidate heap can hold every node, since each enters at most once. */
static int scratch_reserve(struct mc_hnsw_scratch *s, size_t n_nodes, size_t n_res,
                           size_t dim_pad) {
    if (s->visited_cap < n_nodes) {
        size_t cap = s->visited_cap ? s->visited_cap : 1024;
        while (cap < n_nodes)
            cap *= 2;
        uint16_t *v = mc_realloc(s->visited, cap * sizeof(*v));
        if (!v)
            return MC_ENOMEM;
        memset(v + s->visited_cap, 0, (cap - s->visited_cap) * sizeof(*v));
        s->visited = v;
        s->visited_cap = cap;
    }
    if (s->q_cap < dim_pad) {
        float *q = mc_realloc(s->q, dim_pad * sizeof(*q));
        if (!q)
            return MC_ENOMEM;
        s->q = q;
        s->q_cap = dim_pad;
    }
    if (heap_reserve(&s->cands, n_nodes + 1) || heap_reserve(&s->res, n_res + 1))
        return MC_ENOMEM;
    return MC_OK;
}

/* Starts a new walk: bumping the generation clears every mark at once; the array is
 * wiped only when the 16-bit counter wraps. */
static void visited_begin(struct mc_hnsw_scratch *s) {
    if (++s->gen == 0) {
        memset(s->visited, 0, s->visited_cap * sizeof(*s->visited));
        s->gen = 1;
    }
}

int mc_hnsw_scratch_create(struct mc_hnsw_scratch **out, struct mc_err *err) {
    *out = mc_calloc(1, sizeof(**out));
    if (!*out)
        return mc_err_set(err, MC_ENOMEM, "hnsw: out of memory for search scratch");
    return MC_OK;
}

void mc_hnsw_scratch_free(struct mc_hnsw_scratch *s) {
    if (!s)
        return;
    scratch_deinit(s);
    mc_free(s);
}

/* ---------------------------------------------------------------- create / free */

static int check_params(const struct mc_hnsw_params *p, struct mc_err *err) {
    if (p->dim < 1 || p->dim > MC_HNSW_MAX_DIM)
        return mc_err_set(err, MC_EINVAL, "hnsw: dim %d outside 1..%d", p->dim, MC_HNSW_MAX_DIM);
    if (p->metric < MC_HNSW_L2 || p->metric > MC_HNSW_COSINE)
        return mc_err_set(err, MC_EINVAL, "hnsw: unknown metric %d (0 l2, 1 ip, 2 cosine)",
                          p->metric);
    if (p->m != 0 && (p->m < 2 || p->m > MC_HNSW_MAX_M))
        return mc_err_set(err, MC_EINVAL, "hnsw: m %d outside 2..%d", p->m, MC_HNSW_MAX_M);
    if (p->ef_construction < 0 || p->ef_construction > MC_HNSW_MAX_EF)
        return mc_err_set(err, MC_EINVAL, "hnsw: ef_construction %d outside 1..%d",
                          p->ef_construction, MC_HNSW_MAX_EF);
    if (p->ef_search < 0 || p->ef_search > MC_HNSW_MAX_EF)
        return mc_err_set(err, MC_EINVAL, "hnsw: ef_search %d outside 1..%d", p->ef_search,
                          MC_HNSW_MAX_EF);
    return MC_OK;
}

int mc_hnsw_create(const struct mc_hnsw_params *p, struct mc_hnsw **out, struct mc_err *err) {
    *out = NULL;
    int rc = check_params(p, err);
    if (rc)
        return rc;
    struct mc_hnsw *h = mc_calloc(1, sizeof(*h));
    if (!h)
        return mc_err_set(err, MC_ENOMEM, "hnsw: out of memory");
    h->dim = p->dim;
    h->dim_pad = (p->dim + 15) / 16 * 16;
    h->metric = p->metric;
    h->m = p->m ? p->m : 16;
    h->m0 = 2 * h->m;
    h->ef_construction = p->ef_construction ? p->ef_construction : 200;
    h->ef_search = p->ef_search ? p->ef_search : 64;
    h->seed = p->seed;
    h->rng = p->seed;
    h->level_mult = 1.0 / log((double)h->m);
    h->max_level = -1;
    h->entry = NONE;
    pick_kernels(h);
    h->sorted = mc_malloc((size_t)(h->ef_construction + h->m0 + 1) * sizeof(*h->sorted));
    h->picked = mc_malloc((size_t)(h->m0 + 1) * sizeof(*h->picked));
    if (!h->sorted || !h->picked) {
        mc_hnsw_free(h);
        return mc_err_set(err, MC_ENOMEM, "hnsw: out of memory");
    }
    *out = h;
    return MC_OK;
}

void mc_hnsw_free(struct mc_hnsw *h) {
    if (!h)
        return;
    if (h->upper)
        for (uint32_t i = 0; i < h->n_nodes; i++)
            mc_free(h->upper[i]);
    mc_free(h->vecs);
    mc_free(h->links0);
    mc_free(h->upper);
    mc_free(h->levels);
    mc_free(h->deleted);
    mc_free(h->labels);
    idmap_deinit(&h->labels_map);
    mc_free(h->sorted);
    mc_free(h->picked);
    scratch_deinit(&h->scratch);
    mc_free(h);
}

/* Grows every per-node array to hold need nodes. On failure the arrays that did grow
 * keep their contents, so the index is unchanged apart from capacity. */
static int reserve_nodes(struct mc_hnsw *h, uint32_t need) {
    if (need <= h->cap)
        return MC_OK;
    size_t cap = h->cap ? (size_t)h->cap * 2 : 64;
    if (cap < need)
        cap = need;
    if (cap > UINT32_MAX - 2)
        return MC_ENOMEM;
    void *p;
#define GROW(field, elem)                                                                          \
    p = mc_realloc(h->field, cap * (elem));                                                        \
    if (!p)                                                                                        \
        return MC_ENOMEM;                                                                          \
    h->field = p;
    GROW(vecs, (size_t)h->dim_pad * sizeof(float));
    GROW(links0, (size_t)(1 + h->m0) * sizeof(uint32_t));
    GROW(upper, sizeof(uint32_t *));
    GROW(levels, 1);
    GROW(deleted, 1);
    GROW(labels, sizeof(uint64_t));
#undef GROW
    h->cap = (uint32_t)cap;
    return MC_OK;
}

/* ---------------------------------------------------------------- search core */

/* Greedy descent on one upper level: move to the closest neighbour until none is closer. */
static uint32_t greedy_step(const struct mc_hnsw *h, const float *q, uint32_t cur, float *cur_d,
                            int level) {
    bool changed = true;
    while (changed) {
        changed = false;
        const uint32_t *l = links_at(h, cur, level);
        for (uint32_t j = 1; j <= l[0]; j++) {
            float d = dist_to(h, q, l[j]);
            if (d < *cur_d) {
                *cur_d = d;
                cur = l[j];
                changed = true;
            }
        }
    }
    return cur;
}

/* Best-first search of one level from ep, leaving up to ef nodes in s->res (a max-heap).
 * With live_only, deleted nodes are walked through but never enter s->res, and the walk
 * goes on until s->res holds ef nodes or no candidate is left. The caller has sized s. */
static void search_level(const struct mc_hnsw *h, struct mc_hnsw_scratch *s, const float *q,
                         uint32_t ep, float ep_d, size_t ef, int level, bool live_only) {
    bool filtering = live_only && h->n_live < h->n_nodes;
    uint16_t *vis = s->visited;
    uint16_t gen;
    uint32_t fresh[2 * MC_HNSW_MAX_M];

    visited_begin(s);
    gen = s->gen;
    s->cands.n = 0;
    s->res.n = 0;
    vis[ep] = gen;
    heap_push_min(&s->cands, ep_d, ep);
    if (!filtering || !h->deleted[ep])
        heap_push_max(&s->res, ep_d, ep);
    float worst = s->res.n ? s->res.a[0].d : INFINITY;

    while (s->cands.n) {
        struct cand c = s->cands.a[0];
        if (c.d > worst && (s->res.n >= ef || !filtering))
            break;
        heap_pop_min(&s->cands);

        /* Collect the unseen neighbours first and prefetch their vectors, so the loads
         * of several vectors are in flight while the first distance is computed. */
        const uint32_t *l = links_at(h, c.id, level);
        uint32_t n_fresh = 0;
        for (uint32_t j = 1; j <= l[0]; j++) {
            uint32_t id = l[j];
            if (vis[id] == gen)
                continue;
            vis[id] = gen;
            fresh[n_fresh++] = id;
            const char *v = (const char *)vec_of(h, id);
            __builtin_prefetch(v);
            __builtin_prefetch(v + 64);
        }
        for (uint32_t j = 0; j < n_fresh; j++) {
            uint32_t id = fresh[j];
            bool full = s->res.n >= ef;
            float d = full ? dist_bounded(h, q, id, worst) : dist_to(h, q, id);
            if (full && d >= worst)
                continue;
            heap_push_min(&s->cands, d, id);
            if (filtering && h->deleted[id])
                continue;
            heap_push_max(&s->res, d, id);
            if (s->res.n > ef)
                heap_pop_max(&s->res);
            worst = s->res.a[0].d;
        }
    }
}

/* Copies query into s->q, padded with zeros and (cosine) normalised. */
static int load_query(const struct mc_hnsw *h, struct mc_hnsw_scratch *s, const float *query,
                      struct mc_err *err) {
    double norm = 0.0;
    for (int i = 0; i < h->dim; i++) {
        if (!isfinite(query[i]))
            return mc_err_set(err, MC_EINVAL, "hnsw: component %d of the vector is not finite", i);
        norm += (double)query[i] * query[i];
    }
    float scale = 1.0f;
    if (h->metric == MC_HNSW_COSINE) {
        if (norm == 0.0)
            return mc_err_set(err, MC_EINVAL, "hnsw: zero vector has no cosine direction");
        scale = (float)(1.0 / sqrt(norm));
    }
    for (int i = 0; i < h->dim; i++)
        s->q[i] = query[i] * scale;
    for (int i = h->dim; i < h->dim_pad; i++)
        s->q[i] = 0.0f;
    return MC_OK;
}

/* ---------------------------------------------------------------- insert */

static int cmp_cand(const void *a, const void *b) {
    const struct cand *x = a, *y = b;
    if (x->d != y->d)
        return x->d < y->d ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Drains s->res into h->sorted, closest first. Returns the count. */
static size_t drain_sorted(struct mc_hnsw *h, struct mc_hnsw_scratch *s) {
    size_t n = s->res.n;
    memcpy(h->sorted, s->res.a, n * sizeof(*h->sorted));
    qsort(h->sorted, n, sizeof(*h->sorted), cmp_cand);
    s->res.n = 0;
    return n;
}

/* hnswlib's neighbour heuristic: walk the candidates closest first and keep one only if
 * it is closer to the base than to every candidate already kept, up to max. This keeps
 * links pointing in different directions. cands is sorted; out receives the kept ones. */
static size_t select_neighbors(const struct mc_hnsw *h, const struct cand *cands, size_t n,
                               size_t max, struct cand *out) {
    if (n <= max) {
        memcpy(out, cands, n * sizeof(*out));
        return n;
    }
    size_t n_out = 0;
    for (size_t i = 0; i < n && n_out < max; i++) {
        bool good = true;
        const float *v = vec_of(h, cands[i].id);
        for (size_t j = 0; j < n_out; j++) {
            if (dist_bounded(h, v, out[j].id, cands[i].d) < cands[i].d) {
                good = false;
                break;
            }
        }
        if (good)
            out[n_out++] = cands[i];
    }
    return n_out;
}

/* Adds a link from nb to node on level, pruning nb's list with the heuristic when full. */
static void link_back(struct mc_hnsw *h, uint32_t nb, uint32_t node, float d, int level) {
    uint32_t *l = links_at(h, nb, level);
    uint32_t max = level == 0 ? (uint32_t)h->m0 : (uint32_t)h->m;
    if (l[0] < max) {
        l[++l[0]] = node;
        return;
    }
    struct cand *c = h->sorted;
    const float *v = vec_of(h, nb);
    c[0] = (struct cand){d, node};
    for (uint32_t j = 1; j <= l[0]; j++)
        c[j] = (struct cand){dist_to(h, v, l[j]), l[j]};
    qsort(c, l[0] + 1, sizeof(*c), cmp_cand);
    size_t n = select_neighbors(h, c, l[0] + 1, max, h->picked);
    l[0] = (uint32_t)n;
    for (size_t j = 0; j < n; j++)
        l[j + 1] = h->picked[j].id;
}

static int random_level(struct mc_hnsw *h) {
    /* splitmix64: one 64-bit state, good enough spread for level draws. */
    uint64_t z = (h->rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    double u = 1.0 - (double)(z >> 11) * (1.0 / 9007199254740992.0); /* (0, 1] */
    double l = -log(u) * h->level_mult;
    return l >= MC_HNSW_MAX_LEVEL ? MC_HNSW_MAX_LEVEL : (int)l;
}

/* Links node (already stored, at level top) into the graph. Allocates nothing. */
static void connect_node(struct mc_hnsw *h, uint32_t node, int top) {
    struct mc_hnsw_scratch *s = &h->scratch;
    const float *q = vec_of(h, node);
    uint32_t cur = h->entry;
    float cur_d = dist_to(h, q, cur);
    for (int lev = h->max_level; lev > top; lev--)
        cur = greedy_step(h, q, cur, &cur_d, lev);

    for (int lev = top < h->max_level ? top : h->max_level; lev >= 0; lev--) {
        search_level(h, s, q, cur, cur_d, (size_t)h->ef_construction, lev, false);
        size_t n = drain_sorted(h, s);
        cur = h->sorted[0].id;
        cur_d = h->sorted[0].d;
        size_t n_sel = select_neighbors(h, h->sorted, n, (size_t)h->m, h->picked);

        /* The picked list is copied out first: link_back reuses sorted and picked. */
        struct cand mine[MC_HNSW_MAX_M];
        memcpy(mine, h->picked, n_sel * sizeof(*mine));
        uint32_t *l = links_at(h, node, lev);
        l[0] = (uint32_t)n_sel;
        for (size_t j = 0; j < n_sel; j++)
            l[j + 1] = mine[j].id;
        for (size_t j = 0; j < n_sel; j++)
            link_back(h, mine[j].id, node, mine[j].d, lev);
    }
}

int mc_hnsw_insert(struct mc_hnsw *h, uint64_t label, const float *vec, struct mc_err *err) {
    if (idmap_find(&h->labels_map, label) != NONE)
        return mc_err_set(err, MC_EEXIST, "hnsw: label %llu is already in the index",
                          (unsigned long long)label);
    if (h->n_nodes >= UINT32_MAX - 2)
        return mc_err_set(err, MC_EFULL, "hnsw: index holds the maximum number of nodes");

    /* Every allocation happens before the graph changes, so a failure leaves the index
     * as it was. */
    uint32_t node = h->n_nodes;
    int rc = reserve_nodes(h, node + 1);
    if (!rc)
        rc = scratch_reserve(&h->scratch, node + 1, (size_t)h->ef_construction, h->dim_pad);
    if (!rc)
        rc = idmap_reserve_one(&h->labels_map);
    if (rc)
        return mc_err_set(err, MC_ENOMEM, "hnsw: out of memory growing to %u nodes", node + 1);
    rc = load_query(h, &h->scratch, vec, err);
    if (rc)
        return rc;

    uint64_t rng_before = h->rng;
    int level = random_level(h);
    uint32_t *up = NULL;
    if (level > 0) {
        up = mc_calloc((size_t)level * (1 + h->m), sizeof(*up));
        if (!up) {
            h->rng = rng_before;
            return mc_err_set(err, MC_ENOMEM, "hnsw: out of memory for %d link levels", level);
        }
    }
    memcpy(h->vecs + (size_t)node * h->dim_pad, h->scratch.q, h->dim_pad * sizeof(float));
    h->links0[(size_t)node * (1 + h->m0)] = 0;
    h->upper[node] = up;
    h->levels[node] = (uint8_t)level;
    h->deleted[node] = 0;
    h->labels[node] = label;
    h->n_nodes++;
    h->n_live++;
    idmap_put(&h->labels_map, label, node);

    if (h->entry == NONE) {
        h->entry = node;
        h->max_level = level;
        return MC_OK;
    }
    connect_node(h, node, level);
    if (level > h->max_level) {
        h->max_level = level;
        h->entry = node;
    }
    return MC_OK;
}

int mc_hnsw_delete(struct mc_hnsw *h, uint64_t label, struct mc_err *err) {
    uint32_t node = idmap_find(&h->labels_map, label);
    if (node == NONE)
        return mc_err_set(err, MC_ENOTFOUND, "hnsw: label %llu is not in the index",
                          (unsigned long long)label);
    idmap_remove(&h->labels_map, label);
    h->deleted[node] = 1;
    h->n_live--;
    return MC_OK;
}

/* ---------------------------------------------------------------- search */

/* Exact top-want over the live nodes, into s->res. */
static void exact_scan(const struct mc_hnsw *h, struct mc_hnsw_scratch *s, size_t want) {
    s->res.n = 0;
    for (uint32_t i = 0; i < h->n_nodes; i++) {
        if (h->deleted[i])
            continue;
        float d = dist_to(h, s->q, i);
        if (s->res.n < want) {
            heap_push_max(&s->res, d, i);
        } else if (d < s->res.a[0].d) {
            heap_pop_max(&s->res);
            heap_push_max(&s->res, d, i);
        }
    }
}

int mc_hnsw_search_with(const struct mc_hnsw *h, struct mc_hnsw_scratch *s, const float *query,
                        size_t k, int ef, struct mc_hnsw_hit *hits, size_t *n_hits,
                        struct mc_err *err) {
    *n_hits = 0;
    if (ef < 0 || ef > MC_HNSW_MAX_EF)
        return mc_err_set(err, MC_EINVAL, "hnsw: ef %d outside 0..%d", ef, MC_HNSW_MAX_EF);
    size_t want = k < h->n_live ? k : h->n_live;
    size_t ef_eff = ef ? (size_t)ef : (size_t)h->ef_search;
    if (ef_eff < want)
        ef_eff = want;
    if (scratch_reserve(s, h->n_nodes, ef_eff, h->dim_pad))
        return mc_err_set(err, MC_ENOMEM, "hnsw: out of memory for search scratch");
    int rc = load_query(h, s, query, err);
    if (rc || want == 0)
        return rc;

    uint32_t cur = h->entry;
    float cur_d = dist_to(h, s->q, cur);
    for (int lev = h->max_level; lev > 0; lev--)
        cur = greedy_step(h, s->q, cur, &cur_d, lev);
    search_level(h, s, s->q, cur, cur_d, ef_eff, 0, true);
    if (s->res.n < want)
        exact_scan(h, s, want);

    /* Heap-sort the ef best in place (closest first), then settle equal distances by
     * label with an insertion pass, which is linear when ties are rare. */
    struct cand *a = s->res.a;
    size_t n = s->res.n;
    while (s->res.n > 1) {
        struct cand top = a[0];
        heap_pop_max(&s->res);
        a[s->res.n] = top;
    }
    for (size_t i = 1; i < n; i++) {
        struct cand c = a[i];
        size_t j = i;
        while (j > 0 && a[j - 1].d == c.d && h->labels[a[j - 1].id] > h->labels[c.id]) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = c;
    }
    for (size_t i = 0; i < want; i++)
        hits[i] = (struct mc_hnsw_hit){h->labels[a[i].id], a[i].d};
    s->res.n = 0;
    *n_hits = want;
    return MC_OK;
}

int mc_hnsw_search(struct mc_hnsw *h, const float *query, size_t k, int ef,
                   struct mc_hnsw_hit *hits, size_t *n_hits, struct mc_err *err) {
    return mc_hnsw_search_with(h, &h->scratch, query, k, ef, hits, n_hits, err);
}

int mc_hnsw_set_ef_search(struct mc_hnsw *h, int ef, struct mc_err *err) {
    if (ef < 1 || ef > MC_HNSW_MAX_EF)
        return mc_err_set(err, MC_EINVAL, "hnsw: ef_search %d outside 1..%d", ef, MC_HNSW_MAX_EF);
    h->ef_search = ef;
    return MC_OK;
}

size_t mc_hnsw_n_live(const struct mc_hnsw *h) {
    return h->n_live;
}

size_t mc_hnsw_n_nodes(const struct mc_hnsw *h) {
    return h->n_nodes;
}

int mc_hnsw_dim(const struct mc_hnsw *h) {
    return h->dim;
}

int mc_hnsw_contains(const struct mc_hnsw *h, uint64_t label) {
    return idmap_find(&h->labels_map, label) != NONE;
}

/* ---------------------------------------------------------------- serialization
 *
 * Little-endian layout, version 1:
 *   "MCHNSW\0\1"  u32 version  u32 dim  u32 metric  u32 m  u32 ef_construction
 *   u32 ef_search  u64 seed  u64 rng  u32 n_nodes  u32 n_live  i32 max_level  u32 entry
 *   then per node: u64 label  u8 level  u8 deleted  u16 zero  f32[dim] vector
 *                  and for each level 0..level: u32 count, u32[count] neighbour ids.
 * Vectors are stored as inserted after normalisation, without the padding. */

#define HNSW_MAGIC        "MCHNSW\0\1"
#define HNSW_VERSION      1u
#define HNSW_HEADER_BYTES (8 + 4 * 6 + 8 * 2 + 4 * 4)

struct wbuf {
    uint8_t *p;
    size_t off;
};

static void put_bytes(struct wbuf *w, const void *src, size_t n) {
    memcpy(w->p + w->off, src, n);
    w->off += n;
}

/* The host is little-endian (x86-64 and aarch64 builds); the format is too, so plain
 * copies are the encoding. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "hnsw format assumes little-endian");

static void put_u32(struct wbuf *w, uint32_t v) {
    put_bytes(w, &v, 4);
}

static void put_u64(struct wbuf *w, uint64_t v) {
    put_bytes(w, &v, 8);
}

static size_t node_bytes(const struct mc_hnsw *h, uint32_t i) {
    size_t n = 8 + 4 + (size_t)h->dim * 4;
    for (int lev = 0; lev <= h->levels[i]; lev++)
        n += 4 + (size_t)links_at(h, i, lev)[0] * 4;
    return n;
}

int mc_hnsw_serialize(const struct mc_hnsw *h, uint8_t **buf, size_t *len, struct mc_err *err) {
    *buf = NULL;
    *len = 0;
    size_t total = HNSW_HEADER_BYTES;
    for (uint32_t i = 0; i < h->n_nodes; i++)
        total += node_bytes(h, i);
    struct wbuf w = {mc_malloc(total), 0};
    if (!w.p)
        return mc_err_set(err, MC_ENOMEM, "hnsw: out of memory for a %zu-byte image", total);

    put_bytes(&w, HNSW_MAGIC, 8);
    put_u32(&w, HNSW_VERSION);
    put_u32(&w, (uint32_t)h->dim);
    put_u32(&w, (uint32_t)h->metric);
    put_u32(&w, (uint32_t)h->m);
    put_u32(&w, (uint32_t)h->ef_construction);
    put_u32(&w, (uint32_t)h->ef_search);
    put_u64(&w, h->seed);
    put_u64(&w, h->rng);
    put_u32(&w, h->n_nodes);
    put_u32(&w, h->n_live);
    put_u32(&w, (uint32_t)h->max_level);
    put_u32(&w, h->entry);
    for (uint32_t i = 0; i < h->n_nodes; i++) {
        uint8_t meta[4] = {h->levels[i], h->deleted[i], 0, 0};
        put_u64(&w, h->labels[i]);
        put_bytes(&w, meta, 4);
        put_bytes(&w, vec_of(h, i), (size_t)h->dim * 4);
        for (int lev = 0; lev <= h->levels[i]; lev++) {
            const uint32_t *l = links_at(h, i, lev);
            put_bytes(&w, l, (1 + (size_t)l[0]) * 4);
        }
    }
    MC_ASSERT(w.off == total);
    *buf = w.p;
    *len = total;
    return MC_OK;
}

struct rbuf {
    const uint8_t *p;
    size_t len, off;
    struct mc_err *err;
};

static int need(struct rbuf *r, size_t n, const char *what) {
    if (r->len - r->off < n)
        return mc_err_set(r->err, MC_EFORMAT,
                          "hnsw image: %s at offset %zu needs %zu bytes, %zu left", what, r->off, n,
                          r->len - r->off);
    return MC_OK;
}

static int get_u32(struct rbuf *r, uint32_t *v, const char *what) {
    int rc = need(r, 4, what);
    if (rc)
        return rc;
    memcpy(v, r->p + r->off, 4);
    r->off += 4;
    return MC_OK;
}

static int get_u64(struct rbuf *r, uint64_t *v, const char *what) {
    int rc = need(r, 8, what);
    if (rc)
        return rc;
    memcpy(v, r->p + r->off, 8);
    r->off += 8;
    return MC_OK;
}

static int bad(struct rbuf *r, size_t off, const char *fmt_field, long long value) {
    return mc_err_set(r->err, MC_EFORMAT, "hnsw image: %s %lld at offset %zu is invalid", fmt_field,
                      value, off);
}

/* Reads the header into params and counts; checks each against the limits. */
static int read_header(struct rbuf *r, struct mc_hnsw_params *p, uint64_t *rng, uint32_t *n_nodes,
                       uint32_t *n_live, int32_t *max_level, uint32_t *entry) {
    uint32_t v[6];
    int rc = need(r, 8, "magic");
    if (rc)
        return rc;
    if (memcmp(r->p, HNSW_MAGIC, 8) != 0)
        return mc_err_set(r->err, MC_EFORMAT, "hnsw image: bad magic at offset 0");
    r->off = 8;
    static const char *names[6] = {"version", "dim", "metric", "m", "ef_construction", "ef_search"};
    for (int i = 0; i < 6; i++) {
        rc = get_u32(r, &v[i], names[i]);
        if (rc)
            return rc;
    }
    if (v[0] != HNSW_VERSION)
        return mc_err_set(r->err, MC_EFORMAT, "hnsw image: version %u at offset 8, expected %u",
                          v[0], HNSW_VERSION);
    static const uint32_t lo[6] = {0, 1, MC_HNSW_L2, 2, 1, 1};
    static const uint32_t hi[6] = {
        0, MC_HNSW_MAX_DIM, MC_HNSW_COSINE, MC_HNSW_MAX_M, MC_HNSW_MAX_EF, MC_HNSW_MAX_EF};
    for (int i = 1; i < 6; i++)
        if (v[i] < lo[i] || v[i] > hi[i])
            return bad(r, 8 + 4 * (size_t)i, names[i], v[i]);
    *p = (struct mc_hnsw_params){(int)v[1], (int)v[2], (int)v[3], (int)v[4], (int)v[5], 0};
    uint32_t ml = 0;
    if ((rc = get_u64(r, &p->seed, "seed")) || (rc = get_u64(r, rng, "rng")) ||
        (rc = get_u32(r, n_nodes, "n_nodes")) || (rc = get_u32(r, n_live, "n_live")) ||
        (rc = get_u32(r, &ml, "max_level")) || (rc = get_u32(r, entry, "entry")))
        return rc;
    *max_level = (int32_t)ml;
    return MC_OK;
}

/* Reads one node's label, level, flag, vector and link lists into slot i. */
static int read_node(struct rbuf *r, struct mc_hnsw *h, uint32_t i, uint32_t n_nodes) {
    size_t at = r->off;
    int rc = need(r, 12 + (size_t)h->dim * 4, "node header and vector");
    if (rc)
        return rc;
    memcpy(&h->labels[i], r->p + r->off, 8);
    uint8_t level = r->p[r->off + 8], del = r->p[r->off + 9];
    if (level > MC_HNSW_MAX_LEVEL)
        return bad(r, at + 8, "node level", level);
    if (del > 1)
        return bad(r, at + 9, "deleted flag", del);
    if (r->p[r->off + 10] || r->p[r->off + 11])
        return bad(r, at + 10, "reserved bytes", r->p[r->off + 10] | r->p[r->off + 11] << 8);
    r->off += 12;
    float *v = h->vecs + (size_t)i * h->dim_pad;
    memcpy(v, r->p + r->off, (size_t)h->dim * 4);
    for (int d = 0; d < h->dim; d++)
        if (!isfinite(v[d]))
            return bad(r, r->off + 4 * (size_t)d, "non-finite vector component", d);
    for (int d = h->dim; d < h->dim_pad; d++)
        v[d] = 0.0f;
    r->off += (size_t)h->dim * 4;

    h->levels[i] = level;
    h->deleted[i] = del;
    h->upper[i] = NULL;
    h->n_nodes = i + 1; /* from here on mc_hnsw_free releases upper[i] */
    if (level > 0) {
        h->upper[i] = mc_calloc((size_t)level * (1 + h->m), sizeof(uint32_t));
        if (!h->upper[i])
            return mc_err_set(r->err, MC_ENOMEM, "hnsw image: out of memory for node %u", i);
    }
    for (int lev = 0; lev <= level; lev++) {
        uint32_t *l = links_at(h, i, lev), count;
        size_t count_at = r->off;
        if ((rc = get_u32(r, &count, "link count")))
            return rc;
        if (count > (uint32_t)(lev == 0 ? h->m0 : h->m))
            return bad(r, count_at, "link count", count);
        if ((rc = need(r, (size_t)count * 4, "link ids")))
            return rc;
        memcpy(l + 1, r->p + r->off, (size_t)count * 4);
        l[0] = count;
        for (uint32_t j = 1; j <= count; j++)
            if (l[j] >= n_nodes || l[j] == i)
                return bad(r, r->off + 4 * (size_t)(j - 1), "link id", l[j]);
        r->off += (size_t)count * 4;
    }
    return MC_OK;
}

/* Checks what needs every node read: links reach nodes present on their level, the entry
 * point sits on the top level, the live count and live labels agree. */
static int check_graph(struct rbuf *r, struct mc_hnsw *h, uint32_t n_live, int32_t max_level,
                       uint32_t entry) {
    int top = -1;
    uint32_t live = 0;
    for (uint32_t i = 0; i < h->n_nodes; i++) {
        if (h->levels[i] > top)
            top = h->levels[i];
        live += !h->deleted[i];
        for (int lev = 0; lev <= h->levels[i]; lev++) {
            const uint32_t *l = links_at(h, i, lev);
            for (uint32_t j = 1; j <= l[0]; j++)
                if (h->levels[l[j]] < lev)
                    return mc_err_set(r->err, MC_EFORMAT,
                                      "hnsw image: node %u links to node %u on level %d, "
                                      "which that node does not reach",
                                      i, l[j], lev);
        }
    }
    if (live != n_live)
        return mc_err_set(r->err, MC_EFORMAT, "hnsw image: n_live %u but %u nodes are live", n_live,
                          live);
    if (max_level != top)
        return mc_err_set(r->err, MC_EFORMAT, "hnsw image: max_level %d but top node level %d",
                          max_level, top);
    if (h->n_nodes == 0 ? entry != NONE : (entry >= h->n_nodes || h->levels[entry] != top))
        return mc_err_set(r->err, MC_EFORMAT, "hnsw image: entry %u is not a top-level node",
                          entry);
    for (uint32_t i = 0; i < h->n_nodes; i++) {
        if (h->deleted[i])
            continue;
        if (idmap_find(&h->labels_map, h->labels[i]) != NONE)
            return mc_err_set(r->err, MC_EFORMAT, "hnsw image: label %llu is live twice",
                              (unsigned long long)h->labels[i]);
        if (idmap_reserve_one(&h->labels_map))
            return mc_err_set(r->err, MC_ENOMEM, "hnsw image: out of memory for labels");
        idmap_put(&h->labels_map, h->labels[i], i);
        h->n_live++;
    }
    return MC_OK;
}

int mc_hnsw_deserialize(const uint8_t *buf, size_t len, struct mc_hnsw **out, struct mc_err *err) {
    *out = NULL;
    struct rbuf r = {buf, len, 0, err};
    struct mc_hnsw_params p = {0};
    uint64_t rng = 0;
    uint32_t n_nodes = 0, n_live = 0, entry = 0;
    int32_t max_level = 0;
    int rc = read_header(&r, &p, &rng, &n_nodes, &n_live, &max_level, &entry);
    if (rc)
        return rc;

    /* Each node takes at least 16 + 4*dim bytes, which bounds the allocation below by
     * the size of the buffer itself. */
    size_t min_node = 16 + (size_t)p.dim * 4;
    if (n_nodes > (len - r.off) / min_node || n_nodes >= UINT32_MAX - 2)
        return mc_err_set(err, MC_EFORMAT,
                          "hnsw image: n_nodes %u at offset %d does not fit in %zu bytes", n_nodes,
                          HNSW_HEADER_BYTES - 16, len);

    struct mc_hnsw *h;
    rc = mc_hnsw_create(&p, &h, err);
    if (rc)
        return rc == MC_EINVAL ? mc_err_set(err, MC_EFORMAT, "hnsw image: %s", err->msg) : rc;
    h->seed = p.seed;
    h->rng = rng;
    if (reserve_nodes(h, n_nodes)) {
        mc_hnsw_free(h);
        return mc_err_set(err, MC_ENOMEM, "hnsw image: out of memory for %u nodes", n_nodes);
    }
    for (uint32_t i = 0; i < n_nodes && !rc; i++)
        rc = read_node(&r, h, i, n_nodes);
    if (!rc && r.off != len)
        rc = mc_err_set(err, MC_EFORMAT, "hnsw image: %zu trailing bytes at offset %zu",
                        len - r.off, r.off);
    if (!rc)
        rc = check_graph(&r, h, n_live, max_level, entry);
    if (!rc && scratch_reserve(&h->scratch, n_nodes, (size_t)h->ef_construction, h->dim_pad))
        rc = mc_err_set(err, MC_ENOMEM, "hnsw image: out of memory for search scratch");
    if (rc) {
        mc_hnsw_free(h);
        return rc;
    }
    h->max_level = max_level;
    h->entry = entry;
    *out = h;
    return MC_OK;
}
