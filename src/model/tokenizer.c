/* tokenizer.c - loading a tokenizer from GGUF metadata, special-token handling, and the
 * public encode/decode entry points.
 *
 * The vocabulary is copied into one text arena with an open-addressing hash from token
 * text to id (load is linear in the vocabulary; 100k tokens load in milliseconds). The
 * BPE merges ("left right" strings, rank = position) get their own hash. Behaviour
 * follows the reference implementation (llama.cpp at the commit the shared test vectors
 * were made with): the defaults for BOS/EOS/UNK and add_bos per tokenizer model, the
 * detection of end-of-generation and fill-in-the-middle tokens by their text, the
 * split of the input on special-token texts (longest first; control and unknown tokens
 * only when parse_special is set, user-defined tokens always), the leading space of
 * SentencePiece, and detokenize's space handling.
 *
 * Deliberate differences: input that is not valid UTF-8 keeps its raw bytes through
 * byte-level BPE where the vocabulary has a token for each such byte (the reference
 * always substitutes U+FFFD, which is still done for bytes it has no token for), and an
 * invalid byte is a symbol of its own in SentencePiece, so decoding gives the input
 * back; a SentencePiece byte with neither a <0xXX> token nor a one-byte token becomes
 * UNK (the reference throws). Tokenizer models other than "llama" and "gpt2" (WordPiece,
 * Unigram, RWKV) are refused with MC_ENOTSUP.
 *
 * A loaded tokenizer is immutable; any number of threads may encode and decode. */
#include "model/tokenizer.h"
#include "model/tokenizer_int.h"

#include "base/log.h"
#include "base/mem.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h> /* qsort */
#include <string.h>

#define TOK_MAX_VOCAB       (1 << 22) /* tokens; the largest real vocabularies are ~260k */
#define TOK_MAX_MERGES      (1 << 22)
#define TOK_MAX_TEXT_BYTES  (1u << 30) /* all token texts together */
#define TOK_MAX_INPUT_BYTES ((size_t)1 << 28)

/* ---- String hash ---------------------------------------------------------------- */

static uint32_t hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 16777619u;
    }
    return h ^ (h >> 15);
}

int tok_strmap_init(struct tok_strmap *m, uint32_t n_keys, const char *base, const uint32_t *off,
                    const uint32_t *len) {
    uint32_t cap = 16;
    while (cap < 2 * (uint64_t)n_keys)
        cap *= 2;
    m->slots = mc_calloc(cap, sizeof(uint32_t));
    if (!m->slots)
        return MC_ENOMEM;
    m->mask = cap - 1;
    m->base = base;
    m->off = off;
    m->len = len;
    return MC_OK;
}

void tok_strmap_deinit(struct tok_strmap *m) {
    mc_free(m->slots);
    m->slots = NULL;
}

static bool key_equals(const struct tok_strmap *m, uint32_t i, const char *s, size_t n) {
    return m->len[i] == n && memcmp(m->base + m->off[i], s, n) == 0;
}

int32_t tok_strmap_insert(struct tok_strmap *m, uint32_t i) {
    const char *s = m->base + m->off[i];
    uint32_t n = m->len[i];
    for (uint32_t h = hash_bytes(s, n) & m->mask;; h = (h + 1) & m->mask) {
        uint32_t v = m->slots[h];
        if (v == 0) {
            m->slots[h] = i + 1;
            return -1;
        }
        if (key_equals(m, v - 1, s, n))
            return (int32_t)(v - 1);
    }
}

int32_t tok_strmap_find(const struct tok_strmap *m, const char *s, size_t len) {
    if (!m->slots)
        return -1;
    for (uint32_t h = hash_bytes(s, len) & m->mask;; h = (h + 1) & m->mask) {
        uint32_t v = m->slots[h];
        if (v == 0)
            return -1;
        if (key_equals(m, v - 1, s, len))
            return (int32_t)(v - 1);
    }
}

int tok_ids_push(struct tok_ids *ids, int32_t id, struct mc_err *err) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *v = mc_realloc(ids->v, cap * sizeof(*v));
        if (!v)
            return mc_err_set(err, MC_ENOMEM, "out of memory for %zu token ids", cap);
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return MC_OK;
}

/* ---- Metadata helpers ----------------------------------------------------------- */

/* Finds a string array key: its index, or -1 if absent; MC_EFORMAT if of another type. */
static int find_str_array(const struct mc_gguf *g, const char *key, int64_t *idx,
                          struct mc_err *err) {
    *idx = mc_gguf_find_key(g, key);
    if (*idx < 0)
        return MC_OK;
    if (mc_gguf_key_type(g, *idx) != MC_GGUF_ARRAY || mc_gguf_arr_type(g, *idx) != MC_GGUF_STRING)
        return mc_err_set(err, MC_EFORMAT, "%s: expected an array of strings", key);
    return MC_OK;
}

/* Reads an optional integer key into *id if present and within the vocabulary. */
static void read_token_id(const struct mc_gguf *g, const char *key, int32_t n_vocab, int32_t *id) {
    struct mc_err e;
    uint32_t v;
    if (mc_gguf_get_u32(g, key, &v, &e) != MC_OK)
        return;
    if (v == UINT32_MAX)
        return; /* written as -1: "none" */
    if (v >= (uint32_t)n_vocab) {
        MC_LOG_WARN("tokenizer", "bad_special_id", "key=%s id=%u n_vocab=%d", key, v, n_vocab);
        return;
    }
    *id = (int32_t)v;
}

static void read_bool(const struct mc_gguf *g, const char *key, bool *out) {
    struct mc_err e;
    bool v;
    if (mc_gguf_get_bool(g, key, &v, &e) == MC_OK)
        *out = v;
}

/* ---- Loading: model kind, tokens, merges ---------------------------------------- */

static int load_kind(const struct mc_gguf *g, struct mc_tokenizer *tok, struct tok_pre_def *pre,
                     struct mc_err *err) {
    const char *s;
    uint64_t n;
    int rc = mc_gguf_get_str(g, "tokenizer.ggml.model", &s, &n, err);
    if (rc == MC_ENOTFOUND)
        return mc_err_set(err, MC_EFORMAT, "tokenizer.ggml.model: missing");
    if (rc != MC_OK)
        return rc;
    snprintf(tok->model_name, sizeof(tok->model_name), "%.*s", (int)(n < 31 ? n : 31), s);
    if (n == 5 && memcmp(s, "llama", 5) == 0) {
        tok->kind = TOK_KIND_SPM;
        return MC_OK;
    }
    if (!(n == 4 && memcmp(s, "gpt2", 4) == 0))
        return mc_err_set(err, MC_ENOTSUP,
                          "tokenizer.ggml.model '%s' is not supported (supported: llama, gpt2)",
                          tok->model_name);
    tok->kind = TOK_KIND_BPE;

    rc = mc_gguf_get_str(g, "tokenizer.ggml.pre", &s, &n, err);
    if (rc == MC_ENOTFOUND) {
        MC_LOG_WARN("tokenizer", "missing_pre", "using=%s", "default");
        s = "default";
        n = 7;
    } else if (rc != MC_OK) {
        return rc;
    }
    snprintf(tok->pre_name, sizeof(tok->pre_name), "%.*s", (int)(n < 47 ? n : 47), s);
    if (!tok_pre_lookup(s, (size_t)n, pre))
        return mc_err_set(err, MC_ENOTSUP, "tokenizer.ggml.pre '%s' is not supported",
                          tok->pre_name);
    return MC_OK;
}

/* Checks an optional per-token numeric array: absent is fine, else it must have the
 * right element type and at least n_vocab elements. */
static int check_token_array(const struct mc_gguf *g, const char *key, int64_t idx,
                             uint32_t n_vocab, bool allow_f32, struct mc_err *err) {
    if (idx < 0)
        return MC_OK;
    enum mc_gguf_vtype t = mc_gguf_arr_type(g, idx);
    bool ok = mc_gguf_key_type(g, idx) == MC_GGUF_ARRAY &&
              (t == MC_GGUF_INT32 || (allow_f32 && t == MC_GGUF_FLOAT32));
    if (!ok)
        return mc_err_set(err, MC_EFORMAT, "%s: expected an array of %s", key,
                          allow_f32 ? "float32 or int32" : "int32");
    if (mc_gguf_arr_n(g, idx) < n_vocab)
        return mc_err_set(err, MC_EFORMAT, "%s: %llu entries for %u tokens", key,
                          (unsigned long long)mc_gguf_arr_n(g, idx), n_vocab);
    if (!mc_gguf_arr_data(g, idx))
        return mc_err_set(err, MC_EFORMAT, "%s: no data", key);
    return MC_OK;
}

static uint32_t attr_from_type(int32_t type) {
    switch (type) {
    case 1:
        return TOK_ATTR_NORMAL;
    case 2:
        return TOK_ATTR_UNKNOWN;
    case 3:
        return TOK_ATTR_CONTROL;
    case 4:
        return TOK_ATTR_USER_DEFINED;
    case 5:
        return TOK_ATTR_UNUSED;
    case 6:
        return TOK_ATTR_BYTE;
    default:
        return 0; /* undefined */
    }
}

/* Copies texts, scores and types, and builds the text -> id hash. */
static int load_tokens(const struct mc_gguf *g, struct mc_tokenizer *tok, struct mc_err *err) {
    int64_t ti;
    int rc = find_str_array(g, "tokenizer.ggml.tokens", &ti, err);
    if (rc != MC_OK)
        return rc;
    if (ti < 0)
        return mc_err_set(err, MC_EFORMAT, "tokenizer.ggml.tokens: missing");
    uint64_t n = mc_gguf_arr_n(g, ti);
    if (n == 0 || n > TOK_MAX_VOCAB)
        return mc_err_set(err, MC_EFORMAT, "tokenizer.ggml.tokens: %llu tokens (limit 1..%d)",
                          (unsigned long long)n, TOK_MAX_VOCAB);
    tok->n_vocab = (int32_t)n;

    int64_t si = mc_gguf_find_key(g, "tokenizer.ggml.scores");
    int64_t yi = mc_gguf_find_key(g, "tokenizer.ggml.token_type");
    rc = check_token_array(g, "tokenizer.ggml.scores", si, (uint32_t)n, true, err);
    if (rc == MC_OK)
        rc = check_token_array(g, "tokenizer.ggml.token_type", yi, (uint32_t)n, false, err);
    if (rc != MC_OK)
        return rc;

    /* Sizes first: one arena for all texts; empty tokens get a "[EMPTY_i]" name. */
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len;
        if (!mc_gguf_arr_str(g, ti, i, &len))
            return mc_err_set(err, MC_EFORMAT, "tokenizer.ggml.tokens[%llu]: unreadable",
                              (unsigned long long)i);
        total += len ? len : 24;
    }
    if (total > TOK_MAX_TEXT_BYTES)
        return mc_err_set(err, MC_EFORMAT, "tokenizer.ggml.tokens: %llu bytes of text (limit %u)",
                          (unsigned long long)total, TOK_MAX_TEXT_BYTES);

    tok->text = mc_malloc(total + 1);
    tok->tok_off = mc_malloc(n * sizeof(uint32_t));
    tok->tok_len = mc_malloc(n * sizeof(uint32_t));
    tok->score = mc_malloc(n * sizeof(float));
    tok->attr = mc_malloc(n * sizeof(uint32_t));
    tok->is_eog = mc_calloc(n, 1);
    if (!tok->text || !tok->tok_off || !tok->tok_len || !tok->score || !tok->attr || !tok->is_eog)
        return mc_err_set(err, MC_ENOMEM, "out of memory for %llu tokens", (unsigned long long)n);

    const uint8_t *sd = si >= 0 ? mc_gguf_arr_data(g, si) : NULL;
    bool s_int = si >= 0 && mc_gguf_arr_type(g, si) == MC_GGUF_INT32;
    const uint8_t *yd = yi >= 0 ? mc_gguf_arr_data(g, yi) : NULL;
    uint32_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len;
        const char *s = mc_gguf_arr_str(g, ti, i, &len);
        tok->tok_off[i] = pos;
        if (len == 0) {
            MC_LOG_WARN("tokenizer", "empty_token", "id=%llu", (unsigned long long)i);
            len = (uint64_t)snprintf(tok->text + pos, 25, "[EMPTY_%llu]", (unsigned long long)i);
        } else {
            memcpy(tok->text + pos, s, len);
        }
        tok->tok_len[i] = (uint32_t)len;
        pos += (uint32_t)len;

        float sc = 0.0f;
        if (sd && s_int) {
            int32_t v;
            memcpy(&v, sd + 4 * i, 4);
            sc = (float)v;
        } else if (sd) {
            memcpy(&sc, sd + 4 * i, 4);
        }
        tok->score[i] = sc;
        int32_t ty = 1;
        if (yd)
            memcpy(&ty, yd + 4 * i, 4);
        tok->attr[i] = attr_from_type(ty);
    }

    if (tok_strmap_init(&tok->vocab_map, (uint32_t)n, tok->text, tok->tok_off, tok->tok_len))
        return mc_err_set(err, MC_ENOMEM, "out of memory for the vocabulary hash");
    for (uint32_t i = 0; i < (uint32_t)n; i++) {
        int32_t dup = tok_strmap_insert(&tok->vocab_map, i);
        if (dup >= 0)
            return mc_err_set(err, MC_EFORMAT,
                              "tokenizer.ggml.tokens: duplicate token text at ids %d and %u", dup,
                              i);
    }
    return MC_OK;
}

/* Copies the merges; the first occurrence of a pair keeps its rank. A merge without a
 * separating space (after its first byte) can never apply and is kept only for rank
 * numbering. */
static int load_merges(const struct mc_gguf *g, struct mc_tokenizer *tok, struct mc_err *err) {
    int64_t mi;
    int rc = find_str_array(g, "tokenizer.ggml.merges", &mi, err);
    if (rc != MC_OK)
        return rc;
    if (mi < 0)
        return mc_err_set(err, MC_EFORMAT, "tokenizer.ggml.merges: missing (needed by gpt2)");
    uint64_t n = mc_gguf_arr_n(g, mi);
    if (n > TOK_MAX_MERGES)
        return mc_err_set(err, MC_EFORMAT, "tokenizer.ggml.merges: %llu merges (limit %d)",
                          (unsigned long long)n, TOK_MAX_MERGES);
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len;
        if (!mc_gguf_arr_str(g, mi, i, &len))
            return mc_err_set(err, MC_EFORMAT, "tokenizer.ggml.merges[%llu]: unreadable",
                              (unsigned long long)i);
        total += len;
    }
    if (total > TOK_MAX_TEXT_BYTES)
        return mc_err_set(err, MC_EFORMAT, "tokenizer.ggml.merges: %llu bytes (limit %u)",
                          (unsigned long long)total, TOK_MAX_TEXT_BYTES);
    tok->n_merges = (uint32_t)n;
    tok->merge_text = mc_malloc(total + 1);
    tok->merge_off = mc_malloc((n + 1) * sizeof(uint32_t));
    tok->merge_len = mc_malloc((n + 1) * sizeof(uint32_t));
    if (!tok->merge_text || !tok->merge_off || !tok->merge_len)
        return mc_err_set(err, MC_ENOMEM, "out of memory for %llu merges", (unsigned long long)n);
    if (tok_strmap_init(&tok->merge_map, (uint32_t)n, tok->merge_text, tok->merge_off,
                        tok->merge_len))
        return mc_err_set(err, MC_ENOMEM, "out of memory for the merges hash");

    uint32_t pos = 0;
    for (uint32_t i = 0; i < (uint32_t)n; i++) {
        uint64_t len;
        const char *s = mc_gguf_arr_str(g, mi, i, &len);
        memcpy(tok->merge_text + pos, s, len);
        tok->merge_off[i] = pos;
        tok->merge_len[i] = (uint32_t)len;
        pos += (uint32_t)len;
        if (len < 3 || !memchr(s + 1, ' ', len - 1))
            continue;
        (void)tok_strmap_insert(&tok->merge_map, i);
        if (len > tok->max_merge_len)
            tok->max_merge_len = (uint32_t)len;
    }
    return MC_OK;
}

/* ---- Loading: special tokens ---------------------------------------------------- */

static bool text_is(const struct mc_tokenizer *tok, int32_t id, const char *s) {
    size_t n = strlen(s);
    return tok->tok_len[id] == n && memcmp(tok->text + tok->tok_off[id], s, n) == 0;
}

static bool text_in(const struct mc_tokenizer *tok, int32_t id, const char *const *list) {
    for (; *list; list++) {
        if (text_is(tok, id, *list))
            return true;
    }
    return false;
}

static const char *const eot_texts[] = {"<|eot_id|>",
                                        "<|im_end|>",
                                        "<|end|>",
                                        "<end_of_turn>",
                                        "<|endoftext|>",
                                        "<EOT>",
                                        "_<EOT>",
                                        "<\xEF\xBD\x9C"
                                        "end\xE2\x96\x81of\xE2\x96\x81sentence"
                                        "\xEF\xBD\x9C>",
                                        NULL};
static const char *const eom_texts[] = {"<|eom_id|>", NULL};
static const char *const fim_pre_texts[] = {"<|fim_prefix|>",
                                            "<fim-prefix>",
                                            "<fim_prefix>",
                                            "<\xEF\xBD\x9C"
                                            "fim\xE2\x96\x81"
                                            "begin\xEF\xBD\x9C>",
                                            "<PRE>",
                                            "\xE2\x96\x81<PRE>",
                                            NULL};
static const char *const fim_suf_texts[] = {"<|fim_suffix|>",
                                            "<fim-suffix>",
                                            "<fim_suffix>",
                                            "<\xEF\xBD\x9C"
                                            "fim\xE2\x96\x81hole\xEF\xBD\x9C>",
                                            "<SUF>",
                                            "\xE2\x96\x81<SUF>",
                                            NULL};
static const char *const fim_mid_texts[] = {"<|fim_middle|>",
                                            "<fim-middle>",
                                            "<fim_middle>",
                                            "<\xEF\xBD\x9C"
                                            "fim\xE2\x96\x81"
                                            "end\xEF\xBD\x9C>",
                                            "<MID>",
                                            "\xE2\x96\x81<MID>",
                                            NULL};
static const char *const fim_pad_texts[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", NULL};
static const char *const fim_rep_texts[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
                                            "<REPO>",       "<reponame>",    NULL};
static const char *const fim_sep_texts[] = {"<|file_sep|>", NULL};
static const char *const eog_texts[] = {"<|eot_id|>",      "<|im_end|>", "<|end|>", "<end_of_turn>",
                                        "<|endoftext|>",   "<|eom_id|>", "<EOT>",   "_<EOT>",
                                        "<|end_of_text|>", NULL};

/* Fills *slot with the first token (by id) whose text is in list, if *slot is unset;
 * a match is marked as a control token, as the reference does. */
static void detect_by_text(struct mc_tokenizer *tok, const char *const *list, int32_t *slot) {
    if (*slot >= 0)
        return;
    for (; *list; list++) {
        int32_t id = tok_strmap_find(&tok->vocab_map, *list, strlen(*list));
        if (id >= 0 && (*slot < 0 || id < *slot))
            *slot = id;
    }
    if (*slot >= 0)
        tok->attr[*slot] |= TOK_ATTR_CONTROL;
}

static void mark_eog(struct mc_tokenizer *tok, int32_t id) {
    if (id >= 0 && id < tok->n_vocab)
        tok->is_eog[id] = 1;
}

static void load_special_ids(const struct mc_gguf *g, struct mc_tokenizer *tok) {
    int32_t n = tok->n_vocab;
    int32_t *slot[] = {&tok->eot,     &tok->eom,     &tok->sep,     &tok->pad,
                       &tok->mask,    &tok->fim_pre, &tok->fim_suf, &tok->fim_mid,
                       &tok->fim_pad, &tok->fim_rep, &tok->fim_sep};
    for (size_t i = 0; i < sizeof(slot) / sizeof(slot[0]); i++)
        *slot[i] = -1;
    if (tok->kind == TOK_KIND_SPM) {
        tok->bos = 1;
        tok->eos = 2;
        tok->unk = 0;
    } else {
        tok->bos = 11;
        tok->eos = 11;
        tok->unk = -1;
    }
    /* Defaults that do not exist in a small vocabulary are dropped. */
    if (tok->bos >= n)
        tok->bos = -1;
    if (tok->eos >= n)
        tok->eos = -1;
    if (tok->unk >= n)
        tok->unk = -1;

    read_token_id(g, "tokenizer.ggml.bos_token_id", n, &tok->bos);
    read_token_id(g, "tokenizer.ggml.eos_token_id", n, &tok->eos);
    read_token_id(g, "tokenizer.ggml.eot_token_id", n, &tok->eot);
    read_token_id(g, "tokenizer.ggml.eom_token_id", n, &tok->eom);
    read_token_id(g, "tokenizer.ggml.unknown_token_id", n, &tok->unk);
    read_token_id(g, "tokenizer.ggml.seperator_token_id", n, &tok->sep);
    read_token_id(g, "tokenizer.ggml.padding_token_id", n, &tok->pad);
    read_token_id(g, "tokenizer.ggml.mask_token_id", n, &tok->mask);
    read_token_id(g, "tokenizer.ggml.fim_pre_token_id", n, &tok->fim_pre);
    read_token_id(g, "tokenizer.ggml.fim_suf_token_id", n, &tok->fim_suf);
    read_token_id(g, "tokenizer.ggml.fim_mid_token_id", n, &tok->fim_mid);
    read_token_id(g, "tokenizer.ggml.fim_pad_token_id", n, &tok->fim_pad);
    read_token_id(g, "tokenizer.ggml.fim_rep_token_id", n, &tok->fim_rep);
    read_token_id(g, "tokenizer.ggml.fim_sep_token_id", n, &tok->fim_sep);
    read_token_id(g, "tokenizer.ggml.prefix_token_id", n, &tok->fim_pre);
    read_token_id(g, "tokenizer.ggml.suffix_token_id", n, &tok->fim_suf);
    read_token_id(g, "tokenizer.ggml.middle_token_id", n, &tok->fim_mid);

    /* Tokens recognised by their text, for files converted without the keys. */
    detect_by_text(tok, eot_texts, &tok->eot);
    detect_by_text(tok, eom_texts, &tok->eom);
    detect_by_text(tok, fim_pre_texts, &tok->fim_pre);
    detect_by_text(tok, fim_suf_texts, &tok->fim_suf);
    detect_by_text(tok, fim_mid_texts, &tok->fim_mid);
    detect_by_text(tok, fim_pad_texts, &tok->fim_pad);
    detect_by_text(tok, fim_rep_texts, &tok->fim_rep);
    detect_by_text(tok, fim_sep_texts, &tok->fim_sep);

    /* End of generation: EOS, EOT, EOM, the FIM pad/repo/file separators, and every
     * token whose text is one of the usual end-of-turn markers. */
    for (const char *const *t = eog_texts; *t; t++) {
        int32_t id = tok_strmap_find(&tok->vocab_map, *t, strlen(*t));
        if (id >= 0) {
            tok->is_eog[id] = 1;
            tok->attr[id] |= TOK_ATTR_CONTROL;
        }
    }
    mark_eog(tok, tok->eos);
    mark_eog(tok, tok->eot);
    mark_eog(tok, tok->eom);
    mark_eog(tok, tok->fim_pad);
    mark_eog(tok, tok->fim_rep);
    mark_eog(tok, tok->fim_sep);
}

static int load_flags(const struct mc_gguf *g, struct mc_tokenizer *tok,
                      const struct tok_pre_def *pre, struct mc_err *err) {
    if (tok->kind == TOK_KIND_SPM) {
        tok->add_bos = true;
        tok->add_eos = false;
        tok->add_space_prefix = true;
        tok->clean_spaces = false;
    } else {
        tok->add_bos = pre->add_bos;
        tok->add_eos = false;
        tok->add_space_prefix = false;
        tok->clean_spaces = pre->clean_spaces;
        tok->ignore_merges = pre->ignore_merges;
    }
    read_bool(g, "tokenizer.ggml.add_space_prefix", &tok->add_space_prefix);
    read_bool(g, "tokenizer.ggml.add_bos_token", &tok->add_bos);
    read_bool(g, "tokenizer.ggml.add_eos_token", &tok->add_eos);
    if (tok->add_bos && tok->bos < 0)
        return mc_err_set(err, MC_EFORMAT,
                          "tokenizer.ggml.add_bos_token is true, but tokenizer.ggml.bos_token_id "
                          "is not set");
    if (tok->add_eos && tok->eos < 0)
        return mc_err_set(err, MC_EFORMAT,
                          "tokenizer.ggml.add_eos_token is true, but tokenizer.ggml.eos_token_id "
                          "is not set");
    return MC_OK;
}

/* Phi-3 files carry no strip flags; the reference sets them by model name. */
static void apply_name_quirks(const struct mc_gguf *g, struct mc_tokenizer *tok) {
    const char *s;
    uint64_t n;
    struct mc_err e;
    if (mc_gguf_get_str(g, "general.name", &s, &n, &e) != MC_OK)
        return;
    char name[128];
    size_t k = n < sizeof(name) - 1 ? (size_t)n : sizeof(name) - 1;
    for (size_t i = 0; i < k; i++)
        name[i] = (char)tolower((unsigned char)s[i]);
    name[k] = '\0';
    if (!strstr(name, "phi-3") && !strstr(name, "phi3"))
        return;
    static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>", NULL};
    for (int32_t i = 0; i < tok->n_vocab; i++) {
        bool special = tok->attr[i] & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN);
        if (special || text_is(tok, i, "</s>"))
            tok->attr[i] |= TOK_ATTR_RSTRIP;
        if (text_in(tok, i, keep))
            tok->attr[i] &= ~(uint32_t)TOK_ATTR_RSTRIP;
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : (x > y);
}

/* Builds the list of tokens the input is split on, longest text first (ties by id). */
static int build_special_list(struct mc_tokenizer *tok, struct mc_err *err) {
    uint32_t want = TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN;
    int32_t n = 0;
    for (int32_t i = 0; i < tok->n_vocab; i++)
        n += (tok->attr[i] & want) != 0;
    uint64_t *keys = mc_malloc((size_t)n * sizeof(uint64_t) + 1);
    tok->special = mc_malloc((size_t)n * sizeof(int32_t) + 1);
    if (!keys || !tok->special) {
        mc_free(keys);
        return mc_err_set(err, MC_ENOMEM, "out of memory for %d special tokens", n);
    }
    /* Sort key: longer text first, then lower id. */
    n = 0;
    for (int32_t i = 0; i < tok->n_vocab; i++) {
        if (tok->attr[i] & want)
            keys[n++] = ((uint64_t)(UINT32_MAX - tok->tok_len[i]) << 32) | (uint32_t)i;
    }
    qsort(keys, (size_t)n, sizeof(uint64_t), cmp_u64);
    for (int32_t i = 0; i < n; i++)
        tok->special[i] = (int32_t)(keys[i] & 0xFFFFFFFFu);
    tok->n_special = n;
    mc_free(keys);
    return MC_OK;
}

/* ---- Loading: decoded pieces ---------------------------------------------------- */

/* Parses the two hex digits of a "<0xXX>" byte token (leniently, like strtol). */
static uint8_t byte_token_value(const char *s, uint32_t n) {
    unsigned v = 0;
    for (uint32_t i = 3; i < n && i < 5; i++) {
        int c = (unsigned char)s[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            break;
        v = v * 16 + (unsigned)d;
    }
    return (uint8_t)v;
}

/* Decodes one code point the reference's lenient way: lead-byte lengths, continuation
 * bytes checked, overlongs accepted; anything else is U+FFFD over one byte. */
static uint32_t decode_lenient(const uint8_t *s, size_t n, size_t *adv) {
    uint8_t b = s[0];
    size_t k = b < 0x80      ? 1
               : !(b & 0x40) ? 0
               : !(b & 0x20) ? 2
               : !(b & 0x10) ? 3
               : !(b & 0x08) ? 4
                             : 0;
    bool ok = k > 0 && k <= n;
    for (size_t i = 1; ok && i < k; i++)
        ok = (s[i] & 0xC0) == 0x80;
    if (!ok) {
        *adv = 1;
        return 0xFFFD;
    }
    *adv = k;
    if (k == 1)
        return b;
    uint32_t cp = b & (0x7F >> k);
    for (size_t i = 1; i < k; i++)
        cp = (cp << 6) | (s[i] & 0x3F);
    return cp;
}

static size_t encode_utf8(uint32_t cp, char *out) {
    if (cp > 0x10FFFF)
        cp = 0xFFFD;
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Writes the piece of a normal byte-level token (GPT-2 stand-ins back to bytes) into
 * out, or only measures it when out is NULL; returns the length. */
static size_t bpe_decode_text(const char *s, uint32_t n, char *out) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i = 0;
    while (i < n) {
        size_t adv;
        uint32_t cp = decode_lenient((const uint8_t *)s + i, n - i, &adv);
        i += adv;
        int b = tok_byte_decode(cp);
        if (b >= 0) {
            if (out)
                out[o] = (char)b;
            o++;
            continue;
        }
        /* Not a stand-in: the reference writes a marker with the bytes and the token. */
        char u[4];
        size_t k = encode_utf8(cp, u);
        char mark[12 + 8];
        memcpy(mark, "[UNK_BYTE_0x", 12);
        for (size_t j = 0; j < k; j++) {
            mark[12 + 2 * j] = hex[(uint8_t)u[j] >> 4];
            mark[13 + 2 * j] = hex[(uint8_t)u[j] & 15];
        }
        size_t ml = 12 + 2 * k;
        if (out) {
            memcpy(out + o, mark, ml);
            memcpy(out + o + ml, s, n);
            out[o + ml + n] = ']';
        }
        o += ml + n + 1;
    }
    return o;
}

/* Renders token id as token_to_piece(special = true) does into out, or only measures
 * it when out is NULL; returns the length. */
static size_t render_piece(const struct mc_tokenizer *tok, int32_t id, char *out) {
    const char *s = tok->text + tok->tok_off[id];
    uint32_t n = tok->tok_len[id], a = tok->attr[id];
    if (a & (TOK_ATTR_UNKNOWN | TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED)) {
        if (out)
            memcpy(out, s, n);
        return n;
    }
    if (a & TOK_ATTR_NORMAL) {
        if (tok->kind == TOK_KIND_BPE)
            return bpe_decode_text(s, n, out);
        size_t o = 0;
        for (uint32_t i = 0; i < n; i++) {
            char c = s[i];
            if (i + 2 < n && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
                c = ' ';
                i += 2;
            }
            if (out)
                out[o] = c;
            o++;
        }
        return o;
    }
    if (a & TOK_ATTR_BYTE) {
        if (out)
            out[0] = (char)byte_token_value(s, n);
        return 1;
    }
    return 0;
}

static int build_pieces(struct mc_tokenizer *tok, struct mc_err *err) {
    int32_t n = tok->n_vocab;
    tok->piece_off = mc_malloc((size_t)n * sizeof(uint32_t));
    tok->piece_len = mc_malloc((size_t)n * sizeof(uint32_t));
    if (!tok->piece_off || !tok->piece_len)
        return mc_err_set(err, MC_ENOMEM, "out of memory for %d token pieces", n);
    uint64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        size_t k = render_piece(tok, i, NULL);
        tok->piece_off[i] = (uint32_t)total;
        tok->piece_len[i] = (uint32_t)k;
        total += k;
        if (total > TOK_MAX_TEXT_BYTES)
            return mc_err_set(err, MC_EFORMAT,
                              "tokenizer.ggml.tokens: decoded pieces exceed %u bytes",
                              TOK_MAX_TEXT_BYTES);
    }
    tok->piece = mc_malloc(total + 1);
    if (!tok->piece)
        return mc_err_set(err, MC_ENOMEM, "out of memory for %d token pieces", n);
    for (int32_t i = 0; i < n; i++)
        render_piece(tok, i, tok->piece + tok->piece_off[i]);
    return MC_OK;
}

/* Which bytes survive a byte-level encode/decode round trip on their own. */
static void build_byte_ok(struct mc_tokenizer *tok) {
    for (int b = 0; b < 256; b++) {
        char s[2];
        size_t n = tok_byte_encode((uint8_t)b, s);
        int32_t id = tok_strmap_find(&tok->vocab_map, s, n);
        tok->byte_ok[b] = id >= 0 && (tok->attr[id] & TOK_ATTR_NORMAL) && tok->piece_len[id] == 1 &&
                          (uint8_t)tok->piece[tok->piece_off[id]] == b;
    }
}

/* ---- Public: load and free ------------------------------------------------------ */

int mc_tokenizer_load(const struct mc_gguf *g, struct mc_tokenizer **out, struct mc_err *err) {
    *out = NULL;
    struct mc_tokenizer *tok = mc_calloc(1, sizeof(*tok));
    if (!tok)
        return mc_err_set(err, MC_ENOMEM, "out of memory for the tokenizer");
    struct tok_pre_def pre = {0};
    int rc = load_kind(g, tok, &pre, err);
    if (rc == MC_OK)
        rc = load_tokens(g, tok, err);
    if (rc == MC_OK && tok->kind == TOK_KIND_BPE)
        rc = load_merges(g, tok, err);
    if (rc == MC_OK) {
        load_special_ids(g, tok);
        rc = load_flags(g, tok, &pre, err);
    }
    if (rc == MC_OK) {
        apply_name_quirks(g, tok);
        rc = build_special_list(tok, err);
    }
    if (rc == MC_OK)
        rc = build_pieces(tok, err);
    if (rc == MC_OK && tok->kind == TOK_KIND_BPE) {
        build_byte_ok(tok);
        rc = tok_pre_create(pre.regex_set, &tok->pre, err);
    }
    if (rc != MC_OK) {
        mc_tokenizer_free(tok);
        return rc;
    }
    *out = tok;
    return MC_OK;
}

void mc_tokenizer_free(struct mc_tokenizer *tok) {
    if (!tok)
        return;
    tok_pre_free(tok->pre);
    tok_strmap_deinit(&tok->vocab_map);
    tok_strmap_deinit(&tok->merge_map);
    mc_free(tok->text);
    mc_free(tok->tok_off);
    mc_free(tok->tok_len);
    mc_free(tok->score);
    mc_free(tok->attr);
    mc_free(tok->piece);
    mc_free(tok->piece_off);
    mc_free(tok->piece_len);
    mc_free(tok->merge_text);
    mc_free(tok->merge_off);
    mc_free(tok->merge_len);
    mc_free(tok->special);
    mc_free(tok->is_eog);
    mc_free(tok);
}

/* ---- Public: properties --------------------------------------------------------- */

int32_t mc_tokenizer_n_vocab(const struct mc_tokenizer *tok) {
    return tok->n_vocab;
}

int32_t mc_tokenizer_bos(const struct mc_tokenizer *tok) {
    return tok->bos;
}

int32_t mc_tokenizer_eos(const struct mc_tokenizer *tok) {
    return tok->eos;
}

int32_t mc_tokenizer_eot(const struct mc_tokenizer *tok) {
    return tok->eot;
}

int32_t mc_tokenizer_unk(const struct mc_tokenizer *tok) {
    return tok->unk;
}

int32_t mc_tokenizer_pad(const struct mc_tokenizer *tok) {
    return tok->pad;
}

bool mc_tokenizer_add_bos(const struct mc_tokenizer *tok) {
    return tok->add_bos;
}

bool mc_tokenizer_add_eos(const struct mc_tokenizer *tok) {
    return tok->add_eos;
}

bool mc_tokenizer_is_eog(const struct mc_tokenizer *tok, int32_t id) {
    return id >= 0 && id < tok->n_vocab && tok->is_eog[id];
}

bool mc_tokenizer_is_special(const struct mc_tokenizer *tok, int32_t id) {
    return id >= 0 && id < tok->n_vocab &&
           (tok->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN)) != 0;
}

int32_t mc_tokenizer_find(const struct mc_tokenizer *tok, const char *s, size_t len) {
    return tok_strmap_find(&tok->vocab_map, s, len);
}

const char *mc_tokenizer_text(const struct mc_tokenizer *tok, int32_t id, size_t *len) {
    if (id < 0 || id >= tok->n_vocab) {
        *len = 0;
        return NULL;
    }
    *len = tok->tok_len[id];
    return tok->text + tok->tok_off[id];
}

const char *mc_tokenizer_model_name(const struct mc_tokenizer *tok) {
    return tok->model_name;
}

const char *mc_tokenizer_pre_name(const struct mc_tokenizer *tok) {
    return tok->pre_name;
}

/* ---- Public: encode ------------------------------------------------------------- */

/* A piece of the input during the special-token split: raw text or one token. */
struct frag {
    int32_t id; /* -1 for raw text */
    size_t off;
    size_t len;
    int next; /* index of the next fragment, -1 at the end */
};

struct frags {
    struct frag *v;
    int n;
    int cap;
};

/* Inserts a fragment after index at; returns its index or -1 when out of memory. */
static int frag_insert(struct frags *f, int at, struct frag x) {
    if (f->n == f->cap) {
        int cap = f->cap ? f->cap * 2 : 16;
        struct frag *v = mc_realloc(f->v, (size_t)cap * sizeof(*v));
        if (!v)
            return -1;
        f->v = v;
        f->cap = cap;
    }
    x.next = f->v[at].next;
    f->v[f->n] = x;
    f->v[at].next = f->n;
    return f->n++;
}

/* Splits the raw fragments on every occurrence of special token sid, left to right. */
static int split_on_token(const struct mc_tokenizer *tok, const char *text, struct frags *f,
                          int32_t sid) {
    const char *st = tok->text + tok->tok_off[sid];
    size_t sl = tok->tok_len[sid];
    uint32_t attr = tok->attr[sid];
    for (int i = 0; i != -1; i = f->v[i].next) {
        if (f->v[i].id >= 0 || f->v[i].len < sl)
            continue;
        size_t base = f->v[i].off, blen = f->v[i].len;
        for (;;) {
            const char *m = memmem(text + base, blen, st, sl);
            if (!m)
                break;
            size_t mo = (size_t)(m - text);
            size_t left = mo - base;
            if (attr & TOK_ATTR_LSTRIP) {
                while (left > 0 && isspace((unsigned char)text[base + left - 1]))
                    left--;
            }
            size_t r_off = mo + sl, r_len = base + blen - r_off;
            if (attr & TOK_ATTR_RSTRIP) {
                while (r_len > 0 && isspace((unsigned char)text[r_off])) {
                    r_off++;
                    r_len--;
                }
            }
            struct frag t = {.id = sid};
            int cur;
            if (left > 0) {
                f->v[i].len = left;
                cur = frag_insert(f, i, t);
                if (cur < 0)
                    return MC_ENOMEM;
            } else {
                f->v[i].id = sid;
                f->v[i].off = 0;
                f->v[i].len = 0;
                cur = i;
            }
            if (r_len == 0) {
                i = cur;
                break;
            }
            struct frag r = {.id = -1, .off = r_off, .len = r_len};
            i = frag_insert(f, cur, r);
            if (i < 0)
                return MC_ENOMEM;
            base = r_off;
            blen = r_len;
        }
    }
    return MC_OK;
}

/* Marks which byte pairs occur in text, so most special tokens are skipped at once. */
static void fill_pairs(const char *text, size_t len, uint8_t *seen_byte, uint8_t *seen_pair) {
    for (size_t i = 0; i < len; i++) {
        uint8_t a = (uint8_t)text[i];
        seen_byte[a] = 1;
        if (i + 1 < len) {
            uint32_t p = ((uint32_t)a << 8) | (uint8_t)text[i + 1];
            seen_pair[p >> 3] |= (uint8_t)(1u << (p & 7));
        }
    }
}

static int partition(const struct mc_tokenizer *tok, const char *text, size_t len,
                     bool parse_special, struct frags *f, struct mc_err *err) {
    struct frag first = {.id = -1, .off = 0, .len = len, .next = -1};
    f->v = mc_malloc(16 * sizeof(*f->v));
    if (!f->v)
        return mc_err_set(err, MC_ENOMEM, "out of memory splitting on special tokens");
    f->cap = 16;
    f->n = 1;
    f->v[0] = first;

    uint8_t seen_byte[256] = {0};
    uint8_t *seen_pair = mc_calloc(65536 / 8, 1);
    if (!seen_pair)
        return mc_err_set(err, MC_ENOMEM, "out of memory splitting on special tokens");
    fill_pairs(text, len, seen_byte, seen_pair);

    int rc = MC_OK;
    for (int32_t k = 0; k < tok->n_special && rc == MC_OK; k++) {
        int32_t sid = tok->special[k];
        uint32_t a = tok->attr[sid];
        if (!parse_special && (a & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN)))
            continue;
        const uint8_t *st = (const uint8_t *)tok->text + tok->tok_off[sid];
        uint32_t sl = tok->tok_len[sid];
        if (sl > len)
            continue;
        if (sl == 1 && !seen_byte[st[0]])
            continue;
        if (sl >= 2) {
            uint32_t p = ((uint32_t)st[0] << 8) | st[1];
            if (!(seen_pair[p >> 3] & (1u << (p & 7))))
                continue;
        }
        if (split_on_token(tok, text, f, sid) != MC_OK)
            rc = mc_err_set(err, MC_ENOMEM, "out of memory splitting on special tokens");
    }
    mc_free(seen_pair);
    return rc;
}

/* SentencePiece: a space before the first text and after each special token, spaces
 * written as U+2581. */
static int encode_spm_fragment(const struct mc_tokenizer *tok, const char *s, size_t n, bool prefix,
                               struct tok_ids *ids, struct mc_err *err) {
    char *buf = mc_malloc(3 * n + 4);
    if (!buf)
        return mc_err_set(err, MC_ENOMEM, "out of memory encoding %zu bytes", n);
    size_t o = 0;
    if (prefix) {
        memcpy(buf, "\xE2\x96\x81", 3);
        o = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(buf + o, "\xE2\x96\x81", 3);
            o += 3;
        } else {
            buf[o++] = s[i];
        }
    }
    int rc = tok_spm_encode(tok, buf, o, ids, err);
    mc_free(buf);
    return rc;
}

int mc_tokenize(const struct mc_tokenizer *tok, const char *text, size_t len, bool add_special,
                bool parse_special, int32_t **ids_out, size_t *n_ids, struct mc_err *err) {
    *ids_out = NULL;
    *n_ids = 0;
    if (len > TOK_MAX_INPUT_BYTES)
        return mc_err_set(err, MC_EINVAL, "text of %zu bytes exceeds the %zu-byte limit", len,
                          TOK_MAX_INPUT_BYTES);
    if (!text && len > 0)
        return mc_err_set(err, MC_EINVAL, "text is NULL");

    struct tok_ids ids = {0};
    struct frags f = {0};
    int rc = MC_OK;
    if (len > 0)
        rc = partition(tok, text, len, parse_special, &f, err);

    bool add_bos = add_special && tok->add_bos && tok->bos >= 0;
    if (rc == MC_OK && add_bos)
        rc = tok_ids_push(&ids, tok->bos, err);

    bool prev_special = true; /* SentencePiece prefixes a space to the first text */
    for (int i = len > 0 ? 0 : -1; i != -1 && rc == MC_OK; i = f.v[i].next) {
        const struct frag *x = &f.v[i];
        if (x->id >= 0) {
            rc = tok_ids_push(&ids, x->id, err);
            prev_special = true;
            continue;
        }
        if (tok->kind == TOK_KIND_SPM) {
            bool prefix = tok->add_space_prefix && prev_special;
            rc = encode_spm_fragment(tok, text + x->off, x->len, prefix, &ids, err);
        } else {
            rc = tok_bpe_encode(tok, text + x->off, x->len, &ids, err);
        }
        prev_special = false;
    }

    if (rc == MC_OK && add_special && tok->add_eos && tok->eos >= 0)
        rc = tok_ids_push(&ids, tok->eos, err);
    mc_free(f.v);
    if (rc != MC_OK) {
        mc_free(ids.v);
        return rc;
    }
    if (!ids.v) {
        ids.v = mc_malloc(sizeof(int32_t));
        if (!ids.v)
            return mc_err_set(err, MC_ENOMEM, "out of memory for token ids");
    }
    *ids_out = ids.v;
    *n_ids = ids.n;
    return MC_OK;
}

/* ---- Public: decode ------------------------------------------------------------- */

int mc_token_to_piece(const struct mc_tokenizer *tok, int32_t id, bool special, char *buf,
                      size_t size) {
    if (id < 0 || id >= tok->n_vocab)
        return MC_EINVAL;
    if (!special && (tok->attr[id] & (TOK_ATTR_UNKNOWN | TOK_ATTR_CONTROL)))
        return 0;
    uint32_t n = tok->piece_len[id];
    if (n <= size)
        memcpy(buf, tok->piece + tok->piece_off[id], n);
    return (int)n;
}

/* The reference's clean_up_tokenization_spaces, three passes in place; returns the new
 * length. */
static size_t clean_spaces(char *t, size_t total) {
    /* " ?", " !", " .", " ," lose the space. */
    size_t n1 = total, o = total ? 1 : 0;
    for (size_t i = 1; i < n1; i++) {
        char x = t[i];
        if (t[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ','))
            o--;
        t[o++] = x;
    }
    /* " ' " becomes "'". */
    size_t n2 = o;
    o = n2 ? 1 : 0;
    for (size_t i = 1; i < n2; i++) {
        char x = t[i];
        if (x == '\'' && i + 1 < n2 && t[i - 1] == ' ' && t[i + 1] == ' ') {
            o--;
            t[++i] = '\0';
        }
        t[o++] = x;
    }
    /* " 's", " 'm", " 're", " 've" lose the space. */
    size_t n3 = o;
    o = n3 ? 1 : 0;
    for (size_t i = 1; i < n3; i++) {
        char x = t[i];
        if (t[i - 1] == ' ' && x == '\'' && i + 1 < n3) {
            char x1 = t[i + 1];
            if (x1 == 's' || x1 == 'm')
                o--;
            else if (i + 2 < n3 &&
                     ((x1 == 'r' && t[i + 2] == 'e') || (x1 == 'v' && t[i + 2] == 'e')))
                o--;
        }
        t[o++] = x;
    }
    return o;
}

int mc_detokenize(const struct mc_tokenizer *tok, const int32_t *ids, size_t n_ids, char **out,
                  size_t *out_len, struct mc_err *err) {
    *out = NULL;
    *out_len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= tok->n_vocab)
            return mc_err_set(err, MC_EINVAL, "token id %d at position %zu out of range 0..%d",
                              ids[i], i, tok->n_vocab - 1);
        total += tok->piece_len[ids[i]];
    }
    char *s = mc_malloc(total + 1);
    if (!s)
        return mc_err_set(err, MC_ENOMEM, "out of memory for %zu bytes of text", total);

    /* With a space-prefixing vocabulary the first piece loses one leading space; a
     * leading special token (rendered empty) uses that up, so after BOS it stays. */
    bool strip = tok->add_space_prefix;
    size_t o = 0;
    for (size_t i = 0; i < n_ids; i++) {
        int n = mc_token_to_piece(tok, ids[i], false, s + o, total - o);
        const char *p = s + o;
        if (strip && n > 0 && p[0] == ' ') {
            memmove(s + o, s + o + 1, (size_t)n - 1);
            n--;
        }
        strip = false;
        o += (size_t)n;
    }
    if (tok->clean_spaces)
        o = clean_spaces(s, o);
    s[o] = '\0';
    *out = s;
    *out_len = o;
    return MC_OK;
}
