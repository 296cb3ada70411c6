/* cli_generate.c - `mcai generate`. Not built yet: it says so and fails. */
#include "cli/cli.h"

#include <stdio.h>

int cmd_generate(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "mcai generate: not available in this build yet\n");
    return CLI_ERR;
}
