/* Prepared statements in transaction mode.  A client's named statements
 * (its "S_1") are kept per client; on the server each distinct statement
 * body (query text + parameter types) has one name derived from a unique
 * id, so two clients' S_1 never collide and clients preparing the same
 * text share one server-side statement.
 *
 * Identity is the full body, never its hash alone: each worker interns the
 * bodies its clients prepared in a table (the hash is only the index, and
 * two bodies with the same hash are two entries with two ids).  An id is
 * handed out once for the life of the process (across all workers) and
 * never reused, so a server connection that remembers an id -- even after
 * the body was freed or the server moved to another worker -- can never
 * run one text under another's name.  Each server remembers which ids it
 * has prepared, bounded by max_prepared_statements with least-recently-used
 * eviction.  Each client's statements are bounded in number and bytes. */
#ifndef PGS_PREPARED_H
#define PGS_PREPARED_H

#include "types.h"

#define STMT_SRV_NAME_LEN 21 /* "pgs_" + 16 hex + NUL */

typedef struct pgs_stmt_tab pgs_stmt_tab;
typedef uint64_t (*stmt_hash_fn)(const uint8_t *body, uint32_t len);

/* What pgscale does with a statement instead of preparing it on a server. */
enum stmt_local {
    STMT_SERVER = 0,        /* an ordinary statement: prepared on the server */
    STMT_DEALLOCATE,        /* DEALLOCATE [PREPARE] name: answered by pgscale */
    STMT_DEALLOCATE_ALL,    /* DEALLOCATE [PREPARE] ALL: answered by pgscale */
    STMT_DISCARD_ALL,       /* DISCARD ALL: answered by pgscale */
};

/* One interned statement body.  Shared by every client (and name) of one
 * worker that prepared the same body; freed with its last reference. */
struct pgs_stmt {
    htab_node hnode;                  /* the interning table's; hash: index only */
    uint64_t id;                      /* unique, never reused */
    char srv_name[STMT_SRV_NAME_LEN]; /* "pgs_" + id */
    uint8_t local;                    /* enum stmt_local */
    uint8_t state;                    /* SQLSCAN_STATE_* its text creates (pinning) */
    uint8_t seq;                      /* SQLSCAN_SEQ_* (sequence state it uses) */
    uint32_t refs;
    uint32_t body_len;
    uint8_t *body;   /* Parse body after the name: query\0 int16 n, n x int32 */
};

/* Default hash of a Parse body (never 0). */
uint64_t stmt_hash(const uint8_t *body, uint32_t len);
void stmt_srv_name(uint64_t id, char out[STMT_SRV_NAME_LEN]);
/* How a statement text is answered (enum stmt_local); `name` (may be NULL,
 * SQLSCAN_NAME_MAX bytes) receives DEALLOCATE's statement name. */
int stmt_local_kind(const uint8_t *body, uint32_t len, char *name);

/* The interning table (one per worker).  hash NULL: stmt_hash; tests pass
 * a colliding one. */
pgs_stmt_tab *stmt_tab_new(stmt_hash_fn hash);
void stmt_tab_free(pgs_stmt_tab *t);
/* The entry for this body, created if new; takes a reference. */
pgs_stmt *stmt_intern(pgs_stmt_tab *t, const uint8_t *body, uint32_t len);
void stmt_unref(pgs_stmt_tab *t, pgs_stmt *st);
uint32_t stmt_tab_count(const pgs_stmt_tab *t);

/* Client side: name -> statement, O(1) by name.  stmt_map_put returns 0,
 * or STMT_LIMIT_COUNT / STMT_LIMIT_BYTES when the client would pass
 * max_count statements or max_bytes bytes (names + bodies; 0 = no bound);
 * then nothing changes.  Replacing a name counts the difference. */
#define STMT_LIMIT_COUNT (-1)
#define STMT_LIMIT_BYTES (-2)
pgs_stmt *stmt_map_get(pgs_stmt_map *m, const char *name, size_t name_len);
PGS_MUSTCHECK int stmt_map_put(pgs_stmt_map **m, pgs_stmt_tab *t, const char *name,
                               size_t name_len, const uint8_t *body, uint32_t body_len,
                               uint32_t max_count, uint64_t max_bytes, pgs_stmt **out);
void stmt_map_del(pgs_stmt_map *m, const char *name, size_t name_len);
void stmt_map_del_id(pgs_stmt_map *m, uint64_t id);
/* A name of this client's under which statement `id` is known (NULL: none). */
const char *stmt_map_name_of(const pgs_stmt_map *m, uint64_t id);
void stmt_map_clear(pgs_stmt_map *m);
void stmt_map_free(pgs_stmt_map *m);
int stmt_map_count(const pgs_stmt_map *m);
uint64_t stmt_map_bytes(const pgs_stmt_map *m);

/* A client's statements and portals that pgscale answers itself (those
 * whose local kind is not STMT_SERVER): the unnamed statement when it is
 * one, and the portals bound to one.  Each holds a reference. */
struct pgs_local_ext;
pgs_stmt *stmt_local_unnamed(const struct pgs_local_ext *lx);
/* st: a new reference, or NULL to forget the unnamed statement. */
void stmt_local_set_unnamed(struct pgs_local_ext **lx, pgs_stmt_tab *t, pgs_stmt *st);
pgs_stmt *stmt_local_portal(const struct pgs_local_ext *lx, const char *name, size_t len);
/* Binds portal `name` to st (a new reference). */
void stmt_local_bind(struct pgs_local_ext **lx, pgs_stmt_tab *t, const char *name, size_t len,
                     pgs_stmt *st);
void stmt_local_unbind(struct pgs_local_ext *lx, const char *name, size_t len);
void stmt_local_unbind_all(struct pgs_local_ext *lx);
bool stmt_local_any_portal(const struct pgs_local_ext *lx);
void stmt_local_free(struct pgs_local_ext *lx);

/* Server side: which statement ids are prepared. */
bool stmt_set_has(pgs_stmt_set *s, uint64_t id);
/* Adds id; when the set is at max, evicts the least recently used and
 * returns true with *evicted set (the caller closes it on the server). */
bool stmt_set_add(pgs_stmt_set **s, uint64_t id, int max, uint64_t *evicted);
void stmt_set_del(pgs_stmt_set *s, uint64_t id);
void stmt_set_clear(pgs_stmt_set *s);
int stmt_set_count(const pgs_stmt_set *s);
void stmt_set_free(pgs_stmt_set *s);

#endif
