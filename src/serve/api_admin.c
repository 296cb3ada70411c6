/* api_admin.c - the operator's HTTP API under /admin (Bearer admin key, checked in
 * server.c before anything here runs).
 *
 *   POST   /admin/tenants                      {"name", "front", "limits", "weight"} -> 201
 *   GET    /admin/tenants                      list
 *   GET    /admin/tenants/{id}                 one tenant with its current front
 *   PATCH  /admin/tenants/{id}                 any of name, limits (merged), weight, front
 *                                              (a new front version; old ones are kept)
 *   DELETE /admin/tenants/{id}                 crypto-shred, then delete (audited)
 *   POST   /admin/tenants/{id}/keys            -> 201 {"key": secret shown once, "prefix"}
 *   GET    /admin/tenants/{id}/keys            prefixes, times, revoked or not
 *   DELETE /admin/tenants/{id}/keys/{prefix}   revoke
 *   GET    /admin/tenants/{id}/usage?days=N    usage per day
 *   GET    /admin/tenants/{id}/fronts/{version} an earlier front version
 *   POST   /admin/adapters                     publish one adapter to several tenants
 *   GET    /admin/tenants/{id}/adapters[/{name}] a tenant's adapters (api_adapter.c)
 *   DELETE /admin/tenants/{id}/adapters/{name}
 *   POST, DELETE /admin/tenants/{id}/adapters/{name}/pin   pin, unpin
 * Unlike the tenant API, admin bodies are strict: an unknown field is a 400, because a
 * misspelt limit silently ignored would leave a tenant unlimited. Every mutation is
 * written to the audit log by the tenant module's hook (server.c installs it). */
#include "serve/serve_int.h"

#include "base/log.h"
#include "base/mem.h"
#include "store/crypto.h"
#include "tenant/ratelimit.h"
#include "tenant/tenant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- JSON views ------------------------------------------------------------------- */

static json_t *limits_json(const struct mc_limits *l) {
    return json_pack("{s:I,s:I,s:I,s:I}", "rpm", (json_int_t)l->rpm, "tpm", (json_int_t)l->tpm,
                     "tpd", (json_int_t)l->tpd, "concurrency", (json_int_t)l->concurrency);
}

static json_t *tenant_json(const struct mc_tenant_info *t) {
    return json_pack("{s:s,s:s,s:s,s:I,s:o,s:i,s:i}", "id", t->id, "object", "tenant", "name",
                     t->name, "created_at", (json_int_t)(t->created_ms / 1000), "limits",
                     limits_json(&t->limits), "weight", t->weight, "front_version",
                     t->front_version);
}

/* The tenant with its current front as JSON; NULL on failure (err set). */
static json_t *tenant_full_json(struct mc_server *s, const char *id, struct mc_err *err) {
    struct mc_tenant_info t;
    if (mc_tenant_get(s->tenants, id, &t, err) != MC_OK)
        return NULL;
    struct mc_front f;
    char *text = NULL;
    int rc = mc_front_get(s->tenants, id, 0, &f, NULL, err);
    if (rc == MC_OK)
        rc = mc_front_to_json(&f, &text, err);
    mc_front_deinit(&f);
    if (rc != MC_OK)
        return NULL;
    json_t *o = tenant_json(&t);
    json_object_set_new(o, "front", json_loads(text, 0, NULL));
    mc_free(text);
    return o;
}

/* ---- Errors ----------------------------------------------------------------------- */

static enum MHD_Result reply_rc(struct mc_http_req *r, int rc, const struct mc_err *err,
                                const char *param) {
    switch (rc) {
    case MC_ENOTFOUND:
        return mc_http_reply_error(r, 404, "invalid_request_error", "not_found", NULL, "%s",
                                   err->msg);
    case MC_EEXIST:
        return mc_http_reply_error(r, 409, "invalid_request_error", "conflict", param, "%s",
                                   err->msg);
    case MC_EINVAL:
        return mc_http_reply_error(r, 400, "invalid_request_error", "invalid_value", param, "%s",
                                   err->msg);
    default:
        MC_LOG_ERROR("admin", "request_failed", "id=%s rc=%d err=\"%s\"", r->id, rc, err->msg);
        return mc_http_reply_error(r, 500, "server_error", NULL, NULL,
                                   "internal error (request %s)", r->id);
    }
}

static enum MHD_Result bad(struct mc_http_req *r, const char *param, const char *fmt,
                           const char *arg) {
    return mc_http_reply_error(r, 400, "invalid_request_error", "invalid_value", param, fmt, arg);
}

/* A 400 unknown_field whose param is the field's JSON path (limits.rpn), as the
 * knowledge-base routes answer; known lists the names allowed there. */
static enum MHD_Result bad_field(struct mc_http_req *r, const char *where, const char *field,
                                 const char *known) {
    char param[96];
    snprintf(param, sizeof(param), "%s%s%.40s", where, where[0] ? "." : "", field);
    return mc_http_reply_error(r, 400, "invalid_request_error", "unknown_field", param,
                               "unknown field '%s' (known: %s)", param, known);
}

/* ---- Body fields ------------------------------------------------------------------ */

/* Fails on the first key of o that is not in allowed (NULL-terminated). */
static const char *unknown_field(json_t *o, const char *const *allowed) {
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        bool ok = false;
        for (int i = 0; allowed[i]; i++)
            ok = ok || strcmp(k, allowed[i]) == 0;
        if (!ok)
            return k;
    }
    return NULL;
}

/* Merges a "limits" object into *l. false after replying 400. */
static bool parse_limits(struct mc_http_req *r, json_t *v, struct mc_limits *l,
                         enum MHD_Result *ret) {
    static const char *const names[] = {"rpm", "tpm", "tpd", "concurrency", NULL};
    if (!json_is_object(v)) {
        *ret = bad(r, "limits", "'limits' must be an object%s", "");
        return false;
    }
    const char *u = unknown_field(v, names);
    if (u) {
        *ret = bad_field(r, "limits", u, "rpm, tpm, tpd, concurrency");
        return false;
    }
    int64_t *dst[] = {&l->rpm, &l->tpm, &l->tpd, &l->concurrency};
    for (int i = 0; names[i]; i++) {
        json_t *x = json_object_get(v, names[i]);
        if (!x)
            continue;
        if (!json_is_integer(x) || json_integer_value(x) < 0) {
            *ret = bad(r, "limits", "'limits.%s' must be an integer >= 0 (0: unlimited)", names[i]);
            return false;
        }
        *dst[i] = json_integer_value(x);
    }
    struct mc_err err = {0};
    if (mc_limits_check(l, &err) != MC_OK) {
        *ret = bad(r, "limits", "%s", err.msg);
        return false;
    }
    return true;
}

/* Parses a "front" object into f (init'ed here; deinit it). false after replying 400. */
static bool parse_front(struct mc_http_req *r, json_t *v, struct mc_front *f,
                        enum MHD_Result *ret) {
    mc_front_init(f);
    if (!json_is_object(v)) {
        *ret = bad(r, "front", "'front' must be an object%s", "");
        return false;
    }
    char *text = json_dumps(v, JSON_COMPACT);
    struct mc_err err = {0};
    int rc = text ? mc_front_from_json(text, strlen(text), f, &err) : MC_ENOMEM;
    free(text);
    if (rc == MC_OK)
        rc = mc_front_check(f, &err);
    if (rc != MC_OK) {
        *ret = bad(r, "front", "%s", err.msg);
        return false;
    }
    return true;
}

static bool parse_weight(struct mc_http_req *r, json_t *v, int *w, enum MHD_Result *ret) {
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 1000) {
        *ret = bad(r, "weight", "'weight' must be an integer from 1 to 1000%s", "");
        return false;
    }
    *w = (int)json_integer_value(v);
    return true;
}

/* ---- Tenants ---------------------------------------------------------------------- */

static enum MHD_Result tenant_create(struct mc_server *s, struct mc_http_req *r, json_t *o) {
    static const char *const allowed[] = {"name", "front", "limits", "weight", NULL};
    enum MHD_Result ret;
    const char *u = unknown_field(o, allowed);
    if (u)
        return bad_field(r, "", u, "name, front, limits, weight");
    json_t *name = json_object_get(o, "name");
    if (!json_is_string(name))
        return bad(r, "name", "'name' is required and must be a string%s", "");

    struct mc_limits lim = {0};
    json_t *lv = json_object_get(o, "limits");
    if (lv && !parse_limits(r, lv, &lim, &ret))
        return ret;
    int weight = 0;
    json_t *wv = json_object_get(o, "weight");
    if (wv && !parse_weight(r, wv, &weight, &ret))
        return ret;
    struct mc_front f;
    json_t *fv = json_object_get(o, "front");
    if (fv && !parse_front(r, fv, &f, &ret)) {
        mc_front_deinit(&f);
        return ret;
    }

    char id[MC_TENANT_ID_LEN + 1];
    struct mc_err err = {0};
    int rc = mc_tenant_create(s->tenants, json_string_value(name), fv ? &f : NULL, &lim, id, &err);
    if (fv)
        mc_front_deinit(&f);
    if (rc == MC_OK && weight > 0)
        rc = mc_tenant_update(s->tenants, id, NULL, NULL, weight, &err);
    if (rc != MC_OK)
        return reply_rc(r, rc, &err, "name");
    MC_LOG_INFO("admin", "tenant_created", "tenant=%s id=%s", id, r->id);
    json_t *out = tenant_full_json(s, id, &err);
    return out ? mc_http_reply_json(r, 201, out) : reply_rc(r, MC_EINTERNAL, &err, NULL);
}

static enum MHD_Result tenant_list(struct mc_server *s, struct mc_http_req *r) {
    struct mc_tenant_info *rows = NULL;
    size_t n = 0;
    struct mc_err err = {0};
    int rc = mc_tenant_list(s->tenants, &rows, &n, &err);
    if (rc != MC_OK)
        return reply_rc(r, rc, &err, NULL);
    json_t *data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(data, tenant_json(&rows[i]));
    mc_free(rows);
    return mc_http_reply_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

static enum MHD_Result tenant_patch(struct mc_server *s, struct mc_http_req *r, const char *id,
                                    json_t *o) {
    static const char *const allowed[] = {"name", "front", "limits", "weight", NULL};
    enum MHD_Result ret;
    const char *u = unknown_field(o, allowed);
    if (u)
        return bad_field(r, "", u, "name, front, limits, weight");
    struct mc_tenant_info t;
    struct mc_err err = {0};
    int rc = mc_tenant_get(s->tenants, id, &t, &err);
    if (rc != MC_OK)
        return reply_rc(r, rc, &err, NULL);

    json_t *name = json_object_get(o, "name");
    if (name && !json_is_string(name))
        return bad(r, "name", "'name' must be a string%s", "");
    struct mc_limits lim = t.limits;
    json_t *lv = json_object_get(o, "limits");
    if (lv && !parse_limits(r, lv, &lim, &ret))
        return ret;
    int weight = 0;
    json_t *wv = json_object_get(o, "weight");
    if (wv && !parse_weight(r, wv, &weight, &ret))
        return ret;
    struct mc_front f;
    json_t *fv = json_object_get(o, "front");
    if (fv && !parse_front(r, fv, &f, &ret)) {
        mc_front_deinit(&f);
        return ret;
    }

    rc = MC_OK;
    if (name || lv || weight)
        rc = mc_tenant_update(s->tenants, id, name ? json_string_value(name) : NULL,
                              lv ? &lim : NULL, weight, &err);
    if (rc == MC_OK && fv)
        rc = mc_front_set(s->tenants, id, &f, NULL, &err);
    if (fv)
        mc_front_deinit(&f);
    if (rc != MC_OK)
        return reply_rc(r, rc, &err, fv ? "front" : "name");
    json_t *out = tenant_full_json(s, id, &err);
    return out ? mc_http_reply_json(r, 200, out) : reply_rc(r, MC_EINTERNAL, &err, NULL);
}

static enum MHD_Result tenant_delete(struct mc_server *s, struct mc_http_req *r, const char *id) {
    struct mc_err err = {0};
    mc_adapter_forget_tenant(s, id);
    int rc = mc_tenant_delete(s->tenants, id, &err);
    if (rc != MC_OK)
        return reply_rc(r, rc, &err, NULL);
    mc_limit_forget(s->limiter, id);
    mc_kb_serve_forget(s, id);
    MC_LOG_INFO("admin", "tenant_deleted", "tenant=%s id=%s", id, r->id);
    return mc_http_reply_json(
        r, 200, json_pack("{s:s,s:s,s:b}", "id", id, "object", "tenant.deleted", "deleted", 1));
}

/* GET /admin/tenants/{id}/fronts/{version}: an earlier (or the current) front. */
static enum MHD_Result front_version(struct mc_server *s, struct mc_http_req *r, const char *id,
                                     const char *arg) {
    char *end = NULL;
    long v = strtol(arg, &end, 10);
    if (*end || v < 1 || v > 1000000)
        return mc_http_reply_error(r, 404, "invalid_request_error", "not_found", NULL,
                                   "no front version '%.20s'", arg);
    struct mc_front f;
    struct mc_err err = {0};
    char *text = NULL;
    int rc = mc_front_get(s->tenants, id, (int)v, &f, NULL, &err);
    if (rc == MC_OK)
        rc = mc_front_to_json(&f, &text, &err);
    mc_front_deinit(&f);
    if (rc != MC_OK)
        return reply_rc(r, rc, &err, NULL);
    json_t *o = json_pack("{s:s,s:s,s:i,s:o}", "object", "front", "tenant", id, "version", (int)v,
                          "front", json_loads(text, 0, NULL));
    mc_free(text);
    return mc_http_reply_json(r, 200, o);
}

/* ---- Keys ------------------------------------------------------------------------- */

static json_t *key_json(const struct mc_key_info *k) {
    json_t *o = json_pack("{s:s,s:s,s:s,s:I,s:b}", "object", "api_key", "prefix", k->prefix,
                          "tenant", k->tenant_id, "created_at", (json_int_t)(k->created_ms / 1000),
                          "active", k->revoked_ms == 0);
    json_object_set_new(o, "revoked_at",
                        k->revoked_ms ? json_integer(k->revoked_ms / 1000) : json_null());
    return o;
}

static enum MHD_Result keys_route(struct mc_server *s, struct mc_http_req *r, const char *id,
                                  const char *prefix) {
    struct mc_err err = {0};
    int rc;
    bool get = strcmp(r->method, "GET") == 0;
    bool post = strcmp(r->method, "POST") == 0;
    bool del = strcmp(r->method, "DELETE") == 0;
    if (prefix) {
        if (!del)
            return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                                       "use DELETE to revoke a key");
        rc = mc_key_revoke(s->tenants, id, prefix, &err);
        if (rc != MC_OK)
            return reply_rc(r, rc, &err, NULL);
        MC_LOG_INFO("admin", "key_revoked", "tenant=%s prefix=%s id=%s", id, prefix, r->id);
        return mc_http_reply_json(r, 200,
                                  json_pack("{s:s,s:s,s:b}", "object", "api_key.revoked", "prefix",
                                            prefix, "revoked", 1));
    }
    if (post) {
        char secret[MC_KEY_SECRET_LEN + 1];
        struct mc_key_info ki;
        rc = mc_key_create(s->tenants, id, secret, &ki, &err);
        if (rc != MC_OK)
            return reply_rc(r, rc, &err, NULL);
        MC_LOG_INFO("admin", "key_created", "tenant=%s prefix=%s id=%s", id, ki.prefix, r->id);
        json_t *o = key_json(&ki);
        json_object_set_new(o, "key", json_string(secret));
        mc_crypto_wipe(secret, sizeof(secret));
        return mc_http_reply_json(r, 201, o);
    }
    if (get) {
        struct mc_tenant_info t;
        if ((rc = mc_tenant_get(s->tenants, id, &t, &err)) != MC_OK)
            return reply_rc(r, rc, &err, NULL);
        struct mc_key_info *keys = NULL;
        size_t n = 0;
        if ((rc = mc_key_list(s->tenants, id, &keys, &n, &err)) != MC_OK)
            return reply_rc(r, rc, &err, NULL);
        json_t *data = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(data, key_json(&keys[i]));
        mc_free(keys);
        return mc_http_reply_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
    }
    return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                               "use GET or POST on keys");
}

/* ---- Dispatch --------------------------------------------------------------------- */

/* The body as a JSON object; false after replying 400. */
static bool body_object(struct mc_http_req *r, json_t **o, enum MHD_Result *ret) {
    struct mc_api_error e = {0};
    *o = mc_api_parse_object(r->body, r->body_len, &e);
    if (!*o) {
        *ret = mc_api_reply_error(r, &e);
        return false;
    }
    return true;
}

enum MHD_Result mc_api_admin(struct mc_server *s, struct mc_http_req *r, const char *path) {
    enum MHD_Result ret;
    json_t *o = NULL;
    bool get = strcmp(r->method, "GET") == 0;
    bool post = strcmp(r->method, "POST") == 0;
    bool patch = strcmp(r->method, "PATCH") == 0;
    bool del = strcmp(r->method, "DELETE") == 0;

    if (strcmp(path, "/tenants") == 0) {
        r->route = "/admin/tenants";
        if (get)
            return tenant_list(s, r);
        if (!post)
            return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                                       "use GET or POST on /admin/tenants");
        if (!body_object(r, &o, &ret))
            return ret;
        ret = tenant_create(s, r, o);
        json_decref(o);
        return ret;
    }
    if (strcmp(path, "/adapters") == 0)
        return mc_api_admin_adapters(s, r, NULL, NULL);
    if (strncmp(path, "/tenants/", 9) != 0) {
        r->route = "/admin/other";
        return mc_http_reply_error(r, 404, "invalid_request_error", "unknown_url", NULL,
                                   "no admin route %s", path);
    }

    /* /tenants/{id}[/keys[/{prefix}] | /usage] */
    char id[80], sub[80] = "", arg[80] = "";
    const char *p = path + 9;
    const char *slash = strchr(p, '/');
    size_t len = slash ? (size_t)(slash - p) : strlen(p);
    if (len == 0 || len >= sizeof(id))
        return mc_http_reply_error(r, 404, "invalid_request_error", "not_found", NULL,
                                   "no such tenant");
    memcpy(id, p, len);
    id[len] = '\0';
    if (slash) {
        const char *s2 = strchr(slash + 1, '/');
        size_t l2 = s2 ? (size_t)(s2 - slash - 1) : strlen(slash + 1);
        if (l2 >= sizeof(sub) || (s2 && strlen(s2 + 1) >= sizeof(arg)))
            return mc_http_reply_error(r, 404, "invalid_request_error", "unknown_url", NULL,
                                       "no admin route %s", path);
        memcpy(sub, slash + 1, l2);
        sub[l2] = '\0';
        if (s2)
            snprintf(arg, sizeof(arg), "%s", s2 + 1);
    }

    if (!slash) {
        r->route = "/admin/tenants/{id}";
        struct mc_err err = {0};
        if (get) {
            json_t *out = tenant_full_json(s, id, &err);
            return out ? mc_http_reply_json(r, 200, out)
                       : reply_rc(r, err.code ? err.code : MC_EINTERNAL, &err, NULL);
        }
        if (del)
            return tenant_delete(s, r, id);
        if (!patch)
            return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                                       "use GET, PATCH or DELETE on a tenant");
        if (!body_object(r, &o, &ret))
            return ret;
        ret = tenant_patch(s, r, id, o);
        json_decref(o);
        return ret;
    }
    if (strcmp(sub, "adapters") == 0)
        return mc_api_admin_adapters(s, r, id, arg);
    if (strcmp(sub, "keys") == 0) {
        r->route = arg[0] ? "/admin/tenants/{id}/keys/{prefix}" : "/admin/tenants/{id}/keys";
        return keys_route(s, r, id, arg[0] ? arg : NULL);
    }
    if (strcmp(sub, "fronts") == 0 && arg[0]) {
        r->route = "/admin/tenants/{id}/fronts/{version}";
        if (!get)
            return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                                       "use GET on a front version");
        return front_version(s, r, id, arg);
    }
    if (strcmp(sub, "usage") == 0 && !arg[0]) {
        r->route = "/admin/tenants/{id}/usage";
        if (!get)
            return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                                       "use GET on usage");
        struct mc_tenant_info t;
        struct mc_err err = {0};
        int rc = mc_tenant_get(s->tenants, id, &t, &err);
        if (rc != MC_OK)
            return reply_rc(r, rc, &err, NULL);
        int days;
        if (!mc_api_days_param(r, &days, &ret))
            return ret;
        json_t *u = mc_api_usage_json(s, id, days, &err);
        return u ? mc_http_reply_json(r, 200, u) : reply_rc(r, MC_EINTERNAL, &err, NULL);
    }
    r->route = "/admin/other";
    return mc_http_reply_error(r, 404, "invalid_request_error", "unknown_url", NULL,
                               "no admin route %s", path);
}
