"""Pool hardening: connect failures back off instead of spinning, pool
counters stay exact through every way a server connection closes, no
timeout fires on a timestamp taken after the janitor's clock reading, and
pools nobody uses are freed."""
import os
import signal
import threading
import time

import psycopg2
import psycopg2.errors
import pytest

from helpers import wait_for


def _one(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


# -- timestamps taken after the janitor's clock reading ---------------------------
@pytest.mark.deadline(60)
def test_query_handed_a_server_by_the_janitor_is_not_cancelled_at_once(pgscale):
    """A server that was just cancelled sits out a short quarantine; the
    janitor then hands it to the waiting client, whose query starts after
    the janitor read its clock.  That query's age must not wrap to a huge
    value and trip query_timeout at once."""
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, PGSCALE_QUERY_TIMEOUT="1s",
                 DB_POOL_TIMEOUT=30)
    for _ in range(3):
        a = pg.connect()
        b = pg.connect()
        errors = {}

        def long_query():
            try:
                _one(a, "SELECT pg_sleep(5)")
            except psycopg2.Error as e:
                errors["a"] = e

        t = threading.Thread(target=long_query)
        t.start()
        time.sleep(0.3)  # a holds the only server; b queues behind it
        t0 = time.monotonic()
        try:
            # well under query_timeout: must not be cancelled
            assert _one(b, "SELECT 42 FROM pg_sleep(0.3)") == (42,)
        except psycopg2.errors.QueryCanceled as e:
            pytest.fail("a 0.3 s query was cancelled by a 1 s query_timeout: %s" % e)
        t.join(10)
        assert "a" in errors and errors["a"].pgcode == "57014", errors
        assert time.monotonic() - t0 < 5
        a.close()
        b.close()


# -- counters through every way a server closes ------------------------------------
def _try_connect_and_query(pg, out, key):
    try:
        conn = psycopg2.connect(pg.dsn(), connect_timeout=15)
        try:
            out[key] = _one(conn, "SELECT 1")
        finally:
            conn.close()
    except psycopg2.Error as e:
        out[key] = e


@pytest.mark.deadline(90)
def test_kill_while_servers_log_in_leaves_the_pool_able_to_open_servers(pgscale, primary):
    """KILL of a database whose server connections are still logging in
    (the postmaster is stopped, so they wait for its answer) must leave the
    pool's counters exact: after RESUME the pool opens servers again
    instead of believing logins are still on their way."""
    pg = pgscale(DB_POOL_SIZE=2, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=5, PGSCALE_WORKERS=1,
                 PGSCALE_SERVER_LOGIN_TIMEOUT="30s", PGSCALE_SERVER_CONNECT_TIMEOUT="30s")
    postmaster = primary.proc.pid
    out = {}
    threads = [threading.Thread(target=_try_connect_and_query, args=(pg, out, i)) for i in range(2)]
    os.kill(postmaster, signal.SIGSTOP)
    try:
        for t in threads:
            t.start()
        wait_for(lambda: (pg.pool() or {}).get("sv_login") and int(pg.pool()["sv_login"]) >= 2,
                 10, what="two server connections logging in")
        pg.admin("KILL app")
    finally:
        os.kill(postmaster, signal.SIGCONT)
    for t in threads:
        t.join(20)
    row = pg.pool()
    assert int(row["sv_login"]) == 0 and int(row["sv_total"]) == 0, row
    pg.admin("RESUME app")
    # one client at a time, on the worker that had the logins in flight:
    # each must get a server (not 53300 after DB_POOL_TIMEOUT with the pool at 0)
    for i in range(3):
        res = {}
        _try_connect_and_query(pg, res, i)
        assert res == {i: (1,)}, res
    wait_for(lambda: int(pg.pool()["sv_login"]) == 0, 5, what="no login left over")
