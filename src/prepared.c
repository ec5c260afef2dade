/* Prepared-statement bookkeeping for transaction mode: the per-worker
 * table of interned statement bodies, the per-client map from the
 * client's statement names to those bodies, and the per-server set of
 * statement ids already prepared there (bounded, LRU).  No I/O; relay.c
 * decides what to send.  All three are chained hash tables (lookups by
 * name or id are O(1) on average); they grow by doubling. */
#include "prepared.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "sqlscan.h"

/* Ids are shared by all workers so that a server connection handed from
 * one worker to another keeps ids that mean nothing to the new worker's
 * table instead of ids that could mean another text there. */
static _Atomic uint64_t g_next_id = 1;

/* ---------- hashing ---------- */

uint64_t stmt_hash(const uint8_t *body, uint32_t len)
{
    uint64_t h = pgs_hash64(body, len);
    return h ? h : 1;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

void stmt_srv_name(uint64_t id, char out[STMT_SRV_NAME_LEN])
{
    snprintf(out, STMT_SRV_NAME_LEN, "pgs_%016llx", (unsigned long long)id);
}

int stmt_local_kind(const uint8_t *body, uint32_t len, char *name)
{
    const uint8_t *nul = memchr(body, '\0', len);
    size_t qlen = nul ? (size_t)(nul - body) : len;
    sql_info info;
    sqlscan_classify((const char *)body, qlen, &info);
    if (name) memcpy(name, info.name, SQLSCAN_NAME_MAX);
    switch (info.kind) {
    case SQL_DEALLOCATE: return STMT_DEALLOCATE;
    case SQL_DEALLOCATE_ALL: return STMT_DEALLOCATE_ALL;
    case SQL_DISCARD_ALL: return STMT_DISCARD_ALL;
    default: return STMT_SERVER;
    }
}

/* ---------- the interning table ---------- */

struct pgs_stmt_tab {
    stmt_hash_fn hash;
    uint32_t n, nb;     /* entries, buckets (a power of two) */
    pgs_stmt **b;
};

pgs_stmt_tab *stmt_tab_new(stmt_hash_fn hash)
{
    pgs_stmt_tab *t = pgs_xcalloc(1, sizeof(*t));
    t->hash = hash ? hash : stmt_hash;
    t->nb = 64;
    t->b = pgs_xcalloc(t->nb, sizeof(pgs_stmt *));
    return t;
}

static void stmt_free(pgs_stmt *st)
{
    free(st->body);
    free(st);
}

void stmt_tab_free(pgs_stmt_tab *t)
{
    if (!t) return;
    for (uint32_t i = 0; i < t->nb; i++) {
        pgs_stmt *st = t->b[i];
        while (st) {
            pgs_stmt *nx = st->next;
            stmt_free(st);
            st = nx;
        }
    }
    free(t->b);
    free(t);
}

static void tab_grow(pgs_stmt_tab *t)
{
    uint32_t nb = t->nb * 2;
    pgs_stmt **b = pgs_xcalloc(nb, sizeof(pgs_stmt *));
    for (uint32_t i = 0; i < t->nb; i++) {
        pgs_stmt *st = t->b[i];
        while (st) {
            pgs_stmt *nx = st->next;
            uint32_t k = (uint32_t)(mix64(st->hash) & (nb - 1));
            st->next = b[k];
            b[k] = st;
            st = nx;
        }
    }
    free(t->b);
    t->b = b;
    t->nb = nb;
}

pgs_stmt *stmt_intern(pgs_stmt_tab *t, const uint8_t *body, uint32_t len)
{
    uint64_t h = t->hash(body, len);
    pgs_stmt **slot = &t->b[mix64(h) & (t->nb - 1)];
    for (pgs_stmt *st = *slot; st; st = st->next) {
        /* the hash only narrows the search: the body decides */
        if (st->hash == h && st->body_len == len && memcmp(st->body, body, len) == 0) {
            st->refs++;
            return st;
        }
    }
    pgs_stmt *st = pgs_xcalloc(1, sizeof(*st));
    st->id = atomic_fetch_add_explicit(&g_next_id, 1, memory_order_relaxed);
    st->hash = h;
    stmt_srv_name(st->id, st->srv_name);
    st->refs = 1;
    st->body_len = len;
    st->body = pgs_xmalloc(len ? len : 1);
    if (len) memcpy(st->body, body, len);
    st->local = (uint8_t)stmt_local_kind(body, len, NULL);
    st->next = *slot;
    *slot = st;
    if (++t->n > t->nb) tab_grow(t);
    return st;
}

/* A body nobody holds any more is freed at once, not kept for reuse under
 * its id: a client that deallocates a statement and prepares the same text
 * again expects PostgreSQL to parse it again (psycopg 3 sends DEALLOCATE
 * ALL after a rollback that dropped a type the statement's parameters
 * named; the old server-side statement would still point at the old type). */
void stmt_unref(pgs_stmt_tab *t, pgs_stmt *st)
{
    if (--st->refs) return;
    pgs_stmt **pp = &t->b[mix64(st->hash) & (t->nb - 1)];
    while (*pp && *pp != st) pp = &(*pp)->next;
    if (*pp) *pp = st->next;
    t->n--;
    stmt_free(st);
}

uint32_t stmt_tab_count(const pgs_stmt_tab *t)
{
    return t ? t->n : 0;
}

/* ---------- the client's map ---------- */

typedef struct map_entry {
    struct map_entry *next;
    uint64_t name_hash;
    uint32_t name_len;
    pgs_stmt *st;
    char name[]; /* NUL-terminated copy */
} map_entry;

struct pgs_stmt_map {
    pgs_stmt_tab *tab;
    uint32_t n, nb;
    uint64_t bytes;
    map_entry **b;
};

static uint64_t entry_bytes(const map_entry *e)
{
    return (uint64_t)e->name_len + e->st->body_len;
}

static map_entry **map_slot(pgs_stmt_map *m, const char *name, size_t len, uint64_t *hp)
{
    uint64_t h = pgs_hash64(name, len);
    if (hp) *hp = h;
    map_entry **pp = &m->b[mix64(h) & (m->nb - 1)];
    while (*pp) {
        map_entry *e = *pp;
        if (e->name_hash == h && e->name_len == len && memcmp(e->name, name, len) == 0) break;
        pp = &e->next;
    }
    return pp;
}

pgs_stmt *stmt_map_get(pgs_stmt_map *m, const char *name, size_t name_len)
{
    if (!m) return NULL;
    map_entry *e = *map_slot(m, name, name_len, NULL);
    return e ? e->st : NULL;
}

static void map_grow(pgs_stmt_map *m)
{
    uint32_t nb = m->nb * 2;
    map_entry **b = pgs_xcalloc(nb, sizeof(map_entry *));
    for (uint32_t i = 0; i < m->nb; i++) {
        map_entry *e = m->b[i];
        while (e) {
            map_entry *nx = e->next;
            uint32_t k = (uint32_t)(mix64(e->name_hash) & (nb - 1));
            e->next = b[k];
            b[k] = e;
            e = nx;
        }
    }
    free(m->b);
    m->b = b;
    m->nb = nb;
}

int stmt_map_put(pgs_stmt_map **mp, pgs_stmt_tab *t, const char *name, size_t name_len,
                 const uint8_t *body, uint32_t body_len, uint32_t max_count, uint64_t max_bytes,
                 pgs_stmt **out)
{
    if (!*mp) {
        pgs_stmt_map *m = pgs_xcalloc(1, sizeof(*m));
        m->tab = t;
        m->nb = 8;
        m->b = pgs_xcalloc(m->nb, sizeof(map_entry *));
        *mp = m;
    }
    pgs_stmt_map *m = *mp;
    uint64_t h;
    map_entry **pp = map_slot(m, name, name_len, &h);
    map_entry *old = *pp;
    uint64_t bytes = m->bytes + name_len + body_len - (old ? entry_bytes(old) : 0);
    if (!old && max_count && m->n >= max_count) return STMT_LIMIT_COUNT;
    if (max_bytes && bytes > max_bytes && bytes > m->bytes) return STMT_LIMIT_BYTES;

    pgs_stmt *st = stmt_intern(m->tab, body, body_len);
    if (old) {
        stmt_unref(m->tab, old->st);
        old->st = st;
    } else {
        map_entry *e = pgs_xmalloc(sizeof(*e) + name_len + 1);
        e->name_hash = h;
        e->name_len = (uint32_t)name_len;
        memcpy(e->name, name, name_len);
        e->name[name_len] = '\0';
        e->st = st;
        e->next = NULL;
        *pp = e;
        if (++m->n > m->nb) map_grow(m);
    }
    m->bytes = bytes;
    if (out) *out = st;
    return 0;
}

static void map_unlink(pgs_stmt_map *m, map_entry **pp)
{
    map_entry *e = *pp;
    *pp = e->next;
    m->n--;
    m->bytes -= entry_bytes(e);
    stmt_unref(m->tab, e->st);
    free(e);
}

void stmt_map_del(pgs_stmt_map *m, const char *name, size_t name_len)
{
    if (!m) return;
    map_entry **pp = map_slot(m, name, name_len, NULL);
    if (*pp) map_unlink(m, pp);
}

/* Slow path (a server refused the statement): a walk over the map. */
void stmt_map_del_id(pgs_stmt_map *m, uint64_t id)
{
    if (!m) return;
    for (uint32_t i = 0; i < m->nb; i++) {
        map_entry **pp = &m->b[i];
        while (*pp) {
            if ((*pp)->st->id == id)
                map_unlink(m, pp);
            else
                pp = &(*pp)->next;
        }
    }
}

const char *stmt_map_name_of(const pgs_stmt_map *m, uint64_t id)
{
    if (!m) return NULL;
    for (uint32_t i = 0; i < m->nb; i++)
        for (const map_entry *e = m->b[i]; e; e = e->next)
            if (e->st->id == id) return e->name;
    return NULL;
}

void stmt_map_clear(pgs_stmt_map *m)
{
    if (!m) return;
    for (uint32_t i = 0; i < m->nb; i++)
        while (m->b[i]) map_unlink(m, &m->b[i]);
}

void stmt_map_free(pgs_stmt_map *m)
{
    if (!m) return;
    stmt_map_clear(m);
    free(m->b);
    free(m);
}

int stmt_map_count(const pgs_stmt_map *m)
{
    return m ? (int)m->n : 0;
}

uint64_t stmt_map_bytes(const pgs_stmt_map *m)
{
    return m ? m->bytes : 0;
}

/* ---------- statements and portals answered locally ---------- */

typedef struct local_portal {
    char *name;
    size_t len;
    pgs_stmt *st;
} local_portal;

struct pgs_local_ext {
    pgs_stmt_tab *tab;
    pgs_stmt *unnamed;
    int n, cap;           /* a client rarely has more than one or two */
    local_portal *p;
};

static struct pgs_local_ext *local_get(struct pgs_local_ext **lx, pgs_stmt_tab *t)
{
    if (!*lx) {
        *lx = pgs_xcalloc(1, sizeof(**lx));
        (*lx)->tab = t;
    }
    return *lx;
}

pgs_stmt *stmt_local_unnamed(const struct pgs_local_ext *lx)
{
    return lx ? lx->unnamed : NULL;
}

void stmt_local_set_unnamed(struct pgs_local_ext **lxp, pgs_stmt_tab *t, pgs_stmt *st)
{
    if (!*lxp && !st) return;
    struct pgs_local_ext *lx = local_get(lxp, t);
    if (lx->unnamed) stmt_unref(lx->tab, lx->unnamed);
    lx->unnamed = st;
}

static int portal_find(const struct pgs_local_ext *lx, const char *name, size_t len)
{
    if (!lx) return -1;
    for (int i = 0; i < lx->n; i++)
        if (lx->p[i].len == len && memcmp(lx->p[i].name, name, len) == 0) return i;
    return -1;
}

pgs_stmt *stmt_local_portal(const struct pgs_local_ext *lx, const char *name, size_t len)
{
    int i = portal_find(lx, name, len);
    return i < 0 ? NULL : lx->p[i].st;
}

void stmt_local_unbind(struct pgs_local_ext *lx, const char *name, size_t len)
{
    int i = portal_find(lx, name, len);
    if (i < 0) return;
    stmt_unref(lx->tab, lx->p[i].st);
    free(lx->p[i].name);
    lx->p[i] = lx->p[--lx->n];
}

void stmt_local_bind(struct pgs_local_ext **lxp, pgs_stmt_tab *t, const char *name, size_t len,
                     pgs_stmt *st)
{
    struct pgs_local_ext *lx = local_get(lxp, t);
    stmt_local_unbind(lx, name, len);
    if (lx->n == lx->cap) {
        lx->cap = lx->cap ? lx->cap * 2 : 2;
        lx->p = pgs_xrealloc(lx->p, sizeof(local_portal) * (size_t)lx->cap);
    }
    lx->p[lx->n].name = pgs_xstrndup(name, len);
    lx->p[lx->n].len = len;
    lx->p[lx->n].st = st;
    lx->n++;
}

void stmt_local_unbind_all(struct pgs_local_ext *lx)
{
    while (lx && lx->n) stmt_local_unbind(lx, lx->p[0].name, lx->p[0].len);
}

bool stmt_local_any_portal(const struct pgs_local_ext *lx)
{
    return lx && lx->n > 0;
}

void stmt_local_free(struct pgs_local_ext *lx)
{
    if (!lx) return;
    stmt_local_unbind_all(lx);
    if (lx->unnamed) stmt_unref(lx->tab, lx->unnamed);
    free(lx->p);
    free(lx);
}

/* ---------- the server's set ---------- */

typedef struct set_entry {
    struct set_entry *next; /* hash chain */
    pgs_list lru;           /* most recently used first */
    uint64_t id;
} set_entry;

struct pgs_stmt_set {
    uint32_t n, nb;
    set_entry **b;
    pgs_list lru;
};

static set_entry **set_slot(pgs_stmt_set *s, uint64_t id)
{
    set_entry **pp = &s->b[mix64(id) & (s->nb - 1)];
    while (*pp && (*pp)->id != id) pp = &(*pp)->next;
    return pp;
}

bool stmt_set_has(pgs_stmt_set *s, uint64_t id)
{
    if (!s) return false;
    set_entry *e = *set_slot(s, id);
    if (!e) return false;
    list_del(&e->lru);
    list_add_head(&s->lru, &e->lru);
    return true;
}

static void set_unlink(pgs_stmt_set *s, set_entry **pp)
{
    set_entry *e = *pp;
    *pp = e->next;
    list_del(&e->lru);
    s->n--;
    free(e);
}

static void set_grow(pgs_stmt_set *s)
{
    uint32_t nb = s->nb * 2;
    set_entry **b = pgs_xcalloc(nb, sizeof(set_entry *));
    for (uint32_t i = 0; i < s->nb; i++) {
        set_entry *e = s->b[i];
        while (e) {
            set_entry *nx = e->next;
            uint32_t k = (uint32_t)(mix64(e->id) & (nb - 1));
            e->next = b[k];
            b[k] = e;
            e = nx;
        }
    }
    free(s->b);
    s->b = b;
    s->nb = nb;
}

bool stmt_set_add(pgs_stmt_set **sp, uint64_t id, int max, uint64_t *evicted)
{
    if (!*sp) {
        pgs_stmt_set *s = pgs_xcalloc(1, sizeof(*s));
        s->nb = 16;
        s->b = pgs_xcalloc(s->nb, sizeof(set_entry *));
        list_init(&s->lru);
        *sp = s;
    }
    pgs_stmt_set *s = *sp;
    if (stmt_set_has(s, id)) return false;
    bool ev = false;
    if (max > 0 && s->n >= (uint32_t)max) {
        set_entry *old = list_entry(s->lru.prev, set_entry, lru);
        *evicted = old->id;
        set_unlink(s, set_slot(s, old->id));
        ev = true;
    }
    set_entry *e = pgs_xmalloc(sizeof(*e));
    e->id = id;
    set_entry **pp = set_slot(s, id);
    e->next = NULL;
    *pp = e;
    list_init(&e->lru);
    list_add_head(&s->lru, &e->lru);
    if (++s->n > s->nb) set_grow(s);
    return ev;
}

void stmt_set_del(pgs_stmt_set *s, uint64_t id)
{
    if (!s) return;
    set_entry **pp = set_slot(s, id);
    if (*pp) set_unlink(s, pp);
}

void stmt_set_clear(pgs_stmt_set *s)
{
    if (!s) return;
    for (uint32_t i = 0; i < s->nb; i++)
        while (s->b[i]) set_unlink(s, &s->b[i]);
}

int stmt_set_count(const pgs_stmt_set *s)
{
    return s ? (int)s->n : 0;
}

void stmt_set_free(pgs_stmt_set *s)
{
    if (!s) return;
    stmt_set_clear(s);
    free(s->b);
    free(s);
}
