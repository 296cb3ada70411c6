/* cli_chat.c - `mcai chat`. Not built yet: it says so and fails. */
#include "cli/cli.h"

#include <stdio.h>

int cmd_chat(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "mcai chat: not available in this build yet\n");
    return CLI_ERR;
}
