/* err.c - error codes and caller-owned message buffers (see err.h). */
#include "base/err.h"

#include <stdio.h>  /* vsnprintf, fprintf */
#include <stdlib.h> /* abort */
#include <string.h>

int mc_err_set(struct mc_err *err, int code, const char *fmt, ...) {
    if (!err)
        return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    err->code = code;
    return code;
}

int mc_err_prefix(struct mc_err *err, const char *fmt, ...) {
    if (!err)
        return MC_EINTERNAL;
    char prefix[sizeof(err->msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);

    /* Built piecewise: the result is cut at the buffer size, which is what we want. */
    char old[sizeof(err->msg)];
    memcpy(old, err->msg, sizeof(old));
    size_t n = strnlen(prefix, sizeof(prefix) - 1);
    memcpy(err->msg, prefix, n);
    if (n + 2 < sizeof(err->msg)) {
        memcpy(err->msg + n, ": ", 2);
        n += 2;
    }
    size_t room = sizeof(err->msg) - 1 - n;
    size_t m = strnlen(old, room);
    memcpy(err->msg + n, old, m);
    err->msg[n + m] = '\0';
    return err->code;
}

const char *mc_strerror(int code) {
    switch (code) {
    case MC_OK: return "ok";
    case MC_EINVAL: return "invalid argument";
    case MC_EFORMAT: return "bad format";
    case MC_ENOMEM: return "out of memory";
    case MC_EIO: return "i/o error";
    case MC_ENOTSUP: return "not supported";
    case MC_ENOTFOUND: return "not found";
    case MC_EEXIST: return "already exists";
    case MC_EFULL: return "capacity exhausted";
    case MC_EPERM: return "permission denied";
    case MC_ELIMIT: return "limit exceeded";
    case MC_ECANCEL: return "cancelled";
    case MC_ECRYPTO: return "decryption failed";
    case MC_EINTERNAL: return "internal error";
    default: return "unknown error";
    }
}

void mc_assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "mcai: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}
