/* cli_serve.c - `mcai serve`: reads the settings, starts the server, waits for SIGTERM
 * or SIGINT, shuts down gracefully and exits 0.
 *
 * Settings come from three places, the first that has a value winning: command-line
 * flags, then the environment (MCAI_MASTER_KEY, MCAI_ADMIN_KEY: the keys themselves),
 * then a config file (--config FILE, "key = value" lines, '#' comments; keys are the long
 * flag names with '_' for '-', e.g. `max_body_bytes = 1048576`). Keys are never read from
 * the command line itself (they would show in `ps`), only from files or the environment.
 * A missing or weak key refuses to start with exit code 2. */
#include "cli/cli.h"

#include "base/err.h"
#include "base/log.h"
#include "serve/server.h"
#include "store/crypto.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_SETTINGS 22

/* One setting: its long flag name (also its config key, with '_' for '-'), short flag,
 * value (borrowed from argv, a config line or the environment) and help. */
struct setting {
    const char *name;
    const char *short_flag;
    const char *metavar;
    const char *help;
    char *value;
    bool from_file; /* value is a malloc'd copy from the config file */
};

static struct setting settings[N_SETTINGS] = {
    {"model", "-m", "FILE", "GGUF model to serve (required)", NULL, false},
    {"embed-model", NULL, "FILE",
     "GGUF model for /v1/embeddings and knowledge-base vectors (default: the served model)", NULL,
     false},
    {"data", NULL, "DIR", "data directory: store and audit log (required)", NULL, false},
    {"port", "-p", "N", "TCP port (default 8080; 0 picks a free one)", NULL, false},
    {"host", NULL, "ADDR", "IPv4 address to listen on (default 127.0.0.1)", NULL, false},
    {"master-key-file", NULL, "FILE",
     "master key file (else $MCAI_MASTER_KEY): 32 bytes as 64 hex digits or base64, mode 0600, "
     "outside --data",
     NULL, false},
    {"admin-key-file", NULL, "FILE",
     "admin key file (else $MCAI_ADMIN_KEY): >= 24 printable characters", NULL, false},
    {"threads", "-t", "N", "forward-pass threads (default: all CPUs)", NULL, false},
    {"ctx", "-c", "N", "context per sequence, prompt + completion (default: model's, <= 4096)",
     NULL, false},
    {"max-seqs", NULL, "N", "sequences decoded together (default 16)", NULL, false},
    {"max-queue", NULL, "N", "queued requests per tenant before 429 queue_full (default 256)", NULL,
     false},
    {"kv-budget-mb", NULL, "N",
     "KV cache memory of running sequences, MiB (default: no limit "
     "beyond max-seqs full contexts)",
     NULL, false},
    {"adapter-cache-mb", NULL, "N",
     "memory for resident LoRA adapters, MiB (default 256; least recently used ones "
     "not in use or pinned are evicted beyond it)",
     NULL, false},
    {"adapter-format", NULL, "file|q8_0",
     "how resident adapters are stored (default file: as uploaded; q8_0: about half the "
     "memory and bytes read per step of F16, for a rounding error near 0.4 %)",
     NULL, false},
    {"kb-cache-mb", NULL, "N",
     "knowledge bases kept loaded in memory, MiB in all (default 256; the least recently "
     "used are unloaded past it)",
     NULL, false},
    {"kb-embeddings", NULL, "on|off",
     "knowledge-base vectors (default on; off: BM25 only, dense and hybrid searches are 400)", NULL,
     false},
    {"max-body-bytes", NULL, "N", "request body limit (default 1048576)", NULL, false},
    {"max-adapter-bytes", NULL, "N",
     "body limit of an adapter upload with a valid key (default 268435456)", NULL, false},
    {"max-connections", NULL, "N", "open connections (default 1024)", NULL, false},
    {"drain-timeout-ms", NULL, "N", "on SIGTERM, time running requests get (default 10000)", NULL,
     false},
    {"log-level", NULL, "LEVEL", "error, warn, info or debug (default info)", NULL, false},
    {"config", NULL, "FILE",
     "config file of `key = value` lines (keys as the flags above, '_' "
     "or '-')",
     NULL, false},
};

static struct setting *find_setting(const char *name) {
    for (int i = 0; i < N_SETTINGS; i++) {
        const char *a = settings[i].name, *b = name;
        while (*a && *b && (*a == *b || (*a == '-' && *b == '_'))) {
            a++;
            b++;
        }
        if (!*a && !*b)
            return &settings[i];
    }
    return NULL;
}

static const char *get(const char *name) {
    struct setting *s = find_setting(name);
    return s ? s->value : NULL;
}

static void usage(FILE *f) {
    fprintf(f, "usage: mcai serve -m MODEL --data DIR [options]\n\n"
               "Serves one model to many tenants over an OpenAI-compatible HTTP API\n"
               "(docs/api.md). Stops gracefully on SIGTERM or SIGINT.\n\noptions:\n");
    for (int i = 0; i < N_SETTINGS; i++) {
        char flag[64];
        snprintf(flag, sizeof(flag), "%s%s--%s %s",
                 settings[i].short_flag ? settings[i].short_flag : "",
                 settings[i].short_flag ? ", " : "", settings[i].name, settings[i].metavar);
        fprintf(f, "  %-28s %s\n", flag, settings[i].help);
    }
    fprintf(f, "  %-28s %s\n", "-h, --help", "this text");
    fprintf(f,
            "\nenvironment: MCAI_MASTER_KEY, MCAI_ADMIN_KEY (the keys themselves).\n"
            "precedence: flags > environment > config file.\n"
            "exit codes: 0 clean shutdown, 1 runtime error, 2 usage error or missing/weak key\n");
}

/* ---- Parsing ---------------------------------------------------------------------- */

static int parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        struct setting *s = NULL;
        const char *val = NULL;
        if (strncmp(a, "--", 2) == 0) {
            char name[64];
            const char *eq = strchr(a + 2, '=');
            size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            if (len < sizeof(name)) {
                memcpy(name, a + 2, len);
                name[len] = '\0';
                s = find_setting(name);
            }
            if (eq)
                val = eq + 1;
        } else {
            for (int k = 0; k < N_SETTINGS && !s; k++)
                if (settings[k].short_flag && strcmp(a, settings[k].short_flag) == 0)
                    s = &settings[k];
        }
        if (!s) {
            fprintf(stderr, "mcai serve: unknown option '%s' (see mcai serve --help)\n", a);
            return CLI_USAGE;
        }
        if (!val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "mcai serve: option '%s' needs a value\n", a);
                return CLI_USAGE;
            }
            val = argv[++i];
        }
        s->value = (char *)val;
    }
    return CLI_OK;
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* Fills settings that flags left empty from "key = value" lines of path. */
static int read_config(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "mcai serve: cannot open config file %s: %s\n", path, strerror(errno));
        return CLI_USAGE;
    }
    char line[1024];
    int lineno = 0;
    int rc = CLI_OK;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *l = trim(line);
        if (!*l)
            continue;
        char *eq = strchr(l, '=');
        if (!eq) {
            fprintf(stderr, "mcai serve: %s:%d: expected 'key = value'\n", path, lineno);
            rc = CLI_USAGE;
            break;
        }
        *eq = '\0';
        char *key = trim(l), *val = trim(eq + 1);
        struct setting *s = find_setting(key);
        if (!s || strcmp(s->name, "config") == 0) {
            fprintf(stderr,
                    "mcai serve: %s:%d: unknown key '%s' (keys are the long option "
                    "names, see mcai serve --help)\n",
                    path, lineno, key);
            rc = CLI_USAGE;
            break;
        }
        if (!s->value) {
            s->value = strdup(val);
            s->from_file = true;
        }
    }
    fclose(f);
    return rc;
}

/* A non-negative integer setting; false (after a message) when it is not one. */
static bool int_setting(const char *name, long lo, long hi, long *out) {
    const char *v = get(name);
    if (!v)
        return true;
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "mcai serve: --%s must be an integer from %ld to %ld, got '%s'\n", name, lo,
                hi, v);
        return false;
    }
    *out = x;
    return true;
}

/* The admin key: --admin-key-file, else $MCAI_ADMIN_KEY, else admin_key_file from the
 * config file (which parse order already put in the setting). Returns a malloc'd
 * string or NULL after a message. */
static char *load_admin_key(bool flag_file) {
    const char *file = get("admin-key-file");
    const char *env = getenv("MCAI_ADMIN_KEY");
    if ((!file || !flag_file) && env && *env)
        return strdup(env);
    if (!file) {
        fprintf(stderr, "mcai serve: no admin key: set MCAI_ADMIN_KEY or pass --admin-key-file "
                        "(make one with `openssl rand -hex 32`)\n");
        return NULL;
    }
    FILE *f = fopen(file, "r");
    if (!f) {
        fprintf(stderr, "mcai serve: cannot read admin key file %s: %s\n", file, strerror(errno));
        return NULL;
    }
    char buf[512];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strdup(trim(buf));
}

/* ---- Main ------------------------------------------------------------------------- */

static void free_settings(void) {
    for (int i = 0; i < N_SETTINGS; i++) {
        if (settings[i].from_file)
            free(settings[i].value);
        settings[i].value = NULL;
        settings[i].from_file = false;
    }
}

static int run(int argc, char **argv) {
    int rc = parse_args(argc, argv);
    if (rc != CLI_OK)
        return rc;
    /* Which settings came from flags matters for the key precedence below. */
    bool master_flag = get("master-key-file") != NULL;
    bool admin_flag = get("admin-key-file") != NULL;
    if (get("config") && (rc = read_config(get("config"))) != CLI_OK)
        return rc;

    if (get("log-level")) {
        enum mc_log_level lvl;
        if (mc_log_parse_level(get("log-level"), &lvl) != MC_OK) {
            fprintf(stderr, "mcai serve: --log-level must be error, warn, info or debug\n");
            return CLI_USAGE;
        }
        mc_log_set_level(lvl);
    }
    if (!get("model") || !get("data")) {
        fprintf(stderr, "mcai serve: -m MODEL and --data DIR are required (see mcai serve "
                        "--help)\n");
        return CLI_USAGE;
    }
    long port = 8080, threads = 0, ctx = 0, seqs = 0, body = 0, conns = 0, drain = 0;
    long queue = 0, kv_mb = 0, adapter_mb = 0, adapter_body = 0, kb_mb = 0;
    if (!int_setting("port", 0, 65535, &port) || !int_setting("threads", 0, 1024, &threads) ||
        !int_setting("ctx", 0, 1 << 20, &ctx) || !int_setting("max-seqs", 0, 4096, &seqs) ||
        !int_setting("max-queue", 0, 1 << 20, &queue) ||
        !int_setting("kv-budget-mb", 0, 1L << 30, &kv_mb) ||
        !int_setting("adapter-cache-mb", 0, 1L << 30, &adapter_mb) ||
        !int_setting("kb-cache-mb", 0, 1L << 30, &kb_mb) ||
        !int_setting("max-body-bytes", 1024, 1L << 30, &body) ||
        !int_setting("max-adapter-bytes", 1024, 1L << 30, &adapter_body) ||
        !int_setting("max-connections", 0, 65536, &conns) ||
        !int_setting("drain-timeout-ms", 0, 3600000, &drain))
        return CLI_USAGE;
    const char *ad_fmt = get("adapter-format");
    if (ad_fmt && strcmp(ad_fmt, "file") != 0 && strcmp(ad_fmt, "q8_0") != 0) {
        fprintf(stderr, "mcai serve: --adapter-format must be file or q8_0, got '%s'\n", ad_fmt);
        return CLI_USAGE;
    }
    const char *kb_emb = get("kb-embeddings");
    if (kb_emb && strcmp(kb_emb, "on") != 0 && strcmp(kb_emb, "off") != 0) {
        fprintf(stderr, "mcai serve: --kb-embeddings must be on or off, got '%s'\n", kb_emb);
        return CLI_USAGE;
    }

    struct mc_err err = {0};
    if (mc_crypto_init(&err) != MC_OK) {
        fprintf(stderr, "mcai serve: %s\n", err.msg);
        return CLI_ERR;
    }
    /* Master key: a flag's file beats the environment, which beats the config file. */
    const char *mk_file = get("master-key-file");
    const char *env = getenv(MC_MASTER_KEY_ENV);
    if (!master_flag && env && *env)
        mk_file = NULL;
    if (!mk_file && !(env && *env)) {
        fprintf(stderr,
                "mcai serve: no master key: set %s or pass --master-key-file (make one "
                "with `openssl rand -hex 32`)\n",
                MC_MASTER_KEY_ENV);
        return CLI_USAGE;
    }
    struct mc_master_key *mk = NULL;
    if (mc_master_key_load(mk_file, get("data"), &mk, &err) != MC_OK) {
        fprintf(stderr, "mcai serve: master key: %s\n", err.msg);
        return CLI_USAGE;
    }
    char *admin = load_admin_key(admin_flag);
    if (!admin || mc_server_check_admin_key(admin, &err) != MC_OK) {
        if (admin)
            fprintf(stderr, "mcai serve: %s\n", err.msg);
        free(admin);
        mc_master_key_free(mk);
        return CLI_USAGE;
    }

    /* Signals are taken by sigwait below; every thread started from here inherits the
     * mask, so none of them is interrupted by SIGTERM. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct mc_server_config cfg = {
        .model_path = get("model"),
        .embed_model_path = get("embed-model"),
        .data_dir = get("data"),
        .host = get("host"),
        .port = (int)port,
        .master_key = mk,
        .admin_key = admin,
        .n_threads = (int)threads,
        .n_ctx = (int32_t)ctx,
        .max_seqs = (int32_t)seqs,
        .max_queue = (int32_t)queue,
        .kv_budget_bytes = (size_t)kv_mb << 20,
        .adapter_cache_bytes = (size_t)adapter_mb << 20,
        .adapter_q8_0 = ad_fmt && strcmp(ad_fmt, "q8_0") == 0,
        .max_body_bytes = (size_t)body,
        .max_adapter_bytes = (size_t)adapter_body,
        .max_connections = (unsigned)conns,
        .drain_timeout_ms = drain,
        .kb_cache_bytes = (size_t)kb_mb << 20,
        .kb_no_embeddings = kb_emb && strcmp(kb_emb, "off") == 0,
    };
    struct mc_server *srv = NULL;
    rc = mc_server_create(&cfg, &srv, &err);
    mc_crypto_wipe(admin, strlen(admin));
    free(admin);
    if (rc != MC_OK) {
        fprintf(stderr, "mcai serve: %s\n", err.msg);
        mc_master_key_free(mk);
        return rc == MC_EINVAL || rc == MC_EPERM ? CLI_USAGE : CLI_ERR;
    }
    printf("mcai serve: listening on http://%s:%d\n", cfg.host ? cfg.host : "127.0.0.1",
           mc_server_port(srv));
    fflush(stdout);
    if (mc_server_load(srv, &err) != MC_OK) {
        fprintf(stderr, "mcai serve: cannot load model %s: %s\n", cfg.model_path, err.msg);
        mc_server_free(srv);
        mc_master_key_free(mk);
        return CLI_ERR;
    }
    printf("mcai serve: ready\n");
    fflush(stdout);

    int sig = 0;
    sigwait(&set, &sig);
    MC_LOG_INFO("serve", "signal", "sig=%s", sig == SIGTERM ? "TERM" : "INT");
    mc_server_shutdown(srv);
    mc_server_free(srv);
    mc_master_key_free(mk);
    printf("mcai serve: stopped\n");
    return CLI_OK;
}

int cmd_serve(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        usage(stdout);
        return CLI_OK;
    }
    int rc = run(argc, argv);
    free_settings();
    return rc;
}
