/* idmap.h - a uint64 label -> uint32 slot hash used inside the rag module (HNSW and BM25
 * both name items by caller labels and store them in dense slots). Not for other modules.
 *
 * Open addressing with linear probing; removal leaves a tombstone that the next growth
 * drops. The map never holds more than half its capacity in use. */
#ifndef MC_RAG_IDMAP_H
#define MC_RAG_IDMAP_H

#include <stddef.h>
#include <stdint.h>

#define IDMAP_NONE UINT32_MAX

struct idmap {
    uint64_t *keys; /* (cap) */
    uint32_t *vals; /* (cap) slot, or the empty and tombstone markers */
    size_t cap, used, live;
};

/* The slot of label, or IDMAP_NONE. */
uint32_t idmap_find(const struct idmap *m, uint64_t label);
/* Makes room for one more insertion; MC_OK or MC_ENOMEM (the map is then unchanged). */
int idmap_reserve_one(struct idmap *m);
/* Inserts a label that is not present; idmap_reserve_one must have succeeded first. */
void idmap_put(struct idmap *m, uint64_t label, uint32_t slot);
/* Removes label if present. */
void idmap_remove(struct idmap *m, uint64_t label);
void idmap_deinit(struct idmap *m);

#endif
