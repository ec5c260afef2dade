/* REDIS_URL and a blocking Redis connection (hiredis) for threads that
 * may wait: the failover lock on a monitor thread.  The result cache's
 * Redis tier runs on the workers' event loops and needs a non-blocking
 * client; it can share the URL parser, not the connection. */
#ifndef PGS_REDIS_H
#define PGS_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

struct redisContext;

typedef struct pgs_redis_url {
    bool unix_socket;
    char *host;      /* redis://: the host, IPv6 without brackets */
    int port;        /* redis://: 6379 when not given */
    char *path;      /* unix://: the socket's path */
    char *user;      /* an ACL user (Redis 6+); NULL: none */
    char *password;  /* NULL: no AUTH */
    int db;          /* SELECT db when not 0 */
} pgs_redis_url;

/* Parses redis://[[user]:password@]host[:port][/db][?db=N&password=P] and
 * unix://[[user]:password@]/path[?db=N&password=P] (a lone "secret@" is the
 * password, as before Redis had users; user, password and path are
 * percent-decoded).  rediss:// (TLS) is refused: the hiredis this is built
 * on has no TLS.  Errors name the part that is wrong and never echo the
 * URL, which usually carries a password.  On success free with
 * redis_url_free. */
PGS_MUSTCHECK int redis_url_parse(const char *text, pgs_redis_url *out, char *err,
                                  size_t errlen);
void redis_url_free(pgs_redis_url *u);
/* "host:port" or the socket path (and " db N" when not 0): for messages,
 * without secrets. */
void redis_url_where(const pgs_redis_url *u, char *buf, size_t len);

/* Connects (each step bounded by timeout_ms: connect, AUTH, SELECT, and
 * every later command on the context).  0 with *out, or a negative code
 * with the reason in err. */
PGS_MUSTCHECK int redis_connect(const pgs_redis_url *u, uint32_t timeout_ms,
                                struct redisContext **out, char *err, size_t errlen);

#endif
