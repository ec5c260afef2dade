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
