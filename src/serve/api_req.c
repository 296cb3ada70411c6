/* api_req.c - strict parsing of the OpenAI-compatible request bodies.
 *
 * Turns the JSON of /v1/chat/completions, /v1/completions and /v1/embeddings into plain
 * structs, or into one precise error: the field's path in `param` ("messages[2].content"),
 * a message naming the field, the bad value or type and the allowed range, and an
 * OpenAI-style `code`. Rules (docs/api.md repeats them for users):
 *   - the body must be valid UTF-8 and one JSON object; a syntax error names its byte;
 *   - known fields with the wrong type or an out-of-range value are a 400;
 *   - known fields this server does not implement (tools, logit_bias, echo, ...) are a 400
 *     with code "unsupported_parameter" when they ask for something, accepted when they
 *     are null, empty or the default;
 *   - unknown fields are ignored, as the OpenAI API ignores them, so newer clients work.
 * Nothing here knows the model: limits that depend on it (context length, embedding
 * dimensions) are checked by the handlers. */
#include "serve/serve_int.h"

#include "serve/engine.h" /* MC_ENGINE_MAX_ADAPTER_SCALE */

#include "base/mem.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- Errors ----------------------------------------------------------------------- */

int mc_api_fail(struct mc_api_error *e, unsigned status, const char *param, const char *code,
                const char *fmt, ...) {
    e->status = status;
    snprintf(e->param, sizeof(e->param), "%s", param ? param : "");
    snprintf(e->code, sizeof(e->code), "%s", code ? code : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    return MC_EINVAL;
}

/* Every error of a request body parser is a 400. */
#define fail(e, ...) mc_api_fail(e, 400, __VA_ARGS__)

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

static int wrong_type(struct mc_api_error *e, const char *param, const char *want,
                      const json_t *v) {
    return fail(e, param, "invalid_type", "'%s' must be %s, got %s", param, want, type_name(v));
}

static bool is_json_space(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Jansson refuses integers outside int64 as a syntax error, though the JSON is valid.
 * pos is the byte just past the number: when the number is an object member's value,
 * this names the member (a 400 about "seed" rather than about the body). Returns false
 * when the number is not a member's value or its key is not a plain string. */
static bool big_integer_error(const char *body, size_t len, size_t pos, struct mc_api_error *e) {
    size_t end = pos < len ? pos : len, i = end;
    while (i > 0 && ((body[i - 1] >= '0' && body[i - 1] <= '9') || body[i - 1] == '-'))
        i--;
    size_t num = i;
    while (i > 0 && is_json_space(body[i - 1]))
        i--;
    if (i == 0 || body[i - 1] != ':')
        return false;
    i--;
    while (i > 0 && is_json_space(body[i - 1]))
        i--;
    if (i == 0 || body[i - 1] != '"')
        return false;
    size_t key_end = --i;
    while (i > 0 && body[i - 1] != '"' && body[i - 1] != '\\')
        i--;
    if (i == 0 || body[i - 1] != '"' || key_end - i > 40 || end - num > 40)
        return false;
    char key[48];
    snprintf(key, sizeof(key), "%.*s", (int)(key_end - i), body + i);
    fail(e, key, "invalid_value",
         "'%s' is %.*s, outside the integers this server reads (-9223372036854775808 to "
         "9223372036854775807)",
         key, (int)(end - num), body + num);
    return true;
}

/* What a jansson parse error says, in words for a client: jansson's own text, except
 * where it names one of its flags. The result is borrowed from je or static. */
static const char *json_what(const json_error_t *je) {
    /* jansson refuses "\u0000" unless given JSON_ALLOW_NUL, and says so in those words. */
    if (strstr(je->text, "JSON_ALLOW_NUL"))
        return "a NUL character (\\u0000) is not allowed in strings";
    return je->text;
}

json_t *mc_api_parse_json(const char *body, size_t len, struct mc_api_error *e) {
    if (!body || len == 0) {
        fail(e, NULL, "invalid_json", "request body is empty; send JSON");
        return NULL;
    }
    ptrdiff_t bad = mc_utf8_invalid_at(body, len);
    if (bad >= 0) {
        fail(e, NULL, "invalid_utf8", "request body is not valid UTF-8 (byte 0x%02x at offset %td)",
             (unsigned char)body[bad], bad);
        return NULL;
    }
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!root && strncmp(je.text, "too big ", 8) == 0 && je.position > 0 &&
        big_integer_error(body, len, (size_t)je.position, e))
        return NULL;
    if (!root) {
        fail(e, NULL, "invalid_json",
             "request body is not valid JSON: %s at byte %d (line %d, "
             "column %d)",
             json_what(&je), je.position, je.line, je.column);
        return NULL;
    }
    return root;
}

json_t *mc_api_parse_object(const char *body, size_t len, struct mc_api_error *e) {
    if (!body || len == 0) {
        fail(e, NULL, "invalid_json", "request body is empty; send a JSON object");
        return NULL;
    }
    json_t *root = mc_api_parse_json(body, len, e);
    if (root && !json_is_object(root)) {
        fail(e, NULL, "invalid_json", "request body must be a JSON object, got %s",
             type_name(root));
        json_decref(root);
        return NULL;
    }
    return root;
}

enum MHD_Result mc_api_reply_error(struct mc_http_req *r, const struct mc_api_error *e) {
    if (!r->reject)
        r->reject = "invalid_request";
    unsigned status = e->status ? e->status : 400;
    return mc_http_reply_error(r, status, status >= 500 ? "server_error" : "invalid_request_error",
                               e->code, e->param, "%s", e->msg);
}

/* ---- Field readers: each returns MC_OK when the field is absent or null ------------ */

static int get_bool(json_t *o, const char *key, bool *out, struct mc_api_error *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return MC_OK;
    if (!json_is_boolean(v))
        return wrong_type(e, key, "a boolean", v);
    *out = json_is_true(v);
    return MC_OK;
}

/* An integer in [lo, hi]; *set tells whether the field was there. */
static int get_int(json_t *o, const char *key, long long lo, long long hi, long long *out,
                   bool *set, struct mc_api_error *e) {
    json_t *v = json_object_get(o, key);
    if (set)
        *set = false;
    if (!v || json_is_null(v))
        return MC_OK;
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d) || fabs(d) > 9e15)
            return fail(e, key, "invalid_type", "'%s' must be an integer, got %g", key, d);
        if (d < (double)lo || d > (double)hi)
            return fail(e, key, "invalid_value", "'%s' is %g, must be between %lld and %lld", key,
                        d, lo, hi);
        *out = (long long)d;
    } else if (json_is_integer(v)) {
        long long x = json_integer_value(v);
        if (x < lo || x > hi)
            return fail(e, key, "invalid_value", "'%s' is %lld, must be between %lld and %lld", key,
                        x, lo, hi);
        *out = x;
    } else {
        return wrong_type(e, key, "an integer", v);
    }
    if (set)
        *set = true;
    return MC_OK;
}

static int get_num(json_t *o, const char *key, double lo, double hi, double *out, bool *set,
                   struct mc_api_error *e) {
    json_t *v = json_object_get(o, key);
    if (set)
        *set = false;
    if (!v || json_is_null(v))
        return MC_OK;
    if (!json_is_number(v))
        return wrong_type(e, key, "a number", v);
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi))
        return fail(e, key, "invalid_value", "'%s' is %g, must be between %g and %g", key, d, lo,
                    hi);
    *out = d;
    if (set)
        *set = true;
    return MC_OK;
}

/* A string field copied into *out (NULL when absent). */
static int get_str(json_t *o, const char *key, char **out, struct mc_api_error *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return MC_OK;
    if (!json_is_string(v))
        return wrong_type(e, key, "a string", v);
    *out = mc_strndup(json_string_value(v), json_string_length(v));
    if (!*out)
        return fail(e, key, "", "out of memory");
    return MC_OK;
}

/* A field this server does not implement: fine when absent, null, false, empty or equal
 * to its default; a 400 otherwise. */
static int refuse_if_set(json_t *o, const char *key, const char *why, struct mc_api_error *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v) || json_is_false(v))
        return MC_OK;
    if ((json_is_array(v) && json_array_size(v) == 0) ||
        (json_is_object(v) && json_object_size(v) == 0))
        return MC_OK;
    if (json_is_number(v) && json_number_value(v) == 0)
        return MC_OK;
    return fail(e, key, "unsupported_parameter", "'%s' is not supported by this server: %s", key,
                why);
}

/* ---- Shared generation fields ----------------------------------------------------- */

static int parse_stop(json_t *o, struct mc_api_gen *g, struct mc_api_error *e) {
    json_t *v = json_object_get(o, "stop");
    if (!v || json_is_null(v))
        return MC_OK;
    json_t *one[1] = {v};
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(v)) {
        n = json_array_size(v);
        if (n > MC_API_MAX_STOP)
            return fail(e, "stop", "invalid_value", "'stop' has %zu strings, at most %d allowed", n,
                        MC_API_MAX_STOP);
        items = NULL;
    } else if (!json_is_string(v)) {
        return wrong_type(e, "stop", "a string or an array of strings", v);
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = items ? items[i] : json_array_get(v, i);
        char param[32];
        snprintf(param, sizeof(param), items ? "stop" : "stop[%zu]", i);
        if (!json_is_string(s))
            return wrong_type(e, param, "a string", s);
        size_t len = json_string_length(s);
        if (len == 0)
            return fail(e, param, "invalid_value", "'%s' is an empty string", param);
        if (len > MC_API_MAX_STOP_BYTES)
            return fail(e, param, "invalid_value", "'%s' is %zu bytes long, at most %d allowed",
                        param, len, MC_API_MAX_STOP_BYTES);
        g->stop[g->n_stop] = mc_strndup(json_string_value(s), len);
        if (!g->stop[g->n_stop])
            return fail(e, param, "", "out of memory");
        g->n_stop++;
    }
    return MC_OK;
}

static int parse_common(json_t *o, struct mc_api_gen *g, struct mc_api_error *e) {
    long long x = 0;
    bool set = false;
    int rc;

    g->n = 1;
    g->max_tokens = -1;
    if ((rc = get_str(o, "model", &g->model, e)) != MC_OK)
        return rc;
    if ((rc = get_bool(o, "stream", &g->stream, e)) != MC_OK)
        return rc;
    json_t *so = json_object_get(o, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so))
            return wrong_type(e, "stream_options", "an object", so);
        json_t *iu = json_object_get(so, "include_usage");
        if (iu && !json_is_null(iu) && !json_is_boolean(iu))
            return wrong_type(e, "stream_options.include_usage", "a boolean", iu);
        g->include_usage = iu && json_is_true(iu);
    }

    /* max_completion_tokens replaced max_tokens in the chat API; when both are sent the
     * newer one wins. */
    if ((rc = get_int(o, "max_tokens", 1, MC_API_MAX_TOKENS, &x, &set, e)) != MC_OK)
        return rc;
    if (set)
        g->max_tokens = (int)x;
    if ((rc = get_int(o, "max_completion_tokens", 1, MC_API_MAX_TOKENS, &x, &set, e)) != MC_OK)
        return rc;
    if (set)
        g->max_tokens = (int)x;
    if ((rc = get_int(o, "n", 1, MC_API_MAX_N, &x, &set, e)) != MC_OK)
        return rc;
    if (set)
        g->n = (int)x;

    struct mc_api_sampling *s = &g->sampling;
    if ((rc = get_num(o, "temperature", 0, 2, &s->temperature, &s->has_temperature, e)) != MC_OK)
        return rc;
    if ((rc = get_num(o, "top_p", 0, 1, &s->top_p, &s->has_top_p, e)) != MC_OK)
        return rc;
    if ((rc = get_int(o, "top_k", 0, 100000, &x, &s->has_top_k, e)) != MC_OK)
        return rc;
    s->top_k = (int)x;
    if ((rc = get_int(o, "seed", INT64_MIN, INT64_MAX, &x, &s->has_seed, e)) != MC_OK)
        return rc;
    s->seed = (uint64_t)x;

    if ((rc = get_num(o, "presence_penalty", -2, 2, &s->presence_penalty, &s->has_presence_penalty,
                      e)) != MC_OK)
        return rc;
    if ((rc = get_num(o, "frequency_penalty", -2, 2, &s->frequency_penalty,
                      &s->has_frequency_penalty, e)) != MC_OK)
        return rc;
    if ((rc = refuse_if_set(o, "logit_bias", "logit bias is not implemented", e)) != MC_OK)
        return rc;
    if ((rc = parse_stop(o, g, e)) != MC_OK)
        return rc;
    if ((rc = get_str(o, "conversation", &g->conversation, e)) != MC_OK)
        return rc;
    /* Extension: the multiplier of the adapter's alpha/r (0 turns the adapter off). */
    if ((rc = get_num(o, "lora_scale", 0, MC_ENGINE_MAX_ADAPTER_SCALE, &g->lora_scale,
                      &g->has_lora_scale, e)) != MC_OK)
        return rc;
    return MC_OK;
}

/* ---- Chat ------------------------------------------------------------------------- */

/* content: a string, null (an assistant turn with no text), or an array of
 * {"type":"text","text":...} parts, which are joined without a separator. */
static int parse_content(json_t *c, const char *arr, int i, char **out, struct mc_api_error *e) {
    char param[64];
    snprintf(param, sizeof(param), "%.20s[%d].content", arr, i);
    if (!c || json_is_null(c)) {
        *out = mc_strdup("");
    } else if (json_is_string(c)) {
        *out = mc_strndup(json_string_value(c), json_string_length(c));
    } else if (json_is_array(c)) {
        struct mc_buf b = {0};
        size_t j;
        json_t *part;
        json_array_foreach(c, j, part) {
            char pp[96];
            snprintf(pp, sizeof(pp), "%s[%zu]", param, j);
            if (!json_is_object(part)) {
                mc_buf_free(&b);
                return wrong_type(e, pp, "an object", part);
            }
            json_t *t = json_object_get(part, "type");
            char tp[112];
            snprintf(tp, sizeof(tp), "%s.type", pp);
            if (!json_is_string(t)) {
                mc_buf_free(&b);
                return t ? wrong_type(e, tp, "a string", t)
                         : fail(e, tp, "missing_field", "'%s' is required", tp);
            }
            if (strcmp(json_string_value(t), "text") != 0) {
                mc_buf_free(&b);
                return fail(e, tp, "unsupported_value",
                            "content part type '%.40s' is not "
                            "supported; only 'text' parts are",
                            json_string_value(t));
            }
            json_t *txt = json_object_get(part, "text");
            snprintf(tp, sizeof(tp), "%s.text", pp);
            if (!json_is_string(txt)) {
                mc_buf_free(&b);
                return txt ? wrong_type(e, tp, "a string", txt)
                           : fail(e, tp, "missing_field", "'%s' is required", tp);
            }
            if (mc_buf_append(&b, json_string_value(txt), json_string_length(txt)) != MC_OK) {
                mc_buf_free(&b);
                return fail(e, tp, "", "out of memory");
            }
        }
        *out = b.data ? b.data : mc_strdup("");
    } else {
        return wrong_type(e, param, "a string or an array of content parts", c);
    }
    if (!*out)
        return fail(e, param, "", "out of memory");
    return MC_OK;
}

static int parse_message(json_t *m, const char *arr, int i, struct mc_api_msg *out,
                         struct mc_api_error *e) {
    char param[64];
    snprintf(param, sizeof(param), "%.20s[%d]", arr, i);
    if (!json_is_object(m))
        return wrong_type(e, param, "an object", m);
    json_t *role = json_object_get(m, "role");
    snprintf(param, sizeof(param), "%.20s[%d].role", arr, i);
    if (!role)
        return fail(e, param, "missing_field", "'%s' is required", param);
    if (!json_is_string(role))
        return wrong_type(e, param, "a string", role);
    const char *rs = json_string_value(role);
    if (strcmp(rs, "system") == 0 || strcmp(rs, "developer") == 0)
        out->role = MC_ROLE_SYSTEM;
    else if (strcmp(rs, "user") == 0)
        out->role = MC_ROLE_USER;
    else if (strcmp(rs, "assistant") == 0)
        out->role = MC_ROLE_ASSISTANT;
    else if (strcmp(rs, "tool") == 0 || strcmp(rs, "function") == 0)
        return fail(e, param, "unsupported_value",
                    "role '%s' is not supported: this server "
                    "has no tool calling",
                    rs);
    else
        return fail(e, param, "invalid_value",
                    "'%s' is '%.40s'; must be 'system', "
                    "'developer', 'user' or 'assistant'",
                    param, rs);
    json_t *tc = json_object_get(m, "tool_calls");
    if (tc && !json_is_null(tc) && !(json_is_array(tc) && json_array_size(tc) == 0)) {
        snprintf(param, sizeof(param), "%.20s[%d].tool_calls", arr, i);
        return fail(e, param, "unsupported_parameter",
                    "'%s' is not supported: this server has "
                    "no tool calling",
                    param);
    }
    json_t *c = json_object_get(m, "content");
    if (!c && out->role != MC_ROLE_ASSISTANT) {
        snprintf(param, sizeof(param), "%.20s[%d].content", arr, i);
        return fail(e, param, "missing_field", "'%s' is required", param);
    }
    if (json_is_null(c) && out->role != MC_ROLE_ASSISTANT) {
        snprintf(param, sizeof(param), "%.20s[%d].content", arr, i);
        return fail(e, param, "invalid_type",
                    "'%s' is null; only an assistant message may have null content", param);
    }
    return parse_content(c, arr, i, &out->content, e);
}

int mc_api_parse_messages(json_t *arr, const char *param, struct mc_api_msg **out, int *n_out,
                          struct mc_api_error *e) {
    *out = NULL;
    *n_out = 0;
    if (!json_is_array(arr))
        return wrong_type(e, param, "an array", arr);
    size_t n = json_array_size(arr);
    if (n == 0 || n > MC_API_MAX_MESSAGES)
        return fail(e, param, "invalid_value", "'%s' has %zu entries, must have 1 to %d", param, n,
                    MC_API_MAX_MESSAGES);
    struct mc_api_msg *msgs = mc_calloc(n, sizeof(*msgs));
    if (!msgs)
        return fail(e, param, "", "out of memory");
    for (size_t i = 0; i < n; i++) {
        int rc = parse_message(json_array_get(arr, i), param, (int)i, &msgs[i], e);
        if (rc != MC_OK) {
            mc_api_msgs_free(msgs, (int)i + 1);
            return rc;
        }
    }
    *out = msgs;
    *n_out = (int)n;
    return MC_OK;
}

void mc_api_msgs_free(struct mc_api_msg *msgs, int n) {
    if (!msgs)
        return;
    for (int i = 0; i < n; i++)
        mc_free(msgs[i].content);
    mc_free(msgs);
}

const char *mc_api_role_name(enum mc_api_role role) {
    return role == MC_ROLE_SYSTEM ? "system" : role == MC_ROLE_USER ? "user" : "assistant";
}

int mc_api_parse_chat(const char *body, size_t len, struct mc_api_gen *g, struct mc_api_error *e) {
    memset(g, 0, sizeof(*g));
    g->is_chat = true;
    json_t *o = mc_api_parse_object(body, len, e);
    if (!o)
        return MC_EINVAL;
    int rc = parse_common(o, g, e);
    if (rc != MC_OK)
        goto out;

    bool lp = false;
    long long x = 0;
    bool set = false;
    if ((rc = get_bool(o, "logprobs", &lp, e)) != MC_OK)
        goto out;
    if ((rc = get_int(o, "top_logprobs", 0, MC_API_MAX_TOP_LOGPROBS, &x, &set, e)) != MC_OK)
        goto out;
    if (set && !lp) {
        rc = fail(e, "top_logprobs", "invalid_value", "'top_logprobs' needs 'logprobs': true");
        goto out;
    }
    g->logprobs = lp;
    g->top_logprobs = (int)x;

    const char *nots[][2] = {
        {"tools", "tool calling is not implemented"},
        {"functions", "function calling is not implemented"},
        {"function_call", "function calling is not implemented"},
        {"audio", "audio output is not implemented"},
        {"prediction", "predicted outputs are not implemented"},
    };
    for (size_t i = 0; i < sizeof(nots) / sizeof(nots[0]); i++)
        if ((rc = refuse_if_set(o, nots[i][0], nots[i][1], e)) != MC_OK)
            goto out;
    json_t *tc = json_object_get(o, "tool_choice");
    if (tc && !json_is_null(tc) &&
        !(json_is_string(tc) && (strcmp(json_string_value(tc), "none") == 0 ||
                                 strcmp(json_string_value(tc), "auto") == 0))) {
        rc = fail(e, "tool_choice", "unsupported_parameter",
                  "'tool_choice' is not supported "
                  "by this server: tool calling is not implemented");
        goto out;
    }
    json_t *rf = json_object_get(o, "response_format");
    if (rf && !json_is_null(rf)) {
        json_t *t = json_is_object(rf) ? json_object_get(rf, "type") : NULL;
        if (!json_is_string(t) || strcmp(json_string_value(t), "text") != 0) {
            rc = fail(e, "response_format", "unsupported_parameter",
                      "'response_format' must "
                      "be {\"type\":\"text\"}: structured output is not implemented");
            goto out;
        }
    }

    json_t *msgs = json_object_get(o, "messages");
    if (!msgs) {
        rc = fail(e, "messages", "missing_field", "'messages' is required");
        goto out;
    }
    rc = mc_api_parse_messages(msgs, "messages", &g->msgs, &g->n_msgs, e);

out:
    json_decref(o);
    if (rc != MC_OK)
        mc_api_gen_free(g);
    return rc;
}

/* ---- Completions ------------------------------------------------------------------ */

static int parse_prompt(json_t *o, struct mc_api_gen *g, struct mc_api_error *e) {
    json_t *p = json_object_get(o, "prompt");
    if (!p)
        return fail(e, "prompt", "missing_field", "'prompt' is required");
    if (json_is_array(p)) {
        if (json_array_size(p) != 1 || !json_is_string(json_array_get(p, 0)))
            return fail(e, "prompt", "unsupported_value",
                        "'prompt' as an array must hold "
                        "exactly one string (token arrays and batches are not supported)");
        p = json_array_get(p, 0);
    }
    if (!json_is_string(p))
        return wrong_type(e, "prompt", "a string", p);
    g->prompt = mc_strndup(json_string_value(p), json_string_length(p));
    return g->prompt ? MC_OK : fail(e, "prompt", "", "out of memory");
}

int mc_api_parse_completion(const char *body, size_t len, struct mc_api_gen *g,
                            struct mc_api_error *e) {
    memset(g, 0, sizeof(*g));
    json_t *o = mc_api_parse_object(body, len, e);
    if (!o)
        return MC_EINVAL;
    int rc = parse_common(o, g, e);
    if (rc != MC_OK)
        goto out;

    /* The legacy API's logprobs is a count of alternatives (0..5), not a boolean. */
    long long x = 0;
    bool set = false;
    if ((rc = get_int(o, "logprobs", 0, 5, &x, &set, e)) != MC_OK)
        goto out;
    g->logprobs = set;
    g->top_logprobs = (int)x;
    if ((rc = refuse_if_set(o, "echo", "echoing the prompt is not implemented", e)) != MC_OK)
        goto out;
    json_t *sfx = json_object_get(o, "suffix");
    if (sfx && !json_is_null(sfx) && !(json_is_string(sfx) && json_string_length(sfx) == 0)) {
        rc = fail(e, "suffix", "unsupported_parameter",
                  "'suffix' is not supported by this "
                  "server: insertion is not implemented");
        goto out;
    }
    if ((rc = get_int(o, "best_of", 1, MC_API_MAX_N, &x, &set, e)) != MC_OK)
        goto out;
    if (set && x != g->n) {
        rc = fail(e, "best_of", "unsupported_value",
                  "'best_of' must equal 'n' (%d): ranking "
                  "candidates is not implemented",
                  g->n);
        goto out;
    }
    rc = parse_prompt(o, g, e);

out:
    json_decref(o);
    if (rc != MC_OK)
        mc_api_gen_free(g);
    return rc;
}

void mc_api_gen_free(struct mc_api_gen *g) {
    if (!g)
        return;
    mc_free(g->model);
    for (int i = 0; i < g->n_stop; i++)
        mc_free(g->stop[i]);
    mc_free(g->conversation);
    mc_api_msgs_free(g->msgs, g->n_msgs);
    mc_free(g->prompt);
    memset(g, 0, sizeof(*g));
}

/* ---- Embeddings ------------------------------------------------------------------- */

int mc_api_parse_embed(const char *body, size_t len, struct mc_api_embed *m,
                       struct mc_api_error *e) {
    memset(m, 0, sizeof(*m));
    json_t *o = mc_api_parse_object(body, len, e);
    if (!o)
        return MC_EINVAL;
    int rc = get_str(o, "model", &m->model, e);
    if (rc != MC_OK)
        goto out;

    json_t *f = json_object_get(o, "encoding_format");
    if (f && !json_is_null(f)) {
        if (!json_is_string(f)) {
            rc = wrong_type(e, "encoding_format", "a string", f);
            goto out;
        }
        const char *fs = json_string_value(f);
        if (strcmp(fs, "base64") == 0) {
            m->base64 = true;
        } else if (strcmp(fs, "float") != 0) {
            rc = fail(e, "encoding_format", "invalid_value",
                      "'encoding_format' is '%.40s'; "
                      "must be 'float' or 'base64'",
                      fs);
            goto out;
        }
    }

    long long dims = 0;
    bool set = false;
    if ((rc = get_int(o, "dimensions", 1, 65536, &dims, &set, e)) != MC_OK)
        goto out;
    m->dimensions = set ? (int)dims : 0;

    json_t *in = json_object_get(o, "input");
    if (!in) {
        rc = fail(e, "input", "missing_field", "'input' is required");
        goto out;
    }
    size_t n = json_is_array(in) ? json_array_size(in) : 1;
    if (!json_is_array(in) && !json_is_string(in)) {
        rc = wrong_type(e, "input", "a string or an array of strings", in);
        goto out;
    }
    if (n == 0 || n > MC_API_MAX_INPUTS) {
        rc = fail(e, "input", "invalid_value", "'input' has %zu entries, must have 1 to %d", n,
                  MC_API_MAX_INPUTS);
        goto out;
    }
    m->inputs = mc_calloc(n, sizeof(*m->inputs));
    if (!m->inputs) {
        rc = fail(e, "input", "", "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_array(in) ? json_array_get(in, i) : in;
        char param[32];
        snprintf(param, sizeof(param), json_is_array(in) ? "input[%zu]" : "input", i);
        if (!json_is_string(s)) {
            rc = json_is_integer(s) || json_is_array(s) ? fail(e, param, "unsupported_value",
                                                               "'%s': token-id input is not "
                                                               "supported; send text",
                                                               param)
                                                        : wrong_type(e, param, "a string", s);
            goto out;
        }
        if (json_string_length(s) == 0) {
            rc = fail(e, param, "invalid_value", "'%s' is an empty string", param);
            goto out;
        }
        m->inputs[i] = mc_strndup(json_string_value(s), json_string_length(s));
        m->n_inputs = (int)i + 1;
        if (!m->inputs[i]) {
            rc = fail(e, param, "", "out of memory");
            goto out;
        }
    }

out:
    json_decref(o);
    if (rc != MC_OK)
        mc_api_embed_free(m);
    return rc;
}

void mc_api_embed_free(struct mc_api_embed *m) {
    if (!m)
        return;
    mc_free(m->model);
    for (int i = 0; i < m->n_inputs; i++)
        mc_free(m->inputs[i]);
    mc_free(m->inputs);
    memset(m, 0, sizeof(*m));
}
