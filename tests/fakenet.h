/* An in-memory network behind the socket seam (src/net.h), shared by the
 * unit tests and the stateful relay fuzz target.  pgscale's handles are
 * bound to fake connections; what pgscale writes lands in the connection's
 * `out` buffer for the test's peer to read; what the peer sends is handed
 * to pgscale through the handle's own alloc and read callbacks, exactly as
 * libuv would.  As in libuv, write completions, connect results and close
 * callbacks run later (fakenet_step), never inside the call that caused
 * them.  A connection can be made full (the kernel takes no more: try_write
 * says UV_EAGAIN and writes stay pending until it drains), a connect
 * completes or fails when the test says, and a peer can close or reset. */
#ifndef PGS_FAKENET_H
#define PGS_FAKENET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

enum fn_role { FN_UNKNOWN = 0, FN_CLIENT, FN_SERVER, FN_CANCEL };

typedef struct fn_conn fn_conn;
typedef void (*fn_observe)(fn_conn *c, const uint8_t *p, size_t n);

struct fn_conn {
    int id;
    int role;               /* FN_CLIENT for accepted ones; the test sets the rest */
    /* peer -> pgscale, not yet read by pgscale */
    uint8_t *in;
    size_t in_pos, in_len, in_cap;
    bool in_eof;            /* the peer closed: EOF after the bytes */
    int in_err;             /* the peer reset: this error at once (UV_ECONNRESET) */
    /* pgscale -> peer: what reached the peer and the peer has not taken */
    uint8_t *out;
    size_t out_len, out_cap;
    uint64_t submitted;     /* bytes pgscale handed to try_write / write */
    uint64_t delivered;     /* bytes pgscale's read callbacks were given */
    size_t limit;           /* bytes the kernel still takes; SIZE_MAX: no limit */
    bool closed;            /* pgscale closed every handle and descriptor on it */
    bool connecting;        /* a connect waits for fakenet_connect_done */
    int refs;               /* handles and descriptors on it */
    /* Optional observers: bytes in the order pgscale submitted them for
     * writing, and bytes in the order pgscale was given them. */
    fn_observe on_submit, on_deliver;
    void *user;
    struct fn_handle *connect_h;
    uv_connect_t *connect_req;
    uv_connect_cb connect_cb;
};

/* Puts the fake network behind pgs_net / gives the seam back to libuv. */
void fakenet_install(void);
void fakenet_uninstall(void);
/* Forgets every connection (all handles must be closed and their close
 * callbacks run). */
void fakenet_reset(void);

/* A client connects to worker w: client_accept() runs on a new connection. */
fn_conn *fakenet_client_connect(void *worker);
/* The peer's side. */
void fakenet_send(fn_conn *c, const void *p, size_t n);
void fakenet_peer_close(fn_conn *c);            /* EOF after what was sent */
void fakenet_peer_reset(fn_conn *c);            /* ECONNRESET now */
/* How many more bytes the peer's kernel takes (0: full; SIZE_MAX: all). */
void fakenet_set_limit(fn_conn *c, size_t limit);
/* The peer takes n bytes of what pgscale sent it. */
void fakenet_take(fn_conn *c, size_t n);
/* A pending connect succeeds (0) or fails (a libuv error). */
void fakenet_connect_done(fn_conn *c, int status);

/* Runs deferred callbacks and delivers pending bytes to readers until
 * nothing more happens; returns whether anything happened. */
bool fakenet_step(void);

/* The connection a pgscale handle is bound to (NULL: none or closed). */
fn_conn *fakenet_conn_of(const void *handle);
/* Every connection made since the last reset. */
fn_conn **fakenet_conns(size_t *n);
/* Handles closed whose close callback has not run yet. */
size_t fakenet_closing_count(void);
/* Calls fn for each handle that is closing but whose callback has not
 * run (for counting servers in transit between workers). */
void fakenet_each_closing(void (*fn)(uv_handle_t *h, void *ctx), void *ctx);

#endif
