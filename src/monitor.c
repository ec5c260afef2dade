/* The node monitor (see monitor.h).  Owns the health checks and failover
 * decisions; the node list and the atomics it fills are topology.c's, and
 * what the workers do with a node's state is the routing code's.
 *
 * One thread per node, each with one libpq connection kept open: a node
 * that hangs (a stopped process, a dropped network) costs its own thread a
 * health_check_timeout, never the other nodes' checks.  The threads share
 * `lock` for the settings, the wake-ups and the failover decision, which
 * any of them may take after its own check (it reads every node's last
 * state from the atomics). */
#include "monitor.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "endpoint.h"
#include "failover_lock.h"
#include "pool.h"
#include "pqconn.h"
#include "topology.h"

#define BACKOFF_MAX_MS 3000u   /* retry delay of a failing node, at most */
#define PROMOTE_WAIT_S 30      /* pg_promote(true, 30) */
/* The failover lock's TTL: at least this, and 3 x failover_timeout; far
 * above a promotion (PROMOTE_WAIT_S at most) and the repointing after. */
#define LOCK_TTL_MIN_MS 60000u
#define LOCK_RETRY_MS 500      /* lock held elsewhere or Redis away: next try */

const char monitor_poll_sql[] =
    /* the fourth column, PostgreSQL's replay delay (0 when the replica has
     * replayed all it received), is only the fallback for lag_ms: see
     * `history` below */
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() "
    "END, pg_last_wal_receive_lsn(), "
    "CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() "
    "THEN 0 ELSE GREATEST(0, COALESCE((EXTRACT(EPOCH FROM now() - "
    "pg_last_xact_replay_timestamp()) * 1000)::bigint, 0)) END, "
    /* synchronous replication, for failover: on a replica the conninfo its
     * WAL receiver uses (the application name the primary knows it by), on
     * the primary synchronous_standby_names and each standby's
     * "sync_state application_name" (application names are printable
     * ASCII: a newline cannot be in one).  pg_stat_replication and
     * pg_stat_wal_receiver show these to superusers and pg_read_all_stats
     * only; NULL otherwise. */
    "CASE WHEN pg_is_in_recovery() THEN (SELECT conninfo FROM pg_stat_wal_receiver) END, "
    "CASE WHEN NOT pg_is_in_recovery() THEN current_setting('synchronous_standby_names') END, "
    "CASE WHEN NOT pg_is_in_recovery() THEN (SELECT string_agg(COALESCE(sync_state, '?') || "
    "' ' || application_name, E'\\n') FROM pg_stat_replication) END, "
    /* a replica's cluster_name: the application name its WAL receiver
     * gives when its conninfo names none */
    "CASE WHEN pg_is_in_recovery() THEN current_setting('cluster_name') END";

typedef struct mnode {
    pgs_node *n;
    pthread_t thread;
    bool started;
    PGconn *conn;
    uint32_t conn_timeout_ms;  /* the statement_timeout conn was opened with */
    bool hook_done;            /* the primary hook ran on conn */
    unsigned hook_gen;         /* ... for this hook_wanted */
    uint32_t backoff_ms;       /* 0: the last check answered */
    bool wake;                 /* under lock: check now */
    /* what was last logged, so each change is logged once */
    int logged_state;          /* -1: nothing yet */
    int logged_role;
    int64_t fail_since_ms;     /* under lock; 0: answering */
    /* under lock: the application name this replica's WAL receiver gives
     * the primary ("" unknown), and what the primary's last check said of
     * it (pgs_sync_state) */
    char appname[64];
    int sync_state;
    /* under lock: PGS_SYNC_SYNC or _QUORUM when it was among the standbys
     * the primary waited for the last time it waited for any (a standby
     * that disconnects keeps it until the primary names others: until
     * then no commit was acknowledged without it); else 0 */
    int was_sync;
    /* under lock: a check found it in recovery, and then one found it out
     * of recovery: promoted while pgscale watched (by an HA manager, a
     * person or pgscale).  A node never seen in recovery is not: a server
     * listed as a replica by mistake must not take over at a blip. */
    bool seen_replica;
    bool promoted;
    /* under lock, from the primary's last check: 1 when its
     * pg_stat_replication lists this node's application name (which no
     * other node of ours has), 0 when it lists others but not this one,
     * -1 when it cannot be told (the list hidden from the monitoring user,
     * no WAL sender at all, the name unknown or shared) */
    int on_primary;
} mnode;

static int64_t now_ms_raw(void)
{
    return pqconn_now_ms();
}

static mnode mnodes[PGS_MAX_NODES];
static int n_mnodes;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond;
static bool stopping;
static const pgs_config *start_cfg;
static _Atomic(monitor_primary_hook_fn) primary_hook;
static bool want_primary_thread; /* monitor_want_primary_thread */
/* monitor_rerun_primary_hook: the hook runs again when this moves */
static _Atomic unsigned hook_wanted;

/* reloadable settings, under lock */
static uint32_t interval_ms = 100, timeout_ms = 2000, failover_timeout_ms = 10000;
static int failover_mode = PGS_FAILOVER_AUTO;

/* The primary's WAL position history: each time its thread reads a new
 * position, (when, position).  A replica's time lag is how long ago the
 * primary first had WAL that the replica has not replayed yet: the oldest
 * entry past its replay position (as pg_stat_replication's replay_lag, but
 * read from here).  PostgreSQL's own replay delay (the check's fourth
 * column) is 0 for a replica that has replayed all it received even when
 * it receives nothing, and right after an idle spell it is as long as the
 * spell; it is used only before the primary's first check.  Under lock. */
#define HISTORY 512
static struct {
    int64_t t_ms;
    uint64_t lsn;
} history[HISTORY];
static int hist_head, hist_n;   /* oldest at hist_head */

static void history_add(uint64_t lsn)
{
    if (hist_n > 0 && history[(hist_head + hist_n - 1) % HISTORY].lsn >= lsn) return;
    int at = (hist_head + hist_n) % HISTORY;
    if (hist_n == HISTORY) hist_head = (hist_head + 1) % HISTORY;
    else hist_n++;
    history[at].t_ms = now_ms_raw();
    history[at].lsn = lsn;
}

/* -1: no history yet. */
static int64_t history_lag_ms(uint64_t replayed)
{
    if (hist_n == 0) return -1;
    for (int i = 0; i < hist_n; i++) {
        int k = (hist_head + i) % HISTORY;
        if (history[k].lsn > replayed) return PGS_MAX(now_ms_raw() - history[k].t_ms, 0);
    }
    return 0;
}

/* failover state, under lock */
static bool failover_running;
static int64_t primary_bad_since_ms;   /* 0: the primary is fine */
static int64_t promote_retry_ms;       /* after a failed promotion: not before */
static uint32_t promote_backoff_ms;    /* doubles after each failed promotion */
static char failover_said[600];        /* the last "not acting because" logged */
/* synchronous_standby_names at the primary's last check ("" none): kept
 * while the primary is down, it decides which replicas may be promoted */
static char sync_names[256];
static char failover_note[400];        /* promote(): appended to the FAILOVER line */
static char cluster_sysid[32];         /* the lock's key; read at the first failover */

void monitor_set_primary_hook(monitor_primary_hook_fn fn)
{
    atomic_store(&primary_hook, fn);
}

void monitor_want_primary_thread(void)
{
    want_primary_thread = true;
}

void monitor_configure(const pgs_config *cfg)
{
    pthread_mutex_lock(&lock);
    interval_ms = cfg->monitor_interval_ms;
    timeout_ms = cfg->health_check_timeout_ms;
    failover_timeout_ms = cfg->failover_timeout_ms;
    failover_mode = cfg->failover;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    /* RELOAD: function volatility is read again too */
    atomic_fetch_add(&hook_wanted, 1);
}

void monitor_rerun_primary_hook(void)
{
    atomic_fetch_add(&hook_wanted, 1);
    monitor_wake();
}

void monitor_wake(void)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < n_mnodes; i++) mnodes[i].wake = true;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
}

int monitor_unfence(const char *name, const char *who, char sqlstate[6], char *msg,
                    size_t msglen, char *warning, size_t warnlen)
{
    warning[0] = '\0';
    snprintf(sqlstate, 6, "55000");
    pthread_mutex_lock(&lock);
    mnode *m = NULL;
    for (int i = 0; i < n_mnodes && !m; i++)
        if (strcmp(mnodes[i].n->name, name) == 0) m = &mnodes[i];
    if (!m) {
        pthread_mutex_unlock(&lock);
        snprintf(sqlstate, 6, "42704");
        snprintf(msg, msglen, "no node is called \"%s\" (SHOW NODES lists them)", name);
        return -1;
    }
    pgs_node *n = m->n;
    const pgs_node *p = topology_primary();
    int st = atomic_load(&n->state);
    int rc = -1;
    if (st != PGS_NODE_FENCED) {
        snprintf(msg, msglen, "%s is not fenced (it is %s): UNFENCE takes back a former primary "
                 "that a failover fenced", n->name, topology_state_name(st));
    } else if (m->fail_since_ms || !atomic_load(&n->checked_us)) {
        snprintf(msg, msglen, "%s does not answer the monitor's checks: UNFENCE takes a node that "
                 "answers as a replica of the primary (%s)", n->name, p->name);
    } else if (atomic_load(&n->role) != PGS_ROLE_REPLICA) {
        snprintf(msg, msglen, "%s says it is a primary: it may hold writes the primary (%s) never "
                 "saw; rejoin it as a replica of %s (pg_rewind or a new base backup, then "
                 "standby.signal) and run UNFENCE again", n->name, p->name, p->name);
    } else if (m->on_primary == 0) {
        snprintf(msg, msglen, "%s is a replica, but the primary (%s) does not list it in "
                 "pg_stat_replication (application_name \"%s\"): it does not stream from the "
                 "primary; point its primary_conninfo at %s (%s)", n->name, p->name, m->appname,
                 p->name, p->ep.text);
    } else {
        if (m->on_primary < 0)
            snprintf(warning, warnlen, "could not check that %s streams from the primary (%s): "
                     "%s; its reads are trusted to the rejoin", n->name, p->name,
                     !m->appname[0] ? "its primary_conninfo is hidden from the monitoring user "
                     "(pg_read_all_settings)" : "the primary's pg_stat_replication lists no "
                     "standby by name to the monitoring user (pg_read_all_stats), or two "
                     "nodes share its application_name");
        atomic_store(&n->state, PGS_NODE_UP);
        rc = 0;
    }
    pthread_mutex_unlock(&lock);
    if (rc == 0)
        log_warn("UNFENCE %s by %s: %s (%s) is a replica of the primary (%s) again and takes "
                 "reads%s%s", n->name, who, n->name, n->ep.text, p->name,
                 warning[0] ? "; " : "", warning);
    return rc;
}

/* The connection parameters of node n: its URL's user, password, database
 * and sslmode (server_tls's when the URL has none), server_tls's files. */
static void node_params(const pgs_node *n, pqconn_params *pp, const char *what,
                        const char *options, uint32_t tmo)
{
    memset(pp, 0, sizeof(*pp));
    pp->cfg = start_cfg;
    pp->url = n->url;
    pp->user = n->url->user;
    pp->password = n->url->password;
    pp->dbname = n->url->dbname;
    pp->sslmode = config_url_param(n->url, "sslmode");
    pp->application_name = "pgscale-monitor";
    pp->options = options;
    pp->timeout_ms = tmo;
    pp->what = what;
}

static int64_t now_ms(void)
{
    return pqconn_now_ms();
}

static uint32_t cur_timeout_ms(void)
{
    pthread_mutex_lock(&lock);
    uint32_t v = timeout_ms;
    pthread_mutex_unlock(&lock);
    return v;
}

/* --- one check --- */

static void close_conn(mnode *m)
{
    if (m->conn) PQfinish(m->conn);
    m->conn = NULL;
    m->hook_done = false;
}

static void check_failed(mnode *m, const char *why)
{
    pgs_node *n = m->n;
    close_conn(m);
    char msg[256];
    snprintf(msg, sizeof(msg), "%s", why);
    topology_set_error(n, msg);
    int st = atomic_load(&n->state);
    if (st != PGS_NODE_FENCED) atomic_store(&n->state, PGS_NODE_DOWN);
    pthread_mutex_lock(&lock);
    if (!m->fail_since_ms) m->fail_since_ms = now_ms();
    uint32_t iv = interval_ms;
    pthread_mutex_unlock(&lock);
    m->backoff_ms = m->backoff_ms ? PGS_MIN(m->backoff_ms * 2, BACKOFF_MAX_MS)
                                  : PGS_MIN(PGS_MAX(iv, 100u), BACKOFF_MAX_MS);
    if (m->logged_state != PGS_NODE_DOWN && st != PGS_NODE_FENCED) {
        log_warn("monitor: %s (%s) is down: %s", n->name, n->ep.text, msg);
        m->logged_state = PGS_NODE_DOWN;
    }
}

static bool get_lsn(const PGresult *r, int col, uint64_t *out)
{
    *out = 0;
    if (PQgetisnull(r, 0, col)) return true;
    return topology_parse_lsn(PQgetvalue(r, 0, col), out) == 0;
}

/* --- synchronous replication --- */

/* The application name a WAL receiver's conninfo gives the primary:
 * application_name, else fallback_application_name, else what the WAL
 * receiver passes as the fallback (cluster_name, else "walreceiver"; not
 * shown in pg_stat_wal_receiver's conninfo), as libpq picks it.  "" when
 * unknown (the conninfo hidden). */
static void receiver_appname(const char *conninfo, const char *cluster_name, char *out,
                             size_t outlen)
{
    out[0] = '\0';
    if (!conninfo) return;
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    if (!opts) return;
    const char *app = NULL, *fallback = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || !*o->val) continue;
        if (strcmp(o->keyword, "application_name") == 0) app = o->val;
        else if (strcmp(o->keyword, "fallback_application_name") == 0) fallback = o->val;
    }
    snprintf(out, outlen, "%s",
             app               ? app
             : fallback        ? fallback
             : cluster_name && *cluster_name ? cluster_name
                                             : "walreceiver");
    PQconninfoFree(opts);
}

/* The primary's pg_stat_replication lines ("sync_state application_name";
 * '?' when hidden) that name the standby called name: how many, and the
 * last one's sync state (pgs_sync_state). */
static int standby_lines(const char *list, const char *name, int *state)
{
    int found = 0;
    size_t nl = strlen(name);
    for (const char *line = list; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        const char *sp = memchr(line, ' ', len);
        if (sp && (size_t)(line + len - sp - 1) == nl && memcmp(sp + 1, name, nl) == 0) {
            found++;
            size_t sl = (size_t)(sp - line);
            *state = sl == 4 && memcmp(line, "sync", 4) == 0         ? PGS_SYNC_SYNC
                     : sl == 6 && memcmp(line, "quorum", 6) == 0     ? PGS_SYNC_QUORUM
                     : sl == 9 && memcmp(line, "potential", 9) == 0  ? PGS_SYNC_POTENTIAL
                     : sl == 5 && memcmp(line, "async", 5) == 0      ? PGS_SYNC_ASYNC
                                                                     : PGS_SYNC_UNKNOWN;
        }
        line = end ? end + 1 : NULL;
    }
    return found;
}

/* Whether a node of ours other than node i gives the primary the same
 * application name (the primary p itself aside: its name is left from when
 * it was a replica).  The primary's list then cannot tell them apart. */
static bool appname_shared(int i, const pgs_node *p)
{
    for (int j = 0; j < n_mnodes; j++)
        if (j != i && mnodes[j].n != p && strcmp(mnodes[j].appname, mnodes[i].appname) == 0)
            return true;
    return false;
}

/* The check's synchronous-replication columns (4-7, see monitor_poll_sql):
 * a replica's application name; on the primary, each node's sync state. */
static void sync_from_check(mnode *m, const PGresult *r, bool in_recovery)
{
    pthread_mutex_lock(&lock);
    if (in_recovery) {
        receiver_appname(PQgetisnull(r, 0, 4) ? NULL : PQgetvalue(r, 0, 4),
                         PQgetisnull(r, 0, 7) ? NULL : PQgetvalue(r, 0, 7), m->appname,
                         sizeof(m->appname));
    } else if (topology_primary() == m->n) {
        const char *names = PQgetisnull(r, 0, 5) ? "" : PQgetvalue(r, 0, 5);
        const char *list = PQgetisnull(r, 0, 6) ? NULL : PQgetvalue(r, 0, 6);
        snprintf(sync_names, sizeof(sync_names), "%s", names);
        bool waited = false; /* any standby waited for now */
        for (int i = 0; i < n_mnodes; i++) {
            mnode *o = &mnodes[i];
            /* the primary's lines naming o: -1 when its name is unknown or
             * two of our nodes share it */
            int st = PGS_SYNC_ASYNC; /* not connected: not waited for */
            int found = o != m && o->appname[0] && !appname_shared(i, m->n)
                            ? standby_lines(list, o->appname, &st)
                            : -1;
            /* two standbys under one name: which of them is waited for is
             * unknown */
            if (o == m || !names[0]) st = PGS_SYNC_OFF;
            else if (found < 0 || found > 1) st = PGS_SYNC_UNKNOWN;
            o->sync_state = st;
            atomic_store(&o->n->sync_state, st);
            waited |= st == PGS_SYNC_SYNC || st == PGS_SYNC_QUORUM;
            o->on_primary = found < 0 || !list || !*list ? -1 : found > 0;
        }
        for (int i = 0; i < n_mnodes && (waited || !names[0]); i++) {
            int st = mnodes[i].sync_state;
            mnodes[i].was_sync = st == PGS_SYNC_SYNC || st == PGS_SYNC_QUORUM ? st : 0;
        }
    }
    pthread_mutex_unlock(&lock);
}

static void check_one(mnode *m)
{
    pgs_node *n = m->n;
    pthread_mutex_lock(&lock);
    uint32_t tmo = timeout_ms;
    pthread_mutex_unlock(&lock);
    char *error = NULL;
    if (m->conn && (PQstatus(m->conn) != CONNECTION_OK || m->conn_timeout_ms != tmo))
        close_conn(m);
    if (!m->conn) {
        /* statement_timeout bounds the query on the server's side too, so
         * a check we gave up on does not stay running there */
        char options[64], what[64];
        snprintf(options, sizeof(options), "-c statement_timeout=%u", (unsigned)tmo);
        snprintf(what, sizeof(what), "%s", n->name);
        pqconn_params pp;
        node_params(n, &pp, what, options, tmo);
        m->conn = pqconn_open(&pp, &error);
        if (!m->conn) {
            check_failed(m, error);
            free(error);
            return;
        }
        m->conn_timeout_ms = tmo;
    }
    PGresult *r = pqconn_exec(m->conn, monitor_poll_sql, now_ms() + tmo, &error);
    if (!r) {
        char msg[300];
        snprintf(msg, sizeof(msg), "%s: %s", n->name, error);
        free(error);
        check_failed(m, msg);
        return;
    }
    uint64_t lsn, rlsn;
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) != 8 ||
        !get_lsn(r, 1, &lsn) || !get_lsn(r, 2, &rlsn)) {
        char *e = pqconn_error_text(n->name, PQresultStatus(r) == PGRES_TUPLES_OK
                                                 ? "the health check returned an unexpected row"
                                                 : PQresultErrorMessage(r));
        PQclear(r);
        check_failed(m, e);
        free(e);
        return;
    }
    bool in_recovery = PQgetvalue(r, 0, 0)[0] == 't';
    long long delay = strtoll(PQgetvalue(r, 0, 3), NULL, 10);
    sync_from_check(m, r, in_recovery);
    PQclear(r);

    int role = in_recovery ? PGS_ROLE_REPLICA : PGS_ROLE_PRIMARY;
    atomic_store(&n->lsn, lsn);
    atomic_store(&n->receive_lsn, rlsn);
    uint64_t lag = 0;
    if (in_recovery) {
        /* against the primary's position as its own thread last read it
         * (up to one interval old: clamped, never negative) */
        pgs_node *p = topology_primary();
        uint64_t plsn = p != n ? atomic_load(&p->lsn) : 0;
        lag = plsn > lsn ? plsn - lsn : 0;
    }
    atomic_store(&n->lag_bytes, lag);
    int64_t lag_ms = 0;
    pthread_mutex_lock(&lock);
    if (in_recovery) m->seen_replica = true;
    m->promoted = !in_recovery && m->seen_replica;
    if (!in_recovery && topology_primary() == n) history_add(lsn);
    if (in_recovery) {
        lag_ms = history_lag_ms(lsn);
        if (lag_ms < 0) lag_ms = PGS_MAX(delay, 0);
    }
    pthread_mutex_unlock(&lock);
    atomic_store(&n->lag_ms, (uint32_t)PGS_MIN(lag_ms, (int64_t)UINT32_MAX));
    atomic_store(&n->role, role);
    atomic_store(&n->checked_us, pgs_now_us());
    int st = atomic_load(&n->state);
    if (st != PGS_NODE_FENCED) atomic_store(&n->state, PGS_NODE_UP);

    pthread_mutex_lock(&lock);
    int64_t down_for = m->fail_since_ms ? now_ms() - m->fail_since_ms : 0;
    m->fail_since_ms = 0;
    pthread_mutex_unlock(&lock);
    char pos[32];
    topology_format_lsn(lsn, pos, sizeof(pos));
    if (m->logged_state == PGS_NODE_DOWN)
        log_info("monitor: %s (%s) is up again after %.1f s: %s at %s", n->name, n->ep.text,
                 (double)down_for / 1000.0, topology_role_name(role), pos);
    else if (m->logged_state < 0)
        log_info("monitor: %s (%s) is up: %s at %s", n->name, n->ep.text,
                 topology_role_name(role), pos);
    else if (m->logged_role != role)
        log_warn("monitor: %s (%s) now says it is a %s (it was a %s)", n->name, n->ep.text,
                 topology_role_name(role), topology_role_name(m->logged_role));
    m->logged_state = PGS_NODE_UP;
    m->logged_role = role;
    m->backoff_ms = 0;

    monitor_primary_hook_fn hook = atomic_load(&primary_hook);
    unsigned wanted = atomic_load(&hook_wanted);
    if (hook && (!m->hook_done || m->hook_gen != wanted) && !in_recovery &&
        topology_primary() == n && st != PGS_NODE_FENCED) {
        m->hook_done = true;
        m->hook_gen = wanted;
        hook(m->conn);
    }
}

/* --- failover --- */

/* The WAL a replica holds: what it received (flushed), at least what it
 * replayed. */
static uint64_t held_lsn(pgs_node *n)
{
    return PGS_MAX(atomic_load(&n->receive_lsn), atomic_load(&n->lsn));
}

/* Logs a reason for not acting once (until it changes). */
static void say_once(const char *msg)
{
    if (strcmp(failover_said, msg) == 0) return;
    snprintf(failover_said, sizeof(failover_said), "%s", msg);
    log_warn("failover: %s", msg);
}

static void switch_primary(pgs_node *old, pgs_node *to, const char *why, int64_t since_ms)
{
    topology_set_primary(to->index);
    /* a former primary taken back (see evaluate) is fenced no more */
    bool was_fenced = atomic_load(&to->state) == PGS_NODE_FENCED;
    if (was_fenced) atomic_store(&to->state, PGS_NODE_UP);
    atomic_store(&old->state, PGS_NODE_FENCED);
    /* from now on the old primary counts as promoted only once it has been
     * seen in recovery again (rejoined as a replica) and then out of it */
    for (int i = 0; i < n_mnodes; i++)
        if (mnodes[i].n == old) mnodes[i].seen_replica = mnodes[i].promoted = false;
    /* the clients waiting for the old primary go to the new one now */
    pool_node_fenced(old);
    char pos[32];
    topology_format_lsn(atomic_load(&to->lsn), pos, sizeof(pos));
    log_error("FAILOVER: %s (%s) is the primary now, at %s, in place of %s (%s), which %s; "
              "%.1f s after the primary was first seen failing; %s is fenced (never used "
              "again until it rejoins as a replica and UNFENCE is run or it is promoted, or "
              "pgscale restarts)%s%s",
              to->name, to->ep.text, pos, old->name, old->ep.text, why,
              (double)(now_ms() - since_ms) / 1000.0, old->name,
              was_fenced ? "; it was fenced, and has been a replica since" : "", failover_note);
    failover_said[0] = '\0';
    primary_bad_since_ms = 0;
    hist_n = 0; /* the new primary's positions are another history */
    for (int i = 0; i < n_mnodes; i++) mnodes[i].wake = true;
    pthread_cond_broadcast(&cond);
}

/* Runs one statement on a fresh connection to n; the first row's first
 * value (heap) or NULL with *error. */
static char *run_on(const pgs_node *n, const char *sql, uint32_t tmo_ms, char **error)
{
    pqconn_params pp;
    char what[64];
    snprintf(what, sizeof(what), "%s", n->name);
    node_params(n, &pp, what, NULL, cur_timeout_ms());
    PGconn *c = pqconn_open(&pp, error);
    if (!c) return NULL;
    char *err = NULL, *val = NULL;
    PGresult *r = pqconn_exec(c, sql, now_ms() + tmo_ms, &err);
    if (!r) {
        *error = err;
    } else if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK) {
        *error = pqconn_error_text(n->name, PQresultErrorMessage(r));
    } else {
        val = pgs_xstrdup(PQntuples(r) > 0 && PQnfields(r) > 0 ? PQgetvalue(r, 0, 0) : "");
    }
    if (r) PQclear(r);
    PQfinish(c);
    return val;
}

/* Text built for ALTER SYSTEM: a few hundred bytes; too long is refused. */
typedef struct tbuf {
    char p[4096];
    size_t len;
    bool over;
} tbuf;

static void tb_putc(tbuf *b, char c)
{
    if (b->len + 1 >= sizeof(b->p)) {
        b->over = true;
        return;
    }
    b->p[b->len++] = c;
    b->p[b->len] = '\0';
}

static void tb_puts(tbuf *b, const char *s)
{
    for (; *s; s++) tb_putc(b, *s);
}

/* primary_conninfo of replica n pointed at the new primary: its own
 * conninfo (user, password, application_name, TLS ...) with the host and
 * port replaced. */
static bool repointed_conninfo(const char *old, const pgs_node *to, tbuf *b)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(old, &perr);
    if (!opts) {
        PQfreemem(perr);
        return false;
    }
    char port[16];
    snprintf(port, sizeof(port), "%d", to->url->port ? to->url->port : 5432);
    const char *host = to->url->host && *to->url->host ? to->url->host : PGS_DEFAULT_SOCKET_DIR;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        const char *v = o->val;
        if (strcmp(o->keyword, "host") == 0) v = host;
        else if (strcmp(o->keyword, "port") == 0) v = port;
        else if (strcmp(o->keyword, "hostaddr") == 0) v = NULL;
        if (!v) continue;
        if (b->len) tb_putc(b, ' ');
        tb_puts(b, o->keyword);
        tb_puts(b, "='");
        for (const char *p = v; *p; p++) {
            if (*p == '\'' || *p == '\\') tb_putc(b, '\\');
            tb_putc(b, *p);
        }
        tb_putc(b, '\'');
    }
    PQconninfoFree(opts);
    return !b->over;
}

static void repoint_replica(const pgs_node *r, const pgs_node *to)
{
    char *err = NULL;
    char *old = run_on(r, "SHOW primary_conninfo", cur_timeout_ms(), &err);
    if (!old) {
        log_error("failover: could not point %s at %s: %s", r->name, to->name, err);
        free(err);
        return;
    }
    static tbuf ci, sql; /* failover runs on one thread at a time */
    memset(&ci, 0, sizeof(ci));
    memset(&sql, 0, sizeof(sql));
    bool ok = repointed_conninfo(old, to, &ci);
    free(old);
    if (!ok) {
        log_error("failover: could not point %s at %s: its primary_conninfo does not parse",
                  r->name, to->name);
        return;
    }
    /* a standard-conforming literal: quotes doubled, backslashes as they are */
    tb_puts(&sql, "ALTER SYSTEM SET primary_conninfo = '");
    for (const char *p = ci.p; *p; p++) {
        if (*p == '\'') tb_putc(&sql, '\'');
        tb_putc(&sql, *p);
    }
    tb_puts(&sql, "'");
    if (sql.over) {
        log_error("failover: could not point %s at %s: its primary_conninfo is too long",
                  r->name, to->name);
        return;
    }
    char *v = run_on(r, sql.p, cur_timeout_ms(), &err);
    if (v) {
        free(v);
        v = run_on(r, "SELECT pg_reload_conf()", cur_timeout_ms(), &err);
    }
    if (!v) {
        log_error("failover: could not point %s at %s (ALTER SYSTEM and pg_reload_conf() need "
                  "a superuser): %s",
                  r->name, to->name, err);
        free(err);
        return;
    }
    free(v);
    log_warn("failover: %s now replicates from %s (%s)", r->name, to->name, to->ep.text);
}

/* Every replica but the old and the new primary follows the new one. */
static void repoint_all(const pgs_node *old, const pgs_node *to)
{
    for (int i = 0; i < n_mnodes; i++) {
        pgs_node *r = mnodes[i].n;
        if (r == to || r == old || atomic_load(&r->state) == PGS_NODE_FENCED) continue;
        repoint_replica(r, to);
    }
}

/* promote() did not get the failover lock (or lost it): says why once and
 * tries again shortly.  Another instance that has it promotes; evaluate()
 * follows the node that then says it is the primary. */
static void lock_not_taken(const char *msg)
{
    pthread_mutex_lock(&lock);
    say_once(msg);
    promote_retry_ms = now_ms() + LOCK_RETRY_MS;
    failover_note[0] = '\0';
    failover_running = false;
    pthread_mutex_unlock(&lock);
}

/* With REDIS_URL, only the holder of the cluster's failover lock promotes
 * (failover_lock.h).  The key is the cluster's system identifier, which
 * every node of a streaming cluster shares: read from the candidate, since
 * the primary is down by now.  false: not taken, said why. */
static bool take_lock(pgs_node *best, failover_grant *g, uint32_t *ttl_ms)
{
    char msg[600];
    if (!cluster_sysid[0]) {
        char *err = NULL;
        char *v = run_on(best, "SELECT system_identifier FROM pg_control_system()",
                         cur_timeout_ms(), &err);
        if (!v) {
            snprintf(msg, sizeof(msg), "could not read the cluster's system identifier from "
                     "%s for the failover lock: %s; not promoting", best->name, err);
            free(err);
            lock_not_taken(msg);
            return false;
        }
        snprintf(cluster_sysid, sizeof(cluster_sysid), "%s", v);
        free(v);
    }
    pthread_mutex_lock(&lock);
    *ttl_ms = (uint32_t)PGS_MIN(PGS_MAX((uint64_t)LOCK_TTL_MIN_MS, 3 * (uint64_t)failover_timeout_ms),
                                (uint64_t)INT32_MAX);
    pthread_mutex_unlock(&lock);
    if (failover_lock_take(start_cfg->redis_url, cluster_sysid, *ttl_ms, cur_timeout_ms(), g,
                           msg, sizeof(msg)) != FAILOVER_LOCK_TAKEN) {
        lock_not_taken(msg);
        return false;
    }
    pthread_mutex_lock(&lock);
    snprintf(failover_note, sizeof(failover_note), "; failover lock epoch %llu, instance %s",
             (unsigned long long)g->epoch, failover_lock_instance_id());
    pthread_mutex_unlock(&lock);
    return true;
}

/* failover: auto, the primary down past failover_timeout and no node says
 * it is the primary: promote the replica that has replayed the most.  Runs
 * without the lock (it takes seconds); failover_running keeps the other
 * threads out. */
static void promote(pgs_node *old, pgs_node *best, int64_t since_ms)
{
    failover_grant g = {0};
    uint32_t ttl_ms = 0;
    if (start_cfg->redis_url && !take_lock(best, &g, &ttl_ms)) return;
    if (g.conn) {
        /* the last moment Redis can stop us; see failover_lock.c for the
         * window that remains after it */
        char msg[600];
        if (failover_lock_check(&g, ttl_ms, msg, sizeof(msg)) != 0) {
            failover_lock_done(&g);
            lock_not_taken(msg);
            return;
        }
    }
    char pos[32];
    topology_format_lsn(held_lsn(best), pos, sizeof(pos));
    const char *sync = topology_sync_name(atomic_load(&best->sync_state));
    log_error("failover: %s (%s) has been down for %.1f s; promoting %s (%s, holding WAL up to "
              "%s%s%s)%s",
              old->name, old->ep.text, (double)(now_ms() - since_ms) / 1000.0, best->name,
              best->ep.text, pos, sync ? ", sync_state " : "", sync ? sync : "", failover_note);
    char *err = NULL, sql[64];
    snprintf(sql, sizeof(sql), "SELECT pg_promote(true, %d)", PROMOTE_WAIT_S);
    char *v = run_on(best, sql, (PROMOTE_WAIT_S + 5) * 1000u, &err);
    bool ok = v && v[0] == 't';
    free(v);
    if (ok) {
        /* pg_promote(wait => true) returned after the end of recovery;
         * check it as every later reader will */
        v = run_on(best, "SELECT pg_is_in_recovery()", cur_timeout_ms(), &err);
        ok = v && v[0] == 'f';
        free(v);
    }
    pthread_mutex_lock(&lock);
    if (!ok) {
        log_error("failover: promoting %s failed: %s (pg_promote() needs a superuser or "
                  "GRANT EXECUTE ON FUNCTION pg_promote TO the monitoring user); trying again "
                  "in %.0f s",
                  best->name, err ? err : "it did not leave recovery in time",
                  (double)(promote_backoff_ms ? PGS_MIN(promote_backoff_ms * 2, 60000u)
                                              : failover_timeout_ms) / 1000.0);
        free(err);
        promote_backoff_ms = promote_backoff_ms ? PGS_MIN(promote_backoff_ms * 2, 60000u)
                                                : failover_timeout_ms;
        promote_retry_ms = now_ms() + promote_backoff_ms;
        failover_note[0] = '\0';
        failover_running = false;
        pthread_mutex_unlock(&lock);
        failover_lock_done(&g);
        return;
    }
    promote_backoff_ms = 0;
    atomic_store(&best->role, PGS_ROLE_PRIMARY);
    switch_primary(old, best, "was down", since_ms);
    failover_note[0] = '\0';
    pthread_mutex_unlock(&lock);
    if (g.conn) {
        failover_lock_announce(&g, best->ep.text);
        failover_lock_done(&g);
    }
    repoint_all(old, best);
    pthread_mutex_lock(&lock);
    failover_running = false;
    pthread_mutex_unlock(&lock);
}

/* After any node's check: is the primary failing, and what then?  Called
 * with lock held; may release and take it again (promote). */
static void evaluate(void)
{
    if (failover_running) return;
    pgs_node *p = topology_primary();
    int pstate = atomic_load(&p->state), prole = atomic_load(&p->role);
    bool down = pstate == PGS_NODE_DOWN;
    bool demoted = pstate == PGS_NODE_UP && prole == PGS_ROLE_REPLICA &&
                   atomic_load(&p->checked_us) != 0;
    if (!down && !demoted) {
        primary_bad_since_ms = 0;
        failover_said[0] = '\0';
        return;
    }
    int64_t now = now_ms();
    if (!primary_bad_since_ms) {
        primary_bad_since_ms = now;
        if (down) {
            /* down since its thread first saw it fail */
            for (int i = 0; i < n_mnodes; i++)
                if (mnodes[i].n == p && mnodes[i].fail_since_ms)
                    primary_bad_since_ms = mnodes[i].fail_since_ms;
        }
    }
    char msg[600];
    if (failover_mode == PGS_FAILOVER_OFF) {
        snprintf(msg, sizeof(msg), "the primary %s (%s) %s; failover is off: not acting",
                 p->name, p->ep.text, down ? "is down" : "says it is in recovery");
        say_once(msg);
        return;
    }
    /* nodes that answered their last check saying they are not in recovery;
     * and the replica to promote: the most advanced by the WAL it holds
     * (received and flushed; promotion replays all of it).  With
     * synchronous replication on, only when a standby the primary waited
     * for is up: it holds every acknowledged commit, and so does any
     * replica holding at least as much WAL (one history).  A quorum
     * (ANY n) puts a commit on n of its standbys, not on a given one: all
     * of them must be up. */
    int n_primary = 0, n_sync_up = 0, n_quorum = 0, n_quorum_up = 0, n_unknown = 0;
    pgs_node *cand = NULL, *best = NULL;
    bool cand_promoted = false;
    bool sync_on = sync_names[0] != '\0';
    for (int i = 0; i < n_mnodes; i++) {
        pgs_node *o = mnodes[i].n;
        if (o == p) continue;
        int ost = atomic_load(&o->state);
        bool up = ost == PGS_NODE_UP && atomic_load(&o->checked_us);
        /* A fenced former primary may be the primary again only after it
         * was seen as a replica (an HA manager rejoined it: pg_rewind or a
         * new base backup) and then promoted: Patroni's switchover back to
         * it.  One that comes back still a primary stays fenced (it may
         * hold writes the new primary never saw), and none is promoted by
         * pgscale. */
        bool rejoined = ost == PGS_NODE_FENCED && mnodes[i].promoted && !mnodes[i].fail_since_ms;
        if (sync_on) {
            n_sync_up += up && mnodes[i].was_sync == PGS_SYNC_SYNC;
            n_quorum += mnodes[i].was_sync == PGS_SYNC_QUORUM;
            n_quorum_up += up && mnodes[i].was_sync == PGS_SYNC_QUORUM;
            n_unknown += mnodes[i].sync_state == PGS_SYNC_UNKNOWN;
        }
        if (!up && !rejoined) continue;
        if (atomic_load(&o->role) == PGS_ROLE_PRIMARY) {
            n_primary++;
            cand = o;
            cand_promoted = mnodes[i].promoted;
        } else if (up && (!best || held_lsn(o) > held_lsn(best))) {
            best = o;
        }
    }
    bool sync_ok = !sync_on || n_sync_up > 0 || (n_quorum > 0 && n_quorum_up == n_quorum);
    /* A primary that is down may come back: wait failover_timeout before
     * acting on it -- unless a replica was promoted meanwhile.  Someone
     * (Patroni's switchover, a person) has moved the primary, and the old
     * one is down because that is how a switchover starts; waiting would
     * only hold the writes, and the old primary may come back as a replica
     * first (Patroni restarts it as one within seconds). */
    if (down && !(n_primary == 1 && cand_promoted) &&
        now - primary_bad_since_ms < (int64_t)failover_timeout_ms)
        return;
    if (n_primary == 1) {
        switch_primary(p, cand, down ? "is down" : "says it is in recovery (a replica now)",
                       primary_bad_since_ms);
        if (failover_mode == PGS_FAILOVER_AUTO) {
            /* auto manages the replicas: whoever promoted cand (someone
             * else, or a promotion of ours that answered too late), they
             * follow it now; a replica already pointed there is unchanged */
            failover_running = true;
            pthread_mutex_unlock(&lock);
            repoint_all(p, cand);
            pthread_mutex_lock(&lock);
            failover_running = false;
        }
        return;
    }
    if (n_primary > 1) {
        snprintf(msg, sizeof(msg), "the primary %s %s, and %d other nodes say they are the "
                 "primary: not choosing between them", p->name,
                 down ? "is down" : "is in recovery", n_primary);
        say_once(msg);
        return;
    }
    if (failover_mode == PGS_FAILOVER_AUTO && down) {
        if (best && !sync_ok) {
            snprintf(msg, sizeof(msg),
                     "the primary %s is down and synchronous replication was on "
                     "(synchronous_standby_names = '%.120s'), but %s: not promoting, since "
                     "another replica may lack commits that clients saw acknowledged; bring a "
                     "synchronous standby back, or promote a replica yourself (pgscale takes it)",
                     p->name, sync_names,
                     n_quorum ? "not every standby of its quorum is up"
                     : n_unknown ? "the primary did not show which standbys are synchronous "
                                   "(the monitoring user needs pg_monitor, and each standby a "
                                   "distinct application_name)"
                                 : "no synchronous standby is up");
            say_once(msg);
            return;
        }
        if (!best) {
            snprintf(msg, sizeof(msg), "the primary %s is down and no replica is up to "
                     "promote", p->name);
            say_once(msg);
            return;
        }
        if (now < promote_retry_ms) return;
        failover_running = true;
        int64_t since = primary_bad_since_ms;
        pthread_mutex_unlock(&lock);
        promote(p, best, since);
        pthread_mutex_lock(&lock);
        return;
    }
    snprintf(msg, sizeof(msg), "the primary %s (%s) %s; waiting for another node to be "
             "promoted (failover is %s)", p->name, p->ep.text,
             down ? "is down" : "says it is in recovery",
             failover_mode == PGS_FAILOVER_AUTO ? "auto" : "follow");
    say_once(msg);
}

/* --- the threads --- */

static void *node_main(void *arg)
{
    mnode *m = arg;
    char name[16];
    snprintf(name, sizeof(name), "pgs-mon-%d", m->n->index);
    pthread_setname_np(pthread_self(), name);
    pthread_mutex_lock(&lock);
    while (!stopping) {
        m->wake = false;
        pthread_mutex_unlock(&lock);
        check_one(m);
        pthread_mutex_lock(&lock);
        if (stopping) break;
        evaluate();
        uint32_t delay = m->backoff_ms ? m->backoff_ms : interval_ms;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)delay * 1000000u;
        ts.tv_sec += (time_t)(ns / 1000000000u);
        ts.tv_nsec = (long)(ns % 1000000000u);
        while (!stopping && !m->wake)
            if (pthread_cond_timedwait(&cond, &lock, &ts) != 0) break;
    }
    pthread_mutex_unlock(&lock);
    close_conn(m);
    return NULL;
}

static int start_threads(char *err, size_t errlen);

int monitor_start(const pgs_config *cfg, char *err, size_t errlen)
{
    start_cfg = cfg;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cond, &ca);
    pthread_condattr_destroy(&ca);
    monitor_configure(cfg);
    /* Under lock: the workers already run, and a RELOAD on one of them may
     * ask for the primary's thread meanwhile
     * (monitor_want_primary_thread_now). */
    pthread_mutex_lock(&lock);
    stopping = false;
    n_mnodes = 0;
    int rc = 0;
    /* With the primary alone there is nothing to route to or fail over
     * to: no thread, no extra connection on the primary, unless a feature
     * needs the primary hook. */
    if (topology_count() >= 2 || want_primary_thread) rc = start_threads(err, errlen);
    pthread_mutex_unlock(&lock);
    return rc;
}

int monitor_want_primary_thread_now(char *err, size_t errlen)
{
    int rc = 0;
    pthread_mutex_lock(&lock);
    want_primary_thread = true;
    /* threads running (replicas, or started before), or shutting down */
    if (n_mnodes == 0 && !stopping && start_cfg) rc = start_threads(err, errlen);
    pthread_mutex_unlock(&lock);
    return rc;
}

/* One thread per resolved node.  Called once, at start or from
 * monitor_want_primary_thread_now (under lock: monitor_stop waits for it). */
static int start_threads(char *err, size_t errlen)
{
    for (int i = 0; i < topology_count(); i++) {
        pgs_node *n = topology_node(i);
        if (!n->resolved) continue; /* kept down with its resolution error */
        mnode *m = &mnodes[n_mnodes++];
        memset(m, 0, sizeof(*m));
        m->n = n;
        m->logged_state = -1;
        m->logged_role = atomic_load(&n->role);
    }
    for (int i = 0; i < n_mnodes; i++) {
        if (pthread_create(&mnodes[i].thread, NULL, node_main, &mnodes[i]) != 0) {
            /* the threads started so far stop at the next monitor_stop
             * (at start: main exits at once) */
            snprintf(err, errlen, "could not start the monitor thread of %s", mnodes[i].n->name);
            return -1;
        }
        mnodes[i].started = true;
    }
    return 0;
}

void monitor_stop(void)
{
    pthread_mutex_lock(&lock);
    stopping = true;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < n_mnodes; i++) {
        if (mnodes[i].started) pthread_join(mnodes[i].thread, NULL);
        mnodes[i].started = false;
    }
    n_mnodes = 0;
}
