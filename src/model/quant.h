/* quant.h - tensor types, quantization, and the kernels of the forward pass.
 *
 * Every type has a portable C path; AVX2/FMA (and AVX-512 where it pays) paths are chosen
 * once at run time by CPU detection, and tests compare each against the portable one.
 * As in ggml, a matrix of a quantized type multiplies activations that are first
 * converted to the type's "vec_dot type" (Q8_0 for Q4_0/Q8_0, Q8_K for the K-quants, F16
 * for F16, BF16 for BF16, F32 for F32), so results match the reference implementation
 * bit for bit in the integer part. */
#ifndef MC_QUANT_H
#define MC_QUANT_H

#include "base/err.h"
#include "base/pool.h"
#include "model/gguf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* True for the types this build can compute with (F32, F16, BF16, Q8_0, Q4_0, Q4_K,
 * Q5_K, Q6_K); the others are known by size only. */
bool mc_type_is_supported(enum mc_type t);
const char *mc_type_name(enum mc_type t);          /* "Q4_0", or "unknown" */
/* Parses a type name such as "q8_0" or "F16" (case-insensitive); MC_EINVAL if unknown. */
int mc_type_from_name(const char *name, enum mc_type *out);
int64_t mc_type_block_size(enum mc_type t);        /* elements per block; 0 if unknown */
size_t mc_type_block_bytes(enum mc_type t);        /* bytes per block; 0 if unknown */
/* Bytes of one row of n elements; 0 if n is not a multiple of the block size. */
size_t mc_type_row_size(enum mc_type t, int64_t n);

/* Row conversion. n must be a multiple of the block size. MC_ENOTSUP for other types. */
int mc_dequantize_row(enum mc_type t, const void *src, float *dst, int64_t n, struct mc_err *err);
int mc_quantize_row(enum mc_type t, const float *src, void *dst, int64_t n, struct mc_err *err);

/* Half-precision helpers. */
float mc_fp16_to_fp32(uint16_t h);
uint16_t mc_fp32_to_fp16(float f);
float mc_bf16_to_fp32(uint16_t h);
uint16_t mc_fp32_to_bf16(float f);

/* Which kernel set runs: the best the CPU has, or the portable one (tests, comparison).
 * The choice is process-wide; mc_simd_set is meant for tests and benchmarks and must not
 * race with running matmuls. Types without a kernel in the chosen set use the next
 * narrower one (the AVX-512 set has Q8_0, Q4_0 and the K-quants; F32/F16/BF16 use AVX2).
 * Results of the sets differ only in float summation order. */
enum mc_simd { MC_SIMD_PORTABLE = 0, MC_SIMD_AVX2 = 1, MC_SIMD_AVX512 = 2 };
enum mc_simd mc_simd_detect(void);           /* what the CPU supports */
enum mc_simd mc_simd_get(void);              /* what is in use */
void mc_simd_set(enum mc_simd level);         /* clamps to what the CPU supports */

/* y (n_tok, rows) = x (n_tok, cols) · W^T, W being (rows, cols) of type t (rows of
 * mc_type_row_size(t, cols) bytes). x is F32; it is converted to t's vec_dot type once
 * and then shared by all threads. work must hold mc_matmul_work_size(t, cols, n_tok)
 * bytes (0 for F32; any alignment). Rows are split across the pool's threads (pool may
 * be NULL). A batch gives bit for bit the results of one call per token. MC_ENOTSUP for
 * a type without kernels, MC_EINVAL for a bad shape or a missing work buffer. */
size_t mc_matmul_work_size(enum mc_type t, int64_t cols, int64_t n_tok);
int mc_matmul(enum mc_type t, const void *w, int64_t rows, int64_t cols, const float *x,
              int64_t n_tok, float *y, void *work, struct mc_pool *pool, struct mc_err *err);

/* Packed weights. Q8_0 and Q4_0 rows can be regrouped once (at model load) into a layout
 * the AVX-512 kernels read with one load per 64 quant bytes and one conversion per 16
 * scales: per row, groups of 16 blocks (the last group takes the rest), each holding its
 * 16 fp16 scales, then the quants in 4-byte slices (slice k of every block side by side;
 * Q8_0 quants stored as unsigned q + 128). A packed row has exactly the bytes of a GGUF
 * row, so row offsets and slices of a matrix are unchanged. Kernel sets without packed
 * kernels compute packed weights with the portable ones; the results equal the GGUF
 * layout's up to float summation order, and batches equal single calls bit for bit.
 * mc_pack_is_fast: the kernel set in use (mc_simd_get) reads packed t faster than GGUF
 * rows; a model loaded after mc_simd_set(MC_SIMD_AVX2) keeps GGUF rows, as on a CPU
 * without AVX-512.
 * mc_pack_rows: rows x cols of type t from GGUF (src) to packed (dst); MC_ENOTSUP for a
 * type without a packed layout, MC_EINVAL for a bad shape. src and dst must not overlap.
 * mc_dequantize_row_packed and mc_matmul_packed: as the GGUF-layout calls, for packed w. */
bool mc_pack_is_fast(enum mc_type t);
int mc_pack_rows(enum mc_type t, const void *src, void *dst, int64_t rows, int64_t cols,
                 struct mc_err *err);
int mc_dequantize_row_packed(enum mc_type t, const void *src, float *dst, int64_t n,
                             struct mc_err *err);
int mc_matmul_packed(enum mc_type t, const void *w, int64_t rows, int64_t cols, const float *x,
                     int64_t n_tok, float *y, void *work, struct mc_pool *pool,
                     struct mc_err *err);

/* Bytes that a caller will read right after a product. */
struct mc_span {
    const void *p;
    size_t n;
};
/* As mc_matmul (packed false) or mc_matmul_packed, and while the threads compute, each
 * prefetches a share of the n_spans spans (whole spans, a few cache lines after each
 * tile). A product of a batch of rows is bound by arithmetic, so memory that the caller
 * would otherwise wait for right after it (the LoRA adapters of a batch) arrives mostly
 * in its shadow. The results are those of the call without spans. */
int mc_matmul_prefetch(bool packed, enum mc_type t, const void *w, int64_t rows, int64_t cols,
                       const float *x, int64_t n_tok, float *y, void *work, struct mc_pool *pool,
                       const struct mc_span *spans, int32_t n_spans, struct mc_err *err);

/* Element kernels used by the forward pass (portable; small next to the matmuls). */
void mc_rmsnorm(float *out, const float *x, const float *weight, int64_t n, float eps);
void mc_softmax(float *x, int64_t n);
void mc_silu_mul(float *gate, const float *up, int64_t n); /* gate = silu(gate) * up */

#endif
