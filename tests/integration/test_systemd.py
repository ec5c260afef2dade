"""Running under systemd: the sd_notify messages pgscale sends to the socket
named by NOTIFY_SOCKET (READY=1 once clients are served, RELOADING=1 and
READY=1 around a reload with its outcome in STATUS, STOPPING=1 on SIGTERM,
WATCHDOG=1 only while every worker answers), read here from a real
AF_UNIX datagram socket as systemd's would; `systemd-analyze verify` on the
unit file shipped in packaging/systemd, and its example .env file."""
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import pytest

from conftest import PGSCALE_BIN
from helpers import LOCALHOST, free_port, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT = REPO_ROOT / "packaging" / "systemd" / "pgscale.service"


class NotifySocket:
    """The service manager's end: one datagram per sd_notify() call, each a
    list of KEY=VALUE lines."""

    def __init__(self):
        # a short directory of its own: a socket path is at most 107 bytes
        self.dir = tempfile.mkdtemp(prefix="pgs-notify-")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []   # every message received, in order

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _read(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return None
        fields = {}
        for line in data.decode("utf-8", "replace").split("\n"):
            if "=" in line:
                k, v = line.split("=", 1)
                fields[k] = v
        self.messages.append(fields)
        return fields

    def wait(self, key, value="1", timeout=30, what=None):
        """The next message (after those already read) that has key=value."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail("no %s=%s from pgscale within %d s (%s); messages so far: %r"
                            % (key, value, timeout, what or "", self.messages))
            m = self._read(min(left, 1.0))
            if m is not None and m.get(key) == value:
                return m


@pytest.fixture
def notify():
    n = NotifySocket()
    yield n
    n.close()


def _select_1(pg):
    conn = psycopg2.connect(pg.dsn())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone()[0]
    finally:
        conn.close()


def _start(pgscale, notify, **kw):
    return pgscale(wait=False, NOTIFY_SOCKET=notify.path, **kw)


@pytest.mark.deadline(60)
def test_ready_is_sent_when_a_client_can_already_run_a_query(pgscale, notify):
    pg = _start(pgscale, notify)
    ready = notify.wait("READY", what="start-up")
    # at this very moment, without waiting for anything else
    assert _select_1(pg) == 1
    assert ready.get("STATUS") == "accepting connections on %s:%d" % (LOCALHOST, pg.port), ready
    assert pg.is_running()
    # READY=1 is the first thing said: nothing about reloading or stopping before it
    assert notify.messages[0].get("READY") == "1", notify.messages


@pytest.mark.deadline(60)
@pytest.mark.parametrize("how", ["SIGHUP", "RELOAD"])
def test_reload_sends_reloading_with_monotonic_time_then_ready(pgscale, notify, tmp_path, how):
    cfg = tmp_path / "pgscale.yaml"
    cfg.write_text("pool_size: 3\nmax_overflow: 0\n")
    pg = _start(pgscale, notify, args=["--config", str(cfg)])
    notify.wait("READY", what="start-up")
    assert _select_1(pg) == 1
    assert int(pg.pool()["max_total"]) == 3
    cfg.write_text("pool_size: 5\nmax_overflow: 0\n")
    before = time.monotonic_ns() // 1000
    if how == "SIGHUP":
        pg.signal(signal.SIGHUP)
    else:
        pg.admin("RELOAD")
    reloading = notify.wait("RELOADING", what=how)
    after = time.monotonic_ns() // 1000
    # CLOCK_MONOTONIC, the clock Python's monotonic() reads on Linux
    assert re.fullmatch(r"\d+", reloading.get("MONOTONIC_USEC", "")), reloading
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after, (before, reloading, after)
    done = notify.wait("READY", what="the end of the reload")
    # "SIGHUP: ..." or "RELOAD by C-2 (user app): ...", as in the log
    assert re.fullmatch(r"%s.*: configuration reloaded; accepting connections on %s:%d"
                        % (how, re.escape(LOCALHOST), pg.port), done.get("STATUS", "")), done
    # READY=1 comes once the new configuration is in effect
    assert int(pg.pool()["max_total"]) == 5
    assert _select_1(pg) == 1


@pytest.mark.deadline(60)
def test_refused_reload_names_the_error_in_status_and_keeps_serving(pgscale, notify, tmp_path):
    cfg = tmp_path / "pgscale.yaml"
    cfg.write_text("pool_size: 3\nmax_overflow: 0\n")
    pg = _start(pgscale, notify, args=["--config", str(cfg)])
    notify.wait("READY", what="start-up")
    cfg.write_text("pool_size: 5\npoolsize: 6\n")
    pg.signal(signal.SIGHUP)
    notify.wait("RELOADING", what="SIGHUP")
    done = notify.wait("READY", what="the end of the refused reload")
    status = done.get("STATUS", "")
    assert status.startswith("SIGHUP: reload refused: "), done
    assert "%s:2:" % cfg in status and "poolsize" in status and "unknown key" in status, status
    assert status.endswith("accepting connections on %s:%d" % (LOCALHOST, pg.port)), status
    assert "\n" not in status
    assert pg.is_running()
    assert _select_1(pg) == 1
    assert int(pg.pool()["max_total"]) == 3    # the running configuration stayed


@pytest.mark.deadline(60)
def test_sigterm_sends_stopping_and_the_clients_left_while_draining(pgscale, notify):
    pg = _start(pgscale, notify, PGSCALE_SHUTDOWN_TIMEOUT=5)
    notify.wait("READY", what="start-up")
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT 1")
    pg.connect()   # idle: disconnected at once by the drain
    pg.signal(signal.SIGTERM)
    stopping = notify.wait("STOPPING", what="SIGTERM")
    status = stopping.get("STATUS", "")
    assert re.fullmatch(r"draining 2 clients \(no new ones; up to 5000 ms for their "
                        r"transactions to finish\)", status), stopping
    # the count falls as the drain goes on
    notify.wait("STATUS", "draining 1 client", what="the idle client's disconnection")
    # the open transaction ends: the drain is over and pgscale exits
    with conn.cursor() as cur:
        cur.execute("COMMIT")
    assert pg.wait_exit(30) == 0, pg.stderr_text()[-3000:]
    assert not any(m.get("READY") for m in notify.messages[notify.messages.index(stopping):])


@pytest.mark.deadline(60)
def test_watchdog_pings_while_the_workers_answer(pgscale, notify):
    pg = _start(pgscale, notify, WATCHDOG_USEC=1500000, PGSCALE_WORKERS=2)
    notify.wait("READY", what="start-up")
    t0 = time.monotonic()
    for _ in range(3):
        notify.wait("WATCHDOG", timeout=10, what="a watchdog ping")
    # every 500 ms (a third of WATCHDOG_USEC): 3 pings in well under 10 s
    assert time.monotonic() - t0 < 10
    assert "watchdog: telling systemd every 500 ms" in pg.stderr_text()
    assert _select_1(pg) == 1


PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT, __WALL = 17, 0x4206, 0x4207, 0x40000000


def _thread_named(pid, name):
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                if f.read().strip() == name:
                    return int(tid)
        except OSError:
            pass
    return None


@pytest.mark.deadline(60)
def test_watchdog_stops_pinging_while_a_worker_is_stuck(pgscale, notify):
    """One worker thread stopped (ptrace stops that thread alone, the others
    and the main thread run on): the pings stop until it runs again."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    # dumpable, so that the test may trace it without CAP_SYS_PTRACE
    pg = _start(pgscale, notify, WATCHDOG_USEC=1500000, PGSCALE_WORKERS=2,
                PGSCALE_ALLOW_CORE_DUMPS="on")
    notify.wait("READY", what="start-up")
    notify.wait("WATCHDOG", timeout=10, what="a first watchdog ping")
    # the worker names itself when its thread starts
    tid = wait_for(lambda: _thread_named(pg.pid, "pgs-worker-1"), 10, what="pgs-worker-1")
    if libc.ptrace(PTRACE_SEIZE, tid, None, None) != 0:
        pytest.skip("ptrace is not allowed here: %s" % os.strerror(ctypes.get_errno()))
    try:
        assert libc.ptrace(PTRACE_INTERRUPT, tid, None, None) == 0, os.strerror(ctypes.get_errno())
        os.waitpid(tid, __WALL)
        # A tick finds the worker's acknowledgement missing and says so;
        # from then on every tick does (pings sent before are read and
        # dropped here), and not one ping goes out.
        warning = "watchdog: a worker has not answered within 500 ms"
        wait_for(lambda: warning in pg.stderr_text(), 20, what="the watchdog's warning")
        while notify._read(0.01) is not None:
            pass
        notify.messages.clear()
        until = time.monotonic() + 2.5
        while time.monotonic() < until:
            notify._read(0.2)
        assert not [m for m in notify.messages if m.get("WATCHDOG")], notify.messages
        assert pg.stderr_text().count(warning) >= 3, pg.stderr_text()[-3000:]
    finally:
        libc.ptrace(PTRACE_DETACH, tid, None, None)
    notify.wait("WATCHDOG", timeout=10, what="the pings to resume")
    assert _select_1(pg) == 1


def test_no_notify_socket_changes_nothing(pgscale):
    pg = pgscale(NOTIFY_SOCKET=None, WATCHDOG_USEC=None)
    assert _select_1(pg) == 1
    assert "watchdog" not in pg.stderr_text()


@pytest.mark.deadline(60)
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: scripts/install-deps.sh installs it (systemd)")
    # verify checks that ExecStart's binary exists and is executable: the
    # unit as shipped, pointed at the binary under test
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/pgscale " in text
    unit = tmp_path / "pgscale.service"
    unit.write_text(text.replace("/usr/local/bin/pgscale", str(PGSCALE_BIN.resolve())))
    r = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                       text=True, timeout=50)
    out = r.stdout + r.stderr
    # an unknown key or a bad value is only a warning (exit status 0) that
    # names the file and line
    assert r.returncode == 0, out
    problems = [ln for ln in out.splitlines() if "pgscale.service" in ln]
    assert not problems, out


def _filter_set(analyze, group, seen):
    """The system calls of a systemd-analyze group, nested groups expanded."""
    out = subprocess.run([analyze, "syscall-filter", group], capture_output=True, text=True,
                         timeout=20).stdout
    names = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if item.startswith("@"):
            if item not in seen:
                seen.add(item)
                names |= _filter_set(analyze, item, seen)
        else:
            names.add(item)
    return names


@pytest.mark.deadline(90)
def test_system_calls_stay_within_the_units_filter(pgscale, notify, redis, primary, tmp_path):
    """pgscale traced while it starts, serves clients (the result cache on,
    with Redis, so that the monitor's, the catalog's and Redis's connections
    are made too), answers the HTTP listener, reloads, pings the watchdog
    and drains: every system call is one the unit's SystemCallFilter
    allows, every socket of a family its RestrictAddressFamilies allows, and
    no memory is writable and executable at once (MemoryDenyWriteExecute).
    Not for sanitizer builds, whose runtime makes calls of its own."""
    binary = PGSCALE_BIN.read_bytes()
    if b"libasan.so" in binary or b"libtsan.so" in binary:
        pytest.skip("a sanitizer's runtime makes system calls of its own")
    analyze, strace = shutil.which("systemd-analyze"), shutil.which("strace")
    if analyze is None or strace is None:
        pytest.fail("systemd-analyze or strace is missing: scripts/install-deps.sh installs them")
    unit = UNIT.read_text()
    allowed, denied = set(), set()
    for m in re.finditer(r"^SystemCallFilter=(~?)(.*)$", unit, re.M):
        for item in m.group(2).split():
            calls = _filter_set(analyze, item, set()) if item.startswith("@") else {item}
            (denied if m.group(1) else allowed).update(calls)
    allowed -= denied
    assert "sendmsg" in allowed and "setuid" not in allowed, "filter not read from the unit"
    families = set(re.search(r"^RestrictAddressFamilies=(.*)$", unit, re.M).group(1).split())
    assert "MemoryDenyWriteExecute=yes" in unit

    trace = tmp_path / "strace.txt"
    http = free_port()
    pg = pgscale(prefix=[strace, "-f", "-qq", "-o", str(trace), "--"], NOTIFY_SOCKET=notify.path,
                 WATCHDOG_USEC=900000, PGSCALE_HTTP_LISTEN="%s:%d" % (LOCALHOST, http),
                 PGSCALE_CACHE="on", REDIS_URL=redis.url())
    primary.app_execute("CREATE TABLE IF NOT EXISTS systemd_filter (v int)")
    notify.wait("READY", what="start-up")
    # strace's child; the fixture's SIGINT at teardown would reach strace only
    with open("/proc/%d/task/%d/children" % (pg.pid, pg.pid)) as f:
        child = int(f.read().split()[0])
    try:
        conn = pg.connect()
        with conn.cursor() as cur:
            for i in range(3):   # a miss, then hits (in-process, then from Redis)
                cur.execute("SELECT count(*) FROM systemd_filter")
                cur.fetchall()
            cur.execute("INSERT INTO systemd_filter VALUES (1)")
        pg.close_clients()
        for path in ("/metrics", "/api/status", "/healthz", "/"):
            try:
                urllib.request.urlopen("http://%s:%d%s" % (LOCALHOST, http, path),
                                       timeout=10).read()
            except urllib.error.HTTPError:
                pass   # /healthz may say 503; it answered
        pg.admin("RELOAD")
        os.kill(child, signal.SIGHUP)
        notify.wait("RELOADING", what="SIGHUP")
        notify.wait("WATCHDOG", timeout=10, what="a watchdog ping")
        os.kill(child, signal.SIGTERM)
        notify.wait("STOPPING", what="SIGTERM")
        assert pg.wait_exit(30) == 0, pg.stderr_text()[-3000:]
    finally:
        if pg.wait_exit(0.1) is None:
            os.kill(child, signal.SIGKILL)

    used, socket_families, wx = set(), set(), []
    for line in trace.read_text().splitlines():
        m = re.match(r"\d+\s+(?:<\.\.\. )?([a-z0-9_]+)\(", line)
        if m:
            used.add(m.group(1))
        m = re.search(r"\bsocket\((AF_[A-Z0-9]+)", line)
        if m:
            socket_families.add(m.group(1))
        if re.search(r"PROT_WRITE\|PROT_EXEC|PROT_EXEC\|PROT_WRITE|mprotect\(.*PROT_EXEC", line):
            wx.append(line)
    assert {"accept4", "sendmsg", "epoll_wait"} <= used, sorted(used)
    assert not used - allowed, "system calls the unit's filter refuses: %s" % sorted(used - allowed)
    assert socket_families <= families, socket_families
    assert not wx, wx


@pytest.mark.deadline(30)
def test_example_env_file_passes_check_config():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PGSCALE_", "DB_", "PG")) and k not in ("DATABASE_URL",
                                                                          "READ_REPLICA_URLS")}
    r = subprocess.run([str(PGSCALE_BIN), "--env-file", str(UNIT.parent / "pgscale.env"),
                        "--check-config"], env=env, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    conf = dict(ln.split(" = ", 1) for ln in r.stdout.splitlines() if " = " in ln)
    assert conf["PGSCALE_LISTEN"] == "127.0.0.1:6432", conf
    assert conf["PGSCALE_SHUTDOWN_TIMEOUT"] == "30s", conf
    # the unit leaves pgscale time to drain on its own before it kills it
    stop = re.search(r"^TimeoutStopSec=(\d+)s$", UNIT.read_text(), re.M)
    assert stop and int(stop.group(1)) > 30, UNIT.read_text()
