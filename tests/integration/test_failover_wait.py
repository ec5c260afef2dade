"""During a failover, clients that need the primary wait for the new one
(bounded by PGSCALE_FAILOVER_WAIT) instead of failing after
PGSCALE_SERVER_CONNECT_TIMEOUT; a write in flight when the primary died
gets 08006.  Each test runs on a throw-away cluster (test_monitor's)."""
import threading
import time

import pytest

import pgwire
from helpers import BOTH_MODES, wait_for
from test_monitor import cluster, nodes, replayed, wait_all_checked  # noqa: F401 (cluster: a fixture)


def start(pgscale, cluster, **env):
    p, reps = cluster
    env.setdefault("PGSCALE_FAILOVER", "auto")
    env.setdefault("PGSCALE_FAILOVER_TIMEOUT", "2s")
    env.setdefault("PGSCALE_MONITOR_INTERVAL", "100ms")
    pg = pgscale(DATABASE_URL=p.url(), READ_REPLICA_URLS=",".join(r.url() for r in reps), **env)
    wait_all_checked(pg)
    return pg


def fenced(pg):
    return (lambda ns: ns if ns["primary"]["state"] == "fenced" else None)(nodes(pg))


def new_primary(pg, reps):
    ns = nodes(pg)
    names = [n for n in ("replica1", "replica2") if ns[n]["role"] == "primary"]
    assert len(names) == 1, ns
    return reps[0] if names[0] == "replica1" else reps[1]


class Writer(threading.Thread):
    """Inserts (writer, seq) rows one autocommit INSERT at a time over the
    raw protocol (to see each error's SQLSTATE, which drivers hide when the
    connection closes after it); reconnects after a FATAL.  outcomes:
    (seq, conn number, started, seconds taken, None or the error fields)."""

    def __init__(self, pg, wid, stop):
        super().__init__(daemon=True)
        self.pg, self.wid, self.stop = pg, wid, stop
        self.outcomes = []
        self.problem = None

    def run(self):
        conn, nconn, seq = None, 0, 0
        try:
            while not self.stop.is_set():
                if conn is None:
                    conn = pgwire.RawConn(self.pg.host, self.pg.port, timeout=60)
                    nconn += 1
                    msgs = conn.startup(timeout=60)
                    if pgwire.ready_status(msgs) != "I":
                        self.problem = "login failed: %r" % pgwire.errors(msgs)
                        return
                seq += 1
                t0 = time.monotonic()
                msgs = conn.simple_query("INSERT INTO fw_t (writer, seq) VALUES (%d, %d)"
                                         % (self.wid, seq), timeout=60)
                errs = pgwire.errors(msgs)
                self.outcomes.append((seq, nconn, t0, time.monotonic() - t0,
                                      errs[0] if errs else None))
                if conn.eof:
                    conn.close()
                    conn = None
                time.sleep(0.02)
        except Exception as e:   # a hang or a protocol surprise: the test reports it
            self.problem = "%s: %s" % (type(e).__name__, e)
        finally:
            if conn is not None:
                conn.close()


@pytest.mark.deadline(150)
def test_writes_during_failover_wait_for_the_new_primary(pgscale, cluster):
    p, reps = cluster
    p.app_execute("CREATE TABLE fw_t (writer int, seq int)")
    # the table is on both replicas before the primary goes (replication is
    # asynchronous: what they have not received is lost with it)
    target = p.execute("SELECT pg_current_wal_insert_lsn()::text")[0][0]
    wait_for(lambda: all(replayed(r, target) for r in reps), 20, what="replicas caught up")
    # server_connect_timeout well inside the failover: today's bound would fail them
    pg = start(pgscale, cluster, PGSCALE_SERVER_CONNECT_TIMEOUT="1s")
    stop = threading.Event()
    writers = [Writer(pg, i, stop) for i in range(4)]
    for w in writers:
        w.start()
    wait_for(lambda: all(len(w.outcomes) >= 5 for w in writers), 20, what="writes flowing")
    p.stop_immediate()
    # pg_ctl returns once the server is gone: a write sent before that may
    # still have run on the old primary (and, replication being
    # asynchronous, be lost with it)
    t_dead = time.monotonic()
    # during the window: the writers wait (SHOW POOLS), and a new client logs in at once
    waiting = wait_for(lambda: [r for r in pg.admin("SHOW POOLS") if r["database"] == "app" and
                                r["node"] == "primary" and int(r["cl_waiting"]) > 0],
                       10, interval=0.05, what="clients waiting for the primary in SHOW POOLS")
    late = pgwire.RawConn(pg.host, pg.port, timeout=30)
    t0 = time.monotonic()
    assert pgwire.ready_status(late.startup()) == "I"
    assert time.monotonic() - t0 < 1.0, "login during the failover took %.1f s" % (
        time.monotonic() - t0)
    in_window = not fenced(pg)
    late.send(pgwire.query("INSERT INTO fw_t (writer, seq) VALUES (99, 1)"))
    wait_for(lambda: fenced(pg), 40, interval=0.05, what="the old primary fenced")
    t_switch = time.monotonic()
    late_msgs = late.read_until_ready(30)
    late.close()
    time.sleep(1.0)
    stop.set()
    for w in writers:
        w.join(90)
    assert not [w.problem for w in writers if w.problem], [w.problem for w in writers]
    assert in_window, "the late client logged in only after the failover"
    assert not pgwire.errors(late_msgs), late_msgs
    assert int(waiting[0]["cl_waiting"]) >= 1

    outcomes = [(w.wid,) + o for w in writers for o in w.outcomes]
    errors = [o for o in outcomes if o[5] is not None]
    for o in errors:
        e = o[5]
        # only what was in flight at the kill fails, and with 08006
        assert e.get("C") == "08006" and "server connection lost" in e.get("M", ""), o
        assert o[3] < t_dead + 0.5, ("an INSERT sent %.2f s after the kill failed: %r"
                                     % (o[3] - t_dead, e))
    assert len(errors) <= len(writers), errors
    # the INSERTs in flight during the window waited and succeeded after the
    # switch.  pg_ctl may return well after the server died (it polls), so a
    # writer may have sent its INSERT before t_dead and still waited: what
    # counts is that it was sent before the switch and answered well after
    # the old primary was gone (an answer from the old primary would have
    # come before it died)
    waited = [o for o in outcomes if o[5] is None and o[3] < t_switch and
              o[3] + o[4] > t_dead + 0.5]
    assert waited, "no INSERT waited through the failover"
    assert all(o[3] + o[4] >= t_switch - 0.5 for o in waited), waited
    # a client idle at the kill carried on on the same connection
    assert any(o[2] == 1 for o in waited), "every writer had to reconnect: %r" % waited
    # every INSERT acknowledged after the kill is on the new primary
    new = new_primary(pg, reps)
    rows = set(tuple(r) for r in new.execute("SELECT writer, seq FROM fw_t", db="app"))
    after = [(o[0], o[1]) for o in outcomes if o[5] is None and o[3] > t_dead]
    assert after and all(k in rows for k in after), sorted(set(after) - rows)
    assert (99, 1) in rows
    text = pg.stderr_text()
    assert "who go to %s, the primary now" % ("replica1" if new is reps[0] else "replica2") in text
    assert "PGSCALE_SERVER_CONNECT_TIMEOUT" not in text, text[-3000:]


@pytest.mark.deadline(120)
@pytest.mark.parametrize("failover", ["auto", "follow"])
def test_failover_wait_bounds_the_wait_with_a_clear_error(pgscale, cluster, failover):
    p, reps = cluster
    # failover cannot complete in time: auto waits 30 s, follow waits for nobody
    pg = start(pgscale, cluster, PGSCALE_FAILOVER=failover, PGSCALE_FAILOVER_TIMEOUT="30s",
               PGSCALE_FAILOVER_WAIT="500ms", PGSCALE_SERVER_CONNECT_TIMEOUT="5s")
    with pgwire.RawConn(pg.host, pg.port, timeout=10) as c:
        assert pgwire.ready_status(c.startup()) == "I"   # the pool learns the parameters
        p.stop_immediate()
        t0 = time.monotonic()
        c.send(pgwire.query("INSERT INTO nowhere VALUES (1)"))
        msgs = c.read_until_close(10)
        took = time.monotonic() - t0
    errs = pgwire.errors(msgs)
    assert len(errs) == 1 and errs[0]["S"] == "FATAL" and errs[0]["C"] == "08006", errs
    m = errs[0]["M"]
    assert "the primary primary (%s:%d) is down and failover has not completed" % (
        p.host, p.port) in m, m
    assert "within 0.5 s (PGSCALE_FAILOVER_WAIT; PGSCALE_FAILOVER is %s)" % failover in m, m
    assert "retry" in errs[0].get("H", ""), errs[0]
    # the bound, not the connect timeout (5 s)
    assert 0.45 <= took < 0.5 + 1.5, took
    assert nodes(pg)["primary"]["state"] == "down"


@pytest.mark.deadline(120)
def test_failover_off_fails_after_the_connect_timeout_as_before(pgscale, cluster):
    p, reps = cluster
    pg = start(pgscale, cluster, PGSCALE_FAILOVER="off", PGSCALE_FAILOVER_WAIT="30s",
               PGSCALE_SERVER_CONNECT_TIMEOUT="1s")
    with pgwire.RawConn(pg.host, pg.port, timeout=10) as c:
        assert pgwire.ready_status(c.startup()) == "I"
        p.stop_immediate()
        t0 = time.monotonic()
        c.send(pgwire.query("INSERT INTO nowhere VALUES (1)"))   # a write: the primary
        msgs = c.read_until_close(10)
        took = time.monotonic() - t0
    errs = pgwire.errors(msgs)
    assert len(errs) == 1 and errs[0]["C"] == "08006", errs
    assert "within 1000 ms (PGSCALE_SERVER_CONNECT_TIMEOUT)" in errs[0]["M"], errs
    assert took < 1 + 2, took


@pytest.mark.deadline(150)
@BOTH_MODES
def test_client_logging_in_during_failover_is_served_by_the_new_primary(pgscale, cluster,
                                                                        pool_mode):
    """Session mode: the login needs a server of its own.  Transaction mode:
    no client logged in before, so no server's parameters are known yet and
    the login needs a server too.  Both wait and log in on the new primary."""
    p, reps = cluster
    pg = start(pgscale, cluster, PGSCALE_POOL_MODE=pool_mode,
               PGSCALE_SERVER_CONNECT_TIMEOUT="1s")
    p.stop_immediate()
    wait_for(lambda: nodes(pg)["primary"]["state"] == "down", 10, interval=0.05,
             what="the primary down")
    with pgwire.RawConn(pg.host, pg.port, timeout=40) as c:
        t0 = time.monotonic()
        msgs = c.startup(timeout=40)
        assert not pgwire.errors(msgs), msgs
        assert pgwire.ready_status(msgs) == "I"
        assert fenced(pg), "logged in %.1f s later, before the failover" % (
            time.monotonic() - t0)
        msgs = c.simple_query("SELECT pg_is_in_recovery(), inet_server_port()")
        assert pgwire.data_rows(msgs) == [["f", str(new_primary(pg, reps).port)]], msgs
