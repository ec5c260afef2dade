/* The failover lock: several pgscale instances in front of one cluster,
 * with `failover: auto` and one REDIS_URL, let only one of them promote a
 * replica.  Keys, per cluster (its PostgreSQL system identifier):
 *   pgscale:<sysid>:epoch     the fencing epoch, raised by each lock taken
 *   pgscale:<sysid>:failover  "<instance-id>:<epoch>", with a TTL: the lock
 *   pgscale:<sysid>:primary   "<host:port>:<epoch>" of the last promotion
 * and the channel pgscale:<sysid>:failover (the same text, published).
 * Blocking (hiredis), for the monitor thread that runs the failover; one
 * such thread at a time. */
#ifndef PGS_FAILOVER_LOCK_H
#define PGS_FAILOVER_LOCK_H

#include <stdint.h>

#include "common.h"

struct redisContext;

typedef struct failover_grant {
    struct redisContext *conn;  /* kept from take to done */
    char sysid[32];
    uint64_t epoch;
    char value[320];            /* the lock's value: "<instance-id>:<epoch>" */
} failover_grant;

enum {
    FAILOVER_LOCK_TAKEN = 0,
    FAILOVER_LOCK_HELD = 1,         /* another instance holds it */
    FAILOVER_LOCK_UNREACHABLE = 2,  /* Redis did not answer (or refused us) */
};

/* This process's id in the lock: hostname:pid:start (ms since the epoch
 * of the first call, which comes before any lock is taken). */
const char *failover_lock_instance_id(void);

/* Takes the lock of cluster sysid for ttl_ms, with a new epoch (above any
 * this instance has seen, so a Redis that restarted empty does not hand
 * out an old one).  The holder may take it again (a retry after a failed
 * promotion).  FAILOVER_LOCK_TAKEN with *g filled (release it with
 * failover_lock_done), else why in msg (one line, the same text while the
 * situation is the same). */
PGS_MUSTCHECK int failover_lock_take(const char *redis_url, const char *sysid, uint32_t ttl_ms,
                                     uint32_t timeout_ms, failover_grant *g, char *msg,
                                     size_t msglen);
/* Right before acting: is the lock still g's, and its epoch the current
 * one?  Atomically in Redis (one script), which also gives the lock a
 * fresh ttl_ms.  0: act; else not, and why in msg. */
PGS_MUSTCHECK int failover_lock_check(failover_grant *g, uint32_t ttl_ms, char *msg,
                                      size_t msglen);
/* After a successful promotion: records and publishes the new primary
 * with the epoch.  Best effort (the promotion has happened either way):
 * a failure is logged. */
void failover_lock_announce(failover_grant *g, const char *primary);
/* Closes g's connection.  The lock stays until its TTL: an instance that
 * has not yet seen the new primary must not take it and promote another. */
void failover_lock_done(failover_grant *g);

#endif
