/* test_gguf.c - the GGUF reader on the real test models, the writer round trip, one
 * hand-made malformed file per failure class (each must give MC_EFORMAT naming the field
 * and the byte offset), truncation at many lengths, and allocation failures. Malformed
 * files are built byte by byte with the small builder below so that the offset of the
 * bad field is known exactly. */
#include "base/err.h"
#include "base/mem.h"
#include "model/gguf.h"
#include "test_util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- Helpers ---------------------------------------------------------------------------- */

static struct mc_gguf *open_shared(const char *rel) {
    char path[512];
    struct mc_gguf *g = NULL;
    struct mc_err err = {0};
    int rc = mc_gguf_open(test_shared_path(path, sizeof(path), rel), &g, &err);
    if (rc != MC_OK)
        fail_msg("open %s: %s", path, err.msg);
    return g;
}

static uint8_t *read_whole(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return buf;
}

static void tmp_path(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "/tmp/test_gguf_%ld_%s", (long)getpid(), name);
}

static void assert_str_n(const char *s, uint64_t n, const char *want) {
    if (n != strlen(want) || memcmp(s, want, n) != 0)
        fail_msg("got '%.*s' (%llu bytes), want '%s'", (int)n, s, (unsigned long long)n, want);
}

/* A byte builder for hand-made files. */
struct bld {
    uint8_t d[8192];
    size_t n;
};

static void put(struct bld *b, const void *p, size_t n) {
    assert_true(b->n + n <= sizeof(b->d));
    memcpy(b->d + b->n, p, n);
    b->n += n;
}

static void put_u32(struct bld *b, uint32_t v) {
    put(b, &v, 4);
}

static void put_u64(struct bld *b, uint64_t v) {
    put(b, &v, 8);
}

static void put_str(struct bld *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}

static void put_header(struct bld *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    b->n = 0;
    put(b, "GGUF", 4);
    put_u32(b, version);
    put_u64(b, n_tensors);
    put_u64(b, n_kv);
}

static void put_kv_u32(struct bld *b, const char *key, uint32_t v) {
    put_str(b, key);
    put_u32(b, MC_GGUF_UINT32);
    put_u32(b, v);
}

/* Writes a tensor info; returns the offset of its first ne. */
static size_t put_tensor(struct bld *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                         uint32_t type, uint64_t offset) {
    put_str(b, name);
    put_u32(b, n_dims);
    size_t ne_at = b->n;
    for (uint32_t d = 0; d < n_dims; d++)
        put_u64(b, ne[d]);
    put_u32(b, type);
    put_u64(b, offset);
    return ne_at;
}

static void put_pad(struct bld *b, size_t align) {
    static const uint8_t zero[64];
    put(b, zero, (align - b->n % align) % align);
}

static void put_zeros(struct bld *b, size_t n) {
    assert_true(b->n + n <= sizeof(b->d));
    memset(b->d + b->n, 0, n);
    b->n += n;
}

/* Opens b as "bad.gguf" and checks for MC_EFORMAT, the file name, the field and the exact
 * offset in the message. */
static void expect_bad(const struct bld *b, const char *field, size_t offset) {
    struct mc_gguf *g = NULL;
    struct mc_err err = {0};
    int rc = mc_gguf_open_buffer(b->d, b->n, "bad.gguf", &g, &err);
    if (rc != MC_EFORMAT)
        fail_msg("expected MC_EFORMAT for field '%s', got %d (%s)", field, rc, err.msg);
    assert_null(g);
    char want[64];
    snprintf(want, sizeof(want), " at offset %zu:", offset);
    if (strncmp(err.msg, "bad.gguf: ", 10) != 0 || !strstr(err.msg, field) ||
        !strstr(err.msg, want))
        fail_msg("message '%s' lacks the file, field '%s' or '%s'", err.msg, field, want);
}

/* A valid two-tensor file used as the base of several malformed ones. */
static void put_valid(struct bld *b) {
    put_header(b, 3, 2, 1);
    put_kv_u32(b, "general.alignment", 32);
    uint64_t ne[2] = {8, 2};
    put_tensor(b, "a", 2, ne, MC_TYPE_F32, 0);
    put_tensor(b, "b", 1, ne, MC_TYPE_F32, 64);
    put_pad(b, 32);
    put_zeros(b, 96);
}

/* ---- Real models ------------------------------------------------------------------------ */

static void test_gguf_reads_stories260k_metadata(void **state) {
    (void)state;
    struct mc_gguf *g = open_shared("models/stories260K.gguf");
    struct mc_err err = {0};
    assert_int_equal(mc_gguf_version(g), 3);
    assert_int_equal(mc_gguf_alignment(g), 32);
    assert_int_equal(mc_gguf_n_kv(g), 19);
    assert_int_equal(mc_gguf_n_tensors(g), 48);
    assert_int_equal(mc_gguf_data_offset(g), 14176);
    assert_int_equal(mc_gguf_file_size(g), 1185376);

    const char *s;
    uint64_t n;
    assert_int_equal(mc_gguf_get_str(g, "general.architecture", &s, &n, &err), MC_OK);
    assert_str_n(s, n, "llama");
    uint32_t u;
    struct {
        const char *key;
        uint32_t want;
    } hp[] = {
        {"llama.context_length", 2048},       {"llama.embedding_length", 64},
        {"llama.feed_forward_length", 172},   {"llama.attention.head_count", 8},
        {"llama.attention.head_count_kv", 4}, {"llama.block_count", 5},
        {"llama.rope.dimension_count", 8},    {"tokenizer.ggml.bos_token_id", 1},
        {"tokenizer.ggml.eos_token_id", 2},   {"tokenizer.ggml.padding_token_id", UINT32_MAX}};
    for (size_t i = 0; i < sizeof(hp) / sizeof(hp[0]); i++) {
        assert_int_equal(mc_gguf_get_u32(g, hp[i].key, &u, &err), MC_OK);
        assert_int_equal(u, hp[i].want);
    }
    float eps;
    assert_int_equal(mc_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &eps, &err),
                     MC_OK);
    assert_float_near(eps, 1e-5, 1e-12);
    assert_int_equal(mc_gguf_get_u32(g, "llama.rope.freq_base", &u, &err), MC_ENOTFOUND);

    int64_t i = mc_gguf_find_key(g, "tokenizer.ggml.tokens");
    assert_true(i >= 0);
    assert_string_equal(mc_gguf_key_name(g, i), "tokenizer.ggml.tokens");
    assert_int_equal(mc_gguf_key_type(g, i), MC_GGUF_ARRAY);
    assert_int_equal(mc_gguf_arr_type(g, i), MC_GGUF_STRING);
    assert_int_equal(mc_gguf_arr_n(g, i), 512);
    assert_null(mc_gguf_arr_data(g, i));
    s = mc_gguf_arr_str(g, i, 1, &n);
    assert_str_n(s, n, "<s>");
    s = mc_gguf_arr_str(g, i, 300, &n);
    assert_str_n(s, n, "\xe2\x96\x81ha");
    assert_null(mc_gguf_arr_str(g, i, 512, &n));

    i = mc_gguf_find_key(g, "tokenizer.ggml.scores");
    assert_int_equal(mc_gguf_arr_type(g, i), MC_GGUF_FLOAT32);
    const float *scores = mc_gguf_arr_data(g, i);
    assert_int_equal((uintptr_t)scores % sizeof(float), 0);
    assert_float_near(scores[300], -41.0f, 0);
    assert_float_near(scores[511], -252.0f, 0);
    i = mc_gguf_find_key(g, "tokenizer.ggml.token_type");
    assert_int_equal(mc_gguf_arr_type(g, i), MC_GGUF_INT32);
    const int32_t *tt = mc_gguf_arr_data(g, i);
    assert_int_equal(tt[0], 2);
    assert_int_equal(tt[1], 3);
    assert_int_equal(tt[3], 6);
    assert_int_equal(mc_gguf_find_key(g, "no.such.key"), -1);
    mc_gguf_close(g);
}

static void test_gguf_reads_stories260k_tensors(void **state) {
    (void)state;
    struct mc_gguf *g = open_shared("models/stories260K.gguf");
    const struct mc_gguf_tensor *t = mc_gguf_tensor(g, 0);
    assert_string_equal(t->name, "token_embd.weight");
    assert_int_equal(t->type, MC_TYPE_F32);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 64);
    assert_int_equal(t->ne[1], 512);
    assert_int_equal(t->ne[2], 1);
    assert_int_equal(t->size_bytes, 64 * 512 * 4);

    const struct mc_gguf_tensor *out = mc_gguf_find_tensor(g, "output.weight");
    assert_non_null(out);
    assert_int_equal(out->offset, 131328);
    /* The README says output.weight is a copy of token_embd.weight. */
    assert_memory_equal(out->data, t->data, t->size_bytes);

    const struct mc_gguf_tensor *norm = mc_gguf_find_tensor(g, "output_norm.weight");
    assert_int_equal(norm->n_dims, 1);
    assert_int_equal(norm->ne[0], 64);
    assert_float_near(((const float *)norm->data)[0], 2.4583089351654053, 1e-7);
    assert_float_near(((const float *)norm->data)[3], 1.1078318357467651, 1e-7);

    const struct mc_gguf_tensor *down = mc_gguf_find_tensor(g, "blk.4.ffn_down.weight");
    assert_int_equal(down->ne[0], 172);
    assert_int_equal(down->ne[1], 64);
    assert_int_equal(down->offset, 1082880);
    const struct mc_gguf_tensor *k = mc_gguf_find_tensor(g, "blk.0.attn_k.weight");
    assert_int_equal(k->ne[0], 64);
    assert_int_equal(k->ne[1], 32);
    assert_null(mc_gguf_find_tensor(g, "blk.5.attn_k.weight"));
    assert_null(mc_gguf_tensor(g, 48));
    mc_gguf_close(g);
}

static void test_gguf_reads_quantized_and_f16_models(void **state) {
    (void)state;
    struct mc_gguf *g = open_shared("models/stories260K-Q8_0.gguf");
    const struct mc_gguf_tensor *t = mc_gguf_find_tensor(g, "token_embd.weight");
    assert_int_equal(t->type, MC_TYPE_Q8_0);
    assert_int_equal(t->size_bytes, 512 * 64 / 32 * 34);
    assert_int_equal(mc_gguf_find_tensor(g, "blk.0.ffn_down.weight")->type, MC_TYPE_F32);
    uint32_t ft;
    assert_int_equal(mc_gguf_get_u32(g, "general.file_type", &ft, NULL), MC_OK);
    assert_int_equal(ft, 7);
    mc_gguf_close(g);

    g = open_shared("models/stories260K-Q4_0.gguf");
    t = mc_gguf_find_tensor(g, "blk.2.attn_q.weight");
    assert_int_equal(t->type, MC_TYPE_Q4_0);
    assert_int_equal(t->size_bytes, 64 * 64 / 32 * 18);
    assert_int_equal(mc_gguf_n_tensors(g), 48);
    mc_gguf_close(g);

    g = open_shared("models/llama-2-tiny-random.gguf");
    assert_int_equal(mc_gguf_n_tensors(g), 12);
    assert_int_equal(mc_gguf_arr_n(g, mc_gguf_find_key(g, "tokenizer.ggml.tokens")), 32000);
    t = mc_gguf_find_tensor(g, "token_embd.weight");
    assert_int_equal(t->type, MC_TYPE_F16);
    assert_int_equal(t->ne[1], 32000);
    const char *s;
    uint64_t n;
    assert_int_equal(mc_gguf_get_str(g, "general.name", &s, &n, NULL), MC_OK);
    assert_str_n(s, n, "LLaMA v2");
    mc_gguf_close(g);

    g = open_shared("models/stories260K-lora-r4.gguf");
    float alpha;
    assert_int_equal(mc_gguf_get_f32(g, "adapter.lora.alpha", &alpha, NULL), MC_OK);
    assert_float_near(alpha, 8.0, 0);
    assert_int_equal(mc_gguf_find_tensor(g, "blk.0.attn_v.weight.lora_b")->ne[1], 32);
    mc_gguf_close(g);
}

static void test_gguf_getters_convert_or_name_the_key(void **state) {
    (void)state;
    struct mc_gguf_writer *w;
    struct mc_err err = {0};
    assert_int_equal(mc_gguf_writer_create(&w, &err), MC_OK);
    int64_t big = INT64_C(5000000000), neg = -7;
    assert_int_equal(mc_gguf_writer_set_i32(w, "neg", -1, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_val(w, "big", MC_GGUF_INT64, &big, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_val(w, "neg64", MC_GGUF_INT64, &neg, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_str(w, "name", "x", 1, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_u32(w, "n", 12, &err), MC_OK);
    char path[256];
    tmp_path(path, sizeof(path), "getters.gguf");
    assert_int_equal(mc_gguf_writer_write(w, path, &err), MC_OK);
    mc_gguf_writer_free(w);

    struct mc_gguf *g;
    assert_int_equal(mc_gguf_open(path, &g, &err), MC_OK);
    uint32_t u;
    int64_t i;
    float f;
    bool b;
    assert_int_equal(mc_gguf_get_u32(g, "neg", &u, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "'neg'"));
    assert_int_equal(mc_gguf_get_u32(g, "big", &u, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "5000000000"));
    assert_int_equal(mc_gguf_get_i64(g, "big", &i, &err), MC_OK);
    assert_int_equal(i, big);
    assert_int_equal(mc_gguf_get_i64(g, "neg64", &i, &err), MC_OK);
    assert_int_equal(i, -7);
    assert_int_equal(mc_gguf_get_f32(g, "n", &f, &err), MC_OK);
    assert_float_near(f, 12.0, 0);
    assert_int_equal(mc_gguf_get_u32(g, "name", &u, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "'name'"));
    assert_int_equal(mc_gguf_get_bool(g, "n", &b, &err), MC_EFORMAT);
    assert_int_equal(mc_gguf_get_bool(g, "absent", &b, &err), MC_ENOTFOUND);
    mc_gguf_close(g);
    unlink(path);
}

/* ---- Writer round trip ------------------------------------------------------------------- */

static const char *const rt_strs[] = {"alpha", "", "\xe2\x96\x81ha", "with\0nul"};
static const uint64_t rt_lens[] = {5, 0, 5, 8};

static void write_round_trip_file(const char *path) {
    struct mc_gguf_writer *w;
    struct mc_err err = {0};
    assert_int_equal(mc_gguf_writer_create(&w, &err), MC_OK);

    /* One scalar of every fixed-size type, then strings and arrays. */
    uint8_t u8 = 200;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    uint64_t u64 = UINT64_C(18000000000000000000);
    int64_t i64 = INT64_MIN;
    double f64 = 3.141592653589793;
    assert_int_equal(mc_gguf_writer_set_val(w, "t.u8", MC_GGUF_UINT8, &u8, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_val(w, "t.i8", MC_GGUF_INT8, &i8, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_val(w, "t.u16", MC_GGUF_UINT16, &u16, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_val(w, "t.i16", MC_GGUF_INT16, &i16, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_u32(w, "t.u32", 4000000000u, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_i32(w, "t.i32", -2000000000, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_f32(w, "t.f32", 0.1f, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_bool(w, "t.bool", true, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_val(w, "t.u64", MC_GGUF_UINT64, &u64, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_val(w, "t.i64", MC_GGUF_INT64, &i64, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_val(w, "t.f64", MC_GGUF_FLOAT64, &f64, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_str(w, "t.str", "first", 5, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_str(w, "t.str", "hello", 5, &err), MC_OK); /* replaces */
    assert_int_equal(mc_gguf_writer_set_str(w, "t.empty", "", 0, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_u32(w, "general.alignment", 32, &err), MC_OK);

    uint8_t a8[3] = {1, 2, 255};
    int16_t a16[2] = {-1, 32767};
    float af[5] = {1.5f, -2.0f, 0.0f, 1e30f, -1e-30f};
    uint8_t ab[4] = {1, 0, 0, 1};
    int64_t a64[2] = {INT64_MAX, -1};
    double ad[1] = {-0.25};
    assert_int_equal(mc_gguf_writer_set_arr(w, "a.u8", MC_GGUF_UINT8, a8, 3, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_arr(w, "a.i16", MC_GGUF_INT16, a16, 2, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_arr(w, "a.f32", MC_GGUF_FLOAT32, af, 5, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_arr(w, "a.bool", MC_GGUF_BOOL, ab, 4, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_arr(w, "a.i64", MC_GGUF_INT64, a64, 2, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_arr(w, "a.f64", MC_GGUF_FLOAT64, ad, 1, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_arr(w, "a.none", MC_GGUF_UINT32, NULL, 0, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_set_arr_str(w, "a.str", rt_strs, rt_lens, 4, &err), MC_OK);

    /* Tensors of several types and ranks; contents are a byte ramp. */
    static uint8_t data[4 * 34 * 3];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 7 + 3);
    int64_t ne_f32[1] = {3};
    int64_t ne_q8[3] = {64, 2, 1};
    int64_t ne_f16[4] = {2, 1, 3, 2};
    int64_t ne_q4k[2] = {256, 1};
    assert_int_equal(mc_gguf_writer_add_tensor(w, "t.f32", MC_TYPE_F32, 1, ne_f32, data, &err),
                     MC_OK);
    assert_int_equal(mc_gguf_writer_add_tensor(w, "t.q8", MC_TYPE_Q8_0, 3, ne_q8, data, &err),
                     MC_OK);
    assert_int_equal(mc_gguf_writer_add_tensor(w, "t.f16", MC_TYPE_F16, 4, ne_f16, data, &err),
                     MC_OK);
    assert_int_equal(mc_gguf_writer_add_tensor(w, "t.q4k", MC_TYPE_Q4_K, 2, ne_q4k, data, &err),
                     MC_OK);
    assert_int_equal(mc_gguf_writer_add_tensor(w, "t.bf16", MC_TYPE_BF16, 1, ne_f32, data, &err),
                     MC_OK);
    assert_int_equal(mc_gguf_writer_write(w, path, &err), MC_OK);
    mc_gguf_writer_free(w);
}

static void check_round_trip_values(const struct mc_gguf *g) {
    struct mc_err err = {0};
    const struct {
        const char *key;
        enum mc_gguf_vtype t;
        size_t size;
        uint64_t bits;
    } scalars[] = {
        {"t.u8", MC_GGUF_UINT8, 1, 200},
        {"t.i8", MC_GGUF_INT8, 1, (uint8_t)-100},
        {"t.u16", MC_GGUF_UINT16, 2, 60000},
        {"t.i16", MC_GGUF_INT16, 2, (uint16_t)-30000},
        {"t.u32", MC_GGUF_UINT32, 4, 4000000000u},
        {"t.i32", MC_GGUF_INT32, 4, (uint32_t)-2000000000},
        {"t.bool", MC_GGUF_BOOL, 1, 1},
        {"t.u64", MC_GGUF_UINT64, 8, UINT64_C(18000000000000000000)},
        {"t.i64", MC_GGUF_INT64, 8, UINT64_C(0x8000000000000000)},
    };
    for (size_t k = 0; k < sizeof(scalars) / sizeof(scalars[0]); k++) {
        int64_t i = mc_gguf_find_key(g, scalars[k].key);
        assert_true(i >= 0);
        assert_int_equal(mc_gguf_key_type(g, i), scalars[k].t);
        uint64_t bits = 0;
        memcpy(&bits, mc_gguf_val_data(g, i), scalars[k].size);
        assert_int_equal(bits, scalars[k].bits);
    }
    float f;
    assert_int_equal(mc_gguf_get_f32(g, "t.f32", &f, &err), MC_OK);
    assert_true(f == 0.1f);
    double d;
    memcpy(&d, mc_gguf_val_data(g, mc_gguf_find_key(g, "t.f64")), 8);
    assert_true(d == 3.141592653589793);
    int64_t i64;
    assert_int_equal(mc_gguf_get_i64(g, "t.i64", &i64, &err), MC_OK);
    assert_true(i64 == INT64_MIN);
    assert_int_equal(mc_gguf_get_i64(g, "t.i8", &i64, &err), MC_OK);
    assert_int_equal(i64, -100);
    assert_int_equal(mc_gguf_get_i64(g, "t.i16", &i64, &err), MC_OK);
    assert_int_equal(i64, -30000);
    assert_int_equal(mc_gguf_get_i64(g, "t.u64", &i64, &err), MC_EFORMAT);
    uint32_t u32;
    assert_int_equal(mc_gguf_get_u32(g, "t.u16", &u32, &err), MC_OK);
    assert_int_equal(u32, 60000);
    assert_int_equal(mc_gguf_get_u32(g, "t.i16", &u32, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "-30000"));
    assert_int_equal(mc_gguf_get_f32(g, "t.i32", &f, &err), MC_OK);
    assert_true(f == -2000000000.0f);
    bool b;
    assert_int_equal(mc_gguf_get_bool(g, "t.bool", &b, &err), MC_OK);
    assert_true(b);
    const char *s;
    uint64_t n;
    assert_int_equal(mc_gguf_get_str(g, "t.str", &s, &n, &err), MC_OK);
    assert_str_n(s, n, "hello");
    assert_int_equal(mc_gguf_get_str(g, "t.empty", &s, &n, &err), MC_OK);
    assert_int_equal(n, 0);

    int64_t i = mc_gguf_find_key(g, "a.f32");
    assert_int_equal(mc_gguf_arr_n(g, i), 5);
    const float *af = mc_gguf_arr_data(g, i);
    assert_true(af[0] == 1.5f && af[3] == 1e30f && af[4] == -1e-30f);
    i = mc_gguf_find_key(g, "a.i64");
    assert_int_equal(mc_gguf_arr_type(g, i), MC_GGUF_INT64);
    assert_true(((const int64_t *)mc_gguf_arr_data(g, i))[0] == INT64_MAX);
    assert_memory_equal(mc_gguf_arr_data(g, mc_gguf_find_key(g, "a.bool")), "\1\0\0\1", 4);
    assert_memory_equal(mc_gguf_arr_data(g, mc_gguf_find_key(g, "a.u8")), "\1\2\377", 3);
    assert_int_equal(mc_gguf_arr_n(g, mc_gguf_find_key(g, "a.none")), 0);
    i = mc_gguf_find_key(g, "a.str");
    assert_int_equal(mc_gguf_arr_n(g, i), 4);
    for (uint64_t j = 0; j < 4; j++) {
        s = mc_gguf_arr_str(g, i, j, &n);
        assert_int_equal(n, rt_lens[j]);
        assert_memory_equal(s, rt_strs[j], n);
    }
}

static void check_round_trip_tensors(const struct mc_gguf *g) {
    static uint8_t data[4 * 34 * 3];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 7 + 3);
    const struct {
        const char *name;
        enum mc_type type;
        int n_dims;
        int64_t ne[4];
        size_t size;
    } want[] = {
        {"t.f32", MC_TYPE_F32, 1, {3, 1, 1, 1}, 12},
        {"t.q8", MC_TYPE_Q8_0, 3, {64, 2, 1, 1}, 136},
        {"t.f16", MC_TYPE_F16, 4, {2, 1, 3, 2}, 24},
        {"t.q4k", MC_TYPE_Q4_K, 2, {256, 1, 1, 1}, 144},
        {"t.bf16", MC_TYPE_BF16, 1, {3, 1, 1, 1}, 6},
    };
    assert_int_equal(mc_gguf_n_tensors(g), 5);
    for (int k = 0; k < 5; k++) {
        const struct mc_gguf_tensor *t = mc_gguf_tensor(g, k);
        assert_string_equal(t->name, want[k].name);
        assert_int_equal(t->type, want[k].type);
        assert_int_equal(t->n_dims, want[k].n_dims);
        for (int d = 0; d < 4; d++)
            assert_int_equal(t->ne[d], want[k].ne[d]);
        assert_int_equal(t->size_bytes, want[k].size);
        assert_int_equal(t->offset % 32, 0);
        assert_memory_equal(t->data, data, t->size_bytes);
        assert_ptr_equal(mc_gguf_find_tensor(g, want[k].name), t);
    }
}

static void test_gguf_writer_round_trip_is_exact(void **state) {
    (void)state;
    char path[256], path2[256];
    tmp_path(path, sizeof(path), "rt.gguf");
    tmp_path(path2, sizeof(path2), "rt2.gguf");
    write_round_trip_file(path);

    struct mc_gguf *g;
    struct mc_err err = {0};
    assert_int_equal(mc_gguf_open(path, &g, &err), MC_OK);
    assert_int_equal(mc_gguf_version(g), 3);
    assert_int_equal(mc_gguf_alignment(g), 32);
    assert_int_equal(mc_gguf_data_offset(g) % 32, 0);
    assert_int_equal(mc_gguf_n_kv(g), 22);
    check_round_trip_values(g);
    check_round_trip_tensors(g);

    /* Copying every key and tensor into a new writer gives the same bytes. */
    struct mc_gguf_writer *w;
    assert_int_equal(mc_gguf_writer_create(&w, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_copy_kv(w, g, NULL, &err), MC_OK);
    for (int64_t k = 0; k < mc_gguf_n_tensors(g); k++) {
        const struct mc_gguf_tensor *t = mc_gguf_tensor(g, k);
        assert_int_equal(
            mc_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, &err), MC_OK);
    }
    assert_int_equal(mc_gguf_writer_write(w, path2, &err), MC_OK);
    mc_gguf_writer_free(w);
    mc_gguf_close(g);

    size_t n1, n2;
    uint8_t *b1 = read_whole(path, &n1), *b2 = read_whole(path2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);
    free(b1);
    free(b2);
    assert_int_equal(access(path2, F_OK), 0);
    char tmp[300];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path2);
    assert_int_equal(access(tmp, F_OK), -1);
    unlink(path);
    unlink(path2);
}

static bool skip_tokenizer(const char *key) {
    return strncmp(key, "tokenizer.", 10) == 0;
}

static void test_gguf_writer_copies_a_real_model(void **state) {
    (void)state;
    char path[256];
    tmp_path(path, sizeof(path), "copy.gguf");
    struct mc_gguf *src = open_shared("models/stories260K.gguf");
    struct mc_gguf_writer *w;
    struct mc_err err = {0};
    assert_int_equal(mc_gguf_writer_create(&w, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_copy_kv(w, src, skip_tokenizer, &err), MC_OK);
    const struct mc_gguf_tensor *t = mc_gguf_find_tensor(src, "blk.0.ffn_down.weight");
    assert_int_equal(
        mc_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_write(w, path, &err), MC_OK);
    mc_gguf_writer_free(w);

    struct mc_gguf *g;
    assert_int_equal(mc_gguf_open(path, &g, &err), MC_OK);
    assert_int_equal(mc_gguf_n_kv(g), 10); /* 19 minus 9 tokenizer keys */
    assert_int_equal(mc_gguf_find_key(g, "tokenizer.ggml.tokens"), -1);
    uint32_t ff;
    assert_int_equal(mc_gguf_get_u32(g, "llama.feed_forward_length", &ff, &err), MC_OK);
    assert_int_equal(ff, 172);
    assert_memory_equal(mc_gguf_tensor(g, 0)->data, t->data, t->size_bytes);
    mc_gguf_close(g);
    mc_gguf_close(src);
    unlink(path);
}

static void test_gguf_writer_rejects_bad_input(void **state) {
    (void)state;
    struct mc_gguf_writer *w;
    struct mc_err err = {0};
    assert_int_equal(mc_gguf_writer_create(&w, &err), MC_OK);
    float x[64] = {0};
    int64_t ne[2] = {48, 1};
    assert_int_equal(mc_gguf_writer_add_tensor(w, "q", MC_TYPE_Q4_0, 2, ne, x, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "row 48 not a multiple of Q4_0 block 32"));
    ne[0] = 0;
    assert_int_equal(mc_gguf_writer_add_tensor(w, "z", MC_TYPE_F32, 1, ne, x, &err), MC_EINVAL);
    ne[0] = 4;
    assert_int_equal(mc_gguf_writer_add_tensor(w, "five", MC_TYPE_F32, 5, ne, x, &err), MC_EINVAL);
    assert_int_equal(mc_gguf_writer_add_tensor(w, "u", (enum mc_type)16, 1, ne, x, &err),
                     MC_EINVAL);
    assert_int_equal(mc_gguf_writer_add_tensor(w, "a", MC_TYPE_F32, 1, ne, x, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_add_tensor(w, "a", MC_TYPE_F32, 1, ne, x, &err), MC_EEXIST);
    assert_int_equal(mc_gguf_writer_add_tensor(w, "", MC_TYPE_F32, 1, ne, x, &err), MC_EINVAL);
    assert_int_equal(mc_gguf_writer_set_u32(w, "general.alignment", 64, &err), MC_EINVAL);
    assert_int_equal(mc_gguf_writer_set_i32(w, "general.alignment", 32, &err), MC_EINVAL);
    assert_int_equal(mc_gguf_writer_set_u32(w, "", 1, &err), MC_EINVAL);
    uint32_t v = 0;
    assert_int_equal(mc_gguf_writer_set_arr(w, "n", MC_GGUF_ARRAY, &v, 1, &err), MC_EINVAL);
    assert_int_equal(mc_gguf_writer_set_arr(w, "s", MC_GGUF_STRING, &v, 1, &err), MC_EINVAL);
    uint8_t two = 2;
    assert_int_equal(mc_gguf_writer_set_arr(w, "b", MC_GGUF_BOOL, &two, 1, &err), MC_EINVAL);
    assert_int_equal(mc_gguf_writer_set_val(w, "s", MC_GGUF_STRING, &v, &err), MC_EINVAL);
    assert_int_equal(mc_gguf_writer_write(w, "/nonexistent-dir/x.gguf", &err), MC_EIO);
    assert_non_null(strstr(err.msg, "/nonexistent-dir/x.gguf.tmp"));
    mc_gguf_writer_free(w);
}

/* ---- Malformed files: one per failure class --------------------------------------------- */

static void test_gguf_rejects_bad_header(void **state) {
    (void)state;
    struct bld b;
    put_valid(&b);
    memcpy(b.d, "GGML", 4);
    expect_bad(&b, "magic", 0);
    b.n = 3;
    expect_bad(&b, "magic", 0);

    put_valid(&b);
    b.d[4] = 1;
    expect_bad(&b, "version", 4);
    struct mc_err err = {0};
    struct mc_gguf *g;
    mc_gguf_open_buffer(b.d, b.n, "v1.gguf", &g, &err);
    assert_non_null(strstr(err.msg, "version 1 is not supported"));
    b.d[4] = 4;
    expect_bad(&b, "version", 4);
    uint32_t be3 = 0x03000000; /* version 3 written big-endian */
    memcpy(b.d + 4, &be3, 4);
    expect_bad(&b, "version", 4);
    mc_gguf_open_buffer(b.d, b.n, "be.gguf", &g, &err);
    assert_non_null(strstr(err.msg, "big-endian"));

    put_header(&b, 3, (1 << 20) + 1, 0);
    expect_bad(&b, "n_tensors", 8);
    put_header(&b, 3, 0, (1 << 20) + 1);
    expect_bad(&b, "n_kv", 16);
    put_header(&b, 3, 0, 1000); /* fits the cap but not the file */
    put_kv_u32(&b, "k", 1);
    expect_bad(&b, "n_kv", 16);
    put_header(&b, 3, 500, 0); /* tensor infos cannot fit */
    put_zeros(&b, 100);
    expect_bad(&b, "n_tensors", 8);
}

/* GGUF v2 has v3's layout (v3 only added big-endian files): a real model with its
 * version field set to 2 reads the same keys and tensors. */
static void test_gguf_reads_version_2(void **state) {
    (void)state;
    char path[512];
    test_shared_path(path, sizeof(path), "models/stories260K.gguf");
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);

    struct mc_err err = {0};
    struct mc_gguf *v3, *v2;
    assert_int_equal(mc_gguf_open_buffer(buf, (size_t)n, "v3.gguf", &v3, &err), MC_OK);
    int64_t n_kv = mc_gguf_n_kv(v3), n_tensors = mc_gguf_n_tensors(v3);
    mc_gguf_close(v3);
    buf[4] = 2;
    assert_int_equal(mc_gguf_open_buffer(buf, (size_t)n, "v2.gguf", &v2, &err), MC_OK);
    assert_int_equal(mc_gguf_version(v2), 2);
    assert_int_equal(mc_gguf_n_kv(v2), n_kv);
    assert_int_equal(mc_gguf_n_tensors(v2), n_tensors);
    assert_non_null(mc_gguf_find_tensor(v2, "blk.4.ffn_down.weight"));
    mc_gguf_close(v2);
    free(buf);
}

static void test_gguf_rejects_bad_keys_and_values(void **state) {
    (void)state;
    struct bld b;
    /* Key length past the end of the file. */
    put_header(&b, 3, 0, 1);
    put_u64(&b, 1000);
    put(&b, "abc", 3);
    put_zeros(&b, 16);
    expect_bad(&b, "kv 0 key", 24);
    /* Key length over the cap. */
    put_header(&b, 3, 0, 1);
    put_u64(&b, UINT64_C(1) << 62);
    put_zeros(&b, 32);
    expect_bad(&b, "kv 0 key", 24);
    /* Empty key. */
    put_header(&b, 3, 0, 1);
    put_str(&b, "");
    put_u32(&b, MC_GGUF_UINT8);
    put_zeros(&b, 8);
    expect_bad(&b, "kv 0 key", 24);
    /* Unknown value type. */
    put_header(&b, 3, 0, 2);
    put_kv_u32(&b, "ok", 1);
    size_t at = b.n + 8 + 5;
    put_str(&b, "weird");
    put_u32(&b, 13);
    put_zeros(&b, 16);
    expect_bad(&b, "kv 1 'weird' type", at);
    /* String value longer than the file. */
    put_header(&b, 3, 0, 1);
    put_str(&b, "s");
    put_u32(&b, MC_GGUF_STRING);
    at = b.n;
    put_u64(&b, 100);
    put(&b, "short", 5);
    expect_bad(&b, "kv 0 's' value", at);
    /* String value over the 64 MiB cap. */
    b.n = at;
    put_u64(&b, (UINT64_C(64) << 20) + 1);
    put_zeros(&b, 16);
    expect_bad(&b, "kv 0 's' value", at);
    /* Bool that is neither 0 nor 1. */
    put_header(&b, 3, 0, 1);
    put_str(&b, "flag");
    put_u32(&b, MC_GGUF_BOOL);
    at = b.n;
    put(&b, "\x02", 1);
    put_zeros(&b, 16);
    expect_bad(&b, "kv 0 'flag' value", at);
    /* Duplicate key: reported at the second occurrence. */
    put_header(&b, 3, 0, 3);
    put_kv_u32(&b, "x", 1);
    put_kv_u32(&b, "y", 1);
    at = b.n;
    put_kv_u32(&b, "x", 2);
    expect_bad(&b, "kv 2 'x' key", at);
}

static void test_gguf_rejects_bad_arrays(void **state) {
    (void)state;
    struct bld b;
    /* Nested array. */
    put_header(&b, 3, 0, 1);
    put_str(&b, "arr");
    put_u32(&b, MC_GGUF_ARRAY);
    size_t at = b.n;
    put_u32(&b, MC_GGUF_ARRAY);
    put_u64(&b, 1);
    put_zeros(&b, 16);
    expect_bad(&b, "kv 0 'arr' array type", at);
    /* Unknown element type. */
    b.n = at;
    put_u32(&b, 77);
    put_u64(&b, 1);
    put_zeros(&b, 16);
    expect_bad(&b, "kv 0 'arr' array type", at);
    /* Numeric count past the end of the file. */
    b.n = at;
    put_u32(&b, MC_GGUF_FLOAT32);
    put_u64(&b, 1000);
    put_zeros(&b, 16);
    expect_bad(&b, "kv 0 'arr' array count", at + 4);
    /* A count whose byte size overflows 64 bits. */
    b.n = at;
    put_u32(&b, MC_GGUF_UINT64);
    put_u64(&b, UINT64_C(1) << 61);
    put_zeros(&b, 16);
    expect_bad(&b, "kv 0 'arr' array count", at + 4);
    /* String array whose count cannot fit. */
    b.n = at;
    put_u32(&b, MC_GGUF_STRING);
    put_u64(&b, 100);
    put_zeros(&b, 16);
    expect_bad(&b, "kv 0 'arr' array count", at + 4);
    /* String element running past the end. */
    b.n = at;
    put_u32(&b, MC_GGUF_STRING);
    put_u64(&b, 2);
    put_str(&b, "ok");
    size_t el = b.n;
    put_u64(&b, 50);
    put(&b, "abc", 3);
    expect_bad(&b, "kv 0 'arr' element 1", el);
    /* A bool element that is neither 0 nor 1. */
    b.n = at;
    put_u32(&b, MC_GGUF_BOOL);
    put_u64(&b, 3);
    put(&b, "\x01\x00\x07", 3);
    expect_bad(&b, "kv 0 'arr' element 2", at + 12 + 2);
}

static void test_gguf_rejects_bad_alignment(void **state) {
    (void)state;
    struct bld b;
    uint32_t bad[] = {0, 48, 3};
    for (int k = 0; k < 3; k++) {
        put_header(&b, 3, 0, 1);
        put_kv_u32(&b, "general.alignment", bad[k]);
        expect_bad(&b, "general.alignment", b.n - 4);
    }
    /* Stored as u64 (seen in the wild) and as i32. */
    put_header(&b, 3, 0, 1);
    put_str(&b, "general.alignment");
    size_t at = b.n;
    put_u32(&b, MC_GGUF_UINT64);
    put_u64(&b, 32);
    expect_bad(&b, "general.alignment", at);
    put_header(&b, 3, 0, 1);
    put_str(&b, "general.alignment");
    put_u32(&b, MC_GGUF_INT32);
    put_u32(&b, 32);
    expect_bad(&b, "general.alignment", at);
    /* A valid non-default alignment is honoured. */
    put_header(&b, 3, 1, 1);
    put_kv_u32(&b, "general.alignment", 64);
    uint64_t ne[1] = {4};
    put_tensor(&b, "t", 1, ne, MC_TYPE_F32, 0);
    put_pad(&b, 64);
    size_t data_at = b.n;
    put_zeros(&b, 16);
    struct mc_gguf *g;
    struct mc_err err = {0};
    assert_int_equal(mc_gguf_open_buffer(b.d, b.n, "a64.gguf", &g, &err), MC_OK);
    assert_int_equal(mc_gguf_alignment(g), 64);
    assert_int_equal(mc_gguf_data_offset(g), data_at);
    assert_int_equal(data_at % 64, 0);

    /* Copying its keys drops the alignment the writer does not use. */
    struct mc_gguf_writer *w;
    assert_int_equal(mc_gguf_writer_create(&w, &err), MC_OK);
    assert_int_equal(mc_gguf_writer_copy_kv(w, g, NULL, &err), MC_OK);
    char path[256];
    tmp_path(path, sizeof(path), "a64_copy.gguf");
    assert_int_equal(mc_gguf_writer_write(w, path, &err), MC_OK);
    mc_gguf_writer_free(w);
    mc_gguf_close(g);
    assert_int_equal(mc_gguf_open(path, &g, &err), MC_OK);
    assert_int_equal(mc_gguf_n_kv(g), 0);
    assert_int_equal(mc_gguf_alignment(g), 32);
    mc_gguf_close(g);
    unlink(path);
}

static void test_gguf_rejects_bad_tensor_shapes(void **state) {
    (void)state;
    struct bld b;
    uint64_t ne[5] = {8, 2, 1, 1, 1};
    /* n_dims 0 and 5. */
    uint32_t dims[] = {0, 5};
    for (int k = 0; k < 2; k++) {
        put_header(&b, 3, 1, 0);
        put_str(&b, "blk.0.attn_q.weight");
        size_t at = b.n;
        put_u32(&b, dims[k]);
        put_zeros(&b, 64);
        expect_bad(&b, "tensor 0 'blk.0.attn_q.weight' n_dims", at);
    }
    /* A zero and a negative dimension. */
    uint64_t zero[2] = {8, 0}, negative[2] = {UINT64_MAX, 2};
    put_header(&b, 3, 1, 0);
    size_t ne_at = put_tensor(&b, "z", 2, zero, MC_TYPE_F32, 0);
    put_zeros(&b, 64);
    expect_bad(&b, "tensor 0 'z' ne[1]", ne_at + 8);
    put_header(&b, 3, 1, 0);
    ne_at = put_tensor(&b, "n", 2, negative, MC_TYPE_F32, 0);
    put_zeros(&b, 64);
    expect_bad(&b, "tensor 0 'n' ne[0]", ne_at);
    /* Element count overflowing 64 bits. */
    uint64_t huge[3] = {UINT64_C(1) << 32, UINT64_C(1) << 30, 4};
    put_header(&b, 3, 1, 0);
    ne_at = put_tensor(&b, "big", 3, huge, MC_TYPE_F32, 0);
    put_zeros(&b, 64);
    expect_bad(&b, "tensor 0 'big' ne[2]", ne_at + 16);
    /* Row length not a multiple of the block size. */
    uint64_t row48[2] = {48, 2};
    put_header(&b, 3, 1, 0);
    ne_at = put_tensor(&b, "q", 2, row48, MC_TYPE_Q4_0, 0);
    put_pad(&b, 32);
    put_zeros(&b, 64);
    expect_bad(&b, "tensor 0 'q' ne[0]", ne_at);
    /* Unknown type (IQ2_XXS is 16; 99 is nothing). */
    uint32_t types[] = {16, 99};
    for (int k = 0; k < 2; k++) {
        put_header(&b, 3, 1, 0);
        ne_at = put_tensor(&b, "u", 2, ne, types[k], 0);
        put_pad(&b, 32);
        put_zeros(&b, 64);
        expect_bad(&b, "tensor 0 'u' type", ne_at + 16);
    }
    /* Tensor name empty, or past the end. */
    put_header(&b, 3, 1, 0);
    put_tensor(&b, "", 1, ne, MC_TYPE_F32, 0);
    put_zeros(&b, 64);
    expect_bad(&b, "tensor 0 name", 24);
}

static void test_gguf_rejects_bad_tensor_placement(void **state) {
    (void)state;
    struct bld b;
    uint64_t ne[2] = {8, 2};
    /* Misaligned offset. */
    put_header(&b, 3, 1, 0);
    size_t ne_at = put_tensor(&b, "m", 2, ne, MC_TYPE_F32, 4);
    put_pad(&b, 32);
    put_zeros(&b, 128);
    expect_bad(&b, "tensor 0 'm' data offset", ne_at + 16 + 4);
    /* Extent past the end of the file, by one byte. */
    put_header(&b, 3, 1, 0);
    ne_at = put_tensor(&b, "e", 2, ne, MC_TYPE_F32, 0);
    put_pad(&b, 32);
    put_zeros(&b, 63);
    expect_bad(&b, "tensor 0 'e' data offset", ne_at + 16 + 4);
    /* Offset far past the end (no wraparound). */
    put_header(&b, 3, 1, 0);
    ne_at = put_tensor(&b, "w", 2, ne, MC_TYPE_F32, UINT64_MAX - 31);
    put_pad(&b, 32);
    put_zeros(&b, 64);
    expect_bad(&b, "tensor 0 'w' data offset", ne_at + 16 + 4);
    /* Overlap: b starts inside a. */
    put_header(&b, 3, 2, 0);
    put_tensor(&b, "a", 2, ne, MC_TYPE_F32, 0);
    ne_at = put_tensor(&b, "b", 2, ne, MC_TYPE_F32, 32);
    put_pad(&b, 32);
    put_zeros(&b, 128);
    expect_bad(&b, "tensor 1 'b' data offset", ne_at + 16 + 4);
    /* Duplicate names. */
    put_header(&b, 3, 3, 0);
    put_tensor(&b, "a", 2, ne, MC_TYPE_F32, 0);
    put_tensor(&b, "c", 2, ne, MC_TYPE_F32, 64);
    size_t dup_at = b.n;
    put_tensor(&b, "a", 2, ne, MC_TYPE_F32, 128);
    put_pad(&b, 32);
    put_zeros(&b, 192);
    expect_bad(&b, "tensor 2 'a' name", dup_at);
    /* Padding to the data section runs past the end. */
    put_header(&b, 3, 1, 0);
    put_tensor(&b, "p", 1, ne, MC_TYPE_F32, 0);
    size_t end = b.n;
    put_zeros(&b, (32 - end % 32) % 32 - 1);
    expect_bad(&b, "data section", end);
    /* A valid file built the same way opens. */
    put_valid(&b);
    struct mc_gguf *g;
    struct mc_err err = {0};
    assert_int_equal(mc_gguf_open_buffer(b.d, b.n, "ok.gguf", &g, &err), MC_OK);
    mc_gguf_close(g);
}

static void test_gguf_names_hostile_names_safely(void **state) {
    (void)state;
    struct bld b;
    put_header(&b, 3, 1, 0);
    put_str(&b, "evil\n\x1b[31m'name");
    put_u32(&b, 7);
    put_zeros(&b, 64);
    struct mc_gguf *g;
    struct mc_err err = {0};
    assert_int_equal(mc_gguf_open_buffer(b.d, b.n, "n.gguf", &g, &err), MC_EFORMAT);
    assert_null(strchr(err.msg, '\n'));
    assert_null(strchr(err.msg, '\x1b'));
    assert_non_null(strstr(err.msg, "'evil??[31m?name' n_dims"));
    /* A NUL inside a key is rejected. */
    put_header(&b, 3, 0, 1);
    put_u64(&b, 3);
    put(&b, "a\0b", 3);
    put_u32(&b, MC_GGUF_UINT8);
    put_zeros(&b, 8);
    expect_bad(&b, "kv 0 key", 24);
}

static void test_gguf_open_reports_path_and_io_errors(void **state) {
    (void)state;
    char path[256];
    tmp_path(path, sizeof(path), "bad_on_disk.gguf");
    struct bld b;
    put_valid(&b);
    b.d[4] = 1;
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(b.d, 1, b.n, f);
    fclose(f);
    struct mc_gguf *g = (struct mc_gguf *)1;
    struct mc_err err = {0};
    assert_int_equal(mc_gguf_open(path, &g, &err), MC_EFORMAT);
    assert_null(g);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "version at offset 4"));

    f = fopen(path, "wb"); /* an empty file */
    fclose(f);
    assert_int_equal(mc_gguf_open(path, &g, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "offset 0"));
    unlink(path);
    assert_int_equal(mc_gguf_open(path, &g, &err), MC_EIO);
    assert_int_equal(mc_gguf_open("/tmp", &g, &err), MC_EIO);
}

/* ---- Truncation and allocation failure -------------------------------------------------- */

static void expect_truncated_fails(const uint8_t *d, size_t n) {
    /* A fresh copy of exactly n bytes, so ASan sees any read past the end. */
    uint8_t *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, d, n);
    struct mc_gguf *g = NULL;
    struct mc_err err = {0};
    int rc = mc_gguf_open_buffer(copy, n, "cut.gguf", &g, &err);
    if (rc != MC_EFORMAT)
        fail_msg("truncated at %zu: rc %d (%s)", n, rc, err.msg);
    assert_non_null(strstr(err.msg, "offset"));
    free(copy);
}

/* Where the last tensor's data ends; a cut after it (in the trailing padding) is valid. */
static size_t data_end(const uint8_t *d, size_t size) {
    struct mc_gguf *g;
    assert_int_equal(mc_gguf_open_buffer(d, size, "whole.gguf", &g, NULL), MC_OK);
    size_t end = 0;
    for (int64_t i = 0; i < mc_gguf_n_tensors(g); i++) {
        const struct mc_gguf_tensor *t = mc_gguf_tensor(g, i);
        size_t e = mc_gguf_data_offset(g) + t->offset + t->size_bytes;
        end = e > end ? e : end;
    }
    mc_gguf_close(g);
    return end;
}

static void test_gguf_truncation_always_fails_cleanly(void **state) {
    (void)state;
    char path[512];
    size_t size;
    uint8_t *d = read_whole(test_shared_path(path, sizeof(path), "models/stories260K.gguf"), &size);
    /* Every cut inside the metadata, then cuts through the data section. */
    size_t end = data_end(d, size);
    assert_int_equal(end, size);
    for (size_t n = 0; n < 14176; n++)
        expect_truncated_fails(d, n);
    for (size_t n = 14176; n < end; n += 997)
        expect_truncated_fails(d, n);
    expect_truncated_fails(d, end - 1);
    free(d);

    /* The same for a small file with every value type. */
    tmp_path(path, sizeof(path), "trunc.gguf");
    write_round_trip_file(path);
    d = read_whole(path, &size);
    end = data_end(d, size);
    assert_int_equal(size - end, 32 - 6); /* the last tensor, 6 bytes, is padded too */
    for (size_t n = 0; n < end; n++)
        expect_truncated_fails(d, n);
    free(d);
    unlink(path);
}

static void test_gguf_allocation_failures_are_clean(void **state) {
    (void)state;
    char path[512];
    test_shared_path(path, sizeof(path), "models/stories260K.gguf");
    int n_ok = 0;
    for (long nth = 1; nth < 200; nth++) {
        struct mc_gguf *g = NULL;
        struct mc_err err = {0};
        mc_mem_fail_after(nth);
        int rc = mc_gguf_open(path, &g, &err);
        mc_mem_fail_after(0);
        if (rc == MC_OK) {
            n_ok++;
            mc_gguf_close(g);
            continue;
        }
        assert_int_equal(rc, MC_ENOMEM);
        assert_null(g);
    }
    assert_true(n_ok > 0); /* the walk went past the last allocation */

    tmp_path(path, sizeof(path), "oom.gguf");
    for (long nth = 1; nth < 120; nth++) {
        mc_mem_fail_after(nth);
        struct mc_gguf_writer *w = NULL;
        int rc = mc_gguf_writer_create(&w, NULL);
        int64_t ne[1] = {4};
        float x[4] = {1, 2, 3, 4};
        const char *strs[2] = {"a", "b"};
        uint64_t lens[2] = {1, 1};
        if (!rc)
            rc = mc_gguf_writer_set_str(w, "s", "abc", 3, NULL);
        if (!rc)
            rc = mc_gguf_writer_set_arr_str(w, "a", strs, lens, 2, NULL);
        if (!rc)
            rc = mc_gguf_writer_add_tensor(w, "t", MC_TYPE_F32, 1, ne, x, NULL);
        if (!rc)
            rc = mc_gguf_writer_write(w, path, NULL);
        mc_mem_fail_after(0);
        assert_true(rc == MC_OK || rc == MC_ENOMEM);
        mc_gguf_writer_free(w);
    }
    unlink(path);
}

/* ---- mcai info ---------------------------------------------------------------------------- */

/* Runs `$MCAI info path`, returns its exit status and its output (stdout and stderr). */
static int run_info(const char *path, char *out, size_t size) {
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s info '%s' 2>&1", getenv("MCAI"), path);
    return test_run_cmd(cmd, out, size);
}

static void test_gguf_cli_info_lists_metadata_and_tensors(void **state) {
    (void)state;
    if (!getenv("MCAI") || !*getenv("MCAI"))
        skip(); /* run through `make test`, which sets MCAI */
    static char out[65536];
    char path[512];
    test_shared_path(path, sizeof(path), "models/stories260K.gguf");
    assert_int_equal(run_info(path, out, sizeof(out)), 0);
    const char *want[] = {
        "version: 3\n",
        "alignment: 32\n",
        "metadata: 19 keys\n",
        "arr[str] 512 = [\"<unk>\", \"<s>\", \"</s>\", \"<0x00>\", \"<0x01>\", ...]",
        "str = \"llama\"",
        "u32 = 172\n",
        "tensors: 48\n",
        "blk.4.ffn_down.weight",
        "F32   [172, 64]",
        "totals: 48 tensors, 292800 parameters, 1171200 bytes",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        if (!strstr(out, want[i]))
            fail_msg("mcai info output lacks '%s'", want[i]);
    }

    /* A malformed file: the reader's message and exit status 1. */
    tmp_path(path, sizeof(path), "info_bad.gguf");
    struct bld b;
    put_valid(&b);
    b.d[4] = 1;
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(b.d, 1, b.n, f);
    fclose(f);
    assert_int_equal(run_info(path, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "version at offset 4"));
    unlink(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gguf_reads_stories260k_metadata),
        cmocka_unit_test(test_gguf_reads_stories260k_tensors),
        cmocka_unit_test(test_gguf_reads_quantized_and_f16_models),
        cmocka_unit_test(test_gguf_getters_convert_or_name_the_key),
        cmocka_unit_test(test_gguf_writer_round_trip_is_exact),
        cmocka_unit_test(test_gguf_writer_copies_a_real_model),
        cmocka_unit_test(test_gguf_writer_rejects_bad_input),
        cmocka_unit_test(test_gguf_rejects_bad_header),
        cmocka_unit_test(test_gguf_reads_version_2),
        cmocka_unit_test(test_gguf_rejects_bad_keys_and_values),
        cmocka_unit_test(test_gguf_rejects_bad_arrays),
        cmocka_unit_test(test_gguf_rejects_bad_alignment),
        cmocka_unit_test(test_gguf_rejects_bad_tensor_shapes),
        cmocka_unit_test(test_gguf_rejects_bad_tensor_placement),
        cmocka_unit_test(test_gguf_names_hostile_names_safely),
        cmocka_unit_test(test_gguf_open_reports_path_and_io_errors),
        cmocka_unit_test(test_gguf_truncation_always_fails_cleanly),
        cmocka_unit_test(test_gguf_allocation_failures_are_clean),
        cmocka_unit_test(test_gguf_cli_info_lists_metadata_and_tensors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
