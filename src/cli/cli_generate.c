/* cli_generate.c - `mcai generate`: complete a prompt and stream the text (or the ids).
 *
 * The prompt is tokenized as the reference does (BOS added as the vocabulary asks,
 * special-token text not parsed), or with --chat rendered as one user message through
 * the model's chat template. Text goes to stdout as it is released by the generation
 * stream; timings go to stderr. With --ids the generated ids are printed instead,
 * space-separated on one line, for comparison with reference outputs. */
#include "cli/cli.h"
#include "cli/cli_opts.h"

#include "adapter/lora.h"
#include "base/log.h"
#include "base/mem.h"
#include "model/chat.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/sample.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h> /* access */

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: mcai generate -m MODEL -p PROMPT [options]\n"
        "\n"
        "  -m, --model FILE        GGUF model (llama or qwen2 architecture)\n"
        "  -p, --prompt TEXT       prompt text\n"
        "  -n, --n-predict N       tokens to generate (default 128; <= 0: until context full)\n"
        "  -c, --ctx-size N        context size (default: prompt + N, or the model's up to 4096)\n"
        "  -t, --threads N         threads (default: all CPUs)\n"
        "%s"
        "      --stop STR          stop before STR (repeatable, up to 16)\n"
        "      --ignore-eos        do not stop at end-of-generation tokens\n"
        "      --ids               print generated token ids instead of text\n"
        "      --chat              wrap the prompt as a user message in the chat template\n"
        "      --lora FILE[:SCALE] apply a LoRA adapter (GGUF file or PEFT directory), scale 1\n"
        "\n"
        "exit codes: 0 ok, 1 runtime error, 2 usage error\n",
        cli_sample_help);
}

struct opts {
    const char *model;
    const char *prompt;
    int32_t n_predict;
    int32_t n_ctx;
    int32_t n_threads;
    struct mc_sample_params sp;
    const char *stop[MC_GEN_MAX_STOP];
    size_t n_stop;
    bool ignore_eos;
    bool ids;
    bool chat;
    bool seed_set;
    const char *lora; /* adapter path, SCALE suffix removed */
    char lora_buf[4096];
    float lora_scale;
};

/* -n, -c, -t; returns 1 if opt was one of them, -1 on a bad value. */
static int parse_int_opt(struct opts *o, const char *opt, const char *val) {
    long l;
    int32_t *dst;
    if (!strcmp(opt, "-n") || !strcmp(opt, "--n-predict"))
        dst = &o->n_predict;
    else if (!strcmp(opt, "-c") || !strcmp(opt, "--ctx-size"))
        dst = &o->n_ctx;
    else if (!strcmp(opt, "-t") || !strcmp(opt, "--threads"))
        dst = &o->n_threads;
    else
        return 0;
    if (cli_parse_long(val, -1, 1 << 20, &l) != 0)
        return -1;
    *dst = (int32_t)l;
    return 1;
}

/* FILE or FILE:SCALE. A path that exists is taken whole, and so is a suffix with a '/' in
 * it, so that paths containing colons still work; any other suffix must be a finite
 * number, so that "a.gguf:inf" or "a.gguf:abc" is a usage error rather than a missing
 * file. */
static int parse_lora(struct opts *o, const char *v) {
    const char *colon = strrchr(v, ':');
    o->lora_scale = 1.0f;
    o->lora = v;
    if (!colon || strchr(colon, '/') || access(v, F_OK) == 0)
        return 0;
    /* As the server's lora_scale: a double in 0..16, then a float (a scale too small for
     * a float is 0, the base model). */
    char *end;
    double scale = strtod(colon + 1, &end);
    if (end == colon + 1 || *end != '\0' || !(scale >= 0 && scale <= MC_LORA_MAX_SCALE)) {
        fprintf(stderr, "mcai generate: --lora %s: scale '%s' is not a number from 0 to %g\n", v,
                colon + 1, (double)MC_LORA_MAX_SCALE);
        return -1;
    }
    o->lora_scale = (float)scale;
    if ((size_t)(colon - v) >= sizeof(o->lora_buf)) {
        fprintf(stderr, "mcai generate: --lora path too long\n");
        return -1;
    }
    memcpy(o->lora_buf, v, (size_t)(colon - v));
    o->lora_buf[colon - v] = '\0';
    o->lora = o->lora_buf;
    return 0;
}

static int check_values(struct opts *o);

static int parse_args(int argc, char **argv, struct opts *o) {
    memset(o, 0, sizeof(*o));
    o->n_predict = 128;
    o->sp = mc_sample_params_default();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--ignore-eos")) {
            o->ignore_eos = true;
        } else if (!strcmp(a, "--ids")) {
            o->ids = true;
        } else if (!strcmp(a, "--chat")) {
            o->chat = true;
        } else if (i + 1 >= argc) {
            fprintf(stderr, "mcai generate: unknown option or missing value: %s\n", a);
            return -1;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            o->model = argv[++i];
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            o->prompt = argv[++i];
        } else if (!strcmp(a, "--lora")) {
            if (parse_lora(o, argv[++i]) != 0)
                return -1;
        } else if (!strcmp(a, "--stop")) {
            if (o->n_stop == MC_GEN_MAX_STOP) {
                fprintf(stderr, "mcai generate: at most %d --stop strings\n", MC_GEN_MAX_STOP);
                return -1;
            }
            o->stop[o->n_stop++] = argv[++i];
        } else {
            int r = parse_int_opt(o, a, argv[i + 1]);
            if (r == 0)
                r = cli_parse_sample_opt(&o->sp, a, argv[i + 1], &o->seed_set);
            if (r <= 0) {
                fprintf(stderr, "mcai generate: %s: %s\n", r < 0 ? "bad value" : "unknown option",
                        r < 0 ? argv[i + 1] : a);
                return -1;
            }
            i++;
        }
    }
    if (!o->model || !o->prompt) {
        fprintf(stderr, "mcai generate: -m MODEL and -p PROMPT are required\n");
        return -1;
    }
    return check_values(o);
}

/* Values that are wrong whatever the model: a usage error before the model is loaded. */
static int check_values(struct opts *o) {
    struct mc_err err = {0};
    if (mc_sample_params_check(&o->sp, &err) != MC_OK) {
        fprintf(stderr, "mcai generate: %s\n", err.msg);
        return -1;
    }
    for (size_t i = 0; i < o->n_stop; i++) {
        size_t n = strlen(o->stop[i]);
        if (n == 0 || n > MC_GEN_MAX_STOP_LEN) {
            fprintf(stderr, "mcai generate: --stop string %zu has %zu bytes (allowed 1..%d)\n",
                    i + 1, n, MC_GEN_MAX_STOP_LEN);
            return -1;
        }
    }
    if (o->n_threads < 0 || o->n_threads > 256) {
        fprintf(stderr, "mcai generate: -t %d is out of range 0..256 (0: every CPU)\n",
                o->n_threads);
        return -1;
    }
    if (!o->seed_set)
        o->sp.seed = (uint64_t)time(NULL);
    return 0;
}

struct out_state {
    bool ids;
    int n; /* tokens printed */
};

static int on_token(const struct mc_gen_token *t, void *user) {
    struct out_state *st = user;
    if (st->ids)
        printf("%s%d", st->n ? " " : "", t->id);
    else if (t->text_len)
        fwrite(t->text, 1, t->text_len, stdout);
    st->n++;
    fflush(stdout);
    return 0;
}

static int tokenize_prompt(const struct mc_model *m, const struct opts *o, int32_t **ids, size_t *n,
                           struct mc_err *err) {
    const struct mc_tokenizer *tok = mc_model_tokenizer(m);
    if (o->chat) {
        struct mc_chat_msg msg = {"user", o->prompt};
        return mc_chat_tokenize(tok, mc_model_chat_template(m), &msg, 1, true, ids, n, err);
    }
    return mc_tokenize(tok, o->prompt, strlen(o->prompt), true, false, ids, n, err);
}

static int32_t pick_ctx(const struct opts *o, const struct mc_hparams *hp, size_t n_prompt) {
    if (o->n_ctx > 0)
        return o->n_ctx;
    int32_t cap = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    if (o->n_predict > 0 && n_prompt + (size_t)o->n_predict <= (size_t)cap)
        return (int32_t)n_prompt + o->n_predict;
    return cap > (int32_t)n_prompt ? cap : (int32_t)n_prompt + 1;
}

/* Loads the adapter for m and installs the per-row adapter hook on ctx. */
static int open_lora(const struct mc_model *m, struct mc_ctx *ctx, const char *path,
                     struct mc_lora **l, struct mc_lora_runner **r, struct mc_err *err) {
    struct mc_lora_base base;
    mc_lora_base_from_model(m, &base);
    int rc = mc_lora_open(path, &base, l, err);
    if (rc == MC_OK)
        rc = mc_lora_runner_create(ctx, r, err);
    return rc;
}

static int run(const struct opts *o) {
    struct mc_err err = {0};
    struct mc_model *m = NULL;
    struct mc_kv *kv = NULL;
    struct mc_ctx *ctx = NULL;
    struct mc_lora *lora = NULL;
    struct mc_lora_runner *runner = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = mc_model_load(o->model, &m, &err);
    if (rc == MC_OK)
        rc = tokenize_prompt(m, o, &ids, &n_ids, &err);
    if (rc == MC_OK && n_ids == 0)
        rc = mc_err_set(&err, MC_EINVAL,
                        "the prompt gives no tokens and the vocabulary adds no BOS");
    if (rc == MC_OK)
        rc = mc_kv_create(m, pick_ctx(o, mc_model_hparams(m), n_ids), &kv, &err);
    if (rc == MC_OK)
        rc = mc_ctx_create(m, n_ids < 256 ? (int32_t)n_ids : 256, o->n_threads, &ctx, &err);
    if (rc == MC_OK && o->lora)
        rc = open_lora(m, ctx, o->lora, &lora, &runner, &err);
    if (rc == MC_OK) {
        struct mc_gen_params gp = {.max_tokens = o->n_predict,
                                   .stop = o->stop,
                                   .n_stop = o->n_stop,
                                   .ignore_eos = o->ignore_eos,
                                   .adapter = lora,
                                   .adapter_scale = o->lora_scale};
        struct out_state st = {.ids = o->ids};
        struct mc_gen_result res;
        rc = mc_generate(ctx, kv, mc_model_tokenizer(m), ids, n_ids, &o->sp, &gp, on_token, &st,
                         &res, &err);
        if (rc == MC_OK || st.n > 0)
            printf("\n");
        fflush(stdout);
        if (rc == MC_OK)
            fprintf(stderr,
                    "prompt: %d tokens, %.1f ms (%.1f tok/s); generated: %d tokens, %.1f ms "
                    "(%.1f tok/s); finish: %s\n",
                    res.n_prompt, res.prompt_ms, res.n_prompt * 1e3 / (res.prompt_ms + 1e-9),
                    res.n_gen, res.gen_ms, res.n_gen * 1e3 / (res.gen_ms + 1e-9),
                    mc_finish_name(res.finish));
    }
    if (rc != MC_OK)
        fprintf(stderr, "mcai generate: %s\n", err.msg);
    mc_free(ids);
    mc_lora_runner_free(runner);
    mc_lora_release(lora);
    mc_ctx_free(ctx);
    mc_kv_free(kv);
    mc_model_free(m);
    return rc == MC_OK ? CLI_OK : CLI_ERR;
}

int cmd_generate(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        usage(stdout);
        return CLI_OK;
    }
    struct opts o;
    if (parse_args(argc, argv, &o) != 0) {
        usage(stderr);
        return CLI_USAGE;
    }
    return run(&o);
}
