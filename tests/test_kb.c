/* test_kb.c - knowledge bases: extraction, ingestion, isolation between tenants, sealing
 * at rest, atomic ingest under injected failures, duplicate and existing ids, deletes,
 * lazy unload and reload, caller ids of arbitrary bytes, dense search with the tiny
 * stories260K model, grounded prompts, a realistic run over enterprise_docs, k documents
 * from a per-document search, and a tenant deletion taking its knowledge base along. */
#include "base/err.h"
#include "base/mem.h"
#include "model/model.h"
#include "rag/embed.h"
#include "rag/extract.h"
#include "rag/kb.h"
#include "rag/retrieve.h"
#include "store/crypto.h"
#include "store/store.h"
#include "test_util.h"

#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char KEY_HEX[] = "8f3a1c5e7d9b2f4a6c8e0d1b3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f13";

/* ---------------------------------------------------------------------------------------
 * Fixture: a store in a temporary directory with tenants t_a and t_b */

struct fx {
    char dir[64];
    struct mc_master_key *mk;
    struct mc_store *s;
    struct mc_embedder *emb; /* the bag-of-words test embedder */
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

/* A deterministic embedder: each lower-cased word adds +1 to a dimension chosen by its
 * hash, so texts sharing words are close; good enough to test the plumbing exactly. */
#define BOW_DIM 64
static int bow_embed(void *ctx, const char *const *texts, const size_t *lens, size_t n, float *out,
                     struct mc_err *err) {
    (void)ctx;
    (void)err;
    for (size_t i = 0; i < n; i++) {
        float *v = out + i * BOW_DIM;
        memset(v, 0, BOW_DIM * sizeof(float));
        uint32_t h = 2166136261u;
        bool in_word = false;
        for (size_t j = 0; j <= lens[i]; j++) {
            char c = j < lens[i] ? texts[i][j] : ' ';
            bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
            if (alnum) {
                h = (h ^ (uint8_t)(c | 0x20)) * 16777619u;
                in_word = true;
            } else if (in_word) {
                v[h % BOW_DIM] += 1.0f;
                h = 2166136261u;
                in_word = false;
            }
        }
        v[BOW_DIM - 1] += 0.01f; /* never a zero vector */
    }
    return MC_OK;
}

static int setup(void **state) {
    struct fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/mcai-test-kb-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    struct mc_err err = {0};
    assert_int_equal(mc_master_key_parse(KEY_HEX, &f->mk, &err), MC_OK);
    if (mc_store_open(f->dir, f->mk, &f->s, &err) != MC_OK)
        fail_msg("open: %s", err.msg);
    assert_int_equal(mc_store_tenant_insert(f->s, "t_a", "alpha", 1, NULL, &err), MC_OK);
    assert_int_equal(mc_store_tenant_insert(f->s, "t_b", "beta", 1, NULL, &err), MC_OK);
    assert_int_equal(mc_embedder_create_custom("bow", BOW_DIM, bow_embed, NULL, &f->emb, &err),
                     MC_OK);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    struct fx *f = *state;
    mc_embedder_free(f->emb);
    mc_store_close(f->s);
    mc_master_key_free(f->mk);
    rm_rf(f->dir);
    free(f);
    return 0;
}

static struct mc_kbs *kbs_new(struct fx *f, struct mc_embedder *emb) {
    struct mc_kbs *s = NULL;
    struct mc_err err = {0};
    struct mc_kb_config cfg;
    mc_kb_config_default(&cfg);
    cfg.chunk_tokens = 40;
    cfg.chunk_overlap = 8;
    if (mc_kbs_create(f->s, &cfg, NULL, emb, &s, &err) != MC_OK)
        fail_msg("kbs: %s", err.msg);
    return s;
}

static struct mc_kb *kb_open(struct mc_kbs *s, const char *tenant) {
    struct mc_kb *kb = NULL;
    struct mc_err err = {0};
    assert_int_equal(mc_kb_open(s, tenant, &kb, &err), MC_OK);
    return kb;
}

static struct mc_kb_doc_in doc(const char *id, const char *text) {
    return (struct mc_kb_doc_in){id, strlen(id), text, strlen(text), NULL, NULL, NULL};
}

static void ingest_ok(struct mc_kb *kb, const struct mc_kb_doc_in *d, size_t n, unsigned fl) {
    struct mc_err err = {0};
    int rc = mc_kb_ingest(kb, d, n, fl, NULL, NULL, NULL, &err);
    if (rc != MC_OK)
        fail_msg("ingest: %s", err.msg);
}

static void search(struct mc_kb *kb, const char *q, int mode, size_t k, struct mc_kb_results *r) {
    struct mc_err err = {0};
    struct mc_kb_query qq = {q, strlen(q), mode, k, false, true, 0};
    int rc = mc_kb_search(kb, &qq, r, &err);
    if (rc != MC_OK)
        fail_msg("search '%s': %s", q, err.msg);
}

/* True if any hit of r has document id id. */
static bool hits_doc(const struct mc_kb_results *r, const char *id) {
    for (size_t i = 0; i < r->n; i++)
        if (r->hits[i].doc_id_len == strlen(id) && !memcmp(r->hits[i].doc_id, id, strlen(id)))
            return true;
    return false;
}

static const char *TEXT_WHALE = "The blue whale is the largest animal known to have lived. "
                                "Whales sing long songs across the ocean.";
static const char *TEXT_VOLCANO = "A volcano erupts when magma rises through the crust. "
                                  "Basalt lava flows cool into black rock.";
static const char *TEXT_TEA = "Green tea leaves are steamed, rolled and dried. "
                              "Oolong tea is partly oxidised.";

/* ---------------------------------------------------------------------------------------
 * Extraction */

static void test_extract_markdown_front_matter_goes_to_metadata(void **state) {
    (void)state;
    const char *md = "---\ntitle: \"Transit benefit\"\nredirect_from:\n  - /transit/\n"
                     "  - /benefits/transit/\ntags: travel\n---\n\n# Transit\n\nBody text.\n";
    struct mc_extract_doc d;
    struct mc_err err = {0};
    assert_int_equal(mc_extract(MC_EXTRACT_MARKDOWN, md, strlen(md), &d, &err), MC_OK);
    assert_string_equal(d.title, "Transit benefit");
    assert_string_equal(d.meta, "{\"redirect_from\":[\"/transit/\",\"/benefits/transit/\"],"
                                "\"tags\":\"travel\",\"title\":\"Transit benefit\"}");
    assert_string_equal(d.text, "\n# Transit\n\nBody text.\n");
    assert_int_equal(d.len, strlen(d.text));
    mc_extract_doc_deinit(&d);

    /* No closing fence: not front matter, the text is kept whole. */
    const char *open = "---\ntitle: x\nno end";
    assert_int_equal(mc_extract(MC_EXTRACT_MARKDOWN, open, strlen(open), &d, &err), MC_OK);
    assert_string_equal(d.text, open);
    assert_null(d.title);
    assert_string_equal(d.meta, "{}");
    mc_extract_doc_deinit(&d);
}

static void test_extract_html_drops_script_and_style(void **state) {
    (void)state;
    const char *html = "<html><head><title> Office  hours </title><style>p{color:red}</style>"
                       "<script>var secret = 1;</script></head><body><h2>Opening   times</h2>"
                       "<p>Monday to <b>Friday</b>,\n  9 to 5.</p><script>alert(2)</script>"
                       "<ul><li>one</li><li>two</li></ul><noscript>enable js</noscript>"
                       "<pre>a  b\n c</pre></body></html>";
    struct mc_extract_doc d;
    struct mc_err err = {0};
    assert_int_equal(mc_extract(MC_EXTRACT_HTML, html, strlen(html), &d, &err), MC_OK);
    assert_string_equal(d.title, "Office hours");
    assert_string_equal(d.text, "## Opening times\n\nMonday to Friday, 9 to 5.\n\none\ntwo\n\n"
                                "a  b\n c\n");
    assert_null(strstr(d.text, "secret"));
    assert_null(strstr(d.text, "color"));
    assert_null(strstr(d.text, "alert"));
    mc_extract_doc_deinit(&d);

    /* Broken markup is recovered, never an error. */
    const char *bad = "<p>unclosed <b>bold <i>and <div>nested</p></b>";
    assert_int_equal(mc_extract(MC_EXTRACT_HTML, bad, strlen(bad), &d, &err), MC_OK);
    assert_non_null(strstr(d.text, "unclosed bold and"));
    assert_non_null(strstr(d.text, "nested"));
    mc_extract_doc_deinit(&d);
}

/* Found by fuzz_extract: libxml2 passed the bytes 0xff of this document through, so the
 * text was not UTF-8. Every byte that is not UTF-8 must come out as U+FFFD. */
static void test_extract_html_output_is_always_utf8(void **state) {
    (void)state;
    const char html[] = "<html>\xff<\xff";
    struct mc_extract_doc d;
    struct mc_err err = {0};
    assert_int_equal(mc_extract(MC_EXTRACT_HTML, html, sizeof(html) - 1, &d, &err), MC_OK);
    assert_int_equal(d.len, strlen(d.text));
    assert_string_equal(d.text, "\xEF\xBF\xBD<\xEF\xBF\xBD\n");
    mc_extract_doc_deinit(&d);
}

/* Found by fuzz_extract: the space of a pre element, dropped at the block boundary,
 * stayed in the buffer past the end, so the text was " " while its length said 0. */
static void test_extract_html_length_matches_text(void **state) {
    (void)state;
    const char html[] = "<pre> </pre>";
    struct mc_extract_doc d;
    struct mc_err err = {0};
    assert_int_equal(mc_extract(MC_EXTRACT_HTML, html, sizeof(html) - 1, &d, &err), MC_OK);
    assert_int_equal(d.len, 0);
    assert_string_equal(d.text, "");
    mc_extract_doc_deinit(&d);
}

/* Markup nested deeper than n_open elements around one word. */
static char *nested_html(int n_open, size_t *len) {
    char *p = malloc((size_t)n_open * 5 + 64);
    size_t n = (size_t)sprintf(p, "<html><body>");
    for (int i = 0; i < n_open; i++)
        n += (size_t)sprintf(p + n, "<div>");
    n += (size_t)sprintf(p + n, "deepword");
    *len = n;
    return p;
}

/* libxml2 stops building the tree at 256 levels and drops what lies deeper, text
 * included, without an error: the parser must be told XML_PARSE_HUGE. Past our own
 * walk's bound the document is refused rather than silently cut. */
static void test_extract_html_deep_nesting_keeps_text_or_fails(void **state) {
    (void)state;
    struct mc_extract_doc d;
    struct mc_err err = {0};
    size_t len;
    char *html = nested_html(300, &len);
    assert_int_equal(mc_extract(MC_EXTRACT_HTML, html, len, &d, &err), MC_OK);
    assert_non_null(strstr(d.text, "deepword"));
    mc_extract_doc_deinit(&d);
    free(html);

    html = nested_html(5000, &len);
    assert_int_equal(mc_extract(MC_EXTRACT_HTML, html, len, &d, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "nested deeper than 1024 levels"));
    mc_extract_doc_deinit(&d);
    free(html);
}

static void test_extract_unsupported_type_and_bad_utf8(void **state) {
    (void)state;
    struct mc_extract_doc d;
    struct mc_err err = {0};
    assert_int_equal(mc_extract_type_from_media("application/pdf"), MC_EXTRACT_UNKNOWN);
    assert_int_equal(mc_extract_type_from_media("Text/HTML; charset=utf-8"), MC_EXTRACT_HTML);
    assert_int_equal(mc_extract_type_from_media("text/markdown"), MC_EXTRACT_MARKDOWN);
    assert_int_equal(mc_extract_type_from_path("a/b/README.md"), MC_EXTRACT_MARKDOWN);
    assert_int_equal(mc_extract_type_from_path("x.PDF"), MC_EXTRACT_UNKNOWN);
    assert_int_equal(mc_extract_type_from_path("noext"), MC_EXTRACT_UNKNOWN);
    assert_int_equal(mc_extract(MC_EXTRACT_UNKNOWN, "%PDF-1.4", 8, &d, &err), MC_ENOTSUP);
    assert_non_null(strstr(err.msg, "unsupported document type"));
    mc_extract_doc_deinit(&d);

    const char bad[] = "caf\xc3\xa9 ok \xc3\x28 broken";
    assert_int_equal(mc_extract(MC_EXTRACT_TEXT, bad, sizeof(bad) - 1, &d, &err), MC_EFORMAT);
    assert_string_equal(err.msg, "text is not UTF-8 at byte 9");
    mc_extract_doc_deinit(&d);
}

/* ---------------------------------------------------------------------------------------
 * Basic operations */

static void test_kb_ingest_search_list_get(void **state) {
    struct fx *f = *state;
    struct mc_kbs *s = kbs_new(f, NULL);
    struct mc_kb *kb = kb_open(s, "t_a");
    struct mc_kb_doc_in d[3] = {doc("whale", TEXT_WHALE), doc("volcano", TEXT_VOLCANO),
                                doc("tea", TEXT_TEA)};
    d[1].title = "Volcanoes";
    d[1].meta = "{\"source\": \"geo\"}";
    d[1].content_type = "text/markdown";
    struct mc_kb_ingest_stats st;
    struct mc_err err = {0};
    assert_int_equal(mc_kb_ingest(kb, d, 3, 0, NULL, NULL, &st, &err), MC_OK);
    assert_int_equal(st.n_added, 3);
    assert_int_equal(st.n_replaced, 0);
    assert_int_equal(st.n_chunks, 3);
    assert_int_equal(mc_kb_n_docs(kb), 3);

    struct mc_kb_results r;
    search(kb, "magma basalt", MC_KB_MODE_BM25, 5, &r);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.hits[0].doc_id, "volcano");
    assert_string_equal(r.hits[0].title, "Volcanoes");
    assert_int_equal(r.hits[0].start, 0);
    assert_int_equal(r.hits[0].end, strlen(TEXT_VOLCANO));
    assert_string_equal(r.hits[0].text, TEXT_VOLCANO);
    assert_true(r.hits[0].score > 0);
    mc_kb_results_deinit(&r);

    /* The list is in byte order of ids; get returns everything as stored. */
    struct mc_kb_doc_info *list;
    size_t n;
    assert_int_equal(mc_kb_list(kb, &list, &n, &err), MC_OK);
    assert_int_equal(n, 3);
    assert_string_equal(list[0].id, "tea");
    assert_string_equal(list[1].id, "volcano");
    assert_string_equal(list[2].id, "whale");
    assert_string_equal(list[1].meta, "{\"source\": \"geo\"}");
    assert_string_equal(list[1].content_type, "text/markdown");
    assert_string_equal(list[0].content_type, "text/plain");
    assert_int_equal(list[2].text_len, strlen(TEXT_WHALE));
    mc_kb_doc_info_free(list, n);

    struct mc_kb_doc_info info;
    char *text;
    size_t len;
    assert_int_equal(mc_kb_get(kb, "tea", 3, &info, &text, &len, &err), MC_OK);
    assert_int_equal(len, strlen(TEXT_TEA));
    assert_memory_equal(text, TEXT_TEA, len);
    assert_null(info.title);
    mc_free(text);
    mc_kb_doc_info_deinit(&info);
    assert_int_equal(mc_kb_get(kb, "te", 2, &info, NULL, NULL, &err), MC_ENOTFOUND);

    /* Bad queries. */
    struct mc_kb_query q = {"", 0, MC_KB_MODE_BM25, 5, false, false, 0};
    assert_int_equal(mc_kb_search(kb, &q, &r, &err), MC_EINVAL);
    assert_string_equal(err.msg, "query is empty");
    q = (struct mc_kb_query){"tea", 3, MC_KB_MODE_BM25, 0, false, false, 0};
    assert_int_equal(mc_kb_search(kb, &q, &r, &err), MC_EINVAL);
    assert_string_equal(err.msg, "k 0 is out of range 1..1000");
    q.k = 3;
    q.mode = MC_KB_MODE_DENSE;
    assert_int_equal(mc_kb_search(kb, &q, &r, &err), MC_EINVAL);
    assert_string_equal(err.msg, "dense search needs an embedding model; use mode bm25");
    mc_kb_close(kb);
    mc_kbs_free(s);
}

static void test_kb_chunks_long_documents_with_headings(void **state) {
    struct fx *f = *state;
    struct mc_kbs *s = kbs_new(f, NULL);
    struct mc_kb *kb = kb_open(s, "t_a");
    char text[8192] = "# Guide\n\n## Install\n\n";
    for (int i = 0; i < 60; i++)
        strcat(text, "word ");
    strcat(text, "zebracorn\n\n## Usage\n\nRun the tool daily.\n");
    struct mc_kb_doc_in d = doc("guide", text);
    ingest_ok(kb, &d, 1, 0);
    assert_true(mc_kb_n_chunks(kb) >= 3);

    /* The heading path is indexed with the chunk, the span is the body only. */
    struct mc_kb_results r;
    search(kb, "usage", MC_KB_MODE_BM25, 3, &r);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.hits[0].text, "Run the tool daily.");
    assert_memory_equal(text + r.hits[0].start, "Run the tool daily.", 19);
    mc_kb_results_deinit(&r);
    mc_kb_close(kb);
    mc_kbs_free(s);
}

/* ---------------------------------------------------------------------------------------
 * Isolation */

static void test_kb_tenants_never_see_each_other(void **state) {
    struct fx *f = *state;
    struct mc_kbs *s = kbs_new(f, f->emb);
    struct mc_kb *a = kb_open(s, "t_a"), *b = kb_open(s, "t_b");
    struct mc_kb_doc_in da[2] = {doc("shared-id", "alpha pelican harbour report"),
                                 doc("a-only", "alpha quarterly pelican count")};
    struct mc_kb_doc_in db[2] = {doc("shared-id", "beta zeppelin hangar secret"),
                                 doc("b-only", "beta zeppelin maintenance log")};
    ingest_ok(a, da, 2, 0);
    ingest_ok(b, db, 2, 0);

    /* B's words find nothing in A, in every mode, however many hits are asked for. */
    for (int mode = 0; mode < 3; mode++) {
        struct mc_kb_results r;
        search(a, "beta zeppelin hangar secret maintenance", mode, 1000, &r);
        assert_false(hits_doc(&r, "b-only"));
        for (size_t i = 0; i < r.n; i++)
            assert_null(strstr(r.hits[i].text, "zeppelin"));
        mc_kb_results_deinit(&r);
    }

    /* Equal ids stay separate; B's id is not found through A; A cannot delete it. */
    struct mc_kb_doc_info info;
    char *text;
    size_t len;
    struct mc_err err = {0};
    assert_int_equal(mc_kb_get(a, "shared-id", 9, &info, &text, &len, &err), MC_OK);
    assert_memory_equal(text, "alpha pelican harbour report", len);
    mc_free(text);
    mc_kb_doc_info_deinit(&info);
    assert_int_equal(mc_kb_get(a, "b-only", 6, &info, NULL, NULL, &err), MC_ENOTFOUND);
    assert_int_equal(mc_kb_delete(a, "b-only", 6, &err), MC_ENOTFOUND);
    assert_int_equal(mc_kb_delete(a, "shared-id", 9, &err), MC_OK);
    assert_int_equal(mc_kb_get(b, "shared-id", 9, &info, &text, &len, &err), MC_OK);
    assert_memory_equal(text, "beta zeppelin hangar secret", len);
    mc_free(text);
    mc_kb_doc_info_deinit(&info);
    assert_int_equal(mc_kb_n_docs(b), 2);
    assert_int_equal(mc_kb_n_docs(a), 1);

    /* A tenant that does not exist has no knowledge base at all. */
    struct mc_kb *ghost = kb_open(s, "t_ghost");
    struct mc_kb_doc_info *list;
    size_t n;
    assert_int_equal(mc_kb_list(ghost, &list, &n, &err), MC_ENOTFOUND);
    struct mc_kb_doc_in g = doc("x", "y");
    assert_int_equal(mc_kb_ingest(ghost, &g, 1, 0, NULL, NULL, NULL, &err), MC_ENOTFOUND);
    mc_kb_close(ghost);
    mc_kb_close(a);
    mc_kb_close(b);
    mc_kbs_free(s);
}

/* Counts regular files under dir whose bytes contain needle. */
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

static void test_kb_nothing_plaintext_under_data_dir(void **state) {
    struct fx *f = *state;
    struct mc_kbs *s = kbs_new(f, f->emb);
    struct mc_kb *kb = kb_open(s, "t_a");
    struct mc_kb_doc_in d = doc("id-Xylophagous-7781", "The Quokkaburrow merger closes on "
                                                       "Thursday; the code word is Marmalade.");
    d.title = "Title-Snollygoster";
    d.meta = "{\"owner\": \"Meta-Gobbledygook\"}";
    ingest_ok(kb, &d, 1, 0);
    const char *needles[] = {"Quokkaburrow", "Marmalade",    "Xylophagous",
                             "Snollygoster", "Gobbledygook", "merger closes"};
    int n_files = 0;
    for (size_t i = 0; i < sizeof(needles) / sizeof(needles[0]); i++)
        assert_int_equal(files_containing(f->dir, needles[i], strlen(needles[i]), &n_files), 0);
    assert_true(n_files >= 2);
    assert_true(files_containing(f->dir, "alpha", 5, &n_files) >= 1); /* the scanner works */
    mc_kb_close(kb);
    mc_kbs_free(s);

    /* After a checkpoint too. */
    mc_store_close(f->s);
    f->s = NULL;
    for (size_t i = 0; i < sizeof(needles) / sizeof(needles[0]); i++)
        assert_int_equal(files_containing(f->dir, needles[i], strlen(needles[i]), &n_files), 0);
    struct mc_err err = {0};
    assert_int_equal(mc_store_open(f->dir, f->mk, &f->s, &err), MC_OK);
}

/* ---------------------------------------------------------------------------------------
 * Atomicity, duplicates, upsert, delete */

/* A text snapshot of a knowledge base: its list and the hits of a few searches. */
static char *snapshot(struct mc_kb *kb) {
    char *buf = calloc(1, 1 << 16);
    size_t o = 0;
    struct mc_kb_doc_info *list;
    size_t n;
    struct mc_err err = {0};
    assert_int_equal(mc_kb_list(kb, &list, &n, &err), MC_OK);
    for (size_t i = 0; i < n; i++)
        o += (size_t)snprintf(buf + o, (1 << 16) - o, "doc %s %zu %zu\n", list[i].id,
                              list[i].text_len, list[i].n_chunks);
    mc_kb_doc_info_free(list, n);
    const char *queries[] = {"whale ocean", "magma", "tea leaves", "comet ice"};
    for (int mode = 0; mode < 3; mode++)
        for (size_t q = 0; q < 4; q++) {
            struct mc_kb_results r;
            search(kb, queries[q], mode, 10, &r);
            for (size_t i = 0; i < r.n; i++)
                o += (size_t)snprintf(buf + o, (1 << 16) - o, "%d %s %llu %.6f %s\n", mode,
                                      r.hits[i].doc_id, (unsigned long long)r.hits[i].chunk_id,
                                      r.hits[i].score, r.hits[i].text);
            mc_kb_results_deinit(&r);
        }
    return buf;
}

static void test_kb_ingest_is_atomic_under_allocation_failures(void **state) {
    struct fx *f = *state;
    struct mc_kbs *s = kbs_new(f, f->emb);
    struct mc_kb *kb = kb_open(s, "t_a");
    struct mc_kb_doc_in base[2] = {doc("whale", TEXT_WHALE), doc("volcano", TEXT_VOLCANO)};
    ingest_ok(kb, base, 2, 0);
    char *before = snapshot(kb);

    /* Replace one document and add two, failing the Nth allocation for N = 1, 2, ... */
    struct mc_kb_doc_in batch[3] = {doc("volcano", "Comet ice sublimates near the sun."),
                                    doc("tea", TEXT_TEA), doc("comet", "Comet tails of ice.")};
    int failures = 0;
    for (long nth = 1; nth < 20000; nth++) {
        struct mc_err err = {0};
        mc_mem_fail_after(nth);
        int rc = mc_kb_ingest(kb, batch, 3, MC_KB_UPSERT, NULL, NULL, NULL, &err);
        mc_mem_fail_after(0);
        if (rc == MC_OK)
            break;
        failures++;
        assert_int_equal(rc, MC_ENOMEM);
        char *now = snapshot(kb);
        if (strcmp(before, now) != 0)
            fail_msg("allocation %ld: knowledge base changed:\n%s\nvs\n%s", nth, now, before);
        free(now);
    }
    assert_true(failures > 50);
    char *after = snapshot(kb);
    assert_non_null(strstr(after, "doc comet"));
    assert_non_null(strstr(after, "Comet ice sublimates"));
    assert_null(strstr(after, "magma"));

    /* A fresh set reading the store sees exactly the same state. */
    mc_kb_close(kb);
    mc_kbs_free(s);
    s = kbs_new(f, f->emb);
    kb = kb_open(s, "t_a");
    char *reread = snapshot(kb);
    assert_string_equal(after, reread);
    free(reread);
    free(after);
    free(before);
    mc_kb_close(kb);
    mc_kbs_free(s);
}

static void test_kb_duplicate_id_in_batch_writes_nothing(void **state) {
    struct fx *f = *state;
    struct mc_kbs *s = kbs_new(f, NULL);
    struct mc_kb *kb = kb_open(s, "t_a");
    struct mc_kb_doc_in d[3] = {doc("a", "one"), doc("b", "two"), doc("a", "three")};
    struct mc_err err = {0};
    assert_int_equal(mc_kb_ingest(kb, d, 3, MC_KB_UPSERT, NULL, NULL, NULL, &err), MC_EINVAL);
    assert_string_equal(err.msg, "documents 0 and 2 of the batch have the same id \"a\"");
    assert_int_equal(mc_kb_n_docs(kb), 0);

    struct mc_kb_doc_in e = doc("", "x");
    assert_int_equal(mc_kb_ingest(kb, &e, 1, 0, NULL, NULL, NULL, &err), MC_EINVAL);
    assert_string_equal(err.msg, "document 0: id must be 1..1024 bytes, got 0");
    e = doc("m", "x");
    e.meta = "[1]";
    assert_int_equal(mc_kb_ingest(kb, &e, 1, 0, NULL, NULL, NULL, &err), MC_EINVAL);
    assert_string_equal(err.msg, "document 0: metadata is not a JSON object");
    e.meta = "{\"a\": ";
    assert_int_equal(mc_kb_ingest(kb, &e, 1, 0, NULL, NULL, NULL, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "document 0: metadata: "));
    e.meta = NULL;
    e.text = "bad \xff utf8";
    e.text_len = strlen(e.text);
    assert_int_equal(mc_kb_ingest(kb, &e, 1, 0, NULL, NULL, NULL, &err), MC_EINVAL);
    assert_string_equal(err.msg, "document 0: text is not UTF-8 at byte 4");
    assert_int_equal(mc_kb_ingest(kb, d, 0, 0, NULL, NULL, NULL, &err), MC_EINVAL);
    assert_string_equal(err.msg, "the batch holds no document");
    assert_int_equal(mc_kb_n_docs(kb), 0);
    mc_kb_close(kb);
    mc_kbs_free(s);
}

static void test_kb_existing_id_needs_upsert_and_upsert_replaces(void **state) {
    struct fx *f = *state;
    struct mc_kbs *s = kbs_new(f, f->emb);
    struct mc_kb *kb = kb_open(s, "t_a");
    struct mc_kb_doc_in d[2] = {doc("x", "original walrus text"), doc("y", "other llama")};
    ingest_ok(kb, d, 2, 0);
    struct mc_kb_doc_in r1[2] = {doc("z", "new"), doc("x", "replacement narwhal text")};
    struct mc_err err = {0};
    assert_int_equal(mc_kb_ingest(kb, r1, 2, 0, NULL, NULL, NULL, &err), MC_EEXIST);
    assert_string_equal(err.msg, "ingest: document 1: id \"x\" exists (upsert replaces it)");
    assert_int_equal(mc_kb_n_docs(kb), 2); /* z was not added either */

    struct mc_kb_ingest_stats st;
    assert_int_equal(mc_kb_ingest(kb, r1, 2, MC_KB_UPSERT, NULL, NULL, &st, &err), MC_OK);
    assert_int_equal(st.n_added, 1);
    assert_int_equal(st.n_replaced, 1);
    assert_int_equal(mc_kb_n_docs(kb), 3);
    for (int mode = 0; mode < 3; mode++) {
        struct mc_kb_results r;
        search(kb, "walrus", mode, 10, &r);
        for (size_t i = 0; i < r.n; i++)
            assert_null(strstr(r.hits[i].text, "walrus"));
        mc_kb_results_deinit(&r);
        search(kb, "narwhal", mode, 1, &r);
        assert_int_equal(r.n, 1);
        assert_string_equal(r.hits[0].doc_id, "x");
        assert_string_equal(r.hits[0].text, "replacement narwhal text");
        mc_kb_results_deinit(&r);
    }
    mc_kb_close(kb);
    mc_kbs_free(s);
}

static void test_kb_deleted_document_never_returned(void **state) {
    struct fx *f = *state;
    struct mc_kbs *s = kbs_new(f, f->emb);
    struct mc_kb *kb = kb_open(s, "t_a");
    struct mc_kb_doc_in d[3] = {doc("whale", TEXT_WHALE), doc("volcano", TEXT_VOLCANO),
                                doc("tea", TEXT_TEA)};
    ingest_ok(kb, d, 3, 0);
    struct mc_err err = {0};
    assert_int_equal(mc_kb_delete(kb, "whale", 5, &err), MC_OK);
    assert_int_equal(mc_kb_delete(kb, "whale", 5, &err), MC_ENOTFOUND);
    assert_string_equal(err.msg, "no document with this id");
    for (int mode = 0; mode < 3; mode++) {
        struct mc_kb_results r;
        search(kb, "blue whale largest animal songs ocean", mode, 1000, &r);
        assert_false(hits_doc(&r, "whale"));
        if (mode == MC_KB_MODE_DENSE)
            assert_int_equal(r.n, 2); /* k results whenever k live items exist */
        mc_kb_results_deinit(&r);
    }
    /* The text object is gone too: the store lists two documents. */
    char **ids;
    size_t n;
    assert_int_equal(mc_store_obj_list(f->s, "t_a", "kbdoc", &ids, &n, &err), MC_OK);
    assert_int_equal(n, 2);
    mc_store_obj_list_free(ids, n);
    mc_kb_close(kb);
    mc_kbs_free(s);
}

/* Deleting a tenant in the store takes its knowledge base with it (every kb and kbdoc
 * object), the set unloads it, and a handle opened afterwards finds no tenant. The other
 * tenant's knowledge base is untouched. */
static void test_kb_tenant_delete_removes_knowledge_base(void **state) {
    struct fx *f = *state;
    struct mc_kbs *s = kbs_new(f, f->emb);
    struct mc_kb *kb = kb_open(s, "t_a");
    struct mc_kb_doc_in d[2] = {doc("whale", TEXT_WHALE), doc("tea", TEXT_TEA)};
    ingest_ok(kb, d, 2, 0);
    mc_kb_close(kb);
    kb = kb_open(s, "t_b");
    ingest_ok(kb, d, 1, 0);
    mc_kb_close(kb);
    assert_int_equal(mc_kbs_n_loaded(s), 2);

    struct mc_err err = {0};
    assert_int_equal(mc_store_tenant_delete(f->s, "t_a", &err), MC_OK);
    static const char *const kinds[] = {"kb", "kbdoc"};
    for (int i = 0; i < 2; i++) {
        char **ids = NULL;
        size_t n = 0;
        int rc = mc_store_obj_list(f->s, "t_a", kinds[i], &ids, &n, &err);
        assert_true(rc == MC_ENOTFOUND || (rc == MC_OK && n == 0));
        mc_store_obj_list_free(ids, n);
    }
    assert_true(mc_kbs_unload(s, "t_a"));
    assert_int_equal(mc_kbs_n_loaded(s), 1);

    kb = kb_open(s, "t_a");
    struct mc_kb_doc_info *docs = NULL;
    size_t n = 0;
    assert_int_equal(mc_kb_list(kb, &docs, &n, &err), MC_ENOTFOUND);
    mc_kb_close(kb);
    kb = kb_open(s, "t_b");
    assert_int_equal(mc_kb_n_docs(kb), 1);
    mc_kb_close(kb);
    mc_kbs_free(s);
}

/* One document whose many chunks all beat every other document's best chunk: a
 * per-document search must still return k documents whenever k exist, in every mode
 * (the first candidate list, 8k chunks deep, holds only the crowding document). */
static void test_kb_per_document_search_returns_k_documents(void **state) {
    struct fx *f = *state;
    struct mc_kbs *s = kbs_new(f, f->emb);
    struct mc_kb *kb = kb_open(s, "t_a");
    char *big = malloc(200000);
    size_t n_big = 0;
    for (int i = 0; i < 2000; i++)
        n_big += (size_t)sprintf(big + n_big, "zebra quagga zebra stripes %d. ", i);
    struct mc_kb_doc_in d[6] = {
        doc("crowd", big),
        doc("one", "zebra once, then many other words about the grassland and its weather"),
        doc("two", "a zebra grazes near water holes in the dry season with the herd"),
        doc("three", "zebra foals stand within an hour of birth and follow the mother"),
        doc("four", "plains zebra migrate with wildebeest across the river crossings"),
        doc("five", "the zebra is one animal among many in the national park tour"),
    };
    ingest_ok(kb, d, 6, 0);
    assert_true(mc_kb_n_chunks(kb) > 200);
    for (int mode = 0; mode < 3; mode++) {
        struct mc_err err = {0};
        struct mc_kb_query q = {"zebra", 5, mode, 6, true, false, 0};
        struct mc_kb_results r;
        if (mc_kb_search(kb, &q, &r, &err) != MC_OK)
            fail_msg("search: %s", err.msg);
        if (r.n != 6)
            fail_msg("mode %s: %zu documents, want 6", mc_kb_mode_name(mode), r.n);
        for (size_t i = 0; i < 6; i++)
            for (size_t j = 0; j < i; j++)
                assert_false(r.hits[i].doc_id_len == r.hits[j].doc_id_len &&
                             !memcmp(r.hits[i].doc_id, r.hits[j].doc_id, r.hits[i].doc_id_len));
        mc_kb_results_deinit(&r);
    }
    free(big);
    mc_kb_close(kb);
    mc_kbs_free(s);
}

/* ---------------------------------------------------------------------------------------
 * Loading */

static void test_kb_unload_and_reload_give_identical_results(void **state) {
    struct fx *f = *state;
    struct mc_kbs *s = kbs_new(f, f->emb);
    struct mc_kb *kb = kb_open(s, "t_a");
    /* "S" stems to nothing under Porter: it once made an index image that did not load. */
    struct mc_kb_doc_in d[4] = {doc("whale", TEXT_WHALE), doc("volcano", TEXT_VOLCANO),
                                doc("tea", TEXT_TEA), doc("addr", "230 S. Dearborn St. (s)")};
    ingest_ok(kb, d, 4, 0);
    char *before = snapshot(kb);
    assert_int_equal(mc_kbs_n_loaded(s), 1);
    assert_false(mc_kbs_unload(s, "t_a")); /* held */
    mc_kb_close(kb);
    assert_true(mc_kbs_unload(s, "t_a"));
    assert_int_equal(mc_kbs_n_loaded(s), 0);
    assert_int_equal(mc_kbs_bytes_loaded(s), 0);
    kb = kb_open(s, "t_a");
    char *after = snapshot(kb);
    assert_string_equal(before, after);
    assert_int_equal(mc_kbs_n_loaded(s), 1);
    mc_kb_close(kb);
    mc_kbs_free(s);
    free(before);
    free(after);
}

static void test_kb_budget_unloads_least_recently_used(void **state) {
    struct fx *f = *state;
    struct mc_kbs *s = NULL;
    struct mc_err err = {0};
    struct mc_kb_config cfg;
    mc_kb_config_default(&cfg);
    assert_int_equal(mc_kbs_create(f->s, &cfg, NULL, NULL, &s, &err), MC_OK);
    struct mc_kb *a = kb_open(s, "t_a");
    struct mc_kb_doc_in da = doc("a", TEXT_WHALE);
    ingest_ok(a, &da, 1, 0);
    size_t one = mc_kbs_bytes_loaded(s);
    assert_true(one > 0);
    mc_kb_close(a);
    mc_kbs_free(s);

    /* A budget that holds one knowledge base: opening B unloads A once A is closed. */
    cfg.budget_bytes = one + one / 2;
    assert_int_equal(mc_kbs_create(f->s, &cfg, NULL, NULL, &s, &err), MC_OK);
    a = kb_open(s, "t_a");
    assert_int_equal(mc_kb_n_docs(a), 1);
    mc_kb_close(a);
    struct mc_kb *b = kb_open(s, "t_b");
    struct mc_kb_doc_in db = doc("b", TEXT_VOLCANO);
    ingest_ok(b, &db, 1, 0);
    mc_kb_close(b);
    assert_int_equal(mc_kbs_n_loaded(s), 1);
    a = kb_open(s, "t_a"); /* reloaded on use */
    assert_int_equal(mc_kb_n_docs(a), 1);
    mc_kb_close(a);
    assert_int_equal(mc_kbs_n_loaded(s), 1);
    mc_kbs_free(s);
}

static void test_kb_sees_writes_of_another_process(void **state) {
    struct fx *f = *state;
    struct mc_kbs *s1 = kbs_new(f, NULL);
    struct mc_kb *k1 = kb_open(s1, "t_a");
    struct mc_kb_doc_in d = doc("one", TEXT_TEA);
    ingest_ok(k1, &d, 1, 0);

    /* A second store handle on the same directory stands for the CLI. */
    struct mc_store *st2 = NULL;
    struct mc_err err = {0};
    assert_int_equal(mc_store_open(f->dir, f->mk, &st2, &err), MC_OK);
    struct mc_kbs *s2 = NULL;
    assert_int_equal(mc_kbs_create(st2, NULL, NULL, NULL, &s2, &err), MC_OK);
    struct mc_kb *k2 = kb_open(s2, "t_a");
    struct mc_kb_doc_in e = doc("two", TEXT_WHALE);
    ingest_ok(k2, &e, 1, 0);
    assert_int_equal(mc_kb_n_docs(k1), 2);
    struct mc_kb_results r;
    search(k1, "whale", MC_KB_MODE_BM25, 3, &r);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.hits[0].doc_id, "two");
    mc_kb_results_deinit(&r);
    mc_kb_close(k2);
    mc_kbs_free(s2);
    mc_store_close(st2);
    mc_kb_close(k1);
    mc_kbs_free(s1);
}

/* ---------------------------------------------------------------------------------------
 * Ids */

static void test_kb_caller_ids_round_trip_byte_for_byte(void **state) {
    struct fx *f = *state;
    struct mc_kbs *s = kbs_new(f, NULL);
    struct mc_kb *kb = kb_open(s, "t_a");
    static char long_id[MC_KB_ID_MAX];
    for (size_t i = 0; i < sizeof(long_id); i++)
        long_id[i] = (char)('a' + i % 26);
    const char *ids[] = {"quote\"and\\backslash", "new\nline\ttab",   "caf\xc3\xa9 \xe6\x97\xa5",
                         "\xff\xfe raw bytes",    "../../etc/passwd", "' OR 1=1 --"};
    size_t n_ids = sizeof(ids) / sizeof(ids[0]);
    struct mc_kb_doc_in d[8];
    for (size_t i = 0; i < n_ids; i++)
        d[i] = doc(ids[i], "shared marmot text");
    d[n_ids] = (struct mc_kb_doc_in){long_id, sizeof(long_id), "marmot", 6, NULL, NULL, NULL};
    ingest_ok(kb, d, n_ids + 1, 0);

    struct mc_kb_results r;
    search(kb, "marmot", MC_KB_MODE_BM25, 20, &r);
    assert_int_equal(r.n, n_ids + 1);
    for (size_t i = 0; i < n_ids; i++)
        assert_true(hits_doc(&r, ids[i]));
    mc_kb_results_deinit(&r);
    struct mc_kb_doc_info info;
    struct mc_err err = {0};
    assert_int_equal(mc_kb_get(kb, long_id, sizeof(long_id), &info, NULL, NULL, &err), MC_OK);
    assert_int_equal(info.id_len, sizeof(long_id));
    assert_memory_equal(info.id, long_id, sizeof(long_id));
    mc_kb_doc_info_deinit(&info);
    for (size_t i = 0; i < n_ids; i++) {
        assert_int_equal(mc_kb_get(kb, ids[i], strlen(ids[i]), &info, NULL, NULL, &err), MC_OK);
        assert_int_equal(info.id_len, strlen(ids[i]));
        assert_memory_equal(info.id, ids[i], info.id_len);
        mc_kb_doc_info_deinit(&info);
    }

    /* NUL is refused (documented), and so is an id past the limit. */
    struct mc_kb_doc_in bad = {"a\0b", 3, "x", 1, NULL, NULL, NULL};
    assert_int_equal(mc_kb_ingest(kb, &bad, 1, 0, NULL, NULL, NULL, &err), MC_EINVAL);
    assert_string_equal(err.msg, "document 0: id holds a NUL byte at offset 1");
    static char too_long[MC_KB_ID_MAX + 1];
    memset(too_long, 'x', sizeof(too_long));
    bad = (struct mc_kb_doc_in){too_long, sizeof(too_long), "x", 1, NULL, NULL, NULL};
    assert_int_equal(mc_kb_ingest(kb, &bad, 1, 0, NULL, NULL, NULL, &err), MC_EINVAL);
    assert_string_equal(err.msg, "document 0: id must be 1..1024 bytes, got 1025");
    mc_kb_close(kb);
    mc_kbs_free(s);
}

/* ---------------------------------------------------------------------------------------
 * Embeddings */

static void test_kb_embedder_mismatch_and_backfill(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};

    /* An empty knowledge base answers every mode with nothing. */
    struct mc_kbs *s = kbs_new(f, f->emb);
    struct mc_kb *kb = kb_open(s, "t_a");
    struct mc_kb_results r;
    for (int mode = 0; mode < 3; mode++) {
        search(kb, "anything", mode, 5, &r);
        assert_int_equal(r.n, 0);
        mc_kb_results_deinit(&r);
    }
    mc_kb_close(kb);
    mc_kbs_free(s);

    /* Filled without an embedder, then an embedder arrives: old chunks get vectors. */
    s = kbs_new(f, NULL);
    kb = kb_open(s, "t_a");
    struct mc_kb_doc_in d = doc("old", TEXT_VOLCANO);
    ingest_ok(kb, &d, 1, 0);
    mc_kb_close(kb);
    mc_kbs_free(s);
    s = kbs_new(f, f->emb);
    kb = kb_open(s, "t_a");
    struct mc_kb_doc_in e = doc("new", TEXT_TEA);
    ingest_ok(kb, &e, 1, 0);
    search(kb, "magma crust basalt", MC_KB_MODE_DENSE, 1, &r);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.hits[0].doc_id, "old");
    mc_kb_results_deinit(&r);
    mc_kb_close(kb);
    mc_kbs_free(s);

    /* Another embedder, or none, cannot write into it; bm25 still searches. */
    struct mc_embedder *other = NULL;
    assert_int_equal(mc_embedder_create_custom("other", BOW_DIM, bow_embed, NULL, &other, &err),
                     MC_OK);
    s = kbs_new(f, other);
    kb = kb_open(s, "t_a");
    struct mc_kb_doc_in g = doc("more", "x");
    assert_int_equal(mc_kb_ingest(kb, &g, 1, 0, NULL, NULL, NULL, &err), MC_EINVAL);
    assert_string_equal(err.msg, "ingest: knowledge base holds 64-d vectors from model 'bow', "
                                 "not 64-d from 'other'");
    struct mc_kb_query q = {"tea", 3, MC_KB_MODE_HYBRID, 3, false, false, 0};
    assert_int_equal(mc_kb_search(kb, &q, &r, &err), MC_EINVAL);
    q.mode = MC_KB_MODE_BM25;
    assert_int_equal(mc_kb_search(kb, &q, &r, &err), MC_OK);
    assert_int_equal(r.n, 1);
    mc_kb_results_deinit(&r);
    mc_kb_close(kb);
    mc_kbs_free(s);
    mc_embedder_free(other);
    s = kbs_new(f, NULL);
    kb = kb_open(s, "t_a");
    assert_int_equal(mc_kb_ingest(kb, &g, 1, 0, NULL, NULL, NULL, &err), MC_EINVAL);
    assert_string_equal(err.msg, "ingest: knowledge base holds vectors of model 'bow'; use it");
    mc_kb_close(kb);
    mc_kbs_free(s);
}

/* Two models with the same general.name ("llama") and width (64), stories260K in F32 and
 * in Q8_0, make embedders of different names, so a knowledge base never mixes their
 * vectors; the same model always makes the same name. */
static void test_embedder_name_tells_models_apart(void **state) {
    (void)state;
    const char *files[3] = {"models/stories260K.gguf", "models/stories260K.gguf",
                            "models/stories260K-Q8_0.gguf"};
    char names[3][MC_EMBED_NAME_MAX + 1];
    for (int i = 0; i < 3; i++) {
        char path[512];
        struct mc_model *m = NULL;
        struct mc_embedder *emb = NULL;
        struct mc_err err = {0};
        if (mc_model_load(test_shared_path(path, sizeof(path), files[i]), &m, &err) != MC_OK)
            fail_msg("model: %s", err.msg);
        assert_string_equal(mc_model_hparams(m)->name, "llama");
        assert_int_equal(mc_embedder_create(m, 1, 0, &emb, &err), MC_OK);
        snprintf(names[i], sizeof(names[i]), "%s", mc_embedder_name(emb));
        mc_embedder_free(emb);
        mc_model_free(m);
    }
    assert_string_equal(names[0], names[1]);
    assert_string_not_equal(names[0], names[2]);
    assert_int_equal(strncmp(names[0], "llama#", 6), 0);
}

static void test_kb_dense_search_with_stories260k(void **state) {
    struct fx *f = *state;
    char path[512];
    struct mc_model *m = NULL;
    struct mc_err err = {0};
    if (mc_model_load(test_shared_path(path, sizeof(path), "models/stories260K.gguf"), &m, &err) !=
        MC_OK)
        fail_msg("model: %s", err.msg);
    struct mc_embedder *emb = NULL;
    assert_int_equal(mc_embedder_create(m, 1, 0, &emb, &err), MC_OK);
    assert_int_equal(mc_embedder_dim(emb), mc_model_hparams(m)->n_embd);

    /* Batched embeddings equal one-at-a-time embeddings and are unit length. */
    const char *texts[3] = {"Once upon a time there was a cat.", "Lily went to the park.",
                            "The sun was hot and the sky was blue."};
    size_t lens[3] = {strlen(texts[0]), strlen(texts[1]), strlen(texts[2])};
    int dim = mc_embedder_dim(emb);
    float *batch = calloc(3 * (size_t)dim, sizeof(float));
    float *one = calloc((size_t)dim, sizeof(float));
    assert_int_equal(mc_embed(emb, texts, lens, 3, batch, &err), MC_OK);
    for (int t = 0; t < 3; t++) {
        assert_int_equal(mc_embed(emb, &texts[t], &lens[t], 1, one, &err), MC_OK);
        double norm = 0;
        for (int i = 0; i < dim; i++) {
            assert_float_near(batch[t * dim + i], one[i], 1e-5);
            norm += (double)one[i] * one[i];
        }
        assert_float_near(norm, 1.0, 1e-5);
    }

    /* A chunk's own text finds it first, with cosine similarity 1. */
    struct mc_kb_config cfg;
    mc_kb_config_default(&cfg);
    struct mc_kbs *s = NULL;
    assert_int_equal(mc_kbs_create(f->s, &cfg, mc_model_tokenizer(m), emb, &s, &err), MC_OK);
    struct mc_kb *kb = kb_open(s, "t_a");
    struct mc_kb_doc_in d[3] = {doc("cat", texts[0]), doc("park", texts[1]), doc("sun", texts[2])};
    ingest_ok(kb, d, 3, 0);
    for (int t = 0; t < 3; t++) {
        struct mc_kb_results r;
        search(kb, texts[t], MC_KB_MODE_DENSE, 3, &r);
        assert_int_equal(r.n, 3);
        assert_string_equal(r.hits[0].doc_id, d[t].id);
        assert_float_near(r.hits[0].score, 1.0, 1e-4);
        mc_kb_results_deinit(&r);
        search(kb, texts[t], MC_KB_MODE_HYBRID, 1, &r);
        assert_string_equal(r.hits[0].doc_id, d[t].id);
        mc_kb_results_deinit(&r);
    }
    mc_kb_close(kb);
    mc_kbs_free(s);
    free(batch);
    free(one);
    mc_embedder_free(emb);
    mc_model_free(m);
}

/* ---------------------------------------------------------------------------------------
 * Grounded prompts and settings */

static void test_kb_prompt_numbers_sources(void **state) {
    (void)state;
    struct mc_kb_hit h[2] = {{.doc_id = "a", .title = "Tea", .text = "Green tea is steamed."},
                             {.doc_id = "b", .text = "Oolong is oxidised."}};
    struct mc_kb_results r = {h, 2};
    char *p;
    size_t n;
    struct mc_err err = {0};
    assert_int_equal(
        mc_kb_prompt("S:\n{{sources}}Q: {{question}} {{other}}", "How?", 4, &r, &p, &n, &err),
        MC_OK);
    assert_string_equal(p, "S:\n[1] Tea\nGreen tea is steamed.\n\n[2] Oolong is oxidised.\n\n"
                           "Q: How? {{other}}");
    assert_int_equal(n, strlen(p));
    mc_free(p);
    assert_int_equal(mc_kb_prompt(NULL, "Why?", 4, &r, &p, &n, &err), MC_OK);
    assert_non_null(strstr(p, "[2] Oolong is oxidised."));
    assert_non_null(strstr(p, "Question: Why?"));
    mc_free(p);
    h[1].text = NULL;
    assert_int_equal(mc_kb_prompt(NULL, "Why?", 4, &r, &p, &n, &err), MC_EINVAL);
    assert_string_equal(err.msg, "hit 1 has no text (search with want_text)");
}

static void test_kb_retrieval_settings_parse(void **state) {
    (void)state;
    struct mc_kb_retrieval r;
    struct mc_err err = {0};
    const char *ok = "{\"mode\": \"bm25\", \"k\": 7, \"template\": \"{{sources}}\"}";
    assert_int_equal(mc_kb_retrieval_parse(ok, strlen(ok), &r, &err), MC_OK);
    assert_true(r.enabled);
    assert_int_equal(r.mode, MC_KB_MODE_BM25);
    assert_int_equal(r.k, 7);
    assert_string_equal(r.template, "{{sources}}");
    mc_kb_retrieval_deinit(&r);
    const char *bad[][2] = {
        {"{\"mode\": \"fuzzy\"}", "retrieval: mode 'fuzzy' is not one of bm25, dense, hybrid"},
        {"{\"k\": 0}", "retrieval.k must be an integer 1..50"},
        {"{\"k\": \"4\"}", "retrieval.k must be an integer 1..50"},
        {"{\"enabled\": 1}", "retrieval.enabled must be a boolean"},
        {"{\"topk\": 3}", "retrieval.topk is not a known field (enabled, mode, k, template)"},
        {"[]", "retrieval must be a JSON object"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(mc_kb_retrieval_parse(bad[i][0], strlen(bad[i][0]), &r, &err), MC_EINVAL);
        assert_string_equal(err.msg, bad[i][1]);
        mc_kb_retrieval_deinit(&r);
    }
    assert_int_equal(mc_kb_retrieval_parse("{\"k\":", 5, &r, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "at byte 5"));
    mc_kb_retrieval_deinit(&r);
}

/* ---------------------------------------------------------------------------------------
 * Realistic data: two tenants hold the two enterprise_docs sets */

static size_t ingest_dir(struct mc_kb *kb, const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        fail_msg("cannot open %s", dir);
    struct dirent *e;
    size_t n = 0;
    struct mc_err err = {0};
    while ((e = readdir(d))) {
        int type = mc_extract_type_from_path(e->d_name);
        if (type == MC_EXTRACT_UNKNOWN)
            continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        FILE *fp = fopen(path, "rb");
        assert_non_null(fp);
        static char buf[1 << 20];
        size_t len = fread(buf, 1, sizeof(buf), fp);
        fclose(fp);
        struct mc_extract_doc x;
        assert_int_equal(mc_extract(type, buf, len, &x, &err), MC_OK);
        struct mc_kb_doc_in in = {e->d_name, strlen(e->d_name), x.text, x.len, x.title,
                                  x.meta,    "text/markdown"};
        if (mc_kb_ingest(kb, &in, 1, 0, NULL, NULL, NULL, &err) != MC_OK)
            fail_msg("%s: %s", e->d_name, err.msg);
        mc_extract_doc_deinit(&x);
        n++;
    }
    closedir(d);
    return n;
}

static void test_kb_enterprise_docs_two_tenants(void **state) {
    struct fx *f = *state;
    struct mc_kbs *s = kbs_new(f, NULL);
    struct mc_kb *a = kb_open(s, "t_a"), *b = kb_open(s, "t_b");
    char dir[512];
    size_t na =
        ingest_dir(a, test_shared_path(dir, sizeof(dir), "data/enterprise_docs/18f_handbook"));
    size_t nb = ingest_dir(b, test_shared_path(dir, sizeof(dir), "data/enterprise_docs/curl_docs"));
    assert_true(na > 40);
    assert_true(nb > 40);
    assert_int_equal(mc_kb_n_docs(a), na);
    assert_int_equal(mc_kb_n_docs(b), nb);

    struct mc_kb_results r;
    struct mc_kb_query q = {"cancel the transit benefit", 26, MC_KB_MODE_BM25, 3, true, true, 0};
    struct mc_err err = {0};
    assert_int_equal(mc_kb_search(a, &q, &r, &err), MC_OK);
    assert_string_equal(r.hits[0].doc_id,
                        "general-information-and-resources_employee-resources-policies_transit-"
                        "benefit.md");
    assert_string_equal(r.hits[0].title, "Transit Benefit");
    mc_kb_results_deinit(&r);
    q = (struct mc_kb_query){"alt-svc cache file", 18, MC_KB_MODE_BM25, 3, true, false, 0};
    assert_int_equal(mc_kb_search(b, &q, &r, &err), MC_OK);
    assert_string_equal(r.hits[0].doc_id, "ALTSVC.md");
    mc_kb_results_deinit(&r);

    /* curl's own words find only 18F pages in A's knowledge base. */
    q = (struct mc_kb_query){"libcurl CURLOPT_ALTSVC", 22, MC_KB_MODE_BM25, 50, false, false, 0};
    assert_int_equal(mc_kb_search(a, &q, &r, &err), MC_OK);
    for (size_t i = 0; i < r.n; i++)
        assert_memory_equal(r.hits[i].doc_id, "general", 7);
    mc_kb_results_deinit(&r);
    mc_kb_close(a);
    mc_kb_close(b);
    mc_kbs_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_extract_markdown_front_matter_goes_to_metadata),
        cmocka_unit_test(test_extract_html_drops_script_and_style),
        cmocka_unit_test(test_extract_html_output_is_always_utf8),
        cmocka_unit_test(test_extract_html_length_matches_text),
        cmocka_unit_test(test_extract_unsupported_type_and_bad_utf8),
        cmocka_unit_test_setup_teardown(test_kb_ingest_search_list_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kb_chunks_long_documents_with_headings, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_kb_tenants_never_see_each_other, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kb_nothing_plaintext_under_data_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kb_ingest_is_atomic_under_allocation_failures, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_kb_duplicate_id_in_batch_writes_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_kb_existing_id_needs_upsert_and_upsert_replaces, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_kb_deleted_document_never_returned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kb_unload_and_reload_give_identical_results, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_kb_budget_unloads_least_recently_used, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_kb_sees_writes_of_another_process, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kb_caller_ids_round_trip_byte_for_byte, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_kb_embedder_mismatch_and_backfill, setup, teardown),
        cmocka_unit_test(test_embedder_name_tells_models_apart),
        cmocka_unit_test_setup_teardown(test_kb_dense_search_with_stories260k, setup, teardown),
        cmocka_unit_test(test_kb_prompt_numbers_sources),
        cmocka_unit_test(test_kb_retrieval_settings_parse),
        cmocka_unit_test_setup_teardown(test_kb_enterprise_docs_two_tenants, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kb_per_document_search_returns_k_documents, setup,
                                        teardown),
        cmocka_unit_test(test_extract_html_deep_nesting_keeps_text_or_fails),
        cmocka_unit_test_setup_teardown(test_kb_tenant_delete_removes_knowledge_base, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
