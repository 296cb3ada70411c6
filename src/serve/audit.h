/* audit.h - the hash-chained audit log of admin actions and key use.
 *
 * The log is a file of JSON lines, DIR/audit.log, next to the store (not inside it, so it
 * can be shipped and verified with ordinary tools). Each line is one object with its
 * fields in this order:
 *   {"seq":N,"time":"2026-12-03T19:40:05.123Z","actor":"...","action":"...",
 *    "tenant":"t_..." or null,"details":{...},"prev":"<hex>","hash":"<hex>"}
 * seq counts lines from 1; prev is the previous line's hash (64 zeros on line 1); hash is
 * BLAKE2b-256 of the line's bytes before ',"hash":'. DIR/audit.head holds the count and
 * the hash of the last line, so removing lines from the end is detected too. Entries
 * carry metadata (ids, names, key prefixes, counts), never prompts, outputs or secrets.
 *
 * Appends take an exclusive flock on the log, so the server and the command line can
 * append to one directory at the same time and the chain stays whole. */
#ifndef MC_AUDIT_H
#define MC_AUDIT_H

#include "base/err.h"

#include <stdint.h>

#define MC_AUDIT_LOG_NAME  "audit.log"
#define MC_AUDIT_HEAD_NAME "audit.head"
#define MC_AUDIT_LINE_MAX  8192 /* bytes; longer details are refused */

struct mc_audit;

/* Opens (creating if needed, mode 0600) the audit log in directory dir. */
int mc_audit_open(const char *dir, struct mc_audit **out, struct mc_err *err);
/* Closes. Accepts NULL. */
void mc_audit_close(struct mc_audit *a);

/* Appends one entry at time now_ms: actor ("admin", "cli:alice", "key:mcai_AbCdEfGh"),
 * action ("tenant.create", "key.use", ...), tenant id (NULL: none) and details (a JSON
 * object text, NULL: {}). Thread-safe. MC_EINVAL when details is not a JSON object or the
 * line would exceed MC_AUDIT_LINE_MAX; MC_EIO when the write fails. */
int mc_audit_append(struct mc_audit *a, int64_t now_ms, const char *actor, const char *action,
                    const char *tenant_id, const char *details_json, struct mc_err *err);

/* Flushes appended lines to disk (fdatasync). Appends are written at once but only
 * synced here and at close. */
int mc_audit_sync(struct mc_audit *a, struct mc_err *err);

/* What mc_audit_verify found. */
struct mc_audit_report {
    long n_lines;     /* lines read */
    long bad_line;    /* 0: the chain is whole; else the first line (from 1) that is wrong */
    char reason[200]; /* why bad_line is wrong */
    char head[65];    /* hash of the last line (hex), to record elsewhere */
};

/* Verifies the chain of DIR/audit.log against itself and DIR/audit.head. Returns MC_OK
 * when whole; MC_EFORMAT when a line was edited, removed, inserted or reordered (report
 * says the first bad line and why); MC_EIO / MC_ENOTFOUND when the log cannot be read. A
 * directory without a log verifies as whole with 0 lines. */
int mc_audit_verify(const char *dir, struct mc_audit_report *report, struct mc_err *err);

#endif
