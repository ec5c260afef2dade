/* relcat: the relation catalog -- relations of the ordinary schemas with
 * their views' base relations, inheritance and partition families,
 * cascading foreign keys, triggers and rules, loaded from the primary and
 * published immutable -- and the expansion of a statement's table names
 * into the table ids the result cache versions.  It keeps no versions and
 * caches nothing itself. */
#include "relcat.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "classify.h"
#include "htab.h"

/* Adjacency lists kept per relation. */
enum { ADJ_CHILDREN, ADJ_PARENTS, ADJ_VIEW_READS, ADJ_FK_WRITES, ADJ_KINDS };

typedef struct rel {
    relcat_rel r; /* strings point into the catalog's arena */
    uint64_t id;
    htab_node by_name; /* hash: pgs_hash64 of the exact name */
    /* linked to a relation the load left out (a system catalog, a
     * sequence, one past the cap, another session's temporary table) */
    bool incomplete;
    uint32_t adj_first[ADJ_KINDS], adj_n[ADJ_KINDS];
} rel;

struct pgs_relcat {
    int refs; /* atomic: refs holding it, plus one while published */
    uint64_t generation;
    uint64_t stale_seen;
    bool truncated;
    bool all_unknown; /* the links were cut: nothing can be trusted */
    rel *rels;        /* by oid */
    size_t n_rels;
    uint32_t *adj; /* indexes into rels */
    htab names;
    char *strings;
};

/* relcat_mark_stale's count; a catalog is trusted only when it was loaded
 * after the last mark. */
static uint64_t stale_count; /* atomic */

/* ---------------------------------------------------------------------------
 * Building
 * ------------------------------------------------------------------------- */

static int cmp_rel_oid(const void *a, const void *b)
{
    uint32_t x = ((const relcat_rel *)a)->oid, y = ((const relcat_rel *)b)->oid;
    return x < y ? -1 : x > y;
}

static rel *find_oid(const pgs_relcat *c, uint32_t oid)
{
    size_t lo = 0, hi = c->n_rels;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->rels[mid].r.oid < oid) lo = mid + 1;
        else if (c->rels[mid].r.oid > oid) hi = mid;
        else return &c->rels[mid];
    }
    return NULL;
}

/* Which adjacency lists a link adds to: (from, kind) pairs, at most two. */
static int link_ends(const relcat_link *l, rel *a, rel *b, rel **from, int *kind, uint32_t *to,
                     const pgs_relcat *c)
{
    uint32_t ia = (uint32_t)(a - c->rels), ib = (uint32_t)(b - c->rels);
    switch (l->kind) {
    case RELCAT_LINK_INHERITS:
        from[0] = a, kind[0] = ADJ_CHILDREN, to[0] = ib;
        from[1] = b, kind[1] = ADJ_PARENTS, to[1] = ia;
        return 2;
    case RELCAT_LINK_VIEW_READS:
        from[0] = a, kind[0] = ADJ_VIEW_READS, to[0] = ib;
        return 1;
    case RELCAT_LINK_FK_WRITES:
        from[0] = a, kind[0] = ADJ_FK_WRITES, to[0] = ib;
        return 1;
    default:
        return 0;
    }
}

static pgs_relcat *build(const relcat_input *in, uint64_t generation)
{
    pgs_relcat *c = pgs_xcalloc(1, sizeof(*c));
    c->refs = 1;
    c->generation = generation;
    c->stale_seen = in->stale_seen;
    size_t max_rels = in->max_rels ? in->max_rels : RELCAT_MAX_RELS;
    size_t max_links = in->max_links ? in->max_links : RELCAT_MAX_LINKS;

    relcat_rel *sorted = pgs_xcalloc(in->n_rels + 1, sizeof(*sorted));
    if (in->n_rels) memcpy(sorted, in->rels, in->n_rels * sizeof(*sorted));
    qsort(sorted, in->n_rels, sizeof(*sorted), cmp_rel_oid);
    size_t n = in->n_rels;
    if (n > max_rels) {
        n = max_rels;
        c->truncated = true;
    }
    if (in->n_links > max_links) {
        c->truncated = true;
        c->all_unknown = true;
    }

    size_t bytes = 1;
    for (size_t i = 0; i < n; i++)
        bytes += strlen(sorted[i].schema) + strlen(sorted[i].name) + 2;
    c->strings = pgs_xmalloc(bytes);
    c->rels = pgs_xcalloc(n + 1, sizeof(rel));
    htab_init(&c->names, 1024);
    char *arena = c->strings;
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        /* the same oid twice: keep the first */
        if (kept && c->rels[kept - 1].r.oid == sorted[i].oid) continue;
        rel *r = &c->rels[kept++];
        r->r = sorted[i];
        size_t sl = strlen(sorted[i].schema) + 1, nl = strlen(sorted[i].name) + 1;
        memcpy(arena, sorted[i].schema, sl);
        r->r.schema = arena;
        arena += sl;
        memcpy(arena, sorted[i].name, nl);
        r->r.name = arena;
        arena += nl;
        r->id = relcat_table_id(r->r.name);
    }
    c->n_rels = kept;
    free(sorted);
    /* after every rels[] entry is in place: the nodes point into it */
    for (size_t i = 0; i < kept; i++) {
        rel *r = &c->rels[i];
        r->by_name.hash = pgs_hash64(r->r.name, strlen(r->r.name));
        htab_insert(&c->names, &r->by_name);
    }

    /* Two passes over the links: count per (relation, kind), then fill. */
    size_t n_links = c->all_unknown ? 0 : in->n_links;
    size_t n_adj = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            c->adj = pgs_xcalloc(n_adj + 1, sizeof(uint32_t));
            uint32_t at = 0;
            for (size_t i = 0; i < c->n_rels; i++)
                for (int k = 0; k < ADJ_KINDS; k++) {
                    c->rels[i].adj_first[k] = at;
                    at += c->rels[i].adj_n[k];
                    c->rels[i].adj_n[k] = 0;
                }
        }
        for (size_t i = 0; i < n_links; i++) {
            const relcat_link *l = &in->links[i];
            rel *a = find_oid(c, l->a), *b = find_oid(c, l->b);
            if (!a || !b) {
                /* A relation whose expansion would follow this link is
                 * incomplete: a view whose base was left out, a parent
                 * whose child was, a child whose parent was (its writes
                 * go up), a table whose cascade target was. */
                if (a) a->incomplete = true;
                if (b && l->kind == RELCAT_LINK_INHERITS) b->incomplete = true;
                continue;
            }
            rel *from[2];
            int kind[2];
            uint32_t to[2];
            int m = link_ends(l, a, b, from, kind, to, c);
            for (int j = 0; j < m; j++) {
                if (pass == 0) n_adj++;
                else c->adj[from[j]->adj_first[kind[j]] + from[j]->adj_n[kind[j]]] = to[j];
                from[j]->adj_n[kind[j]]++;
            }
        }
    }
    return c;
}

static void cat_unref(pgs_relcat *c)
{
    if (!c || __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    htab_free(&c->names);
    free(c->rels);
    free(c->adj);
    free(c->strings);
    free(c);
}

/* ---------------------------------------------------------------------------
 * Publishing: classify's volatility table does the same.  Readers compare
 * published_gen (an atomic load, no lock) with the generation their ref
 * holds and take the mutex only when it moved; so a catalog is never freed
 * while a ref can reach it, and the steady state takes no lock.
 * ------------------------------------------------------------------------- */

static pthread_mutex_t cat_lock = PTHREAD_MUTEX_INITIALIZER;
static pgs_relcat *published;
static uint64_t published_gen; /* atomic */

static pgs_relcat *current_locked(void)
{
    if (!published) {
        relcat_input empty = {0};
        published = build(&empty, 0);
    }
    return published;
}

uint64_t relcat_publish(const relcat_input *in)
{
    pthread_mutex_lock(&cat_lock);
    uint64_t gen = __atomic_load_n(&published_gen, __ATOMIC_RELAXED) + 1;
    pgs_relcat *c = build(in, gen);
    pgs_relcat *old = published;
    published = c;
    __atomic_store_n(&published_gen, gen, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&cat_lock);
    cat_unref(old);
    return gen;
}

uint64_t relcat_generation(void)
{
    return __atomic_load_n(&published_gen, __ATOMIC_ACQUIRE);
}

const pgs_relcat *relcat_get(relcat_ref *ref)
{
    if (PGS_LIKELY(ref->cat && __atomic_load_n(&published_gen, __ATOMIC_ACQUIRE) == ref->gen))
        return ref->cat;
    pthread_mutex_lock(&cat_lock);
    pgs_relcat *c = current_locked();
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&cat_lock);
    cat_unref(ref->cat);
    ref->cat = c;
    ref->gen = c->generation;
    return c;
}

void relcat_put(relcat_ref *ref)
{
    cat_unref(ref->cat);
    ref->cat = NULL;
    ref->gen = 0;
}

void relcat_mark_stale(void)
{
    __atomic_add_fetch(&stale_count, 1, __ATOMIC_ACQ_REL);
}

uint64_t relcat_stale_count(void)
{
    return __atomic_load_n(&stale_count, __ATOMIC_ACQUIRE);
}

void relcat_shutdown(void)
{
    pthread_mutex_lock(&cat_lock);
    pgs_relcat *c = published;
    published = NULL;
    pthread_mutex_unlock(&cat_lock);
    cat_unref(c);
}

size_t relcat_count(const pgs_relcat *cat)
{
    return cat->n_rels;
}

const relcat_rel *relcat_rel_at(const pgs_relcat *cat, size_t i)
{
    return i < cat->n_rels ? &cat->rels[i].r : NULL;
}

bool relcat_truncated(const pgs_relcat *cat)
{
    return cat->truncated;
}

/* ---------------------------------------------------------------------------
 * Expansion
 *
 * A walk over the immutable catalog with a bounded visited set on the
 * stack.  A relation is visited downwards (its descendants), upwards (its
 * ancestors) or both; a walk up does not come down again, since a write to
 * one partition changes neither its siblings nor what they return.
 * ------------------------------------------------------------------------- */

enum { DOWN = 1, UP = 2, BOTH = 3 };

#define VISIT_MAX 256

typedef struct walker {
    const pgs_relcat *cat;
    relcat_ids *out;
    bool write;
    unsigned n_vis;
    uint32_t vis[VISIT_MAX];
    uint8_t modes[VISIT_MAX];
} walker;

static void add_id(relcat_ids *out, uint64_t id)
{
    for (unsigned i = 0; i < out->n; i++)
        if (out->ids[i] == id) return;
    if (out->n == RELCAT_IDS_MAX) {
        out->flags |= RELCAT_OVERFLOW;
        return;
    }
    out->ids[out->n++] = id;
}

static void visit(walker *w, uint32_t idx, unsigned mode)
{
    unsigned v = 0;
    while (v < w->n_vis && w->vis[v] != idx) v++;
    unsigned had = v < w->n_vis ? w->modes[v] : 0;
    unsigned need = mode & ~had;
    if (!need) return;
    if (v == w->n_vis) {
        if (w->n_vis == VISIT_MAX) {
            w->out->flags |= RELCAT_OVERFLOW;
            return;
        }
        w->vis[w->n_vis++] = idx;
    }
    w->modes[v] = (uint8_t)(had | need);

    const rel *r = &w->cat->rels[idx];
    const uint32_t *adj = w->cat->adj;
    if (!had) {
        add_id(w->out, r->id);
        if (r->incomplete) w->out->flags |= RELCAT_UNKNOWN;
        if (w->write) {
            if (r->r.flags & RELCAT_REL_SIDE_EFFECTS) w->out->flags |= RELCAT_SIDE_EFFECTS;
        } else {
            if (r->r.relkind == 'f') w->out->flags |= RELCAT_FOREIGN;
            if (r->r.flags & RELCAT_REL_USES_STABLE) w->out->flags |= RELCAT_USES_STABLE;
            if (r->r.flags & RELCAT_REL_USES_VOLATILE) w->out->flags |= RELCAT_USES_VOLATILE;
            if (r->r.flags & RELCAT_REL_READS_SYSTEM) w->out->flags |= RELCAT_UNKNOWN;
        }
    }
    if (need & DOWN)
        for (uint32_t i = 0; i < r->adj_n[ADJ_CHILDREN]; i++)
            visit(w, adj[r->adj_first[ADJ_CHILDREN] + i], DOWN);
    if (need & UP)
        for (uint32_t i = 0; i < r->adj_n[ADJ_PARENTS]; i++)
            visit(w, adj[r->adj_first[ADJ_PARENTS] + i], UP);
    if (had) return;
    /* A materialized view's rows are its own until REFRESH: reading one
     * does not read its base tables.  A plain view's rows are its base
     * relations'; a write through it is a write to them. */
    if (r->r.relkind == 'v')
        for (uint32_t i = 0; i < r->adj_n[ADJ_VIEW_READS]; i++)
            visit(w, adj[r->adj_first[ADJ_VIEW_READS] + i], w->write ? BOTH : DOWN);
    if (w->write)
        for (uint32_t i = 0; i < r->adj_n[ADJ_FK_WRITES]; i++)
            visit(w, adj[r->adj_first[ADJ_FK_WRITES] + i], BOTH);
}

static void expand(const pgs_relcat *cat, const char *schema, const char *name, relcat_ids *out,
                   bool write)
{
    if (!name) {
        out->flags |= RELCAT_UNKNOWN;
        return;
    }
    add_id(out, relcat_table_id(name));
    if (cat->all_unknown || cat->stale_seen != __atomic_load_n(&stale_count, __ATOMIC_ACQUIRE))
        out->flags |= RELCAT_UNKNOWN;
    walker w;
    w.cat = cat;
    w.out = out;
    w.write = write;
    w.n_vis = 0;
    bool found = false;
    uint64_t h = pgs_hash64(name, strlen(name));
    for (htab_node *n = htab_first(&cat->names, h); n; n = n->next) {
        if (n->hash != h) continue;
        const rel *r = htab_entry(n, rel, by_name);
        if (strcmp(r->r.name, name) != 0 || (schema && strcmp(r->r.schema, schema) != 0))
            continue;
        found = true;
        visit(&w, (uint32_t)(r - cat->rels), write ? BOTH : DOWN);
    }
    if (!found) out->flags |= RELCAT_UNKNOWN;
}

void relcat_expand_read(const pgs_relcat *cat, const char *schema, const char *name,
                        relcat_ids *out)
{
    expand(cat, schema, name, out, false);
}

void relcat_expand_write(const pgs_relcat *cat, const char *schema, const char *name,
                         relcat_ids *out)
{
    expand(cat, schema, name, out, true);
}

/* ---------------------------------------------------------------------------
 * Loading
 * ------------------------------------------------------------------------- */

#define ORDINARY_SCHEMA(n)                                                                       \
    n ".nspname NOT IN ('pg_catalog', 'information_schema') AND " n                             \
      ".nspname !~ '^pg_(toast|temp_)'"

/* Triggers that are a foreign key's own are internal; their effect is the
 * 'f' links.  Any other trigger, and any rule but a view's _RETURN, may
 * write tables the statement does not name. */
static const char rels_query[] =
    "SELECT c.oid, n.nspname, c.relname, c.relkind, "
    "(EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid "
    "AND NOT t.tgisinternal) OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w "
    "WHERE w.ev_class = c.oid AND w.rulename <> '_RETURN')), "
    "CASE WHEN c.relkind = 'v' THEN pg_catalog.pg_get_viewdef(c.oid) END "
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND " ORDINARY_SCHEMA("n") " "
    "ORDER BY c.oid LIMIT %zu";

/* A view's _RETURN rule depends on every relation (and column) its
 * definition names. */
static const char links_query[] =
    "SELECT 'v', w.ev_class, d.refobjid FROM pg_catalog.pg_rewrite w "
    "JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass "
    "AND d.objid = w.oid "
    "JOIN pg_catalog.pg_class c ON c.oid = w.ev_class "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE w.rulename = '_RETURN' AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass "
    "AND d.refobjid <> w.ev_class AND " ORDINARY_SCHEMA("n") " "
    "GROUP BY w.ev_class, d.refobjid "
    "UNION ALL SELECT 'i', i.inhparent, i.inhrelid FROM pg_catalog.pg_inherits i "
    "JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid WHERE c.relkind IN ('r', 'p', 'f') "
    "UNION ALL SELECT 'f', k.confrelid, k.conrelid FROM pg_catalog.pg_constraint k "
    "WHERE k.contype = 'f' AND (k.confdeltype IN ('c', 'n', 'd') "
    "OR k.confupdtype IN ('c', 'n', 'd')) "
    "LIMIT %zu";

static bool exec_ok(PGconn *conn, const char *sql, char *err, size_t errlen)
{
    PGresult *r = PQexec(conn, sql);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) snprintf(err, errlen, "%s: %s", sql, PQerrorMessage(conn));
    PQclear(r);
    return ok;
}

static PGresult *query(PGconn *conn, const char *fmt, size_t limit, int cols, char *err,
                       size_t errlen)
{
    char sql[2048];
    snprintf(sql, sizeof(sql), fmt, limit);
    PGresult *r = PQexec(conn, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQnfields(r) != cols) {
        snprintf(err, errlen, "reading the relation catalog failed: %s",
                 PQresultStatus(r) == PGRES_TUPLES_OK ? "unexpected columns"
                                                      : PQerrorMessage(conn));
        PQclear(r);
        return NULL;
    }
    return r;
}

static uint32_t oid_of(const char *s)
{
    return (uint32_t)strtoul(s, NULL, 10);
}

/* A view's definition, as a statement, calls stable or volatile functions:
 * pg_depend does not record built-ins (now(), random()), so the text is
 * classified. */
static unsigned view_flags(pgs_classify_cache *cc, const char *def)
{
    const pgs_stmt_facts *f = classify(cc, def, strlen(def));
    unsigned fl = 0;
    if (!(f->flags & PGS_FACT_READ) || (f->flags & PGS_FACT_USES_VOLATILE))
        fl |= RELCAT_REL_USES_VOLATILE;
    if (f->flags & PGS_FACT_USES_STABLE) fl |= RELCAT_REL_USES_STABLE;
    /* System catalogs are pinned: pg_depend records no link to them, so
     * the text says it (the rule classify's CACHEABLE uses). */
    if (f->flags & PGS_FACT_READS_OVERFLOW) fl |= RELCAT_REL_READS_SYSTEM;
    for (unsigned i = 0; i < f->n_reads; i++) {
        const pgs_name *n = &f->reads[i];
        if (strncmp(n->name, "pg_", 3) == 0 ||
            (n->schema && (strcmp(n->schema, "pg_catalog") == 0 ||
                           strcmp(n->schema, "information_schema") == 0)))
            fl |= RELCAT_REL_READS_SYSTEM;
    }
    return fl;
}

int relcat_load(PGconn *conn, char *err, size_t errlen)
{
    uint64_t stale_seen = relcat_stale_count();
    if (!exec_ok(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", err, errlen))
        return -1;
    PGresult *rr = query(conn, rels_query, (size_t)RELCAT_MAX_RELS + 1, 6, err, errlen);
    PGresult *lr = rr ? query(conn, links_query, (size_t)RELCAT_MAX_LINKS + 1, 3, err, errlen)
                      : NULL;
    char ignored[256];
    (void)exec_ok(conn, "COMMIT", ignored, sizeof(ignored));
    if (!rr || !lr) {
        PQclear(rr);
        return -1;
    }

    size_t n_rels = (size_t)PQntuples(rr), n_links = (size_t)PQntuples(lr);
    relcat_rel *rels = pgs_xcalloc(n_rels + 1, sizeof(*rels));
    relcat_link *links = pgs_xcalloc(n_links + 1, sizeof(*links));
    pgs_classify_cache *cc = classify_cache_new(64, 1u << 20);
    for (size_t i = 0; i < n_rels; i++) {
        int row = (int)i;
        rels[i].oid = oid_of(PQgetvalue(rr, row, 0));
        rels[i].schema = PQgetvalue(rr, row, 1);
        rels[i].name = PQgetvalue(rr, row, 2);
        rels[i].relkind = PQgetvalue(rr, row, 3)[0];
        rels[i].flags = PQgetvalue(rr, row, 4)[0] == 't' ? RELCAT_REL_SIDE_EFFECTS : 0;
        if (rels[i].relkind == 'v' && !PQgetisnull(rr, row, 5))
            rels[i].flags |= view_flags(cc, PQgetvalue(rr, row, 5));
    }
    classify_cache_free(cc);
    for (size_t i = 0; i < n_links; i++) {
        int row = (int)i;
        links[i].kind = PQgetvalue(lr, row, 0)[0];
        links[i].a = oid_of(PQgetvalue(lr, row, 1));
        links[i].b = oid_of(PQgetvalue(lr, row, 2));
    }
    if (n_rels > RELCAT_MAX_RELS)
        log_warn("relation catalog: more than %d relations; those past the first %d (by oid), "
                 "and every view, family or foreign key touching them, count as unknown: "
                 "reads of them are not cached and writes to them invalidate everything",
                 RELCAT_MAX_RELS, RELCAT_MAX_RELS);
    if (n_links > RELCAT_MAX_LINKS)
        log_warn("relation catalog: more than %d view dependencies, inheritance and foreign "
                 "key links; the whole catalog counts as unknown: no read is cached and every "
                 "write invalidates everything",
                 RELCAT_MAX_LINKS);
    relcat_input in = {.rels = rels, .n_rels = n_rels, .links = links, .n_links = n_links,
                       .stale_seen = stale_seen};
    (void)relcat_publish(&in);
    free(rels);
    free(links);
    PQclear(rr);
    PQclear(lr);
    return 0;
}

void relcat_primary_hook(PGconn *conn)
{
    char err[400];
    if (relcat_load(conn, err, sizeof(err)) < 0) {
        relcat_input empty = {.stale_seen = relcat_stale_count()};
        uint64_t gen = relcat_publish(&empty);
        log_warn("could not read the relation catalog from the primary: %s (generation %llu "
                 "is empty: no read is cached, every write invalidates everything, until the "
                 "next load)",
                 err, (unsigned long long)gen);
    } else {
        log_debug("relation catalog loaded from the primary (generation %llu)",
                  (unsigned long long)relcat_generation());
    }
}
