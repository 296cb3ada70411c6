/* test_tokenizer.c - tokenizers against the reference: the shared conformance vectors
 * (every input of every ggml-vocab set must give exactly the expected ids), the prompt
 * ids and decoded texts of the reference greedy runs, special tokens, invalid UTF-8,
 * round trips, bad metadata, and allocation failures. */
#include "base/err.h"
#include "base/mem.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "test_util.h"

#include <jansson.h> /* json_load_file, json_object_get, json_array_size */
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#define N_VECTORS 46
#define SEP "\n__ggml_vocab_test__\n"

static const char *const vocab_sets[] = {"llama-spm", "gpt-2", "mpt", "refact", "falcon",
                                         "deepseek-coder", "deepseek-llm"};
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

/* Runs every vector of one set; returns the number that matched and prints each miss. */
static int run_vectors(const char *name) {
    char rel[256], path[512];
    struct loaded l;
    load_vocab(name, &l);
    struct inputs in;
    struct expected ex;
    snprintf(rel, sizeof(rel), "tokenizer-tests/ggml-vocab-%s.gguf.inp", name);
    read_inputs(test_shared_path(path, sizeof(path), rel), &in);
    snprintf(rel, sizeof(rel), "tokenizer-tests/ggml-vocab-%s.gguf.out", name);
    read_expected(test_shared_path(path, sizeof(path), rel), &ex);
    assert_int_equal(in.n, N_VECTORS);
    assert_int_equal(ex.lines, N_VECTORS);

    int pass = 0;
    for (int i = 0; i < N_VECTORS; i++) {
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
    print_message("[ vectors  ] %s: %d/%d passed\n", name, pass, N_VECTORS);
    free(in.buf);
    unload(&l);
    return pass;
}

#define VECTOR_TEST(fn, name)                                                                      \
    static void fn(void **state) {                                                                 \
        (void)state;                                                                               \
        assert_int_equal(run_vectors(name), N_VECTORS);                                            \
    }

VECTOR_TEST(test_vectors_llama_spm, "llama-spm")
VECTOR_TEST(test_vectors_gpt2, "gpt-2")
VECTOR_TEST(test_vectors_mpt, "mpt")
VECTOR_TEST(test_vectors_refact, "refact")
VECTOR_TEST(test_vectors_falcon, "falcon")
VECTOR_TEST(test_vectors_deepseek_coder, "deepseek-coder")
VECTOR_TEST(test_vectors_deepseek_llm, "deepseek-llm")

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
    snprintf(rel, sizeof(rel), "models/%s",
             json_string_value(json_object_get(root, "model_file")));
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
    {"\xE2\x82", 2},                 /* truncated 3-byte sequence */
    {"abc\xF0\x9F\x98", 6},          /* truncated 4-byte sequence at the end */
    {"\xFF\xFE\xFF", 3},             /* bytes never valid in UTF-8 */
    {"\x80\x81 x \xBF", 6},          /* lone continuation bytes */
    {"\xC0\xAF\xE0\x80\xAF", 5},     /* overlong encodings */
    {"a\xED\xA0\x80z", 5},           /* UTF-16 surrogate */
    {"\xF4\x90\x80\x80", 4},         /* above U+10FFFF */
    {"\xF8\x88\x80\x80\x80 5", 7},   /* 5-byte form */
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

    /* A tiny SPM vocabulary without byte tokens: unknown characters become UNK. */
    write_vocab(path, "llama", toks, 5, true);
    assert_int_equal(load_error(path, &err), MC_OK);
    unlink(path);
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
        cmocka_unit_test(test_vectors_llama_spm),
        cmocka_unit_test(test_vectors_gpt2),
        cmocka_unit_test(test_vectors_mpt),
        cmocka_unit_test(test_vectors_refact),
        cmocka_unit_test(test_vectors_falcon),
        cmocka_unit_test(test_vectors_deepseek_coder),
        cmocka_unit_test(test_vectors_deepseek_llm),
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
        cmocka_unit_test(test_bad_metadata_is_rejected_with_the_key),
        cmocka_unit_test(test_allocation_failures_are_clean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
