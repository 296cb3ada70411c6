/* cli_info.c - `mcai info`. Not built yet: it says so and fails. */
#include "cli/cli.h"

#include <stdio.h>

int cmd_info(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "mcai info: not available in this build yet\n");
    return CLI_ERR;
}
