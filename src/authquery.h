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

/* Asks for user's secret for client client_id of worker w, connected from
 * addr (NULL: a Unix socket, which no per-address bound applies to).
 * AQ_QUEUED: done is called later on w's thread -- after the lookups of
 * addr ahead of it when addr already has auth.query_max_per_address in
 * the queue.  AQ_NO_USER: answered at once, without PostgreSQL, as "no
 * such user": a lookup said so less than auth.query_negative_ttl ago. */
enum { AQ_QUEUED = 0, AQ_NO_USER = 1 };
int authquery_lookup(pgs_worker *w, uint32_t client_id, const char *user, const char *addr,
                     authquery_done_fn done);
/* The client of a queued lookup left: the lookup is dropped unless it is
 * already running (its answer then finds no client). */
void authquery_cancel(pgs_worker *w, uint32_t client_id, const char *addr);

/* Forgets every remembered "no such user" (RELOAD: a user created since
 * can log in at once). */
void authquery_forget(void);

#endif
