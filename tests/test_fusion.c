/* test_fusion.c - reciprocal rank fusion: exact fused scores and order for k = 60 and a
 * configured k, duplicates within a list, weights, truncation and bad arguments.
 * Expected scores are sums of weight / (k + rank) with ranks from 1. */
#include "base/err.h"
#include "rag/fusion.h"
#include "test_util.h"

#include <string.h>

static void test_fusion_rrf_k60_orders_by_summed_reciprocal_ranks(void **state) {
    (void)state;
    const uint64_t a[] = {1, 2, 3}, b[] = {3, 1, 4};
    struct mc_fusion_list lists[] = {{a, 3, 1.0f}, {b, 3, 1.0f}};
    struct mc_fusion_hit out[8];
    size_t n;
    assert_int_equal(mc_fusion_rrf(lists, 2, 0, 8, out, &n, NULL), MC_OK);
    assert_int_equal(n, 4);
    /* 1: 1/61 + 1/62; 3: 1/63 + 1/61; 2: 1/62; 4: 1/63. */
    assert_int_equal(out[0].label, 1);
    assert_float_near(out[0].score, 1.0 / 61 + 1.0 / 62, 1e-7);
    assert_int_equal(out[0].best_rank, 1);
    assert_int_equal(out[1].label, 3);
    assert_float_near(out[1].score, 1.0 / 63 + 1.0 / 61, 1e-7);
    assert_int_equal(out[2].label, 2);
    assert_float_near(out[2].score, 1.0 / 62, 1e-7);
    assert_int_equal(out[3].label, 4);
    assert_float_near(out[3].score, 1.0 / 63, 1e-7);

    /* The same with k given explicitly, and with k = 1. */
    struct mc_fusion_hit out60[8];
    assert_int_equal(mc_fusion_rrf(lists, 2, 60, 8, out60, &n, NULL), MC_OK);
    assert_float_near(out60[1].score, out[1].score, 0);
    assert_int_equal(mc_fusion_rrf(lists, 2, 1, 2, out, &n, NULL), MC_OK);
    assert_int_equal(n, 2);
    assert_int_equal(out[0].label, 1);
    assert_float_near(out[0].score, 1.0 / 2 + 1.0 / 3, 1e-7);
    assert_int_equal(out[1].label, 3);
    assert_float_near(out[1].score, 1.0 / 4 + 1.0 / 2, 1e-7);
}

static void test_fusion_counts_a_repeated_label_once_per_list(void **state) {
    (void)state;
    const uint64_t a[] = {7, 8, 7, 7};
    struct mc_fusion_list lists[] = {{a, 4, 1.0f}};
    struct mc_fusion_hit out[4];
    size_t n;
    assert_int_equal(mc_fusion_rrf(lists, 1, 60, 4, out, &n, NULL), MC_OK);
    assert_int_equal(n, 2);
    assert_int_equal(out[0].label, 7);
    assert_float_near(out[0].score, 1.0 / 61, 1e-7);
    assert_int_equal(out[1].label, 8);
}

static void test_fusion_weights_and_ties(void **state) {
    (void)state;
    const uint64_t a[] = {5, 6}, b[] = {6, 5};
    struct mc_fusion_list lists[] = {{a, 2, 1.0f}, {b, 2, 0.0f}};
    struct mc_fusion_hit out[4];
    size_t n;
    /* Weight 0 silences list b. */
    assert_int_equal(mc_fusion_rrf(lists, 2, 60, 4, out, &n, NULL), MC_OK);
    assert_int_equal(out[0].label, 5);
    /* Equal weights: 5 and 6 tie exactly; the lower label wins. */
    lists[1].weight = 1.0f;
    assert_int_equal(mc_fusion_rrf(lists, 2, 60, 4, out, &n, NULL), MC_OK);
    assert_float_near(out[0].score, out[1].score, 0);
    assert_int_equal(out[0].label, 5);
    assert_int_equal(out[1].label, 6);
    /* Weight 2 on b puts 6 first. */
    lists[1].weight = 2.0f;
    assert_int_equal(mc_fusion_rrf(lists, 2, 60, 4, out, &n, NULL), MC_OK);
    assert_int_equal(out[0].label, 6);
    assert_float_near(out[0].score, 1.0 / 62 + 2.0 / 61, 1e-7);
}

static void test_fusion_rejects_bad_arguments(void **state) {
    (void)state;
    const uint64_t a[] = {1};
    struct mc_fusion_list lists[] = {{a, 1, NAN}};
    struct mc_fusion_hit out[1];
    size_t n = 9;
    struct mc_err err;
    assert_int_equal(mc_fusion_rrf(lists, 1, 60, 1, out, &n, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "weight of list 0"));
    assert_int_equal(n, 0);
    lists[0].weight = 1.0f;
    assert_int_equal(mc_fusion_rrf(lists, 1, -1, 1, out, &n, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "k -1"));
    /* Nothing to fuse, or nothing asked for: no hits, no error. */
    assert_int_equal(mc_fusion_rrf(lists, 0, 60, 1, out, &n, &err), MC_OK);
    assert_int_equal(n, 0);
    assert_int_equal(mc_fusion_rrf(lists, 1, 60, 0, out, &n, &err), MC_OK);
    assert_int_equal(n, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fusion_rrf_k60_orders_by_summed_reciprocal_ranks),
        cmocka_unit_test(test_fusion_counts_a_repeated_label_once_per_list),
        cmocka_unit_test(test_fusion_weights_and_ties),
        cmocka_unit_test(test_fusion_rejects_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
