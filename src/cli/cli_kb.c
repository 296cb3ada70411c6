/* cli_kb.c - `mcai kb`. Not built yet: it says so and fails. */
#include "cli/cli.h"

#include <stdio.h>

int cmd_kb(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "mcai kb: not available in this build yet\n");
    return CLI_ERR;
}
