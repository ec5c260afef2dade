/* Session settings that must follow a client from one pooled server
 * connection to the next: the parameters PostgreSQL reports with
 * ParameterStatus (tracked from the server's own messages) and other
 * settings made with SET (recorded from the statement text). */
#ifndef PGS_PARAMS_H
#define PGS_PARAMS_H

#include "types.h"

#define PARAMS_REPORTED 7

/* Records a reported parameter's value; ignores names not tracked. */
void params_set(pgs_params **pp, const char *name, const char *value);
const char *params_get(const pgs_params *p, const char *name);
/* Index of a tracked reported parameter (case-insensitive), or -1. */
int params_reported_index(const char *name);
const char *params_reported_name(int i);
/* Records (stmt != NULL) or forgets (stmt == NULL) a non-reported setting. */
void params_set_extra(pgs_params **pp, const char *name, const char *stmt);
void params_clear_extras(pgs_params *p);
/* Builds one simple-query text that makes a server with settings *server
 * look like the client's; updates *server to match.  Returns its length,
 * 0 when nothing differs, -1 when it does not fit in cap. */
int params_sync_sql(const pgs_params *client, pgs_params **server, char *out, size_t cap);
/* The same, starting with RESET ALL: also undoes what pgscale never saw
 * (a set_config inside a function).  baseline holds the server's reported
 * parameters as they were at its login, which is where RESET ALL takes
 * them.  Never returns 0. */
int params_sync_sql_reset(const pgs_params *client, pgs_params **server,
                          const pgs_params *baseline, char *out, size_t cap);
/* A private copy (settings and extras). */
pgs_params *params_copy(const pgs_params *p);
/* Shares p (copy on write: the functions taking pgs_params ** copy a
 * shared block before changing it). */
pgs_params *params_ref(pgs_params *p);
/* A block of the reported parameters among names/values (a pool's welcome). */
pgs_params *params_from_lists(int n, char **names, char **values);
/* Sets the reported parameters *pp lacks to base's values. */
void params_fill_from(pgs_params **pp, const pgs_params *base);
/* Calls fn for each setting of p that can change the bytes of a query's
 * answer, in an order that depends only on the settings (the result
 * cache's key): the reported parameters but application_name and
 * default_transaction_read_only, by index, then every recorded setting
 * (value: the statement that made it), by name. */
typedef void (*params_visit_fn)(void *ctx, const char *name, const char *value);
void params_visit_output(const pgs_params *p, params_visit_fn fn, void *ctx);
/* Drops one reference. */
void params_free(pgs_params *p);

#endif
