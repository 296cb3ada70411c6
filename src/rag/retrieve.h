/* retrieve.h - searching a tenant's knowledge base and grounding a prompt in the result.
 *
 * Three modes: bm25 (lexical), dense (cosine similarity of the query's embedding to chunk
 * vectors in the HNSW index) and hybrid (reciprocal rank fusion of the two lists, each
 * taken to depth max(100, candidates)). A hit is one chunk: its document's caller id, the
 * chunk id, the score of the mode (BM25 score, cosine similarity, or fused RRF score;
 * larger is better) and the chunk's byte span in the document text.
 *
 * A grounded prompt numbers the hits as sources [1], [2], ... and puts them, with the
 * question, into a template; the answer cites sources by number and the caller returns
 * the hits as citations. Threading: as kb.h. */
#ifndef MC_RETRIEVE_H
#define MC_RETRIEVE_H

#include "base/err.h"
#include "rag/kb.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MC_KB_K_MAX        1000       /* hits per search */
#define MC_KB_QUERY_MAX    (64 << 10) /* bytes of a query */
#define MC_KB_TEMPLATE_MAX (64 << 10)

enum mc_kb_mode {
    MC_KB_MODE_BM25 = 0,
    MC_KB_MODE_DENSE = 1,
    MC_KB_MODE_HYBRID = 2,
};

/* Parses "bm25", "dense" or "hybrid" into *mode; MC_EINVAL naming the value otherwise. */
int mc_kb_mode_parse(const char *s, int *mode, struct mc_err *err);
const char *mc_kb_mode_name(int mode);

struct mc_kb_query {
    const char *text; /* len bytes */
    size_t len;
    int mode;       /* enum mc_kb_mode */
    size_t k;       /* hits wanted, 1..MC_KB_K_MAX */
    bool per_doc;   /* at most one hit (the best chunk) per document */
    bool want_text; /* fill each hit's text (reads the documents from the store) */
    int ef;         /* HNSW candidate list size; 0: the index default */
};

struct mc_kb_hit {
    char *doc_id; /* doc_id_len bytes + NUL, owned */
    size_t doc_id_len;
    char *title; /* owned; NULL when the document has none */
    uint64_t chunk_id;
    float score;
    size_t start, end; /* byte span of the chunk in the document text */
    char *text;        /* owned chunk text when want_text, else NULL */
};

struct mc_kb_results {
    struct mc_kb_hit *hits;
    size_t n;
};

/* Searches kb for q into *out (deinit it). Fewer than k hits come back when fewer chunks
 * match (bm25) or exist; with per_doc, fewer than k only when fewer documents do. MC_EINVAL for an empty or overlong query, a bad mode or k, or
 * dense/hybrid on a knowledge base without vectors or a set without an embedder. */
int mc_kb_search(struct mc_kb *kb, const struct mc_kb_query *q, struct mc_kb_results *out,
                 struct mc_err *err);
void mc_kb_results_deinit(struct mc_kb_results *r);

/* Retrieval settings, from a front's "retrieval" object or a request's field:
 *   {"enabled": bool (default true), "mode": "bm25"|"dense"|"hybrid" (default "hybrid"),
 *    "k": 1..50 (default 4), "template": str with {{sources}} and {{question}}}
 * Unknown fields, wrong types and values out of range are MC_EINVAL naming the field. */
struct mc_kb_retrieval {
    bool enabled;
    int mode;
    size_t k;
    char *template; /* owned; NULL: MC_KB_DEFAULT_TEMPLATE */
};

#define MC_KB_RETRIEVAL_K_MAX 50
#define MC_KB_DEFAULT_TEMPLATE                                                                     \
    "Answer the question using only the numbered sources below, and cite the sources you use "     \
    "as [1], [2], ...\n\nSources:\n{{sources}}\nQuestion: {{question}}"

/* Parses json[0..n) into *out (initialised here; deinit even on failure). */
int mc_kb_retrieval_parse(const char *json, size_t n, struct mc_kb_retrieval *out,
                          struct mc_err *err);
void mc_kb_retrieval_deinit(struct mc_kb_retrieval *r);

/* Renders the grounded prompt: template (NULL: MC_KB_DEFAULT_TEMPLATE) with {{sources}}
 * replaced by the hits, each as "[i] title\ntext\n\n" (the title line only when there is
 * one), and {{question}} by the question. Hits must carry text. *out is mc_malloc'd,
 * NUL-terminated, *out_len bytes. MC_EINVAL when a hit has no text; MC_ENOMEM. */
int mc_kb_prompt(const char *template, const char *question, size_t question_len,
                 const struct mc_kb_results *r, char **out, size_t *out_len, struct mc_err *err);

#endif
