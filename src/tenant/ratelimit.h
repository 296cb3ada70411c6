/* ratelimit.h - per-tenant rate limits and quotas, checked before a request runs.
 *
 * The server calls mc_limit_acquire before admitting a request, with an estimate of its
 * tokens (prompt + max completion), and mc_limit_release when it ends, with the tokens it
 * really used. Time is passed in by the caller (Unix milliseconds), so tests drive a fake
 * clock and get exact Retry-After values.
 *
 * Algorithms (each limit 0 = unlimited):
 *  - requests/min and tokens/min: token buckets holding at most one minute's allowance,
 *    refilled continuously (rpm/60 and tpm/60 per second). A request needs 1 request
 *    token and est_tokens tokens (an estimate above the whole minute's allowance needs a
 *    full bucket). Release corrects the token bucket by actual - est, which may leave it
 *    below zero; later requests then wait for the debt to refill.
 *  - tokens/day: a counter per UTC day; a request is refused when used + est_tokens would
 *    exceed the limit (unless nothing was used yet today), with Retry-After the seconds
 *    until the next UTC midnight. The counter starts from the usage persisted in the
 *    store, so a restart does not reset a tenant's day.
 *  - concurrent requests: a counter; a refusal says Retry-After 1.
 *
 * State: about 100 bytes per tenant that has made a request, in one open-addressing hash
 * table; nothing for idle tenants. Thread-safe (one mutex; every call is O(1)). */
#ifndef MC_RATELIMIT_H
#define MC_RATELIMIT_H

#include "base/err.h"
#include "tenant/tenant.h"

#include <stdint.h>

struct mc_limiter;

/* Creates a limiter. tn (may be NULL) is used to read a tenant's persisted usage of the
 * day the first time the limiter sees it on that day. */
int mc_limiter_create(struct mc_tenants *tn, struct mc_limiter **out, struct mc_err *err);
void mc_limiter_free(struct mc_limiter *lim);

/* Admits one request of tenant_id under limits (the tenant's current ones, passed on
 * each call so an update applies at once) with est_tokens >= 0 at time now_ms. On MC_OK
 * the request holds one concurrency slot and its estimate is charged: call
 * mc_limit_release exactly once when it ends. On MC_ELIMIT nothing is charged,
 * *retry_after_s (>= 1) says when the limit that refused will allow it, and err names
 * that limit ("tokens per minute limit 1000 reached"). MC_EINVAL on bad arguments. */
int mc_limit_acquire(struct mc_limiter *lim, const char *tenant_id, const struct mc_limits *limits,
                     int64_t est_tokens, int64_t now_ms, int *retry_after_s, struct mc_err *err);

/* Ends a request admitted by mc_limit_acquire: frees its concurrency slot and charges
 * actual_tokens in place of est_tokens to the minute and day counters. Counts are
 * 0..10^12; a call with other values, or for a tenant the limiter does not know, does
 * nothing. */
void mc_limit_release(struct mc_limiter *lim, const char *tenant_id, int64_t est_tokens,
                      int64_t actual_tokens, int64_t now_ms);

/* Requests of tenant_id running now (for metrics and tests). */
int64_t mc_limit_active(struct mc_limiter *lim, const char *tenant_id);

/* Forgets a tenant's state (call after deleting the tenant). */
void mc_limit_forget(struct mc_limiter *lim, const char *tenant_id);

#endif
