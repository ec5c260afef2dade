"""Server connections over a Unix socket.

DATABASE_URL (and every URL pgscale connects with) may name PostgreSQL's
socket directory instead of a TCP host, as libpq reads it: `?host=/dir`,
a percent-encoded directory in the authority, or no host at all (libpq's
default directory).  The test cluster listens on a socket directory of its
own; its pg_hba.conf has a `local` line per method (conftest.py): scram for
app, md5 for md5user, password for sockpw, trust for trustuser, and peer
for peeruser mapped from the OS user that runs the tests and pgscale.

Where it lives is checked on PostgreSQL itself: a backend reached over a
Unix socket has client_port -1 in pg_stat_activity."""
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import psycopg2
import pytest

from conftest import PGSCALE_BIN
from helpers import APP_DB, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER, pgbench, wait_for

SOCKPW_PASSWORD = "sock-pw"


def sock_url(primary, user=APP_USER, password=APP_PASSWORD, db=APP_DB, host=None, extra=""):
    """DATABASE_URL through the primary's socket directory (?host=)."""
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    host = str(primary.sockdir) if host is None else host
    return "postgresql://%s@/%s?host=%s&port=%d%s" % (auth, db, quote(host, safe="/"),
                                                       primary.port, extra)


def backends_ports(primary, user):
    """client_port of every backend of user other than this observer."""
    rows = primary.execute(
        "SELECT client_port FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND usename = %s AND pid <> pg_backend_pid()", (user,))
    return [r[0] for r in rows]


@pytest.fixture(scope="module")
def roles(primary):
    for role, pw in (("peeruser", None), ("trustuser", None), ("sockpw", SOCKPW_PASSWORD)):
        primary.execute("DROP ROLE IF EXISTS %s" % role)
        primary.execute("CREATE ROLE %s LOGIN%s" % (role, " PASSWORD '%s'" % pw if pw else ""))
    yield
    for role in ("peeruser", "trustuser", "sockpw"):
        primary.execute("DROP ROLE IF EXISTS %s" % role)


def round_trip(pg, user=APP_USER, password=APP_PASSWORD):
    c = pg.connect(user=user, password=password) if password else pg.connect(user=user)
    with c.cursor() as cur:
        cur.execute("SELECT current_user, inet_server_addr() IS NULL, "
                    "(SELECT client_port FROM pg_stat_activity WHERE pid = pg_backend_pid())")
        row = cur.fetchone()
    c.close()
    return row


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_database_url_with_socket_directory_works_in_both_pool_modes(pgscale, primary, mode):
    pg = pgscale(DATABASE_URL=sock_url(primary), PGSCALE_POOL_MODE=mode, DB_POOL_SIZE=3,
                 DB_MAX_OVERFLOW=0)
    c = pg.connect()
    with c.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS unix_rows_%s" % mode)
        cur.execute("CREATE TABLE unix_rows_%s (id int PRIMARY KEY, v text)" % mode)
        cur.execute("INSERT INTO unix_rows_%s SELECT g, 'row ' || g FROM generate_series(1, 200) g"
                    % mode)
        cur.execute("SELECT count(*), max(v) FROM unix_rows_%s" % mode)
        assert cur.fetchone() == (200, "row 99")
        # the backend serving it was reached over the socket: no server
        # address, client_port -1
        cur.execute("SELECT inet_server_addr() IS NULL, client_port FROM pg_stat_activity "
                    "WHERE pid = pg_backend_pid()")
        assert cur.fetchone() == (True, -1)
    # several clients at once over a pool of 3
    errors = []

    def work(i):
        try:
            cc = psycopg2.connect(pg.dsn())
            cc.autocommit = True
            with cc.cursor() as cur:
                for j in range(30):
                    cur.execute("SELECT %s::int + %s", (i, j))
                    assert cur.fetchone() == (i + j,)
            cc.close()
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    # on PostgreSQL: every backend of app that pgscale opened is a socket one
    ports = backends_ports(primary, APP_USER)
    assert ports and all(p == -1 for p in ports), ports
    with c.cursor() as cur:
        cur.execute("DROP TABLE unix_rows_%s" % mode)
    c.close()
    # SHOW SERVERS and SHOW DATABASES name the directory
    servers = pg.admin("SHOW SERVERS")
    assert servers and all(r["addr"] == str(primary.sockdir) for r in servers), servers


def test_socket_directory_percent_encoded_in_the_url_authority(pgscale, primary):
    url = "postgresql://%s:%s@%s:%d/%s" % (APP_USER, APP_PASSWORD,
                                           quote(str(primary.sockdir), safe=""), primary.port,
                                           APP_DB)
    pg = pgscale(DATABASE_URL=url)
    assert round_trip(pg) == ("app", True, -1)


@pytest.mark.parametrize("method,user,password", [
    ("scram-sha-256", APP_USER, APP_PASSWORD),
    ("md5", MD5_USER, MD5_PASSWORD),
    ("password", "sockpw", SOCKPW_PASSWORD),
    ("trust", "trustuser", None),
    ("peer", "peeruser", None),
])
def test_each_server_authentication_method_over_the_socket(pgscale, primary, roles, method, user,
                                                           password):
    # "password" sends it in clear text: allowed over a socket without
    # server_allow_cleartext_password (only the kernel sees it), as over
    # TLS.  peer: PostgreSQL asks the kernel who pgscale runs as, and
    # pg_ident maps that OS user to peeruser.
    pg = pgscale(DATABASE_URL=sock_url(primary, user=user, password=password))
    assert round_trip(pg, user=user, password=password) == (user, True, -1)
    assert "clear text" not in pg.stderr_text()


def test_sslmode_does_not_apply_over_the_socket(pgscale, primary):
    # The test server has ssl off: over TCP sslmode=require fails; over the
    # socket it is ignored, as libpq ignores it.
    pg = pgscale(DATABASE_URL=sock_url(primary, extra="&sslmode=require"))
    assert round_trip(pg) == ("app", True, -1)
    assert "does not apply to the Unix socket" in pg.stderr_text()


def test_cancel_reaches_a_query_on_a_socket_server(pgscale, primary):
    pg = pgscale(DATABASE_URL=sock_url(primary))
    c = pg.connect()
    timer = threading.Timer(0.5, c.cancel)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(psycopg2.errors.QueryCanceled):
        with c.cursor() as cur:
            cur.execute("SELECT pg_sleep(30)")
    timer.join()
    assert time.monotonic() - t0 < 10
    with c.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


@pytest.mark.deadline(90)
def test_servers_on_sockets_move_between_workers(pgscale, primary):
    # Two workers, a pool of 2: servers are handed from one worker to the
    # other (a dup()ed descriptor reopened as a pipe there).
    pg = pgscale(DATABASE_URL=sock_url(primary), PGSCALE_WORKERS=2, DB_POOL_SIZE=2,
                 DB_MAX_OVERFLOW=0)
    errors = []

    def run():
        try:
            c = psycopg2.connect(pg.dsn())
            c.autocommit = True
            with c.cursor() as cur:
                for i in range(60):
                    cur.execute("SELECT %s::int, client_port FROM pg_stat_activity "
                                "WHERE pid = pg_backend_pid()", (i,))
                    assert cur.fetchone() == (i, -1)
            c.close()
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert int(pg.pool()["sv_total"]) <= 2


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.deadline(90)
def test_pgbench_through_a_socket_server(pgscale, primary, mode):
    r = pgbench(primary.port, ["-i", "-q", "-s", "1"], user=APP_USER, password=APP_PASSWORD)
    assert r.returncode == 0, r.stderr
    # session mode holds a server per client: a pool as large as pgbench's
    pg = pgscale(DATABASE_URL=sock_url(primary), PGSCALE_POOL_MODE=mode,
                 DB_POOL_SIZE=4 if mode == "transaction" else 8, DB_MAX_OVERFLOW=0)
    for proto in ("simple", "extended", "prepared"):
        r = pgbench(pg.port, ["-S", "-c", "8", "-j", "2", "-T", "2", "-M", proto])
        assert r.returncode == 0, r.stdout + r.stderr
        assert "number of failed transactions: 0" in r.stdout, r.stdout
        n = int(next(l for l in r.stdout.splitlines()
                     if l.startswith("number of transactions actually processed")).split()[-1])
        assert n > 100, r.stdout
    r = pgbench(pg.port, ["-c", "4", "-T", "2"])  # the TPC-B-like writes too
    assert r.returncode == 0 and "number of failed transactions: 0" in r.stdout, r.stdout + r.stderr
    ports = backends_ports(primary, APP_USER)
    assert ports and all(p == -1 for p in ports), ports


@pytest.mark.parametrize("lookup_user", ["postgres", "sockpw"])
def test_auth_query_looks_up_over_the_socket(pgscale, primary, roles, tmp_path, lookup_user):
    # postgres: trust over the socket.  sockpw: PostgreSQL asks for its
    # password in clear text ("password" in pg_hba.conf), which the lookup
    # sends over a socket as the pools do (made superuser here to read
    # pg_shadow).
    primary.execute("DROP ROLE IF EXISTS aq_sock")
    primary.execute("CREATE ROLE aq_sock LOGIN PASSWORD 'aq-sock-pw'")
    if lookup_user == "sockpw":
        primary.execute("ALTER ROLE sockpw SUPERUSER")
        url = sock_url(primary, user="sockpw", password=SOCKPW_PASSWORD)
    else:
        url = sock_url(primary)
    try:
        cfg = tmp_path / "pgscale.yaml"
        cfg.write_text("auth:\n  type: scram-sha-256\n  user: %s\n"
                       "  query: SELECT usename, passwd FROM pg_catalog.pg_shadow "
                       "WHERE usename = $1\n" % lookup_user)
        pg = pgscale(args=["--config", str(cfg)], DATABASE_URL=url)
        # aq_sock is known only to PostgreSQL: the lookup (as postgres,
        # trusted over the socket only) and the pool both use the socket
        assert round_trip(pg, user="aq_sock", password="aq-sock-pw") == ("aq_sock", True, -1)
        rows = primary.execute("SELECT count(*) FROM pg_stat_activity "
                               "WHERE application_name = 'pgscale-auth-query' "
                               "AND client_port = -1")
        assert rows[0][0] == 1, rows
        with pytest.raises(psycopg2.OperationalError) as e:
            psycopg2.connect(pg.dsn(user="aq_sock", password="wrong"))
        assert "password authentication failed" in str(e.value)
    finally:
        primary.execute("DROP ROLE IF EXISTS aq_sock")
        primary.execute("ALTER ROLE sockpw NOSUPERUSER")


# --- errors --------------------------------------------------------------

def login_error(pg):
    with pytest.raises(psycopg2.OperationalError) as e:
        psycopg2.connect(pg.dsn())
    return str(e.value)


def test_missing_socket_directory_is_named(pgscale, primary, tmp_path):
    missing = tmp_path / "no-such-dir"
    pg = pgscale(DATABASE_URL=sock_url(primary, host=str(missing)))
    assert "socket directory %s does not exist" % missing in pg.stderr_text()
    msg = login_error(pg)
    assert "the directory %s does not exist" % missing in msg, msg
    assert "unix_socket_directories" in msg, msg


def test_directory_without_the_socket_file_says_what_to_check(pgscale, primary, tmp_path):
    pg = pgscale(DATABASE_URL=sock_url(primary, host=str(tmp_path)))
    msg = login_error(pg)
    path = "%s/.s.PGSQL.%d" % (tmp_path, primary.port)
    assert 'socket "%s"' % path in msg and "no such file" in msg, msg
    assert "port = %d" % primary.port in msg, msg


def test_stale_socket_file_is_connection_refused(pgscale, primary, tmp_path):
    # a socket file nobody accepts on: what a crashed server leaves behind
    path = "%s/.s.PGSQL.%d" % (tmp_path, primary.port)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    try:
        pg = pgscale(DATABASE_URL=sock_url(primary, host=str(tmp_path)))
        msg = login_error(pg)
        assert "connection refused" in msg and "no server accepts" in msg, msg
    finally:
        s.close()


def test_no_host_means_libpqs_default_socket_directory(pgscale, primary):
    # postgresql:///app means /var/run/postgresql/.s.PGSQL.<port> to
    # libpq; pgscale reads it the same way (no server listens there on
    # this port, so the login fails naming that file)
    url = "postgresql://%s:%s@/%s?port=%d" % (APP_USER, APP_PASSWORD, APP_DB, primary.port)
    pg = pgscale(DATABASE_URL=url)
    msg = login_error(pg)
    assert '"/var/run/postgresql/.s.PGSQL.%d"' % primary.port in msg, msg


def _nobody_can_run_pgscale():
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return None
    if os.geteuid() != 0:
        return None
    r = subprocess.run(["setpriv", "--reuid", str(pw.pw_uid), "--regid", str(pw.pw_gid),
                        "--clear-groups", "--", str(PGSCALE_BIN), "--version"],
                       capture_output=True, timeout=10)
    return pw if r.returncode == 0 else None


def test_permission_denied_on_the_directory_names_the_os_user(pgscale, primary):
    pw = _nobody_can_run_pgscale()
    if pw is None:
        pytest.skip("needs root and a pgscale binary that user nobody can run")
    # A directory only root may enter, holding a live socket of the primary
    # (a hard link to it): nobody cannot reach it.
    d = Path(tempfile.mkdtemp(prefix="pgs-sock-"))
    try:
        os.chmod(d, 0o700)
        os.link(primary.sockdir / (".s.PGSQL.%d" % primary.port), d / (".s.PGSQL.%d" % primary.port))
        pg = pgscale(DATABASE_URL=sock_url(primary, host=str(d)),
                     prefix=["setpriv", "--reuid", str(pw.pw_uid), "--regid", str(pw.pw_gid),
                             "--clear-groups"])
        msg = login_error(pg)
        assert "permission denied" in msg and 'OS user "nobody"' in msg, msg
        assert "unix_socket_group" in msg, msg
        # the same directory opened up: the same pgscale gets in
        os.chmod(d, 0o755)
        wait_for(lambda: _logs_in(pg), 15, what="login once the directory is readable")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _logs_in(pg):
    try:
        psycopg2.connect(pg.dsn()).close()
        return True
    except psycopg2.OperationalError:
        return False


@pytest.mark.parametrize("host,words", [
    ("/" + "d" * 110, ["is 125 bytes long", "at most 107"]),
    ("@abstract", ["abstract-namespace", "not support"]),
])
def test_bad_socket_host_is_a_configuration_error(tmp_path, primary, host, words):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGSCALE_", "DB_", "PG"))}
    env["DATABASE_URL"] = "postgresql://app:secret@/app?host=%s" % quote(host, safe="/@")
    r = subprocess.run([str(PGSCALE_BIN), "--check-config"], env=env, capture_output=True,
                       text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert r.returncode != 0, r.stdout
    for w in words:
        assert w in r.stderr, r.stderr
    assert "DATABASE_URL" in r.stderr, r.stderr
    # and in the config file, with the line
    cfg = tmp_path / "pgscale.yaml"
    cfg.write_text("nodes:\n  primary: postgresql://app@/app\n  replicas:\n"
                   "    - postgresql://app@/app?host=%s\n" % quote(host, safe="/@"))
    env.pop("DATABASE_URL")
    r = subprocess.run([str(PGSCALE_BIN), "--config", str(cfg), "--check-config"], env=env,
                       capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert r.returncode != 0, r.stdout
    assert "%s:4" % cfg in r.stderr, r.stderr
    assert words[0] in r.stderr, r.stderr
