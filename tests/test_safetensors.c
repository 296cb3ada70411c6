/* test_safetensors.c - the safetensors reader on the real PEFT adapter (checked against
 * the same adapter in GGUF form) and on hand-made malformed headers: each must give the
 * expected code with a message naming the field and the byte offset. Truncations of the
 * real file must all fail cleanly. */
#include "adapter/safetensors.h"
#include "base/err.h"
#include "base/mem.h"
#include "model/gguf.h"
#include "test_util.h"

#include <stdint.h>
#include <string.h>

#define PEFT_FILE "models/stories260K-lora-r4-peft/adapter_model.safetensors"
#define LAYER0    "base_model.model.model.layers.0.self_attn."

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

/* A file with the given header text and data_size zero bytes of data. */
struct stbuf {
    uint8_t d[4096];
    size_t n;
};

static void make_st(struct stbuf *b, const char *json, size_t data_size) {
    uint64_t n = strlen(json);
    assert_true(8 + n + data_size <= sizeof(b->d));
    memcpy(b->d, &n, 8);
    memcpy(b->d + 8, json, n);
    memset(b->d + 8 + n, 0, data_size);
    b->n = 8 + n + data_size;
}

/* The file offset at which "needle" starts in the header of b. */
static size_t hdr_offset(const struct stbuf *b, const char *needle) {
    const char *h = (const char *)b->d + 8;
    const char *p = strstr(h, needle);
    assert_non_null(p);
    return 8 + (size_t)(p - h);
}

static void expect_bad(const struct stbuf *b, int code, const char *field, size_t offset) {
    struct mc_safetensors *st = NULL;
    struct mc_err err = {0};
    int rc = mc_safetensors_open_buffer(b->d, b->n, "bad.safetensors", &st, &err);
    if (rc != code)
        fail_msg("expected %d for '%s', got %d (%s)", code, field, rc, err.msg);
    assert_null(st);
    char want[64];
    snprintf(want, sizeof(want), " at offset %zu:", offset);
    if (strncmp(err.msg, "bad.safetensors: ", 17) != 0 || !strstr(err.msg, field) ||
        !strstr(err.msg, want))
        fail_msg("message '%s' lacks the file, field '%s' or '%s'", err.msg, field, want);
}

/* ---- The real adapter --------------------------------------------------------------------- */

static void test_safetensors_reads_peft_adapter(void **state) {
    (void)state;
    char path[512];
    struct mc_safetensors *st;
    struct mc_err err = {0};
    assert_int_equal(
        mc_safetensors_open(test_shared_path(path, sizeof(path), PEFT_FILE), &st, &err), MC_OK);
    assert_int_equal(mc_safetensors_n_tensors(st), 20);
    assert_int_equal(mc_safetensors_n_metadata(st), 1);
    assert_string_equal(mc_safetensors_metadata_key(st, 0), "format");
    assert_string_equal(mc_safetensors_metadata(st, "format"), "pt");
    assert_null(mc_safetensors_metadata(st, "absent"));

    /* Sorted by offset: the first tensor starts the data section. */
    const struct mc_safetensors_tensor *t = mc_safetensors_tensor(st, 0);
    assert_string_equal(t->name, LAYER0 "q_proj.lora_A.weight");
    assert_int_equal(t->offset, 0);
    assert_float_near(((const float *)t->data)[0], 0.014190717600286007, 1e-9);
    for (int64_t i = 1; i < 20; i++)
        assert_true(mc_safetensors_tensor(st, i)->offset >
                    mc_safetensors_tensor(st, i - 1)->offset);
    assert_null(mc_safetensors_tensor(st, 20));

    t = mc_safetensors_find(st, LAYER0 "v_proj.lora_B.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, MC_SAFETENSORS_F32);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->shape[0], 32);
    assert_int_equal(t->shape[1], 4);
    assert_int_equal(t->offset, 3072);
    assert_int_equal(t->size_bytes, 512);
    assert_null(mc_safetensors_find(st, "nope"));
    assert_string_equal(mc_safetensors_dtype_name(t->dtype), "F32");
    assert_int_equal(mc_safetensors_dtype_size(MC_SAFETENSORS_BF16), 2);

    /* v_proj is not row-permuted, so its factors equal the GGUF adapter's bytes. */
    struct mc_gguf *g;
    assert_int_equal(
        mc_gguf_open(test_shared_path(path, sizeof(path), "models/stories260K-lora-r4.gguf"), &g,
                     &err),
        MC_OK);
    const struct mc_gguf_tensor *ga = mc_gguf_find_tensor(g, "blk.0.attn_v.weight.lora_a");
    const struct mc_gguf_tensor *gb = mc_gguf_find_tensor(g, "blk.0.attn_v.weight.lora_b");
    const struct mc_safetensors_tensor *sa = mc_safetensors_find(st, LAYER0 "v_proj.lora_A.weight");
    assert_int_equal(sa->size_bytes, ga->size_bytes);
    assert_memory_equal(sa->data, ga->data, ga->size_bytes);
    assert_int_equal(t->size_bytes, gb->size_bytes);
    assert_memory_equal(t->data, gb->data, gb->size_bytes);
    mc_gguf_close(g);
    mc_safetensors_close(st);
}

static void test_safetensors_accepts_edge_shapes(void **state) {
    (void)state;
    struct stbuf b;
    /* A scalar, an empty tensor sharing an offset, F16 and BF16, padding after the JSON. */
    make_st(&b,
            "{\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
            "\"e\":{\"dtype\":\"F16\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
            "\"h\":{\"dtype\":\"F16\",\"shape\":[2,1,1,1,1,1,1,3],\"data_offsets\":[4,16]},"
            "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[20,24],\"extra\":1},"
            "\"__metadata__\":{\"a\":\"1\",\"b\":\"two\"}}   ",
            24);
    struct mc_safetensors *st;
    struct mc_err err = {0};
    assert_int_equal(mc_safetensors_open_buffer(b.d, b.n, "ok.safetensors", &st, &err), MC_OK);
    assert_int_equal(mc_safetensors_n_tensors(st), 4);
    const struct mc_safetensors_tensor *t = mc_safetensors_find(st, "s");
    assert_int_equal(t->n_dims, 0);
    assert_int_equal(t->size_bytes, 4);
    t = mc_safetensors_find(st, "e");
    assert_int_equal(t->size_bytes, 0);
    assert_int_equal(t->shape[0], 0);
    t = mc_safetensors_find(st, "h");
    assert_int_equal(t->n_dims, 8);
    assert_int_equal(t->shape[7], 3);
    assert_int_equal(mc_safetensors_find(st, "b")->dtype, MC_SAFETENSORS_BF16);
    assert_string_equal(mc_safetensors_metadata(st, "b"), "two");
    mc_safetensors_close(st);
}

/* ---- Malformed files ---------------------------------------------------------------------- */

static void test_safetensors_rejects_bad_header_length_and_json(void **state) {
    (void)state;
    struct stbuf b;
    memset(b.d, 0, 8);
    b.n = 7;
    expect_bad(&b, MC_EFORMAT, "header length", 0);
    make_st(&b, "{}", 0);
    uint64_t big = 100000001;
    memcpy(b.d, &big, 8);
    expect_bad(&b, MC_EFORMAT, "header length", 0);
    uint64_t past = 3;
    memcpy(b.d, &past, 8);
    expect_bad(&b, MC_EFORMAT, "header length", 0);

    /* Invalid JSON: jansson's position, counted from the file start. */
    make_st(&b, "{\"a\": }", 0);
    expect_bad(&b, MC_EFORMAT, "header JSON", 8 + 7);
    make_st(&b,
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
            "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
            8);
    struct mc_safetensors *st;
    struct mc_err err = {0};
    assert_int_equal(mc_safetensors_open_buffer(b.d, b.n, "dup", &st, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "duplicate"));
    assert_non_null(strstr(err.msg, "header JSON at offset"));
    make_st(&b, "[1, 2]", 0);
    expect_bad(&b, MC_EFORMAT, "header", 8);
    make_st(&b, "{\"x\": \"F32\"}", 0);
    expect_bad(&b, MC_EFORMAT, "tensor 'x' entry", 8 + 1);
    /* Bytes after the JSON value that are not whitespace. */
    make_st(&b, "{} x", 0);
    expect_bad(&b, MC_EFORMAT, "header JSON", 8 + 4);
}

static void test_safetensors_rejects_bad_dtype_and_shape(void **state) {
    (void)state;
    struct stbuf b;
    make_st(&b, "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    expect_bad(&b, MC_EFORMAT, "tensor 'w' dtype", 8 + 1);
    make_st(&b, "{\"w\":{\"dtype\":\"F99\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    expect_bad(&b, MC_EFORMAT, "tensor 'w' dtype", 8 + 1);
    make_st(&b, "{\"w\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8);
    expect_bad(&b, MC_ENOTSUP, "tensor 'w' dtype", 8 + 1);

    const char *shapes[] = {"7",       "[-1]",
                            "[2.0]",   "[1,1,1,1,1,1,1,1,1]",
                            "[\"2\"]", "[4294967296,4294967296,4294967296]"};
    for (size_t k = 0; k < sizeof(shapes) / sizeof(shapes[0]); k++) {
        char json[256];
        snprintf(json, sizeof(json),
                 "{\"ok\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"w\":{\"dtype\":\"F32\",\"shape\":%s,\"data_offsets\":[4,8]}}",
                 shapes[k]);
        make_st(&b, json, 8);
        expect_bad(&b, MC_EFORMAT, "tensor 'w' shape", hdr_offset(&b, "\"w\""));
    }
}

static void test_safetensors_rejects_bad_offsets(void **state) {
    (void)state;
    struct stbuf b;
    const char *offsets[] = {"[0]",    "[0,4,8]", "[-4,0]", "[8,4]",
                             "[0,12]", "[0,8]",   "[0,2]",  "\"0-4\""};
    for (size_t k = 0; k < sizeof(offsets) / sizeof(offsets[0]); k++) {
        char json[256];
        snprintf(json, sizeof(json),
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":%s}}", offsets[k]);
        make_st(&b, json, 8);
        expect_bad(&b, MC_EFORMAT, "tensor 'w' data_offsets", 8 + 1);
    }

    /* b starts inside a. */
    make_st(&b,
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
            "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
            12);
    expect_bad(&b, MC_EFORMAT, "tensor 'b' data_offsets", hdr_offset(&b, "\"b\""));
    struct mc_safetensors *st;
    struct mc_err err = {0};
    mc_safetensors_open_buffer(b.d, b.n, "o", &st, &err);
    assert_non_null(strstr(err.msg, "overlaps tensor 'a' [0, 8)"));
    /* Same range twice. */
    make_st(&b,
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
            "\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]}}",
            12);
    expect_bad(&b, MC_EFORMAT, "tensor 'b' data_offsets", hdr_offset(&b, "\"b\""));
}

static void test_safetensors_rejects_bad_metadata_and_names(void **state) {
    (void)state;
    struct stbuf b;
    make_st(&b, "{\"__metadata__\":[1]}", 0);
    expect_bad(&b, MC_EFORMAT, "__metadata__", 8 + 1);
    make_st(&b, "{\"__metadata__\":{\"format\":1}}", 0);
    expect_bad(&b, MC_EFORMAT, "__metadata__", 8 + 1);
    /* A hostile name is quoted safely; an escaped one falls back to the header start. */
    make_st(&b, "{\"a\\n\\u001b'b\":{\"dtype\":\"X\"}}", 0);
    struct mc_safetensors *st;
    struct mc_err err = {0};
    assert_int_equal(mc_safetensors_open_buffer(b.d, b.n, "n", &st, &err), MC_EFORMAT);
    assert_null(strchr(err.msg, '\n'));
    assert_null(strchr(err.msg, '\x1b'));
    assert_non_null(strstr(err.msg, "tensor 'a???b' dtype at offset 8:"));
}

static void test_safetensors_truncation_and_oom_fail_cleanly(void **state) {
    (void)state;
    char path[512];
    size_t size;
    uint8_t *d = read_whole(test_shared_path(path, sizeof(path), PEFT_FILE), &size);
    for (size_t n = 0; n < size; n++) {
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, d, n);
        struct mc_safetensors *st = NULL;
        struct mc_err err = {0};
        int rc = mc_safetensors_open_buffer(copy, n, "cut", &st, &err);
        if (rc != MC_EFORMAT)
            fail_msg("truncated at %zu: rc %d (%s)", n, rc, err.msg);
        assert_non_null(strstr(err.msg, "offset"));
        free(copy);
    }

    int n_ok = 0;
    for (long nth = 1; nth < 80; nth++) {
        struct mc_safetensors *st = NULL;
        mc_mem_fail_after(nth);
        int rc = mc_safetensors_open_buffer(d, size, "oom", &st, NULL);
        mc_mem_fail_after(0);
        assert_true(rc == MC_OK || rc == MC_ENOMEM);
        n_ok += rc == MC_OK;
        mc_safetensors_close(st);
    }
    assert_true(n_ok > 0);
    free(d);

    struct mc_safetensors *st;
    struct mc_err err = {0};
    assert_int_equal(mc_safetensors_open("/nonexistent.safetensors", &st, &err), MC_EIO);
    assert_null(st);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_safetensors_reads_peft_adapter),
        cmocka_unit_test(test_safetensors_accepts_edge_shapes),
        cmocka_unit_test(test_safetensors_rejects_bad_header_length_and_json),
        cmocka_unit_test(test_safetensors_rejects_bad_dtype_and_shape),
        cmocka_unit_test(test_safetensors_rejects_bad_offsets),
        cmocka_unit_test(test_safetensors_rejects_bad_metadata_and_names),
        cmocka_unit_test(test_safetensors_truncation_and_oom_fail_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
