/* Configuration reload: RELOAD in the admin console and SIGHUP read the
 * configuration sources again (the YAML file, the .env file, the process
 * environment, in the start-up order) and publish the result as a new
 * snapshot.  This module owns the snapshots' lifetime; what a setting does
 * stays with the module that reads it. */
#include "metrics.h"
#include "reload.h"

#include <stdio.h>
#include <string.h>

#include "admin.h"
#include "authquery.h"
#include "clientauth.h"
#include "monitor.h"
#include "pool.h"
#include "rcache.h"
#include "worker.h"

/* The rule for readers and for freeing:
 *  - A snapshot is immutable once published.  g_pgs.cfg points at the one
 *    in effect and is swapped atomically; a reader loads it inside one
 *    callback and does not keep the pointer across callbacks (a worker's
 *    own w->cfg is switched only when the worker handles WM_CONFIG).
 *  - A replaced snapshot is freed only after every worker has handled a
 *    control message sent after the swap (worker_ctl_done): a worker
 *    handles messages between callbacks, so by then none of them can still
 *    hold it.  It is freed at the next reload after that point (or never,
 *    if there is none: a few kilobytes).  The main thread reads the
 *    snapshot only under reload_lock.
 *  - Only settings that can change safely while running are taken from
 *    the new sources: pool sizes, modes, timeouts, limits, the
 *    per-database and per-user overrides, the console's users, the log
 *    level and the result cache's settings but cache.max_memory and
 *    cache.redis; the users file is read again (clientauth_reload), and the
 *    names auth.query found unknown are forgotten (authquery_forget).
 *    The rest (listen addresses, workers, the servers, auth, TLS,
 *    max_prepared_statements) keeps its running value, shared with the
 *    previous snapshot: such parts belong to the first snapshot and live
 *    until exit (start-up code such as the auth-query thread may hold
 *    them), so a snapshot owns and frees only what a reload replaces
 *    (config_free_reloadable).  A changed restart-only setting is reported
 *    to whoever asked for the reload. */

typedef struct retired {
    pgs_config *cfg;
    bool on_heap;     /* the first snapshot belongs to main() */
    uint64_t gen;     /* freed once every worker has handled this message */
    struct retired *next;
} retired;

static pthread_mutex_t reload_lock = PTHREAD_MUTEX_INITIALIZER;
static pgs_config *current;
static bool current_on_heap;
static char *src_config, *src_envfile;
static retired *retired_list;

void reload_init(pgs_config *first, const char *config_path, const char *envfile_path)
{
    pthread_mutex_lock(&reload_lock);
    current = first;
    current_on_heap = false;
    src_config = config_path ? pgs_xstrdup(config_path) : NULL;
    src_envfile = envfile_path ? pgs_xstrdup(envfile_path) : NULL;
    pthread_mutex_unlock(&reload_lock);
}

uint32_t reload_shutdown_timeout_ms(void)
{
    pthread_mutex_lock(&reload_lock);
    uint32_t v = current ? current->shutdown_timeout_ms : 30000u;
    pthread_mutex_unlock(&reload_lock);
    return v;
}

/* The settings a reload applies (see the header comment).  Arrays are
 * moved: the caller clears them in fresh. */
static void take_reloadable(pgs_config *pub, const pgs_config *fresh)
{
    pub->pool_mode = fresh->pool_mode;
    pub->pool_size = fresh->pool_size;
    pub->max_overflow = fresh->max_overflow;
    pub->pool_timeout_ms = fresh->pool_timeout_ms;
    pub->pinning = fresh->pinning;
    pub->max_pinned = fresh->max_pinned;
    pub->server_connect_timeout_ms = fresh->server_connect_timeout_ms;
    pub->server_login_timeout_ms = fresh->server_login_timeout_ms;
    pub->server_lifetime_ms = fresh->server_lifetime_ms;
    pub->server_idle_timeout_ms = fresh->server_idle_timeout_ms;
    pub->overflow_idle_timeout_ms = fresh->overflow_idle_timeout_ms;
    pub->server_check_delay_ms = fresh->server_check_delay_ms;
    pub->unused_pool_timeout_ms = fresh->unused_pool_timeout_ms;
    pub->idle_transaction_timeout_ms = fresh->idle_transaction_timeout_ms;
    pub->client_idle_timeout_ms = fresh->client_idle_timeout_ms;
    pub->query_timeout_ms = fresh->query_timeout_ms;
    pub->client_login_timeout_ms = fresh->client_login_timeout_ms;
    pub->client_startup_timeout_ms = fresh->client_startup_timeout_ms;
    pub->shutdown_timeout_ms = fresh->shutdown_timeout_ms;
    pub->max_client_conn = fresh->max_client_conn;
    pub->max_pending_logins = fresh->max_pending_logins;
    pub->max_pending_logins_per_address = fresh->max_pending_logins_per_address;
    pub->max_message_size = fresh->max_message_size;
    pub->max_startup_packet_size = fresh->max_startup_packet_size;
    pub->log_level = fresh->log_level;
    /* read by the routing code and the monitor (monitor_configure) */
    pub->consistency = fresh->consistency;
    pub->failover = fresh->failover;
    pub->max_replica_lag_bytes = fresh->max_replica_lag_bytes;
    pub->max_replica_lag_ms = fresh->max_replica_lag_ms;
    pub->read_from_primary = fresh->read_from_primary;
    pub->load_balance = fresh->load_balance;
    pub->monitor_interval_ms = fresh->monitor_interval_ms;
    pub->health_check_timeout_ms = fresh->health_check_timeout_ms;
    pub->failover_timeout_ms = fresh->failover_timeout_ms;
    pub->failover_wait_ms = fresh->failover_wait_ms; /* read by pool.c's janitor */
    pub->databases = fresh->databases;
    pub->n_databases = fresh->n_databases;
    pub->users = fresh->users;
    pub->n_users = fresh->n_users;
    pub->admin_users = fresh->admin_users;
    pub->n_admin_users = fresh->n_admin_users;
    pub->stats_users = fresh->stats_users;
    pub->n_stats_users = fresh->n_stats_users;
    /* The result cache's admission settings are read per statement;
     * max_memory sizes the stores at start and stays. */
    pub->cache.enabled = fresh->cache.enabled;
    pub->cache.ttl_ms = fresh->cache.ttl_ms;
    pub->cache.max_entry_size = fresh->cache.max_entry_size;
    pub->cache.fill_wait_ms = fresh->cache.fill_wait_ms;
    pub->cache.redis_timeout_ms = fresh->cache.redis_timeout_ms;
    pub->cache.rules = fresh->cache.rules;
    pub->cache.n_rules = fresh->cache.n_rules;
}

/* --- what a reload could not apply: the described settings that differ
 * between the published snapshot and the sources --- */

typedef struct kv_list {
    char **names, **values;
    size_t n, cap;
} kv_list;

static void kv_add(void *ctx, const char *name, const char *value, const char *def)
{
    PGS_UNUSED(def);
    kv_list *l = ctx;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->names = pgs_xrealloc(l->names, l->cap * sizeof(char *));
        l->values = pgs_xrealloc(l->values, l->cap * sizeof(char *));
    }
    l->names[l->n] = pgs_xstrdup(name);
    l->values[l->n] = pgs_xstrdup(value ? value : "");
    l->n++;
}

static void kv_collect(const pgs_config *cfg, kv_list *l)
{
    config_describe(cfg, kv_add, l);
    config_describe_file(cfg, kv_add, l);
}

static void kv_free(kv_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->names[i]);
        free(l->values[i]);
    }
    free(l->names);
    free(l->values);
}

static const char *kv_get(const kv_list *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->names[i], name) == 0) return l->values[i];
    return NULL;
}

static void report_unapplied(const pgs_config *pub, const pgs_config *fresh, const char *who,
                             reload_note_fn note, void *ctx)
{
    kv_list run = {0}, want = {0};
    kv_collect(pub, &run);
    kv_collect(fresh, &want);
    char msg[1024];
    for (size_t i = 0; i < want.n; i++) {
        const char *r = kv_get(&run, want.names[i]);
        if (r && strcmp(r, want.values[i]) == 0) continue;
        snprintf(msg, sizeof(msg),
                 "%s changed, but takes effect only when pgscale restarts (still %s)",
                 want.names[i], r && *r ? r : "not set");
        log_warn("%s: %s", who, msg);
        if (note) note(ctx, msg);
    }
    for (size_t i = 0; i < run.n; i++) {
        if (kv_get(&want, run.names[i])) continue;
        snprintf(msg, sizeof(msg),
                 "%s was removed, but that takes effect only when pgscale restarts (still %s)",
                 run.names[i], run.values[i]);
        log_warn("%s: %s", who, msg);
        if (note) note(ctx, msg);
    }
    kv_free(&run);
    kv_free(&want);
}

/* Held (read) by threads that read a snapshot without acknowledging
 * generations; taken (write) to free retired snapshots. */
static pthread_rwlock_t hold_lock = PTHREAD_RWLOCK_INITIALIZER;

const pgs_config *reload_cfg_hold(void)
{
    pthread_rwlock_rdlock(&hold_lock);
    return atomic_load(&g_pgs.cfg);
}

void reload_cfg_release(void)
{
    pthread_rwlock_unlock(&hold_lock);
}

static void free_retired(void)
{
    pthread_rwlock_wrlock(&hold_lock);
    retired **pp = &retired_list;
    while (*pp) {
        retired *r = *pp;
        if (!worker_ctl_done(r->gen)) {
            pp = &r->next;
            continue;
        }
        *pp = r->next;
        config_free_reloadable(r->cfg);
        if (r->on_heap) free(r->cfg);
        free(r);
    }
    pthread_rwlock_unlock(&hold_lock);
}

int reload_run(const char *who, reload_note_fn note, void *ctx, char *err, size_t errlen)
{
    pthread_mutex_lock(&reload_lock);
    if (!current) {
        pthread_mutex_unlock(&reload_lock);
        snprintf(err, errlen, "pgscale is still starting");
        return -1;
    }
    pgs_config fresh;
    char why[1024];
    if (config_reload(&fresh, src_config, src_envfile, why, sizeof(why)) < 0) {
        pthread_mutex_unlock(&reload_lock);
        snprintf(err, errlen, "%s; the running configuration is unchanged", why);
        log_error("%s: configuration refused: %s", who, err);
        metrics_note_reload(false, err);
        return -1;
    }
    /* the users file's contents are reloaded (its path is restart-only) */
    if (clientauth_reload(current->auth.file, why, sizeof(why)) < 0) {
        config_free(&fresh);
        pthread_mutex_unlock(&reload_lock);
        snprintf(err, errlen, "%s; the running configuration is unchanged", why);
        log_error("%s: configuration refused: %s", who, err);
        metrics_note_reload(false, err);
        return -1;
    }
    pgs_config *pub = pgs_xmalloc(sizeof(*pub));
    *pub = *current;
    take_reloadable(pub, &fresh);
    report_unapplied(pub, &fresh, who, note, ctx);
    /* pub owns the moved arrays now; the rest of fresh goes */
    fresh.databases = NULL;
    fresh.n_databases = 0;
    fresh.users = NULL;
    fresh.n_users = 0;
    fresh.admin_users = NULL;
    fresh.n_admin_users = 0;
    fresh.stats_users = NULL;
    fresh.n_stats_users = 0;
    fresh.cache.rules = NULL;
    fresh.cache.n_rules = 0;
    config_free(&fresh);

    atomic_store(&g_pgs.cfg, pub);
    __atomic_store_n(&pgs_log_level, pub->log_level, __ATOMIC_RELAXED);
    pool_reconfigure_all(pub);
    monitor_configure(pub);
    if (pub->cache.enabled) {
        /* the relation catalog is read on the primary's monitor thread,
         * which a pgscale without replicas starts only for the cache */
        char merr[160];
        if (monitor_want_primary_thread_now(merr, sizeof(merr)) < 0)
            log_warn("%s: %s: nothing is cached until the relation catalog can be read", who, merr);
    }
    /* a user created since a lookup said "no such user" can log in now */
    authquery_forget();
    uint64_t gen = worker_broadcast_ctl(WM_CONFIG, NULL);
    retired *r = pgs_xcalloc(1, sizeof(*r));
    r->cfg = current;
    r->on_heap = current_on_heap;
    r->gen = gen;
    r->next = retired_list;
    retired_list = r;
    current = pub;
    current_on_heap = true;
    free_retired();
    admin_check_config(pub);
    metrics_note_reload(true, NULL);
    log_info("%s: configuration reloaded%s%s: pool %d+%d, %s pooling", who,
             src_config ? " from " : "", src_config ? src_config : "", pub->pool_size,
             pub->max_overflow, pub->pool_mode == PGS_POOL_SESSION ? "session" : "transaction");
    pthread_mutex_unlock(&reload_lock);
    return 0;
}

void reload_worker_apply(pgs_worker *w)
{
    w->cfg = atomic_load(&g_pgs.cfg);
    pool_apply_config(w);
    rcache_worker_config(w);
}
