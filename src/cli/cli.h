/* cli.h - subcommands of the mcai command. Each returns the process exit code:
 * 0 ok, 1 runtime error, 2 usage error. Only the cli module prints to stdout. */
#ifndef MC_CLI_H
#define MC_CLI_H

enum { CLI_OK = 0, CLI_ERR = 1, CLI_USAGE = 2 };

int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_model(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_tenant(int argc, char **argv);
int cmd_key(int argc, char **argv);
int cmd_adapter(int argc, char **argv);
int cmd_audit(int argc, char **argv);
int cmd_lora(int argc, char **argv);
int cmd_kb(int argc, char **argv);

/* True if any argument is -h or --help. */
int cli_wants_help(int argc, char **argv);

#endif
