/* cli_tenant.h - what `mcai tenant` and `mcai key` share: opening a data directory with
 * its master key, store, tenants handle and audit log, and small argument parsers. */
#ifndef MC_CLI_TENANT_H
#define MC_CLI_TENANT_H

#include "serve/audit.h"
#include "store/crypto.h"
#include "store/store.h"
#include "tenant/tenant.h"

#include <stdint.h>

struct cli_data {
    struct mc_master_key *mk;
    struct mc_store *store;
    struct mc_tenants *tn;
    struct mc_audit *audit;
    char actor[96]; /* "cli:$USER" */
};

/* Opens DIR with the master key from key_file (NULL: MCAI_MASTER_KEY) and installs the
 * audit hook. Prints the reason to stderr and returns CLI_ERR on failure. */
int cli_data_open(const char *dir, const char *key_file, struct cli_data *d);
void cli_data_close(struct cli_data *d);

/* Parses a non-negative integer below 10^12; prints "mcai NAME: --OPT ..." and returns
 * CLI_USAGE when it is not one. */
int cli_parse_count(const char *cmd, const char *opt, const char *text, int64_t *out);

/* Current time in Unix milliseconds. */
int64_t cli_now_ms(void);

#endif
