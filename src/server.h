/* Server connections: connect, log in (trust, password, md5, SCRAM),
 * close, and hand over between workers.  Relaying bytes is relay.c's. */
#ifndef PGS_SERVER_H
#define PGS_SERVER_H

#include "types.h"

/* Opens a new server connection for pool p (budget already taken). */
void server_open(pgs_pool *p);
/* Closes a server for good (gives its budget back). */
void server_close(pgs_server *sv, const char *reason);
/* Moves an idle server to worker `to` without reconnecting. */
void server_handoff(pgs_server *sv, int to);
/* Takes over a server handed to worker w. */
PGS_MUSTCHECK int server_adopt(pgs_worker *w, pgs_pool *p, pgs_server *sv);
void server_check_login_timeouts(pgs_pool *p, uint64_t now);
void server_close_all(pgs_worker *w);
/* The pid a NotificationResponse from backend_pid should carry for the
 * clients that receive it: the pid pgscale gave the transaction-mode client
 * that backend serves (or served last), or backend_pid itself when it is
 * not one of pgscale's server connections or serves a session-mode client.
 * Any thread. */
uint32_t server_sender_pid(uint32_t backend_pid);
/* Sends one of our own simple queries; its replies are swallowed. */
PGS_MUSTCHECK int server_send_internal(pgs_server *sv, const char *sql, size_t len);
const char *server_state_name(int state);

#endif
