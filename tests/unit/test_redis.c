/* redis: REDIS_URL's parts (TCP and unix socket, users and passwords,
 * percent-escapes, db in the path or the query), what is refused
 * (rediss://, unknown parameters, bad ports) without echoing secrets, and
 * the secret-free display of where Redis is. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "redis.h"

static pgs_redis_url ok(const char *text)
{
    pgs_redis_url u;
    char err[300] = "";
    if (redis_url_parse(text, &u, err, sizeof(err)) != 0) fail_msg("'%s' refused: %s", text, err);
    return u;
}

static void bad(const char *text, const char *want)
{
    pgs_redis_url u;
    char err[300] = "";
    if (redis_url_parse(text, &u, err, sizeof(err)) == 0) fail_msg("'%s' accepted", text);
    if (!strstr(err, want)) fail_msg("'%s': '%s' does not say '%s'", text, err, want);
    /* nothing of a password in the message */
    assert_null(strstr(err, "s3cret"));
}

static void str_eq(const char *got, const char *want)
{
    if (!want) assert_null(got);
    else assert_string_equal(got, want);
}

static void test_tcp_urls(void **state)
{
    (void)state;
    static const struct {
        const char *text, *host;
        int port;
        const char *user, *password;
        int db;
    } cases[] = {
        {"redis://cache", "cache", 6379, NULL, NULL, 0},
        {"REDIS://cache:6380/", "cache", 6380, NULL, NULL, 0},
        {"redis://cache:6379/3", "cache", 6379, NULL, NULL, 3},
        {"redis://:s3cret@cache:6379/0", "cache", 6379, NULL, "s3cret", 0},
        {"redis://lonepw@cache", "cache", 6379, NULL, "lonepw", 0},
        {"redis://app:pw@10.0.0.5:7000/2", "10.0.0.5", 7000, "app", "pw", 2},
        {"redis://app:@cache", "cache", 6379, "app", NULL, 0},
        {"redis://:p%40ss%2Fw@cache", "cache", 6379, NULL, "p@ss/w", 0},
        {"redis://:p@ss@cache", "cache", 6379, NULL, "p@ss", 0},
        {"redis://[::1]:6390/1", "::1", 6390, NULL, NULL, 1},
        {"redis://[::1]", "::1", 6379, NULL, NULL, 0},
        {"redis://cache/0?db=4&password=qpw", "cache", 6379, NULL, "qpw", 4},
        {"redis://:old@cache?password=new", "cache", 6379, NULL, "new", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pgs_redis_url u = ok(cases[i].text);
        assert_false(u.unix_socket);
        str_eq(u.host, cases[i].host);
        assert_int_equal(u.port, cases[i].port);
        str_eq(u.user, cases[i].user);
        str_eq(u.password, cases[i].password);
        assert_int_equal(u.db, cases[i].db);
        assert_null(u.path);
        redis_url_free(&u);
    }
}

static void test_unix_urls(void **state)
{
    (void)state;
    pgs_redis_url u = ok("unix:///run/redis/redis.sock");
    assert_true(u.unix_socket);
    str_eq(u.path, "/run/redis/redis.sock");
    assert_null(u.password);
    redis_url_free(&u);
    u = ok("unix://:s3cret@/var/run/r%20s.sock?db=2");
    str_eq(u.path, "/var/run/r s.sock");
    str_eq(u.password, "s3cret");
    assert_int_equal(u.db, 2);
    redis_url_free(&u);
    u = ok("unix:///run/redis.sock?password=upw");
    str_eq(u.password, "upw");
    redis_url_free(&u);
}

static void test_refused(void **state)
{
    (void)state;
    bad("rediss://:s3cret@cache:6380", "rediss:// (Redis over TLS) is not supported");
    bad("http://:s3cret@cache", "must start with redis:// or unix://");
    bad("", "must start with redis:// or unix://");
    bad("redis://", "has no host");
    bad("redis://:s3cret@", "has no host");
    bad("redis://:s3cret@:6379", "has no host");
    bad("redis://cache:0", "port must be a number 1..65535");
    bad("redis://cache:65536", "port must be a number 1..65535");
    bad("redis://cache:x", "port must be a number");
    bad("redis://cache:", "port must be a number");
    bad("redis://cache/x", "the database after the host must be a number");
    bad("redis://cache/1/2", "the database after the host must be a number");
    bad("redis://cache?db=", "db must be a number");
    bad("redis://cache?db=-1", "db must be a number");
    bad("redis://:s3cret@cache?ssl_cert_reqs=none", "unknown parameter 'ssl_cert_reqs'");
    bad("redis://cache?password=%zzs3cret", "bad percent-escape in the password");
    bad("redis://:s3cret%00@cache", "bad percent-escape in the password");
    bad("redis://:s3cret#x@cache", "'#' must be written %23");
    bad("redis://[::1", "IPv6 host must be written [addr]");
    bad("redis://[::1]x", "only ':port' may follow");
    bad("unix://relative.sock", "absolute socket path");
    bad("unix://", "absolute socket path");
}

static void test_where_has_no_secret(void **state)
{
    (void)state;
    char buf[200];
    pgs_redis_url u = ok("redis://app:s3cret@cache:6380/2");
    redis_url_where(&u, buf, sizeof(buf));
    assert_string_equal(buf, "cache:6380 db 2");
    redis_url_free(&u);
    u = ok("redis://[::1]");
    redis_url_where(&u, buf, sizeof(buf));
    assert_string_equal(buf, "[::1]:6379");
    redis_url_free(&u);
    u = ok("unix://:s3cret@/run/r.sock");
    redis_url_where(&u, buf, sizeof(buf));
    assert_string_equal(buf, "/run/r.sock");
    redis_url_free(&u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tcp_urls),
        cmocka_unit_test(test_unix_urls),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_where_has_no_secret),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
