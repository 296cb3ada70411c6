/* metrics.c - the server's Prometheus figures, rendered as text at GET /metrics.
 *
 * Counters and histograms are kept per tenant (label tenant="<id>", "" for requests that
 * never authenticated) in a hash table of small records, under one mutex: a request
 * touches it a few times, far less often than the engine produces tokens. Families:
 *   mcai_requests_total{tenant,route,status}      counter
 *   mcai_rejections_total{tenant,reason}          counter
 *   mcai_prompt_tokens_total{tenant}              counter
 *   mcai_completion_tokens_total{tenant}          counter
 *   mcai_time_to_first_token_seconds{tenant}      histogram
 *   mcai_inter_token_seconds{tenant}              histogram
 *   mcai_adapter_requests_total{tenant,adapter}   counter
 *   mcai_adapter_prompt_tokens_total{tenant,adapter}, ..._completion_tokens_total
 *   mcai_open_streams                             gauge
 *   mcai_process_*                                process figures from /proc/self
 * plus what the owner's gauges callback appends for the server and for each tenant seen
 * (queue depth, active sequences).
 * Memory grows with the number of distinct (tenant, route, status) triples seen, which
 * the server bounds by using route templates, never raw paths. */
#include "serve/serve_int.h"

#include "base/mem.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { N_BUCKETS_TABLE = 256, N_HIST = 12 };

static const double ttft_bounds[N_HIST] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                           0.5,   1,    2.5,   5,    10,  30};
static const double itl_bounds[N_HIST] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                          0.05,   0.1,   0.25,   0.5,   1,    2.5};

struct hist {
    uint64_t bucket[N_HIST]; /* non-cumulative; cumulated when rendered */
    uint64_t count;
    double sum;
};

struct labelled {
    char label[64]; /* route template or rejection reason */
    int status;
    uint64_t count;
    struct labelled *next;
};

/* Generations of one tenant with one of its adapters. */
struct adapter_rec {
    char name[72];
    uint64_t requests, n_prompt, n_completion;
    struct adapter_rec *next;
};

struct tenant_rec {
    char tenant[64];
    struct adapter_rec *adapters;
    uint64_t n_prompt, n_completion;
    struct hist ttft, itl;
    struct labelled *requests;
    struct labelled *rejections;
    struct tenant_rec *next;
};

struct mc_metrics {
    pthread_mutex_t lock;
    struct tenant_rec *table[N_BUCKETS_TABLE];
    int open_streams;
    time_t start_time;
};

int mc_metrics_create(struct mc_metrics **out, struct mc_err *err) {
    struct mc_metrics *m = mc_calloc(1, sizeof(*m));
    if (!m)
        return mc_err_set(err, MC_ENOMEM, "out of memory for metrics");
    pthread_mutex_init(&m->lock, NULL);
    m->start_time = time(NULL);
    *out = m;
    return MC_OK;
}

static void free_list(struct labelled *l) {
    while (l) {
        struct labelled *n = l->next;
        mc_free(l);
        l = n;
    }
}

void mc_metrics_free(struct mc_metrics *m) {
    if (!m)
        return;
    for (int i = 0; i < N_BUCKETS_TABLE; i++) {
        struct tenant_rec *t = m->table[i];
        while (t) {
            struct tenant_rec *n = t->next;
            free_list(t->requests);
            free_list(t->rejections);
            while (t->adapters) {
                struct adapter_rec *a = t->adapters->next;
                mc_free(t->adapters);
                t->adapters = a;
            }
            mc_free(t);
            t = n;
        }
    }
    pthread_mutex_destroy(&m->lock);
    mc_free(m);
}

/* ---- Recording (callers hold no lock; each function takes it) ---------------------- */

static unsigned hash_str(const char *s) {
    unsigned h = 2166136261u;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 16777619u;
    return h;
}

/* The record of tenant, created on first use; NULL when memory runs out (the sample is
 * then dropped, which only makes a figure low). Called with the lock held. */
static struct tenant_rec *rec_get(struct mc_metrics *m, const char *tenant) {
    const char *t = tenant ? tenant : "";
    unsigned b = hash_str(t) % N_BUCKETS_TABLE;
    for (struct tenant_rec *r = m->table[b]; r; r = r->next)
        if (strcmp(r->tenant, t) == 0)
            return r;
    struct tenant_rec *r = mc_calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    snprintf(r->tenant, sizeof(r->tenant), "%s", t);
    r->next = m->table[b];
    m->table[b] = r;
    return r;
}

static void bump(struct labelled **list, const char *label, int status) {
    for (struct labelled *l = *list; l; l = l->next) {
        if (l->status == status && strcmp(l->label, label) == 0) {
            l->count++;
            return;
        }
    }
    struct labelled *l = mc_calloc(1, sizeof(*l));
    if (!l)
        return;
    snprintf(l->label, sizeof(l->label), "%s", label);
    l->status = status;
    l->count = 1;
    l->next = *list;
    *list = l;
}

static void observe(struct hist *h, const double *bounds, double v) {
    for (int i = 0; i < N_HIST; i++) {
        if (v <= bounds[i]) {
            h->bucket[i]++;
            break;
        }
    }
    h->count++;
    h->sum += v;
}

void mc_metrics_request(struct mc_metrics *m, const char *tenant, const char *route, int status) {
    pthread_mutex_lock(&m->lock);
    struct tenant_rec *r = rec_get(m, tenant);
    if (r)
        bump(&r->requests, route ? route : "other", status);
    pthread_mutex_unlock(&m->lock);
}

void mc_metrics_rejection(struct mc_metrics *m, const char *tenant, const char *reason) {
    pthread_mutex_lock(&m->lock);
    struct tenant_rec *r = rec_get(m, tenant);
    if (r)
        bump(&r->rejections, reason, 0);
    pthread_mutex_unlock(&m->lock);
}

void mc_metrics_tokens(struct mc_metrics *m, const char *tenant, int64_t n_prompt,
                       int64_t n_completion) {
    pthread_mutex_lock(&m->lock);
    struct tenant_rec *r = rec_get(m, tenant);
    if (r) {
        r->n_prompt += (uint64_t)(n_prompt > 0 ? n_prompt : 0);
        r->n_completion += (uint64_t)(n_completion > 0 ? n_completion : 0);
    }
    pthread_mutex_unlock(&m->lock);
}

void mc_metrics_adapter(struct mc_metrics *m, const char *tenant, const char *adapter,
                        int64_t n_prompt, int64_t n_completion) {
    pthread_mutex_lock(&m->lock);
    struct tenant_rec *r = rec_get(m, tenant);
    struct adapter_rec *a = r ? r->adapters : NULL;
    while (a && strcmp(a->name, adapter) != 0)
        a = a->next;
    if (r && !a && (a = mc_calloc(1, sizeof(*a)))) {
        snprintf(a->name, sizeof(a->name), "%s", adapter);
        a->next = r->adapters;
        r->adapters = a;
    }
    if (a) {
        a->requests++;
        a->n_prompt += (uint64_t)(n_prompt > 0 ? n_prompt : 0);
        a->n_completion += (uint64_t)(n_completion > 0 ? n_completion : 0);
    }
    pthread_mutex_unlock(&m->lock);
}

void mc_metrics_ttft(struct mc_metrics *m, const char *tenant, double seconds) {
    pthread_mutex_lock(&m->lock);
    struct tenant_rec *r = rec_get(m, tenant);
    if (r)
        observe(&r->ttft, ttft_bounds, seconds);
    pthread_mutex_unlock(&m->lock);
}

void mc_metrics_inter_token(struct mc_metrics *m, const char *tenant, double seconds) {
    pthread_mutex_lock(&m->lock);
    struct tenant_rec *r = rec_get(m, tenant);
    if (r)
        observe(&r->itl, itl_bounds, seconds);
    pthread_mutex_unlock(&m->lock);
}

void mc_metrics_streams_add(struct mc_metrics *m, int delta) {
    pthread_mutex_lock(&m->lock);
    m->open_streams += delta;
    pthread_mutex_unlock(&m->lock);
}

/* ---- Rendering -------------------------------------------------------------------- */

static void render_hist(struct mc_buf *o, const char *name, const char *tenant,
                        const struct hist *h, const double *bounds) {
    uint64_t cum = 0;
    for (int i = 0; i < N_HIST; i++) {
        cum += h->bucket[i];
        mc_buf_printf(o, "%s_bucket{tenant=\"%s\",le=\"%g\"} %llu\n", name, tenant, bounds[i],
                      (unsigned long long)cum);
    }
    mc_buf_printf(o, "%s_bucket{tenant=\"%s\",le=\"+Inf\"} %llu\n", name, tenant,
                  (unsigned long long)h->count);
    mc_buf_printf(o, "%s_sum{tenant=\"%s\"} %.6f\n", name, tenant, h->sum);
    mc_buf_printf(o, "%s_count{tenant=\"%s\"} %llu\n", name, tenant, (unsigned long long)h->count);
}

/* Process figures from /proc/self: resident memory, CPU time, threads, open files. */
static void render_process(struct mc_buf *o, time_t start_time) {
    long page = sysconf(_SC_PAGESIZE);
    long ticks = sysconf(_SC_CLK_TCK);
    unsigned long long size = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%llu %llu", &size, &rss) != 2)
            size = rss = 0;
        fclose(f);
    }
    unsigned long long ut = 0, st = 0;
    long threads = 0;
    f = fopen("/proc/self/stat", "r");
    if (f) {
        char line[1024];
        if (fgets(line, sizeof(line), f)) {
            /* Fields after the command name, which may contain spaces, start at ')'. */
            char *p = strrchr(line, ')');
            if (p && sscanf(p + 2,
                            "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu "
                            "%*d %*d %*d %*d %ld",
                            &ut, &st, &threads) != 3)
                ut = st = 0;
        }
        fclose(f);
    }
    long fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        while (readdir(d))
            fds++;
        closedir(d);
        fds -= 3; /* ".", ".." and the directory's own descriptor */
    }
    mc_buf_printf(o,
                  "# TYPE mcai_process_resident_memory_bytes gauge\n"
                  "mcai_process_resident_memory_bytes %llu\n",
                  rss * (unsigned long long)page);
    mc_buf_printf(o,
                  "# TYPE mcai_process_virtual_memory_bytes gauge\n"
                  "mcai_process_virtual_memory_bytes %llu\n",
                  size * (unsigned long long)page);
    mc_buf_printf(o,
                  "# TYPE mcai_process_cpu_seconds_total counter\n"
                  "mcai_process_cpu_seconds_total %.2f\n",
                  (double)(ut + st) / (double)ticks);
    mc_buf_printf(o, "# TYPE mcai_process_threads gauge\nmcai_process_threads %ld\n", threads);
    mc_buf_printf(o, "# TYPE mcai_process_open_fds gauge\nmcai_process_open_fds %ld\n", fds);
    mc_buf_printf(o,
                  "# TYPE mcai_process_start_time_seconds gauge\n"
                  "mcai_process_start_time_seconds %lld\n",
                  (long long)start_time);
}

/* Per-adapter counters. Called with the lock held. */
static void render_adapters(struct mc_buf *o, struct mc_metrics *m) {
    static const char *const names[3] = {"mcai_adapter_requests_total",
                                         "mcai_adapter_prompt_tokens_total",
                                         "mcai_adapter_completion_tokens_total"};
    static const char *const help[3] = {"Generations run with a tenant's LoRA adapter.",
                                        "Prompt tokens processed with a tenant's adapter.",
                                        "Completion tokens generated with a tenant's adapter."};
    for (int k = 0; k < 3; k++) {
        mc_buf_printf(o, "# HELP %s %s\n# TYPE %s counter\n", names[k], help[k], names[k]);
        for (int b = 0; b < N_BUCKETS_TABLE; b++)
            for (struct tenant_rec *r = m->table[b]; r; r = r->next)
                for (struct adapter_rec *a = r->adapters; a; a = a->next)
                    mc_buf_printf(o, "%s{tenant=\"%s\",adapter=\"%s\"} %llu\n", names[k], r->tenant,
                                  a->name,
                                  (unsigned long long)(k == 0   ? a->requests
                                                       : k == 1 ? a->n_prompt
                                                                : a->n_completion));
    }
}

int mc_metrics_render(struct mc_metrics *m, struct mc_buf *o,
                      void (*gauges)(struct mc_buf *out, const char (*tenants)[64],
                                     size_t n_tenants, void *user),
                      void *user) {
    pthread_mutex_lock(&m->lock);
    mc_buf_printf(o, "# HELP mcai_requests_total HTTP requests by tenant, route and status.\n"
                     "# TYPE mcai_requests_total counter\n");
    for (int b = 0; b < N_BUCKETS_TABLE; b++)
        for (struct tenant_rec *r = m->table[b]; r; r = r->next)
            for (struct labelled *l = r->requests; l; l = l->next)
                mc_buf_printf(o,
                              "mcai_requests_total{tenant=\"%s\",route=\"%s\",status=\"%d\"} "
                              "%llu\n",
                              r->tenant, l->label, l->status, (unsigned long long)l->count);

    mc_buf_printf(o, "# HELP mcai_rejections_total Requests refused (limits, bad input, auth).\n"
                     "# TYPE mcai_rejections_total counter\n");
    for (int b = 0; b < N_BUCKETS_TABLE; b++)
        for (struct tenant_rec *r = m->table[b]; r; r = r->next)
            for (struct labelled *l = r->rejections; l; l = l->next)
                mc_buf_printf(o, "mcai_rejections_total{tenant=\"%s\",reason=\"%s\"} %llu\n",
                              r->tenant, l->label, (unsigned long long)l->count);

    mc_buf_printf(o, "# HELP mcai_prompt_tokens_total Prompt tokens processed.\n"
                     "# TYPE mcai_prompt_tokens_total counter\n");
    for (int b = 0; b < N_BUCKETS_TABLE; b++)
        for (struct tenant_rec *r = m->table[b]; r; r = r->next)
            if (r->tenant[0])
                mc_buf_printf(o, "mcai_prompt_tokens_total{tenant=\"%s\"} %llu\n", r->tenant,
                              (unsigned long long)r->n_prompt);
    mc_buf_printf(o, "# HELP mcai_completion_tokens_total Completion tokens generated.\n"
                     "# TYPE mcai_completion_tokens_total counter\n");
    for (int b = 0; b < N_BUCKETS_TABLE; b++)
        for (struct tenant_rec *r = m->table[b]; r; r = r->next)
            if (r->tenant[0])
                mc_buf_printf(o, "mcai_completion_tokens_total{tenant=\"%s\"} %llu\n", r->tenant,
                              (unsigned long long)r->n_completion);

    render_adapters(o, m);

    const char *hn[2] = {"mcai_time_to_first_token_seconds", "mcai_inter_token_seconds"};
    for (int k = 0; k < 2; k++) {
        mc_buf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", hn[k],
                      k == 0 ? "Time from request to first generated token."
                             : "Time between consecutive generated tokens.",
                      hn[k]);
        for (int b = 0; b < N_BUCKETS_TABLE; b++)
            for (struct tenant_rec *r = m->table[b]; r; r = r->next)
                if (r->tenant[0])
                    render_hist(o, hn[k], r->tenant, k == 0 ? &r->ttft : &r->itl,
                                k == 0 ? ttft_bounds : itl_bounds);
    }
    mc_buf_printf(o,
                  "# HELP mcai_open_streams Streaming responses in progress.\n"
                  "# TYPE mcai_open_streams gauge\nmcai_open_streams %d\n",
                  m->open_streams);
    time_t start = m->start_time;

    /* The owner's per-tenant gauges are asked for outside the lock: they may take
     * locks of their own (the engine's) whose holders record metrics. */
    size_t n = 0, cap = 0;
    char(*ids)[64] = NULL;
    for (int b = 0; gauges && b < N_BUCKETS_TABLE; b++) {
        for (struct tenant_rec *r = m->table[b]; r; r = r->next) {
            if (!r->tenant[0])
                continue;
            if (n == cap) {
                size_t nc = cap ? cap * 2 : 64;
                char(*more)[64] = mc_realloc(ids, nc * sizeof(*ids));
                if (!more)
                    break;
                ids = more;
                cap = nc;
            }
            memcpy(ids[n++], r->tenant, sizeof(r->tenant));
        }
    }
    pthread_mutex_unlock(&m->lock);

    if (gauges)
        gauges(o, (const char(*)[64])ids, n, user);
    mc_free(ids);
    render_process(o, start);
    return MC_OK;
}
