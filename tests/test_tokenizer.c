/* test_tokenizer.c - tokenizers against the reference: the shared conformance vectors
 * (every input of every ggml-vocab set must give exactly the expected ids), the prompt
 * ids and decoded texts of the reference greedy runs, special tokens, invalid UTF-8,
 * round trips, bad metadata, and allocation failures. */
#include "base/err.h"
#include "base/mem.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "model/tokenizer_int.h" /* tok_pre_create, tok_pre_split: white-box split tests */
#include "test_util.h"

#include <dirent.h>
#include <jansson.h> /* json_load_file, json_object_get, json_array_size */
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* The shared sets have 46 strings each; room for sets with more. */
#define N_VECTORS 256
#define SEP       "\n__ggml_vocab_test__\n"

static const char *const vocab_sets[] = {"llama-spm", "gpt-2",          "mpt",         "refact",
                                         "falcon",    "deepseek-coder", "deepseek-llm"};
#define N_SETS (sizeof(vocab_sets) / sizeof(vocab_sets[0]))

/* ---- Helpers -------------------------------------------------------------------- */

struct loaded {
    struct mc_gguf *g;
    struct mc_tokenizer *tok;
};

static void load_path(const char *path, struct loaded *l) {
    struct mc_err err = {0};
    int rc = mc_gguf_open(path, &l->g, &err);
    if (rc != MC_OK)
        fail_msg("open %s: %s", path, err.msg);
    rc = mc_tokenizer_load(l->g, &l->tok, &err);
    if (rc != MC_OK)
        fail_msg("tokenizer of %s: %s", path, err.msg);
}

static void load_vocab(const char *name, struct loaded *l) {
    char rel[256], path[512];
    snprintf(rel, sizeof(rel), "tokenizer-tests/ggml-vocab-%s.gguf", name);
    load_path(test_shared_path(path, sizeof(path), rel), l);
}

static void unload(struct loaded *l) {
    mc_tokenizer_free(l->tok);
    mc_gguf_close(l->g);
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

/* The .inp strings, split on the separator exactly as the README describes. */
struct inputs {
    char *buf;
    const char *s[N_VECTORS + 1];
    size_t len[N_VECTORS + 1];
    int n;
};

static void read_inputs(const char *path, struct inputs *in) {
    size_t total;
    in->buf = slurp(path, &total);
    in->n = 0;
    size_t pos = 0, sl = strlen(SEP);
    while (pos < total) {
        const char *m = memmem(in->buf + pos, total - pos, SEP, sl);
        size_t end = m ? (size_t)(m - in->buf) : total;
        assert_true(in->n < N_VECTORS + 1);
        in->s[in->n] = in->buf + pos;
        in->len[in->n] = end - pos;
        in->n++;
        pos = m ? end + sl : total;
    }
}

/* The .out lines: ids per line, leading/trailing spaces trimmed. */
struct expected {
    int32_t *ids[N_VECTORS + 1];
    size_t n[N_VECTORS + 1];
    int lines;
};

static void read_expected(const char *path, struct expected *ex) {
    size_t total;
    char *buf = slurp(path, &total);
    ex->lines = 0;
    char *line = buf;
    while (*line) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        assert_true(ex->lines < N_VECTORS + 1);
        int32_t *v = malloc((strlen(line) / 2 + 2) * sizeof(int32_t));
        size_t k = 0;
        for (char *p = line; *p;) {
            while (*p == ' ')
                p++;
            if (!*p)
                break;
            char *e;
            v[k++] = (int32_t)strtol(p, &e, 10);
            assert_true(e > p);
            p = e;
        }
        ex->ids[ex->lines] = v;
        ex->n[ex->lines] = k;
        ex->lines++;
        if (!nl)
            break;
        line = nl + 1;
    }
    free(buf);
}

static void tokenize_ok(const struct mc_tokenizer *tok, const char *s, size_t len, bool add,
                        bool parse, int32_t **ids, size_t *n) {
    struct mc_err err = {0};
    int rc = mc_tokenize(tok, s, len, add, parse, ids, n, &err);
    if (rc != MC_OK)
        fail_msg("mc_tokenize: %s", err.msg);
}

/* ---- Conformance vectors -------------------------------------------------------- */

/* Runs every vector of one set and prints each miss; 0 when all matched, else -1. */
static int run_vectors(const char *name) {
    char rel[256], path[512];
    struct loaded l;
    load_vocab(name, &l);
    struct inputs in;
    struct expected ex;
    snprintf(rel, sizeof(rel), "tokenizer-tests/ggml-vocab-%.200s.gguf.inp", name);
    read_inputs(test_shared_path(path, sizeof(path), rel), &in);
    snprintf(rel, sizeof(rel), "tokenizer-tests/ggml-vocab-%.200s.gguf.out", name);
    read_expected(test_shared_path(path, sizeof(path), rel), &ex);
    assert_true(in.n > 0);
    assert_int_equal(ex.lines, in.n);

    int pass = 0;
    for (int i = 0; i < in.n; i++) {
        int32_t *ids;
        size_t n;
        tokenize_ok(l.tok, in.s[i], in.len[i], false, false, &ids, &n);
        size_t k = 0;
        while (k < n && k < ex.n[i] && ids[k] == ex.ids[i][k])
            k++;
        if (k == n && n == ex.n[i]) {
            pass++;
        } else {
            print_error("%s: string %d: %zu ids, expected %zu; first difference at %zu "
                        "(got %d, expected %d)\n",
                        name, i, n, ex.n[i], k, k < n ? ids[k] : -1,
                        k < ex.n[i] ? ex.ids[i][k] : -1);
        }
        mc_free(ids);
        free(ex.ids[i]);
    }
    print_message("[ vectors  ] %s: %d/%d passed\n", name, pass, in.n);
    int n_in = in.n;
    free(in.buf);
    unload(&l);
    return pass == n_in ? 0 : -1;
}

/* Every set in the folder, found by name (ggml-vocab-NAME.gguf with its .inp and .out),
 * so a set added there is tested without a change here. The seven sets shipped today
 * must all be among them. */
static void test_vectors_every_set_in_the_folder(void **state) {
    (void)state;
    char dir[512], names[64][128];
    test_shared_path(dir, sizeof(dir), "tokenizer-tests");
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        size_t len = strlen(e->d_name);
        const char *pre = "ggml-vocab-", *suf = ".gguf";
        if (len <= strlen(pre) + strlen(suf) || strncmp(e->d_name, pre, strlen(pre)) != 0 ||
            strcmp(e->d_name + len - strlen(suf), suf) != 0)
            continue;
        char inp[800];
        snprintf(inp, sizeof(inp), "%s/%s.inp", dir, e->d_name);
        if (access(inp, R_OK) != 0)
            continue;
        assert_true(n < 64);
        snprintf(names[n], sizeof(names[n]), "%.*s", (int)(len - strlen(pre) - strlen(suf)),
                 e->d_name + strlen(pre));
        n++;
    }
    closedir(d);

    int failed = 0;
    for (int i = 0; i < n; i++)
        failed += run_vectors(names[i]) != 0;
    for (size_t i = 0; i < N_SETS; i++) {
        bool found = false;
        for (int j = 0; j < n; j++)
            found = found || strcmp(names[j], vocab_sets[i]) == 0;
        if (!found)
            fail_msg("vocab set %s is missing from %s", vocab_sets[i], dir);
    }
    assert_int_equal(failed, 0);
}

/* ---- Reference prompts and decoding --------------------------------------------- */

static void ids_from_json(json_t *arr, int32_t **out, size_t *n) {
    assert_true(json_is_array(arr));
    *n = json_array_size(arr);
    *out = malloc((*n + 1) * sizeof(int32_t));
    for (size_t i = 0; i < *n; i++)
        (*out)[i] = (int32_t)json_integer_value(json_array_get(arr, i));
}

/* Checks prompt ids, the streamed text of the greedy tokens, and the full detokenized
 * text of every case in one reference file. */
static void check_reference(const char *file) {
    char rel[256], path[512];
    snprintf(rel, sizeof(rel), "reference/%s", file);
    json_error_t jerr;
    json_t *root = json_load_file(test_shared_path(path, sizeof(path), rel), 0, &jerr);
    if (!root)
        fail_msg("%s: %s", path, jerr.text);
    snprintf(rel, sizeof(rel), "models/%s", json_string_value(json_object_get(root, "model_file")));
    struct loaded l;
    load_path(test_shared_path(path, sizeof(path), rel), &l);

    json_t *cases = json_object_get(root, "cases");
    assert_true(json_array_size(cases) > 0);
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *cs = json_array_get(cases, c);
        const char *prompt = json_string_value(json_object_get(cs, "prompt"));
        int32_t *want, *got, *gen;
        size_t n_want, n_got, n_gen;
        ids_from_json(json_object_get(cs, "prompt_tokens"), &want, &n_want);
        tokenize_ok(l.tok, prompt, strlen(prompt), true, false, &got, &n_got);
        assert_int_equal(n_got, n_want);
        for (size_t i = 0; i < n_want; i++)
            assert_int_equal(got[i], want[i]);

        /* greedy_text: the pieces of the generated tokens, special ones empty. */
        ids_from_json(json_object_get(cs, "greedy_tokens"), &gen, &n_gen);
        char text[4096];
        size_t o = 0;
        for (size_t i = 0; i < n_gen; i++) {
            int n = mc_token_to_piece(l.tok, gen[i], false, text + o, sizeof(text) - o);
            assert_true(n >= 0 && o + (size_t)n < sizeof(text));
            o += (size_t)n;
        }
        text[o] = '\0';
        assert_string_equal(text, json_string_value(json_object_get(cs, "greedy_text")));

        /* full_text_detokenized: prompt + generated ids through detokenize. */
        int32_t *all = malloc((n_want + n_gen) * sizeof(int32_t));
        memcpy(all, want, n_want * sizeof(int32_t));
        memcpy(all + n_want, gen, n_gen * sizeof(int32_t));
        char *dt;
        size_t dl;
        struct mc_err err = {0};
        assert_int_equal(mc_detokenize(l.tok, all, n_want + n_gen, &dt, &dl, &err), MC_OK);
        assert_string_equal(dt, json_string_value(json_object_get(cs, "full_text_detokenized")));
        assert_int_equal(dl, strlen(dt));

        /* top-5 pieces. */
        json_t *top = json_object_get(cs, "top5_last_prompt_pos");
        for (size_t i = 0; i < json_array_size(top); i++) {
            json_t *t = json_array_get(top, i);
            int32_t id = (int32_t)json_integer_value(json_object_get(t, "id"));
            char pc[256];
            int n = mc_token_to_piece(l.tok, id, false, pc, sizeof(pc) - 1);
            assert_true(n >= 0 && n < (int)sizeof(pc));
            pc[n] = '\0';
            assert_string_equal(pc, json_string_value(json_object_get(t, "piece")));
        }
        mc_free(dt);
        free(all);
        free(gen);
        free(want);
        mc_free(got);
    }
    unload(&l);
    json_decref(root);
}

static void test_reference_prompts_stories260k(void **state) {
    (void)state;
    check_reference("stories260K.greedy.json");
}

static void test_reference_prompts_llama2_tiny(void **state) {
    (void)state;
    check_reference("llama-2-tiny-random.greedy.json");
}

/* ---- Special tokens, flags and decoding ------------------------------------------ */

static void test_special_flags_per_vocab(void **state) {
    (void)state;
    struct loaded l;
    load_vocab("llama-spm", &l);
    assert_int_equal(mc_tokenizer_n_vocab(l.tok), 32000);
    assert_int_equal(mc_tokenizer_bos(l.tok), 1);
    assert_int_equal(mc_tokenizer_eos(l.tok), 2);
    assert_int_equal(mc_tokenizer_unk(l.tok), 0);
    assert_true(mc_tokenizer_add_bos(l.tok));
    assert_false(mc_tokenizer_add_eos(l.tok));
    assert_true(mc_tokenizer_is_eog(l.tok, 2));
    assert_false(mc_tokenizer_is_eog(l.tok, 1));
    assert_true(mc_tokenizer_is_special(l.tok, 1));
    assert_false(mc_tokenizer_is_special(l.tok, 15043));
    assert_int_equal(mc_tokenizer_find(l.tok, "\xE2\x96\x81Hello", 8), 15043);
    assert_int_equal(mc_tokenizer_find(l.tok, "no-such-token", 13), -1);
    assert_string_equal(mc_tokenizer_model_name(l.tok), "llama");
    unload(&l);

    load_vocab("gpt-2", &l);
    assert_int_equal(mc_tokenizer_bos(l.tok), 50256);
    assert_false(mc_tokenizer_add_bos(l.tok));
    assert_true(mc_tokenizer_is_eog(l.tok, 50256));
    assert_int_equal(mc_tokenizer_eot(l.tok), 50256);
    assert_string_equal(mc_tokenizer_pre_name(l.tok), "gpt-2");
    int32_t *ids;
    size_t n;
    tokenize_ok(l.tok, "Hello", 5, true, false, &ids, &n);
    assert_int_equal(n, 1); /* gpt-2 adds no BOS */
    assert_int_equal(ids[0], 15496);
    mc_free(ids);
    unload(&l);

    load_vocab("deepseek-coder", &l);
    assert_true(mc_tokenizer_add_bos(l.tok));
    tokenize_ok(l.tok, "Hello", 5, true, false, &ids, &n);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 32013);
    assert_int_equal(ids[1], 17535);
    mc_free(ids);
    unload(&l);
}

static void test_parse_special_splits_control_tokens(void **state) {
    (void)state;
    struct loaded l;
    load_vocab("gpt-2", &l);
    const char *s = "a<|endoftext|>b";
    int32_t *ids;
    size_t n;
    tokenize_ok(l.tok, s, strlen(s), false, true, &ids, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 64);
    assert_int_equal(ids[1], 50256);
    assert_int_equal(ids[2], 65);
    mc_free(ids);
    /* Without parse_special the same text is plain text. */
    tokenize_ok(l.tok, s, strlen(s), false, false, &ids, &n);
    assert_true(n > 3);
    for (size_t i = 0; i < n; i++)
        assert_int_not_equal(ids[i], 50256);
    mc_free(ids);
    unload(&l);

    /* SentencePiece puts a space before the text that follows a special token. */
    load_vocab("llama-spm", &l);
    s = "<s>Hi</s>";
    tokenize_ok(l.tok, s, strlen(s), false, true, &ids, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], mc_tokenizer_find(l.tok, "\xE2\x96\x81Hi", 5));
    assert_int_equal(ids[2], 2);
    mc_free(ids);
    unload(&l);
}

static void test_user_defined_tokens_split_without_parse_special(void **state) {
    (void)state;
    struct loaded l;
    load_vocab("mpt", &l);
    /* MPT's runs of spaces are user-defined tokens: four spaces are token 50274. */
    const char *s = "a    b";
    int32_t *ids;
    size_t n;
    tokenize_ok(l.tok, s, strlen(s), false, false, &ids, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[1], 50274);
    mc_free(ids);
    unload(&l);
}

static void test_token_to_piece_contract(void **state) {
    (void)state;
    struct loaded l;
    load_vocab("llama-spm", &l);
    char buf[16];
    assert_int_equal(mc_token_to_piece(l.tok, 15043, false, buf, sizeof(buf)), 6);
    assert_memory_equal(buf, " Hello", 6);
    assert_int_equal(mc_token_to_piece(l.tok, 15043, false, buf, 3), 6); /* too small */
    assert_int_equal(mc_token_to_piece(l.tok, 1, false, buf, sizeof(buf)), 0);
    assert_int_equal(mc_token_to_piece(l.tok, 1, true, buf, sizeof(buf)), 3);
    assert_memory_equal(buf, "<s>", 3);
    assert_int_equal(mc_token_to_piece(l.tok, 3 + 0x0A, false, buf, sizeof(buf)), 1);
    assert_int_equal(buf[0], '\n');
    assert_int_equal(mc_token_to_piece(l.tok, 32000, false, buf, sizeof(buf)), MC_EINVAL);
    assert_int_equal(mc_token_to_piece(l.tok, -1, false, buf, sizeof(buf)), MC_EINVAL);
    unload(&l);

    load_vocab("gpt-2", &l);
    assert_int_equal(mc_token_to_piece(l.tok, 18435, false, buf, sizeof(buf)), 6);
    assert_memory_equal(buf, " Hello", 6); /* "ĠHello" un-mapped */
    unload(&l);
}

static void test_detokenize_cleans_spaces_like_reference(void **state) {
    (void)state;
    struct loaded l;
    load_vocab("gpt-2", &l);
    const char *s = "Hello , world ? I 've";
    int32_t *ids;
    size_t n;
    tokenize_ok(l.tok, s, strlen(s), false, false, &ids, &n);
    char *out;
    size_t len;
    struct mc_err err = {0};
    assert_int_equal(mc_detokenize(l.tok, ids, n, &out, &len, &err), MC_OK);
    assert_string_equal(out, "Hello, world? I've");
    mc_free(out);
    int32_t bad[2] = {15496, 50257};
    assert_int_equal(mc_detokenize(l.tok, bad, 2, &out, &len, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "50257"));
    assert_null(out);
    mc_free(ids);
    unload(&l);
}

/* ---- Round trips and invalid UTF-8 ---------------------------------------------- */

/* Concatenates the pieces of ids (special=false), dropping one leading space of the
 * first piece when the vocabulary prefixes one. */
static char *pieces(const struct mc_tokenizer *tok, const int32_t *ids, size_t n, bool strip,
                    size_t *len) {
    size_t cap = 64 + 64 * n, o = 0;
    char *s = malloc(cap);
    for (size_t i = 0; i < n; i++) {
        int k = mc_token_to_piece(tok, ids[i], false, s + o, cap - o);
        assert_true(k >= 0 && o + (size_t)k <= cap);
        if (i == 0 && strip && k > 0 && s[0] == ' ') {
            memmove(s, s + 1, (size_t)k - 1);
            k--;
        }
        o += (size_t)k;
    }
    *len = o;
    return s;
}

static void check_round_trip(const struct mc_tokenizer *tok, const char *name, const char *s,
                             size_t len, int index) {
    int32_t *ids;
    size_t n, back_len;
    tokenize_ok(tok, s, len, false, false, &ids, &n);
    bool spm = strcmp(mc_tokenizer_model_name(tok), "llama") == 0;
    char *back = pieces(tok, ids, n, spm, &back_len);
    if (back_len != len || memcmp(back, s, len) != 0)
        fail_msg("%s: input %d (%zu bytes) did not round-trip (%zu bytes back)", name, index, len,
                 back_len);
    free(back);
    mc_free(ids);
}

static void test_round_trip_vector_inputs(void **state) {
    (void)state;
    char rel[256], path[512];
    snprintf(rel, sizeof(rel), "tokenizer-tests/ggml-vocab-gpt-2.gguf.inp");
    struct inputs in;
    read_inputs(test_shared_path(path, sizeof(path), rel), &in);
    for (size_t v = 0; v < N_SETS; v++) {
        struct loaded l;
        load_vocab(vocab_sets[v], &l);
        for (int i = 0; i < in.n; i++)
            check_round_trip(l.tok, vocab_sets[v], in.s[i], in.len[i], i);
        unload(&l);
    }
    free(in.buf);
}

static const struct {
    const char *s;
    size_t len;
} bad_utf8[] = {
    {"\xE2\x82", 2},               /* truncated 3-byte sequence */
    {"abc\xF0\x9F\x98", 6},        /* truncated 4-byte sequence at the end */
    {"\xFF\xFE\xFF", 3},           /* bytes never valid in UTF-8 */
    {"\x80\x81 x \xBF", 6},        /* lone continuation bytes */
    {"\xC0\xAF\xE0\x80\xAF", 5},   /* overlong encodings */
    {"a\xED\xA0\x80z", 5},         /* UTF-16 surrogate */
    {"\xF4\x90\x80\x80", 4},       /* above U+10FFFF */
    {"\xF8\x88\x80\x80\x80 5", 7}, /* 5-byte form */
    {"Hello \xC3 w\xC3\xB6rld \xE4\xBD", 18},
    {"<|endoftext|\xFF>", 15},
    {"\x00\x01\x02 nul", 7},
};

/* True if each byte of s has a token of its own that decodes to that byte: <0xXX> for
 * SentencePiece, the GPT-2 stand-in for byte-level vocabularies. */
static bool bytes_representable(const struct mc_tokenizer *tok, const char *s, size_t len) {
    bool spm = strcmp(mc_tokenizer_model_name(tok), "llama") == 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t b = (uint8_t)s[i];
        char key[8];
        size_t kl;
        if (spm) {
            kl = (size_t)snprintf(key, sizeof(key), "<0x%02X>", b);
        } else {
            int n = 0;
            for (int c = 0; c < b; c++)
                n += !((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE);
            bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
            unsigned cp = printable ? b : 256u + (unsigned)n;
            if (cp < 0x80) {
                key[0] = (char)cp;
                kl = 1;
            } else {
                key[0] = (char)(0xC0 | (cp >> 6));
                key[1] = (char)(0x80 | (cp & 0x3F));
                kl = 2;
            }
        }
        int32_t id = mc_tokenizer_find(tok, key, kl);
        char pc[8];
        if (id < 0 || mc_token_to_piece(tok, id, false, pc, sizeof(pc)) != 1 || (uint8_t)pc[0] != b)
            return false;
    }
    return true;
}

static void test_invalid_utf8_never_crashes_and_round_trips(void **state) {
    (void)state;
    for (size_t v = 0; v < N_SETS; v++) {
        struct loaded l;
        load_vocab(vocab_sets[v], &l);
        for (size_t i = 0; i < sizeof(bad_utf8) / sizeof(bad_utf8[0]); i++) {
            for (int parse = 0; parse < 2; parse++) {
                int32_t *ids;
                size_t n;
                tokenize_ok(l.tok, bad_utf8[i].s, bad_utf8[i].len, true, parse, &ids, &n);
                assert_true(n > 0);
                mc_free(ids);
            }
            /* Where the vocabulary has a token for every byte of the input, the bytes
             * come back exactly. */
            if (bytes_representable(l.tok, bad_utf8[i].s, bad_utf8[i].len))
                check_round_trip(l.tok, vocab_sets[v], bad_utf8[i].s, bad_utf8[i].len, (int)i);
        }
        unload(&l);
    }
}

/* tokenizer.ggml.add_bos_token / add_eos_token decide what add_special adds: the
 * llama-spm vocabulary rewritten with each combination. */
static void test_add_bos_and_add_eos_follow_the_metadata(void **state) {
    (void)state;
    char vp[512], path[64];
    test_shared_path(vp, sizeof(vp), "tokenizer-tests/ggml-vocab-llama-spm.gguf");
    snprintf(path, sizeof(path), "/tmp/mcai-test-specials-%d.gguf", (int)getpid());
    static const struct {
        bool bos, eos;
        const char *want;
    } cases[] = {{true, true, "1 15043 3186 2"},
                 {false, true, "15043 3186 2"},
                 {false, false, "15043 3186"},
                 {true, false, "1 15043 3186"}};
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct mc_err err = {0};
        struct mc_gguf *src;
        struct mc_gguf_writer *w;
        assert_int_equal(mc_gguf_open(vp, &src, &err), MC_OK);
        assert_int_equal(mc_gguf_writer_create(&w, &err), MC_OK);
        assert_int_equal(mc_gguf_writer_copy_kv(w, src, NULL, &err), MC_OK);
        mc_gguf_close(src);
        assert_int_equal(
            mc_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", cases[c].bos, &err), MC_OK);
        assert_int_equal(
            mc_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", cases[c].eos, &err), MC_OK);
        assert_int_equal(mc_gguf_writer_write(w, path, &err), MC_OK);
        mc_gguf_writer_free(w);

        struct loaded l;
        load_path(path, &l);
        int32_t *ids;
        size_t n;
        tokenize_ok(l.tok, "Hello world", 11, true, false, &ids, &n);
        char got[128] = "";
        size_t o = 0;
        for (size_t i = 0; i < n; i++)
            o += (size_t)snprintf(got + o, sizeof(got) - o, "%s%d", i ? " " : "", ids[i]);
        assert_string_equal(got, cases[c].want);
        mc_free(ids);
        /* Without add_special nothing is added whatever the metadata says. */
        tokenize_ok(l.tok, "Hello world", 11, false, false, &ids, &n);
        assert_int_equal(n, 2);
        mc_free(ids);
        unload(&l);
    }
    unlink(path);
}

static void test_empty_input_gives_only_specials(void **state) {
    (void)state;
    struct loaded l;
    load_vocab("llama-spm", &l);
    int32_t *ids;
    size_t n;
    tokenize_ok(l.tok, "", 0, true, false, &ids, &n);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 1);
    mc_free(ids);
    tokenize_ok(l.tok, "", 0, false, false, &ids, &n);
    assert_int_equal(n, 0);
    assert_non_null(ids);
    mc_free(ids);
    unload(&l);
}

/* ---- Bad metadata --------------------------------------------------------------- */

/* Writes a tiny tokenizer-only GGUF with the given model name and tokens. */
static void write_vocab(const char *path, const char *model, const char *const *toks, int n,
                        bool with_model) {
    struct mc_gguf_writer *w;
    struct mc_err err = {0};
    assert_int_equal(mc_gguf_writer_create(&w, &err), MC_OK);
    if (with_model)
        assert_int_equal(
            mc_gguf_writer_set_str(w, "tokenizer.ggml.model", model, strlen(model), &err), MC_OK);
    uint64_t lens[16];
    for (int i = 0; i < n; i++)
        lens[i] = strlen(toks[i]);
    if (n > 0)
        assert_int_equal(
            mc_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, lens, (uint64_t)n, &err),
            MC_OK);
    assert_int_equal(mc_gguf_writer_write(w, path, &err), MC_OK);
    mc_gguf_writer_free(w);
}

static int load_error(const char *path, struct mc_err *err) {
    struct mc_gguf *g;
    struct mc_tokenizer *tok = (struct mc_tokenizer *)1;
    assert_int_equal(mc_gguf_open(path, &g, err), MC_OK);
    int rc = mc_tokenizer_load(g, &tok, err);
    if (rc != MC_OK)
        assert_null(tok);
    mc_tokenizer_free(rc == MC_OK ? tok : NULL);
    mc_gguf_close(g);
    return rc;
}

static void test_bad_metadata_is_rejected_with_the_key(void **state) {
    (void)state;
    char path[64];
    snprintf(path, sizeof(path), "/tmp/mcai-test-tok-%d.gguf", (int)getpid());
    const char *toks[] = {"<unk>", "<s>", "</s>", "a", "b", "a"};
    struct mc_err err = {0};

    write_vocab(path, "bert", toks, 5, true);
    assert_int_equal(load_error(path, &err), MC_ENOTSUP);
    assert_non_null(strstr(err.msg, "bert"));

    write_vocab(path, "llama", toks, 5, false);
    assert_int_equal(load_error(path, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "tokenizer.ggml.model"));

    write_vocab(path, "llama", toks, 0, true);
    assert_int_equal(load_error(path, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "tokenizer.ggml.tokens"));

    write_vocab(path, "llama", toks, 6, true);
    assert_int_equal(load_error(path, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "duplicate"));

    write_vocab(path, "gpt2", toks, 5, true);
    assert_int_equal(load_error(path, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "tokenizer.ggml.merges"));

    /* Per-token arrays must have the right type and at least one entry per token. */
    struct mc_gguf_writer *w;
    uint64_t lens[5] = {5, 3, 4, 1, 1};
    float scores[2] = {0.0f, -1.0f};
    assert_int_equal(mc_gguf_writer_create(&w, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama", 5, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, lens, 5, &err),
                     MC_OK);
    assert_int_equal(
        mc_gguf_writer_set_arr(w, "tokenizer.ggml.scores", MC_GGUF_FLOAT32, scores, 2, &err),
        MC_OK);
    assert_int_equal(mc_gguf_writer_write(w, path, &err), MC_OK);
    assert_int_equal(load_error(path, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "tokenizer.ggml.scores: 2 entries for 5 tokens"));

    float types[5] = {0};
    assert_int_equal(
        mc_gguf_writer_set_arr(w, "tokenizer.ggml.scores", MC_GGUF_FLOAT32, types, 5, &err), MC_OK);
    assert_int_equal(
        mc_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MC_GGUF_FLOAT32, types, 5, &err),
        MC_OK);
    assert_int_equal(mc_gguf_writer_write(w, path, &err), MC_OK);
    assert_int_equal(load_error(path, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "tokenizer.ggml.token_type"));

    assert_int_equal(mc_gguf_writer_set_str(w, "tokenizer.ggml.tokens", "abc", 3, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_write(w, path, &err), MC_OK);
    assert_int_equal(load_error(path, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "tokenizer.ggml.tokens: expected an array of strings"));
    mc_gguf_writer_free(w);

    /* A tiny SPM vocabulary without byte tokens: unknown characters become UNK. */
    write_vocab(path, "llama", toks, 5, true);
    struct loaded l;
    load_path(path, &l);
    int32_t *ids;
    size_t n;
    tokenize_ok(l.tok, "ab", 2, false, false, &ids, &n);
    /* The three bytes of the prefix space U+2581 have no token: UNK each; then a, b. */
    const int32_t want[] = {0, 0, 0, 3, 4};
    assert_int_equal(n, 5);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ids[i], want[i]);
    mc_free(ids);
    unload(&l);
    unlink(path);
}

/* ---- Pre-tokenizer splits and llama-3 whole words ------------------------------ */

static void check_split(const char *pre_name, const char *text, const char *const *want) {
    struct tok_pre_def def;
    assert_true(tok_pre_lookup(pre_name, strlen(pre_name), &def));
    struct tok_pre *p;
    struct mc_err err = {0};
    assert_int_equal(tok_pre_create(def.regex_set, &p, &err), MC_OK);
    struct tok_span *sp;
    size_t n;
    assert_int_equal(tok_pre_split(p, text, strlen(text), &sp, &n, &err), MC_OK);
    size_t k = 0;
    for (; want[k]; k++) {
        if (k >= n)
            fail_msg("%s: %zu pieces, expected more (next '%s')", pre_name, n, want[k]);
        if (sp[k].len != strlen(want[k]) || memcmp(text + sp[k].off, want[k], sp[k].len) != 0)
            fail_msg("%s: piece %zu is '%.*s', expected '%s'", pre_name, k, (int)sp[k].len,
                     text + sp[k].off, want[k]);
    }
    assert_int_equal(n, k);
    mc_free(sp);
    tok_pre_free(p);
}

static void test_pre_tokenizer_splits_like_reference(void **state) {
    (void)state;
    const char *text = "Hello world's 1234567 ok\n\n  x";
    const char *llama3[] = {"Hello", " world", "'s",   " ", "123", "456",
                            "7",     " ok",    "\n\n", " ", " x",  NULL};
    check_split("llama-bpe", text, llama3);
    const char *qwen2[] = {"Hello", " world", "'s", " ",   "1",    "2", "3",  "4",
                           "5",     "6",      "7",  " ok", "\n\n", " ", " x", NULL};
    check_split("qwen2", text, qwen2);
    const char *gpt2[] = {"Hello", " world", "'s", " 1234567", " ok", "\n\n ", " x", NULL};
    check_split("gpt-2", text, gpt2);
    /* deepseek-llm: letters keep their leading space; the punctuation pass also takes
     * ASCII letters and the CJK pass covers U+0800-U+4E00 (Ohm sign U+2126 included), so
     * later passes cut pieces the letter pass made. */
    const char *ds[] = {" \xC2\xB5\xCE\xA3", "\xE2\x84\xA6", "a", " ", "12", NULL};
    check_split("deepseek-llm",
                " \xC2\xB5\xCE\xA3\xE2\x84\xA6"
                "a 12",
                ds);
    /* Invalid bytes split like U+FFFD (a symbol, grouped with punctuation) but keep
     * their raw bytes. */
    const char *bad[] = {"a", " \xFF\xFE!", NULL};
    check_split("gpt-2", "a \xFF\xFE!", bad);
}

static void test_gpt2_byte_map_is_a_bijection(void **state) {
    (void)state;
    int seen[324] = {0};
    for (int b = 0; b < 256; b++) {
        char u[2];
        size_t n = tok_byte_encode((uint8_t)b, u);
        uint32_t cp = n == 1 ? (uint8_t)u[0] : (((uint32_t)u[0] & 0x1F) << 6) | (u[1] & 0x3F);
        assert_true(cp < 324);
        assert_int_equal(seen[cp]++, 0);
        assert_int_equal(tok_byte_decode(cp), b);
    }
    assert_int_equal(tok_byte_decode(' '), -1); /* space travels as U+0120 */
    assert_int_equal(tok_byte_decode(0x120), ' ');
    assert_int_equal(tok_byte_decode(324), -1);
}

/* A byte-level vocabulary in which merges alone split "abc" but the word is a token. */
static void write_bpe_vocab(const char *path, const char *pre) {
    struct mc_gguf_writer *w;
    struct mc_err err = {0};
    const char *toks[] = {"a", "b", "c", "bc", "abc"};
    uint64_t tl[] = {1, 1, 1, 2, 3};
    const char *merges[] = {"b c"};
    uint64_t ml[] = {3};
    assert_int_equal(mc_gguf_writer_create(&w, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2", 4, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_str(w, "tokenizer.ggml.pre", pre, strlen(pre), &err),
                     MC_OK);
    assert_int_equal(mc_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, tl, 5, &err),
                     MC_OK);
    assert_int_equal(mc_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, ml, 1, &err),
                     MC_OK);
    assert_int_equal(mc_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 0, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_write(w, path, &err), MC_OK);
    mc_gguf_writer_free(w);
}

static void test_llama3_keeps_whole_vocabulary_words(void **state) {
    (void)state;
    char path[64];
    snprintf(path, sizeof(path), "/tmp/mcai-test-tok3-%d.gguf", (int)getpid());
    struct loaded l;
    int32_t *ids;
    size_t n;

    write_bpe_vocab(path, "llama-bpe");
    load_path(path, &l);
    tokenize_ok(l.tok, "abc", 3, false, false, &ids, &n);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 4);
    mc_free(ids);
    assert_true(mc_tokenizer_add_bos(l.tok)); /* llama-3 default */
    unload(&l);

    write_bpe_vocab(path, "gpt-2");
    load_path(path, &l);
    tokenize_ok(l.tok, "abc", 3, false, false, &ids, &n);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 0);
    assert_int_equal(ids[1], 3);
    mc_free(ids);
    assert_false(mc_tokenizer_add_bos(l.tok));
    unload(&l);

    write_bpe_vocab(path, "no-such-pre");
    struct mc_err err = {0};
    assert_int_equal(load_error(path, &err), MC_ENOTSUP);
    assert_non_null(strstr(err.msg, "no-such-pre"));
    unlink(path);
}

/* ---- Sharing one tokenizer between threads ------------------------------------- */

struct thread_job {
    const struct mc_tokenizer *tok;
    const struct inputs *in;
    const int32_t *want[N_VECTORS];
    const size_t *want_n;
    int mismatches;
};

static void *encode_all(void *arg) {
    struct thread_job *j = arg;
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < j->in->n; i++) {
            int32_t *ids;
            size_t n;
            struct mc_err err = {0};
            if (mc_tokenize(j->tok, j->in->s[i], j->in->len[i], false, false, &ids, &n, &err)) {
                j->mismatches++;
                continue;
            }
            if (n != j->want_n[i] || memcmp(ids, j->want[i], n * sizeof(int32_t)) != 0)
                j->mismatches++;
            mc_free(ids);
        }
    }
    return NULL;
}

static void test_one_tokenizer_shared_by_threads(void **state) {
    (void)state;
    char path[512];
    struct inputs in;
    read_inputs(test_shared_path(path, sizeof(path), "tokenizer-tests/ggml-vocab-gpt-2.gguf.inp"),
                &in);
    struct loaded l;
    load_vocab("deepseek-llm", &l);
    int32_t *want[N_VECTORS];
    size_t want_n[N_VECTORS];
    for (int i = 0; i < in.n; i++)
        tokenize_ok(l.tok, in.s[i], in.len[i], false, false, &want[i], &want_n[i]);

    struct thread_job jobs[4];
    pthread_t th[4];
    for (int t = 0; t < 4; t++) {
        jobs[t] = (struct thread_job){.tok = l.tok, .in = &in, .want_n = want_n};
        for (int i = 0; i < in.n; i++)
            jobs[t].want[i] = want[i];
        assert_int_equal(pthread_create(&th[t], NULL, encode_all, &jobs[t]), 0);
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(jobs[t].mismatches, 0);
    }
    for (int i = 0; i < in.n; i++)
        mc_free(want[i]);
    free(in.buf);
    unload(&l);
}

/* ---- mcai tokenize -------------------------------------------------------------- */

/* Runs a shell command, captures stdout+stderr into out, returns the exit status. */
static void test_cli_tokenize_prints_ids_and_exit_codes(void **state) {
    (void)state;
    const char *mcai = getenv("MCAI");
    if (!mcai || !*mcai)
        mcai = "build/mcai";
    char vocab[512], cmd[2048], out[4096];
    test_shared_path(vocab, sizeof(vocab), "tokenizer-tests/ggml-vocab-llama-spm.gguf");

    snprintf(cmd, sizeof(cmd), "%s tokenize -m %s -p 'Hello world' 2>&1", mcai, vocab);
    assert_int_equal(test_run_cmd(cmd, out, sizeof(out)), 0);
    assert_string_equal(out, "1 15043 3186\n");

    snprintf(cmd, sizeof(cmd), "%s tokenize -m %s --no-special -p 'Hello world' 2>&1", mcai, vocab);
    assert_int_equal(test_run_cmd(cmd, out, sizeof(out)), 0);
    assert_string_equal(out, "15043 3186\n");

    /* -f takes the whole file, trailing newline included. */
    char path[64];
    snprintf(path, sizeof(path), "/tmp/mcai-test-tok-%d.txt", (int)getpid());
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("Hello world\n", f);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "%s tokenize -m %s --no-special -f %s 2>&1", mcai, vocab, path);
    assert_int_equal(test_run_cmd(cmd, out, sizeof(out)), 0);
    assert_string_equal(out, "15043 3186 13\n");
    unlink(path);

    snprintf(cmd, sizeof(cmd), "%s tokenize -m /nonexistent/m.gguf -p x 2>&1", mcai);
    assert_int_equal(test_run_cmd(cmd, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "/nonexistent/m.gguf"));

    snprintf(cmd, sizeof(cmd), "%s tokenize -m %s -f /nonexistent/t.txt 2>&1", mcai, vocab);
    assert_int_equal(test_run_cmd(cmd, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "/nonexistent/t.txt"));

    snprintf(cmd, sizeof(cmd), "%s tokenize -p x 2>&1", mcai);
    assert_int_equal(test_run_cmd(cmd, out, sizeof(out)), 2);
    snprintf(cmd, sizeof(cmd), "%s tokenize -m %s -p x -f y 2>&1", mcai, vocab);
    assert_int_equal(test_run_cmd(cmd, out, sizeof(out)), 2);
}

/* ---- Allocation failures -------------------------------------------------------- */

static void test_allocation_failures_are_clean(void **state) {
    (void)state;
    char path[512];
    test_shared_path(path, sizeof(path), "models/stories260K.gguf");
    struct mc_gguf *g;
    struct mc_err err = {0};
    assert_int_equal(mc_gguf_open(path, &g, &err), MC_OK);
    bool loaded = false;
    for (long k = 1; k < 200 && !loaded; k++) {
        struct mc_tokenizer *tok = NULL;
        mc_mem_fail_after(k);
        int rc = mc_tokenizer_load(g, &tok, &err);
        int32_t *ids = NULL;
        size_t n = 0;
        int rc2 = MC_OK;
        if (rc == MC_OK)
            rc2 = mc_tokenize(tok, "Once upon a time", 16, true, false, &ids, &n, &err);
        mc_mem_fail_after(0);
        if (rc != MC_OK) {
            assert_int_equal(rc, MC_ENOMEM);
            assert_null(tok);
        } else if (rc2 != MC_OK) {
            assert_int_equal(rc2, MC_ENOMEM);
            assert_null(ids);
        } else {
            assert_int_equal(n, 5);
            loaded = true;
        }
        mc_free(ids);
        mc_tokenizer_free(tok);
    }
    assert_true(loaded);
    mc_gguf_close(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors_every_set_in_the_folder),
        cmocka_unit_test(test_reference_prompts_stories260k),
        cmocka_unit_test(test_reference_prompts_llama2_tiny),
        cmocka_unit_test(test_special_flags_per_vocab),
        cmocka_unit_test(test_parse_special_splits_control_tokens),
        cmocka_unit_test(test_user_defined_tokens_split_without_parse_special),
        cmocka_unit_test(test_token_to_piece_contract),
        cmocka_unit_test(test_detokenize_cleans_spaces_like_reference),
        cmocka_unit_test(test_round_trip_vector_inputs),
        cmocka_unit_test(test_invalid_utf8_never_crashes_and_round_trips),
        cmocka_unit_test(test_empty_input_gives_only_specials),
        cmocka_unit_test(test_add_bos_and_add_eos_follow_the_metadata),
        cmocka_unit_test(test_bad_metadata_is_rejected_with_the_key),
        cmocka_unit_test(test_pre_tokenizer_splits_like_reference),
        cmocka_unit_test(test_llama3_keeps_whole_vocabulary_words),
        cmocka_unit_test(test_gpt2_byte_map_is_a_bijection),
        cmocka_unit_test(test_one_tokenizer_shared_by_threads),
        cmocka_unit_test(test_cli_tokenize_prints_ids_and_exit_codes),
        cmocka_unit_test(test_allocation_failures_are_clean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
