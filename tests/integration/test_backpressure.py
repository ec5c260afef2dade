"""Every connection's pending output is bounded: a client that pipelines
requests pgscale answers itself (refused LISTEN, DEALLOCATE, Close, admin
console queries) and does not read the answers is no longer read once too
much waits for it, so pgscale's memory stays bounded; once the client reads,
it gets every reply, in order.  A slow reader of a large result does not make
pgscale buffer the result either."""
import select
import struct
import time

import pytest

from helpers import APP_USER, is_sanitized, proc_kb, wait_for
import pgwire
from pgwire import message, parse_fields, query

# pgscale's own bound is a few hundred KiB per client; this leaves room for
# the allocator and the pooled buffers of one busy connection.  (Without the
# bound, the LISTEN, DEALLOCATE and console pipelines grew pgscale by 20 to
# 115 MiB.)
RSS_BOUND_KIB = 8 * 1024
# A slow reader of a large result: the bound the hardening issue states.
SLOW_READER_BOUND_KIB = 16 * 1024


class Pipeline:
    """A raw client that sends a long pipeline without reading, then reads."""

    def __init__(self, pg, database="app"):
        self.pid = pg.pid
        login = pgwire.RawConn(pg.host, pg.port, timeout=10)
        msgs = login.startup(APP_USER, database)  # with the application's password
        if pgwire.ready_status(msgs) is None:
            pytest.fail("login failed: %s" % pgwire.errors(msgs))
        self.sock = login.sock
        self.buf = bytearray(login.buf)
        self.sock.setblocking(False)
        self.rss_start = proc_kb(self.pid, "VmRSS")
        self.rss_max = self.rss_start

    def read_one(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 5:
                n = struct.unpack_from("!I", self.buf, 1)[0]
                if len(self.buf) >= n + 1:
                    kind, payload = bytes(self.buf[:1]), bytes(self.buf[5:n + 1])
                    del self.buf[:n + 1]
                    return kind, payload
            left = deadline - time.monotonic()
            assert left > 0, "no complete message within %s s" % timeout
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            assert chunk, "pgscale closed the connection"
            self.buf += chunk

    def sample(self):
        self.rss_max = max(self.rss_max, proc_kb(self.pid, "VmRSS"))

    def send_unread(self, data, stall=1.5):
        """Sends without reading until everything is sent or pgscale has
        taken nothing for `stall` seconds, and samples pgscale's VmRSS
        meanwhile and for `stall` seconds after; returns the bytes sent."""
        view = memoryview(data)
        sent, last = 0, time.monotonic()
        while sent < len(data) and time.monotonic() - last < stall:
            _, w, _ = select.select([], [self.sock], [], 0.05)
            if w:
                try:
                    n = self.sock.send(view[sent:sent + 262144])
                except BlockingIOError:
                    n = 0
                if n:
                    sent += n
                    last = time.monotonic()
            self.sample()
        # pgscale may still be working through what it took: watch a while
        settle = time.monotonic() + stall
        while time.monotonic() < settle:
            self.sample()
            time.sleep(0.05)
        return sent

    def finish(self, data, sent, want_kinds, timeout=90):
        """Sends the rest while reading; checks the replies' kinds are
        exactly want_kinds (a sequence of one-byte kinds), in order."""
        self.sock.setblocking(False)
        view = memoryview(data)
        kinds = bytearray()
        errors = []
        deadline = time.monotonic() + timeout
        raw = bytearray()
        pos = 0
        while len(kinds) < len(want_kinds):
            assert time.monotonic() < deadline, "only %d of %d replies within %d s" % (
                len(kinds), len(want_kinds), timeout)
            r, w, _ = select.select([self.sock], [self.sock] if sent < len(data) else [], [], 1.0)
            if w:
                try:
                    sent += self.sock.send(view[sent:sent + 262144])
                except BlockingIOError:
                    pass
            if r:
                chunk = self.sock.recv(1 << 20)
                assert chunk, "pgscale closed the connection after %d replies" % len(kinds)
                raw += chunk
                # frame what arrived
                while len(raw) - pos >= 5:
                    n = struct.unpack_from("!I", raw, pos + 1)[0]
                    if len(raw) - pos < n + 1:
                        break
                    k = raw[pos]
                    kinds.append(k)
                    if k == 0x45 and len(errors) < 3:  # 'E'
                        errors.append(parse_fields(bytes(raw[pos + 5:pos + n + 1])))
                    pos += n + 1
                if pos > 1 << 20:
                    del raw[:pos]
                    pos = 0
        assert len(kinds) == len(want_kinds)
        if bytes(kinds) != bytes(want_kinds):
            at = next(i for i in range(len(kinds)) if kinds[i] != want_kinds[i])
            pytest.fail("reply %d is %r, expected %r (first errors: %s)" % (
                at, chr(kinds[at]), chr(want_kinds[at]), errors))
        return errors

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def assert_bounded(p, what):
    grew = p.rss_max - p.rss_start
    print("%s: VmRSS +%d KiB" % (what, grew))
    if is_sanitized(p.pid):
        return  # the replies are still checked
    assert grew < RSS_BOUND_KIB, (
        "pgscale's VmRSS grew by %d KiB while a client pipelined %s without reading "
        "(bound %d KiB)" % (grew, what, RSS_BOUND_KIB))


@pytest.mark.deadline(120)
def test_unread_refused_listen_pipeline_is_bounded_and_answered_in_order(pgscale):
    pg = pgscale(PGSCALE_POOL_MODE="transaction", PGSCALE_PINNING="off")
    n = 200000
    data = query("LISTEN x") * n
    p = Pipeline(pg)
    try:
        sent = p.send_unread(data)
        assert_bounded(p, "%d refused LISTENs" % n)
        errors = p.finish(data, sent, b"EZ" * n)
        assert errors and all(e.get("C") == "0A000" for e in errors), errors
    finally:
        p.close()


@pytest.mark.deadline(120)
def test_unread_deallocate_pipeline_is_bounded_and_answered_in_order(pgscale):
    pg = pgscale(PGSCALE_POOL_MODE="transaction")
    # DEALLOCATE ALL is answered by pgscale (it clears the client's own
    # statements); DEALLOCATE of a name the client does not have goes to
    # PostgreSQL, as it would directly.
    n = 1000000
    data = query("DEALLOCATE ALL") * n
    p = Pipeline(pg)
    try:
        sent = p.send_unread(data)
        assert_bounded(p, "%d DEALLOCATEs" % n)
        p.finish(data, sent, b"CZ" * n)
    finally:
        p.close()


def parse_msg(name, sql):
    return message(b"P", name + b"\0" + sql + b"\0" + struct.pack("!H", 0))


def close_msg(name):
    return message(b"C", b"S" + name + b"\0")


@pytest.mark.deadline(120)
def test_unread_parse_close_pipeline_is_bounded_and_answered_in_order(pgscale):
    # One server.  Each Close is answered by pgscale; each Parse after it
    # goes to PostgreSQL again (a statement the client closed is parsed
    # afresh), without a Sync until the very end: pgscale must bound what it
    # keeps per request in flight (and make PostgreSQL answer with a Flush
    # of its own, or the pipeline never drains).
    pg = pgscale(PGSCALE_POOL_MODE="transaction", DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    n = 400000
    data = (parse_msg(b"s1", b"SELECT 1") + close_msg(b"s1")) * n + message(b"S")
    p = Pipeline(pg)
    try:
        p.sock.setblocking(True)
        p.sock.sendall(parse_msg(b"s1", b"SELECT 1") + message(b"S"))
        assert [p.read_one(10)[0] for _ in range(2)] == [b"1", b"Z"]
        p.sock.setblocking(False)
        sent = p.send_unread(data)
        assert_bounded(p, "%d Parse/Close pairs" % n)
        p.finish(data, sent, b"13" * n + b"Z")
    finally:
        p.close()


@pytest.mark.deadline(120)
def test_unread_admin_console_pipeline_is_bounded_and_answered_in_order(pgscale):
    pg = pgscale()
    pg.connect().close()  # one pool, so SHOW POOLS has a row
    n = 200000
    data = query("SHOW POOLS") * n
    p = Pipeline(pg, database="pgscale")
    try:
        # the shape of one reply, from a lone query
        p.sock.setblocking(True)
        p.sock.sendall(query("SHOW POOLS"))
        one = bytearray()
        while True:
            kind, _ = p.read_one(10)
            one += kind
            if kind == b"Z":
                break
        p.sock.setblocking(False)
        assert one.startswith(b"T") and one.endswith(b"CZ"), one
        sent = p.send_unread(data)
        assert_bounded(p, "%d admin console queries" % n)
        p.finish(data, sent, bytes(one) * n)
    finally:
        p.close()


@pytest.mark.deadline(120)
def test_slow_reader_of_large_result_keeps_memory_bounded(pgscale, primary):
    pg = pgscale(DB_POOL_SIZE=2)
    login = pgwire.RawConn(pg.host, pg.port, timeout=10)
    sock = login.sock
    try:
        msgs = login.startup(APP_USER, "app", application_name="slow-reader")
        assert pgwire.ready_status(msgs) == "I", msgs
        start = proc_kb(pg.pid, "VmRSS")
        top = start
        sock.sendall(query("SELECT repeat('x', 1000) FROM generate_series(1, 100000)"))
        read = 0
        t_end = time.monotonic() + 5
        while time.monotonic() < t_end:
            chunk = sock.recv(1024)
            assert chunk
            read += len(chunk)
            time.sleep(0.003)
            top = max(top, proc_kb(pg.pid, "VmRSS"))
        assert read < 50 * 1024 * 1024  # still in the middle of the result
        grew = top - start
        print("slow reader: VmRSS +%d KiB, %d bytes read" % (grew, read))
        assert is_sanitized(pg.pid) or grew < SLOW_READER_BOUND_KIB, (
            "pgscale's VmRSS grew by %d KiB while a client read a 100 MB result slowly" % grew)
    finally:
        sock.close()

    # The server it used goes back clean (idle) or is closed.
    def settled():
        rows = primary.execute(
            "SELECT state FROM pg_stat_activity WHERE usename = 'app' AND query LIKE '%generate_series(1, 100000)%'"
            " AND state <> 'idle'")
        return not rows
    wait_for(settled, 15, what="the server that ran the large query to be idle or gone")
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
