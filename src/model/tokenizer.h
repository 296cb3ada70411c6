/* tokenizer.h - text <-> token ids, from the tokenizer.ggml.* metadata of a GGUF file.
 *
 * Two models: SentencePiece-style score-based BPE (tokenizer.ggml.model = "llama") and
 * byte-level BPE with merges ("gpt2"), the latter with the pre-tokenizer split patterns
 * named by tokenizer.ggml.pre. Special/control tokens, added tokens, byte fallback and
 * add_bos/add_eos follow the reference implementation. A tokenizer is immutable after
 * load and may be shared by any number of threads. */
#ifndef MC_TOKENIZER_H
#define MC_TOKENIZER_H

#include "base/err.h"
#include "model/gguf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mc_tokenizer; /* opaque; see tokenizer.c */

/* Builds a tokenizer from g's metadata. It copies what it needs, so g may be closed
 * afterwards. MC_EFORMAT naming the key on missing or inconsistent metadata; MC_ENOTSUP
 * naming the value for an unknown tokenizer model or pre-tokenizer. */
int mc_tokenizer_load(const struct mc_gguf *g, struct mc_tokenizer **out, struct mc_err *err);
void mc_tokenizer_free(struct mc_tokenizer *tok);

int32_t mc_tokenizer_n_vocab(const struct mc_tokenizer *tok);
int32_t mc_tokenizer_bos(const struct mc_tokenizer *tok); /* -1 if none */
int32_t mc_tokenizer_eos(const struct mc_tokenizer *tok); /* -1 if none */
bool mc_tokenizer_add_bos(const struct mc_tokenizer *tok);
bool mc_tokenizer_add_eos(const struct mc_tokenizer *tok);
int32_t mc_tokenizer_eot(const struct mc_tokenizer *tok); /* end of turn, -1 if none */
int32_t mc_tokenizer_unk(const struct mc_tokenizer *tok); /* -1 if none */
int32_t mc_tokenizer_pad(const struct mc_tokenizer *tok); /* -1 if none */
/* True for tokens that end generation (EOS, EOT, <|im_end|>, <|eot_id|> ...). */
bool mc_tokenizer_is_eog(const struct mc_tokenizer *tok, int32_t id);
/* True for control/special tokens (rendered as nothing unless asked for). */
bool mc_tokenizer_is_special(const struct mc_tokenizer *tok, int32_t id);
/* The id of a token whose text is exactly s, or -1. */
int32_t mc_tokenizer_find(const struct mc_tokenizer *tok, const char *s, size_t len);

/* The raw vocabulary text of token id (not NUL-terminated, *len bytes; valid until
 * mc_tokenizer_free), or NULL with *len = 0 for an id out of range. */
const char *mc_tokenizer_text(const struct mc_tokenizer *tok, int32_t id, size_t *len);
/* tokenizer.ggml.model ("llama" or "gpt2") and tokenizer.ggml.pre ("" for llama). */
const char *mc_tokenizer_model_name(const struct mc_tokenizer *tok);
const char *mc_tokenizer_pre_name(const struct mc_tokenizer *tok);

/* Encodes len bytes of text (any bytes: invalid UTF-8 never crashes). add_special adds
 * BOS/EOS as the vocabulary asks; parse_special turns special-token text such as
 * "<|im_end|>" into that token. *ids is allocated with mc_malloc and freed by the caller
 * with mc_free; *n_ids is its length. */
int mc_tokenize(const struct mc_tokenizer *tok, const char *text, size_t len, bool add_special,
                bool parse_special, int32_t **ids, size_t *n_ids, struct mc_err *err);

/* Writes the bytes of one token's piece into buf (at most size bytes, not NUL-terminated)
 * and returns the piece length, which may exceed size (then nothing useful was written;
 * call again with a larger buffer). Byte tokens <0xXX> give that byte; SentencePiece
 * U+2581 gives a space; special tokens give "" unless special is true. Returns a negative
 * MC_E* code for an id out of range. */
int mc_token_to_piece(const struct mc_tokenizer *tok, int32_t id, bool special, char *buf,
                      size_t size);

/* Decodes ids into text (mc_malloc'd, NUL-terminated, freed by the caller). Like the
 * reference's detokenize with remove_special=false, unparse_special=false: special
 * tokens render as nothing; with a space-prefixing (SentencePiece) vocabulary one
 * leading space is dropped from the first token's piece, so [BOS, "\u2581Hi"] gives
 * " Hi" and ["\u2581Hi"] gives "Hi"; byte-level vocabularies that ask for it get the
 * reference's clean-up of spaces before punctuation. MC_EINVAL for an id out of range. */
int mc_detokenize(const struct mc_tokenizer *tok, const int32_t *ids, size_t n_ids, char **out,
                  size_t *out_len, struct mc_err *err);

#endif
