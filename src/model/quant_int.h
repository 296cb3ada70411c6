/* quant_int.h - what quant.c, quant_avx2.c and quant_avx512.c share: the ggml block
 * layouts, the kernel table each instruction set fills in, and the small scalar helpers
 * the SIMD files reuse. Other modules use quant.h only. */
#ifndef MC_QUANT_INT_H
#define MC_QUANT_INT_H

#include "model/quant.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- Block layouts (byte-exact with ggml) ---------------------------------------- */

#define QK4_0        32
#define QK8_0        32
#define QK_K         256
#define K_SCALE_SIZE 12

struct block_q4_0 {
    uint16_t d;            /* fp16 scale */
    uint8_t qs[QK4_0 / 2]; /* element j in the low nibble of qs[j], j + 16 in the high */
};

struct block_q8_0 {
    uint16_t d; /* fp16 scale */
    int8_t qs[QK8_0];
};

struct block_q4_k {
    uint16_t d;                   /* fp16 super-block scale of the 6-bit scales */
    uint16_t dmin;                /* fp16 super-block scale of the 6-bit mins */
    uint8_t scales[K_SCALE_SIZE]; /* 8 scales and 8 mins, 6 bits each, packed */
    uint8_t qs[QK_K / 2];         /* 4-bit quants, 64 elements per 32 bytes */
};

struct block_q5_k {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8]; /* fifth bits */
    uint8_t qs[QK_K / 2]; /* low 4 bits */
};

struct block_q6_k {
    uint8_t ql[QK_K / 2];     /* low 4 bits */
    uint8_t qh[QK_K / 4];     /* high 2 bits */
    int8_t scales[QK_K / 16]; /* one 8-bit scale per 16 elements */
    uint16_t d;               /* fp16 super-block scale */
};

/* The activation side of the K-quant dot products. */
struct block_q8_k {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16]; /* sums of each 16 quants */
};

/* Activations of Q8_0/Q4_0 products as the AVX-512 kernels read them: two Q8_0 blocks
 * (b0, b1) per entry, laid out so one vpdpbusd with the weights' unsigned bytes gives
 * the block dots in 16 int32 lanes. Q4_0 weights enter as their levels 0..15, so each
 * block's first lane starts from -8 times the block's quant sum (corr) and the integer
 * result equals the signed dot exactly; Q8_0 weights enter as magnitudes with the signs
 * moved to the activations, and corr is 0. Q8_0 keeps each block's 32 quants together
 * (lanes 0-7 b0, 8-15 b1); Q4_0 interleaves halves [b0 0-15, b1 0-15, b0 16-31,
 * b1 16-31] to match its nibble unpacking. d holds each lane's block scale. A missing b1
 * (odd block count) is all zeros. */
struct q8_pair {
    int8_t qs[64];
    int32_t corr[16];
    float d[16];
};

/* Activations of products with packed Q8_0/Q4_0 weights (quant.h, "Packed weights") as
 * the AVX-512 kernels read them: 16 Q8_0 blocks per group, one block per 32-bit lane.
 * qs[k] holds quants 4k..4k+3 of each block in its lane, so one vpdpbusd with slice k of
 * the weights adds four products of every block into that block's lane, and after the
 * eight slices each lane holds one whole block dot. The weights enter as unsigned bytes
 * (Q4_0 levels 0..15, Q8_0 quants + 128), so corr starts each lane from -bias times the
 * block's quant sum (bias 8 or 128): the integer lane then equals the signed block dot
 * exactly, before any float rounding. d holds each block's scale; missing blocks of the
 * last group are all zeros. */
enum { PACK_GROUP = 16, PACK_SLICES = 8 };

struct q8_group {
    int8_t qs[PACK_SLICES][64];
    int32_t corr[PACK_GROUP];
    float d[PACK_GROUP];
};

/* Where a packed row keeps block b: the group starts at (b / 16) * 16 blocks' bytes,
 * holds n (16, or fewer in the last group) fp16 scales, then slices of 4 * n bytes
 * (4 for Q4_0: bytes 4k..4k+3 of qs; 8 for Q8_0: quants 4k..4k+3, + 128). */
static inline int64_t pack_group_n(int64_t nb, int64_t b) {
    int64_t g0 = b / PACK_GROUP * PACK_GROUP;
    return nb - g0 < PACK_GROUP ? nb - g0 : PACK_GROUP;
}

_Static_assert(sizeof(struct q8_group) == 640, "q8_group size");
_Static_assert(sizeof(struct block_q4_0) == 18, "block_q4_0 size");
_Static_assert(sizeof(struct block_q8_0) == 34, "block_q8_0 size");
_Static_assert(sizeof(struct block_q4_k) == 144, "block_q4_k size");
_Static_assert(sizeof(struct block_q5_k) == 176, "block_q5_k size");
_Static_assert(sizeof(struct block_q6_k) == 210, "block_q6_k size");
_Static_assert(sizeof(struct block_q8_k) == 292, "block_q8_k size");

/* ---- Kernel table ---------------------------------------------------------------- */

/* The weight types mc_matmul computes with, as a dense index into the kernel tables. */
enum quant_kind {
    QKIND_F32,
    QKIND_F16,
    QKIND_BF16,
    QKIND_Q8_0,
    QKIND_Q4_0,
    QKIND_Q4_K,
    QKIND_Q5_K,
    QKIND_Q6_K,
    QKIND_Q8_0_PACKED, /* the layouts of quant.h's "Packed weights" */
    QKIND_Q4_0_PACKED,
    QKIND_COUNT
};

struct quant_prefetch;

/* Converts one activation row of cols floats into the weight type's vec_dot type. */
typedef void (*quant_convert_fn)(const float *x, void *dst, int64_t cols);

/* y[t * ldy + r] = dot(row r of w, row t of a) for r < n_rows and t < n_tok, w rows
 * being w_row bytes apart and activation rows a_row bytes apart. Every (r, t) result
 * must be computed by the same sequence of operations whatever n_rows and n_tok are, so
 * that a batched call equals separate calls bit for bit. pf (may be NULL) is memory to
 * prefetch while the tiles run (struct quant_prefetch); it never changes the results. */
typedef void (*quant_gemm_fn)(int64_t cols, const void *w, size_t w_row, int64_t n_rows,
                              const void *a, size_t a_row, int64_t n_tok, float *y, int64_t ldy,
                              struct quant_prefetch *pf);

/* A thread's share of the memory a caller will read after a product (mc_matmul_prefetch):
 * its spans, walked a few cache lines per tile of the product. NULL where there is
 * nothing to prefetch. */
struct quant_prefetch {
    const struct mc_span *span, *end; /* the span being walked; the end of the share */
    const char *p, *stop;             /* next line and end of *span */
    int64_t lines;                    /* lines in the whole share */
    int64_t per_tile;                 /* lines per tile, set by quant_prefetch_begin */
};

enum { QUANT_LINE = 64, QUANT_PREFETCH_LOCALITY = 2 };

/* Spreads pf's lines over the product's tiles. */
static inline void quant_prefetch_begin(struct quant_prefetch *pf, int64_t tiles) {
    if (pf)
        pf->per_tile = tiles > 0 ? (pf->lines + tiles - 1) / tiles : 0;
}

/* The slow path of quant_prefetch_tile: n lines across span ends (quant.c). */
void quant_prefetch_lines(struct quant_prefetch *pf, int64_t n);

/* One tile's worth of lines, into L2 (prefetcht1): measured against the other hints on
 * the 768-wide model with 32 adapters, it slowed the product least for the same gain in
 * the hook (prefetcht0 also fills L1, which the product's tiles live in). */
static inline void quant_prefetch_tile(struct quant_prefetch *pf) {
    if (!pf || pf->per_tile == 0)
        return;
    int64_t n = pf->per_tile;
    if (pf->stop - pf->p < n * QUANT_LINE) {
        quant_prefetch_lines(pf, n);
        return;
    }
    for (int64_t i = 0; i < n; i++)
        __builtin_prefetch(pf->p + i * QUANT_LINE, 0, QUANT_PREFETCH_LOCALITY);
    pf->p += n * QUANT_LINE;
}

struct quant_kernels {
    quant_convert_fn convert[QKIND_COUNT];
    quant_gemm_fn gemm[QKIND_COUNT];
};

/* Fill in the entries each instruction set implements, leaving the others untouched
 * (they keep the portable or narrower kernel). Only call after a CPU check. */
void mc_quant_kernels_avx2(struct quant_kernels *k);
void mc_quant_kernels_avx512(struct quant_kernels *k);

/* ---- Tile drivers (shared by the SIMD files) ------------------------------------- */

/* Declares gemm_NAME from tile_NAME(RM, RN, ...): TR x TT tiles for batches, narrower
 * tiles on the edges. Fewer than TT tokens (decoding one or a few sequences) go row after
 * row, two tokens per tile: one sequential stream through the weights is what the
 * hardware prefetchers follow best (measured 2.5x faster than interleaving four rows for
 * one token), and each row is read once per two tokens. */
#define DEFINE_GEMM(NAME, TR, TT)                                                                  \
    static __attribute__((noinline)) void tile_##NAME##_1x1(TILE_ARGS) {                           \
        tile_##NAME(1, 1, TILE_PASS);                                                              \
    }                                                                                              \
    static __attribute__((noinline)) void tile_##NAME##_1x2(TILE_ARGS) {                           \
        tile_##NAME(1, 2, TILE_PASS);                                                              \
    }                                                                                              \
    static __attribute__((noinline)) void tile_##NAME##_big(TILE_ARGS) {                           \
        tile_##NAME(TR, TT, TILE_PASS);                                                            \
    }                                                                                              \
    static __attribute__((noinline)) void tile_##NAME##_1xT(TILE_ARGS) {                           \
        tile_##NAME(1, TT, TILE_PASS);                                                             \
    }                                                                                              \
    static void gemm_##NAME(int64_t cols, const void *w, size_t w_row, int64_t n_rows,             \
                            const void *a, size_t a_row, int64_t n_tok, float *y, int64_t ldy,     \
                            struct quant_prefetch *pf) {                                           \
        const uint8_t *wb = w, *ab = a;                                                            \
        if (n_tok < TT) {                                                                          \
            for (int64_t r = 0; r < n_rows; r++) {                                                 \
                int64_t t = 0;                                                                     \
                for (; t + 2 <= n_tok; t += 2)                                                     \
                    tile_##NAME##_1x2(cols, wb + r * w_row, w_row, ab + t * a_row, a_row,          \
                                      y + t * ldy + r, ldy);                                       \
                for (; t < n_tok; t++)                                                             \
                    tile_##NAME##_1x1(cols, wb + r * w_row, w_row, ab + t * a_row, a_row,          \
                                      y + t * ldy + r, ldy);                                       \
            }                                                                                      \
            return;                                                                                \
        }                                                                                          \
        int64_t r = 0;                                                                             \
        quant_prefetch_begin(pf, (n_rows / TR) * (n_tok / TT));                                    \
        for (; r + TR <= n_rows; r += TR) {                                                        \
            int64_t t = 0;                                                                         \
            for (; t + TT <= n_tok; t += TT) {                                                     \
                tile_##NAME##_big(cols, wb + r * w_row, w_row, ab + t * a_row, a_row,              \
                                  y + t * ldy + r, ldy);                                           \
                quant_prefetch_tile(pf);                                                           \
            }                                                                                      \
            for (; t < n_tok; t++)                                                                 \
                for (int64_t i = 0; i < TR; i++)                                                   \
                    tile_##NAME##_1x1(cols, wb + (r + i) * w_row, w_row, ab + t * a_row, a_row,    \
                                      y + t * ldy + r + i, ldy);                                   \
        }                                                                                          \
        for (; r < n_rows; r++) {                                                                  \
            int64_t t = 0;                                                                         \
            for (; t + TT <= n_tok; t += TT)                                                       \
                tile_##NAME##_1xT(cols, wb + r * w_row, w_row, ab + t * a_row, a_row,              \
                                  y + t * ldy + r, ldy);                                           \
            for (; t < n_tok; t++)                                                                 \
                tile_##NAME##_1x1(cols, wb + r * w_row, w_row, ab + t * a_row, a_row,              \
                                  y + t * ldy + r, ldy);                                           \
        }                                                                                          \
    }

/* Arguments of every tile function: y[j * ldy + i] = dot(w row i, a row j). */
#define TILE_ARGS                                                                                  \
    int64_t cols, const uint8_t *w, size_t w_row, const uint8_t *a, size_t a_row, float *y,        \
        int64_t ldy
#define TILE_PASS cols, w, w_row, a, a_row, y, ldy

/* ---- Scalar helpers -------------------------------------------------------------- */

static inline uint32_t quant_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static inline float quant_f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* ggml's nearest_int: round to nearest, ties to even, for |f| < 2^22. */
static inline int quant_nearest_int(float f) {
    float v = f + 12582912.f;
    int i;
    memcpy(&i, &v, sizeof(i));
    return (i & 0x007fffff) - 0x00400000;
}

/* Unpacks the 12 bytes of Q4_K/Q5_K scales into 8 scales and 8 mins (ggml's
 * get_scale_min_k4 for j = 0..7). */
static inline void quant_unpack_k4(const uint8_t *q, uint8_t *sc, uint8_t *mn) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            sc[j] = q[j] & 63;
            mn[j] = q[j + 4] & 63;
        } else {
            sc[j] = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
            mn[j] = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
        }
    }
}

#endif
