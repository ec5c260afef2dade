"""The result cache's change feed (cache.change_feed): writes made directly
on PostgreSQL, around pgscale, end the cached answers they changed.

These tests run against a PostgreSQL of their own with wal_level=logical
(the session's primary keeps wal_level=replica, which one test uses to
check the feed's complaint) and synchronous_commit on, so that a commit's
WAL is flushed, and so sent to the feed, when the commit returns.  The
role `app` has the REPLICATION attribute there.

Each test that proves the feed works also has its control: with the feed
off the same direct write leaves the old answer in the cache."""
import os
import pwd
import shutil
import statistics
import tempfile
import time

import pytest

from conftest import Primary, Replica
from helpers import is_sanitized, wait_for

FEED_APP = "pgscale-change-feed"


def make_cluster(basedir, wal_level, prepare=None):
    p = Primary(basedir)
    p.init()
    with open(p.datadir / "postgresql.conf", "a") as f:
        f.write("wal_level = %s\nsynchronous_commit = on\n"
                "max_replication_slots = 20\nmax_wal_senders = 20\n" % wal_level)
    if prepare:
        prepare(p)
    p.start()
    p.bootstrap()
    p.execute("ALTER ROLE app REPLICATION")
    return p


@pytest.fixture(scope="module")
def logical(request):
    p = Primary(tempfile.mkdtemp(prefix="pgscale-it-feed-"))
    failed = request.session.testsfailed
    try:
        p = make_cluster(p.basedir, "logical")
        yield p
    finally:
        p.cleanup(keep=request.session.testsfailed > failed)


def show_cache(pg):
    return pg.admin("SHOW CACHE")[0]


def start(pgscale, node, feed=True, wait_streaming=True, **env):
    env.setdefault("PGSCALE_CACHE", "on")
    env.setdefault("PGSCALE_WORKERS", "1")
    env["PGSCALE_CACHE_CHANGE_FEED"] = "on" if feed else "off"
    pg = pgscale(DATABASE_URL=node.url(), **env)
    wait_for(lambda: int(show_cache(pg)["catalog_generation"]) > 0, 15,
             what="the relation catalog loaded")
    if feed and wait_streaming:
        wait_for(lambda: show_cache(pg)["change_feed"] == "streaming", 15,
                 what="the change feed streaming")
    return pg


def one(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def fresh(node, name, ddl="(id int PRIMARY KEY, v int)", rows="(1, 1)"):
    node.app_execute("DROP TABLE IF EXISTS %s CASCADE" % name)
    node.app_execute("CREATE TABLE %s %s" % (name, ddl))
    if rows:
        node.app_execute("INSERT INTO %s VALUES %s" % (name, rows))


def cached(pg, conn, sql, timeout=10):
    """Reads sql until it is a hit; returns the answer."""
    out = []

    def hit():
        before = int(show_cache(pg)["hits"])
        out.append(one(conn, sql))
        return int(show_cache(pg)["hits"]) > before
    wait_for(hit, timeout, what="a cache hit for %s" % sql)
    return out[-1]


def seen_within(conn, sql, want, seconds, interval=0.002):
    """Reads sql until it answers want; the seconds it took, or None."""
    t0 = time.monotonic()
    while True:
        if one(conn, sql) == want:
            return time.monotonic() - t0
        if time.monotonic() - t0 > seconds:
            return None
        time.sleep(interval)


def feed_slots(node):
    return node.execute("SELECT slot_name, temporary, active FROM pg_replication_slots "
                        "WHERE slot_name LIKE 'pgscale_feed_%' ORDER BY slot_name")


# --------------------------------------------------------------------------


@pytest.mark.parametrize("feed", [True, False], ids=["feed_on", "feed_off"])
def test_direct_update_ends_the_cached_answer(pgscale, logical, feed):
    fresh(logical, "f_upd")
    pg = start(pgscale, logical, feed=feed)
    conn = pg.connect()
    sql = "SELECT v FROM f_upd WHERE id = 1"
    assert cached(pg, conn, sql) == [(1,)]
    logical.app_execute("UPDATE f_upd SET v = 2 WHERE id = 1")
    took = seen_within(conn, sql, [(2,)], 2.0)
    if feed:
        assert took is not None, "the direct UPDATE was not seen through pgscale within 2 s"
        assert int(show_cache(pg)["feed_bumps"]) >= 1
    else:
        # the control: without the feed the entry lives on (TTL 300 s)
        assert took is None, "without the feed the old answer should have been served"
        assert one(conn, sql) == [(1,)]
        assert show_cache(pg)["change_feed"] == "off"


def test_direct_insert_into_a_partition_ends_the_parents_answer(pgscale, logical):
    logical.app_execute("DROP TABLE IF EXISTS f_part CASCADE")
    logical.app_execute("CREATE TABLE f_part (k int, v int) PARTITION BY RANGE (k)")
    logical.app_execute("CREATE TABLE f_part_a PARTITION OF f_part FOR VALUES FROM (0) TO (100)")
    logical.app_execute("CREATE TABLE f_part_b PARTITION OF f_part FOR VALUES FROM (100) TO (200)")
    logical.app_execute("INSERT INTO f_part VALUES (1, 1)")
    pg = start(pgscale, logical)
    conn = pg.connect()
    sql = "SELECT count(*) FROM f_part"
    assert cached(pg, conn, sql) == [(1,)]
    logical.app_execute("INSERT INTO f_part_b VALUES (150, 2)")
    assert seen_within(conn, sql, [(2,)], 2.0) is not None, \
        "an INSERT into a partition did not end the parent's cached count"


def test_direct_truncate_ends_the_cached_answer(pgscale, logical):
    fresh(logical, "f_trunc", rows="(1, 1), (2, 2)")
    fresh(logical, "f_trunc2", rows="(1, 1)")
    pg = start(pgscale, logical)
    conn = pg.connect()
    assert cached(pg, conn, "SELECT count(*) FROM f_trunc") == [(2,)]
    assert cached(pg, conn, "SELECT count(*) FROM f_trunc2") == [(1,)]
    logical.app_execute("TRUNCATE f_trunc, f_trunc2")
    assert seen_within(conn, "SELECT count(*) FROM f_trunc", [(0,)], 2.0) is not None
    assert seen_within(conn, "SELECT count(*) FROM f_trunc2", [(0,)], 2.0) is not None


def test_a_write_to_another_table_keeps_the_entry(pgscale, logical):
    """The feed bumps the tables a transaction wrote, not everything."""
    fresh(logical, "f_keep")
    fresh(logical, "f_other")
    pg = start(pgscale, logical)
    conn = pg.connect()
    sql = "SELECT v FROM f_keep WHERE id = 1"
    cached(pg, conn, sql)
    bumps = int(show_cache(pg)["feed_bumps"])
    logical.app_execute("UPDATE f_other SET v = 5")
    wait_for(lambda: int(show_cache(pg)["feed_bumps"]) > bumps, 5, what="the feed's bump")
    hits = int(show_cache(pg)["hits"])
    assert one(conn, sql) == [(1,)]
    assert int(show_cache(pg)["hits"]) == hits + 1


def feed_pid(node):
    rows = node.execute("SELECT pid FROM pg_stat_replication WHERE application_name = %s",
                        (FEED_APP,))
    return rows[0][0] if rows else None


def test_terminated_walsender_reconnects_and_drops_every_entry(pgscale, logical):
    fresh(logical, "f_term")
    pg = start(pgscale, logical)
    conn = pg.connect()
    sql = "SELECT v FROM f_term WHERE id = 1"
    cached(pg, conn, sql)
    pid = wait_for(lambda: feed_pid(logical), 5, what="the feed's walsender")
    before = show_cache(pg)
    logical.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_for(lambda: (feed_pid(logical) or pid) != pid and
             show_cache(pg)["change_feed"] == "streaming", 10, what="the feed back on a new walsender")
    after = show_cache(pg)
    # the drop and the new slot: writes in between were not seen
    assert int(after["feed_bumps_all"]) >= int(before["feed_bumps_all"]) + 1
    hits, misses = int(after["hits"]), int(after["misses"])
    assert one(conn, sql) == [(1,)]
    now = show_cache(pg)
    assert int(now["hits"]) == hits and int(now["misses"]) == misses + 1, \
        "the entry cached before the gap was served after it"
    log = pg.stderr_text()
    assert "change feed: the replication stream from primary ended" in log, log[-3000:]
    # and it works again
    cached(pg, conn, sql)
    logical.app_execute("UPDATE f_term SET v = 3 WHERE id = 1")
    assert seen_within(conn, sql, [(3,)], 2.0) is not None


@pytest.fixture
def replica_level(request):
    """A PostgreSQL of the test's own with wal_level=replica (the default),
    `app` with the REPLICATION attribute."""
    p = Primary(tempfile.mkdtemp(prefix="pgscale-it-feed-"))
    failed = request.session.testsfailed
    try:
        p = make_cluster(p.basedir, "replica")
        yield p
    finally:
        p.cleanup(keep=request.session.testsfailed > failed)


def test_wal_level_replica_is_named_and_the_cache_still_works(pgscale, replica_level):
    """wal_level=replica: the feed says what to change, once, keeps
    retrying, and the cache works as without it."""
    primary = replica_level
    primary.app_execute("DROP TABLE IF EXISTS f_replica")
    primary.app_execute("CREATE TABLE f_replica (id int PRIMARY KEY, v int)")
    primary.app_execute("INSERT INTO f_replica VALUES (1, 1)")
    pg = start(pgscale, primary, wait_streaming=False)
    wait_for(lambda: "set wal_level=logical and restart PostgreSQL" in pg.stderr_text(), 10,
             what="the wal_level complaint")
    conn = pg.connect()
    assert cached(pg, conn, "SELECT v FROM f_replica WHERE id = 1") == [(1,)]
    time.sleep(1.5)  # several retries (backoff from 100 ms)
    assert pg.is_running()
    assert pg.stderr_text().count("set wal_level=logical") == 1, pg.stderr_text()[-3000:]
    row = show_cache(pg)
    assert row["change_feed"] == "error"
    assert int(row["feed_bumps_all"]) == 0  # no slot, no gap bumps: entries live their TTL
    assert cached(pg, conn, "SELECT v FROM f_replica WHERE id = 1") == [(1,)]


def test_missing_replication_attribute_names_the_role(pgscale, logical):
    logical.execute("DROP ROLE IF EXISTS feed_norepl")
    logical.execute("CREATE ROLE feed_norepl LOGIN PASSWORD 'pw'")
    logical.execute("GRANT CONNECT ON DATABASE app TO feed_norepl")
    pg = pgscale(DATABASE_URL=logical.url(user="feed_norepl", password="pw"),
                 PGSCALE_CACHE="on", PGSCALE_CACHE_CHANGE_FEED="on")
    wait_for(lambda: "ALTER ROLE feed_norepl REPLICATION" in pg.stderr_text(), 10,
             what="the privilege complaint")
    row = pg.admin("SHOW CACHE", user="feed_norepl", password="pw")[0]
    assert row["change_feed"] == "error"


def test_each_instance_has_its_own_temporary_slot_gone_at_stop(pgscale, logical):
    fresh(logical, "f_slot")
    a = start(pgscale, logical)
    b = start(pgscale, logical)
    slots = feed_slots(logical)
    assert len(slots) == 2 and slots[0][0] != slots[1][0], slots
    assert all(temporary and active for _, temporary, active in slots), slots
    a.stop()
    b.signal(2)  # SIGINT
    assert b.wait_exit(10) is not None
    wait_for(lambda: feed_slots(logical) == [], 5, what="the temporary slots dropped")


def test_slot_waits_for_a_transaction_open_before_it(pgscale, logical):
    """CREATE_REPLICATION_SLOT waits until the transactions running when it
    began have ended: the feed stays `connecting` meanwhile (past a health
    check's bound) and streams once the transaction commits."""
    fresh(logical, "f_open")
    holder = logical.connect(user="app", db="app", password="secret", autocommit=False)
    try:
        with holder.cursor() as cur:
            cur.execute("UPDATE f_open SET v = 9")  # takes an xid
        pg = start(pgscale, logical, wait_streaming=False, PGSCALE_HEALTH_CHECK_TIMEOUT="500ms")
        time.sleep(3)  # longer than a connection attempt's bound (2 s)
        assert show_cache(pg)["change_feed"] == "connecting"
        holder.commit()
        wait_for(lambda: show_cache(pg)["change_feed"] == "streaming", 10,
                 what="the feed streaming after the transaction ended")
        assert "CREATE_REPLICATION_SLOT did not finish" not in pg.stderr_text()
    finally:
        holder.close()


def test_failover_moves_the_feed_to_the_new_primary(pgscale, request):
    """failover: auto promotes the replica; the feed reads a slot there,
    every entry from before is dropped, and a direct write on the new
    primary ends the entry it changed."""
    base = tempfile.mkdtemp(prefix="pgscale-it-feed-")
    p = make_cluster(base, "logical")
    failed = request.session.testsfailed
    rep = None
    try:
        p.execute("GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO app", db="app")
        fresh(p, "f_fo")
        rep = Replica(p.basedir / "replica1", p)
        rep.init()
        rep.start()
        target = p.execute("SELECT pg_current_wal_flush_lsn()::text")[0][0]
        wait_for(lambda: rep.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                     (target,))[0][0], 20, what="the replica caught up")
        pg = start(pgscale, p, READ_REPLICA_URLS=rep.url(), PGSCALE_FAILOVER="auto",
                   PGSCALE_FAILOVER_TIMEOUT="1s", PGSCALE_MONITOR_INTERVAL="100ms")
        conn = pg.connect()
        sql = "SELECT v FROM f_fo WHERE id = 1"
        cached(pg, conn, sql)
        before = int(show_cache(pg)["feed_bumps_all"])
        p.stop_immediate()
        wait_for(lambda: any(r["node"] == "replica1" and r["role"] == "primary"
                             for r in pg.admin("SHOW NODES")), 30, what="the replica promoted")
        wait_for(lambda: show_cache(pg)["change_feed"] == "streaming" and
                 rep.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name "
                             "LIKE 'pgscale_feed_%'")[0][0] == 1, 20,
                 what="the feed streaming from the new primary")
        assert int(show_cache(pg)["feed_bumps_all"]) >= before + 2  # the drop, the new slot
        hits = int(show_cache(pg)["hits"])
        assert one(conn, sql) == [(1,)]
        assert int(show_cache(pg)["hits"]) == hits, "an entry from before the failover was served"
        cached(pg, conn, sql)
        rep.app_execute("UPDATE f_fo SET v = 7 WHERE id = 1")
        assert seen_within(conn, sql, [(7,)], 2.0) is not None
        assert "streaming from replica1" in pg.stderr_text()
    finally:
        if rep is not None:
            rep.stop()
        p.cleanup(keep=request.session.testsfailed > failed)


def test_feed_reads_its_stream_over_tls(pgscale, request, tmp_path):
    """sslmode=require in DATABASE_URL: the feed's replication connection
    uses TLS too, and its stream (read from libpq's TLS session, a 1 MB row
    skipped on the way) still ends the entries a direct write changed."""
    from test_tls import Certs
    certs = Certs(tmp_path)

    def serve_tls(p):
        for name in ("server.crt", "server.key"):
            dst = p.datadir / name
            shutil.copy(certs.dir / name, dst)
            os.chmod(dst, 0o600)
            if os.geteuid() == 0:
                pw = pwd.getpwnam("postgres")
                os.chown(dst, pw.pw_uid, pw.pw_gid)
        with open(p.datadir / "postgresql.conf", "a") as f:
            f.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")

    failed = request.session.testsfailed
    p = make_cluster(tempfile.mkdtemp(prefix="pgscale-it-feed-"), "logical", serve_tls)
    try:
        fresh(p, "f_tls")
        p.app_execute("CREATE TABLE f_tls_big (t text)")
        pg = pgscale(DATABASE_URL=p.url() + "?sslmode=require", PGSCALE_CACHE="on",
                     PGSCALE_CACHE_CHANGE_FEED="on", PGSCALE_WORKERS="1")
        wait_for(lambda: show_cache(pg)["change_feed"] == "streaming" and
                 int(show_cache(pg)["catalog_generation"]) > 0, 15, what="the feed streaming")
        ssl = p.execute("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_replication r USING (pid) "
                        "WHERE r.application_name = %s", (FEED_APP,))
        assert ssl == [(True,)], ssl
        conn = pg.connect()
        sql = "SELECT v FROM f_tls WHERE id = 1"
        cached(pg, conn, sql)
        p.app_execute("INSERT INTO f_tls_big SELECT string_agg(md5(i::text), '') "
                      "FROM generate_series(1, 32768) i")  # 1 MB in one change
        p.app_execute("UPDATE f_tls SET v = 4 WHERE id = 1")
        assert seen_within(conn, sql, [(4,)], 2.0) is not None
        assert show_cache(pg)["change_feed"] == "streaming"
    finally:
        p.cleanup(keep=request.session.testsfailed > failed)


def test_delay_from_direct_write_to_invalidation(pgscale, logical):
    """Measured: a direct UPDATE commits, then a client of pgscale reads
    until it sees the new value (each read is a hit until the feed's bump
    turns it into a miss).  Printed with -s; bounded at 2 s."""
    fresh(logical, "f_delay")
    pg = start(pgscale, logical)
    conn = pg.connect()
    direct = logical.connect(user="app", db="app", password="secret")
    sql = "SELECT v FROM f_delay WHERE id = 1"
    n = int(os.environ.get("FEED_DELAY_ROUNDS", "50" if is_sanitized(pg.pid) else "200"))
    delays, first = [], 0
    for i in range(2, n + 2):
        cached(pg, conn, sql)
        with direct.cursor() as cur:
            cur.execute("UPDATE f_delay SET v = %s WHERE id = 1", (i,))
        t0 = time.monotonic()
        first += one(conn, sql) == [(i,)]
        # reads back to back (hits, a fraction of a millisecond each): the
        # delay is measured to about one read
        took = seen_within(conn, sql, [(i,)], 2.0, interval=0)
        assert took is not None, "round %d: not seen within 2 s" % i
        delays.append((time.monotonic() - t0) * 1000)
    direct.close()
    delays.sort()
    print("\nchange feed delay over %d rounds: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms;"
          " the first read after the COMMIT returned was already fresh in %d rounds"
          % (n, statistics.median(delays), delays[int(n * 0.9) - 1], delays[int(n * 0.99) - 1],
             delays[-1], first))
