/* sample.h - choosing the next token from a row of logits.
 *
 * A sampler holds its parameters, a seeded PRNG, the recent tokens the penalties look at
 * and scratch for n_vocab candidates, so sampling allocates nothing. The chain, in order:
 * repetition/frequency/presence penalties, then (temp <= 0) argmax with the lowest id
 * winning ties, or top-k, top-p, min-p, temperature and a draw from the distribution.
 * One sampler belongs to one sequence and one thread at a time. */
#ifndef MC_SAMPLE_H
#define MC_SAMPLE_H

#include "base/err.h"

#include <stdbool.h>
#include <stdint.h>

struct mc_sample_params {
    float temp;             /* <= 0: greedy */
    int32_t top_k;          /* <= 0: off */
    float top_p;            /* >= 1: off */
    float min_p;            /* <= 0: off */
    float repeat_penalty;   /* 1: off. logit > 0 is divided by it, logit <= 0 multiplied */
    int32_t repeat_last_n;  /* how many recent tokens the penalties look at (0: none) */
    float freq_penalty;     /* subtracted count times */
    float presence_penalty; /* subtracted once if the token occurred */
    uint64_t seed;
};

/* temp 0.8, top-k 40, top-p 0.95, min-p 0.05, no penalties, last 64 tokens, seed 0. */
struct mc_sample_params mc_sample_params_default(void);

struct mc_logprob {
    int32_t id;
    float logprob;
};

struct mc_sampler;

/* MC_OK, or MC_EINVAL naming the first field of p that is out of range. */
int mc_sample_params_check(const struct mc_sample_params *p, struct mc_err *err);

/* Validates params (MC_EINVAL naming the field) and allocates scratch for n_vocab. */
int mc_sampler_create(const struct mc_sample_params *p, int32_t n_vocab, struct mc_sampler **out,
                      struct mc_err *err);
void mc_sampler_free(struct mc_sampler *s);
/* Restarts the PRNG from seed and forgets the history. */
void mc_sampler_reset(struct mc_sampler *s, uint64_t seed);
/* Records a token for the penalties (prompt tokens and each sampled token). */
void mc_sampler_accept(struct mc_sampler *s, int32_t token);

/* Picks a token from logits (n_vocab floats, not modified). If lp is non-NULL it
 * receives the log-probability of the chosen token and lp_top (n_top entries, n_top may
 * be 0) the n_top most likely tokens, most likely first; both are taken from the
 * distribution after penalties and temperature (temperature 1 when greedy), before any
 * truncation, so exp of all logprobs over the vocabulary sums to 1. The chosen token is
 * not recorded: call mc_sampler_accept. */
int32_t mc_sampler_sample(struct mc_sampler *s, const float *logits, float *lp,
                          struct mc_logprob *lp_top, int32_t n_top);

/* Index of the largest value; the lowest index wins ties. */
int32_t mc_argmax(const float *x, int32_t n);

/* The PRNG (xoshiro256**, seeded through splitmix64), exposed for tests. */
struct mc_rng {
    uint64_t s[4];
};
void mc_rng_seed(struct mc_rng *r, uint64_t seed);
uint64_t mc_rng_next(struct mc_rng *r);
double mc_rng_uniform(struct mc_rng *r); /* [0, 1), 53 bits */

#endif
