/* Socket plumbing shared by clients and servers: read buffers borrowed from
 * the worker's pool, writes that go straight to the kernel when they can
 * and are copied aside (with back-pressure on the peer) when they cannot,
 * and batches of spans that are written with one writev. */
#ifndef PGS_IO_H
#define PGS_IO_H

#include "types.h"

#define IO_BATCH_IOV 64

typedef struct io_batch {
    pgs_worker *w;
    pgs_sock *dst;
    uv_buf_t iov[IO_BATCH_IOV];
    int n;
    uint32_t scratch_mark;   /* where this batch's scratch use began */
    int err;
} io_batch;

void io_sock_init(pgs_worker *w, pgs_sock *s, int kind, void *owner);
PGS_MUSTCHECK int io_read_start(pgs_sock *s);
void io_read_stop(pgs_sock *s);
/* Gives the read buffer back to the pool when everything in it is used. */
void io_buf_release_if_empty(pgs_worker *w, pgs_sock *s);
/* Moves unconsumed bytes to the start of the buffer; grows it (up to
 * need bytes in all) when one message must be seen whole. */
PGS_MUSTCHECK int io_buf_make_room(pgs_worker *w, pgs_sock *s, uint32_t need);
void io_buf_free(pgs_worker *w, pgs_sock *s);

/* Writes bytes now if the kernel takes them, else keeps a copy and writes
 * it later.  Returns 0 or a negative libuv error. */
PGS_MUSTCHECK int io_send(pgs_worker *w, pgs_sock *dst, const uv_buf_t *iov, int n);
/* For a last message before closing, where failure changes nothing. */
void io_send_quiet(pgs_worker *w, pgs_sock *dst, const void *p, size_t len);

void io_batch_init(io_batch *b, pgs_worker *w, pgs_sock *dst);
void io_batch_add(io_batch *b, const void *p, size_t len);
/* Reserves len bytes of the worker scratch area for a synthesized message
 * that will be part of this batch; returns NULL when len is too big. */
uint8_t *io_batch_scratch(io_batch *b, size_t len);
/* Scratch reservation for proto builders: returns a proto_out over the
 * free scratch; io_batch_commit_out() adds what was built. */
struct proto_out;
void io_batch_out(io_batch *b, struct proto_out *o);
void io_batch_commit_out(io_batch *b, struct proto_out *o);
/* Errors are also kept in b->err, so a best-effort flush may ignore the result. */
int io_batch_flush(io_batch *b);

/* Closes the socket; the owner's close callback runs later. */
void io_close(pgs_sock *s, uv_close_cb cb);

/* Called by io on events; implemented in client.c and server.c. */
void client_on_read(pgs_client *c, ssize_t nread);
void server_on_read(pgs_server *sv, ssize_t nread);
void client_on_drain(pgs_client *c);
void server_on_drain(pgs_server *sv);
void client_on_write_error(pgs_client *c, int err);
void server_on_write_error(pgs_server *sv, int err);

#endif
