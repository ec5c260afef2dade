"""The result cache's settings end to end: PGSCALE_CACHE* and the file's
cache: section shown by SHOW CONFIG, cache.rules and the per-database /
per-user switch taken up by RELOAD, cache.max_memory reported as needing a
restart, and a bad rule refused with its file and line while the running
configuration stays."""
import subprocess
import textwrap

import psycopg2
import pytest

from conftest import PGSCALE_BIN
from helpers import wait_for


def write_config(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def show_config(pg):
    return {r["key"]: r["value"] for r in pg.admin("SHOW CONFIG")}


CONFIG = """\
    cache:
      enabled: on
      ttl: 2min
      max_memory: 64MB
      rules:
        - tables: [products, categories]
          ttl: 10min
        - query: SELECT count(*) FROM orders WHERE day = $1
          ttl: 10s
          database: app
    databases:
      ledger: {cache: off}
    """


def test_environment_cache_settings_are_shown(pgscale):
    pg = pgscale(PGSCALE_CACHE="on", PGSCALE_CACHE_TTL="45s", PGSCALE_CACHE_MAX_MEMORY="32MB",
                 PGSCALE_CACHE_MAX_ENTRY_SIZE="256kB", PGSCALE_CACHE_FILL_WAIT="0")
    conf = show_config(pg)
    assert conf["PGSCALE_CACHE"] == "on"
    assert conf["PGSCALE_CACHE_TTL"] == "45s"
    assert conf["PGSCALE_CACHE_MAX_MEMORY"] == "32MB"
    assert conf["PGSCALE_CACHE_MAX_ENTRY_SIZE"] == "256kB"
    assert conf["PGSCALE_CACHE_FILL_WAIT"] == "0"
    assert conf["cache.rules"] == ""


def test_cache_is_off_by_default(pgscale):
    conf = show_config(pgscale())
    assert conf["PGSCALE_CACHE"] == "off"
    assert conf["PGSCALE_CACHE_TTL"] == "300s"
    assert conf["PGSCALE_CACHE_MAX_MEMORY"] == "256MB"


def test_reload_takes_up_rules_and_switches_but_not_max_memory(pgscale, tmp_path):
    path = write_config(tmp_path / "pgscale.yaml", CONFIG)
    pg = pgscale(args=["--config", path])
    conf = show_config(pg)
    assert conf["PGSCALE_CACHE_TTL"] == "120s"
    assert conf["cache.rules[0]"] == "tables=products,categories ttl=600s"
    assert conf["cache.rules[1]"].startswith("fingerprint=")
    assert conf["cache.rules[1]"].endswith(" ttl=10s database=app")
    assert conf["databases.ledger"] == "cache=off"

    write_config(path, """\
        cache:
          enabled: on
          ttl: 30s
          max_memory: 128MB
          rules:
            - tables: [prices]
              user: web
        users:
          auditor: {cache: off}
        """)
    c = pg.connect(user="app", db="pgscale")
    with c.cursor() as cur:
        cur.execute("RELOAD")
    notes = "".join(c.notices)
    assert "PGSCALE_CACHE_MAX_MEMORY changed" in notes and "restart" in notes, c.notices
    conf = show_config(pg)
    assert conf["PGSCALE_CACHE_TTL"] == "30s"
    assert conf["PGSCALE_CACHE_MAX_MEMORY"] == "64MB"   # restart only
    assert conf["cache.rules[0]"] == "tables=prices user=web"
    assert "cache.rules[1]" not in conf
    assert "databases.ledger" not in conf
    assert conf["users.auditor"] == "cache=off"


def test_reload_refuses_a_bad_rule_with_file_and_line(pgscale, tmp_path):
    path = write_config(tmp_path / "pgscale.yaml", CONFIG)
    pg = pgscale(args=["--config", path])
    write_config(path, CONFIG.replace("SELECT count(*)", "SELEC count(*)"))
    with pytest.raises(psycopg2.Error) as exc:
        pg.admin("RELOAD")
    msg = str(exc.value)
    assert "pgscale.yaml:8: cache.rules[1].query: does not parse" in msg, msg
    assert "unchanged" in msg, msg
    conf = show_config(pg)
    assert conf["cache.rules[0]"] == "tables=products,categories ttl=600s"
    assert conf["cache.rules[1]"].endswith(" ttl=10s database=app")


def test_bad_cache_setting_stops_the_start(tmp_path):
    path = write_config(tmp_path / "pgscale.yaml", "cache:\n  rules:\n    - tables: []\n")
    r = subprocess.run([str(PGSCALE_BIN), "--config", str(path), "--check-config"],
                       env={"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db"},
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0
    assert "pgscale.yaml:3: cache.rules[0].tables: is empty" in r.stderr, r.stderr


def test_show_cache_has_a_row_per_rule(pgscale, primary, tmp_path):
    for t in ("rr_products", "rr_orders", "rr_other"):
        primary.app_execute("DROP TABLE IF EXISTS %s" % t)
        primary.app_execute("CREATE TABLE %s (id int PRIMARY KEY, v int)" % t)
        primary.app_execute("INSERT INTO %s SELECT g, g FROM generate_series(1, 5) g" % t)
    path = write_config(tmp_path / "pgscale.yaml", """\
        cache:
          enabled: on
          ttl: 2min
          rules:
            - tables: [rr_products]
              ttl: 10min
            - query: SELECT v FROM rr_orders WHERE id = 1
              ttl: 10s
        workers: 2
        """)
    pg = pgscale(args=["--config", path])

    def rows():
        return {r["rule"]: r for r in pg.admin("SHOW CACHE")}

    wait_for(lambda: int(rows()["total"]["catalog_generation"]) > 0, 15,
             what="the relation catalog loaded")
    r = rows()
    assert list(r) == ["total", "hint", "1", "2"], list(r)
    assert r["1"]["matches"] == "tables: rr_products" and r["1"]["ttl_ms"] == "600000"
    assert r["2"]["matches"] == "query: SELECT v FROM rr_orders WHERE id = 1"
    assert r["2"]["ttl_ms"] == "10000"
    assert r["total"]["rule"] == "total" and r["total"]["matches"] is None

    conn = pg.connect()
    cur = conn.cursor()
    # rule 1 three times, rule 2 twice with other constants (same
    # fingerprint, two entries), a hint once, a statement no rule admits
    for _ in range(3):
        cur.execute("SELECT sum(v) FROM rr_products")
    cur.execute("SELECT v FROM rr_orders WHERE id = 2")
    cur.execute("SELECT v FROM rr_orders WHERE id = 3")
    cur.execute("/* pgscale:cache */ SELECT sum(v) FROM rr_other")
    cur.execute("SELECT sum(v) FROM rr_other")

    # an unknown table right after the catalog loaded is not cached: retry
    # the first round until the store has counted it
    wait_for(lambda: (cur.execute("SELECT sum(v) FROM rr_products") or True) and
             int(rows()["1"]["entries"]) >= 1, 10, what="rule 1's entry stored")
    r = rows()
    h1, m1 = int(r["1"]["hits"]), int(r["1"]["misses"])
    for _ in range(4):
        cur.execute("SELECT sum(v) FROM rr_products")
    r = rows()
    assert int(r["1"]["hits"]) - h1 == 4 and int(r["1"]["misses"]) == m1, r["1"]
    assert int(r["1"]["entries"]) == 1 and int(r["1"]["bytes"]) > 0
    assert int(r["2"]["misses"]) == 2 and int(r["2"]["stored"]) == 2, r["2"]
    assert int(r["2"]["entries"]) == 2
    assert int(r["hint"]["stored"]) == 1 and int(r["hint"]["entries"]) == 1
    # the rows add up to the total (nothing else was cached)
    for col in ("hits", "misses", "entries", "bytes", "stored"):
        assert sum(int(r[k][col]) for k in ("hint", "1", "2")) == int(r["total"][col]), col
    # a write to rr_products: rule 1's entry is found stale at the next read
    cur.execute("UPDATE rr_products SET v = v WHERE id = 1")
    cur.execute("SELECT sum(v) FROM rr_products")
    assert int(rows()["1"]["invalidations"]) >= 1

    # RELOAD with other rules: the store is emptied, the rows restart
    write_config(path, """\
        cache:
          enabled: on
          rules:
            - tables: [rr_other]
        workers: 2
        """)
    pg.admin("RELOAD")
    r = rows()
    assert list(r) == ["total", "hint", "1"], list(r)
    assert r["1"]["matches"] == "tables: rr_other" and r["1"]["ttl_ms"] == "300000"
    assert int(r["total"]["entries"]) == 0 and int(r["1"]["hits"]) == 0
    assert int(r["hint"]["entries"]) == 0 and int(r["hint"]["stored"]) == 0


def test_show_cache_without_rules_has_a_default_row(pgscale):
    pg = pgscale(PGSCALE_CACHE="on", PGSCALE_CACHE_TTL="45s")
    r = {x["rule"]: x for x in pg.admin("SHOW CACHE")}
    assert list(r) == ["total", "default", "hint"], list(r)
    assert r["default"]["ttl_ms"] == "45000"
    assert r["default"]["matches"] == "every cacheable statement"


def test_cache_switched_on_by_reload_without_replicas(pgscale, primary, tmp_path):
    """Without replicas no monitor thread runs while the cache is off; a
    RELOAD that switches it on starts the primary's, which loads the
    relation catalog, and reads are cached from then on."""
    primary.app_execute("DROP TABLE IF EXISTS rl_on")
    primary.app_execute("CREATE TABLE rl_on (id int PRIMARY KEY, v int)")
    primary.app_execute("INSERT INTO rl_on VALUES (1, 10)")
    path = write_config(tmp_path / "pgscale.yaml", "cache:\n  enabled: off\n")
    pg = pgscale(args=["--config", path])

    def total():
        return pg.admin("SHOW CACHE")[0]

    assert total()["enabled"] == "off" and total()["catalog_generation"] == "0"
    write_config(path, "cache:\n  enabled: on\n")
    pg.admin("RELOAD")
    wait_for(lambda: int(total()["catalog_generation"]) > 0, 15,
             what="the relation catalog loaded after RELOAD")
    conn = pg.connect()
    cur = conn.cursor()

    def hit():
        before = int(total()["hits"])
        cur.execute("SELECT v FROM rl_on WHERE id = 1")
        assert cur.fetchall() == [(10,)]
        return int(total()["hits"]) > before

    wait_for(hit, 10, what="a cache hit after RELOAD switched the cache on")
    cur.execute("UPDATE rl_on SET v = 11 WHERE id = 1")
    cur.execute("SELECT v FROM rl_on WHERE id = 1")
    assert cur.fetchall() == [(11,)]
