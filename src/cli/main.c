/* main.c - the mcai command: dispatches to one subcommand per file (cli_*.c). */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
    {"info", cmd_info, "show a GGUF file's metadata and tensors"},
    {"tokenize", cmd_tokenize, "print the token ids of a text"},
    {"generate", cmd_generate, "generate text from a prompt"},
    {"chat", cmd_chat, "chat interactively with a model"},
    {"quantize", cmd_quantize, "convert a model's matrices to another type"},
    {"model", cmd_model, "model tools (synth: a random-weight model of a given shape)"},
    {"bench", cmd_bench, "measure prompt and generation speed against memory bandwidth"},
    {"serve", cmd_serve, "run the multi-tenant HTTP server"},
    {"tenant", cmd_tenant, "create, list, show, update and delete tenants"},
    {"key", cmd_key, "create, list and revoke tenant API keys"},
    {"adapter", cmd_adapter, "add, publish, list, delete and pin tenants' LoRA adapters"},
    {"audit", cmd_audit, "verify the hash-chained audit log"},
    {"lora", cmd_lora, "LoRA adapter tools (info, convert, merge, synth)"},
    {"kb", cmd_kb, "knowledge-base tools (ingest, search)"},
};

int cli_wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
            return 1;
    return 0;
}

static void usage(FILE *f) {
    fprintf(f, "usage: mcai COMMAND [ARGS...]   (mcai COMMAND --help for details)\n\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nexit codes: 0 ok, 1 runtime error, 2 usage error\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return CLI_OK;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "mcai: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return CLI_USAGE;
}
