/* The production side of the socket seam (net.h): each entry is the libuv
 * (or system) call of the same name.  Nothing else lives here. */
#include "net.h"

#include <errno.h>
#include <unistd.h>

static int tcp_init(uv_loop_t *loop, uv_tcp_t *h)
{
    return uv_tcp_init(loop, h);
}

static int pipe_init(uv_loop_t *loop, uv_pipe_t *h, int ipc)
{
    return uv_pipe_init(loop, h, ipc);
}

static int pipe_connect(uv_connect_t *req, uv_pipe_t *h, const char *path, uv_connect_cb cb)
{
    uv_pipe_connect(req, h, path, cb);
    return 0;
}

static int is_closing(const uv_handle_t *h)
{
    return uv_is_closing(h);
}

static int fd_dup(int fd)
{
    return dup(fd);
}

static int fd_close(int fd)
{
    return close(fd);
}

static ssize_t fd_recv(const uv_handle_t *h, void *buf, size_t len, int flags)
{
    uv_os_fd_t fd;
    if (uv_fileno(h, &fd) != 0) {
        errno = EBADF;
        return -1;
    }
    return recv(fd, buf, len, flags);
}

const pgs_net_ops pgs_net_libuv = {
    .tcp_init = tcp_init,
    .pipe_init = pipe_init,
    .read_start = uv_read_start,
    .read_stop = uv_read_stop,
    .try_write = uv_try_write,
    .write = uv_write,
    .close = uv_close,
    .is_closing = is_closing,
    .tcp_connect = uv_tcp_connect,
    .pipe_connect = pipe_connect,
    .accept = uv_accept,
    .tcp_nodelay = uv_tcp_nodelay,
    .tcp_getpeername = uv_tcp_getpeername,
    .fileno = uv_fileno,
    .dup = fd_dup,
    .tcp_open = uv_tcp_open,
    .pipe_open = uv_pipe_open,
    .close_fd = fd_close,
    .recv = fd_recv,
};

const pgs_net_ops *pgs_net = &pgs_net_libuv;
