/* ratelimit.c - per-tenant token buckets, day quotas and concurrency (see ratelimit.h).
 *
 * Buckets are integers so that Retry-After values are exact: a bucket is measured in
 * units of 1/60000 of a request (or token), so a limit of L per minute refills exactly L
 * units per millisecond and one request (or token) costs 60000 units. With limits below
 * 10^12 (mc_limits_check) a full bucket stays below 6 * 10^16, well inside int64.
 *
 * State lives in an open-addressing hash table (linear probing, power-of-two capacity,
 * grown at 70% load, tombstones on forget) keyed by tenant id. One entry is about 90
 * bytes; only tenants that have made a request have one. One mutex guards the table:
 * every call is O(1) apart from the first call for a tenant on a new day, which reads
 * the day's persisted usage from the store.
 *
 * It does not persist anything itself: the server records usage with mc_usage_record. */
#include "tenant/ratelimit.h"

#include "base/mem.h"

#include <pthread.h>
#include <string.h>

#define UNITS_PER_MIN 60000 /* milliseconds per minute */
#define MS_PER_DAY    86400000LL
#define LOAD_NUM      7 /* grow when used * 10 > cap * 7 */
#define LOAD_DEN      10
#define INITIAL_CAP   64
#define TOKENS_MAX    1000000000000LL /* 10^12: token counts beyond this are refused */

enum { SLOT_EMPTY = 0, SLOT_USED = 1, SLOT_DEAD = 2 };

struct lstate {
    char id[MC_TENANT_ID_LEN + 1];
    uint8_t slot;      /* SLOT_* */
    int64_t req_level; /* requests bucket, in units (<= rpm * 60000) */
    int64_t tok_level; /* tokens bucket, in units; below zero after an underestimate */
    int64_t last_ms;   /* time of the last refill */
    int64_t day;       /* UTC day that day_used counts */
    int64_t day_used;  /* tokens charged on day */
    int64_t active;    /* requests running */
    int64_t rpm_seen;  /* limits at the last call: a bucket whose limit was 0 */
    int64_t tpm_seen;  /* (unlimited) starts full when a limit is set */
};

struct mc_limiter {
    pthread_mutex_t lock;
    struct mc_tenants *tn; /* NULL: day counters start at zero */
    struct lstate *tab;
    size_t cap, used, dead;
};

/* ---------------------------------------------------------------------------------------
 * Hash table */

static uint64_t hash_id(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* The slot of id, or NULL. */
static struct lstate *find(struct mc_limiter *lim, const char *id) {
    size_t mask = lim->cap - 1;
    for (size_t i = hash_id(id) & mask;; i = (i + 1) & mask) {
        struct lstate *s = &lim->tab[i];
        if (s->slot == SLOT_EMPTY)
            return NULL;
        if (s->slot == SLOT_USED && strcmp(s->id, id) == 0)
            return s;
    }
}

/* Puts a state into a table known to have room and no entry for its id. */
static void place(struct lstate *tab, size_t cap, const struct lstate *st) {
    size_t mask = cap - 1;
    size_t i = hash_id(st->id) & mask;
    while (tab[i].slot == SLOT_USED)
        i = (i + 1) & mask;
    tab[i] = *st;
}

static int rehash(struct mc_limiter *lim, size_t cap, struct mc_err *err) {
    struct lstate *tab = mc_calloc(cap, sizeof(*tab));
    if (!tab)
        return mc_err_set(err, MC_ENOMEM, "cannot grow the rate limiter to %zu tenants", cap);
    for (size_t i = 0; i < lim->cap; i++)
        if (lim->tab[i].slot == SLOT_USED)
            place(tab, cap, &lim->tab[i]);
    mc_free(lim->tab);
    lim->tab = tab;
    lim->cap = cap;
    lim->dead = 0;
    return MC_OK;
}

/* Finds or creates the state of id; a new state starts with full buckets. */
static int get_state(struct mc_limiter *lim, const char *id, const struct mc_limits *l,
                     int64_t now_ms, struct lstate **out, struct mc_err *err) {
    struct lstate *s = find(lim, id);
    if (s) {
        *out = s;
        return MC_OK;
    }
    if ((lim->used + lim->dead + 1) * LOAD_DEN > lim->cap * LOAD_NUM) {
        size_t cap = (lim->used + 1) * LOAD_DEN > lim->cap * LOAD_NUM / 2 ? lim->cap * 2 : lim->cap;
        int rc = rehash(lim, cap, err);
        if (rc != MC_OK)
            return rc;
    }
    struct lstate st;
    memset(&st, 0, sizeof(st));
    memcpy(st.id, id, strlen(id) + 1);
    st.slot = SLOT_USED;
    st.req_level = l->rpm * UNITS_PER_MIN;
    st.tok_level = l->tpm * UNITS_PER_MIN;
    st.rpm_seen = l->rpm;
    st.tpm_seen = l->tpm;
    st.last_ms = now_ms;
    st.day = -1; /* loaded on first use */
    place(lim->tab, lim->cap, &st);
    lim->used++;
    *out = find(lim, id);
    return MC_OK;
}

/* ---------------------------------------------------------------------------------------
 * Buckets */

static int64_t min64(int64_t a, int64_t b) {
    return a < b ? a : b;
}

/* Adds the refill since last_ms to a bucket of `limit` per minute, capped at full. */
static int64_t refill(int64_t level, int64_t limit, int64_t dt_ms) {
    int64_t full = limit * UNITS_PER_MIN;
    if (level >= full)
        return full; /* also clamps a bucket after its limit was lowered */
    int64_t to_full_ms = (full - level + limit - 1) / limit;
    if (dt_ms >= to_full_ms)
        return full;
    return level + limit * dt_ms; /* below full, so no overflow */
}

/* Milliseconds until a bucket of `limit` per minute holds `cost` units. */
static int64_t wait_ms(int64_t level, int64_t limit, int64_t cost) {
    if (level >= cost)
        return 0;
    return (cost - level + limit - 1) / limit;
}

static void bring_up_to_date(struct mc_limiter *lim, struct lstate *s, const struct mc_limits *l,
                             int64_t now_ms) {
    int64_t dt = now_ms > s->last_ms ? now_ms - s->last_ms : 0;
    if (l->rpm != s->rpm_seen) {
        if (s->rpm_seen == 0)
            s->req_level = l->rpm * UNITS_PER_MIN;
        s->rpm_seen = l->rpm;
    }
    if (l->tpm != s->tpm_seen) {
        if (s->tpm_seen == 0)
            s->tok_level = l->tpm * UNITS_PER_MIN;
        s->tpm_seen = l->tpm;
    }
    if (l->rpm)
        s->req_level = refill(s->req_level, l->rpm, dt);
    if (l->tpm)
        s->tok_level = refill(s->tok_level, l->tpm, dt);
    if (now_ms > s->last_ms)
        s->last_ms = now_ms;

    int64_t day = mc_usage_day(now_ms);
    if (s->day != day) {
        s->day = day;
        s->day_used = 0;
        struct mc_usage *u = NULL;
        size_t n = 0;
        if (lim->tn && mc_usage_list(lim->tn, s->id, day, day, &u, &n, NULL) == MC_OK && n)
            s->day_used = u[0].prompt_tokens + u[0].completion_tokens;
        mc_free(u);
    }
}

/* ---------------------------------------------------------------------------------------
 * API */

int mc_limiter_create(struct mc_tenants *tn, struct mc_limiter **out, struct mc_err *err) {
    *out = NULL;
    struct mc_limiter *lim = mc_calloc(1, sizeof(*lim));
    if (!lim)
        return mc_err_set(err, MC_ENOMEM, "cannot allocate the rate limiter");
    lim->tab = mc_calloc(INITIAL_CAP, sizeof(*lim->tab));
    if (!lim->tab) {
        mc_free(lim);
        return mc_err_set(err, MC_ENOMEM, "cannot allocate the rate limiter");
    }
    lim->cap = INITIAL_CAP;
    lim->tn = tn;
    pthread_mutex_init(&lim->lock, NULL);
    *out = lim;
    return MC_OK;
}

void mc_limiter_free(struct mc_limiter *lim) {
    if (!lim)
        return;
    pthread_mutex_destroy(&lim->lock);
    mc_free(lim->tab);
    mc_free(lim);
}

static int check_id(const char *id, struct mc_err *err) {
    if (!id || !*id || strlen(id) > MC_TENANT_ID_LEN)
        return mc_err_set(err, MC_EINVAL, "rate limiter: tenant id must be 1..%d bytes",
                          MC_TENANT_ID_LEN);
    return MC_OK;
}

/* Keeps the longest wait and the name of the limit that causes it. */
struct refusal {
    int64_t ms;
    const char *what;
    int64_t limit;
};

static void refuse(struct refusal *r, int64_t ms, const char *what, int64_t limit) {
    if (ms > r->ms) {
        r->ms = ms;
        r->what = what;
        r->limit = limit;
    }
}

/* The tokens the minute bucket and the day counter allow now (INT64_MAX: no limit). */
static int64_t tokens_allowed(const struct lstate *s, const struct mc_limits *l) {
    int64_t n = INT64_MAX;
    if (l->tpm)
        n = s->tok_level > 0 ? s->tok_level / UNITS_PER_MIN : 0;
    if (l->tpd)
        n = min64(n, s->day_used < l->tpd ? l->tpd - s->day_used : 0);
    return n;
}

int mc_limit_acquire_upto(struct mc_limiter *lim, const char *tenant_id,
                          const struct mc_limits *limits, int64_t min_tokens, int64_t max_tokens,
                          int64_t now_ms, int64_t *granted, int *retry_after_s,
                          struct mc_err *err) {
    *retry_after_s = 0;
    *granted = 0;
    int rc = check_id(tenant_id, err);
    if (rc == MC_OK)
        rc = mc_limits_check(limits, err);
    if (rc != MC_OK)
        return rc;
    if (min_tokens < 0 || max_tokens < min_tokens || max_tokens >= TOKENS_MAX)
        return mc_err_set(err, MC_EINVAL, "rate limiter: token range %lld..%lld is out of range",
                          (long long)min_tokens, (long long)max_tokens);

    pthread_mutex_lock(&lim->lock);
    struct lstate *s;
    rc = get_state(lim, tenant_id, limits, now_ms, &s, err);
    if (rc != MC_OK)
        goto out_unlock;
    bring_up_to_date(lim, s, limits, now_ms);

    /* A request that needs more than a whole minute's (or day's) allowance can never run:
     * waiting would not help, and the message says so. */
    struct refusal never = {0, NULL, 0};
    if (limits->tpd && min_tokens > limits->tpd)
        never = (struct refusal){(s->day + 1) * MS_PER_DAY - now_ms, "tokens per day", limits->tpd};
    if (limits->tpm && min_tokens > limits->tpm)
        never = (struct refusal){UNITS_PER_MIN, "tokens per minute", limits->tpm};
    if (never.what) {
        *retry_after_s = (int)((never.ms + 999) / 1000);
        rc = mc_err_set(err, MC_ELIMIT,
                        "this request needs at least %lld tokens, more than the %s limit %lld",
                        (long long)min_tokens, never.what, (long long)never.limit);
        goto out_unlock;
    }

    struct refusal r = {0, NULL, 0};
    if (limits->concurrency && s->active >= limits->concurrency)
        refuse(&r, 1000, "concurrent requests", limits->concurrency);
    if (limits->rpm)
        refuse(&r, wait_ms(s->req_level, limits->rpm, UNITS_PER_MIN), "requests per minute",
               limits->rpm);
    if (limits->tpm)
        refuse(&r, wait_ms(s->tok_level, limits->tpm, min_tokens * UNITS_PER_MIN),
               "tokens per minute", limits->tpm);
    if (limits->tpd && s->day_used + min_tokens > limits->tpd)
        refuse(&r, (s->day + 1) * MS_PER_DAY - now_ms, "tokens per day", limits->tpd);

    if (r.ms > 0) {
        int64_t secs = (r.ms + 999) / 1000;
        *retry_after_s = secs > 1 ? (int)min64(secs, 86400) : 1;
        rc = mc_err_set(err, MC_ELIMIT, "%s limit %lld reached; retry after %d s", r.what,
                        (long long)r.limit, *retry_after_s);
        goto out_unlock;
    }
    int64_t n = min64(max_tokens, tokens_allowed(s, limits));
    if (limits->rpm)
        s->req_level -= UNITS_PER_MIN;
    if (limits->tpm)
        s->tok_level -= n * UNITS_PER_MIN;
    s->day_used += n;
    s->active++;
    *granted = n;
out_unlock:
    pthread_mutex_unlock(&lim->lock);
    return rc;
}

int mc_limit_acquire(struct mc_limiter *lim, const char *tenant_id, const struct mc_limits *limits,
                     int64_t est_tokens, int64_t now_ms, int *retry_after_s, struct mc_err *err) {
    int64_t granted;
    return mc_limit_acquire_upto(lim, tenant_id, limits, est_tokens, est_tokens, now_ms, &granted,
                                 retry_after_s, err);
}

void mc_limit_release(struct mc_limiter *lim, const char *tenant_id, int64_t est_tokens,
                      int64_t actual_tokens, int64_t now_ms) {
    if (check_id(tenant_id, NULL) != MC_OK || est_tokens < 0 || actual_tokens < 0 ||
        est_tokens >= TOKENS_MAX || actual_tokens >= TOKENS_MAX)
        return;
    pthread_mutex_lock(&lim->lock);
    struct lstate *s = find(lim, tenant_id);
    if (s) {
        int64_t diff = actual_tokens - est_tokens;
        /* The tokens bucket is refilled at the next acquire, which clamps it to full. */
        s->tok_level -= diff * UNITS_PER_MIN;
        if (s->day == mc_usage_day(now_ms))
            s->day_used = s->day_used + diff > 0 ? s->day_used + diff : 0;
        if (s->active > 0)
            s->active--;
    }
    pthread_mutex_unlock(&lim->lock);
}

int64_t mc_limit_active(struct mc_limiter *lim, const char *tenant_id) {
    if (check_id(tenant_id, NULL) != MC_OK)
        return 0;
    pthread_mutex_lock(&lim->lock);
    struct lstate *s = find(lim, tenant_id);
    int64_t n = s ? s->active : 0;
    pthread_mutex_unlock(&lim->lock);
    return n;
}

void mc_limit_forget(struct mc_limiter *lim, const char *tenant_id) {
    if (check_id(tenant_id, NULL) != MC_OK)
        return;
    pthread_mutex_lock(&lim->lock);
    struct lstate *s = find(lim, tenant_id);
    if (s) {
        memset(s, 0, sizeof(*s));
        s->slot = SLOT_DEAD;
        lim->used--;
        lim->dead++;
    }
    pthread_mutex_unlock(&lim->lock);
}
