/* quant.c - tensor types, row (de)quantization and the portable kernels (see quant.h).
 *
 * Layouts and reference quantizers follow ggml exactly, so GGUF files interoperate and
 * our quantized weights equal ggml's bit for bit (checked against llama.cpp's Q8_0 and
 * Q4_0 files in the tests; the K-quant quantizers are transcriptions of ggml's
 * reference ones, not checked against its files). mc_matmul converts the activations to
 * the weight type's vec_dot type (as ggml does), then splits the weight rows over the
 * pool's threads; each thread calls one gemm kernel from the kernel table. The table is
 * filled once from the portable kernels below, then overridden by the AVX2 and AVX-512
 * files when the CPU has them (mc_simd_set can force a narrower set for tests).
 * Packed Q8_0/Q4_0 rows (quant.h) are kernel kinds of their own: the portable kernels
 * unpack each block and reuse the GGUF-layout arithmetic, so they are the reference for
 * the AVX-512 packed kernels; the AVX2 set has none and keeps the portable ones.
 *
 * The activation quantizers (Q8_0, Q8_K) are written so that the SIMD versions produce
 * the same bytes: only the float summation order differs between kernel sets.
 * Not here: importance-matrix quantization, the IQ and legacy Q4_1/Q5_x types (known by
 * size only, so files holding them can be listed but not computed with). */
#include "model/quant.h"

#if defined(__x86_64__)
#include <cpuid.h> /* __get_cpuid */
#endif
#include "model/quant_int.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <strings.h>

/* ---- Type table ------------------------------------------------------------------ */

struct type_info {
    const char *name;
    int64_t block_size; /* elements per block */
    size_t block_bytes;
    bool supported;
};

static const struct type_info TYPES[MC_TYPE_COUNT] = {
    [MC_TYPE_F32] = {"F32", 1, 4, true},
    [MC_TYPE_F16] = {"F16", 1, 2, true},
    [MC_TYPE_Q4_0] = {"Q4_0", 32, 18, true},
    [MC_TYPE_Q4_1] = {"Q4_1", 32, 20, false},
    [MC_TYPE_Q5_0] = {"Q5_0", 32, 22, false},
    [MC_TYPE_Q5_1] = {"Q5_1", 32, 24, false},
    [MC_TYPE_Q8_0] = {"Q8_0", 32, 34, true},
    [MC_TYPE_Q8_1] = {"Q8_1", 32, 36, false},
    [MC_TYPE_Q2_K] = {"Q2_K", 256, 84, false},
    [MC_TYPE_Q3_K] = {"Q3_K", 256, 110, false},
    [MC_TYPE_Q4_K] = {"Q4_K", 256, 144, true},
    [MC_TYPE_Q5_K] = {"Q5_K", 256, 176, true},
    [MC_TYPE_Q6_K] = {"Q6_K", 256, 210, true},
    [MC_TYPE_Q8_K] = {"Q8_K", 256, 292, false},
    [16] = {"IQ2_XXS", 256, 66, false},
    [17] = {"IQ2_XS", 256, 74, false},
    [18] = {"IQ3_XXS", 256, 98, false},
    [19] = {"IQ1_S", 256, 50, false},
    [20] = {"IQ4_NL", 32, 18, false},
    [21] = {"IQ3_S", 256, 110, false},
    [22] = {"IQ2_S", 256, 82, false},
    [23] = {"IQ4_XS", 256, 136, false},
    [24] = {"I8", 1, 1, false},
    [25] = {"I16", 1, 2, false},
    [26] = {"I32", 1, 4, false},
    [27] = {"I64", 1, 8, false},
    [28] = {"F64", 1, 8, false},
    [29] = {"IQ1_M", 256, 56, false},
    [MC_TYPE_BF16] = {"BF16", 1, 2, true},
    [34] = {"TQ1_0", 256, 54, false},
    [35] = {"TQ2_0", 256, 66, false},
};

static const struct type_info *type_info(enum mc_type t) {
    if ((int)t < 0 || (int)t >= MC_TYPE_COUNT || !TYPES[t].name)
        return NULL;
    return &TYPES[t];
}

bool mc_type_is_supported(enum mc_type t) {
    const struct type_info *ti = type_info(t);
    return ti && ti->supported;
}

const char *mc_type_name(enum mc_type t) {
    const struct type_info *ti = type_info(t);
    return ti ? ti->name : "unknown";
}

int mc_type_from_name(const char *name, enum mc_type *out) {
    for (int t = 0; name && t < MC_TYPE_COUNT; t++) {
        if (TYPES[t].name && strcasecmp(TYPES[t].name, name) == 0) {
            *out = (enum mc_type)t;
            return MC_OK;
        }
    }
    return MC_EINVAL;
}

int64_t mc_type_block_size(enum mc_type t) {
    const struct type_info *ti = type_info(t);
    return ti ? ti->block_size : 0;
}

size_t mc_type_block_bytes(enum mc_type t) {
    const struct type_info *ti = type_info(t);
    return ti ? ti->block_bytes : 0;
}

size_t mc_type_row_size(enum mc_type t, int64_t n) {
    const struct type_info *ti = type_info(t);
    if (!ti || n < 0 || n % ti->block_size != 0)
        return 0;
    return (size_t)(n / ti->block_size) * ti->block_bytes;
}

static int kind_of(enum mc_type t) {
    switch (t) {
    case MC_TYPE_F32:
        return QKIND_F32;
    case MC_TYPE_F16:
        return QKIND_F16;
    case MC_TYPE_BF16:
        return QKIND_BF16;
    case MC_TYPE_Q8_0:
        return QKIND_Q8_0;
    case MC_TYPE_Q4_0:
        return QKIND_Q4_0;
    case MC_TYPE_Q4_K:
        return QKIND_Q4_K;
    case MC_TYPE_Q5_K:
        return QKIND_Q5_K;
    case MC_TYPE_Q6_K:
        return QKIND_Q6_K;
    default:
        return -1;
    }
}

/* ---- Half precision -------------------------------------------------------------- */

/* fp16 -> fp32 exactly, subnormals, infinities and NaN included (the FP16 library's
 * branch-free method, as ggml uses without F16C). */
float mc_fp16_to_fp32(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normalized = quant_f32_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormalized = quant_f32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t bits =
        two_w < (1u << 27) ? quant_f32_bits(denormalized) : quant_f32_bits(normalized);
    return quant_f32_from_bits(sign | bits);
}

/* fp32 -> fp16 with round-to-nearest-even, overflow to infinity, NaN kept quiet (same
 * results as F16C's vcvtps2ph with rounding to nearest). */
uint16_t mc_fp32_to_fp16(float f) {
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = quant_f32_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u)
        bias = 0x71000000u;
    base = quant_f32_from_bits((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = quant_f32_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    if (shl1_w > 0xFF000000u)
        return (uint16_t)((sign >> 16) | 0x7E00u | ((w >> 13) & 0x3FFu));
    return (uint16_t)((sign >> 16) | nonsign);
}

float mc_bf16_to_fp32(uint16_t h) {
    return quant_f32_from_bits((uint32_t)h << 16);
}

/* Round to nearest even; NaN stays NaN (quiet bit forced), as ggml does. */
uint16_t mc_fp32_to_bf16(float f) {
    uint32_t u = quant_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

/* ---- Packed layout ------------------------------------------------------------------ */

/* Block b of a packed row of nb blocks (q8: Q8_0, else Q4_0) to or from the GGUF block
 * at blk. The layout is described in quant.h and quant_int.h. */
static void packed_block_io(bool q8, bool to_packed, uint8_t *row, int64_t nb, int64_t b,
                            void *blk) {
    const size_t bb = q8 ? sizeof(struct block_q8_0) : sizeof(struct block_q4_0);
    const int64_t n = pack_group_n(nb, b), i = b % PACK_GROUP;
    uint8_t *g = row + (size_t)(b - i) * bb;
    uint8_t *d = blk, *qs = d + 2;
    uint8_t *sd = g + 2 * i;
    if (to_packed)
        memcpy(sd, d, 2);
    else
        memcpy(d, sd, 2);
    for (size_t k = 0; k < (bb - 2) / 4; k++) {
        uint8_t *sl = g + 2 * n + (size_t)(k * 4 * n + 4 * i);
        for (int l = 0; l < 4; l++) {
            /* Q8_0 quants are kept as q + 128: the unsigned operand of vpdpbusd. */
            uint8_t flip = q8 ? 0x80 : 0;
            if (to_packed)
                sl[l] = qs[4 * k + l] ^ flip;
            else
                qs[4 * k + l] = sl[l] ^ flip;
        }
    }
}

static void packed_get(bool q8, const void *row, int64_t nb, int64_t b, void *blk) {
    packed_block_io(q8, false, (uint8_t *)(uintptr_t)row, nb, b, blk);
}

bool mc_pack_is_fast(enum mc_type t) {
    return (t == MC_TYPE_Q8_0 || t == MC_TYPE_Q4_0) && mc_simd_get() == MC_SIMD_AVX512;
}

static int pack_check(const char *what, enum mc_type t, int64_t cols, struct mc_err *err) {
    if (t != MC_TYPE_Q8_0 && t != MC_TYPE_Q4_0)
        return mc_err_set(err, MC_ENOTSUP, "%s: type %s has no packed layout (Q8_0, Q4_0 do)",
                          what, mc_type_name(t));
    if (cols <= 0 || cols % QK8_0 != 0)
        return mc_err_set(err, MC_EINVAL, "%s: %lld elements is not a multiple of 32", what,
                          (long long)cols);
    return MC_OK;
}

int mc_pack_rows(enum mc_type t, const void *src, void *dst, int64_t rows, int64_t cols,
                 struct mc_err *err) {
    int rc = pack_check("pack", t, cols, err);
    if (rc != MC_OK)
        return rc;
    if (rows < 0)
        return mc_err_set(err, MC_EINVAL, "pack: %lld rows", (long long)rows);
    const bool q8 = t == MC_TYPE_Q8_0;
    const size_t rs = mc_type_row_size(t, cols), bb = mc_type_block_bytes(t);
    const int64_t nb = cols / QK8_0;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *s = (const uint8_t *)src + (size_t)r * rs;
        for (int64_t b = 0; b < nb; b++)
            packed_block_io(q8, true, (uint8_t *)dst + (size_t)r * rs, nb, b,
                            (void *)(uintptr_t)(s + (size_t)b * bb));
    }
    return MC_OK;
}

int mc_dequantize_row_packed(enum mc_type t, const void *src, float *dst, int64_t n,
                             struct mc_err *err) {
    int rc = pack_check("dequantize", t, n, err);
    if (rc != MC_OK)
        return rc;
    const bool q8 = t == MC_TYPE_Q8_0;
    uint8_t blk[sizeof(struct block_q8_0)];
    for (int64_t b = 0; b < n / QK8_0; b++) {
        packed_get(q8, src, n / QK8_0, b, blk);
        if ((rc = mc_dequantize_row(t, blk, dst + b * QK8_0, QK8_0, err)) != MC_OK)
            return rc;
    }
    return MC_OK;
}

/* ---- Dequantization ------------------------------------------------------------- */

static void dequant_q8_0(const void *src, float *y, int64_t n) {
    const struct block_q8_0 *x = src;
    for (int64_t i = 0; i < n / QK8_0; i++) {
        float d = mc_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK8_0; j++)
            y[i * QK8_0 + j] = x[i].qs[j] * d;
    }
}

static void dequant_q4_0(const void *src, float *y, int64_t n) {
    const struct block_q4_0 *x = src;
    for (int64_t i = 0; i < n / QK4_0; i++) {
        float d = mc_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[i * QK4_0 + j] = ((x[i].qs[j] & 0x0F) - 8) * d;
            y[i * QK4_0 + j + QK4_0 / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void dequant_q4_k(const void *src, float *y, int64_t n) {
    const struct block_q4_k *x = src;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = mc_fp16_to_fp32(x[i].d);
        const float min = mc_fp16_to_fp32(x[i].dmin);
        uint8_t sc[8], mn[8];
        quant_unpack_k4(x[i].scales, sc, mn);
        const uint8_t *q = x[i].qs;
        for (int j = 0; j < 4; j++, q += 32) {
            const float d1 = d * sc[2 * j], m1 = min * mn[2 * j];
            const float d2 = d * sc[2 * j + 1], m2 = min * mn[2 * j + 1];
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (q[l] >> 4) - m2;
        }
    }
}

static void dequant_q5_k(const void *src, float *y, int64_t n) {
    const struct block_q5_k *x = src;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = mc_fp16_to_fp32(x[i].d);
        const float min = mc_fp16_to_fp32(x[i].dmin);
        uint8_t sc[8], mn[8];
        quant_unpack_k4(x[i].scales, sc, mn);
        const uint8_t *ql = x[i].qs;
        const uint8_t *qh = x[i].qh;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < 4; j++, ql += 32, u1 <<= 2, u2 <<= 2) {
            const float d1 = d * sc[2 * j], m1 = min * mn[2 * j];
            const float d2 = d * sc[2 * j + 1], m2 = min * mn[2 * j + 1];
            for (int l = 0; l < 32; l++)
                *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        }
    }
}

static void dequant_q6_k(const void *src, float *y, int64_t n) {
    const struct block_q6_k *x = src;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = mc_fp16_to_fp32(x[i].d);
        const uint8_t *ql = x[i].ql;
        const uint8_t *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int h = 0; h < 2; h++, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * sc[is] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
        }
    }
}

int mc_dequantize_row(enum mc_type t, const void *src, float *dst, int64_t n, struct mc_err *err) {
    if (!mc_type_is_supported(t))
        return mc_err_set(err, MC_ENOTSUP, "dequantize: type %s (%d) is not supported",
                          mc_type_name(t), (int)t);
    if (n < 0 || n % mc_type_block_size(t) != 0)
        return mc_err_set(err, MC_EINVAL,
                          "dequantize: %lld elements is not a multiple of %s's block size %lld",
                          (long long)n, mc_type_name(t), (long long)mc_type_block_size(t));
    switch (t) {
    case MC_TYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case MC_TYPE_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = mc_fp16_to_fp32(((const uint16_t *)src)[i]);
        break;
    case MC_TYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = mc_bf16_to_fp32(((const uint16_t *)src)[i]);
        break;
    case MC_TYPE_Q8_0:
        dequant_q8_0(src, dst, n);
        break;
    case MC_TYPE_Q4_0:
        dequant_q4_0(src, dst, n);
        break;
    case MC_TYPE_Q4_K:
        dequant_q4_k(src, dst, n);
        break;
    case MC_TYPE_Q5_K:
        dequant_q5_k(src, dst, n);
        break;
    case MC_TYPE_Q6_K:
        dequant_q6_k(src, dst, n);
        break;
    default:
        return mc_err_set(err, MC_EINTERNAL, "dequantize: no kernel for %s", mc_type_name(t));
    }
    return MC_OK;
}

/* ---- Reference quantizers (weights) ---------------------------------------------- */

#define GROUP_MAX_EPS 1e-15f

static void quant_q8_0(const float *x, void *dst, int64_t n) {
    struct block_q8_0 *y = dst;
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = mc_fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; j++)
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

static void quant_q4_0(const float *x, void *dst, int64_t n) {
    struct block_q4_0 *y = dst;
    for (int64_t i = 0; i < n / QK4_0; i++, x += QK4_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK4_0; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        /* The value of largest magnitude maps to -8, the one level with no mirror. */
        const float d = max / -8.0f;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = mc_fp32_to_fp16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            int8_t q0 = (int8_t)(x[j] * id + 8.5f);
            int8_t q1 = (int8_t)(x[j + QK4_0 / 2] * id + 8.5f);
            y[i].qs[j] = (uint8_t)((q0 < 15 ? q0 : 15) | ((q1 < 15 ? q1 : 15) << 4));
        }
    }
}

static inline int clampi(int v, int lo, int hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

/* ggml's make_qkx2_quants: scale and min for n values with levels 0..nmax, chosen by a
 * weighted least-squares search over nstep candidate scales. Returns the scale and
 * stores -min in *the_min. */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                              float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep) {
    float min = x[0], max = x[0];
    float sum_w = weights[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min)
            min = x[i];
        if (x[i] > max)
            max = x[i];
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if (min > 0)
        min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.0f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clampi(quant_nearest_int(iscale * (x[i] - min)), 0, nmax);
        float diff = scale * L[i] + min - x[i];
        best_error += weights[i] * diff * diff;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi(quant_nearest_int(iscale * (x[i] - min)), 0, nmax);
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                cur_error += weights[i] * diff * diff;
            }
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* ggml's make_qx_quants with rmse_type 1 and no importance: symmetric levels
 * -nmax..nmax-1 stored as 0..2*nmax-1, scale refined over 18 candidates. */
static float make_qx_quants(int n, int nmax, const float *x, uint8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = clampi(quant_nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (uint8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0)
            continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi(quant_nearest_int(iscale * x[i]), -nmax, nmax - 1);
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) {
                int l = clampi(quant_nearest_int(iscale * x[i]), -nmax, nmax - 1);
                L[i] = (uint8_t)(nmax + l);
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Shared by Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins. Fills L with
 * levels 0..nmax and writes d, dmin and the packed scales. */
static void quant_k4_scales(const float *x, int nmax, float rmin, int nstep, uint8_t *L,
                            uint16_t *d_out, uint16_t *dmin_out, uint8_t *packed) {
    uint8_t Laux[32];
    float weights[32], mins[8], scales[8];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++)
            sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++)
            weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux,
                                     rmin, 0.1f, nstep);
        if (scales[j] > max_scale)
            max_scale = scales[j];
        if (mins[j] > max_min)
            max_min = mins[j];
    }

    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    memset(packed, 0, K_SCALE_SIZE);
    for (int j = 0; j < 8; j++) {
        uint8_t ls = (uint8_t)clampi(quant_nearest_int(inv_scale * scales[j]), 0, 63);
        uint8_t lm = (uint8_t)clampi(quant_nearest_int(inv_min * mins[j]), 0, 63);
        if (j < 4) {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            packed[j - 4] |= (uint8_t)((ls >> 4) << 6);
            packed[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *d_out = mc_fp32_to_fp16(max_scale / 63.f);
    *dmin_out = mc_fp32_to_fp16(max_min / 63.f);

    /* Requantize with the scales as stored, so the levels match what decoding sees. */
    uint8_t sc[8], mn[8];
    quant_unpack_k4(packed, sc, mn);
    for (int j = 0; j < 8; j++) {
        const float d = mc_fp16_to_fp32(*d_out) * sc[j];
        if (!d)
            continue;
        const float dm = mc_fp16_to_fp32(*dmin_out) * mn[j];
        for (int ii = 0; ii < 32; ii++)
            L[32 * j + ii] = (uint8_t)clampi(quant_nearest_int((x[32 * j + ii] + dm) / d), 0, nmax);
    }
}

static void quant_q4_k(const float *x, void *dst, int64_t n) {
    struct block_q4_k *y = dst;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        quant_k4_scales(x, 15, -1.0f, 20, L, &y[i].d, &y[i].dmin, y[i].scales);
        uint8_t *q = y[i].qs;
        for (int j = 0; j < QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; l++)
                q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

static void quant_q5_k(const float *x, void *dst, int64_t n) {
    struct block_q5_k *y = dst;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        quant_k4_scales(x, 31, -0.5f, 15, L, &y[i].d, &y[i].dmin, y[i].scales);
        uint8_t *qh = y[i].qh;
        uint8_t *ql = y[i].qs;
        memset(qh, 0, QK_K / 8);
        uint8_t m1 = 1, m2 = 2;
        for (int nb = 0; nb < QK_K; nb += 64, ql += 32, m1 <<= 2, m2 <<= 2) {
            for (int j = 0; j < 32; j++) {
                int l1 = L[nb + j], l2 = L[nb + j + 32];
                if (l1 > 15) {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                if (l2 > 15) {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[j] = (uint8_t)(l1 | (l2 << 4));
            }
        }
    }
}

static void quant_q6_k(const float *x, void *dst, int64_t n) {
    struct block_q6_k *y = dst;
    uint8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < QK_K / 16; ib++) {
            scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
            if (fabsf(scales[ib]) > max_abs_scale) {
                max_abs_scale = fabsf(scales[ib]);
                max_scale = scales[ib];
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof(y[i]));
            continue;
        }
        float iscale = -128.f / max_scale;
        y[i].d = mc_fp32_to_fp16(1 / iscale);
        for (int ib = 0; ib < QK_K / 16; ib++) {
            int v = quant_nearest_int(iscale * scales[ib]);
            y[i].scales[ib] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            float d = mc_fp16_to_fp32(y[i].d) * y[i].scales[j];
            if (!d)
                continue;
            for (int ii = 0; ii < 16; ii++) {
                int l = clampi(quant_nearest_int(x[16 * j + ii] / d), -32, 31);
                L[16 * j + ii] = (uint8_t)(l + 32);
            }
        }
        uint8_t *ql = y[i].ql;
        uint8_t *qh = y[i].qh;
        for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                const uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                ql[l] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                                  ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
            }
        }
    }
}

int mc_quantize_row(enum mc_type t, const float *src, void *dst, int64_t n, struct mc_err *err) {
    if (!mc_type_is_supported(t))
        return mc_err_set(err, MC_ENOTSUP, "quantize: type %s (%d) is not supported",
                          mc_type_name(t), (int)t);
    if (n < 0 || n % mc_type_block_size(t) != 0)
        return mc_err_set(err, MC_EINVAL,
                          "quantize: %lld elements is not a multiple of %s's block size %lld",
                          (long long)n, mc_type_name(t), (long long)mc_type_block_size(t));
    switch (t) {
    case MC_TYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case MC_TYPE_F16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = mc_fp32_to_fp16(src[i]);
        break;
    case MC_TYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = mc_fp32_to_bf16(src[i]);
        break;
    case MC_TYPE_Q8_0:
        quant_q8_0(src, dst, n);
        break;
    case MC_TYPE_Q4_0:
        quant_q4_0(src, dst, n);
        break;
    case MC_TYPE_Q4_K:
        quant_q4_k(src, dst, n);
        break;
    case MC_TYPE_Q5_K:
        quant_q5_k(src, dst, n);
        break;
    case MC_TYPE_Q6_K:
        quant_q6_k(src, dst, n);
        break;
    default:
        return mc_err_set(err, MC_EINTERNAL, "quantize: no kernel for %s", mc_type_name(t));
    }
    return MC_OK;
}

/* ---- Activation conversion (portable) ------------------------------------------- */

static void conv_f32(const float *x, void *dst, int64_t n) {
    memcpy(dst, x, (size_t)n * sizeof(float));
}

static void conv_f16(const float *x, void *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        ((uint16_t *)dst)[i] = mc_fp32_to_fp16(x[i]);
}

static void conv_bf16(const float *x, void *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        ((uint16_t *)dst)[i] = mc_fp32_to_bf16(x[i]);
}

/* Q8_0 for activations the way ggml's x86 path does it: id = 127 / amax and rounding
 * to nearest even, so the AVX2 version yields identical bytes. */
static void conv_q8_0(const float *x, void *dst, int64_t n) {
    struct block_q8_0 *y = dst;
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        y[i].d = mc_fp32_to_fp16(amax / 127.f);
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        for (int j = 0; j < QK8_0; j++)
            y[i].qs[j] = (int8_t)nearbyintf(x[j] * id);
    }
}

/* ggml's quantize_row_q8_K_ref. The sign of the scale follows the element of largest
 * magnitude; flipping it flips every quant too, so products do not depend on it. */
static void conv_q8_k(const float *x, void *dst, int64_t n) {
    struct block_q8_k *y = dst;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < QK_K; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        if (!amax) {
            memset(&y[i], 0, sizeof(y[i]));
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) {
            int v = quant_nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int ii = 0; ii < 16; ii++)
                sum += y[i].qs[j * 16 + ii];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

/* ---- Dot products (portable) ------------------------------------------------------ */

typedef float (*dot_fn)(int64_t n, const void *w, const void *a);

/* Eight partial sums, as an 8-lane SIMD accumulator would keep them. */
static float hsum8(const float *acc) {
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static float dot_f32(int64_t n, const void *vw, const void *va) {
    const float *w = vw, *a = va;
    float acc[8] = {0};
    for (int64_t i = 0; i < n; i++)
        acc[i & 7] += w[i] * a[i];
    return hsum8(acc);
}

/* fp16 -> fp32 for every half, filled once by simd_init (the portable F16 dot reads two
 * halves per product; the table keeps it from being dominated by the conversion). */
static float fp16_table[1 << 16];

static float dot_f16(int64_t n, const void *vw, const void *va) {
    const uint16_t *w = vw, *a = va;
    float acc[8] = {0};
    for (int64_t i = 0; i < n; i++)
        acc[i & 7] += fp16_table[w[i]] * fp16_table[a[i]];
    return hsum8(acc);
}

static float dot_bf16(int64_t n, const void *vw, const void *va) {
    const uint16_t *w = vw, *a = va;
    float acc[8] = {0};
    for (int64_t i = 0; i < n; i++)
        acc[i & 7] += mc_bf16_to_fp32(w[i]) * mc_bf16_to_fp32(a[i]);
    return hsum8(acc);
}

static float block_dot_q8_0(const struct block_q8_0 *w, const struct block_q8_0 *a) {
    int sumi = 0;
    for (int j = 0; j < QK8_0; j++)
        sumi += w->qs[j] * a->qs[j];
    return sumi * (mc_fp16_to_fp32(w->d) * mc_fp16_to_fp32(a->d));
}

static float block_dot_q4_0(const struct block_q4_0 *w, const struct block_q8_0 *a) {
    int sumi = 0;
    for (int j = 0; j < QK4_0 / 2; j++) {
        sumi += ((w->qs[j] & 0xF) - 8) * a->qs[j];
        sumi += ((w->qs[j] >> 4) - 8) * a->qs[j + QK4_0 / 2];
    }
    return sumi * (mc_fp16_to_fp32(w->d) * mc_fp16_to_fp32(a->d));
}

static float dot_q8_0(int64_t n, const void *vw, const void *va) {
    const struct block_q8_0 *w = vw;
    const struct block_q8_0 *a = va;
    float sum = 0;
    for (int64_t i = 0; i < n / QK8_0; i++)
        sum += block_dot_q8_0(&w[i], &a[i]);
    return sum;
}

static float dot_q4_0(int64_t n, const void *vw, const void *va) {
    const struct block_q4_0 *w = vw;
    const struct block_q8_0 *a = va;
    float sum = 0;
    for (int64_t i = 0; i < n / QK4_0; i++)
        sum += block_dot_q4_0(&w[i], &a[i]);
    return sum;
}

/* Packed rows: each block is taken back to the GGUF layout first, so the portable
 * results on packed weights equal those on the original rows bit for bit. */
static float dot_q8_0_packed(int64_t n, const void *vw, const void *va) {
    const struct block_q8_0 *a = va;
    struct block_q8_0 blk;
    float sum = 0;
    for (int64_t i = 0; i < n / QK8_0; i++) {
        packed_get(true, vw, n / QK8_0, i, &blk);
        sum += block_dot_q8_0(&blk, &a[i]);
    }
    return sum;
}

static float dot_q4_0_packed(int64_t n, const void *vw, const void *va) {
    const struct block_q8_0 *a = va;
    struct block_q4_0 blk;
    float sum = 0;
    for (int64_t i = 0; i < n / QK4_0; i++) {
        packed_get(false, vw, n / QK4_0, i, &blk);
        sum += block_dot_q4_0(&blk, &a[i]);
    }
    return sum;
}

/* Q4_K and Q5_K share this: levels (0..15 or 0..31) times scales, minus mins times the
 * activation block sums, all in integers per super-block. */
static float dot_k4_common(const struct block_q8_k *a, const uint8_t *levels, const uint8_t *packed,
                           uint16_t d16, uint16_t dmin16) {
    uint8_t sc[8], mn[8];
    quant_unpack_k4(packed, sc, mn);
    int32_t sumi = 0, summ = 0;
    for (int j = 0; j < 8; j++) {
        int s = 0;
        for (int l = 0; l < 32; l++)
            s += levels[32 * j + l] * a->qs[32 * j + l];
        sumi += sc[j] * s;
        summ += mn[j] * (a->bsums[2 * j] + a->bsums[2 * j + 1]);
    }
    return mc_fp16_to_fp32(d16) * a->d * sumi - mc_fp16_to_fp32(dmin16) * a->d * summ;
}

static float dot_q4_k(int64_t n, const void *vw, const void *va) {
    const struct block_q4_k *w = vw;
    const struct block_q8_k *a = va;
    uint8_t lv[QK_K];
    float sum = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        for (int j = 0; j < 4; j++) {
            for (int l = 0; l < 32; l++) {
                lv[64 * j + l] = w[i].qs[32 * j + l] & 0xF;
                lv[64 * j + 32 + l] = w[i].qs[32 * j + l] >> 4;
            }
        }
        sum += dot_k4_common(&a[i], lv, w[i].scales, w[i].d, w[i].dmin);
    }
    return sum;
}

static float dot_q5_k(int64_t n, const void *vw, const void *va) {
    const struct block_q5_k *w = vw;
    const struct block_q8_k *a = va;
    uint8_t lv[QK_K];
    float sum = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        for (int j = 0; j < 4; j++) {
            for (int l = 0; l < 32; l++) {
                uint8_t h = w[i].qh[l];
                lv[64 * j + l] =
                    (uint8_t)((w[i].qs[32 * j + l] & 0xF) | (((h >> (2 * j)) & 1) << 4));
                lv[64 * j + 32 + l] =
                    (uint8_t)((w[i].qs[32 * j + l] >> 4) | (((h >> (2 * j + 1)) & 1) << 4));
            }
        }
        sum += dot_k4_common(&a[i], lv, w[i].scales, w[i].d, w[i].dmin);
    }
    return sum;
}

static float dot_q6_k(int64_t n, const void *vw, const void *va) {
    const struct block_q6_k *w = vw;
    const struct block_q8_k *a = va;
    int8_t lv[QK_K];
    float sum = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *ql = w[i].ql, *qh = w[i].qh;
        for (int h = 0; h < 2; h++, ql += 64, qh += 32) {
            int8_t *o = lv + 128 * h;
            for (int l = 0; l < 32; l++) {
                o[l] = (int8_t)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
                o[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        int32_t sumi = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            int s = 0;
            for (int l = 0; l < 16; l++)
                s += lv[16 * j + l] * a[i].qs[16 * j + l];
            sumi += w[i].scales[j] * s;
        }
        sum += mc_fp16_to_fp32(w[i].d) * a[i].d * sumi;
    }
    return sum;
}

static void gemm_with(dot_fn dot, int64_t cols, const void *w, size_t w_row, int64_t n_rows,
                      const void *a, size_t a_row, int64_t n_tok, float *y, int64_t ldy) {
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = 0; r < n_rows; r++)
            y[t * ldy + r] =
                dot(cols, (const uint8_t *)w + r * w_row, (const uint8_t *)a + t * a_row);
}

/* The portable kernels ignore prefetch requests: they run where the SIMD ones cannot,
 * and are not what a batch of adapters is tuned for. */
#define PORTABLE_GEMM(name)                                                                        \
    static void gemm_##name(int64_t cols, const void *w, size_t w_row, int64_t n_rows,             \
                            const void *a, size_t a_row, int64_t n_tok, float *y, int64_t ldy,     \
                            struct quant_prefetch *pf) {                                           \
        (void)pf;                                                                                  \
        gemm_with(dot_##name, cols, w, w_row, n_rows, a, a_row, n_tok, y, ldy);                    \
    }
PORTABLE_GEMM(f32)
PORTABLE_GEMM(f16)
PORTABLE_GEMM(bf16)
PORTABLE_GEMM(q8_0)
PORTABLE_GEMM(q4_0)
PORTABLE_GEMM(q4_k)
PORTABLE_GEMM(q5_k)
PORTABLE_GEMM(q6_k)
PORTABLE_GEMM(q8_0_packed)
PORTABLE_GEMM(q4_0_packed)

static const struct quant_kernels PORTABLE = {
    .convert = {conv_f32, conv_f16, conv_bf16, conv_q8_0, conv_q8_0, conv_q8_k, conv_q8_k,
                conv_q8_k, conv_q8_0, conv_q8_0},
    .gemm = {gemm_f32, gemm_f16, gemm_bf16, gemm_q8_0, gemm_q4_0, gemm_q4_k, gemm_q5_k, gemm_q6_k,
             gemm_q8_0_packed, gemm_q4_0_packed},
};

/* ---- Kernel selection -------------------------------------------------------------- */

/* F16C is CPUID leaf 1, ECX bit 29. Asked directly because clang's
 * __builtin_cpu_supports does not know the "f16c" name. */
static bool cpu_has_f16c(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return false;
    return (c >> 29) & 1u;
#else
    return false;
#endif
}

static struct quant_kernels kernel_sets[3];
static enum mc_simd simd_detected;
static _Atomic int simd_level = -1; /* -1 until the first use */
static pthread_once_t simd_once = PTHREAD_ONCE_INIT;

static void simd_init(void) {
    for (uint32_t h = 0; h < (1u << 16); h++)
        fp16_table[h] = mc_fp16_to_fp32((uint16_t)h);
    simd_detected = MC_SIMD_PORTABLE;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c())
        simd_detected = MC_SIMD_AVX2;
    if (simd_detected == MC_SIMD_AVX2 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni"))
        simd_detected = MC_SIMD_AVX512;
#endif
    kernel_sets[MC_SIMD_PORTABLE] = PORTABLE;
    kernel_sets[MC_SIMD_AVX2] = PORTABLE;
    kernel_sets[MC_SIMD_AVX512] = PORTABLE;
#if defined(__x86_64__)
    if (simd_detected >= MC_SIMD_AVX2) {
        mc_quant_kernels_avx2(&kernel_sets[MC_SIMD_AVX2]);
        mc_quant_kernels_avx2(&kernel_sets[MC_SIMD_AVX512]);
    }
    if (simd_detected >= MC_SIMD_AVX512)
        mc_quant_kernels_avx512(&kernel_sets[MC_SIMD_AVX512]);
#endif
    int expected = -1;
    atomic_compare_exchange_strong(&simd_level, &expected, (int)simd_detected);
}

enum mc_simd mc_simd_detect(void) {
    pthread_once(&simd_once, simd_init);
    return simd_detected;
}

enum mc_simd mc_simd_get(void) {
    pthread_once(&simd_once, simd_init);
    return (enum mc_simd)atomic_load(&simd_level);
}

void mc_simd_set(enum mc_simd level) {
    pthread_once(&simd_once, simd_init);
    if ((int)level < 0)
        level = MC_SIMD_PORTABLE;
    if (level > simd_detected)
        level = simd_detected;
    atomic_store(&simd_level, (int)level);
}

static const struct quant_kernels *kernels(void) {
    return &kernel_sets[mc_simd_get()];
}

/* ---- Matrix multiplication --------------------------------------------------------- */

/* Bytes of one activation row converted to the vec_dot type of t. */
static size_t act_row_size(enum mc_type t, int64_t cols) {
    switch (t) {
    case MC_TYPE_F32:
        return 0; /* used in place */
    case MC_TYPE_F16:
    case MC_TYPE_BF16:
        return (size_t)cols * 2;
    case MC_TYPE_Q8_0:
    case MC_TYPE_Q4_0: {
        /* Room for the larger of the AVX-512 layouts (pairs for GGUF rows, groups for
         * packed ones); the other sets' layouts are smaller. */
        size_t pairs = sizeof(struct q8_pair) * (size_t)((cols / QK8_0 + 1) / 2);
        size_t groups = sizeof(struct q8_group) * (size_t)((cols / QK8_0 + 15) / 16);
        return pairs > groups ? pairs : groups;
    }
    case MC_TYPE_Q4_K:
    case MC_TYPE_Q5_K:
    case MC_TYPE_Q6_K:
        return (size_t)(cols / QK_K) * sizeof(struct block_q8_k);
    default:
        return 0;
    }
}

/* Converted activations start on a cache line: the AVX-512 kernels load them 64 bytes at
 * a time, and a load split over two lines costs two (a large malloc is only 16-byte
 * aligned, which made every activation load a split one). Row sizes of the 64-byte
 * layouts are multiples of 64, so every row is aligned. */
enum { ACT_ALIGN = 64 };

size_t mc_matmul_work_size(enum mc_type t, int64_t cols, int64_t n_tok) {
    if (cols <= 0 || n_tok <= 0 || mc_type_row_size(t, cols) == 0)
        return 0;
    if (t == MC_TYPE_F32)
        return 0;
    /* Plus room to start the rows on a cache line (see matmul_kind). */
    return act_row_size(t, cols) * (size_t)n_tok + ACT_ALIGN;
}

struct mm_job {
    quant_convert_fn convert;
    quant_gemm_fn gemm;
    const uint8_t *w; /* (rows, w_row bytes) */
    size_t w_row;
    int64_t rows, cols, n_tok;
    const float *x;   /* (n_tok, cols) */
    const uint8_t *a; /* (n_tok, a_row bytes): x in the vec_dot type */
    uint8_t *a_out;
    size_t a_row;
    float *y;                    /* (n_tok, rows) */
    const struct mc_span *spans; /* to prefetch while computing (mc_matmul_prefetch) */
    int32_t n_spans;
};

/* Rows are split in multiples of 16 so each thread's share starts on a tile boundary
 * and the SIMD kernels keep their 4-row groups. */
static void mm_rows(const struct mm_job *j, int i, int n, int64_t *r0, int64_t *r1) {
    int64_t groups = (j->rows + 15) / 16;
    int64_t g0 = groups * i / n, g1 = groups * (i + 1) / n;
    *r0 = g0 * 16;
    *r1 = g1 * 16 < j->rows ? g1 * 16 : j->rows;
}

static void mm_convert_part(void *ctx, int i, int n) {
    struct mm_job *j = ctx;
    for (int64_t t = j->n_tok * i / n; t < j->n_tok * (i + 1) / n; t++)
        j->convert(j->x + t * j->cols, j->a_out + (size_t)t * j->a_row, j->cols);
}

/* Points pf at the start of its current span. */
static void prefetch_enter(struct quant_prefetch *pf) {
    pf->p = pf->span->p;
    pf->stop = pf->span->n ? pf->p + pf->span->n : pf->p;
}

void quant_prefetch_lines(struct quant_prefetch *pf, int64_t n) {
    for (; n > 0; n--) {
        while (pf->p >= pf->stop) {
            if (++pf->span == pf->end) {
                pf->per_tile = 0; /* the share is done */
                return;
            }
            prefetch_enter(pf);
        }
        __builtin_prefetch(pf->p, 0, QUANT_PREFETCH_LOCALITY);
        pf->p += QUANT_LINE;
    }
}

static void mm_gemm_part(void *ctx, int i, int n) {
    const struct mm_job *j = ctx;
    int64_t r0, r1;
    mm_rows(j, i, n, &r0, &r1);
    if (r1 <= r0)
        return;
    /* Thread i prefetches spans [s0, s1): whole spans, the hook's work items being
     * similar in size. */
    struct quant_prefetch pf = {0}, *use = NULL;
    int32_t s0 = j->n_spans * i / n, s1 = j->n_spans * (i + 1) / n;
    if (s1 > s0) {
        pf.span = j->spans + s0;
        pf.end = j->spans + s1;
        prefetch_enter(&pf);
        for (int32_t s = s0; s < s1; s++)
            pf.lines += (int64_t)((j->spans[s].n + QUANT_LINE - 1) / QUANT_LINE);
        use = &pf;
    }
    j->gemm(j->cols, j->w + (size_t)r0 * j->w_row, j->w_row, r1 - r0, j->a, j->a_row, j->n_tok,
            j->y + r0, j->rows, use);
}

/* mc_matmul with the kernels of kind (a GGUF kind of t, or its packed kind). */
static int matmul_kind(int kind, enum mc_type t, const void *w, int64_t rows, int64_t cols,
                       const float *x, int64_t n_tok, float *y, void *work, struct mc_pool *pool,
                       const struct mc_span *spans, int32_t n_spans, struct mc_err *err) {
    if (kind < 0)
        return mc_err_set(err, MC_ENOTSUP, "matmul: weight type %s (%d) is not supported",
                          mc_type_name(t), (int)t);
    if (rows <= 0 || cols <= 0 || n_tok <= 0 || mc_type_row_size(t, cols) == 0)
        return mc_err_set(err, MC_EINVAL,
                          "matmul: rows=%lld cols=%lld n_tok=%lld bad for %s (block size %lld)",
                          (long long)rows, (long long)cols, (long long)n_tok, mc_type_name(t),
                          (long long)mc_type_block_size(t));
    if (!work && mc_matmul_work_size(t, cols, n_tok) > 0)
        return mc_err_set(err, MC_EINVAL, "matmul: work buffer missing (%zu bytes needed)",
                          mc_matmul_work_size(t, cols, n_tok));

    const struct quant_kernels *k = kernels();
    struct mm_job job = {
        .convert = k->convert[kind],
        .gemm = k->gemm[kind],
        .w = w,
        .w_row = mc_type_row_size(t, cols),
        .rows = rows,
        .cols = cols,
        .n_tok = n_tok,
        .x = x,
        .a_out = (uint8_t *)(((uintptr_t)work + ACT_ALIGN - 1) & ~(uintptr_t)(ACT_ALIGN - 1)),
        .a_row = act_row_size(t, cols),
        .y = y,
        .spans = spans,
        .n_spans = n_spans,
    };

    /* F32 weights read x in place; every other type converts it once for all threads. */
    if (t == MC_TYPE_F32) {
        job.a = (const uint8_t *)x;
        job.a_row = (size_t)cols * sizeof(float);
    } else {
        if (n_tok >= 4 && pool)
            mc_pool_run(pool, mm_convert_part, &job);
        else
            mm_convert_part(&job, 0, 1);
        job.a = job.a_out;
    }
    mc_pool_run(pool, mm_gemm_part, &job);
    return MC_OK;
}

int mc_matmul(enum mc_type t, const void *w, int64_t rows, int64_t cols, const float *x,
              int64_t n_tok, float *y, void *work, struct mc_pool *pool, struct mc_err *err) {
    return matmul_kind(kind_of(t), t, w, rows, cols, x, n_tok, y, work, pool, NULL, 0, err);
}

int mc_matmul_packed(enum mc_type t, const void *w, int64_t rows, int64_t cols, const float *x,
                     int64_t n_tok, float *y, void *work, struct mc_pool *pool,
                     struct mc_err *err) {
    return mc_matmul_prefetch(true, t, w, rows, cols, x, n_tok, y, work, pool, NULL, 0, err);
}

int mc_matmul_prefetch(bool packed, enum mc_type t, const void *w, int64_t rows, int64_t cols,
                       const float *x, int64_t n_tok, float *y, void *work, struct mc_pool *pool,
                       const struct mc_span *spans, int32_t n_spans, struct mc_err *err) {
    int kind = kind_of(t);
    if (packed) {
        int rc = pack_check("matmul", t, cols, err);
        if (rc != MC_OK)
            return rc;
        kind = t == MC_TYPE_Q8_0 ? QKIND_Q8_0_PACKED : QKIND_Q4_0_PACKED;
    }
    return matmul_kind(kind, t, w, rows, cols, x, n_tok, y, work, pool, spans, n_spans, err);
}

/* ---- Element kernels ---------------------------------------------------------------- */

void mc_rmsnorm(float *out, const float *x, const float *weight, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++)
        out[i] = (x[i] * scale) * weight[i];
}

void mc_softmax(float *x, int64_t n) {
    float max = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    const float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++)
        x[i] *= inv;
}

void mc_silu_mul(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}
