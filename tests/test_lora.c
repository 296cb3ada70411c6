/* test_lora.c - LoRA adapters: the reference outputs of llama.cpp with the GGUF adapter
 * and its PEFT twin, the rope permutation of PEFT q and k lora_B rows, adapter == merged
 * model, 16 different adapters in one batch == each alone, scale arithmetic (alpha/r,
 * rsLoRA, request scale, no alpha), errors that name the tensor, the residency cache
 * (LRU order, pinning, in-use protection, versions) and the lora command lines.
 *
 * Reference: ../shared/reference/stories260K-lora-r4.greedy.json (llama.cpp, F32 KV);
 * greedy ids must match exactly, logits within 1e-3 (values 5..20; the reference README
 * expects ~1e-4 relative). */
#include "test_util.h"

#include "adapter/lora.h"
#include "adapter/lora_int.h"
#include "adapter/safetensors.h"
#include "base/mem.h"
#include "model/gguf.h"
#include "model/model.h"
#include "model/quant.h"
#include "model/sample.h"
#include "model/tokenizer.h"

#include <jansson.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h> /* WIFEXITED */
#include <unistd.h>

#define REF_TOL 1e-3

static struct mc_model *model;
static struct mc_lora_base base;

static const char *shared(const char *rel) {
    static char buf[8][512];
    static int i;
    i = (i + 1) % 8;
    return test_shared_path(buf[i], sizeof(buf[i]), rel);
}

static int setup(void **state) {
    (void)state;
    struct mc_err err = {0};
    if (mc_model_load(shared("models/stories260K.gguf"), &model, &err) != MC_OK) {
        fprintf(stderr, "load: %s\n", err.msg);
        return -1;
    }
    mc_lora_base_from_model(model, &base);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    mc_model_free(model);
    return 0;
}

static struct mc_lora *open_ok(const char *path, const struct mc_lora_base *b) {
    struct mc_lora *l = NULL;
    struct mc_err err = {0};
    if (mc_lora_open(path, b, &l, &err) != MC_OK)
        fail_msg("open %s: %s", path, err.msg);
    return l;
}

/* ---- Running sequences ------------------------------------------------------------ */

struct seq {
    struct mc_kv *kv;
    const struct mc_lora *l;
    float scale;
    float *logits; /* (n_vocab) of the last step */
};

static void seq_init(struct seq *s, const struct mc_lora *l, float scale) {
    struct mc_err err = {0};
    s->l = l;
    s->scale = scale;
    assert_int_equal(mc_kv_create(model, 256, &s->kv, &err), MC_OK);
    s->logits = mc_malloc((size_t)mc_model_hparams(model)->n_vocab * sizeof(float));
    assert_non_null(s->logits);
}

static void seq_free(struct seq *s) {
    mc_kv_free(s->kv);
    mc_free(s->logits);
}

static void forward_ok(struct mc_ctx *ctx, const struct mc_batch_row *rows, int32_t n,
                       float *logits) {
    struct mc_err err = {0};
    if (mc_forward(ctx, rows, n, logits, NULL, &err) != MC_OK)
        fail_msg("forward: %s", err.msg);
}

static void seq_prompt(struct mc_ctx *ctx, struct seq *s, const int32_t *ids, size_t n) {
    struct mc_batch_row rows[64];
    assert_true(n <= 64);
    for (size_t i = 0; i < n; i++)
        rows[i] = (struct mc_batch_row){ids[i], (int32_t)i, s->kv, i == n - 1, s->l, s->scale};
    forward_ok(ctx, rows, (int32_t)n, s->logits);
}

static int32_t *tokenize(const char *text, size_t *n) {
    int32_t *ids;
    struct mc_err err = {0};
    assert_int_equal(
        mc_tokenize(mc_model_tokenizer(model), text, strlen(text), true, false, &ids, n, &err),
        MC_OK);
    return ids;
}

/* ---- Reference outputs ------------------------------------------------------------ */

static json_t *load_ref(void) {
    json_error_t je;
    json_t *root = json_load_file(shared("reference/stories260K-lora-r4.greedy.json"), 0, &je);
    if (!root)
        fail_msg("reference json: %s", je.text);
    return root;
}

static void check_case(struct mc_ctx *ctx, json_t *c, const struct mc_lora *l, const char *what) {
    json_t *lj = json_object_get(c, "lora");
    float scale = lj ? (float)json_number_value(json_object_get(lj, "scale")) : 0.0f;
    struct seq s;
    seq_init(&s, lj ? l : NULL, scale);
    size_t n;
    int32_t *ids = tokenize(json_string_value(json_object_get(c, "prompt")), &n);
    assert_int_equal(n, json_array_size(json_object_get(c, "prompt_tokens")));
    seq_prompt(ctx, &s, ids, n);

    int32_t n_vocab = mc_model_hparams(model)->n_vocab;
    json_t *full = json_object_get(c, "last_prompt_pos_logits");
    for (size_t i = 0; full && i < json_array_size(full); i++)
        if (!(fabs(s.logits[i] - json_real_value(json_array_get(full, i))) <= REF_TOL))
            fail_msg("%s: logit %zu is %.6f, reference %.6f", what, i, s.logits[i],
                     json_real_value(json_array_get(full, i)));
    json_t *top = json_object_get(c, "top5_last_prompt_pos");
    for (size_t i = 0; i < json_array_size(top); i++) {
        json_t *e = json_array_get(top, i);
        int32_t id = (int32_t)json_integer_value(json_object_get(e, "id"));
        assert_float_near(s.logits[id], json_real_value(json_object_get(e, "logit")), REF_TOL);
    }
    json_t *want = json_object_get(c, "greedy_tokens");
    assert_int_equal(json_array_size(want), 32);
    for (size_t step = 0; step < 32; step++) {
        int32_t got = mc_argmax(s.logits, n_vocab);
        int32_t exp = (int32_t)json_integer_value(json_array_get(want, step));
        if (got != exp)
            fail_msg("%s: greedy step %zu: id %d, reference %d", what, step, got, exp);
        struct mc_batch_row row = {got, mc_kv_n_used(s.kv), s.kv, true, s.l, s.scale};
        forward_ok(ctx, &row, 1, s.logits);
    }
    mc_free(ids);
    seq_free(&s);
}

static void check_reference(const char *path) {
    struct mc_lora *l = open_ok(path, &base);
    struct mc_ctx *ctx;
    struct mc_lora_runner *run;
    struct mc_err err = {0};
    assert_int_equal(mc_ctx_create(model, 64, 1, &ctx, &err), MC_OK);
    assert_int_equal(mc_lora_runner_create(ctx, &run, &err), MC_OK);
    json_t *root = load_ref();
    size_t ci;
    json_t *c;
    int n_cases = 0;
    json_array_foreach(json_object_get(root, "cases"), ci, c) {
        char what[128];
        snprintf(what, sizeof(what), "%s case %zu", path, ci);
        check_case(ctx, c, l, what);
        n_cases++;
    }
    assert_int_equal(n_cases, 6);
    json_decref(root);
    mc_lora_runner_free(run);
    mc_ctx_free(ctx);
    mc_lora_release(l);
}

static void test_reference_gguf(void **state) {
    (void)state;
    check_reference(shared("models/stories260K-lora-r4.gguf"));
}

static void test_reference_peft(void **state) {
    (void)state;
    check_reference(shared("models/stories260K-lora-r4-peft"));
}

/* The PEFT twin, bound to the model, holds exactly the GGUF file's numbers: A equal, and
 * q's B equal only after the rope row permutation. Without a base, q's B differs. */
static void test_peft_permutation(void **state) {
    (void)state;
    struct mc_lora *g = open_ok(shared("models/stories260K-lora-r4.gguf"), &base);
    struct mc_lora *p = open_ok(shared("models/stories260K-lora-r4-peft"), &base);
    struct mc_lora *raw = open_ok(shared("models/stories260K-lora-r4-peft"), NULL);
    const struct mc_lora_info *gi = mc_lora_info(g), *pi = mc_lora_info(p);
    assert_int_equal(gi->n_pairs, 10);
    assert_int_equal(pi->n_pairs, 10);
    assert_int_equal(gi->rank, 4);
    assert_int_equal(gi->targets, (1u << MC_PROJ_Q) | (1u << MC_PROJ_V));
    assert_float_near(gi->alpha, 8.0, 0);
    assert_false(pi->hf_row_order);
    assert_true(mc_lora_info(raw)->hf_row_order);
    assert_string_equal(pi->base_model, "stories260K");
    for (int32_t i = 0; i < 10; i++) {
        struct mc_lora_pair_info a, b, r;
        mc_lora_pair(g, i, &a);
        mc_lora_pair(p, i, &b);
        mc_lora_pair(raw, i, &r);
        assert_string_equal(a.name, b.name);
        assert_memory_equal(a.a, b.a, (size_t)a.rank * a.n_in * sizeof(float));
        assert_int_equal(a.type, MC_TYPE_F32);
        assert_memory_equal(a.bt, b.bt, (size_t)a.n_out * a.rank * sizeof(float));
        bool same_raw = !memcmp(a.bt, r.bt, (size_t)a.n_out * a.rank * sizeof(float));
        assert_int_equal(same_raw, a.proj != MC_PROJ_Q);
    }
    /* Converting needs the head counts when q/k are present. */
    struct mc_err err = {0};
    assert_int_equal(mc_lora_save_gguf(raw, MC_TYPE_F32, "/tmp/test_lora_raw.gguf", &err),
                     MC_EINVAL);
    assert_non_null(strstr(err.msg, "rope row permutation"));
    mc_lora_release(raw);
    mc_lora_release(p);
    mc_lora_release(g);
}

/* A safetensors file in memory: n F32 tensors, tensor i named names[i] with shape
 * (rows[i], cols[i]) and values vals[i], stored one after another. Free with mc_free. */
static uint8_t *make_safetensors(int n, const char *const *names, const int64_t *rows,
                                 const int64_t *cols, const float *const *vals, size_t *size) {
    char hdr[2048];
    size_t len = 0, off = 0;
    len += (size_t)snprintf(hdr + len, sizeof(hdr) - len, "{");
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)(rows[i] * cols[i]) * sizeof(float);
        len += (size_t)snprintf(hdr + len, sizeof(hdr) - len,
                                "%s\"%s\": {\"dtype\": \"F32\", \"shape\": [%lld, %lld], "
                                "\"data_offsets\": [%zu, %zu]}",
                                i ? ", " : "", names[i], (long long)rows[i], (long long)cols[i],
                                off, off + bytes);
        off += bytes;
    }
    len += (size_t)snprintf(hdr + len, sizeof(hdr) - len, "}");
    assert_true(len < sizeof(hdr));
    uint64_t hlen = len;
    *size = 8 + len + off;
    uint8_t *buf = mc_malloc(*size), *at = buf + 8 + len;
    assert_non_null(buf);
    memcpy(buf, &hlen, 8);
    memcpy(buf + 8, hdr, len);
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)(rows[i] * cols[i]) * sizeof(float);
        memcpy(at, vals[i], bytes);
        at += bytes;
    }
    return buf;
}

/* The reference adapter adapts only q and v, so k's permutation is checked here with a
 * PEFT adapter built in memory: layer 1's k_proj and v_proj, rank 2, lora_B row o
 * holding 100·o + k + 1 in column k. Bound to stories260K (8 query heads, 4 KV heads of
 * 8 rows), k's rows must come out as convert_hf_to_gguf permutes them with n_head_kv:
 * within each head of 8 rows, HF rows 0, 4, 1, 5, 2, 6, 3, 7. Permuting with n_head
 * instead (heads of 4 rows: 0, 2, 1, 3, ...) or not at all fails; v is never permuted. */
static void test_peft_k_permutation(void **state) {
    (void)state;
    enum { R = 2, N_IN = 64, N_KV = 32 };
    assert_int_equal(base.head_dim, 8);
    assert_int_equal(base.n_head_kv * base.head_dim, N_KV);
    assert_true(base.n_head != base.n_head_kv); /* else n_head would give the same order */
    static float a[R * N_IN], b[N_KV * R];
    for (int i = 0; i < R * N_IN; i++)
        a[i] = (float)(i % 7) * 0.125f;
    for (int o = 0; o < N_KV; o++)
        for (int k = 0; k < R; k++)
            b[o * R + k] = (float)(100 * o + k + 1);
    const char *const names[4] = {"base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight",
                                  "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight",
                                  "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight",
                                  "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"};
    const int64_t rows[4] = {R, N_KV, R, N_KV}, cols[4] = {N_IN, R, N_IN, R};
    const float *const vals[4] = {a, b, a, b};
    size_t st_len;
    uint8_t *st = make_safetensors(4, names, rows, cols, vals, &st_len);
    static const char cfg[] = "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4,"
                              " \"target_modules\": [\"k_proj\", \"v_proj\"]}";
    struct mc_err err = {0};
    struct mc_lora *l, *raw;
    int rc = mc_lora_open_peft_buffers(cfg, strlen(cfg), st, st_len, "kv", &base, &l, &err);
    if (rc != MC_OK)
        fail_msg("open: %s", err.msg);
    rc = mc_lora_open_peft_buffers(cfg, strlen(cfg), st, st_len, "kv", NULL, &raw, &err);
    if (rc != MC_OK)
        fail_msg("open without base: %s", err.msg);
    mc_free(st);
    assert_int_equal(mc_lora_n_pairs(l), 2);
    assert_false(mc_lora_info(l)->hf_row_order);
    assert_true(mc_lora_info(raw)->hf_row_order);

    static const int in_head[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    struct mc_lora_pair_info k, v, kr;
    mc_lora_pair(l, 0, &k);
    mc_lora_pair(l, 1, &v);
    mc_lora_pair(raw, 0, &kr);
    assert_string_equal(k.name, "blk.1.attn_k.weight");
    assert_string_equal(v.name, "blk.1.attn_v.weight");
    assert_int_equal(k.type, MC_TYPE_F32);
    assert_int_equal(k.n_out, N_KV);
    assert_memory_equal(k.a, a, sizeof(a));
    const float *kb = k.bt, *vb = v.bt, *rb = kr.bt; /* (R, N_KV) */
    for (int g = 0; g < N_KV; g++) {
        int hf = g / 8 * 8 + in_head[g % 8];
        for (int c = 0; c < R; c++) {
            if (kb[c * N_KV + g] != (float)(100 * hf + c + 1))
                fail_msg("k GGUF row %d column %d holds %g: HF row %g, want HF row %d", g, c,
                         kb[c * N_KV + g], (kb[c * N_KV + g] - (float)(c + 1)) / 100, hf);
            assert_float_near(vb[c * N_KV + g], 100 * g + c + 1, 0);
            assert_float_near(rb[c * N_KV + g], 100 * g + c + 1, 0);
        }
    }
    mc_lora_release(raw);
    mc_lora_release(l);
}

/* PEFT -> GGUF conversion writes the same tensors as the reference GGUF file. */
static void test_convert_roundtrip(void **state) {
    (void)state;
    struct mc_err err = {0};
    char path[64];
    snprintf(path, sizeof(path), "/tmp/test_lora_conv_%d.gguf", (int)getpid());
    struct mc_lora *p = open_ok(shared("models/stories260K-lora-r4-peft"), &base);
    assert_int_equal(mc_lora_save_gguf(p, MC_TYPE_F32, path, &err), MC_OK);
    struct mc_gguf *a, *b;
    assert_int_equal(mc_gguf_open(path, &a, &err), MC_OK);
    assert_int_equal(mc_gguf_open(shared("models/stories260K-lora-r4.gguf"), &b, &err), MC_OK);
    assert_int_equal(mc_gguf_n_tensors(a), 20);
    for (int64_t i = 0; i < 20; i++) {
        const struct mc_gguf_tensor *ta = mc_gguf_tensor(a, i);
        const struct mc_gguf_tensor *tb = mc_gguf_find_tensor(b, ta->name);
        assert_non_null(tb);
        assert_int_equal(ta->ne[0], tb->ne[0]);
        assert_int_equal(ta->ne[1], tb->ne[1]);
        assert_int_equal(ta->size_bytes, tb->size_bytes);
        assert_memory_equal(ta->data, tb->data, ta->size_bytes);
    }
    float alpha;
    assert_int_equal(mc_gguf_get_f32(a, "adapter.lora.alpha", &alpha, &err), MC_OK);
    assert_float_near(alpha, 8.0, 0);
    mc_gguf_close(a);
    mc_gguf_close(b);
    unlink(path);
    mc_lora_release(p);
}

/* ---- Scales ----------------------------------------------------------------------- */

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = mc_malloc(*len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, *len, f), *len);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

static int open_peft_with(const char *config, struct mc_lora **out, struct mc_err *err) {
    size_t st_len;
    char *st =
        read_all(shared("models/stories260K-lora-r4-peft/adapter_model.safetensors"), &st_len);
    int rc = mc_lora_open_peft_buffers(config, strlen(config), st, st_len, "mem", &base, out, err);
    mc_free(st);
    return rc;
}

static const char cfg_rslora[] =
    "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"use_rslora\": true,"
    " \"target_modules\": [\"q_proj\", \"v_proj\"], \"bias\": \"none\"}";

/* A GGUF file with the reference adapter's tensors and no adapter.lora.alpha key. */
static void write_no_alpha(const char *path) {
    struct mc_err err = {0};
    struct mc_gguf *g;
    struct mc_gguf_writer *w;
    assert_int_equal(mc_gguf_open(shared("models/stories260K-lora-r4.gguf"), &g, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_create(&w, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_str(w, "general.architecture", "llama", 5, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_str(w, "general.type", "adapter", 7, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_str(w, "adapter.type", "lora", 4, &err), MC_OK);
    for (int64_t i = 0; i < mc_gguf_n_tensors(g); i++) {
        const struct mc_gguf_tensor *t = mc_gguf_tensor(g, i);
        assert_int_equal(mc_gguf_writer_add_tensor(w, t->name, t->type, 2, t->ne, t->data, &err),
                         MC_OK);
    }
    assert_int_equal(mc_gguf_writer_write(w, path, &err), MC_OK);
    mc_gguf_writer_free(w);
    mc_gguf_close(g);
}

/* Logits after "Once upon a time" with adapter l at scale s. */
static void prompt_logits(struct mc_ctx *ctx, const struct mc_lora *l, float s, float *out) {
    struct seq q;
    size_t n;
    int32_t *ids = tokenize("Once upon a time", &n);
    seq_init(&q, l, s);
    seq_prompt(ctx, &q, ids, n);
    memcpy(out, q.logits, (size_t)mc_model_hparams(model)->n_vocab * sizeof(float));
    seq_free(&q);
    mc_free(ids);
}

static void test_scales(void **state) {
    (void)state;
    struct mc_err err = {0};
    char path[64];
    snprintf(path, sizeof(path), "/tmp/test_lora_noalpha_%d.gguf", (int)getpid());
    write_no_alpha(path);
    struct mc_lora *g = open_ok(shared("models/stories260K-lora-r4.gguf"), &base);
    struct mc_lora *na = open_ok(path, &base);
    struct mc_lora *rs = NULL;
    assert_int_equal(open_peft_with(cfg_rslora, &rs, &err), MC_OK);
    unlink(path);

    /* alpha / r = 8 / 4; rsLoRA alpha / √r = 8 / 2; no alpha: 1 (llama.cpp). */
    assert_float_near(mc_lora_scale(g, 0, MC_PROJ_Q, 1.0f), 2.0, 0);
    assert_float_near(mc_lora_scale(g, 4, MC_PROJ_V, 0.5f), 1.0, 0);
    assert_float_near(mc_lora_scale(g, 0, MC_PROJ_K, 1.0f), 0.0, 0);
    assert_float_near(mc_lora_scale(g, 5, MC_PROJ_Q, 1.0f), 0.0, 0);
    assert_float_near(mc_lora_scale(rs, 2, MC_PROJ_Q, 1.0f), 4.0, 0);
    assert_float_near(mc_lora_scale(rs, 2, MC_PROJ_Q, 0.25f), 1.0, 0);
    assert_float_near(mc_lora_scale(na, 1, MC_PROJ_V, 1.0f), 1.0, 0);
    assert_float_near(mc_lora_scale(na, 1, MC_PROJ_V, 3.0f), 3.0, 0);
    assert_false(mc_lora_info(na)->has_alpha);
    assert_true(mc_lora_info(rs)->rslora);

    /* The same total multiplier gives the same numbers, bit for bit: GGUF at 1.0 (2·1),
     * rsLoRA at 0.5 (4·0.5), no alpha at 2.0 (1·2). A different one does not. */
    struct mc_ctx *ctx;
    struct mc_lora_runner *run;
    assert_int_equal(mc_ctx_create(model, 16, 1, &ctx, &err), MC_OK);
    assert_int_equal(mc_lora_runner_create(ctx, &run, &err), MC_OK);
    int32_t nv = mc_model_hparams(model)->n_vocab;
    float *a = mc_malloc(4 * (size_t)nv * sizeof(float));
    prompt_logits(ctx, g, 1.0f, a);
    prompt_logits(ctx, rs, 0.5f, a + nv);
    prompt_logits(ctx, na, 2.0f, a + 2 * nv);
    prompt_logits(ctx, g, 0.5f, a + 3 * nv);
    assert_memory_equal(a, a + nv, (size_t)nv * sizeof(float));
    assert_memory_equal(a, a + 2 * nv, (size_t)nv * sizeof(float));
    assert_float_near(a[432], 16.6201401, REF_TOL);          /* the reference's top logit */
    assert_float_near(a[3 * nv + 432], 17.5922813, REF_TOL); /* reference at scale 0.5 */
    mc_free(a);
    mc_lora_runner_free(run);
    mc_ctx_free(ctx);
    mc_lora_release(g);
    mc_lora_release(na);
    mc_lora_release(rs);
}

/* ---- Merged model ------------------------------------------------------------------ */

static void check_merged(struct mc_lora *l, float scale, double tol) {
    struct mc_err err = {0};
    char path[64];
    snprintf(path, sizeof(path), "/tmp/test_lora_merged_%d.gguf", (int)getpid());
    assert_int_equal(mc_lora_merge(model, l, scale, path, &err), MC_OK);
    struct mc_model *merged;
    assert_int_equal(mc_model_load(path, &merged, &err), MC_OK);
    unlink(path);

    int32_t nv = mc_model_hparams(model)->n_vocab;
    struct mc_ctx *ctx, *mctx;
    struct mc_lora_runner *run;
    assert_int_equal(mc_ctx_create(model, 16, 1, &ctx, &err), MC_OK);
    assert_int_equal(mc_lora_runner_create(ctx, &run, &err), MC_OK);
    assert_int_equal(mc_ctx_create(merged, 16, 1, &mctx, &err), MC_OK);
    float *a = mc_malloc((size_t)nv * sizeof(float)), *b = mc_malloc((size_t)nv * sizeof(float));
    size_t n;
    int32_t *ids = tokenize("Lily and Tom went to the park", &n);
    struct mc_kv *kv;
    assert_int_equal(mc_kv_create(merged, 64, &kv, &err), MC_OK);
    struct mc_batch_row rows[32];
    for (size_t i = 0; i < n; i++)
        rows[i] = (struct mc_batch_row){ids[i], (int32_t)i, kv, i == n - 1, NULL, 0};
    forward_ok(mctx, rows, (int32_t)n, b);
    prompt_logits(ctx, NULL, 0, a); /* warm: base differs from merged */
    double base_diff = 0;
    for (int32_t i = 0; i < nv; i++)
        base_diff = fmax(base_diff, fabs(a[i] - b[i]));

    struct seq s;
    seq_init(&s, l, scale);
    seq_prompt(ctx, &s, ids, n);
    for (int32_t i = 0; i < nv; i++)
        assert_float_near(s.logits[i], b[i], tol);
    /* The adapter must matter, or the comparison proves nothing. */
    assert_true(base_diff > 50 * tol);
    seq_free(&s);
    mc_kv_free(kv);
    mc_free(ids);
    mc_free(a);
    mc_free(b);
    mc_lora_runner_free(run);
    mc_ctx_free(ctx);
    mc_ctx_free(mctx);
    mc_model_free(merged);
}

static void test_merge_equals_adapter(void **state) {
    (void)state;
    struct mc_err err = {0};
    struct mc_lora *g = open_ok(shared("models/stories260K-lora-r4.gguf"), &base);
    check_merged(g, 1.0f, 1e-3);
    struct mc_lora *s;
    assert_int_equal(mc_lora_synth(&base, 8, (1u << MC_PROJ_COUNT) - 1, 16.0f, 7, "s", &s, &err),
                     MC_OK);
    assert_int_equal(mc_lora_info(s)->n_pairs, 5 * 7);
    check_merged(s, 0.75f, 1e-3);
    mc_lora_release(s);
    mc_lora_release(g);
}

/* ---- Many adapters in one batch ------------------------------------------------------ */

/* The batch test: 20 rows, 16 of them with 16 different adapters, 4 without. */
enum { N_ADAPTERS = 16, N_ROWS = 20, N_STEPS = 12 };

/* Greedy decode of N_STEPS tokens for seqs[0..n) in one batch per step; tokens out. */
static void decode_batch(struct mc_ctx *ctx, struct seq *seqs, int n, int32_t *tokens) {
    int32_t nv = mc_model_hparams(model)->n_vocab;
    float *logits = mc_malloc((size_t)n * nv * sizeof(float));
    struct mc_batch_row rows[N_ROWS];
    assert_true(n <= N_ROWS);
    for (int step = 0; step < N_STEPS; step++) {
        for (int i = 0; i < n; i++) {
            int32_t t = mc_argmax(seqs[i].logits, nv);
            tokens[i * N_STEPS + step] = t;
            rows[i] = (struct mc_batch_row){
                t, mc_kv_n_used(seqs[i].kv), seqs[i].kv, true, seqs[i].l, seqs[i].scale};
        }
        forward_ok(ctx, rows, n, logits);
        for (int i = 0; i < n; i++)
            memcpy(seqs[i].logits, logits + (size_t)i * nv, (size_t)nv * sizeof(float));
    }
    mc_free(logits);
}

/* Decodes rows [0, n) (row i: adapter ad[i] or none, at scale[i]) together after the
 * same prompt, then each row alone, and fails unless every row gets exactly the same
 * greedy tokens and, within 1e-5, the same final logits both ways. Returns the number
 * of rows whose tokens differ from those of row base_row. */
static int check_batch_equals_alone(struct mc_ctx *ctx, struct mc_lora *const *ad,
                                    const float *scale, int n, int base_row) {
    size_t n_ids;
    int32_t *ids = tokenize("Once upon a time", &n_ids);
    struct seq batch[N_ROWS], alone;
    int32_t got[N_ROWS * N_STEPS], want[N_STEPS];
    assert_true(n <= N_ROWS);
    for (int i = 0; i < n; i++) {
        seq_init(&batch[i], ad[i], scale[i]);
        seq_prompt(ctx, &batch[i], ids, n_ids);
    }
    decode_batch(ctx, batch, n, got);

    int n_differ = 0;
    for (int i = 0; i < n; i++) {
        seq_init(&alone, ad[i], scale[i]);
        seq_prompt(ctx, &alone, ids, n_ids);
        decode_batch(ctx, &alone, 1, want);
        for (int s = 0; s < N_STEPS; s++)
            if (got[i * N_STEPS + s] != want[s])
                fail_msg("row %d step %d: batch gives %d, alone %d", i, s, got[i * N_STEPS + s],
                         want[s]);
        for (int32_t v = 0; v < mc_model_hparams(model)->n_vocab; v++)
            assert_float_near(batch[i].logits[v], alone.logits[v], 1e-5);
        n_differ += memcmp(got + i * N_STEPS, got + base_row * N_STEPS, sizeof(want)) != 0;
        seq_free(&alone);
    }
    for (int i = 0; i < n; i++)
        seq_free(&batch[i]);
    mc_free(ids);
    return n_differ;
}

/* 16 different adapters in one batch of 20 rows: 15 random ones (ranks 2 to 6, four
 * target sets, scales 1 and 0.5) and the reference adapter, with rows 4, 9, 14 and 19
 * left without. Then one adapter shared by two rows at different scales (one group of
 * two rows, each with its own scale) beside a row without. */
static void test_batch_16_adapters(void **state) {
    (void)state;
    struct mc_err err = {0};
    struct mc_lora *ad[N_ADAPTERS], *rows[N_ROWS];
    float scale[N_ROWS];
    uint32_t masks[4] = {(1u << MC_PROJ_COUNT) - 1, 1u << MC_PROJ_Q | 1u << MC_PROJ_V,
                         1u << MC_PROJ_GATE | 1u << MC_PROJ_DOWN, 1u << MC_PROJ_O};
    for (int a = 0; a < N_ADAPTERS - 1; a++)
        assert_int_equal(mc_lora_synth(&base, 2 + a % 5, masks[a % 4], 0, 100 + (uint64_t)a, "s",
                                       &ad[a], &err),
                         MC_OK);
    ad[N_ADAPTERS - 1] = open_ok(shared("models/stories260K-lora-r4.gguf"), &base);
    for (int i = 0, a = 0; i < N_ROWS; i++) {
        rows[i] = i % 5 == 4 ? NULL : ad[a++];
        scale[i] = i % 3 == 2 ? 0.5f : 1.0f;
    }

    struct mc_ctx *ctx;
    struct mc_lora_runner *run;
    assert_int_equal(mc_ctx_create(model, N_ROWS, 2, &ctx, &err), MC_OK);
    assert_int_equal(mc_lora_runner_create(ctx, &run, &err), MC_OK);
    /* Most adapters must change the output, or the test would not see a mix-up (13 of
     * the 16 change the 12 greedy tokens). */
    assert_true(check_batch_equals_alone(ctx, rows, scale, N_ROWS, 4) >= 12);

    struct mc_lora *shared_rows[3] = {ad[1], NULL, ad[1]};
    const float shared_scale[3] = {1.0f, 1.0f, 0.5f};
    assert_int_equal(check_batch_equals_alone(ctx, shared_rows, shared_scale, 3, 1), 2);

    /* An adapter bound to another shape is refused by the hook. */
    struct mc_lora_base other = base;
    other.n_ff = 64;
    struct mc_lora *bad;
    assert_int_equal(mc_lora_synth(&other, 2, 1u << MC_PROJ_Q, 0, 1, "other", &bad, &err), MC_OK);
    struct seq s2;
    seq_init(&s2, bad, 1.0f);
    struct mc_batch_row row = {1, 0, s2.kv, true, bad, 1.0f};
    assert_int_equal(mc_forward(ctx, &row, 1, s2.logits, NULL, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "not loaded for this model"));
    assert_int_equal(mc_kv_n_used(s2.kv), 0);
    seq_free(&s2);
    mc_lora_release(bad);

    for (int a = 0; a < N_ADAPTERS; a++)
        mc_lora_release(ad[a]);
    mc_lora_runner_free(run);
    mc_ctx_free(ctx);
}

/* Adapters of rank 40 give the hook enough work for the thread pool, so both ways of
 * splitting it run: 16 distinct adapters over 20 rows split whole groups between the
 * threads; one adapter on 13 of 20 rows (most of the work in one group) splits each
 * group's rank rows and output columns. Q8_0 copies (attention only: the feed-forward
 * width 172 is not a multiple of 32) take the same paths with the Q8_0 kernels. Every
 * row must get exactly what it gets alone. */
static void test_batch_pool_paths(void **state) {
    (void)state;
    struct mc_err err = {0};
    uint32_t attn = (1u << MC_PROJ_Q) | (1u << MC_PROJ_K) | (1u << MC_PROJ_V) | (1u << MC_PROJ_O);
    struct mc_lora *f16[N_ADAPTERS], *q8[N_ADAPTERS], *rows[N_ROWS];
    float scale[N_ROWS];
    for (int a = 0; a < N_ADAPTERS; a++) {
        struct mc_lora *s, *sa;
        assert_int_equal(mc_lora_synth(&base, 40, (1u << MC_PROJ_COUNT) - 1, 0, 300 + (uint64_t)a,
                                       "s", &s, &err),
                         MC_OK);
        assert_int_equal(mc_lora_convert(s, MC_TYPE_F16, &f16[a], &err), MC_OK);
        assert_int_equal(mc_lora_synth(&base, 40, attn, 0, 400 + (uint64_t)a, "q", &sa, &err),
                         MC_OK);
        assert_int_equal(mc_lora_convert(sa, MC_TYPE_Q8_0, &q8[a], &err), MC_OK);
        mc_lora_release(s);
        mc_lora_release(sa);
    }
    struct mc_ctx *ctx;
    struct mc_lora_runner *run;
    assert_int_equal(mc_ctx_create(model, N_ROWS, 2, &ctx, &err), MC_OK);
    assert_int_equal(mc_lora_runner_create(ctx, &run, &err), MC_OK);
    for (int kind = 0; kind < 2; kind++) {
        struct mc_lora **ad = kind ? q8 : f16;
        for (int i = 0, a = 0; i < N_ROWS; i++) {
            rows[i] = i % 5 == 4 ? NULL : ad[a++];
            scale[i] = i % 3 == 2 ? 0.5f : 1.0f;
        }
        assert_true(check_batch_equals_alone(ctx, rows, scale, N_ROWS, 4) >= 12);
        for (int i = 0; i < N_ROWS; i++)
            rows[i] = i < 13 ? ad[0] : i < 17 ? ad[i - 12] : NULL;
        assert_true(check_batch_equals_alone(ctx, rows, scale, N_ROWS, 19) >= 12);
    }
    for (int a = 0; a < N_ADAPTERS; a++) {
        mc_lora_release(f16[a]);
        mc_lora_release(q8[a]);
    }
    mc_lora_runner_free(run);
    mc_ctx_free(ctx);
}

/* Random rows of each storage type and n elements of it: F32/F16 values in [-1, 1), Q8_0
 * blocks from them. */
static void *kernel_rows(enum mc_type t, int rows, int64_t n, uint32_t *seed) {
    float *v = mc_malloc((size_t)n * sizeof(float));
    size_t rs = t == MC_TYPE_Q8_0 ? mc_type_row_size(t, n) : (size_t)n * (t == MC_TYPE_F16 ? 2 : 4);
    uint8_t *out = mc_malloc(rs * (size_t)rows);
    for (int r = 0; r < rows; r++) {
        for (int64_t i = 0; i < n; i++) {
            *seed = *seed * 1664525u + 1013904223u;
            v[i] = (float)(*seed >> 8) / (float)(1u << 23) - 1.0f;
        }
        uint8_t *dst = out + rs * (size_t)r;
        if (t == MC_TYPE_Q8_0)
            assert_int_equal(mc_quantize_row(t, v, dst, n, NULL), MC_OK);
        else if (t == MC_TYPE_F16)
            for (int64_t i = 0; i < n; i++) {
                uint16_t h = mc_fp32_to_fp16(v[i]);
                memcpy(dst + 2 * i, &h, 2);
            }
        else
            memcpy(dst, v, rs);
    }
    mc_free(v);
    return out;
}

/* The hook's kernels at each SIMD level on random data, F32, F16 and Q8_0: expand results
 * are bit for bit those of the AVX2 kernel (one fused multiply-add per rank row and
 * output, in rank order) over any output range, and within float rounding of the
 * portable one; dot products agree within float rounding. Rank 11 and widths that are
 * not multiples of 16 exercise every tail. */
static void test_kernels_agree(void **state) {
    (void)state;
    if (mc_simd_detect() < MC_SIMD_AVX2)
        skip();
    const enum mc_type types[3] = {MC_TYPE_F32, MC_TYPE_F16, MC_TYPE_Q8_0};
    enum { RANK = 11 };
    uint32_t seed = 7;
    for (int k = 0; k < 3; k++) {
        enum mc_type t = types[k];
        const int64_t n = t == MC_TYPE_Q8_0 ? 224 : 217;
        float *x = kernel_rows(MC_TYPE_F32, 1, n, &seed),
              *tk = kernel_rows(MC_TYPE_F32, 1, RANK, &seed);
        uint8_t *w = kernel_rows(t, RANK, n, &seed);
        float d2 = lora_dot_avx2(x, w, t, n), dp = lora_dot_portable(x, w, t, n);
        assert_float_near(d2, dp, 1e-4);
        if (mc_simd_detect() >= MC_SIMD_AVX512)
            assert_float_near(lora_dot_avx512(x, w, t, n), dp, 1e-4);
        /* Ranges: the whole row, and pieces starting and ending on multiples of 32 (the
         * splits the hook makes), the last one ending at n. */
        const int64_t cuts[][2] = {{0, n}, {0, 64}, {64, 160}, {160, n}};
        float y2[224], y5[224], yp[224];
        for (int c = 0; c < 4; c++) {
            int64_t j0 = cuts[c][0], j1 = cuts[c][1];
            for (int64_t j = 0; j < n; j++)
                y2[j] = y5[j] = yp[j] = (float)j * 0.01f;
            lora_expand_avx2(y2, tk, w, t, RANK, n, j0, j1);
            lora_expand_portable(yp, tk, w, t, RANK, n, j0, j1);
            for (int64_t j = 0; j < n; j++)
                assert_float_near(y2[j], yp[j], 1e-4);
            if (mc_simd_detect() >= MC_SIMD_AVX512) {
                lora_expand_avx512(y5, tk, w, t, RANK, n, j0, j1);
                if (memcmp(y2, y5, (size_t)n * sizeof(float)) != 0)
                    fail_msg("%s expand [%lld, %lld): AVX-512 differs from AVX2", mc_type_name(t),
                             (long long)j0, (long long)j1);
            }
        }
        mc_free(x);
        mc_free(tk);
        mc_free(w);
    }
}

/* Without a runner, a row with an adapter is an error, not silently ignored. */
static void test_no_hook_is_error(void **state) {
    (void)state;
    struct mc_err err = {0};
    struct mc_ctx *ctx;
    struct mc_lora *g = open_ok(shared("models/stories260K-lora-r4.gguf"), &base);
    assert_int_equal(mc_ctx_create(model, 4, 1, &ctx, &err), MC_OK);
    struct seq s;
    seq_init(&s, g, 1.0f);
    struct mc_batch_row row = {1, 0, s.kv, true, g, 1.0f};
    assert_int_equal(mc_forward(ctx, &row, 1, s.logits, NULL, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "no projection hook"));
    seq_free(&s);
    mc_ctx_free(ctx);
    mc_lora_release(g);
}

/* F16 files stay F16 in memory (half the bytes) and compute exactly what the same
 * values in F32 give; the portable kernels agree with the AVX2 ones. */
static void test_f16_storage_and_kernels(void **state) {
    (void)state;
    struct mc_err err = {0};
    char p16[64], p32[64];
    snprintf(p16, sizeof(p16), "/tmp/test_lora_f16_%d.gguf", (int)getpid());
    snprintf(p32, sizeof(p32), "/tmp/test_lora_f32_%d.gguf", (int)getpid());
    struct mc_lora *s, *h, *f;
    assert_int_equal(mc_lora_synth(&base, 8, (1u << MC_PROJ_COUNT) - 1, 0, 5, "s", &s, &err),
                     MC_OK);
    assert_int_equal(mc_lora_save_gguf(s, MC_TYPE_F16, p16, &err), MC_OK);
    h = open_ok(p16, &base);
    assert_int_equal(mc_lora_save_gguf(h, MC_TYPE_F32, p32, &err), MC_OK);
    f = open_ok(p32, &base);
    unlink(p16);
    unlink(p32);
    struct mc_lora_pair_info ph, pf;
    mc_lora_pair(h, 3, &ph);
    mc_lora_pair(f, 3, &pf);
    assert_int_equal(ph.type, MC_TYPE_F16);
    assert_int_equal(pf.type, MC_TYPE_F32);
    size_t bh = mc_lora_info(h)->resident_bytes, bf = mc_lora_info(f)->resident_bytes;
    assert_true(bh < bf / 2 + 4096 && bh > bf / 2 - 4096);

    struct mc_ctx *ctx;
    struct mc_lora_runner *run;
    int32_t nv = mc_model_hparams(model)->n_vocab;
    float *a = mc_malloc(3 * (size_t)nv * sizeof(float));
    assert_int_equal(mc_ctx_create(model, 16, 1, &ctx, &err), MC_OK);
    assert_int_equal(mc_lora_runner_create(ctx, &run, &err), MC_OK);
    prompt_logits(ctx, h, 0.8f, a);
    prompt_logits(ctx, f, 0.8f, a + nv);
    mc_lora_runner_free(run);
    enum mc_simd was = mc_simd_get();
    mc_simd_set(MC_SIMD_PORTABLE);
    assert_int_equal(mc_lora_runner_create(ctx, &run, &err), MC_OK);
    prompt_logits(ctx, h, 0.8f, a + 2 * nv);
    mc_simd_set(was);
    for (int32_t i = 0; i < nv; i++) {
        assert_float_near(a[i], a[nv + i], 1e-5);
        assert_float_near(a[i], a[2 * nv + i], 1e-3);
    }
    mc_free(a);
    mc_lora_runner_free(run);
    mc_ctx_free(ctx);
    mc_lora_release(s);
    mc_lora_release(h);
    mc_lora_release(f);
}

/* An F16 adapter whose last tensor ends in NaN halves (0xffff) is refused at load, from
 * a file and from memory, naming the tensor. */
static void test_f16_nan_refused(void **state) {
    (void)state;
    struct mc_err err = {0};
    char path[64];
    snprintf(path, sizeof(path), "/tmp/test_lora_nan_%d.gguf", (int)getpid());
    struct mc_lora *s, *l = NULL;
    assert_int_equal(mc_lora_synth(&base, 4, 1u << MC_PROJ_Q, 0, 3, "s", &s, &err), MC_OK);
    assert_int_equal(mc_lora_save_gguf(s, MC_TYPE_F16, path, &err), MC_OK);
    mc_lora_release(s);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    /* The data section ends the file (padding after the last tensor is under 32 bytes). */
    uint8_t ff[64];
    memset(ff, 0xff, sizeof(ff));
    assert_int_equal(fseek(f, -(long)sizeof(ff), SEEK_END), 0);
    assert_int_equal(fwrite(ff, 1, sizeof(ff), f), sizeof(ff));
    fclose(f);
    assert_int_equal(mc_lora_open(path, &base, &l, &err), MC_EFORMAT);
    assert_null(l);
    assert_non_null(strstr(err.msg, "blk.4.attn_q.weight.lora_b: a value is NaN or infinite"));
    unlink(path);
}

/* Q8_0 residency: about a quarter of F32's bytes, outputs close to the F32 adapter's,
 * portable and AVX2 kernels agreeing; widths that are not multiples of 32 are refused. */
static void test_q8_residency(void **state) {
    (void)state;
    struct mc_err err = {0};
    struct mc_lora *s, *q, *bad = (struct mc_lora *)1;
    uint32_t attn = (1u << MC_PROJ_Q) | (1u << MC_PROJ_K) | (1u << MC_PROJ_V) | (1u << MC_PROJ_O);
    assert_int_equal(mc_lora_synth(&base, 8, attn, 0, 9, "s", &s, &err), MC_OK);
    assert_int_equal(mc_lora_convert(s, MC_TYPE_Q8_0, &q, &err), MC_OK);
    struct mc_lora_pair_info pq, ps;
    mc_lora_pair(q, 0, &pq);
    mc_lora_pair(s, 0, &ps);
    assert_int_equal(pq.type, MC_TYPE_Q8_0);
    assert_float_near(mc_lora_scale(q, 2, MC_PROJ_K, 0.5f), mc_lora_scale(s, 2, MC_PROJ_K, 0.5f),
                      0);
    size_t bq = mc_lora_info(q)->resident_bytes, bs = mc_lora_info(s)->resident_bytes;
    assert_true(bq * 10 < bs * 3); /* 34 bytes per 32 values against 128 */

    struct mc_lora *all;
    assert_int_equal(mc_lora_synth(&base, 4, 1u << MC_PROJ_UP, 0, 1, "up", &all, &err), MC_OK);
    assert_int_equal(mc_lora_convert(all, MC_TYPE_Q8_0, &bad, &err), MC_ENOTSUP);
    assert_null(bad);
    assert_non_null(strstr(err.msg, "blk.0.ffn_up.weight: width 172 is not a multiple of Q8_0's "
                                    "block of 32 (the pair maps 64 -> 172)"));
    mc_lora_release(all);

    struct mc_ctx *ctx;
    struct mc_lora_runner *run;
    int32_t nv = mc_model_hparams(model)->n_vocab;
    float *a = mc_malloc(4 * (size_t)nv * sizeof(float));
    struct mc_lora *back; /* the Q8_0 values, exactly, in F32 */
    assert_int_equal(mc_lora_convert(q, MC_TYPE_F32, &back, &err), MC_OK);
    assert_int_equal(mc_ctx_create(model, 16, 1, &ctx, &err), MC_OK);
    assert_int_equal(mc_lora_runner_create(ctx, &run, &err), MC_OK);
    prompt_logits(ctx, s, 1.0f, a);
    prompt_logits(ctx, q, 1.0f, a + nv);
    prompt_logits(ctx, back, 1.0f, a + 3 * nv);
    mc_lora_runner_free(run);
    enum mc_simd was = mc_simd_get();
    mc_simd_set(MC_SIMD_PORTABLE);
    assert_int_equal(mc_lora_runner_create(ctx, &run, &err), MC_OK);
    prompt_logits(ctx, q, 1.0f, a + 2 * nv);
    mc_simd_set(was);
    double max_diff = 0;
    for (int32_t i = 0; i < nv; i++) {
        max_diff = fmax(max_diff, fabs(a[i] - a[nv + i]));
        assert_float_near(a[nv + i], a[2 * nv + i], 1e-3);
        assert_float_near(a[nv + i], a[3 * nv + i], 1e-4);
    }
    /* This adapter moves logits by several units; Q8_0 rounding moves them by < 2 %. */
    if (!(max_diff < 0.3 && max_diff > 0))
        fail_msg("Q8_0 vs F32 adapter: max logit difference %g", max_diff);
    assert_int_equal(mc_argmax(a, nv), mc_argmax(a + nv, nv));
    mc_free(a);
    mc_lora_runner_free(run);
    mc_ctx_free(ctx);
    mc_lora_release(s);
    mc_lora_release(q);
    mc_lora_release(back);
}

/* Both converted to Q8_0 under each SIMD level; fails unless the bytes are equal. */
static void check_q8_same_bytes(const struct mc_lora *l) {
    struct mc_err err = {0};
    struct mc_lora *fast, *ref;
    enum mc_simd was = mc_simd_get();
    assert_int_equal(mc_lora_convert(l, MC_TYPE_Q8_0, &fast, &err), MC_OK);
    mc_simd_set(MC_SIMD_PORTABLE);
    assert_int_equal(mc_lora_convert(l, MC_TYPE_Q8_0, &ref, &err), MC_OK);
    mc_simd_set(was);
    for (int32_t i = 0; i < mc_lora_n_pairs(l); i++) {
        struct mc_lora_pair_info f, r;
        mc_lora_pair(fast, i, &f);
        mc_lora_pair(ref, i, &r);
        assert_memory_equal(f.a, r.a, (size_t)f.rank * mc_type_row_size(MC_TYPE_Q8_0, f.n_in));
        assert_memory_equal(f.bt, r.bt, (size_t)f.rank * mc_type_row_size(MC_TYPE_Q8_0, f.n_out));
    }
    mc_lora_release(fast);
    mc_lora_release(ref);
}

/* The AVX2 Q8_0 conversion writes the bytes of the generic one (mc_quantize_row), from
 * F32 and from F16, including halves, which round away from zero as roundf does: a
 * block whose largest value is 127 has scale 1, so its values are quantized as is. */
static void test_q8_convert_matches_reference(void **state) {
    (void)state;
    enum { R = 2, N_IN = 64, N_KV = 32 };
    static const float ties[] = {127, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f,
                                 0.49999997f, -0.49999997f, 3.5f, -126.5f, 0, -0.0f};
    static const int8_t want[] = {127, 1, 2, 3, -1, -2, -3, 127, 0, 0, 4, -127, 0, 0};
    static float a[R * N_IN], b[N_KV * R];
    for (int i = 0; i < R * N_IN; i++)
        a[i] = i < (int)(sizeof(ties) / sizeof(ties[0])) ? ties[i] : (float)((i * 37) % 19) - 9.0f;
    for (int i = 32; i < 64; i++)
        a[i] = 0; /* a block of zeros: scale 0 */
    for (int i = 0; i < N_KV * R; i++)
        b[i] = (float)(i % 11) * 0.3f - 1.0f;
    const char *const names[2] = {"base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
                                  "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"};
    const int64_t rows[2] = {R, N_KV}, cols[2] = {N_IN, R};
    const float *const vals[2] = {a, b};
    size_t st_len;
    uint8_t *st = make_safetensors(2, names, rows, cols, vals, &st_len);
    static const char cfg[] = "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 2}";
    struct mc_err err = {0};
    struct mc_lora *l, *q, *s, *h;
    int rc = mc_lora_open_peft_buffers(cfg, strlen(cfg), st, st_len, "ties", &base, &l, &err);
    mc_free(st);
    if (rc != MC_OK)
        fail_msg("open: %s", err.msg);
    assert_int_equal(mc_lora_convert(l, MC_TYPE_Q8_0, &q, &err), MC_OK);
    struct mc_lora_pair_info p;
    mc_lora_pair(q, 0, &p);
    const uint8_t *blk = p.a;
    uint16_t d;
    memcpy(&d, blk, 2);
    assert_float_near(mc_fp16_to_fp32(d), 1.0, 0);
    for (size_t i = 0; i < sizeof(want); i++)
        if ((int8_t)blk[2 + i] != want[i])
            fail_msg("value %.9g quantized to %d, want %d", ties[i], (int8_t)blk[2 + i], want[i]);
    memcpy(&d, blk + 34, 2);
    assert_int_equal(d, 0);
    mc_lora_release(q);
    check_q8_same_bytes(l);

    uint32_t attn = (1u << MC_PROJ_Q) | (1u << MC_PROJ_K) | (1u << MC_PROJ_V) | (1u << MC_PROJ_O);
    assert_int_equal(mc_lora_synth(&base, 8, attn, 0, 11, "s", &s, &err), MC_OK);
    assert_int_equal(mc_lora_convert(s, MC_TYPE_F16, &h, &err), MC_OK);
    check_q8_same_bytes(s);
    check_q8_same_bytes(h);
    mc_lora_release(h);
    mc_lora_release(s);
    mc_lora_release(l);
}

/* ---- Errors ------------------------------------------------------------------------- */

static void expect_peft_error(const char *config, int code, const char *needle) {
    struct mc_err err = {0};
    struct mc_lora *l = (struct mc_lora *)1;
    assert_int_equal(open_peft_with(config, &l, &err), code);
    assert_null(l);
    if (!strstr(err.msg, needle))
        fail_msg("message '%s' lacks '%s'", err.msg, needle);
}

static void test_peft_config_errors(void **state) {
    (void)state;
    expect_peft_error("{\"r\": 4, \"lora_alpha\": 8,", MC_EFORMAT,
                      "adapter_config.json: line 1 column");
    expect_peft_error("[1, 2]", MC_EFORMAT, "not a JSON object");
    expect_peft_error("{\"r\": 4}", MC_EFORMAT, "\"lora_alpha\" is missing");
    expect_peft_error("{\"r\": 4, \"lora_alpha\": \"8\"}", MC_EFORMAT, "positive number");
    expect_peft_error("{\"r\": 0, \"lora_alpha\": 8}", MC_EFORMAT, "\"r\" must be an integer");
    expect_peft_error("{\"lora_alpha\": 8}", MC_EFORMAT, "\"r\" (the rank) is missing");
    /* Above float's range alpha / r would be infinite: refused, not a 500 or NaN output. */
    expect_peft_error("{\"r\": 4, \"lora_alpha\": 1e39}", MC_EFORMAT, "positive number up to 65536");
    expect_peft_error("{\"r\": 4, \"lora_alpha\": 65537}", MC_EFORMAT, "up to 65536");
    expect_peft_error("{\"r\": 8, \"lora_alpha\": 8}", MC_EFORMAT,
                      "q_proj.lora_A.weight has shape [4, 64]: rank 4, but the config says r = 8");
    expect_peft_error("{\"r\": 4, \"lora_alpha\": 8, \"use_dora\": true}", MC_ENOTSUP, "use_dora");
    expect_peft_error("{\"r\": 4, \"lora_alpha\": 8, \"bias\": \"all\"}", MC_ENOTSUP, "bias");
    expect_peft_error("{\"r\": 4, \"r\": 4, \"lora_alpha\": 8}", MC_EFORMAT, "duplicate");
    expect_peft_error("{\"peft_type\": \"IA3\", \"r\": 4, \"lora_alpha\": 8}", MC_ENOTSUP,
                      "peft_type");
}

/* A GGUF adapter built from the reference one with one tensor changed by fix(). */
static int open_modified(void (*fix)(const char *name, int64_t *ne, const void **data, bool *skip),
                         const struct mc_lora_base *b, struct mc_lora **out, struct mc_err *err) {
    struct mc_gguf *g;
    struct mc_gguf_writer *w;
    char path[64];
    snprintf(path, sizeof(path), "/tmp/test_lora_mod_%d.gguf", (int)getpid());
    assert_int_equal(mc_gguf_open(shared("models/stories260K-lora-r4.gguf"), &g, err), MC_OK);
    assert_int_equal(mc_gguf_writer_create(&w, err), MC_OK);
    assert_int_equal(mc_gguf_writer_copy_kv(w, g, NULL, err), MC_OK);
    static float zeros[64 * 64];
    for (int64_t i = 0; i < mc_gguf_n_tensors(g); i++) {
        const struct mc_gguf_tensor *t = mc_gguf_tensor(g, i);
        int64_t ne[2] = {t->ne[0], t->ne[1]};
        const void *data = t->data;
        bool skip = false;
        fix(t->name, ne, &data, &skip);
        if (ne[0] * ne[1] > t->ne[0] * t->ne[1])
            data = zeros;
        if (!skip)
            assert_int_equal(mc_gguf_writer_add_tensor(w, t->name, t->type, 2, ne, data, err),
                             MC_OK);
    }
    assert_int_equal(mc_gguf_writer_write(w, path, err), MC_OK);
    mc_gguf_writer_free(w);
    mc_gguf_close(g);
    int rc = mc_lora_open(path, b, out, err);
    unlink(path);
    return rc;
}

static void fix_rank(const char *name, int64_t *ne, const void **data, bool *skip) {
    (void)data;
    (void)skip;
    if (!strcmp(name, "blk.2.attn_v.weight.lora_b"))
        ne[0] = 8, ne[1] = 16; /* rank 8 against lora_a's 4 */
}

static void fix_missing(const char *name, int64_t *ne, const void **data, bool *skip) {
    (void)ne;
    (void)data;
    *skip = !strcmp(name, "blk.3.attn_q.weight.lora_a");
}

static void fix_width(const char *name, int64_t *ne, const void **data, bool *skip) {
    (void)data;
    (void)skip;
    if (!strcmp(name, "blk.1.attn_v.weight.lora_b"))
        ne[1] = 64; /* v maps to 32 in the model */
}

/* Which tensor fix_value changes, where, and to what (the reference adapter is F32). */
static const char *bad_tensor;
static int64_t bad_index;
static float bad_value;

static void fix_value(const char *name, int64_t *ne, const void **data, bool *skip) {
    (void)skip;
    static float copy[64 * 64];
    if (strcmp(name, bad_tensor) != 0)
        return;
    memcpy(copy, *data, (size_t)(ne[0] * ne[1]) * sizeof(float));
    copy[bad_index < 0 ? ne[0] * ne[1] + bad_index : bad_index] = bad_value;
    *data = copy;
}

static void test_gguf_errors(void **state) {
    (void)state;
    struct mc_err err = {0};
    struct mc_lora *l = NULL;
    assert_int_equal(open_modified(fix_rank, &base, &l, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "blk.2.attn_v.weight: lora_a has rank 4 but lora_b 8"));
    assert_int_equal(open_modified(fix_missing, &base, &l, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "blk.3.attn_q.weight.lora_a is missing"));
    /* A NaN as the last value of one B, an infinity in one A. */
    bad_tensor = "blk.1.attn_q.weight.lora_b", bad_index = -1, bad_value = NAN;
    assert_int_equal(open_modified(fix_value, &base, &l, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "blk.1.attn_q.weight.lora_b: a value is NaN or infinite"));
    bad_tensor = "blk.4.attn_v.weight.lora_a", bad_index = 3, bad_value = INFINITY;
    assert_int_equal(open_modified(fix_value, &base, &l, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "blk.4.attn_v.weight.lora_a: a value is NaN or infinite"));
    assert_int_equal(open_modified(fix_width, &base, &l, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "blk.1.attn_v.weight: adapter maps 64 -> 64 but the model's "
                                    "matrix is 64 -> 32"));
    assert_null(l);

    /* Wrong base model: the adapter against llama-2-tiny-random (n_embd 8). */
    struct mc_model *other;
    struct mc_lora_base ob;
    assert_int_equal(mc_model_load(shared("models/llama-2-tiny-random.gguf"), &other, &err), MC_OK);
    mc_lora_base_from_model(other, &ob);
    assert_int_equal(mc_lora_open(shared("models/stories260K-lora-r4.gguf"), &ob, &l, &err),
                     MC_EINVAL);
    assert_non_null(strstr(err.msg, "blk.0.attn_q.weight: adapter maps 64 -> 64"));
    assert_int_equal(mc_lora_open(shared("models/stories260K-lora-r4-peft"), &ob, &l, &err),
                     MC_EINVAL);
    assert_non_null(strstr(err.msg, "blk.0.attn_q.weight"));
    mc_model_free(other);

    /* Another architecture; a model file instead of an adapter. */
    struct mc_lora_base qb = base;
    strcpy(qb.arch, "qwen2");
    assert_int_equal(mc_lora_open(shared("models/stories260K-lora-r4.gguf"), &qb, &l, &err),
                     MC_EINVAL);
    assert_non_null(strstr(err.msg, "architecture 'llama' does not match the model's 'qwen2'"));
    assert_int_equal(mc_lora_open(shared("models/stories260K.gguf"), &base, &l, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "missing metadata key general.type"));
    assert_int_equal(mc_lora_open("/nonexistent/adapter.gguf", &base, &l, &err), MC_EIO);
    assert_null(l);
}

/* ---- Cache ------------------------------------------------------------------------- */

struct loader_state {
    int calls;
    char last[32];
    uint64_t last_version;
};

/* Adapters of rank 1 + (id number % 3) on q, seeded by id and version; "bad*" fails. */
static int loader(void *user, const char *id, uint64_t version, struct mc_lora **out,
                  struct mc_err *err) {
    struct loader_state *st = user;
    st->calls++;
    snprintf(st->last, sizeof(st->last), "%s", id);
    st->last_version = version;
    if (!strncmp(id, "bad", 3))
        return mc_err_set(err, MC_ECRYPTO, "adapter %s: sealed blob does not decrypt", id);
    int num = atoi(id + 1);
    return mc_lora_synth(&base, 2, 1u << MC_PROJ_Q, 0, (uint64_t)num * 1000 + version, id, out,
                         err);
}

static struct mc_lora *get_ok(struct mc_lora_cache *c, const char *id, uint64_t v) {
    struct mc_lora *l = NULL;
    struct mc_err err = {0};
    if (mc_lora_cache_get(c, id, v, &l, &err) != MC_OK)
        fail_msg("cache get %s: %s", id, err.msg);
    return l;
}

static void test_cache_lru_pin_inuse(void **state) {
    (void)state;
    struct loader_state st = {0};
    struct mc_err err = {0};
    struct mc_lora_cache *c;
    struct mc_lora_cache_params p = {.max_entries = 3, .loader = loader, .user = &st};
    assert_int_equal(mc_lora_cache_create(&p, &c, &err), MC_OK);

    /* a1 a2 a3 fill it; touching a1 makes a2 the least recently used. */
    for (int i = 1; i <= 3; i++) {
        char id[16];
        snprintf(id, sizeof(id), "a%d", i);
        mc_lora_release(get_ok(c, id, 1));
    }
    mc_lora_release(get_ok(c, "a1", 1));
    assert_int_equal(st.calls, 3);
    mc_lora_release(get_ok(c, "a4", 1));
    assert_false(mc_lora_cache_contains(c, "a2", 1));
    assert_true(mc_lora_cache_contains(c, "a1", 1));
    assert_true(mc_lora_cache_contains(c, "a3", 1));
    /* Next LRU is a3; pin it, and hold a1 as a running sequence would. */
    assert_int_equal(mc_lora_cache_pin(c, "a3", 1, true, &err), MC_OK);
    struct mc_lora *held = get_ok(c, "a1", 1);
    assert_int_equal(mc_lora_refcount(held), 2);
    mc_lora_release(get_ok(c, "a5", 1)); /* evicts a4 (a3 pinned, a1 in use) */
    assert_false(mc_lora_cache_contains(c, "a4", 1));
    assert_true(mc_lora_cache_contains(c, "a1", 1));
    assert_true(mc_lora_cache_contains(c, "a3", 1));
    assert_true(mc_lora_cache_contains(c, "a5", 1));

    /* With a5 also in use, nothing is evictable: a6 is returned but not kept. */
    struct mc_lora *held5 = get_ok(c, "a5", 1);
    struct mc_lora *a6 = get_ok(c, "a6", 1);
    assert_non_null(a6);
    assert_false(mc_lora_cache_contains(c, "a6", 1));
    assert_int_equal(mc_lora_refcount(a6), 1);
    mc_lora_release(a6);
    assert_int_equal(mc_lora_cache_pin(c, "a7", 1, true, &err), MC_EFULL);
    assert_non_null(strstr(err.msg, "pinned or in-use"));

    /* Versions are part of the key; remove while in use keeps the user's copy. */
    struct mc_lora *v2 = get_ok(c, "a1", 2);
    assert_ptr_not_equal(v2, held);
    assert_int_equal(st.last_version, 2);
    mc_lora_release(v2);
    assert_int_equal(mc_lora_cache_remove(c, "a1"), 1); /* v1 only: v2 did not fit */
    assert_false(mc_lora_cache_contains(c, "a1", 1));
    assert_int_equal(mc_lora_refcount(held), 1);
    assert_float_near(mc_lora_scale(held, 0, MC_PROJ_Q, 1.0f), 1.0, 0); /* still usable */
    mc_lora_release(held);
    mc_lora_release(held5);

    /* Loader errors pass through and are counted. */
    struct mc_lora *l = (struct mc_lora *)1;
    assert_int_equal(mc_lora_cache_get(c, "bad1", 1, &l, &err), MC_ECRYPTO);
    assert_null(l);
    assert_non_null(strstr(err.msg, "does not decrypt"));

    struct mc_lora_cache_stats s;
    mc_lora_cache_stats(c, &s);
    assert_int_equal(s.hits, 4);   /* a1, a3 (pin), a1 (held), a5 */
    assert_int_equal(s.misses, 9); /* a1-a6, a7, a1 v2, bad1 */
    assert_int_equal(s.evictions, 2);
    assert_int_equal(s.load_errors, 1);
    assert_int_equal(s.n_resident, 2); /* a3 (pinned), a5 */

    /* Unpinning makes a3 evictable again. */
    assert_int_equal(mc_lora_cache_pin(c, "a3", 1, false, &err), MC_OK);
    mc_lora_release(get_ok(c, "a8", 1));
    mc_lora_release(get_ok(c, "a9", 1));
    assert_false(mc_lora_cache_contains(c, "a3", 1));
    mc_lora_cache_free(c);
}

static void test_cache_byte_budget(void **state) {
    (void)state;
    struct loader_state st = {0};
    struct mc_err err = {0};
    struct mc_lora *probe;
    assert_int_equal(mc_lora_synth(&base, 2, 1u << MC_PROJ_Q, 0, 1, "probe", &probe, &err), MC_OK);
    size_t one = mc_lora_info(probe)->resident_bytes;
    /* q: 5 layers × rank 2 × (64 + 64) floats, plus the object, pair and slot tables. */
    assert_true(one >= 5 * 2 * 128 * sizeof(float) && one < 5 * 2 * 128 * sizeof(float) + 2048);
    mc_lora_release(probe);
    struct mc_lora_cache *c;
    struct mc_lora_cache_params p = {
        .budget_bytes = 2 * one + one / 2, .loader = loader, .user = &st};
    assert_int_equal(mc_lora_cache_create(&p, &c, &err), MC_OK);
    for (int i = 0; i < 10; i++) {
        char id[16];
        snprintf(id, sizeof(id), "b%d", i);
        mc_lora_release(get_ok(c, id, 1));
        struct mc_lora_cache_stats s;
        mc_lora_cache_stats(c, &s);
        assert_true(s.resident_bytes <= p.budget_bytes);
        assert_int_equal(s.n_resident, i < 2 ? i + 1 : 2);
    }
    assert_true(mc_lora_cache_contains(c, "b9", 1));
    assert_true(mc_lora_cache_contains(c, "b8", 1));
    mc_lora_cache_free(c);
}

/* ---- Command lines ---------------------------------------------------------------- */

/* Runs a shell command, captures stdout+stderr into out, returns the exit status. */
/* Exit codes 0 ok, 1 runtime error, 2 usage error: mcai's help lists every lora
 * subcommand, a bad --targets and a bad --lora scale are usage errors with a message
 * naming the value, a colon in an existing path is still a path, and bench_lora --help
 * prints its usage. */
static void test_cli_lora_usage_and_exit_codes(void **state) {
    (void)state;
    const char *mcai = getenv("MCAI"), *build = getenv("BUILD");
    if (!mcai || !*mcai)
        mcai = "build/mcai";
    char cmd[2048], out[8192], link[64];
    const char *m = shared("models/stories260K.gguf");
    const char *a = shared("models/stories260K-lora-r4.gguf");

    snprintf(cmd, sizeof(cmd), "%s --help 2>&1", mcai);
    assert_int_equal(test_run_cmd(cmd, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "(info, convert, merge, synth)"));

    snprintf(cmd, sizeof(cmd), "%s lora synth --like %s --rank 2 --targets foo -o /dev/null 2>&1",
             mcai, m);
    assert_int_equal(test_run_cmd(cmd, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "unknown target 'foo'"));

    static const char *const bad_scales[] = {"inf", "1e40", "abc", "nan", "-1", "17", "3e38"};
    for (size_t i = 0; i < sizeof(bad_scales) / sizeof(bad_scales[0]); i++) {
        char want[64];
        snprintf(cmd, sizeof(cmd), "%s generate -m %s -p hi -n 2 --lora %s:%s 2>&1", mcai, m, a,
                 bad_scales[i]);
        assert_int_equal(test_run_cmd(cmd, out, sizeof(out)), 2);
        snprintf(want, sizeof(want), "scale '%s' is not a number from 0 to 16", bad_scales[i]);
        if (!strstr(out, want) || strstr(out, "No such file"))
            fail_msg("--lora FILE:%s: output lacks \"%s\": %.300s", bad_scales[i], want, out);
    }
    snprintf(cmd, sizeof(cmd), "%s generate -m %s -p hi -n 2 --ids --lora %s:0.5 2>/dev/null",
             mcai, m, a);
    assert_int_equal(test_run_cmd(cmd, out, sizeof(out)), 0);
    /* A scale below float's smallest is 0: the base model's tokens, not an error. */
    char base_ids[512];
    const char *gen = "generate -p 'Once upon a time' -n 24 --temp 0 --ids";
    snprintf(cmd, sizeof(cmd), "%s %s -m %s 2>/dev/null", mcai, gen, m);
    assert_int_equal(test_run_cmd(cmd, base_ids, sizeof(base_ids)), 0);
    snprintf(cmd, sizeof(cmd), "%s %s -m %s --lora %s:1e-320 2>/dev/null", mcai, gen, m, a);
    assert_int_equal(test_run_cmd(cmd, out, sizeof(out)), 0);
    assert_string_equal(out, base_ids);
    snprintf(cmd, sizeof(cmd), "%s %s -m %s --lora %s 2>/dev/null", mcai, gen, m, a);
    assert_int_equal(test_run_cmd(cmd, out, sizeof(out)), 0);
    assert_string_not_equal(out, base_ids);
    snprintf(link, sizeof(link), "/tmp/test_lora_cli_%d:v2.gguf", (int)getpid());
    char target[1024];
    assert_non_null(realpath(a, target));
    assert_int_equal(symlink(target, link), 0);
    snprintf(cmd, sizeof(cmd), "%s generate -m %s -p hi -n 2 --ids --lora %s 2>&1", mcai, m, link);
    int rc = test_run_cmd(cmd, out, sizeof(out));
    snprintf(cmd, sizeof(cmd), "%s generate -m %s -p hi -n 2 --ids --lora %s:0.5 2>&1", mcai, m,
             link);
    int rc_scaled = test_run_cmd(cmd, out, sizeof(out));
    unlink(link);
    assert_int_equal(rc, 0);
    assert_int_equal(rc_scaled, 0);

    snprintf(cmd, sizeof(cmd), "%s/bench/bench_lora --help 2>&1", build && *build ? build : "build");
    assert_int_equal(test_run_cmd(cmd, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "usage: bench_lora [MODEL]"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_gguf),
        cmocka_unit_test(test_reference_peft),
        cmocka_unit_test(test_peft_permutation),
        cmocka_unit_test(test_peft_k_permutation),
        cmocka_unit_test(test_convert_roundtrip),
        cmocka_unit_test(test_scales),
        cmocka_unit_test(test_merge_equals_adapter),
        cmocka_unit_test(test_batch_16_adapters),
        cmocka_unit_test(test_batch_pool_paths),
        cmocka_unit_test(test_kernels_agree),
        cmocka_unit_test(test_f16_storage_and_kernels),
        cmocka_unit_test(test_f16_nan_refused),
        cmocka_unit_test(test_q8_residency),
        cmocka_unit_test(test_q8_convert_matches_reference),
        cmocka_unit_test(test_no_hook_is_error),
        cmocka_unit_test(test_peft_config_errors),
        cmocka_unit_test(test_gguf_errors),
        cmocka_unit_test(test_cache_lru_pin_inuse),
        cmocka_unit_test(test_cache_byte_budget),
        cmocka_unit_test(test_cli_lora_usage_and_exit_codes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
