"""auth.query cannot be fooled by a database owner.

The attack: a role with nothing but CREATEDB creates a database, adds a
view public.pg_shadow in it that returns a password of its choosing for
every role, and puts `public` first in that database's search_path.  If
pgscale ran its lookup in the database the client names, with an
unqualified query, that role could log in to pgscale as anyone who is not in
the users file — an admin_users member on the admin console included (a
database named "pgscale" is anyone's to create) — and the forged secret,
remembered for the server login, would lock the real user out.

pgscale runs the lookup in auth.dbname (postgres), with a schema-qualified
query and search_path pinned to pg_catalog, so the forged password gets
28P01 and the real user is unaffected."""
import signal
import socket
import threading
import time

import psycopg2
import pytest

import pgwire
from helpers import LOCALHOST, wait_for

ADMIN, ADMIN_PW = "aq_admin", "real-admin-pw"
MALLORY, MALLORY_PW = "aq_mallory", "mallory-pw"
FORGED_PW = "forged-pw"
# "pgscale" is the admin console's name; evil_db is any other database
FORGED_DBS = ("pgscale", "aq_evil")


def drop_all(primary):
    for db in FORGED_DBS:
        primary.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % db)
    primary.execute("DROP ROLE IF EXISTS %s" % MALLORY)
    primary.execute("DROP ROLE IF EXISTS %s" % ADMIN)


@pytest.fixture(scope="module")
def forged(primary):
    """aq_admin exists in PostgreSQL only; aq_mallory (CREATEDB, nothing
    else) owns databases whose pg_shadow says every password is forged-pw."""
    drop_all(primary)
    primary.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (ADMIN, ADMIN_PW))
    primary.execute("CREATE ROLE %s LOGIN CREATEDB PASSWORD '%s'" % (MALLORY, MALLORY_PW))
    for db in FORGED_DBS:
        primary.execute("CREATE DATABASE %s" % db, user=MALLORY, password=MALLORY_PW)
        primary.execute("CREATE VIEW public.pg_shadow AS SELECT rolname AS usename, "
                        "'%s'::text AS passwd FROM pg_catalog.pg_roles" % FORGED_PW,
                        db=db, user=MALLORY, password=MALLORY_PW)
        primary.execute("ALTER DATABASE %s SET search_path = public, pg_catalog" % db,
                        user=MALLORY, password=MALLORY_PW)
        # the forgery works on PostgreSQL itself: an unqualified query there
        # finds mallory's view, even as a superuser
        assert primary.execute("SELECT passwd FROM pg_shadow WHERE usename = %s", (ADMIN,),
                               db=db) == [(FORGED_PW,)]
    yield
    drop_all(primary)


def start(pgscale, tmp_path, extra=""):
    cfg = tmp_path / "pgscale.yaml"
    cfg.write_text("admin_users: [%s]\nauth:\n  type: scram-sha-256\n  user: postgres\n%s"
                   % (ADMIN, extra))
    return pgscale(args=["--config", str(cfg)])


def refused(pg, user, password, db):
    """Checks that the login gets one FATAL 28P01 and nothing else."""
    with pgwire.RawConn(LOCALHOST, pg.port) as c:
        msgs = c.login(user, db, password)
    errs = pgwire.errors(msgs)
    assert len(errs) == 1 and pgwire.ready_status(msgs) is None, msgs
    assert errs[0]["S"] == "FATAL" and errs[0]["C"] == "28P01", errs[0]
    with pytest.raises(psycopg2.OperationalError) as exc:
        psycopg2.connect(pg.dsn(user, db, password=password)).close()
    assert "password authentication failed" in str(exc.value), str(exc.value)


def real_user_still_logs_in(pg):
    conn = psycopg2.connect(pg.dsn(ADMIN, "app", password=ADMIN_PW))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == (ADMIN,)
    conn.close()
    conn = psycopg2.connect(pg.dsn(ADMIN, "pgscale", password=ADMIN_PW))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SHOW POOLS")
        assert cur.description is not None
    conn.close()


def test_forged_pg_shadow_does_not_open_the_admin_console(pgscale, tmp_path, forged):
    pg = start(pgscale, tmp_path)
    refused(pg, ADMIN, FORGED_PW, "pgscale")
    real_user_still_logs_in(pg)
    # and the forged attempt left nothing behind: again, after a real login
    refused(pg, ADMIN, FORGED_PW, "pgscale")
    real_user_still_logs_in(pg)


def test_forged_pg_shadow_in_the_client_database_does_not_let_anyone_in(pgscale, tmp_path,
                                                                         forged):
    pg = start(pgscale, tmp_path)
    refused(pg, ADMIN, FORGED_PW, "aq_evil")
    refused(pg, MALLORY, FORGED_PW, "aq_evil")
    # refused by pgscale itself, not only by PostgreSQL at the server login
    # that a forged client login would have gone on to
    log = pg.stderr_text()
    assert "SCRAM proof does not match" in log, log[-2000:]
    assert "login to" not in log, log[-2000:]
    real_user_still_logs_in(pg)
    conn = psycopg2.connect(pg.dsn(MALLORY, "aq_evil", password=MALLORY_PW))
    conn.close()  # mallory's own password still works, in her own database


def test_lookup_pins_search_path_even_in_a_hostile_auth_database(pgscale, tmp_path, forged):
    # a misconfiguration on top of the attack: auth.dbname names mallory's
    # database and the custom query is unqualified.  The lookup connection's
    # search_path (pg_catalog first) still finds PostgreSQL's pg_shadow.
    pg = start(pgscale, tmp_path,
               "  dbname: aq_evil\n"
               "  query: SELECT usename, passwd FROM pg_shadow WHERE usename = $1\n")
    refused(pg, ADMIN, FORGED_PW, "pgscale")
    real_user_still_logs_in(pg)



# -- floods, probes and timing ------------------------------------------------------------
# The lookups below go through functions in `postgres` (auth.dbname) that
# record every call in a table, so the tests count what PostgreSQL itself
# was asked, not what pgscale says it asked.
REAL, REAL_PW = "aq_real", "real-pw"
FILE_USER, FILE_PW = "app", "client-pw"   # in the users file; DATABASE_URL's user
MISSING_DB = "aq_no_such_db"
COUNTED = "SELECT * FROM public.aq_counted($1)"
SLOW = "SELECT * FROM public.aq_slow($1)"


@pytest.fixture(scope="module")
def counted(primary):
    primary.execute("DROP ROLE IF EXISTS %s" % REAL)
    primary.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (REAL, REAL_PW))
    primary.execute("GRANT CONNECT ON DATABASE app TO %s" % REAL)
    primary.execute("DROP TABLE IF EXISTS public.aq_lookups")
    primary.execute("CREATE TABLE public.aq_lookups (usename text NOT NULL)")
    # flood_* names cost PostgreSQL 10 ms each, as lookups under load would
    primary.execute("""
        CREATE OR REPLACE FUNCTION public.aq_counted(u text)
        RETURNS TABLE (usename name, passwd text) LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO public.aq_lookups VALUES (u);
            IF u LIKE 'flood\\_%' THEN PERFORM pg_catalog.pg_sleep(0.01); END IF;
            RETURN QUERY SELECT s.usename, s.passwd FROM pg_catalog.pg_shadow s
                         WHERE s.usename = u;
        END $$""")
    primary.execute("""
        CREATE OR REPLACE FUNCTION public.aq_slow(u text)
        RETURNS TABLE (usename name, passwd text) LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO public.aq_lookups VALUES (u);
            PERFORM pg_catalog.pg_sleep(0.5);
            RETURN QUERY SELECT s.usename, s.passwd FROM pg_catalog.pg_shadow s
                         WHERE s.usename = u;
        END $$""")
    yield
    primary.execute("DROP FUNCTION IF EXISTS public.aq_counted(text)")
    primary.execute("DROP FUNCTION IF EXISTS public.aq_slow(text)")
    primary.execute("DROP TABLE IF EXISTS public.aq_lookups")
    primary.execute("REVOKE CONNECT ON DATABASE app FROM %s" % REAL)
    primary.execute("DROP ROLE IF EXISTS %s" % REAL)


def lookups(primary, pattern):
    return primary.execute("SELECT count(*) FROM public.aq_lookups WHERE usename LIKE %s",
                           (pattern,))[0][0]


def start_counted(pgscale, tmp_path, query=COUNTED, extra="", **env):
    users = tmp_path / "users.txt"
    users.write_text('"%s" "%s"\n' % (FILE_USER, FILE_PW))
    cfg = tmp_path / "pgscale.yaml"
    cfg.write_text("auth:\n  type: scram-sha-256\n  file: %s\n  user: postgres\n"
                   "  query: %s\n%s" % (users, query, extra))
    return pgscale(args=["--config", str(cfg)], **env)


def login_ok(pg, user, password, db="app"):
    with pgwire.RawConn(LOCALHOST, pg.port) as c:
        msgs = c.login(user, db, password)
    assert pgwire.ready_status(msgs) == "I", pgwire.errors(msgs) or msgs


def attempt(pg, user, password, db):
    """(SQLSTATE, severity, message) of a refused login, and its duration."""
    t0 = time.monotonic()
    with pgwire.RawConn(LOCALHOST, pg.port) as c:
        msgs = c.login(user, db, password)
    took = time.monotonic() - t0
    errs = pgwire.errors(msgs)
    assert len(errs) == 1 and pgwire.ready_status(msgs) is None, msgs
    return (errs[0]["C"], errs[0]["S"], errs[0]["M"]), took


@pytest.mark.deadline(60)
def test_flood_of_unknown_names_from_one_address_does_not_starve_a_real_login(
        pgscale, tmp_path, counted, primary):
    pg = start_counted(pgscale, tmp_path, PGSCALE_MAX_PENDING_LOGINS_PER_ADDRESS=1000)
    primary.execute("TRUNCATE public.aq_lookups")
    # 300 logins with distinct unknown names from 127.0.0.2, each asking for
    # a lookup and then holding its connection open
    flood = []
    try:
        for i in range(300):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.2", 0))
            s.settimeout(5)
            s.connect((LOCALHOST, pg.port))
            s.sendall(pgwire.startup_packet("flood_%d" % i, "app"))
            flood.append(s)
        t0 = time.monotonic()
        login_ok(pg, REAL, REAL_PW)
        took = time.monotonic() - t0
        assert took < 1.5, "the real login took %.2f s behind the flood" % took
    finally:
        for s in flood:
            s.close()
    time.sleep(0.5)   # whatever was queued has run by now
    n = lookups(primary, "flood\\_%")
    # 4 at a time (auth.query_max_per_address) while the flood was there; the
    # rest waited their turn and were dropped, unasked, when their clients left
    assert n <= 40, "PostgreSQL was asked %d lookups for the flood" % n
    # said once for the burst (and once at its end), not once a login
    log = pg.stderr_text()
    assert "127.0.0.2" in log and "auth.query_max_per_address" in log, log[-3000:]
    assert log.count("auth.query_max_per_address") <= 3, log[-3000:]


@pytest.mark.deadline(60)
def test_burst_of_real_logins_from_one_address_waits_instead_of_failing(pgscale, tmp_path,
                                                                        counted, primary):
    # an application opening many connections at once: over the per-address
    # bound its logins wait their turn; none of them is refused
    pg = start_counted(pgscale, tmp_path, extra="  query_max_per_address: 2\n")
    results = []

    def one():
        try:
            with pgwire.RawConn(LOCALHOST, pg.port) as c:
                results.append(pgwire.ready_status(c.login(REAL, "app", REAL_PW)))
        except Exception as e:   # noqa: BLE001 -- reported by the assertion below
            results.append(repr(e))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == ["I"] * 12, results


def test_unknown_name_is_looked_up_once_until_reload(pgscale, tmp_path, counted, primary):
    pg = start_counted(pgscale, tmp_path)
    primary.execute("TRUNCATE public.aq_lookups")
    first, _ = attempt(pg, "aq_nobody", "guess-1", "app")
    second, _ = attempt(pg, "aq_nobody", "guess-2", "app")
    assert first == second == ("28P01", "FATAL",
                               'password authentication failed for user "aq_nobody"')
    assert lookups(primary, "aq_nobody") == 1
    # a real user is still looked up every time
    login_ok(pg, REAL, REAL_PW)
    login_ok(pg, REAL, REAL_PW)
    assert lookups(primary, REAL) == 2
    # RELOAD forgets the negative answers
    pg.signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in pg.stderr_text(), 10, what="reload")
    attempt(pg, "aq_nobody", "guess-3", "app")
    assert lookups(primary, "aq_nobody") == 2


def test_negative_answers_expire_after_the_ttl(pgscale, tmp_path, counted, primary):
    pg = start_counted(pgscale, tmp_path, extra="  query_negative_ttl: 1s\n")
    primary.execute("TRUNCATE public.aq_lookups")
    attempt(pg, "aq_late", "pw", "app")
    attempt(pg, "aq_late", "pw", "app")
    assert lookups(primary, "aq_late") == 1
    # a user created since is let in once the negative answer has expired
    primary.execute("DROP ROLE IF EXISTS aq_late")
    primary.execute("CREATE ROLE aq_late LOGIN PASSWORD 'late-pw'")
    try:
        time.sleep(1.2)
        with pgwire.RawConn(LOCALHOST, pg.port) as c:
            msgs = c.login("aq_late", "postgres", "late-pw")
        assert pgwire.ready_status(msgs) == "I", msgs
        assert lookups(primary, "aq_late") == 2
    finally:
        pg.stop()
        primary.execute("DROP ROLE IF EXISTS aq_late")


@pytest.mark.parametrize("user,password", [(FILE_USER, FILE_PW), (REAL, REAL_PW)],
                         ids=["users_file", "auth_query"])
def test_missing_database_and_wrong_password_get_the_same_answer(pgscale, tmp_path, counted,
                                                                  primary, user, password):
    pg = start_counted(pgscale, tmp_path)
    assert primary.execute("SELECT 1 FROM pg_database WHERE datname = %s", (MISSING_DB,)) == []
    # the fastest of three attempts each: one slow attempt on a busy
    # machine says nothing, a path that is slower every time does
    existing = [attempt(pg, user, "wrong-pw", "app") for _ in range(3)]
    missing = [attempt(pg, user, "wrong-pw", MISSING_DB) for _ in range(3)]
    expected = ("28P01", "FATAL", 'password authentication failed for user "%s"' % user)
    assert {a for a, _ in existing} == {a for a, _ in missing} == {expected}
    t_existing, t_missing = min(t for _, t in existing), min(t for _, t in missing)
    assert abs(t_existing - t_missing) < 0.2, (existing, missing)
    # an unknown user gets the same, whichever database it names
    assert attempt(pg, "aq_nobody2", "wrong-pw", MISSING_DB)[0][0] == "28P01"
    # only after authenticating does a client learn that the database is missing
    (code, sev, msg), _ = attempt(pg, user, password, MISSING_DB)
    assert (code, sev) == ("3D000", "FATAL") and MISSING_DB in msg, (code, sev, msg)
    login_ok(pg, user, password)


def first_request_delay(pg, user):
    """Seconds from the startup packet to the first authentication request."""
    with pgwire.RawConn(LOCALHOST, pg.port) as c:
        t0 = time.monotonic()
        c.send(pgwire.startup_packet(user, "app"))
        t, payload = c.recv_msg(timeout=5)
        took = time.monotonic() - t0
        assert t == b"R" and payload[:4] == b"\x00\x00\x00\x0a", (t, payload)
    return took


@pytest.mark.deadline(60)
def test_first_authentication_request_does_not_wait_for_the_lookup(pgscale, tmp_path, counted,
                                                                     primary):
    pg = start_counted(pgscale, tmp_path, query=SLOW)
    file_user = min(first_request_delay(pg, FILE_USER) for _ in range(3))
    by_query = max(first_request_delay(pg, REAL) for _ in range(3))
    unknown = max(first_request_delay(pg, "aq_unknown_%d" % i) for i in range(3))
    assert by_query - file_user < 0.1, (file_user, by_query)
    assert unknown - file_user < 0.1, (file_user, unknown)
    # the client's answer arrives while the lookup still runs: the login
    # waits for it and succeeds, and so does one with a wrong password fail
    t0 = time.monotonic()
    login_ok(pg, REAL, REAL_PW)
    assert time.monotonic() - t0 >= 0.45
    (code, _, _), _ = attempt(pg, REAL, "wrong-pw", "app")
    assert code == "28P01"
    # clients that leave mid-lookup are forgotten; pgscale goes on
    for i in range(5):
        with pgwire.RawConn(LOCALHOST, pg.port) as c:
            c.send(pgwire.startup_packet(REAL, "app"))
            assert c.recv_msg(timeout=5)[0] == b"R"
    time.sleep(0.6)
    login_ok(pg, REAL, REAL_PW)
    login_ok(pg, FILE_USER, FILE_PW)
