"""Client authentication (auth: in the config file): scram-sha-256 and md5
against a users file — plaintext passwords and secrets PostgreSQL itself
produced — the same 28P01 for an unknown user as for a wrong password, and
auth.hba rules.  Real clients: psycopg2 (libpq), asyncpg, psql."""
import hashlib

import psycopg2
import pytest

import pgwire
from helpers import APP_PASSWORD, LOCALHOST, MD5_PASSWORD, arun, psql

CLIENT_PW = "client-pw"   # what clients give pgscale; the server login uses DATABASE_URL's


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def start(pgscale, tmp_path, auth_yaml, users):
    uf = write(tmp_path, "users.txt", users)
    cfg = write(tmp_path, "pgscale.yaml", "auth:\n  file: %s\n%s" % (uf, auth_yaml))
    return pgscale(args=["--config", cfg])


def login(pg, user="app", password=CLIENT_PW, db="app"):
    conn = psycopg2.connect(pg.dsn(user, db, password=password))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT current_user, 1 + 1")
        row = cur.fetchone()
    conn.close()
    return row


def refused(pg, user, password, db="app", sqlstate="28P01"):
    """The refusal's message, after checking that it is one FATAL with
    `sqlstate` on the wire (28P01 for a wrong password or unknown user, 28000
    for an hba refusal, as PostgreSQL sends them) and an OperationalError in
    libpq."""
    with pgwire.RawConn(LOCALHOST, pg.port) as c:
        msgs = c.login(user, db, password)
    errs = pgwire.errors(msgs)
    assert len(errs) == 1 and pgwire.ready_status(msgs) is None, msgs
    assert errs[0]["S"] == "FATAL" and errs[0]["C"] == sqlstate, errs[0]
    with pytest.raises(psycopg2.OperationalError) as exc:
        psycopg2.connect(pg.dsn(user, db, password=password)).close()
    assert errs[0]["M"] in str(exc.value), (errs[0], str(exc.value))
    return str(exc.value)


@pytest.mark.parametrize("method", ["scram-sha-256", "md5"])
def test_plaintext_users_file_password_methods(pgscale, tmp_path, method):
    pg = start(pgscale, tmp_path, "  type: %s\n" % method,
               '"app" "%s"\n"other" "x"\n' % CLIENT_PW)
    assert login(pg) == ("app", 2)
    msg = refused(pg, "app", "wrong")
    assert 'password authentication failed for user "app"' in msg, msg
    # an unknown user gets exactly the same answer
    msg2 = refused(pg, "nosuchuser", "wrong")
    assert 'password authentication failed for user "nosuchuser"' in msg2, msg2


def test_scram_secret_made_by_postgresql_verifies_its_password(pgscale, primary, tmp_path):
    (secret,) = primary.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")[0]
    assert secret.startswith("SCRAM-SHA-256$")
    pg = start(pgscale, tmp_path, "  type: scram-sha-256\n", '"app" "%s"\n' % secret)
    assert login(pg, password=APP_PASSWORD) == ("app", 2)
    assert "password authentication failed" in refused(pg, "app", "nope")


def test_md5_secret_in_postgresql_format_verifies_its_password(pgscale, primary, tmp_path):
    # pg_authid's md5 format: "md5" + md5(password + user name)
    (secret,) = primary.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'md5user'")[0]
    assert secret == "md5" + hashlib.md5((MD5_PASSWORD + "md5user").encode()).hexdigest()
    mine = "md5" + hashlib.md5((CLIENT_PW + "app").encode()).hexdigest()
    pg = start(pgscale, tmp_path, "  type: md5\n", '"app" "%s"\n' % mine)
    assert login(pg) == ("app", 2)
    assert "password authentication failed" in refused(pg, "app", "nope")


def test_md5_cannot_verify_a_scram_secret(pgscale, primary, tmp_path):
    (secret,) = primary.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")[0]
    pg = start(pgscale, tmp_path, "  type: md5\n", '"app" "%s"\n' % secret)
    assert "password authentication failed" in refused(pg, "app", APP_PASSWORD)
    assert "SCRAM" in pg.stderr_text(), pg.stderr_text()[-2000:]


def test_asyncpg_and_psql_log_in_with_scram(pgscale, tmp_path):
    import asyncpg
    pg = start(pgscale, tmp_path, "  type: scram-sha-256\n", '"app" "%s"\n' % CLIENT_PW)

    async def go():
        conn = await asyncpg.connect(host=LOCALHOST, port=pg.port, user="app", database="app",
                                     password=CLIENT_PW, timeout=10)
        try:
            return await conn.fetchval("SELECT $1::int * 2", 21)
        finally:
            await conn.close()

    assert arun(go(), timeout=30) == 42
    r = psql(pg.port, "SELECT 'via psql'", password=CLIENT_PW)
    assert r.returncode == 0 and "via psql" in r.stdout, r.stderr


def test_wire_level_wrong_password_is_28p01_fatal(pgscale, tmp_path):
    pg = start(pgscale, tmp_path, "  type: md5\n", '"app" "%s"\n' % CLIENT_PW)
    c = pgwire.RawConn(LOCALHOST, pg.port)
    try:
        c.send(pgwire.startup_packet("app", "app"))
        t, payload = c.recv_msg()
        assert t == b"R" and payload[:4] == b"\x00\x00\x00\x05"  # AuthenticationMD5Password
        c.send(pgwire.message(b"p", b"md5" + b"0" * 32 + b"\0"))
        errs = pgwire.errors(c.read_until_close())
        assert [(e["S"], e["C"]) for e in errs] == [("FATAL", "28P01")], errs
    finally:
        c.close()


def test_garbage_instead_of_a_password_message_is_08p01(pgscale, tmp_path):
    pg = start(pgscale, tmp_path, "  type: scram-sha-256\n", '"app" "%s"\n' % CLIENT_PW)
    c = pgwire.RawConn(LOCALHOST, pg.port)
    try:
        c.send(pgwire.startup_packet("app", "app"))
        t, payload = c.recv_msg()
        assert t == b"R" and payload[:4] == b"\x00\x00\x00\x0a"  # AuthenticationSASL
        assert b"SCRAM-SHA-256\0" in payload
        c.send(b"Q\x7f\xff\xff\xffgarbage")
        errs = pgwire.errors(c.read_until_close())
        assert [e["C"] for e in errs] == ["08P01"], errs
    finally:
        c.close()
    assert login(pg) == ("app", 2)


def test_hba_rules_pick_the_method_and_reject(pgscale, tmp_path):
    hba = """  type: scram-sha-256
  hba:
    - {type: host, database: all, user: blocked, address: 127.0.0.1/32, method: reject}
    - {type: host, database: app, user: trusted, address: 127.0.0.1/32, method: trust}
    - {type: host, database: all, user: all, address: 127.0.0.1/32, method: md5}
"""
    pg = start(pgscale, tmp_path, hba,
               '"app" "%s"\n"blocked" "%s"\n' % (CLIENT_PW, CLIENT_PW))
    assert login(pg) == ("app", 2)            # md5 rule
    msg = refused(pg, "blocked", CLIENT_PW, sqlstate="28000")
    assert "rejects connection" in msg and '"blocked"' in msg, msg
    # trust for this user: pgscale asks the client nothing; the login to
    # PostgreSQL is what then fails (pgscale has no server password for it)
    msg = refused(pg, "trusted", "")
    assert 'the server asks for a password for user "trusted"' in msg, msg


def test_hba_without_a_matching_rule_refuses(pgscale, tmp_path):
    hba = """  type: scram-sha-256
  hba:
    - {type: host, database: app, user: app, address: 10.0.0.0/8, method: trust}
"""
    pg = start(pgscale, tmp_path, hba, '"app" "%s"\n' % CLIENT_PW)
    msg = refused(pg, "app", CLIENT_PW, sqlstate="28000")
    assert "no auth.hba rule" in msg and "127.0.0.1" in msg, msg


def test_admin_console_needs_authentication_too(pgscale, tmp_path):
    pg = start(pgscale, tmp_path, "  type: scram-sha-256\n", '"app" "%s"\n' % CLIENT_PW)
    assert "password authentication failed" in refused(pg, "app", "wrong", db="pgscale")
    conn = psycopg2.connect(pg.dsn("app", "pgscale", password=CLIENT_PW))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SHOW POOLS")
        assert cur.description[0].name == "database"
    conn.close()


def test_bad_users_file_stops_start_up_with_file_and_line(tmp_path):
    import subprocess
    from conftest import PGSCALE_BIN
    uf = write(tmp_path, "users.txt", '"app" "ok"\n"broken\n')
    cfg = write(tmp_path, "pgscale.yaml", "auth:\n  file: %s\n" % uf)
    r = subprocess.run([str(PGSCALE_BIN), "--config", cfg],
                       env={"DATABASE_URL": "postgresql://a:b@127.0.0.1:1/x",
                            "PGSCALE_LISTEN": "127.0.0.1:1"},
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1, r
    assert "users.txt:2:" in r.stderr, r.stderr


# -- logging into PostgreSQL as the client's user ------------------------------
@pytest.fixture(scope="module")
def roles(primary):
    """alice and bob exist only in PostgreSQL (scram-sha-256 passwords)."""
    for name, pw in (("alice", "alice-pw"), ("bob", "bob-pw")):
        primary.execute("DROP ROLE IF EXISTS %s" % name)
        primary.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (name, pw))
    yield
    for name in ("alice", "bob"):
        primary.execute("DROP ROLE IF EXISTS %s" % name)


def test_scram_keys_of_the_client_log_into_postgresql(pgscale, primary, tmp_path, roles):
    # The users file has only alice's SCRAM secret, copied from pg_authid;
    # pgscale knows no password for her, yet logs into PostgreSQL as alice
    # with the keys her own SCRAM login to pgscale proved.
    (secret,) = primary.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'")[0]
    pg = start(pgscale, tmp_path, "  type: scram-sha-256\n", '"alice" "%s"\n' % secret)
    assert login(pg, user="alice", password="alice-pw") == ("alice", 2)
    # again, on a new server connection too
    conn = psycopg2.connect(pg.dsn("alice", "app", password="alice-pw"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == ("alice",)
    conn.close()
    assert "password authentication failed" in refused(pg, "alice", "wrong")


def test_users_file_password_logs_into_postgresql(pgscale, tmp_path, roles):
    pg = start(pgscale, tmp_path, "  type: md5\n", '"bob" "bob-pw"\n')
    assert login(pg, user="bob", password="bob-pw") == ("bob", 2)


def test_md5_secret_logs_into_an_md5_server(pgscale, primary, tmp_path):
    # md5user authenticates with md5 on the server; the users file has only
    # its md5 secret from pg_authid, which answers the server's md5 challenge
    (secret,) = primary.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'md5user'")[0]
    pg = start(pgscale, tmp_path, "  type: md5\n", '"md5user" "%s"\n' % secret)
    assert login(pg, user="md5user", password=MD5_PASSWORD) == ("md5user", 2)


def test_no_password_anywhere_gives_a_clear_error(pgscale, tmp_path, roles):
    # trusted by pgscale, but PostgreSQL wants bob's password and pgscale has none
    pg = start(pgscale, tmp_path, "  type: trust\n", '"someone" "x"\n')
    msg = refused(pg, "bob", "")
    assert 'pgscale has none for that user' in msg and "auth.file" in msg, msg


# -- auth.query: secrets looked up in PostgreSQL ---------------------------------
def start_aq(pgscale, tmp_path, method, extra=""):
    cfg = write(tmp_path, "pgscale.yaml",
                "auth:\n  type: %s\n  user: postgres\n%s" % (method, extra))
    return pgscale(args=["--config", cfg])


def test_auth_query_scram_user_known_only_to_postgresql(pgscale, tmp_path, roles):
    # no users file at all: alice's SCRAM secret comes from pg_shadow, and
    # her proof's keys then log pgscale into PostgreSQL as alice
    pg = start_aq(pgscale, tmp_path, "scram-sha-256")
    assert login(pg, user="alice", password="alice-pw") == ("alice", 2)
    assert "password authentication failed" in refused(pg, "alice", "wrong")
    msg = refused(pg, "nobody_here", "x")
    assert 'password authentication failed for user "nobody_here"' in msg, msg


def test_auth_query_md5_user(pgscale, tmp_path):
    pg = start_aq(pgscale, tmp_path, "md5")
    assert login(pg, user="md5user", password=MD5_PASSWORD) == ("md5user", 2)
    assert "password authentication failed" in refused(pg, "md5user", "wrong")


def test_auth_query_with_a_custom_function(pgscale, primary, tmp_path, roles):
    # the usual production set-up: a SECURITY DEFINER function instead of
    # reading pg_shadow as a superuser, here in a database named by
    # auth.dbname (the lookup runs there whatever database the client names)
    primary.execute("""CREATE OR REPLACE FUNCTION public.pgscale_lookup(u text,
                       OUT usename name, OUT passwd text) RETURNS record
                       LANGUAGE sql SECURITY DEFINER
                       AS $$ SELECT usename, passwd FROM pg_shadow WHERE usename = u $$""",
                    db="app")
    pg = start_aq(pgscale, tmp_path, "scram-sha-256",
                  "  dbname: app\n  query: SELECT * FROM public.pgscale_lookup($1)\n")
    assert login(pg, user="bob", password="bob-pw") == ("bob", 2)
    assert login(pg, user="bob", password="bob-pw", db="postgres") == ("bob", 2)


def test_auth_query_failure_is_a_clear_error(pgscale, tmp_path, roles):
    pg = start_aq(pgscale, tmp_path, "scram-sha-256",
                  "  query: SELECT no_such_column FROM pg_shadow WHERE usename = $1\n")
    msg = refused(pg, "alice", "alice-pw", sqlstate="08006")
    assert "could not look up the password" in msg, msg
    assert "auth.query failed" in pg.stderr_text(), pg.stderr_text()[-2000:]


def test_reload_rereads_the_users_file(pgscale, tmp_path):
    pg = start(pgscale, tmp_path, "  type: scram-sha-256\n", '"app" "first-pw"\n')
    assert login(pg, password="first-pw") == ("app", 2)

    def console(sql):
        conn = psycopg2.connect(pg.dsn("app", "pgscale", password=current[0]))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    current = ["first-pw"]
    (tmp_path / "users.txt").write_text('"app" "second-pw"\n')
    console("RELOAD")
    current[0] = "second-pw"
    assert login(pg, password="second-pw") == ("app", 2)
    assert "password authentication failed" in refused(pg, "app", "first-pw")
    # a broken file is refused with its line, and the old one stays
    (tmp_path / "users.txt").write_text('"app" "third-pw"\n"oops\n')
    with pytest.raises(psycopg2.Error) as exc:
        console("RELOAD")
    assert "users.txt:2:" in str(exc.value), str(exc.value)
    assert login(pg, password="second-pw") == ("app", 2)


def test_server_asking_for_a_cleartext_password(pgscale, primary, tmp_path):
    # PostgreSQL's "password" method (pg_hba line for pwuser in conftest),
    # over plain TCP: sent only with server_allow_cleartext_password
    primary.execute("DROP ROLE IF EXISTS pwuser")
    primary.execute("CREATE ROLE pwuser LOGIN PASSWORD 'pw-user-pw'")
    try:
        pg = start(pgscale, tmp_path, "  type: md5\nserver_allow_cleartext_password: on\n",
                   '"pwuser" "pw-user-pw"\n')
        assert login(pg, user="pwuser", password="pw-user-pw") == ("pwuser", 2)
    finally:
        primary.execute("DROP ROLE IF EXISTS pwuser")


def test_cleartext_password_over_plain_tcp_is_refused_by_default(pgscale, primary, tmp_path):
    primary.execute("DROP ROLE IF EXISTS pwuser")
    primary.execute("CREATE ROLE pwuser LOGIN PASSWORD 'pw-user-pw'")
    off = primary.log_size()
    try:
        pg = start(pgscale, tmp_path, "  type: md5\n", '"pwuser" "pw-user-pw"\n')
        msg = refused(pg, "pwuser", "pw-user-pw", sqlstate="28000")
        assert "in clear text" in msg and "server_allow_cleartext_password" in msg, msg
        # PostgreSQL never got the password: no login of pwuser was authorized
        assert "connection authorized: user=pwuser" not in primary.log_tail(5000, since=off)
    finally:
        primary.execute("DROP ROLE IF EXISTS pwuser")


# -- several listen addresses and a Unix socket -----------------------------------
def test_listen_on_two_tcp_ports_and_a_unix_socket_with_local_rules(pgscale, tmp_path):
    import os
    import shutil
    import signal
    import tempfile
    import time
    from helpers import free_port, port_accepts
    p1, p2 = free_port(), free_port()
    sockdir = tempfile.mkdtemp(prefix="pgs-", dir="/tmp")  # socket paths must be short
    try:
        uf = write(tmp_path, "users.txt", '"app" "%s"\n' % CLIENT_PW)
        cfg = write(tmp_path, "pgscale.yaml", """listen:
  - 127.0.0.1:%d
  - 127.0.0.1:%d
  - unix:%s
auth:
  file: %s
  type: scram-sha-256
  hba:
    - {type: local, database: all, user: all, method: trust}
    - {type: host, database: all, user: all, address: 127.0.0.1/32, method: scram-sha-256}
""" % (p1, p2, sockdir, uf))
        pg = pgscale(args=["--config", cfg], wait=False, PGSCALE_LISTEN=None)
        deadline = time.monotonic() + 10
        while not (port_accepts(p1) and port_accepts(p2)):
            assert pg.is_running() and time.monotonic() < deadline, pg.stderr_text()[-2000:]
            time.sleep(0.05)
        sock = os.path.join(sockdir, ".s.PGSQL.%d" % p1)
        assert os.path.exists(sock)
        for port in (p1, p2):
            c = psycopg2.connect(host=LOCALHOST, port=port, user="app", dbname="app",
                                 password=CLIENT_PW, connect_timeout=10)
            c.close()
        # the Unix socket: the local rule trusts, no password asked
        c = psycopg2.connect(host=sockdir, port=p1, user="app", dbname="app", connect_timeout=10)
        with c.cursor() as cur:
            cur.execute("SELECT 40 + 2")
            assert cur.fetchone() == (42,)
        c.close()
        r = psql(p1, "SELECT 'over the socket'", args=["-h", sockdir])
        assert r.returncode == 0 and "over the socket" in r.stdout, r.stderr
        # TCP still asks for the password
        with pgwire.RawConn(LOCALHOST, p1) as c:
            errs = pgwire.errors(c.login("app", "app", "wrong"))
        assert [(e["S"], e["C"]) for e in errs] == [("FATAL", "28P01")], errs
        pg.signal(signal.SIGTERM)
        assert pg.wait_exit(10) == 0
        assert not os.path.exists(sock), "socket file left behind"
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
