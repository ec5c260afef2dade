/* The result cache's Redis tier (docs/cache.md, "Several instances"): per
 * worker, a non-blocking hiredis connection on the worker's loop that
 * shares table versions, the epoch and answers between pgscale instances,
 * and (worker 0) a subscriber that turns other instances' writes into
 * local version bumps.  rcache.c decides when to call it; this module owns
 * the connections, their state, the keys and the wire format, and bounds
 * every request by cache.redis_timeout.
 *
 * Keys (ids are tablever ids: a hash of the bare, lower-cased table name,
 * the same in every instance):
 *   pgscale:v:<16 hex id>   a table's shared version (INCR)
 *   pgscale:epoch           the shared epoch (INCR)
 *   pgscale:e:<32 hex>      a shared entry, by the key's 128-bit hash
 *   pgscale:inval           the channel writes are published on */
#ifndef PGS_RCACHE_REDIS_H
#define PGS_RCACHE_REDIS_H

#include "cache.h"
#include "relcat.h"
#include "types.h"

typedef struct rredis rredis;

/* The tier for worker w when the configuration asks for it (cache on,
 * REDIS_URL set, cache.redis not off), connecting at once; else NULL.
 * Called before the worker's loop runs. */
rredis *rredis_start(pgs_worker *w, const pgs_config *k);
/* The loop is stopping: connections and timers close; requests still
 * pending end with RREDIS_DOWN. */
void rredis_stop(rredis *r);
/* After the loop has run its close callbacks. */
void rredis_free(rredis *r);

/* Connected and answering: only then may hits be served or fills stored. */
bool rredis_up(const rredis *r);

enum {
    RREDIS_OK = 0,
    RREDIS_DOWN = -1,    /* not sent (the tier is down) or the connection was lost */
    RREDIS_TIMEOUT = -2, /* no answer within cache.redis_timeout: the tier went down */
};

/* One request whose answer someone waits for.  Made by the calls below,
 * freed by this module after cb ran (or at once when the waiter has left:
 * rredis_cancel). */
typedef struct rredis_req rredis_req;
typedef void (*rredis_cb)(rredis_req *q, int status, void *arg);
struct rredis_req {
    rredis_req *next;
    rredis *r;
    rredis_cb cb;          /* NULL once cancelled */
    void *arg;
    uint64_t deadline_us;
    /* results, valid during cb with status RREDIS_OK */
    unsigned n;                          /* ids asked */
    uint64_t ids[RELCAT_IDS_MAX];
    uint64_t vers[RELCAT_IDS_MAX + 1];   /* their Redis versions, then the epoch */
    const uint8_t *raw;                  /* rredis_lookup: the shared entry as stored */
    size_t raw_len;                      /* (NULL: none); see rredis_entry_answer */
    bool ping;                           /* this module's keepalive */
};

/* The writer's bump: INCR each id's version (or the epoch when all), and
 * PUBLISH them, in one MULTI/EXEC.  With cb, the request is returned and
 * cb runs once Redis acknowledged (or failed, or timed out); without cb it
 * is fire-and-forget.  NULL when nothing was sent (down): the bump is
 * remembered and the epoch bumped in Redis at the next connect. */
rredis_req *rredis_bump(rredis *r, const uint64_t *ids, size_t n, bool all, rredis_cb cb,
                        void *arg);

/* A hit's check: the current Redis versions of ids and the epoch (MGET).
 * NULL when down. */
rredis_req *rredis_check(rredis *r, const uint64_t *ids, size_t n, rredis_cb cb, void *arg);

/* A miss: the shared entry of key and the current versions, in one MGET.
 * cb gets the versions and the entry as stored (q->raw).  NULL when down. */
rredis_req *rredis_lookup(rredis *r, const pgs_cache_key *key, const uint64_t *ids, size_t n,
                          rredis_cb cb, void *arg);

/* In a lookup's cb: the shared entry's answer when the entry is there,
 * made from the same key material, over the same ids, under exactly the
 * versions Redis has now (q->vers), and not expired (*ttl_ms: what is
 * left of its TTL); else NULL. */
const uint8_t *rredis_entry_answer(const rredis_req *q, const uint8_t *material,
                                   size_t material_len, size_t *answer_len, uint64_t *ttl_ms);

/* A shared entry's value as stored under pgscale:e:<hash> (what
 * rredis_store sends and rredis_entry_answer reads): rredis_entry_size
 * bytes at out; expires_ms is wall-clock milliseconds. */
size_t rredis_entry_size(size_t n, size_t material_len, size_t answer_len);
void rredis_entry_encode(uint8_t *out, uint64_t expires_ms, const uint8_t *material,
                         size_t material_len, const uint64_t *ids, const uint64_t *vers, size_t n,
                         const uint8_t *answer, size_t answer_len);

/* Stores an entry filled here (fire-and-forget SET ... PX ttl_ms):
 * material, ids, the Redis versions snapshot vers[n + 1], the answer. */
void rredis_store(rredis *r, uint64_t key_lo, uint64_t key_hi, const uint8_t *material,
                  size_t material_len, const uint64_t *ids, const uint64_t *vers, size_t n,
                  const uint8_t *answer, size_t answer_len, uint64_t ttl_ms);

/* The waiter left: cb will not run. */
void rredis_cancel(rredis_req *q);

/* SHOW CACHE, read from another thread. */
typedef struct rredis_stats {
    bool up;
    uint64_t errors, timeouts, checks, hits;
} rredis_stats;
void rredis_stats_get(const rredis *r, rredis_stats *out);
/* Counted by rcache.c: a check made, a hit served from a shared entry. */
void rredis_count_check(rredis *r);
void rredis_count_hit(rredis *r);

#endif
