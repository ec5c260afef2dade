"""The extended protocol on the wire, as JDBC, psycopg 3 and libpq pipelines
speak it: named statements that two clients both call S_1 on one server
connection, pipelines of many messages before one Sync, Flush, errors in a
pipeline, Close and DEALLOCATE, Describe of a renamed statement, and
FunctionCall (psycopg2's large objects)."""
import struct

import pytest

import pgwire
from helpers import BOTH_MODES, LOCALHOST


def msg(t, payload=b""):
    return pgwire.message(t, payload)


def cstr(s):
    return s.encode() + b"\0"


def parse(name, sql, types=()):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!H", len(types)) +
               b"".join(struct.pack("!I", t) for t in types))


def bind(stmt, params=(), portal=""):
    out = cstr(portal) + cstr(stmt) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        if p is None:
            out += struct.pack("!i", -1)
        else:
            b = str(p).encode()
            out += struct.pack("!i", len(b)) + b
    return msg(b"B", out + struct.pack("!H", 0))


def execute(portal="", max_rows=0):
    return msg(b"E", cstr(portal) + struct.pack("!I", max_rows))


def describe_statement(name):
    return msg(b"D", b"S" + cstr(name))


def close_statement(name):
    return msg(b"C", b"S" + cstr(name))


SYNC = msg(b"S")
FLUSH = msg(b"H")


def connect(pg, **params):
    c = pgwire.RawConn(LOCALHOST, pg.port)
    msgs = c.startup(**params)
    assert pgwire.ready_status(msgs) == "I", msgs
    return c


def types(msgs):
    return b"".join(t for t, _ in msgs)


def test_two_clients_named_s1_on_one_server_get_their_own_statement(pgscale):
    # JDBC names its statements S_1, S_2 ... in every connection.  With one
    # server connection for both clients, each S_1 must stay its own.
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    a, b = connect(pg), connect(pg)
    try:
        a.send(parse("S_1", "SELECT 'a' || $1::text") + SYNC)
        assert types(a.read_until_ready()) == b"1Z"
        b.send(parse("S_1", "SELECT 'b' || $1::text, 42") + SYNC)
        assert types(b.read_until_ready()) == b"1Z"
        for i in range(3):
            a.send(bind("S_1", [i]) + execute() + SYNC)
            ra = a.read_until_ready()
            b.send(bind("S_1", [i]) + execute() + SYNC)
            rb = b.read_until_ready()
            assert pgwire.data_rows(ra) == [["a%d" % i]], ra
            assert pgwire.data_rows(rb) == [["b%d" % i, "42"]], rb
        # Close, then the name is gone for that client only
        a.send(close_statement("S_1") + SYNC)
        assert types(a.read_until_ready()) == b"3Z"
        a.send(bind("S_1", [0]) + execute() + SYNC)
        ra = a.read_until_ready()
        assert [e["C"] for e in pgwire.errors(ra)] == ["26000"], ra
        assert pgwire.ready_status(ra) == "I"
        b.send(bind("S_1", [7]) + execute() + SYNC)
        assert pgwire.data_rows(b.read_until_ready()) == [["b7", "42"]]
    finally:
        a.close()
        b.close()


def test_describe_of_a_named_statement_reports_its_parameters_and_columns(pgscale):
    # psycopg 3 and JDBC: Parse + Describe S + Sync, Bind/Execute later.
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    c = connect(pg)
    try:
        c.send(parse("_pg3_0", "SELECT $1::int + 1 AS n, 'x'::text AS t") +
               describe_statement("_pg3_0") + SYNC)
        msgs = c.read_until_ready()
        assert types(msgs) == b"1tTZ", msgs
        (_, ptypes), (_, rowdesc) = msgs[1], msgs[2]
        assert struct.unpack("!HI", ptypes) == (1, 23)  # one parameter, int4
        assert b"n\0" in rowdesc and b"t\0" in rowdesc
        c.send(bind("_pg3_0", [41]) + execute() + SYNC)
        assert pgwire.data_rows(c.read_until_ready()) == [["42", "x"]]
    finally:
        c.close()


@BOTH_MODES
def test_pipeline_of_many_requests_before_one_sync(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    c = connect(pg)
    try:
        n = 300
        batch = parse("ins", "SELECT $1::int * 2")
        for i in range(n):
            batch += bind("ins", [i]) + execute()
        batch += SYNC
        c.send(batch)
        msgs = c.read_until_ready(timeout=30)
        assert pgwire.errors(msgs) == []
        assert pgwire.data_rows(msgs) == [[str(i * 2)] for i in range(n)]
        assert types(msgs).count(b"C") == n and types(msgs).count(b"2") == n
    finally:
        c.close()


@BOTH_MODES
def test_flush_delivers_results_before_sync(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    c = connect(pg)
    try:
        c.send(parse("", "SELECT 7") + bind("") + execute() + FLUSH)
        got = []
        while not got or got[-1][0] != b"C":
            m = c.recv_msg(timeout=5)
            assert m is not None, "connection closed"
            got.append(m)
        assert types(got) == b"12DC", got
        c.send(SYNC)
        assert types(c.read_until_ready()) == b"Z"
    finally:
        c.close()


@BOTH_MODES
def test_error_in_a_pipeline_skips_to_sync_and_the_connection_recovers(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    c = connect(pg)
    try:
        c.send(parse("good", "SELECT 1") + parse("bad", "SELEC nonsense") + bind("good") +
               execute() + SYNC)
        msgs = c.read_until_ready()
        assert [e["C"] for e in pgwire.errors(msgs)] == ["42601"], msgs
        assert types(msgs) == b"1EZ", msgs
        # the good one was prepared before the error; the bad one was not
        c.send(bind("good") + execute() + SYNC)
        assert pgwire.data_rows(c.read_until_ready()) == [["1"]]
        c.send(bind("bad") + execute() + SYNC)
        assert [e["C"] for e in pgwire.errors(c.read_until_ready())] == ["26000"]
    finally:
        c.close()


def test_deallocate_by_sql_drops_a_protocol_statement_in_transaction_mode(pgscale):
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    c = connect(pg)
    try:
        c.send(parse("s1", "SELECT 5") + parse("s2", "SELECT 6") + SYNC)
        assert types(c.read_until_ready()) == b"11Z"
        msgs = c.simple_query("DEALLOCATE s1")
        assert pgwire.errors(msgs) == [] and b"DEALLOCATE\0" in [p for t, p in msgs if t == b"C"]
        c.send(bind("s1") + execute() + SYNC)
        assert [e["C"] for e in pgwire.errors(c.read_until_ready())] == ["26000"]
        c.send(bind("s2") + execute() + SYNC)
        assert pgwire.data_rows(c.read_until_ready()) == [["6"]]
        assert pgwire.errors(c.simple_query("DEALLOCATE ALL")) == []
        c.send(bind("s2") + execute() + SYNC)
        assert [e["C"] for e in pgwire.errors(c.read_until_ready())] == ["26000"]
    finally:
        c.close()


def test_statement_prepared_in_a_failed_transaction_is_forgotten(pgscale):
    # A Parse inside a transaction that fails is undone by the server; the
    # proxy must not believe the statement exists there.
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    c = connect(pg)
    try:
        c.send(parse("", "BEGIN") + bind("") + execute() + parse("q", "SELECT 1/0") +
               bind("q") + execute() + SYNC)
        msgs = c.read_until_ready()
        assert [e["C"] for e in pgwire.errors(msgs)] == ["22012"], msgs
        assert pgwire.ready_status(msgs) == "E"
        assert pgwire.ready_status(c.simple_query("ROLLBACK")) == "I"
        c.send(parse("q2", "SELECT 3") + bind("q2") + execute() + SYNC)
        assert pgwire.data_rows(c.read_until_ready()) == [["3"]]
    finally:
        c.close()


@BOTH_MODES
def test_function_call_large_objects_through_psycopg2(pgscale, pool_mode):
    # psycopg2's large-object API uses the FunctionCall message (lo_open,
    # lowrite, loread ...), inside a transaction.
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    conn = pg.connect(autocommit=False)
    try:
        data = bytes(range(256)) * 400
        lo = conn.lobject(0, "wb")
        oid = lo.oid
        lo.write(data)
        lo.close()
        conn.commit()
        lo = conn.lobject(oid, "rb")
        assert lo.read() == data
        lo.close()
        lo = conn.lobject(oid, "wb")
        lo.unlink()
        conn.commit()
    finally:
        conn.close()


def test_unknown_portal_and_statement_errors_come_from_the_server(pgscale):
    pg = pgscale()
    c = connect(pg)
    try:
        c.send(bind("nope") + execute() + SYNC)
        assert [e["C"] for e in pgwire.errors(c.read_until_ready())] == ["26000"]
        c.send(execute("noportal") + SYNC)
        assert [e["C"] for e in pgwire.errors(c.read_until_ready())] == ["34000"]
    finally:
        c.close()


@pytest.mark.deadline(60)
def test_prepared_statements_beyond_the_per_server_cache_still_work(pgscale):
    # More statements than PGSCALE_MAX_PREPARED_STATEMENTS: the least recently
    # used are closed on the server and prepared again when used.
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, PGSCALE_MAX_PREPARED_STATEMENTS=5)
    c = connect(pg)
    try:
        batch = b"".join(parse("st%d" % i, "SELECT %d" % i) for i in range(20)) + SYNC
        c.send(batch)
        assert pgwire.errors(c.read_until_ready()) == []
        for rnd in range(2):
            for i in range(20):
                c.send(bind("st%d" % i) + execute() + SYNC)
                assert pgwire.data_rows(c.read_until_ready()) == [[str(i)]], (rnd, i)
        rows = pgwire.data_rows(c.simple_query("SELECT count(*) FROM pg_prepared_statements"))
        assert int(rows[0][0]) <= 5, rows
    finally:
        c.close()


def test_statement_closed_in_the_same_pipeline_reaches_the_server_intact(pgscale):
    # Parse s1 then Close s1 before pgscale has written the Parse: the text
    # it sends must not be freed by the Close (it was: PostgreSQL got
    # garbage and answered 22021 "invalid byte sequence").
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    c = connect(pg)
    try:
        c.send(parse("s1", "SELECT 'first'") + close_statement("s1") + SYNC)
        got = c.read_until_ready()
        assert [t for t, _ in got] == [b"1", b"3", b"Z"], got
        c.send(parse("s1", "SELECT 'second'") + bind("s1") + execute() + close_statement("s1") +
               SYNC)
        got = c.read_until_ready()
        assert pgwire.errors(got) == [] and pgwire.data_rows(got) == [["second"]], got
        many = b"".join(parse("m%d" % i, "SELECT %d" % i) + close_statement("m%d" % i)
                        for i in range(100)) + SYNC
        c.send(many)
        got = c.read_until_ready()
        assert pgwire.errors(got) == [] and [t for t, _ in got].count(b"3") == 100, got[:6]
    finally:
        c.close()


def test_huge_error_for_a_renamed_statement_is_relayed(pgscale):
    # PostgreSQL quotes a bad value whole in its error: 200 KiB of it for a
    # Bind of a statement pgscale renamed is relayed, not taken for a
    # broken server.
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)
    c = connect(pg)
    try:
        c.send(parse("s1", "SELECT $1::int") + bind("s1", ["x" * 200000]) + execute() + SYNC)
        got = c.read_until_ready()
        errs = pgwire.errors(got)
        assert len(errs) == 1 and errs[0]["C"] == "22P02" and len(errs[0]["M"]) > 200000, \
            [(t, len(p)) for t, p in got]
        c.send(bind("s1", ["5"]) + execute() + SYNC)
        assert pgwire.data_rows(c.read_until_ready()) == [["5"]]
    finally:
        c.close()
