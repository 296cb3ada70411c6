/* quant_avx2.c - AVX2/FMA/F16C kernels for mc_matmul (see quant_int.h).
 *
 * Each gemm walks the weight rows in strips and the tokens in small groups, computing a
 * tile of RM rows x RN tokens: a weight block is loaded (and for Q4_0 and the K-quants
 * unpacked) once per tile and multiplied with every token of the group, so prompt
 * processing decodes each block once per RN tokens. Matrix-vector calls (one token) read
 * the rows in order, as one sequential stream.
 *
 * Every (row, token) result has its own accumulator and sees the same sequence of
 * operations whatever the tile shape, so a batched call equals single-token calls bit for
 * bit. Integer parts (int8 products, scales, mins) are exact; only the float summation
 * order differs from the portable kernels.
 *
 * The activation conversions produce exactly the bytes of the portable ones.
 * Compiled with -mavx2 -mfma -mf16c; called only after a run-time CPU check. */
#include "model/quant_int.h"

#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))
/* The tile loops run over compile-time RM, RN and sub-block counts; unrolling them fully
 * keeps the accumulators in registers. */
#define UNROLL _Pragma("GCC unroll 8")

/* ---- Small helpers ---------------------------------------------------------------- */

INLINE float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE float hsum_ps128(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

INLINE float fp16(uint16_t h) {
    return _cvtsh_ss(h);
}

/* Signed int8 dot of 32 pairs into 8 int32 lanes (pairs summed in each lane). */
INLINE __m256i dot_i8(__m256i ax, __m256i sy) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
}

/* 32 nibbles of 16 bytes: element j in the low nibble of byte j, j + 16 in the high. */
INLINE __m256i unpack_nibbles(const uint8_t *p) {
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    __m256i v = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

/* ---- Activation conversion ---------------------------------------------------------- */

static void conv_f16(const float *x, void *dst, int64_t n) {
    uint16_t *y = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

static void conv_bf16(const float *x, void *dst, int64_t n) {
    uint16_t *y = dst;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i r[2];
        UNROLL for (int h = 0; h < 2; h++) {
            __m256 f = _mm256_loadu_ps(x + i + 8 * h);
            __m256i u = _mm256_castps_si256(f);
            __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
            __m256i rn = _mm256_srli_epi32(
                _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
            __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
            __m256 isnan = _mm256_cmp_ps(f, f, _CMP_UNORD_Q);
            r[h] = _mm256_blendv_epi8(rn, qnan, _mm256_castps_si256(isnan));
        }
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r[0], r[1]), 0xD8);
        _mm256_storeu_si256((__m256i *)(y + i), p);
    }
    for (; i < n; i++) {
        uint32_t u = quant_f32_bits(x[i]);
        y[i] = (u & 0x7fffffffu) > 0x7f800000u
                   ? (uint16_t)((u >> 16) | 64)
                   : (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
    }
}

/* 32 int32 (four vectors of 8, in order) to 32 int8 in order, saturating. */
INLINE __m256i pack_32(__m256i i0, __m256i i1, __m256i i2, __m256i i3) {
    __m256i a = _mm256_packs_epi32(i0, i1);
    __m256i b = _mm256_packs_epi32(i2, i3);
    __m256i p = _mm256_packs_epi16(a, b);
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static void conv_q8_0(const float *x, void *dst, int64_t n) {
    struct block_q8_0 *y = dst;
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        __m256 v[4];
        __m256 m = _mm256_setzero_ps();
        UNROLL for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            m = _mm256_max_ps(m, _mm256_and_ps(v[k], abs_mask));
        }
        __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        y[i].d = _cvtss_sh(amax / 127.f, _MM_FROUND_TO_NEAREST_INT);
        const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.f / amax : 0.0f);
        __m256i q[4];
        UNROLL for (int k = 0; k < 4; k++) {
            q[k] = _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(v[k], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
        _mm256_storeu_si256((__m256i *)y[i].qs, pack_32(q[0], q[1], q[2], q[3]));
    }
}

static void conv_q8_k(const float *x, void *dst, int64_t n) {
    struct block_q8_k *y = dst;
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < QK_K; k += 8)
            m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + k), abs_mask));
        __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        if (!amax) {
            memset(&y[i], 0, sizeof(y[i]));
            continue;
        }
        /* The reference takes the sign of the first element of largest magnitude. */
        float max = amax;
        for (int k = 0; k < QK_K; k += 8) {
            __m256 eq = _mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(x + k), abs_mask),
                                      _mm256_set1_ps(amax), _CMP_EQ_OQ);
            int mask = _mm256_movemask_ps(eq);
            if (mask) {
                max = x[k + __builtin_ctz((unsigned)mask)];
                break;
            }
        }
        const float iscale = -127.f / max;
        const __m256 vs = _mm256_set1_ps(iscale);
        for (int k = 0; k < QK_K; k += 32) {
            __m256i q[4];
            UNROLL for (int j = 0; j < 4; j++) {
                q[j] = _mm256_cvtps_epi32(
                    _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8 * j), vs),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            }
            y[i].bsums[k / 16] = (int16_t)hsum_epi32(_mm256_add_epi32(q[0], q[1]));
            y[i].bsums[k / 16 + 1] = (int16_t)hsum_epi32(_mm256_add_epi32(q[2], q[3]));
            _mm256_storeu_si256((__m256i *)(y[i].qs + k), pack_32(q[0], q[1], q[2], q[3]));
        }
        y[i].d = 1 / iscale;
    }
}

/* ---- F32, F16, BF16 ------------------------------------------------------------------ */

/* Loads 8 weights (or activations) of the float types as floats. */
INLINE __m256 load8_f32(const void *p) {
    return _mm256_loadu_ps(p);
}
INLINE __m256 load8_f16(const void *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(p));
}
INLINE __m256 load8_bf16(const void *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
INLINE float load1_f32(const void *p, int64_t i) {
    return ((const float *)p)[i];
}
INLINE float load1_f16(const void *p, int64_t i) {
    return _cvtsh_ss(((const uint16_t *)p)[i]);
}
INLINE float load1_bf16(const void *p, int64_t i) {
    return quant_f32_from_bits((uint32_t)((const uint16_t *)p)[i] << 16);
}

/* Two accumulators per (row, token) over 16 elements at a time, then 8, then a scalar
 * tail, in that fixed order. */
#define DEFINE_FLOAT_TILE(T, ESZ)                                                                  \
    INLINE void tile_##T(int RM, int RN, TILE_ARGS) {                                              \
        __m256 acc0[4][4], acc1[4][4];                                                             \
        UNROLL for (int i = 0; i < RM; i++) {                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                acc0[i][j] = acc1[i][j] = _mm256_setzero_ps();                                     \
            }                                                                                      \
        }                                                                                          \
        int64_t c = 0;                                                                             \
        for (; c + 16 <= cols; c += 16) {                                                          \
            __m256 w0[4], w1[4];                                                                   \
            UNROLL for (int i = 0; i < RM; i++) {                                                  \
                w0[i] = load8_##T(w + i * w_row + c * ESZ);                                        \
                w1[i] = load8_##T(w + i * w_row + (c + 8) * ESZ);                                  \
            }                                                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                __m256 x0 = load8_##T(a + j * a_row + c * ESZ);                                    \
                __m256 x1 = load8_##T(a + j * a_row + (c + 8) * ESZ);                              \
                UNROLL for (int i = 0; i < RM; i++) {                                              \
                    acc0[i][j] = _mm256_fmadd_ps(w0[i], x0, acc0[i][j]);                           \
                    acc1[i][j] = _mm256_fmadd_ps(w1[i], x1, acc1[i][j]);                           \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        for (; c + 8 <= cols; c += 8)                                                              \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                UNROLL for (int i = 0; i < RM; i++) {                                              \
                    acc0[i][j] = _mm256_fmadd_ps(load8_##T(w + i * w_row + c * ESZ),               \
                                                 load8_##T(a + j * a_row + c * ESZ), acc0[i][j]);  \
                }                                                                                  \
            }                                                                                      \
        UNROLL for (int i = 0; i < RM; i++) {                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                float s = hsum_ps(_mm256_add_ps(acc0[i][j], acc1[i][j]));                          \
                for (int64_t k = c; k < cols; k++)                                                 \
                    s += load1_##T(w + i * w_row, k) * load1_##T(a + j * a_row, k);                \
                y[j * ldy + i] = s;                                                                \
            }                                                                                      \
        }                                                                                          \
    }

DEFINE_FLOAT_TILE(f32, 4)
DEFINE_FLOAT_TILE(f16, 2)
DEFINE_FLOAT_TILE(bf16, 2)
DEFINE_GEMM(f32, 4, 2)
DEFINE_GEMM(f16, 4, 2)
DEFINE_GEMM(bf16, 4, 2)

/* ---- Q8_0 and Q4_0 ----------------------------------------------------------------------- */

/* Per block: weights as signed int8 (Q4_0 unpacked to -8..7), their absolute values and
 * the activations with the weights' signs give the int8 dot through maddubs; the int32
 * lanes are converted and accumulated with d_w * d_x. */
#define DEFINE_Q0_TILE(NAME, BLOCK, LOADW)                                                         \
    INLINE void tile_##NAME(int RM, int RN, TILE_ARGS) {                                           \
        __m256 acc[4][4];                                                                          \
        UNROLL for (int i = 0; i < RM; i++) {                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                acc[i][j] = _mm256_setzero_ps();                                                   \
            }                                                                                      \
        }                                                                                          \
        const int64_t nb = cols / 32;                                                              \
        for (int64_t b = 0; b < nb; b++) {                                                         \
            __m256i aw[4], wq[4];                                                                  \
            float wd[4];                                                                           \
            UNROLL for (int i = 0; i < RM; i++) {                                                  \
                const struct BLOCK *bw = (const struct BLOCK *)(w + i * w_row) + b;                \
                wq[i] = LOADW(bw->qs);                                                             \
                aw[i] = _mm256_sign_epi8(wq[i], wq[i]);                                            \
                wd[i] = fp16(bw->d);                                                               \
            }                                                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                const struct block_q8_0 *ba = (const struct block_q8_0 *)(a + j * a_row) + b;      \
                const __m256i xq = _mm256_loadu_si256((const __m256i *)ba->qs);                    \
                const float xd = fp16(ba->d);                                                      \
                UNROLL for (int i = 0; i < RM; i++) {                                              \
                    __m256i p = dot_i8(aw[i], _mm256_sign_epi8(xq, wq[i]));                        \
                    acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(wd[i] * xd), _mm256_cvtepi32_ps(p), \
                                                acc[i][j]);                                        \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        UNROLL for (int i = 0; i < RM; i++) {                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                y[j * ldy + i] = hsum_ps(acc[i][j]);                                               \
            }                                                                                      \
        }                                                                                          \
    }

INLINE __m256i load_q8(const int8_t *qs) {
    return _mm256_loadu_si256((const __m256i *)qs);
}

INLINE __m256i load_q4(const uint8_t *qs) {
    return _mm256_sub_epi8(unpack_nibbles(qs), _mm256_set1_epi8(8));
}

DEFINE_Q0_TILE(q8_0, block_q8_0, load_q8)
DEFINE_Q0_TILE(q4_0, block_q4_0, load_q4)
DEFINE_GEMM(q8_0, 4, 2)
DEFINE_GEMM(q4_0, 4, 2)

/* ---- Q4_K and Q5_K ------------------------------------------------------------------------ */

/* Per super-block and (row, token): the 8 sub-block dots times their 6-bit scales in
 * int32 lanes, accumulated with d_w * d_x; the mins times the activation's 32-element
 * sums, accumulated with -dmin_w * d_x in a second (128-bit) accumulator. */
struct k4_row {
    __m128i mins;     /* 8 mins as int16 */
    __m256i scale[8]; /* each scale broadcast to 16 int16 lanes */
    float d, dmin;
};

INLINE void k4_row_load(struct k4_row *r, const uint8_t *packed, uint16_t d, uint16_t dmin) {
    uint8_t sc[8], mn[8];
    quant_unpack_k4(packed, sc, mn);
    r->mins = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mn));
    UNROLL for (int j = 0; j < 8; j++) {
        r->scale[j] = _mm256_set1_epi16(sc[j]);
    }
    r->d = fp16(d);
    r->dmin = fp16(dmin);
}

/* Sums of the activation's 8 sub-blocks of 32, as int16. */
INLINE __m128i q8k_sums32(const struct block_q8_k *ba) {
    const __m256i s = _mm256_loadu_si256((const __m256i *)ba->bsums);
    return _mm_hadd_epi16(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

/* Level of weight i, chunk k (64 elements) as two vectors of 32 unsigned bytes. */
INLINE void q4k_levels(const struct block_q4_k *bw, int k, __m256i *lo, __m256i *hi) {
    const __m256i bits = _mm256_loadu_si256((const __m256i *)(bw->qs + 32 * k));
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    *lo = _mm256_and_si256(bits, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
}

INLINE void q5k_levels(const struct block_q5_k *bw, int k, __m256i *lo, __m256i *hi) {
    const __m256i bits = _mm256_loadu_si256((const __m256i *)(bw->qs + 32 * k));
    const __m256i hb = _mm256_loadu_si256((const __m256i *)bw->qh);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i one = _mm256_set1_epi8(1);
    __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * k), one);
    __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * k + 1), one);
    *lo = _mm256_or_si256(_mm256_and_si256(bits, m4), _mm256_slli_epi16(h0, 4));
    *hi =
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), _mm256_slli_epi16(h1, 4));
}

#define DEFINE_K4_TILE(NAME, BLOCK, LEVELS)                                                        \
    INLINE void tile_##NAME(int RM, int RN, TILE_ARGS) {                                           \
        __m256 acc[4][4];                                                                          \
        __m128 accm[4][4];                                                                         \
        UNROLL for (int i = 0; i < RM; i++) {                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                acc[i][j] = _mm256_setzero_ps();                                                   \
                accm[i][j] = _mm_setzero_ps();                                                     \
            }                                                                                      \
        }                                                                                          \
        const int64_t nb = cols / QK_K;                                                            \
        for (int64_t b = 0; b < nb; b++) {                                                         \
            struct k4_row kr[4];                                                                   \
            UNROLL for (int i = 0; i < RM; i++) {                                                  \
                const struct BLOCK *bw = (const struct BLOCK *)(w + i * w_row) + b;                \
                k4_row_load(&kr[i], bw->scales, bw->d, bw->dmin);                                  \
            }                                                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                const struct block_q8_k *ba = (const struct block_q8_k *)(a + j * a_row) + b;      \
                const __m128i s32 = q8k_sums32(ba);                                                \
                UNROLL for (int i = 0; i < RM; i++) {                                              \
                    const struct BLOCK *bw = (const struct BLOCK *)(w + i * w_row) + b;            \
                    __m256i sumi = _mm256_setzero_si256();                                         \
                    UNROLL for (int k = 0; k < 4; k++) {                                           \
                        __m256i lo, hi;                                                            \
                        LEVELS(bw, k, &lo, &hi);                                                   \
                        const __m256i x0 = _mm256_loadu_si256((const __m256i *)(ba->qs + 64 * k)); \
                        const __m256i x1 =                                                         \
                            _mm256_loadu_si256((const __m256i *)(ba->qs + 64 * k + 32));           \
                        __m256i p0 =                                                               \
                            _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), kr[i].scale[2 * k]);   \
                        __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1),               \
                                                       kr[i].scale[2 * k + 1]);                    \
                        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));                   \
                    }                                                                              \
                    const __m128i pm = _mm_madd_epi16(kr[i].mins, s32);                            \
                    acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(kr[i].d * ba->d),                   \
                                                _mm256_cvtepi32_ps(sumi), acc[i][j]);              \
                    accm[i][j] = _mm_fmadd_ps(_mm_set1_ps(-kr[i].dmin * ba->d),                    \
                                              _mm_cvtepi32_ps(pm), accm[i][j]);                    \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        UNROLL for (int i = 0; i < RM; i++) {                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                y[j * ldy + i] = hsum_ps(acc[i][j]) + hsum_ps128(accm[i][j]);                      \
            }                                                                                      \
        }                                                                                          \
    }

DEFINE_K4_TILE(q4_k, block_q4_k, q4k_levels)
DEFINE_K4_TILE(q5_k, block_q5_k, q5k_levels)
DEFINE_GEMM(q4_k, 4, 2)
DEFINE_GEMM(q5_k, 4, 2)

/* ---- Q6_K ------------------------------------------------------------------------------------ */

/* Levels are 0..63 (the -32 offset is applied through the activation's 16-element sums
 * times the scales); each 32-element group has two int8 scales, broadcast as int16 to
 * the two halves of the maddubs result. */
INLINE void q6k_levels(const struct block_q6_k *bw, int h, __m256i q[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
    const __m256i l0 = _mm256_loadu_si256((const __m256i *)(bw->ql + 64 * h));
    const __m256i l1 = _mm256_loadu_si256((const __m256i *)(bw->ql + 64 * h + 32));
    const __m256i hb = _mm256_loadu_si256((const __m256i *)(bw->qh + 32 * h));
    q[0] =
        _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4));
    q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4));
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4));
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4));
}

INLINE void tile_q6_k(int RM, int RN, TILE_ARGS) {
    __m256 acc[4][4];
    UNROLL for (int i = 0; i < RM; i++) {
        UNROLL for (int j = 0; j < RN; j++) {
            acc[i][j] = _mm256_setzero_ps();
        }
    }
    const int64_t nb = cols / QK_K;
    for (int64_t b = 0; b < nb; b++) {
        __m256i sc16[4][8]; /* (row, group of 32): scales for the group's two halves */
        __m256i scales[4];  /* (row): all 16 scales as int16 */
        float d[4];
        UNROLL for (int i = 0; i < RM; i++) {
            const struct block_q6_k *bw = (const struct block_q6_k *)(w + i * w_row) + b;
            scales[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)bw->scales));
            /* Group g of half h takes scales 8h + 2g (low lane) and 8h + 2g + 1 (high). */
            const __m256i half0 = _mm256_permute2x128_si256(scales[i], scales[i], 0x00);
            const __m256i half1 = _mm256_permute2x128_si256(scales[i], scales[i], 0x11);
            UNROLL for (int g = 0; g < 4; g++) {
                const __m256i pick =
                    _mm256_set_m128i(_mm_set1_epi16((short)(0x0100 * (4 * g + 3) + 4 * g + 2)),
                                     _mm_set1_epi16((short)(0x0100 * (4 * g + 1) + 4 * g)));
                sc16[i][g] = _mm256_shuffle_epi8(half0, pick);
                sc16[i][4 + g] = _mm256_shuffle_epi8(half1, pick);
            }
            d[i] = fp16(bw->d);
        }
        UNROLL for (int j = 0; j < RN; j++) {
            const struct block_q8_k *ba = (const struct block_q8_k *)(a + j * a_row) + b;
            const __m256i bs = _mm256_loadu_si256((const __m256i *)ba->bsums);
            UNROLL for (int i = 0; i < RM; i++) {
                const struct block_q6_k *bw = (const struct block_q6_k *)(w + i * w_row) + b;
                __m256i sumi = _mm256_setzero_si256();
                UNROLL for (int h = 0; h < 2; h++) {
                    __m256i q[4];
                    q6k_levels(bw, h, q);
                    UNROLL for (int g = 0; g < 4; g++) {
                        const __m256i x =
                            _mm256_loadu_si256((const __m256i *)(ba->qs + 128 * h + 32 * g));
                        __m256i p = _mm256_maddubs_epi16(q[g], x);
                        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, sc16[i][4 * h + g]));
                    }
                }
                /* Subtract 32 * sum_j scale_j * bsum_j for the level offset. */
                __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(scales[i], bs), 5);
                sumi = _mm256_sub_epi32(sumi, off);
                acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(d[i] * ba->d), _mm256_cvtepi32_ps(sumi),
                                            acc[i][j]);
            }
        }
    }
    UNROLL for (int i = 0; i < RM; i++) {
        UNROLL for (int j = 0; j < RN; j++) {
            y[j * ldy + i] = hsum_ps(acc[i][j]);
        }
    }
}

DEFINE_GEMM(q6_k, 4, 2)

/* ---- Table -------------------------------------------------------------------------------- */

void mc_quant_kernels_avx2(struct quant_kernels *k) {
    k->convert[QKIND_F16] = conv_f16;
    k->convert[QKIND_BF16] = conv_bf16;
    k->convert[QKIND_Q8_0] = conv_q8_0;
    k->convert[QKIND_Q4_0] = conv_q8_0;
    k->convert[QKIND_Q4_K] = conv_q8_k;
    k->convert[QKIND_Q5_K] = conv_q8_k;
    k->convert[QKIND_Q6_K] = conv_q8_k;
    k->gemm[QKIND_F32] = gemm_f32;
    k->gemm[QKIND_F16] = gemm_f16;
    k->gemm[QKIND_BF16] = gemm_bf16;
    k->gemm[QKIND_Q8_0] = gemm_q8_0;
    k->gemm[QKIND_Q4_0] = gemm_q4_0;
    k->gemm[QKIND_Q4_K] = gemm_q4_k;
    k->gemm[QKIND_Q5_K] = gemm_q5_k;
    k->gemm[QKIND_Q6_K] = gemm_q6_k;
}
