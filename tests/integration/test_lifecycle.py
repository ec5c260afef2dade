"""Time bounds and signals: idle-in-transaction, client idle, query and
client login timeouts; SIGTERM drains (running transactions finish, idle
clients get 57P01, PGSCALE_SHUTDOWN_TIMEOUT bounds the wait), SIGINT stops at
once, SIGHUP changes nothing."""
import signal
import socket
import threading
import time
import uuid

import psycopg2
import psycopg2.errors
import pytest

import pgwire
from helpers import APP_USER, BOTH_MODES, LOCALHOST, aconnect, arun, wait_for


def _marker():
    return "m-" + uuid.uuid4().hex[:12]


def _table(primary, name):
    primary.app_execute("CREATE TABLE IF NOT EXISTS %s (v text)" % name)
    return name


def _count(primary, table, marker):
    return primary.app_execute("SELECT count(*) FROM %s WHERE v = %%s" % table, (marker,))[0][0]


def _raw(pg, timeout=10.0):
    r = pgwire.RawConn(pg.host, pg.port, timeout=timeout)
    msgs = r.startup()
    assert pgwire.ready_status(msgs) == "I", msgs
    assert not pgwire.errors(msgs), msgs
    return r


def _ok(r, sql, status=None):
    msgs = r.simple_query(sql)
    assert not pgwire.errors(msgs), (sql, msgs)
    if status is not None:
        assert pgwire.ready_status(msgs) == status, (sql, msgs)
    return pgwire.data_rows(msgs)


def _closed_with(r, timeout):
    """Reads until the peer closes; returns (seconds waited, SQLSTATEs seen)."""
    t0 = time.monotonic()
    msgs = r.read_until_close(timeout=timeout)
    return time.monotonic() - t0, [e.get("C") for e in pgwire.errors(msgs)], msgs


def _backend(primary, pid):
    for b in primary.backends(users=(APP_USER, "it_special", "md5user")):
        if b["pid"] == pid:
            return b
    return None


def _new_connection_refused(pg):
    """True if a new client cannot get in: connection refused, or an error
    (57P01) / a close instead of ReadyForQuery."""
    try:
        r = pgwire.RawConn(pg.host, pg.port, timeout=2)
    except (ConnectionRefusedError, ConnectionResetError):
        return "refused"
    except OSError as e:
        return "connect failed: %s" % e
    try:
        try:
            msgs = r.startup(timeout=3)
        except (pgwire.ProtocolTimeout, OSError):
            return False
        if pgwire.ready_status(msgs) == "I" and not pgwire.errors(msgs):
            return False
        codes = [e.get("C") for e in pgwire.errors(msgs)]
        if codes:
            assert codes == ["57P01"], "a new client during shutdown got %r" % msgs
            return "57P01"
        return "closed"
    finally:
        r.close()


# -- PGSCALE_IDLE_TRANSACTION_TIMEOUT ------------------------------------------------
@pytest.mark.deadline(40)
@BOTH_MODES
def test_idle_in_transaction_client_gets_25p03_and_server_is_cleaned_and_reused(
        pgscale, primary, pool_mode):
    table = _table(primary, "lc_idle_tx")
    marker = _marker()
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, PGSCALE_IDLE_TRANSACTION_TIMEOUT="1s",
                 DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, PGSCALE_WORKERS=1)
    r = _raw(pg)
    _ok(r, "BEGIN", "T")
    rows = _ok(r, "INSERT INTO %s VALUES ('%s'); SELECT pg_backend_pid()" % (table, marker), "T")
    pid = int(rows[0][0])
    assert _backend(primary, pid)["state"] == "idle in transaction"

    waited, codes, msgs = _closed_with(r, timeout=6)
    r.close()
    assert codes == ["25P03"], msgs
    assert 0.8 <= waited <= 3.0, "closed after %.2f s (timeout 1 s)" % waited

    # the server connection no longer sits in the transaction ...
    wait_for(lambda: not [b for b in primary.backends() if b["state"] == "idle in transaction"],
             3, what="no 'idle in transaction' backend of app on the primary")
    assert _count(primary, table, marker) == 0, "the abandoned transaction was committed"
    # ... and is reused (pool size 1) by the next client, outside any transaction
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid(), count(*) FROM %s WHERE v = %%s" % table, (marker,))
        assert cur.fetchone() == (pid, 0)
        cur.execute("SELECT now() = statement_timestamp()")
        assert cur.fetchone() == (True,), "the next client runs inside the old transaction"
    assert _backend(primary, pid)["state"] in ("idle", "active"), _backend(primary, pid)


@pytest.mark.deadline(40)
def test_idle_transaction_timeout_spares_busy_transactions(pgscale, primary):
    table = _table(primary, "lc_idle_tx")
    marker = _marker()
    pg = pgscale(PGSCALE_IDLE_TRANSACTION_TIMEOUT="1s")
    conn = pg.connect(autocommit=False)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO %s VALUES (%%s)" % table, (marker,))
        # a statement running longer than the timeout is not "idle"
        cur.execute("SELECT pg_sleep(1.6)")
        # short gaps between statements, 2.4 s in all
        for _ in range(6):
            time.sleep(0.4)
            cur.execute("SELECT 1")
    conn.commit()
    assert _count(primary, table, marker) == 1


# -- PGSCALE_CLIENT_IDLE_TIMEOUT -----------------------------------------------------
@pytest.mark.deadline(40)
@BOTH_MODES
def test_client_idle_timeout_disconnects_idle_client_with_57p05_only(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, PGSCALE_CLIENT_IDLE_TIMEOUT="1s")
    idle = _raw(pg)
    _ok(idle, "SELECT 1")
    results = {}

    def busy():
        conn = psycopg2.connect(pg.dsn())
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for i in range(8):             # a query every 0.3 s for 2.4 s
                    time.sleep(0.3)
                    cur.execute("SELECT %s", (i,))
                cur.fetchone()
                results["busy"] = "ok"
        except Exception as e:  # noqa: BLE001
            results["busy"] = repr(e)
        finally:
            conn.close()

    def long_query():
        conn = psycopg2.connect(pg.dsn())
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_sleep(2.2), 7")
                first = cur.fetchone()[1]
                # idle for 0.3 s after the long query: well under the timeout
                time.sleep(0.3)
                cur.execute("SELECT 8")
                results["long"] = (first, cur.fetchone()[0])
        except Exception as e:  # noqa: BLE001
            results["long"] = repr(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=busy), threading.Thread(target=long_query)]
    for t in threads:
        t.start()
    waited, codes, msgs = _closed_with(idle, timeout=6)
    idle.close()
    for t in threads:
        t.join(15)
    assert codes == ["57P05"], msgs
    assert 0.8 <= waited <= 3.0, "idle client closed after %.2f s (timeout 1 s)" % waited
    assert results.get("busy") == "ok", results
    assert results.get("long") == (7, 8), results


# -- PGSCALE_QUERY_TIMEOUT -----------------------------------------------------------
@pytest.mark.deadline(40)
@BOTH_MODES
def test_query_timeout_cancels_long_query_and_connection_stays_usable(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, PGSCALE_QUERY_TIMEOUT="1s")
    conn = pg.connect()
    with conn.cursor() as cur:
        t0 = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled) as exc:
            cur.execute("SELECT pg_sleep(10)")
        took = time.monotonic() - t0
        assert exc.value.pgcode == "57014"
        assert "canceling statement" in exc.value.pgerror, exc.value.pgerror
        assert 0.9 <= took <= 2.5, "cancelled after %.2f s (timeout 1 s)" % took
        # PostgreSQL signals a cancelled backend twice (process, then process
        # group); on a loaded host the second signal can arrive late and
        # cancel the next statement on the same connection — in session mode
        # that is this client's (in transaction mode pgscale keeps other
        # clients off that server for a moment).  Let it pass.
        time.sleep(0.3)
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
        # a query under the limit is not cancelled, and the limit is per query
        # (the 0.6 s queries add up to more than 1 s)
        for _ in range(3):
            cur.execute("SELECT pg_sleep(0.6), 3")
            assert cur.fetchone()[1] == 3
        # a second long query is cancelled as well (4 s: bounded if it is not)
        t0 = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled):
            cur.execute("SELECT pg_sleep(4)")
        assert time.monotonic() - t0 <= 2.5


@pytest.mark.deadline(40)
def test_query_timeout_cancels_extended_protocol_query(pgscale):
    import asyncpg
    pg = pgscale(PGSCALE_QUERY_TIMEOUT="1s")

    async def go():
        conn = await aconnect(pg)
        try:
            t0 = time.monotonic()
            with pytest.raises(asyncpg.exceptions.QueryCanceledError) as exc:
                await conn.fetchval("SELECT pg_sleep($1::float8)", 10.0)
            took = time.monotonic() - t0
            assert exc.value.sqlstate == "57014"
            assert 0.9 <= took <= 2.5, took
            return await conn.fetchval("SELECT $1::int + 1", 41)
        finally:
            await conn.close()

    assert arun(go(), timeout=30) == 42


# -- PGSCALE_CLIENT_LOGIN_TIMEOUT ----------------------------------------------------
def _wait_closed(sock, timeout):
    """Seconds until the peer closes sock (data before the close is ignored)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            if not sock.recv(4096):
                return time.monotonic() - t0
        except socket.timeout:
            return None
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - t0


@pytest.mark.deadline(40)
def test_client_login_timeout_closes_silent_and_half_logged_in_clients(pgscale):
    pg = pgscale(PGSCALE_CLIENT_LOGIN_TIMEOUT="1s")
    logged_in = _raw(pg)
    silent = socket.create_connection((LOCALHOST, pg.port), timeout=5)
    half = socket.create_connection((LOCALHOST, pg.port), timeout=5)
    half.sendall(pgwire.startup_packet()[:6])        # a startup packet cut short
    results = {}

    def watch(name, s):
        results[name] = _wait_closed(s, 6)

    threads = [threading.Thread(target=watch, args=("silent", silent)),
               threading.Thread(target=watch, args=("half", half))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    silent.close()
    half.close()
    for name in ("silent", "half"):
        took = results.get(name)
        assert took is not None, "%s client still connected after 6 s (login timeout 1 s)" % name
        assert 0.8 <= took <= 3.0, "%s client closed after %.2f s (login timeout 1 s)" % (name, took)
    # a client that did log in is not affected
    assert _ok(logged_in, "SELECT 5") == [["5"]]
    logged_in.close()


# -- SIGTERM -------------------------------------------------------------------------
@pytest.mark.deadline(40)
def test_sigterm_refuses_new_clients_lets_running_transaction_commit_then_exits_0(
        pgscale, primary):
    table = _table(primary, "lc_sigterm")
    marker = _marker()
    pg = pgscale(PGSCALE_SHUTDOWN_TIMEOUT="10s", PGSCALE_WORKERS=2)
    a = pg.connect(autocommit=False)
    with a.cursor() as cur:
        cur.execute("SELECT 1")
        cur.execute("INSERT INTO %s VALUES (%%s)" % table, (marker,))
    idle = _raw(pg)                                     # transaction mode: holds no server

    t0 = time.monotonic()
    pg.signal(signal.SIGTERM)
    how = wait_for(lambda: _new_connection_refused(pg), 3, interval=0.1,
                   what="new connections refused after SIGTERM")
    assert how in ("refused", "57P01", "closed"), how

    # the idle client is disconnected with 57P01, while A's transaction runs on
    waited, codes, msgs = _closed_with(idle, timeout=5)
    idle.close()
    assert codes == ["57P01"], msgs
    assert pg.wait_exit(0.5) is None, "pgscale exited while a transaction was in progress"

    with a.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
    a.commit()
    assert _count(primary, table, marker) == 1

    rc = pg.wait_exit(5)
    elapsed = time.monotonic() - t0
    assert rc is not None, "pgscale still running 5 s after the last transaction ended"
    assert rc == 0, "pgscale exit status %s after SIGTERM" % rc
    assert elapsed < 9.5, "exited after %.1f s: waited for the shutdown timeout" % elapsed
    wait_for(lambda: not primary.backends(), 3, what="pgscale's server connections closed")


@pytest.mark.deadline(40)
def test_sigterm_serves_transactions_that_start_while_draining(pgscale, primary):
    # Transaction pooling: every statement below checks a server out.  The
    # first finds the idle one; it is closed when it comes back (nobody
    # waits for it), so each later one needs a server opened for it, which
    # must go to it (it was closed at login instead, again and again, until
    # the client's pool timeout: 53300 for a request the drain must serve).
    pg = pgscale(PGSCALE_SHUTDOWN_TIMEOUT="20s", PGSCALE_WORKERS=1, DB_POOL_TIMEOUT="3")
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        pg.signal(signal.SIGTERM)
        wait_for(lambda: "draining" in pg.stderr_text(), 3, interval=0.01, what="draining")
        for i in range(5):
            t0 = time.monotonic()
            cur.execute("SELECT %s", (i,))
            assert cur.fetchone() == (i,)
            assert time.monotonic() - t0 < 2, "statement %d took %.1f s" % (i, time.monotonic() - t0)
    conn.close()
    assert pg.wait_exit(5) == 0
    assert pg.stderr_text().count("C-1: 53300") == 0


@pytest.mark.deadline(30)
def test_sigterm_without_clients_exits_promptly_with_0(pgscale):
    pg = pgscale(PGSCALE_SHUTDOWN_TIMEOUT="20s")
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    conn.close()
    time.sleep(0.2)
    t0 = time.monotonic()
    pg.signal(signal.SIGTERM)
    rc = pg.wait_exit(5)
    assert rc == 0, "rc=%r after %.1f s" % (rc, time.monotonic() - t0)
    assert time.monotonic() - t0 < 3


@pytest.mark.deadline(30)
def test_sigterm_shutdown_timeout_closes_a_transaction_that_stays_open(pgscale, primary):
    table = _table(primary, "lc_sigterm")
    marker = _marker()
    pg = pgscale(PGSCALE_SHUTDOWN_TIMEOUT="2s")
    a = _raw(pg)
    _ok(a, "BEGIN", "T")
    pid = int(_ok(a, "INSERT INTO %s VALUES ('%s'); SELECT pg_backend_pid()" % (table, marker))[0][0])

    t0 = time.monotonic()
    pg.signal(signal.SIGTERM)
    time.sleep(1.2)
    assert pg.is_running(), "pgscale did not wait for the open transaction"
    rc = pg.wait_exit(4)
    elapsed = time.monotonic() - t0
    assert rc is not None, "pgscale still running %.1f s after SIGTERM (shutdown timeout 2 s)" % elapsed
    assert 1.8 <= elapsed <= 3.5, "exited %.2f s after SIGTERM (shutdown timeout 2 s)" % elapsed
    assert rc >= 0, "pgscale died from signal %d" % -rc

    # the client sees an error or a close, not a hang
    waited, codes, msgs = _closed_with(a, timeout=3)
    a.close()
    assert all(c in ("57P01", "08006") for c in codes), msgs
    # the abandoned transaction is rolled back, its backend gone
    wait_for(lambda: _backend(primary, pid) is None, 5, what="the backend of the open transaction to end")
    assert _count(primary, table, marker) == 0


# -- SIGINT / SIGHUP -----------------------------------------------------------------
@pytest.mark.deadline(30)
def test_sigint_stops_at_once_even_with_transactions_in_progress(pgscale, primary):
    pg = pgscale(PGSCALE_SHUTDOWN_TIMEOUT="30s")
    a = _raw(pg)
    _ok(a, "BEGIN", "T")
    pid = int(_ok(a, "SELECT pg_backend_pid()", "T")[0][0])
    busy = _raw(pg)
    busy.send(pgwire.query("SELECT pg_sleep(10)"))
    wait_for(lambda: any(b["state"] == "active" and "pg_sleep" in (b["query"] or "")
                         for b in primary.backends()), 3, what="pg_sleep running")

    t0 = time.monotonic()
    pg.signal(signal.SIGINT)
    rc = pg.wait_exit(1.0)
    assert rc is not None, "pgscale still running 1 s after SIGINT"
    assert time.monotonic() - t0 <= 1.0
    assert rc >= 0, "pgscale died from signal %d" % -rc
    for r in (a, busy):
        r.read_until_close(timeout=2)    # closed, not left hanging
        r.close()
    wait_for(lambda: _backend(primary, pid) is None, 5, what="the transaction's backend to end")


@pytest.mark.deadline(30)
def test_sighup_keeps_running_and_serving(pgscale, primary):
    table = _table(primary, "lc_sighup")
    marker = _marker()
    pg = pgscale(DB_POOL_SIZE=3)
    before = pg.connect()
    in_tx = pg.connect(autocommit=False)
    with in_tx.cursor() as cur:
        cur.execute("INSERT INTO %s VALUES (%%s)" % table, (marker,))
    for n in (1, 2):
        pg.signal(signal.SIGHUP)
        wait_for(lambda: pg.stderr_text().count("configuration reloaded") >= n or
                 not pg.is_running(), 5, what="reload %d to be logged" % n)
        assert pg.is_running(), "pgscale exited on SIGHUP (rc=%s)" % pg.proc.returncode
    with before.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    in_tx.commit()
    assert _count(primary, table, marker) == 1
    after = pg.connect()
    with after.cursor() as cur:
        cur.execute("SELECT 40 + 2")
        assert cur.fetchone() == (42,)
    assert pg.admin("SHOW CONFIG")   # the admin console still answers
    assert pg.is_running()


# -- online restart: a second pgscale on the same port --------------------------
@pytest.mark.deadline(60)
def test_online_restart_on_a_shared_port(pgscale):
    # Both instances listen with SO_REUSEPORT: start the new one, SIGTERM the
    # old one; clients keep being served throughout.  (The kernel resets
    # connections still in the closing listener's accept queue unless
    # net.ipv4.tcp_migrate_req=1 — a machine-wide setting this test leaves
    # alone — so a connect may fail now and then; no query may.)
    old = pgscale()
    done = threading.Event()
    served, connect_failed, query_failed = [0], [], []

    def run():
        while not done.is_set():
            try:
                c = psycopg2.connect(old.dsn(), connect_timeout=5)
            except psycopg2.OperationalError as e:
                connect_failed.append(str(e))
                continue
            try:
                with c.cursor() as cur:
                    cur.execute("SELECT 1")
                    assert cur.fetchone() == (1,)
                served[0] += 1
            except Exception as e:  # reported below
                query_failed.append(repr(e))
            finally:
                c.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: served[0] > 20, 20, what="clients served by the old instance")
        new = pgscale(PGSCALE_LISTEN="%s:%d" % (old.host, old.port))
        time.sleep(0.5)
        before = served[0]
        old.signal(signal.SIGTERM)
        assert old.wait_exit(10) == 0, old.stderr_text()[-2000:]
        after_exit = served[0]
        # the clients go on against the new instance alone for a while (not
        # a fixed deadline: a sanitizer build takes seconds to start and exit)
        wait_for(lambda: served[0] > after_exit + 20, 20,
                 what="clients served by the new instance")
    finally:
        done.set()
        for t in threads:
            t.join(20)
    assert new.is_running()
    assert query_failed == [], query_failed[:3]
    assert served[0] > after_exit > before > 0, (before, after_exit, served[0])
    assert len(connect_failed) <= max(2, served[0] // 100), connect_failed[:3]


def test_client_stalled_in_its_password_exchange_does_not_hold_up_shutdown(pgscale):
    """A client that got the SASL request and never answers it: on SIGTERM it
    is told to reconnect (57P01) and pgscale exits, instead of waiting for
    the whole login timeout."""
    pg = pgscale(PGSCALE_CLIENT_LOGIN_TIMEOUT="60s")
    with pgwire.RawConn(LOCALHOST, pg.port) as c:
        c.send(pgwire.startup_packet())
        m = c.recv_msg()
        assert m is not None and m[0] == b"R", m   # AuthenticationSASL
        t0 = time.monotonic()
        pg.signal(signal.SIGTERM)
        assert pg.wait_exit(10) == 0, pg.stderr_text()[-2000:]
        assert time.monotonic() - t0 < 5
        errs = pgwire.errors(c.read_until_close())
        assert [e["C"] for e in errs] == ["57P01"], errs
