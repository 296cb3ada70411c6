/* mem.h - the project's allocator wrappers.
 *
 * All heap memory goes through these so that tests can fail the Nth allocation and
 * check that every error path cleans up. mc_free accepts NULL. */
#ifndef MC_MEM_H
#define MC_MEM_H

#include <stddef.h>

void *mc_malloc(size_t n);
void *mc_calloc(size_t count, size_t size);
/* Like realloc: on success the old pointer is dead; on failure it is left untouched. */
void *mc_realloc(void *p, size_t n);
void mc_free(void *p);
/* A copy of s (or of its first n bytes, NUL-terminated), or NULL when allocation fails. */
char *mc_strdup(const char *s);
char *mc_strndup(const char *s, size_t n);

/* Test hook: the nth allocation from now on (1 = the next one) fails; 0 turns it off.
 * Returns the number of allocations made since the last call. Not thread-safe. */
long mc_mem_fail_after(long nth);

#endif
