/* store.c - the backend-neutral half of the store: argument checks, data keys, sealing.
 *
 * Each call checks its arguments, then calls the backend through struct mc_store_ops.
 * Tenant-private objects are sealed here, so every backend stores only ciphertext:
 *   data key  = open(wrap key, AD = tenant id, wrapped key from the backend)
 *   object    = seal(data key, AD = tenant id || 0 || kind || 0 || object id, plaintext)
 * The NUL separators make the associated data unambiguous ("ab"+"c" differs from
 * "a"+"bc"). A data key is unwrapped for each call into a slot of one sodium_malloc
 * region (guard pages, mlock'd) and wiped right after: no tenant key is cached, so an
 * idle tenant costs no memory and a deleted tenant's key cannot linger in this process.
 * Unwrapping is one 32-byte AEAD open, small next to the database read it follows. The
 * region has KEY_SLOTS slots (one per call in flight); beyond that a call allocates its
 * own.
 *
 * Sealing and opening run outside the backend's lock (between two backend calls), so a
 * large object does not block other threads while it is encrypted. */
#include "store/store.h"

#include "base/mem.h"
#include "store/store_int.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEYCHECK_NAME "keycheck"
#define PEPPER_NAME   "pepper"
static const char PEPPER_AD[] = "mcai-pepper";
static const char KEYCHECK_AD[] = "mcai-keycheck";
static const char KEYCHECK_PT[] = "mcai-keycheck-v1";

#define KEY_SLOTS 64 /* data keys in use at once without an allocation */

struct mc_store {
    const struct mc_store_ops *ops;
    void *be;
    const struct mc_master_key *mk;
    pthread_mutex_t slot_lock;
    uint64_t slot_used; /* bit i: slot i holds a key */
    uint8_t *slots;     /* KEY_SLOTS + 1 keys, sodium_malloc; the last is the pepper */
    uint8_t *pepper;    /* API-key hash key, stored wrapped (meta "pepper") */
};

/* ---------------------------------------------------------------------------------------
 * Argument checks */

/* Printable ASCII without spaces, 1..max bytes. */
static int check_token(const char *what, const char *s, size_t max, struct mc_err *err) {
    if (!s || !*s)
        return mc_err_set(err, MC_EINVAL, "%s is empty", what);
    size_t n = strnlen(s, max + 1);
    if (n > max)
        return mc_err_set(err, MC_EINVAL, "%s is longer than %zu bytes", what, max);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f)
            return mc_err_set(err, MC_EINVAL,
                              "%s has a byte 0x%02x at offset %zu (printable "
                              "ASCII without spaces expected)",
                              what, c, i);
    }
    return MC_OK;
}

static int check_obj_key(const char *tenant_id, const char *kind, const char *obj_id,
                         struct mc_err *err) {
    int rc = check_token("tenant id", tenant_id, MC_STORE_ID_MAX, err);
    if (rc == MC_OK)
        rc = check_token("object kind", kind, MC_STORE_ID_MAX, err);
    if (rc != MC_OK)
        return rc;
    if (!obj_id || !*obj_id)
        return mc_err_set(err, MC_EINVAL, "object id is empty");
    if (strnlen(obj_id, MC_STORE_OBJ_ID_MAX + 1) > MC_STORE_OBJ_ID_MAX)
        return mc_err_set(err, MC_EINVAL, "object id is longer than %d bytes", MC_STORE_OBJ_ID_MAX);
    return MC_OK;
}

/* Builds the associated data of an object into a new buffer. */
static uint8_t *obj_ad(const char *tenant_id, const char *kind, const char *obj_id, size_t *n) {
    size_t a = strlen(tenant_id), b = strlen(kind), c = strlen(obj_id);
    uint8_t *ad = mc_malloc(a + b + c + 2);
    if (!ad)
        return NULL;
    memcpy(ad, tenant_id, a);
    ad[a] = 0;
    memcpy(ad + a + 1, kind, b);
    ad[a + 1 + b] = 0;
    memcpy(ad + a + b + 2, obj_id, c);
    *n = a + b + c + 2;
    return ad;
}

/* ---------------------------------------------------------------------------------------
 * Data keys */

/* A secure 32-byte buffer for a key: a free slot, or its own sodium_malloc region. */
static uint8_t *key_buf_get(struct mc_store *s) {
    pthread_mutex_lock(&s->slot_lock);
    for (int i = 0; i < KEY_SLOTS; i++) {
        if (!(s->slot_used & ((uint64_t)1 << i))) {
            s->slot_used |= (uint64_t)1 << i;
            pthread_mutex_unlock(&s->slot_lock);
            return s->slots + (size_t)i * MC_CRYPTO_KEY_BYTES;
        }
    }
    pthread_mutex_unlock(&s->slot_lock);
    return mc_secret_alloc(MC_CRYPTO_KEY_BYTES);
}

/* Wipes a key buffer and gives it back. Accepts NULL. */
static void key_buf_put(struct mc_store *s, uint8_t *k) {
    if (!k)
        return;
    mc_crypto_wipe(k, MC_CRYPTO_KEY_BYTES);
    size_t off = (size_t)(k - s->slots);
    if (k >= s->slots && off < (size_t)KEY_SLOTS * MC_CRYPTO_KEY_BYTES) {
        pthread_mutex_lock(&s->slot_lock);
        s->slot_used &= ~((uint64_t)1 << (off / MC_CRYPTO_KEY_BYTES));
        pthread_mutex_unlock(&s->slot_lock);
        return;
    }
    mc_secret_free(k);
}

/* Unwraps a tenant's data key into a secure buffer (give it back with key_buf_put). */
static int dk_load(struct mc_store *s, const char *tenant_id, uint8_t **dk_out,
                   struct mc_err *err) {
    uint8_t wrapped[MC_STORE_WRAPPED_DK_BYTES];
    *dk_out = NULL;
    int rc = s->ops->dk_get(s->be, tenant_id, wrapped, err);
    if (rc != MC_OK)
        return rc;
    uint8_t *dk = key_buf_get(s);
    if (!dk)
        return mc_err_set(err, MC_ENOMEM, "cannot allocate secure memory for a data key");
    size_t n = 0;
    rc = mc_crypto_open(mc_master_key_wrap_key(s->mk), tenant_id, strlen(tenant_id), wrapped,
                        sizeof(wrapped), dk, &n, err);
    if (rc == MC_OK && n != MC_CRYPTO_KEY_BYTES)
        rc = mc_err_set(err, MC_ECRYPTO, "data key has %zu bytes", n);
    if (rc != MC_OK) {
        key_buf_put(s, dk);
        return mc_err_prefix(err, "tenant %s data key", tenant_id);
    }
    *dk_out = dk;
    return MC_OK;
}

/* Checks (or, in a new store, records) that this master key owns the store. */
static int check_master_key(struct mc_store *s, const char *location, struct mc_err *err) {
    const uint8_t *key = mc_master_key_check_key(s->mk);
    uint8_t *val = NULL;
    size_t n = 0;
    int rc = s->ops->meta_get(s->be, KEYCHECK_NAME, &val, &n, err);
    if (rc == MC_ENOTFOUND) {
        uint8_t sealed[sizeof(KEYCHECK_PT) + MC_CRYPTO_OVERHEAD];
        mc_crypto_seal(key, KEYCHECK_AD, sizeof(KEYCHECK_AD), KEYCHECK_PT, sizeof(KEYCHECK_PT),
                       sealed);
        return s->ops->meta_put(s->be, KEYCHECK_NAME, sealed, sizeof(sealed), err);
    }
    if (rc != MC_OK)
        return rc;
    uint8_t pt[sizeof(KEYCHECK_PT)];
    size_t n_pt = 0;
    rc = n == sizeof(pt) + MC_CRYPTO_OVERHEAD
             ? mc_crypto_open(key, KEYCHECK_AD, sizeof(KEYCHECK_AD), val, n, pt, &n_pt, NULL)
             : MC_ECRYPTO;
    mc_free(val);
    if (rc != MC_OK)
        return mc_err_set(err, MC_EPERM,
                          "the master key does not match the one protecting %s; use that "
                          "key (MCAI_MASTER_KEY or --master-key-file)",
                          location);
    return MC_OK;
}

/* Seals the check value and the pepper under mk's keys into the meta table. */
static int put_check_and_pepper(struct mc_store *s, const struct mc_master_key *mk,
                                struct mc_err *err) {
    uint8_t check[sizeof(KEYCHECK_PT) + MC_CRYPTO_OVERHEAD];
    uint8_t pepper[MC_CRYPTO_KEY_BYTES + MC_CRYPTO_OVERHEAD];
    mc_crypto_seal(mc_master_key_check_key(mk), KEYCHECK_AD, sizeof(KEYCHECK_AD), KEYCHECK_PT,
                   sizeof(KEYCHECK_PT), check);
    mc_crypto_seal(mc_master_key_wrap_key(mk), PEPPER_AD, sizeof(PEPPER_AD), s->pepper,
                   MC_CRYPTO_KEY_BYTES, pepper);
    int rc = s->ops->meta_put(s->be, KEYCHECK_NAME, check, sizeof(check), err);
    if (rc == MC_OK)
        rc = s->ops->meta_put(s->be, PEPPER_NAME, pepper, sizeof(pepper), err);
    return rc;
}

/* Loads the pepper. A store made before the pepper was kept wrapped used the value
 * derived from the master key, so that value is the one to keep. */
static int load_pepper(struct mc_store *s, struct mc_err *err) {
    uint8_t *val = NULL;
    size_t n = 0, n_pt = 0;
    int rc = s->ops->meta_get(s->be, PEPPER_NAME, &val, &n, err);
    if (rc == MC_ENOTFOUND) {
        memcpy(s->pepper, mc_master_key_pepper(s->mk), MC_CRYPTO_KEY_BYTES);
        return put_check_and_pepper(s, s->mk, err);
    }
    if (rc != MC_OK)
        return rc;
    if (n != MC_CRYPTO_KEY_BYTES + MC_CRYPTO_OVERHEAD)
        rc = mc_err_set(err, MC_ECRYPTO, "stored pepper has %zu bytes", n);
    else
        rc = mc_crypto_open(mc_master_key_wrap_key(s->mk), PEPPER_AD, sizeof(PEPPER_AD), val, n,
                            s->pepper, &n_pt, err);
    mc_free(val);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Opening and transactions */

int mc_store_open(const char *location, const struct mc_master_key *mk, struct mc_store **out,
                  struct mc_err *err) {
    *out = NULL;
    if (!location || !*location)
        return mc_err_set(err, MC_EINVAL, "no data directory given");
    if (!mk)
        return mc_err_set(err, MC_EINVAL, "no master key given");
    int rc = mc_crypto_init(err);
    if (rc != MC_OK)
        return rc;

    struct mc_store *s = mc_calloc(1, sizeof(*s));
    if (!s)
        return mc_err_set(err, MC_ENOMEM, "cannot allocate a store");
    s->mk = mk;
    pthread_mutex_init(&s->slot_lock, NULL);
    s->slots = mc_secret_alloc((size_t)(KEY_SLOTS + 1) * MC_CRYPTO_KEY_BYTES);
    if (!s->slots) {
        mc_store_close(s);
        return mc_err_set(err, MC_ENOMEM, "cannot allocate secure memory for data keys");
    }
    s->pepper = s->slots + (size_t)KEY_SLOTS * MC_CRYPTO_KEY_BYTES;
    rc = mc_store_sqlite_open(location, &s->ops, &s->be, err);
    if (rc == MC_OK)
        rc = check_master_key(s, location, err);
    if (rc == MC_OK)
        rc = load_pepper(s, err);
    if (rc != MC_OK) {
        mc_store_close(s);
        return rc;
    }
    *out = s;
    return MC_OK;
}

void mc_store_close(struct mc_store *s) {
    if (!s)
        return;
    if (s->be)
        s->ops->close(s->be);
    mc_secret_free(s->slots);
    pthread_mutex_destroy(&s->slot_lock);
    mc_free(s);
}

const char *mc_store_backend(const struct mc_store *s) {
    return s->ops->name;
}

/* Re-wraps one tenant's data key from the current master key to new_mk. */
static int rewrap_dk(struct mc_store *s, const char *tenant_id, const struct mc_master_key *new_mk,
                     struct mc_err *err) {
    uint8_t *dk;
    int rc = dk_load(s, tenant_id, &dk, err);
    if (rc != MC_OK)
        return rc;
    uint8_t wrapped[MC_STORE_WRAPPED_DK_BYTES];
    mc_crypto_seal(mc_master_key_wrap_key(new_mk), tenant_id, strlen(tenant_id), dk,
                   MC_CRYPTO_KEY_BYTES, wrapped);
    key_buf_put(s, dk);
    return s->ops->dk_put(s->be, tenant_id, wrapped, err);
}

int mc_store_rekey(struct mc_store *s, const struct mc_master_key *new_mk, size_t *n_rewrapped,
                   struct mc_err *err) {
    struct mc_store_tenant *rows = NULL;
    size_t n = 0;
    *n_rewrapped = 0;
    int rc = s->ops->begin(s->be, err);
    if (rc != MC_OK)
        return rc;
    rc = s->ops->tenant_list(s->be, &rows, &n, err);
    for (size_t i = 0; rc == MC_OK && i < n; i++)
        rc = rewrap_dk(s, rows[i].id, new_mk, err);
    if (rc == MC_OK)
        rc = put_check_and_pepper(s, new_mk, err);
    if (rc == MC_OK)
        rc = s->ops->commit(s->be, err);
    else
        s->ops->rollback(s->be);
    mc_store_tenant_list_free(rows, n);
    if (rc != MC_OK)
        return rc;
    s->mk = new_mk;
    *n_rewrapped = n;
    return MC_OK;
}

int mc_store_begin(struct mc_store *s, struct mc_err *err) {
    return s->ops->begin(s->be, err);
}

int mc_store_commit(struct mc_store *s, struct mc_err *err) {
    return s->ops->commit(s->be, err);
}

void mc_store_rollback(struct mc_store *s) {
    s->ops->rollback(s->be);
}

/* ---------------------------------------------------------------------------------------
 * Tenants */

int mc_store_tenant_insert(struct mc_store *s, const char *id, const char *name, int64_t created_ms,
                           const char *meta, struct mc_err *err) {
    int rc = check_token("tenant id", id, MC_STORE_ID_MAX, err);
    if (rc == MC_OK)
        rc = check_token("tenant name", name, MC_STORE_NAME_MAX, err);
    if (rc != MC_OK)
        return rc;

    /* The data key exists in clear only in this secure buffer, for the time of the wrap. */
    uint8_t *dk = key_buf_get(s);
    if (!dk)
        return mc_err_set(err, MC_ENOMEM, "cannot allocate secure memory for a data key");
    mc_crypto_random(dk, MC_CRYPTO_KEY_BYTES);
    uint8_t wrapped[MC_STORE_WRAPPED_DK_BYTES];
    mc_crypto_seal(mc_master_key_wrap_key(s->mk), id, strlen(id), dk, MC_CRYPTO_KEY_BYTES, wrapped);
    key_buf_put(s, dk);

    struct mc_store_tenant t;
    memset(&t, 0, sizeof(t));
    snprintf(t.id, sizeof(t.id), "%s", id);
    snprintf(t.name, sizeof(t.name), "%s", name);
    t.created_ms = created_ms;
    t.meta = (char *)(meta ? meta : "{}");
    rc = s->ops->tenant_insert(s->be, &t, wrapped, sizeof(wrapped), err);
    if (rc == MC_EEXIST)
        return mc_err_set(err, MC_EEXIST, "a tenant with id %s or name '%s' already exists", id,
                          name);
    return rc;
}

int mc_store_tenant_get(struct mc_store *s, const char *id, struct mc_store_tenant *out,
                        struct mc_err *err) {
    memset(out, 0, sizeof(*out));
    int rc = check_token("tenant id", id, MC_STORE_ID_MAX, err);
    if (rc != MC_OK)
        return rc;
    return s->ops->tenant_get(s->be, id, NULL, out, err);
}

int mc_store_tenant_get_by_name(struct mc_store *s, const char *name, struct mc_store_tenant *out,
                                struct mc_err *err) {
    memset(out, 0, sizeof(*out));
    int rc = check_token("tenant name", name, MC_STORE_NAME_MAX, err);
    if (rc != MC_OK)
        return rc;
    return s->ops->tenant_get(s->be, NULL, name, out, err);
}

int mc_store_tenant_list(struct mc_store *s, struct mc_store_tenant **out, size_t *n,
                         struct mc_err *err) {
    return s->ops->tenant_list(s->be, out, n, err);
}

int mc_store_tenant_update(struct mc_store *s, const char *id, const char *name, const char *meta,
                           struct mc_err *err) {
    int rc = check_token("tenant id", id, MC_STORE_ID_MAX, err);
    if (rc == MC_OK && name)
        rc = check_token("tenant name", name, MC_STORE_NAME_MAX, err);
    if (rc != MC_OK)
        return rc;
    rc = s->ops->tenant_update(s->be, id, name, meta, err);
    if (rc == MC_EEXIST)
        return mc_err_set(err, MC_EEXIST, "a tenant named '%s' already exists", name);
    return rc;
}

int mc_store_tenant_delete(struct mc_store *s, const char *id, struct mc_err *err) {
    int rc = check_token("tenant id", id, MC_STORE_ID_MAX, err);
    if (rc != MC_OK)
        return rc;

    /* The key goes first, on its own and durably: if the process dies between the two
     * steps, what is left is ciphertext nobody can open, never readable data. */
    rc = s->ops->dk_shred(s->be, id, err);
    if (rc != MC_OK)
        return rc;
    return s->ops->tenant_purge(s->be, id, err);
}

void mc_store_tenant_clear(struct mc_store_tenant *t) {
    if (!t)
        return;
    mc_free(t->meta);
    t->meta = NULL;
}

void mc_store_tenant_list_free(struct mc_store_tenant *rows, size_t n) {
    for (size_t i = 0; rows && i < n; i++)
        mc_store_tenant_clear(&rows[i]);
    mc_free(rows);
}

/* ---------------------------------------------------------------------------------------
 * API keys */

void mc_store_hash_secret(const struct mc_store *s, const char *secret,
                          uint8_t out[MC_STORE_HASH_BYTES]) {
    mc_crypto_hash_keyed(s->pepper, secret, strlen(secret), out);
}

int mc_store_key_insert(struct mc_store *s, const struct mc_store_key *key, struct mc_err *err) {
    int rc = check_token("key prefix", key->prefix, MC_STORE_ID_MAX, err);
    if (rc == MC_OK)
        rc = check_token("tenant id", key->tenant_id, MC_STORE_ID_MAX, err);
    if (rc != MC_OK)
        return rc;
    return s->ops->key_insert(s->be, key, err);
}

int mc_store_key_get(struct mc_store *s, const char *prefix, struct mc_store_key *out,
                     struct mc_err *err) {
    memset(out, 0, sizeof(*out));
    int rc = check_token("key prefix", prefix, MC_STORE_ID_MAX, err);
    if (rc != MC_OK)
        return rc;
    return s->ops->key_get(s->be, prefix, out, err);
}

int mc_store_key_lookup(struct mc_store *s, const char *prefix, struct mc_store_key *key,
                        struct mc_store_tenant *tenant, struct mc_err *err) {
    memset(key, 0, sizeof(*key));
    memset(tenant, 0, sizeof(*tenant));
    int rc = check_token("key prefix", prefix, MC_STORE_ID_MAX, err);
    if (rc != MC_OK)
        return rc;
    return s->ops->key_lookup(s->be, prefix, key, tenant, err);
}

int mc_store_key_list(struct mc_store *s, const char *tenant_id, struct mc_store_key **out,
                      size_t *n, struct mc_err *err) {
    *out = NULL;
    *n = 0;
    int rc = check_token("tenant id", tenant_id, MC_STORE_ID_MAX, err);
    if (rc != MC_OK)
        return rc;
    return s->ops->key_list(s->be, tenant_id, out, n, err);
}

int mc_store_key_revoke(struct mc_store *s, const char *tenant_id, const char *prefix,
                        int64_t revoked_ms, struct mc_err *err) {
    int rc = check_token("tenant id", tenant_id, MC_STORE_ID_MAX, err);
    if (rc == MC_OK)
        rc = check_token("key prefix", prefix, MC_STORE_ID_MAX, err);
    if (rc != MC_OK)
        return rc;
    return s->ops->key_revoke(s->be, tenant_id, prefix, revoked_ms, err);
}

/* ---------------------------------------------------------------------------------------
 * Usage */

int mc_store_usage_add(struct mc_store *s, const char *tenant_id, int64_t day, int64_t requests,
                       int64_t prompt_tokens, int64_t completion_tokens, struct mc_err *err) {
    int rc = check_token("tenant id", tenant_id, MC_STORE_ID_MAX, err);
    if (rc != MC_OK)
        return rc;
    if (requests < 0 || prompt_tokens < 0 || completion_tokens < 0)
        return mc_err_set(err, MC_EINVAL, "usage counts must not be negative");
    struct mc_store_usage u;
    memset(&u, 0, sizeof(u));
    snprintf(u.tenant_id, sizeof(u.tenant_id), "%s", tenant_id);
    u.day = day;
    u.requests = requests;
    u.prompt_tokens = prompt_tokens;
    u.completion_tokens = completion_tokens;
    return s->ops->usage_add(s->be, &u, err);
}

int mc_store_usage_list(struct mc_store *s, const char *tenant_id, int64_t day_from, int64_t day_to,
                        struct mc_store_usage **out, size_t *n, struct mc_err *err) {
    *out = NULL;
    *n = 0;
    if (tenant_id) {
        int rc = check_token("tenant id", tenant_id, MC_STORE_ID_MAX, err);
        if (rc != MC_OK)
            return rc;
    }
    return s->ops->usage_list(s->be, tenant_id, day_from, day_to, out, n, err);
}

/* ---------------------------------------------------------------------------------------
 * Sealed objects
 *
 * A row is keyed by obj_key = hex(BLAKE2b-256 keyed with idk, kind || 0 || object id),
 * idk = KDF(data key, 1, "mcaiobid"), so the database holds no object id in clear and
 * the same id gives unrelated keys for two tenants. The id itself is sealed beside the
 * data (AD = tenant id || 0 || kind || 0 || obj_key) so that listings can return it. */

/* The tenant's data key and the row key of (kind, obj_id), for one object call. */
struct obj_keys {
    uint8_t *dk;
    char key[MC_STORE_OBJ_KEY_LEN + 1];
};

static int obj_keys_load(struct mc_store *s, const char *tenant_id, const char *kind,
                         const char *obj_id, struct obj_keys *k, struct mc_err *err) {
    k->key[0] = '\0';
    int rc = dk_load(s, tenant_id, &k->dk, err);
    if (rc != MC_OK || !obj_id)
        return rc;
    uint8_t *idk = key_buf_get(s);
    if (!idk) {
        key_buf_put(s, k->dk);
        k->dk = NULL;
        return mc_err_set(err, MC_ENOMEM, "cannot allocate secure memory for a key");
    }
    mc_crypto_derive(k->dk, 1, "mcaiobid", idk);
    size_t n_msg = 0;
    uint8_t *msg = obj_ad("", kind, obj_id, &n_msg); /* kind 0 id, after a leading 0 */
    uint8_t h[32];
    if (msg)
        mc_crypto_hash_keyed(idk, msg + 1, n_msg - 1, h);
    key_buf_put(s, idk);
    mc_free(msg);
    if (!msg) {
        key_buf_put(s, k->dk);
        k->dk = NULL;
        return mc_err_set(err, MC_ENOMEM, "out of memory hashing an object id");
    }
    mc_crypto_hex(h, sizeof(h), k->key);
    return MC_OK;
}

/* Seals the object id for its row into a new buffer (mc_free). */
static uint8_t *seal_id(const uint8_t *dk, const char *tenant_id, const char *kind, const char *key,
                        const char *obj_id, size_t *n_out) {
    size_t n_ad = 0, n_id = strlen(obj_id);
    uint8_t *ad = obj_ad(tenant_id, kind, key, &n_ad);
    uint8_t *out = mc_malloc(n_id + MC_CRYPTO_OVERHEAD);
    if (!ad || !out) {
        mc_free(ad);
        mc_free(out);
        return NULL;
    }
    mc_crypto_seal(dk, ad, n_ad, obj_id, n_id, out);
    mc_free(ad);
    *n_out = n_id + MC_CRYPTO_OVERHEAD;
    return out;
}

int mc_store_obj_put(struct mc_store *s, const char *tenant_id, const char *kind,
                     const char *obj_id, const void *data, size_t n, struct mc_err *err) {
    int rc = check_obj_key(tenant_id, kind, obj_id, err);
    if (rc != MC_OK)
        return rc;
    if (n > MC_STORE_OBJ_MAX)
        return mc_err_set(err, MC_EINVAL, "object of %zu bytes exceeds the limit of %zu", n,
                          MC_STORE_OBJ_MAX);
    if (!data && n)
        return mc_err_set(err, MC_EINVAL, "object data is NULL");

    struct obj_keys k;
    rc = obj_keys_load(s, tenant_id, kind, obj_id, &k, err);
    if (rc != MC_OK)
        return rc;
    size_t n_ad = 0, n_sid = 0;
    uint8_t *ad = obj_ad(tenant_id, kind, obj_id, &n_ad);
    uint8_t *sid = seal_id(k.dk, tenant_id, kind, k.key, obj_id, &n_sid);
    uint8_t *sealed = mc_malloc(n + MC_CRYPTO_OVERHEAD);
    if (!ad || !sid || !sealed) {
        rc = mc_err_set(err, MC_ENOMEM, "cannot allocate %zu bytes to seal an object",
                        n + MC_CRYPTO_OVERHEAD);
        goto out_free;
    }
    mc_crypto_seal(k.dk, ad, n_ad, data ? data : "", n, sealed);
    rc = s->ops->obj_put(s->be, tenant_id, kind, k.key, sid, n_sid, sealed, n + MC_CRYPTO_OVERHEAD,
                         err);
out_free:
    key_buf_put(s, k.dk);
    mc_free(ad);
    mc_free(sid);
    mc_free(sealed);
    return rc;
}

int mc_store_obj_get(struct mc_store *s, const char *tenant_id, const char *kind,
                     const char *obj_id, void **data, size_t *n, struct mc_err *err) {
    *data = NULL;
    *n = 0;
    int rc = check_obj_key(tenant_id, kind, obj_id, err);
    if (rc != MC_OK)
        return rc;

    struct obj_keys k;
    uint8_t *sealed = NULL, *ad = NULL, *pt = NULL;
    size_t n_sealed = 0, n_ad = 0, n_pt = 0;
    rc = obj_keys_load(s, tenant_id, kind, obj_id, &k, err);
    if (rc == MC_ENOTFOUND)
        return mc_err_set(err, MC_ENOTFOUND, "%s object not found", kind);
    if (rc != MC_OK)
        return rc;
    rc = s->ops->obj_get(s->be, tenant_id, kind, k.key, &sealed, &n_sealed, err);
    if (rc != MC_OK)
        goto out_free;
    if (n_sealed < MC_CRYPTO_OVERHEAD) {
        rc = mc_err_set(err, MC_ECRYPTO,
                        "%s object is %zu bytes, shorter than a sealed empty "
                        "object",
                        kind, n_sealed);
        goto out_free;
    }
    ad = obj_ad(tenant_id, kind, obj_id, &n_ad);
    pt = mc_malloc(n_sealed - MC_CRYPTO_OVERHEAD + 1);
    if (!ad || !pt) {
        rc = mc_err_set(err, MC_ENOMEM, "cannot allocate %zu bytes to open an object", n_sealed);
        goto out_free;
    }
    rc = mc_crypto_open(k.dk, ad, n_ad, sealed, n_sealed, pt, &n_pt, err);
    if (rc != MC_OK) {
        mc_err_prefix(err, "%s object", kind);
        goto out_free;
    }
    pt[n_pt] = 0;
    *data = pt;
    *n = n_pt;
    pt = NULL;
out_free:
    key_buf_put(s, k.dk);
    mc_free(sealed);
    mc_free(ad);
    mc_free(pt);
    return rc;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Opens the sealed ids of refs into a new array of new strings. */
static int open_ids(const uint8_t *dk, const char *tenant_id, const char *kind,
                    const struct mc_store_obj_ref *refs, size_t n, char ***ids_out,
                    struct mc_err *err) {
    char **ids = mc_calloc(n ? n : 1, sizeof(char *));
    if (!ids)
        return mc_err_set(err, MC_ENOMEM, "cannot allocate a list of %zu ids", n);
    int rc = MC_OK;
    for (size_t i = 0; rc == MC_OK && i < n; i++) {
        size_t n_ad = 0, n_id = 0;
        uint8_t *ad = obj_ad(tenant_id, kind, refs[i].key, &n_ad);
        if (refs[i].n_sealed_id < MC_CRYPTO_OVERHEAD)
            rc = mc_err_set(err, MC_ECRYPTO, "%s object id is shorter than a sealed id", kind);
        else if (!ad || !(ids[i] = mc_malloc(refs[i].n_sealed_id - MC_CRYPTO_OVERHEAD + 1)))
            rc = mc_err_set(err, MC_ENOMEM, "out of memory opening object ids");
        else
            rc = mc_crypto_open(dk, ad, n_ad, refs[i].sealed_id, refs[i].n_sealed_id,
                                (uint8_t *)ids[i], &n_id, err);
        if (rc == MC_OK)
            ids[i][n_id] = '\0';
        mc_free(ad);
    }
    if (rc != MC_OK) {
        mc_store_obj_list_free(ids, n);
        return mc_err_prefix(err, "%s object list", kind);
    }
    *ids_out = ids;
    return MC_OK;
}

int mc_store_obj_list(struct mc_store *s, const char *tenant_id, const char *kind, char ***ids,
                      size_t *n, struct mc_err *err) {
    *ids = NULL;
    *n = 0;
    int rc = check_token("tenant id", tenant_id, MC_STORE_ID_MAX, err);
    if (rc == MC_OK)
        rc = check_token("object kind", kind, MC_STORE_ID_MAX, err);
    if (rc != MC_OK)
        return rc;

    struct obj_keys k;
    rc = obj_keys_load(s, tenant_id, kind, NULL, &k, err);
    if (rc != MC_OK)
        return rc;
    struct mc_store_obj_ref *refs = NULL;
    size_t n_refs = 0;
    rc = s->ops->obj_list(s->be, tenant_id, kind, &refs, &n_refs, err);
    if (rc == MC_OK)
        rc = open_ids(k.dk, tenant_id, kind, refs, n_refs, ids, err);
    key_buf_put(s, k.dk);
    mc_store_obj_refs_free(refs, n_refs);
    if (rc != MC_OK)
        return rc;
    qsort(*ids, n_refs, sizeof(char *), cmp_str);
    *n = n_refs;
    return MC_OK;
}

void mc_store_obj_list_free(char **ids, size_t n) {
    for (size_t i = 0; ids && i < n; i++)
        mc_free(ids[i]);
    mc_free(ids);
}

void mc_store_obj_refs_free(struct mc_store_obj_ref *refs, size_t n) {
    for (size_t i = 0; refs && i < n; i++)
        mc_free(refs[i].sealed_id);
    mc_free(refs);
}

int mc_store_obj_delete(struct mc_store *s, const char *tenant_id, const char *kind,
                        const char *obj_id, struct mc_err *err) {
    int rc = check_obj_key(tenant_id, kind, obj_id, err);
    if (rc != MC_OK)
        return rc;
    struct obj_keys k;
    rc = obj_keys_load(s, tenant_id, kind, obj_id, &k, err);
    if (rc == MC_ENOTFOUND)
        return mc_err_set(err, MC_ENOTFOUND, "%s object not found", kind);
    if (rc != MC_OK)
        return rc;
    key_buf_put(s, k.dk);
    return s->ops->obj_delete(s->be, tenant_id, kind, k.key, err);
}
