/* sample.c - token samplers (see sample.h): penalties, greedy, top-k, top-p, min-p,
 * temperature, a seeded draw, and logprobs.
 *
 * Filters follow the reference implementation's common order (top-k, top-p, min-p,
 * then temperature), each computing probabilities over the candidates left by the step
 * before. Candidates are kept sorted by logit descending, ties by lower id, so results
 * do not depend on sort stability. Without top-k the min-p cut is applied before sorting
 * (both cuts keep a prefix of the sorted list, so the order of the two does not change
 * the result) to avoid sorting the whole vocabulary at every step. All scratch is
 * allocated at creation; sampling allocates nothing. Not here: grammar constraints,
 * mirostat, typical-p, DRY. */
#include "model/sample.h"

#include "base/mem.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct cand {
    int32_t id;
    float logit;
};

struct mc_sampler {
    struct mc_sample_params p;
    int32_t n_vocab;
    struct mc_rng rng;
    float *work;        /* (n_vocab) logits after penalties */
    struct cand *cands; /* (n_vocab) candidates */
    int32_t *counts;    /* (n_vocab) occurrences in the window, zero between calls */
    int32_t *hist;      /* (repeat_last_n) ring of recent tokens */
    int32_t n_hist;
    int32_t hist_pos;
};

struct mc_sample_params mc_sample_params_default(void) {
    struct mc_sample_params p = {
        .temp = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.0f,
        .repeat_last_n = 64,
        .freq_penalty = 0.0f,
        .presence_penalty = 0.0f,
        .seed = 0,
    };
    return p;
}

/* ---- PRNG ---------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void mc_rng_seed(struct mc_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

uint64_t mc_rng_next(struct mc_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double mc_rng_uniform(struct mc_rng *r) {
    return (double)(mc_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- Creation ------------------------------------------------------------------ */

int mc_sample_params_check(const struct mc_sample_params *p, struct mc_err *err) {
    if (!(p->temp >= 0.0f || p->temp < 0.0f))
        return mc_err_set(err, MC_EINVAL, "temperature is not a number");
    if (!(p->top_p >= 0.0f && p->top_p <= 1.0f))
        return mc_err_set(err, MC_EINVAL, "top_p %g is out of range 0..1", p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return mc_err_set(err, MC_EINVAL, "min_p %g is out of range 0..1", p->min_p);
    if (!(p->repeat_penalty > 0.0f && p->repeat_penalty <= 100.0f))
        return mc_err_set(err, MC_EINVAL, "repeat_penalty %g is out of range (0, 100]",
                          p->repeat_penalty);
    if (p->repeat_last_n < 0 || p->repeat_last_n > (1 << 20))
        return mc_err_set(err, MC_EINVAL, "repeat_last_n %d is out of range 0..%d",
                          p->repeat_last_n, 1 << 20);
    if (!(fabsf(p->freq_penalty) <= 100.0f && fabsf(p->presence_penalty) <= 100.0f))
        return mc_err_set(err, MC_EINVAL, "frequency/presence penalty is out of range -100..100");
    return MC_OK;
}

int mc_sampler_create(const struct mc_sample_params *p, int32_t n_vocab, struct mc_sampler **out,
                      struct mc_err *err) {
    *out = NULL;
    int rc = mc_sample_params_check(p, err);
    if (rc != MC_OK)
        return rc;
    if (n_vocab < 1)
        return mc_err_set(err, MC_EINVAL, "vocabulary size %d is not positive", n_vocab);
    struct mc_sampler *s = mc_calloc(1, sizeof(*s));
    if (!s)
        return mc_err_set(err, MC_ENOMEM, "sampler allocation failed");
    s->p = *p;
    s->n_vocab = n_vocab;
    s->work = mc_malloc((size_t)n_vocab * sizeof(float));
    s->cands = mc_malloc((size_t)n_vocab * sizeof(struct cand));
    s->counts = mc_calloc((size_t)n_vocab, sizeof(int32_t));
    s->hist = mc_malloc((size_t)(p->repeat_last_n > 0 ? p->repeat_last_n : 1) * sizeof(int32_t));
    if (!s->work || !s->cands || !s->counts || !s->hist) {
        mc_sampler_free(s);
        return mc_err_set(err, MC_ENOMEM, "sampler scratch for %d tokens: allocation failed",
                          n_vocab);
    }
    mc_rng_seed(&s->rng, p->seed);
    *out = s;
    return MC_OK;
}

void mc_sampler_free(struct mc_sampler *s) {
    if (!s)
        return;
    mc_free(s->work);
    mc_free(s->cands);
    mc_free(s->counts);
    mc_free(s->hist);
    mc_free(s);
}

void mc_sampler_reset(struct mc_sampler *s, uint64_t seed) {
    mc_rng_seed(&s->rng, seed);
    s->n_hist = 0;
    s->hist_pos = 0;
}

void mc_sampler_accept(struct mc_sampler *s, int32_t token) {
    if (s->p.repeat_last_n <= 0 || token < 0 || token >= s->n_vocab)
        return;
    s->hist[s->hist_pos] = token;
    s->hist_pos = (s->hist_pos + 1) % s->p.repeat_last_n;
    if (s->n_hist < s->p.repeat_last_n)
        s->n_hist++;
}

/* ---- Steps --------------------------------------------------------------------- */

int32_t mc_argmax(const float *x, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Repetition penalty as the reference applies it (divide positive logits, multiply
 * negative ones, once per distinct token), then count * frequency + presence. */
static void apply_penalties(struct mc_sampler *s) {
    const struct mc_sample_params *p = &s->p;
    if (s->n_hist == 0 ||
        (p->repeat_penalty == 1.0f && p->freq_penalty == 0.0f && p->presence_penalty == 0.0f))
        return;
    for (int32_t i = 0; i < s->n_hist; i++)
        s->counts[s->hist[i]]++;
    for (int32_t i = 0; i < s->n_hist; i++) {
        int32_t t = s->hist[i];
        int32_t c = s->counts[t];
        if (c == 0)
            continue; /* already done */
        float *l = &s->work[t];
        *l = *l <= 0.0f ? *l * p->repeat_penalty : *l / p->repeat_penalty;
        *l -= (float)c * p->freq_penalty + p->presence_penalty;
        s->counts[t] = 0;
    }
}

static bool cand_before(float la, int32_t ia, float lb, int32_t ib) {
    return la > lb || (la == lb && ia < ib);
}

static int cand_cmp(const void *a, const void *b) {
    const struct cand *x = a, *y = b;
    if (cand_before(x->logit, x->id, y->logit, y->id))
        return -1;
    return cand_before(y->logit, y->id, x->logit, x->id) ? 1 : 0;
}

/* The k best of x (n values) into out, sorted; returns how many (min(k, n)). Insertion
 * into a short sorted list: O(n) for the common case where few values beat the k-th. */
static int32_t select_top(const float *x, int32_t n, int32_t k, struct cand *out) {
    int32_t m = 0;
    if (k > n)
        k = n;
    for (int32_t i = 0; i < n; i++) {
        if (m == k && !cand_before(x[i], i, out[m - 1].logit, out[m - 1].id))
            continue;
        int32_t j = m < k ? m++ : m - 1;
        while (j > 0 && cand_before(x[i], i, out[j - 1].logit, out[j - 1].id)) {
            out[j] = out[j - 1];
            j--;
        }
        out[j].id = i;
        out[j].logit = x[i];
    }
    return m;
}

/* Sorted candidates after top-k and (without top-k) the min-p pre-cut. */
static int32_t gather(struct mc_sampler *s) {
    const struct mc_sample_params *p = &s->p;
    if (p->top_k > 0 && p->top_k < s->n_vocab)
        return select_top(s->work, s->n_vocab, p->top_k, s->cands);
    float max = s->work[mc_argmax(s->work, s->n_vocab)];
    float cut = p->min_p > 0.0f ? max + logf(p->min_p) : -INFINITY;
    int32_t m = 0;
    for (int32_t i = 0; i < s->n_vocab; i++) {
        if (s->work[i] >= cut) {
            s->cands[m].id = i;
            s->cands[m].logit = s->work[i];
            m++;
        }
    }
    qsort(s->cands, (size_t)m, sizeof(*s->cands), cand_cmp);
    return m;
}

/* Sum of exp(logit - max) over the set that the probabilities are normalised over: the
 * candidates after top-k, or the whole vocabulary without it. */
static double normaliser(const struct mc_sampler *s, int32_t m, float max) {
    double sum = 0.0;
    if (s->p.top_k > 0 && s->p.top_k < s->n_vocab) {
        for (int32_t i = 0; i < m; i++)
            sum += exp((double)s->cands[i].logit - max);
    } else {
        for (int32_t i = 0; i < s->n_vocab; i++)
            sum += exp((double)s->work[i] - max);
    }
    return sum;
}

/* top-p then min-p on the sorted candidates; returns how many remain (>= 1). */
static int32_t cut_p(const struct mc_sampler *s, int32_t m) {
    const struct mc_sample_params *p = &s->p;
    float max = s->cands[0].logit;
    if (p->top_p < 1.0f) {
        double sum = normaliser(s, m, max), cum = 0.0;
        for (int32_t i = 0; i < m; i++) {
            cum += exp((double)s->cands[i].logit - max) / sum;
            if (cum >= p->top_p) {
                m = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0.0f) {
        float cut = max + logf(p->min_p);
        int32_t keep = 1;
        while (keep < m && s->cands[keep].logit >= cut)
            keep++;
        m = keep;
    }
    return m;
}

/* Temperature and a draw from softmax over the m candidates. */
static int32_t draw(struct mc_sampler *s, int32_t m) {
    double inv_t = 1.0 / s->p.temp, sum = 0.0;
    float max = s->cands[0].logit;
    for (int32_t i = 0; i < m; i++)
        sum += exp(((double)s->cands[i].logit - max) * inv_t);
    double u = mc_rng_uniform(&s->rng) * sum, cum = 0.0;
    for (int32_t i = 0; i < m; i++) {
        cum += exp(((double)s->cands[i].logit - max) * inv_t);
        if (u < cum)
            return s->cands[i].id;
    }
    return s->cands[m - 1].id;
}

static void logprobs(struct mc_sampler *s, int32_t id, float *lp, struct mc_logprob *top,
                     int32_t n_top) {
    double inv_t = s->p.temp > 0.0f ? 1.0 / s->p.temp : 1.0;
    float max = s->work[mc_argmax(s->work, s->n_vocab)];
    double sum = 0.0;
    for (int32_t i = 0; i < s->n_vocab; i++)
        sum += exp(((double)s->work[i] - max) * inv_t);
    double lse = log(sum);
    *lp = (float)(((double)s->work[id] - max) * inv_t - lse);
    if (!top || n_top <= 0)
        return;
    int32_t m = select_top(s->work, s->n_vocab, n_top, s->cands);
    for (int32_t i = 0; i < n_top; i++) {
        top[i].id = i < m ? s->cands[i].id : -1;
        top[i].logprob =
            i < m ? (float)(((double)s->cands[i].logit - max) * inv_t - lse) : -INFINITY;
    }
}

int32_t mc_sampler_sample(struct mc_sampler *s, const float *logits, float *lp,
                          struct mc_logprob *lp_top, int32_t n_top) {
    memcpy(s->work, logits, (size_t)s->n_vocab * sizeof(float));
    apply_penalties(s);

    int32_t id;
    if (s->p.temp <= 0.0f) {
        id = mc_argmax(s->work, s->n_vocab);
    } else {
        int32_t m = gather(s);
        /* No candidate survives only when every logit is NaN; fall back to argmax. */
        id = m > 0 ? draw(s, cut_p(s, m)) : mc_argmax(s->work, s->n_vocab);
    }
    if (lp)
        logprobs(s, id, lp, lp_top, n_top);
    return id;
}
