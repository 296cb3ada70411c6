/* safetensors.c - hardened .safetensors reader (see safetensors.h).
 *
 * The header length is checked against the file size and a 100 MB cap (the limit of the
 * reference implementation) before jansson parses the header with duplicate keys
 * rejected; a JSON error reports jansson's text and its byte position in the file. Each
 * tensor entry must be an object with a known "dtype", a "shape" of non-negative integers
 * (at most MC_SAFETENSORS_MAX_DIMS) and "data_offsets" [begin, end] with begin <= end <=
 * data size and end - begin = elements * dtype size; other fields are ignored. Tensors
 * are sorted by offset and must not overlap (gaps are allowed). Semantic errors name the
 * tensor and give the byte offset of its name in the header (found by searching the
 * header text; if the name is written with escapes, the header's start is given).
 *
 * Names and metadata are copied, so the parsed JSON is freed after open; tensor data are
 * views into the mapping or the caller's buffer. A parsed object is read-only and may be
 * shared by threads. jansson allocates through malloc, not mc_malloc. */
#include "adapter/safetensors.h"

#include "base/mem.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h> /* json_loadb, json_object_foreach */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "safetensors.c reads the little-endian header length with memcpy");

#define ST_MAX_HEADER_BYTES 100000000 /* the reference implementation's limit */
#define ST_MAX_TENSORS      (1 << 20)
#define ST_MSG_NAME_CHARS   64 /* tensor name as quoted in a message */
#define ST_MSG_FILE_CHARS   64 /* file name as quoted in a message */
#define ST_METADATA_KEY     "__metadata__"

struct name_ref {
    const char *name;
    int64_t i;
};

struct mc_safetensors {
    const uint8_t *base;
    size_t size;
    void *map; /* the mapping to unmap, or NULL for a caller buffer */
    size_t data_start;
    int64_t n_tensors;
    struct mc_safetensors_tensor *tensors; /* sorted by offset */
    struct name_ref *by_name;              /* sorted by name, for bsearch */
    int64_t n_meta;
    char **meta_keys;
    char **meta_vals;
};

struct parser {
    struct mc_safetensors *st;
    const char *hdr; /* the JSON header text */
    size_t hdr_size;
    char file[ST_MSG_FILE_CHARS + 4];
    char field[ST_MSG_NAME_CHARS + 64];
    struct mc_err *err;
};

/* ---- Dtypes --------------------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [MC_SAFETENSORS_F32] = {"F32", 4},
    [MC_SAFETENSORS_F16] = {"F16", 2},
    [MC_SAFETENSORS_BF16] = {"BF16", 2},
};

/* Dtypes of the format that this reader does not load. */
static const char *const other_dtypes[] = {
    "F64",  "I64",     "I32",     "I16",     "I8",      "U8",      "U16", "U32", "U64",
    "BOOL", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4",  "C64"};

const char *mc_safetensors_dtype_name(enum mc_safetensors_dtype t) {
    return (unsigned)t < sizeof(dtypes) / sizeof(dtypes[0]) ? dtypes[t].name : "unknown";
}

size_t mc_safetensors_dtype_size(enum mc_safetensors_dtype t) {
    return (unsigned)t < sizeof(dtypes) / sizeof(dtypes[0]) ? dtypes[t].size : 0;
}

/* ---- Messages ------------------------------------------------------------------------- */

/* Copies at most ST_MSG_NAME_CHARS of s, replacing bytes that are not printable ASCII or
 * a quote with '?'. */
static void quote_name(char *out, size_t out_size, const char *s) {
    size_t k = 0, n = strlen(s);
    for (size_t i = 0; i < n && i < ST_MSG_NAME_CHARS && k + 1 < out_size; i++) {
        unsigned char c = (unsigned char)s[i];
        out[k++] = (c >= 0x20 && c < 0x7f && c != '\'') ? (char)c : '?';
    }
    if (n > ST_MSG_NAME_CHARS && k + 4 < out_size) {
        memcpy(out + k, "...", 3);
        k += 3;
    }
    out[k] = '\0';
}

static void set_field(struct parser *p, const char *name, const char *what) {
    char q[ST_MSG_NAME_CHARS + 4];
    quote_name(q, sizeof(q), name);
    snprintf(p->field, sizeof(p->field), "tensor '%s' %s", q, what);
}

static int fail_at(struct parser *p, int code, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail_at(struct parser *p, int code, size_t off, const char *fmt, ...) {
    char detail[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    return mc_err_set(p->err, code, "%s: %s at offset %zu: %s", p->file, p->field, off, detail);
}

static int fail_nomem(struct parser *p, size_t bytes) {
    return mc_err_set(p->err, MC_ENOMEM, "%s: cannot allocate %zu bytes", p->file, bytes);
}

/* The file offset of "name" as a key in the header, or of the header if it is not found
 * verbatim (escaped characters). A linear search, so it is only called to report an
 * error. */
static size_t key_offset(const struct parser *p, const char *name) {
    size_t n = strlen(name);
    const char *h = p->hdr, *end = p->hdr + p->hdr_size;
    while (n + 2 <= (size_t)(end - h)) {
        const char *q = memchr(h, '"', (size_t)(end - h) - n - 1);
        if (!q)
            break;
        if (memcmp(q + 1, name, n) == 0 && q[n + 1] == '"') {
            const char *c = q + n + 2;
            while (c < end && (*c == ' ' || *c == '\t' || *c == '\n' || *c == '\r'))
                c++;
            if (c < end && *c == ':')
                return 8 + (size_t)(q - p->hdr);
        }
        h = q + 1;
    }
    return 8;
}

/* ---- Tensor entries ------------------------------------------------------------------- */

static int parse_dtype(struct parser *p, const char *name, json_t *v,
                       struct mc_safetensors_tensor *t) {
    set_field(p, name, "dtype");
    const char *s = json_string_value(v);
    if (!s)
        return fail_at(p, MC_EFORMAT, key_offset(p, name), "missing or not a string");
    for (size_t k = 0; k < sizeof(dtypes) / sizeof(dtypes[0]); k++) {
        if (strcmp(s, dtypes[k].name) == 0) {
            t->dtype = (enum mc_safetensors_dtype)k;
            return MC_OK;
        }
    }
    char q[ST_MSG_NAME_CHARS + 4];
    quote_name(q, sizeof(q), s);
    for (size_t k = 0; k < sizeof(other_dtypes) / sizeof(other_dtypes[0]); k++) {
        if (strcmp(s, other_dtypes[k]) == 0)
            return fail_at(p, MC_ENOTSUP, key_offset(p, name),
                           "dtype %s is not supported (F32, F16, BF16)", q);
    }
    return fail_at(p, MC_EFORMAT, key_offset(p, name), "unknown dtype '%s'", q);
}

/* Reads a JSON integer that must be >= 0. */
static bool get_uint(json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static int parse_shape(struct parser *p, const char *name, json_t *v,
                       struct mc_safetensors_tensor *t, uint64_t *n_elems) {
    set_field(p, name, "shape");
    if (!json_is_array(v))
        return fail_at(p, MC_EFORMAT, key_offset(p, name), "missing or not an array");
    size_t n = json_array_size(v);
    if (n > MC_SAFETENSORS_MAX_DIMS)
        return fail_at(p, MC_EFORMAT, key_offset(p, name), "%zu dimensions exceed the maximum %d",
                       n, MC_SAFETENSORS_MAX_DIMS);
    t->n_dims = (int)n;
    *n_elems = 1;
    for (size_t d = 0; d < n; d++) {
        uint64_t dim;
        if (!get_uint(json_array_get(v, d), &dim))
            return fail_at(p, MC_EFORMAT, key_offset(p, name),
                           "dimension %zu is not a non-negative integer", d);
        if (dim != 0 && *n_elems > UINT64_MAX / dim)
            return fail_at(p, MC_EFORMAT, key_offset(p, name), "element count overflows 64 bits");
        t->shape[d] = (int64_t)dim;
        *n_elems *= dim;
    }
    return MC_OK;
}

static int parse_offsets(struct parser *p, const char *name, json_t *v,
                         struct mc_safetensors_tensor *t, uint64_t n_elems) {
    set_field(p, name, "data_offsets");
    uint64_t begin, end;
    if (!json_is_array(v) || json_array_size(v) != 2 || !get_uint(json_array_get(v, 0), &begin) ||
        !get_uint(json_array_get(v, 1), &end))
        return fail_at(p, MC_EFORMAT, key_offset(p, name),
                       "must be [begin, end] of non-negative integers");
    uint64_t data_size = p->st->size - p->st->data_start;
    if (begin > end)
        return fail_at(p, MC_EFORMAT, key_offset(p, name), "begin %llu is after end %llu",
                       (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return fail_at(p, MC_EFORMAT, key_offset(p, name),
                       "end %llu is past the data section (%llu bytes at file offset %zu)",
                       (unsigned long long)end, (unsigned long long)data_size, p->st->data_start);
    size_t esz = dtypes[t->dtype].size;
    if (n_elems > UINT64_MAX / esz || end - begin != n_elems * esz)
        return fail_at(p, MC_EFORMAT, key_offset(p, name),
                       "%llu bytes, but the shape and dtype %s need %llu elements of %zu bytes",
                       (unsigned long long)(end - begin), dtypes[t->dtype].name,
                       (unsigned long long)n_elems, esz);
    t->offset = begin;
    t->size_bytes = (size_t)(end - begin);
    t->data = p->st->base + p->st->data_start + begin;
    return MC_OK;
}

static int parse_tensor(struct parser *p, const char *name, json_t *v,
                        struct mc_safetensors_tensor *t) {
    set_field(p, name, "entry");
    if (!json_is_object(v))
        return fail_at(p, MC_EFORMAT, key_offset(p, name), "not an object");
    t->name = mc_strdup(name);
    if (!t->name)
        return fail_nomem(p, strlen(name) + 1);

    int rc = parse_dtype(p, name, json_object_get(v, "dtype"), t);
    if (rc)
        return rc;
    uint64_t n_elems = 0;
    if ((rc = parse_shape(p, name, json_object_get(v, "shape"), t, &n_elems)))
        return rc;
    return parse_offsets(p, name, json_object_get(v, "data_offsets"), t, n_elems);
}

static int parse_metadata(struct parser *p, json_t *v) {
    struct mc_safetensors *st = p->st;
    size_t at = key_offset(p, ST_METADATA_KEY);
    snprintf(p->field, sizeof(p->field), "%s", ST_METADATA_KEY);
    if (!json_is_object(v))
        return fail_at(p, MC_EFORMAT, at, "not an object");
    size_t n = json_object_size(v);
    st->meta_keys = mc_calloc(n ? n : 1, sizeof(char *));
    st->meta_vals = mc_calloc(n ? n : 1, sizeof(char *));
    if (!st->meta_keys || !st->meta_vals)
        return fail_nomem(p, n * sizeof(char *));
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) {
        if (!json_is_string(val)) {
            char q[ST_MSG_NAME_CHARS + 4];
            quote_name(q, sizeof(q), key);
            return fail_at(p, MC_EFORMAT, at, "value of '%s' is not a string", q);
        }
        int64_t i = st->n_meta++;
        st->meta_keys[i] = mc_strdup(key);
        st->meta_vals[i] = mc_strndup(json_string_value(val), json_string_length(val));
        if (!st->meta_keys[i] || !st->meta_vals[i])
            return fail_nomem(p, json_string_length(val) + 1);
    }
    return MC_OK;
}

/* ---- Whole-file checks ---------------------------------------------------------------- */

static int cmp_offset(const void *a, const void *b) {
    const struct mc_safetensors_tensor *x = a, *y = b;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    if (x->size_bytes != y->size_bytes)
        return x->size_bytes < y->size_bytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const struct name_ref *)a)->name, ((const struct name_ref *)b)->name);
}

/* Sorts by offset and rejects overlapping tensors; empty tensors overlap nothing. */
static int check_overlaps(struct parser *p) {
    struct mc_safetensors *st = p->st;
    qsort(st->tensors, (size_t)st->n_tensors, sizeof(*st->tensors), cmp_offset);
    const struct mc_safetensors_tensor *prev = NULL;
    for (int64_t i = 0; i < st->n_tensors; i++) {
        const struct mc_safetensors_tensor *t = &st->tensors[i];
        if (t->size_bytes == 0)
            continue;
        if (prev && t->offset < prev->offset + prev->size_bytes) {
            char q[ST_MSG_NAME_CHARS + 4];
            quote_name(q, sizeof(q), prev->name);
            set_field(p, t->name, "data_offsets");
            return fail_at(p, MC_EFORMAT, key_offset(p, t->name),
                           "[%llu, %llu) overlaps tensor '%s' [%llu, %llu)",
                           (unsigned long long)t->offset,
                           (unsigned long long)(t->offset + t->size_bytes), q,
                           (unsigned long long)prev->offset,
                           (unsigned long long)(prev->offset + prev->size_bytes));
        }
        prev = t;
    }

    st->by_name = mc_malloc((size_t)(st->n_tensors ? st->n_tensors : 1) * sizeof(*st->by_name));
    if (!st->by_name)
        return fail_nomem(p, (size_t)st->n_tensors * sizeof(*st->by_name));
    for (int64_t i = 0; i < st->n_tensors; i++)
        st->by_name[i] = (struct name_ref){st->tensors[i].name, i};
    qsort(st->by_name, (size_t)st->n_tensors, sizeof(*st->by_name), cmp_name);
    return MC_OK;
}

/* ---- Open and close ------------------------------------------------------------------- */

static int parse_header_length(struct parser *p) {
    struct mc_safetensors *st = p->st;
    snprintf(p->field, sizeof(p->field), "header length");
    if (st->size < 8)
        return fail_at(p, MC_EFORMAT, 0, "file of %zu bytes is too small for a header", st->size);
    uint64_t n;
    memcpy(&n, st->base, 8);
    if (n > ST_MAX_HEADER_BYTES)
        return fail_at(p, MC_EFORMAT, 0, "%llu bytes exceed the cap %d", (unsigned long long)n,
                       ST_MAX_HEADER_BYTES);
    if (n > st->size - 8)
        return fail_at(p, MC_EFORMAT, 0, "%llu bytes run past the end of the file (%zu left)",
                       (unsigned long long)n, st->size - 8);
    p->hdr = (const char *)st->base + 8;
    p->hdr_size = (size_t)n;
    st->data_start = 8 + (size_t)n;
    return MC_OK;
}

static int parse_entries(struct parser *p, json_t *root) {
    struct mc_safetensors *st = p->st;
    snprintf(p->field, sizeof(p->field), "header");
    if (!json_is_object(root))
        return fail_at(p, MC_EFORMAT, 8, "not a JSON object");
    size_t n = json_object_size(root);
    if (n > ST_MAX_TENSORS)
        return fail_at(p, MC_EFORMAT, 8, "%zu entries exceed the cap %d", n, ST_MAX_TENSORS);
    st->tensors = mc_calloc(n ? n : 1, sizeof(*st->tensors));
    if (!st->tensors)
        return fail_nomem(p, n * sizeof(*st->tensors));

    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        int rc;
        if (strcmp(key, ST_METADATA_KEY) == 0) {
            rc = parse_metadata(p, val);
        } else {
            rc = parse_tensor(p, key, val, &st->tensors[st->n_tensors]);
            st->n_tensors++; /* counted even on failure, so close frees the name */
        }
        if (rc)
            return rc;
    }
    return check_overlaps(p);
}

int mc_safetensors_open_buffer(const void *buf, size_t size, const char *name,
                               struct mc_safetensors **out, struct mc_err *err) {
    *out = NULL;
    struct mc_safetensors *st = mc_calloc(1, sizeof(*st));
    if (!st)
        return mc_err_set(err, MC_ENOMEM, "%s: cannot allocate", name ? name : "(buffer)");
    static const uint8_t empty[1];
    st->base = buf ? buf : empty;
    st->size = buf ? size : 0;

    struct parser p = {.st = st, .err = err};
    name = name ? name : "(buffer)";
    size_t n = strlen(name);
    snprintf(p.file, sizeof(p.file), "%s%s", n > ST_MSG_FILE_CHARS ? "..." : "",
             n > ST_MSG_FILE_CHARS ? name + n - ST_MSG_FILE_CHARS : name);

    int rc = parse_header_length(&p);
    if (rc)
        goto out_close;
    json_error_t jerr;
    json_t *root = json_loadb(p.hdr, p.hdr_size, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(p.field, sizeof(p.field), "header JSON");
        rc = fail_at(&p, MC_EFORMAT, 8 + (size_t)jerr.position, "%s", jerr.text);
        goto out_close;
    }
    rc = parse_entries(&p, root);
    json_decref(root);
    if (rc)
        goto out_close;
    *out = st;
    return MC_OK;

out_close:
    mc_safetensors_close(st);
    return rc;
}

int mc_safetensors_open(const char *path, struct mc_safetensors **out, struct mc_err *err) {
    *out = NULL;
    char ebuf[128];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mc_err_set(err, MC_EIO, "%s: cannot open: %s", path,
                          strerror_r(errno, ebuf, sizeof(ebuf)));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return mc_err_set(err, MC_EIO, "%s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return mc_err_set(err, MC_EIO, "%s: cannot map %zu bytes: %s", path, size,
                              strerror_r(e, ebuf, sizeof(ebuf)));
        }
    }
    close(fd); /* the mapping keeps the file open */

    int rc = mc_safetensors_open_buffer(map, size, path, out, err);
    if (rc) {
        if (map)
            munmap(map, size);
        return rc;
    }
    (*out)->map = map;
    return MC_OK;
}

void mc_safetensors_close(struct mc_safetensors *st) {
    if (!st)
        return;
    for (int64_t i = 0; st->tensors && i < st->n_tensors; i++)
        mc_free((char *)st->tensors[i].name);
    for (int64_t i = 0; i < st->n_meta; i++) {
        mc_free(st->meta_keys[i]);
        mc_free(st->meta_vals[i]);
    }
    mc_free(st->tensors);
    mc_free(st->by_name);
    mc_free(st->meta_keys);
    mc_free(st->meta_vals);
    if (st->map)
        munmap(st->map, st->size);
    mc_free(st);
}

/* ---- Accessors ------------------------------------------------------------------------ */

int64_t mc_safetensors_n_tensors(const struct mc_safetensors *st) {
    return st->n_tensors;
}

const struct mc_safetensors_tensor *mc_safetensors_tensor(const struct mc_safetensors *st,
                                                          int64_t i) {
    return (i >= 0 && i < st->n_tensors) ? &st->tensors[i] : NULL;
}

const struct mc_safetensors_tensor *mc_safetensors_find(const struct mc_safetensors *st,
                                                        const char *name) {
    struct name_ref key = {name, 0};
    const struct name_ref *r =
        bsearch(&key, st->by_name, (size_t)st->n_tensors, sizeof(key), cmp_name);
    return r ? &st->tensors[r->i] : NULL;
}

int64_t mc_safetensors_n_metadata(const struct mc_safetensors *st) {
    return st->n_meta;
}

const char *mc_safetensors_metadata_key(const struct mc_safetensors *st, int64_t i) {
    return (i >= 0 && i < st->n_meta) ? st->meta_keys[i] : NULL;
}

const char *mc_safetensors_metadata_value(const struct mc_safetensors *st, int64_t i) {
    return (i >= 0 && i < st->n_meta) ? st->meta_vals[i] : NULL;
}

const char *mc_safetensors_metadata(const struct mc_safetensors *st, const char *key) {
    for (int64_t i = 0; i < st->n_meta; i++) {
        if (strcmp(st->meta_keys[i], key) == 0)
            return st->meta_vals[i];
    }
    return NULL;
}
