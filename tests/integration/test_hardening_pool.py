"""Pool hardening: connect failures back off instead of spinning, pool
counters stay exact through every way a server connection closes, no
timeout fires on a timestamp taken after the janitor's clock reading, and
pools nobody uses are freed."""
import threading
import time

import psycopg2
import psycopg2.errors
import pytest


def _one(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


# -- timestamps taken after the janitor's clock reading ---------------------------
@pytest.mark.deadline(60)
def test_query_handed_a_server_by_the_janitor_is_not_cancelled_at_once(pgscale):
    """A server that was just cancelled sits out a short quarantine; the
    janitor then hands it to the waiting client, whose query starts after
    the janitor read its clock.  That query's age must not wrap to a huge
    value and trip query_timeout at once."""
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, PGSCALE_QUERY_TIMEOUT="1s",
                 DB_POOL_TIMEOUT=30)
    for _ in range(3):
        a = pg.connect()
        b = pg.connect()
        errors = {}

        def long_query():
            try:
                _one(a, "SELECT pg_sleep(5)")
            except psycopg2.Error as e:
                errors["a"] = e

        t = threading.Thread(target=long_query)
        t.start()
        time.sleep(0.3)  # a holds the only server; b queues behind it
        t0 = time.monotonic()
        try:
            # well under query_timeout: must not be cancelled
            assert _one(b, "SELECT 42 FROM pg_sleep(0.3)") == (42,)
        except psycopg2.errors.QueryCanceled as e:
            pytest.fail("a 0.3 s query was cancelled by a 1 s query_timeout: %s" % e)
        t.join(10)
        assert "a" in errors and errors["a"].pgcode == "57014", errors
        assert time.monotonic() - t0 < 5
        a.close()
        b.close()
