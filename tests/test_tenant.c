/* test_tenant.c - tenants, API keys, fronts (versions, JSON, templates), usage and the
 * rate limiter driven by a fake clock. */
#include "base/err.h"
#include "base/mem.h"
#include "store/crypto.h"
#include "store/store.h"
#include "tenant/ratelimit.h"
#include "tenant/tenant.h"
#include "test_util.h"

#include <dirent.h>
#include <math.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char KEY_HEX[] = "8f3a1c5e7d9b2f4a6c8e0d1b3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f13";

/* 2026-12-03T12:00:00Z */
#define NOON_MS 1796299200000LL

static int64_t fake_now = NOON_MS;
static int64_t fake_clock(void) {
    return fake_now;
}

struct event {
    char action[32];
    char tenant[32];
    char details[512];
};

struct fx {
    char dir[64];
    struct mc_master_key *mk;
    struct mc_store *s;
    struct mc_tenants *tn;
    struct event events[32];
    int n_events;
};

static int record_event(void *user, const char *action, const char *tenant_id, const char *details,
                        struct mc_err *err) {
    (void)err;
    struct fx *f = user;
    if (f->n_events < 32) {
        struct event *e = &f->events[f->n_events++];
        snprintf(e->action, sizeof(e->action), "%s", action);
        snprintf(e->tenant, sizeof(e->tenant), "%s", tenant_id ? tenant_id : "");
        snprintf(e->details, sizeof(e->details), "%s", details);
    }
    return MC_OK;
}

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
    snprintf(f->dir, sizeof(f->dir), "/tmp/mcai-test-tenant-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    struct mc_err err = {0};
    assert_int_equal(mc_master_key_parse(KEY_HEX, &f->mk, &err), MC_OK);
    assert_int_equal(mc_store_open(f->dir, f->mk, &f->s, &err), MC_OK);
    assert_int_equal(mc_tenants_create(f->s, &f->tn, &err), MC_OK);
    mc_tenants_set_audit(f->tn, record_event, f);
    fake_now = NOON_MS;
    mc_tenants_set_clock(f->tn, fake_clock);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    struct fx *f = *state;
    mc_tenants_free(f->tn);
    mc_store_close(f->s);
    mc_master_key_free(f->mk);
    rm_rf(f->dir);
    free(f);
    return 0;
}

static void create(struct fx *f, const char *name, char id[MC_TENANT_ID_LEN + 1]) {
    struct mc_err err = {0};
    int rc = mc_tenant_create(f->tn, name, NULL, NULL, id, &err);
    if (rc != MC_OK)
        fail_msg("create %s: %s", name, err.msg);
}

/* ---------------------------------------------------------------------------------------
 * Tenants */

static void test_tenant_create_get_list_update(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    char id[MC_TENANT_ID_LEN + 1];
    struct mc_limits lim = {.rpm = 60, .tpm = 1000, .tpd = 50000, .concurrency = 4};
    assert_int_equal(mc_tenant_create(f->tn, "acme", NULL, &lim, id, &err), MC_OK);
    assert_int_equal(strlen(id), MC_TENANT_ID_LEN);
    assert_memory_equal(id, "t_", 2);
    assert_int_equal(strspn(id + 2, "0123456789abcdef"), 16);

    struct mc_tenant_info t;
    assert_int_equal(mc_tenant_get(f->tn, id, &t, &err), MC_OK);
    assert_string_equal(t.name, "acme");
    assert_int_equal(t.created_ms, NOON_MS);
    assert_int_equal(t.limits.rpm, 60);
    assert_int_equal(t.limits.tpm, 1000);
    assert_int_equal(t.limits.tpd, 50000);
    assert_int_equal(t.limits.concurrency, 4);
    assert_int_equal(t.weight, 1);
    assert_int_equal(t.front_version, 1);

    char id2[MC_TENANT_ID_LEN + 1];
    create(f, "beta", id2);
    struct mc_limits lim2 = {.rpm = 5};
    assert_int_equal(mc_tenant_update(f->tn, id2, "aardvark", &lim2, 7, &err), MC_OK);
    struct mc_tenant_info *all;
    size_t n;
    assert_int_equal(mc_tenant_list(f->tn, &all, &n, &err), MC_OK);
    assert_int_equal(n, 2);
    assert_string_equal(all[0].name, "aardvark");
    assert_string_equal(all[0].id, id2);
    assert_int_equal(all[0].limits.rpm, 5);
    assert_int_equal(all[0].limits.tpm, 0);
    assert_int_equal(all[0].weight, 7);
    assert_string_equal(all[1].name, "acme");
    mc_free(all);

    assert_int_equal(mc_tenant_resolve(f->tn, "aardvark", &t, &err), MC_OK);
    assert_string_equal(t.id, id2);
    assert_int_equal(mc_tenant_resolve(f->tn, id, &t, &err), MC_OK);
    assert_string_equal(t.name, "acme");
    assert_int_equal(mc_tenant_resolve(f->tn, "nobody", &t, &err), MC_ENOTFOUND);
    assert_string_equal(err.msg, "no tenant has the id or name 'nobody'");

    assert_int_equal(f->n_events, 3);
    assert_string_equal(f->events[0].action, "tenant.create");
    assert_string_equal(f->events[0].tenant, id);
    assert_string_equal(f->events[0].details, "{\"name\":\"acme\",\"front_version\":1,\"limits\":"
                                              "{\"rpm\":60,\"tpm\":1000,\"tpd\":50000,"
                                              "\"concurrency\":4}}");
    assert_string_equal(f->events[2].action, "tenant.update");
    assert_string_equal(f->events[2].details, "{\"name\":\"aardvark\",\"limits\":{\"rpm\":5,"
                                              "\"tpm\":0,\"tpd\":0,\"concurrency\":0},"
                                              "\"weight\":7}");
}

static void test_tenant_create_rejects_duplicate_name(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    char id[MC_TENANT_ID_LEN + 1], id2[MC_TENANT_ID_LEN + 1];
    create(f, "acme", id);
    assert_int_equal(mc_tenant_create(f->tn, "acme", NULL, NULL, id2, &err), MC_EEXIST);
    assert_string_equal(err.msg, "a tenant named 'acme' already exists");
    assert_string_equal(id2, "");
    create(f, "other", id2);
    assert_int_equal(mc_tenant_update(f->tn, id2, "acme", NULL, 0, &err), MC_EEXIST);
    assert_string_equal(err.msg, "a tenant named 'acme' already exists");
}

static void test_tenant_create_rejects_bad_input(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    char id[MC_TENANT_ID_LEN + 1];
    assert_int_equal(mc_tenant_create(f->tn, "a b", NULL, NULL, id, &err), MC_EINVAL);
    assert_string_equal(err.msg, "tenant name has a space (0x20) at byte 1; use letters, digits, "
                                 "'-', '_' and '.'");
    assert_int_equal(mc_tenant_create(f->tn, "a/b", NULL, NULL, id, &err), MC_EINVAL);
    assert_string_equal(err.msg, "tenant name has '/' (0x2f) at byte 1; use letters, digits, "
                                 "'-', '_' and '.'");
    assert_int_equal(mc_tenant_create(f->tn, "ab\t", NULL, NULL, id, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "tenant name has a byte (0x09) at byte 2"));
    assert_int_equal(mc_tenant_create(f->tn, "", NULL, NULL, id, &err), MC_EINVAL);
    assert_string_equal(err.msg, "tenant name is empty");
    struct mc_limits bad = {.tpm = -3};
    assert_int_equal(mc_tenant_create(f->tn, "x", NULL, &bad, id, &err), MC_EINVAL);
    assert_string_equal(err.msg, "limit tpm = -3 is outside 0..999999999999 (0 = unlimited)");
    struct mc_front fr;
    mc_front_init(&fr);
    fr.temperature = 9;
    assert_int_equal(mc_tenant_create(f->tn, "x", &fr, NULL, id, &err), MC_EINVAL);
    assert_string_equal(err.msg, "front: temperature = 9 is outside 0..5");
    /* Nothing was left behind by the refusals. */
    struct mc_tenant_info *all;
    size_t n;
    assert_int_equal(mc_tenant_list(f->tn, &all, &n, &err), MC_OK);
    assert_int_equal(n, 0);
    mc_free(all);
}

static void test_tenant_delete_makes_data_unreadable(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    char id[MC_TENANT_ID_LEN + 1];
    struct mc_front fr;
    mc_front_init(&fr);
    fr.system_prompt = mc_strdup("secret prompt");
    assert_int_equal(mc_tenant_create(f->tn, "gone", &fr, NULL, id, &err), MC_OK);
    mc_front_deinit(&fr);
    assert_int_equal(mc_store_obj_put(f->s, id, "conv", "c1", "hi", 2, &err), MC_OK);
    char secret[MC_KEY_SECRET_LEN + 1];
    assert_int_equal(mc_key_create(f->tn, id, secret, NULL, &err), MC_OK);
    assert_int_equal(mc_usage_record(f->tn, id, NOON_MS, 1, 10, 10, &err), MC_OK);

    assert_int_equal(mc_tenant_delete(f->tn, id, &err), MC_OK);
    assert_string_equal(f->events[f->n_events - 1].action, "tenant.delete");
    assert_string_equal(f->events[f->n_events - 1].details,
                        "{\"name\":\"gone\",\"data_key_destroyed\":true}");
    struct mc_tenant_info t;
    assert_int_equal(mc_tenant_get(f->tn, id, &t, &err), MC_ENOTFOUND);
    assert_int_equal(mc_front_get(f->tn, id, 1, &fr, NULL, &err), MC_ENOTFOUND);
    mc_front_deinit(&fr);
    void *data;
    size_t n;
    assert_int_equal(mc_store_obj_get(f->s, id, "conv", "c1", &data, &n, &err), MC_ENOTFOUND);
    assert_int_equal(mc_key_lookup(f->tn, secret, NULL, NULL, &err), MC_EPERM);
    struct mc_usage *u;
    assert_int_equal(mc_usage_list(f->tn, id, 0, 100000, &u, &n, &err), MC_OK);
    assert_int_equal(n, 0);
    mc_free(u);
    assert_int_equal(mc_tenant_delete(f->tn, id, &err), MC_ENOTFOUND);
}

/* ---------------------------------------------------------------------------------------
 * API keys */

static void test_key_create_lookup_revoke(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    char a[MC_TENANT_ID_LEN + 1], b[MC_TENANT_ID_LEN + 1];
    create(f, "alpha", a);
    create(f, "beta", b);
    char sa[MC_KEY_SECRET_LEN + 1], sb[MC_KEY_SECRET_LEN + 1];
    struct mc_key_info ka, kb;
    assert_int_equal(mc_key_create(f->tn, a, sa, &ka, &err), MC_OK);
    assert_int_equal(mc_key_create(f->tn, b, sb, &kb, &err), MC_OK);
    assert_int_equal(strlen(sa), MC_KEY_SECRET_LEN);
    assert_memory_equal(sa, "mcai_", 5);
    assert_memory_equal(ka.prefix, sa, MC_KEY_PREFIX_LEN);
    assert_int_equal(strlen(ka.prefix), MC_KEY_PREFIX_LEN);
    assert_int_equal(strspn(sa + 5, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                    "0123456789-_"),
                     43);

    struct mc_tenant_info t;
    struct mc_key_info k;
    assert_int_equal(mc_key_lookup(f->tn, sa, &t, &k, &err), MC_OK);
    assert_string_equal(t.id, a);
    assert_string_equal(t.name, "alpha");
    assert_string_equal(k.prefix, ka.prefix);
    assert_int_equal(mc_key_lookup(f->tn, sb, &t, NULL, &err), MC_OK);
    assert_string_equal(t.id, b);

    /* The secret is stored nowhere: only its keyed hash. */
    struct mc_store_key row;
    assert_int_equal(mc_store_key_get(f->s, ka.prefix, &row, &err), MC_OK);
    uint8_t h[32];
    mc_store_hash_secret(f->s, sa, h);
    assert_memory_equal(row.hash, h, 32);

    /* Listing shows prefixes only. */
    struct mc_key_info *list;
    size_t n;
    char sa2[MC_KEY_SECRET_LEN + 1];
    fake_now += 1000;
    assert_int_equal(mc_key_create(f->tn, a, sa2, NULL, &err), MC_OK);
    assert_int_equal(mc_key_list(f->tn, a, &list, &n, &err), MC_OK);
    assert_int_equal(n, 2);
    assert_string_equal(list[0].prefix, ka.prefix);
    assert_int_equal(list[0].revoked_ms, 0);
    mc_free(list);

    /* Revocation applies to the very next lookup. */
    fake_now = NOON_MS + 5000;
    assert_int_equal(mc_key_revoke(f->tn, a, ka.prefix, &err), MC_OK);
    assert_int_equal(mc_key_lookup(f->tn, sa, &t, NULL, &err), MC_EPERM);
    assert_string_equal(err.msg, "invalid API key");
    assert_int_equal(mc_key_list(f->tn, a, &list, &n, &err), MC_OK);
    assert_int_equal(list[0].revoked_ms, NOON_MS + 5000);
    mc_free(list);
    /* B cannot revoke A's key by prefix; its own, yes. */
    assert_int_equal(mc_key_revoke(f->tn, b, ka.prefix, &err), MC_ENOTFOUND);
    assert_int_equal(mc_key_revoke(f->tn, b, kb.prefix, &err), MC_OK);
    assert_int_equal(mc_key_lookup(f->tn, sb, &t, NULL, &err), MC_EPERM);
    assert_string_equal(f->events[f->n_events - 1].action, "key.revoke");
    /* A's other key still works. */
    assert_int_equal(mc_key_lookup(f->tn, sa2, &t, NULL, &err), MC_OK);
    assert_string_equal(t.id, a);
}

static void test_key_lookup_refuses_wrong_keys_in_constant_time(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    char a[MC_TENANT_ID_LEN + 1];
    create(f, "alpha", a);
    char sa[MC_KEY_SECRET_LEN + 1];
    assert_int_equal(mc_key_create(f->tn, a, sa, NULL, &err), MC_OK);

    /* Right prefix, wrong last character: refused, and the comparison went through the
     * constant-time function. */
    char wrong[MC_KEY_SECRET_LEN + 1];
    memcpy(wrong, sa, sizeof(wrong));
    wrong[MC_KEY_SECRET_LEN - 1] = wrong[MC_KEY_SECRET_LEN - 1] == 'A' ? 'B' : 'A';
    unsigned long before = mc_crypto_equal_calls();
    assert_int_equal(mc_key_lookup(f->tn, wrong, NULL, NULL, &err), MC_EPERM);
    assert_string_equal(err.msg, "invalid API key");
    assert_int_equal(mc_crypto_equal_calls() - before, 1);

    /* Unknown prefix: same answer, and still one constant-time compare. */
    memcpy(wrong, sa, sizeof(wrong));
    wrong[7] = wrong[7] == 'x' ? 'y' : 'x';
    before = mc_crypto_equal_calls();
    assert_int_equal(mc_key_lookup(f->tn, wrong, NULL, NULL, &err), MC_EPERM);
    assert_string_equal(err.msg, "invalid API key");
    assert_int_equal(mc_crypto_equal_calls() - before, 1);

    /* Malformed: too short, wrong scheme, bad characters, empty, too long. */
    const char *bad[] = {"mcai_abc", "sk-000000000000000000000000000000000000000000000",
                         "mcai_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA!", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(mc_key_lookup(f->tn, bad[i], NULL, NULL, &err), MC_EPERM);
        assert_string_equal(err.msg, "invalid API key");
    }
    char longkey[400];
    memset(longkey, 'A', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = 0;
    memcpy(longkey, sa, MC_KEY_SECRET_LEN);
    assert_int_equal(mc_key_lookup(f->tn, longkey, NULL, NULL, &err), MC_EPERM);
    assert_int_equal(mc_key_lookup(f->tn, sa, NULL, NULL, &err), MC_OK);
}

static void test_key_create_for_unknown_tenant(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    char s[MC_KEY_SECRET_LEN + 1];
    assert_int_equal(mc_key_create(f->tn, "t_0000000000000000", s, NULL, &err), MC_ENOTFOUND);
    assert_string_equal(s, "");
}

/* ---------------------------------------------------------------------------------------
 * Fronts */

static const char FRONT_JSON[] =
    "{\"system_prompt\":\"You are Acme's helper.\",\"template\":\"Q: {{ question }}\\nA:\","
    "\"sampling\":{\"temperature\":0.5,\"top_p\":0.75,\"top_k\":40,"
    "\"presence_penalty\":-0.5,\"seed\":7},\"max_tokens\":256,\"context_limit\":2048,"
    "\"allowed_models\":[\"base\",\"acme-lora\"],\"retrieval\":{\"k\":4,\"mode\":\"hybrid\"}}";

static void test_front_json_roundtrip(void **state) {
    (void)state;
    struct mc_err err = {0};
    struct mc_front fr;
    assert_int_equal(mc_front_from_json(FRONT_JSON, strlen(FRONT_JSON), &fr, &err), MC_OK);
    assert_string_equal(fr.system_prompt, "You are Acme's helper.");
    assert_string_equal(fr.template, "Q: {{ question }}\nA:");
    assert_float_near(fr.temperature, 0.5, 0);
    assert_float_near(fr.top_p, 0.75, 0);
    assert_int_equal(fr.top_k, 40);
    assert_int_equal(fr.seed, 7);
    assert_float_near(fr.presence_penalty, -0.5, 0);
    assert_true(isnan(fr.frequency_penalty));
    assert_true(fr.min_p < 0);
    assert_int_equal(fr.max_tokens, 256);
    assert_int_equal(fr.context_limit, 2048);
    assert_int_equal(fr.n_allowed_models, 2);
    assert_true(mc_front_allows_model(&fr, "acme-lora"));
    assert_false(mc_front_allows_model(&fr, "other"));
    assert_string_equal(fr.retrieval, "{\"k\":4,\"mode\":\"hybrid\"}");
    char *json;
    assert_int_equal(mc_front_to_json(&fr, &json, &err), MC_OK);
    assert_string_equal(json, FRONT_JSON);
    mc_free(json);
    mc_front_deinit(&fr);

    struct mc_front empty;
    mc_front_init(&empty);
    assert_true(mc_front_allows_model(&empty, "anything"));
    assert_int_equal(mc_front_to_json(&empty, &json, &err), MC_OK);
    assert_string_equal(json, "{}");
    mc_free(json);
}

static void expect_front_error(const char *json, const char *msg) {
    struct mc_err err = {0};
    struct mc_front fr;
    assert_int_equal(mc_front_from_json(json, strlen(json), &fr, &err), MC_EINVAL);
    assert_string_equal(err.msg, msg);
    mc_front_deinit(&fr);
}

static void test_front_json_rejects_bad_input(void **state) {
    (void)state;
    expect_front_error("{\"sytem_prompt\":\"x\"}", "front: unknown field 'sytem_prompt'");
    expect_front_error("{\"max_tokens\":\"10\"}", "front: max_tokens must be an integer");
    expect_front_error("{\"max_tokens\":-1}", "front: max_tokens = -1 is outside 0..10000000");
    expect_front_error("{\"sampling\":{\"top_p\":1.5}}", "front: top_p = 1.5 is outside 0..1");
    expect_front_error("{\"sampling\":{\"temperature\":-1}}",
                       "front: sampling.temperature = -1 must not be negative");
    expect_front_error("{\"sampling\":{\"topk\":1}}", "front: unknown field sampling.topk");
    expect_front_error("{\"allowed_models\":[\"a\",3]}",
                       "front: allowed_models[1] must be a string");
    expect_front_error("{\"retrieval\":[1]}", "front: retrieval must be an object");
    expect_front_error("[1]", "front: must be a JSON object");
    expect_front_error("{\"template\":\"hi {{ 1x }}\"}",
                       "front: template: '{{' at byte 3 does not start a variable (write "
                       "'{{{{' for a literal '{{')");
    expect_front_error("{\"max_tokens\": 5,\n \"x\" 1}",
                       "front: invalid JSON at byte 24 (line 2, column 6): ':' expected near "
                       "'1'");
}

static void test_front_versions_are_kept(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    char id[MC_TENANT_ID_LEN + 1];
    struct mc_front fr;
    mc_front_init(&fr);
    fr.system_prompt = mc_strdup("version one");
    fr.max_tokens = 10;
    assert_int_equal(mc_tenant_create(f->tn, "acme", &fr, NULL, id, &err), MC_OK);
    mc_front_deinit(&fr);

    for (int v = 2; v <= 3; v++) {
        char text[32];
        snprintf(text, sizeof(text), "version %s", v == 2 ? "two" : "three");
        mc_front_init(&fr);
        fr.system_prompt = mc_strdup(text);
        fr.max_tokens = 10 * v;
        int got = 0;
        assert_int_equal(mc_front_set(f->tn, id, &fr, &got, &err), MC_OK);
        assert_int_equal(got, v);
        mc_front_deinit(&fr);
    }
    int version = 0;
    assert_int_equal(mc_front_get(f->tn, id, 0, &fr, &version, &err), MC_OK);
    assert_int_equal(version, 3);
    assert_string_equal(fr.system_prompt, "version three");
    assert_int_equal(fr.max_tokens, 30);
    mc_front_deinit(&fr);
    assert_int_equal(mc_front_get(f->tn, id, 1, &fr, &version, &err), MC_OK);
    assert_int_equal(version, 1);
    assert_string_equal(fr.system_prompt, "version one");
    assert_int_equal(fr.max_tokens, 10);
    mc_front_deinit(&fr);
    assert_int_equal(mc_front_get(f->tn, id, 2, &fr, NULL, &err), MC_OK);
    assert_string_equal(fr.system_prompt, "version two");
    mc_front_deinit(&fr);
    assert_int_equal(mc_front_get(f->tn, id, 4, &fr, NULL, &err), MC_ENOTFOUND);
    assert_non_null(strstr(err.msg, "has no front version 4"));
    mc_front_deinit(&fr);

    struct mc_tenant_info t;
    assert_int_equal(mc_tenant_get(f->tn, id, &t, &err), MC_OK);
    assert_int_equal(t.front_version, 3);
    /* Audit details carry the version, never the prompt text. */
    assert_string_equal(f->events[f->n_events - 1].action, "front.update");
    assert_string_equal(f->events[f->n_events - 1].details, "{\"version\":3}");
}

static void test_front_save_rejects_undefined_template_variable(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    char id[MC_TENANT_ID_LEN + 1];
    struct mc_front fr;
    mc_front_init(&fr);
    fr.template = mc_strdup("Q: {{nope}}");
    assert_int_equal(mc_tenant_create(f->tn, "acme", &fr, NULL, id, &err), MC_EINVAL);
    assert_string_equal(err.msg, "front: template variable 'nope' at byte 3 is not defined; use "
                                 "{{input}}, {{tenant}} or {{date}}");
    mc_front_deinit(&fr);

    mc_front_init(&fr);
    fr.template = mc_strdup("{{tenant}} {{ date }}: {{input}}");
    assert_int_equal(mc_tenant_create(f->tn, "acme", &fr, NULL, id, &err), MC_OK);
    mc_front_deinit(&fr);
    mc_front_init(&fr);
    fr.template = mc_strdup("{{input}} {{question}}");
    assert_int_equal(mc_front_set(f->tn, id, &fr, NULL, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "variable 'question' at byte 10 is not defined"));
    mc_front_deinit(&fr);

    /* Reading checks only the syntax, so a front saved before the names were checked
     * still loads. */
    const char *old = "{\"template\":\"{{question}}\"}";
    assert_int_equal(mc_front_from_json(old, strlen(old), &fr, &err), MC_OK);
    mc_front_deinit(&fr);
}

static void test_front_render_template(void **state) {
    (void)state;
    struct mc_err err = {0};
    const char *names[] = {"question", "context"};
    const char *values[] = {"What is {{context}}?", "C"};
    char *out;
    assert_int_equal(mc_front_render("Q: {{question}} / {{ context }} {{{{literal}} }}", names,
                                     values, 2, &out, &err),
                     MC_OK);
    /* Values are not rescanned; "{{{{" is a literal "{{"; a lone "}}" is kept. */
    assert_string_equal(out, "Q: What is {{context}}? / C {{literal}} }}");
    mc_free(out);
    assert_int_equal(mc_front_render("", names, values, 2, &out, &err), MC_OK);
    assert_string_equal(out, "");
    mc_free(out);
    assert_int_equal(mc_front_render("{ x } {{question}}", names, values, 1, &out, &err), MC_OK);
    assert_string_equal(out, "{ x } What is {{context}}?");
    mc_free(out);

    assert_int_equal(mc_front_render("ab {{user}}", names, values, 2, &out, &err), MC_EINVAL);
    assert_null(out);
    assert_string_equal(err.msg, "template variable 'user' at byte 3 is not defined; use "
                                 "{{question}} or {{context}}");
    assert_int_equal(mc_front_render("ab {{question", names, values, 2, &out, &err), MC_EINVAL);
    assert_string_equal(err.msg, "template: variable at byte 3 is not closed by '}}'");
    assert_int_equal(mc_front_render("{{}}", names, values, 2, &out, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "'{{' at byte 0 does not start a variable"));
}

/* ---------------------------------------------------------------------------------------
 * Rate limits (fake clock: times are passed in) */

static void test_limit_requests_per_minute_exact_retry_after(void **state) {
    (void)state;
    struct mc_err err = {0};
    struct mc_limiter *lim;
    assert_int_equal(mc_limiter_create(NULL, &lim, &err), MC_OK);
    struct mc_limits l = {.rpm = 2};
    int retry = -1;
    int64_t t0 = NOON_MS;
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 0, t0, &retry, &err), MC_OK);
    mc_limit_release(lim, "t_a", 0, 0, t0);
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 0, t0, &retry, &err), MC_OK);
    mc_limit_release(lim, "t_a", 0, 0, t0);
    /* The bucket is empty; one request refills in 60 / 2 = 30 s. */
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 0, t0, &retry, &err), MC_ELIMIT);
    assert_int_equal(retry, 30);
    assert_string_equal(err.msg, "requests per minute limit 2 reached; retry after 30 s");
    /* 10 s later a third of a request has refilled: 20 s to go. */
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 0, t0 + 10000, &retry, &err), MC_ELIMIT);
    assert_int_equal(retry, 20);
    /* 29.001 s: 999 ms to go, rounded up to 1 s. */
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 0, t0 + 29001, &retry, &err), MC_ELIMIT);
    assert_int_equal(retry, 1);
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 0, t0 + 30000, &retry, &err), MC_OK);
    mc_limit_release(lim, "t_a", 0, 0, t0 + 30000);
    /* Another tenant is not affected. */
    assert_int_equal(mc_limit_acquire(lim, "t_b", &l, 0, t0 + 30000, &retry, &err), MC_OK);
    mc_limiter_free(lim);
}

static void test_limit_tokens_per_minute_and_release_correction(void **state) {
    (void)state;
    struct mc_err err = {0};
    struct mc_limiter *lim;
    assert_int_equal(mc_limiter_create(NULL, &lim, &err), MC_OK);
    struct mc_limits l = {.tpm = 600}; /* 10 tokens per second */
    int retry = 0;
    int64_t t0 = NOON_MS;
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 500, t0, &retry, &err), MC_OK);
    /* 100 left; 300 needs 200 more = 20 s. */
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 300, t0, &retry, &err), MC_ELIMIT);
    assert_int_equal(retry, 20);
    assert_string_equal(err.msg, "tokens per minute limit 600 reached; retry after 20 s");
    /* The request used only 100 tokens: 400 come back, so 300 fits now. */
    mc_limit_release(lim, "t_a", 500, 100, t0);
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 300, t0, &retry, &err), MC_OK);
    /* It used 900, 600 more than estimated: the bucket goes from 200 to -400 tokens, and
     * 1 token needs 401 = 40.1 s, rounded up to 41 s. */
    mc_limit_release(lim, "t_a", 300, 900, t0);
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 1, t0, &retry, &err), MC_ELIMIT);
    assert_int_equal(retry, 41);
    /* An estimate above the minute's allowance can never fit, even in a full bucket. */
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 5000, t0 + 100000, &retry, &err), MC_ELIMIT);
    assert_int_equal(retry, 60);
    assert_string_equal(err.msg, "this request needs at least 5000 tokens, more than the tokens "
                                 "per minute limit 600");
    mc_limiter_free(lim);
}

static void test_limit_upto_grants_what_is_left_and_never_more(void **state) {
    (void)state;
    struct mc_err err = {0};
    struct mc_limiter *lim;
    assert_int_equal(mc_limiter_create(NULL, &lim, &err), MC_OK);
    struct mc_limits l = {.tpm = 100, .tpd = 100};
    int retry = 0;
    int64_t granted = -1, t0 = NOON_MS;
    /* 16 choices of 300 tokens after a 20-token prompt: 4820 wanted, 100 allowed. */
    assert_int_equal(mc_limit_acquire_upto(lim, "t_a", &l, 36, 4820, t0, &granted, &retry, &err),
                     MC_OK);
    assert_int_equal(granted, 100);
    /* It used 90: 10 come back to both counters, so a request needing 10 fits and one
     * needing 11 does not; the day limit's wait (until midnight) is the longer. */
    mc_limit_release(lim, "t_a", 100, 90, t0);
    assert_int_equal(mc_limit_acquire_upto(lim, "t_a", &l, 11, 50, t0, &granted, &retry, &err),
                     MC_ELIMIT);
    assert_int_equal(retry, 43200);
    assert_string_equal(err.msg, "tokens per day limit 100 reached; retry after 43200 s");
    assert_int_equal(mc_limit_acquire_upto(lim, "t_a", &l, 10, 50, t0, &granted, &retry, &err),
                     MC_OK);
    assert_int_equal(granted, 10);
    mc_limit_release(lim, "t_a", 10, 10, t0);
    /* The minute limit alone: what the bucket refilled, up to the most asked for. */
    struct mc_limits m = {.tpm = 600};
    assert_int_equal(mc_limit_acquire_upto(lim, "t_b", &m, 5, 1000, t0, &granted, &retry, &err),
                     MC_OK);
    assert_int_equal(granted, 600);
    assert_int_equal(mc_limit_acquire_upto(lim, "t_b", &m, 5, 1000, t0, &granted, &retry, &err),
                     MC_ELIMIT);
    assert_int_equal(retry, 1);
    assert_int_equal(
        mc_limit_acquire_upto(lim, "t_b", &m, 5, 1000, t0 + 2000, &granted, &retry, &err), MC_OK);
    assert_int_equal(granted, 20);
    assert_int_equal(mc_limit_acquire_upto(lim, "t_b", &m, 5, 2, t0, &granted, &retry, &err),
                     MC_EINVAL);
    mc_limiter_free(lim);
}

static void test_limit_tokens_per_day_holds_on_the_first_request(void **state) {
    (void)state;
    struct mc_err err = {0};
    struct mc_limiter *lim;
    assert_int_equal(mc_limiter_create(NULL, &lim, &err), MC_OK);
    struct mc_limits l = {.tpd = 100};
    int retry = 0;
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 101, NOON_MS, &retry, &err), MC_ELIMIT);
    assert_string_equal(err.msg, "this request needs at least 101 tokens, more than the tokens "
                                 "per day limit 100");
    assert_int_equal(retry, 43200);
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 100, NOON_MS, &retry, &err), MC_OK);
    mc_limiter_free(lim);
}

static void test_limit_tokens_per_day_until_midnight(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    char id[MC_TENANT_ID_LEN + 1];
    create(f, "acme", id);
    /* 700 tokens already persisted today (e.g. before a restart). */
    assert_int_equal(mc_usage_record(f->tn, id, NOON_MS - 3600000, 3, 500, 200, &err), MC_OK);
    struct mc_limiter *lim;
    assert_int_equal(mc_limiter_create(f->tn, &lim, &err), MC_OK);
    struct mc_limits l = {.tpd = 1000};
    int retry = 0;
    assert_int_equal(mc_limit_acquire(lim, id, &l, 300, NOON_MS, &retry, &err), MC_OK);
    mc_limit_release(lim, id, 300, 300, NOON_MS);
    /* 1000 used: refused until midnight UTC, 12 h after noon. */
    assert_int_equal(mc_limit_acquire(lim, id, &l, 1, NOON_MS, &retry, &err), MC_ELIMIT);
    assert_int_equal(retry, 43200);
    assert_string_equal(err.msg, "tokens per day limit 1000 reached; retry after 43200 s");
    assert_int_equal(mc_limit_acquire(lim, id, &l, 1, NOON_MS + 43199500, &retry, &err), MC_ELIMIT);
    assert_int_equal(retry, 1);
    /* The next day starts from zero. */
    assert_int_equal(mc_limit_acquire(lim, id, &l, 1000, NOON_MS + 43200000, &retry, &err), MC_OK);
    mc_limiter_free(lim);
}

static void test_limit_concurrency_and_longest_wait_wins(void **state) {
    (void)state;
    struct mc_err err = {0};
    struct mc_limiter *lim;
    assert_int_equal(mc_limiter_create(NULL, &lim, &err), MC_OK);
    struct mc_limits l = {.concurrency = 2, .rpm = 3};
    int retry = 0;
    int64_t t0 = NOON_MS;
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 0, t0, &retry, &err), MC_OK);
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 0, t0, &retry, &err), MC_OK);
    assert_int_equal(mc_limit_active(lim, "t_a"), 2);
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 0, t0, &retry, &err), MC_ELIMIT);
    assert_int_equal(retry, 1);
    assert_string_equal(err.msg, "concurrent requests limit 2 reached; retry after 1 s");
    mc_limit_release(lim, "t_a", 0, 0, t0);
    assert_int_equal(mc_limit_active(lim, "t_a"), 1);
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 0, t0, &retry, &err), MC_OK);
    /* Both limits refuse now: the answer is the longer wait (rpm, 20 s). */
    assert_int_equal(mc_limit_acquire(lim, "t_a", &l, 0, t0, &retry, &err), MC_ELIMIT);
    assert_int_equal(retry, 20);
    /* Unlimited means unlimited; setting a limit again starts from a full bucket. */
    struct mc_limits none = {0};
    assert_int_equal(mc_limit_acquire(lim, "t_a", &none, 1000000, t0, &retry, &err), MC_OK);
    struct mc_limits rpm1 = {.rpm = 1};
    assert_int_equal(mc_limit_acquire(lim, "t_a", &rpm1, 0, t0 + 1, &retry, &err), MC_OK);
    assert_int_equal(mc_limit_acquire(lim, "t_a", &rpm1, 0, t0 + 1, &retry, &err), MC_ELIMIT);
    assert_int_equal(retry, 60);
    mc_limit_forget(lim, "t_a");
    assert_int_equal(mc_limit_active(lim, "t_a"), 0);
    assert_int_equal(mc_limit_acquire(lim, "", &l, 0, t0, &retry, &err), MC_EINVAL);
    mc_limiter_free(lim);
}

static void test_limiter_holds_many_tenants(void **state) {
    (void)state;
    struct mc_err err = {0};
    struct mc_limiter *lim;
    assert_int_equal(mc_limiter_create(NULL, &lim, &err), MC_OK);
    struct mc_limits l = {.rpm = 1};
    int retry;
    char id[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof(id), "t_%016x", i);
        assert_int_equal(mc_limit_acquire(lim, id, &l, 0, NOON_MS, &retry, &err), MC_OK);
        if (i % 3 == 0)
            mc_limit_forget(lim, id);
    }
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof(id), "t_%016x", i);
        int rc = mc_limit_acquire(lim, id, &l, 0, NOON_MS, &retry, &err);
        assert_int_equal(rc, i % 3 == 0 ? MC_OK : MC_ELIMIT);
        assert_int_equal(mc_limit_active(lim, id), 1);
    }
    mc_limiter_free(lim);
}

/* ---------------------------------------------------------------------------------------
 * Usage */

static void test_usage_per_tenant_per_day(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    char a[MC_TENANT_ID_LEN + 1], b[MC_TENANT_ID_LEN + 1];
    create(f, "alpha", a);
    create(f, "beta", b);
    int64_t day = mc_usage_day(NOON_MS);
    char ds[11];
    mc_usage_day_string(day, ds);
    assert_string_equal(ds, "2026-12-03");
    assert_int_equal(mc_usage_record(f->tn, a, NOON_MS, 1, 12, 30, &err), MC_OK);
    assert_int_equal(mc_usage_record(f->tn, a, NOON_MS + 1000, 1, 8, 10, &err), MC_OK);
    assert_int_equal(mc_usage_record(f->tn, a, NOON_MS + 86400000, 1, 1, 2, &err), MC_OK);
    assert_int_equal(mc_usage_record(f->tn, b, NOON_MS, 1, 100, 200, &err), MC_OK);

    struct mc_usage *u;
    size_t n;
    assert_int_equal(mc_usage_list(f->tn, a, day, day + 1, &u, &n, &err), MC_OK);
    assert_int_equal(n, 2);
    assert_string_equal(u[0].tenant_id, a);
    assert_int_equal(u[0].day, day);
    assert_int_equal(u[0].requests, 2);
    assert_int_equal(u[0].prompt_tokens, 20);
    assert_int_equal(u[0].completion_tokens, 40);
    assert_int_equal(u[1].day, day + 1);
    mc_free(u);
    /* The operator's view has every tenant. */
    assert_int_equal(mc_usage_list(f->tn, NULL, day, day, &u, &n, &err), MC_OK);
    assert_int_equal(n, 2);
    mc_free(u);
    assert_int_equal(mc_usage_record(f->tn, "t_ffffffffffffffff", NOON_MS, 1, 1, 1, &err),
                     MC_ENOTFOUND);
}

/* ---------------------------------------------------------------------------------------
 * Allocation failures */

static void test_tenant_create_and_lookup_survive_allocation_failures(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    struct mc_front fr;
    mc_front_init(&fr);
    fr.system_prompt = mc_strdup("prompt");
    fr.template = mc_strdup("{{input}}");
    char id[MC_TENANT_ID_LEN + 1];
    int rc = MC_ENOMEM, n_fail = 0;
    for (long nth = 1; rc != MC_OK && nth < 200; nth++) {
        mc_mem_fail_after(nth);
        rc = mc_tenant_create(f->tn, "acme", &fr, NULL, id, &err);
        mc_mem_fail_after(0);
        if (rc != MC_OK) {
            n_fail++;
            assert_int_equal(rc, MC_ENOMEM);
            /* The transaction was rolled back: no half-made tenant. */
            struct mc_tenant_info *all;
            size_t n;
            assert_int_equal(mc_tenant_list(f->tn, &all, &n, &err), MC_OK);
            assert_int_equal(n, 0);
            mc_free(all);
        }
    }
    assert_int_equal(rc, MC_OK);
    assert_true(n_fail >= 2);
    mc_front_deinit(&fr);

    char secret[MC_KEY_SECRET_LEN + 1];
    assert_int_equal(mc_key_create(f->tn, id, secret, NULL, &err), MC_OK);
    rc = MC_ENOMEM;
    for (long nth = 1; rc != MC_OK && nth < 200; nth++) {
        struct mc_tenant_info t;
        mc_mem_fail_after(nth);
        rc = mc_key_lookup(f->tn, secret, &t, NULL, &err);
        mc_mem_fail_after(0);
        if (rc != MC_OK)
            assert_int_equal(rc, MC_ENOMEM);
        else
            assert_string_equal(t.id, id);
    }
    assert_int_equal(rc, MC_OK);
}

/* ---------------------------------------------------------------------------------------
 * The command line (run by `make test`, which sets MCAI to the built binary) */

/* Runs a shell command, captures its first output line (newline removed), returns its
 * exit status. */
static int run_cmd(const char *cmd, char *line, size_t cap) {
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    line[0] = '\0';
    if (fgets(line, (int)cap, p))
        line[strcspn(line, "\n")] = '\0';
    char drain[256];
    while (fgets(drain, sizeof(drain), p))
        ;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli_tenant_and_key_commands(void **state) {
    struct fx *f = *state;
    const char *mcai = getenv("MCAI");
    if (!mcai || access(mcai, X_OK) != 0)
        skip();
    struct mc_err err = {0};
    char dir[128], cmd[768], out[512], id[64], key[128];
    snprintf(dir, sizeof(dir), "%s/cli", f->dir);
    setenv(MC_MASTER_KEY_ENV, KEY_HEX, 1);

    snprintf(cmd, sizeof(cmd),
             "%s tenant create --data %s --name acme --system-prompt 'Be brief.' --rpm 7 "
             "--tpd 900 2>&1",
             mcai, dir);
    assert_int_equal(run_cmd(cmd, id, sizeof(id)), 0);
    assert_int_equal(strlen(id), MC_TENANT_ID_LEN);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 1);
    assert_string_equal(out, "mcai tenant create: a tenant named 'acme' already exists");
    snprintf(cmd, sizeof(cmd), "%s key create --data %s --tenant acme 2>/dev/null", mcai, dir);
    assert_int_equal(run_cmd(cmd, key, sizeof(key)), 0);
    assert_int_equal(strlen(key), MC_KEY_SECRET_LEN);
    snprintf(cmd, sizeof(cmd), "%s tenant update --data %s acme --system-prompt 'Be long.' 2>&1",
             mcai, dir);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 0);
    assert_string_equal(out, "front version 2");
    snprintf(cmd, sizeof(cmd), "%s tenant create --data %s --name x --rpm -1 2>&1", mcai, dir);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 2);
    assert_string_equal(out, "mcai tenant create: --rpm wants a whole number 0..999999999999, "
                             "got '-1'");

    /* What the CLI wrote, read back through the library with the same master key. */
    struct mc_master_key *mk;
    struct mc_store *s;
    struct mc_tenants *tn;
    assert_int_equal(mc_master_key_load(NULL, dir, &mk, &err), MC_OK);
    assert_int_equal(mc_store_open(dir, mk, &s, &err), MC_OK);
    assert_int_equal(mc_tenants_create(s, &tn, &err), MC_OK);
    struct mc_tenant_info t;
    assert_int_equal(mc_key_lookup(tn, key, &t, NULL, &err), MC_OK);
    assert_string_equal(t.id, id);
    assert_int_equal(t.limits.rpm, 7);
    assert_int_equal(t.limits.tpd, 900);
    struct mc_front fr;
    assert_int_equal(mc_front_get(tn, id, 1, &fr, NULL, &err), MC_OK);
    assert_string_equal(fr.system_prompt, "Be brief.");
    mc_front_deinit(&fr);
    assert_int_equal(mc_front_get(tn, id, 0, &fr, NULL, &err), MC_OK);
    assert_string_equal(fr.system_prompt, "Be long.");
    mc_front_deinit(&fr);

    /* Revoke by prefix from the CLI: the open handle sees it at once. */
    snprintf(cmd, sizeof(cmd), "%s key revoke --data %s --tenant %s %.13s 2>&1", mcai, dir, id,
             key);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 0);
    assert_int_equal(mc_key_lookup(tn, key, &t, NULL, &err), MC_EPERM);

    /* Rotate the master key: a process still holding the old key (this handle, standing
     * for a server that was not stopped) can no longer open the tenant's data. */
    static const char NEW_KEY[] =
        "5e8a1f3c7b2d9e4f6a0c8b1d3e5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c6e8b0d1f";
    char key_file[160];
    snprintf(key_file, sizeof(key_file), "%s/new.key", f->dir);
    FILE *kf = fopen(key_file, "w");
    fputs(NEW_KEY, kf);
    fclose(kf);
    snprintf(cmd, sizeof(cmd),
             "chmod 600 %s && %s key rotate-master --data %s "
             "--new-master-key-file %s 2>&1",
             key_file, mcai, dir, key_file);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 0);
    assert_string_equal(out, "re-wrapped 1 tenant data keys; use the new master key from now on");
    assert_int_equal(mc_front_get(tn, id, 0, &fr, NULL, &err), MC_ECRYPTO);
    mc_front_deinit(&fr);
    snprintf(cmd, sizeof(cmd), "%s tenant show --data %s acme 2>&1", mcai, dir);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "master key does not match"));
    setenv(MC_MASTER_KEY_ENV, NEW_KEY, 1);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 0);

    snprintf(cmd, sizeof(cmd), "%s tenant delete --data %s acme 2>&1", mcai, dir);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 2);
    snprintf(cmd, sizeof(cmd), "%s tenant delete --data %s acme --yes 2>&1", mcai, dir);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 0);
    assert_int_equal(mc_tenant_get(tn, id, &t, &err), MC_ENOTFOUND);
    snprintf(cmd, sizeof(cmd), "%s audit verify --data %s 2>&1", mcai, dir);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 0);
    assert_memory_equal(out, "OK: 6 lines", 11); /* create key front revoke rotate delete */

    mc_tenants_free(tn);
    mc_store_close(s);
    mc_master_key_free(mk);
    unsetenv(MC_MASTER_KEY_ENV);
    unlink(key_file);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void) {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_tenant_create_get_list_update),
        T(test_tenant_create_rejects_duplicate_name),
        T(test_tenant_create_rejects_bad_input),
        T(test_tenant_delete_makes_data_unreadable),
        T(test_key_create_lookup_revoke),
        T(test_key_lookup_refuses_wrong_keys_in_constant_time),
        T(test_key_create_for_unknown_tenant),
        cmocka_unit_test(test_front_json_roundtrip),
        cmocka_unit_test(test_front_json_rejects_bad_input),
        T(test_front_versions_are_kept),
        T(test_front_save_rejects_undefined_template_variable),
        cmocka_unit_test(test_front_render_template),
        cmocka_unit_test(test_limit_requests_per_minute_exact_retry_after),
        cmocka_unit_test(test_limit_tokens_per_minute_and_release_correction),
        cmocka_unit_test(test_limit_upto_grants_what_is_left_and_never_more),
        cmocka_unit_test(test_limit_tokens_per_day_holds_on_the_first_request),
        T(test_limit_tokens_per_day_until_midnight),
        cmocka_unit_test(test_limit_concurrency_and_longest_wait_wins),
        cmocka_unit_test(test_limiter_holds_many_tenants),
        T(test_usage_per_tenant_per_day),
        T(test_tenant_create_and_lookup_survive_allocation_failures),
        T(test_cli_tenant_and_key_commands),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
