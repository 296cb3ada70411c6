/* cli_tenant.c - `mcai tenant create|list|show|update|delete|usage` on a data directory.
 *
 * Works with the server running or stopped: the store serialises writers across
 * processes and the audit log is appended under a file lock. Every change is written to
 * the audit log with actor "cli:$USER". Also holds the helpers `mcai key` shares
 * (cli_tenant.h). Output: plain text for people; ids alone on a line where a script may
 * want them (create). */
#include "cli/cli_tenant.h"
#include "cli/cli.h"

#include "base/mem.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FRONT_FILE_MAX (1 << 20)

/* ---------------------------------------------------------------------------------------
 * Shared helpers */

int64_t cli_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int audit_hook(void *user, const char *action, const char *tenant_id,
                      const char *details_json, struct mc_err *err) {
    struct cli_data *d = user;
    return mc_audit_append(d->audit, cli_now_ms(), d->actor, action, tenant_id, details_json, err);
}

int cli_data_open(const char *dir, const char *key_file, struct cli_data *d) {
    struct mc_err err = {0};
    memset(d, 0, sizeof(*d));
    const char *user = getenv("USER");
    snprintf(d->actor, sizeof(d->actor), "cli:%s", user && *user ? user : "unknown");
    int rc = mc_master_key_load(key_file, dir, &d->mk, &err);
    if (rc == MC_OK)
        rc = mc_store_open(dir, d->mk, &d->store, &err);
    if (rc == MC_OK)
        rc = mc_tenants_create(d->store, &d->tn, &err);
    if (rc == MC_OK)
        rc = mc_audit_open(dir, &d->audit, &err);
    if (rc != MC_OK) {
        fprintf(stderr, "mcai: %s\n", err.msg);
        cli_data_close(d);
        return CLI_ERR;
    }
    mc_tenants_set_audit(d->tn, audit_hook, d);
    return CLI_OK;
}

void cli_data_close(struct cli_data *d) {
    mc_audit_close(d->audit);
    mc_tenants_free(d->tn);
    mc_store_close(d->store);
    mc_master_key_free(d->mk);
    memset(d, 0, sizeof(*d));
}

int cli_parse_count(const char *cmd, const char *opt, const char *text, int64_t *out) {
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    if (!*text || *end || v < 0 || v >= 1000000000000LL) {
        fprintf(stderr, "mcai %s: --%s wants a whole number 0..999999999999, got '%s'\n", cmd, opt,
                text);
        return CLI_USAGE;
    }
    *out = v;
    return CLI_OK;
}

/* ---------------------------------------------------------------------------------------
 * Options */

struct opts {
    const char *data, *key_file, *name, *system_prompt, *front_file;
    struct mc_limits limits;
    int set_rpm, set_tpm, set_tpd, set_conc;
    int64_t weight, version, days;
    int yes;
    const char *positional;
};

static const char USAGE[] =
    "usage: mcai tenant ACTION --data DIR [OPTIONS]\n"
    "\n"
    "actions:\n"
    "  create --name NAME [--system-prompt S] [--front-file F.json] [limits]\n"
    "                          create a tenant; prints its id\n"
    "  list                    list tenants with their limits\n"
    "  show ID|NAME [--version N]\n"
    "                          show a tenant and its front (current or version N)\n"
    "  update ID|NAME [--name NAME] [--system-prompt S | --front-file F.json] [limits]\n"
    "                          change a tenant; a front change makes a new front version\n"
    "  delete ID|NAME --yes    destroy the tenant's data key, then all its data\n"
    "  usage [ID|NAME] [--days N]\n"
    "                          tokens and requests per day (all tenants without ID)\n"
    "\n"
    "limits (0 = unlimited):\n"
    "  --rpm N  requests/min   --tpm N  tokens/min   --tpd N  tokens/day\n"
    "  --concurrency N  requests at once             --weight N  scheduling weight (1..1000)\n"
    "\n"
    "common options:\n"
    "  --data DIR              data directory (created by the first `tenant create`)\n"
    "  --master-key-file F     master key file (mode 0600, outside DIR); default: the\n"
    "                          MCAI_MASTER_KEY environment variable (hex or base64 of 32\n"
    "                          bytes; make one with: head -c 32 /dev/urandom | base64)\n"
    "\n"
    "A front file is JSON: {\"system_prompt\": ..., \"template\": \"... {{name}} ...\",\n"
    "\"sampling\": {\"temperature\": 0.7, \"top_p\": 0.9, \"top_k\": 40, ...}, \"max_tokens\": N,\n"
    "\"context_limit\": N, \"allowed_models\": [...], \"retrieval\": {...}}.\n"
    "\n"
    "exit codes: 0 ok, 1 runtime error, 2 usage error\n";

static int parse_opts(const char *cmd, int argc, char **argv, struct opts *o) {
    static const struct option longs[] = {
        {"data", required_argument, NULL, 'd'},
        {"master-key-file", required_argument, NULL, 'k'},
        {"name", required_argument, NULL, 'n'},
        {"system-prompt", required_argument, NULL, 's'},
        {"front-file", required_argument, NULL, 'f'},
        {"rpm", required_argument, NULL, 'r'},
        {"tpm", required_argument, NULL, 't'},
        {"tpd", required_argument, NULL, 'D'},
        {"concurrency", required_argument, NULL, 'c'},
        {"weight", required_argument, NULL, 'w'},
        {"version", required_argument, NULL, 'v'},
        {"days", required_argument, NULL, 'N'},
        {"yes", no_argument, NULL, 'y'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    o->days = 7;
    optind = 1;
    opterr = 0;
    int c, rc = CLI_OK;
    while (rc == CLI_OK && (c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case 'd':
            o->data = optarg;
            break;
        case 'k':
            o->key_file = optarg;
            break;
        case 'n':
            o->name = optarg;
            break;
        case 's':
            o->system_prompt = optarg;
            break;
        case 'f':
            o->front_file = optarg;
            break;
        case 'r':
            rc = cli_parse_count(cmd, "rpm", optarg, &o->limits.rpm), o->set_rpm = 1;
            break;
        case 't':
            rc = cli_parse_count(cmd, "tpm", optarg, &o->limits.tpm), o->set_tpm = 1;
            break;
        case 'D':
            rc = cli_parse_count(cmd, "tpd", optarg, &o->limits.tpd), o->set_tpd = 1;
            break;
        case 'c':
            rc = cli_parse_count(cmd, "concurrency", optarg, &o->limits.concurrency);
            o->set_conc = 1;
            break;
        case 'w':
            rc = cli_parse_count(cmd, "weight", optarg, &o->weight);
            break;
        case 'v':
            rc = cli_parse_count(cmd, "version", optarg, &o->version);
            break;
        case 'N':
            rc = cli_parse_count(cmd, "days", optarg, &o->days);
            break;
        case 'y':
            o->yes = 1;
            break;
        default:
            fprintf(stderr, "mcai %s: unknown or incomplete option '%s'\n", cmd, argv[optind - 1]);
            rc = CLI_USAGE;
        }
    }
    if (rc != CLI_OK)
        return rc;
    if (optind < argc)
        o->positional = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "mcai %s: unexpected argument '%s'\n", cmd, argv[optind]);
        return CLI_USAGE;
    }
    if (!o->data) {
        fprintf(stderr, "mcai %s: --data DIR is required\n", cmd);
        return CLI_USAGE;
    }
    if (o->system_prompt && o->front_file) {
        fprintf(stderr, "mcai %s: give --system-prompt or --front-file, not both\n", cmd);
        return CLI_USAGE;
    }
    return CLI_OK;
}

/* Builds a front from --front-file or --system-prompt on top of base (may be NULL). */
static int front_from_opts(const struct opts *o, const struct mc_front *base,
                           struct mc_front *out) {
    struct mc_err err = {0};
    mc_front_init(out);
    if (o->front_file) {
        FILE *fp = fopen(o->front_file, "rb");
        if (!fp) {
            perror(o->front_file);
            return CLI_ERR;
        }
        char *buf = mc_malloc(FRONT_FILE_MAX + 1);
        size_t n = buf ? fread(buf, 1, FRONT_FILE_MAX + 1, fp) : 0;
        fclose(fp);
        if (!buf || n > FRONT_FILE_MAX) {
            fprintf(stderr, "mcai tenant: %s is larger than %d bytes\n", o->front_file,
                    FRONT_FILE_MAX);
            mc_free(buf);
            return CLI_ERR;
        }
        int rc = mc_front_from_json(buf, n, out, &err);
        mc_free(buf);
        if (rc != MC_OK) {
            fprintf(stderr, "mcai tenant: %s: %s\n", o->front_file, err.msg);
            return CLI_ERR;
        }
        return CLI_OK;
    }
    if (base) {
        /* Copy the base by a JSON round trip, which also deep-copies its strings. */
        char *json = NULL;
        if (mc_front_to_json(base, &json, &err) != MC_OK ||
            mc_front_from_json(json, strlen(json), out, &err) != MC_OK) {
            fprintf(stderr, "mcai tenant: %s\n", err.msg);
            mc_free(json);
            return CLI_ERR;
        }
        mc_free(json);
    }
    if (o->system_prompt) {
        mc_free(out->system_prompt);
        out->system_prompt = mc_strdup(o->system_prompt);
    }
    return CLI_OK;
}

static void print_tenant_row(const struct mc_tenant_info *t) {
    printf("%-18s  %-20s  %8lld  %10lld  %12lld  %5lld  %6d  %5d\n", t->id, t->name,
           (long long)t->limits.rpm, (long long)t->limits.tpm, (long long)t->limits.tpd,
           (long long)t->limits.concurrency, t->weight, t->front_version);
}

static void print_tenant_header(void) {
    printf("%-18s  %-20s  %8s  %10s  %12s  %5s  %6s  %5s\n", "ID", "NAME", "RPM", "TPM", "TPD",
           "CONC", "WEIGHT", "FRONT");
}

/* ---------------------------------------------------------------------------------------
 * Actions */

static int do_create(struct cli_data *d, const struct opts *o) {
    struct mc_err err = {0};
    if (!o->name || o->positional) {
        fprintf(stderr, "mcai tenant create: --name NAME is required (and no other argument)\n");
        return CLI_USAGE;
    }
    struct mc_front front;
    int rc = front_from_opts(o, NULL, &front);
    if (rc != CLI_OK)
        return rc;
    char id[MC_TENANT_ID_LEN + 1];
    rc = mc_tenant_create(d->tn, o->name, &front, &o->limits, id, &err);
    mc_front_deinit(&front);
    if (rc == MC_OK && o->weight > 0)
        rc = mc_tenant_update(d->tn, id, NULL, NULL, (int)o->weight, &err);
    if (rc != MC_OK) {
        fprintf(stderr, "mcai tenant create: %s\n", err.msg);
        return CLI_ERR;
    }
    printf("%s\n", id);
    return CLI_OK;
}

static int do_list(struct cli_data *d) {
    struct mc_err err = {0};
    struct mc_tenant_info *all;
    size_t n;
    if (mc_tenant_list(d->tn, &all, &n, &err) != MC_OK) {
        fprintf(stderr, "mcai tenant list: %s\n", err.msg);
        return CLI_ERR;
    }
    print_tenant_header();
    for (size_t i = 0; i < n; i++)
        print_tenant_row(&all[i]);
    mc_free(all);
    return CLI_OK;
}

static int resolve(struct cli_data *d, const char *cmd, const struct opts *o,
                   struct mc_tenant_info *t) {
    struct mc_err err = {0};
    if (!o->positional) {
        fprintf(stderr, "mcai tenant %s: which tenant? give its id or name\n", cmd);
        return CLI_USAGE;
    }
    if (mc_tenant_resolve(d->tn, o->positional, t, &err) != MC_OK) {
        fprintf(stderr, "mcai tenant %s: %s\n", cmd, err.msg);
        return CLI_ERR;
    }
    return CLI_OK;
}

static int do_show(struct cli_data *d, const struct opts *o) {
    struct mc_err err = {0};
    struct mc_tenant_info t;
    int rc = resolve(d, "show", o, &t);
    if (rc != CLI_OK)
        return rc;
    struct mc_front front;
    int version = 0;
    char *json = NULL;
    rc = mc_front_get(d->tn, t.id, (int)o->version, &front, &version, &err);
    if (rc == MC_OK)
        rc = mc_front_to_json(&front, &json, &err);
    mc_front_deinit(&front);
    if (rc != MC_OK) {
        fprintf(stderr, "mcai tenant show: %s\n", err.msg);
        return CLI_ERR;
    }
    time_t created = (time_t)(t.created_ms / 1000);
    char when[32];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&created));
    printf("id:            %s\nname:          %s\ncreated:       %s\n", t.id, t.name, when);
    printf("limits:        rpm %lld, tpm %lld, tpd %lld, concurrency %lld (0 = unlimited)\n",
           (long long)t.limits.rpm, (long long)t.limits.tpm, (long long)t.limits.tpd,
           (long long)t.limits.concurrency);
    printf("weight:        %d\nfront version: %d of %d\nfront:         %s\n", t.weight, version,
           t.front_version, json);
    mc_free(json);
    return CLI_OK;
}

static int do_update(struct cli_data *d, const struct opts *o) {
    struct mc_err err = {0};
    struct mc_tenant_info t;
    int rc = resolve(d, "update", o, &t);
    if (rc != CLI_OK)
        return rc;
    struct mc_limits l = t.limits;
    if (o->set_rpm)
        l.rpm = o->limits.rpm;
    if (o->set_tpm)
        l.tpm = o->limits.tpm;
    if (o->set_tpd)
        l.tpd = o->limits.tpd;
    if (o->set_conc)
        l.concurrency = o->limits.concurrency;
    int limits_changed = o->set_rpm || o->set_tpm || o->set_tpd || o->set_conc;
    if (o->name || limits_changed || o->weight > 0)
        rc = mc_tenant_update(d->tn, t.id, o->name, limits_changed ? &l : NULL, (int)o->weight,
                              &err);
    if (rc == MC_OK && (o->system_prompt || o->front_file)) {
        struct mc_front cur, next;
        int version = 0;
        rc = mc_front_get(d->tn, t.id, 0, &cur, NULL, &err);
        if (rc == MC_OK) {
            int crc = front_from_opts(o, &cur, &next);
            rc = crc == CLI_OK ? mc_front_set(d->tn, t.id, &next, &version, &err) : MC_EINVAL;
            if (crc != CLI_OK)
                snprintf(err.msg, sizeof(err.msg), "front not changed");
            mc_front_deinit(&next);
        }
        mc_front_deinit(&cur);
        if (rc == MC_OK)
            printf("front version %d\n", version);
    }
    if (rc != MC_OK) {
        fprintf(stderr, "mcai tenant update: %s\n", err.msg);
        return CLI_ERR;
    }
    return CLI_OK;
}

static int do_delete(struct cli_data *d, const struct opts *o) {
    struct mc_err err = {0};
    struct mc_tenant_info t;
    int rc = resolve(d, "delete", o, &t);
    if (rc != CLI_OK)
        return rc;
    if (!o->yes) {
        fprintf(stderr,
                "mcai tenant delete: this destroys tenant %s (%s) and all its data for "
                "good; add --yes to proceed\n",
                t.id, t.name);
        return CLI_USAGE;
    }
    if (mc_tenant_delete(d->tn, t.id, &err) != MC_OK) {
        fprintf(stderr, "mcai tenant delete: %s\n", err.msg);
        return CLI_ERR;
    }
    printf("deleted %s (%s): data key destroyed, data removed\n", t.id, t.name);
    return CLI_OK;
}

static int do_usage(struct cli_data *d, const struct opts *o) {
    struct mc_err err = {0};
    struct mc_tenant_info t;
    const char *id = NULL;
    if (o->positional) {
        int rc = resolve(d, "usage", o, &t);
        if (rc != CLI_OK)
            return rc;
        id = t.id;
    }
    int64_t today = mc_usage_day(cli_now_ms());
    int64_t from = today - (o->days > 0 ? o->days - 1 : 0);
    struct mc_usage *u;
    size_t n;
    if (mc_usage_list(d->tn, id, from, today, &u, &n, &err) != MC_OK) {
        fprintf(stderr, "mcai tenant usage: %s\n", err.msg);
        return CLI_ERR;
    }
    printf("%-18s  %-10s  %10s  %14s  %18s\n", "TENANT", "DAY", "REQUESTS", "PROMPT_TOKENS",
           "COMPLETION_TOKENS");
    for (size_t i = 0; i < n; i++) {
        char day[11];
        mc_usage_day_string(u[i].day, day);
        printf("%-18s  %-10s  %10lld  %14lld  %18lld\n", u[i].tenant_id, day,
               (long long)u[i].requests, (long long)u[i].prompt_tokens,
               (long long)u[i].completion_tokens);
    }
    mc_free(u);
    return CLI_OK;
}

int cmd_tenant(int argc, char **argv) {
    if (argc < 2 || cli_wants_help(argc, argv)) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_USAGE : CLI_OK;
    }
    const char *action = argv[1];
    static const char *const actions[] = {"create", "list", "show", "update", "delete", "usage"};
    int known = 0;
    for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
        known |= strcmp(action, actions[i]) == 0;
    if (!known) {
        fprintf(stderr, "mcai tenant: unknown action '%s'\n\n%s", action, USAGE);
        return CLI_USAGE;
    }
    char cmd[32];
    snprintf(cmd, sizeof(cmd), "tenant %s", action);
    struct opts o;
    int rc = parse_opts(cmd, argc - 1, argv + 1, &o);
    if (rc != CLI_OK)
        return rc;
    if (!strcmp(action, "list") && o.positional) {
        fprintf(stderr, "mcai tenant list: unexpected argument '%s'\n", o.positional);
        return CLI_USAGE;
    }

    if (strcmp(action, "create") && access(o.data, F_OK) != 0) {
        fprintf(stderr,
                "mcai %s: data directory %s does not exist (`mcai tenant create` "
                "makes it)\n",
                cmd, o.data);
        return CLI_ERR;
    }
    struct cli_data d;
    rc = cli_data_open(o.data, o.key_file, &d);
    if (rc != CLI_OK)
        return rc;
    if (!strcmp(action, "create"))
        rc = do_create(&d, &o);
    else if (!strcmp(action, "list"))
        rc = do_list(&d);
    else if (!strcmp(action, "show"))
        rc = do_show(&d, &o);
    else if (!strcmp(action, "update"))
        rc = do_update(&d, &o);
    else if (!strcmp(action, "delete"))
        rc = do_delete(&d, &o);
    else
        rc = do_usage(&d, &o);
    cli_data_close(&d);
    return rc;
}
