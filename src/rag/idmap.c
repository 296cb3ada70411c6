/* idmap.c - uint64 label -> uint32 slot hash for the rag indexes (see idmap.h).
 *
 * Keys are mixed with the murmur3 finaliser, so sequential labels (row ids) spread over
 * the table. Capacity is a power of two; growth rehashes the live entries into a table of
 * at least four times their number, which also clears tombstones. Single-threaded. */
#include "rag/idmap.h"

#include "base/err.h"
#include "base/mem.h"

#include <string.h>

#define EMPTY UINT32_MAX
#define TOMB  (UINT32_MAX - 1)

static inline size_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return (size_t)x;
}

uint32_t idmap_find(const struct idmap *m, uint64_t label) {
    if (!m->cap)
        return IDMAP_NONE;
    size_t mask = m->cap - 1;
    for (size_t i = mix(label) & mask;; i = (i + 1) & mask) {
        uint32_t v = m->vals[i];
        if (v == EMPTY)
            return IDMAP_NONE;
        if (v != TOMB && m->keys[i] == label)
            return v;
    }
}

void idmap_put(struct idmap *m, uint64_t label, uint32_t slot) {
    size_t mask = m->cap - 1;
    size_t i = mix(label) & mask;
    while (m->vals[i] != EMPTY && m->vals[i] != TOMB)
        i = (i + 1) & mask;
    if (m->vals[i] == EMPTY)
        m->used++;
    m->keys[i] = label;
    m->vals[i] = slot;
    m->live++;
}

int idmap_reserve_one(struct idmap *m) {
    if ((m->used + 1) * 2 <= m->cap)
        return MC_OK;
    size_t cap = 16;
    while (cap < (m->live + 1) * 4)
        cap *= 2;
    uint64_t *keys = mc_malloc(cap * sizeof(*keys));
    uint32_t *vals = mc_malloc(cap * sizeof(*vals));
    if (!keys || !vals) {
        mc_free(keys);
        mc_free(vals);
        return MC_ENOMEM;
    }
    memset(vals, 0xff, cap * sizeof(*vals));
    struct idmap old = *m;
    *m = (struct idmap){keys, vals, cap, 0, 0};
    for (size_t i = 0; i < old.cap; i++)
        if (old.vals[i] != EMPTY && old.vals[i] != TOMB)
            idmap_put(m, old.keys[i], old.vals[i]);
    idmap_deinit(&old);
    return MC_OK;
}

void idmap_remove(struct idmap *m, uint64_t label) {
    if (!m->cap)
        return;
    size_t mask = m->cap - 1;
    for (size_t i = mix(label) & mask;; i = (i + 1) & mask) {
        uint32_t v = m->vals[i];
        if (v == EMPTY)
            return;
        if (v != TOMB && m->keys[i] == label) {
            m->vals[i] = TOMB;
            m->live--;
            return;
        }
    }
}

void idmap_deinit(struct idmap *m) {
    mc_free(m->keys);
    mc_free(m->vals);
    memset(m, 0, sizeof(*m));
}
