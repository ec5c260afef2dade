/* tablever: the process-wide (table id -> version) table and the global
 * epoch that decide whether a cached answer is still valid.  It owns only
 * the counters; which tables a statement reads or writes is classify's
 * business, and when a write counts as committed is the relay's.
 *
 * Why a hit is never older than a bump that happened-before its lookup:
 *
 *   A fill reads the versions (acquire) before its query is sent, and the
 *   entry keeps those.  A writer's bump is an atomic read-modify-write
 *   (release) done after PostgreSQL reported the commit and before the
 *   writer's ReadyForQuery is forwarded.  Take a bump B of table t and a
 *   lookup L with B happened-before L (the writer saw its ReadyForQuery,
 *   then it, or anyone it told, sent the read that did L; the chain runs
 *   through sockets, whose system calls order memory at least as strongly
 *   as release/acquire).  L reads t's version with an acquire load; by
 *   read-write coherence that load returns B's value or a later one, never
 *   an earlier one.  The entry's snapshot S of t was taken either
 *     - before B took effect: S is older than what L reads, the versions
 *       differ and the entry is dead; or
 *     - after B: then S happened-after B's release, B happened-after the
 *       commit, and the query was sent after S, so PostgreSQL ran it after
 *       the write committed: the answer includes the write.
 *   Either way L never serves an answer that misses B's write.  Versions
 *   only grow (64-bit counters do not wrap), so "equal" means "no bump
 *   since the snapshot".  The epoch follows the same argument for writes
 *   whose tables are unknown.
 *
 * Ids live in a fixed array, inserted by CAS with linear probing, never
 * removed: once an id owns a slot it owns it for the life of the process,
 * so a reader that probes and meets an empty slot first knows the id was
 * never bumped (version 0) at the moment of its load; a later insert only
 * makes versions differ from that 0, which is the safe direction. */
#include "tablever.h"

#include <stdatomic.h>
#include <string.h>

_Static_assert((PGS_TABLEVER_CAPACITY & (PGS_TABLEVER_CAPACITY - 1)) == 0,
               "PGS_TABLEVER_CAPACITY must be a power of two");

/* Probing stops after this many slots: past it an id shares the overflow
 * version.  Slots never empty, so the same id always meets the same full
 * run and always lands on the overflow slot again: readers and bumpers
 * agree. */
#define MAX_PROBES 256

typedef struct slot {
    _Atomic uint64_t id;
    _Atomic uint64_t version;
} slot;

static slot slots[PGS_TABLEVER_CAPACITY];
static _Atomic uint64_t overflow_version;
static _Atomic uint64_t epoch;
static _Atomic uint64_t n_ids;
static _Atomic uint64_t n_overflow_bumps;

static inline uint64_t mix64(uint64_t h)
{
    /* The murmur3 finaliser: FNV's low bits alone probe badly. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

pgs_table_id tablever_id_n(const char *name, size_t len)
{
    /* FNV-1a over the lower-cased bytes.  Two names that collide share a
     * version: a bump of one kills answers over the other too, which is
     * only coarser, never wrong, so a 64-bit non-cryptographic hash is
     * enough here (unlike the answer cache's keys). */
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c >= 'A' && c <= 'Z') c = (unsigned char)(c + ('a' - 'A'));
        h ^= c;
        h *= 0x100000001b3ULL;
    }
    h = mix64(h);
    return h ? h : 1;
}

pgs_table_id tablever_id(const char *schema, const char *name)
{
    (void)schema; /* on purpose: see tablever.h */
    return tablever_id_n(name ? name : "", name ? strlen(name) : 0);
}

/* The slot of id, or NULL when it has none (never bumped, or overflowed
 * when `insert` is false; overflowed when `insert` is true). */
static slot *find(pgs_table_id id, bool insert, bool *overflowed)
{
    size_t mask = PGS_TABLEVER_CAPACITY - 1;
    size_t i = (size_t)id & mask;
    *overflowed = false;
    for (int probe = 0; probe < MAX_PROBES; probe++, i = (i + 1) & mask) {
        uint64_t cur = atomic_load_explicit(&slots[i].id, memory_order_acquire);
        if (cur == id) return &slots[i];
        if (cur == 0) {
            if (!insert) return NULL;
            uint64_t expected = 0;
            if (atomic_compare_exchange_strong_explicit(&slots[i].id, &expected, id,
                                                        memory_order_acq_rel,
                                                        memory_order_acquire)) {
                atomic_fetch_add_explicit(&n_ids, 1, memory_order_relaxed);
                return &slots[i];
            }
            /* Someone took it: for this very id, or for another. */
            if (expected == id) return &slots[i];
        }
    }
    *overflowed = true;
    return NULL;
}

static inline uint64_t version_of(pgs_table_id id)
{
    bool overflowed;
    slot *s = find(id, false, &overflowed);
    if (s) return atomic_load_explicit(&s->version, memory_order_acquire);
    if (overflowed) return atomic_load_explicit(&overflow_version, memory_order_acquire);
    return 0;
}

uint64_t tablever_epoch(void)
{
    return atomic_load_explicit(&epoch, memory_order_acquire);
}

void tablever_snapshot(const pgs_table_id *ids, size_t n, uint64_t *out_versions,
                       uint64_t *out_epoch)
{
    if (out_epoch) *out_epoch = tablever_epoch();
    for (size_t i = 0; i < n; i++) out_versions[i] = version_of(ids[i]);
}

void tablever_bump(const pgs_table_id *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bool overflowed;
        slot *s = find(ids[i], true, &overflowed);
        if (s) {
            atomic_fetch_add_explicit(&s->version, 1, memory_order_acq_rel);
        } else {
            atomic_fetch_add_explicit(&overflow_version, 1, memory_order_acq_rel);
            atomic_fetch_add_explicit(&n_overflow_bumps, 1, memory_order_relaxed);
        }
    }
}

void tablever_bump_all(void)
{
    atomic_fetch_add_explicit(&epoch, 1, memory_order_acq_rel);
}

bool tablever_valid(const pgs_table_id *ids, const uint64_t *versions, size_t n,
                    uint64_t snap_epoch)
{
    if (tablever_epoch() != snap_epoch) return false;
    for (size_t i = 0; i < n; i++)
        if (version_of(ids[i]) != versions[i]) return false;
    return true;
}

void tablever_stats(pgs_tablever_stats *out)
{
    out->ids = atomic_load_explicit(&n_ids, memory_order_relaxed);
    out->overflow = atomic_load_explicit(&n_overflow_bumps, memory_order_relaxed);
    out->epoch = tablever_epoch();
}

void tablever_reset_for_tests(void)
{
    for (size_t i = 0; i < PGS_TABLEVER_CAPACITY; i++) {
        atomic_store_explicit(&slots[i].id, 0, memory_order_relaxed);
        atomic_store_explicit(&slots[i].version, 0, memory_order_relaxed);
    }
    atomic_store(&overflow_version, 0);
    atomic_store(&epoch, 0);
    atomic_store(&n_ids, 0);
    atomic_store(&n_overflow_bumps, 0);
}
