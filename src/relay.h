/* Relaying messages between a client and its server: framing, the
 * expected-response queue, prepared-statement renaming, session settings,
 * transaction boundaries (when a server goes back to the pool). */
#ifndef PGS_RELAY_H
#define PGS_RELAY_H

#include "types.h"

/* Processes what the client sent; called on every read and whenever a
 * server becomes available or a write drains. */
void relay_client_data(pgs_client *c);
/* The ReadyForQuery (status) that rcache_ready held back goes to c now,
 * and c's requests that waited behind it go on. */
void relay_ready_release(pgs_client *c, char status);
/* Processes what the linked (or resetting) server sent. */
void relay_server_data(pgs_server *sv);
/* Links c and sv and sends whatever is needed to make sv look like the
 * client's session (settings); then relays what the client has queued. */
void relay_link(pgs_client *c, pgs_server *sv);
/* The client is gone while linked to sv: clean sv and return it, or
 * close it when that cannot be done safely. */
void relay_client_gone(pgs_client *c);

/* c's server sv failed (lost: the connection broke; else it sent a FATAL
 * with sqlstate) while c's unit ran there: when that unit is a read that
 * may run again (see relay.c, "retrying a read"), sv is closed and the
 * unit routed again, and true is returned; false: the caller fails the
 * client as before. */
bool relay_retry_read(pgs_client *c, pgs_server *sv, bool lost, const char *why,
                      const char *sqlstate);
/* Forgets a kept copy of c's unit (c is closing). */
void relay_retry_drop(pgs_client *c);

/* Pinning (transaction mode, see relay.c): the reasons in `mask`
 * (SQLSCAN_STATE_*) as "temp,listen"; and the client's pin given up (its
 * slot of max_pinned back), when it is gone. */
void relay_pin_names(unsigned mask, char *buf, size_t n);
void relay_unpin_all(pgs_client *c);

/* The result cache answered c's extended-protocol unit without a server
 * (parse: the unit's Parse body, or NULL): c's statements and portals
 * change as if a server had answered.  -1 (nothing changed): the unit must
 * go to a server instead. */
PGS_MUSTCHECK int relay_cache_answered(pgs_client *c, const uint8_t *parse, uint32_t plen);

PGS_MUSTCHECK int exq_push(pgs_expect_q *q, uint8_t kind, pgs_stmt *st, const char *tag);
void exq_clear(pgs_expect_q *q);
void exq_free(pgs_expect_q *q);

#endif
