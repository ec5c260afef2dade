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

struct pgs_params {
    char *rep[PARAMS_REPORTED];
    int n_extra;
    extra *extra;
};

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

static pgs_params *ensure(pgs_params **pp)
{
    if (!*pp) *pp = pgs_xcalloc(1, sizeof(pgs_params));
    return *pp;
}

void params_set(pgs_params **pp, const char *name, const char *value)
{
    int i = params_reported_index(name);
    if (i < 0) return;
    pgs_params *p = ensure(pp);
    if (p->rep[i] && strcmp(p->rep[i], value) == 0) return;
    free(p->rep[i]);
    p->rep[i] = pgs_xstrdup(value);
}

const char *params_get(const pgs_params *p, const char *name)
{
    int i = params_reported_index(name);
    if (!p || i < 0) return NULL;
    return p->rep[i];
}

void params_set_extra(pgs_params **pp, const char *name, const char *stmt)
{
    pgs_params *p = ensure(pp);
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
    if (!p) return;
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

int params_sync_sql(const pgs_params *client, pgs_params **server, char *out, size_t cap)
{
    if (!client) return 0;
    size_t len = 0;
    bool any_rep = false;
    for (int i = 0; i < PARAMS_REPORTED; i++) {
        const char *want = client->rep[i];
        const char *have = *server ? (*server)->rep[i] : NULL;
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
        if (find_extra(client, sp->extra[i].name)) continue;
        if (!put_reset(out, cap, &len, sp->extra[i].name)) return -1;
    }
    for (int i = 0; i < client->n_extra; i++) {
        const char *have = find_extra(sp, client->extra[i].name);
        if (have && strcmp(have, client->extra[i].stmt) == 0) continue;
        if (!put(out, cap, &len, client->extra[i].stmt) || !put(out, cap, &len, ";"))
            return -1;
    }
    if (len == 0) return 0;
    out[len] = '\0';
    /* The server will look like the client once this ran. */
    pgs_params *np = params_copy(client);
    if (*server) {
        for (int i = 0; i < PARAMS_REPORTED; i++) {
            if (!np->rep[i] && (*server)->rep[i]) np->rep[i] = pgs_xstrdup((*server)->rep[i]);
        }
    }
    params_free(*server);
    *server = np;
    return (int)len;
}

pgs_params *params_copy(const pgs_params *p)
{
    pgs_params *n = pgs_xcalloc(1, sizeof(*n));
    if (!p) return n;
    for (int i = 0; i < PARAMS_REPORTED; i++)
        if (p->rep[i]) n->rep[i] = pgs_xstrdup(p->rep[i]);
    for (int i = 0; i < p->n_extra; i++) params_set_extra(&n, p->extra[i].name, p->extra[i].stmt);
    return n;
}

void params_free(pgs_params *p)
{
    if (!p) return;
    for (int i = 0; i < PARAMS_REPORTED; i++) free(p->rep[i]);
    params_clear_extras(p);
    free(p);
}
