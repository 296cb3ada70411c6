/* quant_avx512.c - AVX-512 (F, BW, VL, VNNI) kernels for mc_matmul (see quant_int.h).
 *
 * Q8_0 and Q4_0: with VNNI one vpdpbusd on a 512-bit register replaces the
 * sign/maddubs/madd sequence of AVX2 for two blocks at once, which is where the AVX2
 * kernel spends its time. The activations are converted to struct q8_pair (two blocks
 * per entry with per-lane scales; for Q4_0 a correction for its unsigned levels, for
 * Q8_0 the weights' signs are moved onto the activations), so the inner loop is one
 * multiply-add of integers and one of floats per two blocks.
 * Packed Q8_0 and Q4_0 (quant.h, "Packed weights"; what the model uses): one block per
 * 32-bit lane, so per 16 blocks eight vpdpbusd, one scale conversion and one float
 * multiply-add, with no shuffles and no per-pair reduction (see struct q8_group).
 * Q4_K, Q5_K, Q6_K: the AVX2 scheme on 512-bit registers (64 elements per step), with
 * each chunk unpacked once per tile. F32, F16 and BF16 keep their AVX2 kernels (the set
 * starts as a copy of the AVX2 one), which already run at memory speed.
 *
 * The quants equal the portable Q8_0 conversion byte for byte; only their layout and the
 * float summation order differ. Every (row, token) result sees the same operations
 * whatever the tile shape, so batched calls equal single-token calls bit for bit.
 * Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni; called only after a
 * run-time CPU check. */
#include "model/quant_int.h"

/* The instruction sets are also named here, not only by the Makefile's flags, so that a
 * build compiling every file with the same flags (the clang fuzz targets) still accepts
 * the intrinsics; nothing here runs before the CPU check either way. */
#if defined(__clang__)
#pragma clang attribute push(                                                                      \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"))),                 \
    apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")
#endif

#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 8")

/* ---- Activation conversion ----------------------------------------------------------- */

/* One Q8_0 block exactly as the portable conversion makes it (id = 127 / amax, round to
 * nearest even); returns the float value of its fp16 scale and the quant sum. */
INLINE float quantize_block(const float *x, int8_t *q, int *sum) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
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
    const uint16_t d16 = _cvtss_sh(amax / 127.f, _MM_FROUND_TO_NEAREST_INT);
    const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.f / amax : 0.0f);
    __m256i qi[4];
    UNROLL for (int k = 0; k < 4; k++) {
        qi[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], id),
                                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1));
    *sum = _mm_cvtsi128_si32(s4);
    __m256i p =
        _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p);
    return _cvtsh_ss(d16);
}

/* Fills n / 32 blocks as pairs; bias is 8 for Q4_0 weights (levels 0..15), 0 for Q8_0. */
INLINE void conv_pairs(const float *x, void *dst, int64_t n, int bias, int interleave) {
    struct q8_pair *y = dst;
    const int64_t nb = n / QK8_0;
    for (int64_t p = 0; p < (nb + 1) / 2; p++) {
        memset(&y[p], 0, sizeof(y[p]));
        for (int h = 0; h < 2 && 2 * p + h < nb; h++) {
            int8_t q[32];
            int sum;
            float d = quantize_block(x + (2 * p + h) * QK8_0, q, &sum);
            if (!interleave) {
                memcpy(y[p].qs + 32 * h, q, 32);
                y[p].corr[8 * h] = -bias * sum;
                for (int l = 0; l < 8; l++)
                    y[p].d[8 * h + l] = d;
            } else {
                memcpy(y[p].qs + 16 * h, q, 16);
                memcpy(y[p].qs + 32 + 16 * h, q + 16, 16);
                y[p].corr[4 * h] = -bias * sum;
                for (int l = 0; l < 4; l++)
                    y[p].d[4 * h + l] = y[p].d[8 + 4 * h + l] = d;
            }
        }
    }
}

static void conv_pairs_q8_0(const float *x, void *dst, int64_t n) {
    conv_pairs(x, dst, n, 0, 0);
}

static void conv_pairs_q4_0(const float *x, void *dst, int64_t n) {
    conv_pairs(x, dst, n, 8, 1);
}

/* Fills n / 32 blocks as groups of 16 (struct q8_group) for packed weights; bias as
 * above (8 for Q4_0 levels, 128 for Q8_0 quants stored + 128). */
INLINE void conv_groups(const float *x, void *dst, int64_t n, int bias) {
    struct q8_group *y = dst;
    const int64_t nb = n / QK8_0;
    for (int64_t g = 0; g < (nb + PACK_GROUP - 1) / PACK_GROUP; g++) {
        memset(&y[g], 0, sizeof(y[g]));
        for (int b = 0; b < PACK_GROUP && g * PACK_GROUP + b < nb; b++) {
            int8_t q[32];
            int sum;
            y[g].d[b] = quantize_block(x + (g * PACK_GROUP + b) * QK8_0, q, &sum);
            y[g].corr[b] = -bias * sum;
            for (int k = 0; k < PACK_SLICES; k++)
                memcpy(&y[g].qs[k][4 * b], q + 4 * k, 4);
        }
    }
}

static void conv_groups_q8_0(const float *x, void *dst, int64_t n) {
    conv_groups(x, dst, n, 128);
}

static void conv_groups_q4_0(const float *x, void *dst, int64_t n) {
    conv_groups(x, dst, n, 8);
}

/* ---- Weights ------------------------------------------------------------------------- */

/* Scales of blocks b0 and b1 (b1 may be absent) spread to the lanes of the layout. */
INLINE __m512 pair_scales(uint16_t d0, uint16_t d1, __m512i lanes) {
    __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)d0 | ((uint32_t)d1 << 16))));
    return _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(f));
}

/* Q8_0 weights of a pair as magnitudes, with their signs in *neg (the activations take
 * the signs, as AVX2's vpsignb does). Biasing the weights by +128 instead would need a
 * -128 * sum(x) correction per block: exact in integers, but here a block spans 8 lanes,
 * the large lane values then cancel in float and cost about two decimal digits of the
 * result. (The packed layout has a whole block per lane and does use the bias.) A
 * missing b1 is 0. */
INLINE __m512i q8_0_pair(const struct block_q8_0 *bw, int full, __m512 *dw, __mmask64 *neg) {
    const __m512i lanes = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512i v;
    if (full) {
        v = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)bw[0].qs)),
            _mm256_loadu_si256((const __m256i *)bw[1].qs), 1);
        *dw = pair_scales(bw[0].d, bw[1].d, lanes);
    } else {
        v = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)bw[0].qs));
        *dw = pair_scales(bw[0].d, 0, lanes);
    }
    *neg = _mm512_movepi8_mask(v);
    return _mm512_abs_epi8(v);
}

/* Q4_0 weights of a pair as levels 0..15 in the interleaved layout. */
INLINE __m512i q4_0_pair(const struct block_q4_0 *bw, int full, __m512 *dw, __mmask64 *neg) {
    const __m512i lanes = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
    __m256i t;
    if (full) {
        t = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)bw[0].qs)),
            _mm_loadu_si128((const __m128i *)bw[1].qs), 1);
        *dw = pair_scales(bw[0].d, bw[1].d, lanes);
    } else {
        t = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)bw[0].qs));
        *dw = pair_scales(bw[0].d, 0, lanes);
    }
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(t), _mm256_srli_epi16(t, 4), 1);
    *neg = 0;
    return _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
}

/* ---- Tiles ----------------------------------------------------------------------------- */

/* SIGNED: the weights come as magnitudes and the activations take their signs. */
#define DEFINE_PAIR_TILE(NAME, BLOCK, LOADW, SIGNED)                                               \
    INLINE void tile_##NAME(int RM, int RN, TILE_ARGS) {                                           \
        __m512 acc[4][4];                                                                          \
        UNROLL for (int i = 0; i < RM; i++) {                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                acc[i][j] = _mm512_setzero_ps();                                                   \
            }                                                                                      \
        }                                                                                          \
        const int64_t nb = cols / QK8_0;                                                           \
        for (int64_t p = 0; p < (nb + 1) / 2; p++) {                                               \
            const int full = 2 * p + 1 < nb;                                                       \
            __m512i wq[4];                                                                         \
            __m512 dw[4];                                                                          \
            __mmask64 neg[4];                                                                      \
            UNROLL for (int i = 0; i < RM; i++) {                                                  \
                wq[i] =                                                                            \
                    LOADW((const struct BLOCK *)(w + i * w_row) + 2 * p, full, &dw[i], &neg[i]);   \
            }                                                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                const struct q8_pair *ap = (const struct q8_pair *)(a + j * a_row) + p;            \
                const __m512i xq = _mm512_loadu_si512(ap->qs);                                     \
                const __m512i corr = _mm512_loadu_si512(ap->corr);                                 \
                const __m512 dx = _mm512_loadu_ps(ap->d);                                          \
                UNROLL for (int i = 0; i < RM; i++) {                                              \
                    const __m512i xs =                                                             \
                        SIGNED ? _mm512_mask_sub_epi8(xq, neg[i], _mm512_setzero_si512(), xq)      \
                               : xq;                                                               \
                    __m512i s = _mm512_dpbusd_epi32(corr, wq[i], xs);                              \
                    acc[i][j] = _mm512_fmadd_ps(_mm512_mul_ps(dw[i], dx), _mm512_cvtepi32_ps(s),   \
                                                acc[i][j]);                                        \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        UNROLL for (int i = 0; i < RM; i++) {                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                y[j * ldy + i] = _mm512_reduce_add_ps(acc[i][j]);                                  \
            }                                                                                      \
        }                                                                                          \
    }

DEFINE_PAIR_TILE(q8_0, block_q8_0, q8_0_pair, 1)
DEFINE_PAIR_TILE(q4_0, block_q4_0, q4_0_pair, 0)
DEFINE_GEMM(q8_0, 4, 4)
DEFINE_GEMM(q4_0, 4, 4)

/* ---- Packed Q8_0 and Q4_0 ---------------------------------------------------------------- */

/* The eight weight slices of a packed group of n blocks at g (n fp16 scales, then slices
 * of 4n bytes), one block per 32-bit lane; lanes of missing blocks are zero. Q4_0 has
 * four slices of nibble bytes: the low nibbles are quants 4k..4k+3 (slice k), the high
 * ones quants 16+4k.. (slice k + 4), kept in place as 16 times the level: one and
 * instead of a shift and an and, and the sum of those four slices is shifted back once
 * (exactly: every term is a multiple of 16). Groups of up to 8 blocks use 256-bit
 * registers (the 768-wide matrices end in such a group), whole ones 512-bit. */
#define DEFINE_SLICES(W, VEC, MASK, ALL)                                                           \
    INLINE void q8_0_slices##W(const uint8_t *g, int n, VEC v[8]) {                                \
        const MASK m = n == W / 32 ? (MASK)ALL : (MASK)((1ull << (4 * n)) - 1);                   \
        UNROLL for (int k = 0; k < 8; k++) {                                                       \
            v[k] = _mm##W##_maskz_loadu_epi8(m, g + 2 * n + 4 * n * k);                            \
        }                                                                                          \
    }                                                                                              \
    INLINE void q4_0_slices##W(const uint8_t *g, int n, VEC v[8]) {                                \
        const MASK m = n == W / 32 ? (MASK)ALL : (MASK)((1ull << (4 * n)) - 1);                   \
        UNROLL for (int k = 0; k < 4; k++) {                                                       \
            VEC raw = _mm##W##_maskz_loadu_epi8(m, g + 2 * n + 4 * n * k);                         \
            __asm__("" : "+v"(raw)); /* one load, not one per use as a memory operand */           \
            v[k] = _mm##W##_and_si##W(raw, _mm##W##_set1_epi8(0x0F));                              \
            v[k + 4] = _mm##W##_and_si##W(raw, _mm##W##_set1_epi8((char)0xF0));                    \
        }                                                                                          \
    }
DEFINE_SLICES(512, __m512i, __mmask64, ~0ull)
DEFINE_SLICES(256, __m256i, __mmask32, ~0u)

/* Block dots of one (row, token) group as exact integers: four vpdpbusd chains of two
 * (short chains, so one row's groups overlap in the pipeline), slices 4..7 shifted right
 * by HI_SHIFT. */
#define GROUP_DOTS(W, v, q, corr, HI_SHIFT, out)                                                   \
    do {                                                                                           \
        __m##W##i c0 = (corr), c1 = _mm##W##_setzero_si##W();                                     \
        __m##W##i c2 = _mm##W##_setzero_si##W(), c3 = _mm##W##_setzero_si##W();                  \
        c0 = _mm##W##_dpbusd_epi32(c0, v[0], _mm##W##_loadu_si##W((const void *)(q)[0]));                        \
        c1 = _mm##W##_dpbusd_epi32(c1, v[1], _mm##W##_loadu_si##W((const void *)(q)[1]));                        \
        c2 = _mm##W##_dpbusd_epi32(c2, v[4], _mm##W##_loadu_si##W((const void *)(q)[4]));                        \
        c3 = _mm##W##_dpbusd_epi32(c3, v[5], _mm##W##_loadu_si##W((const void *)(q)[5]));                        \
        c0 = _mm##W##_dpbusd_epi32(c0, v[2], _mm##W##_loadu_si##W((const void *)(q)[2]));                        \
        c1 = _mm##W##_dpbusd_epi32(c1, v[3], _mm##W##_loadu_si##W((const void *)(q)[3]));                        \
        c2 = _mm##W##_dpbusd_epi32(c2, v[6], _mm##W##_loadu_si##W((const void *)(q)[6]));                        \
        c3 = _mm##W##_dpbusd_epi32(c3, v[7], _mm##W##_loadu_si##W((const void *)(q)[7]));                        \
        __m##W##i hi = _mm##W##_add_epi32(c2, c3);                                                 \
        if (HI_SHIFT)                                                                              \
            hi = _mm##W##_srai_epi32(hi, HI_SHIFT);                                                \
        (out) = _mm##W##_add_epi32(_mm##W##_add_epi32(c0, c1), hi);                                \
    } while (0)

/* One group for RM rows x RN tokens: per (row, token) the block dots as integers,
 * converted once and scaled by d_w * d_x per lane. A group of up to 8 blocks runs on the
 * low 256 bits and adds into the 512-bit accumulator with zero upper lanes, which leaves
 * those lanes as they were. Every (row, token) sees the same float operations whatever
 * the tile, and integer sums are exact in any order, so batched tiles equal one-token
 * ones bit for bit. */
#define DEFINE_PACKED_GROUP(NAME, HI_SHIFT, BLOCK)                                                 \
    INLINE void group_##NAME(int RM, int RN, int n, const uint8_t *w, size_t w_row,              \
                             const struct q8_group *const *ga, __m512 acc[4][4]) {                  \
        UNROLL for (int i = 0; i < RM; i++) {                                                      \
            const uint8_t *g = w + i * w_row;                                                      \
            if (n > 8) {                                                                           \
                const __m512 dw = _mm512_cvtph_ps(                                                 \
                    _mm256_maskz_loadu_epi16((__mmask16)((1u << n) - 1), (const void *)g));       \
                __m512i v[8];                                                                      \
                NAME##_slices512(g, n, v);                                                         \
                UNROLL for (int j = 0; j < RN; j++) {                                              \
                    __m512i s;                                                                     \
                    GROUP_DOTS(512, v, ga[j]->qs, _mm512_loadu_si512(ga[j]->corr), HI_SHIFT, s);   \
                    const __m512 d = _mm512_mul_ps(dw, _mm512_loadu_ps(ga[j]->d));                 \
                    acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc[i][j]);              \
                }                                                                                  \
            } else {                                                                               \
                const __m256 dw = _mm256_cvtph_ps(                                                 \
                    _mm_maskz_loadu_epi16((__mmask8)((1u << n) - 1), (const void *)g));           \
                __m256i v[8];                                                                      \
                NAME##_slices256(g, n, v);                                                         \
                UNROLL for (int j = 0; j < RN; j++) {                                              \
                    __m256i s;                                                                     \
                    GROUP_DOTS(256, v, ga[j]->qs, _mm256_loadu_si256((const void *)ga[j]->corr),  \
                               HI_SHIFT, s);                                                       \
                    const __m256 d = _mm256_mul_ps(dw, _mm256_loadu_ps(ga[j]->d));                 \
                    acc[i][j] = _mm512_fmadd_ps(_mm512_zextps256_ps512(_mm256_cvtepi32_ps(s)),    \
                                                _mm512_zextps256_ps512(d), acc[i][j]);             \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    INLINE void tile_##NAME##_packed(int RM, int RN, TILE_ARGS) {                                  \
        __m512 acc[4][4];                                                                          \
        UNROLL for (int i = 0; i < RM; i++) {                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                acc[i][j] = _mm512_setzero_ps();                                                   \
            }                                                                                      \
        }                                                                                          \
        const int64_t nb = cols / QK8_0;                                                           \
        const struct q8_group *ga[4];                                                              \
        UNROLL for (int j = 0; j < RN; j++) {                                                      \
            ga[j] = (const struct q8_group *)(a + j * a_row);                                      \
        }                                                                                          \
        int64_t b = 0;                                                                             \
        for (; b + PACK_GROUP <= nb; b += PACK_GROUP) {                                            \
            group_##NAME(RM, RN, PACK_GROUP, w, w_row, ga, acc);                                   \
            w += PACK_GROUP * sizeof(struct BLOCK);                                                \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                ga[j]++;                                                                           \
            }                                                                                      \
        }                                                                                          \
        if (b < nb)                                                                                \
            group_##NAME(RM, RN, (int)(nb - b), w, w_row, ga, acc);                                \
        UNROLL for (int i = 0; i < RM; i++) {                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                y[j * ldy + i] = _mm512_reduce_add_ps(acc[i][j]);                                  \
            }                                                                                      \
        }                                                                                          \
    }

DEFINE_PACKED_GROUP(q8_0, 0, block_q8_0)
DEFINE_PACKED_GROUP(q4_0, 4, block_q4_0)
DEFINE_GEMM(q8_0_packed, 4, 4)
DEFINE_GEMM(q4_0_packed, 4, 4)

/* ---- K-quants ------------------------------------------------------------------------- */

/* The AVX2 K-quant kernels handle 32 elements per instruction; here each step takes a
 * whole 64-element chunk in one 512-bit register (levels of two sub-blocks, or four
 * Q6_K groups of 16), and batched tiles unpack each chunk once for all their tokens. */

/* A lane-index vector for vpermw: lanes 16q..16q+15 take element e[q] (two halves) or
 * lanes 8q..8q+7 take e[q] (four quarters). */
INLINE __m512i idx_halves(int e0, int e1) {
    return _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16((short)e0),
                                   _mm512_set1_epi16((short)e1));
}

INLINE __m512i idx_quarters(int e0, int e1, int e2, int e3) {
    __m512i lo = _mm512_mask_blend_epi16(0x0000FF00u, _mm512_set1_epi16((short)e0),
                                         _mm512_set1_epi16((short)e1));
    __m512i hi = _mm512_mask_blend_epi16(0xFF000000u, _mm512_set1_epi16((short)e2),
                                         _mm512_set1_epi16((short)e3));
    return _mm512_mask_blend_epi16(0xFFFF0000u, lo, hi);
}

struct k4z_row {
    __m512i sc[4]; /* chunk k: scale 2k in int16 lanes 0-15, scale 2k+1 in 16-31 */
    __m128i mins;  /* 8 mins as int16 */
    float d, dmin;
};

INLINE void k4z_row_load(struct k4z_row *r, const uint8_t *packed, uint16_t d, uint16_t dmin) {
    uint32_t u[4];
    memcpy(u, packed, 12);
    u[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
    const uint32_t mins_lo = u[1] & 0x3f3f3f3fu;
    u[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
    u[2] = mins_lo;
    u[0] &= 0x3f3f3f3fu;
    const __m256i sm =
        _mm256_cvtepu8_epi16(_mm_set_epi32((int)u[3], (int)u[2], (int)u[1], (int)u[0]));
    r->mins = _mm256_extracti128_si256(sm, 1);
    UNROLL for (int k = 0; k < 4; k++) {
        r->sc[k] =
            _mm512_permutexvar_epi16(idx_halves(2 * k, 2 * k + 1), _mm512_castsi256_si512(sm));
    }
    r->d = _cvtsh_ss(d);
    r->dmin = _cvtsh_ss(dmin);
}

/* Levels of chunk k (64 elements) as bytes in element order. */
INLINE __m512i q4kz_levels(const struct block_q4_k *bw, int k) {
    const __m256i bits = _mm256_loadu_si256((const __m256i *)(bw->qs + 32 * k));
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(bits), _mm256_srli_epi16(bits, 4), 1);
    return _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
}

INLINE __m512i q5kz_levels(const struct block_q5_k *bw, int k) {
    const __m256i bits = _mm256_loadu_si256((const __m256i *)(bw->qs + 32 * k));
    const __m256i hb = _mm256_loadu_si256((const __m256i *)bw->qh);
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(bits), _mm256_srli_epi16(bits, 4), 1);
    __m512i h = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_srli_epi16(hb, 2 * k)),
                                   _mm256_srli_epi16(hb, 2 * k + 1), 1);
    h = _mm512_slli_epi16(_mm512_and_si512(h, _mm512_set1_epi8(1)), 4);
    return _mm512_or_si512(_mm512_and_si512(v, _mm512_set1_epi8(0x0F)), h);
}

INLINE __m128i q8k_sums32(const struct block_q8_k *ba) {
    const __m256i s = _mm256_loadu_si256((const __m256i *)ba->bsums);
    return _mm_hadd_epi16(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

INLINE float hsum_ps128(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define DEFINE_K4Z_TILE(NAME, BLOCK, LEVELS)                                                       \
    INLINE void tile_##NAME(int RM, int RN, TILE_ARGS) {                                           \
        __m512 acc[4][4];                                                                          \
        __m128 accm[4][4];                                                                         \
        UNROLL for (int i = 0; i < RM; i++) {                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                acc[i][j] = _mm512_setzero_ps();                                                   \
                accm[i][j] = _mm_setzero_ps();                                                     \
            }                                                                                      \
        }                                                                                          \
        const int64_t nb = cols / QK_K;                                                            \
        for (int64_t b = 0; b < nb; b++) {                                                         \
            struct k4z_row kr[4];                                                                  \
            const struct BLOCK *bw[4];                                                             \
            const struct block_q8_k *ba[4];                                                        \
            UNROLL for (int i = 0; i < RM; i++) {                                                  \
                bw[i] = (const struct BLOCK *)(w + i * w_row) + b;                                 \
                k4z_row_load(&kr[i], bw[i]->scales, bw[i]->d, bw[i]->dmin);                        \
            }                                                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                ba[j] = (const struct block_q8_k *)(a + j * a_row) + b;                            \
            }                                                                                      \
            __m512i sumi[4][4];                                                                    \
            UNROLL for (int i = 0; i < RM; i++) {                                                  \
                UNROLL for (int j = 0; j < RN; j++) {                                              \
                    sumi[i][j] = _mm512_setzero_si512();                                           \
                }                                                                                  \
            }                                                                                      \
            UNROLL for (int k = 0; k < 4; k++) {                                                   \
                __m512i wz[4];                                                                     \
                UNROLL for (int i = 0; i < RM; i++) {                                              \
                    wz[i] = LEVELS(bw[i], k);                                                      \
                }                                                                                  \
                UNROLL for (int j = 0; j < RN; j++) {                                              \
                    const __m512i xz = _mm512_loadu_si512(ba[j]->qs + 64 * k);                     \
                    UNROLL for (int i = 0; i < RM; i++) {                                          \
                        __m512i p =                                                                \
                            _mm512_madd_epi16(_mm512_maddubs_epi16(wz[i], xz), kr[i].sc[k]);       \
                        sumi[i][j] = _mm512_add_epi32(sumi[i][j], p);                              \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                const __m128i s32 = q8k_sums32(ba[j]);                                             \
                UNROLL for (int i = 0; i < RM; i++) {                                              \
                    const __m128i pm = _mm_madd_epi16(kr[i].mins, s32);                            \
                    acc[i][j] = _mm512_fmadd_ps(_mm512_set1_ps(kr[i].d * ba[j]->d),                \
                                                _mm512_cvtepi32_ps(sumi[i][j]), acc[i][j]);        \
                    accm[i][j] = _mm_fmadd_ps(_mm_set1_ps(-kr[i].dmin * ba[j]->d),                 \
                                              _mm_cvtepi32_ps(pm), accm[i][j]);                    \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        UNROLL for (int i = 0; i < RM; i++) {                                                      \
            UNROLL for (int j = 0; j < RN; j++) {                                                  \
                y[j * ldy + i] = _mm512_reduce_add_ps(acc[i][j]) + hsum_ps128(accm[i][j]);         \
            }                                                                                      \
        }                                                                                          \
    }

DEFINE_K4Z_TILE(q4_k, block_q4_k, q4kz_levels)
DEFINE_K4Z_TILE(q5_k, block_q5_k, q5kz_levels)
DEFINE_GEMM(q4_k, 4, 4)
DEFINE_GEMM(q5_k, 4, 4)

/* Q6_K: levels 0..63 of half h as two 64-element chunks; the -32 offset is taken off
 * with the activation's 16-element sums, as in the AVX2 kernel. */
INLINE void q6kz_levels(const struct block_q6_k *bw, int h, __m512i *q01, __m512i *q23) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(3);
    const __m512i l = _mm512_loadu_si512(bw->ql + 64 * h);
    const __m256i hb = _mm256_loadu_si256((const __m256i *)(bw->qh + 32 * h));
    const __m512i hz = _mm512_inserti64x4(_mm512_castsi256_si512(hb), _mm256_srli_epi16(hb, 2), 1);
    *q01 = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_slli_epi16(_mm512_and_si512(hz, m2), 4));
    *q23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                           _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hz, 4), m2), 4));
}

INLINE void tile_q6_k(int RM, int RN, TILE_ARGS) {
    __m512 acc[4][4];
    UNROLL for (int i = 0; i < RM; i++) {
        UNROLL for (int j = 0; j < RN; j++) {
            acc[i][j] = _mm512_setzero_ps();
        }
    }
    const int64_t nb = cols / QK_K;
    for (int64_t b = 0; b < nb; b++) {
        const struct block_q6_k *bw[4];
        const struct block_q8_k *ba[4];
        __m256i scales[4];
        UNROLL for (int i = 0; i < RM; i++) {
            bw[i] = (const struct block_q6_k *)(w + i * w_row) + b;
            scales[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)bw[i]->scales));
        }
        UNROLL for (int j = 0; j < RN; j++) {
            ba[j] = (const struct block_q8_k *)(a + j * a_row) + b;
        }
        __m512i sumi[4][4];
        UNROLL for (int i = 0; i < RM; i++) {
            UNROLL for (int j = 0; j < RN; j++) {
                sumi[i][j] = _mm512_setzero_si512();
            }
        }
        UNROLL for (int h = 0; h < 2; h++) {
            __m512i q01[4], q23[4], s01[4], s23[4];
            UNROLL for (int i = 0; i < RM; i++) {
                q6kz_levels(bw[i], h, &q01[i], &q23[i]);
                const __m512i sz = _mm512_castsi256_si512(scales[i]);
                s01[i] = _mm512_permutexvar_epi16(
                    idx_quarters(8 * h, 8 * h + 1, 8 * h + 2, 8 * h + 3), sz);
                s23[i] = _mm512_permutexvar_epi16(
                    idx_quarters(8 * h + 4, 8 * h + 5, 8 * h + 6, 8 * h + 7), sz);
            }
            UNROLL for (int j = 0; j < RN; j++) {
                const __m512i x01 = _mm512_loadu_si512(ba[j]->qs + 128 * h);
                const __m512i x23 = _mm512_loadu_si512(ba[j]->qs + 128 * h + 64);
                UNROLL for (int i = 0; i < RM; i++) {
                    __m512i p0 = _mm512_madd_epi16(_mm512_maddubs_epi16(q01[i], x01), s01[i]);
                    __m512i p1 = _mm512_madd_epi16(_mm512_maddubs_epi16(q23[i], x23), s23[i]);
                    sumi[i][j] = _mm512_add_epi32(sumi[i][j], _mm512_add_epi32(p0, p1));
                }
            }
        }
        UNROLL for (int j = 0; j < RN; j++) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)ba[j]->bsums);
            UNROLL for (int i = 0; i < RM; i++) {
                __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(scales[i], bs), 5);
                __m512i s = _mm512_sub_epi32(sumi[i][j], _mm512_zextsi256_si512(off));
                acc[i][j] = _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(bw[i]->d) * ba[j]->d),
                                            _mm512_cvtepi32_ps(s), acc[i][j]);
            }
        }
    }
    UNROLL for (int i = 0; i < RM; i++) {
        UNROLL for (int j = 0; j < RN; j++) {
            y[j * ldy + i] = _mm512_reduce_add_ps(acc[i][j]);
        }
    }
}

DEFINE_GEMM(q6_k, 4, 2)

/* ---- Table ------------------------------------------------------------------------------ */

void mc_quant_kernels_avx512(struct quant_kernels *k) {
    k->convert[QKIND_Q8_0] = conv_pairs_q8_0;
    k->convert[QKIND_Q4_0] = conv_pairs_q4_0;
    k->gemm[QKIND_Q8_0] = gemm_q8_0;
    k->gemm[QKIND_Q4_0] = gemm_q4_0;
    k->convert[QKIND_Q8_0_PACKED] = conv_groups_q8_0;
    k->convert[QKIND_Q4_0_PACKED] = conv_groups_q4_0;
    k->gemm[QKIND_Q8_0_PACKED] = gemm_q8_0_packed;
    k->gemm[QKIND_Q4_0_PACKED] = gemm_q4_0_packed;
    k->gemm[QKIND_Q4_K] = gemm_q4_k;
    k->gemm[QKIND_Q5_K] = gemm_q5_k;
    k->gemm[QKIND_Q6_K] = gemm_q6_k;
}

#if defined(__clang__)
#pragma clang attribute pop
#endif
