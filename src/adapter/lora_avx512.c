/* lora_avx512.c - AVX-512 kernels of the LoRA projection hook for F32 and F16 adapters
 * (Q8_0 keeps the AVX2 ones, see lora_avx2.c).
 *
 * Compiled with AVX-512 and only called after mc_simd_get() reported it. With many
 * different adapters in a batch the hook reads every adapter's bytes once per step with
 * little arithmetic on each, and what limits it is how many cache lines a core keeps in
 * flight: 512-bit conversions and fused multiply-adds halve the instructions per line
 * against AVX2, so the out-of-order window reaches twice as far ahead. The expand keeps
 * the contract of the AVX2 one (one fused multiply-add per rank row and output, in rank
 * order, in the vector body and the scalar tail alike), so its results equal AVX2's bit
 * for bit; the dot sums in another order than AVX2's. */
#include "adapter/lora_int.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

static inline __m512 load16(const void *w, enum mc_type t, int64_t i) {
    if (t == MC_TYPE_F16)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i)));
    return _mm512_loadu_ps((const float *)w + i);
}

static inline float get1(const void *w, enum mc_type t, int64_t i) {
    if (t == MC_TYPE_F16)
        return _cvtsh_ss(((const uint16_t *)w)[i]);
    return ((const float *)w)[i];
}

static float dot(const float *x, const void *w, enum mc_type t, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), load16(w, t, i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), load16(w, t, i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), load16(w, t, i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), load16(w, t, i + 48), a3);
    }
    for (; i + 16 <= n; i += 16)
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), load16(w, t, i), a0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; i < n; i++)
        s = fmaf(x[i], get1(w, t, i), s);
    return s;
}

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
    return dot(x, w, t, n);
}

/* As axpy_rows for Q8_0 rows (n a multiple of 32, each w[k] starting at a block): per
 * block, y is loaded once, gets the rows' fused multiply-adds in the order k with the
 * scale product t[k] · d of lora_avx2.c's kernels, and is stored once. */
static inline __attribute__((always_inline)) void axpy_rows_q8(int R, float *y, const float *t,
                                                                const uint8_t *const *w,
                                                                int64_t n) {
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

/* y[0..n) += Σ_k t[k] · w[k][0..n) over R rows w[k], the fused multiply-adds of each
 * output in the order k = 0..R-1. */
static inline __attribute__((always_inline)) void axpy_rows(int R, float *y, const float *t,
                                                             const void *const *w,
                                                             enum mc_type wt, int64_t n) {
    __m512 a[8];
    for (int k = 0; k < R; k++)
        a[k] = _mm512_set1_ps(t[k]);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 acc = _mm512_loadu_ps(y + i);
        for (int k = 0; k < R; k++)
            acc = _mm512_fmadd_ps(a[k], load16(w[k], wt, i), acc);
        _mm512_storeu_ps(y + i, acc);
    }
    for (; i < n; i++)
        for (int k = 0; k < R; k++)
            y[i] = fmaf(t[k], get1(w[k], wt, i), y[i]);
}

void lora_expand_avx512(float *y, const float *t, const void *bt, enum mc_type wt, int32_t rank,
                        int64_t n_out, int64_t j0, int64_t j1) {
    const void *w[8];
    int32_t k = 0;
    for (; k + 8 <= rank; k += 8) {
        for (int i = 0; i < 8; i++)
            w[i] = (const uint8_t *)bt + lora_offset(wt, (size_t)((k + i) * n_out + j0));
        if (wt == MC_TYPE_Q8_0)
            axpy_rows_q8(8, y + j0, t + k, (const uint8_t *const *)w, j1 - j0);
        else
            axpy_rows(8, y + j0, t + k, w, wt, j1 - j0);
    }
    for (; k < rank; k++) {
        w[0] = (const uint8_t *)bt + lora_offset(wt, (size_t)(k * n_out + j0));
        if (wt == MC_TYPE_Q8_0)
            axpy_rows_q8(1, y + j0, t + k, (const uint8_t *const *)w, j1 - j0);
        else
            axpy_rows(1, y + j0, t + k, w, wt, j1 - j0);
    }
}
