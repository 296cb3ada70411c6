/* lora_avx512.c - AVX-512 kernels of the LoRA projection hook for Q8_0 adapters; F32
 * and F16 go to the AVX2 ones (lora_avx2.c), which AVX-512 versions did not beat.
 *
 * Compiled with AVX-512 and only called after mc_simd_get() reported it. Q8_0 halves the
 * bytes the hook reads against F16, but widening int8 to float costs more instructions
 * per value, and with AVX2 the kernels were bound by those instructions rather than by
 * memory; 512-bit widening and fused multiply-adds do 16 values per instruction, half
 * the instructions of AVX2 for the same values. The expand keeps the contract
 * of the AVX2 one (one fused multiply-add per rank row and output, in rank order, with
 * the same scale products), so its results equal AVX2's bit for bit; the dot sums in
 * another order than AVX2's. */
#include "adapter/lora_int.h"

#include <immintrin.h>
#include <string.h>

/* The 32 values of the Q8_0 block at b (without its scale) as two vectors. */
static inline __attribute__((always_inline)) void q8_load(const uint8_t *b, __m512 *v) {
    __m256i q = _mm256_loadu_si256((const __m256i *)(b + 2));
    v[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
    v[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1)));
}

static inline float q8_scale(const uint8_t *b) {
    uint16_t d;
    memcpy(&d, b, 2);
    return _cvtsh_ss(d);
}

/* Q8_0: n is a multiple of 32 and w starts at a block. Two blocks per iteration, each
 * block's sum scaled into its own accumulator. */
static float dot_q8(const float *x, const uint8_t *w, int64_t n) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, v[2];
    int64_t i = 0;
    for (; i + 2 * LORA_Q8_BLOCK <= n; i += 2 * LORA_Q8_BLOCK, w += 2 * LORA_Q8_BYTES) {
        q8_load(w, v);
        __m512 s = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), v[1],
                                   _mm512_mul_ps(_mm512_loadu_ps(x + i), v[0]));
        acc0 = _mm512_fmadd_ps(_mm512_set1_ps(q8_scale(w)), s, acc0);
        q8_load(w + LORA_Q8_BYTES, v);
        s = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), v[1],
                            _mm512_mul_ps(_mm512_loadu_ps(x + i + 32), v[0]));
        acc1 = _mm512_fmadd_ps(_mm512_set1_ps(q8_scale(w + LORA_Q8_BYTES)), s, acc1);
    }
    if (i < n) {
        q8_load(w, v);
        __m512 s = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), v[1],
                                   _mm512_mul_ps(_mm512_loadu_ps(x + i), v[0]));
        acc0 = _mm512_fmadd_ps(_mm512_set1_ps(q8_scale(w)), s, acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

float lora_dot_avx512(const float *x, const void *w, enum mc_type t, int64_t n) {
    if (t == MC_TYPE_Q8_0)
        return dot_q8(x, w, n);
    return lora_dot_avx2(x, w, t, n);
}

/* y[0..n) += Σ_k t[k] · w[k][0..n) over R Q8_0 rows w[k] (n a multiple of 32, each
 * starting at a block): per block, y is loaded once, gets the rows' fused multiply-adds
 * in the order k with the scale product t[k] · d of lora_avx2.c's kernels, and is
 * stored once. */
static inline __attribute__((always_inline)) void axpy_rows_q8(int R, float *y, const float *t,
                                                               const uint8_t *const *w, int64_t n) {
    for (int64_t i = 0, off = 0; i < n; i += LORA_Q8_BLOCK, off += LORA_Q8_BYTES) {
        __m512 acc0 = _mm512_loadu_ps(y + i), acc1 = _mm512_loadu_ps(y + i + 16), v[2];
        for (int k = 0; k < R; k++) {
            __m512 ad = _mm512_set1_ps(t[k] * q8_scale(w[k] + off));
            q8_load(w[k] + off, v);
            acc0 = _mm512_fmadd_ps(ad, v[0], acc0);
            acc1 = _mm512_fmadd_ps(ad, v[1], acc1);
        }
        _mm512_storeu_ps(y + i, acc0);
        _mm512_storeu_ps(y + i + 16, acc1);
    }
}

void lora_expand_avx512(float *y, const float *t, const void *bt, enum mc_type wt, int32_t rank,
                        int64_t n_out, int64_t j0, int64_t j1) {
    if (wt != MC_TYPE_Q8_0) {
        lora_expand_avx2(y, t, bt, wt, rank, n_out, j0, j1);
        return;
    }
    const uint8_t *w[8];
    int32_t k = 0;
    for (; k + 8 <= rank; k += 8) {
        for (int i = 0; i < 8; i++)
            w[i] = (const uint8_t *)bt + lora_offset(wt, (size_t)((k + i) * n_out + j0));
        axpy_rows_q8(8, y + j0, t + k, w, j1 - j0);
    }
    for (; k < rank; k++) {
        w[0] = (const uint8_t *)bt + lora_offset(wt, (size_t)(k * n_out + j0));
        axpy_rows_q8(1, y + j0, t + k, w, j1 - j0);
    }
}
