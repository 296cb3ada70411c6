/* bench_bw.h - the read-bandwidth probe the benchmarks put beside their figures: best of
 * seven passes reading `bytes` (several times the L3 cache), split across a pool's
 * threads. Header-only, for the programs in bench/. */
#ifndef BENCH_BW_H
#define BENCH_BW_H

#include "base/pool.h"

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

struct bench_bw_job {
    const uint64_t *buf;
    size_t n;
    uint64_t sums[256];
};

/* Eight independent sums so the loop is limited by loads, not by add latency; built
 * for AVX2 (32-byte loads) when the CPU has it, since narrower loads cannot saturate
 * the memory system from two cores. */
#define BENCH_BW_LOOP(NAME, ATTR)                                                                  \
    ATTR static uint64_t NAME(const uint64_t *buf, size_t lo, size_t hi) {                         \
        uint64_t s[8] = {0};                                                                       \
        for (size_t k = lo; k < hi; k += 8)                                                        \
            for (int l = 0; l < 8; l++)                                                            \
                s[l] += buf[k + l];                                                                \
        return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];                              \
    }
BENCH_BW_LOOP(bench_sum_plain, )
BENCH_BW_LOOP(bench_sum_avx2, __attribute__((target("avx2"), optimize("tree-vectorize"))))

static void bench_bw_part(void *ctx, int i, int n) {
    struct bench_bw_job *j = ctx;
    size_t lo = j->n * (size_t)i / (size_t)n / 8 * 8;
    size_t hi = j->n * (size_t)(i + 1) / (size_t)n / 8 * 8;
    j->sums[i & 255] = __builtin_cpu_supports("avx2") ? bench_sum_avx2(j->buf, lo, hi)
                                                      : bench_sum_plain(j->buf, lo, hi);
}

static double bench_bw_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* GB/s of the best pass; 0 if the buffer cannot be allocated. */
static double bench_read_gbs(struct mc_pool *pool, size_t bytes) {
    struct bench_bw_job job = {.n = bytes / 8};
    uint64_t *buf = malloc(bytes);
    if (!buf)
        return 0;
    for (size_t k = 0; k < job.n; k++)
        buf[k] = k;
    job.buf = buf;
    double best = 1e9;
    for (int rep = 0; rep < 7; rep++) {
        double t0 = bench_bw_now();
        mc_pool_run(pool, bench_bw_part, &job);
        double dt = bench_bw_now() - t0;
        best = dt < best ? dt : best;
    }
    free(buf);
    return (double)bytes / best / 1e9;
}

#endif
