/* cli_opts.c - strict number parsing and sampling options for the model commands. */
#include "cli/cli_opts.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

const char cli_sample_help[] =
    "      --temp T            temperature (default 0.8; 0 = greedy)\n"
    "      --top-k K           keep the K most likely tokens (default 40; 0 = off)\n"
    "      --top-p P           nucleus sampling (default 0.95; 1 = off)\n"
    "      --min-p P           drop tokens below P x the top probability (default 0.05)\n"
    "      --repeat-penalty R  repetition penalty (default 1 = off)\n"
    "      --repeat-last-n N   tokens the penalties look at (default 64)\n"
    "      --frequency-penalty F, --presence-penalty P   (default 0 = off)\n"
    "      --seed S            sampling seed (default: from the clock)\n";

int cli_parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int cli_parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

int cli_parse_sample_opt(struct mc_sample_params *sp, const char *opt, const char *val,
                         bool *seed_set) {
    static const char *const float_opts[] = {"--temp",
                                             "--top-p",
                                             "--min-p",
                                             "--repeat-penalty",
                                             "--frequency-penalty",
                                             "--presence-penalty"};
    float *float_dst[] = {&sp->temp,           &sp->top_p,        &sp->min_p,
                          &sp->repeat_penalty, &sp->freq_penalty, &sp->presence_penalty};
    long l;
    for (size_t i = 0; i < sizeof(float_opts) / sizeof(float_opts[0]); i++)
        if (strcmp(opt, float_opts[i]) == 0)
            return cli_parse_float(val, float_dst[i]) == 0 ? 1 : -1;
    if (strcmp(opt, "--top-k") == 0 || strcmp(opt, "--repeat-last-n") == 0) {
        if (cli_parse_long(val, 0, 1 << 20, &l) != 0)
            return -1;
        *(opt[2] == 't' ? &sp->top_k : &sp->repeat_last_n) = (int32_t)l;
        return 1;
    }
    if (strcmp(opt, "--seed") == 0) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(val, &end, 10);
        if (errno || end == val || *end || val[0] == '-')
            return -1;
        sp->seed = v;
        *seed_set = true;
        return 1;
    }
    return 0;
}
