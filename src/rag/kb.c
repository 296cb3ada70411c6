/* kb.c - per-tenant knowledge bases over the sealed store (see kb.h).
 *
 * In memory, a loaded knowledge base is: an array of document slots (NULL after a delete
 * until the next re-index), a sorted array of slot numbers by caller id for lookups and
 * listing, a chunk id -> slot map, the BM25 index and, once vectors exist, the HNSW
 * index. Chunk ids and document numbers only grow (next_chunk, next_doc), so a label is
 * never reused and a stale reference can only miss, never hit another document.
 *
 * Every mutation follows one pattern: prepare outside the lock (chunking, embedding),
 * then under the lock apply to the in-memory indexes, serialize manifest and indexes,
 * write everything in one store transaction and bump the generation. If any step fails
 * the transaction is rolled back and the in-memory state is thrown away and reloaded
 * from the store, so memory and disk both stay as they were. Rewriting the index images
 * on each call costs time proportional to the knowledge base, which favours batches.
 *
 * The set keeps entries in a hash table by tenant id and an LRU list; an entry's refs
 * count is changed under the set lock, and entries with no refs are unloaded, least
 * recently used first, while the loaded bytes exceed the budget. Lock order: a knowledge
 * base's lock, then the set lock, then the store's; never the other way.
 *
 * Does not compact the HNSW graph: deleted chunks stay as waypoints until the knowledge
 * base is rebuilt by re-ingesting (docs/knowledge-bases.md, "Known limits"). */
#include "rag/kb.h"
#include "rag/chunk.h"
#include "rag/idmap.h"
#include "rag/kb_int.h"

#include "base/mem.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MANIFEST_MAGIC     "MCKBMAN1"
#define KIND_KB            "kb"
#define KIND_DOC           "kbdoc"
#define EMBED_BATCH        64 /* chunks per mc_embed call */
#define MAX_CHUNKS_PER_DOC (1u << 24)

struct mc_kb {
    struct mc_kbs *set;
    char tenant[MC_STORE_ID_MAX + 1];
    pthread_mutex_t lock;

    /* Set-owned fields, under the set lock. */
    int refs;
    struct mc_kb *hnext;               /* hash chain */
    struct mc_kb *lru_prev, *lru_next; /* most recent at the head */
    size_t bytes;                      /* counted in the set's total */

    /* State, under the knowledge base's lock. */
    bool loaded;
    uint64_t gen;
    uint64_t next_doc, next_chunk;
    char embed_name[MC_EMBED_NAME_MAX + 1]; /* "" until vectors exist */
    int embed_dim;
    struct kb_doc **docs; /* (n_slots) slots, NULL for removed ones */
    size_t n_slots, cap_slots;
    uint32_t *order; /* (n_docs) slots sorted by id */
    size_t n_docs;
    size_t n_chunks;
    struct idmap chunk_slot; /* chunk id -> slot */
    struct mc_bm25 *bm25;
    struct mc_hnsw *hnsw;
};

struct mc_kbs {
    struct mc_store *store;
    struct mc_kb_config cfg;
    const struct mc_tokenizer *tok;
    struct mc_embedder *emb;
    pthread_mutex_t lock;
    struct mc_kb **buckets;
    size_t n_buckets, n_entries;
    struct mc_kb *lru_head, *lru_tail;
    size_t bytes;
};

/* ---------------------------------------------------------------------------------------
 * Small helpers */

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static int id_cmp(const char *a, size_t na, const char *b, size_t nb) {
    int c = memcmp(a, b, na < nb ? na : nb);
    return c ? c : (na > nb) - (na < nb);
}

/* Writes a printable rendering of a caller id (at most 40 bytes of it, other bytes as
 * \xNN) into out, for error messages. */
static const char *id_show(const char *id, size_t n, char out[200]) {
    size_t o = 0;
    for (size_t i = 0; i < n && i < 40 && o + 5 < 200; i++) {
        unsigned char c = (unsigned char)id[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, 200 - o, "\\x%02x", c);
    }
    if (n > 40 && o + 4 < 200)
        o += (size_t)snprintf(out + o, 200 - o, "...");
    out[o] = 0;
    return out;
}

static long utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, min = 0x80, c &= 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, min = 0x800, c &= 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, min = 0x10000, c &= 0x07;
        } else {
            return (long)i;
        }
        if (n - i <= k)
            return (long)i;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return (long)i;
            c = (c << 6) | (s[i + j] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return (long)i;
        i += k + 1;
    }
    return -1;
}

/* ---------------------------------------------------------------------------------------
 * Byte buffers for the manifest */

struct wbuf {
    uint8_t *p;
    size_t n, cap;
    bool oom;
};

static void wb_put(struct wbuf *b, const void *s, size_t n) {
    if (b->oom || n == 0)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        uint8_t *p = mc_realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void wb_u64(struct wbuf *b, uint64_t v) {
    uint8_t x[8];
    for (int i = 0; i < 8; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    wb_put(b, x, 8);
}

static void wb_u32(struct wbuf *b, uint32_t v) {
    uint8_t x[4];
    for (int i = 0; i < 4; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    wb_put(b, x, 4);
}

/* A length-prefixed string; NULL is written as length 0xFFFFFFFF. */
static void wb_str(struct wbuf *b, const char *s, size_t n) {
    wb_u32(b, s ? (uint32_t)n : UINT32_MAX);
    if (s)
        wb_put(b, s, n);
}

struct rbuf {
    const uint8_t *p;
    size_t n, off;
    const char *bad; /* the field that did not fit, or NULL */
    size_t bad_off;
};

static bool rb_need(struct rbuf *r, size_t n, const char *what) {
    if (r->bad)
        return false;
    if (r->n - r->off < n) {
        r->bad = what;
        r->bad_off = r->off;
        return false;
    }
    return true;
}

static uint64_t rb_u64(struct rbuf *r, const char *what) {
    uint64_t v = 0;
    if (!rb_need(r, 8, what))
        return 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)r->p[r->off + (size_t)i] << (8 * i);
    r->off += 8;
    return v;
}

static uint32_t rb_u32(struct rbuf *r, const char *what) {
    uint32_t v = 0;
    if (!rb_need(r, 4, what))
        return 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)r->p[r->off + (size_t)i] << (8 * i);
    r->off += 4;
    return v;
}

/* A new NUL-terminated copy of a length-prefixed string of at most max bytes; NULL for
 * the NULL marker (with *present false) or on failure (r->bad set, or *oom). */
static char *rb_str(struct rbuf *r, size_t max, const char *what, uint32_t *len, bool *oom) {
    uint32_t n = rb_u32(r, what);
    *len = 0;
    if (r->bad || n == UINT32_MAX)
        return NULL;
    if (n > max) {
        r->bad = what;
        r->bad_off = r->off - 4;
        return NULL;
    }
    if (!rb_need(r, n, what))
        return NULL;
    char *s = mc_strndup((const char *)r->p + r->off, n);
    if (!s)
        *oom = true;
    r->off += n;
    *len = n;
    return s;
}

/* ---------------------------------------------------------------------------------------
 * Documents in memory */

static void doc_free(struct kb_doc *d) {
    if (!d)
        return;
    for (uint32_t c = 0; c < d->n_chunks && d->chunks; c++)
        mc_free(d->chunks[c].heading);
    mc_free(d->id);
    mc_free(d->title);
    mc_free(d->meta);
    mc_free(d->ctype);
    mc_free(d->chunks);
    mc_free(d);
}

/* Drops every piece of loaded state (the knowledge base then counts as not loaded). */
static void state_clear(struct mc_kb *kb) {
    for (size_t i = 0; i < kb->n_slots; i++)
        doc_free(kb->docs[i]);
    mc_free(kb->docs);
    mc_free(kb->order);
    idmap_deinit(&kb->chunk_slot);
    mc_bm25_free(kb->bm25);
    mc_hnsw_free(kb->hnsw);
    kb->docs = NULL;
    kb->order = NULL;
    kb->n_slots = kb->cap_slots = kb->n_docs = kb->n_chunks = 0;
    memset(&kb->chunk_slot, 0, sizeof(kb->chunk_slot));
    kb->bm25 = NULL;
    kb->hnsw = NULL;
    kb->embed_name[0] = 0;
    kb->embed_dim = 0;
    kb->next_doc = kb->next_chunk = 1;
    kb->loaded = false;
}

static int slot_push(struct mc_kb *kb, struct kb_doc *d) {
    if (kb->n_slots == kb->cap_slots) {
        size_t cap = kb->cap_slots ? kb->cap_slots * 2 : 16;
        struct kb_doc **p = mc_realloc(kb->docs, cap * sizeof(*p));
        if (!p)
            return MC_ENOMEM;
        kb->docs = p;
        kb->cap_slots = cap;
    }
    kb->docs[kb->n_slots++] = d;
    return MC_OK;
}

static struct mc_kb *sort_kb; /* qsort has no context argument in C11 */
static pthread_mutex_t sort_lock = PTHREAD_MUTEX_INITIALIZER;

static int order_cmp(const void *a, const void *b) {
    const struct kb_doc *x = sort_kb->docs[*(const uint32_t *)a];
    const struct kb_doc *y = sort_kb->docs[*(const uint32_t *)b];
    return id_cmp(x->id, x->id_len, y->id, y->id_len);
}

/* Compacts the slots, sorts them by id and rebuilds the chunk map. On failure the state
 * is unusable and the caller clears it. */
static int reindex(struct mc_kb *kb) {
    size_t n = 0, n_chunks = 0;
    for (size_t i = 0; i < kb->n_slots; i++)
        if (kb->docs[i]) {
            kb->docs[n++] = kb->docs[i];
            n_chunks += kb->docs[i]->n_chunks;
        }
    kb->n_slots = kb->n_docs = n;
    kb->n_chunks = n_chunks;
    mc_free(kb->order);
    kb->order = mc_malloc((n ? n : 1) * sizeof(uint32_t));
    if (!kb->order)
        return MC_ENOMEM;
    for (size_t i = 0; i < n; i++)
        kb->order[i] = (uint32_t)i;
    pthread_mutex_lock(&sort_lock);
    sort_kb = kb;
    qsort(kb->order, n, sizeof(uint32_t), order_cmp);
    pthread_mutex_unlock(&sort_lock);

    idmap_deinit(&kb->chunk_slot);
    memset(&kb->chunk_slot, 0, sizeof(kb->chunk_slot));
    for (size_t i = 0; i < n; i++)
        for (uint32_t c = 0; c < kb->docs[i]->n_chunks; c++) {
            if (idmap_reserve_one(&kb->chunk_slot) != MC_OK)
                return MC_ENOMEM;
            idmap_put(&kb->chunk_slot, kb->docs[i]->chunks[c].id, (uint32_t)i);
        }
    return MC_OK;
}

/* The slot of the live document with this id, or -1 (uses the sorted order, so only
 * documents present at the last reindex are found). */
static long find_doc(const struct mc_kb *kb, const char *id, size_t n) {
    size_t lo = 0, hi = kb->n_docs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct kb_doc *d = kb->docs[kb->order[mid]];
        int c = id_cmp(d->id, d->id_len, id, n);
        if (c == 0)
            return (long)kb->order[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* ---------------------------------------------------------------------------------------
 * Manifest */

static int manifest_write(const struct mc_kb *kb, uint8_t **out, size_t *len, struct mc_err *err) {
    struct wbuf b = {0};
    wb_put(&b, MANIFEST_MAGIC, 8);
    wb_u64(&b, kb->next_doc);
    wb_u64(&b, kb->next_chunk);
    wb_str(&b, kb->embed_name, strlen(kb->embed_name));
    wb_u32(&b, (uint32_t)kb->embed_dim);
    size_t n_docs = 0;
    for (size_t i = 0; i < kb->n_slots; i++)
        n_docs += kb->docs[i] != NULL;
    wb_u64(&b, n_docs);
    for (size_t i = 0; i < kb->n_slots; i++) {
        const struct kb_doc *d = kb->docs[i];
        if (!d)
            continue;
        wb_u64(&b, d->no);
        wb_str(&b, d->id, d->id_len);
        wb_str(&b, d->title, d->title ? strlen(d->title) : 0);
        wb_str(&b, d->meta, strlen(d->meta));
        wb_str(&b, d->ctype, strlen(d->ctype));
        wb_u64(&b, d->text_len);
        wb_u64(&b, (uint64_t)d->created_ms);
        wb_u32(&b, d->n_chunks);
        for (uint32_t c = 0; c < d->n_chunks; c++) {
            wb_u64(&b, d->chunks[c].id);
            wb_u64(&b, d->chunks[c].start);
            wb_u64(&b, d->chunks[c].end);
            const char *h = d->chunks[c].heading;
            wb_str(&b, h, h ? strlen(h) : 0);
        }
    }
    if (b.oom) {
        mc_free(b.p);
        return mc_err_set(err, MC_ENOMEM, "out of memory writing the knowledge base manifest");
    }
    *out = b.p;
    *len = b.n;
    return MC_OK;
}

/* Reads one document record; NULL with r->bad or *oom set on failure. */
static struct kb_doc *manifest_doc(struct rbuf *r, bool *oom) {
    struct kb_doc *d = mc_calloc(1, sizeof(*d));
    if (!d) {
        *oom = true;
        return NULL;
    }
    uint32_t n;
    d->no = rb_u64(r, "document number");
    d->id = rb_str(r, MC_KB_ID_MAX, "document id", &d->id_len, oom);
    d->title = rb_str(r, MC_KB_TITLE_MAX, "title", &n, oom);
    d->meta = rb_str(r, MC_KB_META_MAX, "metadata", &n, oom);
    d->ctype = rb_str(r, MC_KB_CTYPE_MAX, "content type", &n, oom);
    d->text_len = rb_u64(r, "text length");
    d->created_ms = (int64_t)rb_u64(r, "created time");
    d->n_chunks = rb_u32(r, "chunk count");
    if (!r->bad && !*oom && (!d->id || !d->meta || !d->ctype || d->id_len == 0)) {
        r->bad = "document fields";
        r->bad_off = r->off;
    }
    if (!r->bad && !*oom &&
        (d->n_chunks > MAX_CHUNKS_PER_DOC || (r->n - r->off) / 28 < d->n_chunks)) {
        r->bad = "chunk count";
        r->bad_off = r->off - 4;
    }
    if (!r->bad && !*oom && d->n_chunks) {
        d->chunks = mc_calloc(d->n_chunks, sizeof(*d->chunks));
        if (!d->chunks)
            *oom = true;
    }
    for (uint32_t c = 0; c < d->n_chunks && !r->bad && !*oom; c++) {
        struct kb_chunk *k = &d->chunks[c];
        k->id = rb_u64(r, "chunk id");
        k->start = rb_u64(r, "chunk start");
        k->end = rb_u64(r, "chunk end");
        uint32_t n_heading;
        k->heading = rb_str(r, MC_KB_TITLE_MAX, "chunk heading", &n_heading, oom);
        if (!r->bad && (k->start > k->end || k->end > d->text_len ||
                        (c > 0 && k->id <= d->chunks[c - 1].id))) {
            r->bad = "chunk span";
            r->bad_off = r->off;
        }
    }
    if (r->bad || *oom) {
        doc_free(d);
        return NULL;
    }
    return d;
}

/* Rebuilds the document state from a manifest image. The image was sealed by us, so a
 * failure means a bug or damage; it is still read with every length checked. */
static int manifest_read(struct mc_kb *kb, const uint8_t *p, size_t n, struct mc_err *err) {
    struct rbuf r = {.p = p, .n = n};
    bool oom = false;
    if (n < 8 || memcmp(p, MANIFEST_MAGIC, 8) != 0)
        return mc_err_set(err, MC_EFORMAT, "knowledge base manifest: bad magic at byte 0");
    r.off = 8;
    kb->next_doc = rb_u64(&r, "next document");
    kb->next_chunk = rb_u64(&r, "next chunk");
    uint32_t name_len = 0;
    char *name = rb_str(&r, MC_EMBED_NAME_MAX, "embedder name", &name_len, &oom);
    if (name) {
        memcpy(kb->embed_name, name, (size_t)name_len + 1);
        mc_free(name);
    }
    kb->embed_dim = (int)rb_u32(&r, "embedding dimension");
    uint64_t n_docs = rb_u64(&r, "document count");
    for (uint64_t i = 0; i < n_docs && !r.bad && !oom; i++) {
        struct kb_doc *d = manifest_doc(&r, &oom);
        if (d && (d->no >= kb->next_doc || slot_push(kb, d) != MC_OK)) {
            if (d->no >= kb->next_doc) {
                r.bad = "document number";
                r.bad_off = r.off;
            } else {
                oom = true;
            }
            doc_free(d);
        }
    }
    if (oom)
        return mc_err_set(err, MC_ENOMEM, "out of memory reading the knowledge base manifest");
    if (!r.bad && r.off != n) {
        r.bad = "trailing bytes";
        r.bad_off = r.off;
    }
    if (r.bad)
        return mc_err_set(err, MC_EFORMAT, "knowledge base manifest: bad %s at byte %zu", r.bad,
                          r.bad_off);
    return MC_OK;
}

/* ---------------------------------------------------------------------------------------
 * Loading and syncing */

static int read_gen(struct mc_kb *kb, uint64_t *gen, struct mc_err *err) {
    void *data = NULL;
    size_t n = 0;
    int rc = mc_store_obj_get(kb->set->store, kb->tenant, KIND_KB, "gen", &data, &n, err);
    if (rc == MC_ENOTFOUND) {
        *gen = 0;
        return MC_OK;
    }
    if (rc != MC_OK)
        return rc;
    if (n != 8) {
        mc_free(data);
        return mc_err_set(err, MC_EFORMAT, "knowledge base generation is %zu bytes, not 8", n);
    }
    struct rbuf r = {.p = data, .n = 8};
    *gen = rb_u64(&r, "generation");
    mc_free(data);
    return MC_OK;
}

/* Reads one optional object; *data NULL when absent. */
static int get_opt(struct mc_kb *kb, const char *obj, void **data, size_t *n, struct mc_err *err) {
    int rc = mc_store_obj_get(kb->set->store, kb->tenant, KIND_KB, obj, data, n, err);
    if (rc == MC_ENOTFOUND) {
        *data = NULL;
        *n = 0;
        return MC_OK;
    }
    return rc;
}

static void set_bytes(struct mc_kb *kb, size_t bytes);

/* Loads the whole state inside a store transaction (its own unless in_txn says the caller
 * has one open), so a writer in another process cannot commit between the reads. Leaves
 * the state cleared on failure. */
static int load(struct mc_kb *kb, bool in_txn, struct mc_err *err) {
    state_clear(kb);
    struct mc_store *st = kb->set->store;
    void *man = NULL, *bm = NULL, *hn = NULL;
    size_t n_man = 0, n_bm = 0, n_hn = 0;
    uint64_t gen = 0;
    int rc = in_txn ? MC_OK : mc_store_begin(st, err);
    if (rc != MC_OK)
        return rc;
    if ((rc = read_gen(kb, &gen, err)) == MC_OK && gen == 0) {
        struct mc_store_tenant t = {0};
        rc = mc_store_tenant_get(st, kb->tenant, &t, err);
        mc_store_tenant_clear(&t);
    }
    if (rc == MC_OK && gen > 0 && (rc = get_opt(kb, "manifest", &man, &n_man, err)) == MC_OK &&
        (rc = get_opt(kb, "bm25", &bm, &n_bm, err)) == MC_OK)
        rc = get_opt(kb, "hnsw", &hn, &n_hn, err);
    if (!in_txn)
        mc_store_rollback(st);

    if (rc == MC_OK && man)
        rc = manifest_read(kb, man, n_man, err);
    if (rc == MC_OK && bm)
        rc = mc_bm25_deserialize(bm, n_bm, &kb->bm25, err);
    if (rc == MC_OK && hn)
        rc = mc_hnsw_deserialize(hn, n_hn, &kb->hnsw, err);
    if (rc == MC_OK && reindex(kb) != MC_OK)
        rc = mc_err_set(err, MC_ENOMEM, "out of memory indexing the knowledge base");
    mc_free(man);
    mc_free(bm);
    mc_free(hn);
    if (rc != MC_OK) {
        mc_err_prefix(err, "loading the knowledge base of tenant %s", kb->tenant);
        state_clear(kb);
        set_bytes(kb, 0);
        return rc;
    }
    kb->gen = gen;
    kb->loaded = true;
    set_bytes(kb, n_man + n_bm + n_hn + kb->n_slots * sizeof(struct kb_doc));
    return MC_OK;
}

/* Reloads the state when the store holds a newer generation (or nothing is loaded). */
static int sync_state(struct mc_kb *kb, bool in_txn, struct mc_err *err) {
    uint64_t gen = 0;
    int rc = MC_OK;
    if (kb->loaded)
        rc = read_gen(kb, &gen, err);
    if (rc == MC_OK && (!kb->loaded || gen != kb->gen))
        rc = load(kb, in_txn, err);
    return rc;
}

int kb_lock_synced(struct mc_kb *kb, struct mc_err *err) {
    pthread_mutex_lock(&kb->lock);
    int rc = sync_state(kb, false, err);
    if (rc != MC_OK)
        pthread_mutex_unlock(&kb->lock);
    return rc;
}

void kb_unlock(struct mc_kb *kb) {
    pthread_mutex_unlock(&kb->lock);
}

struct mc_bm25 *kb_bm25(struct mc_kb *kb) {
    return kb->bm25;
}

struct mc_hnsw *kb_hnsw(struct mc_kb *kb) {
    return kb->hnsw;
}

struct mc_store *kb_store(struct mc_kb *kb) {
    return kb->set->store;
}

struct mc_embedder *kb_embedder(struct mc_kb *kb) {
    return kb->set->emb;
}

const struct kb_doc *kb_find_chunk(struct mc_kb *kb, uint64_t chunk_id,
                                   const struct kb_chunk **chunk) {
    uint32_t slot = idmap_find(&kb->chunk_slot, chunk_id);
    if (slot == IDMAP_NONE || slot >= kb->n_slots || !kb->docs[slot])
        return NULL;
    const struct kb_doc *d = kb->docs[slot];
    size_t lo = 0, hi = d->n_chunks;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (d->chunks[mid].id == chunk_id) {
            *chunk = &d->chunks[mid];
            return d;
        }
        if (d->chunks[mid].id < chunk_id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* MC_OK when the set's embedder may write vectors into this knowledge base. */
static int check_embedder(const struct mc_kb *kb, const struct mc_embedder *emb,
                          struct mc_err *err) {
    if (!kb->embed_name[0])
        return MC_OK;
    if (!emb)
        return mc_err_set(err, MC_EINVAL, "knowledge base holds vectors of model '%s'; use it",
                          kb->embed_name);
    if (strcmp(mc_embedder_name(emb), kb->embed_name) != 0 || mc_embedder_dim(emb) != kb->embed_dim)
        return mc_err_set(
            err, MC_EINVAL, "knowledge base holds %d-d vectors from model '%s', not %d-d from '%s'",
            kb->embed_dim, kb->embed_name, mc_embedder_dim(emb), mc_embedder_name(emb));
    return MC_OK;
}

int kb_check_dense(struct mc_kb *kb, struct mc_err *err) {
    if (kb->n_chunks == 0)
        return MC_OK; /* empty: nothing to find in any mode */
    if (!kb->hnsw || !kb->embed_name[0])
        return mc_err_set(err, MC_EINVAL, "knowledge base has no vectors; use mode bm25");
    return check_embedder(kb, kb->set->emb, err);
}

int kb_doc_text(struct mc_kb *kb, const struct kb_doc *d, char **text, size_t *len,
                struct mc_err *err) {
    char obj[32];
    snprintf(obj, sizeof(obj), "%llu", (unsigned long long)d->no);
    void *data = NULL;
    int rc = mc_store_obj_get(kb->set->store, kb->tenant, KIND_DOC, obj, &data, len, err);
    if (rc != MC_OK)
        return rc;
    if (*len != d->text_len) {
        mc_free(data);
        return mc_err_set(err, MC_EFORMAT, "document text is %zu bytes, the manifest says %llu",
                          *len, (unsigned long long)d->text_len);
    }
    *text = data;
    return MC_OK;
}

/* ---------------------------------------------------------------------------------------
 * The set: configuration, hash table, LRU */

void mc_kb_config_default(struct mc_kb_config *c) {
    memset(c, 0, sizeof(*c));
    c->chunk_tokens = 200;
    c->chunk_overlap = 40;
    mc_bm25_params_default(&c->bm25);
    c->hnsw_m = 16;
    c->hnsw_ef_construction = 200;
    c->hnsw_ef_search = 64;
    c->budget_bytes = (size_t)256 << 20;
}

static int config_check(const struct mc_kb_config *c, struct mc_err *err) {
    if (c->chunk_tokens < 1 || c->chunk_tokens > 65536)
        return mc_err_set(err, MC_EINVAL, "chunk_tokens %zu is out of range 1..65536",
                          c->chunk_tokens);
    if (c->chunk_overlap >= c->chunk_tokens)
        return mc_err_set(err, MC_EINVAL, "chunk_overlap %zu must be below chunk_tokens %zu",
                          c->chunk_overlap, c->chunk_tokens);
    if (c->hnsw_m < 2 || c->hnsw_m > MC_HNSW_MAX_M)
        return mc_err_set(err, MC_EINVAL, "hnsw_m %d is out of range 2..%d", c->hnsw_m,
                          MC_HNSW_MAX_M);
    if (c->hnsw_ef_construction < 1 || c->hnsw_ef_construction > MC_HNSW_MAX_EF)
        return mc_err_set(err, MC_EINVAL, "hnsw_ef_construction %d is out of range 1..%d",
                          c->hnsw_ef_construction, MC_HNSW_MAX_EF);
    if (c->hnsw_ef_search < 1 || c->hnsw_ef_search > MC_HNSW_MAX_EF)
        return mc_err_set(err, MC_EINVAL, "hnsw_ef_search %d is out of range 1..%d",
                          c->hnsw_ef_search, MC_HNSW_MAX_EF);
    struct mc_bm25 *probe = NULL;
    int rc = mc_bm25_create(&c->bm25, &probe, err);
    mc_bm25_free(probe);
    return rc;
}

int mc_kbs_create(struct mc_store *store, const struct mc_kb_config *cfg,
                  const struct mc_tokenizer *tok, struct mc_embedder *emb, struct mc_kbs **out,
                  struct mc_err *err) {
    *out = NULL;
    struct mc_kb_config def;
    if (!cfg) {
        mc_kb_config_default(&def);
        cfg = &def;
    }
    int rc = config_check(cfg, err);
    if (rc != MC_OK)
        return rc;
    struct mc_kbs *s = mc_calloc(1, sizeof(*s));
    if (s)
        s->buckets = mc_calloc(64, sizeof(*s->buckets));
    if (!s || !s->buckets) {
        mc_free(s);
        return mc_err_set(err, MC_ENOMEM, "out of memory creating the knowledge base set");
    }
    s->n_buckets = 64;
    s->store = store;
    s->cfg = *cfg;
    s->tok = tok;
    s->emb = emb;
    pthread_mutex_init(&s->lock, NULL);
    *out = s;
    return MC_OK;
}

static void entry_free(struct mc_kb *kb) {
    state_clear(kb);
    pthread_mutex_destroy(&kb->lock);
    mc_free(kb);
}

void mc_kbs_free(struct mc_kbs *s) {
    if (!s)
        return;
    for (struct mc_kb *kb = s->lru_head, *next; kb; kb = next) {
        next = kb->lru_next;
        MC_ASSERT(kb->refs == 0);
        entry_free(kb);
    }
    mc_free(s->buckets);
    pthread_mutex_destroy(&s->lock);
    mc_free(s);
}

struct mc_embedder *mc_kbs_embedder(const struct mc_kbs *s) {
    return s->emb;
}

size_t mc_kbs_n_loaded(struct mc_kbs *s) {
    pthread_mutex_lock(&s->lock);
    size_t n = 0;
    for (struct mc_kb *kb = s->lru_head; kb; kb = kb->lru_next)
        n += kb->bytes > 0;
    pthread_mutex_unlock(&s->lock);
    return n;
}

size_t mc_kbs_bytes_loaded(struct mc_kbs *s) {
    pthread_mutex_lock(&s->lock);
    size_t n = s->bytes;
    pthread_mutex_unlock(&s->lock);
    return n;
}

static void lru_unlink(struct mc_kbs *s, struct mc_kb *kb) {
    if (kb->lru_prev)
        kb->lru_prev->lru_next = kb->lru_next;
    else
        s->lru_head = kb->lru_next;
    if (kb->lru_next)
        kb->lru_next->lru_prev = kb->lru_prev;
    else
        s->lru_tail = kb->lru_prev;
    kb->lru_prev = kb->lru_next = NULL;
}

static void lru_push_head(struct mc_kbs *s, struct mc_kb *kb) {
    kb->lru_next = s->lru_head;
    kb->lru_prev = NULL;
    if (s->lru_head)
        s->lru_head->lru_prev = kb;
    s->lru_head = kb;
    if (!s->lru_tail)
        s->lru_tail = kb;
}

static struct mc_kb **bucket_of(struct mc_kbs *s, const char *tenant) {
    return &s->buckets[fnv1a(tenant) & (s->n_buckets - 1)];
}

/* Removes an entry nobody holds from the table and the list and frees it. */
static void entry_drop(struct mc_kbs *s, struct mc_kb *kb) {
    for (struct mc_kb **p = bucket_of(s, kb->tenant); *p; p = &(*p)->hnext)
        if (*p == kb) {
            *p = kb->hnext;
            break;
        }
    lru_unlink(s, kb);
    s->bytes -= kb->bytes;
    s->n_entries--;
    entry_free(kb);
}

/* Unloads entries nobody holds, least recently used first, while over the budget. */
static void evict_locked(struct mc_kbs *s) {
    for (struct mc_kb *kb = s->lru_tail, *prev; kb && s->bytes > s->cfg.budget_bytes; kb = prev) {
        prev = kb->lru_prev;
        if (kb->refs == 0)
            entry_drop(s, kb);
    }
}

static void set_bytes(struct mc_kb *kb, size_t bytes) {
    struct mc_kbs *s = kb->set;
    pthread_mutex_lock(&s->lock);
    s->bytes = s->bytes - kb->bytes + bytes;
    kb->bytes = bytes;
    pthread_mutex_unlock(&s->lock);
}

/* Doubles the hash table when it holds twice as many entries as buckets. */
static void grow_buckets(struct mc_kbs *s) {
    if (s->n_entries < 2 * s->n_buckets)
        return;
    size_t nb = s->n_buckets * 2;
    struct mc_kb **b = mc_calloc(nb, sizeof(*b));
    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < s->n_buckets; i++)
        for (struct mc_kb *kb = s->buckets[i], *next; kb; kb = next) {
            next = kb->hnext;
            struct mc_kb **head = &b[fnv1a(kb->tenant) & (nb - 1)];
            kb->hnext = *head;
            *head = kb;
        }
    mc_free(s->buckets);
    s->buckets = b;
    s->n_buckets = nb;
}

bool mc_kbs_unload(struct mc_kbs *s, const char *tenant_id) {
    pthread_mutex_lock(&s->lock);
    bool ok = true;
    for (struct mc_kb *kb = *bucket_of(s, tenant_id); kb; kb = kb->hnext)
        if (strcmp(kb->tenant, tenant_id) == 0) {
            if (kb->refs == 0)
                entry_drop(s, kb);
            else
                ok = false;
            break;
        }
    pthread_mutex_unlock(&s->lock);
    return ok;
}

int mc_kb_open(struct mc_kbs *s, const char *tenant_id, struct mc_kb **out, struct mc_err *err) {
    *out = NULL;
    size_t n = tenant_id ? strlen(tenant_id) : 0;
    if (n == 0 || n > MC_STORE_ID_MAX)
        return mc_err_set(err, MC_EINVAL, "tenant id must be 1..%d bytes, got %zu", MC_STORE_ID_MAX,
                          n);
    pthread_mutex_lock(&s->lock);
    struct mc_kb *kb = *bucket_of(s, tenant_id);
    while (kb && strcmp(kb->tenant, tenant_id) != 0)
        kb = kb->hnext;
    if (kb) {
        lru_unlink(s, kb);
    } else {
        kb = mc_calloc(1, sizeof(*kb));
        if (!kb) {
            pthread_mutex_unlock(&s->lock);
            return mc_err_set(err, MC_ENOMEM, "out of memory opening a knowledge base");
        }
        kb->set = s;
        memcpy(kb->tenant, tenant_id, n + 1);
        pthread_mutex_init(&kb->lock, NULL);
        state_clear(kb);
        struct mc_kb **head = bucket_of(s, tenant_id);
        kb->hnext = *head;
        *head = kb;
        s->n_entries++;
        grow_buckets(s);
    }
    lru_push_head(s, kb);
    kb->refs++;
    pthread_mutex_unlock(&s->lock);
    *out = kb;
    return MC_OK;
}

void mc_kb_close(struct mc_kb *kb) {
    if (!kb)
        return;
    struct mc_kbs *s = kb->set;
    pthread_mutex_lock(&s->lock);
    MC_ASSERT(kb->refs > 0);
    kb->refs--;
    if (kb->refs == 0 && kb->bytes == 0)
        entry_drop(s, kb); /* nothing loaded: nothing worth keeping */
    else
        evict_locked(s);
    pthread_mutex_unlock(&s->lock);
}

const char *mc_kb_tenant(const struct mc_kb *kb) {
    return kb->tenant;
}

/* ---------------------------------------------------------------------------------------
 * Chunking with the model's tokenizer */

/* Token start offsets from the pieces of the model's tokenizer. The pieces of a
 * SentencePiece vocabulary carry one added leading space, skipped here. If the pieces do
 * not spell the text byte for byte (a normalising vocabulary), the text is cut by words
 * instead, which only changes chunk sizes, never correctness. */
static int tok_offsets(void *ctx, const char *text, size_t len, size_t *starts, size_t cap,
                       size_t *n_tokens, struct mc_err *err) {
    const struct mc_tokenizer *tok = ctx;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = mc_tokenize(tok, text, len, false, false, &ids, &n, err);
    if (rc != MC_OK)
        return rc;
    size_t pos = 0;
    bool ok = true;
    char piece[256];
    for (size_t i = 0; i < n && ok; i++) {
        int pl = mc_token_to_piece(tok, ids[i], false, piece, sizeof(piece));
        if (pl < 0 || (size_t)pl > sizeof(piece)) {
            ok = false;
            break;
        }
        const char *p = piece;
        if (i == 0 && pl > 0 && piece[0] == ' ' && (len == 0 || text[0] != ' ')) {
            p++;
            pl--;
        }
        if (i < cap)
            starts[i] = pos;
        if ((size_t)pl > len - pos || memcmp(text + pos, p, (size_t)pl) != 0)
            ok = false;
        pos += (size_t)pl;
    }
    mc_free(ids);
    if (!ok || pos != len)
        return mc_chunk_tokenize_words(NULL, text, len, starts, cap, n_tokens, err);
    *n_tokens = n;
    return MC_OK;
}

/* ---------------------------------------------------------------------------------------
 * Ingestion: validation and preparation (outside the lock) */

struct prep_chunk {
    size_t start, end;
    char *heading; /* NULL when none */
    char *text;    /* what is indexed and embedded: title, heading path, chunk text */
    size_t len;
};

struct prep {
    struct prep_chunk **chunks; /* (n_docs) arrays */
    size_t *n_chunks;           /* (n_docs) */
    size_t n_docs, n_total;
    float *vecs; /* (n_total, dim), in document then chunk order; NULL without embedder */
};

static void prep_free(struct prep *p) {
    for (size_t i = 0; i < p->n_docs && p->chunks; i++) {
        for (size_t c = 0; c < p->n_chunks[i]; c++) {
            mc_free(p->chunks[i][c].heading);
            mc_free(p->chunks[i][c].text);
        }
        mc_free(p->chunks[i]);
    }
    mc_free(p->chunks);
    mc_free(p->n_chunks);
    mc_free(p->vecs);
    memset(p, 0, sizeof(*p));
}

static const struct mc_kb_doc_in *sort_docs; /* for qsort, under sort_lock */

static int doc_idx_cmp(const void *a, const void *b) {
    const struct mc_kb_doc_in *x = &sort_docs[*(const size_t *)a];
    const struct mc_kb_doc_in *y = &sort_docs[*(const size_t *)b];
    int c = id_cmp(x->id, x->id_len, y->id, y->id_len);
    return c ? c
             : (*(const size_t *)a > *(const size_t *)b) -
                   (*(const size_t *)a < *(const size_t *)b);
}

static int check_doc(const struct mc_kb_doc_in *d, size_t i, struct mc_err *err) {
    if (!d->id || d->id_len == 0 || d->id_len > MC_KB_ID_MAX)
        return mc_err_set(err, MC_EINVAL, "document %zu: id must be 1..%d bytes, got %zu", i,
                          MC_KB_ID_MAX, d->id ? d->id_len : 0);
    const char *nul = memchr(d->id, 0, d->id_len);
    if (nul)
        return mc_err_set(err, MC_EINVAL, "document %zu: id holds a NUL byte at offset %zu", i,
                          (size_t)(nul - d->id));
    if (d->text_len > MC_KB_TEXT_MAX || (!d->text && d->text_len))
        return mc_err_set(err, MC_EINVAL, "document %zu: text of %zu bytes exceeds the limit %d", i,
                          d->text_len, MC_KB_TEXT_MAX);
    long bad = utf8_invalid_at((const unsigned char *)d->text, d->text_len);
    if (bad >= 0)
        return mc_err_set(err, MC_EINVAL, "document %zu: text is not UTF-8 at byte %ld", i, bad);
    size_t tl = d->title ? strlen(d->title) : 0;
    if (tl > MC_KB_TITLE_MAX)
        return mc_err_set(err, MC_EINVAL, "document %zu: title of %zu bytes exceeds the limit %d",
                          i, tl, MC_KB_TITLE_MAX);
    if (d->title && (bad = utf8_invalid_at((const unsigned char *)d->title, tl)) >= 0)
        return mc_err_set(err, MC_EINVAL, "document %zu: title is not UTF-8 at byte %ld", i, bad);
    size_t cl = d->content_type ? strlen(d->content_type) : 0;
    if (cl > MC_KB_CTYPE_MAX)
        return mc_err_set(err, MC_EINVAL, "document %zu: content type exceeds %d bytes", i,
                          MC_KB_CTYPE_MAX);
    for (size_t k = 0; k < cl; k++)
        if (d->content_type[k] < 0x20 || d->content_type[k] > 0x7e)
            return mc_err_set(err, MC_EINVAL,
                              "document %zu: content type has a non-printable byte at %zu", i, k);
    if (d->meta) {
        size_t ml = strlen(d->meta);
        if (ml > MC_KB_META_MAX)
            return mc_err_set(err, MC_EINVAL,
                              "document %zu: metadata of %zu bytes exceeds the limit %d", i, ml,
                              MC_KB_META_MAX);
        json_error_t je;
        json_t *j = json_loadb(d->meta, ml, JSON_REJECT_DUPLICATES, &je);
        bool obj = json_is_object(j);
        json_decref(j);
        if (!j)
            return mc_err_set(err, MC_EINVAL, "document %zu: metadata: %s at byte %d", i, je.text,
                              je.position);
        if (!obj)
            return mc_err_set(err, MC_EINVAL, "document %zu: metadata is not a JSON object", i);
    }
    return MC_OK;
}

static int check_batch(const struct mc_kb_doc_in *docs, size_t n, struct mc_err *err) {
    if (n == 0)
        return mc_err_set(err, MC_EINVAL, "the batch holds no document");
    if (n > MC_KB_BATCH_MAX)
        return mc_err_set(err, MC_EINVAL, "the batch holds %zu documents, more than %d", n,
                          MC_KB_BATCH_MAX);
    for (size_t i = 0; i < n; i++) {
        int rc = check_doc(&docs[i], i, err);
        if (rc != MC_OK)
            return rc;
    }
    size_t *idx = mc_malloc(n * sizeof(*idx));
    if (!idx)
        return mc_err_set(err, MC_ENOMEM, "out of memory checking %zu documents", n);
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    pthread_mutex_lock(&sort_lock);
    sort_docs = docs;
    qsort(idx, n, sizeof(*idx), doc_idx_cmp);
    pthread_mutex_unlock(&sort_lock);
    int rc = MC_OK;
    for (size_t i = 1; i < n && rc == MC_OK; i++) {
        const struct mc_kb_doc_in *a = &docs[idx[i - 1]], *b = &docs[idx[i]];
        if (id_cmp(a->id, a->id_len, b->id, b->id_len) == 0) {
            char shown[200];
            rc = mc_err_set(err, MC_EINVAL,
                            "documents %zu and %zu of the batch have the same id \"%s\"",
                            idx[i - 1], idx[i], id_show(a->id, a->id_len, shown));
        }
    }
    mc_free(idx);
    return rc;
}

/* The indexed text of a chunk: title, heading path and body, a line each. */
static char *index_text(const char *title, const char *heading, const char *body, size_t n,
                        size_t *len) {
    size_t tl = title ? strlen(title) : 0, hl = heading ? strlen(heading) : 0;
    size_t total = (tl ? tl + 1 : 0) + (hl ? hl + 1 : 0) + n;
    char *s = mc_malloc(total + 1);
    if (!s)
        return NULL;
    size_t o = 0;
    if (tl) {
        memcpy(s, title, tl);
        s[tl] = '\n';
        o = tl + 1;
    }
    if (hl) {
        memcpy(s + o, heading, hl);
        s[o + hl] = '\n';
        o += hl + 1;
    }
    memcpy(s + o, body, n);
    s[total] = 0;
    *len = total;
    return s;
}

static int chunk_doc(const struct mc_kbs *s, const struct mc_kb_doc_in *d, struct prep_chunk **out,
                     size_t *n_out, struct mc_err *err) {
    struct mc_chunk_opts opts = {s->cfg.chunk_tokens, s->cfg.chunk_overlap, false};
    struct mc_chunk_list l = {0};
    int rc =
        s->tok
            ? mc_chunk_split(d->text, d->text_len, &opts, tok_offsets, (void *)s->tok, &l, err)
            : mc_chunk_split(d->text, d->text_len, &opts, mc_chunk_tokenize_words, NULL, &l, err);
    if (rc == MC_OK && l.n_chunks > MAX_CHUNKS_PER_DOC)
        rc = mc_err_set(err, MC_EINVAL, "document has %zu chunks, more than %u", l.n_chunks,
                        MAX_CHUNKS_PER_DOC);
    struct prep_chunk *c = NULL;
    if (rc == MC_OK && l.n_chunks && !(c = mc_calloc(l.n_chunks, sizeof(*c))))
        rc = mc_err_set(err, MC_ENOMEM, "out of memory chunking a document");
    size_t done = 0;
    for (; rc == MC_OK && done < l.n_chunks; done++) {
        struct prep_chunk *k = &c[done];
        k->start = l.chunks[done].start;
        k->end = l.chunks[done].end;
        rc = mc_chunk_prefix(d->text, &l, done, &k->heading, err);
        if (rc == MC_OK && !k->heading[0]) {
            mc_free(k->heading);
            k->heading = NULL;
        }
        if (rc == MC_OK && !(k->text = index_text(d->title, k->heading, d->text + k->start,
                                                  k->end - k->start, &k->len)))
            rc = mc_err_set(err, MC_ENOMEM, "out of memory chunking a document");
    }
    if (rc != MC_OK) {
        for (size_t i = 0; c && i < l.n_chunks; i++) {
            mc_free(c[i].heading);
            mc_free(c[i].text);
        }
        mc_free(c);
        c = NULL;
        done = 0;
    }
    mc_chunk_list_deinit(&l);
    *out = c;
    *n_out = done;
    return rc;
}

/* Embeds n texts in batches into vecs, reporting progress by bytes. */
static int embed_texts(struct mc_embedder *emb, const char **texts, const size_t *lens, size_t n,
                       float *vecs, mc_kb_progress_fn progress, void *user, size_t *done,
                       size_t total, struct mc_err *err) {
    size_t dim = (size_t)mc_embedder_dim(emb);
    for (size_t i = 0; i < n; i += EMBED_BATCH) {
        size_t m = n - i < EMBED_BATCH ? n - i : EMBED_BATCH;
        int rc = mc_embed(emb, texts + i, lens + i, m, vecs + i * dim, err);
        if (rc != MC_OK)
            return mc_err_prefix(err, "embedding");
        for (size_t j = 0; j < m; j++)
            *done += lens[i + j];
        if (progress)
            progress(user, *done < total ? *done : total, total);
    }
    return MC_OK;
}

static int prepare(const struct mc_kbs *s, const struct mc_kb_doc_in *docs, size_t n,
                   mc_kb_progress_fn progress, void *user, struct prep *p, struct mc_err *err) {
    memset(p, 0, sizeof(*p));
    p->chunks = mc_calloc(n, sizeof(*p->chunks));
    p->n_chunks = mc_calloc(n, sizeof(*p->n_chunks));
    if (!p->chunks || !p->n_chunks)
        return mc_err_set(err, MC_ENOMEM, "out of memory preparing %zu documents", n);
    p->n_docs = n;
    size_t total = 0, done = 0;
    for (size_t i = 0; i < n; i++)
        total += docs[i].text_len;
    for (size_t i = 0; i < n; i++) {
        int rc = chunk_doc(s, &docs[i], &p->chunks[i], &p->n_chunks[i], err);
        if (rc != MC_OK)
            return mc_err_prefix(err, "document %zu", i);
        p->n_total += p->n_chunks[i];
        done += docs[i].text_len;
        if (progress && !s->emb)
            progress(user, done, total);
    }
    if (!s->emb || p->n_total == 0)
        return MC_OK;

    size_t dim = (size_t)mc_embedder_dim(s->emb);
    const char **texts = mc_malloc(p->n_total * sizeof(*texts));
    size_t *lens = mc_malloc(p->n_total * sizeof(*lens));
    p->vecs = mc_malloc(p->n_total * dim * sizeof(float));
    int rc = MC_OK;
    if (!texts || !lens || !p->vecs) {
        rc = mc_err_set(err, MC_ENOMEM, "out of memory for %zu vectors", p->n_total);
    } else {
        size_t k = 0, done_emb = 0, total_emb = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t c = 0; c < p->n_chunks[i]; c++, k++) {
                texts[k] = p->chunks[i][c].text;
                lens[k] = p->chunks[i][c].len;
                total_emb += lens[k];
            }
        rc = embed_texts(s->emb, texts, lens, p->n_total, p->vecs, progress, user, &done_emb,
                         total_emb, err);
    }
    mc_free(texts);
    mc_free(lens);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Ingestion: applying and persisting (under the lock, inside one store transaction) */

/* Creates the indexes a write needs: BM25 always, HNSW when vectors come. */
static int ensure_indexes(struct mc_kb *kb, bool vectors, struct mc_err *err) {
    const struct mc_kbs *s = kb->set;
    int rc = MC_OK;
    if (!kb->bm25)
        rc = mc_bm25_create(&s->cfg.bm25, &kb->bm25, err);
    if (rc == MC_OK && vectors && !kb->hnsw) {
        struct mc_hnsw_params hp = {.dim = mc_embedder_dim(s->emb),
                                    .metric = MC_HNSW_COSINE,
                                    .m = s->cfg.hnsw_m,
                                    .ef_construction = s->cfg.hnsw_ef_construction,
                                    .ef_search = s->cfg.hnsw_ef_search,
                                    .seed = 0x6d6361696b62ull};
        rc = mc_hnsw_create(&hp, &kb->hnsw, err);
        if (rc == MC_OK) {
            snprintf(kb->embed_name, sizeof(kb->embed_name), "%s", mc_embedder_name(s->emb));
            kb->embed_dim = hp.dim;
        }
    }
    return rc;
}

/* Gives vectors to every chunk already in a knowledge base that has none (it was filled
 * without an embedder and now one is here). */
static int backfill(struct mc_kb *kb, struct mc_err *err) {
    struct mc_embedder *emb = kb->set->emb;
    size_t dim = (size_t)mc_embedder_dim(emb);
    int rc = MC_OK;
    for (size_t i = 0; i < kb->n_slots && rc == MC_OK; i++) {
        const struct kb_doc *d = kb->docs[i];
        if (!d || d->n_chunks == 0)
            continue;
        char *text = NULL;
        size_t len = 0;
        const char **texts = mc_calloc(d->n_chunks, sizeof(*texts));
        size_t *lens = mc_calloc(d->n_chunks, sizeof(*lens));
        float *vecs = mc_malloc(d->n_chunks * dim * sizeof(float));
        if (!texts || !lens || !vecs)
            rc = mc_err_set(err, MC_ENOMEM, "out of memory adding vectors");
        if (rc == MC_OK)
            rc = kb_doc_text(kb, d, &text, &len, err);
        for (uint32_t c = 0; c < d->n_chunks && rc == MC_OK; c++) {
            const struct kb_chunk *k = &d->chunks[c];
            texts[c] =
                index_text(d->title, k->heading, text + k->start, k->end - k->start, &lens[c]);
            if (!texts[c])
                rc = mc_err_set(err, MC_ENOMEM, "out of memory adding vectors");
        }
        size_t done = 0;
        if (rc == MC_OK)
            rc = embed_texts(emb, texts, lens, d->n_chunks, vecs, NULL, NULL, &done, 0, err);
        for (uint32_t c = 0; c < d->n_chunks && rc == MC_OK; c++)
            rc = mc_hnsw_insert(kb->hnsw, d->chunks[c].id, vecs + c * dim, err);
        for (uint32_t c = 0; texts && c < d->n_chunks; c++)
            mc_free((char *)texts[c]);
        mc_free(texts);
        mc_free(lens);
        mc_free(vecs);
        mc_free(text);
    }
    return rc;
}

/* Removes a document's chunks from both indexes. */
static int unindex_doc(struct mc_kb *kb, const struct kb_doc *d, struct mc_err *err) {
    for (uint32_t c = 0; c < d->n_chunks; c++) {
        int rc = mc_bm25_delete(kb->bm25, d->chunks[c].id, err);
        if (rc == MC_OK && kb->hnsw && mc_hnsw_contains(kb->hnsw, d->chunks[c].id))
            rc = mc_hnsw_delete(kb->hnsw, d->chunks[c].id, err);
        if (rc != MC_OK)
            return rc;
    }
    return MC_OK;
}

/* Builds the record of a new document from its input and prepared chunks, taking the
 * chunk headings, and indexes it. The record is pushed to the slots first, so it is freed
 * with the state whatever happens next. */
static int add_doc(struct mc_kb *kb, const struct mc_kb_doc_in *in, struct prep_chunk *pc,
                   size_t n_pc, const float *vecs, int64_t created_ms, struct mc_err *err) {
    struct kb_doc *d = mc_calloc(1, sizeof(*d));
    if (!d || slot_push(kb, d) != MC_OK) {
        mc_free(d);
        return mc_err_set(err, MC_ENOMEM, "out of memory adding a document");
    }
    d->no = kb->next_doc++;
    d->id = mc_strndup(in->id, in->id_len);
    d->id_len = (uint32_t)in->id_len;
    d->title = in->title ? mc_strdup(in->title) : NULL;
    d->meta = mc_strdup(in->meta ? in->meta : "{}");
    d->ctype = mc_strdup(in->content_type ? in->content_type : "text/plain");
    d->text_len = in->text_len;
    d->created_ms = created_ms;
    d->chunks = n_pc ? mc_calloc(n_pc, sizeof(*d->chunks)) : NULL;
    if (!d->id || (in->title && !d->title) || !d->meta || !d->ctype || (n_pc && !d->chunks))
        return mc_err_set(err, MC_ENOMEM, "out of memory adding a document");
    d->n_chunks = (uint32_t)n_pc;
    size_t dim = kb->hnsw ? (size_t)mc_hnsw_dim(kb->hnsw) : 0;
    for (size_t c = 0; c < n_pc; c++) {
        struct kb_chunk *k = &d->chunks[c];
        k->id = kb->next_chunk++;
        k->start = pc[c].start;
        k->end = pc[c].end;
        k->heading = pc[c].heading;
        pc[c].heading = NULL;
        int rc = mc_bm25_add(kb->bm25, k->id, pc[c].text, pc[c].len, err);
        if (rc == MC_OK && vecs)
            rc = mc_hnsw_insert(kb->hnsw, k->id, vecs + c * dim, err);
        if (rc != MC_OK)
            return rc;
    }
    return MC_OK;
}

static int put_u64(struct mc_kb *kb, const char *obj, uint64_t v, struct mc_err *err) {
    struct wbuf b = {0};
    wb_u64(&b, v);
    if (b.oom)
        return mc_err_set(err, MC_ENOMEM, "out of memory");
    int rc = mc_store_obj_put(kb->set->store, kb->tenant, KIND_KB, obj, b.p, b.n, err);
    mc_free(b.p);
    return rc;
}

/* Writes manifest, index images and the next generation (inside the caller's
 * transaction). *bytes gets the size of what was written, for the memory budget. */
static int persist(struct mc_kb *kb, size_t *bytes, struct mc_err *err) {
    struct mc_store *st = kb->set->store;
    uint8_t *man = NULL, *bm = NULL, *hn = NULL;
    size_t n_man = 0, n_bm = 0, n_hn = 0;
    int rc = manifest_write(kb, &man, &n_man, err);
    if (rc == MC_OK && kb->bm25)
        rc = mc_bm25_serialize(kb->bm25, &bm, &n_bm, err);
    if (rc == MC_OK && kb->hnsw)
        rc = mc_hnsw_serialize(kb->hnsw, &hn, &n_hn, err);
    if (rc == MC_OK)
        rc = mc_store_obj_put(st, kb->tenant, KIND_KB, "manifest", man, n_man, err);
    if (rc == MC_OK && bm)
        rc = mc_store_obj_put(st, kb->tenant, KIND_KB, "bm25", bm, n_bm, err);
    if (rc == MC_OK && hn)
        rc = mc_store_obj_put(st, kb->tenant, KIND_KB, "hnsw", hn, n_hn, err);
    if (rc == MC_OK)
        rc = put_u64(kb, "gen", kb->gen + 1, err);
    mc_free(man);
    mc_free(bm);
    mc_free(hn);
    *bytes = n_man + n_bm + n_hn + kb->n_slots * sizeof(struct kb_doc);
    return rc;
}

static int put_doc_text(struct mc_kb *kb, uint64_t no, const char *text, size_t len,
                        struct mc_err *err) {
    char obj[32];
    snprintf(obj, sizeof(obj), "%llu", (unsigned long long)no);
    return mc_store_obj_put(kb->set->store, kb->tenant, KIND_DOC, obj, text, len, err);
}

static int delete_doc_text(struct mc_kb *kb, uint64_t no, struct mc_err *err) {
    char obj[32];
    snprintf(obj, sizeof(obj), "%llu", (unsigned long long)no);
    return mc_store_obj_delete(kb->set->store, kb->tenant, KIND_DOC, obj, err);
}

/* Ends a write: commits and re-indexes on success; otherwise rolls back and, when the
 * in-memory state was touched (dirty), reloads it so memory matches the store again.
 * removed documents are freed either way. */
static int finish_write(struct mc_kb *kb, int rc, bool dirty, size_t bytes, struct kb_doc **removed,
                        size_t n_removed, struct mc_err *err) {
    struct mc_store *st = kb->set->store;
    if (rc == MC_OK)
        rc = mc_store_commit(st, err);
    for (size_t i = 0; i < n_removed; i++)
        doc_free(removed[i]);
    if (rc != MC_OK) {
        mc_store_rollback(st);
        if (!dirty)
            return rc; /* refused before anything changed */
        struct mc_err reload_err = {0};
        if (load(kb, false, &reload_err) != MC_OK)
            state_clear(kb); /* the next operation tries again */
        return rc;
    }
    kb->gen++;
    if (reindex(kb) != MC_OK) {
        state_clear(kb); /* committed; the next operation reloads */
        bytes = 0;
    }
    set_bytes(kb, bytes);
    return MC_OK;
}

/* Everything of an ingest that happens under the lock and inside the transaction. */
static int ingest_locked(struct mc_kb *kb, const struct mc_kb_doc_in *docs, size_t n,
                         unsigned flags, struct prep *p, struct kb_doc **removed, size_t *n_removed,
                         struct mc_kb_ingest_stats *st, size_t *bytes, bool *dirty,
                         struct mc_err *err) {
    int rc = sync_state(kb, true, err);
    if (rc != MC_OK)
        return rc;

    /* Which documents replace one, before anything changes. */
    long *old = mc_malloc(n * sizeof(*old));
    if (!old)
        return mc_err_set(err, MC_ENOMEM, "out of memory ingesting %zu documents", n);
    for (size_t i = 0; i < n && rc == MC_OK; i++) {
        old[i] = find_doc(kb, docs[i].id, docs[i].id_len);
        if (old[i] >= 0 && !(flags & MC_KB_UPSERT)) {
            char shown[200];
            rc = mc_err_set(err, MC_EEXIST, "document %zu: id \"%s\" exists (upsert replaces it)",
                            i, id_show(docs[i].id, docs[i].id_len, shown));
        }
    }
    if (rc == MC_OK)
        rc = check_embedder(kb, kb->set->emb, err);
    bool fill = kb->set->emb && !kb->embed_name[0] && kb->n_chunks > 0;
    *dirty = rc == MC_OK;
    if (rc == MC_OK)
        rc = ensure_indexes(kb, kb->set->emb != NULL, err);
    if (rc == MC_OK && fill)
        rc = backfill(kb, err);

    /* Replaced documents leave the indexes first; their text objects go below. */
    for (size_t i = 0; i < n && rc == MC_OK; i++) {
        if (old[i] < 0)
            continue;
        struct kb_doc *d = kb->docs[old[i]];
        rc = unindex_doc(kb, d, err);
        if (rc == MC_OK)
            rc = delete_doc_text(kb, d->no, err);
        kb->docs[old[i]] = NULL;
        removed[(*n_removed)++] = d;
        st->n_replaced++;
    }
    mc_free(old);

    int64_t t = now_ms();
    const float *v = p->vecs;
    size_t dim = kb->set->emb ? (size_t)mc_embedder_dim(kb->set->emb) : 0;
    for (size_t i = 0; i < n && rc == MC_OK; i++) {
        uint64_t no = kb->next_doc;
        rc = add_doc(kb, &docs[i], p->chunks[i], p->n_chunks[i], v, t, err);
        if (rc == MC_OK)
            rc = put_doc_text(kb, no, docs[i].text, docs[i].text_len, err);
        if (v)
            v += p->n_chunks[i] * dim;
        st->n_chunks += p->n_chunks[i];
        st->n_bytes += docs[i].text_len;
    }
    st->n_added = n - st->n_replaced;
    if (rc == MC_OK)
        rc = persist(kb, bytes, err);
    return rc;
}

int mc_kb_ingest(struct mc_kb *kb, const struct mc_kb_doc_in *docs, size_t n, unsigned flags,
                 mc_kb_progress_fn progress, void *user, struct mc_kb_ingest_stats *stats,
                 struct mc_err *err) {
    struct mc_kb_ingest_stats st = {0};
    if (stats)
        *stats = st;
    int rc = check_batch(docs, n, err);
    if (rc != MC_OK)
        return rc;
    struct prep p;
    rc = prepare(kb->set, docs, n, progress, user, &p, err);
    struct kb_doc **removed = rc == MC_OK ? mc_malloc(n * sizeof(*removed)) : NULL;
    if (rc == MC_OK && !removed)
        rc = mc_err_set(err, MC_ENOMEM, "out of memory ingesting %zu documents", n);
    if (rc != MC_OK) {
        prep_free(&p);
        return rc;
    }

    pthread_mutex_lock(&kb->lock);
    size_t n_removed = 0, bytes = 0;
    bool dirty = false;
    rc = mc_store_begin(kb->set->store, err);
    if (rc == MC_OK) {
        rc = ingest_locked(kb, docs, n, flags, &p, removed, &n_removed, &st, &bytes, &dirty, err);
        rc = finish_write(kb, rc, dirty, bytes, removed, n_removed, err);
    }
    pthread_mutex_unlock(&kb->lock);
    mc_free(removed);
    prep_free(&p);
    if (rc == MC_OK && stats)
        *stats = st;
    if (rc != MC_OK)
        mc_err_prefix(err, "ingest");
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Listing, reading, deleting */

void mc_kb_doc_info_deinit(struct mc_kb_doc_info *d) {
    if (!d)
        return;
    mc_free(d->id);
    mc_free(d->title);
    mc_free(d->meta);
    mc_free(d->content_type);
    memset(d, 0, sizeof(*d));
}

void mc_kb_doc_info_free(struct mc_kb_doc_info *arr, size_t n) {
    for (size_t i = 0; arr && i < n; i++)
        mc_kb_doc_info_deinit(&arr[i]);
    mc_free(arr);
}

static int info_fill(const struct kb_doc *d, struct mc_kb_doc_info *o, struct mc_err *err) {
    memset(o, 0, sizeof(*o));
    o->id = mc_strndup(d->id, d->id_len);
    o->id_len = d->id_len;
    o->title = d->title ? mc_strdup(d->title) : NULL;
    o->meta = mc_strdup(d->meta);
    o->content_type = mc_strdup(d->ctype);
    o->text_len = d->text_len;
    o->n_chunks = d->n_chunks;
    o->created_ms = d->created_ms;
    if (!o->id || (d->title && !o->title) || !o->meta || !o->content_type) {
        mc_kb_doc_info_deinit(o);
        return mc_err_set(err, MC_ENOMEM, "out of memory reading a document");
    }
    return MC_OK;
}

int mc_kb_list(struct mc_kb *kb, struct mc_kb_doc_info **out, size_t *n, struct mc_err *err) {
    *out = NULL;
    *n = 0;
    int rc = kb_lock_synced(kb, err);
    if (rc != MC_OK)
        return rc;
    struct mc_kb_doc_info *arr = mc_calloc(kb->n_docs ? kb->n_docs : 1, sizeof(*arr));
    if (!arr)
        rc = mc_err_set(err, MC_ENOMEM, "out of memory listing %zu documents", kb->n_docs);
    size_t i = 0;
    for (; rc == MC_OK && i < kb->n_docs; i++)
        rc = info_fill(kb->docs[kb->order[i]], &arr[i], err);
    kb_unlock(kb);
    if (rc != MC_OK) {
        mc_kb_doc_info_free(arr, i);
        return rc;
    }
    *out = arr;
    *n = i;
    return MC_OK;
}

int mc_kb_get(struct mc_kb *kb, const char *id, size_t id_len, struct mc_kb_doc_info *info,
              char **text, size_t *text_len, struct mc_err *err) {
    memset(info, 0, sizeof(*info));
    if (text) {
        *text = NULL;
        *text_len = 0;
    }
    int rc = kb_lock_synced(kb, err);
    if (rc != MC_OK)
        return rc;
    long slot = find_doc(kb, id, id_len);
    if (slot < 0)
        rc = mc_err_set(err, MC_ENOTFOUND, "no document with this id");
    if (rc == MC_OK)
        rc = info_fill(kb->docs[slot], info, err);
    if (rc == MC_OK && text && (rc = kb_doc_text(kb, kb->docs[slot], text, text_len, err)) != MC_OK)
        mc_kb_doc_info_deinit(info);
    kb_unlock(kb);
    return rc;
}

int mc_kb_delete(struct mc_kb *kb, const char *id, size_t id_len, struct mc_err *err) {
    pthread_mutex_lock(&kb->lock);
    int rc = mc_store_begin(kb->set->store, err);
    if (rc != MC_OK) {
        pthread_mutex_unlock(&kb->lock);
        return rc;
    }
    struct kb_doc *removed = NULL;
    size_t bytes = 0;
    long slot = -1;
    rc = sync_state(kb, true, err);
    if (rc == MC_OK && (slot = find_doc(kb, id, id_len)) < 0)
        rc = mc_err_set(err, MC_ENOTFOUND, "no document with this id");
    if (rc == MC_OK) {
        removed = kb->docs[slot];
        kb->docs[slot] = NULL;
        rc = unindex_doc(kb, removed, err);
    }
    if (rc == MC_OK)
        rc = delete_doc_text(kb, removed->no, err);
    if (rc == MC_OK)
        rc = persist(kb, &bytes, err);
    rc = finish_write(kb, rc, removed != NULL, bytes, &removed, removed ? 1 : 0, err);
    pthread_mutex_unlock(&kb->lock);
    return rc;
}

size_t mc_kb_n_docs(struct mc_kb *kb) {
    if (kb_lock_synced(kb, NULL) != MC_OK)
        return 0;
    size_t n = kb->n_docs;
    kb_unlock(kb);
    return n;
}

bool mc_kb_has_vectors(struct mc_kb *kb) {
    if (kb_lock_synced(kb, NULL) != MC_OK)
        return false;
    bool v = kb->hnsw && kb->embed_name[0];
    kb_unlock(kb);
    return v;
}

size_t mc_kb_n_chunks(struct mc_kb *kb) {
    if (kb_lock_synced(kb, NULL) != MC_OK)
        return 0;
    size_t n = kb->n_chunks;
    kb_unlock(kb);
    return n;
}
