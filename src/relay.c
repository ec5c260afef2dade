/* Relaying between a client and its server.  Bytes are forwarded in spans
 * straight from the read buffer (no copy) unless a message must change on
 * the way: prepared statements are renamed in transaction mode, requests
 * pgscale answers itself get synthesized replies, our own reset/sync
 * queries have their replies swallowed.  The expected-response queue
 * (pgs_expect_q) keeps all of this in request order, and tells when a
 * server owes nothing more, which is when a transaction-mode server goes
 * back to its pool. */
#include "relay.h"

#include <stdio.h>
#include <string.h>

#include "client.h"
#include "io.h"
#include "params.h"
#include "pool.h"
#include "prepared.h"
#include "proto.h"
#include "server.h"
#include "sqlscan.h"
#include "worker.h"

/* Messages whose start we look at are held until this much of them is in
 * the buffer; beyond it, they stream. */
#define INSPECT_MAX (64u * 1024u)
#define EXQ_MAX (1u << 20)

/* ---------- expected-response queue ---------- */

static pgs_expect *exq_head(pgs_expect_q *q)
{
    return q->count ? &q->items[q->head] : NULL;
}

static void exq_pop(pgs_expect_q *q)
{
    if (!q->count) return;
    q->head = (q->head + 1) % q->cap;
    q->count--;
}

int exq_push(pgs_expect_q *q, uint8_t kind, pgs_stmt *st, const char *tag)
{
    if (kind == EX_RUN && q->count) {
        pgs_expect *tail = &q->items[(q->head + q->count - 1) % q->cap];
        if (tail->kind == EX_RUN && tail->count < UINT32_MAX) {
            tail->count++;
            return 0;
        }
    }
    if (q->count == q->cap) {
        if (q->cap >= EXQ_MAX) return -1;
        uint32_t ncap = q->cap ? q->cap * 2 : 16;
        pgs_expect *ni = pgs_xmalloc(sizeof(pgs_expect) * ncap);
        for (uint32_t i = 0; i < q->count; i++) ni[i] = q->items[(q->head + i) % q->cap];
        free(q->items);
        q->items = ni;
        q->cap = ncap;
        q->head = 0;
    }
    pgs_expect *e = &q->items[(q->head + q->count) % q->cap];
    e->kind = kind;
    e->count = 1;
    e->hash = st ? st->hash : 0;
    e->tag = tag;
    q->count++;
    return 0;
}

static int exq_push_hash(pgs_expect_q *q, uint8_t kind, uint64_t hash)
{
    pgs_stmt tmp = {.hash = hash};
    return exq_push(q, kind, &tmp, NULL);
}

void exq_clear(pgs_expect_q *q)
{
    q->head = q->count = 0;
}

void exq_free(pgs_expect_q *q)
{
    free(q->items);
    q->items = NULL;
    q->cap = q->head = q->count = 0;
}

/* One completion of an ordinary request. */
static void exq_run_done(pgs_expect_q *q)
{
    pgs_expect *h = exq_head(q);
    if (h && h->kind == EX_RUN && --h->count == 0) exq_pop(q);
}

static bool is_fake(const pgs_expect *e)
{
    return e->kind == EX_FAKE_PARSE || e->kind == EX_FAKE_CLOSE || e->kind == EX_FAKE_QUERY ||
           e->kind == EX_FAKE_ERROR;
}

static const pgs_config *cfg(void)
{
    return g_pgs.cfg;
}

/* The client's mode is fixed at its login (client_after_auth). */
static bool tx_mode(const pgs_client *c)
{
    return c->pool_mode == PGS_POOL_TRANSACTION;
}

static bool track_prepared(const pgs_client *c)
{
    return tx_mode(c) && cfg()->max_prepared_statements > 0;
}

static void stats_add(_Atomic uint64_t *ctr, uint64_t v)
{
    atomic_store_explicit(ctr, atomic_load_explicit(ctr, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

/* Emits replies for requests we answered ourselves, once they reach the
 * head of the queue (all earlier replies already relayed). */
static void emit_fakes(pgs_server *sv, io_batch *cb)
{
    pgs_expect *h;
    while ((h = exq_head(&sv->exq)) != NULL && is_fake(h)) {
        proto_out o;
        if (cb) io_batch_out(cb, &o);
        switch (h->kind) {
        case EX_FAKE_PARSE:
            if (cb) proto_parse_complete(&o);
            break;
        case EX_FAKE_CLOSE:
            if (cb) proto_close_complete(&o);
            break;
        case EX_FAKE_QUERY:
            if (cb) {
                proto_command_complete(&o, h->tag);
                proto_ready_for_query(&o, sv->tx_status);
            }
            break;
        case EX_FAKE_ERROR:
            if (cb) {
                proto_error(&o, "ERROR", "0A000", h->tag,
                            "set PGSCALE_POOL_MODE=session for clients that need it");
                proto_ready_for_query(&o, sv->tx_status);
            }
            break;
        }
        if (cb) io_batch_commit_out(cb, &o);
        exq_pop(&sv->exq);
    }
}

/* ---------- server -> client ---------- */

/* After an error in an extended-protocol request, the server skips
 * everything up to the next Sync: those requests get no reply at all. */
static void skip_to_sync(pgs_server *sv)
{
    pgs_client *c = sv->client;
    pgs_expect *h;
    while ((h = exq_head(&sv->exq)) != NULL && h->kind != EX_SYNC && h->kind != EX_QUERY &&
           h->kind != EX_INTERNAL) {
        if (h->kind == EX_PARSE || h->kind == EX_PARSE_SWALLOW) {
            stmt_set_del(sv->prepared, h->hash);
            if (h->kind == EX_PARSE && c) stmt_map_del_hash(c->stmts, h->hash);
        }
        exq_pop(&sv->exq);
    }
}

static void apply_pending_set(pgs_server *sv, bool ok)
{
    pgs_client *c = sv->client;
    if (ok && c && sv->tx_status == 'I') {
        switch (sv->pending_set_kind) {
        case SQL_SET:
            params_set_extra(&c->params, sv->pending_set_name, sv->pending_set_stmt);
            params_set_extra(&sv->params, sv->pending_set_name, sv->pending_set_stmt);
            break;
        case SQL_RESET:
            params_set_extra(&c->params, sv->pending_set_name, NULL);
            params_set_extra(&sv->params, sv->pending_set_name, NULL);
            break;
        case SQL_RESET_ALL:
        case SQL_DISCARD_ALL:
            params_clear_extras(c->params);
            params_clear_extras(sv->params);
            if (sv->pending_set_kind == SQL_DISCARD_ALL) stmt_set_clear(sv->prepared);
            break;
        default:
            break;
        }
    }
    free(sv->pending_set_name);
    free(sv->pending_set_stmt);
    sv->pending_set_name = sv->pending_set_stmt = NULL;
    sv->pending_set_kind = 0;
}

static void unlink_and_release(pgs_client *c, pgs_server *sv)
{
    c->server = NULL;
    sv->client = NULL;
    atomic_store_explicit(&c->server_id, 0, memory_order_relaxed);
    atomic_store_explicit(&sv->client_id, 0, memory_order_relaxed);
    atomic_store_explicit(&c->state, CL_IDLE, memory_order_relaxed);
    pool_release(sv);
}

/* Does the server owe nothing and is the client between messages? */
static bool server_done(const pgs_server *sv)
{
    return sv->exq.count == 0 && sv->tx_status == 'I' && !sv->s.wb.pending &&
           sv->s.rbuf.pos == sv->s.rbuf.len && sv->fwd_remaining == 0;
}

static void server_protocol_error(pgs_server *sv, const char *what)
{
    log_warn("S-%u: %s", sv->id, what);
    if (sv->client) client_server_lost(sv->client, what);
    server_close(sv, what);
}

void relay_server_data(pgs_server *sv)
{
    pgs_worker *w = sv->w;
    pgs_client *c = sv->client;
    pgs_buf *b = &sv->s.rbuf;
    io_batch cb;
    io_batch_init(&cb, w, c ? &c->s : NULL);
    pgs_pool_stats *st = &sv->pool->stats;
    bool saw_ready = false;

    while (b->data && b->pos < b->len) {
        uint8_t *p = b->data + b->pos;
        uint32_t avail = b->len - b->pos;
        if (sv->fwd_remaining) {
            uint32_t n = PGS_MIN(avail, sv->fwd_remaining);
            if (!sv->fwd_drop && c) io_batch_add(&cb, p, n);
            b->pos += n;
            sv->fwd_remaining -= n;
            continue;
        }
        uint8_t type;
        uint32_t len;
        int rc = proto_peek_header(p, avail, cfg()->max_message_size, &type, &len);
        if (rc == PROTO_NEED_MORE) break;
        if (rc < 0 || !proto_is_backend_type(type)) {
            (void)io_batch_flush(&cb);
            server_protocol_error(sv, "server sent an invalid message");
            return;
        }
        uint32_t total = len + 1;
        pgs_expect *h = exq_head(&sv->exq);
        bool internal = h && h->kind == EX_INTERNAL;
        /* Small messages we read are held until whole. */
        bool need_whole = type == 'Z' || type == 'S' || (type == 'E' && internal);
        if (need_whole && avail < total) {
            if (total > INSPECT_MAX) {
                (void)io_batch_flush(&cb);
                server_protocol_error(sv, "server sent an oversized status message");
                return;
            }
            /* the batch points into the buffer: send it before moving bytes */
            if (io_batch_flush(&cb) < 0) break;
            if (io_buf_make_room(w, &sv->s, total) < 0) return;
            break;
        }
        const uint8_t *body = p + 5;
        bool drop = internal || !c;

        switch (type) {
        case 'Z': {
            char status = (char)body[0];
            bool was_query = h && (h->kind == EX_QUERY || h->kind == EX_SYNC);
            if (h && (h->kind == EX_SYNC || h->kind == EX_QUERY || h->kind == EX_INTERNAL))
                exq_pop(&sv->exq);
            sv->tx_status = status;
            if (sv->pending_set_kind && was_query) apply_pending_set(sv, !sv->query_failed);
            sv->query_failed = false;
            if (c && !internal) {
                uint64_t now = pgs_now_us();
                c->tx_status = status;
                /* idle time counts from the end of the last request, and
                 * the next query may be cancelled for its own timeout */
                c->last_activity_us = now;
                c->cancel_sent = false;
                stats_add(&st->query_count, 1);
                if (c->query_start_us)
                    stats_add(&st->query_us, pgs_elapsed_us(now, c->query_start_us));
                c->query_start_us = 0;
                if (status == 'I') {
                    stats_add(&st->xact_count, 1);
                    if (c->xact_start_us)
                        stats_add(&st->xact_us, pgs_elapsed_us(now, c->xact_start_us));
                    c->xact_start_us = 0;
                }
            }
            saw_ready = true;
            break;
        }
        case 'E':
            sv->query_failed = true;
            if (internal) {
                proto_error_fields f;
                if (proto_read_error(body, len - 4, &f) == 0 && f.message)
                    log_warn("S-%u: restoring session state failed: %s", sv->id, f.message);
                if (c) {
                    /* Tell the client; its settings are not all in effect. */
                    proto_out o;
                    io_batch_out(&cb, &o);
                    char msg[300];
                    snprintf(msg, sizeof(msg),
                             "pgscale could not restore this session's settings on a pooled "
                             "server connection: %s",
                             f.message ? f.message : "?");
                    proto_notice(&o, "WARNING", "01000", msg);
                    io_batch_commit_out(&cb, &o);
                }
                break;
            }
            if (h && h->kind != EX_SYNC && h->kind != EX_QUERY) {
                if (h->kind == EX_PARSE || h->kind == EX_PARSE_SWALLOW) {
                    stmt_set_del(sv->prepared, h->hash);
                    if (h->kind == EX_PARSE && c) stmt_map_del_hash(c->stmts, h->hash);
                }
                exq_pop(&sv->exq);
                skip_to_sync(sv);
            }
            break;
        case '1':
            if (h && h->kind == EX_PARSE_SWALLOW) drop = true;
            if (h && (h->kind == EX_PARSE || h->kind == EX_PARSE_SWALLOW))
                exq_pop(&sv->exq);
            else
                exq_run_done(&sv->exq);
            break;
        case '3':
            if (h && h->kind == EX_CLOSE_SWALLOW) {
                drop = true;
                exq_pop(&sv->exq);
            } else {
                exq_run_done(&sv->exq);
            }
            break;
        case '2':
        case 'T':
        case 'n':
        case 'C':
        case 'I':
        case 's':
            if (h && h->kind == EX_RUN) exq_run_done(&sv->exq);
            break;
        case 'S': {
            size_t pos = 0;
            const char *name = proto_get_string(body, len - 4, &pos);
            const char *value = proto_get_string(body, len - 4, &pos);
            if (name && value) {
                params_set(&sv->params, name, value);
                if (c) params_set(&c->params, name, value);
            }
            break;
        }
        default:
            break;
        }

        uint32_t n = PGS_MIN(avail, total);
        if (!drop) io_batch_add(&cb, p, n);
        b->pos += n;
        if (n < total) {
            sv->fwd_remaining = total - n;
            sv->fwd_drop = drop;
        }
        if (c) emit_fakes(sv, &cb);
    }
    if (c && sv->s.bytes_in != sv->bytes_counted) {
        stats_add(&sv->pool->stats.bytes_out, sv->s.bytes_in - sv->bytes_counted);
        sv->bytes_counted = sv->s.bytes_in;
    }
    if (io_batch_flush(&cb) < 0 && c) {
        client_close(c, "writing to the client failed");
        return;
    }
    if (b->data && b->pos == b->len) io_buf_release_if_empty(w, &sv->s);
    if (sv->s.closing) return;

    if (!c) {
        /* Our own reset after the client left. */
        if (saw_ready && sv->exq.count == 0) {
            if (sv->tx_status == 'I' && !sv->query_failed) {
                pool_release(sv);
            } else {
                server_close(sv, "could not reset the server connection");
            }
        }
        return;
    }
    if (saw_ready && tx_mode(c) && c->fwd_remaining == 0 && server_done(sv) &&
        !sv->pending_set_kind) {
        /* Whatever the client still has to receive was copied aside, so
         * the server can serve someone else already. */
        unlink_and_release(c, sv);
        /* The client may already have sent its next request. */
        if (c->s.rbuf.data && c->s.rbuf.pos < c->s.rbuf.len && !c->s.wb.pending)
            relay_client_data(c);
        return;
    }
    if (c->s.wb.pending) io_read_stop(&sv->s); /* the client is slow: wait for it */
}

/* ---------- client -> server ---------- */

static void client_protocol_error(pgs_client *c, const char *msg)
{
    log_info("C-%u: protocol violation: %s", c->id, msg);
    client_fail(c, "08P01", msg, NULL);
}

/* Prepares statement st on sv under its server-side name: a Parse added to
 * batch sb, whose reply is expected as `kind` (EX_PARSE: relayed to the
 * client; EX_PARSE_SWALLOW: ours).  When the server's cache is full, the
 * least recently used statement is closed first (reply swallowed).
 * Returns -1 on queue overflow. */
static int send_parse(pgs_server *sv, pgs_stmt *st, io_batch *sb, uint8_t kind)
{
    uint64_t evicted = 0;
    if (stmt_set_add(&sv->prepared, st->hash, cfg()->max_prepared_statements, &evicted)) {
        char name[STMT_SRV_NAME_LEN];
        stmt_srv_name(evicted, name);
        proto_out o;
        io_batch_out(sb, &o);
        size_t s0 = proto_begin(&o, 'C');
        proto_put_byte(&o, 'S');
        proto_put_string(&o, name);
        proto_end(&o, s0);
        io_batch_commit_out(sb, &o);
        if (exq_push_hash(&sv->exq, EX_CLOSE_SWALLOW, evicted) < 0) return -1;
    }
    atomic_store_explicit(&sv->n_prepared, (uint32_t)stmt_set_count(sv->prepared),
                          memory_order_relaxed);
    uint8_t *hdr = io_batch_scratch(sb, 5 + STMT_SRV_NAME_LEN);
    if (!hdr) return -1;
    hdr[0] = 'P';
    proto_put_be32(hdr + 1, 4 + STMT_SRV_NAME_LEN + st->body_len);
    memcpy(hdr + 5, st->srv_name, STMT_SRV_NAME_LEN);
    io_batch_add(sb, hdr, 5 + STMT_SRV_NAME_LEN);
    io_batch_add(sb, st->body, st->body_len);
    return exq_push(&sv->exq, kind, st, NULL);
}

/* Makes sure statement st is prepared on sv before a Bind or Describe
 * that uses it. */
static int ensure_prepared(pgs_server *sv, pgs_stmt *st, io_batch *sb)
{
    if (stmt_set_has(sv->prepared, st->hash)) return 0;
    return send_parse(sv, st, sb, EX_PARSE_SWALLOW);
}

/* Handles a named Parse in transaction mode.  The whole message is in
 * the buffer.  A statement the server already has is answered here. */
static int client_parse(pgs_client *c, pgs_server *sv, const uint8_t *body, uint32_t blen,
                        io_batch *sb)
{
    size_t pos = 0;
    const char *name = proto_get_string(body, blen, &pos);
    if (!name) return -2;
    size_t nlen = pos - 1;
    pgs_stmt *st = stmt_map_put(&c->stmts, name, nlen, body + pos, (uint32_t)(blen - pos));
    if (stmt_set_has(sv->prepared, st->hash)) return exq_push(&sv->exq, EX_FAKE_PARSE, st, NULL);
    return send_parse(sv, st, sb, EX_PARSE);
}

/* Looks at a simple query in transaction mode: refuses what cannot work
 * across pooled connections, notes settings to carry.  Returns 1 when the
 * query was answered here (not forwarded). */
static int client_query_check(pgs_client *c, pgs_server *sv, const uint8_t *text,
                              uint32_t tlen)
{
    sql_info info;
    sqlscan_classify((const char *)text, tlen, &info);
    const char *refuse = NULL;
    bool idle = c->tx_status == 'I';
    switch (info.kind) {
    case SQL_LISTEN:
        refuse = "LISTEN is not supported in transaction pooling mode: notifications would be "
                 "delivered to whichever client uses the server connection next";
        break;
    case SQL_PREPARE:
        if (idle)
            refuse = "SQL PREPARE outside a transaction is not supported in transaction pooling "
                     "mode; use protocol-level prepared statements (your driver's prepare) or "
                     "run PREPARE and EXECUTE inside one transaction";
        break;
    case SQL_CREATE_TEMP:
        if (idle)
            refuse = "a temporary table created outside a transaction would stay on a pooled "
                     "server connection and be gone for your next statement; create it inside "
                     "a transaction (ON COMMIT DROP)";
        break;
    case SQL_DECLARE_HOLD:
        refuse = "WITH HOLD cursors outlive their transaction and cannot follow a client in "
                 "transaction pooling mode";
        break;
    case SQL_DEALLOCATE:
    case SQL_DEALLOCATE_ALL:
        if (track_prepared(c) && !info.multi) {
            if (info.kind == SQL_DEALLOCATE)
                stmt_map_del(c->stmts, info.name, strlen(info.name));
            else
                stmt_map_clear(c->stmts);
            return exq_push(&sv->exq, EX_FAKE_QUERY, NULL,
                            info.kind == SQL_DEALLOCATE ? "DEALLOCATE" : "DEALLOCATE ALL") < 0
                       ? -1
                       : 1;
        }
        break;
    case SQL_SET:
    case SQL_RESET:
        if (idle && !info.multi && info.name[0] && params_reported_index(info.name) < 0) {
            sv->pending_set_kind = info.kind;
            sv->pending_set_name = pgs_xstrdup(info.name);
            size_t l = tlen;
            while (l > 0 && (text[l - 1] == '\0' || text[l - 1] == ';' || text[l - 1] == ' ' ||
                             text[l - 1] == '\n' || text[l - 1] == '\t' || text[l - 1] == '\r'))
                l--;
            sv->pending_set_stmt = pgs_xstrndup((const char *)text, l);
        }
        break;
    case SQL_RESET_ALL:
    case SQL_DISCARD_ALL:
        if (idle) sv->pending_set_kind = info.kind;
        break;
    default:
        break;
    }
    if (!refuse && info.session_lock)
        refuse = "session-level advisory locks (pg_advisory_lock) would stay held on a pooled "
                 "server connection after your transaction; use pg_advisory_xact_lock";
    if (refuse) {
        free(sv->pending_set_name);
        free(sv->pending_set_stmt);
        sv->pending_set_name = sv->pending_set_stmt = NULL;
        sv->pending_set_kind = 0;
        return exq_push(&sv->exq, EX_FAKE_ERROR, NULL, refuse) < 0 ? -1 : 1;
    }
    return 0;
}

/* Rewrites the statement name of a Bind ('B') or Describe ('D' 'S') to
 * the server-side name, preparing the statement first if needed.  The
 * names are within the first `have` bytes of the message at p.
 * Returns bytes of the original message consumed into the batch (the
 * rest streams as is), 0 to pass the message unchanged, -1 on error. */
static int32_t client_rename(pgs_client *c, pgs_server *sv, uint8_t type, const uint8_t *p,
                             uint32_t have, uint32_t total, io_batch *sb)
{
    const uint8_t *body = p + 5;
    size_t blen = have - 5, pos = 0;
    const char *portal = NULL;
    if (type == 'B') {
        portal = proto_get_string(body, blen, &pos);
        if (!portal) return -2;
    } else {
        if (blen < 1 || body[0] != 'S') return 0;
        pos = 1;
    }
    size_t name_at = pos;
    const char *name = proto_get_string(body, blen, &pos);
    if (!name) return -2;
    if (!*name) return 0; /* unnamed statement: nothing to rename */
    pgs_stmt *st = stmt_map_get(c->stmts, name, pos - name_at - 1);
    if (!st) return 0; /* let the server say it does not exist */
    if (ensure_prepared(sv, st, sb) < 0) return -1;
    uint32_t old_name_len = (uint32_t)(pos - name_at);
    uint32_t new_len = total - 1 - old_name_len + STMT_SRV_NAME_LEN;
    uint8_t *hdr = io_batch_scratch(sb, 5 + name_at + STMT_SRV_NAME_LEN);
    if (!hdr) return -1;
    hdr[0] = type;
    proto_put_be32(hdr + 1, new_len);
    memcpy(hdr + 5, body, name_at);
    memcpy(hdr + 5 + name_at, st->srv_name, STMT_SRV_NAME_LEN);
    io_batch_add(sb, hdr, 5 + name_at + STMT_SRV_NAME_LEN);
    return (int32_t)(5 + pos);
}

/* Forwards what the client has in its buffer to its server. */
static void client_forward(pgs_client *c)
{
    pgs_server *sv = c->server;
    pgs_worker *w = c->w;
    pgs_buf *b = &c->s.rbuf;
    io_batch sb;
    io_batch_init(&sb, w, &sv->s);
    bool any_fake = false;

    while (b->data && b->pos < b->len) {
        uint8_t *p = b->data + b->pos;
        uint32_t avail = b->len - b->pos;
        if (c->fwd_remaining) {
            uint32_t n = PGS_MIN(avail, c->fwd_remaining);
            io_batch_add(&sb, p, n);
            b->pos += n;
            c->fwd_remaining -= n;
            continue;
        }
        uint8_t type;
        uint32_t len;
        int rc = proto_peek_header(p, avail, cfg()->max_message_size, &type, &len);
        if (rc == PROTO_NEED_MORE) break;
        if (rc < 0) {
            (void)io_batch_flush(&sb);
            client_protocol_error(c, "invalid message length from client");
            return;
        }
        if (!proto_is_frontend_type(type) || type == 'p') {
            (void)io_batch_flush(&sb);
            char msg[80];
            snprintf(msg, sizeof(msg), "invalid frontend message type %d", type);
            client_protocol_error(c, msg);
            return;
        }
        uint32_t total = len + 1;
        bool tracked = track_prepared(c);
        uint32_t need = 0;
        switch (type) {
        case 'P':
            /* a named Parse is kept whole; the name's first byte tells */
            if (tracked) need = avail < 6 ? 6 : (p[5] != '\0' ? total : 0);
            break;
        case 'B':
        case 'D':
        case 'C':
        case 'Q':
            need = tx_mode(c) ? PGS_MIN(total, INSPECT_MAX) : 0;
            break;
        default:
            break;
        }
        if (need && avail < need) {
            /* the batch points into the buffer: send it before moving bytes */
            if (io_batch_flush(&sb) < 0) break;
            if (io_buf_make_room(w, &c->s, need) < 0) return;
            break;
        }
        if (c->tx_status == 'I' && !c->xact_start_us) c->xact_start_us = pgs_now_us();

        int32_t consumed = 0;   /* bytes of this message handled above the loop tail */
        bool forward = true;
        int r = 0;
        uint8_t ex = EX_RUN;
        switch (type) {
        case 'X':
            (void)io_batch_flush(&sb);
            b->pos = b->len;
            client_close(c, "client sent Terminate");
            return;
        case 'Q':
            ex = EX_QUERY;
            if (!c->query_start_us) c->query_start_us = pgs_now_us();
            if (tx_mode(c)) {
                uint32_t tlen = PGS_MIN(total, avail) - 5;
                if (total <= avail && tlen > 0 && p[5 + tlen - 1] == '\0')
                    tlen--; /* the query string's terminator is not SQL */
                r = client_query_check(c, sv, p + 5, tlen);
                if (r == 1) {
                    forward = false;
                    any_fake = true;
                    if (total > avail) {
                        /* refused but longer than what we have: swallow the rest */
                        c->fwd_remaining = 0;
                    }
                }
            }
            break;
        case 'F':
            ex = EX_QUERY;
            if (!c->query_start_us) c->query_start_us = pgs_now_us();
            break;
        case 'S':
            ex = EX_SYNC;
            if (!c->query_start_us) c->query_start_us = pgs_now_us();
            break;
        case 'H':
        case 'd':
        case 'c':
        case 'f':
            ex = 0xff; /* no reply */
            break;
        case 'P':
            if (need) {
                r = client_parse(c, sv, p + 5, len - 4, &sb);
                forward = false;
                ex = 0xff;
                if (r == 0 && exq_head(&sv->exq) && is_fake(exq_head(&sv->exq))) any_fake = true;
                if (r == 0) any_fake = true;
            }
            break;
        case 'B':
        case 'D':
            if (tracked) {
                consumed = client_rename(c, sv, type, p, PGS_MIN(avail, total), total, &sb);
                if (consumed < 0) r = consumed;
            }
            break;
        case 'C':
            if (tracked && len > 6 && p[5] == 'S' && p[6] != '\0') {
                size_t pos = 1;
                const char *name = proto_get_string(p + 5, len - 4, &pos);
                if (!name) {
                    r = -2;
                    break;
                }
                if (stmt_map_get(c->stmts, name, pos - 2)) {
                    stmt_map_del(c->stmts, name, pos - 2);
                    r = exq_push(&sv->exq, EX_FAKE_CLOSE, NULL, NULL);
                    forward = false;
                    ex = 0xff;
                    any_fake = true;
                }
            }
            break;
        default:
            break;
        }
        if (r == -2) {
            (void)io_batch_flush(&sb);
            client_protocol_error(c, "malformed message from client");
            return;
        }
        if (r < 0) {
            (void)io_batch_flush(&sb);
            client_fail(c, "54000", "too many requests pipelined without waiting for replies",
                        NULL);
            return;
        }
        if (forward && ex != 0xff && exq_push(&sv->exq, ex, NULL, NULL) < 0) {
            (void)io_batch_flush(&sb);
            client_fail(c, "54000", "too many requests pipelined without waiting for replies",
                        NULL);
            return;
        }
        uint32_t n = PGS_MIN(avail, total);
        if (forward) io_batch_add(&sb, p + consumed, n - (uint32_t)consumed);
        b->pos += n;
        if (n < total) c->fwd_remaining = total - n;
        if (!forward && n < total) {
            /* a refused query longer than the buffer: drop its tail */
            c->fwd_remaining = 0;
            c->skip_remaining = total - n;
        }
    }
    if (c->s.bytes_in != c->bytes_counted) {
        stats_add(&c->pool->stats.bytes_in, c->s.bytes_in - c->bytes_counted);
        c->bytes_counted = c->s.bytes_in;
    }
    if (io_batch_flush(&sb) < 0) {
        client_server_lost(c, "writing to the PostgreSQL server failed");
        server_close(sv, "write failed");
        return;
    }
    if (any_fake) {
        io_batch cb;
        io_batch_init(&cb, w, &c->s);
        emit_fakes(sv, &cb);
        if (io_batch_flush(&cb) < 0) {
            client_close(c, "writing to the client failed");
            return;
        }
        if (tx_mode(c) && c->fwd_remaining == 0 && server_done(sv) && !sv->pending_set_kind &&
            !(b->data && b->pos < b->len)) {
            unlink_and_release(c, sv);
        }
    }
}

void relay_client_data(pgs_client *c)
{
    if (c->s.closing) return;
    pgs_buf *b = &c->s.rbuf;
    /* drop the tail of a refused oversized query */
    while (c->skip_remaining && b->data && b->pos < b->len) {
        uint32_t n = PGS_MIN(b->len - b->pos, c->skip_remaining);
        b->pos += n;
        c->skip_remaining -= n;
    }
    if (!c->server) {
        if (!b->data || b->pos >= b->len) {
            io_buf_release_if_empty(c->w, &c->s);
            if (io_read_start(&c->s) < 0) client_close(c, "read failed");
            return;
        }
        int st = atomic_load_explicit(&c->state, memory_order_relaxed);
        if (st == CL_WAITING) return;
        /* A Terminate needs no server. */
        if (b->len - b->pos >= 5 && b->data[b->pos] == 'X') {
            client_close(c, "client sent Terminate");
            return;
        }
        /* Queued or not, the client stays readable: requests pile up in
         * its buffer until a server is ours (client_on_read stops reading
         * when the buffer fills). */
        pool_checkout(c->pool, c);
        return;
    }
    pgs_server *sv = c->server;
    if (sv->s.wb.pending) {
        io_read_stop(&c->s);
        return;
    }
    client_forward(c);
    if (c->s.closing) return;
    if (c->server && c->server->s.wb.pending) {
        io_read_stop(&c->s);
    } else {
        if (b->data && b->pos == b->len) io_buf_release_if_empty(c->w, &c->s);
        if (io_read_start(&c->s) < 0) client_close(c, "read failed");
    }
    if (!c->server && b->data && b->pos < b->len) {
        /* released after a fake reply with more requests queued */
        relay_client_data(c);
    }
}

void relay_link(pgs_client *c, pgs_server *sv)
{
    c->server = sv;
    sv->client = c;
    atomic_store_explicit(&c->server_id, sv->id, memory_order_relaxed);
    atomic_store_explicit(&sv->client_id, c->id, memory_order_relaxed);
    atomic_store_explicit(&c->state, CL_ACTIVE, memory_order_relaxed);
    atomic_store_explicit(&sv->state, SV_ACTIVE, memory_order_relaxed);
    char sql[4096];
    int n = params_sync_sql(c->params, &sv->params, sql, sizeof(sql));
    if (n < 0) {
        log_warn("C-%u: session settings too large to restore", c->id);
    } else if (n > 0) {
        if (server_send_internal(sv, sql, (size_t)n) < 0) {
            client_server_lost(c, "writing to the PostgreSQL server failed");
            server_close(sv, "write failed");
            return;
        }
    }
    if (io_read_start(&sv->s) < 0) {
        client_server_lost(c, "reading from the PostgreSQL server failed");
        server_close(sv, "read failed");
        return;
    }
    relay_client_data(c);
}

void relay_client_gone(pgs_client *c)
{
    pgs_server *sv = c->server;
    if (!sv) return;
    /* A query still running would keep its locks until it ends: cancel it
     * (the server connection is closed below anyway). */
    if (sv->exq.count > 0) client_forward_cancel(c);
    c->server = NULL;
    sv->client = NULL;
    atomic_store_explicit(&sv->client_id, 0, memory_order_relaxed);
    if (sv->pending_set_kind) apply_pending_set(sv, false);
    /* Replies still owed, or half a message sent: the server's state is
     * unknown, so it cannot serve anyone else. */
    bool busy = sv->exq.count > 0 || c->fwd_remaining > 0 || sv->s.wb.pending ||
                sv->fwd_remaining > 0;
    if (busy) {
        server_close(sv, "client left with a request in progress");
        return;
    }
    atomic_store_explicit(&sv->state, SV_RESET, memory_order_relaxed);
    int rc = 0;
    if (sv->tx_status != 'I') rc = server_send_internal(sv, "ROLLBACK", 8);
    if (rc == 0 && !tx_mode(c)) {
        params_clear_extras(sv->params);
        stmt_set_clear(sv->prepared);
        rc = server_send_internal(sv, "DISCARD ALL", 11);
    }
    if (rc < 0) {
        server_close(sv, "could not reset the server connection");
        return;
    }
    if (sv->exq.count == 0) pool_release(sv);
}
