/* extract.h - plain text out of the document formats a knowledge base accepts.
 *
 * Formats, by media type (parameters such as "; charset=utf-8" are ignored):
 *   text/plain                    the bytes as they are (UTF-8 required)
 *   text/markdown, text/x-markdown  Markdown kept as is, so ATX headings give chunks their
 *                                 context; a YAML front matter block ("---" ... "---" at
 *                                 the very start) is cut out and its top-level keys become
 *                                 metadata ("title" also becomes the title)
 *   text/html, application/xhtml+xml  parsed with libxml2's HTML parser (tolerant of bad
 *                                 markup); script, style, noscript, template and head are
 *                                 dropped; h1..h6 become Markdown headings; block
 *                                 elements become line breaks; <title> is the title;
 *                                 elements nested deeper than 1024 levels make it an
 *                                 MC_EFORMAT error (their text would otherwise be lost)
 * Anything else (PDF included: this build has no PDF reader) is MC_ENOTSUP, which the
 * server answers with 415. Input is untrusted: no format may crash or allocate beyond a
 * small multiple of its size. Thread-safe. */
#ifndef MC_EXTRACT_H
#define MC_EXTRACT_H

#include "base/err.h"

#include <stddef.h>

enum mc_extract_type {
    MC_EXTRACT_UNKNOWN = 0,
    MC_EXTRACT_TEXT = 1,
    MC_EXTRACT_MARKDOWN = 2,
    MC_EXTRACT_HTML = 3,
};

/* The media types mc_extract reads, for messages. */
#define MC_EXTRACT_SUPPORTED "text/plain, text/markdown, text/html"

/* The result of one extraction; every field is owned (mc_extract_doc_deinit frees them). */
struct mc_extract_doc {
    char *text; /* UTF-8, NUL-terminated, len bytes */
    size_t len;
    char *title; /* NULL when the document names none */
    char *meta;  /* JSON object text: front matter keys; "{}" when there are none */
};

/* The type of a media type string such as "text/html; charset=utf-8" (case-insensitive),
 * or MC_EXTRACT_UNKNOWN. */
int mc_extract_type_from_media(const char *media_type);

/* The type of a file name by its extension (.txt .text .md .markdown .html .htm .xhtml),
 * or MC_EXTRACT_UNKNOWN. */
int mc_extract_type_from_path(const char *path);

/* Extracts data[0..len) of type type (enum mc_extract_type) into *out, which this call
 * initialises (deinit it even after a failure). MC_ENOTSUP for MC_EXTRACT_UNKNOWN;
 * MC_EFORMAT with the byte offset for text or Markdown that is not UTF-8 or an HTML
 * document libxml2 cannot read at all; MC_ENOMEM. */
int mc_extract(int type, const char *data, size_t len, struct mc_extract_doc *out,
               struct mc_err *err);

void mc_extract_doc_deinit(struct mc_extract_doc *d);

#endif
