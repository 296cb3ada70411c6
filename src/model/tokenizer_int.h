/* tokenizer_int.h - internals shared by tokenizer.c, tokenizer_bpe.c and tokenizer_pre.c.
 *
 * Other modules use tokenizer.h only. The struct below is immutable once
 * mc_tokenizer_load returns; every encode call works on its own scratch memory. */
#ifndef MC_TOKENIZER_INT_H
#define MC_TOKENIZER_INT_H

#include "base/err.h"
#include "model/tokenizer.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Token attributes, numbered as the reference's llama_token_attr bits. */
enum tok_attr {
    TOK_ATTR_UNKNOWN = 1 << 0,
    TOK_ATTR_UNUSED = 1 << 1,
    TOK_ATTR_NORMAL = 1 << 2,
    TOK_ATTR_CONTROL = 1 << 3,
    TOK_ATTR_USER_DEFINED = 1 << 4,
    TOK_ATTR_BYTE = 1 << 5,
    TOK_ATTR_LSTRIP = 1 << 7,
    TOK_ATTR_RSTRIP = 1 << 8,
};

enum tok_kind { TOK_KIND_SPM, TOK_KIND_BPE };

/* Open-addressing hash set over byte strings that live elsewhere: slot values are
 * index + 1 into the (off, len) arrays of the owner, 0 marks an empty slot. */
struct tok_strmap {
    uint32_t *slots;
    uint32_t mask;    /* capacity - 1; capacity is a power of two >= 2 * n */
    const char *base; /* key bytes of index i: base + off[i], len[i] bytes */
    const uint32_t *off;
    const uint32_t *len;
};

/* Sizes an empty map for n_keys keys stored at base/off/len (borrowed; they must
 * outlive the map). MC_OK or MC_ENOMEM. */
int tok_strmap_init(struct tok_strmap *m, uint32_t n_keys, const char *base, const uint32_t *off,
                    const uint32_t *len);
/* Frees the slots; the map may be zeroed or already deinitialised. */
void tok_strmap_deinit(struct tok_strmap *m);
/* Inserts index i unless an equal key is present; returns the index already stored for
 * that key, or -1 when i was inserted. */
int32_t tok_strmap_insert(struct tok_strmap *m, uint32_t i);
/* The index whose key equals s[0..len), or -1. */
int32_t tok_strmap_find(const struct tok_strmap *m, const char *s, size_t len);

/* The pre-tokenizer of a byte-level BPE vocabulary: a list of compiled split regexes. */
struct tok_pre;

/* What a tokenizer.ggml.pre value selects. */
struct tok_pre_def {
    int regex_set;      /* index into the pattern table of tokenizer_pre.c */
    bool ignore_merges; /* a word found whole in the vocabulary is one token */
    bool add_bos;       /* default of add_bos before the metadata key is read */
    bool clean_spaces;  /* detokenize removes spaces before punctuation */
};

/* Looks up a tokenizer.ggml.pre name; false if unknown. */
bool tok_pre_lookup(const char *name, size_t len, struct tok_pre_def *out);
/* Compiles the regexes of a set from tok_pre_lookup. MC_ENOMEM, or MC_EINTERNAL naming
 * the pattern if one does not compile (a bug in the table). */
int tok_pre_create(int regex_set, struct tok_pre **out, struct mc_err *err);
/* Accepts NULL. */
void tok_pre_free(struct tok_pre *p);

/* A piece of text produced by the pre-tokenizer: byte offset and length in the input. */
struct tok_span {
    size_t off;
    size_t len;
};

/* Splits text[0..len) into pieces (spans in order, covering the text). Invalid UTF-8
 * bytes become pieces of one byte each. *spans is mc_malloc'd. */
int tok_pre_split(const struct tok_pre *p, const char *text, size_t len, struct tok_span **spans,
                  size_t *n_spans, struct mc_err *err);

/* Length of the UTF-8 sequence a lead byte announces (1 for continuation bytes), as
 * the reference computes it: by the high four bits only. */
size_t tok_utf8_len(uint8_t lead);
/* Length of the character at s[0..n): the valid UTF-8 sequence there, else 1 (one
 * invalid byte). Equal to tok_utf8_len for valid UTF-8. */
size_t tok_utf8_char_len(const char *s, size_t n);
/* GPT-2's printable stand-in for byte b, as UTF-8 in out (1 or 2 bytes); returns its
 * length. */
size_t tok_byte_encode(uint8_t b, char out[2]);
/* The byte whose stand-in is codepoint cp, or -1. */
int tok_byte_decode(uint32_t cp);

/* A growable id list (the caller frees v with mc_free). */
struct tok_ids {
    int32_t *v;
    size_t n;
    size_t cap;
};

/* Appends id, growing v (mc_realloc) as needed. MC_OK or MC_ENOMEM; on failure the list
 * is unchanged and still owned by the caller. */
int tok_ids_push(struct tok_ids *ids, int32_t id, struct mc_err *err);

struct mc_tokenizer {
    enum tok_kind kind;
    int32_t n_vocab;

    /* Token texts, one arena: token i is text + tok_off[i], tok_len[i] bytes. */
    char *text;
    uint32_t *tok_off; /* (n_vocab) */
    uint32_t *tok_len; /* (n_vocab) */
    float *score;      /* (n_vocab) */
    uint32_t *attr;    /* (n_vocab) TOK_ATTR_* bits */
    struct tok_strmap vocab_map;

    /* Decoded pieces as token_to_piece(special = true) renders them. */
    char *piece;
    uint32_t *piece_off; /* (n_vocab) */
    uint32_t *piece_len; /* (n_vocab) */

    /* BPE merges "left right", rank = index. */
    char *merge_text;
    uint32_t *merge_off; /* (n_merges) */
    uint32_t *merge_len; /* (n_merges) */
    uint32_t n_merges;
    struct tok_strmap merge_map;
    uint32_t max_merge_len;

    /* Control, user-defined and unknown tokens, longest text first. */
    int32_t *special;
    int32_t n_special;

    uint8_t *is_eog; /* (n_vocab) */
    /* BPE: byte b's stand-in is a normal token that decodes back to b. */
    uint8_t byte_ok[256];

    int32_t bos, eos, eot, eom, unk, sep, pad, mask;
    int32_t fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep;

    bool add_bos;
    bool add_eos;
    bool add_space_prefix;
    bool ignore_merges;
    bool clean_spaces;

    struct tok_pre *pre; /* BPE only */
    char model_name[32];
    char pre_name[48];
};

/* SentencePiece-style encoding of one raw-text fragment (spaces already escaped to
 * U+2581 and the prefix space added by the caller). Appends to ids. */
int tok_spm_encode(const struct mc_tokenizer *tok, const char *text, size_t len,
                   struct tok_ids *ids, struct mc_err *err);
/* Byte-level BPE encoding of one raw-text fragment: pre-tokenizer split, byte mapping,
 * merges by rank. Appends to ids. */
int tok_bpe_encode(const struct mc_tokenizer *tok, const char *text, size_t len,
                   struct tok_ids *ids, struct mc_err *err);

#endif
