/* cli_tokenize.c - `mcai tokenize -m MODEL [--no-special] (-p TEXT | -f FILE)`.
 *
 * Loads only the GGUF metadata's tokenizer (no weights are touched) and prints the ids
 * of the text on one line, separated by single spaces. BOS/EOS are added as the
 * vocabulary asks unless --no-special is given; special-token text in the input is
 * always tokenized as plain text. It does not decode or print pieces. */
#include "cli/cli.h"

#include "base/err.h"
#include "base/mem.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define TOKENIZE_MAX_FILE_BYTES ((size_t)1 << 28)

static void usage(FILE *f) {
    fprintf(f, "usage: mcai tokenize -m MODEL [--no-special] (-p TEXT | -f FILE)\n"
               "  -m MODEL      GGUF file whose tokenizer is used\n"
               "  -p TEXT       text to tokenize\n"
               "  -f FILE       tokenize the whole content of FILE as one text\n"
               "  --no-special  add no BOS/EOS tokens\n"
               "prints the token ids separated by spaces\n");
}

/* Reads all of path into an mc_malloc'd buffer; returns 0 or prints why and returns -1. */
static int read_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "mcai tokenize: %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 65536, n = 0;
    char *buf = mc_malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        if (cap >= TOKENIZE_MAX_FILE_BYTES) {
            fprintf(stderr, "mcai tokenize: %s: larger than %zu bytes\n", path, cap);
            mc_free(buf);
            fclose(f);
            return -1;
        }
        char *nb = mc_realloc(buf, cap * 2);
        if (!nb)
            mc_free(buf);
        buf = nb;
        cap *= 2;
    }
    bool failed = !buf || ferror(f);
    fclose(f);
    if (failed) {
        fprintf(stderr, "mcai tokenize: %s: %s\n", path, buf ? "read error" : "out of memory");
        mc_free(buf);
        return -1;
    }
    *out = buf;
    *len = n;
    return 0;
}

static int print_ids(const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++)
        printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    return fflush(stdout) == 0 ? CLI_OK : CLI_ERR;
}

int cmd_tokenize(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        usage(stdout);
        return CLI_OK;
    }
    const char *model = NULL, *prompt = NULL, *file = NULL;
    bool special = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_val = i + 1 < argc;
        if (strcmp(a, "-m") == 0 && has_val) {
            model = argv[++i];
        } else if (strcmp(a, "-p") == 0 && has_val) {
            prompt = argv[++i];
        } else if (strcmp(a, "-f") == 0 && has_val) {
            file = argv[++i];
        } else if (strcmp(a, "--no-special") == 0) {
            special = false;
        } else {
            fprintf(stderr, "mcai tokenize: unexpected argument '%s'\n", a);
            usage(stderr);
            return CLI_USAGE;
        }
    }
    if (!model || (!prompt == !file)) {
        fprintf(stderr, "mcai tokenize: need -m MODEL and exactly one of -p TEXT or -f FILE\n");
        usage(stderr);
        return CLI_USAGE;
    }

    char *text = NULL;
    size_t len = 0;
    if (file && read_file(file, &text, &len) != 0)
        return CLI_ERR;

    struct mc_err err = {0};
    struct mc_gguf *g = NULL;
    struct mc_tokenizer *tok = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int ret = CLI_ERR;
    int rc = mc_gguf_open(model, &g, &err);
    if (rc == MC_OK) {
        rc = mc_tokenizer_load(g, &tok, &err);
        if (rc != MC_OK)
            mc_err_prefix(&err, "%s", model);
    }
    if (rc == MC_OK) {
        const char *t = file ? text : prompt;
        rc = mc_tokenize(tok, t, file ? len : strlen(prompt), special, false, &ids, &n_ids, &err);
    }
    if (rc == MC_OK)
        ret = print_ids(ids, n_ids);
    else
        fprintf(stderr, "mcai tokenize: %s\n", err.msg);

    mc_free(ids);
    mc_tokenizer_free(tok);
    mc_gguf_close(g);
    mc_free(text);
    return ret;
}
