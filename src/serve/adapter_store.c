/* adapter_store.c - LoRA adapters as sealed tenant objects (see adapter_store.h).
 *
 * Layout: the metadata is a small JSON object (kind "adapter_meta", id = the name); the
 * files are one blob (kind "adapter", id = "name@version"): the magic "MCLORA1\n", the
 * PEFT config's length as 8 little-endian bytes (0 for GGUF), the config, then the GGUF
 * or safetensors file exactly as uploaded. A replace writes the new version's blob and
 * metadata and deletes the old blob in one transaction, so a reader sees either version
 * whole, and two uploads of one name cannot both get the same version. Nothing here
 * validates uploads beyond what mc_adapter_open does; callers open before they put. */
#include "serve/adapter_store.h"

#include "base/mem.h"
#include "store/store.h"

#include <jansson.h>
#include <sodium.h> /* crypto_generichash, sodium_bin2hex */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define META_KIND   "adapter_meta"
#define BLOB_KIND   "adapter"
#define BLOB_MAGIC  "MCLORA1\n"
#define BLOB_HEADER 16 /* magic + config length */
#define BLOB_ID_MAX (MC_ADAPTER_NAME_MAX + 24)

/* ---- Names ------------------------------------------------------------------------ */

bool mc_adapter_name_ok(const char *n) {
    size_t len = strlen(n);
    if (len < 1 || len > MC_ADAPTER_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = n[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-')))
            return false;
    }
    return true;
}

static void blob_id(char *out, size_t size, const char *name, uint64_t version) {
    snprintf(out, size, "%s@%llu", name, (unsigned long long)version);
}

const char *mc_adapter_format_name(enum mc_lora_format f) {
    return f == MC_LORA_FORMAT_PEFT ? "peft" : "gguf";
}

/* ---- Metadata --------------------------------------------------------------------- */

static char *meta_to_text(const struct mc_adapter_meta *m) {
    json_t *o = json_pack(
        "{s:s,s:I,s:s,s:i,s:f,s:b,s:b,s:I,s:I,s:I,s:I,s:s,s:b,s:b}", "name", m->name, "version",
        (json_int_t)m->version, "format", mc_adapter_format_name(m->format), "rank", m->rank,
        "alpha", (double)m->alpha, "has_alpha", m->has_alpha, "rslora", m->rslora, "targets",
        (json_int_t)m->targets, "size_bytes", (json_int_t)m->size_bytes, "resident_bytes",
        (json_int_t)m->resident_bytes, "created", (json_int_t)m->created, "digest", m->digest,
        "published", m->published, "pinned", m->pinned);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}

static int meta_from_text(const char *text, size_t n, struct mc_adapter_meta *m,
                          struct mc_err *err) {
    memset(m, 0, sizeof(*m));
    json_t *o = json_loadb(text, n, 0, NULL);
    const char *name = NULL, *format = NULL, *digest = NULL;
    json_int_t version = 0, targets = 0, size = 0, resident = 0, created = 0;
    double alpha = 0;
    int has_alpha = 0, rslora = 0, published = 0, pinned = 0;
    if (!o || json_unpack(o, "{s:s,s:I,s:s,s:i,s:F,s:b,s:b,s:I,s:I,s:I,s:I,s:s,s:b,s:b}", "name",
                          &name, "version", &version, "format", &format, "rank", &m->rank, "alpha",
                          &alpha, "has_alpha", &has_alpha, "rslora", &rslora, "targets", &targets,
                          "size_bytes", &size, "resident_bytes", &resident, "created", &created,
                          "digest", &digest, "published", &published, "pinned", &pinned) != 0) {
        json_decref(o);
        return mc_err_set(err, MC_EFORMAT, "stored adapter metadata is not valid");
    }
    snprintf(m->name, sizeof(m->name), "%s", name);
    snprintf(m->digest, sizeof(m->digest), "%s", digest);
    m->version = (uint64_t)version;
    m->format = strcmp(format, "peft") == 0 ? MC_LORA_FORMAT_PEFT : MC_LORA_FORMAT_GGUF;
    m->alpha = (float)alpha;
    m->has_alpha = has_alpha;
    m->rslora = rslora;
    m->targets = (uint32_t)targets;
    m->size_bytes = size;
    m->resident_bytes = resident;
    m->created = created;
    m->published = published;
    m->pinned = pinned;
    json_decref(o);
    return MC_OK;
}

int mc_adapter_get(struct mc_store *st, const char *tenant, const char *name,
                   struct mc_adapter_meta *m, struct mc_err *err) {
    void *data = NULL;
    size_t n = 0;
    int rc = mc_store_obj_get(st, tenant, META_KIND, name, &data, &n, err);
    if (rc == MC_ENOTFOUND)
        return mc_err_set(err, MC_ENOTFOUND, "no adapter '%.64s'", name);
    if (rc != MC_OK)
        return rc;
    rc = meta_from_text(data, n, m, err);
    mc_free(data);
    return rc;
}

static int meta_put(struct mc_store *st, const char *tenant, const struct mc_adapter_meta *m,
                    struct mc_err *err) {
    char *text = meta_to_text(m);
    if (!text)
        return mc_err_set(err, MC_ENOMEM, "out of memory for adapter metadata");
    int rc = mc_store_obj_put(st, tenant, META_KIND, m->name, text, strlen(text), err);
    free(text);
    return rc;
}

static int cmp_meta(const void *a, const void *b) {
    return strcmp(((const struct mc_adapter_meta *)a)->name,
                  ((const struct mc_adapter_meta *)b)->name);
}

int mc_adapter_list(struct mc_store *st, const char *tenant, struct mc_adapter_meta **out,
                    size_t *n_out, struct mc_err *err) {
    *out = NULL;
    *n_out = 0;
    char **ids = NULL;
    size_t n = 0;
    int rc = mc_store_obj_list(st, tenant, META_KIND, &ids, &n, err);
    if (rc != MC_OK)
        return rc;
    struct mc_adapter_meta *rows = mc_calloc(n ? n : 1, sizeof(*rows));
    if (!rows) {
        mc_store_obj_list_free(ids, n);
        return mc_err_set(err, MC_ENOMEM, "out of memory for %zu adapters", n);
    }
    size_t k = 0;
    for (size_t i = 0; i < n && rc == MC_OK; i++) {
        rc = mc_adapter_get(st, tenant, ids[i], &rows[k], err);
        if (rc == MC_ENOTFOUND) /* deleted since the listing */
            rc = MC_OK;
        else if (rc == MC_OK)
            k++;
    }
    mc_store_obj_list_free(ids, n);
    if (rc != MC_OK) {
        mc_free(rows);
        return rc;
    }
    qsort(rows, k, sizeof(*rows), cmp_meta);
    *out = rows;
    *n_out = k;
    return MC_OK;
}

/* ---- Files ------------------------------------------------------------------------ */

int mc_adapter_open(const struct mc_adapter_files *f, const char *name,
                    const struct mc_lora_base *base, struct mc_lora **out, struct mc_err *err) {
    if (f->format == MC_LORA_FORMAT_PEFT)
        return mc_lora_open_peft_buffers(f->config, f->config_len, f->model, f->model_len, name,
                                         base, out, err);
    return mc_lora_open_gguf_buffer(f->model, f->model_len, name, base, out, err);
}

static void *blob_build(const struct mc_adapter_files *u, size_t *n) {
    size_t cfg = u->format == MC_LORA_FORMAT_PEFT ? u->config_len : 0;
    *n = BLOB_HEADER + cfg + u->model_len;
    unsigned char *b = mc_malloc(*n);
    if (!b)
        return NULL;
    memcpy(b, BLOB_MAGIC, 8);
    for (int i = 0; i < 8; i++)
        b[8 + i] = (unsigned char)((uint64_t)cfg >> (8 * i));
    if (cfg)
        memcpy(b + BLOB_HEADER, u->config, cfg);
    memcpy(b + BLOB_HEADER + cfg, u->model, u->model_len);
    return b;
}

/* Splits a stored blob back into an upload (pointers into b). */
static int blob_parse(const unsigned char *b, size_t n, struct mc_adapter_files *u,
                      struct mc_err *err) {
    if (n < BLOB_HEADER || memcmp(b, BLOB_MAGIC, 8) != 0)
        return mc_err_set(err, MC_EFORMAT, "stored adapter blob has no header");
    uint64_t cfg = 0;
    for (int i = 0; i < 8; i++)
        cfg |= (uint64_t)b[8 + i] << (8 * i);
    if (cfg > n - BLOB_HEADER)
        return mc_err_set(err, MC_EFORMAT, "stored adapter blob is truncated");
    u->format = cfg ? MC_LORA_FORMAT_PEFT : MC_LORA_FORMAT_GGUF;
    u->config = (const char *)b + BLOB_HEADER;
    u->config_len = (size_t)cfg;
    u->model = b + BLOB_HEADER + cfg;
    u->model_len = n - BLOB_HEADER - (size_t)cfg;
    return MC_OK;
}

static void digest_hex(const void *blob, size_t n, char out[65]) {
    unsigned char h[32];
    crypto_generichash(h, sizeof(h), blob, n, NULL, 0);
    sodium_bin2hex(out, 65, h, sizeof(h));
}

int mc_adapter_load(struct mc_store *st, const struct mc_lora_base *base, const char *tenant,
                    const char *name, uint64_t version, const char *want_digest,
                    struct mc_lora **out, struct mc_err *err) {
    char id[BLOB_ID_MAX];
    blob_id(id, sizeof(id), name, version);
    void *data = NULL;
    size_t n = 0;
    int rc = mc_store_obj_get(st, tenant, BLOB_KIND, id, &data, &n, err);
    if (rc == MC_ENOTFOUND)
        return mc_err_set(err, MC_ENOTFOUND, "adapter '%s' version %llu is gone", name,
                          (unsigned long long)version);
    if (rc != MC_OK)
        return rc;
    struct mc_adapter_files u;
    rc = blob_parse(data, n, &u, err);
    if (rc == MC_OK && want_digest) {
        char d[65];
        digest_hex(data, n, d);
        if (strcmp(d, want_digest) != 0)
            rc = mc_err_set(err, MC_EFORMAT, "adapter '%s' does not match its digest", name);
    }
    if (rc == MC_OK)
        rc = mc_adapter_open(&u, name, base, out, err);
    mc_free(data);
    return rc;
}

/* ---- Writing ---------------------------------------------------------------------- */

int mc_adapter_put(struct mc_store *st, const char *tenant, const char *name,
                   const struct mc_adapter_files *f, const struct mc_lora_info *info,
                   bool published, struct mc_adapter_meta *m, struct mc_adapter_meta *old,
                   bool *replaced, struct mc_err *err) {
    *replaced = false;
    size_t n = 0;
    void *blob = blob_build(f, &n);
    if (!blob)
        return mc_err_set(err, MC_ENOMEM, "out of memory for an adapter of %zu bytes",
                          f->model_len);
    memset(m, 0, sizeof(*m));
    snprintf(m->name, sizeof(m->name), "%s", name);
    m->format = f->format;
    m->rank = info->rank;
    m->alpha = info->has_alpha ? info->alpha : 0;
    m->has_alpha = info->has_alpha;
    m->rslora = info->rslora;
    m->targets = info->targets;
    m->size_bytes =
        (int64_t)(f->model_len + (f->format == MC_LORA_FORMAT_PEFT ? f->config_len : 0));
    m->resident_bytes = (int64_t)info->resident_bytes;
    m->created = (int64_t)time(NULL);
    m->published = published;
    digest_hex(blob, n, m->digest);

    /* The old version is read inside the transaction, so two uploads of one name cannot
     * both get the same version. */
    int rc = mc_store_begin(st, err);
    if (rc != MC_OK)
        goto out_free;
    rc = mc_adapter_get(st, tenant, name, old, err);
    *replaced = rc == MC_OK;
    if (rc != MC_OK && rc != MC_ENOTFOUND)
        goto out_rollback;
    m->version = *replaced ? old->version + 1 : 1;
    m->pinned = *replaced && old->pinned;
    char id[BLOB_ID_MAX];
    blob_id(id, sizeof(id), name, m->version);
    if ((rc = mc_store_obj_put(st, tenant, BLOB_KIND, id, blob, n, err)) != MC_OK)
        goto out_rollback;
    if ((rc = meta_put(st, tenant, m, err)) != MC_OK)
        goto out_rollback;
    if (*replaced) {
        blob_id(id, sizeof(id), name, old->version);
        rc = mc_store_obj_delete(st, tenant, BLOB_KIND, id, err);
        if (rc != MC_OK && rc != MC_ENOTFOUND)
            goto out_rollback;
    }
    if ((rc = mc_store_commit(st, err)) != MC_OK)
        goto out_rollback;
    mc_free(blob);
    return MC_OK;

out_rollback:
    mc_store_rollback(st);
    *replaced = false;
out_free:
    mc_free(blob);
    return rc;
}

int mc_adapter_delete(struct mc_store *st, const char *tenant, const char *name,
                      struct mc_adapter_meta *m, struct mc_err *err) {
    int rc = mc_store_begin(st, err);
    if (rc != MC_OK)
        return rc;
    if ((rc = mc_adapter_get(st, tenant, name, m, err)) != MC_OK)
        goto out_rollback;
    char id[BLOB_ID_MAX];
    blob_id(id, sizeof(id), name, m->version);
    rc = mc_store_obj_delete(st, tenant, BLOB_KIND, id, err);
    if (rc != MC_OK && rc != MC_ENOTFOUND)
        goto out_rollback;
    if ((rc = mc_store_obj_delete(st, tenant, META_KIND, name, err)) != MC_OK)
        goto out_rollback;
    if ((rc = mc_store_commit(st, err)) != MC_OK)
        goto out_rollback;
    return MC_OK;

out_rollback:
    mc_store_rollback(st);
    return rc;
}

int mc_adapter_set_pinned(struct mc_store *st, const char *tenant, const char *name, bool pin,
                          struct mc_adapter_meta *m, struct mc_err *err) {
    int rc = mc_store_begin(st, err);
    if (rc != MC_OK)
        return rc;
    if ((rc = mc_adapter_get(st, tenant, name, m, err)) == MC_OK) {
        m->pinned = pin;
        rc = meta_put(st, tenant, m, err);
    }
    if (rc == MC_OK)
        rc = mc_store_commit(st, err);
    if (rc != MC_OK)
        mc_store_rollback(st);
    return rc;
}
