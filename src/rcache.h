/* The relay's side of the result cache: which requests of a client are
 * answered from the store, filled into it or parked on another client's
 * fill, and which units' writes bump table versions at the end of their
 * transaction.  The store (cache.h), the versions (tablever.h), the
 * relation catalog (relcat.h) and the admission rules (cacherule.h) are
 * modules of their own; this one decides when the relay calls them.
 * docs/cache.md says what it guarantees. */
#ifndef PGS_RCACHE_H
#define PGS_RCACHE_H

#include "types.h"

/* The cache is on in the configuration snapshot in effect. */
bool rcache_enabled(void);

/* What rcache_serve left to the caller. */
enum {
    RCACHE_GO = 0, /* what is left in the buffer (maybe nothing) goes the usual way */
    RCACHE_WAIT,   /* c waits (for another client's fill, or to drain its output):
                    * leave its buffer alone, it resumes by itself */
    RCACHE_CLOSED, /* c was closed */
    RCACHE_SYNC,   /* c's server is held: see rcache_serve */
};

/* c has no server and requests in its buffer: answers the requests at
 * its head that are hits (a simple Query, or an extended-protocol unit up
 * to its Sync), without a server; a miss starts the fill that the
 * request, once sent, feeds.
 *
 * Or c holds its server inside an implicit transaction that owes c
 * nothing and saw no error (a driver prepared with Parse, Describe and
 * Flush, no Sync: asyncpg): the extended-protocol unit at the head of its
 * buffer is looked up.  A hit is answered and RCACHE_SYNC returned: the
 * caller ends the server's implicit transaction with a Sync whose reply
 * is its own.  A miss starts a fill as above; a pending fill is not waited
 * for (the server is held). */
int rcache_serve(pgs_client *c);

/* client_forward handled message `type` for sv (have of its total bytes
 * at p; forwarded: it went to the server, not answered by pgscale; alone:
 * nothing was owed to c before it): notes what it may write, and attaches
 * or drops c's fill. */
void rcache_forward(pgs_client *c, pgs_server *sv, uint8_t type, const uint8_t *p,
                    uint32_t have, uint32_t total, bool forwarded, bool alone);

/* Bytes of the server's answer relayed to c while c->cfill is set; start:
 * they begin a message of type `type`. */
void rcache_tap(pgs_client *c, uint8_t type, const uint8_t *p, uint32_t n, bool start);

/* A ReadyForQuery with `status` answers c's own Query or Sync, before it
 * is relayed: the fill ends; at the end of a transaction its writes are
 * bumped.  may_hold: the relay can hold that ReadyForQuery back (no reply
 * pgscale makes up itself is due right after it).  True when it must not
 * be relayed yet (the Redis tier has the bumps in flight): rcache calls
 * relay_ready_release(c, status) when it may go; meanwhile
 * rcache_holding(c) is true, and what c sends and what the server sends c
 * after it wait. */
bool rcache_ready(pgs_client *c, char status, bool may_hold);
bool rcache_holding(const pgs_client *c);

/* c's unit on its server ended without its ReadyForQuery (the server was
 * lost or sent a FATAL, the read is retried): the fill is dropped and the
 * transaction's writes are bumped (they may have committed). */
void rcache_unlinked(pgs_client *c);

/* c set something that changes its answers and that pgscale does not
 * follow (a SET inside a transaction block, a set_config it cannot read):
 * nothing is cached for c any more. */
void rcache_untracked(pgs_client *c);

/* c is closing. */
void rcache_client_gone(pgs_client *c);

/* The worker handled a new configuration snapshot (RELOAD): limits to its
 * store, or the store emptied when the cache went off. */
void rcache_worker_config(pgs_worker *w);
/* At start (before the worker's loop runs): the store, and the Redis
 * tier's connections, made now rather than at the first request. */
void rcache_worker_start(pgs_worker *w);
/* The loop is stopping, its clients closed: the Redis tier's connections
 * close. */
void rcache_worker_stop(pgs_worker *w);
/* At exit, once no client is left. */
void rcache_worker_free(pgs_worker *w);

/* SHOW CACHE: the workers' counters summed. */
typedef struct rcache_totals {
    uint64_t hits, misses, entries, bytes, max_bytes, evictions, invalidations, expired;
    uint64_t fills, stored, refused_too_big, refused_lag, refused_no_room;
    uint64_t waits, wait_timeouts, bumps, bumps_all;
    /* the Redis tier: workers with it on, and of them those up */
    uint64_t redis_workers, redis_up;
    uint64_t redis_errors, redis_timeouts, redis_checks, redis_hits;
} rcache_totals;
void rcache_totals_get(rcache_totals *out);

/* SHOW CACHE's rows per rule: the counters of the statements one class
 * admitted, every worker summed.  Class RCACHE_CLASS_DEFAULT: cached for
 * cache.ttl with no rules; RCACHE_CLASS_HINT: by a pgscale:cache hint;
 * RCACHE_CLASS_RULE0 + i: by cache.rules[i] (the rules from index
 * RCACHE_CLASSES - 1 - RCACHE_CLASS_RULE0 on share the last class).  A
 * RELOAD that changes the rules empties the cache and restarts these. */
enum { RCACHE_CLASS_DEFAULT = 0, RCACHE_CLASS_HINT = 1, RCACHE_CLASS_RULE0 = 2,
       RCACHE_CLASSES = 64 };
typedef struct rcache_class_totals {
    uint64_t hits, misses, entries, bytes, evictions, invalidations, expired;
    uint64_t stored, refused_too_big, refused_no_room, refused_lag;
} rcache_class_totals;
void rcache_class_totals_get(unsigned cls, rcache_class_totals *out);

#endif
