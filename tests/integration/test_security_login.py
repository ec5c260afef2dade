"""Attacks on the login path: what a client can do before (or while) it logs
in.  An IPv4 client on a dual-stack listener must meet the IPv4 auth.hba
rules; connections that never finish logging in must not lock real clients
out; and names sent by a client must not forge lines in pgscale's log."""
import grp
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time

import psycopg2
import pytest

import pgwire
from helpers import (APP_PASSWORD, LOCALHOST, client_env, free_port, is_sanitized, port_accepts,
                     wait_for)

CLIENT_PW = "client-pw"


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# -- 1. IPv4-mapped addresses on a dual-stack listener --------------------------------
def test_ipv4_reject_rule_applies_to_ipv4_client_on_dual_stack_listener(pgscale, tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    uf = write(tmp_path, "users.txt", '"app" "%s"\n' % CLIENT_PW)
    cfg = write(tmp_path, "pgscale.yaml", """auth:
  file: %s
  type: scram-sha-256
  hba:
    - {type: host, database: all, user: app, address: 127.0.0.0/8, method: reject}
    - {type: host, database: all, user: all, address: 127.0.0.1/32, method: scram-sha-256}
    - {type: host, database: all, user: all, address: 0.0.0.0/0, method: trust}
    - {type: host, database: all, user: all, address: "::/0", method: trust}
""" % uf)
    port = free_port()
    pg = pgscale(args=["--config", cfg], PGSCALE_LISTEN="[::]:%d" % port, wait=False)
    # (the fixture's readiness check reads /proc/net/tcp, not tcp6)
    wait_for(lambda: pg.is_running() and port_accepts(port), 10, what="pgscale listening")
    # the client connects over IPv4; the dual-stack socket sees ::ffff:127.0.0.1
    with pgwire.RawConn(LOCALHOST, pg.port) as c:
        msgs = c.login("app", "app", CLIENT_PW)
    errs = pgwire.errors(msgs)
    assert [(e["S"], e["C"]) for e in errs] == [("FATAL", "28000")], msgs
    assert "rejects connection" in errs[0]["M"], errs[0]
    assert "127.0.0.1" in errs[0]["M"] and "::ffff:" not in errs[0]["M"], errs[0]
    # the console is reached over IPv6 (::1, trusted) and shows IPv4 clients
    # by their IPv4 address: one held in the password exchange the IPv4
    # rule asks for
    held = pgwire.RawConn(LOCALHOST, pg.port)
    try:
        held.send(pgwire.startup_packet("waiter", "app"))
        t, payload = held.recv_msg()
        assert t == b"R" and payload[:4] == b"\x00\x00\x00\x0a", (t, payload)  # SASL
        console = psycopg2.connect(host="::1", port=pg.port, user="app", dbname="pgscale",
                                   connect_timeout=10)
        console.autocommit = True
        try:
            with console.cursor() as cur:
                cur.execute("SHOW CLIENTS")
                cols = [d[0] for d in cur.description]
                addrs = [dict(zip(cols, r))["addr"] for r in cur.fetchall()]
        finally:
            console.close()
    finally:
        held.close()
    assert "127.0.0.1" in addrs, addrs
    assert not any(a.startswith("::ffff:") for a in addrs), addrs
    assert "::ffff:" not in pg.stderr_text(), pg.stderr_text()[-2000:]


# -- 2. connections that never log in ----------------------------------------------------
def half_open(n, source=None, port=None):
    """n sockets that each sent half a startup packet and then wait."""
    socks = []
    half = pgwire.startup_packet("app", "app")[:10]
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source:
            s.bind((source, 0))
        s.settimeout(5)
        s.connect((LOCALHOST, port))
        try:
            s.sendall(half)
        except OSError:
            pass   # already refused: the point is that it cannot hold a slot
        socks.append(s)
    return socks


@pytest.mark.deadline(90)
def test_half_open_connections_do_not_lock_out_real_logins(pgscale):
    pg = pgscale(PGSCALE_MAX_CLIENT_CONN=100, PGSCALE_WORKERS=2)
    # from another loopback address than the real client's, as an attacker's
    # connections would be
    socks = half_open(500, source="127.0.0.2", port=pg.port)
    try:
        time.sleep(0.3)   # let pgscale accept them all
        t0 = time.monotonic()
        conn = psycopg2.connect(pg.dsn(connect_timeout=5))
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                assert cur.fetchone() == (1,)
        finally:
            conn.close()
        assert time.monotonic() - t0 < 1.0, "login took %.2f s" % (time.monotonic() - t0)
    finally:
        for s in socks:
            s.close()


def raw_from(source, port):
    """A RawConn whose socket comes from the loopback address `source`."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(5)
    s.connect((LOCALHOST, port))
    c = pgwire.RawConn.__new__(pgwire.RawConn)
    c.host, c.port, c.sock = LOCALHOST, port, s
    c.buf, c.eof, c.backend_key, c.params, c.notices = b"", False, None, {}, []
    return c


def login_clients(pg, source="127.0.0.4"):
    """SHOW LISTS' login_clients, asked from `source` (the address under
    test may be over its bound), not counting this console connection."""
    c = raw_from(source, pg.port)
    try:
        c.startup("app", "pgscale")
        rows = pgwire.data_rows(c.simple_query("SHOW LISTS"))
    finally:
        c.close()
    return int({r[0]: r[1] for r in rows}["login_clients"])


def test_per_address_bound_refuses_with_a_clear_error(pgscale):
    pg = pgscale(PGSCALE_MAX_PENDING_LOGINS_PER_ADDRESS=10)
    socks = half_open(10, source=LOCALHOST, port=pg.port)
    try:
        wait_for(lambda: login_clients(pg) >= 10, 10, what="10 half-open clients")
        # the 11th from the same address is refused, saying why
        c = raw_from(LOCALHOST, pg.port)
        try:
            c.send(pgwire.startup_packet("app", "app"))
            errs = pgwire.errors(c.read_until_close(timeout=5))
        finally:
            c.close()
        assert [(e["S"], e["C"]) for e in errs] == [("FATAL", "53300")], errs
        assert "127.0.0.1" in errs[0]["M"] and "still logging in" in errs[0]["M"], errs[0]
        assert "PGSCALE_MAX_PENDING_LOGINS_PER_ADDRESS" in errs[0].get("H", ""), errs[0]
        # libpq, which asks for TLS first by default, shows the same message
        with pytest.raises(psycopg2.OperationalError) as exc:
            psycopg2.connect(pg.dsn(connect_timeout=5)).close()
        assert errs[0]["M"] in str(exc.value), str(exc.value)
        # one that says nothing is told anyway, and closed, within a second or so
        c = raw_from(LOCALHOST, pg.port)
        try:
            errs = pgwire.errors(c.read_until_close(timeout=5))
        finally:
            c.close()
        assert [(e["S"], e["C"]) for e in errs] == [("FATAL", "53300")], errs
        # another address logs in normally
        c = raw_from("127.0.0.4", pg.port)
        try:
            assert pgwire.ready_status(c.startup("app", "app")) == "I"
        finally:
            c.close()
    finally:
        for s in socks:
            s.close()


def test_connection_without_startup_packet_is_closed_after_startup_timeout(pgscale):
    pg = pgscale(PGSCALE_CLIENT_STARTUP_TIMEOUT="1s")
    with pgwire.RawConn(LOCALHOST, pg.port) as c:
        c.send(pgwire.startup_packet("app", "app")[:10])
        t0 = time.monotonic()
        errs = pgwire.errors(c.read_until_close(timeout=10))
        took = time.monotonic() - t0
    assert [(e["S"], e["C"]) for e in errs] == [("FATAL", "08006")], errs
    assert "startup packet" in errs[0]["M"], errs[0]
    assert took < 5, took


# -- 3. log injection ----------------------------------------------------------------------
FORGED = "2026-01-01 00:00:00.000 UTC ERROR forged"


def test_newline_in_user_name_does_not_forge_a_log_line(pgscale, tmp_path):
    hba = """auth:
  type: trust
  hba:
    - {type: host, database: all, user: all, address: 127.0.0.1/32, method: reject}
"""
    pg = pgscale(args=["--config", write(tmp_path, "pgscale.yaml", hba)])
    for user, db, app in (("evil\n" + FORGED, "app", "x"),
                          ("app", "db\r\n" + FORGED, "x"),
                          ("app", "app", "a\n" + FORGED)):
        with pgwire.RawConn(LOCALHOST, pg.port) as c:
            c.send(pgwire.startup_packet(user, db, application_name=app))
            c.read_until_close(timeout=5)
    # the refusal is logged with the names in it
    wait_for(lambda: pg.stderr_text().count("rejects connection") >= 3, 5,
             what="three refusals logged")
    lines = pg.stderr_text().splitlines()
    assert not [ln for ln in lines if ln.startswith("2026-01-01")], lines[-20:]
    assert not [ln for ln in lines if "forged" in ln and not re.match(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC \w+ ", ln)], lines[-20:]
    assert any("evil\\n2026-01-01" in ln for ln in lines), lines[-20:]


# -- 5. The Unix socket's permissions, and secrets out of reach of the same OS user ----------
def _as_postgres_psql(sockdir, port, sql="SELECT 1"):
    """psql run as the OS user postgres (another user than pgscale's) over the socket."""
    return subprocess.run(
        ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--clear-groups",
         "psql", "-X", "-w", "-At", "-h", sockdir, "-p", str(port), "-U", "app", "-d", "app",
         "-c", sql],
        capture_output=True, text=True, timeout=30, env=client_env(), cwd="/tmp",
        stdin=subprocess.DEVNULL)


def _start_with_socket(pgscale, tmp_path, extra=""):
    port = free_port()
    sockdir = tempfile.mkdtemp(prefix="pgs-", dir="/tmp")  # socket paths must be short
    os.chmod(sockdir, 0o755)
    cfg = write(tmp_path, "pgscale.yaml", "listen:\n  - 127.0.0.1:%d\n  - unix:%s\n%s" % (
        port, sockdir, extra))
    pg = pgscale(args=["--config", cfg], wait=False, PGSCALE_LISTEN=None)
    pg.port = port
    wait_for(lambda: port_accepts(port) or not pg.is_running(), 10, what="pgscale to listen")
    assert pg.is_running(), pg.stderr_text()[-2000:]
    # the TCP port may open (another worker) before the socket is listening
    wait_for(lambda: _accepts_unix(os.path.join(sockdir, ".s.PGSQL.%d" % port)), 10,
             what="the Unix socket to accept")
    return pg, port, sockdir


def _accepts_unix(path):
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another OS user")
def test_unix_socket_is_closed_to_other_os_users_by_default(pgscale, tmp_path):
    pg, port, sockdir = _start_with_socket(pgscale, tmp_path)
    try:
        st = os.stat(os.path.join(sockdir, ".s.PGSQL.%d" % port))
        assert stat.S_IMODE(st.st_mode) == 0o700, oct(st.st_mode)
        r = _as_postgres_psql(sockdir, port)
        assert r.returncode != 0 and "Permission denied" in r.stderr, (r.stdout, r.stderr)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another OS user")
def test_unix_socket_group_and_permissions_open_it_to_a_group(pgscale, tmp_path):
    pg, port, sockdir = _start_with_socket(
        pgscale, tmp_path, 'unix_socket_group: postgres\nunix_socket_permissions: "0770"\n')
    try:
        st = os.stat(os.path.join(sockdir, ".s.PGSQL.%d" % port))
        assert stat.S_IMODE(st.st_mode) == 0o770, oct(st.st_mode)
        assert st.st_gid == grp.getgrnam("postgres").gr_gid
        # a member of the group reaches pgscale (and then authenticates as
        # any client does: the server's answer, not a permission error)
        r = subprocess.run(
            ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups",
             "psql", "-X", "-w", "-At", "-h", sockdir, "-p", str(port), "-U", "app", "-d",
             "app", "-c", "SELECT 'in'"],
            capture_output=True, text=True, timeout=30, env=client_env(), cwd="/tmp",
            stdin=subprocess.DEVNULL)
        assert "Permission denied" not in r.stderr, r.stderr
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_unknown_unix_socket_group_stops_the_start_with_a_clear_error(pgscale, tmp_path):
    port = free_port()
    sockdir = tempfile.mkdtemp(prefix="pgs-", dir="/tmp")
    try:
        cfg = write(tmp_path, "pgscale.yaml", "listen:\n  - 127.0.0.1:%d\n  - unix:%s\n"
                    "unix_socket_group: no-such-group-here\n" % (port, sockdir))
        pg = pgscale(args=["--config", cfg], wait=False, PGSCALE_LISTEN=None)
        assert pg.wait_exit(10) not in (None, 0)
        assert 'unix_socket_group "no-such-group-here" is not a group' in pg.stderr_text()
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run pgscale as another OS user")
@pytest.mark.parametrize("allow", [False, True], ids=["default", "allow_core_dumps"])
def test_same_os_user_cannot_read_secrets_from_proc_unless_dumps_are_allowed(
        pgscale, tmp_path, allow):
    """The attack: another process of pgscale's own OS user reads DATABASE_URL's
    password from /proc/<pid>/environ (or attaches a debugger, or makes it
    dump core).  pgscale is not dumpable unless allow_core_dumps is on."""
    env = {"PGSCALE_ALLOW_CORE_DUMPS": "on"} if allow else {}
    pg = pgscale(prefix=["setpriv", "--reuid", "postgres", "--regid", "postgres",
                         "--clear-groups"], **env)
    pid = pg.pid
    r = subprocess.run(
        ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--clear-groups",
         "cat", "/proc/%d/environ" % pid],
        capture_output=True, timeout=10, cwd="/tmp", stdin=subprocess.DEVNULL)
    if allow:
        assert r.returncode == 0 and b"DATABASE_URL=" in r.stdout, r.stderr
    else:
        assert r.returncode != 0 and b"DATABASE_URL" not in r.stdout, r.stdout[:200]
        assert b"Permission denied" in r.stderr, r.stderr
    # pgscale still serves clients either way
    with pgwire.RawConn(LOCALHOST, pg.port) as c:
        msgs = c.login("app", "app", APP_PASSWORD)
        assert not pgwire.errors(msgs), msgs


def test_key_table_is_left_out_of_core_dumps(pgscale):
    pg = pgscale(PGSCALE_ALLOW_CORE_DUMPS="on")
    if is_sanitized(pg.pid):
        pytest.skip("sanitizers mark their own mappings MADV_DONTDUMP")
    with open("/proc/%d/smaps" % pg.pid) as f:
        flags = [line.split()[1:] for line in f if line.startswith("VmFlags:")]
    # (the kernel's read-only [vvar] pages are always "dd"; the key table is
    # the writable one)
    assert any("dd" in fl and "wr" in fl for fl in flags), "no writable mapping is do-not-dump"
