/* Pool lookup by (node, user, database) in O(1) on average: the key's hash and
 * equality test over the shared hash table (htab.c), whose links live in
 * the pool itself. */
#include "pooltab.h"

#include <string.h>

uint64_t pooltab_hash(int node, const char *user, const char *database)
{
    /* 64-bit FNV-1a over the node's index, then "user\0database" */
    uint64_t h = 1469598103934665603ULL;
    h = (h ^ (uint8_t)node) * 1099511628211ULL;
    for (const unsigned char *s = (const unsigned char *)user; *s; s++)
        h = (h ^ *s) * 1099511628211ULL;
    h = (h ^ 0u) * 1099511628211ULL;
    for (const unsigned char *s = (const unsigned char *)database; *s; s++)
        h = (h ^ *s) * 1099511628211ULL;
    return h;
}

pgs_pool_shared *pooltab_find(const pgs_pooltab *t, int node, const char *user,
                              const char *database)
{
    uint64_t h = pooltab_hash(node, user, database);
    for (htab_node *n = htab_first(t, h); n; n = n->next) {
        pgs_pool_shared *sh = htab_entry(n, pgs_pool_shared, hnode);
        if (n->hash == h && sh->node_index == node && strcmp(sh->user, user) == 0 && strcmp(sh->database, database) == 0)
            return sh;
    }
    return NULL;
}
