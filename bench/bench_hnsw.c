/* bench_hnsw.c - recall@k and queries/s of our HNSW next to hnswlib's on the same data.
 *
 * Reads texmex-format files (.fvecs floats, .bvecs bytes, .ivecs ground-truth ids; the
 * base may be several files concatenated in order), builds our index and hnswlib's with
 * the same M and efConstruction, then for each efSearch runs every query single-threaded
 * through both (the query set repeated up to 2,000 searches per timed run), alternating the
 * two sides for several rounds and keeping each side's best time. Times are the thread's
 * CPU time, so that time descheduled on a shared machine counts for neither side.
 * Prints one table row per efSearch with recall@k, queries/s and our/hnswlib QPS ratio.
 *
 * Usage: bench_hnsw [--base FILE]... [--query FILE] [--gt FILE] [--m M] [--efc EF]
 *                   [--ef LIST] [--k K] [--rounds N] [--seed S]
 * Defaults: $MCAI_SHARED/data/ann/mnist10k (MCAI_SHARED defaults to ../shared),
 * M=16, efC=200, ef=10,20,40,80,120,200,400, k=10, rounds=5. */
#include "base/err.h"
#include "base/mem.h"
#include "rag/hnsw.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* hnswlib through bench/bench_hnsw_lib.cpp. */
void *bench_hnswlib_create(int dim, size_t max_elements, int m, int ef_construction, uint64_t seed);
int bench_hnswlib_add(void *p, const float *v, uint64_t label);
void bench_hnswlib_set_ef(void *p, int ef);
long bench_hnswlib_search(void *p, const float *q, size_t k, uint64_t *labels);
void bench_hnswlib_free(void *p);

#define MAX_BASE_FILES 64
#define MAX_EFS        32

struct vecs {
    int dim;
    size_t n;
    float *f;   /* (n, dim) */
    int32_t *i; /* (n, dim), ground truth only */
};

/* CPU time of this thread: on a machine shared with other jobs, time spent descheduled
 * would otherwise land on whichever side happened to be running. */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* Appends the records of one texmex file to v. Element size from the extension. */
static int read_vecs(const char *path, struct vecs *v) {
    int esize = ends_with(path, ".bvecs") ? 1 : 4;
    int is_int = ends_with(path, ".ivecs");
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "bench_hnsw: cannot open %s (set --base/--query/--gt or MCAI_SHARED)\n",
                path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    int32_t dim;
    if (size < 4 || fread(&dim, 4, 1, f) != 1 || dim <= 0 || dim > 1 << 20) {
        fprintf(stderr, "bench_hnsw: %s: bad dimension at offset 0\n", path);
        fclose(f);
        return -1;
    }
    size_t rec = 4 + (size_t)dim * esize;
    if ((size_t)size % rec || (v->n && v->dim != dim)) {
        fprintf(stderr,
                "bench_hnsw: %s: size %ld is not a whole number of %d-dim records "
                "(or dim differs from earlier files)\n",
                path, size, dim);
        fclose(f);
        return -1;
    }
    size_t n = (size_t)size / rec;
    v->dim = dim;
    if (is_int)
        v->i = realloc(v->i, (v->n + n) * dim * sizeof(int32_t));
    else
        v->f = realloc(v->f, (v->n + n) * dim * sizeof(float));
    uint8_t *row = malloc(rec);
    fseek(f, 0, SEEK_SET);
    for (size_t r = 0; r < n; r++) {
        int32_t d;
        if (fread(row, rec, 1, f) != 1 || (memcpy(&d, row, 4), d != dim)) {
            fprintf(stderr, "bench_hnsw: %s: bad record %zu at offset %zu\n", path, r, r * rec);
            free(row);
            fclose(f);
            return -1;
        }
        for (int j = 0; j < dim; j++) {
            size_t at = (v->n + r) * dim + j;
            if (is_int)
                memcpy(&v->i[at], row + 4 + 4 * j, 4);
            else if (esize == 1)
                v->f[at] = row[4 + j];
            else
                memcpy(&v->f[at], row + 4 + 4 * j, 4);
        }
    }
    v->n += n;
    free(row);
    fclose(f);
    return 0;
}

static double recall_at(const uint64_t *got, const struct vecs *gt, size_t qi, int k) {
    int hit = 0;
    for (int a = 0; a < k; a++)
        for (int b = 0; b < k; b++)
            if (got[a] == (uint64_t)gt->i[qi * gt->dim + b]) {
                hit++;
                break;
            }
    return (double)hit / k;
}

struct run {
    double qps, recall;
};

/* Each timed run passes over the query set reps times (so that a run lasts long enough to
 * time); recall comes from the last pass. */
static struct run run_ours(struct mc_hnsw *h, const struct vecs *q, const struct vecs *gt, int k,
                           int ef, int reps, uint64_t *labels) {
    struct mc_hnsw_hit hits[1024];
    size_t n_hits;
    double t0 = now_s(), rec = 0;
    for (int r = 0; r < reps; r++)
        for (size_t i = 0; i < q->n; i++) {
            mc_hnsw_search(h, q->f + i * q->dim, (size_t)k, ef, hits, &n_hits, NULL);
            for (size_t j = 0; j < (size_t)k; j++)
                labels[i * k + j] = j < n_hits ? hits[j].label : UINT64_MAX;
        }
    double t = now_s() - t0;
    for (size_t i = 0; i < q->n; i++)
        rec += recall_at(labels + i * k, gt, i, k);
    return (struct run){q->n * reps / t, rec / q->n};
}

static struct run run_lib(void *lib, const struct vecs *q, const struct vecs *gt, int k, int ef,
                          int reps, uint64_t *labels) {
    bench_hnswlib_set_ef(lib, ef);
    double t0 = now_s(), rec = 0;
    for (int r = 0; r < reps; r++)
        for (size_t i = 0; i < q->n; i++) {
            long n = bench_hnswlib_search(lib, q->f + i * q->dim, (size_t)k, labels + i * k);
            for (long j = n < 0 ? 0 : n; j < k; j++)
                labels[i * k + j] = UINT64_MAX;
        }
    double t = now_s() - t0;
    for (size_t i = 0; i < q->n; i++)
        rec += recall_at(labels + i * k, gt, i, k);
    return (struct run){q->n * reps / t, rec / q->n};
}

static int parse_efs(const char *s, int *efs) {
    int n = 0;
    while (*s && n < MAX_EFS) {
        efs[n++] = atoi(s);
        const char *c = strchr(s, ',');
        if (!c)
            break;
        s = c + 1;
    }
    return n;
}

int main(int argc, char **argv) {
    const char *shared = getenv("MCAI_SHARED");
    char def_base[3][512], def_q[512], def_gt[512];
    const char *base[MAX_BASE_FILES], *qpath = def_q, *gtpath = def_gt;
    int n_base = 0, m = 16, efc = 200, k = 10, rounds = 5;
    int efs[MAX_EFS], n_efs = parse_efs("10,20,40,80,120,200,400", efs);
    uint64_t seed = 100;
    shared = shared && *shared ? shared : "../shared";
    for (int i = 0; i < 3; i++)
        snprintf(def_base[i], sizeof(def_base[i]), "%s/data/ann/mnist10k/base-%02d.bvecs", shared,
                 i);
    snprintf(def_q, sizeof(def_q), "%s/data/ann/mnist10k/query.bvecs", shared);
    snprintf(def_gt, sizeof(def_gt), "%s/data/ann/mnist10k/groundtruth.ivecs", shared);

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !v) {
            fprintf(stderr, "usage: bench_hnsw [--base FILE]... [--query FILE] [--gt FILE] "
                            "[--m M] [--efc EF] [--ef LIST] [--k K] [--rounds N] [--seed S]\n");
            return strcmp(a, "--help") ? 2 : 0;
        }
        i++;
        if (!strcmp(a, "--base") && n_base < MAX_BASE_FILES)
            base[n_base++] = v;
        else if (!strcmp(a, "--query"))
            qpath = v;
        else if (!strcmp(a, "--gt"))
            gtpath = v;
        else if (!strcmp(a, "--m"))
            m = atoi(v);
        else if (!strcmp(a, "--efc"))
            efc = atoi(v);
        else if (!strcmp(a, "--ef"))
            n_efs = parse_efs(v, efs);
        else if (!strcmp(a, "--k"))
            k = atoi(v);
        else if (!strcmp(a, "--rounds"))
            rounds = atoi(v);
        else if (!strcmp(a, "--seed"))
            seed = strtoull(v, NULL, 10);
        else {
            fprintf(stderr, "bench_hnsw: unknown option %s (see --help)\n", a);
            return 2;
        }
    }
    if (n_base == 0)
        for (int i = 0; i < 3; i++)
            base[n_base++] = def_base[i];
    if (k < 1 || k > 1024 || rounds < 1) {
        fprintf(stderr, "bench_hnsw: k must be 1..1024 and rounds >= 1\n");
        return 2;
    }

    struct vecs b = {0}, q = {0}, gt = {0};
    for (int i = 0; i < n_base; i++)
        if (read_vecs(base[i], &b))
            return 1;
    if (read_vecs(qpath, &q) || read_vecs(gtpath, &gt))
        return 1;
    if (q.dim != b.dim || gt.n < q.n || gt.dim < k) {
        fprintf(stderr,
                "bench_hnsw: query dim %d vs base %d, or ground truth too small "
                "(%zu rows of %d for %zu queries, k=%d)\n",
                q.dim, b.dim, gt.n, gt.dim, q.n, k);
        return 1;
    }
    printf("data: %zu base, %zu queries, dim %d; M=%d efConstruction=%d k=%d seed=%llu\n", b.n, q.n,
           b.dim, m, efc, k, (unsigned long long)seed);

    /* Build both indexes, single-threaded, same insertion order. */
    struct mc_err err;
    struct mc_hnsw *h;
    struct mc_hnsw_params p = {b.dim, MC_HNSW_L2, m, efc, 64, seed};
    if (mc_hnsw_create(&p, &h, &err)) {
        fprintf(stderr, "bench_hnsw: %s\n", err.msg);
        return 1;
    }
    double t0 = now_s();
    for (size_t i = 0; i < b.n; i++)
        if (mc_hnsw_insert(h, i, b.f + i * b.dim, &err)) {
            fprintf(stderr, "bench_hnsw: insert %zu: %s\n", i, err.msg);
            return 1;
        }
    double t_ours = now_s() - t0;
    void *lib = bench_hnswlib_create(b.dim, b.n, m, efc, seed);
    if (!lib)
        return 1;
    t0 = now_s();
    for (size_t i = 0; i < b.n; i++)
        if (bench_hnswlib_add(lib, b.f + i * b.dim, i))
            return 1;
    double t_lib = now_s() - t0;
    printf("build: ours %.2f s (%.0f inserts/s), hnswlib %.2f s (%.0f inserts/s)\n", t_ours,
           b.n / t_ours, t_lib, b.n / t_lib);

    /* Alternate the two sides round by round and keep each one's best, so that a burst of
     * load from elsewhere on the machine hits both alike and rarely the kept figure. */
    uint64_t *labels = malloc(q.n * k * sizeof(*labels));
    int reps = q.n >= 2000 ? 1 : (int)(2000 / q.n);
    printf("%8s | %10s %12s | %10s %12s | %9s\n", "efSearch", "recall@k", "ours q/s", "recall@k",
           "hnswlib q/s", "q/s ratio");
    for (int e = 0; e < n_efs; e++) {
        struct run best_o = {0}, best_l = {0};
        for (int r = 0; r < rounds; r++) {
            struct run o = run_ours(h, &q, &gt, k, efs[e], reps, labels);
            struct run l = run_lib(lib, &q, &gt, k, efs[e], reps, labels);
            if (o.qps > best_o.qps)
                best_o = o;
            if (l.qps > best_l.qps)
                best_l = l;
        }
        printf("%8d | %10.4f %12.0f | %10.4f %12.0f | %8.2fx\n", efs[e], best_o.recall, best_o.qps,
               best_l.recall, best_l.qps, best_o.qps / best_l.qps);
    }
    free(labels);
    bench_hnswlib_free(lib);
    mc_hnsw_free(h);
    free(b.f);
    free(q.f);
    free(gt.i);
    return 0;
}
