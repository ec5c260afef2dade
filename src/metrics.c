/* /metrics, /api/status and /healthz (metrics.h). */
#include "metrics.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "changefeed.h"
#include "config.h"
#include "pool.h"
#include "rcache.h"
#include "topology.h"
#include "worker.h"

/* ---------------------------------------------------------------- errors */

/* PostgreSQL's SQLSTATE classes (Appendix A of its manual). */
static const char err_classes[PGS_ERR_CLASSES - 1][3] = {
    "00", "01", "02", "03", "08", "09", "0A", "0B", "0F", "0L", "0P",
    "0Z", "20", "21", "22", "23", "24", "25", "26", "27", "28", "2B",
    "2D", "2F", "34", "38", "39", "3B", "3D", "3F", "40", "42", "44",
    "53", "54", "55", "57", "58", "72", "F0", "HV", "P0", "XX"};
_Static_assert(PGS_ERR_CLASSES - 1 == 43, "one slot per class, then other");

unsigned metrics_err_class(const char *sqlstate)
{
    if (sqlstate && sqlstate[0] && sqlstate[1])
        for (unsigned i = 0; i < PGS_ERR_CLASSES - 1; i++)
            if (err_classes[i][0] == sqlstate[0] && err_classes[i][1] == sqlstate[1]) return i;
    return PGS_ERR_CLASSES - 1;
}

const char *metrics_err_class_name(unsigned i)
{
    return i < PGS_ERR_CLASSES - 1 ? err_classes[i] : "other";
}

#define RECENT_ERRORS 20

typedef struct recent_error {
    uint64_t wall_us;
    char sqlstate[6];
    char message[240];
    char database[64], user[64];
} recent_error;

static pthread_mutex_t recent_lock = PTHREAD_MUTEX_INITIALIZER;
static recent_error recent[RECENT_ERRORS];
static unsigned recent_next, recent_count;
/* errors to clients that had no pool yet (refused logins and the like) */
static _Atomic uint64_t poolless_errors[PGS_ERR_CLASSES];

void metrics_note_error(pgs_pool *p, const char *sqlstate, const char *msg,
                        const char *database, const char *user)
{
    unsigned cls = metrics_err_class(sqlstate);
    if (p) pgs_stat_add(&p->stats.errors[cls], 1);
    else atomic_fetch_add_explicit(&poolless_errors[cls], 1, memory_order_relaxed);
    if (pthread_mutex_trylock(&recent_lock) != 0) return;
    recent_error *e = &recent[recent_next];
    recent_next = (recent_next + 1) % RECENT_ERRORS;
    if (recent_count < RECENT_ERRORS) recent_count++;
    e->wall_us = pgs_wall_us();
    snprintf(e->sqlstate, sizeof(e->sqlstate), "%s", sqlstate ? sqlstate : "");
    snprintf(e->message, sizeof(e->message), "%s", msg ? msg : "");
    snprintf(e->database, sizeof(e->database), "%s", database ? database : "");
    snprintf(e->user, sizeof(e->user), "%s", user ? user : "");
    pthread_mutex_unlock(&recent_lock);
}

/* --------------------------------------------------------------- reloads */

static pthread_mutex_t reload_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t reloads_ok, reloads_failed, last_reload_wall_us;
static bool last_reload_ok = true;
static char last_reload_msg[300];

void metrics_note_reload(bool ok, const char *why)
{
    pthread_mutex_lock(&reload_lock);
    if (ok) reloads_ok++;
    else reloads_failed++;
    last_reload_ok = ok;
    last_reload_wall_us = pgs_wall_us();
    snprintf(last_reload_msg, sizeof(last_reload_msg), "%s", why ? why : "");
    pthread_mutex_unlock(&reload_lock);
}

/* --------------------------------------------------------------- process */

typedef struct proc_stats {
    double cpu_seconds;
    uint64_t rss_bytes;
    int open_fds, max_fds;
} proc_stats;

static void proc_read(proc_stats *ps)
{
    memset(ps, 0, sizeof(*ps));
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    FILE *f = fopen("/proc/self/stat", "r");
    if (f) {
        char line[1024];
        if (fgets(line, sizeof(line), f)) {
            /* the command name may hold spaces: fields count from its ')' */
            const char *r = strrchr(line, ')');
            unsigned long ut = 0, st = 0;
            if (r && sscanf(r + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut,
                            &st) == 2 && tick > 0)
                ps->cpu_seconds = (double)(ut + st) / (double)tick;
        }
        fclose(f);
    }
    f = fopen("/proc/self/statm", "r");
    if (f) {
        unsigned long size = 0, res = 0;
        if (fscanf(f, "%lu %lu", &size, &res) == 2 && page > 0)
            ps->rss_bytes = (uint64_t)res * (uint64_t)page;
        fclose(f);
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL)
            if (de->d_name[0] != '.') ps->open_fds++;
        closedir(d);
        ps->open_fds--; /* the directory's own */
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) ps->max_fds = (int)rl.rlim_cur;
}

/* ---------------------------------------------------------------- pools */

typedef struct pool_row {
    const char *database, *user, *node;
    int pool_mode;
    pgs_pool_snap s;
} pool_row;

/* Every pool (at most max of them) with its snapshot, and the totals of
 * all of them; *dropped: pools left out.  Names are copied: the caller
 * frees the rows with rows_free. */
static pool_row *rows_get(int max, int *n_out, int *dropped, pgs_pool_snap *total)
{
    int cap = 16, n = 0;
    pool_row *rows = pgs_xmalloc((size_t)cap * sizeof(*rows));
    uint64_t now = pgs_now_us();
    pgs_pool_snap s;
    if (total) memset(total, 0, sizeof(*total));
    *dropped = 0;
    pthread_mutex_lock(&g_pgs.pools_lock);
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next) {
        pool_snapshot(sh, now, &s);
        if (total) {
            total->cl_active += s.cl_active;
            total->cl_waiting += s.cl_waiting;
            total->sv_total += s.sv_total;
            total->xact_count += s.xact_count;
            total->query_count += s.query_count;
            if (s.maxwait_us > total->maxwait_us) total->maxwait_us = s.maxwait_us;
            for (int b = 0; b < PGS_HIST_BUCKETS; b++) total->xact_hist[b] += s.xact_hist[b];
        }
        if (n >= max) {
            (*dropped)++;
            continue;
        }
        if (n == cap) {
            cap *= 2;
            rows = pgs_xrealloc(rows, (size_t)cap * sizeof(*rows));
        }
        rows[n].database = pgs_xstrdup(sh->database);
        rows[n].user = pgs_xstrdup(sh->user);
        rows[n].node = pgs_xstrdup(sh->node ? sh->node->name : "primary");
        rows[n].pool_mode = atomic_load(&sh->pool_mode);
        rows[n].s = s;
        n++;
    }
    pthread_mutex_unlock(&g_pgs.pools_lock);
    *n_out = n;
    return rows;
}

static void rows_free(pool_row *rows, int n)
{
    for (int i = 0; i < n; i++) {
        free((char *)rows[i].database);
        free((char *)rows[i].user);
        free((char *)rows[i].node);
    }
    free(rows);
}

/* --------------------------------------------------------------- history */

typedef struct sample {
    double t;                      /* wall clock, seconds */
    double tps, qps;
    double hits_ps;                /* answered from the cache: no server, no transaction */
    double p50_ms, p95_ms, p99_ms; /* NAN: no transaction in the second */
    int clients, waiting;
    double hit_ratio;              /* NAN: no cache lookup in the second */
} sample;

static pthread_mutex_t hist_lock = PTHREAD_MUTEX_INITIALIZER;
static sample history[METRICS_HISTORY];
static unsigned hist_next, hist_count;
/* the sampler's previous totals (its thread only) */
static bool have_prev;
static uint64_t prev_us, prev_xacts, prev_queries, prev_hits, prev_misses;
static uint64_t prev_hist[PGS_HIST_BUCKETS];

static const double hist_bounds_s[PGS_HIST_BUCKETS - 1] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,   0.1,     0.25,   0.5,   1,     2.5,   5,     10};

/* The q-quantile of a histogram's counts, interpolated inside its bucket
 * (as Prometheus's histogram_quantile does); seconds. */
double metrics_hist_quantile(const uint64_t *h, double q)
{
    uint64_t total = 0;
    for (int b = 0; b < PGS_HIST_BUCKETS; b++) total += h[b];
    if (!total) return NAN;
    double rank = q * (double)total, seen = 0;
    for (int b = 0; b < PGS_HIST_BUCKETS; b++) {
        if (seen + (double)h[b] >= rank && h[b]) {
            if (b == PGS_HIST_BUCKETS - 1) return hist_bounds_s[b - 1];
            double lo = b ? hist_bounds_s[b - 1] : 0, hi = hist_bounds_s[b];
            return lo + (hi - lo) * (rank - seen) / (double)h[b];
        }
        seen += (double)h[b];
    }
    return hist_bounds_s[PGS_HIST_BUCKETS - 2];
}

void metrics_sample(void)
{
    int n, dropped;
    pgs_pool_snap t;
    pool_row *rows = rows_get(0, &n, &dropped, &t);
    rows_free(rows, n);
    rcache_totals ct;
    rcache_totals_get(&ct);
    uint64_t now = pgs_now_us();
    sample s = {.t = (double)pgs_wall_us() / 1e6,
                .p50_ms = NAN, .p95_ms = NAN, .p99_ms = NAN, .hit_ratio = NAN};
    s.clients = atomic_load(&g_pgs.logged_in_clients);
    s.waiting = t.cl_waiting;
    if (have_prev) {
        double dt = (double)pgs_elapsed_us(now, prev_us) / 1e6;
        if (dt <= 0) dt = 1;
        s.tps = (double)(t.xact_count - prev_xacts) / dt;
        s.qps = (double)(t.query_count - prev_queries) / dt;
        uint64_t d[PGS_HIST_BUCKETS];
        for (int b = 0; b < PGS_HIST_BUCKETS; b++) d[b] = t.xact_hist[b] - prev_hist[b];
        s.p50_ms = metrics_hist_quantile(d, 0.50) * 1000.0;
        s.p95_ms = metrics_hist_quantile(d, 0.95) * 1000.0;
        s.p99_ms = metrics_hist_quantile(d, 0.99) * 1000.0;
        s.hits_ps = (double)(ct.hits - prev_hits) / dt;
        uint64_t looked = (ct.hits - prev_hits) + (ct.misses - prev_misses);
        if (looked) s.hit_ratio = (double)(ct.hits - prev_hits) / (double)looked;
    }
    have_prev = true;
    prev_us = now;
    prev_xacts = t.xact_count;
    prev_queries = t.query_count;
    prev_hits = ct.hits;
    prev_misses = ct.misses;
    memcpy(prev_hist, t.xact_hist, sizeof(prev_hist));
    pthread_mutex_lock(&hist_lock);
    history[hist_next] = s;
    hist_next = (hist_next + 1) % METRICS_HISTORY;
    if (hist_count < METRICS_HISTORY) hist_count++;
    pthread_mutex_unlock(&hist_lock);
}

/* ------------------------------------------------------------ Prometheus */

/* A label value: backslash, double quote and newline escaped. */
static void prom_label(sbuf *b, const char *v)
{
    for (const char *p = v ? v : ""; *p; p++) {
        if (*p == '\\') sb_puts(b, "\\\\");
        else if (*p == '"') sb_puts(b, "\\\"");
        else if (*p == '\n') sb_puts(b, "\\n");
        else sb_putc(b, *p);
    }
}

static void prom_head(sbuf *b, const char *name, const char *type, const char *help)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void prom_pool_labels(sbuf *b, const pool_row *r)
{
    sb_puts(b, "database=\"");
    prom_label(b, r->database);
    sb_puts(b, "\",user=\"");
    prom_label(b, r->user);
    sb_puts(b, "\",node=\"");
    prom_label(b, r->node);
    sb_putc(b, '"');
}

/* One sample per pool: name{pool labels[,extra]} value. */
typedef double (*pool_value_fn)(const pgs_pool_snap *s, int arg);

static void prom_pools(sbuf *b, const pool_row *rows, int n, const char *name, const char *type,
                       const char *help, pool_value_fn fn, const char *label,
                       const char *const *label_values, int n_values)
{
    prom_head(b, name, type, help);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < (label ? n_values : 1); k++) {
            sb_printf(b, "%s{", name);
            prom_pool_labels(b, &rows[i]);
            if (label) sb_printf(b, ",%s=\"%s\"", label, label_values[k]);
            sb_printf(b, "} %.17g\n", fn(&rows[i].s, k));
        }
}

static void prom_hist(sbuf *b, const pool_row *rows, int n, const char *name, const char *help,
                      bool wait)
{
    prom_head(b, name, "histogram", help);
    for (int i = 0; i < n; i++) {
        const pgs_pool_snap *s = &rows[i].s;
        const uint64_t *h = wait ? s->wait_hist : s->xact_hist;
        uint64_t cum = 0;
        for (int k = 0; k < PGS_HIST_BUCKETS; k++) {
            cum += h[k];
            sb_printf(b, "%s_bucket{", name);
            prom_pool_labels(b, &rows[i]);
            if (k < PGS_HIST_BUCKETS - 1) sb_printf(b, ",le=\"%g\"} %llu\n", hist_bounds_s[k],
                                                    (unsigned long long)cum);
            else sb_printf(b, ",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
        }
        sb_printf(b, "%s_sum{", name);
        prom_pool_labels(b, &rows[i]);
        sb_printf(b, "} %.6f\n", (double)(wait ? s->wait_us : s->xact_us) / 1e6);
        sb_printf(b, "%s_count{", name);
        prom_pool_labels(b, &rows[i]);
        sb_printf(b, "} %llu\n", (unsigned long long)cum);
    }
}

static double v_clients(const pgs_pool_snap *s, int k) { return k ? s->cl_waiting : s->cl_active; }
static double v_servers(const pgs_pool_snap *s, int k)
{
    return k == 0 ? s->sv_active : k == 1 ? s->sv_idle : s->sv_login;
}
static double v_overflow(const pgs_pool_snap *s, int k) { (void)k; return s->sv_overflow; }
static double v_max(const pgs_pool_snap *s, int k) { (void)k; return s->max_total; }
static double v_size(const pgs_pool_snap *s, int k) { (void)k; return s->pool_size; }
static double v_pinned(const pgs_pool_snap *s, int k) { (void)k; return s->pinned; }
static double v_maxwait(const pgs_pool_snap *s, int k) { (void)k; return (double)s->maxwait_us / 1e6; }
static double v_checkouts(const pgs_pool_snap *s, int k) { (void)k; return (double)s->checkouts; }
static double v_timeouts(const pgs_pool_snap *s, int k) { (void)k; return (double)s->pool_timeouts; }
static double v_xacts(const pgs_pool_snap *s, int k) { (void)k; return (double)s->xact_count; }
static double v_queries(const pgs_pool_snap *s, int k) { (void)k; return (double)s->query_count; }
static double v_bytes_in(const pgs_pool_snap *s, int k) { (void)k; return (double)s->bytes_in; }
static double v_bytes_out(const pgs_pool_snap *s, int k) { (void)k; return (double)s->bytes_out; }
static double v_query_secs(const pgs_pool_snap *s, int k) { (void)k; return (double)s->query_us / 1e6; }

static void prom_gauge(sbuf *b, const char *name, const char *type, const char *help, double v)
{
    prom_head(b, name, type, help);
    sb_printf(b, "%s %.17g\n", name, v);
}

static void prom_nodes(sbuf *b)
{
    const pgs_node *primary = topology_primary();
    int n = topology_count();
    prom_head(b, "pgscale_node_info", "gauge",
              "A PostgreSQL node pgscale knows: its address, role and state (value 1).");
    for (int i = 0; i < n; i++) {
        pgs_node *nd = topology_node(i);
        int role = atomic_load(&nd->role);
        if (nd == primary && role != PGS_ROLE_REPLICA) role = PGS_ROLE_PRIMARY;
        const pgs_url *u = nd->url;
        sb_puts(b, "pgscale_node_info{node=\"");
        prom_label(b, nd->name);
        sb_puts(b, "\",addr=\"");
        prom_label(b, u->host && *u->host ? u->host : PGS_DEFAULT_SOCKET_DIR);
        sb_printf(b, "\",port=\"%d\",role=\"%s\",state=\"%s\"} 1\n", u->port ? u->port : 5432,
                  topology_role_name(role), topology_state_name(atomic_load(&nd->state)));
    }
    static const struct {
        const char *name, *type, *help;
    } m[] = {
        {"pgscale_node_up", "gauge", "1 when the node answers health checks (or is not checked yet)."},
        {"pgscale_node_primary", "gauge", "1 for the node that takes writes."},
        {"pgscale_node_replay_lag_bytes", "gauge", "WAL the replica has not replayed yet."},
        {"pgscale_node_replay_lag_seconds", "gauge", "The replica's replay delay."},
        {"pgscale_node_reads_total", "counter", "Read transactions routed to the node."},
        {"pgscale_node_writes_total", "counter", "Write transactions routed to the node."},
        {"pgscale_node_retried_total", "counter", "Reads retried elsewhere after the node failed."},
        {"pgscale_node_transactions_running", "gauge", "Transactions running on the node now."},
    };
    for (size_t k = 0; k < PGS_ARRAY_LEN(m); k++) {
        prom_head(b, m[k].name, m[k].type, m[k].help);
        for (int i = 0; i < n; i++) {
            pgs_node *nd = topology_node(i);
            bool checked = atomic_load(&nd->checked_us) != 0;
            double v;
            switch (k) {
            case 0: v = atomic_load(&nd->state) == PGS_NODE_UP; break;
            case 1: v = nd == primary; break;
            case 2:
                if (!checked || nd == primary) continue;
                v = (double)atomic_load(&nd->lag_bytes);
                break;
            case 3:
                if (!checked || nd == primary) continue;
                v = (double)atomic_load(&nd->lag_ms) / 1000.0;
                break;
            case 4: v = (double)atomic_load(&nd->reads); break;
            case 5: v = (double)atomic_load(&nd->writes); break;
            case 6: v = (double)atomic_load(&nd->retried); break;
            default: v = atomic_load(&nd->outstanding); break;
            }
            sb_printf(b, "%s{node=\"", m[k].name);
            prom_label(b, nd->name);
            sb_printf(b, "\"} %.17g\n", v);
        }
    }
}

static void prom_cache(sbuf *b, const pgs_config *k)
{
    rcache_totals t;
    rcache_totals_get(&t);
    prom_gauge(b, "pgscale_cache_enabled", "gauge", "1 when the result cache is on.",
               k->cache.enabled);
    prom_gauge(b, "pgscale_cache_entries", "gauge", "Answers stored.", (double)t.entries);
    prom_gauge(b, "pgscale_cache_bytes", "gauge", "Memory the stored answers take.",
               (double)t.bytes);
    prom_gauge(b, "pgscale_cache_max_bytes", "gauge", "The cache's memory bound.",
               (double)t.max_bytes);
    prom_gauge(b, "pgscale_cache_fills_total", "counter",
               "Answers read from PostgreSQL to be stored.", (double)t.fills);
    prom_gauge(b, "pgscale_cache_fill_waits_total", "counter",
               "Lookups that waited for another client's fill.", (double)t.waits);
    prom_gauge(b, "pgscale_cache_fill_wait_timeouts_total", "counter",
               "Waits for a fill that ended at cache.fill_wait.", (double)t.wait_timeouts);
    prom_gauge(b, "pgscale_cache_table_bumps_total", "counter",
               "Table versions moved by writes.", (double)t.bumps);
    prom_gauge(b, "pgscale_cache_epoch_bumps_total", "counter",
               "Writes that ended every entry (they may have written anything).",
               (double)t.bumps_all);
    /* per class: the total row is their sum, so only the classes */
    static const char *const names[] = {"pgscale_cache_hits_total", "pgscale_cache_misses_total",
                                        "pgscale_cache_stored_total",
                                        "pgscale_cache_evictions_total",
                                        "pgscale_cache_invalidations_total",
                                        "pgscale_cache_expired_total",
                                        "pgscale_cache_refused_total"};
    static const char *const helps[] = {
        "Lookups answered from the cache, per rule.", "Lookups that went to PostgreSQL, per rule.",
        "Answers stored, per rule.", "Entries evicted for room, per rule.",
        "Entries ended by a write to a table they read, per rule.",
        "Entries ended by their TTL, per rule.",
        "Answers not stored, per rule and reason (too_big, no_room, lag)."};
    int n_rules = k->cache.n_rules;
    int last = n_rules ? RCACHE_CLASS_RULE0 +
                             PGS_MIN(n_rules, RCACHE_CLASSES - RCACHE_CLASS_RULE0) - 1
                       : RCACHE_CLASS_HINT;
    rcache_class_totals ct[RCACHE_CLASSES];
    for (int cls = 0; cls <= last; cls++) rcache_class_totals_get((unsigned)cls, &ct[cls]);
    for (size_t m = 0; m < PGS_ARRAY_LEN(names); m++) {
        prom_head(b, names[m], "counter", helps[m]);
        for (int cls = 0; cls <= last; cls++) {
            if (cls == RCACHE_CLASS_DEFAULT && n_rules) continue;
            char rule[16];
            if (cls == RCACHE_CLASS_DEFAULT) snprintf(rule, sizeof(rule), "default");
            else if (cls == RCACHE_CLASS_HINT) snprintf(rule, sizeof(rule), "hint");
            else snprintf(rule, sizeof(rule), "%d", cls - RCACHE_CLASS_RULE0 + 1);
            const rcache_class_totals *c = &ct[cls];
            uint64_t v[] = {c->hits, c->misses, c->stored, c->evictions, c->invalidations,
                            c->expired};
            if (m < PGS_ARRAY_LEN(v)) {
                sb_printf(b, "%s{rule=\"%s\"} %llu\n", names[m], rule,
                          (unsigned long long)v[m]);
            } else {
                sb_printf(b, "%s{rule=\"%s\",reason=\"too_big\"} %llu\n", names[m], rule,
                          (unsigned long long)c->refused_too_big);
                sb_printf(b, "%s{rule=\"%s\",reason=\"no_room\"} %llu\n", names[m], rule,
                          (unsigned long long)c->refused_no_room);
                sb_printf(b, "%s{rule=\"%s\",reason=\"lag\"} %llu\n", names[m], rule,
                          (unsigned long long)c->refused_lag);
            }
        }
    }
    prom_gauge(b, "pgscale_cache_redis_workers", "gauge",
               "Workers with the Redis tier on (0: the tier is off).", (double)t.redis_workers);
    prom_gauge(b, "pgscale_cache_redis_up", "gauge",
               "Workers whose connection to Redis is up.", (double)t.redis_up);
    prom_gauge(b, "pgscale_cache_redis_errors_total", "counter", "Redis errors.",
               (double)t.redis_errors);
    prom_gauge(b, "pgscale_cache_redis_timeouts_total", "counter",
               "Redis requests not answered within cache.redis_timeout.",
               (double)t.redis_timeouts);
    prom_gauge(b, "pgscale_cache_redis_checks_total", "counter",
               "Hits checked against the versions in Redis.", (double)t.redis_checks);
    prom_gauge(b, "pgscale_cache_redis_hits_total", "counter",
               "Answers found in Redis, stored by another instance.", (double)t.redis_hits);
    changefeed_stats fs;
    changefeed_stats_get(&fs);
    prom_head(b, "pgscale_cache_feed_state", "gauge",
              "The change feed's state (value 1 on the current one).");
    sb_printf(b, "pgscale_cache_feed_state{state=\"%s\"} 1\n", changefeed_state_name(fs.state));
    prom_gauge(b, "pgscale_cache_feed_bumps_total", "counter",
               "Transactions seen by the change feed whose tables were bumped.",
               (double)fs.bumps);
    prom_gauge(b, "pgscale_cache_feed_epoch_bumps_total", "counter",
               "Times the change feed ended every entry (gaps, unknown tables).",
               (double)fs.bumps_all);
}

void metrics_prometheus(sbuf *b, const pgs_config *k)
{
    int max_pools = k->http_max_pools;
    proc_stats ps;
    proc_read(&ps);
    double start = (double)g_pgs.start_wall_us / 1e6;
    prom_head(b, "pgscale_info", "gauge", "pgscale's version (value 1).");
    sb_printf(b, "pgscale_info{version=\"%s\"} 1\n", PGSCALE_VERSION);
    prom_gauge(b, "process_start_time_seconds", "gauge", "Start time, seconds since the epoch.",
               start);
    prom_gauge(b, "process_cpu_seconds_total", "counter", "User and system CPU time.",
               ps.cpu_seconds);
    prom_gauge(b, "process_resident_memory_bytes", "gauge", "Resident memory (VmRSS).",
               (double)ps.rss_bytes);
    prom_gauge(b, "process_open_fds", "gauge", "Open file descriptors.", ps.open_fds);
    prom_gauge(b, "process_max_fds", "gauge", "The open file descriptor limit.", ps.max_fds);
    prom_gauge(b, "pgscale_uptime_seconds", "gauge", "Seconds since pgscale started.",
               (double)pgs_wall_us() / 1e6 - start);
    prom_gauge(b, "pgscale_workers", "gauge", "Worker threads.", g_pgs.n_workers);
    prom_gauge(b, "pgscale_clients", "gauge", "Clients logged in (admin console aside).",
               atomic_load(&g_pgs.logged_in_clients));
    prom_gauge(b, "pgscale_client_connections", "gauge",
               "Client connections open, logged in or not.", atomic_load(&g_pgs.total_clients));
    prom_gauge(b, "pgscale_clients_logging_in", "gauge", "Clients not logged in yet.",
               atomic_load(&g_pgs.pending_logins));
    prom_gauge(b, "pgscale_max_client_conn", "gauge", "The client limit (max_client_conn).",
               k->max_client_conn);
    prom_gauge(b, "pgscale_draining", "gauge", "1 after SIGTERM: no new clients.",
               atomic_load(&g_pgs.shutting_down));
    pthread_mutex_lock(&reload_lock);
    prom_head(b, "pgscale_config_reloads_total", "counter",
              "Configuration reloads (SIGHUP, RELOAD), by result.");
    sb_printf(b, "pgscale_config_reloads_total{result=\"ok\"} %llu\n",
              (unsigned long long)reloads_ok);
    sb_printf(b, "pgscale_config_reloads_total{result=\"failed\"} %llu\n",
              (unsigned long long)reloads_failed);
    prom_gauge(b, "pgscale_config_last_reload_successful", "gauge",
               "1 when the last reload was applied (or none was tried).", last_reload_ok);
    prom_gauge(b, "pgscale_config_last_reload_timestamp_seconds", "gauge",
               "When the last reload was tried (0: never).", (double)last_reload_wall_us / 1e6);
    pthread_mutex_unlock(&reload_lock);

    int n, dropped;
    pool_row *rows = rows_get(max_pools, &n, &dropped, NULL);
    static const char *const cl_states[] = {"active", "waiting"};
    static const char *const sv_states[] = {"active", "idle", "login"};
    prom_pools(b, rows, n, "pgscale_pool_clients", "gauge",
               "Clients of the pool: active (linked or idle) or waiting for a server.", v_clients,
               "state", cl_states, 2);
    prom_pools(b, rows, n, "pgscale_pool_servers", "gauge",
               "Server connections: active (linked to a client), idle, login (connecting).",
               v_servers, "state", sv_states, 3);
    static const struct {
        const char *name, *type, *help;
        pool_value_fn fn;
        int hist; /* 0: fn's value; 1: the wait histogram; 2: the transaction one */
    } simple[] = {
        {"pgscale_pool_servers_overflow", "gauge", "Server connections above pool_size.",
         v_overflow, 0},
        {"pgscale_pool_size", "gauge", "pool_size (DB_POOL_SIZE).", v_size, 0},
        {"pgscale_pool_servers_max", "gauge",
         "pool_size + max_overflow: the most server connections.", v_max, 0},
        {"pgscale_pool_pinned_clients", "gauge", "Clients pinned to their server by session state.",
         v_pinned, 0},
        {"pgscale_pool_max_wait_seconds", "gauge", "The longest wait of a client waiting now.",
         v_maxwait, 0},
        {"pgscale_pool_checkouts_total", "counter", "Times a client asked for a server connection.",
         v_checkouts, 0},
        {"pgscale_pool_timeouts_total", "counter",
         "Clients that waited pool_timeout and got an error.", v_timeouts, 0},
        {"pgscale_pool_wait_seconds", "histogram",
         "Time from asking for a server connection to getting one.", NULL, 1},
        {"pgscale_pool_transactions_total", "counter", "Transactions finished (ReadyForQuery idle).",
         v_xacts, 0},
        {"pgscale_pool_queries_total", "counter", "Requests answered (each ReadyForQuery).",
         v_queries, 0},
        {"pgscale_pool_query_seconds_total", "counter", "Time spent in requests, summed.",
         v_query_secs, 0},
        {"pgscale_pool_transaction_duration_seconds", "histogram",
         "Transaction time, from the first request to ReadyForQuery idle.", NULL, 2},
        {"pgscale_pool_received_bytes_total", "counter", "Bytes received from clients.",
         v_bytes_in, 0},
        {"pgscale_pool_sent_bytes_total", "counter", "Bytes of server answers sent to clients.",
         v_bytes_out, 0},
    };
    for (size_t i = 0; i < PGS_ARRAY_LEN(simple); i++) {
        if (simple[i].hist)
            prom_hist(b, rows, n, simple[i].name, simple[i].help, simple[i].hist == 1);
        else
            prom_pools(b, rows, n, simple[i].name, simple[i].type, simple[i].help, simple[i].fn,
                       NULL, NULL, 0);
    }
    prom_head(b, "pgscale_pool_errors_total", "counter",
              "Errors sent to the pool's clients, by SQLSTATE class (classes seen only).");
    for (int i = 0; i < n; i++)
        for (unsigned e = 0; e < PGS_ERR_CLASSES; e++) {
            if (!rows[i].s.errors[e]) continue;
            sb_puts(b, "pgscale_pool_errors_total{");
            prom_pool_labels(b, &rows[i]);
            sb_printf(b, ",class=\"%s\"} %llu\n", metrics_err_class_name(e),
                      (unsigned long long)rows[i].s.errors[e]);
        }
    rows_free(rows, n);
    prom_head(b, "pgscale_client_errors_total", "counter",
              "Errors sent to clients that had no pool yet (refused logins), by SQLSTATE class.");
    for (unsigned e = 0; e < PGS_ERR_CLASSES; e++) {
        uint64_t v = atomic_load_explicit(&poolless_errors[e], memory_order_relaxed);
        if (v) sb_printf(b, "pgscale_client_errors_total{class=\"%s\"} %llu\n",
                         metrics_err_class_name(e), (unsigned long long)v);
    }
    prom_gauge(b, "pgscale_metrics_pools", "gauge", "Pools exported here.", n);
    prom_gauge(b, "pgscale_metrics_pools_dropped", "gauge",
               "Pools left out of this page (above http.max_pools).", dropped);
    prom_nodes(b);
    prom_cache(b, k);
}

/* ------------------------------------------------------------------ JSON */

/* A JSON string: quotes, backslashes and control characters escaped, and
 * bytes that are not UTF-8 (a message in a LATIN1 database) replaced. */
void metrics_json_str(sbuf *b, const char *s)
{
    if (!s) {
        sb_puts(b, "null");
        return;
    }
    sb_putc(b, '"');
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        if (c == '"' || c == '\\') {
            sb_putc(b, '\\');
            sb_putc(b, (char)c);
            p++;
        } else if (c < 0x20) {
            sb_printf(b, "\\u%04x", c);
            p++;
        } else if (c < 0x80) {
            sb_putc(b, (char)c);
            p++;
        } else {
            int n = c >= 0xf0 && c < 0xf5 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
            int ok = n > 0;
            for (int i = 1; ok && i < n; i++)
                if ((p[i] & 0xc0) != 0x80) ok = 0;
            /* no overlong forms, no surrogates, nothing past U+10FFFF */
            if (ok && ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0) ||
                       (c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90)))
                ok = 0;
            if (ok) {
                sb_putn(b, (const char *)p, (size_t)n);
                p += n;
            } else {
                sb_puts(b, "\\ufffd");
                p++;
            }
        }
    }
    sb_putc(b, '"');
}

static void json_num(sbuf *b, double v)
{
    if (isnan(v) || isinf(v)) sb_puts(b, "null");
    else if (v == floor(v) && fabs(v) < 1e15) sb_printf(b, "%.0f", v);
    else sb_printf(b, "%.4f", v);
}

static void json_time(sbuf *b, uint64_t wall_us)
{
    if (!wall_us) {
        sb_puts(b, "null");
        return;
    }
    time_t t = (time_t)(wall_us / 1000000u);
    struct tm tm;
    gmtime_r(&t, &tm);
    char buf[40];
    strftime(buf, sizeof(buf), "\"%Y-%m-%dT%H:%M:%SZ\"", &tm);
    sb_puts(b, buf);
}

#define JKEY(b, first, k) sb_printf(b, "%s\"%s\":", (first) ? "" : ",", k)

static void json_pools(sbuf *b, const pool_row *rows, int n)
{
    sb_puts(b, "\"pools\":[");
    for (int i = 0; i < n; i++) {
        const pgs_pool_snap *s = &rows[i].s;
        sb_puts(b, i ? ",{\"database\":" : "{\"database\":");
        metrics_json_str(b, rows[i].database);
        sb_puts(b, ",\"user\":");
        metrics_json_str(b, rows[i].user);
        sb_puts(b, ",\"node\":");
        metrics_json_str(b, rows[i].node);
        sb_printf(b, ",\"pool_mode\":\"%s\"",
                  rows[i].pool_mode == PGS_POOL_SESSION ? "session" : "transaction");
        sb_printf(b,
                  ",\"pool_size\":%d,\"max_overflow\":%d,\"max_total\":%d,\"cl_active\":%d,"
                  "\"cl_waiting\":%d,\"sv_active\":%d,\"sv_idle\":%d,\"sv_login\":%d,"
                  "\"sv_total\":%d,\"sv_overflow\":%d,\"sv_pinned\":%d,\"maxwait_ms\":%llu,"
                  "\"xact_count\":%llu,\"query_count\":%llu,\"bytes_in\":%llu,"
                  "\"bytes_out\":%llu,\"pool_timeouts\":%llu}",
                  s->pool_size, s->max_total - s->pool_size, s->max_total, s->cl_active,
                  s->cl_waiting, s->sv_active, s->sv_idle, s->sv_login, s->sv_total,
                  s->sv_overflow, s->pinned, (unsigned long long)(s->maxwait_us / 1000u),
                  (unsigned long long)s->xact_count, (unsigned long long)s->query_count,
                  (unsigned long long)s->bytes_in, (unsigned long long)s->bytes_out,
                  (unsigned long long)s->pool_timeouts);
    }
    sb_puts(b, "]");
}

static void json_nodes(sbuf *b)
{
    const pgs_node *primary = topology_primary();
    sb_puts(b, "\"nodes\":[");
    for (int i = 0; i < topology_count(); i++) {
        pgs_node *nd = topology_node(i);
        int role = atomic_load(&nd->role);
        if (nd == primary && role != PGS_ROLE_REPLICA) role = PGS_ROLE_PRIMARY;
        bool checked = atomic_load(&nd->checked_us) != 0;
        const pgs_url *u = nd->url;
        char lsn[40], err[256];
        topology_format_lsn(atomic_load(&nd->lsn), lsn, sizeof(lsn));
        topology_get_error(nd, err, sizeof(err));
        sb_puts(b, i ? ",{\"name\":" : "{\"name\":");
        metrics_json_str(b, nd->name);
        sb_printf(b, ",\"role\":\"%s\",\"state\":\"%s\",\"checked\":%s,\"addr\":",
                  topology_role_name(role), topology_state_name(atomic_load(&nd->state)),
                  checked ? "true" : "false");
        metrics_json_str(b, u->host && *u->host ? u->host : PGS_DEFAULT_SOCKET_DIR);
        sb_printf(b, ",\"port\":%d,\"lag_bytes\":", u->port ? u->port : 5432);
        if (checked && nd != primary)
            sb_printf(b, "%llu,\"lag_seconds\":%.3f", (unsigned long long)atomic_load(&nd->lag_bytes),
                      (double)atomic_load(&nd->lag_ms) / 1000.0);
        else
            sb_puts(b, "null,\"lag_seconds\":null");
        sb_puts(b, ",\"lsn\":");
        metrics_json_str(b, checked ? lsn : NULL);
        sb_printf(b, ",\"reads\":%llu,\"writes\":%llu,\"last_error\":",
                  (unsigned long long)atomic_load(&nd->reads),
                  (unsigned long long)atomic_load(&nd->writes));
        metrics_json_str(b, err[0] ? err : NULL);
        sb_putc(b, '}');
    }
    sb_puts(b, "]");
}

void metrics_status_json(sbuf *b, const pgs_config *k)
{
    int max_pools = k->http_max_pools;
    proc_stats ps;
    proc_read(&ps);
    uint64_t wall = pgs_wall_us();
    sb_printf(b, "{\"version\":\"%s\",\"time\":", PGSCALE_VERSION);
    json_time(b, wall);
    sb_printf(b, ",\"uptime_seconds\":%.1f,\"workers\":%d,\"draining\":%s,\"listen\":[",
              (double)pgs_elapsed_us(wall, g_pgs.start_wall_us) / 1e6, g_pgs.n_workers,
              atomic_load(&g_pgs.shutting_down) ? "true" : "false");
    for (int i = 0; i < k->n_listen; i++) {
        char a[300];
        const pgs_listen_addr *l = &k->listen[i];
        if (l->is_unix) snprintf(a, sizeof(a), "unix:%s", l->host);
        else snprintf(a, sizeof(a), strchr(l->host, ':') ? "[%s]:%d" : "%s:%d", l->host, l->port);
        if (i) sb_putc(b, ',');
        metrics_json_str(b, a);
    }
    sb_printf(b, "],\"pool_mode\":\"%s\",", k->pool_mode == PGS_POOL_SESSION ? "session" : "transaction");
    sb_printf(b,
              "\"process\":{\"rss_bytes\":%llu,\"cpu_seconds\":%.2f,\"open_fds\":%d,"
              "\"max_fds\":%d,\"clients\":%d,\"max_client_conn\":%d},",
              (unsigned long long)ps.rss_bytes, ps.cpu_seconds, ps.open_fds, ps.max_fds,
              atomic_load(&g_pgs.logged_in_clients), k->max_client_conn);
    int n, dropped;
    pgs_pool_snap t;
    pool_row *rows = rows_get(max_pools, &n, &dropped, &t);
    json_pools(b, rows, n);
    rows_free(rows, n);
    sb_printf(b,
              ",\"pools_dropped\":%d,\"totals\":{\"clients\":%d,\"cl_waiting\":%d,"
              "\"maxwait_ms\":%llu,\"xact_count\":%llu,\"query_count\":%llu},",
              dropped, atomic_load(&g_pgs.logged_in_clients), t.cl_waiting,
              (unsigned long long)(t.maxwait_us / 1000u), (unsigned long long)t.xact_count,
              (unsigned long long)t.query_count);
    json_nodes(b);
    rcache_totals ct;
    rcache_totals_get(&ct);
    uint64_t looked = ct.hits + ct.misses;
    sb_printf(b,
              ",\"cache\":{\"enabled\":%s,\"hits\":%llu,\"misses\":%llu,\"hit_ratio\":",
              k->cache.enabled ? "true" : "false", (unsigned long long)ct.hits,
              (unsigned long long)ct.misses);
    json_num(b, looked ? (double)ct.hits / (double)looked : NAN);
    sb_printf(b,
              ",\"entries\":%llu,\"bytes\":%llu,\"max_bytes\":%llu,\"evictions\":%llu,"
              "\"invalidations\":%llu,\"redis\":\"%s\"},",
              (unsigned long long)ct.entries, (unsigned long long)ct.bytes,
              (unsigned long long)ct.max_bytes, (unsigned long long)ct.evictions,
              (unsigned long long)ct.invalidations,
              !ct.redis_workers                    ? "off"
              : ct.redis_up == ct.redis_workers ? "up"
              : ct.redis_up == 0                ? "down"
                                                : "partial");
    sb_puts(b, "\"history\":[");
    pthread_mutex_lock(&hist_lock);
    for (unsigned i = 0; i < hist_count; i++) {
        const sample *s = &history[(hist_next + METRICS_HISTORY - hist_count + i) % METRICS_HISTORY];
        sb_puts(b, i ? ",{\"t\":" : "{\"t\":");
        json_num(b, floor(s->t));
        static const char *const keys[] = {"tps", "qps", "hits_ps", "p50_ms", "p95_ms", "p99_ms"};
        const double vals[] = {s->tps, s->qps, s->hits_ps, s->p50_ms, s->p95_ms, s->p99_ms};
        for (size_t k = 0; k < PGS_ARRAY_LEN(keys); k++) {
            sb_printf(b, ",\"%s\":", keys[k]);
            json_num(b, vals[k]);
        }
        sb_printf(b, ",\"clients\":%d,\"waiting\":%d,\"hit_ratio\":", s->clients, s->waiting);
        json_num(b, s->hit_ratio);
        sb_putc(b, '}');
    }
    pthread_mutex_unlock(&hist_lock);
    sb_puts(b, "],\"errors\":[");
    pthread_mutex_lock(&recent_lock);
    for (unsigned i = 0; i < recent_count; i++) {
        const recent_error *e = &recent[(recent_next + RECENT_ERRORS - 1 - i) % RECENT_ERRORS];
        sb_puts(b, i ? ",{\"time\":" : "{\"time\":");
        json_time(b, e->wall_us);
        sb_puts(b, ",\"sqlstate\":");
        metrics_json_str(b, e->sqlstate);
        sb_puts(b, ",\"message\":");
        metrics_json_str(b, e->message);
        sb_puts(b, ",\"database\":");
        metrics_json_str(b, e->database[0] ? e->database : NULL);
        sb_puts(b, ",\"user\":");
        metrics_json_str(b, e->user[0] ? e->user : NULL);
        sb_putc(b, '}');
    }
    pthread_mutex_unlock(&recent_lock);
    pthread_mutex_lock(&reload_lock);
    sb_printf(b, "],\"reloads\":{\"count\":%llu,\"failed\":%llu,\"last\":{\"time\":",
              (unsigned long long)(reloads_ok + reloads_failed),
              (unsigned long long)reloads_failed);
    json_time(b, last_reload_wall_us);
    sb_printf(b, ",\"ok\":%s,\"message\":", last_reload_ok ? "true" : "false");
    metrics_json_str(b, last_reload_wall_us ? last_reload_msg : NULL);
    pthread_mutex_unlock(&reload_lock);
    sb_puts(b, "}}}\n");
}

/* ---------------------------------------------------------------- health */

bool metrics_healthy(char *why, size_t whylen)
{
    if (atomic_load(&g_pgs.shutting_down)) {
        snprintf(why, whylen, "draining (SIGTERM): not accepting new clients");
        return false;
    }
    if (worker_all_finished()) {
        snprintf(why, whylen, "stopping");
        return false;
    }
    pgs_node *p = topology_primary();
    if (p && atomic_load(&p->state) != PGS_NODE_UP) {
        snprintf(why, whylen, "the primary (%s) is %s", p->name,
                 topology_state_name(atomic_load(&p->state)));
        return false;
    }
    /* Without the monitor (no replicas, no cache) the primary is not
     * health-checked: its pools tell.  Every one of them whose last
     * connection attempt failed, and none that worked since, means
     * PostgreSQL cannot be reached. */
    int primary_pools = 0, failing = 0;
    pthread_mutex_lock(&g_pgs.pools_lock);
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next) {
        if (sh->node != p) continue;
        primary_pools++;
        if (atomic_load(&sh->retry_delay_us) != 0 && atomic_load(&sh->open) == 0) failing++;
    }
    pthread_mutex_unlock(&g_pgs.pools_lock);
    if (primary_pools && failing == primary_pools) {
        snprintf(why, whylen, "cannot connect to the primary (%s): every pool's last attempt failed",
                 p ? p->name : "primary");
        return false;
    }
    snprintf(why, whylen, "ok");
    return true;
}
