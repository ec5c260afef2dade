/* classify: turns a SQL text into facts (read or write, transaction
 * boundaries, cacheability, tables and functions named) from the parse tree
 * libpg_query builds, and keeps them in a per-worker parse cache.  It owns
 * the function volatility table those facts depend on.  It does not route,
 * cache results or touch a connection: callers act on the facts. */
#include "classify.h"

#include <pthread.h>
#include <stdio.h>
#include <ctype.h>
#include <string.h>
#include <strings.h>

#include <libpq-fe.h>
#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include "config.h"
#include "htab.h"
#include "sqlscan.h"

/* ---------------------------------------------------------------------------
 * Function volatility
 *
 * A statement calling a volatile function is not a read: the function may
 * write (a standby refuses that) or depend on state only the primary has.
 * PostgreSQL resolves an unqualified name through search_path, which
 * pgscale does not know per client, so an unqualified name is judged by
 * the worst volatility of every function of that name in any schema; a
 * qualified one by the functions of that schema.  A name the table does not
 * know is treated as volatile.  Both kinds of key live in one table: the
 * any-schema key uses the empty schema name, which PostgreSQL never gives a
 * real schema.
 * ------------------------------------------------------------------------- */

typedef struct vol_entry {
    htab_node node;
    char vol;
    const char *schema; /* "" for the any-schema entry */
    const char *name;
} vol_entry;

typedef struct vol_table {
    int refs; /* atomic: caches holding it, plus one while published */
    uint64_t generation;
    htab map;
    vol_entry *entries;
    size_t n_entries;
    char *strings;
} vol_table;

/* Names that are never reads whatever pg_proc says: they change session or
 * server state (sequences, advisory locks, notifications, settings) or
 * assign a transaction id (txid_current is marked stable yet fails on a
 * standby).  Matched in any schema: a harmless user function of the same
 * name only costs a trip to the primary. */
static const char *const never_read_names[] = {
    "nextval", "setval", "currval", "lastval", "pg_notify", "set_config",
    "txid_current", "pg_current_xact_id",
};
static const char *const never_read_prefixes[] = {"pg_advisory_", "pg_try_advisory_"};

static bool never_read(const char *name)
{
    for (size_t i = 0; i < PGS_ARRAY_LEN(never_read_names); i++)
        if (strcmp(name, never_read_names[i]) == 0) return true;
    for (size_t i = 0; i < PGS_ARRAY_LEN(never_read_prefixes); i++)
        if (strncmp(name, never_read_prefixes[i], strlen(never_read_prefixes[i])) == 0)
            return true;
    return false;
}

/* The built-in list used until a table is loaded: common pg_catalog
 * functions with their provolatile as PostgreSQL 15 has it (the worst over
 * overloads: date_trunc is immutable for timestamp, stable for timestamptz,
 * so 's').  An unqualified name in this list is taken to be pg_catalog's,
 * which is what search_path gives unless a user function of the same name
 * shadows it -- a loaded table sees those. */
static const struct {
    const char *name;
    char vol;
} builtin_procs[] = {
    {"abs", 'i'}, {"age", 's'}, {"array_agg", 'i'}, {"array_append", 'i'}, {"array_cat", 'i'},
    {"array_length", 'i'}, {"array_lower", 'i'}, {"array_positions", 'i'},
    {"array_position", 'i'}, {"array_prepend", 'i'}, {"array_remove", 'i'},
    {"array_to_json", 's'}, {"array_to_string", 's'}, {"array_upper", 'i'}, {"ascii", 'i'},
    {"avg", 'i'}, {"bit_length", 'i'}, {"bool_and", 'i'}, {"bool", 'i'}, {"bool_or", 'i'},
    {"btrim", 'i'}, {"cardinality", 'i'}, {"cbrt", 'i'}, {"ceil", 'i'}, {"ceiling", 'i'},
    {"character_length", 'i'}, {"char_length", 'i'}, {"chr", 'i'}, {"clock_timestamp", 'v'},
    {"col_description", 's'}, {"concat", 's'}, {"concat_ws", 's'}, {"count", 'i'},
    {"cume_dist", 'i'}, {"current_database", 's'}, {"current_query", 'v'},
    {"current_schema", 's'}, {"current_schemas", 's'}, {"current_setting", 's'},
    {"current_user", 's'}, {"currval", 'v'}, {"date_bin", 'i'}, {"date", 's'},
    {"date_part", 's'}, {"date_trunc", 's'}, {"decode", 'i'}, {"dense_rank", 'i'}, {"div", 'i'},
    {"encode", 'i'}, {"every", 'i'}, {"exp", 'i'}, {"extract", 's'}, {"first_value", 'i'},
    {"float8", 'i'}, {"floor", 'i'}, {"format", 's'}, {"format_type", 's'},
    {"gen_random_uuid", 'v'}, {"generate_series", 's'}, {"has_schema_privilege", 's'},
    {"has_table_privilege", 's'}, {"inet_client_addr", 's'}, {"inet_server_addr", 's'},
    {"initcap", 'i'}, {"int4", 'i'}, {"int8", 'i'}, {"isfinite", 'i'}, {"is_normalized", 'i'},
    {"json_agg", 's'}, {"json_array_elements", 'i'}, {"json_array_elements_text", 'i'},
    {"json_array_length", 'i'}, {"jsonb_agg", 's'}, {"jsonb_array_elements", 'i'},
    {"jsonb_array_elements_text", 'i'}, {"jsonb_array_length", 'i'},
    {"jsonb_build_array", 's'}, {"jsonb_build_object", 's'}, {"jsonb_each", 'i'},
    {"jsonb_each_text", 'i'}, {"jsonb_extract_path", 'i'}, {"jsonb_extract_path_text", 'i'},
    {"jsonb_insert", 'i'}, {"jsonb_object_agg", 'i'}, {"jsonb_object_keys", 'i'},
    {"jsonb_path_exists", 'i'}, {"jsonb_path_query", 'i'}, {"jsonb_pretty", 'i'},
    {"jsonb_set", 'i'}, {"jsonb_strip_nulls", 'i'}, {"jsonb_typeof", 'i'},
    {"json_build_array", 's'}, {"json_build_object", 's'}, {"json_each", 'i'},
    {"json_each_text", 'i'}, {"json_extract_path", 'i'}, {"json_extract_path_text", 'i'},
    {"json_object_agg", 's'}, {"json_object_keys", 'i'}, {"json_typeof", 'i'},
    {"justify_days", 'i'}, {"justify_hours", 'i'}, {"justify_interval", 'i'}, {"lag", 'i'},
    {"lastval", 'v'}, {"last_value", 'i'}, {"lead", 'i'}, {"left", 'i'}, {"length", 's'},
    {"like_escape", 'i'}, {"ln", 'i'}, {"log", 'i'}, {"lower", 'i'}, {"lpad", 'i'},
    {"ltrim", 'i'}, {"make_date", 'i'}, {"make_interval", 'i'}, {"make_time", 'i'},
    {"make_timestamp", 'i'}, {"make_timestamptz", 's'}, {"max", 'i'}, {"md5", 'i'},
    {"min", 'i'}, {"mod", 'i'}, {"mode", 'i'}, {"nextval", 'v'}, {"normalize", 'i'},
    {"now", 's'}, {"nth_value", 'i'}, {"ntile", 'i'}, {"numeric", 's'}, {"num_nonnulls", 'i'},
    {"num_nulls", 'i'}, {"obj_description", 's'}, {"octet_length", 'i'}, {"overlay", 'i'},
    {"percentile_cont", 'i'}, {"percentile_disc", 'i'}, {"percent_rank", 'i'},
    {"pg_advisory_lock", 'v'}, {"pg_advisory_unlock_all", 'v'}, {"pg_advisory_unlock", 'v'},
    {"pg_advisory_xact_lock", 'v'}, {"pg_backend_pid", 's'}, {"pg_collation_for", 's'},
    {"pg_current_wal_lsn", 'v'}, {"pg_current_xact_id", 's'}, {"pg_get_indexdef", 's'},
    {"pg_get_viewdef", 's'}, {"pg_has_role", 's'}, {"pg_is_in_recovery", 'v'},
    {"pg_last_wal_replay_lsn", 'v'}, {"pg_notify", 'v'}, {"pg_relation_size", 'v'},
    {"pg_size_pretty", 'i'}, {"pg_sleep", 'v'}, {"pg_table_size", 'v'},
    {"pg_total_relation_size", 'v'}, {"pg_try_advisory_lock", 'v'}, {"pg_typeof", 's'},
    {"pi", 'i'}, {"position", 'i'}, {"power", 'i'}, {"quote_ident", 'i'},
    {"quote_literal", 's'}, {"quote_nullable", 's'}, {"random", 'v'}, {"rank", 'i'},
    {"regexp_match", 'i'}, {"regexp_matches", 'i'}, {"regexp_replace", 'i'},
    {"regexp_split_to_array", 'i'}, {"repeat", 'i'}, {"replace", 'i'}, {"reverse", 'i'},
    {"right", 'i'}, {"round", 'i'}, {"row_number", 'i'}, {"row_to_json", 's'}, {"rpad", 'i'},
    {"rtrim", 'i'}, {"session_user", 's'}, {"set_config", 'v'}, {"setseed", 'v'},
    {"setval", 'v'}, {"sign", 'i'}, {"similar_to_escape", 'i'}, {"split_part", 'i'},
    {"sqrt", 'i'}, {"starts_with", 'i'}, {"statement_timestamp", 's'}, {"stddev", 'i'},
    {"stddev_pop", 'i'}, {"stddev_samp", 'i'}, {"string_agg", 'i'}, {"string_to_array", 'i'},
    {"strpos", 'i'}, {"substr", 'i'}, {"substring", 'i'}, {"sum", 'i'}, {"text", 'i'},
    {"timeofday", 'v'}, {"timezone", 's'}, {"to_char", 's'}, {"to_date", 's'}, {"to_hex", 'i'},
    {"to_json", 's'}, {"to_jsonb", 's'}, {"to_number", 's'}, {"to_timestamp", 's'},
    {"transaction_timestamp", 's'}, {"translate", 'i'}, {"trunc", 'i'},
    {"txid_current_if_assigned", 's'}, {"txid_current", 's'}, {"unnest", 'i'}, {"upper", 'i'},
    {"variance", 'i'}, {"var_pop", 'i'}, {"var_samp", 'i'}, {"version", 's'},
    {"width_bucket", 'i'}, {"xmlexists", 'i'},
};

/* 'i' < 's' < 'v'; any other provolatile is treated as 'v'. */
static char vol_norm(char v)
{
    return v == 'i' || v == 's' ? v : 'v';
}

static char vol_worst(char a, char b)
{
    a = vol_norm(a);
    b = vol_norm(b);
    return (a == 'v' || b == 'v') ? 'v' : (a == 's' || b == 's') ? 's' : 'i';
}

static uint64_t vol_hash(const char *schema, const char *name)
{
    /* FNV-1a over schema, a 0 byte, name: no two (schema, name) pairs
     * share a byte string. */
    uint64_t h = pgs_hash64(schema, strlen(schema));
    h ^= 0xff;
    h *= 1099511628211ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h ^= *p;
        h *= 1099511628211ull;
    }
    return h;
}

static vol_entry *vol_find(const vol_table *t, const char *schema, const char *name, uint64_t h)
{
    for (htab_node *n = htab_first(&t->map, h); n; n = n->next) {
        if (n->hash != h) continue;
        vol_entry *e = htab_entry(n, vol_entry, node);
        if (strcmp(e->name, name) == 0 && strcmp(e->schema, schema) == 0) return e;
    }
    return NULL;
}

/* Entry strings are copied into one arena sized up front. */
static void vol_add(vol_table *t, char **arena, const char *schema, const char *name, char vol)
{
    uint64_t h = vol_hash(schema, name);
    vol_entry *e = vol_find(t, schema, name, h);
    if (e) {
        e->vol = vol_worst(e->vol, vol);
        return;
    }
    e = &t->entries[t->n_entries++];
    size_t sl = strlen(schema), nl = strlen(name);
    memcpy(*arena, schema, sl + 1);
    e->schema = *arena;
    *arena += sl + 1;
    memcpy(*arena, name, nl + 1);
    e->name = *arena;
    *arena += nl + 1;
    e->vol = vol_norm(vol);
    e->node.hash = h;
    htab_insert(&t->map, &e->node);
}

static vol_table *vol_build(const pgs_proc_row *rows, size_t n, uint64_t generation)
{
    vol_table *t = pgs_xcalloc(1, sizeof(*t));
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += 2 * (strlen(rows[i].name) + 1) + strlen(rows[i].schema) + 2;
    t->entries = pgs_xcalloc(2 * n + 1, sizeof(vol_entry));
    t->strings = pgs_xmalloc(bytes + 1);
    t->generation = generation;
    t->refs = 1;
    htab_init(&t->map, 1024);
    char *arena = t->strings;
    for (size_t i = 0; i < n; i++) {
        vol_add(t, &arena, rows[i].schema, rows[i].name, rows[i].volatility);
        vol_add(t, &arena, "", rows[i].name, rows[i].volatility);
    }
    return t;
}

static void vol_unref(vol_table *t)
{
    if (!t || __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    htab_free(&t->map);
    free(t->entries);
    free(t->strings);
    free(t);
}

/* The published table.  Readers compare published_gen (an atomic load, no
 * lock) with the generation they hold and take the mutex only when it
 * moved, to take a reference on the new table; the publisher swaps under
 * the mutex.  So a table is never freed while a cache can still reach it,
 * and the hot path (generation unchanged) takes no lock. */
static pthread_mutex_t vol_lock = PTHREAD_MUTEX_INITIALIZER;
static vol_table *vol_published;
static uint64_t vol_published_gen; /* atomic */

/* Called with vol_lock held. */
static vol_table *vol_current_locked(void)
{
    if (!vol_published) {
        pgs_proc_row rows[PGS_ARRAY_LEN(builtin_procs)];
        for (size_t i = 0; i < PGS_ARRAY_LEN(builtin_procs); i++)
            rows[i] = (pgs_proc_row){"pg_catalog", builtin_procs[i].name, builtin_procs[i].vol};
        vol_published = vol_build(rows, PGS_ARRAY_LEN(rows), 0);
    }
    return vol_published;
}

static vol_table *vol_acquire(void)
{
    pthread_mutex_lock(&vol_lock);
    vol_table *t = vol_current_locked();
    __atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&vol_lock);
    return t;
}

uint64_t classify_volatility_publish(const pgs_proc_row *rows, size_t n)
{
    pthread_mutex_lock(&vol_lock);
    uint64_t gen = __atomic_load_n(&vol_published_gen, __ATOMIC_RELAXED) + 1;
    vol_table *t = vol_build(rows, n, gen);
    vol_table *old = vol_published;
    vol_published = t;
    __atomic_store_n(&vol_published_gen, gen, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&vol_lock);
    vol_unref(old);
    return gen;
}

uint64_t classify_volatility_generation(void)
{
    return __atomic_load_n(&vol_published_gen, __ATOMIC_ACQUIRE);
}

void classify_shutdown(void)
{
    pthread_mutex_lock(&vol_lock);
    vol_table *t = vol_published;
    vol_published = NULL;
    pthread_mutex_unlock(&vol_lock);
    vol_unref(t);
}

static const char proc_query[] =
    "SELECT n.nspname, p.proname, p.provolatile FROM pg_catalog.pg_proc p "
    "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace";

int classify_volatility_load(PGconn *conn, char *err, size_t errlen)
{
    PGresult *res = PQexec(conn, proc_query);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQnfields(res) != 3) {
        snprintf(err, errlen, "loading function volatility from pg_proc failed: %s",
                 PQresultStatus(res) == PGRES_TUPLES_OK ? "unexpected columns"
                                                        : PQerrorMessage(conn));
        PQclear(res);
        return -1;
    }
    int n = PQntuples(res);
    pgs_proc_row *rows = pgs_xcalloc((size_t)n + 1, sizeof(*rows));
    for (int i = 0; i < n; i++) {
        rows[i].schema = PQgetvalue(res, i, 0);
        rows[i].name = PQgetvalue(res, i, 1);
        rows[i].volatility = PQgetvalue(res, i, 2)[0];
    }
    (void)classify_volatility_publish(rows, (size_t)n);
    free(rows);
    PQclear(res);
    return 0;
}

static char vol_lookup(const vol_table *t, const char *schema, const char *name)
{
    if (never_read(name)) return 'v';
    const char *s = schema ? schema : "";
    vol_entry *e = vol_find(t, s, name, vol_hash(s, name));
    return e ? e->vol : 0;
}

char classify_function_volatility(const char *schema, const char *name)
{
    vol_table *t = vol_acquire();
    char v = vol_lookup(t, schema, name);
    vol_unref(t);
    return v;
}

/* ---------------------------------------------------------------------------
 * The tree walk
 *
 * libpg_query's protobuf tree is walked generically through the protobuf-c
 * descriptors: every message field of every node is visited, so a function
 * call or a FOR UPDATE is found wherever the grammar puts it (subqueries,
 * CTEs, function arguments, ORDER BY, window definitions, defaults...)
 * without a list of node kinds that a new PostgreSQL version could
 * outdate.  Only the nodes that decide something are named below.
 * ------------------------------------------------------------------------- */

/* Deeper trees are not judged (the statement is not a read).  Bison's own
 * stack limit (10000) already stops the parser well before the C stack is
 * at risk; this bounds our recursion at a depth no real query reaches. */
#define WALK_DEPTH_MAX 1500

typedef struct name_list {
    pgs_name v[PGS_CLASSIFY_NAMES];
    uint8_t n;
    bool overflow;
} name_list;

/* Per statement: what the walk found. */
typedef struct stmt_state {
    bool not_read;       /* something in the tree disqualifies a read */
    bool uses_stable;
    bool uses_volatile;  /* volatile or unknown function */
    bool not_cacheable;  /* catalog relation, TABLESAMPLE ... */
    bool session_state;  /* temp object */
    bool too_deep;
} stmt_state;

typedef struct builder {
    const vol_table *vt;
    uint32_t flags;
    uint32_t hint_ttl_ms;
    uint64_t fingerprint;
    name_list reads, writes, funcs;
    stmt_state st;
    /* The CTE names in scope where the walk is (a FROM item of one of
     * these names, without a schema, is the CTE, not a table); past the
     * bound, further names are not pushed and read as tables (unknown to
     * the relation catalog: not cached; never a read missed). */
    const char *ctes[32];
    unsigned n_ctes;
} builder;

static bool str_set(const char *s)
{
    return s && s[0];
}

static void add_name(name_list *l, const char *schema, const char *name)
{
    if (!str_set(name)) return;
    if (!str_set(schema)) schema = NULL;
    for (uint8_t i = 0; i < l->n; i++) {
        const pgs_name *x = &l->v[i];
        if (strcmp(x->name, name) == 0 &&
            (x->schema == schema || (x->schema && schema && strcmp(x->schema, schema) == 0)))
            return;
    }
    if (l->n == PGS_CLASSIFY_NAMES) {
        l->overflow = true;
        return;
    }
    l->v[l->n++] = (pgs_name){schema, name};
}

static const char *string_node(const PgQuery__Node *n)
{
    if (!n || n->node_case != PG_QUERY__NODE__NODE_STRING || !n->string) return NULL;
    return n->string->sval;
}

static bool is_cte(const builder *b, const PgQuery__RangeVar *rv)
{
    if (str_set(rv->schemaname) || !rv->relname) return false;
    for (unsigned i = b->n_ctes; i-- > 0;)
        if (strcmp(b->ctes[i], rv->relname) == 0) return true;
    return false;
}

static void add_relation(builder *b, name_list *l, const PgQuery__RangeVar *rv)
{
    if (!rv) return;
    if (l == &b->reads && is_cte(b, rv)) return; /* WITH x AS (...) ... FROM x */
    add_name(l, rv->schemaname, rv->relname);
    /* System catalogs and views (pg_stat_activity, pg_locks...) change
     * without any write pgscale sees, and differ between nodes. */
    if (strncmp(rv->relname, "pg_", 3) == 0 ||
        (str_set(rv->schemaname) && (strcmp(rv->schemaname, "pg_catalog") == 0 ||
                                     strcmp(rv->schemaname, "information_schema") == 0)))
        b->st.not_cacheable = true;
    /* A temporary relation is created (CREATE TEMP ..., SELECT INTO TEMP)
     * or named in the session's own temp schema. */
    if ((rv->relpersistence && rv->relpersistence[0] == 't') ||
        (str_set(rv->schemaname) && strncmp(rv->schemaname, "pg_temp", 7) == 0))
        b->st.session_state = true;
}

static void visit_funccall(builder *b, const PgQuery__FuncCall *fc)
{
    const char *schema = NULL, *name = NULL;
    size_t n = fc->n_funcname;
    if (n >= 1 && n <= 3) {
        name = string_node(fc->funcname[n - 1]);
        if (n >= 2) schema = string_node(fc->funcname[n - 2]);
    }
    if (!name) {
        b->st.uses_volatile = true;
        b->st.not_read = true;
        return;
    }
    add_name(&b->funcs, schema, name);
    char v = vol_lookup(b->vt, schema, name);
    if (v == 'i') return;
    if (v == 's') {
        b->st.uses_stable = true;
        return;
    }
    b->st.uses_volatile = true;
    b->st.not_read = true;
}

static void walk(builder *b, const ProtobufCMessage *m, unsigned depth);

/* Every message-typed field of m, except the ones at skip and skip2 (a
 * relation the caller already recorded as written, a WITH clause it
 * walked). */
static void walk_fields2(builder *b, const ProtobufCMessage *m, const void *skip,
                         const void *skip2, unsigned depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which = *(const uint32_t *)(base + f->quantifier_offset);
            if (which != f->id) continue;
        }
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t count = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *arr = *(ProtobufCMessage *const *const *)(base + f->offset);
            for (size_t k = 0; k < count; k++) walk(b, arr[k], depth + 1);
        } else {
            const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)(base + f->offset);
            if (sub && sub != skip && sub != skip2) walk(b, sub, depth + 1);
        }
    }
}

static void walk_fields(builder *b, const ProtobufCMessage *m, const void *skip, unsigned depth)
{
    walk_fields2(b, m, skip, NULL, depth);
}

static void push_cte(builder *b, const PgQuery__Node *n)
{
    const PgQuery__CommonTableExpr *cte =
        n && n->node_case == PG_QUERY__NODE__NODE_COMMON_TABLE_EXPR ? n->common_table_expr : NULL;
    if (cte && str_set(cte->ctename) && b->n_ctes < PGS_ARRAY_LEN(b->ctes))
        b->ctes[b->n_ctes++] = cte->ctename;
}

/* A WITH clause: its queries walked with the names each may see (a
 * RECURSIVE clause's every name; else the names before it), and those
 * names left in scope for the rest of the statement (the caller pops
 * them: b->n_ctes back to what it was). */
static void walk_with(builder *b, const PgQuery__WithClause *w, unsigned depth)
{
    if (!w) return;
    if (w->recursive)
        for (size_t i = 0; i < w->n_ctes; i++) push_cte(b, w->ctes[i]);
    for (size_t i = 0; i < w->n_ctes; i++) {
        walk(b, (const ProtobufCMessage *)w->ctes[i], depth + 1);
        if (!w->recursive) push_cte(b, w->ctes[i]);
    }
}

static void walk(builder *b, const ProtobufCMessage *m, unsigned depth)
{
    if (!m) return;
    if (depth > WALK_DEPTH_MAX) {
        b->st.too_deep = true;
        b->st.not_read = true;
        return;
    }
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (d == &pg_query__node__descriptor) {
        /* A Node is a oneof of ~250 kinds: go straight to the one set
         * instead of testing every field. */
        const PgQuery__Node *n = (const PgQuery__Node *)m;
        if (n->node_case == PG_QUERY__NODE__NODE__NOT_SET) return;
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, n->node_case);
        if (f && f->type == PROTOBUF_C_TYPE_MESSAGE)
            walk(b, *(const ProtobufCMessage *const *)((const char *)m + f->offset), depth + 1);
        return;
    }
    const void *skip = NULL;
    /* A statement with a WITH clause: its names are in scope for the
     * statement and what it nests, no further. */
    const PgQuery__WithClause *with = NULL;
    if (d == &pg_query__select_stmt__descriptor)
        with = ((const PgQuery__SelectStmt *)m)->with_clause;
    else if (d == &pg_query__insert_stmt__descriptor)
        with = ((const PgQuery__InsertStmt *)m)->with_clause;
    else if (d == &pg_query__update_stmt__descriptor)
        with = ((const PgQuery__UpdateStmt *)m)->with_clause;
    else if (d == &pg_query__delete_stmt__descriptor)
        with = ((const PgQuery__DeleteStmt *)m)->with_clause;
    else if (d == &pg_query__merge_stmt__descriptor)
        with = ((const PgQuery__MergeStmt *)m)->with_clause;
    unsigned scope = b->n_ctes;
    walk_with(b, with, depth);
    if (d == &pg_query__func_call__descriptor) {
        visit_funccall(b, (const PgQuery__FuncCall *)m);
    } else if (d == &pg_query__range_var__descriptor) {
        add_relation(b, &b->reads, (const PgQuery__RangeVar *)m);
    } else if (d == &pg_query__sqlvalue_function__descriptor) {
        b->st.uses_stable = true; /* CURRENT_TIMESTAMP, CURRENT_USER, ... */
    } else if (d == &pg_query__locking_clause__descriptor) {
        b->st.not_read = true; /* FOR UPDATE/SHARE/NO KEY UPDATE/KEY SHARE */
    } else if (d == &pg_query__into_clause__descriptor) {
        const PgQuery__IntoClause *ic = (const PgQuery__IntoClause *)m;
        b->st.not_read = true; /* SELECT INTO, CREATE TABLE AS */
        add_relation(b, &b->writes, ic->rel);
        skip = ic->rel;
    } else if (d == &pg_query__insert_stmt__descriptor) {
        /* Top level or in a CTE: a data-modifying statement. */
        const PgQuery__InsertStmt *s = (const PgQuery__InsertStmt *)m;
        b->st.not_read = true;
        add_relation(b, &b->writes, s->relation);
        skip = s->relation;
    } else if (d == &pg_query__update_stmt__descriptor) {
        const PgQuery__UpdateStmt *s = (const PgQuery__UpdateStmt *)m;
        b->st.not_read = true;
        add_relation(b, &b->writes, s->relation);
        skip = s->relation;
    } else if (d == &pg_query__delete_stmt__descriptor) {
        const PgQuery__DeleteStmt *s = (const PgQuery__DeleteStmt *)m;
        b->st.not_read = true;
        add_relation(b, &b->writes, s->relation);
        skip = s->relation;
    } else if (d == &pg_query__merge_stmt__descriptor) {
        const PgQuery__MergeStmt *s = (const PgQuery__MergeStmt *)m;
        b->st.not_read = true;
        add_relation(b, &b->writes, s->relation);
        skip = s->relation;
    } else if (d == &pg_query__range_table_sample__descriptor) {
        b->st.not_cacheable = true; /* a random sample */
    }
    walk_fields2(b, m, skip, with, depth);
    b->n_ctes = scope;
}

/* ---------------------------------------------------------------------------
 * Statements
 * ------------------------------------------------------------------------- */

static const PgQuery__DefElem *def_elem(const PgQuery__Node *n)
{
    return n && n->node_case == PG_QUERY__NODE__NODE_DEF_ELEM ? n->def_elem : NULL;
}

static const PgQuery__AConst *a_const(const PgQuery__Node *n)
{
    return n && n->node_case == PG_QUERY__NODE__NODE_A_CONST ? n->a_const : NULL;
}

/* A boolean setting's value as PostgreSQL's parse_bool reads it: true,
 * yes, on, 1 and their unique prefixes (t, y, and "on" in full). */
static bool const_true(const PgQuery__AConst *c)
{
    if (!c || c->isnull) return false;
    if (c->val_case == PG_QUERY__A__CONST__VAL_IVAL) return c->ival && c->ival->ival == 1;
    if (c->val_case == PG_QUERY__A__CONST__VAL_BOOLVAL) return c->boolval && c->boolval->boolval;
    if (c->val_case != PG_QUERY__A__CONST__VAL_SVAL || !c->sval) return false;
    const char *s = c->sval->sval;
    size_t n = strlen(s);
    if (n == 0) return false;
    static const char *const yes[] = {"true", "yes"};
    for (size_t i = 0; i < PGS_ARRAY_LEN(yes); i++)
        if (n <= strlen(yes[i]) && strncasecmp(s, yes[i], n) == 0) return true;
    return strcasecmp(s, "on") == 0 || strcmp(s, "1") == 0;
}

static const char *const_string(const PgQuery__AConst *c)
{
    if (!c || c->isnull || c->val_case != PG_QUERY__A__CONST__VAL_SVAL || !c->sval) return NULL;
    return c->sval->sval;
}

/* Transaction modes of BEGIN / START TRANSACTION / SET TRANSACTION / SET
 * SESSION CHARACTERISTICS: the grammar turns them into DefElems. */
static void txn_modes(PgQuery__Node *const *opts, size_t n, bool *read_only, bool *serializable)
{
    for (size_t i = 0; i < n; i++) {
        const PgQuery__DefElem *de = def_elem(opts[i]);
        if (!de || !de->defname) continue;
        if (strcmp(de->defname, "transaction_read_only") == 0) {
            *read_only = const_true(a_const(de->arg));
        } else if (strcmp(de->defname, "transaction_isolation") == 0) {
            const char *lvl = const_string(a_const(de->arg));
            *serializable = lvl && strcmp(lvl, "serializable") == 0;
        }
    }
}

/* DDL by node name: every Create*, Alter* and Drop* statement, and the
 * few other statements that define or redefine objects.  By name so that a
 * statement kind added in a later PostgreSQL is not missed. */
static bool is_ddl(const char *short_name)
{
    static const char *const prefixes[] = {"Create", "Alter", "Drop"};
    static const char *const others[] = {
        "DefineStmt", "RenameStmt", "RuleStmt", "ViewStmt", "IndexStmt", "CommentStmt",
        "GrantStmt", "GrantRoleStmt", "CompositeTypeStmt", "ImportForeignSchemaStmt",
        "SecLabelStmt", "ReassignOwnedStmt"};
    for (size_t i = 0; i < PGS_ARRAY_LEN(prefixes); i++)
        if (strncmp(short_name, prefixes[i], strlen(prefixes[i])) == 0) return true;
    for (size_t i = 0; i < PGS_ARRAY_LEN(others); i++)
        if (strcmp(short_name, others[i]) == 0) return true;
    return false;
}

enum { CURSOR_OPT_HOLD = 0x0020 }; /* PostgreSQL's parsenodes.h */

/* The flags of one statement (its walk's names go into b's lists).
 * Returns READ or WRITE plus whatever else applies. */
static uint32_t classify_stmt(builder *b, const PgQuery__Node *node, bool top)
{
    const ProtobufCMessage *m = NULL;
    if (node && node->node_case != PG_QUERY__NODE__NODE__NOT_SET) {
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field(&pg_query__node__descriptor, node->node_case);
        if (f && f->type == PROTOBUF_C_TYPE_MESSAGE)
            m = *(const ProtobufCMessage *const *)((const char *)node + f->offset);
    }
    if (!m) return PGS_FACT_WRITE;
    if (top) b->st = (stmt_state){0};

    uint32_t fl = 0;
    bool read = false;
    switch (node->node_case) {
    case PG_QUERY__NODE__NODE_SELECT_STMT: /* SELECT, VALUES, TABLE t */
        walk(b, m, 0);
        read = !b->st.not_read;
        if (read && top && !b->st.uses_stable && !b->st.not_cacheable && !b->st.session_state)
            fl |= PGS_FACT_CACHEABLE;
        break;
    case PG_QUERY__NODE__NODE_EXPLAIN_STMT:
        /* EXPLAIN runs nothing, EXPLAIN ANALYZE runs its statement: a
         * read when that statement is one either way (a standby plans a
         * write but refuses to run it; sending every EXPLAIN of a write to
         * the primary is the simple, safe rule). */
        read = classify_stmt(b, node->explain_stmt->query, false) & PGS_FACT_READ;
        break;
    case PG_QUERY__NODE__NODE_VARIABLE_SHOW_STMT:
        read = true;
        break;
    case PG_QUERY__NODE__NODE_TRANSACTION_STMT: {
        const PgQuery__TransactionStmt *ts = node->transaction_stmt;
        bool ro = false, ser = false;
        switch (ts->kind) {
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_BEGIN:
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_START:
            txn_modes(ts->options, ts->n_options, &ro, &ser);
            fl |= PGS_FACT_TXN_BEGIN | (ro ? PGS_FACT_TXN_BEGIN_READ_ONLY : 0) |
                  (ser ? PGS_FACT_TXN_SERIALIZABLE : 0);
            /* A transaction that may write runs on the primary. */
            read = ro && !ser;
            break;
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT:
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK:
            fl |= PGS_FACT_TXN_END | (ts->chain ? PGS_FACT_TXN_CHAIN : 0);
            read = true;
            break;
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_SAVEPOINT:
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_RELEASE:
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK_TO:
            read = true;
            break;
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_PREPARE:
            fl |= PGS_FACT_TXN_END; /* the transaction leaves the session */
            break;
        default:
            /* COMMIT/ROLLBACK PREPARED: writes, outside any transaction.
             * What the prepared transaction wrote becomes visible now,
             * and pgscale may not have seen it (another session prepared
             * it): everything may change. */
            b->writes.overflow = true;
            break;
        }
        break;
    }
    case PG_QUERY__NODE__NODE_VARIABLE_SET_STMT: {
        const PgQuery__VariableSetStmt *vs = node->variable_set_stmt;
        bool ro = false, ser = false;
        if (vs->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_SET_MULTI && vs->name &&
            (strcmp(vs->name, "TRANSACTION") == 0 ||
             strcmp(vs->name, "SESSION CHARACTERISTICS") == 0)) {
            txn_modes(vs->args, vs->n_args, &ro, &ser);
        } else if (vs->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_SET_VALUE && vs->name &&
                   (strcmp(vs->name, "default_transaction_read_only") == 0 ||
                    strcmp(vs->name, "transaction_read_only") == 0) &&
                   vs->n_args == 1) {
            ro = const_true(a_const(vs->args[0]));
        }
        fl |= (ro ? PGS_FACT_SET_TX_READ_ONLY : 0) | (ser ? PGS_FACT_TXN_SERIALIZABLE : 0);
        break; /* SET changes session state: a write */
    }
    case PG_QUERY__NODE__NODE_COPY_STMT: {
        const PgQuery__CopyStmt *cs = node->copy_stmt;
        if (cs->is_from) {
            add_relation(b, &b->writes, cs->relation);
            walk_fields(b, m, cs->relation, 0);
        } else {
            walk(b, m, 0);
            /* COPY ... TO a server file or program has effects outside
             * the database, on whichever node runs it. */
            read = !b->st.not_read && !str_set(cs->filename) && !cs->is_program;
        }
        break;
    }
    case PG_QUERY__NODE__NODE_TRUNCATE_STMT: {
        const PgQuery__TruncateStmt *ts = node->truncate_stmt;
        for (size_t i = 0; i < ts->n_relations; i++)
            if (ts->relations[i]->node_case == PG_QUERY__NODE__NODE_RANGE_VAR)
                add_relation(b, &b->writes, ts->relations[i]->range_var);
        break;
    }
    case PG_QUERY__NODE__NODE_CALL_STMT:
    case PG_QUERY__NODE__NODE_DO_STMT:
        /* Procedures and anonymous blocks may write anything. */
        walk(b, m, 0);
        b->writes.overflow = true;
        break;
    case PG_QUERY__NODE__NODE_DECLARE_CURSOR_STMT:
        /* Cursors are pinned elsewhere; a WITH HOLD one outlives the
         * transaction on its server. */
        walk(b, m, 0);
        if (node->declare_cursor_stmt->options & CURSOR_OPT_HOLD) b->st.session_state = true;
        break;
    case PG_QUERY__NODE__NODE_REFRESH_MAT_VIEW_STMT:
        /* REFRESH MATERIALIZED VIEW m: writes m (the walk would count
         * it as read); its query is the view's, already in the catalog. */
        add_relation(b, &b->writes, node->refresh_mat_view_stmt->relation);
        break;
    case PG_QUERY__NODE__NODE_EXECUTE_STMT:
        /* EXECUTE of an SQL PREPAREd statement: its text is on the
         * server, not here, and may write anything. */
        walk(b, m, 0);
        b->writes.overflow = true;
        break;
    case PG_QUERY__NODE__NODE_LISTEN_STMT:
    case PG_QUERY__NODE__NODE_PREPARE_STMT:
        walk(b, m, 0);
        b->st.session_state = true;
        break;
    default:
        walk(b, m, 0);
        if (is_ddl(m->descriptor->short_name)) {
            fl |= PGS_FACT_DDL;
            b->writes.overflow = true;
        }
        break;
    }
    if (b->st.uses_stable) fl |= PGS_FACT_USES_STABLE;
    if (b->st.uses_volatile) {
        fl |= PGS_FACT_USES_VOLATILE;
        b->writes.overflow = true; /* it may write anything */
    }
    if (b->st.session_state) fl |= PGS_FACT_SESSION_STATE;
    if (b->st.too_deep) {
        b->reads.overflow = b->writes.overflow = b->funcs.overflow = true;
        read = false;
    }
    if (!read) fl &= ~PGS_FACT_CACHEABLE;
    return fl | (read ? PGS_FACT_READ : PGS_FACT_WRITE);
}

/* A hint word at sql[at..] ends there: "pgscale:cache" is not
 * "pgscale:cached" or "pgscale:cache_x". */
static bool hint_word_ends(const char *sql, size_t end, size_t len)
{
    if (end >= len) return true;
    unsigned char ch = (unsigned char)sql[end];
    return !((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             ch == '_' || ch == ':' || ch == '-');
}

/* The cache hints (docs/cache.md, "Hints"): "pgscale:nocache" anywhere in
 * a comment; else the first "pgscale:cache", optionally followed in the
 * same comment by blanks and "ttl=<duration>" (60, 60s, 500ms, 5min). */
static void cache_hints(builder *b, const char *sql, size_t len)
{
    static const char nocache[] = "pgscale:nocache", cache[] = "pgscale:cache";
    size_t at, end, from = 0;
    while (sqlscan_comment_find(sql, len, nocache, from, &at, &end)) {
        if (hint_word_ends(sql, at + sizeof(nocache) - 1, len)) {
            b->flags |= PGS_FACT_HINT_NOCACHE;
            return;
        }
        from = at + 1;
    }
    from = 0;
    while (sqlscan_comment_find(sql, len, cache, from, &at, &end)) {
        size_t p = at + sizeof(cache) - 1;
        from = at + 1;
        if (!hint_word_ends(sql, p, len)) continue;
        while (p < end && (sql[p] == ' ' || sql[p] == '\t')) p++;
        if (p + 4 > end || strncasecmp(sql + p, "ttl=", 4) != 0) {
            b->flags |= PGS_FACT_HINT_CACHE;
            return;
        }
        p += 4;
        char v[32];
        size_t n = 0;
        while (p < end && n + 1 < sizeof(v) &&
               ((sql[p] >= '0' && sql[p] <= '9') || sql[p] == '.' ||
                (sql[p] >= 'a' && sql[p] <= 'z') || (sql[p] >= 'A' && sql[p] <= 'Z')))
            v[n++] = sql[p++];
        v[n] = '\0';
        uint32_t ms;
        char why[256];
        if (n == 0 || config_parse_duration(v, true, &ms, why, sizeof(why)) < 0)
            return; /* what did they mean?  Not caching is the safe reading. */
        if (ms == 0) b->flags |= PGS_FACT_HINT_NOCACHE;
        else {
            b->flags |= PGS_FACT_HINT_CACHE;
            b->hint_ttl_ms = ms;
        }
        return;
    }
}

/* Classifies sql (NUL-terminated copy, len bytes) into b.  Returns the
 * parse result and tree for the caller to free once it has copied the
 * names out of them (they point into the tree). */
static PgQuery__ParseResult *analyse(builder *b, const char *sql, size_t len,
                                     PgQueryProtobufParseResult *pr)
{
    PgQuery__ParseResult *tree = NULL;
    memset(pr, 0, sizeof(*pr));
    if (sqlscan_comment_has(sql, len, "pgscale:primary")) b->flags |= PGS_FACT_HINT_PRIMARY;
    cache_hints(b, sql, len);

    /* A NUL inside the text: PostgreSQL would read a different (shorter)
     * statement than the one we see; let the primary judge it. */
    if (memchr(sql, '\0', len)) goto parse_error;
    *pr = pg_query_parse_protobuf(sql);
    if (pr->error) goto parse_error;
    tree = pg_query__parse_result__unpack(NULL, pr->parse_tree.len,
                                          (const uint8_t *)pr->parse_tree.data);
    if (!tree) goto parse_error;

    uint32_t all = 0;
    bool any_write = false;
    for (size_t i = 0; i < tree->n_stmts; i++) {
        uint32_t fl = classify_stmt(b, tree->stmts[i] ? tree->stmts[i]->stmt : NULL, true);
        any_write |= (fl & PGS_FACT_WRITE) != 0;
        all |= fl;
    }
    if (tree->n_stmts > 1) all = (all & ~PGS_FACT_CACHEABLE) | PGS_FACT_MULTI;
    /* An empty text (only blanks, comments or ';') is harmless anywhere. */
    if (any_write) all = (all & ~(PGS_FACT_READ | PGS_FACT_CACHEABLE)) | PGS_FACT_WRITE;
    else all |= PGS_FACT_READ;
    b->flags |= all;
    /* A second (raw) parse: libpg_query fingerprints only from the text.
     * It adds about 4-6 us to a miss of 23-100 us (bench/classify_bench:
     * the protobuf round trip above dominates a miss) and nothing to a
     * hit, which is where the data path lives. */
    PgQueryFingerprintResult fp = pg_query_fingerprint(sql);
    if (!fp.error) b->fingerprint = fp.fingerprint;
    pg_query_free_fingerprint_result(fp);
    return tree;

parse_error:
    b->flags |= PGS_FACT_PARSE_ERROR | PGS_FACT_WRITE;
    b->writes.overflow = true;
    return NULL;
}

/* ---------------------------------------------------------------------------
 * The parse cache
 *
 * One allocation per entry: the entry, the facts' name arrays, the name
 * strings and the statement text.  A hash table finds it by text; a
 * doubly-linked list orders entries by last use for eviction.
 * ------------------------------------------------------------------------- */

typedef struct centry {
    htab_node node;
    struct centry *prev, *next; /* LRU: head.next is the most recently used */
    size_t bytes;               /* the allocation, as counted against max_bytes */
    size_t text_len;
    const char *text;           /* NULL when not cached */
    pgs_stmt_facts facts;
} centry;

struct pgs_classify_cache {
    htab map;
    centry lru; /* sentinel */
    size_t max_entries, max_bytes;
    size_t count, bytes;
    centry *scratch; /* the facts of the last text that was not cached */
    vol_table *vt;
    uint64_t gen;
    pgs_classify_stats stats;
    char *buf; /* NUL-terminated copy of the text for the parser */
    size_t buf_cap;
    char *key; /* the text with its literals masked (literal_key) */
    size_t key_cap;
};

pgs_classify_cache *classify_cache_new(size_t max_entries, size_t max_bytes)
{
    pgs_classify_cache *c = pgs_xcalloc(1, sizeof(*c));
    c->max_entries = max_entries;
    c->max_bytes = max_bytes;
    c->lru.next = c->lru.prev = &c->lru;
    c->gen = UINT64_MAX; /* no table yet: the first classify() takes one */
    return c;
}

static void lru_unlink(centry *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
}

static void lru_push_front(pgs_classify_cache *c, centry *e)
{
    e->next = c->lru.next;
    e->prev = &c->lru;
    c->lru.next->prev = e;
    c->lru.next = e;
}

static void entry_drop(pgs_classify_cache *c, centry *e)
{
    htab_remove(&c->map, &e->node);
    lru_unlink(e);
    c->count--;
    c->bytes -= e->bytes;
    free(e);
}

void classify_cache_free(pgs_classify_cache *c)
{
    if (!c) return;
    while (c->lru.next != &c->lru) entry_drop(c, c->lru.next);
    htab_free(&c->map);
    free(c->scratch);
    free(c->buf);
    free(c->key);
    vol_unref(c->vt);
    free(c);
}

void classify_cache_stats(const pgs_classify_cache *c, pgs_classify_stats *out)
{
    *out = c->stats;
    out->entries = c->count;
    out->bytes = c->bytes;
}

static size_t names_bytes(const name_list *l)
{
    size_t n = 0;
    for (uint8_t i = 0; i < l->n; i++)
        n += strlen(l->v[i].name) + 1 + (l->v[i].schema ? strlen(l->v[i].schema) + 1 : 0);
    return n;
}

static char *copy_str(char **arena, const char *s)
{
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *p = memcpy(*arena, s, n);
    *arena += n;
    return p;
}

static const pgs_name *copy_names(pgs_name *dst, char **arena, const name_list *l)
{
    for (uint8_t i = 0; i < l->n; i++)
        dst[i] = (pgs_name){copy_str(arena, l->v[i].schema), copy_str(arena, l->v[i].name)};
    return dst;
}

/* One allocation holding the facts of b and, when text is not NULL, the
 * text (the cache key). */
static centry *entry_make(const builder *b, uint64_t gen, const char *text, size_t len)
{
    size_t n_names = (size_t)b->reads.n + b->writes.n + b->funcs.n;
    size_t bytes = sizeof(centry) + n_names * sizeof(pgs_name) + names_bytes(&b->reads) +
                   names_bytes(&b->writes) + names_bytes(&b->funcs) + (text ? len : 0);
    centry *e = pgs_xmalloc(bytes);
    memset(e, 0, sizeof(*e));
    pgs_name *names = (pgs_name *)(e + 1);
    char *arena = (char *)(names + n_names);
    e->bytes = bytes;
    e->facts.flags = b->flags | (b->reads.overflow ? PGS_FACT_READS_OVERFLOW : 0) |
                     (b->writes.overflow ? PGS_FACT_WRITES_OVERFLOW : 0) |
                     (b->funcs.overflow ? PGS_FACT_FUNCS_OVERFLOW : 0);
    e->facts.generation = gen;
    e->facts.hint_ttl_ms = b->hint_ttl_ms;
    e->facts.fingerprint = b->fingerprint;
    e->facts.n_reads = b->reads.n;
    e->facts.n_writes = b->writes.n;
    e->facts.n_funcs = b->funcs.n;
    e->facts.reads = copy_names(names, &arena, &b->reads);
    e->facts.writes = copy_names(names + b->reads.n, &arena, &b->writes);
    e->facts.funcs = copy_names(names + b->reads.n + b->writes.n, &arena, &b->funcs);
    if (text) {
        e->text = memcpy(arena, text, len);
        e->text_len = len;
    }
    return e;
}

/* Takes up a table published since the last call. */
static void refresh_table(pgs_classify_cache *c)
{
    if (PGS_LIKELY(c->vt && __atomic_load_n(&vol_published_gen, __ATOMIC_ACQUIRE) == c->gen))
        return;
    vol_table *t = vol_acquire();
    vol_unref(c->vt);
    c->vt = t;
    c->gen = t->generation;
}

static centry *cache_find(pgs_classify_cache *c, const char *sql, size_t len, uint64_t h)
{
    for (htab_node *n = htab_first(&c->map, h); n; n = n->next) {
        if (n->hash != h) continue;
        centry *e = htab_entry(n, centry, node);
        if (e->text_len == len && memcmp(e->text, sql, len) == 0) return e;
    }
    return NULL;
}

/* The cache key of a text: the text with every string and numeric literal
 * masked, so that "WHERE id = 1" and "WHERE id = 2" share one entry.  An
 * application that inlines its values (the simple protocol) would
 * otherwise miss the cache on every statement and pay a whole parse (tens
 * of microseconds) each time.  What a literal holds does not change the
 * facts: they come from the statement's kind, its keywords, and the names
 * of its tables and functions, which are never literals.  (The one
 * exception, SET default_transaction_read_only = 'on' against 'off', is a
 * SET, never a read either way.)  Comments, quoted identifiers and $n
 * parameters are kept as they are.  Returns false -- use the exact text --
 * when the text holds anything whose extent a short scan cannot be sure
 * of: a backslash in a standard string (it ends a literal early when
 * standard_conforming_strings is off), an unterminated quote or comment,
 * a dollar quote. */
static inline bool ident_char(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '$' || ch >= 0x80;
}

static inline bool digit(unsigned char ch)
{
    return ch >= '0' && ch <= '9';
}

/* The bytes that may start something literal_key looks at: quotes,
 * comments, $, digits, '.', and '_' (for "_only"). */
static const bool key_special[256] = {
    ['\''] = true, ['"'] = true, ['-'] = true, ['/'] = true, ['$'] = true, ['.'] = true,
    ['_'] = true, ['0'] = true, ['1'] = true, ['2'] = true, ['3'] = true, ['4'] = true,
    ['5'] = true, ['6'] = true, ['7'] = true, ['8'] = true, ['9'] = true,
};

static bool literal_key(const char *sql, size_t len, char *out, size_t *out_len)
{
    size_t o = 0;
    size_t i = 0;
    while (i < len) {
        /* runs of bytes that start nothing (most of a statement) in one go */
        size_t run = i;
        while (run < len && !key_special[(unsigned char)sql[run]]) run++;
        if (run > i) {
            memcpy(out + o, sql + i, run - i);
            o += run - i;
            i = run;
            if (i >= len) break;
        }
        unsigned char ch = (unsigned char)sql[i];
        bool ident_before = o > 0 && ident_char((unsigned char)out[o - 1]);
        /* the SET exception above (..._read_only): keep such texts whole */
        if (ch == '_') {
            if (i + 5 <= len && (sql[i + 1] | 0x20) == 'o' && (sql[i + 2] | 0x20) == 'n' &&
                (sql[i + 3] | 0x20) == 'l' && (sql[i + 4] | 0x20) == 'y')
                return false;
            out[o++] = (char)ch;
            i++;
            continue;
        }
        if (digit(ch) && ident_before) {
            /* the digits of a name (t1) */
            while (i < len && digit((unsigned char)sql[i])) out[o++] = sql[i++];
            continue;
        }
        if (ch == '\'') {
            /* E'...' (backslash escapes) when an E or e alone precedes it */
            bool e_string = i > 0 && (sql[i - 1] == 'E' || sql[i - 1] == 'e') &&
                            (i < 2 || !ident_char((unsigned char)sql[i - 2]));
            size_t j = i + 1;
            for (;;) {
                if (j >= len) return false;
                if (sql[j] == '\\') {
                    if (!e_string) return false;
                    j += 2;
                    continue;
                }
                if (sql[j] == '\'') {
                    if (j + 1 < len && sql[j + 1] == '\'') {
                        j += 2;
                        continue;
                    }
                    break;
                }
                j++;
            }
            out[o++] = '\'';
            out[o++] = '\'';
            i = j + 1;
            continue;
        }
        if (ch == '"') {
            size_t j = i + 1;
            while (j < len && !(sql[j] == '"' && !(j + 1 < len && sql[j + 1] == '"'))) {
                if (sql[j] == '"') j++;
                j++;
            }
            if (j >= len) return false;
            memcpy(out + o, sql + i, j + 1 - i);
            o += j + 1 - i;
            i = j + 1;
            continue;
        }
        if (ch == '-' && i + 1 < len && sql[i + 1] == '-') {
            size_t j = i;
            while (j < len && sql[j] != '\n') j++;
            memcpy(out + o, sql + i, j - i);
            o += j - i;
            i = j;
            continue;
        }
        if (ch == '/' && i + 1 < len && sql[i + 1] == '*') {
            size_t j = i + 2;
            int depth = 1;
            while (depth > 0) {
                if (j + 1 >= len) return false;
                if (sql[j] == '/' && sql[j + 1] == '*') {
                    depth++;
                    j += 2;
                } else if (sql[j] == '*' && sql[j + 1] == '/') {
                    depth--;
                    j += 2;
                } else {
                    j++;
                }
            }
            memcpy(out + o, sql + i, j - i);
            o += j - i;
            i = j;
            continue;
        }
        if (ch == '$') {
            /* $n is a parameter (kept); anything else may open a dollar
             * quote, whose end this scan does not look for */
            size_t j = i + 1;
            while (j < len && digit((unsigned char)sql[j])) j++;
            if (j == i + 1 && !ident_before) return false;
            memcpy(out + o, sql + i, j - i);
            o += j - i;
            i = j;
            continue;
        }
        if ((digit(ch) || (ch == '.' && i + 1 < len && digit((unsigned char)sql[i + 1]))) &&
            !ident_before) {
            /* digits [. digits] [e [+-] digits]; what follows (an alias
             * written without a space, "1from") is copied as it is */
            size_t j = i;
            while (j < len && (digit((unsigned char)sql[j]) || sql[j] == '_')) j++;
            if (j < len && sql[j] == '.') {
                j++;
                while (j < len && digit((unsigned char)sql[j])) j++;
            }
            if (j + 1 < len && (sql[j] == 'e' || sql[j] == 'E')) {
                size_t k = j + 1;
                if (k < len && (sql[k] == '+' || sql[k] == '-')) k++;
                if (k < len && digit((unsigned char)sql[k])) {
                    while (k < len && digit((unsigned char)sql[k])) k++;
                    j = k;
                }
            }
            out[o++] = '0';
            i = j;
            continue;
        }
        out[o++] = (char)ch;
        i++;
    }
    *out_len = o;
    return true;
}

static centry *compute(pgs_classify_cache *c, const char *sql, size_t len, const char *key,
                       size_t key_len)
{
    if (c->buf_cap < len + 1) {
        free(c->buf);
        c->buf_cap = len + 1 > 256 ? len + 1 : 256;
        c->buf = pgs_xmalloc(c->buf_cap);
    }
    if (len) memcpy(c->buf, sql, len);
    c->buf[len] = '\0';

    builder b = {.vt = c->vt};
    PgQueryProtobufParseResult pr;
    PgQuery__ParseResult *tree = analyse(&b, c->buf, len, &pr);
    centry *e = entry_make(&b, c->gen, key, key_len);
    if (tree) pg_query__parse_result__free_unpacked(tree, NULL);
    pg_query_free_protobuf_parse_result(pr);
    /* The copy may be large (a multi-megabyte INSERT); do not keep it. */
    if (c->buf_cap > 64 * 1024) {
        free(c->buf);
        c->buf = NULL;
        c->buf_cap = 0;
    }
    return e;
}

const pgs_stmt_facts *classify(pgs_classify_cache *c, const char *sql, size_t len)
{
    if (!sql) len = 0;
    if (!sql) sql = "";
    refresh_table(c);

    bool cacheable = len <= PGS_CLASSIFY_CACHE_TEXT_MAX && c->max_entries > 0;
    uint64_t h = 0;
    const char *key = NULL;
    size_t key_len = 0;
    if (cacheable) {
        /* a masked text is never longer than the text: 1 or 2 bytes for
         * each literal of at least 1 or 2 */
        if (c->key_cap < len + 1) {
            free(c->key);
            c->key_cap = len + 1 > 256 ? len + 1 : 256;
            c->key = pgs_xmalloc(c->key_cap);
        }
        key = c->key;
        if (!literal_key(sql, len, c->key, &key_len)) {
            key = sql;
            key_len = len;
        }
        h = pgs_hash64(key, key_len);
        centry *e = cache_find(c, key, key_len, h);
        if (PGS_LIKELY(e != NULL)) {
            if (PGS_LIKELY(e->facts.generation == c->gen)) {
                c->stats.hits++;
                if (c->lru.next != e) {
                    lru_unlink(e);
                    lru_push_front(c, e);
                }
                return &e->facts;
            }
            /* Computed with an older volatility table. */
            c->stats.stale++;
            entry_drop(c, e);
        }
    }
    c->stats.misses++;
    centry *e = compute(c, sql, len, key, key_len);
    if (cacheable && e->bytes <= c->max_bytes) {
        while (c->count > 0 && (c->count + 1 > c->max_entries || c->bytes + e->bytes > c->max_bytes)) {
            entry_drop(c, c->lru.prev);
            c->stats.evictions++;
        }
        e->node.hash = h;
        htab_insert(&c->map, &e->node);
        lru_push_front(c, e);
        c->count++;
        c->bytes += e->bytes;
        return &e->facts;
    }
    free(c->scratch);
    c->scratch = e;
    return &e->facts;
}
