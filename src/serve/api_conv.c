/* api_conv.c - server-side conversations: per-tenant threads of chat messages.
 *
 * A conversation is one sealed store object of kind "conv" under the tenant, id
 * "conv_" + 16 hex digits, holding JSON {"id","created_at","metadata","messages":[...]}.
 * Only the tenant's own data key opens it, and every lookup is keyed by the tenant id
 * from the credential, so another tenant's id answers 404 exactly like an id that never
 * existed. Routes (under /v1/conversations):
 *   POST   ""                 create ({"messages":[...], "metadata":{...}}, both optional)
 *   GET    ""                 list (ids, creation times, message counts)
 *   GET    /{id}              one conversation with its messages
 *   DELETE /{id}              delete
 *   POST   /{id}/messages     append ({"messages":[...]})
 *   GET    /{id}/messages     the messages
 * Chat completions use one through the "conversation" field (api_openai.c): its messages
 * go before the request's, and the request's messages plus the answer are appended.
 * Appends are serialised by one server-wide lock (read, modify, write of one object).
 * Limits: MC_CONV_MAX_MESSAGES messages and MC_CONV_MAX_BYTES of JSON per conversation. */
#include "serve/serve_int.h"

#include "base/log.h"
#include "base/mem.h"
#include "store/crypto.h"
#include "store/store.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define CONV_KIND "conv"
enum { MC_CONV_MAX_MESSAGES = 4096, MC_CONV_MAX_BYTES = 8 << 20, CONV_ID_LEN = 21 };

static bool conv_id_valid(const char *id) {
    if (strlen(id) != CONV_ID_LEN || strncmp(id, "conv_", 5) != 0)
        return false;
    for (int i = 5; i < CONV_ID_LEN; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return false;
    return true;
}

static json_t *msgs_json(const struct mc_api_msg *msgs, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_pack("{s:s,s:s}", "role", mc_api_role_name(msgs[i].role),
                                           "content", msgs[i].content));
    return a;
}

/* Reads the conversation object; MC_ENOTFOUND for a malformed id too. */
static int conv_read(struct mc_server *s, const char *tenant, const char *id, json_t **out,
                     struct mc_err *err) {
    *out = NULL;
    if (!conv_id_valid(id))
        return mc_err_set(err, MC_ENOTFOUND, "no such conversation");
    void *data = NULL;
    size_t n = 0;
    int rc = mc_store_obj_get(s->store, tenant, CONV_KIND, id, &data, &n, err);
    if (rc != MC_OK)
        return rc;
    json_error_t je;
    *out = json_loadb(data, n, 0, &je);
    mc_free(data);
    if (!*out || !json_is_object(*out)) {
        bool parsed = *out != NULL;
        json_decref(*out);
        *out = NULL;
        return mc_err_set(err, MC_EFORMAT, "conversation %s is corrupt: %s", id,
                          parsed ? "not a JSON object" : je.text);
    }
    return MC_OK;
}

static int conv_write(struct mc_server *s, const char *tenant, const char *id, json_t *conv,
                      struct mc_err *err) {
    char *text = json_dumps(conv, JSON_COMPACT);
    if (!text)
        return mc_err_set(err, MC_ENOMEM, "out of memory");
    size_t n = strlen(text);
    int rc =
        n > MC_CONV_MAX_BYTES
            ? mc_err_set(err, MC_EFULL, "conversation would exceed %d bytes", MC_CONV_MAX_BYTES)
            : mc_store_obj_put(s->store, tenant, CONV_KIND, id, text, n, err);
    free(text);
    return rc;
}

int mc_conv_load(struct mc_server *s, const char *tenant, const char *id, struct mc_api_msg **msgs,
                 int *n, struct mc_err *err) {
    *msgs = NULL;
    *n = 0;
    json_t *conv;
    int rc = conv_read(s, tenant, id, &conv, err);
    if (rc != MC_OK)
        return rc;
    json_t *arr = json_object_get(conv, "messages");
    if (json_array_size(arr) > 0) {
        struct mc_api_error e = {0};
        if (mc_api_parse_messages(arr, "messages", msgs, n, &e) != MC_OK)
            rc = mc_err_set(err, MC_EFORMAT, "conversation %s: %s", id, e.msg);
    }
    json_decref(conv);
    return rc;
}

int mc_conv_append(struct mc_server *s, const char *tenant, const char *id,
                   const struct mc_api_msg *msgs, int n, struct mc_err *err) {
    pthread_mutex_lock(&s->conv_lock);
    json_t *conv;
    int rc = conv_read(s, tenant, id, &conv, err);
    if (rc == MC_OK) {
        json_t *arr = json_object_get(conv, "messages");
        if (json_array_size(arr) + (size_t)n > MC_CONV_MAX_MESSAGES) {
            rc = mc_err_set(err, MC_EFULL, "conversation would exceed %d messages",
                            MC_CONV_MAX_MESSAGES);
        } else {
            json_t *more = msgs_json(msgs, n);
            json_array_extend(arr, more);
            json_decref(more);
            rc = conv_write(s, tenant, id, conv, err);
        }
        json_decref(conv);
    }
    pthread_mutex_unlock(&s->conv_lock);
    return rc;
}

/* ---- Handlers --------------------------------------------------------------------- */

static enum MHD_Result not_found(struct mc_http_req *r) {
    return mc_http_reply_error(r, 404, "invalid_request_error", "conversation_not_found", NULL,
                               "no such conversation");
}

static enum MHD_Result store_error(struct mc_http_req *r, const struct mc_auth *a, int rc,
                                   const struct mc_err *err) {
    if (rc == MC_ENOTFOUND)
        return not_found(r);
    if (rc == MC_EFULL)
        return mc_http_reply_error(r, 400, "invalid_request_error", "conversation_too_long", NULL,
                                   "%s; start a new conversation", err->msg);
    MC_LOG_ERROR("api", "conversation_store_failed", "tenant=%s id=%s err=\"%s\"", a->tenant, r->id,
                 err->msg);
    return mc_http_reply_error(r, 500, "server_error", NULL, NULL, "internal error (request %s)",
                               r->id);
}

/* The summary the list shows; the full object adds "messages". */
static json_t *conv_public(json_t *conv, bool with_messages) {
    json_t *msgs = json_object_get(conv, "messages");
    json_t *o = json_pack("{s:O,s:s,s:O,s:O,s:I}", "id", json_object_get(conv, "id"), "object",
                          "conversation", "created_at", json_object_get(conv, "created_at"),
                          "metadata", json_object_get(conv, "metadata"), "n_messages",
                          (json_int_t)json_array_size(msgs));
    if (with_messages)
        json_object_set(o, "messages", msgs);
    return o;
}

/* Optional "messages" of a create or append body; required for append. */
static bool body_messages(struct mc_http_req *r, bool required, struct mc_api_msg **msgs, int *n,
                          json_t **metadata, enum MHD_Result *ret) {
    struct mc_api_error e = {0};
    *msgs = NULL;
    *n = 0;
    json_t *o = NULL;
    if (r->body_len > 0 || required) {
        o = mc_api_parse_object(r->body, r->body_len, &e);
        if (!o) {
            *ret = mc_api_reply_error(r, &e);
            return false;
        }
    }
    json_t *arr = o ? json_object_get(o, "messages") : NULL;
    /* A create may start empty, whether it leaves messages out or sends []. */
    if (!required && (json_is_null(arr) || (json_is_array(arr) && json_array_size(arr) == 0)))
        arr = NULL;
    if (!arr && required) {
        json_decref(o);
        *ret = mc_http_reply_error(r, 400, "invalid_request_error", "missing_field", "messages",
                                   "'messages' is required");
        return false;
    }
    if (arr && mc_api_parse_messages(arr, "messages", msgs, n, &e) != MC_OK) {
        json_decref(o);
        *ret = mc_api_reply_error(r, &e);
        return false;
    }
    if (metadata) {
        json_t *md = o ? json_object_get(o, "metadata") : NULL;
        const char *k;
        json_t *v;
        if (md && !json_is_null(md)) {
            bool ok = json_is_object(md) && json_object_size(md) <= 16;
            json_object_foreach(md, k, v) {
                if (!json_is_string(v) || strlen(k) > 64 || json_string_length(v) > 512)
                    ok = false;
            }
            if (!ok) {
                mc_api_msgs_free(*msgs, *n);
                json_decref(o);
                *ret = mc_http_reply_error(r, 400, "invalid_request_error", "invalid_value",
                                           "metadata",
                                           "'metadata' must be an object of at most "
                                           "16 string values (keys up to 64 bytes, values up to "
                                           "512)");
                return false;
            }
            *metadata = json_incref(md);
        } else {
            *metadata = json_object();
        }
    }
    json_decref(o);
    return true;
}

static enum MHD_Result conv_create(struct mc_server *s, struct mc_http_req *r,
                                   const struct mc_auth *a) {
    struct mc_api_msg *msgs;
    int n;
    json_t *md;
    enum MHD_Result ret;
    if (!body_messages(r, false, &msgs, &n, &md, &ret))
        return ret;
    unsigned char rnd[8];
    mc_crypto_random(rnd, sizeof(rnd));
    char hex[17], id[CONV_ID_LEN + 1];
    mc_crypto_hex(rnd, sizeof(rnd), hex);
    snprintf(id, sizeof(id), "conv_%s", hex);
    json_t *conv = json_pack("{s:s,s:I,s:o,s:o}", "id", id, "created_at", (json_int_t)time(NULL),
                             "metadata", md, "messages", msgs_json(msgs, n));
    mc_api_msgs_free(msgs, n);
    struct mc_err err = {0};
    int rc = conv_write(s, a->tenant, id, conv, &err);
    if (rc != MC_OK) {
        json_decref(conv);
        return store_error(r, a, rc, &err);
    }
    json_t *pub = conv_public(conv, true);
    json_decref(conv);
    return mc_http_reply_json(r, 200, pub);
}

static enum MHD_Result conv_list(struct mc_server *s, struct mc_http_req *r,
                                 const struct mc_auth *a) {
    char **ids = NULL;
    size_t n = 0;
    struct mc_err err = {0};
    int rc = mc_store_obj_list(s->store, a->tenant, CONV_KIND, &ids, &n, &err);
    if (rc != MC_OK)
        return store_error(r, a, rc, &err);
    json_t *data = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *conv;
        if (conv_read(s, a->tenant, ids[i], &conv, &err) != MC_OK)
            continue;
        json_array_append_new(data, conv_public(conv, false));
        json_decref(conv);
    }
    mc_store_obj_list_free(ids, n);
    return mc_http_reply_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

enum MHD_Result mc_api_conversations(struct mc_server *s, struct mc_http_req *r,
                                     const struct mc_auth *a, const char *path) {
    bool get = strcmp(r->method, "GET") == 0;
    bool post = strcmp(r->method, "POST") == 0;
    bool del = strcmp(r->method, "DELETE") == 0;
    if (*path == '\0') {
        if (post)
            return conv_create(s, r, a);
        if (get)
            return conv_list(s, r, a);
        return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                                   "use GET or POST on /v1/conversations");
    }

    /* path is "/{id}" or "/{id}/messages". */
    char id[64];
    const char *rest = strchr(path + 1, '/');
    size_t len = rest ? (size_t)(rest - path - 1) : strlen(path + 1);
    if (len >= sizeof(id))
        return not_found(r);
    memcpy(id, path + 1, len);
    id[len] = '\0';
    bool messages = rest && strcmp(rest, "/messages") == 0;
    if (rest && !messages)
        return not_found(r);

    struct mc_err err = {0};
    json_t *conv = NULL;
    int rc;
    if (del && !messages) {
        rc = conv_id_valid(id) ? mc_store_obj_delete(s->store, a->tenant, CONV_KIND, id, &err)
                               : MC_ENOTFOUND;
        if (rc != MC_OK)
            return store_error(r, a, rc, &err);
        return mc_http_reply_json(
            r, 200,
            json_pack("{s:s,s:s,s:b}", "id", id, "object", "conversation.deleted", "deleted", 1));
    }
    if (get) {
        rc = conv_read(s, a->tenant, id, &conv, &err);
        if (rc != MC_OK)
            return store_error(r, a, rc, &err);
        json_t *o = messages ? json_pack("{s:s,s:O}", "object", "list", "data",
                                         json_object_get(conv, "messages"))
                             : conv_public(conv, true);
        json_decref(conv);
        return mc_http_reply_json(r, 200, o);
    }
    if (post && messages) {
        /* Check the conversation exists before validating the body, so another tenant's
         * id gives the same 404 whatever is sent. */
        rc = conv_read(s, a->tenant, id, &conv, &err);
        if (rc != MC_OK)
            return store_error(r, a, rc, &err);
        json_decref(conv);
        struct mc_api_msg *msgs;
        int n;
        enum MHD_Result ret;
        if (!body_messages(r, true, &msgs, &n, NULL, &ret))
            return ret;
        rc = mc_conv_append(s, a->tenant, id, msgs, n, &err);
        mc_api_msgs_free(msgs, n);
        if (rc != MC_OK)
            return store_error(r, a, rc, &err);
        rc = conv_read(s, a->tenant, id, &conv, &err);
        if (rc != MC_OK)
            return store_error(r, a, rc, &err);
        json_t *o = conv_public(conv, true);
        json_decref(conv);
        return mc_http_reply_json(r, 200, o);
    }
    return mc_http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                               "method %s is not allowed here", r->method);
}
