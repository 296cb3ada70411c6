/* test_hnsw.c - our HNSW index: recall against brute force, deletes, k results whenever k
 * items are live, byte-exact serialization round trips, corrupt images, bad arguments,
 * allocation failures and the SIMD kernels against the scalar ones. */
#include "base/err.h"
#include "base/mem.h"
#include "rag/hnsw.h"
#include "rag/hnsw_int.h"
#include "test_util.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define DIM 24
#define N   2000
#define NQ  100

static uint64_t rng_state;

static float frand(void) {
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rng_state >> 40) & 0xffffff) / (float)0x1000000;
}

/* Clustered data is closer to real embeddings than a uniform cube, and harder. */
static float *make_data(size_t n, int dim, uint64_t seed) {
    rng_state = seed;
    float centers[16][DIM];
    for (int c = 0; c < 16; c++)
        for (int j = 0; j < dim; j++)
            centers[c][j] = frand() * 4.0f;
    float *v = malloc(n * dim * sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        int c = (int)(frand() * 16) % 16;
        for (int j = 0; j < dim; j++)
            v[i * dim + j] = centers[c][j] + frand() - 0.5f;
    }
    return v;
}

static float l2(const float *a, const float *b, int dim) {
    float s = 0;
    for (int j = 0; j < dim; j++)
        s += (a[j] - b[j]) * (a[j] - b[j]);
    return s;
}

/* Brute-force top k over labels 0..n-1 whose alive[] is set (NULL: all), ties by label. */
static size_t brute_force(const float *data, size_t n, const uint8_t *alive, const float *q,
                          size_t k, uint64_t *out) {
    size_t got = 0;
    float best[64];
    for (size_t i = 0; i < n; i++) {
        if (alive && !alive[i])
            continue;
        float d = l2(data + i * DIM, q, DIM);
        size_t pos = got < k ? got : k;
        while (pos > 0 && best[pos - 1] > d)
            pos--;
        if (pos >= k)
            continue;
        size_t last = got < k ? got : k - 1;
        for (size_t j = last; j > pos; j--) {
            best[j] = best[j - 1];
            out[j] = out[j - 1];
        }
        best[pos] = d;
        out[pos] = i;
        if (got < k)
            got++;
    }
    return got;
}

static struct mc_hnsw *build(const float *data, size_t n, int metric, int m) {
    struct mc_hnsw_params p = {DIM, metric, m, 100, 64, 42};
    struct mc_hnsw *h;
    struct mc_err err;
    assert_int_equal(mc_hnsw_create(&p, &h, &err), MC_OK);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(mc_hnsw_insert(h, i, data + i * DIM, &err), MC_OK);
    return h;
}

static void test_hnsw_recall_at_10_beats_095_against_brute_force(void **state) {
    (void)state;
    float *data = make_data(N, DIM, 1);
    float *qs = make_data(NQ, DIM, 2);
    struct mc_hnsw *h = build(data, N, MC_HNSW_L2, 16);
    struct mc_hnsw_hit hits[10];
    size_t n_hits, found = 0;
    for (int qi = 0; qi < NQ; qi++) {
        uint64_t truth[10];
        brute_force(data, N, NULL, qs + qi * DIM, 10, truth);
        assert_int_equal(mc_hnsw_search(h, qs + qi * DIM, 10, 64, hits, &n_hits, NULL), MC_OK);
        assert_int_equal(n_hits, 10);
        for (int a = 0; a < 10; a++) {
            /* Reported distances are the exact squared L2 of the returned item. */
            assert_float_near(hits[a].dist, l2(data + hits[a].label * DIM, qs + qi * DIM, DIM),
                              1e-3);
            if (a > 0)
                assert_true(hits[a - 1].dist <= hits[a].dist);
            for (int b = 0; b < 10; b++)
                found += hits[a].label == truth[b];
        }
    }
    double recall = (double)found / (NQ * 10);
    if (recall < 0.95)
        fail_msg("recall@10 %.4f < 0.95", recall);
    mc_hnsw_free(h);
    free(data);
    free(qs);
}

static void test_hnsw_cosine_finds_the_same_direction(void **state) {
    (void)state;
    float *data = make_data(500, DIM, 3);
    struct mc_hnsw *h = build(data, 500, MC_HNSW_COSINE, 8);
    struct mc_hnsw_hit hits[3];
    size_t n_hits;
    /* A scaled copy of item 77 points the same way: cosine distance 0. */
    float q[DIM];
    for (int j = 0; j < DIM; j++)
        q[j] = data[77 * DIM + j] * 3.5f;
    assert_int_equal(mc_hnsw_search(h, q, 3, 0, hits, &n_hits, NULL), MC_OK);
    assert_int_equal(n_hits, 3);
    assert_int_equal(hits[0].label, 77);
    assert_float_near(hits[0].dist, 0.0, 1e-5);
    struct mc_err err;
    float zero[DIM] = {0};
    assert_int_equal(mc_hnsw_insert(h, 9999, zero, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "zero vector"));
    mc_hnsw_free(h);
    free(data);
}

static void test_hnsw_deleted_ids_are_never_returned(void **state) {
    (void)state;
    float *data = make_data(N, DIM, 4);
    float *qs = make_data(NQ, DIM, 5);
    uint8_t alive[N];
    struct mc_hnsw *h = build(data, N, MC_HNSW_L2, 8);
    /* Delete 90 %, clustered at the front so whole neighbourhoods go. */
    for (size_t i = 0; i < N; i++) {
        alive[i] = !(i < 1700 || i % 3 == 0);
        if (!alive[i])
            assert_int_equal(mc_hnsw_delete(h, i, NULL), MC_OK);
    }
    size_t live = mc_hnsw_n_live(h);
    assert_int_equal(mc_hnsw_n_nodes(h), N);
    assert_int_equal(live, 200);
    assert_int_equal(mc_hnsw_delete(h, 5, NULL), MC_ENOTFOUND);
    struct mc_hnsw_hit hits[10];
    size_t n_hits, found = 0;
    for (int qi = 0; qi < NQ; qi++) {
        uint64_t truth[10];
        brute_force(data, N, alive, qs + qi * DIM, 10, truth);
        assert_int_equal(mc_hnsw_search(h, qs + qi * DIM, 10, 20, hits, &n_hits, NULL), MC_OK);
        assert_int_equal(n_hits, 10);
        for (int a = 0; a < 10; a++) {
            assert_true(alive[hits[a].label]);
            for (int b = 0; b < 10; b++)
                found += hits[a].label == truth[b];
        }
    }
    assert_true(found >= 0.95 * NQ * 10);
    mc_hnsw_free(h);
    free(data);
    free(qs);
}

static void test_hnsw_returns_k_whenever_k_items_live(void **state) {
    (void)state;
    float *data = make_data(1000, DIM, 6);
    struct mc_hnsw *h = build(data, 1000, MC_HNSW_L2, 4);
    uint8_t alive[1000];
    for (size_t i = 0; i < 1000; i++) {
        alive[i] = i % 97 == 0; /* 11 survivors spread over the graph */
        if (!alive[i])
            assert_int_equal(mc_hnsw_delete(h, i, NULL), MC_OK);
    }
    assert_int_equal(mc_hnsw_n_live(h), 11);
    struct mc_hnsw_hit hits[20];
    size_t n_hits;
    uint64_t truth[10];
    for (int qi = 0; qi < 20; qi++) {
        const float *q = data + (qi * 37) * DIM;
        /* ef=1 is raised to k; the result is exact here because few items are live. */
        assert_int_equal(mc_hnsw_search(h, q, 10, 1, hits, &n_hits, NULL), MC_OK);
        assert_int_equal(n_hits, 10);
        brute_force(data, 1000, alive, q, 10, truth);
        for (int a = 0; a < 10; a++)
            assert_int_equal(hits[a].label, truth[a]);
        /* Asking for more than are live gives every live item. */
        assert_int_equal(mc_hnsw_search(h, q, 20, 0, hits, &n_hits, NULL), MC_OK);
        assert_int_equal(n_hits, 11);
    }
    /* Delete all: no hits, no error. Re-insert a deleted label: it is found again. */
    for (size_t i = 0; i < 1000; i += 97)
        assert_int_equal(mc_hnsw_delete(h, i, NULL), MC_OK);
    assert_int_equal(mc_hnsw_search(h, data, 10, 0, hits, &n_hits, NULL), MC_OK);
    assert_int_equal(n_hits, 0);
    assert_int_equal(mc_hnsw_insert(h, 500, data + 500 * DIM, NULL), MC_OK);
    assert_int_equal(mc_hnsw_search(h, data, 10, 0, hits, &n_hits, NULL), MC_OK);
    assert_int_equal(n_hits, 1);
    assert_int_equal(hits[0].label, 500);
    mc_hnsw_free(h);
    free(data);
}

static void test_hnsw_rejects_bad_arguments(void **state) {
    (void)state;
    struct mc_err err;
    struct mc_hnsw *h = NULL;
    struct mc_hnsw_params p = {0, MC_HNSW_L2, 16, 100, 64, 1};
    assert_int_equal(mc_hnsw_create(&p, &h, &err), MC_EINVAL);
    assert_null(h);
    assert_non_null(strstr(err.msg, "dim 0"));
    p.dim = DIM;
    p.m = 1;
    assert_int_equal(mc_hnsw_create(&p, &h, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "m 1"));
    p.m = 16;
    p.metric = 7;
    assert_int_equal(mc_hnsw_create(&p, &h, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "metric 7"));
    p.metric = MC_HNSW_L2;
    assert_int_equal(mc_hnsw_create(&p, &h, &err), MC_OK);
    float v[DIM] = {1};
    assert_int_equal(mc_hnsw_insert(h, 7, v, &err), MC_OK);
    assert_int_equal(mc_hnsw_insert(h, 7, v, &err), MC_EEXIST);
    assert_non_null(strstr(err.msg, "label 7"));
    v[3] = NAN;
    assert_int_equal(mc_hnsw_insert(h, 8, v, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "component 3"));
    assert_int_equal(mc_hnsw_delete(h, 8, &err), MC_ENOTFOUND);
    assert_int_equal(mc_hnsw_set_ef_search(h, 0, &err), MC_EINVAL);
    assert_int_equal(mc_hnsw_contains(h, 7), 1);
    assert_int_equal(mc_hnsw_contains(h, 8), 0);
    mc_hnsw_free(h);
    mc_hnsw_free(NULL);
}

static void search_all(struct mc_hnsw *h, const float *qs, int nq, struct mc_hnsw_hit *out) {
    size_t n_hits;
    for (int qi = 0; qi < nq; qi++) {
        assert_int_equal(mc_hnsw_search(h, qs + qi * DIM, 10, 32, out + qi * 10, &n_hits, NULL),
                         MC_OK);
        assert_int_equal(n_hits, 10);
    }
}

static void assert_hits_equal(const struct mc_hnsw_hit *a, const struct mc_hnsw_hit *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(a[i].label, b[i].label);
        assert_memory_equal(&a[i].dist, &b[i].dist, sizeof(float));
    }
}

static void test_hnsw_serialize_round_trip_is_exact(void **state) {
    (void)state;
    float *data = make_data(1200, DIM, 7);
    float *qs = make_data(50, DIM, 8);
    struct mc_hnsw *a = build(data, 1000, MC_HNSW_L2, 8);
    for (size_t i = 0; i < 1000; i += 7)
        assert_int_equal(mc_hnsw_delete(a, i, NULL), MC_OK);
    uint8_t *buf, *buf2;
    size_t len, len2;
    struct mc_err err;
    assert_int_equal(mc_hnsw_serialize(a, &buf, &len, &err), MC_OK);
    struct mc_hnsw *b;
    assert_int_equal(mc_hnsw_deserialize(buf, len, &b, &err), MC_OK);
    assert_int_equal(mc_hnsw_n_live(b), mc_hnsw_n_live(a));

    /* Same hits, bit for bit; the re-serialized image is byte-identical. */
    struct mc_hnsw_hit ha[500], hb[500];
    search_all(a, qs, 50, ha);
    search_all(b, qs, 50, hb);
    assert_hits_equal(ha, hb, 500);
    assert_int_equal(mc_hnsw_serialize(b, &buf2, &len2, &err), MC_OK);
    assert_int_equal(len2, len);
    assert_memory_equal(buf, buf2, len);
    mc_free(buf2);

    /* The generator state travelled too: later inserts build the same graph. */
    for (size_t i = 1000; i < 1200; i++) {
        assert_int_equal(mc_hnsw_insert(a, i, data + i * DIM, NULL), MC_OK);
        assert_int_equal(mc_hnsw_insert(b, i, data + i * DIM, NULL), MC_OK);
    }
    search_all(a, qs, 50, ha);
    search_all(b, qs, 50, hb);
    assert_hits_equal(ha, hb, 500);
    mc_free(buf);
    assert_int_equal(mc_hnsw_serialize(a, &buf, &len, &err), MC_OK);
    assert_int_equal(mc_hnsw_serialize(b, &buf2, &len2, &err), MC_OK);
    assert_int_equal(len2, len);
    assert_memory_equal(buf, buf2, len);
    mc_free(buf);
    mc_free(buf2);
    mc_hnsw_free(a);
    mc_hnsw_free(b);
    free(data);
    free(qs);
}

static void expect_corrupt(const uint8_t *buf, size_t len, const char *needle) {
    struct mc_hnsw *h = (struct mc_hnsw *)1;
    struct mc_err err = {0};
    int rc = mc_hnsw_deserialize(buf, len, &h, &err);
    if (rc != MC_EFORMAT)
        fail_msg("len %zu: rc %d, want MC_EFORMAT (msg '%s')", len, rc, err.msg);
    assert_null(h);
    if (needle && !strstr(err.msg, needle))
        fail_msg("message '%s' lacks '%s'", err.msg, needle);
}

static void put32(uint8_t *p, uint32_t v) {
    memcpy(p, &v, 4);
}

static void test_hnsw_deserialize_rejects_corrupt_images(void **state) {
    (void)state;
    float *data = make_data(60, DIM, 9);
    struct mc_hnsw *a = build(data, 60, MC_HNSW_L2, 4);
    mc_hnsw_delete(a, 3, NULL);
    uint8_t *buf;
    size_t len;
    assert_int_equal(mc_hnsw_serialize(a, &buf, &len, NULL), MC_OK);
    uint8_t *c = malloc(len + 4);

    /* Every truncation fails with the offset named. */
    for (size_t cut = 0; cut < len; cut++) {
        memcpy(c, buf, cut);
        expect_corrupt(c, cut, cut >= 8 ? "offset" : NULL);
    }
    memcpy(c, buf, len);
    c[len] = 0;
    expect_corrupt(c, len + 1, "trailing");

    memcpy(c, buf, len);
    c[0] = 'X';
    expect_corrupt(c, len, "bad magic");
    memcpy(c, buf, len);
    put32(c + 8, 9);
    expect_corrupt(c, len, "version 9");
    memcpy(c, buf, len);
    put32(c + 12, 0);
    expect_corrupt(c, len, "dim 0");
    memcpy(c, buf, len);
    put32(c + 20, 100000);
    expect_corrupt(c, len, "m 100000");
    memcpy(c, buf, len);
    put32(c + 48, 0xfffffff0u); /* n_nodes */
    expect_corrupt(c, len, "n_nodes");
    memcpy(c, buf, len);
    put32(c + 52, 60); /* n_live, one too many */
    expect_corrupt(c, len, "n_live");
    memcpy(c, buf, len);
    put32(c + 60, 61); /* entry */
    expect_corrupt(c, len, "entry");

    /* Node 0: label(8) meta(4) vector(4*DIM), then its level-0 count and first link. */
    size_t node0 = 64, links0 = node0 + 12 + 4 * DIM;
    memcpy(c, buf, len);
    c[node0 + 9] = 2;
    expect_corrupt(c, len, "deleted flag");
    memcpy(c, buf, len);
    float inf = INFINITY;
    memcpy(c + node0 + 12 + 4, &inf, 4);
    expect_corrupt(c, len, "non-finite");
    memcpy(c, buf, len);
    put32(c + links0, 99);
    expect_corrupt(c, len, "link count 99");
    memcpy(c, buf, len);
    uint32_t cnt;
    memcpy(&cnt, c + links0, 4);
    assert_true(cnt > 0);
    put32(c + links0 + 4, 60);
    expect_corrupt(c, len, "link id 60");
    memcpy(c, buf, len);
    put32(c + links0 + 4, 0);
    expect_corrupt(c, len, "link id 0");

    /* A live label duplicated: copy node 1's label onto node 0 (both live). */
    memcpy(c, buf, len);
    uint64_t lab = 1;
    memcpy(c + node0, &lab, 8);
    expect_corrupt(c, len, "live twice");

    /* Random byte flips: any outcome but a crash; accepted images still search. */
    rng_state = 77;
    for (int t = 0; t < 2000; t++) {
        memcpy(c, buf, len);
        for (int f = 0; f < 3; f++)
            c[(size_t)(frand() * len) % len] ^= (uint8_t)(1 + frand() * 255);
        struct mc_hnsw *h;
        if (mc_hnsw_deserialize(c, len, &h, NULL) == MC_OK) {
            struct mc_hnsw_hit hits[5];
            size_t n_hits;
            assert_int_equal(mc_hnsw_search(h, data, 5, 0, hits, &n_hits, NULL), MC_OK);
            assert_int_equal(n_hits, mc_hnsw_n_live(h) < 5 ? mc_hnsw_n_live(h) : 5);
            mc_hnsw_free(h);
        }
    }
    free(c);
    mc_free(buf);
    mc_hnsw_free(a);
    free(data);
}

static void test_hnsw_allocation_failures_leave_index_usable(void **state) {
    (void)state;
    float *data = make_data(300, DIM, 10);
    struct mc_hnsw *h = build(data, 200, MC_HNSW_L2, 4);
    size_t next = 200;
    for (long nth = 1; nth < 40 && next < 300; nth++) {
        mc_mem_fail_after(nth);
        int rc = mc_hnsw_insert(h, next, data + next * DIM, NULL);
        mc_mem_fail_after(0);
        assert_true(rc == MC_OK || rc == MC_ENOMEM);
        if (rc == MC_OK)
            next++;
        assert_int_equal(mc_hnsw_n_live(h), next);
        struct mc_hnsw_hit hits[10];
        size_t n_hits;
        assert_int_equal(mc_hnsw_search(h, data + 5 * DIM, 10, 0, hits, &n_hits, NULL), MC_OK);
        assert_int_equal(hits[0].label, 5);
    }
    uint8_t *buf;
    size_t len;
    assert_int_equal(mc_hnsw_serialize(h, &buf, &len, NULL), MC_OK);
    for (long nth = 1; nth < 30; nth++) {
        struct mc_hnsw *b;
        mc_mem_fail_after(nth);
        int rc = mc_hnsw_deserialize(buf, len, &b, NULL);
        mc_mem_fail_after(0);
        assert_true(rc == MC_OK || rc == MC_ENOMEM);
        if (rc == MC_OK)
            mc_hnsw_free(b);
    }
    mc_free(buf);
    mc_hnsw_free(h);
    free(data);
}

static void test_hnsw_simd_kernels_match_scalar(void **state) {
    (void)state;
    float a[784], b[784];
    rng_state = 11;
    for (int i = 0; i < 784; i++) {
        a[i] = frand() * 255;
        b[i] = frand() * 255;
    }
    float l2s = hnsw_l2_scalar(a, b, 784), dots = hnsw_dot_scalar(a, b, 784);
    float tol_l2 = l2s * 1e-5f, tol_dot = dots * 1e-5f;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        assert_float_near(hnsw_l2_avx2(a, b, 784), l2s, tol_l2);
        assert_float_near(hnsw_dot_avx2(a, b, 784), dots, tol_dot);
        assert_float_near(hnsw_l2_bounded_avx2(a, b, 784, INFINITY), l2s, tol_l2);
        assert_true(hnsw_l2_bounded_avx2(a, b, 784, 10.0f) > 10.0f);
    }
    if (__builtin_cpu_supports("avx512f")) {
        assert_float_near(hnsw_l2_avx512(a, b, 784), l2s, tol_l2);
        assert_float_near(hnsw_dot_avx512(a, b, 784), dots, tol_dot);
        assert_float_near(hnsw_l2_bounded_avx512(a, b, 784, INFINITY), l2s, tol_l2);
        assert_true(hnsw_l2_bounded_avx512(a, b, 784, 10.0f) > 10.0f);
        assert_float_near(hnsw_l2_avx512(a, b, 16), hnsw_l2_scalar(a, b, 16), 1.0);
    }
    assert_float_near(hnsw_l2_bounded_scalar(a, b, 784, INFINITY), l2s, 0);
}

struct reader {
    const struct mc_hnsw *h;
    const float *qs;
    struct mc_hnsw_hit hits[NQ * 10];
    int rc;
};

static void *read_all(void *arg) {
    struct reader *r = arg;
    struct mc_hnsw_scratch *s;
    r->rc = mc_hnsw_scratch_create(&s, NULL);
    for (int qi = 0; qi < NQ && !r->rc; qi++) {
        size_t n;
        r->rc = mc_hnsw_search_with(r->h, s, r->qs + qi * DIM, 10, 32, r->hits + qi * 10, &n, NULL);
    }
    mc_hnsw_scratch_free(s);
    return NULL;
}

static void test_hnsw_concurrent_readers_get_sequential_results(void **state) {
    (void)state;
    float *data = make_data(N, DIM, 12);
    float *qs = make_data(NQ, DIM, 13);
    struct mc_hnsw *h = build(data, N, MC_HNSW_L2, 8);
    for (size_t i = 0; i < N; i += 4)
        assert_int_equal(mc_hnsw_delete(h, i, NULL), MC_OK);
    struct mc_hnsw_hit want[NQ * 10];
    for (int qi = 0; qi < NQ; qi++) {
        size_t n;
        assert_int_equal(mc_hnsw_search(h, qs + qi * DIM, 10, 32, want + qi * 10, &n, NULL), MC_OK);
    }
    static struct reader r[4];
    pthread_t th[4];
    for (int t = 0; t < 4; t++) {
        r[t] = (struct reader){.h = h, .qs = qs};
        assert_int_equal(pthread_create(&th[t], NULL, read_all, &r[t]), 0);
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(r[t].rc, MC_OK);
        for (int i = 0; i < NQ * 10; i++) {
            assert_int_equal(r[t].hits[i].label, want[i].label);
            assert_float_near(r[t].hits[i].dist, want[i].dist, 0);
        }
    }
    mc_hnsw_free(h);
    free(data);
    free(qs);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hnsw_recall_at_10_beats_095_against_brute_force),
        cmocka_unit_test(test_hnsw_cosine_finds_the_same_direction),
        cmocka_unit_test(test_hnsw_deleted_ids_are_never_returned),
        cmocka_unit_test(test_hnsw_returns_k_whenever_k_items_live),
        cmocka_unit_test(test_hnsw_rejects_bad_arguments),
        cmocka_unit_test(test_hnsw_serialize_round_trip_is_exact),
        cmocka_unit_test(test_hnsw_deserialize_rejects_corrupt_images),
        cmocka_unit_test(test_hnsw_allocation_failures_leave_index_usable),
        cmocka_unit_test(test_hnsw_simd_kernels_match_scalar),
        cmocka_unit_test(test_hnsw_concurrent_readers_get_sequential_results),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
