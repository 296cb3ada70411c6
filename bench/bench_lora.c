/* bench_lora.c - costs of LoRA adapters in serving.
 *
 *   bench_lora [MODEL] [--threads N] [--steps N] [--rounds N] [--rank R] [--type f16|f32]
 *              [--resident f32|f16|q8_0]
 *
 * 1. Heterogeneous batching: aggregate decode throughput of 32 sequences in one batch
 *    per step with no adapter, 1, 8 and 32 distinct adapters (rank R on q, k, v, o,
 *    gate, up, down), as a ratio to the base-only figure, and 32 distinct adapters with
 *    the runner's prefetch off. Configurations are interleaved over several rounds and
 *    the best round of each is kept (the machine is shared). Then the adapters' bytes per
 *    step against the read bandwidth measured in the same run.
 * 2. Cold load: time to open one adapter from a GGUF file in the page cache and from a
 *    GGUF buffer in memory (what the server does after decrypting a sealed blob), and the
 *    resident bytes of one adapter.
 * 3. Residency: 1,000 registered adapters behind a 64-adapter cache, requests picking
 *    their adapter from a Zipf(1.0) distribution: first 4,000 requests through the cache
 *    alone (steady-state hit rate, cost per miss), then decoding with 32 slots, each
 *    request running 16 tokens, throughput with cache work included, against base-only
 *    steps interleaved with it in blocks of 4.
 *
 * MODEL defaults to /tmp/synth.gguf, made by
 *   mcai model synth --like ../shared/tokenizer-tests/ggml-vocab-llama-spm.gguf \
 *       --embd 768 --layers 12 --heads 12 --kv-heads 4 --ff 2048 --type Q4_0 -o /tmp/synth.gguf
 * Timing only: nothing is checked here (tests/test_lora.c does that). */
#include "adapter/lora.h"
#include "base/mem.h"
#include "model/model.h"
#include "model/quant.h"
#include "model/sample.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_bw.h"

enum { BATCH = 32, MAX_ADAPTERS = 32, N_REGISTERED = 1000, RESIDENT = 64, REQ_TOKENS = 16 };
enum { BW_BYTES = 128 << 20 }; /* read by the bandwidth probe: four times the 32 MiB L3 */

struct bench {
    struct mc_model *m;
    struct mc_lora_base base;
    struct mc_ctx *ctx;
    struct mc_lora_runner *run;
    struct mc_kv *kv[BATCH];
    float *logits;
    int threads;
    int steps;
    int rounds;
    int rank;
    enum mc_type type;     /* adapter tensors as written and loaded: F32 or F16 */
    enum mc_type resident; /* converted to after loading (mc_lora_convert), or = type */
};

/* Opens an adapter from a GGUF buffer and converts it to b->resident if that differs. */
static int open_blob(const struct bench *b, const void *buf, size_t len, const char *name,
                     struct mc_lora **out, struct mc_err *err) {
    int rc = mc_lora_open_gguf_buffer(buf, len, name, &b->base, out, err);
    if (rc != MC_OK || b->resident == b->type)
        return rc;
    struct mc_lora *c;
    rc = mc_lora_convert(*out, b->resident, &c, err);
    mc_lora_release(*out);
    *out = rc == MC_OK ? c : NULL;
    return rc;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU time of the whole process: with --threads 1 it is the work itself, unaffected by
 * other programs taking the cores (pool threads spinning would count with more). */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, const struct mc_err *err) {
    fprintf(stderr, "bench_lora: %s: %s\n", what, err->msg);
    exit(1);
}

/* One decode step of BATCH rows; row i uses ad[i] (may be NULL). */
static void step(struct bench *b, struct mc_lora *const *ad) {
    struct mc_batch_row rows[BATCH];
    struct mc_err err = {0};
    int32_t nv = mc_model_hparams(b->m)->n_vocab;
    for (int i = 0; i < BATCH; i++) {
        if (mc_kv_n_used(b->kv[i]) + 1 >= mc_kv_n_ctx(b->kv[i]))
            mc_kv_truncate(b->kv[i], 0);
        int32_t pos = mc_kv_n_used(b->kv[i]);
        rows[i] = (struct mc_batch_row){
            (int32_t)((pos * 7919 + i * 104729) % nv), pos, b->kv[i], true, ad[i], 1.0f};
    }
    if (mc_forward(b->ctx, rows, BATCH, b->logits, NULL, &err) != MC_OK)
        die("forward", &err);
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = mc_malloc(*len);
    if (buf && fread(buf, 1, *len, f) != *len) {
        mc_free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

enum { N_FILES = 8 };

struct blobs {
    char *buf[N_FILES];
    size_t len[N_FILES];
};

/* N_FILES random adapters written as GGUF files (path) and read back into memory. */
static void make_blobs(struct bench *b, struct blobs *bl, char (*path)[64]) {
    struct mc_err err = {0};
    for (int i = 0; i < N_FILES; i++) {
        struct mc_lora *l;
        snprintf(path[i], 64, "/tmp/bench_lora_%d_%d.gguf", (int)getpid(), i);
        if (mc_lora_synth(&b->base, b->rank, (1u << MC_PROJ_COUNT) - 1, 0, (uint64_t)i, "cold", &l,
                          &err) != MC_OK ||
            mc_lora_save_gguf(l, b->type, path[i], &err) != MC_OK)
            die("synth/save", &err);
        mc_lora_release(l);
        bl->buf[i] = read_file(path[i], &bl->len[i]);
        if (!bl->buf[i]) {
            fprintf(stderr, "bench_lora: cannot read %s\n", path[i]);
            exit(1);
        }
    }
}

/* ---- 1. Heterogeneous batching ---------------------------------------------------- */

static void bench_batching(struct bench *b, const struct blobs *bl) {
    struct mc_err err = {0};
    struct mc_lora *pool[MAX_ADAPTERS];
    for (int i = 0; i < MAX_ADAPTERS; i++)
        if (open_blob(b, bl->buf[i % N_FILES], bl->len[i % N_FILES], "bench", &pool[i], &err) !=
            MC_OK)
            die("open", &err);
    /* The last configuration is the 32 distinct adapters again, with the runner's prefetch
     * turned off: what the base product's prefetching is worth, in the same run. */
    enum { N_CONF = 5 };
    const int distinct[N_CONF] = {0, 1, 8, 32, 32};
    const char *names[N_CONF] = {"base only", "1 adapter", "8 distinct adapters",
                                 "32 distinct adapters", "32 distinct, no prefetch"};
    double best[N_CONF], best_cpu[N_CONF];
    for (int c = 0; c < N_CONF; c++)
        best[c] = best_cpu[c] = 1e30;
    struct mc_lora *ad[BATCH];
    for (int r = 0; r < b->rounds; r++) {
        for (int c = 0; c < N_CONF; c++) {
            for (int i = 0; i < BATCH; i++)
                ad[i] = distinct[c] ? pool[i % distinct[c]] : NULL;
            mc_lora_runner_set_prefetch(b->run, c != N_CONF - 1);
            step(b, ad); /* warm: pages, caches */
            double t0 = now_s(), c0 = cpu_s();
            for (int s = 0; s < b->steps; s++)
                step(b, ad);
            best[c] = fmin(best[c], now_s() - t0);
            best_cpu[c] = fmin(best_cpu[c], cpu_s() - c0);
        }
    }
    mc_lora_runner_set_prefetch(b->run, true);
    printf("decode, batch %d, %d threads, rank-%d adapters (%s file, %s resident) on "
           "q,k,v,o,gate,up,down (best of %d rounds of %d steps)\n",
           BATCH, b->threads, b->rank, mc_type_name(b->type), mc_type_name(b->resident), b->rounds,
           b->steps);
    double base_tps = BATCH * b->steps / best[0];
    for (int c = 0; c < N_CONF; c++) {
        double tps = BATCH * b->steps / best[c];
        printf("  %-26s %8.1f tok/s  %7.1f ms/step  ratio %.3f   cpu %7.1f ms/step  ratio %.3f\n",
               names[c], tps, best[c] * 1e3 / b->steps, tps / base_tps,
               best_cpu[c] * 1e3 / b->steps, best_cpu[0] / best_cpu[c]);
    }
    /* The bound: unless the reads overlap other work (the prefetch during the base
     * products), 32 distinct adapters cost at least the time to read their bytes once per
     * step at the machine's read bandwidth, measured now with the same threads. */
    double bytes = 0;
    for (int i = 0; i < MAX_ADAPTERS; i++)
        bytes += (double)mc_lora_info(pool[i])->resident_bytes;
    double gbs = bench_read_gbs(mc_ctx_pool(b->ctx), BW_BYTES);
    double base_step = best[0] / b->steps, step32 = best[3] / b->steps;
    double floor_s = bytes / (gbs * 1e9);
    printf("  32 distinct adapters read %.1f MB per step; read bandwidth %.1f GB/s: %.2f ms to "
           "read them\n"
           "  without overlap the ratio could be at most %.3f (base only plus that time); measured "
           "%.3f: %.2f ms more than base only, %.2f x the time to read them\n",
           bytes / 1e6, gbs, floor_s * 1e3, base_step / (base_step + floor_s), base_step / step32,
           (step32 - base_step) * 1e3, (step32 - base_step) / floor_s);
    for (int i = 0; i < MAX_ADAPTERS; i++)
        mc_lora_release(pool[i]);
}

/* ---- 2. Cold load ------------------------------------------------------------------- */

static void bench_cold(struct bench *b, struct blobs *bl, char (*path)[64]) {
    struct mc_err err = {0};
    double t_file = 1e30, t_buf = 1e30, sum_file = 0, sum_buf = 0;
    size_t resident = 0;
    int n = 0;
    for (int r = 0; r < 5; r++) {
        for (int i = 0; i < N_FILES; i++, n++) {
            struct mc_lora *l;
            double t0 = now_s();
            if (mc_lora_open(path[i], &b->base, &l, &err) != MC_OK)
                die("open", &err);
            double t1 = now_s();
            mc_lora_release(l);
            double t2 = now_s();
            if (open_blob(b, bl->buf[i], bl->len[i], "blob", &l, &err) != MC_OK)
                die("open buffer", &err);
            double t3 = now_s();
            resident = mc_lora_info(l)->resident_bytes;
            mc_lora_release(l);
            t_file = fmin(t_file, t1 - t0);
            t_buf = fmin(t_buf, t3 - t2);
            sum_file += t1 - t0;
            sum_buf += t3 - t2;
        }
    }
    for (int i = 0; i < N_FILES; i++)
        unlink(path[i]);
    printf("cold load of one rank-%d adapter (%zu bytes GGUF %s), %d loads\n", b->rank, bl->len[0],
           mc_type_name(b->type), n);
    printf("  from file (page cache): mean %.2f ms, best %.2f ms\n", sum_file * 1e3 / n,
           t_file * 1e3);
    printf("  from memory buffer%s: mean %.2f ms, best %.2f ms\n",
           b->resident != b->type ? " + convert" : "", sum_buf * 1e3 / n, t_buf * 1e3);
    printf("  resident: %zu bytes (%.2f MiB) per adapter\n", resident, resident / 1048576.0);
}

/* ---- 3. Residency under a Zipf mix ------------------------------------------------- */

struct zipf {
    double cdf[N_REGISTERED];
    uint64_t s;
};

static void zipf_init(struct zipf *z, double exponent, uint64_t seed) {
    double sum = 0;
    for (int i = 0; i < N_REGISTERED; i++)
        sum += 1.0 / pow(i + 1, exponent);
    double acc = 0;
    for (int i = 0; i < N_REGISTERED; i++) {
        acc += 1.0 / pow(i + 1, exponent) / sum;
        z->cdf[i] = acc;
    }
    z->s = seed;
}

static int zipf_next(struct zipf *z) {
    z->s = z->s * 6364136223846793005ull + 1442695040888963407ull;
    double u = (double)(z->s >> 11) / 9007199254740992.0;
    int lo = 0, hi = N_REGISTERED - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (z->cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

struct loader_ctx {
    struct bench *b;
    struct blobs *bl;
    int loads;
};

/* Every registered adapter is one of the N_FILES blobs: the content does not change the
 * cost of parsing and copying it. */
static int loader(void *user, const char *id, uint64_t version, struct mc_lora **out,
                  struct mc_err *err) {
    struct loader_ctx *lc = user;
    int i = atoi(id + 1) % N_FILES;
    (void)version;
    lc->loads++;
    return open_blob(lc->b, lc->bl->buf[i], lc->bl->len[i], id, out, err);
}

/* A request picks its adapter: get (loading on a miss) into *slot, dropping the old one.
 * Returns the seconds spent in the cache call. */
static double admit(struct mc_lora_cache *c, struct zipf *z, struct mc_lora **slot) {
    struct mc_err err = {0};
    char id[16];
    snprintf(id, sizeof(id), "a%d", zipf_next(z));
    mc_lora_release(*slot);
    *slot = NULL;
    double t0 = now_s();
    if (mc_lora_cache_get(c, id, 1, slot, &err) != MC_OK)
        die("cache get", &err);
    return now_s() - t0;
}

static void print_cache(const char *what, const struct mc_lora_cache_stats *a,
                        const struct mc_lora_cache_stats *b, int n_req, double t_load) {
    uint64_t hits = b->hits - a->hits, misses = b->misses - a->misses;
    printf("  %s: %d requests, hit rate %.3f (%llu hits, %llu misses, %llu evictions), "
           "%.1f ms in the cache (loads included), %.2f ms per miss\n",
           what, n_req, (double)hits / (double)(hits + misses), (unsigned long long)hits,
           (unsigned long long)misses, (unsigned long long)(b->evictions - a->evictions),
           t_load * 1e3, misses ? t_load * 1e3 / (double)misses : 0.0);
}

/* Phase 1 runs WARM_REQUESTS requests through the cache alone (steady-state hit rate and
 * load cost); phase 2 decodes with 32 slots, each request holding its adapter for
 * REQ_TOKENS steps, and measures throughput with the cache work included, against as
 * many base-only steps run in alternating blocks of BLOCK_STEPS. */
enum { WARM_REQUESTS = 4000, BLOCK_STEPS = 4 };

static void bench_residency(struct bench *b, struct blobs *bl) {
    struct mc_err err = {0};
    struct loader_ctx lc = {b, bl, 0};
    struct mc_lora_cache_params p = {.max_entries = RESIDENT, .loader = loader, .user = &lc};
    struct mc_lora_cache *c;
    if (mc_lora_cache_create(&p, &c, &err) != MC_OK)
        die("cache", &err);
    struct zipf z;
    zipf_init(&z, 1.0, 42);
    struct mc_lora *ad[BATCH] = {0};
    struct mc_lora_cache_stats s0, s1, s2;
    printf("residency: %d registered adapters, at most %d resident, Zipf(1.0) requests\n",
           N_REGISTERED, RESIDENT);

    mc_lora_cache_stats(c, &s0);
    double t_load = 0;
    for (int r = 0; r < WARM_REQUESTS; r++)
        t_load += admit(c, &z, &ad[r % BATCH]);
    mc_lora_cache_stats(c, &s1);
    print_cache("cache only", &s0, &s1, WARM_REQUESTS, t_load);

    /* Blocks of BLOCK_STEPS steps with adapters alternate with as many base-only steps
     * (no row holds an adapter), so that both see the same share of a load that changes
     * from second to second on a shared machine. */
    struct mc_lora *none[BATCH] = {0};
    int left[BATCH], n_steps = b->steps * b->rounds * 4, n_req = 0;
    for (int i = 0; i < BATCH; i++)
        left[i] = i % REQ_TOKENS; /* staggered: about 2 new requests per step */
    double dt = 0, base_t = 0;
    t_load = 0;
    for (int done = 0; done < n_steps; done += BLOCK_STEPS) {
        int n = n_steps - done < BLOCK_STEPS ? n_steps - done : BLOCK_STEPS;
        double t0 = now_s();
        for (int s = 0; s < n; s++) {
            for (int i = 0; i < BATCH; i++) {
                if (left[i]-- > 0)
                    continue;
                t_load += admit(c, &z, &ad[i]);
                left[i] = REQ_TOKENS - 1;
                n_req++;
            }
            step(b, ad);
        }
        double t1 = now_s();
        for (int s = 0; s < n; s++)
            step(b, none);
        base_t += now_s() - t1;
        dt += t1 - t0;
    }
    mc_lora_cache_stats(c, &s2);
    for (int i = 0; i < BATCH; i++)
        mc_lora_release(ad[i]);
    print_cache("decoding", &s1, &s2, n_req, t_load);
    printf("  decode with adapters: %.1f tok/s over %d steps of batch %d (base only, as many "
           "steps interleaved: %.1f tok/s, ratio %.3f)\n",
           BATCH * n_steps / dt, n_steps, BATCH, BATCH * n_steps / base_t, base_t / dt);
    mc_lora_cache_free(c);
}

static void usage(FILE *f) {
    fprintf(f, "usage: bench_lora [MODEL] [--threads N] [--steps N] [--rounds N] [--rank R]\n"
               "                  [--type f16|f32] [--resident f32|f16|q8_0]\n"
               "\n"
               "MODEL (default /tmp/synth.gguf) is made by\n"
               "  mcai model synth --like ../shared/tokenizer-tests/ggml-vocab-llama-spm.gguf \\\n"
               "      --embd 768 --layers 12 --heads 12 --kv-heads 4 --ff 2048 --type Q4_0 \\\n"
               "      -o /tmp/synth.gguf\n"
               "Defaults: 2 threads, 6 steps, 3 rounds, rank 16, F16 adapters kept as F16.\n");
}

int main(int argc, char **argv) {
    struct bench b = {.threads = 2, .steps = 6, .rounds = 3, .rank = 16, .type = MC_TYPE_F16};
    const char *path = "/tmp/synth.gguf", *resident = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (i + 1 < argc && !strcmp(argv[i], "--threads"))
            b.threads = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--steps"))
            b.steps = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--rounds"))
            b.rounds = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--type")) {
            i++;
            if (strcmp(argv[i], "f16") != 0 && strcmp(argv[i], "f32") != 0) {
                fprintf(stderr, "bench_lora: --type must be f16 or f32, got '%s'\n", argv[i]);
                return 2;
            }
            b.type = !strcmp(argv[i], "f32") ? MC_TYPE_F32 : MC_TYPE_F16;
        } else if (i + 1 < argc && !strcmp(argv[i], "--resident"))
            resident = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--rank"))
            b.rank = atoi(argv[++i]);
        else if (argv[i][0] != '-')
            path = argv[i];
        else {
            fprintf(stderr, "bench_lora: unknown option or missing value: %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    b.resident = b.type;
    if (resident && mc_type_from_name(resident, &b.resident) != MC_OK) {
        fprintf(stderr, "bench_lora: --resident f32, f16 or q8_0\n");
        return 2;
    }
    if (b.steps < 1 || b.rounds < 1 || b.rank < 1) {
        fprintf(stderr, "bench_lora: steps, rounds and rank must be positive\n");
        return 2;
    }
    struct mc_err err = {0};
    if (mc_model_load(path, &b.m, &err) != MC_OK)
        die("model", &err);
    mc_lora_base_from_model(b.m, &b.base);
    if (mc_ctx_create(b.m, BATCH, b.threads, &b.ctx, &err) != MC_OK ||
        mc_lora_runner_create(b.ctx, &b.run, &err) != MC_OK)
        die("context", &err);
    for (int i = 0; i < BATCH; i++)
        if (mc_kv_create(b.m, 64, &b.kv[i], &err) != MC_OK)
            die("kv", &err);
    b.logits = mc_malloc((size_t)BATCH * mc_model_hparams(b.m)->n_vocab * sizeof(float));
    const struct mc_hparams *hp = mc_model_hparams(b.m);
    printf("model %s: n_embd %d, %d layers, n_ff %d, %s\n", path, hp->n_embd, hp->n_layer, hp->n_ff,
           mc_type_name(hp->wtype));
    struct blobs bl;
    char paths[N_FILES][64];
    make_blobs(&b, &bl, paths);
    bench_batching(&b, &bl);
    bench_cold(&b, &bl, paths);
    bench_residency(&b, &bl);
    for (int i = 0; i < N_FILES; i++)
        mc_free(bl.buf[i]);
    for (int i = 0; i < BATCH; i++)
        mc_kv_free(b.kv[i]);
    mc_free(b.logits);
    mc_lora_runner_free(b.run);
    mc_ctx_free(b.ctx);
    mc_model_free(b.m);
    return 0;
}
