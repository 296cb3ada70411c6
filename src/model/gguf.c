/* gguf.c - GGUF v2/v3 reader (over mmap or a caller buffer) and writer.
 *
 * Reader: one pass over the header, the key/value pairs and the tensor infos, then a
 * check of the data section (extents, overlaps, duplicate names). Every count and length
 * is checked against the bytes left and a named cap before it is used or drives an
 * allocation, so a hostile file costs at most memory proportional to its own size. A
 * failure returns MC_EFORMAT with "FILE: FIELD at offset N: what is wrong". Keys and
 * tensor names are copied (NUL-terminated); values and tensor data are views into the
 * buffer, except numeric arrays that are not aligned to their element size in the file,
 * which get an aligned copy so that callers may read them through typed pointers.
 * Lookups by name use sorted index arrays (bsearch). A parsed struct mc_gguf is read-only
 * and may be shared by threads. If a mapped file is truncated by another process while
 * open, reads fault (SIGBUS); that cannot be checked from here.
 *
 * Writer: keys and tensors are copied into the writer; mc_gguf_writer_write lays out
 * version 3 with alignment 32 and writes path.tmp, then renames it over path.
 *
 * Not here: the arithmetic of tensor types (quant.c); element type sizes are kept in a
 * small local table so that the reader depends on nothing else. Big-endian GGUF files and
 * the IQ* / TQ* types are rejected. */
#include "model/gguf.h"

#include "base/mem.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "gguf.c reads little-endian fields with memcpy and needs a little-endian host");

/* ---- Caps ------------------------------------------------------------------------- */

#define GGUF_MAGIC             "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_WRITE_VERSION     3
#define GGUF_MAX_KV            (1 << 20)           /* key/value pairs per file */
#define GGUF_MAX_TENSORS       (1 << 20)           /* tensors per file */
#define GGUF_MAX_KEY_BYTES     (64 * 1024)         /* one key or tensor name */
#define GGUF_MAX_STRING_BYTES  (64 << 20)          /* one string value or array element */
#define GGUF_MAX_ARRAY_N       (UINT64_C(1) << 32) /* elements of one array */
#define GGUF_MSG_NAME_CHARS    40                  /* key or tensor name as quoted in a message */
#define GGUF_MSG_FILE_CHARS    64                  /* file name as quoted in a message */

/* Smallest encodings, used to bound counts by the bytes left before allocating:
 * a kv is key length (8) + 1 key byte + value type (4) + a 1-byte value; a tensor
 * info is name length (8) + 1 name byte + n_dims (4) + one ne (8) + type (4) + offset (8). */
#define GGUF_MIN_KV_BYTES          14
#define GGUF_MIN_TENSOR_INFO_BYTES 33

/* ---- Type tables ------------------------------------------------------------------- */

struct type_info {
    const char *name;
    int64_t block;      /* elements per block; 0 = unknown type */
    size_t block_bytes; /* bytes per block */
};

static const struct type_info type_table[MC_TYPE_COUNT] = {
    [0] = {"F32", 1, 4},       [1] = {"F16", 1, 2},       [2] = {"Q4_0", 32, 18},
    [3] = {"Q4_1", 32, 20},    [6] = {"Q5_0", 32, 22},    [7] = {"Q5_1", 32, 24},
    [8] = {"Q8_0", 32, 34},    [9] = {"Q8_1", 32, 36},    [10] = {"Q2_K", 256, 84},
    [11] = {"Q3_K", 256, 110}, [12] = {"Q4_K", 256, 144}, [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210}, [15] = {"Q8_K", 256, 292}, [24] = {"I8", 1, 1},
    [25] = {"I16", 1, 2},      [26] = {"I32", 1, 4},      [27] = {"I64", 1, 8},
    [28] = {"F64", 1, 8},      [30] = {"BF16", 1, 2},
};

static const struct type_info *type_get(uint32_t t) {
    if (t >= MC_TYPE_COUNT || type_table[t].block == 0)
        return NULL;
    return &type_table[t];
}

const char *mc_gguf_type_name(enum mc_type t) {
    const struct type_info *ti = type_get((uint32_t)t);
    return ti ? ti->name : "unknown";
}

/* Bytes of one element for fixed-size value types; 0 for string, array and unknown. */
static size_t vtype_size(uint32_t t) {
    switch (t) {
    case MC_GGUF_UINT8:
    case MC_GGUF_INT8:
    case MC_GGUF_BOOL:
        return 1;
    case MC_GGUF_UINT16:
    case MC_GGUF_INT16:
        return 2;
    case MC_GGUF_UINT32:
    case MC_GGUF_INT32:
    case MC_GGUF_FLOAT32:
        return 4;
    case MC_GGUF_UINT64:
    case MC_GGUF_INT64:
    case MC_GGUF_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

static bool vtype_valid(uint32_t t) {
    return t <= MC_GGUF_FLOAT64;
}

const char *mc_gguf_vtype_name(enum mc_gguf_vtype t) {
    static const char *const names[] = {"u8",   "i8",  "u16", "i16", "u32", "i32", "f32",
                                        "bool", "str", "arr", "u64", "i64", "f64"};
    return vtype_valid((uint32_t)t) ? names[t] : "unknown";
}

/* ---- The parsed file ---------------------------------------------------------------- */

struct kv {
    char *key; /* NUL-terminated copy */
    enum mc_gguf_vtype type;
    enum mc_gguf_vtype arr_type; /* arrays only */
    uint64_t arr_n;              /* arrays only */
    const uint8_t *val;          /* scalar value; string bytes; numeric array elements */
    uint64_t str_len;            /* strings only */
    uint64_t *str_pos;           /* string arrays: file offset of each element's length */
    void *aligned;               /* owned aligned copy of a misaligned numeric array */
};

/* Sort entries carry their own key, so the comparators need no context. */
struct name_ref {
    const char *name;
    int64_t i;
};

struct mc_gguf {
    const uint8_t *base; /* file bytes (mapping or caller buffer) */
    size_t size;
    void *map; /* the mapping to unmap, or NULL for a caller buffer */
    uint32_t version;
    size_t alignment;
    size_t data_start; /* file offset of the data section */
    int64_t n_kv;
    struct kv *kv;
    struct name_ref *kv_by_name; /* keys sorted by name, for bsearch */
    int64_t n_tensors;
    struct mc_gguf_tensor *tensors;
    struct name_ref *tensor_by_name;
};

/* ---- Parser state and error reporting ------------------------------------------------ */

struct parser {
    const uint8_t *base;
    size_t size;
    size_t pos;
    char file[GGUF_MSG_FILE_CHARS + 4];
    char field[160]; /* what is being read, for messages */
    struct mc_err *err;
    struct mc_gguf *g;
    uint64_t *kv_pos;          /* file offset of each key, for messages */
    uint64_t *tensor_info_pos; /* file offset of each tensor's name, for messages */
};

/* Copies at most GGUF_MSG_NAME_CHARS of a name into out, replacing bytes that are not
 * printable ASCII or a quote with '?', so a hostile name cannot garble the message. */
static void quote_name(char *out, size_t out_size, const uint8_t *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n && i < GGUF_MSG_NAME_CHARS && k + 1 < out_size; i++)
        out[k++] = (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\'') ? (char)s[i] : '?';
    if (n > GGUF_MSG_NAME_CHARS && k + 4 < out_size) {
        memcpy(out + k, "...", 3);
        k += 3;
    }
    out[k] = '\0';
}

static void set_field(struct parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_field(struct parser *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->field, sizeof(p->field), fmt, ap);
    va_end(ap);
}

/* The offset goes before the detail so that it survives truncation of a long message. */
static int fail_at(struct parser *p, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_at(struct parser *p, size_t off, const char *fmt, ...) {
    char detail[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    return mc_err_set(p->err, MC_EFORMAT, "%s: %s at offset %zu: %s", p->file, p->field, off,
                      detail);
}

static int fail_nomem(struct parser *p, size_t bytes) {
    return mc_err_set(p->err, MC_ENOMEM, "%s: %s: cannot allocate %zu bytes", p->file, p->field,
                      bytes);
}

static void set_file_name(struct parser *p, const char *name) {
    size_t n = strlen(name);
    if (n <= GGUF_MSG_FILE_CHARS)
        snprintf(p->file, sizeof(p->file), "%s", name);
    else
        snprintf(p->file, sizeof(p->file), "...%s", name + n - GGUF_MSG_FILE_CHARS);
}

static size_t left(const struct parser *p) {
    return p->size - p->pos;
}

static int need(struct parser *p, uint64_t n) {
    if (n > left(p))
        return fail_at(p, p->pos, "needs %llu bytes, only %zu left in the file",
                       (unsigned long long)n, left(p));
    return MC_OK;
}

static int read_u32(struct parser *p, uint32_t *out) {
    int rc = need(p, 4);
    if (rc)
        return rc;
    memcpy(out, p->base + p->pos, 4);
    p->pos += 4;
    return MC_OK;
}

static int read_u64(struct parser *p, uint64_t *out) {
    int rc = need(p, 8);
    if (rc)
        return rc;
    memcpy(out, p->base + p->pos, 8);
    p->pos += 8;
    return MC_OK;
}

/* Reads a u64 length and checks it against cap and the bytes that follow. On success
 * *len is the length and p->pos points at the bytes (not consumed). */
static int read_len(struct parser *p, uint64_t cap, const char *what, uint64_t *len) {
    size_t at = p->pos;
    int rc = read_u64(p, len);
    if (rc)
        return rc;
    if (*len > cap)
        return fail_at(p, at, "%s length %llu exceeds the cap %llu", what, (unsigned long long)*len,
                       (unsigned long long)cap);
    if (*len > left(p))
        return fail_at(p, at, "%s length %llu runs past the end of the file (%zu bytes left)", what,
                       (unsigned long long)*len, left(p));
    return MC_OK;
}

/* Reads a key or tensor name: non-empty, capped, no NUL byte; returns a copy. */
static int read_name(struct parser *p, const char *what, char **out) {
    size_t at = p->pos;
    uint64_t len;
    int rc = read_len(p, GGUF_MAX_KEY_BYTES, what, &len);
    if (rc)
        return rc;
    if (len == 0)
        return fail_at(p, at, "empty %s", what);
    if (memchr(p->base + p->pos, 0, len))
        return fail_at(p, at, "%s contains a NUL byte", what);
    *out = mc_strndup((const char *)p->base + p->pos, len);
    if (!*out)
        return fail_nomem(p, len + 1);
    p->pos += len;
    return MC_OK;
}

/* ---- Header and key/value pairs ------------------------------------------------------- */

static int parse_header(struct parser *p, uint64_t *n_tensors, uint64_t *n_kv) {
    set_field(p, "magic");
    int rc = need(p, 4);
    if (rc)
        return fail_at(p, 0, "file of %zu bytes is too small for a GGUF header", p->size);
    if (memcmp(p->base, GGUF_MAGIC, 4) != 0)
        return fail_at(p, 0, "not a GGUF file (magic %02x %02x %02x %02x, expected \"GGUF\")",
                       p->base[0], p->base[1], p->base[2], p->base[3]);
    p->pos = 4;

    set_field(p, "version");
    uint32_t version;
    if ((rc = read_u32(p, &version)))
        return rc;
    if (version == 1)
        return fail_at(p, 4, "version 1 is not supported (only 2 and 3): reconvert the model");
    if (version != 2 && version != 3)
        return fail_at(p, 4, "unsupported GGUF version %u (only 2 and 3%s)", version,
                       (version & 0xffff) == 0 ? "; a big-endian file?" : "");
    p->g->version = version;

    set_field(p, "n_tensors");
    size_t at = p->pos;
    if ((rc = read_u64(p, n_tensors)))
        return rc;
    if (*n_tensors > GGUF_MAX_TENSORS)
        return fail_at(p, at, "%llu tensors exceed the cap %d", (unsigned long long)*n_tensors,
                       GGUF_MAX_TENSORS);

    set_field(p, "n_kv");
    at = p->pos;
    if ((rc = read_u64(p, n_kv)))
        return rc;
    if (*n_kv > GGUF_MAX_KV)
        return fail_at(p, at, "%llu key/value pairs exceed the cap %d", (unsigned long long)*n_kv,
                       GGUF_MAX_KV);
    if (*n_kv > left(p) / GGUF_MIN_KV_BYTES)
        return fail_at(p, at, "%llu key/value pairs cannot fit in the %zu bytes left",
                       (unsigned long long)*n_kv, left(p));
    return MC_OK;
}

static int parse_string_value(struct parser *p, struct kv *kv) {
    uint64_t len;
    int rc = read_len(p, GGUF_MAX_STRING_BYTES, "string", &len);
    if (rc)
        return rc;
    kv->val = p->base + p->pos;
    kv->str_len = len;
    p->pos += len;
    return MC_OK;
}

static int parse_scalar_value(struct parser *p, struct kv *kv) {
    size_t sz = vtype_size(kv->type);
    int rc = need(p, sz);
    if (rc)
        return rc;
    if (kv->type == MC_GGUF_BOOL && p->base[p->pos] > 1)
        return fail_at(p, p->pos, "bool value %u is neither 0 nor 1", p->base[p->pos]);
    kv->val = p->base + p->pos;
    p->pos += sz;
    return MC_OK;
}

static int parse_string_array(struct parser *p, struct kv *kv, const char *qkey, int64_t i) {
    /* Every element has at least its 8-byte length, so n * 8 <= bytes left bounds the
     * position table by the file size. */
    if (kv->arr_n > left(p) / 8)
        return fail_at(p, p->pos - 8, "%llu strings cannot fit in the %zu bytes left",
                       (unsigned long long)kv->arr_n, left(p));
    size_t bytes = (size_t)(kv->arr_n ? kv->arr_n : 1) * sizeof(uint64_t);
    kv->str_pos = mc_malloc(bytes);
    if (!kv->str_pos)
        return fail_nomem(p, bytes);
    for (uint64_t j = 0; j < kv->arr_n; j++) {
        set_field(p, "kv %lld '%s' element %llu", (long long)i, qkey, (unsigned long long)j);
        kv->str_pos[j] = p->pos;
        uint64_t len;
        int rc = read_len(p, GGUF_MAX_STRING_BYTES, "string", &len);
        if (rc)
            return rc;
        p->pos += len;
    }
    return MC_OK;
}

static int parse_array_value(struct parser *p, struct kv *kv, const char *qkey, int64_t i) {
    set_field(p, "kv %lld '%s' array type", (long long)i, qkey);
    size_t at = p->pos;
    uint32_t t;
    int rc = read_u32(p, &t);
    if (rc)
        return rc;
    if (t == MC_GGUF_ARRAY)
        return fail_at(p, at, "nested arrays are not supported");
    if (!vtype_valid(t))
        return fail_at(p, at, "unknown element type %u", t);
    kv->arr_type = (enum mc_gguf_vtype)t;

    set_field(p, "kv %lld '%s' array count", (long long)i, qkey);
    at = p->pos;
    if ((rc = read_u64(p, &kv->arr_n)))
        return rc;
    if (kv->arr_n > GGUF_MAX_ARRAY_N)
        return fail_at(p, at, "%llu elements exceed the cap %llu", (unsigned long long)kv->arr_n,
                       (unsigned long long)GGUF_MAX_ARRAY_N);
    if (t == MC_GGUF_STRING)
        return parse_string_array(p, kv, qkey, i);

    size_t esz = vtype_size(t);
    if (kv->arr_n > left(p) / esz)
        return fail_at(p, at, "%llu elements of %zu bytes exceed the %zu bytes left",
                       (unsigned long long)kv->arr_n, esz, left(p));
    size_t bytes = (size_t)kv->arr_n * esz;
    kv->val = p->base + p->pos;
    if ((uintptr_t)kv->val % esz != 0) {
        kv->aligned = mc_malloc(bytes ? bytes : 1);
        if (!kv->aligned)
            return fail_nomem(p, bytes);
        memcpy(kv->aligned, kv->val, bytes);
        kv->val = kv->aligned;
    }
    p->pos += bytes;
    for (uint64_t j = 0; t == MC_GGUF_BOOL && j < kv->arr_n; j++) {
        if (kv->val[j] > 1) {
            set_field(p, "kv %lld '%s' element %llu", (long long)i, qkey, (unsigned long long)j);
            return fail_at(p, p->pos - bytes + j, "bool value %u is neither 0 nor 1", kv->val[j]);
        }
    }
    return MC_OK;
}

/* general.alignment must be a u32 power of two; anything else is rejected rather than
 * guessed, because every tensor offset depends on it. */
static int check_alignment(struct parser *p, const struct kv *kv, int64_t i, size_t type_at) {
    set_field(p, "kv %lld 'general.alignment'", (long long)i);
    if (kv->type != MC_GGUF_UINT32)
        return fail_at(p, type_at, "stored as %s, must be u32", mc_gguf_vtype_name(kv->type));
    uint32_t a;
    memcpy(&a, kv->val, 4);
    if (a == 0 || (a & (a - 1)) != 0)
        return fail_at(p, (size_t)(kv->val - p->base), "alignment %u is not a power of two", a);
    p->g->alignment = a;
    return MC_OK;
}

static int parse_kv(struct parser *p, int64_t i) {
    struct kv *kv = &p->g->kv[i];
    set_field(p, "kv %lld key", (long long)i);
    size_t key_at = p->pos;
    p->kv_pos[i] = key_at;
    int rc = read_name(p, "key", &kv->key);
    if (rc)
        return rc;
    char qkey[GGUF_MSG_NAME_CHARS + 4];
    quote_name(qkey, sizeof(qkey), p->base + key_at + 8, strlen(kv->key));

    set_field(p, "kv %lld '%s' type", (long long)i, qkey);
    size_t type_at = p->pos;
    uint32_t t;
    if ((rc = read_u32(p, &t)))
        return rc;
    if (!vtype_valid(t))
        return fail_at(p, type_at, "unknown value type %u", t);
    kv->type = (enum mc_gguf_vtype)t;

    set_field(p, "kv %lld '%s' value", (long long)i, qkey);
    if (t == MC_GGUF_STRING)
        rc = parse_string_value(p, kv);
    else if (t == MC_GGUF_ARRAY)
        rc = parse_array_value(p, kv, qkey, i);
    else
        rc = parse_scalar_value(p, kv);
    if (rc)
        return rc;
    if (strcmp(kv->key, "general.alignment") == 0)
        return check_alignment(p, kv, i, type_at);
    return MC_OK;
}

/* ---- Tensor infos --------------------------------------------------------------------- */

/* Reads the shape and checks each dimension, the element count and the row length. */
static int parse_shape(struct parser *p, struct mc_gguf_tensor *t, const char *qname, int64_t i) {
    set_field(p, "tensor %lld '%s' n_dims", (long long)i, qname);
    size_t at = p->pos;
    uint32_t n_dims;
    int rc = read_u32(p, &n_dims);
    if (rc)
        return rc;
    if (n_dims == 0 || n_dims > MC_GGUF_MAX_DIMS)
        return fail_at(p, at, "%u dimensions, must be 1 to %d", n_dims, MC_GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;

    int64_t n_elems = 1;
    for (int d = 0; d < MC_GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        set_field(p, "tensor %lld '%s' ne[%u]", (long long)i, qname, d);
        at = p->pos;
        uint64_t ne;
        if ((rc = read_u64(p, &ne)))
            return rc;
        if (ne == 0 || ne > (uint64_t)INT64_MAX)
            return fail_at(p, at, "dimension %lld is not positive", (long long)ne);
        if (n_elems > INT64_MAX / (int64_t)ne)
            return fail_at(p, at, "element count overflows 64 bits");
        t->ne[d] = (int64_t)ne;
        n_elems *= (int64_t)ne;
    }
    return MC_OK;
}

/* Reads the type and checks that rows are whole blocks; sets size_bytes. */
static int parse_type(struct parser *p, struct mc_gguf_tensor *t, const char *qname, int64_t i,
                      size_t ne0_at) {
    set_field(p, "tensor %lld '%s' type", (long long)i, qname);
    size_t at = p->pos;
    uint32_t type;
    int rc = read_u32(p, &type);
    if (rc)
        return rc;
    const struct type_info *ti = type_get(type);
    if (!ti)
        return fail_at(p, at, "unknown tensor type %u", type);
    t->type = (enum mc_type)type;
    if (t->ne[0] % ti->block != 0) {
        set_field(p, "tensor %lld '%s' ne[0]", (long long)i, qname);
        return fail_at(p, ne0_at, "row length %lld is not a multiple of the %s block size %lld",
                       (long long)t->ne[0], ti->name, (long long)ti->block);
    }

    /* The element count fits in int64, so blocks * block_bytes (block_bytes <= 292) can
     * only overflow when it exceeds SIZE_MAX / block_bytes. */
    uint64_t rows = (uint64_t)(t->ne[1] * t->ne[2] * t->ne[3]);
    uint64_t blocks = (uint64_t)(t->ne[0] / ti->block) * rows;
    if (blocks > SIZE_MAX / ti->block_bytes)
        return fail_at(p, at, "data size overflows");
    t->size_bytes = (size_t)blocks * ti->block_bytes;
    return MC_OK;
}

static int parse_tensor_info(struct parser *p, int64_t i) {
    struct mc_gguf_tensor *t = &p->g->tensors[i];
    set_field(p, "tensor %lld name", (long long)i);
    size_t name_at = p->pos;
    p->tensor_info_pos[i] = name_at;
    char *name;
    int rc = read_name(p, "tensor name", &name);
    if (rc)
        return rc;
    t->name = name;
    char qname[GGUF_MSG_NAME_CHARS + 4];
    quote_name(qname, sizeof(qname), (const uint8_t *)name, strlen(name));

    size_t ne0_at = p->pos + 4;
    if ((rc = parse_shape(p, t, qname, i)))
        return rc;
    if ((rc = parse_type(p, t, qname, i, ne0_at)))
        return rc;

    set_field(p, "tensor %lld '%s' data offset", (long long)i, qname);
    size_t at = p->pos;
    if ((rc = read_u64(p, &t->offset)))
        return rc;
    if (t->offset % p->g->alignment != 0)
        return fail_at(p, at, "data offset %llu is not a multiple of the alignment %zu",
                       (unsigned long long)t->offset, p->g->alignment);
    return MC_OK;
}

/* ---- Whole-file checks ---------------------------------------------------------------- */

struct off_ref {
    uint64_t off;
    int64_t i;
};

static int cmp_name_ref(const void *a, const void *b) {
    const struct name_ref *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->i > y->i) - (x->i < y->i);
}

static int cmp_off_ref(const void *a, const void *b) {
    const struct off_ref *x = a, *y = b;
    if (x->off != y->off)
        return x->off < y->off ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* Sorts refs by name and returns the index of the earliest entry (in file order) whose
 * name already appeared, or -1. */
static int64_t sort_find_duplicate(struct name_ref *refs, int64_t n) {
    qsort(refs, (size_t)n, sizeof(*refs), cmp_name_ref);
    int64_t dup = -1;
    for (int64_t k = 1; k < n; k++) {
        if (strcmp(refs[k - 1].name, refs[k].name) == 0 && (dup < 0 || refs[k].i < dup))
            dup = refs[k].i;
    }
    return dup;
}

static int build_name_indexes(struct parser *p) {
    struct mc_gguf *g = p->g;
    g->kv_by_name = mc_malloc((size_t)(g->n_kv ? g->n_kv : 1) * sizeof(struct name_ref));
    g->tensor_by_name =
        mc_malloc((size_t)(g->n_tensors ? g->n_tensors : 1) * sizeof(struct name_ref));
    if (!g->kv_by_name || !g->tensor_by_name)
        return fail_nomem(p, (size_t)(g->n_kv + g->n_tensors) * sizeof(struct name_ref));
    for (int64_t i = 0; i < g->n_kv; i++)
        g->kv_by_name[i] = (struct name_ref){g->kv[i].key, i};
    for (int64_t i = 0; i < g->n_tensors; i++)
        g->tensor_by_name[i] = (struct name_ref){g->tensors[i].name, i};

    char q[GGUF_MSG_NAME_CHARS + 4];
    int64_t dup = sort_find_duplicate(g->kv_by_name, g->n_kv);
    if (dup >= 0) {
        quote_name(q, sizeof(q), (const uint8_t *)g->kv[dup].key, strlen(g->kv[dup].key));
        set_field(p, "kv %lld '%s' key", (long long)dup, q);
        return fail_at(p, p->kv_pos[dup], "duplicate key");
    }
    dup = sort_find_duplicate(g->tensor_by_name, g->n_tensors);
    if (dup >= 0) {
        const char *name = g->tensors[dup].name;
        quote_name(q, sizeof(q), (const uint8_t *)name, strlen(name));
        set_field(p, "tensor %lld '%s' name", (long long)dup, q);
        return fail_at(p, p->tensor_info_pos[dup], "duplicate tensor name");
    }
    return MC_OK;
}

/* The byte offset of tensor i's offset field: its name start + 8 + name + 4 + 8 * n_dims
 * + 4. */
static size_t tensor_offset_field(const struct parser *p, int64_t i) {
    const struct mc_gguf_tensor *t = &p->g->tensors[i];
    return p->tensor_info_pos[i] + 8 + strlen(t->name) + 4 + 8 * (size_t)t->n_dims + 4;
}

static void set_tensor_field(struct parser *p, int64_t i, const char *what) {
    char q[GGUF_MSG_NAME_CHARS + 4];
    const char *name = p->g->tensors[i].name;
    quote_name(q, sizeof(q), (const uint8_t *)name, strlen(name));
    set_field(p, "tensor %lld '%s' %s", (long long)i, q, what);
}

/* Every tensor lies inside the data section, and no two share a byte. */
static int check_extents(struct parser *p) {
    struct mc_gguf *g = p->g;
    size_t data_size = p->size - g->data_start;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        struct mc_gguf_tensor *t = &g->tensors[i];
        if (t->offset > data_size || t->size_bytes > data_size - t->offset) {
            set_tensor_field(p, i, "data offset");
            return fail_at(p, tensor_offset_field(p, i),
                           "data [%llu, +%zu) ends past the data section (%zu bytes at %zu)",
                           (unsigned long long)t->offset, t->size_bytes, data_size, g->data_start);
        }
        t->data = p->base + g->data_start + t->offset;
    }

    struct off_ref *by_off = mc_malloc((size_t)(g->n_tensors ? g->n_tensors : 1) * sizeof(*by_off));
    if (!by_off)
        return fail_nomem(p, (size_t)g->n_tensors * sizeof(*by_off));
    for (int64_t i = 0; i < g->n_tensors; i++)
        by_off[i] = (struct off_ref){g->tensors[i].offset, i};
    qsort(by_off, (size_t)g->n_tensors, sizeof(*by_off), cmp_off_ref);
    int rc = MC_OK;
    for (int64_t k = 1; k < g->n_tensors && !rc; k++) {
        const struct mc_gguf_tensor *a = &g->tensors[by_off[k - 1].i];
        const struct mc_gguf_tensor *b = &g->tensors[by_off[k].i];
        if (b->offset < a->offset + a->size_bytes) {
            char q[GGUF_MSG_NAME_CHARS + 4];
            quote_name(q, sizeof(q), (const uint8_t *)a->name, strlen(a->name));
            set_tensor_field(p, by_off[k].i, "data offset");
            rc = fail_at(p, tensor_offset_field(p, by_off[k].i),
                         "data at %llu overlaps tensor %lld '%s' [%llu, %llu)",
                         (unsigned long long)b->offset, (long long)by_off[k - 1].i, q,
                         (unsigned long long)a->offset,
                         (unsigned long long)(a->offset + a->size_bytes));
        }
    }
    mc_free(by_off);
    return rc;
}

/* ---- Open and close ------------------------------------------------------------------- */

static int parse_body(struct parser *p) {
    struct mc_gguf *g = p->g;
    uint64_t n_tensors, n_kv;
    int rc = parse_header(p, &n_tensors, &n_kv);
    if (rc)
        return rc;

    g->kv = mc_calloc((size_t)(n_kv ? n_kv : 1), sizeof(*g->kv));
    p->kv_pos = mc_calloc((size_t)(n_kv ? n_kv : 1), sizeof(uint64_t));
    if (!g->kv || !p->kv_pos)
        return fail_nomem(p, (size_t)n_kv * sizeof(*g->kv));
    for (uint64_t i = 0; i < n_kv; i++) {
        g->n_kv = (int64_t)i + 1; /* so close frees what this kv allocated */
        if ((rc = parse_kv(p, (int64_t)i)))
            return rc;
    }

    set_field(p, "n_tensors");
    if (n_tensors > left(p) / GGUF_MIN_TENSOR_INFO_BYTES)
        return fail_at(p, 8, "%llu tensor infos cannot fit in the %zu bytes after the metadata",
                       (unsigned long long)n_tensors, left(p));
    g->tensors = mc_calloc((size_t)(n_tensors ? n_tensors : 1), sizeof(*g->tensors));
    p->tensor_info_pos = mc_calloc((size_t)(n_tensors ? n_tensors : 1), sizeof(uint64_t));
    if (!g->tensors || !p->tensor_info_pos)
        return fail_nomem(p, (size_t)n_tensors * sizeof(*g->tensors));
    for (uint64_t i = 0; i < n_tensors; i++) {
        g->n_tensors = (int64_t)i + 1;
        if ((rc = parse_tensor_info(p, (int64_t)i)))
            return rc;
    }

    /* The data section starts at the next multiple of the alignment. A file without
     * tensors may end before the padding. */
    size_t pad = (g->alignment - p->pos % g->alignment) % g->alignment;
    if (n_tensors > 0 && pad > left(p)) {
        set_field(p, "data section");
        return fail_at(p, p->pos, "padding to alignment %zu runs past the end of the file",
                       g->alignment);
    }
    g->data_start = n_tensors > 0 ? p->pos + pad : p->size;

    if ((rc = build_name_indexes(p)))
        return rc;
    return check_extents(p);
}

int mc_gguf_open_buffer(const void *buf, size_t size, const char *name, struct mc_gguf **out,
                        struct mc_err *err) {
    *out = NULL;
    struct mc_gguf *g = mc_calloc(1, sizeof(*g));
    if (!g)
        return mc_err_set(err, MC_ENOMEM, "%s: cannot allocate the gguf context", name);
    static const uint8_t empty[1];
    g->base = buf ? buf : empty;
    g->size = buf ? size : 0;
    g->alignment = GGUF_DEFAULT_ALIGNMENT;

    struct parser p = {.base = g->base, .size = g->size, .err = err, .g = g};
    set_file_name(&p, name ? name : "(buffer)");
    int rc = parse_body(&p);
    mc_free(p.kv_pos);
    mc_free(p.tensor_info_pos);
    if (rc) {
        mc_gguf_close(g);
        return rc;
    }
    *out = g;
    return MC_OK;
}

int mc_gguf_open(const char *path, struct mc_gguf **out, struct mc_err *err) {
    *out = NULL;
    char ebuf[128];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mc_err_set(err, MC_EIO, "%s: cannot open: %s", path,
                          strerror_r(errno, ebuf, sizeof(ebuf)));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return mc_err_set(err, MC_EIO, "%s: not a regular file", path);
    }

    size_t size = (size_t)st.st_size;
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

    int rc = mc_gguf_open_buffer(map, size, path, out, err);
    if (rc) {
        if (map)
            munmap(map, size);
        return rc;
    }
    (*out)->map = map;
    return MC_OK;
}

void mc_gguf_close(struct mc_gguf *g) {
    if (!g)
        return;
    for (int64_t i = 0; g->kv && i < g->n_kv; i++) {
        mc_free(g->kv[i].key);
        mc_free(g->kv[i].str_pos);
        mc_free(g->kv[i].aligned);
    }
    for (int64_t i = 0; g->tensors && i < g->n_tensors; i++)
        mc_free((char *)g->tensors[i].name);
    mc_free(g->kv);
    mc_free(g->tensors);
    mc_free(g->kv_by_name);
    mc_free(g->tensor_by_name);
    if (g->map)
        munmap(g->map, g->size);
    mc_free(g);
}

/* ---- Accessors ------------------------------------------------------------------------ */

uint32_t mc_gguf_version(const struct mc_gguf *g) {
    return g->version;
}

size_t mc_gguf_alignment(const struct mc_gguf *g) {
    return g->alignment;
}

size_t mc_gguf_data_offset(const struct mc_gguf *g) {
    return g->data_start;
}

size_t mc_gguf_file_size(const struct mc_gguf *g) {
    return g->size;
}

int64_t mc_gguf_n_kv(const struct mc_gguf *g) {
    return g->n_kv;
}

int64_t mc_gguf_find_key(const struct mc_gguf *g, const char *key) {
    int64_t lo = 0, hi = g->n_kv;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(g->kv_by_name[mid].name, key);
        if (c == 0)
            return g->kv_by_name[mid].i;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

static const struct kv *kv_at(const struct mc_gguf *g, int64_t i) {
    return (i >= 0 && i < g->n_kv) ? &g->kv[i] : NULL;
}

const char *mc_gguf_key_name(const struct mc_gguf *g, int64_t i) {
    const struct kv *kv = kv_at(g, i);
    return kv ? kv->key : NULL;
}

enum mc_gguf_vtype mc_gguf_key_type(const struct mc_gguf *g, int64_t i) {
    const struct kv *kv = kv_at(g, i);
    return kv ? kv->type : MC_GGUF_UINT8;
}

enum mc_gguf_vtype mc_gguf_arr_type(const struct mc_gguf *g, int64_t i) {
    const struct kv *kv = kv_at(g, i);
    if (!kv)
        return MC_GGUF_UINT8;
    return kv->type == MC_GGUF_ARRAY ? kv->arr_type : kv->type;
}

uint64_t mc_gguf_arr_n(const struct mc_gguf *g, int64_t i) {
    const struct kv *kv = kv_at(g, i);
    return (kv && kv->type == MC_GGUF_ARRAY) ? kv->arr_n : 0;
}

const void *mc_gguf_arr_data(const struct mc_gguf *g, int64_t i) {
    const struct kv *kv = kv_at(g, i);
    if (!kv || kv->type != MC_GGUF_ARRAY || kv->arr_type == MC_GGUF_STRING)
        return NULL;
    return kv->val;
}

const char *mc_gguf_arr_str(const struct mc_gguf *g, int64_t i, uint64_t j, uint64_t *len) {
    const struct kv *kv = kv_at(g, i);
    if (!kv || kv->type != MC_GGUF_ARRAY || kv->arr_type != MC_GGUF_STRING || j >= kv->arr_n) {
        if (len)
            *len = 0;
        return NULL;
    }
    uint64_t n;
    memcpy(&n, g->base + kv->str_pos[j], 8);
    if (len)
        *len = n;
    return (const char *)g->base + kv->str_pos[j] + 8;
}

const void *mc_gguf_val_data(const struct mc_gguf *g, int64_t i) {
    const struct kv *kv = kv_at(g, i);
    if (!kv || kv->type == MC_GGUF_ARRAY || kv->type == MC_GGUF_STRING)
        return NULL;
    return kv->val;
}

/* ---- Typed getters -------------------------------------------------------------------- */

/* Reads an integer-typed scalar as a sign and a magnitude, so that every integer type
 * converts without overflow; false for non-integer types. */
static bool kv_int(const struct kv *kv, bool *neg, uint64_t *mag) {
    size_t sz = vtype_size(kv->type);
    bool is_signed;
    switch (kv->type) {
    case MC_GGUF_UINT8:
    case MC_GGUF_UINT16:
    case MC_GGUF_UINT32:
    case MC_GGUF_UINT64:
        is_signed = false;
        break;
    case MC_GGUF_INT8:
    case MC_GGUF_INT16:
    case MC_GGUF_INT32:
    case MC_GGUF_INT64:
        is_signed = true;
        break;
    default:
        return false;
    }

    /* Little-endian: copy the value into the low bytes, then sign-extend. */
    uint64_t u = 0;
    memcpy(&u, kv->val, sz);
    *neg = is_signed && (u >> (8 * sz - 1)) & 1;
    if (*neg && sz < 8)
        u |= ~UINT64_C(0) << (8 * sz);
    *mag = *neg ? (uint64_t)0 - u : u;
    return true;
}

static int lookup(const struct mc_gguf *g, const char *key, const struct kv **out,
                  struct mc_err *err) {
    int64_t i = mc_gguf_find_key(g, key);
    if (i < 0)
        return mc_err_set(err, MC_ENOTFOUND, "key '%s' not found", key);
    *out = &g->kv[i];
    return MC_OK;
}

static int bad_type(const struct kv *kv, const char *want, struct mc_err *err) {
    return mc_err_set(err, MC_EFORMAT, "key '%s': value of type %s does not convert to %s", kv->key,
                      mc_gguf_vtype_name(kv->type), want);
}

int mc_gguf_get_u32(const struct mc_gguf *g, const char *key, uint32_t *out, struct mc_err *err) {
    const struct kv *kv = NULL;
    int rc = lookup(g, key, &kv, err);
    if (rc)
        return rc;
    bool neg;
    uint64_t mag;
    if (!kv_int(kv, &neg, &mag))
        return bad_type(kv, "u32", err);
    if (neg || mag > UINT32_MAX)
        return mc_err_set(err, MC_EFORMAT, "key '%s': value %s%llu does not fit u32", key,
                          neg ? "-" : "", (unsigned long long)mag);
    *out = (uint32_t)mag;
    return MC_OK;
}

int mc_gguf_get_i64(const struct mc_gguf *g, const char *key, int64_t *out, struct mc_err *err) {
    const struct kv *kv = NULL;
    int rc = lookup(g, key, &kv, err);
    if (rc)
        return rc;
    bool neg;
    uint64_t mag;
    if (!kv_int(kv, &neg, &mag))
        return bad_type(kv, "i64", err);
    if (!neg && mag > (uint64_t)INT64_MAX)
        return mc_err_set(err, MC_EFORMAT, "key '%s': value %llu does not fit i64", key,
                          (unsigned long long)mag);
    *out = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    return MC_OK;
}

int mc_gguf_get_f32(const struct mc_gguf *g, const char *key, float *out, struct mc_err *err) {
    const struct kv *kv = NULL;
    int rc = lookup(g, key, &kv, err);
    if (rc)
        return rc;
    if (kv->type == MC_GGUF_FLOAT32) {
        memcpy(out, kv->val, 4);
        return MC_OK;
    }
    if (kv->type == MC_GGUF_FLOAT64) {
        double d;
        memcpy(&d, kv->val, 8);
        *out = (float)d;
        return MC_OK;
    }
    bool neg;
    uint64_t mag;
    if (!kv_int(kv, &neg, &mag))
        return bad_type(kv, "f32", err);
    *out = neg ? -(float)mag : (float)mag;
    return MC_OK;
}

int mc_gguf_get_bool(const struct mc_gguf *g, const char *key, bool *out, struct mc_err *err) {
    const struct kv *kv = NULL;
    int rc = lookup(g, key, &kv, err);
    if (rc)
        return rc;
    if (kv->type != MC_GGUF_BOOL)
        return bad_type(kv, "bool", err);
    *out = kv->val[0] != 0;
    return MC_OK;
}

int mc_gguf_get_str(const struct mc_gguf *g, const char *key, const char **out, uint64_t *len,
                    struct mc_err *err) {
    const struct kv *kv = NULL;
    int rc = lookup(g, key, &kv, err);
    if (rc)
        return rc;
    if (kv->type != MC_GGUF_STRING)
        return bad_type(kv, "str", err);
    *out = (const char *)kv->val;
    *len = kv->str_len;
    return MC_OK;
}

/* ---- Tensors -------------------------------------------------------------------------- */

int64_t mc_gguf_n_tensors(const struct mc_gguf *g) {
    return g->n_tensors;
}

const struct mc_gguf_tensor *mc_gguf_tensor(const struct mc_gguf *g, int64_t i) {
    return (i >= 0 && i < g->n_tensors) ? &g->tensors[i] : NULL;
}

const struct mc_gguf_tensor *mc_gguf_find_tensor(const struct mc_gguf *g, const char *name) {
    int64_t lo = 0, hi = g->n_tensors;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(g->tensor_by_name[mid].name, name);
        if (c == 0)
            return &g->tensors[g->tensor_by_name[mid].i];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* ---- Writer --------------------------------------------------------------------------- */

/* A key and its value encoded exactly as it follows the type field in the file. */
struct wkv {
    char *key;
    enum mc_gguf_vtype type;
    uint8_t *enc;
    size_t enc_size;
};

struct wtensor {
    char *name;
    enum mc_type type;
    int n_dims;
    int64_t ne[MC_GGUF_MAX_DIMS];
    void *data;
    size_t size_bytes;
};

struct mc_gguf_writer {
    struct wkv *kv;
    int64_t n_kv, cap_kv;
    struct wtensor *tensors;
    int64_t n_tensors, cap_tensors;
};

int mc_gguf_writer_create(struct mc_gguf_writer **out, struct mc_err *err) {
    *out = mc_calloc(1, sizeof(**out));
    if (!*out)
        return mc_err_set(err, MC_ENOMEM, "gguf writer: cannot allocate");
    return MC_OK;
}

void mc_gguf_writer_free(struct mc_gguf_writer *w) {
    if (!w)
        return;
    for (int64_t i = 0; i < w->n_kv; i++) {
        mc_free(w->kv[i].key);
        mc_free(w->kv[i].enc);
    }
    for (int64_t i = 0; i < w->n_tensors; i++) {
        mc_free(w->tensors[i].name);
        mc_free(w->tensors[i].data);
    }
    mc_free(w->kv);
    mc_free(w->tensors);
    mc_free(w);
}

static int check_writer_name(const char *name, const char *what, struct mc_err *err) {
    size_t n = name ? strlen(name) : 0;
    if (n == 0)
        return mc_err_set(err, MC_EINVAL, "gguf writer: empty %s", what);
    if (n > GGUF_MAX_KEY_BYTES)
        return mc_err_set(err, MC_EINVAL, "gguf writer: %s of %zu bytes exceeds the cap %d", what,
                          n, GGUF_MAX_KEY_BYTES);
    return MC_OK;
}

/* Stores key with an already encoded value (takes ownership of enc, also on failure),
 * replacing an earlier value of the same key. */
static int writer_put(struct mc_gguf_writer *w, const char *key, enum mc_gguf_vtype type,
                      uint8_t *enc, size_t enc_size, struct mc_err *err) {
    int rc = check_writer_name(key, "key", err);
    if (rc) {
        mc_free(enc);
        return rc;
    }
    for (int64_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, key) == 0) {
            mc_free(w->kv[i].enc);
            w->kv[i].type = type;
            w->kv[i].enc = enc;
            w->kv[i].enc_size = enc_size;
            return MC_OK;
        }
    }
    if (w->n_kv == GGUF_MAX_KV) {
        mc_free(enc);
        return mc_err_set(err, MC_ENOMEM, "gguf writer: more than %d keys", GGUF_MAX_KV);
    }
    if (w->n_kv == w->cap_kv) {
        int64_t cap = w->cap_kv ? w->cap_kv * 2 : 16;
        struct wkv *kv = mc_realloc(w->kv, (size_t)cap * sizeof(*kv));
        if (!kv) {
            mc_free(enc);
            return mc_err_set(err, MC_ENOMEM, "gguf writer: cannot grow the key table");
        }
        w->kv = kv;
        w->cap_kv = cap;
    }
    char *k = mc_strdup(key);
    if (!k) {
        mc_free(enc);
        return mc_err_set(err, MC_ENOMEM, "gguf writer: cannot copy key");
    }
    w->kv[w->n_kv++] = (struct wkv){k, type, enc, enc_size};
    return MC_OK;
}

/* The writer lays out alignment 32 itself; a different value would contradict it. */
static int check_alignment_key(const char *key, enum mc_gguf_vtype t, const void *v,
                               struct mc_err *err) {
    if (!key || strcmp(key, "general.alignment") != 0)
        return MC_OK;
    uint32_t a = 0;
    if (t == MC_GGUF_UINT32)
        memcpy(&a, v, 4);
    if (a != GGUF_DEFAULT_ALIGNMENT)
        return mc_err_set(err, MC_EINVAL,
                          "gguf writer: general.alignment must be u32 %d (the layout written)",
                          GGUF_DEFAULT_ALIGNMENT);
    return MC_OK;
}

int mc_gguf_writer_set_val(struct mc_gguf_writer *w, const char *key, enum mc_gguf_vtype t,
                           const void *v, struct mc_err *err) {
    size_t sz = vtype_size((uint32_t)t);
    if (sz == 0)
        return mc_err_set(err, MC_EINVAL, "gguf writer: key '%s': type %d is not a scalar",
                          key ? key : "", (int)t);
    if (t == MC_GGUF_BOOL && *(const uint8_t *)v > 1)
        return mc_err_set(err, MC_EINVAL, "gguf writer: key '%s': bool value %u", key,
                          *(const uint8_t *)v);
    int rc = check_alignment_key(key, t, v, err);
    if (rc)
        return rc;
    uint8_t *enc = mc_malloc(sz);
    if (!enc)
        return mc_err_set(err, MC_ENOMEM, "gguf writer: cannot allocate a value");
    memcpy(enc, v, sz);
    return writer_put(w, key, t, enc, sz, err);
}

int mc_gguf_writer_set_u32(struct mc_gguf_writer *w, const char *key, uint32_t v,
                           struct mc_err *err) {
    return mc_gguf_writer_set_val(w, key, MC_GGUF_UINT32, &v, err);
}

int mc_gguf_writer_set_i32(struct mc_gguf_writer *w, const char *key, int32_t v,
                           struct mc_err *err) {
    return mc_gguf_writer_set_val(w, key, MC_GGUF_INT32, &v, err);
}

int mc_gguf_writer_set_f32(struct mc_gguf_writer *w, const char *key, float v, struct mc_err *err) {
    return mc_gguf_writer_set_val(w, key, MC_GGUF_FLOAT32, &v, err);
}

int mc_gguf_writer_set_bool(struct mc_gguf_writer *w, const char *key, bool v, struct mc_err *err) {
    uint8_t b = v ? 1 : 0;
    return mc_gguf_writer_set_val(w, key, MC_GGUF_BOOL, &b, err);
}

int mc_gguf_writer_set_str(struct mc_gguf_writer *w, const char *key, const char *v, size_t len,
                           struct mc_err *err) {
    if (len > GGUF_MAX_STRING_BYTES)
        return mc_err_set(err, MC_EINVAL,
                          "gguf writer: key '%s': string of %zu bytes exceeds the cap %d",
                          key ? key : "", len, GGUF_MAX_STRING_BYTES);
    uint8_t *enc = mc_malloc(8 + len);
    if (!enc)
        return mc_err_set(err, MC_ENOMEM, "gguf writer: cannot allocate a string");
    uint64_t n = len;
    memcpy(enc, &n, 8);
    if (len)
        memcpy(enc + 8, v, len);
    return writer_put(w, key, MC_GGUF_STRING, enc, 8 + len, err);
}

int mc_gguf_writer_set_arr(struct mc_gguf_writer *w, const char *key, enum mc_gguf_vtype t,
                           const void *data, uint64_t n, struct mc_err *err) {
    size_t esz = vtype_size((uint32_t)t);
    if (esz == 0)
        return mc_err_set(err, MC_EINVAL, "gguf writer: key '%s': element type %d is not numeric",
                          key ? key : "", (int)t);
    if (n > GGUF_MAX_ARRAY_N || n > (SIZE_MAX - 12) / esz)
        return mc_err_set(err, MC_EINVAL, "gguf writer: key '%s': %llu elements exceed the cap",
                          key ? key : "", (unsigned long long)n);
    size_t bytes = (size_t)n * esz;
    for (uint64_t j = 0; t == MC_GGUF_BOOL && j < n; j++) {
        if (((const uint8_t *)data)[j] > 1)
            return mc_err_set(err, MC_EINVAL, "gguf writer: key '%s': bool element %llu is %u",
                              key ? key : "", (unsigned long long)j, ((const uint8_t *)data)[j]);
    }
    uint8_t *enc = mc_malloc(12 + bytes);
    if (!enc)
        return mc_err_set(err, MC_ENOMEM, "gguf writer: cannot allocate %zu bytes", 12 + bytes);
    uint32_t t32 = (uint32_t)t;
    memcpy(enc, &t32, 4);
    memcpy(enc + 4, &n, 8);
    if (bytes)
        memcpy(enc + 12, data, bytes);
    return writer_put(w, key, MC_GGUF_ARRAY, enc, 12 + bytes, err);
}

int mc_gguf_writer_set_arr_str(struct mc_gguf_writer *w, const char *key, const char *const *strs,
                               const uint64_t *lens, uint64_t n, struct mc_err *err) {
    if (n > GGUF_MAX_ARRAY_N)
        return mc_err_set(err, MC_EINVAL, "gguf writer: key '%s': %llu elements exceed the cap",
                          key ? key : "", (unsigned long long)n);
    size_t bytes = 12;
    for (uint64_t j = 0; j < n; j++) {
        if (lens[j] > GGUF_MAX_STRING_BYTES || bytes > SIZE_MAX - 8 - lens[j])
            return mc_err_set(err, MC_EINVAL,
                              "gguf writer: key '%s': element %llu of %llu bytes is too long",
                              key ? key : "", (unsigned long long)j, (unsigned long long)lens[j]);
        bytes += 8 + lens[j];
    }
    uint8_t *enc = mc_malloc(bytes);
    if (!enc)
        return mc_err_set(err, MC_ENOMEM, "gguf writer: cannot allocate %zu bytes", bytes);
    uint32_t t32 = MC_GGUF_STRING;
    memcpy(enc, &t32, 4);
    memcpy(enc + 4, &n, 8);
    size_t at = 12;
    for (uint64_t j = 0; j < n; j++) {
        memcpy(enc + at, &lens[j], 8);
        if (lens[j])
            memcpy(enc + at + 8, strs[j], lens[j]);
        at += 8 + lens[j];
    }
    return writer_put(w, key, MC_GGUF_ARRAY, enc, bytes, err);
}

static int copy_str_array(struct mc_gguf_writer *w, const struct mc_gguf *g, int64_t i,
                          struct mc_err *err) {
    uint64_t n = mc_gguf_arr_n(g, i);
    const char **strs = mc_malloc((size_t)(n ? n : 1) * sizeof(*strs));
    uint64_t *lens = mc_malloc((size_t)(n ? n : 1) * sizeof(*lens));
    int rc = MC_OK;
    if (!strs || !lens) {
        rc = mc_err_set(err, MC_ENOMEM, "gguf writer: cannot allocate %llu string refs",
                        (unsigned long long)n);
        goto out_free;
    }
    for (uint64_t j = 0; j < n; j++)
        strs[j] = mc_gguf_arr_str(g, i, j, &lens[j]);
    rc = mc_gguf_writer_set_arr_str(w, g->kv[i].key, strs, lens, n, err);
out_free:
    mc_free(strs);
    mc_free(lens);
    return rc;
}

int mc_gguf_writer_copy_kv(struct mc_gguf_writer *w, const struct mc_gguf *g,
                           bool (*skip)(const char *key), struct mc_err *err) {
    for (int64_t i = 0; i < g->n_kv; i++) {
        const struct kv *kv = &g->kv[i];
        if (skip && skip(kv->key))
            continue;
        /* The writer lays out alignment 32; another value in the source does not apply. */
        if (strcmp(kv->key, "general.alignment") == 0 &&
            check_alignment_key(kv->key, kv->type, kv->val, NULL) != MC_OK)
            continue;
        int rc;
        if (kv->type == MC_GGUF_STRING)
            rc = mc_gguf_writer_set_str(w, kv->key, (const char *)kv->val, kv->str_len, err);
        else if (kv->type == MC_GGUF_ARRAY && kv->arr_type == MC_GGUF_STRING)
            rc = copy_str_array(w, g, i, err);
        else if (kv->type == MC_GGUF_ARRAY)
            rc = mc_gguf_writer_set_arr(w, kv->key, kv->arr_type, kv->val, kv->arr_n, err);
        else
            rc = mc_gguf_writer_set_val(w, kv->key, kv->type, kv->val, err);
        if (rc)
            return rc;
    }
    return MC_OK;
}

/* Checks a tensor description the way the reader will and returns its data size. */
static int check_writer_tensor(const char *name, enum mc_type type, int n_dims, const int64_t *ne,
                               size_t *size, struct mc_err *err) {
    const struct type_info *ti = type_get((uint32_t)type);
    if (!ti)
        return mc_err_set(err, MC_EINVAL, "gguf writer: tensor '%s': unknown type %d", name,
                          (int)type);
    if (n_dims < 1 || n_dims > MC_GGUF_MAX_DIMS)
        return mc_err_set(err, MC_EINVAL,
                          "gguf writer: tensor '%s': %d dimensions, must be 1 to %d", name, n_dims,
                          MC_GGUF_MAX_DIMS);
    int64_t n_elems = 1;
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] <= 0 || n_elems > INT64_MAX / ne[d])
            return mc_err_set(err, MC_EINVAL,
                              "gguf writer: tensor '%s': bad dimension ne[%d] = %lld", name, d,
                              (long long)ne[d]);
        n_elems *= ne[d];
    }
    if (ne[0] % ti->block != 0)
        return mc_err_set(err, MC_EINVAL,
                          "gguf writer: tensor '%s': row %lld not a multiple of %s block %lld",
                          name, (long long)ne[0], ti->name, (long long)ti->block);
    uint64_t blocks = (uint64_t)(n_elems / ti->block);
    if (blocks > SIZE_MAX / ti->block_bytes)
        return mc_err_set(err, MC_EINVAL, "gguf writer: tensor '%s': data size overflows", name);
    *size = (size_t)blocks * ti->block_bytes;
    return MC_OK;
}

int mc_gguf_writer_add_tensor(struct mc_gguf_writer *w, const char *name, enum mc_type type,
                              int n_dims, const int64_t *ne, const void *data, struct mc_err *err) {
    int rc = check_writer_name(name, "tensor name", err);
    if (rc)
        return rc;
    size_t size = 0;
    if ((rc = check_writer_tensor(name, type, n_dims, ne, &size, err)))
        return rc;
    for (int64_t i = 0; i < w->n_tensors; i++) {
        if (strcmp(w->tensors[i].name, name) == 0)
            return mc_err_set(err, MC_EEXIST, "gguf writer: tensor '%s' added twice", name);
    }
    if (w->n_tensors == GGUF_MAX_TENSORS)
        return mc_err_set(err, MC_ENOMEM, "gguf writer: more than %d tensors", GGUF_MAX_TENSORS);
    if (w->n_tensors == w->cap_tensors) {
        int64_t cap = w->cap_tensors ? w->cap_tensors * 2 : 16;
        struct wtensor *t = mc_realloc(w->tensors, (size_t)cap * sizeof(*t));
        if (!t)
            return mc_err_set(err, MC_ENOMEM, "gguf writer: cannot grow the tensor table");
        w->tensors = t;
        w->cap_tensors = cap;
    }

    struct wtensor t = {.type = type, .n_dims = n_dims, .size_bytes = size};
    for (int d = 0; d < MC_GGUF_MAX_DIMS; d++)
        t.ne[d] = d < n_dims ? ne[d] : 1;
    t.name = mc_strdup(name);
    t.data = mc_malloc(size);
    if (!t.name || !t.data) {
        mc_free(t.name);
        mc_free(t.data);
        return mc_err_set(err, MC_ENOMEM, "gguf writer: tensor '%s': cannot copy %zu bytes", name,
                          size);
    }
    memcpy(t.data, data, size);
    w->tensors[w->n_tensors++] = t;
    return MC_OK;
}

/* A growable byte buffer for the header (metadata and tensor infos). */
struct wbuf {
    uint8_t *p;
    size_t n, cap;
    bool failed;
};

static void wbuf_put(struct wbuf *b, const void *src, size_t n) {
    if (b->failed)
        return;
    if (b->cap - b->n < n) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->n < n)
            cap *= 2;
        uint8_t *p = mc_realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void wbuf_u32(struct wbuf *b, uint32_t v) {
    wbuf_put(b, &v, 4);
}

static void wbuf_u64(struct wbuf *b, uint64_t v) {
    wbuf_put(b, &v, 8);
}

static void wbuf_str(struct wbuf *b, const char *s) {
    size_t n = strlen(s);
    wbuf_u64(b, n);
    wbuf_put(b, s, n);
}

static size_t align_up(size_t x) {
    return (x + GGUF_DEFAULT_ALIGNMENT - 1) / GGUF_DEFAULT_ALIGNMENT * GGUF_DEFAULT_ALIGNMENT;
}

/* Header, key/value pairs and tensor infos, padded to the alignment. */
static int build_header(const struct mc_gguf_writer *w, struct wbuf *b, struct mc_err *err) {
    wbuf_put(b, GGUF_MAGIC, 4);
    wbuf_u32(b, GGUF_WRITE_VERSION);
    wbuf_u64(b, (uint64_t)w->n_tensors);
    wbuf_u64(b, (uint64_t)w->n_kv);
    for (int64_t i = 0; i < w->n_kv; i++) {
        wbuf_str(b, w->kv[i].key);
        wbuf_u32(b, (uint32_t)w->kv[i].type);
        wbuf_put(b, w->kv[i].enc, w->kv[i].enc_size);
    }
    size_t offset = 0;
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const struct wtensor *t = &w->tensors[i];
        wbuf_str(b, t->name);
        wbuf_u32(b, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++)
            wbuf_u64(b, (uint64_t)t->ne[d]);
        wbuf_u32(b, (uint32_t)t->type);
        wbuf_u64(b, offset);
        offset = align_up(offset + t->size_bytes);
    }
    static const uint8_t zeros[GGUF_DEFAULT_ALIGNMENT];
    wbuf_put(b, zeros, align_up(b->n) - b->n);
    if (b->failed)
        return mc_err_set(err, MC_ENOMEM, "gguf writer: cannot allocate the header");
    return MC_OK;
}

static int write_all(FILE *f, const struct mc_gguf_writer *w, const struct wbuf *b) {
    static const uint8_t zeros[GGUF_DEFAULT_ALIGNMENT];
    if (fwrite(b->p, 1, b->n, f) != b->n)
        return -1;
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const struct wtensor *t = &w->tensors[i];
        size_t pad = align_up(t->size_bytes) - t->size_bytes;
        if (fwrite(t->data, 1, t->size_bytes, f) != t->size_bytes)
            return -1;
        if (fwrite(zeros, 1, pad, f) != pad)
            return -1;
    }
    if (fflush(f) != 0 || fsync(fileno(f)) != 0)
        return -1;
    return 0;
}

int mc_gguf_writer_write(struct mc_gguf_writer *w, const char *path, struct mc_err *err) {
    struct wbuf b = {0};
    int rc = build_header(w, &b, err);
    if (rc)
        goto out_free_buf;

    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
        rc = mc_err_set(err, MC_EINVAL, "gguf writer: path too long");
        goto out_free_buf;
    }
    char ebuf[128];
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        rc = mc_err_set(err, MC_EIO, "%s: cannot create: %s", tmp,
                        strerror_r(errno, ebuf, sizeof(ebuf)));
        goto out_free_buf;
    }
    int wr = write_all(f, w, &b);
    int e = errno;
    if (fclose(f) != 0 && wr == 0) {
        wr = -1;
        e = errno;
    }
    if (wr != 0) {
        rc =
            mc_err_set(err, MC_EIO, "%s: write failed: %s", tmp, strerror_r(e, ebuf, sizeof(ebuf)));
        unlink(tmp);
        goto out_free_buf;
    }
    if (rename(tmp, path) != 0) {
        rc = mc_err_set(err, MC_EIO, "%s: cannot rename to %s: %s", tmp, path,
                        strerror_r(errno, ebuf, sizeof(ebuf)));
        unlink(tmp);
    }
out_free_buf:
    mc_free(b.p);
    return rc;
}
