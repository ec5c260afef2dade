"""pgscale with PGSCALE_FAILOVER=follow in front of a real Patroni cluster:
etcd (the DCS) and three Patroni-managed PostgreSQL 15 nodes on free ports
of 127.0.0.1, all in a temp dir.  Patroni moves the primary (a switchover
with patronictl, or a failover after the leader's node dies); pgscale,
pointed at every member, follows the node that says it is the primary and
never promotes anything itself.

Each test has a cluster of its own (bootstrap takes ~10-20 s): the cluster
fixture stops every Patroni (which stops its PostgreSQL), then any
postmaster still running, then etcd.  The figures each test measured are
printed (`pytest -s` shows them) and docs/deployment.md quotes them."""
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import pytest

import pgwire
from helpers import APP_DB, APP_PASSWORD, APP_USER, LOCALHOST, free_port, wait_for

PG_BINDIR = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))
SCOPE = "pgscale-it"
NODES = ("node1", "node2", "node3")
# what pgscale's SHOW NODES calls each member: DATABASE_URL is node1,
# READ_REPLICA_URLS node2 then node3
SHOWN = {"node1": "primary", "node2": "replica1", "node3": "replica2"}
TTL, LOOP_WAIT, RETRY_TIMEOUT = 10, 1, 4   # Patroni wants ttl >= loop_wait + 2 * retry_timeout


def _need(binary):
    if shutil.which(binary):
        return
    if os.environ.get("CI"):
        pytest.fail("%s is not installed: scripts/install-deps.sh installs it" % binary)
    pytest.skip("%s is not installed (scripts/install-deps.sh installs it)" % binary)


def _as_postgres(argv, pdeathsig="TERM"):
    """Patroni (and the PostgreSQL it starts) refuse to run as root: as in
    conftest.Primary, drop to user postgres; die with the test process."""
    pre = ["setpriv"]
    if os.geteuid() == 0:
        pre += ["--reuid", "postgres", "--regid", "postgres", "--init-groups"]
    return pre + ["--pdeathsig", pdeathsig, "--"] + [str(a) for a in argv]


def _chown(path):
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _stop_proc(proc, sig=signal.SIGTERM, wait=30):
    """sig to the process group (start_new_session), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    for s, w in ((sig, wait), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, s)
        except ProcessLookupError:
            return
        try:
            proc.wait(w)
            return
        except subprocess.TimeoutExpired:
            continue


class Etcd:
    def __init__(self, basedir):
        self.basedir = basedir
        self.client_port, self.peer_port = free_port(), free_port()
        self.proc = None

    def start(self, timeout=30):
        log = open(self.basedir / "etcd.log", "ab")
        peer = "http://%s:%d" % (LOCALHOST, self.peer_port)
        client = "http://%s:%d" % (LOCALHOST, self.client_port)
        self.proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "TERM", "--", "etcd", "--name", "it",
             "--data-dir", str(self.basedir / "etcd"), "--listen-client-urls", client,
             "--advertise-client-urls", client, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", "it=" + peer,
             "--initial-cluster-state", "new", "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()

        def healthy():
            if self.proc.poll() is not None:
                raise RuntimeError("etcd exited with rc=%s; see %s"
                                   % (self.proc.returncode, self.basedir / "etcd.log"))
            try:
                with urllib.request.urlopen(client + "/health", timeout=2) as r:
                    return json.loads(r.read()).get("health") == "true"
            except OSError:
                return False
        wait_for(healthy, timeout, interval=0.1, what="etcd healthy")

    def stop(self):
        _stop_proc(self.proc)


class PatroniNode:
    """One Patroni member and its PostgreSQL (data, logs, config in basedir/name)."""

    def __init__(self, basedir, name, etcd):
        self.name = name
        self.dir = basedir / name
        self.datadir = self.dir / "data"
        self.sockdir = self.dir / "sock"
        self.config = self.dir / "patroni.yml"
        self.logfile = self.dir / "patroni.log"
        self.host = LOCALHOST
        self.port, self.api_port = free_port(), free_port()
        self.etcd = etcd
        self.proc = None

    def write_config(self, post_bootstrap):
        for d in (self.dir, self.sockdir):
            d.mkdir()
            _chown(d)
        hba = ["local all all trust",
               "host all postgres %s/32 trust" % LOCALHOST,
               "host replication replicator %s/32 scram-sha-256" % LOCALHOST,
               "host all all %s/32 scram-sha-256" % LOCALHOST]
        # JSON is YAML: no YAML library needed here
        cfg = {
            "scope": SCOPE,
            "name": self.name,
            "log": {"level": "INFO"},
            "restapi": {"listen": "%s:%d" % (LOCALHOST, self.api_port),
                        "connect_address": "%s:%d" % (LOCALHOST, self.api_port)},
            "etcd3": {"hosts": "%s:%d" % (LOCALHOST, self.etcd.client_port)},
            "bootstrap": {
                "dcs": {"ttl": TTL, "loop_wait": LOOP_WAIT, "retry_timeout": RETRY_TIMEOUT,
                        "maximum_lag_on_failover": 16 * 1024 * 1024,
                        "postgresql": {"use_pg_rewind": True,
                                       "parameters": {"wal_keep_size": "256MB",
                                                      "max_connections": 100,
                                                      "wal_log_hints": "on"}}},
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "no-sync"],
                "post_bootstrap": str(post_bootstrap),
            },
            "postgresql": {
                "listen": "%s:%d" % (LOCALHOST, self.port),
                "connect_address": "%s:%d" % (LOCALHOST, self.port),
                "data_dir": str(self.datadir),
                "bin_dir": str(PG_BINDIR),
                "pgpass": str(self.dir / "pgpass"),
                "pg_hba": hba,
                "authentication": {
                    "superuser": {"username": "postgres", "password": "pg-secret"},
                    "replication": {"username": "replicator", "password": "rep-secret"},
                    "rewind": {"username": "postgres", "password": "pg-secret"},
                },
                "parameters": {
                    "unix_socket_directories": str(self.sockdir),
                    "fsync": "off", "synchronous_commit": "off", "full_page_writes": "on",
                    "shared_buffers": "32MB", "lc_messages": "C",
                    "logging_collector": "on", "log_directory": str(self.dir / "pglog"),
                    "log_filename": "postgresql.log", "log_min_messages": "warning",
                    "log_line_prefix": "%m [%p] %q%u@%d/%a ",
                },
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }
        self.config.write_text(json.dumps(cfg, indent=1) + "\n")
        _chown(self.config)

    def start(self):
        log = open(self.logfile, "ab")
        self.proc = subprocess.Popen(
            _as_postgres(["patroni", self.config]), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(self.dir))
        log.close()

    def api(self, path="/patroni"):
        """Patroni's REST API: (status, JSON) or (None, None) when not answering."""
        try:
            with urllib.request.urlopen("http://%s:%d%s" % (LOCALHOST, self.api_port, path),
                                        timeout=2) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read() or b"{}")
            except ValueError:
                return e.code, {}
        except (OSError, ValueError):
            return None, None

    def role(self):
        """'primary', 'replica' or None, as Patroni tells it."""
        _, body = self.api()
        role = (body or {}).get("role")
        return "primary" if role in ("master", "primary") else role

    def postmaster_pid(self):
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n")[0])
        except (OSError, ValueError):
            return None

    def kill_postmaster(self, sig=signal.SIGKILL):
        pid = self.postmaster_pid()
        if pid:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def crash(self):
        """The node dies: Patroni and its PostgreSQL SIGKILLed.  (Killing
        PostgreSQL alone does not fail over: Patroni restarts it in place,
        holding the leader key.)"""
        _stop_proc(self.proc, signal.SIGKILL)
        self.kill_postmaster()

    def stop(self):
        # Patroni stops its PostgreSQL on SIGTERM (fast shutdown)
        _stop_proc(self.proc, signal.SIGTERM, wait=40)
        pid = self.postmaster_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGQUIT)
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- PostgreSQL, directly (bypassing pgscale) ---------------------------
    def url(self):
        return "postgresql://%s:%s@%s:%d/%s" % (APP_USER, APP_PASSWORD, self.host, self.port,
                                                 APP_DB)

    def execute(self, sql, params=None, db="postgres"):
        conn = psycopg2.connect(host=self.host, port=self.port, user="postgres", dbname=db,
                                connect_timeout=5, application_name="it-observer")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    def in_recovery(self):
        try:
            return self.execute("SELECT pg_is_in_recovery()")[0][0]
        except psycopg2.Error:
            return None

    def log_tail(self, lines=40):
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Cluster:
    def __init__(self, basedir):
        self.basedir = basedir
        self.etcd = Etcd(basedir)
        self.nodes = {n: PatroniNode(basedir, n, self.etcd) for n in NODES}
        self.ctl_config = basedir / "patronictl.yml"

    def __getitem__(self, name):
        return self.nodes[name]

    def start(self):
        self.etcd.start()
        script = self.basedir / "post_bootstrap.sh"
        # Patroni runs it once, on the node that initialised the cluster,
        # with a connection string for its superuser
        script.write_text(
            "#!/bin/sh\nset -e\n"
            "psql -X -v ON_ERROR_STOP=1 \"$1\" -c \"CREATE ROLE %s LOGIN PASSWORD '%s'\" "
            "-c \"CREATE DATABASE %s OWNER %s\"\n" % (APP_USER, APP_PASSWORD, APP_DB, APP_USER))
        script.chmod(0o755)
        self.ctl_config.write_text(json.dumps(
            {"scope": SCOPE, "etcd3": {"hosts": "%s:%d" % (LOCALHOST, self.etcd.client_port)}}))
        for node in self.nodes.values():
            node.write_config(script)
        # node1 first, alone: it takes the initialize key and becomes the
        # leader (the test points DATABASE_URL at it)
        self["node1"].start()
        wait_for(lambda: self._check() or self["node1"].role() == "primary" and
                 self.app_ready(self["node1"]), 120, interval=0.5, what="node1 the leader")
        for n in NODES[1:]:
            self[n].start()
        wait_for(lambda: self._check() or all(self[n].role() == "replica" and
                                              (self[n].api()[1] or {}).get("state") == "running"
                                              for n in NODES[1:]),
                 180, interval=0.5, what="node2 and node3 streaming replicas")

    def _check(self):
        for n in self.nodes.values():
            if n.proc is not None and n.proc.poll() is not None:
                raise RuntimeError("patroni %s exited with rc=%s; log tail:\n%s"
                                   % (n.name, n.proc.returncode, n.log_tail()))
        return False

    @staticmethod
    def app_ready(node):
        try:
            psycopg2.connect(node.url(), connect_timeout=3).close()
            return True
        except psycopg2.Error:
            return False

    def leader(self):
        leaders = [n for n in NODES if self[n].role() == "primary"]
        return leaders[0] if len(leaders) == 1 else None

    def patronictl(self, *args, timeout=90):
        return subprocess.run(["patronictl", "-c", str(self.ctl_config), *args],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def wait_caught_up(self, timeout=60):
        """Every replica has replayed the leader's current WAL position."""
        leader = self[self.leader()]
        target = leader.execute("SELECT pg_current_wal_insert_lsn()::text")[0][0]
        for n in NODES:
            if n == leader.name:
                continue
            wait_for(lambda: (self[n].execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                              (target,)) or [[False]])[0][0],
                     timeout, interval=0.1, what="%s replayed %s" % (n, target))

    def stop(self):
        for n in self.nodes.values():
            n.stop()
        self.etcd.stop()


# One cluster for the module (bringing up etcd and three members takes
# a minute and a half on a small machine): the switchover test hands it
# back with node1 leading again, and the failover test, which ends node1,
# runs last.
@pytest.fixture(scope="module")
def patroni_cluster(request):
    _need("etcd")
    _need("patroni")
    _need("patronictl")
    base = Path(tempfile.mkdtemp(prefix="pgscale-it-patroni-"))
    _chown(base)
    c = Cluster(base)
    failed_before = request.session.testsfailed
    ok = False
    try:
        c.start()
        yield c
        ok = request.session.testsfailed == failed_before
    finally:
        c.stop()
        if ok and not os.environ.get("PGSCALE_IT_KEEP"):
            shutil.rmtree(base, ignore_errors=True)
        else:
            sys.stderr.write("\npgscale-it: kept the Patroni cluster's logs in %s\n" % base)


# --------------------------------------------------------------------------
# pgscale, a write load and an observer
# --------------------------------------------------------------------------
def start_pgscale(pgscale, cluster, **env):
    env.setdefault("PGSCALE_FAILOVER", "follow")
    env.setdefault("PGSCALE_MONITOR_INTERVAL", "100ms")
    env.setdefault("PGSCALE_FAILOVER_WAIT", "60s")   # a loaded CI host: carry the writes over
    pg = pgscale(DATABASE_URL=cluster["node1"].url(),
                 READ_REPLICA_URLS=",".join(cluster[n].url() for n in NODES[1:]), **env)
    wait_for(lambda: (lambda ns: len(ns) == 3 and all(r["state"] == "up" and r["lsn"]
                                                      for r in ns.values()))(nodes(pg)),
             30, interval=0.1, what="every node up and checked in SHOW NODES")
    return pg


def nodes(pg):
    return {r["node"]: r for r in pg.admin("SHOW NODES")}


def shown_primary(pg):
    """The member pgscale takes for the primary: node1 (DATABASE_URL) until
    it is fenced, then the member that SHOW NODES shows up as a primary."""
    ns = nodes(pg)
    if ns["primary"]["state"] != "fenced":
        return "node1"
    for name, shown in SHOWN.items():
        r = ns.get(shown)
        if r and r["role"] == "primary" and r["state"] == "up":
            return name
    return None


class Writer(threading.Thread):
    """Inserts (writer, seq) one autocommit INSERT at a time through pgscale
    over the raw protocol (so that each error's SQLSTATE is seen even when
    the connection closes after it); reconnects after a FATAL or a refused
    login.  attempts: (what, seq, sent, seconds, None or the error fields)
    with what 'login' or 'insert'."""

    def __init__(self, pg, wid, stop, table):
        super().__init__(daemon=True)
        self.pg, self.wid, self.stop, self.table = pg, wid, stop, table
        self.attempts = []
        self.problem = None

    def run(self):
        conn, seq = None, 0
        try:
            while not self.stop.is_set():
                if conn is None:
                    t0 = time.monotonic()
                    conn = pgwire.RawConn(self.pg.host, self.pg.port, timeout=90)
                    msgs = conn.startup(timeout=90)
                    errs = pgwire.errors(msgs)
                    if pgwire.ready_status(msgs) != "I":
                        self.attempts.append(("login", None, t0, time.monotonic() - t0,
                                              errs[0] if errs else {"M": "closed at login"}))
                        conn.close()
                        conn = None
                        time.sleep(0.1)
                        continue
                seq += 1
                t0 = time.monotonic()
                msgs = conn.simple_query("INSERT INTO %s (writer, seq) VALUES (%d, %d)"
                                         % (self.table, self.wid, seq), timeout=90)
                errs = pgwire.errors(msgs)
                if not errs and pgwire.ready_status(msgs) is None:
                    errs = [{"M": "connection closed without an answer"}]
                self.attempts.append(("insert", seq, t0, time.monotonic() - t0,
                                      errs[0] if errs else None))
                if conn.eof or errs:
                    conn.close()
                    conn = None
                time.sleep(0.02)
        except Exception as e:   # a hang or a protocol surprise: the test reports it
            self.problem = "%s: %s" % (type(e).__name__, e)
        finally:
            if conn is not None:
                conn.close()

    def acknowledged(self):
        return [(self.wid, a[1]) for a in self.attempts if a[0] == "insert" and a[4] is None]


class Reader(threading.Thread):
    """SELECTs through pgscale (psycopg2, autocommit: routed to a replica)
    every 50 ms, reconnecting after an error; outcomes: (sent, error or None)."""

    def __init__(self, pg, stop, table):
        super().__init__(daemon=True)
        self.pg, self.stop, self.table = pg, stop, table
        self.outcomes = []

    def run(self):
        conn = None
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = psycopg2.connect(self.pg.dsn(), connect_timeout=30)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM %s" % self.table)
                    cur.fetchall()
                self.outcomes.append((t0, None))
            except psycopg2.Error as e:
                self.outcomes.append((t0, "%s %s" % (e.pgcode, str(e).strip()[:200])))
                try:
                    conn.close()
                except Exception:
                    pass
                conn = None
            time.sleep(0.05)
        if conn is not None:
            conn.close()


class Observer(threading.Thread):
    """Every 100 ms: which member pgscale takes for the primary (SHOW NODES)
    and which one Patroni does (its REST API); samples (t, pgscale's, Patroni's)."""

    def __init__(self, pg, cluster, stop):
        super().__init__(daemon=True)
        self.pg, self.cluster, self.stop = pg, cluster, stop
        self.samples = []

    def run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                ours = shown_primary(self.pg)
            except psycopg2.Error:
                ours = "?"
            self.samples.append((t, ours, self.cluster.leader()))
            time.sleep(0.1)

    def first(self, col, value, after):
        for s in self.samples:
            if s[0] >= after and s[col] == value:
                return s[0]
        return None


def run_under_load(pgscale, cluster, table, act, **env):
    """Starts pgscale (follow) on the cluster, three writers, a reader and
    the observer; act() moves the primary away from node1; waits until
    Patroni has a new leader, pgscale shows it as the primary and every
    writer's INSERTs are acknowledged again; returns what was seen."""
    cluster["node1"].execute("CREATE TABLE %s (writer int, seq int, at timestamptz "
                             "DEFAULT clock_timestamp())" % table, db=APP_DB)
    cluster["node1"].execute("ALTER TABLE %s OWNER TO %s" % (table, APP_USER), db=APP_DB)
    cluster.wait_caught_up()
    pg = start_pgscale(pgscale, cluster, **env)
    stop, ostop = threading.Event(), threading.Event()
    writers = [Writer(pg, i, stop, table) for i in range(3)]
    reader = Reader(pg, stop, table)
    observer = Observer(pg, cluster, ostop)
    for t in writers + [reader, observer]:
        t.start()
    try:
        wait_for(lambda: all(len(w.acknowledged()) >= 10 for w in writers), 30,
                 what="writes flowing through pgscale")
        t_act = time.monotonic()
        act()
        t_acted = time.monotonic()
        new = wait_for(lambda: (lambda l: l if l not in (None, "node1") else None)(
            cluster.leader()), 90, interval=0.2, what="Patroni electing a new leader")
        wait_for(lambda: shown_primary(pg) == new, 60, interval=0.1,
                 what="pgscale showing %s as the primary" % new)
        t_seen = time.monotonic()
        wait_for(lambda: all(any(a[0] == "insert" and a[4] is None and a[2] > t_seen
                                 for a in w.attempts) for w in writers), 60,
                 what="every writer's INSERTs acknowledged again after the switch")
        time.sleep(2.0)   # and a little more load on the new primary
    finally:
        stop.set()
        for w in writers:
            w.join(120)
        reader.join(60)
        ostop.set()
        observer.join(30)
    assert not [w.problem for w in writers if w.problem], [w.problem for w in writers]
    return dict(pg=pg, writers=writers, reader=reader, observer=observer, t_act=t_act,
                t_acted=t_acted, t_seen=t_seen, new=new)


def summarize(seen, label):
    """The figures of one run, printed for the record; returns them."""
    writers, observer, t_act = seen["writers"], seen["observer"], seen["t_act"]
    attempts = [a for w in writers for a in w.attempts]
    failed = [a for a in attempts if a[4] is not None]
    ok_inserts = [a for a in attempts if a[0] == "insert" and a[4] is None]
    # the longest an acknowledged INSERT waited, and the window with no
    # INSERT acknowledged at all (from the last answer before the gap to
    # the first answer after it)
    answers = sorted(a[2] + a[3] for a in ok_inserts)
    gap = max((b - a for a, b in zip(answers, answers[1:]) if b > t_act), default=0.0)
    old = observer.samples[0][1]
    new_in_patroni = observer.first(2, seen["new"], t_act)
    new_in_pgscale = observer.first(1, seen["new"], t_act)
    figures = {
        "label": label,
        "patroni_leader_after_s": round(new_in_patroni - t_act, 2) if new_in_patroni else None,
        "pgscale_primary_after_s": round(new_in_pgscale - t_act, 2) if new_in_pgscale else None,
        "command_s": round(seen["t_acted"] - t_act, 2),
        "inserts_acknowledged": len(ok_inserts),
        "attempts_failed": len(failed),
        "failed_sqlstates": sorted(set("%s %s" % (a[0], a[4].get("C")) for a in failed)),
        "longest_acknowledged_insert_s": round(max(a[3] for a in ok_inserts), 2),
        "longest_gap_without_ack_s": round(gap, 2),
        "reads_ok": sum(1 for o in seen["reader"].outcomes if o[1] is None),
        "reads_failed": sum(1 for o in seen["reader"].outcomes if o[1] is not None),
        "old": old,
    }
    sys.stdout.write("\npatroni figures: %s\n" % json.dumps(figures))
    for a in failed:
        sys.stdout.write("  failed %s at +%.2f s after %.2f s: %s %s\n"
                         % (a[0], a[2] - t_act, a[3], a[4].get("C"), a[4].get("M")))
    return figures, failed


def check_outcome(seen, cluster, table, allowed_sqlstates, all_acked=True):
    """What must hold after any move of the primary under load."""
    pg, writers, new = seen["pg"], seen["writers"], seen["new"]
    leader = cluster[new]
    # Patroni still agrees, and the node is out of recovery
    assert cluster.leader() == new
    assert leader.in_recovery() is False
    # the rows, read on PostgreSQL itself
    rows = set(tuple(r) for r in leader.execute("SELECT writer, seq FROM %s" % table, db=APP_DB))
    # every INSERT acknowledged after the move began (all_acked: every one)
    # is on the new leader
    acked = [(w.wid, a[1]) for w in writers for a in w.attempts
             if a[0] == "insert" and a[4] is None and (all_acked or a[2] > seen["t_acted"])]
    missing = sorted(set(acked) - rows)
    assert not missing, "acknowledged INSERTs missing on %s: %r" % (new, missing[:20])
    # and those acknowledged after pgscale switched landed there
    after = [(w.wid, a[1]) for w in writers for a in w.attempts
             if a[0] == "insert" and a[4] is None and a[2] > seen["t_seen"]]
    assert after and all(k in rows for k in after)
    # the only errors are the loss of the connection (retry on a new one)
    for w in writers:
        for a in w.attempts:
            if a[4] is not None:
                assert a[4].get("C") in allowed_sqlstates, (w.wid, a)
    # reads worked throughout
    reader = seen["reader"]
    assert [o for o in reader.outcomes if o[1] is None and o[0] > seen["t_seen"]], \
        reader.outcomes[-10:]
    bad = [o for o in reader.outcomes if o[1] is not None]
    assert len(bad) <= 3, bad
    # pgscale followed, it promoted nothing: its FAILOVER line names the new
    # primary, and it never ran a promotion (nor could it: app may not call
    # pg_promote() in this cluster)
    text = pg.stderr_text()
    assert "FAILOVER: %s" % SHOWN[new] in text, text[-3000:]
    assert "promoting" not in text and "pg_promote" not in text, text[-3000:]
    # the old primary is fenced: nothing goes there any more
    assert nodes(pg)["primary"]["state"] == "fenced"


# --------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------
@pytest.mark.deadline(420)
def test_pgscale_follows_a_patroni_switchover_under_write_load(pgscale, patroni_cluster):
    c = patroni_cluster
    assert c.leader() == "node1"

    def switchover():
        r = c.patronictl("switchover", "--leader", "node1", "--candidate", "node2", "--force")
        assert r.returncode == 0, r.stdout + r.stderr

    seen = run_under_load(pgscale, c, "sw_t", switchover)
    figures, failed = summarize(seen, "switchover")
    assert seen["new"] == "node2"
    # The old leader shuts down cleanly: PostgreSQL ends its sessions with
    # 57P01 (passed on by pgscale), or pgscale reports a server connection
    # lost under a client with 08006.  No 25006: the old leader comes back
    # as a replica and no write may go there.  Every acknowledged INSERT is
    # on the new leader: a clean shutdown sends all WAL to the replicas.
    check_outcome(seen, c, "sw_t", {"08006", "57P01"})
    for w in seen["writers"]:
        for a in w.attempts:
            if a[4] is not None and a[4].get("C") == "57P01":
                assert "retry" in a[4].get("H", ""), a
    # the switch is Patroni's: the new leader is promoted, the old one
    # rejoins as its replica
    wait_for(lambda: c["node1"].role() == "replica" and
             (c["node1"].api()[1] or {}).get("state") == "running", 60, interval=0.5,
             what="node1 back as a replica")
    assert figures["pgscale_primary_after_s"] is not None
    # pgscale saw the fenced node1 as a replica: a switchover back to it is
    # followed too
    pg = seen["pg"]
    wait_for(lambda: nodes(pg)["primary"]["role"] == "replica", 30, interval=0.1,
             what="SHOW NODES: node1 a replica")
    c.wait_caught_up()
    r = c.patronictl("switchover", "--leader", "node2", "--candidate", "node1", "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    ns = wait_for(lambda: (lambda ns: ns if ns["replica1"]["state"] == "fenced" and
                           ns["primary"]["state"] == "up" else None)(nodes(pg)),
                  60, interval=0.1, what="pgscale following the switchover back to node1")
    assert ns["primary"]["role"] == "primary", ns
    assert c.leader() == "node1"
    with pgwire.RawConn(pg.host, pg.port, timeout=60) as conn:
        assert pgwire.ready_status(conn.startup(timeout=60)) == "I"
        assert not pgwire.errors(conn.simple_query(
            "INSERT INTO sw_t (writer, seq) VALUES (99, 1)", timeout=60))
    assert c["node1"].execute("SELECT count(*) FROM sw_t WHERE writer = 99", db=APP_DB) == [(1,)]


@pytest.mark.deadline(420)
def test_pgscale_follows_a_patroni_failover_after_the_leader_dies(pgscale, patroni_cluster):
    c = patroni_cluster
    # (after the switchover test: node1 leads, the others stream from it)
    wait_for(lambda: c.leader() == "node1" and all(
        c[n].role() == "replica" and (c[n].api()[1] or {}).get("state") == "running"
        for n in NODES[1:]), 120, interval=0.5, what="node1 leading two streaming replicas")
    c.wait_caught_up()
    # The leader's whole node dies (Patroni and PostgreSQL SIGKILLed):
    # Patroni promotes a replica once the leader key expires (ttl).  With
    # the defaults for everything but the monitor interval and the wait
    # (PGSCALE_FAILOVER_WAIT above ttl: the writes wait for the promotion).
    seen = run_under_load(pgscale, c, "fo_t", c["node1"].crash)
    figures, failed = summarize(seen, "failover")
    # In-flight INSERTs lose their server (08006); the others wait for the
    # new primary.  Replication is asynchronous, so an INSERT the dead
    # leader acknowledged just before it died may be missing on the new one
    # (Patroni's maximum_lag_on_failover bounds that, it does not prevent
    # it): only those acknowledged after the crash must all be there.
    check_outcome(seen, c, "fo_t", {"08006", "57P01"}, all_acked=False)
    for w in seen["writers"]:
        for a in w.attempts:
            if a[4] is not None:
                assert a[2] < seen["t_acted"] + 0.5, ("an INSERT sent after the crash failed", a)
    # Patroni took about ttl to promote; pgscale followed within seconds
    assert figures["pgscale_primary_after_s"] - figures["patroni_leader_after_s"] < 10, figures
