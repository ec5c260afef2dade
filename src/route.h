/* Which node runs a client's next unit of work (a simple Query, or the
 * extended-protocol messages up to a Sync).  With replicas configured, in
 * transaction pool mode, a unit the classifier proves to be a read goes to
 * a replica that is up, within max_replica_lag and (read-your-writes) past
 * the client's last write; everything else goes to the primary.  The
 * relay asks; it does not decide.  Without replicas every call is a cheap
 * "the primary". */
#ifndef PGS_ROUTE_H
#define PGS_ROUTE_H

#include "types.h"

/* c is going away: what routing counted for it is let go. */
void route_client_gone(pgs_client *c);

/* More than one node: routing is on. */
bool route_active(void);

/* The node of c's own pool at login: the primary, or for a client that
 * asked for a replica ("db@replica") a replica that can serve reads now
 * (the primary when none can). */
struct pgs_node *route_home_node(const pgs_client *c);

/* c has no server and a unit waiting in its buffer: the pool to check it
 * out from (c->pool, or the same user and database on a replica). */
pgs_pool *route_checkout(pgs_client *c);

/* A unit starts at msg (avail bytes held) while c is linked to sv: may it
 * go there?  false: hold it until sv is released (a write behind a read
 * on a replica).  Notes what the primary may have written. */
bool route_unit_allowed(pgs_client *c, pgs_server *sv, const uint8_t *msg, uint32_t avail);

/* c's read on sv failed before any byte of its answer reached the client,
 * and is about to be routed again (relay.c, "retrying a read"): sv's node
 * is not picked for it, and when the connection was lost (`lost`; not a
 * FATAL the server sent) the node is down for every read until the
 * monitor sees it answer.  Counted in SHOW NODES' retried. */
void route_read_failed(pgs_client *c, pgs_server *sv, bool lost, const char *why);

/* sv is done with c's work and about to be released: true when the
 * primary's WAL position must be read first (read-your-writes); the
 * caller sends ROUTE_LSN_QUERY as an internal query and releases the
 * server after its answer. */
bool route_wants_lsn(pgs_client *c, const pgs_server *sv);
/* The insert position, not pg_current_wal_lsn() (what is written out):
 * with synchronous_commit off a commit is acknowledged before its record
 * is written, and only the insert position is sure to be past it. */
#define ROUTE_LSN_QUERY "SELECT pg_catalog.pg_current_wal_insert_lsn()"
/* The answer: a DataRow's one text column ("16/B374D848"); false if it is
 * not one. */
bool route_lsn_row(pgs_client *c, const uint8_t *body, uint32_t len);
/* No position came back (the query failed): c's reads go to the primary
 * until the monitor has read the primary's position after now. */
void route_lsn_unknown(pgs_client *c);

/* "X/Y" (PostgreSQL's pg_lsn text) as a 64-bit position; false if it is
 * not one. */
bool route_parse_lsn(const char *s, size_t n, uint64_t *out);

/* The statement classifier's facts of text, from the worker's parse cache
 * (valid until the next call on the same worker). */
struct pgs_stmt_facts;
const struct pgs_stmt_facts *route_classify(pgs_worker *w, const char *text, size_t len);

/* The result cache (rcache.c, docs/cache.md "Replicas"): may a fill read on
 * sv now be stored?  Always on the primary; on a replica only when it has
 * replayed every write acknowledged so far.  Call it after the fill's
 * version snapshot, before its query is sent. */
bool route_cache_fill_ok(const pgs_server *sv);
/* c's write will have its WAL position read at release (counted until
 * then): false means call route_cache_write_unknown before bumping. */
bool route_cache_write_counted(const pgs_client *c);
/* A write whose position will not be read is about to bump versions. */
void route_cache_write_unknown(void);

#endif
