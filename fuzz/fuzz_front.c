/* fuzz_front.c - libFuzzer target for fronts: JSON parsing and prompt templates.
 *
 * The input is split at its first NUL byte: the part before is parsed as a front
 * (mc_front_from_json); an accepted front must write back to JSON that parses and writes
 * back to the same text (a fixed point). The part after the NUL is rendered as a template
 * with two variables; every outcome must be MC_OK with a result or MC_EINVAL without. Seeds are in
 * fuzz/corpus/fuzz_front/. Fronts come from operators over the admin API, so the parser must never
 * crash on them. */
#include "base/err.h"
#include "base/mem.h"
#include "tenant/tenant.h"

#include <stdint.h>
#include <string.h>

static void check_front(const char *json, size_t n) {
    struct mc_front f, g;
    struct mc_err err;
    int rc = mc_front_from_json(json, n, &f, &err);
    if (rc != MC_OK && rc != MC_EINVAL)
        __builtin_trap();
    if (rc == MC_OK) {
        char *a = NULL, *b = NULL;
        if (mc_front_to_json(&f, &a, &err) != MC_OK)
            __builtin_trap();
        if (mc_front_from_json(a, strlen(a), &g, &err) != MC_OK)
            __builtin_trap();
        if (mc_front_to_json(&g, &b, &err) != MC_OK || strcmp(a, b) != 0)
            __builtin_trap();
        mc_free(a);
        mc_free(b);
        mc_front_deinit(&g);
    }
    mc_front_deinit(&f);
}

static void check_template(const char *tmpl) {
    static const char *const names[] = {"question", "context"};
    static const char *const values[] = {"{{context}}", ""};
    char *out = NULL;
    struct mc_err err;
    int rc = mc_front_render(tmpl, names, values, 2, &out, &err);
    if (rc != MC_OK && rc != MC_EINVAL)
        __builtin_trap();
    if ((rc == MC_OK) != (out != NULL))
        __builtin_trap();
    mc_free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    size_t n_json = nul ? (size_t)(nul - data) : size;
    check_front((const char *)data, n_json);

    char *tmpl = mc_malloc(size - n_json + 1);
    if (!tmpl)
        return 0;
    size_t n_tmpl = nul ? size - n_json - 1 : 0;
    memcpy(tmpl, nul ? (const char *)nul + 1 : "", n_tmpl);
    tmpl[n_tmpl] = '\0';
    check_template(tmpl);
    mc_free(tmpl);
    return 0;
}
