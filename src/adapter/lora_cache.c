/* lora_cache.c - residency of LoRA adapters: an LRU cache under a byte budget.
 *
 * Entries are keyed by (id, version), so replacing an adapter (a new version) can never
 * return the old one, and live in one doubly linked list, most recently used first.
 * The cache holds one reference per entry. An entry is evictable when it is not pinned
 * and nobody else holds a reference (refcount 1): a running sequence keeps its adapter,
 * and a deleted or replaced adapter stays alive until its last user releases it.
 * Eviction walks from the least recently used end. Lookup is a linear scan of resident
 * entries, which the budget keeps to tens or hundreds.
 *
 * Threads: every operation takes the cache mutex; the loader runs without it (a cold
 * load does I/O and decryption), so two threads missing the same key may both load it;
 * the second to finish uses the first one's entry and drops its own copy. */
#include "adapter/lora_int.h"

#include "base/mem.h"

#include <pthread.h>
#include <string.h>

struct entry {
    char *id;
    uint64_t version;
    struct mc_lora *l;
    bool pinned;
    size_t bytes;
    struct entry *prev; /* towards most recently used */
    struct entry *next;
};

struct mc_lora_cache {
    pthread_mutex_t mu;
    struct mc_lora_cache_params p;
    struct entry *head; /* most recently used */
    struct entry *tail;
    struct mc_lora_cache_stats st;
};

int mc_lora_cache_create(const struct mc_lora_cache_params *p, struct mc_lora_cache **out,
                         struct mc_err *err) {
    *out = NULL;
    if (!p->loader)
        return mc_err_set(err, MC_EINVAL, "adapter cache needs a loader");
    if (p->max_entries < 0)
        return mc_err_set(err, MC_EINVAL, "adapter cache max_entries %d is negative",
                          p->max_entries);
    struct mc_lora_cache *c = mc_calloc(1, sizeof(*c));
    if (!c)
        return mc_err_set(err, MC_ENOMEM, "adapter cache allocation failed");
    pthread_mutex_init(&c->mu, NULL);
    c->p = *p;
    *out = c;
    return MC_OK;
}

static void unlink_entry(struct mc_lora_cache *c, struct entry *e) {
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_front(struct mc_lora_cache *c, struct entry *e) {
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

/* Removes e and drops the cache's reference. */
static void drop(struct mc_lora_cache *c, struct entry *e) {
    unlink_entry(c, e);
    c->st.n_resident--;
    c->st.resident_bytes -= e->bytes;
    mc_lora_release(e->l);
    mc_free(e->id);
    mc_free(e);
}

void mc_lora_cache_free(struct mc_lora_cache *c) {
    if (!c)
        return;
    while (c->head)
        drop(c, c->head);
    pthread_mutex_destroy(&c->mu);
    mc_free(c);
}

static struct entry *find(struct mc_lora_cache *c, const char *id, uint64_t version) {
    for (struct entry *e = c->head; e; e = e->next)
        if (e->version == version && !strcmp(e->id, id))
            return e;
    return NULL;
}

static bool over(const struct mc_lora_cache *c, size_t extra_bytes, int32_t extra_n) {
    return (c->p.budget_bytes && c->st.resident_bytes + extra_bytes > c->p.budget_bytes) ||
           (c->p.max_entries && c->st.n_resident + extra_n > c->p.max_entries);
}

static bool evictable(const struct entry *e) {
    return !e->pinned && mc_lora_refcount(e->l) == 1;
}

/* Evicts least recently used evictable entries until extra more would fit; false if
 * it cannot. */
static bool make_room(struct mc_lora_cache *c, size_t extra_bytes, int32_t extra_n) {
    struct entry *e = c->tail;
    while (over(c, extra_bytes, extra_n) && e) {
        struct entry *prev = e->prev;
        if (evictable(e)) {
            drop(c, e);
            c->st.evictions++;
        }
        e = prev;
    }
    return !over(c, extra_bytes, extra_n);
}

/* Inserts a freshly loaded adapter (taking the loader's reference) if it can be made to
 * fit; returns the entry or NULL (then l is still the caller's). */
static struct entry *insert(struct mc_lora_cache *c, const char *id, uint64_t version,
                            struct mc_lora *l) {
    size_t bytes = mc_lora_info(l)->resident_bytes;
    if (!make_room(c, bytes, 1))
        return NULL;
    struct entry *e = mc_calloc(1, sizeof(*e));
    char *dup = mc_strdup(id);
    if (!e || !dup) {
        mc_free(e);
        mc_free(dup);
        return NULL;
    }
    e->id = dup;
    e->version = version;
    e->l = l;
    e->bytes = bytes;
    push_front(c, e);
    c->st.n_resident++;
    c->st.resident_bytes += bytes;
    return e;
}

/* The entry for (id, version), loading it on a miss; with the lock held on return.
 * *loaded receives an adapter that could not be kept (or NULL). */
static int lookup(struct mc_lora_cache *c, const char *id, uint64_t version, struct entry **out,
                  struct mc_lora **loaded, struct mc_err *err) {
    *out = NULL;
    *loaded = NULL;
    pthread_mutex_lock(&c->mu);
    struct entry *e = find(c, id, version);
    if (e) {
        c->st.hits++;
        unlink_entry(c, e);
        push_front(c, e);
        *out = e;
        return MC_OK;
    }
    c->st.misses++;
    pthread_mutex_unlock(&c->mu);

    struct mc_lora *l = NULL;
    int rc = c->p.loader(c->p.user, id, version, &l, err);
    pthread_mutex_lock(&c->mu);
    if (rc != MC_OK || !l) {
        c->st.load_errors++;
        return rc != MC_OK ? rc : mc_err_set(err, MC_EINTERNAL, "adapter loader returned nothing");
    }
    if ((e = find(c, id, version)) != NULL) { /* another thread loaded it meanwhile */
        mc_lora_release(l);
        unlink_entry(c, e);
        push_front(c, e);
    } else if ((e = insert(c, id, version, l)) == NULL) {
        *loaded = l;
    }
    *out = e;
    return MC_OK;
}

int mc_lora_cache_get(struct mc_lora_cache *c, const char *id, uint64_t version,
                      struct mc_lora **out, struct mc_err *err) {
    *out = NULL;
    struct entry *e;
    struct mc_lora *loose;
    int rc = lookup(c, id, version, &e, &loose, err);
    if (rc == MC_OK)
        *out = e ? mc_lora_retain(e->l) : loose;
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int mc_lora_cache_pin(struct mc_lora_cache *c, const char *id, uint64_t version, bool pin,
                      struct mc_err *err) {
    struct entry *e;
    struct mc_lora *loose;
    if (!pin) {
        pthread_mutex_lock(&c->mu);
        if ((e = find(c, id, version)) != NULL)
            e->pinned = false;
        make_room(c, 0, 0);
        pthread_mutex_unlock(&c->mu);
        return MC_OK;
    }
    int rc = lookup(c, id, version, &e, &loose, err);
    if (rc == MC_OK && e)
        e->pinned = true;
    pthread_mutex_unlock(&c->mu);
    if (rc == MC_OK && !e) {
        mc_lora_release(loose);
        rc =
            mc_err_set(err, MC_EFULL,
                       "adapter %.64s: the cache budget is taken by pinned or in-use adapters", id);
    }
    return rc;
}

int mc_lora_cache_remove(struct mc_lora_cache *c, const char *id) {
    int n = 0;
    pthread_mutex_lock(&c->mu);
    for (struct entry *e = c->head, *next; e; e = next) {
        next = e->next;
        if (!strcmp(e->id, id)) {
            drop(c, e);
            n++;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return n;
}

bool mc_lora_cache_contains(struct mc_lora_cache *c, const char *id, uint64_t version) {
    pthread_mutex_lock(&c->mu);
    bool r = find(c, id, version) != NULL;
    pthread_mutex_unlock(&c->mu);
    return r;
}

void mc_lora_cache_stats(struct mc_lora_cache *c, struct mc_lora_cache_stats *out) {
    pthread_mutex_lock(&c->mu);
    *out = c->st;
    pthread_mutex_unlock(&c->mu);
}
