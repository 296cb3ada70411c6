/* cli_lora.c - `mcai lora`: inspect, convert, merge and synthesize LoRA adapters.
 *
 *   info FILE_OR_PEFT_DIR [--model MODEL]    rank, alpha, scale, targets, tensors
 *   convert PEFT_DIR OUT.gguf [--model MODEL] [--type T]
 *   merge MODEL ADAPTER OUT.gguf [--scale S]
 *   synth --like MODEL --rank R --targets LIST -o OUT.gguf [--seed N] [--alpha A] [--type T]
 *
 * All the work is in src/adapter (lora.h); this file parses options and prints. */
#include "cli/cli.h"
#include "cli/cli_opts.h"

#include "adapter/lora.h"
#include "model/model.h"
#include "model/quant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: mcai lora COMMAND ...\n"
            "\n"
            "  info FILE_OR_PEFT_DIR [--model MODEL]\n"
            "      format, rank, alpha, scale factor, targets and tensors of an adapter; with\n"
            "      --model also checks that it fits that model\n"
            "  convert PEFT_DIR OUT.gguf [--model MODEL] [--type f32|f16|bf16]\n"
            "      writes a PEFT adapter as a GGUF LoRA file; --model is required when q_proj or\n"
            "      k_proj are adapted (their lora_B rows get GGUF's rope permutation)\n"
            "  merge MODEL ADAPTER OUT.gguf [--scale S]\n"
            "      writes MODEL with W + S*(alpha/r)*B*A in every adapted matrix (S default 1);\n"
            "      quantized matrices are dequantized, updated and requantized to their type\n"
            "  synth --like MODEL --rank R --targets q,k,v,o,gate,up,down|all -o OUT.gguf\n"
            "        [--seed N] [--alpha A] [--type f32|f16|bf16]\n"
            "      a random adapter for MODEL's shape (tests, benchmarks); alpha default R\n"
            "\n"
            "exit codes: 0 ok, 1 runtime error, 2 usage error\n");
}

/* ---- Options --------------------------------------------------------------------- */

struct opts {
    const char *pos[4]; /* positional arguments after the subcommand */
    int n_pos;
    const char *model;
    const char *out;
    uint32_t targets; /* mask from --targets; 0 when not given */
    enum mc_type type;
    long rank;
    long seed;
    float alpha;
    float scale;
};

static int bad(const char *what, const char *val) {
    fprintf(stderr, "mcai lora: %s: %s\n", what, val);
    return -1;
}

static int parse_opt(struct opts *o, const char *a, const char *v) {
    if (!strcmp(a, "--model") || !strcmp(a, "-m") || !strcmp(a, "--like"))
        o->model = v;
    else if (!strcmp(a, "-o") || !strcmp(a, "--out"))
        o->out = v;
    else if (!strcmp(a, "--targets")) {
        struct mc_err err = {0};
        if (mc_lora_parse_targets(v, &o->targets, &err) != MC_OK)
            return bad("--targets", err.msg);
    } else if (!strcmp(a, "--type")) {
        if (mc_type_from_name(v, &o->type) != MC_OK)
            return bad("unknown type", v);
    } else if (!strcmp(a, "--rank")) {
        if (cli_parse_long(v, 1, MC_LORA_MAX_RANK, &o->rank) != 0)
            return bad("rank must be 1..1024", v);
    } else if (!strcmp(a, "--seed")) {
        if (cli_parse_long(v, 0, 0x7fffffffL, &o->seed) != 0)
            return bad("bad seed", v);
    } else if (!strcmp(a, "--alpha")) {
        if (cli_parse_float(v, &o->alpha) != 0 || o->alpha <= 0)
            return bad("alpha must be a positive number", v);
    } else if (!strcmp(a, "--scale")) {
        if (cli_parse_float(v, &o->scale) != 0)
            return bad("bad scale", v);
    } else {
        return bad("unknown option", a);
    }
    return 0;
}

static int parse_args(int argc, char **argv, struct opts *o) {
    memset(o, 0, sizeof(*o));
    o->type = MC_TYPE_F32;
    o->scale = 1.0f;
    for (int i = 2; i < argc; i++) {
        if (argv[i][0] != '-' || !argv[i][1]) {
            if (o->n_pos == 4)
                return bad("too many arguments", argv[i]);
            o->pos[o->n_pos++] = argv[i];
        } else if (i + 1 >= argc) {
            return bad("missing value for", argv[i]);
        } else if (parse_opt(o, argv[i], argv[i + 1]) != 0) {
            return -1;
        } else {
            i++;
        }
    }
    return 0;
}

/* ---- Subcommands ----------------------------------------------------------------- */

static const char *format_name(enum mc_lora_format f) {
    return f == MC_LORA_FORMAT_GGUF ? "GGUF" : f == MC_LORA_FORMAT_PEFT ? "PEFT" : "synthetic";
}

static void print_info(const struct mc_lora *l) {
    const struct mc_lora_info *in = mc_lora_info(l);
    printf("name:          %s\n", in->name);
    printf("format:        %s\n", format_name(in->format));
    printf("architecture:  %s\n", in->arch[0] ? in->arch : "(not stated)");
    printf("base model:    %s\n", in->base_model[0] ? in->base_model : "(not stated)");
    struct mc_lora_pair_info p;
    mc_lora_pair(l, 0, &p);
    printf("rank:          %d\n", in->rank);
    if (in->has_alpha)
        printf("alpha:         %g%s\n", in->alpha,
               in->rslora ? " (rsLoRA: scale alpha/sqrt(r))" : "");
    else
        printf("alpha:         absent (scale factor 1, as llama.cpp)\n");
    printf("scale factor:  %g (times the request scale)\n", p.factor);
    printf("targets:      ");
    for (int t = 0; t < MC_PROJ_COUNT; t++)
        if (in->targets & (1u << t))
            printf(" %s", mc_lora_proj_short((enum mc_proj)t));
    printf("\npairs:         %d\n", in->n_pairs);
    printf("resident:      %zu bytes (%s)\n", in->resident_bytes, mc_type_name(p.type));
    if (in->hf_row_order)
        printf("note:          q/k lora_B rows are in Hugging Face order until bound to a model\n");
    printf("\n%-28s %5s %12s %8s\n", "tensor", "rank", "in -> out", "factor");
    for (int32_t i = 0; i < in->n_pairs; i++) {
        mc_lora_pair(l, i, &p);
        char shape[32];
        snprintf(shape, sizeof(shape), "%lld -> %lld", (long long)p.n_in, (long long)p.n_out);
        printf("%-28s %5d %12s %8g\n", p.name, p.rank, shape, p.factor);
    }
}

/* Loads o->model (if any) and fills base; *m receives the model. */
static int load_base(const char *path, struct mc_model **m, struct mc_lora_base *base,
                     struct mc_err *err) {
    *m = NULL;
    if (!path)
        return MC_OK;
    int rc = mc_model_load(path, m, err);
    if (rc == MC_OK)
        mc_lora_base_from_model(*m, base);
    return rc;
}

static int run(const char *cmd, const struct opts *o, struct mc_err *err) {
    struct mc_model *m = NULL;
    struct mc_lora *l = NULL;
    struct mc_lora_base base;
    const char *model = !strcmp(cmd, "merge") ? o->pos[0] : o->model;
    int rc = load_base(model, &m, &base, err);
    if (rc != MC_OK)
        return rc;
    if (!strcmp(cmd, "synth")) {
        rc = mc_lora_synth(&base, (int32_t)o->rank, o->targets, o->alpha, (uint64_t)o->seed,
                           "synth", &l, err);
        if (rc == MC_OK)
            rc = mc_lora_save_gguf(l, o->type, o->out, err);
    } else if (!strcmp(cmd, "merge")) {
        rc = mc_lora_open(o->pos[1], &base, &l, err);
        if (rc == MC_OK)
            rc = mc_lora_merge(m, l, o->scale, o->pos[2], err);
    } else {
        rc = mc_lora_open(o->pos[0], m ? &base : NULL, &l, err);
        if (rc == MC_OK && !strcmp(cmd, "info"))
            print_info(l);
        else if (rc == MC_OK)
            rc = mc_lora_save_gguf(l, o->type, o->pos[1], err);
    }
    if (rc == MC_OK && strcmp(cmd, "info") != 0)
        fprintf(stderr, "mcai lora %s: wrote %s\n", cmd,
                !strcmp(cmd, "synth") ? o->out : o->pos[cmd[0] == 'm' ? 2 : 1]);
    mc_lora_release(l);
    mc_model_free(m);
    return rc;
}

/* Positional counts and required options per subcommand; 0 if the call is well formed. */
static int check_usage(const char *cmd, const struct opts *o) {
    if (!strcmp(cmd, "info"))
        return o->n_pos == 1 ? 0 : bad("info takes one adapter", "FILE_OR_PEFT_DIR");
    if (!strcmp(cmd, "convert"))
        return o->n_pos == 2 ? 0 : bad("convert takes", "PEFT_DIR OUT.gguf");
    if (!strcmp(cmd, "merge"))
        return o->n_pos == 3 ? 0 : bad("merge takes", "MODEL ADAPTER OUT.gguf");
    if (!strcmp(cmd, "synth")) {
        if (o->n_pos || !o->model || !o->rank || !o->targets || !o->out)
            return bad("synth needs", "--like MODEL --rank R --targets LIST -o OUT.gguf");
        return 0;
    }
    return bad("unknown command", cmd);
}

int cmd_lora(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        usage(stdout);
        return CLI_OK;
    }
    struct opts o;
    if (argc < 2 || parse_args(argc, argv, &o) != 0 || check_usage(argv[1], &o) != 0) {
        usage(stderr);
        return CLI_USAGE;
    }
    struct mc_err err = {0};
    if (run(argv[1], &o, &err) != MC_OK) {
        fprintf(stderr, "mcai lora %s: %s\n", argv[1], err.msg);
        return CLI_ERR;
    }
    return CLI_OK;
}
