/* The table that finds a pool's shared part by (node, user, database).  No I/O,
 * no locking: the caller holds g_pgs.pools_lock. */
#ifndef PGS_POOLTAB_H
#define PGS_POOLTAB_H

#include "types.h"

/* Chains through pgs_pool_shared.hnode; a zeroed table is empty. */
typedef htab pgs_pooltab;

/* node: the index of the PostgreSQL node (topology.h) the pool connects to. */
uint64_t pooltab_hash(int node, const char *user, const char *database);
pgs_pool_shared *pooltab_find(const pgs_pooltab *t, int node, const char *user,
                              const char *database);
/* sh->node_index, sh->user, sh->database and sh->hnode.hash must be set;
 * sh must not be in t. */
static inline void pooltab_insert(pgs_pooltab *t, pgs_pool_shared *sh)
{
    htab_insert(t, &sh->hnode);
}
/* No effect when sh is not in t. */
static inline void pooltab_remove(pgs_pooltab *t, pgs_pool_shared *sh)
{
    htab_remove(t, &sh->hnode);
}
static inline void pooltab_free(pgs_pooltab *t)
{
    htab_free(t);
}

#endif
