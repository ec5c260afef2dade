"""The result cache end to end (in-process tier), against real PostgreSQL.

Whether a statement ran on PostgreSQL is read from PostgreSQL itself: the
tests switch log_statement on for the role `app` (ALTER ROLE, new backends
only: each test starts its own pgscale) and count the statement's text in
the primary's log.  A hit is a statement the log does not show.

Never stale: thousands of write-then-read rounds through the same and
another client, with INSERT, UPDATE, DELETE and TRUNCATE, in and out of
explicit transactions, rolled back and committed, through views and
partitions, and with replicas that lag."""
import contextlib
import threading
import time
import uuid

import pgwire

from helpers import APP_PASSWORD, APP_USER, LOCALHOST, arun, aconnect, is_sanitized, wait_for


def rounds(pg, n):
    return n // 5 if is_sanitized(pg.pid) else n


@contextlib.contextmanager
def statements_logged(primary):
    primary.execute("ALTER ROLE app SET log_statement = 'all'")
    try:
        yield
    finally:
        primary.execute("ALTER ROLE app RESET log_statement")


def ran(primary, since, marker):
    """How many times a statement containing marker reached the primary."""
    return primary.log_tail(10 ** 7, since).count("statement: " + marker)


def show_cache(pg):
    return pg.admin("SHOW CACHE")[0]


def start_cached(pgscale, **env):
    env.setdefault("PGSCALE_CACHE", "on")
    pg = pgscale(**env)
    # the relation catalog is loaded from the primary: until then every
    # table is unknown and nothing is cached
    wait_for(lambda: int(show_cache(pg)["catalog_generation"]) > 0, 15,
             what="the relation catalog loaded")
    return pg


def one(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else None


def fresh_table(primary, name, ddl="(id int PRIMARY KEY, v int)"):
    primary.app_execute("DROP TABLE IF EXISTS %s CASCADE" % name)
    primary.app_execute("CREATE TABLE %s %s" % (name, ddl))


def wait_cached(pg, conn, sql, params=None, timeout=10):
    """Runs sql until it is answered from the cache (the catalog generation
    after a DDL may be loaded a moment later)."""
    def hit():
        before = int(show_cache(pg)["hits"])
        one(conn, sql, params)
        return int(show_cache(pg)["hits"]) > before
    wait_for(hit, timeout, what="a cache hit for %s" % sql)


def test_repeated_read_is_served_without_the_server(pgscale, primary):
    fresh_table(primary, "c_hit")
    primary.app_execute("INSERT INTO c_hit SELECT g, g FROM generate_series(1, 10) g")
    with statements_logged(primary):
        # one worker: each worker has its own store
        pg = start_cached(pgscale, PGSCALE_WORKERS="1")
        conn = pg.connect()
        marker = "SELECT sum(v) /* hit-%s */ FROM c_hit" % uuid.uuid4().hex
        wait_cached(pg, conn, marker)
        since = primary.log_size()
        for _ in range(20):
            assert one(conn, marker) == [(55,)]
        other = pg.connect()
        assert one(other, marker) == [(55,)]
        assert ran(primary, since, marker) == 0
        st = show_cache(pg)
        assert int(st["hits"]) >= 21 and int(st["entries"]) >= 1


def test_writes_invalidate_for_the_writer_and_others(pgscale, primary):
    fresh_table(primary, "c_rw")
    pg = start_cached(pgscale, PGSCALE_WORKERS="2")
    w = pg.connect()
    r = pg.connect()
    read = "SELECT count(*), coalesce(sum(v), 0) FROM c_rw"
    rows = {}
    n = rounds(pg, 1500)
    for i in range(n):
        op = i % 6
        if op == 0:
            one(w, "INSERT INTO c_rw VALUES (%s, %s)", (i, i))
            rows[i] = i
        elif op == 1 and rows:
            k = next(iter(rows))
            one(w, "UPDATE c_rw SET v = v + 1 WHERE id = %s", (k,))
            rows[k] += 1
        elif op == 2 and rows:
            k = next(iter(rows))
            one(w, "DELETE FROM c_rw WHERE id = %s", (k,))
            del rows[k]
        elif op == 3:
            # an explicit transaction, committed
            with w.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("INSERT INTO c_rw VALUES (%s, 1)", (i,))
                cur.execute(read)
                cur.execute("COMMIT")
            rows[i] = 1
        elif op == 4:
            # rolled back: nothing changes
            with w.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("INSERT INTO c_rw VALUES (%s, 7)", (i,))
                cur.execute("ROLLBACK")
        elif op == 5 and i % 60 == 5:
            one(w, "TRUNCATE c_rw")
            rows.clear()
        want = [(len(rows), sum(rows.values()))]
        assert one(w, read) == want, "round %d: the writer read a stale answer" % i
        assert one(r, read) == want, "round %d: another client read a stale answer" % i
    st = show_cache(pg)
    assert int(st["hits"]) > 0


def test_view_and_partitions_are_invalidated_through_the_catalog(pgscale, primary):
    primary.app_execute("DROP TABLE IF EXISTS c_part CASCADE")
    primary.app_execute("CREATE TABLE c_part (id int, k int) PARTITION BY RANGE (k)")
    primary.app_execute("CREATE TABLE c_part_a PARTITION OF c_part FOR VALUES FROM (0) TO (100)")
    primary.app_execute("CREATE TABLE c_part_b PARTITION OF c_part FOR VALUES FROM (100) TO (200)")
    primary.app_execute("CREATE VIEW c_part_v AS SELECT k FROM c_part WHERE k >= 50")
    pg = start_cached(pgscale)
    conn = pg.connect()
    other = pg.connect()
    n = 0
    nb = 0
    for i in range(rounds(pg, 300)):
        # through the parent, read through a partition
        one(conn, "INSERT INTO c_part VALUES (%s, %s)", (i, 150))
        n += 1
        nb += 1
        assert one(other, "SELECT count(*) FROM c_part_b") == [(nb,)]
        # through a partition, read through the parent and the view
        one(conn, "INSERT INTO c_part_a VALUES (%s, %s)", (i, 60))
        n += 1
        assert one(other, "SELECT count(*) FROM c_part") == [(n,)]
        assert one(other, "SELECT count(*) FROM c_part_v") == [(n,)]
    wait_cached(pg, other, "SELECT count(*) FROM c_part_v")


def test_materialized_view_refresh_and_cte_queries(pgscale, primary):
    fresh_table(primary, "c_mvsrc")
    primary.app_execute("DROP MATERIALIZED VIEW IF EXISTS c_mv")
    primary.app_execute("CREATE MATERIALIZED VIEW c_mv AS SELECT count(*) AS n FROM c_mvsrc")
    pg = start_cached(pgscale, PGSCALE_WORKERS="1")
    conn = pg.connect()
    # A query with a CTE is cached on the tables its CTE reads
    cte = "WITH s AS (SELECT v FROM c_mvsrc) SELECT count(*), coalesce(sum(v), 0) FROM s"
    wait_cached(pg, conn, cte)
    wait_cached(pg, conn, "SELECT n FROM c_mv")
    for i in range(1, 21):
        one(conn, "INSERT INTO c_mvsrc VALUES (%s, %s)", (i, i))
        assert one(conn, cte) == [(i, i * (i + 1) // 2)]
        # the view is stale in PostgreSQL itself until it is refreshed...
        assert one(conn, "SELECT n FROM c_mv") == [(i - 1,)]
        # ...and REFRESH through pgscale ends its entries
        one(conn, "REFRESH MATERIALIZED VIEW c_mv")
        assert one(conn, "SELECT n FROM c_mv") == [(i,)]
    # a SQL-prepared statement's EXECUTE may write anything (its client is
    # pinned to its server by the PREPARE: another client reads)
    writer = pg.connect()
    one(writer, "PREPARE c_ins AS INSERT INTO c_mvsrc VALUES (100, 100)")
    wait_cached(pg, conn, cte)
    one(writer, "EXECUTE c_ins")
    assert one(conn, cte) == [(21, 310)]


def test_users_and_settings_get_their_own_entries(pgscale, primary):
    primary.app_execute("DROP SCHEMA IF EXISTS c_s1 CASCADE")
    primary.app_execute("DROP SCHEMA IF EXISTS c_s2 CASCADE")
    primary.app_execute("CREATE SCHEMA c_s1")
    primary.app_execute("CREATE SCHEMA c_s2")
    primary.app_execute("CREATE TABLE c_s1.t (v text)")
    primary.app_execute("CREATE TABLE c_s2.t (v text)")
    primary.app_execute("INSERT INTO c_s1.t VALUES ('one')")
    primary.app_execute("INSERT INTO c_s2.t VALUES ('two')")
    fresh_table(primary, "c_tz", "(t timestamptz)")
    primary.app_execute("INSERT INTO c_tz VALUES ('2024-01-01 12:00:00+00')")
    pg = start_cached(pgscale)
    a = pg.connect()
    b = pg.connect()
    one(a, "SET search_path = c_s1")
    one(b, "SET search_path = c_s2")
    for _ in range(3):
        assert one(a, "SELECT v FROM t") == [("one",)]
        assert one(b, "SELECT v FROM t") == [("two",)]
    one(a, "SET TimeZone = 'UTC'")
    one(b, "SET TimeZone = 'Asia/Tokyo'")
    for _ in range(3):
        assert str(one(a, "SELECT t::text FROM public.c_tz")[0][0]).endswith("+00")
        assert str(one(b, "SELECT t::text FROM public.c_tz")[0][0]).endswith("+09")


def test_volatile_stable_and_locking_reads_are_never_cached(pgscale, primary):
    fresh_table(primary, "c_vol")
    primary.app_execute("INSERT INTO c_vol VALUES (1, 1)")
    with statements_logged(primary):
        pg = start_cached(pgscale)
        conn = pg.connect()
        wait_cached(pg, conn, "SELECT v FROM c_vol")
        tag = uuid.uuid4().hex
        for sql in ("SELECT now() /* %s */ FROM c_vol" % tag,
                    "SELECT random() /* %s */ FROM c_vol" % tag,
                    "SELECT v /* %s */ FROM c_vol FOR UPDATE" % tag):
            since = primary.log_size()
            for _ in range(3):
                one(conn, sql)
            assert ran(primary, since, sql) == 3, sql


def test_many_clients_missing_at_once_run_the_query_once(pgscale, primary):
    fresh_table(primary, "c_sf")
    primary.app_execute("INSERT INTO c_sf SELECT g, g FROM generate_series(1, 2000) g")
    with statements_logged(primary):
        pg = start_cached(pgscale, PGSCALE_WORKERS="1", PGSCALE_CACHE_FILL_WAIT="20s")
        probe = pg.connect()
        wait_cached(pg, probe, "SELECT count(*) FROM c_sf")
        sql = ("SELECT count(*) /* sf-%s */ FROM c_sf a, c_sf b WHERE a.v + b.v > 1000"
               % uuid.uuid4().hex)
        conns = [pg.connect() for _ in range(8)]
        results = []
        barrier = threading.Barrier(len(conns))

        def run(c):
            barrier.wait()
            results.append(one(c, sql))
        since = primary.log_size()
        threads = [threading.Thread(target=run, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == len(conns)
        assert all(r == results[0] for r in results)
        assert ran(primary, since, sql) == 1
        assert int(show_cache(pg)["waits"]) >= 1


def test_big_answer_is_streamed_not_stored(pgscale, primary):
    fresh_table(primary, "c_big", "(id int, pad text)")
    primary.app_execute("INSERT INTO c_big SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g")
    pg = start_cached(pgscale, PGSCALE_CACHE_MAX_ENTRY_SIZE="64kB")
    conn = pg.connect()
    wait_cached(pg, conn, "SELECT count(*) FROM c_big")
    before = show_cache(pg)
    for _ in range(3):
        rows = one(conn, "SELECT id, pad FROM c_big ORDER BY id")
        assert len(rows) == 5000 and rows[-1] == (5000, "x" * 100)
    after = show_cache(pg)
    assert int(after["refused_too_big"]) >= int(before["refused_too_big"]) + 3
    assert int(after["entries"]) == int(before["entries"])


def test_memory_bound_is_honoured(pgscale, primary):
    fresh_table(primary, "c_mem", "(id int, pad text)")
    primary.app_execute("INSERT INTO c_mem SELECT g, repeat('y', 200) FROM generate_series(1, 200) g")
    pg = start_cached(pgscale, PGSCALE_CACHE_MAX_MEMORY="1MB", PGSCALE_WORKERS="2")
    conn = pg.connect()
    wait_cached(pg, conn, "SELECT count(*) FROM c_mem")
    for i in range(400):
        one(conn, "SELECT id, pad FROM c_mem WHERE id > %d" % i)
    st = show_cache(pg)
    assert int(st["bytes"]) <= 1024 * 1024
    assert int(st["bytes"]) <= int(st["max_bytes"])
    assert int(st["evictions"]) > 0


def test_entries_expire_after_their_ttl(pgscale, primary):
    fresh_table(primary, "c_ttl")
    with statements_logged(primary):
        pg = start_cached(pgscale, PGSCALE_CACHE_TTL="1s")
        conn = pg.connect()
        sql = "SELECT count(*) /* ttl-%s */ FROM c_ttl" % uuid.uuid4().hex
        since = primary.log_size()
        one(conn, sql)
        one(conn, sql)
        first = ran(primary, since, sql)
        assert first >= 1
        time.sleep(1.5)
        one(conn, sql)
        assert ran(primary, since, sql) == first + 1
        assert int(show_cache(pg)["expired"]) >= 1


def test_client_that_vanishes_mid_fill_leaves_no_entry(pgscale, primary):
    fresh_table(primary, "c_gone")
    primary.app_execute("INSERT INTO c_gone SELECT g, g FROM generate_series(1, 2000) g")
    pg = start_cached(pgscale, PGSCALE_WORKERS="1")
    probe = pg.connect()
    wait_cached(pg, probe, "SELECT count(*) FROM c_gone")
    sql = "SELECT count(*) FROM c_gone a, c_gone b WHERE a.v < b.v"
    raw = pgwire.RawConn(LOCALHOST, pg.port)
    raw.login(password=APP_PASSWORD)
    raw.send(pgwire.query(sql))
    time.sleep(0.05)
    raw.close(abort=True)
    # the table changes after the vanished client's query began: a fill it
    # left behind would answer with the old count
    one(probe, "INSERT INTO c_gone VALUES (5000, 5000)")
    want = primary.app_execute(sql)
    assert one(probe, sql) == want
    assert one(probe, sql) == want
    assert one(pg.connect(), "SELECT 1") == [(1,)]


def test_extended_protocol_writes_invalidate(pgscale, primary):
    fresh_table(primary, "c_ext")
    pg = start_cached(pgscale)
    simple = pg.connect()
    read = "SELECT count(*) FROM c_ext"
    wait_cached(pg, simple, read)

    async def main():
        conn = await aconnect(pg)
        try:
            for i in range(rounds(pg, 300)):
                await conn.execute("INSERT INTO c_ext VALUES ($1, $2)", i, i)
                assert one(simple, read) == [(i + 1,)]
                assert await conn.fetchval(read) == i + 1
        finally:
            await conn.close()
    arun(main())


def start_lagging(pgscale, primary, replicas, table):
    """A fresh table, then pgscale with the cache on in front of the
    replicas, which replay 300 ms late once it has seen them up."""
    fresh_table(primary, table)
    replicas.wait_replayed()
    pg = start_cached(pgscale, READ_REPLICA_URLS=",".join(replicas.urls()),
                      PGSCALE_MONITOR_INTERVAL="50ms")
    wait_for(lambda: all(r["state"] == "up" for r in pg.admin("SHOW NODES")), 10,
             what="replicas up")
    replicas.set_apply_delay(0, 300)
    replicas.set_apply_delay(1, 300)
    return pg


def test_reads_own_writes_with_lagging_replicas_and_the_cache(pgscale, primary, replicas_ctl):
    replicas = replicas_ctl
    pg = start_lagging(pgscale, primary, replicas, "c_lag")
    conn = pg.connect()
    read = "SELECT count(*) FROM c_lag"
    for i in range(rounds(pg, 300)):
        one(conn, "INSERT INTO c_lag VALUES (%s, %s)", (i, i))
        assert one(conn, read) == [(i + 1,)], "round %d: stale read" % i
        assert one(conn, read) == [(i + 1,)], "round %d: stale hit" % i
    st = show_cache(pg)
    if not is_sanitized(pg.pid):
        # the cache was in play during the rounds: answers were stored and
        # served (a sanitizer build is slow enough that every fill may meet
        # a write whose position is not read yet, and be refused)
        assert int(st["hits"]) > 0, st
    # once the replicas have caught up, the read is stored and the next one
    # is served from it
    replicas.set_apply_delay(0, 0)
    replicas.set_apply_delay(1, 0)
    before = int(st["hits"])

    def hit_now():
        assert one(conn, read) == [(rounds(pg, 300),)]
        assert one(conn, read) == [(rounds(pg, 300),)]
        return int(show_cache(pg)["hits"]) > before
    wait_for(hit_now, 10, interval=0.2, what="a cache hit once the replicas caught up")


def test_read_right_after_a_write_is_looked_up_with_replicas(pgscale, primary, replicas):
    """With replicas, pgscale reads the primary's WAL position after each
    write on the writer's server; a read the client sends meanwhile waits
    for that instead of following the write onto the primary uncached:
    after every write, the first read fills the entry, the second hits."""
    fresh_table(primary, "c_after")
    primary.app_execute("INSERT INTO c_after SELECT g, g FROM generate_series(1, 100) g")
    replicas.wait_replayed()
    pg = start_cached(pgscale, READ_REPLICA_URLS=",".join(replicas.urls()))
    wait_for(lambda: all(r["state"] == "up" and r["lsn"] for r in pg.admin("SHOW NODES")), 15,
             what="every node checked")
    conn = pg.connect()
    read = "SELECT sum(v) FROM c_after"
    want = one(conn, read)[0][0]
    n = 30
    before = show_cache(pg)
    for i in range(n):
        one(conn, "UPDATE c_after SET v = v + 1 WHERE id = 1")
        want += 1
        assert one(conn, read) == [(want,)]
        assert one(conn, read) == [(want,)]
    after = show_cache(pg)
    assert int(after["misses"]) - int(before["misses"]) == n, (before, after)
    assert int(after["hits"]) - int(before["hits"]) == n, (before, after)


def test_role_and_row_level_security_get_their_own_entries(pgscale, primary):
    fresh_table(primary, "c_rls", "(owner name, v int)")
    primary.execute("DO $$BEGIN CREATE ROLE c_reader; EXCEPTION WHEN duplicate_object THEN "
                    "NULL; END$$")
    primary.execute("GRANT c_reader TO app")
    primary.app_execute("INSERT INTO c_rls VALUES ('app', 1), ('c_reader', 2), ('c_reader', 3)")
    primary.app_execute("GRANT SELECT ON c_rls TO c_reader")
    primary.app_execute("ALTER TABLE c_rls ENABLE ROW LEVEL SECURITY")
    primary.app_execute("ALTER TABLE c_rls FORCE ROW LEVEL SECURITY")
    primary.app_execute("CREATE POLICY mine ON c_rls USING (owner = current_user)")
    pg = start_cached(pgscale, PGSCALE_WORKERS="1")
    a = pg.connect()
    b = pg.connect()
    one(b, "SET ROLE c_reader")
    read = "SELECT count(*), coalesce(sum(v), 0) FROM c_rls"
    wait_cached(pg, a, read)
    for _ in range(3):
        assert one(a, read) == [(1, 1)]
        assert one(b, read) == [(2, 5)]
    one(b, "RESET ROLE")
    assert one(b, read) == [(1, 1)]


def test_pipelined_requests_after_a_hit_run_as_usual(pgscale, primary):
    fresh_table(primary, "c_pipe")
    primary.app_execute("INSERT INTO c_pipe VALUES (1, 10)")
    pg = start_cached(pgscale, PGSCALE_WORKERS="1")
    conn = pg.connect()
    read = "SELECT v FROM c_pipe"
    wait_cached(pg, conn, read)
    raw = pgwire.RawConn(LOCALHOST, pg.port)
    raw.login(password=APP_PASSWORD)
    # a hit, a write, the same read again, all in one packet
    raw.send(pgwire.query(read) + pgwire.query("UPDATE c_pipe SET v = 11") +
             pgwire.query(read))
    answers = [raw.read_until_ready() for _ in range(3)]
    raw.close()
    rows = [[m for m in msgs if m[0] == b"D"] for msgs in answers]
    assert len(rows[0]) == 1 and rows[0][0][1].endswith(b"10")
    assert len(rows[2]) == 1 and rows[2][0][1].endswith(b"11")
    assert one(conn, read) == [(11,)]


def test_session_mode_extended_protocol_runs_as_without_the_cache(pgscale, primary):
    fresh_table(primary, "c_sess")
    pg = start_cached(pgscale, PGSCALE_POOL_MODE="session")

    async def main():
        conn = await aconnect(pg)
        try:
            stmt = await conn.prepare("INSERT INTO c_sess VALUES ($1, $2)")
            for i in range(50):
                await stmt.fetch(i, i)
            await conn.executemany("INSERT INTO c_sess VALUES ($1, $2)",
                                   [(i, i) for i in range(50, 100)])
            assert await conn.fetchval("SELECT count(*) FROM c_sess") == 100
        finally:
            await conn.close()
    arun(main())
    # session mode is not cached: the same read twice runs twice
    conn = pg.connect()
    assert one(conn, "SELECT count(*) FROM c_sess") == [(100,)]
    assert one(conn, "SELECT count(*) FROM c_sess") == [(100,)]
    assert int(show_cache(pg)["hits"]) == 0


def test_other_databases_are_not_cached_on_the_primary_databases_catalog(pgscale, primary):
    """The relation catalog describes DATABASE_URL's database. In another
    database the same names may be other things: here `cx_1` is a plain
    table in app but a partition of `cx` in cache_other, so expanding a
    write to cache_other's cx_1 through app's catalog would miss cx. Reads
    in another database are not cached; they stay right."""
    primary.execute("DROP DATABASE IF EXISTS cache_other")
    primary.execute("CREATE DATABASE cache_other OWNER %s" % APP_USER)
    for t in ("cx", "cx_1"):
        primary.app_execute("DROP TABLE IF EXISTS %s CASCADE" % t)
        primary.app_execute("CREATE TABLE %s (k int)" % t)
    primary.app_execute("CREATE TABLE cx (k int) PARTITION BY RANGE (k)", db="cache_other")
    primary.app_execute("CREATE TABLE cx_1 PARTITION OF cx FOR VALUES FROM (0) TO (1000)",
                        db="cache_other")
    pg = start_cached(pgscale, PGSCALE_WORKERS="1")
    conn = pg.connect(db="cache_other")
    read = "SELECT count(*) FROM cx"
    for i in range(1, 51):
        one(conn, "INSERT INTO cx_1 VALUES (%s)", (i,))
        assert one(conn, read) == [(i,)]
        assert one(conn, read) == [(i,)]
    # app's own reads are cached as before
    app = pg.connect()
    wait_cached(pg, app, "SELECT count(*) FROM cx")
