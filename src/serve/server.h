/* server.h - mcai serve: one model, many tenants, over HTTP.
 *
 * The server opens the store in the data directory, starts listening at once (so
 * /healthz answers and /readyz says "loading"), then loads the model and starts the
 * engine; from then on /readyz is 200 and the tenant API answers. mc_server_shutdown is
 * the graceful stop that SIGTERM triggers: stop admitting, let running requests finish
 * (cancelling what is left after a timeout), flush, close. docs/api.md describes the
 * HTTP API. */
#ifndef MC_SERVER_H
#define MC_SERVER_H

#include "base/err.h"
#include "store/crypto.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mc_server;

/* Zero in a numeric field means the default given beside it. */
struct mc_server_config {
    const char *model_path;                 /* GGUF model (required) */
    const char *embed_model_path;           /* GGUF model for embeddings and knowledge-base
                                             * vectors (default NULL: the model) */
    const char *data_dir;                   /* store and audit log (required) */
    const char *host;                       /* listen address (default 127.0.0.1) */
    int port;                               /* 0 picks a free port; mc_server_port tells which */
    const struct mc_master_key *master_key; /* borrowed; must outlive the server */
    const char *admin_key;                  /* copied into locked memory */
    int n_threads;                          /* forward-pass threads (default: all CPUs) */
    int32_t n_ctx;                          /* context per sequence (default: the model's, at
                                             * most 4096) */
    int32_t max_seqs;                       /* sequences decoded together (default 16) */
    int32_t max_queue;                      /* queued requests per tenant (default 256) */
    size_t kv_budget_bytes;                 /* KV memory of running sequences (default: no
                                             * limit beyond max_seqs full contexts) */
    size_t adapter_cache_bytes;             /* resident LoRA adapters (default 256 MiB) */
    bool adapter_q8_0;                      /* keep resident adapters as Q8_0 */
    size_t max_body_bytes;                  /* request body cap (default 1 MiB) */
    size_t max_adapter_bytes;               /* body cap of an adapter upload by a caller
                                             * with a valid key (default 256 MiB) */
    unsigned max_connections;               /* open connections (default 1024) */
    int64_t drain_timeout_ms;               /* on shutdown, time running requests get (default
                                             * 10000) */
    size_t kb_cache_bytes;                  /* knowledge bases kept loaded, in all (default
                                             * 256 MiB; see docs/knowledge-bases.md) */
    bool kb_no_embeddings;                  /* knowledge bases BM25 only: no embedder */
};

/* Minimum length of an admin key; shorter ones are refused as weak. */
#define MC_SERVER_ADMIN_KEY_MIN 24

/* Checks an admin key: at least MC_SERVER_ADMIN_KEY_MIN bytes of printable ASCII with at
 * least 10 distinct characters. MC_EINVAL with a message saying how to make one. */
int mc_server_check_admin_key(const char *key, struct mc_err *err);

/* Opens the store and audit log, starts listening. The model is not loaded yet. On
 * failure nothing is left running and *out is NULL. */
int mc_server_create(const struct mc_server_config *cfg, struct mc_server **out,
                     struct mc_err *err);
/* The TCP port the server listens on. */
int mc_server_port(const struct mc_server *s);
/* Loads the model and starts the engine; the server is ready when this returns MC_OK. */
int mc_server_load(struct mc_server *s, struct mc_err *err);
/* Graceful stop: refuses new work (503), stops accepting connections, lets running
 * requests finish for up to drain_timeout_ms, cancels the rest, waits for every
 * connection to end and flushes the audit log. Idempotent. */
void mc_server_shutdown(struct mc_server *s);
/* Shuts down if needed and frees everything. Accepts NULL. */
void mc_server_free(struct mc_server *s);

#endif
