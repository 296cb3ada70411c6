/* bm25.c - BM25 inverted index: analyser, term dictionary, postings, search, image.
 *
 * Data structure. Documents occupy dense slots in insertion order (label, length in
 * terms, deleted flag, and the list of its distinct term ids so a delete can decrement
 * document frequencies). Terms are interned in one string arena and found through an
 * open-addressing hash; each term owns a postings array of (slot, tf) in increasing slot
 * order, because slots only grow. Deleting marks the slot and updates N, df and the total
 * length at once; its postings stay until deleted slots outnumber live ones (then the
 * index compacts in place) or until the index is serialized (images hold live data only).
 *
 * Search is term-at-a-time into a dense score accumulator, then a k-sized heap. Length
 * norms k1 * (1 - b + b * |D| / avgdl) are cached per slot and recomputed on the first
 * search after a change.
 *
 * Does not do phrase or field queries, positions, or concurrent use of one index. */
#include "rag/bm25.h"

#include "base/mem.h"
#include "rag/idmap.h"

#include <libstemmer.h> /* sb_stemmer_new, sb_stemmer_stem, sb_stemmer_length */
#include <math.h>
#include <string.h>
#include <utf8proc.h> /* utf8proc_iterate, utf8proc_category, utf8proc_tolower */

struct posting {
    uint32_t doc; /* slot */
    uint32_t tf;
};

struct term {
    uint32_t str_off; /* into strs */
    uint32_t len;
    uint32_t df; /* live documents containing the term */
    uint32_t n_post, cap_post;
    struct posting *post; /* (n_post) increasing doc */
    uint32_t mark;        /* analysis generation that last saw the term */
    uint32_t pos;         /* its index in ids[] during that analysis */
};

struct term_slot {
    uint32_t id1;  /* term id + 1, 0 = empty */
    uint32_t hash; /* low bits of the term's hash, compared before the bytes */
};

struct mc_bm25 {
    struct mc_bm25_params p;
    struct sb_stemmer *stemmer; /* NULL without stemming */

    /* Terms. */
    struct term *terms;
    uint32_t n_terms, cap_terms;
    struct term_slot *slots; /* (cap_slots) */
    size_t cap_slots;
    char *strs;
    size_t strs_len, strs_cap;

    /* Documents, by slot. */
    uint64_t *labels;
    uint32_t *lens;
    uint8_t *deleted;
    uint32_t *fwd_off, *fwd_n; /* distinct term ids of slot i: fwd[fwd_off[i] ...] */
    uint32_t n_docs, cap_docs, n_live, n_deleted;
    uint64_t total_len; /* over live documents */
    uint32_t *fwd;
    size_t fwd_len, fwd_cap;
    struct idmap map; /* live label -> slot */

    /* Search and add work space. */
    float *norm; /* (cap_docs) */
    bool norms_stale;
    double *acc; /* (cap_docs) zero except during a search */
    uint32_t *touched;
    uint32_t *ids; /* distinct term ids of the text being analysed, in order of appearance */
    uint32_t *cnt; /* (cap_ids) occurrences of ids[j] */
    size_t n_ids, cap_ids;
    uint64_t n_occ; /* term occurrences in the text being analysed */
    uint32_t gen;   /* analysis generation, for term.mark */
};

/* ---------------------------------------------------------------- analyser */

/* Lucene's EnglishAnalyzer stop set, which Anserini's BEIR runs use. Sorted for bsearch. */
static const char *const STOPWORDS[] = {
    "a",   "an",    "and",  "are",   "as",    "at",   "be",   "but", "by",  "for",  "if",
    "in",  "into",  "is",   "it",    "no",    "not",  "of",   "on",  "or",  "such", "that",
    "the", "their", "then", "there", "these", "they", "this", "to",  "was", "will", "with",
};
#define N_STOPWORDS (sizeof(STOPWORDS) / sizeof(STOPWORDS[0]))

static bool is_stopword(const char *w, size_t n) {
    if (n > 5)
        return false;
    size_t lo = 0, hi = N_STOPWORDS;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strncmp(STOPWORDS[mid], w, n);
        if (c == 0 && STOPWORDS[mid][n] != '\0')
            c = 1;
        if (c == 0)
            return true;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* Letters and numbers start or continue a word; combining marks only continue one. */
static bool is_word_cp(int32_t cp, bool in_word) {
    if (cp < 0x80)
        return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9');
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
        return true;
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
        return in_word;
    default:
        return false;
    }
}

/* Decodes the code point at text[i]; invalid bytes come back as -1 with length 1. */
static size_t next_cp(const char *text, size_t len, size_t i, int32_t *cp) {
    unsigned char c = (unsigned char)text[i];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    utf8proc_int32_t u;
    utf8proc_ssize_t n =
        utf8proc_iterate((const utf8proc_uint8_t *)text + i, (utf8proc_ssize_t)(len - i), &u);
    if (n <= 0) {
        *cp = -1;
        return 1;
    }
    *cp = u;
    return (size_t)n;
}

typedef int (*term_fn)(struct mc_bm25 *b, const char *term, size_t len, void *user);

/* Stop-word filter and stemmer for one lower-cased word. */
static int emit_word(struct mc_bm25 *b, const char *w, size_t n, term_fn fn, void *user) {
    if (!b->p.keep_stopwords && is_stopword(w, n))
        return MC_OK;
    if (!b->stemmer)
        return fn(b, w, n, user);
    const sb_symbol *s = sb_stemmer_stem(b->stemmer, (const sb_symbol *)w, (int)n);
    if (!s)
        return MC_ENOMEM;
    /* Porter stems a lone "s" (as in "230 S Dearborn") to nothing: no term then. */
    if (sb_stemmer_length(b->stemmer) == 0)
        return MC_OK;
    return fn(b, (const char *)s, (size_t)sb_stemmer_length(b->stemmer), user);
}

/* True when text[i..] is "s" or "S" followed by a non-word character or the end: the
 * possessive 's that EnglishPossessiveFilter removes. */
static bool possessive_s_at(const char *text, size_t len, size_t i) {
    if (i >= len || (text[i] != 's' && text[i] != 'S'))
        return false;
    if (i + 1 >= len)
        return true;
    int32_t cp;
    next_cp(text, len, i + 1, &cp);
    return !is_word_cp(cp, true);
}

/* Splits text into words, lower-cases them, and passes each analysed term to fn. */
static int analyze(struct mc_bm25 *b, const char *text, size_t len, term_fn fn, void *user) {
    char w[MC_BM25_MAX_TERM];
    size_t wn = 0, i = 0;
    bool in_word = false;
    while (i < len) {
        int32_t cp;
        size_t n = next_cp(text, len, i, &cp);
        if (cp >= 0 && is_word_cp(cp, in_word)) {
            int32_t lc =
                cp < 0x80 ? (cp | ((cp >= 'A' && cp <= 'Z') ? 0x20 : 0)) : utf8proc_tolower(cp);
            utf8proc_uint8_t enc[4];
            utf8proc_ssize_t en = utf8proc_encode_char(lc, enc);
            if (wn + (size_t)en <= sizeof(w)) { /* longer words are cut at a character */
                memcpy(w + wn, enc, (size_t)en);
                wn += (size_t)en;
            }
            in_word = true;
            i += n;
            continue;
        }
        if (in_word) {
            int rc = emit_word(b, w, wn, fn, user);
            if (rc)
                return rc;
            in_word = false;
            wn = 0;
            if ((cp == '\'' || cp == 0x2019) && possessive_s_at(text, len, i + n))
                n += 1;
        }
        i += n;
    }
    return in_word ? emit_word(b, w, wn, fn, user) : MC_OK;
}

/* ---------------------------------------------------------------- terms */

static inline uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    return h ^ (h >> 29);
}

static uint32_t term_find(const struct mc_bm25 *b, const char *s, size_t n) {
    if (!b->cap_slots)
        return UINT32_MAX;
    size_t mask = b->cap_slots - 1;
    uint64_t h = hash_bytes(s, n);
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        struct term_slot v = b->slots[i];
        if (!v.id1)
            return UINT32_MAX;
        if (v.hash != (uint32_t)(h >> 32))
            continue;
        const struct term *t = &b->terms[v.id1 - 1];
        if (t->len == n && memcmp(b->strs + t->str_off, s, n) == 0)
            return v.id1 - 1;
    }
}

static void slot_put(struct mc_bm25 *b, uint32_t id) {
    const struct term *t = &b->terms[id];
    size_t mask = b->cap_slots - 1;
    uint64_t h = hash_bytes(b->strs + t->str_off, t->len);
    size_t i = h & mask;
    while (b->slots[i].id1)
        i = (i + 1) & mask;
    b->slots[i] = (struct term_slot){id + 1, (uint32_t)(h >> 32)};
}

/* Interns s as a new term with no postings. MC_ENOMEM leaves the dictionary unchanged. */
static int term_add(struct mc_bm25 *b, const char *s, size_t n, uint32_t *id) {
    if (b->n_terms >= UINT32_MAX - 1 || b->strs_len + n > UINT32_MAX)
        return MC_EFULL;
    if (b->n_terms == b->cap_terms) {
        uint32_t cap = b->cap_terms ? b->cap_terms * 2 : 1024;
        struct term *t = mc_realloc(b->terms, (size_t)cap * sizeof(*t));
        if (!t)
            return MC_ENOMEM;
        b->terms = t;
        b->cap_terms = cap;
    }
    if (b->strs_len + n > b->strs_cap) {
        size_t cap = b->strs_cap ? b->strs_cap * 2 : 8192;
        while (cap < b->strs_len + n)
            cap *= 2;
        char *p = mc_realloc(b->strs, cap);
        if (!p)
            return MC_ENOMEM;
        b->strs = p;
        b->strs_cap = cap;
    }
    if ((size_t)(b->n_terms + 1) * 2 > b->cap_slots) {
        size_t cap = b->cap_slots ? b->cap_slots * 2 : 2048;
        struct term_slot *slots = mc_calloc(cap, sizeof(*slots));
        if (!slots)
            return MC_ENOMEM;
        mc_free(b->slots);
        b->slots = slots;
        b->cap_slots = cap;
        for (uint32_t i = 0; i < b->n_terms; i++)
            slot_put(b, i);
    }
    memcpy(b->strs + b->strs_len, s, n);
    b->terms[b->n_terms] = (struct term){(uint32_t)b->strs_len, (uint32_t)n, 0, 0, 0, NULL, 0, 0};
    b->strs_len += n;
    *id = b->n_terms++;
    slot_put(b, *id);
    return MC_OK;
}

/* Starts analysing a new text: empties ids[] and moves to a new generation, so that no
 * term counts as seen. Marks are wiped only when the 32-bit generation wraps. */
static void begin_analysis(struct mc_bm25 *b) {
    b->n_ids = 0;
    b->n_occ = 0;
    if (++b->gen == 0) {
        for (uint32_t i = 0; i < b->n_terms; i++)
            b->terms[i].mark = 0;
        b->gen = 1;
    }
}

/* Counts one occurrence of term id: a term seen before in this text bumps its count,
 * a new one is appended. This gives (term, tf) pairs without sorting. */
static int push_id(struct mc_bm25 *b, uint32_t id) {
    struct term *t = &b->terms[id];
    b->n_occ++;
    if (t->mark == b->gen) {
        b->cnt[t->pos]++;
        return MC_OK;
    }
    if (b->n_ids == b->cap_ids) {
        size_t cap = b->cap_ids ? b->cap_ids * 2 : 1024;
        uint32_t *p = mc_realloc(b->ids, cap * sizeof(*p));
        if (!p)
            return MC_ENOMEM;
        b->ids = p;
        p = mc_realloc(b->cnt, cap * sizeof(*p));
        if (!p)
            return MC_ENOMEM;
        b->cnt = p;
        b->cap_ids = cap;
    }
    t->mark = b->gen;
    t->pos = (uint32_t)b->n_ids;
    b->ids[b->n_ids] = id;
    b->cnt[b->n_ids++] = 1;
    return MC_OK;
}

static int collect_interning(struct mc_bm25 *b, const char *s, size_t n, void *user) {
    (void)user;
    uint32_t id = term_find(b, s, n);
    if (id == UINT32_MAX) {
        int rc = term_add(b, s, n, &id);
        if (rc)
            return rc;
    }
    return push_id(b, id);
}

static int collect_known(struct mc_bm25 *b, const char *s, size_t n, void *user) {
    (void)user;
    uint32_t id = term_find(b, s, n);
    return id == UINT32_MAX ? MC_OK : push_id(b, id);
}

/* ---------------------------------------------------------------- create / free */

void mc_bm25_params_default(struct mc_bm25_params *p) {
    *p = (struct mc_bm25_params){0.9f, 0.4f, MC_BM25_STEM_PORTER, false};
}

static int check_params(const struct mc_bm25_params *p, int code, struct mc_err *err) {
    if (!(p->k1 >= 0.0f && p->k1 <= 10.0f))
        return mc_err_set(err, code, "bm25: k1 %g outside 0..10", (double)p->k1);
    if (!(p->b >= 0.0f && p->b <= 1.0f))
        return mc_err_set(err, code, "bm25: b %g outside 0..1", (double)p->b);
    if (p->stemmer < MC_BM25_STEM_NONE || p->stemmer > MC_BM25_STEM_ENGLISH)
        return mc_err_set(err, code, "bm25: unknown stemmer %d (0 none, 1 porter, 2 english)",
                          p->stemmer);
    return MC_OK;
}

int mc_bm25_create(const struct mc_bm25_params *p, struct mc_bm25 **out, struct mc_err *err) {
    *out = NULL;
    int rc = check_params(p, MC_EINVAL, err);
    if (rc)
        return rc;
    struct mc_bm25 *b = mc_calloc(1, sizeof(*b));
    if (!b)
        return mc_err_set(err, MC_ENOMEM, "bm25: out of memory");
    b->p = *p;
    if (p->stemmer != MC_BM25_STEM_NONE) {
        b->stemmer =
            sb_stemmer_new(p->stemmer == MC_BM25_STEM_PORTER ? "porter" : "english", "UTF_8");
        if (!b->stemmer) {
            mc_free(b);
            return mc_err_set(err, MC_ENOMEM, "bm25: cannot create the Snowball stemmer");
        }
    }
    *out = b;
    return MC_OK;
}

void mc_bm25_free(struct mc_bm25 *b) {
    if (!b)
        return;
    for (uint32_t i = 0; i < b->n_terms; i++)
        mc_free(b->terms[i].post);
    if (b->stemmer)
        sb_stemmer_delete(b->stemmer);
    mc_free(b->terms);
    mc_free(b->slots);
    mc_free(b->strs);
    mc_free(b->labels);
    mc_free(b->lens);
    mc_free(b->deleted);
    mc_free(b->fwd_off);
    mc_free(b->fwd_n);
    mc_free(b->fwd);
    mc_free(b->norm);
    mc_free(b->acc);
    mc_free(b->touched);
    mc_free(b->ids);
    mc_free(b->cnt);
    idmap_deinit(&b->map);
    mc_free(b);
}

/* Grows the per-slot arrays to hold need documents (contents kept on failure). */
static int reserve_docs(struct mc_bm25 *b, uint32_t need) {
    if (need <= b->cap_docs)
        return MC_OK;
    size_t cap = b->cap_docs ? (size_t)b->cap_docs * 2 : 256;
    if (cap < need)
        cap = need;
    if (cap > UINT32_MAX - 1)
        return MC_ENOMEM;
    void *p;
#define GROW(field)                                                                                \
    p = mc_realloc(b->field, cap * sizeof(*b->field));                                             \
    if (!p)                                                                                        \
        return MC_ENOMEM;                                                                          \
    b->field = p;
    GROW(labels);
    GROW(lens);
    GROW(deleted);
    GROW(fwd_off);
    GROW(fwd_n);
    GROW(norm);
    GROW(touched);
#undef GROW
    p = mc_realloc(b->acc, cap * sizeof(*b->acc));
    if (!p)
        return MC_ENOMEM;
    b->acc = p;
    memset(b->acc + b->cap_docs, 0, (cap - b->cap_docs) * sizeof(*b->acc));
    b->cap_docs = (uint32_t)cap;
    return MC_OK;
}

static int reserve_fwd(struct mc_bm25 *b, size_t need) {
    if (need <= b->fwd_cap)
        return MC_OK;
    size_t cap = b->fwd_cap ? b->fwd_cap * 2 : 4096;
    while (cap < need)
        cap *= 2;
    uint32_t *p = mc_realloc(b->fwd, cap * sizeof(*p));
    if (!p)
        return MC_ENOMEM;
    b->fwd = p;
    b->fwd_cap = cap;
    return MC_OK;
}

static int reserve_postings(struct term *t, uint32_t need) {
    if (need <= t->cap_post)
        return MC_OK;
    uint32_t cap = t->cap_post ? t->cap_post * 2 : 4;
    while (cap < need)
        cap *= 2;
    struct posting *p = mc_realloc(t->post, (size_t)cap * sizeof(*p));
    if (!p)
        return MC_ENOMEM;
    t->post = p;
    t->cap_post = cap;
    return MC_OK;
}

/* ---------------------------------------------------------------- add / delete */

int mc_bm25_add(struct mc_bm25 *b, uint64_t label, const char *text, size_t len,
                struct mc_err *err) {
    if (idmap_find(&b->map, label) != IDMAP_NONE)
        return mc_err_set(err, MC_EEXIST, "bm25: label %llu is already in the index",
                          (unsigned long long)label);
    if (b->n_docs >= UINT32_MAX - 2)
        return mc_err_set(err, MC_EFULL, "bm25: index holds the maximum number of documents");

    /* Analyse (new terms may be interned; they stay harmlessly empty on failure), then
     * reserve every array, then commit: a failure before the commit changes nothing. */
    begin_analysis(b);
    int rc = analyze(b, text, len, collect_interning, NULL);
    if (rc)
        return mc_err_set(err, rc, "bm25: %s while analysing %zu bytes", mc_strerror(rc), len);
    uint64_t doc_len = b->n_occ;
    if (doc_len > UINT32_MAX)
        return mc_err_set(err, MC_EINVAL, "bm25: document of %llu terms is too long",
                          (unsigned long long)doc_len);
    size_t n_pairs = b->n_ids;
    uint32_t slot = b->n_docs;
    rc = reserve_docs(b, slot + 1);
    if (!rc)
        rc = reserve_fwd(b, b->fwd_len + n_pairs);
    if (!rc)
        rc = idmap_reserve_one(&b->map);
    for (size_t j = 0; j < n_pairs && !rc; j++) {
        struct term *t = &b->terms[b->ids[j]];
        rc = reserve_postings(t, t->n_post + 1);
    }
    if (rc)
        return mc_err_set(err, MC_ENOMEM, "bm25: out of memory adding a document");

    b->fwd_off[slot] = (uint32_t)b->fwd_len;
    b->fwd_n[slot] = (uint32_t)n_pairs;
    for (size_t j = 0; j < n_pairs; j++) {
        struct term *t = &b->terms[b->ids[j]];
        t->post[t->n_post++] = (struct posting){slot, b->cnt[j]};
        t->df++;
        b->fwd[b->fwd_len++] = b->ids[j];
    }
    b->labels[slot] = label;
    b->lens[slot] = (uint32_t)doc_len;
    b->deleted[slot] = 0;
    b->n_docs++;
    b->n_live++;
    b->total_len += doc_len;
    b->norms_stale = true;
    idmap_put(&b->map, label, slot);
    return MC_OK;
}

/* Squeezes deleted slots out of every array, in place (no allocation, cannot fail). */
static void compact(struct mc_bm25 *b) {
    uint32_t *remap = b->touched; /* free between searches; one entry per slot */
    uint32_t next = 0;
    for (uint32_t i = 0; i < b->n_docs; i++)
        remap[i] = b->deleted[i] ? UINT32_MAX : next++;
    for (uint32_t t = 0; t < b->n_terms; t++) {
        struct term *tm = &b->terms[t];
        uint32_t k = 0;
        for (uint32_t j = 0; j < tm->n_post; j++)
            if (remap[tm->post[j].doc] != UINT32_MAX)
                tm->post[k++] = (struct posting){remap[tm->post[j].doc], tm->post[j].tf};
        tm->n_post = k;
    }
    size_t f = 0;
    for (uint32_t i = 0; i < b->n_docs; i++) {
        if (b->deleted[i])
            continue;
        uint32_t s = remap[i];
        memmove(b->fwd + f, b->fwd + b->fwd_off[i], b->fwd_n[i] * sizeof(*b->fwd));
        b->fwd_off[s] = (uint32_t)f;
        b->fwd_n[s] = b->fwd_n[i];
        f += b->fwd_n[i];
        b->labels[s] = b->labels[i];
        b->lens[s] = b->lens[i];
        b->deleted[s] = 0;
        /* Remove then put reuses the tombstone just made, so the map does not grow. */
        idmap_remove(&b->map, b->labels[s]);
        idmap_put(&b->map, b->labels[s], s);
    }
    b->fwd_len = f;
    b->n_docs = next;
    b->n_deleted = 0;
    b->norms_stale = true;
}

int mc_bm25_delete(struct mc_bm25 *b, uint64_t label, struct mc_err *err) {
    uint32_t slot = idmap_find(&b->map, label);
    if (slot == IDMAP_NONE)
        return mc_err_set(err, MC_ENOTFOUND, "bm25: label %llu is not in the index",
                          (unsigned long long)label);
    idmap_remove(&b->map, label);
    b->deleted[slot] = 1;
    b->n_live--;
    b->n_deleted++;
    b->total_len -= b->lens[slot];
    for (uint32_t j = 0; j < b->fwd_n[slot]; j++)
        b->terms[b->fwd[b->fwd_off[slot] + j]].df--;
    b->norms_stale = true;
    if (b->n_deleted > 1024 && b->n_deleted > b->n_live)
        compact(b);
    return MC_OK;
}

/* ---------------------------------------------------------------- search */

static void refresh_norms(struct mc_bm25 *b) {
    double avgdl = b->n_live ? (double)b->total_len / b->n_live : 1.0;
    if (avgdl <= 0.0)
        avgdl = 1.0; /* every live document is empty: lengths are all 0 anyway */
    double k1 = b->p.k1, bb = b->p.b;
    for (uint32_t i = 0; i < b->n_docs; i++)
        b->norm[i] = (float)(k1 * (1.0 - bb + bb * b->lens[i] / avgdl));
    b->norms_stale = false;
}

/* True when hit x ranks below hit y (lower score, or equal score and higher label). */
static inline bool worse(double sx, uint64_t lx, double sy, uint64_t ly) {
    return sx < sy || (sx == sy && lx > ly);
}

struct scored {
    double score;
    uint64_t label;
};

static void sift_down(struct scored *h, size_t n, size_t i) {
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            return;
        if (c + 1 < n && worse(h[c + 1].score, h[c + 1].label, h[c].score, h[c].label))
            c++;
        if (!worse(h[c].score, h[c].label, h[i].score, h[i].label))
            return;
        struct scored t = h[i];
        h[i] = h[c];
        h[c] = t;
        i = c;
    }
}

int mc_bm25_search(struct mc_bm25 *b, const char *query, size_t len, size_t k,
                   struct mc_bm25_hit *hits, size_t *n_hits, struct mc_err *err) {
    *n_hits = 0;
    begin_analysis(b);
    int rc = analyze(b, query, len, collect_known, NULL);
    if (rc)
        return mc_err_set(err, rc, "bm25: %s while analysing the query", mc_strerror(rc));
    if (k == 0 || b->n_live == 0 || b->n_ids == 0)
        return MC_OK;
    if (b->norms_stale)
        refresh_norms(b);
    size_t n_pairs = b->n_ids;

    /* Term at a time into the accumulator; a touched document always has a score > 0
     * because idf > 0 and tf >= 1, so acc == 0 means "not seen yet". */
    size_t n_touched = 0;
    double n_live = b->n_live, k1p1 = b->p.k1 + 1.0;
    for (size_t j = 0; j < n_pairs; j++) {
        const struct term *t = &b->terms[b->ids[j]];
        if (t->df == 0)
            continue;
        double idf = log(1.0 + (n_live - t->df + 0.5) / (t->df + 0.5));
        double w = b->cnt[j] * idf * k1p1;
        for (uint32_t p = 0; p < t->n_post; p++) {
            uint32_t d = t->post[p].doc;
            if (b->deleted[d])
                continue;
            if (b->acc[d] == 0.0)
                b->touched[n_touched++] = d;
            double tf = t->post[p].tf;
            b->acc[d] += w * tf / (tf + b->norm[d]);
        }
    }

    /* Keep the k best in a min-heap (worst on top), then sort it best first. */
    struct scored *heap = mc_malloc((k < n_touched ? k : n_touched) * sizeof(*heap) + 1);
    if (!heap) {
        for (size_t i = 0; i < n_touched; i++)
            b->acc[b->touched[i]] = 0.0;
        return mc_err_set(err, MC_ENOMEM, "bm25: out of memory for %zu hits", k);
    }
    size_t n = 0;
    for (size_t i = 0; i < n_touched; i++) {
        uint32_t d = b->touched[i];
        struct scored s = {b->acc[d], b->labels[d]};
        b->acc[d] = 0.0;
        if (n < k) {
            heap[n++] = s;
            for (size_t c = n - 1; c > 0 && worse(heap[c].score, heap[c].label,
                                                  heap[(c - 1) / 2].score, heap[(c - 1) / 2].label);
                 c = (c - 1) / 2) {
                struct scored tmp = heap[c];
                heap[c] = heap[(c - 1) / 2];
                heap[(c - 1) / 2] = tmp;
            }
        } else if (worse(heap[0].score, heap[0].label, s.score, s.label)) {
            heap[0] = s;
            sift_down(heap, n, 0);
        }
    }
    for (size_t m = n; m > 0; m--) {
        hits[m - 1] = (struct mc_bm25_hit){heap[0].label, (float)heap[0].score};
        heap[0] = heap[m - 1];
        sift_down(heap, m - 1, 0);
    }
    mc_free(heap);
    *n_hits = n;
    return MC_OK;
}

int mc_bm25_set_k1_b(struct mc_bm25 *b, float k1, float bb, struct mc_err *err) {
    struct mc_bm25_params p = b->p;
    p.k1 = k1;
    p.b = bb;
    int rc = check_params(&p, MC_EINVAL, err);
    if (rc)
        return rc;
    b->p = p;
    b->norms_stale = true;
    return MC_OK;
}

size_t mc_bm25_n_docs(const struct mc_bm25 *b) {
    return b->n_live;
}

size_t mc_bm25_memory_bytes(const struct mc_bm25 *b) {
    size_t n = sizeof(*b) + (size_t)b->cap_terms * sizeof(struct term);
    for (uint32_t i = 0; i < b->n_terms; i++)
        n += (size_t)b->terms[i].cap_post * sizeof(struct posting);
    n += b->cap_slots * sizeof(struct term_slot) + b->strs_cap;
    n += (size_t)b->cap_docs * (sizeof(uint64_t) + 4 + 1 + 4 + 4 + sizeof(float) + 8 + 4);
    n += b->fwd_cap * 4 + b->cap_ids * 8 + b->map.cap * (sizeof(uint64_t) + 4);
    return n;
}

size_t mc_bm25_n_terms(const struct mc_bm25 *b) {
    size_t n = 0;
    for (uint32_t i = 0; i < b->n_terms; i++)
        n += b->terms[i].df > 0;
    return n;
}

struct analyze_out {
    char *out;
    size_t cap, len;
    int n;
};

static int append_term(struct mc_bm25 *b, const char *s, size_t n, void *user) {
    (void)b;
    struct analyze_out *o = user;
    if (o->n > 0 && o->len + 1 < o->cap)
        o->out[o->len++] = ' ';
    size_t room = o->cap - 1 - o->len;
    size_t c = n < room ? n : room;
    memcpy(o->out + o->len, s, c);
    o->len += c;
    o->n++;
    return MC_OK;
}

int mc_bm25_analyze(struct mc_bm25 *b, const char *text, size_t len, char *out, size_t cap,
                    struct mc_err *err) {
    if (cap == 0)
        return mc_err_set(err, MC_EINVAL, "bm25: analyze needs an output buffer");
    struct analyze_out o = {out, cap, 0, 0};
    int rc = analyze(b, text, len, append_term, &o);
    out[o.len] = '\0';
    if (rc)
        return mc_err_set(err, rc, "bm25: %s while analysing", mc_strerror(rc));
    return o.n;
}

/* ---------------------------------------------------------------- serialization
 *
 * Little-endian layout, version 1:
 *   "MCBM25\0\1"  u32 version  f32 k1  f32 b  u32 stemmer  u32 keep_stopwords
 *   u32 n_docs  u32 n_terms
 *   n_docs  x (u64 label, u32 length)            live documents, in slot order
 *   n_terms x (u32 len, len bytes, u32 n_post, n_post x (u32 doc, u32 tf))
 * Only live documents and terms with live postings are written; doc numbers index the
 * document table above. Term order is dictionary order, so an image read back and written
 * again is byte-identical. */

#define BM25_MAGIC        "MCBM25\0\1"
#define BM25_VERSION      1u
#define BM25_HEADER_BYTES (8 + 4 * 7)

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "bm25 format assumes little-endian");

struct wbuf {
    uint8_t *p;
    size_t off;
};

static void put(struct wbuf *w, const void *src, size_t n) {
    memcpy(w->p + w->off, src, n);
    w->off += n;
}

static void put_u32(struct wbuf *w, uint32_t v) {
    put(w, &v, 4);
}

int mc_bm25_serialize(const struct mc_bm25 *b, uint8_t **buf, size_t *len, struct mc_err *err) {
    *buf = NULL;
    *len = 0;
    /* Live slots are renumbered densely; touched is free between searches. */
    uint32_t *remap = b->touched, next = 0;
    for (uint32_t i = 0; i < b->n_docs; i++)
        remap[i] = b->deleted[i] ? UINT32_MAX : next++;
    size_t total = BM25_HEADER_BYTES + (size_t)b->n_live * 12;
    uint32_t n_terms = 0;
    for (uint32_t t = 0; t < b->n_terms; t++) {
        if (b->terms[t].df == 0)
            continue;
        n_terms++;
        total += 8 + b->terms[t].len + (size_t)b->terms[t].df * 8;
    }
    struct wbuf w = {mc_malloc(total), 0};
    if (!w.p)
        return mc_err_set(err, MC_ENOMEM, "bm25: out of memory for a %zu-byte image", total);

    float k1 = b->p.k1, bb = b->p.b;
    put(&w, BM25_MAGIC, 8);
    put_u32(&w, BM25_VERSION);
    put(&w, &k1, 4);
    put(&w, &bb, 4);
    put_u32(&w, (uint32_t)b->p.stemmer);
    put_u32(&w, b->p.keep_stopwords ? 1 : 0);
    put_u32(&w, b->n_live);
    put_u32(&w, n_terms);
    for (uint32_t i = 0; i < b->n_docs; i++) {
        if (b->deleted[i])
            continue;
        put(&w, &b->labels[i], 8);
        put_u32(&w, b->lens[i]);
    }
    for (uint32_t t = 0; t < b->n_terms; t++) {
        const struct term *tm = &b->terms[t];
        if (tm->df == 0)
            continue;
        put_u32(&w, tm->len);
        put(&w, b->strs + tm->str_off, tm->len);
        put_u32(&w, tm->df);
        for (uint32_t j = 0; j < tm->n_post; j++) {
            if (b->deleted[tm->post[j].doc])
                continue;
            put_u32(&w, remap[tm->post[j].doc]);
            put_u32(&w, tm->post[j].tf);
        }
    }
    MC_ASSERT(w.off == total);
    *buf = w.p;
    *len = total;
    return MC_OK;
}

struct rbuf {
    const uint8_t *p;
    size_t len, off;
    struct mc_err *err;
};

static int need(struct rbuf *r, size_t n, const char *what) {
    if (r->len - r->off < n)
        return mc_err_set(r->err, MC_EFORMAT,
                          "bm25 image: %s at offset %zu needs %zu bytes, %zu left", what, r->off, n,
                          r->len - r->off);
    return MC_OK;
}

static int get_u32(struct rbuf *r, uint32_t *v, const char *what) {
    int rc = need(r, 4, what);
    if (rc)
        return rc;
    memcpy(v, r->p + r->off, 4);
    r->off += 4;
    return MC_OK;
}

static int read_params(struct rbuf *r, struct mc_bm25_params *p) {
    int rc = need(r, 8, "magic");
    if (rc)
        return rc;
    if (memcmp(r->p, BM25_MAGIC, 8) != 0)
        return mc_err_set(r->err, MC_EFORMAT, "bm25 image: bad magic at offset 0");
    if ((rc = need(r, BM25_HEADER_BYTES, "header")))
        return rc;
    r->off = 8;
    uint32_t version, stemmer, keep;
    get_u32(r, &version, "version");
    if (version != BM25_VERSION)
        return mc_err_set(r->err, MC_EFORMAT, "bm25 image: version %u at offset 8, expected %u",
                          version, BM25_VERSION);
    memcpy(&p->k1, r->p + 12, 4);
    memcpy(&p->b, r->p + 16, 4);
    r->off = 20;
    get_u32(r, &stemmer, "stemmer");
    get_u32(r, &keep, "keep_stopwords");
    if (stemmer > MC_BM25_STEM_ENGLISH)
        return mc_err_set(r->err, MC_EFORMAT, "bm25 image: stemmer %u at offset 20 is unknown",
                          stemmer);
    if (keep > 1)
        return mc_err_set(r->err, MC_EFORMAT,
                          "bm25 image: keep_stopwords %u at offset 24 is "
                          "not 0 or 1",
                          keep);
    p->stemmer = (int)stemmer;
    p->keep_stopwords = keep;
    rc = check_params(p, MC_EFORMAT, r->err);
    return rc ? mc_err_prefix(r->err, "bm25 image at offset 12") : MC_OK;
}

static int read_docs(struct rbuf *r, struct mc_bm25 *b, uint32_t n_docs) {
    for (uint32_t i = 0; i < n_docs; i++) {
        uint64_t label;
        memcpy(&label, r->p + r->off, 8);
        memcpy(&b->lens[i], r->p + r->off + 8, 4);
        if (idmap_find(&b->map, label) != IDMAP_NONE)
            return mc_err_set(r->err, MC_EFORMAT,
                              "bm25 image: label %llu at offset %zu appears twice",
                              (unsigned long long)label, r->off);
        if (idmap_reserve_one(&b->map))
            return mc_err_set(r->err, MC_ENOMEM, "bm25 image: out of memory for labels");
        idmap_put(&b->map, label, i);
        b->labels[i] = label;
        b->deleted[i] = 0;
        b->fwd_n[i] = 0;
        b->total_len += b->lens[i];
        r->off += 12;
    }
    b->n_docs = b->n_live = n_docs;
    return MC_OK;
}

/* Reads one term and its postings; adds each tf to sum_tf[doc] for the length check. */
static int read_term(struct rbuf *r, struct mc_bm25 *b, uint64_t *sum_tf) {
    uint32_t len, n_post, id;
    size_t at = r->off;
    int rc = get_u32(r, &len, "term length");
    if (rc)
        return rc;
    if (len == 0 || len > MC_BM25_MAX_TERM)
        return mc_err_set(r->err, MC_EFORMAT,
                          "bm25 image: term length %u at offset %zu "
                          "outside 1..%d",
                          len, at, MC_BM25_MAX_TERM);
    if ((rc = need(r, len, "term bytes")))
        return rc;
    const char *s = (const char *)r->p + r->off;
    if (term_find(b, s, len) != UINT32_MAX)
        return mc_err_set(r->err, MC_EFORMAT, "bm25 image: term at offset %zu appears twice",
                          r->off);
    r->off += len;
    at = r->off;
    if ((rc = get_u32(r, &n_post, "posting count")))
        return rc;
    if (n_post == 0 || n_post > b->n_docs || (r->len - r->off) / 8 < n_post)
        return mc_err_set(r->err, MC_EFORMAT,
                          "bm25 image: posting count %u at offset %zu "
                          "is 0, above the %u documents or past the end",
                          n_post, at, b->n_docs);
    if (term_add(b, s, len, &id) || reserve_postings(&b->terms[id], n_post))
        return mc_err_set(r->err, MC_ENOMEM, "bm25 image: out of memory for a term");
    struct term *t = &b->terms[id];
    for (uint32_t j = 0; j < n_post; j++) {
        struct posting p;
        memcpy(&p, r->p + r->off, 8);
        if (p.doc >= b->n_docs || (j > 0 && p.doc <= t->post[j - 1].doc))
            return mc_err_set(r->err, MC_EFORMAT,
                              "bm25 image: posting doc %u at offset %zu "
                              "is out of order or past the %u documents",
                              p.doc, r->off, b->n_docs);
        if (p.tf == 0)
            return mc_err_set(r->err, MC_EFORMAT, "bm25 image: zero tf at offset %zu", r->off + 4);
        t->post[j] = p;
        sum_tf[p.doc] += p.tf;
        b->fwd_n[p.doc]++;
        r->off += 8;
    }
    t->n_post = t->df = n_post;
    return MC_OK;
}

/* Builds the per-document term lists from the postings once every term is read. */
static int build_forward(struct mc_bm25 *b) {
    size_t total = 0;
    for (uint32_t i = 0; i < b->n_docs; i++) {
        b->fwd_off[i] = (uint32_t)total;
        total += b->fwd_n[i];
        b->fwd_n[i] = 0;
    }
    if (total > UINT32_MAX || reserve_fwd(b, total))
        return MC_ENOMEM;
    for (uint32_t t = 0; t < b->n_terms; t++)
        for (uint32_t j = 0; j < b->terms[t].n_post; j++) {
            uint32_t d = b->terms[t].post[j].doc;
            b->fwd[b->fwd_off[d] + b->fwd_n[d]++] = t;
        }
    b->fwd_len = total;
    return MC_OK;
}

static int read_body(struct rbuf *r, struct mc_bm25 *b, uint32_t n_docs, uint32_t n_terms) {
    int rc;
    if (n_docs > (r->len - r->off) / 12)
        return mc_err_set(r->err, MC_EFORMAT,
                          "bm25 image: n_docs %u at offset 28 does not fit "
                          "in %zu bytes",
                          n_docs, r->len);
    if (n_terms > (r->len - r->off - (size_t)n_docs * 12) / 17)
        return mc_err_set(r->err, MC_EFORMAT,
                          "bm25 image: n_terms %u at offset 32 does not fit "
                          "in %zu bytes",
                          n_terms, r->len);
    if (reserve_docs(b, n_docs))
        return mc_err_set(r->err, MC_ENOMEM, "bm25 image: out of memory for %u docs", n_docs);
    if ((rc = read_docs(r, b, n_docs)))
        return rc;
    uint64_t *sum_tf = mc_calloc(n_docs ? n_docs : 1, sizeof(*sum_tf));
    if (!sum_tf)
        return mc_err_set(r->err, MC_ENOMEM, "bm25 image: out of memory");
    for (uint32_t t = 0; t < n_terms && !rc; t++)
        rc = read_term(r, b, sum_tf);
    for (uint32_t i = 0; i < n_docs && !rc; i++)
        if (sum_tf[i] != b->lens[i])
            rc = mc_err_set(r->err, MC_EFORMAT,
                            "bm25 image: document %u has length %u but "
                            "its postings add up to %llu",
                            i, b->lens[i], (unsigned long long)sum_tf[i]);
    mc_free(sum_tf);
    if (!rc && r->off != r->len)
        rc = mc_err_set(r->err, MC_EFORMAT, "bm25 image: %zu trailing bytes at offset %zu",
                        r->len - r->off, r->off);
    if (!rc && build_forward(b))
        rc = mc_err_set(r->err, MC_ENOMEM, "bm25 image: out of memory for the forward index");
    return rc;
}

int mc_bm25_deserialize(const uint8_t *buf, size_t len, struct mc_bm25 **out, struct mc_err *err) {
    *out = NULL;
    struct rbuf r = {buf, len, 0, err};
    struct mc_bm25_params p = {0};
    uint32_t n_docs = 0, n_terms = 0;
    int rc = read_params(&r, &p);
    if (rc)
        return rc;
    get_u32(&r, &n_docs, "n_docs");
    get_u32(&r, &n_terms, "n_terms");
    struct mc_bm25 *b;
    if ((rc = mc_bm25_create(&p, &b, err)))
        return rc;
    rc = read_body(&r, b, n_docs, n_terms);
    if (rc) {
        mc_bm25_free(b);
        return rc;
    }
    b->norms_stale = true;
    *out = b;
    return MC_OK;
}
