"""The relation catalog read from a real PostgreSQL: views of views down to
their tables, partitions and multi-level inheritance, a name in two
schemas, materialized views, views calling stable and volatile functions,
triggers and rules, cascading foreign keys.  build/relcat_dump loads the
catalog with the same code pgscale runs (relcat_load) and prints each
expansion as the bare names of the table ids it holds, then its flags."""
import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PGSCALE_BIN = Path(os.environ.get("PGSCALE_BIN", str(REPO_ROOT / "build" / "pgscale")))
DUMP_BIN = PGSCALE_BIN.parent / "relcat_dump"
DB = "relcat"

SCHEMA = [
    "CREATE TABLE t (id int PRIMARY KEY, v int)",
    "CREATE TABLE u (id int)",
    "CREATE VIEW v1 AS SELECT * FROM t",
    "CREATE VIEW v2 AS SELECT v1.id, u.id AS uid FROM v1 JOIN u ON true",
    "CREATE TABLE meas (at date, x int) PARTITION BY RANGE (at)",
    "CREATE TABLE meas_2024 PARTITION OF meas FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') "
    "PARTITION BY RANGE (at)",
    "CREATE TABLE meas_2024_q1 PARTITION OF meas_2024 "
    "FOR VALUES FROM ('2024-01-01') TO ('2024-04-01')",
    "CREATE TABLE meas_2025 PARTITION OF meas FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
    "CREATE TABLE animal (name text)",
    "CREATE TABLE dog (bark int) INHERITS (animal)",
    "CREATE TABLE puppy () INHERITS (dog)",
    "CREATE SCHEMA a",
    "CREATE SCHEMA b",
    "CREATE TABLE a.dup (x int)",
    "CREATE TABLE b.dup (x int)",
    "CREATE TABLE b.dup_child () INHERITS (b.dup)",
    "CREATE MATERIALIZED VIEW mv AS SELECT count(*) FROM t",
    "CREATE VIEW stamped AS SELECT now() AS at, * FROM t",
    "CREATE VIEW rnd AS SELECT random() AS r, * FROM u",
    "CREATE VIEW sysv AS SELECT relname FROM pg_class",
    "CREATE VIEW uv AS SELECT * FROM meas",
    "CREATE TABLE audited (x int)",
    "CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS "
    "$$BEGIN INSERT INTO u VALUES (1); RETURN NEW; END$$",
    "CREATE TRIGGER audited_t AFTER INSERT ON audited FOR EACH ROW EXECUTE FUNCTION audit_fn()",
    "CREATE TABLE ruled (x int)",
    "CREATE RULE ruled_r AS ON INSERT TO ruled DO ALSO INSERT INTO u VALUES (2)",
    "CREATE TABLE orders (id int PRIMARY KEY)",
    "CREATE TABLE lines (id int PRIMARY KEY, order_id int REFERENCES orders ON DELETE CASCADE)",
    "CREATE TABLE line_notes (line_id int REFERENCES lines ON DELETE SET NULL)",
    "CREATE TABLE plain_ref (order_id int REFERENCES orders)",
]


@pytest.fixture(scope="module")
def relcat_db(primary):
    if not DUMP_BIN.exists():
        pytest.fail("%s is missing: build with `make` (tests enabled)" % DUMP_BIN)
    primary.execute("DROP DATABASE IF EXISTS %s" % DB)
    primary.execute("CREATE DATABASE %s" % DB)
    conn = primary.connect(db=DB)
    try:
        with conn.cursor() as cur:
            for sql in SCHEMA:
                cur.execute(sql)
    finally:
        conn.close()
    yield primary
    primary.execute("DROP DATABASE IF EXISTS %s" % DB)


def dump(primary, *args):
    """{arg: (names, flags)} as relcat_dump prints them."""
    out = subprocess.run([str(DUMP_BIN), primary.dsn(db=DB)] + list(args), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("generation 1 relations "), lines[0]
    result = {}
    for line in lines[1:]:
        arg, rest = line.split(" -> ")
        names, flags = rest.split("|")
        result[arg] = (names.split(), flags.split())
    return result


def expect(relcat_db, cases):
    got = dump(relcat_db, *cases)
    for arg, (names, flags) in cases.items():
        assert got[arg] == (sorted(names.split()), flags.split()), arg


def test_view_of_view_resolves_to_its_tables(relcat_db):
    expect(relcat_db, {
        "r:t": ("t", ""),
        "r:v1": ("t v1", ""),
        "r:v2": ("t u v1 v2", ""),
    })


def test_write_through_view_bumps_its_base_tables(relcat_db):
    expect(relcat_db, {
        "w:v1": ("t v1", ""),
        "w:uv": ("meas meas_2024 meas_2024_q1 meas_2025 uv", ""),
    })


def test_partition_reads_go_down_and_writes_go_up_and_down(relcat_db):
    expect(relcat_db, {
        "r:meas": ("meas meas_2024 meas_2024_q1 meas_2025", ""),
        "r:meas_2024": ("meas_2024 meas_2024_q1", ""),
        "w:meas_2024_q1": ("meas meas_2024 meas_2024_q1", ""),
        "w:meas": ("meas meas_2024 meas_2024_q1 meas_2025", ""),
    })


def test_multi_level_inheritance(relcat_db):
    expect(relcat_db, {
        "r:animal": ("animal dog puppy", ""),
        "r:dog": ("dog puppy", ""),
        "w:puppy": ("animal dog puppy", ""),
    })


def test_name_in_two_schemas(relcat_db):
    expect(relcat_db, {
        "r:dup": ("dup dup_child", ""),
        "r:a.dup": ("dup", ""),
        "r:b.dup": ("dup dup_child", ""),
    })


def test_unknown_names(relcat_db):
    expect(relcat_db, {
        "r:no_such_table": ("?", "unknown"),
        "r:public.dup": ("dup", "unknown"),
        "r:sysv": ("sysv", "unknown"),  # over pg_class, which the catalog leaves out
        "w:no_such_table": ("?", "unknown"),
    })


def test_materialized_view_reads_only_itself(relcat_db):
    expect(relcat_db, {
        "r:mv": ("mv", ""),
        "w:t": ("t", ""),
    })


def test_views_calling_stable_or_volatile_functions_are_flagged(relcat_db):
    expect(relcat_db, {
        "r:stamped": ("stamped t", "stable"),
        "r:rnd": ("rnd u", "volatile"),
    })


def test_trigger_and_rule_make_writes_side_effects(relcat_db):
    expect(relcat_db, {
        "w:audited": ("audited", "side_effects"),
        "w:ruled": ("ruled", "side_effects"),
        "r:audited": ("audited", ""),
    })


def test_cascading_foreign_keys_bump_referencing_tables(relcat_db):
    # plain_ref's key has no action: a delete on orders fails rather than
    # writing it
    expect(relcat_db, {
        "w:orders": ("line_notes lines orders", ""),
        "w:lines": ("line_notes lines", ""),
        "r:orders": ("orders", ""),
    })
