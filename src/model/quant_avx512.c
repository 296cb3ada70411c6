/* quant_avx512.c - AVX-512 (F, BW, VL, VNNI) kernels for mc_matmul (see quant_int.h). */
#include "model/quant_int.h"

void mc_quant_kernels_avx512(struct quant_kernels *k) {
    (void)k;
}
