/* Prepared statements in transaction mode.  A client's named statements
 * (its "S_1") are kept per client; on the server each distinct statement
 * (query text + parameter types) has one name derived from its hash, so
 * two clients' S_1 never collide and clients preparing the same text share
 * one server-side statement.  Each server remembers which statements it
 * has, bounded by max_prepared_statements with least-recently-used
 * eviction. */
#ifndef PGS_PREPARED_H
#define PGS_PREPARED_H

#include "types.h"

#define STMT_SRV_NAME_LEN 21 /* "pgs_" + 16 hex + NUL */

struct pgs_stmt {
    uint64_t hash;
    char srv_name[STMT_SRV_NAME_LEN];
    uint32_t body_len;
    uint8_t *body;   /* Parse body after the name: query\0 int16 n, n x int32 */
};

/* Hash of a Parse body (after the statement name). */
uint64_t stmt_hash(const uint8_t *body, uint32_t len);
void stmt_srv_name(uint64_t hash, char out[STMT_SRV_NAME_LEN]);

/* Client side: name -> statement. */
pgs_stmt *stmt_map_get(pgs_stmt_map *m, const char *name, size_t name_len);
pgs_stmt *stmt_map_put(pgs_stmt_map **m, const char *name, size_t name_len,
                       const uint8_t *body, uint32_t body_len);
void stmt_map_del(pgs_stmt_map *m, const char *name, size_t name_len);
void stmt_map_del_hash(pgs_stmt_map *m, uint64_t hash);
void stmt_map_clear(pgs_stmt_map *m);
void stmt_map_free(pgs_stmt_map *m);
int stmt_map_count(const pgs_stmt_map *m);

/* Server side: which statement hashes are prepared. */
bool stmt_set_has(pgs_stmt_set *s, uint64_t hash);
/* Adds hash; when the set is at max, evicts the least recently used and
 * returns true with *evicted set (the caller closes it on the server). */
bool stmt_set_add(pgs_stmt_set **s, uint64_t hash, int max, uint64_t *evicted);
void stmt_set_del(pgs_stmt_set *s, uint64_t hash);
void stmt_set_clear(pgs_stmt_set *s);
int stmt_set_count(const pgs_stmt_set *s);
void stmt_set_free(pgs_stmt_set *s);

#endif
