/* lora_avx2.c - AVX2/FMA/F16C kernels of the LoRA projection hook (see lora_apply.c).
 *
 * Compiled with -mavx2 -mfma -mf16c and only called after mc_simd_get() reported AVX2
 * (which quant.c grants only with FMA and F16C present). Two kernels, for F32 or F16
 * adapter storage: a dot product x·w (shrink, one A row against one activation row) and
 * an axpy y += a·w (expand, one row of Bᵀ into an output segment). Every element of the
 * axpy gets exactly one fused multiply-add, in the vector body and in the scalar tail
 * alike (fmaf), so a result does not depend on where a thread's range starts. */
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

float lora_dot_avx2(const float *x, const void *w, enum mc_type t, int64_t n) {
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

void lora_axpy_avx2(float *y, float a, const void *w, enum mc_type t, int64_t n) {
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
