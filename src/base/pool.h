/* pool.h - a fixed thread pool that runs one parallel-for at a time.
 *
 * mc_pool_run(pool, fn, ctx, n) calls fn(ctx, i, n) for i in [0, n) split over the
 * pool's threads (the caller's thread takes part) and returns when all are done. The
 * kernels use it with n = number of threads and split rows themselves. A pool is used by
 * one caller at a time (the engine loop); it is not a general work queue. */
#ifndef MC_POOL_H
#define MC_POOL_H

#include "base/err.h"

struct mc_pool;

typedef void (*mc_pool_fn)(void *ctx, int i, int n);

/* Creates a pool of n_threads workers in total (the caller counts as one, so
 * n_threads - 1 threads are started). n_threads <= 0 means the number of online CPUs. */
int mc_pool_create(int n_threads, struct mc_pool **out, struct mc_err *err);
void mc_pool_free(struct mc_pool *pool);
int mc_pool_n_threads(const struct mc_pool *pool);
/* Runs fn(ctx, i, n) for each i in [0, n), n being the pool's thread count. A NULL
 * pool runs fn(ctx, 0, 1) on the calling thread. */
void mc_pool_run(struct mc_pool *pool, mc_pool_fn fn, void *ctx);

#endif
