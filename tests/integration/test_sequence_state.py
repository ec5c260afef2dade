"""lastval() / currval() in transaction mode: sequence state is per server
connection, so a client must never read a value another client's session
generated.  Through pgscale a client gets what a direct connection would
give, or 0A000 naming the function and what to use instead; a client that
reads sequence state is pinned (reason `sequence`) so that later reads work."""
import asyncio
import threading
import time

import psycopg2
import pytest

import pgwire
from helpers import APP_DB, aconnect, arun

REFUSAL = "lastval()/currval() after another client used the server connection"
REFUSAL_SPLIT = "currval() after this session's earlier sequence values were made"


def tx_pool(pgscale, size, **env):
    env.setdefault("DB_MAX_OVERFLOW", 0)
    return pgscale(PGSCALE_POOL_MODE="transaction", DB_POOL_SIZE=size, **env)


@pytest.fixture
def seqtab(primary):
    name = "lv_%d" % (time.monotonic_ns() % 10**9)
    primary.app_execute("CREATE TABLE %s (id serial PRIMARY KEY, who text)" % name)
    yield name
    primary.app_execute("DROP TABLE IF EXISTS %s" % name)


def one(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def is_refusal(e):
    return e.pgcode == "0A000" and (REFUSAL in str(e) or REFUSAL_SPLIT in str(e)) and \
        "RETURNING" in str(e)


def test_issue_reproduction_never_returns_other_clients_value(pgscale, seqtab):
    """X inserts, Y inserts on the same (only) server connection, X asks
    lastval(): before, X got Y's id; now X is refused with 0A000."""
    pg = tx_pool(pgscale, 1)
    x, y = pg.connect(), pg.connect()
    xid = one(x, "INSERT INTO %s (who) VALUES ('x') RETURNING id" % seqtab)
    yid = one(y, "INSERT INTO %s (who) VALUES ('y') RETURNING id" % seqtab)
    assert yid == xid + 1
    for sql in ("SELECT lastval()", "SELECT currval('%s_id_seq')" % seqtab,
                "SELECT pg_catalog.LASTVAL()"):
        with pytest.raises(psycopg2.Error) as ei:
            one(x, sql)
        assert is_refusal(ei.value), ei.value
    # with nobody in between, the client's own value (the server is its own)
    xid2 = one(x, "INSERT INTO %s (who) VALUES ('x') RETURNING id" % seqtab)
    assert one(x, "SELECT lastval()") == xid2
    assert one(x, "SELECT currval('%s_id_seq')" % seqtab) == xid2


def test_currval_never_shows_a_sequence_another_client_used(pgscale, seqtab):
    """A client that never used the sequence gets 55000, as directly --
    not the value the previous client on that server connection made."""
    pg = tx_pool(pgscale, 1)
    y, x = pg.connect(), pg.connect()
    one(y, "INSERT INTO %s (who) VALUES ('y') RETURNING id" % seqtab)
    for sql in ("SELECT currval('%s_id_seq')" % seqtab, "SELECT lastval()"):
        with pytest.raises(psycopg2.Error) as ei:
            one(x, sql)
        assert ei.value.pgcode == "55000", ei.value


def test_lastval_inside_transaction(pgscale, seqtab, primary):
    """After an insert in the same transaction block: the value, as directly.
    With the client's values gone from the server: 0A000 raised by
    PostgreSQL inside the block, so that the COMMIT that follows rolls back."""
    pg = tx_pool(pgscale, 1)
    other = pg.connect()
    doomed = seqtab + "_doomed"
    with pgwire.RawConn(pg.host, pg.port) as raw:
        raw.startup()
        raw.simple_query("BEGIN")
        msgs = raw.simple_query("INSERT INTO %s (who) VALUES ('r') RETURNING id" % seqtab)
        mine = pgwire.data_rows(msgs)[0][0]
        msgs = raw.simple_query("SELECT lastval()")
        assert not pgwire.errors(msgs) and pgwire.data_rows(msgs) == [[mine]], msgs
        raw.simple_query("COMMIT")
        one(other, "INSERT INTO %s (who) VALUES ('o') RETURNING id" % seqtab)
        raw.simple_query("BEGIN")
        raw.simple_query("CREATE TABLE %s AS SELECT 1 AS a" % doomed)
        msgs = raw.simple_query("SELECT lastval()")
        errs = pgwire.errors(msgs)
        assert errs and errs[0].get("C") == "0A000" and REFUSAL in errs[0].get("M", ""), msgs
        assert pgwire.ready_status(msgs) == "E"
        msgs = raw.simple_query("COMMIT")
        assert any(t == b"C" and p.startswith(b"ROLLBACK") for t, p in msgs), msgs
    assert primary.app_execute("SELECT to_regclass('%s') IS NULL" % doomed) == [(True,)]


def interleave_psycopg2(pg, seqtab, clients, seconds, rounds):
    """Each client: INSERT ... RETURNING id, then lastval() and currval();
    returns (ok, refused, wrong) counts over all clients."""
    counts = {"ok": 0, "refused": 0, "wrong": [], "errors": []}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    per_client = rounds // clients

    def run(i):
        conn = psycopg2.connect(pg.dsn(application_name="seq%d" % i))
        conn.autocommit = True
        ok = refused = 0
        try:
            for _ in range(per_client):
                if time.monotonic() > deadline:
                    break
                mine = one(conn, "INSERT INTO %s (who) VALUES ('c%d') RETURNING id" % (seqtab, i))
                for sql in ("SELECT lastval()", "SELECT currval('%s_id_seq')" % seqtab):
                    try:
                        got = one(conn, sql)
                    except psycopg2.Error as e:
                        if not is_refusal(e):
                            raise
                        refused += 1
                        continue
                    if got != mine:
                        with lock:
                            counts["wrong"].append((i, sql, mine, got))
                    ok += 1
        except Exception as e:
            with lock:
                counts["errors"].append(repr(e))
        finally:
            conn.close()
            with lock:
                counts["ok"] += ok
                counts["refused"] += refused

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return counts


@pytest.mark.deadline(120)
@pytest.mark.parametrize("size", [1, 5])
def test_interleaved_psycopg2_clients_never_get_a_wrong_value(pgscale, seqtab, size):
    pg = tx_pool(pgscale, size, PGSCALE_MAX_PINNED=4)
    c = interleave_psycopg2(pg, seqtab, clients=4, seconds=25, rounds=2000)
    print("pool %d: %d exact, %d refused" % (size, c["ok"], c["refused"]))
    assert not c["errors"], c["errors"]
    assert not c["wrong"], c["wrong"][:5]
    assert c["ok"] + c["refused"] >= 2000  # every round ran (2 reads per round)
    if size == 5:
        # the readers are pinned after their first read: nearly all exact
        assert c["ok"] > 0.95 * (c["ok"] + c["refused"]), c


async def _interleave_asyncpg(pg, seqtab, clients, seconds, rounds):
    import asyncpg
    counts = {"ok": 0, "refused": 0, "wrong": []}
    deadline = time.monotonic() + seconds

    async def run(i):
        conn = await aconnect(pg, statement_cache_size=100)
        try:
            for _ in range(rounds // clients):
                if time.monotonic() > deadline:
                    break
                mine = await conn.fetchval(
                    "INSERT INTO %s (who) VALUES ($1) RETURNING id" % seqtab, "a%d" % i)
                for sql in ("SELECT lastval()", "SELECT currval('%s_id_seq')" % seqtab):
                    try:
                        got = await conn.fetchval(sql)
                    except asyncpg.PostgresError as e:
                        assert e.sqlstate == "0A000" and (REFUSAL in str(e) or
                                                          REFUSAL_SPLIT in str(e)), e
                        counts["refused"] += 1
                        continue
                    if got != mine:
                        counts["wrong"].append((i, sql, mine, got))
                    counts["ok"] += 1
        finally:
            await conn.close()

    await asyncio.gather(*(run(i) for i in range(clients)))
    return counts


@pytest.mark.deadline(120)
@pytest.mark.parametrize("size", [1, 5])
def test_interleaved_asyncpg_clients_never_get_a_wrong_value(pgscale, seqtab, size):
    pg = tx_pool(pgscale, size, PGSCALE_MAX_PINNED=4)
    c = arun(_interleave_asyncpg(pg, seqtab, clients=4, seconds=25, rounds=2000), timeout=90)
    print("pool %d: %d exact, %d refused" % (size, c["ok"], c["refused"]))
    assert not c["wrong"], c["wrong"][:5]
    assert c["ok"] + c["refused"] >= 2000
    if size == 5:
        assert c["ok"] > 0.95 * (c["ok"] + c["refused"]), c


@pytest.mark.deadline(120)
def test_session_mode_rounds_equal_direct(pgscale, seqtab):
    pg = pgscale(PGSCALE_POOL_MODE="session", DB_POOL_SIZE=5, DB_MAX_OVERFLOW=0)
    c = interleave_psycopg2(pg, seqtab, clients=4, seconds=25, rounds=2000)
    assert not c["errors"], c["errors"]
    assert not c["wrong"] and c["refused"] == 0, c
    assert c["ok"] >= 2000


def test_reader_is_pinned_until_discard_sequences(pgscale, seqtab):
    pg = tx_pool(pgscale, 3)
    x = pg.connect(application_name="reader")
    mine = one(x, "INSERT INTO %s (who) VALUES ('x') RETURNING id" % seqtab)
    assert one(x, "SELECT lastval()") == mine

    def pinned():
        rows = [r for r in pg.admin("SHOW CLIENTS") if r["application_name"] == "reader"]
        return rows[0]["pinned"]

    assert pinned() == "sequence"
    with x.cursor() as cur:
        cur.execute("DISCARD SEQUENCES")
    assert pinned() in ("", None)
    with pytest.raises(psycopg2.Error) as ei:
        one(x, "SELECT lastval()")
    assert ei.value.pgcode == "55000"  # as directly after DISCARD SEQUENCES
