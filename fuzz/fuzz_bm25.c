/* fuzz_bm25.c - libFuzzer target for mc_bm25_deserialize.
 *
 * Any input must come back as MC_OK or an error, never a crash or an out-of-bounds read.
 * An accepted image must answer searches, take a delete and an add, and serialize back to
 * exactly the input bytes when nothing was changed (one encoding per index). */
#include "base/mem.h"
#include "rag/bm25.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct mc_bm25 *b;
    struct mc_err err;
    if (mc_bm25_deserialize(data, size, &b, &err) != MC_OK)
        return 0;

    uint8_t *buf;
    size_t len;
    if (mc_bm25_serialize(b, &buf, &len, &err) != MC_OK || len != size ||
        memcmp(buf, data, size) != 0)
        abort();
    mc_free(buf);

    static const char q[] = "apple banana cherry date x y z 1 2 3";
    struct mc_bm25_hit hits[16];
    size_t n_hits;
    if (mc_bm25_search(b, q, sizeof(q) - 1, 16, hits, &n_hits, &err) != MC_OK)
        abort();
    for (size_t i = 1; i < n_hits; i++)
        if (hits[i].score > hits[i - 1].score)
            abort();
    if (n_hits > 0 && mc_bm25_delete(b, hits[0].label, &err) != MC_OK)
        abort();
    int rc = mc_bm25_add(b, UINT64_MAX - 1, q, sizeof(q) - 1, &err);
    if (rc != MC_OK && rc != MC_EEXIST)
        abort();
    if (mc_bm25_search(b, q, sizeof(q) - 1, 16, hits, &n_hits, &err) != MC_OK ||
        (rc == MC_OK && n_hits == 0))
        abort();
    mc_bm25_free(b);
    return 0;
}
