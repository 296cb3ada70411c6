/* test_base.c - errors, allocation-failure injection and the thread pool. */
#include "base/err.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/pool.h"
#include "test_util.h"

#include <string.h>

static void test_err_set_formats_and_returns_code(void **state) {
    (void)state;
    struct mc_err err = {0};
    int rc = mc_err_set(&err, MC_EFORMAT, "bad %s at offset %d", "magic", 4);
    assert_int_equal(rc, MC_EFORMAT);
    assert_int_equal(err.code, MC_EFORMAT);
    assert_string_equal(err.msg, "bad magic at offset 4");
    mc_err_prefix(&err, "%s", "model.gguf");
    assert_string_equal(err.msg, "model.gguf: bad magic at offset 4");
    assert_string_equal(mc_strerror(MC_ENOTFOUND), "not found");
}

static void test_mem_fail_after_fails_exactly_the_nth(void **state) {
    (void)state;
    mc_mem_fail_after(2);
    void *a = mc_malloc(8);
    void *b = mc_malloc(8);
    void *c = mc_malloc(8);
    mc_mem_fail_after(0);
    assert_non_null(a);
    assert_null(b);
    assert_non_null(c);
    mc_free(a);
    mc_free(c);
}

struct sum_ctx {
    long partial[8];
};

static void sum_part(void *ctx, int i, int n) {
    struct sum_ctx *s = ctx;
    long acc = 0;
    for (long k = i; k < 100000; k += n)
        acc += k;
    s->partial[i] = acc;
}

static void test_pool_runs_every_index_once(void **state) {
    (void)state;
    struct mc_pool *pool;
    struct mc_err err;
    assert_int_equal(mc_pool_create(4, &pool, &err), MC_OK);
    for (int round = 0; round < 50; round++) {
        struct sum_ctx s;
        memset(&s, 0, sizeof(s));
        mc_pool_run(pool, sum_part, &s);
        long total = 0;
        for (int i = 0; i < 4; i++)
            total += s.partial[i];
        assert_int_equal(total, 4999950000L);
    }
    mc_pool_free(pool);
}

static void test_log_level_parse(void **state) {
    (void)state;
    enum mc_log_level l;
    assert_int_equal(mc_log_parse_level("debug", &l), MC_OK);
    assert_int_equal(l, MC_LOG_DEBUG);
    assert_int_equal(mc_log_parse_level("loud", &l), MC_EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_err_set_formats_and_returns_code),
        cmocka_unit_test(test_mem_fail_after_fails_exactly_the_nth),
        cmocka_unit_test(test_pool_runs_every_index_once),
        cmocka_unit_test(test_log_level_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
