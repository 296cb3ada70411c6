/* sse.c - byte buffers, UTF-8 checks and Server-Sent Events framing for the server.
 *
 * A struct mc_buf grows up to a limit set by its owner (64 MiB when unset), so data that
 * came from the network can never make it grow without bound. SSE events are written as
 * the OpenAI API writes them: "data: <one line of compact JSON>\n\n", ended by
 * "data: [DONE]\n\n". Compact JSON never contains a raw newline, so one event is always
 * one data line. */
#include "serve/serve_int.h"

#include "base/mem.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { BUF_DEFAULT_LIMIT = 64 << 20 };

/* ---- Buffers ---------------------------------------------------------------------- */

int mc_buf_append(struct mc_buf *b, const void *p, size_t n) {
    size_t limit = b->limit ? b->limit : BUF_DEFAULT_LIMIT;
    if (n > limit || b->len > limit - n)
        return MC_ENOMEM;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = mc_realloc(b->data, cap);
        if (!d)
            return MC_ENOMEM;
        b->data = d;
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return MC_OK;
}

int mc_buf_printf(struct mc_buf *b, const char *fmt, ...) {
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return MC_EINVAL;
    if ((size_t)n < sizeof(small))
        return mc_buf_append(b, small, (size_t)n);

    char *big = mc_malloc((size_t)n + 1);
    if (!big)
        return MC_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = mc_buf_append(b, big, (size_t)n);
    mc_free(big);
    return rc;
}

void mc_buf_consume(struct mc_buf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

void mc_buf_free(struct mc_buf *b) {
    mc_free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- UTF-8 ------------------------------------------------------------------------ */

/* Length of the valid sequence starting at s (at most n bytes), or 0 when it is invalid
 * or cut short by the end of the buffer. Overlong forms, surrogates and code points above
 * U+10FFFF are invalid, as RFC 3629 says. */
static int utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    int len;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    unsigned cp = c & (0x3f >> (len - 1));
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n)
            return 0;
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

ptrdiff_t mc_utf8_invalid_at(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        int l = utf8_seq(u + i, n - i);
        if (l == 0)
            return (ptrdiff_t)i;
        i += (size_t)l;
    }
    return -1;
}

/* ---- SSE -------------------------------------------------------------------------- */

int mc_sse_json(struct mc_buf *b, const json_t *obj) {
    char *s = json_dumps(obj, JSON_COMPACT);
    if (!s)
        return MC_ENOMEM;
    int rc = mc_buf_append(b, "data: ", 6);
    if (rc == MC_OK)
        rc = mc_buf_append(b, s, strlen(s));
    if (rc == MC_OK)
        rc = mc_buf_append(b, "\n\n", 2);
    free(s);
    return rc;
}

int mc_sse_done(struct mc_buf *b) {
    return mc_buf_append(b, "data: [DONE]\n\n", 14);
}
