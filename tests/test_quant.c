/* test_quant.c - tensor types, half-precision conversion, quantize/dequantize round trips,
 * the matmul kernels against a double-precision reference, batched against single-token
 * calls, and every SIMD kernel set against the portable one.
 *
 * Tolerances are stated next to each check. Activations in the reference comparisons are
 * chosen so that their conversion to the vec_dot type is exact (integers in [-127, 127]
 * with a 127 in every block, or values exact in fp16/bf16); the only error left is then
 * float accumulation, which is bounded relative to sum |w_i * x_i|. */
#include "base/pool.h"
#include "model/gguf.h"
#include "model/quant.h"
#include "test_util.h"

#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- Helpers ------------------------------------------------------------------------ */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rng_u32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

/* Uniform in [-1, 1). */
static float rng_uniform(void) {
    return (float)rng_u32() / 2147483648.0f - 1.0f;
}

/* Roughly normal (sum of four uniforms), scaled; weights of real models look like this. */
static float rng_normal(float scale) {
    return (rng_uniform() + rng_uniform() + rng_uniform() + rng_uniform()) * 0.866f * scale;
}

static const enum mc_type ALL_TYPES[] = {MC_TYPE_F32,  MC_TYPE_F16,  MC_TYPE_BF16, MC_TYPE_Q8_0,
                                         MC_TYPE_Q4_0, MC_TYPE_Q4_K, MC_TYPE_Q5_K, MC_TYPE_Q6_K};
#define N_TYPES (sizeof(ALL_TYPES) / sizeof(ALL_TYPES[0]))

static bool is_k_quant(enum mc_type t) {
    return t == MC_TYPE_Q4_K || t == MC_TYPE_Q5_K || t == MC_TYPE_Q6_K;
}

/* Activations whose conversion to t's vec_dot type is exact: integers with a +-127 in
 * every block for the quantized types, multiples of 1/4 in [-8, 8] for F16/BF16/F32. */
static void fill_exact_activations(enum mc_type t, float *x, int64_t n) {
    int64_t blk = is_k_quant(t) ? 256 : 32;
    bool quantized = t == MC_TYPE_Q8_0 || t == MC_TYPE_Q4_0 || is_k_quant(t);
    for (int64_t i = 0; i < n; i++) {
        if (quantized)
            x[i] = (float)((int)(rng_u32() % 255) - 127);
        else
            x[i] = (float)((int)(rng_u32() % 65) - 32) / 4.0f;
    }
    if (quantized)
        for (int64_t b = 0; b < n; b += blk)
            x[b + (rng_u32() % blk)] = (rng_u32() & 1) ? 127.0f : -127.0f;
}

/* A quantized (rows, cols) matrix of type t from random normal weights. */
static uint8_t *make_matrix(enum mc_type t, int64_t rows, int64_t cols, float *deq) {
    size_t rs = mc_type_row_size(t, cols);
    uint8_t *w = malloc(rs * (size_t)rows);
    float *row = malloc((size_t)cols * sizeof(float));
    assert_non_null(w);
    assert_non_null(row);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++)
            row[c] = rng_normal(0.05f);
        assert_int_equal(mc_quantize_row(t, row, w + (size_t)r * rs, cols, NULL), MC_OK);
        if (deq)
            assert_int_equal(mc_dequantize_row(t, w + (size_t)r * rs, deq + r * cols, cols, NULL),
                             MC_OK);
    }
    free(row);
    return w;
}

/* When set, the matmul tests run on packed weights (quant.h, "Packed weights"): Q8_0
 * and Q4_0 only, the other types are skipped (see in_mode). */
static bool packed_mode;

static bool has_packed(enum mc_type t) {
    return t == MC_TYPE_Q8_0 || t == MC_TYPE_Q4_0;
}

static bool in_mode(enum mc_type t) {
    return !packed_mode || has_packed(t);
}

/* mc_matmul of the GGUF rows w at a kernel level; in packed mode, mc_matmul_packed of a
 * packed copy of them. */
static int matmul_at(enum mc_simd level, enum mc_type t, const void *w, int64_t rows, int64_t cols,
                     const float *x, int64_t n_tok, float *y, struct mc_pool *pool) {
    enum mc_simd saved = mc_simd_get();
    mc_simd_set(level);
    size_t ws = mc_matmul_work_size(t, cols, n_tok);
    void *work = malloc(ws ? ws : 1);
    struct mc_err err = {0};
    int rc;
    if (packed_mode && has_packed(t)) {
        size_t bytes = mc_type_row_size(t, cols) * (size_t)rows;
        void *p = malloc(bytes);
        assert_non_null(p);
        assert_int_equal(mc_pack_rows(t, w, p, rows, cols, NULL), MC_OK);
        rc = mc_matmul_packed(t, p, rows, cols, x, n_tok, y, work, pool, &err);
        free(p);
    } else {
        rc = mc_matmul(t, w, rows, cols, x, n_tok, y, work, pool, &err);
    }
    free(work);
    mc_simd_set(saved);
    return rc;
}

/* ---- Type table ----------------------------------------------------------------------- */

static void test_type_table_sizes_and_names(void **state) {
    (void)state;
    assert_int_equal(mc_type_block_size(MC_TYPE_Q4_0), 32);
    assert_int_equal(mc_type_block_bytes(MC_TYPE_Q4_0), 18);
    assert_int_equal(mc_type_block_bytes(MC_TYPE_Q8_0), 34);
    assert_int_equal(mc_type_block_bytes(MC_TYPE_Q4_K), 144);
    assert_int_equal(mc_type_block_bytes(MC_TYPE_Q5_K), 176);
    assert_int_equal(mc_type_block_bytes(MC_TYPE_Q6_K), 210);
    assert_int_equal(mc_type_block_size(MC_TYPE_Q6_K), 256);
    assert_int_equal(mc_type_row_size(MC_TYPE_F16, 768), 1536);
    assert_int_equal(mc_type_row_size(MC_TYPE_Q8_0, 768), 24 * 34);
    assert_int_equal(mc_type_row_size(MC_TYPE_Q4_K, 768), 3 * 144);
    assert_int_equal(mc_type_row_size(MC_TYPE_Q4_K, 100), 0);
    assert_int_equal(mc_type_row_size((enum mc_type)5, 32), 0);
    assert_string_equal(mc_type_name(MC_TYPE_BF16), "BF16");
    assert_string_equal(mc_type_name(MC_TYPE_Q5_K), "Q5_K");
    assert_string_equal(mc_type_name((enum mc_type)39), "unknown");
    assert_true(mc_type_is_supported(MC_TYPE_Q6_K));
    assert_false(mc_type_is_supported(MC_TYPE_Q4_1));
    assert_false(mc_type_is_supported(MC_TYPE_Q8_K));

    enum mc_type t = MC_TYPE_F32;
    assert_int_equal(mc_type_from_name("q8_0", &t), MC_OK);
    assert_int_equal(t, MC_TYPE_Q8_0);
    assert_int_equal(mc_type_from_name("Q4_k", &t), MC_OK);
    assert_int_equal(t, MC_TYPE_Q4_K);
    assert_int_equal(mc_type_from_name("q9_0", &t), MC_EINVAL);
}

/* ---- Half precision ------------------------------------------------------------------- */

static void test_fp16_known_values(void **state) {
    (void)state;
    assert_int_equal(mc_fp32_to_fp16(1.0f), 0x3C00);
    assert_int_equal(mc_fp32_to_fp16(-2.0f), 0xC000);
    assert_int_equal(mc_fp32_to_fp16(65504.0f), 0x7BFF); /* largest finite */
    assert_int_equal(mc_fp32_to_fp16(65519.0f), 0x7BFF); /* below the rounding midpoint */
    assert_int_equal(mc_fp32_to_fp16(65520.0f), 0x7C00); /* midpoint rounds to inf */
    assert_int_equal(mc_fp32_to_fp16(INFINITY), 0x7C00);
    assert_int_equal(mc_fp32_to_fp16(-INFINITY), 0xFC00);
    assert_int_equal(mc_fp32_to_fp16(0x1.0p-24f), 0x0001);        /* smallest subnormal */
    assert_int_equal(mc_fp32_to_fp16(0x1.0p-25f), 0x0000);        /* tie goes to even (zero) */
    assert_int_equal(mc_fp32_to_fp16(0x1.8p-24f), 0x0002);        /* tie goes to even (two) */
    assert_int_equal(mc_fp32_to_fp16(0x1.0p-14f), 0x0400);        /* smallest normal */
    assert_int_equal(mc_fp32_to_fp16(1.0f + 0x1.0p-11f), 0x3C00); /* tie to even */
    assert_int_equal(mc_fp32_to_fp16(1.0f + 0x1.8p-10f), 0x3C02); /* tie to even, upward */
    assert_int_equal(mc_fp32_to_fp16(-0.0f), 0x8000);
    assert_true((mc_fp32_to_fp16(NAN) & 0x7C00) == 0x7C00 && (mc_fp32_to_fp16(NAN) & 0x3FF));

    assert_true(mc_fp16_to_fp32(0x7BFF) == 65504.0f);
    assert_true(mc_fp16_to_fp32(0x0001) == 0x1.0p-24f);
    assert_true(mc_fp16_to_fp32(0x03FF) == 1023 * 0x1.0p-24f);
    assert_true(mc_fp16_to_fp32(0x7C00) == INFINITY);
    assert_true(mc_fp16_to_fp32(0xFC00) == -INFINITY);
    assert_true(isnan(mc_fp16_to_fp32(0x7E00)));
    assert_true(mc_fp16_to_fp32(0x3555) == 0x1.554p-2f);

    /* Every finite half survives the trip through fp32 unchanged. */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF))
            continue;
        assert_int_equal(mc_fp32_to_fp16(mc_fp16_to_fp32((uint16_t)h)), h);
    }
}

static void test_bf16_known_values(void **state) {
    (void)state;
    assert_int_equal(mc_fp32_to_bf16(1.0f), 0x3F80);
    assert_int_equal(mc_fp32_to_bf16(1.0f + 0x1.0p-8f), 0x3F80); /* tie to even */
    assert_int_equal(mc_fp32_to_bf16(1.0f + 0x1.8p-7f), 0x3F82); /* tie to even, upward */
    assert_int_equal(mc_fp32_to_bf16(-3.0f), 0xC040);
    assert_int_equal(mc_fp32_to_bf16(INFINITY), 0x7F80);
    assert_true(isnan(mc_bf16_to_fp32(mc_fp32_to_bf16(NAN))));
    assert_true(mc_bf16_to_fp32(0x3F80) == 1.0f);
    assert_true(mc_bf16_to_fp32(0xC2F7) == -123.5f);
}

/* ---- Known blocks ---------------------------------------------------------------------- */

static void test_q4_0_hand_built_block_decodes_exactly(void **state) {
    (void)state;
    uint8_t blk[18];
    uint16_t d = 0x3800; /* 0.5 */
    memcpy(blk, &d, 2);
    for (int j = 0; j < 16; j++)
        blk[2 + j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    assert_int_equal(mc_dequantize_row(MC_TYPE_Q4_0, blk, y, 32, NULL), MC_OK);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == (j - 8) * 0.5f);
        assert_true(y[16 + j] == (7 - j) * 0.5f);
    }
}

static void test_q8_0_hand_built_block_decodes_exactly(void **state) {
    (void)state;
    uint8_t blk[34];
    uint16_t d = 0x3400; /* 0.25 */
    memcpy(blk, &d, 2);
    for (int j = 0; j < 32; j++)
        blk[2 + j] = (uint8_t)(int8_t)(j * 8 - 128);
    float y[32];
    assert_int_equal(mc_dequantize_row(MC_TYPE_Q8_0, blk, y, 32, NULL), MC_OK);
    for (int j = 0; j < 32; j++)
        assert_true(y[j] == (j * 8 - 128) * 0.25f);
}

static void test_q4_k_hand_built_block_decodes_exactly(void **state) {
    (void)state;
    uint8_t blk[144] = {0};
    uint16_t d = 0x3C00, dmin = 0x3800; /* 1.0 and 0.5 */
    memcpy(blk, &d, 2);
    memcpy(blk + 2, &dmin, 2);
    uint8_t *sc = blk + 4, *qs = blk + 16;
    /* Sub-block j: scale j + 1 and min 2j + 1 (below 16 so only the low bytes are used
     * for j >= 4), plus one high bit on sub-block 7's scale (48 + 8 = 56). */
    for (int j = 0; j < 4; j++) {
        sc[j] = (uint8_t)(j + 1);
        sc[j + 4] = (uint8_t)(2 * j + 1);
    }
    for (int j = 4; j < 8; j++)
        sc[j + 4] = (uint8_t)((j + 1) | ((2 * j + 1) << 4));
    sc[3] |= 3 << 6; /* high bits of scale 7 */
    for (int i = 0; i < 128; i++)
        qs[i] = (uint8_t)((i % 16) | ((15 - i % 16) << 4));
    float y[256];
    assert_int_equal(mc_dequantize_row(MC_TYPE_Q4_K, blk, y, 256, NULL), MC_OK);
    for (int e = 0; e < 256; e++) {
        int j = e / 32, chunk = e / 64, l = e % 32;
        int q = (e % 64) < 32 ? qs[chunk * 32 + l] & 0xF : qs[chunk * 32 + l] >> 4;
        int s = j == 7 ? 8 + 48 : j + 1;
        float expect = 1.0f * s * q - 0.5f * (2 * j + 1);
        assert_true(y[e] == expect);
    }
}

/* The 6-bit scale and min of sub-block j from the 12 packed bytes of Q4_K and Q5_K. */
static void k4_scale_min(const uint8_t *sc, int j, int *scale, int *min) {
    if (j < 4) {
        *scale = sc[j] & 63;
        *min = sc[j + 4] & 63;
    } else {
        *scale = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
        *min = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
    }
}

/* Q5_K: d, dmin, 12 scale bytes, 32 bytes of fifth bits, 128 bytes of nibbles. Chunk c
 * (64 elements) takes the low nibbles of qs[32c..] with fifth bit 2c of qh for its first
 * 32 elements, the high nibbles with bit 2c + 1 for the next 32. */
static void test_q5_k_hand_built_block_decodes_exactly(void **state) {
    (void)state;
    uint8_t blk[176] = {0};
    uint16_t d = 0x3C00, dmin = 0x3800; /* 1.0 and 0.5 */
    memcpy(blk, &d, 2);
    memcpy(blk + 2, &dmin, 2);
    uint8_t *sc = blk + 4, *qh = blk + 16, *qs = blk + 48;
    for (int i = 0; i < 12; i++)
        sc[i] = (uint8_t)(i * 29 + 7); /* high bits set in several scales and mins */
    for (int i = 0; i < 32; i++)
        qh[i] = (uint8_t)(i * 53 + 3);
    for (int i = 0; i < 128; i++)
        qs[i] = (uint8_t)(i * 37 + 11);
    float y[256];
    assert_int_equal(mc_dequantize_row(MC_TYPE_Q5_K, blk, y, 256, NULL), MC_OK);
    for (int e = 0; e < 256; e++) {
        int c = e / 64, l = e % 32, hi = (e % 64) >= 32, j = e / 32, scale, min;
        k4_scale_min(sc, j, &scale, &min);
        int q = (hi ? qs[32 * c + l] >> 4 : qs[32 * c + l] & 0xF) +
                (((qh[l] >> (2 * c + hi)) & 1) << 4);
        float expect = 1.0f * (float)scale * (float)q - 0.5f * (float)min;
        if (y[e] != expect)
            fail_msg("element %d: %g, expected %g", e, y[e], expect);
    }
}

/* Q6_K: 128 bytes of low nibbles, 64 of 2-bit high parts, 16 signed scales, d. Half h
 * (128 elements) uses ql[64h..], qh[32h..] and scales[8h..]; within it element
 * 32k + l takes nibble (k >= 2) of ql[l + 32 (k & 1)] and bits 2k..2k+1 of qh[l], minus
 * 32, times scale[l / 16 + 2k]. */
static void test_q6_k_hand_built_block_decodes_exactly(void **state) {
    (void)state;
    uint8_t blk[210] = {0};
    uint8_t *ql = blk, *qh = blk + 128;
    int8_t *sc = (int8_t *)(blk + 192);
    uint16_t d = 0x3800; /* 0.5 */
    memcpy(blk + 208, &d, 2);
    for (int i = 0; i < 128; i++)
        ql[i] = (uint8_t)(i * 37 + 11);
    for (int i = 0; i < 64; i++)
        qh[i] = (uint8_t)(i * 53 + 3);
    for (int i = 0; i < 16; i++)
        sc[i] = (int8_t)(i * 9 - 70);
    float y[256];
    assert_int_equal(mc_dequantize_row(MC_TYPE_Q6_K, blk, y, 256, NULL), MC_OK);
    for (int e = 0; e < 256; e++) {
        int h = e / 128, k = (e % 128) / 32, l = e % 32;
        uint8_t lo = ql[64 * h + l + 32 * (k & 1)];
        int q = ((k >= 2 ? lo >> 4 : lo & 0xF) | (((qh[32 * h + l] >> (2 * k)) & 3) << 4)) - 32;
        float expect = 0.5f * (float)sc[8 * h + l / 16 + 2 * k] * (float)q;
        if (y[e] != expect)
            fail_msg("element %d: %g, expected %g", e, y[e], expect);
    }
}

/* ---- Round trips -------------------------------------------------------------------- */

/* Relative RMS error of quantize -> dequantize on normal data, per type; the bounds are
 * about 1.5x what the reference quantizers reach (measured: F16 0.00020, BF16 0.0016,
 * Q8_0 0.0050, Q4_0 0.083, Q4_K 0.069, Q5_K 0.035, Q6_K 0.017). */
static void test_round_trip_error_within_bounds(void **state) {
    (void)state;
    static const struct {
        enum mc_type t;
        double max_rel_rms;
    } CASES[] = {
        {MC_TYPE_F32, 0.0},   {MC_TYPE_F16, 0.0003}, {MC_TYPE_BF16, 0.0025}, {MC_TYPE_Q8_0, 0.0075},
        {MC_TYPE_Q4_0, 0.12}, {MC_TYPE_Q4_K, 0.10},  {MC_TYPE_Q5_K, 0.05},   {MC_TYPE_Q6_K, 0.025},
    };
    enum { N = 4096 };
    static float x[N], y[N];
    static uint8_t q[N * 4];
    for (int i = 0; i < N; i++)
        x[i] = rng_normal(1.0f);
    for (size_t c = 0; c < sizeof(CASES) / sizeof(CASES[0]); c++) {
        assert_int_equal(mc_quantize_row(CASES[c].t, x, q, N, NULL), MC_OK);
        assert_int_equal(mc_dequantize_row(CASES[c].t, q, y, N, NULL), MC_OK);
        double se = 0, sx = 0;
        for (int i = 0; i < N; i++) {
            se += (double)(x[i] - y[i]) * (x[i] - y[i]);
            sx += (double)x[i] * x[i];
        }
        double rel = sqrt(se / sx);
        if (rel > CASES[c].max_rel_rms)
            fail_msg("%s: relative RMS error %.5f > bound %.5f", mc_type_name(CASES[c].t), rel,
                     CASES[c].max_rel_rms);
    }
}

/* Q8_0 per element: |x - deq| <= d/2 plus what rounding d to fp16 can add (127 * d * 2^-11). */
static void test_q8_0_round_trip_per_element_bound(void **state) {
    (void)state;
    enum { N = 1024 };
    float x[N], y[N];
    uint8_t q[N / 32 * 34];
    for (int i = 0; i < N; i++)
        x[i] = rng_normal(3.0f);
    assert_int_equal(mc_quantize_row(MC_TYPE_Q8_0, x, q, N, NULL), MC_OK);
    assert_int_equal(mc_dequantize_row(MC_TYPE_Q8_0, q, y, N, NULL), MC_OK);
    for (int b = 0; b < N / 32; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        float d = amax / 127;
        for (int j = 0; j < 32; j++)
            assert_float_near(y[b * 32 + j], x[b * 32 + j], d * (0.5 + 127.0 / 2048) * 1.0001);
    }
}

/* Zero blocks stay zero and do not divide by zero. */
static void test_quantize_zero_row_gives_zeros(void **state) {
    (void)state;
    float x[256] = {0}, y[256];
    uint8_t q[256 * 4];
    for (size_t k = 0; k < N_TYPES; k++) {
        memset(y, 0xFF, sizeof(y));
        assert_int_equal(mc_quantize_row(ALL_TYPES[k], x, q, 256, NULL), MC_OK);
        assert_int_equal(mc_dequantize_row(ALL_TYPES[k], q, y, 256, NULL), MC_OK);
        for (int i = 0; i < 256; i++)
            assert_true(y[i] == 0.0f);
    }
}

static void test_bad_arguments_are_rejected_with_message(void **state) {
    (void)state;
    struct mc_err err = {0};
    float x[64] = {0}, y[64];
    uint8_t q[256];
    assert_int_equal(mc_quantize_row(MC_TYPE_Q4_1, x, q, 64, &err), MC_ENOTSUP);
    assert_non_null(strstr(err.msg, "Q4_1"));
    assert_int_equal(mc_dequantize_row(MC_TYPE_Q8_0, q, y, 33, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "33"));
    assert_int_equal(mc_matmul(MC_TYPE_Q5_0, q, 1, 32, x, 1, y, q, NULL, &err), MC_ENOTSUP);
    assert_non_null(strstr(err.msg, "Q5_0"));
    assert_int_equal(mc_matmul(MC_TYPE_Q4_K, q, 1, 64, x, 1, y, q, NULL, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "cols=64"));
    assert_int_equal(mc_matmul(MC_TYPE_Q8_0, q, 1, 32, x, 1, y, NULL, NULL, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "work"));
}

/* ---- Matmul against a double reference -------------------------------------------------- */

/* y of every kernel set against sum_c deq(W)[r][c] * x[t][c] computed in double, within
 * 2e-6 * sum |w * x| + 1e-7 (float accumulation only; the activations convert exactly,
 * see fill_exact_activations). */
static void check_against_reference(enum mc_type t, int rows, int cols, int ntok) {
    float *deq = malloc(sizeof(float) * (size_t)rows * (size_t)cols);
    float *x = malloc(sizeof(float) * (size_t)ntok * (size_t)cols);
    float *y = malloc(sizeof(float) * (size_t)ntok * (size_t)rows);
    assert_true(deq && x && y);
    uint8_t *w = make_matrix(t, rows, cols, deq);
    fill_exact_activations(t, x, (int64_t)ntok * cols);
    for (int level = 0; level <= (int)mc_simd_detect(); level++) {
        memset(y, 0, sizeof(float) * (size_t)ntok * (size_t)rows);
        assert_int_equal(matmul_at((enum mc_simd)level, t, w, rows, cols, x, ntok, y, NULL), MC_OK);
        for (int tk = 0; tk < ntok; tk++) {
            for (int r = 0; r < rows; r++) {
                double ref = 0, mag = 0;
                for (int c = 0; c < cols; c++) {
                    ref += (double)deq[r * cols + c] * x[tk * cols + c];
                    mag += fabs((double)deq[r * cols + c] * x[tk * cols + c]);
                }
                double got = y[tk * rows + r];
                if (!(fabs(got - ref) <= 2e-6 * mag + 1e-7))
                    fail_msg("%s cols=%d simd=%d row %d tok %d: %.9g vs reference %.9g",
                             mc_type_name(t), cols, level, r, tk, got, ref);
            }
        }
    }
    free(w);
    free(deq);
    free(x);
    free(y);
}

static void test_matmul_matches_double_reference(void **state) {
    (void)state;
    for (size_t k = 0; k < N_TYPES; k++)
        if (in_mode(ALL_TYPES[k]))
            check_against_reference(ALL_TYPES[k], 37, 768, 3);
}

/* Odd block counts (7 blocks of 32, 3 super-blocks of 256) and 5- and 6-token batches
 * exercise the tails of the paired and tiled kernels. F32 also gets a row length that is
 * not a multiple of 8. */
static void test_matmul_odd_shapes_match_reference(void **state) {
    (void)state;
    for (size_t k = 0; k < N_TYPES; k++) {
        enum mc_type t = ALL_TYPES[k];
        if (!in_mode(t))
            continue;
        check_against_reference(t, 9, is_k_quant(t) ? 768 : 224, 5);
        check_against_reference(t, 6, is_k_quant(t) ? 256 : 32, 6);
        check_against_reference(t, 5, is_k_quant(t) ? 512 : 544, 7); /* 17 blocks */
    }
    if (!packed_mode)
        check_against_reference(MC_TYPE_F32, 5, 13, 2);
}

/* Ordinary activations: Q8_0 weights times random x agree with the float product within
 * the activation quantization error (1% of sum |w * x|), on every kernel set. */
static void test_matmul_random_activations_close_to_float(void **state) {
    (void)state;
    enum { ROWS = 16, COLS = 512 };
    static float deq[ROWS * COLS], x[COLS], y[ROWS];
    static const enum mc_type TYPES[] = {MC_TYPE_Q8_0, MC_TYPE_Q4_0, MC_TYPE_Q4_K, MC_TYPE_Q6_K};
    for (size_t k = 0; k < 4; k++) {
        if (!in_mode(TYPES[k]))
            continue;
        uint8_t *w = make_matrix(TYPES[k], ROWS, COLS, deq);
        for (int c = 0; c < COLS; c++)
            x[c] = rng_normal(1.0f);
        for (int level = 0; level <= (int)mc_simd_detect(); level++) {
            assert_int_equal(matmul_at((enum mc_simd)level, TYPES[k], w, ROWS, COLS, x, 1, y, NULL),
                             MC_OK);
            for (int r = 0; r < ROWS; r++) {
                double ref = 0, mag = 0;
                for (int c = 0; c < COLS; c++) {
                    ref += (double)deq[r * COLS + c] * x[c];
                    mag += fabs((double)deq[r * COLS + c] * x[c]);
                }
                assert_float_near(y[r], ref, 0.01 * mag);
            }
        }
        free(w);
    }
}

/* All-zero activations (an all-zero Q8_K block takes its own branch in the conversion)
 * give exactly zero on every kernel set. */
static void test_matmul_zero_activations_give_zero(void **state) {
    (void)state;
    enum { ROWS = 8, COLS = 512, NTOK = 5 };
    static float x[NTOK * COLS], y[NTOK * ROWS];
    for (size_t k = 0; k < N_TYPES; k++) {
        if (!in_mode(ALL_TYPES[k]))
            continue;
        uint8_t *w = make_matrix(ALL_TYPES[k], ROWS, COLS, NULL);
        for (int level = 0; level <= (int)mc_simd_detect(); level++) {
            memset(y, 0xFF, sizeof(y));
            assert_int_equal(
                matmul_at((enum mc_simd)level, ALL_TYPES[k], w, ROWS, COLS, x, NTOK, y, NULL),
                MC_OK);
            for (int i = 0; i < NTOK * ROWS; i++)
                assert_true(y[i] == 0.0f);
        }
        free(w);
    }
}

/* ---- Batched equals separate --------------------------------------------------------- */

/* For every kernel set and type, one call with n_tok tokens gives exactly (bit for bit)
 * the results of n_tok one-token calls, with and without a 2-thread pool. */
static void test_matmul_batched_equals_single_calls_exactly(void **state) {
    (void)state;
    enum { ROWS = 53, COLS = 512, NTOK = 11 };
    static float x[NTOK * COLS], yb[NTOK * ROWS], ys[ROWS];
    struct mc_pool *pool = NULL;
    assert_int_equal(mc_pool_create(2, &pool, NULL), MC_OK);
    for (size_t k = 0; k < N_TYPES; k++) {
        enum mc_type t = ALL_TYPES[k];
        if (!in_mode(t))
            continue;
        const int cols = is_k_quant(t) ? COLS : COLS - 32; /* 15 blocks: an odd count */
        uint8_t *w = make_matrix(t, ROWS, cols, NULL);
        for (int i = 0; i < NTOK * cols; i++)
            x[i] = rng_normal(1.0f);
        /* 11 tokens: full tiles and a remainder; 3: the few-token path (pairs, then one). */
        for (int level = 0; level <= (int)mc_simd_detect(); level++) {
            for (int nt = NTOK; nt > 0; nt = nt == NTOK ? 3 : 0) {
                assert_int_equal(matmul_at((enum mc_simd)level, t, w, ROWS, cols, x, nt, yb, pool),
                                 MC_OK);
                for (int tk = 0; tk < nt; tk++) {
                    assert_int_equal(matmul_at((enum mc_simd)level, t, w, ROWS, cols, x + tk * cols,
                                               1, ys, tk % 2 ? pool : NULL),
                                     MC_OK);
                    if (memcmp(ys, yb + tk * ROWS, sizeof(ys)) != 0)
                        fail_msg("%s simd=%d: token %d of %d differs from a single call",
                                 mc_type_name(t), level, tk, nt);
                }
            }
        }
        free(w);
    }
    mc_pool_free(pool);
}

/* mc_matmul_prefetch gives mc_matmul's (or mc_matmul_packed's) results bit for bit,
 * whatever it is asked to prefetch: spans of odd sizes, empty ones (one with a NULL
 * pointer), more spans than threads and fewer. */
static void test_matmul_prefetch_same_results(void **state) {
    (void)state;
    enum { ROWS = 53, COLS = 480, NTOK = 11 };
    static float x[NTOK * COLS], want[NTOK * ROWS], got[NTOK * ROWS];
    static uint8_t bytes[3][20000];
    const struct mc_span spans[] = {{bytes[0], 1},    {NULL, 0},          {bytes[1], 20000},
                                    {bytes[2], 4097}, {bytes[0] + 64, 0}, {bytes[2] + 5, 900}};
    struct mc_pool *pool = NULL;
    assert_int_equal(mc_pool_create(2, &pool, NULL), MC_OK);
    const enum mc_type types[] = {MC_TYPE_Q4_0, MC_TYPE_Q8_0, MC_TYPE_F16, MC_TYPE_F32};
    for (int packed = 0; packed < 2; packed++)
        for (size_t k = 0; k < sizeof(types) / sizeof(types[0]); k++) {
            enum mc_type t = types[k];
            if (packed && !has_packed(t))
                continue;
            uint8_t *w = make_matrix(t, ROWS, COLS, NULL);
            if (packed) {
                size_t n = mc_type_row_size(t, COLS) * ROWS;
                uint8_t *p = malloc(n);
                assert_int_equal(mc_pack_rows(t, w, p, ROWS, COLS, NULL), MC_OK);
                free(w);
                w = p;
            }
            for (int i = 0; i < NTOK * COLS; i++)
                x[i] = rng_normal(1.0f);
            void *work = malloc(mc_matmul_work_size(t, COLS, NTOK) + 1);
            struct mc_err err = {0};
            for (int level = 0; level <= (int)mc_simd_detect(); level++) {
                enum mc_simd saved = mc_simd_get();
                mc_simd_set((enum mc_simd)level);
                for (int nt = NTOK; nt > 0; nt = nt == NTOK ? 3 : 0)
                    for (int32_t ns = 0; ns <= 6; ns += ns == 0 ? 1 : 5) {
                        assert_int_equal(mc_matmul_prefetch(packed, t, w, ROWS, COLS, x, nt, want,
                                                            work, pool, NULL, 0, &err),
                                         MC_OK);
                        assert_int_equal(mc_matmul_prefetch(packed, t, w, ROWS, COLS, x, nt, got,
                                                            work, pool, spans, ns, &err),
                                         MC_OK);
                        if (memcmp(want, got, (size_t)nt * ROWS * sizeof(float)) != 0)
                            fail_msg("%s%s simd=%d n_tok=%d spans=%d: results differ",
                                     mc_type_name(t), packed ? " packed" : "", level, nt, ns);
                    }
                mc_simd_set(saved);
            }
            /* The packed entry point still checks its shape. */
            if (packed)
                assert_int_equal(
                    mc_matmul_prefetch(true, t, w, ROWS, 31, x, 1, got, work, pool, spans, 6, &err),
                    MC_EINVAL);
            free(work);
            free(w);
        }
    mc_pool_free(pool);
}

/* ---- SIMD against portable ------------------------------------------------------------ */

/* Each SIMD set against the portable one on random data: the integer parts are exact
 * and the activation conversion is byte-identical, so results differ only by float
 * summation order: |simd - portable| <= 1e-6 * sum |w * x| (F32, F16, BF16: 2e-6). */
static void test_simd_matches_portable(void **state) {
    (void)state;
    enum { ROWS = 70, COLS = 1536, NTOK = 5 };
    static float deq[ROWS * COLS], x[NTOK * COLS], yp[NTOK * ROWS], ys[NTOK * ROWS];
    if (mc_simd_detect() == MC_SIMD_PORTABLE)
        skip();
    for (size_t k = 0; k < N_TYPES; k++) {
        enum mc_type t = ALL_TYPES[k];
        if (!in_mode(t))
            continue;
        uint8_t *w = make_matrix(t, ROWS, COLS, deq);
        for (int i = 0; i < NTOK * COLS; i++)
            x[i] = rng_normal(1.0f);
        double rel = (t == MC_TYPE_F32 || t == MC_TYPE_F16 || t == MC_TYPE_BF16) ? 2e-6 : 1e-6;
        assert_int_equal(matmul_at(MC_SIMD_PORTABLE, t, w, ROWS, COLS, x, NTOK, yp, NULL), MC_OK);
        for (int level = 1; level <= (int)mc_simd_detect(); level++) {
            assert_int_equal(matmul_at((enum mc_simd)level, t, w, ROWS, COLS, x, NTOK, ys, NULL),
                             MC_OK);
            for (int tk = 0; tk < NTOK; tk++) {
                for (int r = 0; r < ROWS; r++) {
                    double mag = 0;
                    for (int c = 0; c < COLS; c++)
                        mag += fabs((double)deq[r * COLS + c] * x[tk * COLS + c]);
                    double a = ys[tk * ROWS + r], b = yp[tk * ROWS + r];
                    if (!(fabs(a - b) <= rel * mag))
                        fail_msg("%s simd=%d row %d tok %d: %.9g vs portable %.9g", mc_type_name(t),
                                 level, r, tk, a, b);
                }
            }
        }
        free(w);
    }
}

/* ---- Packed weights ------------------------------------------------------------------- */

/* Packing keeps the bytes of a row and loses nothing: packed rows dequantize to exactly
 * the GGUF rows' values, and the portable kernels give bit for bit the same products on
 * both layouts. Block counts 1, 7, 16, 17, 24 and 48 cover a lone partial group, full
 * groups and the tails after them. */
static void test_packed_rows_keep_values_and_portable_results(void **state) {
    (void)state;
    static const int COLS[] = {32, 224, 512, 544, 768, 1536};
    enum { ROWS = 5, NTOK = 3 };
    static float deq[ROWS * 1536], back[1536], x[NTOK * 1536], yg[NTOK * ROWS], yp[NTOK * ROWS];
    for (int ti = 0; ti < 2; ti++) {
        enum mc_type t = ti ? MC_TYPE_Q4_0 : MC_TYPE_Q8_0;
        for (size_t c = 0; c < sizeof(COLS) / sizeof(COLS[0]); c++) {
            int cols = COLS[c];
            size_t rs = mc_type_row_size(t, cols);
            uint8_t *w = make_matrix(t, ROWS, cols, deq);
            uint8_t *p = malloc(rs * ROWS);
            assert_non_null(p);
            assert_int_equal(mc_pack_rows(t, w, p, ROWS, cols, NULL), MC_OK);
            for (int r = 0; r < ROWS; r++) {
                assert_int_equal(mc_dequantize_row_packed(t, p + r * rs, back, cols, NULL), MC_OK);
                assert_memory_equal(back, deq + r * cols, sizeof(float) * (size_t)cols);
            }
            for (int i = 0; i < NTOK * cols; i++)
                x[i] = rng_normal(1.0f);
            packed_mode = false;
            assert_int_equal(matmul_at(MC_SIMD_PORTABLE, t, w, ROWS, cols, x, NTOK, yg, NULL),
                             MC_OK);
            packed_mode = true;
            assert_int_equal(matmul_at(MC_SIMD_PORTABLE, t, w, ROWS, cols, x, NTOK, yp, NULL),
                             MC_OK);
            packed_mode = false;
            assert_memory_equal(yg, yp, sizeof(float) * NTOK * ROWS);
            free(p);
            free(w);
        }
    }
}

static void test_packed_rejects_other_types_and_shapes(void **state) {
    (void)state;
    uint8_t buf[64] = {0};
    float f[32];
    struct mc_err err = {0};
    assert_int_equal(mc_pack_rows(MC_TYPE_Q4_K, buf, buf + 32, 1, 256, &err), MC_ENOTSUP);
    assert_non_null(strstr(err.msg, "Q4_K"));
    assert_int_equal(mc_pack_rows(MC_TYPE_Q8_0, buf, buf + 32, 1, 31, &err), MC_EINVAL);
    assert_int_equal(mc_dequantize_row_packed(MC_TYPE_F16, buf, f, 32, &err), MC_ENOTSUP);
    assert_int_equal(mc_matmul_packed(MC_TYPE_Q6_K, buf, 1, 256, f, 1, f, buf, NULL, &err),
                     MC_ENOTSUP);
}

/* The matmul tests above, on packed Q8_0 and Q4_0 weights: every kernel set against the
 * double reference, batches against single calls bit for bit, SIMD against portable. */
static void test_packed_matmul_matches_reference_batches_and_portable(void **state) {
    packed_mode = true;
    test_matmul_matches_double_reference(state);
    test_matmul_odd_shapes_match_reference(state);
    test_matmul_random_activations_close_to_float(state);
    test_matmul_zero_activations_give_zero(state);
    test_matmul_batched_equals_single_calls_exactly(state);
    test_simd_matches_portable(state);
    packed_mode = false;
}

static void test_simd_set_clamps_to_cpu(void **state) {
    (void)state;
    enum mc_simd saved = mc_simd_get();
    mc_simd_set(MC_SIMD_AVX512);
    assert_int_equal(mc_simd_get(), mc_simd_detect());
    mc_simd_set(MC_SIMD_PORTABLE);
    assert_int_equal(mc_simd_get(), MC_SIMD_PORTABLE);
    mc_simd_set(saved);
}

/* ---- Element kernels ------------------------------------------------------------------ */

static void test_rmsnorm_softmax_silu_known_values(void **state) {
    (void)state;
    float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 2, 0.5f}, out[4];
    mc_rmsnorm(out, x, w, 4, 0.0f);
    float s = 1.0f / sqrtf(7.5f); /* mean of squares 30 / 4 */
    assert_float_near(out[0], 1 * s, 1e-6);
    assert_float_near(out[2], 3 * s * 2, 1e-6);
    assert_float_near(out[3], 4 * s * 0.5f, 1e-6);

    float p[3] = {0, logf(2), logf(5)};
    mc_softmax(p, 3);
    assert_float_near(p[0], 1.0 / 8, 1e-7);
    assert_float_near(p[1], 2.0 / 8, 1e-7);
    assert_float_near(p[2], 5.0 / 8, 1e-7);
    float big[2] = {1000.0f, 1000.0f};
    mc_softmax(big, 2);
    assert_float_near(big[0], 0.5, 1e-7);

    float g[3] = {0, 1, -2}, u[3] = {3, 2, 1};
    mc_silu_mul(g, u, 3);
    assert_float_near(g[0], 0.0, 1e-7);
    assert_float_near(g[1], 2.0 / (1.0 + exp(-1.0)), 1e-6);
    assert_float_near(g[2], -2.0 / (1.0 + exp(2.0)), 1e-6);
}

/* ---- mcai quantize ---------------------------------------------------------------------- */

/* Runs `$MCAI quantize ARGS` quietly; returns its exit code, or -1 when MCAI is unset
 * (the test then skips: the command is only built by `make`). */
static int run_quantize(const char *args) {
    const char *mcai = getenv("MCAI");
    if (!mcai || !*mcai)
        return -1;
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s quantize %s >/dev/null 2>&1", mcai, args);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Every tensor of a equals the same-named tensor of b in type, shape and bytes. */
static void assert_same_tensors(const char *pa, const char *pb) {
    struct mc_gguf *a = NULL, *b = NULL;
    struct mc_err err = {0};
    assert_int_equal(mc_gguf_open(pa, &a, &err), MC_OK);
    assert_int_equal(mc_gguf_open(pb, &b, &err), MC_OK);
    assert_int_equal(mc_gguf_n_tensors(a), mc_gguf_n_tensors(b));
    for (int64_t i = 0; i < mc_gguf_n_tensors(a); i++) {
        const struct mc_gguf_tensor *t = mc_gguf_tensor(a, i);
        const struct mc_gguf_tensor *u = mc_gguf_find_tensor(b, t->name);
        assert_non_null(u);
        assert_int_equal(t->type, u->type);
        assert_int_equal(t->size_bytes, u->size_bytes);
        if (memcmp(t->data, u->data, t->size_bytes) != 0)
            fail_msg("%s: bytes differ from the reference file", t->name);
    }
    mc_gguf_close(a);
    mc_gguf_close(b);
}

/* Known answer: llama.cpp's own Q8_0 and Q4_0 files of stories260K (matrices quantized,
 * ffn_down kept F32 because 172 is not a multiple of 32) are reproduced byte for byte. */
static void test_quantize_cli_reproduces_reference_files(void **state) {
    (void)state;
    char in[512], ref8[512], ref4[512], out[64], args[1400];
    test_shared_path(in, sizeof(in), "models/stories260K.gguf");
    test_shared_path(ref8, sizeof(ref8), "models/stories260K-Q8_0.gguf");
    test_shared_path(ref4, sizeof(ref4), "models/stories260K-Q4_0.gguf");
    if (access(in, R_OK) != 0 || !getenv("MCAI"))
        skip();
    snprintf(out, sizeof(out), "/tmp/test_quant_%d.gguf", (int)getpid());

    snprintf(args, sizeof(args), "-t 2 %s %s q8_0", in, out);
    assert_int_equal(run_quantize(args), 0);
    assert_same_tensors(out, ref8);
    snprintf(args, sizeof(args), "%s %s Q4_0", in, out);
    assert_int_equal(run_quantize(args), 0);
    assert_same_tensors(out, ref4);

    struct mc_gguf *g = NULL;
    uint32_t ftype = 0;
    assert_int_equal(mc_gguf_open(out, &g, NULL), MC_OK);
    assert_int_equal(mc_gguf_get_u32(g, "general.file_type", &ftype, NULL), MC_OK);
    assert_int_equal(ftype, 2); /* llama.cpp's MOSTLY_Q4_0 */
    mc_gguf_close(g);
    unlink(out);
}

/* Q4_K_M on a 12-layer toy: Q6_K for output.weight and for attn_v/ffn_down in layers
 * {0, 3, 6, 9, 10, 11} (llama.cpp's use_more_bits), Q4_K for other matrices, norms and a
 * matrix with 100-wide rows unchanged; values survive within Q4_K's error. */
static void test_quantize_cli_q4_k_m_mix(void **state) {
    (void)state;
    if (!getenv("MCAI"))
        skip();
    enum { D = 256, NL = 12 };
    static float mat[D * D], norm[D], odd[100 * 4];
    for (int i = 0; i < D * D; i++)
        mat[i] = rng_normal(0.1f);
    for (int i = 0; i < D; i++)
        norm[i] = 1.0f + rng_uniform() * 0.1f;
    for (int i = 0; i < 400; i++)
        odd[i] = rng_uniform();
    struct mc_gguf_writer *w = NULL;
    assert_int_equal(mc_gguf_writer_create(&w, NULL), MC_OK);
    assert_int_equal(mc_gguf_writer_set_str(w, "general.architecture", "llama", 5, NULL), MC_OK);
    const int64_t ne2[2] = {D, D}, ne1[1] = {D}, ne_odd[2] = {100, 4};
    char name[64];
    for (int l = 0; l < NL; l++) {
        static const char *MATS[] = {"attn_q", "attn_v", "ffn_down"};
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof(name), "blk.%d.%s.weight", l, MATS[k]);
            assert_int_equal(mc_gguf_writer_add_tensor(w, name, MC_TYPE_F32, 2, ne2, mat, NULL),
                             MC_OK);
        }
        snprintf(name, sizeof(name), "blk.%d.attn_norm.weight", l);
        assert_int_equal(mc_gguf_writer_add_tensor(w, name, MC_TYPE_F32, 1, ne1, norm, NULL),
                         MC_OK);
    }
    assert_int_equal(mc_gguf_writer_add_tensor(w, "output.weight", MC_TYPE_F32, 2, ne2, mat, NULL),
                     MC_OK);
    assert_int_equal(mc_gguf_writer_add_tensor(w, "odd.weight", MC_TYPE_F32, 2, ne_odd, odd, NULL),
                     MC_OK);
    char in[64], out[64], args[256];
    snprintf(in, sizeof(in), "/tmp/test_quant_in_%d.gguf", (int)getpid());
    snprintf(out, sizeof(out), "/tmp/test_quant_out_%d.gguf", (int)getpid());
    assert_int_equal(mc_gguf_writer_write(w, in, NULL), MC_OK);
    mc_gguf_writer_free(w);

    snprintf(args, sizeof(args), "%s %s Q4_K_M", in, out);
    assert_int_equal(run_quantize(args), 0);
    struct mc_gguf *g = NULL;
    assert_int_equal(mc_gguf_open(out, &g, NULL), MC_OK);
    uint32_t ftype = 0;
    assert_int_equal(mc_gguf_get_u32(g, "general.file_type", &ftype, NULL), MC_OK);
    assert_int_equal(ftype, 15);
    const bool more[NL] = {1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 1, 1};
    for (int l = 0; l < NL; l++) {
        snprintf(name, sizeof(name), "blk.%d.attn_q.weight", l);
        assert_int_equal(mc_gguf_find_tensor(g, name)->type, MC_TYPE_Q4_K);
        snprintf(name, sizeof(name), "blk.%d.attn_v.weight", l);
        assert_int_equal(mc_gguf_find_tensor(g, name)->type, more[l] ? MC_TYPE_Q6_K : MC_TYPE_Q4_K);
        snprintf(name, sizeof(name), "blk.%d.ffn_down.weight", l);
        assert_int_equal(mc_gguf_find_tensor(g, name)->type, more[l] ? MC_TYPE_Q6_K : MC_TYPE_Q4_K);
        snprintf(name, sizeof(name), "blk.%d.attn_norm.weight", l);
        assert_int_equal(mc_gguf_find_tensor(g, name)->type, MC_TYPE_F32);
    }
    assert_int_equal(mc_gguf_find_tensor(g, "output.weight")->type, MC_TYPE_Q6_K);
    const struct mc_gguf_tensor *t = mc_gguf_find_tensor(g, "odd.weight");
    assert_int_equal(t->type, MC_TYPE_F32);
    assert_memory_equal(t->data, odd, sizeof(odd));

    /* Q4_K values: relative RMS error within the round-trip bound above. */
    static float back[D * D];
    t = mc_gguf_find_tensor(g, "blk.1.attn_q.weight");
    for (int r = 0; r < D; r++)
        assert_int_equal(mc_dequantize_row(MC_TYPE_Q4_K,
                                           (const uint8_t *)t->data + r * 144 * (D / 256),
                                           back + r * D, D, NULL),
                         MC_OK);
    double se = 0, sx = 0;
    for (int i = 0; i < D * D; i++) {
        se += (double)(back[i] - mat[i]) * (back[i] - mat[i]);
        sx += (double)mat[i] * mat[i];
    }
    assert_true(sqrt(se / sx) < 0.10);
    mc_gguf_close(g);

    /* Usage errors exit 2, an unreadable input exits 1. */
    snprintf(args, sizeof(args), "%s %s Q3_K", in, out);
    assert_int_equal(run_quantize(args), 2);
    assert_int_equal(run_quantize("only-one-arg"), 2);
    assert_int_equal(run_quantize("/nonexistent/in.gguf /tmp/never.gguf Q8_0"), 1);
    /* An output directory that does not exist fails before any conversion. */
    snprintf(args, sizeof(args), "%s /nonexistent-dir/out.gguf Q8_0", in);
    assert_int_equal(run_quantize(args), 1);
    unlink(in);
    unlink(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_table_sizes_and_names),
        cmocka_unit_test(test_fp16_known_values),
        cmocka_unit_test(test_bf16_known_values),
        cmocka_unit_test(test_q4_0_hand_built_block_decodes_exactly),
        cmocka_unit_test(test_q8_0_hand_built_block_decodes_exactly),
        cmocka_unit_test(test_q4_k_hand_built_block_decodes_exactly),
        cmocka_unit_test(test_q5_k_hand_built_block_decodes_exactly),
        cmocka_unit_test(test_q6_k_hand_built_block_decodes_exactly),
        cmocka_unit_test(test_round_trip_error_within_bounds),
        cmocka_unit_test(test_q8_0_round_trip_per_element_bound),
        cmocka_unit_test(test_quantize_zero_row_gives_zeros),
        cmocka_unit_test(test_bad_arguments_are_rejected_with_message),
        cmocka_unit_test(test_matmul_matches_double_reference),
        cmocka_unit_test(test_matmul_odd_shapes_match_reference),
        cmocka_unit_test(test_matmul_random_activations_close_to_float),
        cmocka_unit_test(test_matmul_zero_activations_give_zero),
        cmocka_unit_test(test_matmul_batched_equals_single_calls_exactly),
        cmocka_unit_test(test_matmul_prefetch_same_results),
        cmocka_unit_test(test_simd_matches_portable),
        cmocka_unit_test(test_packed_rows_keep_values_and_portable_results),
        cmocka_unit_test(test_packed_rejects_other_types_and_shapes),
        cmocka_unit_test(test_packed_matmul_matches_reference_batches_and_portable),
        cmocka_unit_test(test_simd_set_clamps_to_cpu),
        cmocka_unit_test(test_rmsnorm_softmax_silu_known_values),
        cmocka_unit_test(test_quantize_cli_reproduces_reference_files),
        cmocka_unit_test(test_quantize_cli_q4_k_m_mix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
