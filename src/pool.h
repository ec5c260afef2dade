/* Server pools per (node, user, database): pool_size kept, up to max_overflow
 * more under load, FIFO waiting with pool_timeout, and the cross-worker
 * budget that keeps the total within pool_size + max_overflow. */
#ifndef PGS_POOL_H
#define PGS_POOL_H

#include "types.h"

/* Worker w's part of the pool of (user, database) on node (topology.h),
 * made if needed. */
pgs_pool *pool_get(pgs_worker *w, struct pgs_node *node, const char *user, const char *database);
/* Worker home->w's part of the pool of home's (user, database) on node:
 * home itself on its own node.  Found under the pools lock once, then
 * kept by home (no lock after the first time). */
pgs_pool *pool_for_node(pgs_pool *home, struct pgs_node *node);
/* `route: primary` for the pool's database or user (config). */
bool pool_force_primary(const pgs_pool *p);
/* A control message naming sh is posted (ref) / was handled (unref): a
 * pool is not freed while one is on its way. */
void pool_ref(pgs_pool_shared *sh);
void pool_unref(pgs_pool_shared *sh);

/* Gives c a server now (client_server_ready) or queues it. */
void pool_checkout(pgs_pool *p, pgs_client *c);
/* Takes c out of the waiting queue, if it is there. */
void pool_cancel_wait(pgs_client *c);
/* A server that is idle (ReadyForQuery 'I', nothing owed) goes back. */
void pool_release(pgs_server *sv);
/* A server finished logging in. */
void pool_server_ready(pgs_server *sv);
/* Opening a server failed; server_error is true for an ErrorResponse the
 * server sent (bad password, no such database), false for a network error. */
void pool_server_failed(pgs_pool *p, bool server_error, const char *sqlstate,
                        const char *msg);
/* A server opened for waiters stopped connecting or logging in, either way
 * (server.c, when it takes such a server off the pool's lists). */
void pool_login_ended(pgs_pool *p);
/* Whether a connect or login failure with this message should be logged:
 * true for the first of a run of identical ones (and once per 30 s of the
 * run, with how many were not logged). Call before pool_server_failed. */
bool pool_failure_is_news(pgs_pool *p, const char *msg);
/* Failover (the monitor's thread): node, the primary until now, is fenced.
 * Every worker closes node's idle servers and routes the clients waiting
 * in node's pools afresh -- to the new primary's -- at once. */
void pool_node_fenced(struct pgs_node *node);
/* A replica's server connection was lost in use (not ended by the server
 * with a reason): the node is down for routing until the monitor sees it
 * answer again, and its pool's waiters are routed elsewhere, as after a
 * failed connect.  Nothing for the primary (failover is the monitor's). */
void pool_node_lost(pgs_pool *p, const char *msg);
/* A server just logged in to p's node and says it is a hot standby: true
 * when p is the primary's pool and failover is on, and so the server must
 * not be used (the monitor is woken to see the demotion). */
bool pool_standby_refused(pgs_pool *p);
/* Bookkeeping when a server connection is gone for good. */
void pool_server_gone(pgs_server *sv);

void pool_janitor(pgs_worker *w, uint64_t now);
/* Frees every pool once no worker runs and no connection is left (tests). */
void pool_free_all(void);
void pool_adopt_handoffs(pgs_worker *w, pgs_pool_shared *sh);
void pool_give_idle(pgs_worker *w, pgs_pool_shared *sh);

/* --- Admin console and reload.  Any thread unless "worker thread" is
 * said; `db` NULL means every database. --- */

/* PAUSE: servers of db go back idle and clients queue, until RESUME. */
void pool_pause(const char *db);
/* RESUME: 0; -1 when db was not paused; -2 when every database is paused
 * (PAUSE without a name) and db names one. */
PGS_MUSTCHECK int pool_resume(const char *db);
bool pool_db_paused(const char *db);
/* Calls fn for each database paused by name (under the pools lock: fn must
 * not call back into pool.c). */
void pool_each_paused(void (*fn)(void *ctx, const char *db), void *ctx);
/* Servers of db connected before before_us are closed once idle. */
void pool_close_before(const char *db, uint64_t before_us);
/* Server connections of db linked to a client or resetting, all workers. */
int pool_active_servers(const char *db);
/* Server connections of db connected before before_us, all workers. */
int pool_old_servers(const char *db, uint64_t before_us);
/* RELOAD: every pool's sizes, mode and timeout from cfg. */
void pool_reconfigure_all(const pgs_config *cfg);
/* A logged-in client joins pool p (worker thread), within the per-database
 * and per-user client limits (max_db_connections, max_user_connections).
 * -1 with the reason and what to change when a limit is reached. */
PGS_MUSTCHECK int pool_admit_client(pgs_pool *p, char *msg, size_t msglen, char *hint,
                                    size_t hintlen);
/* The client admitted to p is gone (worker thread). */
void pool_client_left(pgs_pool *p);

/* The workers' side of the control messages (worker thread). */
void pool_serve_resumed(pgs_worker *w);            /* WM_RESUME */
void pool_kill_local(pgs_worker *w, const char *db); /* WM_KILL */
void pool_close_old_idle(pgs_worker *w);           /* WM_WAIT_CLOSE */
void pool_apply_config(pgs_worker *w);             /* WM_CONFIG */

/* One pool's state and counters, every worker's part summed (SHOW POOLS,
 * SHOW STATS, /metrics, /api/status).  Any thread, under g_pgs.pools_lock.
 * Counters include the parts retired from workers, so they never go back. */
typedef struct pgs_pool_snap {
    int cl_active, cl_waiting, sv_active, sv_idle, sv_login, sv_total, sv_overflow;
    int pool_size, max_total, pinned;
    uint64_t maxwait_us;   /* the longest wait of a client waiting now */
    uint64_t xact_count, query_count, bytes_in, bytes_out, xact_us, query_us, wait_us,
        wait_count, checkouts, pool_timeouts;
    uint64_t xact_hist[PGS_HIST_BUCKETS], wait_hist[PGS_HIST_BUCKETS];
    uint64_t errors[PGS_ERR_CLASSES];
} pgs_pool_snap;
void pool_snapshot(pgs_pool_shared *sh, uint64_t now, pgs_pool_snap *out);

/* Welcome parameters (ParameterStatus from the first server login). */
void pool_set_welcome(pgs_pool_shared *sh, int n, char **names, char **values);
bool pool_has_welcome(pgs_pool_shared *sh);

#endif
