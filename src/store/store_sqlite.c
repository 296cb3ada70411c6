/* store_sqlite.c - the embedded store backend: one SQLite database in WAL mode.
 *
 * Files: DIR/catalog.db with DIR/catalog.db-wal and -shm beside it. Tables:
 *   meta(k, v)                       schema version and the master-key check value
 *   tenants(id, name unique, created_ms, meta)
 *   tenant_keys(tenant_id, wrapped)  wrapped data keys, one per tenant
 *   api_keys(prefix, tenant_id, hash, created_ms, revoked_ms)
 *   usage(tenant_id, day, requests, prompt_tokens, completion_tokens)
 *   objects(tenant_id, kind, obj_key, sealed_id, sealed)
 *                                    sealed blobs, up to MC_STORE_OBJ_MAX; obj_key is a
 *                                    keyed hash of the object id, sealed_id the id itself
 * Every per-tenant table references tenants(id) (foreign keys on), so no row can outlive
 * or precede its tenant. secure_delete is on: freed cells and pages are zeroed, which is
 * what lets crypto-shredding leave no copy of a wrapped key in catalog.db.
 *
 * Threading: one connection guarded by a recursive mutex. Each op holds it for its own
 * duration; begin holds it until commit/rollback, so a transaction is one thread's. This
 * keeps SQLite in its simplest mode at the cost of serialising readers; the ops are short
 * (indexed reads, single-row writes) except reading or writing big blobs. A reader pool
 * would be the next step if blob traffic ever dominates.
 *
 * It does not know about keys or sealing; store.c does. */
#include "store/store_int.h"

#include "base/log.h"
#include "base/mem.h"

#include <sqlite3.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define DB_NAME         "catalog.db"
#define BUSY_TIMEOUT_MS 10000
#define SCHEMA_VERSION  1
#define STMT_CACHE      48 /* prepared statements kept: more than the distinct queries below */

struct sq {
    sqlite3 *db;
    pthread_mutex_t lock; /* recursive */
    int in_txn;           /* a transaction opened by mc_store_begin is running */
    /* Prepared statements by SQL text pointer (every query is a string literal), reset
     * after each use: preparing costs more than most of the queries themselves. */
    struct {
        const char *sql;
        sqlite3_stmt *st;
    } cache[STMT_CACHE];
    int n_cache;
};

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v BLOB NOT NULL);"
    "CREATE TABLE IF NOT EXISTS tenants(id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    " created_ms INTEGER NOT NULL, meta TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS tenant_keys(tenant_id TEXT PRIMARY KEY"
    " REFERENCES tenants(id), wrapped BLOB NOT NULL);"
    "CREATE TABLE IF NOT EXISTS api_keys(prefix TEXT PRIMARY KEY,"
    " tenant_id TEXT NOT NULL REFERENCES tenants(id), hash BLOB NOT NULL,"
    " created_ms INTEGER NOT NULL, revoked_ms INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys(tenant_id);"
    "CREATE TABLE IF NOT EXISTS usage(tenant_id TEXT NOT NULL REFERENCES tenants(id),"
    " day INTEGER NOT NULL, requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,"
    " completion_tokens INTEGER NOT NULL, PRIMARY KEY(tenant_id, day)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS objects(tenant_id TEXT NOT NULL REFERENCES tenants(id),"
    " kind TEXT NOT NULL, obj_key TEXT NOT NULL, sealed_id BLOB NOT NULL,"
    " sealed BLOB NOT NULL, UNIQUE(tenant_id, kind, obj_key));";

/* ---------------------------------------------------------------------------------------
 * Helpers */

/* Maps a SQLite failure to an mc code with the database's message. */
static int sq_fail(struct sq *q, int src, const char *what, struct mc_err *err) {
    int ext = sqlite3_extended_errcode(q->db);
    const char *msg = sqlite3_errmsg(q->db);
    if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY)
        return mc_err_set(err, MC_EEXIST, "%s: already exists (%s)", what, msg);
    if (ext == SQLITE_CONSTRAINT_FOREIGNKEY)
        return mc_err_set(err, MC_ENOTFOUND, "%s: tenant not found", what);
    if (src == SQLITE_NOMEM)
        return mc_err_set(err, MC_ENOMEM, "%s: sqlite out of memory", what);
    if (src == SQLITE_TOOBIG)
        return mc_err_set(err, MC_ENOMEM, "%s: value too big for sqlite", what);
    return mc_err_set(err, MC_EIO, "%s: sqlite: %s", what, msg);
}

static void sq_lock(struct sq *q) {
    pthread_mutex_lock(&q->lock);
}

static void sq_unlock(struct sq *q) {
    pthread_mutex_unlock(&q->lock);
}

/* Returns the prepared statement for sql (a string literal), from the cache when it was
 * prepared before; release it with sq_release. On failure sets err. */
static int sq_prepare(struct sq *q, const char *sql, sqlite3_stmt **st, struct mc_err *err) {
    for (int i = 0; i < q->n_cache; i++) {
        if (q->cache[i].sql == sql) {
            *st = q->cache[i].st;
            return MC_OK;
        }
    }
    int src = sqlite3_prepare_v3(q->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
    if (src != SQLITE_OK)
        return sq_fail(q, src, "prepare", err);
    if (q->n_cache < STMT_CACHE) {
        q->cache[q->n_cache].sql = sql;
        q->cache[q->n_cache].st = *st;
        q->n_cache++;
    }
    return MC_OK;
}

/* Ends a use of a statement: resets it (ending its read of the database) and drops its
 * bindings, or finalizes it when the cache had no room for it. */
static void sq_release(struct sq *q, sqlite3_stmt *st) {
    for (int i = 0; i < q->n_cache; i++) {
        if (q->cache[i].st == st) {
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            return;
        }
    }
    sq_release(q, st);
}

static void bind_text(sqlite3_stmt *st, int i, const char *s) {
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

/* Runs a statement with no result rows to completion; finalizes it. */
static int sq_done(struct sq *q, sqlite3_stmt *st, const char *what, struct mc_err *err) {
    int src = sqlite3_step(st);
    int rc = src == SQLITE_DONE ? MC_OK : sq_fail(q, src, what, err);
    sq_release(q, st);
    return rc;
}

static int sq_exec(struct sq *q, const char *sql, struct mc_err *err) {
    char *msg = NULL;
    int src = sqlite3_exec(q->db, sql, NULL, NULL, &msg);
    if (src != SQLITE_OK) {
        int rc = mc_err_set(err, src == SQLITE_NOMEM ? MC_ENOMEM : MC_EIO, "sqlite: %s",
                            msg ? msg : sqlite3_errstr(src));
        sqlite3_free(msg);
        return rc;
    }
    return MC_OK;
}

/* Savepoints make a multi-statement op atomic whether or not a transaction is open. */
static int sp_begin(struct sq *q, struct mc_err *err) {
    return sq_exec(q, "SAVEPOINT op", err);
}

static int sp_end(struct sq *q, int rc, struct mc_err *err) {
    if (rc == MC_OK) {
        rc = sq_exec(q, "RELEASE op", err);
        if (rc == MC_OK)
            return MC_OK;
    }
    sq_exec(q, "ROLLBACK TO op", NULL);
    sq_exec(q, "RELEASE op", NULL);
    return rc;
}

static void copy_text(char *dst, size_t cap, const unsigned char *src) {
    snprintf(dst, cap, "%s", src ? (const char *)src : "");
}

/* Grows *arr (element size sz) to hold at least need elements; *cap is updated. */
static int grow(void **arr, size_t *cap, size_t need, size_t sz, struct mc_err *err) {
    if (need <= *cap)
        return MC_OK;
    size_t nc = *cap ? *cap * 2 : 16;
    while (nc < need)
        nc *= 2;
    void *p = mc_realloc(*arr, nc * sz);
    if (!p)
        return mc_err_set(err, MC_ENOMEM, "cannot grow a result list to %zu rows", nc);
    *arr = p;
    *cap = nc;
    return MC_OK;
}

/* ---------------------------------------------------------------------------------------
 * Open, close, transactions */

static void sq_close(void *be) {
    struct sq *q = be;
    if (!q)
        return;
    for (int i = 0; i < q->n_cache; i++)
        sqlite3_finalize(q->cache[i].st);
    if (q->db) {
        sqlite3_wal_checkpoint_v2(q->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        sqlite3_close_v2(q->db);
    }
    pthread_mutex_destroy(&q->lock);
    mc_free(q);
}

static int sq_begin(void *be, struct mc_err *err) {
    struct sq *q = be;
    sq_lock(q);
    if (q->in_txn) {
        sq_unlock(q);
        return mc_err_set(err, MC_EINVAL, "a transaction is already open in this thread");
    }
    int rc = sq_exec(q, "BEGIN IMMEDIATE", err);
    if (rc != MC_OK) {
        sq_unlock(q);
        return rc;
    }
    q->in_txn = 1;
    return MC_OK; /* the lock stays held until commit or rollback */
}

static int sq_commit(void *be, struct mc_err *err) {
    struct sq *q = be;
    sq_lock(q);
    if (!q->in_txn) {
        sq_unlock(q);
        return mc_err_set(err, MC_EINVAL, "commit without a transaction");
    }
    int rc = sq_exec(q, "COMMIT", err);
    if (rc != MC_OK)
        sq_exec(q, "ROLLBACK", NULL);
    q->in_txn = 0;
    sq_unlock(q); /* the commit's own lock */
    sq_unlock(q); /* the lock begin took */
    return rc;
}

static void sq_rollback(void *be) {
    struct sq *q = be;
    sq_lock(q);
    if (q->in_txn) {
        sq_exec(q, "ROLLBACK", NULL);
        q->in_txn = 0;
        sq_unlock(q);
    }
    sq_unlock(q);
}

/* ---------------------------------------------------------------------------------------
 * meta */

static int sq_meta_get(void *be, const char *key, uint8_t **val, size_t *n, struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    *val = NULL;
    *n = 0;
    sq_lock(q);
    int rc = sq_prepare(q, "SELECT v FROM meta WHERE k = ?", &st, err);
    if (rc != MC_OK)
        goto out_unlock;
    bind_text(st, 1, key);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        size_t len = (size_t)sqlite3_column_bytes(st, 0);
        *val = mc_malloc(len);
        if (!*val)
            rc = mc_err_set(err, MC_ENOMEM, "meta %s: out of memory", key);
        else
            memcpy(*val, sqlite3_column_blob(st, 0), len), *n = len;
    } else if (src == SQLITE_DONE) {
        rc = mc_err_set(err, MC_ENOTFOUND, "meta %s not found", key);
    } else {
        rc = sq_fail(q, src, "meta get", err);
    }
    sq_release(q, st);
out_unlock:
    sq_unlock(q);
    return rc;
}

static int sq_meta_put(void *be, const char *key, const uint8_t *val, size_t n,
                       struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    sq_lock(q);
    int rc = sq_prepare(q, "INSERT OR REPLACE INTO meta(k, v) VALUES(?, ?)", &st, err);
    if (rc == MC_OK) {
        bind_text(st, 1, key);
        sqlite3_bind_blob(st, 2, val, (int)n, SQLITE_STATIC);
        rc = sq_done(q, st, "meta put", err);
    }
    sq_unlock(q);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Tenants */

static int sq_tenant_insert(void *be, const struct mc_store_tenant *t, const uint8_t *wrapped,
                            size_t n_wrapped, struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    sq_lock(q);
    int rc = sp_begin(q, err);
    if (rc != MC_OK)
        goto out_unlock;

    rc = sq_prepare(q, "INSERT INTO tenants(id, name, created_ms, meta) VALUES(?, ?, ?, ?)", &st,
                    err);
    if (rc == MC_OK) {
        bind_text(st, 1, t->id);
        bind_text(st, 2, t->name);
        sqlite3_bind_int64(st, 3, t->created_ms);
        bind_text(st, 4, t->meta ? t->meta : "{}");
        rc = sq_done(q, st, "tenant insert", err);
    }
    if (rc == MC_OK)
        rc = sq_prepare(q, "INSERT INTO tenant_keys(tenant_id, wrapped) VALUES(?, ?)", &st, err);
    if (rc == MC_OK) {
        bind_text(st, 1, t->id);
        sqlite3_bind_blob(st, 2, wrapped, (int)n_wrapped, SQLITE_STATIC);
        rc = sq_done(q, st, "tenant key insert", err);
    }
    rc = sp_end(q, rc, err);
out_unlock:
    sq_unlock(q);
    return rc;
}

/* Reads id, name, created_ms and meta from columns c0.. of the current row. */
static int read_tenant_cols(sqlite3_stmt *st, int c0, struct mc_store_tenant *out,
                            struct mc_err *err) {
    memset(out, 0, sizeof(*out));
    copy_text(out->id, sizeof(out->id), sqlite3_column_text(st, c0));
    copy_text(out->name, sizeof(out->name), sqlite3_column_text(st, c0 + 1));
    out->created_ms = sqlite3_column_int64(st, c0 + 2);
    const unsigned char *meta = sqlite3_column_text(st, c0 + 3);
    out->meta = mc_strdup(meta ? (const char *)meta : "{}");
    if (!out->meta)
        return mc_err_set(err, MC_ENOMEM, "tenant %s: out of memory", out->id);
    return MC_OK;
}

static int read_tenant_row(sqlite3_stmt *st, struct mc_store_tenant *out, struct mc_err *err) {
    return read_tenant_cols(st, 0, out, err);
}

static int sq_tenant_get(void *be, const char *id, const char *name, struct mc_store_tenant *out,
                         struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    memset(out, 0, sizeof(*out));
    sq_lock(q);
    int rc = sq_prepare(q,
                        id ? "SELECT id, name, created_ms, meta FROM tenants WHERE id = ?"
                           : "SELECT id, name, created_ms, meta FROM tenants WHERE name = ?",
                        &st, err);
    if (rc != MC_OK)
        goto out_unlock;
    bind_text(st, 1, id ? id : name);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        rc = read_tenant_row(st, out, err);
    else if (src == SQLITE_DONE)
        rc = mc_err_set(err, MC_ENOTFOUND, "tenant %s not found", id ? id : name);
    else
        rc = sq_fail(q, src, "tenant get", err);
    sq_release(q, st);
out_unlock:
    sq_unlock(q);
    return rc;
}

static int sq_tenant_list(void *be, struct mc_store_tenant **out, size_t *n, struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    struct mc_store_tenant *rows = NULL;
    size_t cap = 0, len = 0;
    *out = NULL;
    *n = 0;
    sq_lock(q);
    int rc =
        sq_prepare(q, "SELECT id, name, created_ms, meta FROM tenants ORDER BY name", &st, err);
    if (rc != MC_OK)
        goto out_unlock;
    int src;
    while (rc == MC_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
        rc = grow((void **)&rows, &cap, len + 1, sizeof(*rows), err);
        if (rc == MC_OK)
            rc = read_tenant_row(st, &rows[len], err);
        if (rc == MC_OK)
            len++;
    }
    if (rc == MC_OK && src != SQLITE_DONE)
        rc = sq_fail(q, src, "tenant list", err);
    sq_release(q, st);
out_unlock:
    sq_unlock(q);
    if (rc != MC_OK) {
        mc_store_tenant_list_free(rows, len);
        return rc;
    }
    *out = rows;
    *n = len;
    return MC_OK;
}

static int sq_tenant_update(void *be, const char *id, const char *name, const char *meta,
                            struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    sq_lock(q);
    int rc = sq_prepare(q,
                        "UPDATE tenants SET name = coalesce(?, name), meta = coalesce(?, meta) "
                        "WHERE id = ?",
                        &st, err);
    if (rc == MC_OK) {
        bind_text(st, 1, name);
        bind_text(st, 2, meta);
        bind_text(st, 3, id);
        rc = sq_done(q, st, "tenant update", err);
    }
    if (rc == MC_OK && sqlite3_changes(q->db) == 0)
        rc = mc_err_set(err, MC_ENOTFOUND, "tenant %s not found", id);
    sq_unlock(q);
    return rc;
}

static int sq_dk_get(void *be, const char *tenant_id, uint8_t out[MC_STORE_WRAPPED_DK_BYTES],
                     struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    sq_lock(q);
    int rc = sq_prepare(q, "SELECT wrapped FROM tenant_keys WHERE tenant_id = ?", &st, err);
    if (rc != MC_OK)
        goto out_unlock;
    bind_text(st, 1, tenant_id);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        if (sqlite3_column_bytes(st, 0) != MC_STORE_WRAPPED_DK_BYTES)
            rc = mc_err_set(err, MC_ECRYPTO, "tenant %s: wrapped data key has %d bytes, not %d",
                            tenant_id, sqlite3_column_bytes(st, 0), MC_STORE_WRAPPED_DK_BYTES);
        else
            memcpy(out, sqlite3_column_blob(st, 0), MC_STORE_WRAPPED_DK_BYTES);
    } else if (src == SQLITE_DONE) {
        rc = mc_err_set(err, MC_ENOTFOUND, "tenant %s not found", tenant_id);
    } else {
        rc = sq_fail(q, src, "data key get", err);
    }
    sq_release(q, st);
out_unlock:
    sq_unlock(q);
    return rc;
}

static int sq_dk_put(void *be, const char *tenant_id,
                     const uint8_t wrapped[MC_STORE_WRAPPED_DK_BYTES], struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    sq_lock(q);
    int rc = sq_prepare(q, "UPDATE tenant_keys SET wrapped = ? WHERE tenant_id = ?", &st, err);
    if (rc == MC_OK) {
        sqlite3_bind_blob(st, 1, wrapped, MC_STORE_WRAPPED_DK_BYTES, SQLITE_STATIC);
        bind_text(st, 2, tenant_id);
        rc = sq_done(q, st, "data key put", err);
    }
    if (rc == MC_OK && sqlite3_changes(q->db) == 0)
        rc = mc_err_set(err, MC_ENOTFOUND, "tenant %s has no data key", tenant_id);
    sq_unlock(q);
    return rc;
}

/* Runs one statement with a single text parameter. */
static int sq_exec1(struct sq *q, const char *sql, const char *arg, struct mc_err *err) {
    sqlite3_stmt *st;
    int rc = sq_prepare(q, sql, &st, err);
    if (rc != MC_OK)
        return rc;
    bind_text(st, 1, arg);
    return sq_done(q, st, sql, err);
}

/* True when a tenant row with this id exists (false on any error). */
static int tenant_exists(struct sq *q, const char *id) {
    sqlite3_stmt *st;
    if (sq_prepare(q, "SELECT 1 FROM tenants WHERE id = ?", &st, NULL) != MC_OK)
        return 0;
    bind_text(st, 1, id);
    int found = sqlite3_step(st) == SQLITE_ROW;
    sq_release(q, st);
    return found;
}

static int sq_dk_shred(void *be, const char *tenant_id, struct mc_err *err) {
    struct sq *q = be;
    sq_lock(q);
    if (q->in_txn) {
        sq_unlock(q);
        return mc_err_set(err, MC_EINVAL, "a tenant cannot be deleted inside a transaction");
    }
    /* FULL syncs the WAL at this commit: the shredding must survive a power loss. */
    int rc = sq_exec(q, "PRAGMA synchronous=FULL", err);
    if (rc == MC_OK)
        rc = sq_exec(q, "BEGIN IMMEDIATE", err);
    if (rc != MC_OK)
        goto out_unlock;

    /* Overwrite in place first, then delete: with secure_delete the freed cell is zeroed,
     * and the overwrite means no page image written after this point holds the key. */
    rc = sq_exec1(q,
                  "UPDATE tenant_keys SET wrapped = randomblob(length(wrapped)) "
                  "WHERE tenant_id = ?",
                  tenant_id, err);
    /* No key but a tenant row: an earlier delete shredded the key and stopped before the
     * purge; let this one finish the job. */
    if (rc == MC_OK && sqlite3_changes(q->db) == 0 && !tenant_exists(q, tenant_id))
        rc = mc_err_set(err, MC_ENOTFOUND, "tenant %s not found", tenant_id);
    if (rc == MC_OK)
        rc = sq_exec1(q, "DELETE FROM tenant_keys WHERE tenant_id = ?", tenant_id, err);
    if (rc == MC_OK)
        rc = sq_exec(q, "COMMIT", err);
    if (rc != MC_OK) {
        sq_exec(q, "ROLLBACK", NULL);
        goto out_unlock;
    }
    sq_exec(q, "PRAGMA synchronous=NORMAL", NULL);

    /* Older page images (with the key) may still sit in the WAL: copy the WAL into the
     * database and truncate it. Another process reading at this moment can stop the
     * truncation; then the frames are overwritten at a later checkpoint. */
    int n_log = 0, n_ckpt = 0;
    int src = sqlite3_wal_checkpoint_v2(q->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &n_log, &n_ckpt);
    if (src != SQLITE_OK)
        MC_LOG_WARN("store", "shred_checkpoint_incomplete",
                    "tenant=%s sqlite=%d wal_frames=%d checkpointed=%d", tenant_id, src, n_log,
                    n_ckpt);
out_unlock:
    sq_exec(q, "PRAGMA synchronous=NORMAL", NULL);
    sq_unlock(q);
    return rc;
}

static int sq_tenant_purge(void *be, const char *tenant_id, struct mc_err *err) {
    static const char *const sql[] = {
        "DELETE FROM objects WHERE tenant_id = ?", "DELETE FROM api_keys WHERE tenant_id = ?",
        "DELETE FROM usage WHERE tenant_id = ?",   "DELETE FROM tenant_keys WHERE tenant_id = ?",
        "DELETE FROM tenants WHERE id = ?",
    };
    struct sq *q = be;
    sq_lock(q);
    int rc = sp_begin(q, err);
    for (size_t i = 0; rc == MC_OK && i < sizeof(sql) / sizeof(sql[0]); i++)
        rc = sq_exec1(q, sql[i], tenant_id, err);
    rc = sp_end(q, rc, err);
    if (rc == MC_OK && !q->in_txn)
        sqlite3_wal_checkpoint_v2(q->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    sq_unlock(q);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * API keys */

static int sq_key_insert(void *be, const struct mc_store_key *key, struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    sq_lock(q);
    int rc = sq_prepare(q,
                        "INSERT INTO api_keys(prefix, tenant_id, hash, created_ms, revoked_ms) "
                        "VALUES(?, ?, ?, ?, ?)",
                        &st, err);
    if (rc == MC_OK) {
        bind_text(st, 1, key->prefix);
        bind_text(st, 2, key->tenant_id);
        sqlite3_bind_blob(st, 3, key->hash, MC_STORE_HASH_BYTES, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, key->created_ms);
        sqlite3_bind_int64(st, 5, key->revoked_ms);
        rc = sq_done(q, st, "key insert", err);
    }
    sq_unlock(q);
    return rc;
}

static void read_key_row(sqlite3_stmt *st, struct mc_store_key *out) {
    memset(out, 0, sizeof(*out));
    copy_text(out->prefix, sizeof(out->prefix), sqlite3_column_text(st, 0));
    copy_text(out->tenant_id, sizeof(out->tenant_id), sqlite3_column_text(st, 1));
    if (sqlite3_column_bytes(st, 2) == MC_STORE_HASH_BYTES)
        memcpy(out->hash, sqlite3_column_blob(st, 2), MC_STORE_HASH_BYTES);
    out->created_ms = sqlite3_column_int64(st, 3);
    out->revoked_ms = sqlite3_column_int64(st, 4);
}

static int sq_key_get(void *be, const char *prefix, struct mc_store_key *out, struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    sq_lock(q);
    int rc = sq_prepare(q,
                        "SELECT prefix, tenant_id, hash, created_ms, revoked_ms FROM api_keys "
                        "WHERE prefix = ?",
                        &st, err);
    if (rc != MC_OK)
        goto out_unlock;
    bind_text(st, 1, prefix);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        read_key_row(st, out);
    else if (src == SQLITE_DONE)
        rc = mc_err_set(err, MC_ENOTFOUND, "key %s not found", prefix);
    else
        rc = sq_fail(q, src, "key get", err);
    sq_release(q, st);
out_unlock:
    sq_unlock(q);
    return rc;
}

static int sq_key_lookup(void *be, const char *prefix, struct mc_store_key *key,
                         struct mc_store_tenant *tenant, struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    memset(tenant, 0, sizeof(*tenant));
    sq_lock(q);
    int rc = sq_prepare(q,
                        "SELECT k.prefix, k.tenant_id, k.hash, k.created_ms, k.revoked_ms, t.id, "
                        "t.name, t.created_ms, t.meta FROM api_keys k JOIN tenants t ON t.id = "
                        "k.tenant_id WHERE k.prefix = ?",
                        &st, err);
    if (rc != MC_OK)
        goto out_unlock;
    bind_text(st, 1, prefix);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        read_key_row(st, key);
        rc = read_tenant_cols(st, 5, tenant, err);
    } else if (src == SQLITE_DONE) {
        rc = mc_err_set(err, MC_ENOTFOUND, "key %s not found", prefix);
    } else {
        rc = sq_fail(q, src, "key lookup", err);
    }
    sq_release(q, st);
out_unlock:
    sq_unlock(q);
    return rc;
}

static int sq_key_list(void *be, const char *tenant_id, struct mc_store_key **out, size_t *n,
                       struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    struct mc_store_key *rows = NULL;
    size_t cap = 0, len = 0;
    *out = NULL;
    *n = 0;
    sq_lock(q);
    int rc = sq_prepare(q,
                        "SELECT prefix, tenant_id, hash, created_ms, revoked_ms FROM api_keys "
                        "WHERE tenant_id = ? ORDER BY created_ms, prefix",
                        &st, err);
    if (rc != MC_OK)
        goto out_unlock;
    bind_text(st, 1, tenant_id);
    int src;
    while (rc == MC_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
        rc = grow((void **)&rows, &cap, len + 1, sizeof(*rows), err);
        if (rc == MC_OK)
            read_key_row(st, &rows[len++]);
    }
    if (rc == MC_OK && src != SQLITE_DONE)
        rc = sq_fail(q, src, "key list", err);
    sq_release(q, st);
out_unlock:
    sq_unlock(q);
    if (rc != MC_OK) {
        mc_free(rows);
        return rc;
    }
    *out = rows;
    *n = len;
    return MC_OK;
}

static int sq_key_revoke(void *be, const char *tenant_id, const char *prefix, int64_t revoked_ms,
                         struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    sq_lock(q);
    int rc = sq_prepare(q,
                        "UPDATE api_keys SET revoked_ms = CASE WHEN revoked_ms = 0 THEN ? "
                        "ELSE revoked_ms END WHERE prefix = ? AND tenant_id = ?",
                        &st, err);
    if (rc == MC_OK) {
        sqlite3_bind_int64(st, 1, revoked_ms);
        bind_text(st, 2, prefix);
        bind_text(st, 3, tenant_id);
        rc = sq_done(q, st, "key revoke", err);
    }
    if (rc == MC_OK && sqlite3_changes(q->db) == 0)
        rc = mc_err_set(err, MC_ENOTFOUND, "tenant %s has no key %s", tenant_id, prefix);
    sq_unlock(q);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Usage */

static int sq_usage_add(void *be, const struct mc_store_usage *u, struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    sq_lock(q);
    int rc = sq_prepare(q,
                        "INSERT INTO usage(tenant_id, day, requests, prompt_tokens, "
                        "completion_tokens) VALUES(?, ?, ?, ?, ?) ON CONFLICT(tenant_id, day) "
                        "DO UPDATE SET requests = requests + excluded.requests, "
                        "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                        "completion_tokens = completion_tokens + excluded.completion_tokens",
                        &st, err);
    if (rc == MC_OK) {
        bind_text(st, 1, u->tenant_id);
        sqlite3_bind_int64(st, 2, u->day);
        sqlite3_bind_int64(st, 3, u->requests);
        sqlite3_bind_int64(st, 4, u->prompt_tokens);
        sqlite3_bind_int64(st, 5, u->completion_tokens);
        rc = sq_done(q, st, "usage add", err);
    }
    sq_unlock(q);
    return rc;
}

static int sq_usage_list(void *be, const char *tenant_id, int64_t day_from, int64_t day_to,
                         struct mc_store_usage **out, size_t *n, struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    struct mc_store_usage *rows = NULL;
    size_t cap = 0, len = 0;
    *out = NULL;
    *n = 0;
    sq_lock(q);
    int rc = sq_prepare(q,
                        "SELECT tenant_id, day, requests, prompt_tokens, completion_tokens "
                        "FROM usage WHERE (?1 IS NULL OR tenant_id = ?1) AND day BETWEEN ?2 "
                        "AND ?3 ORDER BY tenant_id, day",
                        &st, err);
    if (rc != MC_OK)
        goto out_unlock;
    bind_text(st, 1, tenant_id);
    sqlite3_bind_int64(st, 2, day_from);
    sqlite3_bind_int64(st, 3, day_to);
    int src;
    while (rc == MC_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
        rc = grow((void **)&rows, &cap, len + 1, sizeof(*rows), err);
        if (rc != MC_OK)
            break;
        struct mc_store_usage *u = &rows[len++];
        memset(u, 0, sizeof(*u));
        copy_text(u->tenant_id, sizeof(u->tenant_id), sqlite3_column_text(st, 0));
        u->day = sqlite3_column_int64(st, 1);
        u->requests = sqlite3_column_int64(st, 2);
        u->prompt_tokens = sqlite3_column_int64(st, 3);
        u->completion_tokens = sqlite3_column_int64(st, 4);
    }
    if (rc == MC_OK && src != SQLITE_DONE)
        rc = sq_fail(q, src, "usage list", err);
    sq_release(q, st);
out_unlock:
    sq_unlock(q);
    if (rc != MC_OK) {
        mc_free(rows);
        return rc;
    }
    *out = rows;
    *n = len;
    return MC_OK;
}

/* ---------------------------------------------------------------------------------------
 * Objects */

static void bind_obj_key(sqlite3_stmt *st, const char *tenant_id, const char *kind,
                         const char *key) {
    bind_text(st, 1, tenant_id);
    bind_text(st, 2, kind);
    bind_text(st, 3, key);
}

static int sq_obj_put(void *be, const char *tenant_id, const char *kind, const char *key,
                      const uint8_t *sealed_id, size_t n_id, const uint8_t *sealed, size_t n,
                      struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    if (n > INT_MAX || n_id > INT_MAX)
        return mc_err_set(err, MC_ENOMEM, "object of %zu bytes exceeds the sqlite limit", n);
    sq_lock(q);
    int rc = sq_prepare(q,
                        "INSERT INTO objects(tenant_id, kind, obj_key, sealed_id, sealed) "
                        "VALUES(?, ?, ?, ?, ?) ON CONFLICT(tenant_id, kind, obj_key) DO UPDATE "
                        "SET sealed_id = excluded.sealed_id, sealed = excluded.sealed",
                        &st, err);
    if (rc == MC_OK) {
        bind_obj_key(st, tenant_id, kind, key);
        sqlite3_bind_blob(st, 4, sealed_id, (int)n_id, SQLITE_STATIC);
        sqlite3_bind_blob(st, 5, sealed, (int)n, SQLITE_STATIC);
        rc = sq_done(q, st, "object put", err);
    }
    sq_unlock(q);
    return rc;
}

static int sq_obj_get(void *be, const char *tenant_id, const char *kind, const char *key,
                      uint8_t **sealed, size_t *n, struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    *sealed = NULL;
    *n = 0;
    sq_lock(q);
    int rc = sq_prepare(q,
                        "SELECT sealed FROM objects WHERE tenant_id = ? AND kind = ? AND "
                        "obj_key = ?",
                        &st, err);
    if (rc != MC_OK)
        goto out_unlock;
    bind_obj_key(st, tenant_id, kind, key);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        size_t len = (size_t)sqlite3_column_bytes(st, 0);
        uint8_t *buf = mc_malloc(len);
        if (!buf) {
            rc = mc_err_set(err, MC_ENOMEM, "object of %zu bytes: out of memory", len);
        } else {
            memcpy(buf, sqlite3_column_blob(st, 0), len);
            *sealed = buf;
            *n = len;
        }
    } else if (src == SQLITE_DONE) {
        rc = mc_err_set(err, MC_ENOTFOUND, "%s object not found", kind);
    } else {
        rc = sq_fail(q, src, "object get", err);
    }
    sq_release(q, st);
out_unlock:
    sq_unlock(q);
    return rc;
}

static int sq_obj_list(void *be, const char *tenant_id, const char *kind,
                       struct mc_store_obj_ref **out, size_t *n, struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    struct mc_store_obj_ref *rows = NULL;
    size_t cap = 0, len = 0;
    *out = NULL;
    *n = 0;
    sq_lock(q);
    int rc = sq_prepare(q,
                        "SELECT obj_key, sealed_id FROM objects WHERE tenant_id = ? AND "
                        "kind = ? ORDER BY obj_key",
                        &st, err);
    if (rc != MC_OK)
        goto out_unlock;
    bind_text(st, 1, tenant_id);
    bind_text(st, 2, kind);
    int src;
    while (rc == MC_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
        rc = grow((void **)&rows, &cap, len + 1, sizeof(*rows), err);
        if (rc != MC_OK)
            break;
        struct mc_store_obj_ref *r = &rows[len];
        memset(r, 0, sizeof(*r));
        copy_text(r->key, sizeof(r->key), sqlite3_column_text(st, 0));
        r->n_sealed_id = (size_t)sqlite3_column_bytes(st, 1);
        r->sealed_id = mc_malloc(r->n_sealed_id ? r->n_sealed_id : 1);
        if (!r->sealed_id) {
            rc = mc_err_set(err, MC_ENOMEM, "object list: out of memory");
            break;
        }
        memcpy(r->sealed_id, sqlite3_column_blob(st, 1), r->n_sealed_id);
        len++;
    }
    if (rc == MC_OK && src != SQLITE_DONE)
        rc = sq_fail(q, src, "object list", err);
    sq_release(q, st);
out_unlock:
    sq_unlock(q);
    if (rc != MC_OK) {
        mc_store_obj_refs_free(rows, len);
        return rc;
    }
    *out = rows;
    *n = len;
    return MC_OK;
}

static int sq_obj_delete(void *be, const char *tenant_id, const char *kind, const char *key,
                         struct mc_err *err) {
    struct sq *q = be;
    sqlite3_stmt *st;
    sq_lock(q);
    int rc = sq_prepare(q, "DELETE FROM objects WHERE tenant_id = ? AND kind = ? AND obj_key = ?",
                        &st, err);
    if (rc == MC_OK) {
        bind_obj_key(st, tenant_id, kind, key);
        rc = sq_done(q, st, "object delete", err);
    }
    if (rc == MC_OK && sqlite3_changes(q->db) == 0)
        rc = mc_err_set(err, MC_ENOTFOUND, "%s object not found", kind);
    sq_unlock(q);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Open */

static const struct mc_store_ops sqlite_ops = {
    .name = "sqlite",
    .close = sq_close,
    .begin = sq_begin,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .meta_get = sq_meta_get,
    .meta_put = sq_meta_put,
    .tenant_insert = sq_tenant_insert,
    .tenant_get = sq_tenant_get,
    .tenant_list = sq_tenant_list,
    .tenant_update = sq_tenant_update,
    .dk_get = sq_dk_get,
    .dk_put = sq_dk_put,
    .dk_shred = sq_dk_shred,
    .tenant_purge = sq_tenant_purge,
    .key_insert = sq_key_insert,
    .key_get = sq_key_get,
    .key_lookup = sq_key_lookup,
    .key_list = sq_key_list,
    .key_revoke = sq_key_revoke,
    .usage_add = sq_usage_add,
    .usage_list = sq_usage_list,
    .obj_put = sq_obj_put,
    .obj_get = sq_obj_get,
    .obj_list = sq_obj_list,
    .obj_delete = sq_obj_delete,
};

/* Creates dir (mode 0700) if missing; refuses a path that exists and is not a directory. */
static int ensure_dir(const char *dir, struct mc_err *err) {
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return mc_err_set(err, MC_EINVAL, "data directory %s is not a directory", dir);
        return MC_OK;
    }
    if (mkdir(dir, 0700) != 0)
        return mc_err_set(err, MC_EIO, "cannot create data directory %s: %s", dir, strerror(errno));
    return MC_OK;
}

int mc_store_sqlite_open(const char *dir, const struct mc_store_ops **ops, void **be,
                         struct mc_err *err) {
    *be = NULL;
    int rc = ensure_dir(dir, err);
    if (rc != MC_OK)
        return rc;

    struct sq *q = mc_calloc(1, sizeof(*q));
    if (!q)
        return mc_err_set(err, MC_ENOMEM, "cannot allocate the sqlite store");
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&q->lock, &attr);
    pthread_mutexattr_destroy(&attr);

    char path[4096];
    int len = snprintf(path, sizeof(path), "%s/%s", dir, DB_NAME);
    if (len < 0 || (size_t)len >= sizeof(path)) {
        sq_close(q);
        return mc_err_set(err, MC_EINVAL, "data directory path is too long (%zu bytes)",
                          strlen(dir));
    }
    /* FULLMUTEX is not needed: our own mutex serialises every use of the connection. */
    int src = sqlite3_open_v2(
        path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (src != SQLITE_OK) {
        rc = mc_err_set(err, MC_EIO, "cannot open %s: %s", path,
                        q->db ? sqlite3_errmsg(q->db) : sqlite3_errstr(src));
        sq_close(q);
        return rc;
    }
    sqlite3_busy_timeout(q->db, BUSY_TIMEOUT_MS);
    sqlite3_extended_result_codes(q->db, 1);
    chmod(path, 0600);

    /* WAL for concurrent readers; NORMAL sync is durable across process crashes and loses
     * at most the last transactions on power loss; secure_delete zeroes freed content; a
     * WAL grown by big objects is cut back to 64 MiB after each checkpoint. */
    rc = sq_exec(q,
                 "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
                 "PRAGMA secure_delete=ON; PRAGMA journal_size_limit=67108864;",
                 err);
    if (rc == MC_OK)
        rc = sq_exec(q, SCHEMA, err);
    if (rc == MC_OK) {
        char ver[64];
        snprintf(ver, sizeof(ver), "INSERT OR IGNORE INTO meta(k, v) VALUES('schema', %d)",
                 SCHEMA_VERSION);
        rc = sq_exec(q, ver, err);
    }
    if (rc != MC_OK) {
        mc_err_prefix(err, "%s", path);
        sq_close(q);
        return rc;
    }
    *ops = &sqlite_ops;
    *be = q;
    return MC_OK;
}
