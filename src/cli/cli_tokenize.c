/* cli_tokenize.c - `mcai tokenize`. Not built yet: it says so and fails. */
#include "cli/cli.h"

#include <stdio.h>

int cmd_tokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "mcai tokenize: not available in this build yet\n");
    return CLI_ERR;
}
