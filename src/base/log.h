/* log.h - one line per event: timestamp, level, module, event name, key=value fields.
 *
 * The macros test the level before formatting anything. By default lines go to stderr;
 * a host program may install its own sink with mc_log_set_fn. The library never writes
 * to stdout. */
#ifndef MC_LOG_H
#define MC_LOG_H

enum mc_log_level { MC_LOG_ERROR = 0, MC_LOG_WARN = 1, MC_LOG_INFO = 2, MC_LOG_DEBUG = 3 };

typedef void (*mc_log_fn)(enum mc_log_level level, const char *line, void *user);

extern int mc_log_level_current;

/* Sets the most verbose level that is emitted (default MC_LOG_INFO). */
void mc_log_set_level(enum mc_log_level level);
/* Parses "error", "warn", "info" or "debug"; returns MC_OK or MC_EINVAL. */
int mc_log_parse_level(const char *s, enum mc_log_level *out);
/* Installs a sink for formatted lines (NULL restores stderr). */
void mc_log_set_fn(mc_log_fn fn, void *user);

void mc_log_write(enum mc_log_level level, const char *module, const char *event,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#define MC_LOG_(lvl, module, event, ...)                                                           \
    do {                                                                                           \
        if ((int)(lvl) <= mc_log_level_current)                                                    \
            mc_log_write((lvl), (module), (event), __VA_ARGS__);                                   \
    } while (0)
#define MC_LOG_ERROR(module, event, ...) MC_LOG_(MC_LOG_ERROR, module, event, __VA_ARGS__)
#define MC_LOG_WARN(module, event, ...) MC_LOG_(MC_LOG_WARN, module, event, __VA_ARGS__)
#define MC_LOG_INFO(module, event, ...) MC_LOG_(MC_LOG_INFO, module, event, __VA_ARGS__)
#define MC_LOG_DEBUG(module, event, ...) MC_LOG_(MC_LOG_DEBUG, module, event, __VA_ARGS__)

#endif
