/* ratelimit.h - per-tenant rate limits and quotas, checked before a request runs.
 *
 * The server calls mc_limit_acquire_upto before admitting a request, with the fewest
 * tokens it can run with (the prompt and one completion token per choice) and the most
 * it could use (prompt + every choice's max completion); it is granted what the limits
 * allow between the two and caps its completions to fit. mc_limit_release, when the
 * request ends, charges the tokens really used instead. Time is passed in by the caller
 * (Unix milliseconds), so tests drive a fake clock and get exact Retry-After values.
 *
 * Algorithms (each limit 0 = unlimited):
 *  - requests/min and tokens/min: token buckets holding at most one minute's allowance,
 *    refilled continuously (rpm/60 and tpm/60 per second). A request needs 1 request
 *    token and at least min_tokens tokens; it takes up to max_tokens of what the bucket
 *    holds. A request whose min_tokens exceeds the whole minute's allowance is refused
 *    (Retry-After 60, though waiting cannot help; the message says so). Release gives
 *    back granted - actual; should actual exceed the grant, the bucket goes below zero
 *    and later requests wait for the debt to refill.
 *  - tokens/day: a counter per UTC day; a request is refused when used + min_tokens would
 *    exceed the limit, with Retry-After the seconds until the next UTC midnight, and
 *    granted at most what is left of the day. The counter starts from the usage
 *    persisted in the store, so a restart does not reset a tenant's day.
 *  - concurrent requests: a counter; a refusal says Retry-After 1.
 * A limit that changes applies at the next call: a bucket above a lowered limit is cut
 * to it, a bucket whose limit was 0 (unlimited) starts full.
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
 * each call so an update applies at once) that needs exactly est_tokens >= 0 at time
 * now_ms (mc_limit_acquire_upto with min = max = est_tokens). On MC_OK
 * the request holds one concurrency slot and its estimate is charged: call
 * mc_limit_release exactly once when it ends. On MC_ELIMIT nothing is charged,
 * *retry_after_s (>= 1) says when the limit that refused will allow it, and err names
 * that limit ("tokens per minute limit 1000 reached"). MC_EINVAL on bad arguments. */
int mc_limit_acquire(struct mc_limiter *lim, const char *tenant_id, const struct mc_limits *limits,
                     int64_t est_tokens, int64_t now_ms, int *retry_after_s, struct mc_err *err);

/* Admits one request that can run with min_tokens and use up to max_tokens
 * (0 <= min_tokens <= max_tokens < 10^12). On MC_OK, *granted (min_tokens..max_tokens)
 * is what the token limits allow and what is charged: the caller must keep the request
 * within it, and call mc_limit_release(granted, actual) once when it ends. Otherwise as
 * mc_limit_acquire; a request whose min_tokens exceeds tpm or tpd outright is MC_ELIMIT
 * with a message saying it can never fit. */
int mc_limit_acquire_upto(struct mc_limiter *lim, const char *tenant_id,
                          const struct mc_limits *limits, int64_t min_tokens, int64_t max_tokens,
                          int64_t now_ms, int64_t *granted, int *retry_after_s, struct mc_err *err);

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
