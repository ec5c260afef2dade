"""A server connection goes back to the pool only when PostgreSQL itself says
it is idle.  Each test leaves a server in a state that pgscale's own view
could mistake for idle, then checks the outcome where it lives: rows and
pg_stat_activity on the primary, through a direct connection."""
import time

import pytest

import pgwire
from helpers import LOCALHOST
from test_protocol import FLUSH, SYNC, bind, close_statement, connect, execute, msg, parse

ONE_SERVER = dict(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, PGSCALE_POOL_MODE="transaction")


@pytest.fixture
def table(primary):
    conn = primary.connect(db="app")
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS dirty_t; CREATE TABLE dirty_t (v text); "
                    "GRANT ALL ON dirty_t TO app")
    yield conn
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS dirty_t")
    conn.close()


def rows(direct):
    with direct.cursor() as cur:
        cur.execute("SELECT coalesce(array_agg(v ORDER BY v), '{}') FROM dirty_t")
        return cur.fetchone()[0]


def wait_no_idle_in_transaction(direct, bound=10.0):
    deadline = time.monotonic() + bound
    while True:
        with direct.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                        "AND state LIKE 'idle in transaction%'")
            n = cur.fetchone()[0]
        if n == 0:
            return
        assert time.monotonic() < deadline, "%d app backends left idle in transaction" % n
        time.sleep(0.05)


def test_execute_flush_then_vanish_is_not_committed_by_the_next_client(pgscale, table):
    """Parse/Bind/Execute of an INSERT with Flush and no Sync, CommandComplete
    read, then a reset: the next client's SELECT 1 must not commit the row."""
    pg = pgscale(**ONE_SERVER)
    a = connect(pg)
    a.send(parse("", "INSERT INTO dirty_t VALUES ('vanished')") + bind("") + execute("") + FLUSH)
    got = []
    while not any(t == b"C" for t, _ in got):
        got.append(a.recv_msg())
    assert [t for t, _ in got] == [b"1", b"2", b"C"]
    a.close(abort=True)
    with pg.connect() as b, b.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
        cur.execute("INSERT INTO dirty_t VALUES ('next')")
    assert rows(table) == ["next"]
    wait_no_idle_in_transaction(table)


def test_unsynced_execute_in_the_same_read_as_ready_keeps_the_server(pgscale, table):
    """A Query and then Parse/Bind/Execute+Flush sent together: their replies
    can arrive in one read with the ReadyForQuery of the Query first.  The
    server must stay the client's until its Sync, so another client cannot
    run inside that implicit transaction."""
    pg = pgscale(**ONE_SERVER)
    a = connect(pg)
    a.send(pgwire.query("SELECT 1") + parse("", "INSERT INTO dirty_t VALUES ('a')") + bind("") +
           execute("") + FLUSH)
    seen = []
    while not any(t == b"C" and p.startswith(b"INSERT") for t, p in seen):
        seen.append(a.recv_msg())
    # Another client now needs the one server; it must wait for A's Sync.
    with pg.connect() as b, b.cursor() as cur:
        import threading
        done = threading.Event()

        def other():
            cur.execute("INSERT INTO dirty_t VALUES ('b')")
            done.set()

        t = threading.Thread(target=other, daemon=True)
        t.start()
        assert not done.wait(0.5), "another client ran while A's implicit transaction was open"
        a.send(msg(b"Q", b"ROLLBACK\0"))  # ends A's implicit transaction: its row goes
        got = a.read_until_ready()
        assert pgwire.ready_status(got) == "I"
        assert done.wait(10)
        t.join(10)
    a.close()
    assert rows(table) == ["b"]


def test_sync_after_error_then_vanish_leaves_a_clean_server(pgscale, table):
    """An error in an unsynced pipeline: the server skips to the next Sync.
    The vanished client's earlier INSERT must not survive."""
    pg = pgscale(**ONE_SERVER)
    a = connect(pg)
    a.send(parse("", "INSERT INTO dirty_t VALUES ('x')") + bind("") + execute("") +
           parse("", "SELECT 1/0") + bind("") + execute("") + FLUSH)
    got = []
    while not any(t == b"E" for t, _ in got):
        got.append(a.recv_msg())
    a.close(abort=True)
    with pg.connect() as b, b.cursor() as cur:
        cur.execute("SELECT 1")
        cur.execute("INSERT INTO dirty_t VALUES ('ok')")
    assert rows(table) == ["ok"]
    wait_no_idle_in_transaction(table)


def test_oversized_close_is_refused_without_losing_the_server(pgscale, primary):
    """A Close whose statement name is 100 KiB: PostgreSQL accepts at most
    10,000 bytes for such a message and would drop the connection; pgscale
    refuses it itself (08P01), reads nothing past what it holds, and the
    server connection goes on serving other clients."""
    pg = pgscale(**ONE_SERVER)
    with pg.connect() as warm, warm.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    for m in (close_statement("s" * (100 * 1024)), msg(b"D", b"S" + b"d" * 20000 + b"\0")):
        a = connect(pg)
        a.send(m + SYNC)
        got = a.read_until_close()
        errs = pgwire.errors(got)
        assert errs and errs[0].get("C") == "08P01", got
        with pg.connect() as b, b.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            assert cur.fetchone()[0] == pid, "the server connection was lost"


def test_bind_naming_a_long_portal_streams_through(pgscale):
    """Bind with a 100 KiB portal name (legal, if odd; pgscale inspects only
    the first 64 KiB of a Bind): answered as directly."""
    pg = pgscale(**ONE_SERVER)
    a = connect(pg)
    portal = "p" * (100 * 1024)
    a.send(parse("", "SELECT 7") + bind("", portal=portal) + SYNC)
    got = a.read_until_ready()
    assert [t for t, _ in got] == [b"1", b"2", b"Z"]
    a.close()


def test_failed_restore_never_runs_a_query_under_another_clients_settings(pgscale, primary):
    """A's SET default_text_search_config names a configuration that is
    dropped while B uses the one server.  Restoring A's settings then
    fails; A's next query must not run with B's settings: it gets an
    error naming the reason, and the server goes on serving others.
    (Raw protocol for A: libpq reports a FATAL that arrives with the close
    as "server closed the connection unexpectedly".)"""
    direct = primary.connect(db="app")
    with direct.cursor() as cur:
        cur.execute("DROP TEXT SEARCH CONFIGURATION IF EXISTS public.restore_cfg; "
                    "CREATE TEXT SEARCH CONFIGURATION public.restore_cfg (COPY = simple)")
    pg = pgscale(**ONE_SERVER)
    try:
        a = connect(pg)
        b = pg.connect()
        a.simple_query("SET default_text_search_config = 'public.restore_cfg'")
        assert pgwire.data_rows(a.simple_query("SHOW default_text_search_config")) == \
            [["public.restore_cfg"]]
        with b.cursor() as cur:
            cur.execute("SHOW default_text_search_config")
            assert cur.fetchone()[0] == "pg_catalog.english"
        with direct.cursor() as cur:
            cur.execute("DROP TEXT SEARCH CONFIGURATION public.restore_cfg")
        a.send(pgwire.query("SHOW default_text_search_config"))
        got = a.read_until_close()
        assert not pgwire.data_rows(got), "A ran under another client's settings: %r" % got
        errs = pgwire.errors(got)
        assert len(errs) == 1 and errs[0]["S"] == "FATAL" and errs[0]["C"] == "22023", got
        assert "could not restore this session's settings" in errs[0]["M"], errs
        with b.cursor() as cur:
            cur.execute("SHOW default_text_search_config")
            assert cur.fetchone()[0] == "pg_catalog.english"
        b.close()
    finally:
        with direct.cursor() as cur:
            cur.execute("DROP TEXT SEARCH CONFIGURATION IF EXISTS public.restore_cfg")
        direct.close()
