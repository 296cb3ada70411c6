/* cli_kb.c - `mcai kb ingest|search|list|get|delete` on a tenant's knowledge base in a
 * data directory.
 *
 * Works with the server running or stopped: every write is one store transaction and the
 * server notices it through the knowledge base's generation. ingest reads files and
 * directories (by extension: .txt .md .markdown .html .htm .xhtml) or BEIR jsonl lines, and
 * writes them in batches of --batch documents, each batch atomic. A progress bar goes to
 * stderr when it is a terminal. With -m MODEL chunks are cut by the model's tokens and
 * embedded for dense search; without it they are cut by words and only BM25 is built.
 *
 * Output on stdout: search prints "rank<TAB>score<TAB>docid" lines, or with --queries a
 * TREC run "qid Q0 docid rank score tag"; list prints one document per line. Document ids
 * are printed with bytes outside printable ASCII, white space and backslash written as
 * \xNN, so each stays one token on one line. Ingest and delete are written to the audit
 * log with counts only. */
#include "cli/cli.h"
#include "cli/cli_opts.h"
#include "cli/cli_tenant.h"

#include "base/mem.h"
#include "model/model.h"
#include "rag/embed.h"
#include "rag/extract.h"
#include "rag/kb.h"
#include "rag/retrieve.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FILE_MAX       ((size_t)MC_KB_TEXT_MAX)
#define LINE_MAX_BYTES ((size_t)64 << 20)
#define DIR_DEPTH_MAX  16

static const char USAGE[] =
    "usage: mcai kb ACTION --data DIR --tenant ID|NAME [OPTIONS]\n"
    "\n"
    "actions:\n"
    "  ingest [--jsonl FILE] [--upsert] [PATH...]\n"
    "                        add files and directories (.txt .md .markdown .html .htm\n"
    "                        .xhtml; ids are paths, relative inside a directory) and/or\n"
    "                        BEIR jsonl lines {\"_id\", \"title\", \"text\", \"metadata\"}\n"
    "  search [--mode M] [-k K] [--chunks] QUERY\n"
    "  search --queries FILE.jsonl [--mode M] [-k K] [--tag TAG]\n"
    "                        print document ids and scores, or a TREC run file\n"
    "                        (qid Q0 docid rank score tag) for {\"_id\", \"text\"} queries\n"
    "  list                  list documents: id, chunks, bytes, title\n"
    "  get DOCID             print a document's text\n"
    "  delete DOCID...       delete documents\n"
    "\n"
    "options:\n"
    "  --data DIR            data directory\n"
    "  --tenant ID|NAME      the tenant whose knowledge base is used\n"
    "  --master-key-file F   master key file; default: MCAI_MASTER_KEY\n"
    "  -m, --model FILE      GGUF model: chunks by its tokens, vectors for dense search\n"
    "  --mode M              bm25, dense or hybrid (default: hybrid with -m, else bm25)\n"
    "  -k K                  results per query (default 10)\n"
    "  --chunks              search: one line per chunk (with its byte span), not per document\n"
    "  --upsert              ingest: replace documents whose id exists (default: fail)\n"
    "  --batch N             ingest: documents per transaction (default 256)\n"
    "  --chunk-tokens N      tokens per chunk (default 200)\n"
    "  --chunk-overlap N     tokens shared by neighbouring chunks (default 40)\n"
    "  --threads N           threads for embeddings (default: all CPUs)\n"
    "\n"
    "exit codes: 0 ok, 1 runtime error, 2 usage error\n";

struct opts {
    const char *action, *data, *key_file, *tenant, *model, *jsonl, *queries, *tag;
    int mode; /* -1: default */
    long k, batch, threads;
    size_t chunk_tokens, chunk_overlap;
    bool upsert, chunks;
    char **args;
    int n_args;
};

/* ---------------------------------------------------------------------------------------
 * Printing ids */

static void print_id(FILE *fp, const char *id, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (c > 0x20 && c < 0x7f && c != '\\')
            fputc(c, fp);
        else
            fprintf(fp, "\\x%02x", c);
    }
}

/* Undoes print_id's escapes (so ids from `list` can be passed to get and delete). Writes
 * into a new buffer; returns NULL on a bad escape. */
static char *unescape_id(const char *s, size_t *n) {
    size_t len = strlen(s), o = 0;
    char *out = mc_malloc(len + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        unsigned v;
        if (s[i] == '\\' && s[i + 1] == 'x' && sscanf(s + i + 2, "%2x", &v) == 1 && i + 3 < len) {
            out[o++] = (char)v;
            i += 3;
        } else if (s[i] == '\\') {
            mc_free(out);
            return NULL;
        } else {
            out[o++] = s[i];
        }
    }
    *n = o;
    return out;
}

/* ---------------------------------------------------------------------------------------
 * Progress bar */

struct progress {
    bool on;
    size_t base, total; /* bytes of earlier batches, bytes in all */
};

static void progress_cb(void *user, size_t done, size_t total) {
    struct progress *p = user;
    (void)total;
    if (!p->on || p->total == 0)
        return;
    size_t now = p->base + done;
    int pct = (int)(100.0 * (double)now / (double)p->total);
    pct = pct > 100 ? 100 : pct;
    char bar[41];
    int fill = pct * 40 / 100;
    for (int i = 0; i < 40; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[40] = 0;
    fprintf(stderr, "\r[%s] %3d%% %.1f/%.1f MB", bar, pct, (double)now / 1e6,
            (double)p->total / 1e6);
    fflush(stderr);
}

/* ---------------------------------------------------------------------------------------
 * Options */

/* The name of a numeric option by its getopt code, for messages. */
static const char *number_option(int c) {
    switch (c) {
    case 'k':
        return "-k";
    case 'b':
        return "--batch";
    case 'C':
        return "--chunk-tokens";
    case 'O':
        return "--chunk-overlap";
    default:
        return "--threads";
    }
}

static int parse_opts(int argc, char **argv, struct opts *o) {
    static const struct option longs[] = {
        {"data", required_argument, NULL, 'd'},
        {"master-key-file", required_argument, NULL, 'K'},
        {"tenant", required_argument, NULL, 't'},
        {"model", required_argument, NULL, 'm'},
        {"jsonl", required_argument, NULL, 'j'},
        {"queries", required_argument, NULL, 'q'},
        {"mode", required_argument, NULL, 'M'},
        {"tag", required_argument, NULL, 'T'},
        {"upsert", no_argument, NULL, 'u'},
        {"chunks", no_argument, NULL, 'c'},
        {"batch", required_argument, NULL, 'b'},
        {"chunk-tokens", required_argument, NULL, 'C'},
        {"chunk-overlap", required_argument, NULL, 'O'},
        {"threads", required_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    o->mode = -1;
    o->k = 10;
    o->batch = 256;
    o->chunk_tokens = 200;
    o->chunk_overlap = 40;
    o->tag = NULL;
    optind = 1;
    opterr = 0;
    int c;
    long v;
    struct mc_err err = {0};
    while ((c = getopt_long(argc, argv, "m:k:", longs, NULL)) != -1) {
        switch (c) {
        case 'd':
            o->data = optarg;
            break;
        case 'K':
            o->key_file = optarg;
            break;
        case 't':
            o->tenant = optarg;
            break;
        case 'm':
            o->model = optarg;
            break;
        case 'j':
            o->jsonl = optarg;
            break;
        case 'q':
            o->queries = optarg;
            break;
        case 'T':
            o->tag = optarg;
            break;
        case 'u':
            o->upsert = true;
            break;
        case 'c':
            o->chunks = true;
            break;
        case 'M':
            if (mc_kb_mode_parse(optarg, &o->mode, &err) != MC_OK) {
                fprintf(stderr, "mcai kb: --mode: %s\n", err.msg);
                return CLI_USAGE;
            }
            break;
        case 'k':
        case 'b':
        case 'C':
        case 'O':
        case 'n': {
            long lo = c == 'O' ? 0 : 1, hi = c == 'k' ? MC_KB_K_MAX : 1000000;
            if (cli_parse_long(optarg, lo, hi, &v)) {
                fprintf(stderr, "mcai kb: %s must be an integer from %ld to %ld, got '%s'\n",
                        number_option(c), lo, hi, optarg);
                return CLI_USAGE;
            }
            if (c == 'k')
                o->k = v;
            else if (c == 'b')
                o->batch = v;
            else if (c == 'C')
                o->chunk_tokens = (size_t)v;
            else if (c == 'O')
                o->chunk_overlap = (size_t)v;
            else
                o->threads = v;
            break;
        }
        default:
            fprintf(stderr, "mcai kb: unknown or incomplete option '%s'\n", argv[optind - 1]);
            return CLI_USAGE;
        }
    }
    o->args = argv + optind;
    o->n_args = argc - optind;
    if (!o->data || !o->tenant) {
        fprintf(stderr, "mcai kb: --data DIR and --tenant ID|NAME are required\n");
        return CLI_USAGE;
    }
    if (o->chunk_overlap >= o->chunk_tokens) {
        fprintf(stderr, "mcai kb: --chunk-overlap %zu must be below --chunk-tokens %zu\n",
                o->chunk_overlap, o->chunk_tokens);
        return CLI_USAGE;
    }
    return CLI_OK;
}

/* ---------------------------------------------------------------------------------------
 * The opened environment: data directory, tenant, optional model, knowledge base */

struct env {
    struct cli_data data;
    struct mc_tenant_info tenant;
    struct mc_model *model;
    struct mc_embedder *emb;
    struct mc_kbs *kbs;
    struct mc_kb *kb;
};

static void env_close(struct env *e) {
    mc_kb_close(e->kb);
    mc_kbs_free(e->kbs);
    mc_embedder_free(e->emb);
    mc_model_free(e->model);
    cli_data_close(&e->data);
}

static int env_open(const struct opts *o, struct env *e) {
    struct mc_err err = {0};
    memset(e, 0, sizeof(*e));
    /* A mistyped --data must not become a new, empty data directory. */
    if (access(o->data, F_OK) != 0) {
        fprintf(stderr,
                "mcai kb: data directory %s does not exist (`mcai tenant create` makes it)\n",
                o->data);
        return CLI_ERR;
    }
    if (cli_data_open(o->data, o->key_file, &e->data) != CLI_OK)
        return CLI_ERR;
    int rc = mc_tenant_resolve(e->data.tn, o->tenant, &e->tenant, &err);
    if (rc == MC_OK && o->model && (rc = mc_model_load(o->model, &e->model, &err)) == MC_OK)
        rc = mc_embedder_create(e->model, (int)o->threads, 0, &e->emb, &err);
    struct mc_kb_config cfg;
    mc_kb_config_default(&cfg);
    cfg.chunk_tokens = o->chunk_tokens;
    cfg.chunk_overlap = o->chunk_overlap;
    if (rc == MC_OK)
        rc = mc_kbs_create(e->data.store, &cfg, e->model ? mc_model_tokenizer(e->model) : NULL,
                           e->emb, &e->kbs, &err);
    if (rc == MC_OK)
        rc = mc_kb_open(e->kbs, e->tenant.id, &e->kb, &err);
    if (rc != MC_OK) {
        fprintf(stderr, "mcai kb: %s\n", err.msg);
        env_close(e);
        return CLI_ERR;
    }
    return CLI_OK;
}

static void audit(struct env *e, const char *action, size_t n_docs, size_t n_chunks) {
    char details[128];
    snprintf(details, sizeof(details), "{\"documents\": %zu, \"chunks\": %zu}", n_docs, n_chunks);
    struct mc_err err = {0};
    if (mc_audit_append(e->data.audit, cli_now_ms(), e->data.actor, action, e->tenant.id, details,
                        &err) != MC_OK)
        fprintf(stderr, "mcai kb: warning: audit log: %s\n", err.msg);
}

/* ---------------------------------------------------------------------------------------
 * Ingest: a batch of documents that owns its strings */

struct batch {
    struct mc_kb_doc_in *docs;
    struct mc_extract_doc *ext; /* extracted files, freed with the batch */
    char **owned;               /* a string per document that the batch owns (id or metadata) */
    json_t **json;              /* jsonl lines whose strings the documents borrow */
    size_t n, cap, bytes;
};

static void batch_clear(struct batch *b) {
    for (size_t i = 0; i < b->n; i++) {
        mc_extract_doc_deinit(&b->ext[i]);
        mc_free(b->owned[i]);
        json_decref(b->json[i]);
    }
    b->n = 0;
    b->bytes = 0;
}

static void batch_free(struct batch *b) {
    batch_clear(b);
    mc_free(b->docs);
    mc_free(b->ext);
    mc_free(b->owned);
    mc_free(b->json);
}

/* A new zeroed slot at the end of the batch, or NULL when out of memory. */
static size_t batch_slot(struct batch *b) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        struct mc_kb_doc_in *d = mc_realloc(b->docs, cap * sizeof(*d));
        if (d)
            b->docs = d;
        struct mc_extract_doc *x = mc_realloc(b->ext, cap * sizeof(*x));
        if (x)
            b->ext = x;
        char **owned = mc_realloc(b->owned, cap * sizeof(*owned));
        if (owned)
            b->owned = owned;
        json_t **js = mc_realloc(b->json, cap * sizeof(*js));
        if (js)
            b->json = js;
        if (!d || !x || !owned || !js)
            return SIZE_MAX;
        b->cap = cap;
    }
    size_t i = b->n++;
    memset(&b->docs[i], 0, sizeof(b->docs[i]));
    memset(&b->ext[i], 0, sizeof(b->ext[i]));
    b->owned[i] = NULL;
    b->json[i] = NULL;
    return i;
}

struct ingest {
    struct env *env;
    const struct opts *o;
    struct batch b;
    struct progress prog;
    size_t n_docs, n_chunks, n_replaced, n_skipped;
};

static int flush(struct ingest *in) {
    if (in->b.n == 0)
        return CLI_OK;
    struct mc_err err = {0};
    struct mc_kb_ingest_stats st;
    int rc = mc_kb_ingest(in->env->kb, in->b.docs, in->b.n, in->o->upsert ? MC_KB_UPSERT : 0,
                          progress_cb, &in->prog, &st, &err);
    if (rc != MC_OK) {
        if (in->prog.on)
            fputc('\n', stderr);
        fprintf(stderr, "mcai kb: %s (documents %zu..%zu of this run; earlier batches are kept)\n",
                err.msg, in->n_docs, in->n_docs + in->b.n - 1);
        return CLI_ERR;
    }
    in->prog.base += in->b.bytes;
    in->n_docs += st.n_added + st.n_replaced;
    in->n_replaced += st.n_replaced;
    in->n_chunks += st.n_chunks;
    batch_clear(&in->b);
    return CLI_OK;
}

static int read_file(const char *path, char **buf, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "mcai kb: cannot open %s: %s\n", path, strerror(errno));
        return CLI_ERR;
    }
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || (size_t)st.st_size > FILE_MAX) {
        fprintf(stderr, "mcai kb: %s is larger than %zu bytes\n", path, FILE_MAX);
        fclose(fp);
        return CLI_ERR;
    }
    *buf = mc_malloc((size_t)st.st_size + 1);
    *len = *buf ? fread(*buf, 1, (size_t)st.st_size, fp) : 0;
    fclose(fp);
    if (!*buf || *len != (size_t)st.st_size) {
        fprintf(stderr, "mcai kb: cannot read %s\n", path);
        mc_free(*buf);
        return CLI_ERR;
    }
    return CLI_OK;
}

/* Adds one file under id to the batch (flushing when full). */
static int add_file(struct ingest *in, const char *path, const char *id, int type) {
    char *buf = NULL;
    size_t len = 0;
    if (read_file(path, &buf, &len) != CLI_OK)
        return CLI_ERR;
    size_t i = batch_slot(&in->b);
    struct mc_err err = {0};
    int rc = i == SIZE_MAX ? mc_err_set(&err, MC_ENOMEM, "out of memory")
                           : mc_extract(type, buf, len, &in->b.ext[i], &err);
    mc_free(buf);
    if (rc == MC_OK && !(in->b.owned[i] = mc_strdup(id)))
        rc = mc_err_set(&err, MC_ENOMEM, "out of memory");
    if (rc != MC_OK) {
        fprintf(stderr, "mcai kb: %s: %s\n", path, err.msg);
        return CLI_ERR;
    }
    static const char *const ctypes[] = {"", "text/plain", "text/markdown", "text/html"};
    struct mc_extract_doc *x = &in->b.ext[i];
    in->b.docs[i] = (struct mc_kb_doc_in){in->b.owned[i], strlen(id), x->text,     x->len,
                                          x->title,       x->meta,    ctypes[type]};
    in->b.bytes += x->len;
    return in->b.n >= (size_t)in->o->batch ? flush(in) : CLI_OK;
}

static int add_dir(struct ingest *in, const char *root, const char *rel, int depth) {
    char path[4096];
    snprintf(path, sizeof(path), "%s%s%s", root, rel[0] ? "/" : "", rel);
    if (depth > DIR_DEPTH_MAX) {
        fprintf(stderr, "mcai kb: %s: deeper than %d directories, skipped\n", path, DIR_DEPTH_MAX);
        return CLI_OK;
    }
    struct dirent **names = NULL;
    int n = scandir(path, &names, NULL, alphasort);
    if (n < 0) {
        fprintf(stderr, "mcai kb: cannot read directory %s: %s\n", path, strerror(errno));
        return CLI_ERR;
    }
    int rc = CLI_OK;
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        char sub[4096], full[8192];
        if (rc == CLI_OK && name[0] != '.') {
            snprintf(sub, sizeof(sub), "%s%s%s", rel, rel[0] ? "/" : "", name);
            snprintf(full, sizeof(full), "%s/%s", root, sub);
            struct stat st;
            int type = mc_extract_type_from_path(name);
            if (stat(full, &st) == 0 && S_ISDIR(st.st_mode))
                rc = add_dir(in, root, sub, depth + 1);
            else if (type != MC_EXTRACT_UNKNOWN && S_ISREG(st.st_mode))
                rc = add_file(in, full, sub, type);
            else
                in->n_skipped++;
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

/* Adds one BEIR jsonl line (already parsed) to the batch. */
static int add_json(struct ingest *in, json_t *j, const char *file, size_t line) {
    json_t *id = json_object_get(j, "_id"), *text = json_object_get(j, "text");
    json_t *title = json_object_get(j, "title"), *meta = json_object_get(j, "metadata");
    const char *bad = !json_is_object(j)                ? "the line is not a JSON object"
                      : !json_is_string(id)             ? "\"_id\" must be a string"
                      : !json_is_string(text)           ? "\"text\" must be a string"
                      : title && !json_is_string(title) ? "\"title\" must be a string"
                      : meta && !json_is_object(meta)   ? "\"metadata\" must be an object"
                                                        : NULL;
    if (bad) {
        fprintf(stderr, "mcai kb: %s:%zu: %s\n", file, line, bad);
        json_decref(j);
        return CLI_ERR;
    }
    size_t i = batch_slot(&in->b);
    char *meta_text = meta ? json_dumps(meta, JSON_COMPACT) : NULL;
    if (i == SIZE_MAX || (meta && !meta_text) ||
        (meta_text && !(in->b.owned[i] = mc_strdup(meta_text)))) {
        free(meta_text);
        json_decref(j);
        fprintf(stderr, "mcai kb: out of memory\n");
        return CLI_ERR;
    }
    free(meta_text);
    in->b.json[i] = j;
    const char *t = json_string_value(title);
    in->b.docs[i] = (struct mc_kb_doc_in){json_string_value(id),
                                          json_string_length(id),
                                          json_string_value(text),
                                          json_string_length(text),
                                          t && *t ? t : NULL,
                                          in->b.owned[i],
                                          "text/plain"};
    in->b.bytes += json_string_length(text);
    return in->b.n >= (size_t)in->o->batch ? flush(in) : CLI_OK;
}

static int add_jsonl(struct ingest *in, const char *file) {
    FILE *fp = fopen(file, "rb");
    if (!fp) {
        fprintf(stderr, "mcai kb: cannot open %s: %s\n", file, strerror(errno));
        return CLI_ERR;
    }
    char *line = NULL;
    size_t cap = 0, no = 0;
    ssize_t n;
    int rc = CLI_OK;
    while (rc == CLI_OK && (n = getline(&line, &cap, fp)) >= 0) {
        no++;
        if ((size_t)n > LINE_MAX_BYTES) {
            fprintf(stderr, "mcai kb: %s:%zu: line longer than %zu bytes\n", file, no,
                    LINE_MAX_BYTES);
            rc = CLI_ERR;
            break;
        }
        if (strspn(line, " \t\r\n") == (size_t)n)
            continue;
        json_error_t je;
        json_t *j = json_loadb(line, (size_t)n, JSON_REJECT_DUPLICATES, &je);
        if (!j) {
            fprintf(stderr, "mcai kb: %s:%zu: %s at byte %d\n", file, no, je.text, je.position);
            rc = CLI_ERR;
        } else {
            rc = add_json(in, j, file, no);
        }
    }
    free(line);
    fclose(fp);
    return rc;
}

/* Bytes of the files add_dir will ingest under path: the same walk (hidden entries and
 * unknown extensions skipped, DIR_DEPTH_MAX levels). */
static size_t dir_bytes(const char *path, int depth) {
    if (depth > DIR_DEPTH_MAX)
        return 0;
    struct dirent **names = NULL;
    int n = scandir(path, &names, NULL, alphasort);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        char full[8192];
        struct stat st;
        snprintf(full, sizeof(full), "%s/%s", path, name);
        if (name[0] != '.' && stat(full, &st) == 0) {
            if (S_ISDIR(st.st_mode))
                total += dir_bytes(full, depth + 1);
            else if (S_ISREG(st.st_mode) && mc_extract_type_from_path(name) != MC_EXTRACT_UNKNOWN)
                total += (size_t)st.st_size;
        }
        free(names[i]);
    }
    free(names);
    return total;
}

/* Bytes of input, for the progress bar (file sizes; the extracted text is a little less). */
static size_t input_bytes(const struct opts *o) {
    size_t total = 0;
    struct stat st;
    if (o->jsonl && stat(o->jsonl, &st) == 0)
        total += (size_t)st.st_size;
    for (int i = 0; i < o->n_args; i++) {
        if (stat(o->args[i], &st) != 0)
            continue;
        if (S_ISREG(st.st_mode))
            total += (size_t)st.st_size;
        else if (S_ISDIR(st.st_mode))
            total += dir_bytes(o->args[i], 0);
    }
    return total;
}

static int cmd_ingest(const struct opts *o, struct env *e) {
    if (!o->jsonl && o->n_args == 0) {
        fprintf(stderr, "mcai kb ingest: give PATH... and/or --jsonl FILE\n");
        return CLI_USAGE;
    }
    struct ingest in = {.env = e, .o = o};
    in.prog.on = isatty(STDERR_FILENO);
    in.prog.total = input_bytes(o);
    int rc = CLI_OK;
    for (int i = 0; i < o->n_args && rc == CLI_OK; i++) {
        struct stat st;
        if (stat(o->args[i], &st) != 0) {
            fprintf(stderr, "mcai kb: cannot open %s: %s\n", o->args[i], strerror(errno));
            rc = CLI_ERR;
        } else if (S_ISDIR(st.st_mode)) {
            rc = add_dir(&in, o->args[i], "", 0);
        } else if (mc_extract_type_from_path(o->args[i]) == MC_EXTRACT_UNKNOWN) {
            fprintf(stderr, "mcai kb: %s: unsupported document type (supported: %s)\n", o->args[i],
                    MC_EXTRACT_SUPPORTED);
            rc = CLI_ERR;
        } else {
            rc = add_file(&in, o->args[i], o->args[i], mc_extract_type_from_path(o->args[i]));
        }
    }
    if (rc == CLI_OK && o->jsonl)
        rc = add_jsonl(&in, o->jsonl);
    if (rc == CLI_OK)
        rc = flush(&in);
    batch_free(&in.b);
    if (in.prog.on && rc == CLI_OK) {
        /* File sizes overcount the extracted text a little: end the bar at 100%. */
        in.prog.base = in.prog.total;
        progress_cb(&in.prog, 0, 0);
        fputc('\n', stderr);
    }
    if (in.n_docs)
        audit(e, "kb.ingest", in.n_docs, in.n_chunks);
    fprintf(stderr, "ingested %zu documents (%zu replaced), %zu chunks%s; %zu files skipped\n",
            in.n_docs, in.n_replaced, in.n_chunks, e->emb ? " with vectors" : "", in.n_skipped);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Search */

static int search_one(const struct opts *o, struct env *e, const char *text, size_t len,
                      const char *qid) {
    struct mc_kb_query q = {text, len, o->mode, (size_t)o->k, !o->chunks, false, 0};
    struct mc_kb_results r;
    struct mc_err err = {0};
    if (mc_kb_search(e->kb, &q, &r, &err) != MC_OK) {
        fprintf(stderr, "mcai kb: search%s%s: %s\n", qid ? " " : "", qid ? qid : "", err.msg);
        return CLI_ERR;
    }
    for (size_t i = 0; i < r.n; i++) {
        const struct mc_kb_hit *h = &r.hits[i];
        if (qid) {
            printf("%s Q0 ", qid);
            print_id(stdout, h->doc_id, h->doc_id_len);
            printf(" %zu %.6f %s\n", i + 1, h->score, o->tag ? o->tag : mc_kb_mode_name(o->mode));
        } else {
            printf("%zu\t%.6f\t", i + 1, h->score);
            print_id(stdout, h->doc_id, h->doc_id_len);
            if (o->chunks)
                printf("\tchunk=%llu\tbytes=%zu..%zu", (unsigned long long)h->chunk_id, h->start,
                       h->end);
            putchar('\n');
        }
    }
    mc_kb_results_deinit(&r);
    return CLI_OK;
}

static int search_queries(const struct opts *o, struct env *e) {
    FILE *fp = fopen(o->queries, "rb");
    if (!fp) {
        fprintf(stderr, "mcai kb: cannot open %s: %s\n", o->queries, strerror(errno));
        return CLI_ERR;
    }
    char *line = NULL;
    size_t cap = 0, no = 0;
    ssize_t n;
    int rc = CLI_OK;
    json_t *seen = json_object(); /* query id -> its line, so a repeat is refused */
    while (rc == CLI_OK && (n = getline(&line, &cap, fp)) >= 0) {
        no++;
        if (strspn(line, " \t\r\n") == (size_t)n)
            continue;
        json_error_t je;
        json_t *j = json_loadb(line, (size_t)n, 0, &je);
        json_t *id = json_object_get(j, "_id"), *text = json_object_get(j, "text");
        if (!j) {
            fprintf(stderr, "mcai kb: %s:%zu: %s at byte %d\n", o->queries, no, je.text,
                    je.position);
            rc = CLI_ERR;
        } else if (!json_is_string(id) || !json_is_string(text) || json_string_length(id) == 0 ||
                   strpbrk(json_string_value(id), " \t\r\n")) {
            fprintf(stderr,
                    "mcai kb: %s:%zu: want {\"_id\": non-empty str without spaces, "
                    "\"text\": str}\n",
                    o->queries, no);
            rc = CLI_ERR;
        } else if (json_object_get(seen, json_string_value(id))) {
            fprintf(stderr, "mcai kb: %s:%zu: query id \"%s\" repeats line %lld\n", o->queries, no,
                    json_string_value(id),
                    (long long)json_integer_value(json_object_get(seen, json_string_value(id))));
            rc = CLI_ERR;
        } else {
            json_object_set_new(seen, json_string_value(id), json_integer((json_int_t)no));
            rc = search_one(o, e, json_string_value(text), json_string_length(text),
                            json_string_value(id));
        }
        json_decref(j);
    }
    json_decref(seen);
    free(line);
    fclose(fp);
    return rc;
}

static int cmd_search(struct opts *o, struct env *e) {
    if (o->mode < 0)
        o->mode = e->emb ? MC_KB_MODE_HYBRID : MC_KB_MODE_BM25;
    if (o->queries) {
        if (o->n_args) {
            fprintf(stderr, "mcai kb search: give QUERY or --queries FILE, not both\n");
            return CLI_USAGE;
        }
        return search_queries(o, e);
    }
    if (o->n_args != 1) {
        fprintf(stderr, "mcai kb search: give one QUERY (quote it) or --queries FILE\n");
        return CLI_USAGE;
    }
    if (o->args[0][strspn(o->args[0], " \t\r\n")] == '\0') {
        fprintf(stderr, "mcai kb search: the query is empty\n");
        return CLI_USAGE;
    }
    return search_one(o, e, o->args[0], strlen(o->args[0]), NULL);
}

/* ---------------------------------------------------------------------------------------
 * List, get, delete */

static int cmd_list(struct env *e) {
    struct mc_kb_doc_info *docs;
    size_t n;
    struct mc_err err = {0};
    if (mc_kb_list(e->kb, &docs, &n, &err) != MC_OK) {
        fprintf(stderr, "mcai kb: %s\n", err.msg);
        return CLI_ERR;
    }
    for (size_t i = 0; i < n; i++) {
        print_id(stdout, docs[i].id, docs[i].id_len);
        printf("\t%zu chunks\t%zu bytes\t%s\n", docs[i].n_chunks, docs[i].text_len,
               docs[i].title ? docs[i].title : "");
    }
    fprintf(stderr, "%zu documents\n", n);
    mc_kb_doc_info_free(docs, n);
    return CLI_OK;
}

static int cmd_get(const struct opts *o, struct env *e) {
    if (o->n_args != 1) {
        fprintf(stderr, "mcai kb get: give one DOCID\n");
        return CLI_USAGE;
    }
    size_t n_id;
    char *id = unescape_id(o->args[0], &n_id);
    if (!id) {
        fprintf(stderr, "mcai kb get: bad \\x escape in '%s'\n", o->args[0]);
        return CLI_USAGE;
    }
    struct mc_kb_doc_info info;
    char *text;
    size_t len;
    struct mc_err err = {0};
    int rc = mc_kb_get(e->kb, id, n_id, &info, &text, &len, &err);
    mc_free(id);
    if (rc != MC_OK) {
        fprintf(stderr, "mcai kb: %s\n", err.msg);
        return CLI_ERR;
    }
    fwrite(text, 1, len, stdout);
    if (len && text[len - 1] != '\n')
        putchar('\n');
    fprintf(stderr, "title: %s\nmetadata: %s\ncontent type: %s\nchunks: %zu\n",
            info.title ? info.title : "", info.meta, info.content_type, info.n_chunks);
    mc_free(text);
    mc_kb_doc_info_deinit(&info);
    return CLI_OK;
}

static int cmd_delete(const struct opts *o, struct env *e) {
    if (o->n_args < 1) {
        fprintf(stderr, "mcai kb delete: give DOCID...\n");
        return CLI_USAGE;
    }
    int rc = CLI_OK;
    size_t n_deleted = 0;
    for (int i = 0; i < o->n_args; i++) {
        size_t n_id;
        char *id = unescape_id(o->args[i], &n_id);
        struct mc_err err = {0};
        if (!id) {
            fprintf(stderr, "mcai kb delete: bad \\x escape in '%s'\n", o->args[i]);
            rc = CLI_USAGE;
        } else if (mc_kb_delete(e->kb, id, n_id, &err) != MC_OK) {
            fprintf(stderr, "mcai kb: %s: %s\n", o->args[i], err.msg);
            rc = CLI_ERR;
        } else {
            n_deleted++;
        }
        mc_free(id);
    }
    if (n_deleted)
        audit(e, "kb.delete", n_deleted, 0);
    fprintf(stderr, "deleted %zu documents\n", n_deleted);
    return rc;
}

int cmd_kb(int argc, char **argv) {
    if (argc < 2 || cli_wants_help(argc, argv)) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_USAGE : CLI_OK;
    }
    struct opts o;
    const char *action = argv[1];
    int rc = parse_opts(argc - 1, argv + 1, &o);
    if (rc != CLI_OK)
        return rc;
    bool known = !strcmp(action, "ingest") || !strcmp(action, "search") ||
                 !strcmp(action, "list") || !strcmp(action, "get") || !strcmp(action, "delete");
    if (!known) {
        fprintf(stderr, "mcai kb: unknown action '%s' (ingest, search, list, get, delete)\n",
                action);
        return CLI_USAGE;
    }
    if ((o.mode == MC_KB_MODE_DENSE || o.mode == MC_KB_MODE_HYBRID) && !o.model) {
        fprintf(stderr, "mcai kb: --mode %s needs -m MODEL for query vectors\n",
                mc_kb_mode_name(o.mode));
        return CLI_USAGE;
    }
    struct env e;
    if (env_open(&o, &e) != CLI_OK)
        return CLI_ERR;
    if (!strcmp(action, "ingest"))
        rc = cmd_ingest(&o, &e);
    else if (!strcmp(action, "search"))
        rc = cmd_search(&o, &e);
    else if (!strcmp(action, "list"))
        rc = cmd_list(&e);
    else if (!strcmp(action, "get"))
        rc = cmd_get(&o, &e);
    else
        rc = cmd_delete(&o, &e);
    env_close(&e);
    return rc;
}
