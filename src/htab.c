/* The chained hash table behind every O(1) lookup in pgscale: pools by
 * (user, database), interned statement bodies, a client's statement names
 * and a server's prepared statement ids.  It owns the bucket array only;
 * the entries and what they mean belong to the caller.
 *
 * It is written here rather than taken from a library because none of the
 * project's dependencies has one (libuv has none; GLib's would be a new
 * dependency for some sixty lines), and the chain links live in the
 * entries themselves, so inserting and removing allocate nothing but the
 * bucket array. */
#include "htab.h"

#include <string.h>

#include "common.h"

/* The bucket index is taken from the mixed hash, so that hashes whose low
 * bits are alike (sequential statement ids, a test's colliding hash
 * function) still spread over the buckets. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static size_t bucket_of(const htab *t, uint64_t hash)
{
    return (size_t)(mix64(hash) & (t->n_buckets - 1));
}

void htab_init(htab *t, size_t n_buckets)
{
    t->buckets = pgs_xcalloc(n_buckets, sizeof(*t->buckets));
    t->n_buckets = n_buckets;
    t->count = 0;
}

htab_node *htab_first(const htab *t, uint64_t hash)
{
    return t->n_buckets ? t->buckets[bucket_of(t, hash)] : NULL;
}

static void grow(htab *t)
{
    htab old = *t;
    htab_init(t, old.n_buckets ? old.n_buckets * 2 : HTAB_DEFAULT_BUCKETS);
    t->count = old.count;
    for (size_t i = 0; i < old.n_buckets; i++) {
        htab_node *n = old.buckets[i];
        while (n) {
            htab_node *next = n->next;
            htab_node **b = &t->buckets[bucket_of(t, n->hash)];
            n->next = *b;
            *b = n;
            n = next;
        }
    }
    free(old.buckets);
}

void htab_insert(htab *t, htab_node *n)
{
    if (t->count >= t->n_buckets) grow(t);
    htab_node **b = &t->buckets[bucket_of(t, n->hash)];
    n->next = *b;
    *b = n;
    t->count++;
}

bool htab_remove(htab *t, htab_node *n)
{
    if (!t->n_buckets) return false;
    htab_node **pp = &t->buckets[bucket_of(t, n->hash)];
    while (*pp && *pp != n) pp = &(*pp)->next;
    if (!*pp) return false;
    *pp = n->next;
    n->next = NULL;
    t->count--;
    return true;
}

htab_node *htab_next(const htab *t, const htab_node *n)
{
    if (n && n->next) return n->next;
    for (size_t i = n ? bucket_of(t, n->hash) + 1 : 0; i < t->n_buckets; i++)
        if (t->buckets[i]) return t->buckets[i];
    return NULL;
}

void htab_free(htab *t)
{
    free(t->buckets);
    memset(t, 0, sizeof(*t));
}
