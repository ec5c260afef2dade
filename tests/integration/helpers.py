"""Small helpers shared by the integration tests (fixtures live in conftest.py)."""
import os
import re
import socket
import subprocess
import time

import pytest

# Behaviours that must hold in both pool modes are parametrized with this.
BOTH_MODES = pytest.mark.parametrize("pool_mode", ["transaction", "session"])

LOCALHOST = "127.0.0.1"
APP_USER, APP_PASSWORD, APP_DB = "app", "secret", "app"
MD5_USER, MD5_PASSWORD = "md5user", "md5secret"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def port_accepts(port, host=LOCALHOST, timeout=0.2):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(predicate, timeout, interval=0.05, what="condition"):
    """Polls predicate() until it returns a truthy value; returns that value.
    Fails the test with `what` (a string, or a function returning one, called
    then) when the timeout passes."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            if callable(what):
                what = what()
            pytest.fail("timed out after %.1f s waiting for %s (last value: %r)" % (timeout, what, last))
        time.sleep(interval)


def client_env(extra=None):
    """Environment for psql/pgbench: no stray PG* settings, bounded connects,
    and the application's password (pgscale checks DATABASE_URL's password
    by default; libpq sends it only when asked)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    env["PGAPPNAME"] = "pgscale-it"
    env["PGPASSWORD"] = APP_PASSWORD
    if extra:
        env.update(extra)
    return env


def run(argv, timeout, env=None, input=None, check=False):
    """Runs a command with a hard timeout; returns CompletedProcess (text).
    A timeout fails the test with whatever the command printed so far."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           env=env if env is not None else client_env(), input=input,
                           stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail("command timed out after %s s: %s\nstdout:\n%s\nstderr:\n%s"
                    % (timeout, " ".join(map(str, argv)), out[-3000:], err[-3000:]))
    if check and r.returncode != 0:
        pytest.fail("command failed (rc=%d): %s\nstdout:\n%s\nstderr:\n%s"
                    % (r.returncode, " ".join(map(str, argv)), r.stdout[-3000:], r.stderr[-3000:]))
    return r


def psql(port, sql, user="app", db="app", args=(), timeout=30, password=None, check=False):
    """psql -c SQL (unaligned, tuples only, no psqlrc, stop on error)."""
    env = client_env({"PGPASSWORD": password} if password else None)
    argv = ["psql", "-X", "-w", "-At", "-v", "ON_ERROR_STOP=1", "-h", LOCALHOST,
            "-p", str(port), "-U", user, "-d", db, *args, "-c", sql]
    return run(argv, timeout, env=env, check=check)


def pgbench(port, args, user="app", db="app", timeout=60, password=None):
    env = client_env({"PGPASSWORD": password} if password else None)
    argv = ["pgbench", "-h", LOCALHOST, "-p", str(port), "-U", user, *args, db]
    return run(argv, timeout, env=env)


def stop_process(proc, timeout=10):
    """SIGTERM, then SIGKILL after timeout s; waits for the process."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def finish_pgbench(proc, timeout=45):
    """Waits for a pgbench started with Popen (text pipes): fails the test
    if it does not end in time, fails, or reports failed transactions."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail("pgbench did not finish:\n%s\n%s" % (out[-2000:], err[-2000:]))
    assert proc.returncode == 0, (out + err)[-3000:]
    assert "number of failed transactions: 0" in out, out[-3000:]
    return out


def pgbench_tps(output):
    m = re.search(r"tps = ([0-9.]+)", output)
    return float(m.group(1)) if m else None


def proc_status(pid):
    """/proc/PID/status as {key: value-string}, {} if the process is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def proc_kb(pid, key):
    """VmRSS / VmHWM ... of a process in kB (0 if unknown)."""
    v = proc_status(pid).get(key, "0 kB").split()
    return int(v[0]) if v else 0


def is_sanitized(pid):
    """True when the process runs under AddressSanitizer or ThreadSanitizer,
    whose shadow memory, quarantine and slow-down make VmRSS and latency say
    nothing about the program's own."""
    try:
        with open("/proc/%d/maps" % pid) as f:
            maps = f.read()
            return "libasan" in maps or "libtsan" in maps
    except OSError:
        return False


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


def arun(coro, timeout=60):
    """Runs a coroutine to completion with an overall time limit."""
    import asyncio
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def aconnect(pg, user=APP_USER, db=APP_DB, **kw):
    """asyncpg connection through pgscale with bounded connect and commands."""
    import asyncpg
    if user == APP_USER:
        kw.setdefault("password", APP_PASSWORD)
    kw.setdefault("timeout", 10)
    kw.setdefault("command_timeout", 20)
    return await asyncpg.connect(host=pg.host, port=pg.port, user=user, database=db, **kw)


class BackendSampler:
    """Samples, in a thread, how many client backends of `users` the primary
    has, while the with-block runs.  .max is the highest count seen."""

    def __init__(self, primary, users=(APP_USER,), interval=0.03):
        import threading
        self.primary, self.users, self.interval = primary, users, interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        conn = self.primary.connect()
        try:
            with conn.cursor() as cur:
                while not self._stop.is_set():
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                                "'client backend' AND pid <> pg_backend_pid() AND usename = ANY(%s)",
                                (list(self.users),))
                    self.samples.append(cur.fetchone()[0])
                    self._stop.wait(self.interval)
        finally:
            conn.close()

    @property
    def max(self):
        return max(self.samples) if self.samples else 0

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
