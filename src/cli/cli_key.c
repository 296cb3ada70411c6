/* cli_key.c - `mcai key create|list|revoke`: tenant API keys on a data directory.
 *
 * `create` prints the secret once, alone on stdout, so it can be captured by a script;
 * only its hash is stored, so it can never be shown again. `list` shows prefixes only.
 * A revoke takes effect at the next request, also in a running server. `rotate-master`
 * re-wraps every tenant's data key under a new master key. */
#include "cli/cli.h"
#include "cli/cli_tenant.h"

#include "base/mem.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char USAGE[] =
    "usage: mcai key ACTION --data DIR --tenant ID|NAME [OPTIONS]\n"
    "\n"
    "actions:\n"
    "  create                  make an API key; prints it once (it is stored only as a hash)\n"
    "  list                    the tenant's keys: prefix, created, revoked\n"
    "  revoke PREFIX           revoke a key (the prefix is the first 13 characters,\n"
    "                          mcai_XXXXXXXX); effective at once, also in a running server\n"
    "  rotate-master --new-master-key-file F\n"
    "                          re-wrap every tenant's data key (and the API-key pepper)\n"
    "                          under the master key in F; no --tenant. Stop the server\n"
    "                          first and restart it with the new key; API keys and data\n"
    "                          stay valid\n"
    "\n"
    "options:\n"
    "  --data DIR              data directory\n"
    "  --tenant ID|NAME        the tenant\n"
    "  --master-key-file F     master key file (mode 0600, outside DIR); default: the\n"
    "                          MCAI_MASTER_KEY environment variable\n"
    "\n"
    "exit codes: 0 ok, 1 runtime error, 2 usage error\n";

static void format_ms(int64_t ms, char out[32]) {
    if (!ms) {
        snprintf(out, 32, "-");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int rotate_master(struct cli_data *d, const char *dir, const char *new_file) {
    struct mc_err err = {0};
    struct mc_master_key *mk;
    if (mc_master_key_load(new_file, dir, &mk, &err) != MC_OK) {
        fprintf(stderr, "mcai key rotate-master: %s\n", err.msg);
        return CLI_ERR;
    }
    if (!memcmp(mc_master_key_wrap_key(mk), mc_master_key_wrap_key(d->mk), MC_CRYPTO_KEY_BYTES)) {
        fprintf(stderr, "mcai key rotate-master: the new master key is the current one\n");
        mc_master_key_free(mk);
        return CLI_USAGE;
    }
    size_t n = 0;
    int rc = mc_store_rekey(d->store, mk, &n, &err);
    if (rc != MC_OK) {
        fprintf(stderr, "mcai key rotate-master: %s (nothing changed)\n", err.msg);
        mc_master_key_free(mk);
        return CLI_ERR;
    }
    /* The store now uses mk: keep it alive until the store is closed. */
    mc_master_key_free(d->mk);
    d->mk = mk;
    char details[64];
    snprintf(details, sizeof(details), "{\"tenants\":%zu}", n);
    if (mc_audit_append(d->audit, cli_now_ms(), d->actor, "master.rotate", NULL, details, &err) !=
        MC_OK)
        fprintf(stderr, "mcai key rotate-master: audit: %s\n", err.msg);
    printf("re-wrapped %zu tenant data keys; use the new master key from now on\n", n);
    return CLI_OK;
}

static int run(struct cli_data *d, const char *action, const char *tenant, const char *arg) {
    struct mc_err err = {0};
    struct mc_tenant_info t;
    if (mc_tenant_resolve(d->tn, tenant, &t, &err) != MC_OK) {
        fprintf(stderr, "mcai key %s: %s\n", action, err.msg);
        return CLI_ERR;
    }
    if (!strcmp(action, "create")) {
        char secret[MC_KEY_SECRET_LEN + 1];
        struct mc_key_info k;
        if (mc_key_create(d->tn, t.id, secret, &k, &err) != MC_OK) {
            fprintf(stderr, "mcai key create: %s\n", err.msg);
            return CLI_ERR;
        }
        printf("%s\n", secret);
        fflush(stdout);
        memset(secret, 0, sizeof(secret));
        fprintf(stderr, "key %s for tenant %s (%s): store it now, it cannot be shown again\n",
                k.prefix, t.id, t.name);
        return CLI_OK;
    }
    if (!strcmp(action, "list")) {
        struct mc_key_info *keys;
        size_t n;
        if (mc_key_list(d->tn, t.id, &keys, &n, &err) != MC_OK) {
            fprintf(stderr, "mcai key list: %s\n", err.msg);
            return CLI_ERR;
        }
        printf("%-13s  %-20s  %-20s\n", "PREFIX", "CREATED", "REVOKED");
        for (size_t i = 0; i < n; i++) {
            char c[32], r[32];
            format_ms(keys[i].created_ms, c);
            format_ms(keys[i].revoked_ms, r);
            printf("%-13s  %-20s  %-20s\n", keys[i].prefix, c, r);
        }
        mc_free(keys);
        return CLI_OK;
    }
    if (!arg) {
        fprintf(stderr, "mcai key revoke: which key? give its prefix (mcai_XXXXXXXX)\n");
        return CLI_USAGE;
    }
    if (mc_key_revoke(d->tn, t.id, arg, &err) != MC_OK) {
        fprintf(stderr, "mcai key revoke: %s\n", err.msg);
        return CLI_ERR;
    }
    printf("revoked %s\n", arg);
    return CLI_OK;
}

int cmd_key(int argc, char **argv) {
    static const struct option longs[] = {
        {"data", required_argument, NULL, 'd'},
        {"tenant", required_argument, NULL, 't'},
        {"master-key-file", required_argument, NULL, 'k'},
        {"new-master-key-file", required_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    if (argc < 2 || cli_wants_help(argc, argv)) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_USAGE : CLI_OK;
    }
    const char *action = argv[1];
    int rotate = !strcmp(action, "rotate-master");
    if (strcmp(action, "create") && strcmp(action, "list") && strcmp(action, "revoke") && !rotate) {
        fprintf(stderr, "mcai key: unknown action '%s'\n\n%s", action, USAGE);
        return CLI_USAGE;
    }
    const char *data = NULL, *tenant = NULL, *key_file = NULL, *arg = NULL, *new_key = NULL;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc - 1, argv + 1, "", longs, NULL)) != -1) {
        switch (c) {
        case 'd':
            data = optarg;
            break;
        case 't':
            tenant = optarg;
            break;
        case 'k':
            key_file = optarg;
            break;
        case 'n':
            new_key = optarg;
            break;
        default:
            fprintf(stderr, "mcai key %s: unknown or incomplete option '%s'\n", action,
                    argv[optind]);
            return CLI_USAGE;
        }
    }
    if (optind < argc - 1)
        arg = argv[1 + optind++];
    if (optind < argc - 1 || (arg && strcmp(action, "revoke"))) {
        fprintf(stderr, "mcai key %s: unexpected argument '%s'\n", action,
                arg && strcmp(action, "revoke") ? arg : argv[1 + optind]);
        return CLI_USAGE;
    }
    if (rotate && (!data || !new_key || tenant)) {
        fprintf(stderr, "mcai key rotate-master: --data DIR and --new-master-key-file F are "
                        "required, --tenant is not used\n");
        return CLI_USAGE;
    }
    if (!rotate && new_key) {
        fprintf(stderr, "mcai key %s: --new-master-key-file is for rotate-master\n", action);
        return CLI_USAGE;
    }
    if (!rotate && (!data || !tenant)) {
        fprintf(stderr, "mcai key %s: --data DIR and --tenant ID|NAME are required\n", action);
        return CLI_USAGE;
    }
    if (access(data, F_OK) != 0) {
        fprintf(stderr, "mcai key %s: data directory %s does not exist\n", action, data);
        return CLI_ERR;
    }
    struct cli_data d;
    int rc = cli_data_open(data, key_file, &d);
    if (rc != CLI_OK)
        return rc;
    rc = rotate ? rotate_master(&d, data, new_key) : run(&d, action, tenant, arg);
    cli_data_close(&d);
    return rc;
}
