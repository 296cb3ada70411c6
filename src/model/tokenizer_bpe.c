/* tokenizer_bpe.c - the two merge algorithms: SentencePiece-style (by score) and
 * byte-level BPE (by merge rank).
 *
 * Both keep the text as a doubly linked list of symbols (spans of bytes) and a binary
 * max-heap of candidate adjacent pairs. The best pair is merged, the pairs with its new
 * neighbours are queued, and stale queue entries (a side already merged away or grown)
 * are skipped when they surface. Ties go to the leftmost pair, as in the reference.
 *
 * SentencePiece: pairs whose concatenation is a vocabulary token, best = highest token
 * score; leftover symbols that are not tokens fall back to <0xXX> byte tokens, or UNK.
 * Byte-level BPE: the pre-tokenizer splits the text into words, each word's bytes are
 * mapped to GPT-2's printable stand-ins (see map_bytes for invalid UTF-8), pairs are ranked by the
 * merges list (lower rank first); a leftover symbol that is not a token is emitted byte by byte
 * where those single bytes are tokens, and dropped otherwise, as the reference does.
 *
 * All memory is per call; nothing here writes to the tokenizer. */
#include "model/tokenizer_int.h"

#include "base/mem.h"

#include <string.h>

/* ---- Symbols and the pair queue ------------------------------------------------- */

struct sym {
    int prev;
    int next;
    size_t off; /* into the text being encoded */
    size_t n;   /* bytes; 0 once merged into its left neighbour */
};

struct pair {
    double prio; /* higher first: a score, or minus a merge rank */
    int left;
    int right;
    size_t size; /* bytes of both sides when queued */
};

struct heap {
    struct pair *v;
    size_t n;
    size_t cap;
};

static bool pair_before(const struct pair *a, const struct pair *b) {
    return a->prio > b->prio || (a->prio == b->prio && a->left < b->left);
}

static int heap_push(struct heap *h, struct pair p, struct mc_err *err) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct pair *v = mc_realloc(h->v, cap * sizeof(*v));
        if (!v)
            return mc_err_set(err, MC_ENOMEM, "out of memory for %zu merge candidates", cap);
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!pair_before(&p, &h->v[parent]))
            break;
        h->v[i] = h->v[parent];
        i = parent;
    }
    h->v[i] = p;
    return MC_OK;
}

static struct pair heap_pop(struct heap *h) {
    struct pair top = h->v[0];
    struct pair last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && pair_before(&h->v[c + 1], &h->v[c]))
            c++;
        if (!pair_before(&h->v[c], &last))
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0)
        h->v[i] = last;
    return top;
}

/* Splits text into one symbol per UTF-8 character. For valid UTF-8 this is the
 * reference's split by lead byte; an invalid byte is a symbol of its own (the
 * reference lets a stray lead byte swallow the next bytes, which can tear an escaped
 * space apart and break decode(encode(x)) == x). */
static struct sym *split_chars(const char *text, size_t len, int *n_out) {
    struct sym *s = mc_malloc((len + 1) * sizeof(*s));
    if (!s)
        return NULL;
    int n = 0;
    size_t off = 0;
    while (off < len) {
        size_t k = tok_utf8_char_len(text + off, len - off);
        s[n].off = off;
        s[n].n = k;
        s[n].prev = n - 1;
        off += k;
        s[n].next = off == len ? -1 : n + 1;
        n++;
    }
    *n_out = n;
    return s;
}

/* Merges the pair popped from the queue if it is still current; returns true if so. */
static bool merge_pair(struct sym *s, const struct pair *p) {
    struct sym *l = &s[p->left], *r = &s[p->right];
    if (l->n == 0 || r->n == 0 || l->n + r->n != p->size)
        return false;
    l->n += r->n;
    r->n = 0;
    l->next = r->next;
    if (r->next >= 0)
        s[r->next].prev = p->left;
    return true;
}

/* ---- SentencePiece -------------------------------------------------------------- */

static int spm_try_pair(const struct mc_tokenizer *tok, const char *text, const struct sym *s,
                        int left, int right, struct heap *h, struct mc_err *err) {
    if (left < 0 || right < 0)
        return MC_OK;
    size_t n = s[left].n + s[right].n;
    int32_t id = tok_strmap_find(&tok->vocab_map, text + s[left].off, n);
    if (id < 0)
        return MC_OK;
    struct pair p = {.prio = tok->score[id], .left = left, .right = right, .size = n};
    return heap_push(h, p, err);
}

/* The token for one raw byte: <0xXX>, else the byte itself as a token, else UNK. */
static int32_t spm_byte_token(const struct mc_tokenizer *tok, uint8_t b) {
    static const char hex[] = "0123456789ABCDEF";
    char buf[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
    int32_t id = tok_strmap_find(&tok->vocab_map, buf, sizeof(buf));
    if (id < 0)
        id = tok_strmap_find(&tok->vocab_map, (const char *)&b, 1);
    return id >= 0 ? id : tok->unk;
}

static int spm_emit(const struct mc_tokenizer *tok, const char *text, const struct sym *s,
                    struct tok_ids *ids, struct mc_err *err) {
    int rc = MC_OK;
    for (int i = 0; i != -1 && rc == MC_OK; i = s[i].next) {
        int32_t id = tok_strmap_find(&tok->vocab_map, text + s[i].off, s[i].n);
        if (id >= 0) {
            rc = tok_ids_push(ids, id, err);
            continue;
        }
        for (size_t j = 0; j < s[i].n && rc == MC_OK; j++) {
            int32_t b = spm_byte_token(tok, (uint8_t)text[s[i].off + j]);
            if (b >= 0)
                rc = tok_ids_push(ids, b, err);
        }
    }
    return rc;
}

int tok_spm_encode(const struct mc_tokenizer *tok, const char *text, size_t len,
                   struct tok_ids *ids, struct mc_err *err) {
    if (len == 0)
        return MC_OK;
    int n;
    struct sym *s = split_chars(text, len, &n);
    if (!s)
        return mc_err_set(err, MC_ENOMEM, "out of memory encoding %zu bytes", len);
    struct heap h = {0};
    int rc = MC_OK;
    for (int i = 1; i < n && rc == MC_OK; i++)
        rc = spm_try_pair(tok, text, s, i - 1, i, &h, err);

    while (h.n > 0 && rc == MC_OK) {
        struct pair p = heap_pop(&h);
        if (!merge_pair(s, &p))
            continue;
        rc = spm_try_pair(tok, text, s, s[p.left].prev, p.left, &h, err);
        if (rc == MC_OK)
            rc = spm_try_pair(tok, text, s, p.left, s[p.left].next, &h, err);
    }
    if (rc == MC_OK)
        rc = spm_emit(tok, text, s, ids, err);
    mc_free(h.v);
    mc_free(s);
    return rc;
}

/* ---- Byte-level BPE ------------------------------------------------------------- */

/* Scratch buffers reused across the words of one call. */
struct bpe_scratch {
    char *word; /* the byte-mapped word */
    char *key;  /* "left right" for merge lookups */
    size_t key_cap;
};

static int bpe_try_pair(const struct mc_tokenizer *tok, struct bpe_scratch *sc, const struct sym *s,
                        int left, int right, struct heap *h, struct mc_err *err) {
    if (left < 0 || right < 0)
        return MC_OK;
    size_t nl = s[left].n, nr = s[right].n;
    if (nl + nr + 1 > tok->max_merge_len)
        return MC_OK;
    memcpy(sc->key, sc->word + s[left].off, nl);
    sc->key[nl] = ' ';
    memcpy(sc->key + nl + 1, sc->word + s[right].off, nr);
    int32_t rank = tok_strmap_find(&tok->merge_map, sc->key, nl + nr + 1);
    if (rank < 0)
        return MC_OK;
    struct pair p = {.prio = -(double)rank, .left = left, .right = right, .size = nl + nr};
    return heap_push(h, p, err);
}

static int bpe_emit(const struct mc_tokenizer *tok, const char *word, const struct sym *s,
                    struct tok_ids *ids, struct mc_err *err) {
    int rc = MC_OK;
    for (int i = 0; i != -1 && rc == MC_OK; i = s[i].next) {
        int32_t id = tok_strmap_find(&tok->vocab_map, word + s[i].off, s[i].n);
        if (id >= 0) {
            rc = tok_ids_push(ids, id, err);
            continue;
        }
        for (size_t j = 0; j < s[i].n && rc == MC_OK; j++) {
            int32_t b = tok_strmap_find(&tok->vocab_map, word + s[i].off + j, 1);
            if (b >= 0)
                rc = tok_ids_push(ids, b, err);
        }
    }
    return rc;
}

/* Encodes one word whose byte-mapped text is sc->word[0..wlen). */
static int bpe_word(const struct mc_tokenizer *tok, struct bpe_scratch *sc, size_t wlen,
                    struct tok_ids *ids, struct mc_err *err) {
    if (tok->ignore_merges) {
        int32_t id = tok_strmap_find(&tok->vocab_map, sc->word, wlen);
        if (id >= 0)
            return tok_ids_push(ids, id, err);
    }
    int n;
    struct sym *s = split_chars(sc->word, wlen, &n);
    if (!s)
        return mc_err_set(err, MC_ENOMEM, "out of memory encoding a %zu-byte word", wlen);
    struct heap h = {0};
    int rc = MC_OK;
    for (int i = 1; i < n && rc == MC_OK; i++)
        rc = bpe_try_pair(tok, sc, s, i - 1, i, &h, err);

    while (h.n > 0 && rc == MC_OK) {
        struct pair p = heap_pop(&h);
        if (!merge_pair(s, &p))
            continue;
        rc = bpe_try_pair(tok, sc, s, s[p.left].prev, p.left, &h, err);
        if (rc == MC_OK)
            rc = bpe_try_pair(tok, sc, s, p.left, s[p.left].next, &h, err);
    }
    if (rc == MC_OK)
        rc = bpe_emit(tok, sc->word, s, ids, err);
    mc_free(h.v);
    mc_free(s);
    return rc;
}

/* Writes the GPT-2 stand-ins of s[0..len) into out (at most 6 * len bytes) and returns
 * the length. An invalid UTF-8 byte the vocabulary cannot carry on its own becomes
 * U+FFFD, as the reference does for every invalid byte. */
static size_t map_bytes(const struct mc_tokenizer *tok, const char *s, size_t len, char *out) {
    static const uint8_t fffd[3] = {0xEF, 0xBF, 0xBD};
    size_t w = 0, j = 0;
    while (j < len) {
        uint8_t b = (uint8_t)s[j];
        size_t k = tok_utf8_char_len(s + j, len - j);
        if (k == 1 && b >= 0x80 && !tok->byte_ok[b]) {
            for (int q = 0; q < 3; q++)
                w += tok_byte_encode(fffd[q], out + w);
            j++;
            continue;
        }
        for (size_t q = 0; q < k; q++)
            w += tok_byte_encode((uint8_t)s[j + q], out + w);
        j += k;
    }
    return w;
}

int tok_bpe_encode(const struct mc_tokenizer *tok, const char *text, size_t len,
                   struct tok_ids *ids, struct mc_err *err) {
    struct tok_span *spans;
    size_t n_spans;
    int rc = tok_pre_split(tok->pre, text, len, &spans, &n_spans, err);
    if (rc != MC_OK)
        return rc;

    size_t longest = 0;
    for (size_t i = 0; i < n_spans; i++)
        longest = spans[i].len > longest ? spans[i].len : longest;
    struct bpe_scratch sc = {0};
    sc.word = mc_malloc(6 * longest + 1);
    sc.key_cap = tok->max_merge_len + 1;
    sc.key = mc_malloc(sc.key_cap);
    if (!sc.word || !sc.key) {
        rc = mc_err_set(err, MC_ENOMEM, "out of memory encoding %zu bytes", len);
        goto out_free;
    }

    for (size_t i = 0; i < n_spans && rc == MC_OK; i++) {
        size_t w = map_bytes(tok, text + spans[i].off, spans[i].len, sc.word);
        rc = bpe_word(tok, &sc, w, ids, err);
    }

out_free:
    mc_free(sc.word);
    mc_free(sc.key);
    mc_free(spans);
    return rc;
}
