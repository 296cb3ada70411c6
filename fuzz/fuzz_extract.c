/* fuzz_extract.c - libFuzzer target for document text extraction.
 *
 * Documents are uploaded by tenants, so plain text, Markdown (with front matter) and HTML
 * all go through mc_extract here. The first input byte picks the type, the rest is the
 * document. Every outcome must be MC_OK with valid, NUL-terminated UTF-8 text of the
 * stated length, or MC_EFORMAT; the result is released on both paths. Seeds are in
 * fuzz/corpus/fuzz_extract/. */
#include "base/err.h"
#include "rag/extract.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* A strict UTF-8 check (no overlongs, no surrogates, nothing above U+10FFFF). */
static bool is_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : 9;
        if (k == 9 || i + k >= n + (k == 0))
            return false;
        if (k == 0) {
            i++;
            continue;
        }
        unsigned cp = c & (0x3f >> k);
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    static const int types[] = {MC_EXTRACT_TEXT, MC_EXTRACT_MARKDOWN, MC_EXTRACT_HTML};
    struct mc_extract_doc d;
    struct mc_err err;
    int rc = mc_extract(types[data[0] % 3], (const char *)data + 1, size - 1, &d, &err);
    if (rc != MC_OK && rc != MC_EFORMAT)
        __builtin_trap();
    if (rc == MC_OK) {
        if (!d.text || d.text[d.len] != '\0' || !is_utf8((const unsigned char *)d.text, d.len))
            __builtin_trap();
        if (!d.meta)
            __builtin_trap();
    }
    mc_extract_doc_deinit(&d);
    return 0;
}
