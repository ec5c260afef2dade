/* Unit tests for sqlscan: every statement kind in several spellings, the
 * look-alikes that must stay SQL_OTHER, the multi and session_lock flags, and
 * truncated or hostile input.  Every text is copied into an exactly sized
 * heap buffer so that ASan reports any read past its end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sqlscan.h"

static sql_info scan_n(const char *text, size_t len)
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    if (len) memcpy(copy, text, len);
    sql_info info;
    memset(&info, 0x5a, sizeof(info)); /* the scanner must set every field */
    sqlscan_classify(copy, len, &info);
    free(copy);
    assert_non_null(memchr(info.name, '\0', sizeof(info.name)));
    return info;
}

static sql_info scan(const char *text)
{
    return scan_n(text, strlen(text));
}

/* Literal with embedded NULs: the length comes from sizeof, minus the
 * terminator the compiler adds. */
#define SCAN_LIT(lit) scan_n((lit), sizeof(lit) - 1)

static void expect(const char *text, sql_kind kind, const char *name)
{
    sql_info info = scan(text);
    if (info.kind != kind || strcmp(info.name, name) != 0)
        fail_msg("\"%s\": got kind %d name \"%s\", want kind %d name \"%s\"", text, info.kind,
                 info.name, kind, name);
}

static void expect_other(const char *text)
{
    expect(text, SQL_OTHER, "");
}

static void expect_multi(const char *text, bool multi)
{
    sql_info info = scan(text);
    if (info.multi != multi) fail_msg("\"%s\": multi is %d, want %d", text, info.multi, multi);
}

static void expect_lock(const char *text, bool lock)
{
    sql_info info = scan(text);
    if (info.session_lock != lock)
        fail_msg("\"%s\": session_lock is %d, want %d", text, info.session_lock, lock);
}

/* ---- SET ----------------------------------------------------------------- */

static void test_set_names_parameter_lower_cased(void **state)
{
    (void)state;
    expect("SET search_path TO public", SQL_SET, "search_path");
    expect("set Search_Path = public", SQL_SET, "search_path");
    expect("SeT sEaRcH_pAtH=public", SQL_SET, "search_path");
    expect("SET statement_timeout TO DEFAULT", SQL_SET, "statement_timeout");
    expect("SET work_mem FROM CURRENT", SQL_SET, "work_mem");
}

static void test_set_after_comments_and_blanks(void **state)
{
    (void)state;
    expect("  \t\r\n\f\vSET a = 1", SQL_SET, "a");
    expect("-- leading comment\nSET a = 1", SQL_SET, "a");
    expect("-- crlf comment\r\nSET a = 1", SQL_SET, "a");
    expect("/* block */SET a = 1", SQL_SET, "a");
    expect("/* outer /* nested */ still comment */ SET a = 1", SQL_SET, "a");
    expect("/**/--x\n/* a */ SET /* mid */ a /* mid */ TO 1", SQL_SET, "a");
}

static void test_set_session_scope_is_set(void **state)
{
    (void)state;
    expect("SET SESSION search_path TO x", SQL_SET, "search_path");
    expect("set session DateStyle = 'ISO'", SQL_SET, "datestyle");
}

static void test_set_quoted_name_kept_verbatim(void **state)
{
    (void)state;
    expect("SET \"Foo\" = 1", SQL_SET, "Foo");
    expect("SET \"a\"\"b\" = 1", SQL_SET, "a\"b");
    expect("SET \"search_path\" TO x", SQL_SET, "search_path");
    /* a quoted keyword is a plain name, not the keyword */
    expect("SET \"local\" = 1", SQL_SET, "local");
}

static void test_set_dotted_name(void **state)
{
    (void)state;
    expect("SET myapp.user_id = 5", SQL_SET, "myapp.user_id");
    expect("SET MyApp . \"User\" TO 5", SQL_SET, "myapp.User");
    expect("SET a.b.c = 1", SQL_SET, "a.b.c");
    /* keywords used as the first part of a custom parameter */
    expect("SET session.user_id = 1", SQL_SET, "session.user_id");
    expect("SET local.x TO 1", SQL_SET, "local.x");
    expect("SET SESSION session.x = 1", SQL_SET, "session.x");
}

static void test_set_special_forms_map_to_parameter(void **state)
{
    (void)state;
    expect("SET TIME ZONE 'UTC'", SQL_SET, "timezone");
    expect("set session time  zone LOCAL", SQL_SET, "timezone");
    expect("SET NAMES 'UTF8'", SQL_SET, "client_encoding");
    expect("SET SCHEMA 'app'", SQL_SET, "search_path");
    expect("SET ROLE admin", SQL_SET, "role");
    expect("SET ROLE = admin", SQL_SET, "role");
    expect("SET SESSION AUTHORIZATION bob", SQL_SET, "session_authorization");
    expect("SET SESSION AUTHORIZATION DEFAULT", SQL_SET, "session_authorization");
    expect("set session session authorization bob", SQL_SET, "session_authorization");
    expect("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", SQL_SET,
           "transaction_characteristics");
    expect("SET XML OPTION DOCUMENT", SQL_SET, "xmloption");
    expect("SET timezone = 'UTC'", SQL_SET, "timezone");
}

static void test_set_local_and_transaction_are_set_local(void **state)
{
    (void)state;
    expect("SET LOCAL search_path TO x", SQL_SET_LOCAL, "");
    expect("set local statement_timeout = 0", SQL_SET_LOCAL, "");
    expect("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", SQL_SET_LOCAL, "");
    expect("SET SESSION TRANSACTION READ ONLY", SQL_SET_LOCAL, "");
    expect("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", SQL_SET_LOCAL, "");
    expect("SET CONSTRAINTS ALL DEFERRED", SQL_SET_LOCAL, "");
}

static void test_set_look_alikes_are_other(void **state)
{
    (void)state;
    expect_other("SELECT 'SET x=1'");
    expect_other("settings = 1");
    expect_other("SETx = 1");
    expect_other("UPDATE t SET a = 1");
    expect_other("SHOW search_path");
    expect_other("\"SET\" a = 1");
    expect_other("(SET a = 1)");
}

static void test_set_truncated_is_other(void **state)
{
    (void)state;
    expect_other("SET");
    expect_other("SET ");
    expect_other("SET;");
    expect_other("SET search_path");
    expect_other("SET search_path TO");
    expect_other("SET search_path =;");
    expect_other("SET search_path public");
    expect_other("SET a.");
    expect_other("SET a. = 1");
    expect_other("SET LOCAL");
    expect_other("SET SESSION");
    expect_other("SET ROLE");
    expect_other("SET TIME ZONE");
    expect_other("SET SESSION AUTHORIZATION");
    expect_other("SET SESSION CHARACTERISTICS");
    expect_other("SET \"unterminated = 1");
    expect_other("SET \"\" = 1");
    expect_other("SET 'x' = 1");
}

/* ---- RESET ---------------------------------------------------------------- */

static void test_reset_name(void **state)
{
    (void)state;
    expect("RESET search_path", SQL_RESET, "search_path");
    expect("reset Work_Mem;", SQL_RESET, "work_mem");
    expect("RESET \"MyVar\"", SQL_RESET, "MyVar");
    expect("RESET myapp.user_id", SQL_RESET, "myapp.user_id");
    expect("RESET ROLE", SQL_RESET, "role");
    expect("RESET SESSION AUTHORIZATION", SQL_RESET, "session_authorization");
    expect("RESET TIME ZONE", SQL_RESET, "timezone");
    expect("RESET TRANSACTION ISOLATION LEVEL", SQL_RESET, "transaction_isolation");
    expect("/* c */ RESET x -- trailing\n", SQL_RESET, "x");
}

static void test_reset_all(void **state)
{
    (void)state;
    expect("RESET ALL", SQL_RESET_ALL, "");
    expect("reset all;", SQL_RESET_ALL, "");
    expect("RESET \"all\"", SQL_RESET, "all");
}

static void test_reset_look_alikes_and_truncations_are_other(void **state)
{
    (void)state;
    expect_other("resetting");
    expect_other("RESETx");
    expect_other("RESET");
    expect_other("RESET ;");
    expect_other("RESET a b");
    expect_other("RESET ALL x");
    expect_other("RESET TRANSACTION ISOLATION");
    expect_other("SELECT 1 -- RESET ALL");
}

/* ---- DISCARD ---------------------------------------------------------------- */

static void test_discard_all_and_others(void **state)
{
    (void)state;
    expect("DISCARD ALL", SQL_DISCARD_ALL, "");
    expect("discard all ;", SQL_DISCARD_ALL, "");
    expect("DISCARD PLANS", SQL_DISCARD_OTHER, "");
    expect("DISCARD SEQUENCES", SQL_DISCARD_SEQUENCES, "");
    expect("DISCARD TEMP", SQL_DISCARD_TEMP, "");
    expect("discard Temporary", SQL_DISCARD_TEMP, "");
    expect_other("DISCARD");
    expect_other("DISCARD everything");
    expect_other("DISCARD ALL PLANS");
    expect_other("discarded");
}

/* ---- DEALLOCATE --------------------------------------------------------------- */

static void test_deallocate_name(void **state)
{
    (void)state;
    expect("DEALLOCATE stmt1", SQL_DEALLOCATE, "stmt1");
    expect("deallocate prepare Stmt1", SQL_DEALLOCATE, "stmt1");
    expect("DEALLOCATE \"S_1\"", SQL_DEALLOCATE, "S_1");
    expect("DEALLOCATE \"ALL\"", SQL_DEALLOCATE, "ALL");
    expect("DEALLOCATE prepare", SQL_DEALLOCATE, "prepare");
}

static void test_deallocate_all(void **state)
{
    (void)state;
    expect("DEALLOCATE ALL", SQL_DEALLOCATE_ALL, "");
    expect("deallocate prepare all;", SQL_DEALLOCATE_ALL, "");
    expect_other("DEALLOCATE");
    expect_other("DEALLOCATE a b");
    expect_other("DEALLOCATE 'x'");
}

/* ---- LISTEN / UNLISTEN / PREPARE ----------------------------------------------------- */

static void test_listen_and_unlisten(void **state)
{
    (void)state;
    expect("LISTEN jobs", SQL_LISTEN, "");
    expect("listen \"Jobs\"", SQL_LISTEN, "");
    expect("UNLISTEN jobs", SQL_UNLISTEN, "");
    expect("unlisten *", SQL_UNLISTEN_ALL, "");
    expect_other("LISTEN");
    expect_other("UNLISTEN");
    expect_other("listener");
    expect_other("NOTIFY jobs");
}

static void test_prepare_name(void **state)
{
    (void)state;
    expect("PREPARE q1 AS SELECT 1", SQL_PREPARE, "q1");
    expect("prepare Q1 (int, text) as select $1", SQL_PREPARE, "q1");
    expect("PREPARE \"Q1\"(int) AS SELECT $1", SQL_PREPARE, "Q1");
    expect_other("PREPARE TRANSACTION 'gid-1'");
    expect_other("PREPARE");
    expect_other("PREPARE q1");
    expect_other("prepared");
}

/* ---- CREATE TEMP / DECLARE / BEGIN ---------------------------------------------------- */

static void test_create_temp(void **state)
{
    (void)state;
    expect("CREATE TEMP TABLE t (a int)", SQL_CREATE_TEMP, "");
    expect("create temporary table t (a int)", SQL_CREATE_TEMP, "");
    expect("CREATE GLOBAL TEMPORARY TABLE t (a int)", SQL_CREATE_TEMP, "");
    expect("CREATE LOCAL TEMP VIEW v AS SELECT 1", SQL_CREATE_TEMP, "");
    expect("CREATE TEMP SEQUENCE s", SQL_CREATE_TEMP, "");
    expect("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", SQL_CREATE_TEMP, "");
    expect("/* x */ create /* y */ temp table t()", SQL_CREATE_TEMP, "");
}

static void test_create_non_temp_is_other(void **state)
{
    (void)state;
    expect_other("CREATE TABLE t (a int)");
    expect_other("CREATE UNLOGGED TABLE t (a int)");
    expect_other("CREATE TEXT SEARCH TEMPLATE x (LEXIZE = f)");
    expect_other("CREATE TEMPLATE");
    expect_other("CREATE TEMP");
    expect_other("CREATE \"temp\" TABLE t()");
}

static void test_declare_with_hold(void **state)
{
    (void)state;
    expect("DECLARE c CURSOR WITH HOLD FOR SELECT 1", SQL_DECLARE_HOLD, "");
    expect("declare c cursor with hold for select 1", SQL_DECLARE_HOLD, "");
    expect("DECLARE \"C\" BINARY INSENSITIVE SCROLL CURSOR WITH HOLD FOR SELECT 1",
           SQL_DECLARE_HOLD, "");
    expect("DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT 1", SQL_DECLARE_HOLD, "");
    expect("DECLARE c SCROLL BINARY ASENSITIVE CURSOR WITH HOLD FOR SELECT 1", SQL_DECLARE_HOLD,
           "");
    expect("DECLARE c /* x */ CURSOR -- y\n WITH HOLD FOR SELECT 1", SQL_DECLARE_HOLD, "");
}

static void test_declare_without_hold_is_other(void **state)
{
    (void)state;
    expect_other("DECLARE c CURSOR FOR SELECT 1");
    expect_other("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1");
    expect_other("DECLARE c NO CURSOR WITH HOLD FOR SELECT 1");
    expect_other("DECLARE c CURSOR WITH HOLD");
    expect_other("DECLARE c CURSOR WITH");
    expect_other("DECLARE");
    expect_other("DECLARE c");
}

static void test_begin_and_start_transaction(void **state)
{
    (void)state;
    expect("BEGIN", SQL_BEGIN, "");
    expect("begin;", SQL_BEGIN, "");
    expect("BEGIN ISOLATION LEVEL SERIALIZABLE", SQL_BEGIN, "");
    expect("Begin Work", SQL_BEGIN, "");
    expect("START TRANSACTION", SQL_BEGIN, "");
    expect("start transaction read only", SQL_BEGIN, "");
    expect_other("START");
    expect_other("START REPLICATION");
    expect_other("BEGINNING");
    expect_other("COMMIT");
}

/* ---- multi ---------------------------------------------------------------------------- */

static void test_multi_detects_second_statement(void **state)
{
    (void)state;
    expect_multi("SELECT 1; SELECT 2", true);
    expect_multi("SELECT 1;SELECT 2;", true);
    expect_multi("SET a = 1; SELECT 2", true);
    expect_multi("SELECT 1 ; -- c\n x", true);
    expect_multi("SELECT $1; SELECT 2", true);      /* a parameter is no dollar quote */
    expect_multi("SELECT a$b$; SELECT 2", true);    /* '$' inside an identifier */
    expect_multi("SELECT $$x$$; SELECT 2", true);
    expect_multi("SELECT 'a''b'; SELECT 2", true);
    expect_multi("; SELECT 1", true);
    sql_info info = scan("RESET ALL; DISCARD ALL");
    assert_int_equal(info.kind, SQL_RESET_ALL);
    assert_true(info.multi);
}

static void test_multi_ignores_trailing_blanks_comments_and_semicolons(void **state)
{
    (void)state;
    expect_multi("SELECT 1", false);
    expect_multi("SELECT 1;", false);
    expect_multi("SELECT 1;  \n", false);
    expect_multi("SELECT 1; -- done", false);
    expect_multi("SELECT 1; /* done */ ;; ", false);
    expect_multi("SELECT 1; /* nested /* c */ ; x */", false);
    expect_multi("", false);
}

static void test_multi_ignores_semicolons_in_strings_and_comments(void **state)
{
    (void)state;
    expect_multi("SELECT ';x'", false);
    expect_multi("SELECT 'a'';x'", false);
    expect_multi("SELECT E'\\';x'", false);
    expect_multi("SELECT e'a\\\\'", false);
    expect_multi("SELECT \"a;b\" FROM t", false);
    expect_multi("SELECT \"a\"\";b\" FROM t", false);
    expect_multi("SELECT $$;x$$", false);
    expect_multi("SELECT $t$ ; $$ ; x $t$", false);
    expect_multi("SELECT $t$ $ta$ ; x $t$", false);
    expect_multi("SELECT 1 -- ;x\n", false);
    expect_multi("SELECT 1 --;x\r FROM t", false);
    expect_multi("/* ; */ SELECT 1", false);
    expect_multi("SELECT 'unterminated; x", false);
    expect_multi("SELECT $q$ unterminated; x", false);
    expect_multi("SELECT 1 /* unterminated; x", false);
    /* an E-string escape does not apply to a plain string */
    expect_multi("SELECT '\\'; SELECT 2", true);
}

/* ---- session state (pinning) ------------------------------------------------------------ */

static void expect_state(const char *text, unsigned want)
{
    unsigned got = sqlscan_session_state(text, strlen(text));
    if (got != want) fail_msg("\"%s\": session state %#x, want %#x", text, got, want);
}

static void test_session_state_reasons(void **state)
{
    (void)state;
    expect_state("SELECT 1", 0);
    expect_state("LISTEN jobs", SQLSCAN_STATE_LISTEN);
    expect_state("PREPARE q AS SELECT 1", SQLSCAN_STATE_PREPARE);
    expect_state("DECLARE c CURSOR WITH HOLD FOR SELECT 1", SQLSCAN_STATE_HOLD);
    expect_state("DECLARE c CURSOR FOR SELECT 1", 0);
    expect_state("CREATE TEMP TABLE t (a int)", SQLSCAN_STATE_TEMP);
    expect_state("CREATE TEMP TABLE t (a int) ON COMMIT DELETE ROWS", SQLSCAN_STATE_TEMP);
    expect_state("CREATE TEMP TABLE t (a int) ON COMMIT DROP", 0);
    expect_state("create temporary table t on commit drop as select 1", 0);
    expect_state("SELECT pg_advisory_lock(1)", SQLSCAN_STATE_LOCK);
    expect_state("SELECT pg_advisory_xact_lock(1)", 0);
    expect_state("SELECT 1 INTO TEMP t", SQLSCAN_STATE_TEMP);
    expect_state("select 1 into temporary table t", SQLSCAN_STATE_TEMP);
    expect_state("CREATE TABLE pg_temp.t (a int)", SQLSCAN_STATE_TEMP);
    expect_state("CREATE TABLE \"pg_temp\".t (a int)", SQLSCAN_STATE_TEMP);
    expect_state("SELECT 'into temp x', 'pg_temp.t' -- into temp\n", 0);
    expect_state("SELECT 'LISTEN x'", 0);
}

static void test_session_state_every_statement(void **state)
{
    (void)state;
    expect_state("SELECT 1; LISTEN a; SELECT 2", SQLSCAN_STATE_LISTEN);
    expect_state("BEGIN; CREATE TEMP TABLE t(a int); COMMIT", SQLSCAN_STATE_TEMP);
    expect_state("CREATE TEMP TABLE t(a int) ON COMMIT DROP; LISTEN x", SQLSCAN_STATE_LISTEN);
    expect_state("LISTEN x;PREPARE p AS SELECT 1;SELECT pg_advisory_lock(2)",
                 SQLSCAN_STATE_LISTEN | SQLSCAN_STATE_PREPARE | SQLSCAN_STATE_LOCK);
    expect_state(";;; DECLARE c CURSOR WITH HOLD FOR SELECT 1;", SQLSCAN_STATE_HOLD);
    expect_state("SELECT ';LISTEN x'; SELECT 2", 0);
}

static void test_release_statements(void **state)
{
    (void)state;
    expect("CLOSE ALL", SQL_CLOSE_ALL, "");
    expect_other("CLOSE c");
    expect_other("CLOSE ALL x");
    expect_other("UNLISTEN * x");
    sql_info info = scan("SELECT pg_advisory_unlock_all()");
    assert_true(info.unlock_all);
    assert_false(info.session_lock);
    info = scan("SELECT 'pg_advisory_unlock_all()'");
    assert_false(info.unlock_all);
    info = scan("SELECT pg_advisory_unlock_all(), pg_advisory_lock(1)");
    assert_true(info.unlock_all);
    assert_true(info.session_lock);
}

/* ---- session_lock ------------------------------------------------------------------------ */

static void test_session_lock_functions_detected(void **state)
{
    (void)state;
    expect_lock("SELECT pg_advisory_lock(1)", true);
    expect_lock("select PG_ADVISORY_LOCK_SHARED(1)", true);
    expect_lock("SELECT pg_try_advisory_lock(1, 2)", true);
    expect_lock("SELECT Pg_Try_Advisory_Lock_Shared(1)", true);
    expect_lock("SELECT pg_catalog.pg_advisory_lock(1)", true);
    expect_lock("SELECT \"pg_advisory_lock\"(1)", true);
    expect_lock("SELECT 1; SELECT pg_advisory_lock(1)", true);
    expect_lock("SELECT pg_advisory_lock /* c */ (1)", true);
    expect_lock("DECLARE c CURSOR WITH HOLD FOR SELECT pg_advisory_lock(1)", true);
}

static void test_session_lock_ignores_xact_and_look_alikes(void **state)
{
    (void)state;
    expect_lock("SELECT pg_advisory_xact_lock(1)", false);
    expect_lock("SELECT pg_try_advisory_xact_lock(1)", false);
    expect_lock("SELECT pg_advisory_xact_lock_shared(1)", false);
    expect_lock("SELECT pg_advisory_unlock(1)", false);
    expect_lock("SELECT my_pg_advisory_lock(1)", false);
    expect_lock("SELECT pg_advisory_lock_x(1)", false);
    expect_lock("SELECT pg_advisory_lock$(1)", false);
    expect_lock("SELECT \"PG_ADVISORY_LOCK\"(1)", false);
    expect_lock("SELECT advisory FROM t", false);
}

static void test_session_lock_ignores_strings_and_comments(void **state)
{
    (void)state;
    expect_lock("SELECT 1 -- pg_advisory_lock(1)", false);
    expect_lock("/* pg_advisory_lock(1) */ SELECT 1", false);
    expect_lock("SELECT 'pg_advisory_lock(1)'", false);
    expect_lock("SELECT E'\\'pg_advisory_lock(1)'", false);
    expect_lock("SELECT $$pg_advisory_lock(1)$$", false);
}

static void test_session_lock_found_deep_in_long_text(void **state)
{
    (void)state;
    /* long enough to go through the word-at-a-time search at every
     * alignment of the match */
    for (size_t pad = 0; pad < 16; pad++) {
        char buf[512];
        size_t n = 0;
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "SELECT ");
        for (size_t k = 0; k < 200 + pad; k++) buf[n++] = ' ';
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "PG_ADVISORY_LOCK(1)");
        sql_info info = scan_n(buf, n);
        assert_true(info.session_lock);
        info = scan_n(buf, n - 3); /* "...PG_ADVISORY_LOCK" still names it */
        assert_true(info.session_lock);
        info = scan_n(buf, n - 4); /* "...PG_ADVISORY_LOC" does not */
        assert_false(info.session_lock);
    }
}

/* ---- hostile input ------------------------------------------------------------------------- */

static void test_truncated_and_empty_inputs_are_other(void **state)
{
    (void)state;
    expect_other("");
    expect_other(" ");
    expect_other("S");
    expect_other("/* unterminated");
    expect_other("/* unterminated /* nested */");
    expect_other("/");
    expect_other("-");
    expect_other("-- only a comment");
    expect_other("'");
    expect_other("\"");
    expect_other("$");
    expect_other("$a");
    expect_other("E'\\");
    expect_other("e'");
    /* values are not validated: the server's reply says whether a SET took */
    expect("SET x TO 'unterminated", SQL_SET, "x");
    expect_other("SELECT $tag$ unterminated");

    sql_info info;
    sqlscan_classify(NULL, 0, &info);
    assert_int_equal(info.kind, SQL_OTHER);
    assert_false(info.multi);
    assert_false(info.session_lock);
}

static void test_nul_bytes_are_ordinary_bytes(void **state)
{
    (void)state;
    sql_info info = SCAN_LIT("\0SET a = 1");
    assert_int_equal(info.kind, SQL_OTHER);

    info = SCAN_LIT("SET a = '\0'; SELECT 1");
    assert_int_equal(info.kind, SQL_SET);
    assert_string_equal(info.name, "a");
    assert_true(info.multi);

    info = SCAN_LIT("SELECT '\0;x'");
    assert_false(info.multi);

    info = SCAN_LIT("SET \"a\0b\" = 1"); /* a name the C string could not carry */
    assert_int_equal(info.kind, SQL_OTHER);
    assert_string_equal(info.name, "");

    info = SCAN_LIT("SET a\0 = 1");
    assert_int_equal(info.kind, SQL_OTHER);

    info = SCAN_LIT("SELECT 1 /* \0 */; \0 pg_advisory_lock(1)");
    assert_true(info.multi);
    assert_true(info.session_lock);
}

static void test_name_of_63_bytes_kept_64_rejected(void **state)
{
    (void)state;
    char name63[64], name64[65], text[128];
    memset(name63, 'A', 63);
    name63[63] = '\0';
    memset(name64, 'b', 64);
    name64[64] = '\0';
    char lower63[64];
    memset(lower63, 'a', 63);
    lower63[63] = '\0';

    snprintf(text, sizeof(text), "SET %s = 1", name63);
    expect(text, SQL_SET, lower63);
    snprintf(text, sizeof(text), "SET %s = 1", name64);
    expect_other(text);

    snprintf(text, sizeof(text), "SET \"%s\" = 1", name63);
    expect(text, SQL_SET, name63);
    snprintf(text, sizeof(text), "SET \"%s\" = 1", name64);
    expect_other(text);

    snprintf(text, sizeof(text), "DEALLOCATE %s", name63);
    expect(text, SQL_DEALLOCATE, lower63);
    snprintf(text, sizeof(text), "DEALLOCATE %s", name64);
    expect_other(text);

    snprintf(text, sizeof(text), "PREPARE %s AS SELECT 1", name64);
    expect_other(text);
    snprintf(text, sizeof(text), "RESET %s", name64);
    expect_other(text);

    /* the limit is on the whole dotted name: 31 + 1 + 31 = 63, then 64 */
    expect("SET aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb = 1", SQL_SET,
           "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
    expect_other("SET aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb = 1");
    /* a quoted name whose "" pairs shrink it to 63 bytes fits */
    char quoted[160];
    size_t n = 0;
    n += (size_t)snprintf(quoted, sizeof(quoted), "SET \"");
    for (int k = 0; k < 62; k++) quoted[n++] = 'q';
    quoted[n++] = '"';
    quoted[n++] = '"';
    n += (size_t)snprintf(quoted + n, sizeof(quoted) - n, "\" = 1");
    sql_info info = scan_n(quoted, n);
    assert_int_equal(info.kind, SQL_SET);
    assert_int_equal(strlen(info.name), 63);
    assert_int_equal(info.name[62], '"');
}

static void test_every_prefix_of_statements_is_safe(void **state)
{
    (void)state;
    static const char *const texts[] = {
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "DECLARE \"c\" NO SCROLL CURSOR WITH HOLD FOR SELECT pg_advisory_lock(1); SELECT 2",
        "/* a /* b */ */ -- c\r\nRESET \"x\"\"y\".z; SELECT $t$;$t$, E'\\';', 'a''b'",
        "PREPARE q(int) AS SELECT $1; DEALLOCATE PREPARE ALL",
    };
    for (size_t k = 0; k < sizeof(texts) / sizeof(texts[0]); k++) {
        size_t len = strlen(texts[k]);
        for (size_t n = 0; n <= len; n++) {
            sql_info info = scan_n(texts[k], n);
            assert_true(info.kind >= SQL_OTHER && info.kind <= SQL_BEGIN);
        }
    }
}

/* ---- set_config ---- */

/* cfg: 0 no session call, 1 recordable, 2 unseen */
static void expect_cfg(const char *text, int cfg)
{
    sql_info info = scan(text);
    int got = !info.config_session ? 0 : info.config_unseen ? 2 : 1;
    if (got != cfg) fail_msg("\"%s\": set_config class %d, want %d", text, got, cfg);
    if (cfg == 2) assert_true(sqlscan_state_of(&info) & SQLSCAN_STATE_CONFIG);
    else assert_false(sqlscan_state_of(&info) & SQLSCAN_STATE_CONFIG);
    /* a Parse text or a multi-statement query cannot be recorded */
    bool state = sqlscan_session_state(text, strlen(text)) & SQLSCAN_STATE_CONFIG;
    assert_int_equal(state, cfg != 0);
}

/* The calls of a recordable text: "name=value literal;..." */
static void expect_calls(const char *text, const char *want)
{
    size_t len = strlen(text);
    char *copy = malloc(len);
    assert_non_null(copy);
    memcpy(copy, text, len);
    sql_setcfg calls[SQLSCAN_SETCFG_MAX];
    int n = sqlscan_set_configs(copy, len, calls);
    char got[512] = "";
    size_t g = 0;
    for (int i = 0; i < n; i++)
        g += (size_t)snprintf(got + g, sizeof(got) - g, "%s=%.*s;", calls[i].name,
                              (int)calls[i].value_len, copy + calls[i].value_off);
    free(copy);
    if (strcmp(got, want) != 0) fail_msg("\"%s\": calls \"%s\", want \"%s\"", text, got, want);
}

static void test_set_config_constant_session_calls_recorded(void **state)
{
    (void)state;
    expect_cfg("SELECT set_config('app.tenant', '42', false)", 1);
    expect_calls("SELECT set_config('app.tenant', '42', false)", "app.tenant='42';");
    expect_calls("select SET_CONFIG('App.Tenant', 'A b', FALSE);", "app.tenant='A b';");
    expect_calls("SELECT pg_catalog.set_config('a.b', $$x'y$$, 'f') AS r",
                 "a.b=$$x'y$$;");
    expect_calls("SELECT \"set_config\"('a.b', E'it''s', 'off') r, "
                 "set_config('c.d', '', NULL), set_config('e.f', 'v', 'no')",
                 "a.b=E'it''s';c.d='';e.f='v';");
    expect_calls("/* c */ SELECT set_config('search_path', 'a, \"B\"', false) ;  ",
                 "search_path='a, \"B\"';");
    expect_calls("SELECT 1, set_config('x.y', 'z', false), now()", "x.y='z';");
}

static void test_set_config_local_needs_nothing(void **state)
{
    (void)state;
    expect_cfg("SELECT set_config('app.tenant', '42', true)", 0);
    expect_cfg("SELECT set_config($1, $2, true)", 0);
    expect_cfg("SELECT set_config('a.b', 'c', 'on'), set_config('a.c', 'd', ' t ')", 0);
    expect_cfg("SELECT 'set_config(''a.b'', ''c'', false)' -- set_config('a','b',false)", 0);
    expect_cfg("SELECT set_config FROM t", 0);
    expect_cfg("SELECT 1", 0);
}

static void test_set_config_not_constant_is_unseen(void **state)
{
    (void)state;
    expect_cfg("SELECT set_config($1, $2, false)", 2);
    expect_cfg("SELECT set_config('a.b', $1, false)", 2);
    expect_cfg("SELECT set_config('a.b', 'c', $1)", 2);
    expect_cfg("SELECT set_config('a.b', v, false) FROM t", 2);
    expect_cfg("SELECT set_config('a.b', 'c', false) FROM t", 2);
    expect_cfg("SELECT set_config('a.b', 'c', false) WHERE false", 2);
    expect_cfg("SELECT set_config('a.b', 'c' || 'd', false)", 2);
    expect_cfg("SELECT set_config('a.b', E'c\\\\d', false)", 2);
    expect_cfg("SELECT set_config('a.b', 'c', false)::text", 2);
    expect_cfg("SELECT coalesce(set_config('a.b', 'c', false), 'x')", 2);
    expect_cfg("SELECT CASE WHEN x THEN set_config('a.b', 'c', false) END", 2);
    expect_cfg("SELECT false AND set_config('a.b', 'c', false) = ''", 2);
    expect_cfg("SELECT set_config('a.b', set_config('c.d', 'e', false), true)", 2);
    expect_cfg("SELECT myschema.set_config('a.b', 'c', true)", 2);
    expect_cfg("INSERT INTO t VALUES (set_config('a.b', 'c', false))", 2);
    expect_cfg("WITH x AS (SELECT 1) SELECT set_config('a.b', 'c', false)", 2);
    expect_cfg("SELECT set_config('a.b', 'c', false); SELECT 1", 2);
    expect_cfg("SELECT 1; SELECT set_config('a.b', 'c', false)", 2);
    expect_cfg("SELECT set_config('a.b', 'c')", 2);
    expect_cfg("SELECT set_config('a.b', 'c', false, 1)", 2);
    expect_cfg("SELECT set_config('a.b', 'c', false", 2);
    expect_cfg("SELECT set_config('a.b', 'c', 'maybe')", 2);
    expect_cfg("SELECT DISTINCT set_config('a.b', 'c', false)", 2);
    /* nine calls: more than are recorded */
    expect_cfg("SELECT set_config('a.a','1',false), set_config('a.b','1',false), "
               "set_config('a.c','1',false), set_config('a.d','1',false), "
               "set_config('a.e','1',false), set_config('a.f','1',false), "
               "set_config('a.g','1',false), set_config('a.h','1',false), "
               "set_config('a.i','1',false)", 2);
}

static void test_set_config_every_prefix_is_safe(void **state)
{
    (void)state;
    const char *text = "SELECT pg_catalog.set_config('a.b', $q$c$q$, false) AS x, "
                       "set_config(E'd.e', 'f''g', NULL)";
    size_t len = strlen(text);
    for (size_t n = 0; n <= len; n++) {
        sql_info info = scan_n(text, n);
        (void)info;
        char *copy = malloc(n ? n : 1);
        memcpy(copy, text, n);
        sql_setcfg calls[SQLSCAN_SETCFG_MAX];
        int k = sqlscan_set_configs(copy, n, calls);
        assert_true(k >= 0 && k <= 2);
        for (int i = 0; i < k; i++) assert_true(calls[i].value_off + calls[i].value_len <= n);
        free(copy);
    }
}

static unsigned seq(const char *q)
{
    return sqlscan_sequence_use(q, strlen(q));
}

static void test_sequence_use_of_texts(void **state)
{
    (void)state;
    assert_int_equal(seq("SELECT lastval()"), SQLSCAN_SEQ_LASTVAL);
    assert_int_equal(seq("select PG_CATALOG.LastVal ()"), SQLSCAN_SEQ_LASTVAL);
    assert_int_equal(seq("SELECT pg_catalog.\"currval\"('s')"), SQLSCAN_SEQ_CURRVAL);
    assert_int_equal(seq("SELECT currval('t_id_seq'), count(*) FROM t"), SQLSCAN_SEQ_CURRVAL);
    assert_int_equal(seq("SELECT 'lastval()' -- lastval()\n"), 0u);
    assert_int_equal(seq("SELECT $$currval(x)$$, \"LASTVAL\"()"), SQLSCAN_SEQ_NEXT);
    assert_int_equal(seq("SELECT 1, now(), x IN (1, 2) FROM t WHERE v::numeric(10,2) > 0"), 0u);
    assert_int_equal(seq("INSERT INTO t (v) VALUES ('x') RETURNING id"), SQLSCAN_SEQ_NEXT);
    assert_int_equal(seq("  insert into t default values"), SQLSCAN_SEQ_NEXT);
    assert_int_equal(seq("WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a"),
                     SQLSCAN_SEQ_NEXT);
    assert_int_equal(seq("SELECT nextval('s')"), SQLSCAN_SEQ_NEXT);
    assert_int_equal(seq("SELECT my_func(1)"), SQLSCAN_SEQ_NEXT);
    assert_int_equal(seq("COPY t FROM STDIN"), SQLSCAN_SEQ_NEXT);
    assert_int_equal(seq("DO $$BEGIN PERFORM 1; END$$"), SQLSCAN_SEQ_NEXT);
    assert_int_equal(seq("SELECT 1; INSERT INTO t VALUES (1); SELECT lastval()"),
                     SQLSCAN_SEQ_NEXT | SQLSCAN_SEQ_LASTVAL);
    assert_int_equal(seq("SELECT insert_count FROM t"), 0u);
    assert_int_equal(seq(""), 0u);
}

/* The classifier's routing hint: words inside comments only. */
static bool comment_has(const char *text)
{
    size_t len = strlen(text);
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    if (len) memcpy(copy, text, len);
    bool r = sqlscan_comment_has(copy, len, "pgscale:primary");
    free(copy);
    return r;
}

static void test_comment_has_finds_words_in_comments_only(void **state)
{
    (void)state;
    assert_true(comment_has("/* pgscale:primary */ SELECT 1"));
    assert_true(comment_has("SELECT 1 /* pgscale:primary */"));
    assert_true(comment_has("SELECT 1 -- PgScale:Primary"));
    assert_true(comment_has("SELECT /* a /* pgscale:primary */ b */ 1"));
    assert_true(comment_has("SELECT \"x\" /*pgscale:primary*/"));
    assert_true(comment_has("SELECT 1; /* pgscale:primary */ SELECT 2"));
    assert_false(comment_has("SELECT 'pgscale:primary'"));
    assert_false(comment_has("SELECT '/* pgscale:primary */'"));
    assert_false(comment_has("SELECT E'\\' /* pgscale:primary */'"));
    assert_false(comment_has("SELECT $$ -- pgscale:primary $$"));
    assert_false(comment_has("SELECT $t$ /* pgscale:primary */ $t$"));
    assert_false(comment_has("SELECT 1 AS \"/* pgscale:primary */\""));
    assert_false(comment_has("SELECT 1 /* pgscale:prima */"));
    assert_false(comment_has("SELECT 1 /* pgscale:"));
    assert_false(comment_has(""));
    assert_false(sqlscan_comment_has("/* x */", 7, ""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_names_parameter_lower_cased),
        cmocka_unit_test(test_set_after_comments_and_blanks),
        cmocka_unit_test(test_set_session_scope_is_set),
        cmocka_unit_test(test_set_quoted_name_kept_verbatim),
        cmocka_unit_test(test_set_dotted_name),
        cmocka_unit_test(test_set_special_forms_map_to_parameter),
        cmocka_unit_test(test_set_local_and_transaction_are_set_local),
        cmocka_unit_test(test_set_look_alikes_are_other),
        cmocka_unit_test(test_set_truncated_is_other),
        cmocka_unit_test(test_reset_name),
        cmocka_unit_test(test_reset_all),
        cmocka_unit_test(test_reset_look_alikes_and_truncations_are_other),
        cmocka_unit_test(test_discard_all_and_others),
        cmocka_unit_test(test_deallocate_name),
        cmocka_unit_test(test_deallocate_all),
        cmocka_unit_test(test_listen_and_unlisten),
        cmocka_unit_test(test_prepare_name),
        cmocka_unit_test(test_create_temp),
        cmocka_unit_test(test_create_non_temp_is_other),
        cmocka_unit_test(test_declare_with_hold),
        cmocka_unit_test(test_declare_without_hold_is_other),
        cmocka_unit_test(test_begin_and_start_transaction),
        cmocka_unit_test(test_multi_detects_second_statement),
        cmocka_unit_test(test_multi_ignores_trailing_blanks_comments_and_semicolons),
        cmocka_unit_test(test_multi_ignores_semicolons_in_strings_and_comments),
        cmocka_unit_test(test_session_state_reasons),
        cmocka_unit_test(test_session_state_every_statement),
        cmocka_unit_test(test_release_statements),
        cmocka_unit_test(test_session_lock_functions_detected),
        cmocka_unit_test(test_session_lock_ignores_xact_and_look_alikes),
        cmocka_unit_test(test_session_lock_ignores_strings_and_comments),
        cmocka_unit_test(test_session_lock_found_deep_in_long_text),
        cmocka_unit_test(test_truncated_and_empty_inputs_are_other),
        cmocka_unit_test(test_nul_bytes_are_ordinary_bytes),
        cmocka_unit_test(test_name_of_63_bytes_kept_64_rejected),
        cmocka_unit_test(test_every_prefix_of_statements_is_safe),
        cmocka_unit_test(test_set_config_constant_session_calls_recorded),
        cmocka_unit_test(test_set_config_local_needs_nothing),
        cmocka_unit_test(test_set_config_not_constant_is_unseen),
        cmocka_unit_test(test_set_config_every_prefix_is_safe),
        cmocka_unit_test(test_sequence_use_of_texts),
        cmocka_unit_test(test_comment_has_finds_words_in_comments_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
