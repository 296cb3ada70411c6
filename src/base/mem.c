/* mem.c - allocator wrappers with failure injection for tests (see mem.h).
 * The failure counter is a plain global: it is only armed by single-threaded tests. */
#include "base/mem.h"

#include <stdlib.h>
#include <string.h>

static long fail_at;     /* 0: off; else the allocation count that fails */
static long n_allocs;    /* allocations since the hook was last set */

static int should_fail(void) {
    if (!fail_at)
        return 0;
    n_allocs++;
    return fail_at && n_allocs == fail_at;
}

long mc_mem_fail_after(long nth) {
    long n = n_allocs;
    fail_at = nth;
    n_allocs = 0;
    return n;
}

void *mc_malloc(size_t n) {
    if (should_fail())
        return NULL;
    return malloc(n ? n : 1);
}

void *mc_calloc(size_t count, size_t size) {
    if (should_fail())
        return NULL;
    return calloc(count ? count : 1, size ? size : 1);
}

void *mc_realloc(void *p, size_t n) {
    if (should_fail())
        return NULL;
    return realloc(p, n ? n : 1);
}

void mc_free(void *p) {
    free(p);
}

char *mc_strndup(const char *s, size_t n) {
    char *d = mc_malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *mc_strdup(const char *s) {
    return mc_strndup(s, strlen(s));
}
