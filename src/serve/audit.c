/* audit.c - the hash-chained audit log: append under a file lock, verify (see audit.h).
 *
 * Appending takes the process-local mutex and then an exclusive flock on the log, reads
 * the last line of the log itself to learn its seq and hash (so the chain is right even
 * when another process appended since), writes the new line with one write() on an
 * O_APPEND descriptor, then rewrites DIR/audit.head ("<seq, 20 digits> <hash>\n") in
 * place. Only one line can fall between the two writes (a crash there), which is why
 * verify accepts a log exactly one line longer than its head.
 *
 * The chain uses unkeyed BLAKE2b-256: it shows that lines were edited, removed or
 * reordered, by anyone without the will to rewrite every later line and the head. To
 * make a rewrite detectable too, copy the head hash that `mcai audit verify` prints to
 * a place the server cannot write (docs/security.md).
 *
 * It never records content: callers pass metadata only, and entries are capped at
 * MC_AUDIT_LINE_MAX bytes. */
#include "serve/audit.h"

#include "base/mem.h"
#include "store/crypto.h"

#include <jansson.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HASH_HEX 64
#define HEAD_LEN (20 + 1 + HASH_HEX + 1) /* "<seq> <hash>\n" */
static const char HASH_FIELD[] = ",\"hash\":\"";

struct mc_audit {
    pthread_mutex_t lock;
    int fd;      /* audit.log, O_APPEND */
    int head_fd; /* audit.head */
    char path[4096];
};

/* ---------------------------------------------------------------------------------------
 * Shared helpers */

static int join_path(char *out, size_t cap, const char *dir, const char *name, struct mc_err *err) {
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        return mc_err_set(err, MC_EINVAL, "audit directory path is too long (%zu bytes)",
                          strlen(dir));
    return MC_OK;
}

static int is_hex64(const char *s) {
    for (int i = 0; i < HASH_HEX; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

/* Splits a line (without its newline) into the hashed prefix and the recorded hash.
 * Returns the prefix length, or 0 when the line does not end in ,"hash":"<64 hex>"}. */
static size_t split_line(const char *line, size_t n, const char **hash) {
    size_t tail = sizeof(HASH_FIELD) - 1 + HASH_HEX + 2;
    if (n <= tail)
        return 0;
    const char *t = line + n - tail;
    if (memcmp(t, HASH_FIELD, sizeof(HASH_FIELD) - 1) != 0 || memcmp(line + n - 2, "\"}", 2))
        return 0;
    if (!is_hex64(t + sizeof(HASH_FIELD) - 1))
        return 0;
    *hash = t + sizeof(HASH_FIELD) - 1;
    return n - tail;
}

static void hash_hex(const char *data, size_t n, char out[HASH_HEX + 1]) {
    uint8_t h[32];
    mc_crypto_hash(data, n, h);
    mc_crypto_hex(h, sizeof(h), out);
}

/* ---------------------------------------------------------------------------------------
 * Append */

int mc_audit_open(const char *dir, struct mc_audit **out, struct mc_err *err) {
    *out = NULL;
    int rc = mc_crypto_init(err);
    if (rc != MC_OK)
        return rc;
    struct mc_audit *a = mc_calloc(1, sizeof(*a));
    if (!a)
        return mc_err_set(err, MC_ENOMEM, "cannot allocate the audit log");
    a->fd = a->head_fd = -1;
    pthread_mutex_init(&a->lock, NULL);
    char head[4096];
    rc = join_path(a->path, sizeof(a->path), dir, MC_AUDIT_LOG_NAME, err);
    if (rc == MC_OK)
        rc = join_path(head, sizeof(head), dir, MC_AUDIT_HEAD_NAME, err);
    if (rc != MC_OK) {
        mc_audit_close(a);
        return rc;
    }
    a->fd = open(a->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (a->fd >= 0)
        a->head_fd = open(head, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (a->fd < 0 || a->head_fd < 0) {
        rc = mc_err_set(err, MC_EIO, "cannot open %s: %s", a->fd < 0 ? a->path : head,
                        strerror(errno));
        mc_audit_close(a);
        return rc;
    }
    *out = a;
    return MC_OK;
}

void mc_audit_close(struct mc_audit *a) {
    if (!a)
        return;
    if (a->fd >= 0) {
        fdatasync(a->fd);
        close(a->fd);
    }
    if (a->head_fd >= 0) {
        fdatasync(a->head_fd);
        close(a->head_fd);
    }
    pthread_mutex_destroy(&a->lock);
    mc_free(a);
}

/* Reads the seq and hash of the log's last line (seq 0 and zeros for an empty log). */
static int read_last(struct mc_audit *a, long *seq, char hash[HASH_HEX + 1], struct mc_err *err) {
    *seq = 0;
    memset(hash, '0', HASH_HEX);
    hash[HASH_HEX] = '\0';
    int fd = open(a->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mc_err_set(err, MC_EIO, "cannot read %s: %s", a->path, strerror(errno));
    struct stat st;
    fstat(fd, &st);
    if (st.st_size == 0) {
        close(fd);
        return MC_OK;
    }
    char buf[MC_AUDIT_LINE_MAX + 2];
    size_t want = st.st_size < (off_t)sizeof(buf) - 1 ? (size_t)st.st_size : sizeof(buf) - 1;
    ssize_t got = pread(fd, buf, want, st.st_size - (off_t)want);
    close(fd);
    if (got != (ssize_t)want || buf[want - 1] != '\n')
        return mc_err_set(err, MC_EFORMAT,
                          "%s does not end with a complete line; run `mcai "
                          "audit verify` before appending",
                          a->path);
    buf[want - 1] = '\0';
    char *line = strrchr(buf, '\n');
    line = line ? line + 1 : buf;
    const char *h = NULL;
    size_t n = strlen(line);
    if (!split_line(line, n, &h) || sscanf(line, "{\"seq\":%ld,", seq) != 1)
        return mc_err_set(err, MC_EFORMAT,
                          "the last line of %s is damaged; run `mcai audit "
                          "verify`",
                          a->path);
    memcpy(hash, h, HASH_HEX);
    return MC_OK;
}

static int write_all(int fd, const char *p, size_t n, off_t at) {
    while (n > 0) {
        ssize_t w = at >= 0 ? pwrite(fd, p, n, at) : write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
        if (at >= 0)
            at += w;
    }
    return 0;
}

/* A JSON string literal of s (or null), a new string (free). */
static char *json_lit(const char *s) {
    json_t *v = s ? json_string(s) : json_null();
    char *text = v ? json_dumps(v, JSON_ENCODE_ANY) : NULL;
    json_decref(v);
    return text;
}

static void format_time(int64_t ms, char out[32]) {
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", (int)(ms % 1000));
}

/* Builds the hashed part of a line (without the hash) into a new string (free). */
static int build_prefix(long seq, int64_t now_ms, const char *actor, const char *action,
                        const char *tenant_id, const char *details_json,
                        const char prev[HASH_HEX + 1], char **out, struct mc_err *err) {
    *out = NULL;
    json_error_t je;
    json_t *d = json_loads(details_json ? details_json : "{}", 0, &je);
    if (!json_is_object(d)) {
        json_decref(d);
        return mc_err_set(err, MC_EINVAL, "audit details must be a JSON object");
    }
    char *ds = json_dumps(d, JSON_COMPACT);
    json_decref(d);
    char *ja = json_lit(actor), *jc = json_lit(action), *jt = json_lit(tenant_id);
    char ts[32];
    format_time(now_ms, ts);
    int rc = MC_OK;
    if (!ds || !ja || !jc || !jt) {
        rc = mc_err_set(err, MC_EINVAL, "audit entry has a field that is not valid UTF-8");
        goto out_free;
    }
    size_t cap = strlen(ds) + strlen(ja) + strlen(jc) + strlen(jt) + 160;
    if (cap > MC_AUDIT_LINE_MAX - 80) {
        rc = mc_err_set(err, MC_EINVAL, "audit entry of %zu bytes exceeds %d", cap,
                        MC_AUDIT_LINE_MAX);
        goto out_free;
    }
    /* Room for the hash suffix that mc_audit_append adds. */
    *out = mc_malloc(MC_AUDIT_LINE_MAX + 2);
    if (!*out) {
        rc = mc_err_set(err, MC_ENOMEM, "cannot allocate an audit line");
        goto out_free;
    }
    snprintf(*out, MC_AUDIT_LINE_MAX,
             "{\"seq\":%ld,\"time\":\"%s\",\"actor\":%s,\"action\":%s,\"tenant\":%s,"
             "\"details\":%s,\"prev\":\"%s\"",
             seq, ts, ja, jc, jt, ds, prev);
out_free:
    free(ds);
    free(ja);
    free(jc);
    free(jt);
    return rc;
}

int mc_audit_append(struct mc_audit *a, int64_t now_ms, const char *actor, const char *action,
                    const char *tenant_id, const char *details_json, struct mc_err *err) {
    if (!actor || !*actor || !action || !*action)
        return mc_err_set(err, MC_EINVAL, "audit entry needs an actor and an action");
    pthread_mutex_lock(&a->lock);
    flock(a->fd, LOCK_EX);

    long seq;
    char prev[HASH_HEX + 1], hash[HASH_HEX + 1];
    char *line = NULL;
    int rc = read_last(a, &seq, prev, err);
    if (rc == MC_OK)
        rc =
            build_prefix(seq + 1, now_ms, actor, action, tenant_id, details_json, prev, &line, err);
    if (rc != MC_OK)
        goto out_unlock;

    size_t n = strlen(line);
    hash_hex(line, n, hash);
    snprintf(line + n, MC_AUDIT_LINE_MAX - n, "%s%s\"}\n", HASH_FIELD, hash);
    n = strlen(line);
    if (write_all(a->fd, line, n, -1) != 0) {
        rc = mc_err_set(err, MC_EIO, "cannot append to %s: %s", a->path, strerror(errno));
        goto out_unlock;
    }
    char head[HEAD_LEN + 1];
    snprintf(head, sizeof(head), "%020ld %s\n", seq + 1, hash);
    if (write_all(a->head_fd, head, HEAD_LEN, 0) != 0)
        rc = mc_err_set(err, MC_EIO, "cannot write the audit head: %s", strerror(errno));
out_unlock:
    mc_free(line);
    flock(a->fd, LOCK_UN);
    pthread_mutex_unlock(&a->lock);
    return rc;
}

int mc_audit_sync(struct mc_audit *a, struct mc_err *err) {
    if (fdatasync(a->fd) != 0 || fdatasync(a->head_fd) != 0)
        return mc_err_set(err, MC_EIO, "cannot sync %s: %s", a->path, strerror(errno));
    return MC_OK;
}

/* ---------------------------------------------------------------------------------------
 * Verify */

static int bad(struct mc_audit_report *r, long line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int bad(struct mc_audit_report *r, long line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof(r->reason), fmt, ap);
    va_end(ap);
    r->bad_line = line;
    return MC_EFORMAT;
}

/* Reads audit.head: *n_head lines ending with hash head_hash; -1 when absent. */
static int read_head(const char *dir, long *n_head, char head_hash[HASH_HEX + 1]) {
    char path[4096];
    *n_head = -1;
    if (join_path(path, sizeof(path), dir, MC_AUDIT_HEAD_NAME, NULL) != MC_OK)
        return MC_OK;
    FILE *fp = fopen(path, "r");
    if (!fp)
        return MC_OK;
    char buf[HEAD_LEN + 8];
    size_t got = fread(buf, 1, sizeof(buf) - 1, fp);
    fclose(fp);
    buf[got] = '\0';
    if (got == 0)
        return MC_OK; /* created, never written: an empty log */
    if (got != HEAD_LEN || sscanf(buf, "%ld ", n_head) != 1 || buf[20] != ' ' ||
        !is_hex64(buf + 21))
        return MC_EFORMAT;
    memcpy(head_hash, buf + 21, HASH_HEX);
    head_hash[HASH_HEX] = '\0';
    return MC_OK;
}

/* Checks one line (n bytes, newline removed) against its own hash and the chain. */
static int check_line(struct mc_audit_report *r, long i, const char *line, size_t n,
                      const char *prev_hash, char this_hash[HASH_HEX + 1]) {
    const char *recorded;
    size_t n_prefix = split_line(line, n, &recorded);
    if (!n_prefix)
        return bad(r, i, "line %ld is not an audit entry (no trailing hash)", i);
    hash_hex(line, n_prefix, this_hash);
    if (memcmp(this_hash, recorded, HASH_HEX) != 0)
        return bad(r, i, "line %ld was edited: its content does not match its hash", i);

    json_error_t je;
    json_t *o = json_loadb(line, n, 0, &je);
    json_t *seq = json_object_get(o, "seq"), *prev = json_object_get(o, "prev");
    if (!json_is_integer(seq) || !json_is_string(prev)) {
        json_decref(o);
        return bad(r, i, "line %ld is not a valid audit entry (seq or prev missing)", i);
    }
    long s = (long)json_integer_value(seq);
    int prev_ok = strcmp(json_string_value(prev), prev_hash) == 0;
    json_decref(o);
    if (s > i)
        return bad(r, i,
                   "line %ld has seq %ld, expected %ld: a line before it was removed or "
                   "moved",
                   i, s, i);
    if (s < i)
        return bad(r, i, "line %ld has seq %ld, expected %ld: lines were moved or repeated", i, s,
                   i);
    if (!prev_ok)
        return bad(r, i > 1 ? i - 1 : i,
                   "line %ld does not chain to line %ld: line %ld was rewritten", i, i - 1, i - 1);
    return MC_OK;
}

int mc_audit_verify(const char *dir, struct mc_audit_report *r, struct mc_err *err) {
    memset(r, 0, sizeof(*r));
    char path[4096], head_hash[HASH_HEX + 1] = {0};
    int rc = join_path(path, sizeof(path), dir, MC_AUDIT_LOG_NAME, err);
    if (rc != MC_OK)
        return rc;
    long n_head;
    if (read_head(dir, &n_head, head_hash) != MC_OK)
        return mc_err_set(err, MC_EFORMAT, "%s/%s is damaged", dir, MC_AUDIT_HEAD_NAME);
    FILE *fp = fopen(path, "r");
    if (!fp && errno == ENOENT && n_head <= 0)
        return MC_OK; /* no log yet */
    if (!fp)
        return mc_err_set(err, errno == ENOENT ? MC_ENOTFOUND : MC_EIO, "cannot read %s: %s", path,
                          strerror(errno));

    char prev[HASH_HEX + 1], cur[HASH_HEX + 1], at_head[HASH_HEX + 1] = {0};
    memset(prev, '0', HASH_HEX);
    prev[HASH_HEX] = '\0';
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long i = 0;
    rc = MC_OK;
    while (rc == MC_OK && (len = getline(&line, &cap, fp)) > 0) {
        i++;
        if (line[len - 1] != '\n') {
            rc = bad(r, i, "line %ld is incomplete (no newline): the log was cut", i);
            break;
        }
        if (len - 1 > MC_AUDIT_LINE_MAX) {
            rc = bad(r, i, "line %ld is %zd bytes, longer than any entry", i, len - 1);
            break;
        }
        rc = check_line(r, i, line, (size_t)len - 1, prev, cur);
        memcpy(prev, cur, sizeof(prev));
        if (i == n_head)
            memcpy(at_head, cur, sizeof(at_head));
    }
    free(line);
    fclose(fp);
    r->n_lines = i;
    memcpy(r->head, prev, sizeof(r->head));
    if (rc != MC_OK)
        return rc;

    /* The head pins the end of the log: lines cut from the end show here. */
    if (n_head < 0 && i > 0)
        return bad(r, i, "%s is missing, so the end of the log cannot be checked",
                   MC_AUDIT_HEAD_NAME);
    if (i < n_head)
        return bad(r, i + 1,
                   "the log ends at line %ld but %s records %ld lines: lines were "
                   "removed from the end",
                   i, MC_AUDIT_HEAD_NAME, n_head);
    if (n_head > 0 && memcmp(at_head, head_hash, HASH_HEX) != 0)
        return bad(r, n_head, "line %ld differs from the hash recorded in %s", n_head,
                   MC_AUDIT_HEAD_NAME);
    if (i > n_head + 1)
        return bad(r, n_head + 2,
                   "lines from %ld on were not recorded in %s (appended by "
                   "something other than mcai)",
                   n_head + 2, MC_AUDIT_HEAD_NAME);
    return MC_OK;
}
