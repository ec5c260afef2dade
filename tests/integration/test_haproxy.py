"""Two pgscale instances behind a real HAProxy (docs/deployment.md, "Several
instances behind HAProxy"), sharing one Redis, health-checked on /healthz.
HAProxy runs packaging/haproxy/haproxy.cfg as shipped, with only its
addresses, ports and stats socket replaced, so the documented file is the
tested one.

- kill -9 of one instance under a reconnecting load: the load goes on
  through the other, the only failed statements are those of connections
  that were on the killed instance, once each, at the kill; every
  acknowledged INSERT is in PostgreSQL; HAProxy shows the instance DOWN.
- SIGTERM of one instance: /healthz says 503 at once, HAProxy marks it down
  and sends it nothing new, a transaction running on it commits, no
  statement fails, and the instance exits once its clients are gone.
- pgbench through HAProxy reaches both instances.
- With `balance source` (docs/deployment.md: cancel requests), a client's
  cancel request reaches the instance running its query.
- docs/deployment.md shows lines of the shipped file, not its own."""
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest

from helpers import APP_DB, APP_PASSWORD, APP_USER, LOCALHOST, free_port, pgbench, pgbench_tps, \
    port_accepts, stop_process, wait_for

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "packaging" / "haproxy" / "haproxy.cfg"
LOAD_APP = "hl-"          # application_name prefix of the load's connections



# --------------------------------------------------------------------------
# HAProxy
# --------------------------------------------------------------------------
def render(template, bind_port, stats_socket, servers, balance=None):
    """The shipped configuration with the test's addresses: the frontend's
    bind, the stats socket's path, and one `server` line per (name, port,
    http_port) made from the template's first server line (its options,
    `check port N` included, kept as they are)."""
    out, done = [], {"bind": 0, "stats": 0, "server": 0, "balance": 0}
    for line in template.splitlines():
        indent = line[:len(line) - len(line.lstrip())]
        words = line.split()
        if words[:1] == ["bind"]:
            line = "%sbind %s:%d" % (indent, LOCALHOST, bind_port)
            done["bind"] += 1
        elif words[:1] == ["balance"]:
            if balance:
                line = "%sbalance %s" % (indent, balance)
            done["balance"] += 1
        elif words[:2] == ["stats", "socket"]:
            words[2] = str(stats_socket)
            line = indent + " ".join(words)
            done["stats"] += 1
        elif words[:1] == ["server"]:
            done["server"] += 1
            if done["server"] > 1:
                continue
            opts = words[3:]
            at = opts.index("port")
            for name, port, http_port in servers:
                opts[at + 1] = str(http_port)
                out.append("%sserver %s %s:%d %s" % (indent, name, LOCALHOST, port, " ".join(opts)))
            continue
        out.append(line)
    # the template changed shape: the test must follow it, not silently
    # run something else
    assert done["bind"] == done["stats"] == done["balance"] == 1 and done["server"] >= 2, done
    return "\n".join(out) + "\n"


class HAProxy:
    def __init__(self, basedir, servers, balance=None):
        if shutil.which("haproxy") is None:
            pytest.fail("haproxy is not installed: scripts/install-deps.sh installs it")
        self.basedir = Path(basedir)
        self.port = free_port()
        self.sock = self.basedir / "haproxy.sock"
        self.cfg = self.basedir / "haproxy.cfg"
        self.cfg.write_text(render(TEMPLATE.read_text(), self.port, self.sock, servers,
                                   balance))
        self.names = [s[0] for s in servers]
        self.logfile = self.basedir / "haproxy.log"
        self._logfh = open(self.logfile, "wb")
        self.proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "--", "haproxy", "-db", "-f", str(self.cfg)],
            stdout=self._logfh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 15
        while not (port_accepts(self.port) and self.sock.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("haproxy did not start (rc=%s):\n%s"
                            % (self.proc.returncode, self.log()[-3000:]))
            time.sleep(0.05)

    def log(self):
        return self.logfile.read_bytes().decode("utf-8", "replace")

    def command(self, cmd):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.sock))
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        return b"".join(chunks).decode()

    def servers(self):
        """{server name: `show stat` row} of the backend's servers."""
        lines = self.command("show stat").splitlines()
        cols = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(cols, line.split(","))) for line in lines[1:] if line]
        return {r["svname"]: r for r in rows if r["pxname"] == "pgscale" and r["svname"] in self.names}

    def status(self, name):
        return self.servers()[name]["status"]

    def wait_status(self, name, status, timeout):
        return wait_for(lambda: self.status(name) == status, timeout, interval=0.02,
                        what="haproxy to mark %s %s (%r)" % (name, status, self.servers().get(name)))

    def stop(self):
        stop_process(self.proc)
        self._logfh.close()


def start_pair(pgscale, redis, **env):
    """Two pgscale instances, each with its HTTP listener on a port of its
    own, the result cache on, sharing one Redis."""
    pair = []
    for _ in range(2):
        http_port = free_port()
        pg = pgscale(PGSCALE_HTTP_LISTEN="%s:%d" % (LOCALHOST, http_port), PGSCALE_CACHE="on",
                     REDIS_URL=redis.url(), **env)
        pg.http_port = http_port
        pair.append(pg)
    for pg in pair:
        wait_for(lambda: healthz(pg)[0] == 200, 10, what="/healthz 200 on port %d" % pg.http_port)
    return pair


def start_haproxy(tmp_path, pair, balance=None):
    hap = HAProxy(tmp_path, [("pgscale%d" % (i + 1), pg.port, pg.http_port)
                             for i, pg in enumerate(pair)], balance)
    for i, pg in enumerate(pair):
        pg.hap_name = "pgscale%d" % (i + 1)
        hap.wait_status(pg.hap_name, "UP", 15)
    return hap


def healthz(pg):
    try:
        with urllib.request.urlopen("http://%s:%d/healthz" % (LOCALHOST, pg.http_port),
                                    timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, str(e)


def load_apps(pg):
    """application_names of the load's connections on one instance."""
    return {r["application_name"] for r in pg.admin("SHOW CLIENTS")
            if (r["application_name"] or "").startswith(LOAD_APP)}


@pytest.fixture
def load_table(primary):
    primary.app_execute("DROP TABLE IF EXISTS hap_load")
    primary.app_execute("CREATE TABLE hap_load (attempt text PRIMARY KEY, app text NOT NULL)")
    primary.app_execute("DROP TABLE IF EXISTS hap_items")
    primary.app_execute("CREATE TABLE hap_items (id int PRIMARY KEY, name text NOT NULL)")
    primary.app_execute("INSERT INTO hap_items SELECT g, 'item ' || g FROM generate_series(1, 50) g")
    return "hap_load"


# --------------------------------------------------------------------------
# the load: threads that reconnect when their connection fails
# --------------------------------------------------------------------------
class Load:
    """`threads` clients through HAProxy, each doing autocommit INSERTs (two
    in three) and cacheable SELECTs, pausing `think` seconds (a range)
    between them; a statement that fails closes the connection and the
    thread opens a new one (a new application_name), as an application's
    pool would.  Every connect and statement is recorded with its start
    and end time (time.monotonic) and outcome."""

    def __init__(self, port, threads, think):
        self.port = port
        self.think = think
        self.events = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True)
                         for t in range(threads)]

    def _record(self, **ev):
        with self._lock:
            self.events.append(ev)

    def _run(self, t):
        rnd = random.Random(t)
        conn, app, nconn, seq = None, None, 0, 0
        while not self._stop.is_set():
            if conn is None:
                nconn += 1
                app = "%s%d-%d" % (LOAD_APP, t, nconn)
                t0 = time.monotonic()
                try:
                    conn = psycopg2.connect(host=LOCALHOST, port=self.port, user=APP_USER,
                                            password=APP_PASSWORD, dbname=APP_DB,
                                            application_name=app, connect_timeout=5,
                                            options="-c statement_timeout=20000")
                    conn.autocommit = True
                    self._record(kind="connect", app=app, t0=t0, t1=time.monotonic(), ok=True)
                except psycopg2.Error as e:
                    self._record(kind="connect", app=app, t0=t0, t1=time.monotonic(), ok=False,
                                 code=getattr(e, "pgcode", None), error=str(e).strip())
                    conn = None
                    time.sleep(0.05)
                    continue
            seq += 1
            attempt = "%d-%d" % (t, seq)
            kind = "select" if seq % 3 == 0 else "insert"
            t0 = time.monotonic()
            try:
                with conn.cursor() as cur:
                    if kind == "insert":
                        cur.execute("INSERT INTO hap_load (attempt, app) VALUES (%s, %s)",
                                    (attempt, app))
                    else:
                        cur.execute("SELECT name FROM hap_items WHERE id = %s", (seq % 50 + 1,))
                        assert cur.fetchone()[0] == "item %d" % (seq % 50 + 1)
                self._record(kind=kind, app=app, attempt=attempt, t0=t0, t1=time.monotonic(),
                             ok=True)
            except psycopg2.Error as e:
                self._record(kind=kind, app=app, attempt=attempt, t0=t0, t1=time.monotonic(),
                             ok=False, code=e.pgcode, error=str(e).strip())
                try:
                    conn.close()
                except psycopg2.Error:
                    pass
                conn = None
            time.sleep(rnd.uniform(*self.think))
        if conn is not None:
            conn.close()

    def start(self):
        for th in self._threads:
            th.start()
        return self

    def stop(self):
        self._stop.set()
        for th in self._threads:
            th.join(30)
        assert not any(th.is_alive() for th in self._threads), "a load thread is stuck"

    def snapshot(self):
        with self._lock:
            return list(self.events)

    def ok_since(self, t):
        return sum(1 for e in self.snapshot() if e["ok"] and e["kind"] != "connect" and e["t0"] >= t)


def rows_present(primary, attempts):
    """The subset of `attempts` that PostgreSQL itself holds."""
    if not attempts:
        return set()
    rows = primary.app_execute("SELECT attempt FROM hap_load WHERE attempt = ANY(%s)",
                               (sorted(attempts),))
    return {r[0] for r in rows}


def describe(events, t_ref):
    return "\n".join("%+.3f..%+.3f %s %s %s %s" % (e["t0"] - t_ref, e["t1"] - t_ref, e["kind"],
                                                 e["app"], e.get("code"), e.get("error", "ok"))
                     for e in events)


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------
@pytest.mark.deadline(150)
def test_kill_9_of_one_instance_fails_only_its_inflight_statements(
        pgscale, primary, redis, load_table, tmp_path):
    pair = start_pair(pgscale, redis)
    hap = start_haproxy(tmp_path, pair)
    load = Load(hap.port, threads=8, think=(0.0, 0.02)).start()
    try:
        # both instances carry part of the load before the kill
        wait_for(lambda: all(load_apps(pg) for pg in pair), 20, interval=0.2,
                 what="load connections on both instances")
        t_warm = time.monotonic()
        wait_for(lambda: load.ok_since(t_warm) >= 200, 30, interval=0.1,
                 what="200 statements through HAProxy")
        victim, survivor = pair[1], pair[0]
        # the connections on the victim: no statement has failed yet, so no
        # thread reconnects between this look and the kill
        on_victim = load_apps(victim)
        assert on_victim
        t_kill = time.monotonic()
        victim.kill()
        victim.wait_exit(10)
        hap.wait_status(victim.hap_name, "DOWN", 15)
        t_down = time.monotonic()
        # the load goes on through the survivor
        wait_for(lambda: load.ok_since(t_down) >= 200, 30, interval=0.1,
                 what="200 statements through the surviving instance after the kill")
        time.sleep(1)
    finally:
        load.stop()
    events = load.snapshot()
    stats = hap.servers()
    hap.stop()

    before = [e for e in events if e["t1"] < t_kill]
    assert all(e["ok"] for e in before), describe([e for e in before if not e["ok"]], t_kill)
    failed = [e for e in events if not e["ok"]]
    statements_failed = [e for e in failed if e["kind"] != "connect"]
    connects_failed = [e for e in failed if e["kind"] == "connect"]
    # no new connection failed: HAProxy retried a refused one on the other
    # instance until the health check had marked the victim down
    assert not connects_failed, describe(connects_failed, t_kill)
    # only connections that were on the killed instance lost a statement,
    # each one at most once, and only at the kill
    assert {e["app"] for e in statements_failed} <= on_victim, describe(statements_failed, t_kill)
    assert len({e["app"] for e in statements_failed}) == len(statements_failed), \
        describe(statements_failed, t_kill)
    # a statement that failed was in flight at the kill, or was the next
    # one sent on a connection to the dead instance; the latter never ran
    in_flight = [e for e in statements_failed if e["t0"] < t_kill]
    after = [e for e in statements_failed if e["t0"] >= t_kill]
    assert not rows_present(primary, {e["attempt"] for e in after if e["kind"] == "insert"})
    # every acknowledged INSERT is in PostgreSQL
    acked = {e["attempt"] for e in events if e["ok"] and e["kind"] == "insert"}
    missing = acked - rows_present(primary, acked)
    assert not missing, "acknowledged INSERTs missing on the primary: %r" % sorted(missing)[:20]
    # the threads whose connection was on the survivor never saw an error,
    # and every thread works again after the kill
    first_ok = min(e["t1"] for e in events if e["kind"] == "connect" and e["ok"]
                   and e["t0"] >= t_kill)
    assert first_ok - t_kill < 2.0, first_ok - t_kill
    threads_after = {e["app"].split("-")[1] for e in events
                     if e["ok"] and e["kind"] != "connect" and e["t0"] > t_down}
    assert len(threads_after) == 8, threads_after
    v, s = stats[victim.hap_name], stats[survivor.hap_name]
    assert v["status"] == "DOWN" and v["check_status"] == "L4CON", v
    assert s["status"] == "UP", s
    print("\nkill -9 under load: %d connections on the killed instance, %d statements failed "
          "(%d in flight at the kill, %d sent afterwards on a dead connection), 0 failed "
          "connects; first new connection through HAProxy %.0f ms after the kill; HAProxy "
          "marked it DOWN after %.0f ms; %d statements acknowledged in all, all %d INSERTs "
          "on the primary; HAProxy redispatched %s connects (refused by the killed instance)"
          % (len(on_victim), len(statements_failed), len(in_flight), len(after),
             (first_ok - t_kill) * 1000, (t_down - t_kill) * 1000,
             sum(1 for e in events if e["ok"] and e["kind"] != "connect"), len(acked),
             v["wredis"]))


@pytest.mark.deadline(150)
def test_sigterm_drains_one_instance_behind_haproxy_without_a_failed_statement(
        pgscale, primary, redis, load_table, tmp_path):
    # pauses of up to 0.5 s between statements: pgscale closes a draining
    # instance's connections at their first pause longer than 250 ms
    pair = start_pair(pgscale, redis, PGSCALE_SHUTDOWN_TIMEOUT="60s")
    hap = start_haproxy(tmp_path, pair)
    victim, survivor = pair[1], pair[0]
    load = Load(hap.port, threads=6, think=(0.0, 0.5)).start()
    long_tx = {}
    try:
        wait_for(lambda: all(load_apps(pg) for pg in pair), 20, interval=0.2,
                 what="load connections on both instances")
        # a transaction through HAProxy that runs on the victim across the SIGTERM
        conns = []
        for i in range(6):
            app = "%slong-%d" % (LOAD_APP, i)
            c = psycopg2.connect(host=LOCALHOST, port=hap.port, user=APP_USER,
                                 password=APP_PASSWORD, dbname=APP_DB, application_name=app,
                                 connect_timeout=5)
            conns.append(c)
            if app in load_apps(victim):
                break
        else:
            pytest.fail("no connection through HAProxy reached %s" % victim.hap_name)
        long_conn = conns.pop()
        for c in conns:
            c.close()
        in_sleep = threading.Event()

        def run_long():
            try:
                with long_conn.cursor() as cur:
                    cur.execute("INSERT INTO hap_load (attempt, app) VALUES ('long-1', 'long')")
                    in_sleep.set()
                    cur.execute("SELECT pg_sleep(5)")
                    cur.execute("INSERT INTO hap_load (attempt, app) VALUES ('long-2', 'long')")
                long_conn.commit()
                long_tx["ok"] = True
            except psycopg2.Error as e:
                long_tx["error"] = str(e)
            finally:
                long_tx["t1"] = time.monotonic()
                long_conn.close()

        th = threading.Thread(target=run_long, daemon=True)
        th.start()
        assert in_sleep.wait(10)
        time.sleep(0.3)
        stot_before = int(hap.servers()[victim.hap_name]["stot"])
        on_victim = load_apps(victim)
        t_term = time.monotonic()
        victim.signal(signal.SIGTERM)
        status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(healthz(victim)),
                                5, interval=0.01, what="/healthz 503 after SIGTERM")
        t_503 = time.monotonic()
        assert "draining" in body, body
        hap.wait_status(victim.hap_name, "DOWN", 10)
        t_down = time.monotonic()
        down_check = hap.servers()[victim.hap_name]
        stot_down = int(down_check["stot"])
        th.join(20)
        assert long_tx.get("ok"), long_tx
        rc = victim.wait_exit(30)
        t_exit = time.monotonic()
        assert rc == 0, rc
        wait_for(lambda: load.ok_since(t_exit) >= 50, 30, interval=0.1,
                 what="statements through the surviving instance after the drain")
    finally:
        load.stop()
    events = load.snapshot()
    stats = hap.servers()
    hap.stop()

    # the running transaction finished on the draining instance
    assert long_tx["t1"] > t_down, "the long transaction ended before HAProxy marked it down"
    assert rows_present(primary, {"long-1", "long-2"}) == {"long-1", "long-2"}
    # A draining instance closes a connection only at a pause of more than
    # 250 ms between statements (seen from the client: a little less) (with a 57P01 that libpq does not show: the
    # client's next statement fails with "server closed the connection
    # unexpectedly", as after PostgreSQL's own pg_terminate_backend).  So a
    # failed statement is one sent on a connection of the victim after such
    # a pause, that never ran; nothing else failed.
    failed = [e for e in events if not e["ok"]]
    assert not [e for e in failed if e["kind"] == "connect"], describe(failed, t_term)
    last_end = {}
    closed, others = [], []
    for e in sorted(events, key=lambda e: e["t0"]):
        if not e["ok"]:
            gap = e["t0"] - last_end.get(e["app"], e["t0"])
            (closed if e["app"] in on_victim and e["t0"] > t_term and gap > 0.2
             else others).append(e)
        last_end[e["app"]] = e["t1"]
    assert not others, describe(others, t_term)
    assert len({e["app"] for e in closed}) == len(closed), describe(closed, t_term)
    assert len(closed) <= victim.stderr_text().count(
        "57P01: terminating connection because pgscale is shutting down")
    assert not rows_present(primary, {e["attempt"] for e in closed if e["kind"] == "insert"})
    acked = {e["attempt"] for e in events if e["ok"] and e["kind"] == "insert"}
    assert rows_present(primary, acked) == acked
    # nothing new reached the victim after HAProxy marked it down (its
    # listener was closed from the SIGTERM on: anything HAProxy sent it in
    # between was refused and redispatched)
    assert int(stats[victim.hap_name]["stot"]) == stot_down
    assert down_check["check_status"] in ("L7STS", "L4CON"), down_check
    assert stats[survivor.hap_name]["status"] == "UP", stats[survivor.hap_name]
    print("\nSIGTERM: /healthz 503 after %.0f ms, HAProxy DOWN after %.0f ms (%s %s), long "
          "transaction committed %.1f s after the SIGTERM, pgscale exited after %.1f s; "
          "%d connections closed at a pause between statements (their next statement "
          "failed, never ran), 0 other errors; HAProxy sent it %d sessions after the "
          "SIGTERM, before DOWN (refused: redispatched %s)"
          % ((t_503 - t_term) * 1000, (t_down - t_term) * 1000, down_check["check_status"],
             down_check["check_code"], long_tx["t1"] - t_term, t_exit - t_term, len(closed),
             stot_down - stot_before, stats[victim.hap_name]["wredis"]))


@pytest.mark.deadline(120)
def test_pgbench_through_haproxy_reaches_both_instances(pgscale, primary, redis, tmp_path):
    primary.execute("DROP DATABASE IF EXISTS hapbench")
    primary.execute("CREATE DATABASE hapbench OWNER app")
    r = pgbench(primary.port, ["-i", "-q", "-s", "1"], db="hapbench", password=APP_PASSWORD,
                timeout=120)
    assert r.returncode == 0, r.stderr
    pair = start_pair(pgscale, redis)
    hap = start_haproxy(tmp_path, pair)
    try:
        r = pgbench(hap.port, ["-c", "8", "-j", "2", "-T", "8"], db="hapbench", timeout=60)
    finally:
        hap.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    tps = pgbench_tps(r.stdout)
    assert tps and tps > 0, r.stdout
    xacts = []
    for pg in pair:
        rows = [x for x in pg.admin("SHOW STATS") if x["database"] == "hapbench"]
        xacts.append(sum(int(x["xact_count"]) for x in rows))
    assert all(x > 0 for x in xacts), xacts
    print("\npgbench -c 8 -T 8 through HAProxy: tps %.0f; transactions per instance %s"
          % (tps, xacts))


@pytest.mark.deadline(60)
def test_cancel_request_reaches_the_query_with_balance_source(pgscale, redis, tmp_path):
    # A cancel request is a connection of its own.  Only when HAProxy sends
    # all of a client host's connections to one instance (balance source)
    # does it reach the instance that knows the key; with leastconn it goes
    # to the other one, which ignores it (docs/deployment.md).
    pair = start_pair(pgscale, redis)
    hap = start_haproxy(tmp_path, pair, balance="source")
    try:
        for _ in range(3):
            conn = psycopg2.connect(host=LOCALHOST, port=hap.port, user=APP_USER,
                                    password=APP_PASSWORD, dbname=APP_DB, connect_timeout=5)
            conn.autocommit = True
            timer = threading.Timer(0.5, conn.cancel)
            timer.start()
            t0 = time.monotonic()
            with pytest.raises(psycopg2.errors.QueryCanceled):
                conn.cursor().execute("SELECT pg_sleep(10)")
            assert time.monotonic() - t0 < 5
            timer.join()
            conn.close()
    finally:
        hap.stop()


def test_documented_haproxy_configuration_is_the_shipped_one():
    doc = (REPO / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```haproxy\n(.*?)```", doc, re.S)
    assert blocks, "docs/deployment.md has no haproxy block"
    shipped = {line.strip() for line in TEMPLATE.read_text().splitlines()}
    for block in blocks:
        for line in block.splitlines():
            assert line.strip() in shipped, \
                "docs/deployment.md shows %r, which packaging/haproxy/haproxy.cfg lacks" % line
