/* Pool lookup by (user, database) in O(1): a chained hash table that
 * doubles when it holds more entries than buckets.  It is written here
 * rather than taken from a library because none of the project's
 * dependencies has one (libuv has none; GLib's would be a new dependency
 * for some sixty lines), and the chain links live in the pool itself, so
 * inserting and removing allocate nothing but the bucket array. */
#include "pooltab.h"

#include <string.h>

uint64_t pooltab_hash(const char *user, const char *database)
{
    /* 64-bit FNV-1a over "user\0database" */
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *s = (const unsigned char *)user; *s; s++)
        h = (h ^ *s) * 1099511628211ULL;
    h = (h ^ 0u) * 1099511628211ULL;
    for (const unsigned char *s = (const unsigned char *)database; *s; s++)
        h = (h ^ *s) * 1099511628211ULL;
    return h;
}

pgs_pool_shared *pooltab_find(const pgs_pooltab *t, const char *user, const char *database)
{
    if (t->n_buckets == 0) return NULL;
    uint64_t h = pooltab_hash(user, database);
    for (pgs_pool_shared *sh = t->buckets[h & (t->n_buckets - 1)]; sh; sh = sh->hnext)
        if (sh->hash == h && strcmp(sh->user, user) == 0 && strcmp(sh->database, database) == 0)
            return sh;
    return NULL;
}

static void grow(pgs_pooltab *t)
{
    size_t n = t->n_buckets ? t->n_buckets * 2 : 64;
    pgs_pool_shared **b = pgs_xcalloc(n, sizeof(*b));
    for (size_t i = 0; i < t->n_buckets; i++) {
        pgs_pool_shared *sh = t->buckets[i];
        while (sh) {
            pgs_pool_shared *next = sh->hnext;
            size_t j = sh->hash & (n - 1);
            sh->hnext = b[j];
            b[j] = sh;
            sh = next;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->n_buckets = n;
}

void pooltab_insert(pgs_pooltab *t, pgs_pool_shared *sh)
{
    if (t->count >= t->n_buckets) grow(t);
    size_t j = sh->hash & (t->n_buckets - 1);
    sh->hnext = t->buckets[j];
    t->buckets[j] = sh;
    t->count++;
}

void pooltab_remove(pgs_pooltab *t, pgs_pool_shared *sh)
{
    pgs_pool_shared **pp = &t->buckets[sh->hash & (t->n_buckets - 1)];
    while (*pp && *pp != sh) pp = &(*pp)->hnext;
    if (!*pp) return;
    *pp = sh->hnext;
    sh->hnext = NULL;
    t->count--;
}

void pooltab_free(pgs_pooltab *t)
{
    free(t->buckets);
    memset(t, 0, sizeof(*t));
}
