/* Server pools.  A pool is one (user, database) pair.  Its budget of
 * pool_size + max_overflow connections is shared by all workers through
 * one atomic counter (pgs_pool_shared.open); the connections themselves
 * live in per-worker parts (pgs_pool), so checkout and release on the data
 * path touch only the worker's own lists.
 *
 * How workers share connections without one starving another: a server
 * coming back idle goes first to a waiting client of its own worker; if
 * there is none but clients of the same pool wait on another worker, the
 * server is handed over to that worker (its socket is detached from this
 * loop and adopted by the other: no reconnect).  A worker whose clients
 * wait while the budget is spent asks the other workers for their idle
 * servers (WM_WANT_SERVER), which hand them over the same way.  So a
 * connection is never idle on one worker while a client waits on another
 * for longer than one message round trip between threads.
 *
 * The admin console acts on pools through flags in the shared part that
 * every worker reads where it hands out servers: `paused` (PAUSE, KILL:
 * servers go back idle and clients queue), `close_before_us` (KILL,
 * WAIT_CLOSE: older servers are closed when idle) and the sizes (RELOAD:
 * a smaller pool closes idle servers beyond it, and busy ones when they
 * come back, never one in use).  Each command then sends a control
 * message to every worker for what only the owning worker may do (close
 * its connections, serve its waiting clients). */
#include "pool.h"
#include "monitor.h"
#include "topology.h"
#include "params.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client.h"
#include "net.h"
#include "pooltab.h"
#include "server.h"
#include "worker.h"

/* After a connect or login fails for a reason other than the server's
 * refusal, the pool waits before the next attempt: 100 ms, doubling up to
 * 1 s, back to nothing after a success (shared by the workers).  Without it a connect that fails
 * at once (no route to the host, out of file descriptors) was retried in
 * a loop that never gave the event loop back: one worker spun at 100% CPU
 * and the log grew without bound. */
#define RETRY_CONNECT_MIN_US 100000u
#define RETRY_CONNECT_MAX_US 1000000u
/* Identical failures are logged once per this window, then summed up. */
#define FAIL_LOG_WINDOW_US 30000000u
/* A server coming back goes to a client of its own worker unless a client
 * on another worker has waited this much longer.  Strict order across
 * workers would hand servers back and forth under an even load (with 256
 * clients on 30 servers, 2 ms of slack moved 44% of the servers between
 * workers, 50 ms under 3%; a handoff costs about eight system calls),
 * while this bounds how much longer a client on a busy worker can wait
 * than one on another. */
#define FAIRNESS_SLACK_US 50000u

static void publish_head(pgs_pool *p)
{
    uint64_t v = 0;
    if (!list_empty(&p->waiting))
        v = list_entry(p->waiting.next, pgs_client, wait_node)->wait_start_us;
    atomic_store_explicit(&p->head_wait_us, v, memory_order_relaxed);
}

/* The pool's counters can only be trusted if they never go below zero
 * and the shared budget covers at least what this worker holds.  Checked
 * wherever they go down (assertions stay on outside release builds). */
static void check_counters(const pgs_pool *p)
{
    assert(p->n_idle >= 0 && p->n_used >= 0 && p->n_login >= 0);
    assert(p->n_connecting >= 0 && p->n_waiting >= 0 && p->n_active_clients >= 0);
    assert(atomic_load(&p->sh->open) >= 0 && atomic_load(&p->sh->waiting) >= 0);
    PGS_UNUSED(p);
}

bool pool_has_welcome(pgs_pool_shared *sh)
{
    pthread_mutex_lock(&sh->lock);
    bool r = sh->n_welcome > 0;
    pthread_mutex_unlock(&sh->lock);
    return r;
}

void pool_set_welcome(pgs_pool_shared *sh, int n, char **names, char **values)
{
    pthread_mutex_lock(&sh->lock);
    if (sh->n_welcome == 0 && n > 0) {
        sh->welcome_names = pgs_xcalloc((size_t)n, sizeof(char *));
        sh->welcome_values = pgs_xcalloc((size_t)n, sizeof(char *));
        for (int i = 0; i < n; i++) {
            sh->welcome_names[i] = pgs_xstrdup(names[i]);
            sh->welcome_values[i] = pgs_xstrdup(values[i]);
        }
        sh->n_welcome = n;
    }
    pthread_mutex_unlock(&sh->lock);
}

/* PAUSE / KILL by database name, so that pools created later start
 * paused too.  Guarded by g_pgs.pools_lock. */
static bool paused_all;
static char **paused_dbs;
static int n_paused_dbs;

static bool db_match(const char *want, const char *db)
{
    return !want || strcmp(want, db) == 0;
}

static int paused_index(const char *db)
{
    for (int i = 0; i < n_paused_dbs; i++)
        if (strcmp(paused_dbs[i], db) == 0) return i;
    return -1;
}

/* The pool's settings after the per-database and per-user overrides. */
static void apply_settings(pgs_pool_shared *sh, const pgs_config *cfg)
{
    pgs_pool_settings ps;
    config_pool_settings(cfg, sh->database, sh->user, &ps);
    atomic_store(&sh->pool_size, ps.pool_size);
    atomic_store(&sh->max_total, ps.pool_size + ps.max_overflow);
    atomic_store(&sh->pool_mode, (int)ps.pool_mode);
    atomic_store(&sh->pool_timeout_ms, ps.pool_timeout_ms);
    atomic_store(&sh->pinning, ps.pinning ? 1 : 0);
    atomic_store(&sh->max_pinned, ps.max_pinned);
    atomic_store(&sh->force_primary, ps.force_primary ? 1 : 0);
    atomic_store(&sh->cache, ps.cache ? 1 : 0);
}

bool pool_force_primary(const pgs_pool *p)
{
    return atomic_load_explicit(&p->sh->force_primary, memory_order_relaxed) != 0;
}

/* ------------------------------------------------------------------------ */
/* Finding pools, and freeing the ones nobody uses                          */
/* ------------------------------------------------------------------------ */

/* Every pool's shared part, by (user, database); under g_pgs.pools_lock
 * (as is the g_pgs.pools list, which the admin console walks). */
static pgs_pooltab pool_table;

static pgs_pool_shared *shared_get_locked(pgs_node *node, const char *user,
                                          const char *database)
{
    pgs_pool_shared *sh = pooltab_find(&pool_table, node->index, user, database);
    if (sh) return sh;
    sh = pgs_xcalloc(1, sizeof(*sh));
    sh->user = pgs_xstrdup(user);
    sh->database = pgs_xstrdup(database);
    sh->node = node;
    sh->node_index = node->index;
    sh->hnode.hash = pooltab_hash(node->index, user, database);
    /* Under pools_lock, so a RELOAD that publishes a new snapshot
     * either is seen here or reconfigures this pool after us. */
    apply_settings(sh, g_pgs.cfg);
    atomic_store(&sh->paused, paused_all || paused_index(database) >= 0);
    pthread_mutex_init(&sh->lock, NULL);
    list_init(&sh->handoff);
    pooltab_insert(&pool_table, sh);
    sh->next = g_pgs.pools;
    if (sh->next) sh->next->pprev = &sh->next;
    sh->pprev = &g_pgs.pools;
    g_pgs.pools = sh;
    return sh;
}

/* Worker w's part of sh, made (or taken back from retirement) if needed.
 * Under pools_lock: that is what keeps sh from being freed between being
 * found and being given a part on this worker. */
static pgs_pool *local_attach_locked(pgs_worker *w, pgs_pool_shared *sh)
{
    /* locals[w->id] is written only by worker w; other workers read it
     * (racily, for counts) to find where clients wait. */
    pgs_pool *p = __atomic_load_n(&sh->locals[w->id], __ATOMIC_ACQUIRE);
    if (p) return p;
    p = sh->retired[w->id];
    if (p) {
        sh->retired[w->id] = NULL; /* empty, and its statistics go on */
    } else {
        p = pgs_xcalloc(1, sizeof(*p));
        p->sh = sh;
        p->w = w;
        list_init(&p->idle);
        list_init(&p->used);
        list_init(&p->waiting);
    }
    p->unused_since_us = 0;
    pthread_mutex_lock(&w->lock);
    p->next = w->pools;
    w->pools = p;
    pthread_mutex_unlock(&w->lock);
    __atomic_store_n(&sh->locals[w->id], p, __ATOMIC_RELEASE);
    return p;
}

pgs_pool *pool_get(pgs_worker *w, pgs_node *node, const char *user, const char *database)
{
    pthread_mutex_lock(&g_pgs.pools_lock);
    pgs_pool *p = local_attach_locked(w, shared_get_locked(node, user, database));
    pthread_mutex_unlock(&g_pgs.pools_lock);
    return p;
}

void pool_ref(pgs_pool_shared *sh)
{
    atomic_fetch_add(&sh->refs, 1);
}

void pool_unref(pgs_pool_shared *sh)
{
    int was = atomic_fetch_sub(&sh->refs, 1);
    assert(was > 0);
    PGS_UNUSED(was);
}

/* Freeing pools.  Every (user, database) pair a client ever named would
 * otherwise keep its pool for good.  A worker's part of a pool is retired
 * by that worker's janitor once it has held no client, server or waiter
 * for unused_pool_timeout; the shared part, with every retired part, is
 * freed when the last worker retires its part and nothing else can reach
 * the pool.  The invariant that makes this safe without a lock on the data
 * path:
 *
 * - A worker reaches a pool only through its own part: from its clients
 *   and servers (a part with any is not retired), from its pool list (the
 *   retiring worker takes the part off it), from pool_get (under
 *   pools_lock), or from a control message (which holds a reference,
 *   `refs`).  A server travelling between workers counts in `open`.
 * - Other workers read a part they do not own (its counts, to decide
 *   where a server should go) through locals[] of a pool they hold a live
 *   part of.  So a retired part is not freed at once: it stays allocated
 *   (and is reused if its worker needs the pool again) until the shared
 *   part is freed, which needs every worker's part retired, so no worker
 *   can be reading any of them.
 * - The admin console, RELOAD, PAUSE, KILL read pools under pools_lock,
 *   which retiring and freeing take. */
static bool shared_unused_locked(pgs_pool_shared *sh)
{
    for (int i = 0; i < g_pgs.n_workers; i++)
        if (__atomic_load_n(&sh->locals[i], __ATOMIC_ACQUIRE)) return false;
    if (atomic_load(&sh->refs) || atomic_load(&sh->open) || atomic_load(&sh->waiting) ||
        atomic_load(&sh->n_clients))
        return false;
    pthread_mutex_lock(&sh->lock);
    bool none_in_transit = list_empty(&sh->handoff);
    pthread_mutex_unlock(&sh->lock);
    return none_in_transit;
}

static void local_free(pgs_pool *p)
{
    params_free(p->welcome_params);
    free(p);
}

static void shared_free_locked(pgs_pool_shared *sh)
{
    pooltab_remove(&pool_table, sh);
    *sh->pprev = sh->next;
    if (sh->next) sh->next->pprev = sh->pprev;
    for (size_t i = 0; i < PGS_ARRAY_LEN(sh->retired); i++)
        if (sh->retired[i]) local_free(sh->retired[i]);
    for (int i = 0; i < sh->n_welcome; i++) {
        free(sh->welcome_names[i]);
        free(sh->welcome_values[i]);
    }
    free(sh->welcome_names);
    free(sh->welcome_values);
    pthread_mutex_destroy(&sh->lock);
    free(sh->user);
    free(sh->database);
    free(sh);
}

static bool local_unused(const pgs_pool *p)
{
    return p->n_idle == 0 && p->n_used == 0 && p->n_login == 0 && p->n_connecting == 0 &&
           p->n_waiting == 0 && p->n_active_clients == 0 && list_empty(&p->waiting) &&
           list_empty(&p->idle) && list_empty(&p->used);
}

void pool_free_all(void)
{
    pthread_mutex_lock(&g_pgs.pools_lock);
    while (g_pgs.pools) {
        pgs_pool_shared *sh = g_pgs.pools;
        for (size_t i = 0; i < PGS_ARRAY_LEN(sh->locals); i++) {
            pgs_pool *p = sh->locals[i];
            if (!p) continue;
            sh->locals[i] = NULL;
            local_free(p);
        }
        shared_free_locked(sh);
    }
    pooltab_free(&pool_table);
    for (int i = 0; i < n_paused_dbs; i++) free(paused_dbs[i]);
    free(paused_dbs);
    paused_dbs = NULL;
    n_paused_dbs = 0;
    paused_all = false;
    for (int i = 0; i < g_pgs.n_workers; i++) g_pgs.workers[i].pools = NULL;
    pthread_mutex_unlock(&g_pgs.pools_lock);
}

/* A retired part lets go of the other nodes' pools it found (see
 * pool_for_node); one left unused by that is freed here, as retiring would
 * have freed it.  Under pools_lock. */
static void drop_node_pools_locked(pgs_pool *p)
{
    for (int i = 0; i < PGS_MAX_NODES; i++) {
        pgs_pool *q = p->node_pool[i];
        if (!q) continue;
        p->node_pool[i] = NULL;
        pool_unref(q->sh);
        if (shared_unused_locked(q->sh)) shared_free_locked(q->sh);
    }
}

pgs_pool *pool_for_node(pgs_pool *home, pgs_node *node)
{
    if (node == home->sh->node) return home;
    pgs_pool *q = home->node_pool[node->index];
    /* still this worker's live part (the janitor retires an unused one;
     * only this worker writes locals[w->id]) */
    if (q && q->sh->locals[home->w->id] == q) return q;
    pthread_mutex_lock(&g_pgs.pools_lock);
    if (q) {
        q = local_attach_locked(home->w, q->sh); /* back from retirement */
    } else {
        q = local_attach_locked(home->w,
                                shared_get_locked(node, home->sh->user, home->sh->database));
        pool_ref(q->sh);
    }
    pthread_mutex_unlock(&g_pgs.pools_lock);
    home->node_pool[node->index] = q;
    return q;
}

/* Worker thread (the janitor). */
static void retire_unused(pgs_worker *w, uint64_t now)
{
    uint64_t after = (uint64_t)g_pgs.cfg->unused_pool_timeout_ms * 1000u;
    if (after == 0) return;
    pgs_pool **pp = &w->pools;
    while (*pp) {
        pgs_pool *p = *pp;
        if (!local_unused(p)) {
            p->unused_since_us = 0;
            pp = &p->next;
            continue;
        }
        if (p->unused_since_us == 0) p->unused_since_us = now;
        if (pgs_elapsed_us(now, p->unused_since_us) < after) {
            pp = &p->next;
            continue;
        }
        pgs_pool_shared *sh = p->sh;
        pthread_mutex_lock(&g_pgs.pools_lock);
        pthread_mutex_lock(&w->lock);
        *pp = p->next;
        p->next = NULL;
        pthread_mutex_unlock(&w->lock);
        __atomic_store_n(&sh->locals[w->id], NULL, __ATOMIC_RELEASE);
        sh->retired[w->id] = p;
        drop_node_pools_locked(p);
        if (shared_unused_locked(sh)) {
            log_debug("pool db=%s user=%s: unused, freed", sh->database, sh->user);
            shared_free_locked(sh);
        }
        pthread_mutex_unlock(&g_pgs.pools_lock);
    }
}

/* Takes one unit of the shared budget, if there is one. */
static bool budget_take(pgs_pool_shared *sh)
{
    int open = atomic_load(&sh->open);
    while (open < sh->max_total) {
        if (atomic_compare_exchange_weak(&sh->open, &open, open + 1)) return true;
    }
    return false;
}

static void ask_other_workers(pgs_pool *p)
{
    uint64_t now = pgs_now_us();
    if (p->last_connect_fail_us && pgs_elapsed_us(now, p->last_connect_fail_us) < 1000) return;
    for (int i = 0; i < g_pgs.n_workers; i++) {
        if (i == p->w->id) continue;
        pgs_pool *other = __atomic_load_n(&p->sh->locals[i], __ATOMIC_ACQUIRE);
        if (!other || __atomic_load_n(&other->n_idle, __ATOMIC_RELAXED) == 0) continue;
        pgs_worker_msg *m = pgs_xcalloc(1, sizeof(*m));
        m->kind = WM_WANT_SERVER;
        m->a = (uint32_t)p->w->id;
        m->pool = p->sh;
        pool_ref(p->sh);
        worker_post(&g_pgs.workers[i], m);
    }
}

static bool is_paused(const pgs_pool *p)
{
    return atomic_load_explicit(&p->sh->paused, memory_order_relaxed) != 0;
}

/* A former primary after a failover: none of its servers is handed out
 * again (it may come back, as a second primary that must not take writes). */
static bool node_fenced(const pgs_pool *p)
{
    return atomic_load_explicit(&p->sh->node->state, memory_order_relaxed) == PGS_NODE_FENCED;
}

/* Whether clients waiting in p for a server wait through an outage of
 * the primary for failover (failover_wait) rather than failing after
 * server_connect_timeout: p is the primary's pool, there are other nodes
 * to fail over to, and failover is on. */
static bool waits_for_failover(const pgs_pool *p)
{
    const pgs_config *cfg = g_pgs.cfg;
    return cfg->failover != PGS_FAILOVER_OFF && cfg->failover_wait_ms > 0 &&
           topology_count() > 1 && p->sh->node == topology_primary();
}

static bool backing_off(pgs_pool_shared *sh, uint64_t now)
{
    uint64_t at = atomic_load_explicit(&sh->retry_at_us, memory_order_relaxed);
    return at && now < at;
}

/* Opens servers for waiting clients while the budget allows. */
static void open_for_waiters(pgs_pool *p)
{
    if (is_paused(p)) return;
    bool asked = false;
    while (p->n_waiting > p->n_connecting) {
        /* a connect that failed at once set a back-off: stop here */
        if (backing_off(p->sh, pgs_now_us())) break;
        if (!budget_take(p->sh)) {
            if (!asked) ask_other_workers(p);
            asked = true;
            break;
        }
        pgs_count(&p->n_connecting, 1);
        server_open(p);
    }
}

static bool server_expired(const pgs_server *sv, uint64_t now)
{
    const pgs_config *cfg = g_pgs.cfg;
    if (cfg->server_lifetime_ms &&
        pgs_elapsed_us(now, sv->connect_us) > (uint64_t)cfg->server_lifetime_ms * 1000u)
        return true;
    if (cfg->server_idle_timeout_ms &&
        pgs_elapsed_us(now, sv->last_used_us) > (uint64_t)cfg->server_idle_timeout_ms * 1000u)
        return true;
    return false;
}

/* A server idle for a while may have been closed by PostgreSQL (restart,
 * pg_terminate_backend, a network cut).  Idle servers are read all the
 * time, so a close that already arrived was seen; this peek catches one
 * that arrived after the last loop iteration. */
static bool server_looks_dead(pgs_server *sv)
{
    char b;
    ssize_t r = pgs_net->recv((uv_handle_t *)&sv->s.tcp, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r == 0) return true;
    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return true;
    return r > 0; /* an idle server has nothing to say; if it does, it is dying */
}

/* PostgreSQL signals a cancelled backend twice (the process, then its
 * process group); on a busy host the second signal can land after the
 * query it was meant for has ended and cancel whatever runs next.  A
 * server we sent a cancel to is therefore not handed to another client
 * for a moment. */
#define CANCEL_QUARANTINE_US 250000u

static bool quarantined(const pgs_server *sv, uint64_t now)
{
    return sv->cancelled_us && pgs_elapsed_us(now, sv->cancelled_us) < CANCEL_QUARANTINE_US;
}

/* Servers that KILL or WAIT_CLOSE want gone. */
static bool server_too_old(const pgs_server *sv)
{
    uint64_t before = atomic_load_explicit(&sv->pool->sh->close_before_us, memory_order_relaxed);
    return before && sv->connect_us < before;
}

/* Transaction mode: the idle server this client had last goes first when
 * no one else used it since -- above all the one that still holds the
 * client's sequence values (the run of its last statement that may have
 * called nextval: relay.c, "sequence state"), so that a lastval() that
 * follows finds them; and a server going back to its last client needs no
 * RESET ALL (server_reset_settings) and no DISCARD SEQUENCES.  Pointers
 * are only compared, never followed (last_server may be gone). */
static void prefer_own_server(pgs_pool *p, const pgs_client *c)
{
    if (c->pool_mode != PGS_POOL_TRANSACTION) return;
    pgs_server *own = NULL;
    /* The idle list is most-recent first, so a server a client just left
     * is near its head: the look is bounded, for pools of thousands. */
    int budget = 64;
    for (pgs_list *it = p->idle.next; it != &p->idle && budget-- > 0; it = it->next) {
        pgs_server *sv = list_entry(it, pgs_server, node);
        if (c->seq_run && sv->seq_run == c->seq_run) {
            own = sv;
            break;
        }
        if (!own && sv == c->last_server && sv->last_client == c) {
            own = sv;
            if (!c->seq_run) break;
        }
    }
    if (!own || p->idle.next == &own->node) return;
    list_del(&own->node);
    list_add_head(&p->idle, &own->node);
}

/* A checkout that waited `waited` µs (0: served at once): SHOW STATS and
 * the wait histogram of /metrics.  Worker thread (single writer). */
static void count_checkout(pgs_pool *p, uint64_t waited)
{
    pgs_stat_add(&p->stats.checkouts, 1);
    pgs_stat_add(&p->stats.wait_hist[pgs_hist_index(waited)], 1);
    if (waited) {
        pgs_stat_add(&p->stats.wait_us, waited);
        pgs_stat_add(&p->stats.wait_count, 1);
    }
}

void pool_checkout(pgs_pool *p, pgs_client *c)
{
    uint64_t now = pgs_now_us();
    prefer_own_server(p, c);
    /* paused: queue; RESUME serves the queue */
    pgs_list *it = is_paused(p) ? &p->idle : p->idle.next;
    while (it != &p->idle) {
        pgs_server *sv = list_entry(it, pgs_server, node);
        it = it->next;
        if (quarantined(sv, now)) continue;
        list_del(&sv->node);
        pgs_count(&p->n_idle, -1);
        if (server_expired(sv, now) || server_too_old(sv) ||
            (pgs_elapsed_us(now, sv->last_used_us) >
                 (uint64_t)g_pgs.cfg->server_check_delay_ms * 1000u &&
             server_looks_dead(sv))) {
            server_close(sv, "idle too long, too old, or closed by the server");
            continue;
        }
        list_add_tail(&p->used, &sv->node);
        pgs_count(&p->n_used, 1);
        count_checkout(p, 0);
        client_server_ready(c, sv);
        return;
    }
    __atomic_store_n(&c->wait_start_us, now, __ATOMIC_RELAXED); /* read by SHOW POOLS/CLIENTS */
    __atomic_store_n(&c->wait_pool, p, __ATOMIC_RELAXED);
    /* release: SHOW POOLS reads c->wait_pool of a client it sees waiting
     * (acquire), from another thread */
    atomic_store_explicit(&c->state, CL_WAITING, memory_order_release);
    list_add_tail(&p->waiting, &c->wait_node);
    pgs_count(&p->n_waiting, 1);
    if (p->n_waiting == 1) publish_head(p);
    atomic_fetch_add(&p->sh->waiting, 1);
    open_for_waiters(p);
}

void pool_cancel_wait(pgs_client *c)
{
    pgs_pool *p = c->wait_pool;
    if (!p || list_empty(&c->wait_node)) return;
    list_del(&c->wait_node);
    pgs_count(&p->n_waiting, -1);
    publish_head(p);
    atomic_fetch_sub(&p->sh->waiting, 1);
}

static pgs_client *pop_waiter(pgs_pool *p)
{
    if (list_empty(&p->waiting)) return NULL;
    pgs_client *c = list_entry(p->waiting.next, pgs_client, wait_node);
    list_del(&c->wait_node);
    pgs_count(&p->n_waiting, -1);
    publish_head(p);
    atomic_fetch_sub(&p->sh->waiting, 1);
    uint64_t waited = pgs_elapsed_us(pgs_now_us(), c->wait_start_us);
    count_checkout(p, waited ? waited : 1);
    return c;
}

/* The other worker whose first waiting client has waited longest (and
 * is not about to get a connection being opened for it), or -1. */
static int worker_with_waiters(pgs_pool *p, uint64_t *since)
{
    int best = -1;
    uint64_t best_since = UINT64_MAX;
    for (int i = 0; i < g_pgs.n_workers; i++) {
        if (i == p->w->id) continue;
        pgs_pool *other = __atomic_load_n(&p->sh->locals[i], __ATOMIC_ACQUIRE);
        if (!other || __atomic_load_n(&other->n_waiting, __ATOMIC_RELAXED) <=
                          __atomic_load_n(&other->n_connecting, __ATOMIC_RELAXED))
            continue;
        uint64_t h = atomic_load_explicit(&other->head_wait_us, memory_order_relaxed);
        if (h && h < best_since) {
            best = i;
            best_since = h;
        }
    }
    *since = best_since;
    return best;
}

/* Idle servers of the pool on all workers (racy reads of the other
 * workers' counts: only used to decide whether to keep an overflow server). */
static int idle_total(pgs_pool_shared *sh)
{
    int n = 0;
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_pool *q = __atomic_load_n(&sh->locals[i], __ATOMIC_ACQUIRE);
        if (q) n += __atomic_load_n(&q->n_idle, __ATOMIC_RELAXED);
    }
    return n;
}

/* Puts an idle, linked-to-nobody server where it is needed most. */
static void place_idle_server(pgs_server *sv)
{
    pgs_pool *p = sv->pool;
    uint64_t now = pgs_now_us();
    sv->last_used_us = now;
    if (sv->broken || server_expired(sv, now)) {
        server_close(sv, sv->broken ? "server connection not reusable" : "expired");
        return;
    }
    if (server_too_old(sv)) {
        server_close(sv, "closed by KILL or WAIT_CLOSE in the admin console");
        return;
    }
    if (node_fenced(p)) {
        server_close(sv, "its node was fenced by a failover");
        return;
    }
    if (atomic_load_explicit(&p->sh->open, memory_order_relaxed) > p->sh->max_total) {
        /* RELOAD made the pool smaller: shrink as servers come back */
        server_close(sv, "the pool was made smaller by a configuration reload");
        return;
    }
    if (quarantined(sv, now) || is_paused(p)) {
        /* idle, but not for anyone until the quarantine ends (the janitor
         * hands it to waiters then) or RESUME */
        list_add_tail(&p->idle, &sv->node);
        pgs_count(&p->n_idle, 1);
        atomic_store_explicit(&sv->state, SV_IDLE, memory_order_relaxed);
        return;
    }
    if (atomic_load(&p->sh->waiting) > p->n_waiting) {
        /* someone waits on another worker */
        uint64_t since;
        int to = worker_with_waiters(p, &since);
        uint64_t local = p->n_waiting
                             ? list_entry(p->waiting.next, pgs_client, wait_node)->wait_start_us
                             : UINT64_MAX;
        if (to >= 0 && (local == UINT64_MAX || since + FAIRNESS_SLACK_US < local)) {
            server_handoff(sv, to);
            return;
        }
    }
    pgs_client *c = pop_waiter(p);
    if (c) {
        list_add_tail(&p->used, &sv->node);
        pgs_count(&p->n_used, 1);
        client_server_ready(c, sv);
        return;
    }
    if (g_pgs.cfg->overflow_idle_timeout_ms == 0 && atomic_load(&p->sh->open) > p->sh->pool_size &&
        idle_total(p->sh) >= p->sh->pool_size) {
        /* SQLAlchemy's QueuePool exactly: a connection that comes back when
         * pool_size connections already sit idle is closed at once.  (By
         * default the janitor does this after PGSCALE_OVERFLOW_IDLE_TIMEOUT
         * instead: in transaction mode servers come back between every two
         * transactions, and closing at once reconnects moments later.) */
        server_close(sv, "overflow connection no longer needed");
        return;
    }
    if (p->w->draining) {
        /* Draining: a server nobody waits for is closed; one that a client
         * waits for goes to it above.  (Closing it before looking for a
         * waiter closed the very server opened for that waiter, opened
         * another, and so on until the waiter's pool timeout: a request
         * arriving after SIGTERM failed with 53300 instead of being served.) */
        server_close(sv, "pgscale is shutting down");
        return;
    }
    list_add_head(&p->idle, &sv->node);
    pgs_count(&p->n_idle, 1);
    atomic_store_explicit(&sv->state, SV_IDLE, memory_order_relaxed);
}

void pool_release(pgs_server *sv)
{
    pgs_pool *p = sv->pool;
    list_del(&sv->node);
    pgs_count(&p->n_used, -1);
    check_counters(p);
    place_idle_server(sv);
}

/* Every server opened for waiters counts in n_connecting (and n_login)
 * from server_open until it either logs in (pool_server_ready) or is
 * closed while connecting or logging in, whatever closes it: a login
 * failure, a login timeout, KILL, a write error, shutdown.  server.c calls
 * this from the one place that takes a server off its pool's lists, so no
 * path can forget it (KILL once did, and the worker never opened a server
 * again: it believed one was on its way). */
void pool_login_ended(pgs_pool *p)
{
    pgs_count(&p->n_login, -1);
    pgs_count(&p->n_connecting, -1);
    check_counters(p);
}

/* The summary of identical failures not logged (the run ends). */
static void log_repeats(pgs_pool *p, uint64_t now)
{
    if (p->fail_log_repeats)
        log_warn("pool db=%s user=%s: %u more failures like this in the last %.0f s: %s",
                 p->sh->database, p->sh->user, p->fail_log_repeats,
                 (double)pgs_elapsed_us(now, p->fail_log_since_us) / 1e6, p->last_error);
    p->fail_log_repeats = 0;
}

bool pool_failure_is_news(pgs_pool *p, const char *msg)
{
    uint64_t now = pgs_now_us();
    if (p->fail_log_since_us && strncmp(p->last_error, msg, sizeof(p->last_error) - 1) == 0 &&
        pgs_elapsed_us(now, p->fail_log_since_us) < FAIL_LOG_WINDOW_US) {
        p->fail_log_repeats++;
        return false;
    }
    log_repeats(p, now);
    p->fail_log_since_us = now;
    return true;
}

void pool_server_ready(pgs_server *sv)
{
    pgs_pool *p = sv->pool;
    if (p->fail_log_since_us) log_repeats(p, pgs_now_us());
    p->fail_log_since_us = 0;
    atomic_store_explicit(&p->sh->retry_delay_us, 0, memory_order_relaxed);
    atomic_store_explicit(&p->sh->retry_at_us, 0, memory_order_relaxed);
    p->last_error[0] = '\0';
    p->last_connect_fail_us = 0;
    list_del(&sv->node);
    pool_login_ended(p);
    place_idle_server(sv);
}

void pool_server_gone(pgs_server *sv)
{
    pgs_pool *p = sv->pool;
    atomic_fetch_sub(&p->sh->open, 1);
    check_counters(p);
    /* A waiter may now get a connection of its own. */
    if (p->n_waiting > p->n_connecting) open_for_waiters(p);
}

/* The clients waiting in p have not started anything there: each is
 * routed afresh (client_reroute), to wherever routing sends it now.  Only
 * those waiting on entry: one routed back here waits again. */
static void reroute_waiters(pgs_pool *p)
{
    pgs_client *c;
    for (int n = p->n_waiting; n > 0 && (c = pop_waiter(p)) != NULL; n--) client_reroute(c);
}

/* A replica's pool could not open a server: the node is down for routing
 * until the monitor sees it answer again, and the reads waiting here,
 * which have not started anywhere, go elsewhere (another replica, or the
 * primary) instead of failing.  (A fenced node stays fenced.) */
static void replica_failed(pgs_pool *p, const char *msg)
{
    pgs_node *n = p->sh->node;
    int up = PGS_NODE_UP;
    if (atomic_compare_exchange_strong(&n->state, &up, PGS_NODE_DOWN)) {
        topology_set_error(n, msg);
        log_warn("%s: %s; its reads go elsewhere until it answers again", n->name, msg);
        monitor_wake();
    }
    reroute_waiters(p);
}

/* Worker thread: node was fenced by a failover (pool_node_fenced). */
static void fenced_on_worker(pgs_worker *w, void *arg)
{
    pgs_node *node = arg;
    for (pgs_pool *p = w->pools; p; p = p->next) {
        if (p->sh->node != node) continue;
        while (!list_empty(&p->idle)) {
            pgs_server *sv = list_entry(p->idle.next, pgs_server, node);
            list_del(&sv->node);
            pgs_count(&p->n_idle, -1);
            server_close(sv, "its node was fenced by a failover");
        }
        if (p->n_waiting)
            log_info("worker %d: waiting for %s (db=%s user=%s): %d clients, who go to %s, the "
                     "primary now",
                     w->id, node->name, p->sh->database, p->sh->user, p->n_waiting,
                     topology_primary()->name);
        reroute_waiters(p);
    }
}

void pool_node_fenced(pgs_node *node)
{
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker_msg *m = pgs_xcalloc(1, sizeof(*m));
        m->kind = WM_CALL;
        m->fn = fenced_on_worker;
        m->arg = node;
        worker_post(&g_pgs.workers[i], m);
    }
}

/* The primary's node says it is a hot standby: it was demoted.  An HA
 * manager's switchover (Patroni's) stops the old primary, promotes a
 * replica and brings the old primary back as a replica of it, often before
 * the monitor, which retries a failed node with a growing delay, has read
 * it again; the clients waiting for the primary would then get servers
 * there and their writes fail with 25006.  Refused instead, as a failed
 * connect: they keep waiting (failover_wait) and go to the new primary
 * when the monitor, woken now, sees the demotion and follows.  With
 * failover off, or the primary alone (DATABASE_URL may name a standby on
 * purpose, for a read-only application), the server is used as it is. */
bool pool_standby_refused(pgs_pool *p)
{
    const pgs_config *cfg = g_pgs.cfg;
    if (cfg->failover == PGS_FAILOVER_OFF || topology_count() < 2 ||
        p->sh->node != topology_primary())
        return false;
    monitor_wake();
    return true;
}

void pool_node_lost(pgs_pool *p, const char *msg)
{
    if (p->sh->node != topology_primary()) replica_failed(p, msg);
}

void pool_server_failed(pgs_pool *p, bool server_error, const char *sqlstate, const char *msg)
{
    snprintf(p->last_error, sizeof(p->last_error), "%s", msg);
    snprintf(p->last_sqlstate, sizeof(p->last_sqlstate), "%s", sqlstate);
    p->last_connect_fail_us = pgs_now_us();
    if (p->sh->node != topology_primary()) replica_failed(p, msg);
    /* 57P03 cannot_connect_now ("the database system is shutting down",
     * "... is starting up"): the primary is going away or coming back,
     * not refusing us; while failover may replace it the waiters wait
     * (failover_wait) as for a refused connection. */
    if (server_error && strcmp(sqlstate, "57P03") == 0 && waits_for_failover(p))
        server_error = false;
    if (server_error) {
        /* The server refused us (bad password, no such database): every
         * client waiting for this pool would get the same answer. */
        pgs_client *c;
        while ((c = pop_waiter(p)) != NULL) client_fail(c, sqlstate, msg, NULL);
        return;
    }
    /* Workers failing at the same moment may each double it: harmless,
     * it is capped. */
    uint32_t last = atomic_load_explicit(&p->sh->retry_delay_us, memory_order_relaxed);
    uint32_t d = last ? PGS_MIN(last * 2u, RETRY_CONNECT_MAX_US) : RETRY_CONNECT_MIN_US;
    atomic_store_explicit(&p->sh->retry_delay_us, d, memory_order_relaxed);
    atomic_store_explicit(&p->sh->retry_at_us, pgs_now_us() + d, memory_order_relaxed);
}

static void fail_waiters_on_timeout(pgs_pool *p, uint64_t now)
{
    const pgs_config *cfg = g_pgs.cfg;
    uint64_t pool_to = (uint64_t)atomic_load(&p->sh->pool_timeout_ms) * 1000u;
    uint64_t conn_to = (uint64_t)cfg->server_connect_timeout_ms * 1000u;
    uint64_t failover_wait = waits_for_failover(p) ? (uint64_t)cfg->failover_wait_ms * 1000u : 0;
    char msg[1024];
    pgs_list *it = p->waiting.next;
    while (it != &p->waiting) {
        pgs_client *c = list_entry(it, pgs_client, wait_node);
        it = it->next;
        uint64_t waited = pgs_elapsed_us(now, c->wait_start_us);
        bool outage = p->last_connect_fail_us && p->n_idle == 0 && p->n_used == 0;
        if (outage && failover_wait) {
            /* The primary is unreachable and failover may replace it: the
             * client waits for that (the monitor hands it to the new
             * primary's pool at the switch: pool_node_fenced), not for a
             * pool that is not full. */
            if (waited < failover_wait) continue;
            pool_cancel_wait(c);
            snprintf(msg, sizeof(msg),
                     "the primary %s (%s) is down and failover has not completed within %.1f s "
                     "(PGSCALE_FAILOVER_WAIT; PGSCALE_FAILOVER is %s); could not connect for "
                     "db=%s user=%s: %s",
                     p->sh->node->name, p->sh->node->ep.text, cfg->failover_wait_ms / 1000.0,
                     cfg->failover == PGS_FAILOVER_AUTO ? "auto" : "follow", p->sh->database,
                     p->sh->user, p->last_error);
            client_fail(c, "08006", msg,
                        "retry the transaction on a new connection; SHOW NODES in the admin "
                        "console shows the nodes' state and the log says why failover has not "
                        "acted");
            continue;
        }
        if (outage && waited >= conn_to) {
            /* No server reachable for the whole connect timeout. */
            pool_cancel_wait(c);
            snprintf(msg, sizeof(msg),
                     "could not connect to the PostgreSQL server for db=%s user=%s within "
                     "%u ms (PGSCALE_SERVER_CONNECT_TIMEOUT): %s",
                     p->sh->database, p->sh->user, cfg->server_connect_timeout_ms,
                     p->last_error);
            client_fail(c, "08006", msg,
                        "check that PostgreSQL is running and that DATABASE_URL points at it");
            continue;
        }
        if (waited >= pool_to && is_paused(p)) {
            pool_cancel_wait(c);
            snprintf(msg, sizeof(msg),
                     "database \"%s\" is paused (PAUSE or KILL in the admin console); waited "
                     "%.1f s for RESUME",
                     p->sh->database, (double)waited / 1e6);
            client_fail(c, "53300", msg,
                        "run RESUME in the admin console (psql -d pgscale), or retry later");
        } else if (waited >= pool_to) {
            pool_cancel_wait(c);
            snprintf(msg, sizeof(msg),
                     "pool for db=%s user=%s is full (%d/%d server connections in use) after "
                     "waiting %.1f s",
                     p->sh->database, p->sh->user, atomic_load(&p->sh->open), p->sh->max_total,
                     (double)waited / 1e6);
            pgs_stat_add(&p->stats.pool_timeouts, 1);
            client_fail(c, "53300", msg,
                        "raise DB_POOL_SIZE or DB_MAX_OVERFLOW, shorten transactions, or raise "
                        "DB_POOL_TIMEOUT");
        }
    }
}

/* Overflow servers idle for PGSCALE_OVERFLOW_IDLE_TIMEOUT are closed until
 * the pool is back at pool_size.  Idle lists are used most-recent-first,
 * so under a load that needs them all no server ages; the oldest idle ones
 * (at the tail) are the ones the load no longer needs. */
static void close_idle_overflow(pgs_pool *p, uint64_t now)
{
    uint64_t grace = (uint64_t)g_pgs.cfg->overflow_idle_timeout_ms * 1000u;
    int excess = atomic_load(&p->sh->open) - p->sh->pool_size;
    if (grace == 0 || excess <= 0) return;
    pgs_list *it = p->idle.prev;
    while (excess > 0 && it != &p->idle) {
        pgs_server *sv = list_entry(it, pgs_server, node);
        it = it->prev;
        if (pgs_elapsed_us(now, sv->last_used_us) < grace) break; /* the rest are younger */
        list_del(&sv->node);
        pgs_count(&p->n_idle, -1);
        excess--;
        server_close(sv, "overflow connection no longer needed");
    }
}

/* Servers that sat out a cancel quarantine while clients waited. */
static void serve_waiters_from_idle(pgs_pool *p, uint64_t now)
{
    if (is_paused(p)) return; /* place_idle_server would put them back */
    pgs_list *it = p->idle.next;
    while (p->n_waiting > 0 && it != &p->idle) {
        pgs_server *sv = list_entry(it, pgs_server, node);
        it = it->next;
        if (quarantined(sv, now)) continue;
        list_del(&sv->node);
        pgs_count(&p->n_idle, -1);
        place_idle_server(sv);
    }
}

void pool_janitor(pgs_worker *w, uint64_t now)
{
    for (pgs_pool *p = w->pools; p; p = p->next) {
        if (p->n_waiting) {
            fail_waiters_on_timeout(p, now);
            if (p->n_waiting > p->n_connecting) open_for_waiters(p);
        }
        serve_waiters_from_idle(p, now);
        close_idle_overflow(p, now);
        /* idle servers: lifetime and idle timeout */
        pgs_list *it = p->idle.next;
        while (it != &p->idle) {
            pgs_server *sv = list_entry(it, pgs_server, node);
            it = it->next;
            if (server_expired(sv, now)) {
                list_del(&sv->node);
                pgs_count(&p->n_idle, -1);
                server_close(sv, "server_idle_timeout or server_lifetime reached");
            }
        }
        server_check_login_timeouts(p, now);
    }
    retire_unused(w, now);
}

void pool_give_idle(pgs_worker *w, pgs_pool_shared *sh)
{
    pgs_pool *p = __atomic_load_n(&sh->locals[w->id], __ATOMIC_ACQUIRE);
    if (!p || p->n_waiting > 0 || atomic_load(&sh->paused)) return;
    uint64_t since;
    while (!list_empty(&p->idle) && atomic_load(&sh->waiting) > 0) {
        int to = worker_with_waiters(p, &since);
        if (to < 0) break;
        pgs_server *sv = list_entry(p->idle.next, pgs_server, node);
        if (quarantined(sv, pgs_now_us())) break; /* the janitor places it later */
        list_del(&sv->node);
        pgs_count(&p->n_idle, -1);
        if (server_too_old(sv)) {
            server_close(sv, "closed by KILL or WAIT_CLOSE in the admin console");
            continue;
        }
        server_handoff(sv, to);
    }
}

void pool_adopt_handoffs(pgs_worker *w, pgs_pool_shared *sh)
{
    /* sh is alive: the message that brought it holds a reference */
    pthread_mutex_lock(&g_pgs.pools_lock);
    pgs_pool *p = local_attach_locked(w, sh);
    pthread_mutex_unlock(&g_pgs.pools_lock);
    for (;;) {
        pgs_server *sv = NULL;
        pthread_mutex_lock(&sh->lock);
        pgs_list *it;
        for (it = sh->handoff.next; it != &sh->handoff; it = it->next) {
            pgs_server *s = list_entry(it, pgs_server, node);
            if (s->transfer_to == w->id) {
                list_del(&s->node);
                sv = s;
                break;
            }
        }
        pthread_mutex_unlock(&sh->lock);
        if (!sv) break;
        if (server_adopt(w, p, sv) == 0) {
            list_add_tail(&p->used, &sv->node);
            pgs_count(&p->n_used, 1);
            pool_release(sv);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Admin console and reload                                                 */
/* ------------------------------------------------------------------------ */

void pool_pause(const char *db)
{
    pthread_mutex_lock(&g_pgs.pools_lock);
    if (!db)
        paused_all = true;
    else if (paused_index(db) < 0) {
        paused_dbs = pgs_xrealloc(paused_dbs, (size_t)(n_paused_dbs + 1) * sizeof(char *));
        paused_dbs[n_paused_dbs++] = pgs_xstrdup(db);
    }
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next)
        if (db_match(db, sh->database)) atomic_store(&sh->paused, 1);
    pthread_mutex_unlock(&g_pgs.pools_lock);
}

int pool_resume(const char *db)
{
    int rc = 0;
    pthread_mutex_lock(&g_pgs.pools_lock);
    if (!db) {
        if (!paused_all && n_paused_dbs == 0) rc = -1;
        paused_all = false;
        for (int i = 0; i < n_paused_dbs; i++) free(paused_dbs[i]);
        n_paused_dbs = 0;
    } else if (paused_all) {
        rc = -2; /* one database cannot be taken out of PAUSE-everything */
    } else {
        int i = paused_index(db);
        if (i < 0) {
            rc = -1;
        } else {
            free(paused_dbs[i]);
            paused_dbs[i] = paused_dbs[--n_paused_dbs];
        }
    }
    if (rc == 0) {
        for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next)
            if (db_match(db, sh->database)) atomic_store(&sh->paused, 0);
    }
    pthread_mutex_unlock(&g_pgs.pools_lock);
    return rc;
}

bool pool_db_paused(const char *db)
{
    pthread_mutex_lock(&g_pgs.pools_lock);
    bool r = paused_all || paused_index(db) >= 0;
    pthread_mutex_unlock(&g_pgs.pools_lock);
    return r;
}

void pool_each_paused(void (*fn)(void *ctx, const char *db), void *ctx)
{
    pthread_mutex_lock(&g_pgs.pools_lock);
    for (int i = 0; i < n_paused_dbs; i++) fn(ctx, paused_dbs[i]);
    pthread_mutex_unlock(&g_pgs.pools_lock);
}

void pool_close_before(const char *db, uint64_t before_us)
{
    pthread_mutex_lock(&g_pgs.pools_lock);
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next)
        if (db_match(db, sh->database)) atomic_store(&sh->close_before_us, before_us);
    pthread_mutex_unlock(&g_pgs.pools_lock);
}

int pool_active_servers(const char *db)
{
    int n = 0;
    pthread_mutex_lock(&g_pgs.pools_lock);
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next) {
        if (!db_match(db, sh->database)) continue;
        for (int i = 0; i < g_pgs.n_workers; i++) {
            pgs_pool *q = __atomic_load_n(&sh->locals[i], __ATOMIC_ACQUIRE);
            if (q) n += __atomic_load_n(&q->n_used, __ATOMIC_RELAXED);
        }
    }
    pthread_mutex_unlock(&g_pgs.pools_lock);
    return n;
}

int pool_old_servers(const char *db, uint64_t before_us)
{
    /* Servers on the workers' lists, plus those waiting in a hand-over
     * list.  A server between two workers is on neither for a moment but
     * still holds its budget: while the servers found do not add up to
     * the budgets in use, something is in transit and is counted as old. */
    int old = 0, found = 0, open = 0;
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker *w = &g_pgs.workers[i];
        pthread_mutex_lock(&w->lock);
        for (pgs_list *it = w->servers.next; it != &w->servers; it = it->next) {
            pgs_server *sv = list_entry(it, pgs_server, all_node);
            if (!db_match(db, sv->pool->sh->database)) continue;
            found++;
            if (sv->connect_us < before_us) old++;
        }
        pthread_mutex_unlock(&w->lock);
    }
    pthread_mutex_lock(&g_pgs.pools_lock);
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next) {
        if (!db_match(db, sh->database)) continue;
        open += atomic_load(&sh->open);
        pthread_mutex_lock(&sh->lock);
        for (pgs_list *it = sh->handoff.next; it != &sh->handoff; it = it->next) {
            pgs_server *sv = list_entry(it, pgs_server, node);
            found++;
            if (sv->connect_us < before_us) old++;
        }
        pthread_mutex_unlock(&sh->lock);
    }
    pthread_mutex_unlock(&g_pgs.pools_lock);
    if (open > found) old += open - found;
    return old;
}

void pool_reconfigure_all(const pgs_config *cfg)
{
    pthread_mutex_lock(&g_pgs.pools_lock);
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next) apply_settings(sh, cfg);
    pthread_mutex_unlock(&g_pgs.pools_lock);
}

int pool_admit_client(pgs_pool *p, char *msg, size_t msglen, char *hint, size_t hintlen)
{
    pgs_pool_shared *sh = p->sh;
    pgs_pool_settings ps;
    config_pool_settings(g_pgs.cfg, sh->database, sh->user, &ps);
    int rc = 0;
    if (ps.max_db_connections > 0 || ps.max_user_connections > 0) {
        /* Counted and taken under one lock, so that two clients logging in
         * on two workers cannot both take the last place.  Clients of
         * databases and users without a limit do not take it. */
        int db_n = 0, user_n = 0;
        pthread_mutex_lock(&g_pgs.pools_lock);
        for (pgs_pool_shared *q = g_pgs.pools; q; q = q->next) {
            int k = atomic_load(&q->n_clients);
            if (strcmp(q->database, sh->database) == 0) db_n += k;
            if (strcmp(q->user, sh->user) == 0) user_n += k;
        }
        if (ps.max_db_connections > 0 && db_n >= ps.max_db_connections) {
            snprintf(msg, msglen,
                     "too many clients for database \"%s\" (%d connected; max_db_connections of "
                     "databases.%s is %d)",
                     sh->database, db_n, sh->database, ps.max_db_connections);
            snprintf(hint, hintlen,
                     "raise databases.%s.max_db_connections in the config file and RELOAD, or "
                     "close idle connections",
                     sh->database);
            rc = -1;
        } else if (ps.max_user_connections > 0 && user_n >= ps.max_user_connections) {
            snprintf(msg, msglen,
                     "too many clients for user \"%s\" (%d connected; max_user_connections of "
                     "users.%s is %d)",
                     sh->user, user_n, sh->user, ps.max_user_connections);
            snprintf(hint, hintlen,
                     "raise users.%s.max_user_connections in the config file and RELOAD, or "
                     "close idle connections",
                     sh->user);
            rc = -1;
        } else {
            atomic_fetch_add(&sh->n_clients, 1);
        }
        pthread_mutex_unlock(&g_pgs.pools_lock);
    } else {
        atomic_fetch_add(&sh->n_clients, 1);
    }
    if (rc == 0) pgs_count(&p->n_active_clients, 1);
    return rc;
}

void pool_client_left(pgs_pool *p)
{
    pgs_count(&p->n_active_clients, -1);
    atomic_fetch_sub(&p->sh->n_clients, 1);
    check_counters(p);
    assert(atomic_load(&p->sh->n_clients) >= 0);
}

/* --- the workers' side of the control messages --- */

static void serve_waiters(pgs_pool *p, uint64_t now)
{
    if (p->n_waiting == 0 || is_paused(p)) return;
    serve_waiters_from_idle(p, now);
    if (p->n_waiting > p->n_connecting) open_for_waiters(p);
}

void pool_serve_resumed(pgs_worker *w)
{
    uint64_t now = pgs_now_us();
    for (pgs_pool *p = w->pools; p; p = p->next) serve_waiters(p, now);
}

void pool_close_old_idle(pgs_worker *w)
{
    for (pgs_pool *p = w->pools; p; p = p->next) {
        pgs_list *it = p->idle.next;
        while (it != &p->idle) {
            pgs_server *sv = list_entry(it, pgs_server, node);
            it = it->next;
            if (!server_too_old(sv)) continue;
            list_del(&sv->node);
            pgs_count(&p->n_idle, -1);
            server_close(sv, "closed by KILL or WAIT_CLOSE in the admin console");
        }
    }
}

void pool_apply_config(pgs_worker *w)
{
    uint64_t now = pgs_now_us();
    for (pgs_pool *p = w->pools; p; p = p->next) {
        /* Smaller: close idle servers beyond the new size, oldest idle
         * first; busy ones are closed when they come back
         * (place_idle_server).  Workers doing this at the same moment may
         * close one or two more than needed; the pool grows back on demand. */
        pgs_list *it = p->idle.prev;
        while (it != &p->idle &&
               atomic_load(&p->sh->open) > atomic_load(&p->sh->max_total)) {
            pgs_server *sv = list_entry(it, pgs_server, node);
            it = it->prev;
            list_del(&sv->node);
            pgs_count(&p->n_idle, -1);
            server_close(sv, "the pool was made smaller by a configuration reload");
        }
        /* Larger: clients that waited for the budget get servers now. */
        serve_waiters(p, now);
    }
}

/* Collects pointers first: failing a client can release or close servers,
 * and nothing may unlink the list node a walk stands on. */
void pool_kill_local(pgs_worker *w, const char *db)
{
    size_t n = 0, cap = 16;
    pgs_client **cl = pgs_xmalloc(cap * sizeof(*cl));
    for (pgs_list *it = w->clients.next; it != &w->clients; it = it->next) {
        pgs_client *c = list_entry(it, pgs_client, node);
        if (c->is_admin || !c->database || c->s.closing || c->want_close) continue;
        if (!db_match(db, c->database)) continue;
        if (n == cap) cl = pgs_xrealloc(cl, (cap *= 2) * sizeof(*cl));
        cl[n++] = c;
    }
    char msg[256];
    snprintf(msg, sizeof(msg),
             "terminating connection due to administrator command (KILL%s%s in the pgscale "
             "admin console)",
             db ? " " : "", db ? db : "");
    for (size_t i = 0; i < n; i++)
        if (!cl[i]->s.closing && !cl[i]->want_close)
            client_fail(cl[i], "57P01", msg, "reconnect once the database is resumed");
    free(cl);

    size_t m = 0, scap = 16;
    pgs_server **sl = pgs_xmalloc(scap * sizeof(*sl));
    for (pgs_list *it = w->servers.next; it != &w->servers; it = it->next) {
        pgs_server *sv = list_entry(it, pgs_server, all_node);
        if (sv->s.closing || !db_match(db, sv->pool->sh->database)) continue;
        if (m == scap) sl = pgs_xrealloc(sl, (scap *= 2) * sizeof(*sl));
        sl[m++] = sv;
    }
    for (size_t i = 0; i < m; i++)
        if (!sl[i]->s.closing) server_close(sl[i], "KILL in the admin console");
    free(sl);
    if (n || m)
        log_info("worker %d: KILL %s: closed %zu clients and %zu server connections", w->id,
                 db ? db : "(all)", n, m);
}

static void snap_add_counters(pgs_pool_snap *o, pgs_pool_stats *st)
{
#define RD(x) atomic_load_explicit(&st->x, memory_order_relaxed)
    o->xact_count += RD(xact_count);
    o->query_count += RD(query_count);
    o->bytes_in += RD(bytes_in);
    o->bytes_out += RD(bytes_out);
    o->xact_us += RD(xact_us);
    o->query_us += RD(query_us);
    o->wait_us += RD(wait_us);
    o->wait_count += RD(wait_count);
    o->checkouts += RD(checkouts);
    o->pool_timeouts += RD(pool_timeouts);
    for (int b = 0; b < PGS_HIST_BUCKETS; b++) {
        o->xact_hist[b] += RD(xact_hist[b]);
        o->wait_hist[b] += RD(wait_hist[b]);
    }
    for (int e = 0; e < PGS_ERR_CLASSES; e++) o->errors[e] += RD(errors[e]);
#undef RD
}

void pool_snapshot(pgs_pool_shared *sh, uint64_t now, pgs_pool_snap *o)
{
    memset(o, 0, sizeof(*o));
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_pool *p = __atomic_load_n(&sh->locals[i], __ATOMIC_ACQUIRE);
        if (p) {
            int waiting = __atomic_load_n(&p->n_waiting, __ATOMIC_RELAXED);
            o->cl_waiting += waiting;
            o->cl_active += __atomic_load_n(&p->n_active_clients, __ATOMIC_RELAXED) - waiting;
            o->sv_idle += __atomic_load_n(&p->n_idle, __ATOMIC_RELAXED);
            o->sv_login += __atomic_load_n(&p->n_login, __ATOMIC_RELAXED);
            o->sv_active += __atomic_load_n(&p->n_used, __ATOMIC_RELAXED);
            /* the waiting list is FIFO: its head has waited longest */
            uint64_t head = atomic_load_explicit(&p->head_wait_us, memory_order_relaxed);
            if (head && waiting && pgs_elapsed_us(now, head) > o->maxwait_us)
                o->maxwait_us = pgs_elapsed_us(now, head);
            snap_add_counters(o, &p->stats);
        }
        pgs_pool *r = __atomic_load_n(&sh->retired[i], __ATOMIC_ACQUIRE);
        if (r && r != p) snap_add_counters(o, &r->stats);
    }
    if (o->cl_active < 0) o->cl_active = 0;
    o->sv_total = atomic_load(&sh->open);
    o->pool_size = atomic_load(&sh->pool_size);
    o->max_total = atomic_load(&sh->max_total);
    o->sv_overflow = o->sv_total > o->pool_size ? o->sv_total - o->pool_size : 0;
    o->pinned = atomic_load(&sh->pinned);
}
