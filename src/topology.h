/* The PostgreSQL nodes pgscale knows: DATABASE_URL's (the primary at
 * start) and READ_REPLICA_URLS' (or the config file's nodes), each with
 * where it is reached and what the monitor last learnt of it.  The list is
 * fixed at start (changing it needs a restart); what changes at run time
 * -- role, health, WAL positions, lag -- lives in atomics that the monitor
 * thread writes and the workers read without a lock. */
#ifndef PGS_TOPOLOGY_H
#define PGS_TOPOLOGY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "config.h"
#include "endpoint.h"
#include "types.h"

#define PGS_MAX_NODES PGS_MAX_NODES_T

typedef enum pgs_node_role {
    PGS_ROLE_PRIMARY = 0,
    PGS_ROLE_REPLICA = 1,
    PGS_ROLE_UNKNOWN = 2, /* not reached yet */
} pgs_node_role;

typedef enum pgs_node_state {
    PGS_NODE_UP = 0,      /* answering health checks (or not checked yet) */
    PGS_NODE_DOWN = 1,    /* failed checks: no new work until it is back */
    PGS_NODE_FENCED = 2,  /* a former primary after failover: not used (monitor.c) */
} pgs_node_state;

typedef enum pgs_sync_state {
    PGS_SYNC_OFF = 0,      /* no synchronous replication (or a primary) */
    PGS_SYNC_ASYNC,        /* not a synchronous standby (or not connected) */
    PGS_SYNC_POTENTIAL,    /* next in line, not waited for */
    PGS_SYNC_SYNC,         /* waited for: holds every acknowledged commit */
    PGS_SYNC_QUORUM,       /* one of an ANY n quorum */
    PGS_SYNC_UNKNOWN,      /* the primary did not say (privileges), or its
                            * application name is not unique */
} pgs_sync_state;

typedef struct pgs_node {
    int index;
    char name[16];            /* "primary", "replica1", ... (as configured) */
    const pgs_url *url;       /* in the start-up configuration */
    pgs_endpoint ep;
    bool resolved;            /* ep is usable (a replica's host may not resolve) */
    int weight;               /* balancing weight (1 unless configured) */
    _Atomic int role;         /* pgs_node_role */
    _Atomic int state;        /* pgs_node_state */
    /* WAL positions (LSNs as 64-bit numbers): on the primary its current
     * write position, on a replica what it has replayed and received. */
    _Atomic uint64_t lsn;
    _Atomic uint64_t receive_lsn;
    _Atomic uint64_t lag_bytes;   /* primary's LSN - this replica's replay LSN */
    _Atomic uint32_t lag_ms;      /* replay delay as the replica reports it */
    _Atomic uint64_t checked_us;  /* when the monitor last read the above (0: never) */
    /* A replica's part in synchronous replication as the primary's last
     * check showed it (pgs_sync_state; PGS_SYNC_OFF when the primary has
     * no synchronous_standby_names). */
    _Atomic int sync_state;
    /* Counters for SHOW NODES, by any worker. */
    _Atomic uint64_t reads, writes;
    /* reads that failed here before any answer and ran again elsewhere */
    _Atomic uint64_t retried;
    _Atomic int outstanding;      /* transactions running there now */
    pthread_mutex_t err_lock;     /* guards last_error */
    char last_error[256];
} pgs_node;

/* Builds the node list from cfg; the primary's address must resolve (err
 * says why not), a replica's that does not is logged and kept down. */
PGS_MUSTCHECK int topology_init(const pgs_config *cfg, char *err, size_t errlen);
void topology_free(void);

int topology_count(void);
pgs_node *topology_node(int i);
/* The node that takes writes now. */
pgs_node *topology_primary(void);
/* Failover (monitor.c): node index takes the writes from now on.  A
 * release store: a worker that reads the new primary (acquire) also sees
 * what the monitor wrote into its node before. */
void topology_set_primary(int index);

/* WAL positions as PostgreSQL writes them, "16/B374D848" (two hex numbers,
 * high and low 32 bits).  Parse: 0, or -1 for anything else. */
PGS_MUSTCHECK int topology_parse_lsn(const char *s, uint64_t *out);
void topology_format_lsn(uint64_t lsn, char *buf, size_t n);

void topology_set_error(pgs_node *n, const char *msg);
void topology_get_error(pgs_node *n, char *buf, size_t len);

const char *topology_role_name(int role);
const char *topology_state_name(int state);
/* NULL for PGS_SYNC_OFF. */
const char *topology_sync_name(int sync_state);

#endif
