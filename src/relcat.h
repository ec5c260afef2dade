/* The relation catalog: which tables a name read or written by a statement
 * really stands for.  A view reads its base tables, a partitioned table or
 * an inheritance parent is its whole family, a write through a view lands
 * in its base table, a cascading foreign key writes the referencing table,
 * and a trigger or rule may write anything.  The result cache keys its
 * invalidation on table ids; this module turns names into those ids.
 *
 * One process-wide, immutable catalog, loaded from the primary with libpq
 * (relcat_load, off the data path: the monitor's primary hook) and
 * published RCU-style: readers hold a reference and look for a new
 * generation with one atomic load; only when it moved do they take a mutex
 * to swap references.  Expansion allocates nothing and takes no lock. */
#ifndef PGS_RELCAT_H
#define PGS_RELCAT_H

#include "common.h"
#include "tablever.h"

/* The id of a table in the version table: tablever_id (a hash of its
 * bare name, lower-cased; the schema is ignored on purpose, see
 * tablever.h). */
static inline uint64_t relcat_table_id(const char *name)
{
    return tablever_id(NULL, name);
}

/* ---- expansion ------------------------------------------------------- */

/* Room for the ids of one statement (several names may be expanded into
 * one relcat_ids; ids are kept once). */
#define RELCAT_IDS_MAX 64

enum {
    /* A name, or a relation reached from it, the catalog does not know
     * (none loaded yet, a CTE name, a temporary table, a relation created
     * since the load or past the load's cap, a view over a system catalog,
     * a catalog marked stale by relcat_mark_stale). */
    RELCAT_UNKNOWN = 1u << 0,
    /* More ids than RELCAT_IDS_MAX, or a family too large to walk. */
    RELCAT_OVERFLOW = 1u << 1,
    /* Writes: a trigger (not a foreign key's own) or a non-SELECT rule is
     * on a relation written; it may write tables no name says. */
    RELCAT_SIDE_EFFECTS = 1u << 2,
    /* Reads: a view read calls a stable / volatile (or unknown) function;
     * the same meaning as PGS_FACT_USES_STABLE / _USES_VOLATILE of the
     * statement. */
    RELCAT_USES_STABLE = 1u << 3,
    RELCAT_USES_VOLATILE = 1u << 4,
    /* Reads: a foreign table: its rows change where no write is seen. */
    RELCAT_FOREIGN = 1u << 5,
};

/* What a caller must do when one of these flags is set: a read is not
 * cached (RELCAT_USES_STABLE is left to the caller's policy for stable
 * functions); a write bumps every table (the global epoch). */
#define RELCAT_READ_NOCACHE (RELCAT_UNKNOWN | RELCAT_OVERFLOW | RELCAT_USES_VOLATILE | RELCAT_FOREIGN)
#define RELCAT_WRITE_ALL (RELCAT_UNKNOWN | RELCAT_OVERFLOW | RELCAT_SIDE_EFFECTS)

/* Zero it before the first expansion of a statement. */
typedef struct relcat_ids {
    uint64_t ids[RELCAT_IDS_MAX];
    unsigned n;
    unsigned flags;
} relcat_ids;

typedef struct pgs_relcat pgs_relcat;

/* The ids whose versions protect a cached result of a statement reading
 * schema.name (schema NULL: not qualified; then every relation of that
 * name in any schema counts, search_path being unknown here):
 *   - the bare name's id, always (so an unknown name still has one);
 *   - a table, partitioned table or inheritance parent: itself and every
 *     descendant (reading a parent reads its children);
 *   - a view: itself, and the read set of each relation its definition
 *     names, views of views down to tables;
 *   - a materialized view: itself only (its rows change on REFRESH, not
 *     with its base tables).
 * Flags as above.  No allocation, no lock. */
void relcat_expand_read(const pgs_relcat *cat, const char *schema, const char *name,
                        relcat_ids *out);

/* The ids to bump when a statement writes schema.name:
 *   - the relation, its ancestors (a write to a partition changes what
 *     the parent returns) and its descendants (a write through the parent
 *     lands in a child);
 *   - through a view: the view and the write set of each base relation;
 *   - a foreign key with ON DELETE/UPDATE CASCADE, SET NULL or SET DEFAULT
 *     referencing it: the write set of the referencing table.
 * Flags as above. */
void relcat_expand_write(const pgs_relcat *cat, const char *schema, const char *name,
                         relcat_ids *out);

/* ---- the published catalog -------------------------------------------- */

/* A thread's hold on the published catalog.  Zeroed: holds nothing. */
typedef struct relcat_ref {
    pgs_relcat *cat;
    uint64_t gen;
} relcat_ref;

/* The catalog published last (before any load: an empty one, where every
 * name is unknown).  One atomic load when the generation has not moved;
 * a mutex when it has.  Valid until the next relcat_get or relcat_put on
 * the same ref. */
const pgs_relcat *relcat_get(relcat_ref *ref);
void relcat_put(relcat_ref *ref);

/* The generation published last (0: none loaded). */
uint64_t relcat_generation(void);

/* DDL went through (or may have): until a catalog loaded after this call is
 * published, every expansion says RELCAT_UNKNOWN (a view redefined over
 * other tables would otherwise be expanded to its old ones).  Call it when
 * the DDL has committed, beside monitor_rerun_primary_hook(). */
void relcat_mark_stale(void);

/* ---- loading ---------------------------------------------------------- */

/* Caps on what one load keeps (config later).  Past RELCAT_MAX_RELS the
 * relations with the highest oids are left out (unknown), and so is every
 * relation linked to one left out; past RELCAT_MAX_LINKS the whole catalog
 * says unknown.  Either is logged. */
#define RELCAT_MAX_RELS 100000
#define RELCAT_MAX_LINKS 400000

/* One relation as loaded. */
enum {
    RELCAT_REL_SIDE_EFFECTS = 1u << 0, /* has a user trigger or a non-SELECT rule */
    RELCAT_REL_USES_STABLE = 1u << 1,  /* view: its definition calls a stable function */
    RELCAT_REL_USES_VOLATILE = 1u << 2,
    RELCAT_REL_READS_SYSTEM = 1u << 3, /* view: reads a system catalog or view (pg_*) */
};

typedef struct relcat_rel {
    uint32_t oid;
    const char *schema;
    const char *name;
    char relkind; /* pg_class.relkind: r, p, v, m, f */
    unsigned flags;
} relcat_rel;

enum {
    RELCAT_LINK_VIEW_READS = 'v', /* a: view or matview, b: a relation its definition names */
    RELCAT_LINK_INHERITS = 'i',   /* a: parent, b: child (partition or inheritance) */
    RELCAT_LINK_FK_WRITES = 'f',  /* a: referenced table, b: referencing table a cascade writes */
};

typedef struct relcat_link {
    char kind;
    uint32_t a, b;
} relcat_link;

typedef struct relcat_input {
    const relcat_rel *rels;
    size_t n_rels;
    const relcat_link *links;
    size_t n_links;
    /* 0: RELCAT_MAX_RELS / RELCAT_MAX_LINKS (tests set small caps) */
    size_t max_rels, max_links;
    /* the relcat_mark_stale count the rows were read after */
    uint64_t stale_seen;
} relcat_input;

/* Builds a catalog from rows (copied; any order) and publishes it.
 * Returns the new generation. */
uint64_t relcat_publish(const relcat_input *in);

/* The value to put in relcat_input.stale_seen: read it before reading the
 * rows. */
uint64_t relcat_stale_count(void);

typedef struct pg_conn PGconn;

/* Reads every relation of the ordinary schemas (not pg_catalog,
 * information_schema, toast or temporary schemas) with its views'
 * dependencies, inheritance, cascading foreign keys, triggers and rules, in
 * one read-only transaction on conn (libpq, blocking: not on the data
 * path), and publishes the catalog.  Views' definitions are classified for
 * stable and volatile functions, so load the function volatility first.
 * Leaves conn idle.  0, or a negative code with the reason in err. */
PGS_MUSTCHECK int relcat_load(PGconn *conn, char *err, size_t errlen);

/* A monitor primary hook (monitor_set_primary_hook): relcat_load, a
 * warning on failure, and then an empty catalog is published (everything
 * unknown) rather than keeping one that may be stale. */
void relcat_primary_hook(PGconn *conn);

/* For SHOW-style listings and tests: the catalog's relations, i < count. */
size_t relcat_count(const pgs_relcat *cat);
const relcat_rel *relcat_rel_at(const pgs_relcat *cat, size_t i);
/* The catalog was cut at a cap (see above). */
bool relcat_truncated(const pgs_relcat *cat);

/* Drops the published catalog (at exit, for leak checkers). */
void relcat_shutdown(void);

#endif
