"""The result cache's Redis tier end to end: a real redis-server, real
PostgreSQL, and TWO pgscale instances A and B on the same primary with the
same REDIS_URL.

Never stale across instances: a client that wrote through A and reads
through B sees its write (B checks the versions in Redis before it serves a
hit).  Redis killed or stopped (SIGSTOP): no error reaches a client, each
request waits at most about cache.redis_timeout, nothing is served from the
cache meanwhile, and hits resume once Redis is back.

Whether a statement ran on PostgreSQL is read from PostgreSQL's own
statement log (log_statement for role app), as in test_cache.py."""
import signal
import subprocess
import threading
import time
import uuid

import psycopg2
import pytest

import pgwire

from helpers import APP_PASSWORD, LOCALHOST, wait_for
from test_cache import (fresh_table, one, ran, rounds, show_cache, statements_logged,
                        wait_cached)


def counter(pg, name):
    return int(show_cache(pg)[name])


def wait_redis(pg, state="up", timeout=15):
    wait_for(lambda: show_cache(pg)["redis"] == state, timeout,
             what="the Redis tier %s" % state)


def start_pair(pgscale, redis, **env):
    """Instances A and B, the cache on, the same Redis; both connected and
    with the relation catalog loaded."""
    env.setdefault("PGSCALE_CACHE", "on")
    env.setdefault("REDIS_URL", redis.url())
    pair = (pgscale(**env), pgscale(**env))
    for pg in pair:
        wait_for(lambda: int(show_cache(pg)["catalog_generation"]) > 0, 15,
                 what="the relation catalog loaded")
        wait_redis(pg)
    return pair


def test_write_through_a_then_read_through_b_is_never_stale(pgscale, primary, redis):
    """Thousands of rounds, four pairs of clients at once, each on its own
    row: a write through one instance, then reads of that row through the
    other (by the writer's partner, and by a second client of that instance
    that keeps the entry warm), in both directions.  Every read must show
    the write."""
    fresh_table(primary, "cr_rw")
    primary.app_execute("INSERT INTO cr_rw SELECT g, 0 FROM generate_series(0, 3) g")
    a, b = start_pair(pgscale, redis)
    per_thread = rounds(a, 1000)
    stale, errors, done = [], [], [0] * 4

    def pair(t):
        try:
            conns = {"a": (a.connect(), a.connect()), "b": (b.connect(), b.connect())}
            sql = "SELECT v FROM cr_rw WHERE id = %d" % t
            t0 = time.monotonic()
            for i in range(1, per_thread + 1):
                w, r = ("a", "b") if i % 2 else ("b", "a")
                one(conns[w][0], "UPDATE cr_rw SET v = %s WHERE id = %s", (i, t))
                for c in conns[r]:
                    got = one(c, sql)[0][0]
                    if got != i:
                        stale.append((t, i, got))
                # the writer's own instance too
                got = one(conns[w][1], sql)[0][0]
                if got != i:
                    stale.append((t, i, got))
                done[t] = i
                if time.monotonic() - t0 > 45:
                    break
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=pair, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == []
    assert stale == [], "stale reads (thread, round, value read): %s" % stale[:10]
    assert sum(done) >= min(2000, 4 * per_thread), done
    # entries are served, each after its check against Redis (while the
    # four writers ran, every write ended every entry of the table, so on
    # a loaded machine there may have been no hit then: once they stop,
    # a repeated read must be one)
    sql = "SELECT v FROM cr_rw WHERE id = 0"
    for pg in (a, b):
        c = pg.connect()
        wait_for(lambda: (one(c, sql) or True) and counter(pg, "hits") > 0, 10,
                 what="a hit once the writers stopped")
        assert counter(pg, "redis_checks") >= counter(pg, "hits")


def test_entry_filled_by_a_is_a_hit_on_b_without_the_database(pgscale, primary, redis):
    fresh_table(primary, "cr_share")
    primary.app_execute("INSERT INTO cr_share SELECT g, g FROM generate_series(1, 50) g")
    a, b = start_pair(pgscale, redis)
    marker = "SELECT sum(v) AS cr_share_%s FROM cr_share" % uuid.uuid4().hex[:8]
    with statements_logged(primary):
        ca, cb = a.connect(), b.connect()
        since = primary.log_size()
        assert one(ca, marker) == [(1275,)]
        assert ran(primary, since, marker) == 1
        wait_for(lambda: redis.cli("DBSIZE") not in (None, "0"), 5, what="an entry in Redis")
        hits = counter(b, "redis_hits")
        assert one(cb, marker) == [(1275,)]
        assert one(cb, marker) == [(1275,)]
        assert ran(primary, since, marker) == 1, "B sent the query to the database"
        assert counter(b, "redis_hits") == hits + 1
        # the second read on B was a local hit, checked against Redis
        assert counter(b, "hits") >= 1


def test_rolled_back_write_through_a_leaves_b_right(pgscale, primary, redis):
    fresh_table(primary, "cr_rollback")
    primary.app_execute("INSERT INTO cr_rollback VALUES (1, 10)")
    a, b = start_pair(pgscale, redis)
    ca, cb = a.connect(), b.connect()
    sql = "SELECT v FROM cr_rollback WHERE id = 1"
    wait_cached(b, cb, sql)
    for i in range(rounds(a, 200)):
        ca.autocommit = False
        one(ca, "UPDATE cr_rollback SET v = %s WHERE id = 1", (1000 + i,))
        ca.rollback()
        ca.autocommit = True
        assert one(cb, sql) == [(10,)]
    one(ca, "UPDATE cr_rollback SET v = 11 WHERE id = 1")
    assert one(cb, sql) == [(11,)]
    # and B caches it again
    wait_cached(b, cb, sql)
    assert one(cb, sql) == [(11,)]


def test_write_through_a_drops_bs_local_entry_by_pubsub(pgscale, primary, redis):
    fresh_table(primary, "cr_pubsub")
    primary.app_execute("INSERT INTO cr_pubsub VALUES (1, 1)")
    a, b = start_pair(pgscale, redis)
    ca, cb = a.connect(), b.connect()
    sql = "SELECT v FROM cr_pubsub WHERE id = 1"
    wait_cached(b, cb, sql)
    entries = counter(b, "entries")
    assert entries >= 1
    one(ca, "UPDATE cr_pubsub SET v = 2 WHERE id = 1")
    # the message reaches B's subscriber at once; give it a moment
    time.sleep(0.3)
    before = show_cache(b)
    assert one(cb, sql) == [(2,)]
    after = show_cache(b)
    # B's entry was dead locally already (its table's version moved by the
    # message): dropped on the lookup, no Redis check made for it
    assert int(after["invalidations"]) == int(before["invalidations"]) + 1
    assert int(after["redis_checks"]) == int(before["redis_checks"])
    assert int(after["misses"]) == int(before["misses"]) + 1


def test_redis_killed_mid_run_no_errors_and_hits_resume(pgscale, primary, redis):
    fresh_table(primary, "cr_kill")
    primary.app_execute("INSERT INTO cr_kill VALUES (1, 0)")
    a, b = start_pair(pgscale, redis, PGSCALE_CACHE_REDIS_TIMEOUT="50ms")
    ca, cb = a.connect(), b.connect()
    sql = "SELECT v FROM cr_kill WHERE id = 1"
    errors, stale, worst = [], 0, 0.0
    i = 0

    def work(duration):
        nonlocal i, stale, worst
        end = time.monotonic() + duration
        while time.monotonic() < end:
            i += 1
            try:
                t = time.monotonic()
                one(ca, "UPDATE cr_kill SET v = %s WHERE id = 1", (i,))
                got = one(cb, sql)[0][0]
                got2 = one(cb, sql)[0][0]
                worst = max(worst, time.monotonic() - t)
                if got != i or got2 != i:
                    stale += 1
            except psycopg2.Error as e:
                errors.append(str(e))

    work(1.0)
    redis.stop()
    work(2.0)
    wait_redis(b, "down", 5)
    assert show_cache(a)["redis"] == "down"
    # nothing is served from the cache while Redis is away
    hits = counter(b, "hits")
    work(1.0)
    assert counter(b, "hits") == hits
    redis.start()
    wait_redis(a)
    wait_redis(b)
    work(1.0)
    print("Redis killed: %d rounds, worst round %.1f ms" % (i, worst * 1e3))
    assert errors == []
    assert stale == 0
    assert worst < 2.0, "a round took %.3f s" % worst
    # hits resume through the restarted Redis
    wait_cached(b, cb, sql)
    assert one(cb, sql) == [(i,)]


def timed(conn, sql, params=None):
    t = time.monotonic()
    r = one(conn, sql, params)
    return time.monotonic() - t, r


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


@pytest.mark.deadline(120)
def test_redis_stopped_each_request_waits_at_most_the_timeout(pgscale, primary, redis):
    fresh_table(primary, "cr_stop")
    primary.app_execute("INSERT INTO cr_stop VALUES (1, 0)")
    a, b = start_pair(pgscale, redis, PGSCALE_CACHE_REDIS_TIMEOUT="50ms")
    ca, cb = a.connect(), b.connect()
    sql = "SELECT v FROM cr_stop WHERE id = 1"
    wait_cached(b, cb, sql)
    lat, wrong = [], 0
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(1, 101):
            dt, _ = timed(ca, "UPDATE cr_stop SET v = %s WHERE id = 1", (i,))
            lat.append(dt)
            dt, r = timed(cb, sql)
            lat.append(dt)
            if r != [(i,)]:
                wrong += 1
        # every worker notices (an idle one by its keepalive PING)
        wait_redis(a, "down", 5)
        wait_redis(b, "down", 5)
        assert counter(a, "redis_timeouts") + counter(b, "redis_timeouts") >= 1
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    print("requests while Redis was stopped: p50 %.1f ms, p99 %.1f ms, max %.1f ms"
          % (pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3, max(lat) * 1e3))
    assert wrong == 0
    assert pct(lat, 0.99) < 1.0, "p99 %.3f s" % pct(lat, 0.99)
    assert max(lat) < 3.0, "max %.3f s" % max(lat)
    # back by itself, and serving hits again
    wait_redis(a)
    wait_redis(b)
    one(ca, "UPDATE cr_stop SET v = 7 WHERE id = 1")
    assert one(cb, sql) == [(7,)]
    wait_cached(b, cb, sql)
    assert one(cb, sql) == [(7,)]


def test_hit_latency_through_the_redis_tier(pgscale, primary, redis):
    fresh_table(primary, "cr_lat")
    primary.app_execute("INSERT INTO cr_lat SELECT g, g FROM generate_series(1, 10) g")
    a, b = start_pair(pgscale, redis)
    cb = b.connect()
    sql = "SELECT v FROM cr_lat WHERE id = 3"
    wait_cached(b, cb, sql)
    checks = counter(b, "redis_checks")
    lat = [timed(cb, sql)[0] for _ in range(2000)]
    assert counter(b, "redis_checks") >= checks + 2000
    print("hit latency through the Redis tier: p50 %.0f us, p99 %.0f us"
          % (pct(lat, 0.5) * 1e6, pct(lat, 0.99) * 1e6))
    assert pct(lat, 0.5) < 0.05


def redis_cli_auth(redis, password, db, *args):
    r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(redis.port), "-a", password,
                        "--no-auth-warning", "-n", str(db)] + [str(a) for a in args],
                       capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    return r.stdout.strip()


def test_redis_url_password_and_db_are_used_and_a_wrong_one_is_no_error(pgscale, primary, redis):
    fresh_table(primary, "cr_auth")
    primary.app_execute("INSERT INTO cr_auth VALUES (1, 5)")
    redis.cli("CONFIG", "SET", "requirepass", "s3cret")
    url = "redis://:s3cret@127.0.0.1:%d/3" % redis.port
    a, b = start_pair(pgscale, redis, REDIS_URL=url)
    ca, cb = a.connect(), b.connect()
    sql = "SELECT v FROM cr_auth WHERE id = 1"
    one(ca, "UPDATE cr_auth SET v = 6 WHERE id = 1")
    wait_cached(b, cb, sql)
    # the keys are in db 3, none in db 0
    assert int(redis_cli_auth(redis, "s3cret", 3, "DBSIZE")) > 0
    assert int(redis_cli_auth(redis, "s3cret", 0, "DBSIZE")) == 0
    # a wrong password: the tier stays down, clients see nothing of it
    c = pgscale(PGSCALE_CACHE="on", REDIS_URL="redis://:wrong@127.0.0.1:%d/3" % redis.port)
    wait_for(lambda: int(show_cache(c)["redis_errors"]) > 0, 10, what="an AUTH error counted")
    assert show_cache(c)["redis"] == "down"
    cc = c.connect()
    for _ in range(5):
        assert one(cc, sql) == [(6,)]
    assert counter(c, "hits") == 0
    assert "AUTH or SELECT" in c.stderr_text()
    redis_cli_auth(redis, "s3cret", 0, "CONFIG", "SET", "requirepass", "")


def redis_delay(redis, seconds):
    """Redis stops answering for `seconds` (SIGSTOP, then SIGCONT)."""
    redis.proc.send_signal(signal.SIGSTOP)
    t = threading.Timer(seconds, lambda: redis.proc.send_signal(signal.SIGCONT))
    t.start()
    return t


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_pipelined_requests_behind_a_write_come_back_in_order(pgscale, primary, redis, mode):
    """A write and a read sent together: the read's answer comes after the
    write's ReadyForQuery, which waits for Redis (here stopped: for
    cache.redis_timeout); nothing hangs, in either pooling mode."""
    fresh_table(primary, "cr_pipe")
    primary.app_execute("INSERT INTO cr_pipe VALUES (1, 0)")
    a, b = start_pair(pgscale, redis, PGSCALE_POOL_MODE=mode,
                      PGSCALE_CACHE_REDIS_TIMEOUT="200ms")
    raw = pgwire.RawConn(LOCALHOST, a.port)
    raw.login(password=APP_PASSWORD)
    for i, pause in ((1, False), (2, True), (3, False)):
        t = redis_delay(redis, 0.5) if pause else None
        start = time.monotonic()
        raw.send(pgwire.query("UPDATE cr_pipe SET v = %d WHERE id = 1" % i) +
                 pgwire.query("SELECT v FROM cr_pipe WHERE id = 1") +
                 pgwire.query("SELECT v + 1 FROM cr_pipe WHERE id = 1"))
        first = raw.read_until_ready()
        second = raw.read_until_ready()
        third = raw.read_until_ready()
        took = time.monotonic() - start
        if t:
            t.join()
        assert [m[0] for m in first] == [b"C", b"Z"]
        assert pgwire.data_rows(second) == [[str(i)]]
        assert pgwire.data_rows(third) == [[str(i + 1)]]
        assert took < 2.0, took
        if pause:
            # held for the timeout, not for the whole stop
            assert took >= 0.15, took
    raw.close()
    wait_redis(a)
    cb = b.connect()
    assert one(cb, "SELECT v FROM cr_pipe WHERE id = 1") == [(3,)]


def test_cache_switched_on_by_reload_starts_the_redis_tier(pgscale, primary, redis, tmp_path):
    """B starts with the cache off; a RELOAD that switches it on connects
    its Redis tier too (else B would serve entries A's writes ended)."""
    fresh_table(primary, "cr_reload")
    primary.app_execute("INSERT INTO cr_reload VALUES (1, 1)")
    a = pgscale(PGSCALE_CACHE="on", REDIS_URL=redis.url())
    wait_redis(a)
    path = tmp_path / "b.yaml"
    path.write_text("cache:\n  enabled: off\n")
    b = pgscale(args=["--config", str(path)], REDIS_URL=redis.url())
    assert show_cache(b)["redis"] == "off"
    path.write_text("cache:\n  enabled: on\n")
    b.admin("RELOAD")
    wait_redis(b)
    wait_for(lambda: int(show_cache(b)["catalog_generation"]) > 0, 15,
             what="the relation catalog loaded after RELOAD")
    ca, cb = a.connect(), b.connect()
    sql = "SELECT v FROM cr_reload WHERE id = 1"
    for i in range(2, 40):
        one(ca, "UPDATE cr_reload SET v = %s WHERE id = 1", (i,))
        assert one(cb, sql) == [(i,)]
        assert one(cb, sql) == [(i,)]
    assert counter(b, "redis_checks") > 0


def test_garbage_in_pgscales_keys_is_no_error_to_clients(pgscale, primary, redis):
    """Something else wrote pgscale:epoch (not a number): every request
    that meets it fails over to the database (tier down, errors counted,
    reconnecting), clients get right answers; once the key is cleared the
    tier comes back."""
    fresh_table(primary, "cr_garbage")
    primary.app_execute("INSERT INTO cr_garbage VALUES (1, 0)")
    a, b = start_pair(pgscale, redis)
    sql = "SELECT v FROM cr_garbage WHERE id = 1"
    warm = b.connect()
    wait_cached(b, warm, sql)
    redis.cli("SET", "pgscale:epoch", "not-a-number")
    errors, wrong = [], []
    lock = threading.Lock()
    value = [0]

    def client(t):
        try:
            ca, cb = a.connect(), b.connect()
            for _ in range(60):
                if t == 0:
                    with lock:
                        value[0] += 1
                        one(ca, "UPDATE cr_garbage SET v = %s WHERE id = 1", (value[0],))
                        want = value[0]
                    got = one(cb, sql)[0][0]
                    if got != want:
                        wrong.append((want, got))
                else:
                    one(cb, sql)
                    one(ca, sql)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == [] and wrong == []
    assert counter(a, "redis_errors") + counter(b, "redis_errors") > 0
    redis.cli("DEL", "pgscale:epoch")
    wait_redis(a)
    wait_redis(b)
    wait_cached(b, warm, sql)
