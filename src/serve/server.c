/* server.c - the server object: start-up, routing, authentication, shutdown.
 *
 * Routes (docs/api.md has the full API):
 *   GET  /healthz, /readyz, /metrics                  no credential
 *   *    /admin/...                                   Bearer admin key (api_admin.c)
 *   *    /v1/...                                      Bearer tenant API key (api_*.c)
 *   *    /v1/kb/...                                   the tenant's knowledge base (api_kb.c)
 * A tenant's identity comes only from its key: mc_key_lookup runs on every request, so a
 * revoked key fails on the next request in any thread. Each finished request gives one
 * access-log line (request id, tenant, route, status, time), one metrics sample and, for
 * tenant requests, one audit entry "request" with its metadata (never content).
 *
 * Shutdown: draining turns on (new work gets 503 with Retry-After), the engine drains
 * while the listener still accepts (and answers 503), the listener stops accepting,
 * libmicrohttpd joins every connection thread, the audit log is synced. What this file
 * does not do: parse request bodies (api_req.c) or talk to the engine (api_openai.c). */
#include "serve/server.h"
#include "serve/serve_int.h"

#include "base/log.h"
#include "base/mem.h"
#include "model/model.h"
#include "serve/audit.h"
#include "serve/engine.h"
#include "store/store.h"
#include "tenant/ratelimit.h"
#include "tenant/tenant.h"

#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

enum {
    DEFAULT_MAX_BODY = 1 << 20,
    DEFAULT_MAX_ADAPTER_BODY = 256 << 20,
    DEFAULT_ADAPTER_CACHE_BYTES = 256 << 20,
    DEFAULT_MAX_SEQS = 16,
    DEFAULT_CTX_CAP = 4096,
    DEFAULT_DRAIN_MS = 10000,
    RETRY_AFTER_DRAINING_S = 5,
    RETRY_AFTER_LOADING_S = 2,
    SHUTDOWN_FLUSH_MS = 5000,
};

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int mc_server_check_admin_key(const char *key, struct mc_err *err) {
    if (!key || !*key)
        return mc_err_set(err, MC_EINVAL,
                          "no admin key: set MCAI_ADMIN_KEY or pass "
                          "--admin-key-file (e.g. `openssl rand -hex 32`)");
    size_t n = strlen(key);
    bool seen[128] = {0};
    int distinct = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c <= ' ' || c >= 127)
            return mc_err_set(err, MC_EINVAL,
                              "admin key has a non-printable or space character "
                              "at byte %zu; use printable ASCII (e.g. `openssl rand -hex 32`)",
                              i);
        if (!seen[c]) {
            seen[c] = true;
            distinct++;
        }
    }
    if (n < MC_SERVER_ADMIN_KEY_MIN || distinct < 10)
        return mc_err_set(
            err, MC_EINVAL,
            "admin key is weak (%zu bytes, %d distinct characters; "
            "need at least %d bytes and 10 distinct): use e.g. `openssl rand -hex 32`",
            n, distinct, MC_SERVER_ADMIN_KEY_MIN);
    return MC_OK;
}

/* ---- Request end: log, metrics, audit --------------------------------------------- */

static void on_request_done(struct mc_http_req *r, void *user) {
    struct mc_server *s = user;
    double ms = (double)(mc_now_ns() - r->t_start_ns) / 1e6;
    MC_LOG_INFO("http", "request_done",
                "id=%s tenant=%s method=%s route=%s status=%d ms=%.1f "
                "bytes_in=%zu tok_in=%lld tok_out=%lld",
                r->id, r->tenant[0] ? r->tenant : "-", r->method, r->route, r->status, ms,
                r->body_len, (long long)r->n_prompt, (long long)r->n_completion);
    mc_metrics_request(s->metrics, r->tenant, r->route, r->status);
    if (r->reject)
        mc_metrics_rejection(s->metrics, r->tenant, r->reject);

    /* Key use goes to the audit log: metadata only, never content. */
    if (r->key_prefix[0]) {
        char actor[48], details[256];
        struct mc_err err = {0};
        snprintf(actor, sizeof(actor), "key:%s", r->key_prefix);
        snprintf(details, sizeof(details),
                 "{\"request\":\"%s\",\"route\":\"%s\",\"status\":%d,"
                 "\"prompt_tokens\":%lld,\"completion_tokens\":%lld}",
                 r->id, r->route, r->status, (long long)r->n_prompt, (long long)r->n_completion);
        if (mc_audit_append(s->audit, now_ms(), actor, "key.use", r->tenant, details, &err) !=
            MC_OK)
            MC_LOG_WARN("serve", "audit_failed", "tenant=%s id=%s err=\"%s\"", r->tenant, r->id,
                        err.msg);
    }
}

/* ---- Authentication --------------------------------------------------------------- */

static bool admin_ok(struct mc_server *s, struct mc_http_req *r) {
    const char *tok = mc_http_bearer(r);
    if (!tok || strlen(tok) != s->admin_key_len)
        return false;
    return sodium_memcmp(tok, s->admin_key, s->admin_key_len) == 0;
}

static int tenant_auth(struct mc_server *s, struct mc_http_req *r, struct mc_auth *a) {
    const char *tok = mc_http_bearer(r);
    if (!tok || strlen(tok) > 256)
        return MC_EPERM;
    struct mc_tenant_info ti;
    struct mc_key_info ki;
    struct mc_err err = {0};
    int rc = mc_key_lookup(s->tenants, tok, &ti, &ki, &err);
    if (rc != MC_OK)
        return rc;
    memset(a, 0, sizeof(*a));
    snprintf(a->tenant, sizeof(a->tenant), "%s", ti.id);
    snprintf(a->tenant_name, sizeof(a->tenant_name), "%s", ti.name);
    snprintf(a->key_prefix, sizeof(a->key_prefix), "%s", ki.prefix);
    a->weight = ti.weight;
    a->limits[0] = ti.limits.rpm;
    a->limits[1] = ti.limits.tpm;
    a->limits[2] = ti.limits.tpd;
    a->limits[3] = ti.limits.concurrency;
    return MC_OK;
}

/* ---- Body limits ----------------------------------------------------------------- */

/* Adapter uploads may be far larger than any JSON body, but only for a caller whose
 * credential is valid: anyone else gets --max-body-bytes, so an unauthenticated client
 * cannot make the server buffer a large body. Runs once the headers are in. */
static size_t body_limit(struct mc_http_req *r) {
    struct mc_server *s = r->user;
    const char *u = r->url;
    bool tenant = strncmp(u, "/v1/adapters", 12) == 0 && (u[12] == '\0' || u[12] == '?');
    bool admin = strncmp(u, "/admin/adapters", 15) == 0 && (u[15] == '\0' || u[15] == '?');
    if (strcmp(r->method, "POST") != 0 || !(tenant || admin) || !atomic_load(&s->ready))
        return 0;
    struct mc_auth a;
    if (admin ? admin_ok(s, r) : tenant_auth(s, r, &a) == MC_OK)
        return s->max_adapter_bytes;
    return 0;
}

/* ---- Routes without credentials --------------------------------------------------- */

/* The residency cache's figures. */
static void adapter_gauges(struct mc_buf *o, struct mc_server *s) {
    struct mc_lora_cache_stats cs;
    mc_lora_cache_stats(s->adapters, &cs);
    mc_buf_printf(o,
                  "# HELP mcai_adapter_cache_hits_total Adapter lookups served by a resident "
                  "adapter.\n# TYPE mcai_adapter_cache_hits_total counter\n"
                  "mcai_adapter_cache_hits_total %llu\n",
                  (unsigned long long)cs.hits);
    mc_buf_printf(o,
                  "# HELP mcai_adapter_cache_misses_total Adapter lookups that loaded from the "
                  "store.\n# TYPE mcai_adapter_cache_misses_total counter\n"
                  "mcai_adapter_cache_misses_total %llu\n",
                  (unsigned long long)cs.misses);
    mc_buf_printf(o,
                  "# TYPE mcai_adapter_cache_evictions_total counter\n"
                  "mcai_adapter_cache_evictions_total %llu\n",
                  (unsigned long long)cs.evictions);
    mc_buf_printf(o,
                  "# TYPE mcai_adapter_cache_load_errors_total counter\n"
                  "mcai_adapter_cache_load_errors_total %llu\n",
                  (unsigned long long)cs.load_errors);
    mc_buf_printf(o,
                  "# TYPE mcai_adapter_cache_resident_bytes gauge\n"
                  "mcai_adapter_cache_resident_bytes %zu\n",
                  cs.resident_bytes);
    mc_buf_printf(o, "# TYPE mcai_adapter_cache_resident gauge\nmcai_adapter_cache_resident %d\n",
                  cs.n_resident);
    mc_buf_printf(o,
                  "# TYPE mcai_adapter_cache_budget_bytes gauge\n"
                  "mcai_adapter_cache_budget_bytes %zu\n",
                  s->adapter_cache_bytes);
}

static void engine_gauges(struct mc_buf *o, const char (*tenants)[64], size_t n, void *user) {
    struct mc_server *s = user;
    if (!atomic_load(&s->ready))
        return;
    mc_buf_printf(o, "# HELP mcai_tenant_queue_depth Requests of a tenant waiting for admission.\n"
                     "# TYPE mcai_tenant_queue_depth gauge\n");
    int32_t *active = mc_calloc(n ? n : 1, sizeof(*active));
    for (size_t i = 0; i < n; i++) {
        int32_t queued = 0;
        int32_t act = 0;
        mc_engine_tenant_load(s->engine, tenants[i], &queued, &act);
        if (active)
            active[i] = act;
        mc_buf_printf(o, "mcai_tenant_queue_depth{tenant=\"%s\"} %d\n", tenants[i], queued);
    }
    mc_buf_printf(o, "# TYPE mcai_tenant_active_sequences gauge\n");
    for (size_t i = 0; active && i < n; i++)
        mc_buf_printf(o, "mcai_tenant_active_sequences{tenant=\"%s\"} %d\n", tenants[i], active[i]);
    mc_free(active);
    struct mc_engine_stats st;
    mc_engine_stats(s->engine, &st);
    mc_buf_printf(o,
                  "# HELP mcai_queue_depth Requests waiting for admission, all tenants.\n"
                  "# TYPE mcai_queue_depth gauge\nmcai_queue_depth %d\n",
                  st.n_queued);
    mc_buf_printf(o, "# TYPE mcai_active_sequences gauge\nmcai_active_sequences %d\n", st.n_active);
    mc_buf_printf(o, "# TYPE mcai_engine_steps_total counter\nmcai_engine_steps_total %llu\n",
                  (unsigned long long)st.n_steps);
    mc_buf_printf(o,
                  "# TYPE mcai_engine_requests_done_total counter\n"
                  "mcai_engine_requests_done_total %llu\n",
                  (unsigned long long)st.n_requests_done);
    mc_buf_printf(o,
                  "# HELP mcai_engine_requests_failed_total Generations that ended in error or "
                  "were cancelled (client gone, shutdown).\n"
                  "# TYPE mcai_engine_requests_failed_total counter\n"
                  "mcai_engine_requests_failed_total %llu\n",
                  (unsigned long long)st.n_requests_failed);
    mc_buf_printf(o,
                  "# TYPE mcai_engine_preemptions_total counter\n"
                  "mcai_engine_preemptions_total %llu\n",
                  (unsigned long long)st.n_preemptions);
    mc_buf_printf(o, "# TYPE mcai_kv_bytes_used gauge\nmcai_kv_bytes_used %zu\n", st.kv_bytes_used);
    adapter_gauges(o, s);
    mc_kb_serve_gauges(s, o);
}

static enum MHD_Result route_public(struct mc_server *s, struct mc_http_req *r, const char *p) {
    if (strcmp(p, "/healthz") == 0) {
        r->route = "/healthz";
        return mc_http_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
    }
    if (strcmp(p, "/readyz") == 0) {
        r->route = "/readyz";
        if (atomic_load(&s->draining))
            return mc_http_reply_json(r, 503, json_pack("{s:s}", "status", "draining"));
        if (!atomic_load(&s->ready))
            return mc_http_reply_json(r, 503, json_pack("{s:s}", "status", "loading"));
        return mc_http_reply_json(r, 200,
                                  json_pack("{s:s,s:s}", "status", "ready", "model", s->model_id));
    }
    r->route = "/metrics";
    struct mc_buf b = {0};
    mc_metrics_render(s->metrics, &b, engine_gauges, s);
    enum MHD_Result ret = mc_http_reply_text(r, 200, "text/plain; version=0.0.4; charset=utf-8",
                                             b.data ? b.data : "", b.len);
    mc_buf_free(&b);
    return ret;
}

/* ---- Tenant routes ---------------------------------------------------------------- */

static bool is_method(struct mc_http_req *r, const char *m) {
    return strcmp(r->method, m) == 0;
}

static enum MHD_Result method_not_allowed(struct mc_http_req *r, const char *allowed) {
    return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                               "method %s is not allowed on %s; use %s", r->method, r->route,
                               allowed);
}

static enum MHD_Result route_tenant(struct mc_server *s, struct mc_http_req *r, const char *p) {
    struct mc_auth a;
    int rc = tenant_auth(s, r, &a);
    if (rc != MC_OK) {
        r->reject = "auth";
        if (rc == MC_EPERM)
            return mc_http_reply_error(r, 401, "invalid_request_error", "invalid_api_key", NULL,
                                       "invalid API key: send 'Authorization: Bearer <key>' with "
                                       "a key from the operator");
        return mc_http_reply_error(r, 500, "server_error", NULL, NULL,
                                   "key lookup failed (request %s)", r->id);
    }
    snprintf(r->tenant, sizeof(r->tenant), "%s", a.tenant);
    snprintf(r->key_prefix, sizeof(r->key_prefix), "%s", a.key_prefix);

    if (strcmp(p, "/v1/usage") == 0) {
        r->route = "/v1/usage";
        if (!is_method(r, "GET"))
            return method_not_allowed(r, "GET");
        return mc_api_usage(s, r, a.tenant);
    }
    if (strcmp(p, "/v1/conversations") == 0 || strncmp(p, "/v1/conversations/", 18) == 0) {
        r->route = "/v1/conversations";
        return mc_api_conversations(s, r, &a, p + 17);
    }

    /* Everything below needs the model. */
    if (!atomic_load(&s->ready)) {
        r->reject = "loading";
        return mc_http_reply_error_retry(r, 503, RETRY_AFTER_LOADING_S, "server_error",
                                         "model_loading",
                                         "the model is still loading; retry shortly");
    }
    if (strcmp(p, "/v1/adapters") == 0 || strncmp(p, "/v1/adapters/", 13) == 0)
        return mc_api_adapters(s, r, &a, p + 12);
    if (strcmp(p, "/v1/models") == 0 || strncmp(p, "/v1/models/", 11) == 0) {
        r->route = "/v1/models";
        if (!is_method(r, "GET"))
            return method_not_allowed(r, "GET");
        return mc_api_models(s, r, &a, p[10] == '/' ? p + 11 : NULL);
    }
    if (strcmp(p, "/v1/chat/completions") == 0) {
        r->route = "/v1/chat/completions";
        return is_method(r, "POST") ? mc_api_chat(s, r, &a) : method_not_allowed(r, "POST");
    }
    if (strcmp(p, "/v1/completions") == 0) {
        r->route = "/v1/completions";
        return is_method(r, "POST") ? mc_api_completions(s, r, &a) : method_not_allowed(r, "POST");
    }
    if (strcmp(p, "/v1/kb") == 0 || strncmp(p, "/v1/kb/", 7) == 0)
        return mc_api_kb(s, r, &a, p + 6);
    if (strcmp(p, "/v1/embeddings") == 0) {
        r->route = "/v1/embeddings";
        return is_method(r, "POST") ? mc_api_embeddings(s, r, &a) : method_not_allowed(r, "POST");
    }
    r->route = "/v1/other";
    return mc_http_reply_error(r, 404, "invalid_request_error", "unknown_url", NULL,
                               "no route %s %s", r->method, p);
}

/* ---- Dispatch --------------------------------------------------------------------- */

static enum MHD_Result dispatch(struct mc_http_req *r) {
    struct mc_server *s = r->user;
    char path[512];
    snprintf(path, sizeof(path), "%s", r->url);
    char *q = strchr(path, '?');
    if (q)
        *q = '\0';
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        path[--n] = '\0';

    if (is_method(r, "GET") && (strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0 ||
                                strcmp(path, "/metrics") == 0))
        return route_public(s, r, path);

    bool is_admin = strcmp(path, "/admin") == 0 || strncmp(path, "/admin/", 7) == 0;
    bool is_v1 = strncmp(path, "/v1/", 4) == 0;
    if ((is_admin || is_v1) && atomic_load(&s->draining)) {
        r->route = is_admin ? "/admin" : "/v1";
        r->reject = "draining";
        return mc_http_reply_error_retry(r, 503, RETRY_AFTER_DRAINING_S, "server_error",
                                         "shutting_down",
                                         "the server is shutting down; retry on another replica "
                                         "or later");
    }
    if (is_admin) {
        r->route = "/admin";
        if (!admin_ok(s, r)) {
            r->reject = "auth";
            return mc_http_reply_error(r, 401, "invalid_request_error", "invalid_admin_key", NULL,
                                       "invalid admin key: send 'Authorization: Bearer <admin "
                                       "key>'");
        }
        return mc_api_admin(s, r, path + 6);
    }
    if (is_v1)
        return route_tenant(s, r, path);
    r->route = "other";
    return mc_http_reply_error(r, 404, "invalid_request_error", "unknown_url", NULL,
                               "no route %s %s", r->method, path);
}

/* ---- Audit hook for admin mutations ----------------------------------------------- */

static int audit_hook(void *user, const char *action, const char *tenant_id,
                      const char *details_json, struct mc_err *err) {
    struct mc_server *s = user;
    return mc_audit_append(s->audit, now_ms(), "admin", action, tenant_id, details_json, err);
}

/* ---- Life cycle ------------------------------------------------------------------- */

int mc_server_create(const struct mc_server_config *cfg, struct mc_server **out,
                     struct mc_err *err) {
    *out = NULL;
    if (!cfg->model_path || !cfg->data_dir || !cfg->master_key)
        return mc_err_set(err, MC_EINVAL, "model path, data directory and master key are required");
    int rc = mc_server_check_admin_key(cfg->admin_key, err);
    if (rc != MC_OK)
        return rc;

    struct mc_server *s = mc_calloc(1, sizeof(*s));
    if (!s)
        return mc_err_set(err, MC_ENOMEM, "out of memory");
    pthread_mutex_init(&s->embed_lock, NULL);
    pthread_mutex_init(&s->conv_lock, NULL);
    s->model_path = mc_strdup(cfg->model_path);
    s->data_dir = mc_strdup(cfg->data_dir);
    if (cfg->embed_model_path && *cfg->embed_model_path &&
        !(s->embed_model_path = mc_strdup(cfg->embed_model_path))) {
        rc = mc_err_set(err, MC_ENOMEM, "out of memory");
        goto fail;
    }
    s->host = mc_strdup(cfg->host && *cfg->host ? cfg->host : "127.0.0.1");
    s->admin_key_len = strlen(cfg->admin_key);
    s->admin_key = mc_secret_alloc(s->admin_key_len + 1);
    if (!s->model_path || !s->data_dir || !s->host || !s->admin_key) {
        rc = mc_err_set(err, MC_ENOMEM, "out of memory");
        goto fail;
    }
    memcpy(s->admin_key, cfg->admin_key, s->admin_key_len + 1);
    s->port = cfg->port;
    s->n_threads = cfg->n_threads;
    s->n_ctx_cfg = cfg->n_ctx;
    s->max_seqs = cfg->max_seqs > 0 ? cfg->max_seqs : DEFAULT_MAX_SEQS;
    s->max_queue = cfg->max_queue;
    s->kv_budget_bytes = cfg->kv_budget_bytes;
    s->adapter_cache_bytes =
        cfg->adapter_cache_bytes ? cfg->adapter_cache_bytes : DEFAULT_ADAPTER_CACHE_BYTES;
    s->adapter_q8_0 = cfg->adapter_q8_0;
    s->max_adapter_bytes =
        cfg->max_adapter_bytes ? cfg->max_adapter_bytes : DEFAULT_MAX_ADAPTER_BODY;
    s->drain_timeout_ms = cfg->drain_timeout_ms > 0 ? cfg->drain_timeout_ms : DEFAULT_DRAIN_MS;
    s->kb_budget_bytes = cfg->kb_cache_bytes;
    s->kb_no_embeddings = cfg->kb_no_embeddings;

    if ((rc = mc_metrics_create(&s->metrics, err)) != MC_OK)
        goto fail;
    if ((rc = mc_store_open(s->data_dir, cfg->master_key, &s->store, err)) != MC_OK)
        goto fail;
    if ((rc = mc_audit_open(s->data_dir, &s->audit, err)) != MC_OK)
        goto fail;
    if ((rc = mc_tenants_create(s->store, &s->tenants, err)) != MC_OK)
        goto fail;
    mc_tenants_set_audit(s->tenants, audit_hook, s);
    if ((rc = mc_limiter_create(s->tenants, &s->limiter, err)) != MC_OK)
        goto fail;

    struct mc_http_config hc = {
        .host = s->host,
        .port = cfg->port,
        .max_body_bytes = cfg->max_body_bytes ? cfg->max_body_bytes : DEFAULT_MAX_BODY,
        .body_limit = body_limit,
        .max_connections = cfg->max_connections,
        .handler = dispatch,
        .on_done = on_request_done,
        .user = s,
    };
    if ((rc = mc_http_start(&hc, &s->http, err)) != MC_OK)
        goto fail;
    MC_LOG_INFO("serve", "listening", "host=%s port=%d data=%s max_body=%zu", s->host,
                mc_http_port(s->http), s->data_dir, hc.max_body_bytes);
    *out = s;
    return MC_OK;

fail:
    mc_server_free(s);
    return rc;
}

int mc_server_port(const struct mc_server *s) {
    return mc_http_port(s->http);
}

static void on_token(void *user, const char *tenant, bool first, double seconds) {
    struct mc_server *s = user;
    if (first)
        mc_metrics_ttft(s->metrics, tenant, seconds);
    else
        mc_metrics_inter_token(s->metrics, tenant, seconds);
}

/* Clients name a model by its file's base name ("stories260K"): general.name is often
 * just the architecture ("llama") and would not tell two models apart. */
static void model_id_from_path(const char *path, char *id, size_t id_size) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t blen = strlen(base);
    if (blen > 5 && strcmp(base + blen - 5, ".gguf") == 0)
        blen -= 5;
    snprintf(id, id_size, "%.*s", (int)blen, base);
}

/* The context a model gets: n_ctx_cfg when set, else its training context up to
 * DEFAULT_CTX_CAP. */
static int32_t model_n_ctx(const struct mc_hparams *hp, int32_t n_ctx_cfg) {
    int32_t n_ctx = n_ctx_cfg > 0 ? n_ctx_cfg : hp->n_ctx_train;
    if (n_ctx_cfg <= 0 && n_ctx > DEFAULT_CTX_CAP)
        n_ctx = DEFAULT_CTX_CAP;
    return n_ctx <= 1 ? 2048 : n_ctx;
}

static int64_t file_mtime(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_mtime : 0;
}

/* Loads the --embed-model model, or points the embedding fields at the base model. */
static int load_embed_model(struct mc_server *s, struct mc_err *err) {
    if (!s->embed_model_path) {
        s->emb_model = s->model;
        memcpy(s->emb_model_id, s->model_id, sizeof(s->emb_model_id));
        s->emb_n_ctx = s->n_ctx;
        s->emb_n_embd = s->n_embd;
        s->emb_created = s->model_created;
        return MC_OK;
    }
    int rc = mc_model_load(s->embed_model_path, &s->emb_model, err);
    if (rc != MC_OK) {
        mc_err_prefix(err, "embedding model %s", s->embed_model_path);
        return rc;
    }
    model_id_from_path(s->embed_model_path, s->emb_model_id, sizeof(s->emb_model_id));
    if (strcmp(s->emb_model_id, s->model_id) == 0)
        return mc_err_set(err, MC_EINVAL,
                          "embedding model and served model are both named '%s'; rename one "
                          "file",
                          s->model_id);
    const struct mc_hparams *hp = mc_model_hparams(s->emb_model);
    s->emb_n_ctx = model_n_ctx(hp, 0);
    s->emb_n_embd = hp->n_embd;
    s->emb_created = file_mtime(s->embed_model_path);
    MC_LOG_INFO("serve", "embed_model", "model=%s n_ctx=%d n_embd=%d", s->emb_model_id,
                s->emb_n_ctx, s->emb_n_embd);
    return MC_OK;
}

int mc_server_load(struct mc_server *s, struct mc_err *err) {
    int64_t t0 = mc_now_ns();
    int rc = mc_model_load(s->model_path, &s->model, err);
    if (rc != MC_OK)
        return rc;
    const struct mc_hparams *hp = mc_model_hparams(s->model);
    int32_t n_ctx = model_n_ctx(hp, s->n_ctx_cfg);
    s->n_ctx = n_ctx;
    s->n_embd = hp->n_embd;
    model_id_from_path(s->model_path, s->model_id, sizeof(s->model_id));
    s->model_created = file_mtime(s->model_path);
    if ((rc = load_embed_model(s, err)) != MC_OK)
        return rc;

    struct mc_engine_config ec = {
        .max_seqs = s->max_seqs,
        .max_queue = s->max_queue,
        .kv_budget_bytes = s->kv_budget_bytes,
        .n_ctx = n_ctx,
        .n_threads = s->n_threads,
        .on_token = on_token,
        .on_token_user = s,
    };
    if ((rc = mc_engine_create(s->model, &ec, &s->engine, err)) != MC_OK)
        return rc;
    mc_lora_base_from_model(s->model, &s->lora_base);
    if ((rc = mc_adapter_cache_open(s, err)) != MC_OK)
        return rc;
    if ((rc = mc_kb_serve_init(s, err)) != MC_OK)
        return rc;
    atomic_store(&s->ready, 1);
    MC_LOG_INFO("serve", "ready", "model=%s n_ctx=%d n_embd=%d load_ms=%.0f", s->model_id, n_ctx,
                s->n_embd, (double)(mc_now_ns() - t0) / 1e6);
    return MC_OK;
}

void mc_server_shutdown(struct mc_server *s) {
    if (!s || atomic_exchange(&s->shut, 1))
        return;
    atomic_store(&s->draining, 1);
    MC_LOG_INFO("serve", "shutdown_begin", "drain_timeout_ms=%lld", (long long)s->drain_timeout_ms);
    /* The listener stays open while generations drain, so that load balancers see
     * /readyz turn 503 and new requests get 503 shutting_down, not a refused connection. */
    int n_cancelled = 0;
    if (s->engine)
        n_cancelled = mc_engine_drain(s->engine, s->drain_timeout_ms);
    mc_http_quiesce(s->http);
    /* Every generation has ended; let the connections send what they hold (final
     * chunks, error events) before libmicrohttpd closes them. */
    if (!mc_http_wait_idle(s->http, SHUTDOWN_FLUSH_MS))
        MC_LOG_WARN("serve", "shutdown_flush_timeout", "ms=%d", SHUTDOWN_FLUSH_MS);
    mc_http_stop(s->http);
    s->http = NULL;
    if (s->audit) {
        struct mc_err err = {0};
        if (mc_audit_sync(s->audit, &err) != MC_OK)
            MC_LOG_WARN("serve", "audit_sync_failed", "err=\"%s\"", err.msg);
    }
    MC_LOG_INFO("serve", "shutdown_done", "cancelled=%d", n_cancelled);
}

void mc_server_free(struct mc_server *s) {
    if (!s)
        return;
    if (s->http)
        mc_server_shutdown(s);
    mc_engine_free(s->engine);
    mc_lora_cache_free(s->adapters);
    mc_kb_serve_free(s);
    if (s->embed_kv)
        mc_kv_free(s->embed_kv);
    if (s->embed_ctx)
        mc_ctx_free(s->embed_ctx);
    if (s->emb_model && s->emb_model != s->model)
        mc_model_free(s->emb_model);
    mc_model_free(s->model);
    mc_limiter_free(s->limiter);
    mc_tenants_free(s->tenants);
    mc_audit_close(s->audit);
    mc_store_close(s->store);
    mc_metrics_free(s->metrics);
    if (s->admin_key)
        mc_secret_free(s->admin_key);
    mc_free(s->model_path);
    mc_free(s->embed_model_path);
    mc_free(s->data_dir);
    mc_free(s->host);
    pthread_mutex_destroy(&s->embed_lock);
    pthread_mutex_destroy(&s->conv_lock);
    mc_free(s);
}
