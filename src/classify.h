/* The statement classifier: what a SQL text does, as far as its parse tree
 * (libpg_query) proves it -- a read a replica may answer, a write, a
 * transaction boundary, a result a cache may keep -- and which tables and
 * functions it names.  Each worker owns a parse cache so that a distinct
 * text is parsed once.  No I/O on the data path; the one function that
 * talks to PostgreSQL (classify_volatility_load) runs off it. */
#ifndef PGS_CLASSIFY_H
#define PGS_CLASSIFY_H

#include "common.h"

/* Facts about a text; for several statements, their union (one write makes
 * the whole text a write).  Exactly one of READ and WRITE is set. */
enum {
    /* Provably read-only, runnable on a standby: SELECT, VALUES, TABLE,
     * SHOW, EXPLAIN [ANALYZE] of such, with no data-modifying CTE, no
     * FOR UPDATE/SHARE/NO KEY UPDATE/KEY SHARE, no SELECT INTO and no
     * function anywhere that is volatile or unknown (docs/routing.md has
     * the whole list).  Transaction control a standby accepts (BEGIN READ ONLY,
     * COMMIT, ROLLBACK, SAVEPOINT, RELEASE) also counts as READ: inside a
     * transaction the caller routes by the transaction, not by these. */
    PGS_FACT_READ = 1u << 0,
    PGS_FACT_WRITE = 1u << 1, /* everything else, parse errors included */
    PGS_FACT_TXN_BEGIN = 1u << 2,           /* BEGIN / START TRANSACTION */
    PGS_FACT_TXN_BEGIN_READ_ONLY = 1u << 3, /* ... READ ONLY */
    /* COMMIT, END, ROLLBACK, ABORT (AND CHAIN too: see TXN_CHAIN), PREPARE
     * TRANSACTION: the session's transaction is over. */
    PGS_FACT_TXN_END = 1u << 4,
    /* SET TRANSACTION READ ONLY, SET SESSION CHARACTERISTICS AS
     * TRANSACTION READ ONLY, SET default_transaction_read_only = on/true. */
    PGS_FACT_SET_TX_READ_ONLY = 1u << 5,
    /* CREATE/ALTER/DROP of anything (and RENAME, COMMENT, GRANT, rules,
     * views, indexes): function volatility may have changed, reload it. */
    PGS_FACT_DDL = 1u << 6,
    PGS_FACT_HINT_PRIMARY = 1u << 7, /* a comment holds "pgscale:primary" */
    PGS_FACT_USES_STABLE = 1u << 8,  /* calls a stable function (now(), current_user) */
    /* A READ whose result depends only on the tables it reads: one SELECT
     * or VALUES calling only immutable functions, reading no system
     * catalog or view (pg_*, information_schema). */
    PGS_FACT_CACHEABLE = 1u << 9,
    PGS_FACT_PARSE_ERROR = 1u << 10, /* does not parse: the primary reports why */
    PGS_FACT_MULTI = 1u << 11,       /* more than one statement */
    /* A volatile or unknown function is called: not a read, and it may
     * write tables the text does not name (so WRITES_OVERFLOW is set). */
    PGS_FACT_USES_VOLATILE = 1u << 12,
    /* The lists below are incomplete: more names than PGS_CLASSIFY_NAMES,
     * or (writes) the statement may write tables it does not name (DDL,
     * CALL, DO, a volatile function, a parse error).  Treat as "every
     * table". */
    PGS_FACT_READS_OVERFLOW = 1u << 13,
    PGS_FACT_WRITES_OVERFLOW = 1u << 14,
    PGS_FACT_FUNCS_OVERFLOW = 1u << 15,
    /* COMMIT AND CHAIN / ROLLBACK AND CHAIN: a new transaction with the
     * same characteristics starts at once on the same server. */
    PGS_FACT_TXN_CHAIN = 1u << 16,
    /* BEGIN/START/SET TRANSACTION ... ISOLATION LEVEL SERIALIZABLE: a
     * standby refuses serializable transactions, so such a BEGIN is not a
     * READ even when it says READ ONLY (TXN_BEGIN_READ_ONLY is still set:
     * it reports what the text says). */
    PGS_FACT_TXN_SERIALIZABLE = 1u << 17,
    /* Creates session state that cannot move between server connections
     * (temporary table, SELECT INTO TEMP, LISTEN, DECLARE CURSOR,
     * PREPARE). */
    PGS_FACT_SESSION_STATE = 1u << 18,
    /* A comment holds "pgscale:cache" (optionally "pgscale:cache ttl=60s",
     * the TTL in hint_ttl_ms): the application asks for its answer to be
     * cached.  It never makes a statement cacheable that is not CACHEABLE
     * (cacherule.h).  A ttl= that is not a duration voids the hint. */
    PGS_FACT_HINT_CACHE = 1u << 19,
    /* A comment holds "pgscale:nocache" (or "pgscale:cache ttl=0"): never
     * cache this statement's answer; wins over everything else. */
    PGS_FACT_HINT_NOCACHE = 1u << 20,
};

/* How many table names read, written, and function names each list keeps. */
#define PGS_CLASSIFY_NAMES 32

/* A name as written: lower-cased unless it was quoted; schema is NULL when
 * the text did not qualify the name (a catalog part, db.schema.name, is
 * dropped: it can only be the current database). */
typedef struct pgs_name {
    const char *schema;
    const char *name;
} pgs_name;

typedef struct pgs_stmt_facts {
    uint32_t flags;
    uint8_t n_reads, n_writes, n_funcs;
    /* HINT_CACHE's ttl= in milliseconds; 0 when the hint gave none. */
    uint32_t hint_ttl_ms;
    /* The volatility table generation the facts were computed with. */
    uint64_t generation;
    /* pg_query_fingerprint of the text (constants, comments and layout do
     * not change it), computed once when the text is parsed, so a parse
     * cache hit costs nothing more; 0 when the text does not parse. */
    uint64_t fingerprint;
    const pgs_name *reads;  /* tables (and views, CTE names) read */
    const pgs_name *writes; /* tables written: INSERT/UPDATE/DELETE/MERGE/COPY FROM targets,
                               SELECT INTO and TRUNCATE */
    const pgs_name *funcs;  /* functions called */
} pgs_stmt_facts;

typedef struct pgs_classify_cache pgs_classify_cache;

/* A parse cache for one thread: nothing in it is locked, so each worker
 * owns its own.  Bounded by max_entries and max_bytes (texts, names and
 * facts); the least recently used entries go first. */
pgs_classify_cache *classify_cache_new(size_t max_entries, size_t max_bytes);
void classify_cache_free(pgs_classify_cache *c);

/* Texts longer than this are classified on every call, never cached. */
#define PGS_CLASSIFY_CACHE_TEXT_MAX (16 * 1024)

/* The facts of sql[0..len) (any bytes; NUL-terminated or not).  The result
 * belongs to the cache and stays valid until the next classify() on it or
 * classify_cache_free.  Never NULL. */
const pgs_stmt_facts *classify(pgs_classify_cache *c, const char *sql, size_t len);

typedef struct pgs_classify_stats {
    uint64_t hits, misses, evictions, stale; /* stale: recomputed after a volatility reload */
    size_t entries, bytes;
} pgs_classify_stats;
void classify_cache_stats(const pgs_classify_cache *c, pgs_classify_stats *out);

/* ---- function volatility ----------------------------------------------
 *
 * One process-wide, immutable table of (schema, name, provolatile) rows.
 * Until one is loaded, a built-in list of common pg_catalog functions is
 * used; a loaded table replaces that list entirely.  Publishing is atomic:
 * classify() on any thread picks the new table up at its next call (with
 * one mutex acquisition then, none on the calls after), and cached facts
 * computed with an older table are recomputed. */

typedef struct pgs_proc_row {
    const char *schema;
    const char *name;
    char volatility; /* 'i', 's' or 'v' */
} pgs_proc_row;

/* Builds a table from rows and publishes it.  Returns the new generation. */
uint64_t classify_volatility_publish(const pgs_proc_row *rows, size_t n);

typedef struct pg_conn PGconn;

/* Runs the pg_proc query on conn (libpq, blocking: not on the data path)
 * and publishes the table.  0, or a negative code with the reason in err. */
PGS_MUSTCHECK int classify_volatility_load(PGconn *conn, char *err, size_t errlen);

/* The generation published last (0: the built-in list). */
uint64_t classify_volatility_generation(void);

/* Volatility of a function as classify() judges it: 'i', 's', 'v', or 0
 * for unknown.  schema NULL means the name was not qualified. */
char classify_function_volatility(const char *schema, const char *name);

/* Frees the published table, at exit only (so that leak checkers stay
 * quiet): classify() after it falls back to the built-in list. */
void classify_shutdown(void);

#endif
