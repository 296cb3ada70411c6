/* fusion.c - reciprocal rank fusion of ranked label lists (see fusion.h).
 *
 * Every (label, contribution) pair of every list goes into one array, which is sorted by
 * label so that a label's contributions sit together and can be summed; the sums are then
 * sorted by fused score. O(T log T) for T entries in all lists, with one allocation.
 * Stateless and thread-safe. */
#include "rag/fusion.h"

#include "base/mem.h"

#include <math.h>
#include <stdlib.h>

struct entry {
    uint64_t label;
    uint32_t rank; /* from 1 */
    uint32_t list;
    double contrib;
};

static int by_label_then_rank(const void *a, const void *b) {
    const struct entry *x = a, *y = b;
    if (x->label != y->label)
        return x->label < y->label ? -1 : 1;
    if (x->list != y->list)
        return x->list < y->list ? -1 : 1;
    return x->rank < y->rank ? -1 : x->rank > y->rank;
}

static int by_score(const void *a, const void *b) {
    const struct entry *x = a, *y = b;
    if (x->contrib != y->contrib)
        return x->contrib > y->contrib ? -1 : 1;
    if (x->rank != y->rank)
        return x->rank < y->rank ? -1 : 1;
    return x->label < y->label ? -1 : x->label > y->label;
}

int mc_fusion_rrf(const struct mc_fusion_list *lists, size_t n_lists, int k, size_t top_n,
                  struct mc_fusion_hit *out, size_t *n_out, struct mc_err *err) {
    *n_out = 0;
    if (k < 0)
        return mc_err_set(err, MC_EINVAL, "fusion: k %d must not be negative", k);
    double kk = k ? k : MC_FUSION_DEFAULT_K;
    size_t total = 0;
    for (size_t l = 0; l < n_lists; l++) {
        if (!(lists[l].weight >= 0.0f) || isinf(lists[l].weight))
            return mc_err_set(err, MC_EINVAL,
                              "fusion: weight of list %zu is not a finite "
                              "number >= 0",
                              l);
        total += lists[l].n;
    }
    if (total == 0 || top_n == 0)
        return MC_OK;
    struct entry *e = mc_malloc(total * sizeof(*e));
    if (!e)
        return mc_err_set(err, MC_ENOMEM, "fusion: out of memory for %zu entries", total);
    size_t n = 0;
    for (size_t l = 0; l < n_lists; l++)
        for (size_t r = 0; r < lists[l].n; r++)
            e[n++] = (struct entry){lists[l].labels[r], (uint32_t)(r + 1), (uint32_t)l,
                                    lists[l].weight / (kk + (double)(r + 1))};

    /* Sum per label; within a label, only the best rank of each list counts. */
    qsort(e, n, sizeof(*e), by_label_then_rank);
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        struct entry acc = e[i];
        size_t j = i + 1;
        for (; j < n && e[j].label == acc.label; j++) {
            if (e[j].list == e[j - 1].list)
                continue;
            acc.contrib += e[j].contrib;
            if (e[j].rank < acc.rank)
                acc.rank = e[j].rank;
        }
        e[m++] = acc;
        i = j;
    }
    qsort(e, m, sizeof(*e), by_score);
    size_t keep = m < top_n ? m : top_n;
    for (size_t i = 0; i < keep; i++)
        out[i] = (struct mc_fusion_hit){e[i].label, (float)e[i].contrib, e[i].rank};
    *n_out = keep;
    mc_free(e);
    return MC_OK;
}
