/* Socket plumbing for both connection kinds: pooled read buffers, direct
 * writes with a copy-aside fallback, span batches, and TLS under all of
 * them (OpenSSL on a BIO of our own over the libuv stream; tls.c sets the
 * sessions up).  It knows nothing of the protocol; client.c and server.c
 * get the events. */
#include "io.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "net.h"
#include "proto.h"
#include "tls.h"
#include "worker.h"

void io_sock_init(pgs_worker *w, pgs_sock *s, int kind, void *owner, bool is_pipe)
{
    memset(s, 0, sizeof(*s));
    if (is_pipe)
        pgs_net->pipe_init(&w->loop, &s->pipe, 0);
    else
        pgs_net->tcp_init(&w->loop, &s->tcp);
    s->tcp.data = owner;
    s->kind = (uint8_t)kind;
}

static pgs_sock *sock_of(uv_handle_t *h)
{
    /* tcp is the first member of pgs_sock */
    return (pgs_sock *)h;
}

static pgs_worker *worker_of(uv_handle_t *h)
{
    return (pgs_worker *)h->loop->data;
}

static void tls_alloc(pgs_sock *s, uv_buf_t *out);
static void tls_on_read(pgs_sock *s, ssize_t nread, const uv_buf_t *buf);
static void tls_kick(pgs_sock *s);
static void tls_release(pgs_sock *s);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    PGS_UNUSED(suggested);
    pgs_sock *s = sock_of(h);
    if (s->tls) {
        tls_alloc(s, out);
        return;
    }
    pgs_buf *b = &s->rbuf;
    if (!b->data) {
        b->data = worker_buf_get(worker_of(h));
        b->cap = PGS_BUF_SIZE;
        b->len = b->pos = 0;
    }
    if (b->pos > 0 && b->pos == b->len) b->pos = b->len = 0;
    if (b->len == b->cap && b->pos > 0) {
        memmove(b->data, b->data + b->pos, b->len - b->pos);
        b->len -= b->pos;
        b->pos = 0;
    }
    out->base = (char *)b->data + b->len;
    out->len = b->cap - b->len;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    pgs_sock *s = sock_of((uv_handle_t *)st);
    if (s->tls) {
        tls_on_read(s, nread, buf);
        return;
    }
    if (nread == 0) return; /* EAGAIN */
    if (nread > 0) {
        s->rbuf.len += (uint32_t)nread;
        s->bytes_in += (uint64_t)nread;
    }
    if (s->kind == PGS_SOCK_CLIENT)
        client_on_read(s->tcp.data, nread);
    else
        server_on_read(s->tcp.data, nread);
}

/* Output bounds for a client socket.  Whatever produces a client's output
 * (server rows, replies pgscale makes itself, admin console rows), once
 * more than OUT_HIGH bytes wait for the client, its socket is no longer
 * read, so it sends nothing more that could be answered; reading resumes
 * when the backlog is under OUT_LOW.  What one read (a PGS_BUF_SIZE buffer)
 * can produce is bounded, so a client that never reads costs at most about
 * OUT_HIGH plus one read's answers.  Server sockets are never paused this
 * way: their output is bounded by pausing their client instead, and a
 * server blocked on us while we wait for it would deadlock. */
#define OUT_HIGH (128u * 1024u)
#define OUT_LOW (32u * 1024u)

static int read_start_now(pgs_sock *s)
{
    int rc = pgs_net->read_start((uv_stream_t *)&s->tcp, on_alloc, on_read);
    if (rc == 0) {
        s->reading = true;
        /* decrypted bytes the owner did not want before may be waiting */
        if (s->tls) tls_kick(s);
    }
    return rc;
}

int io_read_start(pgs_sock *s)
{
    if (s->closing) return 0;
    s->read_wanted = true;
    if (s->reading || s->throttled) return 0;
    return read_start_now(s);
}

static void read_stop_now(pgs_sock *s)
{
    if (!s->reading) return;
    pgs_net->read_stop((uv_stream_t *)&s->tcp);
    s->reading = false;
}

void io_read_stop(pgs_sock *s)
{
    s->read_wanted = false;
    read_stop_now(s);
}

/* Too much output is waiting for this client: stop reading it (the owner's
 * wish to read is kept in read_wanted). */
static void throttle(pgs_sock *s)
{
    s->throttled = true;
    read_stop_now(s);
}

static int unthrottle(pgs_sock *s)
{
    s->throttled = false;
    if (!s->read_wanted || s->reading || s->closing) return 0;
    return read_start_now(s);
}

void io_buf_free(pgs_worker *w, pgs_sock *s)
{
    pgs_buf *b = &s->rbuf;
    if (!b->data) return;
    if (b->cap == PGS_BUF_SIZE)
        worker_buf_put(w, b->data);
    else
        free(b->data);
    b->data = NULL;
    b->cap = b->len = b->pos = 0;
}

void io_buf_release_if_empty(pgs_worker *w, pgs_sock *s)
{
    if (s->rbuf.data && s->rbuf.pos == s->rbuf.len) io_buf_free(w, s);
}

int io_buf_make_room(pgs_worker *w, pgs_sock *s, uint32_t need)
{
    pgs_buf *b = &s->rbuf;
    if (b->pos > 0) {
        memmove(b->data, b->data + b->pos, b->len - b->pos);
        b->len -= b->pos;
        b->pos = 0;
    }
    if (need <= b->cap || b->len < b->cap) return 0;
    /* A message that must be seen whole (a named Parse, say) is larger than
     * the buffer, and the buffer is full: double it (up to need).  Memory
     * thus follows the bytes that actually arrived, not the length a
     * message announces.  The caller has already checked need against the
     * configured maximum message size, so this is bounded. */
    uint32_t cap = b->cap > need / 2 ? need : b->cap * 2;
    uint8_t *nb = pgs_xmalloc(cap);
    memcpy(nb, b->data, b->len);
    uint32_t len = b->len;
    io_buf_free(w, s);
    b->data = nb;
    b->cap = cap;
    b->len = len;
    b->pos = 0;
    return 0;
}

/* The write state of a socket while a write is pending: the libuv request
 * and the bytes copied aside.  Taken from the worker's free list when the
 * kernel refuses bytes and given back when everything is written, so that
 * an idle connection carries none of it. */
struct pgs_wreq {
    uv_write_t req;
    uint8_t *data;
    uint32_t len;
    uint32_t cap;
    uint32_t inflight;      /* bytes at data[0..] the pending uv_write covers */
    uint8_t *inflight_buf;  /* the buffer that write reads from (data, or an
                             * older one replaced by growth while it runs) */
    uint32_t inflight_cap;
};

#define MAX_FREE_WREQS 256

static pgs_wreq *wreq_get(pgs_worker *w)
{
    pgs_wreq *r = w->free_wreqs;
    if (r) {
        w->free_wreqs = *(void **)r;
        w->n_free_wreqs--;
    } else {
        r = pgs_xmalloc(sizeof(*r));
    }
    memset(r, 0, sizeof(*r));
    return r;
}

static void wreq_put(pgs_worker *w, pgs_wreq *r)
{
    if (w->n_free_wreqs >= MAX_FREE_WREQS) {
        free(r);
        return;
    }
    *(void **)r = w->free_wreqs;
    w->free_wreqs = r;
    w->n_free_wreqs++;
}

static void wb_release(pgs_worker *w, uint8_t *data, uint32_t cap)
{
    if (cap == PGS_BUF_SIZE)
        worker_buf_put(w, data);
    else
        free(data);
}

/* Everything written (or given up): the write state goes back. */
static void wb_done(pgs_worker *w, pgs_sock *s)
{
    pgs_wreq *r = s->wb.req;
    if (!r) return;
    if (r->inflight_buf && r->inflight_buf != r->data)
        wb_release(w, r->inflight_buf, r->inflight_cap);
    if (r->data) wb_release(w, r->data, r->cap);
    wreq_put(w, r);
    s->wb.req = NULL;
    s->wb.pending = false;
}

static void on_write_done(uv_write_t *req, int status);

/* Hands everything copied aside so far to one uv_write. */
static int wb_start(pgs_sock *s)
{
    pgs_wreq *r = s->wb.req;
    uv_buf_t b = uv_buf_init((char *)r->data, r->len);
    int rc = pgs_net->write(&r->req, (uv_stream_t *)&s->tcp, &b, 1, on_write_done);
    if (rc < 0) return rc;
    s->wb.pending = true;
    r->inflight = r->len;
    r->inflight_buf = r->data;
    r->inflight_cap = r->cap;
    return 0;
}

static void on_write_done(uv_write_t *req, int status)
{
    pgs_sock *s = (pgs_sock *)req->handle;
    pgs_worker *w = worker_of((uv_handle_t *)req->handle);
    pgs_wreq *r = (pgs_wreq *)req;   /* req is its first member */
    /* Bytes may have been added while the write ran (TLS records the
     * library writes on its own, a last error message, replies to what the
     * client sent before it was paused): they follow the written ones in
     * data, and go out with the next write. */
    uint32_t done = r->inflight;
    if (r->inflight_buf && r->inflight_buf != r->data)
        wb_release(w, r->inflight_buf, r->inflight_cap);
    r->inflight_buf = NULL;
    r->inflight = 0;
    s->wb.pending = false;
    if (status == 0 && !s->closing && r->len > done) {
        memmove(r->data, r->data + done, r->len - done);
        r->len -= done;
        status = wb_start(s);
        if (status == 0) {
            if (s->throttled && r->len <= OUT_LOW && unthrottle(s) < 0) {
                status = UV_EIO;
                s->wb.pending = true; /* the write runs on; its callback cleans up */
                goto failed;
            }
            return;
        }
    }
    wb_done(w, s);
    if (s->closing) return;
    if (status == 0 && s->throttled && unthrottle(s) < 0) status = UV_EIO;
failed:
    if (status < 0) {
        if (s->kind == PGS_SOCK_CLIENT)
            client_on_write_error(s->tcp.data, status);
        else
            server_on_write_error(s->tcp.data, status);
        return;
    }
    if (s->kind == PGS_SOCK_CLIENT)
        client_on_drain(s->tcp.data);
    else
        server_on_drain(s->tcp.data);
}

static int wb_append(pgs_worker *w, pgs_wreq *r, const uint8_t *p, size_t n)
{
    if (n > UINT32_MAX / 2 - r->len) return UV_ENOBUFS;
    uint32_t need = r->len + (uint32_t)n;
    if (need > r->cap) {
        uint32_t cap = r->cap ? r->cap : PGS_BUF_SIZE;
        while (cap < need) cap *= 2;
        uint8_t *nd = cap == PGS_BUF_SIZE ? worker_buf_get(w) : pgs_xmalloc(cap);
        if (r->len) memcpy(nd, r->data, r->len);
        /* the buffer a running write reads from is freed when it ends */
        if (r->data && r->data != r->inflight_buf) wb_release(w, r->data, r->cap);
        r->data = nd;
        r->cap = cap;
    }
    memcpy(r->data + r->len, p, n);
    r->len += (uint32_t)n;
    return 0;
}

/* Bytes as they go on the wire: plaintext, or TLS records. */
static int raw_send(pgs_worker *w, pgs_sock *dst, const uv_buf_t *iov, int n)
{
    if (dst->closing) return UV_ECANCELED;
    size_t total = 0;
    for (int i = 0; i < n; i++) total += iov[i].len;
    if (total == 0) return 0;
    size_t done = 0;
    if (!dst->wb.pending) {
        int rc = pgs_net->try_write((uv_stream_t *)&dst->tcp, iov, (unsigned)n);
        if (rc >= 0) {
            done = (size_t)rc;
        } else if (rc != UV_EAGAIN) {
            return rc;
        }
        dst->bytes_out += done;
        if (done == total) return 0;
    }
    /* The kernel did not take everything: keep a copy of the rest.  The
     * caller stops reading its source while dst->wb.pending is set, and a
     * client with too much pending is not read (throttle), so what piles
     * up here stays bounded. */
    bool fresh = dst->wb.req == NULL;
    if (fresh) dst->wb.req = wreq_get(w);
    size_t skip = done;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        size_t l = iov[i].len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        rc = wb_append(w, dst->wb.req, (const uint8_t *)iov[i].base + skip, l - skip);
        skip = 0;
    }
    if (rc == 0) {
        dst->bytes_out += total - done;
        if (!dst->wb.pending) rc = wb_start(dst);
    }
    if (rc < 0) {
        if (!dst->wb.pending) wb_done(w, dst);
        return rc;
    }
    if (dst->kind == PGS_SOCK_CLIENT && !dst->throttled && dst->wb.req->len > OUT_HIGH)
        throttle(dst);
    return 0;
}

static int tls_send(pgs_worker *w, pgs_sock *dst, const uv_buf_t *iov, int n);

int io_send(pgs_worker *w, pgs_sock *dst, const uv_buf_t *iov, int n)
{
    if (dst->tls) return tls_send(w, dst, iov, n);
    return raw_send(w, dst, iov, n);
}

void io_batch_init(io_batch *b, pgs_worker *w, pgs_sock *dst)
{
    b->w = w;
    b->dst = dst;
    b->n = 0;
    b->err = 0;
    b->scratch_mark = w->scratch_len;
}

/* Sends the spans collected so far; scratch stays reserved. */
static int batch_send(io_batch *b)
{
    if (b->err) return b->err;
    int rc = 0;
    if (b->n > 0) rc = io_send(b->w, b->dst, b->iov, b->n);
    b->n = 0;
    if (rc < 0) b->err = rc;
    return rc;
}

int io_batch_flush(io_batch *b)
{
    int rc = batch_send(b);
    b->w->scratch_len = b->scratch_mark;
    return rc;
}

void io_batch_discard(io_batch *b)
{
    b->n = 0;
    b->w->scratch_len = b->scratch_mark;
}

void io_batch_add(io_batch *b, const void *p, size_t len)
{
    if (len == 0 || b->err) return;
    if (b->n > 0) {
        uv_buf_t *last = &b->iov[b->n - 1];
        if (last->base + last->len == (const char *)p) {
            last->len += len;
            return;
        }
    }
    if (b->n == IO_BATCH_IOV) {
        /* p may be scratch reserved a moment ago: send what we have but
         * keep the scratch reserved until the batch's own flush */
        if (batch_send(b) < 0) return;
    }
    b->iov[b->n++] = uv_buf_init((char *)p, (unsigned)len);
}

uint8_t *io_batch_scratch(io_batch *b, size_t len)
{
    pgs_worker *w = b->w;
    if (len > PGS_SCRATCH_SIZE) return NULL;
    if (PGS_SCRATCH_SIZE - w->scratch_len < len) {
        if (io_batch_flush(b) < 0) return NULL;
        if (PGS_SCRATCH_SIZE - w->scratch_len < len) return NULL;
    }
    uint8_t *p = w->scratch + w->scratch_len;
    w->scratch_len += (uint32_t)len;
    return p;
}

void io_batch_out(io_batch *b, proto_out *o)
{
    pgs_worker *w = b->w;
    if (PGS_SCRATCH_SIZE - w->scratch_len < 4096) (void)io_batch_flush(b);
    proto_out_init(o, w->scratch + w->scratch_len, PGS_SCRATCH_SIZE - w->scratch_len);
}

void io_batch_commit_out(io_batch *b, proto_out *o)
{
    if (o->overflow) {
        b->err = UV_ENOBUFS;
        return;
    }
    b->w->scratch_len += (uint32_t)o->len;
    io_batch_add(b, o->data, o->len);
}

void io_close(pgs_sock *s, uv_close_cb cb)
{
    if (s->closing) return;
    if (s->tls) tls_release(s);
    s->closing = true;
    s->reading = false;
    pgs_net->close((uv_handle_t *)&s->tcp, cb);
}

size_t io_pending_bytes(const pgs_sock *s)
{
    return s->wb.req ? s->wb.req->len : 0;
}

void io_send_quiet(pgs_worker *w, pgs_sock *dst, const void *p, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)len);
    if (io_send(w, dst, &b, 1) < 0) log_debug("best-effort write failed");
}

/* ---------------------------------------------------------------------
 * TLS under the socket.
 *
 * libuv has no TLS, so OpenSSL runs on a BIO of our own: its read side
 * serves ciphertext that libuv read (first what an earlier read left over,
 * then the fresh bytes), its write side hands each record straight to
 * raw_send(), which writes it to the kernel or copies it aside exactly as
 * plaintext is.  Plaintext comes out of SSL_read into the socket's normal
 * read buffer and is handed to client_on_read / server_on_read, so nothing
 * above this file knows about TLS.
 *
 * The one new problem is bytes OpenSSL holds that the kernel no longer
 * signals: when the owner stops reading (back-pressure) while ciphertext is
 * still unprocessed, resuming the read cannot wait for the socket, which
 * may stay quiet (a client that sent its whole COPY and waits for the
 * answer).  io_read_start therefore puts such a socket on this worker
 * thread's ready list, and an idle handle decrypts for it on the next loop
 * turn.  Ciphertext left over is at most about one read (the owner stopped
 * reading; libuv reads no more), so that stash is bounded.
 * ------------------------------------------------------------------- */

/* Far above what the argument above allows; a stash this large is a bug,
 * and the connection is closed rather than grown without bound. */
#define TLS_STASH_MAX (8u * PGS_BUF_SIZE)
/* Spans at least this long are encrypted where they lie; shorter ones are
 * gathered first, so a batch of small messages becomes one record. */
#define TLS_DIRECT_MIN 4096u

struct pgs_tls {
    SSL *ssl;
    pgs_sock *s;              /* NULL once the socket let go of it */
    pgs_list ready;           /* on this thread's ready list */
    const uint8_t *in;        /* fresh ciphertext during a read callback */
    uint32_t in_len;
    uint8_t *stash;           /* ciphertext read but not yet taken by OpenSSL */
    uint32_t stash_pos, stash_len, stash_cap;
    int werr;                 /* a write of a record failed (libuv error) */
    int busy;                 /* decrypting: freeing waits until it ends */
    bool dead;                /* the socket closed while busy */
    bool established;         /* handshake finished */
    bool failed;              /* fatal TLS error: no close_notify */
    char who[16];             /* "C-12" / "S-3", for the log */
    char err[200];            /* why it failed, for the owner's message */
};

/* Per worker thread: one loop per thread, so the ready list is kept here
 * rather than in pgs_worker (worker.c closes every handle of the loop at
 * the end, this idle handle included). */
static _Thread_local struct {
    uv_loop_t *loop;          /* NULL until first used on this thread */
    uv_idle_t idle;
    pgs_list ready;
} tls_defer;

static BIO_METHOD *bio_meth;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static int bio_read(BIO *b, char *out, int outl)
{
    pgs_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    uint32_t n = 0;
    if (outl <= 0) return 0;
    if (t->stash_pos < t->stash_len) {
        n = PGS_MIN((uint32_t)outl, t->stash_len - t->stash_pos);
        memcpy(out, t->stash + t->stash_pos, n);
        t->stash_pos += n;
        if (t->stash_pos == t->stash_len) {
            free(t->stash);
            t->stash = NULL;
            t->stash_pos = t->stash_len = t->stash_cap = 0;
        }
    } else if (t->in_len > 0) {
        n = PGS_MIN((uint32_t)outl, t->in_len);
        memcpy(out, t->in, n);
        t->in += n;
        t->in_len -= n;
    }
    if (n == 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    return (int)n;
}

static int bio_write(BIO *b, const char *data, int len)
{
    pgs_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0) return 0;
    pgs_sock *s = t->s;
    /* A failed write is reported by the caller of SSL_*; what follows it is
     * dropped (the connection is going away). */
    if (!s || t->werr) return len;
    uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
    int rc = raw_send(worker_of((uv_handle_t *)&s->tcp), s, &buf, 1);
    if (rc < 0) t->werr = rc;
    return len;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    PGS_UNUSED(b);
    PGS_UNUSED(num);
    PGS_UNUSED(ptr);
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static void bio_meth_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pgscale-uv");
    if (!m || !BIO_meth_set_read(m, bio_read) || !BIO_meth_set_write(m, bio_write) ||
        !BIO_meth_set_ctrl(m, bio_ctrl)) {
        BIO_meth_free(m);
        return;
    }
    bio_meth = m;
}

static void tls_free(pgs_tls *t)
{
    list_del(&t->ready);
    SSL_free(t->ssl);
    free(t->stash);
    free(t);
}

static int stash_append(pgs_tls *t, const uint8_t *p, uint32_t n)
{
    if (t->stash_pos > 0) {
        memmove(t->stash, t->stash + t->stash_pos, t->stash_len - t->stash_pos);
        t->stash_len -= t->stash_pos;
        t->stash_pos = 0;
    }
    if (n > TLS_STASH_MAX - t->stash_len) return UV_ENOBUFS;
    if (t->stash_len + n > t->stash_cap) {
        t->stash_cap = t->stash_len + n;
        t->stash = pgs_xrealloc(t->stash, t->stash_cap);
    }
    memcpy(t->stash + t->stash_len, p, n);
    t->stash_len += n;
    return 0;
}

static void deliver(pgs_sock *s, ssize_t n)
{
    if (s->kind == PGS_SOCK_CLIENT)
        client_on_read(s->tcp.data, n);
    else
        server_on_read(s->tcp.data, n);
}

static void tls_failed(pgs_tls *t, int ret, const char *when)
{
    char why[160];
    tls_error_text(t->ssl, ret, why, sizeof(why));
    snprintf(t->err, sizeof(t->err), "%s", why);
    t->failed = true;
    log_info("%s: TLS %s failed: %s", t->who, when, why);
}

/* The handshake just finished: say so, and let a server connection send
 * its start-up message. */
static void tls_established(pgs_tls *t)
{
    char desc[96];
    t->established = true;
    tls_describe(t->ssl, desc, sizeof(desc));
    log_debug("%s: TLS established: %s", t->who, desc);
    if (t->s->kind == PGS_SOCK_SERVER) server_on_tls_ready(t->s->tcp.data);
}

/* Decrypts into the read buffer and hands the plaintext up, for as long as
 * the owner keeps reading and OpenSSL has whole records. */
static void tls_pump(pgs_tls *t)
{
    pgs_sock *s = t->s;
    pgs_worker *w = worker_of((uv_handle_t *)&s->tcp);
    pgs_buf *b = &s->rbuf;
    while (!t->dead && s->reading && !s->closing) {
        if (!b->data) {
            b->data = worker_buf_get(w);
            b->cap = PGS_BUF_SIZE;
            b->len = b->pos = 0;
        }
        if (b->pos > 0 && b->pos == b->len) b->pos = b->len = 0;
        if (b->len == b->cap && b->pos > 0) {
            memmove(b->data, b->data + b->pos, b->len - b->pos);
            b->len -= b->pos;
            b->pos = 0;
        }
        if (b->len == b->cap) {
            /* as libuv does for a plain socket whose reader made no room */
            deliver(s, UV_ENOBUFS);
            return;
        }
        ERR_clear_error();
        int r = SSL_read(t->ssl, b->data + b->len, (int)(b->cap - b->len));
        int e = r > 0 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, r);
        if (t->werr) {
            snprintf(t->err, sizeof(t->err), "%s", uv_strerror(t->werr));
            deliver(s, t->werr);
            return;
        }
        if (e == SSL_ERROR_NONE || e == SSL_ERROR_WANT_READ) {
            if (!t->established && SSL_is_init_finished(t->ssl)) {
                tls_established(t);
                if (t->dead || s->closing) return;
            }
            if (e == SSL_ERROR_WANT_READ) break;
            b->len += (uint32_t)r;
            deliver(s, r);
            continue;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            /* close_notify: the peer is done, as at EOF */
            deliver(s, UV_EOF);
            return;
        }
        tls_failed(t, r, t->established ? "read" : "handshake");
        deliver(s, UV_EPROTO);
        return;
    }
    if (!t->dead && !s->closing && b->data && b->pos == b->len) io_buf_free(w, s);
}

/* Runs the pump over fresh ciphertext (or only over the stash) and keeps
 * what OpenSSL did not take. */
static void tls_run(pgs_tls *t, const uint8_t *in, uint32_t in_len)
{
    t->in = in;
    t->in_len = in_len;
    t->busy++;
    tls_pump(t);
    t->busy--;
    /* (a server handed to another worker meanwhile keeps its leftovers:
     * t travels with it, and the hand-over is posted only after this) */
    if (!t->dead && t->in_len > 0 && stash_append(t, t->in, t->in_len) < 0) {
        log_warn("%s: TLS: too much unread ciphertext; closing", t->who);
        snprintf(t->err, sizeof(t->err), "too much unread TLS data");
        t->in_len = 0;
        if (t->s) deliver(t->s, UV_ENOBUFS);
    }
    t->in = NULL;
    t->in_len = 0;
    if (t->dead && t->busy == 0) tls_free(t);
}

static void tls_alloc(pgs_sock *s, uv_buf_t *out)
{
    /* ciphertext lands in a pooled buffer for the time of one callback */
    out->base = (char *)worker_buf_get(worker_of((uv_handle_t *)&s->tcp));
    out->len = PGS_BUF_SIZE;
}

static void tls_on_read(pgs_sock *s, ssize_t nread, const uv_buf_t *buf)
{
    pgs_worker *w = worker_of((uv_handle_t *)&s->tcp);
    if (nread > 0) {
        s->bytes_in += (uint64_t)nread;
        tls_run(s->tls, (const uint8_t *)buf->base, (uint32_t)nread);
    }
    if (buf->base) worker_buf_put(w, (uint8_t *)buf->base);
    /* EOF without close_notify is treated as EOF, as PostgreSQL does */
    if (nread < 0) deliver(s, nread);
}

static void on_tls_idle(uv_idle_t *h)
{
    pgs_list batch;
    list_init(&batch);
    if (!list_empty(&tls_defer.ready)) {
        batch.next = tls_defer.ready.next;
        batch.prev = tls_defer.ready.prev;
        batch.next->prev = &batch;
        batch.prev->next = &batch;
        list_init(&tls_defer.ready);
    }
    while (!list_empty(&batch)) {
        pgs_tls *t = list_entry(batch.next, pgs_tls, ready);
        list_del(&t->ready);
        if (t->s && t->s->reading && !t->s->closing) tls_run(t, NULL, 0);
    }
    if (list_empty(&tls_defer.ready)) uv_idle_stop(h);
}

static void tls_kick(pgs_sock *s)
{
    pgs_tls *t = s->tls;
    if (t->stash_pos == t->stash_len && !SSL_has_pending(t->ssl)) return;
    if (!list_empty(&t->ready)) return;
    if (!tls_defer.loop) {
        tls_defer.loop = s->tcp.loop;
        list_init(&tls_defer.ready);
        uv_idle_init(tls_defer.loop, &tls_defer.idle);
    }
    list_add_tail(&tls_defer.ready, &t->ready);
    uv_idle_start(&tls_defer.idle, on_tls_idle);
}

/* Closing: a close_notify if the session is sound (best effort: it goes
 * now or not at all), then the state goes (or is marked dead when a
 * decrypt on the stack still uses it). */
static void tls_release(pgs_sock *s)
{
    pgs_tls *t = s->tls;
    if (t->established && !t->failed && !t->werr) {
        ERR_clear_error();
        (void)SSL_shutdown(t->ssl);
        ERR_clear_error();
    }
    s->tls = NULL;
    t->s = NULL;
    list_del(&t->ready);
    if (t->busy)
        t->dead = true;
    else
        tls_free(t);
}

static int tls_write(pgs_tls *t, const void *p, size_t len)
{
    const uint8_t *q = p;
    while (len > 0) {
        int chunk = len > (size_t)(INT_MAX / 2) ? INT_MAX / 2 : (int)len;
        ERR_clear_error();
        int r = SSL_write(t->ssl, q, chunk);
        if (t->werr) return t->werr;
        if (r <= 0) {
            tls_failed(t, r, "write");
            return UV_EPROTO;
        }
        q += r;
        len -= (size_t)r;
    }
    return 0;
}

static int tls_send(pgs_worker *w, pgs_sock *dst, const uv_buf_t *iov, int n)
{
    pgs_tls *t = dst->tls;
    if (dst->closing) return UV_ECANCELED;
    if (t->werr) return t->werr;
    if (t->failed || !t->established) return UV_ENOTCONN;
    uint8_t *stage = NULL;
    uint32_t sl = 0;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const uint8_t *p = (const uint8_t *)iov[i].base;
        size_t l = iov[i].len;
        if (l == 0) continue;
        if (l >= TLS_DIRECT_MIN) {
            if (sl) rc = tls_write(t, stage, sl);
            sl = 0;
            if (rc == 0) rc = tls_write(t, p, l);
            continue;
        }
        if (sl + l > PGS_BUF_SIZE) {
            rc = tls_write(t, stage, sl);
            sl = 0;
            if (rc < 0) break;
        }
        if (!stage) stage = worker_buf_get(w);
        memcpy(stage + sl, p, l);
        sl += (uint32_t)l;
    }
    if (rc == 0 && sl) rc = tls_write(t, stage, sl);
    if (stage) worker_buf_put(w, stage);
    return rc;
}

int io_tls_start(pgs_sock *s, SSL *ssl, const char *who)
{
    pthread_once(&bio_once, bio_meth_init);
    BIO *bio = bio_meth ? BIO_new(bio_meth) : NULL;
    if (!bio) {
        SSL_free(ssl);
        return UV_ENOMEM;
    }
    pgs_tls *t = pgs_xcalloc(1, sizeof(*t));
    t->ssl = ssl;
    t->s = s;
    list_init(&t->ready);
    snprintf(t->who, sizeof(t->who), "%s", who);
    BIO_set_data(bio, t);
    BIO_set_init(bio, 1);
    SSL_set_bio(ssl, bio, bio);
    s->tls = t;
    /* Bytes that came after the SSLRequest are the start of the TLS
     * stream (a client may send its ClientHello without waiting for our
     * 'S'); they are ciphertext, never taken as plaintext. */
    pgs_buf *b = &s->rbuf;
    if (b->data && b->pos < b->len) {
        if (stash_append(t, b->data + b->pos, b->len - b->pos) < 0) return UV_ENOBUFS;
        b->pos = b->len;
    }
    io_buf_release_if_empty(worker_of((uv_handle_t *)&s->tcp), s);
    if (!SSL_is_server(ssl)) {
        /* our ClientHello goes out now */
        ERR_clear_error();
        int r = SSL_do_handshake(ssl);
        if (t->werr) return t->werr;
        if (r <= 0 && SSL_get_error(ssl, r) != SSL_ERROR_WANT_READ) {
            tls_failed(t, r, "handshake");
            return UV_EPROTO;
        }
    }
    if (s->reading) tls_kick(s);
    return 0;
}

const char *io_tls_error(const pgs_sock *s)
{
    return s->tls && s->tls->err[0] ? s->tls->err : NULL;
}

SSL *io_tls_ssl(const pgs_sock *s)
{
    return s->tls ? s->tls->ssl : NULL;
}

pgs_tls *io_tls_detach(pgs_sock *s)
{
    pgs_tls *t = s->tls;
    if (!t) return NULL;
    list_del(&t->ready);
    t->s = NULL;
    s->tls = NULL;
    return t;
}

void io_tls_attach(pgs_sock *s, pgs_tls *t)
{
    if (!t) return;
    t->s = s;
    s->tls = t;
    if (s->reading) tls_kick(s);
}

void io_tls_discard(pgs_tls *t)
{
    if (t) tls_free(t);
}
