/* quant_avx2.c - AVX2/FMA/F16C kernels for mc_matmul (see quant_int.h). */
#include "model/quant_int.h"

void mc_quant_kernels_avx2(struct quant_kernels *k) {
    (void)k;
}
