/* hnsw.h - our own HNSW (hierarchical navigable small world) vector index.
 *
 * One index holds one tenant's vectors of one fixed dimension under one metric. Items are
 * named by a caller label (a uint64, typically a chunk id). Deleting an item marks it; the
 * node stays in the graph as a waypoint but is never returned, and a search returns k hits
 * whenever at least k live items exist. The index serializes to a byte buffer (the store
 * seals it) and the deserializer checks every count, id and length it reads.
 *
 * Threading: insert, delete and the serializer need exclusive access. Searches through
 * mc_hnsw_search use the index's own scratch and so are one at a time as well; threads
 * that search concurrently each pass their own struct mc_hnsw_scratch to
 * mc_hnsw_search_with, which only reads the index. */
#ifndef MC_HNSW_H
#define MC_HNSW_H

#include "base/err.h"

#include <stddef.h>
#include <stdint.h>

struct mc_hnsw;         /* opaque; see hnsw.c */
struct mc_hnsw_scratch; /* per-thread search buffers */

enum mc_hnsw_metric {
    MC_HNSW_L2 = 0,     /* squared Euclidean distance */
    MC_HNSW_IP = 1,     /* distance 1 - dot(a, b) */
    MC_HNSW_COSINE = 2, /* vectors normalised on insert and query; distance 1 - cos */
};

/* Limits the constructor and the deserializer enforce. */
#define MC_HNSW_MAX_DIM   65536
#define MC_HNSW_MAX_M     256
#define MC_HNSW_MAX_EF    65536
#define MC_HNSW_MAX_LEVEL 30

struct mc_hnsw_params {
    int dim;             /* vector length, 1..MC_HNSW_MAX_DIM */
    int metric;          /* enum mc_hnsw_metric */
    int m;               /* links per node on upper levels (2m on level 0); 0 means 16 */
    int ef_construction; /* candidate list size while inserting; 0 means 200 */
    int ef_search;       /* default candidate list size for searches; 0 means 64 */
    uint64_t seed;       /* seeds the level generator: same seed and inserts, same graph */
};

struct mc_hnsw_hit {
    uint64_t label;
    float dist; /* smaller is closer; see enum mc_hnsw_metric */
};

/* Creates an empty index. MC_EINVAL naming the field for a parameter out of range. */
int mc_hnsw_create(const struct mc_hnsw_params *p, struct mc_hnsw **out, struct mc_err *err);
void mc_hnsw_free(struct mc_hnsw *h);

/* Adds vec (dim floats, copied) under label. MC_EEXIST if label is live in the index,
 * MC_EINVAL for a non-finite component or (cosine) a zero vector, MC_ENOMEM. A label that
 * was deleted may be inserted again; it becomes a new node. */
int mc_hnsw_insert(struct mc_hnsw *h, uint64_t label, const float *vec, struct mc_err *err);

/* Marks label deleted: no later search returns it. MC_ENOTFOUND if it is not live. */
int mc_hnsw_delete(struct mc_hnsw *h, uint64_t label, struct mc_err *err);

/* The k nearest live items to query (dim floats), closest first, ties by lower label.
 * ef is the candidate list size (0 = the index default; at least k is used). Writes
 * min(k, live items) hits to hits[] and their number to *n_hits. When the graph walk
 * finds fewer than that (many deletions, unreachable nodes) the search falls back to an
 * exact scan, so the count is always min(k, live). MC_EINVAL for a non-finite query. */
int mc_hnsw_search(struct mc_hnsw *h, const float *query, size_t k, int ef,
                   struct mc_hnsw_hit *hits, size_t *n_hits, struct mc_err *err);

/* Scratch for mc_hnsw_search_with: one per searching thread. It grows as the index
 * grows, so one scratch serves any index. */
int mc_hnsw_scratch_create(struct mc_hnsw_scratch **out, struct mc_err *err);
void mc_hnsw_scratch_free(struct mc_hnsw_scratch *s);
/* As mc_hnsw_search, reading h only: any number of threads may call it at once on the
 * same index, each with its own scratch, while nobody inserts or deletes. */
int mc_hnsw_search_with(const struct mc_hnsw *h, struct mc_hnsw_scratch *s, const float *query,
                        size_t k, int ef, struct mc_hnsw_hit *hits, size_t *n_hits,
                        struct mc_err *err);

/* Sets the default ef for searches (1..MC_HNSW_MAX_EF), MC_EINVAL otherwise. */
int mc_hnsw_set_ef_search(struct mc_hnsw *h, int ef, struct mc_err *err);

size_t mc_hnsw_n_live(const struct mc_hnsw *h);  /* items a search can return */
size_t mc_hnsw_n_nodes(const struct mc_hnsw *h); /* graph nodes, deleted ones included */
int mc_hnsw_dim(const struct mc_hnsw *h);
/* True (1) if label is live, 0 otherwise. */
int mc_hnsw_contains(const struct mc_hnsw *h, uint64_t label);

/* Writes the whole index (parameters, generator state, vectors, graph, deletion marks)
 * to a new mc_malloc'd buffer that the caller frees with mc_free. A deserialized index
 * answers every search, and takes every later insert, exactly as the original. */
int mc_hnsw_serialize(const struct mc_hnsw *h, uint8_t **buf, size_t *len, struct mc_err *err);

/* Rebuilds an index from mc_hnsw_serialize output. Untrusted input: MC_EFORMAT with the
 * byte offset and the field for anything inconsistent (bad magic or version, counts that
 * exceed the buffer or the limits, link ids out of range or to nodes without that level,
 * non-finite vectors, duplicate live labels, trailing bytes). */
int mc_hnsw_deserialize(const uint8_t *buf, size_t len, struct mc_hnsw **out, struct mc_err *err);

#endif
