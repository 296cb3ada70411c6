/* cli_audit.c - `mcai audit`. Not built yet: it says so and fails. */
#include "cli/cli.h"

#include <stdio.h>

int cmd_audit(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "mcai audit: not available in this build yet\n");
    return CLI_ERR;
}
