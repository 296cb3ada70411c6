/* hnsw_avx512.c - AVX-512F distance kernels for hnsw.c (see hnsw_int.h for the contract).
 *
 * Called only after hnsw.c has checked the CPU at run time. The target attribute lets the
 * file build whatever flags the including build uses. Two accumulators of 16 lanes each
 * hide the FMA latency. Does not handle n % 16 != 0. */
#include "rag/hnsw_int.h"

#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f,avx2,fma")))

AVX512 float hnsw_l2_avx512(const float *a, const float *b, size_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
        s0 = _mm512_fmadd_ps(d0, d0, s0);
        s1 = _mm512_fmadd_ps(d1, d1, s1);
    }
    if (i < n) {
        __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        s0 = _mm512_fmadd_ps(d0, d0, s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

AVX512 float hnsw_l2_bounded_avx512(const float *a, const float *b, size_t n, float bound) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    while (i < n) {
        size_t end = i + HNSW_BOUND_BLOCK < n ? i + HNSW_BOUND_BLOCK : n;
        for (; i + 32 <= end; i += 32) {
            __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
            __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
            s0 = _mm512_fmadd_ps(d0, d0, s0);
            s1 = _mm512_fmadd_ps(d1, d1, s1);
        }
        if (i < end) {
            __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
            s0 = _mm512_fmadd_ps(d0, d0, s0);
            i += 16;
        }
        float partial = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
        if (partial > bound || i >= n)
            return partial;
    }
    return 0.0f;
}

AVX512 float hnsw_dot_avx512(const float *a, const float *b, size_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    if (i < n)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}
