/* test_serve_adapters.c - LoRA adapters in the server (api_adapter.c): a real server on
 * stories260K with a temporary data directory, uploads sent with libcurl as
 * multipart/form-data, and resolution checked through mc_adapter_resolve, where the
 * versions, references and cache entries can be seen. What the HTTP answers look like to
 * a client is checked by tests/integration/client.mjs. */
#include "adapter/lora.h"
#include "base/err.h"
#include "base/log.h"
#include "base/mem.h"
#include "serve/serve_int.h"
#include "serve/server.h"
#include "store/crypto.h"
#include "tenant/tenant.h"
#include "test_util.h"

#include <curl/curl.h>
#include <ftw.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char KEY_HEX[] = "5b2e8c0a4f6d1e3b7a9c5e2d8f0b4a6c1e3d5f7a9b0c2e4d6f8a1b3c5d7e9f02";
static const char ADMIN_KEY[] = "adm-0123456789abcdefghijklmnop";

struct fx {
    char dir[64];
    struct mc_master_key *mk;
    struct mc_server *s;
    int port;
    size_t cache_bytes; /* --adapter-cache-mb in bytes; 0: the default */
    char tenant[2][MC_TENANT_ID_LEN + 1];
    char key[2][MC_KEY_SECRET_LEN + 1];
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void server_start(struct fx *f) {
    char model[512];
    struct mc_server_config cfg = {
        .model_path = test_shared_path(model, sizeof(model), "models/stories260K.gguf"),
        .data_dir = f->dir,
        .port = 0,
        .master_key = f->mk,
        .admin_key = ADMIN_KEY,
        .n_threads = 1,
        .n_ctx = 128,
        .max_seqs = 4,
        .adapter_cache_bytes = f->cache_bytes,
    };
    struct mc_err err = {0};
    if (mc_server_create(&cfg, &f->s, &err) != MC_OK || mc_server_load(f->s, &err) != MC_OK)
        fail_msg("server: %s", err.msg);
    f->port = mc_server_port(f->s);
}

static int setup(void **state) {
    struct fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/mcai-test-adapters-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    struct mc_err err = {0};
    assert_int_equal(mc_crypto_init(&err), MC_OK);
    assert_int_equal(mc_master_key_parse(KEY_HEX, &f->mk, &err), MC_OK);
    server_start(f);
    for (int i = 0; i < 2; i++) {
        struct mc_key_info ki;
        assert_int_equal(
            mc_tenant_create(f->s->tenants, i ? "beta" : "alpha", NULL, NULL, f->tenant[i], &err),
            MC_OK);
        assert_int_equal(mc_key_create(f->s->tenants, f->tenant[i], f->key[i], &ki, &err), MC_OK);
    }
    *state = f;
    return 0;
}

static int teardown(void **state) {
    struct fx *f = *state;
    mc_server_free(f->s);
    mc_master_key_free(f->mk);
    nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* ---- Uploads ---------------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *user) {
    mc_buf_append(user, p, size * n);
    return size * n;
}

/* One form part: a file when path is set, else data of n bytes (n 0: a string). */
struct part {
    const char *name;
    const char *path;
    const void *data;
    size_t n;
};

/* POSTs the parts as multipart/form-data with bearer token to path; returns the status
 * and leaves the body in out (free it). */
static long post_form(struct fx *f, const char *path, const char *bearer, const struct part *parts,
                      int n_parts, struct mc_buf *out) {
    memset(out, 0, sizeof(*out));
    CURL *c = curl_easy_init();
    char url[256], auth[160];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", f->port, path);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", bearer);
    curl_mime *mime = curl_mime_init(c);
    for (int i = 0; i < n_parts; i++) {
        curl_mimepart *p = curl_mime_addpart(mime);
        curl_mime_name(p, parts[i].name);
        if (parts[i].path)
            curl_mime_filedata(p, parts[i].path);
        else
            curl_mime_data(p, parts[i].data, parts[i].n ? parts[i].n : CURL_ZERO_TERMINATED);
    }
    struct curl_slist *h = curl_slist_append(NULL, auth);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_MIMEPOST, mime);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_mime_free(mime);
    curl_easy_cleanup(c);
    return status;
}

static long http_delete(struct fx *f, const char *path, const char *bearer) {
    CURL *c = curl_easy_init();
    char url[256], auth[160];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", f->port, path);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", bearer);
    struct curl_slist *h = curl_slist_append(NULL, auth);
    struct mc_buf b = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "DELETE");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    mc_buf_free(&b);
    return status;
}

static long upload_gguf(struct fx *f, int tenant, const char *name, struct mc_buf *out) {
    char path[512];
    struct part parts[] = {
        {"name", NULL, name, 0},
        {"file", test_shared_path(path, sizeof(path), "models/stories260K-lora-r4.gguf"), NULL, 0},
    };
    return post_form(f, "/v1/adapters", f->key[tenant], parts, 2, out);
}

static long upload_ok(struct fx *f, int tenant, const char *name) {
    struct mc_buf b;
    long st = upload_gguf(f, tenant, name, &b);
    if (st != 200 && st != 201)
        fail_msg("upload %s: %ld %s", name, st, b.data ? b.data : "");
    mc_buf_free(&b);
    return st;
}

static size_t n_adapters(struct fx *f, int tenant) {
    struct mc_adapter_meta *rows = NULL;
    size_t n = 0;
    struct mc_err err = {0};
    assert_int_equal(mc_adapter_list(f->s->store, f->tenant[tenant], &rows, &n, &err), MC_OK);
    mc_free(rows);
    return n;
}

/* ---- Tests ------------------------------------------------------------------------ */

static void test_replace_and_delete_bump_version_and_holders_keep_theirs(void **state) {
    struct fx *f = *state;
    assert_int_equal(upload_ok(f, 0, "story"), 201);
    struct mc_lora *v1 = NULL, *v2 = NULL;
    struct mc_adapter_meta m;
    struct mc_err err = {0};
    assert_int_equal(mc_adapter_resolve(f->s, f->tenant[0], "story", &v1, &m, &err), MC_OK);
    assert_int_equal(m.version, 1);
    assert_int_equal(mc_lora_refcount(v1), 2); /* ours and the cache's */
    assert_int_equal(mc_lora_info(v1)->rank, 4);

    /* A replace while v1 is held (as a running sequence holds it): the cache lets go of
     * v1, which stays usable, and the next lookup loads version 2. */
    assert_int_equal(upload_ok(f, 0, "story"), 200);
    assert_int_equal(mc_lora_refcount(v1), 1);
    assert_float_near(mc_lora_scale(v1, 0, MC_PROJ_Q, 1.0f), 2.0, 0);
    assert_int_equal(mc_adapter_resolve(f->s, f->tenant[0], "story", &v2, &m, &err), MC_OK);
    assert_int_equal(m.version, 2);
    assert_ptr_not_equal(v1, v2);
    mc_lora_release(v1);

    /* Deleting while v2 is held: the same. */
    assert_int_equal(http_delete(f, "/v1/adapters/story", f->key[0]), 200);
    assert_int_equal(mc_lora_refcount(v2), 1);
    assert_int_equal(mc_adapter_resolve(f->s, f->tenant[0], "story", &v1, NULL, &err),
                     MC_ENOTFOUND);
    mc_lora_release(v2);

    struct mc_lora_cache_stats cs;
    mc_lora_cache_stats(f->s->adapters, &cs);
    assert_int_equal(cs.n_resident, 0);
    assert_int_equal(cs.misses, 2);
}

static void test_other_tenants_adapter_is_not_found(void **state) {
    struct fx *f = *state;
    upload_ok(f, 0, "secret-sauce");
    struct mc_lora *l = (struct mc_lora *)f;
    struct mc_err err = {0};
    assert_int_equal(mc_adapter_resolve(f->s, f->tenant[1], "secret-sauce", &l, NULL, &err),
                     MC_ENOTFOUND);
    assert_null(l);
    assert_int_equal(n_adapters(f, 1), 0);
    /* Same name, own adapter: each tenant gets its own. */
    upload_ok(f, 1, "secret-sauce");
    struct mc_lora *a = NULL, *b = NULL;
    assert_int_equal(mc_adapter_resolve(f->s, f->tenant[0], "secret-sauce", &a, NULL, &err), MC_OK);
    assert_int_equal(mc_adapter_resolve(f->s, f->tenant[1], "secret-sauce", &b, NULL, &err), MC_OK);
    assert_ptr_not_equal(a, b); /* identical bytes, still two cache entries */
    mc_lora_release(a);
    mc_lora_release(b);
}

static void test_bad_uploads_are_400_and_store_nothing(void **state) {
    struct fx *f = *state;
    char path[512];
    FILE *fp = fopen(test_shared_path(path, sizeof(path), "models/stories260K-lora-r4.gguf"), "rb");
    assert_non_null(fp);
    static char file[32768];
    size_t n = fread(file, 1, sizeof(file), fp);
    fclose(fp);
    assert_true(n > 10000);

    struct mc_buf b;
    struct part trunc[] = {{"name", NULL, "cut", 0}, {"file", NULL, file, 6000}};
    assert_int_equal(post_form(f, "/v1/adapters", f->key[0], trunc, 2, &b), 400);
    assert_non_null(strstr(b.data, "\"code\":\"invalid_adapter\""));
    assert_non_null(strstr(b.data, "lora_"));
    mc_buf_free(&b);

    /* PEFT: a config that does not parse. */
    char st[512];
    struct part peft[] = {
        {"name", NULL, "cut", 0},
        {"adapter_config", NULL, "{\"r\": 4,", 0},
        {"adapter_model",
         test_shared_path(st, sizeof(st),
                          "models/stories260K-lora-r4-peft/adapter_model.safetensors"),
         NULL, 0},
    };
    assert_int_equal(post_form(f, "/v1/adapters", f->key[0], peft, 3, &b), 400);
    assert_non_null(strstr(b.data, "\"code\":\"invalid_adapter\""));
    mc_buf_free(&b);

    /* Both formats at once, an unknown field, and no file at all. */
    struct part both[] = {
        {"name", NULL, "x", 0}, {"file", NULL, file, n}, {"adapter_model", NULL, file, n}};
    assert_int_equal(post_form(f, "/v1/adapters", f->key[0], both, 3, &b), 400);
    mc_buf_free(&b);
    struct part extra[] = {
        {"name", NULL, "x", 0}, {"file", NULL, file, n}, {"scale", NULL, "2", 0}};
    assert_int_equal(post_form(f, "/v1/adapters", f->key[0], extra, 3, &b), 400);
    assert_non_null(strstr(b.data, "unknown form field 'scale'"));
    mc_buf_free(&b);
    assert_int_equal(post_form(f, "/v1/adapters", f->key[0], extra, 1, &b), 400);
    mc_buf_free(&b);
    assert_int_equal(n_adapters(f, 0), 0);
}

static void test_published_copies_share_one_cache_entry(void **state) {
    struct fx *f = *state;
    char path[512], tenants[64];
    snprintf(tenants, sizeof(tenants), "%s,%s", f->tenant[0], f->tenant[1]);
    struct part parts[] = {
        {"name", NULL, "house", 0},
        {"tenants", NULL, tenants, 0},
        {"file", test_shared_path(path, sizeof(path), "models/stories260K-lora-r4.gguf"), NULL, 0},
    };
    struct mc_buf b;
    assert_int_equal(post_form(f, "/admin/adapters", ADMIN_KEY, parts, 3, &b), 201);
    mc_buf_free(&b);
    assert_int_equal(post_form(f, "/admin/adapters", f->key[0], parts, 3, &b), 401);
    mc_buf_free(&b);

    struct mc_lora *a = NULL, *c = NULL;
    struct mc_adapter_meta ma, mb;
    struct mc_err err = {0};
    assert_int_equal(mc_adapter_resolve(f->s, f->tenant[0], "house", &a, &ma, &err), MC_OK);
    assert_int_equal(mc_adapter_resolve(f->s, f->tenant[1], "house", &c, &mb, &err), MC_OK);
    assert_true(ma.published && mb.published);
    assert_string_equal(ma.digest, mb.digest);
    assert_ptr_equal(a, c);
    mc_lora_release(a);
    mc_lora_release(c);

    /* One tenant deleting its copy leaves the other's working. */
    char del[128];
    snprintf(del, sizeof(del), "/admin/tenants/%s/adapters/house", f->tenant[0]);
    assert_int_equal(http_delete(f, del, ADMIN_KEY), 200);
    assert_int_equal(mc_adapter_resolve(f->s, f->tenant[0], "house", &a, NULL, &err), MC_ENOTFOUND);
    assert_int_equal(mc_adapter_resolve(f->s, f->tenant[1], "house", &c, NULL, &err), MC_OK);
    mc_lora_release(c);
}

static void test_deleting_a_tenant_drops_its_resident_adapters(void **state) {
    struct fx *f = *state;
    upload_ok(f, 0, "story");
    struct mc_lora *l = NULL;
    struct mc_err err = {0};
    assert_int_equal(mc_adapter_resolve(f->s, f->tenant[0], "story", &l, NULL, &err), MC_OK);
    mc_lora_release(l);
    struct mc_lora_cache_stats cs;
    mc_lora_cache_stats(f->s->adapters, &cs);
    assert_int_equal(cs.n_resident, 1);
    char path[64];
    snprintf(path, sizeof(path), "/admin/tenants/%s", f->tenant[0]);
    assert_int_equal(http_delete(f, path, ADMIN_KEY), 200);
    mc_lora_cache_stats(f->s->adapters, &cs);
    assert_int_equal(cs.n_resident, 0);
}

static void test_small_budget_evicts_but_never_a_held_adapter(void **state) {
    struct fx *f = *state;
    /* Room for two of the 19 KB reference adapters. */
    mc_server_free(f->s);
    f->cache_bytes = 40000;
    server_start(f);
    const char *names[3] = {"one", "two", "three"};
    for (int i = 0; i < 3; i++)
        upload_ok(f, 0, names[i]);
    struct mc_lora *held = NULL, *l = NULL;
    struct mc_err err = {0};
    assert_int_equal(mc_adapter_resolve(f->s, f->tenant[0], "one", &held, NULL, &err), MC_OK);
    for (int i = 1; i < 3; i++) {
        assert_int_equal(mc_adapter_resolve(f->s, f->tenant[0], names[i], &l, NULL, &err), MC_OK);
        mc_lora_release(l);
    }
    /* "one" is the least recently used but a sequence holds it: "two" went instead. */
    struct mc_lora_cache_stats cs;
    mc_lora_cache_stats(f->s->adapters, &cs);
    assert_int_equal(cs.evictions, 1);
    assert_int_equal(cs.n_resident, 2);
    assert_true(cs.resident_bytes <= 40000);
    char key[128];
    snprintf(key, sizeof(key), "t/%s/one", f->tenant[0]);
    assert_true(mc_lora_cache_contains(f->s->adapters, key, 1));
    snprintf(key, sizeof(key), "t/%s/two", f->tenant[0]);
    assert_false(mc_lora_cache_contains(f->s->adapters, key, 1));
    mc_lora_release(held);
}

static void test_pins_survive_a_restart(void **state) {
    struct fx *f = *state;
    upload_ok(f, 0, "kept");
    upload_ok(f, 0, "cold");
    char path[128];
    snprintf(path, sizeof(path), "/admin/tenants/%s/adapters/kept/pin", f->tenant[0]);
    struct mc_buf b;
    assert_int_equal(post_form(f, path, ADMIN_KEY, NULL, 0, &b), 200);
    assert_non_null(strstr(b.data, "\"pinned\":true"));
    mc_buf_free(&b);

    mc_server_free(f->s);
    server_start(f);
    struct mc_lora_cache_stats cs;
    mc_lora_cache_stats(f->s->adapters, &cs);
    assert_int_equal(cs.n_resident, 1);
    char key[128];
    snprintf(key, sizeof(key), "t/%s/kept", f->tenant[0]);
    assert_true(mc_lora_cache_contains(f->s->adapters, key, 1));
    snprintf(key, sizeof(key), "t/%s/cold", f->tenant[0]);
    assert_false(mc_lora_cache_contains(f->s->adapters, key, 1));
}

int main(void) {
    mc_log_set_level(MC_LOG_ERROR);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_replace_and_delete_bump_version_and_holders_keep_theirs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_tenants_adapter_is_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_uploads_are_400_and_store_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_published_copies_share_one_cache_entry, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_deleting_a_tenant_drops_its_resident_adapters, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_small_budget_evicts_but_never_a_held_adapter, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pins_survive_a_restart, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
