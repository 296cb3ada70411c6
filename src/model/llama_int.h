/* llama_int.h - kernels private to the forward pass (llama.c and llama_avx2.c). */
#ifndef MC_LLAMA_INT_H
#define MC_LLAMA_INT_H

#include <stdint.h>

/* Attention inner loops with AVX2/FMA; call only when mc_simd_get() >= MC_SIMD_AVX2.
 * dot: sum of a[i] * b[i]; axpy: y[i] += a * x[i]; i in [0, n). */
float mc_attn_dot_avx2(const float *a, const float *b, int32_t n);
void mc_attn_axpy_avx2(float *y, float a, const float *x, int32_t n);

#endif
