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
import contextlib
import signal
import threading
import time
import uuid

import psycopg2
import pytest

from helpers import is_sanitized, wait_for


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


def counter(pg, name):
    return int(show_cache(pg)[name])


def one(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else None


def fresh_table(primary, name, ddl="(id int PRIMARY KEY, v int)"):
    primary.app_execute("DROP TABLE IF EXISTS %s CASCADE" % name)
    primary.app_execute("CREATE TABLE %s %s" % (name, ddl))


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


def wait_cached(pg, conn, sql, params=None, timeout=10):
    def hit():
        before = counter(pg, "hits")
        one(conn, sql, params)
        return counter(pg, "hits") > before
    wait_for(hit, timeout, what="a cache hit for %s" % sql)


def rounds(pg, n):
    return n // 5 if is_sanitized(pg.pid) else n


def test_write_through_a_then_read_through_b_is_never_stale(pgscale, primary, redis):
    fresh_table(primary, "cr_rw")
    primary.app_execute("INSERT INTO cr_rw VALUES (1, 0)")
    a, b = start_pair(pgscale, redis)
    ca, cb = a.connect(), b.connect()
    # another client of B keeps reading too, so that B has entries to serve
    cb2 = b.connect()
    sql = "SELECT v FROM cr_rw WHERE id = 1"
    stale = 0
    n = rounds(a, 2000)
    t0 = time.monotonic()
    for i in range(1, n + 1):
        one(ca, "UPDATE cr_rw SET v = %s WHERE id = 1", (i,))
        if one(cb, sql)[0][0] != i:
            stale += 1
        if one(cb2, sql)[0][0] != i:
            stale += 1
        if time.monotonic() - t0 > 50:
            n = i
            break
    assert stale == 0, "%d stale reads in %d rounds" % (stale, n)
    assert n >= 200
    # the reads were served from the cache at times (B's second reader)
    assert counter(b, "hits") > 0
    assert counter(b, "redis_checks") > 0


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
