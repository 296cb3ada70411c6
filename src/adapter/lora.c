/* lora.c - the LoRA adapter object: building it from parsed pairs, reference counting,
 * inspection, random adapters and writing GGUF LoRA files.
 *
 * Data structure: every A and Bᵀ of an adapter lives in one block (A (r, n_in) then
 * Bᵀ (r, n_out) for each pair, in (layer, proj) order), and a slot table indexed by
 * layer * MC_PROJ_COUNT + proj points at the pair of that projection, so the forward
 * hook finds a pair in O(1). The block is F16 when every tensor of the file was F16 and
 * F32 otherwise (BF16 and Q8_0 files are widened, F32 stays exact); mc_lora_convert
 * makes F32, F16 or Q8_0 copies. PEFT's q/k lora_B rows are permuted into GGUF's rope
 * order while B is transposed.
 *
 * Invariants: an adapter never changes after lora_build returns; refs only changes
 * atomically, so adapters may be shared by any threads. Not here: file parsing
 * (lora_load.c), the forward hook (lora_apply.c), merging (lora_merge.c), the cache. */
#include "adapter/lora_int.h"

#include "base/mem.h"
#include "model/quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const proj_short[MC_PROJ_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};
static const char *const proj_gguf[MC_PROJ_COUNT] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                                     "ffn_gate", "ffn_up", "ffn_down"};

const char *mc_lora_proj_short(enum mc_proj p) {
    return (unsigned)p < MC_PROJ_COUNT ? proj_short[p] : "?";
}

const char *mc_lora_proj_gguf(enum mc_proj p) {
    return (unsigned)p < MC_PROJ_COUNT ? proj_gguf[p] : "?";
}

void mc_lora_base_from_model(const struct mc_model *m, struct mc_lora_base *out) {
    const struct mc_hparams *hp = mc_model_hparams(m);
    memset(out, 0, sizeof(*out));
    snprintf(out->arch, sizeof(out->arch), "%s", hp->arch);
    out->n_layer = hp->n_layer;
    out->n_embd = hp->n_embd;
    out->n_head = hp->n_head;
    out->n_head_kv = hp->n_head_kv;
    out->head_dim = hp->head_dim;
    out->n_ff = hp->n_ff;
}

int mc_lora_parse_targets(const char *s, uint32_t *out, struct mc_err *err) {
    *out = 0;
    if (!strcmp(s, "all")) {
        *out = (1u << MC_PROJ_COUNT) - 1;
        return MC_OK;
    }
    while (*s) {
        size_t len = strcspn(s, ",");
        int p = 0;
        while (p < MC_PROJ_COUNT &&
               (strlen(proj_short[p]) != len || strncmp(s, proj_short[p], len)))
            p++;
        if (p == MC_PROJ_COUNT)
            return mc_err_set(err, MC_EINVAL,
                              "unknown target '%.*s' (use q, k, v, o, gate, up, down or all)",
                              (int)(len > 32 ? 32 : len), s);
        *out |= 1u << p;
        s += len + (s[len] == ',');
    }
    if (!*out)
        return mc_err_set(err, MC_EINVAL, "no targets given");
    return MC_OK;
}

void lora_proj_shape(const struct mc_lora_base *b, enum mc_proj p, int64_t *n_in, int64_t *n_out) {
    int64_t d = b->n_embd, dq = (int64_t)b->n_head * b->head_dim;
    int64_t dkv = (int64_t)b->n_head_kv * b->head_dim;
    int64_t in[MC_PROJ_COUNT] = {d, d, d, dq, d, d, b->n_ff};
    int64_t outs[MC_PROJ_COUNT] = {dq, dkv, dkv, d, b->n_ff, b->n_ff, d};
    *n_in = in[p];
    *n_out = outs[p];
}

int lora_check_pair(const struct mc_lora_base *b, const char *name, int32_t layer, enum mc_proj p,
                    int64_t n_in, int64_t n_out, struct mc_err *err) {
    if (layer >= b->n_layer)
        return mc_err_set(err, MC_EINVAL, "%s: layer %d does not exist (the model has %d)", name,
                          layer, b->n_layer);
    int64_t want_in, want_out;
    lora_proj_shape(b, p, &want_in, &want_out);
    if (n_in != want_in || n_out != want_out)
        return mc_err_set(err, MC_EINVAL,
                          "%s: adapter maps %lld -> %lld but the model's matrix is %lld -> %lld "
                          "(adapter made for another base model?)",
                          name, (long long)n_in, (long long)n_out, (long long)want_in,
                          (long long)want_out);
    return MC_OK;
}

bool lora_parse_gguf_name(const char *s, size_t len, int32_t *layer, enum mc_proj *proj) {
    if (len < 5 || memcmp(s, "blk.", 4) != 0)
        return false;
    size_t i = 4;
    int64_t l = 0;
    if (i >= len || s[i] < '0' || s[i] > '9' || (s[i] == '0' && i + 1 < len && s[i + 1] != '.'))
        return false;
    for (; i < len && s[i] >= '0' && s[i] <= '9'; i++) {
        l = l * 10 + (s[i] - '0');
        if (l > 1000000)
            return false;
    }
    if (i >= len || s[i] != '.')
        return false;
    i++;
    for (int p = 0; p < MC_PROJ_COUNT; p++) {
        size_t pl = strlen(proj_gguf[p]);
        if (len - i == pl + 7 && !memcmp(s + i, proj_gguf[p], pl) &&
            !memcmp(s + i + pl, ".weight", 7)) {
            *layer = (int32_t)l;
            *proj = (enum mc_proj)p;
            return true;
        }
    }
    return false;
}

/* ---- Building ------------------------------------------------------------------- */

static int cmp_src(const void *pa, const void *pb) {
    const struct lora_src *a = pa, *b = pb;
    if (a->layer != b->layer)
        return a->layer < b->layer ? -1 : 1;
    return (int)a->proj - (int)b->proj;
}

static size_t el_size(enum mc_type t) {
    return t == MC_TYPE_F16 ? 2 : 4;
}

/* Row r (n elements of type t) of a source tensor as F32, into dst. Safetensors data is
 * aligned only as the file happens to be, so halves are read with memcpy. */
static int src_row(enum mc_type t, const void *src, int64_t r, int64_t n, float *dst,
                   const char *what, struct mc_err *err) {
    size_t rb = mc_type_row_size(t, n);
    if (rb == 0)
        return mc_err_set(err, MC_EFORMAT, "%s: row of %lld elements does not fit type %s", what,
                          (long long)n, mc_type_name(t));
    const uint8_t *p = (const uint8_t *)src + (size_t)r * rb;
    if (t == MC_TYPE_F16 || t == MC_TYPE_BF16) {
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = t == MC_TYPE_F16 ? mc_fp16_to_fp32(h) : mc_bf16_to_fp32(h);
        }
        return MC_OK;
    }
    if (mc_dequantize_row(t, p, dst, n, err) != MC_OK)
        return mc_err_prefix(err, "%s", what);
    return MC_OK;
}

/* Stores v as element i of dst (type t). */
static void put(void *dst, enum mc_type t, size_t i, float v) {
    if (t == MC_TYPE_F16)
        ((uint16_t *)dst)[i] = mc_fp32_to_fp16(v);
    else
        ((float *)dst)[i] = v;
}

/* A: rows of the source are rows of the destination. Same type: one copy. */
static int load_a(const struct lora_src *s, enum mc_type wt, void *dst, float *row,
                  struct mc_err *err) {
    char what[64];
    snprintf(what, sizeof(what), "%s.lora_a", s->name);
    if (s->a_type == wt) {
        memcpy(dst, s->a, (size_t)s->rank * s->n_in * el_size(wt));
        return MC_OK;
    }
    for (int64_t k = 0; k < s->rank; k++) {
        int rc = src_row(s->a_type, s->a, k, s->n_in, row, what, err);
        if (rc != MC_OK)
            return rc;
        for (int64_t i = 0; i < s->n_in; i++)
            put(dst, wt, (size_t)k * s->n_in + i, row[i]);
    }
    return MC_OK;
}

/* HF orders each head's rows as (2, head_dim/2) (first halves of all rotary pairs, then
 * second halves); GGUF interleaves them as (head_dim/2, 2). Row h·hd + 2i + j of the GGUF
 * layout is row h·hd + j·hd/2 + i of the HF layout. */
static int64_t hf_row(const struct lora_src *s, int64_t o) {
    if (!s->permute_b)
        return o;
    int64_t hd = s->n_out / s->n_heads, half = hd / 2;
    int64_t h = o / hd, i = (o % hd) / 2, j = o % 2;
    return h * hd + j * half + i;
}

/* Bᵀ rows per block of the same-type transpose: one cache line of F16 output (half a
 * line of F32) per rank row. */
enum { BT_BLOCK = 32 };

/* Bᵀ from B of the storage type: GGUF row o of B (rank values) becomes column o of Bᵀ
 * (rank, n_out). The outputs are written in blocks of BT_BLOCK columns, one rank row
 * after the other: column by column, the rank rows' stores are n_out elements apart,
 * and with n_out = 2048 F16 every one of them falls in the same L1 set, which made the
 * transpose most of an adapter's load time. The source is read with memcpy because
 * safetensors data may be unaligned. */
static void copy_bt(const struct lora_src *s, size_t es, void *dst) {
    const uint8_t *src = s->b;
    uint8_t *d = dst;
    size_t rank = (size_t)s->rank, n_out = (size_t)s->n_out;
    for (size_t o0 = 0; o0 < n_out; o0 += BT_BLOCK) {
        size_t o1 = o0 + BT_BLOCK < n_out ? o0 + BT_BLOCK : n_out;
        const uint8_t *row[BT_BLOCK];
        for (size_t o = o0; o < o1; o++)
            row[o - o0] = src + (size_t)hf_row(s, (int64_t)o) * rank * es;
        for (size_t k = 0; k < rank; k++) {
            uint8_t *at = d + (k * n_out + o0) * es;
            /* Constant-size copies that compile to moves. */
            for (size_t o = 0; o < o1 - o0 && es == 2; o++)
                memcpy(at + 2 * o, row[o] + 2 * k, 2);
            for (size_t o = 0; o < o1 - o0 && es == 4; o++)
                memcpy(at + 4 * o, row[o] + 4 * k, 4);
        }
    }
}

/* Bᵀ: GGUF row o of B (rank values) becomes column o of Bᵀ (rank, n_out). */
static int load_bt(const struct lora_src *s, enum mc_type wt, void *dst, float *row,
                   struct mc_err *err) {
    char what[64];
    snprintf(what, sizeof(what), "%s.lora_b", s->name);
    if (s->b_type == wt) {
        copy_bt(s, el_size(wt), dst);
        return MC_OK;
    }
    for (int64_t o = 0; o < s->n_out; o++) {
        int rc = src_row(s->b_type, s->b, hf_row(s, o), s->rank, row, what, err);
        if (rc != MC_OK)
            return rc;
        for (int64_t k = 0; k < s->rank; k++)
            put(dst, wt, (size_t)k * s->n_out + o, row[k]);
    }
    return MC_OK;
}

/* Whether the n values at w (F32 or F16) are all finite: none has an exponent of all
 * ones. An adapter with a NaN or an infinity would turn every output it touches into
 * NaN, and a sampler fed NaN logits returns token 0. Four F16 or two F32 values per
 * 64-bit word (the compiler did not vectorize the value-by-value loop, which tripled
 * the load time); a lane of x ^ mask is zero exactly where the exponent is all ones. */
static bool all_finite(const void *w, enum mc_type t, size_t n) {
    const bool half = t == MC_TYPE_F16;
    const uint64_t exp = half ? 0x7c007c007c007c00u : 0x7f8000007f800000u;
    const uint64_t low = half ? 0x0001000100010001u : 0x0000000100000001u;
    const uint64_t high = half ? 0x8000800080008000u : 0x8000000080000000u;
    const size_t es = half ? 2 : 4, per = 8 / es;
    const uint8_t *b = w;
    uint64_t bad = 0;
    size_t i = 0;
    for (; i + per <= n; i += per) {
        uint64_t v;
        memcpy(&v, b + i * es, 8);
        /* Lanes of x stay below their top bit, so a lane's flag is set only by a zero
         * lane at or below it: the test "some lane is zero" is exact. */
        uint64_t x = (v & exp) ^ exp;
        bad |= (x - low) & ~x & high;
    }
    for (; i < n; i++) {
        uint32_t v = 0;
        memcpy(&v, b + i * es, es);
        bad |= (v & (uint32_t)exp) == (uint32_t)exp;
    }
    return bad == 0;
}

static float pair_factor(const struct mc_lora_info *info, int32_t rank) {
    if (!info->has_alpha)
        return 1.0f;
    return info->rslora ? info->alpha / sqrtf((float)rank) : info->alpha / (float)rank;
}

static int fill_pair(struct mc_lora *l, struct lora_pair *p, const struct lora_src *s, uint8_t *at,
                     struct mc_err *err) {
    p->layer = s->layer;
    p->proj = s->proj;
    p->rank = s->rank;
    p->n_in = s->n_in;
    p->n_out = s->n_out;
    p->factor = pair_factor(&l->info, s->rank);
    p->a = at;
    p->bt = at + (size_t)s->rank * s->n_in * el_size(l->wtype);
    int64_t w = s->n_in > s->rank ? s->n_in : s->rank;
    float *row = mc_malloc((size_t)w * sizeof(float));
    if (!row)
        return mc_err_set(err, MC_ENOMEM, "%s: allocation failed", s->name);
    int rc = load_a(s, l->wtype, p->a, row, err);
    if (rc == MC_OK)
        rc = load_bt(s, l->wtype, p->bt, row, err);
    mc_free(row);
    if (rc == MC_OK && !all_finite(p->a, l->wtype, (size_t)s->rank * (size_t)s->n_in))
        rc = mc_err_set(err, MC_EFORMAT, "%s.lora_a: a value is NaN or infinite", s->name);
    if (rc == MC_OK && !all_finite(p->bt, l->wtype, (size_t)s->rank * (size_t)s->n_out))
        rc = mc_err_set(err, MC_EFORMAT, "%s.lora_b: a value is NaN or infinite", s->name);
    return rc;
}

static int check_duplicates(const struct lora_src *src, int32_t n, struct mc_err *err) {
    for (int32_t i = 1; i < n; i++)
        if (src[i].layer == src[i - 1].layer && src[i].proj == src[i - 1].proj)
            return mc_err_set(err, MC_EFORMAT, "%s: two adapter pairs for the same matrix",
                              src[i].name);
    return MC_OK;
}

/* F16 when every source tensor is F16 (kept as is, half the memory and bandwidth of
 * F32); F32 otherwise, so that F32 adapters compute exactly as written. */
static enum mc_type pick_type(const struct lora_src *src, int32_t n) {
    for (int32_t i = 0; i < n; i++)
        if (src[i].a_type != MC_TYPE_F16 || src[i].b_type != MC_TYPE_F16)
            return MC_TYPE_F32;
    return MC_TYPE_F16;
}

int lora_build(const struct mc_lora_info *info, const struct mc_lora_base *base,
               struct lora_src *src, int32_t n, struct mc_lora **out, struct mc_err *err) {
    *out = NULL;
    if (n < 1)
        return mc_err_set(err, MC_EFORMAT, "%s: adapter has no LoRA tensors", info->name);
    qsort(src, (size_t)n, sizeof(*src), cmp_src);
    int rc = check_duplicates(src, n, err);
    if (rc != MC_OK)
        return rc;

    struct mc_lora *l = mc_calloc(1, sizeof(*l));
    if (!l)
        return mc_err_set(err, MC_ENOMEM, "adapter allocation failed");
    atomic_init(&l->refs, 1);
    l->info = *info;
    l->info.n_pairs = n;
    l->info.rank = 0;
    l->info.targets = 0;
    l->wtype = pick_type(src, n);
    if (base) {
        l->base = *base;
        l->info.bound = true;
    }
    size_t elems = 0;
    for (int32_t i = 0; i < n; i++) {
        elems += (size_t)src[i].rank * (size_t)(src[i].n_in + src[i].n_out);
        if (src[i].rank > l->info.rank)
            l->info.rank = src[i].rank;
        l->info.targets |= 1u << src[i].proj;
    }
    size_t bytes = elems * el_size(l->wtype);
    l->n_slots = (src[n - 1].layer + 1) * MC_PROJ_COUNT;
    l->pairs = mc_calloc((size_t)n, sizeof(*l->pairs));
    l->slot = mc_calloc((size_t)l->n_slots, sizeof(*l->slot));
    l->data = mc_malloc(bytes);
    if (!l->pairs || !l->slot || !l->data) {
        rc = mc_err_set(err, MC_ENOMEM, "adapter %s: allocation of %zu bytes failed", info->name,
                        bytes);
        goto out_free;
    }
    uint8_t *at = l->data;
    for (int32_t i = 0; i < n; i++) {
        if ((rc = fill_pair(l, &l->pairs[i], &src[i], at, err)) != MC_OK)
            goto out_free;
        at += (size_t)src[i].rank * (size_t)(src[i].n_in + src[i].n_out) * el_size(l->wtype);
        l->slot[src[i].layer * MC_PROJ_COUNT + src[i].proj] = &l->pairs[i];
    }
    l->info.resident_bytes =
        sizeof(*l) + (size_t)n * sizeof(*l->pairs) + (size_t)l->n_slots * sizeof(*l->slot) + bytes;
    *out = l;
    return MC_OK;

out_free:
    mc_lora_release(l);
    return rc;
}

/* ---- Converting the storage type ----------------------------------------------- */

/* Converts one half (rows, cols) from storage type st to dt; row holds cols floats. F32 or
 * F16 to Q8_0 has an AVX2 kernel that writes the same bytes as the generic path (widen
 * each row to F32, then mc_quantize_row) about ten times faster, which is most of what
 * a load with conversion to Q8_0 costs. */
static int convert_half(const void *src, enum mc_type st, void *dst, enum mc_type dt, int64_t rows,
                        int64_t cols, float *row, struct mc_err *err) {
    size_t rb = mc_type_row_size(dt, cols);
    if (dt == MC_TYPE_Q8_0 && st != MC_TYPE_Q8_0 && mc_simd_get() >= MC_SIMD_AVX2) {
        for (int64_t r = 0; r < rows; r++)
            lora_q8_row_avx2((const uint8_t *)src + lora_offset(st, (size_t)(r * cols)), st,
                             (uint8_t *)dst + (size_t)r * rb, cols);
        return MC_OK;
    }
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < cols; i++)
            row[i] = lora_get(src, st, (size_t)(r * cols + i));
        int rc = mc_quantize_row(dt, row, (uint8_t *)dst + (size_t)r * rb, cols, err);
        if (rc != MC_OK)
            return rc;
    }
    return MC_OK;
}

/* Bytes of pair p stored as t, or 0 if its widths do not fit t's blocks. */
static size_t pair_bytes(const struct lora_pair *p, enum mc_type t) {
    size_t a = mc_type_row_size(t, p->n_in), b = mc_type_row_size(t, p->n_out);
    return a && b ? (size_t)p->rank * (a + b) : 0;
}

static int check_convert(const struct mc_lora *l, enum mc_type t, size_t *bytes, int64_t *widest,
                         struct mc_err *err) {
    if (t != MC_TYPE_F32 && t != MC_TYPE_F16 && t != MC_TYPE_Q8_0)
        return mc_err_set(err, MC_EINVAL, "adapters can be kept as F32, F16 or Q8_0, not %s",
                          mc_type_name(t));
    *bytes = 0;
    *widest = 1;
    for (int32_t i = 0; i < l->info.n_pairs; i++) {
        const struct lora_pair *p = &l->pairs[i];
        if (pair_bytes(p, t) == 0) {
            int64_t blk = mc_type_block_size(t);
            return mc_err_set(err, MC_ENOTSUP,
                              "blk.%d.%s.weight: width %lld is not a multiple of %s's block of "
                              "%lld (the pair maps %lld -> %lld)",
                              p->layer, proj_gguf[p->proj],
                              (long long)(p->n_in % blk ? p->n_in : p->n_out), mc_type_name(t),
                              (long long)blk, (long long)p->n_in, (long long)p->n_out);
        }
        *bytes += pair_bytes(p, t);
        *widest = p->n_in > *widest ? p->n_in : *widest;
        *widest = p->n_out > *widest ? p->n_out : *widest;
    }
    return MC_OK;
}

int mc_lora_convert(const struct mc_lora *l, enum mc_type t, struct mc_lora **out,
                    struct mc_err *err) {
    *out = NULL;
    size_t bytes = 0;
    int64_t widest = 1;
    int rc = check_convert(l, t, &bytes, &widest, err);
    if (rc != MC_OK)
        return rc;
    struct mc_lora *c = mc_calloc(1, sizeof(*c));
    float *row = mc_malloc((size_t)widest * sizeof(float));
    if (c) {
        atomic_init(&c->refs, 1);
        c->info = l->info;
        c->base = l->base;
        c->wtype = t;
        c->n_slots = l->n_slots;
        c->pairs = mc_malloc((size_t)l->info.n_pairs * sizeof(*c->pairs));
        c->slot = mc_calloc((size_t)c->n_slots, sizeof(*c->slot));
        c->data = mc_malloc(bytes);
    }
    if (!c || !row || !c->pairs || !c->slot || !c->data) {
        rc = mc_err_set(err, MC_ENOMEM, "adapter %s: allocation of %zu bytes failed", l->info.name,
                        bytes);
        goto out_free;
    }
    uint8_t *at = c->data;
    for (int32_t i = 0; i < l->info.n_pairs && rc == MC_OK; i++) {
        const struct lora_pair *p = &l->pairs[i];
        struct lora_pair *q = &c->pairs[i];
        *q = *p;
        q->a = at;
        q->bt = at + (size_t)p->rank * mc_type_row_size(t, p->n_in);
        at += pair_bytes(p, t);
        c->slot[p->layer * MC_PROJ_COUNT + p->proj] = q;
        rc = convert_half(p->a, l->wtype, q->a, t, p->rank, p->n_in, row, err);
        if (rc == MC_OK)
            rc = convert_half(p->bt, l->wtype, q->bt, t, p->rank, p->n_out, row, err);
    }
    c->info.resident_bytes = sizeof(*c) + (size_t)c->info.n_pairs * sizeof(*c->pairs) +
                             (size_t)c->n_slots * sizeof(*c->slot) + bytes;
out_free:
    mc_free(row);
    if (rc != MC_OK) {
        mc_lora_release(c);
        return rc;
    }
    *out = c;
    return MC_OK;
}

/* ---- Object --------------------------------------------------------------------- */

struct mc_lora *mc_lora_retain(struct mc_lora *l) {
    if (l)
        atomic_fetch_add_explicit(&l->refs, 1, memory_order_relaxed);
    return l;
}

void mc_lora_release(struct mc_lora *l) {
    if (!l || atomic_fetch_sub_explicit(&l->refs, 1, memory_order_acq_rel) != 1)
        return;
    mc_free(l->data);
    mc_free(l->slot);
    mc_free(l->pairs);
    mc_free(l);
}

int mc_lora_refcount(const struct mc_lora *l) {
    return atomic_load_explicit(&((struct mc_lora *)l)->refs, memory_order_acquire);
}

const struct mc_lora_info *mc_lora_info(const struct mc_lora *l) {
    return &l->info;
}

int32_t mc_lora_n_pairs(const struct mc_lora *l) {
    return l->info.n_pairs;
}

void mc_lora_pair(const struct mc_lora *l, int32_t i, struct mc_lora_pair_info *out) {
    const struct lora_pair *p = &l->pairs[i];
    snprintf(out->name, sizeof(out->name), "blk.%d.%s.weight", p->layer, proj_gguf[p->proj]);
    out->layer = p->layer;
    out->proj = p->proj;
    out->rank = p->rank;
    out->n_in = p->n_in;
    out->n_out = p->n_out;
    out->factor = p->factor;
    out->type = l->wtype;
    out->a = p->a;
    out->bt = p->bt;
}

float mc_lora_scale(const struct mc_lora *l, int32_t layer, enum mc_proj proj, float user_scale) {
    if (layer < 0 || (unsigned)proj >= MC_PROJ_COUNT)
        return 0.0f;
    int32_t s = layer * MC_PROJ_COUNT + (int32_t)proj;
    if (s >= l->n_slots || !l->slot[s])
        return 0.0f;
    return l->slot[s]->factor * user_scale;
}

bool mc_lora_fits(const struct mc_lora *l, const struct mc_lora_base *b) {
    return l->info.bound && !memcmp(&l->base, b, sizeof(*b));
}

/* ---- Random adapters ------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Standard normal by Box-Muller from two uniform draws in (0, 1]. */
static float normal(uint64_t *s) {
    double u1 = ((splitmix64(s) >> 11) + 1.0) / 9007199254740992.0;
    double u2 = (splitmix64(s) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

int mc_lora_synth(const struct mc_lora_base *base, int32_t rank, uint32_t targets, float alpha,
                  uint64_t seed, const char *name, struct mc_lora **out, struct mc_err *err) {
    *out = NULL;
    if (rank < 1 || rank > MC_LORA_MAX_RANK)
        return mc_err_set(err, MC_EINVAL, "rank %d is out of range 1..%d", rank, MC_LORA_MAX_RANK);
    if (!targets || targets >= (1u << MC_PROJ_COUNT))
        return mc_err_set(err, MC_EINVAL, "targets mask 0x%x is empty or unknown", targets);
    int32_t n_t = __builtin_popcount(targets), n = base->n_layer * n_t, k = 0;
    struct lora_src *src = mc_calloc((size_t)n, sizeof(*src));
    if (!src)
        return mc_err_set(err, MC_ENOMEM, "synth: allocation failed");
    float *vals[2 * MC_PROJ_COUNT] = {0};
    int rc = MC_OK;
    uint64_t s = seed;
    for (int32_t il = 0; il < base->n_layer && rc == MC_OK; il++) {
        for (int p = 0; p < MC_PROJ_COUNT; p++) {
            if (!(targets & (1u << p)))
                continue;
            struct lora_src *q = &src[k++];
            q->layer = il;
            q->proj = (enum mc_proj)p;
            q->rank = rank;
            lora_proj_shape(base, q->proj, &q->n_in, &q->n_out);
            snprintf(q->name, sizeof(q->name), "blk.%d.%s.weight", il, proj_gguf[p]);
            q->a_type = q->b_type = MC_TYPE_F32;
            /* One scratch pair per projection, reused across layers: build copies. */
            size_t na = (size_t)rank * q->n_in, nb = (size_t)q->n_out * rank;
            if (!vals[2 * p]) {
                vals[2 * p] = mc_malloc(na * base->n_layer * sizeof(float));
                vals[2 * p + 1] = mc_malloc(nb * base->n_layer * sizeof(float));
                if (!vals[2 * p] || !vals[2 * p + 1]) {
                    rc = mc_err_set(err, MC_ENOMEM, "synth: allocation failed");
                    break;
                }
            }
            float *a = vals[2 * p] + na * il, *b = vals[2 * p + 1] + nb * il;
            float sa = 1.0f / sqrtf((float)q->n_in), sb = 0.5f / sqrtf((float)rank);
            for (size_t i = 0; i < na; i++)
                a[i] = normal(&s) * sa;
            for (size_t i = 0; i < nb; i++)
                b[i] = normal(&s) * sb;
            q->a = a;
            q->b = b;
        }
    }
    struct mc_lora_info info = {.format = MC_LORA_FORMAT_SYNTH,
                                .alpha = alpha > 0 ? alpha : (float)rank,
                                .has_alpha = true};
    snprintf(info.name, sizeof(info.name), "%s", name ? name : "synth");
    snprintf(info.arch, sizeof(info.arch), "%s", base->arch);
    if (rc == MC_OK)
        rc = lora_build(&info, base, src, n, out, err);
    for (int i = 0; i < 2 * MC_PROJ_COUNT; i++)
        mc_free(vals[i]);
    mc_free(src);
    return rc;
}

/* ---- Writing GGUF ----------------------------------------------------------------- */

/* Adds one half (rows, cols) converted to type t; tmp holds one row of type t. */
static int add_half(struct mc_gguf_writer *w, const char *name, enum mc_type t, const float *v,
                    int64_t rows, int64_t cols, struct mc_err *err) {
    size_t rb = mc_type_row_size(t, cols);
    if (rb == 0)
        return mc_err_set(err, MC_EINVAL, "%s: rows of %lld do not fit type %s", name,
                          (long long)cols, mc_type_name(t));
    uint8_t *buf = mc_malloc(rb * (size_t)rows);
    if (!buf)
        return mc_err_set(err, MC_ENOMEM, "%s: allocation failed", name);
    int rc = MC_OK;
    for (int64_t r = 0; r < rows && rc == MC_OK; r++)
        rc = mc_quantize_row(t, v + r * cols, buf + (size_t)r * rb, cols, err);
    int64_t ne[2] = {cols, rows};
    if (rc == MC_OK)
        rc = mc_gguf_writer_add_tensor(w, name, t, 2, ne, buf, err);
    mc_free(buf);
    return rc;
}

static int save_kv(struct mc_gguf_writer *w, const struct mc_lora *l, struct mc_err *err) {
    const struct mc_lora_info *in = &l->info;
    const char *arch = in->arch[0] ? in->arch : "llama";
    int rc;
    if ((rc = mc_gguf_writer_set_str(w, "general.architecture", arch, strlen(arch), err)) ||
        (rc = mc_gguf_writer_set_str(w, "general.type", "adapter", 7, err)) ||
        (rc = mc_gguf_writer_set_str(w, "adapter.type", "lora", 4, err)) ||
        (rc = mc_gguf_writer_set_str(w, "general.name", in->name, strlen(in->name), err)))
        return rc;
    if (in->base_model[0] &&
        (rc = mc_gguf_writer_set_str(w, "general.base_model.0.name", in->base_model,
                                     strlen(in->base_model), err)))
        return rc;
    if (!in->has_alpha)
        return MC_OK;
    float alpha = in->alpha;
    if (in->rslora) {
        /* GGUF has no rsLoRA flag: alpha' / r = alpha / √r needs one rank throughout. */
        for (int32_t i = 0; i < in->n_pairs; i++)
            if (l->pairs[i].rank != in->rank)
                return mc_err_set(err, MC_ENOTSUP,
                                  "rsLoRA adapter with mixed ranks cannot be written as GGUF");
        alpha = in->alpha * sqrtf((float)in->rank);
    }
    return mc_gguf_writer_set_f32(w, "adapter.lora.alpha", alpha, err);
}

/* Writes lora_a (rank, n_in) and lora_b (n_out, rank), converting from storage. */
static int save_pair(struct mc_gguf_writer *w, const struct mc_lora *l, const struct lora_pair *p,
                     enum mc_type type, struct mc_err *err) {
    char name[80];
    size_t na = (size_t)p->rank * p->n_in, nb = (size_t)p->rank * p->n_out;
    float *a = mc_malloc(na * sizeof(float)), *b = mc_malloc(nb * sizeof(float));
    int rc = MC_OK;
    if (!a || !b) {
        rc = mc_err_set(err, MC_ENOMEM, "saving adapter: allocation failed");
        goto out_free;
    }
    for (size_t i = 0; i < na; i++)
        a[i] = lora_get(p->a, l->wtype, i);
    for (int64_t o = 0; o < p->n_out; o++)
        for (int64_t k = 0; k < p->rank; k++)
            b[o * p->rank + k] = lora_get(p->bt, l->wtype, (size_t)k * p->n_out + o);
    snprintf(name, sizeof(name), "blk.%d.%s.weight.lora_a", p->layer, proj_gguf[p->proj]);
    rc = add_half(w, name, type, a, p->rank, p->n_in, err);
    snprintf(name, sizeof(name), "blk.%d.%s.weight.lora_b", p->layer, proj_gguf[p->proj]);
    if (rc == MC_OK)
        rc = add_half(w, name, type, b, p->n_out, p->rank, err);
out_free:
    mc_free(a);
    mc_free(b);
    return rc;
}

int mc_lora_save_gguf(const struct mc_lora *l, enum mc_type type, const char *path,
                      struct mc_err *err) {
    if (type != MC_TYPE_F32 && type != MC_TYPE_F16 && type != MC_TYPE_BF16)
        return mc_err_set(err, MC_EINVAL,
                          "adapter tensors can be written as F32, F16 or BF16, "
                          "not %s",
                          mc_type_name(type));
    if (l->info.hf_row_order && (l->info.targets & ((1u << MC_PROJ_Q) | (1u << MC_PROJ_K))))
        return mc_err_set(err, MC_EINVAL,
                          "%s: q_proj/k_proj need the base model's head counts for the rope row "
                          "permutation (give the base model)",
                          l->info.name);
    struct mc_gguf_writer *w;
    int rc = mc_gguf_writer_create(&w, err);
    if (rc != MC_OK)
        return rc;
    rc = save_kv(w, l, err);
    for (int32_t i = 0; i < l->info.n_pairs && rc == MC_OK; i++)
        rc = save_pair(w, l, &l->pairs[i], type, err);
    if (rc == MC_OK)
        rc = mc_gguf_writer_write(w, path, err);
    mc_gguf_writer_free(w);
    return rc;
}
