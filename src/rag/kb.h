/* kb.h - per-tenant knowledge bases: documents, chunks, a BM25 index and an HNSW index of
 * chunk vectors, all sealed in the store under the tenant's own data key.
 *
 * Isolation is structural: a struct mc_kb belongs to exactly one tenant, chosen when it is
 * opened; it has its own indexes and reads and writes only objects of that tenant. There
 * is no shared index and no tenant filter anywhere, so no query, document id or option
 * given to one tenant's handle can reach another tenant's documents.
 *
 * Documents carry a caller id (1..MC_KB_ID_MAX arbitrary bytes except NUL, returned byte
 * for byte), an optional title, metadata (a JSON object) and a content type. Their text
 * is split into chunks by tokens of the model's tokenizer (or by words without a model),
 * each chunk indexed with the title and its heading path as context.
 *
 * What the store holds for a tenant (kind / object id; every object sealed):
 *   kb / manifest    documents: caller ids, titles, metadata, chunk spans (binary)
 *   kb / bm25        the BM25 index image
 *   kb / hnsw        the HNSW index image (once any chunk has a vector)
 *   kb / gen         a generation counter, read before each operation to notice writes
 *                    made by another process (the CLI while the server runs)
 *   kbdoc / <n>      the text of document number n (an internal number, never the id)
 * Caller ids live only inside the sealed manifest, never in clear object names.
 *
 * Each ingest or delete is one store transaction: if the process dies midway, or any
 * step fails, the knowledge base is as it was before the call, on disk and in memory.
 *
 * Loading is lazy: a tenant's knowledge base is read from the store on its first use and
 * kept in memory in an LRU of loaded knowledge bases bounded by a byte budget; the least
 * recently used ones that nobody holds are unloaded when the budget is passed.
 *
 * Threading: a struct mc_kbs and the handles it gives out may be used from any number of
 * threads. Operations on one knowledge base run one at a time (a mutex per knowledge
 * base); different tenants' knowledge bases work in parallel, up to the store's lock. */
#ifndef MC_KB_H
#define MC_KB_H

#include "base/err.h"
#include "model/tokenizer.h"
#include "rag/bm25.h"
#include "rag/embed.h"
#include "store/store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MC_KB_ID_MAX    1024       /* bytes of a caller document id */
#define MC_KB_TITLE_MAX 4096       /* bytes of a title */
#define MC_KB_META_MAX  (64 << 10) /* bytes of metadata JSON */
#define MC_KB_CTYPE_MAX 128        /* bytes of a content type */
#define MC_KB_TEXT_MAX  (64 << 20) /* bytes of one document's text */
#define MC_KB_BATCH_MAX 100000     /* documents per ingest call */

struct mc_kbs; /* the knowledge bases of one process over one store; see kb.c */
struct mc_kb;  /* one tenant's knowledge base (a counted reference) */

struct mc_kb_config {
    size_t chunk_tokens;  /* tokens per chunk (words without a tokenizer); default 200 */
    size_t chunk_overlap; /* tokens shared by consecutive chunks, < chunk_tokens; default 40 */
    struct mc_bm25_params bm25;
    int hnsw_m;               /* default 16 */
    int hnsw_ef_construction; /* default 200 */
    int hnsw_ef_search;       /* default 64 */
    size_t budget_bytes;      /* loaded knowledge bases, in all; default 256 MiB */
};

void mc_kb_config_default(struct mc_kb_config *c);

/* Creates the set over store (borrowed). tok (borrowed, may be NULL: chunks by words)
 * cuts chunks; emb (borrowed, may be NULL: BM25 only) embeds chunks and queries. All three
 * must outlive the set. MC_EINVAL naming the field for a bad configuration. */
int mc_kbs_create(struct mc_store *store, const struct mc_kb_config *cfg,
                  const struct mc_tokenizer *tok, struct mc_embedder *emb, struct mc_kbs **out,
                  struct mc_err *err);

/* Frees the set. Every handle must be closed before. Accepts NULL. */
void mc_kbs_free(struct mc_kbs *s);

/* The embedder given at creation (may be NULL). */
struct mc_embedder *mc_kbs_embedder(const struct mc_kbs *s);

/* Knowledge bases in memory and the bytes they hold (approximate: index images and
 * manifest), for metrics and tests. */
size_t mc_kbs_n_loaded(struct mc_kbs *s);
size_t mc_kbs_bytes_loaded(struct mc_kbs *s);

/* Unloads a tenant's knowledge base if nobody holds it (after the tenant is deleted, or
 * to test reloading). Returns true if it was unloaded or was not loaded. */
bool mc_kbs_unload(struct mc_kbs *s, const char *tenant_id);

/* Gives a handle on tenant_id's knowledge base; it is loaded on its first operation.
 * Close it with mc_kb_close. MC_EINVAL for an empty or overlong tenant id; MC_ENOMEM.
 * A tenant that does not exist fails on its first operation with MC_ENOTFOUND. */
int mc_kb_open(struct mc_kbs *s, const char *tenant_id, struct mc_kb **out, struct mc_err *err);
void mc_kb_close(struct mc_kb *kb); /* accepts NULL */

/* The tenant the handle belongs to (borrowed, valid until mc_kb_close). */
const char *mc_kb_tenant(const struct mc_kb *kb);

/* ---------------------------------------------------------------------------------------
 * Documents */

struct mc_kb_doc_in {
    const char *id; /* id_len bytes, not NUL-terminated; no NUL inside */
    size_t id_len;
    const char *text; /* text_len bytes of UTF-8 (already extracted, see extract.h) */
    size_t text_len;
    const char *title;        /* NUL-terminated, or NULL */
    const char *meta;         /* a JSON object text, or NULL for {} */
    const char *content_type; /* NUL-terminated, or NULL for "text/plain" */
};

enum {
    MC_KB_UPSERT = 1, /* replace documents whose id exists instead of failing */
};

struct mc_kb_ingest_stats {
    size_t n_added;    /* documents new to the knowledge base */
    size_t n_replaced; /* documents that replaced one with the same id */
    size_t n_chunks;   /* chunks indexed */
    size_t n_bytes;    /* bytes of text */
};

/* Called from the ingesting thread with bytes of text processed so far and in all. */
typedef void (*mc_kb_progress_fn)(void *user, size_t done, size_t total);

/* Adds n documents in one transaction: all or nothing. Errors, with nothing written:
 * MC_EINVAL for a bad document (the message gives its index in the batch and the field;
 * an empty id, a NUL in an id, a field over its limit, metadata that is not a JSON
 * object, text that is not UTF-8) or two documents of the batch with the same id;
 * MC_EEXIST when an id exists and flags lack MC_KB_UPSERT; MC_EINVAL when the knowledge
 * base holds vectors but the set has no embedder, or one of another name or dimension;
 * MC_ENOTFOUND when the tenant does not exist; store and embedding errors. Documents
 * added to a knowledge base that had no vectors while the set has an embedder get their
 * vectors, and so do all earlier documents. stats and progress may be NULL. */
int mc_kb_ingest(struct mc_kb *kb, const struct mc_kb_doc_in *docs, size_t n, unsigned flags,
                 mc_kb_progress_fn progress, void *user, struct mc_kb_ingest_stats *stats,
                 struct mc_err *err);

/* What list and get return of a document; every pointer is owned (mc_kb_doc_info_deinit). */
struct mc_kb_doc_info {
    char *id; /* id_len bytes, NUL-terminated for convenience */
    size_t id_len;
    char *title; /* NULL when none */
    char *meta;  /* JSON object text */
    char *content_type;
    size_t text_len;
    size_t n_chunks;
    int64_t created_ms;
};

void mc_kb_doc_info_deinit(struct mc_kb_doc_info *d);
void mc_kb_doc_info_free(struct mc_kb_doc_info *arr, size_t n);

/* The documents in byte order of their ids, into a new array (mc_kb_doc_info_free). */
int mc_kb_list(struct mc_kb *kb, struct mc_kb_doc_info **out, size_t *n, struct mc_err *err);

/* Reads one document by id into *info (deinit it) and, when text is non-NULL, its text
 * into a new NUL-terminated buffer *text of *text_len bytes (mc_free). MC_ENOTFOUND. */
int mc_kb_get(struct mc_kb *kb, const char *id, size_t id_len, struct mc_kb_doc_info *info,
              char **text, size_t *text_len, struct mc_err *err);

/* Deletes one document, its text and its chunks from both indexes, in one transaction.
 * MC_ENOTFOUND when there is no such id. */
int mc_kb_delete(struct mc_kb *kb, const char *id, size_t id_len, struct mc_err *err);

/* Documents and live chunks in the knowledge base (loading it if needed; 0 on error). */
size_t mc_kb_n_docs(struct mc_kb *kb);
size_t mc_kb_n_chunks(struct mc_kb *kb);
/* True once any chunk has a vector (dense and hybrid searches need them). */
bool mc_kb_has_vectors(struct mc_kb *kb);

#endif
