/* fusion.h - reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009).
 *
 * Combines ranked lists from different retrievers (BM25, dense vectors) without looking
 * at their scores, which live on different scales:
 *
 *   rrf(d) = sum over lists l containing d:  weight_l / (k + rank_l(d)),  rank from 1.
 *
 * k damps the head of each list; 60 is the value of the original paper. */
#ifndef MC_FUSION_H
#define MC_FUSION_H

#include "base/err.h"

#include <stddef.h>
#include <stdint.h>

#define MC_FUSION_DEFAULT_K 60

struct mc_fusion_list {
    const uint64_t *labels; /* (n) best first; a repeated label counts at its best rank */
    size_t n;
    float weight; /* >= 0; 1 for plain RRF */
};

struct mc_fusion_hit {
    uint64_t label;
    float score;        /* the fused score */
    uint32_t best_rank; /* best rank of the label over all lists, from 1 */
};

/* Fuses n_lists lists and writes the top_n labels by fused score to out (best first;
 * ties by better best rank, then lower label), their number to *n_out. k is the RRF
 * constant (0 means MC_FUSION_DEFAULT_K). MC_EINVAL for k < 0, a negative or non-finite
 * weight; MC_ENOMEM. */
int mc_fusion_rrf(const struct mc_fusion_list *lists, size_t n_lists, int k, size_t top_n,
                  struct mc_fusion_hit *out, size_t *n_out, struct mc_err *err);

#endif
