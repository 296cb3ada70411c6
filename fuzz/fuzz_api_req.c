/* fuzz_api_req.c - libFuzzer target for the OpenAI-compatible request parsers.
 *
 * Request bodies come straight from tenants' sockets. The first input byte picks the
 * parser (chat, completion, embeddings), the rest is the body. Every outcome must be
 * MC_OK, or MC_EINVAL with a 4xx status and a non-empty, NUL-terminated message; the
 * parsed structs are freed on both paths so AddressSanitizer sees any leak or double
 * free. Seeds are in fuzz/corpus/fuzz_api_req/. */
#include "api_error_check.h"
#include "base/err.h"
#include "serve/serve_int.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    struct mc_api_error e;
    memset(&e, 0, sizeof(e));

    switch (data[0] % 3) {
    case 0: {
        struct mc_api_gen g;
        check_api_error(mc_api_parse_chat(body, len, &g, &e), &e);
        mc_api_gen_free(&g);
        break;
    }
    case 1: {
        struct mc_api_gen g;
        check_api_error(mc_api_parse_completion(body, len, &g, &e), &e);
        mc_api_gen_free(&g);
        break;
    }
    default: {
        struct mc_api_embed m;
        check_api_error(mc_api_parse_embed(body, len, &m, &e), &e);
        mc_api_embed_free(&m);
        break;
    }
    }
    return 0;
}
