/* Socket plumbing shared by clients and servers: read buffers borrowed from
 * the worker's pool, writes that go straight to the kernel when they can
 * and are copied aside (with back-pressure on the peer) when they cannot,
 * batches of spans that are written with one writev, and TLS under all of
 * it (plaintext in the same read buffer, encrypted writes under the same
 * rules), so that the layers above never know whether a socket is TLS. */
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

/* is_pipe: a Unix-socket connection (uv_pipe_t) instead of TCP. */
void io_sock_init(pgs_worker *w, pgs_sock *s, int kind, void *owner, bool is_pipe);
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
/* Bytes written to dst that the kernel has not taken yet. */
size_t io_pending_bytes(const pgs_sock *s);
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
/* Forgets what the batch holds, unsent (its scratch is given back). */
void io_batch_discard(io_batch *b);
/* Errors are also kept in b->err, so a best-effort flush may ignore the result. */
int io_batch_flush(io_batch *b);

/* Closes the socket (after a TLS close_notify when the session is sound);
 * the owner's close callback runs later. */
void io_close(pgs_sock *s, uv_close_cb cb);

/* --- TLS --- */
typedef struct pgs_tls pgs_tls;
struct ssl_st;

/* Puts TLS under s from now on, taking ownership of ssl (freed on failure
 * too).  Bytes already read and not consumed are taken as the start of the
 * TLS stream.  A client-role ssl sends its ClientHello at once; when the
 * handshake is done a server socket gets server_on_tls_ready().  Handshake
 * and later TLS failures reach the owner as a read error (UV_EPROTO), with
 * the reason in io_tls_error(). */
PGS_MUSTCHECK int io_tls_start(pgs_sock *s, struct ssl_st *ssl, const char *who);
static inline bool io_is_tls(const pgs_sock *s) { return s->tls != NULL; }
struct ssl_st *io_tls_ssl(const pgs_sock *s);
/* Why TLS failed on s, or NULL. */
const char *io_tls_error(const pgs_sock *s);
/* A server handed to another worker keeps its TLS session: detach it
 * before io_close(), attach it to the adopted socket (or discard it). */
pgs_tls *io_tls_detach(pgs_sock *s);
void io_tls_attach(pgs_sock *s, pgs_tls *t);
void io_tls_discard(pgs_tls *t);

/* Called by io on events; implemented in client.c and server.c. */
void client_on_read(pgs_client *c, ssize_t nread);
void server_on_read(pgs_server *sv, ssize_t nread);
void client_on_drain(pgs_client *c);
void server_on_drain(pgs_server *sv);
void client_on_write_error(pgs_client *c, int err);
void server_on_write_error(pgs_server *sv, int err);
void server_on_tls_ready(pgs_server *sv);

#endif
