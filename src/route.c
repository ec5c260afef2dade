/* Routing (see route.h).
 *
 * What a unit is: PostgreSQL ends an implicit transaction at each Sync
 * and after each simple Query, so in transaction pool mode the server goes
 * back to the pool there, and the next unit is routed afresh.  A unit is
 * judged by its first message: a Query's text, a Parse's text, or a Bind
 * of a named statement whose text the client prepared earlier.  Anything
 * else (a Bind of the unnamed statement alone, a function call, a text
 * longer than what the relay holds) is not proved a read: the primary.
 *
 * Consistency (read-your-writes): after a unit that may have written
 * commits on the primary, the relay reads pg_current_wal_insert_lsn() on the same
 * server before releasing it (route_wants_lsn; the client has its answer
 * already) and the client's later reads go only to replicas whose replay
 * position, as the monitor last read it, is at least that.  "strict"
 * extends this to every client through one process-wide position;
 * "eventual" skips it. */
#include "route.h"

#include <stdatomic.h>
#include <string.h>

#include "classify.h"
#include "monitor.h"
#include "params.h"
#include "pool.h"
#include "prepared.h"
#include "proto.h"
#include "relcat.h"
#include "topology.h"
#include "worker.h"

/* The highest position any client's write was acknowledged at (strict). */
static _Atomic uint64_t acked_lsn;
/* strict: writes that may be acknowledged to their client before their
 * position is known; while any is, every read goes to the primary. */
static _Atomic int writes_in_flight;

static void strict_done(pgs_client *c)
{
    if (!c->strict_pending) return;
    c->strict_pending = false;
    atomic_fetch_sub_explicit(&writes_in_flight, 1, memory_order_release);
}

void route_client_gone(pgs_client *c)
{
    strict_done(c);
}

bool route_active(void)
{
    return topology_count() > 1;
}

bool route_parse_lsn(const char *s, size_t n, uint64_t *out)
{
    uint64_t hi = 0, lo = 0, *cur = &hi;
    int digits = 0;
    bool slash = false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        int v;
        if (ch >= '0' && ch <= '9') v = ch - '0';
        else if (ch >= 'A' && ch <= 'F') v = ch - 'A' + 10;
        else if (ch >= 'a' && ch <= 'f') v = ch - 'a' + 10;
        else if (ch == '/' && !slash && digits) {
            slash = true;
            cur = &lo;
            digits = 0;
            continue;
        } else {
            return false;
        }
        if (++digits > 8) return false;
        *cur = *cur << 4 | (uint64_t)v;
    }
    if (!slash || !digits) return false;
    *out = hi << 32 | lo;
    return true;
}

/* The SQL text a unit starting at msg runs, or NULL (not known whole). */
static const char *unit_text(pgs_client *c, const uint8_t *msg, uint32_t avail, size_t *len)
{
    if (avail < 5) return NULL;
    size_t hp = 1;
    int32_t mlen;
    if (proto_get_int32(msg, avail, &hp, &mlen) < 0 || mlen < 4) return NULL;
    uint32_t total = (uint32_t)mlen + 1;
    if (total > avail || total < 6) return NULL;
    const uint8_t *body = msg + 5;
    uint32_t blen = total - 5;
    size_t pos = 0;
    const char *text = NULL;
    switch (msg[0]) {
    case 'Q':
        text = proto_get_string(body, blen, &pos);
        break;
    case 'P':
        if (!proto_get_string(body, blen, &pos)) return NULL; /* the statement's name */
        text = proto_get_string(body, blen, &pos);
        break;
    case 'B': {
        if (!proto_get_string(body, blen, &pos)) return NULL; /* the portal */
        size_t npos = pos;
        const char *name = proto_get_string(body, blen, &pos);
        if (!name || !*name || !c->stmts) return NULL;
        pgs_stmt *st = stmt_map_get(c->stmts, name, pos - npos - 1);
        if (!st || !st->body) return NULL;
        size_t tpos = 0;
        text = proto_get_string(st->body, st->body_len, &tpos);
        break;
    }
    default:
        return NULL;
    }
    if (text) *len = strlen(text);
    return text;
}

/* The per-worker parse cache's bounds: distinct statement texts an
 * application sends are usually a few hundred. */
#define ROUTE_CACHE_ENTRIES 4096
#define ROUTE_CACHE_BYTES (8u << 20)

enum {
    U_READ = 1,        /* proved a read */
    U_BEGIN_RO = 2,    /* starts a READ ONLY transaction (and reads only) */
    U_TXN_END = 4,     /* ends a transaction */
    U_PRIMARY = 8,     /* the hint, or anything that must run on the primary */
    U_DDL = 16,        /* CREATE/ALTER/DROP...: functions may have changed */
};

/* The worker's parse cache, made on first use (routing and the result
 * cache need it). */
static pgs_classify_cache *cache_of(pgs_worker *w)
{
    if (!w->classify) w->classify = classify_cache_new(ROUTE_CACHE_ENTRIES, ROUTE_CACHE_BYTES);
    return w->classify;
}

const pgs_stmt_facts *route_classify(pgs_worker *w, const char *text, size_t len)
{
    return classify(cache_of(w), text, len);
}

/* Whether c's session has default_transaction_read_only on: its plain
 * BEGIN then starts a read-only transaction. */
static bool session_read_only(const pgs_client *c)
{
    const char *v = params_get(c->params, "default_transaction_read_only");
    return v && strcmp(v, "on") == 0;
}

/* What one statement text makes of a unit. */
static unsigned text_kind(pgs_client *c, const char *text, size_t len)
{
    uint32_t f = classify(cache_of(c->w), text, len)->flags;
    unsigned k = (f & PGS_FACT_DDL) ? U_DDL : 0;
    if (f & PGS_FACT_HINT_PRIMARY) return k | U_PRIMARY;
    if (f & PGS_FACT_TXN_END) k |= U_TXN_END;
    if (f & PGS_FACT_TXN_BEGIN) {
        /* A transaction may go to a replica only when it says it reads:
         * BEGIN READ ONLY, a SET TRANSACTION READ ONLY in the same text,
         * or default_transaction_read_only on (a serializable one a
         * standby refuses: the classifier does not call that a read). */
        bool ro = (f & (PGS_FACT_TXN_BEGIN_READ_ONLY | PGS_FACT_SET_TX_READ_ONLY)) ||
                  session_read_only(c);
        if (!ro || !(f & PGS_FACT_READ)) return U_PRIMARY | k;
        return k | U_BEGIN_RO | U_READ;
    }
    if (f & PGS_FACT_READ) k |= U_READ;
    /* COMMIT AND CHAIN goes on in a transaction of the same kind */
    if (f & PGS_FACT_TXN_CHAIN) k &= ~(unsigned)U_TXN_END;
    return k;
}

/* A unit: a simple Query, or extended-protocol messages up to a Sync.
 * Every statement an extended unit parses or binds counts (a JDBC batch
 * may put a SELECT and an INSERT before one Sync): the unit is a read only
 * when each is, and when all of it, Sync included, is in the buffer --
 * what has not arrived cannot be judged, so it goes to the primary. */
static unsigned unit_kind(pgs_client *c, const uint8_t *msg, uint32_t avail)
{
    size_t len = 0;
    if (avail >= 1 && msg[0] == 'Q') {
        const char *text = unit_text(c, msg, avail, &len);
        return text ? text_kind(c, text, len) : U_PRIMARY;
    }
    unsigned k = U_READ;
    bool any = false, unnamed = false;
    uint32_t off = 0;
    while (avail - off >= 5) {
        const uint8_t *m = msg + off;
        uint32_t total = proto_be32(m + 1) + 1;
        if (total < 5 || total > avail - off) break;
        switch (m[0]) {
        case 'S':
            return any ? k : (k | U_PRIMARY);
        case 'P':
        case 'B': {
            /* a Bind of the unnamed statement this unit parsed was judged
             * with its Parse */
            if (m[0] == 'B' && total > 6) {
                size_t pos = 0;
                const char *portal = proto_get_string(m + 5, total - 5, &pos);
                if (portal && pos < total - 5 && m[5 + pos] == '\0' && unnamed) break;
            }
            const char *text = unit_text(c, m, total, &len);
            if (!text) return k | U_PRIMARY;
            if (m[0] == 'P' && m[5] == '\0') unnamed = true;
            unsigned x = text_kind(c, text, len);
            if (!(x & U_READ)) k &= ~(unsigned)U_READ;
            /* BEGIN READ ONLY counts where it starts the unit */
            k |= x & (U_TXN_END | U_DDL | U_PRIMARY | (any ? 0 : U_BEGIN_RO));
            any = true;
            break;
        }
        case 'E':
        case 'D':
        case 'C':
        case 'H':
            break;
        default:
            return k | U_PRIMARY;
        }
        off += total;
    }
    return k | U_PRIMARY;
}

static bool lag_ok(const pgs_node *n, const pgs_config *cfg)
{
    if (cfg->max_replica_lag_bytes &&
        atomic_load_explicit(&n->lag_bytes, memory_order_relaxed) > cfg->max_replica_lag_bytes)
        return false;
    if (cfg->max_replica_lag_ms &&
        atomic_load_explicit(&n->lag_ms, memory_order_relaxed) > cfg->max_replica_lag_ms)
        return false;
    return true;
}

/* Whether node n may serve a read that must see position need. */
static bool can_read(const pgs_node *n, const pgs_config *cfg, uint64_t need, uint64_t now)
{
    if (atomic_load_explicit(&n->state, memory_order_relaxed) != PGS_NODE_UP) return false;
    if (atomic_load_explicit(&n->role, memory_order_relaxed) != PGS_ROLE_REPLICA) return false;
    /* what the monitor knows must be recent: a replica it has not read
     * lately may have stopped or fallen behind.  (An old reading never
     * breaks read-your-writes -- positions only grow -- so the bound is
     * generous: a busy machine delays the monitor too.) */
    uint64_t checked = atomic_load_explicit(&n->checked_us, memory_order_acquire);
    uint64_t fresh = PGS_MAX((uint64_t)cfg->monitor_interval_ms * 1000u * 20u, 5000000u);
    if (!checked || pgs_elapsed_us(now, checked) > fresh) return false;
    if (!lag_ok(n, cfg)) return false;
    return need == 0 || atomic_load_explicit(&n->lsn, memory_order_relaxed) >= need;
}

static uint64_t settle_unknown(pgs_client *c);

static _Thread_local unsigned rr_next;
static _Thread_local int wrr_current[PGS_MAX_NODES];

/* A replica for a read, or NULL: the primary.  avoid: a node the read
 * just failed on (NULL: none). */
static pgs_node *pick_reader(pgs_client *c, const pgs_config *cfg, const pgs_node *avoid)
{
    uint64_t need = 0;
    if (c && cfg->consistency != PGS_CONSISTENCY_EVENTUAL) need = settle_unknown(c);
    if (c && cfg->consistency == PGS_CONSISTENCY_STRICT) {
        if (atomic_load_explicit(&writes_in_flight, memory_order_acquire) > 0) return NULL;
        uint64_t all = atomic_load_explicit(&acked_lsn, memory_order_relaxed);
        if (all > need) need = all;
    }
    if (need == UINT64_MAX) return NULL;
    uint64_t now = pgs_now_us();
    int n = topology_count();
    pgs_node *cand[PGS_MAX_NODES];
    int k = 0;
    for (int i = 0; i < n; i++) {
        pgs_node *node = topology_node(i);
        if (node != avoid && can_read(node, cfg, need, now)) cand[k++] = node;
    }
    if (cfg->read_from_primary && k) cand[k++] = topology_primary();
    if (!k) return NULL;
    pgs_node *best = cand[0];
    switch (cfg->load_balance) {
    case PGS_BALANCE_LEAST_OUTSTANDING: {
        int low = -1;
        unsigned start = rr_next++;
        for (int j = 0; j < k; j++) {
            pgs_node *x = cand[(start + (unsigned)j) % (unsigned)k];
            int o = atomic_load_explicit(&x->outstanding, memory_order_relaxed);
            if (low < 0 || o < low) {
                low = o;
                best = x;
            }
        }
        break;
    }
    case PGS_BALANCE_WEIGHTED: {
        /* smooth weighted round robin (as nginx's), per worker */
        int sum = 0;
        for (int j = 0; j < k; j++) {
            int wgt = cand[j]->weight > 0 ? cand[j]->weight : 1;
            wrr_current[cand[j]->index] += wgt;
            sum += wgt;
            if (wrr_current[cand[j]->index] > wrr_current[best->index]) best = cand[j];
        }
        wrr_current[best->index] -= sum;
        break;
    }
    default:
        best = cand[rr_next++ % (unsigned)k];
        break;
    }
    return best == topology_primary() ? NULL : best;
}

static void count_unit(pgs_node *n, bool read)
{
    atomic_fetch_add_explicit(read ? &n->reads : &n->writes, 1, memory_order_relaxed);
}

pgs_node *route_home_node(const pgs_client *c)
{
    if (!c->want_replica || !route_active()) return topology_primary();
    pgs_node *r = pick_reader(NULL, g_pgs.cfg, NULL);
    return r ? r : topology_primary();
}

pgs_pool *route_checkout(pgs_client *c)
{
    if (!route_active() || c->pool_mode != PGS_POOL_TRANSACTION) return c->pool;
    if (c->want_replica) {
        /* a read-only session: every unit on a replica (PostgreSQL
         * refuses writes there), the primary only when none can serve */
        pgs_node *r = pick_reader(NULL, g_pgs.cfg, c->retry_from);
        return pool_for_node(c->pool, r ? r : topology_primary());
    }
    pgs_buf *b = &c->s.rbuf;
    unsigned kind = unit_kind(c, b->data + b->pos, b->len - b->pos);
    pgs_node *primary = topology_primary();
    pgs_pool *home = pool_for_node(c->pool, primary); /* c->pool unless the primary moved */
    c->replica_tx = false;
    /* (what the unit is is counted and noted by route_unit_allowed, which
     * the relay asks before sending it) */
    if (!(kind & (U_READ | U_BEGIN_RO)) || (kind & U_PRIMARY) || pool_force_primary(home))
        return home;
    pgs_node *r = pick_reader(c, g_pgs.cfg, c->retry_from);
    return r ? pool_for_node(c->pool, r) : home;
}

bool route_unit_allowed(pgs_client *c, pgs_server *sv, const uint8_t *msg, uint32_t avail)
{
    c->unit_retryable = false;
    if (!route_active() || c->pool_mode != PGS_POOL_TRANSACTION) return true;
    pgs_node *node = sv->pool->sh->node;
    unsigned kind = unit_kind(c, msg, avail);
    /* A read that may run again elsewhere if this replica fails before
     * answering: proven a read, whole, and neither in nor starting or
     * ending a transaction (relay.c decides the rest). */
    bool retryable = node != topology_primary() && !c->replica_tx && (kind & U_READ) &&
                     !(kind & (U_PRIMARY | U_BEGIN_RO | U_TXN_END));
    if (node == topology_primary()) {
        if (kind & U_DDL) c->ran_ddl = true;
        if (!(kind & U_READ)) {
            c->tx_wrote = true;
            /* (the result cache needs the same count: route_cache_fill_ok) */
            if ((g_pgs.cfg->consistency == PGS_CONSISTENCY_STRICT || g_pgs.cfg->cache.enabled) &&
                !c->strict_pending) {
                c->strict_pending = true;
                atomic_fetch_add_explicit(&writes_in_flight, 1, memory_order_acq_rel);
            }
        }
        count_unit(node, kind & U_READ);
        return true;
    }
    if (c->replica_tx || c->want_replica) {
        /* inside BEGIN READ ONLY on this replica: all of it runs here, as
         * on a read-only transaction (a write gets PostgreSQL's 25006) */
        if (kind & U_TXN_END) c->replica_tx = false;
        count_unit(node, true);
        c->unit_retryable = retryable;
        return true;
    }
    if ((kind & U_READ) && !(kind & U_PRIMARY)) {
        if (kind & U_BEGIN_RO) c->replica_tx = true;
        count_unit(node, true);
        c->unit_retryable = retryable;
        return true;
    }
    return false;
}

void route_read_failed(pgs_client *c, pgs_server *sv, bool lost, const char *why)
{
    pgs_node *n = sv->pool->sh->node;
    atomic_fetch_add_explicit(&n->retried, 1, memory_order_relaxed);
    c->retry_from = n;
    /* A FATAL names one backend's end (pg_terminate_backend, a recovery
     * conflict): the node may be well, and the monitor would say so.  A
     * connection that just breaks most often means the node went away;
     * if not, the monitor's next check brings it back. */
    if (lost) pool_node_lost(sv->pool, why);
}

bool route_wants_lsn(pgs_client *c, const pgs_server *sv)
{
    if (c->ran_ddl) {
        /* the DDL is done (committed or not): the classifier reads
         * function volatility again, a created or altered function
         * included */
        c->ran_ddl = false;
        relcat_mark_stale();
        monitor_rerun_primary_hook();
    }
    if (!c->tx_wrote || !route_active() || sv->lsn_pending) return false;
    c->tx_wrote = false;
    /* the result cache needs the position in every mode: a fill read on a
     * replica is kept only when that replica is past it */
    bool want = (g_pgs.cfg->consistency != PGS_CONSISTENCY_EVENTUAL || g_pgs.cfg->cache.enabled) &&
                sv->pool->sh->node == topology_primary();
    if (!want) strict_done(c);
    return want;
}

static void acked_max(uint64_t lsn)
{
    uint64_t cur = atomic_load_explicit(&acked_lsn, memory_order_relaxed);
    while (lsn > cur &&
           !atomic_compare_exchange_weak_explicit(&acked_lsn, &cur, lsn, memory_order_relaxed,
                                                  memory_order_relaxed)) {
    }
}

bool route_lsn_row(pgs_client *c, const uint8_t *body, uint32_t len)
{
    /* int16 1, int32 n, n bytes */
    size_t pos = 0;
    int16_t cols;
    int32_t n;
    if (proto_get_int16(body, len, &pos, &cols) < 0 || cols != 1 ||
        proto_get_int32(body, len, &pos, &n) < 0 || n <= 0 || (uint32_t)n > len - pos)
        return false;
    uint64_t lsn;
    if (!route_parse_lsn((const char *)body + pos, (size_t)n, &lsn)) return false;
    if (c && c->need_lsn != UINT64_MAX && lsn > c->need_lsn) c->need_lsn = lsn;
    acked_max(lsn);
    if (c) strict_done(c);
    return true;
}

void route_lsn_unknown(pgs_client *c)
{
    c->need_lsn = UINT64_MAX;
    c->lsn_unknown_us = pgs_now_us();
    /* (strict: the write stays in flight until the monitor's reading
     * covers it; settle_unknown ends it) */
}

/* need_lsn UINT64_MAX: once the monitor has read the primary after the
 * failed query, its position then covers the write. */
static uint64_t settle_unknown(pgs_client *c)
{
    if (c->need_lsn != UINT64_MAX) return c->need_lsn;
    pgs_node *p = topology_primary();
    uint64_t checked = atomic_load_explicit(&p->checked_us, memory_order_acquire);
    if (checked > c->lsn_unknown_us) {
        c->need_lsn = atomic_load_explicit(&p->lsn, memory_order_relaxed);
        acked_max(c->need_lsn);
        strict_done(c);
    }
    return c->need_lsn;
}

/* ---------- the result cache and replicas ----------
 *
 * A fill read on a replica may be stored only if that replica had
 * replayed every write whose version bump the fill's snapshot saw
 * (docs/cache.md, "Replicas").  A transaction-mode write on the primary is
 * counted in writes_in_flight from the moment its unit is sent until its
 * position is folded into acked_lsn (the same count strict mode uses), so
 * a fill that starts while any is in flight is not stored; one that starts
 * after needs a replica at acked_lsn or past it.  Writes whose position is
 * never read (session mode, a unit the router took for a read) set
 * cache_unknown_us before their bump: fills on replicas are refused until
 * the monitor has read the primary's position after that moment, and that
 * position is then what a replica must have replayed.  Ordering: the bump
 * follows the count or the mark, and a fill reads the count, the mark and
 * acked_lsn after its snapshot (all sequentially consistent), so a fill
 * whose snapshot saw a bump also sees what covers its write. */
static _Atomic uint64_t cache_unknown_us;

void route_cache_write_unknown(void)
{
    atomic_store(&cache_unknown_us, pgs_now_us());
}

bool route_cache_write_counted(const pgs_client *c)
{
    return c->strict_pending;
}

bool route_cache_fill_ok(const pgs_server *sv)
{
    const pgs_node *n = sv->pool->sh->node;
    pgs_node *p = topology_primary();
    if (n == p) return true;
    if (atomic_load(&writes_in_flight) > 0) return false;
    uint64_t need = atomic_load(&acked_lsn);
    uint64_t u = atomic_load(&cache_unknown_us);
    if (u) {
        uint64_t checked = atomic_load_explicit(&p->checked_us, memory_order_acquire);
        if (checked <= u) return false;
        uint64_t plsn = atomic_load(&p->lsn);
        acked_max(plsn);
        (void)atomic_compare_exchange_strong(&cache_unknown_us, &u, 0);
        if (plsn > need) need = plsn;
    }
    return atomic_load(&n->lsn) >= need;
}
