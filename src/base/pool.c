/* pool.c - fixed thread pool for data-parallel kernels (see pool.h).
 *
 * A forward pass publishes hundreds of small jobs per token, so a condition-variable
 * round trip per job (tens of microseconds) would cost more than the work. Workers
 * therefore spin on an atomic generation counter for a while after each job and only
 * then sleep on the condition variable; the caller signals it only when someone sleeps.
 * Every spin loop yields the CPU now and then: when there are more runnable threads than
 * cores, a thread spinning on a value that a descheduled thread must write would
 * otherwise burn its whole time slice.
 * Each worker runs exactly its own index: the split of work is the kernel's choice. */
#include "base/pool.h"
#include "base/mem.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <unistd.h>

enum { SPIN_ITERS = 200000, YIELD_EVERY = 256 };

struct mc_pool {
    int n_threads;
    int n_started;       /* worker threads running, <= n_threads - 1 */
    pthread_t *threads;  /* (n_threads - 1) */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_ulong generation;
    atomic_int n_pending;
    atomic_int n_sleeping;
    atomic_int stop;
    mc_pool_fn fn;
    void *ctx;
};

struct worker_arg {
    struct mc_pool *pool;
    int index;
};

/* One spin-loop iteration: a pause hint, and every YIELD_EVERY-th time a yield. */
static inline void spin_once(int i) {
    if ((i & (YIELD_EVERY - 1)) == YIELD_EVERY - 1) {
        sched_yield();
        return;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Waits until the generation moves past seen or the pool stops; returns the new one. */
static unsigned long wait_generation(struct mc_pool *p, unsigned long seen) {
    for (int i = 0; i < SPIN_ITERS; i++) {
        unsigned long g = atomic_load_explicit(&p->generation, memory_order_acquire);
        if (g != seen || atomic_load(&p->stop))
            return g;
        spin_once(i);
    }
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add(&p->n_sleeping, 1);
    unsigned long g;
    while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->stop))
        pthread_cond_wait(&p->wake, &p->lock);
    atomic_fetch_sub(&p->n_sleeping, 1);
    pthread_mutex_unlock(&p->lock);
    return g;
}

static void *worker_main(void *arg) {
    struct worker_arg wa = *(struct worker_arg *)arg;
    mc_free(arg);
    struct mc_pool *p = wa.pool;
    unsigned long seen = 0;

    for (;;) {
        seen = wait_generation(p, seen);
        if (atomic_load(&p->stop))
            break;
        p->fn(p->ctx, wa.index, p->n_threads);
        atomic_fetch_sub_explicit(&p->n_pending, 1, memory_order_release);
    }
    return NULL;
}

int mc_pool_create(int n_threads, struct mc_pool **out, struct mc_err *err) {
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 256)
        return mc_err_set(err, MC_EINVAL, "thread count %d exceeds limit 256", n_threads);

    struct mc_pool *p = mc_calloc(1, sizeof(*p));
    if (!p)
        return mc_err_set(err, MC_ENOMEM, "thread pool allocation failed");
    p->n_threads = n_threads;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->threads = mc_calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->threads) {
        mc_pool_free(p);
        return mc_err_set(err, MC_ENOMEM, "thread pool allocation failed");
    }

    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *wa = mc_malloc(sizeof(*wa));
        if (!wa)
            goto out_stop;
        wa->pool = p;
        wa->index = i;
        if (pthread_create(&p->threads[i - 1], NULL, worker_main, wa) != 0) {
            mc_free(wa);
            goto out_stop;
        }
        p->n_started++;
    }
    *out = p;
    return MC_OK;

out_stop:
    mc_pool_free(p);
    return mc_err_set(err, MC_ENOMEM, "could not start %d pool threads", n_threads);
}

void mc_pool_free(struct mc_pool *p) {
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->n_started; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    mc_free(p->threads);
    mc_free(p);
}

int mc_pool_n_threads(const struct mc_pool *p) {
    return p ? p->n_threads : 1;
}

void mc_pool_run(struct mc_pool *p, mc_pool_fn fn, void *ctx) {
    if (!p || p->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->n_pending, p->n_threads - 1);
    atomic_fetch_add(&p->generation, 1);
    if (atomic_load(&p->n_sleeping) > 0) {
        pthread_mutex_lock(&p->lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    }

    fn(ctx, 0, p->n_threads);

    for (int i = 0; atomic_load_explicit(&p->n_pending, memory_order_acquire) > 0; i++)
        spin_once(i);
}
