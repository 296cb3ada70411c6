/* cli_serve.c - `mcai serve`. Not built yet: it says so and fails. */
#include "cli/cli.h"

#include <stdio.h>

int cmd_serve(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "mcai serve: not available in this build yet\n");
    return CLI_ERR;
}
