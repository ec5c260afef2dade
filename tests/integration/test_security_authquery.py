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
import psycopg2
import pytest

import pgwire
from helpers import LOCALHOST

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

