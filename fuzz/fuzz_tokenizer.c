/* fuzz_tokenizer.c - libFuzzer target for encoding and decoding arbitrary bytes.
 *
 * Loads one vocabulary once (path from MCAI_FUZZ_VOCAB, default
 * ../shared/tokenizer-tests/ggml-vocab-gpt-2.gguf, relative to the repository root
 * where `make fuzz` runs). The first input byte picks add_special and parse_special;
 * the rest is the text. Every id must be in range, every piece must render, and
 * detokenize must accept the ids. A SentencePiece vocabulary with <0xXX> tokens must
 * give the bytes back exactly, unless the text holds U+2581 itself (SentencePiece's
 * space marker, which decodes to a space). Not a test of loading malformed vocabularies (the GGUF
 * fuzzer covers the file parser). */
#include "base/mem.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct mc_gguf *g;
static struct mc_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *path = getenv("MCAI_FUZZ_VOCAB");
    if (!path || !*path)
        path = "../shared/tokenizer-tests/ggml-vocab-gpt-2.gguf";
    struct mc_err err = {0};
    if (mc_gguf_open(path, &g, &err) != 0 || mc_tokenizer_load(g, &tok, &err) != 0) {
        fprintf(stderr, "fuzz_tokenizer: %s (set MCAI_FUZZ_VOCAB)\n", err.msg);
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    bool add_special = data[0] & 1, parse_special = data[0] & 2;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    int32_t *ids = NULL;
    size_t n = 0;
    struct mc_err err = {0};
    if (mc_tokenize(tok, text, len, add_special, parse_special, &ids, &n, &err) != 0)
        __builtin_trap();
    int32_t n_vocab = mc_tokenizer_n_vocab(tok);
    char piece[512];
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= n_vocab)
            __builtin_trap();
        if (mc_token_to_piece(tok, ids[i], true, piece, sizeof(piece)) < 0)
            __builtin_trap();
    }
    char *out = NULL;
    size_t out_len = 0;
    if (mc_detokenize(tok, ids, n, &out, &out_len, &err) != 0 || strlen(out) > out_len)
        __builtin_trap();

    /* SentencePiece with byte tokens loses nothing when no special token was parsed. */
    bool spm = strcmp(mc_tokenizer_model_name(tok), "llama") == 0;
    bool has_bytes = mc_tokenizer_find(tok, "<0x00>", 6) >= 0;
    bool has_marker = memmem(text, len, "\xE2\x96\x81", 3) != NULL;
    if (spm && has_bytes && !has_marker && !parse_special && !add_special &&
        (out_len != len || memcmp(out, text, len) != 0))
        __builtin_trap();
    mc_free(out);
    mc_free(ids);
    return 0;
}
