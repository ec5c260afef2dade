"""Integration tests for pgscale: real PostgreSQL 15, real clients.

Run everything (from the repository root, after `make`):

    /usr/bin/python3 -B -m pytest -p no:cacheprovider tests/integration

Run one file or one test:

    /usr/bin/python3 -B -m pytest tests/integration/test_pooling.py
    /usr/bin/python3 -B -m pytest tests/integration/test_pooling.py::test_pool_timeout_returns_53300_naming_the_setting

(`-B` and `-p no:cacheprovider` keep pytest from writing into the tree;
tests/integration/pytest.ini adds the latter by itself.)

What the fixtures do:
- `primary` (session): ONE PostgreSQL 15 server for the whole run: initdb in a
  temp dir, a free port on 127.0.0.1, scram-sha-256 for user `app`
  (password `secret`, owns database `app`), md5 for `md5user` (`md5secret`),
  trust for `postgres`.  Stopped at the end (try/finally + atexit; its
  postmaster also gets SIGINT if this process dies, via setpriv --pdeathsig).
  The temp dir is removed when every test passed and kept (path printed)
  otherwise; postgresql.log and the pgscale-*.log files are in it.
- `pgscale` (function): a factory.  `pg = pgscale(DB_POOL_SIZE=3, ...)` starts
  build/pgscale (or $PGSCALE_BIN) with DATABASE_URL pointing at the primary,
  PGSCALE_LISTEN on a free port, DB_POOL_TIMEOUT=10 unless given, waits until
  it listens (10 s; fails with its stderr if it exits) and stops it (SIGINT,
  then SIGKILL) at teardown.  A keyword set to None unsets the variable.
- `primary_ctl` (function): the primary, restarted at teardown if a test
  stopped it.  Tests that stop it live in test_faults.py, which runs last.
- `replicas` (session, started only when a test asks for it): two streaming
  replicas of `primary` (pg_basebackup -R), each on a free port with its own
  socket directory under the primary's temp dir; `replicas.urls()` gives
  their URLs for READ_REPLICA_URLS, `replicas[i]` a Replica (a Primary with
  the same helpers).  `replicas_ctl` (function): the same, and at teardown
  every replica is running again, without apply delay and caught up --
  tests that stop, kill or delay a replica use it: `stop(i)`, `start(i)`,
  `kill(i)`, `set_apply_delay(i, ms)`, `wait_replayed(i=None)`.
- `redis` (function): a redis-server of the test's own on a free port, no
  persistence; `redis.url()` for REDIS_URL, `redis.cli("GET", key)`,
  `redis.stop()` and `redis.start()` (same port, empty again).
- Every test has a deadline (default 120 s, `@pytest.mark.deadline(N)`): when
  it passes, pgscale is SIGKILLed so that any client blocked on it returns,
  and the test fails saying so.  Clients use their own timeouts as well.
- When a test fails, the tail of each pgscale's stderr and the primary's log
  lines written during the test are attached to the report.

- With PGSCALE_BIN set to a sanitizer build (`make integration-asan`,
  `make integration-tsan`), any report in a pgscale's output fails the test
  that ran it: AddressSanitizer, UBSan, a LeakSanitizer report at exit, a
  ThreadSanitizer warning.  The factory then waits up to 20 s (not 5) for
  pgscale to exit after SIGINT, so that the leak check at exit can run.

Set PGSCALE_IT_KEEP=1 to keep the temp dir even when everything passed.
"""
import atexit
import faulthandler
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

sys.dont_write_bytecode = True  # test modules and helpers: no __pycache__ in the tree

import psycopg2  # noqa: E402
import psycopg2.extras  # noqa: E402
import pytest  # noqa: E402

from helpers import (APP_DB, APP_PASSWORD, APP_USER, LOCALHOST, MD5_PASSWORD,  # noqa: E402
                     MD5_USER, free_port, port_accepts, stop_process)

REPO_ROOT = Path(__file__).resolve().parents[2]
PGSCALE_BIN = Path(os.environ.get("PGSCALE_BIN", str(REPO_ROOT / "build" / "pgscale")))
PG_BINDIR = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))

OBSERVER_APPNAME = "it-observer"
# What AddressSanitizer, LeakSanitizer (at exit), UBSan and ThreadSanitizer
# print when they find something.
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                     "LeakSanitizer has encountered a fatal error", "runtime error:",
                     "WARNING: ThreadSanitizer", "ERROR: ThreadSanitizer")
# A sanitizer build exits more slowly (the leak check runs at exit); stop()
# waits longer for it before SIGKILL, which would lose that report.
STOP_TIMEOUT = 20 if "PGSCALE_BIN" in os.environ else 5
DEFAULT_DEADLINE = 120

# Every pgscale process started by the factory that may still be running, so
# that the deadline watchdog can kill them from its thread.
_LIVE_PGSCALES = set()
_LIVE_LOCK = threading.Lock()


# --------------------------------------------------------------------------
# PostgreSQL primary
# --------------------------------------------------------------------------
class Primary:
    """One PostgreSQL 15 server in a temp dir, run as user postgres when root."""

    def __init__(self, basedir):
        self.basedir = Path(basedir)
        self.datadir = self.basedir / "data"
        self.sockdir = self.basedir / "sock"
        self.logfile = self.basedir / "postgresql.log"
        self.host = LOCALHOST
        self.port = free_port()
        self.proc = None
        self._logfh = None
        self._cleaned = False

    # -- process control -------------------------------------------------
    @staticmethod
    def _wrap(argv, pdeathsig=None):
        """initdb/postgres refuse to run as root: drop to user postgres."""
        pre = []
        if os.geteuid() == 0:
            pre = ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups"]
        if pdeathsig:
            pre = (pre or ["setpriv"]) + ["--pdeathsig", pdeathsig]
        return pre + (["--"] if pre else []) + [str(a) for a in argv]

    def init(self):
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.basedir, pw.pw_uid, pw.pw_gid)
        self.sockdir.mkdir()
        if os.geteuid() == 0:
            os.chown(self.sockdir, pw.pw_uid, pw.pw_gid)
        r = subprocess.run(
            self._wrap([PG_BINDIR / "initdb", "-D", self.datadir, "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]),
            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError("initdb failed (rc=%d):\n%s\n%s" % (r.returncode, r.stdout, r.stderr))
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("""
# --- pgscale integration tests ---
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
max_connections = 300
password_encryption = 'scram-sha-256'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
logging_collector = off
log_destination = 'stderr'
log_line_prefix = '%%m [%%p] %%q%%u@%%d/%%a '
log_connections = on
log_min_messages = warning
lc_messages = 'C'
wal_keep_size = '256MB'
""" % (self.port, self.sockdir))
        with open(self.datadir / "pg_hba.conf", "w") as f:
            f.write("""# pgscale integration tests
local   all  postgres                 trust
local   all  peeruser                 peer map=pgscale
local   all  trustuser                trust
local   all  app                      scram-sha-256
local   all  md5user                  md5
local   all  sockpw                   password
local   all  all                      scram-sha-256
host    all  postgres  127.0.0.1/32   trust
host    all  app       127.0.0.1/32   scram-sha-256
host    all  md5user   127.0.0.1/32   md5
host    all  pwuser    127.0.0.1/32   password
host    all  all       127.0.0.1/32   scram-sha-256
local   replication  postgres         trust
host    replication  postgres  127.0.0.1/32  trust
""")
        # peer authentication over the socket: the OS user that runs the
        # tests (and pgscale) may log in as database user peeruser
        with open(self.datadir / "pg_ident.conf", "a") as f:
            f.write("pgscale  %s  peeruser\n" % pwd.getpwuid(os.geteuid()).pw_name)

    def start(self, timeout=60):
        assert not self.is_running(), "primary already running"
        self._logfh = open(self.logfile, "ab")
        self.proc = subprocess.Popen(
            self._wrap([PG_BINDIR / "postgres", "-D", self.datadir], pdeathsig="INT"),
            stdout=self._logfh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("postgres exited with rc=%s at start; log tail:\n%s"
                                   % (self.proc.returncode, self.log_tail()))
            try:
                psycopg2.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError("postgres not ready after %d s; log tail:\n%s"
                                       % (timeout, self.log_tail()))
                time.sleep(0.1)

    def stop(self, timeout=30):
        """Fast shutdown (SIGINT); immediate (SIGQUIT), then SIGKILL if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
                try:
                    self.proc.send_signal(sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._logfh is not None:
            self._logfh.close()
            self._logfh = None

    def stop_immediate(self, timeout=30):
        """pg_ctl stop -m immediate: SIGQUIT to the postmaster, no checkpoint,
        no waiting for clients or standbys (a crash, as far as they can tell)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            self.proc.wait(timeout)
        self.stop()

    def is_running(self):
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self, keep=False):
        if self._cleaned:
            return
        self._cleaned = True
        self.stop()
        if keep or os.environ.get("PGSCALE_IT_KEEP"):
            sys.stderr.write("\npgscale-it: kept logs and data in %s\n" % self.basedir)
        else:
            shutil.rmtree(self.basedir, ignore_errors=True)

    def log_tail(self, lines=40, since=0):
        try:
            with open(self.logfile, "rb") as f:
                f.seek(since)
                data = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(data.splitlines()[-lines:])

    def log_size(self):
        try:
            return self.logfile.stat().st_size
        except OSError:
            return 0

    # -- connecting --------------------------------------------------------
    def dsn(self, user="postgres", db="postgres", password=None, application_name=OBSERVER_APPNAME):
        s = "host=%s port=%d user=%s dbname=%s connect_timeout=10 application_name=%s" % (
            self.host, self.port, user, db, application_name)
        if password is not None:
            s += " password=%s" % password
        return s

    def url(self, user=APP_USER, password=APP_PASSWORD, db=APP_DB, scheme="postgresql"):
        """DATABASE_URL for pgscale; user and password are percent-encoded."""
        return "%s://%s:%s@%s:%d/%s" % (scheme, quote(user, safe=""), quote(password, safe=""),
                                         self.host, self.port, db)

    def connect(self, user="postgres", db="postgres", password=None, autocommit=True, **kw):
        conn = psycopg2.connect(self.dsn(user, db, password), **kw)
        conn.autocommit = autocommit
        return conn

    def execute(self, sql, params=None, db="postgres", user="postgres", password=None):
        """Runs one statement directly on the primary; returns rows or None."""
        conn = self.connect(user, db, password)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    def app_execute(self, sql, params=None, db=APP_DB):
        """As `app` (owner of database app), bypassing pgscale."""
        return self.execute(sql, params, db=db, user=APP_USER, password=APP_PASSWORD)

    def backends(self, users=(APP_USER,), db=None):
        """Client backends of the given users (excluding this observer)."""
        sql = ("SELECT pid, datname, usename, application_name, state, query "
               "FROM pg_stat_activity WHERE backend_type = 'client backend' "
               "AND pid <> pg_backend_pid() AND usename = ANY(%s)")
        params = [list(users)]
        if db is not None:
            sql += " AND datname = %s"
            params.append(db)
        conn = self.connect()
        try:
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute(sql, params)
                return [dict(r) for r in cur.fetchall()]
        finally:
            conn.close()

    def bootstrap(self):
        self.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (APP_USER, APP_PASSWORD))
        self.execute("CREATE DATABASE %s OWNER %s" % (APP_DB, APP_USER))
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET password_encryption = 'md5'")
                cur.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (MD5_USER, MD5_PASSWORD))
        finally:
            conn.close()


@pytest.fixture(scope="session")
def primary(request):
    basedir = tempfile.mkdtemp(prefix="pgscale-it-")
    p = Primary(basedir)
    atexit.register(p.cleanup, True)
    try:
        p.init()
        p.start()
        p.bootstrap()
        yield p
    finally:
        p.cleanup(keep=request.session.testsfailed > 0)


class Replica(Primary):
    """A streaming replica of a Primary: pg_basebackup -R of it, on its own
    port and socket directory; the rest (start, stop, connecting) as Primary."""

    def __init__(self, basedir, source):
        super().__init__(basedir)
        self.source = source

    def init(self):
        self.basedir.mkdir()
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.basedir, pw.pw_uid, pw.pw_gid)
        self.sockdir.mkdir()
        if os.geteuid() == 0:
            os.chown(self.sockdir, pw.pw_uid, pw.pw_gid)
        r = subprocess.run(
            self._wrap([PG_BINDIR / "pg_basebackup", "-D", self.datadir, "-h", self.source.host,
                        "-p", self.source.port, "-U", "postgres", "-R", "-X", "stream",
                        "--no-sync", "-c", "fast"]),
            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError("pg_basebackup failed (rc=%d):\n%s\n%s"
                               % (r.returncode, r.stdout, r.stderr))
        # the primary's settings came along; the last line wins
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# --- replica ---\nport = %d\nunix_socket_directories = '%s'\n"
                    "hot_standby = on\nwal_receiver_status_interval = 1s\n"
                    # the name its WAL receiver gives the primary (for
                    # synchronous_standby_names and pg_stat_replication)
                    "cluster_name = '%s'\n"
                    % (self.port, self.sockdir, self.basedir.name))

    def start(self, timeout=60):
        # after a SIGKILL the old postmaster's children may hold its shared
        # memory for a moment: "pre-existing shared memory block is still in use"
        deadline = time.monotonic() + timeout
        while True:
            try:
                return super().start(timeout=max(1, deadline - time.monotonic()))
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                if self._logfh is not None:
                    self._logfh.close()
                    self._logfh = None
                time.sleep(0.5)

    def kill(self):
        """SIGKILL the postmaster (its children exit when they notice)."""
        if self.is_running():
            self.proc.kill()
            self.proc.wait(10)
        if self._logfh is not None:
            self._logfh.close()
            self._logfh = None

    def url(self, user=APP_USER, password=APP_PASSWORD, db=APP_DB, scheme="postgresql"):
        return super().url(user, password, db, scheme)

    def replay_lsn(self):
        return self.execute("SELECT pg_last_wal_replay_lsn()::text")[0][0]

    def apply_delay(self):
        return self.execute("SHOW recovery_min_apply_delay")[0][0]


class Replicas:
    """The session's replicas of the primary (see the module docstring)."""

    def __init__(self, primary, n=2):
        self.primary = primary
        self.nodes = [Replica(primary.basedir / ("replica%d" % (i + 1)), primary)
                      for i in range(n)]

    def __getitem__(self, i):
        return self.nodes[i]

    def __len__(self):
        return len(self.nodes)

    def setup(self):
        for r in self.nodes:
            r.init()
            r.start()
        self.wait_replayed()

    def urls(self, **kw):
        return [r.url(**kw) for r in self.nodes]

    def url_list(self, **kw):
        """READ_REPLICA_URLS."""
        return ",".join(self.urls(**kw))

    def stop(self, i):
        self.nodes[i].stop()

    def start(self, i):
        if not self.nodes[i].is_running():
            self.nodes[i].start()

    def kill(self, i):
        self.nodes[i].kill()

    def set_apply_delay(self, i, ms):
        """recovery_min_apply_delay on replica i (0: none), applied by a reload."""
        r = self.nodes[i]
        if ms:
            r.execute("ALTER SYSTEM SET recovery_min_apply_delay = '%dms'" % int(ms))
        else:
            r.execute("ALTER SYSTEM RESET recovery_min_apply_delay")
        r.execute("SELECT pg_reload_conf()")
        want = "%dms" % ms if ms else "0"
        wait_until = time.monotonic() + 10
        while True:
            got = r.apply_delay()
            if got == want or (ms and got.endswith("s") and self._same_delay(got, ms)):
                return
            if time.monotonic() > wait_until:
                raise RuntimeError("replica%d: recovery_min_apply_delay is %s, not %s"
                                   % (i + 1, got, want))
            time.sleep(0.05)

    @staticmethod
    def _same_delay(shown, ms):
        # SHOW prints it in the largest exact unit: 2000ms -> 2s
        units = (("ms", 1), ("s", 1000), ("min", 60000), ("h", 3600000))
        for unit, mult in sorted(units, key=lambda u: -len(u[0])):
            if shown.endswith(unit) and shown[:-len(unit)].isdigit():
                return int(shown[:-len(unit)]) * mult == ms
        return False

    def wait_replayed(self, i=None, timeout=30):
        """Until replica i (or each) has replayed the primary's current WAL position."""
        target = self.primary.execute("SELECT pg_current_wal_insert_lsn()::text")[0][0]
        for r in ([self.nodes[i]] if i is not None else self.nodes):
            deadline = time.monotonic() + timeout
            while True:
                try:
                    ok = r.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                   (target,))[0][0]
                except psycopg2.OperationalError:
                    ok = False
                if ok:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("%s has not replayed %s after %d s (at %s)"
                                       % (r.basedir.name, target, timeout, r.replay_lsn()))
                time.sleep(0.05)

    def restore(self):
        """Every replica running, undelayed and caught up (for the next test)."""
        for i, r in enumerate(self.nodes):
            if not r.is_running():
                r.start()
            if r.apply_delay() != "0":
                self.set_apply_delay(i, 0)
        self.wait_replayed()

    def cleanup(self):
        for r in self.nodes:
            r.stop()


@pytest.fixture(scope="session")
def replicas(primary):
    rs = Replicas(primary)
    atexit.register(rs.cleanup)
    try:
        rs.setup()
        yield rs
    finally:
        rs.cleanup()


@pytest.fixture
def replicas_ctl(replicas):
    """The replicas, for tests that stop, kill or delay them; restored after."""
    yield replicas
    replicas.restore()


@pytest.fixture
def primary_ctl(primary):
    """The primary, for tests that stop it; running again after the test."""
    yield primary
    if not primary.is_running():
        primary.start()


# --------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------
class RedisServer:
    """A redis-server on a free port of 127.0.0.1 in a temp dir, without
    persistence (--save '' --appendonly no); stop() and start() again keep
    the port (and, like a real restart without persistence, lose the data)."""

    def __init__(self, basedir):
        self.basedir = Path(basedir)
        self.port = free_port()
        self.proc = None
        self._logfh = None

    def url(self, db=0):
        return "redis://%s:%d/%d" % (LOCALHOST, self.port, db)

    def start(self, timeout=15):
        assert self.proc is None or self.proc.poll() is not None, "redis already running"
        self._logfh = open(self.basedir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "INT", "--", "redis-server", "--bind", LOCALHOST,
             "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.basedir), "--daemonize", "no"],
            stdout=self._logfh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited with rc=%s at start; see %s"
                                   % (self.proc.returncode, self.basedir / "redis.log"))
            try:
                if self.cli("PING") == "PONG":
                    return
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server not answering PING after %d s" % timeout)
            time.sleep(0.05)

    def stop(self):
        stop_process(self.proc)
        if self._logfh is not None:
            self._logfh.close()
            self._logfh = None

    def cli(self, *args):
        """One redis-cli command; its reply as text (nil: None)."""
        r = subprocess.run(["redis-cli", "-h", LOCALHOST, "-p", str(self.port)] +
                           [str(a) for a in args], capture_output=True, text=True, timeout=10,
                           stdin=subprocess.DEVNULL)
        out = r.stdout.strip()
        if r.returncode != 0 or out.startswith(("Could not connect", "ERR ")):
            raise RuntimeError("redis-cli %s: %s %s" % (" ".join(map(str, args)), out, r.stderr))
        return out or None


@pytest.fixture
def redis(tmp_path_factory):
    """A Redis of the test's own (see RedisServer), stopped at teardown."""
    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


# --------------------------------------------------------------------------
# pgscale
# --------------------------------------------------------------------------
class Pgscale:
    def __init__(self, env, args, logpath, port, prefix=()):
        self.env = env
        self.args = list(args)
        self.prefix = [str(a) for a in prefix]
        self.logpath = Path(logpath)
        self.host = LOCALHOST
        self.port = port
        self.proc = None
        self._logfh = None
        self._clients = []
        self.killed_at_stop = False   # SIGINT did not stop it within the timeout

    # -- process -----------------------------------------------------------
    def start(self):
        if not PGSCALE_BIN.exists():
            pytest.fail("%s does not exist: build it with `make` first" % PGSCALE_BIN)
        self._logfh = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "--", *self.prefix, str(PGSCALE_BIN), *self.args],
            env=self.env, stdout=self._logfh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        with _LIVE_LOCK:
            _LIVE_PGSCALES.add(self)

    def _listening(self):
        """True once a socket listens on 127.0.0.1:port (read from /proc, so
        that readiness probes do not show up as clients in SHOW CLIENTS)."""
        want = ":%04X" % self.port
        try:
            with open("/proc/net/tcp") as f:
                for line in f.readlines()[1:]:
                    parts = line.split()
                    if parts[1].endswith(want) and parts[3] == "0A" and \
                            parts[1].split(":")[0] in ("0100007F", "00000000"):
                        return True
        except OSError:
            return port_accepts(self.port)
        return False

    def wait_ready(self, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail("pgscale exited with rc=%s before accepting connections; output:\n%s"
                            % (self.proc.returncode, self.stderr_text()[-5000:]))
            if self._listening():
                return self
            if time.monotonic() > deadline:
                pytest.fail("pgscale did not listen on port %d within %d s; output:\n%s"
                            % (self.port, timeout, self.stderr_text()[-5000:]))
            time.sleep(0.05)

    def wait_exit(self, timeout):
        """Return code, or None if still running after timeout."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def is_running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
        except OSError:
            pass

    def stop(self, timeout=STOP_TIMEOUT):
        self.close_clients()
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed_at_stop = True
                self.proc.kill()
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.wait(10)
        with _LIVE_LOCK:
            _LIVE_PGSCALES.discard(self)
        if self._logfh is not None:
            self._logfh.close()
            self._logfh = None

    def stderr_text(self):
        try:
            return self.logpath.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- clients -----------------------------------------------------------
    def dsn(self, user=APP_USER, db=APP_DB, **params):
        """libpq DSN through pgscale.  As `app` it carries the application's
        password (DATABASE_URL's, which pgscale checks by default) unless the
        test passes password=... itself; other users pass their own."""
        if user == APP_USER and "password" not in params:
            params["password"] = APP_PASSWORD
        s = "host=%s port=%d user=%s dbname=%s connect_timeout=10" % (self.host, self.port, user, db)
        for k, v in params.items():
            v = str(v)
            if not v.startswith("'") and (not v or any(ch in v for ch in " '\\")):
                # libpq's quoting (a password may hold spaces and quotes); a
                # value the caller quoted itself is passed as it is
                v = "'%s'" % v.replace("\\", "\\\\").replace("'", "\\'")
            s += " %s=%s" % (k, v)
        return s

    def url(self, user=APP_USER, db=APP_DB, scheme="postgresql", password=None):
        """The application's URL pointed at pgscale (app's password by default)."""
        if password is None and user == APP_USER:
            password = APP_PASSWORD
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        return "%s://%s@%s:%d/%s" % (scheme, auth, self.host, self.port, db)

    def connect(self, user=APP_USER, db=APP_DB, autocommit=True, **params):
        """psycopg2 connection through pgscale; closed at teardown."""
        conn = psycopg2.connect(self.dsn(user, db, **params))
        conn.autocommit = autocommit
        self._clients.append(conn)
        return conn

    def close_clients(self):
        for c in self._clients:
            try:
                c.close()
            except Exception:
                pass
        self._clients = []

    # -- admin console -----------------------------------------------------
    def admin_columns(self, sql, user=APP_USER, **params):
        """(column names, rows as dicts) of an admin console command."""
        conn = psycopg2.connect(self.dsn(user, "pgscale", **params))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
                if cur.description is None:
                    return [], []
                cols = [d.name for d in cur.description]
                return cols, [dict(zip(cols, r)) for r in cur.fetchall()]
        finally:
            conn.close()

    def admin(self, sql, user=APP_USER, **params):
        return self.admin_columns(sql, user, **params)[1]

    def pool(self, db=APP_DB, user=APP_USER):
        """The SHOW POOLS row of (db, user), or None."""
        for r in self.admin("SHOW POOLS"):
            if r["database"] == db and r["user"] == user:
                return r
        return None

    def sv_total(self, db=APP_DB, user=APP_USER):
        r = self.pool(db, user)
        return int(r["sv_total"]) if r else 0


@pytest.fixture
def pgscale(primary, request, tmp_path_factory):
    """Factory: pgscale(ENV=value, ..., args=[...], wait=True, prefix=[...]) -> Pgscale.

    prefix: a command that execs pgscale with the same pid, put before the
    binary (e.g. ["prlimit", "--nofile=64:64"]); empty by default."""
    instances = []
    request.node._pgscale_instances = instances
    request.node._primary_log_offset = primary.log_size()
    request.node._primary = primary

    def start(args=(), wait=True, prefix=(), **env):
        port = free_port()
        full = {k: v for k, v in os.environ.items()
                if not (k.startswith(("PGSCALE_", "DB_", "PG")) or
                        k in ("DATABASE_URL", "READ_REPLICA_URLS", "REDIS_URL"))}
        full.update({
            "DATABASE_URL": primary.url(),
            "PGSCALE_LISTEN": "%s:%d" % (LOCALHOST, port),
            "DB_POOL_TIMEOUT": "10",
            "PGSCALE_LOG_LEVEL": "info",
            # tests run many pgscales at once: the HTTP listener only where
            # a test asks for it (on a port of its own)
            "PGSCALE_HTTP_LISTEN": "off",
        })
        for k, v in env.items():
            if v is None:
                full.pop(k, None)
            else:
                full[k] = str(v)
        listen = full.get("PGSCALE_LISTEN", "")
        if listen.rsplit(":", 1)[-1].isdigit():
            port = int(listen.rsplit(":", 1)[-1])
        logpath = primary.basedir / ("pgscale-%s-%d.log" % (
            request.node.name.replace("/", "_")[:80], len(instances)))
        inst = Pgscale(full, args, logpath, port, prefix)
        instances.append(inst)
        inst.start()
        if wait:
            inst.wait_ready()
        return inst

    yield start
    for inst in instances:
        inst.stop()
    # A sanitizer build (PGSCALE_BIN=build-asan/pgscale or build-tsan/pgscale,
    # `make integration-asan` / `integration-tsan`) reports to stderr, a leak
    # report only at exit: any report fails the test that ran that pgscale.
    for inst in instances:
        text = inst.stderr_text()
        if inst.killed_at_stop and "PGSCALE_BIN" in os.environ:
            pytest.fail("pgscale did not exit within %d s of SIGINT and was killed, so its "
                        "sanitizer's checks at exit did not run; output tail:\n%s"
                        % (STOP_TIMEOUT, text[-3000:]))
        for marker in SANITIZER_MARKERS:
            if marker in text:
                at = text.index(marker)
                pytest.fail("pgscale reported a sanitizer error:\n%s" % text[max(0, at - 200):at + 6000])
    # Let the backends of the stopped pgscales go away, so that the next test
    # counting server connections starts from zero.
    if primary.is_running():
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if not primary.backends(users=(APP_USER, MD5_USER)):
                    break
            except psycopg2.Error:
                break
            time.sleep(0.05)


# --------------------------------------------------------------------------
# deadlines, ordering, failure reports
# --------------------------------------------------------------------------
def pytest_configure(config):
    config.addinivalue_line("markers", "deadline(seconds): time limit of one test (default %d)"
                            % DEFAULT_DEADLINE)


@pytest.fixture(autouse=True)
def _deadline(request):
    marker = request.node.get_closest_marker("deadline")
    seconds = marker.args[0] if marker else DEFAULT_DEADLINE
    fired = threading.Event()

    def on_timeout():
        fired.set()
        sys.stderr.write("\npgscale-it: %s exceeded %s s; killing pgscale to unblock it\n"
                         % (request.node.nodeid, seconds))
        with _LIVE_LOCK:
            live = list(_LIVE_PGSCALES)
        for inst in live:
            inst.kill()

    timer = threading.Timer(seconds, on_timeout)
    timer.daemon = True
    timer.start()
    # Last resort if even killing pgscale does not unblock the test: dump all
    # stacks and exit (children die with us through --pdeathsig).
    faulthandler.dump_traceback_later(seconds + 90, exit=True)
    try:
        yield
    finally:
        timer.cancel()
        faulthandler.cancel_dump_traceback_later()
    if fired.is_set():
        pytest.fail("test exceeded its %s s deadline; pgscale was killed to unblock it" % seconds)


_ORDER_FIRST = ("test_primary.py",)
_ORDER_LAST = ("test_faults.py",)


def pytest_collection_modifyitems(session, config, items):
    """Fixture checks first, fault tests (which stop the primary) last."""
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return 0 if name in _ORDER_FIRST else 2 if name in _ORDER_LAST else 1
    items.sort(key=rank)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    for i, inst in enumerate(getattr(item, "_pgscale_instances", [])):
        text = inst.stderr_text()
        tail = "\n".join(text.splitlines()[-60:])
        rep.sections.append(("pgscale[%d] output (%s), last 60 lines" % (i, inst.logpath.name), tail))
    offset = getattr(item, "_primary_log_offset", None)
    prim = getattr(item, "_primary", None)
    if offset is not None and prim is not None:
        rep.sections.append(("postgresql log during the test (last 40 lines)",
                             prim.log_tail(40, since=offset)))
