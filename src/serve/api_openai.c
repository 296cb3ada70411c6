/* api_openai.c - the OpenAI-compatible tenant API: chat and text completions (streamed
 * and not), embeddings, models and usage.
 *
 * A generation request goes: parse and validate (api_req.c) -> the tenant's front fills
 * defaults (system prompt, template, sampling, max tokens, context limit, allowed models)
 * -> prompt rendered with the model's chat template and tokenized -> context check (400
 * context_length_exceeded before anything starts) -> rate limits (429 + Retry-After) ->
 * n engine requests, one per choice (seeds seed, seed + 1, ...) -> events merged by
 * choice index into one JSON answer or one SSE stream.
 *
 * Engine events arrive on the engine thread: on_event copies each one into the run's
 * queue and signals; everything else (JSON, accounting, conversation writes) happens on
 * the connection's thread. A run is freed only after every choice has delivered its last
 * event, which on_event hands over under the run's lock as its final act, so the engine
 * never touches a freed run. A client that goes away (socket hang-up seen while waiting)
 * cancels every choice of its run.
 *
 * System messages: every system (or developer) message, wherever it stands, is merged
 * in order after the front's system prompt into one system message placed first
 * (joined with a blank line). The front's template, when set, wraps the last user message
 * (chat) or the prompt (completions): {{input}} is that text, {{tenant}} the tenant's
 * name, {{date}} today's UTC date.
 *
 * Retrieval (api_kb.c), when the request or the front turns it on, searches the tenant's
 * knowledge base for the last user message (or the prompt) and replaces that text with
 * the grounded question before the front's template wraps it; sources are dropped from
 * the end until the prompt leaves room for an answer. The sources used come back as
 * "mcai_citations" on the response object, or in a chunk of their own just before the
 * end of a stream. */
#include "serve/serve_int.h"

#include "base/log.h"
#include "base/mem.h"
#include "model/chat.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "serve/engine.h"
#include "store/crypto.h"
#include "tenant/ratelimit.h"
#include "tenant/tenant.h"

#include <math.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

enum {
    WAIT_SLICE_MS = 200,  /* longest wait for one engine event */
    ALIVE_EVERY_MS = 100, /* how often a waiting thread looks for a client hang-up */
    EMBED_CHUNK = 64,     /* rows per forward call when embedding */
    PIECE_MAX = 256,      /* bytes of one token's text in logprobs */
    GROUND_ROOM = 64,     /* answer tokens a grounded prompt leaves room for by default */
};

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* True when the client of fd should be looked at again: every ALIVE_EVERY_MS of wall
 * time, whether or not events keep arriving (a running generation sends one per token,
 * so waiting for a quiet moment would never look). *last_ms: the time of the last look.
 * Streams need no such clock: writing to a client that went away fails the stream. */
static bool alive_check_due(int64_t *last_ms) {
    int64_t now = mono_ms();
    if (now - *last_ms < ALIVE_EVERY_MS)
        return false;
    *last_ms = now;
    return true;
}

/* ---- Events copied off the engine thread ------------------------------------------ */

struct ev {
    struct ev *next;
    bool reserved; /* lives in struct run (a choice's last event); never freed */
    int choice;
    enum mc_engine_event_type type;
    char *text;
    size_t text_len;
    int32_t n_tokens;
    struct mc_engine_logprob *lps; /* n_tokens entries, or NULL */
    char finish_reason[16];
    int32_t prompt_tokens;
    int32_t completion_tokens;
    int code;
    char message[200];
};

static void ev_free(struct ev *e) {
    if (!e || e->reserved)
        return;
    mc_free(e->text);
    mc_free(e->lps);
    mc_free(e);
}

struct choice {
    struct mc_gen *gen;
    bool terminal;  /* its DONE or ERROR was taken off the queue */
    bool role_sent; /* streaming: the first chunk with the role went out */
    char finish_reason[16];
    int32_t completion_tokens;
    struct mc_buf text; /* non-streaming (and choice 0 when a conversation is kept) */
    json_t *lp;         /* logprobs being gathered (non-streaming) */
};

struct cb_ctx {
    struct run *run;
    int idx;
};

struct run {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct ev *head, *tail;
    bool oom;                     /* an event could not be copied (under lock) */
    struct ev term[MC_API_MAX_N]; /* each choice's last event */

    struct mc_server *s;
    const struct mc_tokenizer *tok;
    int n;
    struct choice ch[MC_API_MAX_N];
    struct cb_ctx cb[MC_API_MAX_N];
    int n_submitted;

    bool is_chat, stream, include_usage, logprobs;
    int top_logprobs;
    char id[48];
    int64_t created;
    char model[96];
    char tenant[80];
    char adapter[MC_ADAPTER_NAME_MAX + 1]; /* "" for the base model */
    int32_t n_prompt;

    int n_terminal; /* terminal events processed */
    bool failed;
    int fail_code;
    char fail_msg[200];

    /* Streaming. */
    struct mc_buf out;
    bool out_finished;
    int fd;
    struct mc_http_req *req; /* valid only inside stream_read (freed when the request ends) */

    /* Accounting. */
    int64_t est_tokens; /* tokens the limiter granted and holds until mc_limit_release */
    bool limit_held;
    bool finished;
    char *conv_id;
    struct mc_api_msg *conv_new;
    int n_conv_new;
    json_t *citations; /* "mcai_citations", or NULL without retrieval */
};

/* Copies the text and logprobs of a TEXT event; false when memory runs out. */
static bool ev_copy_content(struct ev *e, const struct mc_engine_event *ev) {
    if (ev->text_len) {
        e->text = mc_strndup(ev->text, ev->text_len);
        if (!e->text)
            return false;
        e->text_len = ev->text_len;
    }
    if (ev->logprobs && ev->n_tokens > 0) {
        e->lps = mc_malloc((size_t)ev->n_tokens * sizeof(*e->lps));
        if (!e->lps)
            return false;
        memcpy(e->lps, ev->logprobs, (size_t)ev->n_tokens * sizeof(*e->lps));
    }
    return true;
}

static void on_event(const struct mc_engine_event *ev, void *user) {
    struct cb_ctx *cb = user;
    struct run *run = cb->run;
    bool terminal = ev->type != MC_ENGINE_EV_TEXT;

    /* A choice's last event goes into storage reserved in the run: running out of memory
     * must never lose it, or the connection would wait for it forever. A TEXT event that
     * cannot be copied is dropped and fails the request when its choice ends. */
    struct ev *e = terminal ? &run->term[cb->idx] : mc_calloc(1, sizeof(*e));
    bool lost = e == NULL;
    if (e) {
        e->reserved = terminal;
        e->choice = cb->idx;
        e->type = ev->type;
        e->n_tokens = ev->n_tokens;
        e->prompt_tokens = ev->prompt_tokens;
        e->completion_tokens = ev->completion_tokens;
        e->code = ev->code;
        snprintf(e->finish_reason, sizeof(e->finish_reason), "%s",
                 ev->finish_reason ? ev->finish_reason : "stop");
        snprintf(e->message, sizeof(e->message), "%s", ev->message ? ev->message : "");
        if (!terminal && !ev_copy_content(e, ev)) {
            ev_free(e);
            e = NULL;
            lost = true;
        }
    }

    pthread_mutex_lock(&run->lock);
    if (e) {
        if (run->tail)
            run->tail->next = e;
        else
            run->head = e;
        run->tail = e;
    }
    if (lost)
        run->oom = true;
    pthread_cond_broadcast(&run->cond);
    pthread_mutex_unlock(&run->lock); /* the engine's last touch of this run */
}

/* Takes the next event, waiting at most timeout_ms. NULL on timeout. */
static struct ev *run_pop(struct run *run, int timeout_ms) {
    pthread_mutex_lock(&run->lock);
    if (!run->head && timeout_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)timeout_ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&run->cond, &run->lock, &ts);
    }
    struct ev *e = run->head;
    if (e) {
        run->head = e->next;
        if (!run->head)
            run->tail = NULL;
        e->next = NULL;
    }
    pthread_mutex_unlock(&run->lock);
    return e;
}

static void run_cancel(struct run *run) {
    for (int i = 0; i < run->n_submitted; i++)
        if (!run->ch[i].terminal)
            mc_engine_cancel(run->ch[i].gen);
}

/* ---- Token text for logprobs ------------------------------------------------------ */

/* The token's text as a JSON string (invalid UTF-8 of partial byte tokens replaced by
 * U+FFFD) and its raw bytes as a JSON array. */
static void token_json(const struct mc_tokenizer *tok, int32_t id, json_t **str, json_t **bytes) {
    char piece[PIECE_MAX];
    int n = mc_token_to_piece(tok, id, false, piece, sizeof(piece));
    if (n < 0 || n > (int)sizeof(piece))
        n = 0;
    *bytes = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(*bytes, json_integer((unsigned char)piece[i]));
    struct mc_buf b = {0};
    int i = 0;
    while (i < n) {
        ptrdiff_t bad = mc_utf8_invalid_at(piece + i, (size_t)(n - i));
        size_t ok = bad < 0 ? (size_t)(n - i) : (size_t)bad;
        mc_buf_append(&b, piece + i, ok);
        i += (int)ok;
        if (bad >= 0) {
            mc_buf_append(&b, "\xef\xbf\xbd", 3);
            i++;
        }
    }
    *str = json_stringn(b.data ? b.data : "", b.len);
    mc_buf_free(&b);
}

/* Chat-style logprobs entries ({"token","logprob","bytes","top_logprobs"}) for an
 * event's tokens, appended to arr. */
static void chat_logprobs_add(struct run *run, const struct ev *e, json_t *arr) {
    for (int32_t t = 0; t < e->n_tokens; t++) {
        const struct mc_engine_logprob *lp = &e->lps[t];
        json_t *s, *b;
        token_json(run->tok, lp->token, &s, &b);
        json_t *tops = json_array();
        for (int32_t k = 0; k < lp->n_top && k < run->top_logprobs; k++) {
            json_t *ts, *tb;
            token_json(run->tok, lp->top[k].token, &ts, &tb);
            json_array_append_new(tops, json_pack("{s:o,s:f,s:o}", "token", ts, "logprob",
                                                  (double)lp->top[k].logprob, "bytes", tb));
        }
        json_array_append_new(arr,
                              json_pack("{s:o,s:f,s:o,s:o}", "token", s, "logprob",
                                        (double)lp->logprob, "bytes", b, "top_logprobs", tops));
    }
}

/* Legacy completions logprobs: {"tokens","token_logprobs","top_logprobs","text_offset"};
 * offset is the byte offset of the event's text within the choice's completion. */
static void legacy_logprobs_add(struct run *run, const struct ev *e, json_t *obj, size_t offset) {
    json_t *toks = json_object_get(obj, "tokens");
    json_t *lps = json_object_get(obj, "token_logprobs");
    json_t *tops = json_object_get(obj, "top_logprobs");
    json_t *offs = json_object_get(obj, "text_offset");
    for (int32_t t = 0; t < e->n_tokens; t++) {
        const struct mc_engine_logprob *lp = &e->lps[t];
        json_t *s, *b;
        token_json(run->tok, lp->token, &s, &b);
        json_decref(b);
        size_t len = json_string_length(s);
        json_array_append_new(toks, s);
        json_array_append_new(lps, json_real(lp->logprob));
        json_t *top = json_object();
        for (int32_t k = 0; k < lp->n_top && k < run->top_logprobs; k++) {
            json_t *ts, *tb;
            token_json(run->tok, lp->top[k].token, &ts, &tb);
            json_object_set_new(top, json_string_value(ts), json_real(lp->top[k].logprob));
            json_decref(ts);
            json_decref(tb);
        }
        json_array_append_new(tops, top);
        json_array_append_new(offs, json_integer((json_int_t)offset));
        offset += len;
    }
}

static json_t *legacy_logprobs_new(void) {
    return json_pack("{s:[],s:[],s:[],s:[]}", "tokens", "token_logprobs", "top_logprobs",
                     "text_offset");
}

/* ---- Response JSON ---------------------------------------------------------------- */

static json_t *usage_json(const struct run *run) {
    int64_t c = 0;
    for (int i = 0; i < run->n; i++)
        c += run->ch[i].completion_tokens;
    return json_pack("{s:i,s:I,s:I}", "prompt_tokens", (int)run->n_prompt, "completion_tokens",
                     (json_int_t)c, "total_tokens", (json_int_t)(run->n_prompt + c));
}

static json_t *chunk_base(const struct run *run) {
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:n}", "id", run->id, "object",
                          run->is_chat ? "chat.completion.chunk" : "text_completion", "created",
                          (json_int_t)run->created, "model", run->model, "system_fingerprint");
    if (run->include_usage)
        json_object_set_new(o, "usage", json_null());
    return o;
}

/* One streamed chunk for choice idx: chat delta (role and/or content) or completion
 * text, with logprobs and finish_reason (NULL: null). */
static int emit_chunk(struct run *run, int idx, const char *text, size_t len, bool role,
                      const struct ev *e, const char *finish) {
    json_t *o = chunk_base(run);
    json_t *c = json_pack("{s:i}", "index", idx);
    json_t *lp = json_null();
    if (e && e->lps && run->logprobs) {
        if (run->is_chat) {
            json_decref(lp);
            lp = json_pack("{s:[]}", "content");
            chat_logprobs_add(run, e, json_object_get(lp, "content"));
        } else {
            json_decref(lp);
            lp = legacy_logprobs_new();
            legacy_logprobs_add(run, e, lp, run->ch[idx].text.len);
        }
    }
    if (run->is_chat) {
        json_t *d = json_object();
        if (role)
            json_object_set_new(d, "role", json_string("assistant"));
        if (text)
            json_object_set_new(d, "content", json_stringn(text, len));
        json_object_set_new(c, "delta", d);
    } else {
        json_object_set_new(c, "text", json_stringn(text ? text : "", text ? len : 0));
    }
    json_object_set_new(c, "logprobs", lp);
    json_object_set_new(c, "finish_reason", finish ? json_string(finish) : json_null());
    json_object_set_new(o, "choices", json_pack("[o]", c));
    int rc = mc_sse_json(&run->out, o);
    json_decref(o);
    return rc;
}

/* ---- Processing events ------------------------------------------------------------ */

/* Applies one event to the run: streaming writes SSE chunks to run->out, non-streaming
 * gathers text and logprobs. Terminal events mark their choice. */
static void run_apply(struct run *run, struct ev *e) {
    struct choice *c = &run->ch[e->choice];
    bool keep_text = !run->stream || (run->conv_id && e->choice == 0);

    if (e->type == MC_ENGINE_EV_TEXT) {
        c->completion_tokens += e->n_tokens;
        if (run->stream && !run->failed) {
            bool role = run->is_chat && !c->role_sent;
            if (e->text_len || role)
                emit_chunk(run, e->choice, e->text ? e->text : "", e->text_len, role,
                           e->text_len ? e : NULL, NULL);
            c->role_sent = true;
        } else if (!run->stream && run->logprobs && e->lps && e->text_len) {
            if (!c->lp)
                c->lp = run->is_chat ? json_array() : legacy_logprobs_new();
            if (run->is_chat)
                chat_logprobs_add(run, e, c->lp);
            else
                legacy_logprobs_add(run, e, c->lp, c->text.len);
        }
        if (keep_text && e->text_len)
            mc_buf_append(&c->text, e->text, e->text_len);
        return;
    }

    c->terminal = true;
    run->n_terminal++;
    c->completion_tokens = e->completion_tokens;
    if (e->prompt_tokens > 0)
        run->n_prompt = e->prompt_tokens;
    if (e->type == MC_ENGINE_EV_DONE && run->oom) {
        e->code = MC_ENOMEM;
        snprintf(e->message, sizeof(e->message), "out of memory for the answer's text");
    } else if (e->type == MC_ENGINE_EV_DONE) {
        snprintf(c->finish_reason, sizeof(c->finish_reason), "%s", e->finish_reason);
        if (run->stream && !run->failed) {
            if (run->is_chat && !c->role_sent)
                emit_chunk(run, e->choice, "", 0, true, NULL, NULL);
            c->role_sent = true;
            emit_chunk(run, e->choice, NULL, 0, false, NULL, c->finish_reason);
        }
        return;
    }
    if (!run->failed) {
        run->failed = true;
        run->fail_code = e->code;
        snprintf(run->fail_msg, sizeof(run->fail_msg), "%s", e->message);
        /* One failed choice fails the request: stop the others. */
        run_cancel(run);
        if (run->stream) {
            json_t *err = mc_http_error_body(
                e->code == MC_ECANCEL ? "generation was cancelled (server shutting down)"
                                      : "generation failed",
                "server_error", e->code == MC_ECANCEL ? "cancelled" : "generation_failed", NULL);
            mc_sse_json(&run->out, err);
            json_decref(err);
        }
    }
}

/* ---- Accounting and end of a run -------------------------------------------------- */

static int64_t run_completion_tokens(const struct run *run) {
    int64_t c = 0;
    for (int i = 0; i < run->n; i++)
        c += run->ch[i].completion_tokens;
    return c;
}

/* Runs once, after every choice's last event: frees the rate-limit hold, records usage
 * and metrics, appends to the conversation. */
static void run_account(struct run *run) {
    if (run->finished)
        return;
    run->finished = true;
    struct mc_server *s = run->s;
    int64_t comp = run_completion_tokens(run);
    int64_t now = wall_ms();
    if (run->limit_held)
        mc_limit_release(s->limiter, run->tenant, run->est_tokens, run->n_prompt + comp, now);
    struct mc_err err = {0};
    if (run->n_submitted == 0)
        return; /* the engine refused it: nothing ran, nothing to count */
    if (mc_usage_record(s->tenants, run->tenant, now, 1, run->n_prompt, comp, &err) != MC_OK)
        MC_LOG_WARN("api", "usage_record_failed", "tenant=%s err=\"%s\"", run->tenant, err.msg);
    mc_metrics_tokens(s->metrics, run->tenant, run->n_prompt, comp);
    if (run->adapter[0])
        mc_metrics_adapter(s->metrics, run->tenant, run->adapter, run->n_prompt, comp);

    if (run->conv_id && !run->failed) {
        struct mc_api_msg *all = mc_calloc((size_t)run->n_conv_new + 1, sizeof(*all));
        if (all) {
            for (int i = 0; i < run->n_conv_new; i++)
                all[i] = run->conv_new[i];
            all[run->n_conv_new].role = MC_ROLE_ASSISTANT;
            all[run->n_conv_new].content = run->ch[0].text.data ? run->ch[0].text.data : "";
            if (mc_conv_append(s, run->tenant, run->conv_id, all, run->n_conv_new + 1, &err) !=
                MC_OK)
                MC_LOG_WARN("api", "conversation_append_failed", "tenant=%s conv=%s err=\"%s\"",
                            run->tenant, run->conv_id, err.msg);
            mc_free(all);
        }
    }
    if (run->stream)
        MC_LOG_INFO("api", "stream_done", "tenant=%s id=%s tok_in=%d tok_out=%lld failed=%d",
                    run->tenant, run->id, run->n_prompt, (long long)comp, run->failed);
}

/* Cancels what still runs, waits for every choice's last event, accounts and frees. */
static void run_finish(struct run *run) {
    if (!run)
        return;
    run_cancel(run);
    while (run->n_terminal < run->n_submitted) {
        struct ev *e = run_pop(run, WAIT_SLICE_MS);
        if (e)
            run_apply(run, e);
        ev_free(e);
    }
    run_account(run);
    for (int i = 0; i < run->n_submitted; i++)
        mc_gen_release(run->ch[i].gen);
    for (int i = 0; i < run->n; i++) {
        mc_buf_free(&run->ch[i].text);
        json_decref(run->ch[i].lp);
    }
    struct ev *e;
    while ((e = run_pop(run, 0)))
        ev_free(e);
    mc_buf_free(&run->out);
    mc_free(run->conv_id);
    mc_api_msgs_free(run->conv_new, run->n_conv_new);
    json_decref(run->citations);
    pthread_mutex_destroy(&run->lock);
    pthread_cond_destroy(&run->cond);
    mc_free(run);
}

/* ---- Streaming reader ------------------------------------------------------------- */

static ssize_t stream_read(void *ctx, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    struct run *run = ctx;
    while (run->out.len == 0) {
        if (run->out_finished)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (run->n_terminal == run->n_submitted) {
            if (!run->failed) {
                if (run->citations) {
                    json_t *o = chunk_base(run);
                    json_object_set_new(o, "choices", json_array());
                    json_object_set(o, "mcai_citations", run->citations);
                    mc_sse_json(&run->out, o);
                    json_decref(o);
                }
                if (run->include_usage) {
                    json_t *o = chunk_base(run);
                    json_object_set_new(o, "choices", json_array());
                    json_object_set_new(o, "usage", usage_json(run));
                    mc_sse_json(&run->out, o);
                    json_decref(o);
                }
                mc_sse_done(&run->out);
            }
            run_account(run);
            run->req->n_completion = run_completion_tokens(run);
            run->out_finished = true;
            continue;
        }
        struct ev *e = run_pop(run, WAIT_SLICE_MS);
        if (e) {
            run_apply(run, e);
            ev_free(e);
            /* request_done logs this; a stream whose client leaves ends with what it got. */
            run->req->n_completion = run_completion_tokens(run);
        } else if (!mc_http_fd_alive(run->fd)) {
            MC_LOG_INFO("api", "client_gone", "tenant=%s id=%s", run->tenant, run->id);
            run_cancel(run);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
    size_t n = run->out.len < max ? run->out.len : max;
    memcpy(buf, run->out.data, n);
    mc_buf_consume(&run->out, n);
    return (ssize_t)n;
}

static void stream_done(void *ctx) {
    struct run *run = ctx;
    mc_metrics_streams_add(run->s->metrics, -1);
    run_finish(run);
}

/* ---- Building the prompt ---------------------------------------------------------- */

static char *render_template(const struct mc_front *f, const struct mc_auth *a, const char *input,
                             struct mc_err *err) {
    char date[11];
    mc_usage_day_string(mc_usage_day(wall_ms()), date);
    const char *values[MC_FRONT_N_VARS] = {input, a->tenant_name, date};
    char *out = NULL;
    if (mc_front_render(f->template, mc_front_vars, values, MC_FRONT_N_VARS, &out, err) != MC_OK)
        return NULL;
    return out;
}

/* Builds the chat prompt's token ids: front system prompt and every system message
 * merged first, then user and assistant turns in order, the template on the last user
 * turn, whose text is ground instead when ground is non-NULL (a grounded question). */
static int chat_tokens(struct mc_server *s, const struct mc_front *f, const struct mc_auth *a,
                       const struct mc_api_msg *msgs, int n, const char *ground, int32_t **ids,
                       size_t *n_ids, struct mc_err *err) {
    struct mc_chat_msg *cm = mc_calloc((size_t)n + 1, sizeof(*cm));
    struct mc_buf sys = {0};
    char *wrapped = NULL;
    int rc = MC_OK;
    if (!cm)
        return mc_err_set(err, MC_ENOMEM, "out of memory");
    if (f->system_prompt && *f->system_prompt)
        mc_buf_append(&sys, f->system_prompt, strlen(f->system_prompt));
    int last_user = -1;
    for (int i = 0; i < n; i++) {
        if (msgs[i].role == MC_ROLE_SYSTEM && *msgs[i].content) {
            if (sys.len)
                mc_buf_append(&sys, "\n\n", 2);
            mc_buf_append(&sys, msgs[i].content, strlen(msgs[i].content));
        }
        if (msgs[i].role == MC_ROLE_USER)
            last_user = i;
    }
    const char *last = last_user >= 0 && ground ? ground
                       : last_user >= 0         ? msgs[last_user].content
                                                : NULL;
    if (f->template && last_user >= 0) {
        wrapped = render_template(f, a, last, err);
        if (!wrapped) {
            rc = err ? err->code : MC_EINVAL;
            goto out;
        }
    }
    size_t k = 0;
    if (sys.len)
        cm[k++] = (struct mc_chat_msg){"system", sys.data};
    for (int i = 0; i < n; i++) {
        if (msgs[i].role == MC_ROLE_SYSTEM)
            continue;
        const char *text = i != last_user ? msgs[i].content : wrapped ? wrapped : last;
        cm[k++] = (struct mc_chat_msg){mc_api_role_name(msgs[i].role), text};
    }
    rc = mc_chat_tokenize(mc_model_tokenizer(s->model), mc_model_chat_template(s->model), cm, k,
                          true, ids, n_ids, err);
out:
    mc_free(wrapped);
    mc_buf_free(&sys);
    mc_free(cm);
    return rc;
}

/* ---- Generation handler shared by chat and completions ---------------------------- */

static void fill_sampling(struct mc_engine_sampling *es, const struct mc_api_sampling *rq,
                          const struct mc_front *f) {
    memset(es, 0, sizeof(*es));
    es->temperature = rq->has_temperature   ? (float)rq->temperature
                      : f->temperature >= 0 ? (float)f->temperature
                                            : 1.0f;
    es->top_p = rq->has_top_p ? (float)rq->top_p : f->top_p >= 0 ? (float)f->top_p : 1.0f;
    es->top_k = rq->has_top_k ? rq->top_k : f->top_k >= 0 ? f->top_k : 0;
    es->min_p = f->min_p >= 0 ? (float)f->min_p : 0.0f;
    es->repeat_penalty = f->repeat_penalty >= 0 ? (float)f->repeat_penalty : 0.0f;
    es->presence_penalty = rq->has_presence_penalty      ? (float)rq->presence_penalty
                           : !isnan(f->presence_penalty) ? (float)f->presence_penalty
                                                         : 0.0f;
    es->frequency_penalty = rq->has_frequency_penalty      ? (float)rq->frequency_penalty
                            : !isnan(f->frequency_penalty) ? (float)f->frequency_penalty
                                                           : 0.0f;
    if (rq->has_seed)
        es->seed = rq->seed;
    else if (f->seed >= 0)
        es->seed = (uint64_t)f->seed;
    else
        randombytes_buf(&es->seed, sizeof(es->seed));
}

static enum MHD_Result reply_model_not_found(struct mc_http_req *r, const char *model) {
    r->reject = "model_not_found";
    return mc_http_reply_error(r, 404, "invalid_request_error", "model_not_found", "model",
                               "the model '%.80s' does not exist or you do not have access to it",
                               model);
}

/* The front in force for a tenant; on failure replies and returns false. */
static bool load_front(struct mc_server *s, struct mc_http_req *r, const struct mc_auth *a,
                       struct mc_front *f, enum MHD_Result *ret) {
    struct mc_err err = {0};
    if (mc_front_get(s->tenants, a->tenant, 0, f, NULL, &err) == MC_OK)
        return true;
    mc_front_deinit(f);
    MC_LOG_ERROR("api", "front_load_failed", "tenant=%s id=%s err=\"%s\"", a->tenant, r->id,
                 err.msg);
    *ret = mc_http_reply_error(r, 500, "server_error", NULL, NULL,
                               "could not load the tenant's front (request %s)", r->id);
    return false;
}

static enum MHD_Result reply_engine_error(struct mc_http_req *r, int rc, const struct mc_err *err) {
    if (rc == MC_EFULL) {
        r->reject = "queue_full";
        return mc_http_reply_error_retry(r, 429, 1, "rate_limit_error", "queue_full",
                                         "too many queued requests for this tenant; retry later");
    }
    if (rc == MC_ECANCEL) {
        r->reject = "draining";
        return mc_http_reply_error_retry(r, 503, 5, "server_error", "shutting_down",
                                         "the server is shutting down");
    }
    if (rc == MC_EINVAL)
        return mc_http_reply_error(r, 400, "invalid_request_error", NULL, NULL, "%s", err->msg);
    return mc_http_reply_error(r, 500, "server_error", NULL, NULL,
                               "could not start generation (request %s)", r->id);
}

/* Non-streaming: waits for every choice, then answers with one JSON object. */
static enum MHD_Result reply_whole(struct mc_http_req *r, struct run *run) {
    int64_t looked_ms = mono_ms();
    while (run->n_terminal < run->n_submitted) {
        struct ev *e = run_pop(run, WAIT_SLICE_MS);
        if (e) {
            run_apply(run, e);
            ev_free(e);
        }
        if (run->n_terminal < run->n_submitted && alive_check_due(&looked_ms) &&
            !mc_http_alive(r)) {
            MC_LOG_INFO("api", "client_gone", "tenant=%s id=%s", run->tenant, run->id);
            r->status = 499;
            run_finish(run);
            return MHD_NO;
        }
    }
    run_account(run);
    r->n_prompt = run->n_prompt;
    r->n_completion = run_completion_tokens(run);
    if (run->failed) {
        bool cancel = run->fail_code == MC_ECANCEL;
        int code = run->fail_code;
        MC_LOG_WARN("api", "generation_failed", "tenant=%s id=%s code=%d err=\"%s\"", run->tenant,
                    run->id, code, run->fail_msg);
        run_finish(run);
        if (cancel)
            return mc_http_reply_error_retry(r, 503, 5, "server_error", "cancelled",
                                             "generation was cancelled: the server is shutting "
                                             "down");
        return mc_http_reply_error(r, 500, "server_error", "generation_failed", NULL,
                                   "generation failed (%s; request %s)", mc_strerror(code), r->id);
    }

    json_t *choices = json_array();
    for (int i = 0; i < run->n; i++) {
        struct choice *c = &run->ch[i];
        json_t *lp = json_null();
        if (run->logprobs) {
            json_decref(lp);
            if (run->is_chat)
                lp = json_pack("{s:o}", "content", c->lp ? json_incref(c->lp) : json_array());
            else
                lp = c->lp ? json_incref(c->lp) : legacy_logprobs_new();
        }
        json_t *text = json_stringn(c->text.data ? c->text.data : "", c->text.len);
        json_t *ch;
        if (run->is_chat)
            ch = json_pack("{s:i,s:{s:s,s:o,s:n},s:o,s:s}", "index", i, "message", "role",
                           "assistant", "content", text, "refusal", "logprobs", lp, "finish_reason",
                           c->finish_reason);
        else
            ch = json_pack("{s:i,s:o,s:o,s:s}", "index", i, "text", text, "logprobs", lp,
                           "finish_reason", c->finish_reason);
        json_array_append_new(choices, ch);
    }
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:n,s:o,s:o}", "id", run->id, "object",
                          run->is_chat ? "chat.completion" : "text_completion", "created",
                          (json_int_t)run->created, "model", run->model, "system_fingerprint",
                          "choices", choices, "usage", usage_json(run));
    if (run->citations)
        json_object_set(o, "mcai_citations", run->citations);
    run_finish(run);
    return mc_http_reply_json(r, 200, o);
}

/* An adapter may be used when the front allows every model, names the adapter, or names
 * the base model it runs on. */
static bool front_allows_adapter(struct mc_server *s, const struct mc_front *f, const char *name) {
    return mc_front_allows_model(f, name) || mc_front_allows_model(f, s->model_id);
}

/* Resolves g->model: the base model (*ad NULL) or one of the tenant's own adapters (*ad
 * a new reference). false after replying; a name the tenant has no adapter of, another
 * tenant's included, gets the same 404 as any unknown name. */
static bool resolve_model(struct mc_server *s, struct mc_http_req *r, const struct mc_auth *a,
                          const struct mc_front *f, const char *model, struct mc_lora **ad,
                          enum MHD_Result *ret) {
    *ad = NULL;
    if (!model || strcmp(model, s->model_id) == 0) {
        if (mc_front_allows_model(f, s->model_id))
            return true;
        *ret = reply_model_not_found(r, model ? model : s->model_id);
        return false;
    }
    struct mc_err err = {0};
    int rc = front_allows_adapter(s, f, model)
                 ? mc_adapter_resolve(s, a->tenant, model, ad, NULL, &err)
                 : MC_ENOTFOUND;
    if (rc == MC_OK)
        return true;
    if (rc == MC_ENOTFOUND) {
        *ret = reply_model_not_found(r, model);
        return false;
    }
    MC_LOG_ERROR("api", "adapter_load_failed", "tenant=%s id=%s err=\"%s\"", a->tenant, r->id,
                 err.msg);
    *ret = mc_http_reply_error(r, 500, "server_error", "adapter_load_failed", "model",
                               "could not load the adapter (request %s)", r->id);
    return false;
}

/* The prompt's token ids: chat messages (all[0..n_all)) or the completion prompt, with
 * the grounded question ground (may be NULL) in place of the last user text or prompt. */
static int prompt_tokens(struct mc_server *s, const struct mc_front *f, const struct mc_auth *a,
                         const struct mc_api_gen *g, const struct mc_api_msg *all, int n_all,
                         const char *ground, int32_t **ids, size_t *n_ids, struct mc_err *err) {
    if (g->is_chat)
        return chat_tokens(s, f, a, all, n_all, ground, ids, n_ids, err);
    const char *input = ground ? ground : g->prompt;
    char *wrapped = f->template ? render_template(f, a, input, err) : NULL;
    if (f->template && !wrapped)
        return err->code;
    const char *text = wrapped ? wrapped : input;
    int rc =
        mc_tokenize(mc_model_tokenizer(s->model), text, strlen(text), true, false, ids, n_ids, err);
    mc_free(wrapped);
    return rc;
}

/* The question retrieval searches for: the last user message, or the prompt. */
static const char *ground_question(const struct mc_api_gen *g, const struct mc_api_msg *all,
                                   int n_all) {
    if (!g->is_chat)
        return g->prompt;
    for (int i = n_all - 1; i >= 0; i--)
        if (all[i].role == MC_ROLE_USER)
            return all[i].content;
    return NULL;
}

static enum MHD_Result generate(struct mc_server *s, struct mc_http_req *r, const struct mc_auth *a,
                                struct mc_api_gen *g) {
    enum MHD_Result ret = MHD_NO;
    struct mc_lora *adapter = NULL;
    struct mc_ground gr = {0};
    struct mc_front f;
    struct mc_api_msg *hist = NULL, *all = NULL;
    int n_hist = 0;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    struct mc_err err = {0};
    struct run *run = NULL;

    if (!load_front(s, r, a, &f, &ret))
        return ret;
    if (!resolve_model(s, r, a, &f, g->model, &adapter, &ret))
        goto out;

    /* Prompt tokens, with the conversation's history first when one is named. */
    int rc;
    if (g->is_chat) {
        if (g->conversation) {
            rc = mc_conv_load(s, a->tenant, g->conversation, &hist, &n_hist, &err);
            if (rc == MC_ENOTFOUND) {
                ret =
                    mc_http_reply_error(r, 404, "invalid_request_error", "conversation_not_found",
                                        "conversation", "no conversation '%.80s'", g->conversation);
                goto out;
            }
            if (rc != MC_OK)
                goto fail_500;
        }
        all = mc_calloc((size_t)(n_hist + g->n_msgs), sizeof(*all));
        if (!all)
            goto fail_500;
        if (n_hist)
            memcpy(all, hist, (size_t)n_hist * sizeof(*all));
        memcpy(all + n_hist, g->msgs, (size_t)g->n_msgs * sizeof(*all));
    }
    int n_all = g->is_chat ? n_hist + g->n_msgs : 0;
    if (!mc_ground_prepare(s, r, a, f.retrieval, ground_question(g, all, n_all), &gr, &ret))
        goto out;

    /* A grounded prompt sheds sources from the end until it leaves room for an answer
     * (what max_tokens asks, or GROUND_ROOM tokens, at most half the context). */
    int32_t ctx = s->n_ctx;
    if (f.context_limit > 0 && f.context_limit < ctx)
        ctx = f.context_limit;
    int32_t want = g->max_tokens > 0  ? g->max_tokens
                   : f.max_tokens > 0 ? f.max_tokens
                                      : GROUND_ROOM;
    if (want > ctx / 2)
        want = ctx / 2;
    for (;;) {
        rc = prompt_tokens(s, &f, a, g, all, n_all, gr.prompt, &ids, &n_ids, &err);
        if (rc != MC_OK || (int64_t)n_ids + want <= ctx || !mc_ground_shrink(&gr))
            break;
        mc_free(ids);
        ids = NULL;
        n_ids = 0;
    }
    if (rc == MC_EINVAL) {
        ret = mc_http_reply_error(r, 400, "invalid_request_error", "invalid_prompt", NULL,
                                  "could not build the prompt: %s", err.msg);
        goto out;
    }
    if (rc != MC_OK)
        goto fail_500;
    if (n_ids == 0) {
        ret = mc_http_reply_error(r, 400, "invalid_request_error", "invalid_prompt", "prompt",
                                  "the prompt is empty after tokenization");
        goto out;
    }

    if ((int64_t)n_ids >= ctx) {
        r->reject = "context_length";
        ret = mc_http_reply_error(r, 400, "invalid_request_error", "context_length_exceeded",
                                  g->is_chat ? "messages" : "prompt",
                                  "this model's maximum context length is %d tokens; the prompt "
                                  "has %zu tokens and leaves no room for a completion; shorten "
                                  "the %s",
                                  ctx, n_ids, g->is_chat ? "messages" : "prompt");
        goto out;
    }
    int32_t room = ctx - (int32_t)n_ids;
    int32_t max_tokens = g->max_tokens > 0 ? g->max_tokens : f.max_tokens > 0 ? f.max_tokens : room;
    if (f.max_tokens > 0 && max_tokens > f.max_tokens)
        max_tokens = f.max_tokens;
    if (max_tokens > room)
        max_tokens = room;

    /* Rate limits, charged with the most the request could use within them. */
    run = mc_calloc(1, sizeof(*run));
    if (!run)
        goto fail_500;
    pthread_mutex_init(&run->lock, NULL);
    pthread_cond_init(&run->cond, NULL);
    run->s = s;
    run->tok = mc_model_tokenizer(s->model);
    run->n = g->n;
    run->is_chat = g->is_chat;
    run->stream = g->stream;
    run->include_usage = g->stream && g->include_usage;
    run->logprobs = g->logprobs;
    run->top_logprobs = g->top_logprobs;
    run->n_prompt = (int32_t)n_ids;
    run->created = wall_ms() / 1000;
    run->fd = mc_http_fd(r);
    run->req = r;
    snprintf(run->id, sizeof(run->id), "%s-%s", g->is_chat ? "chatcmpl" : "cmpl", r->id + 4);
    snprintf(run->model, sizeof(run->model), "%s", adapter ? g->model : s->model_id);
    snprintf(run->adapter, sizeof(run->adapter), "%s", adapter ? g->model : "");
    snprintf(run->tenant, sizeof(run->tenant), "%s", a->tenant);
    struct mc_limits lim = {a->limits[0], a->limits[1], a->limits[2], a->limits[3]};
    int retry = 1;
    rc = mc_limit_acquire_upto(s->limiter, a->tenant, &lim, (int64_t)n_ids + g->n,
                               (int64_t)n_ids + (int64_t)max_tokens * g->n, wall_ms(),
                               &run->est_tokens, &retry, &err);
    if (rc == MC_ELIMIT) {
        r->reject = "rate_limit";
        ret = mc_http_reply_error_retry(r, 429, retry, "rate_limit_error", "rate_limit_exceeded",
                                        "%s", err.msg);
        goto out_free_run;
    }
    if (rc != MC_OK)
        goto fail_500;
    run->limit_held = true;
    /* The token limits grant what is left of them: each choice gets an equal share, and
     * one that reaches it ends with finish_reason "length". */
    if ((run->est_tokens - (int64_t)n_ids) / g->n < max_tokens)
        max_tokens = (int32_t)((run->est_tokens - (int64_t)n_ids) / g->n);
    run->citations = mc_ground_citations(&gr);
    if (g->is_chat && g->conversation) {
        run->conv_id = mc_strdup(g->conversation);
        run->conv_new = g->msgs; /* taken over: freed with the run */
        run->n_conv_new = g->n_msgs;
        g->msgs = NULL;
        g->n_msgs = 0;
    }

    /* One engine request per choice. */
    struct mc_engine_params p = {
        .tenant = a->tenant,
        .weight = (uint32_t)(a->weight > 0 ? a->weight : 1),
        .prompt = ids,
        .n_prompt = (int32_t)n_ids,
        .max_tokens = max_tokens,
        .stop = (const char *const *)g->stop,
        .n_stop = g->n_stop,
        .logprobs = g->logprobs,
        .top_logprobs = g->top_logprobs,
        .adapter = g->has_lora_scale && (float)g->lora_scale == 0 ? NULL : adapter,
        .adapter_scale = g->has_lora_scale ? (float)g->lora_scale : 1.0f,
    };
    fill_sampling(&p.sampling, &g->sampling, &f);
    for (int i = 0; i < g->n; i++) {
        run->cb[i] = (struct cb_ctx){run, i};
        struct mc_engine_sampling smp = p.sampling;
        smp.seed = p.sampling.seed + (uint64_t)i;
        struct mc_engine_params pi = p;
        pi.sampling = smp;
        rc = mc_engine_submit(s->engine, &pi, on_event, &run->cb[i], &run->ch[i].gen, &err);
        if (rc != MC_OK)
            break;
        run->n_submitted++;
    }
    if (rc != MC_OK) {
        ret = reply_engine_error(r, rc, &err);
        run_finish(run);
        run = NULL;
        goto out;
    }

    r->n_prompt = (int64_t)n_ids;
    if (g->stream) {
        mc_metrics_streams_add(s->metrics, 1);
        ret = mc_http_reply_stream(r, "text/event-stream", stream_read, stream_done, run);
    } else {
        ret = reply_whole(r, run);
    }
    run = NULL;
    goto out;

fail_500:
    MC_LOG_ERROR("api", "generate_failed", "tenant=%s id=%s err=\"%s\"", a->tenant, r->id, err.msg);
    ret = mc_http_reply_error(r, 500, "server_error", NULL, NULL, "internal error (request %s)",
                              r->id);
out_free_run:
    if (run) {
        pthread_mutex_destroy(&run->lock);
        pthread_cond_destroy(&run->cond);
        mc_free(run);
    }
out:
    /* The engine holds its own reference for each running choice. */
    mc_lora_release(adapter);
    mc_free(ids);
    mc_free(all);
    mc_api_msgs_free(hist, n_hist);
    mc_front_deinit(&f);
    mc_ground_deinit(&gr);
    return ret;
}

enum MHD_Result mc_api_chat(struct mc_server *s, struct mc_http_req *r, const struct mc_auth *a) {
    struct mc_api_gen g;
    struct mc_api_error e = {0};
    if (mc_api_parse_chat(r->body, r->body_len, &g, &e) != MC_OK)
        return mc_api_reply_error(r, &e);
    enum MHD_Result ret = generate(s, r, a, &g);
    mc_api_gen_free(&g);
    return ret;
}

enum MHD_Result mc_api_completions(struct mc_server *s, struct mc_http_req *r,
                                   const struct mc_auth *a) {
    struct mc_api_gen g;
    struct mc_api_error e = {0};
    if (mc_api_parse_completion(r->body, r->body_len, &g, &e) != MC_OK)
        return mc_api_reply_error(r, &e);
    enum MHD_Result ret = generate(s, r, a, &g);
    mc_api_gen_free(&g);
    return ret;
}

/* ---- Embeddings ------------------------------------------------------------------- */

/* Mean of the final-norm hidden states of every token of ids under the embedding model,
 * L2-normalised, into out (emb_n_embd floats). Called with embed_lock held. */
static int embed_one(struct mc_server *s, const int32_t *ids, size_t n, float *out,
                     struct mc_err *err) {
    int rc;
    const struct mc_hparams *hp = mc_model_hparams(s->emb_model);
    if (!s->embed_ctx) {
        rc = mc_ctx_create(s->emb_model, EMBED_CHUNK, s->n_threads, &s->embed_ctx, err);
        if (rc != MC_OK)
            return rc;
        if ((rc = mc_kv_create(s->emb_model, s->emb_n_ctx, &s->embed_kv, err)) != MC_OK)
            return rc;
    }
    float *logits = mc_malloc((size_t)EMBED_CHUNK * (size_t)hp->n_vocab * sizeof(float));
    float *hidden = mc_malloc((size_t)EMBED_CHUNK * (size_t)hp->n_embd * sizeof(float));
    struct mc_batch_row *rows = mc_malloc(EMBED_CHUNK * sizeof(*rows));
    if (!logits || !hidden || !rows) {
        rc = mc_err_set(err, MC_ENOMEM, "out of memory for embeddings");
        goto out;
    }
    double *sum = (double *)mc_calloc((size_t)hp->n_embd, sizeof(double));
    if (!sum) {
        rc = mc_err_set(err, MC_ENOMEM, "out of memory for embeddings");
        goto out;
    }
    mc_kv_truncate(s->embed_kv, 0);
    rc = MC_OK;
    for (size_t i = 0; i < n && rc == MC_OK; i += EMBED_CHUNK) {
        int32_t m = (int32_t)(n - i < EMBED_CHUNK ? n - i : EMBED_CHUNK);
        for (int32_t j = 0; j < m; j++)
            rows[j] = (struct mc_batch_row){.token = ids[i + (size_t)j],
                                            .pos = (int32_t)(i + (size_t)j),
                                            .kv = s->embed_kv,
                                            .want_logits = true};
        rc = mc_forward(s->embed_ctx, rows, m, logits, hidden, err);
        for (int32_t j = 0; j < m && rc == MC_OK; j++)
            for (int32_t d = 0; d < hp->n_embd; d++)
                sum[d] += hidden[(size_t)j * (size_t)hp->n_embd + (size_t)d];
    }
    if (rc == MC_OK) {
        double norm = 0;
        for (int32_t d = 0; d < hp->n_embd; d++) {
            sum[d] /= (double)n;
            norm += sum[d] * sum[d];
        }
        norm = sqrt(norm);
        for (int32_t d = 0; d < hp->n_embd; d++)
            out[d] = (float)(norm > 0 ? sum[d] / norm : 0.0);
    }
    mc_kv_truncate(s->embed_kv, 0);
    mc_free(sum);
out:
    mc_free(logits);
    mc_free(hidden);
    mc_free(rows);
    return rc;
}

static json_t *embedding_json(const float *v, int n, bool base64) {
    if (!base64) {
        json_t *a = json_array();
        for (int i = 0; i < n; i++)
            json_array_append_new(a, json_real(v[i]));
        return a;
    }
    /* Little-endian float32, as the OpenAI API encodes it. */
    size_t len = (size_t)n * 4;
    unsigned char *raw = mc_malloc(len);
    size_t b64_len = sodium_base64_encoded_len(len, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = mc_malloc(b64_len);
    json_t *j = NULL;
    if (raw && b64) {
        for (int i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &v[i], 4);
            for (int k = 0; k < 4; k++)
                raw[i * 4 + k] = (unsigned char)(u >> (8 * k));
        }
        sodium_bin2base64(b64, b64_len, raw, len, sodium_base64_VARIANT_ORIGINAL);
        j = json_string(b64);
    }
    mc_free(raw);
    mc_free(b64);
    return j;
}

enum MHD_Result mc_api_embeddings(struct mc_server *s, struct mc_http_req *r,
                                  const struct mc_auth *a) {
    struct mc_api_embed m;
    struct mc_api_error e = {0};
    if (mc_api_parse_embed(r->body, r->body_len, &m, &e) != MC_OK)
        return mc_api_reply_error(r, &e);
    enum MHD_Result ret;
    struct mc_front f;
    int32_t **ids = NULL;
    size_t *n_ids = NULL;
    float *vecs = NULL;
    struct mc_err err = {0};
    bool limit_held = false;
    int64_t total = 0;

    if (!load_front(s, r, a, &f, &ret)) {
        mc_api_embed_free(&m);
        return ret;
    }
    /* The embedding model answers to its own name and, for clients written before it
     * existed, the base model's; the name given and the embedding model must both pass
     * the front's allowed_models. */
    const char *name = m.model ? m.model : s->emb_model_id;
    bool known = strcmp(name, s->emb_model_id) == 0 || strcmp(name, s->model_id) == 0;
    if (!known || !mc_front_allows_model(&f, name) || !mc_front_allows_model(&f, s->emb_model_id)) {
        ret = reply_model_not_found(r, name);
        goto out;
    }
    if (m.dimensions && m.dimensions != s->emb_n_embd) {
        ret =
            mc_http_reply_error(r, 400, "invalid_request_error", "unsupported_value", "dimensions",
                                "'dimensions' is %d; this model's embeddings have "
                                "%d dimensions and cannot be shortened",
                                m.dimensions, s->emb_n_embd);
        goto out;
    }

    /* Tokenize everything first, so a too-long input fails before any work. */
    ids = mc_calloc((size_t)m.n_inputs, sizeof(*ids));
    n_ids = mc_calloc((size_t)m.n_inputs, sizeof(*n_ids));
    vecs = mc_malloc((size_t)m.n_inputs * (size_t)s->emb_n_embd * sizeof(float));
    if (!ids || !n_ids || !vecs)
        goto fail_500;
    for (int i = 0; i < m.n_inputs; i++) {
        if (mc_tokenize(mc_model_tokenizer(s->emb_model), m.inputs[i], strlen(m.inputs[i]), true,
                        false, &ids[i], &n_ids[i], &err) != MC_OK)
            goto fail_500;
        if ((int64_t)n_ids[i] > s->emb_n_ctx) {
            char param[32];
            snprintf(param, sizeof(param), m.n_inputs > 1 ? "input[%d]" : "input", i);
            r->reject = "context_length";
            ret = mc_http_reply_error(r, 400, "invalid_request_error", "context_length_exceeded",
                                      param,
                                      "'%s' has %zu tokens; this model's maximum context "
                                      "length is %d tokens",
                                      param, n_ids[i], s->emb_n_ctx);
            goto out;
        }
        total += (int64_t)n_ids[i];
    }
    struct mc_limits lim = {a->limits[0], a->limits[1], a->limits[2], a->limits[3]};
    int retry = 1;
    int rc = mc_limit_acquire(s->limiter, a->tenant, &lim, total, wall_ms(), &retry, &err);
    if (rc == MC_ELIMIT) {
        r->reject = "rate_limit";
        ret = mc_http_reply_error_retry(r, 429, retry, "rate_limit_error", "rate_limit_exceeded",
                                        "%s", err.msg);
        goto out;
    }
    if (rc != MC_OK)
        goto fail_500;
    limit_held = true;

    pthread_mutex_lock(&s->embed_lock);
    rc = MC_OK;
    for (int i = 0; i < m.n_inputs && rc == MC_OK; i++)
        rc = embed_one(s, ids[i], n_ids[i], vecs + (size_t)i * (size_t)s->emb_n_embd, &err);
    pthread_mutex_unlock(&s->embed_lock);
    if (rc != MC_OK)
        goto fail_500;

    json_t *data = json_array();
    for (int i = 0; i < m.n_inputs; i++) {
        const float *v = vecs + (size_t)i * (size_t)s->emb_n_embd;
        json_array_append_new(data,
                              json_pack("{s:s,s:i,s:o}", "object", "embedding", "index", i,
                                        "embedding", embedding_json(v, s->emb_n_embd, m.base64)));
    }
    r->n_prompt = total;
    ret = mc_http_reply_json(r, 200,
                             json_pack("{s:s,s:o,s:s,s:{s:I,s:I}}", "object", "list", "data", data,
                                       "model", s->emb_model_id, "usage", "prompt_tokens",
                                       (json_int_t)total, "total_tokens", (json_int_t)total));
    goto out;

fail_500:
    MC_LOG_ERROR("api", "embeddings_failed", "tenant=%s id=%s err=\"%s\"", a->tenant, r->id,
                 err.msg);
    ret = mc_http_reply_error(r, 500, "server_error", NULL, NULL, "internal error (request %s)",
                              r->id);
out:
    if (limit_held) {
        int64_t now = wall_ms();
        mc_limit_release(s->limiter, a->tenant, total, total, now);
        if (mc_usage_record(s->tenants, a->tenant, now, 1, total, 0, &err) != MC_OK)
            MC_LOG_WARN("api", "usage_record_failed", "tenant=%s err=\"%s\"", a->tenant, err.msg);
        mc_metrics_tokens(s->metrics, a->tenant, total, 0);
    }
    if (ids)
        for (int i = 0; i < m.n_inputs; i++)
            mc_free(ids[i]);
    mc_free(ids);
    mc_free(n_ids);
    mc_free(vecs);
    mc_front_deinit(&f);
    mc_api_embed_free(&m);
    return ret;
}

/* ---- Models and usage ------------------------------------------------------------- */

static json_t *model_json(struct mc_server *s) {
    return json_pack("{s:s,s:s,s:I,s:s}", "id", s->model_id, "object", "model", "created",
                     (json_int_t)s->model_created, "owned_by", "mcai");
}

/* The --embed-model model, marked as serving embeddings only. */
static json_t *embed_model_json(struct mc_server *s) {
    return json_pack("{s:s,s:s,s:I,s:s,s:s}", "id", s->emb_model_id, "object", "model", "created",
                     (json_int_t)s->emb_created, "owned_by", "mcai", "mcai_purpose", "embeddings");
}

/* One of the tenant's adapters as a model: "parent" names the base it runs on. */
static json_t *adapter_model_json(struct mc_server *s, const struct mc_auth *a,
                                  const struct mc_adapter_meta *m) {
    return json_pack("{s:s,s:s,s:I,s:s,s:s}", "id", m->name, "object", "model", "created",
                     (json_int_t)m->created, "owned_by", a->tenant, "parent", s->model_id);
}

enum MHD_Result mc_api_models(struct mc_server *s, struct mc_http_req *r, const struct mc_auth *a,
                              const char *model_id) {
    struct mc_front f;
    enum MHD_Result ret;
    if (!load_front(s, r, a, &f, &ret))
        return ret;
    bool allowed = mc_front_allows_model(&f, s->model_id);
    bool emb_allowed = s->emb_model != s->model && mc_front_allows_model(&f, s->emb_model_id);
    struct mc_adapter_meta *rows = NULL;
    size_t n = 0;
    struct mc_err err = {0};
    int rc = mc_adapter_list(s->store, a->tenant, &rows, &n, &err);
    if (rc != MC_OK) {
        mc_front_deinit(&f);
        MC_LOG_ERROR("api", "adapter_list_failed", "tenant=%s id=%s err=\"%s\"", a->tenant, r->id,
                     err.msg);
        return mc_http_reply_error(r, 500, "server_error", NULL, NULL,
                                   "internal error (request %s)", r->id);
    }
    json_t *one = NULL;
    json_t *data = json_array();
    if (allowed)
        json_array_append_new(data, model_json(s));
    if (emb_allowed)
        json_array_append_new(data, embed_model_json(s));
    for (size_t i = 0; i < n; i++) {
        if (!front_allows_adapter(s, &f, rows[i].name))
            continue;
        json_t *o = adapter_model_json(s, a, &rows[i]);
        if (model_id && strcmp(model_id, rows[i].name) == 0)
            one = json_incref(o);
        json_array_append_new(data, o);
    }
    mc_free(rows);
    mc_front_deinit(&f);
    if (model_id) {
        json_decref(data);
        if (!one && allowed && strcmp(model_id, s->model_id) == 0)
            one = model_json(s);
        if (!one && emb_allowed && strcmp(model_id, s->emb_model_id) == 0)
            one = embed_model_json(s);
        return one ? mc_http_reply_json(r, 200, one) : reply_model_not_found(r, model_id);
    }
    return mc_http_reply_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

json_t *mc_api_usage_json(struct mc_server *s, const char *tenant, int days, struct mc_err *err) {
    int64_t today = mc_usage_day(wall_ms());
    struct mc_usage *rows = NULL;
    size_t n = 0;
    if (mc_usage_list(s->tenants, tenant, today - days + 1, today, &rows, &n, err) != MC_OK)
        return NULL;
    json_t *data = json_array();
    int64_t req = 0, pt = 0, ct = 0;
    for (size_t i = 0; i < n; i++) {
        char date[11];
        mc_usage_day_string(rows[i].day, date);
        json_array_append_new(data,
                              json_pack("{s:s,s:I,s:I,s:I}", "date", date, "requests",
                                        (json_int_t)rows[i].requests, "prompt_tokens",
                                        (json_int_t)rows[i].prompt_tokens, "completion_tokens",
                                        (json_int_t)rows[i].completion_tokens));
        req += rows[i].requests;
        pt += rows[i].prompt_tokens;
        ct += rows[i].completion_tokens;
    }
    mc_free(rows);
    return json_pack("{s:s,s:s,s:i,s:o,s:{s:I,s:I,s:I}}", "object", "usage", "tenant", tenant,
                     "days", days, "data", data, "total", "requests", (json_int_t)req,
                     "prompt_tokens", (json_int_t)pt, "completion_tokens", (json_int_t)ct);
}

bool mc_api_days_param(struct mc_http_req *r, int *days, enum MHD_Result *ret) {
    const char *v = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "days");
    *days = 30;
    if (!v)
        return true;
    char *end = NULL;
    long d = strtol(v, &end, 10);
    if (!*v || *end || d < 1 || d > 366) {
        *ret = mc_http_reply_error(r, 400, "invalid_request_error", "invalid_value", "days",
                                   "'days' must be an integer from 1 to 366");
        return false;
    }
    *days = (int)d;
    return true;
}

enum MHD_Result mc_api_usage(struct mc_server *s, struct mc_http_req *r, const char *tenant) {
    int days;
    enum MHD_Result ret;
    if (!mc_api_days_param(r, &days, &ret))
        return ret;
    struct mc_err err = {0};
    json_t *o = mc_api_usage_json(s, tenant, days, &err);
    if (!o)
        return mc_http_reply_error(r, 500, "server_error", NULL, NULL,
                                   "could not read usage (request %s)", r->id);
    return mc_http_reply_json(r, 200, o);
}
