/* chunk.h - splits a document into overlapping token windows for retrieval.
 *
 * Tokens come from a caller's tokenizer (the model's in production, anything in tests),
 * so this module does not depend on the model. Markdown ATX headings ('#' to '######' at
 * the start of a line, outside fenced code blocks) split the text into sections; each
 * chunk lies inside one section and carries the path of headings above it, which the
 * caller prefixes as context (mc_chunk_prefix). Chunks are byte spans into the original
 * text, never cut inside a UTF-8 character, trimmed of surrounding ASCII white space;
 * whitespace-only windows are dropped. Splitting always terminates: each window starts
 * at least one token after the previous one, since overlap < size is enforced. */
#ifndef MC_CHUNK_H
#define MC_CHUNK_H

#include "base/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Writes the byte offset at which each token of text[0..len) starts into starts[], in
 * non-decreasing order, at most cap of them, and the true token count to *n_tokens (if it
 * exceeds cap the chunker calls again with room for all). Token i runs up to the start of
 * token i + 1, the last one to len. Returns MC_OK or a negative MC_E* code with err set. */
typedef int (*mc_chunk_tokenize_fn)(void *ctx, const char *text, size_t len, size_t *starts,
                                    size_t cap, size_t *n_tokens, struct mc_err *err);

struct mc_chunk_opts {
    size_t size;      /* tokens per chunk, >= 1 */
    size_t overlap;   /* tokens shared by consecutive chunks of a section, < size */
    bool no_headings; /* true: treat '#' lines as plain text, one section */
};

struct mc_chunk {
    size_t start, end; /* byte span [start, end) in the text */
    size_t n_tokens;   /* tokens of the window (before trimming) */
    int32_t heading;   /* innermost heading above it (index into headings), or -1 */
};

struct mc_chunk_heading {
    size_t start, end; /* byte span of the heading's text, without '#' marks */
    int level;         /* 1..6 */
    int32_t parent;    /* enclosing heading, or -1 */
};

struct mc_chunk_list {
    struct mc_chunk *chunks;
    size_t n_chunks;
    struct mc_chunk_heading *headings;
    size_t n_headings;
};

/* Splits text[0..len) into out (which the caller releases with mc_chunk_list_deinit,
 * also after a failure). MC_EINVAL for size 0 or overlap >= size, or a tokenizer that
 * returns offsets out of order or past the section; the tokenizer's own error otherwise. */
int mc_chunk_split(const char *text, size_t len, const struct mc_chunk_opts *opts,
                   mc_chunk_tokenize_fn tokenize, void *ctx, struct mc_chunk_list *out,
                   struct mc_err *err);

void mc_chunk_list_deinit(struct mc_chunk_list *l);

/* Builds the context prefix of chunk i: the heading path joined by " > " ("Install >
 * Linux"), or "" when the chunk has no heading. *out is mc_malloc'd, NUL-terminated and
 * freed by the caller. MC_EINVAL for i out of range, MC_ENOMEM. */
int mc_chunk_prefix(const char *text, const struct mc_chunk_list *l, size_t i, char **out,
                    struct mc_err *err);

/* A tokenizer for callers without a model: each run of non-white-space bytes (with the
 * white space before it) is one token. ctx is unused. */
int mc_chunk_tokenize_words(void *ctx, const char *text, size_t len, size_t *starts, size_t cap,
                            size_t *n_tokens, struct mc_err *err);

#endif
