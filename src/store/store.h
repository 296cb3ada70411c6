/* store.h - persistence behind one interface: the catalog and sealed per-tenant objects.
 *
 * The store holds two things:
 *  - the catalog: tenants (id, name, operator metadata as JSON), wrapped tenant data keys,
 *    API key hashes, usage per tenant per day, and a key-check value;
 *  - tenant-private objects: blobs keyed (tenant id, kind, object id), sealed with the
 *    tenant's data key (XChaCha20-Poly1305, associated data = tenant id, kind, object id)
 *    before they reach the backend, which sees object ids only as keyed hashes.
 *    Fronts, conversations, documents, vectors and adapters all live here; an object
 *    may be up to MC_STORE_OBJ_MAX bytes.
 *
 * Callers never see SQL. A backend implements struct mc_store_ops (store_int.h); the only
 * one today is SQLite in WAL mode under a data directory (store_sqlite.c). Sealing, data
 * key handling and argument checks are in store.c, common to every backend.
 *
 * Threading: a store may be used from any number of threads. The SQLite backend holds one
 * connection behind a recursive mutex: each call takes it for its own duration, and
 * mc_store_begin holds it until mc_store_commit/mc_store_rollback in the same thread, so a
 * transaction is never interleaved with another thread's writes. Several processes (the
 * server and `mcai tenant ...`) may open the same directory; SQLite's locking and a busy
 * timeout serialise them. */
#ifndef MC_STORE_H
#define MC_STORE_H

#include "base/err.h"
#include "store/crypto.h"

#include <stddef.h>
#include <stdint.h>

#define MC_STORE_ID_MAX     64  /* tenant ids, kinds and key prefixes: bytes, without NUL */
#define MC_STORE_OBJ_ID_MAX 512 /* object ids: bytes, without NUL */
#define MC_STORE_NAME_MAX   64  /* tenant names */
#define MC_STORE_OBJ_MAX    ((size_t)512 << 20) /* largest plaintext object (SQLite: 1e9) */
#define MC_STORE_HASH_BYTES 32

struct mc_store;

/* A tenant row of the catalog. meta is operator data (limits, weight, front version) as a
 * JSON object in clear text; nothing tenant-private goes there. */
struct mc_store_tenant {
    char id[MC_STORE_ID_MAX + 1];
    char name[MC_STORE_NAME_MAX + 1];
    int64_t created_ms; /* Unix time, milliseconds */
    char *meta;         /* JSON object text, owned (freed by mc_store_tenant_clear) */
};

/* An API key row: the hash of the secret, never the secret. */
struct mc_store_key {
    char prefix[MC_STORE_ID_MAX + 1]; /* non-secret lookup index, unique */
    char tenant_id[MC_STORE_ID_MAX + 1];
    uint8_t hash[MC_STORE_HASH_BYTES]; /* BLAKE2b-256 keyed with the pepper */
    int64_t created_ms;
    int64_t revoked_ms; /* 0: active */
};

/* Usage of one tenant on one UTC day. */
struct mc_store_usage {
    char tenant_id[MC_STORE_ID_MAX + 1];
    int64_t day; /* days since 1970-01-01 UTC */
    int64_t requests;
    int64_t prompt_tokens;
    int64_t completion_tokens;
};

/* ---------------------------------------------------------------------------------------
 * Opening and transactions */

/* Opens (creating if needed) the store at location: today a directory for the SQLite
 * backend (created with mode 0700 when missing; files catalog.db, -wal, -shm). The master
 * key is borrowed and must outlive the store. A directory protected by another master
 * key is refused with MC_EPERM. On failure *out is NULL. */
int mc_store_open(const char *location, const struct mc_master_key *mk, struct mc_store **out,
                  struct mc_err *err);

/* Closes the store (checkpointing the WAL). Accepts NULL. No transaction may be open. */
void mc_store_close(struct mc_store *s);

/* The name of the backend ("sqlite"). */
const char *mc_store_backend(const struct mc_store *s);

/* Master key rotation: re-wraps every tenant's data key, the API-key pepper and the
 * key check under new_mk, in one transaction, and uses new_mk from then on (borrowed;
 * it must outlive the store). Sealed objects and API keys stay as they are. Must not run
 * while other threads use this store; another process that opened the directory with
 * the old key can no longer open data keys (MC_ECRYPTO) and must be restarted with the
 * new one, so stop the server first. *n_rewrapped gets the number of tenants. */
int mc_store_rekey(struct mc_store *s, const struct mc_master_key *new_mk, size_t *n_rewrapped,
                   struct mc_err *err);

/* Starts a write transaction held by the calling thread; every store call from that
 * thread joins it until mc_store_commit or mc_store_rollback. Other threads wait. Not
 * nestable (MC_EINVAL). */
int mc_store_begin(struct mc_store *s, struct mc_err *err);
int mc_store_commit(struct mc_store *s, struct mc_err *err);
/* Undoes everything since mc_store_begin. Safe to call when no transaction is open. */
void mc_store_rollback(struct mc_store *s);

/* ---------------------------------------------------------------------------------------
 * Tenants (catalog) */

/* Inserts a tenant with a fresh random data key, wrapped under the master key with the
 * tenant id as associated data. id and name must be non-empty printable ASCII of at most
 * MC_STORE_ID_MAX / MC_STORE_NAME_MAX bytes; meta a JSON object text (NULL = "{}").
 * Returns MC_EEXIST when the id or the name is taken (the message says which). */
int mc_store_tenant_insert(struct mc_store *s, const char *id, const char *name, int64_t created_ms,
                           const char *meta, struct mc_err *err);

/* Reads a tenant by id into *out (clear it with mc_store_tenant_clear). MC_ENOTFOUND when
 * there is no such tenant. */
int mc_store_tenant_get(struct mc_store *s, const char *id, struct mc_store_tenant *out,
                        struct mc_err *err);

/* Same, by name. */
int mc_store_tenant_get_by_name(struct mc_store *s, const char *name, struct mc_store_tenant *out,
                                struct mc_err *err);

/* All tenants ordered by name into a new array *out of *n rows; free with
 * mc_store_tenant_list_free(*out, *n). */
int mc_store_tenant_list(struct mc_store *s, struct mc_store_tenant **out, size_t *n,
                         struct mc_err *err);

/* Renames (name non-NULL) and/or replaces meta (non-NULL). MC_ENOTFOUND, MC_EEXIST. */
int mc_store_tenant_update(struct mc_store *s, const char *id, const char *name, const char *meta,
                           struct mc_err *err);

/* Deletes a tenant by crypto-shredding: first its wrapped data key is overwritten with
 * random bytes and deleted, and that is committed and checkpointed on its own, so from
 * then on nothing of the tenant can be decrypted, even with the master key and a copy of
 * the files; then its objects, API keys, usage and catalog row are deleted. Must not be
 * called inside a transaction (MC_EINVAL). MC_ENOTFOUND when there is no such tenant. */
int mc_store_tenant_delete(struct mc_store *s, const char *id, struct mc_err *err);

void mc_store_tenant_clear(struct mc_store_tenant *t);
void mc_store_tenant_list_free(struct mc_store_tenant *rows, size_t n);

/* ---------------------------------------------------------------------------------------
 * API keys (catalog) */

/* The keyed hash of an API key secret under the pepper derived from the master key. */
void mc_store_hash_secret(const struct mc_store *s, const char *secret,
                          uint8_t out[MC_STORE_HASH_BYTES]);

/* Inserts a key row. MC_EEXIST when the prefix is taken; MC_ENOTFOUND when the tenant
 * does not exist. */
int mc_store_key_insert(struct mc_store *s, const struct mc_store_key *key, struct mc_err *err);

/* Reads the key row with this prefix. MC_ENOTFOUND when there is none. */
int mc_store_key_get(struct mc_store *s, const char *prefix, struct mc_store_key *out,
                     struct mc_err *err);

/* Reads the key row with this prefix and its tenant's row in one read (the
 * per-request path): clear *tenant with mc_store_tenant_clear. MC_ENOTFOUND when there is
 * no such key (or, impossibly, no such tenant). */
int mc_store_key_lookup(struct mc_store *s, const char *prefix, struct mc_store_key *key,
                        struct mc_store_tenant *tenant, struct mc_err *err);

/* The keys of one tenant, oldest first, into a new array (free with mc_free). */
int mc_store_key_list(struct mc_store *s, const char *tenant_id, struct mc_store_key **out,
                      size_t *n, struct mc_err *err);

/* Marks the key revoked at revoked_ms. MC_ENOTFOUND when no key of this tenant has this
 * prefix; revoking a revoked key is MC_OK and keeps the first time. */
int mc_store_key_revoke(struct mc_store *s, const char *tenant_id, const char *prefix,
                        int64_t revoked_ms, struct mc_err *err);

/* ---------------------------------------------------------------------------------------
 * Usage (catalog) */

/* Adds the given counts to (tenant, day), creating the row at zero first. */
int mc_store_usage_add(struct mc_store *s, const char *tenant_id, int64_t day, int64_t requests,
                       int64_t prompt_tokens, int64_t completion_tokens, struct mc_err *err);

/* Rows with day_from <= day <= day_to for one tenant (tenant_id non-NULL) or for all,
 * ordered by tenant then day, into a new array (free with mc_free). */
int mc_store_usage_list(struct mc_store *s, const char *tenant_id, int64_t day_from, int64_t day_to,
                        struct mc_store_usage **out, size_t *n, struct mc_err *err);

/* ---------------------------------------------------------------------------------------
 * Sealed per-tenant objects */

/* Seals data (n bytes, at most MC_STORE_OBJ_MAX) with the tenant's data key and stores it
 * under (tenant_id, kind, obj_id), replacing any previous object there. kind is a short
 * lower-case name ("front", "conv", "doc", ...), stored in clear; obj_id any non-empty
 * string without NUL of at most MC_STORE_OBJ_ID_MAX bytes, stored only as a keyed hash
 * and sealed (so caller-chosen ids such as document names do not leak). MC_ENOTFOUND
 * when the tenant does not exist. */
int mc_store_obj_put(struct mc_store *s, const char *tenant_id, const char *kind,
                     const char *obj_id, const void *data, size_t n, struct mc_err *err);

/* Reads and opens an object into a new buffer *data of *n bytes, owned by the caller
 * (mc_free; it holds one extra NUL byte after the data so text can be used directly).
 * MC_ENOTFOUND when absent (including when the tenant is gone); MC_ECRYPTO when the
 * stored bytes fail authentication (edited, or moved from another tenant, kind or id). */
int mc_store_obj_get(struct mc_store *s, const char *tenant_id, const char *kind,
                     const char *obj_id, void **data, size_t *n, struct mc_err *err);

/* The ids of one tenant's objects of one kind, in byte order, into a new array of new
 * strings (free with mc_store_obj_list_free). Opens every sealed id: MC_ECRYPTO if one
 * fails. MC_ENOTFOUND when the tenant does not exist. */
int mc_store_obj_list(struct mc_store *s, const char *tenant_id, const char *kind, char ***ids,
                      size_t *n, struct mc_err *err);
void mc_store_obj_list_free(char **ids, size_t n);

/* Deletes one object. MC_ENOTFOUND when absent. */
int mc_store_obj_delete(struct mc_store *s, const char *tenant_id, const char *kind,
                        const char *obj_id, struct mc_err *err);

#endif
