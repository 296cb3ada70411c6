/* cli_info.c - `mcai info MODEL`: what a GGUF file holds.
 *
 * Prints the version, alignment and data offset, every metadata key with its type and
 * value (strings escaped and cut at a fixed length; arrays as element type, count and
 * their first few items), then every tensor with name, type, shape, offset and size,
 * and totals (tensor bytes, parameters, bytes per type). A file the reader rejects
 * prints the reader's message (file, field, offset) and exits 1. It does not check that
 * the model is one mcai can run; `mcai generate` does that. */
#include "cli/cli.h"
#include "model/gguf.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define INFO_STR_CHARS     72 /* a string value is cut after this many bytes */
#define INFO_ARR_ITEMS     8  /* numeric array items shown */
#define INFO_ARR_STR_ITEMS 5  /* string array items shown */
#define INFO_ARR_STR_CHARS 24 /* each string array item is cut after this many bytes */

static void usage(FILE *f) {
    fprintf(f, "usage: mcai info MODEL.gguf\n"
               "  Prints the GGUF version, alignment, all metadata (long arrays abbreviated:\n"
               "  element type, count, first items) and every tensor (name, type, shape,\n"
               "  offset, size), then totals. Exit 1 if the file cannot be read.\n");
}

/* Prints s (n bytes) quoted, escaping quotes, backslashes and non-printable bytes, cut
 * after max bytes with a note of the full length. */
static void print_str(const char *s, uint64_t n, uint64_t max) {
    putchar('"');
    for (uint64_t i = 0; i < n && i < max; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c == '\n')
            fputs("\\n", stdout);
        else if (c < 0x20 || c == 0x7f)
            printf("\\x%02x", c);
        else
            putchar(c); /* UTF-8 bytes pass through */
    }
    putchar('"');
    if (n > max)
        printf("... (%" PRIu64 " bytes)", n);
}

/* Prints one element of fixed-size type t at p (little-endian, possibly unaligned). */
static void print_scalar(enum mc_gguf_vtype t, const void *p) {
    union {
        uint8_t u8;
        int8_t i8;
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        float f32;
        uint64_t u64;
        int64_t i64;
        double f64;
    } v;
    switch (t) {
    case MC_GGUF_UINT8:
        memcpy(&v.u8, p, 1);
        printf("%u", v.u8);
        break;
    case MC_GGUF_INT8:
        memcpy(&v.i8, p, 1);
        printf("%d", v.i8);
        break;
    case MC_GGUF_UINT16:
        memcpy(&v.u16, p, 2);
        printf("%u", v.u16);
        break;
    case MC_GGUF_INT16:
        memcpy(&v.i16, p, 2);
        printf("%d", v.i16);
        break;
    case MC_GGUF_UINT32:
        memcpy(&v.u32, p, 4);
        printf("%" PRIu32, v.u32);
        break;
    case MC_GGUF_INT32:
        memcpy(&v.i32, p, 4);
        printf("%" PRId32, v.i32);
        break;
    case MC_GGUF_FLOAT32:
        memcpy(&v.f32, p, 4);
        printf("%.9g", v.f32);
        break;
    case MC_GGUF_BOOL:
        memcpy(&v.u8, p, 1);
        fputs(v.u8 ? "true" : "false", stdout);
        break;
    case MC_GGUF_UINT64:
        memcpy(&v.u64, p, 8);
        printf("%" PRIu64, v.u64);
        break;
    case MC_GGUF_INT64:
        memcpy(&v.i64, p, 8);
        printf("%" PRId64, v.i64);
        break;
    case MC_GGUF_FLOAT64:
        memcpy(&v.f64, p, 8);
        printf("%.17g", v.f64);
        break;
    default:
        fputs("?", stdout);
    }
}

static size_t scalar_size(enum mc_gguf_vtype t) {
    switch (t) {
    case MC_GGUF_UINT8:
    case MC_GGUF_INT8:
    case MC_GGUF_BOOL:
        return 1;
    case MC_GGUF_UINT16:
    case MC_GGUF_INT16:
        return 2;
    case MC_GGUF_UINT64:
    case MC_GGUF_INT64:
    case MC_GGUF_FLOAT64:
        return 8;
    default:
        return 4;
    }
}

static void print_array(const struct mc_gguf *g, int64_t i) {
    enum mc_gguf_vtype t = mc_gguf_arr_type(g, i);
    uint64_t n = mc_gguf_arr_n(g, i);
    uint64_t show = t == MC_GGUF_STRING ? INFO_ARR_STR_ITEMS : INFO_ARR_ITEMS;
    printf("arr[%s] %" PRIu64 " = [", mc_gguf_vtype_name(t), n);
    const uint8_t *data = mc_gguf_arr_data(g, i);
    for (uint64_t j = 0; j < n && j < show; j++) {
        if (j)
            fputs(", ", stdout);
        if (t == MC_GGUF_STRING) {
            uint64_t len;
            const char *s = mc_gguf_arr_str(g, i, j, &len);
            print_str(s, len, INFO_ARR_STR_CHARS);
        } else {
            print_scalar(t, data + j * scalar_size(t));
        }
    }
    printf("%s]\n", n > show ? ", ..." : "");
}

static void print_metadata(const struct mc_gguf *g) {
    printf("\nmetadata: %" PRId64 " keys\n", mc_gguf_n_kv(g));
    for (int64_t i = 0; i < mc_gguf_n_kv(g); i++) {
        enum mc_gguf_vtype t = mc_gguf_key_type(g, i);
        printf("  %-40s ", mc_gguf_key_name(g, i));
        if (t == MC_GGUF_ARRAY) {
            print_array(g, i);
        } else if (t == MC_GGUF_STRING) {
            const char *s;
            uint64_t len;
            mc_gguf_get_str(g, mc_gguf_key_name(g, i), &s, &len, NULL);
            fputs("str = ", stdout);
            print_str(s, len, INFO_STR_CHARS);
            putchar('\n');
        } else {
            printf("%s = ", mc_gguf_vtype_name(t));
            print_scalar(t, mc_gguf_val_data(g, i));
            putchar('\n');
        }
    }
}

/* Per-type totals, indexed by type id. */
struct type_total {
    int64_t n_tensors;
    uint64_t bytes;
};

static void print_tensors(const struct mc_gguf *g) {
    struct type_total by_type[MC_TYPE_COUNT] = {{0}};
    uint64_t total_bytes = 0, total_params = 0;
    printf("\ntensors: %" PRId64 "\n", mc_gguf_n_tensors(g));
    printf("  %5s  %-32s %-5s %-22s %12s %12s\n", "#", "name", "type", "shape", "offset", "bytes");
    for (int64_t i = 0; i < mc_gguf_n_tensors(g); i++) {
        const struct mc_gguf_tensor *t = mc_gguf_tensor(g, i);
        char shape[96];
        int k = snprintf(shape, sizeof(shape), "[");
        uint64_t params = 1;
        for (int d = 0; d < t->n_dims; d++) {
            k += snprintf(shape + k, sizeof(shape) - (size_t)k, "%s%" PRId64, d ? ", " : "",
                          t->ne[d]);
            params *= (uint64_t)t->ne[d];
        }
        snprintf(shape + k, sizeof(shape) - (size_t)k, "]");
        printf("  %5" PRId64 "  %-32s %-5s %-22s %12" PRIu64 " %12zu\n", i, t->name,
               mc_gguf_type_name(t->type), shape, t->offset, t->size_bytes);
        by_type[t->type].n_tensors++;
        by_type[t->type].bytes += t->size_bytes;
        total_bytes += t->size_bytes;
        total_params += params;
    }

    printf("\ntotals: %" PRId64 " tensors, %" PRIu64 " parameters, %" PRIu64
           " bytes of tensor data (%.2f MiB)\n",
           mc_gguf_n_tensors(g), total_params, total_bytes, (double)total_bytes / (1 << 20));
    for (int t = 0; t < MC_TYPE_COUNT; t++) {
        if (by_type[t].n_tensors)
            printf("  %-5s %5" PRId64 " tensors %12" PRIu64 " bytes\n",
                   mc_gguf_type_name((enum mc_type)t), by_type[t].n_tensors, by_type[t].bytes);
    }
}

int cmd_info(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        usage(stdout);
        return CLI_OK;
    }
    if (argc != 2 || argv[1][0] == '-') {
        usage(stderr);
        return CLI_USAGE;
    }

    struct mc_gguf *g;
    struct mc_err err = {0};
    if (mc_gguf_open(argv[1], &g, &err) != MC_OK) {
        fprintf(stderr, "mcai info: %s\n", err.msg);
        return CLI_ERR;
    }
    printf("file: %s\n", argv[1]);
    printf("version: %u\n", mc_gguf_version(g));
    printf("alignment: %zu\n", mc_gguf_alignment(g));
    printf("data offset: %zu\n", mc_gguf_data_offset(g));
    printf("file size: %zu\n", mc_gguf_file_size(g));
    print_metadata(g);
    print_tensors(g);
    mc_gguf_close(g);
    return CLI_OK;
}
