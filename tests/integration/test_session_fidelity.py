"""Session mode as a direct connection: the backend pid a driver is told is
its server's real pid (and cancel still works through pgscale's key check),
a FATAL from the server reaches the client exactly as PostgreSQL sends it,
notifications arrive while the client is idle, and messages pipelined after
the start-up packet are handled as PostgreSQL handles them.  Transaction
mode keeps its own pid, and a server's FATAL there costs the client only
the statement (transaction) that was running, not its connection.

Where it makes sense the same scenario runs directly against PostgreSQL and
through pgscale, and the answers are compared."""
import asyncio
import select
import struct
import threading
import time

import psycopg2
import pytest

import pgwire
from helpers import APP_PASSWORD, BOTH_MODES, aconnect, arun, wait_for


def session(pgscale, **env):
    return pgscale(PGSCALE_POOL_MODE="session", **env)


def direct(primary):
    conn = psycopg2.connect(primary.dsn("app", "app", APP_PASSWORD))
    conn.autocommit = True
    return conn


def backend_pid(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def app_pids(primary):
    rows = primary.execute("SELECT pid FROM pg_stat_activity WHERE usename = 'app'")
    return {r[0] for r in rows}


# -- 1. the real backend pid ---------------------------------------------------------------
def test_session_psycopg2_backend_pid_is_the_servers_real_pid(pgscale, primary):
    pg = session(pgscale)
    conn = pg.connect()
    pid = conn.get_backend_pid()
    assert pid == backend_pid(conn)
    assert pid in app_pids(primary)


def test_session_asyncpg_server_pid_is_the_servers_real_pid(pgscale, primary):
    pg = session(pgscale)

    async def go():
        conn = await aconnect(pg)
        try:
            return conn.get_server_pid(), await conn.fetchval("SELECT pg_backend_pid()")
        finally:
            await conn.close()

    told, real = arun(go())
    assert told == real


def test_transaction_mode_keeps_pgscales_own_pid(pgscale, primary):
    pg = pgscale(PGSCALE_POOL_MODE="transaction")
    conn = pg.connect()
    # pgscale's pid encodes worker and client, not a backend of PostgreSQL
    assert conn.get_backend_pid() not in app_pids(primary)


def test_session_cancel_with_the_real_pid_cancels_the_query(pgscale, primary):
    pg = session(pgscale)
    conn = pg.connect()
    timer = threading.Timer(0.5, conn.cancel)
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(psycopg2.errors.QueryCanceled):
            with conn.cursor() as cur:
                cur.execute("SELECT pg_sleep(20)")
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 5
    assert backend_pid(conn) == conn.get_backend_pid()


def test_session_cancel_with_the_real_pid_and_a_wrong_key_is_ignored(pgscale, primary):
    pg = session(pgscale)
    with pgwire.RawConn(pg.host, pg.port) as c:
        c.startup()
        pid, key = c.backend_key
        assert pid in app_pids(primary)
        c.send(pgwire.query("SELECT pg_sleep(1.5)"))
        time.sleep(0.3)
        pgwire.send_cancel(pg.host, pg.port, pid, (key + 1) & 0xFFFFFFFF)
        msgs = c.read_until_ready(timeout=10)
        assert not pgwire.errors(msgs), msgs
        # the right key (pgscale's, not the server's) does cancel
        c.send(pgwire.query("SELECT pg_sleep(20)"))
        time.sleep(0.3)
        pgwire.send_cancel(pg.host, pg.port, pid, key)
        msgs = c.read_until_ready(timeout=10)
        assert [e["C"] for e in pgwire.errors(msgs)] == ["57014"]


def test_session_login_waits_for_a_server_and_times_out_like_a_query(pgscale, primary):
    pg = session(pgscale, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=1)
    holder = pg.connect()
    assert backend_pid(holder) in app_pids(primary)
    with pgwire.RawConn(pg.host, pg.port) as c:
        t0 = time.monotonic()
        msgs = c.startup()
        errs = pgwire.errors(msgs)
        assert [e["C"] for e in errs] == ["53300"], msgs
        assert "is full" in errs[0]["M"] and "DB_POOL_SIZE" in errs[0]["H"]
        assert time.monotonic() - t0 < 5
        assert not any(t == b"K" for t, _ in msgs)


def test_session_client_leaving_while_waiting_at_login_is_dropped_from_the_queue(pgscale,
                                                                                  primary):
    # trust: the client is past its login at once, waiting for a server
    pg = session(pgscale, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=30,
                 PGSCALE_AUTH_TYPE="trust")
    holder = pg.connect()
    backend_pid(holder)
    c = pgwire.RawConn(pg.host, pg.port)
    c.send(pgwire.startup_packet())
    wait_for(lambda: int(pg.pool()["cl_waiting"]) == 1, 5, what="a client waiting at login")
    c.close()
    wait_for(lambda: int(pg.pool()["cl_waiting"]) == 0, 5, what="the queue to be empty")
    holder.close()
    # the server goes to the next client at once, not to the one that left
    conn = pg.connect()
    assert backend_pid(conn) == conn.get_backend_pid()


# -- 2. a FATAL from the server ------------------------------------------------------------
def terminated_idle(port, primary, through_pgscale):
    """Messages a raw client gets when its backend is terminated while it is idle."""
    with pgwire.RawConn("127.0.0.1", port) as c:
        c.startup()
        msgs = c.simple_query("SELECT pg_backend_pid()")
        pid = int(pgwire.data_rows(msgs)[0][0])
        if through_pgscale:
            assert pid == c.backend_key[0]
        primary.execute("SELECT pg_terminate_backend(%d)" % pid)
        return [(t, pgwire.parse_fields(p).get("C") if t == b"E" else None)
                for t, p in c.read_until_close(timeout=10)]


def test_session_fatal_reaches_the_client_as_from_postgresql(pgscale, primary):
    pg = session(pgscale)
    want = terminated_idle(primary.port, primary, False)
    got = terminated_idle(pg.port, primary, True)
    assert want == [(b"E", "57P01")]
    assert got == want


def test_session_fatal_during_a_query_reaches_the_client_as_from_postgresql(pgscale, primary):
    pg = session(pgscale)

    def run(port):
        with pgwire.RawConn("127.0.0.1", port) as c:
            c.startup()
            pid = int(pgwire.data_rows(c.simple_query("SELECT pg_backend_pid()"))[0][0])
            c.send(pgwire.query("SELECT pg_sleep(20)"))
            time.sleep(0.3)
            primary.execute("SELECT pg_terminate_backend(%d)" % pid)
            return [(t, pgwire.parse_fields(p).get("C") if t == b"E" else None)
                    for t, p in c.read_until_close(timeout=10)]

    want = run(primary.port)
    assert (b"E", "57P01") in want
    assert run(pg.port) == want


def test_session_asyncpg_sees_the_terminate_as_from_postgresql(pgscale, primary):
    pg = session(pgscale)

    async def go(target):
        conn = await aconnect(target)
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        primary.execute("SELECT pg_terminate_backend(%d)" % pid)
        await asyncio.sleep(0.3)
        try:
            await conn.fetchval("SELECT 1")
        except Exception as e:  # noqa: BLE001 - the class is what is compared
            return type(e).__name__, str(e), conn.is_closed()
        return None

    want = arun(go(primary))
    got = arun(go(pg))
    assert want is not None and want[2]
    assert got == want


def test_transaction_mode_fatal_fails_the_running_statement_only(pgscale, primary):
    pg = pgscale(PGSCALE_POOL_MODE="transaction")
    conn = pg.connect()
    box = {}

    def sleeper():
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_sleep(20)")
        except psycopg2.Error as e:
            box["err"] = e

    t = threading.Thread(target=sleeper)
    t.start()
    pid = wait_for(lambda: primary.execute(
        "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(20)' AND usename = 'app'"),
        5, what="the sleeping backend")[0][0]
    primary.execute("SELECT pg_terminate_backend(%d)" % pid)
    t.join(10)
    assert not t.is_alive()
    err = box.get("err")
    assert err is not None and err.pgcode == "57P01", err
    assert "terminated" in str(err)
    assert conn.closed == 0
    with conn.cursor() as cur:
        cur.execute("SELECT 42")
        assert cur.fetchone() == (42,)


def test_transaction_mode_fatal_while_idle_in_transaction_fails_the_next_statement(pgscale,
                                                                                  primary):
    pg = pgscale(PGSCALE_POOL_MODE="transaction")
    primary.app_execute("DROP TABLE IF EXISTS sf_lost; CREATE TABLE sf_lost (x int)")
    with pgwire.RawConn(pg.host, pg.port) as c:
        c.startup()
        msgs = c.simple_query("BEGIN; INSERT INTO sf_lost VALUES (1); SELECT pg_backend_pid()")
        assert pgwire.ready_status(msgs) == "T"
        pid = int(pgwire.data_rows(msgs)[0][0])
        primary.execute("SELECT pg_terminate_backend(%d)" % pid)
        wait_for(lambda: pid not in app_pids(primary), 5, what="the backend to end")
        # the client is told nothing unasked; its next statement gets the error
        msgs = c.simple_query("INSERT INTO sf_lost VALUES (2)")
        assert [e["C"] for e in pgwire.errors(msgs)] == ["57P01"], msgs
        assert pgwire.errors(msgs)[0]["S"] == "ERROR"
        assert pgwire.ready_status(msgs) == "I"
        # ... and did not run outside the transaction it believed it was in
        assert primary.app_execute("SELECT count(*) FROM sf_lost") == [(0,)]
        msgs = c.simple_query("SELECT 1")
        assert pgwire.data_rows(msgs) == [["1"]]


# -- 3. notifications ------------------------------------------------------------------------
def test_session_psycopg2_idle_listener_gets_notifications_at_once_with_real_pids(pgscale,
                                                                                 primary):
    pg = session(pgscale)
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("LISTEN sf_chan")
    sender = direct(primary)
    sender_pid = backend_pid(sender)
    with sender.cursor() as cur:
        cur.execute("NOTIFY sf_chan, 'hello'")
    t0 = time.monotonic()
    r, _, _ = select.select([conn], [], [], 1.0)
    assert r, "no notification within a second"
    conn.poll()
    assert [(n.pid, n.channel, n.payload) for n in conn.notifies] == [(sender_pid, "sf_chan",
                                                                       "hello")]
    assert time.monotonic() - t0 < 1.0
    # its own notification carries its own pid, as pg_backend_pid() says
    del conn.notifies[:]
    with conn.cursor() as cur:
        cur.execute("NOTIFY sf_chan, 'self'")
    conn.poll()
    assert [(n.pid, n.payload) for n in conn.notifies] == [(conn.get_backend_pid(), "self")]
    assert conn.get_backend_pid() == backend_pid(conn)
    sender.close()


def test_session_asyncpg_listener_gets_notifications_at_once_with_real_pids(pgscale, primary):
    pg = session(pgscale)
    sender = direct(primary)
    sender_pid = backend_pid(sender)

    async def go():
        conn = await aconnect(pg)
        got = asyncio.Queue()
        await conn.add_listener("sf_chan", lambda c, pid, ch, payload: got.put_nowait(
            (pid, payload)))
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: sender.cursor().execute("NOTIFY sf_chan, 'hello'"))
        first = await asyncio.wait_for(got.get(), 1.0)
        await conn.execute("NOTIFY sf_chan, 'self'")
        own = await asyncio.wait_for(got.get(), 1.0)
        mine = await conn.fetchval("SELECT pg_backend_pid()")
        told = conn.get_server_pid()
        await conn.close()
        return first, own, mine, told

    first, own, mine, told = arun(go())
    assert first == (sender_pid, "hello")
    assert own == (mine, "self")
    assert told == mine
    sender.close()


# -- 4. start-up like PostgreSQL -------------------------------------------------------------
def pipelined(port, data, scram=None):
    """(type, SQLSTATE) of what comes back for `data` sent in one packet,
    up to the close or the first ReadyForQuery after a complete login."""
    out = []
    with pgwire.RawConn("127.0.0.1", port) as c:
        c.send(data)
        while True:
            try:
                m = c.recv_msg(timeout=5)
            except pgwire.ProtocolTimeout:
                out.append("timeout")
                return out
            if m is None:
                out.append("close")
                return out
            t, p = m
            if t == b"R":
                code = struct.unpack("!I", p[:4])[0]
                out.append(("R", code))
                if code == 11 and scram:
                    c.send(pgwire.message(b"p", scram.client_final(p[4:])))
            elif t in (b"E", b"N"):
                f = pgwire.parse_fields(p)
                out.append((t.decode(), f.get("C"), f.get("S"), f.get("M")))
            elif t in (b"S", b"K"):
                continue
            else:
                out.append(t.decode())


def sasl_initial(scram):
    first = scram.client_first()
    return pgwire.message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)


@BOTH_MODES
@pytest.mark.parametrize("case", ["terminate", "query", "sasl"])
def test_messages_pipelined_after_the_startup_packet_as_postgresql(pgscale, primary, pool_mode,
                                                                   case):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    results = []
    for port in (primary.port, pg.port):
        data = pgwire.startup_packet()
        scram = None
        if case == "terminate":
            data += pgwire.terminate()
        elif case == "query":
            data += pgwire.query("SELECT 1")
        else:
            scram = pgwire._Scram(APP_PASSWORD)
            data += sasl_initial(scram) + pgwire.query("SELECT 1") + pgwire.terminate()
        results.append(pipelined(port, data, scram))
    want, got = results
    assert "timeout" not in want
    assert got == want


@BOTH_MODES
@pytest.mark.parametrize("case", ["terminate", "query"])
def test_messages_pipelined_after_the_startup_packet_with_trust(pgscale, primary, pool_mode,
                                                                case):
    # no password asked: the pipelined messages run after the welcome
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, PGSCALE_AUTH_TYPE="trust")
    if case == "terminate":
        got = pipelined(pg.port, pgwire.startup_packet() + pgwire.terminate())
        assert got == [("R", 0), "Z", "close"]
        return
    with pgwire.RawConn(pg.host, pg.port) as c:
        c.send(pgwire.startup_packet() + pgwire.query("SELECT 1"))
        msgs = c.read_until_ready(timeout=5) + c.read_until_ready(timeout=5)
        assert [t for t, _ in msgs if t not in (b"S", b"K")] == [b"R", b"Z", b"T", b"D", b"C",
                                                                  b"Z"]
        assert pgwire.data_rows(msgs) == [["1"]]
