/* cli_quantize.c - `mcai quantize IN OUT TYPE`: rewrite a GGUF model with its weight
 * matrices in another tensor type.
 *
 * Every 2-D tensor named *.weight whose row length is a multiple of the target type's
 * block size is converted: dequantized to F32 when it is not F32 already, then quantized
 * with the reference quantizers of quant.c, rows spread over a thread pool. 1-D tensors
 * (norms, biases), matrices whose rows do not fit the block size and matrices of types
 * this build cannot decode keep their type. Q4_K_M is the reference mix: Q6_K for the
 * output matrix (token_embd when the output is tied to it) and for attn_v and ffn_down
 * in the "more bits" layers, Q4_K everywhere else. Metadata is copied; general.file_type
 * (llama.cpp numbering) and general.quantization_version are set. The output is built in
 * memory, as the GGUF writer does, and written once under a temporary name. */
#include "cli/cli.h"

#include "base/err.h"
#include "base/mem.h"
#include "base/pool.h"
#include "model/gguf.h"
#include "model/quant.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* llama.cpp's file types (llama_ftype) for what we write. */
enum {
    FTYPE_ALL_F32 = 0,
    FTYPE_F16 = 1,
    FTYPE_Q4_0 = 2,
    FTYPE_Q8_0 = 7,
    FTYPE_Q4_K_S = 14,
    FTYPE_Q4_K_M = 15,
    FTYPE_Q5_K_S = 16,
    FTYPE_Q6_K = 18,
    FTYPE_BF16 = 32,
};

enum { QUANTIZATION_VERSION = 2 }; /* ggml's current block layouts */

struct target {
    enum mc_type type; /* type of most matrices */
    bool q4_k_m;       /* the mix described at the top */
    uint32_t ftype;
};

static void usage(FILE *f) {
    fprintf(f, "usage: mcai quantize [-t THREADS] IN.gguf OUT.gguf TYPE\n"
               "  Writes OUT with every 2-D *.weight matrix of IN converted to TYPE (rows\n"
               "  that do not fit TYPE's block size, and 1-D tensors, keep their type).\n"
               "  TYPE: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K or Q4_K_M (Q4_K with\n"
               "  Q6_K for the output matrix and half of the attn_v/ffn_down layers).\n"
               "  -t N  threads (default: all CPUs)\n"
               "exit codes: 0 ok, 1 runtime error, 2 usage error\n");
}

static int parse_target(const char *name, struct target *t) {
    static const struct {
        enum mc_type type;
        uint32_t ftype;
    } FTYPES[] = {
        {MC_TYPE_F32, FTYPE_ALL_F32}, {MC_TYPE_F16, FTYPE_F16},   {MC_TYPE_BF16, FTYPE_BF16},
        {MC_TYPE_Q8_0, FTYPE_Q8_0},   {MC_TYPE_Q4_0, FTYPE_Q4_0}, {MC_TYPE_Q4_K, FTYPE_Q4_K_S},
        {MC_TYPE_Q5_K, FTYPE_Q5_K_S}, {MC_TYPE_Q6_K, FTYPE_Q6_K},
    };
    memset(t, 0, sizeof(*t));
    if (strcasecmp(name, "Q4_K_M") == 0) {
        *t = (struct target){.type = MC_TYPE_Q4_K, .q4_k_m = true, .ftype = FTYPE_Q4_K_M};
        return 0;
    }
    enum mc_type ty;
    if (mc_type_from_name(name, &ty) != MC_OK)
        return -1;
    for (size_t i = 0; i < sizeof(FTYPES) / sizeof(FTYPES[0]); i++) {
        if (FTYPES[i].type == ty) {
            t->type = ty;
            t->ftype = FTYPES[i].ftype;
            return 0;
        }
    }
    return -1;
}

/* ---- Which type each tensor gets ---------------------------------------------------- */

/* Layer index of "blk.N.*", or -1. */
static int layer_of(const char *name) {
    if (strncmp(name, "blk.", 4) != 0)
        return -1;
    char *end;
    long n = strtol(name + 4, &end, 10);
    return (end != name + 4 && *end == '.' && n >= 0 && n < 100000) ? (int)n : -1;
}

/* llama.cpp's use_more_bits: the first and last eighth of the layers and every third in
 * between get Q6_K in a Q4_K_M file. */
static bool more_bits(int i, int n) {
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* The type tensor t should have in the output. */
static enum mc_type choose_type(const struct target *tg, const struct mc_gguf_tensor *t,
                                bool has_output, int n_layer) {
    if (t->n_dims != 2 || !ends_with(t->name, ".weight") || !mc_type_is_supported(t->type))
        return t->type;
    enum mc_type to = tg->type;
    if (tg->q4_k_m) {
        int il = layer_of(t->name);
        if (strcmp(t->name, "output.weight") == 0 ||
            (!has_output && strcmp(t->name, "token_embd.weight") == 0))
            to = MC_TYPE_Q6_K;
        else if (il >= 0 &&
                 (ends_with(t->name, ".attn_v.weight") || ends_with(t->name, ".ffn_down.weight")) &&
                 more_bits(il, n_layer))
            to = MC_TYPE_Q6_K;
    }
    return mc_type_row_size(to, t->ne[0]) ? to : t->type;
}

/* ---- Conversion ----------------------------------------------------------------------- */

struct conv_job {
    const struct mc_gguf_tensor *t;
    enum mc_type to;
    int64_t rows, cols;
    uint8_t *dst;
    int *rcs;            /* (n_threads) each thread's result */
    struct mc_err *errs; /* (n_threads) and message */
};

static void conv_part(void *ctx, int i, int n) {
    struct conv_job *j = ctx;
    float *row = mc_malloc((size_t)j->cols * sizeof(float));
    struct mc_err err = {0};
    int rc = row ? MC_OK : MC_ENOMEM;
    size_t in_rs = mc_type_row_size(j->t->type, j->cols), out_rs = mc_type_row_size(j->to, j->cols);
    for (int64_t r = j->rows * i / n; rc == MC_OK && r < j->rows * (i + 1) / n; r++) {
        rc = mc_dequantize_row(j->t->type, (const uint8_t *)j->t->data + (size_t)r * in_rs, row,
                               j->cols, &err);
        if (rc == MC_OK)
            rc = mc_quantize_row(j->to, row, j->dst + (size_t)r * out_rs, j->cols, &err);
    }
    j->rcs[i] = rc;
    j->errs[i] = err;
    mc_free(row);
}

/* Converts tensor t to type `to` and adds it to w. */
static int add_converted(struct mc_gguf_writer *w, const struct mc_gguf_tensor *t, enum mc_type to,
                         struct mc_pool *pool, struct mc_err *err) {
    struct conv_job job = {.t = t, .to = to, .cols = t->ne[0], .rows = t->ne[1]};
    int n = mc_pool_n_threads(pool);
    job.dst = mc_malloc(mc_type_row_size(to, job.cols) * (size_t)job.rows);
    job.rcs = mc_calloc((size_t)n, sizeof(*job.rcs));
    job.errs = mc_calloc((size_t)n, sizeof(*job.errs));
    int rc = MC_OK;
    if (!job.dst || !job.rcs || !job.errs) {
        rc = mc_err_set(err, MC_ENOMEM, "%s: no memory for %lld x %lld %s", t->name,
                        (long long)job.rows, (long long)job.cols, mc_type_name(to));
        goto out_free;
    }
    mc_pool_run(pool, conv_part, &job);
    for (int i = 0; i < n; i++) {
        if (job.rcs[i] != MC_OK) {
            rc = job.rcs[i];
            if (err)
                *err = job.errs[i];
            mc_err_prefix(err, "%s", t->name);
            goto out_free;
        }
    }
    rc = mc_gguf_writer_add_tensor(w, t->name, to, t->n_dims, t->ne, job.dst, err);
out_free:
    mc_free(job.dst);
    mc_free(job.rcs);
    mc_free(job.errs);
    return rc;
}

static bool skip_key(const char *key) {
    return strcmp(key, "general.file_type") == 0 ||
           strcmp(key, "general.quantization_version") == 0;
}

/* Builds the output in w from g. Prints one line per tensor. */
static int quantize_all(const struct mc_gguf *g, const struct target *tg, struct mc_pool *pool,
                        struct mc_gguf_writer *w, size_t *out_bytes, struct mc_err *err) {
    int rc = mc_gguf_writer_copy_kv(w, g, skip_key, err);
    if (rc == MC_OK)
        rc = mc_gguf_writer_set_u32(w, "general.file_type", tg->ftype, err);
    if (rc == MC_OK)
        rc = mc_gguf_writer_set_u32(w, "general.quantization_version", QUANTIZATION_VERSION, err);
    if (rc != MC_OK)
        return rc;

    int n_layer = 0;
    for (int64_t i = 0; i < mc_gguf_n_tensors(g); i++) {
        int il = layer_of(mc_gguf_tensor(g, i)->name);
        n_layer = il + 1 > n_layer ? il + 1 : n_layer;
    }
    bool has_output = mc_gguf_find_tensor(g, "output.weight") != NULL;

    *out_bytes = 0;
    int64_t n_matrices = 0, n_converted = 0;
    for (int64_t i = 0; i < mc_gguf_n_tensors(g) && rc == MC_OK; i++) {
        const struct mc_gguf_tensor *t = mc_gguf_tensor(g, i);
        enum mc_type to = choose_type(tg, t, has_output, n_layer);
        n_matrices += t->n_dims >= 2;
        n_converted += to != t->type;
        if (to == t->type)
            rc = mc_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, err);
        else
            rc = add_converted(w, t, to, pool, err);
        if (rc != MC_OK)
            break;
        size_t bytes = mc_type_row_size(to, t->ne[0]) * (size_t)(t->ne[1] * t->ne[2] * t->ne[3]);
        *out_bytes += bytes;
        printf("%-32s %-5s -> %-5s %6lld x %-6lld %10.2f MB\n", t->name, mc_type_name(t->type),
               mc_type_name(to), (long long)t->ne[0], (long long)(t->ne[1] * t->ne[2] * t->ne[3]),
               bytes / 1e6);
    }
    /* Rows narrower than a K-quant block of 256 (small models) keep their type: say so
     * rather than name a type the file does not hold. */
    if (rc == MC_OK && n_matrices > 0 && n_converted == 0)
        fprintf(stderr,
                "mcai quantize: warning: no tensor was converted: every row is too short or "
                "not a multiple of the block size of %s\n",
                tg->q4_k_m ? "Q4_K_M" : mc_type_name(tg->type));
    return rc;
}

/* Fails early when OUT's directory cannot take a new file, rather than after the whole
 * conversion has run. */
static int check_output_dir(const char *out, struct mc_err *err) {
    char dir[4096];
    const char *slash = strrchr(out, '/');
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == out)
        snprintf(dir, sizeof(dir), "/");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - out), out);
    if (access(dir, W_OK | X_OK) != 0)
        return mc_err_set(err, MC_EIO, "cannot create %s: directory %s: %s", out, dir,
                          strerror(errno));
    return MC_OK;
}

int cmd_quantize(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        usage(stdout);
        return CLI_OK;
    }
    int n_threads = 0, n_pos = 0;
    const char *pos[3] = {NULL, NULL, NULL};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0 || strcmp(argv[i], "--threads") == 0) {
            char *end = NULL;
            long v = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : 0;
            if (!end || *end || v < 1 || v > 256) {
                fprintf(stderr, "mcai quantize: -t needs a thread count from 1 to 256\n");
                return CLI_USAGE;
            }
            n_threads = (int)v;
            i++;
        } else if (n_pos < 3) {
            pos[n_pos++] = argv[i];
        } else {
            fprintf(stderr, "mcai quantize: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return CLI_USAGE;
        }
    }
    struct target tg;
    if (n_pos != 3) {
        usage(stderr);
        return CLI_USAGE;
    }
    if (parse_target(pos[2], &tg) != 0) {
        fprintf(stderr, "mcai quantize: unknown type '%s' (see mcai quantize --help)\n", pos[2]);
        return CLI_USAGE;
    }

    struct mc_err err = {0};
    struct mc_gguf *g = NULL;
    struct mc_pool *pool = NULL;
    struct mc_gguf_writer *w = NULL;
    size_t out_bytes = 0;
    int rc = mc_gguf_open(pos[0], &g, &err);
    if (rc == MC_OK)
        rc = check_output_dir(pos[1], &err);
    if (rc == MC_OK)
        rc = mc_pool_create(n_threads, &pool, &err);
    if (rc == MC_OK)
        rc = mc_gguf_writer_create(&w, &err);
    if (rc == MC_OK)
        rc = quantize_all(g, &tg, pool, w, &out_bytes, &err);
    if (rc == MC_OK)
        rc = mc_gguf_writer_write(w, pos[1], &err);
    if (rc == MC_OK)
        printf("mcai quantize: wrote %s (%s, %.2f MB of tensors)\n", pos[1],
               tg.q4_k_m ? "Q4_K_M" : mc_type_name(tg.type), out_bytes / 1e6);
    else
        fprintf(stderr, "mcai quantize: %s\n", err.msg);
    mc_gguf_writer_free(w);
    mc_pool_free(pool);
    mc_gguf_close(g);
    return rc == MC_OK ? CLI_OK : CLI_ERR;
}
