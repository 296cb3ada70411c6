/* fuzz_chunk.c - libFuzzer target for mc_chunk_split on arbitrary tenant text.
 *
 * The first two bytes pick the window size and overlap; the rest is the document, split
 * with both a word tokenizer and a byte tokenizer. Every call must terminate and return
 * MC_OK or MC_EINVAL (overlap >= size); every chunk must be a non-empty span inside the
 * text with a valid heading index; for valid UTF-8 input no chunk may cut a character. */
#include "base/mem.h"
#include "rag/chunk.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

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

static bool is_cont(const uint8_t *s, size_t i) {
    return (s[i] & 0xc0) == 0x80;
}

static bool valid_utf8(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t len = s[i] < 0x80         ? 1
                     : (s[i] >> 5) == 6  ? 2
                     : (s[i] >> 4) == 14 ? 3
                     : (s[i] >> 3) == 30 ? 4
                                         : 0;
        if (!len || i + len > n)
            return false;
        for (size_t k = 1; k < len; k++)
            if (!is_cont(s, i + k))
                return false;
        i += len;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    struct mc_chunk_opts o = {data[0] % 16, data[1] % 16, false};
    const uint8_t *t = data + 2;
    size_t len = size - 2;
    bool utf8 = valid_utf8(t, len);
    mc_chunk_tokenize_fn fns[2] = {mc_chunk_tokenize_words, tok_bytes};
    for (int f = 0; f < 2; f++) {
        struct mc_chunk_list l;
        int rc = mc_chunk_split((const char *)t, len, &o, fns[f], NULL, &l, NULL);
        if (rc != MC_OK && !(rc == MC_EINVAL && (o.size == 0 || o.overlap >= o.size)))
            abort();
        for (size_t i = 0; i < l.n_chunks; i++) {
            const struct mc_chunk *c = &l.chunks[i];
            if (c->start >= c->end || c->end > len || c->heading >= (int32_t)l.n_headings)
                abort();
            if (utf8 && (is_cont(t, c->start) || (c->end < len && is_cont(t, c->end))))
                abort();
            char *p;
            if (mc_chunk_prefix((const char *)t, &l, i, &p, NULL) != MC_OK)
                abort();
            mc_free(p);
        }
        mc_chunk_list_deinit(&l);
    }
    return 0;
}
