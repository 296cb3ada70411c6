/* fuzz_kb_req.c - libFuzzer target for the knowledge-base request bodies.
 *
 * Batches of documents and search requests come straight from tenants' sockets. The
 * first input byte picks the parser (batch or search), the rest is the body. Every
 * outcome must be MC_OK, or MC_EINVAL with a 4xx status and a non-empty message; an
 * accepted batch holds 1..MC_KB_BATCH_MAX documents, an accepted search a query of
 * 1..MC_KB_QUERY_MAX bytes and a k of 1..MC_KB_K_MAX. Everything is freed on both paths
 * so AddressSanitizer sees any leak or double free. Seeds are in fuzz/corpus/fuzz_kb_req/. */
#include "api_error_check.h"
#include "base/err.h"
#include "rag/kb.h"
#include "rag/retrieve.h"
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

    if (data[0] % 2 == 0) {
        struct mc_kb_batch *b = NULL;
        int rc = mc_kb_batch_parse(body, len, &b, &e);
        check_api_error(rc, &e);
        if (rc == MC_OK && (mc_kb_batch_size(b) < 1 || mc_kb_batch_size(b) > MC_KB_BATCH_MAX))
            __builtin_trap();
        if ((rc == MC_OK) != (b != NULL))
            __builtin_trap();
        mc_kb_batch_free(b);
    } else {
        struct mc_kb_query q = {.mode = MC_KB_MODE_HYBRID, .k = 10};
        json_t *holder = NULL;
        int rc = mc_kb_search_parse(body, len, &q, &holder, &e);
        check_api_error(rc, &e);
        if (rc == MC_OK && (q.len < 1 || q.len > MC_KB_QUERY_MAX || q.k < 1 || q.k > MC_KB_K_MAX ||
                            strlen(q.text) > q.len))
            __builtin_trap();
        json_decref(holder);
    }
    return 0;
}
