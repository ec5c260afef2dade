"""Adversarial cases that a pooler gets wrong when it shares one server
between clients: the client-connection limit, cancel requests that must reach
only their own client's query, reloads under load, a backend killed with
SIGKILL, suspended portals, pipelines of several Syncs competing for one
server, the ParameterStatus set at login, per-client encodings, DISCARD ALL /
DEALLOCATE ALL from one client, and clients vanishing in every protocol
state.

Outcomes are checked on PostgreSQL itself (rows, pg_stat_activity) through a
direct connection to the primary, not only through pgscale.
"""
import os
import signal
import struct
import subprocess
import threading
import time

import psycopg2
import pytest

import pgwire
from helpers import APP_DB, APP_PASSWORD, APP_USER, LOCALHOST, client_env, pgbench, wait_for


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def msg(t, payload=b""):
    return pgwire.message(t, payload)


def cstr(s):
    return (s if isinstance(s, bytes) else s.encode()) + b"\0"


def parse(name, sql):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!H", 0))


def bind(stmt, params=(), portal=""):
    out = cstr(portal) + cstr(stmt) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        b = str(p).encode()
        out += struct.pack("!i", len(b)) + b
    return msg(b"B", out + struct.pack("!H", 0))


def execute(portal="", max_rows=0):
    return msg(b"E", cstr(portal) + struct.pack("!I", max_rows))


SYNC = msg(b"S")
FLUSH = msg(b"H")


def types(msgs):
    return b"".join(t for t, _ in msgs)


def connect(pg, timeout=10, **params):
    c = pgwire.RawConn(LOCALHOST, pg.port, timeout=timeout)
    msgs = c.startup(**params)
    assert pgwire.ready_status(msgs) == "I", msgs
    return c


def recv_until(c, mtype, timeout=10):
    """Messages up to and including the first of type mtype."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        m = c.recv_msg(timeout=max(0.001, deadline - time.monotonic()))
        assert m is not None, "connection closed; got %r" % got
        got.append(m)
        if m[0] == mtype:
            return got


def _one(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def _pool_waiting(pg):
    r = pg.pool()
    return r is not None and int(r["cl_waiting"]) >= 1


def _active_backend(primary, needle):
    rows = primary.execute(
        "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s "
        "AND pid <> pg_backend_pid()", ("%" + needle + "%",))
    return rows[0][0] if rows else None


def _idle_in_transaction(primary):
    return [b for b in primary.backends() if (b["state"] or "").startswith("idle in transaction")]


@pytest.fixture
def adv_table(primary):
    primary.app_execute("DROP TABLE IF EXISTS adv_t")
    primary.app_execute("CREATE TABLE adv_t (id int PRIMARY KEY, note text)")
    yield "adv_t"
    primary.app_execute("DROP TABLE IF EXISTS adv_t")


# --------------------------------------------------------------------------
# client-connection limit
# --------------------------------------------------------------------------
@pytest.mark.deadline(30)
def test_client_past_max_client_conn_gets_53300_and_earlier_clients_keep_working(pgscale):
    pg = pgscale(PGSCALE_MAX_CLIENT_CONN=3, DB_POOL_SIZE=2, DB_MAX_OVERFLOW=0)
    held = [connect(pg) for _ in range(3)]
    try:
        with pgwire.RawConn(LOCALHOST, pg.port, timeout=5) as c:
            msgs = c.startup(timeout=5)  # the limit applies once the client has logged in
        errs = pgwire.errors(msgs)
        assert len(errs) == 1 and not [t for t, _ in msgs if t == b"Z"], msgs
        e = errs[0]
        assert e["S"] == "FATAL" and e["C"] == "53300", e
        assert "too many clients" in e["M"] and "3" in e["M"], e
        assert "PGSCALE_MAX_CLIENT_CONN" in e.get("H", "") + e["M"], e
        for i, c in enumerate(held):
            assert pgwire.data_rows(c.simple_query("SELECT %d" % i)) == [[str(i)]]
    finally:
        for c in held:
            c.close()
    # with the earlier clients gone, a new one is admitted again
    def admitted():
        with pgwire.RawConn(LOCALHOST, pg.port, timeout=5) as c:
            return pgwire.ready_status(c.startup()) == "I"
    wait_for(admitted, 5, interval=0.1, what="a client admitted once the others left")


# --------------------------------------------------------------------------
# cancel requests on a shared server
# --------------------------------------------------------------------------
@pytest.mark.deadline(40)
def test_cancel_reaches_only_its_own_clients_query_on_a_shared_server(pgscale, primary):
    pg = pgscale(PGSCALE_POOL_MODE="transaction", DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    a, b = connect(pg), connect(pg)
    try:
        a.send(pgwire.query("SELECT pg_sleep(20) /* adv-cancel-a */"))
        wait_for(lambda: _active_backend(primary, "adv-cancel-a"), 5, what="A's query to run")
        b.send(pgwire.query("SELECT 'b' || 1"))
        wait_for(lambda: _pool_waiting(pg), 5, what="B waiting for the one server")
        pgwire.send_cancel(LOCALHOST, pg.port, *a.backend_key)
        ra = a.read_until_ready(10)
        assert [e["C"] for e in pgwire.errors(ra)] == ["57014"], ra
        rb = b.read_until_ready(10)
        assert pgwire.errors(rb) == [], "B's query was hit by A's cancel: %r" % rb
        assert pgwire.data_rows(rb) == [["b1"]]
        # both clients carry on
        assert pgwire.data_rows(a.simple_query("SELECT 'a'")) == [["a"]]
        assert pgwire.data_rows(b.simple_query("SELECT 'b'")) == [["b"]]
    finally:
        a.close()
        b.close()


@pytest.mark.deadline(40)
def test_cancel_sent_after_the_query_finished_does_not_hit_the_next_client(pgscale, primary):
    pg = pgscale(PGSCALE_POOL_MODE="transaction", DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    a, b = connect(pg), connect(pg)
    try:
        ra = a.simple_query("SELECT pg_backend_pid()")
        server_pid = int(pgwire.data_rows(ra)[0][0])
        b.send(pgwire.query("SELECT pg_backend_pid(), 'b' FROM pg_sleep(1.5) /* adv-late-b */"))
        wait_for(lambda: _active_backend(primary, "adv-late-b"), 5, what="B's query to run")
        pgwire.send_cancel(LOCALHOST, pg.port, *a.backend_key)   # A is idle: a late cancel
        rb = b.read_until_ready(10)
        assert pgwire.errors(rb) == [], "A's late cancel cancelled B's query: %r" % rb
        # the same server ran both, so a forwarded cancel would have hit B
        assert pgwire.data_rows(rb) == [[str(server_pid), "b"]]
        assert pgwire.data_rows(a.simple_query("SELECT 'a'")) == [["a"]]
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------
# reload under load
# --------------------------------------------------------------------------
@pytest.fixture
def pgbench_tables(primary):
    r = pgbench(primary.port, ["-i", "-q", "-s", "1"], password=APP_PASSWORD, timeout=90)
    assert r.returncode == 0, r.stderr
    yield
    primary.app_execute("DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, "
                        "pgbench_history, pgbench_tellers")


@pytest.mark.deadline(90)
def test_sighup_during_pgbench_load_fails_no_transaction(pgscale, pgbench_tables):
    pg = pgscale(DB_POOL_SIZE=4, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=20)
    argv = ["pgbench", "-h", LOCALHOST, "-p", str(pg.port), "-U", APP_USER,
            "-c", "8", "-T", "5", "-n", APP_DB]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=client_env(), stdin=subprocess.DEVNULL)
    try:
        time.sleep(1.0)   # let the load start
        for _ in range(6):
            pg.signal(signal.SIGHUP)
            time.sleep(0.5)
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert pg.is_running(), "pgscale exited (rc=%s)" % pg.proc.returncode
    # every SIGHUP was a real reload, done while pgbench ran
    assert pg.stderr_text().count("configuration reloaded") == 6, pg.stderr_text()[-3000:]
    assert proc.returncode == 0, "pgbench rc=%d\n%s\n%s" % (proc.returncode, out, err[-3000:])
    assert "number of failed transactions: 0 " in out, out
    assert "number of transactions actually processed: " in out, out
    processed = int(out.split("number of transactions actually processed: ")[1].split()[0])
    assert processed > 0, out


# --------------------------------------------------------------------------
# a backend killed with SIGKILL (PostgreSQL restarts all backends)
# --------------------------------------------------------------------------
def _primary_accepts(primary):
    try:
        primary.execute("SELECT 1")
        return True
    except psycopg2.Error:
        return False


@pytest.mark.deadline(60)
def test_backend_killed_with_sigkill_gives_the_client_08006_and_the_next_client_works(
        pgscale, primary, adv_table):
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=20,
                 PGSCALE_SERVER_CONNECT_TIMEOUT="10s")
    try:
        with pgwire.RawConn(LOCALHOST, pg.port, timeout=10) as c:
            assert pgwire.ready_status(c.startup()) == "I"
            assert pgwire.ready_status(c.simple_query("BEGIN")) == "T"
            c.simple_query("INSERT INTO adv_t VALUES (1, 'killed')")
            c.send(pgwire.query("SELECT pg_sleep(30) /* adv-kill9 */"))
            pid = wait_for(lambda: _active_backend(primary, "adv-kill9"), 5,
                           what="the query to run")
            # the cluster runs with synchronous_commit off: make adv_t's
            # creation durable before the crash restart throws WAL buffers away
            primary.execute("CHECKPOINT")
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            try:
                msgs = c.read_until_close(10)
            except pgwire.ProtocolTimeout:
                pytest.fail("the client was not told within 10 s that its server died")
            elapsed = time.monotonic() - t0
        errs = pgwire.errors(msgs)
        assert not [t for t, _ in msgs if t == b"Z"], msgs
        # PostgreSQL sends nothing when a backend is SIGKILLed: the error is
        # pgscale's own, FATAL 08006
        assert len(errs) == 1, errs
        assert errs[0]["S"] == "FATAL" and errs[0]["C"] == "08006", errs
        assert "server connection lost" in errs[0]["M"], errs
        assert elapsed < 5, "told after %.1f s" % elapsed
    finally:
        wait_for(lambda: _primary_accepts(primary), 30, interval=0.2,
                 what="the primary to finish crash recovery")
    # the next client gets a working server (the pool replaces the dead one)
    nxt = pg.connect(autocommit=False)
    assert _one(nxt, "SELECT 1") == (1,)
    with nxt.cursor() as cur:
        cur.execute("INSERT INTO adv_t VALUES (2, 'next')")
    nxt.commit()
    assert primary.app_execute("SELECT id, note FROM adv_t ORDER BY id") == [(2, "next")]
    assert pg.is_running()


# --------------------------------------------------------------------------
# suspended portals
# --------------------------------------------------------------------------
@pytest.mark.deadline(30)
def test_execute_with_row_limit_resumes_the_portal_in_chunks_in_transaction_mode(pgscale):
    pg = pgscale(PGSCALE_POOL_MODE="transaction", DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    c, other = connect(pg), connect(pg)
    try:
        assert pgwire.ready_status(c.simple_query("BEGIN")) == "T"
        c.send(parse("", "SELECT g FROM generate_series(1, 10) g") + bind("", portal="cur1") +
               execute("cur1", 4) + SYNC)
        m = c.read_until_ready()
        assert types(m) == b"12DDDDsZ", m
        assert pgwire.data_rows(m) == [["1"], ["2"], ["3"], ["4"]]
        assert pgwire.ready_status(m) == "T"
        # resumed with Flush rather than Sync: the portal goes on
        c.send(execute("cur1", 4) + FLUSH)
        m = recv_until(c, b"s")
        assert pgwire.data_rows(m) == [["5"], ["6"], ["7"], ["8"]], m
        c.send(execute("cur1", 4) + SYNC)
        m = c.read_until_ready()
        assert types(m) == b"DDCZ", m
        assert pgwire.data_rows(m) == [["9"], ["10"]]
        assert [p for t, p in m if t == b"C"] == [b"SELECT 2\0"]
        # another client waits for the server meanwhile; it gets its own answer after COMMIT
        other.send(pgwire.query("SELECT 'other'"))
        assert pgwire.ready_status(c.simple_query("COMMIT")) == "I"
        assert pgwire.data_rows(other.read_until_ready()) == [["other"]]
    finally:
        c.close()
        other.close()


# --------------------------------------------------------------------------
# pipelines of several Syncs competing for one server
# --------------------------------------------------------------------------
@pytest.mark.deadline(60)
def test_pipelined_syncs_get_their_replies_in_order_while_others_share_the_server(pgscale):
    pg = pgscale(PGSCALE_POOL_MODE="transaction", DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0,
                 DB_POOL_TIMEOUT=30)
    stop = threading.Event()
    problems = []

    def competitor(tag):
        try:
            c = connect(pg)
            try:
                i = 0
                while not stop.is_set():
                    m = c.simple_query("SELECT '%s-%d'" % (tag, i))
                    if pgwire.errors(m) or pgwire.data_rows(m) != [["%s-%d" % (tag, i)]]:
                        problems.append((tag, i, m))
                        return
                    c.send(parse("", "SELECT $1::text") + bind("", ["%s-x%d" % (tag, i)]) +
                           execute() + SYNC)
                    m = c.read_until_ready()
                    if pgwire.data_rows(m) != [["%s-x%d" % (tag, i)]]:
                        problems.append((tag, i, m))
                        return
                    i += 1
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            problems.append((tag, repr(e)))

    threads = [threading.Thread(target=competitor, args=(t,), daemon=True) for t in ("B", "C")]
    for t in threads:
        t.start()
    a = connect(pg)
    try:
        for rnd in range(3):
            batch = b"".join(parse("", "SELECT $1::text") + bind("", ["A-%d-%d" % (rnd, i)]) +
                             execute() + SYNC for i in range(20))
            a.send(batch)
            for i in range(20):
                m = a.read_until_ready(20)
                assert types(m) == b"12DCZ", (rnd, i, m)
                assert pgwire.data_rows(m) == [["A-%d-%d" % (rnd, i)]], (rnd, i, m)
                assert pgwire.ready_status(m) == "I"
            # and nothing more arrives than the 20 replies
            assert pgwire.data_rows(a.simple_query("SELECT 'A-end'")) == [["A-end"]]
    finally:
        stop.set()
        for t in threads:
            t.join(20)
        a.close()
    assert not problems, problems


# --------------------------------------------------------------------------
# ParameterStatus at login
# --------------------------------------------------------------------------
@pytest.mark.deadline(30)
def test_parameter_status_at_login_equals_what_postgresql_sends(pgscale, primary):
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    direct = pgwire.RawConn(primary.host, primary.port)
    msgs = direct.login(APP_USER, APP_DB, APP_PASSWORD)
    direct.close()
    assert pgwire.ready_status(msgs) == "I", msgs
    via = connect(pg)
    via.close()
    # Intended differences: none.  application_name is '' in both (no
    # application_name in either startup packet).
    assert via.params == direct.params, (
        "ParameterStatus differs: only via pgscale %r; only direct %r; different values %r" % (
            {k: v for k, v in via.params.items() if k not in direct.params},
            {k: v for k, v in direct.params.items() if k not in via.params},
            {k: (via.params[k], direct.params[k]) for k in via.params
             if k in direct.params and via.params[k] != direct.params[k]}))


# --------------------------------------------------------------------------
# client encodings on a shared server
# --------------------------------------------------------------------------
@pytest.mark.deadline(30)
def test_clients_with_different_client_encoding_share_a_server_and_keep_their_own(
        pgscale, primary, adv_table):
    pg = pgscale(PGSCALE_POOL_MODE="transaction", DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    latin, utf = connect(pg, client_encoding="LATIN1"), connect(pg, client_encoding="UTF8")
    try:
        for rnd in range(3):
            m = latin.simple_query("SHOW client_encoding")
            assert pgwire.data_rows(m) == [["LATIN1"]], (rnd, m)
            m = utf.simple_query("SHOW client_encoding")
            assert pgwire.data_rows(m) == [["UTF8"]], (rnd, m)
            # café in each client's own encoding; the server's bytes are UTF-8
            m = latin.simple_query(b"SELECT 'caf\xe9', length('caf\xe9'), "
                                   b"encode(convert_to('caf\xe9', 'UTF8'), 'hex')")
            assert pgwire.raw_rows(m) == [[b"caf\xe9", b"4", b"636166c3a9"]], (rnd, m)
            m = utf.simple_query(b"SELECT 'caf\xc3\xa9', length('caf\xc3\xa9'), "
                                 b"encode(convert_to('caf\xc3\xa9', 'UTF8'), 'hex')")
            assert pgwire.raw_rows(m) == [[b"caf\xc3\xa9", b"4", b"636166c3a9"]], (rnd, m)
        m = latin.simple_query(b"INSERT INTO adv_t VALUES (1, 'na\xefve')")
        assert not pgwire.errors(m), m
        m = utf.simple_query(b"INSERT INTO adv_t VALUES (2, 'na\xc3\xafve')")
        assert not pgwire.errors(m), m
        # each reads the other's row in its own encoding
        assert pgwire.raw_rows(latin.simple_query("SELECT note FROM adv_t WHERE id = 2")) == \
            [[b"na\xefve"]]
        assert pgwire.raw_rows(utf.simple_query("SELECT note FROM adv_t WHERE id = 1")) == \
            [[b"na\xc3\xafve"]]
    finally:
        latin.close()
        utf.close()
    # stored as the same text on PostgreSQL
    assert primary.app_execute("SELECT id, note FROM adv_t ORDER BY id") == \
        [(1, "na\u00efve"), (2, "na\u00efve")]


# --------------------------------------------------------------------------
# DISCARD ALL / DEALLOCATE ALL from one client
# --------------------------------------------------------------------------
@pytest.mark.deadline(30)
@pytest.mark.parametrize("stmt", ["DISCARD ALL", "DEALLOCATE ALL"])
def test_discard_or_deallocate_all_from_one_client_keeps_others_prepared_statements(
        pgscale, stmt):
    pg = pgscale(PGSCALE_POOL_MODE="transaction", DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    owner, other = connect(pg), connect(pg)
    try:
        owner.send(parse("owner_s1", "SELECT 'owner' || $1::text") + SYNC)
        assert types(owner.read_until_ready()) == b"1Z"
        owner.send(bind("owner_s1", [1]) + execute() + SYNC)
        assert pgwire.data_rows(owner.read_until_ready()) == [["owner1"]]
        m = other.simple_query(stmt)
        assert pgwire.errors(m) == [] and pgwire.ready_status(m) == "I", m
        for i in range(2, 5):
            owner.send(bind("owner_s1", [i]) + execute() + SYNC)
            m = owner.read_until_ready()
            assert pgwire.errors(m) == [], "after another client's %s: %r" % (stmt, m)
            assert pgwire.data_rows(m) == [["owner%d" % i]]
    finally:
        owner.close()
        other.close()


# --------------------------------------------------------------------------
# clients vanishing in every protocol state
# --------------------------------------------------------------------------
def _vanish_extended_insert_flush(c, primary):
    # Outside BEGIN, the INSERT runs in the implicit transaction that the
    # next Sync would commit; with no Sync ever sent, it must not commit.
    c.send(parse("", "INSERT INTO adv_t VALUES (1, 'vanished')") + bind("") + execute() + FLUSH)
    m = recv_until(c, b"C")
    assert types(m) == b"12C", m


def _vanish_mid_copy(c, primary):
    c.send(pgwire.query("COPY adv_t FROM STDIN"))
    m = recv_until(c, b"G")
    assert types(m) == b"G", m
    c.send(msg(b"d", b"1\tvanished\n2\tvanished\n"))


def _vanish_mid_pipeline(c, primary):
    batch = parse("", "BEGIN") + bind("") + execute() + SYNC
    batch += parse("", "INSERT INTO adv_t VALUES (1, 'vanished')") + bind("") + execute() + SYNC
    batch += parse("", "SELECT pg_sleep(3) /* adv-pipe */") + bind("") + execute() + SYNC
    for i in range(2, 6):
        batch += parse("", "INSERT INTO adv_t VALUES (%d, 'vanished')" % i) + bind("") + \
            execute() + SYNC
    c.send(batch)
    wait_for(lambda: _active_backend(primary, "adv-pipe"), 5, what="the pipeline's sleep to run")


def _vanish_in_transaction_after_insert(c, primary):
    assert pgwire.ready_status(c.simple_query("BEGIN")) == "T"
    m = c.simple_query("INSERT INTO adv_t VALUES (1, 'vanished')")
    assert pgwire.ready_status(m) == "T", m


def _vanish_during_pg_sleep(c, primary):
    _vanish_in_transaction_after_insert(c, primary)
    c.send(pgwire.query("SELECT pg_sleep(20) /* adv-sleep */"))
    wait_for(lambda: _active_backend(primary, "adv-sleep"), 5, what="the sleep to run")


def _vanish_in_failed_transaction(c, primary):
    _vanish_in_transaction_after_insert(c, primary)
    m = c.simple_query("SELECT 1/0")
    assert [e["C"] for e in pgwire.errors(m)] == ["22012"] and pgwire.ready_status(m) == "E", m


_VANISH_STATES = {
    "extended_insert_flushed": _vanish_extended_insert_flush,
    "mid_copy_from_stdin": _vanish_mid_copy,
    "mid_pipeline_with_syncs_outstanding": _vanish_mid_pipeline,
    "in_transaction_after_insert": _vanish_in_transaction_after_insert,
    "during_pg_sleep": _vanish_during_pg_sleep,
    "in_failed_transaction": _vanish_in_failed_transaction,
}


def _check_vanished_client_left_nothing(pg, primary):
    nxt = pg.connect(autocommit=False)
    assert _one(nxt, "SELECT 1") == (1,)
    nxt.commit()
    with nxt.cursor() as cur:
        cur.execute("INSERT INTO adv_t VALUES (100, 'next')")
    nxt.commit()
    nxt.close()
    rows = primary.app_execute("SELECT id, note FROM adv_t ORDER BY id")
    assert rows == [(100, "next")], \
        "the vanished client's writes were committed (by the next client): %r" % rows
    wait_for(lambda: not _idle_in_transaction(primary), 5,
             what="no pgscale backend idle in transaction")


@pytest.mark.deadline(40)
@pytest.mark.parametrize("state", list(_VANISH_STATES))
def test_client_vanishing_leaves_no_write_and_no_open_transaction(pgscale, primary, adv_table,
                                                                  state):
    pg = pgscale(PGSCALE_POOL_MODE="transaction", DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0,
                 DB_POOL_TIMEOUT=10)
    c = connect(pg)
    try:
        _VANISH_STATES[state](c, primary)
    finally:
        c.close(abort=True)   # SO_LINGER 0: a reset
    _check_vanished_client_left_nothing(pg, primary)
