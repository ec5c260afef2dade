/* Unit tests for config: URL parsing, every variable's good and bad values,
 * durations, .env parsing, precedence and the describe output. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "endpoint.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* A fake environment: NULL-terminated name/value pairs. */
typedef struct fake_env {
    const char *const *pairs;
} fake_env;

static const char *fake_lookup(void *ctx, const char *name)
{
    const fake_env *e = ctx;
    for (size_t i = 0; e->pairs[i]; i += 2)
        if (strcmp(e->pairs[i], name) == 0) return e->pairs[i + 1];
    return NULL;
}

/* Applies the pairs on top of defaults; returns the result code and keeps
 * the error text in err. */
static int apply(pgs_config *cfg, char *err, size_t errlen, const char *const *pairs)
{
    fake_env e = {pairs};
    config_defaults(cfg);
    err[0] = '\0';
    return config_apply_env(cfg, fake_lookup, &e, err, errlen);
}

/* One variable; expects success. */
static void apply_ok(pgs_config *cfg, const char *name, const char *value)
{
    char err[512];
    const char *pairs[] = {name, value, NULL};
    int rc = apply(cfg, err, sizeof(err), pairs);
    if (rc != 0) fail_msg("%s=%s rejected: %s", name, value, err);
}

/* One variable; expects failure and returns the message in err. */
static void apply_bad(const char *name, const char *value, char *err, size_t errlen)
{
    pgs_config cfg;
    const char *pairs[] = {name, value, NULL};
    int rc = apply(&cfg, err, errlen, pairs);
    config_free(&cfg);
    if (rc == 0) fail_msg("%s=%s accepted", name, value);
    assert_true(rc < 0);
    /* Every message names the variable it is about. */
    assert_non_null(strstr(err, name));
}

static void url_ok(const char *s, pgs_url *u)
{
    char err[256] = "";
    int rc = config_parse_url(s, u, err, sizeof(err));
    if (rc != 0) fail_msg("'%s' rejected: %s", s, err);
}

static void url_bad(const char *s, const char *expect_substr)
{
    pgs_url u;
    char err[256] = "";
    int rc = config_parse_url(s, &u, err, sizeof(err));
    if (rc == 0) fail_msg("'%s' accepted", s);
    assert_true(rc < 0);
    /* A failed parse leaves a zeroed URL: nothing to free, nothing stale. */
    assert_null(u.user);
    assert_null(u.password);
    assert_null(u.host);
    assert_null(u.dbname);
    assert_int_equal(u.n_params, 0);
    if (expect_substr && !strstr(err, expect_substr))
        fail_msg("error for '%s' is '%s', expected it to contain '%s'", s, err, expect_substr);
    assert_null(strchr(err, '\n'));
    config_url_free(&u); /* harmless on a zeroed URL */
}

/* ------------------------------------------------------------------------ */
/* Defaults                                                                 */
/* ------------------------------------------------------------------------ */

static void test_defaults_match_documented_values(void **state)
{
    (void)state;
    pgs_config c;
    config_defaults(&c);
    assert_string_equal(c.listen_host, "127.0.0.1");
    assert_int_equal(c.listen_port, 6432);
    /* the HTTP listener: on, on localhost, unless told otherwise */
    assert_string_equal(c.http_host, "127.0.0.1");
    assert_int_equal(c.http_port, 9930);
    assert_false(c.http_explicit);
    assert_int_equal(c.http_max_pools, 1000);
    assert_int_equal(c.pool_mode, PGS_POOL_TRANSACTION);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(c.workers, cores < 1 ? 1 : cores > 64 ? 64 : cores);
    assert_int_equal(c.pool_size, 20);
    assert_int_equal(c.max_overflow, 10);
    assert_int_equal(c.pool_timeout_ms, 30000);
    assert_int_equal(c.server_connect_timeout_ms, 5000);
    assert_int_equal(c.server_login_timeout_ms, 10000);
    assert_int_equal(c.server_lifetime_ms, 3600000);
    assert_int_equal(c.server_idle_timeout_ms, 600000);
    assert_int_equal(c.overflow_idle_timeout_ms, 1000);
    assert_int_equal(c.server_check_delay_ms, 30000);
    assert_int_equal(c.unused_pool_timeout_ms, 60000);
    assert_int_equal(c.idle_transaction_timeout_ms, 0);
    assert_int_equal(c.client_idle_timeout_ms, 0);
    assert_int_equal(c.query_timeout_ms, 0);
    assert_int_equal(c.client_login_timeout_ms, 60000);
    assert_int_equal(c.client_startup_timeout_ms, 10000);
    assert_int_equal(c.shutdown_timeout_ms, 30000);
    assert_int_equal(c.max_client_conn, 10000);
    assert_int_equal(c.max_pending_logins, 2000);
    assert_int_equal(c.max_pending_logins_per_address, 200);
    assert_int_equal(c.max_prepared_statements, 200);
    assert_int_equal(c.max_message_size, 1073741824u);
    assert_int_equal(c.log_level, PGS_LOG_INFO);
    assert_null(c.redis_url);
    assert_null(c.replicas);
    assert_int_equal(c.n_replicas, 0);
    assert_null(c.primary.host);
    config_free(&c);
}

/* ------------------------------------------------------------------------ */
/* URLs                                                                     */
/* ------------------------------------------------------------------------ */

static void test_url_full_form(void **state)
{
    (void)state;
    pgs_url u;
    url_ok("postgresql://app:secret@db.example.com:5433/shop?sslmode=require&application_name=web",
           &u);
    assert_string_equal(u.user, "app");
    assert_string_equal(u.password, "secret");
    assert_string_equal(u.host, "db.example.com");
    assert_int_equal(u.port, 5433);
    assert_string_equal(u.dbname, "shop");
    assert_int_equal(u.n_params, 2);
    assert_string_equal(u.params[0].key, "sslmode");
    assert_string_equal(u.params[0].value, "require");
    assert_string_equal(u.params[1].key, "application_name");
    assert_string_equal(u.params[1].value, "web");
    assert_string_equal(config_url_param(&u, "sslmode"), "require");
    assert_null(config_url_param(&u, "nope"));
    config_url_free(&u);
}

static void test_url_postgres_scheme_and_missing_parts(void **state)
{
    (void)state;
    pgs_url u;
    url_ok("postgres://localhost", &u);
    assert_string_equal(u.host, "localhost");
    assert_null(u.user);
    assert_null(u.password);
    assert_int_equal(u.port, 0);
    assert_null(u.dbname);
    config_url_free(&u);

    url_ok("postgresql://", &u);
    assert_null(u.host);
    config_url_free(&u);

    url_ok("postgresql:///mydb", &u);
    assert_null(u.host);
    assert_string_equal(u.dbname, "mydb");
    config_url_free(&u);

    url_ok("postgresql://user@host", &u);
    assert_string_equal(u.user, "user");
    assert_null(u.password);
    config_url_free(&u);

    url_ok("postgresql://host:5432", &u);
    assert_int_equal(u.port, 5432);
    config_url_free(&u);

    /* Empty user and password are "not given", as in libpq. */
    url_ok("postgresql://:@host/", &u);
    assert_null(u.user);
    assert_null(u.password);
    assert_null(u.dbname);
    config_url_free(&u);
}

static void test_url_scheme_is_case_insensitive(void **state)
{
    (void)state;
    pgs_url u;
    url_ok("PostgreSQL://h/d", &u);
    assert_string_equal(u.host, "h");
    config_url_free(&u);
}

static void test_url_driver_suffixes(void **state)
{
    (void)state;
    const char *forms[] = {"postgresql+asyncpg://u:p@h:1/d", "postgresql+psycopg2://u:p@h:1/d",
                           "postgres+psycopg://u:p@h:1/d", "postgresql+pg8000://u:p@h:1/d",
                           "postgresql+psycopg2cffi://u:p@h:1/d"};
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        pgs_url u;
        url_ok(forms[i], &u);
        assert_string_equal(u.user, "u");
        assert_string_equal(u.password, "p");
        assert_string_equal(u.host, "h");
        assert_int_equal(u.port, 1);
        assert_string_equal(u.dbname, "d");
        config_url_free(&u);
    }
    url_bad("postgresql+://h/d", "empty driver name");
    url_bad("postgresql+as-yncpg://h/d", "not supported");
}

static void test_url_percent_decoding(void **state)
{
    (void)state;
    pgs_url u;
    url_ok("postgresql://us%40er:p%3Ass@h/d%2Fb", &u);
    assert_string_equal(u.user, "us@er");
    assert_string_equal(u.password, "p:ss");
    assert_string_equal(u.host, "h");
    assert_string_equal(u.dbname, "d/b");
    config_url_free(&u);

    url_ok("postgresql://h/d?app%20name=a%26b%3Dc", &u);
    assert_string_equal(u.params[0].key, "app name");
    assert_string_equal(u.params[0].value, "a&b=c");
    config_url_free(&u);

    /* A Unix-socket directory written as an encoded host, as libpq allows. */
    url_ok("postgresql://%2Fvar%2Frun%2Fpostgresql/db", &u);
    assert_string_equal(u.host, "/var/run/postgresql");
    config_url_free(&u);
}

static void test_url_unencoded_at_in_password_splits_at_last_at(void **state)
{
    (void)state;
    pgs_url u;
    url_ok("postgresql://u:p@ss@h/d", &u);
    assert_string_equal(u.user, "u");
    assert_string_equal(u.password, "p@ss");
    assert_string_equal(u.host, "h");
    config_url_free(&u);
}

static void test_url_bad_percent_escapes(void **state)
{
    (void)state;
    url_bad("postgresql://u%zz@h/d", "bad percent-escape in the user name");
    url_bad("postgresql://u:p%4@h/d", "bad percent-escape in the password");
    url_bad("postgresql://h%/d", "bad percent-escape in the host");
    url_bad("postgresql://h/d%G0", "bad percent-escape in the database name");
    url_bad("postgresql://h/d?k%=v", "query parameter name");
    url_bad("postgresql://h/d?k=v%", "value of query parameter 'k'");
    url_bad("postgresql://h/d%00b", "NUL");
    url_bad("postgresql://u:a%00b@h/d", "the password contains an encoded NUL");
}

static void test_url_errors_never_echo_the_password(void **state)
{
    (void)state;
    const char *urls[] = {
        "postgresql://u:hunter2%zz@h/d",  "postgresql://u:hunter2@h:99999/d",
        "postgresql://u:hunter2@h1,h2/d", "mysql://u:hunter2@h/d",
        "postgresql://u:hun/ter2@h/d",    "postgresql://u:hunter2@h/d?password=x%",
        "postgresql://u:hunter2@[zz]/d",  "postgresql://u:hunter2@h/d?k",
    };
    for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
        pgs_url u;
        char err[256] = "";
        if (config_parse_url(urls[i], &u, err, sizeof(err)) == 0) {
            config_url_free(&u);
            continue; /* e.g. the '/' one may parse; only errors matter */
        }
        if (strstr(err, "hunter") || strstr(err, "ter2"))
            fail_msg("error for '%s' echoes the password: %s", urls[i], err);
    }
}

static void test_url_ipv6(void **state)
{
    (void)state;
    pgs_url u;
    url_ok("postgresql://u@[::1]:5432/d", &u);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 5432);
    config_url_free(&u);

    url_ok("postgresql://[2001:db8::10]/d", &u);
    assert_string_equal(u.host, "2001:db8::10");
    assert_int_equal(u.port, 0);
    config_url_free(&u);

    url_ok("postgresql://[fe80::1%25eth0]:6000", &u);
    assert_string_equal(u.host, "fe80::1%eth0");
    assert_int_equal(u.port, 6000);
    config_url_free(&u);

    url_bad("postgresql://[::1/d", "closing ']'");
    url_bad("postgresql://[nothex]:5432/d", "not an IPv6 address");
    url_bad("postgresql://[]/d", "not an IPv6 address");
    url_bad("postgresql://[::1]x/d", "after the IPv6 host");
    url_bad("postgresql://::1/d", "IPv6 host in brackets");
}

static void test_url_ports(void **state)
{
    (void)state;
    pgs_url u;
    url_ok("postgresql://h:1/d", &u);
    assert_int_equal(u.port, 1);
    config_url_free(&u);
    url_ok("postgresql://h:65535/d", &u);
    assert_int_equal(u.port, 65535);
    config_url_free(&u);

    url_bad("postgresql://h:0/d", "invalid port");
    url_bad("postgresql://h:65536/d", "invalid port");
    url_bad("postgresql://h:5432x/d", "invalid port");
    url_bad("postgresql://h:-1/d", "invalid port");
    url_bad("postgresql://h:/d", "invalid port");
    url_bad("postgresql://h:+80/d", "invalid port");
    url_bad("postgresql://h:99999999999999999999/d", "invalid port");
}

static void test_url_bad_schemes(void **state)
{
    (void)state;
    url_bad("mysql://u@h/d", "URL scheme 'mysql://' is not supported");
    url_bad("postgresql:/h/d", "must start with postgresql://");
    url_bad("h:5432/d", "must start with postgresql://");
    url_bad("", "empty");
    url_bad("://h/d", "must start with");
    url_bad("postgresqlx://h", "not supported");
    url_bad("http+postgresql://h", "not supported");
}

static void test_url_multiple_hosts_are_rejected_clearly(void **state)
{
    (void)state;
    url_bad("postgresql://h1,h2/d", "multiple hosts");
    url_bad("postgresql://u:p@h1:5432,h2:5433/d", "not supported yet");
    url_bad("postgresql://[::1]:1,[::2]:2/d", "multiple hosts");
    url_bad("postgresql:///d?host=a,b", "multiple hosts");
}

/* A socket directory, in each of the forms libpq accepts, and where the
 * endpoint puts the socket file. */
static void test_url_unix_socket_hosts(void **state)
{
    (void)state;
    struct {
        const char *url;
        const char *path;
    } cases[] = {
        {"postgresql:///app?host=/var/run/postgresql", "/var/run/postgresql/.s.PGSQL.5432"},
        {"postgresql://u:p@/app?host=/tmp/&port=6000", "/tmp/.s.PGSQL.6000"},
        {"postgresql://%2Fsrv%2Fpg:5433/app", "/srv/pg/.s.PGSQL.5433"},
        {"postgresql:///app", PGS_DEFAULT_SOCKET_DIR "/.s.PGSQL.5432"},
        {"postgresql://u@/app?port=7", PGS_DEFAULT_SOCKET_DIR "/.s.PGSQL.7"},
        {"postgresql:///app?host=/", "/.s.PGSQL.5432"},
    };
    for (size_t i = 0; i < PGS_ARRAY_LEN(cases); i++) {
        pgs_url u;
        url_ok(cases[i].url, &u);
        assert_true(endpoint_url_is_unix(&u));
        pgs_endpoint ep;
        char err[400] = "";
        if (endpoint_resolve(&u, &ep, err, sizeof(err)) != 0)
            fail_msg("'%s': %s", cases[i].url, err);
        assert_true(ep.is_unix);
        assert_string_equal(ep.path, cases[i].path);
        assert_string_equal(ep.text, cases[i].path);
        config_url_free(&u);
    }
    /* a TCP host stays TCP */
    pgs_url u;
    url_ok("postgresql://127.0.0.1:6543/app?host=127.0.0.2", &u);
    assert_false(endpoint_url_is_unix(&u));
    pgs_endpoint ep;
    char err[400];
    assert_int_equal(endpoint_resolve(&u, &ep, err, sizeof(err)), 0);
    assert_false(ep.is_unix);
    assert_string_equal(ep.text, "127.0.0.2:6543");
    config_url_free(&u);
}

static void test_url_unix_socket_path_limits(void **state)
{
    (void)state;
    /* sun_path holds 107 characters: directory + "/.s.PGSQL.<port>" */
    char dir[200], url[300];
    size_t suffix = strlen("/.s.PGSQL.5432");
    size_t fits = sizeof(((pgs_endpoint *)0)->path) - 1 - suffix;
    memset(dir, 'd', sizeof(dir));
    dir[0] = '/';
    dir[fits] = '\0';
    snprintf(url, sizeof(url), "postgresql:///app?host=%s", dir);
    pgs_url u;
    url_ok(url, &u);
    config_url_free(&u);
    dir[fits] = 'd';
    dir[fits + 1] = '\0';
    snprintf(url, sizeof(url), "postgresql:///app?host=%s", dir);
    url_bad(url, "the system allows at most 107");
    /* a longer port makes the same directory too long */
    dir[fits] = '\0';
    snprintf(url, sizeof(url), "postgresql:///app?host=%s&port=54321", dir);
    url_bad(url, "use a shorter directory");
    url_bad("postgresql:///app?host=@pgsock", "abstract-namespace");
    url_bad("postgresql://%40pgsock/app", "abstract-namespace");
}

static void test_url_query_params_in_order_with_limit(void **state)
{
    (void)state;
    char buf[1024] = "postgresql://h/d?";
    for (int i = 0; i < PGS_URL_MAX_PARAMS; i++) {
        char kv[32];
        snprintf(kv, sizeof(kv), "%sk%d=v%d", i ? "&" : "", i, i);
        strcat(buf, kv);
    }
    pgs_url u;
    url_ok(buf, &u);
    assert_int_equal(u.n_params, PGS_URL_MAX_PARAMS);
    for (int i = 0; i < PGS_URL_MAX_PARAMS; i++) {
        char k[16], v[16];
        snprintf(k, sizeof(k), "k%d", i);
        snprintf(v, sizeof(v), "v%d", i);
        assert_string_equal(u.params[i].key, k);
        assert_string_equal(u.params[i].value, v);
    }
    config_url_free(&u);
    strcat(buf, "&one=toomany");
    url_bad(buf, "too many query parameters (at most 16)");
}

static void test_url_query_param_forms(void **state)
{
    (void)state;
    pgs_url u;
    /* Empty value kept as ""; empty segments skipped; duplicates kept and
     * the last one is what config_url_param answers. */
    url_ok("postgresql://h/d?a=&&b=1&b=2&", &u);
    assert_int_equal(u.n_params, 3);
    assert_string_equal(u.params[0].key, "a");
    assert_string_equal(u.params[0].value, "");
    assert_string_equal(config_url_param(&u, "b"), "2");
    config_url_free(&u);

    url_ok("postgresql://h?sslmode=disable", &u);
    assert_null(u.dbname);
    assert_string_equal(config_url_param(&u, "sslmode"), "disable");
    config_url_free(&u);

    url_bad("postgresql://h/d?novalue", "query parameter 'novalue' has no '=value'");
    url_bad("postgresql://h/d?=v", "empty name");
}

static void test_url_query_params_override_parts(void **state)
{
    (void)state;
    pgs_url u;
    url_ok("postgresql://u:p@h:1/d?host=/var/run/postgresql&sslmode=prefer", &u);
    assert_string_equal(u.host, "/var/run/postgresql");
    assert_int_equal(u.n_params, 1); /* host is consumed, not a server parameter */
    assert_string_equal(u.params[0].key, "sslmode");
    config_url_free(&u);

    url_ok("postgresql:///d?host=%2Ftmp&port=5999&user=x%40y&password=s%3Dt&dbname=other", &u);
    assert_string_equal(u.host, "/tmp");
    assert_int_equal(u.port, 5999);
    assert_string_equal(u.user, "x@y");
    assert_string_equal(u.password, "s=t");
    assert_string_equal(u.dbname, "other");
    assert_int_equal(u.n_params, 0);
    config_url_free(&u);

    url_ok("postgresql://h:5/d?port=", &u);
    assert_int_equal(u.port, 0);
    config_url_free(&u);

    url_bad("postgresql://h/d?port=abc", "query parameter 'port'");
    url_bad("postgresql://h/d?port=70000", "1..65535");
}

static void test_url_control_characters_rejected(void **state)
{
    (void)state;
    url_bad("postgresql://h/d\n", "control character");
    url_bad("postgresql://h\t/d", "control character");
}

/* ------------------------------------------------------------------------ */
/* Variables                                                                */
/* ------------------------------------------------------------------------ */

static void test_database_url_is_parsed(void **state)
{
    (void)state;
    pgs_config c;
    apply_ok(&c, "DATABASE_URL", "postgresql+asyncpg://a:b@db:5432/app");
    assert_string_equal(c.primary.user, "a");
    assert_string_equal(c.primary.host, "db");
    assert_string_equal(c.primary.dbname, "app");
    config_free(&c);

    char err[512];
    apply_bad("DATABASE_URL", "mysql://x", err, sizeof(err));
    assert_string_equal(err, "DATABASE_URL: URL scheme 'mysql://' is not supported; use "
                             "postgresql:// or postgres:// (a driver suffix such as "
                             "postgresql+asyncpg:// is fine)");
    apply_bad("DATABASE_URL", "", err, sizeof(err));
    assert_string_equal(err, "DATABASE_URL is empty; point it at your PostgreSQL primary, "
                             "e.g. postgresql://user:pass@host:5432/db");
}

static void test_read_replica_urls(void **state)
{
    (void)state;
    pgs_config c;
    apply_ok(&c, "READ_REPLICA_URLS",
             "postgresql://r1:5432/d, postgres+asyncpg://u:p@r2/d ,postgresql://[::1]:7/d,");
    assert_int_equal(c.n_replicas, 3);
    assert_string_equal(c.replicas[0].host, "r1");
    assert_string_equal(c.replicas[1].host, "r2");
    assert_string_equal(c.replicas[1].password, "p");
    assert_string_equal(c.replicas[2].host, "::1");
    assert_int_equal(c.replicas[2].port, 7);
    config_free(&c);

    apply_ok(&c, "READ_REPLICA_URLS", "postgresql://r1/d");
    assert_int_equal(c.n_replicas, 1);
    config_free(&c);

    /* Empty means unset: no replicas. */
    apply_ok(&c, "READ_REPLICA_URLS", "");
    assert_int_equal(c.n_replicas, 0);
    assert_null(c.replicas);
    config_free(&c);

    /* A comma inside a query value stays with its URL. */
    apply_ok(&c, "READ_REPLICA_URLS", "postgresql://r1/d?options=a,b,postgresql://r2/d");
    assert_int_equal(c.n_replicas, 2);
    assert_string_equal(config_url_param(&c.replicas[0], "options"), "a,b");
    config_free(&c);

    char err[512];
    apply_bad("READ_REPLICA_URLS", "postgresql://r1/d,mysql://r2/d", err, sizeof(err));
    assert_string_equal(err, "READ_REPLICA_URLS: URL 2: URL scheme 'mysql://' is not "
                             "supported; use postgresql:// or postgres:// (a driver suffix "
                             "such as postgresql+asyncpg:// is fine)");
    apply_bad("READ_REPLICA_URLS", "postgresql://h1,h2/d", err, sizeof(err));
    assert_non_null(strstr(err, "URL 1: multiple hosts"));
}

static void test_pool_size(void **state)
{
    (void)state;
    pgs_config c;
    apply_ok(&c, "DB_POOL_SIZE", "1");
    assert_int_equal(c.pool_size, 1);
    apply_ok(&c, "DB_POOL_SIZE", "10000");
    assert_int_equal(c.pool_size, 10000);

    char err[512];
    apply_bad("DB_POOL_SIZE", "abc", err, sizeof(err));
    assert_string_equal(err, "DB_POOL_SIZE: 'abc' is not an integer (expected 1..10000)");
    apply_bad("DB_POOL_SIZE", "0", err, sizeof(err));
    assert_string_equal(err, "DB_POOL_SIZE: '0' is out of range (expected 1..10000)");
    apply_bad("DB_POOL_SIZE", "10001", err, sizeof(err));
    apply_bad("DB_POOL_SIZE", "5x", err, sizeof(err));
    assert_string_equal(err, "DB_POOL_SIZE: '5x' is not an integer (expected 1..10000)");
    apply_bad("DB_POOL_SIZE", " 5", err, sizeof(err));
    apply_bad("DB_POOL_SIZE", "5 ", err, sizeof(err));
    apply_bad("DB_POOL_SIZE", "1.5", err, sizeof(err));
    apply_bad("DB_POOL_SIZE", "0x10", err, sizeof(err));
    apply_bad("DB_POOL_SIZE", "99999999999999999999999", err, sizeof(err));
    assert_string_equal(err, "DB_POOL_SIZE: '99999999999999999999999' is out of range "
                             "(expected 1..10000)");
}

static void test_max_overflow_accepts_minus_one_as_no_limit(void **state)
{
    (void)state;
    pgs_config c;
    apply_ok(&c, "DB_MAX_OVERFLOW", "0");
    assert_int_equal(c.max_overflow, 0);
    apply_ok(&c, "DB_MAX_OVERFLOW", "10000");
    assert_int_equal(c.max_overflow, 10000);
    apply_ok(&c, "DB_MAX_OVERFLOW", "-1");
    assert_int_equal(c.max_overflow, 10000);

    char err[512];
    apply_bad("DB_MAX_OVERFLOW", "-2", err, sizeof(err));
    assert_string_equal(err, "DB_MAX_OVERFLOW: '-2' is out of range (expected 0..10000, or "
                             "-1 for no limit)");
    apply_bad("DB_MAX_OVERFLOW", "10001", err, sizeof(err));
    apply_bad("DB_MAX_OVERFLOW", "lots", err, sizeof(err));
}

static void test_pool_timeout_allows_decimals_not_zero(void **state)
{
    (void)state;
    pgs_config c;
    apply_ok(&c, "DB_POOL_TIMEOUT", "2.5");
    assert_int_equal(c.pool_timeout_ms, 2500);
    apply_ok(&c, "DB_POOL_TIMEOUT", "10");
    assert_int_equal(c.pool_timeout_ms, 10000);
    apply_ok(&c, "DB_POOL_TIMEOUT", "0.001");
    assert_int_equal(c.pool_timeout_ms, 1);

    char err[512];
    apply_bad("DB_POOL_TIMEOUT", "0", err, sizeof(err));
    assert_non_null(strstr(err, "greater than 0"));
    apply_bad("DB_POOL_TIMEOUT", "-1", err, sizeof(err));
    assert_non_null(strstr(err, "negative"));
    apply_bad("DB_POOL_TIMEOUT", "soon", err, sizeof(err));
}

static void test_durations_with_units(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        uint32_t ms;
    } cases[] = {
        {"500ms", 500},   {"2.5s", 2500},     {"1min", 60000}, {"1h", 3600000},
        {"30", 30000},    {"0.25", 250},      {".5s", 500},    {"1.5min", 90000},
        {"5 ms", 5},      {"10S", 10000},     {"2MIN", 120000}, {"0.5ms", 1},
        {"1.0001s", 1000}, {"4294967295ms", 4294967295u}, {"1193h", 4294800000u},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pgs_config c;
        apply_ok(&c, "PGSCALE_SERVER_CONNECT_TIMEOUT", cases[i].text);
        if (c.server_connect_timeout_ms != cases[i].ms)
            fail_msg("'%s' gave %u ms, expected %u", cases[i].text,
                     c.server_connect_timeout_ms, cases[i].ms);
    }

    char err[512];
    apply_bad("PGSCALE_QUERY_TIMEOUT", "5m", err, sizeof(err));
    assert_string_equal(err, "PGSCALE_QUERY_TIMEOUT: '5m' is not a duration (expected seconds, "
                             "or a number with a unit ms, s, min or h, e.g. 500ms, 2.5s, 1min; "
                             "0 turns it off)");
    const char *bad[] = {"s", "1.", "1..5s", "1e3", "ten", "1s5", "1 h x", "+5s", "4294967296ms",
                         "1194h", "99999999999999999999999999h"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        apply_bad("PGSCALE_SERVER_LIFETIME", bad[i], err, sizeof(err));
    apply_bad("PGSCALE_SERVER_LIFETIME", "1194h", err, sizeof(err));
    assert_string_equal(err, "PGSCALE_SERVER_LIFETIME: '1194h' is too long (at most "
                             "4294967295ms, about 49 days)");
    apply_bad("PGSCALE_SERVER_LIFETIME", "0.1ms", err, sizeof(err));
    assert_string_equal(err, "PGSCALE_SERVER_LIFETIME: '0.1ms' is shorter than 1ms");
}

static void test_zero_turns_off_only_the_optional_timeouts(void **state)
{
    (void)state;
    const char *off[] = {"PGSCALE_IDLE_TRANSACTION_TIMEOUT", "PGSCALE_CLIENT_IDLE_TIMEOUT",
                         "PGSCALE_QUERY_TIMEOUT"};
    for (size_t i = 0; i < 3; i++) {
        pgs_config c;
        char err[512];
        const char *pairs[] = {off[i], "15s", NULL};
        assert_int_equal(apply(&c, err, sizeof(err), pairs), 0);
        const char *zero[] = {off[i], "0", NULL};
        fake_env e = {zero};
        assert_int_equal(config_apply_env(&c, fake_lookup, &e, err, sizeof(err)), 0);
        const char *zero_ms[] = {off[i], "0ms", NULL};
        e.pairs = zero_ms;
        assert_int_equal(config_apply_env(&c, fake_lookup, &e, err, sizeof(err)), 0);
        assert_int_equal(c.idle_transaction_timeout_ms + c.client_idle_timeout_ms +
                             c.query_timeout_ms,
                         0);
    }
    const char *required[] = {"PGSCALE_SERVER_CONNECT_TIMEOUT", "PGSCALE_SERVER_LOGIN_TIMEOUT",
                              "PGSCALE_SERVER_LIFETIME",        "PGSCALE_SERVER_IDLE_TIMEOUT",
                              "PGSCALE_SERVER_CHECK_DELAY",     "PGSCALE_CLIENT_LOGIN_TIMEOUT",
                              "PGSCALE_SHUTDOWN_TIMEOUT",       "DB_POOL_TIMEOUT"};
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        char err[512];
        apply_bad(required[i], "0", err, sizeof(err));
        assert_non_null(strstr(err, "cannot be turned off"));
    }
}

static void test_every_duration_variable_lands_in_its_field(void **state)
{
    (void)state;
    pgs_config c;
    char err[512];
    const char *pairs[] = {
        "PGSCALE_SERVER_CONNECT_TIMEOUT", "1ms",   "PGSCALE_SERVER_LOGIN_TIMEOUT", "2ms",
        "PGSCALE_SERVER_LIFETIME",        "3ms",   "PGSCALE_SERVER_IDLE_TIMEOUT",  "4ms",
        "PGSCALE_SERVER_CHECK_DELAY",     "5ms",   "PGSCALE_IDLE_TRANSACTION_TIMEOUT", "6ms",
        "PGSCALE_CLIENT_IDLE_TIMEOUT",    "7ms",   "PGSCALE_QUERY_TIMEOUT",        "8ms",
        "PGSCALE_CLIENT_LOGIN_TIMEOUT",   "9ms",   "PGSCALE_SHUTDOWN_TIMEOUT",     "10ms",
        "DB_POOL_TIMEOUT",                "11ms",  "PGSCALE_OVERFLOW_IDLE_TIMEOUT", "12ms", NULL};
    assert_int_equal(apply(&c, err, sizeof(err), pairs), 0);
    assert_int_equal(c.server_connect_timeout_ms, 1);
    assert_int_equal(c.server_login_timeout_ms, 2);
    assert_int_equal(c.server_lifetime_ms, 3);
    assert_int_equal(c.server_idle_timeout_ms, 4);
    assert_int_equal(c.server_check_delay_ms, 5);
    assert_int_equal(c.idle_transaction_timeout_ms, 6);
    assert_int_equal(c.client_idle_timeout_ms, 7);
    assert_int_equal(c.query_timeout_ms, 8);
    assert_int_equal(c.client_login_timeout_ms, 9);
    assert_int_equal(c.shutdown_timeout_ms, 10);
    assert_int_equal(c.pool_timeout_ms, 11);
    assert_int_equal(c.overflow_idle_timeout_ms, 12);
    config_free(&c);
}

static void test_http_listen_forms(void **state)
{
    (void)state;
    pgs_config c;
    char err[512];
    apply_ok(&c, "PGSCALE_HTTP_LISTEN", "off");
    assert_int_equal(c.http_port, 0);
    assert_true(c.http_explicit);
    config_free(&c);
    apply_ok(&c, "PGSCALE_HTTP_LISTEN", "0.0.0.0:9100");
    assert_string_equal(c.http_host, "0.0.0.0");
    assert_int_equal(c.http_port, 9100);
    config_free(&c);
    apply_ok(&c, "PGSCALE_HTTP_LISTEN", "[::1]:9931");
    assert_string_equal(c.http_host, "::1");
    assert_int_equal(c.http_port, 9931);
    config_free(&c);
    /* a port alone keeps the default host */
    apply_ok(&c, "PGSCALE_HTTP_LISTEN", "9200");
    assert_string_equal(c.http_host, "127.0.0.1");
    assert_int_equal(c.http_port, 9200);
    config_free(&c);
    apply_bad("PGSCALE_HTTP_LISTEN", "nonsense:x", err, sizeof(err));
    assert_non_null(strstr(err, "invalid port"));
    apply_bad("PGSCALE_HTTP_LISTEN", "::1:9930", err, sizeof(err));
    apply_bad("PGSCALE_HTTP_MAX_POOLS", "0", err, sizeof(err));
}

static void test_listen_forms(void **state)
{
    (void)state;
    pgs_config c;
    apply_ok(&c, "PGSCALE_LISTEN", "0.0.0.0:7000");
    assert_string_equal(c.listen_host, "0.0.0.0");
    assert_int_equal(c.listen_port, 7000);
    apply_ok(&c, "PGSCALE_LISTEN", "[::]:6543");
    assert_string_equal(c.listen_host, "::");
    assert_int_equal(c.listen_port, 6543);
    apply_ok(&c, "PGSCALE_LISTEN", "[::1]");
    assert_string_equal(c.listen_host, "::1");
    assert_int_equal(c.listen_port, 6432);
    /* ":port" and "port" keep the loopback default host on purpose. */
    apply_ok(&c, "PGSCALE_LISTEN", ":7001");
    assert_string_equal(c.listen_host, "127.0.0.1");
    assert_int_equal(c.listen_port, 7001);
    apply_ok(&c, "PGSCALE_LISTEN", "7002");
    assert_string_equal(c.listen_host, "127.0.0.1");
    assert_int_equal(c.listen_port, 7002);
    apply_ok(&c, "PGSCALE_LISTEN", "localhost");
    assert_string_equal(c.listen_host, "localhost");
    assert_int_equal(c.listen_port, 6432);

    char err[512];
    apply_bad("PGSCALE_LISTEN", "::1:6432", err, sizeof(err));
    assert_non_null(strstr(err, "brackets"));
    apply_bad("PGSCALE_LISTEN", "host:0", err, sizeof(err));
    assert_string_equal(err, "PGSCALE_LISTEN: 'host:0' has an invalid port (expected "
                             "host:port with port 1..65535)");
    apply_bad("PGSCALE_LISTEN", "host:65536", err, sizeof(err));
    apply_bad("PGSCALE_LISTEN", "host:", err, sizeof(err));
    apply_bad("PGSCALE_LISTEN", "[::1", err, sizeof(err));
    apply_bad("PGSCALE_LISTEN", "[zz]:1", err, sizeof(err));
    apply_bad("PGSCALE_LISTEN", "[::1]x", err, sizeof(err));
    apply_bad("PGSCALE_LISTEN", "bad host:1", err, sizeof(err));
    apply_bad("PGSCALE_LISTEN", "99999", err, sizeof(err));
}

static void test_pool_mode(void **state)
{
    (void)state;
    pgs_config c;
    apply_ok(&c, "PGSCALE_POOL_MODE", "session");
    assert_int_equal(c.pool_mode, PGS_POOL_SESSION);
    apply_ok(&c, "PGSCALE_POOL_MODE", "TRANSACTION");
    assert_int_equal(c.pool_mode, PGS_POOL_TRANSACTION);
    apply_ok(&c, "PGSCALE_POOL_MODE", "Session");
    assert_int_equal(c.pool_mode, PGS_POOL_SESSION);

    char err[512];
    apply_bad("PGSCALE_POOL_MODE", "statement", err, sizeof(err));
    assert_string_equal(err, "PGSCALE_POOL_MODE: 'statement' is not a pool mode (expected "
                             "transaction or session)");
}

static void test_workers(void **state)
{
    (void)state;
    pgs_config c;
    apply_ok(&c, "PGSCALE_WORKERS", "1");
    assert_int_equal(c.workers, 1);
    apply_ok(&c, "PGSCALE_WORKERS", "64");
    assert_int_equal(c.workers, 64);
    char err[512];
    apply_bad("PGSCALE_WORKERS", "0", err, sizeof(err));
    assert_string_equal(err, "PGSCALE_WORKERS: '0' is out of range (expected 1..64)");
    apply_bad("PGSCALE_WORKERS", "65", err, sizeof(err));
    apply_bad("PGSCALE_WORKERS", "auto", err, sizeof(err));
}

static void test_redis_url(void **state)
{
    (void)state;
    pgs_config c;
    apply_ok(&c, "REDIS_URL", "redis://:pw@cache:6379/0");
    assert_string_equal(c.redis_url, "redis://:pw@cache:6379/0");
    config_free(&c);
    apply_ok(&c, "REDIS_URL", "unix:///run/redis.sock");
    config_free(&c);

    char err[512];
    apply_bad("REDIS_URL", "http://user:topsecret@cache", err, sizeof(err));
    assert_string_equal(err, "REDIS_URL: must start with redis:// or unix://");
    assert_null(strstr(err, "topsecret"));
    /* hiredis has no TLS here: refused at start rather than used in clear */
    apply_bad("REDIS_URL", "rediss://:topsecret@cache:6380", err, sizeof(err));
    assert_non_null(strstr(err, "REDIS_URL: rediss:// (Redis over TLS) is not supported"));
    assert_null(strstr(err, "topsecret"));
    /* the whole URL is checked at start (tests/unit/test_redis.c has the rest) */
    apply_bad("REDIS_URL", "redis://:topsecret@cache:99999/0", err, sizeof(err));
    assert_string_equal(err, "REDIS_URL: the port must be a number 1..65535");
}

static void test_log_level(void **state)
{
    (void)state;
    pgs_config c;
    static const struct {
        const char *v;
        int level;
    } cases[] = {{"error", PGS_LOG_ERROR}, {"warn", PGS_LOG_WARN}, {"info", PGS_LOG_INFO},
                 {"debug", PGS_LOG_DEBUG}, {"DEBUG", PGS_LOG_DEBUG}, {"warning", PGS_LOG_WARN}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        apply_ok(&c, "PGSCALE_LOG_LEVEL", cases[i].v);
        assert_int_equal(c.log_level, cases[i].level);
    }
    char err[512];
    apply_bad("PGSCALE_LOG_LEVEL", "verbose", err, sizeof(err));
    assert_string_equal(err, "PGSCALE_LOG_LEVEL: 'verbose' is not a log level (expected error, "
                             "warn, info or debug)");
}

static void test_local_access_settings(void **state)
{
    (void)state;
    pgs_config c;
    apply_ok(&c, "PGSCALE_LOG_LEVEL", "info");
    assert_int_equal(c.unix_socket_permissions, 0700);
    assert_null(c.unix_socket_group);
    assert_false(c.allow_core_dumps);
    config_free(&c);
    apply_ok(&c, "PGSCALE_UNIX_SOCKET_PERMISSIONS", "0770");
    assert_int_equal(c.unix_socket_permissions, 0770);
    config_free(&c);
    apply_ok(&c, "PGSCALE_UNIX_SOCKET_PERMISSIONS", "777");
    assert_int_equal(c.unix_socket_permissions, 0777);
    config_free(&c);
    apply_ok(&c, "PGSCALE_UNIX_SOCKET_GROUP", "pgclients");
    assert_string_equal(c.unix_socket_group, "pgclients");
    config_free(&c);
    static const char *const on[] = {"on", "TRUE", "yes", "1"}, *const off[] = {"off", "false",
                                                                                 "No", "0"};
    for (size_t i = 0; i < 4; i++) {
        apply_ok(&c, "PGSCALE_ALLOW_CORE_DUMPS", on[i]);
        assert_true(c.allow_core_dumps);
        config_free(&c);
        apply_ok(&c, "PGSCALE_ALLOW_CORE_DUMPS", off[i]);
        assert_false(c.allow_core_dumps);
        config_free(&c);
    }
    char err[512];
    apply_bad("PGSCALE_UNIX_SOCKET_PERMISSIONS", "0800", err, sizeof(err));
    assert_string_equal(err, "PGSCALE_UNIX_SOCKET_PERMISSIONS: '0800' is not a permission mode "
                             "(expected octal 0000..0777, such as 0700 or 0770)");
    apply_bad("PGSCALE_UNIX_SOCKET_PERMISSIONS", "1777", err, sizeof(err));
    apply_bad("PGSCALE_UNIX_SOCKET_PERMISSIONS", "-1", err, sizeof(err));
    apply_bad("PGSCALE_UNIX_SOCKET_GROUP", "a\nb", err, sizeof(err));
    apply_bad("PGSCALE_ALLOW_CORE_DUMPS", "maybe", err, sizeof(err));
    assert_string_equal(err, "PGSCALE_ALLOW_CORE_DUMPS: 'maybe' is not on or off (expected "
                             "on/off, true/false, yes/no, 1/0)");
}

static void test_max_client_conn(void **state)
{
    (void)state;
    pgs_config c;
    apply_ok(&c, "PGSCALE_MAX_CLIENT_CONN", "1");
    assert_int_equal(c.max_client_conn, 1);
    apply_ok(&c, "PGSCALE_MAX_CLIENT_CONN", "1000000");
    assert_int_equal(c.max_client_conn, 1000000);
    char err[512];
    apply_bad("PGSCALE_MAX_CLIENT_CONN", "0", err, sizeof(err));
    apply_bad("PGSCALE_MAX_CLIENT_CONN", "1000001", err, sizeof(err));
    assert_string_equal(err, "PGSCALE_MAX_CLIENT_CONN: '1000001' is out of range (expected "
                             "1..1000000)");
}

static void test_max_prepared_statements(void **state)
{
    (void)state;
    pgs_config c;
    apply_ok(&c, "PGSCALE_MAX_PREPARED_STATEMENTS", "0");
    assert_int_equal(c.max_prepared_statements, 0);
    apply_ok(&c, "PGSCALE_MAX_PREPARED_STATEMENTS", "100000");
    assert_int_equal(c.max_prepared_statements, 100000);
    char err[512];
    apply_bad("PGSCALE_MAX_PREPARED_STATEMENTS", "-1", err, sizeof(err));
    apply_bad("PGSCALE_MAX_PREPARED_STATEMENTS", "100001", err, sizeof(err));
}

static void test_max_message_size(void **state)
{
    (void)state;
    pgs_config c;
    static const struct {
        const char *v;
        uint32_t n;
    } cases[] = {{"1024", 1024},          {"1kB", 1024},         {"64MB", 64u << 20},
                 {"1GB", 1u << 30},        {"1073741824", 1u << 30}, {"512 kb", 512u << 10},
                 {"2048B", 2048}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        apply_ok(&c, "PGSCALE_MAX_MESSAGE_SIZE", cases[i].v);
        assert_int_equal(c.max_message_size, cases[i].n);
    }
    char err[512];
    apply_bad("PGSCALE_MAX_MESSAGE_SIZE", "1023", err, sizeof(err));
    assert_string_equal(err, "PGSCALE_MAX_MESSAGE_SIZE: '1023' is out of range (expected "
                             "1kB..1GB, i.e. 1024..1073741824 bytes)");
    apply_bad("PGSCALE_MAX_MESSAGE_SIZE", "2GB", err, sizeof(err));
    apply_bad("PGSCALE_MAX_MESSAGE_SIZE", "1073741825", err, sizeof(err));
    apply_bad("PGSCALE_MAX_MESSAGE_SIZE", "1TB", err, sizeof(err));
    apply_bad("PGSCALE_MAX_MESSAGE_SIZE", "MB", err, sizeof(err));
    apply_bad("PGSCALE_MAX_MESSAGE_SIZE", "1.5MB", err, sizeof(err));
    apply_bad("PGSCALE_MAX_MESSAGE_SIZE", "-1", err, sizeof(err));
    apply_bad("PGSCALE_MAX_MESSAGE_SIZE", "99999999999999999999999GB", err, sizeof(err));
}

static void test_empty_values_mean_unset(void **state)
{
    (void)state;
    pgs_config c;
    char err[512];
    const char *pairs[] = {"DB_POOL_SIZE",      "",   "PGSCALE_LISTEN", "", "REDIS_URL", "",
                           "PGSCALE_POOL_MODE", "",   "PGSCALE_QUERY_TIMEOUT", "", NULL};
    assert_int_equal(apply(&c, err, sizeof(err), pairs), 0);
    assert_int_equal(c.pool_size, 20);
    assert_int_equal(c.listen_port, 6432);
    assert_null(c.redis_url);
    config_free(&c);
}

static void test_error_values_are_sanitised(void **state)
{
    (void)state;
    char err[512];
    apply_bad("DB_POOL_SIZE", "1\n2\x1b[31m", err, sizeof(err));
    assert_null(strchr(err, '\n'));
    assert_null(strchr(err, '\x1b'));
    char longv[300];
    memset(longv, 'x', sizeof(longv) - 1);
    longv[sizeof(longv) - 1] = '\0';
    apply_bad("DB_POOL_SIZE", longv, err, sizeof(err));
    assert_true(strlen(err) < 160);
    assert_non_null(strstr(err, "..."));
}

static void test_apply_env_error_fits_small_buffers(void **state)
{
    (void)state;
    pgs_config c;
    char err[8];
    const char *pairs[] = {"DB_POOL_SIZE", "abc", NULL};
    assert_true(apply(&c, err, sizeof(err), pairs) < 0);
    assert_int_equal(strlen(err), 7);
    fake_env e = {pairs};
    assert_true(config_apply_env(&c, fake_lookup, &e, NULL, 0) < 0);
    config_free(&c);
}

/* ------------------------------------------------------------------------ */
/* .env files                                                               */
/* ------------------------------------------------------------------------ */

static pgs_envfile *env_ok(const char *text)
{
    pgs_envfile *f = NULL;
    char err[256] = "";
    int rc = config_envfile_parse(".env", text, strlen(text), &f, err, sizeof(err));
    if (rc != 0) fail_msg("rejected: %s", err);
    assert_non_null(f);
    return f;
}

static void env_bad(const char *text, size_t len, const char *expect)
{
    pgs_envfile *f = (pgs_envfile *)1;
    char err[256] = "";
    int rc = config_envfile_parse(".env", text, len, &f, err, sizeof(err));
    if (rc == 0) fail_msg("accepted: %s", text);
    assert_null(f);
    if (expect && strcmp(err, expect) != 0) fail_msg("error '%s', expected '%s'", err, expect);
}

static void test_envfile_basic_forms(void **state)
{
    (void)state;
    pgs_envfile *f = env_ok("# a comment\n"
                            "\n"
                            "A=1\n"
                            "export B=two\n"
                            "  C  =  spaced out  \n"
                            "D=value # trailing comment\n"
                            "E=pa#ss\n"
                            "F=\n"
                            "G= # only a comment\n"
                            "H=#notcomment\n"
                            "   # indented comment\n"
                            "export\tI=tab\n"
                            "export=literal-key\n"
                            "CRLF=yes\r\n"
                            "LAST=no newline");
    assert_string_equal(config_envfile_get(f, "A"), "1");
    assert_string_equal(config_envfile_get(f, "B"), "two");
    assert_string_equal(config_envfile_get(f, "C"), "spaced out");
    assert_string_equal(config_envfile_get(f, "D"), "value");
    assert_string_equal(config_envfile_get(f, "E"), "pa#ss");
    assert_string_equal(config_envfile_get(f, "F"), "");
    assert_string_equal(config_envfile_get(f, "G"), "");
    assert_string_equal(config_envfile_get(f, "H"), "#notcomment");
    assert_string_equal(config_envfile_get(f, "I"), "tab");
    assert_string_equal(config_envfile_get(f, "export"), "literal-key");
    assert_string_equal(config_envfile_get(f, "CRLF"), "yes");
    assert_string_equal(config_envfile_get(f, "LAST"), "no newline");
    assert_null(config_envfile_get(f, "MISSING"));
    config_envfile_free(f);
}

static void test_envfile_quotes(void **state)
{
    (void)state;
    pgs_envfile *f = env_ok("S='lit $HOME \\n # not a comment'\n"
                            "D=\"line1\\nline2 \\\"q\\\" back\\\\slash \\t\\x\"\n"
                            "E=\"\"\n"
                            "C='x' # comment after quote\n"
                            "M=\"multi\n"
                            "line\"\n"
                            "AFTER=1\n"
                            "URL=\"postgresql://u:p%40ss@h/d\"\n");
    assert_string_equal(config_envfile_get(f, "S"), "lit $HOME \\n # not a comment");
    assert_string_equal(config_envfile_get(f, "D"), "line1\nline2 \"q\" back\\slash \t\\x");
    assert_string_equal(config_envfile_get(f, "E"), "");
    assert_string_equal(config_envfile_get(f, "C"), "x");
    assert_string_equal(config_envfile_get(f, "M"), "multi\nline");
    assert_string_equal(config_envfile_get(f, "AFTER"), "1");
    assert_string_equal(config_envfile_get(f, "URL"), "postgresql://u:p%40ss@h/d");
    config_envfile_free(f);
}

static void test_envfile_later_line_wins(void **state)
{
    (void)state;
    pgs_envfile *f = env_ok("A=1\nA=2\n");
    assert_string_equal(config_envfile_get(f, "A"), "2");
    config_envfile_free(f);
}

static void test_envfile_bad_lines_name_file_and_line(void **state)
{
    (void)state;
    const char *t1 = "A=1\n# fine\nthis is not an assignment\n";
    env_bad(t1, strlen(t1), ".env:3: expected '=' after 'this' (lines are KEY=VALUE)");
    const char *t2 = "A=1\nB=\"unterminated\n\n";
    env_bad(t2, strlen(t2), ".env:2: unterminated double quote in the value of 'B'");
    const char *t3 = "A='x\n";
    env_bad(t3, strlen(t3), ".env:1: unterminated single quote in the value of 'A'");
    const char *t4 = "\n\nA=\"x\" junk\n";
    env_bad(t4, strlen(t4), ".env:3: unexpected text after the closing quote of 'A'");
    const char *t5 = "=value\n";
    env_bad(t5, strlen(t5), ".env:1: expected KEY=VALUE");
    const char *t6 = "A=1\nB=\"line1\nline2\"\nC\n";
    env_bad(t6, strlen(t6), ".env:4: expected '=' after 'C' (lines are KEY=VALUE)");
    const char t7[] = "A=x\0y\n";
    env_bad(t7, sizeof(t7) - 1, ".env:1: the value of 'A' contains a NUL byte");
    const char t8[] = "A=\"x\0y\"\n";
    env_bad(t8, sizeof(t8) - 1, ".env:1: the value of 'A' contains a NUL byte");
}

static void test_envfile_size_limits(void **state)
{
    (void)state;
    size_t n = 64 * 1024 + 10;
    /* static: GCC's -Warray-bounds misfires on malloc'ed buffers under ASan */
    static char line_buf[64 * 1024 + 18];
    char *buf = line_buf;
    memcpy(buf, "A=1\nB=", 6);
    memset(buf + 6, 'x', n);
    env_bad(buf, n + 6, ".env:2: line is longer than 64 KiB");
    /* Exactly 64 KiB is fine. */
    memset(buf, 'x', 64 * 1024);
    memcpy(buf, "B=", 2);
    pgs_envfile *f = NULL;
    char err[256];
    assert_int_equal(config_envfile_parse(".env", buf, 64 * 1024, &f, err, sizeof(err)), 0);
    assert_int_equal(strlen(config_envfile_get(f, "B")), 64 * 1024 - 2);
    config_envfile_free(f);

    size_t big = (1u << 20) + 1;
    buf = calloc(1, big);
    if (!buf) fail_msg("out of memory");
    memset(buf, '\n', big);
    f = (pgs_envfile *)1;
    assert_true(config_envfile_parse(".env", buf, big, &f, err, sizeof(err)) < 0);
    assert_null(f);
    assert_non_null(strstr(err, "larger than 1 MiB"));
    free(buf);
}

static void test_envfile_parse_never_reads_past_len(void **state)
{
    (void)state;
    /* Each prefix of a tricky text is parsed from an exact-size heap copy,
     * so ASan catches any read past the end. */
    const char *text = "export A=\"x\\\"y\" # c\nB='q'\nC=v #\nD=\"\\";
    size_t n = strlen(text);
    for (size_t i = 0; i <= n; i++) {
        char *copy = malloc(i ? i : 1);
        memcpy(copy, text, i);
        pgs_envfile *f = NULL;
        char err[128];
        if (config_envfile_parse("t", copy, i, &f, err, sizeof(err)) == 0)
            config_envfile_free(f);
        free(copy);
    }
}

static void test_envfile_bom_is_skipped(void **state)
{
    (void)state;
    pgs_envfile *f = env_ok("\xEF\xBB\xBF" "A=1\n");
    assert_string_equal(config_envfile_get(f, "A"), "1");
    config_envfile_free(f);
}

static const char *envfile_lookup(void *ctx, const char *name)
{
    return config_envfile_get(ctx, name);
}

/* Environment over file, through the lookup indirection: a lookup that asks
 * the fake environment first and the file second. */
struct env_over_file {
    fake_env env;
    pgs_envfile *file;
};

static const char *env_over_file_lookup(void *ctx, const char *name)
{
    struct env_over_file *l = ctx;
    const char *v = fake_lookup(&l->env, name);
    return v ? v : config_envfile_get(l->file, name);
}

static void test_environment_wins_over_file_via_lookup(void **state)
{
    (void)state;
    pgs_envfile *f = env_ok("DATABASE_URL=postgresql://file/db\nDB_POOL_SIZE=5\n"
                            "DB_MAX_OVERFLOW=3\n");
    const char *pairs[] = {"DB_POOL_SIZE", "7", NULL};
    struct env_over_file l = {{pairs}, f};
    pgs_config c;
    char err[256];
    config_defaults(&c);
    assert_int_equal(config_apply_env(&c, env_over_file_lookup, &l, err, sizeof(err)), 0);
    assert_int_equal(c.pool_size, 7);
    assert_int_equal(c.max_overflow, 3);
    assert_string_equal(c.primary.host, "file");
    config_free(&c);

    /* And the file alone as a lookup. */
    config_defaults(&c);
    assert_int_equal(config_apply_env(&c, envfile_lookup, f, err, sizeof(err)), 0);
    assert_int_equal(c.pool_size, 5);
    config_free(&c);
    config_envfile_free(f);
}

/* ------------------------------------------------------------------------ */
/* config_load                                                              */
/* ------------------------------------------------------------------------ */

static const char *const all_vars[] = {
    "DATABASE_URL", "READ_REPLICA_URLS", "DB_POOL_SIZE", "DB_MAX_OVERFLOW", "DB_POOL_TIMEOUT",
    "PGSCALE_PINNING", "PGSCALE_MAX_PINNED", "PGSCALE_SERVER_RESET_SETTINGS",
    "PGSCALE_LISTEN", "PGSCALE_POOL_MODE", "PGSCALE_WORKERS", "REDIS_URL", "PGSCALE_LOG_LEVEL",
    "PGSCALE_SERVER_CONNECT_TIMEOUT", "PGSCALE_SERVER_LOGIN_TIMEOUT", "PGSCALE_SERVER_LIFETIME",
    "PGSCALE_SERVER_IDLE_TIMEOUT", "PGSCALE_SERVER_CHECK_DELAY", "PGSCALE_OVERFLOW_IDLE_TIMEOUT",
    "PGSCALE_UNUSED_POOL_TIMEOUT",
    "PGSCALE_IDLE_TRANSACTION_TIMEOUT", "PGSCALE_CLIENT_IDLE_TIMEOUT", "PGSCALE_QUERY_TIMEOUT",
    "PGSCALE_CLIENT_LOGIN_TIMEOUT", "PGSCALE_CLIENT_STARTUP_TIMEOUT", "PGSCALE_SHUTDOWN_TIMEOUT",
    "PGSCALE_MAX_CLIENT_CONN", "PGSCALE_MAX_PENDING_LOGINS", "PGSCALE_MAX_PENDING_LOGINS_PER_ADDRESS",
    "PGSCALE_MAX_PREPARED_STATEMENTS", "PGSCALE_MAX_CLIENT_PREPARED_STATEMENTS",
    "PGSCALE_MAX_CLIENT_PREPARED_BYTES", "PGSCALE_MAX_MESSAGE_SIZE",
    "PGSCALE_UNIX_SOCKET_PERMISSIONS", "PGSCALE_UNIX_SOCKET_GROUP", "PGSCALE_ALLOW_CORE_DUMPS",
    "PGSCALE_SERVER_SCRAM_MAX_ITERATIONS", "PGSCALE_SERVER_ALLOW_CLEARTEXT_PASSWORD", "PGSCALE_AUTH_TYPE",
    "PGSCALE_CONSISTENCY", "PGSCALE_FAILOVER", "PGSCALE_MAX_REPLICA_LAG",
    "PGSCALE_READ_FROM_PRIMARY", "PGSCALE_LOAD_BALANCE", "PGSCALE_MONITOR_INTERVAL",
    "PGSCALE_HEALTH_CHECK_TIMEOUT", "PGSCALE_FAILOVER_TIMEOUT", "PGSCALE_FAILOVER_WAIT",
    "PGSCALE_CACHE", "PGSCALE_CACHE_TTL", "PGSCALE_CACHE_MAX_MEMORY",
    "PGSCALE_CACHE_MAX_ENTRY_SIZE", "PGSCALE_CACHE_FILL_WAIT", "PGSCALE_CACHE_REDIS",
    "PGSCALE_CACHE_REDIS_TIMEOUT", "PGSCALE_CACHE_CHANGE_FEED", "PGSCALE_HTTP_LISTEN",
    "PGSCALE_HTTP_MAX_POOLS", "PGSCALE_HTTP_AUTH", "PGSCALE_HTTP_TLS_CERT", "PGSCALE_HTTP_TLS_KEY"};

static int clear_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(all_vars) / sizeof(all_vars[0]); i++) unsetenv(all_vars[i]);
    return 0;
}

static char envfile_path[64];

static const char *write_envfile(const char *text)
{
    snprintf(envfile_path, sizeof(envfile_path), "/tmp/pgscale-test-env-XXXXXX");
    int fd = mkstemp(envfile_path);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
    return envfile_path;
}

static void test_load_requires_database_url(void **state)
{
    (void)state;
    pgs_config c;
    char err[256];
    assert_true(config_load(&c, NULL, err, sizeof(err)) < 0);
    assert_string_equal(err, "DATABASE_URL is not set; point it at your PostgreSQL primary, "
                             "e.g. postgresql://user:pass@host:5432/db");
    config_free(&c); /* harmless after a failed load */
}

static void test_load_from_environment(void **state)
{
    (void)state;
    setenv("DATABASE_URL", "postgres://u:p@primary:5432/app", 1);
    setenv("DB_POOL_SIZE", "33", 1);
    setenv("PGSCALE_POOL_MODE", "session", 1);
    pgs_config c;
    char err[256] = "";
    if (config_load(&c, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_string_equal(c.primary.host, "primary");
    assert_int_equal(c.pool_size, 33);
    assert_int_equal(c.pool_mode, PGS_POOL_SESSION);
    assert_int_equal(c.max_overflow, 10);
    config_free(&c);
}

static void test_load_environment_wins_over_file(void **state)
{
    (void)state;
    const char *path = write_envfile("DATABASE_URL=postgresql://fromfile/db\n"
                                     "DB_POOL_SIZE=5\n"
                                     "DB_MAX_OVERFLOW=7\n"
                                     "SECRET_KEY=the app's own variable\n");
    setenv("DB_POOL_SIZE", "9", 1);
    pgs_config c;
    char err[256] = "";
    if (config_load(&c, path, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_string_equal(c.primary.host, "fromfile");
    assert_int_equal(c.pool_size, 9);
    assert_int_equal(c.max_overflow, 7);
    config_free(&c);

    /* An environment variable set to "" still wins (dotenv's rule), and
     * for DATABASE_URL that is an error. */
    setenv("DATABASE_URL", "", 1);
    assert_true(config_load(&c, path, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "DATABASE_URL is empty"));
    unlink(path);
}

static void test_load_errors_from_file_carry_file_and_line(void **state)
{
    (void)state;
    const char *path = write_envfile("# pgscale\n"
                                     "DATABASE_URL=postgresql://h/db\n"
                                     "\n"
                                     "DB_POOL_SIZE=abc\n");
    pgs_config c;
    char err[512] = "";
    assert_true(config_load(&c, path, err, sizeof(err)) < 0);
    char expect[512];
    snprintf(expect, sizeof(expect),
             "%s:4: DB_POOL_SIZE: 'abc' is not an integer (expected 1..10000)", path);
    assert_string_equal(err, expect);

    /* The same bad value from the environment has no file prefix, and a
     * good environment value hides the bad file value entirely. */
    setenv("DB_POOL_SIZE", "abc", 1);
    assert_true(config_load(&c, path, err, sizeof(err)) < 0);
    assert_string_equal(err, "DB_POOL_SIZE: 'abc' is not an integer (expected 1..10000)");
    setenv("DB_POOL_SIZE", "4", 1);
    assert_int_equal(config_load(&c, path, err, sizeof(err)), 0);
    assert_int_equal(c.pool_size, 4);
    config_free(&c);
    unlink(path);
}

static void test_load_rejects_unknown_pgscale_keys_in_file(void **state)
{
    (void)state;
    const char *path = write_envfile("DATABASE_URL=postgresql://h/db\nPGSCALE_POOLMODE=session\n");
    pgs_config c;
    char err[512] = "";
    assert_true(config_load(&c, path, err, sizeof(err)) < 0);
    char expect[512];
    snprintf(expect, sizeof(expect),
             "%s:2: unknown variable 'PGSCALE_POOLMODE' (see docs/configuration.md for the "
             "PGSCALE_* variables)",
             path);
    assert_string_equal(err, expect);
    unlink(path);
}

static void test_load_bad_envfile_syntax_and_missing_file(void **state)
{
    (void)state;
    const char *path = write_envfile("DATABASE_URL=postgresql://h/db\nnot valid\n");
    pgs_config c;
    char err[512] = "";
    assert_true(config_load(&c, path, err, sizeof(err)) < 0);
    char expect[512];
    snprintf(expect, sizeof(expect), "%s:2: expected '=' after 'not' (lines are KEY=VALUE)",
             path);
    assert_string_equal(err, expect);
    unlink(path);

    assert_true(config_load(&c, "/nonexistent/pgscale.env", err, sizeof(err)) < 0);
    assert_string_equal(err, "/nonexistent/pgscale.env: cannot open: No such file or directory");
}

static void test_envfile_load_reads_file(void **state)
{
    (void)state;
    const char *path = write_envfile("export DATABASE_URL='postgresql://x/y'\n");
    pgs_envfile *f = NULL;
    char err[256];
    assert_int_equal(config_envfile_load(path, &f, err, sizeof(err)), 0);
    assert_string_equal(config_envfile_get(f, "DATABASE_URL"), "postgresql://x/y");
    config_envfile_free(f);
    unlink(path);
    assert_true(config_envfile_load("/tmp", &f, err, sizeof(err)) < 0);
    assert_null(f);
}

/* ------------------------------------------------------------------------ */
/* describe                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct described {
    char names[64][48];
    char values[64][256];
    char defaults[64][256];
    int n;
} described;

static void collect(void *ctx, const char *name, const char *value, const char *def)
{
    described *d = ctx;
    assert_true(d->n < 64);
    snprintf(d->names[d->n], sizeof(d->names[0]), "%s", name);
    snprintf(d->values[d->n], sizeof(d->values[0]), "%s", value);
    snprintf(d->defaults[d->n], sizeof(d->defaults[0]), "%s", def);
    d->n++;
}

static const char *lookup_described(const described *d, const char *name, bool want_default)
{
    for (int i = 0; i < d->n; i++)
        if (strcmp(d->names[i], name) == 0) return want_default ? d->defaults[i] : d->values[i];
    fail_msg("describe has no %s", name);
    return NULL;
}

/* The replica and failover settings: defaults, every enum value, the one
 * lag setting that is a size or a duration, and the errors. */
static void test_replica_settings(void **state)
{
    (void)state;
    pgs_config c;
    char err[512];
    config_defaults(&c);
    assert_int_equal(c.consistency, PGS_CONSISTENCY_SESSION);
    assert_int_equal(c.failover, PGS_FAILOVER_AUTO);
    assert_int_equal(c.load_balance, PGS_BALANCE_ROUND_ROBIN);
    assert_int_equal(c.max_replica_lag_ms, 10000);
    assert_int_equal(c.max_replica_lag_bytes, 0);
    assert_false(c.read_from_primary);
    assert_int_equal(c.monitor_interval_ms, 100);
    assert_int_equal(c.health_check_timeout_ms, 2000);
    assert_int_equal(c.failover_timeout_ms, 10000);
    assert_int_equal(c.failover_wait_ms, 20000); /* the default failover_timeout + 10 s */

    apply_ok(&c, "PGSCALE_CONSISTENCY", "strict");
    assert_int_equal(c.consistency, PGS_CONSISTENCY_STRICT);
    apply_ok(&c, "PGSCALE_CONSISTENCY", "Eventual");
    assert_int_equal(c.consistency, PGS_CONSISTENCY_EVENTUAL);
    apply_ok(&c, "PGSCALE_FAILOVER", "follow");
    assert_int_equal(c.failover, PGS_FAILOVER_FOLLOW);
    apply_ok(&c, "PGSCALE_FAILOVER", "off");
    assert_int_equal(c.failover, PGS_FAILOVER_OFF);
    apply_ok(&c, "PGSCALE_LOAD_BALANCE", "least_outstanding");
    assert_int_equal(c.load_balance, PGS_BALANCE_LEAST_OUTSTANDING);
    apply_ok(&c, "PGSCALE_LOAD_BALANCE", "least-outstanding");
    assert_int_equal(c.load_balance, PGS_BALANCE_LEAST_OUTSTANDING);
    apply_ok(&c, "PGSCALE_LOAD_BALANCE", "weighted");
    assert_int_equal(c.load_balance, PGS_BALANCE_WEIGHTED);
    apply_ok(&c, "PGSCALE_READ_FROM_PRIMARY", "on");
    assert_true(c.read_from_primary);
    apply_ok(&c, "PGSCALE_MONITOR_INTERVAL", "250ms");
    assert_int_equal(c.monitor_interval_ms, 250);
    apply_ok(&c, "PGSCALE_FAILOVER_TIMEOUT", "30s");
    assert_int_equal(c.failover_timeout_ms, 30000);
    apply_ok(&c, "PGSCALE_FAILOVER_WAIT", "500ms");
    assert_int_equal(c.failover_wait_ms, 500);
    apply_ok(&c, "PGSCALE_FAILOVER_WAIT", "0"); /* fail after server_connect_timeout */
    assert_int_equal(c.failover_wait_ms, 0);
    apply_ok(&c, "PGSCALE_FAILOVER_WAIT", "1min");
    assert_int_equal(c.failover_wait_ms, 60000);

    apply_ok(&c, "PGSCALE_MAX_REPLICA_LAG", "16MB");
    assert_true(c.max_replica_lag_bytes == 16u << 20);
    assert_int_equal(c.max_replica_lag_ms, 0);
    apply_ok(&c, "PGSCALE_MAX_REPLICA_LAG", "8GB");
    assert_true(c.max_replica_lag_bytes == 8ull << 30);
    apply_ok(&c, "PGSCALE_MAX_REPLICA_LAG", "500ms");
    assert_true(c.max_replica_lag_bytes == 0);
    assert_int_equal(c.max_replica_lag_ms, 500);
    apply_ok(&c, "PGSCALE_MAX_REPLICA_LAG", "0");
    assert_true(c.max_replica_lag_bytes == 0);
    assert_int_equal(c.max_replica_lag_ms, 0);

    apply_bad("PGSCALE_CONSISTENCY", "linear", err, sizeof(err));
    assert_string_equal(err, "PGSCALE_CONSISTENCY: 'linear' is not a consistency mode "
                             "(expected session, strict or eventual)");
    apply_bad("PGSCALE_FAILOVER", "manual", err, sizeof(err));
    assert_string_equal(err, "PGSCALE_FAILOVER: 'manual' is not a failover mode (expected "
                             "auto, follow or off)");
    apply_bad("PGSCALE_LOAD_BALANCE", "random", err, sizeof(err));
    assert_non_null(strstr(err, "round_robin, least_outstanding or weighted"));
    apply_bad("PGSCALE_MAX_REPLICA_LAG", "16", err, sizeof(err));
    assert_non_null(strstr(err, "needs a unit"));
    apply_bad("PGSCALE_MAX_REPLICA_LAG", "16 parsecs", err, sizeof(err));
    assert_non_null(strstr(err, "neither a size"));
    apply_bad("PGSCALE_MAX_REPLICA_LAG", "2048GB", err, sizeof(err));
    assert_non_null(strstr(err, "out of range"));
    apply_bad("PGSCALE_MONITOR_INTERVAL", "0", err, sizeof(err));
    apply_bad("PGSCALE_FAILOVER_WAIT", "soon", err, sizeof(err));
    assert_non_null(strstr(err, "PGSCALE_FAILOVER_WAIT"));
    apply_bad("PGSCALE_SERVER_RESET_SETTINGS", "some", err, sizeof(err));
    assert_string_equal(err, "PGSCALE_SERVER_RESET_SETTINGS: 'some' is not a reset mode "
                             "(expected off or all)");
    config_free(&c);
}

/* SHOW CONFIG's values read back as what was set. */
static void test_cache_settings_defaults_and_environment(void **state)
{
    (void)state;
    pgs_config c;
    char err[512];
    config_defaults(&c);
    assert_false(c.cache.enabled);
    assert_int_equal(c.cache.ttl_ms, 300000);
    assert_true(c.cache.max_memory == 256ull << 20);
    assert_int_equal(c.cache.max_entry_size, 1u << 20);
    assert_int_equal(c.cache.fill_wait_ms, 1000);
    assert_int_equal(c.cache.n_rules, 0);
    assert_false(c.cache.change_feed);
    const char *pairs[] = {"PGSCALE_CACHE", "on", "PGSCALE_CACHE_TTL", "60",
                           "PGSCALE_CACHE_MAX_MEMORY", "8GB", "PGSCALE_CACHE_MAX_ENTRY_SIZE",
                           "256kB", "PGSCALE_CACHE_FILL_WAIT", "0",
                           "PGSCALE_CACHE_CHANGE_FEED", "on", NULL};
    assert_int_equal(apply(&c, err, sizeof(err), pairs), 0);
    assert_true(c.cache.enabled);
    assert_int_equal(c.cache.ttl_ms, 60000);
    assert_true(c.cache.max_memory == 8ull << 30); /* above 4 GB: a 64-bit size */
    assert_int_equal(c.cache.max_entry_size, 256 * 1024);
    assert_int_equal(c.cache.fill_wait_ms, 0);
    assert_true(c.cache.change_feed);
    described *d = calloc(1, sizeof(*d));
    config_describe(&c, collect, d);
    assert_string_equal(lookup_described(d, "PGSCALE_CACHE", false), "on");
    assert_string_equal(lookup_described(d, "PGSCALE_CACHE", true), "off");
    assert_string_equal(lookup_described(d, "PGSCALE_CACHE_TTL", false), "60s");
    assert_string_equal(lookup_described(d, "PGSCALE_CACHE_TTL", true), "300s");
    assert_string_equal(lookup_described(d, "PGSCALE_CACHE_MAX_MEMORY", false), "8GB");
    assert_string_equal(lookup_described(d, "PGSCALE_CACHE_MAX_MEMORY", true), "256MB");
    assert_string_equal(lookup_described(d, "PGSCALE_CACHE_MAX_ENTRY_SIZE", false), "256kB");
    assert_string_equal(lookup_described(d, "PGSCALE_CACHE_FILL_WAIT", false), "0");
    assert_string_equal(lookup_described(d, "PGSCALE_CACHE_FILL_WAIT", true), "1s");
    assert_string_equal(lookup_described(d, "PGSCALE_CACHE_CHANGE_FEED", false), "on");
    assert_string_equal(lookup_described(d, "PGSCALE_CACHE_CHANGE_FEED", true), "off");
    free(d);
    config_free(&c);
}

static void test_cache_settings_bad_values(void **state)
{
    (void)state;
    char err[512];
    apply_bad("PGSCALE_CACHE", "maybe", err, sizeof(err));
    apply_bad("PGSCALE_CACHE_TTL", "0", err, sizeof(err)); /* a TTL cannot be off */
    apply_bad("PGSCALE_CACHE_TTL", "5 parsecs", err, sizeof(err));
    apply_bad("PGSCALE_CACHE_MAX_MEMORY", "100kB", err, sizeof(err)); /* below 1MB */
    apply_bad("PGSCALE_CACHE_MAX_MEMORY", "2000GB", err, sizeof(err)); /* above 1 TB */
    assert_non_null(strstr(err, "out of range"));
    apply_bad("PGSCALE_CACHE_MAX_ENTRY_SIZE", "10", err, sizeof(err));
    apply_bad("PGSCALE_CACHE_FILL_WAIT", "-1s", err, sizeof(err));
    apply_bad("PGSCALE_CACHE_CHANGE_FEED", "sometimes", err, sizeof(err));
}

static void test_cache_entry_larger_than_memory_is_refused_at_load(void **state)
{
    (void)state;
    pgs_config c;
    char err[512];
    setenv("DATABASE_URL", "postgresql://u:p@h/db", 1);
    setenv("PGSCALE_CACHE_MAX_MEMORY", "2MB", 1);
    setenv("PGSCALE_CACHE_MAX_ENTRY_SIZE", "4MB", 1);
    assert_true(config_load(&c, NULL, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "cache.max_entry_size (4MB) is larger than cache.max_memory (2MB)"));
    setenv("PGSCALE_CACHE_MAX_ENTRY_SIZE", "2MB", 1);
    if (config_load(&c, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    config_free(&c);
    unsetenv("PGSCALE_CACHE_MAX_MEMORY");
    unsetenv("PGSCALE_CACHE_MAX_ENTRY_SIZE");
    unsetenv("DATABASE_URL");
}

static void test_replica_settings_described(void **state)
{
    (void)state;
    pgs_config c;
    char err[256];
    const char *pairs[] = {"READ_REPLICA_URLS", "postgresql://r1/d,postgresql://r2/d",
                           "PGSCALE_MAX_REPLICA_LAG", "16MB", "PGSCALE_LOAD_BALANCE",
                           "least-outstanding", "PGSCALE_MONITOR_INTERVAL", "0.25s", NULL};
    assert_int_equal(apply(&c, err, sizeof(err), pairs), 0);
    assert_int_equal(c.n_replicas, 2);
    assert_int_equal(c.replica_weights[0], 1);
    assert_int_equal(c.replica_weights[1], 1);
    described *d = calloc(1, sizeof(*d));
    config_describe(&c, collect, d);
    assert_string_equal(lookup_described(d, "PGSCALE_MAX_REPLICA_LAG", false), "16MB");
    assert_string_equal(lookup_described(d, "PGSCALE_MAX_REPLICA_LAG", true), "10s");
    assert_string_equal(lookup_described(d, "PGSCALE_LOAD_BALANCE", false), "least_outstanding");
    assert_string_equal(lookup_described(d, "PGSCALE_MONITOR_INTERVAL", false), "250ms");
    assert_string_equal(lookup_described(d, "PGSCALE_CONSISTENCY", false), "session");
    assert_string_equal(lookup_described(d, "PGSCALE_FAILOVER", false), "auto");
    assert_string_equal(lookup_described(d, "PGSCALE_READ_FROM_PRIMARY", false), "off");
    free(d);
    config_free(&c);
}

static void test_describe_lists_every_variable_and_masks_passwords(void **state)
{
    (void)state;
    pgs_config c;
    char err[256];
    const char *pairs[] = {"DATABASE_URL",
                           "postgresql+asyncpg://us%40er:s3cret@[::1]:5433/d%2Fb?sslmode=require"
                           "&sslpassword=keypass",
                           "READ_REPLICA_URLS", "postgresql://r:rpass@r1/d,postgresql://r2/d",
                           "REDIS_URL", "redis://default:redispw@cache:6379/0",
                           "PGSCALE_QUERY_TIMEOUT", "1500ms",
                           "PGSCALE_MAX_MESSAGE_SIZE", "64MB",
                           "PGSCALE_LISTEN", "[::]:7000",
                           NULL};
    assert_int_equal(apply(&c, err, sizeof(err), pairs), 0);
    described *d = calloc(1, sizeof(*d));
    config_describe(&c, collect, d);

    for (size_t i = 0; i < sizeof(all_vars) / sizeof(all_vars[0]); i++)
        (void)lookup_described(d, all_vars[i], false);
    assert_int_equal(d->n, (int)(sizeof(all_vars) / sizeof(all_vars[0])));
    for (int i = 0; i < d->n; i++) {
        assert_null(strstr(d->values[i], "s3cret"));
        assert_null(strstr(d->values[i], "rpass"));
        assert_null(strstr(d->values[i], "redispw"));
        assert_null(strstr(d->values[i], "keypass"));
    }
    assert_string_equal(lookup_described(d, "DATABASE_URL", false),
                        "postgresql://us%40er:****@[::1]:5433/d%2Fb?sslmode=require"
                        "&sslpassword=****");
    assert_string_equal(lookup_described(d, "READ_REPLICA_URLS", false),
                        "postgresql://r:****@r1/d,postgresql://r2/d");
    assert_string_equal(lookup_described(d, "REDIS_URL", false),
                        "redis://default:****@cache:6379/0");
    /* secrets elsewhere in a Redis URL are masked too */
    static const char *const redis_cases[][2] = {
        {"redis://cache:6379/0?password=qpw&db=1", "redis://cache:6379/0?password=****&db=1"},
        {"redis://cache/0?db=2&password=tok", "redis://cache/0?db=2&password=****"},
        {"redis://lonepw@cache:6379", "redis://****@cache:6379"},
        {"redis://:pw@cache?password=pw2", "redis://:****@cache?password=****"},
        {"unix:///run/redis.sock?password=upw", "unix:///run/redis.sock?password=****"},
    };
    for (size_t k = 0; k < sizeof(redis_cases) / sizeof(redis_cases[0]); k++) {
        const char *one[] = {"REDIS_URL", redis_cases[k][0], NULL};
        pgs_config c2;
        assert_int_equal(apply(&c2, err, sizeof(err), one), 0);
        described *d2 = calloc(1, sizeof(*d2));
        config_describe(&c2, collect, d2);
        assert_string_equal(lookup_described(d2, "REDIS_URL", false), redis_cases[k][1]);
        free(d2);
        config_free(&c2);
    }
    assert_string_equal(lookup_described(d, "PGSCALE_QUERY_TIMEOUT", false), "1500ms");
    assert_string_equal(lookup_described(d, "PGSCALE_QUERY_TIMEOUT", true), "0");
    assert_string_equal(lookup_described(d, "DB_POOL_TIMEOUT", false), "30s");
    assert_string_equal(lookup_described(d, "PGSCALE_SERVER_LIFETIME", true), "3600s");
    assert_string_equal(lookup_described(d, "PGSCALE_MAX_MESSAGE_SIZE", false), "64MB");
    assert_string_equal(lookup_described(d, "PGSCALE_MAX_MESSAGE_SIZE", true), "1GB");
    assert_string_equal(lookup_described(d, "PGSCALE_LISTEN", false), "[::]:7000");
    assert_string_equal(lookup_described(d, "PGSCALE_LISTEN", true), "127.0.0.1:6432");
    assert_string_equal(lookup_described(d, "PGSCALE_POOL_MODE", true), "transaction");
    assert_string_equal(lookup_described(d, "PGSCALE_LOG_LEVEL", false), "info");
    assert_string_equal(lookup_described(d, "DB_POOL_SIZE", true), "20");
    assert_string_equal(lookup_described(d, "DATABASE_URL", true), "");
    free(d);
    config_free(&c);
}

static void test_described_url_parses_back(void **state)
{
    (void)state;
    pgs_config c;
    char err[256];
    const char *pairs[] = {"DATABASE_URL",
                           "postgresql://a%20b@%2Ftmp%2Fsock:6000/db%3Fx?application_name=a%26b",
                           NULL};
    assert_int_equal(apply(&c, err, sizeof(err), pairs), 0);
    described *d = calloc(1, sizeof(*d));
    config_describe(&c, collect, d);
    pgs_url u;
    url_ok(lookup_described(d, "DATABASE_URL", false), &u);
    assert_string_equal(u.user, "a b");
    assert_string_equal(u.host, "/tmp/sock");
    assert_int_equal(u.port, 6000);
    assert_string_equal(u.dbname, "db?x");
    assert_string_equal(config_url_param(&u, "application_name"), "a&b");
    config_url_free(&u);
    free(d);
    config_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_match_documented_values),
        cmocka_unit_test(test_url_full_form),
        cmocka_unit_test(test_url_postgres_scheme_and_missing_parts),
        cmocka_unit_test(test_url_scheme_is_case_insensitive),
        cmocka_unit_test(test_url_driver_suffixes),
        cmocka_unit_test(test_url_percent_decoding),
        cmocka_unit_test(test_url_unencoded_at_in_password_splits_at_last_at),
        cmocka_unit_test(test_url_bad_percent_escapes),
        cmocka_unit_test(test_url_errors_never_echo_the_password),
        cmocka_unit_test(test_url_ipv6),
        cmocka_unit_test(test_url_ports),
        cmocka_unit_test(test_url_bad_schemes),
        cmocka_unit_test(test_url_multiple_hosts_are_rejected_clearly),
        cmocka_unit_test(test_url_unix_socket_hosts),
        cmocka_unit_test(test_url_unix_socket_path_limits),
        cmocka_unit_test(test_url_query_params_in_order_with_limit),
        cmocka_unit_test(test_url_query_param_forms),
        cmocka_unit_test(test_url_query_params_override_parts),
        cmocka_unit_test(test_url_control_characters_rejected),
        cmocka_unit_test(test_database_url_is_parsed),
        cmocka_unit_test(test_read_replica_urls),
        cmocka_unit_test(test_pool_size),
        cmocka_unit_test(test_max_overflow_accepts_minus_one_as_no_limit),
        cmocka_unit_test(test_pool_timeout_allows_decimals_not_zero),
        cmocka_unit_test(test_durations_with_units),
        cmocka_unit_test(test_zero_turns_off_only_the_optional_timeouts),
        cmocka_unit_test(test_every_duration_variable_lands_in_its_field),
        cmocka_unit_test(test_listen_forms),
        cmocka_unit_test(test_http_listen_forms),
        cmocka_unit_test(test_pool_mode),
        cmocka_unit_test(test_workers),
        cmocka_unit_test(test_redis_url),
        cmocka_unit_test(test_log_level),
        cmocka_unit_test(test_local_access_settings),
        cmocka_unit_test(test_max_client_conn),
        cmocka_unit_test(test_max_prepared_statements),
        cmocka_unit_test(test_max_message_size),
        cmocka_unit_test(test_empty_values_mean_unset),
        cmocka_unit_test(test_error_values_are_sanitised),
        cmocka_unit_test(test_apply_env_error_fits_small_buffers),
        cmocka_unit_test(test_envfile_basic_forms),
        cmocka_unit_test(test_envfile_quotes),
        cmocka_unit_test(test_envfile_later_line_wins),
        cmocka_unit_test(test_envfile_bad_lines_name_file_and_line),
        cmocka_unit_test(test_envfile_size_limits),
        cmocka_unit_test(test_envfile_parse_never_reads_past_len),
        cmocka_unit_test(test_envfile_bom_is_skipped),
        cmocka_unit_test(test_environment_wins_over_file_via_lookup),
        cmocka_unit_test_setup_teardown(test_load_requires_database_url, clear_env, clear_env),
        cmocka_unit_test_setup_teardown(test_load_from_environment, clear_env, clear_env),
        cmocka_unit_test_setup_teardown(test_load_environment_wins_over_file, clear_env,
                                        clear_env),
        cmocka_unit_test_setup_teardown(test_load_errors_from_file_carry_file_and_line,
                                        clear_env, clear_env),
        cmocka_unit_test_setup_teardown(test_load_rejects_unknown_pgscale_keys_in_file,
                                        clear_env, clear_env),
        cmocka_unit_test_setup_teardown(test_load_bad_envfile_syntax_and_missing_file, clear_env,
                                        clear_env),
        cmocka_unit_test(test_envfile_load_reads_file),
        cmocka_unit_test(test_describe_lists_every_variable_and_masks_passwords),
        cmocka_unit_test(test_replica_settings),
        cmocka_unit_test(test_cache_settings_defaults_and_environment),
        cmocka_unit_test(test_cache_settings_bad_values),
        cmocka_unit_test_setup_teardown(test_cache_entry_larger_than_memory_is_refused_at_load,
                                        clear_env, clear_env),
        cmocka_unit_test(test_replica_settings_described),
        cmocka_unit_test(test_described_url_parses_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
