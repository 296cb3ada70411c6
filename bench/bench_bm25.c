/* bench_bm25.c - BM25 retrieval quality and speed on a BEIR data set (SciFact by default).
 *
 * Indexes every corpus line (title and text as one field, as Anserini's "flat" runs do),
 * runs the queries named in the qrels file and prints nDCG@10, recall@100, indexing speed
 * (MB of title + text per second, wall and thread CPU time), query latency p50/p99 (each
 * query's best of 5 passes) and, with --run, writes a TREC
 * run file (qid Q0 docid rank score tag) for trec_eval or pytrec_eval.
 *
 * Usage: bench_bm25 [--corpus FILE]... [--queries FILE] [--qrels FILE] [--k1 X] [--b X]
 *                   [--stemmer porter|english|none] [--keep-stopwords] [--run FILE]
 *                   [--depth N]
 * Defaults: $MCAI_SHARED/data/retrieval/scifact (MCAI_SHARED defaults to ../shared),
 * corpus-00..02.jsonl, queries.jsonl, qrels/test.tsv, k1 0.9, b 0.4, porter, depth 100. */
#include "base/err.h"
#include "rag/bm25.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_FILES 16

struct qrel {
    char *qid, *docid;
    int rel;
};

#define LATENCY_PASSES 5

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Each line of path is a JSON object; calls fn with it. Returns lines read or -1. */
static long each_json_line(const char *path, void (*fn)(json_t *, void *), void *user) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "bench_bm25: cannot open %s (set the paths or MCAI_SHARED)\n", path);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    long n = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        json_error_t je;
        json_t *o = json_loadb(line, (size_t)len, 0, &je);
        if (!o || !json_is_object(o)) {
            fprintf(stderr, "bench_bm25: %s line %ld: %s\n", path, n + 1, je.text);
            json_decref(o);
            free(line);
            fclose(f);
            return -1;
        }
        fn(o, user);
        json_decref(o);
        n++;
    }
    free(line);
    fclose(f);
    return n;
}

struct corpus {
    struct mc_bm25 *bm;
    char **ids;
    size_t n, cap;
    double bytes, seconds, cpu_seconds;
    int failed;
};

static void add_doc(json_t *o, void *user) {
    struct corpus *c = user;
    const char *id = json_string_value(json_object_get(o, "_id"));
    json_t *title = json_object_get(o, "title"), *text = json_object_get(o, "text");
    if (!id) {
        c->failed = 1;
        return;
    }
    size_t tl = json_string_length(title), xl = json_string_length(text);
    char *buf = malloc(tl + xl + 2);
    memcpy(buf, json_string_value(title) ? json_string_value(title) : "", tl);
    buf[tl] = ' ';
    memcpy(buf + tl + 1, json_string_value(text) ? json_string_value(text) : "", xl);
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 1024;
        c->ids = realloc(c->ids, c->cap * sizeof(*c->ids));
    }
    struct mc_err err;
    double t0 = now_s(), c0 = cpu_s();
    int rc = mc_bm25_add(c->bm, c->n, buf, tl + xl + 1, &err);
    c->seconds += now_s() - t0;
    c->cpu_seconds += cpu_s() - c0;
    c->bytes += tl + xl + 1;
    free(buf);
    if (rc) {
        fprintf(stderr, "bench_bm25: doc %s: %s\n", id, err.msg);
        c->failed = 1;
        return;
    }
    c->ids[c->n++] = strdup(id);
}

struct queries {
    char **ids, **texts;
    size_t n, cap;
};

static void add_query(json_t *o, void *user) {
    struct queries *q = user;
    const char *id = json_string_value(json_object_get(o, "_id"));
    const char *text = json_string_value(json_object_get(o, "text"));
    if (!id || !text)
        return;
    if (q->n == q->cap) {
        q->cap = q->cap ? q->cap * 2 : 1024;
        q->ids = realloc(q->ids, q->cap * sizeof(*q->ids));
        q->texts = realloc(q->texts, q->cap * sizeof(*q->texts));
    }
    q->ids[q->n] = strdup(id);
    q->texts[q->n++] = strdup(text);
}

static struct qrel *read_qrels(const char *path, size_t *n_out) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "bench_bm25: cannot open %s\n", path);
        return NULL;
    }
    struct qrel *r = NULL;
    size_t n = 0, cap = 0;
    char q[256], d[256];
    int rel;
    char line[1024];
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "%255s %255s %d", q, d, &rel) != 3)
            continue; /* the header line */
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            r = realloc(r, cap * sizeof(*r));
        }
        r[n++] = (struct qrel){strdup(q), strdup(d), rel};
    }
    fclose(f);
    *n_out = n;
    return r;
}

int main(int argc, char **argv) {
    const char *shared = getenv("MCAI_SHARED");
    shared = shared && *shared ? shared : "../shared";
    char defc[3][512], defq[512], defr[512];
    for (int i = 0; i < 3; i++)
        snprintf(defc[i], sizeof(defc[i]), "%s/data/retrieval/scifact/corpus-%02d.jsonl", shared,
                 i);
    snprintf(defq, sizeof(defq), "%s/data/retrieval/scifact/queries.jsonl", shared);
    snprintf(defr, sizeof(defr), "%s/data/retrieval/scifact/qrels/test.tsv", shared);
    const char *corpus[MAX_FILES], *qpath = defq, *rpath = defr, *runpath = NULL;
    int n_corpus = 0, depth = 100;
    struct mc_bm25_params p;
    mc_bm25_params_default(&p);

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--keep-stopwords")) {
            p.keep_stopwords = true;
            continue;
        }
        if (!strcmp(a, "--help") || !v) {
            fprintf(stderr, "usage: bench_bm25 [--corpus FILE]... [--queries FILE] [--qrels FILE] "
                            "[--k1 X] [--b X] [--stemmer porter|english|none] "
                            "[--keep-stopwords] [--run FILE] [--depth N]\n");
            return strcmp(a, "--help") ? 2 : 0;
        }
        i++;
        if (!strcmp(a, "--corpus") && n_corpus < MAX_FILES)
            corpus[n_corpus++] = v;
        else if (!strcmp(a, "--queries"))
            qpath = v;
        else if (!strcmp(a, "--qrels"))
            rpath = v;
        else if (!strcmp(a, "--k1"))
            p.k1 = strtof(v, NULL);
        else if (!strcmp(a, "--b"))
            p.b = strtof(v, NULL);
        else if (!strcmp(a, "--stemmer"))
            p.stemmer = !strcmp(v, "none")      ? MC_BM25_STEM_NONE
                        : !strcmp(v, "english") ? MC_BM25_STEM_ENGLISH
                                                : MC_BM25_STEM_PORTER;
        else if (!strcmp(a, "--run"))
            runpath = v;
        else if (!strcmp(a, "--depth"))
            depth = atoi(v);
        else {
            fprintf(stderr, "bench_bm25: unknown option %s (see --help)\n", a);
            return 2;
        }
    }
    if (n_corpus == 0)
        for (int i = 0; i < 3; i++)
            corpus[n_corpus++] = defc[i];
    if (depth < 100)
        depth = 100;

    /* Index. */
    struct mc_err err;
    struct corpus c = {0};
    if (mc_bm25_create(&p, &c.bm, &err)) {
        fprintf(stderr, "bench_bm25: %s\n", err.msg);
        return 2;
    }
    for (int i = 0; i < n_corpus; i++)
        if (each_json_line(corpus[i], add_doc, &c) < 0 || c.failed)
            return 1;

    struct queries q = {0};
    size_t n_qrels;
    struct qrel *qrels = read_qrels(rpath, &n_qrels);
    if (each_json_line(qpath, add_query, &q) < 0 || !qrels)
        return 1;

    /* Search each judged query once, in qrels order. */
    FILE *run = runpath ? fopen(runpath, "w") : NULL;
    if (runpath && !run) {
        fprintf(stderr, "bench_bm25: cannot write %s\n", runpath);
        return 1;
    }
    struct mc_bm25_hit *hits = malloc((size_t)depth * sizeof(*hits));
    double *lat = malloc(n_qrels * sizeof(*lat));
    double sum_ndcg = 0, sum_recall = 0;
    size_t n_q = 0;
    for (size_t r = 0; r < n_qrels; r++) {
        if (r > 0 && !strcmp(qrels[r].qid, qrels[r - 1].qid))
            continue;
        const char *qid = qrels[r].qid, *text = NULL;
        for (size_t j = 0; j < q.n && !text; j++)
            if (!strcmp(q.ids[j], qid))
                text = q.texts[j];
        if (!text) {
            fprintf(stderr, "bench_bm25: query %s of the qrels is not in %s\n", qid, qpath);
            return 1;
        }
        /* A query's latency is its best of several passes, which filters out the moments
         * another job on a shared machine held the core. */
        size_t n_hits;
        lat[n_q] = 1e9;
        for (int pass = 0; pass < LATENCY_PASSES; pass++) {
            double t0 = now_s();
            if (mc_bm25_search(c.bm, text, strlen(text), (size_t)depth, hits, &n_hits, &err)) {
                fprintf(stderr, "bench_bm25: query %s: %s\n", qid, err.msg);
                return 1;
            }
            double t = now_s() - t0;
            lat[n_q] = t < lat[n_q] ? t : lat[n_q];
        }

        /* Judgments of this query are consecutive in the qrels file. */
        size_t r_end = r;
        double idcg = 0, dcg = 0, n_rel = 0, found = 0;
        while (r_end < n_qrels && !strcmp(qrels[r_end].qid, qid))
            r_end++;
        int n_pos = 0;
        for (size_t j = r; j < r_end; j++) {
            if (qrels[j].rel <= 0)
                continue;
            if (n_pos < 10) /* every SciFact judgment has gain 1, so order does not matter */
                idcg += qrels[j].rel / log2(2.0 + n_pos++);
            n_rel++;
        }
        for (size_t h = 0; h < n_hits; h++) {
            const char *doc = c.ids[hits[h].label];
            if (run)
                fprintf(run, "%s Q0 %s %zu %.6f mcai-bm25\n", qid, doc, h + 1, hits[h].score);
            for (size_t j = r; j < r_end; j++) {
                if (strcmp(qrels[j].docid, doc) || qrels[j].rel <= 0)
                    continue;
                if (h < 10)
                    dcg += qrels[j].rel / log2(2.0 + h);
                if (h < 100)
                    found++;
            }
        }
        sum_ndcg += idcg > 0 ? dcg / idcg : 0;
        sum_recall += n_rel > 0 ? found / n_rel : 0;
        n_q++;
    }
    if (run)
        fclose(run);
    qsort(lat, n_q, sizeof(*lat), cmp_double);
    printf("corpus: %zu docs, %.2f MB title+text, %zu terms; k1=%.2f b=%.2f stemmer=%s "
           "stopwords=%s\n",
           c.n, c.bytes / 1e6, mc_bm25_n_terms(c.bm), (double)p.k1, (double)p.b,
           p.stemmer == MC_BM25_STEM_NONE      ? "none"
           : p.stemmer == MC_BM25_STEM_ENGLISH ? "english"
                                               : "porter",
           p.keep_stopwords ? "kept" : "removed");
    printf("indexing: %.2f s wall, %.2f MB/s wall, %.2f MB/s of thread CPU time\n", c.seconds,
           c.bytes / 1e6 / c.seconds, c.bytes / 1e6 / c.cpu_seconds);
    printf("queries: %zu, nDCG@10 %.4f, recall@100 %.4f\n", n_q, sum_ndcg / n_q, sum_recall / n_q);
    printf("latency: p50 %.3f ms, p99 %.3f ms (top %d, best of %d passes per query)\n",
           lat[n_q / 2] * 1e3, lat[(size_t)(n_q * 0.99)] * 1e3, depth, LATENCY_PASSES);
    free(hits);
    free(lat);
    mc_bm25_free(c.bm);
    return 0;
}
