"""Settings made with set_config(name, value, false) in transaction mode: a
constant call is carried like SET (it follows its client, and the next
client on that server connection never sees it); one pgscale cannot read
(parameters through the extended protocol) pins the client; one it cannot
see at all (inside a function) is undone by server_reset_settings=all,
which starts each hand-over of a server connection with RESET ALL."""
import random
import threading
import uuid

import psycopg2
import pytest

from helpers import APP_DB, APP_PASSWORD, APP_USER, aconnect, arun


def _one(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def tenant(conn):
    return _one(conn, "SELECT current_setting('app.tenant', true)")


def pool_of(pgscale, size, **env):
    return pgscale(PGSCALE_POOL_MODE=env.pop("mode", "transaction"), DB_POOL_SIZE=size,
                   DB_MAX_OVERFLOW=0, **env)


def backend(conn):
    return _one(conn, "SELECT pg_backend_pid()")


@pytest.fixture
def tenant_fn(primary):
    """A function that sets app.tenant itself: pgscale cannot see the call."""
    name = "set_tenant_%s" % uuid.uuid4().hex[:8]
    primary.app_execute("CREATE FUNCTION %s(t text) RETURNS text LANGUAGE sql AS "
                        "$$SELECT set_config('app.tenant', t, false)$$" % name)
    yield name
    primary.app_execute("DROP FUNCTION IF EXISTS %s(text)" % name)


def test_set_config_does_not_reach_the_next_client(pgscale):
    pg = pool_of(pgscale, 1)
    a, b = pg.connect(), pg.connect()
    _one(a, "SELECT set_config('app.tenant', 'A', false)")
    assert tenant(a) == "A"
    # one server connection: B gets the one A just used
    assert backend(a) == backend(b)
    assert tenant(b) in (None, "")
    assert tenant(a) == "A"          # A's value came back with A
    assert tenant(b) in (None, "")


def test_set_config_follows_its_client_to_another_server(pgscale):
    pg = pool_of(pgscale, 2)
    a, b = pg.connect(), pg.connect()
    _one(a, "SELECT pg_catalog.SET_CONFIG('App.Tenant', $$it's A$$, 'off')")
    seen = set()
    with b.cursor() as cur:
        for _ in range(40):
            # B in a transaction holds one server: A must use the other
            cur.execute("BEGIN")
            cur.execute("SELECT current_setting('app.tenant', true)")
            assert cur.fetchone()[0] in (None, "")
            seen.add(backend(a))
            assert tenant(a) == "it's A"
            cur.execute("COMMIT")
            assert tenant(b) in (None, "")
    assert len(seen) >= 1


@pytest.mark.parametrize("clear", ["RESET app.tenant", "RESET ALL", "DISCARD ALL"])
def test_reset_clears_a_set_config_value(pgscale, clear):
    pg = pool_of(pgscale, 1)
    a, b = pg.connect(), pg.connect()
    _one(a, "SELECT set_config('app.tenant', 'A', false)")
    assert tenant(b) in (None, "")
    assert tenant(a) == "A"
    with a.cursor() as cur:
        cur.execute(clear)
    assert tenant(b) in (None, "")   # another client took the server in between
    assert tenant(a) in (None, "")


def test_set_config_in_a_failed_statement_is_not_kept(pgscale):
    pg = pool_of(pgscale, 1)
    a, b = pg.connect(), pg.connect()
    with pytest.raises(psycopg2.errors.DivisionByZero):
        _one(a, "SELECT set_config('app.tenant', 'A', false), 1/0")
    assert tenant(b) in (None, "")
    assert tenant(a) in (None, "")


def test_set_config_with_parameters_pins_and_does_not_leak(pgscale):
    pg = pool_of(pgscale, 2)

    async def main():
        a = await aconnect(pg)
        b = await aconnect(pg)
        try:
            await a.fetchval("SELECT set_config($1, $2, false)", "app.tenant", "A")
            pid_a = await a.fetchval("SELECT pg_backend_pid()")
            for _ in range(20):
                assert await b.fetchval("SELECT current_setting('app.tenant', true)") in (None, "")
                assert await a.fetchval("SELECT current_setting('app.tenant', true)") == "A"
                assert await a.fetchval("SELECT pg_backend_pid()") == pid_a
            assert int(pg.pool()["sv_pinned"]) == 1
            # RESET ALL ends what pinned it
            await a.execute("RESET ALL")
            assert await a.fetchval("SELECT current_setting('app.tenant', true)") in (None, "")
            assert int(pg.pool()["sv_pinned"]) == 0
        finally:
            await a.close()
            await b.close()

    arun(main())


def test_set_config_local_with_parameters_does_not_pin(pgscale):
    pg = pool_of(pgscale, 2)

    async def main():
        a = await aconnect(pg)
        try:
            async with a.transaction():
                await a.fetchval("SELECT set_config($1, $2, true)", "app.tenant", "A")
                assert await a.fetchval("SELECT current_setting('app.tenant')") == "A"
            assert int(pg.pool()["sv_pinned"]) == 0
        finally:
            await a.close()

    arun(main())


def test_set_config_inside_a_function_is_reset_between_clients(pgscale, tenant_fn):
    pg = pool_of(pgscale, 1)
    a, b = pg.connect(), pg.connect()
    _one(a, "SELECT %s('A')" % tenant_fn)
    assert tenant(b) in (None, "")


def test_set_config_inside_a_function_leaks_with_reset_off(pgscale, tenant_fn):
    """What docs/pooling.md says server_reset_settings=off gives up."""
    pg = pool_of(pgscale, 1, PGSCALE_SERVER_RESET_SETTINGS="off")
    a, b = pg.connect(), pg.connect()
    _one(a, "SELECT %s('A')" % tenant_fn)
    assert tenant(b) == "A"


def test_reset_keeps_the_next_clients_own_settings(pgscale, tenant_fn):
    pg = pool_of(pgscale, 1)
    a = pg.connect(application_name="client-a")
    b = pg.connect(application_name="client-b", options="-c TimeZone=Asia/Tokyo")
    with b.cursor() as cur:
        cur.execute("SET work_mem = '7MB'")
        cur.execute("SELECT set_config('app.tenant', 'B', false)")
    _one(a, "SELECT %s('A'), set_config('search_path', 'nowhere', false)" % tenant_fn)
    with a.cursor() as cur:
        cur.execute("SET statement_timeout = '1234ms'")
    for _ in range(3):
        assert _one(b, "SELECT current_setting('app.tenant')") == "B"
        assert _one(b, "SHOW work_mem") == "7MB"
        assert _one(b, "SHOW TimeZone") == "Asia/Tokyo"
        assert _one(b, "SHOW application_name") == "client-b"
        assert _one(b, "SHOW search_path") == '"$user", public'
        assert _one(b, "SHOW statement_timeout") == "0"
        assert _one(a, "SHOW statement_timeout") == "1234ms"
        assert _one(a, "SHOW application_name") == "client-a"
        assert _one(a, "SHOW TimeZone") != "Asia/Tokyo"


def _rounds(dsn, n_clients, n_statements, use_fn=None):
    """Clients, each with its own tenant, interleaving statements; each
    checks that it always sees its own value.  Returns the mismatches."""
    errors, lock = [], threading.Lock()
    conns = [psycopg2.connect(dsn) for _ in range(n_clients)]
    for c in conns:
        c.autocommit = True
    for i, c in enumerate(conns):
        _one(c, "SELECT set_config('app.tenant', %s, false)", ("tenant-%d" % i,))
    per = n_statements // n_clients

    def work(i):
        c = conns[i]
        rnd = random.Random(i)
        for k in range(per):
            if rnd.random() < 0.1:
                with c.cursor() as cur:
                    cur.execute("BEGIN")
                    cur.execute("SELECT current_setting('app.tenant', true)")
                    got = cur.fetchone()[0]
                    cur.execute("COMMIT")
            else:
                got = _one(c, "SELECT current_setting('app.tenant', true)")
            if got != "tenant-%d" % i:
                with lock:
                    errors.append((i, k, got))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for c in conns:
        c.close()
    return errors


@pytest.mark.parametrize("size", [1, 5])
def test_many_rounds_no_tenant_sees_another(pgscale, size):
    pg = pool_of(pgscale, size)
    assert _rounds(pg.dsn(), 8, 2000) == []


def test_many_rounds_session_mode_as_direct(pgscale, primary):
    pg = pool_of(pgscale, 8, mode="session")
    direct = primary.dsn(user=APP_USER, db=APP_DB, password=APP_PASSWORD)
    assert _rounds(pg.dsn(), 6, 1200) == []
    assert _rounds(direct, 6, 1200) == []
