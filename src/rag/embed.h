/* embed.h - text embeddings for dense retrieval.
 *
 * An embedder turns texts into vectors of a fixed dimension. The default one runs the
 * base model (or a separate embedding model given at start-up) and takes the mean of the
 * final-norm hidden states of every token of the text (BOS included when the vocabulary
 * adds one), L2-normalised: the same recipe as the server's /v1/embeddings, so vectors
 * from either place are comparable. Texts longer than max_tokens are cut there.
 *
 * Many texts are embedded per forward call: the rows of one call hold several sequences,
 * each in its own KV cache, so short chunks fill the batch instead of running one by one.
 *
 * A custom embedder wraps a caller's function (benchmarks, tests, or an external model).
 *
 * Threading: mc_embed may be called from any thread; calls on one embedder run one at a
 * time (it holds one forward context). */
#ifndef MC_EMBED_H
#define MC_EMBED_H

#include "base/err.h"
#include "model/model.h"

#include <stddef.h>

#define MC_EMBED_NAME_MAX 64

struct mc_embedder; /* opaque; see embed.c */

/* Writes n vectors of dim floats, row after row, to out. Returns MC_OK or MC_E* with err. */
typedef int (*mc_embed_fn)(void *ctx, const char *const *texts, const size_t *lens, size_t n,
                           float *out, struct mc_err *err);

/* An embedder over model m (borrowed; it must outlive the embedder) using n_threads
 * threads (<= 0: all CPUs), cutting texts at max_tokens tokens (0: 512, and never beyond
 * the model's training context). Its name is the model's general.name, '#' and 16 hex
 * digits of a hash of its token embeddings, so two models that share a name differ. */
int mc_embedder_create(const struct mc_model *m, int n_threads, int max_tokens,
                       struct mc_embedder **out, struct mc_err *err);

/* An embedder that calls fn(ctx, ...) (ctx borrowed). name (1..MC_EMBED_NAME_MAX bytes)
 * identifies the vectors it makes: a knowledge base refuses vectors from an embedder of
 * another name or dimension. MC_EINVAL for a bad name or dim outside 1..65536. */
int mc_embedder_create_custom(const char *name, int dim, mc_embed_fn fn, void *ctx,
                              struct mc_embedder **out, struct mc_err *err);

void mc_embedder_free(struct mc_embedder *e);

int mc_embedder_dim(const struct mc_embedder *e);
const char *mc_embedder_name(const struct mc_embedder *e);

/* Embeds n texts (texts[i] of lens[i] bytes) into out (n * dim floats, row i for text i).
 * Texts that give no token at all get an all-zero row. MC_ENOMEM, or the forward pass's
 * error; out is then undefined. */
int mc_embed(struct mc_embedder *e, const char *const *texts, const size_t *lens, size_t n,
             float *out, struct mc_err *err);

#endif
