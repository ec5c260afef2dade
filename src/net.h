/* The socket seam: every call the connection code (io, client, server,
 * pool, worker's accept path) makes on a socket goes through one small
 * table of functions.  Production uses thin libuv wrappers (net.c); unit
 * tests and the stateful relay fuzz target put an in-memory network in its
 * place, so the real state machines run against scripted peers.  The
 * signatures are libuv's, handles, requests and callbacks included, so the
 * production path is the libuv call behind one indirect call.  Timers,
 * async handles, idle handles and the loop itself stay plain libuv. */
#ifndef PGS_NET_H
#define PGS_NET_H

#include <sys/types.h>
#include <sys/socket.h>
#include <uv.h>

typedef struct pgs_net_ops {
    int (*tcp_init)(uv_loop_t *loop, uv_tcp_t *h);
    int (*pipe_init)(uv_loop_t *loop, uv_pipe_t *h, int ipc);
    int (*read_start)(uv_stream_t *s, uv_alloc_cb alloc_cb, uv_read_cb read_cb);
    int (*read_stop)(uv_stream_t *s);
    int (*try_write)(uv_stream_t *s, const uv_buf_t bufs[], unsigned n);
    int (*write)(uv_write_t *req, uv_stream_t *s, const uv_buf_t bufs[], unsigned n,
                 uv_write_cb cb);
    void (*close)(uv_handle_t *h, uv_close_cb cb);
    int (*is_closing)(const uv_handle_t *h);
    int (*tcp_connect)(uv_connect_t *req, uv_tcp_t *h, const struct sockaddr *addr,
                       uv_connect_cb cb);
    /* uv_pipe_connect, which reports every error through cb; 0 */
    int (*pipe_connect)(uv_connect_t *req, uv_pipe_t *h, const char *path, uv_connect_cb cb);
    int (*accept)(uv_stream_t *listener, uv_stream_t *client);
    int (*tcp_nodelay)(uv_tcp_t *h, int enable);
    int (*tcp_getpeername)(const uv_tcp_t *h, struct sockaddr *name, int *namelen);
    /* A connected socket handed between workers: the descriptor under a
     * handle, a duplicate of it, a handle opened on one, and closing a
     * descriptor no handle owns. */
    int (*fileno)(const uv_handle_t *h, uv_os_fd_t *fd);
    int (*dup)(int fd);
    int (*tcp_open)(uv_tcp_t *h, uv_os_sock_t fd);
    int (*pipe_open)(uv_pipe_t *h, uv_file fd);
    int (*close_fd)(int fd);
    /* recv(2) on the handle's descriptor, for a look at what is queued
     * (MSG_PEEK) or to discard it; -1 with errno set on failure. */
    ssize_t (*recv)(const uv_handle_t *h, void *buf, size_t len, int flags);
} pgs_net_ops;

/* The seam in use; &pgs_net_libuv unless a test set another. */
extern const pgs_net_ops *pgs_net;
extern const pgs_net_ops pgs_net_libuv;

#endif
