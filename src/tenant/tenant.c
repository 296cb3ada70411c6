/* tenant.c - tenants, API keys, versioned fronts and usage, on top of the store.
 *
 * A tenant's operator data (limits, weight, current front version) is the JSON meta of
 * its catalog row; its fronts are sealed store objects of kind "front" with the version
 * number as object id, so earlier versions stay readable. Multi-row changes (create,
 * front update, tenant update) run in one store transaction, which also serialises them
 * across processes.
 *
 * Nothing is cached: each call reads what it needs from the store. That keeps revocation
 * and limit changes immediate in every process and an idle tenant free in memory; a key
 * lookup is two indexed reads and one BLAKE2b.
 *
 * Prompt templates (mc_front_render) are handled here too: they are part of a front. */
#include "tenant/tenant.h"

#include "base/mem.h"
#include "store/crypto.h"

#include <jansson.h>
#include <sodium.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

#define FRONT_KIND        "front"
#define KEY_PREFIX        "mcai_"
#define KEY_RANDOM_BYTES  32
#define KEY_SECRET_IN_MAX 256
#define LIMIT_MAX         1000000000000LL /* 10^12: keeps the limiter's integer buckets in range */
#define WEIGHT_MAX        1000

struct mc_tenants {
    struct mc_store *store;
    mc_tenant_audit_fn audit_fn;
    void *audit_user;
    int64_t (*now_ms)(void);
};

/* Copies a NUL-terminated string into dst of cap bytes, cutting it if needed. */
static void copy_str(char *dst, size_t cap, const char *src) {
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static int64_t real_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------------------------------
 * The handle */

int mc_tenants_create(struct mc_store *store, struct mc_tenants **out, struct mc_err *err) {
    *out = NULL;
    struct mc_tenants *tn = mc_calloc(1, sizeof(*tn));
    if (!tn)
        return mc_err_set(err, MC_ENOMEM, "cannot allocate the tenants handle");
    tn->store = store;
    tn->now_ms = real_now_ms;
    *out = tn;
    return MC_OK;
}

void mc_tenants_free(struct mc_tenants *tn) {
    mc_free(tn);
}

void mc_tenants_set_audit(struct mc_tenants *tn, mc_tenant_audit_fn fn, void *user) {
    tn->audit_fn = fn;
    tn->audit_user = user;
}

struct mc_store *mc_tenants_store(const struct mc_tenants *tn) {
    return tn->store;
}

void mc_tenants_set_clock(struct mc_tenants *tn, int64_t (*now_ms)(void)) {
    tn->now_ms = now_ms ? now_ms : real_now_ms;
}

/* Sends an audit event; details (a jansson object) is consumed. */
static int audit(struct mc_tenants *tn, const char *action, const char *tenant_id, json_t *details,
                 struct mc_err *err) {
    int rc = MC_OK;
    if (tn->audit_fn) {
        char *text = details ? json_dumps(details, JSON_COMPACT) : NULL;
        rc = tn->audit_fn(tn->audit_user, action, tenant_id, text ? text : "{}", err);
        free(text); /* jansson allocates with malloc */
    }
    json_decref(details);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Tenant metadata */

int mc_limits_check(const struct mc_limits *l, struct mc_err *err) {
    const struct {
        const char *name;
        int64_t v;
    } f[] = {{"rpm", l->rpm}, {"tpm", l->tpm}, {"tpd", l->tpd}, {"concurrency", l->concurrency}};
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        if (f[i].v < 0 || f[i].v >= LIMIT_MAX)
            return mc_err_set(err, MC_EINVAL, "limit %s = %lld is outside 0..%lld (0 = unlimited)",
                              f[i].name, (long long)f[i].v, LIMIT_MAX - 1);
    }
    return MC_OK;
}

static int64_t meta_int(json_t *obj, const char *key, int64_t dflt) {
    json_t *v = json_object_get(obj, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

/* Fills info from a catalog row (meta JSON written by meta_build). */
static int info_from_row(const struct mc_store_tenant *row, struct mc_tenant_info *info,
                         struct mc_err *err) {
    memset(info, 0, sizeof(*info));
    copy_str(info->id, sizeof(info->id), row->id);
    copy_str(info->name, sizeof(info->name), row->name);
    info->created_ms = row->created_ms;
    json_error_t je;
    json_t *m = json_loads(row->meta ? row->meta : "{}", 0, &je);
    if (!json_is_object(m)) {
        json_decref(m);
        return mc_err_set(err, MC_EFORMAT, "tenant %s: catalog metadata is not a JSON object",
                          row->id);
    }
    info->limits.rpm = meta_int(m, "rpm", 0);
    info->limits.tpm = meta_int(m, "tpm", 0);
    info->limits.tpd = meta_int(m, "tpd", 0);
    info->limits.concurrency = meta_int(m, "concurrency", 0);
    info->weight = (int)meta_int(m, "weight", 1);
    info->front_version = (int)meta_int(m, "front_version", 1);
    json_decref(m);
    return MC_OK;
}

static json_t *limits_json(const struct mc_limits *l) {
    return json_pack("{s:I,s:I,s:I,s:I}", "rpm", (json_int_t)l->rpm, "tpm", (json_int_t)l->tpm,
                     "tpd", (json_int_t)l->tpd, "concurrency", (json_int_t)l->concurrency);
}

/* The meta text of info, a new string (free). */
static char *meta_build(const struct mc_tenant_info *info) {
    json_t *m = limits_json(&info->limits);
    if (!m)
        return NULL;
    json_object_set_new(m, "weight", json_integer(info->weight));
    json_object_set_new(m, "front_version", json_integer(info->front_version));
    char *text = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    return text;
}

/* Names: 1..64 bytes of letters, digits, '-', '_', '.'. */
static int check_name(const char *name, struct mc_err *err) {
    if (!name || !*name)
        return mc_err_set(err, MC_EINVAL, "tenant name is empty");
    size_t n = strlen(name);
    if (n > MC_TENANT_NAME_MAX)
        return mc_err_set(err, MC_EINVAL, "tenant name is %zu bytes, at most %d", n,
                          MC_TENANT_NAME_MAX);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.')
            continue;
        /* Show the character itself when it is printable ASCII, else only its code. */
        char shown[8] = "a byte";
        if (c == ' ')
            snprintf(shown, sizeof(shown), "a space");
        else if (c > 0x20 && c < 0x7f)
            snprintf(shown, sizeof(shown), "'%c'", c);
        return mc_err_set(err, MC_EINVAL,
                          "tenant name has %s (0x%02x) at byte %zu; use letters, digits, '-', '_' "
                          "and '.'",
                          shown, c, i);
    }
    return MC_OK;
}

/* ---------------------------------------------------------------------------------------
 * Tenants */

static int front_put(struct mc_tenants *tn, const char *tenant_id, int version,
                     const struct mc_front *f, struct mc_err *err) {
    char *json = NULL;
    int rc = mc_front_to_json(f, &json, err);
    if (rc != MC_OK)
        return rc;
    char obj_id[16];
    snprintf(obj_id, sizeof(obj_id), "%d", version);
    rc = mc_store_obj_put(tn->store, tenant_id, FRONT_KIND, obj_id, json, strlen(json), err);
    mc_free(json);
    return rc;
}

int mc_tenant_create(struct mc_tenants *tn, const char *name, const struct mc_front *front,
                     const struct mc_limits *limits, char id_out[MC_TENANT_ID_LEN + 1],
                     struct mc_err *err) {
    static const struct mc_limits unlimited = {0, 0, 0, 0};
    struct mc_front empty;
    mc_front_init(&empty);
    id_out[0] = '\0';
    if (!front)
        front = &empty;
    if (!limits)
        limits = &unlimited;
    int rc = check_name(name, err);
    if (rc == MC_OK)
        rc = mc_limits_check(limits, err);
    if (rc == MC_OK)
        rc = mc_front_check(front, err);
    if (rc != MC_OK)
        return rc;

    struct mc_tenant_info info;
    memset(&info, 0, sizeof(info));
    uint8_t rnd[8];
    mc_crypto_random(rnd, sizeof(rnd));
    memcpy(info.id, "t_", 2);
    mc_crypto_hex(rnd, sizeof(rnd), info.id + 2);
    copy_str(info.name, sizeof(info.name), name);
    info.created_ms = tn->now_ms();
    info.limits = *limits;
    info.weight = 1;
    info.front_version = 1;
    char *meta = meta_build(&info);
    if (!meta)
        return mc_err_set(err, MC_ENOMEM, "cannot build tenant metadata");

    rc = mc_store_begin(tn->store, err);
    if (rc != MC_OK)
        goto out_free;
    rc = mc_store_tenant_insert(tn->store, info.id, name, info.created_ms, meta, err);
    if (rc == MC_EEXIST)
        rc = mc_err_set(err, MC_EEXIST, "a tenant named '%s' already exists", name);
    if (rc == MC_OK)
        rc = front_put(tn, info.id, 1, front, err);
    if (rc == MC_OK)
        rc = mc_store_commit(tn->store, err);
    else
        mc_store_rollback(tn->store);
    if (rc != MC_OK)
        goto out_free;

    memcpy(id_out, info.id, MC_TENANT_ID_LEN + 1);
    json_t *d = json_pack("{s:s,s:i}", "name", name, "front_version", 1);
    json_object_set_new(d, "limits", limits_json(limits));
    rc = audit(tn, "tenant.create", info.id, d, err);
out_free:
    free(meta);
    return rc;
}

int mc_tenant_get(struct mc_tenants *tn, const char *id, struct mc_tenant_info *out,
                  struct mc_err *err) {
    struct mc_store_tenant row;
    memset(out, 0, sizeof(*out));
    int rc = mc_store_tenant_get(tn->store, id, &row, err);
    if (rc != MC_OK)
        return rc;
    rc = info_from_row(&row, out, err);
    mc_store_tenant_clear(&row);
    return rc;
}

int mc_tenant_resolve(struct mc_tenants *tn, const char *id_or_name, struct mc_tenant_info *out,
                      struct mc_err *err) {
    int rc = mc_tenant_get(tn, id_or_name, out, err);
    if (rc != MC_ENOTFOUND && rc != MC_EINVAL)
        return rc;
    struct mc_store_tenant row;
    rc = mc_store_tenant_get_by_name(tn->store, id_or_name, &row, NULL);
    if (rc != MC_OK)
        return mc_err_set(err, MC_ENOTFOUND, "no tenant has the id or name '%s'", id_or_name);
    rc = info_from_row(&row, out, err);
    mc_store_tenant_clear(&row);
    return rc;
}

int mc_tenant_list(struct mc_tenants *tn, struct mc_tenant_info **out, size_t *n,
                   struct mc_err *err) {
    struct mc_store_tenant *rows;
    size_t n_rows;
    *out = NULL;
    *n = 0;
    int rc = mc_store_tenant_list(tn->store, &rows, &n_rows, err);
    if (rc != MC_OK)
        return rc;
    struct mc_tenant_info *infos = mc_calloc(n_rows ? n_rows : 1, sizeof(*infos));
    if (!infos)
        rc = mc_err_set(err, MC_ENOMEM, "cannot allocate a list of %zu tenants", n_rows);
    for (size_t i = 0; rc == MC_OK && i < n_rows; i++)
        rc = info_from_row(&rows[i], &infos[i], err);
    mc_store_tenant_list_free(rows, n_rows);
    if (rc != MC_OK) {
        mc_free(infos);
        return rc;
    }
    *out = infos;
    *n = n_rows;
    return MC_OK;
}

/* Reads a tenant inside the caller's transaction. */
static int info_in_txn(struct mc_tenants *tn, const char *id, struct mc_tenant_info *info,
                       struct mc_err *err) {
    return mc_tenant_get(tn, id, info, err);
}

int mc_tenant_update(struct mc_tenants *tn, const char *id, const char *name,
                     const struct mc_limits *limits, int weight, struct mc_err *err) {
    int rc = MC_OK;
    if (name)
        rc = check_name(name, err);
    if (rc == MC_OK && limits)
        rc = mc_limits_check(limits, err);
    if (rc == MC_OK && (weight < 0 || weight > WEIGHT_MAX))
        rc = mc_err_set(err, MC_EINVAL, "weight %d is outside 1..%d", weight, WEIGHT_MAX);
    if (rc != MC_OK)
        return rc;

    struct mc_tenant_info info;
    char *meta = NULL;
    rc = mc_store_begin(tn->store, err);
    if (rc != MC_OK)
        return rc;
    rc = info_in_txn(tn, id, &info, err);
    if (rc == MC_OK) {
        if (limits)
            info.limits = *limits;
        if (weight > 0)
            info.weight = weight;
        meta = meta_build(&info);
        if (!meta)
            rc = mc_err_set(err, MC_ENOMEM, "cannot build tenant metadata");
    }
    if (rc == MC_OK)
        rc = mc_store_tenant_update(tn->store, id, name, meta, err);
    if (rc == MC_OK)
        rc = mc_store_commit(tn->store, err);
    else
        mc_store_rollback(tn->store);
    free(meta);
    if (rc != MC_OK)
        return rc;

    json_t *d = json_object();
    if (name)
        json_object_set_new(d, "name", json_string(name));
    if (limits)
        json_object_set_new(d, "limits", limits_json(limits));
    if (weight > 0)
        json_object_set_new(d, "weight", json_integer(weight));
    return audit(tn, "tenant.update", id, d, err);
}

int mc_tenant_delete(struct mc_tenants *tn, const char *id, struct mc_err *err) {
    struct mc_tenant_info info;
    int rc = mc_tenant_get(tn, id, &info, err);
    if (rc != MC_OK)
        return rc;
    rc = mc_store_tenant_delete(tn->store, id, err);
    if (rc != MC_OK)
        return rc;
    return audit(tn, "tenant.delete", id,
                 json_pack("{s:s,s:b}", "name", info.name, "data_key_destroyed", 1), err);
}

/* ---------------------------------------------------------------------------------------
 * API keys */

static void key_info_from_row(const struct mc_store_key *row, struct mc_key_info *info) {
    memset(info, 0, sizeof(*info));
    copy_str(info->prefix, sizeof(info->prefix), row->prefix);
    copy_str(info->tenant_id, sizeof(info->tenant_id), row->tenant_id);
    info->created_ms = row->created_ms;
    info->revoked_ms = row->revoked_ms;
}

int mc_key_create(struct mc_tenants *tn, const char *tenant_id,
                  char secret_out[MC_KEY_SECRET_LEN + 1], struct mc_key_info *info_out,
                  struct mc_err *err) {
    secret_out[0] = '\0';
    struct mc_tenant_info t;
    int rc = mc_tenant_get(tn, tenant_id, &t, err);
    if (rc != MC_OK)
        return rc;

    struct mc_store_key row;
    uint8_t rnd[KEY_RANDOM_BYTES];
    /* A prefix holds 48 random bits; a clash is retried with a fresh key. */
    for (int attempt = 0; attempt < 4; attempt++) {
        mc_crypto_random(rnd, sizeof(rnd));
        memcpy(secret_out, KEY_PREFIX, strlen(KEY_PREFIX));
        sodium_bin2base64(secret_out + strlen(KEY_PREFIX),
                          MC_KEY_SECRET_LEN + 1 - strlen(KEY_PREFIX), rnd, sizeof(rnd),
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        memset(&row, 0, sizeof(row));
        memcpy(row.prefix, secret_out, MC_KEY_PREFIX_LEN);
        copy_str(row.tenant_id, sizeof(row.tenant_id), tenant_id);
        mc_store_hash_secret(tn->store, secret_out, row.hash);
        row.created_ms = tn->now_ms();
        rc = mc_store_key_insert(tn->store, &row, err);
        if (rc != MC_EEXIST)
            break;
    }
    mc_crypto_wipe(rnd, sizeof(rnd));
    if (rc != MC_OK) {
        mc_crypto_wipe(secret_out, MC_KEY_SECRET_LEN + 1);
        return rc;
    }
    if (info_out)
        key_info_from_row(&row, info_out);
    return audit(tn, "key.create", tenant_id, json_pack("{s:s}", "prefix", row.prefix), err);
}

/* A well-formed secret: "mcai_" + 43 base64url characters. */
static int secret_is_well_formed(const char *s) {
    if (strnlen(s, KEY_SECRET_IN_MAX + 1) != MC_KEY_SECRET_LEN)
        return 0;
    if (strncmp(s, KEY_PREFIX, strlen(KEY_PREFIX)) != 0)
        return 0;
    for (size_t i = strlen(KEY_PREFIX); i < MC_KEY_SECRET_LEN; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

int mc_key_lookup(struct mc_tenants *tn, const char *secret, struct mc_tenant_info *tenant_out,
                  struct mc_key_info *key_out, struct mc_err *err) {
    static const char refused[] = "invalid API key";
    if (!secret || !secret_is_well_formed(secret))
        return mc_err_set(err, MC_EPERM, refused);

    char prefix[MC_KEY_PREFIX_LEN + 1];
    memcpy(prefix, secret, MC_KEY_PREFIX_LEN);
    prefix[MC_KEY_PREFIX_LEN] = '\0';
    /* One read for the key row and its tenant's row. */
    struct mc_store_key row;
    struct mc_store_tenant trow;
    int rc = mc_store_key_lookup(tn->store, prefix, &row, &trow, err);
    if (rc != MC_OK && rc != MC_ENOTFOUND)
        return rc; /* the store failed: not the caller's fault, so not MC_EPERM */

    /* Hash and compare even for an unknown prefix, so both refusals cost the same. */
    uint8_t hash[MC_STORE_HASH_BYTES];
    mc_store_hash_secret(tn->store, secret, hash);
    int match = mc_crypto_equal(hash, row.hash, MC_STORE_HASH_BYTES);
    struct mc_tenant_info t;
    if (rc == MC_OK && match && row.revoked_ms == 0)
        rc = info_from_row(&trow, &t, err);
    else
        rc = mc_err_set(err, MC_EPERM, refused);
    mc_store_tenant_clear(&trow);
    if (rc != MC_OK)
        return rc;
    if (tenant_out)
        *tenant_out = t;
    if (key_out)
        key_info_from_row(&row, key_out);
    return MC_OK;
}

int mc_key_list(struct mc_tenants *tn, const char *tenant_id, struct mc_key_info **out, size_t *n,
                struct mc_err *err) {
    struct mc_store_key *rows;
    size_t n_rows;
    *out = NULL;
    *n = 0;
    int rc = mc_store_key_list(tn->store, tenant_id, &rows, &n_rows, err);
    if (rc != MC_OK)
        return rc;
    struct mc_key_info *infos = mc_calloc(n_rows ? n_rows : 1, sizeof(*infos));
    if (!infos) {
        mc_free(rows);
        return mc_err_set(err, MC_ENOMEM, "cannot allocate a list of %zu keys", n_rows);
    }
    for (size_t i = 0; i < n_rows; i++)
        key_info_from_row(&rows[i], &infos[i]);
    mc_free(rows);
    *out = infos;
    *n = n_rows;
    return MC_OK;
}

int mc_key_revoke(struct mc_tenants *tn, const char *tenant_id, const char *prefix,
                  struct mc_err *err) {
    int rc = mc_store_key_revoke(tn->store, tenant_id, prefix, tn->now_ms(), err);
    if (rc != MC_OK)
        return rc;
    return audit(tn, "key.revoke", tenant_id, json_pack("{s:s}", "prefix", prefix), err);
}

/* ---------------------------------------------------------------------------------------
 * Fronts: storage */

int mc_front_set(struct mc_tenants *tn, const char *tenant_id, const struct mc_front *f,
                 int *version_out, struct mc_err *err) {
    int rc = mc_front_check(f, err);
    if (rc != MC_OK)
        return rc;
    struct mc_tenant_info info;
    char *meta = NULL;
    rc = mc_store_begin(tn->store, err);
    if (rc != MC_OK)
        return rc;
    rc = info_in_txn(tn, tenant_id, &info, err);
    if (rc == MC_OK) {
        info.front_version++;
        rc = front_put(tn, tenant_id, info.front_version, f, err);
    }
    if (rc == MC_OK) {
        meta = meta_build(&info);
        rc = meta ? mc_store_tenant_update(tn->store, tenant_id, NULL, meta, err)
                  : mc_err_set(err, MC_ENOMEM, "cannot build tenant metadata");
    }
    if (rc == MC_OK)
        rc = mc_store_commit(tn->store, err);
    else
        mc_store_rollback(tn->store);
    free(meta);
    if (rc != MC_OK)
        return rc;
    if (version_out)
        *version_out = info.front_version;
    return audit(tn, "front.update", tenant_id, json_pack("{s:i}", "version", info.front_version),
                 err);
}

int mc_front_get(struct mc_tenants *tn, const char *tenant_id, int version, struct mc_front *out,
                 int *version_out, struct mc_err *err) {
    mc_front_init(out);
    if (version < 0)
        return mc_err_set(err, MC_EINVAL, "front version %d is negative", version);
    if (version == 0) {
        struct mc_tenant_info info;
        int rc = mc_tenant_get(tn, tenant_id, &info, err);
        if (rc != MC_OK)
            return rc;
        version = info.front_version;
    }
    char obj_id[16];
    snprintf(obj_id, sizeof(obj_id), "%d", version);
    void *data;
    size_t n;
    int rc = mc_store_obj_get(tn->store, tenant_id, FRONT_KIND, obj_id, &data, &n, err);
    if (rc == MC_ENOTFOUND)
        return mc_err_set(err, MC_ENOTFOUND, "tenant %s has no front version %d", tenant_id,
                          version);
    if (rc != MC_OK)
        return rc;
    rc = mc_front_from_json(data, n, out, err);
    mc_free(data);
    if (rc == MC_OK && version_out)
        *version_out = version;
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Usage */

int64_t mc_usage_day(int64_t now_ms) {
    const int64_t day_ms = 86400000;
    return now_ms >= 0 ? now_ms / day_ms : -((-now_ms + day_ms - 1) / day_ms);
}

void mc_usage_day_string(int64_t day, char buf[11]) {
    time_t t = (time_t)(day * 86400);
    struct tm tm;
    gmtime_r(&t, &tm);
    unsigned y = (unsigned)(tm.tm_year + 1900) % 10000u, m = (unsigned)(tm.tm_mon + 1) % 100u;
    unsigned d = (unsigned)tm.tm_mday % 100u;
    snprintf(buf, 11, "%04u-%02u-%02u", y, m, d);
}

int mc_usage_record(struct mc_tenants *tn, const char *tenant_id, int64_t now_ms, int64_t requests,
                    int64_t prompt_tokens, int64_t completion_tokens, struct mc_err *err) {
    return mc_store_usage_add(tn->store, tenant_id, mc_usage_day(now_ms), requests, prompt_tokens,
                              completion_tokens, err);
}

int mc_usage_list(struct mc_tenants *tn, const char *tenant_id, int64_t day_from, int64_t day_to,
                  struct mc_usage **out, size_t *n, struct mc_err *err) {
    struct mc_store_usage *rows;
    size_t n_rows;
    *out = NULL;
    *n = 0;
    int rc = mc_store_usage_list(tn->store, tenant_id, day_from, day_to, &rows, &n_rows, err);
    if (rc != MC_OK)
        return rc;
    struct mc_usage *u = mc_calloc(n_rows ? n_rows : 1, sizeof(*u));
    if (!u) {
        mc_free(rows);
        return mc_err_set(err, MC_ENOMEM, "cannot allocate %zu usage rows", n_rows);
    }
    for (size_t i = 0; i < n_rows; i++) {
        copy_str(u[i].tenant_id, sizeof(u[i].tenant_id), rows[i].tenant_id);
        u[i].day = rows[i].day;
        u[i].requests = rows[i].requests;
        u[i].prompt_tokens = rows[i].prompt_tokens;
        u[i].completion_tokens = rows[i].completion_tokens;
    }
    mc_free(rows);
    *out = u;
    *n = n_rows;
    return MC_OK;
}
