/* bench_kb.c - knowledge bases end to end: ingestion speed and multi-tenant query latency.
 *
 * 1. Ingestion, BM25 only: the first --ingest-docs documents of a BEIR corpus (SciFact by
 *    default) through mc_kb_ingest in batches of 500 (chunking, BM25, sealing, one store
 *    transaction per batch). MB/s of document text, wall and process CPU time.
 * 2. Ingestion with embeddings: the first --embed-docs documents with the model given by
 *    -m (stories260K by default), one thread.
 * 3. Query latency with --tenants tenants of --chunks chunks each in one store. Every
 *    tenant gets synthetic one-chunk documents (words drawn from a 5,000-word vocabulary
 *    with a Zipf-like law) and vectors from a cheap hashing embedder, so this phase times
 *    retrieval, loading and sealing rather than the model. The loaded set has a budget of
 *    --budget-mb, smaller than all knowledge bases together, so queries to random tenants
 *    load them lazily and unload cold ones. Each query opens the tenant's knowledge base,
 *    searches (k 10) and closes it; p50/p99 for bm25, dense and hybrid, plus the time of
 *    a cold first query and of a query to an already loaded knowledge base.
 *
 * Usage: bench_kb [--tenants N] [--chunks N] [--queries N] [--budget-mb N]
 *                 [--ingest-docs N] [--embed-docs N] [-m MODEL] [--corpus FILE]...
 *                 [--dir DIR] [--skip-ingest]
 * The data directory (default a new one under /tmp) is removed at the end. */
#include "base/err.h"
#include "base/mem.h"
#include "model/model.h"
#include "rag/embed.h"
#include "rag/kb.h"
#include "rag/retrieve.h"
#include "store/crypto.h"
#include "store/store.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_FILES       8
#define VOCAB           5000
#define WORDS_PER_CHUNK 40
#define HASH_DIM        64

static const char KEY_HEX[] = "5e3a1c5e7d9b2f4a6c8e0d1b3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f99";

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what, const struct mc_err *err) {
    fprintf(stderr, "bench_kb: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

/* ---------------------------------------------------------------------------------------
 * Corpus */

struct corpus {
    json_t **lines;
    size_t n, cap;
};

static void corpus_load(struct corpus *c, const char *path, size_t max) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "bench_kb: cannot open %s (set --corpus or MCAI_SHARED)\n", path);
        exit(1);
    }
    char *line = NULL;
    size_t cap = 0;
    while (c->n < max && getline(&line, &cap, f) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        if (!j || !json_is_string(json_object_get(j, "_id")) ||
            !json_is_string(json_object_get(j, "text"))) {
            json_decref(j);
            continue;
        }
        if (c->n == c->cap) {
            c->cap = c->cap ? c->cap * 2 : 1024;
            c->lines = realloc(c->lines, c->cap * sizeof(*c->lines));
        }
        c->lines[c->n++] = j;
    }
    free(line);
    fclose(f);
}

static struct mc_kb_doc_in corpus_doc(const struct corpus *c, size_t i) {
    json_t *j = c->lines[i];
    json_t *id = json_object_get(j, "_id"), *text = json_object_get(j, "text");
    json_t *title = json_object_get(j, "title");
    return (struct mc_kb_doc_in){json_string_value(id),
                                 json_string_length(id),
                                 json_string_value(text),
                                 json_string_length(text),
                                 json_is_string(title) ? json_string_value(title) : NULL,
                                 NULL,
                                 NULL};
}

/* ---------------------------------------------------------------------------------------
 * Fixture */

struct env {
    char dir[256];
    struct mc_master_key *mk;
    struct mc_store *store;
};

static void env_open(struct env *e, const char *dir) {
    struct mc_err err = {0};
    if (dir) {
        snprintf(e->dir, sizeof(e->dir), "%s", dir);
    } else {
        snprintf(e->dir, sizeof(e->dir), "/tmp/mcai-bench-kb-XXXXXX");
        if (!mkdtemp(e->dir))
            die("mkdtemp", NULL);
    }
    if (mc_master_key_parse(KEY_HEX, &e->mk, &err) != MC_OK ||
        mc_store_open(e->dir, e->mk, &e->store, &err) != MC_OK)
        die("store", &err);
}

static void env_close(struct env *e) {
    mc_store_close(e->store);
    mc_master_key_free(e->mk);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_kb: could not remove %s\n", e->dir);
}

static void tenant(struct env *e, const char *id) {
    struct mc_err err = {0};
    if (mc_store_tenant_insert(e->store, id, id, 0, NULL, &err) != MC_OK)
        die("tenant", &err);
}

/* ---------------------------------------------------------------------------------------
 * Ingestion */

static void bench_ingest(struct env *e, const struct corpus *c, size_t n_docs,
                         struct mc_embedder *emb, const struct mc_tokenizer *tok,
                         const char *tenant_id, const char *label) {
    struct mc_err err = {0};
    struct mc_kbs *s = NULL;
    tenant(e, tenant_id);
    if (mc_kbs_create(e->store, NULL, tok, emb, &s, &err) != MC_OK)
        die("kbs", &err);
    struct mc_kb *kb = NULL;
    if (mc_kb_open(s, tenant_id, &kb, &err) != MC_OK)
        die("open", &err);
    n_docs = n_docs < c->n ? n_docs : c->n;
    struct mc_kb_doc_in *docs = calloc(n_docs ? n_docs : 1, sizeof(*docs));
    size_t bytes = 0, chunks = 0;
    for (size_t i = 0; i < n_docs; i++) {
        docs[i] = corpus_doc(c, i);
        bytes += docs[i].text_len;
    }
    double t0 = now_s(), c0 = cpu_s();
    for (size_t i = 0; i < n_docs; i += 500) {
        size_t m = n_docs - i < 500 ? n_docs - i : 500;
        struct mc_kb_ingest_stats st;
        if (mc_kb_ingest(kb, docs + i, m, 0, NULL, NULL, &st, &err) != MC_OK)
            die("ingest", &err);
        chunks += st.n_chunks;
    }
    double wall = now_s() - t0, cpu = cpu_s() - c0;
    printf("ingest %-22s %5zu docs %6zu chunks %6.2f MB: %7.2f s wall %8.3f MB/s wall, "
           "%8.3f MB/s CPU\n",
           label, n_docs, chunks, bytes / 1e6, wall, bytes / 1e6 / wall, bytes / 1e6 / cpu);
    free(docs);
    mc_kb_close(kb);
    mc_kbs_free(s);
}

/* ---------------------------------------------------------------------------------------
 * Multi-tenant latency */

/* Hashing embedder: each word adds to one dimension chosen by its hash. */
static int hash_embed(void *ctx, const char *const *texts, const size_t *lens, size_t n, float *out,
                      struct mc_err *err) {
    (void)ctx;
    (void)err;
    for (size_t i = 0; i < n; i++) {
        float *v = out + i * HASH_DIM;
        memset(v, 0, HASH_DIM * sizeof(float));
        uint32_t h = 2166136261u;
        for (size_t j = 0; j <= lens[i]; j++) {
            char ch = j < lens[i] ? texts[i][j] : ' ';
            if (ch != ' ' && ch != '\n') {
                h = (h ^ (uint8_t)ch) * 16777619u;
            } else if (h != 2166136261u) {
                v[h % HASH_DIM] += 1.0f + (float)(h >> 28) / 16.0f;
                h = 2166136261u;
            }
        }
        v[0] += 0.01f;
    }
    return MC_OK;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* A word index with a Zipf-like law: small indexes are frequent. */
static unsigned zipf_word(void) {
    double u = (double)(rng() >> 11) / 9007199254740992.0;
    return (unsigned)(pow(VOCAB, u)) - 1;
}

static size_t make_text(char *buf, size_t cap, int n_words) {
    size_t o = 0;
    for (int w = 0; w < n_words && o + 16 < cap; w++)
        o += (size_t)snprintf(buf + o, cap - o, "%sw%u", w ? " " : "", zipf_word());
    return o;
}

static void fill_tenants(struct env *e, struct mc_kbs *s, int n_tenants, int n_chunks) {
    struct mc_err err = {0};
    struct mc_kb_doc_in *docs = calloc((size_t)n_chunks, sizeof(*docs));
    char(*ids)[16] = calloc((size_t)n_chunks, 16);
    char *texts = malloc((size_t)n_chunks * 512);
    double t0 = now_s();
    size_t bytes = 0;
    for (int t = 0; t < n_tenants; t++) {
        char tid[32];
        snprintf(tid, sizeof(tid), "t_%06d", t);
        tenant(e, tid);
        for (int i = 0; i < n_chunks; i++) {
            snprintf(ids[i], 16, "d%d", i);
            char *tx = texts + (size_t)i * 512;
            size_t n = make_text(tx, 512, WORDS_PER_CHUNK);
            docs[i] = (struct mc_kb_doc_in){ids[i], strlen(ids[i]), tx, n, NULL, NULL, NULL};
            bytes += n;
        }
        struct mc_kb *kb = NULL;
        if (mc_kb_open(s, tid, &kb, &err) != MC_OK ||
            mc_kb_ingest(kb, docs, (size_t)n_chunks, 0, NULL, NULL, NULL, &err) != MC_OK)
            die("fill", &err);
        mc_kb_close(kb);
        if ((t + 1) % 100 == 0 || t + 1 == n_tenants)
            fprintf(stderr, "\rfilled %d/%d tenants (%.0f s)", t + 1, n_tenants, now_s() - t0);
    }
    fprintf(stderr, "\n");
    double wall = now_s() - t0;
    printf("fill: %d tenants x %d chunks, %.1f MB text, %.1f s (%.2f MB/s with hash vectors)\n",
           n_tenants, n_chunks, bytes / 1e6, wall, bytes / 1e6 / wall);
    free(docs);
    free(ids);
    free(texts);
}

/* Runs n_queries queries to random tenants in one mode; prints p50/p99. */
static void query_latency(struct mc_kbs *s, int n_tenants, int n_queries, int mode) {
    double *lat = malloc((size_t)n_queries * sizeof(double));
    struct mc_err err = {0};
    char text[512];
    for (int q = 0; q < n_queries; q++) {
        char tid[32];
        snprintf(tid, sizeof(tid), "t_%06d", (int)(rng() % (uint64_t)n_tenants));
        size_t n = make_text(text, sizeof(text), 4);
        double t0 = now_s();
        struct mc_kb *kb = NULL;
        struct mc_kb_query qq = {text, n, mode, 10, false, false, 0};
        struct mc_kb_results r;
        if (mc_kb_open(s, tid, &kb, &err) != MC_OK || mc_kb_search(kb, &qq, &r, &err) != MC_OK)
            die("query", &err);
        mc_kb_results_deinit(&r);
        mc_kb_close(kb);
        lat[q] = now_s() - t0;
    }
    qsort(lat, (size_t)n_queries, sizeof(double), cmp_double);
    printf("query %-6s random tenant: p50 %7.3f ms  p99 %7.3f ms  (%d queries, %zu loaded, "
           "%.1f MB loaded)\n",
           mc_kb_mode_name(mode), lat[n_queries / 2] * 1e3, lat[n_queries * 99 / 100] * 1e3,
           n_queries, mc_kbs_n_loaded(s), mc_kbs_bytes_loaded(s) / 1e6);
    free(lat);
}

/* Cold (first load) versus warm (already loaded) query times on a few tenants. */
static void cold_warm(struct mc_kbs *s, int n_tenants) {
    struct mc_err err = {0};
    double cold = 0, warm = 0;
    int n = n_tenants < 20 ? n_tenants : 20;
    for (int i = 0; i < n; i++) {
        char tid[32], text[256];
        snprintf(tid, sizeof(tid), "t_%06d", i);
        mc_kbs_unload(s, tid);
        size_t len = make_text(text, sizeof(text), 4);
        struct mc_kb_query qq = {text, len, MC_KB_MODE_HYBRID, 10, false, false, 0};
        struct mc_kb_results r;
        struct mc_kb *kb = NULL;
        for (int pass = 0; pass < 2; pass++) {
            double t0 = now_s();
            if (mc_kb_open(s, tid, &kb, &err) != MC_OK || mc_kb_search(kb, &qq, &r, &err) != MC_OK)
                die("query", &err);
            mc_kb_results_deinit(&r);
            mc_kb_close(kb);
            *(pass ? &warm : &cold) += now_s() - t0;
        }
    }
    printf("hybrid query, mean of %d tenants: cold (load) %.3f ms, warm %.3f ms\n", n,
           cold / n * 1e3, warm / n * 1e3);
}

/* ---------------------------------------------------------------------------------------
 * Main */

int main(int argc, char **argv) {
    int n_tenants = 1000, n_chunks = 1000, n_queries = 2000, budget_mb = 64;
    size_t ingest_docs = 5183, embed_docs = 100;
    bool skip_ingest = false;
    const char *model = NULL, *dir = NULL, *corpus_files[MAX_FILES];
    int n_files = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--skip-ingest")) {
            skip_ingest = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "bench_kb: %s needs a value (see the header of bench/bench_kb.c)\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--tenants"))
            n_tenants = atoi(v);
        else if (!strcmp(a, "--chunks"))
            n_chunks = atoi(v);
        else if (!strcmp(a, "--queries"))
            n_queries = atoi(v);
        else if (!strcmp(a, "--budget-mb"))
            budget_mb = atoi(v);
        else if (!strcmp(a, "--ingest-docs"))
            ingest_docs = (size_t)atol(v);
        else if (!strcmp(a, "--embed-docs"))
            embed_docs = (size_t)atol(v);
        else if (!strcmp(a, "-m"))
            model = v;
        else if (!strcmp(a, "--dir"))
            dir = v;
        else if (!strcmp(a, "--corpus") && n_files < MAX_FILES)
            corpus_files[n_files++] = v;
        else {
            fprintf(stderr, "bench_kb: unknown option %s\n", a);
            return 2;
        }
    }
    if (n_tenants < 1 || n_chunks < 1 || n_queries < 100 || budget_mb < 1) {
        fprintf(stderr, "bench_kb: --tenants, --chunks, --budget-mb >= 1, --queries >= 100\n");
        return 2;
    }
    const char *shared = getenv("MCAI_SHARED");
    shared = shared && *shared ? shared : "../shared";
    char paths[3][512], model_path[512];
    if (n_files == 0)
        for (int i = 0; i < 3; i++) {
            snprintf(paths[i], sizeof(paths[i]), "%s/data/retrieval/scifact/corpus-%02d.jsonl",
                     shared, i);
            corpus_files[n_files++] = paths[i];
        }
    if (!model) {
        snprintf(model_path, sizeof(model_path), "%s/models/stories260K.gguf", shared);
        model = model_path;
    }

    struct env e;
    env_open(&e, dir);
    struct mc_err err = {0};
    if (!skip_ingest) {
        struct corpus c = {0};
        size_t want = ingest_docs > embed_docs ? ingest_docs : embed_docs;
        for (int i = 0; i < n_files; i++)
            corpus_load(&c, corpus_files[i], want);
        bench_ingest(&e, &c, ingest_docs, NULL, NULL, "t_ingest_bm25", "bm25 (words)");
        struct mc_model *m = NULL;
        struct mc_embedder *emb = NULL;
        if (mc_model_load(model, &m, &err) != MC_OK ||
            mc_embedder_create(m, 1, 0, &emb, &err) != MC_OK)
            die("model", &err);
        bench_ingest(&e, &c, ingest_docs, NULL, mc_model_tokenizer(m), "t_ingest_tok",
                     "bm25 (model tokens)");
        bench_ingest(&e, &c, embed_docs, emb, mc_model_tokenizer(m), "t_ingest_emb",
                     "bm25 + embeddings");
        mc_embedder_free(emb);
        mc_model_free(m);
        for (size_t i = 0; i < c.n; i++)
            json_decref(c.lines[i]);
        free(c.lines);
    }

    struct mc_embedder *hash = NULL;
    if (mc_embedder_create_custom("hash64", HASH_DIM, hash_embed, NULL, &hash, &err) != MC_OK)
        die("embedder", &err);
    struct mc_kb_config cfg;
    mc_kb_config_default(&cfg);
    cfg.budget_bytes = (size_t)budget_mb << 20;
    struct mc_kbs *s = NULL;
    if (mc_kbs_create(e.store, &cfg, NULL, hash, &s, &err) != MC_OK)
        die("kbs", &err);
    fill_tenants(&e, s, n_tenants, n_chunks);
    for (int t = 0; t < n_tenants; t++) {
        char tid[32];
        snprintf(tid, sizeof(tid), "t_%06d", t);
        mc_kbs_unload(s, tid);
    }
    query_latency(s, n_tenants, n_queries, MC_KB_MODE_BM25);
    query_latency(s, n_tenants, n_queries, MC_KB_MODE_DENSE);
    query_latency(s, n_tenants, n_queries, MC_KB_MODE_HYBRID);
    cold_warm(s, n_tenants);
    mc_kbs_free(s);
    mc_embedder_free(hash);
    env_close(&e);
    return 0;
}
