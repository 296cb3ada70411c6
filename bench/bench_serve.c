/* bench_serve.c - what the HTTP server adds on top of the engine, and how many streams it
 * holds. Runs a real server in this process (temporary data directory, stories260K by
 * default) and drives it with libcurl.
 *
 * Table 1, added latency: the same one-token chat request (max_tokens 1, greedy) sent by
 * 1, 16 and 64 concurrent clients, (a) straight to the engine (mc_engine_submit to DONE:
 * model time, queueing included) and (b) over HTTP (key lookup, front, JSON, template,
 * tokenizer, limits, engine, usage, audit). p50 and p99 of each and the difference of the
 * two at the same concurrency is the latency the server adds. Also GET /v1/models, the
 * cheapest authenticated route.
 * Table 2, open streams: N streaming requests (default 1,000, max_tokens 32) opened at
 * once over N connections from 10 tenants; all must end with [DONE]. Reports wall time,
 * and the peaks of open streams and threads (from /metrics) and of resident memory.
 * Usage: bench_serve [MODEL] [N_STREAMS]. About 20 s. Not a test: nothing asserted. */
#include "base/mem.h"
#include "model/chat.h"
#include "model/model.h"
#include "serve/engine.h"
#include "serve/serve_int.h"
#include "serve/server.h"
#include "store/crypto.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

enum { PER_CLIENT = 40, MAX_CLIENTS = 64, N_TENANTS = 10 };

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p) {
    qsort(v, n, sizeof(*v), cmp_double);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i];
}

/* ---- HTTP helpers ----------------------------------------------------------------- */

static char base_url[64];
static char admin_key[64];

static size_t to_buf(char *p, size_t size, size_t n, void *user) {
    mc_buf_append(user, p, size * n);
    return size * n;
}

/* One request on handle c (reused for keep-alive); the body into out when non-NULL. */
static long request(CURL *c, const char *method, const char *path, const char *key,
                    const char *body, struct mc_buf *out) {
    char url[256], auth[128];
    snprintf(url, sizeof(url), "%s%s", base_url, path);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", key);
    struct curl_slist *h = curl_slist_append(NULL, auth);
    struct mc_buf sink = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    if (!body)
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, to_buf);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out ? out : &sink);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    mc_buf_free(&sink);
    return status;
}

/* The value of "field":"..." in a JSON text (first occurrence), into out. */
static void field(const char *json, const char *name, char *out, size_t size) {
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":\"", name);
    const char *p = json ? strstr(json, pat) : NULL;
    out[0] = '\0';
    if (!p)
        return;
    p += strlen(pat);
    const char *e = strchr(p, '"');
    snprintf(out, size, "%.*s", e ? (int)(e - p) : 0, p);
}

/* ---- Table 1: latency ------------------------------------------------------------- */

static const char *chat_body = "{\"messages\":[{\"role\":\"user\",\"content\":\"Once upon a "
                               "time\"}],\"max_tokens\":1,\"temperature\":0}";

struct client {
    pthread_t th;
    int mode; /* 0 engine, 1 HTTP chat, 2 HTTP models */
    const char *key;
    struct mc_server *srv;
    const int32_t *prompt;
    int32_t n_prompt;
    double lat[PER_CLIENT];
};

struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
};

static void on_engine_event(const struct mc_engine_event *ev, void *user) {
    struct waiter *w = user;
    if (ev->type == MC_ENGINE_EV_TEXT)
        return;
    pthread_mutex_lock(&w->lock);
    w->done = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void *client_main(void *arg) {
    struct client *c = arg;
    CURL *h = c->mode ? curl_easy_init() : NULL;
    for (int i = 0; i < PER_CLIENT; i++) {
        double t0 = now_s();
        if (c->mode == 1) {
            request(h, "POST", "/v1/chat/completions", c->key, chat_body, NULL);
        } else if (c->mode == 2) {
            request(h, "GET", "/v1/models", c->key, NULL, NULL);
        } else {
            struct waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false};
            struct mc_engine_params p = {
                .tenant = c->key, .prompt = c->prompt, .n_prompt = c->n_prompt, .max_tokens = 1};
            if (mc_engine_submit(c->srv->engine, &p, on_engine_event, &w, NULL, NULL) == MC_OK) {
                pthread_mutex_lock(&w.lock);
                while (!w.done)
                    pthread_cond_wait(&w.cond, &w.lock);
                pthread_mutex_unlock(&w.lock);
            }
        }
        c->lat[i] = now_s() - t0;
    }
    if (h)
        curl_easy_cleanup(h);
    return NULL;
}

/* Runs n_clients clients in one mode; p50 and p99 in ms. */
static void run_clients(struct client *tmpl, int n_clients, double *p50, double *p99) {
    static struct client cl[MAX_CLIENTS];
    static double all[MAX_CLIENTS * PER_CLIENT];
    for (int i = 0; i < n_clients; i++) {
        cl[i] = *tmpl;
        pthread_create(&cl[i].th, NULL, client_main, &cl[i]);
    }
    size_t n = 0;
    for (int i = 0; i < n_clients; i++) {
        pthread_join(cl[i].th, NULL);
        for (int k = 0; k < PER_CLIENT; k++)
            all[n++] = cl[i].lat[k] * 1e3;
    }
    *p50 = pct(all, n, 0.50);
    *p99 = pct(all, n, 0.99);
}

static void table_latency(struct mc_server *srv, const char *key, const char *tenant) {
    const struct mc_tokenizer *tok = mc_model_tokenizer(srv->model);
    struct mc_chat_msg msg = {"user", "Once upon a time"};
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (mc_chat_tokenize(tok, mc_model_chat_template(srv->model), &msg, 1, true, &ids, &n_ids,
                         NULL) != MC_OK)
        return;
    printf("Table 1: one-token chat request, %d requests per client (ms)\n", PER_CLIENT);
    printf("%8s %10s %10s %10s %10s %12s %12s %10s %10s\n", "clients", "engine p50", "engine p99",
           "http p50", "http p99", "added p50", "added p99", "models p50", "models p99");
    int conc[] = {1, 16, 64};
    for (int i = 0; i < 3; i++) {
        struct client t = {.srv = srv, .prompt = ids, .n_prompt = (int32_t)n_ids};
        double e50, e99, h50, h99, m50, m99;
        t.mode = 0;
        t.key = tenant;
        run_clients(&t, conc[i], &e50, &e99);
        t.mode = 1;
        t.key = key;
        run_clients(&t, conc[i], &h50, &h99);
        t.mode = 2;
        run_clients(&t, conc[i], &m50, &m99);
        printf("%8d %10.2f %10.2f %10.2f %10.2f %12.2f %12.2f %10.2f %10.2f\n", conc[i], e50, e99,
               h50, h99, h50 - e50, h99 - e99, m50, m99);
    }
    mc_free(ids);
}

/* ---- Table 2: open streams -------------------------------------------------------- */

struct stream {
    struct mc_buf body;
    struct curl_slist *hdr;
};

static double metric(CURL *c, const char *name) {
    struct mc_buf b = {0};
    request(c, "GET", "/metrics", "", NULL, &b);
    const char *p = b.data ? strstr(b.data, name) : NULL;
    double v = p ? atof(p + strlen(name)) : -1;
    mc_buf_free(&b);
    return v;
}

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            v = atol(line + 6);
    if (f)
        fclose(f);
    return v;
}

static void table_streams(char keys[][64], int n_streams) {
    CURLM *m = curl_multi_init();
    curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)n_streams + 16);
    struct stream *st = mc_calloc((size_t)n_streams, sizeof(*st));
    CURL **hs = mc_calloc((size_t)n_streams, sizeof(*hs));
    char url[128];
    snprintf(url, sizeof(url), "%s/v1/chat/completions", base_url);
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"Tell a story\"}],"
                       "\"max_tokens\":32,\"stream\":true}";
    long rss0 = rss_kib();
    double t0 = now_s();
    for (int i = 0; i < n_streams; i++) {
        char auth[128];
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", keys[i % N_TENANTS]);
        st[i].hdr = curl_slist_append(NULL, auth);
        hs[i] = curl_easy_init();
        curl_easy_setopt(hs[i], CURLOPT_URL, url);
        curl_easy_setopt(hs[i], CURLOPT_HTTPHEADER, st[i].hdr);
        curl_easy_setopt(hs[i], CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(hs[i], CURLOPT_WRITEFUNCTION, to_buf);
        curl_easy_setopt(hs[i], CURLOPT_WRITEDATA, &st[i].body);
        curl_multi_add_handle(m, hs[i]);
    }
    CURL *probe = curl_easy_init();
    double peak_streams = 0, peak_threads = 0;
    long peak_rss = rss0;
    int running = 1;
    double last_probe = 0;
    while (running) {
        curl_multi_perform(m, &running);
        curl_multi_poll(m, NULL, 0, 50, NULL);
        if (now_s() - last_probe > 0.2) {
            last_probe = now_s();
            double s = metric(probe, "\nmcai_open_streams ");
            peak_streams = s > peak_streams ? s : peak_streams;
            double t = metric(probe, "\nmcai_process_threads ");
            peak_threads = t > peak_threads ? t : peak_threads;
            long r = rss_kib();
            peak_rss = r > peak_rss ? r : peak_rss;
        }
    }
    double wall = now_s() - t0;
    int n_done = 0;
    for (int i = 0; i < n_streams; i++) {
        if (st[i].body.data && strstr(st[i].body.data, "data: [DONE]\n\n"))
            n_done++;
        curl_multi_remove_handle(m, hs[i]);
        curl_easy_cleanup(hs[i]);
        curl_slist_free_all(st[i].hdr);
        mc_buf_free(&st[i].body);
    }
    curl_easy_cleanup(probe);
    curl_multi_cleanup(m);
    mc_free(st);
    mc_free(hs);
    printf("\nTable 2: %d streaming requests (max_tokens 32) opened at once, %d tenants\n",
           n_streams, N_TENANTS);
    printf("ended with [DONE]: %d of %d; wall %.2f s; peak open streams %.0f; "
           "peak RSS %.1f MiB (%.1f MiB before, client included); peak threads %.0f\n",
           n_done, n_streams, wall, peak_streams, (double)peak_rss / 1024.0, (double)rss0 / 1024.0,
           peak_threads);
}

/* ---- Main ------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    const char *shared = getenv("MCAI_SHARED");
    char model[512];
    snprintf(model, sizeof(model), "%s/models/stories260K.gguf", shared ? shared : "../shared");
    const char *model_path = argc > 1 ? argv[1] : model;
    int n_streams = argc > 2 ? atoi(argv[2]) : 1000;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct mc_err err = {0};
    char dir[] = "/tmp/mcai-bench-serve.XXXXXX";
    if (mc_crypto_init(&err) != MC_OK || !mkdtemp(dir)) {
        fprintf(stderr, "bench_serve: setup failed: %s\n", err.msg);
        return 1;
    }
    unsigned char raw[32];
    char hex[65];
    mc_crypto_random(raw, sizeof(raw));
    mc_crypto_hex(raw, sizeof(raw), hex);
    mc_crypto_random(raw, 16);
    mc_crypto_hex(raw, 16, admin_key);
    struct mc_master_key *mk = NULL;
    if (mc_master_key_parse(hex, &mk, &err) != MC_OK) {
        fprintf(stderr, "bench_serve: %s\n", err.msg);
        return 1;
    }
    struct mc_server_config cfg = {.model_path = model_path,
                                   .data_dir = dir,
                                   .port = 0,
                                   .master_key = mk,
                                   .admin_key = admin_key,
                                   .n_ctx = 512,
                                   .max_connections = (unsigned)n_streams + 64,
                                   .max_queue = n_streams};
    struct mc_server *srv = NULL;
    if (mc_server_create(&cfg, &srv, &err) != MC_OK || mc_server_load(srv, &err) != MC_OK) {
        fprintf(stderr, "bench_serve: %s\n", err.msg);
        return 1;
    }
    snprintf(base_url, sizeof(base_url), "http://127.0.0.1:%d", mc_server_port(srv));

    /* Tenants and keys through the admin API. */
    CURL *c = curl_easy_init();
    char keys[N_TENANTS][64], tenant0[64] = "";
    for (int i = 0; i < N_TENANTS; i++) {
        char body[64], path[128], id[64];
        struct mc_buf out = {0};
        snprintf(body, sizeof(body), "{\"name\":\"bench%d\"}", i);
        request(c, "POST", "/admin/tenants", admin_key, body, &out);
        field(out.data, "id", id, sizeof(id));
        if (i == 0)
            snprintf(tenant0, sizeof(tenant0), "%s", id);
        mc_buf_free(&out);
        snprintf(path, sizeof(path), "/admin/tenants/%s/keys", id);
        request(c, "POST", path, admin_key, "", &out);
        field(out.data, "key", keys[i], sizeof(keys[i]));
        mc_buf_free(&out);
    }
    curl_easy_cleanup(c);
    printf("model %s, server at %s, %d CPUs\n\n", srv->model_id, base_url,
           (int)sysconf(_SC_NPROCESSORS_ONLN));

    table_latency(srv, keys[0], tenant0);
    table_streams(keys, n_streams);

    mc_server_free(srv);
    mc_master_key_free(mk);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_serve: could not remove %s\n", dir);
    curl_global_cleanup();
    return 0;
}
