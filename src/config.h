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

typedef struct pgs_config {
    pgs_url primary;              /* DATABASE_URL (required) */
    pgs_url *replicas;            /* READ_REPLICA_URLS (parsed, not yet routed to) */
    int n_replicas;

    char listen_host[256];        /* PGSCALE_LISTEN, default 127.0.0.1:6432 */
    int listen_port;
    pgs_pool_mode pool_mode;      /* PGSCALE_POOL_MODE, default transaction */
    int workers;                  /* PGSCALE_WORKERS, default number of cores */

    int pool_size;                /* DB_POOL_SIZE, default 20 */
    int max_overflow;             /* DB_MAX_OVERFLOW, default 10 */
    uint32_t pool_timeout_ms;     /* DB_POOL_TIMEOUT, default 30 s */

    uint32_t server_connect_timeout_ms;  /* PGSCALE_SERVER_CONNECT_TIMEOUT, 5 s */
    uint32_t server_login_timeout_ms;    /* PGSCALE_SERVER_LOGIN_TIMEOUT, 10 s */
    uint32_t server_lifetime_ms;         /* PGSCALE_SERVER_LIFETIME, 3600 s */
    uint32_t server_idle_timeout_ms;     /* PGSCALE_SERVER_IDLE_TIMEOUT, 600 s */
    uint32_t overflow_idle_timeout_ms;   /* PGSCALE_OVERFLOW_IDLE_TIMEOUT, 1 s, 0 = at once */
    uint32_t server_check_delay_ms;      /* PGSCALE_SERVER_CHECK_DELAY, 30 s */
    uint32_t idle_transaction_timeout_ms;/* PGSCALE_IDLE_TRANSACTION_TIMEOUT, 0 = off */
    uint32_t client_idle_timeout_ms;     /* PGSCALE_CLIENT_IDLE_TIMEOUT, 0 = off */
    uint32_t query_timeout_ms;           /* PGSCALE_QUERY_TIMEOUT, 0 = off */
    uint32_t client_login_timeout_ms;    /* PGSCALE_CLIENT_LOGIN_TIMEOUT, 60 s */
    uint32_t shutdown_timeout_ms;        /* PGSCALE_SHUTDOWN_TIMEOUT, 30 s */

    int max_client_conn;          /* PGSCALE_MAX_CLIENT_CONN, default 10000 */
    int max_prepared_statements;  /* PGSCALE_MAX_PREPARED_STATEMENTS, per server, 200 */
    uint32_t max_message_size;    /* PGSCALE_MAX_MESSAGE_SIZE, bytes, default 1 GiB */

    char *redis_url;              /* REDIS_URL (kept for later features) */
    int log_level;                /* PGSCALE_LOG_LEVEL: error|warn|info|debug */
} pgs_config;

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

/* Full start-up load: defaults, then the env file (if path != NULL), then
 * the process environment on top (the environment wins, as with dotenv),
 * then validation (DATABASE_URL present, sizes in range, ...). */
PGS_MUSTCHECK int config_load(pgs_config *cfg, const char *envfile_path, char *err,
                              size_t errlen);
void config_free(pgs_config *cfg);

/* Writes "name = value" lines of the effective configuration (password
 * masked) through emit(); used by SHOW CONFIG and --check-config. */
typedef void (*pgs_config_emit)(void *ctx, const char *name, const char *value,
                                const char *source_default);
void config_describe(const pgs_config *cfg, pgs_config_emit emit, void *ctx);

#endif
