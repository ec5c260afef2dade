"""The result cache with the extended protocol (Parse/Bind/Describe/Execute/
Sync), in transaction pooling mode, against real PostgreSQL.

Whether a unit ran on PostgreSQL is read from PostgreSQL's own log: with
log_statement on for the role `app`, every Execute that reaches a backend
is logged as "execute <name>: <text>".  A hit is an Execute the log does not
show.  Answers are compared byte for byte with a direct connection's."""
import asyncio
import struct
import uuid

import psycopg
import pytest

import pgwire

from helpers import APP_PASSWORD, LOCALHOST, aconnect, arun, pgbench, run, client_env
from test_cache import fresh_table, rounds, show_cache, start_cached, statements_logged


def executed(primary, since, marker):
    """How many Executes of a statement containing marker reached the primary."""
    return sum(1 for line in primary.log_tail(10 ** 7, since).splitlines()
               if "execute " in line and marker in line)


# -- raw extended-protocol messages -------------------------------------------

def _cstr(s):
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def parse(sql, name="", types=()):
    return pgwire.message(b"P", _cstr(name) + _cstr(sql) + struct.pack("!H", len(types)) +
                          b"".join(struct.pack("!I", t) for t in types))


def bind(params=(), stmt="", portal="", param_formats=(), result_formats=()):
    out = _cstr(portal) + _cstr(stmt)
    out += struct.pack("!H", len(param_formats)) + b"".join(struct.pack("!h", f)
                                                            for f in param_formats)
    out += struct.pack("!H", len(params))
    for v in params:
        if v is None:
            out += struct.pack("!i", -1)
        else:
            v = v.encode() if isinstance(v, str) else v
            out += struct.pack("!i", len(v)) + v
    out += struct.pack("!H", len(result_formats)) + b"".join(struct.pack("!h", f)
                                                             for f in result_formats)
    return pgwire.message(b"B", out)


def describe_portal(portal=""):
    return pgwire.message(b"D", b"P" + _cstr(portal))


def execute(portal="", max_rows=0):
    return pgwire.message(b"E", _cstr(portal) + struct.pack("!I", max_rows))


def sync():
    return pgwire.message(b"S")


def flush():
    return pgwire.message(b"H")


def unit(sql, params=(), name="", with_parse=True, describe=True, types=(), param_formats=(),
         result_formats=()):
    """psycopg 3 / JDBC shape: Parse Bind Describe(portal) Execute Sync."""
    out = parse(sql, name, types) if with_parse else b""
    out += bind(params, name, "", param_formats, result_formats)
    if describe:
        out += describe_portal()
    return out + execute() + sync()


def raw_pgscale(pg):
    c = pgwire.RawConn(LOCALHOST, pg.port)
    c.login(password=APP_PASSWORD)
    return c


def raw_direct(primary):
    c = pgwire.RawConn(primary.host, primary.port)
    c.login(password=APP_PASSWORD)
    return c


def answer(conn, data):
    """The messages answering data (one unit), as (type, payload) pairs,
    up to its ReadyForQuery."""
    conn.send(data)
    return conn.read_until_ready()


def hits(pg):
    return int(show_cache(pg)["hits"])


def test_unnamed_unit_hits_with_the_bytes_of_a_direct_connection(pgscale, primary):
    fresh_table(primary, "ce_hit", "(id int PRIMARY KEY, v text, f float8, b bytea)")
    primary.app_execute("INSERT INTO ce_hit SELECT g, 'v' || g, g / 3.0, '\\x0102'::bytea "
                        "FROM generate_series(1, 20) g")
    marker = "ce-hit-%s" % uuid.uuid4().hex
    sql = "SELECT id, v, f, b /* %s */ FROM ce_hit WHERE id <= $1 ORDER BY id" % marker
    direct = raw_direct(primary)
    with statements_logged(primary):
        pg = start_cached(pgscale, PGSCALE_WORKERS="1")
        conn = raw_pgscale(pg)
        for fmt in ((), (1,)):
            want = answer(direct, unit(sql, ["5"], result_formats=fmt))
            assert pgwire.errors(want) == [] and len(pgwire.raw_rows(want)) == 5
            first = answer(conn, unit(sql, ["5"], result_formats=fmt))
            assert first == want
            since = primary.log_size()
            before = hits(pg)
            for _ in range(5):
                assert answer(conn, unit(sql, ["5"], result_formats=fmt)) == want
            assert hits(pg) == before + 5
            assert executed(primary, since, marker) == 0
        # without Describe: no RowDescription, its own entry
        want = answer(direct, unit(sql, ["3"], describe=False))
        assert [t for t, _ in want] == [b"1", b"2", b"D", b"D", b"D", b"C", b"Z"]
        assert answer(conn, unit(sql, ["3"], describe=False)) == want
        before = hits(pg)
        assert answer(conn, unit(sql, ["3"], describe=False)) == want
        assert hits(pg) == before + 1
    conn.close()
    direct.close()
