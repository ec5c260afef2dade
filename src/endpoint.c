/* Server endpoints: TCP address or Unix socket file (see endpoint.h). */
#include "endpoint.h"

#include <errno.h>
#include <netdb.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "net.h"

static int url_port(const pgs_url *u)
{
    return u->port ? u->port : 5432;
}

/* libpq's host: empty or absent means its default socket directory. */
static const char *url_host(const pgs_url *u)
{
    return u->host && *u->host ? u->host : PGS_DEFAULT_SOCKET_DIR;
}

bool endpoint_url_is_unix(const pgs_url *u)
{
    return url_host(u)[0] == '/';
}

int endpoint_check_host(const char *host, int port, char *err, size_t errlen)
{
    if (!host || !*host) host = PGS_DEFAULT_SOCKET_DIR;
    if (host[0] == '@') {
        snprintf(err, errlen,
                 "host \"%s\" names an abstract-namespace Unix socket, which pgscale does not "
                 "support; give the server's socket directory (e.g. host=/var/run/postgresql) "
                 "or a TCP host",
                 host);
        return -EINVAL;
    }
    if (host[0] != '/') return 0;
    char path[512];
    int n = snprintf(path, sizeof(path), "%s%s.s.PGSQL.%d", host,
                     host[strlen(host) - 1] == '/' ? "" : "/", port ? port : 5432);
    if (n < 0 || (size_t)n >= sizeof(((pgs_endpoint *)0)->path)) {
        snprintf(err, errlen,
                 "the Unix socket path in socket directory \"%.200s\" is %d bytes long; the "
                 "system allows at most %zu: use a shorter directory (PostgreSQL's "
                 "unix_socket_directories)",
                 host, n, sizeof(((pgs_endpoint *)0)->path) - 1);
        return -ENAMETOOLONG;
    }
    return 0;
}

int endpoint_resolve(const pgs_url *u, pgs_endpoint *ep, char *err, size_t errlen)
{
    memset(ep, 0, sizeof(*ep));
    const char *host = url_host(u);
    int port = url_port(u);
    if (endpoint_check_host(host, port, err, errlen) < 0) return -EINVAL;
    if (host[0] == '/') {
        ep->is_unix = true;
        snprintf(ep->path, sizeof(ep->path), "%s%s.s.PGSQL.%d", host,
                 host[strlen(host) - 1] == '/' ? "" : "/", port);
        snprintf(ep->text, sizeof(ep->text), "%s", ep->path);
        return 0;
    }
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "cannot resolve host \"%s\": %s", host, gai_strerror(rc));
        if (res) freeaddrinfo(res);
        return -EINVAL;
    }
    memcpy(&ep->addr, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    snprintf(ep->text, sizeof(ep->text), "%s:%d", host, port);
    return 0;
}

int endpoint_handle_init(const pgs_endpoint *ep, uv_loop_t *loop, uv_handle_t *h)
{
    if (ep->is_unix) return pgs_net->pipe_init(loop, (uv_pipe_t *)h, 0);
    return pgs_net->tcp_init(loop, (uv_tcp_t *)h);
}

int endpoint_connect(const pgs_endpoint *ep, uv_connect_t *req, uv_handle_t *h, uv_connect_cb cb)
{
    if (ep->is_unix) return pgs_net->pipe_connect(req, (uv_pipe_t *)h, ep->path, cb);
    return pgs_net->tcp_connect(req, (uv_tcp_t *)h, (const struct sockaddr *)&ep->addr, cb);
}

/* The directory part of a socket path ("/" for a file in the root). */
static void socket_dir(const char *path, char *dir, size_t n)
{
    snprintf(dir, n, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = '\0';
    else if (slash) *slash = '\0';
}

void endpoint_connect_error(const pgs_endpoint *ep, int status, char *buf, size_t n)
{
    if (!ep->is_unix) {
        snprintf(buf, n, "connection to %s failed: %s", ep->text, uv_strerror(status));
        return;
    }
    char dir[sizeof(ep->path)];
    socket_dir(ep->path, dir, sizeof(dir));
    const char *port = strrchr(ep->path, '.') + 1;
    struct stat st;
    switch (status) {
    case UV_ENOENT:
        if (stat(dir, &st) != 0)
            snprintf(buf, n,
                     "connection to server on socket \"%s\" failed: the directory %s does not "
                     "exist; the host in the server URL must be one of PostgreSQL's "
                     "unix_socket_directories",
                     ep->path, dir);
        else
            snprintf(buf, n,
                     "connection to server on socket \"%s\" failed: no such file; is PostgreSQL "
                     "running with port = %s and %s in its unix_socket_directories?",
                     ep->path, port, dir);
        return;
    case UV_EACCES:
    case UV_EPERM: {
        char user[64];
        struct passwd pw, *found = NULL;
        char pwbuf[1024];
        if (getpwuid_r(geteuid(), &pw, pwbuf, sizeof(pwbuf), &found) == 0 && found)
            snprintf(user, sizeof(user), "\"%s\"", found->pw_name);
        else
            snprintf(user, sizeof(user), "uid %u", (unsigned)geteuid());
        snprintf(buf, n,
                 "connection to server on socket \"%s\" failed: permission denied; pgscale runs "
                 "as OS user %s, which needs search (x) permission on %s and write permission "
                 "on the socket file: add that user to the socket's group (PostgreSQL's "
                 "unix_socket_group) or widen unix_socket_permissions",
                 ep->path, user, dir);
        return;
    }
    case UV_ECONNREFUSED:
        snprintf(buf, n,
                 "connection to server on socket \"%s\" failed: connection refused; the file "
                 "exists but no server accepts connections on it (PostgreSQL is not running, "
                 "or it stopped and left the file behind)",
                 ep->path);
        return;
    case UV_EAGAIN:
        snprintf(buf, n,
                 "connection to server on socket \"%s\" failed: the server's queue of "
                 "connections waiting to be accepted is full; it is overloaded or stopped "
                 "accepting",
                 ep->path);
        return;
    default:
        snprintf(buf, n, "connection to server on socket \"%s\" failed: %s", ep->path,
                 uv_strerror(status));
    }
}
