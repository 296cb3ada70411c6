/* bench_matmul.c - throughput of mc_matmul per weight type, against the memory bandwidth
 * measured in the same run.
 *
 * Table 1, matvec from memory: one-token products (decoding) with the shapes of a
 * 768-wide model (768x768 and 2048x768), sweeping 128 MiB of copies of the matrix so the
 * weights come from memory, not cache; GB/s of weights read (mean of a sweep and fastest
 * single call) as a fraction of the read bandwidth (best read-sum pass, same threads).
 * Table 2, compute: the 2048x768 product on one thread with the matrix in cache, timed
 * in thread CPU time (so other processes on a shared machine do not count), for each
 * kernel set the CPU has: one token (GB/s of weights) and 128 tokens (GMAC/s); then the
 * 128-token product with the pool, wall clock (prompt processing).
 * Usage: bench_matmul [THREADS] (default 2). About 15 s. Not a test: nothing asserted. */
#include "base/pool.h"
#include "model/quant.h"

#include "bench_bw.h"

#include <stdbool.h>
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

/* ---- Matrices ----------------------------------------------------------------------- */

static uint32_t rng = 12345;

static float frand(void) {
    rng = rng * 1664525u + 1013904223u;
    return ((float)(rng >> 8) / 16777216.0f - 0.5f) * 0.1f;
}

/* n_copies copies of one random (rows, cols) matrix of type t, back to back, packed if
 * asked. */
static uint8_t *make_copies(enum mc_type t, bool packed, int64_t rows, int64_t cols, int n_copies) {
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
    if (packed) {
        /* Timing unpacked bytes with the packed kernel would be a wrong figure. */
        uint8_t *src = malloc(mat);
        if (!src) {
            free(row);
            free(w);
            return NULL;
        }
        memcpy(src, w, mat);
        mc_pack_rows(t, src, w, rows, cols, NULL);
        free(src);
    }
    for (int k = 1; k < n_copies; k++)
        memcpy(w + mat * (size_t)k, w, mat);
    free(row);
    return w;
}

struct run {
    enum mc_type t;
    bool packed; /* w in the packed layout (quant.h) */
    const uint8_t *w;
    int64_t rows, cols;
    const float *x;
    float *y;
    void *work;
    struct mc_pool *pool;
};

static void matmul(const struct run *r, const uint8_t *w, int64_t n_tok, struct mc_pool *pool) {
    if (r->packed)
        mc_matmul_packed(r->t, w, r->rows, r->cols, r->x, n_tok, r->y, r->work, pool, NULL);
    else
        mc_matmul(r->t, w, r->rows, r->cols, r->x, n_tok, r->y, r->work, pool, NULL);
}

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
            matmul(r, r->w + mat * (size_t)k, 1, r->pool);
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
            matmul(r, r->w, n_tok, NULL);
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
        matmul(r, r->w, n_tok, r->pool);
        double dt = now_s() - t0;
        best = dt < best ? dt : best;
    }
    return best;
}

/* Table 1: one-token products sweeping copies of the matrix (weights from memory); GB/s
 * of the mean and fastest call for each shape go to gbs[shape][0..1]. */
static void bench_memory(enum mc_type t, struct run *r, double gbs[2][2]) {
    static const int64_t SHAPES[2][2] = {{768, 768}, {2048, 768}};
    for (int s = 0; s < 2; s++) {
        r->t = t;
        r->rows = SHAPES[s][0];
        r->cols = SHAPES[s][1];
        size_t mat = mc_type_row_size(t, r->cols) * (size_t)r->rows;
        int n_copies = (int)(SWEEP_BYTES / mat) + 1;
        uint8_t *w = make_copies(t, r->packed, r->rows, r->cols, n_copies);
        if (!w)
            return;
        r->w = w;
        double mean;
        double best = time_sweep(r, n_copies, &mean);
        gbs[s][0] = mat / mean / 1e9;
        gbs[s][1] = mat / best / 1e9;
        free(w);
    }
}

/* Table 2: compute speed of each kernel set on one thread (CPU time, matrix in L2), and
 * the 128-token product with the pool (wall clock). */
static void bench_compute(enum mc_type t, struct run *r, enum mc_simd top) {
    r->t = t;
    r->rows = 2048;
    r->cols = 768;
    uint8_t *w = make_copies(t, r->packed, r->rows, r->cols, 1);
    if (!w)
        return;
    r->w = w;
    size_t mat = mc_type_row_size(t, r->cols) * (size_t)r->rows;
    double macs = (double)r->rows * (double)r->cols * NTOK;
    printf("%-4s%-1s", mc_type_name(t), r->packed ? "p" : "");
    for (int level = 0; level <= 2; level++) {
        if (level > (int)top) {
            printf(" %8s", "-");
            continue;
        }
        mc_simd_set((enum mc_simd)level);
        printf(" %8.1f", mat / time_cpu(r, 1, level ? 20 : 2) / 1e9);
    }
    printf(" |");
    for (int level = 0; level <= 2; level++) {
        if (level > (int)top) {
            printf(" %8s", "-");
            continue;
        }
        mc_simd_set((enum mc_simd)level);
        printf(" %8.1f", macs / time_cpu(r, NTOK, 1) / 1e9);
    }
    mc_simd_set(top);
    printf(" | %8.1f\n", macs / time_wall(r, NTOK, 7) / 1e9);
    free(w);
}

int main(int argc, char **argv) {
    int n_threads = argc > 1 ? atoi(argv[1]) : 2;
    struct mc_pool *pool = NULL;
    if (mc_pool_create(n_threads, &pool, NULL) != MC_OK)
        return 1;
    static const char *SIMD_NAMES[] = {"portable", "avx2", "avx512"};
    enum mc_simd simd = mc_simd_detect();
    /* Q8_0 and Q4_0 twice: GGUF rows, then packed rows ("p", what the model runs with
     * where the AVX-512 set is in use). */
    static const enum mc_type TYPES[] = {MC_TYPE_F32,  MC_TYPE_F16,  MC_TYPE_BF16, MC_TYPE_Q8_0,
                                         MC_TYPE_Q4_0, MC_TYPE_Q8_0, MC_TYPE_Q4_0, MC_TYPE_Q4_K,
                                         MC_TYPE_Q5_K, MC_TYPE_Q6_K};
    static const bool PACKED[] = {false, false, false, false, false,
                                  true,  true,  false, false, false};
    struct run r = {.pool = pool};
    float *x = malloc(sizeof(float) * NTOK * 2048);
    r.y = malloc(sizeof(float) * NTOK * 2048);
    r.work = malloc(mc_matmul_work_size(MC_TYPE_Q8_0, 2048, NTOK));
    if (!x || !r.y || !r.work)
        return 1;
    for (int i = 0; i < NTOK * 2048; i++)
        x[i] = frand() * 20;
    r.x = x;

    /* Bandwidth before and after the sweeps; the better one is the reference. */
    enum { N_TYPES = sizeof(TYPES) / sizeof(TYPES[0]) };
    double gbs[N_TYPES][2][2];
    double bw0 = bench_read_gbs(pool, SWEEP_BYTES);
    for (size_t k = 0; k < N_TYPES; k++) {
        r.packed = PACKED[k];
        bench_memory(TYPES[k], &r, gbs[k]);
    }
    double bw1 = bench_read_gbs(pool, SWEEP_BYTES);
    double bw = bw0 > bw1 ? bw0 : bw1;
    printf("threads %d, kernels %s, read bandwidth %.1f GB/s (%.1f before, %.1f after)\n\n",
           n_threads, SIMD_NAMES[simd], bw, bw0, bw1);
    printf("matvec from memory, %d threads, wall clock: GB/s (sweep mean, fastest call)\n",
           n_threads);
    printf("%-5s %-9s %8s %8s %7s\n", "type", "shape", "mean", "fastest", "of bw");
    for (size_t k = 0; k < N_TYPES; k++)
        for (int sh = 0; sh < 2; sh++)
            printf("%-4s%-1s %-9s %8.1f %8.1f %6.0f%%\n", mc_type_name(TYPES[k]),
                   PACKED[k] ? "p" : "", sh ? "2048x768" : "768x768", gbs[k][sh][0], gbs[k][sh][1],
                   100.0 * gbs[k][sh][1] / bw);
    printf("\n");

    printf("2048x768, one thread, thread CPU time, matrix in L2 | 128 tokens, %d threads, wall\n",
           n_threads);
    printf("%-5s %8s %8s %8s | %8s %8s %8s | %8s\n", "", "matvec", "GB/s", "", "128 tok", "GMAC/s",
           "", "GMAC/s");
    printf("%-5s %8s %8s %8s | %8s %8s %8s | %8s\n", "type", "portable", "avx2", "avx512",
           "portable", "avx2", "avx512", SIMD_NAMES[simd]);
    for (size_t k = 0; k < N_TYPES; k++) {
        r.packed = PACKED[k];
        bench_compute(TYPES[k], &r, simd);
    }
    free(x);
    free(r.y);
    free(r.work);
    mc_pool_free(pool);
    return 0;
}
