"""Start-up configuration: bad values stop pgscale with one clear line,
--env-file (values used, the environment wins, errors carry file:line),
--check-config (effective settings, password masked), and every documented
DATABASE_URL form working end to end."""
import os
import re
import signal
import subprocess
import time

import psycopg2
import pytest

import pgwire
from conftest import PGSCALE_BIN
from helpers import APP_DB, APP_PASSWORD, APP_USER, LOCALHOST, free_port, port_accepts


def _documented_variables():
    """Every variable in the summary table of docs/configuration.md."""
    docs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs",
                        "configuration.md")
    with open(docs) as f:
        names = re.findall(r"^\| \[`([A-Z_]+)`\]", f.read(), re.M)
    assert len(names) >= 20, "could not read the variable table of %s" % docs
    return names


def _clean_env():
    """The test process environment without any setting pgscale (or libpq) reads."""
    return {k: v for k, v in os.environ.items()
            if not (k.startswith(("PGSCALE_", "DB_", "PG")) or
                    k in ("DATABASE_URL", "READ_REPLICA_URLS", "REDIS_URL"))}


def run_pgscale(env, args=(), timeout=5, cwd=None):
    """Runs build/pgscale directly with exactly `env` (on top of a clean
    environment; a None value unsets).  Returns (returncode, stdout, stderr).
    A pgscale still running after `timeout` is killed and the test fails:
    bad configuration must stop it, --check-config must exit."""
    full = _clean_env()
    for k, v in env.items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = str(v)
    proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", str(PGSCALE_BIN), *args],
                            env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail("pgscale %s was still running after %s s (it should have exited);\n"
                    "stdout:\n%s\nstderr:\n%s" % (" ".join(args), timeout, out[-3000:], err[-3000:]))
    return proc.returncode, out, err


def _base_env(primary, port=None):
    return {"DATABASE_URL": primary.url(), "PGSCALE_LISTEN": "%s:%d" % (LOCALHOST, port or free_port()),
            "PGSCALE_LOG_LEVEL": "info"}


def _config(pg):
    return {r["key"]: r["value"] for r in pg.admin("SHOW CONFIG")}


def _query_through(pg, user=APP_USER, db=APP_DB, **params):
    conn = pg.connect(user=user, db=db, **params)
    with conn.cursor() as cur:
        cur.execute("SELECT current_user, current_database(), 6 * 7")
        return cur.fetchone()


# -- bad values stop start-up ----------------------------------------------------
BAD_VALUES = [
    # (variable, value (None = unset), words the message must contain)
    ("DB_POOL_SIZE", "abc", ["'abc'", "not an integer"]),
    ("DB_POOL_SIZE", "0", ["'0'", "1..10000"]),
    ("DB_MAX_OVERFLOW", "-5", ["'-5'", "out of range"]),
    ("DB_POOL_TIMEOUT", "forever", ["'forever'", "not a duration"]),
    ("PGSCALE_POOL_MODE", "statement", ["'statement'", "transaction", "session"]),
    ("PGSCALE_LISTEN", "bad:host:xx", ["bad:host:xx"]),
    ("DATABASE_URL", None, ["not set"]),
    ("DATABASE_URL", "mysql://x", ["mysql", "scheme"]),
    ("PGSCALE_WORKERS", "0", ["'0'", "1..64"]),
]


@pytest.mark.deadline(30)
@pytest.mark.parametrize("var,value,words", BAD_VALUES,
                         ids=["%s=%s" % (v, "<unset>" if x is None else x) for v, x, _ in BAD_VALUES])
def test_bad_value_stops_start_up_with_a_message_naming_it(primary, var, value, words):
    port = free_port()
    env = _base_env(primary, port)
    env[var] = value
    rc, out, err = run_pgscale(env, timeout=5)
    assert rc != 0, "pgscale accepted %s=%r (rc=0)\nstderr:\n%s" % (var, value, err)
    assert not port_accepts(port), "pgscale exited but something listens on its port"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, "expected one line naming the problem, got:\n%s" % err
    msg = lines[0]
    assert var in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), "%r not in the message: %s" % (w, msg)
    if var == "PGSCALE_LISTEN":
        # says what is wrong, not only which variable
        assert re.search(r"invalid|expected|bracket|port|not a", msg, re.I), msg
    assert "listening" not in err + out


@pytest.mark.deadline(30)
def test_bad_database_url_error_does_not_show_the_password(primary):
    rc, out, err = run_pgscale({**_base_env(primary),
                                "DATABASE_URL": "postgresql://app:Hunter2Pw@127.0.0.1:99999/app"})
    assert rc != 0, err
    assert "DATABASE_URL" in err and "port" in err.lower(), err
    assert "Hunter2Pw" not in err + out


# -- --env-file ----------------------------------------------------------------------
@pytest.mark.deadline(30)
def test_env_file_values_are_used(pgscale, primary, tmp_path):
    env_file = tmp_path / "app.env"
    env_file.write_text("# the application's own .env\n"
                        "DATABASE_URL=%s\n"
                        "export DB_POOL_SIZE=7\n"
                        "DB_MAX_OVERFLOW = 3   # spaces and a comment\n"
                        "SECRET_KEY=not-for-pgscale\n" % primary.url())
    pg = pgscale(args=["--env-file", str(env_file)], DATABASE_URL=None)
    assert _query_through(pg) == (APP_USER, APP_DB, 42)
    conf = _config(pg)
    assert conf["DB_POOL_SIZE"] == "7", conf
    assert conf["DB_MAX_OVERFLOW"] == "3", conf
    pool = pg.pool()
    assert pool is not None and int(pool["max_total"]) == 10, pool


@pytest.mark.deadline(30)
def test_environment_overrides_env_file(pgscale, tmp_path):
    env_file = tmp_path / "app.env"
    env_file.write_text("DB_POOL_SIZE=7\nDB_MAX_OVERFLOW=3\nPGSCALE_POOL_MODE=session\n")
    # DB_POOL_SIZE from the environment wins; DB_MAX_OVERFLOW set to the empty
    # string in the environment also wins over the file (-> the default, 10).
    pg = pgscale(args=["--env-file", str(env_file)], DB_POOL_SIZE=9, DB_MAX_OVERFLOW="")
    conf = _config(pg)
    assert conf["DB_POOL_SIZE"] == "9", conf
    assert conf["DB_MAX_OVERFLOW"] == "10", conf
    assert conf["PGSCALE_POOL_MODE"] == "session", conf   # not in the environment: from the file
    assert _query_through(pg) == (APP_USER, APP_DB, 42)


@pytest.mark.deadline(30)
def test_env_file_unknown_pgscale_key_is_rejected_with_file_and_line(primary, tmp_path):
    env_file = tmp_path / "typo.env"
    env_file.write_text("DB_POOL_SIZE=5\n\n# comment\nPGSCALE_POOLSIZE=3\n")
    port = free_port()
    rc, out, err = run_pgscale(_base_env(primary, port), args=["--env-file", str(env_file)])
    assert rc != 0, err
    assert "%s:4" % env_file in err, err
    assert "PGSCALE_POOLSIZE" in err, err
    assert not port_accepts(port)


@pytest.mark.deadline(30)
@pytest.mark.parametrize("content,line,words", [
    ("DB_POOL_SIZE=5\nDB_POOL\n", 2, ["DB_POOL", "="]),
    ("A=1\nB=2\nREDIS_URL=\"redis://h:6379\n", 3, ["unterminated", "REDIS_URL"]),
], ids=["missing-equals", "unterminated-quote"])
def test_env_file_syntax_error_is_reported_with_file_and_line(primary, tmp_path, content, line, words):
    env_file = tmp_path / "broken.env"
    env_file.write_text(content)
    rc, out, err = run_pgscale(_base_env(primary), args=["--env-file", str(env_file)])
    assert rc != 0, err
    assert "%s:%d:" % (env_file, line) in err, err
    for w in words:
        assert w in err, err


@pytest.mark.deadline(30)
def test_env_file_bad_value_is_reported_with_file_and_line(primary, tmp_path):
    env_file = tmp_path / "bad.env"
    env_file.write_text("DB_POOL_SIZE=5\nPGSCALE_QUERY_TIMEOUT=5m\n")
    rc, out, err = run_pgscale(_base_env(primary), args=["--env-file", str(env_file)])
    assert rc != 0, err
    assert "%s:2:" % env_file in err and "PGSCALE_QUERY_TIMEOUT" in err and "'5m'" in err, err


@pytest.mark.deadline(30)
def test_missing_env_file_is_an_error(primary, tmp_path):
    missing = tmp_path / "nope.env"
    rc, out, err = run_pgscale(_base_env(primary), args=["--env-file", str(missing)])
    assert rc != 0, err
    assert str(missing) in err, err


# -- --config (the YAML file) ------------------------------------------------------
def _yaml(tmp_path, text, name="pgscale.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.deadline(30)
def test_config_file_values_are_used(pgscale, primary, tmp_path):
    cfg = _yaml(tmp_path, "nodes:\n"
                          "  primary: %s\n"
                          "pool_size: 7\n"
                          "max_overflow: 3\n"
                          "pool_mode: session\n"
                          "databases:\n"
                          "  %s: {pool_size: 2}\n"
                          "admin_users: [%s]\n" % (primary.url(), APP_DB, APP_USER))
    pg = pgscale(args=["--config", str(cfg)], DATABASE_URL=None)
    assert _query_through(pg) == (APP_USER, APP_DB, 42)
    conf = _config(pg)
    assert conf["DB_POOL_SIZE"] == "7", conf
    assert conf["DB_MAX_OVERFLOW"] == "3", conf
    assert conf["PGSCALE_POOL_MODE"] == "session", conf
    assert conf["databases.%s" % APP_DB] == "pool_size=2", conf
    assert conf["admin_users"] == APP_USER, conf
    assert APP_PASSWORD not in repr(conf)
    pool = pg.pool()
    # databases.app.pool_size (2) over pool_size (7), plus max_overflow (3)
    assert pool is not None and int(pool["max_total"]) == 5, pool


@pytest.mark.deadline(30)
def test_env_file_and_environment_override_the_config_file(pgscale, tmp_path):
    cfg = _yaml(tmp_path, "pool_size: 5\nmax_overflow: 6\npool_mode: session\n")
    env_file = tmp_path / "app.env"
    env_file.write_text("DB_POOL_SIZE=8\nDB_MAX_OVERFLOW=3\n")
    pg = pgscale(args=["--config", str(cfg), "--env-file", str(env_file)], DB_POOL_SIZE=9)
    conf = _config(pg)
    assert conf["DB_POOL_SIZE"] == "9", conf        # environment over .env over file
    assert conf["DB_MAX_OVERFLOW"] == "3", conf     # .env over file
    assert conf["PGSCALE_POOL_MODE"] == "session", conf   # file only
    assert _query_through(pg) == (APP_USER, APP_DB, 42)


BAD_CONFIG_FILES = [
    # (content, line, words the message must contain)
    ("pool_size: 5\n\npool_size: 6\n", 3, ["pool_size", "duplicate key"]),
    ("pool_size: 5\npoolsize: 6\n", 2, ["poolsize", "unknown key", "pool_size"]),
    ("databases:\n  app:\n    pool_size: 0\n", 3, ["databases.app.pool_size", "'0'"]),
    ("tls:\n  mode: require\n", 2, ["tls.mode", "tls.cert"]),
    ("auth:\n  file: /nonexistent/users.txt\n", 2, ["auth.file", "/nonexistent/users.txt"]),
    ("a: &x 1\nb: *x\n", 1, ["anchors"]),
    ("pool_size: [1\n", 2, ["invalid YAML"]),
]


@pytest.mark.deadline(30)
@pytest.mark.parametrize("content,line,words", BAD_CONFIG_FILES,
                         ids=["duplicate", "unknown-key", "range", "tls-needs-cert",
                              "missing-file", "anchor", "syntax"])
def test_bad_config_file_stops_start_up_with_file_and_line(primary, tmp_path, content, line,
                                                           words):
    cfg = _yaml(tmp_path, content)
    port = free_port()
    rc, out, err = run_pgscale(_base_env(primary, port), args=["--config", str(cfg)])
    assert rc == 1, "rc=%s (configuration errors exit 1, like the environment's)\n%s" % (rc, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, "expected one line naming the problem, got:\n%s" % err
    assert "%s:%d:" % (cfg, line) in lines[0], lines[0]
    for w in words:
        assert w in lines[0], "%r not in: %s" % (w, lines[0])
    assert not port_accepts(port), "pgscale exited but something listens on its port"


@pytest.mark.deadline(30)
def test_pgscale_config_variable_names_the_file(tmp_path):
    cfg = _yaml(tmp_path, "nodes: {primary: 'postgresql://app:Pw0rdInFile@127.0.0.1:1/app'}\n"
                          "pool_size: 7\n"
                          "auth:\n"
                          "  hba:\n"
                          "    - {type: host, address: 10.0.0.0/8, method: trust}\n")
    rc, out, err = run_pgscale({"PGSCALE_CONFIG": str(cfg)}, args=["--check-config"])
    assert rc == 0, err
    assert re.search(r"^DB_POOL_SIZE = 7$", out, re.M), out
    assert re.search(r"^auth\.hba\[0\] = host all all 10\.0\.0\.0/8 trust$", out, re.M), out
    assert "Pw0rdInFile" not in out + err
    assert "app:****@127.0.0.1:1/app" in out, out
    # --config wins over PGSCALE_CONFIG.
    other = _yaml(tmp_path, "nodes: {primary: 'postgresql://h/db'}\npool_size: 8\n", "other.yaml")
    rc, out, err = run_pgscale({"PGSCALE_CONFIG": str(cfg)}, args=["--config", str(other),
                                                                   "--check-config"])
    assert rc == 0, err
    assert re.search(r"^DB_POOL_SIZE = 8$", out, re.M), out


@pytest.mark.deadline(30)
def test_example_config_file_passes_check_config(tmp_path):
    example = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples",
                           "pgscale.yaml")
    with open(example) as f:
        cfg = _yaml(tmp_path, f.read())
    for name in ("users.txt", "server.crt", "server.key", "client-ca.crt", "server-ca.crt"):
        (tmp_path / name).write_text("stand-in\n")
    rc, out, err = run_pgscale({}, args=["--config", str(cfg), "--check-config"])
    assert rc == 0, err
    assert "change-me" not in out + err
    assert re.search(r"^listen = 0\.0\.0\.0:6432, unix:/run/pgscale$", out, re.M), out
    assert re.search(r"^tls\.cert = %s$" % re.escape(str(tmp_path / "server.crt")), out, re.M), out


# -- --check-config ------------------------------------------------------------------
@pytest.mark.deadline(30)
def test_check_config_prints_effective_configuration_with_password_masked(primary, tmp_path):
    env_file = tmp_path / "app.env"
    env_file.write_text("DB_MAX_OVERFLOW=4\nREDIS_URL=redis://:R3disPw@cache:6379/0\n")
    port = free_port()
    env = {"DATABASE_URL": "postgresql://app:Sup3rS3cretPw@127.0.0.1:%d/app" % primary.port,
           "PGSCALE_LISTEN": "127.0.0.1:%d" % port, "DB_POOL_SIZE": "13",
           "PGSCALE_QUERY_TIMEOUT": "1.5s"}
    rc, out, err = run_pgscale(env, args=["--env-file", str(env_file), "--check-config"])
    assert rc == 0, err
    assert "Sup3rS3cretPw" not in out + err
    assert "R3disPw" not in out + err
    assert "****" in out, out
    for var in _documented_variables():
        assert re.search(r"^%s\b" % re.escape(var), out, re.M), "%s missing from:\n%s" % (var, out)
    assert re.search(r"^DB_POOL_SIZE\s*[=:]?\s*13\s*$", out, re.M), out
    assert re.search(r"^DB_MAX_OVERFLOW\s*[=:]?\s*4\s*$", out, re.M), out
    assert re.search(r"^PGSCALE_QUERY_TIMEOUT\s*[=:]?\s*1500ms\s*$", out, re.M), out
    assert re.search(r"^PGSCALE_LISTEN\s*[=:]?\s*127\.0\.0\.1:%d\s*$" % port, out, re.M), out
    db_line = next(ln for ln in out.splitlines() if ln.startswith("DATABASE_URL"))
    assert "app:****@127.0.0.1:%d/app" % primary.port in db_line, db_line
    assert not port_accepts(port), "--check-config must not start listening"


@pytest.mark.deadline(30)
def test_check_config_with_bad_value_exits_non_zero(primary):
    env = {**_base_env(primary), "DB_POOL_TIMEOUT": "0"}
    rc, out, err = run_pgscale(env, args=["--check-config"])
    assert rc != 0, out
    assert "DB_POOL_TIMEOUT" in err and "'0'" in err, err
    assert "secret" not in out + err


# -- DATABASE_URL forms end to end -------------------------------------------------
@pytest.mark.deadline(30)
@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg2",
                                    "postgresql+asyncpg", "postgres+psycopg", "PostgreSQL"])
def test_database_url_scheme_works_end_to_end(pgscale, primary, scheme):
    pg = pgscale(DATABASE_URL=primary.url(scheme=scheme))
    assert _query_through(pg) == (APP_USER, APP_DB, 42)


def _ensure_role(primary, name, password):
    exists = primary.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
    verb = "ALTER" if exists else "CREATE"
    primary.execute("%s ROLE %s LOGIN PASSWORD %%s" % (verb, name), (password,))
    primary.execute("GRANT CONNECT ON DATABASE %s TO %s" % (APP_DB, name))


@pytest.mark.deadline(30)
def test_database_url_with_percent_encoded_special_password(pgscale, primary):
    password = "p@ss:w/rd%?#&= x"
    _ensure_role(primary, "it_special", password)
    # sanity: the password really is the role's password on the primary
    primary.execute("SELECT 1", user="it_special", db=APP_DB, password="'%s'" % password.replace("'", "\\'"))
    url = primary.url(user="it_special", password=password, db=APP_DB)
    assert "%40" in url and "%3A" in url and "%2F" in url and "%25" in url and "%3F" in url, url
    pg = pgscale(DATABASE_URL=url)
    # clients log into pgscale with the same password (DATABASE_URL's)
    assert _query_through(pg, user="it_special", password=password) == ("it_special", APP_DB, 42)
    assert password not in repr(pg.admin("SHOW CONFIG", user="it_special", password=password))


@pytest.mark.deadline(30)
def test_database_url_with_unencoded_at_in_password(pgscale, primary):
    password = "a@b@c"
    _ensure_role(primary, "it_at", password)
    url = "postgresql://it_at:%s@%s:%d/%s" % (password, primary.host, primary.port, APP_DB)
    pg = pgscale(DATABASE_URL=url)
    assert _query_through(pg, user="it_at", password=password) == ("it_at", APP_DB, 42)


@pytest.mark.deadline(30)
def test_database_url_query_parameters_are_accepted(pgscale, primary):
    url = primary.url() + "?sslmode=disable&application_name=x"
    pg = pgscale(DATABASE_URL=url)
    assert _query_through(pg) == (APP_USER, APP_DB, 42)
    shown = _config(pg)["DATABASE_URL"]
    # documented: printed values (passwords aside) can be pasted back as input
    assert "sslmode=disable" in shown and "application_name=x" in shown, shown
    assert APP_PASSWORD not in shown


@pytest.mark.deadline(30)
def test_database_url_password_as_query_parameter(pgscale, primary):
    url = "postgresql://%s@%s:%d/%s?password=%s" % (APP_USER, primary.host, primary.port, APP_DB,
                                                   APP_PASSWORD)
    pg = pgscale(DATABASE_URL=url)
    assert _query_through(pg) == (APP_USER, APP_DB, 42)
    assert APP_PASSWORD not in repr(pg.admin("SHOW CONFIG"))


@pytest.mark.deadline(30)
def test_database_url_with_wrong_password_starts_but_reports_the_login_error(pgscale, primary):
    """A wrong password is not a configuration error (pgscale cannot know
    before connecting), but a client gets an error instead of a hang."""
    pg = pgscale(DATABASE_URL=primary.url(password="wrong-password"), DB_POOL_TIMEOUT=3)
    # PostgreSQL's refusal of pgscale's login is relayed: FATAL 28P01
    with pgwire.RawConn(LOCALHOST, pg.port) as c:
        msgs = c.startup()
        if pgwire.ready_status(msgs) == "I":     # the server login came later
            c.send(pgwire.query("SELECT 1"))
            msgs = c.read_until_close()
    errs = pgwire.errors(msgs)
    assert [(e["S"], e["C"]) for e in errs] == [("FATAL", "28P01")], msgs
    assert 'password authentication failed for user "app"' in errs[0]["M"], errs
    with pytest.raises(psycopg2.OperationalError):
        conn = pg.connect()
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    assert "wrong-password" not in pg.stderr_text()


def test_database_alias_and_startup_packet_limit_from_the_file(pgscale, primary, tmp_path):
    # databases.<name>.dbname: clients ask for "alias", the server gets "app";
    # max_startup_packet_size: a larger startup packet is refused with 08P01
    import pgwire
    cfg = tmp_path / "pgscale.yaml"
    cfg.write_text("databases:\n  alias:\n    dbname: app\nmax_startup_packet_size: 2kB\n")
    pg = pgscale(args=["--config", str(cfg)])
    conn = psycopg2.connect(pg.dsn(db="alias"))
    with conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        assert cur.fetchone() == ("app",)
    conn.close()
    c = pgwire.RawConn(LOCALHOST, pg.port)
    try:
        c.send(pgwire.startup_packet(application_name="x" * 3000))
        errs = pgwire.errors(c.read_until_close())
        assert [e["C"] for e in errs] == ["08P01"], errs
        assert "startup packet too long" in errs[0]["M"]
    finally:
        c.close()
    c = pgwire.RawConn(LOCALHOST, pg.port)
    try:
        assert pgwire.ready_status(c.startup(application_name="y" * 1500)) == "I"
    finally:
        c.close()


def test_unix_socket_file_stale_is_replaced_and_live_is_refused(tmp_path, primary):
    # A socket file nobody listens on (left by a crash) is replaced; one
    # another process listens on stops start-up with a message.
    import shutil
    import socket as so
    import tempfile
    from conftest import PGSCALE_BIN
    sockdir = tempfile.mkdtemp(prefix="pgs-", dir="/tmp")
    port = free_port()
    path = os.path.join(sockdir, ".s.PGSQL.%d" % port)
    cfg = tmp_path / "pgscale.yaml"
    cfg.write_text("listen:\n  - 127.0.0.1:%d\n  - unix:%s\n" % (port, sockdir))
    env = {"DATABASE_URL": primary.url(), "PATH": os.environ.get("PATH", "/usr/bin")}
    try:
        live = so.socket(so.AF_UNIX, so.SOCK_STREAM)
        live.bind(path)
        live.listen(1)
        r = subprocess.run([str(PGSCALE_BIN), "--config", str(cfg)], env=env,
                           capture_output=True, text=True, timeout=10)
        assert r.returncode != 0, r
        assert "another process is listening" in r.stderr, r.stderr
        live.close()  # the file stays behind, with nobody listening: stale
        assert os.path.exists(path)
        p = subprocess.Popen([str(PGSCALE_BIN), "--config", str(cfg)], env=env,
                             stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    c = psycopg2.connect(host=sockdir, port=port, user=APP_USER, dbname=APP_DB,
                                         password=APP_PASSWORD, connect_timeout=5)
                    c.close()
                    break
                except psycopg2.OperationalError:
                    assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()
                    time.sleep(0.1)
        finally:
            p.send_signal(signal.SIGINT)
            p.wait(10)
        assert not os.path.exists(path)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
