/* auth.query: looking up a client's password secret in PostgreSQL itself
 * (pg_shadow, or a SECURITY DEFINER function), for users that are not in
 * the users file.  The lookups run on one thread of their own with libpq
 * (blocking calls, one connection, reused) in one fixed database,
 * auth.dbname, never in the database the client names: the owner of that
 * database could put a pg_shadow of their own in front of PostgreSQL's.
 * Results go back to the asking worker through its inbox.  Login path
 * only. */
#ifndef PGS_AUTHQUERY_H
#define PGS_AUTHQUERY_H

#include "types.h"

/* Starts the lookup thread when auth.user is set.  0, or -1 with err. */
PGS_MUSTCHECK int authquery_start(const pgs_config *cfg, char *err, size_t errlen);
void authquery_stop(void);
bool authquery_enabled(void);

/* Called on the asking worker's thread with the result: secret is the
 * user's stored password secret (NULL: no such user, or the lookup failed,
 * with the reason in error).  Both strings are the callee's to free. */
typedef void (*authquery_done_fn)(pgs_worker *w, uint32_t client_id, char *secret, char *error);

/* Queues a lookup of user for client client_id of worker w. */
void authquery_lookup(pgs_worker *w, uint32_t client_id, const char *user,
                      authquery_done_fn done);

#endif
