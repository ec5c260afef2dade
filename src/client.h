/* Client connections: accept, start-up (SSL/GSS refusal, cancel
 * requests, parameters), the welcome, errors and disconnects with reasons,
 * and the client-side time bounds. */
#ifndef PGS_CLIENT_H
#define PGS_CLIENT_H

#include "types.h"

void client_accept(pgs_worker *w, uv_stream_t *listener);
/* The pool has a server for c (a waiter or an immediate checkout). */
void client_server_ready(pgs_client *c, pgs_server *sv);
/* Sends a FATAL ErrorResponse and closes the client. */
void client_fail(pgs_client *c, const char *sqlstate, const char *msg, const char *hint);
/* c was waiting in a pool that cannot serve it (a replica that is down):
 * its request, not started anywhere, is routed again. */
void client_reroute(pgs_client *c);
/* The client has authenticated: on to the admin console or its pool. */
void client_after_auth(pgs_client *c);
/* The linked server died: tell the client (08006) and close it. */
void client_server_lost(pgs_client *c, const char *why);
/* Closes without a message (the client left, or already got one). */
void client_close(pgs_client *c, const char *reason);
void client_forward_cancel(pgs_client *c);
void client_janitor(pgs_worker *w, uint64_t now);
void client_close_all(pgs_worker *w);
const char *client_state_name(int state);

#endif
