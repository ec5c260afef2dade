"""Pooling behaviour: limits, overflow, checkout timeout, queueing, sharing of
server connections, session state following the client, resets, idle and
lifetime limits, what transaction mode refuses."""
import asyncio
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import psycopg2.errors
import pytest

import pgwire
from helpers import BOTH_MODES, BackendSampler, aconnect, arun, wait_for


def _one(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def _client_txn(dsn, sql, params=None):
    """A short-lived client: connect, one transaction, disconnect."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
        conn.commit()
        return row
    finally:
        conn.close()


# -- limits --------------------------------------------------------------------
@pytest.mark.deadline(90)
@BOTH_MODES
def test_server_connections_never_exceed_pool_size_plus_overflow(pgscale, primary, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, DB_POOL_SIZE=3, DB_MAX_OVERFLOW=2,
                 PGSCALE_WORKERS=2, DB_POOL_TIMEOUT=30)
    with BackendSampler(primary) as sampler, ThreadPoolExecutor(50) as ex:
        results = list(ex.map(lambda i: _client_txn(pg.dsn(), "SELECT %s::int FROM pg_sleep(0.3)", (i,)),
                              range(50)))
    assert results == [(i,) for i in range(50)]
    assert sampler.max <= 5, "saw %d server connections (limit 3+2)" % sampler.max
    assert sampler.max >= 3, "pool never ran queries in parallel: %r" % sampler.samples


@pytest.mark.deadline(60)
@pytest.mark.parametrize("overflow_idle", ["0", "1s"])
def test_overflow_servers_are_closed_once_idle(pgscale, primary, overflow_idle):
    pg = pgscale(DB_POOL_SIZE=2, DB_MAX_OVERFLOW=3, DB_POOL_TIMEOUT=30,
                 PGSCALE_OVERFLOW_IDLE_TIMEOUT=overflow_idle)
    with BackendSampler(primary) as sampler, ThreadPoolExecutor(20) as ex:
        list(ex.map(lambda i: _client_txn(pg.dsn(), "SELECT 1 FROM pg_sleep(0.2)"), range(20)))
    assert 2 < sampler.max <= 5, "overflow was not used: %r" % sampler.samples
    wait_for(lambda: pg.sv_total() <= 2, 5, what="SHOW POOLS sv_total back to pool_size (2)")
    wait_for(lambda: len(primary.backends()) <= 2, 5, what="server connections back to <= 2")
    pool = pg.pool()
    assert int(pool["sv_overflow"]) == 0, pool


@pytest.mark.deadline(60)
def test_overflow_servers_are_kept_while_the_load_lasts(pgscale, primary):
    # A steady load wider than the pool: connections must be reused, not
    # closed and reopened (each reconnect costs PostgreSQL a fork and a login).
    pg = pgscale(DB_POOL_SIZE=2, DB_MAX_OVERFLOW=3, PGSCALE_WORKERS=2, DB_POOL_TIMEOUT=30)
    stop = time.monotonic() + 3
    pids, errors = set(), []

    def worker():
        try:
            c = pg.connect()
            with c.cursor() as cur:
                while time.monotonic() < stop:
                    cur.execute("SELECT pg_backend_pid() FROM pg_sleep(0.002)")
                    pids.add(cur.fetchone()[0])
            c.close()
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(pids) <= 5, "%d different server connections served a pool of 2+3" % len(pids)
    wait_for(lambda: pg.sv_total() <= 2, 5, what="SHOW POOLS sv_total back to pool_size (2)")


@pytest.mark.deadline(60)
def test_clients_on_a_quiet_worker_are_not_starved_by_a_busy_one(pgscale):
    # One server; busy clients on one worker keep passing it among
    # themselves.  A client on the other worker must still be served in
    # about its turn, not after DB_POOL_TIMEOUT.
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, PGSCALE_WORKERS=2, DB_POOL_TIMEOUT=10)
    conns = {}
    for i in range(16):
        conns["c%d" % i] = pg.connect(application_name="c%d" % i)
    by_worker = {}
    for r in pg.admin("SHOW CLIENTS"):
        if r["application_name"] in conns:
            by_worker.setdefault(str(r["worker"]), []).append(r["application_name"])
    if len(by_worker) < 2:
        pytest.skip("all 16 connections landed on one worker: %r" % by_worker)
    busy_worker = max(by_worker, key=lambda w: len(by_worker[w]))
    busy = [conns[n] for n in by_worker[busy_worker]][:3]
    quiet = conns[next(n for w, ns in by_worker.items() if w != busy_worker for n in ns)]
    stop = threading.Event()

    def churn(c):
        with c.cursor() as cur:
            while not stop.is_set():
                cur.execute("BEGIN; SELECT pg_sleep(0.01); COMMIT")

    threads = [threading.Thread(target=churn, args=(c,)) for c in busy]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        worst = 0.0
        with quiet.cursor() as cur:
            for _ in range(10):
                t0 = time.monotonic()
                cur.execute("SELECT 1")
                worst = max(worst, time.monotonic() - t0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert worst < 1.0, "a client on the quiet worker waited %.2f s for its turn" % worst


@BOTH_MODES
def test_pool_timeout_returns_53300_naming_the_setting(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=1)
    holder = pg.connect(autocommit=False)
    _one(holder, "SELECT 1")  # an open transaction keeps the only server
    t0 = time.monotonic()
    with pgwire.RawConn(pg.host, pg.port, timeout=15) as c:
        msgs = c.startup("app", "app", timeout=15)
        if pgwire.ready_status(msgs) is not None:
            msgs += c.simple_query("SELECT 1", timeout=15)
    elapsed = time.monotonic() - t0
    errs = pgwire.errors(msgs)
    assert errs, "expected an ErrorResponse, got %r" % msgs
    assert errs[0]["C"] == "53300", errs
    assert "pool for db=app user=app is full" in errs[0]["M"], errs
    assert "DB_POOL_SIZE" in errs[0]["M"] + errs[0].get("H", "") + errs[0].get("D", ""), errs
    assert 0.8 <= elapsed < 5, "error came after %.2f s with DB_POOL_TIMEOUT=1" % elapsed
    holder.close()  # (in session mode only a disconnect frees the server)
    assert _client_txn(pg.dsn(), "SELECT 9") == (9,)


@pytest.mark.deadline(60)
def test_all_waiting_clients_are_eventually_served(pgscale):
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=20, PGSCALE_WORKERS=2)
    with ThreadPoolExecutor(30) as ex:
        results = list(ex.map(lambda i: _client_txn(pg.dsn(), "SELECT %s::int FROM pg_sleep(0.05)", (i,)),
                              range(30)))
    assert results == [(i,) for i in range(30)]


@pytest.mark.deadline(60)
def test_waiting_clients_are_served_first_come_first_served(pgscale):
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=20, PGSCALE_WORKERS=1)
    holder = pg.connect(autocommit=False)
    _one(holder, "SELECT 1")
    served, lock = {}, threading.Lock()
    conns = [pg.connect() for _ in range(8)]

    def waiter(i):
        # The one server runs the queries one after the other: its clock
        # tells the order in which the clients were served.
        (ts,) = _one(conns[i], "SELECT clock_timestamp()")
        with lock:
            served[i] = ts

    threads = []
    for i in range(8):
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        threads.append(t)
        # arrival order 0, 1, 2, ...: the next client starts once this one waits
        wait_for(lambda: (lambda r: r and int(r["cl_waiting"]) == i + 1)(pg.pool()), 5,
                 what="client %d queued for the one server" % i)
    assert served == {}, "clients ran while the only server was taken"
    holder.commit()
    for t in threads:
        t.join(20)
    order = sorted(served, key=served.get)
    assert order == list(range(8)), "service order %r is not arrival order" % order


@pytest.mark.deadline(90)
def test_100_clients_share_2_servers_in_transaction_mode(pgscale, primary):
    pg = pgscale(DB_POOL_SIZE=2, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=30)
    with ThreadPoolExecutor(25) as ex:
        conns = list(ex.map(lambda i: pg.connect(application_name="share%d" % i), range(100)))

    def work(conn):
        return [_one(conn, "SELECT pg_backend_pid() FROM pg_sleep(0.005)")[0] for _ in range(3)]

    with BackendSampler(primary) as sampler, ThreadPoolExecutor(100) as ex:
        pids = [p for ps in ex.map(work, conns) for p in ps]
    assert len(pids) == 300
    assert len(set(pids)) <= 2, "100 clients used %d backends" % len(set(pids))
    assert sampler.max <= 2, sampler.samples
    clients = [r for r in pg.admin("SHOW CLIENTS") if r["database"] == "app"]
    assert len(clients) >= 100


# -- which server a client gets ----------------------------------------------
def test_session_mode_client_keeps_its_backend(pgscale):
    pg = pgscale(PGSCALE_POOL_MODE="session", DB_POOL_SIZE=3)
    others = [pg.connect(), pg.connect()]
    conn = pg.connect(autocommit=False)
    pids = set()
    for i in range(6):
        pids.add(_one(conn, "SELECT pg_backend_pid()")[0])
        conn.commit()
        _one(others[i % 2], "SELECT 1")
    assert len(pids) == 1, pids


def test_transaction_mode_clients_alternate_on_one_backend(pgscale):
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    c1, c2 = pg.connect(), pg.connect()
    pids = []
    for _ in range(5):
        pids.append(_one(c1, "SELECT pg_backend_pid()")[0])
        pids.append(_one(c2, "SELECT pg_backend_pid()")[0])
    assert len(set(pids)) == 1, pids


def test_each_user_and_database_pair_gets_its_own_pool(pgscale):
    # `postgres` logs in without a password (PostgreSQL trusts it): pools,
    # not client authentication, are under test here
    pg = pgscale(PGSCALE_AUTH_TYPE="trust")
    for user, db in (("app", "app"), ("postgres", "app"), ("app", "postgres")):
        conn = pg.connect(user=user, db=db)
        assert _one(conn, "SELECT current_user, current_database()") == (user, db)
    pairs = {(r["database"], r["user"]) for r in pg.admin("SHOW POOLS")}
    assert {("app", "app"), ("app", "postgres"), ("postgres", "app")} <= pairs, pairs


# -- session state following the client ---------------------------------------
@pytest.fixture
def two_schemas(primary):
    for s in ("setf_a", "setf_b"):
        primary.app_execute("DROP SCHEMA IF EXISTS %s CASCADE" % s)
        primary.app_execute("CREATE SCHEMA %s" % s)
        primary.app_execute("CREATE TABLE %s.t AS SELECT '%s'::text AS v" % (s, s))
    yield ("setf_a", "setf_b")
    for s in ("setf_a", "setf_b"):
        primary.app_execute("DROP SCHEMA IF EXISTS %s CASCADE" % s)


def test_set_follows_client_in_transaction_mode(pgscale, two_schemas):
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    ca, cb = pg.connect(), pg.connect()
    for c, s in ((ca, "setf_a"), (cb, "setf_b")):
        with c.cursor() as cur:
            cur.execute("SET search_path TO %s, public" % s)
            cur.execute("SET application_name = 'client-%s'" % s)
    pids = set()
    for _ in range(10):
        for c, s in ((ca, "setf_a"), (cb, "setf_b")):
            v, app, pid = _one(c, "SELECT v, current_setting('application_name'), pg_backend_pid() FROM t")
            assert (v, app) == (s, "client-" + s)
            pids.add(pid)
    assert len(pids) == 1, "the clients did not share the one server: %r" % pids
    with ca.cursor() as cur:
        cur.execute("RESET search_path")
    with pytest.raises(psycopg2.errors.UndefinedTable):
        _one(ca, "SELECT v FROM t")
    assert _one(cb, "SELECT v FROM t") == ("setf_b",)


def test_startup_parameters_follow_client_in_transaction_mode(pgscale):
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    ca = pg.connect(application_name="alpha", options="'-c work_mem=5MB'")
    cb = pg.connect(application_name="beta")
    for _ in range(5):
        assert _one(ca, "SELECT current_setting('application_name'), "
                        "current_setting('work_mem')") == ("alpha", "5MB")
        assert _one(cb, "SELECT current_setting('application_name'), "
                        "current_setting('work_mem')") == ("beta", "4MB")


def test_set_does_not_leak_to_other_clients_in_transaction_mode(pgscale):
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    c1 = pg.connect()
    with c1.cursor() as cur:
        cur.execute("SET work_mem = '7MB'")
        cur.execute("SET search_path TO pg_catalog")
    pid1 = _one(c1, "SELECT pg_backend_pid()")[0]
    c2 = pg.connect()
    assert _one(c2, "SELECT current_setting('work_mem'), current_setting('search_path'), "
                    "pg_backend_pid()") == ("4MB", '"$user", public', pid1)
    assert _one(c1, "SELECT current_setting('work_mem')") == ("7MB",)


@pytest.mark.deadline(60)
def test_prepared_statements_follow_client_across_servers(pgscale):
    # Two servers, one worker.  A blocker -- a new client each time, so that
    # it has no server of its own to prefer -- takes the server the asyncpg
    # client used last (idle servers are reused most-recent-first) and holds
    # it during the client's next statement, so the client alternates
    # between the two: its statements must be prepared on each on first use.
    pg = pgscale(DB_POOL_SIZE=2, DB_MAX_OVERFLOW=0, PGSCALE_WORKERS=1, DB_POOL_TIMEOUT=20)

    async def go():
        conn = await aconnect(pg)
        try:
            stmt = await conn.prepare("SELECT $1::int + 1, pg_backend_pid()")
            pids, vals = [], []
            for i in range(20):
                blocker = psycopg2.connect(pg.dsn())
                with blocker.cursor() as cur:
                    cur.execute("SELECT 1")   # takes the server the client just used
                v, pid = await stmt.fetchrow(i)
                vals.append(v)
                pids.append(pid)
                blocker.close()               # the client gets the other one back
                # the implicit statement cache (named statements) as well
                v, pid = await conn.fetchrow("SELECT $1::int * 10, pg_backend_pid()", i)
                vals.append(v)
                pids.append(pid)
            return vals, pids
        finally:
            await conn.close()

    vals, pids = arun(go(), timeout=50)
    assert vals == [x for i in range(20) for x in (i + 1, i * 10)]
    assert len(set(pids)) == 2, "the statement never ran on a second server: %r" % pids
    switches = sum(1 for a, b in zip(pids, pids[1:]) if a != b)
    assert switches >= 10, "the client changed servers only %d times: %r" % (switches, pids)


def test_prepared_statement_survives_server_replacement(pgscale):
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, PGSCALE_SERVER_LIFETIME="1s")

    async def go():
        conn = await aconnect(pg)
        try:
            stmt = await conn.prepare("SELECT $1::text || '-ok', pg_backend_pid()")
            first = tuple(await stmt.fetchrow("a"))
            await asyncio.sleep(1.6)
            second = tuple(await stmt.fetchrow("b"))
            return first, second
        finally:
            await conn.close()

    (v1, pid1), (v2, pid2) = arun(go())
    assert (v1, v2) == ("a-ok", "b-ok")
    assert pid1 != pid2, "server was not replaced after PGSCALE_SERVER_LIFETIME"


def test_session_mode_resets_server_between_clients(pgscale):
    pg = pgscale(PGSCALE_POOL_MODE="session", DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    c1 = pg.connect()
    with c1.cursor() as cur:
        cur.execute("SET work_mem = '7MB'")
        cur.execute("PREPARE leftover AS SELECT 1")
        cur.execute("CREATE TEMP TABLE leftover_tmp (x int)")
    pid1 = _one(c1, "SELECT pg_backend_pid()")[0]
    c1.close()
    c2 = pg.connect()
    assert _one(c2, "SELECT pg_backend_pid(), current_setting('work_mem')") == (pid1, "4MB")
    with pytest.raises(psycopg2.errors.InvalidSqlStatementName):
        _one(c2, "EXECUTE leftover")
    with pytest.raises(psycopg2.errors.UndefinedTable):
        _one(c2, "SELECT * FROM leftover_tmp")


# -- idle and lifetime limits -----------------------------------------------------
def test_server_idle_timeout_closes_idle_servers(pgscale, primary):
    pg = pgscale(DB_POOL_SIZE=3, PGSCALE_SERVER_IDLE_TIMEOUT="1s")
    conn = pg.connect()
    assert _one(conn, "SELECT 1") == (1,)
    assert pg.sv_total() >= 1
    wait_for(lambda: pg.sv_total() == 0, 6, what="SHOW POOLS sv_total to drop to 0")
    wait_for(lambda: not primary.backends(), 3, what="server backends to go away")
    assert _one(conn, "SELECT 2") == (2,)


def test_server_lifetime_replaces_old_servers(pgscale):
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, PGSCALE_SERVER_LIFETIME="1s")
    conn = pg.connect()
    pid1 = _one(conn, "SELECT pg_backend_pid()")[0]
    # used every 0.1 s, the server is still replaced once it is 1 s old
    wait_for(lambda: _one(conn, "SELECT pg_backend_pid()")[0] != pid1, 5, interval=0.1,
             what="a new server after PGSCALE_SERVER_LIFETIME (1 s)")


# -- what transaction mode refuses (with pinning off; tests/integration/test_pinning.py
# has what it does with pinning on), and session mode allows ----------------------
def test_listen_is_rejected_in_transaction_mode(pgscale):
    pg = pgscale(PGSCALE_PINNING="off")
    conn = pg.connect()
    with pytest.raises(psycopg2.errors.FeatureNotSupported) as exc:
        _one(conn, "LISTEN some_channel")
    assert exc.value.pgcode == "0A000"
    assert "session" in str(exc.value).lower()
    assert _one(conn, "SELECT 1") == (1,)


def test_session_advisory_lock_is_rejected_in_transaction_mode(pgscale, primary):
    pg = pgscale(PGSCALE_PINNING="off")
    conn = pg.connect()
    with pytest.raises(psycopg2.errors.FeatureNotSupported) as exc:
        _one(conn, "SELECT pg_advisory_lock(4242)")
    assert exc.value.pgcode == "0A000"
    assert primary.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]
    assert _one(conn, "SELECT 1") == (1,)


def test_transaction_advisory_lock_is_allowed_in_transaction_mode(pgscale):
    pg = pgscale()
    conn = pg.connect(autocommit=False)
    assert _one(conn, "SELECT pg_advisory_xact_lock(4243)::text") == ("",)
    conn.commit()


def test_listen_notify_works_in_session_mode(pgscale):
    pg = pgscale(PGSCALE_POOL_MODE="session")
    listener, notifier = pg.connect(), pg.connect()
    with listener.cursor() as cur:
        cur.execute("LISTEN it_channel")
    with notifier.cursor() as cur:
        cur.execute("NOTIFY it_channel, 'hello'")
    deadline = time.monotonic() + 5
    while not listener.notifies and time.monotonic() < deadline:
        select.select([listener], [], [], 0.5)
        listener.poll()
    assert [(n.channel, n.payload) for n in listener.notifies] == [("it_channel", "hello")]
