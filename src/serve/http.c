/* http.c - the HTTP layer of mcai serve, on libmicrohttpd.
 *
 * One thread per connection (MHD_USE_THREAD_PER_CONNECTION): a handler may block while
 * the engine works, and a stream reader blocks until the next tokens arrive. The body is
 * read into a buffer capped at max_body_bytes while it arrives: a body that passes the
 * cap (declared by Content-Length or found while reading a chunked one) is never stored;
 * the rest of it is read and discarded and the request answered 413 with an OpenAI error
 * body (bodies above 64 MiB are refused at once). Each request gets an id
 * (x-request-id) and, when it ends, one access-log line and one metrics sample through
 * on_done.
 *
 * What this file does not do: routing, authentication and JSON validation live in
 * server.c and api_*.c; it knows nothing of tenants beyond the label handlers set. */
#include "serve/serve_int.h"

#include "base/log.h"
#include "base/mem.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct mc_http {
    struct MHD_Daemon *daemon;
    struct mc_http_config cfg;
    int port;
    atomic_int n_open; /* requests between their first header and on_completed */
};

/* Largest oversized body read (and discarded) before answering 413. */
#define DISCARD_MAX ((unsigned long long)64 << 20)

static atomic_uint_fast64_t req_counter;
static atomic_llong boot_time;

int64_t mc_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- URL decoding ----------------------------------------------------------------- */

/* libmicrohttpd decodes the path in place and hands it over as a C string, so a %00
 * would cut an id short and the request would act on another object. The decoder
 * notes each string that decoded to hold a NUL; each connection has a thread of its
 * own, so the notes are thread-local and the request's first on_access call reads
 * them (whether its url is one of them) and clears them. */
enum { NUL_NOTES_MAX = 8 };
static _Thread_local const char *nul_notes[NUL_NOTES_MAX];
static _Thread_local int n_nul_notes;
static _Thread_local bool nul_notes_full; /* more than fit: treat the path as holding one */

static size_t on_unescape(void *cls, struct MHD_Connection *conn, char *s) {
    (void)cls, (void)conn;
    size_t n = MHD_http_unescape(s);
    if (memchr(s, '\0', n)) {
        if (n_nul_notes < NUL_NOTES_MAX)
            nul_notes[n_nul_notes++] = s;
        else
            nul_notes_full = true;
    }
    return n;
}

/* Whether url decoded to hold a NUL; forgets the notes, ready for the next request. */
static bool take_nul_note(const char *url) {
    bool nul = nul_notes_full;
    for (int i = 0; i < n_nul_notes; i++)
        nul |= nul_notes[i] == url;
    n_nul_notes = 0;
    nul_notes_full = false;
    return nul;
}

/* ---- Requests --------------------------------------------------------------------- */

static struct mc_http_req *req_new(struct mc_http *h, struct MHD_Connection *conn,
                                   const char *method, const char *url) {
    struct mc_http_req *r = mc_calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->conn = conn;
    r->http = h;
    r->user = h->cfg.user;
    r->method = method;
    r->url = url;
    r->t_start_ns = mc_now_ns();
    r->route = "other";
    atomic_fetch_add(&h->n_open, 1);
    /* Ids only need to be unique within one server's logs: a start-time prefix keeps
     * them distinct across restarts, the counter within one run. */
    snprintf(r->id, sizeof(r->id), "req_%08llx%08llx",
             (unsigned long long)(atomic_load(&boot_time) & 0xffffffff),
             (unsigned long long)atomic_fetch_add(&req_counter, 1));
    return r;
}

const char *mc_http_header(struct mc_http_req *r, const char *name) {
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *mc_http_bearer(struct mc_http_req *r) {
    const char *v = mc_http_header(r, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!v || strncasecmp(v, "Bearer ", 7) != 0)
        return NULL;
    v += 7;
    while (*v == ' ')
        v++;
    return *v ? v : NULL;
}

int mc_http_fd(struct mc_http_req *r) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

bool mc_http_fd_alive(int fd) {
    if (fd < 0)
        return true;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    int n = poll(&p, 1, 0);
    if (n <= 0)
        return true;
    return !(p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

bool mc_http_alive(struct mc_http_req *r) {
    return mc_http_fd_alive(mc_http_fd(r));
}

/* ---- Responses -------------------------------------------------------------------- */

static enum MHD_Result queue(struct mc_http_req *r, unsigned status, struct MHD_Response *resp,
                             const char *ctype) {
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, "x-request-id", r->id);
    r->status = (int)status;
    enum MHD_Result ret = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

enum MHD_Result mc_http_reply_text(struct mc_http_req *r, unsigned status, const char *ctype,
                                   const char *text, size_t len) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
    return queue(r, status, resp, ctype);
}

enum MHD_Result mc_http_reply_json(struct mc_http_req *r, unsigned status, json_t *obj) {
    char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!s) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                  "\"server_error\",\"param\":null,\"code\":null}}";
        return mc_http_reply_text(r, 500, "application/json", oom, sizeof(oom) - 1);
    }
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
    if (!resp)
        free(s);
    return queue(r, status, resp, "application/json");
}

static const char *type_for_status(unsigned status) {
    switch (status) {
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 429:
        return "rate_limit_error";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

json_t *mc_http_error_body(const char *message, const char *type, const char *code,
                           const char *param) {
    json_t *e = json_object();
    json_object_set_new(e, "message", json_string(message));
    json_object_set_new(e, "type", json_string(type ? type : "invalid_request_error"));
    json_object_set_new(e, "param", param && *param ? json_string(param) : json_null());
    json_object_set_new(e, "code", code && *code ? json_string(code) : json_null());
    json_t *o = json_object();
    json_object_set_new(o, "error", e);
    return o;
}

static enum MHD_Result reply_error_v(struct mc_http_req *r, unsigned status, int retry_after_s,
                                     const char *type, const char *code, const char *param,
                                     const char *fmt, va_list ap) {
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    json_t *body = mc_http_error_body(msg, type ? type : type_for_status(status), code, param);
    char *s = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!s)
        return MHD_NO;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(s);
        return MHD_NO;
    }
    if (retry_after_s > 0) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%d", retry_after_s);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    return queue(r, status, resp, "application/json");
}

enum MHD_Result mc_http_reply_error(struct mc_http_req *r, unsigned status, const char *type,
                                    const char *code, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    enum MHD_Result ret = reply_error_v(r, status, 0, type, code, param, fmt, ap);
    va_end(ap);
    return ret;
}

enum MHD_Result mc_http_reply_error_retry(struct mc_http_req *r, unsigned status, int retry_after_s,
                                          const char *type, const char *code, const char *fmt,
                                          ...) {
    va_list ap;
    va_start(ap, fmt);
    enum MHD_Result ret =
        reply_error_v(r, status, retry_after_s < 1 ? 1 : retry_after_s, type, code, NULL, fmt, ap);
    va_end(ap);
    return ret;
}

enum MHD_Result mc_http_reply_stream(struct mc_http_req *r, const char *ctype,
                                     ssize_t (*read)(void *ctx, uint64_t pos, char *buf,
                                                     size_t max),
                                     void (*done)(void *ctx), void *ctx) {
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, read, ctx, done);
    if (!resp) {
        done(ctx);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    return queue(r, 200, resp, ctype);
}

/* ---- libmicrohttpd callbacks ------------------------------------------------------ */

static enum MHD_Result too_large(struct mc_http_req *r) {
    r->route = "body";
    r->reject = "body_too_large";
    return mc_http_reply_error(r, 413, "invalid_request_error", "request_too_large", NULL,
                               "request body exceeds the limit of %zu bytes; send less or "
                               "raise %s",
                               r->max_body,
                               r->max_body == r->http->cfg.max_body_bytes
                                   ? "max_body_bytes"
                                   : "the server's upload limit");
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls) {
    (void)version;
    struct mc_http *h = cls;
    struct mc_http_req *r = *con_cls;

    /* First call: only the headers are in. A declared body above the cap is read and
     * thrown away, then refused: answering before the client has sent it all would make
     * the kernel reset the connection and many clients would lose the 413. A body beyond
     * DISCARD_MAX is not worth reading: it is refused at once and the connection closed. */
    if (!r) {
        r = req_new(h, conn, method, url);
        if (!r)
            return MHD_NO;
        *con_cls = r;
        r->path_nul = take_nul_note(url);
        r->max_body = h->cfg.max_body_bytes;
        if (h->cfg.body_limit) {
            size_t lim = h->cfg.body_limit(r);
            r->max_body = lim ? lim : h->cfg.max_body_bytes;
        }
        const char *cl =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        unsigned long long declared = cl ? strtoull(cl, NULL, 10) : 0;
        if (declared > r->max_body)
            r->body_too_large = true;
        if (declared > DISCARD_MAX && declared > r->max_body) {
            r->started = true;
            return too_large(r);
        }
        return MHD_YES;
    }

    if (*upload_size > 0) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->body_too_large || r->body_len + n > r->max_body) {
            r->body_too_large = true;
            mc_free(r->body);
            r->body = NULL;
            r->body_len = r->body_cap = 0;
            return MHD_YES;
        }
        if (r->body_len + n + 1 > r->body_cap) {
            /* Doubling keeps a body that arrives in many small pieces linear to copy. */
            size_t cap = r->body_cap ? r->body_cap : 4096;
            while (cap < r->body_len + n + 1)
                cap *= 2;
            char *nb = mc_realloc(r->body, cap);
            if (!nb)
                return MHD_NO;
            r->body = nb;
            r->body_cap = cap;
        }
        memcpy(r->body + r->body_len, upload, n);
        r->body_len += n;
        r->body[r->body_len] = '\0';
        return MHD_YES;
    }

    if (r->started)
        return MHD_YES;
    r->started = true;
    if (r->body_too_large)
        return too_large(r);
    if (r->path_nul)
        return mc_http_reply_error(r, 404, "invalid_request_error", "unknown_url", NULL,
                                   "the path holds a NUL byte (%%00); no route or id does");
    return h->cfg.handler(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode code) {
    (void)conn;
    struct mc_http *h = cls;
    struct mc_http_req *r = *con_cls;
    if (!r)
        return;
    if (code != MHD_REQUEST_TERMINATED_COMPLETED_OK && r->status == 0)
        r->status = 499; /* the client left before any response went out */
    if (h->cfg.on_done)
        h->cfg.on_done(r, h->cfg.user);
    mc_free(r->body);
    mc_free(r);
    *con_cls = NULL;
    atomic_fetch_sub(&h->n_open, 1);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[256];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    MC_LOG_DEBUG("http", "mhd", "msg=\"%s\"", msg);
}

/* ---- Start and stop --------------------------------------------------------------- */

int mc_http_start(const struct mc_http_config *cfg, struct mc_http **out, struct mc_err *err) {
    *out = NULL;
    if (cfg->port < 0 || cfg->port > 65535)
        return mc_err_set(err, MC_EINVAL, "port %d out of range 0..65535", cfg->port);

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg->port)};
    const char *host = cfg->host && *cfg->host ? cfg->host : "0.0.0.0";
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        return mc_err_set(err, MC_EINVAL, "host '%s' is not an IPv4 address (use e.g. 127.0.0.1)",
                          host);

    struct mc_http *h = mc_calloc(1, sizeof(*h));
    if (!h)
        return mc_err_set(err, MC_ENOMEM, "out of memory");
    h->cfg = *cfg;
    atomic_store(&boot_time, (long long)time(NULL));
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    h->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_access, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_UNESCAPE_CALLBACK, on_unescape,
        NULL, MHD_OPTION_CONNECTION_LIMIT,
        cfg->max_connections ? cfg->max_connections : 1024u, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)120, MHD_OPTION_THREAD_STACK_SIZE, (size_t)(1u << 20), MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_log, NULL, MHD_OPTION_END);
    if (!h->daemon) {
        mc_free(h);
        return mc_err_set(err, MC_EIO, "cannot listen on %s:%d (port in use or not permitted)",
                          host, cfg->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : cfg->port;
    *out = h;
    return MC_OK;
}

int mc_http_port(const struct mc_http *h) {
    return h->port;
}

void mc_http_quiesce(struct mc_http *h) {
    if (h && h->daemon) {
        MHD_socket s = MHD_quiesce_daemon(h->daemon);
        if (s != MHD_INVALID_SOCKET)
            close(s);
    }
}

bool mc_http_wait_idle(struct mc_http *h, int64_t timeout_ms) {
    int64_t end = mc_now_ns() + timeout_ms * 1000000;
    while (atomic_load(&h->n_open) > 0) {
        if (mc_now_ns() >= end)
            return false;
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
    return true;
}

void mc_http_stop(struct mc_http *h) {
    if (!h)
        return;
    if (h->daemon)
        MHD_stop_daemon(h->daemon);
    mc_free(h);
}
