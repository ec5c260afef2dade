/* cache: the result cache's per-worker store and its key.  It owns the
 * entries (one allocation each), their eviction, TTL and validity check
 * against tablever, and the single-flight of fills.  It does not decide what
 * is cacheable (classify), build the key's parts (the relay), or talk to
 * Redis.
 *
 * Eviction is a segmented LRU: new entries enter a probationary segment;
 * an entry hit once more moves to a protected segment (at most 80 % of the
 * bytes), whose least recent entries fall back to the probationary head
 * when it is over its share; victims come from the probationary tail
 * first.  That is the frequency guard: a burst of one-off answers (a
 * report paging through ids) churns only the probationary segment and
 * cannot flush the answers that are hit again and again.  It costs two
 * list moves per hit and no per-entry counters, which a CLOCK-Pro or
 * TinyLFU sketch would add for a better hit ratio on mixed workloads; the
 * simpler rule is easy to reason about and to test exactly. */
#include "cache.h"

#include <string.h>
#include <xxhash.h>

#include "htab.h"

/* What the allocator keeps beside each block (glibc: one size word,
 * rounded to 16): counted so that the bound is on memory, not payload. */
#define ALLOC_OVERHEAD 16
/* A fill's first buffer holds this much answer: a typical few-row answer
 * needs no growth at all. */
#define FILL_INITIAL_ANSWER 2048
/* Hash buckets pre-sized for entries of this average cost, so that the
 * table rarely doubles (a doubling rehashes every entry at once). */
#define TYPICAL_ENTRY_COST 512

typedef struct list {
    struct list *prev, *next;
} list;

static inline void list_init(list *l) { l->prev = l->next = l; }
static inline bool list_empty(const list *l) { return l->next == l; }
static inline void list_del(list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}
static inline void list_push_head(list *l, list *n)
{
    n->next = l->next;
    n->prev = l;
    l->next->prev = n;
    l->next = n;
}

enum { NODE_ENTRY = 1, NODE_FILL = 2 };
enum { SEG_PROBATION = 0, SEG_PROTECTED = 1 };

/* What the hash table links: an entry or a pending fill, told apart by
 * kind; both are found by the same key. */
typedef struct cnode {
    htab_node node; /* node.hash = the key's low 64 bits */
    uint64_t hi;
    uint8_t kind;
} cnode;

struct pgs_cache_entry {
    cnode cn;
    list lru;
    uint64_t expires_us, epoch;
    size_t key_len, answer_len, cost;
    uint32_t n_deps, n_aux, refs;
    uint8_t seg;
    uint8_t cls;  /* the key's class: counted under it */
    bool linked; /* in the table and a segment; else waiting for its last release */
    /* ids[n_deps], versions[n_deps], aux[n_aux], key material, answer */
    uint64_t deps[];
};

struct pgs_cache_fill {
    cnode cn;
    pgs_cache *c;
    /* The future entry, laid out as one, its answer growing at the end;
     * NULL once refused. */
    pgs_cache_entry *buf;
    size_t cap;
    pgs_cache_waiter waiters; /* sentinel of a circular list */
    bool linked;
};

struct pgs_cache {
    htab tab;
    list seg[2];
    size_t seg_bytes[2];
    size_t bytes, max_bytes, max_entry;
    uint64_t entries;
    uint64_t hits, misses, pending, evictions, invalidations, expired, fills, stored, refused,
        no_room, fills_pending;
    pgs_cache_stats cls[PGS_CACHE_CLASSES];
    uint64_t cls_dirty; /* bit k: class k's counters moved since cache_class_dirty */
};

/* The class counters of class k (clamped: a caller's bug must not write
 * past the array). */
static inline pgs_cache_stats *cls_of(pgs_cache *c, unsigned k)
{
    if (k >= PGS_CACHE_CLASSES) k = PGS_CACHE_CLASSES - 1;
    c->cls_dirty |= 1ull << k;
    return &c->cls[k];
}

/* ---- Key ---------------------------------------------------------------- */

void cache_key_init(pgs_cache_key_builder *kb, size_t max_len)
{
    memset(kb, 0, sizeof(*kb));
    kb->max_len = max_len;
}

void cache_key_free(pgs_cache_key_builder *kb)
{
    free(kb->buf);
    memset(kb, 0, sizeof(*kb));
}

void cache_key_reset(pgs_cache_key_builder *kb)
{
    kb->len = 0;
    kb->too_long = false;
}

static void key_put(pgs_cache_key_builder *kb, uint8_t tag, uint32_t len_field, const void *data,
                    size_t len)
{
    if (kb->too_long) return;
    size_t need = 5 + len;
    if (len >= PGS_CACHE_KEY_NULL_LEN || need > kb->max_len - kb->len || kb->len > kb->max_len) {
        kb->too_long = true;
        return;
    }
    if (kb->len + need > kb->cap) {
        size_t cap = kb->cap ? kb->cap : 256;
        while (cap < kb->len + need) cap *= 2;
        if (cap > kb->max_len) cap = kb->max_len;
        kb->buf = pgs_xrealloc(kb->buf, cap);
        kb->cap = cap;
    }
    uint8_t *p = kb->buf + kb->len;
    p[0] = tag;
    p[1] = (uint8_t)len_field;
    p[2] = (uint8_t)(len_field >> 8);
    p[3] = (uint8_t)(len_field >> 16);
    p[4] = (uint8_t)(len_field >> 24);
    if (len) memcpy(p + 5, data, len);
    kb->len += need;
}

void cache_key_part(pgs_cache_key_builder *kb, uint8_t tag, const void *data, size_t len)
{
    key_put(kb, tag, (uint32_t)len, data, len);
}

void cache_key_null(pgs_cache_key_builder *kb, uint8_t tag)
{
    key_put(kb, tag, PGS_CACHE_KEY_NULL_LEN, NULL, 0);
}

void cache_key_of_material(const uint8_t *material, size_t len, pgs_cache_key *out)
{
    XXH128_hash_t h = XXH3_128bits(material, len);
    out->lo = h.low64;
    out->hi = h.high64;
    out->material = material;
    out->len = len;
    out->cls = 0;
}

int cache_key_finish(pgs_cache_key_builder *kb, pgs_cache_key *out)
{
    if (kb->too_long) return PGS_CACHE_E_TOO_BIG;
    XXH128_hash_t h = XXH3_128bits(kb->buf, kb->len);
    out->lo = h.low64;
    out->hi = h.high64;
    out->material = kb->buf;
    out->len = kb->len;
    out->cls = 0;
    return 0;
}

/* ---- Entries ------------------------------------------------------------ */

static inline size_t header_size(size_t key_len, size_t n_deps, size_t n_aux)
{
    return offsetof(pgs_cache_entry, deps) + (2 * n_deps + n_aux) * sizeof(uint64_t) + key_len;
}

static inline size_t entry_header(const pgs_cache_entry *e)
{
    return header_size(e->key_len, e->n_deps, e->n_aux);
}

size_t cache_entry_cost(size_t key_len, size_t n_deps, size_t answer_len)
{
    return header_size(key_len, n_deps, 0) + answer_len + ALLOC_OVERHEAD;
}

static inline const uint64_t *entry_ids(const pgs_cache_entry *e) { return e->deps; }
static inline const uint64_t *entry_versions(const pgs_cache_entry *e)
{
    return e->deps + e->n_deps;
}
static inline uint64_t *entry_aux(pgs_cache_entry *e) { return e->deps + 2 * e->n_deps; }
static inline uint8_t *entry_key(pgs_cache_entry *e)
{
    return (uint8_t *)(e->deps + 2 * e->n_deps + e->n_aux);
}
static inline uint8_t *entry_answer(pgs_cache_entry *e) { return entry_key(e) + e->key_len; }

static void drop(pgs_cache *c, pgs_cache_entry *e);

const uint8_t *cache_entry_answer(const pgs_cache_entry *e, size_t *len)
{
    *len = e->answer_len;
    return entry_answer((pgs_cache_entry *)e);
}

const uint64_t *cache_entry_deps(const pgs_cache_entry *e, size_t *n)
{
    *n = e->n_deps;
    return e->deps;
}

const uint64_t *cache_entry_aux(const pgs_cache_entry *e, size_t *n)
{
    *n = e->n_aux;
    return entry_aux((pgs_cache_entry *)e);
}

uint64_t cache_entry_expires(const pgs_cache_entry *e)
{
    return e->expires_us;
}

void cache_entry_drop(pgs_cache *c, pgs_cache_entry *e)
{
    if (!e->linked) return;
    drop(c, e);
    c->invalidations++;
    cls_of(c, e->cls)->invalidations++;
}

static inline pgs_cache_entry *lru_entry(list *l)
{
    return (pgs_cache_entry *)((char *)l - offsetof(pgs_cache_entry, lru));
}

/* Takes e out of the table and its segment; frees it unless pinned (the
 * last release frees it then, and its bytes count until that moment). */
static void drop(pgs_cache *c, pgs_cache_entry *e)
{
    (void)htab_remove(&c->tab, &e->cn.node);
    list_del(&e->lru);
    c->seg_bytes[e->seg] -= e->cost;
    c->entries--;
    cls_of(c, e->cls)->entries--;
    e->linked = false;
    if (e->refs == 0) {
        c->bytes -= e->cost;
        cls_of(c, e->cls)->bytes -= e->cost;
        free(e);
    }
}

void cache_entry_release(pgs_cache *c, pgs_cache_entry *e)
{
    if (--e->refs == 0 && !e->linked) {
        c->bytes -= e->cost;
        cls_of(c, e->cls)->bytes -= e->cost;
        free(e);
    }
}

/* Moves protected entries that exceed the segment's share back to the
 * probationary head: they get one more chance before eviction. */
static void rebalance(pgs_cache *c)
{
    size_t cap = c->max_bytes / 5 * 4;
    while (c->seg_bytes[SEG_PROTECTED] > cap && !list_empty(&c->seg[SEG_PROTECTED])) {
        pgs_cache_entry *e = lru_entry(c->seg[SEG_PROTECTED].prev);
        list_del(&e->lru);
        c->seg_bytes[SEG_PROTECTED] -= e->cost;
        e->seg = SEG_PROBATION;
        c->seg_bytes[SEG_PROBATION] += e->cost;
        list_push_head(&c->seg[SEG_PROBATION], &e->lru);
    }
}

/* Evicts until `need` more bytes fit; false when only pinned (already
 * unlinked) entries are left holding the room. */
static bool make_room(pgs_cache *c, size_t need)
{
    while (c->bytes + need > c->max_bytes) {
        list *victim_seg = !list_empty(&c->seg[SEG_PROBATION]) ? &c->seg[SEG_PROBATION]
                           : !list_empty(&c->seg[SEG_PROTECTED]) ? &c->seg[SEG_PROTECTED]
                                                                  : NULL;
        if (!victim_seg) return false;
        pgs_cache_entry *e = lru_entry(victim_seg->prev);
        cls_of(c, e->cls)->evictions++;
        drop(c, e);
        c->evictions++;
    }
    return true;
}

/* ---- Store -------------------------------------------------------------- */

static size_t initial_buckets(size_t max_bytes)
{
    size_t want = max_bytes / TYPICAL_ENTRY_COST, n = HTAB_DEFAULT_BUCKETS;
    while (n < want && n < ((size_t)1 << 24)) n *= 2;
    return n;
}

pgs_cache *cache_new(size_t max_bytes, size_t max_entry_bytes)
{
    pgs_cache *c = pgs_xcalloc(1, sizeof(*c));
    htab_init(&c->tab, initial_buckets(max_bytes));
    list_init(&c->seg[SEG_PROBATION]);
    list_init(&c->seg[SEG_PROTECTED]);
    c->max_bytes = max_bytes;
    c->max_entry = max_entry_bytes;
    return c;
}

void cache_clear(pgs_cache *c)
{
    for (int s = 0; s < 2; s++)
        while (!list_empty(&c->seg[s])) drop(c, lru_entry(c->seg[s].next));
}

void cache_free(pgs_cache *c)
{
    if (!c) return;
    cache_clear(c);
    htab_free(&c->tab);
    free(c);
}

void cache_set_limits(pgs_cache *c, size_t max_bytes, size_t max_entry_bytes)
{
    c->max_bytes = max_bytes;
    c->max_entry = max_entry_bytes;
    (void)make_room(c, 0);
    rebalance(c);
}

static inline const uint8_t *node_key(cnode *n, size_t *len)
{
    pgs_cache_entry *e = n->kind == NODE_ENTRY ? (pgs_cache_entry *)n : ((pgs_cache_fill *)n)->buf;
    *len = e->key_len;
    return entry_key(e);
}

static cnode *find(pgs_cache *c, const pgs_cache_key *key)
{
    for (htab_node *h = htab_first(&c->tab, key->lo); h; h = h->next) {
        cnode *n = (cnode *)h;
        if (h->hash != key->lo || n->hi != key->hi) continue;
        /* The hash only found a candidate: the material decides. */
        size_t len;
        const uint8_t *m = node_key(n, &len);
        if (len == key->len && (len == 0 || memcmp(m, key->material, len) == 0)) return n;
    }
    return NULL;
}

enum pgs_cache_result cache_lookup(pgs_cache *c, const pgs_cache_key *key, uint64_t now_us,
                                   pgs_cache_lookup_result *out)
{
    out->entry = NULL;
    out->fill = NULL;
    pgs_cache_stats *ks = cls_of(c, key->cls);
    cnode *n = find(c, key);
    if (!n) {
        c->misses++;
        ks->misses++;
        return PGS_CACHE_MISS;
    }
    if (n->kind == NODE_FILL) {
        c->pending++;
        ks->misses++;
        out->fill = (pgs_cache_fill *)n;
        return PGS_CACHE_PENDING;
    }
    pgs_cache_entry *e = (pgs_cache_entry *)n;
    if (now_us >= e->expires_us) {
        drop(c, e);
        c->expired++;
        c->misses++;
        ks->expired++;
        ks->misses++;
        return PGS_CACHE_MISS;
    }
    if (!tablever_valid(entry_ids(e), entry_versions(e), e->n_deps, e->epoch)) {
        drop(c, e);
        c->invalidations++;
        c->misses++;
        ks->invalidations++;
        ks->misses++;
        return PGS_CACHE_MISS;
    }
    list_del(&e->lru);
    if (e->seg == SEG_PROBATION) {
        c->seg_bytes[SEG_PROBATION] -= e->cost;
        c->seg_bytes[SEG_PROTECTED] += e->cost;
        e->seg = SEG_PROTECTED;
        list_push_head(&c->seg[SEG_PROTECTED], &e->lru);
        rebalance(c);
    } else {
        list_push_head(&c->seg[SEG_PROTECTED], &e->lru);
    }
    e->refs++;
    c->hits++;
    ks->hits++;
    out->entry = e;
    return PGS_CACHE_HIT;
}

/* ---- Fills -------------------------------------------------------------- */

/* Serves (e pinned once per waiter) or releases (e NULL) every waiter.
 * Each is taken off the list before its callback, which may therefore
 * call into the store, wait elsewhere or unwait others. */
static void wake_waiters(pgs_cache *c, pgs_cache_fill *f, pgs_cache_entry *e)
{
    pgs_cache_waiter *head = &f->waiters;
    /* Pinned across the loop: a callback that fills or clears could evict
     * e before the later waiters took their pins. */
    if (e) e->refs++;
    while (head->next != head) {
        pgs_cache_waiter *w = head->next;
        w->prev->next = w->next;
        w->next->prev = w->prev;
        w->prev = w->next = NULL;
        if (e) e->refs++;
        w->cb(w, e);
    }
    if (e) cache_entry_release(c, e);
}

static void unlink_fill(pgs_cache_fill *f)
{
    if (f->linked) {
        (void)htab_remove(&f->c->tab, &f->cn.node);
        f->linked = false;
    }
}

int cache_fill_begin(pgs_cache *c, const pgs_cache_key *key, const pgs_table_id *ids,
                     const uint64_t *versions, size_t n_deps, uint64_t epoch, uint64_t ttl_us,
                     uint64_t now_us, pgs_cache_fill **out)
{
    return cache_fill_begin_aux(c, key, ids, versions, n_deps, epoch, 0, ttl_us, now_us, out);
}

int cache_fill_begin_aux(pgs_cache *c, const pgs_cache_key *key, const pgs_table_id *ids,
                         const uint64_t *versions, size_t n_deps, uint64_t epoch, size_t n_aux,
                         uint64_t ttl_us, uint64_t now_us, pgs_cache_fill **out)
{
    *out = NULL;
    size_t hdr = header_size(key->len, n_deps, n_aux);
    if (n_deps > UINT32_MAX || n_aux > UINT32_MAX || hdr + ALLOC_OVERHEAD > c->max_entry ||
        hdr + ALLOC_OVERHEAD > c->max_bytes) {
        c->refused++;
        cls_of(c, key->cls)->refused++;
        return PGS_CACHE_E_TOO_BIG;
    }
    cnode *old = find(c, key);
    if (old && old->kind == NODE_FILL) return PGS_CACHE_E_EXISTS;

    pgs_cache_fill *f = pgs_xcalloc(1, sizeof(*f));
    size_t limit = PGS_MIN(c->max_entry, c->max_bytes) - ALLOC_OVERHEAD;
    f->cap = PGS_MIN(hdr + FILL_INITIAL_ANSWER, limit);
    f->buf = pgs_xmalloc(f->cap);
    pgs_cache_entry *e = f->buf;
    memset(e, 0, offsetof(pgs_cache_entry, deps));
    e->n_deps = (uint32_t)n_deps;
    e->n_aux = (uint32_t)n_aux;
    e->key_len = key->len;
    e->cls = key->cls < PGS_CACHE_CLASSES ? key->cls : PGS_CACHE_CLASSES - 1;
    e->epoch = epoch;
    /* The TTL runs from before the query: the answer is at least that old. */
    e->expires_us = now_us + ttl_us < now_us ? UINT64_MAX : now_us + ttl_us;
    if (n_deps) {
        memcpy(e->deps, ids, n_deps * sizeof(uint64_t));
        memcpy(e->deps + n_deps, versions, n_deps * sizeof(uint64_t));
    }
    if (n_aux) memset(entry_aux(e), 0, n_aux * sizeof(uint64_t));
    if (key->len) memcpy(entry_key(e), key->material, key->len);

    f->c = c;
    f->cn.kind = NODE_FILL;
    f->cn.hi = key->hi;
    f->cn.node.hash = key->lo;
    f->waiters.prev = f->waiters.next = &f->waiters;
    htab_insert(&c->tab, &f->cn.node);
    f->linked = true;
    c->fills++;
    c->fills_pending++;
    *out = f;
    return 0;
}

static void refuse(pgs_cache_fill *f)
{
    pgs_cache *c = f->c;
    unlink_fill(f);
    cls_of(c, f->buf->cls)->refused++;
    free(f->buf);
    f->buf = NULL;
    c->refused++;
    wake_waiters(c, f, NULL);
}

int cache_fill_append(pgs_cache_fill *f, const void *data, size_t len)
{
    pgs_cache_entry *e = f->buf;
    if (PGS_UNLIKELY(!e)) return PGS_CACHE_E_TOO_BIG;
    size_t used = entry_header(e) + e->answer_len;
    size_t limit = PGS_MIN(f->c->max_entry, f->c->max_bytes) - ALLOC_OVERHEAD;
    if (PGS_UNLIKELY(len > limit - used)) {
        refuse(f);
        return PGS_CACHE_E_TOO_BIG;
    }
    if (used + len > f->cap) {
        size_t cap = f->cap * 2;
        if (cap < used + len) cap = used + len;
        if (cap > limit) cap = limit;
        e = f->buf = pgs_xrealloc(e, cap);
        f->cap = cap;
    }
    memcpy(entry_answer(e) + e->answer_len, data, len);
    e->answer_len += len;
    return 0;
}

static void fill_end(pgs_cache_fill *f)
{
    f->c->fills_pending--;
    free(f);
}

int cache_fill_commit(pgs_cache_fill *f, uint64_t now_us)
{
    pgs_cache *c = f->c;
    pgs_cache_entry *e = f->buf;
    (void)now_us;
    if (!e) {
        fill_end(f);
        return PGS_CACHE_E_TOO_BIG;
    }
    unlink_fill(f);
    int rc = 0;
    size_t cost = entry_header(e) + e->answer_len + ALLOC_OVERHEAD;
    if (cost > c->max_entry || cost > c->max_bytes) {
        /* The limits were lowered (RELOAD) while the answer was copied. */
        c->refused++;
        cls_of(c, e->cls)->refused++;
        rc = PGS_CACHE_E_TOO_BIG;
    } else if (!tablever_valid(entry_ids(e), entry_versions(e), e->n_deps, e->epoch)) {
        /* A write committed during the fill.  The answer may or may not
         * include it, and a waiter may have seen it acknowledged. */
        c->invalidations++;
        cls_of(c, e->cls)->invalidations++;
        rc = PGS_CACHE_E_STALE;
    } else if (!make_room(c, cost)) {
        c->no_room++;
        cls_of(c, e->cls)->no_room++;
        rc = PGS_CACHE_E_NO_ROOM;
    }
    if (rc) {
        free(e);
        f->buf = NULL;
        wake_waiters(c, f, NULL);
        fill_end(f);
        return rc;
    }
    size_t size = entry_header(e) + e->answer_len;
    if (size < f->cap) e = pgs_xrealloc(e, size);
    f->buf = NULL;
    e->cn.kind = NODE_ENTRY;
    e->cn.hi = f->cn.hi;
    e->cn.node.hash = f->cn.node.hash;
    e->cost = size + ALLOC_OVERHEAD;
    e->refs = 0;
    e->seg = SEG_PROBATION;
    e->linked = true;
    /* An entry of the same key can only be there if it was stored while
     * this fill ran (it never is through this API, but be exact). */
    pgs_cache_key k = {.lo = e->cn.node.hash, .hi = e->cn.hi, .material = entry_key(e),
                       .len = e->key_len};
    cnode *old = find(c, &k);
    if (old && old->kind == NODE_ENTRY) drop(c, (pgs_cache_entry *)old);
    htab_insert(&c->tab, &e->cn.node);
    list_push_head(&c->seg[SEG_PROBATION], &e->lru);
    c->seg_bytes[SEG_PROBATION] += e->cost;
    c->bytes += e->cost;
    c->entries++;
    c->stored++;
    pgs_cache_stats *ks = cls_of(c, e->cls);
    ks->bytes += e->cost;
    ks->entries++;
    ks->stored++;
    wake_waiters(c, f, e);
    fill_end(f);
    return 0;
}

uint64_t *cache_fill_aux(pgs_cache_fill *f, size_t *n)
{
    if (!f->buf) {
        *n = 0;
        return NULL;
    }
    *n = f->buf->n_aux;
    return entry_aux(f->buf);
}

const uint8_t *cache_fill_key(const pgs_cache_fill *f, size_t *len)
{
    if (!f->buf) {
        *len = 0;
        return NULL;
    }
    *len = f->buf->key_len;
    return entry_key(f->buf);
}

const uint8_t *cache_fill_answer(const pgs_cache_fill *f, size_t *len)
{
    if (!f->buf) {
        *len = 0;
        return NULL;
    }
    *len = f->buf->answer_len;
    return entry_answer(f->buf);
}

const uint64_t *cache_fill_deps(const pgs_cache_fill *f, size_t *n)
{
    if (!f->buf) {
        *n = 0;
        return NULL;
    }
    *n = f->buf->n_deps;
    return f->buf->deps;
}

void cache_fill_cap_expiry(pgs_cache_fill *f, uint64_t expires_us)
{
    if (f->buf && expires_us < f->buf->expires_us) f->buf->expires_us = expires_us;
}

uint64_t cache_fill_expires(const pgs_cache_fill *f)
{
    return f->buf ? f->buf->expires_us : 0;
}

void cache_fill_abort(pgs_cache_fill *f)
{
    unlink_fill(f);
    free(f->buf);
    f->buf = NULL;
    wake_waiters(f->c, f, NULL);
    fill_end(f);
}

void cache_wait(pgs_cache_fill *f, pgs_cache_waiter *w)
{
    pgs_cache_waiter *head = &f->waiters;
    w->next = head;
    w->prev = head->prev;
    head->prev->next = w;
    head->prev = w;
}

void cache_unwait(pgs_cache_waiter *w)
{
    if (!w->next) return;
    w->prev->next = w->next;
    w->next->prev = w->prev;
    w->prev = w->next = NULL;
}

void cache_stats(const pgs_cache *c, pgs_cache_stats *out)
{
    out->hits = c->hits;
    out->misses = c->misses;
    out->pending = c->pending;
    out->entries = c->entries;
    out->bytes = c->bytes;
    out->max_bytes = c->max_bytes;
    out->evictions = c->evictions;
    out->invalidations = c->invalidations;
    out->expired = c->expired;
    out->fills = c->fills;
    out->stored = c->stored;
    out->refused = c->refused;
    out->no_room = c->no_room;
    out->fills_pending = c->fills_pending;
}

void cache_class_stats(const pgs_cache *c, unsigned cls, pgs_cache_stats *out)
{
    *out = c->cls[cls < PGS_CACHE_CLASSES ? cls : PGS_CACHE_CLASSES - 1];
}

void cache_class_note(pgs_cache *c, unsigned cls)
{
    (void)cls_of(c, cls);
}

uint64_t cache_class_dirty(pgs_cache *c)
{
    uint64_t m = c->cls_dirty;
    c->cls_dirty = 0;
    return m;
}

void cache_class_reset(pgs_cache *c)
{
    c->cls_dirty = ~0ull;
    /* entries and bytes describe what is stored: they stay with it */
    for (unsigned k = 0; k < PGS_CACHE_CLASSES; k++) {
        pgs_cache_stats *s = &c->cls[k];
        uint64_t entries = s->entries, bytes = s->bytes;
        memset(s, 0, sizeof(*s));
        s->entries = entries;
        s->bytes = bytes;
    }
}
