/* The result cache's admission decision (cache_decide): hints, the
 * per-database/user switch, the classifier's CACHEABLE proof and the rules
 * of cache.rules, in that order.  It owns no state; storing, keying and
 * invalidating answers belong to the cache store, not here. */
#include "cacherule.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <pg_query.h>
#include <xxhash.h>

int cacherule_fingerprint(const char *sql, uint64_t *out, char *why, size_t whylen)
{
    PgQueryFingerprintResult r = pg_query_fingerprint(sql);
    int rc = 0;
    if (r.error) {
        snprintf(why, whylen, "does not parse: %s (at character %d)",
                 r.error->message ? r.error->message : "syntax error", r.error->cursorpos);
        /* PostgreSQL's message quotes the text near the error, line breaks
         * and all: a configuration error is one line */
        for (char *p = why; *p; p++)
            if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
        rc = -EINVAL;
    } else {
        *out = r.fingerprint;
    }
    pg_query_free_fingerprint_result(r);
    return rc;
}

/* A rule's table ("name" or "schema.name") against one name the statement
 * reads.  A bare rule name matches the name in any schema (and unqualified);
 * a qualified one only the same schema written out in the statement, since
 * an unqualified name's schema depends on the session's search_path. */
static bool table_matches(const char *rule, const pgs_name *n)
{
    const char *dot = strchr(rule, '.');
    if (!dot) return strcasecmp(rule, n->name) == 0;
    size_t sl = (size_t)(dot - rule);
    return n->schema && strlen(n->schema) == sl && strncasecmp(rule, n->schema, sl) == 0 &&
           strcasecmp(dot + 1, n->name) == 0;
}

bool cacherule_matches(const pgs_cache_rule *r, const char *db, const char *user,
                       const pgs_stmt_facts *f)
{
    if (r->database && (!db || strcmp(r->database, db) != 0)) return false;
    if (r->user && (!user || strcmp(r->user, user) != 0)) return false;
    if (r->kind == PGS_CACHE_RULE_FINGERPRINT)
        return f->fingerprint != 0 && f->fingerprint == r->fingerprint;
    /* Every table read must be listed.  An incomplete list of reads could
     * hide one that is not, and a statement that reads no table at all is
     * not what a rule about tables speaks of. */
    if ((f->flags & PGS_FACT_READS_OVERFLOW) || f->n_reads == 0) return false;
    for (uint8_t i = 0; i < f->n_reads; i++) {
        bool found = false;
        for (int t = 0; t < r->n_tables && !found; t++)
            found = table_matches(r->tables[t], &f->reads[i]);
        if (!found) return false;
    }
    return true;
}

uint32_t cache_decide(const pgs_cache_config *cc, const char *db, const char *user,
                      bool enabled_here, const pgs_stmt_facts *f, int *rule)
{
    if (rule) *rule = -1;
    if (!cc->enabled || (f->flags & PGS_FACT_HINT_NOCACHE)) return 0;
    if (!enabled_here) return 0;
    /* The one proof the cache rests on: a hint or a rule is the operator's
     * wish about freshness, never evidence that the answer is a pure
     * function of the tables read. */
    if (!(f->flags & PGS_FACT_CACHEABLE)) return 0;
    if (f->flags & PGS_FACT_HINT_CACHE) return f->hint_ttl_ms ? f->hint_ttl_ms : cc->ttl_ms;
    if (cc->n_rules == 0) return cc->ttl_ms;
    for (int i = 0; i < cc->n_rules; i++) {
        const pgs_cache_rule *r = &cc->rules[i];
        if (!cacherule_matches(r, db, user, f)) continue;
        if (rule) *rule = i;
        return r->ttl_ms ? r->ttl_ms : cc->ttl_ms;
    }
    return 0;
}

static uint64_t sig_bytes(uint64_t h, const void *p, size_t n)
{
    return XXH3_64bits_withSeed(p, n, h);
}

static uint64_t sig_str(uint64_t h, const char *s)
{
    /* NULL and "" differ: a rule for any database is not one for "" */
    return s ? sig_bytes(h ^ 1, s, strlen(s) + 1) : sig_bytes(h, "", 0);
}

uint64_t cacherule_signature(const pgs_cache_config *cc)
{
    uint64_t h = sig_bytes(0, &cc->n_rules, sizeof(cc->n_rules));
    for (int i = 0; i < cc->n_rules; i++) {
        const pgs_cache_rule *r = &cc->rules[i];
        uint64_t fixed[3] = {(uint64_t)r->kind, r->fingerprint, r->ttl_ms};
        h = sig_bytes(h, fixed, sizeof(fixed));
        for (int t = 0; t < r->n_tables; t++) h = sig_str(h, r->tables[t]);
        h = sig_str(h, r->database);
        h = sig_str(h, r->user);
    }
    return h;
}
