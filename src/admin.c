/* The admin console: clients of the virtual database "pgscale" send simple
 * queries and get row sets (SHOW ...) built from every worker's lists and
 * counters, or change what pgscale does (RELOAD, PAUSE, RESUME, KILL,
 * WAIT_CLOSE, SHUTDOWN), as admin_users / stats_users allow (with neither
 * list: SHOW for everyone, changes for the DATABASE_URL user and the OS user
 * running pgscale over its Unix socket).  Figures are a
 * moment's snapshot: lists are walked under each worker's list lock,
 * counters read with relaxed atomics. */
#include "admin.h"
#include "monitor.h"

#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "changefeed.h"
#include "client.h"
#include "clientauth.h"
#include "io.h"
#include "pool.h"
#include "proto.h"
#include "rcache.h"
#include "relay.h"
#include "relcat.h"
#include "reload.h"
#include "server.h"
#include "topology.h"
#include "worker.h"

/* A growing reply buffer: admin output is off the data path, so it may
 * allocate. */
typedef struct reply {
    uint8_t *data;
    size_t len, cap;
} reply;

static proto_out *reply_out(reply *r, proto_out *o, size_t need)
{
    if (r->cap - r->len < need) {
        while (r->cap - r->len < need) r->cap = r->cap ? r->cap * 2 : 8192;
        r->data = pgs_xrealloc(r->data, r->cap);
    }
    proto_out_init(o, r->data + r->len, r->cap - r->len);
    return o;
}

static void reply_commit(reply *r, proto_out *o)
{
    r->len += o->len;
}

static void row(reply *r, int n, const char *const *vals)
{
    size_t need = 16;
    for (int i = 0; i < n; i++) need += 4 + (vals[i] ? strlen(vals[i]) : 0);
    proto_out o;
    reply_out(r, &o, need);
    proto_data_row_text(&o, n, vals);
    reply_commit(r, &o);
}

static void header(reply *r, int n, const char *const *names)
{
    proto_out o;
    reply_out(r, &o, 64 + (size_t)n * 64);
    proto_row_description_text(&o, n, names);
    reply_commit(r, &o);
}

static void complete(reply *r, const char *tag)
{
    proto_out o;
    reply_out(r, &o, 64);
    proto_command_complete(&o, tag);
    reply_commit(r, &o);
}

static void error(reply *r, const char *sqlstate, const char *msg, const char *hint)
{
    proto_out o;
    reply_out(r, &o, 128 + strlen(msg) + (hint ? strlen(hint) : 0));
    proto_error(&o, "ERROR", sqlstate, msg, hint);
    reply_commit(r, &o);
}

static void fmt_time(char *out, size_t n, uint64_t mono_us)
{
    /* monotonic -> wall clock */
    uint64_t wall = pgs_wall_us() - pgs_elapsed_us(pgs_now_us(), mono_us);
    time_t t = (time_t)(wall / 1000000u);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%d %H:%M:%S", &tm);
}

#define U64(buf, v) (snprintf(buf, sizeof(buf), "%llu", (unsigned long long)(v)), buf)
#define I32(buf, v) (snprintf(buf, sizeof(buf), "%d", (int)(v)), buf)

static void show_pools(reply *r)
{
    static const char *const cols[] = {"database", "user", "cl_active", "cl_waiting",
                                       "sv_active", "sv_idle", "sv_login", "sv_total",
                                       "sv_overflow", "max_total", "maxwait_ms", "pool_mode",
                                       "sv_pinned", "node"};
    header(r, 14, cols);
    uint64_t now = pgs_now_us();
    pthread_mutex_lock(&g_pgs.pools_lock);
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next) {
        pgs_pool_snap s;
        pool_snapshot(sh, now, &s);
        char b[11][24];
        const char *v[14] = {sh->database,
                             sh->user,
                             I32(b[0], s.cl_active),
                             I32(b[1], s.cl_waiting),
                             I32(b[2], s.sv_active),
                             I32(b[3], s.sv_idle),
                             I32(b[4], s.sv_login),
                             I32(b[5], s.sv_total),
                             I32(b[6], s.sv_overflow),
                             I32(b[7], s.max_total),
                             U64(b[9], s.maxwait_us / 1000u),
                             atomic_load(&sh->pool_mode) == PGS_POOL_SESSION ? "session"
                                                                             : "transaction",
                             I32(b[8], s.pinned),
                             sh->node ? sh->node->name : NULL};
        row(r, 14, v);
    }
    pthread_mutex_unlock(&g_pgs.pools_lock);
    complete(r, "SHOW");
}

static void show_clients(reply *r)
{
    static const char *const cols[] = {"id",    "worker",       "database", "user",
                                       "application_name", "addr", "port", "state",
                                       "connect_time", "wait_ms", "server_id", "pinned"};
    header(r, 12, cols);
    uint64_t now = pgs_now_us();
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker *w = &g_pgs.workers[i];
        pthread_mutex_lock(&w->lock);
        for (pgs_list *it = w->clients.next; it != &w->clients; it = it->next) {
            pgs_client *c = list_entry(it, pgs_client, node);
            int st = atomic_load_explicit(&c->state, memory_order_acquire);
            if (st == CL_STARTUP) continue; /* names not known yet */
            char b[6][32];
            uint64_t ws = __atomic_load_n(&c->wait_start_us, __ATOMIC_RELAXED);
            uint32_t sid = atomic_load_explicit(&c->server_id, memory_order_relaxed);
            fmt_time(b[3], sizeof(b[3]), c->connect_us);
            char pins[64];
            relay_pin_names(atomic_load_explicit(&c->pin, memory_order_relaxed), pins,
                            sizeof(pins));
            const char *v[12] = {U64(b[0], c->id),
                                 I32(b[1], w->id),
                                 c->database,
                                 c->user,
                                 c->app_name,
                                 c->addr,
                                 I32(b[2], c->port),
                                 client_state_name(st),
                                 b[3],
                                 U64(b[4], st == CL_WAITING && ws
                                               ? pgs_elapsed_us(now, ws) / 1000u
                                               : 0),
                                 sid ? U64(b[5], sid) : NULL,
                                 pins};
            row(r, 12, v);
        }
        pthread_mutex_unlock(&w->lock);
    }
    complete(r, "SHOW");
}

static void show_servers(reply *r)
{
    static const char *const cols[] = {"id",          "worker",       "database",
                                       "user",        "addr",         "port",
                                       "state",       "connect_time", "backend_pid",
                                       "client_id",   "prepared",     "node"};
    header(r, 12, cols);
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker *w = &g_pgs.workers[i];
        pthread_mutex_lock(&w->lock);
        for (pgs_list *it = w->servers.next; it != &w->servers; it = it->next) {
            pgs_server *sv = list_entry(it, pgs_server, all_node);
            int st = atomic_load_explicit(&sv->state, memory_order_acquire);
            uint32_t pid = __atomic_load_n(&sv->backend_pid, __ATOMIC_RELAXED);
            char b[7][32];
            uint32_t cid = atomic_load_explicit(&sv->client_id, memory_order_relaxed);
            fmt_time(b[2], sizeof(b[2]), sv->connect_us);
            const pgs_node *nd = sv->pool->sh->node;
            const pgs_url *u = nd ? nd->url : &g_pgs.cfg->primary;
            const char *v[12] = {U64(b[0], sv->id),
                                 I32(b[1], w->id),
                                 sv->pool->sh->database,
                                 sv->pool->sh->user,
                                 u->host && *u->host ? u->host : PGS_DEFAULT_SOCKET_DIR,
                                 I32(b[3], u->port ? u->port : 5432),
                                 server_state_name(st),
                                 b[2],
                                 pid ? U64(b[4], pid) : NULL,
                                 cid ? U64(b[5], cid) : NULL,
                                 U64(b[6], atomic_load_explicit(&sv->n_prepared,
                                                                memory_order_relaxed)),
                                 nd ? nd->name : NULL};
            row(r, 12, v);
        }
        pthread_mutex_unlock(&w->lock);
    }
    complete(r, "SHOW");
}

static void show_stats(reply *r)
{
    static const char *const cols[] = {"database",  "user",        "xact_count",
                                       "query_count", "bytes_received", "bytes_sent",
                                       "avg_xact_us", "avg_query_us", "avg_wait_us",
                                       "total_wait_us"};
    header(r, 10, cols);
    uint64_t now = pgs_now_us();
    pthread_mutex_lock(&g_pgs.pools_lock);
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next) {
        pgs_pool_snap s;
        pool_snapshot(sh, now, &s);
        char b[8][24];
        const char *v[10] = {sh->database,
                             sh->user,
                             U64(b[0], s.xact_count),
                             U64(b[1], s.query_count),
                             U64(b[2], s.bytes_in),
                             U64(b[3], s.bytes_out),
                             U64(b[4], s.xact_count ? s.xact_us / s.xact_count : 0),
                             U64(b[5], s.query_count ? s.query_us / s.query_count : 0),
                             U64(b[6], s.wait_count ? s.wait_us / s.wait_count : 0),
                             U64(b[7], s.wait_us)};
        row(r, 10, v);
    }
    pthread_mutex_unlock(&g_pgs.pools_lock);
    complete(r, "SHOW");
}

/* The nodes as the monitor last saw them (topology.h): lag_seconds is the
 * replica's replay delay, lsn its replay position (a primary's: its
 * current write position), sync_state what the primary's
 * pg_stat_replication said of it (NULL without synchronous replication). */
static void show_nodes(reply *r)
{
    static const char *const cols[] = {"node",   "role",        "state",   "addr",
                                       "port",   "lag_bytes",   "lag_seconds", "lsn",
                                       "reads",  "writes",      "retried", "outstanding",
                                       "sync_state", "last_error"};
    header(r, 14, cols);
    const pgs_node *primary = topology_primary();
    for (int i = 0; i < topology_count(); i++) {
        pgs_node *n = topology_node(i);
        char b[9][40], err[256];
        const pgs_url *u = n->url;
        int role = atomic_load(&n->role);
        /* the configured role until the first check says otherwise; the
         * node taking writes is the primary whatever it said last */
        if (n == primary && role != PGS_ROLE_REPLICA) role = PGS_ROLE_PRIMARY;
        uint64_t checked = atomic_load(&n->checked_us);
        uint64_t lsn = atomic_load(&n->lsn);
        topology_format_lsn(lsn, b[2], sizeof(b[2]));
        snprintf(b[3], sizeof(b[3]), "%.3f", (double)atomic_load(&n->lag_ms) / 1000.0);
        topology_get_error(n, err, sizeof(err));
        const char *v[14] = {n->name,
                             topology_role_name(role),
                             topology_state_name(atomic_load(&n->state)),
                             u->host && *u->host ? u->host : PGS_DEFAULT_SOCKET_DIR,
                             I32(b[0], u->port ? u->port : 5432),
                             checked ? U64(b[1], atomic_load(&n->lag_bytes)) : NULL,
                             checked ? b[3] : NULL,
                             checked ? b[2] : NULL,
                             U64(b[4], atomic_load(&n->reads)),
                             U64(b[5], atomic_load(&n->writes)),
                             U64(b[7], atomic_load(&n->retried)),
                             I32(b[6], atomic_load(&n->outstanding)),
                             n == primary ? NULL : topology_sync_name(atomic_load(&n->sync_state)),
                             err[0] ? err : NULL};
        row(r, 14, v);
    }
    complete(r, "SHOW");
}

/* What a cache rule matches, for SHOW CACHE's rows per rule. */
static void rule_match(const pgs_cache_rule *r, char *buf, size_t len)
{
    size_t at = 0;
#define PUT(...) at += (size_t)snprintf(buf + PGS_MIN(at, len - 1), len - PGS_MIN(at, len - 1), __VA_ARGS__)
    if (r->kind == PGS_CACHE_RULE_TABLES) {
        PUT("tables:");
        for (int t = 0; t < r->n_tables; t++) PUT("%s%s", t ? ", " : " ", r->tables[t]);
    } else if (r->query) {
        PUT("query: %s", r->query);
    } else {
        PUT("fingerprint: %016llx", (unsigned long long)r->fingerprint);
    }
    if (r->database) PUT("; database: %s", r->database);
    if (r->user) PUT("; user: %s", r->user);
#undef PUT
    if (at >= len && len > 4) memcpy(buf + len - 4, "...", 4);
}

/* The result cache, every worker's store summed (rcache.h): a client's
 * lookup is a hit or a miss (one that found another client's fill pending
 * counts as a miss and as a wait); refused_* are fills not stored.  The
 * first row is the total; then one row per class of statements: those a
 * pgscale:cache hint admitted, then each rule's (or, without rules, the
 * default's).  Columns that only mean something in total are NULL there. */
static void show_cache(reply *r)
{
    static const char *const cols[] = {
        "rule",            "enabled",        "hits",            "misses",
        "hit_ratio",       "entries",        "bytes",           "max_bytes",
        "evictions",       "invalidations",  "expired",         "fills",
        "stored",          "refused_too_big", "refused_lag",    "refused_no_room",
        "waits",           "wait_timeouts",  "bumps",           "bumps_all",
        "catalog_generation", "ttl_ms",      "matches",         "redis",
        "redis_errors",    "redis_timeouts", "redis_checks",    "redis_hits",
        "change_feed",     "feed_bumps",     "feed_bumps_all",  "feed_lsn"};
    enum { N = 32 };
    header(r, N, cols);
    rcache_totals t;
    rcache_totals_get(&t);
    changefeed_stats fs;
    changefeed_stats_get(&fs);
    char b[N][32];
    if (fs.lsn) topology_format_lsn(fs.lsn, b[31], sizeof(b[31]));
    uint64_t looked = t.hits + t.misses;
    snprintf(b[4], sizeof(b[4]), "%.4f", looked ? (double)t.hits / (double)looked : 0.0);
    const pgs_config *k = atomic_load(&g_pgs.cfg);
    const char *v[N] = {"total",
                        k->cache.enabled ? "on" : "off",
                        U64(b[2], t.hits),
                        U64(b[3], t.misses),
                        b[4],
                        U64(b[5], t.entries),
                        U64(b[6], t.bytes),
                        U64(b[7], t.max_bytes),
                        U64(b[8], t.evictions),
                        U64(b[9], t.invalidations),
                        U64(b[10], t.expired),
                        U64(b[11], t.fills),
                        U64(b[12], t.stored),
                        U64(b[13], t.refused_too_big),
                        U64(b[14], t.refused_lag),
                        U64(b[15], t.refused_no_room),
                        U64(b[16], t.waits),
                        U64(b[17], t.wait_timeouts),
                        U64(b[18], t.bumps),
                        U64(b[19], t.bumps_all),
                        U64(b[20], relcat_generation()),
                        U64(b[21], k->cache.ttl_ms),
                        NULL,
                        /* per worker: "up" only when every worker's
                         * connection is */
                        !t.redis_workers                 ? "off"
                        : t.redis_up == t.redis_workers ? "up"
                        : t.redis_up == 0                ? "down"
                                                         : "partial",
                        U64(b[24], t.redis_errors),
                        U64(b[25], t.redis_timeouts),
                        U64(b[26], t.redis_checks),
                        U64(b[27], t.redis_hits),
                        changefeed_state_name(fs.state),
                        U64(b[29], fs.bumps),
                        U64(b[30], fs.bumps_all),
                        fs.lsn ? b[31] : NULL};
    row(r, N, v);
    /* the hint's row, then the rules' (or the default's) */
    int n_rules = k->cache.n_rules;
    int last = n_rules ? RCACHE_CLASS_RULE0 + PGS_MIN(n_rules, RCACHE_CLASSES - RCACHE_CLASS_RULE0) - 1
                       : RCACHE_CLASS_HINT;
    for (int cls = RCACHE_CLASS_DEFAULT; cls <= last; cls++) {
        if (cls == RCACHE_CLASS_DEFAULT && n_rules) continue;
        rcache_class_totals ct;
        rcache_class_totals_get((unsigned)cls, &ct);
        char name[32], match[256];
        const char *ttl = NULL, *m = NULL;
        if (cls == RCACHE_CLASS_DEFAULT) {
            snprintf(name, sizeof(name), "default");
            ttl = U64(b[21], k->cache.ttl_ms);
            m = "every cacheable statement";
        } else if (cls == RCACHE_CLASS_HINT) {
            snprintf(name, sizeof(name), "hint");
            m = "pgscale:cache hints";
        } else {
            int i = cls - RCACHE_CLASS_RULE0;
            const pgs_cache_rule *cr = &k->cache.rules[i];
            if (cls == RCACHE_CLASSES - 1 && n_rules > i + 1) {
                /* the rules past the classes kept apart share the last */
                snprintf(name, sizeof(name), "%d-%d", i + 1, n_rules);
                snprintf(match, sizeof(match), "rules %d to %d", i + 1, n_rules);
            } else {
                snprintf(name, sizeof(name), "%d", i + 1);
                rule_match(cr, match, sizeof(match));
                ttl = U64(b[21], cr->ttl_ms ? cr->ttl_ms : k->cache.ttl_ms);
            }
            m = match;
        }
        uint64_t cl = ct.hits + ct.misses;
        snprintf(b[4], sizeof(b[4]), "%.4f", cl ? (double)ct.hits / (double)cl : 0.0);
        const char *cv[N] = {name, NULL,
                             U64(b[2], ct.hits),
                             U64(b[3], ct.misses),
                             b[4],
                             U64(b[5], ct.entries),
                             U64(b[6], ct.bytes),
                             NULL,
                             U64(b[8], ct.evictions),
                             U64(b[9], ct.invalidations),
                             U64(b[10], ct.expired),
                             NULL,
                             U64(b[12], ct.stored),
                             U64(b[13], ct.refused_too_big),
                             U64(b[14], ct.refused_lag),
                             U64(b[15], ct.refused_no_room),
                             NULL, NULL, NULL, NULL, NULL,
                             ttl, m, NULL, NULL, NULL, NULL};
        row(r, N, cv);
    }
    complete(r, "SHOW");
}

typedef struct cfg_ctx {
    reply *r;
} cfg_ctx;

static void cfg_emit(void *ctx, const char *name, const char *value, const char *def)
{
    cfg_ctx *cc = ctx;
    const char *v[3] = {name, value, def};
    row(cc->r, 3, v);
}

static void show_config(reply *r)
{
    static const char *const cols[] = {"key", "value", "default"};
    header(r, 3, cols);
    cfg_ctx cc = {r};
    const pgs_config *cfg = g_pgs.cfg;
    config_describe(cfg, cfg_emit, &cc);
    config_describe_file(cfg, cfg_emit, &cc);
    complete(r, "SHOW");
}


static void notice(reply *r, const char *severity, const char *sqlstate, const char *msg)
{
    proto_out o;
    reply_out(r, &o, 64 + strlen(msg));
    proto_notice(&o, severity, sqlstate, msg);
    reply_commit(r, &o);
}

static const char *mode_name(int mode)
{
    return mode == PGS_POOL_SESSION ? "session" : "transaction";
}

/* --- names seen in the configuration and in the pools --- */

typedef struct name_set {
    char **v;
    int n, cap;
} name_set;

static int set_find(const name_set *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->v[i], name) == 0) return i;
    return -1;
}

static int set_add(name_set *s, const char *name)
{
    int i = set_find(s, name);
    if (i >= 0) return i;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 16;
        s->v = pgs_xrealloc(s->v, (size_t)s->cap * sizeof(char *));
    }
    s->v[s->n] = pgs_xstrdup(name);
    return s->n++;
}

static void set_free(name_set *s)
{
    for (int i = 0; i < s->n; i++) free(s->v[i]);
    free(s->v);
}

static void add_name(void *ctx, const char *name)
{
    set_add(ctx, name);
}

/* Per database or per user: server connections and clients, summed over
 * the pools. */
typedef struct pool_sums {
    int servers, clients;
} pool_sums;

/* Databases (by_user false) or users (true) of the configuration and the
 * pools, with their sums; sums is indexed like the set. */
static void collect_names(const pgs_config *cfg, bool by_user, name_set *set, pool_sums **sums)
{
    if (by_user) {
        for (int i = 0; i < cfg->n_users; i++) set_add(set, cfg->users[i].name);
    } else {
        for (int i = 0; i < cfg->n_databases; i++) set_add(set, cfg->databases[i].name);
        pool_each_paused(add_name, set); /* paused before any client came */
    }
    pthread_mutex_lock(&g_pgs.pools_lock);
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next)
        set_add(set, by_user ? sh->user : sh->database);
    *sums = pgs_xcalloc((size_t)set->n + 1, sizeof(pool_sums));
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next) {
        int i = set_find(set, by_user ? sh->user : sh->database);
        (*sums)[i].servers += atomic_load(&sh->open);
        (*sums)[i].clients += atomic_load(&sh->n_clients);
    }
    pthread_mutex_unlock(&g_pgs.pools_lock);
}

static void show_databases(reply *r)
{
    static const char *const cols[] = {
        "name",          "host",     "port",  "database",
        "force_user",    "pool_size", "max_overflow", "pool_mode",
        "current_connections", "max_client_connections", "current_client_connections",
        "paused"};
    header(r, 12, cols);
    const pgs_config *cfg = g_pgs.cfg;
    const pgs_url *u = &cfg->primary;
    name_set dbs = {0};
    pool_sums *sums;
    collect_names(cfg, false, &dbs, &sums);
    for (int i = 0; i < dbs.n; i++) {
        pgs_pool_settings ps;
        config_pool_settings(cfg, dbs.v[i], NULL, &ps);
        char b[8][24];
        const char *v[12] = {dbs.v[i],
                             u->host && *u->host ? u->host : PGS_DEFAULT_SOCKET_DIR,
                             I32(b[0], u->port ? u->port : 5432),
                             dbs.v[i],
                             NULL,
                             I32(b[1], ps.pool_size),
                             I32(b[2], ps.max_overflow),
                             mode_name(ps.pool_mode),
                             I32(b[3], sums[i].servers),
                             I32(b[4], ps.max_db_connections),
                             I32(b[5], sums[i].clients),
                             I32(b[6], pool_db_paused(dbs.v[i]))};
        row(r, 12, v);
    }
    free(sums);
    set_free(&dbs);
    complete(r, "SHOW");
}

static void show_users(reply *r)
{
    static const char *const cols[] = {"name",         "pool_size",
                                       "max_overflow", "pool_mode",
                                       "current_connections", "max_user_client_connections",
                                       "current_client_connections"};
    header(r, 7, cols);
    const pgs_config *cfg = g_pgs.cfg;
    name_set users = {0};
    pool_sums *sums;
    collect_names(cfg, true, &users, &sums);
    for (int i = 0; i < users.n; i++) {
        /* the user's own overrides; empty where the database's or the
         * global setting applies (as PgBouncer shows them) */
        const pgs_user_config *uc = config_find_user(cfg, users.v[i]);
        char b[6][24];
        const char *v[7] = {users.v[i],
                            uc && uc->pool_size >= 0 ? I32(b[0], uc->pool_size) : NULL,
                            uc && uc->max_overflow >= 0 ? I32(b[1], uc->max_overflow) : NULL,
                            uc && uc->pool_mode >= 0 ? mode_name(uc->pool_mode) : NULL,
                            I32(b[2], sums[i].servers),
                            I32(b[3], uc ? uc->max_user_connections : 0),
                            I32(b[4], sums[i].clients)};
        row(r, 7, v);
    }
    free(sums);
    set_free(&users);
    complete(r, "SHOW");
}

static void show_lists(reply *r)
{
    static const char *const cols[] = {"list", "items"};
    header(r, 2, cols);
    const pgs_config *cfg = g_pgs.cfg;
    name_set dbs = {0}, users = {0};
    pool_sums *s1, *s2;
    collect_names(cfg, false, &dbs, &s1);
    collect_names(cfg, true, &users, &s2);
    free(s1);
    free(s2);
    int pools = 0;
    pthread_mutex_lock(&g_pgs.pools_lock);
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next) pools++;
    pthread_mutex_unlock(&g_pgs.pools_lock);
    int login = 0, servers = 0, bufs = 0;
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker *w = &g_pgs.workers[i];
        pthread_mutex_lock(&w->lock);
        for (pgs_list *it = w->clients.next; it != &w->clients; it = it->next) {
            int st = atomic_load_explicit(&list_entry(it, pgs_client, node)->state,
                                          memory_order_relaxed);
            if (st == CL_STARTUP || st == CL_AUTH) login++;
        }
        for (pgs_list *it = w->servers.next; it != &w->servers; it = it->next) servers++;
        pthread_mutex_unlock(&w->lock);
        bufs += __atomic_load_n(&w->n_free_bufs, __ATOMIC_RELAXED);
    }
    /* PgBouncer's names; pgscale keeps no cache of freed connection
     * structures, so free_clients and free_servers are always 0. */
    struct {
        const char *name;
        int n;
    } items[] = {{"databases", dbs.n},
                 {"users", users.n},
                 {"pools", pools},
                 {"free_clients", 0},
                 {"used_clients", atomic_load(&g_pgs.total_clients)},
                 {"login_clients", login},
                 {"free_servers", 0},
                 {"used_servers", servers},
                 {"workers", g_pgs.n_workers},
                 {"free_buffers", bufs}};
    for (size_t i = 0; i < PGS_ARRAY_LEN(items); i++) {
        char b[24];
        const char *v[2] = {items[i].name, I32(b, items[i].n)};
        row(r, 2, v);
    }
    set_free(&dbs);
    set_free(&users);
    complete(r, "SHOW");
}

/* --- access --- */

enum { ROLE_NONE = 0, ROLE_STATS, ROLE_ADMIN };

static bool in_list(char *const *v, int n, const char *user)
{
    for (int i = 0; i < n; i++)
        if (strcmp(v[i], user) == 0) return true;
    return false;
}

/* With neither list set (the zero-config start from the environment),
 * every user who can log in may look (SHOW), but only the user named in
 * DATABASE_URL and the OS user running pgscale (over its Unix socket) may
 * change anything: an application pointed at pgscale must not be able to
 * stop or pause it.  admin_check_config says so at start. */
static bool zero_config(const pgs_config *cfg)
{
    return cfg->n_admin_users == 0 && cfg->n_stats_users == 0;
}

static int role_of(const pgs_config *cfg, pgs_client *c)
{
    if (zero_config(cfg)) {
        if (cfg->primary.user && strcmp(cfg->primary.user, c->user) == 0) return ROLE_ADMIN;
        return clientauth_peer_is_self(c) ? ROLE_ADMIN : ROLE_STATS;
    }
    if (in_list(cfg->admin_users, cfg->n_admin_users, c->user)) return ROLE_ADMIN;
    if (in_list(cfg->stats_users, cfg->n_stats_users, c->user)) return ROLE_STATS;
    return ROLE_NONE;
}

void admin_check_config(const pgs_config *cfg)
{
    if (zero_config(cfg))
        log_warn("admin_users and stats_users are empty: every user who can log in may run SHOW "
                 "commands on the admin console (database \"" ADMIN_DBNAME "\"); RELOAD, "
                 "PAUSE, RESUME, KILL, WAIT_CLOSE, UNFENCE and SHUTDOWN are allowed only to the user "
                 "named in DATABASE_URL and to the OS user running pgscale over its Unix "
                 "socket; list the operators in admin_users (and monitoring users in "
                 "stats_users) in the config file");
}

int admin_login(pgs_client *c)
{
    if (role_of(g_pgs.cfg, c) != ROLE_NONE) return 0;
    char msg[300];
    snprintf(msg, sizeof(msg),
             "not allowed: user \"%.100s\" may not use the admin console (it is in neither "
             "admin_users nor stats_users)",
             c->user);
    client_fail(c, "28000", msg,
                "add the user to admin_users (every command) or stats_users (SHOW only) in the "
                "config file, and RELOAD");
    return -1;
}

/* The user's rights, checked at every command: a RELOAD that changes the
 * lists applies to connected console users at their next command. */
static bool allowed(pgs_client *c, reply *r, bool changes, const char *cmd)
{
    const pgs_config *cfg = g_pgs.cfg;
    int role = role_of(cfg, c);
    if (role == ROLE_ADMIN || (role == ROLE_STATS && !changes)) return true;
    char msg[400];
    if (role == ROLE_NONE) {
        snprintf(msg, sizeof(msg),
                 "not allowed: user \"%.100s\" is no longer in admin_users or stats_users",
                 c->user);
        error(r, "42501", msg, "reconnect as a user listed in admin_users or stats_users");
    } else if (zero_config(cfg)) {
        log_warn("C-%u: %s refused to user %s (not the DATABASE_URL user; admin_users is empty)",
                 c->id, cmd, c->user);
        snprintf(msg, sizeof(msg),
                 "admin access needed: %s changes pgscale's state; with admin_users empty only "
                 "the user named in DATABASE_URL, or the OS user running pgscale over its Unix "
                 "socket, may run it (user \"%.100s\" may run SHOW commands only)",
                 cmd, c->user);
        error(r, "42501", msg,
              "list the operators in admin_users in the config file (--config), and restart "
              "or RELOAD");
    } else {
        snprintf(msg, sizeof(msg),
                 "admin access needed: %s changes pgscale's state and needs a user in "
                 "admin_users (user \"%.100s\" is in stats_users, which may run SHOW commands "
                 "only)",
                 cmd, c->user);
        error(r, "42501", msg, "add the user to admin_users in the config file, and RELOAD");
    }
    return false;
}

/* --- commands that wait ---
 * Commands that act on connections set shared flags (pool.c) and send a
 * control message to every worker.  PAUSE, WAIT_CLOSE and KILL answer once
 * every worker has acted on it and, for the first two, the servers they
 * wait for are done; the janitor's tick checks.  Meanwhile the client's
 * further input stays unread. */

enum wait_kind { WAIT_PAUSE = 1, WAIT_CLOSE, WAIT_KILL };

typedef struct pgs_admin_wait {
    pgs_list node;       /* waits[worker id] */
    pgs_client *c;
    int kind;
    char *db;            /* NULL = every database */
    uint64_t gen;        /* the control message every worker must have handled */
    uint64_t since_us;   /* WAIT_CLOSE: servers connected before this */
    uint64_t start_us, deadline_us;
    char *rest;          /* statements after this one in the same Query */
} pgs_admin_wait;

/* Per worker; only that worker's thread touches its list. */
static pgs_list waits[PGS_MAX_WORKERS];

static pgs_list *wait_list(pgs_worker *w)
{
    pgs_list *l = &waits[w->id];
    if (!l->next) list_init(l);
    return l;
}

static void start_wait(pgs_client *c, int kind, const char *db, uint64_t gen, uint64_t since)
{
    pgs_admin_wait *aw = pgs_xcalloc(1, sizeof(*aw));
    aw->c = c;
    aw->kind = kind;
    aw->db = db ? pgs_xstrdup(db) : NULL;
    aw->gen = gen;
    aw->since_us = since;
    aw->start_us = pgs_now_us();
    /* The same bound as SIGTERM's wait for running transactions. */
    aw->deadline_us = aw->start_us + (uint64_t)g_pgs.cfg->shutdown_timeout_ms * 1000u;
    list_add_tail(wait_list(c->w), &aw->node);
    c->admin_wait = aw;
}

static void free_wait(pgs_admin_wait *aw)
{
    list_del(&aw->node);
    aw->c->admin_wait = NULL;
    free(aw->db);
    free(aw->rest);
    free(aw);
}

void admin_client_gone(pgs_client *c)
{
    /* What the command did (a pause) stays in effect. */
    if (c->admin_wait) free_wait(c->admin_wait);
}

/* --- the commands --- */

typedef enum { CMD_DONE, CMD_ERROR, CMD_WAIT } cmd_result;

static const char commands_hint[] =
    "available commands: SHOW POOLS, SHOW CLIENTS, SHOW SERVERS, SHOW STATS, SHOW NODES, "
    "SHOW CONFIG, SHOW CACHE, SHOW DATABASES, SHOW USERS, SHOW LISTS, RELOAD, PAUSE [db], RESUME [db], KILL [db], "
    "WAIT_CLOSE [db], UNFENCE node, SHUTDOWN";

/* A database name given to a command may not be the console's own. */
static bool not_console(reply *r, const char *cmd, const char *db)
{
    if (!db || strcmp(db, ADMIN_DBNAME) != 0) return true;
    char msg[128];
    snprintf(msg, sizeof(msg), "cannot %s the admin console's database \"" ADMIN_DBNAME "\"",
             cmd);
    error(r, "55000", msg, NULL);
    return false;
}

static void note_cb(void *ctx, const char *msg)
{
    notice(ctx, "WARNING", "01000", msg);
}

static cmd_result cmd_reload(pgs_client *c, reply *r)
{
    char who[200], err[1200];
    snprintf(who, sizeof(who), "RELOAD by C-%u (user %.100s)", c->id, c->user);
    log_info("%s", who);
    if (reload_run(who, note_cb, r, err, sizeof(err)) < 0) {
        char msg[1300];
        snprintf(msg, sizeof(msg), "RELOAD refused: %s", err);
        error(r, "F0000", msg, "fix the configuration and run RELOAD again");
        return CMD_ERROR;
    }
    complete(r, "RELOAD");
    return CMD_DONE;
}

static cmd_result cmd_pause(pgs_client *c, reply *r, const char *db)
{
    if (!not_console(r, "pause", db)) return CMD_ERROR;
    log_info("C-%u: PAUSE %s (user %s)", c->id, db ? db : "(every database)", c->user);
    pool_pause(db);
    uint64_t gen = worker_broadcast_ctl(WM_PAUSE, db);
    start_wait(c, WAIT_PAUSE, db, gen, 0);
    return CMD_WAIT;
}

static cmd_result cmd_resume(pgs_client *c, reply *r, const char *db)
{
    if (!not_console(r, "resume", db)) return CMD_ERROR;
    int rc = pool_resume(db);
    if (rc < 0) {
        char msg[200];
        if (rc == -2)
            snprintf(msg, sizeof(msg),
                     "every database is paused (PAUSE without a name): RESUME without a name "
                     "resumes them, not RESUME %.100s",
                     db);
        else if (db)
            snprintf(msg, sizeof(msg), "database \"%.100s\" is not paused", db);
        else
            snprintf(msg, sizeof(msg), "nothing is paused");
        error(r, "55000", msg, NULL);
        return CMD_ERROR;
    }
    log_info("C-%u: RESUME %s (user %s)", c->id, db ? db : "(every database)", c->user);
    (void)worker_broadcast_ctl(WM_RESUME, db);
    complete(r, "RESUME");
    return CMD_DONE;
}

static cmd_result cmd_kill(pgs_client *c, reply *r, const char *db)
{
    if (!not_console(r, "kill", db)) return CMD_ERROR;
    log_info("C-%u: KILL %s (user %s)", c->id, db ? db : "(every database)", c->user);
    /* Paused first, as PgBouncer does: clients that reconnect wait for
     * RESUME instead of finding a database that is being emptied. */
    pool_pause(db);
    pool_close_before(db, pgs_now_us());
    uint64_t gen = worker_broadcast_ctl(WM_KILL, db);
    start_wait(c, WAIT_KILL, db, gen, 0);
    return CMD_WAIT;
}

static cmd_result cmd_wait_close(pgs_client *c, reply *r, const char *db)
{
    if (!not_console(r, "wait for", db)) return CMD_ERROR;
    log_info("C-%u: WAIT_CLOSE %s (user %s)", c->id, db ? db : "(every database)", c->user);
    uint64_t now = pgs_now_us();
    pool_close_before(db, now);
    uint64_t gen = worker_broadcast_ctl(WM_WAIT_CLOSE, db);
    start_wait(c, WAIT_CLOSE, db, gen, now);
    return CMD_WAIT;
}

static cmd_result cmd_shutdown(pgs_client *c, reply *r)
{
    log_info("C-%u: SHUTDOWN (user %s)", c->id, c->user);
    /* Exactly what SIGTERM does (main.c): stop accepting, let running
     * transactions finish, exit.  This console connection is closed by
     * the drain like every other client. */
    if (kill(getpid(), SIGTERM) != 0) {
        error(r, "58000", "SHUTDOWN failed: could not signal pgscale", NULL);
        return CMD_ERROR;
    }
    complete(r, "SHUTDOWN");
    return CMD_DONE;
}

static cmd_result cmd_unfence(pgs_client *c, reply *r, const char *node)
{
    char who[160], state[6], msg[700], warning[400];
    snprintf(who, sizeof(who), "C-%u (user %.100s)", c->id, c->user);
    if (monitor_unfence(node, who, state, msg, sizeof(msg), warning, sizeof(warning)) < 0) {
        char full[800];
        snprintf(full, sizeof(full), "UNFENCE refused: %s", msg);
        error(r, state, full, NULL);
        return CMD_ERROR;
    }
    if (warning[0]) notice(r, "WARNING", "01000", warning);
    complete(r, "UNFENCE");
    return CMD_DONE;
}

/* Splits "WORD [ARG]" (ARG may be a "quoted" name, "" for a quote). */
static int split_words(const char *sql, char words[3][128])
{
    int n = 0;
    const char *s = sql;
    while (*s) {
        while (isspace((unsigned char)*s)) s++;
        if (!*s) break;
        if (n == 3) return 4;
        size_t l = 0;
        if (*s == '"') {
            s++;
            for (; *s; s++) {
                if (*s == '"' && s[1] == '"') s++;
                else if (*s == '"') break;
                if (l < 127) words[n][l++] = *s;
            }
            if (*s != '"') return -1;
            s++;
        } else {
            while (*s && !isspace((unsigned char)*s)) {
                if (l < 127) words[n][l++] = *s;
                s++;
            }
        }
        words[n][l] = '\0';
        n++;
    }
    return n;
}

/* Runs one admin statement (already trimmed, without ';'). */
static cmd_result run_command(pgs_client *c, reply *r, const char *sql)
{
    char words[3][128];
    int n = split_words(sql, words);
    if (n == 2 && strcasecmp(words[0], "SHOW") == 0) {
        const char *what = words[1];
        void (*fn)(reply *) = NULL;
        if (strcasecmp(what, "POOLS") == 0) fn = show_pools;
        else if (strcasecmp(what, "CLIENTS") == 0) fn = show_clients;
        else if (strcasecmp(what, "SERVERS") == 0) fn = show_servers;
        else if (strcasecmp(what, "STATS") == 0) fn = show_stats;
        else if (strcasecmp(what, "CONFIG") == 0) fn = show_config;
        else if (strcasecmp(what, "DATABASES") == 0) fn = show_databases;
        else if (strcasecmp(what, "USERS") == 0) fn = show_users;
        else if (strcasecmp(what, "LISTS") == 0) fn = show_lists;
        else if (strcasecmp(what, "NODES") == 0) fn = show_nodes;
        else if (strcasecmp(what, "CACHE") == 0) fn = show_cache;
        if (fn) {
            if (!allowed(c, r, false, "SHOW")) return CMD_ERROR;
            fn(r);
            return CMD_DONE;
        }
    } else if (n == 2 && strcasecmp(words[0], "UNFENCE") == 0) {
        if (!allowed(c, r, true, "UNFENCE")) return CMD_ERROR;
        return cmd_unfence(c, r, words[1]);
    } else if (n == 1 || n == 2) {
        const char *cmd = words[0], *db = n == 2 ? words[1] : NULL;
        static const char *const names[] = {"RELOAD", "PAUSE", "RESUME",
                                            "KILL",   "WAIT_CLOSE", "SHUTDOWN"};
        for (size_t i = 0; i < PGS_ARRAY_LEN(names); i++) {
            if (strcasecmp(cmd, names[i]) != 0) continue;
            bool takes_db = i >= 1 && i <= 4;
            if (db && !takes_db) break; /* RELOAD x, SHUTDOWN x: unknown */
            if (!allowed(c, r, true, names[i])) return CMD_ERROR;
            switch (i) {
            case 0: return cmd_reload(c, r);
            case 1: return cmd_pause(c, r, db);
            case 2: return cmd_resume(c, r, db);
            case 3: return cmd_kill(c, r, db);
            case 4: return cmd_wait_close(c, r, db);
            default: return cmd_shutdown(c, r);
            }
        }
    }
    char msg[200];
    snprintf(msg, sizeof(msg), "unknown admin command \"%.100s\"", sql);
    error(r, "42601", msg, commands_hint);
    return CMD_ERROR;
}

/* Runs the ';'-separated statements of sql until one fails (the rest is
 * skipped, as PostgreSQL does) or one waits (the rest is kept on the wait
 * and run when it ends).  Returns true when a command is waiting. */
static bool run_query(pgs_client *c, reply *r, const char *sql, bool first)
{
    const char *s = sql;
    bool any = false;
    while (*s) {
        const char *e = s;
        bool quoted = false;
        while (*e && (quoted || *e != ';')) {
            if (*e == '"') quoted = !quoted;
            e++;
        }
        char *stmt = pgs_xstrndup(s, (size_t)(e - s));
        s = *e ? e + 1 : e;
        char *t = stmt;
        while (isspace((unsigned char)*t)) t++;
        size_t tl = strlen(t);
        while (tl > 0 && isspace((unsigned char)t[tl - 1])) t[--tl] = '\0';
        if (!*t) {
            free(stmt);
            continue;
        }
        any = true;
        cmd_result res = run_command(c, r, t);
        free(stmt);
        if (res == CMD_WAIT) {
            c->admin_wait->rest = pgs_xstrdup(s);
            return true;
        }
        if (res == CMD_ERROR) return false;
    }
    if (!any && first) {
        proto_out o;
        reply_out(r, &o, 16);
        proto_empty_query(&o);
        reply_commit(r, &o);
    }
    return false;
}

/* Sends and frees r; false when the client is gone. */
static bool send_reply(pgs_client *c, reply *r)
{
    bool ok = true;
    if (r->len) {
        uv_buf_t ub = uv_buf_init((char *)r->data, (unsigned)r->len);
        if (io_send(c->w, &c->s, &ub, 1) < 0) {
            client_close(c, "write failed");
            ok = false;
        }
    }
    free(r->data);
    r->data = NULL;
    r->len = r->cap = 0;
    return ok;
}

static void ready(reply *r)
{
    proto_out o;
    reply_out(r, &o, 16);
    proto_ready_for_query(&o, 'I');
    reply_commit(r, &o);
}

static const char *wait_tag(int kind)
{
    return kind == WAIT_PAUSE ? "PAUSE" : kind == WAIT_CLOSE ? "WAIT_CLOSE" : "KILL";
}

/* Ends the wait of c: the command's result (an error if sqlstate), then
 * the statements that followed it, then whatever the client sent since. */
static void finish_wait(pgs_client *c, const char *sqlstate, const char *msg, const char *hint)
{
    pgs_admin_wait *aw = c->admin_wait;
    reply r = {0};
    bool waiting = false;
    if (sqlstate) {
        error(&r, sqlstate, msg, hint);
    } else {
        if (aw->kind == WAIT_KILL) {
            char m[200];
            snprintf(m, sizeof(m),
                     "%s%s stays paused: new clients wait until RESUME%s%s",
                     aw->db ? "database " : "every database", aw->db ? aw->db : "",
                     aw->db ? " " : "", aw->db ? aw->db : "");
            notice(&r, "NOTICE", "00000", m);
        }
        complete(&r, wait_tag(aw->kind));
    }
    char *rest = aw->rest;
    aw->rest = NULL;
    free_wait(aw);
    if (!sqlstate && rest) waiting = run_query(c, &r, rest, false);
    free(rest);
    if (waiting) {
        send_reply(c, &r);
        return;
    }
    ready(&r);
    if (!send_reply(c, &r)) return;
    if (io_read_start(&c->s) < 0) {
        client_close(c, "read failed");
        return;
    }
    admin_data(c); /* requests that arrived during the wait */
}

static void check_wait(pgs_admin_wait *aw, uint64_t now)
{
    pgs_client *c = aw->c;
    bool acked = worker_ctl_done(aw->gen);
    int left = 0;
    if (acked && aw->kind == WAIT_PAUSE) left = pool_active_servers(aw->db);
    if (acked && aw->kind == WAIT_CLOSE) left = pool_old_servers(aw->db, aw->since_us);
    if (acked && left == 0) {
        log_info("C-%u: %s %s done in %llu ms", c->id, wait_tag(aw->kind),
                 aw->db ? aw->db : "(every database)",
                 (unsigned long long)(pgs_elapsed_us(now, aw->start_us) / 1000u));
        finish_wait(c, NULL, NULL, NULL);
        return;
    }
    if (now < aw->deadline_us) return;
    char msg[400], hint[300];
    const char *db = aw->db ? aw->db : "(every database)";
    unsigned ms = (unsigned)(pgs_elapsed_us(aw->deadline_us, aw->start_us) / 1000u);
    if (!acked) {
        snprintf(msg, sizeof(msg), "%s %s: not every worker answered within %u ms",
                 wait_tag(aw->kind), db, ms);
        snprintf(hint, sizeof(hint), "pgscale may be overloaded; run the command again");
    } else if (aw->kind == WAIT_PAUSE) {
        snprintf(msg, sizeof(msg),
                 "PAUSE %s: %d server connections still in use after %u ms (transactions still "
                 "running, or session-mode clients holding their server); the database stays "
                 "paused",
                 db, left, ms);
        snprintf(hint, sizeof(hint),
                 "run PAUSE again to keep waiting, KILL to close them, or RESUME to undo "
                 "(the bound is shutdown_timeout)");
    } else {
        snprintf(msg, sizeof(msg),
                 "WAIT_CLOSE %s: %d server connections opened before the command are still "
                 "in use after %u ms; they close when their transactions (or sessions) end",
                 db, left, ms);
        snprintf(hint, sizeof(hint),
                 "run WAIT_CLOSE again to keep waiting, or KILL to close them at once (the "
                 "bound is shutdown_timeout)");
    }
    log_warn("C-%u: %s", c->id, msg);
    finish_wait(c, "55006", msg, hint);
}

void admin_janitor(pgs_worker *w, uint64_t now)
{
    pgs_list *l = wait_list(w);
    /* finish_wait may start another wait of the same client (the next
     * statement), which joins the tail: take the current ones only */
    pgs_list *last = l->prev;
    pgs_list *it = l->next;
    while (it != l) {
        pgs_admin_wait *aw = list_entry(it, pgs_admin_wait, node);
        bool at_last = it == last;
        it = it->next;
        check_wait(aw, now);
        if (at_last) break;
    }
}

void admin_cancel(pgs_client *c)
{
    pgs_admin_wait *aw = c->admin_wait;
    if (!aw) return;
    char msg[300];
    const char *db = aw->db ? aw->db : "(every database)";
    if (aw->kind == WAIT_PAUSE) {
        /* A PAUSE given up is undone, as PgBouncer does on ^C. */
        if (pool_resume(aw->db) == 0) (void)worker_broadcast_ctl(WM_RESUME, aw->db);
        snprintf(msg, sizeof(msg), "canceling PAUSE %s due to user request; it is resumed", db);
    } else {
        snprintf(msg, sizeof(msg), "canceling %s %s due to user request", wait_tag(aw->kind),
                 db);
    }
    log_info("C-%u: %s", c->id, msg);
    finish_wait(c, "57014", msg, NULL);
}

void admin_welcome(pgs_client *c)
{
    reply r = {0};
    proto_out o;
    reply_out(&r, &o, 1024);
    proto_auth_request(&o, 0, NULL, 0);
    proto_parameter_status(&o, "server_version", "15.0 (pgscale " "0.1.0" ")");
    proto_parameter_status(&o, "server_encoding", "UTF8");
    proto_parameter_status(&o, "client_encoding", "UTF8");
    proto_parameter_status(&o, "DateStyle", "ISO, MDY");
    proto_parameter_status(&o, "integer_datetimes", "on");
    proto_parameter_status(&o, "standard_conforming_strings", "on");
    proto_parameter_status(&o, "TimeZone", "UTC");
    proto_backend_key(&o, worker_client_pid(c), c->cancel_key);
    proto_ready_for_query(&o, 'I');
    reply_commit(&r, &o);
    if (!send_reply(c, &r)) return;
    admin_data(c);
}

void admin_data(pgs_client *c)
{
    if (c->admin_wait || c->s.closing) return; /* the rest waits for the running command */
    pgs_buf *b = &c->s.rbuf;
    reply r = {0};
    while (b->data && b->pos < b->len) {
        uint8_t type;
        uint32_t len;
        int rc = proto_peek_header(b->data + b->pos, b->len - b->pos, 1u << 20, &type, &len);
        if (rc == PROTO_NEED_MORE) break;
        if (rc < 0) {
            free(r.data);
            client_fail(c, "08P01", "invalid message length", NULL);
            return;
        }
        if (b->len - b->pos < len + 1) {
            if (io_buf_make_room(c->w, &c->s, len + 1) < 0) {
                free(r.data);
                return;
            }
            break;
        }
        const uint8_t *body = b->data + b->pos + 5;
        b->pos += len + 1;
        if (type == 'X') {
            free(r.data);
            client_close(c, "admin client left");
            return;
        }
        if (type == 'Q') {
            char *sql = pgs_xstrndup((const char *)body, len - 4);
            bool waiting = run_query(c, &r, sql, true);
            free(sql);
            if (waiting) {
                /* answered when the command is done (admin_janitor) */
                io_read_stop(&c->s);
                send_reply(c, &r);
                return;
            }
        } else if (type == 'S') {
            /* fall through to ReadyForQuery */
        } else if (type == 'H') {
            continue;
        } else {
            error(&r, "0A000", "the admin console supports the simple query protocol only",
                  "use psql, or your driver's simple-query mode");
            if (type == 'P' || type == 'B' || type == 'D' || type == 'E' || type == 'C')
                continue; /* wait for Sync */
        }
        ready(&r);
    }
    if (!send_reply(c, &r)) return;
    io_buf_release_if_empty(c->w, &c->s);
}
