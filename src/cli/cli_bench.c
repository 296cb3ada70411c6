/* cli_bench.c - `mcai bench`. Not built yet: it says so and fails. */
#include "cli/cli.h"

#include <stdio.h>

int cmd_bench(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "mcai bench: not available in this build yet\n");
    return CLI_ERR;
}
