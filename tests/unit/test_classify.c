/* Unit tests for classify: a corpus of statements with the facts each must
 * get (every rule of "what counts as a read" and the tricky spellings), the
 * table and function names, the function volatility table (built-in list,
 * published tables, overloads across schemas), and the parse cache
 * (hits, eviction by entries and bytes, recomputation after a volatility
 * reload, long texts, two threads at once).  Every text is copied into an
 * exactly sized heap buffer so that ASan reports any read past its end. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "classify.h"

/* Short names for the expected flags. */
#define R PGS_FACT_READ
#define W PGS_FACT_WRITE
#define C PGS_FACT_CACHEABLE
#define S PGS_FACT_USES_STABLE
#define V PGS_FACT_USES_VOLATILE
#define TB PGS_FACT_TXN_BEGIN
#define TRO PGS_FACT_TXN_BEGIN_READ_ONLY
#define TE PGS_FACT_TXN_END
#define TCH PGS_FACT_TXN_CHAIN
#define SER PGS_FACT_TXN_SERIALIZABLE
#define STRO PGS_FACT_SET_TX_READ_ONLY
#define DDL PGS_FACT_DDL
#define H PGS_FACT_HINT_PRIMARY
#define PE PGS_FACT_PARSE_ERROR
#define M PGS_FACT_MULTI
#define SS PGS_FACT_SESSION_STATE

/* The corpus compares every flag except the list overflows, which have
 * tests of their own. */
#define OVERFLOWS \
    (PGS_FACT_READS_OVERFLOW | PGS_FACT_WRITES_OVERFLOW | PGS_FACT_FUNCS_OVERFLOW)

static pgs_classify_cache *cache;

static const pgs_stmt_facts *classify_n(pgs_classify_cache *c, const char *text, size_t len)
{
    /* The cache keeps its own copy: the buffer may go at once. */
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    if (len) memcpy(copy, text, len);
    const pgs_stmt_facts *f = classify(c, copy, len);
    memset(copy, 0x5a, len);
    free(copy);
    return f;
}

static const pgs_stmt_facts *cls(const char *text)
{
    return classify_n(cache, text, strlen(text));
}

static void flags_str(uint32_t f, char *buf, size_t cap)
{
    static const struct {
        uint32_t bit;
        const char *name;
    } names[] = {
        {R, "READ"}, {W, "WRITE"}, {C, "CACHEABLE"}, {S, "STABLE"}, {V, "VOLATILE"},
        {TB, "TXN_BEGIN"}, {TRO, "TXN_BEGIN_READ_ONLY"}, {TE, "TXN_END"}, {TCH, "TXN_CHAIN"},
        {SER, "SERIALIZABLE"}, {STRO, "SET_TX_READ_ONLY"}, {DDL, "DDL"}, {H, "HINT"},
        {PE, "PARSE_ERROR"}, {M, "MULTI"}, {SS, "SESSION_STATE"},
        {PGS_FACT_READS_OVERFLOW, "READS_OVERFLOW"}, {PGS_FACT_WRITES_OVERFLOW, "WRITES_OVERFLOW"},
        {PGS_FACT_FUNCS_OVERFLOW, "FUNCS_OVERFLOW"}, {PGS_FACT_HINT_CACHE, "HINT_CACHE"},
        {PGS_FACT_HINT_NOCACHE, "HINT_NOCACHE"},
    };
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (f & names[i].bit)
            n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? "|" : "", names[i].name);
}

typedef struct corpus_case {
    const char *sql;
    uint32_t want;
} corpus_case;

/* Checks each case; reports every mismatch before failing. */
static void run_corpus(const corpus_case *cases, size_t n)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        const pgs_stmt_facts *f = cls(cases[i].sql);
        uint32_t got = f->flags & ~OVERFLOWS;
        assert_true(((f->flags & R) != 0) != ((f->flags & W) != 0)); /* exactly one */
        if (got != cases[i].want) {
            char g[256], w[256];
            flags_str(got, g, sizeof(g));
            flags_str(cases[i].want, w, sizeof(w));
            print_message("MISMATCH %s\n    got  %s\n    want %s\n", cases[i].sql, g, w);
            bad++;
        }
    }
    if (bad) fail_msg("%d of %zu statements misclassified", bad, n);
}

/* ---- the volatility table used by the corpus ------------------------- */

static const pgs_proc_row test_procs[] = {
    {"pg_catalog", "abs", 'i'}, {"pg_catalog", "round", 'i'}, {"pg_catalog", "lower", 'i'},
    {"pg_catalog", "upper", 'i'}, {"pg_catalog", "count", 'i'}, {"pg_catalog", "sum", 'i'},
    {"pg_catalog", "max", 'i'}, {"pg_catalog", "min", 'i'}, {"pg_catalog", "avg", 'i'},
    {"pg_catalog", "unnest", 'i'}, {"pg_catalog", "row_number", 'i'},
    {"pg_catalog", "like_escape", 'i'}, {"pg_catalog", "btrim", 'i'},
    {"pg_catalog", "substring", 'i'}, {"pg_catalog", "position", 'i'},
    {"pg_catalog", "length", 'i'}, {"pg_catalog", "length", 's'}, /* overloads differ */
    {"pg_catalog", "generate_series", 'i'}, {"pg_catalog", "generate_series", 's'},
    {"pg_catalog", "extract", 'i'}, {"pg_catalog", "extract", 's'},
    {"pg_catalog", "now", 's'}, {"pg_catalog", "to_char", 's'},
    {"pg_catalog", "current_setting", 's'}, {"pg_catalog", "pg_backend_pid", 's'},
    {"pg_catalog", "timezone", 's'}, {"pg_catalog", "txid_current", 's'},
    {"pg_catalog", "pg_current_xact_id", 's'},
    {"pg_catalog", "random", 'v'}, {"pg_catalog", "nextval", 'v'},
    {"pg_catalog", "setval", 'v'}, {"pg_catalog", "currval", 'v'},
    {"pg_catalog", "lastval", 'v'}, {"pg_catalog", "pg_advisory_lock", 'v'},
    {"pg_catalog", "pg_advisory_xact_lock", 'v'}, {"pg_catalog", "pg_try_advisory_lock", 'v'},
    {"pg_catalog", "pg_advisory_unlock_all", 'v'}, {"pg_catalog", "pg_notify", 'v'},
    {"pg_catalog", "set_config", 'v'},
    /* Functions a user wrote. */
    {"public", "my_immutable", 'i'}, {"public", "my_stable", 's'},
    {"public", "my_volatile", 'v'}, {"public", "my_srf", 'v'},
    {"app", "my_immutable", 'i'},
    {"public", "dual", 'i'}, {"app", "dual", 'v'}, /* same name, two schemas */
    {"public", "My_Func", 'i'},                    /* created as "My_Func" */
    /* A user function shadowing a never-read name is still not a read. */
    {"public", "nextval", 'i'},
};

static uint64_t corpus_gen;

static int setup_corpus(void **state)
{
    (void)state;
    corpus_gen = classify_volatility_publish(test_procs, sizeof(test_procs) / sizeof(test_procs[0]));
    cache = classify_cache_new(4096, 8 << 20);
    return 0;
}

static int teardown_corpus(void **state)
{
    (void)state;
    classify_cache_free(cache);
    cache = NULL;
    return 0;
}

/* ---- before any table is loaded: the built-in list --------------------- */

static void test_builtin_list_before_load(void **state)
{
    (void)state;
    assert_int_equal(classify_volatility_generation(), 0);
    pgs_classify_cache *c = classify_cache_new(16, 1 << 16);
    cache = c;
    static const corpus_case cases[] = {
        {"SELECT lower(name), count(*) FROM users GROUP BY 1", R | C},
        {"SELECT abs(x), round(y, 2), coalesce(a, b) FROM t", R | C},
        {"SELECT pg_catalog.upper('a')", R | C},
        {"SELECT now()", R | S},
        {"SELECT current_timestamp", R | S},
        {"SELECT extract(year FROM d) FROM t", R | S},
        {"SELECT random()", W | V},
        {"SELECT nextval('s')", W | V},
        {"SELECT my_func()", W | V},          /* unknown */
        {"SELECT public.lower('a')", W | V},  /* the list is pg_catalog's only */
    };
    run_corpus(cases, sizeof(cases) / sizeof(cases[0]));
    assert_int_equal(classify_function_volatility("pg_catalog", "lower"), 'i');
    assert_int_equal(classify_function_volatility(NULL, "now"), 's');
    assert_int_equal(classify_function_volatility(NULL, "random"), 'v');
    assert_int_equal(classify_function_volatility(NULL, "no_such_function"), 0);
    assert_int_equal(classify(c, "SELECT 1", 8)->generation, 0);
    classify_cache_free(c);
    cache = NULL;
}

/* ---- the corpus --------------------------------------------------------- */

static void test_reads(void **state)
{
    (void)state;
    static const corpus_case cases[] = {
        {"SELECT 1", R | C},
        {"select * from users where id = $1", R | C},
        {"SELECT a, b FROM t1 JOIN t2 USING (id)", R | C},
        {"VALUES (1, 'a'), (2, 'b')", R | C},
        {"TABLE t", R | C},
        {"SELECT count(*) FROM t", R | C},
        {"SELECT * FROM (SELECT id FROM t) sub", R | C},
        {"SELECT id FROM t WHERE id IN (SELECT x FROM u)", R | C},
        {"SELECT * FROM t ORDER BY abs(x) LIMIT 10", R | C},
        {"WITH x AS (SELECT 1) SELECT * FROM x", R | C},
        {"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) "
         "SELECT * FROM r", R | C},
        {"SELECT * FROM t UNION ALL SELECT * FROM u", R | C},
        {"SELECT a FROM t INTERSECT SELECT a FROM u EXCEPT SELECT a FROM v", R | C},
        {"SELECT $1::int, $2::text", R | C},
        {"SELECT coalesce(a, b), nullif(a, 0), greatest(a, b), least(a, b) FROM t", R | C},
        {"SELECT CASE WHEN a > 0 THEN 'x' ELSE 'y' END FROM t", R | C},
        {"SELECT a FROM t WHERE b LIKE 'x%' ESCAPE '!'", R | C},
        {"SELECT sum(x) OVER (PARTITION BY y ORDER BY z), row_number() OVER () FROM t", R | C},
        {"SELECT \"Name\" FROM \"Users\"", R | C},
        {"SELECT * FROM unnest(ARRAY[1, 2])", R | C},
        {"SELECT EXISTS (SELECT 1 FROM t WHERE a = 1)", R | C},
        {"SELECT a FROM t GROUP BY a HAVING count(*) > 1", R | C},
        {"SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b", R | C},
        {"SELECT a FROM ONLY t", R | C},
        {"SELECT t.* FROM s.t", R | C},
        {"SELECT a FROM t WHERE b = ANY($1)", R | C},
        {"SELECT ROW(1, 2), ARRAY[1, 2], '{1,2}'::int[]", R | C},
        {"SELECT * FROM t LIMIT $1 OFFSET $2", R | C},
        {"SELECT * FROM t FETCH FIRST 5 ROWS ONLY", R | C},
        {"SELECT a FROM t WHERE a BETWEEN 1 AND 10 AND b IS NOT NULL", R | C},
        {"SELECT * FROM t1 LEFT JOIN LATERAL (SELECT * FROM t2 WHERE t2.id = t1.id) s ON true",
         R | C},
        {"SELECT lower(name), upper(name) FROM users", R | C},
        {"SELECT btrim(x), substring(x FROM 1 FOR 2), position('a' IN x) FROM t", R | C},
        {"SELECT trim(both 'x' from name) FROM t", R | C},
        {"SELECT my_immutable(a) FROM t", R | C},
        {"SELECT app.my_immutable(a) FROM t", R | C},
        {"SELECT mydb.app.my_immutable(a) FROM t", R | C},
        {"SELECT public.dual(1)", R | C},
        {"SELECT \"My_Func\"()", R | C},
        {"SELECT 1;", R | C},                     /* a trailing ';' is one statement */
        {"  \n\t SELECT 1  -- trailing comment", R | C},
        {"SELECT 'it''s', E'a\\'b', $tag$ x; y $tag$", R | C},
        {"SELECT a->>'k', b @> '{}'::jsonb FROM t", R | C}, /* operators: see docs */
        {"SELECT * FROM t TABLESAMPLE SYSTEM (10)", R},   /* random rows */
        {"SELECT * FROM pg_stat_activity", R},             /* catalogs change by themselves */
        {"SELECT * FROM information_schema.tables", R},
        {"SELECT relname FROM pg_catalog.pg_class", R},
        {"SHOW search_path", R},
        {"SHOW ALL", R},
        {"SHOW TRANSACTION ISOLATION LEVEL", R},
        {"", R},                                            /* empty query */
        {";;", R},
        {"-- only a comment", R},
    };
    run_corpus(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_stable_reads(void **state)
{
    (void)state;
    static const corpus_case cases[] = {
        {"SELECT now()", R | S},
        {"SELECT pg_catalog.now()", R | S},
        {"SELECT current_timestamp", R | S},
        {"SELECT localtimestamp(3), current_date", R | S},
        {"SELECT current_user, session_user", R | S},
        {"SELECT * FROM t WHERE created > now() - interval '1 day'", R | S},
        {"SELECT my_stable()", R | S},
        {"SELECT current_setting('search_path')", R | S},
        {"SELECT pg_backend_pid()", R | S},
        {"SELECT count(*) FROM t WHERE d > current_date", R | S},
        {"SELECT to_char(now(), 'YYYY')", R | S},
        {"SELECT length(name) FROM t", R | S},            /* one overload is stable */
        {"SELECT * FROM generate_series(1, 10)", R | S},
        {"SELECT extract(year FROM d) FROM t", R | S},
        {"SELECT d AT TIME ZONE 'UTC' FROM t", R | S},
        {"SELECT * FROM t ORDER BY my_stable()", R | S},
    };
    run_corpus(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_explain(void **state)
{
    (void)state;
    static const corpus_case cases[] = {
        {"EXPLAIN SELECT * FROM t", R},
        {"EXPLAIN ANALYZE SELECT * FROM t", R},
        {"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT count(*) FROM t", R},
        {"EXPLAIN SELECT now()", R | S},
        {"EXPLAIN ANALYZE DELETE FROM t", W},
        {"EXPLAIN (ANALYZE) UPDATE t SET a = 1", W},
        {"EXPLAIN DELETE FROM t", W},
        {"EXPLAIN ANALYZE SELECT nextval('s')", W | V},
        {"EXPLAIN SELECT * FROM t FOR UPDATE", W},
        {"EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1", W},
        {"EXPLAIN EXECUTE p(1)", W},
        {"EXPLAIN ANALYZE WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x", W},
    };
    run_corpus(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_dml_and_locking(void **state)
{
    (void)state;
    static const corpus_case cases[] = {
        {"INSERT INTO t VALUES (1)", W},
        {"INSERT INTO t SELECT * FROM u", W},
        {"INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO NOTHING", W},
        {"INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO UPDATE SET b = excluded.b", W},
        {"INSERT INTO t DEFAULT VALUES RETURNING id", W},
        {"UPDATE t SET a = 1 WHERE id = $1", W},
        {"UPDATE t SET a = u.a FROM u WHERE t.id = u.id", W},
        {"DELETE FROM t WHERE id = $1", W},
        {"DELETE FROM t USING u WHERE t.id = u.id RETURNING t.*", W},
        {"MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE "
         "WHEN NOT MATCHED THEN INSERT VALUES (u.id)", W},
        {"WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x", W},
        {"WITH x AS (DELETE FROM t RETURNING *) SELECT count(*) FROM x", W},
        {"WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT 1", W},
        {"WITH a AS (SELECT 1), b AS (INSERT INTO t SELECT * FROM a RETURNING 1) TABLE a", W},
        {"SELECT * FROM t FOR UPDATE", W},
        {"SELECT * FROM t FOR SHARE", W},
        {"SELECT * FROM t FOR NO KEY UPDATE", W},
        {"SELECT * FROM t FOR KEY SHARE", W},
        {"SELECT * FROM t FOR UPDATE OF t NOWAIT", W},
        {"SELECT * FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)", W},
        {"SELECT * FROM (SELECT * FROM u FOR UPDATE SKIP LOCKED) s", W},
        {"WITH x AS (SELECT * FROM u FOR SHARE) SELECT * FROM x", W},
        {"SELECT 1 UNION SELECT 2 FROM t FOR UPDATE", W},
        {"SELECT * INTO newt FROM t", W},
        {"SELECT * INTO TEMP tmp FROM t", W | SS},
        {"SELECT * INTO TEMPORARY TABLE tmp FROM t", W | SS},
        {"SELECT a INTO UNLOGGED u2 FROM t", W},
    };
    run_corpus(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_functions_not_reads(void **state)
{
    (void)state;
    static const corpus_case cases[] = {
        {"SELECT nextval('s')", W | V},
        {"SELECT setval('s', 1)", W | V},
        {"SELECT currval('s')", W | V},
        {"SELECT lastval()", W | V},
        {"SELECT pg_catalog.nextval('s')", W | V},
        {"SELECT \"nextval\"('s')", W | V},
        {"SELECT public.nextval('s')", W | V},      /* never a read, whatever the catalog */
        {"SELECT pg_advisory_lock(1)", W | V},
        {"SELECT pg_advisory_xact_lock(1)", W | V},
        {"SELECT pg_try_advisory_lock(1, 2)", W | V},
        {"SELECT pg_advisory_unlock_all()", W | V},
        {"SELECT pg_try_advisory_xact_lock_shared(1)", W | V}, /* not in the table either */
        {"SELECT pg_notify('c', 'x')", W | V},
        {"SELECT set_config('a.b', 'c', false)", W | V},
        {"SELECT txid_current()", W | V},              /* stable, yet assigns an xid */
        {"SELECT pg_current_xact_id()", W | V},
        {"SELECT random()", W | V},
        {"SELECT my_volatile()", W | V},
        {"SELECT unknown_func()", W | V},
        {"SELECT my_func()", W | V},                   /* "My_Func" only when quoted */
        {"SELECT app.my_volatile()", W | V},           /* no such function in app */
        {"SELECT dual(1)", W | V},                     /* app.dual is volatile */
        {"SELECT app.dual(1)", W | V},
        {"SELECT a.b.c.d()", W | V},                   /* not a function name */
        {"SELECT * FROM t WHERE a = my_volatile()", W | V},
        {"SELECT * FROM t ORDER BY random()", W | V},
        {"SELECT abs(my_volatile())", W | V},
        {"SELECT abs(round(1 + my_volatile()))", W | V},
        {"SELECT * FROM (SELECT my_volatile()) s", W | V},
        {"WITH x AS (SELECT my_volatile()) SELECT * FROM x", W | V},
        {"SELECT count(*) FILTER (WHERE my_volatile() > 0) FROM t", W | V},
        {"SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.a = nextval('s'))", W | V},
        {"SELECT * FROM my_srf()", W | V},
        {"SELECT sum(x) OVER (ORDER BY my_volatile()) FROM t", W | V},
        {"SELECT a FROM t GROUP BY a HAVING max(b) > my_volatile()", W | V},
        {"SELECT CASE WHEN a THEN nextval('s') END FROM t", W | V},
        {"SELECT ARRAY(SELECT random() FROM t)", W | V},
        {"VALUES (nextval('s'))", W | V},
        {"SELECT now(), random()", W | S | V},
        {"SELECT 1 FROM t LIMIT my_volatile()", W | V},
    };
    run_corpus(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_transactions(void **state)
{
    (void)state;
    static const corpus_case cases[] = {
        {"BEGIN", W | TB},
        {"BEGIN WORK", W | TB},
        {"START TRANSACTION", W | TB},
        {"BEGIN READ ONLY", R | TB | TRO},
        {"begin transaction read only", R | TB | TRO},
        {"START TRANSACTION READ ONLY", R | TB | TRO},
        {"BEGIN READ WRITE", W | TB},
        {"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", R | TB | TRO},
        {"BEGIN ISOLATION LEVEL READ COMMITTED", W | TB},
        {"BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", W | TB | TRO | SER},
        {"BEGIN ISOLATION LEVEL SERIALIZABLE", W | TB | SER},
        {"COMMIT", R | TE},
        {"COMMIT WORK", R | TE},
        {"END", R | TE},
        {"ROLLBACK", R | TE},
        {"ABORT", R | TE},
        {"COMMIT AND CHAIN", R | TE | TCH},
        {"ROLLBACK AND CHAIN", R | TE | TCH},
        {"COMMIT AND NO CHAIN", R | TE},
        {"SAVEPOINT a", R},
        {"RELEASE SAVEPOINT a", R},
        {"ROLLBACK TO SAVEPOINT a", R},
        {"PREPARE TRANSACTION 'x'", W | TE},
        {"COMMIT PREPARED 'x'", W},
        {"ROLLBACK PREPARED 'x'", W},
        {"SET TRANSACTION READ ONLY", W | STRO},
        {"SET TRANSACTION READ WRITE", W},
        {"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", W | SER},
        {"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", W | STRO},
        {"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", W | STRO},
        {"SET default_transaction_read_only = on", W | STRO},
        {"SET default_transaction_read_only TO true", W | STRO},
        {"SET default_transaction_read_only = 'yes'", W | STRO},
        {"SET default_transaction_read_only = 1", W | STRO},
        {"SET SESSION default_transaction_read_only = 't'", W | STRO},
        {"SET transaction_read_only = on", W | STRO},
        {"SET default_transaction_read_only = off", W},
        {"SET default_transaction_read_only = 0", W},
        {"SET default_transaction_read_only = 'of'", W},
    };
    run_corpus(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_session_and_utility(void **state)
{
    (void)state;
    static const corpus_case cases[] = {
        {"SET search_path = app, public", W},
        {"SET LOCAL statement_timeout = 0", W},
        {"SET TIME ZONE 'UTC'", W},
        {"SET ROLE admin", W},
        {"SET SESSION AUTHORIZATION bob", W},
        {"RESET ALL", W},
        {"RESET search_path", W},
        {"LISTEN chan", W | SS},
        {"UNLISTEN chan", W},
        {"UNLISTEN *", W},
        {"NOTIFY chan, 'payload'", W},
        {"COPY t FROM STDIN", W},
        {"COPY t (a, b) FROM STDIN WITH (FORMAT csv)", W},
        {"COPY t TO STDOUT", R},
        {"COPY (SELECT * FROM t WHERE a > 1) TO STDOUT WITH CSV", R},
        {"COPY (SELECT nextval('s')) TO STDOUT", W | V},
        {"COPY (DELETE FROM t RETURNING *) TO STDOUT", W},
        {"COPY t TO '/tmp/out.csv'", W},
        {"COPY t TO PROGRAM 'gzip > /tmp/x.gz'", W},
        {"CALL p()", W | V},
        {"CALL my_immutable()", W},
        {"DO $$ BEGIN PERFORM 1; END $$", W},
        {"LOCK TABLE t", W},
        {"LOCK t IN ACCESS SHARE MODE", W},
        {"DECLARE c CURSOR FOR SELECT 1", W},
        {"DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", W | SS},
        {"FETCH 10 FROM c", W},
        {"CLOSE c", W},
        {"PREPARE p AS SELECT 1", W | SS},
        {"PREPARE q (int) AS SELECT * FROM t WHERE a = $1", W | SS},
        {"EXECUTE p", W},
        {"EXECUTE q(1)", W},
        {"DEALLOCATE p", W},
        {"DEALLOCATE ALL", W},
        {"DISCARD ALL", W},
        {"DISCARD TEMP", W},
        {"VACUUM", W},
        {"VACUUM (VERBOSE, ANALYZE) t", W},
        {"ANALYZE t", W},
        {"CHECKPOINT", W},
        {"REINDEX TABLE t", W},
        {"CLUSTER t USING t_pkey", W},
        {"REFRESH MATERIALIZED VIEW mv", W},
        {"TRUNCATE t", W},
        {"TRUNCATE TABLE t1, t2 RESTART IDENTITY CASCADE", W},
        {"LOAD 'auto_explain'", W},
        {"SET CONSTRAINTS ALL DEFERRED", W},
    };
    run_corpus(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_ddl(void **state)
{
    (void)state;
    static const corpus_case cases[] = {
        {"CREATE TABLE t (a int)", W | DDL},
        {"CREATE TABLE t (a int DEFAULT nextval('s'))", W | DDL | V},
        {"CREATE TABLE t (id serial PRIMARY KEY, b text NOT NULL)", W | DDL},
        {"CREATE TEMP TABLE tmp (a int)", W | DDL | SS},
        {"CREATE TEMPORARY TABLE tmp AS SELECT 1", W | DDL | SS},
        {"CREATE TEMP TABLE tmp (a int) ON COMMIT DROP", W | DDL | SS},
        {"CREATE TABLE pg_temp.x (a int)", W | DDL | SS},
        {"CREATE TABLE x AS SELECT * FROM t", W | DDL},
        {"CREATE MATERIALIZED VIEW mv AS SELECT 1", W | DDL},
        {"ALTER TABLE t ADD COLUMN b int", W | DDL},
        {"ALTER TABLE t RENAME TO u", W | DDL},
        {"DROP TABLE t", W | DDL},
        {"DROP TABLE IF EXISTS t, u CASCADE", W | DDL},
        {"CREATE INDEX ON t (a)", W | DDL},
        {"CREATE UNIQUE INDEX CONCURRENTLY i ON t (lower(a))", W | DDL},
        {"CREATE VIEW v AS SELECT * FROM t", W | DDL},
        {"CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'", W | DDL},
        {"ALTER FUNCTION f() STABLE", W | DDL},
        {"DROP FUNCTION f", W | DDL},
        {"CREATE SCHEMA s", W | DDL},
        {"CREATE SEQUENCE s", W | DDL},
        {"ALTER SEQUENCE s RESTART", W | DDL},
        {"CREATE EXTENSION IF NOT EXISTS pgcrypto", W | DDL},
        {"CREATE TYPE mood AS ENUM ('sad', 'ok')", W | DDL},
        {"CREATE TYPE pair AS (a int, b int)", W | DDL},
        {"CREATE DOMAIN posint AS int CHECK (VALUE > 0)", W | DDL},
        {"COMMENT ON TABLE t IS 'x'", W | DDL},
        {"GRANT SELECT ON t TO bob", W | DDL},
        {"REVOKE ALL ON t FROM bob", W | DDL},
        {"CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", W | DDL},
        {"CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING", W | DDL},
        {"CREATE ROLE bob LOGIN", W | DDL},
        {"CREATE DATABASE d", W | DDL},
        {"DROP DATABASE d", W | DDL},
        {"CREATE AGGREGATE myagg (int) (sfunc = int4pl, stype = int)", W | DDL},
        {"ALTER SYSTEM SET work_mem = '64MB'", W | DDL},
    };
    run_corpus(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_hints(void **state)
{
    (void)state;
    static const corpus_case cases[] = {
        {"SELECT 1 /* pgscale:primary */", R | C | H},
        {"/* pgscale:primary */ SELECT * FROM t", R | C | H},
        {"/*pgscale:primary*/SELECT 1", R | C | H},
        {"SELECT 1 /* PGSCALE:PRIMARY */", R | C | H},
        {"-- pgscale:primary\nSELECT 1", R | C | H},
        {"SELECT /* outer /* pgscale:primary */ still comment */ 1", R | C | H},
        {"SELECT 'pgscale:primary'", R | C},
        {"SELECT '/* pgscale:primary */'", R | C},
        {"SELECT E'\\' /* pgscale:primary */'", R | C},
        {"SELECT $$ /* pgscale:primary */ $$", R | C},
        {"SELECT $q$ -- pgscale:primary $q$", R | C},
        {"SELECT 1 AS \"/* pgscale:primary */\"", R | C},
        {"SELECT 1 /* pgscale:replica */", R | C},
        {"INSERT INTO t VALUES (1) /* pgscale:primary */", W | H},
        {"SELECT 1 /* pgscale:primary */ FROM WHERE", W | PE | H},
        {"SELECT 1; /* pgscale:primary */ SELECT 2", R | M | H},
    };
    run_corpus(cases, sizeof(cases) / sizeof(cases[0]));
}

#define HC PGS_FACT_HINT_CACHE
#define HN PGS_FACT_HINT_NOCACHE

static void test_cache_hints(void **state)
{
    (void)state;
    static const corpus_case cases[] = {
        {"/* pgscale:cache */ SELECT * FROM t", R | C | HC},
        {"SELECT * FROM t -- PGSCALE:CACHE ttl=5", R | C | HC},
        {"/* pgscale:nocache */ SELECT * FROM t", R | C | HN},
        {"/* pgscale:cache */ /* pgscale:nocache */ SELECT 1", R | C | HN},
        {"/* pgscale:cache ttl=0 */ SELECT 1", R | C | HN},
        /* a ttl that is not a duration: unsure, so no hint at all */
        {"/* pgscale:cache ttl=soon */ SELECT 1", R | C},
        {"/* pgscale:cache ttl= */ SELECT 1", R | C},
        /* the word must end where the hint does */
        {"/* pgscale:cached */ SELECT 1", R | C},
        {"/* pgscale:cache_me */ SELECT 1", R | C},
        {"/* pgscale:cached pgscale:cache */ SELECT 1", R | C | HC},
        /* only comments count */
        {"SELECT 'pgscale:cache'", R | C},
        {"SELECT 'pgscale:nocache' /* pgscale:cache */", R | C | HC},
        {"SELECT $$ pgscale:nocache $$ -- pgscale:cache", R | C | HC},
        {"SELECT 1 AS \"/* pgscale:nocache */\"", R | C},
        /* a hint does not make a statement cacheable: the facts say so */
        {"/* pgscale:cache ttl=60 */ SELECT now()", R | S | HC},
        {"/* pgscale:cache */ UPDATE t SET a = 1", W | HC},
        {"/* pgscale:cache */ /* pgscale:primary */ SELECT 1", R | C | HC | H},
    };
    run_corpus(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_cache_hint_ttl(void **state)
{
    (void)state;
    static const struct {
        const char *sql;
        uint32_t ttl_ms;
    } cases[] = {
        {"/* pgscale:cache */ SELECT 1", 0},
        {"/* pgscale:cache ttl=60 */ SELECT 1", 60000},
        {"/* pgscale:cache  ttl=2.5s */ SELECT 1", 2500},
        {"/* pgscale:cache ttl=500ms*/SELECT 1", 500},
        {"-- pgscale:cache ttl=5min\nSELECT 1", 300000},
        {"/*pgscale:cache TTL=1h*/ SELECT 1", 3600000},
        /* ttl= of another comment is not this hint's */
        {"/* pgscale:cache */ /* ttl=60 */ SELECT 1", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const pgs_stmt_facts *f = cls(cases[i].sql);
        if (!(f->flags & PGS_FACT_HINT_CACHE) || f->hint_ttl_ms != cases[i].ttl_ms)
            fail_msg("%s: flags 0x%x ttl %u, expected the cache hint with ttl %u", cases[i].sql,
                     f->flags, f->hint_ttl_ms, cases[i].ttl_ms);
    }
    /* The literal-masked parse cache keeps the hint per text: texts that
     * differ only in a literal share facts, comments are not literals. */
    assert_int_equal(cls("/* pgscale:cache ttl=7 */ SELECT * FROM t WHERE id = 1")->hint_ttl_ms,
                     7000);
    assert_int_equal(cls("/* pgscale:cache ttl=8 */ SELECT * FROM t WHERE id = 1")->hint_ttl_ms,
                     8000);
    assert_int_equal(cls("/* pgscale:cache ttl=7 */ SELECT * FROM t WHERE id = 2")->hint_ttl_ms,
                     7000);
}

static void test_fingerprint(void **state)
{
    (void)state;
    uint64_t a = cls("SELECT a FROM t WHERE id = 1")->fingerprint;
    assert_true(a != 0);
    /* constants, comments, case and layout do not change it */
    assert_true(cls("select a\n from t where id = 42 -- x")->fingerprint == a);
    assert_true(cls("SELECT a FROM t WHERE id = $1")->fingerprint != 0);
    assert_true(cls("SELECT b FROM t WHERE id = 1")->fingerprint != a);
    /* 0 when the text does not parse */
    assert_true(cls("SELEC a FROM t")->fingerprint == 0);
    assert_true(classify_n(cache, "SELECT a FROM t\0 x", 19)->fingerprint == 0);
    /* a cache hit hands back the fingerprint computed on the miss */
    pgs_classify_cache *c = classify_cache_new(16, 1 << 16);
    const char *q = "SELECT a FROM t WHERE id = 7";
    uint64_t miss = classify_n(c, q, strlen(q))->fingerprint;
    pgs_classify_stats st;
    classify_cache_stats(c, &st);
    uint64_t hits = st.hits;
    assert_true(classify_n(c, q, strlen(q))->fingerprint == miss);
    classify_cache_stats(c, &st);
    assert_int_equal(st.hits, hits + 1);
    assert_true(miss == a);
    classify_cache_free(c);
}

static void test_multi_statement(void **state)
{
    (void)state;
    static const corpus_case cases[] = {
        {"SELECT 1; SELECT 2", R | M},
        {"SELECT 1; INSERT INTO t VALUES (1)", W | M},
        {"INSERT INTO t VALUES (1); SELECT 1", W | M},
        {"BEGIN; SELECT 1; COMMIT", W | TB | TE | M},
        {"BEGIN READ ONLY; SELECT * FROM t; COMMIT", R | TB | TRO | TE | M},
        {"SELECT now(); SELECT 1", R | S | M},
        {"SET search_path = x; SELECT 1", W | M},
        {"SELECT 1; SELECT nextval('s')", W | V | M},
        {"SELECT 'a;b'; SELECT $$;$$", R | M},
        {"CREATE TABLE a (x int); DROP TABLE b", W | DDL | M},
    };
    run_corpus(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_parse_errors(void **state)
{
    (void)state;
    static const corpus_case cases[] = {
        {"SELEC 1", W | PE},
        {"SELECT * FROM", W | PE},
        {"SELECT 'unterminated", W | PE},
        {"SELECT 1 FROM t WHERE a = $", W | PE},
        {"SELECT (1", W | PE},
        {"\xff\xfe garbage", W | PE},
        {"SELECT 1; SELEC 2", W | PE}, /* one bad statement: the whole text */
        {"/* unterminated comment SELECT 1", W | PE},
    };
    run_corpus(cases, sizeof(cases) / sizeof(cases[0]));

    /* A NUL inside the text: PostgreSQL would stop reading there. */
    static const char with_nul[] = "SELECT 1\0; DELETE FROM t";
    const pgs_stmt_facts *f = classify_n(cache, with_nul, sizeof(with_nul) - 1);
    assert_int_equal(f->flags & (R | W | PE), W | PE);
    assert_true(f->flags & PGS_FACT_WRITES_OVERFLOW);
}

/* ---- names --------------------------------------------------------------- */

static bool has_name(const pgs_name *v, unsigned n, const char *schema, const char *name)
{
    for (unsigned i = 0; i < n; i++) {
        if (strcmp(v[i].name, name) != 0) continue;
        if (!schema && !v[i].schema) return true;
        if (schema && v[i].schema && strcmp(schema, v[i].schema) == 0) return true;
    }
    return false;
}

static void test_table_names(void **state)
{
    (void)state;
    const pgs_stmt_facts *f = cls("SELECT * FROM a JOIN S.B ON true JOIN \"C\" ON true "
                                  "JOIN \"Odd\".\"x.y\" ON true");
    assert_int_equal(f->n_reads, 4);
    assert_int_equal(f->n_writes, 0);
    assert_true(has_name(f->reads, f->n_reads, NULL, "a"));
    assert_true(has_name(f->reads, f->n_reads, "s", "b")); /* folded: unquoted */
    assert_true(has_name(f->reads, f->n_reads, NULL, "C"));
    assert_true(has_name(f->reads, f->n_reads, "Odd", "x.y"));

    f = cls("SELECT * FROM t, t AS t2, public.t"); /* names as written, once each */
    assert_int_equal(f->n_reads, 2);
    assert_true(has_name(f->reads, f->n_reads, NULL, "t"));
    assert_true(has_name(f->reads, f->n_reads, "public", "t"));

    f = cls("INSERT INTO s.t SELECT * FROM u");
    assert_int_equal(f->n_writes, 1);
    assert_true(has_name(f->writes, f->n_writes, "s", "t"));
    assert_int_equal(f->n_reads, 1);
    assert_true(has_name(f->reads, f->n_reads, NULL, "u"));
    assert_false(f->flags & PGS_FACT_WRITES_OVERFLOW);

    f = cls("UPDATE t SET a = (SELECT max(x) FROM u) WHERE id IN (SELECT id FROM v)");
    assert_int_equal(f->n_writes, 1);
    assert_true(has_name(f->writes, f->n_writes, NULL, "t"));
    assert_true(has_name(f->reads, f->n_reads, NULL, "u"));
    assert_true(has_name(f->reads, f->n_reads, NULL, "v"));
    assert_false(has_name(f->reads, f->n_reads, NULL, "t"));

    f = cls("WITH x AS (DELETE FROM t RETURNING *) INSERT INTO log SELECT * FROM x");
    assert_int_equal(f->n_writes, 2);
    assert_true(has_name(f->writes, f->n_writes, NULL, "t"));
    assert_true(has_name(f->writes, f->n_writes, NULL, "log"));

    f = cls("SELECT * INTO newt FROM t");
    assert_true(has_name(f->writes, f->n_writes, NULL, "newt"));

    /* REFRESH MATERIALIZED VIEW writes the view (the result cache keys
     * reads of it on its name); EXECUTE and COMMIT PREPARED run writes
     * pgscale does not see: anything. */
    f = cls("REFRESH MATERIALIZED VIEW CONCURRENTLY s.mv");
    assert_int_equal(f->n_writes, 1);
    assert_true(has_name(f->writes, f->n_writes, "s", "mv"));
    assert_int_equal(f->n_reads, 0);
    assert_false(f->flags & PGS_FACT_WRITES_OVERFLOW);
    f = cls("EXECUTE ins(1)");
    assert_true(f->flags & PGS_FACT_WRITES_OVERFLOW);
    f = cls("COMMIT PREPARED 'tx1'");
    assert_true(f->flags & PGS_FACT_WRITES_OVERFLOW);
    /* CTE names are not tables read, where they are in scope only */
    f = cls("WITH x AS (SELECT * FROM t) SELECT * FROM x JOIN u ON true");
    assert_int_equal(f->n_reads, 2);
    assert_true(has_name(f->reads, f->n_reads, NULL, "t"));
    assert_true(has_name(f->reads, f->n_reads, NULL, "u"));
    assert_true(f->flags & PGS_FACT_CACHEABLE);
    f = cls("WITH x AS (SELECT 1) SELECT * FROM s.x"); /* a schema: a table */
    assert_true(has_name(f->reads, f->n_reads, "s", "x"));
    /* not recursive: inside its own definition, t is the table t */
    f = cls("WITH t AS (SELECT * FROM t WHERE a > 0) SELECT * FROM t");
    assert_int_equal(f->n_reads, 1);
    assert_true(has_name(f->reads, f->n_reads, NULL, "t"));
    /* later CTEs see earlier ones; earlier ones do not see later ones */
    f = cls("WITH a AS (SELECT * FROM b), b AS (SELECT * FROM a) SELECT * FROM b");
    assert_int_equal(f->n_reads, 1);
    assert_true(has_name(f->reads, f->n_reads, NULL, "b")); /* the table b, in a */
    /* recursive: its own name inside is the CTE */
    f = cls("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) "
            "SELECT * FROM r");
    assert_int_equal(f->n_reads, 0);
    /* a CTE in a subquery is not in scope outside it */
    f = cls("SELECT * FROM (WITH t AS (SELECT 1 AS a) SELECT * FROM t) q, t");
    assert_int_equal(f->n_reads, 1);
    assert_true(has_name(f->reads, f->n_reads, NULL, "t"));
    f = cls("SELECT (WITH c AS (SELECT 2) SELECT * FROM c), * FROM c");
    assert_int_equal(f->n_reads, 1);
    assert_true(has_name(f->reads, f->n_reads, NULL, "c"));
    /* in a write: the CTE is read-scope only; the target is the table */
    f = cls("WITH src AS (SELECT * FROM u) INSERT INTO src SELECT * FROM src");
    assert_int_equal(f->n_reads, 1);
    assert_true(has_name(f->reads, f->n_reads, NULL, "u"));
    assert_true(has_name(f->writes, f->n_writes, NULL, "src"));
    /* quoted and unquoted names are told apart as PostgreSQL does */
    f = cls("WITH \"X\" AS (SELECT 1) SELECT * FROM x");
    assert_true(has_name(f->reads, f->n_reads, NULL, "x"));
    f = cls("WITH X AS (SELECT 1) SELECT * FROM x");
    assert_int_equal(f->n_reads, 0);
    f = cls("VACUUM ANALYZE t");
    assert_false(f->flags & PGS_FACT_WRITES_OVERFLOW);
    assert_int_equal(f->n_writes, 0);
    assert_true(has_name(f->reads, f->n_reads, NULL, "t"));

    f = cls("COPY app.t FROM STDIN");
    assert_int_equal(f->n_writes, 1);
    assert_true(has_name(f->writes, f->n_writes, "app", "t"));
    assert_int_equal(f->n_reads, 0);

    f = cls("TRUNCATE a, b");
    assert_int_equal(f->n_writes, 2);

    f = cls("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE");
    assert_true(has_name(f->writes, f->n_writes, NULL, "t"));
    assert_true(has_name(f->reads, f->n_reads, NULL, "u"));

    f = cls("SELECT a FROM t WHERE id = $1");
    assert_int_equal(f->flags & OVERFLOWS, 0);
}

static void test_function_names(void **state)
{
    (void)state;
    const pgs_stmt_facts *f =
        cls("SELECT lower(a), pg_catalog.upper(b), \"My_Func\"(), lower(c) FROM t");
    assert_int_equal(f->n_funcs, 3);
    assert_true(has_name(f->funcs, f->n_funcs, NULL, "lower"));
    assert_true(has_name(f->funcs, f->n_funcs, "pg_catalog", "upper"));
    assert_true(has_name(f->funcs, f->n_funcs, NULL, "My_Func"));
    assert_true(f->flags & C);
}

/* DDL, CALL, DO and volatile functions may write tables the text does not
 * name: the write list is then marked incomplete. */
static void test_unknown_writes_overflow(void **state)
{
    (void)state;
    static const char *const texts[] = {
        "ALTER TABLE t ADD COLUMN b int", "DROP TABLE t", "CALL p()",
        "DO $$ BEGIN END $$", "SELECT my_volatile()", "SELEC 1",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        if (!(cls(texts[i])->flags & PGS_FACT_WRITES_OVERFLOW))
            fail_msg("%s: WRITES_OVERFLOW not set", texts[i]);
    assert_false(cls("DELETE FROM t")->flags & PGS_FACT_WRITES_OVERFLOW);
}

static void test_name_lists_are_bounded(void **state)
{
    (void)state;
    char sql[4096];
    size_t n = (size_t)snprintf(sql, sizeof(sql), "SELECT 1 FROM t0");
    for (int i = 1; i < 40; i++) n += (size_t)snprintf(sql + n, sizeof(sql) - n, ", t%d", i);
    const pgs_stmt_facts *f = cls(sql);
    assert_int_equal(f->n_reads, PGS_CLASSIFY_NAMES);
    assert_true(f->flags & PGS_FACT_READS_OVERFLOW);
    assert_true(f->flags & R);

    n = (size_t)snprintf(sql, sizeof(sql), "SELECT f0()");
    for (int i = 1; i < 40; i++) n += (size_t)snprintf(sql + n, sizeof(sql) - n, ", f%d()", i);
    f = cls(sql);
    assert_int_equal(f->n_funcs, PGS_CLASSIFY_NAMES);
    assert_true(f->flags & PGS_FACT_FUNCS_OVERFLOW);
    assert_true(f->flags & W); /* unknown functions */

    n = (size_t)snprintf(sql, sizeof(sql), "TRUNCATE w0");
    for (int i = 1; i < 33; i++) n += (size_t)snprintf(sql + n, sizeof(sql) - n, ", w%d", i);
    f = cls(sql);
    assert_int_equal(f->n_writes, PGS_CLASSIFY_NAMES);
    assert_true(f->flags & PGS_FACT_WRITES_OVERFLOW);
}

/* Texts past the cache's limit are classified every time, not stored; a
 * very long read is still a read. */
static void test_long_texts(void **state)
{
    (void)state;
    size_t cap = 200 * 1024;
    char *sql = malloc(cap);
    assert_non_null(sql);
    size_t n = (size_t)snprintf(sql, cap, "SELECT * FROM t WHERE id IN (0");
    for (int i = 1; n + 16 < cap && i < 30000; i++)
        n += (size_t)snprintf(sql + n, cap - n, ", %d", i);
    n += (size_t)snprintf(sql + n, cap - n, ")");
    assert_true(n > PGS_CLASSIFY_CACHE_TEXT_MAX);

    pgs_classify_cache *c = classify_cache_new(16, 1 << 20);
    const pgs_stmt_facts *f = classify_n(c, sql, n);
    assert_int_equal(f->flags & ~OVERFLOWS, R | C);
    f = classify_n(c, sql, n);
    assert_int_equal(f->flags & ~OVERFLOWS, R | C);
    pgs_classify_stats st;
    classify_cache_stats(c, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.hits, 0);

    /* The same text with a write at the end. */
    n += (size_t)snprintf(sql + n, cap - n, "; DELETE FROM t");
    f = classify_n(c, sql, n);
    assert_int_equal(f->flags & ~OVERFLOWS, W | M);
    classify_cache_free(c);
    free(sql);
}

/* A tree deeper than the walk will follow is not judged a read. */
static char *nested(const char *open, const char *close, int depth, size_t *len)
{
    size_t lo = strlen(open), lc = strlen(close);
    size_t cap = (size_t)depth * (lo + lc) + 64, n = 0;
    char *sql = malloc(cap);
    assert_non_null(sql);
    n += (size_t)snprintf(sql, cap, "SELECT ");
    for (int i = 0; i < depth; i++, n += lo) memcpy(sql + n, open, lo);
    sql[n++] = '1';
    for (int i = 0; i < depth; i++, n += lc) memcpy(sql + n, close, lc);
    *len = n;
    return sql;
}

static void test_deep_nesting(void **state)
{
    (void)state;
    size_t n;
    /* 1+(1+(1+...)): an expression tree deeper than the walk follows. */
    char *sql = nested("1+(", ")", 1500, &n);
    const pgs_stmt_facts *f = classify_n(cache, sql, n);
    assert_int_equal(f->flags & (R | W | PE), W);
    assert_true(f->flags & PGS_FACT_READS_OVERFLOW);
    free(sql);

    /* Well nested but within bounds: still judged. */
    sql = nested("abs(", ")", 100, &n);
    f = classify_n(cache, sql, n);
    assert_int_equal(f->flags & ~OVERFLOWS, R | C);
    free(sql);

    /* Past the parser's own stack limit: a parse error, not a crash. */
    sql = nested("(", ")", 20000, &n);
    f = classify_n(cache, sql, n);
    assert_int_equal(f->flags & (R | W | PE), W | PE);
    free(sql);
}

/* ---- the parse cache ------------------------------------------------------- */

static void test_cache_hit_returns_same_facts(void **state)
{
    (void)state;
    pgs_classify_cache *c = classify_cache_new(16, 1 << 16);
    const pgs_stmt_facts *a = classify_n(c, "SELECT * FROM t WHERE id = $1", 29);
    const pgs_stmt_facts *b = classify_n(c, "SELECT * FROM t WHERE id = $1", 29);
    assert_ptr_equal(a, b);
    const pgs_stmt_facts *d = classify_n(c, "SELECT * FROM t WHERE id = $2", 29);
    assert_ptr_not_equal(a, d);
    pgs_classify_stats st;
    classify_cache_stats(c, &st);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.entries, 2);
    /* A prefix of a cached text is a different text. */
    assert_int_equal(classify_n(c, "SELECT * FROM t WHERE id = $1", 14)->flags & PE, PE);
    classify_cache_free(c);
}

static void test_cache_evicts_least_recently_used(void **state)
{
    (void)state;
    pgs_classify_cache *c = classify_cache_new(3, 1 << 20);
    cls("SELECT 1"); /* warm libpg_query on this thread; unrelated cache */
    classify_n(c, "SELECT c1", 9);
    classify_n(c, "SELECT c2", 9);
    classify_n(c, "SELECT c3", 9);
    classify_n(c, "SELECT c1", 9); /* now the most recent */
    classify_n(c, "SELECT c4", 9); /* evicts SELECT 2 */
    classify_n(c, "SELECT c5", 9); /* evicts SELECT 3 */
    pgs_classify_stats st;
    classify_cache_stats(c, &st);
    assert_int_equal(st.entries, 3);
    assert_int_equal(st.evictions, 2);
    uint64_t hits = st.hits;
    classify_n(c, "SELECT c1", 9);
    classify_cache_stats(c, &st);
    assert_int_equal(st.hits, hits + 1);
    classify_n(c, "SELECT c2", 9);
    classify_cache_stats(c, &st);
    assert_int_equal(st.hits, hits + 1); /* it had gone */
    classify_cache_free(c);
}

/* Texts that differ only in their literals share one cache entry (an
 * application inlining its values would otherwise parse every statement);
 * what decides the facts is kept apart. */
static void test_cache_key_masks_literals(void **state)
{
    (void)state;
    pgs_classify_cache *c = classify_cache_new(64, 1 << 20);
    static const char *const same[][2] = {
        {"SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id = 42"},
        {"SELECT * FROM t WHERE id = 1.5e3", "SELECT * FROM t WHERE id = .25"},
        {"SELECT * FROM t WHERE name = 'a'", "SELECT * FROM t WHERE name = 'it''s'"},
        {"SELECT * FROM t WHERE name = E'a\\'b'", "SELECT * FROM t WHERE name = E'x'"},
        {"INSERT INTO t VALUES (1, 'x')", "INSERT INTO t VALUES (2, 'yy')"},
        {"SELECT c1 FROM t2 LIMIT 10", "SELECT c1 FROM t2 LIMIT 20"},
    };
    for (size_t i = 0; i < PGS_ARRAY_LEN(same); i++) {
        const pgs_stmt_facts *a = classify_n(c, same[i][0], strlen(same[i][0]));
        uint32_t fa = a->flags;
        pgs_classify_stats st0, st1;
        classify_cache_stats(c, &st0);
        const pgs_stmt_facts *b = classify_n(c, same[i][1], strlen(same[i][1]));
        classify_cache_stats(c, &st1);
        if (st1.hits != st0.hits + 1) fail_msg("'%s' did not share '%s''s entry", same[i][1], same[i][0]);
        assert_int_equal(b->flags, fa);
    }
    /* kept apart: names, parameters, quoted identifiers, hints, the
     * read-only settings, and texts the short scan cannot be sure of */
    static const char *const apart[][2] = {
        {"SELECT * FROM t1", "SELECT * FROM t2"},
        {"SELECT * FROM t WHERE id = $1", "SELECT * FROM t WHERE id = $2"},
        {"SELECT * FROM \"t 1\"", "SELECT * FROM \"t 2\""},
        {"SELECT 1", "/* pgscale:primary */ SELECT 1"},
        {"SET default_transaction_read_only = 'on'", "SET default_transaction_read_only = 'off'"},
        {"SELECT 'a\\' FROM t", "SELECT 'b\\' FROM t"},
        {"SELECT $$a$$", "SELECT $$b$$"},
        {"SELECT 'unterminated", "SELECT 'unterminatee"},
    };
    for (size_t i = 0; i < PGS_ARRAY_LEN(apart); i++) {
        classify_n(c, apart[i][0], strlen(apart[i][0]));
        pgs_classify_stats st0, st1;
        classify_cache_stats(c, &st0);
        classify_n(c, apart[i][1], strlen(apart[i][1]));
        classify_cache_stats(c, &st1);
        if (st1.hits != st0.hits) fail_msg("'%s' took '%s''s entry", apart[i][1], apart[i][0]);
    }
    assert_int_equal(classify_n(c, "SET default_transaction_read_only = 'on'", 40)->flags &
                         PGS_FACT_SET_TX_READ_ONLY,
                     PGS_FACT_SET_TX_READ_ONLY);
    assert_int_equal(classify_n(c, "SET default_transaction_read_only = 'off'", 41)->flags &
                         PGS_FACT_SET_TX_READ_ONLY,
                     0);
    assert_true(classify_n(c, "/* pgscale:primary */ SELECT 2", 30)->flags &
                PGS_FACT_HINT_PRIMARY);
    classify_cache_free(c);
}

static void test_cache_bounded_by_bytes(void **state)
{
    (void)state;
    size_t max_bytes = 2000;
    pgs_classify_cache *c = classify_cache_new(1000, max_bytes);
    char sql[128];
    for (int i = 0; i < 200; i++) {
        int n = snprintf(sql, sizeof(sql), "SELECT a, b, c FROM table_%d WHERE id = %d", i, i);
        const pgs_stmt_facts *f = classify_n(c, sql, (size_t)n);
        assert_true(f->flags & R);
        pgs_classify_stats st;
        classify_cache_stats(c, &st);
        assert_true(st.bytes <= max_bytes);
    }
    pgs_classify_stats st;
    classify_cache_stats(c, &st);
    assert_true(st.entries > 1);
    assert_true(st.entries < 200);
    assert_int_equal(st.evictions, 200 - st.entries);

    /* An entry larger than the whole budget is classified, not stored. */
    char big[1500];
    int n = snprintf(big, sizeof(big), "SELECT 1 FROM t WHERE a IN (%0*d)", 1400, 7);
    const pgs_stmt_facts *f = classify_n(c, big, (size_t)n);
    assert_true(f->flags & R);
    classify_cache_stats(c, &st);
    assert_true(st.bytes <= max_bytes);
    classify_cache_free(c);

    /* A cache of no entries classifies all the same. */
    c = classify_cache_new(0, 0);
    assert_true(classify_n(c, "SELECT 1", 8)->flags & R);
    assert_true(classify_n(c, "DELETE FROM t", 13)->flags & W);
    classify_cache_free(c);
}

static void test_cache_recomputes_after_volatility_reload(void **state)
{
    (void)state;
    pgs_classify_cache *c = classify_cache_new(16, 1 << 16);
    const char *sql = "SELECT fresh_func(a) FROM t";
    const pgs_stmt_facts *f = classify_n(c, sql, strlen(sql));
    assert_int_equal(f->flags & (R | W), W);
    uint64_t gen1 = f->generation;

    /* CREATE FUNCTION fresh_func ... IMMUTABLE; the caller reloads. */
    pgs_proc_row rows[sizeof(test_procs) / sizeof(test_procs[0]) + 1];
    memcpy(rows, test_procs, sizeof(test_procs));
    rows[sizeof(test_procs) / sizeof(test_procs[0])] = (pgs_proc_row){"public", "fresh_func", 'i'};
    uint64_t gen2 = classify_volatility_publish(rows, sizeof(rows) / sizeof(rows[0]));
    assert_true(gen2 > gen1);
    assert_int_equal(classify_volatility_generation(), gen2);

    f = classify_n(c, sql, strlen(sql));
    assert_int_equal(f->flags & ~OVERFLOWS, R | C);
    assert_int_equal(f->generation, gen2);
    pgs_classify_stats st;
    classify_cache_stats(c, &st);
    assert_int_equal(st.stale, 1);
    assert_int_equal(st.entries, 1);

    /* ALTER FUNCTION fresh_func VOLATILE; reload again. */
    rows[sizeof(test_procs) / sizeof(test_procs[0])].volatility = 'v';
    classify_volatility_publish(rows, sizeof(rows) / sizeof(rows[0]));
    assert_int_equal(classify_n(c, sql, strlen(sql))->flags & (R | W | V), W | V);
    classify_cache_free(c);

    /* Back to the corpus table for the tests after this one. */
    corpus_gen = classify_volatility_publish(test_procs, sizeof(test_procs) / sizeof(test_procs[0]));
}

/* ---- threads --------------------------------------------------------------- */

static const corpus_case thread_cases[] = {
    {"SELECT * FROM users WHERE id = $1", R | C},
    {"SELECT now()", R | S},
    {"INSERT INTO t VALUES (1)", W},
    {"SELECT nextval('s')", W | V},
    {"WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", W},
    {"BEGIN READ ONLY", R | TB | TRO},
    {"SELEC 1", W | PE},
    {"SELECT * FROM t FOR UPDATE", W},
};

typedef struct thread_arg {
    int rounds;
    int errors;
} thread_arg;

static void *classify_thread(void *p)
{
    thread_arg *a = p;
    /* Its own small cache, so misses (parses) keep happening alongside the
     * other thread's. */
    pgs_classify_cache *c = classify_cache_new(4, 1 << 16);
    char sql[128];
    for (int r = 0; r < a->rounds; r++) {
        for (size_t i = 0; i < sizeof(thread_cases) / sizeof(thread_cases[0]); i++) {
            const pgs_stmt_facts *f =
                classify(c, thread_cases[i].sql, strlen(thread_cases[i].sql));
            if ((f->flags & ~OVERFLOWS) != thread_cases[i].want) a->errors++;
        }
        int n = snprintf(sql, sizeof(sql), "SELECT a FROM t%d WHERE b = %d", r, r);
        const pgs_stmt_facts *f = classify(c, sql, (size_t)n);
        if (f->n_reads != 1 || !(f->flags & R)) a->errors++;
    }
    classify_cache_free(c);
    return NULL;
}

static void test_two_threads_each_with_a_cache(void **state)
{
    (void)state;
    pthread_t th[2];
    thread_arg args[2] = {{.rounds = 300}, {.rounds = 300}};
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, classify_thread, &args[i]), 0);
    /* Meanwhile, reloads: the workers pick the new tables up without a
     * lock on their hot path, and the old ones are freed when released. */
    for (int i = 0; i < 20; i++)
        classify_volatility_publish(test_procs, sizeof(test_procs) / sizeof(test_procs[0]));
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(args[0].errors, 0);
    assert_int_equal(args[1].errors, 0);
}

static int teardown_all(void **state)
{
    (void)state;
    classify_shutdown();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* First: nothing has been published yet. */
        cmocka_unit_test(test_builtin_list_before_load),
        cmocka_unit_test_setup_teardown(test_reads, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_stable_reads, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_explain, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_dml_and_locking, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_functions_not_reads, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_transactions, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_session_and_utility, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_ddl, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_hints, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_cache_hints, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_cache_hint_ttl, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_fingerprint, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_multi_statement, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_parse_errors, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_table_names, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_function_names, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_unknown_writes_overflow, setup_corpus,
                                        teardown_corpus),
        cmocka_unit_test_setup_teardown(test_name_lists_are_bounded, setup_corpus,
                                        teardown_corpus),
        cmocka_unit_test_setup_teardown(test_long_texts, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_deep_nesting, setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_cache_hit_returns_same_facts, setup_corpus,
                                        teardown_corpus),
        cmocka_unit_test_setup_teardown(test_cache_evicts_least_recently_used, setup_corpus,
                                        teardown_corpus),
        cmocka_unit_test_setup_teardown(test_cache_key_masks_literals, setup_corpus,
                                        teardown_corpus),
        cmocka_unit_test_setup_teardown(test_cache_bounded_by_bytes, setup_corpus,
                                        teardown_corpus),
        cmocka_unit_test_setup_teardown(test_cache_recomputes_after_volatility_reload,
                                        setup_corpus, teardown_corpus),
        cmocka_unit_test_setup_teardown(test_two_threads_each_with_a_cache, setup_corpus,
                                        teardown_corpus),
    };
    return cmocka_run_group_tests(tests, NULL, teardown_all);
}
