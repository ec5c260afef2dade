/* Server pools per (user, database): pool_size kept, up to max_overflow
 * more under load, FIFO waiting with pool_timeout, and the cross-worker
 * budget that keeps the total within pool_size + max_overflow. */
#ifndef PGS_POOL_H
#define PGS_POOL_H

#include "types.h"

pgs_pool *pool_get(pgs_worker *w, const char *user, const char *database);

/* Gives c a server now (client_server_ready) or queues it. */
void pool_checkout(pgs_pool *p, pgs_client *c);
/* Takes c out of the waiting queue, if it is there. */
void pool_cancel_wait(pgs_client *c);
/* A server that is idle (ReadyForQuery 'I', nothing owed) goes back. */
void pool_release(pgs_server *sv);
/* A server finished logging in. */
void pool_server_ready(pgs_server *sv);
/* Opening a server failed; server_error is true for an ErrorResponse the
 * server sent (bad password, no such database), false for a network error. */
void pool_server_failed(pgs_pool *p, bool server_error, const char *sqlstate,
                        const char *msg);
/* Bookkeeping when a server connection is gone for good. */
void pool_server_gone(pgs_server *sv);

void pool_janitor(pgs_worker *w, uint64_t now);
void pool_adopt_handoffs(pgs_worker *w, pgs_pool_shared *sh);
void pool_give_idle(pgs_worker *w, pgs_pool_shared *sh);

/* Welcome parameters (ParameterStatus from the first server login). */
void pool_set_welcome(pgs_pool_shared *sh, int n, char **names, char **values);
bool pool_has_welcome(pgs_pool_shared *sh);

#endif
