/* fuzz_gguf.c - libFuzzer target for the GGUF reader.
 *
 * Parses the input with mc_gguf_open_buffer and, when it is accepted, walks everything a
 * caller could touch: every key through every accessor and typed getter, every array
 * element, every tensor's first and last data byte and a lookup by name. Any read out of
 * bounds shows up under ASan. Seeds in fuzz/corpus/fuzz_gguf/ come from
 * fuzz/gen_gguf_seeds.py. Not a test of the writer. */
#include "model/gguf.h"

#include <stdint.h>
#include <string.h>

static volatile uint64_t sink; /* keeps the reads from being optimised away */

static void walk_key(const struct mc_gguf *g, int64_t i) {
    const char *key = mc_gguf_key_name(g, i);
    if (mc_gguf_find_key(g, key) != i)
        __builtin_trap();
    uint32_t u;
    int64_t s;
    float f;
    bool b;
    const char *str;
    uint64_t len;
    sink += (uint64_t)mc_gguf_get_u32(g, key, &u, NULL);
    sink += (uint64_t)mc_gguf_get_i64(g, key, &s, NULL);
    sink += (uint64_t)mc_gguf_get_f32(g, key, &f, NULL);
    sink += (uint64_t)mc_gguf_get_bool(g, key, &b, NULL);
    if (mc_gguf_get_str(g, key, &str, &len, NULL) == 0 && len > 0)
        sink += (uint8_t)str[0] + (uint8_t)str[len - 1];
    const uint8_t *v = mc_gguf_val_data(g, i);
    if (v)
        sink += v[0];

    uint64_t n = mc_gguf_arr_n(g, i);
    if (mc_gguf_key_type(g, i) != MC_GGUF_ARRAY || n == 0)
        return;
    if (mc_gguf_arr_type(g, i) == MC_GGUF_STRING) {
        for (uint64_t j = 0; j < n; j++) {
            str = mc_gguf_arr_str(g, i, j, &len);
            if (len > 0)
                sink += (uint8_t)str[0] + (uint8_t)str[len - 1];
        }
        return;
    }
    const uint8_t *data = mc_gguf_arr_data(g, i);
    sink += data[0];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct mc_gguf *g;
    struct mc_err err;
    if (mc_gguf_open_buffer(data, size, "fuzz.gguf", &g, &err) != 0) {
        if (err.code != MC_EFORMAT && err.code != MC_ENOMEM)
            __builtin_trap();
        return 0;
    }
    for (int64_t i = 0; i < mc_gguf_n_kv(g); i++)
        walk_key(g, i);
    for (int64_t i = 0; i < mc_gguf_n_tensors(g); i++) {
        const struct mc_gguf_tensor *t = mc_gguf_tensor(g, i);
        const uint8_t *p = t->data;
        sink += p[0] + p[t->size_bytes - 1] + (uint64_t)t->ne[0];
        if (mc_gguf_find_tensor(g, t->name) != t)
            __builtin_trap();
    }
    mc_gguf_close(g);
    return 0;
}
