/* Session settings carried across pooled server connections.  Reported
 * parameters (application_name, client_encoding, DateStyle, ...) are known
 * exactly from ParameterStatus; other settings are remembered as the SET
 * statement that made them and replayed as written. */
#include "params.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* The parameters PostgreSQL 15 reports that a session can change. */
static const char *const reported[PARAMS_REPORTED] = {
    "application_name", "client_encoding", "DateStyle", "IntervalStyle",
    "TimeZone", "standard_conforming_strings", "default_transaction_read_only",
};

typedef struct extra {
    char *name;
    char *stmt;
} extra;

/* One allocation: the header, then the reported values packed one after
 * the other (a client holds a few short strings, so separate allocations
 * would cost more than the values).  A value is replaced by rebuilding the
 * block, which happens only when a setting changes.
 *
 * A block may be shared (refs > 1): a worker's pool keeps the welcome
 * parameters as one block, and every client that brought no settings of
 * its own points at it until it changes something (copy on write, in the
 * functions that take pgs_params **).  Shared blocks never hold extras, so
 * params_clear_extras on one has nothing to do. */
struct pgs_params {
    _Atomic uint32_t refs;
    uint16_t n_extra;
    uint16_t blob_len;
    extra *extra;
    uint16_t off[PARAMS_REPORTED];  /* offset + 1 in blob; 0 = not set */
    char blob[];
};

static const char *rep_get(const pgs_params *p, int i)
{
    return p && p->off[i] ? p->blob + p->off[i] - 1 : NULL;
}

/* A block with the reported values vals[] (NULL = unset) and no extras. */
static pgs_params *build(const char *const vals[PARAMS_REPORTED])
{
    size_t len = 0;
    for (int i = 0; i < PARAMS_REPORTED; i++)
        if (vals[i]) len += strlen(vals[i]) + 1;
    if (len > UINT16_MAX - 1) len = 0; /* cannot happen: values come from short messages */
    pgs_params *n = pgs_xmalloc(sizeof(*n) + len);
    atomic_init(&n->refs, 1);
    n->n_extra = 0;
    n->extra = NULL;
    size_t pos = 0;
    for (int i = 0; i < PARAMS_REPORTED; i++) {
        n->off[i] = 0;
        if (!vals[i] || len == 0) continue;
        size_t l = strlen(vals[i]) + 1;
        memcpy(n->blob + pos, vals[i], l);
        n->off[i] = (uint16_t)(pos + 1);
        pos += l;
    }
    n->blob_len = (uint16_t)pos;
    return n;
}

/* Replaces *pp by a block of the reported values vals[] (which may point
 * into *pp); the extras move over, or are copied when the old block is
 * shared. */
static void replace(pgs_params **pp, const char *const vals[PARAMS_REPORTED])
{
    pgs_params *old = *pp;
    pgs_params *n = build(vals);
    if (old && atomic_load_explicit(&old->refs, memory_order_relaxed) == 1) {
        n->extra = old->extra;
        n->n_extra = old->n_extra;
        free(old);
    } else if (old) {
        for (int k = 0; k < old->n_extra; k++)
            params_set_extra(&n, old->extra[k].name, old->extra[k].stmt);
        params_free(old);
    }
    *pp = n;
}

/* Replaces *pp by a block whose reported value i (if i >= 0) is value. */
static void rebuild(pgs_params **pp, int i, const char *value)
{
    const char *vals[PARAMS_REPORTED];
    for (int k = 0; k < PARAMS_REPORTED; k++) vals[k] = rep_get(*pp, k);
    if (i >= 0) vals[i] = value;
    replace(pp, vals);
}

/* The block is about to change: make it ours alone. */
static pgs_params *own(pgs_params **pp)
{
    if (!*pp || atomic_load_explicit(&(*pp)->refs, memory_order_relaxed) > 1)
        rebuild(pp, -1, NULL);
    return *pp;
}

pgs_params *params_ref(pgs_params *p)
{
    if (p) atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return p;
}

pgs_params *params_from_lists(int n, char **names, char **values)
{
    const char *vals[PARAMS_REPORTED] = {0};
    for (int k = 0; k < n; k++) {
        int i = params_reported_index(names[k]);
        if (i >= 0) vals[i] = values[k];
    }
    return build(vals);
}

void params_fill_from(pgs_params **pp, const pgs_params *base)
{
    bool missing = false;
    for (int i = 0; i < PARAMS_REPORTED; i++)
        if (!rep_get(*pp, i) && rep_get(base, i)) missing = true;
    if (!missing) return;
    const char *vals[PARAMS_REPORTED];
    for (int i = 0; i < PARAMS_REPORTED; i++)
        vals[i] = rep_get(*pp, i) ? rep_get(*pp, i) : rep_get(base, i);
    replace(pp, vals);
}

int params_reported_index(const char *name)
{
    for (int i = 0; i < PARAMS_REPORTED; i++)
        if (strcasecmp(reported[i], name) == 0) return i;
    return -1;
}

const char *params_reported_name(int i)
{
    return i >= 0 && i < PARAMS_REPORTED ? reported[i] : NULL;
}

void params_set(pgs_params **pp, const char *name, const char *value)
{
    int i = params_reported_index(name);
    if (i < 0) return;
    const char *have = rep_get(*pp, i);
    if (have && strcmp(have, value) == 0) return;
    rebuild(pp, i, value);
}

const char *params_get(const pgs_params *p, const char *name)
{
    int i = params_reported_index(name);
    if (!p || i < 0) return NULL;
    return rep_get(p, i);
}

void params_set_extra(pgs_params **pp, const char *name, const char *stmt)
{
    if (!stmt && !*pp) return;
    pgs_params *p = own(pp);
    for (int i = 0; i < p->n_extra; i++) {
        if (strcmp(p->extra[i].name, name) != 0) continue;
        free(p->extra[i].stmt);
        if (stmt) {
            p->extra[i].stmt = pgs_xstrdup(stmt);
        } else {
            free(p->extra[i].name);
            p->extra[i] = p->extra[--p->n_extra];
        }
        return;
    }
    if (!stmt) return;
    p->extra = pgs_xrealloc(p->extra, sizeof(extra) * (size_t)(p->n_extra + 1));
    p->extra[p->n_extra].name = pgs_xstrdup(name);
    p->extra[p->n_extra].stmt = pgs_xstrdup(stmt);
    p->n_extra++;
}

void params_clear_extras(pgs_params *p)
{
    if (!p || (p->n_extra == 0 && !p->extra)) return;
    for (int i = 0; i < p->n_extra; i++) {
        free(p->extra[i].name);
        free(p->extra[i].stmt);
    }
    free(p->extra);
    p->extra = NULL;
    p->n_extra = 0;
}

static const char *find_extra(const pgs_params *p, const char *name)
{
    if (!p) return NULL;
    for (int i = 0; i < p->n_extra; i++)
        if (strcmp(p->extra[i].name, name) == 0) return p->extra[i].stmt;
    return NULL;
}

/* Appends s to out as a SQL string literal. */
static bool put_literal(char *out, size_t cap, size_t *len, const char *s)
{
    if (*len + 3 > cap) return false;
    out[(*len)++] = 'E';
    out[(*len)++] = '\'';
    for (; *s; s++) {
        if (*len + 4 > cap) return false;
        if (*s == '\'' || *s == '\\') out[(*len)++] = *s;
        out[(*len)++] = *s;
    }
    out[(*len)++] = '\'';
    return true;
}

static bool put(char *out, size_t cap, size_t *len, const char *s)
{
    size_t n = strlen(s);
    if (*len + n >= cap) return false;
    memcpy(out + *len, s, n);
    *len += n;
    return true;
}

/* The statement that undoes a recorded setting. */
static bool put_reset(char *out, size_t cap, size_t *len, const char *name)
{
    if (strcmp(name, "role") == 0) return put(out, cap, len, "RESET ROLE;");
    if (strcmp(name, "transaction_characteristics") == 0)
        return put(out, cap, len,
                   "RESET default_transaction_isolation;RESET default_transaction_read_only;"
                   "RESET default_transaction_deferrable;");
    if (!put(out, cap, len, "RESET \"")) return false;
    for (const char *c = name; *c; c++) {
        if (*len + 3 >= cap) return false;
        if (*c == '"') out[(*len)++] = '"';
        out[(*len)++] = *c;
    }
    return put(out, cap, len, "\";");
}

/* reset_all: the text starts with RESET ALL, after which the server's
 * reported parameters are those of baseline (its values at login; NULL:
 * unknown, every value the client has is set) and its other settings are
 * defaults, except role and session_authorization, which RESET ALL leaves
 * alone and their own resets below still undo. */
static int sync_sql(const pgs_params *client, pgs_params **server, const pgs_params *baseline,
                    bool reset_all, char *out, size_t cap)
{
    if (!client && !reset_all) return 0;
    size_t len = 0;
    if (reset_all && !put(out, cap, &len, "RESET ALL;")) return -1;
    const pgs_params *have_rep = reset_all ? baseline : *server;
    bool any_rep = false;
    for (int i = 0; i < PARAMS_REPORTED; i++) {
        const char *want = rep_get(client, i);
        const char *have = rep_get(have_rep, i);
        if (!want || (have && strcmp(want, have) == 0)) continue;
        /* set_config() takes the value exactly as a start-up parameter
         * would, so list values like search_path keep their meaning. */
        if (!put(out, cap, &len, any_rep ? ", " : "SELECT ")) return -1;
        if (!put(out, cap, &len, "pg_catalog.set_config(")) return -1;
        if (!put_literal(out, cap, &len, reported[i])) return -1;
        if (!put(out, cap, &len, ", ")) return -1;
        if (!put_literal(out, cap, &len, want)) return -1;
        if (!put(out, cap, &len, ", false)")) return -1;
        any_rep = true;
    }
    if (any_rep && !put(out, cap, &len, ";")) return -1;
    const pgs_params *sp = *server;
    for (int i = 0; sp && i < sp->n_extra; i++) {
        const char *name = sp->extra[i].name;
        if (find_extra(client, name)) continue;
        if (reset_all && strcmp(name, "role") != 0 && strcmp(name, "session_authorization") != 0)
            continue; /* RESET ALL did it */
        if (!put_reset(out, cap, &len, name)) return -1;
    }
    for (int i = 0; client && i < client->n_extra; i++) {
        const char *have = reset_all ? NULL : find_extra(sp, client->extra[i].name);
        if (have && strcmp(have, client->extra[i].stmt) == 0) continue;
        if (!put(out, cap, &len, client->extra[i].stmt) || !put(out, cap, &len, ";"))
            return -1;
    }
    if (len == 0) return 0;
    out[len] = '\0';
    /* The server will look like the client once this ran. */
    pgs_params *np = params_copy(client);
    params_fill_from(&np, reset_all && baseline ? baseline : *server);
    params_free(*server);
    *server = np;
    return (int)len;
}

int params_sync_sql(const pgs_params *client, pgs_params **server, char *out, size_t cap)
{
    return sync_sql(client, server, NULL, false, out, cap);
}

int params_sync_sql_reset(const pgs_params *client, pgs_params **server,
                          const pgs_params *baseline, char *out, size_t cap)
{
    return sync_sql(client, server, baseline, true, out, cap);
}

pgs_params *params_copy(const pgs_params *p)
{
    const char *vals[PARAMS_REPORTED];
    for (int i = 0; i < PARAMS_REPORTED; i++) vals[i] = rep_get(p, i);
    pgs_params *n = build(vals);
    for (int i = 0; p && i < p->n_extra; i++) params_set_extra(&n, p->extra[i].name, p->extra[i].stmt);
    return n;
}

void params_visit_output(const pgs_params *p, params_visit_fn fn, void *ctx)
{
    if (!p) return;
    for (int i = 0; i < PARAMS_REPORTED; i++) {
        const char *v = rep_get(p, i);
        if (!v || strcmp(reported[i], "application_name") == 0 ||
            strcmp(reported[i], "default_transaction_read_only") == 0)
            continue;
        fn(ctx, reported[i], v);
    }
    /* by name without sorting in place (the block may be shared) or
     * allocating: a client records a handful of settings */
    const char *last = NULL;
    for (int k = 0; k < p->n_extra; k++) {
        const extra *next = NULL;
        for (int i = 0; i < p->n_extra; i++) {
            const extra *e = &p->extra[i];
            if (last && strcmp(e->name, last) <= 0) continue;
            if (!next || strcmp(e->name, next->name) < 0) next = e;
        }
        if (!next) break;
        fn(ctx, next->name, next->stmt);
        last = next->name;
    }
}

void params_free(pgs_params *p)
{
    if (!p) return;
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) > 1) return;
    params_clear_extras(p);
    free(p);
}
