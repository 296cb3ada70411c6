/* cli_tenant.c - `mcai tenant`. Not built yet: it says so and fails. */
#include "cli/cli.h"

#include <stdio.h>

int cmd_tenant(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "mcai tenant: not available in this build yet\n");
    return CLI_ERR;
}
