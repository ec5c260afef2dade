"""Zero-config must not mean "trust everyone".  Started with DATABASE_URL
only, pgscale asks clients for DATABASE_URL's password (SCRAM-SHA-256; md5
too), refuses every other user name with the same 28P01 as a wrong
password, and so keeps unauthenticated clients away from the admin
console's SHUTDOWN.  Each test performs the attack against a real pgscale
and checks the outcome on the wire (SQLSTATE) and on PostgreSQL.

The rules tested here are described in docs/configuration.md, "Security
model"."""
import os
import shutil
import subprocess
import tempfile
import textwrap

import psycopg2
import pytest

import pgwire
from helpers import (APP_DB, APP_PASSWORD, APP_USER, LOCALHOST, arun, client_env, free_port,
                     port_accepts, wait_for)

FAILED = 'password authentication failed for user "%s"'


def refusal(pg, user, password, db=APP_DB):
    """The one FATAL a login gets from pgscale (raw protocol: psycopg2 hides
    the SQLSTATE), after checking that no ReadyForQuery came."""
    with pgwire.RawConn(LOCALHOST, pg.port) as c:
        msgs = c.login(user, db, password)
    errs = pgwire.errors(msgs)
    assert pgwire.ready_status(msgs) is None and len(errs) == 1, msgs
    assert errs[0]["S"] == "FATAL", errs[0]
    return errs[0]


def logged_in_as(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        return cur.fetchone()[0]


def start_with_url(pgscale, primary, url, **env):
    return pgscale(DATABASE_URL=url, **env)


def url_without_password(primary, user="postgres", db="postgres"):
    """A DATABASE_URL with no password: PostgreSQL trusts `postgres` on
    127.0.0.1 (see conftest's pg_hba.conf)."""
    return "postgresql://%s@%s:%d/%s" % (user, primary.host, primary.port, db)


# --------------------------------------------------------------------------
# the default: DATABASE_URL's password
# --------------------------------------------------------------------------
def test_application_url_pointed_at_pgscale_works_with_psycopg2_and_asyncpg(pgscale, primary):
    pg = pgscale()
    # the application's own URL, only host and port changed
    app_url = primary.url().replace("%s:%d" % (primary.host, primary.port),
                                    "%s:%d" % (pg.host, pg.port))
    assert APP_PASSWORD in app_url
    conn = psycopg2.connect(app_url, connect_timeout=10)
    try:
        assert logged_in_as(conn) == APP_USER
    finally:
        conn.close()

    async def with_asyncpg():
        import asyncpg
        c = await asyncpg.connect(app_url, timeout=10, command_timeout=10)
        try:
            return await c.fetchval("SELECT current_user")
        finally:
            await c.close()
    assert arun(with_asyncpg()) == APP_USER


def test_wrong_password_is_refused_with_28P01(pgscale):
    pg = pgscale()
    err = refusal(pg, APP_USER, "not-the-password")
    assert err["C"] == "28P01" and err["M"] == FAILED % APP_USER, err
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(pg.dsn(password="not-the-password")).close()
    assert "authentication of user=app db=app failed" in pg.stderr_text()


def test_no_password_is_refused_with_28P01(pgscale):
    pg = pgscale()
    # an empty password, through the whole SCRAM exchange
    err = refusal(pg, APP_USER, "")
    assert err["C"] == "28P01" and err["M"] == FAILED % APP_USER, err
    # a client that has no password to give: pgscale asked for one (SASL),
    # and nothing but that request came before the client gave up
    with pgwire.RawConn(LOCALHOST, pg.port) as c:
        c.send(pgwire.startup_packet(APP_USER, APP_DB))
        mtype, payload = c.recv_msg()
        assert mtype == b"R" and payload[:4] == b"\0\0\0\x0a", (mtype, payload)  # SASL
        assert b"SCRAM-SHA-256" in payload
        c.send(pgwire.terminate())
    # libpq without a password refuses to answer the request
    with pytest.raises(psycopg2.OperationalError) as exc:
        psycopg2.connect("host=%s port=%d user=%s dbname=%s connect_timeout=10"
                         % (LOCALHOST, pg.port, APP_USER, APP_DB)).close()
    assert "no password supplied" in str(exc.value), str(exc.value)
    assert not [b for b in pg.stderr_text().splitlines() if "logged in without" in b]


@pytest.mark.parametrize("user", ["postgres", "md5user", "nosuchuser"])
def test_other_user_names_are_refused_like_a_wrong_password(pgscale, primary, user):
    """postgres is a superuser that PostgreSQL trusts from 127.0.0.1, md5user
    exists with its own password, nosuchuser does not exist: pgscale knows
    none of them and answers each exactly as a wrong password for app."""
    pg = pgscale()
    for password in ("", APP_PASSWORD, "guess"):
        err = refusal(pg, user, password)
        wrong = refusal(pg, APP_USER, password + "x")
        assert err["C"] == wrong["C"] == "28P01", (err, wrong)
        assert err["M"] == FAILED % user and wrong["M"] == FAILED % APP_USER, (err, wrong)
        assert set(err) == set(wrong), (err, wrong)
    # the exchange is the same too: SASL offered, a salt of the same length
    # and the same iteration count as the real user's
    def server_first(u):
        with pgwire.RawConn(LOCALHOST, pg.port) as c:
            c.send(pgwire.startup_packet(u, APP_DB))
            mtype, payload = c.recv_msg()
            assert mtype == b"R" and payload[:4] == b"\0\0\0\x0a", (u, mtype, payload)
            first = b"n,,n=,r=abcdefghijklmnopqrstuvwx"
            c.send(pgwire.message(b"p", b"SCRAM-SHA-256\0" + len(first).to_bytes(4, "big") +
                                  first))
            mtype, payload = c.recv_msg()
            assert mtype == b"R" and payload[:4] == b"\0\0\0\x0b", (u, mtype, payload)
            attrs = dict(kv.split("=", 1) for kv in payload[4:].decode().split(","))
            return len(attrs["s"]), attrs["i"]
    assert server_first(user) == server_first(APP_USER)
    # and PostgreSQL never saw a session of that user through pgscale
    assert not [b for b in primary.backends(users=(user,))
                if b["application_name"] != "it-observer"]


def test_unauthenticated_client_cannot_shutdown_or_pause(pgscale):
    pg = pgscale()
    for user, password in ((APP_USER, ""), (APP_USER, "wrong"), ("postgres", ""),
                           ("admin", "admin")):
        err = refusal(pg, user, password, db="pgscale")
        assert err["C"] == "28P01", (user, err)
        # had the login passed, these would run: they must not
        with pgwire.RawConn(LOCALHOST, pg.port) as c:
            c.send(pgwire.startup_packet(user, "pgscale"))
            c.send(pgwire.query("PAUSE app"))
            c.send(pgwire.query("SHUTDOWN"))
            msgs = []
            try:
                while (m := c.recv_msg(timeout=2)) is not None:
                    msgs.append(m)
            except pgwire.ProtocolTimeout:
                pass  # still waiting for a SASL response: nothing ran
        assert msgs and all(m[0] in (b"R", b"E") for m in msgs), msgs
    assert pg.wait_exit(0.5) is None, "pgscale stopped: " + pg.stderr_text()[-2000:]
    # not paused either: a query runs at once
    conn = pg.connect()
    assert logged_in_as(conn) == APP_USER
    # DATABASE_URL's user, with its password, may still run them
    pg.admin("PAUSE app")
    pg.admin("RESUME app")


@pytest.mark.parametrize("method", ["scram-sha-256", "md5"])
def test_explicit_password_methods_check_database_url_password(pgscale, method):
    """DATABASE_URL's password is a plaintext secret: md5 works as SCRAM does."""
    pg = pgscale(PGSCALE_AUTH_TYPE=method)
    assert logged_in_as(pg.connect()) == APP_USER
    err = refusal(pg, APP_USER, "wrong")
    assert err["C"] == "28P01", err
    err = refusal(pg, "postgres", "")
    assert err["C"] == "28P01", err


def test_users_file_entry_outranks_database_url_password(pgscale, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text('"app" "file-pw"\n"alice" "alice-pw"\n')
    cfg = tmp_path / "pgscale.yaml"
    cfg.write_text("auth:\n  file: %s\n" % users)
    pg = pgscale(args=["--config", str(cfg)])
    assert logged_in_as(pg.connect(password="file-pw")) == APP_USER
    err = refusal(pg, APP_USER, APP_PASSWORD)
    assert err["C"] == "28P01", err
    err = refusal(pg, "postgres", "")
    assert err["C"] == "28P01", err


# --------------------------------------------------------------------------
# DATABASE_URL without a password
# --------------------------------------------------------------------------
def test_url_without_password_trusts_its_user_only_and_warns(pgscale, primary):
    pg = start_with_url(pgscale, primary, url_without_password(primary))
    conn = psycopg2.connect("host=%s port=%d user=postgres dbname=postgres connect_timeout=10"
                            % (LOCALHOST, pg.port))
    try:
        assert logged_in_as(conn) == "postgres"
    finally:
        conn.close()
    log = pg.stderr_text()
    warn = [line for line in log.splitlines() if "DATABASE_URL has no password" in line]
    assert warn and 'user "postgres"' in warn[0] and "users file" in warn[0] and \
        "put the password in DATABASE_URL" in warn[0], log[-3000:]
    # anyone else is refused, even with a password PostgreSQL would take
    err = refusal(pg, APP_USER, APP_PASSWORD, db="postgres")
    assert err["C"] == "28P01" and err["M"] == FAILED % APP_USER, err
    err = refusal(pg, "md5user", "", db="postgres")
    assert err["C"] == "28P01", err


# --------------------------------------------------------------------------
# explicit trust
# --------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["environment", "file"])
def test_explicit_trust_lets_everyone_in_and_warns(pgscale, primary, tmp_path, where):
    if where == "environment":
        pg = pgscale(PGSCALE_AUTH_TYPE="trust")
    else:
        cfg = tmp_path / "pgscale.yaml"
        cfg.write_text("auth:\n  type: trust\n")
        pg = pgscale(args=["--config", str(cfg)])
    for user in (APP_USER, "postgres"):
        conn = psycopg2.connect("host=%s port=%d user=%s dbname=%s connect_timeout=10"
                                % (LOCALHOST, pg.port, user, APP_DB))
        try:
            assert logged_in_as(conn) == user
        finally:
            conn.close()
    log = pg.stderr_text()
    assert [line for line in log.splitlines()
            if "auth.type is trust" in line and "without a password" in line], log[-3000:]


# --------------------------------------------------------------------------
# Unix sockets: the OS user pgscale runs as, and everyone else
# --------------------------------------------------------------------------
@pytest.fixture
def socket_pgscale(pgscale, tmp_path):
    sockdir = tempfile.mkdtemp(prefix="pgs-", dir="/tmp")  # socket paths must be short
    # reachable by another OS user (directory and socket file): this test
    # is about authentication, not about the socket's file permissions
    os.chmod(sockdir, 0o755)
    port = free_port()
    cfg = tmp_path / "pgscale.yaml"
    cfg.write_text(textwrap.dedent("""\
        listen:
          - 127.0.0.1:%d
          - unix:%s
        unix_socket_permissions: "0777"
        """ % (port, sockdir)))
    pg = pgscale(args=["--config", str(cfg)], wait=False, PGSCALE_LISTEN=None)
    pg.port = port
    wait_for(lambda: port_accepts(port) or not pg.is_running(), 10, what="pgscale to listen")
    assert pg.is_running(), pg.stderr_text()[-2000:]
    try:
        yield pg, sockdir
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_same_os_user_on_unix_socket_logs_in_as_url_user_without_password(socket_pgscale):
    pg, sockdir = socket_pgscale
    c = psycopg2.connect(host=sockdir, port=pg.port, user=APP_USER, dbname=APP_DB,
                         connect_timeout=10)
    try:
        assert logged_in_as(c) == APP_USER
    finally:
        c.close()
    assert "logged in without a password (same OS user as pgscale" in pg.stderr_text()
    # only as DATABASE_URL's user: another name is not vouched for by the uid
    with pytest.raises(psycopg2.OperationalError) as exc:
        psycopg2.connect(host=sockdir, port=pg.port, user="postgres", dbname=APP_DB,
                         connect_timeout=10).close()
    assert "no password supplied" in str(exc.value), str(exc.value)
    # over TCP the same OS user needs the password
    err = refusal(pg, APP_USER, "")
    assert err["C"] == "28P01", err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another OS user")
def test_other_os_user_on_unix_socket_must_authenticate(socket_pgscale):
    pg, sockdir = socket_pgscale

    def as_postgres(sql, password=None, db=APP_DB):
        env = client_env()
        env.pop("PGPASSWORD", None)
        if password is not None:
            env["PGPASSWORD"] = password
        return subprocess.run(
            ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--clear-groups",
             "psql", "-X", "-w", "-At", "-v", "ON_ERROR_STOP=1", "-h", sockdir,
             "-p", str(pg.port), "-U", APP_USER, "-d", db, "-c", sql],
            capture_output=True, text=True, timeout=30, env=env, cwd="/tmp",
            stdin=subprocess.DEVNULL)
    r = as_postgres("SELECT current_user")
    assert r.returncode != 0 and "no password supplied" in r.stderr, (r.stdout, r.stderr)
    r = as_postgres("SELECT current_user", password="wrong")
    assert r.returncode != 0 and FAILED % APP_USER in r.stderr, (r.stdout, r.stderr)
    r = as_postgres("SHUTDOWN", db="pgscale")
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert pg.wait_exit(0.5) is None, pg.stderr_text()[-2000:]
    r = as_postgres("SELECT current_user", password=APP_PASSWORD)
    assert r.returncode == 0 and r.stdout.strip() == APP_USER, (r.stdout, r.stderr)
