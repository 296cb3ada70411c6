/* cli_quantize.c - `mcai quantize`. Not built yet: it says so and fails. */
#include "cli/cli.h"

#include <stdio.h>

int cmd_quantize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "mcai quantize: not available in this build yet\n");
    return CLI_ERR;
}
