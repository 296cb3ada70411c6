/* bm25.h - a BM25 inverted index over one tenant's documents.
 *
 * One index holds one tenant's data; there is no shared index with a tenant filter.
 * Documents are named by caller labels (uint64, typically chunk ids). Text is analysed
 * as docs/retrieval.md describes: Unicode letters and digits make words, everything else
 * separates them; words are lower-cased, a trailing possessive 's is dropped, English stop
 * words are removed and the rest stemmed with Snowball (libstemmer). Scores follow
 *
 *   score(D, Q) = sum over terms t of Q:  qtf(t) * idf(t) * tf(t,D) * (k1 + 1)
 *                                         / (tf(t,D) + k1 * (1 - b + b * |D| / avgdl))
 *   idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
 *
 * with N, df and avgdl over live documents only, so the idf stays positive for a term in
 * every document. Deleted documents are never returned.
 *
 * Threading: one caller at a time per index (the stemmer and the score accumulators are
 * per index); different indexes are independent. */
#ifndef MC_BM25_H
#define MC_BM25_H

#include "base/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mc_bm25; /* opaque; see bm25.c */

enum mc_bm25_stemmer {
    MC_BM25_STEM_NONE = 0,
    MC_BM25_STEM_PORTER = 1,  /* Snowball "porter": Porter (1980), as Lucene's PorterStemFilter */
    MC_BM25_STEM_ENGLISH = 2, /* Snowball "english" (Porter2) */
};

/* Longest term kept, in bytes; longer words are cut at a UTF-8 character boundary. */
#define MC_BM25_MAX_TERM 64

struct mc_bm25_params {
    float k1;            /* term-frequency saturation, 0..10; the default 0.9 */
    float b;             /* length normalisation, 0..1; the default 0.4 */
    int stemmer;         /* enum mc_bm25_stemmer */
    bool keep_stopwords; /* false: drop the English stop words of docs/retrieval.md */
};

/* Anserini's BEIR settings: k1 0.9, b 0.4, Porter stemming, stop words removed. */
void mc_bm25_params_default(struct mc_bm25_params *p);

struct mc_bm25_hit {
    uint64_t label;
    float score; /* larger is better */
};

/* Creates an empty index. MC_EINVAL naming the field for a parameter out of range. */
int mc_bm25_create(const struct mc_bm25_params *p, struct mc_bm25 **out, struct mc_err *err);
void mc_bm25_free(struct mc_bm25 *b);

/* Indexes len bytes of text (UTF-8; invalid bytes separate words) under label.
 * MC_EEXIST if label is live, MC_ENOMEM (the index is then unchanged). A deleted label
 * may be added again. */
int mc_bm25_add(struct mc_bm25 *b, uint64_t label, const char *text, size_t len,
                struct mc_err *err);

/* Deletes label: no later search returns it and the statistics forget it.
 * MC_ENOTFOUND if it is not live. */
int mc_bm25_delete(struct mc_bm25 *b, uint64_t label, struct mc_err *err);

/* The k best live documents for query, best first, ties by lower label. Documents that
 * share no term with the query are not returned, so *n_hits may be below k. */
int mc_bm25_search(struct mc_bm25 *b, const char *query, size_t len, size_t k,
                   struct mc_bm25_hit *hits, size_t *n_hits, struct mc_err *err);

size_t mc_bm25_n_docs(const struct mc_bm25 *b);  /* live documents */
size_t mc_bm25_n_terms(const struct mc_bm25 *b); /* distinct terms in live documents */

/* Writes the analysed terms of text into out, separated by single spaces and
 * NUL-terminated (truncated to cap bytes). Returns the number of terms, or MC_EINVAL
 * when cap is 0. Shows exactly what the index stores and looks up. */
int mc_bm25_analyze(struct mc_bm25 *b, const char *text, size_t len, char *out, size_t cap,
                    struct mc_err *err);

/* Writes the index (parameters, live documents, postings) to a new mc_malloc'd buffer
 * freed by the caller with mc_free. Deleted documents are left out; the image rebuilds an
 * index that scores every query exactly as this one. */
int mc_bm25_serialize(const struct mc_bm25 *b, uint8_t **buf, size_t *len, struct mc_err *err);

/* Rebuilds an index from mc_bm25_serialize output. Untrusted input: MC_EFORMAT naming the
 * field and byte offset for bad magic or version, parameters out of range, counts that do
 * not fit the buffer, empty, overlong or duplicate terms, posting lists that are not
 * strictly increasing or point past the documents, zero term frequencies, document
 * lengths that disagree with their postings, duplicate labels or trailing bytes. */
int mc_bm25_deserialize(const uint8_t *buf, size_t len, struct mc_bm25 **out, struct mc_err *err);

#endif
