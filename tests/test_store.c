/* test_store.c - the store: master keys, sealing, plaintext never on disk, ciphertexts
 * bound to their tenant and object, crypto-shredding, transactions. Rows are edited with
 * the sqlite3 API directly, as an attacker with the files would. */
#include "base/err.h"
#include "base/mem.h"
#include "store/crypto.h"
#include "store/store.h"
#include "test_util.h"

#include <dirent.h>
#include <pthread.h>
#include <sqlite3.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A strong key (hex) and the same key in base64. */
static const char KEY_HEX[] = "8f3a1c5e7d9b2f4a6c8e0d1b3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f13";
static const char OTHER_KEY_HEX[] =
    "11f3a1c5e7d9b2f4a6c8e0d1b3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f2";

struct fx {
    char dir[64];
    struct mc_master_key *mk;
    struct mc_store *s;
};

static void rm_rf(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char path[512];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static int setup(void **state) {
    struct fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/mcai-test-store-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    struct mc_err err = {0};
    assert_int_equal(mc_master_key_parse(KEY_HEX, &f->mk, &err), MC_OK);
    int rc = mc_store_open(f->dir, f->mk, &f->s, &err);
    if (rc != MC_OK)
        fail_msg("open: %s", err.msg);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    struct fx *f = *state;
    mc_store_close(f->s);
    mc_master_key_free(f->mk);
    rm_rf(f->dir);
    free(f);
    return 0;
}

/* Counts the files under dir whose bytes contain needle (n bytes); every file is read. */
static int files_containing(const char *dir, const void *needle, size_t n, int *n_files) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    int hits = 0;
    *n_files = 0;
    while ((e = readdir(d))) {
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        (*n_files)++;
        FILE *fp = fopen(path, "rb");
        assert_non_null(fp);
        char *buf = malloc((size_t)st.st_size + 1);
        size_t got = fread(buf, 1, (size_t)st.st_size, fp);
        fclose(fp);
        if (got >= n && memmem(buf, got, needle, n))
            hits++;
        free(buf);
    }
    closedir(d);
    return hits;
}

static sqlite3 *raw_open(const char *dir) {
    char path[512];
    snprintf(path, sizeof(path), "%s/catalog.db", dir);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static void raw_exec(sqlite3 *db, const char *sql) {
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("sql %s: %s", sql, msg);
}

/* ---------------------------------------------------------------------------------------
 * Master keys */

static void test_master_key_parse_hex_and_base64_agree(void **state) {
    (void)state;
    struct mc_err err = {0};
    struct mc_master_key *a, *b, *c;
    /* The same 32 bytes as KEY_HEX, in standard base64 and URL-safe without padding. */
    const char *b64 = "jzocXn2bL0psjg0bP1p8nitNb4oMHjtdf5osTmuNDxM=";
    const char *b64url = "jzocXn2bL0psjg0bP1p8nitNb4oMHjtdf5osTmuNDxM";
    assert_int_equal(mc_master_key_parse(KEY_HEX, &a, &err), MC_OK);
    assert_int_equal(mc_master_key_parse(b64, &b, &err), MC_OK);
    assert_int_equal(mc_master_key_parse(b64url, &c, &err), MC_OK);
    assert_memory_equal(mc_master_key_wrap_key(a), mc_master_key_wrap_key(b), 32);
    assert_memory_equal(mc_master_key_pepper(a), mc_master_key_pepper(c), 32);
    /* Subkeys differ from each other. */
    assert_memory_not_equal(mc_master_key_wrap_key(a), mc_master_key_pepper(a), 32);
    mc_master_key_free(a);
    mc_master_key_free(b);
    mc_master_key_free(c);
}

static void test_master_key_rejects_weak_and_malformed(void **state) {
    (void)state;
    struct mc_err err = {0};
    struct mc_master_key *mk = (void *)1;

    char zeros[65];
    memset(zeros, '0', 64);
    zeros[64] = 0;
    assert_int_equal(mc_master_key_parse(zeros, &mk, &err), MC_EINVAL);
    assert_null(mk);
    assert_non_null(strstr(err.msg, "all zero"));

    /* 32 bytes cycling through 8 values: 8 distinct bytes. */
    char weak[65];
    for (int i = 0; i < 32; i++)
        snprintf(weak + 2 * i, 3, "%02x", 0x41 + i % 8);
    assert_int_equal(mc_master_key_parse(weak, &mk, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "8 distinct byte values, at least 16"));

    assert_int_equal(mc_master_key_parse("abcd", &mk, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "decodes to 3 bytes, expected 32"));
    assert_int_equal(mc_master_key_parse("not a key!", &mk, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "neither 64 hex digits nor base64"));
    assert_int_equal(mc_master_key_parse("   ", &mk, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "empty"));
    /* 31 bytes in hex. */
    assert_int_equal(mc_master_key_parse(KEY_HEX + 2, &mk, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "62 hex digits, expected 64"));
}

static void test_master_key_file_mode_and_location(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    struct mc_master_key *mk;
    char outside[] = "/tmp/mcai-test-key-XXXXXX";
    int fd = mkstemp(outside);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, KEY_HEX, strlen(KEY_HEX)), (int)strlen(KEY_HEX));
    close(fd);

    chmod(outside, 0644);
    assert_int_equal(mc_master_key_load(outside, f->dir, &mk, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "readable by group or others (mode 0644)"));
    chmod(outside, 0600);
    assert_int_equal(mc_master_key_load(outside, f->dir, &mk, &err), MC_OK);
    assert_memory_equal(mc_master_key_wrap_key(mk), mc_master_key_wrap_key(f->mk), 32);
    mc_master_key_free(mk);
    unlink(outside);

    char inside[512];
    snprintf(inside, sizeof(inside), "%s/master.key", f->dir);
    FILE *fp = fopen(inside, "w");
    fputs(KEY_HEX, fp);
    fclose(fp);
    chmod(inside, 0600);
    assert_int_equal(mc_master_key_load(inside, f->dir, &mk, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "inside the data directory"));
    unlink(inside);

    setenv(MC_MASTER_KEY_ENV, "", 1);
    assert_int_equal(mc_master_key_load(NULL, f->dir, &mk, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "no master key: set MCAI_MASTER_KEY"));
    unsetenv(MC_MASTER_KEY_ENV);
}

static void test_store_refuses_other_master_key(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    struct mc_master_key *other;
    struct mc_store *s2 = (void *)1;
    assert_int_equal(mc_master_key_parse(OTHER_KEY_HEX, &other, &err), MC_OK);
    assert_int_equal(mc_store_open(f->dir, other, &s2, &err), MC_EPERM);
    assert_null(s2);
    assert_non_null(strstr(err.msg, "master key does not match"));
    mc_master_key_free(other);
}

/* ---------------------------------------------------------------------------------------
 * Sealed objects */

static void test_obj_roundtrip_list_delete(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    assert_int_equal(mc_store_tenant_insert(f->s, "t_a", "alpha", 1, NULL, &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "conv", "c2", "hello", 5, &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "conv", "c1", "", 0, &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "doc", "d1", "x", 1, &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "conv", "c2", "bye!", 4, &err), MC_OK);

    void *data;
    size_t n;
    assert_int_equal(mc_store_obj_get(f->s, "t_a", "conv", "c2", &data, &n, &err), MC_OK);
    assert_int_equal(n, 4);
    assert_string_equal(data, "bye!"); /* NUL-terminated */
    mc_free(data);
    assert_int_equal(mc_store_obj_get(f->s, "t_a", "conv", "c1", &data, &n, &err), MC_OK);
    assert_int_equal(n, 0);
    mc_free(data);

    char **ids;
    assert_int_equal(mc_store_obj_list(f->s, "t_a", "conv", &ids, &n, &err), MC_OK);
    assert_int_equal(n, 2);
    assert_string_equal(ids[0], "c1");
    assert_string_equal(ids[1], "c2");
    mc_store_obj_list_free(ids, n);

    assert_int_equal(mc_store_obj_delete(f->s, "t_a", "conv", "c1", &err), MC_OK);
    assert_int_equal(mc_store_obj_delete(f->s, "t_a", "conv", "c1", &err), MC_ENOTFOUND);
    assert_int_equal(mc_store_obj_get(f->s, "t_a", "conv", "c1", &data, &n, &err), MC_ENOTFOUND);
    assert_null(data);
    /* Objects of an unknown tenant cannot be written. */
    assert_int_equal(mc_store_obj_put(f->s, "t_zz", "conv", "c1", "x", 1, &err), MC_ENOTFOUND);
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "conv", "", "x", 1, &err), MC_EINVAL);
    assert_string_equal(err.msg, "object id is empty");
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "bad kind", "x", "x", 1, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "object kind has a byte 0x20 at offset 3"));
}

static void test_obj_large_blob_roundtrip(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    size_t n = 12u << 20; /* 12 MiB */
    unsigned char *big = malloc(n);
    for (size_t i = 0; i < n; i++)
        big[i] = (unsigned char)(i * 2654435761u >> 13);
    assert_int_equal(mc_store_tenant_insert(f->s, "t_a", "alpha", 1, NULL, &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "adapter", "lora-1", big, n, &err), MC_OK);
    void *data;
    size_t got;
    assert_int_equal(mc_store_obj_get(f->s, "t_a", "adapter", "lora-1", &data, &got, &err), MC_OK);
    assert_int_equal(got, n);
    assert_memory_equal(data, big, n);
    mc_free(data);
    free(big);
}

static const char SECRET_FRONT[] = "You are the Zanzibar-7781 assistant; never reveal quux.";
static const char SECRET_CONV[] = "my account number is 4417-1234-5678-9113 and pin 8842";
static const char SECRET_ID[] = "merger-talks-with-Globex-2027";

static void test_known_plaintext_appears_nowhere_on_disk(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    assert_int_equal(mc_store_tenant_insert(f->s, "t_a", "alpha", 1, NULL, &err), MC_OK);
    assert_int_equal(
        mc_store_obj_put(f->s, "t_a", "front", "1", SECRET_FRONT, strlen(SECRET_FRONT), &err),
        MC_OK);
    assert_int_equal(
        mc_store_obj_put(f->s, "t_a", "conv", SECRET_ID, SECRET_CONV, strlen(SECRET_CONV), &err),
        MC_OK);

    /* While open: catalog.db, -wal and -shm all exist and are all scanned. */
    int n_files = 0;
    assert_int_equal(files_containing(f->dir, SECRET_FRONT, strlen(SECRET_FRONT), &n_files), 0);
    assert_int_equal(n_files, 3);
    assert_int_equal(files_containing(f->dir, SECRET_CONV, strlen(SECRET_CONV), &n_files), 0);
    /* A short distinctive piece of each, too. */
    assert_int_equal(files_containing(f->dir, "Zanzibar", 8, &n_files), 0);
    assert_int_equal(files_containing(f->dir, "4417-1234", 9, &n_files), 0);
    /* Object ids are not stored in clear either. */
    assert_int_equal(files_containing(f->dir, SECRET_ID, strlen(SECRET_ID), &n_files), 0);
    /* Sanity check of the scanner: the tenant's name is stored in clear and is found. */
    assert_true(files_containing(f->dir, "alpha", 5, &n_files) >= 1);

    mc_store_close(f->s);
    f->s = NULL;
    assert_int_equal(files_containing(f->dir, SECRET_FRONT, strlen(SECRET_FRONT), &n_files), 0);
    assert_int_equal(files_containing(f->dir, SECRET_CONV, strlen(SECRET_CONV), &n_files), 0);
    assert_int_equal(files_containing(f->dir, SECRET_ID, strlen(SECRET_ID), &n_files), 0);
    assert_int_equal(mc_store_open(f->dir, f->mk, &f->s, &err), MC_OK);
    void *data;
    size_t n;
    assert_int_equal(mc_store_obj_get(f->s, "t_a", "conv", SECRET_ID, &data, &n, &err), MC_OK);
    assert_int_equal(n, strlen(SECRET_CONV));
    assert_memory_equal(data, SECRET_CONV, n);
    mc_free(data);
}

static void expect_crypto_fail(struct fx *f, const char *tenant, const char *kind, const char *id) {
    struct mc_err err = {0};
    void *data = (void *)1;
    size_t n = 7;
    assert_int_equal(mc_store_obj_get(f->s, tenant, kind, id, &data, &n, &err), MC_ECRYPTO);
    assert_null(data);
    assert_int_equal(n, 0);
    assert_non_null(strstr(err.msg, "failed authentication"));
}

static void test_swapped_ciphertexts_fail_to_open(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    assert_int_equal(mc_store_tenant_insert(f->s, "t_a", "alpha", 1, NULL, &err), MC_OK);
    assert_int_equal(mc_store_tenant_insert(f->s, "t_b", "beta", 1, NULL, &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "conv", "c1", "A one", 5, &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "conv", "c2", "A two", 5, &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "doc", "c1", "A doc", 5, &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_b", "conv", "c1", "B one", 5, &err), MC_OK);

    /* Rows are found by rowid (1: A conv c1, 2: A conv c2, 3: A doc c1, 4: B conv c1):
     * the database holds only keyed hashes of object ids, as an attacker would see. */
    sqlite3 *db = raw_open(f->dir);
    /* A's ciphertext of c1 copied over B's c1: other tenant, same kind and id. */
    raw_exec(db, "UPDATE objects SET sealed = (SELECT sealed FROM objects WHERE rowid = 1)"
                 " WHERE rowid = 4");
    expect_crypto_fail(f, "t_b", "conv", "c1");
    /* A's c1 and c2 ciphertexts swapped: same tenant and kind, other object id. */
    raw_exec(db, "CREATE TEMP TABLE sw AS SELECT rowid AS r, sealed AS s, sealed_id AS i FROM"
                 " objects WHERE rowid IN (1, 2)");
    raw_exec(db, "UPDATE objects SET sealed = (SELECT s FROM sw WHERE r = 3 - objects.rowid)"
                 " WHERE rowid IN (1, 2)");
    expect_crypto_fail(f, "t_a", "conv", "c1");
    expect_crypto_fail(f, "t_a", "conv", "c2");
    /* A's conv c2 ciphertext in A's doc c1: same tenant and id, other kind. */
    raw_exec(db, "UPDATE objects SET sealed = (SELECT sealed FROM objects WHERE rowid = 1)"
                 " WHERE rowid = 3");
    expect_crypto_fail(f, "t_a", "doc", "c1");
    /* Sealed ids swapped: listing refuses rather than returning a wrong id. */
    raw_exec(db, "UPDATE objects SET sealed_id = (SELECT i FROM sw WHERE r = 3 - objects.rowid)"
                 " WHERE rowid IN (1, 2)");
    char **ids;
    size_t n;
    assert_int_equal(mc_store_obj_list(f->s, "t_a", "conv", &ids, &n, &err), MC_ECRYPTO);
    assert_null(ids);
    assert_non_null(strstr(err.msg, "conv object list: sealed data failed authentication"));
    /* A row moved to another tenant by changing its tenant_id column is not even found:
     * B's key hashes the id to another row key. */
    raw_exec(db, "UPDATE objects SET tenant_id = 't_b' WHERE rowid = 3");
    void *data;
    assert_int_equal(mc_store_obj_get(f->s, "t_b", "doc", "c1", &data, &n, &err), MC_ENOTFOUND);
    /* The same move for a wrapped data key: B gets A's wrapped key. */
    raw_exec(db, "UPDATE tenant_keys SET wrapped = (SELECT wrapped FROM tenant_keys WHERE"
                 " tenant_id='t_a') WHERE tenant_id='t_b'");
    assert_int_equal(mc_store_obj_get(f->s, "t_b", "conv", "c1", &data, &n, &err), MC_ECRYPTO);
    assert_non_null(strstr(err.msg, "tenant t_b data key"));
    /* One changed byte in a fresh ciphertext (0xff, or 0x00 where it already was 0xff:
     * with a random nonce that happens once in 256 runs). */
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "conv", "c1", "A one", 5, &err), MC_OK);
    assert_int_equal(mc_store_obj_get(f->s, "t_a", "conv", "c1", &data, &n, &err), MC_OK);
    mc_free(data);
    raw_exec(db, "UPDATE objects SET sealed = CAST(substr(sealed, 1, 30) ||"
                 " CASE WHEN substr(sealed, 31, 1) = X'ff' THEN X'00' ELSE X'ff' END ||"
                 " substr(sealed, 32) AS BLOB) WHERE rowid = 1");
    expect_crypto_fail(f, "t_a", "conv", "c1");
    sqlite3_close(db);
}

static void test_delete_shreds_data_key(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    assert_int_equal(mc_store_tenant_insert(f->s, "t_a", "alpha", 1, NULL, &err), MC_OK);
    assert_int_equal(mc_store_tenant_insert(f->s, "t_b", "beta", 1, NULL, &err), MC_OK);
    assert_int_equal(
        mc_store_obj_put(f->s, "t_a", "conv", "c1", SECRET_CONV, strlen(SECRET_CONV), &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_b", "conv", "c1", "kept", 4, &err), MC_OK);

    /* Keep copies of A's wrapped key and ciphertext, as a backup of the files would. */
    sqlite3 *db = raw_open(f->dir);
    sqlite3_stmt *st;
    uint8_t wrapped[128], sealed[256];
    int n_wrapped, n_sealed;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT (SELECT wrapped FROM tenant_keys WHERE "
                                        "tenant_id='t_a'), (SELECT sealed FROM objects WHERE "
                                        "tenant_id='t_a')",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    n_wrapped = sqlite3_column_bytes(st, 0);
    n_sealed = sqlite3_column_bytes(st, 1);
    assert_int_equal(n_wrapped, 32 + MC_CRYPTO_OVERHEAD);
    memcpy(wrapped, sqlite3_column_blob(st, 0), (size_t)n_wrapped);
    memcpy(sealed, sqlite3_column_blob(st, 1), (size_t)n_sealed);
    sqlite3_finalize(st);
    sqlite3_close(db);
    int n_files;
    assert_true(files_containing(f->dir, wrapped, (size_t)n_wrapped, &n_files) >= 1);

    assert_int_equal(mc_store_tenant_delete(f->s, "t_a", &err), MC_OK);
    assert_int_equal(mc_store_tenant_delete(f->s, "t_a", &err), MC_ENOTFOUND);

    /* The wrapped key and the ciphertext are gone from every file under DIR. */
    assert_int_equal(files_containing(f->dir, wrapped, (size_t)n_wrapped, &n_files), 0);
    assert_int_equal(files_containing(f->dir, sealed, (size_t)n_sealed, &n_files), 0);

    /* Put the ciphertext back under a recreated tenant of the same id: the new tenant has
     * a new data key, so even with the master key the old bytes do not open. */
    void *data;
    size_t n;
    assert_int_equal(mc_store_obj_get(f->s, "t_a", "conv", "c1", &data, &n, &err), MC_ENOTFOUND);
    assert_int_equal(mc_store_tenant_insert(f->s, "t_a", "alpha", 2, NULL, &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "conv", "c1", "new", 3, &err), MC_OK);
    db = raw_open(f->dir);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "UPDATE objects SET sealed = ? WHERE tenant_id ="
                                        " 't_a'",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_blob(st, 1, sealed, n_sealed, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    assert_int_equal(sqlite3_changes(db), 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
    expect_crypto_fail(f, "t_a", "conv", "c1");

    /* The other tenant is untouched. */
    assert_int_equal(mc_store_obj_get(f->s, "t_b", "conv", "c1", &data, &n, &err), MC_OK);
    assert_memory_equal(data, "kept", 4);
    mc_free(data);
}

static void test_delete_finishes_after_an_interrupted_delete(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    assert_int_equal(mc_store_tenant_insert(f->s, "t_a", "alpha", 1, NULL, &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "conv", "c1", "x", 1, &err), MC_OK);
    /* As if a delete stopped after shredding the key: the rest is still there. */
    sqlite3 *db = raw_open(f->dir);
    raw_exec(db, "DELETE FROM tenant_keys WHERE tenant_id = 't_a'");
    sqlite3_close(db);
    void *data;
    size_t n;
    assert_int_equal(mc_store_obj_get(f->s, "t_a", "conv", "c1", &data, &n, &err), MC_ENOTFOUND);
    assert_int_equal(mc_store_tenant_delete(f->s, "t_a", &err), MC_OK);
    struct mc_store_tenant t;
    assert_int_equal(mc_store_tenant_get(f->s, "t_a", &t, &err), MC_ENOTFOUND);
    db = raw_open(f->dir);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM objects", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static void test_rekey_moves_data_to_a_new_master_key(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    assert_int_equal(mc_store_tenant_insert(f->s, "t_a", "alpha", 1, NULL, &err), MC_OK);
    assert_int_equal(mc_store_tenant_insert(f->s, "t_b", "beta", 1, NULL, &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "conv", "c1", "alpha data", 10, &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_b", "doc", "d1", "beta data", 9, &err), MC_OK);
    uint8_t h_before[32], h_after[32];
    mc_store_hash_secret(f->s, "mcai_some_secret", h_before);

    struct mc_master_key *other;
    assert_int_equal(mc_master_key_parse(OTHER_KEY_HEX, &other, &err), MC_OK);
    size_t n = 0;
    assert_int_equal(mc_store_rekey(f->s, other, &n, &err), MC_OK);
    assert_int_equal(n, 2);
    void *data;
    size_t len;
    assert_int_equal(mc_store_obj_get(f->s, "t_a", "conv", "c1", &data, &len, &err), MC_OK);
    assert_memory_equal(data, "alpha data", 10);
    mc_free(data);

    /* The old key no longer opens the directory; the new one does, with the same data and
     * the same API-key hashes (the pepper moved with the data keys). */
    mc_store_close(f->s);
    f->s = NULL;
    struct mc_store *s2 = NULL;
    assert_int_equal(mc_store_open(f->dir, f->mk, &s2, &err), MC_EPERM);
    assert_int_equal(mc_store_open(f->dir, other, &s2, &err), MC_OK);
    assert_int_equal(mc_store_obj_get(s2, "t_b", "doc", "d1", &data, &len, &err), MC_OK);
    assert_memory_equal(data, "beta data", 9);
    mc_free(data);
    mc_store_hash_secret(s2, "mcai_some_secret", h_after);
    assert_memory_equal(h_before, h_after, 32);
    uint8_t h_new_pepper[32];
    mc_crypto_hash_keyed(mc_master_key_pepper(other), "mcai_some_secret", 16, h_new_pepper);
    assert_memory_not_equal(h_after, h_new_pepper, 32);

    /* The teardown closes f->s with f->mk: hand it the new store and key. */
    mc_master_key_free(f->mk);
    f->mk = other;
    f->s = s2;
}

/* ---------------------------------------------------------------------------------------
 * Catalog */

static void test_tenant_insert_duplicate_and_update(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    assert_int_equal(mc_store_tenant_insert(f->s, "t_a", "alpha", 5, "{\"x\":1}", &err), MC_OK);
    assert_int_equal(mc_store_tenant_insert(f->s, "t_b", "alpha", 5, NULL, &err), MC_EEXIST);
    assert_non_null(strstr(err.msg, "name 'alpha' already exists"));
    assert_int_equal(mc_store_tenant_insert(f->s, "t_a", "other", 5, NULL, &err), MC_EEXIST);
    assert_int_equal(mc_store_tenant_insert(f->s, "t_b", "beta", 6, NULL, &err), MC_OK);
    assert_int_equal(mc_store_tenant_update(f->s, "t_b", "alpha", NULL, &err), MC_EEXIST);
    assert_int_equal(mc_store_tenant_update(f->s, "t_b", "gamma", "{\"y\":2}", &err), MC_OK);
    assert_int_equal(mc_store_tenant_update(f->s, "t_q", "q", NULL, &err), MC_ENOTFOUND);

    struct mc_store_tenant t;
    assert_int_equal(mc_store_tenant_get_by_name(f->s, "gamma", &t, &err), MC_OK);
    assert_string_equal(t.id, "t_b");
    assert_string_equal(t.meta, "{\"y\":2}");
    assert_int_equal(t.created_ms, 6);
    mc_store_tenant_clear(&t);

    struct mc_store_tenant *rows;
    size_t n;
    assert_int_equal(mc_store_tenant_list(f->s, &rows, &n, &err), MC_OK);
    assert_int_equal(n, 2);
    assert_string_equal(rows[0].name, "alpha");
    assert_string_equal(rows[0].meta, "{\"x\":1}");
    assert_string_equal(rows[1].name, "gamma");
    mc_store_tenant_list_free(rows, n);
}

static void test_transaction_rollback_and_commit(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    assert_int_equal(mc_store_begin(f->s, &err), MC_OK);
    assert_int_equal(mc_store_begin(f->s, &err), MC_EINVAL);
    assert_int_equal(mc_store_tenant_insert(f->s, "t_a", "alpha", 1, NULL, &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "conv", "c1", "x", 1, &err), MC_OK);
    mc_store_rollback(f->s);
    struct mc_store_tenant t;
    assert_int_equal(mc_store_tenant_get(f->s, "t_a", &t, &err), MC_ENOTFOUND);

    assert_int_equal(mc_store_begin(f->s, &err), MC_OK);
    assert_int_equal(mc_store_tenant_insert(f->s, "t_a", "alpha", 1, NULL, &err), MC_OK);
    assert_int_equal(mc_store_usage_add(f->s, "t_a", 20000, 1, 10, 20, &err), MC_OK);
    /* Deleting inside a transaction is refused: the key must be shredded on its own. */
    assert_int_equal(mc_store_tenant_delete(f->s, "t_a", &err), MC_EINVAL);
    assert_int_equal(mc_store_commit(f->s, &err), MC_OK);
    assert_int_equal(mc_store_commit(f->s, &err), MC_EINVAL);
    assert_int_equal(mc_store_tenant_get(f->s, "t_a", &t, &err), MC_OK);
    mc_store_tenant_clear(&t);
}

static void test_keys_and_usage_rows(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    assert_int_equal(mc_store_tenant_insert(f->s, "t_a", "alpha", 1, NULL, &err), MC_OK);
    struct mc_store_key k = {0};
    snprintf(k.prefix, sizeof(k.prefix), "mcai_AAAA");
    snprintf(k.tenant_id, sizeof(k.tenant_id), "t_zz");
    assert_int_equal(mc_store_key_insert(f->s, &k, &err), MC_ENOTFOUND);
    snprintf(k.tenant_id, sizeof(k.tenant_id), "t_a");
    mc_store_hash_secret(f->s, "mcai_secret", k.hash);
    k.created_ms = 9;
    assert_int_equal(mc_store_key_insert(f->s, &k, &err), MC_OK);
    assert_int_equal(mc_store_key_insert(f->s, &k, &err), MC_EEXIST);
    struct mc_store_key got;
    assert_int_equal(mc_store_key_get(f->s, "mcai_AAAA", &got, &err), MC_OK);
    assert_memory_equal(got.hash, k.hash, 32);
    assert_int_equal(got.revoked_ms, 0);
    assert_int_equal(mc_store_key_revoke(f->s, "t_a", "mcai_AAAA", 50, &err), MC_OK);
    assert_int_equal(mc_store_key_revoke(f->s, "t_a", "mcai_AAAA", 60, &err), MC_OK);
    assert_int_equal(mc_store_key_get(f->s, "mcai_AAAA", &got, &err), MC_OK);
    assert_int_equal(got.revoked_ms, 50);
    assert_int_equal(mc_store_key_revoke(f->s, "t_b", "mcai_AAAA", 60, &err), MC_ENOTFOUND);

    assert_int_equal(mc_store_usage_add(f->s, "t_a", 100, 1, 10, 5, &err), MC_OK);
    assert_int_equal(mc_store_usage_add(f->s, "t_a", 100, 2, 7, 3, &err), MC_OK);
    assert_int_equal(mc_store_usage_add(f->s, "t_a", 101, 1, 1, 1, &err), MC_OK);
    struct mc_store_usage *u;
    size_t n;
    assert_int_equal(mc_store_usage_list(f->s, "t_a", 100, 100, &u, &n, &err), MC_OK);
    assert_int_equal(n, 1);
    assert_int_equal(u[0].requests, 3);
    assert_int_equal(u[0].prompt_tokens, 17);
    assert_int_equal(u[0].completion_tokens, 8);
    mc_free(u);
    assert_int_equal(mc_store_usage_list(f->s, NULL, 0, 1000, &u, &n, &err), MC_OK);
    assert_int_equal(n, 2);
    assert_int_equal(u[1].day, 101);
    mc_free(u);
}

/* ---------------------------------------------------------------------------------------
 * Threads */

struct worker {
    struct mc_store *s;
    int id;
    int failures;
};

static void *obj_worker(void *arg) {
    struct worker *w = arg;
    struct mc_err err;
    char tenant[16], val[64];
    snprintf(tenant, sizeof(tenant), "t_w%d", w->id);
    for (int i = 0; i < 40; i++) {
        char obj[16];
        snprintf(obj, sizeof(obj), "o%d", i % 5);
        int n = snprintf(val, sizeof(val), "worker %d value %d", w->id, i);
        if (mc_store_obj_put(w->s, tenant, "conv", obj, val, (size_t)n, &err) != MC_OK)
            w->failures++;
        void *data;
        size_t len;
        if (mc_store_obj_get(w->s, tenant, "conv", obj, &data, &len, &err) != MC_OK ||
            len != (size_t)n || memcmp(data, val, len) != 0)
            w->failures++;
        mc_free(data);
    }
    return NULL;
}

static void *txn_worker(void *arg) {
    struct worker *w = arg;
    struct mc_err err;
    for (int i = 0; i < 20; i++) {
        char id[16], name[16];
        snprintf(id, sizeof(id), "t_x%d", i);
        snprintf(name, sizeof(name), "x%d", i);
        if (mc_store_begin(w->s, &err) != MC_OK) {
            w->failures++;
            continue;
        }
        int rc = mc_store_tenant_insert(w->s, id, name, i, NULL, &err);
        if (rc == MC_OK)
            rc = mc_store_obj_put(w->s, id, "front", "1", name, strlen(name), &err);
        if (rc == MC_OK && i % 2 == 0)
            rc = mc_store_commit(w->s, &err);
        else
            mc_store_rollback(w->s);
        if (rc != MC_OK)
            w->failures++;
    }
    return NULL;
}

static void test_store_is_safe_from_many_threads(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    pthread_t th[5];
    struct worker w[5];
    for (int i = 0; i < 4; i++) {
        char id[16], name[16];
        snprintf(id, sizeof(id), "t_w%d", i);
        snprintf(name, sizeof(name), "w%d", i);
        assert_int_equal(mc_store_tenant_insert(f->s, id, name, 1, NULL, &err), MC_OK);
    }
    for (int i = 0; i < 5; i++) {
        w[i] = (struct worker){f->s, i, 0};
        pthread_create(&th[i], NULL, i < 4 ? obj_worker : txn_worker, &w[i]);
    }
    for (int i = 0; i < 5; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].failures, 0);
    }
    /* Committed transactions (even i) are there with their object; the others are not. */
    struct mc_store_tenant *rows;
    size_t n;
    assert_int_equal(mc_store_tenant_list(f->s, &rows, &n, &err), MC_OK);
    assert_int_equal(n, 4 + 10);
    mc_store_tenant_list_free(rows, n);
    void *data;
    size_t len;
    assert_int_equal(mc_store_obj_get(f->s, "t_x4", "front", "1", &data, &len, &err), MC_OK);
    assert_memory_equal(data, "x4", 2);
    mc_free(data);
    struct mc_store_tenant t;
    assert_int_equal(mc_store_tenant_get(f->s, "t_x5", &t, &err), MC_ENOTFOUND);
}

/* Reads from other threads proceed while one thread holds a transaction, and see the
 * last commit, not the transaction's rows. */
struct txn_holder {
    struct mc_store *s;
    pthread_mutex_t m;
    pthread_cond_t cv;
    int in_txn, reader_done, timed_out, rc;
};

static void *hold_txn(void *arg) {
    struct txn_holder *h = arg;
    struct mc_err err;
    h->rc = mc_store_begin(h->s, &err);
    if (h->rc == MC_OK)
        h->rc = mc_store_tenant_insert(h->s, "t_x", "xeno", 1, NULL, &err);
    pthread_mutex_lock(&h->m);
    h->in_txn = 1;
    pthread_cond_broadcast(&h->cv);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20; /* only a guard against a hang: the reader needs milliseconds */
    while (!h->reader_done && !h->timed_out)
        h->timed_out = pthread_cond_timedwait(&h->cv, &h->m, &until) != 0;
    pthread_mutex_unlock(&h->m);
    if (h->rc == MC_OK)
        h->rc = mc_store_commit(h->s, &err);
    return NULL;
}

static void test_reads_proceed_beside_a_transaction(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    assert_int_equal(mc_store_tenant_insert(f->s, "t_a", "alpha", 1, NULL, &err), MC_OK);
    assert_int_equal(mc_store_obj_put(f->s, "t_a", "conv", "c1", "hello", 5, &err), MC_OK);

    struct txn_holder h = {.s = f->s};
    pthread_mutex_init(&h.m, NULL);
    pthread_cond_init(&h.cv, NULL);
    pthread_t th;
    pthread_create(&th, NULL, hold_txn, &h);
    pthread_mutex_lock(&h.m);
    while (!h.in_txn)
        pthread_cond_wait(&h.cv, &h.m);
    pthread_mutex_unlock(&h.m);

    struct mc_store_tenant t;
    void *data;
    size_t n;
    int rc_get = mc_store_tenant_get(f->s, "t_a", &t, &err);
    mc_store_tenant_clear(&t);
    int rc_uncommitted = mc_store_tenant_get(f->s, "t_x", &t, &err);
    int rc_obj = mc_store_obj_get(f->s, "t_a", "conv", "c1", &data, &n, &err);
    if (rc_obj == MC_OK)
        mc_free(data);

    pthread_mutex_lock(&h.m);
    h.reader_done = 1;
    pthread_cond_broadcast(&h.cv);
    pthread_mutex_unlock(&h.m);
    pthread_join(th, NULL);
    assert_false(h.timed_out);
    assert_int_equal(h.rc, MC_OK);
    assert_int_equal(rc_get, MC_OK);
    assert_int_equal(rc_uncommitted, MC_ENOTFOUND);
    assert_int_equal(rc_obj, MC_OK);
    assert_int_equal(mc_store_tenant_get(f->s, "t_x", &t, &err), MC_OK);
    mc_store_tenant_clear(&t);
    pthread_cond_destroy(&h.cv);
    pthread_mutex_destroy(&h.m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_master_key_parse_hex_and_base64_agree),
        cmocka_unit_test(test_master_key_rejects_weak_and_malformed),
        cmocka_unit_test_setup_teardown(test_master_key_file_mode_and_location, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_refuses_other_master_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_obj_roundtrip_list_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_obj_large_blob_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_known_plaintext_appears_nowhere_on_disk, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_swapped_ciphertexts_fail_to_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_shreds_data_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_finishes_after_an_interrupted_delete, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_rekey_moves_data_to_a_new_master_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tenant_insert_duplicate_and_update, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transaction_rollback_and_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keys_and_usage_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_is_safe_from_many_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reads_proceed_beside_a_transaction, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
