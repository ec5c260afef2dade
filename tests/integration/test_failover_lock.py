"""failover: auto with REDIS_URL: several pgscale instances in front of one
cluster promote one replica between them (the holder of the failover lock
in Redis), the others follow it; no promotion while Redis is unreachable
or another instance holds the lock.  Each test has a throw-away cluster
(test_monitor.py's `cluster`: a primary and two replicas) and a Redis."""
import re
import threading
import time

import pytest

from helpers import wait_for
from test_monitor import cluster, nodes, wait_all_checked  # noqa: F401 (a fixture)

REPLICAS = ("replica1", "replica2")


def start_locked(pgscale, cluster, redis, timeout="1s"):
    p, reps = cluster
    return pgscale(DATABASE_URL=p.url(), READ_REPLICA_URLS=",".join(r.url() for r in reps),
                   PGSCALE_FAILOVER="auto", PGSCALE_FAILOVER_TIMEOUT=timeout,
                   PGSCALE_MONITOR_INTERVAL="100ms", REDIS_URL=redis.url())


def sysid(p):
    return str(p.execute("SELECT system_identifier FROM pg_control_system()")[0][0])


def fenced(pg, timeout):
    return wait_for(lambda: (lambda ns: ns if ns["primary"]["state"] == "fenced" else None)(
        nodes(pg)), timeout, interval=0.1, what="the old primary fenced")


def not_in_recovery(reps):
    out = []
    for r in reps:
        try:
            if not r.execute("SELECT pg_is_in_recovery()")[0][0]:
                out.append(r)
        except Exception:
            pass
    return out


class PrimaryCounter:
    """Samples, until stopped, how many replicas say they are not in
    recovery; `most` is the highest count seen."""

    def __init__(self, reps):
        self.reps, self.most, self._stop = reps, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            self.most = max(self.most, len(not_in_recovery(self.reps)))
            time.sleep(0.05)

    def stop(self):
        self._stop.set()
        self._t.join(10)


@pytest.mark.deadline(150)
def test_two_instances_sharing_redis_promote_one_replica_and_both_follow_it(pgscale, cluster,
                                                                           redis):
    p, reps = cluster
    a = start_locked(pgscale, cluster, redis)
    b = start_locked(pgscale, cluster, redis)
    wait_all_checked(a)
    wait_all_checked(b)
    key = sysid(p)
    counter = PrimaryCounter(reps)
    try:
        p.stop_immediate()
        na, nb = fenced(a, 40), fenced(b, 40)
        # both take the same node for the primary
        new_a = [n for n in REPLICAS if na[n]["role"] == "primary"]
        new_b = [n for n in REPLICAS if nb[n]["role"] == "primary"]
        assert len(new_a) == 1 and new_a == new_b, (na, nb)
        time.sleep(1)   # a second promotion would come about now
    finally:
        counter.stop()
    new = reps[REPLICAS.index(new_a[0])]
    other = reps[1 - REPLICAS.index(new_a[0])]
    assert counter.most == 1, "two replicas out of recovery at once"
    assert not_in_recovery(reps) == [new]
    # exactly one pg_promote(): one instance says it promoted, with its epoch
    logs = [a.stderr_text(), b.stderr_text()]
    promoters = [t for t in logs if "promoting %s" % new_a[0] in t]
    assert len(promoters) == 1, logs
    assert not any(re.search(r"promoting replica\d", t) for t in logs if t is not promoters[0])
    m = re.search(r"FAILOVER: %s .*; failover lock epoch (\d+), instance (\S+)" % new_a[0],
                  promoters[0])
    assert m, promoters[0][-3000:]
    epoch = int(m.group(1))
    assert redis.cli("GET", "pgscale:%s:epoch" % key) == str(epoch)
    assert redis.cli("GET", "pgscale:%s:primary" % key) == "%s:%d:%d" % (new.host, new.port,
                                                                         epoch)
    assert redis.cli("GET", "pgscale:%s:failover" % key) == "%s:%d" % (m.group(2), epoch)
    # the other instance follows: the same FAILOVER line, without a promotion
    follower = logs[1] if promoters[0] is logs[0] else logs[0]
    assert "FAILOVER: %s" % new_a[0] in follower, follower[-3000:]
    # writes through each instance land on the new primary
    for i, pg in enumerate((a, b)):
        with pg.connect() as c, c.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS lock_t (via int)")
            cur.execute("INSERT INTO lock_t VALUES (%s)", (i,))
    assert sorted(r[0] for r in new.execute("SELECT via FROM lock_t", db="app")) == [0, 1]
    # the other replica was pointed at the new primary
    wait_for(lambda: "port=%d" % new.port in other.execute("SHOW primary_conninfo")[0][0]
             .replace("'", ""), 15, what="the other replica repointed")


@pytest.mark.deadline(150)
def test_no_promotion_while_redis_is_unreachable_then_failover_when_it_is_back(pgscale,
                                                                              cluster, redis):
    p, reps = cluster
    pg = start_locked(pgscale, cluster, redis)
    wait_all_checked(pg)
    redis.stop()
    p.stop_immediate()
    said = "failover: auto with REDIS_URL needs Redis to take the failover lock; Redis is " \
           "unreachable: not promoting"
    wait_for(lambda: said in pg.stderr_text(), 20, interval=0.1, what="the reason logged")
    time.sleep(2.5)   # several more tries (one every 0.5 s)
    text = pg.stderr_text()
    assert text.count(said) == 1, text[-3000:]   # said once, not at every try
    assert not re.search(r"promoting replica\d", text), text[-3000:]
    assert all(r.execute("SELECT pg_is_in_recovery()")[0][0] for r in reps)
    ns = nodes(pg)
    assert ns["primary"]["state"] == "down" and all(ns[n]["role"] == "replica"
                                                    for n in REPLICAS), ns
    redis.start()
    ns = fenced(pg, 30)
    promoted = [n for n in REPLICAS if ns[n]["role"] == "primary"]
    assert len(promoted) == 1, ns
    assert len(not_in_recovery(reps)) == 1
    assert "FAILOVER: %s" % promoted[0] in pg.stderr_text()


@pytest.mark.deadline(150)
def test_lock_held_by_another_instance_delays_promotion_until_it_expires(pgscale, cluster,
                                                                        redis):
    p, reps = cluster
    pg = start_locked(pgscale, cluster, redis)
    wait_all_checked(pg)
    key = sysid(p)
    # another instance took the lock at epoch 7, and then went silent
    redis.cli("SET", "pgscale:%s:epoch" % key, "7")
    redis.cli("SET", "pgscale:%s:failover" % key, "elsewhere:4242:1:7", "PX", "5000")
    t_set = time.monotonic()
    p.stop_immediate()
    wait_for(lambda: "held by another pgscale instance (elsewhere:4242:1:7)" in
             pg.stderr_text(), 10, interval=0.1, what="the holder named in the log")
    assert not not_in_recovery(reps)
    fenced(pg, 30)
    took = time.monotonic() - t_set
    assert took >= 4.8, took   # not before the lock expired
    text = pg.stderr_text()
    assert text.count("held by another pgscale instance") == 1, text[-3000:]
    assert len(not_in_recovery(reps)) == 1
    m = re.search(r"FAILOVER: (replica\d) .*; failover lock epoch (\d+), instance", text)
    assert m and m.group(2) == "8", text[-3000:]   # past the other holder's epoch
