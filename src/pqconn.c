/* Blocking libpq connections for pgscale's own threads (see pqconn.h).
 * Never used on the data path: the workers speak the protocol themselves. */
#include "pqconn.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "endpoint.h"
#include "tls.h"

int64_t pqconn_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *pqconn_error_text(const char *what, const char *detail)
{
    char msg[600];
    snprintf(msg, sizeof(msg), "%s: %s", what, detail);
    size_t l = strlen(msg);
    while (l > 0 && (msg[l - 1] == '\n' || msg[l - 1] == ' ')) msg[--l] = '\0';
    return pgs_xstrdup(msg);
}

/* The server's first answer to the startup packet, read with MSG_PEEK
 * before libpq sees it: 1 when it asks for a cleartext password, 0 when it
 * asks for anything else (or says something else), -1 when it did not
 * come in time.  Right after libpq sent the startup packet it has read
 * nothing, so the first message is whole in the socket. */
static int first_request_is_cleartext(int fd, int64_t deadline)
{
    for (;;) {
        unsigned char h[9];
        ssize_t n = recv(fd, h, sizeof(h), MSG_PEEK | MSG_DONTWAIT);
        if (n == 0 || (n > 0 && h[0] != 'R')) return 0;
        if (n == (ssize_t)sizeof(h)) {
            uint32_t code = (uint32_t)h[5] << 24 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 8 | h[8];
            return code == 3 ? 1 : 0;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return 0;
        int64_t left = deadline - pqconn_now_ms();
        if (left <= 0) return -1;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        /* part of a message: poll() would say "readable" at once, so wait
         * a little instead */
        if (n > 0) poll(NULL, 0, 5);
        else poll(&p, 1, (int)(left > 1000 ? 1000 : left));
    }
}

/* A Unix socket protects a password as TLS does (server.c's rule). */
static bool is_unix_socket(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    return getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_UNIX;
}

/* PQconnectdbParams, step by step, so that the server's first
 * authentication request can be looked at before libpq answers it: libpq 15
 * has no require_auth, and without this it would send the password in
 * clear text to any server (or man in the middle) that asks for it on a
 * connection without TLS.  The same rule as server.c's, the same setting.
 * libpq still answers a cleartext request that comes later in the exchange
 * (after a SASL start), which only a hostile server sends.  The deadline
 * covers the whole exchange (libpq's connect_timeout only each step). */
static PGconn *connect_guarded(const pqconn_params *pp, const char *const *keys,
                               const char *const *vals, char **error)
{
    PGconn *c = PQconnectStartParams(keys, vals, 0);
    if (!c || PQstatus(c) == CONNECTION_BAD) return c;
    bool guard = !pp->cfg->server_allow_cleartext_password;
    int64_t deadline = pqconn_now_ms() + (int64_t)pp->timeout_ms;
    char msg[600];
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    ConnStatusType last = CONNECTION_STARTED;
    while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        int fd = PQsocket(c);
        int64_t left = deadline - pqconn_now_ms();
        if (fd < 0 || left <= 0) {
            snprintf(msg, sizeof(msg), "%s could not connect: timed out", pp->what);
            *error = pgs_xstrdup(msg);
            PQfinish(c);
            return NULL;
        }
        struct pollfd p = {.fd = fd, .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
        poll(&p, 1, (int)(left > 1000 ? 1000 : left));
        ConnStatusType now = PQstatus(c);
        if (guard && st == PGRES_POLLING_READING && now == CONNECTION_AWAITING_RESPONSE &&
            last != CONNECTION_AWAITING_RESPONSE && !PQsslInUse(c) && !is_unix_socket(fd)) {
            int r = first_request_is_cleartext(fd, deadline);
            if (r != 0) {
                if (r < 0)
                    snprintf(msg, sizeof(msg), "%s could not connect: timed out", pp->what);
                else
                    snprintf(msg, sizeof(msg),
                             "%s could not connect as %s: the server asks for the password in "
                             "clear text on a connection without TLS; pgscale does not send it "
                             "(use scram-sha-256 in pg_hba.conf, TLS toward the server, or "
                             "server_allow_cleartext_password: on)",
                             pp->what, pp->user ? pp->user : "(default user)");
                *error = pgs_xstrdup(msg);
                PQfinish(c);
                return NULL;
            }
        }
        last = now;
        st = PQconnectPoll(c);
    }
    return c;
}

PGconn *pqconn_open(const pqconn_params *pp, char **error)
{
    *error = NULL;
    const pgs_url *u = pp->url;
    char port[16];
    snprintf(port, sizeof(port), "%d", u->port ? u->port : 5432);
    /* libpq's own bound per step; ours (the deadline) covers them all */
    char timeout[16];
    snprintf(timeout, sizeof(timeout), "%u", (pp->timeout_ms + 999) / 1000);
    const pgs_server_tls_config *st = &pp->cfg->server_tls;
    const char *keys[] = {"host", "port", "dbname", "user", "password", "connect_timeout",
                          "application_name", "sslmode", "channel_binding", "options",
                          "sslrootcert", "sslcert", "sslkey", "replication", NULL};
    /* the host as the pools read it: no host is the default socket
     * directory (libpq would look at PGHOST first) */
    const char *host = u->host && *u->host ? u->host : PGS_DEFAULT_SOCKET_DIR;
    const char *vals[] = {host, port, pp->dbname, pp->user, pp->password, timeout,
                          pp->application_name,
                          pp->sslmode ? pp->sslmode : tls_sslmode_name(st->sslmode),
                          tls_channel_binding_name(st->channel_binding), pp->options,
                          st->ca, st->cert, st->key, pp->replication, NULL};
    PGconn *c = connect_guarded(pp, keys, vals, error);
    if (!c) {
        if (!*error) {
            char msg[200];
            snprintf(msg, sizeof(msg), "%s could not connect: out of memory", pp->what);
            *error = pgs_xstrdup(msg);
        }
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        char what[300];
        snprintf(what, sizeof(what), "%s could not connect as %s to database %s", pp->what,
                 pp->user ? pp->user : "(default user)", pp->dbname ? pp->dbname : "(default)");
        *error = pqconn_error_text(what, PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    return c;
}

PGresult *pqconn_exec(PGconn *c, const char *sql, int64_t deadline_ms, char **error)
{
    *error = NULL;
    if (!PQsendQuery(c, sql)) {
        *error = pqconn_error_text("could not send the query", PQerrorMessage(c));
        return NULL;
    }
    PGresult *res = NULL;
    for (;;) {
        while (!PQisBusy(c)) {
            PGresult *r = PQgetResult(c);
            if (!r) return res; /* every result read */
            if (res) PQclear(res);
            res = r;
        }
        int64_t left = deadline_ms - pqconn_now_ms();
        if (left <= 0) {
            if (res) PQclear(res);
            *error = pgs_xstrdup("no answer in time (health_check_timeout)");
            return NULL;
        }
        struct pollfd p = {.fd = PQsocket(c), .events = POLLIN};
        if (p.fd < 0) break;
        poll(&p, 1, (int)(left > 1000 ? 1000 : left));
        if (!PQconsumeInput(c)) break;
    }
    if (res) PQclear(res);
    *error = pqconn_error_text("connection lost", PQerrorMessage(c));
    return NULL;
}
