/* api_kb.c - the tenant's knowledge base over HTTP, and grounding generations in it.
 *
 * One struct mc_kbs per server over the store (kb.h): the model's tokenizer cuts chunks
 * and an embedder over the embedding model (the base model unless --embed-model names
 * another; none with --kb-embeddings off) makes the vectors (embed.h, the same recipe
 * as the CLI's `-m`), so a knowledge base filled by `mcai kb ingest -m MODEL` and one
 * filled here are the same thing. The tenant comes only from the credential (server.c); every call
 * opens that tenant's own handle, so another tenant's document id answers 404 exactly
 * like an id that never existed, and a search can only return the caller's chunks.
 * Routes, under /v1/kb (docs/api.md has the bodies and errors):
 *   POST   /documents                 ingest a JSON batch [{id, title, text|content,
 *                                     content_type, metadata}] (or {"documents": [...],
 *                                     "upsert": bool}); ?upsert=true replaces
 *   POST   /documents?id=ID           ingest one document: the body is the file itself,
 *                                     typed by Content-Type (or one JSON document object)
 *   PUT    /documents?id=ID           replace an existing document (404 when missing)
 *   GET    /documents                 list
 *   GET    /documents?id=ID           one document with its text
 *   DELETE /documents?id=ID           delete
 *   POST   /search                    ranked chunks for {"query", "mode", "k", ...}
 * Ids travel in the query string because they may hold '/', '?' and '#': percent-encode
 * them (encodeURIComponent). Grounding: mc_ground_prepare runs the search for a chat or
 * completion request and renders the grounded question (mc_kb_prompt); api_openai.c
 * puts it through the front's template and returns the sources as "mcai_citations".
 * Does not: keep anything per tenant here (the set does), or parse PDF (415). */
#include "serve/serve_int.h"

#include "base/log.h"
#include "base/mem.h"
#include "model/model.h"
#include "rag/embed.h"
#include "rag/extract.h"
#include "rag/kb.h"
#include "rag/retrieve.h"
#include "tenant/ratelimit.h"
#include "tenant/tenant.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define SEARCH_K_DEFAULT 10

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- The set ---------------------------------------------------------------------- */

int mc_kb_serve_init(struct mc_server *s, struct mc_err *err) {
    struct mc_kb_config cfg;
    mc_kb_config_default(&cfg);
    if (s->kb_budget_bytes)
        cfg.budget_bytes = s->kb_budget_bytes;
    int rc = MC_OK;
    if (!s->kb_no_embeddings)
        rc = mc_embedder_create(s->emb_model, s->n_threads, 0, &s->kb_emb, err);
    if (rc == MC_OK)
        rc = mc_kbs_create(s->store, &cfg, mc_model_tokenizer(s->model), s->kb_emb, &s->kbs, err);
    if (rc != MC_OK) {
        mc_err_prefix(err, "knowledge bases");
        mc_kb_serve_free(s);
        return rc;
    }
    MC_LOG_INFO("kb", "ready", "budget_bytes=%zu embedder=%s dim=%d", cfg.budget_bytes,
                s->kb_emb ? mc_embedder_name(s->kb_emb) : "none",
                s->kb_emb ? mc_embedder_dim(s->kb_emb) : 0);
    return MC_OK;
}

void mc_kb_serve_free(struct mc_server *s) {
    mc_kbs_free(s->kbs);
    s->kbs = NULL;
    mc_embedder_free(s->kb_emb);
    s->kb_emb = NULL;
}

void mc_kb_serve_forget(struct mc_server *s, const char *tenant) {
    /* A handle still held by a request in flight keeps the entry until it closes; its
     * next operation finds the tenant gone (MC_ENOTFOUND), and nothing is reachable. */
    if (s->kbs && !mc_kbs_unload(s->kbs, tenant))
        MC_LOG_INFO("kb", "unload_deferred", "tenant=%s", tenant);
}

void mc_kb_serve_gauges(struct mc_server *s, struct mc_buf *o) {
    if (!s->kbs)
        return;
    mc_buf_printf(o,
                  "# HELP mcai_kb_loaded Knowledge bases held in memory.\n"
                  "# TYPE mcai_kb_loaded gauge\nmcai_kb_loaded %zu\n"
                  "# HELP mcai_kb_loaded_bytes Bytes of the loaded knowledge bases (index "
                  "images).\n# TYPE mcai_kb_loaded_bytes gauge\nmcai_kb_loaded_bytes %zu\n",
                  mc_kbs_n_loaded(s->kbs), mc_kbs_bytes_loaded(s->kbs));
}

/* ---- Small helpers ---------------------------------------------------------------- */

/* A JSON string of s[0..n); bytes that are not UTF-8 (ids from the CLI may hold any
 * byte) become U+FFFD so the answer stays valid JSON. */
static json_t *json_text(const char *s, size_t n) {
    if (mc_utf8_invalid_at(s, n) < 0)
        return json_stringn(s, n);
    struct mc_buf b = {0};
    size_t i = 0;
    while (i < n) {
        ptrdiff_t bad = mc_utf8_invalid_at(s + i, n - i);
        size_t ok = bad < 0 ? n - i : (size_t)bad;
        mc_buf_append(&b, s + i, ok);
        i += ok;
        if (bad >= 0) {
            mc_buf_append(&b, "\xef\xbf\xbd", 3);
            i++;
        }
    }
    json_t *j = json_stringn(b.data ? b.data : "", b.len);
    mc_buf_free(&b);
    return j;
}

static enum MHD_Result not_found(struct mc_http_req *r) {
    return mc_http_reply_error(r, 404, "invalid_request_error", "document_not_found", "id",
                               "no document with this id");
}

/* Replies for an error of the knowledge-base library. */
static enum MHD_Result reply_kb(struct mc_http_req *r, const struct mc_auth *a, int rc,
                                const struct mc_err *err) {
    switch (rc) {
    case MC_ENOTFOUND:
        return not_found(r);
    case MC_EEXIST:
        return mc_http_reply_error(r, 409, "invalid_request_error", "document_exists", "id", "%s",
                                   err->msg);
    case MC_EINVAL:
        return mc_http_reply_error(r, 400, "invalid_request_error", "invalid_value", NULL, "%s",
                                   err->msg);
    default:
        MC_LOG_ERROR("kb", "failed", "tenant=%s id=%s code=%d err=\"%s\"", a->tenant, r->id, rc,
                     err->msg);
        return mc_http_reply_error(r, 500, "server_error", NULL, NULL,
                                   "knowledge base error (request %s)", r->id);
    }
}

/* The query parameter name: true and *v, *n when present. */
static bool query_param(struct mc_http_req *r, const char *name, const char **v, size_t *n) {
    *v = NULL;
    *n = 0;
    return MHD_lookup_connection_value_n(r->conn, MHD_GET_ARGUMENT_KIND, name, strlen(name), v,
                                         n) == MHD_YES &&
           *v;
}

/* ?upsert=true|false|1|0 into *upsert (left as is when absent). */
static int upsert_param(struct mc_http_req *r, bool *upsert, struct mc_api_error *e) {
    const char *v;
    size_t n;
    if (!query_param(r, "upsert", &v, &n))
        return MC_OK;
    if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, ""))
        *upsert = true;
    else if (!strcmp(v, "false") || !strcmp(v, "0"))
        *upsert = false;
    else
        return mc_api_fail(e, 400, "upsert", "invalid_value", "'upsert' must be true or false");
    return MC_OK;
}

/* ?id=ID: false without one; a NUL in it (no id holds one) or an empty one is a 400. */
static int id_param(struct mc_http_req *r, const char **id, size_t *n, bool *present,
                    struct mc_api_error *e) {
    *present = query_param(r, "id", id, n);
    if (!*present)
        return MC_OK;
    if (*n == 0)
        return mc_api_fail(e, 400, "id", "invalid_value", "'id' is empty");
    if (memchr(*id, 0, *n))
        return mc_api_fail(e, 400, "id", "invalid_value", "'id' holds a NUL byte; ids never do");
    if (*n > MC_KB_ID_MAX)
        return mc_api_fail(e, 400, "id", "invalid_value", "'id' is %zu bytes, at most %d", *n,
                           MC_KB_ID_MAX);
    return MC_OK;
}

/* The query parameters of the document routes: each known one at most once, no other
 * (a misspelt ?titel= would silently lose the title, a second ?id= act on one id of two). */
struct query_check {
    unsigned seen; /* bit i: KNOWN_PARAMS[i] */
    char bad[64];  /* the first parameter in error, "" when none */
    bool repeated; /* bad is repeated (else unknown) */
};

static const char *const KNOWN_PARAMS[] = {"id", "upsert", "title"};

static enum MHD_Result query_check_one(void *cls, enum MHD_ValueKind kind, const char *key,
                                       const char *value) {
    (void)kind;
    (void)value;
    struct query_check *q = cls;
    for (unsigned i = 0; i < sizeof(KNOWN_PARAMS) / sizeof(KNOWN_PARAMS[0]); i++) {
        if (strcmp(key, KNOWN_PARAMS[i]) != 0)
            continue;
        if (!(q->seen & (1u << i))) {
            q->seen |= 1u << i;
            return MHD_YES;
        }
        q->repeated = true;
        snprintf(q->bad, sizeof(q->bad), "%s", key);
        return MHD_NO;
    }
    snprintf(q->bad, sizeof(q->bad), "%.60s", key);
    return MHD_NO;
}

static int query_params_check(struct mc_http_req *r, struct mc_api_error *e) {
    struct query_check q = {0};
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, query_check_one, &q);
    if (!q.bad[0])
        return MC_OK;
    if (q.repeated)
        return mc_api_fail(e, 400, q.bad, "invalid_value",
                           "query parameter '%s' is sent more than once; send it once", q.bad);
    return mc_api_fail(e, 400, q.bad, "unknown_field",
                       "unknown query parameter '%s' (known: id, upsert, title)", q.bad);
}

static bool is_json_ctype(const char *ct) {
    if (!ct)
        return false;
    size_t n = strcspn(ct, "; \t");
    return n == 16 && strncasecmp(ct, "application/json", 16) == 0;
}

/* ---- Documents in ----------------------------------------------------------------- */

/* What one incoming document owns until the ingest call returns. */
struct doc {
    struct mc_extract_doc ext;
    char *meta;
};

static void docs_free(struct doc *d, size_t n) {
    for (size_t i = 0; d && i < n; i++) {
        mc_extract_doc_deinit(&d[i].ext);
        mc_free(d[i].meta);
    }
    mc_free(d);
}

static const char *const CANON_TYPES[] = {"", "text/plain", "text/markdown", "text/html"};

/* Extracts data as media type ctype into d and fills in's text, title and content type.
 * 415 for a type extraction does not read; 400 for text it cannot. */
static int extract_into(const char *ctype, const char *data, size_t len, const char *param,
                        struct doc *d, struct mc_kb_doc_in *in, struct mc_api_error *e) {
    int type = mc_extract_type_from_media(ctype);
    if (type == MC_EXTRACT_UNKNOWN)
        return mc_api_fail(e, 415, param, "unsupported_media_type",
                           "content type '%.80s' is not supported (supported: %s)", ctype,
                           MC_EXTRACT_SUPPORTED);
    struct mc_err err = {0};
    int rc = mc_extract(type, data, len, &d->ext, &err);
    if (rc == MC_ENOMEM)
        return mc_api_fail(e, 500, NULL, NULL, "out of memory extracting the document");
    if (rc != MC_OK)
        return mc_api_fail(e, 400, param, "invalid_document", "%s", err.msg);
    in->text = d->ext.text;
    in->text_len = d->ext.len;
    in->title = d->ext.title;
    in->content_type = CANON_TYPES[type];
    return MC_OK;
}

/* The document's metadata: what extraction found (front matter), overridden key by key
 * by the caller's object (may be NULL), as JSON text in d->meta. */
static int merge_meta(json_t *given, const char *param, struct doc *d, struct mc_kb_doc_in *in,
                      struct mc_api_error *e) {
    json_t *m = d->ext.meta ? json_loads(d->ext.meta, 0, NULL) : NULL;
    if (!json_is_object(m)) {
        json_decref(m);
        m = json_object();
    }
    if (given)
        json_object_update(m, given);
    char *text = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    d->meta = text ? mc_strdup(text) : NULL;
    free(text);
    if (!d->meta)
        return mc_api_fail(e, 500, param, NULL, "out of memory");
    in->meta = d->meta;
    return MC_OK;
}

/* The path of a field in a request ("documents[3].title") in param (112 bytes). */
static const char *fld(char param[112], const char *where, const char *name) {
    snprintf(param, 112, "%s%s%s", where, where[0] ? "." : "", name);
    return param;
}

/* One JSON document object. The id comes from the object, or from id (the query) when
 * it is non-NULL, in which case an "id" field must name the same. Strings are borrowed
 * from o, which must outlive *in. */
static int doc_from_json(json_t *o, const char *where, const char *id, size_t id_len, struct doc *d,
                         struct mc_kb_doc_in *in, struct mc_api_error *e) {
    char param[112];
    const char *k;
    json_t *v;
    if (!json_is_object(o))
        return mc_api_fail(
            e, 400, where[0] ? where : NULL, "invalid_type",
            "%s must be a JSON object {id, title, text|content, content_type, metadata}",
            where[0] ? where : "the document");
    json_object_foreach(o, k, v) {
        static const char *const known[] = {"id",           "title",    "text", "content",
                                            "content_type", "metadata", NULL};
        bool ok = false;
        for (int i = 0; known[i] && !ok; i++)
            ok = strcmp(k, known[i]) == 0;
        if (!ok) {
            snprintf(param, sizeof(param), "%s%s%.40s", where, where[0] ? "." : "", k);
            return mc_api_fail(e, 400, param, "unknown_field",
                               "unknown field '%s' (known: id, title, text, content, content_type, "
                               "metadata)",
                               param);
        }
    }
    json_t *jid = json_object_get(o, "id"), *title = json_object_get(o, "title");
    json_t *text = json_object_get(o, "text"), *content = json_object_get(o, "content");
    json_t *ct = json_object_get(o, "content_type"), *meta = json_object_get(o, "metadata");
    if (jid && !json_is_string(jid))
        return mc_api_fail(e, 400, fld(param, where, "id"), "invalid_type", "'%s' must be a string",
                           param);
    if (!jid && !id)
        return mc_api_fail(e, 400, fld(param, where, "id"), "missing_field", "'%s' is required",
                           param);
    if (jid && id &&
        (json_string_length(jid) != id_len || memcmp(json_string_value(jid), id, id_len) != 0))
        return mc_api_fail(e, 400, fld(param, where, "id"), "invalid_value",
                           "'%s' differs from the id in the URL", param);
    if (title && !json_is_null(title) && !json_is_string(title))
        return mc_api_fail(e, 400, fld(param, where, "title"), "invalid_type",
                           "'%s' must be a string", param);
    if (ct && !json_is_null(ct) && !json_is_string(ct))
        return mc_api_fail(e, 400, fld(param, where, "content_type"), "invalid_type",
                           "'%s' must be a string", param);
    if (meta && !json_is_null(meta) && !json_is_object(meta))
        return mc_api_fail(e, 400, fld(param, where, "metadata"), "invalid_type",
                           "'%s' must be an object", param);
    if ((text && !json_is_string(text)) || (content && !json_is_string(content)))
        return mc_api_fail(e, 400, fld(param, where, text ? "text" : "content"), "invalid_type",
                           "'%s' must be a string", param);
    if (!text == !content)
        return mc_api_fail(
            e, 400, fld(param, where, "text"), text ? "invalid_value" : "missing_field",
            "%s needs exactly one of 'text' and 'content'", where[0] ? where : "the document");
    json_t *body = text ? text : content;
    const char *ctype = json_is_string(ct) ? json_string_value(ct) : "text/plain";
    int rc = extract_into(ctype, json_string_value(body), json_string_length(body),
                          fld(param, where, "content_type"), d, in, e);
    if (rc == MC_OK)
        rc =
            merge_meta(json_is_object(meta) ? meta : NULL, fld(param, where, "metadata"), d, in, e);
    if (rc != MC_OK)
        return rc;
    in->id = jid ? json_string_value(jid) : id;
    in->id_len = jid ? json_string_length(jid) : id_len;
    if (json_is_string(title))
        in->title = json_string_value(title);
    return MC_OK;
}

/* Two documents of a batch with the same id: true with their positions. A hash table of
 * 2n slots, so a batch of 100,000 documents is checked in linear time. */
static bool find_duplicate(const struct mc_kb_doc_in *in, size_t n, size_t *first, size_t *second,
                           bool *oom) {
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    size_t *slot = mc_calloc(cap, sizeof(*slot)); /* index + 1; 0: empty */
    *oom = slot == NULL;
    if (!slot)
        return false;
    bool dup = false;
    for (size_t i = 0; i < n && !dup; i++) {
        uint64_t h = 1469598103934665603ULL;
        for (size_t j = 0; j < in[i].id_len; j++)
            h = (h ^ (unsigned char)in[i].id[j]) * 1099511628211ULL;
        size_t at = (size_t)h & (cap - 1);
        while (slot[at]) {
            const struct mc_kb_doc_in *o = &in[slot[at] - 1];
            if (o->id_len == in[i].id_len && memcmp(o->id, in[i].id, o->id_len) == 0) {
                *first = slot[at] - 1;
                *second = i;
                dup = true;
                break;
            }
            at = (at + 1) & (cap - 1);
        }
        if (!dup)
            slot[at] = i + 1;
    }
    mc_free(slot);
    return dup;
}

static json_t *ingest_json(const struct mc_kb_ingest_stats *st, const struct mc_kb_doc_in *in,
                           size_t n) {
    json_t *ids = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(ids, json_text(in[i].id, in[i].id_len));
    return json_pack("{s:s,s:I,s:I,s:I,s:I,s:o}", "object", "kb.ingest", "added",
                     (json_int_t)st->n_added, "replaced", (json_int_t)st->n_replaced, "chunks",
                     (json_int_t)st->n_chunks, "bytes", (json_int_t)st->n_bytes, "ids", ids);
}

/* Ingests n prepared documents; replies 200 with the counts or the library's error. */
static enum MHD_Result ingest_run(struct mc_http_req *r, const struct mc_auth *a, struct mc_kb *kb,
                                  const struct mc_kb_doc_in *in, size_t n, bool upsert) {
    struct mc_kb_ingest_stats st;
    struct mc_err err = {0};
    int rc = mc_kb_ingest(kb, in, n, upsert ? MC_KB_UPSERT : 0, NULL, NULL, &st, &err);
    if (rc != MC_OK)
        return reply_kb(r, a, rc, &err);
    MC_LOG_INFO("kb", "ingest", "tenant=%s id=%s docs=%zu replaced=%zu chunks=%zu bytes=%zu",
                a->tenant, r->id, n, st.n_replaced, st.n_chunks, st.n_bytes);
    return mc_http_reply_json(r, 200, ingest_json(&st, in, n));
}

struct mc_kb_batch {
    json_t *root; /* the parsed body; in's ids and texts point into it or into d */
    struct doc *d;
    struct mc_kb_doc_in *in;
    size_t n;
    bool upsert; /* the body's "upsert" field */
};

void mc_kb_batch_free(struct mc_kb_batch *b) {
    if (!b)
        return;
    docs_free(b->d, b->n);
    mc_free(b->in);
    json_decref(b->root);
    mc_free(b);
}

size_t mc_kb_batch_size(const struct mc_kb_batch *b) {
    return b->n;
}

/* The body of a batch: a top-level array, or {"documents", "upsert"}; every document
 * checked and extracted, ids distinct. */
static int batch_from_json(struct mc_kb_batch *b, struct mc_api_error *e) {
    json_t *arr = b->root;
    int rc = MC_OK;
    if (json_is_object(b->root)) {
        const char *k;
        json_t *v;
        json_object_foreach(b->root, k, v) {
            if (rc == MC_OK && strcmp(k, "documents") && strcmp(k, "upsert"))
                rc = mc_api_fail(e, 400, k, "unknown_field",
                                 "unknown field '%.40s' (known: documents, upsert)", k);
        }
        json_t *u = json_object_get(b->root, "upsert");
        if (rc == MC_OK && u && !json_is_boolean(u))
            rc = mc_api_fail(e, 400, "upsert", "invalid_type", "'upsert' must be a boolean");
        b->upsert = json_is_true(u);
        arr = json_object_get(b->root, "documents");
    }
    if (rc == MC_OK && !json_is_array(arr))
        rc = mc_api_fail(e, 400, "documents", "invalid_type",
                         "send a JSON array of documents, or {\"documents\": [...]}");
    size_t n = rc == MC_OK ? json_array_size(arr) : 0;
    if (rc == MC_OK && (n == 0 || n > MC_KB_BATCH_MAX))
        rc = mc_api_fail(e, 400, "documents", "invalid_value",
                         "a batch holds 1..%d documents, got %zu", MC_KB_BATCH_MAX, n);
    if (rc != MC_OK)
        return rc;

    b->d = mc_calloc(n, sizeof(*b->d));
    b->in = mc_calloc(n, sizeof(*b->in));
    if (!b->d || !b->in)
        return mc_api_fail(e, 500, NULL, NULL, "out of memory for %zu documents", n);
    for (size_t i = 0; i < n && rc == MC_OK; i++) {
        char where[32];
        snprintf(where, sizeof(where), "documents[%zu]", i);
        rc = doc_from_json(json_array_get(arr, i), where, NULL, 0, &b->d[i], &b->in[i], e);
        b->n = i + 1; /* what docs_free must release */
    }
    size_t i1, i2;
    bool oom = false;
    if (rc == MC_OK && find_duplicate(b->in, n, &i1, &i2, &oom)) {
        char param[48];
        snprintf(param, sizeof(param), "documents[%zu].id", i2);
        rc = mc_api_fail(e, 400, param, "duplicate_id",
                         "documents %zu and %zu of the batch have the same id; nothing was written",
                         i1, i2);
    }
    if (rc == MC_OK && oom)
        rc = mc_api_fail(e, 500, NULL, NULL, "out of memory checking ids");
    return rc;
}

int mc_kb_batch_parse(const char *body, size_t len, struct mc_kb_batch **out,
                      struct mc_api_error *e) {
    *out = NULL;
    struct mc_kb_batch *b = mc_calloc(1, sizeof(*b));
    if (!b)
        return mc_api_fail(e, 500, NULL, NULL, "out of memory for a batch");
    b->root = mc_api_parse_json(body, len, e);
    int rc = b->root ? batch_from_json(b, e) : MC_EINVAL;
    if (rc != MC_OK) {
        mc_kb_batch_free(b);
        return rc;
    }
    *out = b;
    return MC_OK;
}

/* POST /documents with a JSON batch. */
static enum MHD_Result ingest_batch(struct mc_http_req *r, const struct mc_auth *a,
                                    struct mc_kb *kb) {
    struct mc_api_error e = {0};
    struct mc_kb_batch *b = NULL;
    int rc = mc_kb_batch_parse(r->body, r->body_len, &b, &e);
    /* A file's own type (curl's form default aside) that is not JSON is a raw upload
     * that forgot its id, not a malformed batch. */
    const char *ct = mc_http_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    bool unparsed = !strcmp(e.code, "invalid_json") || !strcmp(e.code, "invalid_utf8");
    if (rc != MC_OK && unparsed && ct && *ct && !is_json_ctype(ct) &&
        strncasecmp(ct, "application/x-www-form-urlencoded", 33) != 0)
        rc = mc_api_fail(
            &e, 400, "id", "missing_field",
            "a raw upload (Content-Type %.60s) is one document and needs ?id=ID; a batch "
            "is JSON sent as application/json",
            ct);
    bool upsert = b && b->upsert;
    if (rc == MC_OK)
        rc = upsert_param(r, &upsert, &e);
    enum MHD_Result ret =
        rc == MC_OK ? ingest_run(r, a, kb, b->in, b->n, upsert) : mc_api_reply_error(r, &e);
    mc_kb_batch_free(b);
    return ret;
}

/* POST or PUT /documents?id=ID: the body is the file (typed by Content-Type) or one JSON
 * document object. replace: the document must exist (PUT). */
static enum MHD_Result ingest_one(struct mc_http_req *r, const struct mc_auth *a, struct mc_kb *kb,
                                  const char *id, size_t id_len, bool replace) {
    struct mc_api_error e = {0};
    bool upsert = replace;
    int rc = replace ? MC_OK : upsert_param(r, &upsert, &e);
    if (rc != MC_OK)
        return mc_api_reply_error(r, &e);
    if (replace) {
        /* Existence first, so another tenant's id gives the same 404 whatever is sent. */
        struct mc_kb_doc_info info;
        struct mc_err err = {0};
        rc = mc_kb_get(kb, id, id_len, &info, NULL, NULL, &err);
        if (rc != MC_OK)
            return reply_kb(r, a, rc, &err);
        mc_kb_doc_info_deinit(&info);
    }
    const char *ctype = mc_http_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    struct doc d = {0};
    struct mc_kb_doc_in in = {.id = id, .id_len = id_len};
    json_t *root = NULL;
    if (is_json_ctype(ctype)) {
        root = mc_api_parse_json(r->body, r->body_len, &e);
        rc = root ? doc_from_json(root, "", id, id_len, &d, &in, &e) : MC_EINVAL;
    } else if (!ctype || !*ctype) {
        rc = mc_api_fail(&e, 415, NULL, "unsupported_media_type",
                         "send the document's Content-Type (%s) or application/json",
                         MC_EXTRACT_SUPPORTED);
    } else {
        rc = extract_into(ctype, r->body ? r->body : "", r->body_len, NULL, &d, &in, &e);
        const char *title;
        size_t n;
        if (rc == MC_OK && query_param(r, "title", &title, &n)) {
            if (mc_utf8_invalid_at(title, n) >= 0 || memchr(title, 0, n))
                rc = mc_api_fail(&e, 400, "title", "invalid_value", "'title' is not UTF-8 text");
            in.title = title;
        }
        if (rc == MC_OK)
            rc = merge_meta(NULL, "metadata", &d, &in, &e);
    }
    enum MHD_Result ret =
        rc == MC_OK ? ingest_run(r, a, kb, &in, 1, upsert) : mc_api_reply_error(r, &e);
    mc_extract_doc_deinit(&d.ext);
    mc_free(d.meta);
    json_decref(root);
    return ret;
}

/* ---- Documents out ---------------------------------------------------------------- */

static json_t *info_json(const struct mc_kb_doc_info *d) {
    json_t *meta = json_loads(d->meta ? d->meta : "{}", 0, NULL);
    return json_pack("{s:o,s:s,s:o,s:o,s:s,s:I,s:I,s:I}", "id", json_text(d->id, d->id_len),
                     "object", "kb.document", "title",
                     d->title ? json_text(d->title, strlen(d->title)) : json_null(), "metadata",
                     meta ? meta : json_object(), "content_type", d->content_type, "bytes",
                     (json_int_t)d->text_len, "n_chunks", (json_int_t)d->n_chunks, "created_at",
                     (json_int_t)(d->created_ms / 1000));
}

static enum MHD_Result doc_list(struct mc_http_req *r, const struct mc_auth *a, struct mc_kb *kb) {
    struct mc_kb_doc_info *docs;
    size_t n;
    struct mc_err err = {0};
    int rc = mc_kb_list(kb, &docs, &n, &err);
    if (rc != MC_OK)
        return reply_kb(r, a, rc, &err);
    json_t *data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(data, info_json(&docs[i]));
    mc_kb_doc_info_free(docs, n);
    return mc_http_reply_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

static enum MHD_Result doc_get(struct mc_http_req *r, const struct mc_auth *a, struct mc_kb *kb,
                               const char *id, size_t id_len) {
    struct mc_kb_doc_info info;
    char *text = NULL;
    size_t len = 0;
    struct mc_err err = {0};
    int rc = mc_kb_get(kb, id, id_len, &info, &text, &len, &err);
    if (rc != MC_OK)
        return reply_kb(r, a, rc, &err);
    json_t *o = info_json(&info);
    json_object_set_new(o, "text", json_text(text, len));
    mc_free(text);
    mc_kb_doc_info_deinit(&info);
    return mc_http_reply_json(r, 200, o);
}

static enum MHD_Result doc_delete(struct mc_http_req *r, const struct mc_auth *a, struct mc_kb *kb,
                                  const char *id, size_t id_len) {
    struct mc_err err = {0};
    int rc = mc_kb_delete(kb, id, id_len, &err);
    if (rc != MC_OK)
        return reply_kb(r, a, rc, &err);
    MC_LOG_INFO("kb", "delete", "tenant=%s id=%s", a->tenant, r->id);
    return mc_http_reply_json(r, 200,
                              json_pack("{s:o,s:s,s:b}", "id", json_text(id, id_len), "object",
                                        "kb.document.deleted", "deleted", 1));
}

/* ---- Search ----------------------------------------------------------------------- */

static json_t *hit_json(const struct mc_kb_hit *h, size_t rank) {
    json_t *o =
        json_pack("{s:I,s:o,s:I,s:f,s:I,s:I,s:o}", "rank", (json_int_t)rank, "document_id",
                  json_text(h->doc_id, h->doc_id_len), "chunk_id", (json_int_t)h->chunk_id, "score",
                  (double)h->score, "start", (json_int_t)h->start, "end", (json_int_t)h->end,
                  "title", h->title ? json_text(h->title, strlen(h->title)) : json_null());
    if (h->text)
        json_object_set_new(o, "text", json_text(h->text, strlen(h->text)));
    return o;
}

/* The search request {"query", "mode", "k", "per_document", "text"} into *q. */
static int search_parse(json_t *o, struct mc_kb_query *q, struct mc_api_error *e) {
    const char *k;
    json_t *v;
    if (!json_is_object(o))
        return mc_api_fail(e, 400, NULL, "invalid_json", "request body must be a JSON object");
    json_object_foreach(o, k, v) {
        if (strcmp(k, "query") && strcmp(k, "mode") && strcmp(k, "k") &&
            strcmp(k, "per_document") && strcmp(k, "text"))
            return mc_api_fail(e, 400, k, "unknown_field",
                               "unknown field '%.40s' (known: query, mode, k, per_document, text)",
                               k);
    }
    json_t *query = json_object_get(o, "query"), *mode = json_object_get(o, "mode");
    json_t *kk = json_object_get(o, "k"), *pd = json_object_get(o, "per_document");
    json_t *tx = json_object_get(o, "text");
    if (!json_is_string(query) || json_string_length(query) == 0)
        return mc_api_fail(e, 400, "query", query ? "invalid_value" : "missing_field",
                           "'query' must be a non-empty string");
    if (json_string_length(query) > MC_KB_QUERY_MAX)
        return mc_api_fail(e, 400, "query", "invalid_value", "'query' is longer than %d bytes",
                           MC_KB_QUERY_MAX);
    q->text = json_string_value(query);
    q->len = json_string_length(query);
    struct mc_err err = {0};
    if (mode && (!json_is_string(mode) ||
                 mc_kb_mode_parse(json_string_value(mode), &q->mode, &err) != MC_OK))
        return mc_api_fail(e, 400, "mode", "invalid_value", "'mode' must be bm25, dense or hybrid");
    if (kk && (!json_is_integer(kk) || json_integer_value(kk) < 1 ||
               json_integer_value(kk) > MC_KB_K_MAX))
        return mc_api_fail(e, 400, "k", "invalid_value", "'k' must be an integer from 1 to %d",
                           MC_KB_K_MAX);
    if (kk)
        q->k = (size_t)json_integer_value(kk);
    if ((pd && !json_is_boolean(pd)) || (tx && !json_is_boolean(tx)))
        return mc_api_fail(e, 400, pd && !json_is_boolean(pd) ? "per_document" : "text",
                           "invalid_type", "'%s' must be a boolean",
                           pd && !json_is_boolean(pd) ? "per_document" : "text");
    q->per_doc = json_is_true(pd);
    q->want_text = !tx || json_is_true(tx);
    return MC_OK;
}

int mc_kb_search_parse(const char *body, size_t len, struct mc_kb_query *q, json_t **holder,
                       struct mc_api_error *e) {
    *holder = mc_api_parse_json(body, len, e);
    if (!*holder)
        return MC_EINVAL;
    int rc = search_parse(*holder, q, e);
    if (rc != MC_OK) {
        json_decref(*holder);
        *holder = NULL;
    }
    return rc;
}

static enum MHD_Result search(struct mc_server *s, struct mc_http_req *r, const struct mc_auth *a,
                              struct mc_kb *kb) {
    struct mc_api_error e = {0};
    json_t *o = NULL;
    /* Without a mode: hybrid where the knowledge base has vectors, else bm25 (one filled
     * by `mcai kb ingest` without a model has none), as the command line does. */
    struct mc_kb_query q = {
        .mode = s->kb_emb && (mc_kb_n_chunks(kb) == 0 || mc_kb_has_vectors(kb)) ? MC_KB_MODE_HYBRID
                                                                                : MC_KB_MODE_BM25,
        .k = SEARCH_K_DEFAULT,
    };
    if (mc_kb_search_parse(r->body, r->body_len, &q, &o, &e) != MC_OK)
        return mc_api_reply_error(r, &e);
    if (!s->kb_emb && q.mode != MC_KB_MODE_BM25) {
        json_decref(o);
        return mc_http_reply_error(r, 400, "invalid_request_error", "embeddings_off", "mode",
                                   "%s search needs vectors, and this server runs knowledge "
                                   "bases without embeddings (--kb-embeddings off); use mode "
                                   "bm25",
                                   mc_kb_mode_name(q.mode));
    }
    struct mc_kb_results res;
    struct mc_err err = {0};
    int64_t t0 = mc_now_ns();
    int rc = mc_kb_search(kb, &q, &res, &err);
    json_decref(o); /* q.text pointed into it */
    if (rc != MC_OK)
        return reply_kb(r, a, rc, &err);
    MC_LOG_INFO("kb", "search", "tenant=%s id=%s mode=%s k=%zu hits=%zu ms=%.1f", a->tenant, r->id,
                mc_kb_mode_name(q.mode), q.k, res.n, (double)(mc_now_ns() - t0) / 1e6);
    json_t *data = json_array();
    for (size_t i = 0; i < res.n; i++)
        json_array_append_new(data, hit_json(&res.hits[i], i + 1));
    mc_kb_results_deinit(&res);
    return mc_http_reply_json(r, 200,
                              json_pack("{s:s,s:s,s:I,s:o}", "object", "list", "mode",
                                        mc_kb_mode_name(q.mode), "k", (json_int_t)q.k, "data",
                                        data));
}

/* ---- Routing ---------------------------------------------------------------------- */

static enum MHD_Result documents(struct mc_http_req *r, const struct mc_auth *a, struct mc_kb *kb) {
    struct mc_api_error e = {0};
    const char *id;
    size_t id_len;
    bool has_id;
    if (query_params_check(r, &e) != MC_OK || id_param(r, &id, &id_len, &has_id, &e) != MC_OK)
        return mc_api_reply_error(r, &e);
    const char *m = r->method;
    if (!strcmp(m, "GET"))
        return has_id ? doc_get(r, a, kb, id, id_len) : doc_list(r, a, kb);
    if (!strcmp(m, "POST"))
        return has_id ? ingest_one(r, a, kb, id, id_len, false) : ingest_batch(r, a, kb);
    if ((!strcmp(m, "PUT") || !strcmp(m, "DELETE")) && !has_id)
        return mc_http_reply_error(r, 400, "invalid_request_error", "missing_field", "id",
                                   "%s /v1/kb/documents needs ?id=ID (percent-encoded)", m);
    if (!strcmp(m, "PUT"))
        return ingest_one(r, a, kb, id, id_len, true);
    if (!strcmp(m, "DELETE"))
        return doc_delete(r, a, kb, id, id_len);
    return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                               "method %s is not allowed on /v1/kb/documents; use GET, POST, PUT "
                               "or DELETE",
                               m);
}

enum MHD_Result mc_api_kb(struct mc_server *s, struct mc_http_req *r, const struct mc_auth *a,
                          const char *path) {
    bool docs = strcmp(path, "/documents") == 0, find = strcmp(path, "/search") == 0;
    r->route = docs ? "/v1/kb/documents" : find ? "/v1/kb/search" : "/v1/kb";
    if (!docs && !find)
        return mc_http_reply_error(r, 404, "invalid_request_error", "unknown_url", NULL,
                                   "no route %s /v1/kb%.200s (see docs/api.md)", r->method, path);
    if (find && strcmp(r->method, "POST") != 0)
        return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                                   "method %s is not allowed on /v1/kb/search; use POST",
                                   r->method);

    /* The tenant's request rate and concurrency limits apply; the tokens embedded for
     * ingestion and queries are not charged as tokens. */
    struct mc_limits lim = {a->limits[0], a->limits[1], a->limits[2], a->limits[3]};
    struct mc_err err = {0};
    int retry = 1;
    int rc = mc_limit_acquire(s->limiter, a->tenant, &lim, 0, wall_ms(), &retry, &err);
    if (rc == MC_ELIMIT) {
        r->reject = "rate_limit";
        return mc_http_reply_error_retry(r, 429, retry, "rate_limit_error", "rate_limit_exceeded",
                                         "%s", err.msg);
    }
    if (rc != MC_OK)
        return reply_kb(r, a, rc, &err);
    struct mc_kb *kb;
    rc = mc_kb_open(s->kbs, a->tenant, &kb, &err);
    enum MHD_Result ret;
    if (rc != MC_OK) {
        ret = reply_kb(r, a, rc, &err);
    } else {
        ret = docs ? documents(r, a, kb) : search(s, r, a, kb);
        mc_kb_close(kb);
    }
    mc_limit_release(s->limiter, a->tenant, 0, 0, wall_ms());
    return ret;
}

/* ---- Grounding -------------------------------------------------------------------- */

struct ground_impl {
    struct mc_kb_retrieval cfg;
    struct mc_kb_results res; /* res.n shrinks as sources are dropped */
    size_t n_found;           /* hits the search gave */
    const char *question;     /* borrowed from the request */
};

void mc_ground_deinit(struct mc_ground *g) {
    if (!g)
        return;
    struct ground_impl *im = g->impl;
    if (im) {
        im->res.n = im->n_found; /* free every hit, dropped ones too */
        mc_kb_results_deinit(&im->res);
        mc_kb_retrieval_deinit(&im->cfg);
        mc_free(im);
    }
    mc_free(g->prompt);
    memset(g, 0, sizeof(*g));
}

/* The settings in force: the front's object, with the request's "retrieval" field laid
 * over it (true: on with the front's settings; false or null: off; an object: its fields
 * win). *on false when retrieval stays off. */
static int ground_settings(struct mc_http_req *r, const char *front, struct mc_kb_retrieval *cfg,
                           bool *on, struct mc_api_error *e) {
    json_t *body = json_loadb(r->body, r->body_len, 0, NULL);
    json_t *req = json_object_get(body, "retrieval");
    json_t *merged = front ? json_loads(front, 0, NULL) : NULL;
    int rc = MC_OK;
    *on = false;
    if (!json_is_object(merged)) {
        json_decref(merged);
        merged = json_object();
    }
    bool have = front != NULL;
    if (req && !json_is_null(req)) {
        if (json_is_boolean(req)) {
            json_object_set_new(merged, "enabled", json_boolean(json_is_true(req)));
        } else if (json_is_object(req)) {
            if (!json_object_get(req, "enabled"))
                json_object_set_new(merged, "enabled", json_true());
            json_object_update(merged, req);
        } else {
            rc = mc_api_fail(
                e, 400, "retrieval", "invalid_type",
                "'retrieval' must be a boolean or an object {enabled, mode, k, template}");
        }
        have = true;
    } else if (req) {
        have = false; /* null turns it off for this request */
    }
    char *text = rc == MC_OK && have ? json_dumps(merged, JSON_COMPACT) : NULL;
    struct mc_err err = {0};
    if (text) {
        if (mc_kb_retrieval_parse(text, strlen(text), cfg, &err) != MC_OK)
            rc = mc_api_fail(e, 400, "retrieval", "invalid_value", "%s", err.msg);
        else
            *on = cfg->enabled;
    }
    free(text);
    json_decref(merged);
    json_decref(body);
    return rc;
}

static bool ground_render(struct mc_ground *g) {
    struct ground_impl *im = g->impl;
    char *p = NULL;
    size_t n = 0;
    if (mc_kb_prompt(im->cfg.template, im->question, strlen(im->question), &im->res, &p, &n,
                     NULL) != MC_OK)
        return false;
    mc_free(g->prompt);
    g->prompt = p;
    return true;
}

bool mc_ground_prepare(struct mc_server *s, struct mc_http_req *r, const struct mc_auth *a,
                       const char *front_retrieval, const char *question, struct mc_ground *g,
                       enum MHD_Result *ret) {
    memset(g, 0, sizeof(*g));
    struct ground_impl *im = mc_calloc(1, sizeof(*im));
    struct mc_api_error e = {0};
    if (!im) {
        *ret = mc_http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return false;
    }
    g->impl = im;
    bool on = false;
    if (ground_settings(r, front_retrieval, &im->cfg, &on, &e) != MC_OK) {
        *ret = mc_api_reply_error(r, &e);
        return false;
    }
    if (!on || !question || !*question)
        return true;

    /* The tenant's own knowledge base, and nobody else's: the handle is the caller's. */
    struct mc_kb *kb;
    struct mc_err err = {0};
    /* Without embeddings every retrieval is BM25: a front's settings may predate the flag,
     * and a grounded answer from one list beats a refusal. */
    if (!s->kb_emb)
        im->cfg.mode = MC_KB_MODE_BM25;
    struct mc_kb_query q = {question, strlen(question), im->cfg.mode, im->cfg.k, false, true, 0};
    if (q.len > MC_KB_QUERY_MAX)
        q.len = MC_KB_QUERY_MAX;
    int rc = mc_kb_open(s->kbs, a->tenant, &kb, &err);
    if (rc == MC_OK) {
        rc = mc_kb_search(kb, &q, &im->res, &err);
        mc_kb_close(kb);
    }
    if (rc != MC_OK) {
        mc_err_prefix(&err, "retrieval");
        *ret = reply_kb(r, a, rc, &err);
        return false;
    }
    im->n_found = im->res.n;
    im->question = question;
    if (!ground_render(g)) {
        *ret = mc_http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return false;
    }
    g->on = true;
    MC_LOG_INFO("kb", "retrieval", "tenant=%s id=%s mode=%s k=%zu hits=%zu", a->tenant, r->id,
                mc_kb_mode_name(im->cfg.mode), im->cfg.k, im->res.n);
    return true;
}

bool mc_ground_shrink(struct mc_ground *g) {
    struct ground_impl *im = g->impl;
    if (!g->on || !im || im->res.n == 0)
        return false;
    im->res.n--;
    if (ground_render(g))
        return true;
    im->res.n++;
    return false;
}

json_t *mc_ground_citations(const struct mc_ground *g) {
    const struct ground_impl *im = g->impl;
    if (!g->on || !im)
        return NULL;
    json_t *arr = json_array();
    for (size_t i = 0; i < im->res.n; i++) {
        /* "index" is the n of the answer's [n]; the rest is what a search hit carries. */
        json_t *c = json_pack("{s:I}", "index", (json_int_t)(i + 1));
        json_t *h = hit_json(&im->res.hits[i], i + 1);
        json_object_del(h, "rank");
        json_object_update(c, h);
        json_decref(h);
        json_array_append_new(arr, c);
    }
    return arr;
}
