/* test_bm25.c - BM25: exact scores on a hand-computed corpus, the analyser (stop words,
 * stemming, Unicode, possessives), deletes and compaction, serialization round trips,
 * corrupt images and allocation failures.
 *
 * The expected scores below were computed by hand (and checked in Python) from
 *   idf(t)      = ln(1 + (N - df + 0.5) / (df + 0.5))
 *   score(D, Q) = sum_t qtf * idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * |D| / avgdl))
 * with k1 = 1.2, b = 0.75, no stemming. */
#include "base/err.h"
#include "base/mem.h"
#include "rag/bm25.h"
#include "test_util.h"

#include <stdint.h>
#include <string.h>

static struct mc_bm25 *make(float k1, float b, int stemmer) {
    struct mc_bm25_params p = {k1, b, stemmer, false};
    struct mc_bm25 *bm;
    assert_int_equal(mc_bm25_create(&p, &bm, NULL), MC_OK);
    return bm;
}

static void add(struct mc_bm25 *bm, uint64_t label, const char *text) {
    struct mc_err err;
    int rc = mc_bm25_add(bm, label, text, strlen(text), &err);
    if (rc)
        fail_msg("add %llu: %s", (unsigned long long)label, err.msg);
}

static size_t search(struct mc_bm25 *bm, const char *q, size_t k, struct mc_bm25_hit *hits) {
    size_t n;
    assert_int_equal(mc_bm25_search(bm, q, strlen(q), k, hits, &n, NULL), MC_OK);
    return n;
}

/* d10 "apple banana apple" (|D| 3), d20 "banana cherry" (2), d30 "cherry cherry cherry
 * date" (4): N = 3, avgdl = 3. */
static struct mc_bm25 *tiny(void) {
    struct mc_bm25 *bm = make(1.2f, 0.75f, MC_BM25_STEM_NONE);
    add(bm, 10, "apple banana apple");
    add(bm, 20, "Banana, cherry!");
    add(bm, 30, "cherry cherry cherry date");
    return bm;
}

static void test_bm25_scores_match_hand_computation(void **state) {
    (void)state;
    struct mc_bm25 *bm = tiny();
    struct mc_bm25_hit h[5];

    /* apple: df 1, idf ln(1 + 2.5/1.5) = 0.980829; d10 tf 2, norm 1.2: 2*2.2/3.2. */
    assert_int_equal(search(bm, "apple", 5, h), 1);
    assert_int_equal(h[0].label, 10);
    assert_float_near(h[0].score, 1.3486402, 1e-5);

    /* banana, cherry: df 2 each, idf ln(1.6) = 0.470004. */
    assert_int_equal(search(bm, "banana cherry", 5, h), 3);
    assert_int_equal(h[0].label, 20);
    assert_float_near(h[0].score, 1.0884295, 1e-5);
    assert_int_equal(h[1].label, 30);
    assert_float_near(h[1].score, 0.6893387, 1e-5);
    assert_int_equal(h[2].label, 10);
    assert_float_near(h[2].score, 0.4700036, 1e-5);

    /* A repeated query term counts twice (qtf 2). k limits the hits. */
    assert_int_equal(search(bm, "apple APPLE", 1, h), 1);
    assert_float_near(h[0].score, 2 * 1.3486402, 2e-5);
    assert_int_equal(search(bm, "banana cherry", 2, h), 2);
    assert_int_equal(h[1].label, 30);

    /* Unknown terms and empty queries give no hits and no error. */
    assert_int_equal(search(bm, "zebra", 5, h), 0);
    assert_int_equal(search(bm, "", 5, h), 0);
    assert_int_equal(search(bm, "apple", 0, h), 0);
    mc_bm25_free(bm);
}

static void test_bm25_idf_stays_positive_for_a_term_in_every_doc(void **state) {
    (void)state;
    struct mc_bm25 *bm = make(0.9f, 0.4f, MC_BM25_STEM_NONE);
    add(bm, 1, "common alpha");
    add(bm, 2, "common beta");
    add(bm, 3, "common gamma");
    struct mc_bm25_hit h[3];
    /* df = N = 3: idf = ln(1 + 0.5/3.5) = 0.133531; every length equals avgdl, norm = k1. */
    assert_int_equal(search(bm, "common", 3, h), 3);
    for (int i = 0; i < 3; i++) {
        assert_float_near(h[i].score, 0.1335314 * 1.9 / 1.9, 1e-5);
        assert_int_equal(h[i].label, (uint64_t)i + 1); /* equal scores: lower label first */
    }
    mc_bm25_free(bm);
}

static void test_bm25_deleted_docs_vanish_and_stats_follow(void **state) {
    (void)state;
    struct mc_bm25 *bm = tiny();
    struct mc_err err;
    struct mc_bm25_hit h[5];
    assert_int_equal(mc_bm25_delete(bm, 20, &err), MC_OK);
    assert_int_equal(mc_bm25_delete(bm, 20, &err), MC_ENOTFOUND);
    assert_non_null(strstr(err.msg, "label 20"));
    assert_int_equal(mc_bm25_n_docs(bm), 2);

    /* N 2, avgdl 3.5, df 1 each: idf ln 2. */
    assert_int_equal(search(bm, "banana cherry", 5, h), 2);
    assert_int_equal(h[0].label, 30);
    assert_float_near(h[0].score, 1.0568779, 1e-5);
    assert_int_equal(h[1].label, 10);
    assert_float_near(h[1].score, 0.7361701, 1e-5);

    /* The label can come back; a live label cannot be added twice. */
    assert_int_equal(mc_bm25_add(bm, 10, "x", 1, &err), MC_EEXIST);
    assert_non_null(strstr(err.msg, "label 10"));
    add(bm, 20, "banana cherry");
    assert_int_equal(search(bm, "banana cherry", 5, h), 3);
    assert_int_equal(h[0].label, 20);
    assert_float_near(h[0].score, 1.0884295, 1e-5);
    mc_bm25_free(bm);
}

static void test_bm25_compaction_keeps_scores(void **state) {
    (void)state;
    /* 3000 docs, 2500 deleted: compaction runs; scores equal an index of the survivors. */
    struct mc_bm25 *a = make(0.9f, 0.4f, MC_BM25_STEM_PORTER);
    struct mc_bm25 *b = make(0.9f, 0.4f, MC_BM25_STEM_PORTER);
    char text[128];
    for (int i = 0; i < 3000; i++) {
        snprintf(text, sizeof(text), "doc w%d w%d w%d shared term%d", i % 7, i % 13, i % 29, i % 5);
        add(a, (uint64_t)i, text);
        if (i % 6 == 0)
            add(b, (uint64_t)i, text);
    }
    for (int i = 0; i < 3000; i++)
        if (i % 6 != 0)
            assert_int_equal(mc_bm25_delete(a, (uint64_t)i, NULL), MC_OK);
    assert_int_equal(mc_bm25_n_docs(a), 500);
    struct mc_bm25_hit ha[50], hb[50];
    const char *qs[] = {"w3 w5", "term2 shared", "w11 w28 doc"};
    for (int q = 0; q < 3; q++) {
        size_t na = search(a, qs[q], 50, ha), nb = search(b, qs[q], 50, hb);
        assert_int_equal(na, nb);
        for (size_t i = 0; i < na; i++) {
            assert_int_equal(ha[i].label, hb[i].label);
            assert_float_near(ha[i].score, hb[i].score, 1e-6);
            assert_int_equal(ha[i].label % 6, 0);
        }
    }
    mc_bm25_free(a);
    mc_bm25_free(b);
}

static void expect_terms(int stemmer, bool keep_stop, const char *text, const char *want) {
    struct mc_bm25_params p = {0.9f, 0.4f, stemmer, keep_stop};
    struct mc_bm25 *bm;
    char out[512];
    assert_int_equal(mc_bm25_create(&p, &bm, NULL), MC_OK);
    int n = mc_bm25_analyze(bm, text, strlen(text), out, sizeof(out), NULL);
    assert_true(n >= 0);
    assert_string_equal(out, want);
    mc_bm25_free(bm);
}

static void test_bm25_analyzer_stems_and_drops_stop_words(void **state) {
    (void)state;
    /* Porter, stop words removed, possessive 's dropped, dogs' apostrophe separates. */
    expect_terms(MC_BM25_STEM_PORTER, false,
                 "The Running dogs' owner's generously CONNECTED to a network",
                 "run dog owner gener connect network");
    /* Porter2 ("english") differs from Porter on some words. */
    expect_terms(MC_BM25_STEM_ENGLISH, false, "generously connected", "generous connect");
    expect_terms(MC_BM25_STEM_NONE, false, "Running dogs", "running dogs");
    /* Every word of the documented stop list goes; kept when asked. */
    const char *stop = "a an and are as at be but by for if in into is it no not of on or "
                       "such that the their then there these they this to was will with";
    expect_terms(MC_BM25_STEM_NONE, false, stop, "");
    expect_terms(MC_BM25_STEM_NONE, true, "The end", "the end");
    /* Stop words are matched before stemming: "thing" stays, "this" goes. */
    expect_terms(MC_BM25_STEM_PORTER, false, "this thing", "thing");
}

static void test_bm25_analyzer_handles_unicode_and_bad_bytes(void **state) {
    (void)state;
    /* Case folding beyond ASCII; letters of any script; combining marks stay in words. */
    expect_terms(MC_BM25_STEM_NONE, false, "CAFÉ ΑΘΗΝΑ 東京タワー e\xcc\x81tude",
                 "café αθηνα 東京タワー e\xcc\x81tude");
    /* Digits are word characters; punctuation splits "3.5mg" and "don't". */
    expect_terms(MC_BM25_STEM_NONE, false, "3.5mg don't", "3 5mg don t");
    /* An invalid byte separates words and never crashes. */
    expect_terms(MC_BM25_STEM_NONE, false,
                 "ab\xff"
                 "cd \xe2\x82",
                 "ab cd");
    /* Words over 64 bytes are cut at a character boundary: 70 x "é" gives 32 of them. */
    char in[200] = {0}, want[80] = {0};
    for (int i = 0; i < 70; i++)
        strcat(in, "\xc3\xa9");
    for (int i = 0; i < 32; i++)
        strcat(want, "\xc3\xa9");
    expect_terms(MC_BM25_STEM_NONE, false, in, want);
}

static void test_bm25_rejects_bad_parameters(void **state) {
    (void)state;
    struct mc_bm25_params p;
    struct mc_bm25 *bm = (struct mc_bm25 *)1;
    struct mc_err err;
    mc_bm25_params_default(&p);
    assert_float_near(p.k1, 0.9, 1e-7);
    assert_float_near(p.b, 0.4, 1e-7);
    p.b = 1.5f;
    assert_int_equal(mc_bm25_create(&p, &bm, &err), MC_EINVAL);
    assert_null(bm);
    assert_non_null(strstr(err.msg, "b 1.5"));
    p.b = 0.4f;
    p.k1 = NAN;
    assert_int_equal(mc_bm25_create(&p, &bm, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "k1"));
    p.k1 = 1.0f;
    p.stemmer = 9;
    assert_int_equal(mc_bm25_create(&p, &bm, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "stemmer 9"));
    mc_bm25_free(NULL);
}

static void test_bm25_serialize_round_trip_is_exact(void **state) {
    (void)state;
    struct mc_bm25 *a = make(0.9f, 0.4f, MC_BM25_STEM_PORTER);
    char text[160];
    for (int i = 0; i < 200; i++) {
        snprintf(text, sizeof(text), "Document %d talks about topic%d and item%d, running %s", i,
                 i % 9, i % 17, i % 2 ? "fast" : "slowly");
        add(a, 1000 + (uint64_t)i, text);
    }
    for (int i = 0; i < 200; i += 5)
        assert_int_equal(mc_bm25_delete(a, 1000 + (uint64_t)i, NULL), MC_OK);
    uint8_t *buf, *buf2;
    size_t len, len2;
    struct mc_err err;
    assert_int_equal(mc_bm25_serialize(a, &buf, &len, &err), MC_OK);
    struct mc_bm25 *b;
    assert_int_equal(mc_bm25_deserialize(buf, len, &b, &err), MC_OK);
    assert_int_equal(mc_bm25_n_docs(b), 160);
    assert_int_equal(mc_bm25_n_terms(b), mc_bm25_n_terms(a));

    const char *qs[] = {"topic3 item5", "running fast", "document 42", "slow topic0 topic0"};
    for (int q = 0; q < 4; q++) {
        struct mc_bm25_hit ha[200], hb[200];
        size_t na = search(a, qs[q], 200, ha), nb = search(b, qs[q], 200, hb);
        assert_int_equal(na, nb);
        for (size_t i = 0; i < na; i++) {
            assert_int_equal(ha[i].label, hb[i].label);
            assert_memory_equal(&ha[i].score, &hb[i].score, sizeof(float));
        }
    }
    assert_int_equal(mc_bm25_serialize(b, &buf2, &len2, &err), MC_OK);
    assert_int_equal(len2, len);
    assert_memory_equal(buf, buf2, len);
    /* The deserialized index keeps working: delete and add. */
    assert_int_equal(mc_bm25_delete(b, 1001, NULL), MC_OK);
    add(b, 1001, "brand new words");
    struct mc_bm25_hit h[2];
    assert_int_equal(search(b, "brand", 2, h), 1);
    assert_int_equal(h[0].label, 1001);
    mc_free(buf);
    mc_free(buf2);
    mc_bm25_free(a);
    mc_bm25_free(b);
}

static void expect_corrupt(const uint8_t *buf, size_t len, const char *needle) {
    struct mc_bm25 *b = (struct mc_bm25 *)1;
    struct mc_err err = {0};
    int rc = mc_bm25_deserialize(buf, len, &b, &err);
    if (rc != MC_EFORMAT)
        fail_msg("len %zu: rc %d, want MC_EFORMAT (msg '%s')", len, rc, err.msg);
    assert_null(b);
    if (needle && !strstr(err.msg, needle))
        fail_msg("message '%s' lacks '%s'", err.msg, needle);
}

static void put32(uint8_t *p, uint32_t v) {
    memcpy(p, &v, 4);
}

static void test_bm25_deserialize_rejects_corrupt_images(void **state) {
    (void)state;
    struct mc_bm25 *a = tiny(); /* terms: apple, banana, cherry, date */
    uint8_t *buf;
    size_t len;
    assert_int_equal(mc_bm25_serialize(a, &buf, &len, NULL), MC_OK);
    uint8_t *c = malloc(len + 8);
    for (size_t cut = 0; cut < len; cut++) {
        memcpy(c, buf, cut);
        expect_corrupt(c, cut, cut >= 8 ? "offset" : NULL);
    }
    memcpy(c, buf, len);
    c[len] = 1;
    expect_corrupt(c, len + 1, "trailing");

    /* Header: magic 0, version 8, k1 12, b 16, stemmer 20, keep 24, n_docs 28, n_terms 32.
     * Docs at 36 (12 bytes each), then term "apple": len 72, bytes 76, n_post 81,
     * posting (doc, tf) at 85. */
    struct {
        size_t off;
        uint32_t val;
        const char *needle;
    } cases[] = {
        {0, 0x4d434d43, "bad magic"}, {8, 2, "version 2"},         {16, 0x40000000, "b 2"},
        {20, 9, "stemmer 9"},         {24, 2, "keep_stopwords 2"}, {28, 0x7fffffff, "n_docs"},
        {32, 0x7fffffff, "n_terms"},  {72, 0, "term length 0"},    {72, 65, "term length 65"},
        {81, 0, "posting count 0"},   {81, 9, "posting count 9"},  {85, 3, "posting doc 3"},
        {89, 0, "zero tf"},           {89, 3, "postings add up"},  {44, 4, "length 4"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memcpy(c, buf, len);
        put32(c + cases[i].off, cases[i].val);
        expect_corrupt(c, len, cases[i].needle);
    }
    memcpy(c, buf, len);
    float nan = NAN;
    memcpy(c + 12, &nan, 4);
    expect_corrupt(c, len, "k1");
    memcpy(c, buf, len);
    memcpy(c + 48, c + 36, 8); /* doc 1 gets doc 0's label */
    expect_corrupt(c, len, "appears twice");
    memcpy(c, buf, len);
    memcpy(c + 97, "cherry", 6); /* "banana" renamed: "cherry" appears twice */
    expect_corrupt(c, len, "term at offset 127 appears twice");

    /* Random flips: an error or a working index, never a crash. */
    uint64_t s = 5;
    for (int t = 0; t < 3000; t++) {
        memcpy(c, buf, len);
        for (int f = 0; f < 2; f++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            c[(s >> 33) % len] ^= (uint8_t)(1 + (s >> 20) % 255);
        }
        struct mc_bm25 *b;
        if (mc_bm25_deserialize(c, len, &b, NULL) == MC_OK) {
            struct mc_bm25_hit h[4];
            search(b, "apple banana cherry date", 4, h);
            mc_bm25_free(b);
        }
    }
    free(c);
    mc_free(buf);
    mc_bm25_free(a);
}

static void test_bm25_allocation_failures_are_clean(void **state) {
    (void)state;
    struct mc_bm25 *bm = make(0.9f, 0.4f, MC_BM25_STEM_PORTER);
    int added = 0;
    for (long nth = 1; nth < 60; nth++) {
        char text[64];
        snprintf(text, sizeof(text), "unique%ld words shared here", nth);
        mc_mem_fail_after(nth);
        int rc = mc_bm25_add(bm, (uint64_t)nth, text, strlen(text), NULL);
        mc_mem_fail_after(0);
        assert_true(rc == MC_OK || rc == MC_ENOMEM);
        added += rc == MC_OK;
        assert_int_equal(mc_bm25_n_docs(bm), added);
    }
    struct mc_bm25_hit h[64];
    assert_int_equal(search(bm, "shared", 64, h), added);
    uint8_t *buf;
    size_t len;
    assert_int_equal(mc_bm25_serialize(bm, &buf, &len, NULL), MC_OK);
    for (long nth = 1; nth < 40; nth++) {
        struct mc_bm25 *b;
        mc_mem_fail_after(nth);
        int rc = mc_bm25_deserialize(buf, len, &b, NULL);
        mc_mem_fail_after(0);
        assert_true(rc == MC_OK || rc == MC_ENOMEM);
        if (rc == MC_OK)
            mc_bm25_free(b);
    }
    mc_free(buf);
    mc_bm25_free(bm);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bm25_scores_match_hand_computation),
        cmocka_unit_test(test_bm25_idf_stays_positive_for_a_term_in_every_doc),
        cmocka_unit_test(test_bm25_deleted_docs_vanish_and_stats_follow),
        cmocka_unit_test(test_bm25_compaction_keeps_scores),
        cmocka_unit_test(test_bm25_analyzer_stems_and_drops_stop_words),
        cmocka_unit_test(test_bm25_analyzer_handles_unicode_and_bad_bytes),
        cmocka_unit_test(test_bm25_rejects_bad_parameters),
        cmocka_unit_test(test_bm25_serialize_round_trip_is_exact),
        cmocka_unit_test(test_bm25_deserialize_rejects_corrupt_images),
        cmocka_unit_test(test_bm25_allocation_failures_are_clean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
