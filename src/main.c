/* Start-up only: flags, configuration, resolving the server address,
 * resource limits, worker threads, and signals (SIGTERM drains, SIGINT
 * stops at once). */
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "http.h"
#include "admin.h"
#include "authquery.h"
#include "clientauth.h"
#include "config.h"
#include "changefeed.h"
#include "classify.h"
#include "monitor.h"
#include "relcat.h"
#include "reload.h"
#include "tls.h"
#include "topology.h"
#include "worker.h"


static pgs_config g_cfg;
static uv_signal_t sig_term, sig_int, sig_hup;
static uv_timer_t drain_deadline, finish_check;

static void usage(FILE *f)
{
    fprintf(f,
            "pgscale " PGSCALE_VERSION " - PostgreSQL connection pooler\n\n"
            "usage: pgscale [--config FILE] [--env-file FILE] [--check-config]\n\n"
            "Configured by a YAML file and environment variables (DATABASE_URL, DB_POOL_SIZE,\n"
            "DB_MAX_OVERFLOW, DB_POOL_TIMEOUT, PGSCALE_LISTEN, PGSCALE_POOL_MODE, ...);\n"
            "the .env file overrides the config file, the environment overrides both.\n"
            "See docs/configuration.md.\n\n"
            "  --config FILE     read the YAML config file (default: $PGSCALE_CONFIG)\n"
            "  --env-file FILE   read variables from a .env file (the environment wins)\n"
            "  --check-config    validate the configuration, print it and exit\n"
            "  --version         print the version\n");
}

static void print_cfg(void *ctx, const char *name, const char *value, const char *def)
{
    PGS_UNUSED(ctx);
    PGS_UNUSED(def);
    printf("%s = %s\n", name, value);
}

/* The config file: --config, else $PGSCALE_CONFIG (empty means unset, as
 * for every other variable). */
static const char *config_path(const char *flag)
{
    if (flag) return flag;
    const char *e = getenv("PGSCALE_CONFIG");
    return e && *e ? e : NULL;
}

/* The nodes (topology.c), and for those reached over a Unix socket what
 * a user would want to know at start. */
static int resolve_nodes(const pgs_config *cfg)
{
    char err[500];
    if (topology_init(cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "pgscale: %s\n", err);
        return -1;
    }
    bool said_tls = false;
    for (int i = 0; i < topology_count(); i++) {
        const pgs_node *n = topology_node(i);
        if (!n->resolved || !n->ep.is_unix) continue;
        /* As libpq: TLS settings do not apply over a Unix socket. */
        if (!said_tls && cfg->server_tls.sslmode != PGS_SSLMODE_DISABLE &&
            cfg->server_tls.sslmode != PGS_SSLMODE_PREFER &&
            cfg->server_tls.sslmode != PGS_SSLMODE_ALLOW) {
            log_info("server_tls.sslmode=%s does not apply to the Unix socket %s: TLS is not "
                     "used there (as libpq does)",
                     tls_sslmode_name(cfg->server_tls.sslmode), n->ep.path);
            said_tls = true;
        }
        /* The server may start later; say now if its directory is missing. */
        char dir[sizeof(n->ep.path)];
        snprintf(dir, sizeof(dir), "%s", n->ep.path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) *slash = '\0';
        if (access(dir, F_OK) != 0)
            log_warn("%s: the socket directory %s does not exist (yet); server connections "
                     "will fail until PostgreSQL creates it",
                     i == 0 ? "DATABASE_URL" : n->name, dir);
    }
    return 0;
}

/* The monitor's primary hook (its thread): function volatility for the
 * classifier. */
static void load_volatility(PGconn *conn)
{
    char err[300];
    if (classify_volatility_load(conn, err, sizeof(err)) < 0)
        log_warn("could not read function volatility from the primary: %s (statements calling "
                 "functions other than common built-ins go to the primary)",
                 err);
    else
        log_debug("function volatility loaded from the primary (generation %llu)",
                  (unsigned long long)classify_volatility_generation());
}

/* The primary hook: function volatility first (the relation catalog
 * classifies views' definitions with it), then, with the result cache on,
 * the relation catalog. */
static void load_primary_catalogs(PGconn *conn)
{
    load_volatility(conn);
    const pgs_config *k = atomic_load(&g_pgs.cfg);
    if (k && k->cache.enabled) relcat_primary_hook(conn);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) log_warn("could not raise the open-files limit");
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        g_pgs.fd_limit = rl.rlim_cur > INT32_MAX ? INT32_MAX : (int)rl.rlim_cur;
}

static void on_finish_check(uv_timer_t *t)
{
    if (worker_all_finished()) uv_stop(t->loop);
}

static void on_drain_deadline(uv_timer_t *t)
{
    PGS_UNUSED(t);
    log_warn("shutdown timeout reached; closing the remaining connections");
    worker_broadcast(WM_STOP);
}

static void on_signal(uv_signal_t *s, int signum)
{
    if (signum == SIGHUP) {
        /* The same reload as the console's RELOAD; a bad file is refused
         * and the running configuration stays. */
        char err[1200];
        if (reload_run("SIGHUP", NULL, NULL, err, sizeof(err)) < 0)
            log_error("SIGHUP: reload refused: %s", err);
        return;
    }
    if (signum == SIGINT) {
        log_info("SIGINT: stopping now");
        worker_broadcast(WM_STOP);
        return;
    }
    if (atomic_exchange(&g_pgs.shutting_down, 1)) return;
    uint32_t drain_ms = reload_shutdown_timeout_ms();
    log_info("SIGTERM: no new clients; waiting up to %u ms for transactions to finish",
             drain_ms);
    worker_broadcast(WM_SHUTDOWN);
    uv_timer_start(&drain_deadline, on_drain_deadline, drain_ms, 0);
    PGS_UNUSED(s);
}

int main(int argc, char **argv)
{
    /* Not dumpable from the first instruction: the environment and the
     * files read next hold passwords, and a core file or a same-user
     * ptrace would expose them.  allow_core_dumps turns it back on. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    const char *envfile = NULL, *config_flag = NULL;
    bool check_only = false;
    static const struct option opts[] = {{"config", required_argument, NULL, 'f'},
                                         {"env-file", required_argument, NULL, 'e'},
                                         {"check-config", no_argument, NULL, 'c'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"version", no_argument, NULL, 'V'},
                                         {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "f:e:chV", opts, NULL)) != -1) {
        switch (ch) {
        case 'f': config_flag = optarg; break;
        case 'e': envfile = optarg; break;
        case 'c': check_only = true; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("pgscale " PGSCALE_VERSION "\n"); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "pgscale: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    /* Every configuration error, from the file, the .env file or the
     * environment, is one line on stderr and exit status 1; status 2 is
     * for a bad command line. */
    char err[1024];
    if (config_load_files(&g_cfg, config_path(config_flag), envfile, err, sizeof(err)) < 0) {
        fprintf(stderr, "pgscale: configuration error: %s\n", err);
        return 1;
    }
    pgs_log_level = g_cfg.log_level;
    if (g_cfg.allow_core_dumps) prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
    if (check_only) {
        config_describe(&g_cfg, print_cfg, NULL);
        config_describe_file(&g_cfg, print_cfg, NULL);
        config_free(&g_cfg);
        return 0;
    }
    if (resolve_nodes(&g_cfg) < 0) return 1;
    if (clientauth_init(&g_cfg, err, sizeof(err)) < 0 || tls_init(&g_cfg, err, sizeof(err)) < 0 ||
        authquery_start(&g_cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "pgscale: configuration error: %s\n", err);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();

    uv_loop_t *loop = uv_default_loop();
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_int);
    uv_signal_init(loop, &sig_hup);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_signal_start(&sig_hup, on_signal, SIGHUP);
    uv_timer_init(loop, &drain_deadline);
    uv_timer_init(loop, &finish_check);
    uv_timer_start(&finish_check, on_finish_check, 50, 50);

    /* g_cfg is the first configuration snapshot; RELOAD and SIGHUP publish
     * new ones (reload.c) and never free this one. */
    reload_init(&g_cfg, config_path(config_flag), envfile);
    admin_check_config(&g_cfg);
    if (worker_start_all(&g_cfg) < 0) {
        fprintf(stderr, "pgscale: could not start (see the messages above)\n");
        return 1;
    }
    /* after the workers: a check that finds the primary failed may act
     * on pools at once.  Routing judges function calls by the primary's
     * pg_proc, loaded on each (re)connect to it. */
    monitor_set_primary_hook(load_primary_catalogs);
    /* the result cache needs the relation catalog even without replicas */
    if (g_cfg.cache.enabled) monitor_want_primary_thread();
    if (monitor_start(&g_cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "pgscale: %s\n", err);
        return 1;
    }
    /* writes made around pgscale, read from a logical replication slot
     * (restart-only, like the catalog it expands names with) */
    if (g_cfg.cache.change_feed && !g_cfg.cache.enabled)
        log_warn("cache.change_feed is on but the cache is off: the change feed does not run "
                 "(both are read at start for it)");
    if (g_cfg.cache.change_feed && g_cfg.cache.enabled &&
        changefeed_start(&g_cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "pgscale: %s\n", err);
        return 1;
    }
    /* /metrics, the status page and /healthz, off the data path */
    if (http_start(&g_cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "pgscale: %s\n", err);
        return 1;
    }
    char listening[1024];
    config_format_listen_list(&g_cfg, listening, sizeof(listening));
    log_info("pgscale " PGSCALE_VERSION " listening on %s, %d workers, %s pooling, "
             "pool %d+%d, server %s",
             listening, g_cfg.workers,
             g_cfg.pool_mode == PGS_POOL_SESSION ? "session" : "transaction", g_cfg.pool_size,
             g_cfg.max_overflow, topology_primary()->ep.text);
    uv_run(loop, UV_RUN_DEFAULT);
    worker_join_all();
    http_stop();
    changefeed_stop();
    monitor_stop();
    classify_shutdown();
    relcat_shutdown();
    authquery_stop();
    log_info("pgscale stopped");
    return 0;
}
