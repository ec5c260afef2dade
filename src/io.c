/* Socket plumbing for both connection kinds: pooled read buffers, direct
 * writes with a copy-aside fallback, span batches.  It knows nothing of
 * the protocol; client.c and server.c get the events. */
#include "io.h"

#include <errno.h>
#include <string.h>

#include "proto.h"
#include "worker.h"

void io_sock_init(pgs_worker *w, pgs_sock *s, int kind, void *owner)
{
    memset(s, 0, sizeof(*s));
    uv_tcp_init(&w->loop, &s->tcp);
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

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    PGS_UNUSED(suggested);
    pgs_sock *s = sock_of(h);
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
    PGS_UNUSED(buf);
    pgs_sock *s = sock_of((uv_handle_t *)st);
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

int io_read_start(pgs_sock *s)
{
    if (s->reading || s->closing) return 0;
    int rc = uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read);
    if (rc == 0) s->reading = true;
    return rc;
}

void io_read_stop(pgs_sock *s)
{
    if (!s->reading) return;
    uv_read_stop((uv_stream_t *)&s->tcp);
    s->reading = false;
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

static void on_write_done(uv_write_t *req, int status)
{
    pgs_sock *s = (pgs_sock *)req->handle;
    pgs_wbuf *wb = &s->wb;
    wb->pending = false;
    wb->len = 0;
    if (wb->data) {
        if (wb->cap == PGS_BUF_SIZE)
            worker_buf_put(worker_of((uv_handle_t *)req->handle), wb->data);
        else
            free(wb->data);
        wb->data = NULL;
        wb->cap = 0;
    }
    if (s->closing) return;
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

static int wb_append(pgs_worker *w, pgs_wbuf *wb, const uint8_t *p, size_t n)
{
    if (n > UINT32_MAX - wb->len) return UV_ENOBUFS;
    uint32_t need = wb->len + (uint32_t)n;
    if (need > wb->cap) {
        uint32_t cap = wb->cap ? wb->cap : PGS_BUF_SIZE;
        while (cap < need) cap *= 2;
        uint8_t *nd;
        if (cap == PGS_BUF_SIZE) {
            nd = worker_buf_get(w);
        } else {
            nd = pgs_xmalloc(cap);
            if (wb->len) memcpy(nd, wb->data, wb->len);
            if (wb->data) {
                if (wb->cap == PGS_BUF_SIZE)
                    worker_buf_put(w, wb->data);
                else
                    free(wb->data);
            }
        }
        wb->data = nd;
        wb->cap = cap;
    }
    memcpy(wb->data + wb->len, p, n);
    wb->len += (uint32_t)n;
    return 0;
}

int io_send(pgs_worker *w, pgs_sock *dst, const uv_buf_t *iov, int n)
{
    if (dst->closing) return UV_ECANCELED;
    size_t total = 0;
    for (int i = 0; i < n; i++) total += iov[i].len;
    if (total == 0) return 0;
    size_t done = 0;
    if (!dst->wb.pending) {
        int rc = uv_try_write((uv_stream_t *)&dst->tcp, iov, (unsigned)n);
        if (rc >= 0) {
            done = (size_t)rc;
        } else if (rc != UV_EAGAIN) {
            return rc;
        }
        dst->bytes_out += done;
        if (done == total) return 0;
    }
    /* The kernel did not take everything: keep a copy of the rest.  The
     * caller stops reading its source while dst->wb.pending is set, so at
     * most one read's worth piles up here. */
    size_t skip = done;
    for (int i = 0; i < n; i++) {
        size_t l = iov[i].len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        int rc = wb_append(w, &dst->wb, (const uint8_t *)iov[i].base + skip, l - skip);
        if (rc < 0) return rc;
        skip = 0;
    }
    dst->bytes_out += total - done;
    if (!dst->wb.pending) {
        uv_buf_t b = uv_buf_init((char *)dst->wb.data, dst->wb.len);
        int rc = uv_write(&dst->wb.req, (uv_stream_t *)&dst->tcp, &b, 1, on_write_done);
        if (rc < 0) return rc;
        dst->wb.pending = true;
    }
    return 0;
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
    s->closing = true;
    s->reading = false;
    uv_close((uv_handle_t *)&s->tcp, cb);
}

void io_send_quiet(pgs_worker *w, pgs_sock *dst, const void *p, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)len);
    if (io_send(w, dst, &b, 1) < 0) log_debug("best-effort write failed");
}
