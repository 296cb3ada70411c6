/* lora_load.c - reading LoRA adapters: GGUF LoRA files and Hugging Face PEFT directories.
 *
 * GGUF (as llama.cpp reads it): general.type must be "adapter", adapter.type "lora",
 * general.architecture the base's; adapter.lora.alpha is optional (absent or 0 means
 * factor 1, llama.cpp's rule). Tensors are "<base>.lora_a" (ne [n_in, r]) and
 * "<base>.lora_b" (ne [r, n_out]); "*_norm.weight" names are skipped as llama.cpp does,
 * base tensors other than the seven layer projections are refused (MC_ENOTSUP).
 *
 * PEFT: adapter_config.json (parsed with jansson; errors give line, column and byte
 * position) must describe a plain LoRA: peft_type LORA, integer r, numeric lora_alpha
 * (required: a missing alpha is an error, never a silent 0), optional use_rslora; DoRA,
 * biases, fan_in_fan_out, rank_pattern/alpha_pattern are refused with MC_ENOTSUP.
 * adapter_model.safetensors holds "base_model.model.model.layers.N.{self_attn,mlp}.
 * X_proj.lora_{A,B}.weight" with A [r, in] and B [out, r], which is already GGUF memory
 * order; q_proj/k_proj lora_B rows are permuted to GGUF's rope order when a llama base is
 * given.
 *
 * Files are only read during the call; the adapter owns F32 copies. Not here: the object
 * itself (lora.c). */
#include "adapter/lora_int.h"

#include "adapter/safetensors.h"
#include "base/mem.h"
#include "model/quant.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h> /* json_loadb, json_object_get */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { MAX_PAIRS = 1 << 16, MAX_CONFIG_BYTES = 1 << 20 };

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    while (s && s[1] == '\0' && s > path) { /* "dir/" -> "dir" */
        const char *t = s - 1;
        while (t > path && *t != '/')
            t--;
        return *t == '/' ? t + 1 : t;
    }
    return s ? s + 1 : path;
}

static void set_name(struct mc_lora_info *info, const char *name) {
    size_t n = strcspn(name, "/");
    if (n >= sizeof(info->name))
        n = sizeof(info->name) - 1;
    memcpy(info->name, name, n);
    info->name[n] = '\0';
}

/* ---- GGUF ------------------------------------------------------------------------ */

static int gguf_str_eq(const struct mc_gguf *g, const char *key, const char *want, const char *file,
                       struct mc_err *err) {
    const char *s;
    uint64_t len;
    int rc = mc_gguf_get_str(g, key, &s, &len, err);
    if (rc == MC_ENOTFOUND)
        return mc_err_set(err, MC_EFORMAT, "%s: missing metadata key %s (not a LoRA adapter?)",
                          file, key);
    if (rc != MC_OK)
        return rc;
    if (len != strlen(want) || memcmp(s, want, len) != 0)
        return mc_err_set(err, MC_EFORMAT, "%s: %s is '%.*s', expected '%s'", file, key,
                          (int)(len > 32 ? 32 : len), s, want);
    return MC_OK;
}

static int gguf_meta(const struct mc_gguf *g, const char *file, const struct mc_lora_base *base,
                     struct mc_lora_info *info, struct mc_err *err) {
    int rc;
    if ((rc = gguf_str_eq(g, "general.type", "adapter", file, err)) ||
        (rc = gguf_str_eq(g, "adapter.type", "lora", file, err)))
        return rc;
    const char *s;
    uint64_t len;
    rc = mc_gguf_get_str(g, "general.architecture", &s, &len, err);
    if (rc == MC_OK) {
        snprintf(info->arch, sizeof(info->arch), "%.*s", (int)(len > 31 ? 31 : len), s);
    } else if (rc != MC_ENOTFOUND) {
        return rc;
    }
    if (base && strcmp(info->arch, base->arch) != 0)
        return mc_err_set(err, MC_EINVAL,
                          "%s: adapter architecture '%s' does not match the "
                          "model's '%s'",
                          file, info->arch, base->arch);
    if (mc_gguf_get_str(g, "general.base_model.0.name", &s, &len, NULL) == MC_OK)
        snprintf(info->base_model, sizeof(info->base_model), "%.*s", (int)(len > 127 ? 127 : len),
                 s);
    float alpha = 0.0f;
    rc = mc_gguf_get_f32(g, "adapter.lora.alpha", &alpha, err);
    if (rc != MC_OK && rc != MC_ENOTFOUND)
        return rc;
    if (!isfinite(alpha) || alpha < 0.0f || alpha > MC_LORA_MAX_ALPHA)
        return mc_err_set(err, MC_EFORMAT, "%s: adapter.lora.alpha %g is not a value in 0..%d",
                          file, alpha, MC_LORA_MAX_ALPHA);
    /* llama.cpp: an absent (read as 0) alpha means "no alpha scaling", factor 1. */
    info->has_alpha = alpha != 0.0f;
    info->alpha = alpha;
    return MC_OK;
}

static bool ends_with(const char *s, size_t len, const char *sfx) {
    size_t n = strlen(sfx);
    return len >= n && memcmp(s + len - n, sfx, n) == 0;
}

/* Finds or adds the pair of base name (len bytes of s). */
static struct lora_src *pair_slot(struct lora_src *src, int32_t *n, const char *s, size_t len) {
    for (int32_t i = 0; i < *n; i++)
        if (strlen(src[i].name) == len && !memcmp(src[i].name, s, len))
            return &src[i];
    struct lora_src *p = &src[(*n)++];
    memset(p, 0, sizeof(*p));
    memcpy(p->name, s, len);
    p->name[len] = '\0';
    p->rank = -1;
    return p;
}

static int gguf_half(struct lora_src *p, const struct mc_gguf_tensor *t, bool is_a,
                     struct mc_err *err) {
    if (t->n_dims != 2)
        return mc_err_set(err, MC_EFORMAT, "%s has %d dimensions, expected 2", t->name, t->n_dims);
    if (t->type != MC_TYPE_F32 && t->type != MC_TYPE_F16 && t->type != MC_TYPE_BF16 &&
        t->type != MC_TYPE_Q8_0)
        return mc_err_set(err, MC_ENOTSUP, "%s has type %s; adapters may be F32, F16, BF16 or Q8_0",
                          t->name, mc_gguf_type_name(t->type));
    if (t->ne[0] < 1 || t->ne[1] < 1 || mc_type_row_size(t->type, t->ne[0]) == 0)
        return mc_err_set(err, MC_EFORMAT, "%s: shape [%lld, %lld] does not fit type %s", t->name,
                          (long long)t->ne[0], (long long)t->ne[1], mc_gguf_type_name(t->type));
    if (is_a) {
        p->a = t->data;
        p->a_type = t->type;
        p->n_in = t->ne[0];
    } else {
        p->b = t->data;
        p->b_type = t->type;
        p->n_out = t->ne[1];
    }
    return MC_OK;
}

/* The rank of each pair: a.ne1 == b.ne0 (rejects the old transposed layout). */
static int gguf_check_pair(const struct mc_gguf *g, struct lora_src *p,
                           const struct mc_lora_base *base, struct mc_err *err) {
    char an[80], bn[80];
    snprintf(an, sizeof(an), "%s.lora_a", p->name);
    snprintf(bn, sizeof(bn), "%s.lora_b", p->name);
    if (!p->a || !p->b)
        return mc_err_set(err, MC_EFORMAT, "%s is missing (each LoRA pair needs both halves)",
                          p->a ? bn : an);
    int64_t ra = mc_gguf_find_tensor(g, an)->ne[1], rb = mc_gguf_find_tensor(g, bn)->ne[0];
    if (ra != rb)
        return mc_err_set(err, MC_EFORMAT,
                          "%s: lora_a has rank %lld but lora_b %lld (a must be "
                          "[n_in, r], b [r, n_out])",
                          p->name, (long long)ra, (long long)rb);
    if (ra > MC_LORA_MAX_RANK)
        return mc_err_set(err, MC_EFORMAT, "%s: rank %lld exceeds the limit %d", p->name,
                          (long long)ra, MC_LORA_MAX_RANK);
    p->rank = (int32_t)ra;
    if (!lora_parse_gguf_name(p->name, strlen(p->name), &p->layer, &p->proj))
        return mc_err_set(err, MC_ENOTSUP,
                          "%s: only the layer projections attn_q/k/v/output and ffn_gate/up/down "
                          "can be adapted",
                          p->name);
    return base ? lora_check_pair(base, p->name, p->layer, p->proj, p->n_in, p->n_out, err) : MC_OK;
}

static int gguf_collect(const struct mc_gguf *g, const struct mc_lora_base *base,
                        struct lora_src *src, int32_t *n, struct mc_err *err) {
    int64_t nt = mc_gguf_n_tensors(g);
    for (int64_t i = 0; i < nt; i++) {
        const struct mc_gguf_tensor *t = mc_gguf_tensor(g, i);
        size_t len = strlen(t->name);
        bool is_a = ends_with(t->name, len, ".lora_a");
        if (!is_a && !ends_with(t->name, len, ".lora_b")) {
            if (ends_with(t->name, len, "_norm.weight"))
                continue;
            return mc_err_set(err, MC_EFORMAT, "%s: tensor name must end in .lora_a or .lora_b",
                              t->name);
        }
        if (len - 7 >= sizeof(src->name))
            return mc_err_set(err, MC_ENOTSUP, "%.60s: base tensor name too long", t->name);
        struct lora_src *p = pair_slot(src, n, t->name, len - 7);
        if (*n > MAX_PAIRS)
            return mc_err_set(err, MC_EFORMAT, "more than %d adapter pairs", MAX_PAIRS);
        if ((is_a && p->a) || (!is_a && p->b))
            return mc_err_set(err, MC_EFORMAT, "%s appears twice", t->name);
        int rc = gguf_half(p, t, is_a, err);
        if (rc != MC_OK)
            return rc;
    }
    for (int32_t i = 0; i < *n; i++) {
        int rc = gguf_check_pair(g, &src[i], base, err);
        if (rc != MC_OK)
            return rc;
    }
    return MC_OK;
}

static int gguf_load(struct mc_gguf *g, const char *name, const struct mc_lora_base *base,
                     struct mc_lora **out, struct mc_err *err) {
    struct mc_lora_info info = {.format = MC_LORA_FORMAT_GGUF};
    set_name(&info, name);
    int rc = gguf_meta(g, info.name, base, &info, err);
    if (rc != MC_OK)
        return rc;
    int64_t nt = mc_gguf_n_tensors(g);
    if (nt > 2 * MAX_PAIRS)
        return mc_err_set(err, MC_EFORMAT, "%s: %lld tensors exceed the limit %d", info.name,
                          (long long)nt, 2 * MAX_PAIRS);
    struct lora_src *src = mc_calloc((size_t)nt + 1, sizeof(*src));
    if (!src)
        return mc_err_set(err, MC_ENOMEM, "%s: allocation failed", info.name);
    int32_t n = 0;
    rc = gguf_collect(g, base, src, &n, err);
    if (rc != MC_OK)
        mc_err_prefix(err, "%s", info.name);
    else
        rc = lora_build(&info, base, src, n, out, err);
    mc_free(src);
    return rc;
}

int mc_lora_open_gguf_buffer(const void *buf, size_t size, const char *name,
                             const struct mc_lora_base *base, struct mc_lora **out,
                             struct mc_err *err) {
    *out = NULL;
    struct mc_gguf *g;
    int rc = mc_gguf_open_buffer(buf, size, name, &g, err);
    if (rc != MC_OK)
        return rc;
    rc = gguf_load(g, name, base, out, err);
    mc_gguf_close(g);
    return rc;
}

/* ---- PEFT ------------------------------------------------------------------------ */

static const char *const hf_proj[MC_PROJ_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

static int cfg_error(struct mc_err *err, int code, const char *name, const char *what) {
    return mc_err_set(err, code, "%s/adapter_config.json: %s", name, what);
}

/* A JSON value that must be absent, false/null/"none" or an empty object. */
static bool cfg_unset(const json_t *v) {
    return !v || json_is_false(v) || json_is_null(v) ||
           (json_is_object(v) && json_object_size(v) == 0) ||
           (json_is_string(v) && !strcmp(json_string_value(v), "none"));
}

static int peft_config(const char *json, size_t len, const char *name, struct mc_lora_info *info,
                       int32_t *rank, struct mc_err *err) {
    if (len > MAX_CONFIG_BYTES)
        return cfg_error(err, MC_EFORMAT, name, "larger than 1 MiB");
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return mc_err_set(err, MC_EFORMAT,
                          "%s/adapter_config.json: line %d column %d (byte %d): %.120s", name,
                          je.line, je.column, je.position, je.text);
    int rc = MC_OK;
    const json_t *v;
    const char *unsup[] = {"use_dora",      "fan_in_fan_out",  "rank_pattern",
                           "alpha_pattern", "modules_to_save", "layers_to_transform"};
    if (!json_is_object(root)) {
        rc = cfg_error(err, MC_EFORMAT, name, "top level is not a JSON object");
        goto out;
    }
    v = json_object_get(root, "peft_type");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "LORA") != 0)) {
        rc = cfg_error(err, MC_ENOTSUP, name, "peft_type is not \"LORA\"");
        goto out;
    }
    v = json_object_get(root, "r");
    if (!v) {
        rc = cfg_error(err, MC_EFORMAT, name, "\"r\" (the rank) is missing");
        goto out;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 1 ||
        json_integer_value(v) > MC_LORA_MAX_RANK) {
        rc = mc_err_set(err, MC_EFORMAT,
                        "%s/adapter_config.json: \"r\" must be an integer in "
                        "1..%d",
                        name, MC_LORA_MAX_RANK);
        goto out;
    }
    *rank = (int32_t)json_integer_value(v);
    v = json_object_get(root, "lora_alpha");
    if (!json_is_number(v) || !isfinite(json_number_value(v)) || json_number_value(v) <= 0 ||
        json_number_value(v) > MC_LORA_MAX_ALPHA) {
        rc = cfg_error(err, MC_EFORMAT, name,
                       v ? "\"lora_alpha\" must be a positive number up to 65536"
                         : "\"lora_alpha\" is missing (the scale alpha/r cannot be computed)");
        goto out;
    }
    info->alpha = (float)json_number_value(v);
    info->has_alpha = true;
    v = json_object_get(root, "use_rslora");
    if (v && !json_is_boolean(v)) {
        rc = cfg_error(err, MC_EFORMAT, name, "\"use_rslora\" must be true or false");
        goto out;
    }
    info->rslora = v && json_is_true(v);
    for (size_t i = 0; i < sizeof(unsup) / sizeof(unsup[0]); i++)
        if (!cfg_unset(json_object_get(root, unsup[i]))) {
            rc = mc_err_set(err, MC_ENOTSUP, "%s/adapter_config.json: \"%s\" is not supported",
                            name, unsup[i]);
            goto out;
        }
    v = json_object_get(root, "bias");
    if (v && !cfg_unset(v)) {
        rc = cfg_error(err, MC_ENOTSUP, name, "\"bias\" other than \"none\" is not supported");
        goto out;
    }
    v = json_object_get(root, "base_model_name_or_path");
    if (json_is_string(v))
        snprintf(info->base_model, sizeof(info->base_model), "%s", json_string_value(v));
out:
    json_decref(root);
    return rc;
}

/* Parses "base_model.model.model.layers.N.<hf_proj>.lora_X.weight". */
static bool peft_parse(const char *s, int32_t *layer, enum mc_proj *proj, bool *is_a) {
    static const char pre[] = "base_model.model.model.layers.";
    if (strncmp(s, pre, sizeof(pre) - 1) != 0)
        return false;
    s += sizeof(pre) - 1;
    char *end;
    errno = 0;
    long l = strtol(s, &end, 10);
    if (end == s || *end != '.' || l < 0 || l > 1000000 || errno || (s[0] == '0' && end - s > 1))
        return false;
    s = end + 1;
    for (int p = 0; p < MC_PROJ_COUNT; p++) {
        size_t n = strlen(hf_proj[p]);
        if (strncmp(s, hf_proj[p], n) != 0)
            continue;
        const char *r = s + n;
        if (strcmp(r, ".lora_A.weight") && strcmp(r, ".lora_B.weight"))
            return false;
        *is_a = r[6] == 'A';
        *layer = (int32_t)l;
        *proj = (enum mc_proj)p;
        return true;
    }
    return false;
}

static enum mc_type st_type(enum mc_safetensors_dtype d) {
    return d == MC_SAFETENSORS_F32 ? MC_TYPE_F32
                                   : (d == MC_SAFETENSORS_F16 ? MC_TYPE_F16 : MC_TYPE_BF16);
}

static int peft_half(struct lora_src *p, const struct mc_safetensors_tensor *t, bool is_a,
                     int32_t rank, struct mc_err *err) {
    if (t->n_dims != 2)
        return mc_err_set(err, MC_EFORMAT, "%s has %d dimensions, expected 2", t->name, t->n_dims);
    int64_t r = is_a ? t->shape[0] : t->shape[1], other = is_a ? t->shape[1] : t->shape[0];
    if (r != rank)
        return mc_err_set(err, MC_EFORMAT,
                          "%s has shape [%lld, %lld]: rank %lld, but the config "
                          "says r = %d",
                          t->name, (long long)t->shape[0], (long long)t->shape[1], (long long)r,
                          rank);
    if (other < 1)
        return mc_err_set(err, MC_EFORMAT, "%s has an empty dimension", t->name);
    if ((is_a ? p->a : p->b) != NULL)
        return mc_err_set(err, MC_EFORMAT, "%s appears twice", t->name);
    if (is_a) {
        p->a = t->data;
        p->a_type = st_type(t->dtype);
        p->n_in = other;
    } else {
        p->b = t->data;
        p->b_type = st_type(t->dtype);
        p->n_out = other;
    }
    return MC_OK;
}

static int peft_collect(const struct mc_safetensors *st, const struct mc_lora_base *base,
                        int32_t rank, struct lora_src *src, int32_t *n, struct mc_err *err) {
    int64_t nt = mc_safetensors_n_tensors(st);
    for (int64_t i = 0; i < nt; i++) {
        const struct mc_safetensors_tensor *t = mc_safetensors_tensor(st, i);
        int32_t layer;
        enum mc_proj proj;
        bool is_a;
        if (!peft_parse(t->name, &layer, &proj, &is_a))
            return mc_err_set(err, MC_ENOTSUP,
                              "%.100s: not a lora_A/lora_B weight of a q/k/v/o/gate/up/down "
                              "projection of model.layers.N",
                              t->name);
        char gname[48];
        snprintf(gname, sizeof(gname), "blk.%d.%s.weight", layer, mc_lora_proj_gguf(proj));
        struct lora_src *p = pair_slot(src, n, gname, strlen(gname));
        p->layer = layer;
        p->proj = proj;
        p->rank = rank;
        int rc = peft_half(p, t, is_a, rank, err);
        if (rc != MC_OK)
            return rc;
    }
    for (int32_t i = 0; i < *n; i++) {
        struct lora_src *p = &src[i];
        if (!p->a || !p->b)
            return mc_err_set(err, MC_EFORMAT, "%s: lora_%c of this projection is missing", p->name,
                              p->a ? 'B' : 'A');
        if (!base)
            continue;
        int rc = lora_check_pair(base, p->name, p->layer, p->proj, p->n_in, p->n_out, err);
        if (rc != MC_OK)
            return rc;
        /* Only llama's rope (adjacent pairs) needs the HF -> GGUF row permutation. */
        if ((p->proj == MC_PROJ_Q || p->proj == MC_PROJ_K) && !strcmp(base->arch, "llama")) {
            p->permute_b = true;
            p->n_heads = p->proj == MC_PROJ_Q ? base->n_head : base->n_head_kv;
        }
    }
    return MC_OK;
}

int mc_lora_open_peft_buffers(const char *config_json, size_t config_len, const void *stbuf,
                              size_t st_size, const char *name, const struct mc_lora_base *base,
                              struct mc_lora **out, struct mc_err *err) {
    *out = NULL;
    struct mc_lora_info info = {.format = MC_LORA_FORMAT_PEFT};
    set_name(&info, name);
    int32_t rank = 0;
    int rc = peft_config(config_json, config_len, info.name, &info, &rank, err);
    if (rc != MC_OK)
        return rc;
    if (base)
        snprintf(info.arch, sizeof(info.arch), "%s", base->arch);
    struct mc_safetensors *st;
    if ((rc = mc_safetensors_open_buffer(stbuf, st_size, "adapter_model.safetensors", &st, err)))
        return mc_err_prefix(err, "%s", info.name);
    int64_t nt = mc_safetensors_n_tensors(st);
    struct lora_src *src = nt <= 2 * MAX_PAIRS ? mc_calloc((size_t)nt + 1, sizeof(*src)) : NULL;
    if (!src) {
        mc_safetensors_close(st);
        return mc_err_set(err, MC_ENOMEM, "%s: %lld tensors: allocation failed or over the limit",
                          info.name, (long long)nt);
    }
    int32_t n = 0;
    rc = peft_collect(st, base, rank, src, &n, err);
    if (rc != MC_OK) {
        mc_err_prefix(err, "%s/adapter_model.safetensors", info.name);
    } else {
        bool has_qk = false;
        for (int32_t i = 0; i < n; i++)
            has_qk |= src[i].proj == MC_PROJ_Q || src[i].proj == MC_PROJ_K;
        info.hf_row_order = !base && has_qk;
        rc = lora_build(&info, base, src, n, out, err);
    }
    mc_free(src);
    mc_safetensors_close(st);
    return rc;
}

/* ---- Files ----------------------------------------------------------------------- */

/* Reads a whole (small) file into a new buffer. */
static int read_file(const char *path, size_t cap, char **out, size_t *len, struct mc_err *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mc_err_set(err, MC_EIO, "%s: %s", path, strerror(errno));
    struct stat sb;
    int rc = MC_OK;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (size_t)sb.st_size > cap) {
        rc = mc_err_set(err, MC_EIO, "%s: not a regular file of at most %zu bytes", path, cap);
        goto out_close;
    }
    *len = (size_t)sb.st_size;
    *out = mc_malloc(*len + 1);
    if (!*out) {
        rc = mc_err_set(err, MC_ENOMEM, "%s: allocation failed", path);
        goto out_close;
    }
    size_t got = 0;
    while (got < *len) {
        ssize_t r = read(fd, *out + got, *len - got);
        if (r <= 0) {
            rc = mc_err_set(err, MC_EIO, "%s: read failed: %s", path, r ? strerror(errno) : "EOF");
            mc_free(*out);
            *out = NULL;
            goto out_close;
        }
        got += (size_t)r;
    }
    (*out)[*len] = '\0';
out_close:
    close(fd);
    return rc;
}

static int open_peft_dir(const char *dir, const struct mc_lora_base *base, struct mc_lora **out,
                         struct mc_err *err) {
    char path[4096];
    char *cfg = NULL, *st = NULL;
    size_t cfg_len = 0, st_len = 0;
    snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
    int rc = read_file(path, MAX_CONFIG_BYTES, &cfg, &cfg_len, err);
    if (rc == MC_OK) {
        snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
        rc = read_file(path, (size_t)1 << 34, &st, &st_len, err);
    }
    if (rc == MC_OK)
        rc = mc_lora_open_peft_buffers(cfg, cfg_len, st, st_len, base_name(dir), base, out, err);
    mc_free(cfg);
    mc_free(st);
    return rc;
}

int mc_lora_open(const char *path, const struct mc_lora_base *base, struct mc_lora **out,
                 struct mc_err *err) {
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return mc_err_set(err, MC_EIO, "%s: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode))
        return open_peft_dir(path, base, out, err);
    struct mc_gguf *g;
    int rc = mc_gguf_open(path, &g, err);
    if (rc != MC_OK)
        return rc;
    rc = gguf_load(g, base_name(path), base, out, err);
    mc_gguf_close(g);
    return rc;
}
