"""Real drivers and tools through pgscale: psycopg2, asyncpg (plain and
pooled), SQLAlchemy 1.4 (sync and asyncio), pgbench."""
import asyncio
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest
import sqlalchemy as sa

from helpers import (APP_PASSWORD, BOTH_MODES, BackendSampler, aconnect, arun, pgbench,
                     pgbench_tps)


def _fresh_table(primary, name, ddl="(id int PRIMARY KEY, v text)"):
    primary.app_execute("DROP TABLE IF EXISTS %s" % name)
    primary.app_execute("CREATE TABLE %s %s" % (name, ddl))
    return name


# -- psycopg2 ----------------------------------------------------------------
@BOTH_MODES
def test_psycopg2_commit_keeps_and_rollback_discards(pgscale, primary, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    t = _fresh_table(primary, "pg2_tx_%s" % pool_mode)
    conn = pg.connect(autocommit=False)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO %s VALUES (1, 'kept')" % t)
        conn.commit()
        cur.execute("INSERT INTO %s VALUES (2, 'discarded')" % t)
        cur.execute("SELECT count(*) FROM %s" % t)
        assert cur.fetchone() == (2,)  # own uncommitted row is visible
        conn.rollback()
        cur.execute("SELECT id FROM %s ORDER BY id" % t)
        assert cur.fetchall() == [(1,)]
        conn.commit()
    assert primary.app_execute("SELECT id, v FROM %s" % t) == [(1, "kept")]


@BOTH_MODES
def test_psycopg2_executemany_inserts_every_row(pgscale, primary, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    t = _fresh_table(primary, "pg2_many_%s" % pool_mode)
    conn = pg.connect(autocommit=False)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO " + t + " VALUES (%s, %s)",
                        [(i, "row %d" % i) for i in range(500)])
    conn.commit()
    assert primary.app_execute("SELECT count(*), sum(id) FROM %s" % t) == [(500, sum(range(500)))]


# -- asyncpg -----------------------------------------------------------------
@BOTH_MODES
def test_asyncpg_prepared_statement_reused(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)

    async def go():
        conn = await aconnect(pg)
        try:
            stmt = await conn.prepare("SELECT $1::int * 2, $2::text || '!'")
            out = [tuple(await stmt.fetchrow(i, "x%d" % i)) for i in range(30)]
            return out
        finally:
            await conn.close()

    assert arun(go()) == [(i * 2, "x%d!" % i) for i in range(30)]


@BOTH_MODES
def test_asyncpg_executemany_and_fetch(pgscale, primary, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    t = _fresh_table(primary, "apg_many_%s" % pool_mode)

    async def go():
        conn = await aconnect(pg)
        try:
            await conn.executemany("INSERT INTO %s VALUES ($1, $2)" % t,
                                   [(i, "v%d" % i) for i in range(1000)])
            return await conn.fetch("SELECT id, v FROM %s WHERE id %% 100 = 0 ORDER BY id" % t)
        finally:
            await conn.close()

    rows = arun(go())
    assert [(r["id"], r["v"]) for r in rows] == [(i, "v%d" % i) for i in range(0, 1000, 100)]
    assert primary.app_execute("SELECT count(*) FROM %s" % t) == [(1000,)]


@BOTH_MODES
def test_asyncpg_transaction_rolls_back_on_exception(pgscale, primary, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    t = _fresh_table(primary, "apg_tx_%s" % pool_mode)

    class Boom(Exception):
        pass

    async def go():
        conn = await aconnect(pg)
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO %s VALUES (1, 'committed')" % t)
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO %s VALUES (2, 'rolled back')" % t)
                    raise Boom()
            except Boom:
                pass
            return await conn.fetch("SELECT id FROM %s ORDER BY id" % t)
        finally:
            await conn.close()

    assert [r["id"] for r in arun(go())] == [1]


@pytest.mark.deadline(90)
def test_asyncpg_pool_of_20_runs_200_tasks_over_5_servers(pgscale, primary):
    pg = pgscale(PGSCALE_POOL_MODE="transaction", DB_POOL_SIZE=5, DB_MAX_OVERFLOW=0)

    async def go():
        pool = await asyncpg.create_pool(host=pg.host, port=pg.port, user="app", database="app",
                                         password=APP_PASSWORD, min_size=20, max_size=20, timeout=10, command_timeout=30)
        try:
            async def task(i):
                async with pool.acquire(timeout=30) as c:
                    return await c.fetchval("SELECT $1::int FROM pg_sleep(0.01)", i)
            return await asyncio.gather(*(task(i) for i in range(200)))
        finally:
            await pool.close()

    with BackendSampler(primary) as sampler:
        results = arun(go(), timeout=80)
    assert results == list(range(200))
    assert 0 < sampler.max <= 5, sampler.samples


# -- SQLAlchemy --------------------------------------------------------------
@BOTH_MODES
def test_sqlalchemy_core_engine_with_queuepool_in_threads(pgscale, primary, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    engine = sa.create_engine(pg.url(scheme="postgresql+psycopg2"), pool_size=5, max_overflow=3,
                              pool_timeout=20, connect_args={"connect_timeout": 10}, future=True)
    md = sa.MetaData()
    t = sa.Table("sa_core_%s" % pool_mode, md,
                 sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("worker", sa.Integer, nullable=False),
                 sa.Column("v", sa.String(40)))
    try:
        md.drop_all(engine)
        md.create_all(engine)

        def work(n):
            for i in range(25):
                with engine.begin() as c:
                    c.execute(t.insert().values(worker=n, v="%d-%d" % (n, i)))
            with engine.connect() as c:
                return c.execute(sa.select(sa.func.count()).select_from(t)
                                 .where(t.c.worker == n)).scalar_one()

        with ThreadPoolExecutor(8) as ex:
            per_worker = list(ex.map(work, range(8)))
        assert per_worker == [25] * 8
        with engine.connect() as c:
            assert c.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() == 200
            assert c.execute(sa.text("SELECT current_user")).scalar_one() == "app"
        md.drop_all(engine)
    finally:
        engine.dispose()


@BOTH_MODES
def test_sqlalchemy_asyncio_engine_with_asyncpg(pgscale, pool_mode):
    from sqlalchemy.ext.asyncio import create_async_engine
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode)
    table = "sa_async_%s" % pool_mode

    async def go():
        engine = create_async_engine(pg.url(scheme="postgresql+asyncpg"), pool_size=4,
                                     max_overflow=0, pool_timeout=20,
                                     connect_args={"timeout": 10, "command_timeout": 20})
        try:
            async with engine.begin() as c:
                await c.execute(sa.text("DROP TABLE IF EXISTS %s" % table))
                await c.execute(sa.text("CREATE TABLE %s (id int, v text)" % table))

            async def ins(i):
                async with engine.begin() as c:
                    await c.execute(sa.text("INSERT INTO %s VALUES (:i, :v)" % table),
                                    {"i": i, "v": "v%d" % i})
            await asyncio.gather(*(ins(i) for i in range(40)))
            async with engine.connect() as c:
                n = (await c.execute(sa.text("SELECT count(*), sum(id) FROM %s" % table))).one()
                await c.execute(sa.text("DROP TABLE %s" % table))
                await c.commit()
                return tuple(n)
        finally:
            await engine.dispose()

    assert arun(go()) == (40, sum(range(40)))


# -- pgbench -----------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_db(primary):
    """Database `bench` owned by app, initialised with pgbench -i directly."""
    primary.execute("DROP DATABASE IF EXISTS bench")
    primary.execute("CREATE DATABASE bench OWNER app")
    r = pgbench(primary.port, ["-i", "-q", "-s", "1"], db="bench", password=APP_PASSWORD,
                timeout=120)
    assert r.returncode == 0, r.stderr
    return "bench"


def _assert_pgbench_clean(r):
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "error" not in r.stderr.lower(), r.stderr[-3000:]
    assert "number of failed transactions: 0" in r.stdout, r.stdout[-3000:]
    tps = pgbench_tps(r.stdout)
    assert tps is not None and tps > 0, r.stdout[-3000:]


@pytest.mark.deadline(120)
def test_pgbench_initialize_through_pgscale(pgscale, primary):
    primary.execute("DROP DATABASE IF EXISTS benchinit")
    primary.execute("CREATE DATABASE benchinit OWNER app")
    pg = pgscale(DB_POOL_SIZE=5)
    r = pgbench(pg.port, ["-i", "-s", "1"], db="benchinit", timeout=100)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "done in" in r.stderr, r.stderr[-3000:]
    assert primary.app_execute("SELECT count(*) FROM pgbench_accounts", db="benchinit") == \
        [(100_000,)]


@pytest.mark.deadline(60)
@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
@BOTH_MODES
def test_pgbench_run_without_errors(pgscale, bench_db, pool_mode, protocol):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, DB_POOL_SIZE=5, DB_MAX_OVERFLOW=0)
    clients = 20 if pool_mode == "transaction" else 4
    # pgbench -M prepared prepares each statement on first use with a
    # blocking PQprepare that stalls the pgbench thread; with several
    # clients per thread, one waiting for a server would stall its
    # thread-mates that hold servers mid-transaction (a pgbench deadlock
    # with any transaction pooler).  One thread per client avoids it.
    threads = clients if protocol == "prepared" else 2
    r = pgbench(pg.port, ["-M", protocol, "-c", str(clients), "-j", str(threads), "-T", "5"],
                db=bench_db, timeout=45)
    _assert_pgbench_clean(r)
