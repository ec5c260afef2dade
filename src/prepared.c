/* Prepared-statement bookkeeping for transaction mode: the per-worker
 * table of interned statement bodies, the per-client map from the
 * client's statement names to those bodies, and the per-server set of
 * statement ids already prepared there (bounded, LRU).  No I/O; relay.c
 * decides what to send.  All three are htab.c's chained hash tables
 * (lookups by body, name or id are O(1) on average). */
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
    htab h;             /* of pgs_stmt.hnode */
};

pgs_stmt_tab *stmt_tab_new(stmt_hash_fn hash)
{
    pgs_stmt_tab *t = pgs_xcalloc(1, sizeof(*t));
    t->hash = hash ? hash : stmt_hash;
    htab_init(&t->h, 64);
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
    for (htab_node *n = htab_next(&t->h, NULL), *next; n; n = next) {
        next = htab_next(&t->h, n);
        stmt_free(htab_entry(n, pgs_stmt, hnode));
    }
    htab_free(&t->h);
    free(t);
}

pgs_stmt *stmt_intern(pgs_stmt_tab *t, const uint8_t *body, uint32_t len)
{
    uint64_t h = t->hash(body, len);
    for (htab_node *n = htab_first(&t->h, h); n; n = n->next) {
        pgs_stmt *st = htab_entry(n, pgs_stmt, hnode);
        /* the hash only narrows the search: the body decides */
        if (n->hash == h && st->body_len == len && memcmp(st->body, body, len) == 0) {
            st->refs++;
            return st;
        }
    }
    pgs_stmt *st = pgs_xcalloc(1, sizeof(*st));
    st->id = atomic_fetch_add_explicit(&g_next_id, 1, memory_order_relaxed);
    st->hnode.hash = h;
    stmt_srv_name(st->id, st->srv_name);
    st->refs = 1;
    st->body_len = len;
    st->body = pgs_xmalloc(len ? len : 1);
    if (len) memcpy(st->body, body, len);
    st->local = (uint8_t)stmt_local_kind(body, len, NULL);
    /* scanned once per distinct text: a Bind of it looks the answer up */
    const uint8_t *nul = memchr(body, '\0', len);
    st->state = (uint8_t)sqlscan_session_state((const char *)body,
                                               nul ? (size_t)(nul - body) : len);
    st->seq = (uint8_t)sqlscan_sequence_use((const char *)body, nul ? (size_t)(nul - body) : len);
    htab_insert(&t->h, &st->hnode);
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
    htab_remove(&t->h, &st->hnode);
    stmt_free(st);
}

uint32_t stmt_tab_count(const pgs_stmt_tab *t)
{
    return t ? (uint32_t)t->h.count : 0;
}

/* ---------- the client's map ---------- */

typedef struct map_entry {
    htab_node hnode;    /* hash: of the name */
    uint32_t name_len;
    pgs_stmt *st;
    char name[]; /* NUL-terminated copy */
} map_entry;

struct pgs_stmt_map {
    pgs_stmt_tab *tab;
    htab h;             /* of map_entry.hnode */
    uint64_t bytes;
};

static uint64_t entry_bytes(const map_entry *e)
{
    return (uint64_t)e->name_len + e->st->body_len;
}

static map_entry *map_find(const pgs_stmt_map *m, const char *name, size_t len, uint64_t h)
{
    for (htab_node *n = htab_first(&m->h, h); n; n = n->next) {
        map_entry *e = htab_entry(n, map_entry, hnode);
        if (n->hash == h && e->name_len == len && memcmp(e->name, name, len) == 0) return e;
    }
    return NULL;
}

pgs_stmt *stmt_map_get(pgs_stmt_map *m, const char *name, size_t name_len)
{
    if (!m) return NULL;
    map_entry *e = map_find(m, name, name_len, pgs_hash64(name, name_len));
    return e ? e->st : NULL;
}

int stmt_map_put(pgs_stmt_map **mp, pgs_stmt_tab *t, const char *name, size_t name_len,
                 const uint8_t *body, uint32_t body_len, uint32_t max_count, uint64_t max_bytes,
                 pgs_stmt **out)
{
    if (!*mp) {
        pgs_stmt_map *m = pgs_xcalloc(1, sizeof(*m));
        m->tab = t;
        htab_init(&m->h, 8);
        *mp = m;
    }
    pgs_stmt_map *m = *mp;
    uint64_t h = pgs_hash64(name, name_len);
    map_entry *old = map_find(m, name, name_len, h);
    uint64_t bytes = m->bytes + name_len + body_len - (old ? entry_bytes(old) : 0);
    if (!old && max_count && m->h.count >= max_count) return STMT_LIMIT_COUNT;
    if (max_bytes && bytes > max_bytes && bytes > m->bytes) return STMT_LIMIT_BYTES;

    pgs_stmt *st = stmt_intern(m->tab, body, body_len);
    if (old) {
        stmt_unref(m->tab, old->st);
        old->st = st;
    } else {
        map_entry *e = pgs_xmalloc(sizeof(*e) + name_len + 1);
        e->hnode.hash = h;
        e->name_len = (uint32_t)name_len;
        memcpy(e->name, name, name_len);
        e->name[name_len] = '\0';
        e->st = st;
        htab_insert(&m->h, &e->hnode);
    }
    m->bytes = bytes;
    if (out) *out = st;
    return 0;
}

static void map_unlink(pgs_stmt_map *m, map_entry *e)
{
    htab_remove(&m->h, &e->hnode);
    m->bytes -= entry_bytes(e);
    stmt_unref(m->tab, e->st);
    free(e);
}

void stmt_map_del(pgs_stmt_map *m, const char *name, size_t name_len)
{
    if (!m) return;
    map_entry *e = map_find(m, name, name_len, pgs_hash64(name, name_len));
    if (e) map_unlink(m, e);
}

/* Slow path (a server refused the statement): a walk over the map. */
void stmt_map_del_id(pgs_stmt_map *m, uint64_t id)
{
    if (!m) return;
    for (htab_node *n = htab_next(&m->h, NULL), *next; n; n = next) {
        next = htab_next(&m->h, n);
        map_entry *e = htab_entry(n, map_entry, hnode);
        if (e->st->id == id) map_unlink(m, e);
    }
}

const char *stmt_map_name_of(const pgs_stmt_map *m, uint64_t id)
{
    if (!m) return NULL;
    for (htab_node *n = htab_next(&m->h, NULL); n; n = htab_next(&m->h, n)) {
        map_entry *e = htab_entry(n, map_entry, hnode);
        if (e->st->id == id) return e->name;
    }
    return NULL;
}

void stmt_map_clear(pgs_stmt_map *m)
{
    if (!m) return;
    for (htab_node *n = htab_next(&m->h, NULL), *next; n; n = next) {
        next = htab_next(&m->h, n);
        map_unlink(m, htab_entry(n, map_entry, hnode));
    }
}

void stmt_map_free(pgs_stmt_map *m)
{
    if (!m) return;
    stmt_map_clear(m);
    htab_free(&m->h);
    free(m);
}

int stmt_map_count(const pgs_stmt_map *m)
{
    return m ? (int)m->h.count : 0;
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
    htab_node hnode;        /* hash: the id itself */
    pgs_list lru;           /* most recently used first */
} set_entry;

struct pgs_stmt_set {
    htab h;                 /* of set_entry.hnode */
    pgs_list lru;
};

static set_entry *set_find(const pgs_stmt_set *s, uint64_t id)
{
    for (htab_node *n = htab_first(&s->h, id); n; n = n->next)
        if (n->hash == id) return htab_entry(n, set_entry, hnode);
    return NULL;
}

bool stmt_set_has(pgs_stmt_set *s, uint64_t id)
{
    if (!s) return false;
    set_entry *e = set_find(s, id);
    if (!e) return false;
    list_del(&e->lru);
    list_add_head(&s->lru, &e->lru);
    return true;
}

static void set_unlink(pgs_stmt_set *s, set_entry *e)
{
    htab_remove(&s->h, &e->hnode);
    list_del(&e->lru);
    free(e);
}

bool stmt_set_add(pgs_stmt_set **sp, uint64_t id, int max, uint64_t *evicted)
{
    if (!*sp) {
        pgs_stmt_set *s = pgs_xcalloc(1, sizeof(*s));
        htab_init(&s->h, 16);
        list_init(&s->lru);
        *sp = s;
    }
    pgs_stmt_set *s = *sp;
    if (stmt_set_has(s, id)) return false;
    bool ev = false;
    if (max > 0 && s->h.count >= (size_t)max) {
        set_entry *old = list_entry(s->lru.prev, set_entry, lru);
        *evicted = old->hnode.hash;
        set_unlink(s, old);
        ev = true;
    }
    set_entry *e = pgs_xmalloc(sizeof(*e));
    e->hnode.hash = id;
    htab_insert(&s->h, &e->hnode);
    list_init(&e->lru);
    list_add_head(&s->lru, &e->lru);
    return ev;
}

void stmt_set_del(pgs_stmt_set *s, uint64_t id)
{
    if (!s) return;
    set_entry *e = set_find(s, id);
    if (e) set_unlink(s, e);
}

/* In LRU order rather than through the table: every entry is on the list. */
void stmt_set_clear(pgs_stmt_set *s)
{
    if (!s) return;
    while (!list_empty(&s->lru)) set_unlink(s, list_entry(s->lru.next, set_entry, lru));
}

int stmt_set_count(const pgs_stmt_set *s)
{
    return s ? (int)s->h.count : 0;
}

void stmt_set_free(pgs_stmt_set *s)
{
    if (!s) return;
    stmt_set_clear(s);
    htab_free(&s->h);
    free(s);
}
