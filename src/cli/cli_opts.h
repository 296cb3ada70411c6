/* cli_opts.h - option parsing shared by the commands that run a model (generate, chat,
 * bench): strict number parsing and the sampling options. */
#ifndef MC_CLI_OPTS_H
#define MC_CLI_OPTS_H

#include "model/sample.h"

#include <stdbool.h>

/* Strict decimal parse of all of s into [lo, hi]; 0 on success, -1 otherwise. */
int cli_parse_long(const char *s, long lo, long hi, long *out);
/* Strict parse of all of s as a finite float; 0 on success, -1 otherwise. */
int cli_parse_float(const char *s, float *out);

/* If opt is a sampling option (--temp, --top-k, --top-p, --min-p, --repeat-penalty,
 * --repeat-last-n, --frequency-penalty, --presence-penalty, --seed) stores val into sp
 * and returns 1 (setting *seed_set for --seed); returns 0 for other options and -1 for a
 * bad value. */
int cli_parse_sample_opt(struct mc_sample_params *sp, const char *opt, const char *val,
                         bool *seed_set);

/* Help lines for the sampling options. */
extern const char cli_sample_help[];

#endif
