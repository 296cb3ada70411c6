/* cli_bench.c - `mcai bench`: prompt and generation speed next to the memory-bandwidth
 * bound, all measured in one run.
 *
 * Steps: (1) memory read bandwidth with the same threads, reading a buffer of at least
 * 4x the last-level cache several times, before and after the model runs, keeping the
 * best pass; (2) a prompt of 128 seeded random tokens as one batch (best of 3 runs);
 * (3) greedy generation of -n tokens one at a time after a short prompt (best of 3).
 * At batch 1 every weight is read once per token, so bandwidth / (bytes of weights per
 * token) is the speed bound; the fraction reached is printed. Timings are wall-clock and
 * depend on what else the machine runs; "best of" keeps each figure from the least
 * disturbed run. KV-cache reads (a few percent at these lengths) are not counted. */
#include "cli/cli.h"
#include "cli/cli_opts.h"

#include "base/mem.h"
#include "base/pool.h"
#include "model/model.h"
#include "model/sample.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum { HUGE_PAGE = 2 << 20 };
enum {
    PROMPT_TOKENS = 128,
    PROMPT_RUNS = 3,
    GEN_RUNS = 3,
    BW_PASSES = 5,
    MIN_BW_BYTES = 256 << 20
};

static void usage(FILE *f) {
    fprintf(f, "usage: mcai bench -m MODEL [-t THREADS] [-n GEN_TOKENS]\n"
               "\n"
               "  -m, --model FILE   GGUF model\n"
               "  -t, --threads N    threads (default: all CPUs)\n"
               "  -n N               tokens to generate (default 128)\n"
               "\n"
               "Prints prompt (128 tokens, one batch) and generation tokens/s, bytes of weights\n"
               "read per generated token, the memory bandwidth measured in the same run and the\n"
               "fraction of the bandwidth bound that generation reached.\n"
               "\n"
               "exit codes: 0 ok, 1 runtime error, 2 usage error\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- Bandwidth ----------------------------------------------------------------- */

typedef unsigned long long v2u64 __attribute__((vector_size(16)));

struct bw {
    const unsigned char *buf;
    size_t size;
    unsigned long long sink[64];
};

/* Each thread reads its own contiguous slice with four independent accumulators. */
static void bw_part(void *arg, int ith, int nth) {
    struct bw *b = arg;
    size_t n = b->size / sizeof(v2u64), per = n / (size_t)nth;
    const v2u64 *p = (const v2u64 *)b->buf + per * (size_t)ith;
    v2u64 a0 = {0, 0}, a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 4 <= per; i += 4) {
        a0 += p[i];
        a1 += p[i + 1];
        a2 += p[i + 2];
        a3 += p[i + 3];
    }
    v2u64 s = a0 + a1 + a2 + a3;
    b->sink[ith % 64] = s[0] + s[1];
}

/* Last-level cache size: sysfs first (glibc's sysconf value is wrong on some virtual
 * machines, e.g. ten times too large), then sysconf, then 32 MiB. */
static size_t llc_bytes(void) {
    for (int idx = 3; idx >= 2; idx--) {
        char path[96];
        snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu0/cache/index%d/size", idx);
        FILE *f = fopen(path, "r");
        unsigned long v = 0;
        char unit = 0;
        int n = f ? fscanf(f, "%lu%c", &v, &unit) : 0;
        if (f)
            fclose(f);
        if (n >= 1 && v > 0)
            return (size_t)v << (unit == 'K' ? 10 : unit == 'M' ? 20 : 0);
    }
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    return l3 > 0 ? (size_t)l3 : (size_t)32 << 20;
}

/* Best read bandwidth over several passes, in bytes per second; 0 if out of memory.
 * The buffer is its own anonymous mapping with transparent huge pages requested
 * (mc_malloc cannot ask for them): with 4 KiB pages the probe measures TLB misses as much
 * as memory and reads up to a third lower, which would flatter the fraction. */
static double measure_bandwidth(struct mc_pool *pool, size_t *size_out) {
    struct bw b = {0};
    b.size = 4 * llc_bytes();
    if (b.size < MIN_BW_BYTES)
        b.size = MIN_BW_BYTES;
    b.size = (b.size + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    unsigned char *buf =
        mmap(NULL, b.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        return 0.0;
    madvise(buf, b.size, MADV_HUGEPAGE); /* a hint; without THP the probe still runs */
    memset(buf, 1, b.size);
    b.buf = buf;
    double best = 0.0;
    for (int pass = 0; pass < BW_PASSES; pass++) {
        double t0 = now_s();
        mc_pool_run(pool, bw_part, &b);
        double bw = (double)b.size / (now_s() - t0);
        if (bw > best)
            best = bw;
    }
    munmap(buf, b.size);
    *size_out = b.size;
    return best;
}

/* ---- Model runs ---------------------------------------------------------------- */

struct run {
    struct mc_model *m;
    struct mc_ctx *ctx;
    struct mc_kv *kv;
    float *logits;
    struct mc_batch_row rows[PROMPT_TOKENS];
};

static void fill_prompt(struct run *r, uint64_t seed) {
    struct mc_rng rng;
    mc_rng_seed(&rng, seed);
    int32_t n_vocab = mc_model_hparams(r->m)->n_vocab;
    for (int i = 0; i < PROMPT_TOKENS; i++) {
        r->rows[i].token = (int32_t)(mc_rng_next(&rng) % (uint64_t)n_vocab);
        r->rows[i].pos = i;
        r->rows[i].kv = r->kv;
        r->rows[i].want_logits = i == PROMPT_TOKENS - 1;
    }
}

/* Seconds for the best of PROMPT_RUNS prompts of 128 tokens in one batch. */
static int bench_prompt(struct run *r, double *best, struct mc_err *err) {
    *best = 1e30;
    for (int k = 0; k < PROMPT_RUNS; k++) {
        mc_kv_truncate(r->kv, 0);
        fill_prompt(r, (uint64_t)k + 1);
        double t0 = now_s();
        int rc = mc_forward(r->ctx, r->rows, PROMPT_TOKENS, r->logits, NULL, err);
        if (rc != MC_OK)
            return rc;
        double t = now_s() - t0;
        if (t < *best)
            *best = t;
    }
    return MC_OK;
}

/* Seconds for n greedy tokens after an 8-token prompt, best of GEN_RUNS runs. */
static int bench_gen(struct run *r, int n, double *best, struct mc_err *err) {
    int32_t n_vocab = mc_model_hparams(r->m)->n_vocab;
    int rc = MC_OK;
    *best = 1e30;
    for (int k = 0; k < GEN_RUNS && rc == MC_OK; k++) {
        mc_kv_truncate(r->kv, 0);
        fill_prompt(r, 99);
        r->rows[7].want_logits = true;
        rc = mc_forward(r->ctx, r->rows, 8, r->logits, NULL, err);
        double t0 = now_s();
        for (int i = 0; i < n && rc == MC_OK; i++) {
            struct mc_batch_row row = {mc_argmax(r->logits, n_vocab), 8 + i, r->kv, true, NULL, 0};
            rc = mc_forward(r->ctx, &row, 1, r->logits, NULL, err);
        }
        double t = now_s() - t0;
        if (t < *best)
            *best = t;
    }
    return rc;
}

static int bench(const char *path, int n_threads, int n_gen) {
    struct mc_err err = {0};
    struct run r = {0};
    int rc = mc_model_load(path, &r.m, &err);
    if (rc == MC_OK)
        rc = mc_kv_create(r.m, PROMPT_TOKENS + n_gen + 8, &r.kv, &err);
    if (rc == MC_OK)
        rc = mc_ctx_create(r.m, PROMPT_TOKENS, n_threads, &r.ctx, &err);
    if (rc == MC_OK && !(r.logits = mc_malloc(sizeof(float) * (size_t)PROMPT_TOKENS *
                                              (size_t)mc_model_hparams(r.m)->n_vocab)))
        rc = mc_err_set(&err, MC_ENOMEM, "logits allocation failed");
    /* Bandwidth is measured before and after the model runs, with the same thread
     * count, and the better figure is kept: on a shared machine this errs towards a
     * higher bound, i.e. a lower (more modest) fraction. */
    size_t bw_size = 0;
    double bw = 0, t_prompt = 0, t_gen = 0;
    if (rc == MC_OK)
        bw = measure_bandwidth(mc_ctx_pool(r.ctx), &bw_size);
    if (rc == MC_OK)
        rc = bench_prompt(&r, &t_prompt, &err);
    if (rc == MC_OK)
        rc = bench_gen(&r, n_gen, &t_gen, &err);
    if (rc == MC_OK) {
        double bw2 = measure_bandwidth(mc_ctx_pool(r.ctx), &bw_size);
        bw = bw2 > bw ? bw2 : bw;
    }
    if (rc != MC_OK) {
        fprintf(stderr, "mcai bench: %s\n", err.msg);
    } else {
        const struct mc_hparams *hp = mc_model_hparams(r.m);
        double bpt = (double)mc_model_bytes_per_token(r.m);
        double gen_tps = n_gen / t_gen, bound = bw > 0 ? bw / bpt : 0;
        printf("model:               %s (%s, %d layers, n_embd %d, vocab %d)\n", path, hp->name,
               hp->n_layer, hp->n_embd, hp->n_vocab);
        printf("threads:             %d\n", mc_ctx_n_threads(r.ctx));
        printf("prompt:              %d tokens in %.1f ms = %.1f tok/s\n", PROMPT_TOKENS,
               t_prompt * 1e3, PROMPT_TOKENS / t_prompt);
        printf("generation:          %d tokens in %.1f ms = %.1f tok/s\n", n_gen, t_gen * 1e3,
               gen_tps);
        printf("weights per token:   %.1f MB\n", bpt / 1e6);
        printf("memory bandwidth:    %.2f GB/s (read of %zu MiB, best of 2 x %d passes)\n",
               bw / 1e9, bw_size >> 20, BW_PASSES);
        printf("bandwidth bound:     %.1f tok/s\n", bound);
        printf("fraction of bound:   %.2f\n", bound > 0 ? gen_tps / bound : 0.0);
    }
    mc_free(r.logits);
    mc_ctx_free(r.ctx);
    mc_kv_free(r.kv);
    mc_model_free(r.m);
    return rc == MC_OK ? CLI_OK : CLI_ERR;
}

int cmd_bench(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        usage(stdout);
        return CLI_OK;
    }
    const char *model = NULL;
    long threads = 0, n_gen = 128;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = !v;
        if (!bad && (!strcmp(a, "-m") || !strcmp(a, "--model")))
            model = v;
        else if (!bad && (!strcmp(a, "-t") || !strcmp(a, "--threads")))
            bad = cli_parse_long(v, 0, 256, &threads);
        else if (!bad && !strcmp(a, "-n"))
            bad = cli_parse_long(v, 1, 4096, &n_gen);
        else
            bad = 1;
        if (bad) {
            fprintf(stderr, "mcai bench: unknown option or bad value: %s\n", a);
            usage(stderr);
            return CLI_USAGE;
        }
    }
    if (!model) {
        fprintf(stderr, "mcai bench: -m MODEL is required\n");
        usage(stderr);
        return CLI_USAGE;
    }
    return bench(model, (int)threads, (int)n_gen);
}
