"""The complete admin console: SHOW DATABASES / USERS / LISTS, RELOAD (and
SIGHUP), PAUSE, RESUME, KILL, WAIT_CLOSE, SHUTDOWN; who may use the console
(admin_users, stats_users); per-database and per-user overrides and client
limits from the config file.  Against a real PostgreSQL, with pgbench for
the commands that must not disturb running work."""
import signal
import subprocess
import textwrap
import threading
import time

import psycopg2
import pytest

import pgwire
from helpers import APP_PASSWORD, LOCALHOST, client_env, finish_pgbench, pgbench, wait_for

DATABASES_COLUMNS = ["name", "host", "port", "database", "force_user", "pool_size",
                     "max_overflow", "pool_mode", "current_connections", "max_client_connections",
                     "current_client_connections", "paused"]
USERS_COLUMNS = ["name", "pool_size", "max_overflow", "pool_mode", "current_connections",
                 "max_user_client_connections", "current_client_connections"]
LISTS_NAMES = ["databases", "users", "pools", "free_clients", "used_clients", "login_clients",
               "free_servers", "used_servers", "workers", "free_buffers"]
CHANGING_COMMANDS = ["RELOAD", "PAUSE app", "RESUME app", "KILL app", "WAIT_CLOSE app", "SHUTDOWN"]


def _int(v):
    return int(v) if v is not None else None


def write_config(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def console(pg, user="app", **params):
    """A psycopg2 connection to the admin console (closed at teardown)."""
    return pg.connect(user=user, db="pgscale", **params)


def run_console(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall() if cur.description else None


def raw_login(pg, user="app", db="app"):
    """Logs in with the raw protocol; returns (conn, messages)."""
    c = pgwire.RawConn(LOCALHOST, pg.port)
    return c, c.startup(user=user, database=db)


def login_error(pg, user="app", db="app"):
    """The ErrorResponse fields a refused login gets."""
    c, msgs = raw_login(pg, user, db)
    try:
        errs = pgwire.errors(msgs)
        assert errs, "login of user=%s db=%s was not refused: %r" % (user, db, msgs)
        return errs[0]
    finally:
        c.close()


def busy_backends(primary, db):
    """pgscale's server connections of db that run something (active or in a
    transaction)."""
    return primary.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND usename = 'app' AND datname = %s AND state <> 'idle'", (db,))[0][0]


def backend_pids(primary, db="app"):
    return {b["pid"] for b in primary.backends(db=db)}


def start_pgbench(port, args, db):
    argv = ["pgbench", "-h", LOCALHOST, "-p", str(port), "-U", "app", *args, db]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=client_env(), stdin=subprocess.DEVNULL)




@pytest.fixture(scope="module")
def bench_db(primary):
    primary.execute("DROP DATABASE IF EXISTS adminbench")
    primary.execute("CREATE DATABASE adminbench OWNER app")
    r = pgbench(primary.port, ["-i", "-q", "-s", "1"], db="adminbench", password=APP_PASSWORD,
                timeout=120)
    assert r.returncode == 0, r.stderr
    return "adminbench"


# -- SHOW DATABASES / USERS / LISTS ------------------------------------------
def test_show_databases_lists_configured_and_used_databases(pgscale, tmp_path):
    cfg = write_config(tmp_path / "pgscale.yaml", """\
        pool_size: 6
        databases:
          app: {pool_size: 3, max_overflow: 1, max_db_connections: 50}
          reports: {pool_mode: session}
        """)
    pg = pgscale(args=["--config", cfg])
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    cols, rows = pg.admin_columns("SHOW DATABASES")
    assert cols == DATABASES_COLUMNS
    by = {r["name"]: r for r in rows}
    app = by["app"]
    assert (app["host"], app["database"], app["force_user"]) == ("127.0.0.1", "app", None)
    assert (_int(app["pool_size"]), _int(app["max_overflow"]), app["pool_mode"]) == \
        (3, 1, "transaction"), app
    assert _int(app["current_connections"]) >= 1, app
    assert _int(app["max_client_connections"]) == 50
    assert _int(app["current_client_connections"]) == 1, app
    assert _int(app["paused"]) == 0
    reports = by["reports"]   # configured, never used
    assert (_int(reports["pool_size"]), reports["pool_mode"]) == (6, "session"), reports
    assert _int(reports["current_connections"]) == 0
    assert "pgscale" not in by


def test_show_users_shows_overrides_and_counts(pgscale, tmp_path):
    cfg = write_config(tmp_path / "pgscale.yaml", """\
        users:
          app: {pool_size: 2, max_user_connections: 5}
          batch: {pool_mode: session}
        """)
    pg = pgscale(args=["--config", cfg])
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    cols, rows = pg.admin_columns("SHOW USERS")
    assert cols == USERS_COLUMNS
    by = {r["name"]: r for r in rows}
    app = by["app"]
    assert (_int(app["pool_size"]), app["max_overflow"], app["pool_mode"]) == (2, None, None), app
    assert _int(app["max_user_client_connections"]) == 5
    assert _int(app["current_client_connections"]) == 1, app
    assert _int(app["current_connections"]) >= 1, app
    assert by["batch"]["pool_mode"] == "session"
    assert _int(by["batch"]["current_client_connections"]) == 0


def test_show_lists_counts_pools_clients_and_servers(pgscale):
    pg = pgscale(PGSCALE_WORKERS=2)
    conns = [pg.connect() for _ in range(3)]
    for c in conns:
        with c.cursor() as cur:
            cur.execute("SELECT 1")
    cols, rows = pg.admin_columns("SHOW LISTS")
    assert cols == ["list", "items"]
    items = {r["list"]: _int(r["items"]) for r in rows}
    assert list(items) == LISTS_NAMES
    assert items["pools"] == 1 and items["databases"] == 1 and items["users"] == 1, items
    assert items["used_clients"] >= 4, items      # three clients and this console
    assert items["used_servers"] >= 1 and items["workers"] == 2, items
    assert items["login_clients"] == 0 and items["free_clients"] == 0, items


# -- access control ------------------------------------------------------------
# The lists decide by user name; who proves which name is auth's business
# (test_security_zeroconfig.py, test_clientauth.py), so these tests let
# every name in.
ACCESS_CONFIG = """\
    auth: {type: trust}
    admin_users: [opsadmin]
    stats_users: [monitor]
    """


def test_admin_user_may_run_every_command(pgscale, tmp_path):
    pg = pgscale(args=["--config", write_config(tmp_path / "pgscale.yaml", ACCESS_CONFIG)])
    c = console(pg, "opsadmin")
    assert run_console(c, "SHOW POOLS") is not None
    run_console(c, "RELOAD")
    run_console(c, "PAUSE app")
    assert _int(next(r for r in pg.admin("SHOW DATABASES", user="opsadmin")
                     if r["name"] == "app")["paused"]) == 1
    run_console(c, "RESUME app")
    run_console(c, "WAIT_CLOSE app")
    assert "admin_users and stats_users are empty" not in pg.stderr_text()


def test_stats_user_may_show_but_not_change_anything(pgscale, tmp_path):
    pg = pgscale(args=["--config", write_config(tmp_path / "pgscale.yaml", ACCESS_CONFIG)])
    c = console(pg, "monitor")
    for what in ("POOLS", "CLIENTS", "SERVERS", "STATS", "CONFIG", "DATABASES", "USERS", "LISTS"):
        assert run_console(c, "SHOW " + what) is not None
    for cmd in CHANGING_COMMANDS:
        with pytest.raises(psycopg2.Error) as exc:
            run_console(c, cmd)
        assert exc.value.pgcode == "42501", (cmd, exc.value.pgcode, str(exc.value))
        assert "admin access needed" in str(exc.value) and "admin_users" in str(exc.value)
    assert pg.is_running()
    assert not any(_int(r["paused"]) for r in pg.admin("SHOW DATABASES", user="monitor"))


def test_other_users_may_not_connect_to_the_console(pgscale, tmp_path):
    pg = pgscale(args=["--config", write_config(tmp_path / "pgscale.yaml", ACCESS_CONFIG)])
    err = login_error(pg, user="app", db="pgscale")
    assert err["S"] == "FATAL" and err["C"] == "28000", err
    assert "not allowed" in err["M"] and "admin_users" in err["M"], err
    err = login_error(pg, user="someone", db="pgscale")
    assert err["S"] == "FATAL" and err["C"] == "28000", err
    # the same user still reaches its database
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_reload_applies_new_console_users_to_connected_and_new_clients(pgscale, tmp_path):
    path = write_config(tmp_path / "pgscale.yaml", ACCESS_CONFIG)
    pg = pgscale(args=["--config", path])
    assert login_error(pg, user="auditor", db="pgscale")["C"] == "28000"
    monitor = console(pg, "monitor")
    write_config(path, """\
        auth: {type: trust}
        admin_users: [opsadmin, monitor]
        stats_users: [auditor]
        """)
    pg.admin("RELOAD", user="opsadmin")
    assert pg.admin_columns("SHOW POOLS", user="auditor")[0][0] == "database"
    run_console(monitor, "PAUSE app")          # promoted: allowed at its next command
    run_console(monitor, "RESUME app")
    with pytest.raises(psycopg2.Error) as exc:
        pg.admin("RESUME", user="auditor")
    assert exc.value.pgcode == "42501"


# -- zero config: no admin_users, no stats_users ------------------------------------
def zero_config_with_users(tmp_path, extra=""):
    """A config file with a users file (webapp, ops) and no admin lists: the
    console's zero-config rules, with users other than DATABASE_URL's that
    can log in."""
    users = tmp_path / "users.txt"
    users.write_text('"webapp" "webapp-pw"\n"ops" "ops-pw"\n')
    return write_config(tmp_path / "pgscale.yaml", extra + "auth:\n  file: %s\n" % users)


def test_zero_config_application_user_may_show_but_not_change_anything(pgscale, tmp_path):
    pg = pgscale(args=["--config", zero_config_with_users(tmp_path)])
    # any user who can log in (here from the users file); not DATABASE_URL's
    c = console(pg, "webapp", password="webapp-pw")
    for what in ("POOLS", "CLIENTS", "SERVERS", "STATS", "CONFIG", "DATABASES", "USERS", "LISTS"):
        assert run_console(c, "SHOW " + what) is not None
    for cmd in CHANGING_COMMANDS:
        with pytest.raises(psycopg2.Error) as exc:
            run_console(c, cmd)
        msg = str(exc.value)
        assert exc.value.pgcode == "42501", (cmd, exc.value.pgcode, msg)
        assert "DATABASE_URL" in msg and "admin_users" in msg and "Unix socket" in msg, msg
    # the refused SHUTDOWN did not stop pgscale, nor did PAUSE / KILL pause anything
    assert pg.wait_exit(1) is None, pg.stderr_text()[-2000:]
    assert not any(_int(r["paused"]) for r in pg.admin("SHOW DATABASES", user="webapp",
                                                       password="webapp-pw"))
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_zero_config_database_url_user_may_change_things_and_start_warns(pgscale):
    pg = pgscale()
    wait_for(lambda: "admin_users and stats_users are empty" in pg.stderr_text(), 5,
             what="the open-console warning")
    assert "allowed only to the user named in DATABASE_URL" in pg.stderr_text()
    c = console(pg, "app")             # DATABASE_URL's user
    run_console(c, "PAUSE app")
    run_console(c, "RESUME app")
    run_console(c, "RELOAD")
    run_console(c, "SHUTDOWN")
    assert pg.wait_exit(10) == 0, pg.stderr_text()[-2000:]


def test_zero_config_unix_socket_peer_of_pgscales_os_user_may_change_things(pgscale, tmp_path):
    import os
    import shutil
    import tempfile
    from helpers import free_port, port_accepts
    port = free_port()
    sockdir = tempfile.mkdtemp(prefix="pgs-", dir="/tmp")  # socket paths must be short
    try:
        os.chmod(sockdir, 0o755)
        cfg = zero_config_with_users(tmp_path, textwrap.dedent("""\
            listen:
              - 127.0.0.1:%d
              - unix:%s
            unix_socket_permissions: "0777"
            """ % (port, sockdir)))
        pg = pgscale(args=["--config", cfg], wait=False, PGSCALE_LISTEN=None)
        pg.port = port
        wait_for(lambda: port_accepts(port) or not pg.is_running(), 10, what="pgscale to listen")
        assert pg.is_running(), pg.stderr_text()[-2000:]
        # the same OS user over the Unix socket, whatever user name it logs
        # in as (ops proves its password; only DATABASE_URL's user would
        # need none on this socket)
        c = psycopg2.connect(host=sockdir, port=port, user="ops", dbname="pgscale",
                             password="ops-pw", connect_timeout=10)
        c.autocommit = True
        try:
            run_console(c, "PAUSE app")
            run_console(c, "RESUME app")
        finally:
            c.close()
        # the same user name over TCP: SHOW only
        tcp = console(pg, "ops", password="ops-pw")
        with pytest.raises(psycopg2.Error) as exc:
            run_console(tcp, "PAUSE app")
        assert exc.value.pgcode == "42501", str(exc.value)
        # another OS user over the Unix socket: SHOW only
        if os.geteuid() == 0:
            def as_postgres(sql):
                return subprocess.run(
                    ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--clear-groups",
                     "psql", "-X", "-w", "-At", "-v", "ON_ERROR_STOP=1", "-h", sockdir,
                     "-p", str(port), "-U", "ops", "-d", "pgscale", "-c", sql],
                    capture_output=True, text=True, timeout=30,
                    env=client_env({"PGPASSWORD": "ops-pw"}), cwd="/tmp",
                    stdin=subprocess.DEVNULL)
            r = as_postgres("SHOW POOLS")
            assert r.returncode == 0, r.stderr
            r = as_postgres("SHUTDOWN")
            assert r.returncode != 0 and "admin access needed" in r.stderr, (r.stdout, r.stderr)
        assert pg.wait_exit(1) is None, pg.stderr_text()[-2000:]
        assert port_accepts(port)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


# -- PAUSE / RESUME ----------------------------------------------------------------
@pytest.mark.deadline(90)
def test_pause_under_pgbench_stops_transactions_and_resume_lets_them_finish(
        pgscale, primary, bench_db):
    pg = pgscale(DB_POOL_SIZE=4, DB_MAX_OVERFLOW=0, PGSCALE_WORKERS=2)
    proc = start_pgbench(pg.port, ["-c", "8", "-j", "2", "-T", "6"], bench_db)
    try:
        wait_for(lambda: (lambda r: r and _int(r["sv_total"]) >= 2)(pg.pool(db=bench_db)), 10,
                 what="pgbench traffic through pgscale")
        time.sleep(1.0)
        t0 = time.monotonic()
        pg.admin("PAUSE " + bench_db)
        assert time.monotonic() - t0 < 5
        samples = []
        for _ in range(20):
            samples.append(busy_backends(primary, bench_db))
            time.sleep(0.05)
        assert max(samples) == 0, samples
        row = pg.pool(db=bench_db)
        assert _int(row["sv_active"]) == 0 and _int(row["cl_waiting"]) > 0, row
        xacts = _int(next(r for r in pg.admin("SHOW STATS")
                          if r["database"] == bench_db)["xact_count"])
        time.sleep(0.3)
        assert _int(next(r for r in pg.admin("SHOW STATS")
                         if r["database"] == bench_db)["xact_count"]) == xacts
        pg.admin("RESUME " + bench_db)
    finally:
        out = finish_pgbench(proc)
    assert _int(next(r for r in pg.admin("SHOW STATS")
                     if r["database"] == bench_db)["xact_count"]) > xacts, out


def test_pause_waits_for_the_running_transaction(pgscale):
    pg = pgscale(DB_POOL_SIZE=2)
    tx = pg.connect(autocommit=False)
    with tx.cursor() as cur:
        cur.execute("SELECT 1")
    done = threading.Event()

    def pause():
        pg.admin("PAUSE app")
        done.set()

    t = threading.Thread(target=pause)
    t.start()
    try:
        assert not done.wait(0.8), "PAUSE returned while a transaction was running"
        tx.commit()
        assert done.wait(5), "PAUSE did not return after the transaction ended"
    finally:
        tx.commit()
        t.join(10)
    # a new transaction waits until RESUME
    other = pg.connect()
    result = {}

    def query():
        with other.cursor() as cur:
            cur.execute("SELECT 42")
            result["row"] = cur.fetchone()

    q = threading.Thread(target=query)
    q.start()
    wait_for(lambda: _int(pg.pool()["cl_waiting"]) >= 1, 5,
             what="the query to be held back while the database is paused")
    assert "row" not in result, "a query ran while the database was paused"
    pg.admin("RESUME app")
    q.join(10)
    assert result.get("row") == (42,)


def test_pause_gives_up_after_shutdown_timeout_with_55006_and_stays_paused(pgscale):
    pg = pgscale(PGSCALE_POOL_MODE="session", PGSCALE_SHUTDOWN_TIMEOUT="1")
    holder = pg.connect()
    with holder.cursor() as cur:
        cur.execute("SELECT 1")
    t0 = time.monotonic()
    with pytest.raises(psycopg2.Error) as exc:
        pg.admin("PAUSE app")
    assert 0.9 <= time.monotonic() - t0 < 5
    assert exc.value.pgcode == "55006", exc.value.pgcode
    assert "still in use" in str(exc.value) and "stays paused" in str(exc.value)
    assert _int(next(r for r in pg.admin("SHOW DATABASES") if r["name"] == "app")["paused"]) == 1
    pg.admin("RESUME app")
    assert _int(next(r for r in pg.admin("SHOW DATABASES") if r["name"] == "app")["paused"]) == 0


def test_cancelled_pause_is_undone(pgscale):
    pg = pgscale()
    tx = pg.connect(autocommit=False)
    with tx.cursor() as cur:
        cur.execute("SELECT 1")
    c = console(pg)
    errors = []

    def pause():
        try:
            run_console(c, "PAUSE app")
        except psycopg2.Error as e:
            errors.append(e)

    t = threading.Thread(target=pause)
    t.start()
    time.sleep(0.4)
    c.cancel()
    t.join(5)
    tx.rollback()
    assert errors and errors[0].pgcode == "57014", errors
    assert _int(next(r for r in pg.admin("SHOW DATABASES") if r["name"] == "app")["paused"]) == 0
    run_console(c, "SHOW POOLS")   # the console connection is usable again


def test_resume_of_a_database_that_is_not_paused_is_an_error(pgscale):
    pg = pgscale()
    with pytest.raises(psycopg2.Error) as exc:
        pg.admin("RESUME app")
    assert exc.value.pgcode == "55000" and "not paused" in str(exc.value)
    with pytest.raises(psycopg2.Error) as exc:
        pg.admin("PAUSE pgscale")
    assert exc.value.pgcode == "55000"


def test_pause_then_more_statements_in_one_query(pgscale):
    pg = pgscale()
    cols, rows = pg.admin_columns("PAUSE app; SHOW DATABASES")
    assert cols == DATABASES_COLUMNS
    assert _int(next(r for r in rows if r["name"] == "app")["paused"]) == 1
    pg.admin("RESUME")   # without a name: everything


# -- RELOAD and SIGHUP ----------------------------------------------------------------
@pytest.mark.deadline(90)
def test_reload_under_pgbench_grows_and_shrinks_the_pool_without_errors(
        pgscale, primary, bench_db, tmp_path):
    path = write_config(tmp_path / "pgscale.yaml", "pool_size: 3\nmax_overflow: 0\n")
    pg = pgscale(args=["--config", path], PGSCALE_WORKERS=2)
    proc = start_pgbench(pg.port, ["-c", "10", "-j", "2", "-T", "8"], bench_db)
    try:
        wait_for(lambda: (lambda r: r and _int(r["sv_total"]) == 3)(pg.pool(db=bench_db)), 10,
                 what="3 server connections under pgbench")
        write_config(path, "pool_size: 8\nmax_overflow: 0\n")
        pg.admin("RELOAD")
        assert _int(pg.pool(db=bench_db)["max_total"]) == 8
        wait_for(lambda: _int(pg.pool(db=bench_db)["sv_total"]) >= 6, 10,
                 what="the pool to grow after RELOAD")
        time.sleep(1.0)
        write_config(path, "pool_size: 2\nmax_overflow: 0\n")
        pg.admin("RELOAD")
        wait_for(lambda: _int(pg.pool(db=bench_db)["sv_total"]) <= 2, 10,
                 what="the pool to shrink after RELOAD")
        wait_for(lambda: len(backend_pids(primary, bench_db)) <= 2, 10,
                 what="the primary to see at most 2 server connections")
        assert proc.poll() is None, "pgbench ended before the pool was shrunk"
        samples = []
        for _ in range(10):
            samples.append(len(backend_pids(primary, bench_db)))
            time.sleep(0.1)
        assert max(samples) <= 2, samples
    finally:
        finish_pgbench(proc)


def test_reload_refuses_a_bad_file_with_the_reason_and_keeps_the_old_config(pgscale, tmp_path):
    path = write_config(tmp_path / "pgscale.yaml", "pool_size: 3\nmax_overflow: 1\n")
    pg = pgscale(args=["--config", path])
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    write_config(path, "pool_size: 3\nmax_overflow: 1\npool_size_typo: 9\n")
    with pytest.raises(psycopg2.Error) as exc:
        pg.admin("RELOAD")
    assert exc.value.pgcode == "F0000", exc.value.pgcode
    msg = str(exc.value)
    assert "pgscale.yaml:3" in msg and "pool_size_typo" in msg and "unchanged" in msg, msg
    write_config(path, "pool_size: 0\nmax_overflow: 1\n")
    with pytest.raises(psycopg2.Error) as exc:
        pg.admin("RELOAD")
    assert "pool_size" in str(exc.value) and "out of range" in str(exc.value), str(exc.value)
    conf = {r["key"]: r["value"] for r in pg.admin("SHOW CONFIG")}
    assert conf["DB_POOL_SIZE"] == "3" and conf["DB_MAX_OVERFLOW"] == "1"
    assert _int(pg.pool()["max_total"]) == 4
    with conn.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
    assert "configuration refused" in pg.stderr_text()


def test_reload_reports_settings_that_need_a_restart(pgscale, tmp_path):
    path = write_config(tmp_path / "pgscale.yaml", "workers: 2\npool_size: 3\n")
    pg = pgscale(args=["--config", path])
    write_config(path, "workers: 3\npool_size: 4\n")
    c = console(pg)
    run_console(c, "RELOAD")
    notes = "".join(c.notices)
    assert "PGSCALE_WORKERS changed" in notes and "restart" in notes, c.notices
    conf = {r["key"]: r["value"] for r in pg.admin("SHOW CONFIG")}
    assert conf["PGSCALE_WORKERS"] == "2" and conf["DB_POOL_SIZE"] == "4", conf


def test_reload_applies_timeouts(pgscale, tmp_path):
    path = write_config(tmp_path / "pgscale.yaml", "client_idle_timeout: 0\n")
    pg = pgscale(args=["--config", path])
    c, msgs = raw_login(pg)
    assert pgwire.ready_status(msgs) == "I"
    write_config(path, "client_idle_timeout: 1\n")
    pg.admin("RELOAD")
    rest = c.read_until_close(timeout=5)
    errs = pgwire.errors(rest)
    assert errs and errs[0]["C"] == "57P05", rest
    c.close()


def test_reload_applies_pool_mode_to_clients_that_log_in_after_it(pgscale, tmp_path):
    path = write_config(tmp_path / "pgscale.yaml", "databases:\n  app: {pool_mode: transaction}\n")
    pg = pgscale(args=["--config", path])
    before = pg.connect(application_name="before")
    with before.cursor() as cur:
        cur.execute("SELECT 1")
    write_config(path, "databases:\n  app: {pool_mode: session}\n")
    pg.admin("RELOAD")
    assert pg.pool()["pool_mode"] == "session"
    after = pg.connect(application_name="after")
    for conn in (before, after):
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    clients = {r["application_name"]: r for r in pg.admin("SHOW CLIENTS")}
    assert clients["before"]["server_id"] is None, clients["before"]   # transaction mode
    assert clients["after"]["server_id"] is not None, clients["after"]  # keeps its server


@pytest.mark.deadline(30)
def test_sighup_reloads_the_config_file_and_refuses_a_bad_one(pgscale, tmp_path):
    path = write_config(tmp_path / "pgscale.yaml", "pool_size: 3\nmax_overflow: 0\n")
    pg = pgscale(args=["--config", path])
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    assert _int(pg.pool()["max_total"]) == 3
    write_config(path, "pool_size: 5\nmax_overflow: 0\n")
    pg.signal(signal.SIGHUP)
    wait_for(lambda: _int(pg.pool()["max_total"]) == 5, 5, what="SIGHUP to apply pool_size 5")
    conf = {r["key"]: r["value"] for r in pg.admin("SHOW CONFIG")}
    assert conf["DB_POOL_SIZE"] == "5"
    write_config(path, "pool_size: [5\n")
    pg.signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: reload refused" in pg.stderr_text(), 5, what="the refusal in the log")
    assert _int(pg.pool()["max_total"]) == 5
    with conn.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
    assert pg.is_running()


# -- KILL, WAIT_CLOSE, SHUTDOWN --------------------------------------------------------
def test_kill_closes_clients_and_servers_of_the_database_only(pgscale, primary):
    pg = pgscale(PGSCALE_WORKERS=2)
    idle, _ = raw_login(pg)
    idle.simple_query("SELECT 1")
    in_tx, _ = raw_login(pg)
    assert pgwire.ready_status(in_tx.simple_query("BEGIN; SELECT 1")) == "T"
    driver = pg.connect()
    with driver.cursor() as cur:
        cur.execute("SELECT 1")
    other = pg.connect(db="postgres")
    with other.cursor() as cur:
        cur.execute("SELECT 1")
    assert backend_pids(primary, "app")
    pg.admin("KILL app")
    for c in (idle, in_tx):
        errs = pgwire.errors(c.read_until_close(timeout=5))
        c.close()
        assert errs and errs[0]["C"] == "57P01" and "KILL app" in errs[0]["M"], errs
    with pytest.raises(psycopg2.OperationalError):
        with driver.cursor() as cur:
            cur.execute("SELECT 2")
    wait_for(lambda: not backend_pids(primary, "app"), 5, what="app's server connections to close")
    with other.cursor() as cur:   # another database is untouched
        cur.execute("SELECT 3")
        assert cur.fetchone() == (3,)
    # killed databases stay paused until RESUME, as in PgBouncer
    assert _int(next(r for r in pg.admin("SHOW DATABASES") if r["name"] == "app")["paused"]) == 1
    late = pg.connect()
    result = {}

    def query():
        with late.cursor() as cur:
            cur.execute("SELECT 4")
            result["row"] = cur.fetchone()

    t = threading.Thread(target=query)
    t.start()
    wait_for(lambda: _int(pg.pool()["cl_waiting"]) >= 1, 5,
             what="the query to be held back while the database stays paused")
    assert "row" not in result
    pg.admin("RESUME app")
    t.join(10)
    assert result.get("row") == (4,)


def test_wait_close_returns_once_the_old_servers_are_gone(pgscale, primary):
    pg = pgscale(DB_POOL_SIZE=4)
    busy = pg.connect(autocommit=False)
    spare = pg.connect(autocommit=False)
    with busy.cursor() as cur, spare.cursor() as cur2:
        cur.execute("SELECT pg_backend_pid()")
        (busy_pid,) = cur.fetchone()
        cur2.execute("SELECT pg_backend_pid()")
        (spare_pid,) = cur2.fetchone()
    spare.commit()   # its server goes back idle
    done = threading.Event()

    def wait_close():
        pg.admin("WAIT_CLOSE app")
        done.set()

    t = threading.Thread(target=wait_close)
    t.start()
    try:
        wait_for(lambda: spare_pid not in backend_pids(primary), 5,
                 what="the idle server to be closed at once")
        assert not done.wait(0.5), "WAIT_CLOSE returned while an old server was in use"
        busy.commit()
        assert done.wait(5), "WAIT_CLOSE did not return after the transaction ended"
    finally:
        busy.commit()
        t.join(10)
    assert busy_pid not in backend_pids(primary)
    with busy.cursor() as cur:   # a fresh server serves the same client
        cur.execute("SELECT pg_backend_pid()")
        assert cur.fetchone()[0] not in (busy_pid, spare_pid)
    busy.commit()


def test_shutdown_drains_and_exits_like_sigterm(pgscale):
    pg = pgscale()
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    c = console(pg)
    run_console(c, "SHUTDOWN")
    assert pg.wait_exit(10) == 0, pg.stderr_text()[-2000:]
    assert "SIGTERM" in pg.stderr_text()


def test_unknown_command_lists_every_command(pgscale):
    pg = pgscale()
    with pytest.raises(psycopg2.Error) as exc:
        pg.admin("SHOW NONSENSE")
    msg = str(exc.value)
    for cmd in ("SHOW DATABASES", "SHOW USERS", "SHOW LISTS", "RELOAD", "PAUSE", "RESUME",
                "KILL", "WAIT_CLOSE", "SHUTDOWN"):
        assert cmd in msg, (cmd, msg)
    with pytest.raises(psycopg2.Error) as exc:
        pg.admin("RELOAD now")
    assert exc.value.pgcode == "42601", (exc.value.pgcode, str(exc.value))


# -- overrides and client limits ----------------------------------------------------
def test_database_and_user_overrides_size_new_pools(pgscale, tmp_path):
    cfg = write_config(tmp_path / "pgscale.yaml", """\
        pool_size: 10
        databases:
          app: {pool_size: 2, max_overflow: 1, pool_mode: session, pool_timeout: 1}
          postgres: {pool_size: 7}
        users:
          app: {max_overflow: 0}
        """)
    pg = pgscale(args=["--config", cfg], DB_POOL_TIMEOUT=None)
    a = pg.connect()
    with a.cursor() as cur:
        cur.execute("SELECT 1")
    pools = {r["database"]: r for r in pg.admin("SHOW POOLS")}
    # users.app.max_overflow (0) wins over databases.app.max_overflow (1)
    assert (_int(pools["app"]["max_total"]), pools["app"]["pool_mode"]) == (2, "session")
    b = pg.connect()
    with b.cursor() as cur:
        cur.execute("SELECT 1")
    # both servers are held (session mode): a third client waits pool_timeout (1 s)
    t0 = time.monotonic()
    with pytest.raises(psycopg2.Error) as exc:
        c = pg.connect()
        with c.cursor() as cur:
            cur.execute("SELECT 1")
    assert 0.8 < time.monotonic() - t0 < 5
    assert isinstance(exc.value, psycopg2.OperationalError)
    assert "pool for db=app user=app is full (2/2" in pg.stderr_text()
    p = pg.connect(db="postgres")
    with p.cursor() as cur:
        cur.execute("SELECT 1")
    pools = {r["database"]: r for r in pg.admin("SHOW POOLS")}
    assert _int(pools["postgres"]["max_total"]) == 7, pools["postgres"]


def test_max_db_connections_refuses_extra_clients_with_53300(pgscale, tmp_path):
    cfg = write_config(tmp_path / "pgscale.yaml", "databases:\n  app: {max_db_connections: 2}\n")
    pg = pgscale(args=["--config", cfg])
    first, second = pg.connect(), pg.connect()
    err = login_error(pg)
    assert err["C"] == "53300", err
    assert "max_db_connections" in err["M"] and "databases.app" in err.get("H", ""), err
    other = pg.connect(db="postgres")   # the limit is per database
    with other.cursor() as cur:
        cur.execute("SELECT 1")
    first.close()
    wait_for(lambda: _int(next(r for r in pg.admin("SHOW DATABASES")
                               if r["name"] == "app")["current_client_connections"]) == 1,
             5, what="the closed client to leave")
    third = pg.connect()
    with third.cursor() as cur:
        cur.execute("SELECT 1")
    second.close()


def test_max_user_connections_refuses_extra_clients_and_reload_raises_it(pgscale, tmp_path):
    path = write_config(tmp_path / "pgscale.yaml", "users:\n  app: {max_user_connections: 1}\n")
    pg = pgscale(args=["--config", path])
    pg.connect()
    err = login_error(pg, db="postgres")   # counted across databases
    assert err["C"] == "53300" and "max_user_connections" in err["M"], err
    assert "users.app.max_user_connections" in err.get("H", ""), err
    write_config(path, "users:\n  app: {max_user_connections: 2}\n")
    pg.admin("RELOAD")
    second = pg.connect(db="postgres")
    with second.cursor() as cur:
        cur.execute("SELECT 1")
    assert login_error(pg)["C"] == "53300"
