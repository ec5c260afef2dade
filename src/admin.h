/* The admin console: the virtual database "pgscale" on the same port,
 * answering SHOW commands from every worker's counters and lists. */
#ifndef PGS_ADMIN_H
#define PGS_ADMIN_H

#include "types.h"

#define ADMIN_DBNAME "pgscale"

/* Sends the login answer for an admin client. */
void admin_welcome(pgs_client *c);
/* Handles what an admin client sent. */
void admin_data(pgs_client *c);

#endif
