"""TLS on both sides: clients to pgscale (tls: in the config file) and pgscale
to PostgreSQL (server_tls:).  A CA, a server certificate for
127.0.0.1/localhost and client certificates are made with the openssl CLI;
the primary serves TLS with the same server certificate for this module
only (ssl is turned off again at the end, so other modules are unaffected).
Real clients: psql, psycopg2, pgbench, and pgwire for exact SQLSTATEs."""
import hashlib
import io
import os
import pwd
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time

import psycopg2
import pytest

import pgwire
from helpers import APP_DB, APP_PASSWORD, APP_USER, LOCALHOST, client_env, run, wait_for


# --------------------------------------------------------------------------
# certificates and the primary's TLS
# --------------------------------------------------------------------------
def _openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, "openssl %s failed:\n%s" % (" ".join(args), r.stderr)


def _make_ca(d, name):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", name + ".key", "-out", name + ".crt", "-days", "30",
             "-subj", "/CN=pgscale test %s" % name, cwd=d)


def _make_cert(d, name, cn, ca="ca", san=None):
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=%s" % cn, cwd=d)
    ext = d / (name + ".ext")
    ext.write_text("basicConstraints=CA:FALSE\n" + ("subjectAltName=%s\n" % san if san else ""))
    _openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key",
             "-CAcreateserial", "-out", name + ".crt", "-days", "30", "-sha256",
             "-extfile", ext.name, cwd=d)
    os.chmod(d / (name + ".key"), 0o600)


class Certs:
    def __init__(self, d):
        self.dir = d
        _make_ca(d, "ca")
        _make_ca(d, "otherca")
        _make_cert(d, "server", "localhost", san="DNS:localhost,IP:127.0.0.1")
        _make_cert(d, "client_app", APP_USER)
        _make_cert(d, "client_other", "someone-else")
        _make_cert(d, "client_wrongca", APP_USER, ca="otherca")

    def __getattr__(self, name):
        # certs.ca_crt -> <dir>/ca.crt, certs.client_app_key -> <dir>/client_app.key
        base, _, ext = name.rpartition("_")
        if ext in ("crt", "key"):
            return str(self.dir / ("%s.%s" % (base, ext)))
        raise AttributeError(name)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("tls-certs"))


def _direct_ssl_works(primary):
    try:
        psycopg2.connect(primary.dsn() + " sslmode=require", connect_timeout=5).close()
        return True
    except psycopg2.OperationalError:
        return False


def _set_primary_ssl(primary, on):
    primary.execute("ALTER SYSTEM SET ssl = %s" % ("on" if on else "off"))
    primary.execute("SELECT pg_reload_conf()")
    wait_for(lambda: _direct_ssl_works(primary) == on, 10,
             what="the primary to %s TLS" % ("serve" if on else "stop serving"))


@pytest.fixture(scope="module")
def pg_tls(primary, certs):
    """The primary, serving TLS with certs.server for this module."""
    for name in ("server.crt", "server.key"):
        dst = primary.datadir / ("pgscale-test-" + name)
        shutil.copy(certs.dir / name, dst)
        os.chmod(dst, 0o600)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(dst, pw.pw_uid, pw.pw_gid)
    primary.execute("ALTER SYSTEM SET ssl_cert_file = 'pgscale-test-server.crt'")
    primary.execute("ALTER SYSTEM SET ssl_key_file = 'pgscale-test-server.key'")
    _set_primary_ssl(primary, True)
    try:
        yield primary
    finally:
        if primary.is_running():
            primary.execute("ALTER SYSTEM RESET ssl")
            primary.execute("ALTER SYSTEM RESET ssl_cert_file")
            primary.execute("ALTER SYSTEM RESET ssl_key_file")
            primary.execute("SELECT pg_reload_conf()")
            wait_for(lambda: not _direct_ssl_works(primary), 10, what="the primary to stop TLS")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def start(pgscale, tmp_path, certs, mode="require", sslmode="disable", server_ca=None,
          extra="", cfgname="pgscale.yaml", **env):
    """pgscale with tls.mode=mode for clients and server_tls.sslmode toward the primary."""
    y = ""
    if mode != "disable":
        y += "tls:\n  mode: %s\n  cert: %s\n  key: %s\n  ca: %s\n" % (
            mode, certs.server_crt, certs.server_key, certs.ca_crt)
    y += "server_tls:\n  sslmode: %s\n" % sslmode
    if server_ca:
        y += "  ca: %s\n" % server_ca
    y += extra
    cfg = tmp_path / cfgname
    cfg.write_text(y)
    return pgscale(args=["--config", str(cfg)], **env)


def dsn(pg, user=APP_USER, db=APP_DB, **params):
    return pg.dsn(user, db, **params)


def connect(pg, user=APP_USER, **params):
    conn = psycopg2.connect(dsn(pg, user, **params))
    conn.autocommit = True
    pg._clients.append(conn)
    return conn


def one(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def refused(pg, **params):
    with pytest.raises(psycopg2.OperationalError) as exc:
        psycopg2.connect(dsn(pg, **params)).close()
    return str(exc.value)


def psql_tls(pg, sql, conninfo, timeout=30):
    argv = ["psql", "-X", "-w", "-At", "-v", "ON_ERROR_STOP=1",
            "-d", "host=%s port=%d user=%s dbname=%s %s" % (LOCALHOST, pg.port, APP_USER, APP_DB,
                                                            conninfo),
            "-c", sql]
    return run(argv, timeout, env=client_env())


def server_side_ssl(conn):
    """Whether the server connection this client's query ran on uses TLS."""
    return one(conn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")[0]


def raw_tls(pg, context=None):
    """A RawConn that sent SSLRequest, got 'S' and wrapped its socket in TLS."""
    c = pgwire.RawConn(pg.host, pg.port, timeout=10)
    c.send(pgwire.ssl_request())
    assert c.recv_byte() == b"S"
    if context is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    c.sock = context.wrap_socket(c.sock, server_hostname=LOCALHOST)
    return c


# --------------------------------------------------------------------------
# clients -> pgscale
# --------------------------------------------------------------------------
def test_psql_and_psycopg2_connect_with_sslmode_require(pgscale, tmp_path, certs):
    pg = start(pgscale, tmp_path, certs, mode="require")
    r = psql_tls(pg, "\\conninfo", "sslmode=require")
    assert r.returncode == 0, r.stderr
    assert "SSL connection (protocol: TLSv1.3" in r.stdout, r.stdout
    r = psql_tls(pg, "SELECT 40 + 2", "sslmode=require")
    assert r.returncode == 0 and r.stdout.strip() == "42", (r.stdout, r.stderr)
    conn = connect(pg, sslmode="require")
    assert conn.info.ssl_in_use
    assert conn.info.ssl_attribute("protocol") == "TLSv1.3"
    assert one(conn, "SELECT current_user, 1 + 1") == (APP_USER, 2)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_sslmode_verify_full_checks_pgscale_certificate(pgscale, tmp_path, certs, host):
    pg = start(pgscale, tmp_path, certs, mode="require")
    conn = psycopg2.connect("host=%s port=%d user=%s dbname=%s password=%s sslmode=verify-full "
                            "sslrootcert=%s connect_timeout=10"
                            % (host, pg.port, APP_USER, APP_DB, APP_PASSWORD, certs.ca_crt))
    try:
        assert conn.info.ssl_in_use
        with conn.cursor() as cur:
            cur.execute("SELECT 7")
            assert cur.fetchone() == (7,)
    finally:
        conn.close()
    r = psql_tls(pg, "SELECT 1", "sslmode=verify-full sslrootcert=%s" % certs.ca_crt)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
    # the certificate does not chain to another CA: the client refuses it
    msg = refused(pg, sslmode="verify-full", sslrootcert=certs.otherca_crt)
    assert "certificate verify failed" in msg, msg


def test_client_without_tls_is_refused_with_28000_when_tls_required(pgscale, tmp_path, certs):
    pg = start(pgscale, tmp_path, certs, mode="require")
    with pgwire.RawConn(pg.host, pg.port, timeout=10) as c:
        msgs = c.startup()
    errs = pgwire.errors(msgs)
    assert len(errs) == 1 and errs[0]["C"] == "28000", msgs
    assert "requires TLS (tls.mode=require)" in errs[0]["M"], errs
    assert "sslmode=require" in errs[0]["M"], errs
    msg = refused(pg, sslmode="disable")
    assert "pgscale requires TLS" in msg, msg
    # libpq's default (prefer) uses TLS when offered
    assert one(connect(pg), "SELECT 1") == (1,)


def test_cancel_request_without_tls_still_works_when_tls_required(pgscale, primary, tmp_path,
                                                                  certs):
    pg = start(pgscale, tmp_path, certs, mode="require")
    conn = connect(pg, sslmode="require")
    result = {}

    def run_sleep():
        try:
            one(conn, "SELECT pg_sleep(20) /* tls-cancel */")
        except psycopg2.Error as e:
            result["err"] = e

    t = threading.Thread(target=run_sleep)
    t.start()
    wait_for(lambda: primary.execute(
        "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%%tls-cancel%%' "
        "AND pid <> pg_backend_pid()"), 5, what="the query to run on the server")
    conn.cancel()  # libpq 15 sends CancelRequest unencrypted
    t.join(15)
    assert not t.is_alive()
    assert getattr(result.get("err"), "pgcode", None) == "57014", result


def test_tls_mode_allow_serves_tls_and_plain_clients(pgscale, tmp_path, certs):
    pg = start(pgscale, tmp_path, certs, mode="allow")
    assert connect(pg, sslmode="require").info.ssl_in_use
    plain = connect(pg, sslmode="disable")
    assert not plain.info.ssl_in_use
    assert one(plain, "SELECT 3") == (3,)


def test_tls_disabled_answers_sslrequest_with_n(pgscale, tmp_path, certs):
    pg = start(pgscale, tmp_path, certs, mode="disable")
    msg = refused(pg, sslmode="require")
    assert "server does not support SSL" in msg, msg
    with pgwire.RawConn(pg.host, pg.port, timeout=10) as c:
        c.send(pgwire.ssl_request())
        assert c.recv_byte() == b"N"
        assert pgwire.ready_status(c.startup()) == "I"


def test_verify_ca_requires_a_client_certificate_signed_by_tls_ca(pgscale, tmp_path, certs):
    pg = start(pgscale, tmp_path, certs, mode="verify-ca")
    msg = refused(pg, sslmode="require")
    assert "certificate required" in msg, msg
    msg = refused(pg, sslmode="require", sslcert=certs.client_wrongca_crt,
                  sslkey=certs.client_wrongca_key)
    assert "unknown ca" in msg or "certificate" in msg, msg
    # plaintext is refused with a hint about the certificate
    with pgwire.RawConn(pg.host, pg.port, timeout=10) as c:
        errs = pgwire.errors(c.startup())
    assert errs and errs[0]["C"] == "28000" and "tls.mode=verify-ca" in errs[0]["M"], errs
    assert "client certificate" in errs[0].get("H", ""), errs
    conn = connect(pg, sslmode="require", sslcert=certs.client_app_crt,
                   sslkey=certs.client_app_key)
    assert one(conn, "SELECT 5") == (5,)
    # verify-ca does not look at the name on the certificate
    conn = connect(pg, sslmode="require", sslcert=certs.client_other_crt,
                   sslkey=certs.client_other_key)
    assert one(conn, "SELECT 6") == (6,)
    r = psql_tls(pg, "SELECT 8", "sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s"
                 % (certs.ca_crt, certs.client_app_crt, certs.client_app_key))
    assert r.returncode == 0 and r.stdout.strip() == "8", r.stderr


def test_verify_full_requires_certificate_cn_equal_to_user(pgscale, tmp_path, certs):
    pg = start(pgscale, tmp_path, certs, mode="verify-full")
    conn = connect(pg, sslmode="require", sslcert=certs.client_app_crt,
                   sslkey=certs.client_app_key)
    assert one(conn, "SELECT current_user") == (APP_USER,)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(certs.client_other_crt, certs.client_other_key)
    c = raw_tls(pg, ctx)
    try:
        errs = pgwire.errors(c.startup())
    finally:
        c.close()
    assert len(errs) == 1 and errs[0]["C"] == "28000", errs
    assert 'certificate authentication failed for user "app"' in errs[0]["M"], errs
    assert "someone-else" in errs[0]["M"], errs


def test_hostssl_and_hostnossl_rules_match_by_transport(pgscale, tmp_path, certs):
    hba = ("auth:\n  type: trust\n  hba:\n"
           "    - {type: hostnossl, database: all, user: all, address: all, method: reject}\n"
           "    - {type: hostssl, database: all, user: all, address: all, method: trust}\n")
    pg = start(pgscale, tmp_path, certs, mode="allow", extra=hba)
    assert one(connect(pg, sslmode="require"), "SELECT 1") == (1,)
    msg = refused(pg, sslmode="disable")
    assert "auth.hba rejects connection" in msg, msg


def test_scram_sha_256_plus_channel_binding_on_tls(pgscale, tmp_path, certs):
    users = tmp_path / "users.txt"
    users.write_text('"app" "client-pw"\n')
    extra = "auth:\n  type: scram-sha-256\n  file: %s\n" % users
    pg = start(pgscale, tmp_path, certs, mode="allow", extra=extra)
    conn = connect(pg, sslmode="require", password="client-pw", channel_binding="require")
    assert one(conn, "SELECT 1") == (1,)
    # without TLS there is nothing to bind to: libpq refuses to go on
    msg = refused(pg, sslmode="disable", password="client-pw", channel_binding="require")
    assert "channel binding" in msg, msg
    # and plain SCRAM still works on both
    assert one(connect(pg, sslmode="disable", password="client-pw"), "SELECT 2") == (2,)
    assert one(connect(pg, sslmode="require", password="client-pw", channel_binding="disable"),
               "SELECT 3") == (3,)
    msg = refused(pg, sslmode="require", password="wrong", channel_binding="require")
    assert 'password authentication failed for user "app"' in msg, msg


def test_garbage_instead_of_tls_handshake_closes_only_that_client(pgscale, tmp_path, certs):
    pg = start(pgscale, tmp_path, certs, mode="require")
    before = connect(pg, sslmode="require")
    with pgwire.RawConn(pg.host, pg.port, timeout=10) as c:
        c.send(pgwire.ssl_request())
        assert c.recv_byte() == b"S"
        c.send(pgwire.startup_packet())  # plaintext where a ClientHello belongs
        c.sock.settimeout(10)
        data = b""
        try:
            while True:
                chunk = c.sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    assert not data.startswith(b"R"), data  # no plaintext answer to it
    assert "TLS handshake failed" in pg.stderr_text()
    # a client that leaves right after the 'S', or in the middle of its hello
    for cut in (0, 20):
        with pgwire.RawConn(pg.host, pg.port, timeout=10) as c:
            c.send(pgwire.ssl_request())
            assert c.recv_byte() == b"S"
            if cut:
                c.send(bytes.fromhex("16030100a5010000a10303")[:cut] + bytes(cut))
            c.close(abort=True)
    assert one(before, "SELECT 1") == (1,)


def test_client_hello_sent_along_with_sslrequest_is_taken_as_tls(pgscale, tmp_path, certs):
    # bytes after the SSLRequest in the same packet are the TLS stream,
    # never plaintext (they are fed to the handshake, not the protocol)
    # the TLS framing is under test, not the password exchange
    pg = start(pgscale, tmp_path, certs, mode="require", PGSCALE_AUTH_TYPE="trust")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    with socket.create_connection((pg.host, pg.port), timeout=10) as s:
        s.sendall(pgwire.ssl_request() + out.read())
        assert s.recv(1) == b"S"

        def pump():
            data = s.recv(65536)
            assert data, "pgscale closed the connection"
            inc.write(data)

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if out.pending:
                    s.sendall(out.read())
                pump()
        tls.write(pgwire.startup_packet())
        s.sendall(out.read())
        got = b""
        while b"Z\0\0\0\x05" not in got:
            try:
                got += tls.read(65536)
            except ssl.SSLWantReadError:
                pump()
    assert got[:1] == b"R" and b"Z\0\0\0\x05I" in got, got[:200]


# --------------------------------------------------------------------------
# pgscale -> PostgreSQL
# --------------------------------------------------------------------------
@pytest.mark.parametrize("sslmode", ["require", "verify-ca", "verify-full"])
def test_server_connections_use_tls_per_server_tls_sslmode(pgscale, tmp_path, certs, pg_tls,
                                                           sslmode):
    pg = start(pgscale, tmp_path, certs, mode="disable", sslmode=sslmode,
               server_ca=certs.ca_crt, DB_POOL_SIZE=3)
    conns = [connect(pg) for _ in range(3)]
    for c in conns:
        assert server_side_ssl(c) is True
    rows = pg_tls.execute(
        "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        "WHERE a.usename = %s AND a.backend_type = 'client backend'", (APP_USER,))
    assert rows and all(r[0] for r in rows), rows
    assert all(r[1] == "TLSv1.3" for r in rows), rows


def test_server_tls_prefer_uses_tls_when_offered_and_disable_does_not(pgscale, tmp_path, certs,
                                                                     pg_tls):
    pg = start(pgscale, tmp_path, certs, mode="disable", sslmode="prefer")
    assert server_side_ssl(connect(pg)) is True
    pg2 = start(pgscale, tmp_path, certs, mode="disable", sslmode="disable", cfgname="b.yaml")
    assert server_side_ssl(connect(pg2)) is False


def test_database_url_sslmode_is_used_when_the_file_sets_none(pgscale, primary, pg_tls):
    pg = pgscale(DATABASE_URL=primary.url() + "?sslmode=require")
    assert server_side_ssl(connect(pg)) is True


def test_tls_server_connection_terminated_while_idle_is_replaced(pgscale, tmp_path, certs,
                                                                  pg_tls):
    pg = start(pgscale, tmp_path, certs, mode="require", sslmode="require", DB_POOL_SIZE=1,
               DB_MAX_OVERFLOW=0)
    conn = connect(pg, sslmode="require")
    (pid1,) = one(conn, "SELECT pg_backend_pid()")
    pg_tls.execute("SELECT pg_terminate_backend(%s)", (pid1,))
    wait_for(lambda: not pg_tls.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                        (pid1,)), 5, what="the backend to exit")
    pid2, on_tls = one(conn, "SELECT pg_backend_pid(), ssl FROM pg_stat_ssl "
                             "WHERE pid = pg_backend_pid()")
    assert pid2 != pid1 and on_tls is True


def test_server_verify_full_with_wrong_ca_fails_with_08006_naming_the_problem(
        pgscale, tmp_path, certs, pg_tls):
    pg = start(pgscale, tmp_path, certs, mode="disable", sslmode="verify-full",
               server_ca=certs.otherca_crt)
    with pgwire.RawConn(pg.host, pg.port, timeout=15) as c:
        errs = pgwire.errors(c.startup(timeout=15))
    assert len(errs) == 1 and errs[0]["C"] == "08006", errs
    m = errs[0]["M"]
    assert "TLS handshake with server" in m and "certificate verify failed" in m, m
    assert "server_tls.sslmode=verify-full" in m, m
    assert "certificate verify failed" in pg.stderr_text()


def test_server_verify_full_checks_the_host_name(pgscale, primary, tmp_path, certs, pg_tls):
    # "127.1" reaches 127.0.0.1 but is not a name or address the certificate
    # was issued for
    url = primary.url().replace(LOCALHOST, "127.1")
    cfg = tmp_path / "pgscale.yaml"
    cfg.write_text("server_tls:\n  sslmode: verify-full\n  ca: %s\n" % certs.ca_crt)
    pg = pgscale(args=["--config", str(cfg)], DATABASE_URL=url)
    msg = refused(pg)
    assert "hostname mismatch" in msg, msg
    cfg.write_text("server_tls:\n  sslmode: verify-ca\n  ca: %s\n" % certs.ca_crt)
    pg2 = pgscale(args=["--config", str(cfg)], DATABASE_URL=url)
    assert server_side_ssl(connect(pg2)) is True


def test_channel_binding_require_logs_in_over_tls_with_scram_plus(pgscale, primary, pg_tls):
    # pgscale refuses a login it could not bind, and PostgreSQL checks the
    # certificate hash in c=: a login here is a bound one
    pg = pgscale(DATABASE_URL=primary.url() + "?sslmode=require&channel_binding=require")
    conn = connect(pg)
    assert server_side_ssl(conn) is True
    assert one(conn, "SELECT current_user")[0] == APP_USER


def test_channel_binding_require_without_tls_is_refused_clearly(pgscale, primary, tmp_path,
                                                                certs, pg_tls):
    pg = pgscale(DATABASE_URL=primary.url() + "?sslmode=disable&channel_binding=require")
    with pgwire.RawConn(pg.host, pg.port, timeout=15) as c:
        errs = pgwire.errors(c.login(APP_USER, APP_DB, APP_PASSWORD, timeout=15))
    assert len(errs) == 1 and errs[0]["C"] == "28000", errs
    assert "channel binding is required" in errs[0]["M"], errs
    assert "does not use TLS" in errs[0]["M"], errs
    # md5 over TLS cannot be bound either
    pg2 = start(pgscale, tmp_path, certs, mode="disable", sslmode="require",
                extra="  channel_binding: require\n",
                DATABASE_URL=primary.url(user="md5user", password="md5secret"))
    with pgwire.RawConn(pg2.host, pg2.port, timeout=15) as c:
        errs = pgwire.errors(c.login("md5user", APP_DB, "md5secret", timeout=15))
    assert len(errs) == 1 and errs[0]["C"] == "28000", errs
    assert "md5" in errs[0]["M"], errs


def test_cleartext_password_is_sent_over_tls_without_the_setting(pgscale, primary, pg_tls):
    # pg_hba's "password" method for pwuser (conftest): over TLS pgscale
    # answers it without server_allow_cleartext_password
    primary.execute("DROP ROLE IF EXISTS pwuser")
    primary.execute("CREATE ROLE pwuser LOGIN PASSWORD 'pw-user-pw'")
    try:
        pg = pgscale(DATABASE_URL=primary.url(user="pwuser", password="pw-user-pw") +
                     "?sslmode=require")
        conn = connect(pg, user="pwuser", password="pw-user-pw")
        assert one(conn, "SELECT current_user")[0] == "pwuser"
        assert server_side_ssl(conn) is True
        conn.close()
    finally:
        primary.execute("DROP ROLE IF EXISTS pwuser")


def test_server_sslmode_require_toward_a_server_without_tls_fails_clearly(
        pgscale, tmp_path, certs, pg_tls):
    _set_primary_ssl(pg_tls, False)
    try:
        pg = start(pgscale, tmp_path, certs, mode="disable", sslmode="require")
        with pgwire.RawConn(pg.host, pg.port, timeout=15) as c:
            errs = pgwire.errors(c.startup(timeout=15))
        assert len(errs) == 1 and errs[0]["C"] == "08006", errs
        assert "does not accept TLS connections" in errs[0]["M"], errs
        assert "server_tls.sslmode is require" in errs[0]["M"], errs
        # prefer goes on in plaintext
        pg2 = start(pgscale, tmp_path, certs, mode="disable", sslmode="prefer", cfgname="b.yaml")
        assert server_side_ssl(connect(pg2)) is False
    finally:
        _set_primary_ssl(pg_tls, True)


# --------------------------------------------------------------------------
# both sides: volume, pipelining, several workers
# --------------------------------------------------------------------------
@pytest.mark.deadline(180)
@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_20mb_copy_and_bytea_through_tls_on_both_sides(pgscale, tmp_path, certs, pg_tls,
                                                      pool_mode):
    pg = start(pgscale, tmp_path, certs, mode="require", sslmode="verify-full",
               server_ca=certs.ca_crt, PGSCALE_POOL_MODE=pool_mode)
    conn = connect(pg, sslmode="require")
    assert server_side_ssl(conn) is True
    one(conn, "SELECT 1")
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS tls_copy; CREATE TABLE tls_copy (id int, t text)")
        lines = b"".join(b"%d\t%s\n" % (i, hashlib.sha256(b"%d" % i).hexdigest().encode() * 2)
                         for i in range(160000))
        assert len(lines) > 20 * 1024 * 1024
        cur.copy_expert("COPY tls_copy FROM STDIN", io.BytesIO(lines))
        out = io.BytesIO()
        cur.copy_expert("COPY tls_copy TO STDOUT", out)
        assert hashlib.sha256(out.getvalue()).hexdigest() == hashlib.sha256(lines).hexdigest()
        blob = os.urandom(20 * 1024 * 1024)
        cur.execute("SELECT %s::bytea", (psycopg2.Binary(blob),))
        assert bytes(cur.fetchone()[0]) == blob
        cur.execute("SELECT md5(string_agg(t, ',' ORDER BY id)) FROM tls_copy")
        want = hashlib.md5(b",".join(l.split(b"\t")[1] for l in lines.splitlines())).hexdigest()
        assert cur.fetchone()[0] == want
        cur.execute("DROP TABLE tls_copy")


@pytest.mark.deadline(120)
def test_pgbench_extended_protocol_over_tls_runs_clean(pgscale, tmp_path, certs, pg_tls):
    pg = start(pgscale, tmp_path, certs, mode="require", sslmode="require", DB_POOL_SIZE=4,
               PGSCALE_WORKERS=2)
    env = client_env({"PGSSLMODE": "require"})
    base = ["pgbench", "-h", LOCALHOST, "-p", str(pg.port), "-U", APP_USER]
    r = run(base + ["-i", "-q", "-s", "1", APP_DB], 90, env=env)
    assert r.returncode == 0, r.stderr
    r = run(base + ["-M", "extended", "-c", "8", "-j", "2", "-T", "3", APP_DB], 60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "number of failed transactions: 0" in r.stdout, r.stdout
    assert "error" not in r.stderr.lower(), r.stderr
    log = pg.stderr_text()
    for bad in ("TLS handshake failed", "TLS read failed", "TLS write failed"):
        assert bad not in log, log[-3000:]


@pytest.mark.deadline(60)
def test_tls_server_connection_moves_between_workers_without_reconnecting(
        pgscale, tmp_path, certs, pg_tls):
    # one server for clients on two workers: it is handed over with its
    # TLS session (the same backend pid keeps answering, over TLS)
    pg = start(pgscale, tmp_path, certs, mode="require", sslmode="require", DB_POOL_SIZE=1,
               DB_MAX_OVERFLOW=0, PGSCALE_WORKERS=2, PGSCALE_LOG_LEVEL="debug")
    conns = [connect(pg, sslmode="require", application_name="w%d" % i) for i in range(12)]
    workers = {}
    for r in pg.admin("SHOW CLIENTS"):
        if r["application_name"].startswith("w"):
            workers.setdefault(str(r["worker"]), []).append(r["application_name"])
    if len(workers) < 2:
        pytest.skip("all connections landed on one worker: %r" % workers)
    pids = set()
    for _ in range(3):
        for c in conns:
            pid, on_tls = one(c, "SELECT pg_backend_pid(), ssl FROM pg_stat_ssl "
                                 "WHERE pid = pg_backend_pid()")
            assert on_tls is True
            pids.add(pid)
    assert len(pids) == 1, pids
    assert "(TLS)" in "".join(l for l in pg.stderr_text().splitlines()
                              if "handing over to worker" in l), "no hand-over happened"
