/* err.h - the one error convention of mcai.
 *
 * Every fallible function returns int: MC_OK (0) or a negative MC_E* code. The last
 * parameter is an optional struct mc_err * that receives a one-line message. Nothing is
 * heap-allocated to report an error. */
#ifndef MC_ERR_H
#define MC_ERR_H

#include <stdarg.h>

enum {
    MC_OK = 0,
    MC_EINVAL = -1,   /* bad argument or bad input from a caller, tenant or socket */
    MC_EFORMAT = -2,  /* a file or payload does not follow its format */
    MC_ENOMEM = -3,   /* an allocation failed or a cap was reached */
    MC_EIO = -4,      /* read, write, open or mmap failed */
    MC_ENOTSUP = -5,  /* valid input that this build does not implement */
    MC_ENOTFOUND = -6,
    MC_EEXIST = -7,
    MC_EFULL = -8,    /* a fixed capacity (context, queue, budget) is exhausted */
    MC_EPERM = -9,    /* authentication or authorisation refused */
    MC_ELIMIT = -10,  /* a rate limit or quota refused the work */
    MC_ECANCEL = -11, /* the work was cancelled (client gone, shutdown) */
    MC_ECRYPTO = -12, /* decryption or authentication of sealed data failed */
    MC_EINTERNAL = -13,
};

struct mc_err {
    int code;
    char msg[256]; /* one line, no trailing newline or period */
};

/* Formats into err (if non-NULL) and returns code, so callers can
 * `return mc_err_set(err, MC_EINVAL, "...")`. */
int mc_err_set(struct mc_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes the message already in err with "prefix: " (used to add a file name or a
 * field name as an error travels up). Returns err->code, or MC_EINTERNAL if err is NULL. */
int mc_err_prefix(struct mc_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A static, human-readable name for a code ("invalid argument", ...). */
const char *mc_strerror(int code);

/* Asserts our own invariants; never reachable from input. Aborts with file:line. */
#define MC_ASSERT(x)                                                                               \
    do {                                                                                           \
        if (!(x))                                                                                  \
            mc_assert_fail(#x, __FILE__, __LINE__);                                                \
    } while (0)
void mc_assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));

#endif
