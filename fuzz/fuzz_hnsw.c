/* fuzz_hnsw.c - libFuzzer target for mc_hnsw_deserialize.
 *
 * Any input must come back as MC_OK or an error, never a crash or an out-of-bounds read.
 * An accepted image must answer a search with min(k, live) hits, and serialize back to
 * exactly the input bytes (the format has one encoding per index). */
#include "base/mem.h"
#include "rag/hnsw.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct mc_hnsw *h;
    struct mc_err err;
    if (mc_hnsw_deserialize(data, size, &h, &err) != MC_OK)
        return 0;

    float *q = calloc((size_t)mc_hnsw_dim(h), sizeof(*q));
    q[0] = 1.0f;
    struct mc_hnsw_hit hits[8];
    size_t n_hits, live = mc_hnsw_n_live(h);
    if (mc_hnsw_search(h, q, 8, 0, hits, &n_hits, &err) != MC_OK || n_hits != (live < 8 ? live : 8))
        abort();
    free(q);

    uint8_t *buf;
    size_t len;
    if (mc_hnsw_serialize(h, &buf, &len, &err) != MC_OK || len != size ||
        memcmp(buf, data, size) != 0)
        abort();
    mc_free(buf);
    mc_hnsw_free(h);
    return 0;
}
