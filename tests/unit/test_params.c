/* Unit tests for params: tracking reported parameters (case-insensitive,
 * untracked names ignored), recording and forgetting SET texts ("extras"),
 * params_copy, and the exact SQL text params_sync_sql builds to make a
 * server's session look like the client's — including literal escaping,
 * identifier quoting, the special RESETs, and what happens when the text
 * does not fit.  Output buffers are exact-size heap blocks so ASan reports
 * any write past cap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "params.h"

#define BIG 4096

/* Runs one sync with a roomy buffer and checks the exact text (or that
 * nothing was produced when want is ""). */
static void sync_expect(const pgs_params *client, pgs_params **server, const char *want)
{
    char *out = malloc(BIG);
    assert_non_null(out);
    int n = params_sync_sql(client, server, out, BIG);
    if (want[0] == '\0') {
        assert_int_equal(n, 0);
    } else {
        assert_int_equal(n, (int)strlen(want));
        assert_string_equal(out, want);
    }
    free(out);
}

/* Everything p holds, as the text that would set it up on an empty server.
 * Lets a test see the extras, which have no getter. */
static void render_expect(const pgs_params *p, const char *want)
{
    pgs_params *empty = NULL;
    sync_expect(p, &empty, want);
    params_free(empty);
}

/* --- reported parameters --- */

static void test_set_ignores_untracked_names(void **state)
{
    (void)state;
    pgs_params *p = NULL;
    params_set(&p, "search_path", "app, public");
    params_set(&p, "work_mem", "64MB");
    params_set(&p, "server_version", "15.4"); /* reported, but not a session setting */
    assert_null(p);                           /* nothing tracked: nothing allocated */

    params_set(&p, "TimeZone", "UTC");
    assert_non_null(p);
    params_set(&p, "search_path", "app");
    assert_null(params_get(p, "search_path"));
    assert_null(params_get(p, "server_version"));
    render_expect(p, "SELECT pg_catalog.set_config(E'TimeZone', E'UTC', false);");
    params_free(p);
}

static void test_set_and_get_are_case_insensitive(void **state)
{
    (void)state;
    pgs_params *p = NULL;
    params_set(&p, "TIMEZONE", "Europe/Paris");
    params_set(&p, "datestyle", "ISO, DMY");
    assert_string_equal(params_get(p, "TimeZone"), "Europe/Paris");
    assert_string_equal(params_get(p, "timezone"), "Europe/Paris");
    assert_string_equal(params_get(p, "DATESTYLE"), "ISO, DMY");

    /* A second spelling of the same name replaces the value, not adds one. */
    params_set(&p, "timeZone", "UTC");
    assert_string_equal(params_get(p, "TimeZone"), "UTC");

    /* The SQL uses PostgreSQL's own spelling, whatever spelling was seen. */
    render_expect(p, "SELECT pg_catalog.set_config(E'DateStyle', E'ISO, DMY', false), "
                     "pg_catalog.set_config(E'TimeZone', E'UTC', false);");
    params_free(p);
}

static void test_get_unset_and_null(void **state)
{
    (void)state;
    assert_null(params_get(NULL, "TimeZone"));
    pgs_params *p = NULL;
    params_set(&p, "application_name", "web");
    assert_string_equal(params_get(p, "application_name"), "web");
    assert_null(params_get(p, "TimeZone"));
    assert_null(params_get(p, "no_such_setting"));
    params_free(p);
    params_free(NULL);
}

static void test_reported_index_and_name(void **state)
{
    (void)state;
    static const char *const names[PARAMS_REPORTED] = {
        "application_name", "client_encoding", "DateStyle", "IntervalStyle",
        "TimeZone", "standard_conforming_strings", "default_transaction_read_only",
    };
    for (int i = 0; i < PARAMS_REPORTED; i++) {
        assert_string_equal(params_reported_name(i), names[i]);
        assert_int_equal(params_reported_index(names[i]), i);
    }
    assert_int_equal(params_reported_index("INTERVALSTYLE"), 3);
    assert_int_equal(params_reported_index("search_path"), -1);
    assert_int_equal(params_reported_index(""), -1);
    assert_int_equal(params_reported_index("TimeZon"), -1);
    assert_null(params_reported_name(-1));
    assert_null(params_reported_name(PARAMS_REPORTED));
}

/* --- params_sync_sql: reported values --- */

/* A client with no recorded settings at all asks for nothing — even when
 * the server carries settings (observed behaviour; see the report). */
static void test_sync_null_client_returns_zero(void **state)
{
    (void)state;
    pgs_params *server = NULL;
    params_set(&server, "application_name", "previous");
    params_set_extra(&server, "search_path", "SET search_path TO other");
    pgs_params *before = server;
    char out[BIG];
    assert_int_equal(params_sync_sql(NULL, &server, out, sizeof(out)), 0);
    assert_ptr_equal(server, before);
    assert_string_equal(params_get(server, "application_name"), "previous");
    params_free(server);

    pgs_params *none = NULL;
    assert_int_equal(params_sync_sql(NULL, &none, out, sizeof(out)), 0);
    assert_null(none);
}

static void test_sync_identical_returns_zero(void **state)
{
    (void)state;
    pgs_params *client = NULL;
    params_set(&client, "application_name", "web");
    params_set(&client, "TimeZone", "UTC");
    params_set_extra(&client, "search_path", "SET search_path TO app");
    params_set_extra(&client, "role", "SET ROLE reporting");
    pgs_params *server = params_copy(client);
    pgs_params *before = server;

    /* cap 0: nothing is written when nothing differs. */
    assert_int_equal(params_sync_sql(client, &server, NULL, 0), 0);
    sync_expect(client, &server, "");
    assert_ptr_equal(server, before);
    params_free(client);
    params_free(server);
}

static void test_sync_differing_reported_value(void **state)
{
    (void)state;
    pgs_params *client = NULL, *server = NULL;
    params_set(&client, "application_name", "app2");
    params_set(&client, "TimeZone", "UTC");
    params_set(&server, "application_name", "app1");
    params_set(&server, "TimeZone", "UTC");

    sync_expect(client, &server,
                "SELECT pg_catalog.set_config(E'application_name', E'app2', false);");
    assert_string_equal(params_get(server, "application_name"), "app2");
    assert_string_equal(params_get(server, "TimeZone"), "UTC");
    /* *server now matches: a second sync has nothing to do. */
    sync_expect(client, &server, "");
    params_free(client);
    params_free(server);
}

static void test_sync_several_values_share_one_select(void **state)
{
    (void)state;
    pgs_params *client = NULL, *server = NULL;
    params_set(&client, "default_transaction_read_only", "on");
    params_set(&client, "client_encoding", "LATIN1");
    params_set(&client, "IntervalStyle", "iso_8601");
    /* Server unknown (NULL): every value the client has is sent, in the
     * fixed order of the reported list. */
    sync_expect(client, &server,
                "SELECT pg_catalog.set_config(E'client_encoding', E'LATIN1', false), "
                "pg_catalog.set_config(E'IntervalStyle', E'iso_8601', false), "
                "pg_catalog.set_config(E'default_transaction_read_only', E'on', false);");
    assert_non_null(server);
    assert_string_equal(params_get(server, "client_encoding"), "LATIN1");
    sync_expect(client, &server, "");
    params_free(client);
    params_free(server);
}

/* A value the client never had is left as the server has it, and the
 * server keeps tracking it after the sync. */
static void test_sync_keeps_server_value_client_lacks(void **state)
{
    (void)state;
    pgs_params *client = NULL, *server = NULL;
    params_set(&client, "application_name", "new");
    params_set(&server, "application_name", "old");
    params_set(&server, "TimeZone", "Asia/Tokyo");
    sync_expect(client, &server,
                "SELECT pg_catalog.set_config(E'application_name', E'new', false);");
    assert_string_equal(params_get(server, "TimeZone"), "Asia/Tokyo");
    assert_string_equal(params_get(server, "application_name"), "new");
    params_free(client);
    params_free(server);
}

static void test_sync_escapes_quote_and_backslash(void **state)
{
    (void)state;
    pgs_params *client = NULL, *server = NULL;
    params_set(&client, "application_name", "it's C:\\tmp\\");
    sync_expect(client, &server,
                "SELECT pg_catalog.set_config(E'application_name', E'it''s C:\\\\tmp\\\\', "
                "false);");
    params_free(server);
    server = NULL;

    /* Only ' and \ are doubled; "" and other punctuation go through. */
    params_set(&client, "application_name", "''\\\"x\"");
    sync_expect(client, &server,
                "SELECT pg_catalog.set_config(E'application_name', E'''''\\\\\"x\"', false);");
    params_free(server);
    params_free(client);
}

static void test_sync_empty_value(void **state)
{
    (void)state;
    pgs_params *client = NULL, *server = NULL;
    params_set(&client, "application_name", "");
    params_set(&server, "application_name", "psql");
    sync_expect(client, &server,
                "SELECT pg_catalog.set_config(E'application_name', E'', false);");
    assert_string_equal(params_get(server, "application_name"), "");
    params_free(client);
    params_free(server);
}

/* --- params_sync_sql: extras --- */

static void test_sync_appends_client_extra(void **state)
{
    (void)state;
    pgs_params *client = NULL, *server = NULL;
    params_set_extra(&client, "search_path", "SET search_path TO app, public");
    params_set(&server, "TimeZone", "UTC"); /* server known, without extras */
    sync_expect(client, &server, "SET search_path TO app, public;");
    sync_expect(client, &server, "");
    params_free(client);
    params_free(server);
}

static void test_sync_replaces_differing_extra_without_reset(void **state)
{
    (void)state;
    pgs_params *client = NULL, *server = NULL;
    params_set_extra(&client, "search_path", "SET search_path TO b");
    params_set_extra(&server, "search_path", "SET search_path TO a");
    sync_expect(client, &server, "SET search_path TO b;");
    sync_expect(client, &server, "");
    params_free(client);
    params_free(server);
}

static void test_sync_resets_extra_client_lacks(void **state)
{
    (void)state;
    pgs_params *client = NULL, *server = NULL;
    params_set(&client, "TimeZone", "UTC");
    params_set(&server, "TimeZone", "UTC");
    params_set_extra(&server, "work_mem", "SET work_mem = '64MB'");
    sync_expect(client, &server, "RESET \"work_mem\";");
    sync_expect(client, &server, "");
    params_free(client);
    params_free(server);
}

static void test_sync_resets_role(void **state)
{
    (void)state;
    pgs_params *client = NULL, *server = NULL;
    params_set(&client, "TimeZone", "UTC");
    params_set_extra(&server, "role", "SET ROLE admin");
    sync_expect(client, &server,
                "SELECT pg_catalog.set_config(E'TimeZone', E'UTC', false);RESET ROLE;");
    sync_expect(client, &server, "");
    params_free(client);
    params_free(server);
}

static void test_sync_resets_transaction_characteristics(void **state)
{
    (void)state;
    pgs_params *client = NULL, *server = NULL;
    params_set(&client, "TimeZone", "UTC");
    params_set(&server, "TimeZone", "UTC");
    params_set_extra(&server, "transaction_characteristics",
                     "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE");
    sync_expect(client, &server,
                "RESET default_transaction_isolation;RESET default_transaction_read_only;"
                "RESET default_transaction_deferrable;");
    sync_expect(client, &server, "");
    params_free(client);
    params_free(server);
}

static void test_sync_reset_doubles_double_quote_in_name(void **state)
{
    (void)state;
    pgs_params *client = NULL, *server = NULL;
    params_set(&client, "TimeZone", "UTC");
    params_set(&server, "TimeZone", "UTC");
    params_set_extra(&server, "my.\"odd\"", "SET \"my.\"\"odd\"\"\" = 'x'");
    sync_expect(client, &server, "RESET \"my.\"\"odd\"\"\";");
    params_free(client);
    params_free(server);
}

/* Order: one SELECT for reported values, then RESETs, then the client's
 * SET texts. */
static void test_sync_order_select_then_resets_then_sets(void **state)
{
    (void)state;
    pgs_params *client = NULL, *server = NULL;
    params_set(&client, "application_name", "a");
    params_set(&client, "DateStyle", "ISO, MDY");
    params_set_extra(&client, "search_path", "SET search_path TO app");
    params_set_extra(&client, "statement_timeout", "SET statement_timeout = 5000");
    params_set(&server, "application_name", "b");
    params_set(&server, "DateStyle", "ISO, MDY");
    params_set_extra(&server, "statement_timeout", "SET statement_timeout = 5000");
    params_set_extra(&server, "role", "SET ROLE x");
    params_set_extra(&server, "lock_timeout", "SET lock_timeout = 1");
    sync_expect(client, &server,
                "SELECT pg_catalog.set_config(E'application_name', E'a', false);"
                "RESET ROLE;RESET \"lock_timeout\";"
                "SET search_path TO app;");
    sync_expect(client, &server, "");
    params_free(client);
    params_free(server);
}

/* cap too small: -1 for every cap up to and including the text's length
 * (the NUL needs one more byte), no byte written past cap, and *server left
 * exactly as it was — same pointer, same values, same extras — so the
 * caller can still tell the server was not synced.  The bytes in out are
 * an unterminated partial text. */
static void test_sync_cap_too_small_fails_and_keeps_server(void **state)
{
    (void)state;
    const char *want = "SELECT pg_catalog.set_config(E'application_name', E'it''s', false), "
                       "pg_catalog.set_config(E'TimeZone', E'UTC', false);"
                       "RESET ROLE;RESET \"a\"\"b\";"
                       "RESET default_transaction_isolation;RESET default_transaction_read_only;"
                       "RESET default_transaction_deferrable;"
                       "SET search_path TO app;";
    size_t n = strlen(want);
    pgs_params *client = NULL, *server = NULL;
    params_set(&client, "application_name", "it's");
    params_set(&client, "TimeZone", "UTC");
    params_set_extra(&client, "search_path", "SET search_path TO app");
    params_set(&server, "application_name", "old");
    params_set_extra(&server, "role", "SET ROLE x");
    params_set_extra(&server, "a\"b", "SET \"a\"\"b\" = 1");
    params_set_extra(&server, "transaction_characteristics",
                     "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY");

    for (size_t cap = 0; cap <= n; cap++) {
        char *out = malloc(cap ? cap : 1);
        assert_non_null(out);
        pgs_params *before = server;
        int r = params_sync_sql(client, &server, out, cap);
        free(out);
        if (r != -1) fail_msg("cap %zu of %zu: got %d, want -1", cap, n, r);
        assert_ptr_equal(server, before);
        assert_string_equal(params_get(server, "application_name"), "old");
        assert_null(params_get(server, "TimeZone"));
    }
    /* The server still has its extras: a roomy sync produces the full text
     * again; with exactly n + 1 bytes it fits. */
    pgs_params *copy = params_copy(server);
    sync_expect(client, &copy, want);
    params_free(copy);

    char *out = malloc(n + 1);
    assert_non_null(out);
    assert_int_equal(params_sync_sql(client, &server, out, n + 1), (int)n);
    assert_string_equal(out, want);
    free(out);
    sync_expect(client, &server, "");
    params_free(client);
    params_free(server);
}

/* --- copy, clear, set_extra --- */

static void test_copy_is_independent(void **state)
{
    (void)state;
    pgs_params *p = NULL;
    params_set(&p, "application_name", "orig");
    params_set_extra(&p, "search_path", "SET search_path TO a");
    pgs_params *c = params_copy(p);
    assert_ptr_not_equal(c, p);
    assert_ptr_not_equal(params_get(c, "application_name"), params_get(p, "application_name"));

    params_set(&p, "application_name", "changed");
    params_set(&p, "TimeZone", "UTC");
    params_set_extra(&p, "search_path", "SET search_path TO b");
    params_set_extra(&p, "work_mem", "SET work_mem = 1");
    render_expect(c, "SELECT pg_catalog.set_config(E'application_name', E'orig', false);"
                     "SET search_path TO a;");

    params_clear_extras(p);
    params_free(p);
    /* c outlives p with all its own memory. */
    render_expect(c, "SELECT pg_catalog.set_config(E'application_name', E'orig', false);"
                     "SET search_path TO a;");
    params_set_extra(&c, "search_path", NULL);
    render_expect(c, "SELECT pg_catalog.set_config(E'application_name', E'orig', false);");
    params_free(c);

    pgs_params *e = params_copy(NULL);
    assert_non_null(e);
    assert_null(params_get(e, "application_name"));
    render_expect(e, "");
    params_free(e);
}

/* A shared block (the welcome parameters a client points at) is copied
 * before any change; the other holders keep seeing the old values. */
static void test_shared_block_is_copied_on_write(void **state)
{
    (void)state;
    char *names[] = {"TimeZone", "server_version", "client_encoding"};
    char *values[] = {"UTC", "15.4", "UTF8"};
    pgs_params *welcome = params_from_lists(3, names, values);
    assert_string_equal(params_get(welcome, "TimeZone"), "UTC");
    assert_null(params_get(welcome, "server_version")); /* not a session setting */

    pgs_params *a = params_ref(welcome);
    pgs_params *b = params_ref(welcome);
    assert_ptr_equal(a, welcome);
    params_set(&a, "TimeZone", "UTC"); /* same value: nothing to copy */
    assert_ptr_equal(a, welcome);
    params_set(&a, "TimeZone", "Europe/Paris");
    assert_ptr_not_equal(a, welcome);
    assert_string_equal(params_get(a, "TimeZone"), "Europe/Paris");
    assert_string_equal(params_get(a, "client_encoding"), "UTF8");
    assert_string_equal(params_get(b, "TimeZone"), "UTC");
    params_set_extra(&b, "work_mem", "SET work_mem = 1");
    assert_ptr_not_equal(b, welcome);
    render_expect(b, "SELECT pg_catalog.set_config(E'client_encoding', E'UTF8', false), "
                     "pg_catalog.set_config(E'TimeZone', E'UTC', false);SET work_mem = 1;");
    params_clear_extras(welcome); /* nothing there */
    assert_string_equal(params_get(welcome, "TimeZone"), "UTC");
    params_free(a);
    params_free(b);

    /* a client's own settings win; the rest is filled in */
    pgs_params *c = NULL;
    params_set(&c, "application_name", "web");
    params_set(&c, "TimeZone", "Asia/Tokyo");
    params_fill_from(&c, welcome);
    assert_string_equal(params_get(c, "application_name"), "web");
    assert_string_equal(params_get(c, "TimeZone"), "Asia/Tokyo");
    assert_string_equal(params_get(c, "client_encoding"), "UTF8");
    params_free(c);
    params_free(welcome);
}

static void test_clear_extras_keeps_reported(void **state)
{
    (void)state;
    pgs_params *p = NULL;
    params_set(&p, "TimeZone", "UTC");
    params_set_extra(&p, "search_path", "SET search_path TO a");
    params_set_extra(&p, "role", "SET ROLE x");
    params_clear_extras(p);
    render_expect(p, "SELECT pg_catalog.set_config(E'TimeZone', E'UTC', false);");
    assert_string_equal(params_get(p, "TimeZone"), "UTC");
    params_clear_extras(p); /* twice is fine */
    params_set_extra(&p, "work_mem", "SET work_mem = 1");
    render_expect(p, "SELECT pg_catalog.set_config(E'TimeZone', E'UTC', false);"
                     "SET work_mem = 1;");
    params_free(p);
    params_clear_extras(NULL);
}

static void test_set_extra_replaces_and_null_removes(void **state)
{
    (void)state;
    pgs_params *p = NULL;
    params_set_extra(&p, "search_path", "SET search_path TO a");
    params_set_extra(&p, "work_mem", "SET work_mem = 1");
    params_set_extra(&p, "role", "SET ROLE x");
    render_expect(p, "SET search_path TO a;SET work_mem = 1;SET ROLE x;");

    params_set_extra(&p, "work_mem", "SET work_mem = 2"); /* replaced in place */
    render_expect(p, "SET search_path TO a;SET work_mem = 2;SET ROLE x;");

    params_set_extra(&p, "search_path", NULL);
    render_expect(p, "SET ROLE x;SET work_mem = 2;"); /* last moved into the hole */
    params_set_extra(&p, "not_there", NULL);           /* no-op */
    render_expect(p, "SET ROLE x;SET work_mem = 2;");
    params_set_extra(&p, "role", NULL);
    params_set_extra(&p, "work_mem", NULL);
    render_expect(p, "");

    /* A removed extra that the server still has is now RESET. */
    pgs_params *server = NULL;
    params_set_extra(&server, "work_mem", "SET work_mem = 2");
    sync_expect(p, &server, "RESET \"work_mem\";");
    params_free(server);
    params_free(p);
}

/* RESET ALL first; reported values compared with the server's login values
 * (where RESET ALL takes them), every extra of the client replayed, the
 * server's own extras still reset (role survives RESET ALL). */
static void test_sync_reset_all_compares_with_login_values(void **state)
{
    (void)state;
    pgs_params *client = NULL, *server = NULL, *login = NULL;
    params_set(&login, "TimeZone", "UTC");
    params_set(&login, "application_name", "");
    params_set(&server, "TimeZone", "UTC");
    params_set(&server, "application_name", "other");
    params_set_extra(&server, "role", "SET ROLE admin");
    params_set_extra(&server, "app.tenant", "SET app.tenant = 'B'");
    params_set(&client, "TimeZone", "UTC");
    params_set(&client, "application_name", "other");
    params_set_extra(&client, "app.tenant", "SELECT pg_catalog.set_config(E'app.tenant', 'A', false)");
    char out[1024];
    int n = params_sync_sql_reset(client, &server, login, out, sizeof(out));
    assert_true(n > 0);
    assert_string_equal(out, "RESET ALL;SELECT pg_catalog.set_config(E'application_name', "
                             "E'other', false);RESET ROLE;"
                             "SELECT pg_catalog.set_config(E'app.tenant', 'A', false);");
    /* the server now looks like the client */
    sync_expect(client, &server, "");
    /* nothing of the client's own: the reset alone */
    pgs_params *bare = NULL;
    params_set(&bare, "TimeZone", "UTC");
    n = params_sync_sql_reset(bare, &server, login, out, sizeof(out));
    assert_int_equal(n, 10);
    assert_string_equal(out, "RESET ALL;");
    params_free(bare);
    params_free(client);
    params_free(server);
    params_free(login);
}

/* params_visit_output: the output-changing reported parameters by index
 * (application_name and default_transaction_read_only left out), then the
 * recorded settings by name whatever order they were made in: two clients
 * with the same settings give the result cache the same key. */
static void collect(void *ctx, const char *name, const char *value)
{
    char *out = ctx;
    strcat(out, name);
    strcat(out, "=");
    strcat(out, value);
    strcat(out, ";");
}

static void test_visit_output_is_canonical(void **state)
{
    (void)state;
    pgs_params *a = NULL, *b = NULL;
    params_set(&a, "application_name", "one");
    params_set(&a, "TimeZone", "UTC");
    params_set(&a, "default_transaction_read_only", "on");
    params_set_extra(&a, "search_path", "SET search_path TO s");
    params_set_extra(&a, "role", "SET ROLE r");
    params_set(&b, "TimeZone", "UTC");
    params_set(&b, "application_name", "two");
    params_set_extra(&b, "role", "SET ROLE r");
    params_set_extra(&b, "search_path", "SET search_path TO s");
    char ka[512] = "", kb[512] = "";
    params_visit_output(a, collect, ka);
    params_visit_output(b, collect, kb);
    assert_string_equal(ka, "TimeZone=UTC;role=SET ROLE r;search_path=SET search_path TO s;");
    assert_string_equal(ka, kb);
    params_set_extra(&b, "search_path", "SET search_path TO t");
    kb[0] = '\0';
    params_visit_output(b, collect, kb);
    assert_string_not_equal(ka, kb);
    char kn[8] = "";
    params_visit_output(NULL, collect, kn);
    assert_string_equal(kn, "");
    params_free(a);
    params_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_ignores_untracked_names),
        cmocka_unit_test(test_set_and_get_are_case_insensitive),
        cmocka_unit_test(test_get_unset_and_null),
        cmocka_unit_test(test_reported_index_and_name),
        cmocka_unit_test(test_sync_null_client_returns_zero),
        cmocka_unit_test(test_sync_identical_returns_zero),
        cmocka_unit_test(test_sync_differing_reported_value),
        cmocka_unit_test(test_sync_several_values_share_one_select),
        cmocka_unit_test(test_sync_keeps_server_value_client_lacks),
        cmocka_unit_test(test_sync_escapes_quote_and_backslash),
        cmocka_unit_test(test_sync_empty_value),
        cmocka_unit_test(test_sync_appends_client_extra),
        cmocka_unit_test(test_sync_replaces_differing_extra_without_reset),
        cmocka_unit_test(test_sync_resets_extra_client_lacks),
        cmocka_unit_test(test_sync_resets_role),
        cmocka_unit_test(test_sync_reset_all_compares_with_login_values),
        cmocka_unit_test(test_sync_resets_transaction_characteristics),
        cmocka_unit_test(test_sync_reset_doubles_double_quote_in_name),
        cmocka_unit_test(test_sync_order_select_then_resets_then_sets),
        cmocka_unit_test(test_sync_cap_too_small_fails_and_keeps_server),
        cmocka_unit_test(test_copy_is_independent),
        cmocka_unit_test(test_shared_block_is_copied_on_write),
        cmocka_unit_test(test_clear_extras_keeps_reported),
        cmocka_unit_test(test_set_extra_replaces_and_null_removes),
        cmocka_unit_test(test_visit_output_is_canonical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
