/* front.c - fronts as values: JSON in and out, range checks, and prompt templates.
 *
 * A front is stored as the JSON text mc_front_to_json writes (sealed by the store, see
 * tenant.c); mc_front_from_json reads it back and also parses what an operator sends.
 * Parsing is strict: unknown fields and wrong types are errors, so a typo never silently
 * drops a setting.
 *
 * Templates: "{{name}}" is a variable, "{{{{" a literal "{{". One left-to-right scan,
 * used both to check a template when a front is saved and to render it per request;
 * values are copied verbatim and never scanned again, so a tenant's user cannot inject a
 * variable reference through a value. */
#include "tenant/tenant.h"

#include "base/mem.h"
#include "rag/retrieve.h" /* mc_kb_retrieval_parse: a front's retrieval settings */

#include <jansson.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#define RENDER_MAX   ((size_t)64 << 20) /* bytes of a rendered template */
#define VAR_NAME_MAX 64

/* ---------------------------------------------------------------------------------------
 * Init and free */

void mc_front_init(struct mc_front *f) {
    memset(f, 0, sizeof(*f));
    f->temperature = -1;
    f->top_p = -1;
    f->top_k = -1;
    f->min_p = -1;
    f->repeat_penalty = -1;
    f->presence_penalty = NAN;
    f->frequency_penalty = NAN;
    f->seed = -1;
}

void mc_front_deinit(struct mc_front *f) {
    if (!f)
        return;
    mc_free(f->system_prompt);
    mc_free(f->template);
    for (size_t i = 0; i < f->n_allowed_models; i++)
        mc_free(f->allowed_models[i]);
    mc_free(f->allowed_models);
    mc_free(f->retrieval);
    mc_front_init(f);
}

/* ---------------------------------------------------------------------------------------
 * Templates */

struct sbuf {
    char *p;
    size_t n, cap;
};

static int sbuf_add(struct sbuf *b, const char *s, size_t n, struct mc_err *err) {
    if (b->n + n + 1 > RENDER_MAX)
        return mc_err_set(err, MC_EINVAL, "rendered template exceeds %zu bytes", RENDER_MAX);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = mc_realloc(b->p, cap);
        if (!p)
            return mc_err_set(err, MC_ENOMEM, "cannot grow a rendered template to %zu bytes", cap);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return MC_OK;
}

static int is_name_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int is_name_char(char c) {
    return is_name_start(c) || (c >= '0' && c <= '9');
}

/* Parses the reference starting at tmpl[i] == "{{". On success name and n_name give the
 * name inside tmpl and *end is the index just past the closing "}}". */
static int parse_ref(const char *tmpl, size_t i, const char **name, size_t *n_name, size_t *end,
                     struct mc_err *err) {
    size_t j = i + 2;
    while (tmpl[j] == ' ')
        j++;
    size_t start = j;
    if (!is_name_start(tmpl[j]))
        return mc_err_set(err, MC_EINVAL,
                          "template: '{{' at byte %zu does not start a variable (write '{{{{' "
                          "for a literal '{{')",
                          i);
    while (is_name_char(tmpl[j]))
        j++;
    size_t stop = j;
    while (tmpl[j] == ' ')
        j++;
    if (tmpl[j] != '}' || tmpl[j + 1] != '}')
        return mc_err_set(err, MC_EINVAL, "template: variable at byte %zu is not closed by '}}'",
                          i);
    if (stop - start > VAR_NAME_MAX)
        return mc_err_set(err, MC_EINVAL, "template: variable name at byte %zu exceeds %d bytes", i,
                          VAR_NAME_MAX);
    *name = tmpl + start;
    *n_name = stop - start;
    *end = j + 2;
    return MC_OK;
}

const char *const mc_front_vars[MC_FRONT_N_VARS] = {"input", "tenant", "date"};

/* The value of the variable name (n_name bytes), or NULL when it is not defined. values
 * may be NULL when only the names matter. */
static const char *lookup_var(const char *name, size_t n_name, const char *const *names,
                              const char *const *values, size_t n_vars) {
    for (size_t k = 0; k < n_vars; k++)
        if (strlen(names[k]) == n_name && !memcmp(names[k], name, n_name))
            return values && values[k] ? values[k] : "";
    return NULL;
}

/* The error for a reference to a variable not in names: names the variable, its offset
 * and the variables there are. */
static int undefined_var(const char *name, size_t n_name, size_t at, const char *const *names,
                         size_t n_vars, struct mc_err *err) {
    char known[160] = "";
    size_t len = 0;
    for (size_t k = 0; k < n_vars && len < sizeof(known); k++) {
        const char *sep = k == 0 ? "" : k + 1 == n_vars ? " or " : ", ";
        len += (size_t)snprintf(known + len, sizeof(known) - len, "%s{{%s}}", sep, names[k]);
    }
    return mc_err_set(err, MC_EINVAL, "template variable '%.*s' at byte %zu is not defined; use %s",
                      (int)n_name, name, at, n_vars ? known : "no variables");
}

/* Scans tmpl; with out non-NULL renders into it, else only checks the syntax and, when
 * names is non-NULL, that every variable is one of them. */
static int scan_template(const char *tmpl, const char *const *names, const char *const *values,
                         size_t n_vars, struct sbuf *out, struct mc_err *err) {
    size_t i = 0, lit = 0; /* lit: start of the literal text not yet copied */
    while (tmpl[i]) {
        if (tmpl[i] != '{' || tmpl[i + 1] != '{') {
            i++;
            continue;
        }
        int rc = out ? sbuf_add(out, tmpl + lit, i - lit, err) : MC_OK;
        if (rc != MC_OK)
            return rc;
        if (tmpl[i + 2] == '{' && tmpl[i + 3] == '{') {
            rc = out ? sbuf_add(out, "{{", 2, err) : MC_OK;
            if (rc != MC_OK)
                return rc;
            lit = i = i + 4;
            continue;
        }
        const char *name = NULL;
        size_t n_name = 0, end = 0;
        rc = parse_ref(tmpl, i, &name, &n_name, &end, err);
        if (rc != MC_OK)
            return rc;
        const char *v = names ? lookup_var(name, n_name, names, values, n_vars) : "";
        if (!v)
            return undefined_var(name, n_name, i, names, n_vars, err);
        if (out) {
            rc = sbuf_add(out, v, strlen(v), err);
            if (rc != MC_OK)
                return rc;
        }
        lit = i = end;
    }
    return out ? sbuf_add(out, tmpl + lit, i - lit, err) : MC_OK;
}

int mc_front_render(const char *tmpl, const char *const *names, const char *const *values, size_t n,
                    char **out, struct mc_err *err) {
    struct sbuf b = {0};
    *out = NULL;
    int rc = sbuf_add(&b, "", 0, err);
    if (rc == MC_OK)
        rc = scan_template(tmpl, names, values, n, &b, err);
    if (rc != MC_OK) {
        mc_free(b.p);
        return rc;
    }
    *out = b.p;
    return MC_OK;
}

/* ---------------------------------------------------------------------------------------
 * Checks */

static int check_range(const char *name, double v, double lo, double hi, struct mc_err *err) {
    if (!(v >= lo && v <= hi))
        return mc_err_set(err, MC_EINVAL, "front: %s = %g is outside %g..%g", name, v, lo, hi);
    return MC_OK;
}

static int check_text(const char *name, const char *s, struct mc_err *err) {
    if (s && strlen(s) > MC_FRONT_TEXT_MAX)
        return mc_err_set(err, MC_EINVAL, "front: %s is %zu bytes, at most %d", name, strlen(s),
                          MC_FRONT_TEXT_MAX);
    return MC_OK;
}

/* mc_front_check, with the template's variable names checked only when check_vars. */
static int check_front(const struct mc_front *f, bool check_vars, struct mc_err *err) {
    int rc = check_text("system_prompt", f->system_prompt, err);
    if (rc == MC_OK)
        rc = check_text("template", f->template, err);
    if (rc == MC_OK && f->template) {
        const char *const *names = check_vars ? mc_front_vars : NULL;
        rc = scan_template(f->template, names, NULL, MC_FRONT_N_VARS, NULL, err);
        if (rc != MC_OK)
            mc_err_prefix(err, "front");
    }
    if (rc == MC_OK && f->temperature >= 0)
        rc = check_range("temperature", f->temperature, 0, 5, err);
    if (rc == MC_OK && f->top_p >= 0)
        rc = check_range("top_p", f->top_p, 0, 1, err);
    if (rc == MC_OK && f->top_k >= 0)
        rc = check_range("top_k", f->top_k, 0, 1e6, err);
    if (rc == MC_OK && f->min_p >= 0)
        rc = check_range("min_p", f->min_p, 0, 1, err);
    if (rc == MC_OK && f->repeat_penalty >= 0)
        rc = check_range("repeat_penalty", f->repeat_penalty, 0, 10, err);
    if (rc == MC_OK && !isnan(f->presence_penalty))
        rc = check_range("presence_penalty", f->presence_penalty, -2, 2, err);
    if (rc == MC_OK && !isnan(f->frequency_penalty))
        rc = check_range("frequency_penalty", f->frequency_penalty, -2, 2, err);
    if (rc == MC_OK)
        rc = check_range("max_tokens", f->max_tokens, 0, 1e7, err);
    if (rc == MC_OK)
        rc = check_range("context_limit", f->context_limit, 0, 1e7, err);
    if (rc == MC_OK && f->n_allowed_models > MC_FRONT_MAX_MODELS)
        rc = mc_err_set(err, MC_EINVAL, "front: allowed_models has %zu names, at most %d",
                        f->n_allowed_models, MC_FRONT_MAX_MODELS);
    if (rc == MC_OK && f->retrieval) {
        /* The same parser the server uses per request, so a front it would refuse
         * there is refused here, when it is set. */
        struct mc_kb_retrieval kr;
        rc = mc_kb_retrieval_parse(f->retrieval, strlen(f->retrieval), &kr, err);
        mc_kb_retrieval_deinit(&kr);
        if (rc != MC_OK)
            mc_err_prefix(err, "front");
    }
    for (size_t i = 0; rc == MC_OK && i < f->n_allowed_models; i++) {
        const char *m = f->allowed_models[i];
        if (!m || !*m || strlen(m) > 256)
            rc = mc_err_set(err, MC_EINVAL,
                            "front: allowed_models[%zu] is empty or longer "
                            "than 256 bytes",
                            i);
    }
    return rc;
}

int mc_front_check(const struct mc_front *f, struct mc_err *err) {
    return check_front(f, true, err);
}

bool mc_front_allows_model(const struct mc_front *f, const char *model) {
    if (f->n_allowed_models == 0)
        return true;
    for (size_t i = 0; i < f->n_allowed_models; i++)
        if (strcmp(f->allowed_models[i], model) == 0)
            return true;
    return false;
}

/* ---------------------------------------------------------------------------------------
 * JSON */

static int json_str(json_t *v, const char *name, char **out, struct mc_err *err) {
    if (!json_is_string(v))
        return mc_err_set(err, MC_EINVAL, "front: %s must be a string", name);
    *out = mc_strndup(json_string_value(v), json_string_length(v));
    if (!*out)
        return mc_err_set(err, MC_ENOMEM, "front: %s: out of memory", name);
    if (strlen(*out) != json_string_length(v))
        return mc_err_set(err, MC_EINVAL, "front: %s contains a NUL character", name);
    return MC_OK;
}

static int json_num(json_t *v, const char *name, double *out, struct mc_err *err) {
    if (!json_is_number(v))
        return mc_err_set(err, MC_EINVAL, "front: sampling.%s must be a number", name);
    *out = json_number_value(v);
    return MC_OK;
}

static int json_int(json_t *v, const char *name, int64_t lo, int64_t hi, int64_t *out,
                    struct mc_err *err) {
    if (!json_is_integer(v))
        return mc_err_set(err, MC_EINVAL, "front: %s must be an integer", name);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return mc_err_set(err, MC_EINVAL, "front: %s = %lld is outside %lld..%lld", name,
                          (long long)x, (long long)lo, (long long)hi);
    *out = x;
    return MC_OK;
}

static int parse_sampling(json_t *s, struct mc_front *f, struct mc_err *err) {
    if (!json_is_object(s))
        return mc_err_set(err, MC_EINVAL, "front: sampling must be an object");
    const char *key;
    json_t *v;
    int rc = MC_OK;
    json_object_foreach(s, key, v) {
        int64_t i64 = 0;
        if (rc != MC_OK)
            break;
        if (!strcmp(key, "temperature"))
            rc = json_num(v, key, &f->temperature, err);
        else if (!strcmp(key, "top_p"))
            rc = json_num(v, key, &f->top_p, err);
        else if (!strcmp(key, "min_p"))
            rc = json_num(v, key, &f->min_p, err);
        else if (!strcmp(key, "repeat_penalty"))
            rc = json_num(v, key, &f->repeat_penalty, err);
        else if (!strcmp(key, "presence_penalty"))
            rc = json_num(v, key, &f->presence_penalty, err);
        else if (!strcmp(key, "frequency_penalty"))
            rc = json_num(v, key, &f->frequency_penalty, err);
        else if (!strcmp(key, "top_k")) {
            rc = json_int(v, "sampling.top_k", 0, 1000000, &i64, err);
            f->top_k = (int)i64;
        } else if (!strcmp(key, "seed")) {
            rc = json_int(v, "sampling.seed", 0, INT64_MAX, &i64, err);
            f->seed = i64;
        } else
            rc = mc_err_set(err, MC_EINVAL, "front: unknown field sampling.%s", key);
        /* A number given explicitly must be in range even where "unset" is negative. */
        if (rc == MC_OK && json_is_number(v) && json_number_value(v) < 0 &&
            strcmp(key, "presence_penalty") && strcmp(key, "frequency_penalty"))
            rc = mc_err_set(err, MC_EINVAL, "front: sampling.%s = %g must not be negative", key,
                            json_number_value(v));
    }
    return rc;
}

static int parse_models(json_t *a, struct mc_front *f, struct mc_err *err) {
    if (!json_is_array(a))
        return mc_err_set(err, MC_EINVAL, "front: allowed_models must be an array of strings");
    size_t n = json_array_size(a);
    if (n > MC_FRONT_MAX_MODELS)
        return mc_err_set(err, MC_EINVAL, "front: allowed_models has %zu names, at most %d", n,
                          MC_FRONT_MAX_MODELS);
    f->allowed_models = mc_calloc(n ? n : 1, sizeof(char *));
    if (!f->allowed_models)
        return mc_err_set(err, MC_ENOMEM, "front: out of memory");
    for (size_t i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof(name), "allowed_models[%zu]", i);
        int rc = json_str(json_array_get(a, i), name, &f->allowed_models[i], err);
        if (f->allowed_models[i])
            f->n_allowed_models = i + 1;
        if (rc != MC_OK)
            return rc;
    }
    return MC_OK;
}

static int parse_field(const char *key, json_t *v, struct mc_front *f, struct mc_err *err) {
    int64_t i64 = 0;
    int rc;
    if (!strcmp(key, "system_prompt"))
        return json_is_null(v) ? MC_OK : json_str(v, key, &f->system_prompt, err);
    if (!strcmp(key, "template"))
        return json_is_null(v) ? MC_OK : json_str(v, key, &f->template, err);
    if (!strcmp(key, "sampling"))
        return parse_sampling(v, f, err);
    if (!strcmp(key, "allowed_models"))
        return parse_models(v, f, err);
    if (!strcmp(key, "max_tokens")) {
        rc = json_int(v, key, 0, 10000000, &i64, err);
        f->max_tokens = (int)i64;
        return rc;
    }
    if (!strcmp(key, "context_limit")) {
        rc = json_int(v, key, 0, 10000000, &i64, err);
        f->context_limit = (int)i64;
        return rc;
    }
    if (!strcmp(key, "retrieval")) {
        if (json_is_null(v))
            return MC_OK;
        if (!json_is_object(v))
            return mc_err_set(err, MC_EINVAL, "front: retrieval must be an object");
        char *text = json_dumps(v, JSON_COMPACT);
        f->retrieval = text ? mc_strdup(text) : NULL;
        free(text);
        return f->retrieval ? MC_OK : mc_err_set(err, MC_ENOMEM, "front: out of memory");
    }
    return mc_err_set(err, MC_EINVAL, "front: unknown field '%s'", key);
}

int mc_front_from_json(const char *json, size_t n, struct mc_front *out, struct mc_err *err) {
    mc_front_init(out);
    json_error_t je;
    json_t *root = json_loadb(json, n, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return mc_err_set(err, MC_EINVAL,
                          "front: invalid JSON at byte %d (line %d, column "
                          "%d): %s",
                          je.position, je.line, je.column, je.text);
    int rc = MC_OK;
    if (!json_is_object(root))
        rc = mc_err_set(err, MC_EINVAL, "front: must be a JSON object");
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (rc != MC_OK)
            break;
        rc = parse_field(key, v, out, err);
    }
    json_decref(root);
    /* Only the syntax: a front stored before variable names were checked must still load
     * (its requests then fail with the undefined variable's name). Saving checks names. */
    if (rc == MC_OK)
        rc = check_front(out, false, err);
    return rc;
}

int mc_front_to_json(const struct mc_front *f, char **out, struct mc_err *err) {
    *out = NULL;
    json_t *root = json_object();
    json_t *s = json_object();
    if (f->system_prompt &&
        json_object_set_new(root, "system_prompt", json_string(f->system_prompt)) != 0)
        goto out_utf8;
    if (f->template && json_object_set_new(root, "template", json_string(f->template)) != 0)
        goto out_utf8;
    if (f->temperature >= 0)
        json_object_set_new(s, "temperature", json_real(f->temperature));
    if (f->top_p >= 0)
        json_object_set_new(s, "top_p", json_real(f->top_p));
    if (f->top_k >= 0)
        json_object_set_new(s, "top_k", json_integer(f->top_k));
    if (f->min_p >= 0)
        json_object_set_new(s, "min_p", json_real(f->min_p));
    if (f->repeat_penalty >= 0)
        json_object_set_new(s, "repeat_penalty", json_real(f->repeat_penalty));
    if (!isnan(f->presence_penalty))
        json_object_set_new(s, "presence_penalty", json_real(f->presence_penalty));
    if (!isnan(f->frequency_penalty))
        json_object_set_new(s, "frequency_penalty", json_real(f->frequency_penalty));
    if (f->seed >= 0)
        json_object_set_new(s, "seed", json_integer(f->seed));
    if (json_object_size(s))
        json_object_set(root, "sampling", s);
    json_decref(s);
    if (f->max_tokens)
        json_object_set_new(root, "max_tokens", json_integer(f->max_tokens));
    if (f->context_limit)
        json_object_set_new(root, "context_limit", json_integer(f->context_limit));
    if (f->n_allowed_models) {
        json_t *a = json_array();
        json_object_set_new(root, "allowed_models", a);
        for (size_t i = 0; i < f->n_allowed_models; i++)
            if (json_array_append_new(a, json_string(f->allowed_models[i])) != 0)
                goto out_utf8;
    }
    if (f->retrieval) {
        json_t *r = json_loads(f->retrieval, 0, NULL);
        if (!json_is_object(r)) {
            json_decref(r);
            json_decref(root);
            return mc_err_set(err, MC_EINVAL, "front: retrieval is not a JSON object");
        }
        json_object_set_new(root, "retrieval", r);
    }
    /* 15 significant digits print 0.7 as 0.7, not 0.69999999999999996. */
    char *text = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(15));
    json_decref(root);
    if (!text)
        return mc_err_set(err, MC_ENOMEM, "front: out of memory writing JSON");
    *out = mc_strdup(text);
    free(text);
    if (!*out)
        return mc_err_set(err, MC_ENOMEM, "front: out of memory");
    return MC_OK;

out_utf8:
    json_decref(root);
    return mc_err_set(err, MC_EINVAL, "front: a text field is not valid UTF-8");
}
