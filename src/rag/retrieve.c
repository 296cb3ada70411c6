/* retrieve.c - knowledge-base search (bm25, dense, hybrid) and grounded prompts.
 *
 * A search embeds the query first (dense and hybrid), without holding the knowledge
 * base's lock, then under the lock asks each index for its candidates, fuses them when
 * hybrid, maps chunk ids to documents and copies what the caller keeps (ids, titles,
 * spans), and, when text is wanted, reads each distinct document once from the store.
 * Every hit comes from this knowledge base's own indexes: there is nothing to filter.
 *
 * Does not rerank, expand queries, or merge neighbouring chunks. */
#include "rag/retrieve.h"
#include "rag/fusion.h"
#include "rag/hnsw.h"
#include "rag/kb_int.h"

#include "base/mem.h"

#include <jansson.h>
#include <string.h>

#define HYBRID_DEPTH 100 /* candidates per list before fusion */
/* Chunk candidates per wanted hit when collapsing to documents: a first try, the search
 * goes deeper when it finds too few documents. */
#define PER_DOC_FACTOR 8

int mc_kb_mode_parse(const char *s, int *mode, struct mc_err *err) {
    static const char *const names[] = {"bm25", "dense", "hybrid"};
    for (int i = 0; i < 3; i++)
        if (s && strcmp(s, names[i]) == 0) {
            *mode = i;
            return MC_OK;
        }
    return mc_err_set(err, MC_EINVAL, "mode '%.32s' is not one of bm25, dense, hybrid", s ? s : "");
}

const char *mc_kb_mode_name(int mode) {
    switch (mode) {
    case MC_KB_MODE_BM25:
        return "bm25";
    case MC_KB_MODE_DENSE:
        return "dense";
    case MC_KB_MODE_HYBRID:
        return "hybrid";
    default:
        return "unknown";
    }
}

void mc_kb_results_deinit(struct mc_kb_results *r) {
    if (!r)
        return;
    for (size_t i = 0; r->hits && i < r->n; i++) {
        mc_free(r->hits[i].doc_id);
        mc_free(r->hits[i].title);
        mc_free(r->hits[i].text);
    }
    mc_free(r->hits);
    r->hits = NULL;
    r->n = 0;
}

/* ---------------------------------------------------------------------------------------
 * Candidates */

struct cand {
    uint64_t label;
    float score;
};

static int bm25_cands(struct mc_kb *kb, const struct mc_kb_query *q, size_t depth, struct cand *out,
                      size_t *n, struct mc_err *err) {
    *n = 0;
    struct mc_bm25 *b = kb_bm25(kb);
    if (!b)
        return MC_OK;
    struct mc_bm25_hit *h = mc_malloc(depth * sizeof(*h));
    if (!h)
        return mc_err_set(err, MC_ENOMEM, "out of memory searching");
    int rc = mc_bm25_search(b, q->text, q->len, depth, h, n, err);
    for (size_t i = 0; rc == MC_OK && i < *n; i++)
        out[i] = (struct cand){h[i].label, h[i].score};
    mc_free(h);
    return rc;
}

static int dense_cands(struct mc_kb *kb, const struct mc_kb_query *q, const float *qvec,
                       size_t depth, struct cand *out, size_t *n, struct mc_err *err) {
    *n = 0;
    if (!kb_hnsw(kb))
        return MC_OK;
    struct mc_hnsw_hit *h = mc_malloc(depth * sizeof(*h));
    if (!h)
        return mc_err_set(err, MC_ENOMEM, "out of memory searching");
    int rc = mc_hnsw_search(kb_hnsw(kb), qvec, depth, q->ef, h, n, err);
    for (size_t i = 0; rc == MC_OK && i < *n; i++)
        out[i] = (struct cand){h[i].label, 1.0f - h[i].dist};
    mc_free(h);
    return rc;
}

static int fuse(const struct cand *a, size_t na, const struct cand *b, size_t nb, size_t top,
                struct cand *out, size_t *n, struct mc_err *err) {
    uint64_t *la = mc_malloc((na + nb + 1) * sizeof(uint64_t));
    struct mc_fusion_hit *fh = mc_malloc((top + 1) * sizeof(*fh));
    int rc = MC_OK;
    if (!la || !fh)
        rc = mc_err_set(err, MC_ENOMEM, "out of memory fusing results");
    if (rc == MC_OK) {
        for (size_t i = 0; i < na; i++)
            la[i] = a[i].label;
        for (size_t i = 0; i < nb; i++)
            la[na + i] = b[i].label;
        struct mc_fusion_list lists[2] = {{la, na, 1.0f}, {la + na, nb, 1.0f}};
        rc = mc_fusion_rrf(lists, 2, 0, top, fh, n, err);
    }
    for (size_t i = 0; rc == MC_OK && i < *n; i++)
        out[i] = (struct cand){fh[i].label, fh[i].score};
    mc_free(la);
    mc_free(fh);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Hits */

/* Copies the hit for candidate c into h (text filled later). */
static int hit_fill(const struct kb_doc *d, const struct kb_chunk *k, const struct cand *c,
                    struct mc_kb_hit *h, struct mc_err *err) {
    h->doc_id = mc_strndup(d->id, d->id_len);
    h->doc_id_len = d->id_len;
    h->title = d->title ? mc_strdup(d->title) : NULL;
    h->chunk_id = k->id;
    h->score = c->score;
    h->start = k->start;
    h->end = k->end;
    if (!h->doc_id || (d->title && !h->title))
        return mc_err_set(err, MC_ENOMEM, "out of memory copying a hit");
    return MC_OK;
}

/* Turns candidates into at most k hits, one per document when per_doc; reads the texts
 * when wanted, each document once. */
static int make_hits(struct mc_kb *kb, const struct mc_kb_query *q, const struct cand *c, size_t n,
                     struct mc_kb_results *out, struct mc_err *err) {
    const struct kb_doc **docs = mc_calloc(q->k, sizeof(*docs));
    out->hits = mc_calloc(q->k, sizeof(*out->hits));
    if (!docs || !out->hits) {
        mc_free(docs);
        return mc_err_set(err, MC_ENOMEM, "out of memory for %zu hits", q->k);
    }
    int rc = MC_OK;
    for (size_t i = 0; i < n && out->n < q->k && rc == MC_OK; i++) {
        const struct kb_chunk *k = NULL;
        const struct kb_doc *d = kb_find_chunk(kb, c[i].label, &k);
        if (!d)
            continue;
        bool seen = false;
        for (size_t j = 0; q->per_doc && j < out->n && !seen; j++)
            seen = docs[j] == d;
        if (seen)
            continue;
        docs[out->n] = d;
        rc = hit_fill(d, k, &c[i], &out->hits[out->n++], err);
    }
    for (size_t i = 0; q->want_text && i < out->n && rc == MC_OK; i++) {
        if (out->hits[i].text)
            continue;
        char *text = NULL;
        size_t len = 0;
        rc = kb_doc_text(kb, docs[i], &text, &len, err);
        for (size_t j = i; j < out->n && rc == MC_OK; j++) {
            struct mc_kb_hit *h = &out->hits[j];
            if (docs[j] != docs[i])
                continue;
            if (!(h->text = mc_strndup(text + h->start, h->end - h->start)))
                rc = mc_err_set(err, MC_ENOMEM, "out of memory copying a hit");
        }
        mc_free(text);
    }
    mc_free(docs);
    return rc;
}

/* The candidates of q's mode, want of them (each list to at least HYBRID_DEPTH when
 * hybrid), into a new array *c of *n. *more says a list was cut at its depth, so a
 * deeper call could give more. With the lock held. */
static int candidates(struct mc_kb *kb, const struct mc_kb_query *q, const float *qvec, size_t want,
                      struct cand **c, size_t *n, bool *more, struct mc_err *err) {
    bool dense = q->mode != MC_KB_MODE_BM25, lexical = q->mode != MC_KB_MODE_DENSE;
    size_t depth = q->mode == MC_KB_MODE_HYBRID && want < HYBRID_DEPTH ? HYBRID_DEPTH : want;
    struct cand *a = lexical ? mc_malloc(depth * sizeof(*a)) : NULL;
    struct cand *b = dense ? mc_malloc(depth * sizeof(*b)) : NULL;
    struct cand *f = NULL;
    size_t na = 0, nb = 0, nf = 0;
    int rc = (lexical && !a) || (dense && !b)
                 ? mc_err_set(err, MC_ENOMEM, "out of memory searching")
                 : MC_OK;
    if (rc == MC_OK && lexical)
        rc = bm25_cands(kb, q, depth, a, &na, err);
    if (rc == MC_OK && dense)
        rc = dense_cands(kb, q, qvec, depth, b, &nb, err);
    if (rc == MC_OK && q->mode == MC_KB_MODE_HYBRID) {
        if (!(f = mc_malloc(want * sizeof(*f))))
            rc = mc_err_set(err, MC_ENOMEM, "out of memory searching");
        if (rc == MC_OK)
            rc = fuse(a, na, b, nb, want, f, &nf, err);
    }
    *more = (lexical && na == depth) || (dense && nb == depth) ||
            (q->mode == MC_KB_MODE_HYBRID && nf == want);
    *c = q->mode == MC_KB_MODE_HYBRID ? f : lexical ? a : b;
    *n = q->mode == MC_KB_MODE_HYBRID ? nf : lexical ? na : nb;
    if (*c != a)
        mc_free(a);
    if (*c != b)
        mc_free(b);
    if (*c != f)
        mc_free(f);
    if (rc != MC_OK) {
        mc_free(*c);
        *c = NULL;
        *n = 0;
    }
    return rc;
}

static int query_check(const struct mc_kb *kb, const struct mc_kb_query *q, struct mc_err *err) {
    (void)kb;
    if (!q->text || q->len == 0)
        return mc_err_set(err, MC_EINVAL, "query is empty");
    if (q->len > MC_KB_QUERY_MAX)
        return mc_err_set(err, MC_EINVAL, "query of %zu bytes exceeds the limit %d", q->len,
                          MC_KB_QUERY_MAX);
    if (q->k < 1 || q->k > MC_KB_K_MAX)
        return mc_err_set(err, MC_EINVAL, "k %zu is out of range 1..%d", q->k, MC_KB_K_MAX);
    if (q->mode < MC_KB_MODE_BM25 || q->mode > MC_KB_MODE_HYBRID)
        return mc_err_set(err, MC_EINVAL, "mode %d is not bm25, dense or hybrid", q->mode);
    if (q->ef < 0 || q->ef > MC_HNSW_MAX_EF)
        return mc_err_set(err, MC_EINVAL, "ef %d is out of range 0..%d", q->ef, MC_HNSW_MAX_EF);
    return MC_OK;
}

int mc_kb_search(struct mc_kb *kb, const struct mc_kb_query *q, struct mc_kb_results *out,
                 struct mc_err *err) {
    memset(out, 0, sizeof(*out));
    int rc = query_check(kb, q, err);
    if (rc != MC_OK)
        return rc;
    bool dense = q->mode != MC_KB_MODE_BM25;
    struct mc_embedder *emb = kb_embedder(kb);
    if (dense && !emb)
        return mc_err_set(err, MC_EINVAL, "%s search needs an embedding model; use mode bm25",
                          mc_kb_mode_name(q->mode));

    /* The query vector, computed before taking the lock. */
    float *qvec = NULL;
    if (dense) {
        qvec = mc_malloc((size_t)mc_embedder_dim(emb) * sizeof(float));
        if (!qvec)
            return mc_err_set(err, MC_ENOMEM, "out of memory embedding the query");
        const char *texts[1] = {q->text};
        if ((rc = mc_embed(emb, texts, &q->len, 1, qvec, err)) != MC_OK) {
            mc_free(qvec);
            return rc;
        }
    }

    size_t want = q->per_doc ? q->k * PER_DOC_FACTOR : q->k;
    rc = kb_lock_synced(kb, err);
    if (rc != MC_OK)
        goto out_free;
    if (dense)
        rc = kb_check_dense(kb, err);

    /* Collapsing to documents leaves fewer than k when the best chunks crowd into a few
     * documents: then look four times deeper, until k documents are found or no list
     * has more candidates to give. */
    while (rc == MC_OK) {
        struct cand *c = NULL;
        size_t n = 0;
        bool more = false;
        rc = candidates(kb, q, qvec, want, &c, &n, &more, err);
        if (rc == MC_OK)
            rc = make_hits(kb, q, c, n, out, err);
        mc_free(c);
        if (rc != MC_OK || !q->per_doc || out->n >= q->k || !more)
            break;
        mc_kb_results_deinit(out);
        want *= 4;
    }
    kb_unlock(kb);
    if (rc != MC_OK)
        mc_kb_results_deinit(out);

out_free:
    mc_free(qvec);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Retrieval settings */

void mc_kb_retrieval_deinit(struct mc_kb_retrieval *r) {
    if (!r)
        return;
    mc_free(r->template);
    r->template = NULL;
}

static int retrieval_field(const char *key, json_t *v, struct mc_kb_retrieval *out,
                           struct mc_err *err) {
    if (strcmp(key, "enabled") == 0) {
        if (!json_is_boolean(v))
            return mc_err_set(err, MC_EINVAL, "retrieval.enabled must be a boolean");
        out->enabled = json_is_true(v);
    } else if (strcmp(key, "mode") == 0) {
        if (!json_is_string(v))
            return mc_err_set(err, MC_EINVAL, "retrieval.mode must be a string");
        if (mc_kb_mode_parse(json_string_value(v), &out->mode, err) != MC_OK)
            return mc_err_prefix(err, "retrieval");
    } else if (strcmp(key, "k") == 0) {
        json_int_t k = json_is_integer(v) ? json_integer_value(v) : 0;
        if (k < 1 || k > MC_KB_RETRIEVAL_K_MAX)
            return mc_err_set(err, MC_EINVAL, "retrieval.k must be an integer 1..%d",
                              MC_KB_RETRIEVAL_K_MAX);
        out->k = (size_t)k;
    } else if (strcmp(key, "template") == 0) {
        if (!json_is_string(v) || json_string_length(v) > MC_KB_TEMPLATE_MAX)
            return mc_err_set(err, MC_EINVAL, "retrieval.template must be a string of <= %d bytes",
                              MC_KB_TEMPLATE_MAX);
        mc_free(out->template);
        if (!(out->template = mc_strdup(json_string_value(v))))
            return mc_err_set(err, MC_ENOMEM, "out of memory");
    } else {
        return mc_err_set(err, MC_EINVAL,
                          "retrieval.%.40s is not a known field (enabled, mode, k, template)", key);
    }
    return MC_OK;
}

int mc_kb_retrieval_parse(const char *json, size_t n, struct mc_kb_retrieval *out,
                          struct mc_err *err) {
    *out = (struct mc_kb_retrieval){true, MC_KB_MODE_HYBRID, 4, NULL};
    json_error_t je;
    json_t *root = json_loadb(json, n, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return mc_err_set(err, MC_EINVAL, "retrieval: %s at byte %d", je.text, je.position);
    int rc = MC_OK;
    if (!json_is_object(root))
        rc = mc_err_set(err, MC_EINVAL, "retrieval must be a JSON object");
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (rc == MC_OK)
            rc = retrieval_field(key, v, out, err);
    }
    json_decref(root);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Grounded prompt */

struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t n) {
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = mc_realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void put_sources(struct sbuf *b, const struct mc_kb_results *r) {
    for (size_t i = 0; i < r->n; i++) {
        char num[32];
        int nn = snprintf(num, sizeof(num), "[%zu] ", i + 1);
        sb_put(b, num, (size_t)nn);
        if (r->hits[i].title) {
            sb_put(b, r->hits[i].title, strlen(r->hits[i].title));
            sb_put(b, "\n", 1);
        }
        sb_put(b, r->hits[i].text, strlen(r->hits[i].text));
        sb_put(b, "\n\n", 2);
    }
}

int mc_kb_prompt(const char *template, const char *question, size_t question_len,
                 const struct mc_kb_results *r, char **out, size_t *out_len, struct mc_err *err) {
    *out = NULL;
    *out_len = 0;
    for (size_t i = 0; i < r->n; i++)
        if (!r->hits[i].text)
            return mc_err_set(err, MC_EINVAL, "hit %zu has no text (search with want_text)", i);
    const char *t = template ? template : MC_KB_DEFAULT_TEMPLATE;
    struct sbuf b = {0};
    while (*t) {
        const char *open = strstr(t, "{{");
        if (!open) {
            sb_put(&b, t, strlen(t));
            break;
        }
        sb_put(&b, t, (size_t)(open - t));
        if (strncmp(open, "{{sources}}", 11) == 0) {
            put_sources(&b, r);
            t = open + 11;
        } else if (strncmp(open, "{{question}}", 12) == 0) {
            sb_put(&b, question, question_len);
            t = open + 12;
        } else {
            sb_put(&b, open, 2);
            t = open + 2;
        }
    }
    if (!b.oom && !b.p)
        b.p = mc_strdup(""); /* an empty template */
    if (b.oom || !b.p) {
        mc_free(b.p);
        return mc_err_set(err, MC_ENOMEM, "out of memory building the prompt");
    }
    *out = b.p;
    *out_len = b.n;
    return MC_OK;
}
