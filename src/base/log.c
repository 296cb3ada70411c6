/* log.c - formatting and sinks for log lines (see log.h). The sink is called with the
 * whole line at once under a mutex, so lines from several threads never interleave. */
#include "base/log.h"
#include "base/err.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h> /* strcasecmp */
#include <time.h>

int mc_log_level_current = MC_LOG_INFO;

static mc_log_fn sink_fn;
static void *sink_user;
static pthread_mutex_t sink_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

void mc_log_set_level(enum mc_log_level level) {
    mc_log_level_current = (int)level;
}

int mc_log_parse_level(const char *s, enum mc_log_level *out) {
    for (int i = 0; i <= MC_LOG_DEBUG; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (enum mc_log_level)i;
            return MC_OK;
        }
    }
    return MC_EINVAL;
}

void mc_log_set_fn(mc_log_fn fn, void *user) {
    pthread_mutex_lock(&sink_lock);
    sink_fn = fn;
    sink_user = user;
    pthread_mutex_unlock(&sink_lock);
}

void mc_log_write(enum mc_log_level level, const char *module, const char *event,
                  const char *fmt, ...) {
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], module, event);
    if (n > 0 && (size_t)n < sizeof(line)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
    }

    pthread_mutex_lock(&sink_lock);
    if (sink_fn)
        sink_fn(level, line, sink_user);
    else
        fprintf(stderr, "%s\n", line);
    pthread_mutex_unlock(&sink_lock);
}
