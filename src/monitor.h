/* The node monitor: one thread per PostgreSQL node (off the data path,
 * with libpq) that reads the node's role, WAL positions and replay delay
 * every monitor_interval into its pgs_node (topology.h), marks nodes that
 * stop answering down and back up, and acts on a failed primary as
 * `failover` says (off: report; follow: take the node that says it is the
 * primary now; auto: promote the most advanced replica). */
#ifndef PGS_MONITOR_H
#define PGS_MONITOR_H

#include <libpq-fe.h>

#include "config.h"

/* Starts one thread per resolved node when there are replicas (with the
 * primary alone it starts nothing, unless monitor_want_primary_thread was
 * called: SHOW NODES then shows the primary unchecked).  cfg is the start-up snapshot: its restart-only parts (node
 * URLs, server_tls) are read until monitor_stop. */
PGS_MUSTCHECK int monitor_start(const pgs_config *cfg, char *err, size_t errlen);
/* Before monitor_start: start the primary's thread even with no replica,
 * for the primary hook (it then also checks the primary: SHOW NODES shows
 * it checked, and a failed check marks it down). */
void monitor_want_primary_thread(void);
/* After monitor_start (RELOAD switched the result cache on): the primary's
 * thread is started now if no monitor thread runs.  -1 with err when a
 * thread cannot be started. */
PGS_MUSTCHECK int monitor_want_primary_thread_now(char *err, size_t errlen);
/* Stops and joins the threads, closes their connections. */
void monitor_stop(void);
/* Takes the reloadable settings (interval, timeouts, failover mode) from a
 * new snapshot; they apply from each node's next check. */
void monitor_configure(const pgs_config *cfg);
/* Asks every node's thread for a check now rather than at its next turn. */
void monitor_wake(void);

/* UNFENCE (admin console): the fenced former primary called name, which
 * answers the monitor as a replica now (an operator or HA manager rejoined
 * it) and, when the primary's pg_stat_replication can tell, streams from
 * the primary, takes reads again, as pgpool-II's pcp_attach_node does.  0
 * (warning set, or "", when the streaming could not be checked), or -1
 * with a SQLSTATE and msg saying why not.  who: for the log. */
PGS_MUSTCHECK int monitor_unfence(const char *name, const char *who, char sqlstate[6], char *msg,
                                  size_t msglen, char *warning, size_t warnlen);
/* Called on the monitor thread of the primary with its connection (idle,
 * in no transaction) after each (re)connect, and after a failover on the
 * new primary's; it may run queries and must leave the connection idle. */
typedef void (*monitor_primary_hook_fn)(PGconn *conn);
void monitor_set_primary_hook(monitor_primary_hook_fn fn);
/* Runs the hook again at the primary's next check, which comes now (DDL
 * went through pgscale; RELOAD does it as well). */
void monitor_rerun_primary_hook(void);

/* The check, for the tests: the query each poll runs. */
extern const char monitor_poll_sql[];

#endif
