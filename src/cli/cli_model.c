/* cli_model.c - `mcai model synth`: a llama-architecture model of a chosen shape with
 * seeded random weights and the vocabulary of another GGUF file.
 *
 * Used by tests and benchmarks that need a realistic shape without downloading weights.
 * Only the tokenizer.* keys are copied from the --like file; the llama.* hyperparameters
 * come from the options. Matrices are uniform in [-a, a] with a = sqrt(3 / cols) (unit
 * variance of each output before the norms), norms are 1, and each row is quantized
 * with mc_quantize_row as it is generated, so memory holds the output file once.
 * Q4_K_M is a mix, as the reference quantizer makes it: Q6_K for the output matrix and
 * for attn_v and ffn_down in the first and last eighth of the layers and every third
 * layer in between, Q4_K elsewhere. The output is not meant to say anything. */
#include "cli/cli.h"
#include "cli/cli_opts.h"

#include "base/mem.h"
#include "model/gguf.h"
#include "model/quant.h"
#include "model/sample.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static void usage(FILE *f) {
    fprintf(f, "usage: mcai model synth --like VOCAB.gguf -o OUT.gguf [options]\n"
               "\n"
               "  --like FILE       GGUF file whose tokenizer (vocabulary) is copied\n"
               "  -o, --output FILE output GGUF file\n"
               "  --embd N          embedding size (default 768)\n"
               "  --layers N        layers (default 12)\n"
               "  --heads N         attention heads (default 12)\n"
               "  --kv-heads N      key/value heads (default 4)\n"
               "  --ff N            feed-forward size (default 2048)\n"
               "  --ctx N           context length written to the metadata (default 2048)\n"
               "  --type T          F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K or Q4_K_M\n"
               "                    (default Q8_0)\n"
               "  --seed S          random seed (default 1)\n"
               "\n"
               "exit codes: 0 ok, 1 runtime error, 2 usage error\n");
}

struct synth {
    const char *like;
    const char *out;
    long embd, layers, heads, kv_heads, ff, ctx;
    enum mc_type type;
    bool q4_k_m;
    uint64_t seed;
};

static bool not_tokenizer_key(const char *key) {
    return strncmp(key, "tokenizer.", 10) != 0;
}

static int parse(int argc, char **argv, struct synth *s) {
    memset(s, 0, sizeof(*s));
    s->embd = 768, s->layers = 12, s->heads = 12, s->kv_heads = 4, s->ff = 2048, s->ctx = 2048;
    s->type = MC_TYPE_Q8_0;
    s->seed = 1;
    struct {
        const char *name;
        long *dst;
    } nums[] = {{"--embd", &s->embd},         {"--layers", &s->layers}, {"--heads", &s->heads},
                {"--kv-heads", &s->kv_heads}, {"--ff", &s->ff},         {"--ctx", &s->ctx}};
    for (int i = 2; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool done = false;
        if (!v) {
            fprintf(stderr, "mcai model synth: missing value for %s\n", a);
            return -1;
        }
        for (size_t k = 0; k < sizeof(nums) / sizeof(nums[0]) && !done; k++) {
            if (strcmp(a, nums[k].name) != 0)
                continue;
            if (cli_parse_long(v, 1, 1 << 16, nums[k].dst) != 0) {
                fprintf(stderr, "mcai model synth: bad value for %s: %s\n", a, v);
                return -1;
            }
            done = true;
        }
        if (done)
            continue;
        long seed;
        if (!strcmp(a, "--like")) {
            s->like = v;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            s->out = v;
        } else if (!strcmp(a, "--seed") && cli_parse_long(v, 0, 1L << 62, &seed) == 0) {
            s->seed = (uint64_t)seed;
        } else if (!strcmp(a, "--type") && !strcasecmp(v, "Q4_K_M")) {
            s->type = MC_TYPE_Q4_K;
            s->q4_k_m = true;
        } else if (!strcmp(a, "--type") && mc_type_from_name(v, &s->type) == MC_OK &&
                   mc_type_is_supported(s->type)) {
            s->q4_k_m = false;
        } else {
            fprintf(stderr, "mcai model synth: unknown option or bad value: %s %s\n", a, v);
            return -1;
        }
    }
    if (!s->like || !s->out) {
        fprintf(stderr, "mcai model synth: --like and -o are required\n");
        return -1;
    }
    if (s->embd % s->heads != 0 || s->heads % s->kv_heads != 0) {
        fprintf(stderr, "mcai model synth: --embd must be a multiple of --heads, and --heads of "
                        "--kv-heads\n");
        return -1;
    }
    return 0;
}

/* The reference quantizer's "use more bits" layers for Q4_K_M. */
static bool more_bits(long i, long n) {
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/* Adds a (rows, cols) matrix of type t with uniform values in [-a, a]. */
static int add_matrix(struct mc_gguf_writer *w, struct mc_rng *rng, const char *name,
                      enum mc_type t, int64_t rows, int64_t cols, struct mc_err *err) {
    size_t rb = mc_type_row_size(t, cols);
    if (rb == 0)
        return mc_err_set(err, MC_EINVAL, "%s: row of %lld is not a multiple of %s's block of %lld",
                          name, (long long)cols, mc_type_name(t), (long long)mc_type_block_size(t));
    uint8_t *data = mc_malloc(rb * (size_t)rows);
    float *row = mc_malloc((size_t)cols * sizeof(float));
    int rc = data && row ? MC_OK : mc_err_set(err, MC_ENOMEM, "%s: allocation failed", name);
    float a = sqrtf(3.0f / (float)cols);
    for (int64_t r = 0; r < rows && rc == MC_OK; r++) {
        for (int64_t c = 0; c < cols; c++)
            row[c] = (float)(2.0 * mc_rng_uniform(rng) - 1.0) * a;
        rc = mc_quantize_row(t, row, data + (size_t)r * rb, cols, err);
    }
    int64_t ne[2] = {cols, rows};
    if (rc == MC_OK)
        rc = mc_gguf_writer_add_tensor(w, name, t, 2, ne, data, err);
    mc_free(row);
    mc_free(data);
    return rc;
}

static int add_ones(struct mc_gguf_writer *w, const char *name, int64_t n, struct mc_err *err) {
    float *v = mc_malloc((size_t)n * sizeof(float));
    if (!v)
        return mc_err_set(err, MC_ENOMEM, "%s: allocation failed", name);
    for (int64_t i = 0; i < n; i++)
        v[i] = 1.0f;
    int rc = mc_gguf_writer_add_tensor(w, name, MC_TYPE_F32, 1, &n, v, err);
    mc_free(v);
    return rc;
}

static int set_hparams(struct mc_gguf_writer *w, const struct synth *s, struct mc_err *err) {
    char name[96];
    snprintf(name, sizeof(name), "synth-%ld-%ldL-%s", s->embd, s->layers,
             s->q4_k_m ? "Q4_K_M" : mc_type_name(s->type));
    int rc;
    if ((rc = mc_gguf_writer_set_str(w, "general.architecture", "llama", 5, err)) ||
        (rc = mc_gguf_writer_set_str(w, "general.name", name, strlen(name), err)) ||
        (rc = mc_gguf_writer_set_u32(w, "llama.context_length", (uint32_t)s->ctx, err)) ||
        (rc = mc_gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)s->embd, err)) ||
        (rc = mc_gguf_writer_set_u32(w, "llama.block_count", (uint32_t)s->layers, err)) ||
        (rc = mc_gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)s->ff, err)) ||
        (rc = mc_gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)s->heads, err)) ||
        (rc = mc_gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)s->kv_heads,
                                     err)) ||
        (rc = mc_gguf_writer_set_u32(w, "llama.rope.dimension_count",
                                     (uint32_t)(s->embd / s->heads), err)) ||
        (rc = mc_gguf_writer_set_f32(w, "llama.rope.freq_base", 10000.0f, err)) ||
        (rc = mc_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f, err)))
        return rc;
    return MC_OK;
}

static int add_layer(struct mc_gguf_writer *w, struct mc_rng *rng, const struct synth *s, long il,
                     struct mc_err *err) {
    int64_t d = s->embd, dkv = s->embd / s->heads * s->kv_heads, ff = s->ff;
    enum mc_type big = s->q4_k_m && more_bits(il, s->layers) ? MC_TYPE_Q6_K : s->type;
    struct {
        const char *sfx;
        int64_t rows, cols;
        enum mc_type t;
    } m[7] = {{"attn_q", d, d, s->type},    {"attn_k", dkv, d, s->type},
              {"attn_v", dkv, d, big},      {"attn_output", d, d, s->type},
              {"ffn_gate", ff, d, s->type}, {"ffn_up", ff, d, s->type},
              {"ffn_down", d, ff, big}};
    char name[64];
    int rc;
    snprintf(name, sizeof(name), "blk.%ld.attn_norm.weight", il);
    if ((rc = add_ones(w, name, d, err)))
        return rc;
    snprintf(name, sizeof(name), "blk.%ld.ffn_norm.weight", il);
    if ((rc = add_ones(w, name, d, err)))
        return rc;
    for (int i = 0; i < 7; i++) {
        snprintf(name, sizeof(name), "blk.%ld.%s.weight", il, m[i].sfx);
        if ((rc = add_matrix(w, rng, name, m[i].t, m[i].rows, m[i].cols, err)))
            return rc;
    }
    return MC_OK;
}

static int synth(const struct synth *s, struct mc_err *err) {
    struct mc_gguf *like = NULL;
    struct mc_gguf_writer *w = NULL;
    struct mc_rng rng;
    mc_rng_seed(&rng, s->seed);
    int rc = mc_gguf_open(s->like, &like, err);
    if (rc != MC_OK)
        return rc;
    int64_t ki = mc_gguf_find_key(like, "tokenizer.ggml.tokens");
    if (ki < 0 || mc_gguf_key_type(like, ki) != MC_GGUF_ARRAY) {
        mc_gguf_close(like);
        return mc_err_set(err, MC_EFORMAT, "%s has no tokenizer.ggml.tokens array", s->like);
    }
    int64_t n_vocab = (int64_t)mc_gguf_arr_n(like, ki);
    enum mc_type out_t = s->q4_k_m ? MC_TYPE_Q6_K : s->type;
    if ((rc = mc_gguf_writer_create(&w, err)) ||
        (rc = mc_gguf_writer_copy_kv(w, like, not_tokenizer_key, err)) ||
        (rc = set_hparams(w, s, err)) ||
        (rc = mc_gguf_writer_set_u32(w, "general.file_type", s->q4_k_m ? 15 : (uint32_t)s->type,
                                     err)) ||
        (rc = add_matrix(w, &rng, "token_embd.weight", s->type, n_vocab, s->embd, err)))
        goto out;
    for (long il = 0; il < s->layers; il++)
        if ((rc = add_layer(w, &rng, s, il, err)))
            goto out;
    if ((rc = add_ones(w, "output_norm.weight", s->embd, err)) ||
        (rc = add_matrix(w, &rng, "output.weight", out_t, n_vocab, s->embd, err)) ||
        (rc = mc_gguf_writer_write(w, s->out, err)))
        goto out;
out:
    mc_gguf_writer_free(w);
    mc_gguf_close(like);
    return rc;
}

int cmd_model(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        usage(stdout);
        return CLI_OK;
    }
    if (argc < 2 || strcmp(argv[1], "synth") != 0) {
        fprintf(stderr, "mcai model: expected the subcommand 'synth'\n");
        usage(stderr);
        return CLI_USAGE;
    }
    struct synth s;
    if (parse(argc, argv, &s) != 0) {
        usage(stderr);
        return CLI_USAGE;
    }
    struct mc_err err = {0};
    if (synth(&s, &err) != MC_OK) {
        fprintf(stderr, "mcai model synth: %s\n", err.msg);
        return CLI_ERR;
    }
    fprintf(stderr, "mcai model synth: wrote %s\n", s.out);
    return CLI_OK;
}
