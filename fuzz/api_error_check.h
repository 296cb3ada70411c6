/* api_error_check.h - the outcome rule the request-body fuzz targets share: a parser
 * returns MC_OK, or MC_EINVAL with a 4xx status and a non-empty, NUL-terminated message.
 * Anything else traps, so libFuzzer records the input. */
#ifndef MC_FUZZ_API_ERROR_CHECK_H
#define MC_FUZZ_API_ERROR_CHECK_H

#include "base/err.h"
#include "serve/serve_int.h"

#include <string.h>

static inline void check_api_error(int rc, const struct mc_api_error *e) {
    if (rc == MC_OK)
        return;
    if (rc != MC_EINVAL || e->status < 400 || e->status > 499)
        __builtin_trap();
    if (memchr(e->msg, 0, sizeof(e->msg)) == NULL || e->msg[0] == '\0')
        __builtin_trap();
}

#endif
