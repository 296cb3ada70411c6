/* extract.c - text extraction for knowledge-base ingestion (see extract.h).
 *
 * Plain text and Markdown are checked for UTF-8 and copied; Markdown loses its YAML front
 * matter, whose top-level "key: value" lines (and "key:" followed by "- item" lines) are
 * turned into a JSON object of strings and string arrays. That is a small subset of YAML:
 * nested maps, multi-line scalars and anchors are kept as raw strings or skipped, never
 * rejected, because metadata is a convenience and the body is what matters.
 *
 * HTML goes through libxml2's HTML parser with recovery on, network off and error output
 * off, then a depth-limited walk of the tree writes text: runs of white space collapse to
 * one space (except inside pre), block elements end lines, h1..h6 become "# " lines so the
 * chunker sees sections. The input is declared UTF-8; a document in another encoding
 * without a meta charset comes out with U+FFFD in place of each byte that is not UTF-8.
 *
 * Does not read PDF, Office formats or images: those are MC_ENOTSUP. */
#include "rag/extract.h"

#include "base/mem.h"

#include <jansson.h>
#include <libxml/HTMLparser.h>
#include <libxml/tree.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

/* Elements nested deeper than this make the document an error (MC_EFORMAT) rather than
 * lose their text. libxml2 stops at 256 levels unless told XML_PARSE_HUGE (passed
 * below), and then has no limit of its own; this bound keeps our recursive walk's stack
 * small. */
#define HTML_MAX_DEPTH   1024
#define FRONT_MATTER_MAX (64 << 10) /* bytes of front matter read as metadata */
#define HTML_MAX_BYTES   ((size_t)INT32_MAX)

/* ---------------------------------------------------------------------------------------
 * A growable text buffer */

struct tbuf {
    char *p;
    size_t n, cap;
    bool oom;
    bool deep; /* text nested deeper than HTML_MAX_DEPTH was met (and not taken) */
};

static void tb_put(struct tbuf *b, const char *s, size_t n) {
    if (b->oom || n == 0)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = mc_realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void tb_puts(struct tbuf *b, const char *s) {
    tb_put(b, s, strlen(s));
}

static size_t tb_trailing_newlines(const struct tbuf *b) {
    size_t k = 0;
    while (k < b->n && b->p[b->n - 1 - k] == '\n')
        k++;
    return k;
}

/* Ends the current line; with blank, leaves one empty line. Never at the start. */
static void tb_break(struct tbuf *b, bool blank) {
    while (b->n > 0 && b->p[b->n - 1] == ' ')
        b->p[--b->n] = 0;
    if (b->n == 0)
        return;
    size_t want = blank ? 2 : 1;
    for (size_t k = tb_trailing_newlines(b); k < want; k++)
        tb_put(b, "\n", 1);
}

/* ---------------------------------------------------------------------------------------
 * Types */

int mc_extract_type_from_media(const char *media_type) {
    static const struct {
        const char *name;
        int type;
    } map[] = {
        {"text/plain", MC_EXTRACT_TEXT},
        {"text/markdown", MC_EXTRACT_MARKDOWN},
        {"text/x-markdown", MC_EXTRACT_MARKDOWN},
        {"text/html", MC_EXTRACT_HTML},
        {"application/xhtml+xml", MC_EXTRACT_HTML},
    };
    if (!media_type)
        return MC_EXTRACT_UNKNOWN;
    while (*media_type == ' ' || *media_type == '\t')
        media_type++;
    size_t n = strcspn(media_type, "; \t");
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strlen(map[i].name) == n && strncasecmp(map[i].name, media_type, n) == 0)
            return map[i].type;
    return MC_EXTRACT_UNKNOWN;
}

int mc_extract_type_from_path(const char *path) {
    static const struct {
        const char *ext;
        int type;
    } map[] = {
        {"txt", MC_EXTRACT_TEXT},          {"text", MC_EXTRACT_TEXT}, {"md", MC_EXTRACT_MARKDOWN},
        {"markdown", MC_EXTRACT_MARKDOWN}, {"html", MC_EXTRACT_HTML}, {"htm", MC_EXTRACT_HTML},
        {"xhtml", MC_EXTRACT_HTML},
    };
    const char *slash = strrchr(path, '/');
    const char *dot = strrchr(slash ? slash + 1 : path, '.');
    if (!dot)
        return MC_EXTRACT_UNKNOWN;
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcasecmp(map[i].ext, dot + 1) == 0)
            return map[i].type;
    return MC_EXTRACT_UNKNOWN;
}

/* ---------------------------------------------------------------------------------------
 * UTF-8 */

/* Byte offset of the first invalid UTF-8 sequence (overlongs, surrogates and values past
 * U+10FFFF included), or -1. */
static long utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, min = 0x80, c &= 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, min = 0x800, c &= 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, min = 0x10000, c &= 0x07;
        } else {
            return (long)i;
        }
        if (n - i <= k)
            return (long)i;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return (long)i;
            c = (c << 6) | (s[i + j] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return (long)i;
        i += k + 1;
    }
    return -1;
}

/* Returns s[0..*n) with every invalid byte replaced by U+FFFD, and updates *n; frees s.
 * libxml2 can pass bytes through that are not UTF-8 when a document's declared or guessed
 * encoding is wrong, and everything downstream (JSON, tokenizer, chunker) needs valid
 * UTF-8. NULL when out of memory (s is freed then too). */
static char *repair_utf8(char *s, size_t *n) {
    long bad = utf8_invalid_at((const unsigned char *)s, *n);
    if (bad < 0)
        return s;

    /* Each bad byte grows by two at most (one byte becomes three). */
    char *r = mc_malloc(*n * 3 + 1);
    size_t i = 0, o = 0;
    while (r && i < *n) {
        long b = utf8_invalid_at((const unsigned char *)s + i, *n - i);
        size_t good = b < 0 ? *n - i : (size_t)b;
        memcpy(r + o, s + i, good);
        o += good;
        i += good;
        if (b >= 0) {
            memcpy(r + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    mc_free(s);
    if (r) {
        r[o] = '\0';
        *n = o;
    }
    return r;
}

static int copy_utf8(const char *data, size_t len, const char *what, struct mc_extract_doc *out,
                     struct mc_err *err) {
    long bad = utf8_invalid_at((const unsigned char *)data, len);
    if (bad >= 0)
        return mc_err_set(err, MC_EFORMAT, "%s is not UTF-8 at byte %ld", what, bad);
    out->text = mc_strndup(data, len);
    if (!out->text)
        return mc_err_set(err, MC_ENOMEM, "out of memory copying %zu bytes of text", len);
    out->len = len;
    return MC_OK;
}

/* ---------------------------------------------------------------------------------------
 * Markdown front matter */

/* The end of the line starting at p (the '\n' or end), within [p, end). */
static const char *line_end(const char *p, const char *end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    return nl ? nl : end;
}

static bool is_fence(const char *p, const char *e, const char *mark) {
    size_t n = (size_t)(e - p);
    while (n > 0 && (p[n - 1] == '\r' || p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    return n == 3 && memcmp(p, mark, 3) == 0;
}

/* A YAML scalar as a string: trimmed, surrounding quotes removed. */
static json_t *yaml_scalar(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t'))
        p++;
    while (e > p && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
        e--;
    if (e - p >= 2 && ((*p == '"' && e[-1] == '"') || (*p == '\'' && e[-1] == '\''))) {
        p++;
        e--;
    }
    return json_stringn_nocheck(p, (size_t)(e - p));
}

/* Parses the front matter lines [p, end) into meta. Returns false on allocation failure. */
static bool parse_front_matter(const char *p, const char *end, json_t *meta) {
    json_t *list = NULL; /* the array of the last "key:" line with no value */
    while (p < end) {
        const char *e = line_end(p, end);
        const char *q = p;
        while (q < e && (*q == ' ' || *q == '\t'))
            q++;
        if (q < e && *q == '-' && list && (q + 1 == e || q[1] == ' ')) {
            json_t *v = yaml_scalar(q + 1, e);
            if (!v || json_array_append_new(list, v) != 0)
                return false;
        } else if (q == p && q < e && *q != '#') {
            const char *colon = memchr(p, ':', (size_t)(e - p));
            list = NULL;
            if (colon && colon > p) {
                char key[128];
                size_t kn = (size_t)(colon - p);
                if (kn < sizeof(key)) {
                    memcpy(key, p, kn);
                    key[kn] = 0;
                    json_t *v = yaml_scalar(colon + 1, e);
                    if (!v)
                        return false;
                    if (json_string_length(v) == 0) {
                        json_decref(v);
                        v = list = json_array();
                        if (!v)
                            return false;
                    }
                    if (json_object_set_new_nocheck(meta, key, v) != 0)
                        return false;
                }
            }
        }
        p = e < end ? e + 1 : end;
    }
    return true;
}

static int extract_markdown(const char *data, size_t len, struct mc_extract_doc *out,
                            struct mc_err *err) {
    int rc = copy_utf8(data, len, "markdown", out, err);
    if (rc != MC_OK)
        return rc;

    /* Front matter: "---" on the first line, closed by "---" or "..." on a later one. */
    const char *text = out->text, *end = text + len;
    if (len >= 3 && is_fence(text, line_end(text, end), "---")) {
        const char *body = line_end(text, end);
        const char *p = body < end ? body + 1 : end;
        const char *close = NULL;
        while (p < end && !close) {
            const char *e = line_end(p, end);
            if (is_fence(p, e, "---") || is_fence(p, e, "..."))
                close = p;
            else
                p = e < end ? e + 1 : end;
        }
        if (close && (size_t)(close - text) <= FRONT_MATTER_MAX) {
            json_t *meta = json_object();
            if (!meta || !parse_front_matter(body + 1, close, meta)) {
                json_decref(meta);
                return mc_err_set(err, MC_ENOMEM, "out of memory reading front matter");
            }
            json_t *title = json_object_get(meta, "title");
            if (json_is_string(title) && !(out->title = mc_strdup(json_string_value(title)))) {
                json_decref(meta);
                return mc_err_set(err, MC_ENOMEM, "out of memory reading front matter");
            }
            char *js = json_dumps(meta, JSON_COMPACT | JSON_SORT_KEYS);
            json_decref(meta);
            if (!js)
                return mc_err_set(err, MC_ENOMEM, "out of memory reading front matter");
            mc_free(out->meta);
            out->meta = mc_strdup(js);
            free(js);
            if (!out->meta)
                return mc_err_set(err, MC_ENOMEM, "out of memory reading front matter");

            /* Cut the block out of the text, keeping everything after its closing line. */
            const char *rest = line_end(close, end);
            rest = rest < end ? rest + 1 : end;
            size_t n = (size_t)(end - rest);
            memmove(out->text, rest, n);
            out->text[n] = 0;
            out->len = n;
        }
    }
    return MC_OK;
}

/* ---------------------------------------------------------------------------------------
 * HTML */

struct html_walk {
    struct tbuf out;
    struct tbuf title;
    int pre; /* depth of enclosing pre elements */
};

static bool name_in(const xmlChar *name, const char *const *set) {
    for (; *set; set++)
        if (strcasecmp((const char *)name, *set) == 0)
            return true;
    return false;
}

static const char *const DROPPED[] = {"script", "style",  "noscript", "template", "head",
                                      "svg",    "iframe", "object",   NULL};
static const char *const BLOCKS[] = {
    "address", "article", "aside",  "blockquote", "body",    "br",      "dd",      "div",
    "dl",      "dt",      "figure", "figcaption", "footer",  "form",    "header",  "hr",
    "li",      "main",    "nav",    "ol",         "p",       "pre",     "section", "table",
    "tr",      "ul",      "td",     "th",         "caption", "details", "summary", NULL};

/* Appends text, collapsing white space runs to one space outside pre. */
static void put_text(struct tbuf *b, const char *s, bool pre) {
    if (pre) {
        tb_puts(b, s);
        return;
    }
    for (const char *p = s; *p;) {
        size_t n = strcspn(p, " \t\r\n\f");
        tb_put(b, p, n);
        p += n;
        if (*p) {
            p += strspn(p, " \t\r\n\f");
            if (b->n > 0 && b->p[b->n - 1] != ' ' && b->p[b->n - 1] != '\n')
                tb_put(b, " ", 1);
        }
    }
}

static void collect_text(xmlNode *n, struct tbuf *b, int depth) {
    if (n && depth >= HTML_MAX_DEPTH)
        b->deep = true;
    for (; n && depth < HTML_MAX_DEPTH; n = n->next) {
        if ((n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE) && n->content)
            put_text(b, (const char *)n->content, false);
        else if (n->type == XML_ELEMENT_NODE)
            collect_text(n->children, b, depth + 1);
    }
}

/* Takes the text of the first title element under n (inside head, which is dropped). */
static void find_title(xmlNode *n, struct tbuf *title, int depth) {
    if (n && depth >= HTML_MAX_DEPTH)
        title->deep = true;
    for (; n && depth < HTML_MAX_DEPTH && title->n == 0; n = n->next) {
        if (n->type != XML_ELEMENT_NODE || !n->name)
            continue;
        if (strcasecmp((const char *)n->name, "title") == 0)
            collect_text(n->children, title, depth + 1);
        else
            find_title(n->children, title, depth + 1);
    }
}

static void walk(xmlNode *n, struct html_walk *w, int depth) {
    for (; n; n = n->next) {
        if (depth >= HTML_MAX_DEPTH) {
            w->out.deep = true;
            return;
        }
        if (n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE) {
            if (n->content)
                put_text(&w->out, (const char *)n->content, w->pre > 0);
            continue;
        }
        if (n->type != XML_ELEMENT_NODE || !n->name)
            continue;
        const char *name = (const char *)n->name;
        if (strcasecmp(name, "title") == 0 && w->title.n == 0) {
            collect_text(n->children, &w->title, depth + 1);
            continue;
        }
        if (strcasecmp(name, "head") == 0) {
            find_title(n->children, &w->title, depth + 1);
            continue;
        }
        if (name_in(n->name, DROPPED))
            continue;

        /* h1..h6 become Markdown headings on a line of their own. */
        if ((name[0] == 'h' || name[0] == 'H') && name[1] >= '1' && name[1] <= '6' && !name[2]) {
            struct tbuf h = {0};
            collect_text(n->children, &h, depth + 1);
            if (h.oom)
                w->out.oom = true;
            if (h.deep)
                w->out.deep = true;
            size_t s = 0, e = h.n;
            while (s < e && h.p[s] == ' ')
                s++;
            while (e > s && h.p[e - 1] == ' ')
                e--;
            if (e > s) {
                tb_break(&w->out, true);
                tb_put(&w->out, "######", (size_t)(name[1] - '0'));
                tb_put(&w->out, " ", 1);
                tb_put(&w->out, h.p + s, e - s);
                tb_break(&w->out, true);
            }
            mc_free(h.p);
            continue;
        }

        bool block = name_in(n->name, BLOCKS);
        bool para =
            block && (strcasecmp(name, "p") == 0 || strcasecmp(name, "pre") == 0 ||
                      strcasecmp(name, "table") == 0 || strcasecmp(name, "blockquote") == 0);
        bool pre = strcasecmp(name, "pre") == 0;
        if (block)
            tb_break(&w->out, para);
        else if (strcasecmp(name, "td") == 0 || strcasecmp(name, "th") == 0)
            tb_put(&w->out, " ", 1);
        w->pre += pre;
        walk(n->children, w, depth + 1);
        w->pre -= pre;
        if (block)
            tb_break(&w->out, para);
    }
}

/* The title with white space trimmed, or NULL when empty. */
static char *trimmed_title(struct tbuf *t) {
    size_t s = 0, e = t->n;
    while (s < e && t->p[s] == ' ')
        s++;
    while (e > s && t->p[e - 1] == ' ')
        e--;
    return e > s ? mc_strndup(t->p + s, e - s) : NULL;
}

static int extract_html(const char *data, size_t len, struct mc_extract_doc *out,
                        struct mc_err *err) {
    if (len > HTML_MAX_BYTES)
        return mc_err_set(err, MC_EINVAL, "html document of %zu bytes exceeds the limit %zu", len,
                          HTML_MAX_BYTES);
    xmlInitParser();
    /* XML_PARSE_HUGE lifts libxml2's nesting limit of 256, past which it would drop
     * the deeper elements, text included, without an error we could see. */
    int opts = HTML_PARSE_RECOVER | HTML_PARSE_NOERROR | HTML_PARSE_NOWARNING | HTML_PARSE_NONET |
               HTML_PARSE_NOBLANKS | XML_PARSE_HUGE;
    htmlDocPtr doc = htmlReadMemory(data, (int)len, NULL, "UTF-8", opts);
    if (!doc) {
        if (len == 0)
            return copy_utf8("", 0, "html", out, err);
        return mc_err_set(err, MC_EFORMAT, "html document of %zu bytes could not be parsed", len);
    }
    struct html_walk w = {0};
    walk(xmlDocGetRootElement(doc), &w, 0);
    xmlFreeDoc(doc);
    if (w.out.oom || w.title.oom || w.out.deep || w.title.deep) {
        bool oom = w.out.oom || w.title.oom;
        mc_free(w.out.p);
        mc_free(w.title.p);
        if (!oom)
            return mc_err_set(err, MC_EFORMAT,
                              "html elements are nested deeper than %d levels; flatten the "
                              "markup or send the text as text/plain",
                              HTML_MAX_DEPTH);
        return mc_err_set(err, MC_ENOMEM, "out of memory extracting html text");
    }
    tb_break(&w.out, false);
    while (w.out.n >= 2 && w.out.p[w.out.n - 1] == '\n' && w.out.p[w.out.n - 2] == '\n')
        w.out.p[--w.out.n] = 0;
    out->title = trimmed_title(&w.title);
    mc_free(w.title.p);
    if (out->title) {
        size_t n_title = strlen(out->title);
        out->title = repair_utf8(out->title, &n_title);
    }
    out->len = w.out.n;
    out->text = w.out.p ? repair_utf8(w.out.p, &out->len) : mc_strdup("");
    if (!out->text)
        return mc_err_set(err, MC_ENOMEM, "out of memory extracting html text");
    return MC_OK;
}

/* ---------------------------------------------------------------------------------------
 * Entry points */

int mc_extract(int type, const char *data, size_t len, struct mc_extract_doc *out,
               struct mc_err *err) {
    memset(out, 0, sizeof(*out));
    out->meta = mc_strdup("{}");
    if (!out->meta)
        return mc_err_set(err, MC_ENOMEM, "out of memory");
    switch (type) {
    case MC_EXTRACT_TEXT:
        return copy_utf8(data, len, "text", out, err);
    case MC_EXTRACT_MARKDOWN:
        return extract_markdown(data, len, out, err);
    case MC_EXTRACT_HTML:
        return extract_html(data, len, out, err);
    default:
        return mc_err_set(err, MC_ENOTSUP, "unsupported document type (supported: %s)",
                          MC_EXTRACT_SUPPORTED);
    }
}

void mc_extract_doc_deinit(struct mc_extract_doc *d) {
    if (!d)
        return;
    mc_free(d->text);
    mc_free(d->title);
    mc_free(d->meta);
    memset(d, 0, sizeof(*d));
}
