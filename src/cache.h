/* The result cache's in-process store: one per worker, used only by the
 * thread that created it (no locks).  Entries are answers as protocol
 * messages (RowDescription, DataRow..., CommandComplete; no
 * ReadyForQuery), keyed by a 128-bit hash AND the full key material, which
 * a hit compares byte for byte: the hash only finds the candidate, it never
 * decides that two keys are the same.
 *
 * A caller's life cycle:
 *
 *   cache_key_reset(&kb); cache_key_part(&kb, tag, ...)...;
 *   cache_key_finish(&kb, &key)
 *   switch (cache_lookup(store, &key, now, &res)):
 *     PGS_CACHE_HIT:     write cache_entry_answer(res.entry) out, then
 *                        cache_entry_release(store, res.entry)
 *     PGS_CACHE_PENDING: cache_wait(res.fill, &waiter) and arm a timer;
 *                        on timeout cache_unwait(&waiter) and go to the
 *                        database
 *     PGS_CACHE_MISS:    tablever_snapshot(ids, n, vers, &epoch);
 *                        cache_fill_begin(store, &key, ids, vers, n, epoch,
 *                                         ttl, now, &fill);
 *                        send the query; cache_fill_append(fill, ...) per
 *                        message (stop copying on PGS_CACHE_E_TOO_BIG);
 *                        cache_fill_commit(fill, now) or
 *                        cache_fill_abort(fill).
 */
#ifndef PGS_CACHE_H
#define PGS_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "tablever.h"

/* ---- Key ---------------------------------------------------------------- */

/* Tags of the key's parts.  Each part is written as tag (1 byte), length
 * (4 bytes, little-endian; 0xffffffff for NULL) and the bytes, so that no
 * two different sequences of parts give the same material ("ab"+"c" is not
 * "a"+"bc", and a NULL parameter is not an empty one). */
enum pgs_cache_tag {
    PGS_CKEY_DATABASE = 1,
    PGS_CKEY_USER,
    PGS_CKEY_SETTINGS,      /* canonical session settings that change output */
    PGS_CKEY_TEXT,          /* statement text */
    PGS_CKEY_PARAM_FORMATS, /* Bind's parameter format codes */
    PGS_CKEY_PARAM,         /* one parameter value (or NULL) */
    PGS_CKEY_RESULT_FORMATS,
    PGS_CKEY_PROTOCOL,      /* simple vs extended, Describe wanted ... */
    PGS_CKEY_PARAM_TYPES,   /* a Parse's parameter type OIDs (int16 n, n x int32) */
};

#define PGS_CACHE_KEY_NULL_LEN 0xffffffffu

typedef struct pgs_cache_key {
    uint64_t lo, hi;         /* XXH3-128 of the material */
    const uint8_t *material; /* owned by the builder that finished it */
    size_t len;
    /* The class the caller counts this key's lookups and entry under
     * (SHOW CACHE's rows per rule): < PGS_CACHE_CLASSES, 0 after
     * cache_key_finish; not part of the key. */
    uint8_t cls;
} pgs_cache_key;

/* Classes counted apart (cache_class_stats); the caller decides what they
 * mean (the result cache: the default, hints, each rule). */
#define PGS_CACHE_CLASSES 64

/* Reused from one statement to the next: its buffer grows geometrically up
 * to max_len and then stays, so building a key allocates nothing in the
 * steady state. */
typedef struct pgs_cache_key_builder {
    uint8_t *buf;
    size_t len, cap, max_len;
    bool too_long;
} pgs_cache_key_builder;

void cache_key_init(pgs_cache_key_builder *kb, size_t max_len);
void cache_key_free(pgs_cache_key_builder *kb);
void cache_key_reset(pgs_cache_key_builder *kb);
/* Appends one part; data may be NULL only when len is 0. */
void cache_key_part(pgs_cache_key_builder *kb, uint8_t tag, const void *data, size_t len);
/* Appends a NULL part (a NULL parameter). */
void cache_key_null(pgs_cache_key_builder *kb, uint8_t tag);
/* The key over what was appended since the reset: 0, or
 * PGS_CACHE_E_TOO_BIG when the material passed max_len (do not cache). */
PGS_MUSTCHECK int cache_key_finish(pgs_cache_key_builder *kb, pgs_cache_key *out);

/* The key of material already built (a stored entry's, a fill's). */
void cache_key_of_material(const uint8_t *material, size_t len, pgs_cache_key *out);

/* ---- Store -------------------------------------------------------------- */

#define PGS_CACHE_E_TOO_BIG (-7)  /* -E2BIG */
#define PGS_CACHE_E_EXISTS (-17)  /* -EEXIST: a fill for that key is pending */
#define PGS_CACHE_E_STALE (-116)  /* -ESTALE: a table moved during the fill */
#define PGS_CACHE_E_NO_ROOM (-12) /* -ENOMEM: pinned entries hold the room */

typedef struct pgs_cache pgs_cache;
typedef struct pgs_cache_entry pgs_cache_entry;
typedef struct pgs_cache_fill pgs_cache_fill;

/* What one entry costs against the store's bound: its single allocation
 * (header, dependencies, key material, answer) plus the allocator's own
 * header.  Exposed so that tests and SHOW CACHE speak the same bytes. */
size_t cache_entry_cost(size_t key_len, size_t n_deps, size_t answer_len);

/* max_bytes bounds the sum of cache_entry_cost over all entries held
 * (pinned evicted ones included until released); max_entry_bytes bounds
 * one entry's cost (bigger answers are refused while they are copied). */
pgs_cache *cache_new(size_t max_bytes, size_t max_entry_bytes);
/* Every fill must have ended and every entry been released. */
void cache_free(pgs_cache *c);
/* Changes the bounds (RELOAD); evicts at once down to the new max_bytes. */
void cache_set_limits(pgs_cache *c, size_t max_bytes, size_t max_entry_bytes);
/* Drops every entry (RELOAD, admin).  Pending fills go on: their answers
 * were snapshot under the same versions rules as any other. */
void cache_clear(pgs_cache *c);

enum pgs_cache_result { PGS_CACHE_MISS = 0, PGS_CACHE_HIT, PGS_CACHE_PENDING };

typedef struct pgs_cache_lookup_result {
    pgs_cache_entry *entry; /* HIT: pinned, release it after writing it out */
    pgs_cache_fill *fill;   /* PENDING: the fill to wait on */
} pgs_cache_lookup_result;

/* Looks key up at time now_us.  An entry past its TTL, or whose table
 * versions moved (tablever_valid), is dropped on the spot and the lookup
 * is a miss.  A hit pins the entry: its bytes stay valid, even if it is
 * evicted or cleared meanwhile, until cache_entry_release. */
enum pgs_cache_result cache_lookup(pgs_cache *c, const pgs_cache_key *key, uint64_t now_us,
                                   pgs_cache_lookup_result *out);

const uint8_t *cache_entry_answer(const pgs_cache_entry *e, size_t *len);
void cache_entry_release(pgs_cache *c, pgs_cache_entry *e);
/* The table ids the entry depends on (n of them). */
const uint64_t *cache_entry_deps(const pgs_cache_entry *e, size_t *n);
/* The caller's own words kept with the entry (cache_fill_begin_aux). */
const uint64_t *cache_entry_aux(const pgs_cache_entry *e, size_t *n);
/* When the entry's TTL ends (microseconds, the clock of now_us). */
uint64_t cache_entry_expires(const pgs_cache_entry *e);
/* Takes a pinned entry out of the store (found stale by a check the
 * store does not make itself: the Redis tier's versions); counted as an
 * invalidation.  The pin still has to be released. */
void cache_entry_drop(pgs_cache *c, pgs_cache_entry *e);

/* Starts filling key's answer.  ids/versions/epoch are the snapshot taken
 * (tablever_snapshot) before the query was sent; they are copied.  The
 * fill is visible at once: lookups of key report PENDING until it ends.
 * PGS_CACHE_E_EXISTS when a fill of key is pending (wait on it instead),
 * PGS_CACHE_E_TOO_BIG when the key and dependencies alone exceed
 * max_entry_bytes. */
PGS_MUSTCHECK int cache_fill_begin(pgs_cache *c, const pgs_cache_key *key,
                                   const pgs_table_id *ids, const uint64_t *versions,
                                   size_t n_deps, uint64_t epoch, uint64_t ttl_us,
                                   uint64_t now_us, pgs_cache_fill **out);
/* The same, keeping n_aux more 64-bit words with the entry, zeroed at
 * first: the caller writes them through cache_fill_aux before the commit
 * and reads them back with cache_entry_aux (the Redis tier keeps the
 * Redis versions of the snapshot there). */
PGS_MUSTCHECK int cache_fill_begin_aux(pgs_cache *c, const pgs_cache_key *key,
                                       const pgs_table_id *ids, const uint64_t *versions,
                                       size_t n_deps, uint64_t epoch, size_t n_aux,
                                       uint64_t ttl_us, uint64_t now_us, pgs_cache_fill **out);
/* A pending fill's aux words (NULL once refused), key material and answer
 * so far, and when its TTL ends (0 once refused). */
uint64_t *cache_fill_aux(pgs_cache_fill *f, size_t *n);
const uint8_t *cache_fill_key(const pgs_cache_fill *f, size_t *len);
const uint8_t *cache_fill_answer(const pgs_cache_fill *f, size_t *len);
const uint64_t *cache_fill_deps(const pgs_cache_fill *f, size_t *n);
uint64_t cache_fill_expires(const pgs_cache_fill *f);
/* Brings the fill's expiry forward to expires_us (never later). */
void cache_fill_cap_expiry(pgs_cache_fill *f, uint64_t expires_us);
/* Appends answer bytes.  The buffer grows geometrically (no reallocation
 * per message).  PGS_CACHE_E_TOO_BIG once the entry would pass
 * max_entry_bytes: the fill is refused there and then (its buffer freed,
 * its waiters released, lookups miss), every later append returns the
 * same at no cost, and the caller stops copying and ends the fill with
 * commit or abort, which frees the handle. */
PGS_MUSTCHECK int cache_fill_append(pgs_cache_fill *f, const void *data, size_t len);
/* Stores the answer (evicting as needed) and serves the waiters, each with
 * the entry pinned.  When a dependency moved since the snapshot the answer
 * may predate a write a waiter has seen acknowledged: nothing is stored,
 * the waiters are released and PGS_CACHE_E_STALE is returned.  Other
 * failures (TOO_BIG, NO_ROOM) release the waiters too.  Frees f. */
int cache_fill_commit(pgs_cache_fill *f, uint64_t now_us);
/* Drops the fill (the query failed, the server went away): the waiters are
 * released.  Frees f. */
void cache_fill_abort(pgs_cache_fill *f);

/* A client parked on a pending fill.  The caller owns the struct (no
 * allocation); cb runs once, from commit or abort, with the entry pinned
 * (release it) or NULL (go to the database).  The waiter is off the list
 * when cb runs: cb may call into the store. */
typedef struct pgs_cache_waiter pgs_cache_waiter;
struct pgs_cache_waiter {
    pgs_cache_waiter *prev, *next;
    void (*cb)(pgs_cache_waiter *w, pgs_cache_entry *e);
    void *data;
};
void cache_wait(pgs_cache_fill *f, pgs_cache_waiter *w);
/* Takes w off its fill's list (its timer fired, its client left); no-op
 * when it is on none. */
void cache_unwait(pgs_cache_waiter *w);

typedef struct pgs_cache_stats {
    uint64_t hits, misses, pending; /* pending: lookups that found a fill */
    uint64_t entries, bytes, max_bytes;
    uint64_t evictions;     /* entries dropped to make room */
    uint64_t invalidations; /* entries found stale (tables moved) on lookup or commit */
    uint64_t expired;       /* entries found past their TTL */
    uint64_t fills;         /* fills begun */
    uint64_t stored;        /* fills stored */
    uint64_t refused;       /* fills refused: answer above max_entry_bytes */
    uint64_t no_room;       /* fills refused: pinned entries held the room */
    uint64_t fills_pending; /* now */
} pgs_cache_stats;

void cache_stats(const pgs_cache *c, pgs_cache_stats *out);

/* The same counters for the lookups and entries of one class (key.cls):
 * hits, misses, entries, bytes, evictions, invalidations, expired, stored
 * and refused (too big, no room) are kept per class; pending, fills,
 * max_bytes and fills_pending are 0 here. */
void cache_class_stats(const pgs_cache *c, unsigned cls, pgs_cache_stats *out);
/* Marks class cls as moved (its caller counts something of its own
 * under it). */
void cache_class_note(pgs_cache *c, unsigned cls);
/* The classes whose counters moved since the last call (bit k: class k). */
uint64_t cache_class_dirty(pgs_cache *c);
/* Zeroes the per-class counters (their meaning changed: rules reloaded). */
void cache_class_reset(pgs_cache *c);

#endif
