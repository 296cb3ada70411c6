/* hnsw_int.h - distance kernels shared by hnsw.c and its SIMD variants (hnsw_avx2.c,
 * hnsw_avx512.c). Not for other modules.
 *
 * Every kernel takes vectors padded with zeros to a multiple of 16 floats (n % 16 == 0),
 * so no kernel has a scalar tail. The bounded L2 kernels stop early and return a value
 * above bound once a partial sum passes it: squared differences only add up, so the
 * full distance would be above bound too and the caller rejects the item either way. */
#ifndef MC_HNSW_INT_H
#define MC_HNSW_INT_H

#include <stddef.h>

/* Block of floats between two early-exit checks in the bounded kernels. */
#define HNSW_BOUND_BLOCK 128

float hnsw_l2_scalar(const float *a, const float *b, size_t n);
float hnsw_l2_bounded_scalar(const float *a, const float *b, size_t n, float bound);
float hnsw_dot_scalar(const float *a, const float *b, size_t n);

float hnsw_l2_avx2(const float *a, const float *b, size_t n);
float hnsw_l2_bounded_avx2(const float *a, const float *b, size_t n, float bound);
float hnsw_dot_avx2(const float *a, const float *b, size_t n);

float hnsw_l2_avx512(const float *a, const float *b, size_t n);
float hnsw_l2_bounded_avx512(const float *a, const float *b, size_t n, float bound);
float hnsw_dot_avx512(const float *a, const float *b, size_t n);

#endif
