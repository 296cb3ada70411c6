/* lora_merge.c - writing a model with an adapter merged into its weights (W + s·B·A).
 *
 * Every metadata key and tensor of the base file is copied in order; each matrix the
 * adapter targets is converted to F32 row by row, gets s·factor·B·A added, and is written
 * back in its own type: exact for F32, rounded once for F16/BF16, and for quantized types
 * (Q8_0, Q4_0, K-quants) dequantized, updated and quantized again, which adds one round
 * of that type's quantization error to the whole matrix. The merged model is for
 * deployment without adapters or for checking the adapter path; serving never merges.
 * Memory: the writer holds a copy of the output file until it is written. */
#include "adapter/lora_int.h"

#include "base/mem.h"
#include "model/quant.h"

#include <stdio.h>
#include <string.h>

/* Rows [0, rows) of W (rows, cols) of type t plus scale · B·A, into dst (same type). */
static int merge_matrix(const struct mc_gguf_tensor *t, const struct lora_pair *p, enum mc_type wt,
                        float scale, void *dst, struct mc_err *err) {
    int64_t cols = t->ne[0], rows = t->ne[1];
    size_t rb = mc_type_row_size(t->type, cols);
    size_t na = (size_t)p->rank * cols, nb = (size_t)p->rank * rows;
    float *w = mc_malloc((size_t)cols * sizeof(float));
    float *af = mc_malloc(na * sizeof(float)), *bt = mc_malloc(nb * sizeof(float));
    int rc = MC_OK;
    if (!w || !af || !bt) {
        rc = mc_err_set(err, MC_ENOMEM, "%s: allocation failed", t->name);
        goto out_free;
    }
    for (size_t i = 0; i < na; i++)
        af[i] = lora_get(p->a, wt, i);
    for (size_t i = 0; i < nb; i++)
        bt[i] = lora_get(p->bt, wt, i);
    for (int64_t o = 0; o < rows && rc == MC_OK; o++) {
        const uint8_t *src = (const uint8_t *)t->data + (size_t)o * rb;
        if ((rc = mc_dequantize_row(t->type, src, w, cols, err)) != MC_OK)
            break;
        for (int32_t k = 0; k < p->rank; k++) {
            float bk = scale * bt[(size_t)k * rows + o];
            const float *a = af + (size_t)k * cols;
            for (int64_t i = 0; i < cols; i++)
                w[i] += bk * a[i];
        }
        rc = mc_quantize_row(t->type, w, (uint8_t *)dst + (size_t)o * rb, cols, err);
    }
    if (rc != MC_OK)
        mc_err_prefix(err, "%s", t->name);
out_free:
    mc_free(w);
    mc_free(af);
    mc_free(bt);
    return rc;
}

static int add_tensor(struct mc_gguf_writer *w, const struct mc_gguf_tensor *t,
                      const struct mc_lora *l, float scale, struct mc_err *err) {
    int32_t layer;
    enum mc_proj proj;
    const struct lora_pair *p = NULL;
    if (lora_parse_gguf_name(t->name, strlen(t->name), &layer, &proj) &&
        layer * MC_PROJ_COUNT + (int32_t)proj < l->n_slots)
        p = l->slot[layer * MC_PROJ_COUNT + proj];
    if (!p)
        return mc_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, err);
    if (t->n_dims != 2 || t->ne[0] != p->n_in || t->ne[1] != p->n_out)
        return mc_err_set(err, MC_EINVAL, "%s: matrix shape does not match the adapter", t->name);
    void *buf = mc_malloc(t->size_bytes);
    if (!buf)
        return mc_err_set(err, MC_ENOMEM, "%s: allocation of %zu bytes failed", t->name,
                          t->size_bytes);
    int rc = merge_matrix(t, p, l->wtype, scale * p->factor, buf, err);
    if (rc == MC_OK)
        rc = mc_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, buf, err);
    mc_free(buf);
    return rc;
}

int mc_lora_merge(const struct mc_model *m, const struct mc_lora *l, float scale, const char *path,
                  struct mc_err *err) {
    struct mc_lora_base base;
    mc_lora_base_from_model(m, &base);
    if (!mc_lora_fits(l, &base))
        return mc_err_set(err, MC_EINVAL, "adapter %s was not loaded for this model", l->info.name);
    const struct mc_gguf *g = mc_model_gguf(m);
    struct mc_gguf_writer *w;
    int rc = mc_gguf_writer_create(&w, err);
    if (rc != MC_OK)
        return rc;
    rc = mc_gguf_writer_copy_kv(w, g, NULL, err);
    for (int64_t i = 0; i < mc_gguf_n_tensors(g) && rc == MC_OK; i++)
        rc = add_tensor(w, mc_gguf_tensor(g, i), l, scale, err);
    if (rc == MC_OK)
        rc = mc_gguf_writer_write(w, path, err);
    mc_gguf_writer_free(w);
    return rc;
}
