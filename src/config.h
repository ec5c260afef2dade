/* Configuration: the immutable snapshot every worker reads, built from the
 * environment (DATABASE_URL, DB_POOL_SIZE, ...) and an optional .env file. */
#ifndef PGS_CONFIG_H
#define PGS_CONFIG_H

#include "common.h"

#define PGS_URL_MAX_PARAMS 16

typedef struct pgs_url_param {
    char *key;
    char *value;
} pgs_url_param;

/* A parsed postgresql:// URL.  Strings are heap copies, percent-decoded;
 * absent parts are NULL (port 0 means "not given"). */
typedef struct pgs_url {
    char *user;
    char *password;
    char *host;     /* "localhost" style name, IPv4, or IPv6 without brackets */
    int port;       /* 0 when absent; users of the URL apply 5432 */
    char *dbname;
    int n_params;   /* query-string parameters, e.g. sslmode=require */
    pgs_url_param params[PGS_URL_MAX_PARAMS];
} pgs_url;

typedef enum pgs_pool_mode {
    PGS_POOL_TRANSACTION = 0,
    PGS_POOL_SESSION = 1,
} pgs_pool_mode;

/* The settings below come from the YAML file only (--config); see
 * docs/configuration.md, "Configuration file".  They are parsed, validated
 * and shown by --check-config; the modules that act on them read them from
 * the snapshot like any other setting. */

#define PGS_MAX_LISTEN 32
#define PGS_NAME_MAX 63 /* PostgreSQL's identifier limit (NAMEDATALEN - 1) */
/* Schema-qualified, and run in auth.dbname with search_path pinned to
 * pg_catalog: a database owner's objects cannot stand in for pg_shadow. */
#define PGS_DEFAULT_AUTH_QUERY \
    "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1"
#define PGS_DEFAULT_AUTH_DBNAME "postgres"

/* One listen address.  A Unix-socket entry ("unix:/run/pgscale") keeps the
 * directory in host; the socket file is <host>/.s.PGSQL.<port>, as with
 * PostgreSQL. */
typedef struct pgs_listen_addr {
    bool is_unix;
    char host[256]; /* IPv4, IPv6 without brackets, a name, or the socket directory */
    int port;
} pgs_listen_addr;

/* Client authentication methods (auth.type and auth.hba[].method). */
typedef enum pgs_auth_method {
    PGS_AUTH_TRUST = 0,
    PGS_AUTH_MD5 = 1,
    PGS_AUTH_SCRAM = 2,   /* scram-sha-256 */
    PGS_AUTH_REJECT = 3,  /* hba rules only */
} pgs_auth_method;

typedef enum pgs_hba_type {
    PGS_HBA_HOST = 0,      /* TCP, with or without TLS */
    PGS_HBA_HOSTSSL = 1,   /* TCP with TLS */
    PGS_HBA_HOSTNOSSL = 2, /* TCP without TLS */
    PGS_HBA_LOCAL = 3,     /* Unix socket */
} pgs_hba_type;

/* One auth.hba rule; rules are tried in order and the first match decides. */
typedef struct pgs_hba_rule {
    pgs_hba_type type;
    char *database;       /* NULL = all */
    char *user;           /* NULL = all */
    int family;           /* AF_INET, AF_INET6, or AF_UNSPEC for any address / local */
    uint8_t addr[16];     /* network address in network byte order (4 bytes for IPv4) */
    int prefix;           /* CIDR prefix length */
    pgs_auth_method method;
    int line;             /* line of the rule in the config file, for log messages */
} pgs_hba_rule;

typedef struct pgs_auth_config {
    pgs_auth_method type; /* default scram-sha-256 (see docs/configuration.md, "Security model") */
    bool type_set;        /* auth.type or PGSCALE_AUTH_TYPE given: no implicit rules apply */
    char *file;           /* users file (path resolved against the config file's directory) */
    char *query;          /* auth query; NULL = PGS_DEFAULT_AUTH_QUERY */
    char *user;           /* the user that runs the auth query; NULL = no auth query */
    char *dbname;         /* the database it runs in; NULL = PGS_DEFAULT_AUTH_DBNAME */
    int query_max_per_address;       /* lookups queued or running per client address; 0 = no bound */
    uint32_t query_negative_ttl_ms;  /* how long "no such user" is remembered; 0 = not at all */
    pgs_hba_rule *hba;
    int n_hba;
} pgs_auth_config;

/* What pgscale demands of clients (tls.mode). */
typedef enum pgs_tls_mode {
    PGS_TLS_DISABLE = 0,
    PGS_TLS_ALLOW = 1,        /* TLS offered, not required */
    PGS_TLS_REQUIRE = 2,
    PGS_TLS_VERIFY_CA = 3,    /* client certificate signed by tls.ca required */
    PGS_TLS_VERIFY_FULL = 4,  /* ... and its CN must be the user name */
} pgs_tls_mode;

typedef struct pgs_tls_config {
    pgs_tls_mode mode;
    char *cert, *key, *ca; /* paths, NULL = not given */
    char *ciphers;         /* OpenSSL cipher list, NULL = OpenSSL's default */
    int min_protocol;      /* 0x0303 = TLSv1.2 (default), 0x0304 = TLSv1.3 */
} pgs_tls_config;

/* TLS toward servers, as libpq's sslmode. */
typedef enum pgs_sslmode {
    PGS_SSLMODE_DISABLE = 0,
    PGS_SSLMODE_ALLOW = 1,
    PGS_SSLMODE_PREFER = 2, /* the default, as in libpq */
    PGS_SSLMODE_REQUIRE = 3,
    PGS_SSLMODE_VERIFY_CA = 4,
    PGS_SSLMODE_VERIFY_FULL = 5,
} pgs_sslmode;

/* SCRAM channel binding toward servers, as libpq's channel_binding. */
typedef enum pgs_channel_binding {
    PGS_CBIND_DISABLE = 0,
    PGS_CBIND_PREFER = 1, /* the default, as in libpq */
    PGS_CBIND_REQUIRE = 2,
} pgs_channel_binding;

typedef struct pgs_server_tls_config {
    pgs_sslmode sslmode;   /* server_tls.sslmode, else DATABASE_URL's ?sslmode=, else prefer */
    pgs_channel_binding channel_binding; /* server_tls.channel_binding, else the URL's */
    char *ca, *cert, *key; /* paths, NULL = not given */
} pgs_server_tls_config;

/* Per-database and per-user overrides.  -1 (pool_mode, the ints) and 0
 * (pool_timeout_ms) mean "not set here"; config_pool_settings() resolves
 * them.  max_db_connections / max_user_connections: 0 = no limit. */
typedef struct pgs_db_config {
    char *name;               /* the database name clients ask for */
    char *dbname;             /* the name on the server, NULL = same */
    int pool_size;
    int max_overflow;
    int pool_mode;
    uint32_t pool_timeout_ms;
    int max_db_connections;
    int pinning;              /* -1 not set, 0 off, 1 on */
    int max_pinned;           /* -1 not set, 0 half of pool_size */
    int route;                /* -1 not set, else PGS_ROUTE_* */
    int cache;                /* -1 not set, 0 off, 1 on */
    int line;
} pgs_db_config;

typedef struct pgs_user_config {
    char *name;
    int pool_size;
    int max_overflow;
    int pool_mode;
    int max_user_connections;
    int pinning;              /* -1 not set, 0 off, 1 on */
    int max_pinned;           /* -1 not set, 0 half of pool_size */
    int route;                /* -1 not set, else PGS_ROUTE_* */
    int cache;                /* -1 not set, 0 off, 1 on */
    int line;
} pgs_user_config;

/* server_reset_settings: what a transaction-mode server connection gets
 * when it passes from one client to another. */
enum { PGS_RESET_OFF = 0, PGS_RESET_ALL = 1 };

/* consistency: which replicas a read may go to (DESIGN.md, "Consistency
 * rules").  session: a client reads its own writes; strict: every client
 * reads every write acknowledged before its read started; eventual: any
 * replica within max_replica_lag. */
enum { PGS_CONSISTENCY_SESSION = 0, PGS_CONSISTENCY_STRICT = 1, PGS_CONSISTENCY_EVENTUAL = 2 };
/* failover: what the monitor does when the primary fails (monitor.c). */
enum { PGS_FAILOVER_AUTO = 0, PGS_FAILOVER_FOLLOW = 1, PGS_FAILOVER_OFF = 2 };
/* load_balance: how reads are spread over the nodes that may serve them. */
enum {
    PGS_BALANCE_ROUND_ROBIN = 0,
    PGS_BALANCE_LEAST_OUTSTANDING = 1,
    PGS_BALANCE_WEIGHTED = 2,
};
/* route (databases: / users: entries): auto = reads may go to replicas. */
enum { PGS_ROUTE_AUTO = 0, PGS_ROUTE_PRIMARY = 1 };
#define PGS_MAX_REPLICA_WEIGHT 1000

/* One cache.rules entry (docs/cache.md, "Rules").  A rule matches a
 * statement by the tables it reads or by its fingerprint, optionally only
 * for one database and/or user; the first rule that matches gives the TTL. */
typedef enum pgs_cache_rule_kind {
    PGS_CACHE_RULE_TABLES = 0,      /* every table the statement reads is in tables[] */
    PGS_CACHE_RULE_FINGERPRINT = 1, /* pg_query_fingerprint of the statement */
} pgs_cache_rule_kind;

#define PGS_CACHE_RULE_TABLES_MAX 64

typedef struct pgs_cache_rule {
    pgs_cache_rule_kind kind;
    /* TABLES: "name" (any schema) or "schema.name", as written in the
     * file; compared case-insensitively with the classifier's names. */
    char **tables;
    int n_tables;
    uint64_t fingerprint; /* FINGERPRINT: given, or computed from query */
    char *query;          /* the query: the rule was written with, NULL otherwise */
    char *database;       /* NULL = any */
    char *user;           /* NULL = any */
    uint32_t ttl_ms;      /* > 0 */
    int line;
} pgs_cache_rule;

/* The result cache's settings (cache: in the file, PGSCALE_CACHE_* in the
 * environment).  cache_decide (cacherule.h) reads enabled, ttl_ms and the
 * rules; the store reads the sizes and fill_wait_ms. */
typedef struct pgs_cache_config {
    bool enabled;              /* PGSCALE_CACHE, default off */
    uint32_t ttl_ms;           /* PGSCALE_CACHE_TTL, default 300 s */
    uint64_t max_memory;       /* PGSCALE_CACHE_MAX_MEMORY, bytes, default 256 MB */
    uint32_t max_entry_size;   /* PGSCALE_CACHE_MAX_ENTRY_SIZE, bytes, default 1 MB */
    uint32_t fill_wait_ms;     /* PGSCALE_CACHE_FILL_WAIT, default 1 s, 0 = never wait */
    bool change_feed;          /* PGSCALE_CACHE_CHANGE_FEED, default off; restart only */
    bool redis;                /* PGSCALE_CACHE_REDIS: the Redis tier when REDIS_URL is set */
    uint32_t redis_timeout_ms; /* PGSCALE_CACHE_REDIS_TIMEOUT, default 50 ms */
    pgs_cache_rule *rules;     /* cache.rules, in file order */
    int n_rules;
} pgs_cache_config;

typedef struct pgs_config {
    pgs_url primary;              /* DATABASE_URL (required) */
    pgs_url *replicas;            /* READ_REPLICA_URLS / nodes.replicas */
    int *replica_weights;         /* parallel to replicas: 1..PGS_MAX_REPLICA_WEIGHT */
    int n_replicas;

    /* Replicas and failover (see the enums above). */
    int consistency;              /* PGSCALE_CONSISTENCY, default session */
    int failover;                 /* PGSCALE_FAILOVER, default auto */
    /* PGSCALE_MAX_REPLICA_LAG: a size (bytes of WAL behind the primary) or
     * a duration (replay delay); the other is 0 = not checked.  Both 0 =
     * no limit.  Default 10 s. */
    uint64_t max_replica_lag_bytes;
    uint32_t max_replica_lag_ms;
    bool read_from_primary;       /* PGSCALE_READ_FROM_PRIMARY, default off */
    int load_balance;             /* PGSCALE_LOAD_BALANCE, default round_robin */
    uint32_t monitor_interval_ms;     /* PGSCALE_MONITOR_INTERVAL, 100 ms */
    uint32_t health_check_timeout_ms; /* PGSCALE_HEALTH_CHECK_TIMEOUT, 2 s */
    uint32_t failover_timeout_ms;     /* PGSCALE_FAILOVER_TIMEOUT, 10 s */
    /* PGSCALE_FAILOVER_WAIT, 20 s: how long a client that needs the
     * primary waits while it is unreachable and failover is not off (for
     * the failover), instead of failing after server_connect_timeout;
     * 0 = fail after server_connect_timeout, as with failover off. */
    uint32_t failover_wait_ms;

    char listen_host[256];        /* PGSCALE_LISTEN, default 127.0.0.1:6432 */
    int listen_port;
    /* The HTTP listener (docs/monitoring.md): PGSCALE_HTTP_LISTEN, default
     * 127.0.0.1:9930; http_port 0 = off.  Restart-only. */
    char http_host[256];
    int http_port;
    bool http_explicit;           /* PGSCALE_HTTP_LISTEN or http.listen was given */
    int http_max_pools;           /* PGSCALE_HTTP_MAX_POOLS: pools /metrics exports */
    int http_auth;                /* PGSCALE_HTTP_AUTH: 0 off, 1 basic (admin/stats users) */
    char *http_tls_cert;          /* PGSCALE_HTTP_TLS_CERT / _KEY: HTTPS when both are set */
    char *http_tls_key;
    pgs_pool_mode pool_mode;      /* PGSCALE_POOL_MODE, default transaction */
    int workers;                  /* PGSCALE_WORKERS, default number of cores */

    int pool_size;                /* DB_POOL_SIZE, default 20 */
    int max_overflow;             /* DB_MAX_OVERFLOW, default 10 */
    uint32_t pool_timeout_ms;     /* DB_POOL_TIMEOUT, default 30 s */
    bool pinning;                 /* PGSCALE_PINNING, default on */
    int server_reset_settings;    /* PGSCALE_SERVER_RESET_SETTINGS: PGS_RESET_*, default all */
    int max_pinned;               /* PGSCALE_MAX_PINNED, 0 (default) = pool_size / 2, >= 1 */

    uint32_t server_connect_timeout_ms;  /* PGSCALE_SERVER_CONNECT_TIMEOUT, 5 s */
    uint32_t server_login_timeout_ms;    /* PGSCALE_SERVER_LOGIN_TIMEOUT, 10 s */
    uint32_t server_lifetime_ms;         /* PGSCALE_SERVER_LIFETIME, 3600 s */
    uint32_t server_idle_timeout_ms;     /* PGSCALE_SERVER_IDLE_TIMEOUT, 600 s */
    uint32_t overflow_idle_timeout_ms;   /* PGSCALE_OVERFLOW_IDLE_TIMEOUT, 1 s, 0 = at once */
    uint32_t server_check_delay_ms;      /* PGSCALE_SERVER_CHECK_DELAY, 30 s */
    uint32_t unused_pool_timeout_ms;     /* PGSCALE_UNUSED_POOL_TIMEOUT, 60 s, 0 = never free */
    uint32_t idle_transaction_timeout_ms;/* PGSCALE_IDLE_TRANSACTION_TIMEOUT, 0 = off */
    uint32_t client_idle_timeout_ms;     /* PGSCALE_CLIENT_IDLE_TIMEOUT, 0 = off */
    uint32_t query_timeout_ms;           /* PGSCALE_QUERY_TIMEOUT, 0 = off */
    uint32_t client_login_timeout_ms;    /* PGSCALE_CLIENT_LOGIN_TIMEOUT, 60 s */
    uint32_t client_startup_timeout_ms;  /* PGSCALE_CLIENT_STARTUP_TIMEOUT, 10 s */
    uint32_t shutdown_timeout_ms;        /* PGSCALE_SHUTDOWN_TIMEOUT, 30 s */

    int max_client_conn;          /* PGSCALE_MAX_CLIENT_CONN, default 10000 */
    int max_pending_logins;       /* PGSCALE_MAX_PENDING_LOGINS, default 2000 */
    int max_pending_logins_per_address; /* PGSCALE_MAX_PENDING_LOGINS_PER_ADDRESS, 200,
                                         * 0 = no per-address bound */
    int max_prepared_statements;  /* PGSCALE_MAX_PREPARED_STATEMENTS, per server, 200 */
    int max_client_prepared_statements;      /* PGSCALE_MAX_CLIENT_PREPARED_STATEMENTS, 10000 */
    uint32_t max_client_prepared_bytes;      /* PGSCALE_MAX_CLIENT_PREPARED_BYTES, 64 MiB */
    uint32_t max_message_size;    /* PGSCALE_MAX_MESSAGE_SIZE, bytes, default 1 GiB */

    char *redis_url;              /* REDIS_URL (kept for later features) */
    pgs_cache_config cache;       /* cache: / PGSCALE_CACHE_* */
    int log_level;                /* PGSCALE_LOG_LEVEL: error|warn|info|debug */
    int unix_socket_permissions;  /* PGSCALE_UNIX_SOCKET_PERMISSIONS, 0700 */
    char *unix_socket_group;      /* PGSCALE_UNIX_SOCKET_GROUP, NULL = pgscale's own */
    bool allow_core_dumps;        /* PGSCALE_ALLOW_CORE_DUMPS, off */
    int server_scram_max_iterations;     /* PGSCALE_SERVER_SCRAM_MAX_ITERATIONS, 100000 */
    bool server_allow_cleartext_password; /* PGSCALE_SERVER_ALLOW_CLEARTEXT_PASSWORD, off */

    /* From the config file only (see the types above). */
    pgs_listen_addr listen[PGS_MAX_LISTEN]; /* listen:; PGSCALE_LISTEN sets one */
    int n_listen;                 /* >= 1; listen_host/port mirror the first TCP one */
    uint32_t max_startup_packet_size;   /* bytes, default 10000 */
    pgs_db_config *databases;     /* databases: */
    int n_databases;
    pgs_user_config *users;       /* users: */
    int n_users;
    pgs_auth_config auth;         /* auth: */
    pgs_tls_config tls;           /* tls: (client side) */
    pgs_server_tls_config server_tls; /* server_tls: */
    char **admin_users;           /* admin_users: */
    int n_admin_users;
    char **stats_users;           /* stats_users: */
    int n_stats_users;
    char *config_file;            /* the --config path, NULL without one */
} pgs_config;

/* The pool settings for one (database, user) after overrides: the global
 * value, then databases.<db>, then users.<user> (the most specific wins).
 * max_db_connections / max_user_connections: 0 = no limit. */
typedef struct pgs_pool_settings {
    int pool_size;
    int max_overflow;
    pgs_pool_mode pool_mode;
    uint32_t pool_timeout_ms;
    int max_db_connections;
    int max_user_connections;
    bool pinning;
    int max_pinned;            /* resolved: >= 1 */
    bool force_primary;        /* route: primary for this database or user */
    bool cache;                /* cache.enabled, unless cache: off for this database or user */
    const char *server_dbname; /* the database to ask the server for */
} pgs_pool_settings;

/* Looks a variable up; returns NULL when unset.  The indirection lets unit
 * tests feed variables without touching the process environment. */
typedef const char *(*pgs_env_lookup)(void *ctx, const char *name);

/* Fills *cfg with defaults. */
void config_defaults(pgs_config *cfg);

/* Parses a postgresql:// / postgres:// / postgresql+driver:// URL.  On
 * failure returns a negative code and writes a one-line reason to err. */
PGS_MUSTCHECK int config_parse_url(const char *s, pgs_url *out, char *err, size_t errlen);
void config_url_free(pgs_url *u);
/* Value of a query-string parameter, or NULL. */
const char *config_url_param(const pgs_url *u, const char *key);

/* Applies every known variable from lookup() on top of *cfg.  Errors name
 * the variable and what is wrong ("DB_POOL_SIZE: 'abc' is not an integer"). */
PGS_MUSTCHECK int config_apply_env(pgs_config *cfg, pgs_env_lookup lookup, void *ctx,
                                   char *err, size_t errlen);

/* Reads a .env file (KEY=VALUE lines, '#' comments, optional 'export ',
 * single/double quotes) into a lookup table.  Errors carry file:line. */
typedef struct pgs_envfile pgs_envfile;
PGS_MUSTCHECK int config_envfile_load(const char *path, pgs_envfile **out, char *err,
                                      size_t errlen);
/* Same, from a memory buffer (used by tests and the fuzz target); name is
 * used in error messages. */
PGS_MUSTCHECK int config_envfile_parse(const char *name, const char *data, size_t len,
                                       pgs_envfile **out, char *err, size_t errlen);
const char *config_envfile_get(pgs_envfile *f, const char *name);
void config_envfile_free(pgs_envfile *f);

/* Full start-up load: defaults, then the YAML file (if config_path !=
 * NULL), then the env file (if envfile_path != NULL), then the process
 * environment on top (the environment wins, as with dotenv), then
 * validation (a primary given, sizes in range, ...).  Errors carry FILE:LINE
 * when the value came from a file. */
PGS_MUSTCHECK int config_load_files(pgs_config *cfg, const char *config_path,
                                    const char *envfile_path, char *err, size_t errlen);
/* The same without a YAML file. */
PGS_MUSTCHECK int config_load(pgs_config *cfg, const char *envfile_path, char *err,
                              size_t errlen);
/* Reload: loads the same sources into *fresh, which the caller then
 * publishes (or frees).  The running snapshot is never touched, so a bad
 * file leaves pgscale running as it was; on failure *fresh needs no free
 * and err says why (FILE:LINE: key: reason). */
PGS_MUSTCHECK int config_reload(pgs_config *fresh, const char *config_path,
                                const char *envfile_path, char *err, size_t errlen);
void config_free(pgs_config *cfg);
/* Frees only what a reload replaces in a running snapshot: databases,
 * users, admin_users, stats_users and cache.rules (see reload.c). */
void config_free_reloadable(pgs_config *cfg);

/* Resolves the overrides for one (database, user); see pgs_pool_settings. */
void config_pool_settings(const pgs_config *cfg, const char *database, const char *user,
                          pgs_pool_settings *out);
const pgs_db_config *config_find_database(const pgs_config *cfg, const char *name);
const pgs_user_config *config_find_user(const pgs_config *cfg, const char *name);

/* Writes "name = value" lines of the effective configuration (password
 * masked) through emit(); used by SHOW CONFIG and --check-config.
 * config_describe covers the environment settings (by variable name),
 * config_describe_file the settings only the config file has (by key path:
 * listen, auth.type, tls.mode, databases.app, ...). */
typedef void (*pgs_config_emit)(void *ctx, const char *name, const char *value,
                                const char *source_default);
void config_describe(const pgs_config *cfg, pgs_config_emit emit, void *ctx);
void config_describe_file(const pgs_config *cfg, pgs_config_emit emit, void *ctx);

/* ---- Value parsers shared with the YAML reader (config_yaml.c).  Each
 * returns 0 or -EINVAL with a reason in why (without a key name, which the
 * caller puts in front). ---- */

/* What kind of value a setting takes; the YAML reader checks the YAML type
 * against it before handing the text to the setting's parser. */
typedef enum pgs_value_kind {
    PGS_VALUE_TEXT,     /* any text (enums, names) */
    PGS_VALUE_SECRET,   /* text that must never be echoed (URLs with passwords) */
    PGS_VALUE_INT,
    PGS_VALUE_DURATION, /* a number of seconds or text with a unit */
    PGS_VALUE_SIZE,     /* a number of bytes or text with a unit */
    PGS_VALUE_BOOL,     /* on/off, true/false */
} pgs_value_kind;

/* Looks up the environment setting that the file key `key` mirrors
 * ("pool_size" -> DB_POOL_SIZE).  Returns its environment name, or NULL.
 * Only plain scalar settings are listed (not listen or nodes). */
const char *config_setting_for_key(const char *key, pgs_value_kind *kind);
/* The file key for an environment name ("DB_POOL_SIZE" -> "pool_size"), or NULL. */
const char *config_key_for_setting(const char *env_name);
/* Applies one setting by environment name, exactly as if the variable held v. */
PGS_MUSTCHECK int config_apply_setting(pgs_config *cfg, const char *env_name, const char *v,
                                       char *why, size_t whylen);

PGS_MUSTCHECK int config_parse_int(const char *v, long min, long max, int *out, char *why,
                                   size_t whylen);
/* max_overflow: 0..10000, or -1 for "no limit" (stored as 10000). */
PGS_MUSTCHECK int config_parse_overflow(const char *v, int *out, char *why, size_t whylen);
PGS_MUSTCHECK int config_parse_duration(const char *v, bool zero_is_off, uint32_t *out,
                                        char *why, size_t whylen);
PGS_MUSTCHECK int config_parse_size(const char *v, uint32_t min, uint32_t max, uint32_t *out,
                                    char *why, size_t whylen);
/* Frees the rules of c (cache.rules) and clears them. */
void config_cache_rules_free(pgs_cache_config *c);
PGS_MUSTCHECK int config_parse_pool_mode(const char *v, pgs_pool_mode *out, char *why,
                                         size_t whylen);
/* One listen address: the PGSCALE_LISTEN forms (partial forms keep the host
 * or port of *out), or "unix:/dir". */
PGS_MUSTCHECK int config_parse_listen_addr(const char *v, pgs_listen_addr *out, char *why,
                                           size_t whylen);
/* disable, allow, prefer, require, verify-ca, verify-full. */
PGS_MUSTCHECK int config_parse_sslmode(const char *v, pgs_sslmode *out, char *why,
                                       size_t whylen);
/* disable, prefer, require. */
PGS_MUSTCHECK int config_parse_channel_binding(const char *v, pgs_channel_binding *out,
                                               char *why, size_t whylen);
/* on/off (also true/false, yes/no, 1/0). */
PGS_MUSTCHECK int config_parse_bool(const char *v, bool *out, char *why, size_t whylen);
/* auto, primary (databases.<db>.route, users.<user>.route). */
PGS_MUSTCHECK int config_parse_route(const char *v, int *out, char *why, size_t whylen);
/* max_replica_lag: a size with a unit (16MB), a duration with a unit (10s),
 * or 0 for no limit; exactly one of *bytes, *ms is non-zero unless 0. */
PGS_MUSTCHECK int config_parse_replica_lag(const char *v, uint64_t *bytes, uint32_t *ms,
                                           char *why, size_t whylen);
/* trust, md5, scram-sha-256 (auth.type, PGSCALE_AUTH_TYPE). */
PGS_MUSTCHECK int config_parse_auth_type(const char *v, pgs_auth_method *out, char *why,
                                         size_t whylen);
/* Renders a listen address back in the form it is written in. */
void config_format_listen(const pgs_listen_addr *a, char *buf, size_t n);
/* Every listen address, ", "-separated ("a:1, unix:/run/pgscale"). */
void config_format_listen_list(const pgs_config *cfg, char *buf, size_t n);

#endif
