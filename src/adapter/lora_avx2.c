/* lora_avx2.c - AVX2/FMA/F16C kernels of the LoRA projection hook (see lora_apply.c).
 *
 * Compiled with -mavx2 -mfma -mf16c and only called after mc_simd_get() reported AVX2
 * (which quant.c grants only with FMA and F16C present). Two kernels, for F32, F16 or
 * Q8_0 adapter storage: a dot product x·w (shrink: one A row against one activation row)
 * and an expand y[j] += Σ_k t[k]·Bᵀ[k][j] over an output range. Every output of the
 * expand gets one fused multiply-add per rank row, in order, in the vector body and in
 * the scalar tail alike (fmaf), so a result does not depend on where a thread's range
 * starts. A third kernel quantizes F32 or F16 rows to Q8_0 for mc_lora_convert, with the
 * reference quantizer's arithmetic, so that it writes the bytes mc_quantize_row would. */
#include "adapter/lora_int.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

static float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static __m256 load8(const void *w, enum mc_type t, int64_t i) {
    if (t == MC_TYPE_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    return _mm256_loadu_ps((const float *)w + i);
}

static float get1(const void *w, enum mc_type t, int64_t i) {
    if (t == MC_TYPE_F16)
        return _cvtsh_ss(((const uint16_t *)w)[i]);
    return ((const float *)w)[i];
}

/* The 32 values of a Q8_0 block as four vectors of 8 floats (without the scale). Always
 * inlined: as a call, the four vectors go through memory. */
static inline __attribute__((always_inline)) void q8_load(const uint8_t *b, __m256 *v) {
    for (int i = 0; i < 4; i++) {
        __m128i q = _mm_loadl_epi64((const __m128i *)(b + 2 + 8 * i));
        v[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
    }
}

static float q8_scale(const uint8_t *b) {
    uint16_t d;
    memcpy(&d, b, 2);
    return _cvtsh_ss(d);
}

/* Q8_0: n is a multiple of 32 and w starts at a block. */
static float dot_q8(const float *x, const uint8_t *w, int64_t n) {
    __m256 acc = _mm256_setzero_ps(), v[4];
    for (int64_t i = 0; i < n; i += LORA_Q8_BLOCK, w += LORA_Q8_BYTES) {
        q8_load(w, v);
        __m256 s = _mm256_mul_ps(_mm256_loadu_ps(x + i), v[0]);
        s = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), v[1], s);
        s = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), v[2], s);
        s = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), v[3], s);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(q8_scale(w)), s, acc);
    }
    return hsum(acc);
}

/* y[0..n) += a · w[0..n), w being Q8_0 blocks (n a multiple of 32). */
static void axpy_q8(float *y, float a, const uint8_t *w, int64_t n) {
    __m256 v[4];
    for (int64_t i = 0; i < n; i += LORA_Q8_BLOCK, w += LORA_Q8_BYTES) {
        __m256 ad = _mm256_set1_ps(a * q8_scale(w));
        q8_load(w, v);
        for (int j = 0; j < 4; j++)
            _mm256_storeu_ps(y + i + 8 * j,
                             _mm256_fmadd_ps(ad, v[j], _mm256_loadu_ps(y + i + 8 * j)));
    }
}

/* y[0..n) += a · w[0..n) for F32 or F16 w. */
static void axpy(float *y, float a, const void *w, enum mc_type t, int64_t n) {
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 y0 = _mm256_fmadd_ps(va, load8(w, t, i), _mm256_loadu_ps(y + i));
        __m256 y1 = _mm256_fmadd_ps(va, load8(w, t, i + 8), _mm256_loadu_ps(y + i + 8));
        _mm256_storeu_ps(y + i, y0);
        _mm256_storeu_ps(y + i + 8, y1);
    }
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load8(w, t, i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] = fmaf(a, get1(w, t, i), y[i]);
}

float lora_dot_avx2(const float *x, const void *w, enum mc_type t, int64_t n) {
    if (t == MC_TYPE_Q8_0)
        return dot_q8(x, w, n);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), load8(w, t, i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), load8(w, t, i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), load8(w, t, i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), load8(w, t, i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), load8(w, t, i), a0);
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++)
        s = fmaf(x[i], get1(w, t, i), s);
    return s;
}

/* y[0..n) += Σ t[k] · w[k][0..n) over four rows w[k] of F32 or F16, with the four
 * fused multiply-adds of each output in the order k = 0..3: the results of four axpy
 * calls, for one load and one store of y instead of four. */
static void axpy4(float *y, const float *t, const void *const *w, enum mc_type wt, int64_t n) {
    __m256 a0 = _mm256_set1_ps(t[0]), a1 = _mm256_set1_ps(t[1]);
    __m256 a2 = _mm256_set1_ps(t[2]), a3 = _mm256_set1_ps(t[3]);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 acc = _mm256_fmadd_ps(a0, load8(w[0], wt, i), _mm256_loadu_ps(y + i));
        acc = _mm256_fmadd_ps(a1, load8(w[1], wt, i), acc);
        acc = _mm256_fmadd_ps(a2, load8(w[2], wt, i), acc);
        acc = _mm256_fmadd_ps(a3, load8(w[3], wt, i), acc);
        _mm256_storeu_ps(y + i, acc);
    }
    for (; i < n; i++)
        for (int k = 0; k < 4; k++)
            y[i] = fmaf(t[k], get1(w[k], wt, i), y[i]);
}

/* As axpy4 for Q8_0 rows (n a multiple of 32, each w[k] starting at a block): per block,
 * y is loaded once, gets the four rows' fused multiply-adds in the order k = 0..3 with
 * the same scale products as axpy_q8, and is stored once. */
static void axpy4_q8(float *y, const float *t, const uint8_t *const *w, int64_t n) {
    for (int64_t i = 0, off = 0; i < n; i += LORA_Q8_BLOCK, off += LORA_Q8_BYTES) {
        __m256 acc[4];
        for (int j = 0; j < 4; j++)
            acc[j] = _mm256_loadu_ps(y + i + 8 * j);
        for (int k = 0; k < 4; k++) {
            __m256 v[4];
            __m256 ad = _mm256_set1_ps(t[k] * q8_scale(w[k] + off));
            q8_load(w[k] + off, v);
            for (int j = 0; j < 4; j++)
                acc[j] = _mm256_fmadd_ps(ad, v[j], acc[j]);
        }
        for (int j = 0; j < 4; j++)
            _mm256_storeu_ps(y + i + 8 * j, acc[j]);
    }
}

/* Rank rows four at a time (four sequential streams of Bᵀ, y loaded and stored once per
 * four rows), one at a time for the last rank % 4 rows. Either way every output gets its
 * multiply-adds in rank order. */
void lora_expand_avx2(float *y, const float *t, const void *bt, enum mc_type wt, int32_t rank,
                      int64_t n_out, int64_t j0, int64_t j1) {
    int32_t k = 0;
    for (; k + 4 <= rank; k += 4) {
        const void *w[4];
        for (int i = 0; i < 4; i++)
            w[i] = (const uint8_t *)bt + lora_offset(wt, (size_t)((k + i) * n_out + j0));
        if (wt == MC_TYPE_Q8_0)
            axpy4_q8(y + j0, t + k, (const uint8_t *const *)w, j1 - j0);
        else
            axpy4(y + j0, t + k, w, wt, j1 - j0);
    }
    for (; k < rank; k++) {
        const uint8_t *row = (const uint8_t *)bt + lora_offset(wt, (size_t)(k * n_out + j0));
        if (wt == MC_TYPE_Q8_0)
            axpy_q8(y + j0, t[k], row, j1 - j0);
        else
            axpy(y + j0, t[k], row, wt, j1 - j0);
    }
}

/* ---- Q8_0 conversion ---------------------------------------------------------------- */

/* roundf for |x| < 2^23: truncate, then step one away from zero when the part dropped
 * (x - trunc(x), exact) is at least one half. */
static __m256 round_away(__m256 x) {
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    __m256 t = _mm256_round_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 step = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(x, sign_bit));
    __m256 dropped = _mm256_andnot_ps(sign_bit, _mm256_sub_ps(x, t));
    __m256 up = _mm256_cmp_ps(dropped, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm256_add_ps(t, _mm256_and_ps(up, step));
}

/* As quant_q8_0 in quant.c: d = amax / 127 stored as F16 (round to nearest even, as
 * mc_fp32_to_fp16), q = roundf(x · (1 / d)), 0 for a block of zeros. */
void lora_q8_row_avx2(const void *w, enum mc_type t, uint8_t *dst, int64_t n) {
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n; i += LORA_Q8_BLOCK, dst += LORA_Q8_BYTES) {
        __m256 v[4], amax = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            v[j] = load8(w, t, i + 8 * j);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_bit, v[j]));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float d = _mm_cvtss_f32(m) / 127.0f;
        const float id = d ? 1.0f / d : 0.0f;
        uint16_t dh = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
        memcpy(dst, &dh, 2);
        __m256i q[4];
        for (int j = 0; j < 4; j++)
            q[j] = _mm256_cvtps_epi32(round_away(_mm256_mul_ps(v[j], _mm256_set1_ps(id))));
        /* The packs work within 128-bit lanes; the permutation puts the 32 bytes back
         * in order. */
        __m256i q16a = _mm256_packs_epi32(q[0], q[1]), q16b = _mm256_packs_epi32(q[2], q[3]);
        __m256i q8 = _mm256_packs_epi16(q16a, q16b);
        q8 = _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(dst + 2), q8);
    }
}
