"""Statement-clearing commands (DEALLOCATE, DISCARD ALL) in transaction
mode, from the simple and the extended protocol: they clear the sending
client's own prepared statements and never the server-side statements
other clients on the same server connection rely on.  Also: a statement
the server lost behind pgscale's back is prepared again, and the error
names the client's statement; the per-client bound on prepared
statements."""
import psycopg
import pytest

import pgwire
from helpers import APP_PASSWORD, APP_USER, APP_DB, LOCALHOST, aconnect, arun
from test_protocol import (SYNC, bind, close_statement, connect, describe_statement, execute,
                           msg, parse, types, cstr)


def describe_portal(name=""):
    return msg(b"D", b"P" + cstr(name))


def one_server(pgscale, **env):
    return pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, **env)


def pconnect(pg, **kw):
    return psycopg.connect(host=LOCALHOST, port=pg.port, user=APP_USER, password=APP_PASSWORD,
                           dbname=APP_DB, connect_timeout=10, **kw)


def prepare_s1(c, sql="SELECT 'mine' || $1::text"):
    c.send(parse("S_1", sql) + SYNC)
    assert types(c.read_until_ready()) == b"1Z"


def run_s1(c, arg="x"):
    c.send(bind("S_1", [arg]) + execute() + SYNC)
    return c.read_until_ready()


@pytest.mark.parametrize("autocommit", [False, True])
def test_psycopg3_deallocate_all_in_the_extended_protocol_breaks_nothing(pgscale, autocommit):
    # Issue 12: psycopg 3 sends DEALLOCATE ALL through Parse/Bind/Execute of
    # the unnamed statement after DDL; every later statement used to fail
    # with 'prepared statement "pgs_..." does not exist'.
    pg = one_server(pgscale)
    with pconnect(pg, autocommit=autocommit) as conn:
        conn.prepare_threshold = 0
        for _ in range(3):
            if autocommit:
                conn.execute("DROP TABLE IF EXISTS preptable")
                conn.execute("DROP TYPE IF EXISTS prepenum")
            conn.execute("CREATE TYPE prepenum AS ENUM ('foo', 'bar', 'baz')")
            conn.execute("CREATE TABLE preptable(id integer, bar prepenum[])")
            conn.cursor().execute("INSERT INTO preptable (bar) VALUES (%(e)s::prepenum[])",
                                  {"e": ["foo"]})
            assert conn.execute("SELECT count(*) FROM preptable").fetchone() == (1,)
            if autocommit:
                conn.execute("DROP TABLE preptable")
                conn.execute("DROP TYPE prepenum")
            else:
                conn.rollback()


@pytest.mark.parametrize("command,tag", [("DEALLOCATE ALL", "DEALLOCATE ALL"),
                                         ("  /* x */ deallocate prepare all;", "DEALLOCATE ALL"),
                                         ("DISCARD ALL", "DISCARD ALL"),
                                         ("-- c\nDeallocate \"S_1\"", "DEALLOCATE")])
def test_extended_clearing_command_of_one_client_spares_the_other(pgscale, command, tag):
    pg = one_server(pgscale)
    a, b = connect(pg), connect(pg)
    try:
        prepare_s1(a)
        prepare_s1(b, "SELECT 'b' || $1::text")
        assert pgwire.data_rows(run_s1(a)) == [["minex"]]
        b.send(parse("", command) + bind("") + describe_portal() + execute() + SYNC)
        rb = b.read_until_ready()
        assert types(rb) == b"12nCZ", rb
        assert rb[3][1] == cstr(tag)
        # b's own statement is gone, as on PostgreSQL; a's is untouched
        rb = run_s1(b)
        assert [e["C"] for e in pgwire.errors(rb)] == ["26000"], rb
        for i in range(2):
            assert pgwire.data_rows(run_s1(a, i)) == [["mine%d" % i]]
    finally:
        a.close()
        b.close()


def test_named_deallocate_statement_and_simple_deallocate_spare_the_other(pgscale):
    pg = one_server(pgscale)
    a, b = connect(pg), connect(pg)
    try:
        prepare_s1(a)
        b.send(parse("clear", "DEALLOCATE ALL") + describe_statement("clear") + SYNC)
        assert types(b.read_until_ready()) == b"1tnZ"
        b.send(bind("clear", portal="p") + execute("p") + SYNC)
        assert types(b.read_until_ready()) == b"2CZ"
        assert pgwire.data_rows(run_s1(a)) == [["minex"]]
        for sql in ("deallocate all", "DISCARD ALL", "DEALLOCATE ALL"):
            msgs = b.simple_query(sql)
            assert not pgwire.errors(msgs), msgs
            assert pgwire.data_rows(run_s1(a)) == [["minex"]]
        msgs = b.simple_query("SELECT 1; DEALLOCATE ALL")
        assert [e["C"] for e in pgwire.errors(msgs)] == ["0A000"], msgs
        assert pgwire.data_rows(run_s1(a)) == [["minex"]]
    finally:
        a.close()
        b.close()


def sequence(c, pipeline):
    c.send(pipeline)
    return [(t, p) for t, p in c.read_until_ready() if t not in (b"N", b"S")]


def test_replies_match_postgresql_message_for_message(pgscale, primary):
    pg = one_server(pgscale)
    direct = pgwire.RawConn(LOCALHOST, primary.port)
    direct.startup(user="postgres", database=APP_DB)
    via = connect(pg)
    other = connect(pg)
    prepare_s1(other)
    pipelines = [
        parse("", "DEALLOCATE ALL") + bind("") + describe_portal() + execute() + SYNC,
        parse("", "DEALLOCATE ALL") + describe_statement("") + SYNC,
        parse("S_1", "SELECT 1") + parse("d1", "DEALLOCATE S_1") + bind("d1") + execute() + SYNC,
        parse("d2", "DEALLOCATE nosuch") + bind("d2") + execute() + parse("", "SELECT 1") + SYNC,
        close_statement("d1") + close_statement("d2") + SYNC,
        parse("", "DISCARD ALL") + bind("") + execute() + SYNC,
    ]
    try:
        for pl in pipelines:
            d = sequence(direct, pl)
            v = sequence(via, pl)
            assert types(v) == types(d), (pl, d, v)
            for (t, pd), (_, pv) in zip(d, v):
                if t == b"C":
                    assert pv == pd
                if t == b"E":
                    assert pgwire.parse_fields(pv)["C"] == pgwire.parse_fields(pd)["C"]
        # and the other client on the same server connection kept its own
        assert pgwire.data_rows(run_s1(other)) == [["minex"]]
    finally:
        direct.close()
        via.close()
        other.close()


def test_asyncpg_deallocate_all_of_one_client_spares_the_other(pgscale):
    pg = one_server(pgscale)

    async def go():
        c1 = await aconnect(pg)
        c2 = await aconnect(pg)
        try:
            stmt = await c1.prepare("SELECT $1::int + 1")
            assert await stmt.fetchval(1) == 2
            await c2.fetch("DEALLOCATE ALL")   # through a prepared statement
            await c2.execute("DEALLOCATE ALL")  # simple query
            return [await stmt.fetchval(i) for i in range(3)]
        finally:
            await c1.close()
            await c2.close()

    assert arun(go()) == [1, 2, 3]


def test_statement_lost_behind_pgscales_back_is_prepared_again(pgscale):
    pg = one_server(pgscale)
    a = connect(pg)
    try:
        msgs = a.simple_query("CREATE OR REPLACE FUNCTION pgs_test_dealloc() RETURNS void "
                              "LANGUAGE plpgsql AS $$BEGIN EXECUTE 'DEALLOCATE ALL'; END$$")
        assert not pgwire.errors(msgs), msgs
        prepare_s1(a)
        a.send(parse("S_2", "SELECT 'two'") + SYNC)
        assert types(a.read_until_ready()) == b"1Z"
        assert pgwire.data_rows(run_s1(a)) == [["minex"]]
        assert not pgwire.errors(a.simple_query("SELECT pgs_test_dealloc()"))
        ra = run_s1(a)
        errs = pgwire.errors(ra)
        assert [e["C"] for e in errs] == ["26000"], ra
        assert "S_1" in errs[0]["M"] and "pgs_" not in errs[0]["M"], errs
        assert pgwire.ready_status(ra) == "I"
        assert pgwire.data_rows(run_s1(a)) == [["minex"]]
        # the function dropped S_2 on that server as well: it must not fail
        # a second time (the server connection was replaced)
        a.send(bind("S_2") + execute() + SYNC)
        assert pgwire.data_rows(a.read_until_ready()) == [["two"]]
    finally:
        a.close()


def test_prepared_statements_per_client_are_bounded(pgscale):
    pg = one_server(pgscale, PGSCALE_MAX_CLIENT_PREPARED_STATEMENTS="2")
    a = connect(pg)
    try:
        a.send(parse("S_1", "SELECT 1") + parse("S_2", "SELECT 2") + SYNC)
        assert types(a.read_until_ready()) == b"11Z"
        a.send(parse("S_3", "SELECT 3") + bind("S_3") + execute() + SYNC)
        ra = a.read_until_ready()
        errs = pgwire.errors(ra)
        assert types(ra) == b"EZ", ra
        assert errs[0]["C"] == "54000"
        assert "PGSCALE_MAX_CLIENT_PREPARED_STATEMENTS" in errs[0]["M"]
        a.send(close_statement("S_1") + parse("S_3", "SELECT 3") + bind("S_3") + execute() + SYNC)
        assert pgwire.data_rows(a.read_until_ready()) == [["3"]]
    finally:
        a.close()
