/* hnsw_avx2.c - AVX2 + FMA distance kernels for hnsw.c (see hnsw_int.h for the contract).
 *
 * Called only after hnsw.c has checked the CPU at run time. The target attribute lets the
 * file build whatever flags the including build uses (the fuzz build, for one). Two
 * accumulators per kernel hide the FMA latency. Does not handle n % 16 != 0. */
#include "rag/hnsw_int.h"

#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2 float hnsw_l2_avx2(const float *a, const float *b, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
        __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        s0 = _mm256_fmadd_ps(d0, d0, s0);
        s1 = _mm256_fmadd_ps(d1, d1, s1);
    }
    return hsum256(_mm256_add_ps(s0, s1));
}

AVX2 float hnsw_l2_bounded_avx2(const float *a, const float *b, size_t n, float bound) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    while (i < n) {
        size_t end = i + HNSW_BOUND_BLOCK < n ? i + HNSW_BOUND_BLOCK : n;
        for (; i < end; i += 16) {
            __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
            __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
            s0 = _mm256_fmadd_ps(d0, d0, s0);
            s1 = _mm256_fmadd_ps(d1, d1, s1);
        }
        float partial = hsum256(_mm256_add_ps(s0, s1));
        if (partial > bound || i >= n)
            return partial;
    }
    return 0.0f;
}

AVX2 float hnsw_dot_avx2(const float *a, const float *b, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    return hsum256(_mm256_add_ps(s0, s1));
}
