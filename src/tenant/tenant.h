/* tenant.h - tenants, their API keys, their fronts (versioned) and their usage.
 *
 * A tenant is a catalog row (id, unique name, limits, scheduling weight, current front
 * version) plus sealed objects in the store (its fronts, kind "front", one object per
 * version). Nothing per tenant is held in memory between calls: looking up an API key is
 * one indexed read of the key row and one of the tenant row, so 10,000 idle tenants cost
 * no memory here.
 *
 * API keys look like "mcai_" + 43 base64url characters (32 random bytes). The first 8 of
 * those characters, with the "mcai_", form the key's prefix: a non-secret, unique lookup
 * index, shown in lists. The store keeps only a keyed BLAKE2b hash of the whole secret,
 * compared in constant time.
 *
 * Threading: a struct mc_tenants may be shared by threads (the store serialises access).
 * Mutating calls report to the audit hook, if one is installed, after they succeed. */
#ifndef MC_TENANT_H
#define MC_TENANT_H

#include "base/err.h"
#include "store/store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MC_TENANT_ID_LEN    18 /* "t_" + 16 hex digits */
#define MC_TENANT_NAME_MAX  MC_STORE_NAME_MAX
#define MC_KEY_PREFIX_LEN   13 /* "mcai_" + 8 characters */
#define MC_KEY_SECRET_LEN   48 /* "mcai_" + 43 characters */
#define MC_FRONT_MAX_MODELS 64
#define MC_FRONT_TEXT_MAX   (256 * 1024) /* bytes of system prompt or template */

/* Per-tenant limits; 0 means unlimited. */
struct mc_limits {
    int64_t rpm;         /* requests per minute */
    int64_t tpm;         /* tokens (prompt + completion) per minute */
    int64_t tpd;         /* tokens per UTC day */
    int64_t concurrency; /* requests running at once */
};

/* What the operator sees of a tenant. Plain data; nothing to free. */
struct mc_tenant_info {
    char id[MC_TENANT_ID_LEN + 1];
    char name[MC_TENANT_NAME_MAX + 1];
    int64_t created_ms;
    struct mc_limits limits;
    int weight;        /* scheduling weight for fair admission, 1..1000, default 1 */
    int front_version; /* current front version, >= 1 */
};

/* A front: how a tenant's requests are shaped. Strings are owned by the struct (free with
 * mc_front_deinit). A numeric field that is not set holds the value named beside it. */
struct mc_front {
    char *system_prompt;      /* NULL: none */
    char *template;           /* NULL: none; "{{name}}" variables, see mc_front_render */
    double temperature;       /* < 0: not set */
    double top_p;             /* < 0: not set */
    int top_k;                /* < 0: not set */
    double min_p;             /* < 0: not set */
    double repeat_penalty;    /* < 0: not set */
    double presence_penalty;  /* NAN: not set */
    double frequency_penalty; /* NAN: not set */
    int64_t seed;             /* < 0: not set */
    int max_tokens;           /* 0: not set */
    int context_limit;        /* 0: not set (the model's context) */
    char **allowed_models;    /* n_allowed_models names; 0 models: every model allowed */
    size_t n_allowed_models;
    char *retrieval; /* NULL: none; a JSON object text of retrieval settings, kept as is */
};

/* The tenant module's handle: the store it works on and the audit hook. */
struct mc_tenants;

/* Called after each successful mutation with the action ("tenant.create",
 * "tenant.update", "tenant.delete", "front.update", "key.create", "key.revoke"), the
 * tenant id and a JSON object of metadata (ids, names, versions; never secrets or front
 * text). A failing hook makes the call return its error after the change is made. */
typedef int (*mc_tenant_audit_fn)(void *user, const char *action, const char *tenant_id,
                                  const char *details_json, struct mc_err *err);

/* ---------------------------------------------------------------------------------------
 * The handle */

/* Creates a handle over an open store (borrowed; it must outlive the handle). */
int mc_tenants_create(struct mc_store *store, struct mc_tenants **out, struct mc_err *err);
void mc_tenants_free(struct mc_tenants *tn);
/* Installs (or removes, with fn NULL) the audit hook. Not thread-safe with other calls. */
void mc_tenants_set_audit(struct mc_tenants *tn, mc_tenant_audit_fn fn, void *user);
/* The store the handle works on (borrowed). */
struct mc_store *mc_tenants_store(const struct mc_tenants *tn);
/* Overrides the clock used for created/revoked times (tests); NULL restores real time. */
void mc_tenants_set_clock(struct mc_tenants *tn, int64_t (*now_ms)(void));

/* ---------------------------------------------------------------------------------------
 * Tenants */

/* Creates a tenant named name (1..64 bytes of letters, digits, '-', '_', '.'; unique)
 * with the given front (NULL: an empty front) as version 1 and limits (NULL: unlimited),
 * weight 1. Writes the new id ("t_" + 16 hex) into id_out. MC_EEXIST when the name is
 * taken, MC_EINVAL on a bad name or front. Atomic: on failure nothing is left behind. */
int mc_tenant_create(struct mc_tenants *tn, const char *name, const struct mc_front *front,
                     const struct mc_limits *limits, char id_out[MC_TENANT_ID_LEN + 1],
                     struct mc_err *err);

/* Reads a tenant by id. MC_ENOTFOUND when there is none. */
int mc_tenant_get(struct mc_tenants *tn, const char *id, struct mc_tenant_info *out,
                  struct mc_err *err);

/* Finds a tenant by id or, failing that, by name (for the command line). */
int mc_tenant_resolve(struct mc_tenants *tn, const char *id_or_name, struct mc_tenant_info *out,
                      struct mc_err *err);

/* All tenants ordered by name into a new array (free with mc_free). */
int mc_tenant_list(struct mc_tenants *tn, struct mc_tenant_info **out, size_t *n,
                   struct mc_err *err);

/* Changes the name (non-NULL), limits (non-NULL) and/or weight (> 0). The front is
 * changed with mc_front_set. MC_ENOTFOUND, MC_EEXIST, MC_EINVAL. */
int mc_tenant_update(struct mc_tenants *tn, const char *id, const char *name,
                     const struct mc_limits *limits, int weight, struct mc_err *err);

/* Deletes a tenant: its data key is destroyed first (see mc_store_tenant_delete), then
 * its fronts, objects, keys and usage; then the audit hook is told. MC_ENOTFOUND. */
int mc_tenant_delete(struct mc_tenants *tn, const char *id, struct mc_err *err);

/* Checks limits values: each >= 0 and below 10^12. MC_EINVAL naming the field. */
int mc_limits_check(const struct mc_limits *limits, struct mc_err *err);

/* ---------------------------------------------------------------------------------------
 * API keys */

/* What a key list shows: never the secret nor its hash. */
struct mc_key_info {
    char prefix[MC_KEY_PREFIX_LEN + 1];
    char tenant_id[MC_TENANT_ID_LEN + 1];
    int64_t created_ms;
    int64_t revoked_ms; /* 0: active */
};

/* Creates an API key for a tenant. The secret is written to secret_out, once: only its
 * hash is stored, so it cannot be shown again. info_out (may be NULL) gets the prefix.
 * MC_ENOTFOUND when the tenant does not exist. */
int mc_key_create(struct mc_tenants *tn, const char *tenant_id,
                  char secret_out[MC_KEY_SECRET_LEN + 1], struct mc_key_info *info_out,
                  struct mc_err *err);

/* Authenticates a secret (a Bearer token as sent, at most 256 bytes): finds its row by
 * prefix, compares the keyed hash in constant time, and checks it is not revoked and its
 * tenant exists. On success fills tenant_out and key_out (either may be NULL). Every
 * refusal (malformed, unknown, wrong, revoked) is MC_EPERM with the same message
 * "invalid API key", so a caller cannot tell them apart. */
int mc_key_lookup(struct mc_tenants *tn, const char *secret, struct mc_tenant_info *tenant_out,
                  struct mc_key_info *key_out, struct mc_err *err);

/* The keys of a tenant, oldest first, into a new array (free with mc_free). */
int mc_key_list(struct mc_tenants *tn, const char *tenant_id, struct mc_key_info **out, size_t *n,
                struct mc_err *err);

/* Revokes a tenant's key by prefix; effective for the next mc_key_lookup in any thread
 * or process. MC_ENOTFOUND when the tenant has no key with this prefix. */
int mc_key_revoke(struct mc_tenants *tn, const char *tenant_id, const char *prefix,
                  struct mc_err *err);

/* ---------------------------------------------------------------------------------------
 * Fronts */

/* Sets every field to "not set". */
void mc_front_init(struct mc_front *f);
/* Frees the strings and resets to "not set". Accepts NULL. */
void mc_front_deinit(struct mc_front *f);

/* Parses a front from JSON text:
 *   {"system_prompt": str, "template": str,
 *    "sampling": {"temperature": num, "top_p": num, "top_k": int, "min_p": num,
 *                 "repeat_penalty": num, "presence_penalty": num,
 *                 "frequency_penalty": num, "seed": int},
 *    "max_tokens": int, "context_limit": int, "allowed_models": [str, ...],
 *    "retrieval": {...}}
 * Every field is optional; an unknown field, a wrong type, an out-of-range value or a
 * template with a syntax error is MC_EINVAL naming the field (and the byte offset for
 * JSON syntax). Undefined template variables are left to mc_front_check, which
 * mc_tenant_create and mc_front_set run. *out is initialised by this call; deinit it
 * even on failure. */
int mc_front_from_json(const char *json, size_t n, struct mc_front *out, struct mc_err *err);

/* Writes a front as JSON text (only the fields that are set) into a new string *out
 * (mc_free). */
int mc_front_to_json(const struct mc_front *f, char **out, struct mc_err *err);

/* The variables a front's template may use, in the order the server passes their values
 * to mc_front_render: "input" (the last user message, or the prompt), "tenant" (the
 * tenant's name) and "date" (today's UTC date, YYYY-MM-DD). */
#define MC_FRONT_N_VARS 3
extern const char *const mc_front_vars[MC_FRONT_N_VARS];

/* Checks ranges (temperature 0..5, top_p 0..1, top_k 0..10^6, min_p 0..1, penalties
 * -2..2 (repeat 0..10), max_tokens and context_limit 0..10^7, at most
 * MC_FRONT_MAX_MODELS models, text fields at most MC_FRONT_TEXT_MAX bytes), template
 * syntax, and that the template uses only mc_front_vars. MC_EINVAL naming the field (and
 * an undefined variable). mc_front_from_json checks all of this but the variable names,
 * so that a front stored before they were checked still loads. */
int mc_front_check(const struct mc_front *f, struct mc_err *err);

/* Stores f as the tenant's next front version (sealed) and makes it current; earlier
 * versions are kept. *version_out (may be NULL) gets the new version number. */
int mc_front_set(struct mc_tenants *tn, const char *tenant_id, const struct mc_front *f,
                 int *version_out, struct mc_err *err);

/* Reads version `version` of a tenant's front (0: the current one) into *out (init'ed
 * by this call; deinit it). *version_out (may be NULL) gets the version read.
 * MC_ENOTFOUND for an unknown tenant or version. */
int mc_front_get(struct mc_tenants *tn, const char *tenant_id, int version, struct mc_front *out,
                 int *version_out, struct mc_err *err);

/* True when the front allows this model name (an empty list allows every model). */
bool mc_front_allows_model(const struct mc_front *f, const char *model);

/* Renders a prompt template. "{{name}}" (ASCII letters, digits and '_', not starting with
 * a digit; spaces inside the braces allowed) is replaced by the value of the variable of
 * that name; "{{{{" writes a literal "{{"; every other character, "}}" included, is
 * copied as is. Values are inserted verbatim and never scanned again. A variable not in
 * names[0..n) is MC_EINVAL ("template variable 'x' at byte 12 is not defined"); a "{{"
 * that does not start a valid reference is MC_EINVAL with its byte offset. The result is
 * a new string *out (mc_free). */
int mc_front_render(const char *tmpl, const char *const *names, const char *const *values, size_t n,
                    char **out, struct mc_err *err);

/* ---------------------------------------------------------------------------------------
 * Usage */

/* Usage of one tenant on one UTC day. */
struct mc_usage {
    char tenant_id[MC_TENANT_ID_LEN + 1];
    int64_t day; /* days since 1970-01-01 UTC */
    int64_t requests;
    int64_t prompt_tokens;
    int64_t completion_tokens;
};

/* The UTC day of a Unix time in milliseconds. */
int64_t mc_usage_day(int64_t now_ms);
/* Writes day as "YYYY-MM-DD" into buf (11 bytes). */
void mc_usage_day_string(int64_t day, char buf[11]);

/* Adds one finished request's counts to the tenant's row for the day of now_ms. */
int mc_usage_record(struct mc_tenants *tn, const char *tenant_id, int64_t now_ms, int64_t requests,
                    int64_t prompt_tokens, int64_t completion_tokens, struct mc_err *err);

/* Usage rows for day_from..day_to (inclusive) of one tenant (tenant_id non-NULL, the
 * tenant's own view) or of every tenant (NULL, the operator's view), into a new array
 * (free with mc_free). */
int mc_usage_list(struct mc_tenants *tn, const char *tenant_id, int64_t day_from, int64_t day_to,
                  struct mc_usage **out, size_t *n, struct mc_err *err);

#endif
