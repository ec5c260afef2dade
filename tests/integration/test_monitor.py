"""The node monitor and SHOW NODES against real streaming replicas: roles,
WAL positions that follow the primary's writes, replay lag that grows on a
delayed replica and goes away after, a stopped replica marked down (naming
it) and up again."""
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import psycopg2
import pytest

import pgwire
from helpers import wait_for

NODES_COLUMNS = ["node", "role", "state", "addr", "port", "lag_bytes", "lag_seconds", "lsn",
                 "reads", "writes", "retried", "outstanding", "sync_state", "last_error"]


def lsn(text):
    """PostgreSQL's X/Y as a number."""
    hi, lo = text.split("/")
    return int(hi, 16) << 32 | int(lo, 16)


def nodes(pg):
    return {r["node"]: r for r in pg.admin("SHOW NODES")}


def admin_error(pg, sql):
    """(SQLSTATE, message) of an admin command that must fail."""
    try:
        pg.admin(sql)
    except psycopg2.Error as e:
        return e.pgcode, e.diag.message_primary
    pytest.fail("%s did not fail" % sql)


def start_with_replicas(pgscale, replicas, **env):
    env.setdefault("PGSCALE_MONITOR_INTERVAL", "100ms")
    env.setdefault("PGSCALE_FAILOVER", "off")
    return pgscale(READ_REPLICA_URLS=replicas.url_list(), **env)


def wait_all_checked(pg, n=3, timeout=15):
    return wait_for(lambda: (lambda ns: ns if len(ns) == n and all(
        r["state"] == "up" and r["lsn"] for r in ns.values()) else None)(nodes(pg)),
        timeout, interval=0.1, what="every node up and checked")


def primary_write(primary, rows=1):
    primary.app_execute("CREATE TABLE IF NOT EXISTS monitor_t (id serial, pad text)")
    primary.app_execute("INSERT INTO monitor_t (pad) SELECT repeat('x', 200) "
                        "FROM generate_series(1, %s)", (rows,))


def test_show_nodes_without_replicas_shows_the_primary_unchecked(pgscale, primary):
    pg = pgscale()
    cols, rows = pg.admin_columns("SHOW NODES")
    assert cols == NODES_COLUMNS
    assert len(rows) == 1
    r = rows[0]
    assert (r["node"], r["role"], r["state"]) == ("primary", "primary", "up"), r
    assert (r["addr"], int(r["port"])) == (primary.host, primary.port), r
    # no replicas: no monitor thread and no extra connection on the primary
    assert r["lsn"] is None and r["lag_bytes"] is None, r
    assert not [b for b in primary.backends() if b["application_name"] == "pgscale-monitor"]


def test_show_nodes_reports_roles_and_addresses(pgscale, primary, replicas):
    pg = start_with_replicas(pgscale, replicas)
    ns = wait_all_checked(pg)
    assert list(ns) == ["primary", "replica1", "replica2"]
    assert ns["primary"]["role"] == "primary"
    assert (ns["primary"]["addr"], int(ns["primary"]["port"])) == (primary.host, primary.port)
    for i, name in enumerate(["replica1", "replica2"]):
        r = ns[name]
        assert r["role"] == "replica", r
        assert (r["addr"], int(r["port"])) == (replicas[i].host, replicas[i].port), r
        assert r["last_error"] is None, r
        assert int(r["lag_bytes"]) >= 0 and float(r["lag_seconds"]) >= 0, r
    # one monitoring connection per node, named so that it can be told apart
    mon = [b for b in primary.backends() if b["application_name"] == "pgscale-monitor"]
    assert len(mon) == 1, mon


def test_show_nodes_lsn_advances_with_writes_on_the_primary(pgscale, primary, replicas):
    pg = start_with_replicas(pgscale, replicas)
    before = {k: lsn(v["lsn"]) for k, v in wait_all_checked(pg).items()}
    primary_write(primary, rows=1000)
    target = lsn(primary.execute("SELECT pg_current_wal_insert_lsn()::text")[0][0])
    assert target > before["primary"]
    # every node's position reaches the write: the primary's own, and the
    # replicas' replay positions
    after = wait_for(lambda: (lambda ns: ns if all(lsn(r["lsn"]) >= target
                                                   for r in ns.values()) else None)(nodes(pg)),
                     30, interval=0.1, what="every node's lsn past the write")
    for name in ("replica1", "replica2"):
        assert lsn(after[name]["lsn"]) > before[name], (before, after)
    assert lsn(after["primary"]["lsn"]) > before["primary"]


@pytest.mark.deadline(90)
def test_delayed_replica_lag_grows_and_drops_after(pgscale, primary, replicas_ctl):
    pg = start_with_replicas(pgscale, replicas_ctl)
    wait_all_checked(pg)
    replicas_ctl.set_apply_delay(0, 30000)
    # commits on the primary: replica1 receives them but holds them back
    samples = []
    for _ in range(8):
        primary_write(primary, rows=200)
        time.sleep(0.3)
        r = nodes(pg)["replica1"]
        samples.append((int(r["lag_bytes"]), float(r["lag_seconds"])))
    assert samples[-1][0] > 0, samples
    assert samples[-1][1] > samples[0][1] or samples[-1][1] > 1.0, samples
    # the undelayed replica keeps up meanwhile
    r2 = wait_for(lambda: (lambda r: r if int(r["lag_bytes"]) == 0 and
                           float(r["lag_seconds"]) == 0 else None)(nodes(pg)["replica2"]),
                  10, interval=0.1, what="replica2 without lag")
    assert r2["state"] == "up"
    # without the delay replica1 replays everything, and its lag goes back to 0
    replicas_ctl.set_apply_delay(0, 0)
    replicas_ctl.wait_replayed(0)
    wait_for(lambda: (lambda r: int(r["lag_bytes"]) == 0 and float(r["lag_seconds"]) == 0)(
        nodes(pg)["replica1"]), 10, interval=0.1, what="replica1's lag back to 0")


@pytest.mark.deadline(90)
def test_stopped_replica_is_down_naming_it_then_up_again(pgscale, primary, replicas_ctl):
    pg = start_with_replicas(pgscale, replicas_ctl)
    wait_all_checked(pg)
    replicas_ctl.stop(1)
    down = wait_for(lambda: (lambda r: r if r["state"] == "down" else None)(
        nodes(pg)["replica2"]), 10, interval=0.1, what="replica2 down")
    assert "replica2" in (down["last_error"] or ""), down
    # the others are not affected
    ns = nodes(pg)
    assert ns["primary"]["state"] == "up" and ns["replica1"]["state"] == "up", ns
    replicas_ctl.start(1)
    up = wait_for(lambda: (lambda r: r if r["state"] == "up" else None)(nodes(pg)["replica2"]),
                  15, interval=0.1, what="replica2 up again")
    assert up["role"] == "replica"
    text = pg.stderr_text()
    # each change logged once, not every check
    assert text.count("replica2 (%s:%d) is down" % (replicas_ctl[1].host,
                                                    replicas_ctl[1].port)) == 1, text[-3000:]
    assert "replica2 (%s:%d) is up again" % (replicas_ctl[1].host, replicas_ctl[1].port) in text


@pytest.mark.deadline(90)
def test_killed_replica_is_down_then_up_again(pgscale, primary, replicas_ctl):
    pg = start_with_replicas(pgscale, replicas_ctl)
    wait_all_checked(pg)
    replicas_ctl.kill(0)
    wait_for(lambda: nodes(pg)["replica1"]["state"] == "down", 10, interval=0.1,
             what="replica1 down after SIGKILL")
    replicas_ctl.start(0)
    wait_for(lambda: nodes(pg)["replica1"]["state"] == "up", 20, interval=0.1,
             what="replica1 up again")


def test_monitor_settings_shown_and_reloaded(pgscale, replicas):
    pg = start_with_replicas(pgscale, replicas, PGSCALE_MONITOR_INTERVAL="250ms",
                             PGSCALE_MAX_REPLICA_LAG="16MB")
    cfg = {r["key"]: r for r in pg.admin("SHOW CONFIG")}
    assert cfg["PGSCALE_MONITOR_INTERVAL"]["value"] == "250ms"
    assert cfg["PGSCALE_MONITOR_INTERVAL"]["default"] == "100ms"
    assert cfg["PGSCALE_MAX_REPLICA_LAG"]["value"] == "16MB"
    assert cfg["PGSCALE_MAX_REPLICA_LAG"]["default"] == "10s"
    assert cfg["PGSCALE_FAILOVER"]["value"] == "off"
    assert cfg["nodes.replicas.weight"]["value"] == "1, 1"


# --------------------------------------------------------------------------
# Failover, on a throw-away cluster of its own (a primary and two replicas)
# so that the session's `primary` stays the primary for the other tests.
# --------------------------------------------------------------------------
@pytest.fixture
def cluster(request):
    from conftest import Primary, Replica   # the session fixtures' classes
    base = Path(tempfile.mkdtemp(prefix="pgscale-it-cluster-"))  # postgres must reach it
    p = Primary(base)
    p.init()
    p.start()
    nodes_ = [p]
    try:
        p.bootstrap()
        # what failover: auto needs of the monitoring user (app) instead of a
        # superuser; docs/operations.md lists the same grants
        # (function grants are per database: the URL's, app)
        for sql in ("GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO app",
                    "GRANT EXECUTE ON FUNCTION pg_reload_conf() TO app",
                    "GRANT pg_read_all_settings TO app",
                    "GRANT ALTER SYSTEM ON PARAMETER primary_conninfo TO app"):
            p.execute(sql, db="app")
        reps = []
        for i in range(2):
            r = Replica(base / ("replica%d" % (i + 1)), p)
            r.init()
            r.start()
            nodes_.append(r)
            reps.append(r)
        yield p, reps
    finally:
        for n in reversed(nodes_[1:]):
            n.stop()
        p.cleanup(keep=request.node.rep_failed if hasattr(request.node, "rep_failed") else False)


def replayed(node, target):
    try:
        return node.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))[0][0]
    except Exception:
        return False


def visible(node, table):
    try:
        return node.execute("SELECT count(*) FROM pg_class WHERE relname = %s", (table,),
                            db="app")[0][0] == 1
    except Exception:
        return False


def replica_state(node):
    """What a replica says of its replay and its upstream (for a failure's message)."""
    try:
        return repr(node.execute(
            "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, "
            "(SELECT received_tli FROM pg_stat_wal_receiver), "
            "(SELECT status FROM pg_stat_wal_receiver), current_setting('primary_conninfo')")[0])
    except Exception as e:
        return "not answering: %s" % e


def start_on_cluster(pgscale, cluster, failover):
    p, reps = cluster
    return pgscale(DATABASE_URL=p.url(), READ_REPLICA_URLS=",".join(r.url() for r in reps),
                   PGSCALE_FAILOVER=failover, PGSCALE_FAILOVER_TIMEOUT="1s",
                   PGSCALE_MONITOR_INTERVAL="100ms")


@pytest.mark.deadline(120)
def test_failover_off_reports_a_down_primary_and_does_nothing(pgscale, cluster):
    p, reps = cluster
    pg = start_on_cluster(pgscale, cluster, "off")
    wait_all_checked(pg)
    p.stop()
    wait_for(lambda: nodes(pg)["primary"]["state"] == "down", 10, interval=0.1,
             what="the primary down")
    time.sleep(2)  # past failover_timeout
    ns = nodes(pg)
    assert ns["primary"]["state"] == "down", ns
    assert [ns[r]["role"] for r in ("replica1", "replica2")] == ["replica", "replica"], ns
    assert "failover is off: not acting" in pg.stderr_text()
    assert all(r.execute("SELECT pg_is_in_recovery()")[0][0] for r in reps)


@pytest.mark.deadline(120)
def test_failover_follow_takes_the_promoted_replica_and_fences_the_old_primary(pgscale, cluster):
    p, reps = cluster
    pg = start_on_cluster(pgscale, cluster, "follow")
    wait_all_checked(pg)
    p.stop()
    # an HA manager promotes replica2; pgscale follows, it does not promote
    time.sleep(1.5)
    assert nodes(pg)["replica1"]["role"] == "replica"
    reps[1].execute("SELECT pg_promote(true, 30)")
    ns = wait_for(lambda: (lambda ns: ns if ns["primary"]["state"] == "fenced" else None)(
        nodes(pg)), 15, interval=0.1, what="the old primary fenced")
    assert ns["replica2"]["role"] == "primary" and ns["replica2"]["state"] == "up", ns
    assert ns["replica1"]["role"] == "replica", ns
    text = pg.stderr_text()
    assert "FAILOVER: replica2" in text and "in place of primary" in text, text[-3000:]
    # replica1 was not touched (follow leaves the replicas to the HA manager)
    assert reps[0].execute("SELECT pg_is_in_recovery()")[0][0]
    # UNFENCE refuses it while it is down ...
    assert admin_error(pg, "UNFENCE primary") == (
        "55000", "UNFENCE refused: primary does not answer the monitor's checks: UNFENCE takes a "
        "node that answers as a replica of the primary (replica2)")
    # the fenced node stays fenced when it comes back
    p.start()
    # ... and while it is back as a primary (it may hold writes replica2 lacks)
    code, msg = wait_for(lambda: (lambda e: e if "does not answer" not in e[1] else None)(
        admin_error(pg, "UNFENCE primary")), 15, interval=0.1,
        what="the old primary answering the monitor again")
    assert code == "55000" and "primary says it is a primary" in msg, msg
    assert nodes(pg)["primary"]["state"] == "fenced"
    # what is not fenced, or not a node
    assert admin_error(pg, "UNFENCE replica1")[0] == "55000"
    assert admin_error(pg, "UNFENCE nosuchnode") == (
        "42704", "UNFENCE refused: no node is called \"nosuchnode\" (SHOW NODES lists them)")
    # no name, two names, a name past the console's 127 bytes: refused, nothing changed
    assert admin_error(pg, "UNFENCE")[0] == "42601"
    assert admin_error(pg, "UNFENCE primary replica1")[0] == "42601"
    assert admin_error(pg, "UNFENCE \"%s\"" % ("p" * 300))[0] == "42704"
    assert nodes(pg)["primary"]["state"] == "fenced"


@pytest.mark.deadline(120)
def test_failover_follow_takes_a_replica_promoted_while_the_primary_is_down_at_once(pgscale,
                                                                                  cluster):
    # A switchover (Patroni's) stops the primary and promotes a replica a
    # moment later: pgscale follows the replica it saw promoted without
    # waiting PGSCALE_FAILOVER_TIMEOUT for the old primary to come back
    p, reps = cluster
    pg = pgscale(DATABASE_URL=p.url(), READ_REPLICA_URLS=",".join(r.url() for r in reps),
                 PGSCALE_FAILOVER="follow", PGSCALE_FAILOVER_TIMEOUT="60s",
                 PGSCALE_MONITOR_INTERVAL="100ms")
    wait_all_checked(pg)
    p.stop()
    wait_for(lambda: nodes(pg)["primary"]["state"] == "down", 10, interval=0.1,
             what="the primary down")
    t0 = time.monotonic()
    reps[1].execute("SELECT pg_promote(true, 30)")
    ns = wait_for(lambda: (lambda ns: ns if ns["primary"]["state"] == "fenced" else None)(
        nodes(pg)), 30, interval=0.1, what="the old primary fenced")
    assert time.monotonic() - t0 < 30, "waited for PGSCALE_FAILOVER_TIMEOUT"
    assert ns["replica2"]["role"] == "primary" and ns["replica1"]["role"] == "replica", ns
    assert "FAILOVER: replica2" in pg.stderr_text()


@pytest.mark.deadline(120)
def test_failover_follow_sends_no_write_to_a_primary_back_as_a_standby(pgscale, cluster):
    # The old primary comes back as a standby before any replica is
    # promoted (or before the monitor has seen the promotion): the clients
    # waiting for the primary must not get servers there, where every write
    # fails with 25006; they wait, and go to the new primary when there is one
    p, reps = cluster
    p.app_execute("CREATE TABLE demoted_t (id int)")
    target = p.execute("SELECT pg_current_wal_insert_lsn()::text")[0][0]
    wait_for(lambda: all(replayed(r, target) for r in reps), 20, what="replicas caught up")
    pg = pgscale(DATABASE_URL=p.url(), READ_REPLICA_URLS=",".join(r.url() for r in reps),
                 PGSCALE_FAILOVER="follow", PGSCALE_FAILOVER_TIMEOUT="60s",
                 PGSCALE_FAILOVER_WAIT="3s", PGSCALE_MONITOR_INTERVAL="100ms")
    wait_all_checked(pg)
    with pgwire.RawConn(pg.host, pg.port, timeout=30) as c:
        assert pgwire.ready_status(c.startup()) == "I"
        assert not pgwire.errors(c.simple_query("INSERT INTO demoted_t VALUES (1)"))
    p.stop()
    # back as a standby of replica1 (no node is the primary now)
    rejoin_as_replica_of(p, reps[0])
    assert p.execute("SELECT pg_is_in_recovery()")[0][0]
    with pgwire.RawConn(pg.host, pg.port, timeout=30) as c:
        assert pgwire.ready_status(c.startup()) == "I"
        errs = pgwire.errors(c.simple_query("INSERT INTO demoted_t VALUES (2)", timeout=30))
    assert len(errs) == 1 and errs[0]["C"] == "08006", errs
    assert "failover has not completed" in errs[0]["M"], errs
    assert "hot standby" in errs[0]["M"], errs
    reps[1].execute("SELECT pg_promote(true, 30)")
    wait_for(lambda: nodes(pg)["primary"]["state"] == "fenced", 30, interval=0.1,
             what="the old primary fenced")
    with pgwire.RawConn(pg.host, pg.port, timeout=30) as c:
        assert pgwire.ready_status(c.startup()) == "I"
        assert not pgwire.errors(c.simple_query("INSERT INTO demoted_t VALUES (3)"))
    assert sorted(r[0] for r in reps[1].execute("SELECT id FROM demoted_t", db="app")) == [1, 3]
    assert "cannot execute INSERT in a read-only transaction" not in pg.stderr_text()


def switch_and_rejoin(pgscale, cluster, table):
    """A switchover with pgscale following: the primary stops, replica1 is
    promoted, the old primary (fenced) rejoins as replica1's replica.  table
    has one row, (1), written on replica1 after the switch and replayed by
    every replica (replica2, left pointing at the old primary by follow,
    streams through it).  Returns the pgscale, SHOW NODES showing the old
    primary a replica."""
    p, reps = cluster
    p.app_execute("CREATE TABLE %s (id int)" % table)
    target = p.execute("SELECT pg_current_wal_insert_lsn()::text")[0][0]
    wait_for(lambda: all(replayed(r, target) for r in reps), 20, what="replicas caught up")
    pg = pgscale(DATABASE_URL=p.url(), READ_REPLICA_URLS=",".join(r.url() for r in reps),
                 PGSCALE_FAILOVER="follow", PGSCALE_FAILOVER_TIMEOUT="60s",
                 PGSCALE_MONITOR_INTERVAL="100ms")
    wait_all_checked(pg)
    p.stop()
    reps[0].execute("SELECT pg_promote(true, 30)")
    wait_for(lambda: nodes(pg)["primary"]["state"] == "fenced", 30, interval=0.1,
             what="the old primary fenced")
    rejoin_as_replica_of(p, reps[0])
    reps[0].app_execute("INSERT INTO %s VALUES (1)" % table)
    target = reps[0].execute("SELECT pg_current_wal_insert_lsn()::text")[0][0]
    wait_for(lambda: replayed(p, target) and replayed(reps[1], target), 30, interval=0.2,
             what="the old primary and replica2 replaying replica1's WAL")
    wait_for(lambda: nodes(pg)["primary"]["role"] == "replica", 10, interval=0.1,
             what="SHOW NODES: the old primary a replica")
    return pg


def rejoin_as_replica_of(node, source):
    """node (stopped cleanly) restarts as a streaming replica of source, as
    an HA manager rejoins a former primary (a clean shutdown before the
    promotion: nothing to rewind)."""
    (node.datadir / "standby.signal").write_text("")
    with open(node.datadir / "postgresql.conf", "a") as f:
        f.write("\nprimary_conninfo = 'host=%s port=%d user=postgres'\n"
                % (source.host, source.port))
    node.start()


@pytest.mark.deadline(150)
def test_failover_follow_takes_back_a_fenced_primary_that_rejoined_and_was_promoted(pgscale,
                                                                                   cluster):
    # Patroni's switchover and back: primary -> replica1, the old primary
    # rejoins as a replica, replica1 -> primary.  pgscale follows both ways;
    # the fenced node is taken back only because it was seen as a replica
    # and then promoted (one that comes back still a primary stays fenced:
    # test_failover_follow_takes_the_promoted_replica_and_fences_the_old_primary)
    p, reps = cluster
    pg = switch_and_rejoin(pgscale, cluster, "back_t")
    ns = nodes(pg)
    assert ns["primary"]["state"] == "fenced", ns   # no reads go there meanwhile
    # and back
    reps[0].stop()
    p.execute("SELECT pg_promote(true, 30)")
    ns = wait_for(lambda: (lambda ns: ns if ns["replica1"]["state"] == "fenced" else None)(
        nodes(pg)), 30, interval=0.1, what="replica1 fenced")
    assert (ns["primary"]["role"], ns["primary"]["state"]) == ("primary", "up"), ns
    with pgwire.RawConn(pg.host, pg.port, timeout=30) as c:
        assert pgwire.ready_status(c.startup()) == "I"
        assert not pgwire.errors(c.simple_query("INSERT INTO back_t VALUES (2)", timeout=30))
    assert sorted(r[0] for r in p.execute("SELECT id FROM back_t", db="app")) == [1, 2]
    assert "FAILOVER: primary" in pg.stderr_text()
    assert "it was fenced, and has been a replica since" in pg.stderr_text()


@pytest.mark.deadline(150)
def test_unfence_gives_reads_back_to_a_former_primary_rejoined_as_a_replica(pgscale, cluster):
    # pgpool-II's pcp_attach_node: the operator rejoined the fenced former
    # primary as a replica of the new one and says so with UNFENCE
    p, reps = cluster
    # the monitoring user (app) may read pg_stat_replication's names: UNFENCE
    # then checks that the node streams from the primary
    p.execute("GRANT pg_read_all_stats TO app")
    pg = switch_and_rejoin(pgscale, cluster, "unfence_t")
    ns = nodes(pg)
    assert ns["primary"]["state"] == "fenced", ns
    reads_before, writes_before = int(ns["primary"]["reads"]), int(ns["primary"]["writes"])
    # the primary's check (every 100 ms) has seen it among its standbys
    time.sleep(0.5)
    conn = psycopg2.connect(pg.dsn(db="pgscale"))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("UNFENCE primary")
            assert cur.statusmessage == "UNFENCE"
        assert not conn.notices, conn.notices   # the streaming was checked
    finally:
        conn.close()
    ns = nodes(pg)
    assert (ns["primary"]["role"], ns["primary"]["state"]) == ("replica", "up"), ns
    assert (ns["replica1"]["role"], ns["replica1"]["state"]) == ("primary", "up"), ns
    # reads go there again, and see what replica1 wrote; writes do not
    app = psycopg2.connect(pg.dsn())
    try:
        app.autocommit = True
        with app.cursor() as cur:
            for _ in range(60):
                cur.execute("SELECT id FROM unfence_t ORDER BY id")
                assert cur.fetchall() == [(1,)]
            cur.execute("INSERT INTO unfence_t VALUES (2)")
    finally:
        app.close()
    ns = nodes(pg)
    assert int(ns["primary"]["reads"]) > reads_before, ns
    assert int(ns["primary"]["writes"]) == writes_before, ns
    assert [r[0] for r in reps[0].execute("SELECT id FROM unfence_t ORDER BY id", db="app")] \
        == [1, 2]
    assert "UNFENCE primary by C-" in pg.stderr_text()
    # once up, it is not fenced: a second UNFENCE says so
    assert admin_error(pg, "UNFENCE primary")[0] == "55000"


@pytest.mark.deadline(150)
def test_failover_auto_promotes_the_most_advanced_replica_and_repoints_the_other(pgscale,
                                                                                cluster):
    p, reps = cluster
    pg = start_on_cluster(pgscale, cluster, "auto")
    wait_all_checked(pg)
    p.app_execute("CREATE TABLE before_failover (id int)")
    target = p.execute("SELECT pg_current_wal_lsn()::text")[0][0]
    wait_for(lambda: all(replayed(r, target) for r in reps), 20, what="replicas caught up")
    p.stop()
    t0 = time.monotonic()
    ns = wait_for(lambda: (lambda ns: ns if ns["primary"]["state"] == "fenced" else None)(
        nodes(pg)), 40, interval=0.1, what="the old primary fenced")
    took = time.monotonic() - t0
    promoted = [n for n in ("replica1", "replica2") if ns[n]["role"] == "primary"]
    assert len(promoted) == 1, ns
    new = reps[0] if promoted[0] == "replica1" else reps[1]
    other = reps[1] if new is reps[0] else reps[0]
    assert not new.execute("SELECT pg_is_in_recovery()")[0][0]
    assert took >= 1.0, took   # not before failover_timeout
    text = pg.stderr_text()
    assert "promoting %s" % promoted[0] in text and "FAILOVER: %s" % promoted[0] in text, \
        text[-3000:]
    # the other replica now streams from the new primary
    wait_for(lambda: "port=%d" % new.port in other.execute("SHOW primary_conninfo")[0][0]
             .replace("'", ""), 15, what="the other replica's primary_conninfo repointed")
    new.app_execute("CREATE TABLE after_failover (id int)")
    # Waits for the table itself rather than for an LSN: a replica's replay
    # LSN and the new primary's are on different timelines until the replica
    # has switched to the new one, so comparing them can pass early.
    wait_for(lambda: visible(other, "after_failover"), 30, interval=0.2,
             what=lambda: "the other replica showing a table created on the new primary (%s)"
             % replica_state(other))


def test_reload_applies_monitor_settings_and_keeps_the_node_list(pgscale, replicas, tmp_path):
    conf = tmp_path / "pgscale.yaml"
    body = ("nodes:\n  replicas:\n    - %s\n    - {url: '%s', weight: 3}\n"
            % tuple(replicas.urls()))
    conf.write_text(body + "failover: 'off'\nmonitor_interval: 100ms\n")
    pg = pgscale(args=["--config", str(conf)])
    wait_all_checked(pg)
    cfg = {r["key"]: r["value"] for r in pg.admin("SHOW CONFIG")}
    assert cfg["nodes.replicas.weight"] == "1, 3"
    conf.write_text(body.replace("weight: 3", "weight: 5") +
                    "failover: follow\nmonitor_interval: 250ms\nload_balance: weighted\n")
    pg.admin("RELOAD")
    cfg = {r["key"]: r["value"] for r in pg.admin("SHOW CONFIG")}
    assert (cfg["PGSCALE_FAILOVER"], cfg["PGSCALE_MONITOR_INTERVAL"],
            cfg["PGSCALE_LOAD_BALANCE"]) == ("follow", "250ms", "weighted")
    # the node list (and so the weights) is restart-only, and RELOAD says so
    assert cfg["nodes.replicas.weight"] == "1, 3"
    text = pg.stderr_text()
    assert "nodes.replicas.weight changed, but takes effect only when pgscale restarts" in text
    assert "PGSCALE_FAILOVER changed" not in text and "PGSCALE_MONITOR_INTERVAL changed" not in text
    assert all(r["state"] == "up" for r in nodes(pg).values())


@pytest.mark.deadline(90)
def test_replica_cut_off_from_the_primary_shows_growing_lag(pgscale, primary, replicas_ctl):
    """A replica whose WAL receiver has stopped has replayed all it received,
    so PostgreSQL's own replay delay says 0; the monitor's says how stale it is."""
    pg = start_with_replicas(pgscale, replicas_ctl)
    wait_all_checked(pg)
    r = replicas_ctl[1]
    conninfo = r.execute("SHOW primary_conninfo")[0][0]
    try:
        r.execute("ALTER SYSTEM SET primary_conninfo = ''")
        r.execute("SELECT pg_reload_conf()")
        wait_for(lambda: not r.execute("SELECT count(*) FROM pg_stat_wal_receiver")[0][0], 10,
                 what="replica2's WAL receiver stopped")
        for _ in range(6):
            primary_write(primary, rows=100)
            time.sleep(0.3)
        row = nodes(pg)["replica2"]
        assert row["state"] == "up" and int(row["lag_bytes"]) > 0, row
        assert float(row["lag_seconds"]) >= 1.0, row
        assert float(nodes(pg)["replica1"]["lag_seconds"]) < 1.0
    finally:
        r.execute("ALTER SYSTEM SET primary_conninfo = %s", (conninfo,))
        r.execute("SELECT pg_reload_conf()")
    replicas_ctl.wait_replayed(1)
    wait_for(lambda: float(nodes(pg)["replica2"]["lag_seconds"]) == 0, 10, interval=0.1,
             what="replica2's lag back to 0")


@pytest.mark.deadline(150)
def test_failover_auto_follows_a_replica_promoted_elsewhere_and_repoints_the_other(pgscale,
                                                                                  cluster):
    p, reps = cluster
    pg = pgscale(DATABASE_URL=p.url(), READ_REPLICA_URLS=",".join(r.url() for r in reps),
                 PGSCALE_FAILOVER="auto", PGSCALE_FAILOVER_TIMEOUT="3s",
                 PGSCALE_MONITOR_INTERVAL="100ms")
    wait_all_checked(pg)
    p.stop()
    reps[1].execute("SELECT pg_promote(true, 30)")   # before pgscale's own timeout
    ns = wait_for(lambda: (lambda ns: ns if ns["primary"]["state"] == "fenced" else None)(
        nodes(pg)), 20, interval=0.1, what="the old primary fenced")
    assert ns["replica2"]["role"] == "primary" and ns["replica1"]["role"] == "replica", ns
    assert "promoting" not in pg.stderr_text()
    wait_for(lambda: "port=%d" % reps[1].port in reps[0].execute("SHOW primary_conninfo")[0][0]
             .replace("'", ""), 15, what="replica1 pointed at replica2")
    reps[1].app_execute("CREATE TABLE after_failover (id int)")
    target = reps[1].execute("SELECT pg_current_wal_lsn()::text")[0][0]
    wait_for(lambda: replayed(reps[0], target), 30, interval=0.2,
             what="replica1 replaying replica2's WAL")


# --------------------------------------------------------------------------
# Failover with synchronous replication: only a promotion that keeps every
# commit a client saw acknowledged.
# --------------------------------------------------------------------------
def set_sync_standbys(p, names):
    # the test clusters run with synchronous_commit off (speed): a commit
    # then waits for no standby
    p.execute("ALTER SYSTEM SET synchronous_commit = on")
    p.execute("ALTER SYSTEM SET synchronous_standby_names = '%s'" % names)
    p.execute("SELECT pg_reload_conf()")


def walreceiver_pid(replica):
    return replica.execute("SELECT pid FROM pg_stat_wal_receiver")[0][0]


def sync_states(pg):
    return {n: r["sync_state"] for n, r in nodes(pg).items()}


@pytest.mark.deadline(180)
def test_failover_auto_with_synchronous_replication_keeps_every_acknowledged_commit(pgscale,
                                                                                   cluster):
    """replica2 is the synchronous standby and replays 5 s behind; replica1
    is asynchronous and stops receiving 1 s before the primary dies, so it
    has replayed more than replica2 but received less (the choice by replay
    position picked it).  Writers insert through pgscale all along; every
    INSERT that was acknowledged must be on the new primary."""
    p, reps = cluster
    p.execute("GRANT pg_monitor TO app")     # pg_stat_replication's sync_state
    set_sync_standbys(p, "FIRST 1 (replica2)")
    reps[1].execute("ALTER SYSTEM SET recovery_min_apply_delay = '5s'")
    reps[1].execute("SELECT pg_reload_conf()")
    p.app_execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
    pg = start_on_cluster(pgscale, cluster, "auto")
    wait_all_checked(pg)
    wait_for(lambda: sync_states(pg) == {"primary": None, "replica1": "async",
                                         "replica2": "sync"}, 15, interval=0.1,
             what="SHOW NODES: replica2 sync, replica1 async")

    acked, errors, stop = [], [], threading.Event()

    def writer(k):
        n = 0
        while not stop.is_set():
            try:
                c = pg.connect()
            except psycopg2.Error:
                time.sleep(0.05)
                continue
            try:
                while not stop.is_set():
                    v = k * 1000000 + n
                    n += 1
                    c.cursor().execute("INSERT INTO acked VALUES (%s)", (v,))
                    acked.append(v)    # the commit was acknowledged
            except psycopg2.Error as e:
                errors.append((e.pgcode, str(e).strip()))
            finally:
                c.close()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        # replica1 stops receiving WAL (its replay keeps going for what it has)
        wr = walreceiver_pid(reps[0])
        os.kill(wr, signal.SIGSTOP)
        try:
            time.sleep(1.0)
            before = len(acked)
            p.stop_immediate()
            # replica1's receiver stays stopped (what the primary sent it
            # waits unread in its socket) until the failover is over
            ns = wait_for(lambda: (lambda ns: ns if ns["primary"]["state"] == "fenced"
                                   else None)(nodes(pg)), 60, interval=0.1,
                          what="the old primary fenced")
        finally:
            os.kill(wr, signal.SIGCONT)
        time.sleep(1.0)    # writes go on, to the new primary
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert before > 50, before                   # the load was running at the kill
    assert ns["replica2"]["role"] == "primary", ns   # the synchronous standby, not replica1
    text = pg.stderr_text()
    assert "promoting replica2" in text and "sync_state sync" in text, text[-3000:]
    assert "promoting replica1" not in text, text[-3000:]
    assert not reps[1].execute("SELECT pg_is_in_recovery()")[0][0]
    on_new = {r[0] for r in reps[1].execute("SELECT id FROM acked", db="app")}
    lost = sorted(set(acked) - on_new)
    assert not lost, "%d acknowledged rows missing on the new primary, e.g. %s" % (
        len(lost), lost[:5])
    assert len(acked) > before, "no write was acknowledged after the failover"
    # the writers saw at most the in-flight failures, each a connection error
    assert all(code in (None, "08006", "08003") for code, _ in errors), errors


@pytest.mark.deadline(150)
def test_failover_auto_does_not_promote_past_a_synchronous_standby_that_is_down(pgscale,
                                                                                cluster):
    p, reps = cluster
    p.execute("GRANT pg_monitor TO app")
    set_sync_standbys(p, "FIRST 1 (replica2)")
    pg = start_on_cluster(pgscale, cluster, "auto")
    wait_all_checked(pg)
    # both replicas placed by a check of the primary's made after their own
    # first checks (one before them finds replica1's name not yet known:
    # "unknown", and pgscale then refuses for that reason instead)
    wait_for(lambda: sync_states(pg) == {"primary": None, "replica1": "async",
                                         "replica2": "sync"}, 15, interval=0.1,
             what="replica2 sync and replica1 async")
    # the synchronous standby stops; with it gone no commit can be
    # acknowledged, and it keeps its place as the one waited for
    reps[1].stop()
    wait_for(lambda: nodes(pg)["replica2"]["state"] == "down", 10, interval=0.1,
             what="replica2 down")
    p.stop_immediate()
    wait_for(lambda: nodes(pg)["primary"]["state"] == "down", 10, interval=0.1,
             what="the primary down")
    time.sleep(3)      # well past failover_timeout (1 s)
    assert nodes(pg)["replica1"]["role"] == "replica"
    assert reps[0].execute("SELECT pg_is_in_recovery()")[0][0]
    text = pg.stderr_text()
    assert "synchronous replication was on" in text and "no synchronous standby is up" in text, \
        text[-3000:]
    # the synchronous standby comes back: it (or a replica holding as much)
    # is promoted
    reps[1].start()
    ns = wait_for(lambda: (lambda ns: ns if ns["primary"]["state"] == "fenced" else None)(
        nodes(pg)), 60, interval=0.1, what="the old primary fenced")
    assert [n for n in ("replica1", "replica2") if ns[n]["role"] == "primary"], ns


@pytest.mark.deadline(120)
def test_sync_state_unknown_without_pg_monitor_and_no_promotion(pgscale, cluster):
    """The monitoring user cannot see pg_stat_replication's sync_state:
    pgscale cannot tell which standby holds the acknowledged commits, so it
    says so and does not promote."""
    p, reps = cluster
    set_sync_standbys(p, "FIRST 1 (replica2)")
    pg = start_on_cluster(pgscale, cluster, "auto")
    wait_all_checked(pg)
    wait_for(lambda: sync_states(pg) == {"primary": None, "replica1": "unknown",
                                         "replica2": "unknown"}, 15, interval=0.1,
             what="sync_state unknown")
    p.stop_immediate()
    wait_for(lambda: nodes(pg)["primary"]["state"] == "down", 10, interval=0.1,
             what="the primary down")
    time.sleep(3)
    assert all(r.execute("SELECT pg_is_in_recovery()")[0][0] for r in reps)
    assert "the monitoring user needs pg_monitor" in pg.stderr_text()
