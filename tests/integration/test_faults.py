"""Bad input and faults, against a real pgscale and a real PostgreSQL: client
garbage, clients and servers vanishing half-way, the primary going away and
coming back, an unreachable or mute server, running out of descriptors, and
many clients disappearing at once.

Every test checks two things: the misbehaving party is told (an
ErrorResponse with the right SQLSTATE, or a closed socket) instead of being
left hanging, and pgscale goes on serving everybody else without leaking
clients, servers, locks or memory.

Tests that stop the primary use `primary_ctl`; conftest runs this file last.
"""
import os
import random
import re
import signal
import socket
import struct
import threading
import time

import psycopg2
import psycopg2.errors
import pytest

import pgwire
from helpers import (APP_DB, APP_PASSWORD, APP_USER, BOTH_MODES, LOCALHOST, fd_count, free_port,
                     proc_kb, wait_for)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _one(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def _in_thread(fn, timeout, what):
    """Runs fn() in a thread; returns ("ok", value) or ("error", exception)
    and fails the test if it is still running after timeout seconds (a hang:
    the test deadline then kills pgscale, which unblocks the thread)."""
    box = {}

    def run():
        try:
            box["ok"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail("%s did not return within %.1f s (pgscale left the client hanging)"
                    % (what, timeout))
    kind = "ok" if "ok" in box else "error"
    return kind, box[kind], time.monotonic() - t0


def _fatal_and_closed(conn, timeout=5.0):
    """Reads until pgscale closes the connection; returns the error field dicts.
    Fails if the peer neither closes nor answers within timeout."""
    try:
        msgs = conn.read_until_close(timeout)
    except pgwire.ProtocolTimeout:
        pytest.fail("pgscale did not close the connection within %.1f s" % timeout)
    assert conn.eof
    assert not [t for t, _ in msgs if t == b"Z"], \
        "ReadyForQuery after a fatal error: %r" % msgs
    return pgwire.errors(msgs)


def _assert_one_fatal(errs, sqlstate):
    assert len(errs) == 1, errs
    e = errs[0]
    assert e.get("S") == "FATAL" and e.get("V", "FATAL") == "FATAL", e
    assert e.get("C") == sqlstate, e
    assert e.get("M"), e
    return e


def _assert_still_serving(pg, before):
    """The client connected before the trouble still works, and a new one can
    connect and query."""
    assert pg.is_running(), "pgscale exited (rc=%s)" % pg.proc.returncode
    assert _one(before, "SELECT 11") == (11,)
    fresh = pg.connect()
    assert _one(fresh, "SELECT 12") == (12,)
    fresh.close()


def _pool_row(pg):
    return pg.pool() or {}


def _pool_settled(pg, clients=0, held=0):
    """SHOW POOLS for app/app once exactly `clients` clients are connected,
    none waits, exactly `held` servers are in use (session mode: one per
    client that has run a query) and none is logging in; None otherwise."""
    r = _pool_row(pg)
    if not r:
        return None
    if (int(r["cl_active"]) == clients and int(r["cl_waiting"]) == 0 and
            int(r["sv_active"]) == held and int(r["sv_login"]) == 0 and
            int(r["sv_total"]) == int(r["sv_idle"]) + held):
        return r
    return None


def _held(pool_mode, n):
    """Servers that n connected clients (each has run a query) hold."""
    return n if pool_mode == "session" else 0


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never says a word."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOCALHOST, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                s, _ = self.sock.accept()
                s.setblocking(False)
                self.accepted.append(s)
            except socket.timeout:
                pass
            except OSError:
                return
            for a in self.accepted:   # drain what pgscale sends, answer nothing
                try:
                    self.received += len(a.recv(65536))
                except OSError:
                    pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        for s in self.accepted:
            s.close()
        self.sock.close()


# --------------------------------------------------------------------------
# 1. client garbage
# --------------------------------------------------------------------------
_rng = random.Random(20240229)
_GARBAGE_STARTUP = {
    # random bytes; the first four (the length) are > 10000 for this seed
    "random_bytes": bytes(_rng.getrandbits(8) for _ in range(300)),
    "http_request": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "tls_client_hello": bytes.fromhex("16030100a5010000a10303") + bytes(32),
    "length_0x7fffffff": struct.pack("!II", 0x7FFFFFFF, pgwire.PROTOCOL_V3),
    "length_0x40000000": struct.pack("!II", 0x40000000, pgwire.PROTOCOL_V3) + b"user\0app\0\0",
    "length_negative": struct.pack("!iI", -8, pgwire.PROTOCOL_V3),
    "length_0": struct.pack("!II", 0, pgwire.PROTOCOL_V3),
    "length_4": struct.pack("!II", 4, pgwire.PROTOCOL_V3),
    "length_7": struct.pack("!II", 7, pgwire.PROTOCOL_V3),
    "length_10001": struct.pack("!II", 10001, pgwire.PROTOCOL_V3),
    "unterminated_parameters": (lambda body: struct.pack("!I", len(body) + 4) + body)(
        struct.pack("!I", pgwire.PROTOCOL_V3) + b"user\0app\0database"),
}
assert struct.unpack("!I", _GARBAGE_STARTUP["random_bytes"][:4])[0] > 10000


@pytest.mark.deadline(30)
@pytest.mark.parametrize("case", sorted(_GARBAGE_STARTUP))
def test_garbage_instead_of_startup_packet_gets_08p01_and_close(pgscale, case):
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=5)
    before = pg.connect()
    assert _one(before, "SELECT 1") == (1,)
    with pgwire.RawConn(pg.host, pg.port, timeout=5) as c:
        c.send(_GARBAGE_STARTUP[case])
        errs = _fatal_and_closed(c)
    e = _assert_one_fatal(errs, "08P01")
    assert "startup packet" in e["M"], e
    _assert_still_serving(pg, before)


_GARBAGE_AFTER_LOGIN = {
    "length_0x7fffffff": b"Q" + struct.pack("!I", 0x7FFFFFFF),
    "length_over_max": b"Q" + struct.pack("!I", 0x40000001) + b"SELECT 1",
    "length_negative": b"Q" + struct.pack("!i", -1),
    "length_3": b"Q" + struct.pack("!I", 3) + b"SELECT 1\0",
    "length_0": b"Q" + struct.pack("!I", 0),
    "type_0x01": b"\x01" + struct.pack("!I", 4),
    "type_backend_Z": b"Z" + struct.pack("!I", 5) + b"I",
}


@pytest.mark.deadline(30)
@BOTH_MODES
@pytest.mark.parametrize("case", sorted(_GARBAGE_AFTER_LOGIN))
def test_garbage_after_login_gets_08p01_and_close(pgscale, primary, case, pool_mode):
    # transaction mode with one server: a server not given back after the
    # bad client is thrown out would make `before` fail with 53300
    size = 1 if pool_mode == "transaction" else 3
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, DB_POOL_SIZE=size, DB_MAX_OVERFLOW=0,
                 DB_POOL_TIMEOUT=5)
    before = pg.connect()
    assert _one(before, "SELECT 1") == (1,)
    with pgwire.RawConn(pg.host, pg.port, timeout=5) as c:
        msgs = c.startup()
        assert pgwire.ready_status(msgs) == "I", msgs
        msgs = c.simple_query("SELECT 2")
        assert pgwire.data_rows(msgs) == [["2"]]
        c.send(_GARBAGE_AFTER_LOGIN[case])
        errs = _fatal_and_closed(c)
    e = _assert_one_fatal(errs, "08P01")
    if case.startswith("type_"):
        assert "message type" in e["M"], e
    else:
        assert "length" in e["M"], e
    _assert_still_serving(pg, before)
    wait_for(lambda: _pool_settled(pg, 1, _held(pool_mode, 1)), 5,
             what="no leaked client or server in SHOW POOLS")


# Messages announcing (almost) 1 GB, of the kinds pgscale streams (Q in
# session mode), inspects the start of (Q, B in transaction mode) or keeps
# whole (a named Parse in transaction mode).
_HUGE = 0x40000000 - 1
_ANNOUNCE_1GB = {
    "query": b"Q" + struct.pack("!I", _HUGE) + b"SELECT '" + b"x" * 1000,
    "named_parse": b"P" + struct.pack("!I", _HUGE) + b"stmt_huge\0SELECT '" + b"x" * 1000,
    "bind": b"B" + struct.pack("!I", _HUGE) + b"\0\0" + b"\0" * 1000,
}


@pytest.mark.deadline(40)
@BOTH_MODES
@pytest.mark.parametrize("kind", sorted(_ANNOUNCE_1GB))
def test_announced_1gb_message_is_not_allocated(pgscale, kind, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, DB_POOL_SIZE=12, DB_MAX_OVERFLOW=0,
                 PGSCALE_WORKERS=2)
    before = pg.connect()
    assert _one(before, "SELECT 1") == (1,)
    rss0 = proc_kb(pg.pid, "VmRSS")
    conns = []
    try:
        for _ in range(8):
            c = pgwire.RawConn(pg.host, pg.port, timeout=5)
            conns.append(c)
            assert pgwire.ready_status(c.startup()) == "I"
            c.send(_ANNOUNCE_1GB[kind])
        time.sleep(1.0)
        rss = proc_kb(pg.pid, "VmRSS")
        peak = proc_kb(pg.pid, "VmHWM")
        assert pg.is_running(), "pgscale died (rc=%s)" % pg.proc.returncode
        assert rss < 100 * 1024 and peak - rss0 < 100 * 1024, \
            "pgscale RSS %d kB (peak %d kB, %d kB before) with 8 clients announcing 1 GB " \
            "messages" % (rss, peak, rss0)
        assert _one(before, "SELECT 3") == (3,)
    finally:
        for c in conns:
            c.close(abort=True)
    _assert_still_serving(pg, before)
    assert proc_kb(pg.pid, "VmRSS") < 100 * 1024
    wait_for(lambda: _pool_settled(pg, 1, _held(pool_mode, 1)), 5,
             what="no leaked client or server in SHOW POOLS")


@pytest.mark.deadline(30)
@pytest.mark.parametrize("kind", sorted(_ANNOUNCE_1GB))
def test_announced_1gb_message_reserves_no_memory_up_front(pgscale, kind):
    """Not even address space: a buffer sized from a length field the client
    has not backed with data is 1 GB per connection that a strict-overcommit
    host (vm.overcommit_memory=2, as advised for PostgreSQL hosts) refuses,
    and pgscale aborts when malloc fails."""
    pg = pgscale(DB_POOL_SIZE=6, DB_MAX_OVERFLOW=0, PGSCALE_WORKERS=1)
    before = pg.connect()
    assert _one(before, "SELECT 1") == (1,)
    vm0 = proc_kb(pg.pid, "VmSize")
    conns = []
    try:
        for _ in range(4):
            c = pgwire.RawConn(pg.host, pg.port, timeout=5)
            conns.append(c)
            assert pgwire.ready_status(c.startup()) == "I"
            c.send(_ANNOUNCE_1GB[kind])
        time.sleep(0.5)
        grown = proc_kb(pg.pid, "VmSize") - vm0
        assert pg.is_running()
        assert grown < 256 * 1024, \
            "pgscale's address space grew by %d MB for 4 clients that announced 1 GB %s " \
            "messages and sent ~1 kB of each" % (grown // 1024, kind)
    finally:
        for c in conns:
            c.close(abort=True)
    _assert_still_serving(pg, before)


# --------------------------------------------------------------------------
# 2. clients vanishing mid-message and mid-transaction
# --------------------------------------------------------------------------
@pytest.fixture
def fault_table(primary):
    primary.app_execute("DROP TABLE IF EXISTS fault_t")
    primary.app_execute("CREATE TABLE fault_t (id int PRIMARY KEY, note text)")
    yield "fault_t"
    primary.app_execute("DROP TABLE IF EXISTS fault_t")


def _idle_in_transaction(primary):
    return [b for b in primary.backends() if (b["state"] or "").startswith("idle in transaction")]


@pytest.mark.deadline(30)
@BOTH_MODES
def test_client_vanishing_mid_query_has_its_query_cancelled(pgscale, primary, fault_table,
                                                           pool_mode):
    # The query would hold its table lock for 20 s; the client is gone, so
    # pgscale cancels it instead of leaving it to run.
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    c = pgwire.RawConn(pg.host, pg.port, timeout=10)
    assert pgwire.ready_status(c.startup()) == "I"
    assert pgwire.ready_status(c.simple_query("BEGIN")) == "T"
    assert pgwire.ready_status(c.simple_query("LOCK TABLE %s" % fault_table)) == "T"
    c.send(pgwire.query("SELECT pg_sleep(20)"))
    wait_for(lambda: any((b["query"] or "").startswith("SELECT pg_sleep(20)") and
                         b["state"] == "active" for b in primary.backends()),
             5, what="the sleeping query to start")
    c.close(abort=True)
    t0 = time.monotonic()
    conn = primary.connect(user="app", db="app", password=APP_PASSWORD, autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute("SET lock_timeout = '5s'")
            cur.execute("LOCK TABLE %s" % fault_table)
        conn.rollback()
    finally:
        conn.close()
    assert time.monotonic() - t0 < 5


@pytest.mark.deadline(30)
@BOTH_MODES
@pytest.mark.parametrize("size", ["small", "large"])
def test_client_vanishing_mid_message_leaves_a_clean_server(pgscale, primary, fault_table,
                                                            pool_mode, size):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0,
                 DB_POOL_TIMEOUT=5)
    # "large" is over pgscale's 64 kB inspection window, so part of it is
    # forwarded to the server before the client goes
    pad = "x" * (10 if size == "small" else 300_000)
    msg = pgwire.query("INSERT INTO fault_t VALUES (1, '%s')" % pad)
    with pgwire.RawConn(pg.host, pg.port, timeout=5) as c:
        assert pgwire.ready_status(c.startup()) == "I"
        assert pgwire.ready_status(c.simple_query("SELECT 1")) == "I"
        c.send(msg[:len(msg) // 2])
        time.sleep(0.3)
    # the next client (same one-server pool) gets a working, clean server
    nxt = pg.connect()
    assert _one(nxt, "SELECT count(*) FROM fault_t") == (0,)
    assert _one(nxt, "SELECT 'ok', 1 + 1") == ("ok", 2)
    with nxt.cursor() as cur:
        cur.execute("INSERT INTO fault_t VALUES (2, 'next')")
    assert primary.app_execute("SELECT id FROM fault_t ORDER BY id") == [(2,)]
    assert not _idle_in_transaction(primary)
    wait_for(lambda: _pool_settled(pg, 1, _held(pool_mode, 1)), 5,
             what="no leaked client or server in SHOW POOLS")


@pytest.mark.deadline(40)
@BOTH_MODES
@pytest.mark.parametrize("how", ["rst", "fin"])
def test_client_vanishing_mid_transaction_rolls_back_and_frees_locks(pgscale, primary, fault_table,
                                                                     pool_mode, how):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0,
                 DB_POOL_TIMEOUT=5)
    with pgwire.RawConn(pg.host, pg.port, timeout=5) as c:
        assert pgwire.ready_status(c.startup()) == "I"
        msgs = c.simple_query("BEGIN")
        assert pgwire.ready_status(msgs) == "T", msgs
        msgs = c.simple_query("SELECT pg_backend_pid()")
        vanished_pid = int(pgwire.data_rows(msgs)[0][0])
        for sql in ("INSERT INTO fault_t VALUES (1, 'vanished')",
                    "LOCK TABLE fault_t IN ACCESS EXCLUSIVE MODE",
                    "SELECT pg_advisory_xact_lock(424242)",
                    "SET LOCAL work_mem = '13MB'",
                    "DECLARE fault_cur CURSOR FOR SELECT 1"):
            msgs = c.simple_query(sql)
            assert not pgwire.errors(msgs) and pgwire.ready_status(msgs) == "T", (sql, msgs)
        # the backend is now idle in a transaction holding the locks
        row = primary.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (vanished_pid,))
        assert row == [("idle in transaction",)], row
        c.close(abort=(how == "rst"))

    # pgscale rolls back on its own: nothing stays idle in transaction
    wait_for(lambda: not _idle_in_transaction(primary), 5,
             what="no backend idle in transaction after the client vanished")
    assert primary.app_execute("SELECT count(*) FROM fault_t") == [(0,)]
    # no lock is left: another session takes both at once
    conn = primary.connect(APP_USER, APP_DB, APP_PASSWORD, autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '1s'")
            cur.execute("LOCK TABLE fault_t IN ACCESS EXCLUSIVE MODE NOWAIT")
            cur.execute("SELECT pg_try_advisory_xact_lock(424242)")
            assert cur.fetchone() == (True,)
        conn.rollback()
    finally:
        conn.close()

    # the next client lands on the same (cleaned) server, outside any transaction
    with pgwire.RawConn(pg.host, pg.port, timeout=5) as c:
        assert pgwire.ready_status(c.startup()) == "I"
        msgs = c.simple_query("SELECT pg_backend_pid(), current_setting('work_mem'), "
                              "(SELECT count(*) FROM fault_t), "
                              "(SELECT count(*) FROM pg_cursors)")
        assert not pgwire.errors(msgs), msgs
        assert pgwire.ready_status(msgs) == "I", "next client started inside a transaction"
        assert pgwire.data_rows(msgs) == [[str(vanished_pid), "4MB", "0", "0"]]
        msgs = c.simple_query("BEGIN; LOCK TABLE fault_t IN ACCESS EXCLUSIVE MODE NOWAIT; "
                              "SELECT pg_try_advisory_xact_lock(424242)")
        assert not pgwire.errors(msgs), msgs
        assert pgwire.data_rows(msgs) == [["t"]]
        msgs = c.simple_query("INSERT INTO fault_t VALUES (1, 'next'); COMMIT")
        assert not pgwire.errors(msgs) and pgwire.ready_status(msgs) == "I", msgs
    assert primary.app_execute("SELECT note FROM fault_t") == [("next",)]
    wait_for(lambda: _pool_settled(pg), 5, what="no leaked client or server in SHOW POOLS")


# --------------------------------------------------------------------------
# 3. a server dying mid-query
# --------------------------------------------------------------------------
def _wait_backend_running(primary, needle, timeout=5):
    def find():
        rows = primary.execute(
            "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s "
            "AND pid <> pg_backend_pid()", ("%" + needle + "%",))
        return rows[0][0] if rows else None
    return wait_for(find, timeout, what="a backend running %r" % needle)


@pytest.mark.deadline(40)
@BOTH_MODES
def test_server_terminated_mid_query_tells_the_client_and_pool_recovers(pgscale, primary,
                                                                        fault_table, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, DB_POOL_SIZE=2, DB_MAX_OVERFLOW=0,
                 DB_POOL_TIMEOUT=5)
    # another client in the middle of a transaction on another server
    other = pg.connect(autocommit=False)
    with other.cursor() as cur:
        cur.execute("INSERT INTO fault_t VALUES (1, 'other')")
    with pgwire.RawConn(pg.host, pg.port, timeout=10) as c:
        assert pgwire.ready_status(c.startup()) == "I"
        c.send(pgwire.query("SELECT pg_sleep(30) /* victim-raw */"))
        pid = _wait_backend_running(primary, "victim-raw")
        t0 = time.monotonic()
        assert primary.execute("SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
        if pool_mode == "session":
            # the client's own backend: its FATAL, then the close, as PostgreSQL does
            errs = _fatal_and_closed(c, timeout=5)
        else:
            # the connection is pgscale's: only the running statement fails
            msgs = c.read_until_ready(timeout=5)
            errs = pgwire.errors(msgs)
            assert pgwire.ready_status(msgs) == "I", msgs
        elapsed = time.monotonic() - t0
        if pool_mode == "transaction":
            assert pgwire.data_rows(c.simple_query("SELECT 1")) == [["1"]]
    assert elapsed < 3, "client told only after %.1f s" % elapsed
    assert errs, "the client was not told with an ErrorResponse"
    severity = "FATAL" if pool_mode == "session" else "ERROR"
    assert [(e.get("C"), e.get("S")) for e in errs] == [("57P01", severity)], errs

    # the other client's transaction is unaffected
    with other.cursor() as cur:
        cur.execute("INSERT INTO fault_t VALUES (2, 'other')")
    other.commit()
    other.close()
    assert primary.app_execute("SELECT count(*) FROM fault_t") == [(2,)]
    # the pool recovers: two new clients work at the same time (both servers)
    a, b = pg.connect(autocommit=False), pg.connect(autocommit=False)
    pa = _one(a, "SELECT pg_backend_pid()")[0]
    pb = _one(b, "SELECT pg_backend_pid()")[0]
    assert pid not in (pa, pb) and pa != pb
    a.rollback()
    b.rollback()
    wait_for(lambda: _pool_settled(pg, 2, _held(pool_mode, 2)), 5,
             what="no leaked client or server in SHOW POOLS")
    assert int(_pool_row(pg)["sv_total"]) <= 2


@pytest.mark.deadline(40)
def test_server_terminated_mid_query_raises_in_psycopg2(pgscale, primary):
    pg = pgscale(DB_POOL_SIZE=2, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=5)
    victim = pg.connect()
    bystander = pg.connect()
    assert _one(bystander, "SELECT 1") == (1,)

    box = {}

    def sleep():
        try:
            box["ok"] = _one(victim, "SELECT pg_sleep(30) /* victim-psycopg2 */")
        except Exception as e:  # noqa: BLE001 - checked below
            box["error"] = e
        box["done"] = time.monotonic()

    th = threading.Thread(target=sleep, daemon=True)
    th.start()
    pid = _wait_backend_running(primary, "victim-psycopg2")
    t0 = time.monotonic()
    primary.execute("SELECT pg_terminate_backend(%s)", (pid,))
    th.join(8)
    if th.is_alive():
        pytest.fail("the victim's query did not return within 8 s of the backend's death")
    kind = "ok" if "ok" in box else "error"
    value = box[kind]
    assert box["done"] - t0 < 3, "told after %.1f s" % (box["done"] - t0)
    assert kind == "error", "the query returned %r" % (value,)
    assert isinstance(value, psycopg2.OperationalError), repr(value)
    assert value.pgcode in ("57P01", None), (value.pgcode, str(value))
    assert "terminating connection due to administrator command" in str(value) or \
        "server closed the connection" in str(value), str(value)
    assert _one(bystander, "SELECT 2") == (2,)
    fresh = pg.connect()
    assert _one(fresh, "SELECT 3") == (3,)


# --------------------------------------------------------------------------
# 4. the primary stopped while pgscale runs
# --------------------------------------------------------------------------
def _errors_of_new_client(pg, timeout):
    """Logs in (pgscale may already fail there) and runs a query; returns
    (errors, seconds from the first byte sent to the close)."""
    with pgwire.RawConn(pg.host, pg.port, timeout=timeout) as c:
        t0 = time.monotonic()
        try:
            msgs = c.startup(timeout=timeout)
        except pgwire.ProtocolTimeout:
            pytest.fail("login through pgscale hung for %.1f s" % timeout)
        if c.eof:
            return pgwire.errors(msgs), time.monotonic() - t0
        assert pgwire.ready_status(msgs) == "I", msgs
        t0 = time.monotonic()
        c.send(pgwire.query("SELECT 1"))
        errs = _fatal_and_closed(c, timeout)
        return errs, time.monotonic() - t0


def _transport_url(primary, transport):
    """DATABASE_URL over TCP (the fixture's) or over the primary's socket."""
    if transport == "tcp":
        return primary.url()
    return "postgresql://%s:%s@/%s?host=%s&port=%d" % (APP_USER, APP_PASSWORD, APP_DB,
                                                        primary.sockdir, primary.port)


def _names_server(primary, transport, msg, unix_why):
    """The error names where pgscale connects, and for a socket why it failed."""
    if transport == "tcp":
        return "%s:%d" % (primary.host, primary.port) in msg
    return ('socket "%s/.s.PGSQL.%d"' % (primary.sockdir, primary.port) in msg and
            unix_why in msg)


@pytest.mark.deadline(60)
@BOTH_MODES
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_primary_stopped_gives_clear_error_then_recovers(pgscale, primary_ctl, pool_mode,
                                                         transport):
    primary = primary_ctl
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, DB_POOL_SIZE=2, DB_MAX_OVERFLOW=0,
                 PGSCALE_SERVER_CONNECT_TIMEOUT="1s", DB_POOL_TIMEOUT=10,
                 DATABASE_URL=_transport_url(primary, transport))
    before = pg.connect()
    assert _one(before, "SELECT 1") == (1,)
    primary.stop()
    assert not primary.is_running()

    # a connected client's next query fails promptly
    kind, value, elapsed = _in_thread(lambda: _one(before, "SELECT 2"), 6, "a query while the "
                                      "primary is down")
    assert kind == "error" and isinstance(value, psycopg2.OperationalError), (kind, value)
    assert elapsed < 1 + 2, "error after %.1f s" % elapsed

    # a new client gets 08006 naming the server, within the connect timeout + slack
    errs, elapsed = _errors_of_new_client(pg, 6)
    e = _assert_one_fatal(errs, "08006")
    # a stopped server removes its socket file
    assert _names_server(primary, transport, e["M"], "no such file"), e
    assert elapsed < 1 + 2, "error after %.1f s" % elapsed
    assert pg.is_running()

    primary.start()
    # pgscale serves again without a restart: the first attempt works
    kind, value, elapsed = _in_thread(lambda: _one(pg.connect(), "SELECT 42"), 8,
                                      "the first query after the restart")
    assert kind == "ok" and value == (42,), value
    with pgwire.RawConn(pg.host, pg.port, timeout=5) as c:
        assert pgwire.ready_status(c.startup()) == "I"
        assert pgwire.data_rows(c.simple_query("SELECT 43")) == [["43"]]
    wait_for(lambda: _pool_settled(pg, 1, _held(pool_mode, 1)), 5,
             what="no leaked client or server in SHOW POOLS")


@pytest.mark.deadline(60)
def test_client_waiting_through_a_short_outage_is_served(pgscale, primary_ctl):
    """A query sent while the primary is down waits (pgscale retries the
    connection) and runs once the primary is back, if that is within
    PGSCALE_SERVER_CONNECT_TIMEOUT."""
    primary = primary_ctl
    pg = pgscale(DB_POOL_SIZE=2, DB_MAX_OVERFLOW=0, PGSCALE_SERVER_CONNECT_TIMEOUT="5s",
                 DB_POOL_TIMEOUT=15)
    before = pg.connect()   # the pool learns the server's parameters
    assert _one(before, "SELECT 1") == (1,)
    primary.stop()
    with pgwire.RawConn(pg.host, pg.port, timeout=15) as c:
        assert pgwire.ready_status(c.startup()) == "I"
        t0 = time.monotonic()
        c.send(pgwire.query("SELECT 'served after the outage'"))
        time.sleep(1.0)   # a few connection attempts fail meanwhile
        primary.start()
        restarted = time.monotonic() - t0
        try:
            msgs = c.read_until_ready(12)
        except pgwire.ProtocolTimeout:
            pytest.fail("the waiting query got no answer")
        elapsed = time.monotonic() - t0
    assert not pgwire.errors(msgs), \
        "the primary was back after %.1f s (connect timeout 5 s), yet the waiting client got " \
        "%r after %.1f s" % (restarted, pgwire.errors(msgs), elapsed)
    assert pgwire.data_rows(msgs) == [["served after the outage"]]
    assert elapsed < restarted + 2, "served only %.1f s after the restart" % (elapsed - restarted)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.deadline(90)
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_postmaster_killed_with_sigkill_gives_clients_08006_then_recovers(pgscale, primary_ctl,
                                                                          transport):
    """A real crash of the whole server: the postmaster gets SIGKILL while one
    client's query runs and another client sits idle.  Both are told with
    08006; once PostgreSQL is started again pgscale serves without a
    restart."""
    primary = primary_ctl
    pg = pgscale(DB_POOL_SIZE=2, DB_MAX_OVERFLOW=0, PGSCALE_SERVER_CONNECT_TIMEOUT="1s",
                 DB_POOL_TIMEOUT=10, DATABASE_URL=_transport_url(primary, transport))
    idle = pgwire.RawConn(pg.host, pg.port, timeout=10)
    busy = pgwire.RawConn(pg.host, pg.port, timeout=10)
    try:
        for c in (idle, busy):
            assert pgwire.ready_status(c.startup()) == "I"
            assert pgwire.data_rows(c.simple_query("SELECT 1")) == [["1"]]
        busy.send(pgwire.query("SELECT pg_sleep(30) /* crash-busy */"))
        _wait_backend_running(primary, "crash-busy")
        # every process of the old server, to wait for before restarting it
        # (they hold its shared memory)
        old = [r[0] for r in primary.execute("SELECT pid FROM pg_stat_activity")]
        t0 = time.monotonic()
        os.kill(primary.proc.pid, signal.SIGKILL)
        primary.proc.wait(10)
        # the running query's backend exits without a word: pgscale reports 08006
        errs = _fatal_and_closed(busy, timeout=5)
        assert time.monotonic() - t0 < 3, "told after %.1f s" % (time.monotonic() - t0)
        e = _assert_one_fatal(errs, "08006")
        assert "server connection lost" in e["M"], e
        # the idle client's next query needs a new server, which cannot be had
        idle.send(pgwire.query("SELECT 2"))
        errs = _fatal_and_closed(idle, timeout=6)
        e = _assert_one_fatal(errs, "08006")
        # a killed postmaster leaves its socket file behind: nobody accepts there
        assert _names_server(primary, transport, e["M"], "connection refused"), e
    finally:
        idle.close()
        busy.close()
    assert pg.is_running()
    wait_for(lambda: not any(_pid_alive(p) for p in old), 20, interval=0.1,
             what="the old server's processes to exit")
    primary.stop()   # closes the log of the killed postmaster
    primary.start()
    kind, value, _ = _in_thread(lambda: _one(pg.connect(), "SELECT 42"), 8,
                                "the first query after the restart")
    assert kind == "ok" and value == (42,), value
    with pgwire.RawConn(pg.host, pg.port, timeout=5) as c:
        assert pgwire.ready_status(c.startup()) == "I"
        assert pgwire.data_rows(c.simple_query("SELECT 43")) == [["43"]]


# --------------------------------------------------------------------------
# 5. server unreachable or mute from the start
# --------------------------------------------------------------------------
@pytest.mark.deadline(30)
def test_server_down_at_start_gives_08006_naming_server_and_timeout(pgscale):
    port = free_port()   # nothing listens there
    pg = pgscale(DATABASE_URL="postgresql://%s:%s@%s:%d/%s" % (APP_USER, APP_PASSWORD, LOCALHOST,
                                                               port, APP_DB),
                 PGSCALE_SERVER_CONNECT_TIMEOUT="1s")
    assert pg.is_running()
    errs, elapsed = _errors_of_new_client(pg, 6)
    e = _assert_one_fatal(errs, "08006")
    text = " ".join(e.get(k, "") for k in "MDH")
    problems = []
    if "%s:%d" % (LOCALHOST, port) not in e["M"]:
        problems.append("does not name the server %s:%d" % (LOCALHOST, port))
    if "refused" not in e["M"].lower():
        problems.append("does not say the connection was refused (the actual cause)")
    # the client waited the whole connect timeout while pgscale retried: say so
    if not re.search(r"PGSCALE_SERVER_CONNECT_TIMEOUT|\b1000 ?ms\b|\b1(\.0)? ?s\b", text):
        problems.append("does not mention the connect timeout (1 s) it waited")
    assert not problems, "08006 message %r: %s" % (e, "; ".join(problems))
    assert 0.5 < elapsed < 1 + 2, "error after %.1f s" % elapsed
    # and psycopg2 gets an OperationalError just as promptly
    t0 = time.monotonic()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(pg.dsn()).close()
    assert time.monotonic() - t0 < 1 + 2
    assert pg.is_running()


@pytest.mark.deadline(30)
def test_mute_server_gives_login_timeout_error(pgscale):
    with SilentServer() as mute:
        pg = pgscale(DATABASE_URL="postgresql://%s:%s@%s:%d/%s" % (
                         APP_USER, APP_PASSWORD, LOCALHOST, mute.port, APP_DB),
                     PGSCALE_SERVER_CONNECT_TIMEOUT="1s", PGSCALE_SERVER_LOGIN_TIMEOUT="1s")
        errs, elapsed = _errors_of_new_client(pg, 8)
        e = _assert_one_fatal(errs, "08006")
        assert "%s:%d" % (LOCALHOST, mute.port) in e["M"], e
        assert "timed out" in e["M"] and "1000 ms" in e["M"], e
        assert 0.8 < elapsed < 1 + 1 + 2, "error after %.1f s" % elapsed
        assert mute.accepted, "pgscale never connected to the mute server"
        assert mute.received > 0, "pgscale sent no startup message"
        assert pg.is_running()
        # a second client is told as well (the pool does not wedge)
        errs, elapsed = _errors_of_new_client(pg, 8)
        _assert_one_fatal(errs, "08006")
        assert elapsed < 1 + 1 + 2
        # the mute connections are not kept open forever
        r = wait_for(lambda: (lambda r: r if r and int(r["sv_login"]) == 0 else None)(pg.pool()),
                     5, what="no server left logging in")
        assert int(r["sv_total"]) == 0, r


# --------------------------------------------------------------------------
# 6. out of file descriptors
# --------------------------------------------------------------------------
def _try_client(pg, timeout=2.0):
    """'ok' (logged in; the RawConn is returned), 'refused' (connect failed,
    closed, reset or a FATAL), or 'hung'."""
    try:
        c = pgwire.RawConn(pg.host, pg.port, timeout=timeout)
    except OSError:
        return "refused", None, None
    try:
        msgs = c.startup(timeout=timeout)
    except pgwire.ProtocolTimeout:
        c.close()
        return "hung", None, None
    except OSError:
        c.close()
        return "refused", None, None
    if pgwire.ready_status(msgs) == "I" and not c.eof:
        return "ok", c, None
    c.close()
    return "refused", None, pgwire.errors(msgs)


@pytest.mark.deadline(60)
def test_out_of_file_descriptors_refuses_clients_and_recovers(pgscale):
    pg = pgscale(prefix=["prlimit", "--nofile=64:64"], PGSCALE_WORKERS=1, DB_POOL_SIZE=2,
                 DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=5)
    with open("/proc/%d/limits" % pg.pid) as f:
        limits = f.read()
    assert any(l.startswith("Max open files") and l.split()[3:5] == ["64", "64"]
               for l in limits.splitlines()), limits
    before = pg.connect()
    assert _one(before, "SELECT 1") == (1,)
    held, outcomes, fatal = [], [], []
    try:
        consecutive_refused = 0
        for _ in range(120):
            what, c, errs = _try_client(pg)
            outcomes.append(what)
            if what == "hung":
                break
            if what == "ok":
                held.append(c)
                consecutive_refused = 0
            else:
                fatal.extend(errs or [])
                consecutive_refused += 1
                if consecutive_refused >= 5:
                    break
        assert "hung" not in outcomes, \
            "a client beyond the descriptor limit was left hanging: %r" % outcomes
        assert 20 <= len(held) < 64, outcomes
        assert consecutive_refused >= 5, outcomes
        assert fatal, "refused clients were closed without an error message: %r" % outcomes
        assert all(e.get("S") == "FATAL" and e.get("C") == "53300" for e in fatal), fatal
        assert pg.is_running(), "pgscale exited (rc=%s)" % pg.proc.returncode
        # the clients it holds still work, as does the one from before
        for c in held[:3] + held[-3:]:
            assert pgwire.data_rows(c.simple_query("SELECT 7")) == [["7"]]
        assert _one(before, "SELECT 8") == (8,)
    finally:
        for c in held:
            c.close()
    # with the descriptors back, new clients work again
    def fresh_ok():
        what, c, _ = _try_client(pg)
        if c:
            c.close()
        return what == "ok"
    wait_for(fresh_ok, 5, interval=0.2, what="a new client to log in after the flood")
    _assert_still_serving(pg, before)
    wait_for(lambda: _pool_settled(pg, 1, 0), 5,
             what="no leaked client or server in SHOW POOLS")
    assert fd_count(pg.pid) < 30, "pgscale still holds %d descriptors" % fd_count(pg.pid)


# --------------------------------------------------------------------------
# 7. many clients vanishing at once
# --------------------------------------------------------------------------
def _vanish(pg, how, i):
    """One client that goes away at the stage `how`; 'ok' or what went wrong."""
    try:
        c = pgwire.RawConn(pg.host, pg.port, timeout=5)
    except OSError as e:
        return "connect failed: %r" % e
    try:
        if how == "half_startup":
            c.send(pgwire.startup_packet()[:7])
        elif how == "after_startup":
            c.send(pgwire.startup_packet())
        elif how != "after_connect":
            msgs = c.startup(timeout=5)
            if pgwire.ready_status(msgs) != "I":
                return "login failed: %r" % msgs
            if how == "mid_query":
                c.send(pgwire.query("SELECT pg_sleep(1)"))
            elif how == "mid_transaction":
                for sql in ("BEGIN", "SELECT pg_advisory_xact_lock(%d)" % (770000 + i)):
                    msgs = c.simple_query(sql, timeout=8)
                    if pgwire.ready_status(msgs) != "T":
                        return "%s failed: %r" % (sql, msgs)
            elif how == "half_message":
                c.send(pgwire.query("SELECT 1")[:6])
            time.sleep(0.05)
        return "ok"
    except (OSError, AssertionError) as e:
        return repr(e)
    finally:
        c.close(abort=(i % 2 == 0))


@pytest.mark.deadline(60)
@BOTH_MODES
def test_many_clients_vanishing_at_once_leak_nothing(pgscale, primary, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, DB_POOL_SIZE=10, DB_MAX_OVERFLOW=5,
                 PGSCALE_WORKERS=2, DB_POOL_TIMEOUT=20)
    before = pg.connect()
    assert _one(before, "SELECT 1") == (1,)
    fds0 = fd_count(pg.pid)
    hows = (["after_connect"] * 20 + ["half_startup"] * 20 + ["after_startup"] * 60 +
            ["after_login"] * 30 + ["mid_query"] * 30 + ["mid_transaction"] * 20 +
            ["half_message"] * 20)
    random.Random(7).shuffle(hows)
    results = [None] * len(hows)

    def worker(i0):
        for i in range(i0, len(hows), 50):
            results[i] = _vanish(pg, hows[i], i)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not any(t.is_alive() for t in threads), "vanishing clients got stuck"
    bad = [(h, r) for h, r in zip(hows, results) if r != "ok"]
    assert not bad, bad[:10]

    # pgscale still serves, and after a moment nothing is left of the 200
    assert pg.is_running(), "pgscale exited (rc=%s)" % pg.proc.returncode
    assert _one(before, "SELECT 2") == (2,)
    r = wait_for(lambda: _pool_settled(pg, 1, _held(pool_mode, 1)), 10,
                 what="SHOW POOLS without leaked clients or servers")
    assert int(r["sv_total"]) <= 15, r
    clients = [c for c in pg.admin("SHOW CLIENTS") if c["database"] == APP_DB]
    assert len(clients) == 1, clients
    servers = [s for s in pg.admin("SHOW SERVERS") if s["database"] == APP_DB]
    busy = [s for s in servers if s["state"] != "idle"]
    # session mode: the server of `before` is active; nothing else is busy
    assert len(busy) == _held(pool_mode, 1), servers
    assert all(s["state"] == "active" and str(s["client_id"]) == str(clients[0]["id"])
               for s in busy), (busy, clients)
    # no transaction or advisory lock left behind on the primary
    wait_for(lambda: not _idle_in_transaction(primary), 5,
             what="no backend idle in transaction")
    assert primary.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]
    # descriptors: back to about where they were (plus the pool's servers)
    assert fd_count(pg.pid) <= fds0 + 15, (fds0, fd_count(pg.pid))
    _assert_still_serving(pg, before)
