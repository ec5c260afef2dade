"""psycopg 3 through pgscale, in both pool modes: server-side binding,
prepared statements (explicit and automatic), pipeline mode with several
Syncs in flight and an error in the middle, COPY, transactions with errors,
notices.

pgscale runs with one server connection here, so that what a client
prepared can be looked up in pg_prepared_statements of the server it runs
on, whatever the mode."""
import psycopg
import pytest
from psycopg import errors as pgerr

from helpers import BOTH_MODES

pytestmark = pytest.mark.deadline(60)


def _fresh_table(primary, name, ddl="(id int PRIMARY KEY, v text)"):
    primary.app_execute("DROP TABLE IF EXISTS %s" % name)
    primary.app_execute("CREATE TABLE %s %s" % (name, ddl))
    return name


def _connect(pg, **kw):
    kw.setdefault("autocommit", True)
    return psycopg.connect(pg.dsn(), **kw)


def _start(pgscale, mode):
    return pgscale(PGSCALE_POOL_MODE=mode, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0)


@BOTH_MODES
def test_psycopg3_binds_parameters_on_the_server(pgscale, pool_mode):
    pg = _start(pgscale, pool_mode)
    with _connect(pg) as conn:
        row = conn.execute("SELECT %s::int + 1, %s::text, current_query()", (41, "x")).fetchone()
        assert row[:2] == (42, "x")
        # the server got placeholders and the values apart, not a literal
        assert "$1" in row[2] and "$2" in row[2] and "41" not in row[2], row[2]
        rows = conn.execute("SELECT g FROM generate_series(1, %s) g WHERE g %% %s = 0",
                            (20, 5)).fetchall()
        assert rows == [(5,), (10,), (15,), (20,)]


def _server_prepared(conn, text):
    """How many statements with this text the server connection holds."""
    return conn.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement = %s",
                        (text,), prepare=False).fetchone()[0]


@BOTH_MODES
def test_psycopg3_prepare_true_prepares_once_and_reuses(pgscale, pool_mode):
    pg = _start(pgscale, pool_mode)
    sql = "SELECT %s::int * 3 AS tripled"
    with _connect(pg) as conn:
        out = [conn.execute(sql, (i,), prepare=True).fetchone()[0] for i in range(20)]
        assert out == [i * 3 for i in range(20)]
        assert _server_prepared(conn, "SELECT $1::int * 3 AS tripled") == 1


@BOTH_MODES
def test_psycopg3_prepares_automatically_after_the_threshold(pgscale, pool_mode):
    pg = _start(pgscale, pool_mode)
    with _connect(pg, prepare_threshold=3) as conn:
        text = "SELECT $1::int - 1 AS auto_prep"
        for i in range(2):
            assert conn.execute("SELECT %s::int - 1 AS auto_prep", (i,)).fetchone() == (i - 1,)
        assert _server_prepared(conn, text) == 0  # not yet: below the threshold
        for i in range(2, 12):
            assert conn.execute("SELECT %s::int - 1 AS auto_prep", (i,)).fetchone() == (i - 1,)
        assert _server_prepared(conn, text) == 1


@BOTH_MODES
def test_psycopg3_pipeline_with_syncs_in_flight(pgscale, primary, pool_mode):
    pg = _start(pgscale, pool_mode)
    t = _fresh_table(primary, "pg3_pipe_%s" % pool_mode)
    with _connect(pg) as conn:
        with conn.pipeline() as p:
            curs = []
            for i in range(50):
                curs.append(conn.execute("INSERT INTO " + t + " VALUES (%s, %s) RETURNING id",
                                         (i, "v%d" % i)))
                if i % 10 == 9:
                    p.sync()  # several Syncs in flight before any result is read
            last = conn.execute("SELECT count(*) FROM " + t)
        assert [c.fetchone()[0] for c in curs] == list(range(50))
        assert last.fetchone() == (50,)
    assert primary.app_execute("SELECT count(*) FROM %s" % t) == [(50,)]


@BOTH_MODES
def test_psycopg3_pipeline_error_aborts_up_to_the_next_sync_only(pgscale, primary, pool_mode):
    pg = _start(pgscale, pool_mode)
    t = _fresh_table(primary, "pg3_pipe_err_%s" % pool_mode)
    with _connect(pg) as conn:
        # DivisionByZero, or PipelineAborted when psycopg saw the error
        # before the next execute (timing: see the test below)
        with pytest.raises((pgerr.DivisionByZero, pgerr.PipelineAborted)):
            with conn.pipeline() as p:
                conn.execute("INSERT INTO " + t + " VALUES (1, 'before the sync')")
                p.sync()
                conn.execute("INSERT INTO " + t + " VALUES (2, 'rolled back with the error')")
                conn.execute("SELECT 1 / 0")
                conn.execute("INSERT INTO " + t + " VALUES (3, 'skipped')")
                p.sync()
        # the connection is usable, in and out of a new pipeline
        with conn.pipeline() as p:
            conn.execute("INSERT INTO " + t + " VALUES (4, 'after')")
            p.sync()
            cur = conn.execute("SELECT id FROM " + t + " ORDER BY id")
        assert cur.fetchall() == [(1,), (4,)]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert primary.app_execute("SELECT id FROM %s ORDER BY id" % t) == [(1,), (4,)]


@BOTH_MODES
def test_psycopg3_pipeline_goes_on_after_an_error(pgscale, pool_mode):
    pg = _start(pgscale, pool_mode)
    with _connect(pg) as conn:
        with conn.pipeline() as p:
            before = conn.execute("SELECT 'before'")
            p.sync()
            # psycopg raises the error at the sync, or at a later execute if
            # the result arrived by then -- as DivisionByZero, or as
            # PipelineAborted when it saw the error before that execute (a
            # matter of timing, on a direct connection too): either is this
            # pipeline's error, and the sync in `finally` ends the aborted part
            with pytest.raises((pgerr.DivisionByZero, pgerr.PipelineAborted)):
                try:
                    conn.execute("SELECT 1 / 0")
                    conn.execute("SELECT 'skipped'")
                finally:
                    p.sync()
            after = conn.execute("SELECT 'after'")
            p.sync()
            again = conn.execute("SELECT %s::text", ("bound after",))
        assert before.fetchone() == ("before",)
        assert after.fetchone() == ("after",)
        assert again.fetchone() == ("bound after",)
        assert conn.execute("SELECT 1").fetchone() == (1,)


@BOTH_MODES
def test_psycopg3_copy_in_and_out(pgscale, primary, pool_mode):
    pg = _start(pgscale, pool_mode)
    t = _fresh_table(primary, "pg3_copy_%s" % pool_mode)
    with _connect(pg) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY " + t + " (id, v) FROM STDIN") as cp:
                for i in range(2000):
                    cp.write_row((i, None if i % 100 == 0 else "row %d" % i))
            assert cur.rowcount == 2000
            with cur.copy("COPY (SELECT id, v FROM " + t + " WHERE id < 3 ORDER BY id) "
                          "TO STDOUT") as cp:
                cp.set_types(["int4", "text"])
                assert list(cp.rows()) == [(0, None), (1, "row 1"), (2, "row 2")]
            with pytest.raises(pgerr.UniqueViolation):
                with cur.copy("COPY " + t + " (id, v) FROM STDIN") as cp:
                    cp.write_row((1, "duplicate"))
        assert conn.execute("SELECT count(*), count(v) FROM " + t).fetchone() == (2000, 1980)
    assert primary.app_execute("SELECT count(*) FROM %s" % t) == [(2000,)]


@BOTH_MODES
def test_psycopg3_transaction_with_error_rolls_back_and_connection_recovers(pgscale, primary,
                                                                           pool_mode):
    pg = _start(pgscale, pool_mode)
    t = _fresh_table(primary, "pg3_tx_%s" % pool_mode)
    with _connect(pg, autocommit=False) as conn:
        conn.execute("INSERT INTO " + t + " VALUES (1, 'committed')")
        conn.commit()
        with pytest.raises(pgerr.UniqueViolation) as ei:
            conn.execute("INSERT INTO " + t + " VALUES (1, 'duplicate')")
        assert ei.value.sqlstate == "23505"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(pgerr.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        with conn.transaction():
            conn.execute("INSERT INTO " + t + " VALUES (2, 'outer')")
            with pytest.raises(pgerr.DivisionByZero):
                with conn.transaction():  # a savepoint
                    conn.execute("INSERT INTO " + t + " VALUES (3, 'inner')")
                    conn.execute("SELECT 1 / 0")
        conn.commit()
        assert conn.execute("SELECT id FROM " + t + " ORDER BY id").fetchall() == [(1,), (2,)]
        conn.commit()
    assert primary.app_execute("SELECT id FROM %s ORDER BY id" % t) == [(1,), (2,)]


@BOTH_MODES
def test_psycopg3_notices_reach_the_handler(pgscale, pool_mode):
    pg = _start(pgscale, pool_mode)
    got = []
    with _connect(pg) as conn:
        conn.add_notice_handler(lambda d: got.append((d.severity, d.sqlstate, d.message_primary)))
        conn.execute("DO $$BEGIN RAISE NOTICE 'n %', 1; RAISE WARNING 'w'; END$$")
        conn.execute("SELECT %s::int", (1,))  # a notice-free statement after it
        conn.execute("DO $$BEGIN RAISE NOTICE USING MESSAGE = 'coded', ERRCODE = 'P0001'; END$$")
    assert got == [("NOTICE", "00000", "n 1"), ("WARNING", "01000", "w"),
                   ("NOTICE", "P0001", "coded")]
