/* bench_tenants.c - the tenant catalog at scale: creation rate, API-key lookup cost,
 * memory per idle tenant, rate-limiter cost, and sealed-object speed.
 *
 * Creates N tenants (default 10,000), each with a one-line front and one API key, in a
 * fresh data directory under /tmp; then looks up random keys, reads random fronts
 * (unwrap the data key, open the sealed front, parse it), runs one acquire/release per
 * tenant through the rate limiter, and writes and reads one 16 MiB object. Times are wall
 * clock and process CPU (the second is steadier on a shared machine). Memory is the
 * growth of the resident set while the tenants are created: the library keeps nothing
 * per idle tenant, so what shows is SQLite's page cache (bounded, 2 MiB per connection).
 *
 * Usage: bench_tenants [N] [--keep DIR]   (with --keep the data directory is DIR and is
 * left in place). Not a test: nothing here passes or fails. */
#include "base/err.h"
#include "base/mem.h"
#include "store/crypto.h"
#include "store/store.h"
#include "tenant/ratelimit.h"
#include "tenant/tenant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOOKUPS     20000
#define FRONT_READS 2000
#define BLOB_BYTES  ((size_t)16 << 20)

struct clock2 {
    double wall, cpu;
};

static struct clock2 now2(void) {
    struct timespec w, c;
    clock_gettime(CLOCK_MONOTONIC, &w);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c);
    return (struct clock2){w.tv_sec + w.tv_nsec * 1e-9, c.tv_sec + c.tv_nsec * 1e-9};
}

static struct clock2 since(struct clock2 t0) {
    struct clock2 t = now2();
    return (struct clock2){t.wall - t0.wall, t.cpu - t0.cpu};
}

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = 0;
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, "VmRSS:", 6))
            kib = atol(line + 6);
    if (f)
        fclose(f);
    return kib;
}

static int die(const char *what, const struct mc_err *err) {
    fprintf(stderr, "bench_tenants: %s: %s\n", what, err->msg);
    return 1;
}

int main(int argc, char **argv) {
    int n = 10000;
    char dir[256] = "";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--keep") && i + 1 < argc)
            snprintf(dir, sizeof(dir), "%s", argv[++i]);
        else
            n = atoi(argv[i]);
    }
    if (n < 1) {
        fprintf(stderr, "usage: bench_tenants [N] [--keep DIR]\n");
        return 2;
    }
    int keep = dir[0] != '\0';
    if (!keep) {
        snprintf(dir, sizeof(dir), "/tmp/mcai-bench-tenants-XXXXXX");
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            return 1;
        }
    }

    /* A fixed key: the benchmark measures the catalog, not key management. */
    struct mc_err err = {0};
    struct mc_master_key *mk;
    struct mc_store *s;
    struct mc_tenants *tn;
    if (mc_master_key_parse("8f3a1c5e7d9b2f4a6c8e0d1b3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f13", &mk,
                            &err) != MC_OK ||
        mc_store_open(dir, mk, &s, &err) != MC_OK || mc_tenants_create(s, &tn, &err) != MC_OK)
        return die("open", &err);
    char(*keys)[MC_KEY_SECRET_LEN + 1] = malloc((size_t)n * (MC_KEY_SECRET_LEN + 1));
    char(*ids)[MC_TENANT_ID_LEN + 1] = malloc((size_t)n * (MC_TENANT_ID_LEN + 1));

    /* Creation: tenant + front version 1 in one transaction, then one key. */
    long rss0 = rss_kib();
    struct clock2 t0 = now2();
    for (int i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof(name), "tenant-%d", i);
        struct mc_front f;
        mc_front_init(&f);
        f.system_prompt = "You are a helpful assistant for this tenant.";
        if (mc_tenant_create(tn, name, &f, NULL, ids[i], &err) != MC_OK ||
            mc_key_create(tn, ids[i], keys[i], NULL, &err) != MC_OK)
            return die("create", &err);
    }
    struct clock2 dt = since(t0);
    long rss1 = rss_kib();
    printf("tenants=%d create_per_s_wall=%.0f create_per_s_cpu=%.0f\n", n, n / dt.wall, n / dt.cpu);
    printf("rss_growth_kib=%ld bytes_per_idle_tenant=%.0f\n", rss1 - rss0,
           (rss1 - rss0) * 1024.0 / n);

    /* Key lookup: the per-request authentication path. */
    unsigned x = 12345;
    t0 = now2();
    for (int i = 0; i < LOOKUPS; i++) {
        x = x * 1103515245u + 12345u;
        struct mc_tenant_info t;
        if (mc_key_lookup(tn, keys[x % (unsigned)n], &t, NULL, &err) != MC_OK)
            return die("lookup", &err);
    }
    dt = since(t0);
    printf("key_lookup_us_wall=%.2f key_lookup_us_cpu=%.2f\n", dt.wall / LOOKUPS * 1e6,
           dt.cpu / LOOKUPS * 1e6);

    /* Front read: unwrap the data key, open the sealed front, parse its JSON. */
    t0 = now2();
    for (int i = 0; i < FRONT_READS; i++) {
        x = x * 1103515245u + 12345u;
        struct mc_front f;
        if (mc_front_get(tn, ids[x % (unsigned)n], 0, &f, NULL, &err) != MC_OK)
            return die("front", &err);
        mc_front_deinit(&f);
    }
    dt = since(t0);
    printf("front_get_us_wall=%.2f front_get_us_cpu=%.2f\n", dt.wall / FRONT_READS * 1e6,
           dt.cpu / FRONT_READS * 1e6);

    /* Rate limiter: first touch of every tenant (reads the day's usage), then a second
     * pass on warm state. */
    struct mc_limiter *lim;
    if (mc_limiter_create(tn, &lim, &err) != MC_OK)
        return die("limiter", &err);
    struct mc_limits l = {.rpm = 100, .tpm = 100000, .tpd = 1000000, .concurrency = 4};
    long rss2 = rss_kib();
    for (int pass = 0; pass < 2; pass++) {
        t0 = now2();
        for (int i = 0; i < n; i++) {
            int retry;
            if (mc_limit_acquire(lim, ids[i], &l, 10, 1000000 + pass, &retry, &err) != MC_OK)
                return die("acquire", &err);
            mc_limit_release(lim, ids[i], 10, 12, 1000000 + pass);
        }
        dt = since(t0);
        printf("limiter_%s_us_wall=%.2f limiter_%s_us_cpu=%.2f\n", pass ? "warm" : "first",
               dt.wall / n * 1e6, pass ? "warm" : "first", dt.cpu / n * 1e6);
    }
    printf("limiter_bytes_per_active_tenant=%.0f\n", (rss_kib() - rss2) * 1024.0 / n);

    /* One big sealed object, as an adapter upload would be. */
    char *blob = calloc(1, BLOB_BYTES);
    void *back;
    size_t n_back;
    t0 = now2();
    if (mc_store_obj_put(s, ids[0], "adapter", "bench", blob, BLOB_BYTES, &err) != MC_OK)
        return die("put", &err);
    struct clock2 t_put = since(t0);
    t0 = now2();
    if (mc_store_obj_get(s, ids[0], "adapter", "bench", &back, &n_back, &err) != MC_OK)
        return die("get", &err);
    struct clock2 t_get = since(t0);
    printf("object_16mib_put_ms_wall=%.1f get_ms_wall=%.1f put_ms_cpu=%.1f get_ms_cpu=%.1f\n",
           t_put.wall * 1e3, t_get.wall * 1e3, t_put.cpu * 1e3, t_get.cpu * 1e3);
    mc_free(back);
    free(blob);

    mc_limiter_free(lim);
    mc_tenants_free(tn);
    mc_store_close(s);
    mc_master_key_free(mk);
    free(keys);
    free(ids);
    if (!keep) {
        char cmd[320];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "bench_tenants: could not remove %s\n", dir);
    }
    return 0;
}
