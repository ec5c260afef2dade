/* The result cache's change feed (cache.change_feed, docs/cache.md
 * "Writes that bypass pgscale"): one thread that reads a temporary logical
 * replication slot on the current primary and turns each committed
 * transaction's tables into table version bumps, so that a write made
 * around pgscale ends the cached answers it changed soon after it commits.
 * Every stretch of WAL it cannot vouch for (before its slot existed, after
 * its connection dropped, across a failover) is an epoch bump. */
#ifndef PGS_CHANGEFEED_H
#define PGS_CHANGEFEED_H

#include "config.h"

typedef enum changefeed_state {
    CHANGEFEED_OFF = 0,       /* not configured (or stopped) */
    CHANGEFEED_CONNECTING,    /* opening the connection and the slot */
    CHANGEFEED_STREAMING,     /* reading the slot */
    CHANGEFEED_ERROR,         /* the last attempt failed; retrying with backoff */
} changefeed_state;

/* Starts the thread (cfg: the start-up snapshot, read until
 * changefeed_stop: the primary's URL, server_tls, health_check_timeout). */
PGS_MUSTCHECK int changefeed_start(const pgs_config *cfg, char *err, size_t errlen);
/* Stops and joins the thread; its connection is closed, and with it the
 * temporary slot. */
void changefeed_stop(void);

typedef struct changefeed_stats {
    int state;            /* changefeed_state */
    uint64_t bumps;       /* transactions whose tables were bumped */
    uint64_t bumps_all;   /* epoch bumps: gaps, and transactions that may have written anything */
    uint64_t lsn;         /* the position read up to (0: none yet) */
} changefeed_stats;
void changefeed_stats_get(changefeed_stats *out);
const char *changefeed_state_name(int state);

#endif
