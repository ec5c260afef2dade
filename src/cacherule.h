/* Which statements the result cache keeps, and for how long: the decision
 * taken per statement from the cache settings (cache: in the config file),
 * the per-database and per-user switch, the statement's hints and what the
 * classifier proved about it.  docs/cache.md, "What is cached". */
#ifndef PGS_CACHERULE_H
#define PGS_CACHERULE_H

#include "classify.h"
#include "config.h"

/* The TTL in milliseconds to cache the answer of a statement with facts f,
 * run by user in db, or 0: do not cache it.  enabled_here is the resolved
 * per-pool switch (pgs_pool_settings.cache: cache.enabled and the cache:
 * keys of databases: and users:), resolved once per pool rather than
 * searched for on every statement.  *rule (may be NULL) is set to the index
 * of the cache.rules entry that decided, or -1.  The precedence, first
 * that applies:
 *   1. cache.enabled off, or a pgscale:nocache hint        -> 0
 *   2. cache: off for this database or user                -> 0
 *   3. not CACHEABLE (whatever the rules or hints say)     -> 0
 *   4. a pgscale:cache hint                                -> its ttl=, else cache.ttl
 *   5. rules present: the first matching rule              -> its ttl; none matches -> 0
 *   6. no rules                                            -> cache.ttl
 * No allocation, no lock: called on the data path. */
uint32_t cache_decide(const pgs_cache_config *cc, const char *db, const char *user,
                      bool enabled_here, const pgs_stmt_facts *f, int *rule);

/* Whether rule r matches (tables, fingerprint, database, user); exposed
 * for SHOW CACHE and tests. */
bool cacherule_matches(const pgs_cache_rule *r, const char *db, const char *user,
                       const pgs_stmt_facts *f);

/* A hash of cache.rules (what each matches and its TTL): two configurations
 * with the same rules have the same signature. */
uint64_t cacherule_signature(const pgs_cache_config *cc);

/* The pg_query_fingerprint of sql (a query: rule).  0, or -EINVAL with the
 * parser's message in why when sql does not parse. */
PGS_MUSTCHECK int cacherule_fingerprint(const char *sql, uint64_t *out, char *why,
                                        size_t whylen);

#endif
