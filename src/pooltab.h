/* The table that finds a pool's shared part by (user, database).  No I/O,
 * no locking: the caller holds g_pgs.pools_lock. */
#ifndef PGS_POOLTAB_H
#define PGS_POOLTAB_H

#include "types.h"

typedef struct pgs_pooltab {
    pgs_pool_shared **buckets;  /* chains through pgs_pool_shared.hnext */
    size_t n_buckets;           /* a power of two, or 0 before the first insert */
    size_t count;
} pgs_pooltab;

uint64_t pooltab_hash(const char *user, const char *database);
pgs_pool_shared *pooltab_find(const pgs_pooltab *t, const char *user, const char *database);
/* sh->user, sh->database and sh->hash must be set; sh must not be in t. */
void pooltab_insert(pgs_pooltab *t, pgs_pool_shared *sh);
/* sh must be in t. */
void pooltab_remove(pgs_pooltab *t, pgs_pool_shared *sh);
void pooltab_free(pgs_pooltab *t);

#endif
