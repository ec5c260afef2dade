/* Relaying between a client and its server.  Bytes are forwarded in spans
 * straight from the read buffer (no copy) unless a message must change on
 * the way: prepared statements are renamed in transaction mode, requests
 * pgscale answers itself get synthesized replies, our own reset/sync
 * queries have their replies swallowed.  The expected-response queue
 * (pgs_expect_q) keeps all of this in request order, and tells when a
 * server owes nothing more, which is when a transaction-mode server goes
 * back to its pool. */
#include "metrics.h"
#include "relay.h"
#include "route.h"

#include <stdio.h>
#include <string.h>

#include "client.h"
#include "io.h"
#include "params.h"
#include "pool.h"
#include "prepared.h"
#include "proto.h"
#include "rcache.h"
#include "server.h"
#include "sqlscan.h"
#include "topology.h"
#include "worker.h"

/* Messages whose start we look at are held until this much of them is in
 * the buffer; beyond it, they stream. */
#define INSPECT_MAX (64u * 1024u)
#define EXQ_MAX (1u << 20)
/* Requests one client may have in flight on its server (entries of the
 * expected-response queue; runs of plain requests share one).  Past it the
 * client is not read until half have been answered: what pgscale keeps per
 * request stays bounded however deep a client pipelines, and however much
 * the kernel's socket buffers between pgscale and PostgreSQL hold. */
#define PIPELINE_MAX 16384u
/* PostgreSQL's limit (PQ_SMALL_MESSAGE_LIMIT) for every message but Query,
 * FunctionCall, Parse, Bind and CopyData. */
#define SMALL_MESSAGE_MAX 10000u
/* Largest restore of a client's settings on a server connection. */
#define RESTORE_MAX (1u << 20)

/* ---------- expected-response queue ---------- */

static pgs_expect *exq_head(pgs_expect_q *q)
{
    return q->count ? &q->items[q->head] : NULL;
}

static void exq_pop(pgs_expect_q *q)
{
    if (!q->count) return;
    free(q->items[q->head].owned);
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
    e->id = st ? st->id : 0;
    e->tag = tag;
    e->owned = NULL;
    q->count++;
    return 0;
}

/* A fake reply whose text is built here: the queue owns and frees it. */
static int exq_push_owned(pgs_expect_q *q, uint8_t kind, char *text)
{
    if (exq_push(q, kind, NULL, text) < 0) {
        free(text);
        return -1;
    }
    q->items[(q->head + q->count - 1) % q->cap].owned = text;
    return 0;
}

static int exq_push_id(pgs_expect_q *q, uint8_t kind, uint64_t id)
{
    pgs_stmt tmp = {.id = id};
    return exq_push(q, kind, &tmp, NULL);
}

void exq_clear(pgs_expect_q *q)
{
    while (q->count) exq_pop(q);
    q->head = 0;
}

void exq_free(pgs_expect_q *q)
{
    exq_clear(q);
    free(q->items);
    q->items = NULL;
    q->cap = q->head = q->count = 0;
}

/* One completion of an ordinary request. */
static void exq_run_done(pgs_expect_q *q)
{
    pgs_expect *h = exq_head(q);
    if (h && (h->kind == EX_RUN || h->kind == EX_STMT_RUN) && --h->count == 0) exq_pop(q);
}

/* The hint of pgscale's own 0A000 refusals. */
#define FAKE_ERROR_HINT "set PGSCALE_POOL_MODE=session for clients that need it"

static bool is_fake(const pgs_expect *e)
{
    switch (e->kind) {
    case EX_FAKE_PARSE:
    case EX_FAKE_CLOSE:
    case EX_FAKE_QUERY:
    case EX_FAKE_ERROR:
    case EX_FAKE_BIND:
    case EX_FAKE_DESC_STMT:
    case EX_FAKE_NODATA:
    case EX_FAKE_EXEC:
    case EX_FAKE_EXT_ERROR:
        return true;
    default:
        return false;
    }
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

/* ---------- pinning ----------
 *
 * Session state that cannot follow a client to another server connection
 * (a temporary table, a WITH HOLD cursor, LISTEN, a session-level advisory
 * lock, an SQL-level prepared statement) pins a transaction-mode client to
 * its server: from then on it keeps that server between transactions, as
 * in session mode, until a statement provably ends the state (DISCARD ALL,
 * DISCARD TEMP, UNLISTEN *, CLOSE ALL, pg_advisory_unlock_all(),
 * DEALLOCATE ALL).  A statement is seen as it is sent, before its result:
 * pinning a client whose statement then fails costs a server connection
 * for a while; pinning one too late would hand its state to someone else.
 * At most max_pinned clients of a pool are pinned at once, so that pinned
 * clients cannot take every server; past it the statement is refused. */

static const char *const pin_names[] = {"temp", "hold", "listen", "lock", "prepare", "config",
                                        "sequence"};
static const char *const pin_what[] = {
    "a temporary table", "a WITH HOLD cursor", "LISTEN", "a session-level advisory lock",
    "an SQL PREPARE", "a set_config() whose setting pgscale cannot read from the statement",
    "lastval()/currval()"};

void relay_pin_names(unsigned mask, char *buf, size_t n)
{
    size_t at = 0;
    if (n) buf[0] = '\0';
    for (size_t i = 0; i < PGS_ARRAY_LEN(pin_names); i++) {
        if (!(mask & (1u << i))) continue;
        int w = snprintf(buf + at, n - at, "%s%s", at ? "," : "", pin_names[i]);
        if (w < 0 || (size_t)w >= n - at) break;
        at += (size_t)w;
    }
}

static unsigned pin_of(const pgs_client *c)
{
    return atomic_load_explicit(&c->pin, memory_order_relaxed);
}

static bool pinning_on(const pgs_client *c)
{
    return tx_mode(c) && atomic_load_explicit(&c->pool->sh->pinning, memory_order_relaxed);
}

/* Adds the reasons in `want` to the client's pin, taking a slot of its
 * pool's max_pinned when it was not pinned.  -1 when no slot is left:
 * *refusal is then the error message (allocated, after `prefix`). */
static int pin_add(pgs_client *c, unsigned want, const char *prefix, char **refusal)
{
    unsigned cur = pin_of(c), add = want & ~cur & SQLSCAN_STATE_ALL;
    if (!add) return 0;
    pgs_pool_shared *sh = c->pool->sh;
    if (!cur) {
        int max = atomic_load(&sh->max_pinned);
        int n = atomic_load(&sh->pinned);
        do {
            if (n >= max) {
                const char *what = "session state";
                for (size_t i = 0; i < PGS_ARRAY_LEN(pin_what); i++)
                    if (add & (1u << i)) {
                        what = pin_what[i];
                        break;
                    }
                size_t len = 600;
                *refusal = pgs_xmalloc(len);
                snprintf(*refusal, len,
                         "%s%s would pin this client to its server connection, but %d clients "
                         "of the pool for db=%s user=%s are pinned already (max_pinned=%d); "
                         "raise max_pinned (PGSCALE_MAX_PINNED), end that state in other "
                         "clients sooner (DISCARD ALL), or use pool_mode session for them",
                         prefix, what, n, sh->database, sh->user, max);
                log_info("C-%u: refused: max_pinned (%d) reached", c->id, max);
                return -1;
            }
        } while (!atomic_compare_exchange_weak(&sh->pinned, &n, n + 1));
    }
    atomic_store_explicit(&c->pin, (uint8_t)(cur | add), memory_order_relaxed);
    unsigned news = add & ~(unsigned)c->pin_logged;
    if (news) {
        char names[64];
        relay_pin_names(news, names, sizeof(names));
        log_info("C-%u: pinned to S-%u (%s): session state that cannot follow the client to "
                 "another server connection",
                 c->id, c->server ? c->server->id : 0, names);
        c->pin_logged |= (uint8_t)news;
    }
    return 0;
}

/* The state behind `reasons` is gone: when nothing else pins the client,
 * its slot goes back (the server follows at the next idle point). */
static void pin_drop(pgs_client *c, unsigned reasons)
{
    unsigned cur = pin_of(c);
    if (!(cur & reasons)) return;
    unsigned left = cur & ~reasons;
    atomic_store_explicit(&c->pin, (uint8_t)left, memory_order_relaxed);
    if (!left) {
        atomic_fetch_sub(&c->pool->sh->pinned, 1);
        log_debug("C-%u: no longer pinned", c->id);
    }
}

void relay_unpin_all(pgs_client *c)
{
    pin_drop(c, SQLSCAN_STATE_ALL);
}

/* The client gives its server back between transactions. */
static bool releases_server(const pgs_client *c)
{
    return tx_mode(c) && !pin_of(c);
}

/* ---------- sequence state ----------
 *
 * nextval() leaves the session's last value behind for lastval() and
 * currval(); in transaction mode "the session" is whichever server
 * connection ran the statement.  Rather than pin every client that
 * inserts, pgscale keeps two facts and decides when a statement reads the
 * state:
 *
 * - A server's sequence values belong to one client at a time.  Each time
 *   a server passes to a client other than the last one, it starts a new
 *   run (a process-unique number), and when a statement that may have
 *   called nextval ran in the previous run, DISCARD SEQUENCES goes ahead
 *   of the new client's requests (pipelined: no round trip).  So a server
 *   linked to a client never holds another client's sequence values.
 * - Each client remembers the run of its last statement that may have
 *   called nextval (sqlscan_sequence_use: writes, nextval, functions not
 *   known to be harmless), and whether such statements ran in several
 *   runs.
 *
 * lastval() is then exact when that run is the server's current run (or
 * the client never ran such a statement: the server's state is empty, as
 * the session's would be); currval() when, in addition, all of them ran
 * in that run (otherwise the sequence it names may have been used last in
 * another run).  Anything else is refused with 0A000.  A client that reads
 * the state is pinned (reason "sequence") -- at once when the read is
 * exact, else at its next statement that may call nextval -- so that from
 * then on its statements stay in one run.  A pin for this reason is only
 * taken within max_pinned and while at least one server of the pool stays
 * unpinned; without it the client carries on as above.  pool_checkout
 * gives a client the server of its run when that one is idle. */

static _Atomic uint64_t seq_ids = 1;

static uint64_t seq_new_id(void)
{
    return atomic_fetch_add_explicit(&seq_ids, 1, memory_order_relaxed);
}

static int pin_add(pgs_client *c, unsigned want, const char *prefix, char **refusal);

static void seq_pin(pgs_client *c)
{
    if (!pinning_on(c) || (pin_of(c) & SQLSCAN_STATE_SEQUENCE)) return;
    pgs_pool_shared *sh = c->pool->sh;
    if (!pin_of(c)) {
        int n = atomic_load(&sh->pinned);
        if (n >= atomic_load(&sh->max_pinned) || n + 1 >= atomic_load(&sh->pool_size)) return;
    }
    char *msg = NULL;
    if (pin_add(c, SQLSCAN_STATE_SEQUENCE, "", &msg) < 0) free(msg); /* raced: stay unpinned */
}

#define SEQ_REFUSE_OTHER                                                                        \
    "lastval()/currval() after another client used the server connection: the value would "   \
    "be another session's; use INSERT ... RETURNING, or session mode"
#define SEQ_REFUSE_SPLIT                                                                        \
    "currval() after this session's earlier sequence values were made on other server "       \
    "connections: the value could be another one than this session's last; use INSERT ... "   \
    "RETURNING, or session mode"

static void seq_forget(pgs_client *c, pgs_server *sv, bool discarded);

/* A statement using sequence state (`use`: SQLSCAN_SEQ_*) is about to run
 * on sv: NULL when it may (the bookkeeping is done), else why not.  After a
 * refusal the client's sequence state starts over, as after DISCARD
 * SEQUENCES: its values are on server connections that other clients use
 * now, and starting over makes its next insert and read exact again
 * (otherwise currval() would stay refused for good). */
static const char *seq_use(pgs_client *c, pgs_server *sv, unsigned use)
{
    if (!use) return NULL;
    /* after a refusal, reads stay refused until the next statement that
     * may call nextval: the values the client expects are gone */
    bool here = !c->seq_lost && (c->seq_run == 0 || c->seq_run == sv->seq_run);
    if (use & (SQLSCAN_SEQ_LASTVAL | SQLSCAN_SEQ_CURRVAL)) {
        c->seq_reader = true;
        if (!here || ((use & SQLSCAN_SEQ_CURRVAL) && c->seq_split)) {
            log_debug("C-%u: lastval()/currval() refused: its sequence values are not on S-%u",
                      c->id, sv->id);
            seq_forget(c, sv, false);
            c->seq_lost = true;
            return here ? SEQ_REFUSE_SPLIT : SEQ_REFUSE_OTHER;
        }
        seq_pin(c);
    }
    if (use & SQLSCAN_SEQ_NEXT) {
        c->seq_lost = false;
        if (c->seq_run && c->seq_run != sv->seq_run) c->seq_split = true;
        c->seq_run = sv->seq_run;
        sv->seq_dirty = true;
        if (c->seq_reader) seq_pin(c);
    }
    return NULL;
}

/* The client's sequence state starts over: DISCARD SEQUENCES or ALL ran
 * on sv (`discarded`), or a read of it was refused.  The client takes a new
 * identity, so that every server holding its old values starts a new run
 * (with DISCARD SEQUENCES) when it next serves it; sv too, unless it just
 * discarded them itself. */
static void seq_forget(pgs_client *c, pgs_server *sv, bool discarded)
{
    c->seq_uid = seq_new_id();
    c->seq_run = 0;
    c->seq_split = c->seq_lost = false;
    if (!sv) return;
    if (discarded) {
        sv->seq_owner = c->seq_uid;
        sv->seq_run = seq_new_id();
        sv->seq_dirty = false;
    } else {
        sv->seq_owner = 0;
        sv->seq_dirty = true;
    }
}


/* An error the server sent c, for /metrics and the status page (body
 * NULL: streamed, too large to read: counted without its fields). */
static void note_server_error(pgs_client *c, pgs_server *sv, const uint8_t *body, uint32_t n)
{
    proto_error_fields f = {0};
    if (!body || proto_read_error(body, n, &f) != 0) f.sqlstate = f.message = NULL;
    if (f.sqlstate && strlen(f.sqlstate) != 5) f.sqlstate = NULL;
    metrics_note_error(sv->pool, f.sqlstate, f.message, c->database, c->user);
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
                if (sv->client)
                    metrics_note_error(sv->pool, "0A000", h->tag, sv->client->database,
                                       sv->client->user);
                proto_error(&o, "ERROR", "0A000", h->tag, FAKE_ERROR_HINT);
                proto_ready_for_query(&o, sv->tx_status);
            }
            break;
        case EX_FAKE_BIND:
            if (cb) proto_end(&o, proto_begin(&o, '2'));
            break;
        case EX_FAKE_DESC_STMT:
            if (cb) {
                size_t s0 = proto_begin(&o, 't');
                proto_put_int16(&o, 0);
                proto_end(&o, s0);
                proto_end(&o, proto_begin(&o, 'n'));
            }
            break;
        case EX_FAKE_NODATA:
            if (cb) proto_end(&o, proto_begin(&o, 'n'));
            break;
        case EX_FAKE_EXEC:
            if (cb) proto_command_complete(&o, h->tag);
            break;
        case EX_FAKE_EXT_ERROR:
            if (cb) {
                char state[6];
                memcpy(state, h->tag, 5);
                state[5] = '\0';
                if (sv->client)
                    metrics_note_error(sv->pool, state, h->tag + 5, sv->client->database,
                                       sv->client->user);
                proto_error(&o, "ERROR", state, h->tag + 5, NULL);
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
            stmt_set_del(sv->prepared, h->id);
            if (h->kind == EX_PARSE && c) stmt_map_del_id(c->stmts, h->id);
        }
        exq_pop(&sv->exq);
    }
}

/* pending_set_kind of a SELECT whose set_config calls are recorded when it
 * succeeds; pending_set_stmt then holds "name\0statement\0" for each call,
 * then a final NUL. */
#define PENDING_SET_CONFIG (-1)

/* Forgets the SET/RESET waiting for its answer (recorded or not). */
static void drop_pending_set(pgs_server *sv)
{
    free(sv->pending_set_name);
    free(sv->pending_set_stmt);
    sv->pending_set_name = sv->pending_set_stmt = NULL;
    sv->pending_set_kind = 0;
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
        case PENDING_SET_CONFIG:
            for (const char *e = sv->pending_set_stmt; *e;) {
                const char *stmt = e + strlen(e) + 1;
                params_set_extra(&c->params, e, stmt);
                params_set_extra(&sv->params, e, stmt);
                e = stmt + strlen(stmt) + 1;
            }
            break;
        case SQL_RESET_ALL:
        case SQL_DISCARD_ALL:
            params_clear_extras(c->params);
            params_clear_extras(sv->params);
            if (sv->pending_set_kind == SQL_DISCARD_ALL) {
                stmt_set_clear(sv->prepared);
                stmt_map_clear(c->stmts); /* the client's own are gone too */
                pin_drop(c, SQLSCAN_STATE_ALL); /* and every kind of session state */
                seq_forget(c, sv, true);
            }
            break;
        default:
            break;
        }
    }
    drop_pending_set(sv);
}

/* Is the server provably idle, as PostgreSQL itself sees it: its last
 * ReadyForQuery said 'I', no reply is owed, nothing was sent after that
 * ReadyForQuery (no Parse/Bind/Execute waiting for a Sync, no half
 * message, nothing queued), and nothing it sent is unread? */
static bool server_done(const pgs_server *sv)
{
    return sv->exq.count == 0 && sv->tx_status == 'I' && !sv->unsynced &&
           !sv->s.wb.pending && sv->s.rbuf.pos == sv->s.rbuf.len && sv->fwd_remaining == 0 &&
           !sv->pending_set_kind;
}

/* The one way back to the pool from the relay.  Every caller has checked
 * server_done(); checking again here keeps a future caller's mistake from
 * handing another client a server inside someone's transaction. */
static void release_idle(pgs_server *sv)
{
    if (!server_done(sv)) {
        log_error("S-%u: not idle when released (status %c, %u replies owed%s); closing it",
                  sv->id, sv->tx_status ? sv->tx_status : '?', sv->exq.count,
                  sv->unsynced ? ", unsynced" : "");
        server_close(sv, "released while not idle");
        return;
    }
    pool_release(sv);
}

/* ---------- retrying a read ----------
 *
 * A replica that dies (stopped, killed, its backend terminated, the
 * network cut) while it runs a client's read would cost the client an
 * 08006.  When nothing can have been seen of that read, it runs again on
 * another node instead.  All of these must hold:
 *
 * - transaction pooling, and route.c sent the unit to a replica as a
 *   proven read: outside any transaction (the client's last ReadyForQuery
 *   said 'I'), neither beginning nor ending one, not pinned;
 * - the unit is the only one in flight on that server (a client that
 *   pipelines a second unit behind it gives up the retry of the first),
 *   and it is at most RETRY_MAX bytes;
 * - not one byte has gone to the client since it was sent: no
 *   ParseComplete, RowDescription, notice, nothing (the client socket's
 *   byte count is unchanged, and nothing is batched for it).  The relay
 *   forwards as it reads and holds nothing back, so a retry is possible
 *   exactly until the server's first byte is relayed;
 * - the server connection was lost (end of stream, a read or write error)
 *   or the server sent a FATAL (pg_terminate_backend, a shutdown, a
 *   recovery conflict) before answering anything else.  A lost connection
 *   also marks the node down until the monitor sees it answer again; a
 *   FATAL only keeps the retry off that node.
 *
 * A unit is retried once; if the second node fails too, the client gets
 * the 08006 (or the FATAL's error) as without retries.  The request's
 * bytes are gone from the client's read buffer once forwarded, so a copy
 * of an eligible unit is kept (in one of the worker's read buffers) until
 * its answer starts.  The retry puts the copy back in front of whatever
 * the client sent since, and the unit goes through routing and
 * client_forward again as if it had just arrived: a Bind of a named
 * statement is prepared on the new server by the same path as any other
 * (the dead server's prepared statements die with it).  Writes, and
 * anything inside a transaction, are never retried: the primary's
 * outcome is unknown and is the client's to decide. */
#define RETRY_MAX INSPECT_MAX

static bool owes_client(const pgs_server *sv);

static void retry_drop(pgs_client *c)
{
    if (!c->retry_buf) return;
    if (c->retry_len <= PGS_BUF_SIZE)
        worker_buf_put(c->w, c->retry_buf);
    else
        free(c->retry_buf);
    c->retry_buf = NULL;
    c->retry_len = 0;
}

void relay_retry_drop(pgs_client *c)
{
    retry_drop(c);
}

/* The bytes of the unit that starts at p (a Query, or messages up to and
 * including a Sync), or 0 when it is not all in the avail bytes held. */
static uint32_t unit_bytes(const uint8_t *p, uint32_t avail)
{
    uint32_t off = 0;
    while (avail - off >= 5) {
        uint32_t total = proto_be32(p + off + 1) + 1;
        if (total < 5 || total > avail - off) return 0;
        uint8_t type = p[off];
        off += total;
        if (type == 'Q' || type == 'S') return off;
    }
    return 0;
}

/* A unit starts on sv (route_unit_allowed let it through): keep a copy
 * when it may be retried. */
static void retry_unit_start(pgs_client *c, pgs_server *sv, const uint8_t *p, uint32_t avail)
{
    /* one still unanswered before it: two in flight, neither retried */
    retry_drop(c);
    if (c->retry_from) {
        /* this is the retry itself: said once, and not retried again */
        log_info("C-%u: read retried on %s (S-%u) after %s failed before any reply reached "
                 "the client (%s%s)",
                 c->id, sv->pool->sh->node->name, sv->id, c->retry_from->name,
                 c->retry_state[0] ? "FATAL " : "connection lost",
                 c->retry_state);
        c->retry_from = NULL;
        return;
    }
    if (!c->unit_retryable || c->tx_status != 'I' || pin_of(c) || !tx_mode(c)) return;
    if (owes_client(sv) || sv->fwd_remaining) return;
    uint32_t n = unit_bytes(p, avail);
    if (!n || n > RETRY_MAX) return;
    c->retry_buf = n <= PGS_BUF_SIZE ? worker_buf_get(c->w) : pgs_xmalloc(n);
    memcpy(c->retry_buf, p, n);
    c->retry_len = n;
    c->retry_mark = c->s.bytes_out;
}

/* Puts the kept unit back in front of what the client sent since. */
static void retry_restore(pgs_client *c)
{
    pgs_buf *b = &c->s.rbuf;
    uint32_t rest = b->data ? b->len - b->pos : 0;
    uint32_t need = c->retry_len + rest;
    uint8_t *nb;
    uint32_t cap;
    if (need <= PGS_BUF_SIZE) {
        nb = c->retry_buf; /* a pooled buffer: it becomes the read buffer */
        cap = PGS_BUF_SIZE;
    } else {
        /* larger than a pooled buffer: io_buf_free frees it by its size */
        nb = pgs_xmalloc(need);
        cap = need;
        memcpy(nb, c->retry_buf, c->retry_len);
    }
    if (rest) memcpy(nb + c->retry_len, b->data + b->pos, rest);
    if (nb != c->retry_buf) retry_drop(c);
    c->retry_buf = NULL;
    c->retry_len = 0;
    io_buf_free(c->w, &c->s);
    b->data = nb;
    b->cap = cap;
    b->len = need;
    b->pos = 0;
}

/* Whether c's unit on sv may run again now (see above). */
static bool retry_ok(const pgs_client *c, const pgs_server *sv)
{
    return c->retry_buf && c->server == sv && c->s.bytes_out == c->retry_mark &&
           !c->fwd_remaining && !c->skip_remaining && c->tx_status == 'I' && !c->s.closing &&
           !c->want_close && !sv->fatal_relayed && tx_mode(c);
}

bool relay_retry_read(pgs_client *c, pgs_server *sv, bool lost, const char *why,
                      const char *sqlstate)
{
    if (!retry_ok(c, sv)) {
        retry_drop(c);
        return false;
    }
    route_read_failed(c, sv, lost, why);
    snprintf(c->retry_state, sizeof(c->retry_state), "%s", sqlstate ? sqlstate : "");
    log_debug("C-%u: its read on S-%u (%s) failed before any reply: %s; routing it again",
              c->id, sv->id, sv->pool->sh->node->name, why);
    if (sv->pending_set_kind) apply_pending_set(sv, false);
    if (c->ccache) rcache_unlinked(c);
    c->server = NULL;
    sv->client = NULL;
    atomic_store_explicit(&c->server_id, 0, memory_order_relaxed);
    atomic_store_explicit(&sv->client_id, 0, memory_order_relaxed);
    atomic_store_explicit(&c->state, CL_IDLE, memory_order_relaxed);
    server_close(sv, why);
    retry_restore(c);
    /* what the first attempt set up for the rest of its unit */
    c->ext_skip = false;
    c->pipeline_full = false;
    c->cancel_sent = false;
    relay_client_data(c);
    return true;
}

static void unlink_and_release(pgs_client *c, pgs_server *sv)
{
    retry_drop(c);
    c->server = NULL;
    sv->client = NULL;
    atomic_store_explicit(&c->server_id, 0, memory_order_relaxed);
    atomic_store_explicit(&sv->client_id, 0, memory_order_relaxed);
    atomic_store_explicit(&c->state, CL_IDLE, memory_order_relaxed);
    release_idle(sv);
}

/* The server answered a Bind or Describe of statement `id` with an error.
 * SQLSTATE 26000 means it no longer has the statement: something pgscale
 * did not see dropped it (a function running DEALLOCATE through dynamic
 * SQL, say).  Forget it on this server, so that the next use prepares it
 * again, and tell the client in terms of its own statement name, never the
 * server-side one it has never used.  Returns true when the error was
 * rewritten into cb (the server's is then dropped). */
static bool lost_statement(pgs_server *sv, uint64_t id, const uint8_t *body, uint32_t blen,
                           io_batch *cb)
{
    proto_error_fields f;
    if (proto_read_error(body, blen, &f) < 0 || !f.sqlstate || strcmp(f.sqlstate, "26000") != 0)
        return false;
    stmt_set_del(sv->prepared, id);
    atomic_store_explicit(&sv->n_prepared, (uint32_t)stmt_set_count(sv->prepared),
                          memory_order_relaxed);
    /* Whatever dropped it (DEALLOCATE ALL, DISCARD ALL) most likely dropped
     * the server's other statements too, which pgscale cannot tell from
     * those still there: the connection is replaced once this client is
     * done with it, so no other statement fails the same way.  (Retrying
     * the request here would need a copy of every request a client sends,
     * on the path every query takes, for a case that needs a function
     * deallocating behind pgscale's back.) */
    sv->broken = true;
    const char *name = sv->client ? stmt_map_name_of(sv->client->stmts, id) : NULL;
    log_info("S-%u: the server lost prepared statement %llu; the connection will be replaced",
             sv->id, (unsigned long long)id);
    char msg[300];
    snprintf(msg, sizeof(msg),
             "prepared statement \"%.64s\" was dropped on the server by a command pgscale did "
             "not see (such as DEALLOCATE run by a function); it will be prepared again on its "
             "next use",
             name ? name : "");
    proto_out o;
    io_batch_out(cb, &o);
    proto_error(&o, "ERROR", "26000", msg,
                "retry the statement; run DEALLOCATE only as a statement of its own");
    io_batch_commit_out(cb, &o);
    return true;
}

static void client_protocol_error(pgs_client *c, const char *msg);

/* Is this ErrorResponse a FATAL (or PANIC): the backend ends after it? */
static bool server_fatal(const uint8_t *body, uint32_t blen)
{
    proto_error_fields f;
    if (proto_read_error(body, blen, &f) != 0 || !f.severity) return false;
    return strcmp(f.severity, "FATAL") == 0 || strcmp(f.severity, "PANIC") == 0;
}

/* The ERROR that stands for a server's FATAL in transaction mode. */
static void put_tx_lost_error(proto_out *o, const char *state, const char *msg)
{
    proto_error(o, "ERROR", state, msg,
                "retry the transaction; the client connection is still usable (transaction "
                "pooling)");
}

/* Transaction mode: the server of the client's transaction sent a FATAL
 * and is ending.  The client's connection is pgscale's, not that
 * backend's: it stays open, and what the backend took with it is said
 * where the client waits for it.  Each request still owed a reply gets an
 * ERROR with the server's SQLSTATE (a simple query, a Sync'ed sequence:
 * with its ReadyForQuery 'I', the transaction being gone); an
 * extended-protocol sequence not yet Sync'ed gets its ERROR, and its
 * messages up to Sync are dropped as after any error.  A client idle in
 * its transaction gets the error at its next request (relay_client_data).
 * The server is closed and the client carries on on another one. */
static void tx_server_fatal(pgs_server *sv, pgs_client *c, io_batch *cb, const uint8_t *body,
                            uint32_t blen)
{
    proto_error_fields f;
    if (proto_read_error(body, blen, &f) != 0) f.message = f.sqlstate = NULL;
    const char *state = f.sqlstate && strlen(f.sqlstate) == 5 ? f.sqlstate : "08006";
    char msg[600];
    snprintf(msg, sizeof(msg),
             "the server connection of this transaction was terminated (%.400s); the "
             "transaction was rolled back (a COMMIT in progress may or may not have taken "
             "effect)",
             f.message ? f.message : "FATAL error");
    log_info("S-%u: FATAL from the server in C-%u's transaction: %s", sv->id, c->id,
             f.message ? f.message : "?");
    bool in_seq = false, any = false;
    for (uint32_t i = 0; i < sv->exq.count; i++) {
        const pgs_expect *e = &sv->exq.items[(sv->exq.head + i) % sv->exq.cap];
        if (e->kind == EX_INTERNAL) continue;
        proto_out o;
        if (!in_seq) {
            io_batch_out(cb, &o);
            put_tx_lost_error(&o, state, msg);
            io_batch_commit_out(cb, &o);
            in_seq = any = true;
        }
        if (e->kind == EX_QUERY || e->kind == EX_SYNC || e->kind == EX_FAKE_QUERY ||
            e->kind == EX_FAKE_ERROR) {
            io_batch_out(cb, &o);
            proto_ready_for_query(&o, 'I');
            io_batch_commit_out(cb, &o);
            in_seq = false;
        }
    }
    if (in_seq) c->ext_skip = true;
    if (c->ccache) rcache_unlinked(c);
    if (!any) {
        size_t n = strlen(msg);
        free(c->tx_lost);
        c->tx_lost = pgs_xmalloc(5 + n + 1);
        memcpy(c->tx_lost, state, 5);
        memcpy(c->tx_lost + 5, msg, n + 1);
        c->tx_lost_sent = false;
    }
    exq_clear(&sv->exq);
    if (sv->pending_set_kind) apply_pending_set(sv, false);
    if (c->fwd_remaining) {
        /* the rest of a message being streamed to the server is dropped */
        c->skip_remaining = c->fwd_remaining;
        c->fwd_remaining = 0;
    }
    c->tx_status = 'I';
    c->pipeline_full = false;
    c->query_start_us = c->xact_start_us = 0;
    c->server = NULL;
    sv->client = NULL;
    atomic_store_explicit(&c->server_id, 0, memory_order_relaxed);
    atomic_store_explicit(&sv->client_id, 0, memory_order_relaxed);
    atomic_store_explicit(&c->state, CL_IDLE, memory_order_relaxed);
    int rc = io_batch_flush(cb);
    server_close(sv, "the server sent a FATAL error");
    if (rc < 0) {
        client_close(c, "writing to the client failed");
        return;
    }
    relay_client_data(c);
}

/* The client's first request after tx_server_fatal found it idle in its
 * transaction: answered with that error instead of running outside the
 * transaction the client believes it is in.  A simple query is answered
 * with the ERROR and ReadyForQuery; an extended-protocol sequence with the
 * ERROR, its messages up to Sync dropped and the Sync answered. */
static void answer_tx_lost(pgs_client *c)
{
    pgs_buf *b = &c->s.rbuf;
    uint8_t buf[1400];
    proto_out o;
    proto_out_init(&o, buf, sizeof(buf));
    while (c->tx_lost && b->data && b->pos < b->len) {
        if (c->skip_remaining) {
            uint32_t n = PGS_MIN(b->len - b->pos, c->skip_remaining);
            b->pos += n;
            c->skip_remaining -= n;
            continue;
        }
        uint8_t type;
        uint32_t len;
        int rc = proto_peek_header(b->data + b->pos, b->len - b->pos, cfg()->max_message_size,
                                   &type, &len);
        if (rc == PROTO_NEED_MORE) break;
        if (rc < 0 || !proto_is_frontend_type(type)) {
            client_protocol_error(c, "invalid message from client");
            return;
        }
        if (type == 'X') {
            client_close(c, "client sent Terminate");
            return;
        }
        uint32_t n = PGS_MIN(b->len - b->pos, len + 1);
        b->pos += n;
        c->skip_remaining = len + 1 - n;
        if (type == 'H' || type == 'd' || type == 'c' || type == 'f') continue;
        if (!c->tx_lost_sent) {
            char state[6];
            memcpy(state, c->tx_lost, 5);
            state[5] = '\0';
            put_tx_lost_error(&o, state, c->tx_lost + 5);
            c->tx_lost_sent = true;
        }
        if (type == 'Q' || type == 'F' || type == 'S') {
            proto_ready_for_query(&o, 'I');
            free(c->tx_lost);
            c->tx_lost = NULL;
        }
    }
    if (o.len) io_send_quiet(c->w, &c->s, buf, o.len);
}

static void server_protocol_error(pgs_server *sv, const char *what)
{
    log_warn("S-%u: %s", sv->id, what);
    if (sv->client) client_server_lost(sv->client, what);
    server_close(sv, what);
}

void relay_ready_release(pgs_client *c, char status)
{
    if (c->s.closing || c->want_close) return;
    uint8_t z[6] = {'Z', 0, 0, 0, 5, (uint8_t)status};
    uv_buf_t b = uv_buf_init((char *)z, sizeof(z));
    if (io_send(c->w, &c->s, &b, 1) < 0) {
        client_close(c, "writing to the client failed");
        return;
    }
    /* Once it is out, whatever waited goes on as after any drain: the
     * server's answers behind it (pipelined requests) ... */
    if (!c->s.wb.pending) client_on_drain(c);
    if (c->s.closing || c->want_close) return;
    /* ... and the requests c sent meanwhile, which a drain alone does not
     * resume while c still has its server (session pooling, pipelines) */
    if (c->s.rbuf.data && c->s.rbuf.pos < c->s.rbuf.len) relay_client_data(c);
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
    bool restored = false;  /* the client's settings are now in effect */
    bool cache_synced = false; /* our Sync after a cache hit was answered */

    while (b->data && b->pos < b->len) {
        uint8_t *p = b->data + b->pos;
        uint32_t avail = b->len - b->pos;
        if (sv->fwd_remaining) {
            uint32_t n = PGS_MIN(avail, sv->fwd_remaining);
            if (!sv->fwd_drop && c) {
                io_batch_add(&cb, p, n);
                if (c->cfill) rcache_tap(c, 0, p, n, false);
            }
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
        if (PGS_UNLIKELY(c && c->ccache != NULL) && rcache_holding(c) &&
            !(h && h->kind == EX_INTERNAL)) {
            /* c's ReadyForQuery waits for the Redis tier: what the server
             * sent c after it waits too (relay_ready_release) */
            break;
        }
        if (!h && type != 'N' && type != 'A' && type != 'S' && type != 'E') {
            /* PostgreSQL sends nothing but notices, notifications, parameter
             * changes and a last error unasked.  Anything else means it and
             * pgscale disagree on where the conversation is: relaying it
             * would let a server that is still answering pass for idle and
             * go back to the pool. */
            (void)io_batch_flush(&cb);
            server_protocol_error(sv, "server sent a reply when none was expected");
            return;
        }
        if (!h && type == 'E') sv->broken = true; /* a FATAL: the backend is ending */
        bool internal = h && h->kind == EX_INTERNAL;
        /* Small messages we read are held until whole.  An error we would
         * look into but that is larger than we inspect (PostgreSQL quotes
         * a bad value whole) is streamed, and read as "some error". */
        bool lsn_row = internal && sv->lsn_pending && type == 'D';
        bool need_whole = type == 'Z' || type == 'S' || (type == 'E' && total <= INSPECT_MAX) ||
                          (type == 'A' && total <= INSPECT_MAX) || (lsn_row && total <= 64);
        bool whole = avail >= total;
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
            char status = len == 5 ? (char)body[0] : 0;
            if (status != 'I' && status != 'T' && status != 'E') {
                /* a status read past a short message, or one that means
                 * nothing, would decide whether the server is idle */
                (void)io_batch_flush(&cb);
                server_protocol_error(sv, "server sent an invalid ReadyForQuery");
                return;
            }
            bool was_query = h && (h->kind == EX_QUERY || h->kind == EX_SYNC);
            if (internal && sv->restoring) {
                /* an error would have ended the link at its 'E' */
                sv->restoring = false;
                restored = true;
            }
            if (internal && sv->cache_sync) cache_synced = true;
            if (internal) sv->resetting = sv->cache_sync = false;
            if (internal && sv->lsn_pending) {
                sv->lsn_pending = false;
                if (c && !sv->lsn_seen) route_lsn_unknown(c);
                sv->lsn_seen = false;
            }
            if (h && (h->kind == EX_SYNC || h->kind == EX_QUERY || h->kind == EX_INTERNAL))
                exq_pop(&sv->exq);
            sv->tx_status = status;
            if (sv->pending_set_kind && was_query) apply_pending_set(sv, !sv->query_failed);
            if (sv->pending_unpin && was_query) {
                if (c && !sv->query_failed && status == 'I') pin_drop(c, sv->pending_unpin);
                sv->pending_unpin = 0;
            }
            if (sv->pending_seq_reset && was_query) {
                if (c && !sv->query_failed && status == 'I') seq_forget(c, sv, true);
                sv->pending_seq_reset = false;
            }
            sv->query_failed = false;
            /* the result cache: a fill ends, a transaction's writes are
             * bumped before this ReadyForQuery reaches the client; with
             * the Redis tier, this ReadyForQuery waits for Redis to have
             * them (the server may go back to the pool meanwhile: only
             * these 6 bytes wait, and the client's next requests) */
            if (c && !internal && was_query && (c->ccache || cfg()->cache.enabled) &&
                rcache_ready(c, status, sv->exq.count == 0 || !is_fake(exq_head(&sv->exq))))
                drop = true;
            if (c && !internal) {
                uint64_t now = pgs_now_us();
                c->tx_status = status;
                /* idle time counts from the end of the last request, and
                 * the next query may be cancelled for its own timeout */
                c->last_activity_us = now;
                c->cancel_sent = false;
                pgs_stat_add(&st->query_count, 1);
                if (c->query_start_us)
                    pgs_stat_add(&st->query_us, pgs_elapsed_us(now, c->query_start_us));
                c->query_start_us = 0;
                if (status == 'I') {
                    pgs_stat_add(&st->xact_count, 1);
                    if (c->xact_start_us) {
                        uint64_t took = pgs_elapsed_us(now, c->xact_start_us);
                        pgs_stat_add(&st->xact_us, took);
                        pgs_stat_add(&st->xact_hist[pgs_hist_index(took)], 1);
                    }
                    c->xact_start_us = 0;
                }
            }
            saw_ready = true;
            break;
        }
        case 'E':
            sv->query_failed = true;
            if (c && !internal) note_server_error(c, sv, whole ? body : NULL, len - 4);
            if (internal) {
                proto_error_fields f;
                if (!whole || proto_read_error(body, len - 4, &f) != 0)
                    f.message = f.sqlstate = NULL;
                if (f.sqlstate && strlen(f.sqlstate) != 5) f.sqlstate = NULL;
                log_warn("S-%u: %s failed: %s", sv->id,
                         sv->restoring      ? "restoring a client's settings"
                         : sv->lsn_pending ? "reading the WAL position after a write"
                                           : "resetting",
                         f.message ? f.message : "?");
                /* (A RESET ALL sent alone, not waited for, ends the same
                 * way; the client's requests behind it went already, and
                 * the close rolls back what they left open.) */
                if (c && (sv->restoring || sv->resetting)) {
                    /* The restore ran as one implicit transaction and was
                     * rolled back whole: this server still carries the
                     * previous client's settings, and none of the client's
                     * requests has been sent.  Running them here would run
                     * them under someone else's search_path or tenant
                     * setting; the client's session cannot be reproduced,
                     * so it ends with the reason. */
                    (void)io_batch_flush(&cb);
                    char msg[400];
                    snprintf(msg, sizeof(msg),
                             "could not restore this session's settings on a pooled server "
                             "connection: %s",
                             f.message ? f.message : "the server refused them");
                    c->server = NULL;
                    sv->client = NULL;
                    /* a FATAL is the backend ending (a shutdown, a crash:
                     * a failover under way), not the settings' fault */
                    bool ended = whole && server_fatal(body, len - 4);
                    client_fail(c, f.sqlstate ? f.sqlstate : "08006", msg,
                                ended ? "the server ended the connection; reconnect and retry "
                                        "the transaction"
                                      : "a setting made with SET is no longer valid (an object "
                                        "it names was dropped?); reconnect and set it again");
                    server_close(sv, "could not restore a client's settings");
                    return;
                }
                break;
            }
            if (c && whole && server_fatal(body, len - 4)) {
                /* The backend is ending (pg_terminate_backend, an admin
                 * shutdown, a crash of another backend). */
                sv->broken = true;
                if (tx_mode(c)) {
                    if (retry_ok(c, sv)) {
                        /* PostgreSQL sends a RowDescription (even rows) when
                         * it starts, but they stay in its output buffer
                         * until it fills or the command ends, so they come
                         * with the FATAL: batched here, not sent.  None of
                         * it has reached the client, and none of it will. */
                        proto_error_fields f;
                        if (proto_read_error(body, len - 4, &f) != 0) f.sqlstate = NULL;
                        io_batch_discard(&cb);
                        if (relay_retry_read(c, sv, false, "the server sent a FATAL error",
                                             f.sqlstate && strlen(f.sqlstate) == 5 ? f.sqlstate
                                                                                   : "XX000"))
                            return;
                    }
                    retry_drop(c);
                    tx_server_fatal(sv, c, &cb, body, len - 4);
                    return;
                }
                /* Session mode: the client's own backend, as on a direct
                 * connection: the FATAL as it is, then the close. */
                sv->fatal_relayed = true;
            }
            if (h && h->kind == EX_STMT_RUN && c && whole &&
                lost_statement(sv, h->id, body, len - 4, &cb))
                drop = true;
            if (h && h->kind != EX_SYNC && h->kind != EX_QUERY) {
                if (h->kind == EX_PARSE || h->kind == EX_PARSE_SWALLOW) {
                    stmt_set_del(sv->prepared, h->id);
                    if (h->kind == EX_PARSE && c) stmt_map_del_id(c->stmts, h->id);
                }
                exq_pop(&sv->exq);
                skip_to_sync(sv);
            }
            break;
        case 'D':
            if (lsn_row && whole) sv->lsn_seen = route_lsn_row(c, body, len - 4);
            break;
        case 'A':
            /* NotificationResponse: the sender's pid as the sending client
             * knows it (its transaction-mode pid, not its backend's) */
            if (whole && len >= 8) {
                uint32_t sender = server_sender_pid(proto_be32(body));
                proto_put_be32(p + 5, sender);
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
            exq_run_done(&sv->exq);
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
        if (!drop) {
            io_batch_add(&cb, p, n);
            if (c && c->cfill && type != 'Z') rcache_tap(c, type, p, n, true);
        }
        b->pos += n;
        if (n < total) {
            sv->fwd_remaining = total - n;
            sv->fwd_drop = drop;
        }
        if (c) emit_fakes(sv, &cb);
    }
    if (c && sv->s.bytes_in != sv->bytes_counted) {
        pgs_stat_add(&sv->pool->stats.bytes_out, sv->s.bytes_in - sv->bytes_counted);
        sv->bytes_counted = sv->s.bytes_in;
    }
    if (io_batch_flush(&cb) < 0 && c) {
        client_close(c, "writing to the client failed");
        return;
    }
    /* the answer has started: the read cannot run again */
    if (c && c->retry_buf && c->s.bytes_out != c->retry_mark) retry_drop(c);
    if (b->data && b->pos == b->len) io_buf_release_if_empty(w, &sv->s);
    if (sv->s.closing) return;

    if (!c) {
        /* Our own reset after the client left. */
        if (saw_ready && sv->exq.count == 0) {
            if (server_done(sv)) {
                release_idle(sv);
            } else {
                server_close(sv, "could not reset the server connection");
            }
        }
        return;
    }
    if (restored) {
        /* The requests that waited for the restore go now; the server is
         * the client's until they are answered. */
        relay_client_data(c);
        return;
    }
    if (saw_ready && releases_server(c) && c->fwd_remaining == 0 && server_done(sv)) {
        if (route_wants_lsn(c, sv)) {
            /* read-your-writes: where the primary's WAL is after this
             * client's write, read on the same server before it goes
             * back (the client has its answer already) */
            sv->lsn_pending = true;
            if (server_send_internal(sv, ROUTE_LSN_QUERY, strlen(ROUTE_LSN_QUERY)) < 0) {
                client_server_lost(c, "writing to the PostgreSQL server failed");
                server_close(sv, "write failed");
            }
            return;
        }
        /* Whatever the client still has to receive was copied aside, so
         * the server can serve someone else already. */
        unlink_and_release(c, sv);
        /* The client may already have sent its next request. */
        if (c->s.rbuf.data && c->s.rbuf.pos < c->s.rbuf.len && !c->s.wb.pending)
            relay_client_data(c);
        return;
    }
    if (cache_synced) {
        /* the server was not released (not idle after all): the
         * requests that waited for our Sync go on here */
        relay_client_data(c);
        if (c->s.closing || c->server != sv) return;
    }
    if (c->pipeline_full && sv->exq.count <= PIPELINE_MAX / 2) {
        /* enough answered: the rest of the client's pipeline may go */
        c->pipeline_full = false;
        relay_client_data(c);
        if (c->s.closing || c->server != sv) return;
    }
    /* the client is slow, or its ReadyForQuery is held: wait for it */
    if (c->s.wb.pending || (c->ccache && rcache_holding(c))) io_read_stop(&sv->s);
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
static pgs_stmt_tab *worker_stmts(pgs_worker *w);

/* Drops the references taken by pin_for_batch(); every batch that pointed
 * at a pinned body has been flushed (written, or copied aside) by now. */
static void unpin_batch_stmts(pgs_worker *w)
{
    while (w->n_batch_pins > 0) stmt_unref(worker_stmts(w), w->batch_pins[--w->n_batch_pins]);
}

/* The batch sb will point at st->body (no copy): keep st alive until it
 * is flushed, whatever the rest of the client's pipeline deletes. */
static int pin_for_batch(io_batch *sb, pgs_stmt *st)
{
    pgs_worker *w = sb->w;
    if (w->n_batch_pins == (int)PGS_ARRAY_LEN(w->batch_pins)) {
        if (io_batch_flush(sb) < 0) return -1;
        unpin_batch_stmts(w);
    }
    st->refs++;
    w->batch_pins[w->n_batch_pins++] = st;
    return 0;
}

static int send_parse(pgs_server *sv, pgs_stmt *st, io_batch *sb, uint8_t kind)
{
    uint64_t evicted = 0;
    if (stmt_set_add(&sv->prepared, st->id, cfg()->max_prepared_statements, &evicted)) {
        char name[STMT_SRV_NAME_LEN];
        stmt_srv_name(evicted, name);
        proto_out o;
        io_batch_out(sb, &o);
        size_t s0 = proto_begin(&o, 'C');
        proto_put_byte(&o, 'S');
        proto_put_string(&o, name);
        proto_end(&o, s0);
        io_batch_commit_out(sb, &o);
        if (exq_push_id(&sv->exq, EX_CLOSE_SWALLOW, evicted) < 0) return -1;
    }
    atomic_store_explicit(&sv->n_prepared, (uint32_t)stmt_set_count(sv->prepared),
                          memory_order_relaxed);
    uint8_t *hdr = io_batch_scratch(sb, 5 + STMT_SRV_NAME_LEN);
    if (!hdr) return -1;
    hdr[0] = 'P';
    proto_put_be32(hdr + 1, 4 + STMT_SRV_NAME_LEN + st->body_len);
    memcpy(hdr + 5, st->srv_name, STMT_SRV_NAME_LEN);
    io_batch_add(sb, hdr, 5 + STMT_SRV_NAME_LEN);
    if (pin_for_batch(sb, st) < 0) return -1;
    io_batch_add(sb, st->body, st->body_len);
    return exq_push(&sv->exq, kind, st, NULL);
}

/* Makes sure statement st is prepared on sv before a Bind or Describe
 * that uses it. */
static int ensure_prepared(pgs_server *sv, pgs_stmt *st, io_batch *sb)
{
    if (stmt_set_has(sv->prepared, st->id)) return 0;
    return send_parse(sv, st, sb, EX_PARSE_SWALLOW);
}

static pgs_stmt_tab *worker_stmts(pgs_worker *w)
{
    if (!w->stmt_tab) w->stmt_tab = stmt_tab_new(NULL);
    return w->stmt_tab;
}

/* A request pgscale refuses in the middle of an extended-protocol
 * sequence: an ErrorResponse in its turn, then (as PostgreSQL does after an
 * error) the client's messages up to Sync are dropped. */
static int refuse_ext(pgs_client *c, pgs_server *sv, const char *state_msg)
{
    c->ext_skip = true;
    return exq_push(&sv->exq, EX_FAKE_EXT_ERROR, NULL, state_msg);
}

/* The same, with a message built for this request (freed with its entry). */
static int refuse_ext_owned(pgs_client *c, pgs_server *sv, char *state_msg)
{
    c->ext_skip = true;
    return exq_push_owned(&sv->exq, EX_FAKE_EXT_ERROR, state_msg);
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
    const pgs_config *k = cfg();
    pgs_stmt *st = NULL;
    int rc = stmt_map_put(&c->stmts, worker_stmts(c->w), name, nlen, body + pos,
                          (uint32_t)(blen - pos), (uint32_t)k->max_client_prepared_statements,
                          k->max_client_prepared_bytes, &st);
    if (rc == STMT_LIMIT_COUNT)
        return refuse_ext(c, sv,
                          "54000too many prepared statements on this connection "
                          "(max_client_prepared_statements); close unused ones or raise "
                          "PGSCALE_MAX_CLIENT_PREPARED_STATEMENTS");
    if (rc == STMT_LIMIT_BYTES)
        return refuse_ext(c, sv,
                          "54000prepared statements on this connection take too much memory "
                          "(max_client_prepared_bytes); close unused ones or raise "
                          "PGSCALE_MAX_CLIENT_PREPARED_BYTES");
    /* DEALLOCATE / DISCARD ALL are answered by pgscale when executed: the
     * server never sees them (see client_local_exec). */
    if (st->local || stmt_set_has(sv->prepared, st->id))
        return exq_push(&sv->exq, EX_FAKE_PARSE, st, NULL);
    return send_parse(sv, st, sb, EX_PARSE);
}

/* The result cache answered a unit of c's (its Parse, if any, at `parse`:
 * the whole body; then Bind, Describe, Execute, Sync) without a server: c's
 * own statements change as client_forward and the server would have
 * changed them.  A named Parse registers the statement (prepared on a
 * server lazily, at its next Bind that misses); the unnamed one replaces
 * the unnamed statement; the Sync ends the implicit transaction's portals.
 * -1, with nothing changed, when the unit must go the usual way (the
 * Parse would be refused, or its text is one the cases of client_forward
 * look into). */
int relay_cache_answered(pgs_client *c, const uint8_t *parse, uint32_t plen)
{
    if (parse) {
        size_t pos = 0;
        const char *name = proto_get_string(parse, plen, &pos);
        if (!name) return -1;
        const uint8_t *q = parse + pos;
        const uint8_t *nul = memchr(q, '\0', plen - pos);
        if (!nul) return -1;
        size_t qlen = (size_t)(nul - q);
        /* a read proven cacheable uses no sequence and makes no session
         * state; anything else is left to client_forward */
        if (sqlscan_sequence_use((const char *)q, qlen) ||
            sqlscan_session_state((const char *)q, qlen))
            return -1;
        if (*name) {
            if (!track_prepared(c)) return -1;
            const pgs_config *k = cfg();
            pgs_stmt *st = NULL;
            if (stmt_map_put(&c->stmts, worker_stmts(c->w), name, pos - 1, q,
                             (uint32_t)(plen - pos), (uint32_t)k->max_client_prepared_statements,
                             k->max_client_prepared_bytes, &st) != 0)
                return -1;
        } else {
            if (track_prepared(c)) stmt_local_set_unnamed(&c->lx, NULL, NULL);
            c->unnamed_seq = 0;
        }
    }
    stmt_local_unbind_all(c->lx);
    return 0;
}

/* Could this unnamed Parse's query be a statement pgscale answers itself?
 * A cheap look at its first byte, so that ordinary statements are not
 * scanned: those start with a letter other than d (DEALLOCATE, DISCARD), or
 * with a parenthesis.  -1: more bytes are needed to tell. */
static int maybe_local(const uint8_t *q, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        uint8_t ch = q[i];
        if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v')
            continue;
        return ch == 'd' || ch == 'D' || ch == '-' || ch == '/';
    }
    return -1;
}

/* An unnamed Parse in transaction mode (whole message in the buffer when
 * `whole`).  A statement-clearing command is answered by pgscale (returns
 * 1); anything else replaces it as the unnamed statement and goes to the
 * server (returns 0). */
static int client_parse_unnamed(pgs_client *c, pgs_server *sv, const uint8_t *body,
                                uint32_t blen, bool whole)
{
    /* body[0] is the empty name's NUL */
    if (whole && blen > 1 && maybe_local(body + 1, blen - 1) == 1 &&
        stmt_local_kind(body + 1, blen - 1, NULL) != STMT_SERVER) {
        pgs_stmt *st = stmt_intern(worker_stmts(c->w), body + 1, blen - 1);
        stmt_local_set_unnamed(&c->lx, worker_stmts(c->w), st);
        return exq_push(&sv->exq, EX_FAKE_PARSE, NULL, NULL) < 0 ? -1 : 1;
    }
    stmt_local_set_unnamed(&c->lx, NULL, NULL);
    return 0;
}

/* Executes a statement pgscale answers itself (an Execute of a portal
 * bound to it), for this client only: its own prepared statements are
 * forgotten, never the server's, which other clients share; DISCARD ALL
 * also resets its session settings (on the server when it next restores
 * this client's session).  Queues the reply PostgreSQL would send. */
static int client_local_exec(pgs_client *c, pgs_server *sv, const pgs_stmt *st)
{
    char name[SQLSCAN_NAME_MAX];
    const char *tag = NULL;
    switch (stmt_local_kind(st->body, st->body_len, name)) {
    case STMT_DEALLOCATE:
        if (!stmt_map_get(c->stmts, name, strlen(name))) {
            size_t n = strlen(name) + 64;
            char *text = pgs_xmalloc(n);
            snprintf(text, n, "26000prepared statement \"%s\" does not exist", name);
            return refuse_ext_owned(c, sv, text);
        }
        stmt_map_del(c->stmts, name, strlen(name));
        tag = "DEALLOCATE";
        break;
    case STMT_DEALLOCATE_ALL:
        stmt_map_clear(c->stmts);
        tag = "DEALLOCATE ALL";
        break;
    case STMT_DISCARD_ALL:
        if (c->tx_status != 'I')
            return refuse_ext(c, sv, "25001DISCARD ALL cannot run inside a transaction block");
        stmt_map_clear(c->stmts);
        params_clear_extras(c->params);
        tag = "DISCARD ALL";
        break;
    default:
        tag = "";
        break;
    }
    return exq_push(&sv->exq, EX_FAKE_EXEC, NULL, tag);
}

/* Does this multi-statement query contain a DEALLOCATE?  It cannot be
 * answered for the client alone, and on the server it would drop
 * statements other clients rely on. */
static bool has_deallocate(const uint8_t *text, uint32_t tlen)
{
    size_t off = 0;
    while (off < tlen) {
        sql_info info;
        sqlscan_classify((const char *)text + off, tlen - off, &info);
        if (info.kind == SQL_DEALLOCATE || info.kind == SQL_DEALLOCATE_ALL) return true;
        size_t n = sqlscan_next_statement((const char *)text + off, tlen - off);
        if (n == 0) break;
        off += n;
    }
    return false;
}

/* Looks at a simple query in transaction mode: pins the client for session
 * state that cannot follow it (or, with pinning off, refuses it), notes
 * settings to carry and state that ends.  Returns 1 when the query was
 * answered here (not forwarded). */
/* A refusal inside a transaction block is raised by the server itself, as
 * a DO block: PostgreSQL then aborts the transaction as it does for any
 * error, and a COMMIT that follows rolls back, as on a direct connection
 * (an error made up by pgscale would leave the server's transaction
 * open, and the client's COMMIT would commit what came before). */
static char *raise_sql(const char *msg)
{
    static const char head[] = "DO $pgs$BEGIN RAISE USING ERRCODE = '0A000', MESSAGE = '";
    static const char mid[] = "', HINT = '" FAKE_ERROR_HINT "'; END$pgs$";
    size_t n = strlen(msg);
    char *sql = pgs_xmalloc(sizeof(head) + 2 * n + sizeof(mid));
    char *o = sql;
    memcpy(o, head, sizeof(head) - 1);
    o += sizeof(head) - 1;
    for (size_t i = 0; i < n; i++) {
        if (msg[i] == '$') continue; /* cannot end the dollar quote: no $ at all */
        if (msg[i] == '\'') *o++ = '\'';
        *o++ = msg[i];
    }
    memcpy(o, mid, sizeof(mid));
    return sql;
}

/* Replies still owed to the client's earlier requests.  pgscale's own
 * statements sent ahead of them and not waited for (a RESET ALL, a
 * DISCARD SEQUENCES: EX_INTERNAL entries, at the head of the queue) are
 * not among those, and their ReadyForQuery confirms no SET. */
static bool owes_client(const pgs_server *sv)
{
    for (uint32_t i = 0; i < sv->exq.count; i++)
        if (sv->exq.items[(sv->exq.head + i) % sv->exq.cap].kind != EX_INTERNAL) return true;
    return false;
}

/* A statement's session-level set_config calls with constant arguments,
 * noted to be recorded like SETs when it succeeds outside a transaction
 * block (apply_pending_set).  Each is replayed as a set_config of the same
 * value literal, which restores exactly the value it set.  Returns false
 * when there is nothing to record (reported parameters are followed from
 * the server's ParameterStatus). */
static bool note_set_configs(pgs_server *sv, const uint8_t *text, uint32_t tlen)
{
    sql_setcfg calls[SQLSCAN_SETCFG_MAX];
    int n = sqlscan_set_configs((const char *)text, tlen, calls);
    size_t cap = 1;
    for (int i = 0; i < n; i++)
        cap += 2 * strlen(calls[i].name) + calls[i].value_len + 64;
    char *buf = pgs_xmalloc(cap), *o = buf;
    for (int i = 0; i < n; i++) {
        if (params_reported_index(calls[i].name) >= 0) continue;
        size_t nl = strlen(calls[i].name);
        memcpy(o, calls[i].name, nl + 1);
        o += nl + 1;
        o += sprintf(o, "SELECT pg_catalog.set_config(E'");
        for (const char *q = calls[i].name; *q; q++) {
            if (*q == '\'' || *q == '\\') *o++ = *q;
            *o++ = *q;
        }
        o += sprintf(o, "', ");
        memcpy(o, text + calls[i].value_off, calls[i].value_len);
        o += calls[i].value_len;
        o += sprintf(o, ", false)");
        *o++ = '\0';
    }
    *o = '\0';
    if (o == buf) {
        free(buf);
        return false;
    }
    sv->pending_set_kind = PENDING_SET_CONFIG;
    sv->pending_set_stmt = buf;
    return true;
}

/* A SET this query makes that pgscale does not record (inside a transaction
 * block, among several statements, or one it cannot read): the client's
 * settings are no longer what pgscale knows, and the result cache, whose
 * key holds them, gives up on it.  Reported parameters are followed from
 * the server's own ParameterStatus and do not count. */
static bool unfollowed_set(const sql_info *info, bool recorded)
{
    if (info->kind != SQL_SET && info->kind != SQL_RESET) return false;
    if (info->name[0] && params_reported_index(info->name) >= 0) return false;
    return !recorded;
}

static bool cache_unfollowed(const sql_info *info, bool idle, unsigned config,
                             const uint8_t *text, uint32_t tlen)
{
    if (config) return true; /* a set_config it cannot replay */
    if (!info->multi) {
        if ((info->kind == SQL_RESET_ALL || info->kind == SQL_DISCARD_ALL) && !idle) return true;
        return unfollowed_set(info, idle && info->name[0]);
    }
    size_t off = 0;
    while (off < tlen) {
        sql_info one;
        sqlscan_classify((const char *)text + off, tlen - off, &one);
        if (unfollowed_set(&one, false) || one.kind == SQL_RESET_ALL ||
            one.kind == SQL_DISCARD_ALL || one.config_session)
            return true;
        size_t n = sqlscan_next_statement((const char *)text + off, tlen - off);
        if (n == 0) break;
        off += n;
    }
    return false;
}

static int client_query_check(pgs_client *c, pgs_server *sv, const uint8_t *text,
                              uint32_t tlen, char **raise)
{
    sql_info info;
    sqlscan_classify((const char *)text, tlen, &info);
    const char *refuse = NULL;
    char *refuse_owned = NULL;
    bool idle = c->tx_status == 'I';
    bool had_pending = sv->pending_set_kind != 0; /* an earlier query's, kept */
    bool pinning = pinning_on(c);
    unsigned pin = pin_of(c);
    /* A statement that ends session state ends the pin only when it ran
     * alone, outside a transaction block, and its own ReadyForQuery is the
     * next one: then that ReadyForQuery ('I', no error) proves it done.  In
     * any other case the pin stays (a pin kept too long only costs a
     * server connection). */
    bool alone = idle && !info.multi && !owes_client(sv) && !sv->pending_set_kind &&
                 !sv->pending_unpin;
    unsigned unpin = 0;
    /* Session-level set_config: carried like SET when the statement says
     * what it sets and its own ReadyForQuery will confirm it; otherwise the
     * client is pinned (with pinning off, server_reset_settings is what
     * keeps the setting from the next client). */
    unsigned config = 0;
    if (info.config_session) {
        if (info.config_unseen || !idle || owes_client(sv) || sv->pending_set_kind)
            config = SQLSCAN_STATE_CONFIG;
        else
            (void)note_set_configs(sv, text, tlen);
    }
    switch (info.kind) {
    case SQL_LISTEN:
        if (!pinning)
            refuse = "LISTEN is not supported in transaction pooling mode: notifications would "
                     "be delivered to whichever client uses the server connection next";
        break;
    case SQL_PREPARE:
        if (idle && !pinning)
            refuse = "SQL PREPARE outside a transaction is not supported in transaction pooling "
                     "mode; use protocol-level prepared statements (your driver's prepare) or "
                     "run PREPARE and EXECUTE inside one transaction";
        break;
    case SQL_CREATE_TEMP:
        if (idle && !pinning)
            refuse = "a temporary table created outside a transaction would stay on a pooled "
                     "server connection and be gone for your next statement; create it inside "
                     "a transaction (ON COMMIT DROP)";
        break;
    case SQL_DECLARE_HOLD:
        if (!pinning)
            refuse = "WITH HOLD cursors outlive their transaction and cannot follow a client in "
                     "transaction pooling mode";
        break;
    case SQL_DISCARD_TEMP:
        if (alone) unpin = SQLSCAN_STATE_TEMP;
        break;
    case SQL_UNLISTEN_ALL:
        if (alone) unpin = SQLSCAN_STATE_LISTEN;
        break;
    case SQL_CLOSE_ALL:
        if (alone) unpin = SQLSCAN_STATE_HOLD;
        break;
    case SQL_DISCARD_SEQUENCES:
        if (alone) unpin = SQLSCAN_STATE_SEQUENCE;
        break;
    case SQL_DEALLOCATE:
    case SQL_DEALLOCATE_ALL:
        if (info.kind == SQL_DEALLOCATE_ALL && (pin & SQLSCAN_STATE_PREPARE) && alone) {
            /* The statements SQL PREPARE made are on the server: this one
             * must run there.  It drops pgscale's own statements on that
             * server too (they are prepared again when next used), and the
             * client's protocol-level ones, as on a direct connection.
             * Outside a transaction block it cannot fail. */
            stmt_set_clear(sv->prepared);
            atomic_store_explicit(&sv->n_prepared, 0, memory_order_relaxed);
            stmt_map_clear(c->stmts);
            unpin = SQLSCAN_STATE_PREPARE;
            break;
        }
        if (!track_prepared(c) || info.multi) break;
        if (info.kind == SQL_DEALLOCATE_ALL) {
            stmt_map_clear(c->stmts);
        } else if (stmt_map_get(c->stmts, info.name, strlen(info.name))) {
            stmt_map_del(c->stmts, info.name, strlen(info.name));
        } else if (strncmp(info.name, "pgs_", 4) == 0) {
            refuse = "prepared statement names starting with pgs_ are pgscale's own in "
                     "transaction pooling mode";
            break;
        } else {
            break; /* not one of ours: a PREPAREd one, or the server's error */
        }
        return exq_push(&sv->exq, EX_FAKE_QUERY, NULL,
                        info.kind == SQL_DEALLOCATE ? "DEALLOCATE" : "DEALLOCATE ALL") < 0
                   ? -1
                   : 1;
    case SQL_SET:
    case SQL_RESET:
        if (idle && !info.multi && info.name[0] && params_reported_index(info.name) < 0 &&
            (owes_client(sv) || sv->pending_set_kind)) {
            /* Behind another request, its ReadyForQuery is not the next
             * one: which SET it confirms could not be told, and a
             * setting recorded on the wrong answer (or not at all) would
             * be restored wrongly on the next server. */
            refuse = "a SET or RESET sent before the previous query's result arrived cannot be "
                     "carried across pooled server connections; wait for that result first";
            break;
        }
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
        if (idle && (owes_client(sv) || sv->pending_set_kind)) {
            refuse = "a RESET ALL or DISCARD ALL sent before the previous query's result arrived "
                     "cannot be carried across pooled server connections; wait for that result "
                     "first";
            break;
        }
        if (idle) sv->pending_set_kind = info.kind; /* DISCARD ALL also unpins: apply_pending_set */
        if (info.kind == SQL_RESET_ALL && alone) unpin = SQLSCAN_STATE_CONFIG;
        break;
    default:
        break;
    }
    if (cfg()->cache.enabled && cache_unfollowed(&info, idle, config, text, tlen))
        rcache_untracked(c);
    if (!refuse && info.multi && track_prepared(c) && has_deallocate(text, tlen))
        refuse = "DEALLOCATE inside a multi-statement query is not supported in transaction "
                 "pooling mode (it would drop statements other clients share); send it as a "
                 "query of its own";
    if (!refuse && info.session_lock && !pinning)
        refuse = "session-level advisory locks (pg_advisory_lock) would stay held on a pooled "
                 "server connection after your transaction; use pg_advisory_xact_lock";
    if (!refuse && pinning) {
        unsigned want = (info.multi ? sqlscan_session_state((const char *)text, tlen)
                                    : sqlscan_state_of(&info)) |
                        config;
        if (want & ~pin) {
            if (pin_add(c, want, "", &refuse_owned) < 0) refuse = refuse_owned;
        } else if (info.unlock_all && !info.session_lock && info.kind == SQL_OTHER && alone) {
            unpin = SQLSCAN_STATE_LOCK;
        }
    }
    if (!refuse) refuse = seq_use(c, sv, sqlscan_sequence_use((const char *)text, tlen));
    if (refuse) {
        if (!had_pending) drop_pending_set(sv);
        if (!idle) {
            *raise = raise_sql(refuse);
            free(refuse_owned);
            return 2;
        }
        if (refuse_owned) return exq_push_owned(&sv->exq, EX_FAKE_ERROR, refuse_owned) < 0 ? -1 : 1;
        return exq_push(&sv->exq, EX_FAKE_ERROR, NULL, refuse) < 0 ? -1 : 1;
    }
    if (unpin & pin) sv->pending_unpin = (uint8_t)(unpin & pin);
    if ((unpin & SQLSCAN_STATE_SEQUENCE) || (info.kind == SQL_DISCARD_ALL && alone))
        sv->pending_seq_reset = true;
    return 0;
}

/* Rewrites the statement name of a Bind ('B') or Describe ('D' 'S') to
 * the server-side name, preparing the statement first if needed (*used is
 * then that statement).  The names are within the first `have` bytes of
 * the message at p.  Returns bytes of the original message consumed into
 * the batch (the rest streams as is), 0 to pass the message unchanged,
 * RENAME_LOCAL when pgscale answered it (a statement or portal it runs
 * itself: nothing is forwarded), -1 on error, -2 on a malformed message. */
#define RENAME_LOCAL (-3)
static int32_t client_rename(pgs_client *c, pgs_server *sv, uint8_t type, const uint8_t *p,
                             uint32_t have, uint32_t total, io_batch *sb, pgs_stmt **used)
{
    const uint8_t *body = p + 5;
    size_t blen = have - 5, pos = 0;
    const char *portal = NULL;
    /* A name that does not end within the bytes held is longer than any
     * statement or portal name the client can have made here: pass it on. */
    int32_t unterminated = have < total ? 0 : -2;
    size_t portal_len = 0;
    if (type == 'B') {
        portal = proto_get_string(body, blen, &pos);
        if (!portal) return unterminated;
        portal_len = pos - 1;
    } else if (blen >= 1 && body[0] == 'P') {
        pos = 1;
        const char *pn = proto_get_string(body, blen, &pos);
        if (!pn) return unterminated;
        if (!stmt_local_portal(c->lx, pn, pos - 2)) return 0;
        return exq_push(&sv->exq, EX_FAKE_NODATA, NULL, NULL) < 0 ? -1 : RENAME_LOCAL;
    } else {
        if (blen < 1 || body[0] != 'S') return 0;
        pos = 1;
    }
    size_t name_at = pos;
    const char *name = proto_get_string(body, blen, &pos);
    if (!name) return unterminated;
    pgs_stmt *st = *name ? stmt_map_get(c->stmts, name, pos - name_at - 1)
                         : stmt_local_unnamed(c->lx);
    if (st && st->local) {
        /* DEALLOCATE / DISCARD ALL: bound and described here, run at Execute */
        if (type == 'D')
            return exq_push(&sv->exq, EX_FAKE_DESC_STMT, NULL, NULL) < 0 ? -1 : RENAME_LOCAL;
        st->refs++;
        stmt_local_bind(&c->lx, worker_stmts(c->w), portal, portal_len, st);
        return exq_push(&sv->exq, EX_FAKE_BIND, NULL, NULL) < 0 ? -1 : RENAME_LOCAL;
    }
    if (st && type == 'B' && (st->state & ~pin_of(c)) && pinning_on(c)) {
        /* A statement prepared before, run again after its state ended
         * (LISTEN after UNLISTEN *): it pins again. */
        char *msg = NULL;
        if (pin_add(c, st->state, "0A000", &msg) < 0)
            return refuse_ext_owned(c, sv, msg) < 0 ? -1 : RENAME_LOCAL;
    }
    if (portal) stmt_local_unbind(c->lx, portal, portal_len); /* the portal is the server's now */
    if (!*name) return 0; /* unnamed statement: nothing to rename */
    if (!st) return 0; /* let the server say it does not exist */
    if (ensure_prepared(sv, st, sb) < 0) return -1;
    *used = st;
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

/* A Parse (its body at `body`: whole, or its first INSPECT_MAX bytes) whose
 * text creates session state pins the client now: pinning at Parse rather
 * than at Execute is early, which is safe.  Returns 1 when it was refused
 * (max_pinned): the error is queued and the client's messages up to Sync
 * are dropped; -1 when the queue is full. */
static int parse_pin(pgs_client *c, pgs_server *sv, const uint8_t *body, uint32_t blen)
{
    size_t pos = 0;
    /* a name not terminated within what is held: client_parse or the
     * server judges the message */
    if (!proto_get_string(body, blen, &pos)) return 0;
    const uint8_t *q = body + pos;
    const uint8_t *nul = memchr(q, '\0', blen - pos);
    size_t qlen = nul ? (size_t)(nul - q) : blen - pos;
    unsigned want = sqlscan_session_state((const char *)q, qlen);
    if (!(want & ~pin_of(c))) return 0;
    char *msg = NULL;
    if (pin_add(c, want, "0A000", &msg) == 0) return 0;
    return refuse_ext_owned(c, sv, msg) < 0 ? -1 : 1;
}

/* The extended protocol's side of "sequence state": a statement's use is
 * known from its Parse text, and decided each time it is bound (a named
 * statement may run many times, on different server connections).  With
 * max_prepared_statements 0 a named statement lives on one server and is
 * decided at its Parse.  Both return 1 when refused (the error is queued,
 * the client's messages up to Sync are dropped), -1 on a full queue. */
static int seq_refuse_ext(pgs_client *c, pgs_server *sv, const char *why)
{
    size_t n = strlen(why) + 6;
    char *text = pgs_xmalloc(n);
    snprintf(text, n, "0A000%s", why);
    return refuse_ext_owned(c, sv, text) < 0 ? -1 : 1;
}

static int parse_seq(pgs_client *c, pgs_server *sv, const uint8_t *body, uint32_t blen,
                     bool tracked)
{
    size_t pos = 0;
    if (!proto_get_string(body, blen, &pos)) return 0;
    bool unnamed = pos == 1;
    const uint8_t *q = body + pos;
    const uint8_t *nul = memchr(q, '\0', blen - pos);
    unsigned use = sqlscan_sequence_use((const char *)q, nul ? (size_t)(nul - q) : blen - pos);
    if (unnamed) {
        c->unnamed_seq = (uint8_t)use;
        return 0;
    }
    if (tracked) return 0; /* the statement's own (pgs_stmt.seq) */
    const char *why = seq_use(c, sv, use);
    return why ? seq_refuse_ext(c, sv, why) : 0;
}

static int bind_seq(pgs_client *c, pgs_server *sv, const uint8_t *body, uint32_t blen,
                    bool tracked)
{
    size_t pos = 0;
    if (!proto_get_string(body, blen, &pos)) return 0; /* portal */
    size_t at = pos;
    const char *name = proto_get_string(body, blen, &pos);
    if (!name) return 0;
    unsigned use = 0;
    if (!*name) {
        use = c->unnamed_seq;
    } else if (tracked) {
        pgs_stmt *st = stmt_map_get(c->stmts, name, pos - at - 1);
        if (st) use = st->seq;
    }
    const char *why = seq_use(c, sv, use);
    return why ? seq_refuse_ext(c, sv, why) : 0;
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
    bool route_on = route_active();
    bool rc_on = cfg()->cache.enabled;
    bool held = false;      /* a unit waits for another node */
    /* the batches of earlier calls are all flushed */
    unpin_batch_stmts(w);

    while (b->data && b->pos < b->len) {
        uint8_t *p = b->data + b->pos;
        uint32_t avail = b->len - b->pos;
        if (!c->fwd_remaining && sv->exq.count >= PIPELINE_MAX) {
            /* PostgreSQL holds its answers to extended-protocol messages
             * until a Sync or Flush, which may be in what is not read yet:
             * a Flush of our own (no reply, no change of state) makes it
             * answer what it has, so the pipeline drains. */
            static const uint8_t flush_msg[5] = {'H', 0, 0, 0, 4};
            io_batch_add(&sb, flush_msg, sizeof(flush_msg));
            c->pipeline_full = true;
            break;
        }
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
        if (len > SMALL_MESSAGE_MAX && type != 'Q' && type != 'F' && type != 'P' &&
            type != 'B' && type != 'd') {
            /* PostgreSQL itself ends the connection over such a message;
             * refusing it here keeps the server connection for others. */
            (void)io_batch_flush(&sb);
            char m[120];
            snprintf(m, sizeof(m), "invalid message length: a '%c' message of %u bytes (at most %u)",
                     type, len, SMALL_MESSAGE_MAX);
            client_protocol_error(c, m);
            return;
        }
        if (c->ext_skip && type != 'S' && type != 'X') {
            /* after a request we refused, PostgreSQL would ignore
             * everything up to Sync: so do we */
            uint32_t n = PGS_MIN(avail, total);
            b->pos += n;
            c->skip_remaining = total - n;
            if (c->skip_remaining) break;
            continue;
        }
        bool tracked = track_prepared(c);
        bool pin_scan = pinning_on(c);
        uint32_t need = 0;
        switch (type) {
        case 'P':
            /* a named Parse is kept whole; the name's first byte tells.
             * An unnamed one is kept whole only when its text may be a
             * statement pgscale answers (maybe_local). */
            if (tracked) {
                if (avail < 6)
                    need = 6;
                else if (p[5] != '\0')
                    need = total;
                else if (total <= INSPECT_MAX && maybe_local(p + 6, PGS_MIN(avail, total) - 6))
                    need = total;
            }
            /* its text is looked at for session state (pinning) and
             * sequence use */
            if (tx_mode(c) && need < PGS_MIN(total, INSPECT_MAX))
                need = PGS_MIN(total, INSPECT_MAX);
            break;
        case 'E':
            if (stmt_local_any_portal(c->lx)) need = PGS_MIN(total, INSPECT_MAX);
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
        /* The result cache reads what a statement may write: held whole
         * too (only held; `need` also says what the cases below parse). */
        uint32_t hold = need;
        if (rc_on && (type == 'P' || type == 'Q' || type == 'B') &&
            hold < PGS_MIN(total, INSPECT_MAX))
            hold = PGS_MIN(total, INSPECT_MAX);
        if (hold && avail < hold) {
            /* the batch points into the buffer: send it before moving bytes */
            if (io_batch_flush(&sb) < 0) break;
            if (io_buf_make_room(w, &c->s, hold) < 0) return;
            break;
        }
        /* A new unit (after a Sync or Query): may it run on this server's
         * node?  A write behind a read on a replica waits here for the
         * server to be released, and is then routed on its own. */
        if (route_on && !sv->unsynced && type != 'S' && type != 'H' && type != 'X') {
            if (!route_unit_allowed(c, sv, p, avail)) {
                held = true;
                break;
            }
            retry_unit_start(c, sv, p, avail);
        }
        if (c->tx_status == 'I' && !c->xact_start_us) c->xact_start_us = pgs_now_us();

        int32_t consumed = 0;   /* bytes of this message handled above the loop tail */
        bool forward = true;
        /* nothing else is owed to the client: this request's answer is the
         * next the server sends it (the result cache's fill) */
        bool alone = rc_on && !owes_client(sv);
        int r = 0;
        uint8_t ex = EX_RUN;
        pgs_stmt *used = NULL;  /* the renamed statement of a Bind / Describe */
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
                char *raise = NULL;
                r = client_query_check(c, sv, p + 5, tlen, &raise);
                if (r == 2) {
                    /* refused inside a transaction block: the server raises it */
                    size_t ql = strlen(raise) + 1;
                    uint8_t *q = io_batch_scratch(&sb, 5 + ql);
                    r = q && exq_push(&sv->exq, EX_QUERY, NULL, NULL) == 0 ? 1 : -1;
                    if (q) {
                        q[0] = 'Q';
                        proto_put_be32(q + 1, (uint32_t)(4 + ql));
                        memcpy(q + 5, raise, ql);
                        io_batch_add(&sb, q, 5 + ql);
                    }
                    free(raise);
                    if (r < 0) break;
                    r = 0;
                    forward = false;
                    sv->unsynced = sv->unsynced_run = false;
                    if (total > avail) c->fwd_remaining = 0;
                    break;
                }
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
            c->ext_skip = false;
            /* the unnamed portal ends with the implicit transaction; the
             * rest with the client's transaction */
            stmt_local_unbind(c->lx, "", 0);
            if (c->tx_status == 'I') stmt_local_unbind_all(c->lx);
            break;
        case 'H':
        case 'd':
        case 'c':
        case 'f':
            ex = 0xff; /* no reply */
            break;
        case 'P':
            if (tx_mode(c)) {
                r = parse_seq(c, sv, p + 5, PGS_MIN(avail, total) - 5, tracked);
                if (r == 1) {
                    r = 0;
                    forward = false;
                    ex = 0xff;
                    any_fake = true;
                    break;
                }
                if (r < 0) break;
            }
            if (pin_scan) {
                /* all of it, or its first INSPECT_MAX bytes (see need) */
                r = parse_pin(c, sv, p + 5, PGS_MIN(avail, total) - 5);
                if (r == 1) {
                    r = 0;
                    forward = false;
                    ex = 0xff;
                    any_fake = true;
                    break;
                }
                if (r < 0) break;
            }
            if (tracked && p[5] == '\0') {
                r = client_parse_unnamed(c, sv, p + 5, len - 4, need && total <= avail);
                if (r == 1) {
                    r = 0;
                    forward = false;
                    ex = 0xff;
                    any_fake = true;
                }
            } else if (need) {
                r = client_parse(c, sv, p + 5, len - 4, &sb);
                forward = false;
                ex = 0xff;
                if (r == 0 && exq_head(&sv->exq) && is_fake(exq_head(&sv->exq))) any_fake = true;
                if (r == 0) any_fake = true;
            }
            break;
        case 'B':
        case 'D':
            if (type == 'B' && tx_mode(c)) {
                r = bind_seq(c, sv, p + 5, PGS_MIN(avail, total) - 5, tracked);
                if (r == 1) {
                    r = 0;
                    forward = false;
                    ex = 0xff;
                    any_fake = true;
                    break;
                }
                if (r < 0) break;
            }
            if (tracked) {
                consumed =
                    client_rename(c, sv, type, p, PGS_MIN(avail, total), total, &sb, &used);
                if (consumed == RENAME_LOCAL) {
                    consumed = 0;
                    forward = false;
                    ex = 0xff;
                    any_fake = true;
                } else if (consumed < 0) {
                    r = consumed;
                } else if (used) {
                    ex = EX_STMT_RUN;
                }
            }
            break;
        case 'E':
            if (need && total <= avail) {
                size_t pos = 0;
                const char *pn = proto_get_string(p + 5, len - 4, &pos);
                if (!pn) {
                    r = -2;
                    break;
                }
                pgs_stmt *st = stmt_local_portal(c->lx, pn, pos - 1);
                if (st) {
                    r = client_local_exec(c, sv, st);
                    forward = false;
                    ex = 0xff;
                    any_fake = true;
                }
            }
            break;
        case 'C':
            if (tracked && len > 6 && p[5] == 'S' && p[6] != '\0') {
                /* Only the bytes held are read: a name longer than what is
                 * inspected cannot be one of the client's statements (a
                 * Parse with such a name would have been held whole and
                 * refused as too long), so that Close goes to the server
                 * as it is. */
                uint32_t have = PGS_MIN(avail, total);
                size_t pos = 1;
                const char *name = proto_get_string(p + 5, have - 5, &pos);
                if (!name) {
                    if (have == total) r = -2;
                    break;
                }
                if (stmt_map_get(c->stmts, name, pos - 2)) {
                    stmt_map_del(c->stmts, name, pos - 2);
                    r = exq_push(&sv->exq, EX_FAKE_CLOSE, NULL, NULL);
                    forward = false;
                    ex = 0xff;
                    any_fake = true;
                }
            } else if (c->lx && len > 5 && total <= avail) {
                /* a statement or portal of ours: forget it; the server
                 * answers CloseComplete whether it has one or not */
                size_t pos = 1;
                const char *name = proto_get_string(p + 5, len - 4, &pos);
                if (!name) {
                    r = -2;
                    break;
                }
                if (p[5] == 'S' && !*name) stmt_local_set_unnamed(&c->lx, NULL, NULL);
                if (p[5] == 'P') stmt_local_unbind(c->lx, name, pos - 2);
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
        if (rc_on)
            rcache_forward(c, sv, type, p, PGS_MIN(avail, total), total, forward, alone);
        if (forward && ex != 0xff && exq_push(&sv->exq, ex, used, NULL) < 0) {
            (void)io_batch_flush(&sb);
            client_fail(c, "54000", "too many requests pipelined without waiting for replies",
                        NULL);
            return;
        }
        /* What the server has been sent since its last Sync or Query; a
         * Parse or Close answered here may still have sent something
         * (a Parse under another name, an eviction), so they count. */
        if (type == 'P' || type == 'B' || type == 'E' || type == 'D' || type == 'C')
            sv->unsynced = true;
        else if (forward && (type == 'S' || type == 'Q' || type == 'F'))
            sv->unsynced = sv->unsynced_run = false;
        if (type == 'B' || type == 'E' || type == 'C') sv->unsynced_run = true;
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
        pgs_stat_add(&c->pool->stats.bytes_in, c->s.bytes_in - c->bytes_counted);
        c->bytes_counted = c->s.bytes_in;
    }
    if (io_batch_flush(&sb) < 0) {
        if (relay_retry_read(c, sv, true, "writing to the PostgreSQL server failed", NULL))
            return;
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
        if (releases_server(c) && c->fwd_remaining == 0 && server_done(sv) &&
            !(b->data && b->pos < b->len)) {
            unlink_and_release(c, sv);
            return;
        }
    }
    if (held && c->server == sv && releases_server(c) && c->fwd_remaining == 0 &&
        server_done(sv)) {
        /* nothing runs here any more: the held unit is routed afresh */
        unlink_and_release(c, sv);
        relay_client_data(c);
    }
}

/* May the result cache look up the request at the head of c's buffer
 * while c holds sv inside an implicit transaction (sv->unsynced)?  Only
 * when nothing ran in that transaction (Parse and Describe only: no
 * BEGIN, no write, no snapshot a statement took), it owes c nothing, saw
 * no error (PostgreSQL would ignore the request then) and nothing of a
 * message is half-relayed. */
static bool cache_held_ok(const pgs_client *c, const pgs_server *sv)
{
    return tx_mode(c) && !sv->unsynced_run && c->tx_status == 'I' && sv->tx_status == 'I' &&
           !owes_client(sv) && !sv->query_failed && !sv->fwd_remaining && !c->fwd_remaining &&
           !c->skip_remaining && !c->ext_skip && !c->pipeline_full && !sv->pending_set_kind;
}

/* Ends sv's implicit transaction with a Sync of pgscale's own (its
 * ReadyForQuery is not relayed): the request the client sent next was
 * answered from the cache. */
static int send_sync_internal(pgs_server *sv)
{
    static const uint8_t sync_msg[5] = {'S', 0, 0, 0, 4};
    if (exq_push(&sv->exq, EX_INTERNAL, NULL, NULL) < 0) return -1;
    uv_buf_t iov = uv_buf_init((char *)sync_msg, sizeof(sync_msg));
    return io_send(sv->w, &sv->s, &iov, 1);
}

void relay_client_data(pgs_client *c)
{
    /* A client being failed (want_close: its error waits for the socket
     * to drain) is sent nothing more: its unread requests stay unread.
     * Going on would fail it again on the same bytes, through a checkout
     * and a link each time, until the stack ran out. */
    if (c->s.closing || c->want_close) return;
    /* a write's ReadyForQuery is held until Redis has its bumps: what the
     * client sent next waits behind it (relay_ready_release) */
    if (PGS_UNLIKELY(c->ccache != NULL) && rcache_holding(c)) return;
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
        if (c->tx_lost) {
            answer_tx_lost(c);
            if (c->s.closing || c->want_close) return;
            if (c->tx_lost || !b->data || b->pos >= b->len) {
                if (io_read_start(&c->s) < 0) client_close(c, "read failed");
                return;
            }
        }
        /* A Terminate needs no server. */
        if (b->len - b->pos >= 5 && b->data[b->pos] == 'X') {
            client_close(c, "client sent Terminate");
            return;
        }
        /* Result cache hits need no server either. */
        if (cfg()->cache.enabled || c->ccache) {
            if (rcache_serve(c) != RCACHE_GO) return;
            if (!b->data || b->pos >= b->len) {
                io_buf_release_if_empty(c->w, &c->s);
                if (io_read_start(&c->s) < 0) client_close(c, "read failed");
                return;
            }
            if (b->len - b->pos >= 5 && b->data[b->pos] == 'X') {
                client_close(c, "client sent Terminate");
                return;
            }
        }
        /* Queued or not, the client stays readable: requests pile up in
         * its buffer until a server is ours (client_on_read stops reading
         * when the buffer fills).  With replicas, a read may be checked
         * out on one (route.c). */
        pool_checkout(route_checkout(c), c);
        return;
    }
    pgs_server *sv = c->server;
    /* With the result cache on, a request sent while the server reads
     * the WAL position after this client's write waits for it to end:
     * the server is released then and the request is looked up in the
     * cache and routed with that position known, instead of following
     * the write onto the primary uncached. */
    if (sv->s.wb.pending || sv->restoring || sv->cache_sync ||
        (sv->lsn_pending && cfg()->cache.enabled)) {
        io_read_stop(&c->s);
        return;
    }
    if (sv->unsynced && cfg()->cache.enabled && cache_held_ok(c, sv)) {
        /* A driver that prepares with Parse, Describe and Flush (asyncpg)
         * holds this server in an implicit transaction that owes it
         * nothing: its next request may be a hit all the same. */
        int rc = rcache_serve(c);
        if (rc == RCACHE_CLOSED || c->s.closing) return;
        if (rc == RCACHE_SYNC) {
            if (send_sync_internal(sv) < 0) {
                client_server_lost(c, "writing to the PostgreSQL server failed");
                server_close(sv, "write failed");
                return;
            }
            /* the next request waits for it: the server is released
             * then, and the request looked up as any other */
            sv->unsynced = sv->unsynced_run = false;
            sv->cache_sync = true;
            if (b->data && b->pos < b->len) {
                io_read_stop(&c->s);
            } else {
                io_buf_release_if_empty(c->w, &c->s);
                if (io_read_start(&c->s) < 0) client_close(c, "read failed");
            }
            return;
        }
    }
    client_forward(c);
    if (c->s.closing) return;
    if (c->server && (c->server->s.wb.pending || c->pipeline_full)) {
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
    atomic_store_explicit(&sv->client_pid, tx_mode(c) ? worker_client_pid(c) : 0,
                          memory_order_relaxed);
    atomic_store_explicit(&c->server_id, sv->id, memory_order_relaxed);
    atomic_store_explicit(&sv->client_id, c->id, memory_order_relaxed);
    atomic_store_explicit(&c->state, CL_ACTIVE, memory_order_relaxed);
    atomic_store_explicit(&sv->state, SV_ACTIVE, memory_order_relaxed);
    /* Another client's sequence values do not pass to this one (see
     * "sequence state" above). */
    bool seq_discard = false;
    if (tx_mode(c)) {
        if (!c->seq_uid) c->seq_uid = seq_new_id();
        if (sv->seq_owner != c->seq_uid) {
            sv->seq_owner = c->seq_uid;
            sv->seq_run = seq_new_id();
            seq_discard = sv->seq_dirty;
            sv->seq_dirty = false;
        }
    }
    char stack_sql[4096], *sql = stack_sql;
    size_t cap = sizeof(stack_sql);
    int n;
    /* server_reset_settings: a server that served someone else since this
     * client last had it starts with RESET ALL, in the restore's own text,
     * so that what pgscale could not see (a set_config inside a function,
     * a trigger) does not reach this client -- when the other client ran
     * something that could have done it: a call of a function that is not
     * a known built-in, a DO block, CALL, or a data-modifying statement
     * (triggers), exactly what marks the server's sequence state dirty
     * (seq_discard, sqlscan_sequence_use).  Plain reads cost nothing. */
    bool reset = tx_mode(c) && cfg()->server_reset_settings == PGS_RESET_ALL && seq_discard;
    sv->last_client = c;
    c->last_server = sv;
    /* A client with many or long settings needs more room; the restore
     * must be whole, never cut short. */
    while ((n = reset ? params_sync_sql_reset(c->params, &sv->params, sv->login_params, sql, cap)
                      : params_sync_sql(c->params, &sv->params, sql, cap)) < 0 &&
           cap < RESTORE_MAX) {
        if (sql != stack_sql) free(sql);
        cap *= 4;
        sql = pgs_xmalloc(cap);
    }
    if (n < 0) {
        if (sql != stack_sql) free(sql);
        c->server = NULL;
        sv->client = NULL;
        client_fail(c, "54000", "this session's settings are too large to restore on a pooled "
                    "server connection", "use fewer or shorter SET values, or session pooling");
        release_idle(sv);
        return;
    }
    if (n > 0) {
        /* The client's requests wait for the server's answer: if one
         * setting is refused, none of them may run (see 'E' above).  A
         * RESET ALL alone is not waited for (it cannot be refused on an
         * idle server; if it failed anyway, the link ends at its 'E'). */
        sv->restoring = !(reset && n == (int)strlen("RESET ALL;"));
        sv->resetting = !sv->restoring;
        int rc = server_send_internal(sv, sql, (size_t)n);
        if (sql != stack_sql) free(sql);
        if (rc < 0) {
            client_server_lost(c, "writing to the PostgreSQL server failed");
            server_close(sv, "write failed");
            return;
        }
    }
    /* After the restore, whose ReadyForQuery ends `restoring`; nobody
     * waits for this one's (it cannot fail on an idle server). */
    if (seq_discard && server_send_internal(sv, "DISCARD SEQUENCES", 17) < 0) {
        client_server_lost(c, "writing to the PostgreSQL server failed");
        server_close(sv, "write failed");
        return;
    }
    if (io_read_start(&sv->s) < 0) {
        client_server_lost(c, "reading from the PostgreSQL server failed");
        server_close(sv, "read failed");
        return;
    }
    if (!sv->restoring) relay_client_data(c);
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
    sv->pending_unpin = 0;
    sv->pending_seq_reset = false;
    if (pin_of(c)) {
        /* The server carries the client's session state (temporary
         * tables, LISTEN, advisory locks, cursors, prepared statements).
         * It could be cleaned (DISCARD ALL does all of it) and kept, but
         * closing it is always correct, needs no reply to wait for, and
         * cannot miss a kind of state pgscale did not see: a pinned client
         * leaving is rare enough that the new connection costs little. */
        server_close(sv, "its client left while pinned (session state on the server)");
        relay_unpin_all(c);
        return;
    }
    /* Replies still owed, half a message sent, or extended-protocol
     * messages without their Sync (an implicit transaction that a Sync or
     * the next client's first query would commit): the server's state is
     * not provably clean, so it cannot serve anyone else.  Closing it makes
     * PostgreSQL roll back whatever the client left open.  (A RESET ALL of
     * server_reset_settings still running is pgscale's own: the server
     * goes back once it is answered.) */
    bool busy = owes_client(sv) || c->fwd_remaining > 0 || sv->s.wb.pending ||
                sv->fwd_remaining > 0 || sv->unsynced;
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
    if (sv->exq.count == 0) release_idle(sv);
}
