/* fuzz_safetensors.c - libFuzzer target for the safetensors reader.
 *
 * Parses the input with mc_safetensors_open_buffer and, when it is accepted, touches
 * every tensor's first and last byte, looks each up by name and reads the metadata, so
 * that any out-of-bounds view shows up under ASan. Seeds in fuzz/corpus/fuzz_safetensors/
 * come from fuzz/gen_safetensors_seeds.py. */
#include "adapter/safetensors.h"

#include <stdint.h>
#include <string.h>

static volatile uint64_t sink; /* keeps the reads from being optimised away */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct mc_safetensors *st;
    struct mc_err err;
    if (mc_safetensors_open_buffer(data, size, "fuzz.safetensors", &st, &err) != 0) {
        if (err.code != MC_EFORMAT && err.code != MC_ENOTSUP && err.code != MC_ENOMEM)
            __builtin_trap();
        return 0;
    }
    for (int64_t i = 0; i < mc_safetensors_n_tensors(st); i++) {
        const struct mc_safetensors_tensor *t = mc_safetensors_tensor(st, i);
        const uint8_t *p = t->data;
        if (t->size_bytes)
            sink += p[0] + p[t->size_bytes - 1];
        if (mc_safetensors_find(st, t->name) != t)
            __builtin_trap();
    }
    for (int64_t i = 0; i < mc_safetensors_n_metadata(st); i++) {
        const char *k = mc_safetensors_metadata_key(st, i);
        sink += strlen(k) + strlen(mc_safetensors_metadata_value(st, i));
        sink += mc_safetensors_metadata(st, k) != NULL;
    }
    mc_safetensors_close(st);
    return 0;
}
