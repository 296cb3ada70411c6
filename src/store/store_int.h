/* store_int.h - what a store backend implements; only src/store/ includes this.
 *
 * A backend stores rows and blobs; it knows nothing of keys or sealing (store.c seals
 * before calling obj_put and opens after obj_get). Every operation is atomic on its own
 * (a backend wraps multi-row work in a savepoint) and joins the caller's transaction
 * when mc_store_begin opened one. A backend is responsible for its own thread safety.
 *
 * Error contract for every op: MC_EEXIST on a unique-key clash (message names the
 * column), MC_ENOTFOUND when the row, or the tenant a new row would belong to, is
 * missing, MC_EIO for anything the database reports, MC_ENOMEM. */
#ifndef MC_STORE_INT_H
#define MC_STORE_INT_H

#include "store/store.h"

/* Sizes of a wrapped data key: sealed 32-byte key. */
#define MC_STORE_WRAPPED_DK_BYTES (MC_CRYPTO_KEY_BYTES + MC_CRYPTO_OVERHEAD)
/* An object's row key: hex of a keyed BLAKE2b-256 of its id (store.c). */
#define MC_STORE_OBJ_KEY_LEN 64

/* One row of an object listing: the row key and the sealed object id. */
struct mc_store_obj_ref {
    char key[MC_STORE_OBJ_KEY_LEN + 1];
    uint8_t *sealed_id; /* owned (mc_free) */
    size_t n_sealed_id;
};

struct mc_store_ops {
    const char *name;
    void (*close)(void *be);

    int (*begin)(void *be, struct mc_err *err);
    int (*commit)(void *be, struct mc_err *err);
    void (*rollback)(void *be);

    /* Small named values of the store itself (schema version, key check). get returns
     * MC_ENOTFOUND when absent; *val is a new buffer (mc_free). */
    int (*meta_get)(void *be, const char *key, uint8_t **val, size_t *n, struct mc_err *err);
    int (*meta_put)(void *be, const char *key, const uint8_t *val, size_t n, struct mc_err *err);

    /* Inserts the tenant row and its wrapped data key together. */
    int (*tenant_insert)(void *be, const struct mc_store_tenant *t, const uint8_t *wrapped,
                         size_t n_wrapped, struct mc_err *err);
    /* Exactly one of id and name is non-NULL. */
    int (*tenant_get)(void *be, const char *id, const char *name, struct mc_store_tenant *out,
                      struct mc_err *err);
    int (*tenant_list)(void *be, struct mc_store_tenant **out, size_t *n, struct mc_err *err);
    int (*tenant_update)(void *be, const char *id, const char *name, const char *meta,
                         struct mc_err *err);
    /* Reads the wrapped data key (exactly MC_STORE_WRAPPED_DK_BYTES) into out. */
    int (*dk_get)(void *be, const char *tenant_id, uint8_t out[MC_STORE_WRAPPED_DK_BYTES],
                  struct mc_err *err);
    /* Overwrites the wrapped data key with random bytes, deletes it, and makes that
     * durable and gone from every file the backend controls before returning (its own
     * transaction; never inside one). */
    int (*dk_shred)(void *be, const char *tenant_id, struct mc_err *err);
    /* Replaces the wrapped data key of an existing tenant (master key rotation). */
    int (*dk_put)(void *be, const char *tenant_id, const uint8_t wrapped[MC_STORE_WRAPPED_DK_BYTES],
                  struct mc_err *err);
    /* Deletes everything else of the tenant: objects, keys, usage, the tenant row. */
    int (*tenant_purge)(void *be, const char *tenant_id, struct mc_err *err);

    int (*key_insert)(void *be, const struct mc_store_key *key, struct mc_err *err);
    int (*key_get)(void *be, const char *prefix, struct mc_store_key *out, struct mc_err *err);
    /* The key row and its tenant's row in one read (the per-request path). */
    int (*key_lookup)(void *be, const char *prefix, struct mc_store_key *key,
                      struct mc_store_tenant *tenant, struct mc_err *err);
    int (*key_list)(void *be, const char *tenant_id, struct mc_store_key **out, size_t *n,
                    struct mc_err *err);
    int (*key_revoke)(void *be, const char *tenant_id, const char *prefix, int64_t revoked_ms,
                      struct mc_err *err);

    int (*usage_add)(void *be, const struct mc_store_usage *u, struct mc_err *err);
    int (*usage_list)(void *be, const char *tenant_id, int64_t day_from, int64_t day_to,
                      struct mc_store_usage **out, size_t *n, struct mc_err *err);

    /* Objects are rows keyed (tenant id, kind, row key) holding the sealed object id and
     * the sealed data; the backend never sees a plain object id. *sealed from obj_get is
     * a new buffer (mc_free); obj_list returns a new array of refs ordered by row key,
     * freed with mc_store_obj_refs_free. */
    int (*obj_put)(void *be, const char *tenant_id, const char *kind, const char *key,
                   const uint8_t *sealed_id, size_t n_id, const uint8_t *sealed, size_t n,
                   struct mc_err *err);
    int (*obj_get)(void *be, const char *tenant_id, const char *kind, const char *key,
                   uint8_t **sealed, size_t *n, struct mc_err *err);
    int (*obj_list)(void *be, const char *tenant_id, const char *kind,
                    struct mc_store_obj_ref **refs, size_t *n, struct mc_err *err);
    int (*obj_delete)(void *be, const char *tenant_id, const char *kind, const char *key,
                      struct mc_err *err);
};

void mc_store_obj_refs_free(struct mc_store_obj_ref *refs, size_t n);

/* Opens the SQLite backend in directory dir (see store_sqlite.c). */
int mc_store_sqlite_open(const char *dir, const struct mc_store_ops **ops, void **be,
                         struct mc_err *err);

#endif
