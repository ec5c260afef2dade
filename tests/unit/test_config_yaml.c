/* Unit tests for the YAML config file: every key, every error with its
 * line, the limits (size, depth, items, anchors), precedence with the .env
 * file and the environment, reload, describe, and the example file that
 * docs/configuration.md shows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "config_yaml.h"

#ifndef PGS_SOURCE_ROOT
#define PGS_SOURCE_ROOT "."
#endif

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

#define NAME "t.yaml"

static int parse(pgs_config *cfg, const char *text, char *err, size_t errlen)
{
    config_defaults(cfg);
    err[0] = '\0';
    return config_yaml_parse(NAME, text, strlen(text), cfg, NULL, err, errlen);
}

/* Parses text on top of defaults; fails the test with the error. */
static void yaml_ok(pgs_config *cfg, const char *text)
{
    char err[1024];
    if (parse(cfg, text, err, sizeof(err)) != 0) fail_msg("rejected: %s\n---\n%s", err, text);
}

/* Expects text to be rejected with exactly the message expect. */
static void yaml_bad(const char *text, const char *expect)
{
    pgs_config cfg;
    char err[1024];
    int rc = parse(&cfg, text, err, sizeof(err));
    config_free(&cfg);
    if (rc == 0) fail_msg("accepted:\n%s", text);
    assert_true(rc < 0);
    if (strcmp(err, expect) != 0)
        fail_msg("for:\n%s\nerror is\n  %s\nexpected\n  %s", text, err, expect);
}

/* Expects rejection with a message that contains every given fragment. */
static void yaml_bad_has(const char *text, ...)
{
    pgs_config cfg;
    char err[1024];
    int rc = parse(&cfg, text, err, sizeof(err));
    config_free(&cfg);
    if (rc == 0) fail_msg("accepted:\n%s", text);
    va_list ap;
    va_start(ap, text);
    for (const char *frag; (frag = va_arg(ap, const char *)) != NULL;)
        if (!strstr(err, frag)) fail_msg("error '%s' lacks '%s'", err, frag);
    va_end(ap);
    assert_null(strchr(err, '\n'));
}

/* A scratch directory with files in it, removed by tmp_cleanup(). */
static char tmp_dir[64];
static char tmp_files[16][256];
static int n_tmp_files;

static const char *tmp_path(const char *name)
{
    static char p[256];
    snprintf(p, sizeof(p), "%s/%s", tmp_dir, name);
    return p;
}

static const char *tmp_write(const char *name, const char *text)
{
    if (!tmp_dir[0]) {
        snprintf(tmp_dir, sizeof(tmp_dir), "/tmp/pgscale-yaml-XXXXXX");
        assert_non_null(mkdtemp(tmp_dir));
    }
    const char *p = tmp_path(name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    /* The returned path stays valid until tmp_cleanup(). */
    for (int i = 0; i < n_tmp_files; i++)
        if (strcmp(tmp_files[i], p) == 0) return tmp_files[i];
    assert_true(n_tmp_files < 16);
    snprintf(tmp_files[n_tmp_files], sizeof(tmp_files[0]), "%s", p);
    return tmp_files[n_tmp_files++];
}

static int tmp_cleanup(void **state)
{
    (void)state;
    for (int i = n_tmp_files - 1; i >= 0; i--) unlink(tmp_files[i]);
    n_tmp_files = 0;
    if (tmp_dir[0]) rmdir(tmp_dir);
    tmp_dir[0] = '\0';
    return 0;
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Collects describe output. */
typedef struct described {
    char names[128][64];
    char values[128][256];
    char defaults[128][128];
    int n;
} described;

static void collect(void *ctx, const char *name, const char *value, const char *def)
{
    described *d = ctx;
    assert_true(d->n < 128);
    snprintf(d->names[d->n], sizeof(d->names[0]), "%s", name);
    snprintf(d->values[d->n], sizeof(d->values[0]), "%s", value);
    snprintf(d->defaults[d->n], sizeof(d->defaults[0]), "%s", def);
    d->n++;
}

static const char *described_value(const described *d, const char *name)
{
    for (int i = 0; i < d->n; i++)
        if (strcmp(d->names[i], name) == 0) return d->values[i];
    fail_msg("describe has no %s", name);
    return NULL;
}

static described *describe_all(const pgs_config *cfg)
{
    described *d = calloc(1, sizeof(*d));
    config_describe(cfg, collect, d);
    config_describe_file(cfg, collect, d);
    return d;
}

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

/* ------------------------------------------------------------------------ */
/* Settings that mirror an environment variable                             */
/* ------------------------------------------------------------------------ */

struct mirror {
    const char *key, *env, *good, *bad;
};

/* Every environment variable but the structured ones (DATABASE_URL,
 * READ_REPLICA_URLS, PGSCALE_LISTEN: nodes:, listen:), with a value that
 * is not the default and a value that is wrong. */
static const struct mirror mirrors[] = {
    {"pool_mode", "PGSCALE_POOL_MODE", "session", "statement"},
    {"workers", "PGSCALE_WORKERS", "3", "65"},
    {"pool_size", "DB_POOL_SIZE", "33", "0"},
    {"max_overflow", "DB_MAX_OVERFLOW", "-1", "-2"},
    {"pool_timeout", "DB_POOL_TIMEOUT", "2.5", "0"},
    {"server_connect_timeout", "PGSCALE_SERVER_CONNECT_TIMEOUT", "2s", "forever"},
    {"server_login_timeout", "PGSCALE_SERVER_LOGIN_TIMEOUT", "1min", "0"},
    {"server_lifetime", "PGSCALE_SERVER_LIFETIME", "2h", "-1"},
    {"server_idle_timeout", "PGSCALE_SERVER_IDLE_TIMEOUT", "5min", "5m"},
    {"overflow_idle_timeout", "PGSCALE_OVERFLOW_IDLE_TIMEOUT", "0", "0.0001s"},
    {"server_check_delay", "PGSCALE_SERVER_CHECK_DELAY", "500ms", "0"},
    {"unused_pool_timeout", "PGSCALE_UNUSED_POOL_TIMEOUT", "0", "-1s"},
    {"idle_transaction_timeout", "PGSCALE_IDLE_TRANSACTION_TIMEOUT", "60s", "60x"},
    {"client_idle_timeout", "PGSCALE_CLIENT_IDLE_TIMEOUT", "30min", "1e3"},
    {"query_timeout", "PGSCALE_QUERY_TIMEOUT", "1500ms", "50 days"},
    {"client_login_timeout", "PGSCALE_CLIENT_LOGIN_TIMEOUT", "15", "0"},
    {"shutdown_timeout", "PGSCALE_SHUTDOWN_TIMEOUT", "1min", "1 min 2"},
    {"max_client_conn", "PGSCALE_MAX_CLIENT_CONN", "20000", "1000001"},
    {"max_prepared_statements", "PGSCALE_MAX_PREPARED_STATEMENTS", "0", "-1"},
    {"max_message_size", "PGSCALE_MAX_MESSAGE_SIZE", "64MB", "1023"},
    {"redis_url", "REDIS_URL", "redis://:pw@cache:6379/0", "http://cache"},
    {"log_level", "PGSCALE_LOG_LEVEL", "debug", "loud"},
    {"server_scram_max_iterations", "PGSCALE_SERVER_SCRAM_MAX_ITERATIONS", "4096", "10000001"},
    {"server_allow_cleartext_password", "PGSCALE_SERVER_ALLOW_CLEARTEXT_PASSWORD", "on",
     "sometimes"},
};

static void test_every_environment_setting_has_its_file_key(void **state)
{
    (void)state;
    for (size_t i = 0; i < PGS_ARRAY_LEN(mirrors); i++) {
        pgs_value_kind kind;
        assert_string_equal(config_setting_for_key(mirrors[i].key, &kind), mirrors[i].env);
        assert_string_equal(config_key_for_setting(mirrors[i].env), mirrors[i].key);
    }
    assert_string_equal(config_key_for_setting("DATABASE_URL"), "nodes.primary");
    assert_string_equal(config_key_for_setting("READ_REPLICA_URLS"), "nodes.replicas");
    assert_string_equal(config_key_for_setting("PGSCALE_LISTEN"), "listen");
    assert_null(config_key_for_setting("PGSCALE_NOPE"));
    pgs_value_kind kind;
    assert_null(config_setting_for_key("listen", &kind)); /* structured, not a scalar */
    assert_null(config_setting_for_key("nope", &kind));
}

/* The same text gives the same effective value from the file as from the
 * environment, for every mirrored setting. */
static void test_file_and_environment_give_the_same_values(void **state)
{
    (void)state;
    for (size_t i = 0; i < PGS_ARRAY_LEN(mirrors); i++) {
        const struct mirror *m = &mirrors[i];
        char doc[256], err[512];
        snprintf(doc, sizeof(doc), "# %s\n%s: %s\n", m->env, m->key, m->good);
        pgs_config fc, ec;
        yaml_ok(&fc, doc);
        const char *pairs[] = {m->env, m->good, NULL};
        fake_env e = {pairs};
        config_defaults(&ec);
        assert_int_equal(config_apply_env(&ec, fake_lookup, &e, err, sizeof(err)), 0);
        described *fd = describe_all(&fc), *ed = describe_all(&ec);
        pgs_config def;
        config_defaults(&def);
        described *dd = describe_all(&def);
        assert_string_equal(described_value(fd, m->env), described_value(ed, m->env));
        if (strcmp(described_value(fd, m->env), described_value(dd, m->env)) == 0)
            fail_msg("%s: %s is the default; the test proves nothing", m->key, m->good);
        free(fd);
        free(ed);
        free(dd);
        config_free(&fc);
        config_free(&ec);
    }
}

/* A bad value gets the environment's reason, prefixed FILE:LINE: key. */
static void test_bad_values_get_the_environment_reason_with_file_and_line(void **state)
{
    (void)state;
    for (size_t i = 0; i < PGS_ARRAY_LEN(mirrors); i++) {
        const struct mirror *m = &mirrors[i];
        char doc[256], err[512], expect[700];
        /* Quoted, so that every bad value is text whatever it looks like. */
        snprintf(doc, sizeof(doc), "# settings\n\n%s: '%s'\n", m->key, m->bad);
        const char *pairs[] = {m->env, m->bad, NULL};
        fake_env e = {pairs};
        pgs_config ec;
        config_defaults(&ec);
        assert_true(config_apply_env(&ec, fake_lookup, &e, err, sizeof(err)) < 0);
        config_free(&ec);
        size_t envlen = strlen(m->env);
        assert_memory_equal(err, m->env, envlen);
        snprintf(expect, sizeof(expect), NAME ":3: %s%s", m->key, err + envlen);
        if (strcmp(m->key, "workers") == 0 || strcmp(m->key, "pool_size") == 0 ||
            strcmp(m->key, "max_overflow") == 0 || strcmp(m->key, "max_client_conn") == 0 ||
            strcmp(m->key, "max_prepared_statements") == 0 ||
            strcmp(m->key, "server_scram_max_iterations") == 0) {
            /* Integers in quotes are strings: the type error comes first. */
            snprintf(expect, sizeof(expect),
                     NAME ":3: %s: expected an integer, got the quoted string '%s' (write "
                          "numbers without quotes)",
                     m->key, m->bad);
        }
        yaml_bad(doc, expect);
    }
    /* And unquoted integers get the range message. */
    yaml_bad("pool_size: 0\n", NAME ":1: pool_size: '0' is out of range (expected 1..10000)");
    yaml_bad("workers: 65\n", NAME ":1: workers: '65' is out of range (expected 1..64)");
    yaml_bad("max_overflow: -2\n",
             NAME ":1: max_overflow: '-2' is out of range (expected 0..10000, or -1 for no "
                  "limit)");
    yaml_bad("pool_size: 1.5\n",
             NAME ":1: pool_size: '1.5' is not an integer (expected 1..10000)");
}

static void test_redis_url_errors_never_echo_it(void **state)
{
    (void)state;
    yaml_bad("redis_url: http://:Secr3t@cache\n",
             NAME ":1: redis_url: must start with redis:// or unix://");
    yaml_bad("redis_url: [redis://:Secr3t@cache]\n",
             NAME ":1: redis_url: expected text, got a list");
}

static void test_mirrored_settings_land_in_their_fields(void **state)
{
    (void)state;
    pgs_config c;
    yaml_ok(&c, "pool_mode: session\n"
                "workers: 3\n"
                "pool_size: 33\n"
                "max_overflow: -1\n"
                "pool_timeout: 2.5\n"
                "server_connect_timeout: 2s\n"
                "server_login_timeout: 1min\n"
                "server_lifetime: 1h\n"
                "server_idle_timeout: 10min\n"
                "overflow_idle_timeout: 0\n"
                "server_check_delay: 500ms\n"
                "idle_transaction_timeout: 60\n"
                "client_idle_timeout: \"30min\"\n"
                "query_timeout: 1500ms\n"
                "client_login_timeout: 15\n"
                "shutdown_timeout: 1min\n"
                "max_client_conn: 20000\n"
                "max_prepared_statements: 0\n"
                "max_message_size: 64MB\n"
                "redis_url: redis://:pw@cache:6379/0\n"
                "log_level: debug\n");
    assert_int_equal(c.pool_mode, PGS_POOL_SESSION);
    assert_int_equal(c.workers, 3);
    assert_int_equal(c.pool_size, 33);
    assert_int_equal(c.max_overflow, 10000);
    assert_int_equal(c.pool_timeout_ms, 2500);
    assert_int_equal(c.server_connect_timeout_ms, 2000);
    assert_int_equal(c.server_login_timeout_ms, 60000);
    assert_int_equal(c.server_lifetime_ms, 3600000);
    assert_int_equal(c.server_idle_timeout_ms, 600000);
    assert_int_equal(c.overflow_idle_timeout_ms, 0);
    assert_int_equal(c.server_check_delay_ms, 500);
    assert_int_equal(c.idle_transaction_timeout_ms, 60000);
    assert_int_equal(c.client_idle_timeout_ms, 1800000);
    assert_int_equal(c.query_timeout_ms, 1500);
    assert_int_equal(c.client_login_timeout_ms, 15000);
    assert_int_equal(c.shutdown_timeout_ms, 60000);
    assert_int_equal(c.max_client_conn, 20000);
    assert_int_equal(c.max_prepared_statements, 0);
    assert_int_equal(c.max_message_size, 64u << 20);
    assert_string_equal(c.redis_url, "redis://:pw@cache:6379/0");
    assert_int_equal(c.log_level, PGS_LOG_DEBUG);
    config_free(&c);
}

static void test_yaml_types_are_checked(void **state)
{
    (void)state;
    yaml_bad("pool_size: [1, 2]\n", NAME ":1: pool_size: expected an integer, got a list");
    yaml_bad("pool_size: {a: 1}\n", NAME ":1: pool_size: expected an integer, got a mapping");
    yaml_bad("pool_size: true\n", NAME ":1: pool_size: expected an integer, got the boolean true");
    yaml_bad("pool_size:\n",
             NAME ":1: pool_size: has no value (expected an integer; leave the key out to use "
                  "the default)");
    yaml_bad("pool_size: ~\n",
             NAME ":1: pool_size: has no value (expected an integer; leave the key out to use "
                  "the default)");
    yaml_bad("pool_timeout: [1]\n", NAME ":1: pool_timeout: expected a duration, got a list");
    yaml_bad("max_message_size: false\n",
             NAME ":1: max_message_size: expected a size, got the boolean false");
    yaml_bad("pool_mode: {x: 1}\n", NAME ":1: pool_mode: expected text, got a mapping");
    yaml_bad("log_level: TRUE\n",
             NAME ":1: log_level: expected text, got the boolean TRUE (quote it if you mean "
                  "the text)");
    /* Durations and sizes may be quoted or not; numbers are seconds / bytes. */
    pgs_config c;
    yaml_ok(&c, "pool_timeout: '3'\nmax_message_size: 2048\nquery_timeout: 0.25\n");
    assert_int_equal(c.pool_timeout_ms, 3000);
    assert_int_equal(c.max_message_size, 2048);
    assert_int_equal(c.query_timeout_ms, 250);
    config_free(&c);
    /* 'true' in quotes is text, and then simply not a log level. */
    yaml_bad("log_level: 'true'\n",
             NAME ":1: log_level: 'true' is not a log level (expected error, warn, info or "
                  "debug)");
}

static void test_empty_documents_keep_every_default(void **state)
{
    (void)state;
    const char *docs[] = {"", "# only a comment\n", "---\n", "--- ~\n", "\n\n", "---\n...\n"};
    for (size_t i = 0; i < PGS_ARRAY_LEN(docs); i++) {
        pgs_config c;
        yaml_ok(&c, docs[i]);
        assert_int_equal(c.pool_size, 20);
        assert_int_equal(c.n_listen, 1);
        config_free(&c);
    }
    yaml_bad("[1, 2]\n",
             NAME ":1: the file must be a mapping of settings (key: value lines), not a list");
    yaml_bad("just text\n",
             NAME ":1: the file must be a mapping of settings (key: value lines), not text");
}

/* ------------------------------------------------------------------------ */
/* Unknown keys                                                             */
/* ------------------------------------------------------------------------ */

/* nodes.replicas entries may carry a weight; route: per database and user;
 * the replica settings from the file. */
static void test_replica_weights_route_and_settings(void **state)
{
    (void)state;
    pgs_config c;
    yaml_ok(&c, "nodes:\n"
                "  primary: postgresql://p/db\n"
                "  replicas:\n"
                "    - postgresql://r1/db\n"
                "    - {url: 'postgresql://r2/db', weight: 5}\n"
                "    - url: postgresql://r3/db\n"
                "failover: follow\n"
                "consistency: eventual\n"
                "max_replica_lag: 64MB\n"
                "read_from_primary: on\n"
                "load_balance: weighted\n"
                "health_check_timeout: 1s\n"
                "failover_wait: 45s\n"
                "databases:\n"
                "  reports: {route: primary}\n"
                "  app: {route: auto}\n"
                "users:\n"
                "  etl: {route: primary}\n");
    assert_int_equal(c.n_replicas, 3);
    assert_int_equal(c.replica_weights[0], 1);
    assert_int_equal(c.replica_weights[1], 5);
    assert_int_equal(c.replica_weights[2], 1);
    assert_string_equal(c.replicas[1].host, "r2");
    assert_int_equal(c.failover, PGS_FAILOVER_FOLLOW);
    assert_int_equal(c.consistency, PGS_CONSISTENCY_EVENTUAL);
    assert_true(c.max_replica_lag_bytes == 64u << 20);
    assert_int_equal(c.max_replica_lag_ms, 0);
    assert_true(c.read_from_primary);
    assert_int_equal(c.load_balance, PGS_BALANCE_WEIGHTED);
    assert_int_equal(c.health_check_timeout_ms, 1000);
    assert_int_equal(c.failover_wait_ms, 45000);
    pgs_pool_settings ps;
    config_pool_settings(&c, "reports", "web", &ps);
    assert_true(ps.force_primary);
    config_pool_settings(&c, "app", "web", &ps);
    assert_false(ps.force_primary);
    config_pool_settings(&c, "app", "etl", &ps);
    assert_true(ps.force_primary);
    config_pool_settings(&c, "other", "web", &ps);
    assert_false(ps.force_primary);
    config_free(&c);

    yaml_bad("nodes:\n  replicas:\n    - {url: 'postgresql://r/db', weight: 0}\n",
             NAME ":3: nodes.replicas[0].weight: '0' is out of range (expected 1..1000)");
    yaml_bad("nodes:\n  replicas:\n    - {weight: 2}\n",
             NAME ":3: nodes.replicas[0]: has no url (write {url: postgresql://..., weight: N})");
    yaml_bad("nodes:\n  replicas:\n    - {url: 'postgresql://r/db', wieght: 2}\n",
             NAME ":3: nodes.replicas[0].wieght: unknown key (did you mean weight?)");
    yaml_bad("databases:\n  app: {route: replica}\n",
             NAME ":2: databases.app.route: 'replica' is not a route (expected auto or primary)");
    yaml_bad("failover: manual\n",
             NAME ":1: failover: 'manual' is not a failover mode (expected auto, follow or off)");
}

static void test_unknown_keys_are_rejected_with_a_hint(void **state)
{
    (void)state;
    yaml_bad("pool_size: 5\npoolsize: 3\n", NAME ":2: poolsize: unknown key (did you mean pool_size?)");
    yaml_bad("Pool_Size: 3\n", NAME ":1: Pool_Size: unknown key (did you mean pool_size?)");
    yaml_bad("DB_POOL_SIZE: 3\n",
             NAME ":1: DB_POOL_SIZE: unknown key: DB_POOL_SIZE is an environment variable; in "
                  "the config file write pool_size");
    yaml_bad("frobnicate: 1\n",
             NAME ":1: frobnicate: unknown key (docs/configuration.md lists the keys of the "
                  "config file)");
    yaml_bad("tls:\n  crt: x\n", NAME ":2: tls.crt: unknown key (did you mean cert?)");
    yaml_bad("tls:\n  passphrase: x\n",
             NAME ":2: tls.passphrase: unknown key (expected one of: cert, key, ca, mode, "
                  "min_protocol, ciphers)");
    yaml_bad("nodes:\n  standby: postgresql://h/db\n",
             NAME ":2: nodes.standby: unknown key (expected one of: primary, replicas)");
    yaml_bad("databases:\n  app:\n    size: 3\n",
             NAME ":3: databases.app.size: unknown key (expected one of: pool_size, "
                  "max_overflow, pool_mode, pool_timeout, max_db_connections, dbname, pinning, "
                  "max_pinned, route, cache)");
    yaml_bad("users:\n  web:\n    max_db_connections: 3\n",
             NAME ":3: users.web.max_db_connections: unknown key (expected one of: pool_size, "
                  "max_overflow, pool_mode, max_user_connections, pinning, max_pinned, route, "
                  "cache)");
    yaml_bad("auth:\n  hba:\n    - type: host\n      adress: all\n      method: trust\n",
             NAME ":4: auth.hba[0].adress: unknown key (did you mean address?)");
    yaml_bad("server_tls:\n  mode: require\n",
             NAME ":2: server_tls.mode: unknown key (expected one of: sslmode, ca, cert, key, "
                  "channel_binding)");
    yaml_bad("auth:\n  method: md5\n", NAME ":2: auth.method: unknown key (expected one of: "
                                       "type, file, query, user, hba, dbname, "
                                       "query_max_per_address, query_negative_ttl)");
}

/* ------------------------------------------------------------------------ */
/* listen                                                                   */
/* ------------------------------------------------------------------------ */

static void test_listen_single_address_and_list(void **state)
{
    (void)state;
    pgs_config c;
    yaml_ok(&c, "listen: 0.0.0.0:7000\n");
    assert_int_equal(c.n_listen, 1);
    assert_false(c.listen[0].is_unix);
    assert_string_equal(c.listen[0].host, "0.0.0.0");
    assert_int_equal(c.listen[0].port, 7000);
    assert_string_equal(c.listen_host, "0.0.0.0");
    assert_int_equal(c.listen_port, 7000);
    config_free(&c);

    yaml_ok(&c, "listen:\n"
                "  - unix:/run/pgscale/\n"
                "  - '[::1]:7001'\n"
                "  - 10.0.0.5:7002\n"
                "  - :7003\n"
                "  - localhost\n");
    assert_int_equal(c.n_listen, 5);
    assert_true(c.listen[0].is_unix);
    assert_string_equal(c.listen[0].host, "/run/pgscale");
    assert_int_equal(c.listen[0].port, 7001); /* the first TCP address's port */
    assert_string_equal(c.listen[1].host, "::1");
    assert_int_equal(c.listen[1].port, 7001);
    assert_string_equal(c.listen[2].host, "10.0.0.5");
    assert_string_equal(c.listen[3].host, "127.0.0.1");
    assert_int_equal(c.listen[3].port, 7003);
    assert_string_equal(c.listen[4].host, "localhost");
    assert_int_equal(c.listen[4].port, 6432);
    /* The single-address fields the listener uses today: the first TCP one. */
    assert_string_equal(c.listen_host, "::1");
    assert_int_equal(c.listen_port, 7001);
    described *d = describe_all(&c);
    assert_string_equal(described_value(d, "listen"),
                        "unix:/run/pgscale, [::1]:7001, 10.0.0.5:7002, 127.0.0.1:7003, "
                        "localhost:6432");
    assert_string_equal(described_value(d, "PGSCALE_LISTEN"), "[::1]:7001");
    free(d);
    config_free(&c);

    yaml_ok(&c, "listen: [unix:/tmp]\n");
    assert_int_equal(c.listen[0].port, 6432); /* no TCP address: PostgreSQL's habit, 6432 */
    assert_string_equal(c.listen_host, "127.0.0.1");
    config_free(&c);

    yaml_ok(&c, "listen: unix:/\n");
    assert_string_equal(c.listen[0].host, "/");
    config_free(&c);
}

static void test_listen_errors(void **state)
{
    (void)state;
    yaml_bad("listen: []\n", NAME ":1: listen: the list is empty; give at least one address");
    yaml_bad("listen:\n  - 127.0.0.1:6432\n  - bad:host:xx\n",
             NAME ":3: listen[1]: 'bad:host:xx' looks like an IPv6 address; write it in "
                  "brackets, e.g. [::1]:6432");
    yaml_bad("listen:\n  - 127.0.0.1:99999\n",
             NAME ":2: listen[0]: '127.0.0.1:99999' has an invalid port (expected host:port "
                  "with port 1..65535)");
    yaml_bad("listen:\n  - unix:run/pgscale\n",
             NAME ":2: listen[0]: 'unix:run/pgscale' is not an absolute directory (expected "
                  "unix:/path/to/dir, e.g. unix:/run/pgscale)");
    yaml_bad("listen:\n  - 127.0.0.1:6000\n  - unix:/run\n  - 127.0.0.1:6000\n",
             NAME ":4: listen[2]: the same address as line 2");
    yaml_bad("listen:\n  - unix:/run\n  - unix:/run/\n",
             NAME ":3: listen[1]: the same address as line 2");
    yaml_bad("listen: {host: x}\n",
             NAME ":1: listen: expected an address or a list of addresses, got a mapping");
    yaml_bad("listen:\n  - 6432\n  - [a]\n", NAME ":3: listen[1]: expected text, got a list");
    yaml_bad_has("listen: unix:/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
                 NAME ":1: listen: ", "the directory is longer than 92 bytes", NULL);
    char doc[4096] = "listen:\n";
    for (int i = 0; i < PGS_MAX_LISTEN + 1; i++)
        snprintf(doc + strlen(doc), sizeof(doc) - strlen(doc), "  - 127.0.0.1:%d\n", 7000 + i);
    yaml_bad(doc, NAME ":2: listen: more than 32 addresses");
}

/* ------------------------------------------------------------------------ */
/* nodes                                                                    */
/* ------------------------------------------------------------------------ */

static void test_nodes_primary_and_replicas(void **state)
{
    (void)state;
    pgs_config c;
    char err[512];
    config_defaults(&c);
    config_yaml_seen seen;
    const char *doc = "nodes:\n"
                      "  primary: postgresql+asyncpg://app:pw@db1:5433/shop?sslmode=require\n"
                      "  replicas:\n"
                      "    - postgresql://app:pw@db2/shop\n"
                      "    - postgres://app:pw@[::1]:5434/shop\n";
    assert_int_equal(config_yaml_parse(NAME, doc, strlen(doc), &c, &seen, err, sizeof(err)), 0);
    assert_true(seen.primary);
    assert_false(seen.sslmode);
    assert_string_equal(c.primary.host, "db1");
    assert_int_equal(c.primary.port, 5433);
    assert_string_equal(c.primary.password, "pw");
    assert_string_equal(config_url_param(&c.primary, "sslmode"), "require");
    assert_int_equal(c.n_replicas, 2);
    assert_string_equal(c.replicas[0].host, "db2");
    assert_string_equal(c.replicas[1].host, "::1");
    described *d = describe_all(&c);
    assert_string_equal(described_value(d, "DATABASE_URL"),
                        "postgresql://app:****@db1:5433/shop?sslmode=require");
    free(d);
    config_free(&c);

    yaml_ok(&c, "nodes:\n  replicas: []\n");
    assert_int_equal(c.n_replicas, 0);
    config_free(&c);
}

static void test_nodes_errors_name_the_entry_and_hide_passwords(void **state)
{
    (void)state;
    yaml_bad("nodes:\n  primary: mysql://u:Pw0rd@h/db\n",
             NAME ":2: nodes.primary: URL scheme 'mysql://' is not supported; use postgresql:// "
                  "or postgres:// (a driver suffix such as postgresql+asyncpg:// is fine)");
    yaml_bad("nodes:\n  replicas:\n    - postgresql://h1/db\n    - postgresql://u:Pw0rd@h2:0/db\n",
             NAME ":4: nodes.replicas[1]: invalid port in URL (expected digits, 1..65535)");
    yaml_bad("nodes:\n  replicas: postgresql://h1/db\n",
             NAME ":2: nodes.replicas: expected a list, got text");
    yaml_bad("nodes:\n  primary: [postgresql://h/db]\n",
             NAME ":2: nodes.primary: expected text, got a list");
    yaml_bad("nodes: postgresql://h/db\n",
             NAME ":1: nodes: expected a mapping of keys, got text");
    yaml_bad("nodes:\n", NAME ":1: nodes: has no value (expected a mapping of keys; write {} for "
                         "none)");
    yaml_bad("nodes:\n  primary: postgresql://h/db?sslmode=sometimes\n",
             NAME ":2: nodes.primary: query parameter 'sslmode': 'sometimes' is not an SSL mode "
                  "(expected disable, allow, prefer, require, verify-ca or verify-full)");
}

/* ------------------------------------------------------------------------ */
/* databases and users                                                      */
/* ------------------------------------------------------------------------ */

static void test_databases_every_key(void **state)
{
    (void)state;
    pgs_config c;
    yaml_ok(&c, "databases:\n"
                "  app:\n"
                "    pool_size: 5\n"
                "    max_overflow: 0\n"
                "    pool_mode: session\n"
                "    pool_timeout: 2.5s\n"
                "    max_db_connections: 40\n"
                "    dbname: app_production\n"
                "  reports: {max_overflow: -1}\n"
                "  \"odd name\": {}\n");
    assert_int_equal(c.n_databases, 3);
    const pgs_db_config *d = config_find_database(&c, "app");
    assert_non_null(d);
    assert_int_equal(d->pool_size, 5);
    assert_int_equal(d->max_overflow, 0);
    assert_int_equal(d->pool_mode, PGS_POOL_SESSION);
    assert_int_equal(d->pool_timeout_ms, 2500);
    assert_int_equal(d->max_db_connections, 40);
    assert_string_equal(d->dbname, "app_production");
    assert_int_equal(d->line, 2);
    d = config_find_database(&c, "reports");
    assert_int_equal(d->max_overflow, 10000);
    assert_int_equal(d->pool_size, -1); /* not set here */
    assert_int_equal(d->pool_mode, -1);
    assert_int_equal(d->pool_timeout_ms, 0);
    assert_int_equal(d->max_db_connections, 0);
    assert_null(d->dbname);
    assert_non_null(config_find_database(&c, "odd name"));
    assert_null(config_find_database(&c, "nope"));
    described *ds = describe_all(&c);
    assert_string_equal(described_value(ds, "databases.app"),
                        "dbname=app_production pool_size=5 max_overflow=0 pool_mode=session "
                        "pool_timeout=2500ms max_db_connections=40");
    assert_string_equal(described_value(ds, "databases.reports"), "max_overflow=10000");
    free(ds);
    config_free(&c);
}

static void test_users_every_key(void **state)
{
    (void)state;
    pgs_config c;
    yaml_ok(&c, "users:\n"
                "  web: {pool_size: 8, max_overflow: 2, pool_mode: transaction, "
                "max_user_connections: 100}\n"
                "  batch:\n"
                "    pool_mode: session\n");
    assert_int_equal(c.n_users, 2);
    const pgs_user_config *u = config_find_user(&c, "web");
    assert_int_equal(u->pool_size, 8);
    assert_int_equal(u->max_overflow, 2);
    assert_int_equal(u->pool_mode, PGS_POOL_TRANSACTION);
    assert_int_equal(u->max_user_connections, 100);
    u = config_find_user(&c, "batch");
    assert_int_equal(u->pool_mode, PGS_POOL_SESSION);
    assert_int_equal(u->pool_size, -1);
    assert_int_equal(u->line, 3);
    described *d = describe_all(&c);
    assert_string_equal(described_value(d, "users.web"),
                        "pool_size=8 max_overflow=2 pool_mode=transaction max_user_connections=100");
    free(d);
    config_free(&c);
}

static void test_databases_and_users_errors(void **state)
{
    (void)state;
    yaml_bad("databases:\n  app:\n    pool_size: 0\n",
             NAME ":3: databases.app.pool_size: '0' is out of range (expected 1..10000)");
    yaml_bad("databases:\n  app:\n    pool_mode: statement\n",
             NAME ":3: databases.app.pool_mode: 'statement' is not a pool mode (expected "
                  "transaction or session)");
    yaml_bad("databases:\n  app:\n    pool_timeout: 0\n",
             NAME ":3: databases.app.pool_timeout: '0' is not allowed: this timeout cannot be "
                  "turned off (expected a duration greater than 0)");
    yaml_bad("databases:\n  app:\n    max_db_connections: -1\n",
             NAME ":3: databases.app.max_db_connections: '-1' is out of range (expected "
                  "0..1000000)");
    yaml_bad("databases:\n  app:\n    max_overflow: \"3\"\n",
             NAME ":3: databases.app.max_overflow: expected an integer, got the quoted string "
                  "'3' (write numbers without quotes)");
    yaml_bad("databases:\n  app:\n    dbname: ''\n", NAME ":3: databases.app.dbname: is empty");
    yaml_bad("databases:\n  app:\n", NAME ":2: databases.app: has no value (expected a mapping "
                                     "of keys; write {} for none)");
    yaml_bad("databases:\n  pgscale: {}\n",
             NAME ":2: databases.pgscale: the database name 'pgscale' is the admin console's");
    yaml_bad("databases:\n  - app\n", NAME ":2: databases: expected a mapping of keys, got a list");
    yaml_bad("databases:\n  app: {}\n  app: {}\n",
             NAME ":3: databases.app: duplicate key (first at line 2)");
    yaml_bad_has("databases:\n  aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa: {}\n",
                 NAME ":2: databases.aaaaaaaaaa", "...: 'aaaaaaaaaaaaaaaaaaaa...' is longer than "
                 "63 bytes (PostgreSQL's limit for names)", NULL);
    yaml_bad("databases:\n  \"a\\tb\": {}\n", NAME ":2: databases.a?b: contains a control character");
    yaml_bad("users:\n  web:\n    max_user_connections: x\n",
             NAME ":3: users.web.max_user_connections: 'x' is not an integer (expected "
                  "0..1000000)");
    yaml_bad("users:\n  web:\n    pool_size: 10001\n",
             NAME ":3: users.web.pool_size: '10001' is out of range (expected 1..10000)");
    yaml_bad("users:\n  true: {}\n", NAME ":2: users.true: expected text, got the boolean true "
                                     "(quote it if you mean the text)");
}

static void test_pinning_settings_resolve_and_default_to_half_the_pool(void **state)
{
    (void)state;
    pgs_config c;
    yaml_ok(&c, "pool_size: 9\n"
                "databases:\n"
                "  app: {pinning: off}\n"
                "  big: {pool_size: 40, max_pinned: 3}\n"
                "users:\n"
                "  web: {pinning: on, max_pinned: 0}\n"
                "  one: {pool_size: 1}\n");
    pgs_pool_settings s;
    config_pool_settings(&c, "other", "someone", &s);
    assert_true(s.pinning);
    assert_int_equal(s.max_pinned, 4); /* 9 / 2, rounded down */
    config_pool_settings(&c, "app", "someone", &s);
    assert_false(s.pinning);
    config_pool_settings(&c, "app", "web", &s);
    assert_true(s.pinning);
    config_pool_settings(&c, "big", "someone", &s);
    assert_int_equal(s.max_pinned, 3);
    config_pool_settings(&c, "big", "web", &s);
    assert_int_equal(s.max_pinned, 20); /* the user's 0: half of its pool */
    config_pool_settings(&c, "other", "one", &s);
    assert_int_equal(s.max_pinned, 1); /* never 0 */
    config_free(&c);
}

static void test_pool_settings_resolve_global_then_database_then_user(void **state)
{
    (void)state;
    pgs_config c;
    yaml_ok(&c, "pool_size: 20\n"
                "max_overflow: 10\n"
                "pool_timeout: 30s\n"
                "databases:\n"
                "  app: {pool_size: 5, pool_mode: session, pool_timeout: 2s, "
                "max_db_connections: 50, dbname: app_prod}\n"
                "users:\n"
                "  web: {pool_size: 3, max_user_connections: 7}\n");
    pgs_pool_settings s;
    config_pool_settings(&c, "other", "someone", &s);
    assert_int_equal(s.pool_size, 20);
    assert_int_equal(s.max_overflow, 10);
    assert_int_equal(s.pool_mode, PGS_POOL_TRANSACTION);
    assert_int_equal(s.pool_timeout_ms, 30000);
    assert_int_equal(s.max_db_connections, 0);
    assert_int_equal(s.max_user_connections, 0);
    assert_string_equal(s.server_dbname, "other");

    config_pool_settings(&c, "app", "someone", &s);
    assert_int_equal(s.pool_size, 5);
    assert_int_equal(s.max_overflow, 10);
    assert_int_equal(s.pool_mode, PGS_POOL_SESSION);
    assert_int_equal(s.pool_timeout_ms, 2000);
    assert_int_equal(s.max_db_connections, 50);
    assert_string_equal(s.server_dbname, "app_prod");

    config_pool_settings(&c, "app", "web", &s);
    assert_int_equal(s.pool_size, 3); /* the user's wins over the database's */
    assert_int_equal(s.pool_mode, PGS_POOL_SESSION);
    assert_int_equal(s.max_user_connections, 7);
    config_free(&c);
}

/* ------------------------------------------------------------------------ */
/* auth                                                                     */
/* ------------------------------------------------------------------------ */

static void test_auth_defaults(void **state)
{
    (void)state;
    pgs_config c;
    yaml_ok(&c, "pool_size: 3\n");
    /* SCRAM by default, and not "set": the zero-config rules apply */
    assert_int_equal(c.auth.type, PGS_AUTH_SCRAM);
    assert_false(c.auth.type_set);
    assert_null(c.auth.file);
    assert_null(c.auth.query);
    assert_null(c.auth.user);
    assert_int_equal(c.auth.n_hba, 0);
    described *d = describe_all(&c);
    assert_string_equal(described_value(d, "auth.type"), "scram-sha-256");
    assert_string_equal(described_value(d, "auth.query"), PGS_DEFAULT_AUTH_QUERY);
    assert_string_equal(described_value(d, "auth.dbname"), "postgres");
    assert_int_equal(c.auth.query_max_per_address, 4);
    assert_int_equal(c.auth.query_negative_ttl_ms, 30000);
    assert_string_equal(described_value(d, "auth.query_max_per_address"), "4");
    assert_string_equal(described_value(d, "auth.query_negative_ttl"), "30s");
    /* the default query names pg_catalog's table, never an unqualified one */
    assert_non_null(strstr(PGS_DEFAULT_AUTH_QUERY, "FROM pg_catalog.pg_shadow "));
    assert_string_equal(described_value(d, "auth.hba"), "");
    free(d);
    config_free(&c);

    /* With an auth user (auth query) and no type, the default is SCRAM. */
    yaml_ok(&c, "auth:\n  user: pgscale_auth\n");
    assert_int_equal(c.auth.type, PGS_AUTH_SCRAM);
    assert_string_equal(c.auth.user, "pgscale_auth");
    assert_null(c.auth.query);
    assert_null(c.auth.dbname);
    config_free(&c);

    yaml_ok(&c, "auth:\n  user: pgscale_auth\n  dbname: authdb\n");
    assert_string_equal(c.auth.dbname, "authdb");
    config_free(&c);
}

static void test_auth_every_key(void **state)
{
    (void)state;
    tmp_write("users.txt", "\"app\" \"SCRAM-SHA-256$4096:...\"\n");
    char doc[1024];
    snprintf(doc, sizeof(doc),
             "auth:\n"
             "  type: md5\n"
             "  file: %s\n"
             "  user: pgscale_auth\n"
             "  query: |\n"
             "    SELECT usename, passwd\n"
             "    FROM pgscale.user_lookup($1)\n"
             "  hba:\n"
             "    - {type: local, database: all, user: all, method: trust}\n"
             "    - {type: host, database: app, user: web, address: 10.0.0.0/8, method: md5}\n"
             "    - {type: hostnossl, database: all, user: all, address: 192.168.1.7, "
             "method: scram-sha-256}\n"
             "    - {type: host, address: 'fd00::/8', method: reject}\n"
             "    - {type: host, address: all, method: scram-sha-256}\n"
             "  query_max_per_address: 0\n"
             "  query_negative_ttl: 500ms\n",
             tmp_path("users.txt"));
    pgs_config c;
    yaml_ok(&c, doc);
    pgs_auth_config *a = &c.auth;
    assert_int_equal(a->query_max_per_address, 0);
    assert_int_equal(a->query_negative_ttl_ms, 500);
    assert_int_equal(a->type, PGS_AUTH_MD5);
    assert_string_equal(a->file, tmp_path("users.txt"));
    assert_string_equal(a->user, "pgscale_auth");
    assert_string_equal(a->query, "SELECT usename, passwd\nFROM pgscale.user_lookup($1)\n");
    assert_int_equal(a->n_hba, 5);
    assert_int_equal(a->hba[0].type, PGS_HBA_LOCAL);
    assert_null(a->hba[0].database);
    assert_null(a->hba[0].user);
    assert_int_equal(a->hba[0].method, PGS_AUTH_TRUST);
    assert_int_equal(a->hba[0].line, 9);
    assert_int_equal(a->hba[1].type, PGS_HBA_HOST);
    assert_string_equal(a->hba[1].database, "app");
    assert_string_equal(a->hba[1].user, "web");
    assert_int_equal(a->hba[1].family, AF_INET);
    assert_int_equal(a->hba[1].prefix, 8);
    assert_int_equal(a->hba[1].addr[0], 10);
    assert_int_equal(a->hba[1].method, PGS_AUTH_MD5);
    assert_int_equal(a->hba[2].type, PGS_HBA_HOSTNOSSL);
    assert_int_equal(a->hba[2].prefix, 32);
    assert_int_equal(a->hba[2].method, PGS_AUTH_SCRAM);
    assert_int_equal(a->hba[3].family, AF_INET6);
    assert_int_equal(a->hba[3].prefix, 8);
    assert_int_equal(a->hba[3].addr[0], 0xfd);
    assert_int_equal(a->hba[3].method, PGS_AUTH_REJECT);
    assert_null(a->hba[3].database); /* database and user default to all */
    assert_int_equal(a->hba[4].family, AF_UNSPEC);
    described *d = describe_all(&c);
    assert_string_equal(described_value(d, "auth.type"), "md5");
    assert_string_equal(described_value(d, "auth.hba[0]"), "local all all trust");
    assert_string_equal(described_value(d, "auth.hba[1]"), "host app web 10.0.0.0/8 md5");
    assert_string_equal(described_value(d, "auth.hba[2]"),
                        "hostnossl all all 192.168.1.7/32 scram-sha-256");
    assert_string_equal(described_value(d, "auth.hba[3]"), "host all all fd00::/8 reject");
    assert_string_equal(described_value(d, "auth.hba[4]"), "host all all all scram-sha-256");
    free(d);
    config_free(&c);

    /* A users file alone makes SCRAM the default. */
    snprintf(doc, sizeof(doc), "auth:\n  file: %s\n", tmp_path("users.txt"));
    yaml_ok(&c, doc);
    assert_int_equal(c.auth.type, PGS_AUTH_SCRAM);
    config_free(&c);
}

static void test_auth_errors(void **state)
{
    (void)state;
    yaml_bad("auth:\n  query_max_per_address: -1\n",
             NAME ":2: auth.query_max_per_address: '-1' is out of range (expected 0..1000000)");
    yaml_bad("auth:\n  query_negative_ttl: soon\n",
             NAME ":2: auth.query_negative_ttl: 'soon' is not a duration (expected seconds, or a "
                  "number with a unit ms, s, min or h, e.g. 500ms, 2.5s, 1min; 0 turns it off)");
    yaml_bad("auth:\n  type: password\n",
             NAME ":2: auth.type: 'password' is not an auth type (expected trust, md5 or "
                  "scram-sha-256)");
    yaml_bad("auth:\n  type: reject\n",
             NAME ":2: auth.type: 'reject' is not an auth type (expected trust, md5 or "
                  "scram-sha-256)");
    yaml_bad("auth:\n  file: /nonexistent/pgscale/users.txt\n",
             NAME ":2: auth.file: /nonexistent/pgscale/users.txt: No such file or directory");
    yaml_bad("auth:\n  file: /tmp\n", NAME ":2: auth.file: /tmp: is a directory, not a file");
    yaml_bad("auth:\n  file: /dev/null\n", NAME ":2: auth.file: /dev/null: is not a regular file");
    yaml_bad("auth:\n  user: a\n  query: SELECT 1\n",
             NAME ":3: auth.query: the query must take the user name as $1");
    yaml_bad("auth:\n  query: SELECT usename, passwd FROM pg_shadow WHERE usename = $1\n",
             NAME ":2: auth.query: needs auth.user (the user that runs the query)");
    yaml_bad("auth:\n  dbname: postgres\n",
             NAME ":2: auth.dbname: needs auth.user (the user that runs the query)");
    /* a database named like the admin console is anyone's to create */
    yaml_bad("auth:\n  user: a\n  dbname: pgscale\n",
             NAME ":3: auth.dbname: 'pgscale' is the admin console's name; name a database "
                  "that only a superuser owns (default: postgres)");
    yaml_bad("auth:\n  hba: {type: host}\n", NAME ":2: auth.hba: expected a list, got a mapping");
    yaml_bad("auth:\n  hba:\n    - host all all\n",
             NAME ":3: auth.hba[0]: expected a mapping of keys, got text");
    yaml_bad("auth:\n  hba:\n    - method: trust\n",
             NAME ":3: auth.hba[0]: the rule has no type (host, hostssl, hostnossl or local)");
    yaml_bad("auth:\n  hba:\n    - type: host\n      address: all\n",
             NAME ":3: auth.hba[0]: the rule has no method (trust, md5, scram-sha-256 or "
                  "reject)");
    yaml_bad("auth:\n  hba:\n    - {type: local, method: trust}\n    - type: host\n      method: trust\n",
             NAME ":4: auth.hba[1]: host rules need an address (CIDR such as 10.0.0.0/8, or all)");
    yaml_bad("auth:\n  hba:\n    - type: local\n      address: 127.0.0.1/32\n      method: trust\n",
             NAME ":4: auth.hba[0].address: local rules (Unix sockets) take no address");
    yaml_bad("auth:\n  hba:\n    - type: hots\n",
             NAME ":3: auth.hba[0].type: 'hots' is not a rule type (expected host, hostssl, "
                  "hostnossl or local)");
    yaml_bad("auth:\n  hba:\n    - {type: host, address: all, method: password}\n",
             NAME ":3: auth.hba[0].method: 'password' is not a method (expected trust, md5, "
                  "scram-sha-256 or reject)");
    yaml_bad("auth:\n  hba:\n    - {type: host, address: 10.0.0.1/8, method: trust}\n",
             NAME ":3: auth.hba[0].address: '10.0.0.1/8' has bits set beyond the /8 prefix "
                  "(write the network address, e.g. the first address of the range)");
    yaml_bad("auth:\n  hba:\n    - {type: host, address: 10.0.0.0/33, method: trust}\n",
             NAME ":3: auth.hba[0].address: '10.0.0.0/33' has a bad prefix length (expected "
                  "/0../32)");
    yaml_bad("auth:\n  hba:\n    - {type: host, address: '::/x', method: trust}\n",
             NAME ":3: auth.hba[0].address: '::/x' has a bad prefix length (expected /0../128)");
    yaml_bad("auth:\n  hba:\n    - {type: host, address: db.internal, method: trust}\n",
             NAME ":3: auth.hba[0].address: 'db.internal' is not an address (expected CIDR such "
                  "as 10.0.0.0/8 or fd00::/8, a single address, or all)");
    yaml_bad("auth:\n  hba:\n    - {type: host, address: all, user: '', method: trust}\n",
             NAME ":3: auth.hba[0].user: is empty");
    yaml_bad("auth:\n"
             "  hba:\n"
             "    - type: host\n"
             "      address: all\n"
             "      method: trust\n"
             "    - type: hostssl\n"
             "      address: all\n"
             "      method: trust\n",
             NAME ":6: auth.hba[1].type: hostssl rules need TLS for clients (set tls.mode, "
                  "tls.cert and tls.key)");
}

/* ------------------------------------------------------------------------ */
/* tls and server_tls                                                       */
/* ------------------------------------------------------------------------ */

/* A config file in the scratch directory that names files relative to it. */
static int parse_in_tmp(pgs_config *cfg, const char *text, char *err, size_t errlen)
{
    const char *path = tmp_write("pgscale.yaml", text);
    config_defaults(cfg);
    return config_yaml_load(path, cfg, NULL, err, errlen);
}

static void test_tls_every_key_with_relative_paths(void **state)
{
    (void)state;
    tmp_write("server.crt", "cert\n");
    tmp_write("server.key", "key\n");
    tmp_write("ca.crt", "ca\n");
    pgs_config c;
    char err[1024];
    int rc = parse_in_tmp(&c,
                          "tls:\n"
                          "  mode: verify-full\n"
                          "  cert: server.crt\n"
                          "  key: ./server.key\n"
                          "  ca: ca.crt\n"
                          "  min_protocol: TLSv1.3\n"
                          "  ciphers: HIGH:!aNULL\n",
                          err, sizeof(err));
    if (rc) fail_msg("%s", err);
    char expect[300];
    assert_int_equal(c.tls.mode, PGS_TLS_VERIFY_FULL);
    snprintf(expect, sizeof(expect), "%s/server.crt", tmp_dir);
    assert_string_equal(c.tls.cert, expect);
    snprintf(expect, sizeof(expect), "%s/./server.key", tmp_dir);
    assert_string_equal(c.tls.key, expect);
    snprintf(expect, sizeof(expect), "%s/ca.crt", tmp_dir);
    assert_string_equal(c.tls.ca, expect);
    assert_int_equal(c.tls.min_protocol, 0x0304);
    assert_string_equal(c.tls.ciphers, "HIGH:!aNULL");
    described *d = describe_all(&c);
    assert_string_equal(described_value(d, "tls.mode"), "verify-full");
    assert_string_equal(described_value(d, "tls.min_protocol"), "TLSv1.3");
    free(d);
    config_free(&c);

    /* Every mode. */
    const char *modes[] = {"disable", "allow", "require", "verify-ca", "verify-full"};
    for (int i = 0; i < 5; i++) {
        char doc[256];
        snprintf(doc, sizeof(doc), "tls: {mode: %s, cert: server.crt, key: server.key, ca: ca.crt}\n",
                 modes[i]);
        if (parse_in_tmp(&c, doc, err, sizeof(err)) != 0) fail_msg("%s", err);
        assert_int_equal(c.tls.mode, i);
        config_free(&c);
    }
    /* Defaults. */
    config_defaults(&c);
    assert_int_equal(c.tls.mode, PGS_TLS_DISABLE);
    assert_int_equal(c.tls.min_protocol, 0x0303);
}

static void test_tls_errors(void **state)
{
    (void)state;
    tmp_write("server.crt", "cert\n");
    tmp_write("server.key", "key\n");
    pgs_config c;
    char err[1024], expect[1024];

    assert_true(parse_in_tmp(&c, "tls:\n  cert: missing.crt\n", err, sizeof(err)) < 0);
    snprintf(expect, sizeof(expect), "%s:2: tls.cert: %s/missing.crt: No such file or directory",
             tmp_path("pgscale.yaml"), tmp_dir);
    assert_string_equal(err, expect);
    config_free(&c);

    assert_true(parse_in_tmp(&c, "tls:\n  cert: server.crt\n", err, sizeof(err)) < 0);
    snprintf(expect, sizeof(expect), "%s:2: tls.cert: needs tls.key as well",
             tmp_path("pgscale.yaml"));
    assert_string_equal(err, expect);
    config_free(&c);

    assert_true(parse_in_tmp(&c, "tls:\n  mode: require\n\n  key: server.key\n", err,
                             sizeof(err)) < 0);
    snprintf(expect, sizeof(expect), "%s:4: tls.key: needs tls.cert as well",
             tmp_path("pgscale.yaml"));
    assert_string_equal(err, expect);
    config_free(&c);

    assert_true(parse_in_tmp(&c, "tls:\n  cert: server.crt\n  key: server.key\n  mode: verify-ca\n",
                             err, sizeof(err)) < 0);
    snprintf(expect, sizeof(expect),
             "%s:4: tls.mode: 'verify-ca' needs tls.ca (the CA that signs client certificates)",
             tmp_path("pgscale.yaml"));
    assert_string_equal(err, expect);
    config_free(&c);

    if (getuid() != 0) { /* root reads anything */
        tmp_write("secret.key", "k\n");
        chmod(tmp_path("secret.key"), 0);
        assert_true(parse_in_tmp(&c, "tls:\n  cert: server.crt\n  key: secret.key\n", err,
                                 sizeof(err)) < 0);
        snprintf(expect, sizeof(expect), "%s:3: tls.key: %s/secret.key: cannot read: Permission denied",
                 tmp_path("pgscale.yaml"), tmp_dir);
        assert_string_equal(err, expect);
        config_free(&c);
    }

    yaml_bad("tls:\n  mode: require\n", NAME ":2: tls.mode: 'require' needs tls.cert and tls.key");
    yaml_bad("tls:\n  mode: on\n",
             NAME ":2: tls.mode: 'on' is not a TLS mode (expected disable, allow, require, "
                  "verify-ca or verify-full)");
    yaml_bad("tls:\n  min_protocol: TLSv1.1\n",
             NAME ":2: tls.min_protocol: 'TLSv1.1' is not a TLS version (expected TLSv1.2 or "
                  "TLSv1.3)");
    yaml_bad("tls:\n  ciphers: ''\n", NAME ":2: tls.ciphers: is empty");
    yaml_bad("tls: true\n", NAME ":1: tls: expected a mapping of keys, got text");
}

static void test_server_tls_every_key_and_errors(void **state)
{
    (void)state;
    tmp_write("root.crt", "ca\n");
    tmp_write("client.crt", "c\n");
    tmp_write("client.key", "k\n");
    pgs_config c;
    char err[1024], expect[1024];
    const char *modes[] = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"};
    for (int i = 0; i < 6; i++) {
        char doc[256];
        snprintf(doc, sizeof(doc),
                 "server_tls:\n  sslmode: %s\n  ca: root.crt\n  cert: client.crt\n  key: "
                 "client.key\n",
                 modes[i]);
        if (parse_in_tmp(&c, doc, err, sizeof(err)) != 0) fail_msg("%s", err);
        assert_int_equal(c.server_tls.sslmode, i);
        snprintf(expect, sizeof(expect), "%s/client.key", tmp_dir);
        assert_string_equal(c.server_tls.key, expect);
        described *d = describe_all(&c);
        assert_string_equal(described_value(d, "server_tls.sslmode"), modes[i]);
        free(d);
        config_free(&c);
    }
    config_defaults(&c);
    assert_int_equal(c.server_tls.sslmode, PGS_SSLMODE_PREFER);

    yaml_bad("server_tls:\n  sslmode: verify-full\n",
             NAME ":2: server_tls.sslmode: 'verify-full' needs server_tls.ca (the CA that signs "
                  "the servers' certificates)");
    yaml_bad("server_tls:\n  sslmode: required\n",
             NAME ":2: server_tls.sslmode: 'required' is not an SSL mode (expected disable, "
                  "allow, prefer, require, verify-ca or verify-full)");
    assert_true(parse_in_tmp(&c, "server_tls:\n  cert: client.crt\n", err, sizeof(err)) < 0);
    snprintf(expect, sizeof(expect), "%s:2: server_tls.cert: needs server_tls.key as well",
             tmp_path("pgscale.yaml"));
    assert_string_equal(err, expect);
    config_free(&c);
    assert_true(parse_in_tmp(&c, "server_tls:\n  key: client.key\n", err, sizeof(err)) < 0);
    snprintf(expect, sizeof(expect), "%s:2: server_tls.key: needs server_tls.cert as well",
             tmp_path("pgscale.yaml"));
    assert_string_equal(err, expect);
    config_free(&c);
}

/* ------------------------------------------------------------------------ */
/* admin_users, stats_users, max_startup_packet_size                        */
/* ------------------------------------------------------------------------ */

static void test_admin_and_stats_users(void **state)
{
    (void)state;
    pgs_config c;
    yaml_ok(&c, "admin_users: [postgres, ops]\nstats_users:\n  - monitor\n");
    assert_int_equal(c.n_admin_users, 2);
    assert_string_equal(c.admin_users[0], "postgres");
    assert_string_equal(c.admin_users[1], "ops");
    assert_int_equal(c.n_stats_users, 1);
    assert_string_equal(c.stats_users[0], "monitor");
    described *d = describe_all(&c);
    assert_string_equal(described_value(d, "admin_users"), "postgres, ops");
    assert_string_equal(described_value(d, "stats_users"), "monitor");
    free(d);
    config_free(&c);
    yaml_ok(&c, "admin_users: []\n");
    assert_int_equal(c.n_admin_users, 0);
    config_free(&c);

    yaml_bad("admin_users: postgres\n", NAME ":1: admin_users: expected a list, got text");
    yaml_bad("stats_users:\n  - ok\n  - [nested]\n",
             NAME ":3: stats_users[1]: expected text, got a list");
    yaml_bad("stats_users:\n  - ''\n", NAME ":2: stats_users[0]: is empty");
}

static void test_max_startup_packet_size(void **state)
{
    (void)state;
    pgs_config c;
    config_defaults(&c);
    assert_int_equal(c.max_startup_packet_size, 10000);
    yaml_ok(&c, "max_startup_packet_size: 64kB\n");
    assert_int_equal(c.max_startup_packet_size, 65536);
    described *d = describe_all(&c);
    assert_string_equal(described_value(d, "max_startup_packet_size"), "64kB");
    free(d);
    config_free(&c);
    yaml_ok(&c, "max_startup_packet_size: 1MB\n");
    assert_int_equal(c.max_startup_packet_size, 1048576);
    config_free(&c);
    yaml_ok(&c, "max_startup_packet_size: 1024\n");
    config_free(&c);
    yaml_bad("max_startup_packet_size: 1023\n",
             NAME ":1: max_startup_packet_size: '1023' is out of range (expected 1kB..1MB, i.e. "
                  "1024..1048576 bytes)");
    yaml_bad("max_startup_packet_size: 1025kB\n",
             NAME ":1: max_startup_packet_size: '1025kB' is out of range (expected 1kB..1MB, "
                  "i.e. 1024..1048576 bytes)");
    yaml_bad("max_startup_packet_size: big\n",
             NAME ":1: max_startup_packet_size: 'big' is not a size (expected bytes, optionally "
                  "with kB, MB or GB, e.g. 64MB; range 1kB..1MB)");
}

/* ------------------------------------------------------------------------ */
/* YAML-level errors and limits                                             */
/* ------------------------------------------------------------------------ */

static void test_syntax_errors_carry_the_line(void **state)
{
    (void)state;
    yaml_bad("pool_size: 5\nworkers: [1\n",
             NAME ":3: invalid YAML: did not find expected ',' or ']' while parsing a flow "
                  "sequence started at line 2");
    yaml_bad("pool_size: 5\n  workers: 2\n",
             NAME ":2: invalid YAML: mapping values are not allowed in this context");
    yaml_bad("a: 'unterminated\n", NAME ":2: invalid YAML: found unexpected end of stream while "
                                  "scanning a quoted scalar started at line 1");
    yaml_bad_has("pool_size: 5\n\tworkers: 2\n", NAME ":2: invalid YAML: ", "tab", NULL);
    yaml_bad_has("pool_size: 5\nlog_level: \xff\xfe\n", NAME ":2: invalid YAML: ",
                 "(the file must be UTF-8 text)", NULL);
}

static void test_duplicate_keys_are_rejected_at_every_level(void **state)
{
    (void)state;
    yaml_bad("pool_size: 1\nworkers: 2\npool_size: 3\n",
             NAME ":3: pool_size: duplicate key (first at line 1)");
    yaml_bad("tls:\n  mode: disable\n  mode: disable\n",
             NAME ":3: tls.mode: duplicate key (first at line 2)");
    yaml_bad("auth:\n  hba:\n    - {type: local, method: trust, type: host}\n",
             NAME ":3: auth.hba[0].type: duplicate key (first at line 3)");
}

static void test_anchors_aliases_and_tags_are_refused(void **state)
{
    (void)state;
    yaml_bad("pool_size: &n 5\nmax_overflow: *n\n",
             NAME ":1: pool_size: anchors (&n) are not supported: write each value out "
                  "(anchors and aliases are refused rather than expanded)");
    yaml_bad("databases:\n  app: &d {pool_size: 2}\n",
             NAME ":2: databases.app: anchors (&d) are not supported: write each value out "
                  "(anchors and aliases are refused rather than expanded)");
    yaml_bad("admin_users: &l [a]\n",
             NAME ":1: admin_users: anchors (&l) are not supported: write each value out "
                  "(anchors and aliases are refused rather than expanded)");
    /* An alias without its anchor is a syntax error in libyaml; the
     * refusal above means the alias of a "billion laughs" document is
     * never reached, let alone expanded. */
    yaml_bad("a: &a [\"lol\",\"lol\"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
             "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n",
             NAME ":1: a: anchors (&a) are not supported: write each value out (anchors and "
                  "aliases are refused rather than expanded)");
    yaml_bad("pool_size: !!int 5\n",
             NAME ":1: pool_size: tags (!!int) are not supported; quote a value to make it text");
    yaml_bad("tls: !custom {}\n",
             NAME ":1: tls: tags (!custom) are not supported; quote a value to make it text");
    yaml_bad("? [a, b]\n: 1\n", NAME ":1: a key must be plain text, not a list or mapping");
    yaml_bad("pool_size: 1\n---\npool_size: 2\n",
             NAME ":2: a second YAML document ('---') in the file; put every setting in one "
                  "document");
    yaml_bad("log_level: \"in\\0fo\"\n", NAME ":1: log_level: contains a NUL byte");
    yaml_bad("auth:\n  user: \"a\\nb\"\n", NAME ":2: auth.user: contains a control character");
}

static void test_refuses_documents_over_one_mebibyte(void **state)
{
    (void)state;
    size_t n = CONFIG_YAML_MAX_BYTES + 1;
    char *big = malloc(n + 1);
    memset(big, '#', n);
    big[n] = '\0';
    pgs_config c;
    char err[256];
    config_defaults(&c);
    assert_true(config_yaml_parse(NAME, big, n, &c, NULL, err, sizeof(err)) < 0);
    assert_string_equal(err, NAME ":1: the file is larger than 1 MiB (1048577 bytes)");
    /* Exactly 1 MiB of comment is fine. */
    assert_int_equal(config_yaml_parse(NAME, big, n - 1, &c, NULL, err, sizeof(err)), 0);
    config_free(&c);

    /* And through the loader, without reading the whole file. */
    const char *path = tmp_write("big.yaml", "");
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 3; i++) fwrite(big, 1, n, f);
    fclose(f);
    config_defaults(&c);
    assert_true(config_yaml_load(path, &c, NULL, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "the file is larger than 1 MiB (1048577 bytes)"));
    free(big);
}

static void test_nesting_limit(void **state)
{
    (void)state;
    char doc[256];
    /* 16 levels: the schema, not the limit, rejects it. */
    snprintf(doc, sizeof(doc), "x: %.15s1%.15s\n", "[[[[[[[[[[[[[[[[", "]]]]]]]]]]]]]]]]");
    yaml_bad(doc, NAME ":1: x: unknown key (docs/configuration.md lists the keys of the config "
                  "file)");
    /* 17 levels. */
    snprintf(doc, sizeof(doc), "x: %.16s1%.16s\n", "[[[[[[[[[[[[[[[[", "]]]]]]]]]]]]]]]]");
    yaml_bad(doc, NAME ":1: x[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: nested deeper than 16 "
                  "levels");
    /* A deep block document stops at the limit too (and at the right line). */
    char deep[2048] = "";
    for (int i = 0; i < 40; i++)
        snprintf(deep + strlen(deep), sizeof(deep) - strlen(deep), "%*sk%d:\n", i, "", i);
    yaml_bad(deep, NAME ":17: k0.k1.k2.k3.k4.k5.k6.k7.k8.k9.k10.k11.k12.k13.k14.k15: nested "
                   "deeper than 16 levels");
    /* A flood of brackets is cut at the limit, not parsed to the end. */
    char *flood = malloc(500001);
    memset(flood, '[', 500000);
    flood[500000] = '\0';
    yaml_bad_has(flood, "nested deeper than 16 levels", NULL);
    free(flood);
}

static void test_item_limits(void **state)
{
    (void)state;
    /* 10000 names are fine, 10001 are not. */
    size_t cap = 16 + 10001 * 12;
    char *doc = malloc(cap);
    strcpy(doc, "admin_users:\n");
    for (int i = 0; i < 10000; i++) snprintf(doc + strlen(doc), cap - strlen(doc), "- u%d\n", i);
    pgs_config c;
    yaml_ok(&c, doc);
    assert_int_equal(c.n_admin_users, 10000);
    config_free(&c);
    snprintf(doc + strlen(doc), cap - strlen(doc), "- u10000\n");
    yaml_bad(doc, NAME ":10002: admin_users: more than 10000 items in one list");

    /* Flow lists too. */
    strcpy(doc, "stats_users: [");
    for (int i = 0; i < 10001; i++) strcat(doc, "a,");
    strcat(doc, "a]\n");
    yaml_bad_has(doc, NAME ":1: stats_users: more than 10000 items in one list", NULL);
    free(doc);

    /* Mappings: 10001 databases. */
    cap = 32 + 10001 * 24;
    doc = malloc(cap);
    strcpy(doc, "databases:\n");
    for (int i = 0; i <= 10000; i++)
        snprintf(doc + strlen(doc), cap - strlen(doc), "  d%d: {}\n", i);
    yaml_bad(doc, NAME ":10002: databases: more than 10000 entries in one mapping");
    free(doc);
}

/* ------------------------------------------------------------------------ */
/* Loading with the .env file and the environment                           */
/* ------------------------------------------------------------------------ */

static const char *const env_vars[] = {
    "DATABASE_URL", "READ_REPLICA_URLS", "DB_POOL_SIZE", "DB_MAX_OVERFLOW", "DB_POOL_TIMEOUT",
    "PGSCALE_LISTEN", "PGSCALE_POOL_MODE", "PGSCALE_WORKERS", "REDIS_URL", "PGSCALE_LOG_LEVEL",
    "PGSCALE_SERVER_CONNECT_TIMEOUT", "PGSCALE_SERVER_LOGIN_TIMEOUT", "PGSCALE_SERVER_LIFETIME",
    "PGSCALE_SERVER_IDLE_TIMEOUT", "PGSCALE_SERVER_CHECK_DELAY", "PGSCALE_OVERFLOW_IDLE_TIMEOUT",
    "PGSCALE_UNUSED_POOL_TIMEOUT",
    "PGSCALE_IDLE_TRANSACTION_TIMEOUT", "PGSCALE_CLIENT_IDLE_TIMEOUT", "PGSCALE_QUERY_TIMEOUT",
    "PGSCALE_CLIENT_LOGIN_TIMEOUT", "PGSCALE_SHUTDOWN_TIMEOUT", "PGSCALE_MAX_CLIENT_CONN",
    "PGSCALE_MAX_PREPARED_STATEMENTS", "PGSCALE_MAX_MESSAGE_SIZE", "PGSCALE_CONFIG",
    "PGSCALE_AUTH_TYPE"};

static int clear_env(void **state)
{
    for (size_t i = 0; i < PGS_ARRAY_LEN(env_vars); i++) unsetenv(env_vars[i]);
    return tmp_cleanup(state);
}

static void test_precedence_file_then_envfile_then_environment(void **state)
{
    (void)state;
    const char *yaml = tmp_write("pgscale.yaml", "nodes:\n"
                                                 "  primary: postgresql://fromyaml/db\n"
                                                 "pool_size: 5\n"
                                                 "max_overflow: 6\n"
                                                 "pool_timeout: 7s\n"
                                                 "workers: 2\n");
    const char *env = tmp_write("app.env", "DB_MAX_OVERFLOW=16\nDB_POOL_TIMEOUT=17\n");
    setenv("DB_POOL_TIMEOUT", "27", 1);
    pgs_config c;
    char err[1024];
    if (config_load_files(&c, yaml, env, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_string_equal(c.primary.host, "fromyaml");
    assert_int_equal(c.pool_size, 5);            /* file */
    assert_int_equal(c.max_overflow, 16);        /* .env over file */
    assert_int_equal(c.pool_timeout_ms, 27000);  /* environment over both */
    assert_int_equal(c.workers, 2);
    assert_string_equal(c.config_file, yaml);
    config_free(&c);

    /* DATABASE_URL from the environment wins over nodes.primary. */
    setenv("DATABASE_URL", "postgresql://fromenv/db", 1);
    if (config_load_files(&c, yaml, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_string_equal(c.primary.host, "fromenv");
    config_free(&c);
}

static void test_environment_listen_replaces_the_file_list(void **state)
{
    (void)state;
    const char *yaml = tmp_write("pgscale.yaml", "nodes: {primary: 'postgresql://h/db'}\n"
                                                 "listen: [10.1.1.1:7000, unix:/run/pgscale]\n");
    setenv("PGSCALE_LISTEN", ":7100", 1);
    pgs_config c;
    char err[1024];
    if (config_load_files(&c, yaml, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(c.n_listen, 1);
    assert_string_equal(c.listen[0].host, "10.1.1.1"); /* ":port" keeps the file's host */
    assert_int_equal(c.listen[0].port, 7100);
    assert_string_equal(c.listen_host, "10.1.1.1");
    assert_int_equal(c.listen_port, 7100);
    config_free(&c);
}

static void test_load_errors_name_their_source(void **state)
{
    (void)state;
    const char *yaml = tmp_write("pgscale.yaml", "# pgscale\npool_size: 5\n\npool_mode: statment\n");
    pgs_config c;
    char err[1024], expect[1024];
    setenv("DATABASE_URL", "postgresql://h/db", 1);
    assert_true(config_load_files(&c, yaml, NULL, err, sizeof(err)) < 0);
    snprintf(expect, sizeof(expect),
             "%s:4: pool_mode: 'statment' is not a pool mode (expected transaction or session)",
             yaml);
    assert_string_equal(err, expect);

    /* A good file and a bad .env value: the .env line. */
    yaml = tmp_write("pgscale.yaml", "pool_size: 5\n");
    const char *env = tmp_write("app.env", "DB_POOL_SIZE=0\n");
    assert_true(config_load_files(&c, yaml, env, err, sizeof(err)) < 0);
    snprintf(expect, sizeof(expect), "%s:1: DB_POOL_SIZE: '0' is out of range (expected 1..10000)",
             env);
    assert_string_equal(err, expect);

    /* The file cannot be opened. */
    assert_true(config_load_files(&c, "/nonexistent/pgscale.yaml", NULL, err, sizeof(err)) < 0);
    assert_string_equal(err, "/nonexistent/pgscale.yaml: cannot open: No such file or directory");
    assert_true(config_load_files(&c, "/tmp", NULL, err, sizeof(err)) < 0);
    assert_string_equal(err, "/tmp: is a directory, not a config file");

    /* No primary anywhere. */
    unsetenv("DATABASE_URL");
    assert_true(config_load_files(&c, yaml, NULL, err, sizeof(err)) < 0);
    snprintf(expect, sizeof(expect),
             "DATABASE_URL is not set and %s has no nodes.primary; point it at your PostgreSQL "
             "primary, e.g. postgresql://user:pass@host:5432/db",
             yaml);
    assert_string_equal(err, expect);

    /* PGSCALE_CONFIG belongs to the environment, not to a .env file. */
    setenv("DATABASE_URL", "postgresql://h/db", 1);
    env = tmp_write("app.env", "\nPGSCALE_CONFIG=/etc/pgscale.yaml\n");
    assert_true(config_load_files(&c, NULL, env, err, sizeof(err)) < 0);
    snprintf(expect, sizeof(expect),
             "%s:2: PGSCALE_CONFIG is read from the environment only (a .env file cannot choose "
             "the config file); use --config FILE",
             env);
    assert_string_equal(err, expect);
}

/* md5 and SCRAM need a password to check: a users file, auth.query, or
 * DATABASE_URL's own (which may come from the environment, so the check
 * runs after it is in). */
static void test_password_methods_need_a_password_source(void **state)
{
    (void)state;
    pgs_config c;
    char err[1024], expect[1024];
    const char *yaml = tmp_write("pgscale.yaml", "pool_size: 1\nauth:\n  type: scram-sha-256\n");
    setenv("DATABASE_URL", "postgresql://app@h/db", 1);
    assert_true(config_load_files(&c, yaml, NULL, err, sizeof(err)) < 0);
    snprintf(expect, sizeof(expect),
             "%s:3: auth.type: 'scram-sha-256' needs passwords: set auth.file (a users file) or "
             "auth.user (to look them up with auth.query), or put the password in DATABASE_URL",
             yaml);
    assert_string_equal(err, expect);

    /* DATABASE_URL's password is one. */
    setenv("DATABASE_URL", "postgresql://app:secret@h/db", 1);
    if (config_load_files(&c, yaml, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(c.auth.type, PGS_AUTH_SCRAM);
    assert_true(c.auth.type_set);
    config_free(&c);

    /* An hba rule that asks for one. */
    yaml = tmp_write("pgscale.yaml", "auth:\n"
                                     "  hba:\n"
                                     "    - type: host\n"
                                     "      address: all\n"
                                     "      method: md5\n");
    setenv("DATABASE_URL", "postgresql://app@h/db", 1);
    assert_true(config_load_files(&c, yaml, NULL, err, sizeof(err)) < 0);
    snprintf(expect, sizeof(expect),
             "%s:5: auth.hba[0].method: 'md5' needs passwords: set auth.file (a users file) or "
             "auth.user (to look them up with auth.query), or put the password in DATABASE_URL",
             yaml);
    assert_string_equal(err, expect);

    /* Without auth.type the default SCRAM does not need one: DATABASE_URL's
     * user then logs in without a password (clientauth warns). */
    yaml = tmp_write("pgscale.yaml", "pool_size: 1\n");
    if (config_load_files(&c, yaml, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(c.auth.type, PGS_AUTH_SCRAM);
    assert_false(c.auth.type_set);
    config_free(&c);
}

/* PGSCALE_AUTH_TYPE is auth.type from the environment, and wins over the
 * file like every other variable. */
static void test_auth_type_from_the_environment(void **state)
{
    (void)state;
    pgs_config c;
    char err[1024];
    const char *yaml = tmp_write("pgscale.yaml", "auth:\n  type: md5\n");
    setenv("DATABASE_URL", "postgresql://app:secret@h/db", 1);
    if (config_load_files(&c, yaml, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(c.auth.type, PGS_AUTH_MD5);
    config_free(&c);

    setenv("PGSCALE_AUTH_TYPE", "trust", 1);
    if (config_load_files(&c, yaml, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(c.auth.type, PGS_AUTH_TRUST);
    assert_true(c.auth.type_set);
    described *d = describe_all(&c);
    assert_string_equal(described_value(d, "auth.type"), "trust");
    free(d);
    config_free(&c);

    setenv("PGSCALE_AUTH_TYPE", "scram-sha-256", 1);
    setenv("DATABASE_URL", "postgresql://app@h/db", 1);
    assert_true(config_load_files(&c, yaml, NULL, err, sizeof(err)) < 0);
    assert_string_equal(err, "PGSCALE_AUTH_TYPE: 'scram-sha-256' needs passwords: set auth.file "
                             "(a users file) or auth.user (to look them up with auth.query), or "
                             "put the password in DATABASE_URL");

    setenv("PGSCALE_AUTH_TYPE", "password", 1);
    assert_true(config_load_files(&c, NULL, NULL, err, sizeof(err)) < 0);
    assert_string_equal(err, "PGSCALE_AUTH_TYPE: 'password' is not an auth type (expected trust, "
                             "md5 or scram-sha-256)");

    /* a .env file may set it too (PGSCALE_* names there are checked) */
    unsetenv("PGSCALE_AUTH_TYPE");
    const char *env = tmp_write("app.env", "PGSCALE_AUTH_TYPE=trust\n");
    if (config_load_files(&c, NULL, env, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(c.auth.type, PGS_AUTH_TRUST);
    assert_true(c.auth.type_set);
    config_free(&c);
}

static void test_sslmode_from_database_url_unless_the_file_sets_it(void **state)
{
    (void)state;
    const char *yaml = tmp_write("pgscale.yaml", "pool_size: 5\n");
    pgs_config c;
    char err[1024];
    setenv("DATABASE_URL", "postgresql://h/db?sslmode=require", 1);
    if (config_load_files(&c, yaml, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(c.server_tls.sslmode, PGS_SSLMODE_REQUIRE);
    config_free(&c);
    /* Without a config file too. */
    if (config_load(&c, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(c.server_tls.sslmode, PGS_SSLMODE_REQUIRE);
    config_free(&c);

    yaml = tmp_write("pgscale.yaml", "server_tls: {sslmode: disable}\n");
    if (config_load_files(&c, yaml, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(c.server_tls.sslmode, PGS_SSLMODE_DISABLE); /* the file's own setting */
    config_free(&c);

    setenv("DATABASE_URL", "postgresql://h/db", 1);
    if (config_load(&c, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(c.server_tls.sslmode, PGS_SSLMODE_PREFER); /* libpq's default */
    config_free(&c);

    setenv("DATABASE_URL", "postgresql://h/db?sslmode=maybe", 1);
    assert_true(config_load(&c, NULL, err, sizeof(err)) < 0);
    assert_string_equal(err, "DATABASE_URL: query parameter 'sslmode': 'maybe' is not an SSL "
                             "mode (expected disable, allow, prefer, require, verify-ca or "
                             "verify-full)");
}

static void test_channel_binding_from_database_url_unless_the_file_sets_it(void **state)
{
    (void)state;
    const char *yaml = tmp_write("pgscale.yaml", "pool_size: 5\n");
    pgs_config c;
    char err[1024];
    setenv("DATABASE_URL", "postgresql://h/db?sslmode=require&channel_binding=require", 1);
    if (config_load_files(&c, yaml, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(c.server_tls.channel_binding, PGS_CBIND_REQUIRE);
    described *d = describe_all(&c);
    assert_string_equal(described_value(d, "server_tls.channel_binding"), "require");
    free(d);
    config_free(&c);

    yaml = tmp_write("pgscale.yaml", "server_tls: {channel_binding: disable}\n");
    if (config_load_files(&c, yaml, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(c.server_tls.channel_binding, PGS_CBIND_DISABLE); /* the file wins */
    config_free(&c);

    setenv("DATABASE_URL", "postgresql://h/db", 1);
    if (config_load(&c, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(c.server_tls.channel_binding, PGS_CBIND_PREFER); /* libpq's default */
    assert_int_equal(c.server_scram_max_iterations, 100000);
    assert_false(c.server_allow_cleartext_password);
    config_free(&c);

    setenv("DATABASE_URL", "postgresql://h/db?channel_binding=always", 1);
    assert_true(config_load(&c, NULL, err, sizeof(err)) < 0);
    assert_string_equal(err, "DATABASE_URL: query parameter 'channel_binding': 'always' is not "
                             "a channel binding mode (expected disable, prefer or require)");
    yaml_bad("server_tls:\n  channel_binding: yes please\n",
             NAME ":2: server_tls.channel_binding: 'yes please' is not a channel binding mode "
                  "(expected disable, prefer or require)");
    /* a YAML boolean is a boolean setting's value */
    pgs_config b;
    yaml_ok(&b, "server_allow_cleartext_password: true\n");
    assert_true(b.server_allow_cleartext_password);
    config_free(&b);
}

static void test_reload_fills_a_fresh_snapshot_and_leaves_the_running_one(void **state)
{
    (void)state;
    const char *yaml = tmp_write("pgscale.yaml", "nodes: {primary: 'postgresql://h/db'}\n"
                                                 "pool_size: 5\n"
                                                 "admin_users: [ops]\n");
    pgs_config running, fresh;
    char err[1024];
    if (config_load_files(&running, yaml, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);

    yaml = tmp_write("pgscale.yaml", "nodes: {primary: 'postgresql://h/db'}\n"
                                     "pool_size: 6\n"
                                     "admin_users: [ops, root]\n");
    if (config_reload(&fresh, yaml, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    assert_int_equal(fresh.pool_size, 6);
    assert_int_equal(fresh.n_admin_users, 2);
    assert_int_equal(running.pool_size, 5);
    assert_int_equal(running.n_admin_users, 1);
    assert_string_equal(running.admin_users[0], "ops");
    config_free(&fresh);

    yaml = tmp_write("pgscale.yaml", "nodes: {primary: 'postgresql://h/db'}\n"
                                     "pool_size: 7\n"
                                     "admin_users: [ops, root]\n"
                                     "tls: {mode: require}\n");
    assert_true(config_reload(&fresh, yaml, NULL, err, sizeof(err)) < 0);
    char expect[512];
    snprintf(expect, sizeof(expect), "%s:4: tls.mode: 'require' needs tls.cert and tls.key", yaml);
    assert_string_equal(err, expect);
    assert_int_equal(running.pool_size, 5);
    assert_string_equal(running.admin_users[0], "ops");
    config_free(&fresh); /* harmless after a failed reload */
    config_free(&running);
}

static void test_errors_never_show_passwords_from_the_file(void **state)
{
    (void)state;
    const char *docs[] = {
        "nodes:\n  primary: postgresql://u:Hunter2Pw@h:0/db\n",
        "nodes:\n  primary: postgresql://u:Hunter2Pw@h1,h2/db\n",
        "nodes:\n  replicas: ['postgresql://u:Hunter2Pw@h/db?x']\n",
        "redis_url: 'http://:Hunter2Pw@h'\n",
        "nodes:\n  primary: postgresql://u:Hunter2Pw@h/db\n  primary: x\n",
    };
    for (size_t i = 0; i < PGS_ARRAY_LEN(docs); i++) {
        pgs_config c;
        char err[1024];
        assert_true(parse(&c, docs[i], err, sizeof(err)) < 0);
        config_free(&c);
        if (strstr(err, "Hunter2Pw")) fail_msg("password in: %s", err);
    }
}

/* ------------------------------------------------------------------------ */
/* cache:                                                                   */
/* ------------------------------------------------------------------------ */

static void test_cache_section_sets_every_key(void **state)
{
    (void)state;
    pgs_config c;
    yaml_ok(&c, "cache:\n"
                "  enabled: on\n"
                "  ttl: 90s\n"
                "  max_memory: 2GB\n"
                "  max_entry_size: 512kB\n"
                "  fill_wait: 250ms\n"
                "  change_feed: on\n");
    assert_true(c.cache.enabled);
    assert_true(c.cache.change_feed);
    assert_int_equal(c.cache.ttl_ms, 90000);
    assert_true(c.cache.max_memory == 2ull << 30);
    assert_int_equal(c.cache.max_entry_size, 512 * 1024);
    assert_int_equal(c.cache.fill_wait_ms, 250);
    assert_int_equal(c.cache.n_rules, 0);
    described *d = describe_all(&c);
    assert_string_equal(described_value(d, "PGSCALE_CACHE"), "on");
    assert_string_equal(described_value(d, "PGSCALE_CACHE_MAX_MEMORY"), "2GB");
    assert_string_equal(described_value(d, "cache.rules"), "");
    free(d);
    config_free(&c);
}

static void test_cache_rules_of_each_kind(void **state)
{
    (void)state;
    pgs_config c;
    yaml_ok(&c, "cache:\n"
                "  enabled: on\n"
                "  rules:\n"
                "    - tables: [products, Shop.Categories]\n"
                "      ttl: 60s\n"
                "    - fingerprint: \"0123456789ABCDEF\"\n"
                "      ttl: 10s\n"
                "      database: app\n"
                "    - query: |\n"
                "        SELECT count(*) FROM orders\n"
                "        WHERE day = 1\n"
                "      user: web\n");
    assert_int_equal(c.cache.n_rules, 3);
    const pgs_cache_rule *r = c.cache.rules;
    assert_int_equal(r[0].kind, PGS_CACHE_RULE_TABLES);
    assert_int_equal(r[0].n_tables, 2);
    assert_string_equal(r[0].tables[0], "products");
    assert_string_equal(r[0].tables[1], "Shop.Categories");
    assert_int_equal(r[0].ttl_ms, 60000);
    assert_int_equal(r[0].line, 4);
    assert_null(r[0].database);
    assert_int_equal(r[1].kind, PGS_CACHE_RULE_FINGERPRINT);
    assert_true(r[1].fingerprint == 0x0123456789abcdefull);
    assert_string_equal(r[1].database, "app");
    assert_int_equal(r[2].kind, PGS_CACHE_RULE_FINGERPRINT);
    assert_true(r[2].fingerprint != 0);
    assert_non_null(r[2].query);
    assert_string_equal(r[2].user, "web");
    assert_int_equal(r[2].ttl_ms, 0); /* none given: cache.ttl */

    /* the same statement written otherwise has the same fingerprint */
    pgs_config c2;
    yaml_ok(&c2, "cache:\n  rules:\n    - query: select count(*) from orders where day=7\n");
    assert_true(c2.cache.rules[0].fingerprint == r[2].fingerprint);
    config_free(&c2);

    described *d = describe_all(&c);
    assert_string_equal(described_value(d, "cache.rules[0]"),
                        "tables=products,Shop.Categories ttl=60s");
    assert_string_equal(described_value(d, "cache.rules[1]"),
                        "fingerprint=0123456789abcdef ttl=10s database=app");
    free(d);
    config_free(&c);
}

static void test_cache_rule_errors_carry_file_and_line(void **state)
{
    (void)state;
    yaml_bad("cache:\n  rules:\n    - ttl: 5s\n",
             NAME ":3: cache.rules[0]: a rule needs tables: [...], fingerprint: \"<hex>\" or "
                  "query: \"SELECT ...\"");
    yaml_bad("cache:\n  rules:\n    - tables: [a]\n      query: SELECT 1\n",
             NAME ":4: cache.rules[0].query: a rule matches by one of tables, fingerprint or "
                  "query; this one already has tables (line 3): split it into two rules");
    yaml_bad("cache:\n  rules:\n    - tables: []\n",
             NAME ":3: cache.rules[0].tables: is empty (list the tables the statements read)");
    yaml_bad_has("cache:\n  rules:\n    - tables: [a.b.c]\n", NAME ":3:",
                 "cache.rules[0].tables[0]", "more than one '.'", NULL);
    yaml_bad_has("cache:\n  rules:\n    - fingerprint: abc\n", NAME ":3:",
                 "cache.rules[0].fingerprint", "16 hex digits", NULL);
    yaml_bad_has("cache:\n  rules:\n    - fingerprint: \"0000000000000000\"\n", NAME ":3:",
                 "matches no statement", NULL);
    yaml_bad_has("cache:\n  rules:\n    - tables: [a]\n    - query: SELEC 1\n", NAME ":4:",
                 "cache.rules[1].query", "does not parse", NULL);
    yaml_bad_has("cache:\n  rules:\n    - tables: [a]\n      ttl: 0\n", NAME ":4:",
                 "cache.rules[0].ttl", NULL);
    yaml_bad("cache:\n  rules:\n    - tables: [a]\n      tll: 5s\n",
             NAME ":4: cache.rules[0].tll: unknown key (did you mean ttl?)");
    yaml_bad("cache:\n  rules:\n    - tables: [a]\n      table: x\n",
             NAME ":4: cache.rules[0].table: unknown key (did you mean tables?)");
    yaml_bad("cache:\n  rules: {}\n", NAME ":2: cache.rules: expected a list, got a mapping");
    yaml_bad("cache:\n  enable: on\n", NAME ":2: cache.enable: unknown key (did you mean "
                                        "enabled?)");
    yaml_bad_has("cache:\n  ttl: forever\n", NAME ":2:", "cache.ttl", "not a duration", NULL);
    yaml_bad_has("cache:\n  max_memory: 10\n", NAME ":2:", "cache.max_memory", "out of range",
                 NULL);
    yaml_bad("cache.enabled: on\n", NAME ":1: cache.enabled: unknown key (docs/configuration.md "
                                     "lists the keys of the config file)");
}

static void test_cache_switch_per_database_and_user(void **state)
{
    (void)state;
    pgs_config c;
    yaml_ok(&c, "cache:\n  enabled: on\n"
                "databases:\n  ledger:\n    cache: off\n  app:\n    cache: on\n"
                "users:\n  auditor:\n    cache: off\n");
    pgs_pool_settings ps;
    config_pool_settings(&c, "app", "web", &ps);
    assert_true(ps.cache);
    config_pool_settings(&c, "other", "web", &ps);
    assert_true(ps.cache);
    config_pool_settings(&c, "ledger", "web", &ps);
    assert_false(ps.cache);
    /* off in either section wins */
    config_pool_settings(&c, "app", "auditor", &ps);
    assert_false(ps.cache);
    described *d = describe_all(&c);
    assert_string_equal(described_value(d, "databases.ledger"), "cache=off");
    assert_string_equal(described_value(d, "users.auditor"), "cache=off");
    free(d);
    /* on in a section does not switch on a cache that is off */
    c.cache.enabled = false;
    config_pool_settings(&c, "app", "web", &ps);
    assert_false(ps.cache);
    config_free(&c);
    yaml_bad_has("databases:\n  app:\n    cache: sometimes\n", NAME ":3:",
                 "databases.app.cache", NULL);
}

static void test_cache_environment_wins_over_file(void **state)
{
    (void)state;
    const char *path = tmp_write("cache.yaml", "nodes:\n  primary: postgresql://u:p@h/db\n"
                                               "cache:\n  enabled: on\n  ttl: 10s\n"
                                               "  rules:\n    - tables: [t]\n");
    setenv("PGSCALE_CACHE_TTL", "20s", 1);
    pgs_config c;
    char err[1024];
    int rc = config_load_files(&c, path, NULL, err, sizeof(err));
    unsetenv("PGSCALE_CACHE_TTL");
    if (rc != 0) fail_msg("%s", err);
    assert_true(c.cache.enabled);
    assert_int_equal(c.cache.ttl_ms, 20000);
    assert_int_equal(c.cache.n_rules, 1);
    config_free(&c);
}

/* ------------------------------------------------------------------------ */
/* The example file and the documentation                                   */
/* ------------------------------------------------------------------------ */

/* examples/pgscale.yaml, copied into the scratch directory next to stand-ins
 * for the files it names (relative to itself), loads; and it is the very
 * text that docs/configuration.md shows. */
static void test_example_file_loads_and_matches_the_docs(void **state)
{
    (void)state;
    char *example = read_all(PGS_SOURCE_ROOT "/examples/pgscale.yaml");
    char *docs = read_all(PGS_SOURCE_ROOT "/docs/configuration.md");
    if (!strstr(docs, example))
        fail_msg("docs/configuration.md does not contain examples/pgscale.yaml verbatim");

    const char *path = tmp_write("pgscale.yaml", example);
    const char *referenced[] = {"users.txt", "server.crt", "server.key", "client-ca.crt",
                                "server-ca.crt"};
    for (size_t i = 0; i < PGS_ARRAY_LEN(referenced); i++) tmp_write(referenced[i], "x\n");
    pgs_config c;
    char err[1024];
    if (config_load_files(&c, path, NULL, err, sizeof(err)) != 0) fail_msg("%s", err);
    /* A few values from each section, so the example keeps exercising them. */
    assert_true(c.n_listen >= 2);
    assert_int_equal(c.n_replicas, 2);
    assert_int_equal(c.replica_weights[1], 2);
    assert_int_equal(c.failover, PGS_FAILOVER_AUTO);
    assert_int_equal(c.max_replica_lag_ms, 10000);
    assert_true(c.n_databases >= 1);
    assert_true(c.n_users >= 1);
    assert_int_equal(c.auth.type, PGS_AUTH_SCRAM);
    assert_true(c.auth.n_hba >= 3);
    assert_int_equal(c.tls.mode, PGS_TLS_ALLOW);
    assert_int_equal(c.server_tls.sslmode, PGS_SSLMODE_VERIFY_FULL);
    assert_true(c.n_admin_users >= 1);
    assert_true(c.n_stats_users >= 1);
    assert_true(c.cache.enabled);
    assert_true(c.cache.n_rules >= 2);
    assert_int_equal(c.http_port, 9930);
    assert_int_equal(c.http_auth, 1);
    assert_non_null(c.http_tls_cert);
    assert_non_null(strstr(c.http_tls_cert, "server.crt"));
    described *d = describe_all(&c);
    for (int i = 0; i < d->n; i++)
        if (strstr(d->values[i], "change-me")) fail_msg("password shown: %s", d->values[i]);
    free(d);
    config_free(&c);
    free(example);
    free(docs);
}

/* Every key the reader accepts has a place in docs/configuration.md. */
static void test_every_key_is_documented(void **state)
{
    (void)state;
    static const char *const keys[] = {
        "`listen`", "`pool_mode`", "`workers`", "`pool_size`", "`max_overflow`",
        "`pool_timeout`", "`server_connect_timeout`", "`server_login_timeout`",
        "`server_lifetime`", "`server_idle_timeout`", "`overflow_idle_timeout`",
        "`server_check_delay`", "`unused_pool_timeout`", "`idle_transaction_timeout`", "`client_idle_timeout`",
        "`query_timeout`", "`client_login_timeout`", "`shutdown_timeout`", "`max_client_conn`",
        "`max_prepared_statements`", "`max_message_size`", "`max_startup_packet_size`",
        "`redis_url`", "`log_level`", "`nodes.primary`", "`nodes.replicas`",
        "`databases.<name>.pool_size`", "`databases.<name>.max_overflow`",
        "`databases.<name>.pool_mode`", "`databases.<name>.pool_timeout`",
        "`databases.<name>.max_db_connections`", "`databases.<name>.dbname`",
        "`users.<name>.pool_size`", "`users.<name>.max_overflow`", "`users.<name>.pool_mode`",
        "`users.<name>.max_user_connections`", "`auth.type`", "`auth.file`", "`auth.query`",
        "`auth.user`", "`auth.dbname`", "`auth.query_max_per_address`",
        "`auth.query_negative_ttl`", "`auth.hba`", "`auth.hba[].type`", "`auth.hba[].database`",
        "`auth.hba[].user`", "`auth.hba[].address`", "`auth.hba[].method`", "`tls.cert`",
        "`tls.key`", "`tls.ca`", "`tls.mode`", "`tls.min_protocol`", "`tls.ciphers`",
        "`server_tls.sslmode`", "`server_tls.ca`", "`server_tls.cert`", "`server_tls.key`",
        "`admin_users`", "`stats_users`", "`PGSCALE_CONFIG`", "`--config",
        "`consistency`", "`failover`", "`max_replica_lag`", "`read_from_primary`",
        "`load_balance`", "`monitor_interval`", "`health_check_timeout`", "`failover_timeout`",
        "`failover_wait`",
        "`databases.<name>.route`", "`users.<name>.route`", "`nodes.replicas.weight`",
        "`cache.enabled`", "`cache.ttl`", "`cache.max_memory`", "`cache.max_entry_size`",
        "`cache.fill_wait`", "`cache.change_feed`", "`cache.rules`", "`cache.rules[].tables`",
        "`cache.rules[].fingerprint`", "`cache.rules[].query`", "`cache.rules[].ttl`",
        "`cache.rules[].database`", "`cache.rules[].user`", "`databases.<name>.cache`",
        "`users.<name>.cache`", "`PGSCALE_CACHE`", "`PGSCALE_CACHE_TTL`",
        "`PGSCALE_CACHE_MAX_MEMORY`", "`PGSCALE_CACHE_MAX_ENTRY_SIZE`",
        "`PGSCALE_CACHE_FILL_WAIT`", "`cache.redis`", "`cache.redis_timeout`",
        "`PGSCALE_CACHE_REDIS`", "`PGSCALE_CACHE_REDIS_TIMEOUT`", "`PGSCALE_CACHE_CHANGE_FEED`"};
    char *docs = read_all(PGS_SOURCE_ROOT "/docs/configuration.md");
    for (size_t i = 0; i < PGS_ARRAY_LEN(keys); i++)
        if (!strstr(docs, keys[i])) fail_msg("docs/configuration.md does not mention %s", keys[i]);
    free(docs);
}

static void test_http_section(void **state)
{
    (void)state;
    pgs_config c;
    yaml_ok(&c, "http:\n  listen: 0.0.0.0:9300\n  max_pools: 5\n");
    assert_string_equal(c.http_host, "0.0.0.0");
    assert_int_equal(c.http_port, 9300);
    assert_int_equal(c.http_max_pools, 5);
    assert_true(c.http_explicit);
    config_free(&c);
    yaml_ok(&c, "http: {listen: off}\n");
    assert_int_equal(c.http_port, 0);
    config_free(&c);
    yaml_bad_has("http:\n  listne: off\n", "http.listne: unknown key", NULL);
    yaml_bad_has("http:\n  max_pools: -1\n", "http.max_pools", NULL);
    yaml_bad_has("http: off\n", "http", NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_environment_setting_has_its_file_key),
        cmocka_unit_test(test_file_and_environment_give_the_same_values),
        cmocka_unit_test(test_bad_values_get_the_environment_reason_with_file_and_line),
        cmocka_unit_test(test_redis_url_errors_never_echo_it),
        cmocka_unit_test(test_mirrored_settings_land_in_their_fields),
        cmocka_unit_test(test_yaml_types_are_checked),
        cmocka_unit_test(test_empty_documents_keep_every_default),
        cmocka_unit_test(test_unknown_keys_are_rejected_with_a_hint),
        cmocka_unit_test(test_replica_weights_route_and_settings),
        cmocka_unit_test(test_listen_single_address_and_list),
        cmocka_unit_test(test_listen_errors),
        cmocka_unit_test(test_nodes_primary_and_replicas),
        cmocka_unit_test(test_nodes_errors_name_the_entry_and_hide_passwords),
        cmocka_unit_test(test_databases_every_key),
        cmocka_unit_test(test_users_every_key),
        cmocka_unit_test(test_databases_and_users_errors),
        cmocka_unit_test(test_pool_settings_resolve_global_then_database_then_user),
        cmocka_unit_test(test_pinning_settings_resolve_and_default_to_half_the_pool),
        cmocka_unit_test(test_auth_defaults),
        cmocka_unit_test_teardown(test_auth_every_key, tmp_cleanup),
        cmocka_unit_test(test_auth_errors),
        cmocka_unit_test_teardown(test_tls_every_key_with_relative_paths, tmp_cleanup),
        cmocka_unit_test_teardown(test_tls_errors, tmp_cleanup),
        cmocka_unit_test_teardown(test_server_tls_every_key_and_errors, tmp_cleanup),
        cmocka_unit_test(test_admin_and_stats_users),
        cmocka_unit_test(test_max_startup_packet_size),
        cmocka_unit_test(test_syntax_errors_carry_the_line),
        cmocka_unit_test(test_duplicate_keys_are_rejected_at_every_level),
        cmocka_unit_test(test_anchors_aliases_and_tags_are_refused),
        cmocka_unit_test_teardown(test_refuses_documents_over_one_mebibyte, tmp_cleanup),
        cmocka_unit_test(test_nesting_limit),
        cmocka_unit_test(test_item_limits),
        cmocka_unit_test_setup_teardown(test_precedence_file_then_envfile_then_environment,
                                        clear_env, clear_env),
        cmocka_unit_test_setup_teardown(test_environment_listen_replaces_the_file_list,
                                        clear_env, clear_env),
        cmocka_unit_test_setup_teardown(test_load_errors_name_their_source, clear_env,
                                        clear_env),
        cmocka_unit_test_setup_teardown(test_password_methods_need_a_password_source, clear_env,
                                        clear_env),
        cmocka_unit_test_setup_teardown(test_auth_type_from_the_environment, clear_env,
                                        clear_env),
        cmocka_unit_test_setup_teardown(test_sslmode_from_database_url_unless_the_file_sets_it,
                                        clear_env, clear_env),
        cmocka_unit_test_setup_teardown(test_channel_binding_from_database_url_unless_the_file_sets_it,
                                        clear_env, clear_env),
        cmocka_unit_test_setup_teardown(
            test_reload_fills_a_fresh_snapshot_and_leaves_the_running_one, clear_env, clear_env),
        cmocka_unit_test(test_errors_never_show_passwords_from_the_file),
        cmocka_unit_test_teardown(test_example_file_loads_and_matches_the_docs, tmp_cleanup),
        cmocka_unit_test(test_every_key_is_documented),
        cmocka_unit_test(test_cache_section_sets_every_key),
        cmocka_unit_test(test_cache_rules_of_each_kind),
        cmocka_unit_test(test_cache_rule_errors_carry_file_and_line),
        cmocka_unit_test(test_cache_switch_per_database_and_user),
        cmocka_unit_test(test_http_section),
        cmocka_unit_test_teardown(test_cache_environment_wins_over_file, tmp_cleanup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
