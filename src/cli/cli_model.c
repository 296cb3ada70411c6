/* cli_model.c - `mcai model`. Not built yet: it says so and fails. */
#include "cli/cli.h"

#include <stdio.h>

int cmd_model(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "mcai model: not available in this build yet\n");
    return CLI_ERR;
}
