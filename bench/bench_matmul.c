/* bench_matmul.c - throughput of mc_matmul per weight type, against the memory bandwidth
 * measured in the same run.
 *
 * For each type:
 *  - matvec: one-token products (decoding) with the shapes of a 768-wide model (768x768
 *    and 2048x768), sweeping enough copies of the matrix (128 MiB) that the weights come
 *    from memory, not cache; GB/s of weights read, as a fraction of the read bandwidth.
 *  - kernel: the same 2048x768 product on one thread with the matrix in L2 (compute
 *    only, timed in thread CPU time so other processes on a shared machine do not
 *    count); SIMD against portable.
 *  - matmul: 128 tokens x 2048x768 (prompt processing), GMAC/s.
 * Wall-clock figures are the best of several runs (see time_sweep). Usage: bench_matmul [THREADS]
 * (default 2). Runs in about 15 s. Not a test: nothing is asserted. */
#include "base/pool.h"
#include "model/quant.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { SWEEP_BYTES = 128 << 20 }; /* weights swept per pass: four times the 32 MiB L3 */
enum { NTOK = 128 };

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now_s(void) {
    return clock_s(CLOCK_MONOTONIC);
}

/* ---- Memory bandwidth --------------------------------------------------------------- */

struct bw_job {
    const uint64_t *buf;
    size_t n;
    uint64_t sums[256];
};

/* Eight independent sums so the loop is limited by loads, not by add latency; built
 * for AVX2 (32-byte loads) when the CPU has it, since narrower loads cannot saturate
 * the memory system from two cores. */
#define BW_LOOP(NAME, ATTR)                                                                        \
    ATTR static uint64_t NAME(const uint64_t *buf, size_t lo, size_t hi) {                        \
        uint64_t s[8] = {0};                                                                       \
        for (size_t k = lo; k < hi; k += 8)                                                        \
            for (int l = 0; l < 8; l++)                                                            \
                s[l] += buf[k + l];                                                                \
        return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];                              \
    }
BW_LOOP(sum_plain, )
BW_LOOP(sum_avx2, __attribute__((target("avx2"), optimize("tree-vectorize"))))

static void bw_read_part(void *ctx, int i, int n) {
    struct bw_job *j = ctx;
    size_t lo = j->n * (size_t)i / (size_t)n / 8 * 8;
    size_t hi = j->n * (size_t)(i + 1) / (size_t)n / 8 * 8;
    j->sums[i & 255] = __builtin_cpu_supports("avx2") ? sum_avx2(j->buf, lo, hi)
                                                      : sum_plain(j->buf, lo, hi);
}

/* Best of seven read passes over SWEEP_BYTES, split across the pool. */
static double measure_read_gbs(struct mc_pool *pool) {
    struct bw_job job = {.n = SWEEP_BYTES / 8};
    uint64_t *buf = malloc(SWEEP_BYTES);
    if (!buf)
        return 0;
    for (size_t k = 0; k < job.n; k++)
        buf[k] = k;
    job.buf = buf;
    double best = 1e9;
    for (int rep = 0; rep < 7; rep++) {
        double t0 = now_s();
        mc_pool_run(pool, bw_read_part, &job);
        double dt = now_s() - t0;
        best = dt < best ? dt : best;
    }
    free(buf);
    return SWEEP_BYTES / best / 1e9;
}

/* ---- Matrices ----------------------------------------------------------------------- */

static uint32_t rng = 12345;

static float frand(void) {
    rng = rng * 1664525u + 1013904223u;
    return ((float)(rng >> 8) / 16777216.0f - 0.5f) * 0.1f;
}

/* n_copies copies of one random (rows, cols) matrix of type t, back to back. */
static uint8_t *make_copies(enum mc_type t, int64_t rows, int64_t cols, int n_copies) {
    size_t rs = mc_type_row_size(t, cols), mat = rs * (size_t)rows;
    uint8_t *w = malloc(mat * (size_t)n_copies);
    float *row = malloc((size_t)cols * sizeof(float));
    if (!w || !row) {
        free(w);
        free(row);
        return NULL;
    }
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++)
            row[c] = frand();
        mc_quantize_row(t, row, w + (size_t)r * rs, cols, NULL);
    }
    for (int k = 1; k < n_copies; k++)
        memcpy(w + mat * (size_t)k, w, mat);
    free(row);
    return w;
}

struct run {
    enum mc_type t;
    const uint8_t *w;
    int64_t rows, cols;
    const float *x;
    float *y;
    void *work;
    struct mc_pool *pool;
};

/* Seconds per one-token product while sweeping n matrices: the fastest single call over
 * five sweeps (*mean gets the mean of the best sweep). On a machine shared with other
 * work the fastest call is the one that ran uncontended, like the best bandwidth pass. */
static double time_sweep(const struct run *r, int n, double *mean) {
    size_t mat = mc_type_row_size(r->t, r->cols) * (size_t)r->rows;
    double best = 1e9;
    *mean = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_s(), prev = t0;
        for (int k = 0; k < n; k++) {
            mc_matmul(r->t, r->w + mat * (size_t)k, r->rows, r->cols, r->x, 1, r->y, r->work,
                      r->pool, NULL);
            double t = now_s();
            best = t - prev < best ? t - prev : best;
            prev = t;
        }
        double m = (prev - t0) / n;
        *mean = m < *mean ? m : *mean;
    }
    return best;
}

/* Thread CPU seconds per call of n_tok tokens on one matrix, no pool (best of five). */
static double time_cpu(const struct run *r, int64_t n_tok, int calls) {
    double best = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
        for (int k = 0; k < calls; k++)
            mc_matmul(r->t, r->w, r->rows, r->cols, r->x, n_tok, r->y, r->work, NULL, NULL);
        double dt = (clock_s(CLOCK_THREAD_CPUTIME_ID) - t0) / calls;
        best = dt < best ? dt : best;
    }
    return best;
}

/* Wall seconds per n_tok-token call with the pool (best of reps). */
static double time_wall(const struct run *r, int64_t n_tok, int reps) {
    double best = 1e9;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now_s();
        mc_matmul(r->t, r->w, r->rows, r->cols, r->x, n_tok, r->y, r->work, r->pool, NULL);
        double dt = now_s() - t0;
        best = dt < best ? dt : best;
    }
    return best;
}

static void bench_type(enum mc_type t, struct run *r, double bw, enum mc_simd simd) {
    static const int64_t SHAPES[2][2] = {{768, 768}, {2048, 768}};
    for (int s = 0; s < 2; s++) {
        r->t = t;
        r->rows = SHAPES[s][0];
        r->cols = SHAPES[s][1];
        size_t mat = mc_type_row_size(t, r->cols) * (size_t)r->rows;
        int n_copies = (int)(SWEEP_BYTES / mat) + 1;
        uint8_t *w = make_copies(t, r->rows, r->cols, n_copies);
        if (!w)
            return;
        r->w = w;
        mc_simd_set(simd);
        double mean;
        double ts = time_sweep(r, n_copies, &mean);
        printf("%-5s %4lldx%-4lld %7.1f %7.1f %5.0f%% |", mc_type_name(t), (long long)r->rows,
               (long long)r->cols, mat / mean / 1e9, mat / ts / 1e9, 100.0 * mat / ts / 1e9 / bw);
        if (s == 0) {
            printf("\n");
            free(w);
            continue;
        }

        /* Compute-only comparison on one thread, then the 128-token product. */
        mc_simd_set(MC_SIMD_PORTABLE);
        double cp = time_cpu(r, 1, 2);
        mc_simd_set(simd);
        double cs = time_cpu(r, 1, 20);
        double macs = (double)r->rows * (double)r->cols * NTOK;
        mc_simd_set(MC_SIMD_PORTABLE);
        double mp = time_cpu(r, NTOK, 1);
        mc_simd_set(simd);
        double ms = time_wall(r, NTOK, 7);
        printf(" %7.1f %7.1f %6.1f | %8.1f %8.1f %6.1f\n", mat / cp / 1e9, mat / cs / 1e9,
               cp / cs, macs / mp / 1e9, macs / ms / 1e9, mp / ms);
        free(w);
    }
}

int main(int argc, char **argv) {
    int n_threads = argc > 1 ? atoi(argv[1]) : 2;
    struct mc_pool *pool = NULL;
    if (mc_pool_create(n_threads, &pool, NULL) != MC_OK)
        return 1;
    static const char *SIMD_NAMES[] = {"portable", "avx2", "avx512"};
    enum mc_simd simd = mc_simd_detect();
    double bw = measure_read_gbs(pool);
    printf("threads %d, kernels %s, memory read bandwidth %.1f GB/s (%d threads)\n\n", n_threads,
           SIMD_NAMES[simd], bw, n_threads);
    printf("%-5s %-9s %-22s | %-22s | %s\n", "", "", "matvec GB/s", "kernel 1 thread GB/s",
           "matmul 128 tok GMAC/s");
    printf("%-5s %-9s %7s %7s %6s | %7s %7s %6s | %8s %8s %6s\n", "type", "shape", "mean", "best",
           "of bw", "port", "simd", "ratio", "port 1t", "simd", "ratio");

    static const enum mc_type TYPES[] = {MC_TYPE_F32, MC_TYPE_F16, MC_TYPE_BF16, MC_TYPE_Q8_0,
                                         MC_TYPE_Q4_0, MC_TYPE_Q4_K, MC_TYPE_Q5_K, MC_TYPE_Q6_K};
    struct run r = {.pool = pool};
    float *x = malloc(sizeof(float) * NTOK * 2048);
    r.y = malloc(sizeof(float) * NTOK * 2048);
    r.work = malloc(mc_matmul_work_size(MC_TYPE_Q8_0, 2048, NTOK));
    if (!x || !r.y || !r.work)
        return 1;
    for (int i = 0; i < NTOK * 2048; i++)
        x[i] = frand() * 20;
    r.x = x;
    for (size_t k = 0; k < sizeof(TYPES) / sizeof(TYPES[0]); k++)
        bench_type(TYPES[k], &r, bw, simd);
    double bw_end = measure_read_gbs(pool);
    printf("\nmemory read bandwidth measured again at the end: %.1f GB/s\n", bw_end);
    printf("matvec: wall clock, %d threads, weights from memory; mean of a sweep and fastest "
           "single call (of bw uses the fastest).\nkernel: thread CPU time, matrix in L2.\nmatmul: simd is wall clock with %d threads; port 1t is one thread's "
           "CPU time, so the ratio includes the thread count.\n", n_threads, n_threads);
    free(x);
    free(r.y);
    free(r.work);
    mc_pool_free(pool);
    return 0;
}
