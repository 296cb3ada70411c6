/* test_audit.c - the hash-chained audit log: appends from threads and from two handles
 * (as two processes would) keep one chain; verify finds an edited, removed, reordered or
 * rewritten line and lines cut from the end, and names the first bad line. */
#include "base/err.h"
#include "base/mem.h"
#include "serve/audit.h"
#include "store/crypto.h"
#include "test_util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define T0_MS 1796299200000LL /* 2026-12-03T12:00:00Z */

struct fx {
    char dir[64];
    char log[128];
    char head[128];
};

static int setup(void **state) {
    struct fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/mcai-test-audit-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->log, sizeof(f->log), "%s/audit.log", f->dir);
    snprintf(f->head, sizeof(f->head), "%s/audit.head", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    struct fx *f = *state;
    unlink(f->log);
    unlink(f->head);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Appends n entries "tenant.create" for tenants t_1..t_n. */
static void append_n(struct fx *f, int n) {
    struct mc_err err = {0};
    struct mc_audit *a;
    assert_int_equal(mc_audit_open(f->dir, &a, &err), MC_OK);
    for (int i = 1; i <= n; i++) {
        char tenant[32], details[64];
        snprintf(tenant, sizeof(tenant), "t_%d", i);
        snprintf(details, sizeof(details), "{\"name\":\"n%d\"}", i);
        int rc = mc_audit_append(a, T0_MS + i, "cli:test", "tenant.create", tenant, details, &err);
        if (rc != MC_OK)
            fail_msg("append %d: %s", i, err.msg);
    }
    mc_audit_close(a);
}

/* Reads the log as an array of lines (each with its newline). */
static int read_lines(const char *path, char lines[][1024], int max) {
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    int n = 0;
    while (n < max && fgets(lines[n], 1024, fp))
        n++;
    fclose(fp);
    return n;
}

static void write_lines(const char *path, char lines[][1024], int n) {
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    for (int i = 0; i < n; i++)
        fputs(lines[i], fp);
    fclose(fp);
}

static long verify_bad_line(struct fx *f, char *reason, size_t cap) {
    struct mc_audit_report r;
    struct mc_err err = {0};
    int rc = mc_audit_verify(f->dir, &r, &err);
    snprintf(reason, cap, "%s", r.reason);
    if (rc == MC_OK) {
        assert_int_equal(r.bad_line, 0);
        return 0;
    }
    assert_int_equal(rc, MC_EFORMAT);
    return r.bad_line;
}

static void test_audit_lines_have_the_documented_shape(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    struct mc_audit *a;
    assert_int_equal(mc_audit_open(f->dir, &a, &err), MC_OK);
    assert_int_equal(mc_audit_append(a, T0_MS + 123, "admin", "key.use", NULL,
                                     "{\"prefix\":\"mcai_AbCdEfGh\",\"n\":2}", &err),
                     MC_OK);
    assert_int_equal(mc_audit_append(a, T0_MS, "admin", "x", NULL, "[1]", &err), MC_EINVAL);
    assert_string_equal(err.msg, "audit details must be a JSON object");
    assert_int_equal(mc_audit_append(a, T0_MS, "", "x", NULL, NULL, &err), MC_EINVAL);
    char big[MC_AUDIT_LINE_MAX + 100];
    memset(big, 'a', sizeof(big));
    memcpy(big, "{\"k\":\"", 6);
    memcpy(big + sizeof(big) - 3, "\"}", 3);
    assert_int_equal(mc_audit_append(a, T0_MS, "admin", "x", NULL, big, &err), MC_EINVAL);
    assert_non_null(strstr(err.msg, "exceeds 8192"));
    mc_audit_close(a);

    char lines[4][1024];
    assert_int_equal(read_lines(f->log, lines, 4), 1);
    const char *want_start = "{\"seq\":1,\"time\":\"2026-12-03T12:00:00.123Z\",\"actor\":\"admin\","
                             "\"action\":\"key.use\",\"tenant\":null,\"details\":{\"prefix\":"
                             "\"mcai_AbCdEfGh\",\"n\":2},\"prev\":\"000000000000000000000000000"
                             "0000000000000000000000000000000000000\",\"hash\":\"";
    assert_memory_equal(lines[0], want_start, strlen(want_start));
    /* The recorded hash is BLAKE2b-256 of the bytes before ,"hash":. */
    size_t n_prefix = strlen(lines[0]) - strlen(",\"hash\":\"") - 64 - 3;
    uint8_t h[32];
    char hex[65];
    mc_crypto_hash(lines[0], n_prefix, h);
    mc_crypto_hex(h, 32, hex);
    assert_memory_equal(lines[0] + n_prefix + strlen(",\"hash\":\""), hex, 64);

    struct mc_audit_report r;
    assert_int_equal(mc_audit_verify(f->dir, &r, &err), MC_OK);
    assert_int_equal(r.n_lines, 1);
    assert_string_equal(r.head, hex);
}

static void test_audit_verify_ok_and_empty(void **state) {
    struct fx *f = *state;
    struct mc_audit_report r;
    struct mc_err err = {0};
    assert_int_equal(mc_audit_verify(f->dir, &r, &err), MC_OK);
    assert_int_equal(r.n_lines, 0);
    append_n(f, 5);
    append_n(f, 3); /* a second session continues the same chain */
    assert_int_equal(mc_audit_verify(f->dir, &r, &err), MC_OK);
    assert_int_equal(r.n_lines, 8);
    assert_int_equal(r.bad_line, 0);
}

static void test_audit_verify_detects_edited_line(void **state) {
    struct fx *f = *state;
    char lines[16][1024], reason[200];
    append_n(f, 6);
    int n = read_lines(f->log, lines, 16);
    char *p = strstr(lines[3], "\"n4\"");
    assert_non_null(p);
    p[2] = '9'; /* the name of tenant 4 becomes n9 */
    write_lines(f->log, lines, n);
    assert_int_equal(verify_bad_line(f, reason, sizeof(reason)), 4);
    assert_string_equal(reason, "line 4 was edited: its content does not match its hash");
}

static void test_audit_verify_detects_rewritten_line(void **state) {
    struct fx *f = *state;
    char lines[16][1024], reason[200];
    append_n(f, 6);
    int n = read_lines(f->log, lines, 16);
    /* Edit line 2 and give it a correct hash of its new content: line 3 no longer chains. */
    char *p = strstr(lines[1], "\"n2\"");
    p[2] = '7';
    size_t len = strlen(lines[1]);
    size_t n_prefix = len - strlen(",\"hash\":\"") - 64 - 3;
    uint8_t h[32];
    char hex[65];
    mc_crypto_hash(lines[1], n_prefix, h);
    mc_crypto_hex(h, 32, hex);
    memcpy(lines[1] + n_prefix + strlen(",\"hash\":\""), hex, 64);
    write_lines(f->log, lines, n);
    assert_int_equal(verify_bad_line(f, reason, sizeof(reason)), 2);
    assert_string_equal(reason, "line 3 does not chain to line 2: line 2 was rewritten");
}

static void test_audit_verify_detects_removed_line(void **state) {
    struct fx *f = *state;
    char lines[16][1024], reason[200];
    append_n(f, 6);
    int n = read_lines(f->log, lines, 16);
    memmove(lines[2], lines[3], sizeof(lines[0]) * (size_t)(n - 3));
    write_lines(f->log, lines, n - 1);
    assert_int_equal(verify_bad_line(f, reason, sizeof(reason)), 3);
    assert_string_equal(reason,
                        "line 3 has seq 4, expected 3: a line before it was removed or moved");
}

static void test_audit_verify_detects_reordered_pair(void **state) {
    struct fx *f = *state;
    char lines[16][1024], tmp[1024], reason[200];
    append_n(f, 6);
    int n = read_lines(f->log, lines, 16);
    memcpy(tmp, lines[4], sizeof(tmp));
    memcpy(lines[4], lines[3], sizeof(tmp));
    memcpy(lines[3], tmp, sizeof(tmp));
    write_lines(f->log, lines, n);
    assert_int_equal(verify_bad_line(f, reason, sizeof(reason)), 4);
    assert_string_equal(reason,
                        "line 4 has seq 5, expected 4: a line before it was removed or moved");
}

static void test_audit_verify_detects_cut_end_and_missing_head(void **state) {
    struct fx *f = *state;
    char lines[16][1024], reason[200];
    append_n(f, 6);
    int n = read_lines(f->log, lines, 16);
    write_lines(f->log, lines, n - 2);
    assert_int_equal(verify_bad_line(f, reason, sizeof(reason)), 5);
    assert_string_equal(reason, "the log ends at line 4 but audit.head records 6 lines: lines "
                                "were removed from the end");
    write_lines(f->log, lines, n);
    assert_int_equal(verify_bad_line(f, reason, sizeof(reason)), 0);
    /* A torn last line (no newline). */
    lines[5][strlen(lines[5]) - 1] = '\0';
    write_lines(f->log, lines, n);
    assert_int_equal(verify_bad_line(f, reason, sizeof(reason)), 6);
    assert_string_equal(reason, "line 6 is incomplete (no newline): the log was cut");
    /* Appending refuses to chain onto a torn line. */
    struct mc_err err = {0};
    struct mc_audit *a;
    assert_int_equal(mc_audit_open(f->dir, &a, &err), MC_OK);
    assert_int_equal(mc_audit_append(a, T0_MS, "admin", "x", NULL, NULL, &err), MC_EFORMAT);
    assert_non_null(strstr(err.msg, "does not end with a complete line"));
    mc_audit_close(a);
    unlink(f->head);
    lines[5][strlen(lines[5])] = '\n';
    write_lines(f->log, lines, n);
    assert_int_equal(verify_bad_line(f, reason, sizeof(reason)), 6);
    assert_string_equal(reason, "audit.head is missing, so the end of the log cannot be checked");
}

struct worker {
    struct mc_audit *a;
    int id;
};

static void *append_many(void *arg) {
    struct worker *w = arg;
    for (int i = 0; i < 50; i++) {
        char d[64];
        snprintf(d, sizeof(d), "{\"worker\":%d,\"i\":%d}", w->id, i);
        if (mc_audit_append(w->a, T0_MS + i, "admin", "key.use", "t_x", d, NULL) != MC_OK)
            return (void *)1;
    }
    return NULL;
}

static void test_audit_threads_and_two_handles_keep_one_chain(void **state) {
    struct fx *f = *state;
    struct mc_err err = {0};
    struct mc_audit *a, *b; /* two handles on one file, as two processes have */
    assert_int_equal(mc_audit_open(f->dir, &a, &err), MC_OK);
    assert_int_equal(mc_audit_open(f->dir, &b, &err), MC_OK);
    pthread_t th[4];
    struct worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i].a = i % 2 ? b : a;
        w[i].id = i;
        pthread_create(&th[i], NULL, append_many, &w[i]);
    }
    for (int i = 0; i < 4; i++) {
        void *ret;
        pthread_join(th[i], &ret);
        assert_null(ret);
    }
    mc_audit_close(a);
    mc_audit_close(b);
    struct mc_audit_report r;
    int rc = mc_audit_verify(f->dir, &r, &err);
    if (rc != MC_OK)
        fail_msg("verify: line %ld: %s", r.bad_line, r.reason);
    assert_int_equal(r.n_lines, 200);
}

/* Runs a shell command, captures its first output line, returns its exit status. */
static int run_cmd(const char *cmd, char *line, size_t cap) {
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    line[0] = '\0';
    if (!fgets(line, (int)cap, p))
        line[0] = '\0';
    char drain[256];
    while (fgets(drain, sizeof(drain), p))
        ;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli_audit_verify_exit_codes(void **state) {
    struct fx *f = *state;
    const char *mcai = getenv("MCAI");
    if (!mcai || access(mcai, X_OK) != 0)
        skip(); /* run by `make test`, which sets MCAI */
    char cmd[512], out[512], lines[8][1024];
    append_n(f, 3);
    snprintf(cmd, sizeof(cmd), "%s audit verify --data %s 2>&1", mcai, f->dir);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 0);
    assert_memory_equal(out, "OK: 3 lines, last hash ", 23);

    int n = read_lines(f->log, lines, 8);
    char *p = strstr(lines[1], "cli:test");
    p[4] = 'X';
    write_lines(f->log, lines, n);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 1);
    assert_string_equal(out, "FAILED at line 2: line 2 was edited: its content does not match "
                             "its hash\n");

    snprintf(cmd, sizeof(cmd), "%s audit verify 2>&1", mcai);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 2);
    assert_string_equal(out, "mcai audit verify: --data DIR is required\n");
    snprintf(cmd, sizeof(cmd), "%s audit --help", mcai);
    assert_int_equal(run_cmd(cmd, out, sizeof(out)), 0);
    assert_string_equal(out, "usage: mcai audit verify --data DIR\n");
}

int main(void) {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_audit_lines_have_the_documented_shape),
        T(test_audit_verify_ok_and_empty),
        T(test_audit_verify_detects_edited_line),
        T(test_audit_verify_detects_rewritten_line),
        T(test_audit_verify_detects_removed_line),
        T(test_audit_verify_detects_reordered_pair),
        T(test_audit_verify_detects_cut_end_and_missing_head),
        T(test_audit_threads_and_two_handles_keep_one_chain),
        T(test_cli_audit_verify_exit_codes),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
