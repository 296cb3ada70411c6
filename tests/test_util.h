/* test_util.h - helpers shared by the cmocka test programs: the path of ../shared, a
 * float comparison that prints both values and the tolerance, and running a shell
 * command for its output and exit status. */
#ifndef MC_TEST_UTIL_H
#define MC_TEST_UTIL_H

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h> /* cmocka needs these three before its header */
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>
#include <sys/wait.h>

/* Fills buf with MCAI_SHARED (default "../shared") followed by "/" and rel. */
static inline const char *test_shared_path(char *buf, size_t size, const char *rel) {
    const char *base = getenv("MCAI_SHARED");
    snprintf(buf, size, "%s/%s", base && *base ? base : "../shared", rel);
    return buf;
}

#define assert_float_near(a, b, tol)                                                               \
    do {                                                                                           \
        double a_ = (a), b_ = (b), t_ = (tol);                                                     \
        if (!(fabs(a_ - b_) <= t_))                                                                \
            fail_msg("%s = %.9g, %s = %.9g, |diff| %.3g > tolerance %.3g", #a, a_, #b, b_,        \
                     fabs(a_ - b_), t_);                                                           \
    } while (0)

/* Runs cmd through the shell; its stdout (up to size - 1 bytes, NUL-terminated) goes to
 * out. Returns the exit status, -1 if the command did not exit normally. */
static inline int test_run_cmd(const char *cmd, char *out, size_t size) {
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, size - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#endif
