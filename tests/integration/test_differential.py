"""Differential tests: each scenario runs through one driver (psycopg2,
psycopg 3, asyncpg, node-postgres) directly against PostgreSQL and through
pgscale in each pool mode, and the two traces must be equal (rows with the
types the driver returned, command statuses, SQLSTATEs, notices) except for
the differences listed in EXPECTED_DIFFERENCES, each with its reason.

A listed difference is asserted exactly: every differing step must be
listed with the outcome pgscale gives today, and every listed step must
differ as stated.  So when pgscale changes (pinning of session state in
transaction mode, say), the test fails until the table says what is true
now, and docs/pooling.md ("What differs from a direct connection") with it.

pgscale runs with one worker thread.  In transaction mode it has two server
connections and hands out the most recently used idle one first, so a
scenario's second client, started while the first is idle, lands on the
first client's server connection: what one client leaves there is what the
next one finds, deterministically.  (A client that keeps its server
connection, as pinning will make those with session state do, leaves the
second client the other one.)
"""
import datetime
import decimal

import pytest

from differential import (DRIVERS, Json, Target, compare, node_available,
                          node_modules_missing, run_scenario, stop_node, text_of)
from helpers import APP_DB, APP_PASSWORD, APP_USER, LOCALHOST

# --------------------------------------------------------------------------
# Scenarios: each takes a Run (run.connect() opens a session, run.name(x)
# gives a name unique to the run) and records steps.  Sessions run in
# autocommit; transactions are explicit.
# --------------------------------------------------------------------------
SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


@scenario
def simple_select(run):
    c = run.connect()
    c.run("select", "SELECT 1 AS a, 'x'::text AS b, true AS c, 2.5::float8 AS d")
    c.run("values", "SELECT * FROM (VALUES (1, 'one'), (2, 'two')) v(n, s) ORDER BY n")


@scenario
def parameter_types(run):
    c = run.connect()
    ts = datetime.datetime(2024, 2, 29, 12, 30, 15, 123456, tzinfo=datetime.timezone.utc)
    c.run("typed", "SELECT $1::int, $2::text, $3::numeric, $4::timestamptz, $5::bytea, "
          "$6::json, $7::int[], $8::text",
          [42, "héllo 'q'", decimal.Decimal("12345.678901"), ts, b"\x00\x01\xfe\xff",
           Json({"k": [1, 2, {"n": None}]}), [1, 2, 3], None])
    c.run("literals", "SELECT 9007199254740993::int8, 1.5::numeric, NULL::int, "
          "'2024-01-01 00:00:00+00'::timestamptz, '\\xdeadbeef'::bytea, "
          "'{\"a\": 1}'::jsonb, ARRAY['x', NULL, 'z'], ARRAY[]::int[]")


@scenario
def error_in_transaction_then_rollback(run):
    c = run.connect()
    t = run.name("errtx")
    c.run("create", "CREATE TABLE %s (id int)" % t)
    c.run("begin", "BEGIN")
    c.run("insert", "INSERT INTO %s VALUES (1)" % t)
    c.run("error", "SELECT * FROM no_such_table_xyz")
    c.run("after error", "SELECT 1")
    c.run("rollback", "ROLLBACK")
    c.run("count", "SELECT count(*) FROM %s" % t)
    c.run("drop", "DROP TABLE %s" % t)


@scenario
def unique_violation(run):
    c = run.connect()
    t = run.name("uniq")
    c.run("create", "CREATE TABLE %s (id int PRIMARY KEY)" % t)
    c.run("first", "INSERT INTO %s VALUES ($1)" % t, [1])
    c.run("duplicate", "INSERT INTO %s VALUES ($1)" % t, [1])
    c.run("after", "SELECT count(*) FROM %s" % t)
    c.run("drop", "DROP TABLE %s" % t)


@scenario
def division_by_zero(run):
    c = run.connect()
    c.run("divide", "SELECT 1 / $1::int", [0])
    c.run("literal", "SELECT 1 / 0")
    c.run("after", "SELECT 2")


@scenario
def notice_from_do_block(run):
    c = run.connect()
    c.run("do", "DO $$BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END$$")
    c.run("custom", "DO $$BEGIN RAISE NOTICE USING MESSAGE = 'coded', ERRCODE = 'P0001'; END$$")
    c.run("after", "SELECT 1")


@scenario
def set_then_show(run):
    c = run.connect()
    c.run("set", "SET statement_timeout = '7s'")
    c.run("set tz", "SET TimeZone = 'Asia/Tokyo'")
    c.run("show", "SHOW statement_timeout")
    c.run("show tz", "SHOW TimeZone")
    c.run("timestamptz", "SELECT '2024-01-01 00:00:00+00'::timestamptz::text")
    c.run("reset", "RESET statement_timeout")
    c.run("show reset", "SHOW statement_timeout")


@scenario
def prepared_statement_reuse(run):
    c = run.connect()
    for i in range(6):
        c.prepared("use %d" % i, "stmt_a", "SELECT $1::int * 2, $2::text", [i, "v%d" % i])
    c.prepared("error", "stmt_b", "SELECT 10 / $1::int", [0])
    c.prepared("after error", "stmt_b", "SELECT 10 / $1::int", [5])


@scenario
def large_result(run):
    c = run.connect()
    c.large("10k rows", "SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, 10000) g")


@scenario
def copy_in_and_out(run):
    c = run.connect()
    t = run.name("copyt")
    c.run("create", "CREATE TABLE %s (id int, v text)" % t)
    c.copy_in("copy in", "COPY %s FROM STDIN" % t, "1\tone\n2\ttwo\n3\t\\N\n")
    c.copy_out("copy out", "COPY (SELECT * FROM %s ORDER BY id) TO STDOUT" % t)
    c.run("count", "SELECT count(*), count(v) FROM %s" % t)
    c.copy_in("bad copy", "COPY %s FROM STDIN" % t, "x\ty\n")
    c.run("after bad copy", "SELECT count(*) FROM %s" % t)
    c.run("drop", "DROP TABLE %s" % t)


@scenario
def savepoint_rollback(run):
    c = run.connect()
    t = run.name("savep")
    c.run("create", "CREATE TABLE %s (id int)" % t)
    c.run("begin", "BEGIN")
    c.run("insert 1", "INSERT INTO %s VALUES (1)" % t)
    c.run("savepoint", "SAVEPOINT s1")
    c.run("insert 2", "INSERT INTO %s VALUES (2)" % t)
    c.run("error", "SELECT 1 / 0")
    c.run("rollback to", "ROLLBACK TO SAVEPOINT s1")
    c.run("insert 3", "INSERT INTO %s VALUES (3)" % t)
    c.run("commit", "COMMIT")
    c.run("rows", "SELECT id FROM %s ORDER BY id" % t)
    c.run("drop", "DROP TABLE %s" % t)


@scenario
def stable_session_facts(run):
    c = run.connect()
    c.run("facts", "SELECT pg_backend_pid() = pg_backend_pid(), pg_backend_pid() > 0, "
          "current_user, session_user, current_database(), "
          "current_setting('server_version_num')::int >= 150000, "
          "current_setting('client_encoding'), current_setting('DateStyle'), "
          "current_setting('standard_conforming_strings'), current_setting('TimeZone')")
    c.run("listed", "SELECT count(*) FROM pg_stat_activity WHERE pid = pg_backend_pid() "
          "AND usename = current_user")


@scenario
def temp_table_across_transactions(run):
    c = run.connect()
    c.run("create temp", "CREATE TEMP TABLE tmp_x (id int)")
    c.run("insert", "INSERT INTO tmp_x VALUES (1), (2)")
    c.run("begin", "BEGIN")
    c.run("insert in tx", "INSERT INTO tmp_x VALUES (3)")
    c.run("commit", "COMMIT")
    c.run("select", "SELECT count(*) FROM tmp_x")
    other = run.connect()
    other.run("other client sees it", "SELECT to_regclass('tmp_x') IS NOT NULL")
    c.run("drop", "DROP TABLE tmp_x")


@scenario
def listen_notify_to_self(run):
    c = run.connect()
    ch = "diff_chan"  # in the trace: the same in every run (runs do not overlap)
    c.listen("listen", ch)
    c.run("notify", "NOTIFY %s, 'payload 1'" % ch)
    c.run("pg_notify", "SELECT pg_notify($1, $2)", [ch, "payload 2"])
    c.notifications("received")
    other = run.connect()
    other.run("other client listens", "SELECT count(*) FROM pg_listening_channels()")
    c.run("unlisten", "UNLISTEN *")


@scenario
def with_hold_cursor_across_commit(run):
    c = run.connect()
    c.run("begin", "BEGIN")
    c.run("declare", "DECLARE hold_c CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 5) g")
    c.run("commit", "COMMIT")
    c.run("fetch 1", "FETCH 2 FROM hold_c")
    c.run("fetch 2", "FETCH 2 FROM hold_c")
    other = run.connect()
    other.run("other client sees it", "SELECT count(*) FROM pg_cursors WHERE name = 'hold_c'")
    c.run("close", "CLOSE hold_c")


@scenario
def advisory_lock_across_transactions(run):
    a = run.connect()
    a.run("lock", "SELECT pg_advisory_lock(4242)")
    a.run("held", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 "
          "AND pid = pg_backend_pid()")
    b = run.connect()
    b.run("other tries", "SELECT pg_try_advisory_lock(4242)")
    b.run("other unlocks its own", "SELECT pg_advisory_unlock_all()")
    a.run("unlock", "SELECT pg_advisory_unlock(4242)")


@scenario
def set_config_then_current_setting(run):
    a = run.connect()
    a.run("set_config", "SELECT set_config('x.y', 'v', false)")
    a.run("same client", "SELECT current_setting('x.y', true)")
    b = run.connect()
    b.run("other client", "SELECT current_setting('x.y', true)")


@scenario
def lastval_after_insert(run):
    a = run.connect()
    b = run.connect()
    ta, tb = run.name("lva"), run.name("lvb")
    a.run("create a", "CREATE TABLE %s (id serial, v text)" % ta)
    a.run("create b", "CREATE TABLE %s (id int GENERATED ALWAYS AS IDENTITY (START 500), v text)"
          % tb)
    a.run("insert", "INSERT INTO %s (v) VALUES ('x'), ('y')" % ta)
    b.run("other client inserts", "INSERT INTO %s (v) VALUES ('z')" % tb)
    a.run("lastval", "SELECT lastval()")
    a.run("drop", "DROP TABLE %s, %s" % (ta, tb))


# --------------------------------------------------------------------------
# What differs today, and why.  Key: (pool mode, scenario, driver or "*" for
# every driver without an entry of its own).  Value: (reason, {step label:
# outcome through pgscale}), an outcome being ("error", SQLSTATE), ("rows",
# [row tuples as text]) or ("status", first word of the command status).
# A listed step's notices are not compared.  Unlisted steps must be
# identical to the direct run; session mode has no entry.
# docs/pooling.md ("What differs from a direct connection") says the same.
# --------------------------------------------------------------------------
# Session state that cannot follow a client to another server connection
# (temporary tables, LISTEN, WITH HOLD cursors, session advisory locks, SQL
# PREPARE) pins the client in transaction mode, so those scenarios have no
# entry: they must behave as on a direct connection, through every driver
# and protocol.
EXPECTED_DIFFERENCES = {
    ("transaction", "set_config_then_current_setting", "*"): (
        "a custom setting another client defined on the server connection was reset, not "
        "removed: PostgreSQL keeps a defined placeholder for the life of the session, so "
        "current_setting(name, true) reads '' there instead of NULL", {
            "B:other client": ("rows", [("",)]),
        }),
    ("transaction", "set_config_then_current_setting", "asyncpg"): (
        "asyncpg prepares every statement: a set_config sent through the extended protocol "
        "pins its client (reason config), so the other client gets another server connection "
        "and nothing differs", {}),
    ("transaction", "lastval_after_insert", "*"): (
        "the other client's insert ran on A's server connection in between: A's sequence "
        "values are gone from it, and pgscale refuses lastval() with 0A000 rather than "
        "return B's value", {
            "A:lastval": ("error", "0A000"),
        }),
}


def expected_for(mode, name, driver):
    return EXPECTED_DIFFERENCES.get((mode, name, driver)) or \
        EXPECTED_DIFFERENCES.get((mode, name, "*"))


def matches(outcome, expect):
    kind, value = expect
    if kind == "error":
        return outcome == ("error", value)
    if kind == "status":
        return outcome[0] == "ok" and outcome[1].split()[0] == value
    rows = text_of(outcome)
    return rows is not None and [tuple(map(_text, r)) for r in rows] == \
        [tuple(map(_text, r)) for r in value]


def _text(v):
    """Python's True and JavaScript's true alike."""
    return None if v is None else str(v).lower() if str(v) in ("True", "False", "true",
                                                                  "false") else str(v)


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------
_DIRECT = {}


@pytest.fixture(scope="module", autouse=True)
def _node_process():
    yield
    stop_node()


def _direct_trace(primary, driver, name):
    key = (driver, name)
    if key not in _DIRECT:
        target = Target(LOCALHOST, primary.port, APP_USER, APP_PASSWORD, APP_DB)
        _DIRECT[key] = run_scenario(SCENARIOS[name], driver, target,
                                    "%s_direct" % driver.replace("-", "_"))
    return _DIRECT[key]


def _pgscale_for(pgscale, mode):
    if mode == "transaction":
        # Both clients of the advisory-lock scenario pin (the other client's
        # pg_try_advisory_lock might take a lock: pgscale cannot tell), so
        # both of the two server connections may be pinned here; the cap's
        # own behaviour is tested in test_pinning.py.
        return pgscale(PGSCALE_POOL_MODE="transaction", PGSCALE_WORKERS=1, DB_POOL_SIZE=2,
                       DB_MAX_OVERFLOW=0, PGSCALE_MAX_PINNED=2)
    return pgscale(PGSCALE_POOL_MODE="session", PGSCALE_WORKERS=1, DB_POOL_SIZE=4,
                   DB_MAX_OVERFLOW=0)


def _driver_param(d):
    marks = []
    if d == "node-postgres":
        marks.append(pytest.mark.skipif(not node_available(), reason="node is not installed"))
    return pytest.param(d, marks=marks, id=d)


@pytest.mark.deadline(60)
@pytest.mark.parametrize("name", list(SCENARIOS))
@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("driver", [_driver_param(d) for d in DRIVERS])
def test_same_outcome_as_direct_connection(primary, pgscale, driver, mode, name):
    if driver == "node-postgres" and node_modules_missing():
        pytest.fail("tests/node/node_modules lacks %s: run scripts/install-deps.sh"
                    % ", ".join(node_modules_missing()))
    direct = _direct_trace(primary, driver, name)
    pg = _pgscale_for(pgscale, mode)
    through = run_scenario(SCENARIOS[name], driver,
                           Target(pg.host, pg.port, APP_USER, APP_PASSWORD, APP_DB),
                           "%s_%s" % (driver.replace("-", "_"), mode[:2]))
    diffs = compare(direct, through)
    expected = expected_for(mode, name, driver)
    if expected is None:
        assert diffs == [], "differs from a direct connection:\n" + "\n".join(
            "  %s\n    direct:  %r\n    pgscale: %r" % d for d in diffs)
        return
    reason, steps = expected
    got = {label: t for label, _, t in diffs}
    unexpected = {label: got[label] for label in got if label not in steps}
    assert not unexpected, "undocumented differences (%s): %r\nall differences: %r" % (
        reason, unexpected, diffs)
    for label, expect in steps.items():
        assert label in got, "%s no longer differs (documented: %s); update " \
                             "EXPECTED_DIFFERENCES and docs/pooling.md" % (label, reason)
        assert matches(got[label][0], expect), "%s through pgscale: %r, documented %r (%s)" % (
            label, got[label], expect, reason)
