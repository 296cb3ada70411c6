/* kb_int.h - what kb.c shares with retrieve.c inside the rag module. Other modules use
 * kb.h and retrieve.h only. */
#ifndef MC_KB_INT_H
#define MC_KB_INT_H

#include "rag/hnsw.h"
#include "rag/kb.h"

#include <stdint.h>

struct kb_chunk {
    uint64_t id;         /* label in both indexes; never reused within a knowledge base */
    uint64_t start, end; /* byte span in the document text */
    char *heading;       /* heading path ("Install > Linux"), or NULL */
};

struct kb_doc {
    uint64_t no; /* internal number: the text lives in object kbdoc/<no> */
    char *id;    /* id_len bytes + NUL */
    uint32_t id_len;
    char *title; /* NULL when none */
    char *meta;  /* JSON object text */
    char *ctype;
    uint64_t text_len;
    int64_t created_ms;
    uint32_t n_chunks;
    struct kb_chunk *chunks; /* (n_chunks) ascending ids */
};

/* Takes kb's lock and brings it up to date with the store (loading it when needed).
 * On failure the lock is released and err set. */
int kb_lock_synced(struct mc_kb *kb, struct mc_err *err);
void kb_unlock(struct mc_kb *kb);

/* With the lock held: the indexes (NULL when the knowledge base has none yet). */
struct mc_bm25 *kb_bm25(struct mc_kb *kb);
struct mc_hnsw *kb_hnsw(struct mc_kb *kb);
struct mc_store *kb_store(struct mc_kb *kb);
struct mc_embedder *kb_embedder(struct mc_kb *kb);

/* With the lock held: the document and chunk of a chunk id, or NULL. */
const struct kb_doc *kb_find_chunk(struct mc_kb *kb, uint64_t chunk_id,
                                   const struct kb_chunk **chunk);

/* With the lock held: checks that a non-empty knowledge base has vectors and that the
 * set's embedder made them. MC_EINVAL with a message saying what is missing. */
int kb_check_dense(struct mc_kb *kb, struct mc_err *err);

/* Reads a document's text from the store into a new buffer (mc_free). */
int kb_doc_text(struct mc_kb *kb, const struct kb_doc *d, char **text, size_t *len,
                struct mc_err *err);

#endif
