/* cli_chat.c - `mcai chat`: an interactive conversation on stdin/stdout.
 *
 * Each line read from stdin is a user message. The whole conversation is rendered with
 * the model's chat template and tokenized again every turn; the tokens already in the
 * KV cache that match the new rendering are kept and only the rest is evaluated, so a
 * turn costs its own tokens. Replies stream to stdout. "/reset" forgets the history;
 * "/exit" or end of input quits. When the context is full the conversation is reset
 * with a notice on stderr. */
#include "cli/cli.h"
#include "cli/cli_opts.h"

#include "base/mem.h"
#include "model/chat.h"
#include "model/generate.h"
#include "model/model.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { MAX_LINE = 1 << 16, MAX_TURNS = 4096 };

static void usage(FILE *f) {
    fprintf(f,
            "usage: mcai chat -m MODEL [options]\n"
            "\n"
            "  -m, --model FILE    GGUF model\n"
            "  -s, --system TEXT   system message\n"
            "  -n N                most tokens per reply (default 512)\n"
            "  -c, --ctx-size N    context size (default: the model's, up to 4096)\n"
            "  -t, --threads N     threads (default: all CPUs)\n"
            "%s"
            "\n"
            "Type a message and press enter; /reset clears the history, /exit quits.\n"
            "exit codes: 0 ok, 1 runtime error, 2 usage error\n",
            cli_sample_help);
}

struct chat {
    struct mc_model *m;
    struct mc_ctx *ctx;
    struct mc_kv *kv;
    struct mc_sample_params sp;
    int32_t n_predict;
    const char *system;
    struct mc_chat_msg msgs[MAX_TURNS];
    char *owned[MAX_TURNS]; /* contents we allocated (user lines, replies) */
    size_t n_msgs;
    int32_t *cached; /* tokens in the KV cache, in order */
    size_t n_cached;
    char *reply;
    size_t reply_len;
    size_t reply_cap;
};

static int on_token(const struct mc_gen_token *t, void *user) {
    struct chat *c = user;
    if (!t->text_len)
        return 0;
    fwrite(t->text, 1, t->text_len, stdout);
    fflush(stdout);
    if (c->reply_len + t->text_len + 1 > c->reply_cap) {
        size_t cap = (c->reply_len + t->text_len + 1) * 2;
        char *p = mc_realloc(c->reply, cap);
        if (!p)
            return 1;
        c->reply = p;
        c->reply_cap = cap;
    }
    memcpy(c->reply + c->reply_len, t->text, t->text_len);
    c->reply_len += t->text_len;
    c->reply[c->reply_len] = '\0';
    return 0;
}

static void reset(struct chat *c) {
    for (size_t i = 0; i < c->n_msgs; i++)
        mc_free(c->owned[i]);
    c->n_msgs = 0;
    if (c->system) {
        c->msgs[0] = (struct mc_chat_msg){"system", c->system};
        c->owned[0] = NULL;
        c->n_msgs = 1;
    }
    mc_kv_truncate(c->kv, 0);
    c->n_cached = 0;
}

/* Adds a message whose content we own (takes ownership of text). */
static int add_msg(struct chat *c, const char *role, char *text) {
    if (c->n_msgs == MAX_TURNS) {
        mc_free(text);
        return -1;
    }
    c->msgs[c->n_msgs] = (struct mc_chat_msg){role, text};
    c->owned[c->n_msgs++] = text;
    return 0;
}

/* Keeps the cached tokens that prefix ids; at least one token is always left to
 * evaluate so that there are logits to sample from. */
static size_t reuse_prefix(struct chat *c, const int32_t *ids, size_t n) {
    size_t k = 0;
    while (k < c->n_cached && k < n && c->cached[k] == ids[k])
        k++;
    if (k == n)
        k--;
    mc_kv_truncate(c->kv, (int32_t)k);
    c->n_cached = k;
    return k;
}

static int turn(struct chat *c, struct mc_err *err) {
    const char *tmpl = mc_model_chat_template(c->m);
    int32_t *ids;
    size_t n;
    int rc =
        mc_chat_tokenize(mc_model_tokenizer(c->m), tmpl, c->msgs, c->n_msgs, true, &ids, &n, err);
    if (rc != MC_OK)
        return rc;
    size_t keep = reuse_prefix(c, ids, n);
    /* The generic format has no end-of-turn token, so stop where the next user turn
     * would start. */
    static const char *const generic_stop[] = {"\nUser:"};
    struct mc_gen_params gp = {.max_tokens = c->n_predict};
    if (mc_chat_detect(tmpl) == MC_CHAT_GENERIC) {
        gp.stop = generic_stop;
        gp.n_stop = 1;
    }
    c->reply_len = 0;
    struct mc_gen_result res;
    rc = mc_generate(c->ctx, c->kv, mc_model_tokenizer(c->m), ids + keep, n - keep, &c->sp, &gp,
                     on_token, c, &res, err);
    if (rc == MC_OK) {
        /* What is in the cache now: the prompt and every reply token but the last. */
        int32_t *p = mc_realloc(c->cached, (n + 1) * sizeof(*p));
        if (p) {
            memcpy(p, ids, n * sizeof(*p));
            c->cached = p;
            c->n_cached = n;
        } else {
            c->n_cached = 0;
            mc_kv_truncate(c->kv, 0);
        }
        char *r = mc_strdup(c->reply ? c->reply : "");
        if (!r || add_msg(c, "assistant", r) != 0)
            rc = mc_err_set(err, MC_ENOMEM, "conversation history is full");
        if (res.finish == MC_FINISH_LENGTH && mc_kv_n_used(c->kv) >= mc_kv_n_ctx(c->kv) - 1) {
            fprintf(stderr, "\n[context full: conversation reset]");
            reset(c);
        }
    }
    printf("\n");
    mc_free(ids);
    return rc;
}

/* Reads one line (without the newline) into a fresh buffer; NULL at end of input. */
static char *read_line(void) {
    char *buf = mc_malloc(MAX_LINE);
    if (!buf || !fgets(buf, MAX_LINE, stdin)) {
        mc_free(buf);
        return NULL;
    }
    buf[strcspn(buf, "\r\n")] = '\0';
    return buf;
}

static int loop(struct chat *c) {
    struct mc_err err = {0};
    bool tty = isatty(0);
    reset(c);
    for (;;) {
        if (tty) {
            printf("> ");
            fflush(stdout);
        }
        char *line = read_line();
        if (!line || strcmp(line, "/exit") == 0) {
            mc_free(line);
            return CLI_OK;
        }
        if (strcmp(line, "/reset") == 0 || line[0] == '\0') {
            if (line[0])
                reset(c);
            mc_free(line);
            continue;
        }
        if (add_msg(c, "user", line) != 0) {
            fprintf(stderr, "mcai chat: history full; use /reset\n");
            continue;
        }
        if (turn(c, &err) != MC_OK) {
            fprintf(stderr, "mcai chat: %s\n", err.msg);
            if (err.code != MC_EFULL)
                return CLI_ERR;
            reset(c);
        }
    }
}

static int parse(int argc, char **argv, struct chat *c, const char **model, long *n_ctx,
                 long *threads) {
    bool seed_set = false;
    long n = 512;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int r = v ? cli_parse_sample_opt(&c->sp, a, v, &seed_set) : -1;
        if (r == 1)
            continue;
        if (v && (!strcmp(a, "-m") || !strcmp(a, "--model")))
            *model = v;
        else if (v && (!strcmp(a, "-s") || !strcmp(a, "--system")))
            c->system = v;
        else if (!v || !((!strcmp(a, "-n") && !cli_parse_long(v, 1, 1 << 20, &n)) ||
                         ((!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) &&
                          !cli_parse_long(v, 16, 1 << 20, n_ctx)) ||
                         ((!strcmp(a, "-t") || !strcmp(a, "--threads")) &&
                          !cli_parse_long(v, 0, 256, threads)))) {
            fprintf(stderr, "mcai chat: unknown option or bad value: %s\n", a);
            return -1;
        }
    }
    c->n_predict = (int32_t)n;
    struct mc_err err = {0};
    if (mc_sample_params_check(&c->sp, &err) != MC_OK) {
        fprintf(stderr, "mcai chat: %s\n", err.msg);
        return -1;
    }
    if (!seed_set)
        c->sp.seed = (uint64_t)time(NULL);
    if (!*model) {
        fprintf(stderr, "mcai chat: -m MODEL is required\n");
        return -1;
    }
    return 0;
}

int cmd_chat(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        usage(stdout);
        return CLI_OK;
    }
    static struct chat c; /* large (history arrays); one per process */
    const char *model = NULL;
    long n_ctx = 0, threads = 0;
    c.sp = mc_sample_params_default();
    if (parse(argc, argv, &c, &model, &n_ctx, &threads) != 0) {
        usage(stderr);
        return CLI_USAGE;
    }
    struct mc_err err = {0};
    int rc = mc_model_load(model, &c.m, &err);
    if (rc == MC_OK && n_ctx == 0) {
        int32_t train = mc_model_hparams(c.m)->n_ctx_train;
        n_ctx = train < 4096 ? train : 4096;
    }
    if (rc == MC_OK)
        rc = mc_kv_create(c.m, (int32_t)n_ctx, &c.kv, &err);
    if (rc == MC_OK)
        rc = mc_ctx_create(c.m, 256, (int)threads, &c.ctx, &err);
    int code = CLI_ERR;
    if (rc == MC_OK)
        code = loop(&c);
    else
        fprintf(stderr, "mcai chat: %s\n", err.msg);
    if (c.kv)
        reset(&c);
    mc_free(c.cached);
    mc_free(c.reply);
    mc_ctx_free(c.ctx);
    mc_kv_free(c.kv);
    mc_model_free(c.m);
    return code;
}
