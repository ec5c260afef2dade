"""A read whose replica fails before any byte of its answer reached the
client runs again on another node; anything else gets its error.

Slow reads use rr_sleep(), a function declared STABLE that sleeps (pg_sleep
itself is volatile: never routed to a replica).  A query's backend is found
on the replicas through a marker in its text (pg_stat_activity) and ended
there: pg_terminate_backend (a FATAL, then the close) or a SIGKILL of the
replica's postmaster (its backends exit without a word).  Where each
attempt ran is read on PostgreSQL itself (inet_server_port()), and what was
written is counted on the primary."""
import asyncio
import threading
import time

import psycopg2
import pytest

from helpers import aconnect, arun, wait_for

SLEEP_FN = ("CREATE OR REPLACE FUNCTION rr_sleep(s float8) RETURNS int STABLE LANGUAGE plpgsql "
            "AS $$ BEGIN PERFORM pg_sleep(s); RETURN 1; END $$")


@pytest.fixture
def rr(primary, replicas):
    primary.app_execute("DROP TABLE IF EXISTS rr_t")
    primary.app_execute("DROP TABLE IF EXISTS rr_w")
    primary.app_execute("CREATE TABLE rr_t (x int)")
    primary.app_execute("INSERT INTO rr_t SELECT generate_series(1, 3)")
    primary.app_execute("CREATE TABLE rr_w (x int)")
    primary.app_execute(SLEEP_FN)
    replicas.wait_replayed()
    yield
    primary.app_execute("DROP TABLE IF EXISTS rr_t")
    primary.app_execute("DROP TABLE IF EXISTS rr_w")
    primary.app_execute("DROP FUNCTION IF EXISTS rr_sleep(float8)")


def start(pgscale, replicas, **env):
    env.setdefault("READ_REPLICA_URLS", replicas.url_list())
    env.setdefault("PGSCALE_MONITOR_INTERVAL", "50ms")
    pg = pgscale(**env)
    wait_for(lambda: all(r["state"] == "up" and r["role"] == "replica"
                         for r in pg.admin("SHOW NODES") if r["node"] != "primary"),
             10, what="both replicas up in SHOW NODES")
    # rr_sleep() and inet_server_port() are known to be stable: reads
    # calling them go to the replicas
    probe = pg.connect()
    ports = {r.port for r in replicas.nodes}

    def on_replica():
        with probe.cursor() as cur:
            cur.execute("SELECT inet_server_port() FROM rr_sleep(0) s")
            return cur.fetchone()[0] in ports
    wait_for(on_replica, 10, what="a read routed to a replica")
    probe.close()
    return pg


def running_on(replicas, marker):
    """(replica index, pid) of the backend running a query with marker."""
    for i, r in enumerate(replicas.nodes):
        if not r.is_running():
            continue
        rows = r.execute("SELECT pid FROM pg_stat_activity WHERE state = 'active' "
                         "AND pid <> pg_backend_pid() AND query LIKE %s", ("%" + marker + "%",))
        if rows:
            return i, rows[0][0]
    return None


def in_thread(fn):
    """Runs fn in a thread; returns (thread, result dict: "value" or "error")."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except Exception as e:  # noqa: BLE001 - handed to the test
            out["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def fetch(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def retried(pg):
    return {r["node"]: int(r["retried"]) for r in pg.admin("SHOW NODES")}


def test_read_whose_replica_backend_is_terminated_runs_again_elsewhere(pgscale, replicas, rr):
    pg = start(pgscale, replicas)
    c = pg.connect()
    t, out = in_thread(lambda: fetch(
        c, "SELECT x, inet_server_port(), 'rr-term' FROM rr_t, rr_sleep(1) s ORDER BY x"))
    i, pid = wait_for(lambda: running_on(replicas, "rr-term"), 10, what="the read on a replica")
    replicas[i].execute("SELECT pg_terminate_backend(%s)", (pid,))
    t.join(20)
    assert "error" not in out, out
    rows = out["value"]
    assert [r[0] for r in rows] == [1, 2, 3], rows
    # it ran again, on another node, and the client saw only that answer
    assert {r[1] for r in rows} != {replicas[i].port}, rows
    assert retried(pg)["replica%d" % (i + 1)] == 1
    log = pg.stderr_text()
    assert log.count("read retried on") == 1, log[-3000:]
    assert "after replica%d failed" % (i + 1) in log and "FATAL 57P01" in log, log[-3000:]
    # the connection goes on
    assert fetch(c, "SELECT count(*) FROM rr_t")[0][0] == 3


def test_reads_from_many_clients_survive_a_killed_replica(pgscale, replicas_ctl, rr):
    replicas = replicas_ctl
    pg = start(pgscale, replicas)
    stop = threading.Event()
    errors, counts = [], [0] * 8

    def client(k):
        conn = pg.connect()
        while not stop.is_set():
            try:
                rows = fetch(conn, "SELECT count(*), inet_server_port() FROM rr_t, "
                                   "rr_sleep(0.02) s")
                assert rows[0][0] == 3, rows
                counts[k] += 1
            except psycopg2.Error as e:
                errors.append(e)
                conn = pg.connect()
        conn.close()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    before = sum(counts)
    replicas.kill(0)
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(20)
    assert not errors, errors[:5]
    assert sum(counts) > before and min(counts) > 0, counts
    # reads were in flight on replica1 when it died: they ran again elsewhere
    assert retried(pg)["replica1"] >= 1, pg.admin("SHOW NODES")
    assert {r["node"]: r["state"] for r in pg.admin("SHOW NODES")}["replica1"] == "down"


def server_lost(pg, out):
    """The client's query failed with pgscale's FATAL 08006 (libpq may
    report only the close that follows it; pgscale's log names it)."""
    return (isinstance(out.get("error"), psycopg2.OperationalError) and
            "08006: server connection lost" in pg.stderr_text())


def test_read_in_a_read_only_transaction_is_not_retried(pgscale, replicas_ctl, rr):
    replicas = replicas_ctl
    pg = start(pgscale, replicas)
    c = pg.connect()
    fetch(c, "SELECT 1")  # logged in before the read
    with c.cursor() as cur:
        cur.execute("BEGIN READ ONLY")

    t, out = in_thread(lambda: fetch(
        c, "SELECT x, inet_server_port(), 'rr-tx' FROM rr_t, rr_sleep(2) s"))
    i, _ = wait_for(lambda: running_on(replicas, "rr-tx"), 10, what="the read on a replica")
    replicas.kill(i)
    t.join(20)
    assert server_lost(pg, out), out
    assert "read retried" not in pg.stderr_text()
    assert sum(retried(pg).values()) == 0


def test_read_whose_rows_reached_the_client_is_not_retried(pgscale, replicas_ctl, rr):
    replicas = replicas_ctl
    pg = start(pgscale, replicas)
    c = pg.connect()
    # 100 rows of 1 kB: more than PostgreSQL's output buffer, so they are
    # sent (and relayed) before the second branch sleeps
    sql = ("SELECT x, repeat('a', 1000) FROM generate_series(1, 100) x "
           "UNION ALL SELECT rr_sleep(3), 'rr-rows' FROM rr_t WHERE x = 1")
    t, out = in_thread(lambda: fetch(c, sql))
    i, _ = wait_for(lambda: running_on(replicas, "rr-rows"), 10, what="the read on a replica")
    time.sleep(0.3)  # the rows are on their way before the kill
    replicas.kill(i)
    t.join(20)
    assert server_lost(pg, out), out
    assert "read retried" not in pg.stderr_text()


def test_write_whose_server_dies_is_not_run_again(pgscale, primary, replicas, rr):
    pg = start(pgscale, replicas)
    c = pg.connect()
    t, out = in_thread(lambda: fetch(
        c, "INSERT INTO rr_w SELECT x FROM rr_t, pg_sleep(1) s RETURNING 'rr-write'"))

    def on_primary():
        rows = primary.execute("SELECT pid FROM pg_stat_activity WHERE state = 'active' AND "
                               "pid <> pg_backend_pid() AND query LIKE '%rr-write%'")
        return rows and rows[0][0]
    pid = wait_for(on_primary, 10, what="the write on the primary")
    primary.execute("SELECT pg_terminate_backend(%s)", (pid,))
    t.join(20)
    # the transaction pooling client keeps its connection: the FATAL comes
    # as an ERROR with its own SQLSTATE
    assert "error" in out and out["error"].pgcode == "57P01", out
    time.sleep(1.5)  # a re-run would have finished by now
    assert primary.app_execute("SELECT count(*) FROM rr_w")[0][0] == 0
    assert "read retried" not in pg.stderr_text()
    assert fetch(c, "SELECT count(*) FROM rr_w")[0][0] == 0


def test_asyncpg_prepared_statement_retried_on_a_server_that_never_prepared_it(pgscale, replicas,
                                                                               rr):
    pg = start(pgscale, replicas)
    ports = {r.port for r in replicas.nodes}

    async def run():
        conn = await aconnect(pg)
        try:
            stmt = await conn.prepare("SELECT x, inet_server_port(), $1::text, 'rr-async' "
                                      "FROM rr_t, rr_sleep($2) s ORDER BY x")
            # used on both replicas: prepared on a server of each
            seen = set()
            for _ in range(40):
                rows = await stmt.fetch("warm", 0)
                seen |= {r[1] for r in rows}
                if ports <= seen:
                    break
            assert ports <= seen, seen
            task = asyncio.ensure_future(stmt.fetch("slow", 1.0))
            loop = asyncio.get_running_loop()
            found = None
            deadline = loop.time() + 10
            while found is None and loop.time() < deadline:
                found = await loop.run_in_executor(None, running_on, replicas, "rr-async")
                if found is None:
                    await asyncio.sleep(0.05)
            assert found, "the slow read never ran on a replica"
            i, pid = found
            await loop.run_in_executor(None, replicas[i].execute,
                                       "SELECT pg_terminate_backend(%s)" % pid)
            rows = await task
            assert [(r[0], r[2]) for r in rows] == [(1, "slow"), (2, "slow"), (3, "slow")]
            assert rows[0][1] != replicas[i].port, rows
            # and the statement keeps working wherever it lands
            for _ in range(10):
                rows = await stmt.fetch("after", 0)
                assert [r[0] for r in rows] == [1, 2, 3]
            return i
        finally:
            await conn.close()
    i = arun(run())
    assert retried(pg)["replica%d" % (i + 1)] == 1
    assert "read retried on" in pg.stderr_text()
