/* Where a PostgreSQL server is reached, decided from a URL's host and port
 * as libpq decides it: a host that starts with '/' is a directory holding
 * the server's Unix socket (.s.PGSQL.<port>), no host at all means the
 * default socket directory, anything else is a TCP host name or address.
 * Every connection pgscale makes to PostgreSQL goes through one of these
 * (pools, cancel requests; auth.query hands the same host to libpq). */
#ifndef PGS_ENDPOINT_H
#define PGS_ENDPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <uv.h>

#include "common.h"
#include "config.h"

/* libpq's default socket directory as Debian builds it (DEFAULT_PGSOCKET_DIR). */
#define PGS_DEFAULT_SOCKET_DIR "/var/run/postgresql"

typedef struct pgs_endpoint {
    bool is_unix;
    struct sockaddr_storage addr;                     /* TCP */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* Unix: the socket file */
    char text[300];  /* for messages: "host:port", or the socket file's path */
} pgs_endpoint;

/* Fills ep from u (host, port; 5432 when absent); a TCP host is resolved
 * now.  On failure err says what to change (the caller names the URL). */
PGS_MUSTCHECK int endpoint_resolve(const pgs_url *u, pgs_endpoint *ep, char *err, size_t errlen);

/* Checks a URL's host without resolving anything: a Unix socket path
 * must fit in sun_path, and abstract-namespace names ('@') are refused. */
PGS_MUSTCHECK int endpoint_check_host(const char *host, int port, char *err, size_t errlen);

/* True when u's host (as libpq reads it) is a Unix socket directory. */
bool endpoint_url_is_unix(const pgs_url *u);

/* Initialises h (a pgs_sock's handle union, or any handle of the same
 * layout) as a pipe or a TCP handle to match ep. */
int endpoint_handle_init(const pgs_endpoint *ep, uv_loop_t *loop, uv_handle_t *h);

/* Starts connecting h (initialised by endpoint_handle_init) to ep. */
int endpoint_connect(const pgs_endpoint *ep, uv_connect_t *req, uv_handle_t *h, uv_connect_cb cb);

/* "connection to <where> failed: <why>" for a failed connect (a libuv
 * error code), with what to check for the errors a Unix socket gives. */
void endpoint_connect_error(const pgs_endpoint *ep, int status, char *buf, size_t n);

#endif
