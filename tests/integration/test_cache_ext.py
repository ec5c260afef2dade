"""The result cache with the extended protocol (Parse/Bind/Describe/Execute/
Sync), in transaction pooling mode, against real PostgreSQL.

Whether a unit ran on PostgreSQL is read from PostgreSQL's own log: with
log_statement on for the role `app`, every Execute that reaches a backend
is logged as "execute <name>: <text>".  A hit is an Execute the log does not
show.  Answers are compared byte for byte with a direct connection's."""
import struct
import uuid

import psycopg
import pytest

import pgwire

from helpers import APP_PASSWORD, LOCALHOST, aconnect, arun, pgbench, wait_for
from test_cache import (fresh_table, rounds, show_cache, start_cached, start_lagging,
                        statements_logged)


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


def test_parameter_values_formats_and_types_get_their_own_entries(pgscale, primary):
    fresh_table(primary, "ce_keys", "(id int PRIMARY KEY, v text)")
    primary.app_execute("INSERT INTO ce_keys VALUES (1, ''), (2, NULL), (3, 'x')")
    direct = raw_direct(primary)
    pg = start_cached(pgscale, PGSCALE_WORKERS="1")
    conn = raw_pgscale(pg)
    sql = "SELECT id, v FROM ce_keys WHERE v IS NOT DISTINCT FROM $1 ORDER BY id"
    cases = [
        dict(params=[""]), dict(params=[None]), dict(params=["x"]),
        # text vs binary parameter: the same value, another entry
        dict(params=[b"x"], param_formats=(1,)),
        dict(params=[""], result_formats=(1,)),
        dict(params=["x"], types=(25,)),
        dict(params=["x"], types=(1043,)),
    ]
    want = [answer(direct, unit(sql, **kw)) for kw in cases]
    assert pgwire.raw_rows(want[0]) == [[b"1", b""]]
    assert pgwire.raw_rows(want[1]) == [[b"2", None]]
    for _ in range(3):
        for kw, w in zip(cases, want):
            assert answer(conn, unit(sql, **kw)) == w, kw
    st = show_cache(pg)
    assert int(st["entries"]) >= len(cases)
    assert int(st["hits"]) >= 2 * len(cases)
    conn.close()
    direct.close()


def test_psycopg3_second_run_is_a_hit_and_matches_a_direct_connection(pgscale, primary):
    fresh_table(primary, "ce_pg3", "(id int PRIMARY KEY, v numeric, t timestamptz, j jsonb)")
    primary.app_execute("INSERT INTO ce_pg3 SELECT g, g * 1.5, '2024-01-01'::timestamptz "
                        "+ g * interval '1 day', jsonb_build_object('g', g) "
                        "FROM generate_series(1, 50) g")
    marker = "ce-pg3-%s" % uuid.uuid4().hex
    sql = "SELECT id, v, t, j /* %s */ FROM ce_pg3 WHERE id > %%s ORDER BY id" % marker
    with psycopg.connect(primary.dsn("app", "app", APP_PASSWORD), autocommit=True) as d:
        cur = d.execute(sql, (40,))
        want_rows = cur.fetchall()
        want_desc = [(c.name, c.type_code) for c in cur.description]
    with statements_logged(primary):
        pg = start_cached(pgscale, PGSCALE_WORKERS="1")
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            cur = conn.execute(sql, (40,))
            assert cur.fetchall() == want_rows
            since = primary.log_size()
            # past psycopg's prepare_threshold (5): named statements too
            for _ in range(12):
                cur = conn.execute(sql, (40,))
                assert cur.fetchall() == want_rows
                assert [(c.name, c.type_code) for c in cur.description] == want_desc
            # binary results
            cur = conn.cursor(binary=True)
            cur.execute(sql, (40,))
            assert cur.fetchall() == want_rows
            cur.execute(sql, (40,))
            assert cur.fetchall() == want_rows
            # only the first run with binary results (an entry of its own)
            # reached the server; psycopg's switch to a prepared statement
            # after 5 runs (its Parse and Sync have no Execute) did not
            assert executed(primary, since, marker) == 1
        with psycopg.connect(pg.dsn(), autocommit=True) as other:
            since = primary.log_size()
            assert other.execute(sql, (40,)).fetchall() == want_rows
            assert executed(primary, since, marker) == 0


def test_asyncpg_prepared_statements_hit_with_binary_results(pgscale, primary):
    fresh_table(primary, "ce_apg", "(id int PRIMARY KEY, v float8, s text, a int[])")
    primary.app_execute("INSERT INTO ce_apg SELECT g, g / 7.0, repeat('s', g), "
                        "ARRAY[g, g + 1] FROM generate_series(1, 30) g")
    marker = "ce-apg-%s" % uuid.uuid4().hex
    sql = "SELECT id, v, s, a /* %s */ FROM ce_apg WHERE id >= $1 ORDER BY id" % marker

    async def fetch_all(conn, n):
        stmt = await conn.prepare(sql)
        out = []
        for _ in range(n):
            out.append([tuple(r) for r in await stmt.fetch(25)])
        out.append([tuple(r) for r in await conn.fetch(sql, 25)])
        types = [(a.name, a.type.oid) for a in stmt.get_attributes()]
        return out, types

    async def direct():
        conn = await aconnect(primary)
        try:
            return await fetch_all(conn, 1)
        finally:
            await conn.close()

    want, want_types = arun(direct())
    with statements_logged(primary):
        pg = start_cached(pgscale, PGSCALE_WORKERS="1")

        async def through(n):
            conn = await aconnect(pg)
            try:
                return await fetch_all(conn, n)
            finally:
                await conn.close()

        got, types = arun(through(1))
        assert got == want and types == want_types
        since = primary.log_size()
        before = hits(pg)
        got, types = arun(through(20))
        assert all(g == want[0] for g in got) and types == want_types
        # asyncpg prepares with Parse, Describe and Flush (no Sync): the
        # first run of each statement is looked up on the server that
        # prepared it, which pgscale then syncs itself
        assert executed(primary, since, marker) == 0
        assert hits(pg) >= before + 21


def _bench_script(tmp_path, table):
    script = tmp_path / "read.sql"
    script.write_text("\\set id 7\nSELECT v FROM %s WHERE id = :id;\n" % table)
    return str(script)


@pytest.mark.parametrize("mode", ["extended", "prepared"])
def test_pgbench_second_run_is_all_hits(pgscale, primary, tmp_path, mode):
    table = "ce_bench_" + mode
    fresh_table(primary, table)
    primary.app_execute("INSERT INTO %s SELECT g, g FROM generate_series(1, 10) g" % table)
    script = _bench_script(tmp_path, table)
    with statements_logged(primary):
        pg = start_cached(pgscale, PGSCALE_WORKERS="1")
        args = ["-n", "-M", mode, "-c", "2", "-t", "200", "-f", script]
        r = pgbench(pg.port, args)
        assert r.returncode == 0, r.stderr
        since = primary.log_size()
        before = hits(pg)
        r = pgbench(pg.port, args)
        assert r.returncode == 0, r.stderr
        assert "number of failed transactions: 0" in r.stdout or "failed" not in r.stdout
        assert executed(primary, since, "FROM %s WHERE" % table) == 0
        assert hits(pg) >= before + 400


def test_writes_then_reads_through_the_extended_protocol_are_never_stale(pgscale, primary):
    fresh_table(primary, "ce_rw")
    pg = start_cached(pgscale, PGSCALE_WORKERS="2")
    read = "SELECT count(*), coalesce(sum(v), 0) FROM ce_rw WHERE id >= %s"
    with psycopg.connect(pg.dsn(), autocommit=True) as w, \
            psycopg.connect(pg.dsn(), autocommit=True) as r:
        model = {}
        for i in range(rounds(pg, 400)):
            if i % 4 == 3:
                w.execute("UPDATE ce_rw SET v = v + 1 WHERE id = %s", (i - 1,))
                model[i - 1] += 1
            else:
                w.execute("INSERT INTO ce_rw VALUES (%s, %s)", (i, i))
                model[i] = i
            want = (len(model), sum(model.values()))
            assert w.execute(read, (0,)).fetchone() == want
            assert r.execute(read, (0,)).fetchone() == want
            assert w.execute(read, (0,)).fetchone() == want
    assert hits(pg) > 0

    async def main():
        conn = await aconnect(pg)
        other = await aconnect(pg)
        try:
            stmt = await conn.prepare("SELECT count(*) FROM ce_rw WHERE id >= $1")
            ostmt = await other.prepare("SELECT count(*) FROM ce_rw WHERE id >= $1")
            base = await stmt.fetchval(0)
            ins = await conn.prepare("INSERT INTO ce_rw VALUES ($1, $2)")
            for i in range(rounds(pg, 300)):
                await ins.fetch(10000 + i, i)
                assert await stmt.fetchval(0) == base + i + 1
                assert await ostmt.fetchval(0) == base + i + 1
                assert await stmt.fetchval(0) == base + i + 1
        finally:
            await conn.close()
            await other.close()
    before = hits(pg)
    arun(main())
    assert hits(pg) > before


def test_row_limit_is_part_of_the_key_and_portal_suspended_is_replayed(pgscale, primary):
    fresh_table(primary, "ce_lim")
    primary.app_execute("INSERT INTO ce_lim SELECT g, g FROM generate_series(1, 5) g")
    sql = "SELECT id FROM ce_lim WHERE id >= $1 ORDER BY id"
    direct = raw_direct(primary)
    pg = start_cached(pgscale, PGSCALE_WORKERS="1")
    conn = raw_pgscale(pg)

    def limited(n, param="1"):
        return parse(sql) + bind([param]) + describe_portal() + execute(max_rows=n) + sync()
    cases = [limited(1), limited(2), limited(0), limited(1, "6")]
    want = [answer(direct, u) for u in cases]
    assert [t for t, _ in want[0]][-2:] == [b"s", b"Z"]
    assert [t for t, _ in want[3]][-2:] == [b"C", b"Z"]
    for _ in range(3):
        for u, w in zip(cases, want):
            assert answer(conn, u) == w
    assert hits(pg) >= 2 * len(cases)
    conn.close()
    direct.close()


def test_flush_or_two_executes_go_to_the_server_and_stay_correct(pgscale, primary):
    fresh_table(primary, "ce_odd")
    primary.app_execute("INSERT INTO ce_odd SELECT g, g FROM generate_series(1, 3) g")
    marker = "ce-odd-%s" % uuid.uuid4().hex
    sql = "SELECT sum(v) /* %s */ FROM ce_odd WHERE id >= $1" % marker
    direct = raw_direct(primary)
    shapes = {
        "flush": parse(sql) + bind(["1"]) + describe_portal() + flush() + execute() + sync(),
        "two executes": parse(sql) + bind(["1"]) + execute(max_rows=1) + execute() + sync(),
        "describe statement": parse(sql) + pgwire.message(b"D", b"S\0") + bind(["1"]) +
        execute() + sync(),
        "close": parse(sql) + bind(["1"]) + execute() + pgwire.message(b"C", b"P\0") + sync(),
    }
    want = {k: answer(direct, v) for k, v in shapes.items()}
    with statements_logged(primary):
        pg = start_cached(pgscale, PGSCALE_WORKERS="1")
        conn = raw_pgscale(pg)
        # the plain unit is cached: the odd shapes would find its entry
        plain = unit(sql, ["1"])
        assert answer(conn, plain) == answer(direct, plain)
        assert answer(conn, plain) == answer(direct, plain)
        for _ in range(3):
            for k, v in shapes.items():
                since = primary.log_size()
                assert answer(conn, v) == want[k], k
                assert executed(primary, since, marker) >= 1, k
        conn.close()
    direct.close()


def test_named_statement_hit_then_a_miss_on_a_fresh_server(pgscale, primary):
    fresh_table(primary, "ce_named")
    primary.app_execute("INSERT INTO ce_named VALUES (1, 10)")
    sql = "SELECT v FROM ce_named WHERE id = $1"
    pg = start_cached(pgscale, PGSCALE_WORKERS="1", DB_POOL_SIZE="2")
    filler = raw_pgscale(pg)
    assert pgwire.data_rows(answer(filler, unit(sql, ["1"], name="f1"))) == [["10"]]
    filler.close()
    # every server connection that may have prepared it goes away
    primary.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE usename = 'app' AND backend_type = 'client backend' "
                    "AND application_name <> 'pgscale-monitor'")
    conn = raw_pgscale(pg)
    before = hits(pg)
    # Parse(named) + Bind + Describe + Execute + Sync answered from the cache
    msgs = answer(conn, unit(sql, ["1"], name="s1"))
    assert [t for t, _ in msgs] == [b"1", b"2", b"T", b"D", b"C", b"Z"]
    assert hits(pg) == before + 1
    # the statement is the client's: Bind(s1) alone hits too
    msgs = answer(conn, unit(sql, ["1"], name="s1", with_parse=False))
    assert pgwire.data_rows(msgs) == [["10"]] and hits(pg) == before + 2
    # a write ends the entry: the next Bind(s1) runs on a server that never
    # saw the statement (pgscale prepares it there first)
    conn.send(pgwire.query("UPDATE ce_named SET v = 11"))
    assert pgwire.ready_status(conn.read_until_ready()) == "I"
    for want in (["11"], ["11"]):
        msgs = answer(conn, unit(sql, ["1"], name="s1", with_parse=False))
        assert pgwire.errors(msgs) == [] and pgwire.data_rows(msgs) == [want]
    msgs = answer(conn, unit(sql, ["2"], name="s1", with_parse=False))
    assert pgwire.errors(msgs) == [] and pgwire.data_rows(msgs) == []
    conn.close()


def test_errors_are_never_cached(pgscale, primary):
    fresh_table(primary, "ce_err")
    primary.app_execute("INSERT INTO ce_err VALUES (1, 0)")
    marker = "ce-err-%s" % uuid.uuid4().hex
    bad_parse = "SELECT nosuchcolumn /* %s */ FROM ce_err WHERE id = $1" % marker
    bad_run = "SELECT 1 / v /* %s */ FROM ce_err WHERE id = $1" % marker
    direct = raw_direct(primary)
    with statements_logged(primary):
        pg = start_cached(pgscale, PGSCALE_WORKERS="1")
        conn = raw_pgscale(pg)
        for sql, code in ((bad_parse, "42703"), (bad_run, "22012")):
            want = answer(direct, unit(sql, ["1"]))
            for _ in range(3):
                msgs = answer(conn, unit(sql, ["1"]))
                assert [e["C"] for e in pgwire.errors(msgs)] == [code]
                assert [t for t, _ in msgs] == [t for t, _ in want]
        # the division by zero ran on the server every time
        since = primary.log_size()
        answer(conn, unit(bad_run, ["1"]))
        assert executed(primary, since, marker) == 1
        assert int(show_cache(pg)["entries"]) == 0
        conn.close()
    direct.close()


def test_many_clients_missing_the_same_unit_at_once_run_it_once(pgscale, primary):
    fresh_table(primary, "ce_sf")
    primary.app_execute("INSERT INTO ce_sf SELECT g, g FROM generate_series(1, 2000) g")
    marker = "ce-sf-%s" % uuid.uuid4().hex
    sql = "SELECT count(*) /* %s */ FROM ce_sf a, ce_sf b WHERE a.v + b.v > $1" % marker
    with statements_logged(primary):
        pg = start_cached(pgscale, PGSCALE_WORKERS="1", PGSCALE_CACHE_FILL_WAIT="20s")
        conns = [raw_pgscale(pg) for _ in range(8)]
        since = primary.log_size()
        # all sent before any is answered: one runs it, the others wait
        for c in conns:
            c.send(unit(sql, ["1000"]))
        answers = [c.read_until_ready(timeout=60) for c in conns]
        for c in conns:
            c.close()
        assert all(a == answers[0] for a in answers)
        assert pgwire.errors(answers[0]) == [] and len(pgwire.raw_rows(answers[0])) == 1
        assert executed(primary, since, marker) == 1
        assert int(show_cache(pg)["waits"]) >= 1


def test_pipelined_units_after_a_hit_see_a_write_between_them(pgscale, primary):
    fresh_table(primary, "ce_pipe")
    primary.app_execute("INSERT INTO ce_pipe VALUES (1, 10)")
    pg = start_cached(pgscale, PGSCALE_WORKERS="1")
    conn = raw_pgscale(pg)
    read = unit("SELECT v FROM ce_pipe WHERE id = $1", ["1"])
    assert pgwire.data_rows(answer(conn, read)) == [["10"]]
    before = hits(pg)
    # a hit, a write, the same read again, all in one packet
    conn.send(read + unit("UPDATE ce_pipe SET v = 11 WHERE id = $1", ["1"]) + read)
    answers = [conn.read_until_ready() for _ in range(3)]
    assert hits(pg) == before + 1
    assert pgwire.data_rows(answers[0]) == [["10"]]
    assert [t for t, _ in answers[1]] == [b"1", b"2", b"n", b"C", b"Z"]
    assert pgwire.data_rows(answers[2]) == [["11"]]
    assert pgwire.data_rows(answer(conn, read)) == [["11"]]
    conn.close()


def test_reads_own_writes_with_lagging_replicas_through_the_extended_protocol(
        pgscale, primary, replicas_ctl):
    replicas = replicas_ctl
    pg = start_lagging(pgscale, primary, replicas, "ce_lag")
    read = "SELECT count(*) FROM ce_lag WHERE id >= %s"
    n = rounds(pg, 200)
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        for i in range(n):
            conn.execute("INSERT INTO ce_lag VALUES (%s, %s)", (i, i))
            assert conn.execute(read, (0,)).fetchone() == (i + 1,), "round %d: stale" % i
            assert conn.execute(read, (0,)).fetchone() == (i + 1,), "round %d: stale hit" % i
        replicas.set_apply_delay(0, 0)
        replicas.set_apply_delay(1, 0)
        before = hits(pg)

        def hit_now():
            assert conn.execute(read, (0,)).fetchone() == (n,)
            assert conn.execute(read, (0,)).fetchone() == (n,)
            return hits(pg) > before
        wait_for(hit_now, 10, interval=0.2, what="a hit once the replicas caught up")


def test_a_parse_pgscale_would_refuse_is_not_answered_from_the_cache(pgscale, primary):
    fresh_table(primary, "ce_limit")
    primary.app_execute("INSERT INTO ce_limit VALUES (1, 10)")
    sql = "SELECT v FROM ce_limit WHERE id = $1"
    pg = start_cached(pgscale, PGSCALE_WORKERS="1", PGSCALE_MAX_CLIENT_PREPARED_STATEMENTS="1")
    filler = raw_pgscale(pg)
    assert pgwire.data_rows(answer(filler, unit(sql, ["1"]))) == [["10"]]
    filler.close()
    conn = raw_pgscale(pg)
    assert pgwire.errors(answer(conn, parse("SELECT 1", "other") + sync())) == []
    # (the lookup finds the entry, but the request goes to the server,
    # whose answer is pgscale's refusal, as without the cache)
    msgs = answer(conn, unit(sql, ["1"], name="s1"))
    assert [e["C"] for e in pgwire.errors(msgs)] == ["54000"]
    assert pgwire.ready_status(msgs) == "I"
    # the unnamed statement is not counted: a hit
    before = hits(pg)
    assert pgwire.data_rows(answer(conn, unit(sql, ["1"]))) == [["10"]]
    assert hits(pg) == before + 1
    conn.close()


def read_until(conn, mtype):
    """Messages up to and including the first of type mtype."""
    msgs = []
    while True:
        m = conn.recv_msg()
        assert m is not None, "connection closed"
        msgs.append(m)
        if m[0] == mtype:
            return msgs


def test_unit_after_parse_describe_flush_hits_and_the_server_is_synced(pgscale, primary):
    """asyncpg's shape: Parse, Describe(statement), Flush (no Sync), then
    Bind, Execute, Sync on the server that holds the implicit transaction."""
    fresh_table(primary, "ce_held")
    primary.app_execute("INSERT INTO ce_held VALUES (1, 10), (2, 20)")
    marker = "ce-held-%s" % uuid.uuid4().hex
    sql = "SELECT v /* %s */ FROM ce_held WHERE id = $1" % marker
    prep = parse(sql, "h1") + pgwire.message(b"D", b"Sh1\0") + flush()
    run = bind(["1"], "h1", result_formats=(1,)) + execute() + sync()
    direct = raw_direct(primary)
    direct.send(prep)
    want_prep = read_until(direct, b"T")
    want = answer(direct, run)
    with statements_logged(primary):
        pg = start_cached(pgscale, PGSCALE_WORKERS="1", DB_POOL_SIZE="1", DB_MAX_OVERFLOW="0")
        filler = raw_pgscale(pg)
        assert answer(filler, unit(sql, ["1"], name="f", describe=False,
                                   result_formats=(1,)))[1:] == want
        filler.close()
        conn = raw_pgscale(pg)
        for i in range(3):
            since = primary.log_size()
            before = hits(pg)
            conn.send(prep.replace(b"h1", b"h%d" % (i + 2)))
            assert read_until(conn, b"T") == want_prep
            assert answer(conn, run.replace(b"h1", b"h%d" % (i + 2))) == want
            assert hits(pg) == before + 1
            assert executed(primary, since, marker) == 0
        # the server was synced and went back: one server serves a second
        # client, and no backend is left inside a transaction
        other = raw_pgscale(pg)
        assert pgwire.data_rows(answer(other, pgwire.query("SELECT 1"))) == [["1"]]
        states = [b["state"] for b in primary.backends() if "pgscale" not in
                  (b["application_name"] or "")]
        assert "idle in transaction" not in states
        assert pgwire.data_rows(answer(conn, unit(sql, ["2"]))) == [["20"]]
        other.close()
        conn.close()
    direct.close()


def test_held_transaction_that_wrote_or_failed_is_not_answered_from_the_cache(pgscale, primary):
    fresh_table(primary, "ce_held_w")
    primary.app_execute("INSERT INTO ce_held_w VALUES (1, 10)")
    read = "SELECT count(*) FROM ce_held_w WHERE id >= $1"
    pg = start_cached(pgscale, PGSCALE_WORKERS="1")
    conn = raw_pgscale(pg)
    assert pgwire.data_rows(answer(conn, unit(read, ["0"]))) == [["1"]]
    assert pgwire.data_rows(answer(conn, unit(read, ["0"]))) == [["1"]]
    # an INSERT run without a Sync, then the cached read: it sees the insert
    conn.send(parse("INSERT INTO ce_held_w VALUES ($1, $2)") + bind(["2", "20"]) + execute() +
              flush())
    assert [t for t, _ in read_until(conn, b"C")] == [b"1", b"2", b"C"]
    msgs = answer(conn, unit(read, ["0"]))
    assert pgwire.data_rows(msgs) == [["2"]] and pgwire.ready_status(msgs) == "I"
    assert pgwire.data_rows(answer(conn, unit(read, ["0"]))) == [["2"]]
    # BEGIN READ ONLY run without a Sync: the read is inside the block
    conn.send(parse("BEGIN READ ONLY") + bind() + execute() + flush())
    assert [t for t, _ in read_until(conn, b"C")] == [b"1", b"2", b"C"]
    before = hits(pg)
    msgs = answer(conn, unit(read, ["0"]))
    assert pgwire.data_rows(msgs) == [["2"]] and pgwire.ready_status(msgs) == "T"
    assert hits(pg) == before
    assert pgwire.ready_status(answer(conn, pgwire.query("COMMIT"))) == "I"
    # a Parse that failed without a Sync: PostgreSQL skips the rest up to
    # the Sync, and so does the answer
    direct = raw_direct(primary)
    bad = parse("SELECT nosuchcolumn FROM ce_held_w") + flush()
    want_err = None
    for c in (direct, conn):
        c.send(bad)
        got = read_until(c, b"E")
        want_err = want_err or [t for t, _ in got]
        assert [t for t, _ in got] == want_err
        assert [t for t, _ in answer(c, unit(read, ["0"]))] == [b"Z"]
    assert pgwire.data_rows(answer(conn, unit(read, ["0"]))) == [["2"]]
    conn.close()
    direct.close()


def test_redis_tier_shares_units_and_a_write_through_a_is_seen_through_b(
        pgscale, primary, redis):
    from test_cache_redis import counter, start_pair
    fresh_table(primary, "ce_redis")
    primary.app_execute("INSERT INTO ce_redis SELECT g, g FROM generate_series(1, 50) g")
    a, b = start_pair(pgscale, redis)
    marker = "ce-redis-%s" % uuid.uuid4().hex
    read = "SELECT sum(v) /* %s */ FROM ce_redis WHERE id >= %%s" % marker
    with statements_logged(primary), \
            psycopg.connect(a.dsn(), autocommit=True) as ca, \
            psycopg.connect(b.dsn(), autocommit=True) as cb:
        since = primary.log_size()
        assert ca.execute(read, (1,)).fetchone() == (1275,)
        wait_for(lambda: redis.cli("DBSIZE") not in (None, "0"), 5, what="an entry in Redis")
        shared = counter(b, "redis_hits")
        assert cb.execute(read, (1,)).fetchone() == (1275,)
        assert cb.execute(read, (1,)).fetchone() == (1275,)
        assert executed(primary, since, marker) == 1, "B sent the unit to the database"
        assert counter(b, "redis_hits") == shared + 1
        # writes through A, reads through B and A: never stale
        total = 1275
        for i in range(rounds(a, 100)):
            ca.execute("UPDATE ce_redis SET v = v + 1 WHERE id = %s", (i % 50 + 1,))
            total += 1
            assert cb.execute(read, (1,)).fetchone() == (total,), "round %d: B stale" % i
            assert ca.execute(read, (1,)).fetchone() == (total,), "round %d: A stale" % i
            assert cb.execute(read, (1,)).fetchone() == (total,), "round %d: B stale hit" % i
    assert counter(b, "hits") > 0
