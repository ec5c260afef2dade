/* An intrusive chained hash table: the entries embed an htab_node and the
 * table only links them; hashing, keys, equality and ownership stay with
 * the caller.  No I/O, no locking. */
#ifndef PGS_HTAB_H
#define PGS_HTAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct htab_node {
    struct htab_node *next; /* the bucket's chain */
    uint64_t hash;          /* set by the caller before htab_insert */
} htab_node;

/* A zeroed htab is empty and valid; its first insert allocates
 * HTAB_DEFAULT_BUCKETS buckets (htab_init chooses another start). */
typedef struct htab {
    htab_node **buckets;
    size_t n_buckets; /* a power of two, or 0 before the first insert */
    size_t count;
} htab;

#define HTAB_DEFAULT_BUCKETS 64

/* The entry that embeds node `ptr` as `member`. */
#define htab_entry(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* An empty table of n_buckets (a power of two) buckets. */
void htab_init(htab *t, size_t n_buckets);
/* The first node of the bucket where `hash` would be (NULL: none).  The
 * caller follows ->next, skipping nodes whose hash differs, and applies
 * its own equality test: equal hashes are not equal keys. */
htab_node *htab_first(const htab *t, uint64_t hash);
/* n->hash must be set and n must not be in t.  Doubles the buckets when
 * the entries would outnumber them. */
void htab_insert(htab *t, htab_node *n);
/* Takes n out of t; false (and no change) when n is not in t. */
bool htab_remove(htab *t, htab_node *n);
/* Every entry, in no particular order: htab_next(t, NULL) is the first,
 * NULL follows the last.  To remove entries while walking, fetch the next
 * node before removing the current one. */
htab_node *htab_next(const htab *t, const htab_node *n);
/* Frees the bucket array (not the entries) and leaves t zeroed. */
void htab_free(htab *t);

#endif
