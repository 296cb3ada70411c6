/* generate.h - turning sampled tokens into streamed text, and a simple generation loop.
 *
 * struct mc_gen_stream is the part every front end shares (the CLI here, the HTTP
 * server's scheduler later): it takes generated tokens one at a time and says which
 * bytes may be shown now. Text is released only at UTF-8 character boundaries and is
 * always valid UTF-8 (an invalid byte becomes U+FFFD); a stop string is matched on the
 * text even when split across tokens, and neither it nor anything after it is released;
 * an end-of-generation token ends with reason "stop" unless ignore_eos; the max-token
 * count ends with reason "length".
 *
 * mc_generate is the single-sequence loop (prefill in batches, then one token per
 * step) on top of mc_forward, mc_sampler and the stream. */
#ifndef MC_GENERATE_H
#define MC_GENERATE_H

#include "base/err.h"
#include "model/model.h"
#include "model/sample.h"
#include "model/tokenizer.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum mc_finish {
    MC_FINISH_NONE = 0, /* still generating */
    MC_FINISH_STOP,     /* end-of-generation token or stop string */
    MC_FINISH_LENGTH,   /* max tokens or context full */
};

/* "stop", "length" or "none". */
const char *mc_finish_name(enum mc_finish f);

enum { MC_GEN_MAX_STOP = 16, MC_GEN_MAX_STOP_LEN = 256, MC_GEN_MAX_LOGPROBS = 20 };

struct mc_gen_params {
    int32_t max_tokens;      /* <= 0: until the context is full */
    const char *const *stop; /* stop strings (borrowed), at most MC_GEN_MAX_STOP */
    size_t n_stop;
    bool ignore_eos;     /* keep going after end-of-generation tokens */
    int32_t n_logprobs;  /* top entries per token, 0..MC_GEN_MAX_LOGPROBS */
    const void *adapter; /* every row's mc_batch_row.adapter (NULL: none) */
    float adapter_scale; /* and its adapter_scale */
};

/* ---- Stream ---------------------------------------------------------------------- */

struct mc_gen_stream;

/* tok is borrowed for the stream's lifetime; stop strings are copied. MC_EINVAL for an
 * empty or overlong stop string or too many of them. */
int mc_gen_stream_create(const struct mc_tokenizer *tok, const struct mc_gen_params *p,
                         struct mc_gen_stream **out, struct mc_err *err);
void mc_gen_stream_free(struct mc_gen_stream *s);

/* Feeds one generated token. last says that no token can follow (the context is full):
 * the stream then ends with "length" unless this token ends it otherwise. *text and
 * *len receive the bytes that may be shown now (possibly none), valid until the next
 * call. Returns MC_FINISH_NONE to go on, or the reason generation ended; after an end,
 * further pushes release nothing. */
enum mc_finish mc_gen_stream_push(struct mc_gen_stream *s, int32_t token, bool last,
                                  const char **text, size_t *len);
/* Ends the stream from outside (context full, cancel): releases what was held back
 * (a partial stop-string match, an incomplete UTF-8 character as U+FFFD). */
void mc_gen_stream_flush(struct mc_gen_stream *s, const char **text, size_t *len);
int32_t mc_gen_stream_n_tokens(const struct mc_gen_stream *s);

/* ---- Loop ------------------------------------------------------------------------ */

struct mc_gen_token {
    int32_t id;
    const char *text; /* bytes released with this token (may be empty) */
    size_t text_len;
    float logprob;                /* of id; 0 when logprobs were not asked for */
    const struct mc_logprob *top; /* n_top most likely, or NULL */
    int32_t n_top;
};

/* Called once per generated token; a non-zero return cancels generation. */
typedef int (*mc_gen_fn)(const struct mc_gen_token *t, void *user);

struct mc_gen_result {
    enum mc_finish finish;
    int32_t n_prompt; /* tokens fed before the first sample */
    int32_t n_gen;    /* tokens generated */
    double prompt_ms; /* wall time of the prefill */
    double gen_ms;    /* wall time from first sample to the end */
};

/* Appends prompt (n_prompt >= 1 tokens) to kv (which may hold earlier tokens of the same
 * sequence), then samples until the stream ends, the context is full or fn cancels
 * (MC_ECANCEL). Generated tokens are fed back into kv except the last one. ctx must be
 * of the model that kv belongs to. Errors from the forward pass are returned as is. */
int mc_generate(struct mc_ctx *ctx, struct mc_kv *kv, const struct mc_tokenizer *tok,
                const int32_t *prompt, size_t n_prompt, const struct mc_sample_params *sp,
                const struct mc_gen_params *gp, mc_gen_fn fn, void *user, struct mc_gen_result *res,
                struct mc_err *err);

#endif
