/* cli_key.c - `mcai key`. Not built yet: it says so and fails. */
#include "cli/cli.h"

#include <stdio.h>

int cmd_key(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "mcai key: not available in this build yet\n");
    return CLI_ERR;
}
