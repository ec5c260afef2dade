"""Basic protocol relay through pgscale: simple and extended queries, errors,
notices, COPY, large values, cancel requests, odd queries."""
import hashlib
import io
import os
import random
import threading
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import psycopg2
import psycopg2.errors
import pytest

import pgwire
from helpers import (BOTH_MODES, MD5_PASSWORD, MD5_USER, aconnect, arun, proc_kb, psql)


@BOTH_MODES
def test_psql_command_returns_result(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    r = psql(pg.port, "SELECT 40 + 2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "42"


@BOTH_MODES
def test_multi_statement_simple_query_runs_every_statement(pgscale, primary, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    table = "multi_%s" % pool_mode
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS %s; CREATE TABLE %s (v int); "
                    "INSERT INTO %s VALUES (1); INSERT INTO %s VALUES (2); "
                    "SELECT sum(v) FROM %s" % ((table,) * 5))
        assert cur.fetchall() == [(3,)]
        cur.execute("SELECT 1; SELECT 2; SELECT 3")
        assert cur.fetchall() == [(3,)]
    assert primary.app_execute("SELECT count(*) FROM %s" % table) == [(2,)]
    primary.app_execute("DROP TABLE %s" % table)


@BOTH_MODES
def test_error_is_relayed_with_sqlstate_and_connection_stays_usable(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    conn = pg.connect()
    with conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.DivisionByZero) as exc:
            cur.execute("SELECT 1/0")
        assert exc.value.pgcode == "22012"
        assert "division by zero" in str(exc.value)
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)


@BOTH_MODES
def test_failed_transaction_needs_rollback_then_works(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    conn = pg.connect(autocommit=False)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        with pytest.raises(psycopg2.errors.DivisionByZero):
            cur.execute("SELECT 1/0")
        with pytest.raises(psycopg2.errors.InFailedSqlTransaction) as exc:
            cur.execute("SELECT 1")
        assert exc.value.pgcode == "25P02"
        conn.rollback()
        cur.execute("SELECT 3")
        assert cur.fetchone() == (3,)
        conn.commit()


@BOTH_MODES
def test_notice_from_do_block_is_relayed(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
    assert any("hello 42" in n for n in conn.notices), conn.notices


@BOTH_MODES
def test_asyncpg_binary_results_decode_correctly(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    u = uuid.uuid4()
    ts = datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=timezone.utc)
    blob = bytes(range(256)) * 40

    async def go():
        conn = await aconnect(pg)
        try:
            row = await conn.fetchrow(
                "SELECT $1::int4, $2::int8, $3::float8, $4::bytea, $5::timestamptz, "
                "$6::numeric, $7::int4[], $8::uuid, $9::text, $10::bool, NULL::int",
                -7, 2 ** 40, 3.25, blob, ts, Decimal("12345.6789"), [1, None, 3], u,
                "héllo", True)
            many = await conn.fetch("SELECT g, g * 2.5::float8 FROM generate_series(1, 2000) g")
            return list(row), [(r[0], r[1]) for r in many]
        finally:
            await conn.close()

    row, many = arun(go())
    assert row == [-7, 2 ** 40, 3.25, blob, ts, Decimal("12345.6789"), [1, None, 3], u,
                   "héllo", True, None]
    assert many == [(g, g * 2.5) for g in range(1, 2001)]


@BOTH_MODES
def test_copy_in_and_out_round_trips_100k_rows(pgscale, primary, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    table = "copy_rt_%s" % pool_mode
    primary.app_execute("DROP TABLE IF EXISTS %s" % table)
    primary.app_execute("CREATE TABLE %s (id int PRIMARY KEY, name text, x float8)" % table)
    lines = "".join("%d\tname-%d-%s\t%r\n" % (i, i, "z" * (i % 17), i / 7.0) for i in range(100_000))
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.copy_expert("COPY %s FROM STDIN" % table, io.StringIO(lines))
        assert cur.rowcount == 100_000
        out = io.StringIO()
        cur.copy_expert("COPY (SELECT id, name, x FROM %s ORDER BY id) TO STDOUT" % table, out)
        cur.execute("SELECT count(*), sum(id) FROM %s" % table)
        assert cur.fetchone() == (100_000, sum(range(100_000)))
    # float text output may differ in format from Python's repr: compare the
    # first two columns exactly and the third numerically.
    got = out.getvalue().splitlines()
    want = lines.splitlines()
    assert len(got) == len(want)
    assert hashlib.sha256("\n".join(l.rsplit("\t", 1)[0] for l in got).encode()).hexdigest() == \
        hashlib.sha256("\n".join(l.rsplit("\t", 1)[0] for l in want).encode()).hexdigest()
    assert all(abs(float(g.rsplit("\t", 1)[1]) - float(w.rsplit("\t", 1)[1])) < 1e-9
               for g, w in zip(got[::997], want[::997]))
    primary.app_execute("DROP TABLE %s" % table)


@pytest.mark.deadline(180)
def test_bytea_50mb_round_trip_is_streamed_without_buffering_it_whole(pgscale, primary):
    pg = pgscale()
    primary.app_execute("DROP TABLE IF EXISTS big_bytea")
    primary.app_execute("CREATE TABLE big_bytea (id int, data bytea)")
    data = os.urandom(50 * 1024 * 1024)
    digest = hashlib.md5(data).hexdigest()
    rss_before = proc_kb(pg.pid, "VmRSS")
    conn = pg.connect()
    with conn.cursor() as cur:
        # psycopg2 inlines the value as hex: a ~100 MB Query message.
        cur.execute("INSERT INTO big_bytea VALUES (1, %s)", (psycopg2.Binary(data),))
        cur.execute("SELECT md5(data), length(data) FROM big_bytea WHERE id = 1")
        assert cur.fetchone() == (digest, len(data))
        # ... and a ~100 MB DataRow on the way back.
        cur.execute("SELECT data FROM big_bytea WHERE id = 1")
        back = bytes(cur.fetchone()[0])
    assert hashlib.md5(back).hexdigest() == digest
    del back, data
    grown_mb = (proc_kb(pg.pid, "VmHWM") - rss_before) / 1024
    assert grown_mb < 80, "pgscale's peak RSS grew by %.0f MB relaying 100 MB messages" % grown_mb
    primary.app_execute("DROP TABLE big_bytea")


@BOTH_MODES
def test_cancel_interrupts_running_query_with_57014(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    conn = pg.connect()
    timer = threading.Timer(0.5, conn.cancel)
    timer.start()
    t0 = time.monotonic()
    try:
        with conn.cursor() as cur:
            with pytest.raises(psycopg2.errors.QueryCanceled) as exc:
                cur.execute("SELECT pg_sleep(20)")
    finally:
        timer.cancel()
    elapsed = time.monotonic() - t0
    assert exc.value.pgcode == "57014"
    assert elapsed < 5, "cancel took %.1f s" % elapsed
    with conn.cursor() as cur:
        cur.execute("SELECT 5")
        assert cur.fetchone() == (5,)


@BOTH_MODES
def test_cancel_request_with_wrong_key_is_ignored(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    conn = pg.connect()
    pid = conn.get_backend_pid()  # what pgscale sent in BackendKeyData

    def bogus_cancels():
        for p in (pid, pid ^ 0x5A5A, 0, 1):
            pgwire.send_cancel(pg.host, pg.port, p, random.getrandbits(32))

    timer = threading.Timer(0.3, bogus_cancels)
    timer.start()
    t0 = time.monotonic()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(1.5), 7")
            assert cur.fetchone() == ("", 7)
    finally:
        timer.join(10)
    assert time.monotonic() - t0 >= 1.4


@BOTH_MODES
def test_empty_query_gets_empty_query_response(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    with pgwire.RawConn(pg.host, pg.port) as c:
        msgs = c.startup("app", "app")
        assert pgwire.ready_status(msgs) == "I", msgs
        msgs = c.simple_query("")
        assert [t for t, _ in msgs] == [b"I", b"Z"], msgs
        msgs = c.simple_query(";")
        assert [t for t, _ in msgs] == [b"I", b"Z"], msgs
        msgs = c.simple_query("SELECT 1")
        assert pgwire.data_rows(msgs) == [["1"]]


@BOTH_MODES
def test_one_megabyte_query_text_is_relayed(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT length('" + "x" * 1_000_000 + "') /* " + "y" * 1000 + " */")
        assert cur.fetchone() == (1_000_000,)


def test_server_login_with_md5_password_works(pgscale, primary):
    pg = pgscale(DATABASE_URL=primary.url(MD5_USER, MD5_PASSWORD, "app"))
    conn = pg.connect(user=MD5_USER, db="app", password=MD5_PASSWORD)
    with conn.cursor() as cur:
        cur.execute("SELECT current_user, current_database()")
        assert cur.fetchone() == (MD5_USER, "app")
