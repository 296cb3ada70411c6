/* api_adapter.c - LoRA adapters as tenant objects: upload, list, get and delete under
 * /v1/adapters, publish and pin under /admin, and the resolution of a request's "model"
 * to a loaded adapter through the server's residency cache.
 *
 * Storage is adapter_store.c (two sealed objects per adapter under the tenant's data
 * key). Every upload is opened against the served base model before anything is stored:
 * a file that does not load is a 400 with the loader's message.
 *
 * Residency: one mc_lora_cache for the server. A tenant's own upload is cached under
 * "t/<tenant>/<name>" at its version, so two tenants never share a cache entry even for
 * identical bytes (a cache hit would tell one tenant what another uploaded). Copies the
 * operator published are cached under "d/<digest>" (version 1: the digest names the
 * content), so one adapter published to many tenants is resident once. Sequences hold
 * their own reference (the engine's), so deleting or replacing an adapter only drops the
 * cache's: running sequences finish with the version they started with.
 *
 * Threading: any connection thread. The cache has its own lock and calls the loader
 * without it; the loader learns which tenant's copy backs a "d/" key from the calling
 * thread's load_src (set around each cache call), since the cache passes only the key.
 *
 * Not here: adapters for the embeddings route (they apply to generation only), and
 * streaming uploads (a body must fit --max-adapter-bytes; server.c sets that limit for
 * callers with a valid key once the headers are in). */
#include "serve/serve_int.h"

#include "adapter/lora.h"
#include "base/log.h"
#include "base/mem.h"
#include "serve/audit.h"
#include "store/store.h"
#include "tenant/tenant.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FORM_BUFFER           (64 * 1024) /* libmicrohttpd post processor's work buffer */
#define PUBLISH_MAX_TENANTS   256
#define PUBLISH_TENANTS_BYTES 8192

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- Cache keys ------------------------------------------------------------------- */

/* The cache key of m for tenant, and its cache version. */
static uint64_t cache_key(char *out, size_t size, const char *tenant,
                          const struct mc_adapter_meta *m) {
    if (m->published) {
        snprintf(out, size, "d/%s", m->digest);
        return 1;
    }
    snprintf(out, size, "t/%s/%s", tenant, m->name);
    return m->version;
}

/* ---- Metadata as JSON ------------------------------------------------------------- */

static json_t *targets_json(uint32_t targets) {
    json_t *a = json_array();
    for (int p = 0; p < MC_PROJ_COUNT; p++)
        if (targets & (1u << p))
            json_array_append_new(a, json_string(mc_lora_proj_short((enum mc_proj)p)));
    return a;
}

/* The adapter as the API shows it. */
static json_t *meta_json(struct mc_server *s, const struct mc_adapter_meta *m) {
    json_t *o = json_pack(
        "{s:s,s:s,s:I,s:s,s:s,s:i,s:o,s:b,s:o,s:I,s:I,s:I,s:s,s:b,s:b}", "id", m->name, "object",
        "adapter", "version", (json_int_t)m->version, "base_model", s->model_id, "format",
        mc_adapter_format_name(m->format), "rank", m->rank, "alpha",
        m->has_alpha ? json_real(m->alpha) : json_null(), "rslora", m->rslora, "targets",
        targets_json(m->targets), "size_bytes", (json_int_t)m->size_bytes, "resident_bytes",
        (json_int_t)m->resident_bytes, "created", (json_int_t)m->created, "digest", m->digest,
        "published", m->published, "pinned", m->pinned);
    return o;
}

/* ---- Loader and cache ------------------------------------------------------------- */

/* Which tenant's stored copy backs a "d/<digest>" key: set by this thread around each
 * cache call that may load one. */
struct load_src {
    const char *tenant;
    const char *name;
    uint64_t version;
};
static _Thread_local const struct load_src *tls_src;

/* Replaces *l by its Q8_0 copy; false (l kept as loaded) when a tensor's width is not a
 * multiple of 32 or memory runs out, which only costs the memory saving. */
static bool to_q8_0(const char *tenant, const char *name, struct mc_lora **l) {
    struct mc_lora *q = NULL;
    struct mc_err err = {0};
    if (mc_lora_convert(*l, MC_TYPE_Q8_0, &q, &err) != MC_OK) {
        MC_LOG_WARN("adapter", "adapter_kept_as_file", "tenant=%s adapter=%s err=\"%s\"", tenant,
                    name, err.msg);
        return false;
    }
    mc_lora_release(*l);
    *l = q;
    return true;
}

static int loader(void *user, const char *id, uint64_t version, struct mc_lora **out,
                  struct mc_err *err) {
    struct mc_server *s = user;
    int64_t t0 = mc_now_ns();
    char tenant[80];
    const char *name;
    int rc;
    if (strncmp(id, "d/", 2) == 0) {
        if (!tls_src)
            return mc_err_set(err, MC_ENOTFOUND, "no stored copy named for a published adapter");
        snprintf(tenant, sizeof(tenant), "%s", tls_src->tenant);
        name = tls_src->name;
        rc = mc_adapter_load(s->store, &s->lora_base, tenant, name, tls_src->version, id + 2, out,
                             err);
    } else {
        /* "t/<tenant>/<name>": tenant ids and adapter names have no '/'. */
        const char *slash = strncmp(id, "t/", 2) == 0 ? strchr(id + 2, '/') : NULL;
        if (!slash || (size_t)(slash - id - 2) >= sizeof(tenant))
            return mc_err_set(err, MC_EINTERNAL, "bad adapter cache key");
        snprintf(tenant, sizeof(tenant), "%.*s", (int)(slash - id - 2), id + 2);
        name = slash + 1;
        rc = mc_adapter_load(s->store, &s->lora_base, tenant, name, version, NULL, out, err);
    }
    bool q8 = rc == MC_OK && s->adapter_q8_0 && to_q8_0(tenant, name, out);
    MC_LOG_INFO("adapter", "adapter_loaded",
                "tenant=%s adapter=%s shared=%d format=%s rc=%d ms=%.2f", tenant, name,
                id[0] == 'd', q8 ? "q8_0" : "file", rc, (double)(mc_now_ns() - t0) / 1e6);
    return rc;
}

/* Pins or unpins m's cache entry. */
static int cache_pin(struct mc_server *s, const char *tenant, const struct mc_adapter_meta *m,
                     bool pin, struct mc_err *err) {
    char key[160];
    uint64_t v = cache_key(key, sizeof(key), tenant, m);
    struct load_src src = {tenant, m->name, m->version};
    tls_src = &src;
    int rc = mc_lora_cache_pin(s->adapters, key, v, pin, err);
    tls_src = NULL;
    return rc;
}

/* Drops the cache's references to a tenant's private adapter (every version). A
 * published copy's entry is shared with other tenants and is left to the LRU. */
static void cache_forget(struct mc_server *s, const char *tenant, const struct mc_adapter_meta *m) {
    if (m->published)
        return;
    char key[160];
    cache_key(key, sizeof(key), tenant, m);
    mc_lora_cache_remove(s->adapters, key);
}

void mc_adapter_forget_tenant(struct mc_server *s, const char *tenant) {
    struct mc_adapter_meta *rows = NULL;
    size_t n = 0;
    struct mc_err err = {0};
    if (!s->adapters || mc_adapter_list(s->store, tenant, &rows, &n, &err) != MC_OK)
        return;
    for (size_t i = 0; i < n; i++)
        cache_forget(s, tenant, &rows[i]);
    mc_free(rows);
}

int mc_adapter_cache_open(struct mc_server *s, struct mc_err *err) {
    struct mc_lora_cache_params p = {
        .budget_bytes = s->adapter_cache_bytes,
        .loader = loader,
        .user = s,
    };
    int rc = mc_lora_cache_create(&p, &s->adapters, err);
    if (rc != MC_OK)
        return rc;

    /* Pins survive restarts: they are in the metadata. */
    struct mc_store_tenant *ts = NULL;
    size_t n_t = 0;
    if (mc_store_tenant_list(s->store, &ts, &n_t, err) != MC_OK)
        return MC_OK; /* adapters still load on demand */
    int n_pinned = 0;
    for (size_t i = 0; i < n_t; i++) {
        struct mc_adapter_meta *rows = NULL;
        size_t n = 0;
        if (mc_adapter_list(s->store, ts[i].id, &rows, &n, err) != MC_OK)
            continue;
        for (size_t k = 0; k < n; k++) {
            struct mc_err e2 = {0};
            if (!rows[k].pinned)
                continue;
            if (cache_pin(s, ts[i].id, &rows[k], true, &e2) == MC_OK)
                n_pinned++;
            else
                MC_LOG_WARN("adapter", "pin_failed", "tenant=%s adapter=%s err=\"%s\"", ts[i].id,
                            rows[k].name, e2.msg);
        }
        mc_free(rows);
    }
    mc_store_tenant_list_free(ts, n_t);
    MC_LOG_INFO("adapter", "cache_ready", "budget=%zu pinned=%d", p.budget_bytes, n_pinned);
    return MC_OK;
}

int mc_adapter_resolve(struct mc_server *s, const char *tenant, const char *name,
                       struct mc_lora **out, struct mc_adapter_meta *meta, struct mc_err *err) {
    *out = NULL;
    if (!mc_adapter_name_ok(name))
        return mc_err_set(err, MC_ENOTFOUND, "no adapter");
    /* A replace between reading the metadata and loading the blob deletes the blob just
     * read about; the second round reads the new version. */
    int rc = MC_ENOTFOUND;
    for (int attempt = 0; attempt < 2 && rc == MC_ENOTFOUND; attempt++) {
        struct mc_adapter_meta m;
        rc = mc_adapter_get(s->store, tenant, name, &m, err);
        if (rc != MC_OK)
            return rc;
        char key[160];
        uint64_t v = cache_key(key, sizeof(key), tenant, &m);
        struct load_src src = {tenant, m.name, m.version};
        tls_src = &src;
        rc = mc_lora_cache_get(s->adapters, key, v, out, err);
        tls_src = NULL;
        if (rc == MC_OK && meta)
            *meta = m;
    }
    return rc;
}

/* ---- multipart/form-data ---------------------------------------------------------- */

enum { F_NAME, F_FILE, F_CONFIG, F_MODEL, F_TENANTS, F_COUNT };
static const char *const field_names[F_COUNT] = {"name", "file", "adapter_config", "adapter_model",
                                                 "tenants"};

struct form {
    bool allowed[F_COUNT];
    struct mc_buf f[F_COUNT];
    bool seen[F_COUNT];
    char unknown[48];  /* first field not allowed, "" if none */
    char repeated[48]; /* first field sent twice, "" if none */
    bool oom;
};

static enum MHD_Result form_iter(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *filename, const char *content_type,
                                 const char *transfer_encoding, const char *data, uint64_t off,
                                 size_t size) {
    (void)kind, (void)filename, (void)content_type, (void)transfer_encoding;
    struct form *fm = cls;
    for (int i = 0; i < F_COUNT; i++) {
        if (!fm->allowed[i] || strcmp(key, field_names[i]) != 0)
            continue;
        /* libmicrohttpd hands a value over in pieces at growing offsets; a field that
         * starts again at offset 0 after data arrived is a second field of that name,
         * which would otherwise be appended to the first. */
        if (fm->seen[i] && off == 0 && fm->f[i].len > 0) {
            if (!fm->repeated[0])
                snprintf(fm->repeated, sizeof(fm->repeated), "%s", key);
            return MHD_YES;
        }
        fm->seen[i] = true;
        if (size && mc_buf_append(&fm->f[i], data, size) != MC_OK) {
            fm->oom = true;
            return MHD_NO;
        }
        return MHD_YES;
    }
    if (!fm->unknown[0])
        snprintf(fm->unknown, sizeof(fm->unknown), "%.40s", key);
    return MHD_YES;
}

static void form_free(struct form *fm) {
    for (int i = 0; i < F_COUNT; i++)
        mc_buf_free(&fm->f[i]);
}

static const char *form_str(const struct form *fm, int i) {
    return fm->f[i].data ? fm->f[i].data : "";
}

/* Parses the body as multipart/form-data into fm; false after replying 400/415. */
static bool form_parse(struct mc_http_req *r, struct form *fm, enum MHD_Result *ret) {
    const char *ct = mc_http_header(r, "Content-Type");
    if (!ct || strncasecmp(ct, "multipart/form-data", 19) != 0) {
        *ret = mc_http_reply_error(r, 415, "invalid_request_error", "unsupported_media_type", NULL,
                                   "send the adapter as multipart/form-data (curl -F "
                                   "name=NAME -F file=@adapter.gguf)");
        return false;
    }
    for (int i = 0; i < F_COUNT; i++)
        fm->f[i].limit = r->body_len + 1;
    struct MHD_PostProcessor *pp = MHD_create_post_processor(r->conn, FORM_BUFFER, form_iter, fm);
    if (!pp) {
        *ret = mc_http_reply_error(r, 400, "invalid_request_error", "invalid_upload", NULL,
                                   "multipart/form-data without a boundary");
        return false;
    }
    enum MHD_Result ok = MHD_post_process(pp, r->body ? r->body : "", r->body_len);
    enum MHD_Result fin = MHD_destroy_post_processor(pp);
    if (fm->oom) {
        *ret = mc_http_reply_error(r, 500, "server_error", NULL, NULL,
                                   "out of memory for the upload (request %s)", r->id);
        return false;
    }
    if (ok != MHD_YES || fin != MHD_YES) {
        *ret = mc_http_reply_error(r, 400, "invalid_request_error", "invalid_upload", NULL,
                                   "the multipart/form-data body is malformed or truncated");
        return false;
    }
    if (fm->unknown[0]) {
        *ret = mc_http_reply_error(r, 400, "invalid_request_error", "invalid_upload", fm->unknown,
                                   "unknown form field '%s'", fm->unknown);
        return false;
    }
    if (fm->repeated[0]) {
        *ret = mc_http_reply_error(r, 400, "invalid_request_error", "invalid_upload", fm->repeated,
                                   "form field '%s' is sent more than once; send it once",
                                   fm->repeated);
        return false;
    }
    return true;
}

/* The upload in fm: "file" (GGUF), or "adapter_config" and "adapter_model" (PEFT).
 * false after replying 400. */
static bool form_upload(struct mc_http_req *r, const struct form *fm, struct mc_adapter_files *u,
                        enum MHD_Result *ret) {
    bool gguf = fm->seen[F_FILE];
    bool peft = fm->seen[F_CONFIG] || fm->seen[F_MODEL];
    if (gguf == peft || (peft && !(fm->seen[F_CONFIG] && fm->seen[F_MODEL]))) {
        *ret = mc_http_reply_error(r, 400, "invalid_request_error", "invalid_upload", "file",
                                   "send either 'file' (a GGUF LoRA) or both 'adapter_config' "
                                   "(adapter_config.json) and 'adapter_model' "
                                   "(adapter_model.safetensors)");
        return false;
    }
    memset(u, 0, sizeof(*u));
    u->format = gguf ? MC_LORA_FORMAT_GGUF : MC_LORA_FORMAT_PEFT;
    const struct mc_buf *mb = &fm->f[gguf ? F_FILE : F_MODEL];
    u->model = mb->data ? mb->data : "";
    u->model_len = mb->len;
    u->config = form_str(fm, F_CONFIG);
    u->config_len = fm->f[F_CONFIG].len;
    if (u->model_len == 0 || (peft && u->config_len == 0)) {
        const char *param = gguf ? "file" : u->model_len == 0 ? "adapter_model" : "adapter_config";
        r->reject = "invalid_adapter";
        *ret = mc_http_reply_error(r, 400, "invalid_request_error", "invalid_adapter", param,
                                   "the adapter file is empty");
        return false;
    }
    return true;
}

/* The form field a failed mc_adapter_open blames: the loader prefixes what it says
 * about the PEFT config with "<name>/adapter_config.json:". */
static const char *open_param(const struct mc_adapter_files *u, const struct mc_err *err) {
    if (u->format == MC_LORA_FORMAT_GGUF)
        return "file";
    return strstr(err->msg, "/adapter_config.json:") ? "adapter_config" : "adapter_model";
}

/* ---- Storing, with the cache kept in step ---------------------------------------- */

/* mc_adapter_put, then the old version leaves the cache (running sequences keep theirs)
 * and a pin carries over to the new one. */
static int adapter_store(struct mc_server *s, const char *tenant, const char *name,
                         const struct mc_adapter_files *u, const struct mc_lora_info *info,
                         bool published, struct mc_adapter_meta *m, bool *replaced,
                         struct mc_err *err) {
    struct mc_adapter_meta old;
    int rc = mc_adapter_put(s->store, tenant, name, u, info, published, m, &old, replaced, err);
    if (rc != MC_OK)
        return rc;
    if (*replaced) {
        cache_forget(s, tenant, &old);
        if (old.pinned && old.published)
            cache_pin(s, tenant, &old, false, err);
    }
    if (m->pinned) {
        struct mc_err e2 = {0};
        if (cache_pin(s, tenant, m, true, &e2) != MC_OK)
            MC_LOG_WARN("adapter", "pin_failed", "tenant=%s adapter=%s err=\"%s\"", tenant, name,
                        e2.msg);
    }
    return MC_OK;
}

static int adapter_delete(struct mc_server *s, const char *tenant, const char *name,
                          struct mc_err *err) {
    struct mc_adapter_meta m;
    int rc = mc_adapter_delete(s->store, tenant, name, &m, err);
    if (rc != MC_OK)
        return rc;
    cache_forget(s, tenant, &m);
    if (m.pinned && m.published)
        cache_pin(s, tenant, &m, false, err);
    return MC_OK;
}

/* ---- Tenant routes ---------------------------------------------------------------- */

static enum MHD_Result reply_not_found(struct mc_http_req *r, const char *name) {
    return mc_http_reply_error(r, 404, "invalid_request_error", "adapter_not_found", NULL,
                               "no adapter '%.64s'", name);
}

static enum MHD_Result reply_internal(struct mc_http_req *r, const char *tenant,
                                      const struct mc_err *err) {
    MC_LOG_ERROR("adapter", "request_failed", "tenant=%s id=%s err=\"%s\"", tenant, r->id,
                 err->msg);
    return mc_http_reply_error(r, 500, "server_error", NULL, NULL, "internal error (request %s)",
                               r->id);
}

static enum MHD_Result list_reply(struct mc_server *s, struct mc_http_req *r, const char *tenant) {
    struct mc_adapter_meta *rows = NULL;
    size_t n = 0;
    struct mc_err err = {0};
    int rc = mc_adapter_list(s->store, tenant, &rows, &n, &err);
    if (rc == MC_ENOTFOUND)
        return mc_http_reply_error(r, 404, "invalid_request_error", "not_found", NULL,
                                   "no such tenant");
    if (rc != MC_OK)
        return reply_internal(r, tenant, &err);
    json_t *data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(data, meta_json(s, &rows[i]));
    mc_free(rows);
    return mc_http_reply_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

/* Validates and stores the upload in fm as tenant's adapter name; the reply is the
 * adapter (201 new, 200 replaced) or the error. */
static enum MHD_Result upload_reply(struct mc_server *s, struct mc_http_req *r, const char *tenant,
                                    const struct form *fm) {
    enum MHD_Result ret;
    const char *name = form_str(fm, F_NAME);
    if (!fm->seen[F_NAME])
        return mc_http_reply_error(r, 400, "invalid_request_error", "missing_field", "name",
                                   "'name' is required: the adapter's model name");
    if (!mc_adapter_name_ok(name))
        return mc_http_reply_error(r, 400, "invalid_request_error", "invalid_value", "name",
                                   "'name' must be 1..%d characters of A-Z a-z 0-9 . _ - "
                                   "starting with a letter or digit",
                                   MC_ADAPTER_NAME_MAX);
    if (strcmp(name, s->model_id) == 0 || strcmp(name, s->emb_model_id) == 0)
        return mc_http_reply_error(r, 409, "invalid_request_error", "conflict", "name",
                                   "'%s' is the %s model's name; choose another", name,
                                   strcmp(name, s->model_id) == 0 ? "base" : "embedding");
    struct mc_adapter_files u;
    if (!form_upload(r, fm, &u, &ret))
        return ret;

    /* The whole file is checked against the served model before anything is stored. */
    struct mc_lora *l = NULL;
    struct mc_err err = {0};
    int rc = mc_adapter_open(&u, name, &s->lora_base, &l, &err);
    if (rc != MC_OK) {
        r->reject = "invalid_adapter";
        if (rc == MC_ENOMEM || rc == MC_EIO)
            return reply_internal(r, tenant, &err);
        return mc_http_reply_error(r, 400, "invalid_request_error", "invalid_adapter",
                                   open_param(&u, &err), "%s", err.msg);
    }
    /* The metadata's resident_bytes are those of the copy the cache will hold. */
    if (s->adapter_q8_0)
        to_q8_0(tenant, name, &l);
    struct mc_adapter_meta m;
    bool replaced = false;
    rc = adapter_store(s, tenant, name, &u, mc_lora_info(l), false, &m, &replaced, &err);
    mc_lora_release(l);
    if (rc != MC_OK)
        return reply_internal(r, tenant, &err);
    MC_LOG_INFO("adapter", "adapter_stored",
                "tenant=%s adapter=%s version=%llu format=%s bytes=%lld", tenant, name,
                (unsigned long long)m.version, mc_adapter_format_name(m.format),
                (long long)m.size_bytes);
    return mc_http_reply_json(r, replaced ? 200 : 201, meta_json(s, &m));
}

enum MHD_Result mc_api_adapters(struct mc_server *s, struct mc_http_req *r, const struct mc_auth *a,
                                const char *path) {
    bool get = strcmp(r->method, "GET") == 0;
    bool post = strcmp(r->method, "POST") == 0;
    bool del = strcmp(r->method, "DELETE") == 0;
    struct mc_err err = {0};
    enum MHD_Result ret;

    if (!*path) {
        r->route = "/v1/adapters";
        if (get)
            return list_reply(s, r, a->tenant);
        if (!post)
            return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                                       "use GET or POST on /v1/adapters");
        struct form fm = {.allowed = {true, true, true, true, false}};
        ret = form_parse(r, &fm, &ret) ? upload_reply(s, r, a->tenant, &fm) : ret;
        form_free(&fm);
        return ret;
    }

    r->route = "/v1/adapters/{name}";
    const char *name = path + 1;
    struct mc_adapter_meta m;
    if (!mc_adapter_name_ok(name))
        return reply_not_found(r, name);
    if (get) {
        int rc = mc_adapter_get(s->store, a->tenant, name, &m, &err);
        if (rc == MC_ENOTFOUND)
            return reply_not_found(r, name);
        return rc == MC_OK ? mc_http_reply_json(r, 200, meta_json(s, &m))
                           : reply_internal(r, a->tenant, &err);
    }
    if (!del)
        return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                                   "use GET or DELETE on an adapter");
    int rc = adapter_delete(s, a->tenant, name, &err);
    if (rc == MC_ENOTFOUND)
        return reply_not_found(r, name);
    if (rc != MC_OK)
        return reply_internal(r, a->tenant, &err);
    MC_LOG_INFO("adapter", "adapter_deleted", "tenant=%s adapter=%s", a->tenant, name);
    return mc_http_reply_json(
        r, 200, json_pack("{s:s,s:s,s:b}", "id", name, "object", "adapter.deleted", "deleted", 1));
}

/* ---- Admin routes ----------------------------------------------------------------- */

static void audit(struct mc_server *s, const char *action, const char *tenant, const char *name,
                  uint64_t version) {
    json_t *d = json_pack("{s:s,s:I}", "adapter", name, "version", (json_int_t)version);
    char *text = d ? json_dumps(d, JSON_COMPACT) : NULL;
    json_decref(d);
    struct mc_err err = {0};
    if (!text || mc_audit_append(s->audit, now_ms(), "admin", action, tenant, text, &err) != MC_OK)
        MC_LOG_WARN("adapter", "audit_failed", "tenant=%s action=%s err=\"%s\"", tenant, action,
                    err.msg);
    free(text);
}

/* Splits the comma-separated tenant ids of "tenants" into ids (pointers into buf, which
 * is modified), keeping the first of repeated ids so each tenant gets one copy. Returns
 * the count, or -1 for an empty item or too many. */
static int split_tenants(char *buf, char **ids, int max) {
    int n = 0;
    for (char *p = buf; p;) {
        char *comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        while (*p == ' ')
            p++;
        size_t len = strlen(p);
        while (len && p[len - 1] == ' ')
            p[--len] = '\0';
        if (!len)
            return -1;
        bool dup = false;
        for (int i = 0; i < n && !dup; i++)
            dup = strcmp(ids[i], p) == 0;
        if (!dup && n == max)
            return -1;
        if (!dup)
            ids[n++] = p;
        p = comma ? comma + 1 : NULL;
    }
    return n;
}

/* POST /admin/adapters: one adapter, validated once, stored as a published copy in each
 * named tenant (sealed with that tenant's key). Every tenant must exist; nothing is
 * stored if one does not. */
static enum MHD_Result publish(struct mc_server *s, struct mc_http_req *r) {
    enum MHD_Result ret;
    struct form fm = {.allowed = {true, true, true, true, true}};
    if (!form_parse(r, &fm, &ret))
        goto out;
    const char *name = form_str(&fm, F_NAME);
    char tbuf[PUBLISH_TENANTS_BYTES];
    char *ids[PUBLISH_MAX_TENANTS];
    snprintf(tbuf, sizeof(tbuf), "%s", form_str(&fm, F_TENANTS));
    int n = fm.f[F_TENANTS].len < sizeof(tbuf) ? split_tenants(tbuf, ids, PUBLISH_MAX_TENANTS) : -1;
    struct mc_adapter_files u;
    struct mc_err err = {0};
    if (!mc_adapter_name_ok(name) || strcmp(name, s->model_id) == 0 ||
        strcmp(name, s->emb_model_id) == 0) {
        ret = mc_http_reply_error(r, 400, "invalid_request_error", "invalid_value", "name",
                                  "'name' must be 1..%d characters of A-Z a-z 0-9 . _ - and not "
                                  "the base or embedding model's name",
                                  MC_ADAPTER_NAME_MAX);
        goto out;
    }
    if (n < 1) {
        ret = mc_http_reply_error(r, 400, "invalid_request_error", "invalid_value", "tenants",
                                  "'tenants' must be 1..%d comma-separated tenant ids",
                                  PUBLISH_MAX_TENANTS);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        struct mc_tenant_info t;
        int rc = mc_tenant_get(s->tenants, ids[i], &t, &err);
        if (rc != MC_OK) {
            ret = rc == MC_ENOTFOUND
                      ? mc_http_reply_error(r, 404, "invalid_request_error", "not_found", "tenants",
                                            "no tenant '%.40s'", ids[i])
                      : reply_internal(r, ids[i], &err);
            goto out;
        }
    }
    if (!form_upload(r, &fm, &u, &ret))
        goto out;
    struct mc_lora *l = NULL;
    int rc = mc_adapter_open(&u, name, &s->lora_base, &l, &err);
    if (rc != MC_OK) {
        r->reject = "invalid_adapter";
        ret = mc_http_reply_error(r, 400, "invalid_request_error", "invalid_adapter",
                                  open_param(&u, &err), "%s", err.msg);
        goto out;
    }
    if (s->adapter_q8_0)
        to_q8_0("(published)", name, &l);
    json_t *data = json_array();
    for (int i = 0; i < n && rc == MC_OK; i++) {
        struct mc_adapter_meta m;
        bool replaced = false;
        rc = adapter_store(s, ids[i], name, &u, mc_lora_info(l), true, &m, &replaced, &err);
        if (rc != MC_OK)
            break;
        audit(s, "adapter.publish", ids[i], name, m.version);
        json_t *o = meta_json(s, &m);
        json_object_set_new(o, "tenant", json_string(ids[i]));
        json_array_append_new(data, o);
    }
    mc_lora_release(l);
    if (rc != MC_OK) {
        json_decref(data);
        ret = reply_internal(r, "", &err);
        goto out;
    }
    MC_LOG_INFO("adapter", "adapter_published", "adapter=%s tenants=%d", name, n);
    ret = mc_http_reply_json(r, 201, json_pack("{s:s,s:o}", "object", "list", "data", data));
out:
    form_free(&fm);
    return ret;
}

/* POST/DELETE /admin/tenants/{id}/adapters/{name}/pin. */
static enum MHD_Result pin_reply(struct mc_server *s, struct mc_http_req *r, const char *tenant,
                                 const char *name, bool pin) {
    struct mc_adapter_meta m;
    struct mc_err err = {0};
    int rc = mc_adapter_set_pinned(s->store, tenant, name, pin, &m, &err);
    if (rc != MC_OK)
        return rc == MC_ENOTFOUND ? reply_not_found(r, name) : reply_internal(r, tenant, &err);
    rc = cache_pin(s, tenant, &m, pin, &err);
    if (rc == MC_EFULL)
        return mc_http_reply_error(r, 409, "invalid_request_error", "adapter_cache_full", NULL,
                                   "%s; raise --adapter-cache-mb or unpin another adapter",
                                   err.msg);
    if (rc != MC_OK)
        return reply_internal(r, tenant, &err);
    audit(s, pin ? "adapter.pin" : "adapter.unpin", tenant, name, m.version);
    return mc_http_reply_json(r, 200, meta_json(s, &m));
}

enum MHD_Result mc_api_admin_adapters(struct mc_server *s, struct mc_http_req *r,
                                      const char *tenant, const char *arg) {
    bool get = strcmp(r->method, "GET") == 0;
    bool post = strcmp(r->method, "POST") == 0;
    bool del = strcmp(r->method, "DELETE") == 0;
    if (!atomic_load(&s->ready))
        return mc_http_reply_error_retry(r, 503, 2, "server_error", "model_loading",
                                         "the model is still loading; retry shortly");
    if (!tenant) {
        r->route = "/admin/adapters";
        if (!post)
            return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                                       "use POST on /admin/adapters");
        return publish(s, r);
    }
    struct mc_tenant_info t;
    struct mc_err err = {0};
    int rc = mc_tenant_get(s->tenants, tenant, &t, &err);
    if (rc != MC_OK)
        return rc == MC_ENOTFOUND ? mc_http_reply_error(r, 404, "invalid_request_error",
                                                        "not_found", NULL, "no such tenant")
                                  : reply_internal(r, tenant, &err);
    if (!*arg) {
        r->route = "/admin/tenants/{id}/adapters";
        return get ? list_reply(s, r, tenant)
                   : mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed",
                                         NULL, "use GET on a tenant's adapters");
    }
    char name[MC_ADAPTER_NAME_MAX + 1];
    const char *slash = strchr(arg, '/');
    size_t len = slash ? (size_t)(slash - arg) : strlen(arg);
    snprintf(name, sizeof(name), "%.*s", (int)(len < sizeof(name) ? len : 0), arg);
    if (!mc_adapter_name_ok(name))
        return reply_not_found(r, arg);
    if (slash) {
        r->route = "/admin/tenants/{id}/adapters/{name}/pin";
        if (strcmp(slash, "/pin") != 0)
            return mc_http_reply_error(r, 404, "invalid_request_error", "unknown_url", NULL,
                                       "no admin route for adapter '%s'", name);
        if (!post && !del)
            return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                                       "use POST to pin, DELETE to unpin");
        return pin_reply(s, r, tenant, name, post);
    }
    r->route = "/admin/tenants/{id}/adapters/{name}";
    struct mc_adapter_meta m;
    if (get) {
        rc = mc_adapter_get(s->store, tenant, name, &m, &err);
        if (rc == MC_ENOTFOUND)
            return reply_not_found(r, name);
        return rc == MC_OK ? mc_http_reply_json(r, 200, meta_json(s, &m))
                           : reply_internal(r, tenant, &err);
    }
    if (!del)
        return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                                   "use GET or DELETE on an adapter");
    rc = adapter_delete(s, tenant, name, &err);
    if (rc == MC_ENOTFOUND)
        return reply_not_found(r, name);
    if (rc != MC_OK)
        return reply_internal(r, tenant, &err);
    audit(s, "adapter.delete", tenant, name, 0);
    return mc_http_reply_json(
        r, 200, json_pack("{s:s,s:s,s:b}", "id", name, "object", "adapter.deleted", "deleted", 1));
}
