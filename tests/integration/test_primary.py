"""Checks of the test fixture itself (no pgscale involved), so that a broken
environment shows up here and not as a mysterious proxy failure."""
import psycopg2
import pytest

from helpers import APP_PASSWORD, MD5_PASSWORD, port_accepts, psql


def test_app_logs_in_with_scram_password(primary):
    conn = primary.connect("app", "app", APP_PASSWORD)
    with conn.cursor() as cur:
        cur.execute("SELECT current_user, current_database()")
        assert cur.fetchone() == ("app", "app")
    conn.close()
    (secret,) = primary.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")[0]
    assert secret.startswith("SCRAM-SHA-256$")


def test_app_login_with_wrong_password_fails(primary):
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        primary.connect("app", "app", "wrong")


def test_md5user_logs_in_with_md5_password(primary):
    conn = primary.connect("md5user", "app", MD5_PASSWORD)
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == ("md5user",)
    conn.close()
    (secret,) = primary.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'md5user'")[0]
    assert secret.startswith("md5")


def test_postgres_superuser_is_trusted_over_tcp(primary):
    r = psql(primary.port, "SELECT current_setting('max_connections'), "
             "current_setting('password_encryption')", user="postgres", db="postgres", check=True)
    assert r.stdout.strip() == "300|scram-sha-256"


def test_app_owns_database_app(primary):
    rows = primary.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'")
    assert rows == [("app",)]


def test_primary_can_be_stopped_and_restarted(primary_ctl):
    primary_ctl.stop()
    assert not primary_ctl.is_running()
    assert not port_accepts(primary_ctl.port)
    primary_ctl.start()
    assert primary_ctl.execute("SELECT 1") == [(1,)]
