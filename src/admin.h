/* The admin console: the virtual database "pgscale" on the same port:
 * SHOW commands from every worker's counters and lists, and RELOAD, PAUSE,
 * RESUME, KILL, WAIT_CLOSE and SHUTDOWN for admin_users. */
#ifndef PGS_ADMIN_H
#define PGS_ADMIN_H

#include "types.h"

#define ADMIN_DBNAME "pgscale"

/* c (authenticated, database "pgscale") may use the console: 0; else it
 * was refused (FATAL 28000) and -1. */
PGS_MUSTCHECK int admin_login(pgs_client *c);
/* Sends the login answer for an admin client. */
void admin_welcome(pgs_client *c);
/* Handles what an admin client sent. */
void admin_data(pgs_client *c);
/* Finishes PAUSE / WAIT_CLOSE / KILL whose conditions are met or whose
 * time is up (worker thread, from the janitor). */
void admin_janitor(pgs_worker *w, uint64_t now);
/* A cancel request for an admin client: a waiting command gives up. */
void admin_cancel(pgs_client *c);
/* The admin client is closing. */
void admin_client_gone(pgs_client *c);
/* Warns when the console is open to every user (no admin_users or
 * stats_users). */
void admin_check_config(const pgs_config *cfg);

#endif
