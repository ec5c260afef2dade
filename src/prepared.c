/* Prepared-statement bookkeeping for transaction mode: the per-client map
 * from the client's statement names to statement texts, and the per-server
 * set of statements already prepared there (bounded, LRU).  No I/O; relay.c
 * decides what to send. */
#include "prepared.h"

#include <stdio.h>
#include <string.h>

typedef struct map_entry {
    uint64_t name_hash;
    char *name;
    pgs_stmt st;
} map_entry;

struct pgs_stmt_map {
    int n, cap;
    map_entry *e;
};

typedef struct set_entry {
    uint64_t hash;
    uint64_t last_use;
} set_entry;

struct pgs_stmt_set {
    int n, cap;
    uint64_t clock;
    set_entry *e;
};

uint64_t stmt_hash(const uint8_t *body, uint32_t len)
{
    uint64_t h = pgs_hash64(body, len);
    return h ? h : 1;
}

void stmt_srv_name(uint64_t hash, char out[STMT_SRV_NAME_LEN])
{
    snprintf(out, STMT_SRV_NAME_LEN, "pgs_%016llx", (unsigned long long)hash);
}

static map_entry *map_find(pgs_stmt_map *m, const char *name, size_t len)
{
    if (!m) return NULL;
    uint64_t h = pgs_hash64(name, len);
    for (int i = 0; i < m->n; i++) {
        map_entry *e = &m->e[i];
        if (e->name_hash == h && strlen(e->name) == len && memcmp(e->name, name, len) == 0)
            return e;
    }
    return NULL;
}

pgs_stmt *stmt_map_get(pgs_stmt_map *m, const char *name, size_t name_len)
{
    map_entry *e = map_find(m, name, name_len);
    return e ? &e->st : NULL;
}

static void entry_free(map_entry *e)
{
    free(e->name);
    free(e->st.body);
}

pgs_stmt *stmt_map_put(pgs_stmt_map **mp, const char *name, size_t name_len,
                       const uint8_t *body, uint32_t body_len)
{
    if (!*mp) *mp = pgs_xcalloc(1, sizeof(pgs_stmt_map));
    pgs_stmt_map *m = *mp;
    map_entry *e = map_find(m, name, name_len);
    if (e) {
        entry_free(e);
    } else {
        if (m->n == m->cap) {
            m->cap = m->cap ? m->cap * 2 : 4;
            m->e = pgs_xrealloc(m->e, sizeof(map_entry) * (size_t)m->cap);
        }
        e = &m->e[m->n++];
    }
    e->name_hash = pgs_hash64(name, name_len);
    e->name = pgs_xstrndup(name, name_len);
    e->st.body = pgs_xmalloc(body_len);
    memcpy(e->st.body, body, body_len);
    e->st.body_len = body_len;
    e->st.hash = stmt_hash(body, body_len);
    stmt_srv_name(e->st.hash, e->st.srv_name);
    return &e->st;
}

static void map_remove_at(pgs_stmt_map *m, int i)
{
    entry_free(&m->e[i]);
    m->e[i] = m->e[--m->n];
}

void stmt_map_del(pgs_stmt_map *m, const char *name, size_t name_len)
{
    map_entry *e = map_find(m, name, name_len);
    if (e) map_remove_at(m, (int)(e - m->e));
}

void stmt_map_del_hash(pgs_stmt_map *m, uint64_t hash)
{
    if (!m) return;
    for (int i = 0; i < m->n;) {
        if (m->e[i].st.hash == hash)
            map_remove_at(m, i);
        else
            i++;
    }
}

void stmt_map_clear(pgs_stmt_map *m)
{
    if (!m) return;
    while (m->n) map_remove_at(m, m->n - 1);
}

void stmt_map_free(pgs_stmt_map *m)
{
    if (!m) return;
    stmt_map_clear(m);
    free(m->e);
    free(m);
}

int stmt_map_count(const pgs_stmt_map *m)
{
    return m ? m->n : 0;
}

static set_entry *set_find(pgs_stmt_set *s, uint64_t hash)
{
    if (!s) return NULL;
    for (int i = 0; i < s->n; i++)
        if (s->e[i].hash == hash) return &s->e[i];
    return NULL;
}

bool stmt_set_has(pgs_stmt_set *s, uint64_t hash)
{
    set_entry *e = set_find(s, hash);
    if (!e) return false;
    e->last_use = ++s->clock;
    return true;
}

bool stmt_set_add(pgs_stmt_set **sp, uint64_t hash, int max, uint64_t *evicted)
{
    if (!*sp) *sp = pgs_xcalloc(1, sizeof(pgs_stmt_set));
    pgs_stmt_set *s = *sp;
    set_entry *e = set_find(s, hash);
    if (e) {
        e->last_use = ++s->clock;
        return false;
    }
    bool ev = false;
    if (max > 0 && s->n >= max) {
        int lru = 0;
        for (int i = 1; i < s->n; i++)
            if (s->e[i].last_use < s->e[lru].last_use) lru = i;
        *evicted = s->e[lru].hash;
        s->e[lru] = s->e[--s->n];
        ev = true;
    }
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 8;
        s->e = pgs_xrealloc(s->e, sizeof(set_entry) * (size_t)s->cap);
    }
    s->e[s->n].hash = hash;
    s->e[s->n].last_use = ++s->clock;
    s->n++;
    return ev;
}

void stmt_set_del(pgs_stmt_set *s, uint64_t hash)
{
    set_entry *e = set_find(s, hash);
    if (e) *e = s->e[--s->n];
}

void stmt_set_clear(pgs_stmt_set *s)
{
    if (s) s->n = 0;
}

int stmt_set_count(const pgs_stmt_set *s)
{
    return s ? s->n : 0;
}

void stmt_set_free(pgs_stmt_set *s)
{
    if (!s) return;
    free(s->e);
    free(s);
}
