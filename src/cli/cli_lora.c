/* cli_lora.c - `mcai lora`. Not built yet: it says so and fails. */
#include "cli/cli.h"

#include <stdio.h>

int cmd_lora(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "mcai lora: not available in this build yet\n");
    return CLI_ERR;
}
