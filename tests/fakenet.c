/* The in-memory network for tests and the relay fuzz target (fakenet.h).
 * It stands in for libuv's stream calls only; the loop, timers and async
 * handles of the workers stay real. */
#include "fakenet.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "client.h"
#include "common.h"
#include "net.h"
#include "worker.h"

/* One pgscale handle (tcp_init / pipe_init) and what it is bound to. */
typedef struct fn_handle {
    uv_handle_t *h;        /* NULL once its close callback ran */
    fn_conn *c;            /* NULL until accepted, connected or opened */
    int fd;                /* its descriptor (index into fds), -1 before binding */
    uv_alloc_cb alloc_cb;
    uv_read_cb read_cb;
    bool reading;
    bool closing;
    uv_close_cb close_cb;
    struct fn_write *writes; /* pending (connection full), in order */
} fn_handle;

typedef struct fn_write {
    struct fn_write *next;
    uv_write_t *req;
    uv_write_cb cb;
    uint8_t *data;
    size_t len;
} fn_write;

enum { EV_WRITE, EV_CONNECT, EV_CLOSE };
typedef struct fn_event {
    struct fn_event *next;
    int kind;
    fn_handle *fh;
    uv_write_t *wreq;
    uv_write_cb wcb;
    uv_connect_t *creq;
    uv_connect_cb ccb;
    int status;
} fn_event;

#define FD_BASE (1 << 20)

static struct {
    fn_conn **conns;
    size_t n_conns, cap_conns;
    fn_handle **handles;
    size_t n_handles, cap_handles;
    fn_conn **fds;          /* descriptor -> connection (NULL: closed) */
    size_t n_fds, cap_fds;
    fn_event *ev_head, *ev_tail;
    fn_conn *accepting;     /* the connection client_accept is taking */
    uv_tcp_t listener;
    int next_id;
} fn;

static void *grow(void *p, size_t *cap, size_t n, size_t sz)
{
    if (n < *cap) return p;
    *cap = *cap ? *cap * 2 : 16;
    return pgs_xrealloc(p, *cap * sz);
}

static void push_event(fn_event *e)
{
    e->next = NULL;
    if (fn.ev_tail)
        fn.ev_tail->next = e;
    else
        fn.ev_head = e;
    fn.ev_tail = e;
}

static fn_handle *handle_of(const void *h)
{
    for (size_t i = fn.n_handles; i-- > 0;)
        if (fn.handles[i]->h == h) return fn.handles[i];
    return NULL;
}

static int fd_new(fn_conn *c)
{
    fn.fds = grow(fn.fds, &fn.cap_fds, fn.n_fds, sizeof(*fn.fds));
    fn.fds[fn.n_fds] = c;
    c->refs++;
    return FD_BASE + (int)fn.n_fds++;
}

static fn_conn *fd_conn(int fd)
{
    if (fd < FD_BASE || (size_t)(fd - FD_BASE) >= fn.n_fds) return NULL;
    return fn.fds[fd - FD_BASE];
}

static void fd_release(int fd)
{
    fn_conn *c = fd_conn(fd);
    if (!c) return;
    fn.fds[fd - FD_BASE] = NULL;
    if (--c->refs == 0) c->closed = true;
}

static fn_conn *conn_new(int role)
{
    fn_conn *c = pgs_xcalloc(1, sizeof(*c));
    c->id = ++fn.next_id;
    c->role = role;
    c->limit = SIZE_MAX;
    fn.conns = grow(fn.conns, &fn.cap_conns, fn.n_conns, sizeof(*fn.conns));
    fn.conns[fn.n_conns++] = c;
    return c;
}

static void bind_handle(fn_handle *fh, fn_conn *c)
{
    fh->c = c;
    fh->fd = fd_new(c);
}

static void append(uint8_t **buf, size_t *len, size_t *cap, const void *p, size_t n)
{
    if (n == 0) return;
    if (*len + n > *cap) {
        size_t nc = *cap ? *cap : 256;
        while (nc < *len + n) nc *= 2;
        *buf = pgs_xrealloc(*buf, nc);
        *cap = nc;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
}

/* The peer's kernel takes bytes (they reach c->out). */
static void transmit(fn_conn *c, const uint8_t *p, size_t n)
{
    append(&c->out, &c->out_len, &c->out_cap, p, n);
    if (c->limit != SIZE_MAX) c->limit -= n;
}

static bool peer_gone(const fn_conn *c)
{
    return c->in_err != 0;
}

/* ---- the seam ---- */

static fn_handle *handle_new(uv_loop_t *loop, uv_handle_t *h, uv_handle_type type)
{
    fn_handle *fh = pgs_xcalloc(1, sizeof(*fh));
    fh->h = h;
    fh->fd = -1;
    h->loop = loop;
    h->type = type;
    fn.handles = grow(fn.handles, &fn.cap_handles, fn.n_handles, sizeof(*fn.handles));
    fn.handles[fn.n_handles++] = fh;
    return fh;
}

static int f_tcp_init(uv_loop_t *loop, uv_tcp_t *h)
{
    handle_new(loop, (uv_handle_t *)h, UV_TCP);
    return 0;
}

static int f_pipe_init(uv_loop_t *loop, uv_pipe_t *h, int ipc)
{
    (void)ipc;
    handle_new(loop, (uv_handle_t *)h, UV_NAMED_PIPE);
    return 0;
}

static int f_read_start(uv_stream_t *s, uv_alloc_cb alloc_cb, uv_read_cb read_cb)
{
    fn_handle *fh = handle_of(s);
    if (!fh || fh->closing) return UV_EINVAL;
    if (!fh->c) return UV_ENOTCONN;
    fh->alloc_cb = alloc_cb;
    fh->read_cb = read_cb;
    fh->reading = true;
    return 0;
}

static int f_read_stop(uv_stream_t *s)
{
    fn_handle *fh = handle_of(s);
    if (fh) fh->reading = false;
    return 0;
}

static size_t iov_total(const uv_buf_t bufs[], unsigned n)
{
    size_t t = 0;
    for (unsigned i = 0; i < n; i++) t += bufs[i].len;
    return t;
}

static int f_try_write(uv_stream_t *s, const uv_buf_t bufs[], unsigned n)
{
    fn_handle *fh = handle_of(s);
    if (!fh || !fh->c || fh->closing) return UV_EBADF;
    fn_conn *c = fh->c;
    if (peer_gone(c)) return UV_EPIPE;
    if (fh->writes) return UV_EAGAIN;
    size_t total = iov_total(bufs, n);
    size_t take = total < c->limit ? total : c->limit;
    if (take == 0) return UV_EAGAIN;
    size_t left = take;
    for (unsigned i = 0; i < n && left; i++) {
        size_t k = bufs[i].len < left ? bufs[i].len : left;
        c->submitted += k;
        if (c->on_submit) c->on_submit(c, (const uint8_t *)bufs[i].base, k);
        transmit(c, (const uint8_t *)bufs[i].base, k);
        left -= k;
    }
    return (int)take;
}

/* Takes fh's first pending write off its queue and queues its completion
 * with `status`, as libuv calls a write's callback on a later turn. */
static void complete_first_write(fn_handle *fh, int status)
{
    fn_write *wr = fh->writes;
    fh->writes = wr->next;
    fn_event *e = pgs_xcalloc(1, sizeof(*e));
    e->kind = EV_WRITE;
    e->fh = fh;
    e->wreq = wr->req;
    e->wcb = wr->cb;
    e->status = status;
    push_event(e);
    free(wr->data);
    free(wr);
}

/* Pending writes of fh that the connection now takes complete. */
static void flush_writes(fn_handle *fh)
{
    fn_conn *c = fh->c;
    while (fh->writes && (peer_gone(c) || fh->writes->len <= c->limit)) {
        int status = 0;
        if (peer_gone(c))
            status = UV_EPIPE;
        else
            transmit(c, fh->writes->data, fh->writes->len);
        complete_first_write(fh, status);
    }
}

static int f_write(uv_write_t *req, uv_stream_t *s, const uv_buf_t bufs[], unsigned n,
                   uv_write_cb cb)
{
    fn_handle *fh = handle_of(s);
    if (!fh || !fh->c || fh->closing) return UV_EBADF;
    fn_conn *c = fh->c;
    req->handle = s;
    req->type = UV_WRITE;
    fn_write *wr = pgs_xcalloc(1, sizeof(*wr));
    wr->req = req;
    wr->cb = cb;
    wr->len = iov_total(bufs, n);
    wr->data = pgs_xmalloc(wr->len ? wr->len : 1);
    size_t off = 0;
    for (unsigned i = 0; i < n; i++) {
        memcpy(wr->data + off, bufs[i].base, bufs[i].len);
        off += bufs[i].len;
    }
    c->submitted += wr->len;
    if (c->on_submit) c->on_submit(c, wr->data, wr->len);
    fn_write **pp = &fh->writes;
    while (*pp) pp = &(*pp)->next;
    *pp = wr;
    flush_writes(fh);
    return 0;
}

static void f_close(uv_handle_t *h, uv_close_cb cb)
{
    fn_handle *fh = handle_of(h);
    if (!fh || fh->closing) return;
    fh->closing = true;
    fh->reading = false;
    fh->close_cb = cb;
    fn_conn *c = fh->c;
    if (c && c->connecting && c->connect_h == fh) {
        c->connecting = false;
        fn_event *e = pgs_xcalloc(1, sizeof(*e));
        e->kind = EV_CONNECT;
        e->fh = fh;
        e->creq = c->connect_req;
        e->ccb = c->connect_cb;
        e->status = UV_ECANCELED;
        push_event(e);
    }
    while (fh->writes) complete_first_write(fh, UV_ECANCELED);
    if (fh->fd >= 0) fd_release(fh->fd);
    fh->fd = -1;
    fn_event *e = pgs_xcalloc(1, sizeof(*e));
    e->kind = EV_CLOSE;
    e->fh = fh;
    push_event(e);
}

static int f_is_closing(const uv_handle_t *h)
{
    fn_handle *fh = handle_of(h);
    return fh && fh->closing;
}

static int f_tcp_connect(uv_connect_t *req, uv_tcp_t *h, const struct sockaddr *addr,
                         uv_connect_cb cb)
{
    (void)addr;
    fn_handle *fh = handle_of(h);
    if (!fh || fh->c || fh->closing) return UV_EINVAL;
    fn_conn *c = conn_new(FN_UNKNOWN);
    bind_handle(fh, c);
    req->handle = (uv_stream_t *)h;
    req->type = UV_CONNECT;
    c->connecting = true;
    c->connect_h = fh;
    c->connect_req = req;
    c->connect_cb = cb;
    return 0;
}

static int f_accept(uv_stream_t *listener, uv_stream_t *client)
{
    (void)listener;
    fn_handle *fh = handle_of(client);
    if (!fh || !fn.accepting) return UV_EAGAIN;
    bind_handle(fh, fn.accepting);
    fn.accepting = NULL;
    return 0;
}

static int f_tcp_nodelay(uv_tcp_t *h, int enable)
{
    (void)h;
    (void)enable;
    return 0;
}

static int f_tcp_getpeername(const uv_tcp_t *h, struct sockaddr *name, int *namelen)
{
    fn_handle *fh = handle_of(h);
    if (!fh || !fh->c || *namelen < (int)sizeof(struct sockaddr_in)) return UV_ENOTCONN;
    struct sockaddr_in *sin = (struct sockaddr_in *)name;
    memset(sin, 0, sizeof(*sin));
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(0x7f000001);
    sin->sin_port = htons((uint16_t)(40000 + fh->c->id % 20000));
    *namelen = sizeof(*sin);
    return 0;
}

static int f_fileno(const uv_handle_t *h, uv_os_fd_t *fd)
{
    fn_handle *fh = handle_of(h);
    if (!fh || fh->fd < 0) return UV_EBADF;
    *fd = fh->fd;
    return 0;
}

static int f_dup(int fd)
{
    fn_conn *c = fd_conn(fd);
    if (!c) {
        errno = EBADF;
        return -1;
    }
    return fd_new(c);
}

static int f_tcp_open(uv_tcp_t *h, uv_os_sock_t fd)
{
    fn_handle *fh = handle_of(h);
    fn_conn *c = fd_conn(fd);
    if (!fh || fh->c || !c) return UV_EBADF;
    fh->c = c;
    fh->fd = fd; /* the handle owns the descriptor from now on */
    return 0;
}

/* The in-memory network has no addresses: a pipe connects and opens as a
 * TCP handle does. */
static int f_pipe_connect(uv_connect_t *req, uv_pipe_t *h, const char *path, uv_connect_cb cb)
{
    (void)path;
    return f_tcp_connect(req, (uv_tcp_t *)h, NULL, cb);
}

static int f_pipe_open(uv_pipe_t *h, uv_file fd)
{
    return f_tcp_open((uv_tcp_t *)h, fd);
}

static int f_close_fd(int fd)
{
    if (!fd_conn(fd)) {
        errno = EBADF;
        return -1;
    }
    fd_release(fd);
    return 0;
}

static ssize_t f_recv(const uv_handle_t *h, void *buf, size_t len, int flags)
{
    fn_handle *fh = handle_of(h);
    if (!fh || !fh->c) {
        errno = EBADF;
        return -1;
    }
    fn_conn *c = fh->c;
    if (c->in_err) {
        errno = ECONNRESET;
        return -1;
    }
    size_t avail = c->in_len - c->in_pos;
    if (avail == 0) {
        if (c->in_eof) return 0;
        errno = EAGAIN;
        return -1;
    }
    size_t n = avail < len ? avail : len;
    memcpy(buf, c->in + c->in_pos, n);
    if (!(flags & MSG_PEEK)) c->in_pos += n;
    return (ssize_t)n;
}

static const pgs_net_ops fake_ops = {
    .tcp_init = f_tcp_init,
    .pipe_init = f_pipe_init,
    .read_start = f_read_start,
    .read_stop = f_read_stop,
    .try_write = f_try_write,
    .write = f_write,
    .close = f_close,
    .is_closing = f_is_closing,
    .tcp_connect = f_tcp_connect,
    .pipe_connect = f_pipe_connect,
    .accept = f_accept,
    .tcp_nodelay = f_tcp_nodelay,
    .tcp_getpeername = f_tcp_getpeername,
    .fileno = f_fileno,
    .dup = f_dup,
    .tcp_open = f_tcp_open,
    .pipe_open = f_pipe_open,
    .close_fd = f_close_fd,
    .recv = f_recv,
};

void fakenet_install(void)
{
    pgs_net = &fake_ops;
}

void fakenet_uninstall(void)
{
    pgs_net = &pgs_net_libuv;
}

void fakenet_reset(void)
{
    while (fn.ev_head) {
        fn_event *e = fn.ev_head;
        fn.ev_head = e->next;
        free(e);
    }
    fn.ev_tail = NULL;
    for (size_t i = 0; i < fn.n_handles; i++) {
        fn_handle *fh = fn.handles[i];
        while (fh->writes) {
            fn_write *wr = fh->writes;
            fh->writes = wr->next;
            free(wr->data);
            free(wr);
        }
        free(fh);
    }
    for (size_t i = 0; i < fn.n_conns; i++) {
        free(fn.conns[i]->in);
        free(fn.conns[i]->out);
        free(fn.conns[i]);
    }
    free(fn.conns);
    free(fn.handles);
    free(fn.fds);
    memset(&fn, 0, sizeof(fn));
}

/* ---- the test's side ---- */

fn_conn *fakenet_client_connect(void *worker)
{
    fn_conn *c = conn_new(FN_CLIENT);
    fn.accepting = c;
    fn.listener.type = UV_TCP;
    client_accept(worker, (uv_stream_t *)&fn.listener);
    fn.accepting = NULL;
    return c;
}

void fakenet_send(fn_conn *c, const void *p, size_t n)
{
    if (c->in_eof || c->in_err || c->closed) return;
    if (c->in_pos > 0 && c->in_pos == c->in_len) c->in_pos = c->in_len = 0;
    append(&c->in, &c->in_len, &c->in_cap, p, n);
}

void fakenet_peer_close(fn_conn *c)
{
    c->in_eof = true;
}

void fakenet_peer_reset(fn_conn *c)
{
    if (!c->in_err) c->in_err = UV_ECONNRESET;
    c->in_pos = c->in_len; /* a reset drops what was not read */
}

void fakenet_set_limit(fn_conn *c, size_t limit)
{
    c->limit = limit;
    for (size_t i = 0; i < fn.n_handles; i++)
        if (fn.handles[i]->c == c && fn.handles[i]->h && !fn.handles[i]->closing)
            flush_writes(fn.handles[i]);
}

void fakenet_take(fn_conn *c, size_t n)
{
    if (n > c->out_len) n = c->out_len;
    if (n == 0) return;
    memmove(c->out, c->out + n, c->out_len - n);
    c->out_len -= n;
}

void fakenet_connect_done(fn_conn *c, int status)
{
    if (!c->connecting) return;
    c->connecting = false;
    fn_event *e = pgs_xcalloc(1, sizeof(*e));
    e->kind = EV_CONNECT;
    e->fh = c->connect_h;
    e->creq = c->connect_req;
    e->ccb = c->connect_cb;
    e->status = status;
    push_event(e);
}

/* Hands fh what its peer sent, through its own callbacks. */
static bool deliver(fn_handle *fh)
{
    fn_conn *c = fh->c;
    bool progress = false;
    for (int rounds = 0; rounds < 64 && fh->reading && !fh->closing; rounds++) {
        size_t avail = c->in_len - c->in_pos;
        if (!c->in_err && avail == 0 && !c->in_eof) break;
        uv_buf_t buf = uv_buf_init(NULL, 0);
        fh->alloc_cb(fh->h, 65536, &buf);
        if (fh->closing) break;
        if (c->in_err) {
            fh->reading = false;
            fh->read_cb((uv_stream_t *)fh->h, c->in_err, &buf);
            return true;
        }
        if (buf.base == NULL || buf.len == 0) {
            fh->read_cb((uv_stream_t *)fh->h, UV_ENOBUFS, &buf);
            break;
        }
        if (avail == 0) {
            fh->reading = false;
            fh->read_cb((uv_stream_t *)fh->h, UV_EOF, &buf);
            return true;
        }
        size_t n = avail < buf.len ? avail : buf.len;
        memcpy(buf.base, c->in + c->in_pos, n);
        c->in_pos += n;
        c->delivered += n;
        if (c->on_deliver) c->on_deliver(c, c->in + c->in_pos - n, n);
        progress = true;
        fh->read_cb((uv_stream_t *)fh->h, (ssize_t)n, &buf);
    }
    return progress;
}

static bool run_events(void)
{
    bool any = false;
    while (fn.ev_head) {
        fn_event *e = fn.ev_head;
        fn.ev_head = e->next;
        if (!fn.ev_head) fn.ev_tail = NULL;
        any = true;
        switch (e->kind) {
        case EV_WRITE:
            e->wcb(e->wreq, e->status);
            break;
        case EV_CONNECT:
            e->ccb(e->creq, e->status);
            break;
        case EV_CLOSE: {
            uv_handle_t *h = e->fh->h;
            e->fh->h = NULL;
            if (e->fh->close_cb) e->fh->close_cb(h);
            break;
        }
        }
        free(e);
    }
    return any;
}

bool fakenet_step(void)
{
    bool any = false;
    for (int guard = 0; guard < 10000; guard++) {
        bool progress = run_events();
        for (size_t i = 0; i < fn.n_handles; i++) {
            fn_handle *fh = fn.handles[i];
            if (fh->h && fh->c && fh->reading && !fh->closing && deliver(fh)) progress = true;
        }
        if (!progress) break;
        any = true;
    }
    return any;
}

fn_conn *fakenet_conn_of(const void *handle)
{
    fn_handle *fh = handle_of(handle);
    return fh && !fh->closing ? fh->c : NULL;
}

fn_conn **fakenet_conns(size_t *n)
{
    *n = fn.n_conns;
    return fn.conns;
}

size_t fakenet_closing_count(void)
{
    size_t k = 0;
    for (size_t i = 0; i < fn.n_handles; i++)
        if (fn.handles[i]->h && fn.handles[i]->closing) k++;
    return k;
}

void fakenet_each_closing(void (*f)(uv_handle_t *h, void *ctx), void *ctx)
{
    for (size_t i = 0; i < fn.n_handles; i++)
        if (fn.handles[i]->h && fn.handles[i]->closing) f(fn.handles[i]->h, ctx);
}
