/* adapter_store.h - LoRA adapters as sealed tenant objects in the store: what the server
 * (api_adapter.c) and `mcai adapter` share.
 *
 * Each adapter of a tenant is two objects under the tenant's data key: its metadata
 * (kind "adapter_meta", id = its name) and its files (kind "adapter", id = name@version).
 * Nothing here caches or loads adapters for serving; the server keeps the residency
 * cache on top of these calls. Every function may be called from any thread (the store
 * serialises writes; put, delete and set_pinned each run in one store transaction). */
#ifndef MC_ADAPTER_STORE_H
#define MC_ADAPTER_STORE_H

#include "adapter/lora.h"
#include "base/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mc_store;

#define MC_ADAPTER_NAME_MAX 64

/* What the store keeps about one adapter of one tenant. */
struct mc_adapter_meta {
    char name[MC_ADAPTER_NAME_MAX + 1];
    uint64_t version; /* 1 at first upload, +1 on every replace */
    enum mc_lora_format format;
    int32_t rank;
    float alpha; /* 0 when has_alpha is false */
    bool has_alpha;
    bool rslora;
    uint32_t targets;       /* bit (1 << enum mc_proj) per projection */
    int64_t size_bytes;     /* bytes uploaded (both PEFT files together) */
    int64_t resident_bytes; /* heap bytes once loaded */
    int64_t created;        /* Unix seconds this version was stored */
    char digest[65];        /* hex BLAKE2b-256 of the stored files */
    bool published;         /* put there by the operator */
    bool pinned;            /* never evicted from a server's residency cache */
};

/* An adapter's files as uploaded (borrowed buffers): a GGUF file, or a PEFT config and
 * safetensors file. */
struct mc_adapter_files {
    enum mc_lora_format format; /* MC_LORA_FORMAT_GGUF or MC_LORA_FORMAT_PEFT */
    const char *config;         /* adapter_config.json (PEFT only) */
    size_t config_len;
    const void *model; /* the GGUF file or adapter_model.safetensors */
    size_t model_len;
};

/* True for 1..MC_ADAPTER_NAME_MAX of [A-Za-z0-9._-] starting with a letter or digit: names
 * go into model ids, object ids, cache keys and metric labels unquoted. */
bool mc_adapter_name_ok(const char *name);
/* "gguf" or "peft". */
const char *mc_adapter_format_name(enum mc_lora_format f);

/* Opens the files against base (see mc_lora_open_gguf_buffer); the loader's errors,
 * which name the tensor, are returned as they are. */
int mc_adapter_open(const struct mc_adapter_files *f, const char *name,
                    const struct mc_lora_base *base, struct mc_lora **out, struct mc_err *err);

/* Stores f as tenant's adapter name, with the figures of info (the adapter f opened as)
 * and a new version: 1, or the previous version + 1 (then *old gets the previous
 * metadata, *replaced is true, its files are deleted and its pin carried over). m gets
 * the new metadata. MC_ENOTFOUND when the tenant does not exist. */
int mc_adapter_put(struct mc_store *st, const char *tenant, const char *name,
                   const struct mc_adapter_files *f, const struct mc_lora_info *info,
                   bool published, struct mc_adapter_meta *m, struct mc_adapter_meta *old,
                   bool *replaced, struct mc_err *err);

/* The metadata of tenant's adapter name; MC_ENOTFOUND when there is none. */
int mc_adapter_get(struct mc_store *st, const char *tenant, const char *name,
                   struct mc_adapter_meta *m, struct mc_err *err);

/* The tenant's adapters sorted by name, into a new array (mc_free). MC_ENOTFOUND when
 * the tenant does not exist. */
int mc_adapter_list(struct mc_store *st, const char *tenant, struct mc_adapter_meta **out,
                    size_t *n, struct mc_err *err);

/* Deletes tenant's adapter name (metadata and files); m gets what was deleted.
 * MC_ENOTFOUND when there is none. */
int mc_adapter_delete(struct mc_store *st, const char *tenant, const char *name,
                      struct mc_adapter_meta *m, struct mc_err *err);

/* Sets or clears the pinned flag; m gets the updated metadata. MC_ENOTFOUND. */
int mc_adapter_set_pinned(struct mc_store *st, const char *tenant, const char *name, bool pin,
                          struct mc_adapter_meta *m, struct mc_err *err);

/* Reads version of tenant's adapter name and opens it against base. want_digest, when
 * non-NULL, must equal the stored files' digest (MC_EFORMAT otherwise). MC_ENOTFOUND
 * when that version is no longer stored (replaced or deleted). */
int mc_adapter_load(struct mc_store *st, const struct mc_lora_base *base, const char *tenant,
                    const char *name, uint64_t version, const char *want_digest,
                    struct mc_lora **out, struct mc_err *err);

#endif
