/* cli_audit.c - `mcai audit verify --data DIR`: checks the hash chain of DIR/audit.log.
 *
 * Needs no master key: the chain is plain BLAKE2b. Prints "OK" with the line count and
 * the hash of the last line (worth copying somewhere the server cannot write), or the
 * first bad line and why, and exits 1. */
#include "cli/cli.h"

#include "serve/audit.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char USAGE[] =
    "usage: mcai audit verify --data DIR\n"
    "\n"
    "Verifies DIR/audit.log, the hash-chained log of admin actions and key use: every line\n"
    "must match its own hash, name the previous line's hash and carry the next sequence\n"
    "number, and the log must end where DIR/audit.head says. Prints OK, the number of\n"
    "lines and the hash of the last line; or the first line that was edited, removed or\n"
    "reordered.\n"
    "\n"
    "exit codes: 0 the chain is whole, 1 it is not (or cannot be read), 2 usage error\n";

int cmd_audit(int argc, char **argv) {
    if (argc < 2 || cli_wants_help(argc, argv)) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_USAGE : CLI_OK;
    }
    if (strcmp(argv[1], "verify") != 0) {
        fprintf(stderr, "mcai audit: unknown action '%s'\n\n%s", argv[1], USAGE);
        return CLI_USAGE;
    }
    const char *data = NULL;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--data") && i + 1 < argc)
            data = argv[++i];
        else if (!strncmp(argv[i], "--data=", 7))
            data = argv[i] + 7;
        else {
            fprintf(stderr, "mcai audit verify: unexpected argument '%s'\n", argv[i]);
            return CLI_USAGE;
        }
    }
    if (!data) {
        fprintf(stderr, "mcai audit verify: --data DIR is required\n");
        return CLI_USAGE;
    }
    if (access(data, F_OK) != 0) {
        fprintf(stderr, "mcai audit verify: data directory %s does not exist\n", data);
        return CLI_ERR;
    }
    struct mc_audit_report r;
    struct mc_err err = {0};
    int rc = mc_audit_verify(data, &r, &err);
    if (rc == MC_OK) {
        printf("OK: %ld lines, last hash %s\n", r.n_lines, r.n_lines ? r.head : "-");
        return CLI_OK;
    }
    if (rc == MC_EFORMAT && r.bad_line > 0) {
        printf("FAILED at line %ld: %s\n", r.bad_line, r.reason);
        return CLI_ERR;
    }
    fprintf(stderr, "mcai audit verify: %s\n", err.msg);
    return CLI_ERR;
}
