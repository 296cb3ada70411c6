/* cli_adapter.c - `mcai adapter add|publish|list|show|delete|pin|unpin`: a tenant's LoRA
 * adapters on a data directory, the same objects the server's /v1/adapters and
 * /admin/adapters routes manage (serve/adapter_store.h).
 *
 * add and publish open the files against the model the server serves (-m) before
 * anything is stored, exactly as an upload does. A running server sees a new version or
 * a deletion at the tenant's next request; pin and unpin take effect when the server
 * next starts (on a running server use the admin API, which also loads the adapter). */
#include "cli/cli.h"
#include "cli/cli_tenant.h"

#include "adapter/lora.h"
#include "base/mem.h"
#include "model/model.h"
#include "serve/adapter_store.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_PUBLISH 64

static const char USAGE[] =
    "usage: mcai adapter ACTION --data DIR --tenant ID|NAME [OPTIONS]\n"
    "\n"
    "actions:\n"
    "  add NAME -m MODEL (--file F | --peft DIR)\n"
    "                          store a LoRA adapter (GGUF file, or PEFT directory with\n"
    "                          adapter_config.json and adapter_model.safetensors) for the\n"
    "                          tenant after checking it against MODEL, the served model;\n"
    "                          an existing NAME gets a new version\n"
    "  publish NAME -m MODEL (--file F | --peft DIR)\n"
    "                          the same for every --tenant given (repeat --tenant), marked\n"
    "                          as published by the operator\n"
    "  list                    the tenant's adapters\n"
    "  show NAME               one adapter's metadata\n"
    "  delete NAME             delete it (running requests finish with what they hold)\n"
    "  pin NAME, unpin NAME    keep it resident in the server's cache, from the server's\n"
    "                          next start (POST /admin/tenants/ID/adapters/NAME/pin pins\n"
    "                          at once)\n"
    "\n"
    "options:\n"
    "  --data DIR              data directory\n"
    "  --tenant ID|NAME        the tenant (publish: repeat it, up to 64)\n"
    "  -m, --model FILE        the GGUF model the server serves (add, publish)\n"
    "  --file F                a GGUF LoRA file\n"
    "  --peft DIR              a Hugging Face PEFT adapter directory\n"
    "  --master-key-file F     master key file (mode 0600, outside DIR); default: the\n"
    "                          MCAI_MASTER_KEY environment variable\n"
    "\n"
    "exit codes: 0 ok, 1 runtime error, 2 usage error\n";

struct args {
    const char *action;
    const char *name;
    const char *data;
    const char *tenants[MAX_PUBLISH];
    int n_tenants;
    const char *model;
    const char *file;
    const char *peft;
    const char *key_file;
};

/* ---- Files ------------------------------------------------------------------------ */

/* Reads path into a new buffer (mc_free); NULL after a message. */
static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "mcai adapter: cannot open %s\n", path);
        return NULL;
    }
    char *buf = NULL;
    long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (size >= 0 && (size_t)size <= MC_STORE_OBJ_MAX && fseek(f, 0, SEEK_SET) == 0)
        buf = mc_malloc((size_t)size + 1);
    if (buf && fread(buf, 1, (size_t)size, f) != (size_t)size) {
        mc_free(buf);
        buf = NULL;
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "mcai adapter: cannot read %s (at most %zu bytes)\n", path,
                MC_STORE_OBJ_MAX);
        return NULL;
    }
    buf[size] = '\0';
    *n = (size_t)size;
    return buf;
}

struct loaded {
    char *config;
    char *model;
    struct mc_adapter_files files;
};

static int files_read(const struct args *a, struct loaded *l) {
    memset(l, 0, sizeof(*l));
    if (a->file) {
        l->files.format = MC_LORA_FORMAT_GGUF;
        l->model = read_all(a->file, &l->files.model_len);
    } else {
        char path[4096];
        l->files.format = MC_LORA_FORMAT_PEFT;
        snprintf(path, sizeof(path), "%s/adapter_config.json", a->peft);
        l->config = read_all(path, &l->files.config_len);
        snprintf(path, sizeof(path), "%s/adapter_model.safetensors", a->peft);
        l->model = l->config ? read_all(path, &l->files.model_len) : NULL;
    }
    l->files.config = l->config;
    l->files.model = l->model;
    return l->model ? CLI_OK : CLI_ERR;
}

static void files_free(struct loaded *l) {
    mc_free(l->config);
    mc_free(l->model);
}

/* ---- Printing --------------------------------------------------------------------- */

static void format_time(int64_t s, char out[32]) {
    time_t t = (time_t)s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void targets_text(uint32_t targets, char *out, size_t size) {
    size_t len = 0;
    out[0] = '\0';
    for (int p = 0; p < MC_PROJ_COUNT; p++)
        if (targets & (1u << p))
            len += (size_t)snprintf(out + len, len < size ? size - len : 0, "%s%s", len ? "," : "",
                                    mc_lora_proj_short((enum mc_proj)p));
}

static void print_one(const struct mc_adapter_meta *m) {
    char created[32], targets[64];
    format_time(m->created, created);
    targets_text(m->targets, targets, sizeof(targets));
    printf("name:           %s\nversion:        %llu\nformat:         %s\nrank:           %d\n",
           m->name, (unsigned long long)m->version, mc_adapter_format_name(m->format), m->rank);
    if (m->has_alpha)
        printf("alpha:          %g%s\n", (double)m->alpha, m->rslora ? " (rsLoRA)" : "");
    else
        printf("alpha:          none (factor 1)\n");
    printf("targets:        %s\nsize_bytes:     %lld\nresident_bytes: %lld\ncreated:        %s\n"
           "digest:         %s\npublished:      %s\npinned:         %s\n",
           targets, (long long)m->size_bytes, (long long)m->resident_bytes, created, m->digest,
           m->published ? "yes" : "no", m->pinned ? "yes" : "no");
}

/* ---- Actions ---------------------------------------------------------------------- */

static void audit(struct cli_data *d, const char *action, const char *tenant,
                  const struct mc_adapter_meta *m) {
    char details[160];
    snprintf(details, sizeof(details), "{\"adapter\":\"%s\",\"version\":%llu}", m->name,
             (unsigned long long)m->version);
    struct mc_err err = {0};
    if (mc_audit_append(d->audit, cli_now_ms(), d->actor, action, tenant, details, &err) != MC_OK)
        fprintf(stderr, "mcai adapter %s: audit: %s\n", action + 8, err.msg);
}

/* add and publish: open once against the model, store for each tenant. */
static int store(struct cli_data *d, const struct args *a,
                 const char (*ids)[MC_TENANT_ID_LEN + 1]) {
    struct mc_model *model = NULL;
    struct mc_err err = {0};
    if (mc_model_load(a->model, &model, &err) != MC_OK) {
        fprintf(stderr, "mcai adapter %s: %s\n", a->action, err.msg);
        return CLI_ERR;
    }
    struct mc_lora_base base;
    mc_lora_base_from_model(model, &base);
    struct loaded l;
    int rc = files_read(a, &l);
    struct mc_lora *lora = NULL;
    if (rc == CLI_OK && mc_adapter_open(&l.files, a->name, &base, &lora, &err) != MC_OK) {
        fprintf(stderr, "mcai adapter %s: %s\n", a->action, err.msg);
        rc = CLI_ERR;
    }
    bool publish = strcmp(a->action, "publish") == 0;
    for (int i = 0; rc == CLI_OK && i < a->n_tenants; i++) {
        struct mc_adapter_meta m, old;
        bool replaced = false;
        if (mc_adapter_put(d->store, ids[i], a->name, &l.files, mc_lora_info(lora), publish, &m,
                           &old, &replaced, &err) != MC_OK) {
            fprintf(stderr, "mcai adapter %s: tenant %s: %s\n", a->action, ids[i], err.msg);
            rc = CLI_ERR;
            break;
        }
        audit(d, publish ? "adapter.publish" : "adapter.add", ids[i], &m);
        printf("%s %s version %llu for tenant %s (%s, rank %d)\n", replaced ? "replaced" : "stored",
               m.name, (unsigned long long)m.version, ids[i], mc_adapter_format_name(m.format),
               m.rank);
    }
    mc_lora_release(lora);
    files_free(&l);
    mc_model_free(model);
    return rc;
}

static int list(struct cli_data *d, const char *tenant) {
    struct mc_adapter_meta *rows = NULL;
    size_t n = 0;
    struct mc_err err = {0};
    if (mc_adapter_list(d->store, tenant, &rows, &n, &err) != MC_OK) {
        fprintf(stderr, "mcai adapter list: %s\n", err.msg);
        return CLI_ERR;
    }
    printf("%-24s %7s %-6s %4s %-20s %10s %-9s %-6s\n", "NAME", "VERSION", "FORMAT", "RANK",
           "TARGETS", "BYTES", "PUBLISHED", "PINNED");
    for (size_t i = 0; i < n; i++) {
        char targets[64];
        targets_text(rows[i].targets, targets, sizeof(targets));
        printf("%-24s %7llu %-6s %4d %-20s %10lld %-9s %-6s\n", rows[i].name,
               (unsigned long long)rows[i].version, mc_adapter_format_name(rows[i].format),
               rows[i].rank, targets, (long long)rows[i].size_bytes,
               rows[i].published ? "yes" : "no", rows[i].pinned ? "yes" : "no");
    }
    mc_free(rows);
    return CLI_OK;
}

static int one(struct cli_data *d, const struct args *a, const char *tenant) {
    struct mc_adapter_meta m;
    struct mc_err err = {0};
    int rc;
    if (!strcmp(a->action, "show"))
        rc = mc_adapter_get(d->store, tenant, a->name, &m, &err);
    else if (!strcmp(a->action, "delete"))
        rc = mc_adapter_delete(d->store, tenant, a->name, &m, &err);
    else
        rc = mc_adapter_set_pinned(d->store, tenant, a->name, !strcmp(a->action, "pin"), &m, &err);
    if (rc != MC_OK) {
        fprintf(stderr, "mcai adapter %s: %s\n", a->action, err.msg);
        return CLI_ERR;
    }
    if (!strcmp(a->action, "show")) {
        print_one(&m);
        return CLI_OK;
    }
    char action[32];
    snprintf(action, sizeof(action), "adapter.%s", a->action);
    audit(d, action, tenant, &m);
    printf("%s %s: done\n", a->action, m.name);
    return CLI_OK;
}

static int run(struct cli_data *d, const struct args *a) {
    static char ids[MAX_PUBLISH][MC_TENANT_ID_LEN + 1];
    for (int i = 0; i < a->n_tenants; i++) {
        struct mc_tenant_info t;
        struct mc_err err = {0};
        if (mc_tenant_resolve(d->tn, a->tenants[i], &t, &err) != MC_OK) {
            fprintf(stderr, "mcai adapter %s: %s\n", a->action, err.msg);
            return CLI_ERR;
        }
        snprintf(ids[i], sizeof(ids[i]), "%s", t.id);
    }
    if (!strcmp(a->action, "add") || !strcmp(a->action, "publish"))
        return store(d, a, (const char(*)[MC_TENANT_ID_LEN + 1]) ids);
    if (!strcmp(a->action, "list"))
        return list(d, ids[0]);
    return one(d, a, ids[0]);
}

/* ---- Arguments -------------------------------------------------------------------- */

static int check_args(const struct args *a) {
    const char *act = a->action;
    bool storing = !strcmp(act, "add") || !strcmp(act, "publish");
    bool named = strcmp(act, "list") != 0;
    if (!a->data || a->n_tenants == 0) {
        fprintf(stderr, "mcai adapter %s: --data DIR and --tenant ID|NAME are required\n", act);
        return CLI_USAGE;
    }
    if (a->n_tenants > 1 && strcmp(act, "publish")) {
        fprintf(stderr, "mcai adapter %s: only publish takes several --tenant\n", act);
        return CLI_USAGE;
    }
    if (named && (!a->name || !mc_adapter_name_ok(a->name))) {
        fprintf(stderr,
                "mcai adapter %s: give the adapter's NAME (1..%d of A-Z a-z 0-9 . _ -, starting "
                "with a letter or digit)\n",
                act, MC_ADAPTER_NAME_MAX);
        return CLI_USAGE;
    }
    if (!named && a->name) {
        fprintf(stderr, "mcai adapter list: unexpected argument '%s'\n", a->name);
        return CLI_USAGE;
    }
    if (storing && (!a->model || !a->file == !a->peft)) {
        fprintf(stderr,
                "mcai adapter %s: -m MODEL and one of --file F or --peft DIR are "
                "required\n",
                act);
        return CLI_USAGE;
    }
    if (!storing && (a->model || a->file || a->peft)) {
        fprintf(stderr, "mcai adapter %s: -m, --file and --peft are for add and publish\n", act);
        return CLI_USAGE;
    }
    return CLI_OK;
}

static int parse_args(int argc, char **argv, struct args *a) {
    static const struct option longs[] = {
        {"data", required_argument, NULL, 'd'},
        {"tenant", required_argument, NULL, 't'},
        {"model", required_argument, NULL, 'm'},
        {"file", required_argument, NULL, 'f'},
        {"peft", required_argument, NULL, 'p'},
        {"master-key-file", required_argument, NULL, 'k'},
        {NULL, 0, NULL, 0},
    };
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc - 1, argv + 1, "m:", longs, NULL)) != -1) {
        switch (c) {
        case 'd':
            a->data = optarg;
            break;
        case 't':
            if (a->n_tenants == MAX_PUBLISH) {
                fprintf(stderr, "mcai adapter: at most %d --tenant\n", MAX_PUBLISH);
                return CLI_USAGE;
            }
            a->tenants[a->n_tenants++] = optarg;
            break;
        case 'm':
            a->model = optarg;
            break;
        case 'f':
            a->file = optarg;
            break;
        case 'p':
            a->peft = optarg;
            break;
        case 'k':
            a->key_file = optarg;
            break;
        default:
            fprintf(stderr, "mcai adapter %s: unknown or incomplete option '%s'\n", a->action,
                    argv[optind]);
            return CLI_USAGE;
        }
    }
    if (optind < argc - 1)
        a->name = argv[1 + optind++];
    if (optind < argc - 1) {
        fprintf(stderr, "mcai adapter %s: unexpected argument '%s'\n", a->action, argv[1 + optind]);
        return CLI_USAGE;
    }
    return check_args(a);
}

int cmd_adapter(int argc, char **argv) {
    static const char *const actions[] = {"add",    "publish", "list", "show",
                                          "delete", "pin",     "unpin"};
    if (argc < 2 || cli_wants_help(argc, argv)) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_USAGE : CLI_OK;
    }
    struct args a = {.action = argv[1]};
    bool known = false;
    for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
        known = known || !strcmp(a.action, actions[i]);
    if (!known) {
        fprintf(stderr, "mcai adapter: unknown action '%s'\n\n%s", a.action, USAGE);
        return CLI_USAGE;
    }
    int rc = parse_args(argc, argv, &a);
    if (rc != CLI_OK)
        return rc;
    if (access(a.data, F_OK) != 0) {
        fprintf(stderr, "mcai adapter %s: data directory %s does not exist\n", a.action, a.data);
        return CLI_ERR;
    }
    struct cli_data d;
    rc = cli_data_open(a.data, a.key_file, &d);
    if (rc != CLI_OK)
        return rc;
    rc = run(&d, &a);
    cli_data_close(&d);
    return rc;
}
