"""The live status page (`/` on the HTTP listener) in a real browser:
headless Chromium driven by Selenium loads it from a pgscale in front of the
test primary while pgbench runs through pgscale, and reads the figures the
page shows (every figure has an id, or data-pool/data-node + data-field,
and its raw value in data-value) to compare them with the admin console's
SHOW POOLS.

Screenshots (desktop and phone) are saved as test artefacts into
$PGSCALE_TEST_ARTEFACTS, or the test's temp dir; the path is printed."""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers import (APP_PASSWORD, LOCALHOST, client_env, finish_pgbench, free_port, pgbench,
                     port_accepts, wait_for)

CHROMEDRIVER = "/usr/bin/chromedriver"
BENCH_DB = "pagebench"
POOL_SIZE, MAX_OVERFLOW = 4, 2           # max_total 6, below pgbench's 8 clients: some wait
PGBENCH_CLIENTS, PGBENCH_SECONDS = 8, 15


# --------------------------------------------------------------------------
# the browser
# --------------------------------------------------------------------------
def _browser(width, height):
    """Headless Chromium at width x height (CSS pixels) with its console log
    kept; page loads and scripts time out instead of hanging the test."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("python3-selenium is missing: run scripts/install-deps.sh")
    if not (os.access(CHROMEDRIVER, os.X_OK) and shutil.which("chromium")):
        pytest.fail("chromium and chromium-driver are missing: run scripts/install-deps.sh")
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=%d,%d" % (width, height), "--hide-scrollbars"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(10)
        # --window-size sets the outer window; a phone-size window needs the
        # explicit resize to get an inner width below the default minimum
        driver.set_window_size(width, height)
    except Exception:
        driver.quit()
        raise
    return driver


def js_errors(driver):
    """Console errors and uncaught exceptions logged so far (each entry is
    returned once: the log is drained)."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def artefacts_dir(tmp_path):
    d = Path(os.environ.get("PGSCALE_TEST_ARTEFACTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_screenshot(driver, path, full_page=True):
    """A screenshot of the whole page (the window is made as tall as the
    page for it, then put back)."""
    size = driver.get_window_size()
    w, h = size["width"], size["height"]
    if full_page:
        height, inner = driver.execute_script(
            "return [document.documentElement.scrollHeight, window.innerHeight]")
        driver.set_window_size(w, min(int(height) + (h - int(inner)), 8000))
        time.sleep(0.5)   # the charts redraw on resize (debounced 100 ms)
    driver.save_screenshot(str(path))
    if full_page:
        driver.set_window_size(w, h)
    print("status page screenshot: %s" % path)


PAGE_STATE_JS = """
const v = (el) => el ? el.getAttribute('data-value') : null;
const pool = {};
const row = document.querySelector('tr[data-pool="' + arguments[0] + '"]');
if (row) row.querySelectorAll('[data-field]').forEach(
    (el) => { pool[el.getAttribute('data-field')] = el.hasAttribute('data-value') ? v(el) : el.textContent; });
const nodes = {};
document.querySelectorAll('tr[data-node]').forEach((tr) => {
  const n = {};
  tr.querySelectorAll('[data-field]').forEach((el) => { n[el.getAttribute('data-field')] = el.textContent; });
  nodes[tr.getAttribute('data-node')] = n;
});
return {connection: document.body.getAttribute('data-connection'),
        tps: v(document.getElementById('tps-now')),
        waiting: v(document.getElementById('waiting-now')),
        clients: v(document.getElementById('clients')),
        pool: row ? pool : null, nodes: nodes,
        scrollWidth: document.body.scrollWidth, innerWidth: window.innerWidth};
"""


def page_state(driver, pool_key):
    return driver.execute_script(PAGE_STATE_JS, pool_key)


def num(v):
    return float(v) if v not in (None, "") else None


# --------------------------------------------------------------------------
# pgscale with the HTTP listener, and pgbench through it
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_db(primary):
    primary.execute("DROP DATABASE IF EXISTS %s" % BENCH_DB)
    primary.execute("CREATE DATABASE %s OWNER app" % BENCH_DB)
    r = pgbench(primary.port, ["-i", "-q", "-s", "1"], db=BENCH_DB, password=APP_PASSWORD,
                timeout=120)
    assert r.returncode == 0, r.stderr
    return BENCH_DB


def start_with_http(pgscale, http_port=None, **env):
    """pgscale with its HTTP listener on a free loopback port; (pg, url)."""
    http_port = http_port or free_port()
    pg = pgscale(PGSCALE_HTTP_LISTEN="%s:%d" % (LOCALHOST, http_port), **env)
    wait_for(lambda: port_accepts(http_port), 10, what="the HTTP listener on port %d" % http_port)
    return pg, "http://%s:%d/" % (LOCALHOST, http_port)


def start_pgbench(port, db, seconds):
    argv = ["pgbench", "-h", LOCALHOST, "-p", str(port), "-U", "app", "-n",
            "-c", str(PGBENCH_CLIENTS), "-j", "2", "-T", str(seconds), db]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=client_env(), stdin=subprocess.DEVNULL)




def admin_pool(pg, db):
    r = pg.pool(db)
    assert r is not None, "SHOW POOLS has no row for %s/app" % db
    return {k: (int(v) if isinstance(v, (int, str)) and str(v).lstrip("-").isdigit() else v)
            for k, v in r.items()}


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------
@pytest.mark.deadline(150)
def test_status_page_shows_moving_tps_and_the_pools_of_show_pools_during_pgbench(
        pgscale, bench_db, tmp_path):
    pg, url = start_with_http(pgscale, DB_POOL_SIZE=POOL_SIZE, DB_MAX_OVERFLOW=MAX_OVERFLOW,
                              DB_POOL_TIMEOUT=30)
    key = "%s/app/primary" % bench_db
    bench = start_pgbench(pg.port, bench_db, PGBENCH_SECONDS)
    driver = None
    try:
        driver = _browser(1280, 900)
        driver.get(url)
        st = wait_for(lambda: (lambda s: s if s["connection"] == "live" and s["pool"] and
                               (num(s["tps"]) or 0) > 0 else None)(page_state(driver, key)),
                      20, interval=0.5, what="the page live with pool %s and tps > 0" % key)
        first_tps = num(st["tps"])

        # the tps figure moves: a different value a few seconds later
        time.sleep(2)
        st = wait_for(lambda: (lambda s: s if num(s["tps"]) not in (None, 0, first_tps) else None)(
            page_state(driver, key)), 10, interval=0.5,
            what="the tps figure to change from %s" % first_tps)
        assert num(st["tps"]) > 0, st

        # the pool row agrees with SHOW POOLS read at about the same time:
        # max_total exactly (configuration), sv_total within 1 (the page's
        # data is up to a second old), clients (active + waiting) within 1
        def pools_agree():
            before = admin_pool(pg, bench_db)
            s = page_state(driver, key)
            after = admin_pool(pg, bench_db)
            p = s["pool"]
            if p is None:
                return None
            page = {f: int(p[f]) for f in ("max_total", "sv_total", "cl_active", "cl_waiting")}
            assert page["max_total"] == before["max_total"] == POOL_SIZE + MAX_OVERFLOW, (page, before)
            assert 1 <= page["sv_total"] <= page["max_total"], page
            lo = min(before["sv_total"], after["sv_total"]) - 1
            hi = max(before["sv_total"], after["sv_total"]) + 1
            page_clients = page["cl_active"] + page["cl_waiting"]
            adm_clients = [r["cl_active"] + r["cl_waiting"] for r in (before, after)]
            ok = (lo <= page["sv_total"] <= hi and
                  min(adm_clients) - 1 <= page_clients <= max(adm_clients) + 1)
            return (page, before, after) if ok else None
        page, before, after = wait_for(pools_agree, 10, interval=0.5,
                                       what="the page's pool row to match SHOW POOLS")
        print("page pool %s; SHOW POOLS before %s after %s" % (page, before, after))

        # the nodes table shows the primary up
        nodes = page_state(driver, key)["nodes"]
        assert "primary" in nodes, nodes
        assert nodes["primary"].get("role") == "primary", nodes
        assert nodes["primary"].get("state") == "up", nodes

        save_screenshot(driver, artefacts_dir(tmp_path) / "status-page-desktop.png")

        out = finish_pgbench(bench, PGBENCH_SECONDS + 45)
        bench = None
        assert "number of failed transactions: 0" in out, out[-2000:]

        # once pgbench is gone, nobody waits: on the page and in SHOW POOLS
        def nobody_waits():
            s = page_state(driver, key)
            adm = admin_pool(pg, bench_db)
            page_waiting = int(s["pool"]["cl_waiting"]) if s["pool"] else 0
            return (s, adm) if page_waiting == 0 and num(s["waiting"]) == 0 and \
                adm["cl_waiting"] == 0 else None
        wait_for(nobody_waits, 10, interval=0.5, what="cl_waiting 0 on the page and in SHOW POOLS")

        errors = js_errors(driver)
        assert not errors, "the page logged errors: %r" % errors
    finally:
        if bench is not None and bench.poll() is None:
            bench.kill()
            bench.communicate()
        if driver is not None:
            driver.quit()


@pytest.mark.deadline(90)
def test_status_page_fits_a_phone_screen_without_horizontal_scrolling(pgscale, tmp_path):
    pg, url = start_with_http(pgscale)
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    driver = None
    try:
        driver = _browser(390, 844)
        driver.get(url)
        st = wait_for(lambda: (lambda s: s if s["connection"] == "live" and s["pool"] else None)(
            page_state(driver, "app/app/primary")), 20, interval=0.5,
            what="the page live with pool app/app/primary")
        assert st["innerWidth"] <= 400, "the window is not phone-sized: %r" % st
        assert st["scrollWidth"] <= st["innerWidth"], \
            "the page scrolls sideways at %d px: body is %d px wide" % (st["innerWidth"], st["scrollWidth"])
        save_screenshot(driver, artefacts_dir(tmp_path) / "status-page-phone.png")
        errors = js_errors(driver)
        assert not errors, "the page logged errors: %r" % errors
    finally:
        if driver is not None:
            driver.quit()


@pytest.mark.deadline(90)
def test_status_page_shows_connection_lost_and_recovers_when_pgscale_is_back(pgscale):
    http_port = free_port()
    pg, url = start_with_http(pgscale, http_port)
    driver = None
    try:
        driver = _browser(1280, 900)
        driver.get(url)

        def connection():
            return driver.execute_script("return document.body.getAttribute('data-connection')")
        wait_for(lambda: connection() == "live", 20, interval=0.5, what="the page live")
        pg.stop()
        wait_for(lambda: connection() == "lost", 15, interval=0.5,
                 what="the page to say the connection is lost")
        assert driver.execute_script(
            "return getComputedStyle(document.getElementById('lost-banner')).display") != "none"
        start_with_http(pgscale, http_port)
        wait_for(lambda: connection() == "live", 20, interval=0.5,
                 what="the page live again after pgscale came back")
        # failed fetches are logged by the browser as network errors; the
        # page's own code must not have thrown
        errors = [e for e in js_errors(driver) if e.get("source") != "network"]
        assert not errors, "the page logged errors: %r" % errors
    finally:
        if driver is not None:
            driver.quit()


@pytest.mark.deadline(90)
def test_status_page_works_behind_basic_auth_opened_with_credentials_in_the_url(pgscale, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text('"opsadmin" "plain pw"\n')
    cfg = tmp_path / "pgscale.yaml"
    cfg.write_text("auth: {file: %s}\nadmin_users: [opsadmin]\nhttp: {auth: basic}\n" % users)
    pg, url = start_with_http(pgscale, args=["--config", str(cfg)])
    driver = None
    try:
        driver = _browser(1280, 900)
        # fetch() refuses a URL that carries credentials: the page must ask
        # for api/status without them and let the browser send its own
        driver.get(url.replace("http://", "http://opsadmin:plain%20pw@"))
        wait_for(lambda: page_state(driver, "app/app/primary")["connection"] == "live", 20,
                 interval=0.5, what="the page live behind basic auth")
        errors = js_errors(driver)
        assert not errors, "the page logged errors: %r" % errors
    finally:
        if driver is not None:
            driver.quit()
