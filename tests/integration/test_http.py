"""The HTTP listener (docs/monitoring.md): /metrics checked by the real
`promtool` and scraped by a real Prometheus during a pgbench run, its
figures compared with the admin console's; /api/status; /healthz; and
what a careless or hostile HTTP client gets (wrong methods, garbage,
oversized requests, a busy port)."""
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
import urllib.error
import urllib.request

import pytest

from helpers import APP_PASSWORD, LOCALHOST, free_port, pgbench, psql, run, wait_for


@pytest.fixture(scope="module")
def bench_db(primary):
    primary.execute("DROP DATABASE IF EXISTS httpbench")
    primary.execute("CREATE DATABASE httpbench OWNER app")
    r = pgbench(primary.port, ["-i", "-q", "-s", "1"], db="httpbench", password=APP_PASSWORD,
                timeout=120)
    assert r.returncode == 0, r.stderr
    return "httpbench"


def start_http(pgscale, **env):
    port = free_port()
    pg = pgscale(PGSCALE_HTTP_LISTEN="%s:%d" % (LOCALHOST, port), **env)
    pg.http = "http://%s:%d" % (LOCALHOST, port)
    wait_for(lambda: get(pg, "/healthz", ok_only=False)[0] in (200, 503), 10,
             what="the HTTP listener")
    return pg


def get(pg, path, ok_only=True, method="GET", timeout=10):
    req = urllib.request.Request(pg.http + path, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        if ok_only:
            raise
        return e.code, e.headers, e.read().decode()
    except (ConnectionError, urllib.error.URLError):
        if ok_only:
            raise
        return None, None, ""


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, frozenset(labels.items())): value} of the exposition text."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels = frozenset(LABEL.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def value(metrics, name, **labels):
    want = set(labels.items())
    got = [v for (n, ls), v in metrics.items() if n == name and want <= set(ls)]
    assert len(got) == 1, "%s%r: %d samples" % (name, labels, len(got))
    return got[0]


def promtool_check(text):
    r = run(["promtool", "check", "metrics"], 30, input=text)
    assert r.returncode == 0, "promtool check metrics failed:\n%s%s" % (r.stdout, r.stderr)
    return r


def show(pg, what, db):
    return [r for r in pg.admin("SHOW " + what) if r["database"] == db]


@pytest.mark.deadline(120)
def test_metrics_pass_promtool_and_match_the_admin_console(pgscale, bench_db):
    pg = start_http(pgscale, DB_POOL_SIZE=3, DB_MAX_OVERFLOW=2)
    r = pgbench(pg.port, ["-S", "-c", "6", "-j", "2", "-T", "4", "-n"], db=bench_db, timeout=60)
    assert r.returncode == 0, r.stderr
    # an error of class 22 and one of 42, as a client sees them
    assert psql(pg.port, "SELECT 1/0", db=bench_db).returncode != 0
    assert psql(pg.port, "SELECT * FROM no_such_table", db=bench_db).returncode != 0
    status, headers, text = get(pg, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    promtool_check(text)
    m = parse_metrics(text)
    stats = show(pg, "STATS", bench_db)[0]
    pools = show(pg, "POOLS", bench_db)[0]
    pool = dict(database=bench_db, user="app", node="primary")
    # nothing runs now: the console and /metrics agree exactly
    assert value(m, "pgscale_pool_transactions_total", **pool) == int(stats["xact_count"]) > 100
    assert value(m, "pgscale_pool_queries_total", **pool) == int(stats["query_count"])
    assert value(m, "pgscale_pool_received_bytes_total", **pool) == int(stats["bytes_received"])
    assert value(m, "pgscale_pool_sent_bytes_total", **pool) == int(stats["bytes_sent"])
    assert value(m, "pgscale_pool_servers_max", **pool) == int(pools["max_total"]) == 5
    assert value(m, "pgscale_pool_size", **pool) == 3
    total = sum(value(m, "pgscale_pool_servers", state=s, **pool) for s in ("active", "idle", "login"))
    assert 1 <= total <= 5 and total == int(pools["sv_total"])
    assert value(m, "pgscale_pool_clients", state="waiting", **pool) == 0
    # the histograms: cumulative buckets, +Inf == count == the counter
    for h, count_of in (("pgscale_pool_transaction_duration_seconds",
                         "pgscale_pool_transactions_total"),
                        ("pgscale_pool_wait_seconds", "pgscale_pool_checkouts_total")):
        buckets = sorted(((float(dict(ls)["le"]), v) for (n, ls), v in m.items()
                          if n == h + "_bucket" and ("database", bench_db) in ls))
        assert len(buckets) == 17 and buckets[-1][0] == math.inf, buckets
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), buckets
        assert buckets[-1][1] == value(m, h + "_count", **pool)
        assert value(m, h + "_count", **pool) == value(m, count_of, **pool)
    # 6 clients on 5 servers: some waited, so the wait sum is positive
    assert value(m, "pgscale_pool_wait_seconds_sum", **pool) > 0
    errs = {dict(ls)["class"]: v for (n, ls), v in m.items()
            if n == "pgscale_pool_errors_total" and ("database", bench_db) in ls}
    assert errs == {"22": 1, "42": 1}, errs
    # the process and the node
    assert value(m, "process_resident_memory_bytes") > 1 << 20
    assert value(m, "process_open_fds") > 5
    assert value(m, "pgscale_workers") >= 1
    assert value(m, "pgscale_node_up", node="primary") == 1
    assert value(m, "pgscale_node_primary", node="primary") == 1
    assert value(m, "pgscale_cache_enabled") == 0
    # the password of DATABASE_URL appears nowhere
    assert APP_PASSWORD not in text


@pytest.mark.deadline(150)
def test_a_real_prometheus_scrapes_pgscale_during_pgbench(pgscale, bench_db, tmp_path):
    pg = start_http(pgscale)
    prom_port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(textwrap.dedent("""\
        global:
          scrape_interval: 1s
          scrape_timeout: 1s
        scrape_configs:
          - job_name: pgscale
            static_configs:
              - targets: ['%s']
        """ % pg.http.split("//")[1]))
    r = run(["promtool", "check", "config", str(cfg)], 30)
    assert r.returncode == 0, r.stdout + r.stderr
    log = open(tmp_path / "prometheus.log", "wb")
    prom = subprocess.Popen(["prometheus", "--config.file=%s" % cfg,
                             "--storage.tsdb.path=%s" % (tmp_path / "tsdb"),
                             "--web.listen-address=%s:%d" % (LOCALHOST, prom_port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    api = "http://%s:%d/api/v1/" % (LOCALHOST, prom_port)

    def query(q):
        url = api + "query?" + urllib.parse.urlencode({"query": q})
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                d = json.loads(r.read())
        except (OSError, ValueError):
            return None
        assert d["status"] == "success", d
        return d["data"]["result"]

    try:
        wait_for(lambda: query("up") is not None, 40, what="prometheus answering")
        bench = threading.Thread(target=pgbench, args=(pg.port, ["-S", "-c", "4", "-T", "12", "-n"]),
                                 kwargs={"db": bench_db, "timeout": 60})
        bench.start()
        # the target is up, and the transactions counter is seen moving
        wait_for(lambda: [s for s in (query('up{job="pgscale"}') or []) if s["value"][1] == "1"],
                 30, what="prometheus scraping pgscale")
        rate = wait_for(lambda: [s for s in (query(
            'sum(rate(pgscale_pool_transactions_total{database="%s"}[5s]))' % bench_db) or [])
            if float(s["value"][1]) > 10], 30, what="a transaction rate in prometheus")
        bench.join(60)
        assert float(rate[0]["value"][1]) > 10
        p99 = query('histogram_quantile(0.99, sum by (le) (rate('
                    'pgscale_pool_transaction_duration_seconds_bucket{database="%s"}[10s])))'
                    % bench_db)
        assert p99 and 0 < float(p99[0]["value"][1]) < 10, p99
        nodes = query("pgscale_node_up")
        assert [n["metric"]["node"] for n in nodes] == ["primary"] and nodes[0]["value"][1] == "1"
        # no scrape failed, and every series came with HELP and TYPE
        health = json.loads(urllib.request.urlopen(api + "targets", timeout=5).read())
        t = health["data"]["activeTargets"][0]
        assert t["health"] == "up" and not t["lastError"], t
    finally:
        os.killpg(prom.pid, signal.SIGTERM)
        try:
            prom.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(prom.pid, signal.SIGKILL)
            prom.wait(5)
        log.close()


@pytest.mark.deadline(90)
def test_api_status_json_matches_show_pools_and_keeps_history(pgscale, bench_db):
    pg = start_http(pgscale, DB_POOL_SIZE=4)
    r = pgbench(pg.port, ["-S", "-c", "3", "-T", "3", "-n"], db=bench_db, timeout=60)
    assert r.returncode == 0, r.stderr
    assert psql(pg.port, "SELECT 1/0", db=bench_db).returncode != 0
    time.sleep(1.5)
    status, headers, body = get(pg, "/api/status")
    assert status == 200 and headers["Content-Type"] == "application/json"
    d = json.loads(body)
    for k in ("version", "time", "uptime_seconds", "workers", "listen", "process", "pools",
              "nodes", "cache", "totals", "history", "errors", "reloads"):
        assert k in d, k
    pool = [p for p in d["pools"] if p["database"] == bench_db][0]
    console = show(pg, "POOLS", bench_db)[0]
    for k in ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_total", "max_total"):
        assert pool[k] == int(console[k]), (k, pool, console)
    assert pool["pool_size"] == 4 and pool["max_total"] == 14
    assert d["nodes"][0]["name"] == "primary" and d["nodes"][0]["role"] == "primary"
    assert d["listen"] == ["%s:%d" % (LOCALHOST, pg.port)]
    # one sample a second; the run's transactions are in them
    assert len(d["history"]) >= 3
    assert sum(h["tps"] for h in d["history"]) > 50
    assert any(h["p50_ms"] is not None and h["p50_ms"] > 0 for h in d["history"])
    ts = [h["t"] for h in d["history"]]
    assert ts == sorted(ts)
    e = d["errors"][0]
    assert e["sqlstate"] == "22012" and "division by zero" in e["message"]
    assert e["database"] == bench_db and e["user"] == "app"
    assert APP_PASSWORD not in body
    # a refused reload is in it, with its reason
    pg.proc.send_signal(signal.SIGHUP)
    d2 = wait_for(lambda: (lambda j: j if j["reloads"]["count"] == 1 else None)(
        json.loads(get(pg, "/api/status")[2])), 10, what="the reload in /api/status")
    assert d2["reloads"]["last"]["ok"] is True and d2["reloads"]["failed"] == 0


@pytest.mark.deadline(60)
def test_healthz_follows_what_pgscale_can_serve(pgscale):
    # PostgreSQL unreachable: 503 once a connection attempt failed
    dead = free_port()
    pg = start_http(pgscale, DATABASE_URL="postgresql://app:%s@%s:%d/app" % (APP_PASSWORD,
                                                                          LOCALHOST, dead),
                    PGSCALE_SERVER_CONNECT_TIMEOUT="1s")
    assert get(pg, "/healthz", ok_only=False)[0] == 200  # nothing tried yet
    psql(pg.port, "SELECT 1", timeout=30)
    status, _, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(
        get(pg, "/healthz", ok_only=False)), 10, what="/healthz 503")
    assert "cannot connect to the primary" in body, body


@pytest.mark.deadline(60)
def test_healthz_is_503_while_draining(pgscale, primary):
    pg = start_http(pgscale)
    status, headers, body = get(pg, "/healthz")
    assert (status, body) == (200, "ok\n")
    # a client in a transaction keeps pgscale draining after SIGTERM
    import psycopg2
    conn = psycopg2.connect(host=LOCALHOST, port=pg.port, user="app", password=APP_PASSWORD,
                            dbname="app")
    cur = conn.cursor()
    cur.execute("BEGIN; SELECT 1")
    pg.proc.send_signal(signal.SIGTERM)
    status, _, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(
        get(pg, "/healthz", ok_only=False)), 10, what="/healthz 503 while draining")
    assert "draining" in body
    conn.rollback()
    conn.close()
    pg.wait_exit(20)


@pytest.mark.deadline(60)
def test_hostile_http_clients_get_errors_not_a_crash(pgscale):
    pg = start_http(pgscale)
    host, port = pg.http.split("//")[1].split(":")
    assert get(pg, "/nope", ok_only=False)[0] == 404
    status, headers, _ = get(pg, "/metrics", ok_only=False, method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, headers, body = get(pg, "/", ok_only=False)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert get(pg, "/metrics", method="HEAD")[2] == ""

    def raw(data, read=True):
        s = socket.create_connection((host, int(port)), timeout=10)
        try:
            s.sendall(data)
            return s.recv(200) if read else b""
        except OSError:
            return b""
        finally:
            s.close()

    # garbage: a 400 or the connection closed, never an answer
    assert raw(b"\x00\xff garbage \r\n\r\n")[:12] in (b"", b"HTTP/1.1 400")
    # headers far past the connection memory limit, a body never sent,
    # connections opened and dropped mid-request
    raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n")
    raw(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\nabc")
    for _ in range(50):
        raw(b"GET /api/status HTTP/1.1\r\nHo", read=False)
    # 100 connections at once, past the listener's own limit: some refused,
    # the process and the data path fine
    socks = []
    for _ in range(100):
        try:
            socks.append(socket.create_connection((host, int(port)), timeout=5))
        except OSError:
            break
    assert psql(pg.port, "SELECT 42").stdout.strip() == "42"
    for s in socks:
        s.close()
    wait_for(lambda: get(pg, "/healthz", ok_only=False)[0] == 200, 20,
             what="the listener serving again")
    assert pg.is_running()


@pytest.mark.deadline(60)
def test_a_busy_http_port_is_an_error_only_when_asked_for(pgscale):
    busy = socket.socket()
    busy.bind((LOCALHOST, 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    # the default address, taken (by this test, or by another pgscale)
    default = socket.socket()
    try:
        default.bind((LOCALHOST, 9930))
        default.listen(1)
    except OSError:
        pass
    try:
        pg = pgscale(PGSCALE_HTTP_LISTEN="%s:%d" % (LOCALHOST, port), wait=False)
        assert pg.wait_exit(20) == 1
        err = pg.stderr_text()
        assert "PGSCALE_HTTP_LISTEN: could not listen on 127.0.0.1:%d" % port in err, err
        # the default address: a warning, and pgscale serves
        pg2 = pgscale(PGSCALE_HTTP_LISTEN=None)
        assert psql(pg2.port, "SELECT 1").stdout.strip() == "1"
        assert "could not listen on 127.0.0.1:9930, the default address" in pg2.stderr_text()
    finally:
        busy.close()
        default.close()
    # a bad value stops pgscale at start, naming the setting
    r = run([os.environ.get("PGSCALE_BIN", "build/pgscale"), "--check-config"], 10,
            env={"DATABASE_URL": "postgresql://a@b/c", "PGSCALE_HTTP_LISTEN": "nonsense:x"})
    assert r.returncode == 1 and "PGSCALE_HTTP_LISTEN" in r.stderr, r.stderr


# -- access: basic auth (users of admin_users / stats_users) and TLS --------
def scram_secret(password, salt=b"0123456789abcdef", iterations=4096):
    import base64
    import hashlib
    import hmac
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()
    return "SCRAM-SHA-256$%d:%s$%s:%s" % (iterations, b64(salt), b64(hashlib.sha256(client_key).digest()),
                                          b64(server_key))


def get_auth(url, user=None, password=None, context=None):
    import base64
    req = urllib.request.Request(url)
    if user is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(
            ("%s:%s" % (user, password)).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()
    except (ConnectionError, urllib.error.URLError):
        # the listener binds a moment after the client port (slow under
        # the sanitizers): callers that wait retry on None
        return None, None, ""


@pytest.mark.deadline(60)
def test_basic_auth_admits_only_admin_and_stats_users_with_their_password(pgscale, tmp_path):
    import hashlib
    users = tmp_path / "users.txt"
    users.write_text('"opsadmin" "plainpw"\n"monitor" "%s"\n"scrammer" "%s"\n"nobody" "nopw"\n' % (
        "md5" + hashlib.md5(b"md5pwmonitor").hexdigest(), scram_secret("scrampw")))
    cfg = tmp_path / "pgscale.yaml"
    cfg.write_text(textwrap.dedent("""\
        auth: {file: %s}
        admin_users: [opsadmin]
        stats_users: [monitor, scrammer]
        http: {auth: basic}
        """ % users))
    pg = start_http(pgscale, args=["--config", str(cfg)])
    for path in ("/metrics", "/api/status", "/"):
        status, headers, _ = get_auth(pg.http + path)
        assert status == 401 and 'Basic realm="pgscale"' in headers["WWW-Authenticate"], path
    assert get_auth(pg.http + "/metrics", "opsadmin", "plainpw")[0] == 200     # plaintext
    assert get_auth(pg.http + "/api/status", "monitor", "md5pw")[0] == 200     # md5 secret
    assert get_auth(pg.http + "/", "scrammer", "scrampw")[0] == 200            # SCRAM secret
    assert get_auth(pg.http + "/metrics", "opsadmin", "wrong")[0] == 401
    assert get_auth(pg.http + "/metrics", "scrammer", "scrampw2")[0] == 401
    # a user with the right password but on neither list
    assert get_auth(pg.http + "/metrics", "nobody", "nopw")[0] == 401
    assert get_auth(pg.http + "/metrics", "ghost", "x")[0] == 401
    # /healthz stays open for load balancers
    assert get_auth(pg.http + "/healthz")[0] == 200
    text = pg.stderr_text()
    assert 'basic auth refused for user "nobody"' in text and "plainpw" not in text


@pytest.mark.deadline(60)
def test_basic_auth_needs_someone_to_admit(pgscale):
    pg = pgscale(PGSCALE_HTTP_LISTEN="%s:%d" % (LOCALHOST, free_port()), PGSCALE_HTTP_AUTH="basic",
                 wait=False)
    assert pg.wait_exit(20) == 1
    assert "admin_users and stats_users are empty" in pg.stderr_text()


@pytest.mark.deadline(90)
def test_https_with_the_configured_certificate(pgscale, tmp_path):
    import ssl
    r = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(tmp_path / "http.key"), "-out", str(tmp_path / "http.crt"),
             "-days", "30", "-subj", "/CN=localhost", "-addext",
             "subjectAltName=DNS:localhost,IP:127.0.0.1"], 60)
    assert r.returncode == 0, r.stderr
    port = free_port()
    pg = pgscale(PGSCALE_HTTP_LISTEN="%s:%d" % (LOCALHOST, port),
                 PGSCALE_HTTP_TLS_CERT=tmp_path / "http.crt", PGSCALE_HTTP_TLS_KEY=tmp_path / "http.key")
    ctx = ssl.create_default_context(cafile=str(tmp_path / "http.crt"))
    url = "https://%s:%d" % (LOCALHOST, port)
    status, _, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(
        get_auth(url + "/healthz", context=ctx)), 30, what="HTTPS /healthz")
    assert body == "ok\n"
    status, _, text = get_auth(url + "/metrics", context=ctx)
    assert status == 200 and "pgscale_workers" in text
    # plain HTTP on the HTTPS port gets nothing useful
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen("http://%s:%d/metrics" % (LOCALHOST, port), timeout=5).read()
    # one file without the other is refused at start
    pg2 = pgscale(PGSCALE_HTTP_LISTEN="%s:%d" % (LOCALHOST, free_port()),
                  PGSCALE_HTTP_TLS_CERT=tmp_path / "http.crt", wait=False)
    assert pg2.wait_exit(20) == 1
    assert "PGSCALE_HTTP_TLS_CERT and PGSCALE_HTTP_TLS_KEY go together" in pg2.stderr_text()


@pytest.mark.deadline(120)
def test_metrics_of_replicas_and_the_cache(pgscale, primary, replicas, redis):
    from test_cache import fresh_table, one, show_cache, start_cached
    fresh_table(primary, "http_cached")
    primary.app_execute("INSERT INTO http_cached VALUES (1, 10)")
    # made around pgscale: the replicas must have it before reads go there
    from test_monitor import replayed
    target = primary.execute("SELECT pg_current_wal_insert_lsn()::text")[0][0]
    wait_for(lambda: all(replayed(replicas[i], target) for i in range(len(replicas))), 20,
             what="replicas caught up")
    port = free_port()
    pg = start_cached(pgscale, READ_REPLICA_URLS=replicas.url_list(), REDIS_URL=redis.url(),
                      PGSCALE_HTTP_LISTEN="%s:%d" % (LOCALHOST, port))
    pg.http = "http://%s:%d" % (LOCALHOST, port)
    wait_for(lambda: get(pg, "/healthz", ok_only=False)[0] == 200, 10, what="the HTTP listener")
    wait_for(lambda: all(n["lsn"] for n in pg.admin("SHOW NODES")), 20, what="nodes checked")
    conn = pg.connect()
    conn.autocommit = True
    wait_for(lambda: one(conn, "SELECT v FROM http_cached WHERE id = 1") == [(10,)] and
             int(show_cache(pg)["hits"]) >= 3, 20, what="cache hits")
    one(conn, "UPDATE http_cached SET v = 11 WHERE id = 1")
    assert one(conn, "SELECT v FROM http_cached WHERE id = 1") == [(11,)]
    text = get(pg, "/metrics")[2]
    promtool_check(text)
    m = parse_metrics(text)
    total = show_cache(pg)
    assert value(m, "pgscale_cache_enabled") == 1
    assert value(m, "pgscale_cache_hits_total", rule="default") == int(total["hits"]) >= 3
    assert value(m, "pgscale_cache_misses_total", rule="default") == int(total["misses"])
    assert value(m, "pgscale_cache_invalidations_total", rule="default") == int(
        total["invalidations"])
    assert value(m, "pgscale_cache_redis_up") == value(m, "pgscale_cache_redis_workers") >= 1
    nodes = {r["node"]: r for r in pg.admin("SHOW NODES")}
    for name in ("replica1", "replica2"):
        assert value(m, "pgscale_node_up", node=name) == 1
        assert value(m, "pgscale_node_primary", node=name) == 0
        assert value(m, "pgscale_node_replay_lag_bytes", node=name) >= 0
        assert value(m, "pgscale_node_replay_lag_seconds", node=name) >= 0
        assert value(m, "pgscale_node_reads_total", node=name) <= int(nodes[name]["reads"])
    assert value(m, "pgscale_node_info", node="replica1", role="replica", state="up") == 1
    # the status JSON says the same
    d = json.loads(get(pg, "/api/status")[2])
    assert d["cache"]["enabled"] is True and d["cache"]["redis"] == "up"
    assert d["cache"]["hits"] >= 3 and 0 < d["cache"]["hit_ratio"] <= 1
    assert [n["role"] for n in d["nodes"]] == ["primary", "replica", "replica"]
    assert all(n["lag_bytes"] is not None for n in d["nodes"][1:])
    conn.close()
