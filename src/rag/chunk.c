/* chunk.c - token-window chunking with Markdown heading context (see chunk.h).
 *
 * Two passes. The first walks the lines, recognises ATX headings (up to three spaces,
 * one to six '#', then a space, a tab or the end of the line) outside ``` and ~~~ fenced
 * blocks, keeps the heading stack to give each heading its parent, and cuts the text into
 * sections: the body under each heading up to the next one. The second tokenizes each
 * section with the caller's tokenizer and emits windows of size tokens that step by
 * size - overlap. Window edges move outwards to UTF-8 character boundaries (a byte-level
 * tokenizer may split a character) and inwards past white space.
 *
 * Does not read setext headings (underlined with === or ---), nor headings in lists or
 * block quotes. Stateless; thread-safe if the tokenizer is. */
#include "rag/chunk.h"

#include "base/mem.h"

#include <string.h>

#define MAX_LEVEL 6

struct growbuf {
    void *p;
    size_t n, cap, elem;
};

static void *grow_push(struct growbuf *g) {
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 16;
        void *p = mc_realloc(g->p, cap * g->elem);
        if (!p)
            return NULL;
        g->p = p;
        g->cap = cap;
    }
    return (char *)g->p + g->elem * g->n++;
}

static bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static bool is_cont(const char *text, size_t i) {
    return ((unsigned char)text[i] & 0xc0) == 0x80;
}

/* If the line text[a..b) is an ATX heading, sets its level and text span and returns
 * true. */
static bool parse_heading(const char *text, size_t a, size_t b, int *level, size_t *hs,
                          size_t *he) {
    size_t i = a;
    while (i < b && i - a < 3 && text[i] == ' ')
        i++;
    size_t h = i;
    while (i < b && text[i] == '#')
        i++;
    int n = (int)(i - h);
    if (n < 1 || n > MAX_LEVEL || (i < b && text[i] != ' ' && text[i] != '\t'))
        return false;
    while (i < b && is_space(text[i]))
        i++;
    size_t e = b;
    while (e > i && is_space(text[e - 1]))
        e--;
    /* An optional closing run of '#' preceded by a space is not part of the text. */
    size_t c = e;
    while (c > i && text[c - 1] == '#')
        c--;
    if (c < e && (c == i || text[c - 1] == ' ' || text[c - 1] == '\t')) {
        e = c;
        while (e > i && is_space(text[e - 1]))
            e--;
    }
    *level = n;
    *hs = i;
    *he = e;
    return true;
}

static bool is_fence(const char *text, size_t a, size_t b) {
    size_t i = a;
    while (i < b && i - a < 3 && text[i] == ' ')
        i++;
    return b - i >= 3 && (memcmp(text + i, "```", 3) == 0 || memcmp(text + i, "~~~", 3) == 0);
}

/* Calls the tokenizer for one section and checks what it returns. */
static int tokenize_section(const char *s, size_t len, mc_chunk_tokenize_fn tokenize, void *ctx,
                            size_t **starts, size_t *cap, size_t *n, struct mc_err *err) {
    /* A first guess of one token per three bytes avoids a second call most of the time. */
    size_t guess = len / 3 + 16;
    if (*cap < guess) {
        size_t *p = mc_realloc(*starts, guess * sizeof(**starts));
        if (!p)
            return mc_err_set(err, MC_ENOMEM, "chunk: out of memory for %zu tokens", guess);
        *starts = p;
        *cap = guess;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        int rc = tokenize(ctx, s, len, *starts, *cap, n, err);
        if (rc)
            return rc;
        if (*n <= *cap)
            break;
        if (attempt == 1)
            return mc_err_set(err, MC_EINVAL, "chunk: tokenizer count changed between calls");
        size_t *p = mc_realloc(*starts, *n * sizeof(**starts));
        if (!p)
            return mc_err_set(err, MC_ENOMEM, "chunk: out of memory for %zu tokens", *n);
        *starts = p;
        *cap = *n;
    }
    for (size_t i = 0; i < *n; i++)
        if ((*starts)[i] > len || (i > 0 && (*starts)[i] < (*starts)[i - 1]))
            return mc_err_set(err, MC_EINVAL,
                              "chunk: tokenizer offset %zu of token %zu is out "
                              "of order or past the %zu-byte section",
                              (*starts)[i], i, len);
    return MC_OK;
}

/* Emits the windows of section text[a..b) under heading h. */
static int split_section(const char *text, size_t a, size_t b, int32_t h,
                         const struct mc_chunk_opts *o, mc_chunk_tokenize_fn tokenize, void *ctx,
                         struct growbuf *chunks, size_t **starts, size_t *cap, struct mc_err *err) {
    size_t n;
    int rc = tokenize_section(text + a, b - a, tokenize, ctx, starts, cap, &n, err);
    if (rc)
        return rc;
    const size_t *st = *starts;
    for (size_t i = 0; i < n;) {
        size_t j = i + o->size < n ? i + o->size : n;
        size_t s = a + st[i], e = j < n ? a + st[j] : b;
        for (int k = 0; k < 3 && s > a && s < b && is_cont(text, s); k++)
            s--;
        for (int k = 0; k < 3 && e < b && is_cont(text, e); k++)
            e++;
        while (s < e && is_space(text[s]))
            s++;
        while (e > s && is_space(text[e - 1]))
            e--;
        if (e > s) {
            struct mc_chunk *c = grow_push(chunks);
            if (!c)
                return mc_err_set(err, MC_ENOMEM, "chunk: out of memory");
            *c = (struct mc_chunk){s, e, j - i, h};
        }
        if (j == n)
            break;
        i = j - o->overlap; /* > i because overlap < size */
    }
    return MC_OK;
}

int mc_chunk_split(const char *text, size_t len, const struct mc_chunk_opts *opts,
                   mc_chunk_tokenize_fn tokenize, void *ctx, struct mc_chunk_list *out,
                   struct mc_err *err) {
    memset(out, 0, sizeof(*out));
    if (opts->size == 0)
        return mc_err_set(err, MC_EINVAL, "chunk: size must be at least 1 token");
    if (opts->overlap >= opts->size)
        return mc_err_set(err, MC_EINVAL, "chunk: overlap %zu must be below size %zu",
                          opts->overlap, opts->size);
    if (!tokenize)
        return mc_err_set(err, MC_EINVAL, "chunk: no tokenizer given");

    struct growbuf chunks = {NULL, 0, 0, sizeof(struct mc_chunk)};
    struct growbuf heads = {NULL, 0, 0, sizeof(struct mc_chunk_heading)};
    int32_t stack[MAX_LEVEL + 1];
    int depth = 0, rc = MC_OK;
    int32_t cur = -1;
    size_t *starts = NULL, cap = 0, body = 0, line = 0;
    bool fenced = false;

    while (line < len && !rc) {
        const char *nl = memchr(text + line, '\n', len - line);
        size_t eol = nl ? (size_t)(nl - text) : len, next = nl ? eol + 1 : len;
        int level;
        size_t hs, he;
        if (!opts->no_headings && is_fence(text, line, eol))
            fenced = !fenced;
        else if (!opts->no_headings && !fenced &&
                 parse_heading(text, line, eol, &level, &hs, &he)) {
            rc = split_section(text, body, line, cur, opts, tokenize, ctx, &chunks, &starts, &cap,
                               err);
            struct mc_chunk_heading *hd = rc ? NULL : grow_push(&heads);
            if (!rc && !hd)
                rc = mc_err_set(err, MC_ENOMEM, "chunk: out of memory");
            if (rc)
                break;
            while (depth > 0 &&
                   ((struct mc_chunk_heading *)heads.p)[stack[depth - 1]].level >= level)
                depth--;
            *hd = (struct mc_chunk_heading){hs, he, level, depth ? stack[depth - 1] : -1};
            cur = (int32_t)(heads.n - 1);
            stack[depth++] = cur;
            body = next;
        }
        line = next;
    }
    if (!rc)
        rc = split_section(text, body, len, cur, opts, tokenize, ctx, &chunks, &starts, &cap, err);
    mc_free(starts);
    out->chunks = chunks.p;
    out->n_chunks = chunks.n;
    out->headings = heads.p;
    out->n_headings = heads.n;
    return rc;
}

void mc_chunk_list_deinit(struct mc_chunk_list *l) {
    mc_free(l->chunks);
    mc_free(l->headings);
    memset(l, 0, sizeof(*l));
}

int mc_chunk_prefix(const char *text, const struct mc_chunk_list *l, size_t i, char **out,
                    struct mc_err *err) {
    *out = NULL;
    if (i >= l->n_chunks)
        return mc_err_set(err, MC_EINVAL, "chunk: index %zu past the %zu chunks", i, l->n_chunks);
    int32_t path[MAX_LEVEL];
    int n = 0;
    size_t bytes = 1;
    for (int32_t h = l->chunks[i].heading; h >= 0 && n < MAX_LEVEL; h = l->headings[h].parent) {
        path[n++] = h;
        bytes += l->headings[h].end - l->headings[h].start + 3;
    }
    char *p = mc_malloc(bytes);
    if (!p)
        return mc_err_set(err, MC_ENOMEM, "chunk: out of memory for a prefix");
    size_t at = 0;
    for (int k = n - 1; k >= 0; k--) {
        const struct mc_chunk_heading *h = &l->headings[path[k]];
        memcpy(p + at, text + h->start, h->end - h->start);
        at += h->end - h->start;
        if (k > 0) {
            memcpy(p + at, " > ", 3);
            at += 3;
        }
    }
    p[at] = '\0';
    *out = p;
    return MC_OK;
}

int mc_chunk_tokenize_words(void *ctx, const char *text, size_t len, size_t *starts, size_t cap,
                            size_t *n_tokens, struct mc_err *err) {
    (void)ctx;
    (void)err;
    size_t n = 0, i = 0;
    while (i < len) {
        size_t s = i;
        while (i < len && is_space(text[i]))
            i++;
        if (i == len && n > 0)
            break; /* trailing white space belongs to the last token */
        while (i < len && !is_space(text[i]))
            i++;
        if (n < cap)
            starts[n] = s;
        n++;
    }
    *n_tokens = n;
    return MC_OK;
}
