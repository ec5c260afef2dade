/* The relay's side of the result cache (rcache.h): hits served without a
 * server, fills fed from the relayed answer, clients parked on another's
 * fill, and the version bumps of writing transactions.  It owns each
 * worker's store and counters and each client's cache state; it does not
 * own the store's policy (cache.c), the versions (tablever.c) or what a
 * statement is (classify.c, relcat.c, cacherule.c).
 *
 * What is cached: a simple Query, or an extended-protocol unit (see
 * head_ext; also on a server held by a Parse, Describe and Flush: see
 * rcache_serve), in transaction pooling mode, sent outside a transaction block
 * by a client that is not pinned and whose settings pgscale follows, whose
 * statement text the classifier proves cacheable, cache_decide admits and
 * the relation catalog expands into known tables.  Session pooling is not
 * cached (its writes are tracked all the same); docs/cache.md says why.
 *
 * Writes: every request a client sends is classified as it is forwarded;
 * the ids of what it may write (or "everything") gather on the client
 * until the ReadyForQuery that shows its transaction over ('I'), and are
 * bumped there, before that ReadyForQuery is relayed.  A client whose unit
 * ends without one (server lost, FATAL, the client gone mid-request) has
 * its gathered writes bumped too: they may have committed. */
#include "rcache.h"

#include <stdio.h>
#include <string.h>

#include "cache.h"
#include "cacherule.h"
#include "classify.h"
#include "client.h"
#include "io.h"
#include "monitor.h"
#include "params.h"
#include "prepared.h"
#include "proto.h"
#include "rcache_redis.h"
#include "relay.h"
#include "relcat.h"
#include "route.h"
#include "sqlscan.h"
#include "topology.h"
#include "worker.h"

/* Longest key material (the statement text is most of it); a longer
 * statement is not cached. */
#define KEY_MAX (256u * 1024u)

/* Counters another thread reads (SHOW CACHE): the store's own, copied
 * after each operation, and this module's. */
typedef struct rc_pub {
    _Atomic uint64_t hits, misses, entries, bytes, max_bytes, evictions, invalidations, expired;
    _Atomic uint64_t fills, stored, refused_too_big, refused_lag, refused_no_room;
    _Atomic uint64_t waits, wait_timeouts, bumps, bumps_all;
} rc_pub;

/* One class's counters (SHOW CACHE's rows per rule), published likewise. */
typedef struct rc_cls_pub {
    _Atomic uint64_t hits, misses, entries, bytes, evictions, invalidations, expired;
    _Atomic uint64_t stored, refused_too_big, refused_no_room, refused_lag;
} rc_cls_pub;

_Static_assert(RCACHE_CLASSES == PGS_CACHE_CLASSES, "one class per store class");

typedef struct rcache_worker {
    pgs_cache *store;
    pgs_cache_key_builder kb;
    relcat_ref cat;
    relcat_ids reads;    /* scratch: the read set of the statement being looked up */
    rredis *redis;       /* the Redis tier, NULL when off */
    bool was_enabled;    /* the cache was on at the last configuration seen */
    uint64_t rules_sig;  /* cache.rules at the last configuration seen */
    uint64_t refused_lag, waits, wait_timeouts, bumps, bumps_all;
    uint64_t unserved;   /* local hits Redis did not vouch for: misses after all */
    uint64_t cls_refused_lag[PGS_CACHE_CLASSES];
    rc_pub pub;
    rc_cls_pub cls_pub[PGS_CACHE_CLASSES];
} rcache_worker;

struct pgs_client_cache {
    pgs_client *c;       /* NULL once the client is gone (its timer is closing) */
    /* the fill in c->cfill: its query went to a server as the only request
     * owed (live), and its answer holds something not to replay (bad) */
    bool fill_live, fill_bad;
    /* an extended-protocol unit's fill (ext): its first message went
     * (started); it Describes its portal; where its answer is (step: 0
     * before BindComplete, 1 after it, 2 in the rows, 3 complete); the
     * rest of a message not stored is passing (skip) */
    bool fill_ext, fill_started, fill_describe, fill_skip;
    uint8_t fill_step;
    bool untracked;      /* settings pgscale does not follow: never cached */
    int8_t catalog_db;   /* c's database is the relation catalog's: 1, 0, -1 not known yet */
    uint8_t fill_cls;    /* the class of the fill in c->cfill */
    bool bypass;         /* the Query at the head goes to the database as it is */
    bool parked, woken;  /* waiting on another client's fill; its end came */
    bool timer_init;
    /* writes gathered for the transaction in progress */
    bool dirty, write_all, ddl;
    bool unnamed_read;   /* the unnamed statement reads only */
    bool unnamed_noted;  /* ... and its writes were noted in this transaction */
    bool named_writer;   /* some named statement of c's may write */
    relcat_ids writes;
    pgs_cache_entry *ready; /* what a fill handed to a parked client (pinned) */
    /* The Redis tier (rcache_redis.h): what c waits for (at most one
     * request), and what its answer said, acted on from c's timer. */
    enum { RW_NONE, RW_HOLD, RW_CHECK, RW_LOOKUP } rwait;
    bool rdone;          /* the answer came (or the request failed) */
    bool rok;            /* ... and it says go on: versions equal, acknowledged */
    bool self_fill;      /* parked on its own fill, stored from a shared entry */
    bool fill_snap;      /* c->cfill holds the Redis versions of its snapshot */
    char held_status;    /* RW_HOLD: the ReadyForQuery not yet relayed */
    rredis_req *rreq;
    pgs_cache_entry *checking; /* RW_CHECK: the local hit (pinned) */
    pgs_cache_waiter waiter;
    uv_timer_t timer;
};

static const pgs_config *cfg(void)
{
    return g_pgs.cfg;
}

bool rcache_enabled(void)
{
    return cfg()->cache.enabled;
}

static size_t per_worker_bytes(const pgs_config *k)
{
    int n = g_pgs.n_workers > 0 ? g_pgs.n_workers : 1;
    uint64_t b = k->cache.max_memory / (uint64_t)n;
    return (size_t)(b ? b : 1);
}

static void publish(rcache_worker *rw)
{
    pgs_cache_stats st;
    cache_stats(rw->store, &st);
    rc_pub *p = &rw->pub;
#define PUB(f, v) atomic_store_explicit(&p->f, (v), memory_order_relaxed)
    PUB(hits, st.hits - rw->unserved);
    /* a wait is a miss too, and so is a hit Redis did not vouch for */
    PUB(misses, st.misses + st.pending + rw->unserved);
    PUB(entries, st.entries);
    PUB(bytes, st.bytes);
    PUB(max_bytes, st.max_bytes);
    PUB(evictions, st.evictions);
    PUB(invalidations, st.invalidations);
    PUB(expired, st.expired);
    PUB(fills, st.fills);
    PUB(stored, st.stored);
    PUB(refused_too_big, st.refused);
    PUB(refused_no_room, st.no_room);
    PUB(refused_lag, rw->refused_lag);
    PUB(waits, rw->waits);
    PUB(wait_timeouts, rw->wait_timeouts);
    PUB(bumps, rw->bumps);
    PUB(bumps_all, rw->bumps_all);
    /* only the classes whose counters moved: one or two per request */
    for (uint64_t m = cache_class_dirty(rw->store); m; m &= m - 1) {
        unsigned k = (unsigned)__builtin_ctzll(m);
        cache_class_stats(rw->store, k, &st);
        rc_cls_pub *q = &rw->cls_pub[k];
#define CPUB(f, v) atomic_store_explicit(&q->f, (v), memory_order_relaxed)
        CPUB(hits, st.hits);
        CPUB(misses, st.misses);
        CPUB(entries, st.entries);
        CPUB(bytes, st.bytes);
        CPUB(evictions, st.evictions);
        CPUB(invalidations, st.invalidations);
        CPUB(expired, st.expired);
        CPUB(stored, st.stored);
        CPUB(refused_too_big, st.refused);
        CPUB(refused_no_room, st.no_room);
        CPUB(refused_lag, rw->cls_refused_lag[k]);
#undef CPUB
    }
#undef PUB
}

static rcache_worker *worker_rc(pgs_worker *w)
{
    rcache_worker *rw = w->rcache;
    if (PGS_LIKELY(rw != NULL)) return rw;
    const pgs_config *k = cfg();
    rw = pgs_xcalloc(1, sizeof(*rw));
    rw->store = cache_new(per_worker_bytes(k), k->cache.max_entry_size);
    cache_key_init(&rw->kb, KEY_MAX);
    rw->was_enabled = k->cache.enabled;
    rw->rules_sig = cacherule_signature(&k->cache);
    rw->redis = rredis_start(w, k);
    publish(rw);
    __atomic_store_n(&w->rcache, rw, __ATOMIC_RELEASE);
    return rw;
}

static bool tx_mode(const pgs_client *c)
{
    return c->pool_mode == PGS_POOL_TRANSACTION;
}

/* c's cache state, made when the cache first sees c.  A client met in the
 * middle of something (a transaction, requests in flight: the cache was
 * switched on since they began) has writes the cache never saw: its
 * transaction ends with an epoch bump. */
static struct pgs_client_cache *state(pgs_client *c, bool in_flight)
{
    struct pgs_client_cache *cc = c->ccache;
    if (PGS_LIKELY(cc != NULL)) return cc;
    cc = pgs_xcalloc(1, sizeof(*cc));
    cc->c = c;
    cc->catalog_db = -1;
    if (c->tx_status != 'I' || in_flight) cc->dirty = cc->write_all = true;
    c->ccache = cc;
    return cc;
}

/* ---------- keys and decisions ---------- */

static void key_setting(void *ctx, const char *name, const char *value)
{
    pgs_cache_key_builder *kb = ctx;
    cache_key_part(kb, PGS_CKEY_SETTINGS, name, strlen(name));
    cache_key_part(kb, PGS_CKEY_SETTINGS, value, strlen(value));
}

/* A request at the head of a client's buffer that the cache may answer,
 * all of it in the buffer: a simple Query, or an extended-protocol unit
 * (head_ext).  The pointers are into the buffer, or into the body of a
 * statement the client keeps. */
typedef struct rc_unit {
    uint32_t total;       /* its bytes, up to and including the Query or Sync */
    const uint8_t *text;  /* the statement text (without its terminator) */
    uint32_t tlen;
    bool ext, describe;   /* extended; it Describes its portal */
    uint8_t max_rows[4];  /* its Execute's row limit (0: all), as sent */
    const uint8_t *parse; /* the unit's Parse body (NULL: none) */
    uint32_t parse_len;
    /* the statement's parameter types (int16 n, n x int32), and the Bind's
     * parameter formats, values and result formats, each with its count */
    const uint8_t *types, *pfmt, *params, *rfmt;
    uint32_t types_len, pfmt_len, params_len, rfmt_len;
} rc_unit;

static uint32_t be16(const uint8_t *p)
{
    return (uint32_t)p[0] << 8 | p[1];
}

static int build_key(rcache_worker *rw, const pgs_client *c, const rc_unit *u,
                     pgs_cache_key *key)
{
    pgs_cache_key_builder *kb = &rw->kb;
    const pgs_pool_shared *sh = c->pool->sh;
    cache_key_reset(kb);
    /* a unit with a Describe(portal) is answered with a RowDescription,
     * and one whose Execute has a row limit with that many rows and a
     * PortalSuspended when there were more (asyncpg's fetchrow, fetchval) */
    uint8_t proto[6] = {'Q'};
    size_t plen = 1;
    if (u->ext) {
        proto[0] = 'E';
        proto[1] = u->describe ? 'D' : '-';
        memcpy(proto + 2, u->max_rows, 4);
        plen = 6;
    }
    cache_key_part(kb, PGS_CKEY_PROTOCOL, proto, plen);
    cache_key_part(kb, PGS_CKEY_DATABASE, sh->database, strlen(sh->database));
    cache_key_part(kb, PGS_CKEY_USER, sh->user, strlen(sh->user));
    params_visit_output(c->params, key_setting, kb);
    cache_key_part(kb, PGS_CKEY_TEXT, u->text, u->tlen);
    if (u->ext) {
        /* the Parse's types are part of the statement ($1 as int or text);
         * each list keeps its count, and each value its length (a NULL is
         * not an empty value): head_ext checked every length */
        cache_key_part(kb, PGS_CKEY_PARAM_TYPES, u->types, u->types_len);
        cache_key_part(kb, PGS_CKEY_PARAM_FORMATS, u->pfmt, u->pfmt_len);
        uint32_t n = be16(u->params), at = 2;
        for (uint32_t i = 0; i < n; i++) {
            uint32_t l = proto_be32(u->params + at);
            at += 4;
            if (l == PGS_CACHE_KEY_NULL_LEN) {
                cache_key_null(kb, PGS_CKEY_PARAM);
            } else {
                cache_key_part(kb, PGS_CKEY_PARAM, u->params + at, l);
                at += l;
            }
        }
        cache_key_part(kb, PGS_CKEY_RESULT_FORMATS, u->rfmt, u->rfmt_len);
    }
    return cache_key_finish(kb, key);
}

static uint8_t class_of(const pgs_stmt_facts *f, int rule)
{
    if (rule >= 0) return (uint8_t)PGS_MIN(RCACHE_CLASS_RULE0 + rule, RCACHE_CLASSES - 1);
    return (f->flags & PGS_FACT_HINT_CACHE) ? RCACHE_CLASS_HINT : RCACHE_CLASS_DEFAULT;
}

/* Whether c's server database is the one the relation catalog describes
 * (the primary's, DATABASE_URL's): another database's tables, views and
 * partitions are not in it, so its reads are not cached (its writes still
 * bump by name, which can only end more entries than needed). */
static bool catalog_database(pgs_client *c, struct pgs_client_cache *cc)
{
    if (PGS_LIKELY(cc->catalog_db >= 0)) return cc->catalog_db;
    const char *db = c->pool->sh->database;
    const pgs_db_config *dbc = config_find_database(cfg(), db);
    if (dbc && dbc->dbname) db = dbc->dbname;
    const pgs_node *p = topology_primary();
    const char *cat = p && p->url ? p->url->dbname : NULL;
    cc->catalog_db = cat && strcmp(cat, db) == 0;
    return cc->catalog_db;
}

/* The TTL in ms to cache c's statement text with (0: not cached) and the
 * class it is counted under (*cls); its read set in rw->reads. */
static uint32_t decide(rcache_worker *rw, pgs_client *c, const uint8_t *text, uint32_t tlen,
                       uint8_t *cls)
{
    const pgs_config *k = cfg();
    const pgs_pool_shared *sh = c->pool->sh;
    bool here = atomic_load_explicit(&sh->cache, memory_order_relaxed) != 0;
    if (!here || !catalog_database(c, c->ccache)) return 0;
    const pgs_stmt_facts *f = route_classify(c->w, (const char *)text, tlen);
    int rule;
    uint32_t ttl = cache_decide(&k->cache, sh->database, sh->user, here, f, &rule);
    if (!ttl || (f->flags & (PGS_FACT_READS_OVERFLOW | PGS_FACT_USES_STABLE))) return 0;
    *cls = class_of(f, rule);
    relcat_ids *ids = &rw->reads;
    ids->n = 0;
    ids->flags = 0;
    const pgs_relcat *cat = relcat_get(&rw->cat);
    for (unsigned i = 0; i < f->n_reads; i++)
        relcat_expand_read(cat, f->reads[i].schema, f->reads[i].name, ids);
    if (ids->flags & (RELCAT_READ_NOCACHE | RELCAT_USES_STABLE)) return 0;
    return ttl;
}

/* ---------- hits ---------- */

static const uint8_t ready_idle[6] = {'Z', 0, 0, 0, 5, 'I'};
static const uint8_t parse_bind_complete[10] = {'1', 0, 0, 0, 4, '2', 0, 0, 0, 4};

/* The string at b + *pos, within blen: its length (*pos moves past its
 * terminator), or -1. */
static int64_t wire_string(const uint8_t *b, uint32_t blen, uint32_t *pos)
{
    if (*pos >= blen) return -1;
    const uint8_t *nul = memchr(b + *pos, '\0', blen - *pos);
    if (!nul) return -1;
    uint32_t n = (uint32_t)(nul - (b + *pos));
    *pos += n + 1;
    return n;
}

/* The string at b + *pos is name (len bytes). */
static bool same_name(const uint8_t *b, uint32_t blen, uint32_t *pos, const uint8_t *name,
                      uint32_t len)
{
    uint32_t at = *pos;
    int64_t n = wire_string(b, blen, pos);
    return n == (int64_t)len && memcmp(b + at, name, len) == 0;
}

/* A statement body (text, terminator, int16 n, n type OIDs) into u. */
static bool stmt_body(const uint8_t *b, uint32_t blen, rc_unit *u)
{
    uint32_t pos = 0;
    int64_t n = wire_string(b, blen, &pos);
    if (n < 0 || blen - pos < 2 || blen - pos != 2 + 4 * be16(b + pos)) return false;
    u->text = b;
    u->tlen = (uint32_t)n;
    u->types = b + pos;
    u->types_len = blen - pos;
    return true;
}

/* An int16 count and that many items of `size` bytes, at b + *pos. */
static bool counted(const uint8_t *b, uint32_t blen, uint32_t *pos, uint32_t size,
                    const uint8_t **at, uint32_t *len)
{
    if (blen - *pos < 2) return false;
    uint32_t n = be16(b + *pos);
    if ((blen - *pos - 2) / size < n) return false;
    *at = b + *pos;
    *len = 2 + n * size;
    *pos += *len;
    return true;
}

/* A Bind's parameter values (int16 n; each int32 length, -1 for NULL, and
 * its bytes), at b + *pos. */
static bool param_values(const uint8_t *b, uint32_t blen, uint32_t *pos, rc_unit *u)
{
    uint32_t at = *pos;
    if (blen - at < 2) return false;
    uint32_t n = be16(b + at);
    at += 2;
    for (uint32_t i = 0; i < n; i++) {
        if (blen - at < 4) return false;
        uint32_t l = proto_be32(b + at);
        at += 4;
        if (l == PGS_CACHE_KEY_NULL_LEN) continue;
        if (l > blen - at) return false;
        at += l;
    }
    u->params = b + *pos;
    u->params_len = at - *pos;
    *pos = at;
    return true;
}

/* An extended-protocol unit the cache may answer, at p (avail bytes):
 * [Parse] Bind [Describe(portal)] Execute Sync, all present, with one
 * statement (the Parse's, which the Bind must use, or a named statement
 * the client keeps), one Execute of the bound portal, and nothing else
 * (a Flush, a Close, a second Execute, a Describe of a statement: the unit
 * goes to the server as it is). */
static bool head_ext(const pgs_client *c, const uint8_t *p, uint32_t avail, rc_unit *u)
{
    const uint8_t *pname = NULL, *portal = NULL;
    uint32_t pname_len = 0, portal_len = 0, off = 0;
    bool bound = false, executed = false;
    memset(u, 0, sizeof(*u));
    u->ext = true;
    for (;;) {
        if (avail - off < 5) return false;
        uint8_t type = p[off];
        uint32_t len = proto_be32(p + off + 1);
        if (len < 4 || len > KEY_MAX || len - 4 > avail - off - 5) return false;
        const uint8_t *b = p + off + 5;
        uint32_t blen = len - 4, pos = 0;
        off += len + 1;
        if (off > KEY_MAX) return false;
        switch (type) {
        case 'P': {
            if (u->parse || bound) return false;
            int64_t n = wire_string(b, blen, &pos);
            /* a named statement is kept by pgscale only with
             * max_prepared_statements (else it lives on one server) */
            if (n < 0 || (n > 0 && cfg()->max_prepared_statements <= 0)) return false;
            if (!stmt_body(b + pos, blen - pos, u)) return false;
            pname = b;
            pname_len = (uint32_t)n;
            u->parse = b;
            u->parse_len = blen;
            break;
        }
        case 'B': {
            if (bound) return false;
            int64_t n = wire_string(b, blen, &pos);
            if (n < 0) return false;
            portal = b;
            portal_len = (uint32_t)n;
            uint32_t at = pos;
            int64_t sn = wire_string(b, blen, &pos);
            if (sn < 0) return false;
            if (u->parse) {
                if (sn != (int64_t)pname_len || memcmp(b + at, pname, pname_len) != 0)
                    return false;
            } else {
                /* the unnamed statement of an earlier unit is on a server
                 * pgscale does not know */
                if (sn == 0 || !c->stmts || cfg()->max_prepared_statements <= 0) return false;
                pgs_stmt *st = stmt_map_get(c->stmts, (const char *)b + at, (size_t)sn);
                if (!st || !st->body || st->local || !stmt_body(st->body, st->body_len, u))
                    return false;
            }
            if (!counted(b, blen, &pos, 2, &u->pfmt, &u->pfmt_len) ||
                !param_values(b, blen, &pos, u) ||
                !counted(b, blen, &pos, 2, &u->rfmt, &u->rfmt_len) || pos != blen)
                return false;
            bound = true;
            break;
        }
        case 'D':
            if (!bound || u->describe || executed || blen < 1 || b[0] != 'P') return false;
            pos = 1;
            if (!same_name(b, blen, &pos, portal, portal_len) || pos != blen) return false;
            u->describe = true;
            break;
        case 'E':
            if (!bound || executed || !same_name(b, blen, &pos, portal, portal_len) ||
                blen - pos != 4)
                return false;
            memcpy(u->max_rows, b + pos, 4);
            executed = true;
            break;
        case 'S':
            if (!executed || blen != 0) return false;
            u->total = off;
            return true;
        default:
            return false;
        }
    }
}

/* The request at the head of c's buffer, if it is one the cache may
 * answer. */
static bool head_unit(const pgs_client *c, rc_unit *u)
{
    const pgs_buf *b = &c->s.rbuf;
    if (!b->data || b->pos >= b->len) return false;
    const uint8_t *p = b->data + b->pos;
    uint32_t avail = b->len - b->pos;
    if (avail < 6) return false;
    if (p[0] == 'P' || p[0] == 'B') return head_ext(c, p, avail, u);
    if (p[0] != 'Q') return false;
    uint32_t total = proto_be32(p + 1) + 1;
    if (total < 6 || total > avail || total > KEY_MAX || p[total - 1] != '\0') return false;
    memset(u, 0, sizeof(*u));
    u->total = total;
    u->text = p + 5;
    u->tlen = total - 6;
    return true;
}

/* Every hit, of either protocol and whether found at once or handed over
 * by another client's fill, is answered here: the unit u at the head of
 * c's buffer with entry e (released here), as a server would have
 * answered it.
 *
 * An entry holds only what the server sent after its BindComplete and
 * before its ReadyForQuery (RowDescription or NoData when the unit
 * Describes its portal, the DataRows, CommandComplete; the Describe is in
 * the key).  ParseComplete and BindComplete carry nothing and are made
 * here, so one entry serves a unit with or without a Parse, with an
 * unnamed or a named statement: a driver that goes over to a named
 * statement after some runs (JDBC, psycopg) hits what its unnamed runs
 * filled.
 *
 * Returns 0 when answered, 1 when not (the unit goes to the server: a
 * Parse of it would be refused there), -1 when c was closed. */
static int answer_head(rcache_worker *rw, pgs_client *c, const rc_unit *u, pgs_cache_entry *e)
{
    if (u->ext) {
        if (relay_cache_answered(c, u->parse, u->parse_len) < 0) {
            cache_entry_release(rw->store, e);
            return 1;
        }
        if (u->parse && u->parse[0] == '\0') {
            /* as rcache_forward notes a Parse: the unnamed statement reads */
            c->ccache->unnamed_read = true;
            c->ccache->unnamed_noted = true;
        }
    }
    size_t len;
    const uint8_t *a = cache_entry_answer(e, &len);
    uv_buf_t iov[3];
    unsigned n = 0;
    if (u->ext)
        iov[n++] = u->parse ? uv_buf_init((char *)parse_bind_complete, 10)
                            : uv_buf_init((char *)parse_bind_complete + 5, 5);
    iov[n++] = uv_buf_init((char *)a, (unsigned)len);
    iov[n++] = uv_buf_init((char *)ready_idle, sizeof(ready_idle));
    c->s.rbuf.pos += u->total;
    int rc = io_send(c->w, &c->s, iov, n);
    cache_entry_release(rw->store, e);
    if (rc < 0) {
        client_close(c, "writing to the client failed");
        return -1;
    }
    c->last_activity_us = pgs_now_us();
    return 0;
}

static void on_timer(uv_timer_t *t);

static void ensure_timer(pgs_client *c, struct pgs_client_cache *cc)
{
    if (cc->timer_init) return;
    uv_timer_init(&c->w->loop, &cc->timer);
    cc->timer.data = cc;
    cc->timer_init = true;
}

static void on_fill_end(pgs_cache_waiter *wt, pgs_cache_entry *e)
{
    struct pgs_client_cache *cc = wt->data;
    cc->ready = e;
    cc->woken = true;
    /* served from the loop, not from inside the filler's callback */
    uv_timer_start(&cc->timer, on_timer, 0, 0);
}

/* c waits on fill f: on_fill_end hands it the entry (or NULL). */
static void wait_on(struct pgs_client_cache *cc, pgs_cache_fill *f)
{
    cc->waiter.prev = cc->waiter.next = NULL;
    cc->waiter.cb = on_fill_end;
    cc->waiter.data = cc;
    cache_wait(f, &cc->waiter);
    cc->parked = true;
    cc->woken = false;
    cc->ready = NULL;
}

static void park(rcache_worker *rw, pgs_client *c, struct pgs_client_cache *cc,
                 pgs_cache_fill *f)
{
    ensure_timer(c, cc);
    wait_on(cc, f);
    rw->waits++;
    uv_timer_start(&cc->timer, on_timer, cfg()->cache.fill_wait_ms, 0);
}

static void redis_resume(rcache_worker *rw, pgs_client *c, struct pgs_client_cache *cc);

/* The parked client's fill ended (woken) or its wait did; or the Redis
 * tier answered what c waited for. */
static void on_timer(uv_timer_t *t)
{
    struct pgs_client_cache *cc = t->data;
    pgs_client *c = cc->c;
    if (!c) return;
    rcache_worker *rw = worker_rc(c->w);
    if (cc->rwait != RW_NONE) {
        if (cc->rdone) redis_resume(rw, c, cc);
        return;
    }
    if (!cc->parked) return;
    cc->parked = false;
    pgs_cache_entry *e = cc->ready;
    cc->ready = NULL;
    if (!cc->woken) {
        cache_unwait(&cc->waiter);
        rw->wait_timeouts++;
    }
    cc->woken = false;
    bool self = cc->self_fill;
    cc->self_fill = false;
    if (e && rw->redis && !self) {
        /* Another client's fill: its Redis snapshot may predate a write
         * acknowledged through another instance since.  Looked up again,
         * it is a local hit, checked against Redis like any other. */
        cache_entry_release(rw->store, e);
        e = NULL;
        publish(rw);
        relay_client_data(c);
        return;
    }
    rc_unit u;
    if (e) {
        if (head_unit(c, &u) && c->tx_status == 'I' && !c->server) {
            int rc = answer_head(rw, c, &u, e);
            if (rc < 0) return;
            if (rc > 0) cc->bypass = true;
        } else {
            cache_entry_release(rw->store, e);
            cc->bypass = true;
        }
    } else {
        cc->bypass = true; /* the fill failed or took too long: the database */
    }
    publish(rw);
    relay_client_data(c);
}

static void begin_fill(rcache_worker *rw, pgs_client *c, struct pgs_client_cache *cc,
                       const rc_unit *u, const pgs_cache_key *key, uint32_t ttl_ms, uint64_t now)
{
    const relcat_ids *ids = &rw->reads;
    uint64_t vers[RELCAT_IDS_MAX], epoch;
    tablever_snapshot(ids->ids, ids->n, vers, &epoch);
    pgs_cache_fill *f = NULL;
    /* with the Redis tier, the Redis versions (ids', then the epoch) too */
    size_t n_aux = rw->redis ? ids->n + 1 : 0;
    if (cache_fill_begin_aux(rw->store, key, ids->ids, vers, ids->n, epoch, n_aux,
                             (uint64_t)ttl_ms * 1000u, now, &f) != 0)
        return;
    c->cfill = f;
    cc->fill_cls = key->cls;
    cc->fill_ext = u->ext;
    cc->fill_describe = u->describe;
    cc->fill_started = cc->fill_skip = false;
    cc->fill_step = 0;
}

/* ---------- the Redis tier ----------
 *
 * With the tier on, nothing is served that Redis has not just vouched
 * for: a local hit is served only once Redis says the versions of its
 * tables and the epoch are those the entry was filled under, and a fill
 * takes its Redis versions before its query is sent (the lookup that
 * also fetches the shared entry).  A writer's ReadyForQuery waits until
 * Redis has its version bumps.  So a write acknowledged through any
 * instance is seen by every later read through any other, as long as the
 * tier is up; while it is down, nothing is served from the cache at all.
 * Each wait is bounded by cache.redis_timeout (rcache_redis.c). */

static void on_redis(rredis_req *q, int status, void *arg)
{
    struct pgs_client_cache *cc = arg;
    pgs_client *c = cc->c;
    cc->rreq = NULL;
    cc->rdone = true;
    cc->rok = status == RREDIS_OK;
    if (cc->rok && cc->rwait == RW_CHECK) {
        size_t n, na;
        (void)cache_entry_deps(cc->checking, &n);
        const uint64_t *aux = cache_entry_aux(cc->checking, &na);
        cc->rok = na == n + 1 && q->n == n && memcmp(aux, q->vers, na * sizeof(uint64_t)) == 0;
    } else if (cc->rok && cc->rwait == RW_LOOKUP && c && c->cfill) {
        rcache_worker *rw = worker_rc(c->w);
        pgs_cache_fill *f = c->cfill;
        size_t na, mlen, alen;
        uint64_t *aux = cache_fill_aux(f, &na);
        if (aux && na == q->n + 1) {
            memcpy(aux, q->vers, na * sizeof(uint64_t));
            cc->fill_snap = true;
        }
        const uint8_t *m = cache_fill_key(f, &mlen);
        uint64_t left_ms = 0;
        const uint8_t *a = m ? rredis_entry_answer(q, m, mlen, &alen, &left_ms) : NULL;
        if (a && cc->fill_snap && cache_fill_append(f, a, alen) == 0) {
            /* kept here no longer than its filler allowed */
            cache_fill_cap_expiry(f, pgs_now_us() + left_ms * 1000u);
            /* Another instance's answer, under the versions Redis has now:
             * kept here too, and c takes it as the fill's own waiter. */
            rredis_count_hit(rw->redis);
            c->cfill = NULL;
            cc->fill_snap = false;
            wait_on(cc, f);
            cc->self_fill = true;
            cc->rwait = RW_NONE;
            cc->rdone = false;
            (void)cache_fill_commit(f, pgs_now_us()); /* wakes c: on_fill_end */
            publish(rw);
            return;
        }
    }
    /* acted on from the loop, not from inside hiredis's callback */
    if (c) uv_timer_start(&cc->timer, on_timer, 0, 0);
}

static void redis_resume(rcache_worker *rw, pgs_client *c, struct pgs_client_cache *cc)
{
    int what = cc->rwait;
    bool ok = cc->rok;
    cc->rwait = RW_NONE;
    cc->rdone = cc->rok = false;
    switch (what) {
    case RW_HOLD:
        relay_ready_release(c, cc->held_status);
        return;
    case RW_CHECK: {
        pgs_cache_entry *e = cc->checking;
        cc->checking = NULL;
        if (!ok) rw->unserved++;
        if (ok) {
            rc_unit u;
            if (head_unit(c, &u) && c->tx_status == 'I' && !c->server) {
                int rc = answer_head(rw, c, &u, e);
                if (rc < 0) return;
                if (rc > 0) cc->bypass = true;
                e = NULL;
            } else {
                cc->bypass = true;
            }
        } else if (rredis_up(rw->redis)) {
            /* Redis has moved on: the entry is dead (and the lookup
             * that follows fetches what Redis may have instead) */
            cache_entry_drop(rw->store, e);
        } else {
            cc->bypass = true; /* the tier went down: the database */
        }
        if (e) cache_entry_release(rw->store, e);
        break;
    }
    case RW_LOOKUP:
        if (!ok && c->cfill) {
            /* no Redis snapshot: nothing may be stored from this fill */
            cache_fill_abort(c->cfill);
            c->cfill = NULL;
            cc->fill_snap = false;
            cc->bypass = true;
        }
        break;
    default:
        break;
    }
    publish(rw);
    relay_client_data(c);
}

static int redis_wait(pgs_client *c, struct pgs_client_cache *cc, int what, rredis_req *q)
{
    ensure_timer(c, cc);
    cc->rwait = what;
    cc->rdone = cc->rok = false;
    cc->rreq = q;
    return RCACHE_WAIT;
}

bool rcache_holding(const pgs_client *c)
{
    return c->ccache && c->ccache->rwait == RW_HOLD;
}

int rcache_serve(pgs_client *c)
{
    if (!tx_mode(c) || c->is_admin) return RCACHE_GO;
    struct pgs_client_cache *cc = state(c, false);
    if (cc->parked || cc->rwait != RW_NONE) return RCACHE_WAIT;
    if (c->cfill || cc->untracked || cc->bypass ||
        atomic_load_explicit(&c->pin, memory_order_relaxed))
        return RCACHE_GO;
    rcache_worker *rw = worker_rc(c->w);
    /* c holds its server in an implicit transaction where nothing ran
     * (rcache.h, relay.c's cache_held_ok): only a hit is served, when no
     * statement parsed there may write; a miss is not filled, since the
     * transaction may have taken its snapshot at its Parse (repeatable
     * read), before the fill's versions */
    bool held = c->server != NULL;
    if (held && cc->dirty) return RCACHE_GO;
    rc_unit u;
    while (c->tx_status == 'I' && !c->skip_remaining && !c->fwd_remaining && !c->tx_lost &&
           !c->ext_skip && head_unit(c, &u) && (!held || u.ext)) {
        if (rw->redis && !rredis_up(rw->redis)) {
            /* the Redis tier is down: nothing can be checked, nothing is
             * served or stored; the database answers */
            cc->bypass = true;
            return RCACHE_GO;
        }
        uint8_t cls;
        uint32_t ttl = decide(rw, c, u.text, u.tlen, &cls);
        if (!ttl) break;
        pgs_cache_key key;
        if (build_key(rw, c, &u, &key) < 0) break;
        key.cls = cls;
        uint64_t now = pgs_now_us();
        pgs_cache_lookup_result res;
        switch (cache_lookup(rw->store, &key, now, &res)) {
        case PGS_CACHE_HIT: {
            if (rw->redis && held) {
                /* the check would keep the held server waiting */
                cache_entry_release(rw->store, res.entry);
                cc->bypass = true;
                publish(rw);
                return RCACHE_GO;
            }
            if (rw->redis) {
                /* served once Redis vouches for it (on_redis) */
                size_t n;
                const uint64_t *ids = cache_entry_deps(res.entry, &n);
                rredis_req *q = rredis_check(rw->redis, ids, n, on_redis, cc);
                if (!q) {
                    cache_entry_release(rw->store, res.entry);
                    cc->bypass = true; /* down: no hits */
                    publish(rw);
                    return RCACHE_GO;
                }
                rredis_count_check(rw->redis);
                cc->checking = res.entry;
                publish(rw);
                return redis_wait(c, cc, RW_CHECK, q);
            }
            int rc = answer_head(rw, c, &u, res.entry);
            if (rc < 0) return RCACHE_CLOSED;
            publish(rw);
            if (rc > 0) {
                cc->bypass = true;
                return RCACHE_GO;
            }
            if (held) return RCACHE_SYNC;
            /* a slow reader: the rest waits until it drains */
            if (c->s.wb.pending) return RCACHE_WAIT;
            continue;
        }
        case PGS_CACHE_PENDING:
            if (held || cfg()->cache.fill_wait_ms == 0) {
                cc->bypass = true;
                publish(rw);
                return RCACHE_GO;
            }
            park(rw, c, cc, res.fill);
            publish(rw);
            return RCACHE_WAIT;
        default:
            if (rw->redis && !rredis_up(rw->redis)) {
                /* down: nothing is stored (it could not be checked) */
                cc->bypass = true;
                publish(rw);
                return RCACHE_GO;
            }
            /* Begun now, before a server is found: clients missing the same
             * key meanwhile wait for this one. */
            if (!held) begin_fill(rw, c, cc, &u, &key, ttl, now);
            publish(rw);
            if (rw->redis && c->cfill) {
                /* its Redis versions before its query, and maybe another
                 * instance's answer (on_redis) */
                rredis_req *q = rredis_lookup(rw->redis, &key, rw->reads.ids, rw->reads.n,
                                              on_redis, cc);
                if (q) return redis_wait(c, cc, RW_LOOKUP, q);
                cache_fill_abort(c->cfill);
                c->cfill = NULL;
                cc->bypass = true;
            }
            return RCACHE_GO;
        }
    }
    return RCACHE_GO;
}

/* ---------- fills ---------- */

/* The fill's answer goes to Redis too, for the other instances (and for
 * this one's other workers), under its Redis snapshot.  Sent before the
 * local commit, which may still refuse it (a local write meanwhile): the
 * copy in Redis is then dead on arrival, as its snapshot is older than
 * that write's INCR. */
static void share(rcache_worker *rw, pgs_cache_fill *f)
{
    size_t mlen, alen, na, n;
    const uint8_t *m = cache_fill_key(f, &mlen);
    const uint8_t *a = cache_fill_answer(f, &alen);
    const uint64_t *aux = cache_fill_aux(f, &na);
    const uint64_t *ids = cache_fill_deps(f, &n);
    uint64_t now = pgs_now_us(), exp = cache_fill_expires(f);
    if (!m || !a || na != n + 1 || exp <= now + 1000) return;
    pgs_cache_key key;
    cache_key_of_material(m, mlen, &key); /* the hash again: the builder moved on */
    rredis_store(rw->redis, key.lo, key.hi, m, mlen, ids, aux, n, a, alen, (exp - now) / 1000u);
}

static void end_fill(pgs_client *c, bool commit)
{
    struct pgs_client_cache *cc = c->ccache;
    pgs_cache_fill *f = c->cfill;
    c->cfill = NULL;
    rcache_worker *rw = worker_rc(c->w);
    /* an extended unit's answer must have come to its end */
    commit = commit && cc->fill_live && !cc->fill_bad && rcache_enabled() &&
             (!cc->fill_ext || cc->fill_step == 3);
    if (rw->redis) {
        /* stored only under a Redis snapshot, and only while it can be
         * shared: another instance's write may not have reached us */
        commit = commit && cc->fill_snap && rredis_up(rw->redis);
        if (commit) share(rw, f);
    }
    cc->fill_live = cc->fill_bad = cc->fill_snap = cc->fill_ext = false;
    if (commit)
        (void)cache_fill_commit(f, pgs_now_us()); /* refusals are counted by the store */
    else
        cache_fill_abort(f);
    publish(rw);
}

/* An extended unit's answer, message by message: [ParseComplete]
 * BindComplete (neither stored: answer_head makes them), then with a
 * Describe a RowDescription or NoData, DataRows, and CommandComplete (or
 * EmptyQueryResponse, or PortalSuspended after max_rows rows).  Anything
 * else, or out of that order, is not an answer to replay.  Returns whether
 * the message is stored. */
static bool ext_step(struct pgs_client_cache *cc, uint8_t type)
{
    uint8_t s = cc->fill_step;
    switch (type) {
    case '1':
    case '2':
        if (s != 0) break;
        if (type == '2') cc->fill_step = 1;
        cc->fill_skip = true;
        return false;
    case 'T':
    case 'n':
        if (s != 1 || !cc->fill_describe) break;
        cc->fill_step = 2;
        return true;
    case 'D':
    case 'C':
    case 'I':
    case 's':
        if (s == 0 || s == 3 || (s == 1 && cc->fill_describe)) break;
        cc->fill_step = type == 'D' ? 2 : 3;
        return true;
    default:
        break;
    }
    cc->fill_bad = true;
    return false;
}

void rcache_tap(pgs_client *c, uint8_t type, const uint8_t *p, uint32_t n, bool start)
{
    struct pgs_client_cache *cc = c->ccache;
    if (cc->fill_ext) {
        /* nothing comes before the unit's Sync went (a Flush of pgscale's
         * own would make it): that answer is not followed from its start */
        if (!cc->fill_live) cc->fill_bad = true;
        if (cc->fill_bad) return;
        if (start) {
            cc->fill_skip = false;
            if (!ext_step(cc, type)) return;
        } else if (cc->fill_skip) {
            return;
        }
        if (cache_fill_append(c->cfill, p, n) < 0) cc->fill_bad = true;
        return;
    }
    if (!cc->fill_live || cc->fill_bad) return;
    if (start) {
        switch (type) {
        case 'T': /* RowDescription */
        case 'D': /* DataRow */
        case 'C': /* CommandComplete */
        case 'I': /* EmptyQueryResponse */
            break;
        default:
            /* an error, a notice, a notification, a parameter change, COPY:
             * not an answer to replay */
            cc->fill_bad = true;
            return;
        }
    }
    if (cache_fill_append(c->cfill, p, n) < 0) cc->fill_bad = true; /* too big: stop copying */
}

/* ---------- writes ---------- */

static void note_write_all(struct pgs_client_cache *cc)
{
    cc->dirty = cc->write_all = true;
}

/* A statement text c sends (whole: all of it is at text) may run: note
 * what it may write.  Returns whether it only reads. */
static bool note_text(pgs_client *c, struct pgs_client_cache *cc, const uint8_t *text,
                      uint32_t len, bool whole)
{
    if (!whole) {
        note_write_all(cc);
        return false;
    }
    if (len && text[len - 1] == '\0') len--;
    const pgs_stmt_facts *f = route_classify(c->w, (const char *)text, len);
    if (f->flags & PGS_FACT_READ) return true;
    cc->dirty = true;
    if (f->flags & PGS_FACT_DDL) cc->ddl = true;
    if (f->flags & (PGS_FACT_WRITES_OVERFLOW | PGS_FACT_USES_VOLATILE | PGS_FACT_DDL |
                    PGS_FACT_PARSE_ERROR)) {
        cc->write_all = true;
        return false;
    }
    if (cc->write_all) return false;
    rcache_worker *rw = worker_rc(c->w);
    const pgs_relcat *cat = relcat_get(&rw->cat);
    for (unsigned i = 0; i < f->n_writes; i++)
        relcat_expand_write(cat, f->writes[i].schema, f->writes[i].name, &cc->writes);
    if (cc->writes.flags & RELCAT_WRITE_ALL) cc->write_all = true;
    return false;
}

/* A Parse or extended-protocol text that sets something pgscale does not
 * record (it follows SET only in simple Queries). */
static void check_ext_set(pgs_client *c, const uint8_t *text, uint32_t len)
{
    sql_info info;
    sqlscan_classify((const char *)text, len, &info);
    bool set = info.kind == SQL_SET || info.kind == SQL_RESET || info.kind == SQL_RESET_ALL ||
               info.kind == SQL_DISCARD_ALL || info.config_session;
    if (set && !(info.name[0] && params_reported_index(info.name) >= 0 && !info.config_session))
        rcache_untracked(c);
}

/* The query text of a Parse body (name, text): its offset, or -1. */
static int parse_text(const uint8_t *body, uint32_t blen, uint32_t *tlen, bool *unnamed,
                      bool *whole)
{
    const uint8_t *nul = memchr(body, '\0', blen);
    if (!nul) return -1;
    uint32_t at = (uint32_t)(nul - body) + 1;
    *unnamed = at == 1;
    const uint8_t *end = memchr(body + at, '\0', blen - at);
    *whole = end != NULL;
    *tlen = end ? (uint32_t)(end - (body + at)) : blen - at;
    return (int)at;
}

static void forward_bind(pgs_client *c, struct pgs_client_cache *cc, const uint8_t *body,
                         uint32_t blen)
{
    size_t pos = 0;
    if (!proto_get_string(body, blen, &pos)) { /* the portal's name */
        note_write_all(cc);
        return;
    }
    size_t at = pos;
    const char *name = proto_get_string(body, blen, &pos);
    if (!name) {
        note_write_all(cc);
        return;
    }
    if (!*name) {
        if (!cc->unnamed_read && !cc->unnamed_noted) note_write_all(cc);
        return;
    }
    pgs_stmt *st = c->stmts ? stmt_map_get(c->stmts, name, pos - at - 1) : NULL;
    if (st && st->body) {
        const uint8_t *t = st->body;
        const uint8_t *end = memchr(t, '\0', st->body_len);
        (void)note_text(c, cc, t, end ? (uint32_t)(end - t) : st->body_len, end != NULL);
        return;
    }
    /* A statement pgscale does not keep (session pooling, or
     * max_prepared_statements 0): only its Parse was seen. */
    if (cc->named_writer) note_write_all(cc);
}

/* c's fill is not fed: its server may not have replayed every write
 * acknowledged (route_cache_fill_ok). */
static void count_refused_lag(pgs_client *c, struct pgs_client_cache *cc)
{
    rcache_worker *rw = worker_rc(c->w);
    rw->refused_lag++;
    rw->cls_refused_lag[cc->fill_cls]++;
    /* counted under the class: publish reports it */
    cache_class_note(rw->store, cc->fill_cls);
}

/* A message of the extended unit whose fill c->cfill is goes to sv.  The
 * fill is fed only when its first message went as the only request owed
 * to c, on a server that may serve it (route_cache_fill_ok, as for a
 * Query), and every message of it went whole to the server (a Parse may be
 * answered by pgscale: its ParseComplete is not stored); it goes live at
 * the unit's Sync, and what the server sends c next is its answer. */
static void ext_fill_sent(pgs_client *c, struct pgs_client_cache *cc, pgs_server *sv,
                          uint8_t type, bool whole, bool forwarded, bool alone)
{
    bool ok = whole && !c->ext_skip && (forwarded || type == 'P');
    if (!cc->fill_started) {
        cc->fill_started = true;
        ok = ok && alone && c->tx_status == 'I';
        if (ok && !route_cache_fill_ok(sv)) {
            ok = false;
            count_refused_lag(c, cc);
        }
    }
    if (!ok)
        end_fill(c, false);
    else if (type == 'S')
        cc->fill_live = true;
}

void rcache_forward(pgs_client *c, pgs_server *sv, uint8_t type, const uint8_t *p,
                    uint32_t have, uint32_t total, bool forwarded, bool alone)
{
    struct pgs_client_cache *cc = state(c, !alone);
    const uint8_t *body = p + 5;
    uint32_t blen = have - 5;
    bool whole = have == total;
    if (c->cfill && cc->fill_ext && !cc->fill_live)
        ext_fill_sent(c, cc, sv, type, whole, forwarded, alone);
    switch (type) {
    case 'S':
        cc->bypass = false; /* the unit at the head went */
        break;
    case 'Q':
        cc->bypass = false;
        if (c->cfill && !cc->fill_ext) {
            /* The fill begun at the lookup is fed only when this query's
             * answer is the next thing the server sends c, and when the
             * server may serve it (a replica past every acknowledged
             * write: route_cache_fill_ok, after the fill's snapshot). */
            bool ok = forwarded && alone && whole && c->tx_status == 'I';
            if (ok && !route_cache_fill_ok(sv)) {
                ok = false;
                count_refused_lag(c, cc);
            }
            if (ok)
                cc->fill_live = true;
            else
                end_fill(c, false);
        }
        if (forwarded) (void)note_text(c, cc, body, blen, whole);
        break;
    case 'P': {
        uint32_t tlen;
        bool unnamed, twhole;
        int at = parse_text(body, blen, &tlen, &unnamed, &twhole);
        if (at < 0) {
            note_write_all(cc);
            break;
        }
        twhole = twhole && whole;
        check_ext_set(c, body + at, tlen);
        bool read = note_text(c, cc, body + at, tlen, twhole);
        if (unnamed) {
            cc->unnamed_read = read;
            cc->unnamed_noted = true;
        } else if (!read) {
            cc->named_writer = true;
        }
        break;
    }
    case 'B':
        if (forwarded) forward_bind(c, cc, body, blen);
        break;
    case 'F':
        if (forwarded) note_write_all(cc); /* a function call: anything */
        break;
    default:
        break;
    }
}

/* The transaction's writes are over (committed, or maybe): bump them,
 * here and in Redis.  With `hold`, when Redis is asked, c's ReadyForQuery
 * (status) waits for its acknowledgement: returns true then. */
static bool bump(pgs_client *c, struct pgs_client_cache *cc, bool hold, char status)
{
    bool held = false;
    rcache_worker *rw = worker_rc(c->w);
    /* a replica's fill must not be stored before it replays this write */
    if (route_active() && !route_cache_write_counted(c)) route_cache_write_unknown();
    if (cc->ddl) {
        /* the catalog may have changed (a view redefined): expansions say
         * "unknown" until it is loaded again, and that starts now */
        relcat_mark_stale();
        monitor_rerun_primary_hook();
    }
    bool all = cc->write_all || (cc->writes.flags & RELCAT_WRITE_ALL);
    if (all) {
        tablever_bump_all();
        rw->bumps_all++;
    } else if (cc->writes.n) {
        tablever_bump(cc->writes.ids, cc->writes.n);
        rw->bumps++;
    }
    if (rw->redis && (all || cc->writes.n)) {
        /* local first (above): this instance's own readers never wait */
        hold = hold && cc->c && cc->rwait == RW_NONE;
        rredis_req *q = rredis_bump(rw->redis, cc->writes.ids, cc->writes.n, all,
                                    hold ? on_redis : NULL, cc);
        if (q) {
            cc->held_status = status;
            (void)redis_wait(c, cc, RW_HOLD, q);
            held = true;
        }
    }
    cc->dirty = cc->write_all = cc->ddl = false;
    cc->unnamed_noted = false;
    cc->writes.n = 0;
    cc->writes.flags = 0;
    publish(rw);
    return held;
}

bool rcache_ready(pgs_client *c, char status, bool may_hold)
{
    struct pgs_client_cache *cc = c->ccache;
    if (!cc) {
        /* a request sent before the cache was on: its writes were not seen */
        cc = state(c, true);
    }
    bool held = false;
    if (status == 'I' && cc->dirty) held = bump(c, cc, may_hold, status);
    if (c->cfill) end_fill(c, status == 'I');
    return held;
}

void rcache_unlinked(pgs_client *c)
{
    struct pgs_client_cache *cc = c->ccache;
    if (!cc) return;
    if (c->cfill) end_fill(c, false);
    if (cc->dirty) (void)bump(c, cc, false, 'I');
}

void rcache_untracked(pgs_client *c)
{
    state(c, false)->untracked = true;
}

static void free_state(uv_handle_t *h)
{
    free(h->data);
}

void rcache_client_gone(pgs_client *c)
{
    struct pgs_client_cache *cc = c->ccache;
    if (!cc) return;
    if (c->cfill) end_fill(c, false);
    if (cc->dirty) (void)bump(c, cc, false, 'I'); /* a request in flight may still commit */
    if (cc->rreq) rredis_cancel(cc->rreq);
    cc->rreq = NULL;
    cc->rwait = RW_NONE;
    if (cc->checking) cache_entry_release(worker_rc(c->w)->store, cc->checking);
    cc->checking = NULL;
    if (cc->parked) {
        cache_unwait(&cc->waiter);
        cc->parked = false;
    }
    if (cc->ready) cache_entry_release(worker_rc(c->w)->store, cc->ready);
    cc->ready = NULL;
    cc->c = NULL;
    c->ccache = NULL;
    if (cc->timer_init) {
        uv_timer_stop(&cc->timer);
        uv_close((uv_handle_t *)&cc->timer, free_state);
    } else {
        free(cc);
    }
}

/* ---------- configuration, totals ---------- */

void rcache_worker_config(pgs_worker *w)
{
    rcache_worker *rw = w->rcache;
    const pgs_config *k = w->cfg;
    bool on = k->cache.enabled;
    bool was = rw ? rw->was_enabled : false;
    /* switched on: the store and the Redis tier now, not at the first
     * request (which would find the tier still connecting) */
    if (on && !rw && g_pgs.cfg == k) rw = worker_rc(w);
    if (rw) {
        cache_set_limits(rw->store, per_worker_bytes(k), k->cache.max_entry_size);
        if (!on) cache_clear(rw->store);
        /* made while the cache was off: the tier starts with the cache,
         * or this worker would serve what other instances' writes ended */
        if (on && !rw->redis) __atomic_store_n(&rw->redis, rredis_start(w, k), __ATOMIC_RELEASE);
        uint64_t sig = cacherule_signature(&k->cache);
        if (sig != rw->rules_sig) {
            /* New rules: entries stored under the old ones could outlive
             * the new TTLs, and the rows per rule change meaning. */
            cache_clear(rw->store);
            cache_class_reset(rw->store);
            memset(rw->cls_refused_lag, 0, sizeof(rw->cls_refused_lag));
            rw->rules_sig = sig;
        }
    }
    if (on && !was) {
        /* Switched on: while it was off no write was tracked.  What is
         * stored from before is gone, and every client in the middle of
         * something ends its transaction with an epoch bump. */
        if (rw) cache_clear(rw->store);
        tablever_bump_all();
        /* the relation catalog is loaded only while the cache is on */
        if (w->id == 0) monitor_rerun_primary_hook();
        pthread_mutex_lock(&w->lock);
        for (pgs_list *n = w->clients.next; n != &w->clients; n = n->next) {
            pgs_client *c = list_entry(n, pgs_client, node);
            if (c->ccache) note_write_all(c->ccache);
        }
        pthread_mutex_unlock(&w->lock);
    }
    if (rw) {
        rw->was_enabled = on;
        publish(rw);
    }
}

void rcache_worker_start(pgs_worker *w)
{
    if (cfg()->cache.enabled) (void)worker_rc(w);
}

void rcache_worker_stop(pgs_worker *w)
{
    rcache_worker *rw = w->rcache;
    if (rw) rredis_stop(rw->redis);
}

void rcache_worker_free(pgs_worker *w)
{
    rcache_worker *rw = w->rcache;
    if (!rw) return;
    rredis_free(rw->redis);
    rw->redis = NULL;
    relcat_put(&rw->cat);
    cache_key_free(&rw->kb);
    cache_free(rw->store);
    free(rw);
    w->rcache = NULL;
}

void rcache_totals_get(rcache_totals *out)
{
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < g_pgs.n_workers; i++) {
        rcache_worker *rw = __atomic_load_n(&g_pgs.workers[i].rcache, __ATOMIC_ACQUIRE);
        if (!rw) continue;
        rc_pub *p = &rw->pub;
#define ADD(f) out->f += atomic_load_explicit(&p->f, memory_order_relaxed)
        ADD(hits);
        ADD(misses);
        ADD(entries);
        ADD(bytes);
        ADD(max_bytes);
        ADD(evictions);
        ADD(invalidations);
        ADD(expired);
        ADD(fills);
        ADD(stored);
        ADD(refused_too_big);
        ADD(refused_lag);
        ADD(refused_no_room);
        ADD(waits);
        ADD(wait_timeouts);
        ADD(bumps);
        ADD(bumps_all);
#undef ADD
        rredis *rr = __atomic_load_n(&rw->redis, __ATOMIC_ACQUIRE);
        if (rr) {
            rredis_stats rs;
            rredis_stats_get(rr, &rs);
            out->redis_workers++;
            out->redis_up += rs.up;
            out->redis_errors += rs.errors;
            out->redis_timeouts += rs.timeouts;
            out->redis_checks += rs.checks;
            out->redis_hits += rs.hits;
        }
    }
}

void rcache_class_totals_get(unsigned cls, rcache_class_totals *out)
{
    memset(out, 0, sizeof(*out));
    if (cls >= PGS_CACHE_CLASSES) return;
    for (int i = 0; i < g_pgs.n_workers; i++) {
        rcache_worker *rw = __atomic_load_n(&g_pgs.workers[i].rcache, __ATOMIC_ACQUIRE);
        if (!rw) continue;
        rc_cls_pub *p = &rw->cls_pub[cls];
#define ADD(f) out->f += atomic_load_explicit(&p->f, memory_order_relaxed)
        ADD(hits);
        ADD(misses);
        ADD(entries);
        ADD(bytes);
        ADD(evictions);
        ADD(invalidations);
        ADD(expired);
        ADD(stored);
        ADD(refused_too_big);
        ADD(refused_no_room);
        ADD(refused_lag);
#undef ADD
    }
}
