"""The admin console (virtual database `pgscale`): SHOW POOLS / CLIENTS /
SERVERS / STATS / CONFIG return the documented columns and values that
match what is going on."""
import threading
import time

import psycopg2
import pytest

from helpers import BOTH_MODES, psql, wait_for

POOLS_COLUMNS = ["database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_login",
                 "sv_total", "sv_overflow", "max_total", "maxwait_ms", "pool_mode", "sv_pinned",
                 "node"]
CLIENTS_COLUMNS = ["id", "worker", "database", "user", "application_name", "addr", "port", "state",
                   "connect_time", "wait_ms", "server_id", "pinned"]
SERVERS_COLUMNS = ["id", "worker", "database", "user", "addr", "port", "state", "connect_time",
                   "backend_pid", "client_id", "prepared", "node"]
STATS_COLUMNS = ["database", "user", "xact_count", "query_count", "bytes_received", "bytes_sent",
                 "avg_xact_us", "avg_query_us", "avg_wait_us", "total_wait_us"]
CONFIG_COLUMNS = ["key", "value", "default"]


def _int(v):
    return int(v) if v is not None else None


@BOTH_MODES
def test_show_pools_columns_and_counts(pgscale, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, DB_POOL_SIZE=4, DB_MAX_OVERFLOW=3)
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    cols, rows = pg.admin_columns("SHOW POOLS")
    assert cols == POOLS_COLUMNS
    row = next(r for r in rows if (r["database"], r["user"]) == ("app", "app"))
    n = {k: _int(row[k]) for k in POOLS_COLUMNS if k not in ("database", "user", "pool_mode",
                                                             "node")}
    assert n["sv_pinned"] == 0, row
    assert row["node"] == "primary", row
    assert row["pool_mode"] == pool_mode
    assert n["max_total"] == 7
    assert n["cl_active"] >= 1 and n["cl_waiting"] == 0, row
    assert n["sv_total"] >= n["sv_active"] + n["sv_idle"] + n["sv_login"], row
    assert 1 <= n["sv_total"] <= 7 and n["sv_overflow"] == 0, row
    assert n["maxwait_ms"] >= 0
    if pool_mode == "session":
        assert n["sv_active"] >= 1, row   # the connected client holds its server
    else:
        assert n["sv_active"] == 0 and n["sv_idle"] >= 1, row


def test_show_pools_counts_waiting_client(pgscale):
    pg = pgscale(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=10)
    holder = pg.connect(autocommit=False)
    with holder.cursor() as cur:
        cur.execute("SELECT 1")
    waiter = pg.connect()
    result = {}

    def wait_query():
        with waiter.cursor() as cur:
            cur.execute("SELECT 2")
            result["row"] = cur.fetchone()

    t = threading.Thread(target=wait_query)
    t.start()
    try:
        row = wait_for(lambda: (lambda r: r if r and _int(r["cl_waiting"]) >= 1 else None)(pg.pool()),
                       5, what="cl_waiting >= 1")
        assert _int(row["sv_active"]) == 1
        t0 = time.monotonic()
        wait_for(lambda: _int(pg.pool()["maxwait_ms"]) >= 200, 5,
                 what="maxwait_ms to reach 200 while the client waits")
        assert time.monotonic() - t0 < 1.0, "maxwait_ms grew slower than the wall clock"
        states = [c["state"] for c in pg.admin("SHOW CLIENTS") if c["database"] == "app"]
        assert "waiting" in states, states
    finally:
        holder.commit()
        t.join(10)
    assert result["row"] == (2,)


def test_show_clients_lists_clients_and_the_admin_connection_itself(pgscale):
    pg = pgscale()
    conn = pg.connect(application_name="admin-test-client")
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    cols, rows = pg.admin_columns("SHOW CLIENTS")
    assert cols == CLIENTS_COLUMNS
    admins = [r for r in rows if r["database"] == "pgscale"]
    assert len(admins) >= 1, rows
    app = [r for r in rows if r["application_name"] == "admin-test-client"]
    assert len(app) == 1, rows
    c = app[0]
    assert (c["database"], c["user"], c["addr"]) == ("app", "app", "127.0.0.1")
    assert 0 < _int(c["port"]) < 65536
    assert c["state"] in ("idle", "active"), c
    assert len({(r["worker"], r["id"]) for r in rows}) == len(rows), "client ids are not unique"


def test_show_servers_idle_server_has_a_live_backend_pid(pgscale, primary):
    pg = pgscale()
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (pid,) = cur.fetchone()
    cols, rows = pg.admin_columns("SHOW SERVERS")
    assert cols == SERVERS_COLUMNS
    mine = [r for r in rows if _int(r["backend_pid"]) == pid]
    assert len(mine) == 1, rows
    s = mine[0]
    assert (s["database"], s["user"], s["state"]) == ("app", "app", "idle"), s
    assert s["addr"] == "127.0.0.1" and _int(s["port"]) == primary.port, s
    live = {b["pid"] for b in primary.backends()}
    assert {_int(r["backend_pid"]) for r in rows if r["database"] == "app"} <= live


def test_show_servers_links_active_server_to_its_client(pgscale):
    pg = pgscale(PGSCALE_POOL_MODE="session")
    conn = pg.connect(application_name="linked-client")
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (pid,) = cur.fetchone()
    client = next(r for r in pg.admin("SHOW CLIENTS") if r["application_name"] == "linked-client")
    server = next(r for r in pg.admin("SHOW SERVERS") if _int(r["backend_pid"]) == pid)
    assert server["state"] == "active"
    assert str(server["client_id"]) == str(client["id"])
    assert str(client["server_id"]) == str(server["id"])


def test_show_stats_counts_transactions_and_bytes(pgscale):
    pg = pgscale()
    conn = pg.connect(autocommit=False)
    with conn.cursor() as cur:
        for _ in range(3):
            cur.execute("SELECT 1")
            cur.execute("SELECT 2")
            conn.commit()
    cols, _ = pg.admin_columns("SHOW STATS")
    assert cols == STATS_COLUMNS

    def stats():
        for r in pg.admin("SHOW STATS"):
            if (r["database"], r["user"]) == ("app", "app") and _int(r["xact_count"]) >= 3:
                return r
        return None

    r = wait_for(stats, 5, what="SHOW STATS xact_count >= 3 for app/app")
    assert _int(r["query_count"]) >= 6, r
    assert _int(r["bytes_received"]) > 0 and _int(r["bytes_sent"]) > 0, r
    assert _int(r["avg_xact_us"]) >= 0 and _int(r["avg_query_us"]) >= 0, r
    assert _int(r["total_wait_us"]) >= 0 and _int(r["avg_wait_us"]) >= 0, r


@pytest.mark.deadline(60)
def test_show_stats_bytes_stay_right_when_servers_move_between_workers(pgscale):
    # Many clients on two workers over a small pool: servers are handed from
    # one worker to the other.  Every transaction returns at least a
    # DataRow, CommandComplete and ReadyForQuery to its client (> 30 bytes);
    # the counters must keep growing with the traffic.
    pg = pgscale(PGSCALE_WORKERS=2, DB_POOL_SIZE=2, DB_MAX_OVERFLOW=0)
    n_threads, per_thread = 16, 50
    errors = []

    def run():
        try:
            c = pg.connect()
            with c.cursor() as cur:
                for i in range(per_thread):
                    cur.execute("SELECT %s::int", (i,))
                    assert cur.fetchone() == (i,)
            c.close()
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not errors, errors
    r = next(r for r in pg.admin("SHOW STATS") if (r["database"], r["user"]) == ("app", "app"))
    total = n_threads * per_thread
    assert _int(r["xact_count"]) >= total, r
    assert _int(r["bytes_received"]) >= total * 20, r
    assert _int(r["bytes_sent"]) >= total * 30, r
    assert _int(r["bytes_sent"]) < total * 10000, r


def test_show_config_shows_settings_and_masks_the_password(pgscale):
    pg = pgscale(DB_POOL_SIZE=7, DB_MAX_OVERFLOW=2)
    cols, rows = pg.admin_columns("SHOW CONFIG")
    assert cols == CONFIG_COLUMNS
    conf = {r["key"]: r for r in rows}
    assert conf["DB_POOL_SIZE"]["value"] == "7"
    assert conf["DB_POOL_SIZE"]["default"] == "20"
    assert conf["DB_MAX_OVERFLOW"]["value"] == "2"
    assert "DATABASE_URL" in conf
    assert "secret" not in repr(rows), "the server password shows in SHOW CONFIG"
    assert "app@" in conf["DATABASE_URL"]["value"] or "app:" in conf["DATABASE_URL"]["value"]
    for key in ("PGSCALE_POOL_MODE", "PGSCALE_LISTEN", "DB_POOL_TIMEOUT"):
        assert key in conf, sorted(conf)


def test_unknown_admin_command_errors_and_lists_commands(pgscale):
    pg = pgscale()
    conn = psycopg2.connect(pg.dsn(db="pgscale"))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            with pytest.raises(psycopg2.Error) as exc:
                cur.execute("SHOW NONSENSE")
            assert exc.value.pgcode == "42601", (exc.value.pgcode, str(exc.value))
            assert "SHOW POOLS" in str(exc.value) or "POOLS" in str(exc.value).upper()
            cur.execute("SHOW POOLS")  # still usable
            assert cur.description is not None
    finally:
        conn.close()


def test_admin_console_works_from_psql(pgscale):
    pg = pgscale()
    r = psql(pg.port, "SHOW POOLS", db="pgscale")
    assert r.returncode == 0, r.stderr
    r = psql(pg.port, "SHOW CONFIG", db="pgscale")
    assert r.returncode == 0, r.stderr
    assert "DB_POOL_SIZE" in r.stdout
