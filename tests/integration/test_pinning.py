"""Pinning in transaction mode: session state that cannot follow a client to
another server connection (temporary tables, WITH HOLD cursors, LISTEN,
session-level advisory locks, SQL PREPARE) keeps the client on its server
until the state is provably gone; bounded per pool by max_pinned; a pinned
client that leaves takes its server connection with it."""
import asyncio
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import psycopg2.errors
import pytest

import pgwire
from helpers import APP_DB, aconnect, arun, wait_for
from test_protocol import SYNC, bind, connect, execute, parse, types


def _one(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone() if cur.description else None


def small_pool(pgscale, **env):
    env.setdefault("DB_POOL_SIZE", 2)
    env.setdefault("DB_MAX_OVERFLOW", 0)
    return pgscale(PGSCALE_POOL_MODE="transaction", **env)


def client_row(pg, app_name):
    rows = [r for r in pg.admin("SHOW CLIENTS") if r["application_name"] == app_name]
    assert len(rows) == 1, rows
    return rows[0]


def sv_pinned(pg):
    return int(pg.pool()["sv_pinned"])


class Hammer:
    """Other clients using the pool while the test runs: each runs short
    transactions and records the backend pids it saw."""

    def __init__(self, pg, n=3):
        self.pg, self.n = pg, n
        self.pids = set()
        self.errors = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self):
        try:
            conn = psycopg2.connect(self.pg.dsn(application_name="hammer"))
            conn.autocommit = True
            try:
                while not self._stop.is_set():
                    self.pids.add(_one(conn, "SELECT pg_backend_pid()")[0])
                    time.sleep(0.002)
            finally:
                conn.close()
        except Exception as e:  # reported by __exit__
            self.errors.append(e)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(20)
        assert not self.errors, self.errors


def assert_moves_again(pg, pid):
    """The server `pid` is back in the pool: two other clients that each hold
    a server (pool of 2) in a transaction get it."""
    b1, b2 = pg.connect(autocommit=False), pg.connect(autocommit=False)
    got = {_one(b1, "SELECT pg_backend_pid()")[0], _one(b2, "SELECT pg_backend_pid()")[0]}
    b1.rollback()
    b2.rollback()
    assert pid in got, "the released server %d was not handed to other clients (got %r)" % (
        pid, got)


# -- each reason, psycopg2 -------------------------------------------------------------
def test_temp_table_created_outside_a_transaction_stays_usable_psycopg2(pgscale):
    pg = small_pool(pgscale)
    a = pg.connect(application_name="pin-a")
    _one(a, "CREATE TEMP TABLE pin_t (x int)")
    pid = _one(a, "SELECT pg_backend_pid()")[0]
    with Hammer(pg) as h:
        for i in range(10):
            with a:  # one transaction each
                a.autocommit = False
                _one(a, "INSERT INTO pin_t VALUES (%s)", (i,))
                assert _one(a, "SELECT count(*), pg_backend_pid() FROM pin_t") == (i + 1, pid)
            a.autocommit = True
            time.sleep(0.01)
    assert pid not in h.pids, "the pinned server served another client"
    assert h.pids, "the other clients ran nothing"
    assert client_row(pg, "pin-a")["pinned"] == "temp"
    assert sv_pinned(pg) == 1


def test_temp_table_in_a_transaction_pins_unless_on_commit_drop(pgscale):
    pg = small_pool(pgscale)
    a = pg.connect(autocommit=False, application_name="pin-a")
    _one(a, "CREATE TEMP TABLE gone_t (x int) ON COMMIT DROP")
    a.commit()
    assert client_row(pg, "pin-a")["pinned"] == ""
    _one(a, "CREATE TEMP TABLE kept_t (x int)")
    a.commit()
    assert client_row(pg, "pin-a")["pinned"] == "temp"
    with Hammer(pg):
        for _ in range(5):
            assert _one(a, "SELECT count(*) FROM kept_t") == (0,)
            a.commit()


def test_listen_gets_notify_while_idle_psycopg2(pgscale):
    pg = small_pool(pgscale)
    listener = pg.connect(application_name="pin-listener")
    _one(listener, "LISTEN pin_chan")
    assert client_row(pg, "pin-listener")["pinned"] == "listen"
    with Hammer(pg):
        time.sleep(0.2)
        notifier = pg.connect()
        t0 = time.monotonic()
        _one(notifier, "NOTIFY pin_chan, 'hello'")
        while not listener.notifies and time.monotonic() - t0 < 1.0:
            if select.select([listener], [], [], 0.1)[0]:
                listener.poll()
    assert [(n.channel, n.payload) for n in listener.notifies] == [("pin_chan", "hello")], \
        "no notification within a second"


def test_with_hold_cursor_fetched_after_commit_psycopg2(pgscale):
    pg = small_pool(pgscale)
    a = pg.connect(autocommit=False, application_name="pin-a")
    _one(a, "DECLARE pin_c CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 10) g")
    a.commit()
    assert client_row(pg, "pin-a")["pinned"] == "hold"
    with Hammer(pg):
        for want in (1, 2, 3):
            assert _one(a, "FETCH 1 FROM pin_c") == (want,)
            a.commit()


def locks_held(primary, key):
    return primary.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = %s",
        (key,))


def assert_lock_held_by(primary, key, pid):
    """On PostgreSQL itself: the lock is the client's backend's, and another
    connection (to the same database: advisory locks are per database)
    cannot take it."""
    assert locks_held(primary, key) == [(pid,)]
    assert primary.execute("SELECT pg_try_advisory_lock(%s)", (key,), db=APP_DB) == [(False,)]


def test_session_advisory_lock_held_across_transactions_psycopg2(pgscale, primary):
    pg = small_pool(pgscale)
    a = pg.connect(application_name="pin-a")
    _one(a, "SELECT pg_advisory_lock(771001)")
    pid = _one(a, "SELECT pg_backend_pid()")[0]
    assert client_row(pg, "pin-a")["pinned"] == "lock"
    with Hammer(pg):
        for _ in range(5):
            a.autocommit = False
            assert _one(a, "SELECT pg_backend_pid()") == (pid,)
            a.commit()
            a.autocommit = True
            assert_lock_held_by(primary, 771001, pid)
    _one(a, "SELECT pg_advisory_unlock_all()")
    assert locks_held(primary, 771001) == []


def test_sql_prepare_then_execute_in_later_transactions_psycopg2(pgscale):
    pg = small_pool(pgscale)
    a = pg.connect(application_name="pin-a")
    _one(a, "PREPARE pin_q(int) AS SELECT $1 * 2")
    assert client_row(pg, "pin-a")["pinned"] == "prepare"
    with Hammer(pg):
        for i in range(5):
            assert _one(a, "EXECUTE pin_q(%s)", (i,)) == (i * 2,)


# -- each reason, asyncpg --------------------------------------------------------------
def test_each_reason_with_asyncpg(pgscale, primary):
    pg = small_pool(pgscale, DB_POOL_SIZE=4, PGSCALE_MAX_PINNED=2)

    async def go():
        other = [await aconnect(pg) for _ in range(2)]
        stop = False

        async def hammer(c):
            while not stop:
                await c.fetchval("SELECT 1")
                await asyncio.sleep(0.002)

        tasks = [asyncio.ensure_future(hammer(c)) for c in other]
        try:
            # temp table, hold cursor, SQL PREPARE: one client, three reasons
            a = await aconnect(pg, server_settings={"application_name": "pin-async-a"})
            await a.execute("CREATE TEMP TABLE pin_at (x int)")
            await a.execute("DECLARE pin_ac CURSOR WITH HOLD FOR SELECT generate_series(1, 5)")
            await a.execute("PREPARE pin_aq AS SELECT 42")
            for i in range(5):
                async with a.transaction():
                    await a.execute("INSERT INTO pin_at VALUES ($1)", i)
                assert await a.fetchval("SELECT count(*) FROM pin_at") == i + 1
                assert await a.fetchval("FETCH 1 FROM pin_ac") == i + 1
                assert await a.fetchval("EXECUTE pin_aq") == 42
            reasons_a = client_row(pg, "pin-async-a")["pinned"]

            # advisory lock through the extended protocol (a named Parse)
            b = await aconnect(pg, server_settings={"application_name": "pin-async-b"})
            await b.fetchval("SELECT pg_advisory_lock($1)", 771002)
            bpid = await b.fetchval("SELECT pg_backend_pid()")
            for _ in range(3):
                async with b.transaction():
                    assert await b.fetchval("SELECT pg_backend_pid()") == bpid
            assert_lock_held_by(primary, 771002, bpid)
            await b.execute("SELECT pg_advisory_unlock_all()")

            # LISTEN (asyncpg's add_listener), NOTIFY from another client
            got = asyncio.get_event_loop().create_future()
            await b.add_listener("pin_achan", lambda *args: got.done() or got.set_result(args[3]))
            await asyncio.sleep(0.1)
            notifier = await aconnect(pg)  # (the hammering clients are busy)
            await notifier.execute("NOTIFY pin_achan, 'hi'")
            payload = await asyncio.wait_for(got, 1.0)
            await notifier.close()
            reasons_b = client_row(pg, "pin-async-b")["pinned"]
            await a.close()
            await b.close()
            return reasons_a, reasons_b, payload
        finally:
            stop = True
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in other:
                await c.close()

    reasons_a, reasons_b, payload = arun(go())
    assert reasons_a == "temp,hold,prepare"
    assert reasons_b == "listen"
    assert payload == "hi"


# -- release paths ---------------------------------------------------------------------
RELEASES = [
    ("CREATE TEMP TABLE rel_t (x int)", "DISCARD TEMP"),
    ("CREATE TEMP TABLE rel_t (x int)", "DISCARD ALL"),
    ("LISTEN rel_chan", "UNLISTEN *"),
    ("DECLARE rel_c CURSOR WITH HOLD FOR SELECT 1", "CLOSE ALL"),
    ("SELECT pg_advisory_lock(771003)", "SELECT pg_advisory_unlock_all()"),
    ("PREPARE rel_q AS SELECT 1", "DEALLOCATE ALL"),
]


@pytest.mark.parametrize("setup,release", RELEASES, ids=[r for _, r in RELEASES])
def test_release_gives_the_server_back(pgscale, setup, release):
    pg = small_pool(pgscale)
    a = pg.connect(application_name="pin-a")
    _one(a, setup)
    pid = _one(a, "SELECT pg_backend_pid()")[0]
    assert sv_pinned(pg) == 1
    assert client_row(pg, "pin-a")["server_id"] is not None
    _one(a, release)
    assert sv_pinned(pg) == 0
    row = client_row(pg, "pin-a")
    assert (row["pinned"], row["server_id"]) == ("", None), row
    assert_moves_again(pg, pid)


def test_release_inside_a_transaction_keeps_the_pin(pgscale):
    pg = small_pool(pgscale)
    a = pg.connect(application_name="pin-a")
    _one(a, "CREATE TEMP TABLE rel_t (x int)")
    a.autocommit = False
    _one(a, "DISCARD TEMP")
    a.rollback()  # the temp table is back
    a.autocommit = True
    assert client_row(pg, "pin-a")["pinned"] == "temp"
    assert _one(a, "SELECT count(*) FROM rel_t") == (0,)


def test_one_reason_released_keeps_the_others(pgscale):
    pg = small_pool(pgscale)
    a = pg.connect(application_name="pin-a")
    _one(a, "LISTEN both_chan")
    _one(a, "CREATE TEMP TABLE both_t (x int)")
    _one(a, "UNLISTEN *")
    assert client_row(pg, "pin-a")["pinned"] == "temp"
    assert sv_pinned(pg) == 1
    _one(a, "DISCARD TEMP")
    assert client_row(pg, "pin-a")["pinned"] == ""
    assert sv_pinned(pg) == 0


# -- the cap, and pinning off ------------------------------------------------------------
def test_max_pinned_refuses_the_next_client_with_0A000(pgscale):
    pg = small_pool(pgscale, DB_POOL_SIZE=3, PGSCALE_MAX_PINNED=1)
    a, b = pg.connect(), pg.connect()
    _one(a, "LISTEN cap_chan")
    with pytest.raises(psycopg2.errors.FeatureNotSupported) as exc:
        _one(b, "CREATE TEMP TABLE cap_t (x int)")
    assert exc.value.pgcode == "0A000"
    assert "max_pinned" in str(exc.value)
    assert _one(b, "SELECT 1") == (1,)  # the refused client carries on
    with pytest.raises(psycopg2.errors.UndefinedTable):
        _one(b, "SELECT * FROM cap_t")  # never created
    _one(a, "UNLISTEN *")
    _one(b, "CREATE TEMP TABLE cap_t (x int)")  # the slot is free again
    assert sv_pinned(pg) == 1


def test_max_pinned_refuses_a_parse_with_0A000(pgscale):
    pg = small_pool(pgscale, DB_POOL_SIZE=3, PGSCALE_MAX_PINNED=1)
    a = pg.connect()
    _one(a, "LISTEN cap_chan")
    c = connect(pg)
    try:
        c.send(parse("", "LISTEN other_chan") + bind("") + execute() + SYNC)
        msgs = c.read_until_ready()
        assert [e["C"] for e in pgwire.errors(msgs)] == ["0A000"], msgs
        assert "max_pinned" in pgwire.errors(msgs)[0]["M"]
        assert types(c.simple_query("SELECT 1")) == b"TDCZ"
    finally:
        c.close()


def test_parse_of_listen_pins(pgscale):
    pg = small_pool(pgscale)
    c = connect(pg, application_name="pin-raw")
    try:
        c.send(parse("", "LISTEN raw_chan") + bind("") + execute() + SYNC)
        assert types(c.read_until_ready()) == b"12CZ"
        assert client_row(pg, "pin-raw")["pinned"] == "listen"
        n = pg.connect()
        _one(n, "NOTIFY raw_chan, 'x'")
        m = c.recv_msg(timeout=1.0)
        assert m is not None and m[0] == b"A", m
    finally:
        c.close()


@pytest.mark.parametrize("sql", [
    "LISTEN off_chan", "CREATE TEMP TABLE off_t (x int)", "PREPARE off_q AS SELECT 1",
    "DECLARE off_c CURSOR WITH HOLD FOR SELECT 1", "SELECT pg_advisory_lock(771004)"])
def test_pinning_off_refuses_session_state_with_0A000(pgscale, sql):
    pg = small_pool(pgscale, PGSCALE_PINNING="off")
    a = pg.connect()
    with pytest.raises(psycopg2.errors.FeatureNotSupported) as exc:
        _one(a, sql)
    assert exc.value.pgcode == "0A000"
    assert sv_pinned(pg) == 0


@pytest.mark.parametrize("sql", ["LISTEN off_chan", "SELECT pg_advisory_lock(771005)"])
def test_refusal_inside_a_transaction_aborts_it_as_postgresql_would(pgscale, primary, sql):
    """A statement refused inside a transaction block fails that transaction,
    as any error does on PostgreSQL: a COMMIT sent anyway rolls back, and
    nothing the transaction did before is kept."""
    primary.app_execute("DROP TABLE IF EXISTS refuse_tx; CREATE TABLE refuse_tx (x int)")
    pg = small_pool(pgscale, PGSCALE_PINNING="off")
    with pgwire.RawConn(pg.host, pg.port) as c:
        assert pgwire.ready_status(c.startup()) == "I"
        for q in ("BEGIN", "INSERT INTO refuse_tx VALUES (1)"):
            c.send(pgwire.query(q))
            assert pgwire.ready_status(c.read_until_ready()) == "T"
        c.send(pgwire.query(sql))
        msgs = c.read_until_ready()
        errs = pgwire.errors(msgs)
        assert [e["C"] for e in errs] == ["0A000"], msgs
        assert errs[0]["H"] == "set PGSCALE_POOL_MODE=session for clients that need it", errs
        assert pgwire.ready_status(msgs) == "E", msgs
        c.send(pgwire.query("COMMIT"))
        msgs = c.read_until_ready()
        assert [m[1] for m in msgs if m[0] == b"C"] == [b"ROLLBACK\0"], msgs
        assert pgwire.ready_status(msgs) == "I"
    assert primary.app_execute("SELECT count(*) FROM refuse_tx")[0][0] == 0
    primary.app_execute("DROP TABLE refuse_tx")


# -- a pinned server serves nobody else; a pinned client that vanishes ----------------
@pytest.mark.deadline(60)
def test_pinned_server_is_never_handed_to_another_client(pgscale):
    pg = small_pool(pgscale, DB_POOL_SIZE=3)
    a = pg.connect()
    _one(a, "CREATE TEMP TABLE mine (x int)")
    pid = _one(a, "SELECT pg_backend_pid()")[0]

    def hammer(i):
        conn = psycopg2.connect(pg.dsn())
        conn.autocommit = True
        try:
            return {_one(conn, "SELECT pg_backend_pid()")[0] for _ in range(40)}
        finally:
            conn.close()

    with ThreadPoolExecutor(12) as ex:
        seen = set().union(*ex.map(hammer, range(12)))
    assert seen and pid not in seen, "the pinned backend %d served other clients" % pid
    assert _one(a, "SELECT count(*), pg_backend_pid() FROM mine") == (0, pid)


@pytest.mark.parametrize("how", ["terminate", "abort"])
def test_vanished_pinned_client_leaves_no_state_behind(pgscale, primary, how):
    pg = small_pool(pgscale, DB_POOL_SIZE=1, PGSCALE_MAX_PINNED=1)
    c = connect(pg)
    for sql in ("CREATE TEMP TABLE vanish_t (x int)", "LISTEN vanish_chan",
                "SELECT pg_advisory_lock(771005)", "SELECT pg_backend_pid()"):
        msgs = c.simple_query(sql)
        assert not pgwire.errors(msgs), msgs
    pid = int(pgwire.data_rows(msgs)[0][0])
    if how == "terminate":
        c.send(pgwire.terminate())
        c.close()
    else:
        c.close(abort=True)
    wait_for(lambda: sv_pinned(pg) == 0, 5, what="sv_pinned back to 0")
    wait_for(lambda: pid not in [b[0] for b in primary.backends()], 5,
             what="the pinned backend to be closed")
    assert locks_held(primary, 771005) == []
    n = pg.connect()
    assert _one(n, "SELECT pg_backend_pid() <> %s", (pid,)) == (True,)
    assert _one(n, "SELECT count(*) FROM pg_listening_channels()") == (0,)
    assert _one(n, "SELECT to_regclass('vanish_t') IS NULL") == (True,)
    _one(n, "SELECT pg_advisory_xact_lock(771005)")  # free


# -- notification sender pids ---------------------------------------------------
def _wait_notifies(conn, n, timeout=2.0):
    t0 = time.monotonic()
    while len(conn.notifies) < n and time.monotonic() - t0 < timeout:
        if select.select([conn], [], [], 0.1)[0]:
            conn.poll()
    return list(conn.notifies)


def test_notification_carries_the_pid_the_sender_was_given_psycopg2(pgscale, primary):
    """Applications compare a notification's pid with their own connection's
    (to skip their own notifications, say): in transaction mode the sender's
    pid is the one pgscale gave the sending client, not its backend's."""
    pg = small_pool(pgscale, DB_POOL_SIZE=3)
    listener = pg.connect(application_name="pid-listener")
    _one(listener, "LISTEN pid_chan")
    own_pid = listener.get_backend_pid()
    backend = _one(listener, "SELECT pg_backend_pid()")[0]
    assert own_pid != backend  # transaction mode: pgscale's own pid
    _one(listener, "NOTIFY pid_chan, 'self'")
    other = pg.connect()
    _one(other, "NOTIFY pid_chan, 'other'")
    direct = primary.connect(user="app", db=APP_DB, password="secret")
    _one(direct, "NOTIFY pid_chan, 'direct'")
    direct_pid = direct.get_backend_pid()
    got = {n.payload: n.pid for n in _wait_notifies(listener, 3)}
    direct.close()
    assert got == {"self": own_pid, "other": other.get_backend_pid(), "direct": direct_pid}, got


def test_notification_carries_the_pid_the_sender_was_given_asyncpg(pgscale):
    pg = small_pool(pgscale, DB_POOL_SIZE=3)

    async def main():
        listener = await aconnect(pg)
        other = await aconnect(pg)
        got = {}
        arrived = asyncio.Event()

        def on_notify(_conn, pid, _channel, payload):
            got[payload] = pid
            if len(got) == 2:
                arrived.set()
        try:
            await listener.add_listener("apid_chan", on_notify)
            await listener.execute("NOTIFY apid_chan, 'self'")
            await other.execute("NOTIFY apid_chan, 'other'")
            await asyncio.wait_for(arrived.wait(), 2)
            return got, listener.get_server_pid(), other.get_server_pid()
        finally:
            await listener.close()
            await other.close()

    got, own, other = arun(main())
    assert got == {"self": own, "other": other}, (got, own, other)
