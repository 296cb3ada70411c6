/* test_chunk.c - token-window chunking: exact spans on ASCII, UTF-8 boundaries with a
 * byte-level tokenizer, overlap rules, termination, Markdown headings as context, bad
 * tokenizers and allocation failures. */
#include "base/err.h"
#include "base/mem.h"
#include "rag/chunk.h"
#include "test_util.h"

#include <string.h>

/* Every byte is a token, as a byte-level BPE falling back to bytes would give. */
static int tok_bytes(void *ctx, const char *text, size_t len, size_t *starts, size_t cap, size_t *n,
                     struct mc_err *err) {
    (void)ctx;
    (void)text;
    (void)err;
    for (size_t i = 0; i < len && i < cap; i++)
        starts[i] = i;
    *n = len;
    return MC_OK;
}

static int tok_backwards(void *ctx, const char *text, size_t len, size_t *starts, size_t cap,
                         size_t *n, struct mc_err *err) {
    (void)ctx;
    (void)text;
    (void)err;
    if (len >= 2 && cap >= 2) {
        starts[0] = 1;
        starts[1] = 0;
    }
    *n = len >= 2 ? 2 : 0;
    return MC_OK;
}

static int tok_fails(void *ctx, const char *text, size_t len, size_t *starts, size_t cap, size_t *n,
                     struct mc_err *err) {
    (void)ctx;
    (void)text;
    (void)len;
    (void)starts;
    (void)cap;
    (void)n;
    return mc_err_set(err, MC_EIO, "tokenizer exploded");
}

static void expect_text(const char *text, size_t start, size_t end, const char *want) {
    size_t n = strlen(want);
    if (end - start != n || memcmp(text + start, want, n) != 0)
        fail_msg("span [%zu, %zu) is '%.*s', want '%s'", start, end, (int)(end - start),
                 text + start, want);
}

static void expect_span(const char *text, const struct mc_chunk *c, const char *want) {
    expect_text(text, c->start, c->end, want);
}

static void split(const char *text, size_t size, size_t overlap, mc_chunk_tokenize_fn fn,
                  struct mc_chunk_list *l) {
    struct mc_chunk_opts o = {size, overlap, false};
    struct mc_err err;
    int rc = mc_chunk_split(text, strlen(text), &o, fn, NULL, l, &err);
    if (rc)
        fail_msg("split: %s", err.msg);
}

static void test_chunk_ascii_windows_with_overlap(void **state) {
    (void)state;
    const char *t = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9\n";
    struct mc_chunk_list l;
    split(t, 4, 1, mc_chunk_tokenize_words, &l);
    assert_int_equal(l.n_chunks, 3);
    expect_span(t, &l.chunks[0], "w0 w1 w2 w3");
    expect_span(t, &l.chunks[1], "w3 w4 w5 w6");
    expect_span(t, &l.chunks[2], "w6 w7 w8 w9");
    assert_int_equal(l.chunks[0].n_tokens, 4);
    assert_int_equal(l.chunks[2].n_tokens, 4);
    assert_int_equal(l.chunks[0].heading, -1);
    mc_chunk_list_deinit(&l);

    /* No overlap, a short tail window. */
    split(t, 4, 0, mc_chunk_tokenize_words, &l);
    assert_int_equal(l.n_chunks, 3);
    expect_span(t, &l.chunks[2], "w8 w9");
    assert_int_equal(l.chunks[2].n_tokens, 2);
    mc_chunk_list_deinit(&l);

    /* Text shorter than one window: one chunk; empty or blank text: none. */
    split("just three words", 10, 2, mc_chunk_tokenize_words, &l);
    assert_int_equal(l.n_chunks, 1);
    expect_span("just three words", &l.chunks[0], "just three words");
    mc_chunk_list_deinit(&l);
    split("", 10, 2, mc_chunk_tokenize_words, &l);
    assert_int_equal(l.n_chunks, 0);
    mc_chunk_list_deinit(&l);
    split(" \n\t \n", 10, 2, mc_chunk_tokenize_words, &l);
    assert_int_equal(l.n_chunks, 0);
    mc_chunk_list_deinit(&l);
}

static void test_chunk_rejects_overlap_not_below_size(void **state) {
    (void)state;
    struct mc_chunk_list l;
    struct mc_err err;
    struct mc_chunk_opts o = {4, 4, false};
    assert_int_equal(mc_chunk_split("a b", 3, &o, mc_chunk_tokenize_words, NULL, &l, &err),
                     MC_EINVAL);
    assert_string_equal(err.msg, "chunk: overlap 4 must be below size 4");
    o.overlap = 9;
    assert_int_equal(mc_chunk_split("a b", 3, &o, mc_chunk_tokenize_words, NULL, &l, &err),
                     MC_EINVAL);
    o = (struct mc_chunk_opts){0, 0, false};
    assert_int_equal(mc_chunk_split("a b", 3, &o, mc_chunk_tokenize_words, NULL, &l, &err),
                     MC_EINVAL);
    assert_non_null(strstr(err.msg, "size"));
    assert_int_equal(l.n_chunks, 0);
    mc_chunk_list_deinit(&l);
}

static void test_chunk_always_terminates_with_maximal_overlap(void **state) {
    (void)state;
    /* 1000 words, size 5, overlap 4: step 1, so 996 windows, the last ending the text. */
    char *t = malloc(1000 * 6 + 1);
    size_t at = 0;
    for (int i = 0; i < 1000; i++)
        at += (size_t)sprintf(t + at, "x%03d ", i);
    struct mc_chunk_list l;
    split(t, 5, 4, mc_chunk_tokenize_words, &l);
    assert_int_equal(l.n_chunks, 996);
    expect_span(t, &l.chunks[995], "x995 x996 x997 x998 x999");
    for (size_t i = 1; i < l.n_chunks; i++)
        assert_true(l.chunks[i].start > l.chunks[i - 1].start);
    mc_chunk_list_deinit(&l);
    split(t, 1, 0, mc_chunk_tokenize_words, &l);
    assert_int_equal(l.n_chunks, 1000);
    mc_chunk_list_deinit(&l);
    free(t);
}

static bool valid_utf8(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!len || i + len > n)
            return false;
        for (size_t k = 1; k < len; k++)
            if (((unsigned char)s[i + k] & 0xc0) != 0x80)
                return false;
        i += len;
    }
    return true;
}

static void test_chunk_never_cuts_a_utf8_character(void **state) {
    (void)state;
    /* 2-, 3- and 4-byte characters with byte tokens: windows of 4 bytes would cut every
     * one of them; the spans widen to whole characters instead. */
    const char *t = "héllo 東京 😀x ñ";
    struct mc_chunk_list l;
    for (size_t size = 1; size <= 6; size++) {
        for (size_t ov = 0; ov < size; ov++) {
            split(t, size, ov, tok_bytes, &l);
            assert_true(l.n_chunks > 0);
            for (size_t i = 0; i < l.n_chunks; i++) {
                const struct mc_chunk *c = &l.chunks[i];
                if (!valid_utf8(t + c->start, c->end - c->start))
                    fail_msg("size %zu overlap %zu: chunk %zu [%zu, %zu) cuts a character", size,
                             ov, i, c->start, c->end);
            }
            /* The last chunk reaches the end of the text. */
            assert_int_equal(l.chunks[l.n_chunks - 1].end, strlen(t));
            mc_chunk_list_deinit(&l);
        }
    }
    /* Exact spans for one case: 4-byte windows, no overlap. */
    split("ab東京", 4, 0, tok_bytes, &l);
    assert_int_equal(l.n_chunks, 2);
    expect_span("ab東京", &l.chunks[0], "ab東");
    expect_span("ab東京", &l.chunks[1], "東京");
    mc_chunk_list_deinit(&l);
}

static void test_chunk_headings_give_context(void **state) {
    (void)state;
    const char *t = "intro text\n"
                    "# Install\n"
                    "alpha beta\n"
                    "## On Linux ##\n"
                    "gamma\n"
                    "   ### Deep\n"
                    "# Usage\n"
                    "delta\n"
                    "```\n"
                    "# not a heading\n"
                    "```\n"
                    "#hashtag and ####### seven and\n"
                    "    # four spaces\n";
    struct mc_chunk_list l;
    split(t, 50, 5, mc_chunk_tokenize_words, &l);
    assert_int_equal(l.n_headings, 4);
    expect_text(t, l.headings[1].start, l.headings[1].end, "On Linux");
    assert_int_equal(l.headings[1].level, 2);
    assert_int_equal(l.headings[1].parent, 0);
    assert_int_equal(l.headings[2].level, 3);
    assert_int_equal(l.headings[2].parent, 1);
    assert_int_equal(l.headings[3].parent, -1);

    /* "Deep" has no body, so no chunk. */
    assert_int_equal(l.n_chunks, 4);
    expect_span(t, &l.chunks[0], "intro text");
    assert_int_equal(l.chunks[0].heading, -1);
    expect_span(t, &l.chunks[1], "alpha beta");
    assert_int_equal(l.chunks[1].heading, 0);
    expect_span(t, &l.chunks[2], "gamma");
    assert_int_equal(l.chunks[2].heading, 1);
    expect_span(t, &l.chunks[3],
                "delta\n```\n# not a heading\n```\n#hashtag and ####### "
                "seven and\n    # four spaces");
    assert_int_equal(l.chunks[3].heading, 3);

    char *p;
    assert_int_equal(mc_chunk_prefix(t, &l, 2, &p, NULL), MC_OK);
    assert_string_equal(p, "Install > On Linux");
    mc_free(p);
    assert_int_equal(mc_chunk_prefix(t, &l, 0, &p, NULL), MC_OK);
    assert_string_equal(p, "");
    mc_free(p);
    assert_int_equal(mc_chunk_prefix(t, &l, 3, &p, NULL), MC_OK);
    assert_string_equal(p, "Usage");
    mc_free(p);
    struct mc_err err;
    assert_int_equal(mc_chunk_prefix(t, &l, 4, &p, &err), MC_EINVAL);
    assert_null(p);
    mc_chunk_list_deinit(&l);

    /* With headings off, '#' lines are text and everything is one section. */
    struct mc_chunk_opts o = {100, 0, true};
    assert_int_equal(mc_chunk_split(t, strlen(t), &o, mc_chunk_tokenize_words, NULL, &l, NULL),
                     MC_OK);
    assert_int_equal(l.n_headings, 0);
    assert_int_equal(l.n_chunks, 1);
    assert_int_equal(l.chunks[0].start, 0);
    mc_chunk_list_deinit(&l);
}

static void test_chunk_reports_bad_tokenizers(void **state) {
    (void)state;
    struct mc_chunk_list l;
    struct mc_err err;
    struct mc_chunk_opts o = {4, 1, false};
    assert_int_equal(mc_chunk_split("some text", 9, &o, tok_backwards, NULL, &l, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "out of order"));
    mc_chunk_list_deinit(&l);
    assert_int_equal(mc_chunk_split("some text", 9, &o, tok_fails, NULL, &l, &err), MC_EIO);
    assert_string_equal(err.msg, "tokenizer exploded");
    mc_chunk_list_deinit(&l);
    assert_int_equal(mc_chunk_split("some text", 9, &o, NULL, NULL, &l, &err), MC_EINVAL);
}

static void test_chunk_allocation_failures_are_clean(void **state) {
    (void)state;
    const char *t = "# A\none two three four five six\n## B\nseven eight nine ten\n";
    struct mc_chunk_opts o = {2, 1, false};
    for (long nth = 1; nth < 20; nth++) {
        struct mc_chunk_list l;
        mc_mem_fail_after(nth);
        int rc = mc_chunk_split(t, strlen(t), &o, mc_chunk_tokenize_words, NULL, &l, NULL);
        mc_mem_fail_after(0);
        assert_true(rc == MC_OK || rc == MC_ENOMEM);
        if (rc == MC_OK)
            assert_int_equal(l.n_chunks, 5 + 3);
        mc_chunk_list_deinit(&l);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunk_ascii_windows_with_overlap),
        cmocka_unit_test(test_chunk_rejects_overlap_not_below_size),
        cmocka_unit_test(test_chunk_always_terminates_with_maximal_overlap),
        cmocka_unit_test(test_chunk_never_cuts_a_utf8_character),
        cmocka_unit_test(test_chunk_headings_give_context),
        cmocka_unit_test(test_chunk_reports_bad_tokenizers),
        cmocka_unit_test(test_chunk_allocation_failures_are_clean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
