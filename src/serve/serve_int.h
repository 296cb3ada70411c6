/* serve_int.h - what the files of the serve module share with each other (http.c, sse.c,
 * api_req.c, api_openai.c, api_admin.c, api_conv.c, api_kb.c, metrics.c, server.c).
 * Other modules use server.h only; tests of this module may include this header.
 *
 * Threading: libmicrohttpd runs one thread per connection. A handler runs on its
 * connection's thread, may block (it waits for the engine), and must queue exactly one
 * response (or return MHD_NO to drop the connection). */
#ifndef MC_SERVE_INT_H
#define MC_SERVE_INT_H

#include "adapter/lora.h" /* struct mc_lora_base */
#include "base/err.h"
#include "serve/adapter_store.h" /* struct mc_adapter_meta, MC_ADAPTER_NAME_MAX */

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- Growable byte buffer with a cap ---------------------------------------------- */

struct mc_buf {
    char *data; /* NUL-terminated when non-NULL */
    size_t len;
    size_t cap;   /* allocated bytes */
    size_t limit; /* refuse to grow beyond this many bytes (0: 64 MiB) */
};

/* Appends n bytes; MC_ENOMEM when the limit would be passed or allocation fails (the
 * buffer is unchanged then). */
int mc_buf_append(struct mc_buf *b, const void *p, size_t n);
int mc_buf_printf(struct mc_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes. */
void mc_buf_consume(struct mc_buf *b, size_t n);
void mc_buf_free(struct mc_buf *b);

/* ---- UTF-8 ------------------------------------------------------------------------ */

/* Byte offset of the first invalid UTF-8 sequence in s[0..n), or -1 if s is valid. */
ptrdiff_t mc_utf8_invalid_at(const char *s, size_t n);

/* ---- HTTP request and responses (http.c) ----------------------------------------- */

struct mc_http;

struct mc_http_req {
    struct MHD_Connection *conn;
    struct mc_http *http;
    void *user;         /* the server, for handlers */
    char id[32];        /* request id, sent back in x-request-id */
    const char *method; /* borrowed from libmicrohttpd for the request's life */
    const char *url;
    char *body; /* request body, NUL-terminated (mc_malloc'd) */
    size_t body_len;
    size_t body_cap; /* bytes allocated for body */
    size_t max_body; /* this request's body cap (config body_limit, else max_body_bytes) */
    bool body_too_large;
    bool path_nul; /* the path decoded to hold a NUL byte (%00), which url stops at */
    bool started;
    int64_t t_start_ns;
    /* Filled by handlers, read by the access log and metrics when the request ends. */
    char tenant[80];     /* tenant id once authenticated, "" before */
    char key_prefix[32]; /* prefix of the API key used, "" for none */
    const char *route;   /* route template ("/v1/chat/completions"), static string */
    int status;
    const char *reject; /* rejection reason for metrics, static string or NULL */
    int64_t n_prompt;
    int64_t n_completion;
};

typedef enum MHD_Result (*mc_http_handler_fn)(struct mc_http_req *r);

struct mc_http_config {
    const char *host; /* NULL or "" binds every address */
    int port;         /* 0 picks a free port */
    size_t max_body_bytes;
    /* Optional: the body cap of one request, asked once its headers are in (method, url
     * and headers readable; 0 means max_body_bytes). For routes that take large uploads
     * from authenticated callers only. */
    size_t (*body_limit)(struct mc_http_req *r);
    unsigned max_connections;
    mc_http_handler_fn handler;
    /* Called once per finished request (after the response went out or the client left). */
    void (*on_done)(struct mc_http_req *r, void *user);
    void *user;
};

/* Binds and starts the listener threads. MC_EIO with the address on bind failure. */
int mc_http_start(const struct mc_http_config *cfg, struct mc_http **out, struct mc_err *err);
/* The port actually bound (useful with port 0). */
int mc_http_port(const struct mc_http *h);
/* Stops accepting new connections; open connections go on. */
void mc_http_quiesce(struct mc_http *h);
/* Waits until no request is in progress (responses sent, streams ended), at most
 * timeout_ms; false on timeout. */
bool mc_http_wait_idle(struct mc_http *h, int64_t timeout_ms);
/* Closes every connection, waits for their threads and frees h (accepts NULL). */
void mc_http_stop(struct mc_http *h);

int64_t mc_now_ns(void);

/* The value of a request header, or NULL. */
const char *mc_http_header(struct mc_http_req *r, const char *name);
/* The token of "Authorization: Bearer TOKEN", or NULL. */
const char *mc_http_bearer(struct mc_http_req *r);
/* True while the client's socket is open (no hang-up seen). Never blocks. */
bool mc_http_alive(struct mc_http_req *r);

/* Sends obj (takes ownership) as a JSON response. */
enum MHD_Result mc_http_reply_json(struct mc_http_req *r, unsigned status, json_t *obj);
enum MHD_Result mc_http_reply_text(struct mc_http_req *r, unsigned status, const char *ctype,
                                   const char *text, size_t len);
/* Sends an OpenAI error body {"error":{"message","type","param","code"}}. type and code
 * may be NULL (code then null; type from the status); param NULL gives null. */
enum MHD_Result mc_http_reply_error(struct mc_http_req *r, unsigned status, const char *type,
                                    const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* The same with a Retry-After header of retry_after_s seconds (429, 503). */
enum MHD_Result mc_http_reply_error_retry(struct mc_http_req *r, unsigned status, int retry_after_s,
                                          const char *type, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* The error body alone (for tests and mid-stream events); a new reference. */
json_t *mc_http_error_body(const char *message, const char *type, const char *code,
                           const char *param);

/* A streamed (chunked) response: read(ctx, buf, max) blocks until it has bytes, returns
 * their count, MHD_CONTENT_READER_END_OF_STREAM or MHD_CONTENT_READER_END_WITH_ERROR.
 * done(ctx) runs once when the response is released, whether or not the stream ended. */
enum MHD_Result mc_http_reply_stream(struct mc_http_req *r, const char *ctype,
                                     ssize_t (*read)(void *ctx, uint64_t pos, char *buf,
                                                     size_t max),
                                     void (*done)(void *ctx), void *ctx);
/* The socket of the request's connection (for stream readers that watch for hang-up). */
int mc_http_fd(struct mc_http_req *r);
/* True while a peer is connected to fd (no hang-up, no error). */
bool mc_http_fd_alive(int fd);

/* ---- SSE framing (sse.c) --------------------------------------------------------- */

/* Appends "data: <compact JSON of obj>\n\n". */
int mc_sse_json(struct mc_buf *b, const json_t *obj);
/* Appends "data: [DONE]\n\n". */
int mc_sse_done(struct mc_buf *b);

/* ---- Request parsing and validation (api_req.c) ----------------------------------- */

enum {
    MC_API_MAX_N = 16,           /* choices per request */
    MC_API_MAX_STOP = 4,         /* stop strings, as OpenAI */
    MC_API_MAX_STOP_BYTES = 256, /* bytes per stop string */
    MC_API_MAX_MESSAGES = 4096,
    MC_API_MAX_TOKENS = 1 << 20, /* max_tokens beyond this is absurd on any context */
    MC_API_MAX_TOP_LOGPROBS = 20,
    MC_API_MAX_INPUTS = 2048, /* embeddings inputs per request */
};

enum mc_api_role { MC_ROLE_SYSTEM, MC_ROLE_USER, MC_ROLE_ASSISTANT };

struct mc_api_msg {
    enum mc_api_role role;
    char *content; /* text parts joined, mc_malloc'd */
};

/* Sampling settings a request may set; has_* says which ones it did. */
struct mc_api_sampling {
    bool has_temperature, has_top_p, has_seed, has_top_k;
    bool has_presence_penalty, has_frequency_penalty;
    double temperature;
    double top_p;
    double presence_penalty;
    double frequency_penalty;
    int top_k;
    uint64_t seed;
};

struct mc_api_gen {
    char *model; /* NULL if absent */
    bool stream;
    bool include_usage; /* stream_options.include_usage */
    int max_tokens;     /* -1 when neither max_tokens nor max_completion_tokens */
    int n;
    char *stop[MC_API_MAX_STOP];
    int n_stop;
    bool logprobs;
    int top_logprobs; /* 0..MC_API_MAX_TOP_LOGPROBS */
    struct mc_api_sampling sampling;
    char *conversation;  /* extension: "conversation" id, NULL if absent */
    bool has_lora_scale; /* extension: "lora_scale", 0..MC_ENGINE_MAX_ADAPTER_SCALE */
    double lora_scale;
    /* chat */
    struct mc_api_msg *msgs;
    int n_msgs;
    /* completions */
    char *prompt;
    bool is_chat;
};

struct mc_api_embed {
    char *model;
    char **inputs;
    int n_inputs;
    bool base64;    /* encoding_format "base64" */
    int dimensions; /* 0 when absent; must equal the model's when present */
};

/* A validation failure: message names the field and the bad value, param is the field's
 * path ("messages[2].content"), code an OpenAI-style error code or "". */
struct mc_api_error {
    unsigned status;
    char param[112];
    char code[48];
    char msg[256];
};

/* Parse a request body. On failure they fill e and return MC_EINVAL; *out is then
 * empty. Strings are copied (mc_malloc); free with the matching _free. */
int mc_api_parse_chat(const char *body, size_t len, struct mc_api_gen *out, struct mc_api_error *e);
int mc_api_parse_completion(const char *body, size_t len, struct mc_api_gen *out,
                            struct mc_api_error *e);
int mc_api_parse_embed(const char *body, size_t len, struct mc_api_embed *out,
                       struct mc_api_error *e);
void mc_api_gen_free(struct mc_api_gen *g);
void mc_api_embed_free(struct mc_api_embed *m);
/* Fills e (status, param and code may be NULL: none) and returns MC_EINVAL, so that
 * parsers can `return mc_api_fail(...)`. */
int mc_api_fail(struct mc_api_error *e, unsigned status, const char *param, const char *code,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Parses body as JSON of any top-level type after checking its UTF-8; NULL and e filled
 * on failure, with the byte offset of a syntax error. */
json_t *mc_api_parse_json(const char *body, size_t len, struct mc_api_error *e);
/* The same, where anything but a JSON object is an error. */
json_t *mc_api_parse_object(const char *body, size_t len, struct mc_api_error *e);
/* Replies with e as an OpenAI error body (server_error for a 5xx status). */
enum MHD_Result mc_api_reply_error(struct mc_http_req *r, const struct mc_api_error *e);

/* Parses a JSON array of chat messages (as in a chat request) into a new array *out of
 * *n messages (free with mc_api_msgs_free); param names the array in errors. */
int mc_api_parse_messages(json_t *arr, const char *param, struct mc_api_msg **out, int *n,
                          struct mc_api_error *e);
void mc_api_msgs_free(struct mc_api_msg *msgs, int n);
/* "system", "user" or "assistant". */
const char *mc_api_role_name(enum mc_api_role role);

/* ---- Metrics (metrics.c) --------------------------------------------------------- */

struct mc_metrics;

int mc_metrics_create(struct mc_metrics **out, struct mc_err *err);
void mc_metrics_free(struct mc_metrics *m);
/* One finished request: tenant may be "" (unauthenticated), route a static string. */
void mc_metrics_request(struct mc_metrics *m, const char *tenant, const char *route, int status);
void mc_metrics_tokens(struct mc_metrics *m, const char *tenant, int64_t n_prompt,
                       int64_t n_completion);
void mc_metrics_rejection(struct mc_metrics *m, const char *tenant, const char *reason);
void mc_metrics_ttft(struct mc_metrics *m, const char *tenant, double seconds);
void mc_metrics_inter_token(struct mc_metrics *m, const char *tenant, double seconds);
void mc_metrics_streams_add(struct mc_metrics *m, int delta);
/* One finished generation with the tenant's adapter (name validated: no quoting). */
void mc_metrics_adapter(struct mc_metrics *m, const char *tenant, const char *adapter,
                        int64_t n_prompt, int64_t n_completion);
/* Writes the Prometheus text exposition. gauges, if non-NULL, is called (without the
 * metrics lock) to append figures owned by others, such as the engine's queue depth,
 * with the ids of every tenant the metrics have seen. */
int mc_metrics_render(struct mc_metrics *m, struct mc_buf *out,
                      void (*gauges)(struct mc_buf *out, const char (*tenants)[64],
                                     size_t n_tenants, void *user),
                      void *user);

/* ---- The server (server.c) and its handlers (api_*.c) ----------------------------- */

struct mc_model;
struct mc_engine;
struct mc_ctx;
struct mc_kv;
struct mc_store;
struct mc_tenants;
struct mc_limiter;
struct mc_audit;
struct mc_kbs;
struct mc_embedder;

struct mc_server {
    /* Configuration, copied at create. */
    char *model_path;
    char *data_dir;
    char *host;
    char *admin_key; /* mc_secret_alloc'd */
    size_t admin_key_len;
    int port;
    int n_threads;
    int32_t n_ctx_cfg;
    int32_t max_seqs;
    int32_t max_queue;
    size_t kv_budget_bytes;
    size_t adapter_cache_bytes;
    bool adapter_q8_0;        /* --adapter-format q8_0: resident adapters converted on load */
    size_t max_adapter_bytes; /* body cap of adapter uploads (authenticated callers) */
    int64_t drain_timeout_ms;

    /* Catalog, tenants and audit, open from create to free. */
    struct mc_store *store;
    struct mc_tenants *tenants;
    struct mc_limiter *limiter;
    struct mc_audit *audit;
    struct mc_metrics *metrics;
    struct mc_http *http;

    /* The model, set once by mc_server_load before ready turns true. */
    struct mc_model *model;
    struct mc_engine *engine;
    char model_id[96]; /* the name clients pass as "model" */
    int32_t n_ctx;     /* positions per sequence */
    int32_t n_embd;
    int64_t model_created; /* Unix seconds (file modification time) */

    /* LoRA adapters: the shape uploads are checked against, and the residency cache
     * (api_adapter.c), both set by mc_server_load. */
    struct mc_lora_base lora_base;
    struct mc_lora_cache *adapters;

    /* The model embeddings come from (/v1/embeddings and knowledge-base vectors): the
     * base model, or the one --embed-model names (then loaded and owned here). Its id is
     * made like model_id; n_ctx bounds its inputs. Set by mc_server_load. */
    char *embed_model_path; /* NULL: the base model */
    struct mc_model *emb_model;
    char emb_model_id[96];
    int32_t emb_n_ctx;
    int32_t emb_n_embd;
    int64_t emb_created;

    /* Embeddings run outside the engine on their own context, one request at a time. */
    pthread_mutex_t embed_lock;
    struct mc_ctx *embed_ctx;
    struct mc_kv *embed_kv;

    /* Conversation appends are read-modify-write of one sealed object. */
    pthread_mutex_t conv_lock;

    /* Knowledge bases (api_kb.c): one set over the store, created by mc_server_load
     * with the model's tokenizer and an embedder over emb_model (none when
     * kb_no_embeddings). */
    size_t kb_budget_bytes;
    bool kb_no_embeddings; /* --kb-embeddings off: no embedder, BM25 only */
    struct mc_embedder *kb_emb;
    struct mc_kbs *kbs;

    _Atomic int ready;    /* model loaded, engine running */
    _Atomic int draining; /* shutdown started: new work gets 503 */
    _Atomic int shut;     /* mc_server_shutdown finished */
};

/* The identity a tenant request authenticated as. */
struct mc_auth {
    char tenant[80]; /* tenant id */
    char tenant_name[80];
    char key_prefix[32];
    int weight;
    int64_t limits[4]; /* rpm, tpm, tpd, concurrency (0: unlimited) */
};

/* Tenant API (api_openai.c). */
enum MHD_Result mc_api_chat(struct mc_server *s, struct mc_http_req *r, const struct mc_auth *a);
enum MHD_Result mc_api_completions(struct mc_server *s, struct mc_http_req *r,
                                   const struct mc_auth *a);
enum MHD_Result mc_api_embeddings(struct mc_server *s, struct mc_http_req *r,
                                  const struct mc_auth *a);
enum MHD_Result mc_api_models(struct mc_server *s, struct mc_http_req *r, const struct mc_auth *a,
                              const char *model_id);
enum MHD_Result mc_api_usage(struct mc_server *s, struct mc_http_req *r, const char *tenant);

/* Conversations (api_conv.c): path is what follows "/v1/conversations". */
enum MHD_Result mc_api_conversations(struct mc_server *s, struct mc_http_req *r,
                                     const struct mc_auth *a, const char *path);
/* Loads a conversation's messages (for chat completions); MC_ENOTFOUND when the tenant
 * has no conversation with this id. */
int mc_conv_load(struct mc_server *s, const char *tenant, const char *id, struct mc_api_msg **msgs,
                 int *n, struct mc_err *err);
/* Appends messages to a conversation. */
int mc_conv_append(struct mc_server *s, const char *tenant, const char *id,
                   const struct mc_api_msg *msgs, int n, struct mc_err *err);

/* ---- LoRA adapters (api_adapter.c) ------------------------------------------------ */

/* Creates the residency cache (budget s->adapter_cache_bytes) and pins every adapter
 * marked pinned in the store. Called by mc_server_load once the model is loaded. */
int mc_adapter_cache_open(struct mc_server *s, struct mc_err *err);
/* The tenant's adapter called name, loaded (from the cache, or the store on a miss) with
 * a new reference for the caller, and its metadata in meta (may be NULL). MC_ENOTFOUND
 * when the tenant has no adapter of that name; another tenant's adapters are never
 * looked at. */
int mc_adapter_resolve(struct mc_server *s, const char *tenant, const char *name,
                       struct mc_lora **out, struct mc_adapter_meta *meta, struct mc_err *err);
/* Drops the cache entries of every private adapter of tenant (before the tenant is
 * deleted: its decrypted weights must not outlive its data key in memory). Running
 * sequences keep theirs until they end. */
void mc_adapter_forget_tenant(struct mc_server *s, const char *tenant);
/* Tenant routes: path is what follows "/v1/adapters" ("" or "/{name}"). */
enum MHD_Result mc_api_adapters(struct mc_server *s, struct mc_http_req *r, const struct mc_auth *a,
                                const char *path);
/* Admin routes: POST /admin/adapters (publish; path NULL), and for one tenant
 * /admin/tenants/{id}/adapters[/{name}[/pin]] (arg is what follows "adapters/", or ""). */
enum MHD_Result mc_api_admin_adapters(struct mc_server *s, struct mc_http_req *r,
                                      const char *tenant, const char *arg);

/* Knowledge bases (api_kb.c). mc_kb_serve_init runs once the model is loaded;
 * mc_kb_serve_free accepts a server where it never ran. path is what follows "/v1/kb". */
int mc_kb_serve_init(struct mc_server *s, struct mc_err *err);
void mc_kb_serve_free(struct mc_server *s);
/* The knowledge-base request bodies, parsed and checked without a server (for the routes
 * and for fuzzing). A batch: a JSON array of documents or {"documents": [...],
 * "upsert": bool}, each document extracted and every id distinct; free it with
 * mc_kb_batch_free (accepts NULL). A search: q (preset with the defaults) gets the
 * body's fields, and q->text points into *holder (json_decref it when done). Both return
 * MC_EINVAL (or MC_ENOMEM) with e filled; *out / *holder are then NULL. */
struct mc_kb_batch;
struct mc_kb_query;
int mc_kb_batch_parse(const char *body, size_t len, struct mc_kb_batch **out,
                      struct mc_api_error *e);
size_t mc_kb_batch_size(const struct mc_kb_batch *b);
void mc_kb_batch_free(struct mc_kb_batch *b);
int mc_kb_search_parse(const char *body, size_t len, struct mc_kb_query *q, json_t **holder,
                       struct mc_api_error *e);
enum MHD_Result mc_api_kb(struct mc_server *s, struct mc_http_req *r, const struct mc_auth *a,
                          const char *path);
/* Drops a deleted tenant's knowledge base from memory (its objects left with the tenant). */
void mc_kb_serve_forget(struct mc_server *s, const char *tenant);
/* Appends the knowledge-base gauges to a metrics exposition. */
void mc_kb_serve_gauges(struct mc_server *s, struct mc_buf *out);

/* Grounding a generation in the tenant's knowledge base (api_kb.c). */
struct mc_ground {
    bool on;      /* retrieval ran; prompt holds the grounded question */
    char *prompt; /* the question with its sources, through the retrieval template */
    void *impl;   /* settings and hits (api_kb.c) */
};

/* Decides whether retrieval is on for a request (its "retrieval" field, else the front's
 * front_retrieval JSON), and when it is, searches the tenant's knowledge base for
 * question and renders g->prompt. false after replying (400 for bad settings or a search
 * the knowledge base cannot run, 500). g is initialised here; deinit it in every case. */
bool mc_ground_prepare(struct mc_server *s, struct mc_http_req *r, const struct mc_auth *a,
                       const char *front_retrieval, const char *question, struct mc_ground *g,
                       enum MHD_Result *ret);
/* Drops the last source and renders the prompt again, to fit a context; false when no
 * source is left to drop (the prompt is then unchanged). */
bool mc_ground_shrink(struct mc_ground *g);
/* The sources in the prompt as the "mcai_citations" array (a new reference), or NULL
 * when retrieval is off. */
json_t *mc_ground_citations(const struct mc_ground *g);
void mc_ground_deinit(struct mc_ground *g);

/* Admin API (api_admin.c): path is what follows "/admin". */
enum MHD_Result mc_api_admin(struct mc_server *s, struct mc_http_req *r, const char *path);

/* Reads ?days=N (1..366, default 30); false after replying 400 for a bad value. */
bool mc_api_days_param(struct mc_http_req *r, int *days, enum MHD_Result *ret);
/* Usage rows as the JSON both /v1/usage and the admin API return. */
json_t *mc_api_usage_json(struct mc_server *s, const char *tenant, int days, struct mc_err *err);

#endif
