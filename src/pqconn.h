/* libpq connections pgscale opens for itself, off the data path (the
 * auth.query lookup, the node monitor): one place that applies server_tls,
 * the cleartext-password rule and a deadline to the whole connect. */
#ifndef PGS_PQCONN_H
#define PGS_PQCONN_H

#include <stdint.h>

#include <libpq-fe.h>

#include "config.h"

typedef struct pqconn_params {
    const pgs_config *cfg;   /* server_tls, server_allow_cleartext_password */
    const pgs_url *url;      /* host and port (no host: the default socket directory) */
    const char *user, *password, *dbname;
    const char *sslmode;     /* NULL: server_tls.sslmode */
    const char *application_name;
    const char *options;     /* startup options (-c ...), or NULL */
    const char *replication; /* "database" for a logical replication connection, or NULL */
    uint32_t timeout_ms;     /* for connecting and logging in, together */
    const char *what;        /* "auth.query", "monitor: replica1": starts every error */
} pqconn_params;

/* A connection in CONNECTION_OK, or NULL with *error (heap, the caller's
 * to free) saying why. */
PGconn *pqconn_open(const pqconn_params *p, char **error);

/* Sends sql and waits for its one result until deadline_ms (CLOCK_MONOTONIC
 * milliseconds, see pqconn_now_ms).  NULL on timeout or a broken
 * connection, with *error set; the connection is then unusable. */
PGresult *pqconn_exec(PGconn *c, const char *sql, int64_t deadline_ms, char **error);

int64_t pqconn_now_ms(void);

/* "what: detail" without libpq's trailing newline, on the heap. */
char *pqconn_error_text(const char *what, const char *detail);

#endif
