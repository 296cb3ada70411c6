/* bench_matmul.c - throughput of mc_matmul per weight type, against the memory bandwidth
 * measured in the same run.
 *
 * For each type: matrix-vector products (one token, as in decoding) over the shapes of
 * a 768-wide model (768x768 and 2048x768), cycling through enough copies of the matrix
 * that the weights come from memory rather than cache, so GB/s of weights read can be
 * compared with the read bandwidth; and a 128-token matrix-matrix product (prompt
 * processing) of 2048x768, reported in GMAC/s. Each SIMD figure is shown with the
 * portable kernel's for the ratio. Usage: bench_matmul [THREADS] (default 2). Runs in
 * about 20 s; not a test, nothing is asserted. */
#include "base/pool.h"
#include "model/quant.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { COPY_BYTES = 128 << 20 }; /* weights swept per pass: well beyond the 32 MiB L3 */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- Memory bandwidth --------------------------------------------------------------- */

struct bw_job {
    const uint64_t *buf;
    size_t n;
    uint64_t sums[64];
};

static void bw_read_part(void *ctx, int i, int n) {
    struct bw_job *j = ctx;
    size_t lo = j->n * (size_t)i / (size_t)n, hi = j->n * (size_t)(i + 1) / (size_t)n;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t k = lo; k + 4 <= hi; k += 4) {
        s0 += j->buf[k];
        s1 += j->buf[k + 1];
        s2 += j->buf[k + 2];
        s3 += j->buf[k + 3];
    }
    j->sums[i & 63] = s0 + s1 + s2 + s3;
}

/* Best of five read-sum passes over COPY_BYTES, split across the pool. */
static double measure_read_gbs(struct mc_pool *pool) {
    struct bw_job job = {.n = COPY_BYTES / 8};
    uint64_t *buf = malloc(COPY_BYTES);
    if (!buf)
        return 0;
    for (size_t k = 0; k < job.n; k++)
        buf[k] = k;
    job.buf = buf;
    double best = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_s();
        mc_pool_run(pool, bw_read_part, &job);
        double dt = now_s() - t0;
        best = dt < best ? dt : best;
    }
    free(buf);
    return COPY_BYTES / best / 1e9;
}

/* ---- Matrices ----------------------------------------------------------------------- */

static uint32_t rng = 12345;

static float frand(void) {
    rng = rng * 1664525u + 1013904223u;
    return ((float)(rng >> 8) / 16777216.0f - 0.5f) * 0.1f;
}

/* n_copies copies of one (rows, cols) matrix of type t, back to back. */
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

/* Seconds per matrix-vector product, sweeping the copies (best of 5 sweeps). */
static double time_matvec(enum mc_type t, const uint8_t *w, int n_copies, int64_t rows,
                          int64_t cols, const float *x, float *y, void *work,
                          struct mc_pool *pool, int max_calls) {
    size_t mat = mc_type_row_size(t, cols) * (size_t)rows;
    int n = n_copies < max_calls ? n_copies : max_calls;
    double best = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_s();
        for (int k = 0; k < n; k++)
            mc_matmul(t, w + mat * (size_t)k, rows, cols, x, 1, y, work, pool, NULL);
        double dt = (now_s() - t0) / n;
        best = dt < best ? dt : best;
    }
    return best;
}

static double time_matmul(enum mc_type t, const uint8_t *w, int64_t rows, int64_t cols,
                          const float *x, int64_t n_tok, float *y, void *work,
                          struct mc_pool *pool, int reps) {
    double best = 1e9;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now_s();
        mc_matmul(t, w, rows, cols, x, n_tok, y, work, pool, NULL);
        double dt = now_s() - t0;
        best = dt < best ? dt : best;
    }
    return best;
}

int main(int argc, char **argv) {
    int n_threads = argc > 1 ? atoi(argv[1]) : 2;
    struct mc_pool *pool = NULL;
    if (mc_pool_create(n_threads, &pool, NULL) != MC_OK)
        return 1;
    static const char *SIMD_NAMES[] = {"portable", "avx2", "avx512"};
    enum mc_simd best = mc_simd_detect();
    double bw = measure_read_gbs(pool);
    printf("threads %d, kernels %s, memory read bandwidth %.1f GB/s\n\n", n_threads,
           SIMD_NAMES[best], bw);

    static const enum mc_type TYPES[] = {MC_TYPE_F32, MC_TYPE_F16, MC_TYPE_BF16, MC_TYPE_Q8_0,
                                         MC_TYPE_Q4_0, MC_TYPE_Q4_K, MC_TYPE_Q5_K, MC_TYPE_Q6_K};
    static const int64_t SHAPES[2][2] = {{768, 768}, {2048, 768}};
    enum { NTOK = 128 };
    float *x = malloc(sizeof(float) * NTOK * 2048);
    float *y = malloc(sizeof(float) * NTOK * 2048);
    void *work = malloc(mc_matmul_work_size(MC_TYPE_F16, 2048, NTOK));
    for (int i = 0; i < NTOK * 2048; i++)
        x[i] = frand() * 20;

    printf("%-5s %-9s %9s %9s %6s %7s | %-22s %9s %9s %6s\n", "type", "matvec", "port GB/s",
           "simd GB/s", "ratio", "of bw", "matmul 128 tok", "port GMAC", "simd GMAC", "ratio");
    for (size_t k = 0; k < sizeof(TYPES) / sizeof(TYPES[0]); k++) {
        enum mc_type t = TYPES[k];
        for (int s = 0; s < 2; s++) {
            int64_t rows = SHAPES[s][0], cols = SHAPES[s][1];
            size_t mat = mc_type_row_size(t, cols) * (size_t)rows;
            int n_copies = (int)(COPY_BYTES / mat) + 1;
            uint8_t *w = make_copies(t, rows, cols, n_copies);
            if (!w)
                return 1;

            mc_simd_set(MC_SIMD_PORTABLE);
            double tp = time_matvec(t, w, n_copies, rows, cols, x, y, work, pool, 40);
            mc_simd_set(best);
            double ts = time_matvec(t, w, n_copies, rows, cols, x, y, work, pool, 1 << 30);
            printf("%-5s %4lldx%-4lld %9.1f %9.1f %6.1f %6.0f%% |", mc_type_name(t),
                   (long long)rows, (long long)cols, mat / tp / 1e9, mat / ts / 1e9, tp / ts,
                   100.0 * mat / ts / 1e9 / bw);

            if (s == 1) {
                double macs = (double)rows * cols * NTOK;
                mc_simd_set(MC_SIMD_PORTABLE);
                double mp = time_matmul(t, w, rows, cols, x, NTOK, y, work, pool, 1);
                mc_simd_set(best);
                double ms = time_matmul(t, w, rows, cols, x, NTOK, y, work, pool, 5);
                printf(" %4lldx%-4lld x %3d tok  %9.1f %9.1f %6.1f\n", (long long)rows,
                       (long long)cols, NTOK, macs / mp / 1e9, macs / ms / 1e9, mp / ms);
            } else {
                printf("\n");
            }
            free(w);
        }
    }
    free(x);
    free(y);
    free(work);
    mc_pool_free(pool);
    return 0;
}
