"""Read/write split over real streaming replicas.

The `replicas` fixture (conftest.py) gives the session's primary two
streaming replicas.  Where a statement ran is read on PostgreSQL itself:
inet_server_port() names the server that answered, pg_is_in_recovery() says
whether it was a replica.

Read-your-writes is proved with replicas that lag for real
(recovery_min_apply_delay): a client's read right after its own write must
see the write, thousands of rounds, through psycopg2, asyncpg (prepared
statements) and SQLAlchemy."""
import asyncio
import struct
import threading
import time

import psycopg2
import pytest

import pgwire
from helpers import APP_PASSWORD, arun, aconnect, is_sanitized, wait_for

# pg_is_in_recovery() is volatile (so never routed to a replica); a standby's
# sessions are read-only
ON_STANDBY = "current_setting('transaction_read_only') = 'on'"
WHERE = "SELECT inet_server_port(), " + ON_STANDBY


def rounds(pg, n):
    """n rounds, a fifth of them against a sanitizer build (the same paths,
    five times slower)."""
    return n // 5 if is_sanitized(pg.pid) else n


def ports_of(replicas):
    return [r.port for r in replicas.nodes]


def routed(primary, replicas, **env):
    env.setdefault("READ_REPLICA_URLS", ",".join(replicas.urls()))
    env.setdefault("PGSCALE_MONITOR_INTERVAL", "50ms")
    return env


def start(pgscale, primary, replicas, **env):
    pg = pgscale(**routed(primary, replicas, **env))
    # the monitor has read every node (before its first check SHOW NODES
    # shows the configured role and no lsn): reads may go to the replicas
    wait_for(lambda: all(r["lsn"] and r["state"] == "up" and
                         r["role"] == ("primary" if r["node"] == "primary" else "replica")
                         for r in pg.admin("SHOW NODES")),
             10, what="every node checked and up in SHOW NODES")
    # and function volatility has been read from the primary (until then
    # inet_server_port() is not known to be stable, and reads calling it
    # stay on the primary)
    if env.get("PGSCALE_POOL_MODE", "transaction") == "transaction":
        probe = pg.connect()
        wait_for(lambda: where(probe)[1] is True, 10, what="a read routed to a replica")
        probe.close()
    return pg


def where(conn, sql=WHERE):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()


@pytest.fixture
def rtable(primary, replicas):
    primary.app_execute("DROP TABLE IF EXISTS rw_t")
    primary.app_execute("CREATE TABLE rw_t (id int PRIMARY KEY, v text)")
    replicas.wait_replayed()
    yield "rw_t"
    primary.app_execute("DROP TABLE IF EXISTS rw_t")


def test_reads_are_spread_over_the_replicas_and_writes_go_to_the_primary(pgscale, primary,
                                                                         replicas, rtable):
    pg = start(pgscale, primary, replicas)
    c = pg.connect()
    ports = {}
    for _ in range(60):
        port, rec = where(c)
        ports[port] = ports.get(port, 0) + 1
        assert rec is True, "a read ran on the primary while both replicas were up"
    assert set(ports) == set(ports_of(replicas)), ports
    assert min(ports.values()) >= 20, ports  # round robin: about even
    # what is not provably a read runs on the primary
    for sql in ("INSERT INTO rw_t VALUES (1, 'a') RETURNING inet_server_port()",
                "SELECT inet_server_port() FROM rw_t FOR UPDATE",
                "SELECT inet_server_port() FROM (SELECT nextval('rw_seq')) s",
                "WITH d AS (DELETE FROM rw_t WHERE id = 0 RETURNING 1) "
                "SELECT inet_server_port()",
                "/* pgscale:primary */ SELECT inet_server_port()"):
        if "rw_seq" in sql:
            with c.cursor() as cur:
                cur.execute("CREATE SEQUENCE IF NOT EXISTS rw_seq")
        with c.cursor() as cur:
            cur.execute(sql)
            assert cur.fetchone()[0] == primary.port, sql
    nodes = {r["node"]: r for r in pg.admin("SHOW NODES")}
    assert int(nodes["replica1"]["reads"]) >= 20 and int(nodes["replica2"]["reads"]) >= 20, nodes
    assert int(nodes["primary"]["writes"]) >= 4, nodes


def test_transactions_stay_on_their_node(pgscale, primary, replicas, rtable):
    pg = start(pgscale, primary, replicas)
    c = pg.connect(autocommit=False)
    # a plain transaction may write: the primary, every statement
    assert where(c) == (primary.port, False)
    with c.cursor() as cur:
        cur.execute("INSERT INTO rw_t VALUES (2, 'b')")
    assert where(c) == (primary.port, False)
    c.commit()
    # BEGIN READ ONLY may go to a replica, and stays there (another
    # connection: this one's write has just committed, and its reads wait
    # for the replicas to replay it)
    c = pg.connect()
    with c.cursor() as cur:
        cur.execute("BEGIN READ ONLY")
        cur.execute(WHERE)
        first = cur.fetchone()
        assert first[1] is True and first[0] in ports_of(replicas)
        for _ in range(5):
            cur.execute(WHERE)
            assert cur.fetchone() == first
        cur.execute("COMMIT")


def test_write_pipelined_behind_a_read_runs_on_the_primary(pgscale, primary, replicas, rtable):
    pg = start(pgscale, primary, replicas)
    with pgwire.RawConn(pg.host, pg.port, timeout=10) as c:
        c.startup()
        # both units sent before either is answered
        c.send(pgwire.query(WHERE) + pgwire.query(
            "INSERT INTO rw_t VALUES (3, 'c') RETURNING inet_server_port(), " + ON_STANDBY))
        first = pgwire.data_rows(c.read_until_ready(timeout=10))
        second = pgwire.data_rows(c.read_until_ready(timeout=10))
    assert first[0][1] == "t", first
    assert second == [[str(primary.port), "f"]], second
    assert primary.app_execute("SELECT v FROM rw_t WHERE id = 3") == [("c",)]


@pytest.mark.deadline(180)
def test_read_your_writes_with_lagging_replicas_psycopg2(pgscale, primary, replicas_ctl, rtable):
    replicas = replicas_ctl
    replicas.set_apply_delay(0, 300)
    replicas.set_apply_delay(1, 300)
    pg = start(pgscale, primary, replicas)
    c = pg.connect()
    stale = 0
    on_replica = 0
    for i in range(rounds(pg, 1000)):
        with c.cursor() as cur:
            cur.execute("INSERT INTO rw_t VALUES (%s, 'x')", (1000 + i,))
            cur.execute("SELECT count(*), " + ON_STANDBY + " FROM rw_t WHERE id = %s",
                        (1000 + i,))
            n, rec = cur.fetchone()
        stale += n != 1
        on_replica += rec
    assert stale == 0, "%d stale reads" % stale
    # and reads that follow no recent write do go to the replicas
    time.sleep(0.8)
    assert where(c)[1] is True


@pytest.mark.deadline(180)
def test_eventual_consistency_may_read_stale(pgscale, primary, replicas_ctl, rtable):
    replicas = replicas_ctl
    replicas.set_apply_delay(0, 500)
    replicas.set_apply_delay(1, 500)
    pg = start(pgscale, primary, replicas, PGSCALE_CONSISTENCY="eventual",
               PGSCALE_MAX_REPLICA_LAG="0")
    c = pg.connect()
    stale = 0
    for i in range(20):
        with c.cursor() as cur:
            cur.execute("INSERT INTO rw_t VALUES (%s, 'e')", (5000 + i,))
            cur.execute("SELECT count(*) FROM rw_t WHERE id = %s", (5000 + i,))
            stale += cur.fetchone()[0] == 0
    assert stale > 0, "eventual: a read right after a write went to the primary every time"


@pytest.mark.deadline(180)
def test_read_your_writes_with_lagging_replicas_asyncpg_prepared(pgscale, primary, replicas_ctl,
                                                                 rtable):
    replicas = replicas_ctl
    replicas.set_apply_delay(0, 300)
    replicas.set_apply_delay(1, 300)
    pg = start(pgscale, primary, replicas)

    async def run():
        conn = await aconnect(pg)
        ins = await conn.prepare("INSERT INTO rw_t VALUES ($1, 'a')")
        sel = await conn.prepare("SELECT count(*), " + ON_STANDBY + " FROM rw_t WHERE id = $1")
        stale = 0
        for i in range(rounds(pg, 1000)):
            await ins.fetch(20000 + i)
            n, _ = await sel.fetchrow(20000 + i)
            stale += n != 1
        await asyncio.sleep(0.8)
        later = await sel.fetchrow(20000)
        await conn.close()
        return stale, later
    stale, later = arun(run(), timeout=150)
    assert stale == 0, "%d stale reads" % stale
    assert later == (1, True), later  # caught up: the prepared read runs on a replica


@pytest.mark.deadline(180)
def test_read_your_writes_with_lagging_replicas_sqlalchemy(pgscale, primary, replicas_ctl,
                                                           rtable):
    replicas = replicas_ctl
    import sqlalchemy as sa
    from sqlalchemy.orm import Session
    replicas.set_apply_delay(0, 300)
    replicas.set_apply_delay(1, 300)
    pg = start(pgscale, primary, replicas)
    engine = sa.create_engine("postgresql+psycopg2://app:%s@%s:%d/app"
                              % (APP_PASSWORD, pg.host, pg.port), pool_size=2)
    stale = 0
    try:
        for i in range(rounds(pg, 300)):
            with Session(engine) as s:
                s.execute(sa.text("INSERT INTO rw_t VALUES (:i, 's')"), {"i": 30000 + i})
                s.commit()
            with Session(engine) as s:
                stale += s.execute(sa.text("SELECT count(*) FROM rw_t WHERE id = :i"),
                                   {"i": 30000 + i}).scalar() != 1
        # an autocommit read on its own may use a replica
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            time.sleep(0.8)
            assert conn.execute(sa.text("SELECT " + ON_STANDBY)).scalar() is True
    finally:
        engine.dispose()
    assert stale == 0, "%d stale reads" % stale


@pytest.mark.deadline(120)
def test_strict_consistency_across_two_connections(pgscale, primary, replicas_ctl, rtable):
    replicas = replicas_ctl
    replicas.set_apply_delay(0, 300)
    replicas.set_apply_delay(1, 300)
    pg = start(pgscale, primary, replicas, PGSCALE_CONSISTENCY="strict")
    writer, reader = pg.connect(), pg.connect()
    stale = 0
    for i in range(rounds(pg, 300)):
        with writer.cursor() as cur:
            cur.execute("INSERT INTO rw_t VALUES (%s, 'w')", (40000 + i,))
        with reader.cursor() as cur:
            cur.execute("SELECT count(*) FROM rw_t WHERE id = %s", (40000 + i,))
            stale += cur.fetchone()[0] != 1
    assert stale == 0, "%d stale reads by the other connection" % stale


def test_a_stopped_replica_is_skipped_and_comes_back(pgscale, primary, replicas_ctl, rtable):
    replicas = replicas_ctl
    pg = start(pgscale, primary, replicas)
    c = pg.connect()
    replicas.stop(0)
    try:
        wait_for(lambda: {r["node"]: r["state"] for r in pg.admin("SHOW NODES")}["replica1"]
                 == "down", 10, what="replica1 down in SHOW NODES")
        for _ in range(30):
            port, rec = where(c)
            assert rec is True and port == ports_of(replicas)[1], (port, rec)
    finally:
        replicas.start(0)
    wait_for(lambda: {r["node"]: r["state"] for r in pg.admin("SHOW NODES")}["replica1"]
             == "up", 15, what="replica1 up again")
    seen = {where(c)[0] for _ in range(20)}
    assert seen == set(ports_of(replicas)), seen


def test_a_replica_beyond_max_replica_lag_gets_no_reads(pgscale, primary, replicas_ctl, rtable):
    replicas = replicas_ctl
    replicas.set_apply_delay(0, 3000)
    pg = start(pgscale, primary, replicas, PGSCALE_MAX_REPLICA_LAG="1s")
    c = pg.connect()
    # a write the delayed replica takes 3 s to apply: its lag grows past 1 s
    primary.app_execute("INSERT INTO rw_t VALUES (7, 'lag')")
    time.sleep(1.5)
    ports = {where(c)[0] for _ in range(20)}
    assert ports == {ports_of(replicas)[1]}, ports


def test_reads_for_a_replica_that_cannot_be_reached_go_elsewhere(pgscale, primary, replicas_ctl,
                                                                  rtable):
    # The monitor checks rarely here, so it still believes replica1 is up
    # after it is killed: the reads routed there find no server, and are
    # routed again (replica2 or the primary) instead of failing.
    replicas = replicas_ctl
    pg = start(pgscale, primary, replicas, PGSCALE_MONITOR_INTERVAL="30s")
    replicas.kill(0)
    c = pg.connect()
    seen = set()
    for _ in range(20):
        seen.add(where(c)[0])
    assert ports_of(replicas)[0] not in seen, seen
    assert ports_of(replicas)[1] in seen, seen
    nodes = {r["node"]: r for r in pg.admin("SHOW NODES")}
    assert nodes["replica1"]["state"] == "down", nodes
    assert "replica1" in pg.stderr_text() and "go elsewhere" in pg.stderr_text()


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_database_alias_at_replica_gives_a_read_only_session_on_a_replica(pgscale, primary,
                                                                         replicas, rtable, mode):
    pg = start(pgscale, primary, replicas, PGSCALE_POOL_MODE=mode)
    plain = pg.connect()
    if mode == "session":
        # session mode without the alias: the primary, reads included
        assert where(plain) == (primary.port, False)
    ro = pg.connect(db="app@replica")
    port, on_standby = where(ro)
    assert on_standby is True and port in ports_of(replicas), port
    if mode == "session":
        assert {where(ro)[0] for _ in range(5)} == {port}  # the same server all session
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        with ro.cursor() as cur:
            cur.execute("INSERT INTO rw_t VALUES (99, 'no')")
    assert primary.app_execute("SELECT count(*) FROM rw_t WHERE id = 99") == [(0,)]
    rows = {r["database"] for r in pg.admin("SHOW CLIENTS")}
    assert "app" in rows and "app@replica" not in rows, rows


def test_a_function_created_through_pgscale_is_known_at_once(pgscale, primary, replicas, rtable):
    # An unknown function is not a read; once pgscale has seen the DDL go
    # through, it reads pg_proc again, and a call of the new immutable
    # function may go to a replica.
    pg = start(pgscale, primary, replicas)
    c = pg.connect()
    with c.cursor() as cur:
        cur.execute("DROP FUNCTION IF EXISTS rw_double(int)")
        cur.execute("CREATE FUNCTION rw_double(int) RETURNS int IMMUTABLE LANGUAGE sql "
                    "AS 'SELECT $1 * 2'")
    replicas.wait_replayed()
    wait_for(lambda: where(c, "SELECT inet_server_port(), rw_double(2) = 4 AND " + ON_STANDBY)[1]
             is True, 5, what="a call of the new function routed to a replica")
    # and a volatile one stays on the primary
    with c.cursor() as cur:
        cur.execute("CREATE OR REPLACE FUNCTION rw_double(int) RETURNS int VOLATILE "
                    "LANGUAGE sql AS 'SELECT $1 * 2'")
    time.sleep(0.5)
    assert where(c, "SELECT inet_server_port(), rw_double(2) = 4 AND " + ON_STANDBY) == \
        (primary.port, False)
    with c.cursor() as cur:
        cur.execute("DROP FUNCTION rw_double(int)")


def _msg(t, payload=b""):
    return pgwire.message(t, payload)


def _parse(name, sql):
    return _msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))


def _bind(stmt):
    return _msg(b"B", b"\0" + stmt.encode() + b"\0" + struct.pack("!HHH", 0, 0, 0))


def _execute():
    return _msg(b"E", b"\0" + struct.pack("!I", 0))


def test_a_batch_with_a_read_then_a_write_before_one_sync_runs_on_the_primary(
        pgscale, primary, replicas, rtable):
    # JDBC batches several statements before one Sync: the unit is judged
    # by every statement in it, not by its first
    pg = start(pgscale, primary, replicas)
    with pgwire.RawConn(pg.host, pg.port, timeout=10) as c:
        c.startup()
        c.send(_parse("", WHERE) + _bind("") + _execute() +
               _parse("", "INSERT INTO rw_t VALUES (8, 'batch') RETURNING inet_server_port()") +
               _bind("") + _execute() + _msg(b"S"))
        msgs = c.read_until_ready(timeout=10)
        assert not pgwire.errors(msgs), pgwire.errors(msgs)
        rows = pgwire.data_rows(msgs)
        assert rows == [[str(primary.port), "f"], [str(primary.port)]], rows
        # and the read alone, as a unit of its own, goes to a replica once
        # the replicas have replayed this client's write
        def read_alone():
            c.send(_parse("", WHERE) + _bind("") + _execute() + _msg(b"S"))
            return pgwire.data_rows(c.read_until_ready(timeout=10))[0][1] == "t"
        wait_for(read_alone, 10, what="the read alone on a replica")
    assert primary.app_execute("SELECT v FROM rw_t WHERE id = 8") == [("batch",)]
