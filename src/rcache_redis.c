/* The result cache's Redis tier (rcache_redis.h): the connections, their
 * up/down state, the keys and the value format.  What to ask and when
 * (a hit's check, a miss's lookup, a writer's bump) is rcache.c's.
 *
 * Every request someone waits for is bounded: a connection answers in
 * order, so one timer per connection on its oldest request is enough; when
 * it runs out the connection is dropped (every pending request ends with
 * RREDIS_TIMEOUT), the tier is down, and it connects again with backoff.
 * A Redis that is stopped (SIGSTOP) or unreachable therefore costs each
 * waiting request at most cache.redis_timeout, and nothing while down:
 * nothing is asked then. */
#include "rcache_redis.h"

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "redis.h"
#include "tablever.h"
#include "worker.h"

/* How long connecting (TCP, AUTH, SELECT, PING) may take; nobody waits
 * on it (the tier is down meanwhile), so it can be longer than a
 * request's bound. */
#define CONNECT_MS 1000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define STABLE_MS 10000
/* An idle connection is PINGed this often, so that a Redis that stopped
 * answering is noticed by every worker, not only by one with traffic. */
#define KEEPALIVE_MS 1000
#define CHANNEL "pgscale:inval"
#define ENTRY_MAGIC 0x31455350u /* "PSE1" */

enum link_state { L_DOWN, L_CONNECTING, L_UP };

typedef struct rlink {
    rredis *r;
    bool sub;                 /* the subscriber (worker 0) */
    redisAsyncContext *ac;    /* NULL while down, or once hiredis frees it */
    enum link_state st;
    uv_timer_t timer;         /* backoff, connect deadline, oldest request */
    uint32_t backoff_ms;
    uint64_t up_since_us;     /* L_UP since then */
    uint64_t connect_deadline_us;
    int fail_status;          /* what requests failed by a drop are told */
    rredis_req *head, *tail;  /* requests waited for, in the order sent */
} rlink;

struct rredis {
    pgs_worker *w;
    pgs_redis_url url;
    char where[160];
    rlink main, sub;
    bool has_sub;
    bool dirty;     /* bumped while down: the epoch goes up at the next connect */
    bool was_up;    /* up once: a reconnect bumps the local epoch */
    int logged_up;  /* the state last logged: 1 up, 0 down, -1 none yet */
    bool epoch_sent; /* the connection being made carries that INCR */
    bool stopping;
    _Atomic bool up;
    _Atomic uint64_t errors, timeouts, checks, hits;
    uint8_t *scratch;
    size_t scratch_cap;
    /* finished requests kept for the next ones: a hit's check allocates
     * nothing in the steady state (hiredis's own buffers aside) */
    rredis_req *free_reqs;
    int n_free;
};

#define FREE_REQS_MAX 64

/* Tells this process's own messages from other instances' on the
 * channel (only the others' are bumped again locally). */
static _Atomic uint64_t instance_id;

/* Made once, by whichever worker starts its tier first. */
static uint64_t my_instance(void)
{
    uint64_t id = atomic_load_explicit(&instance_id, memory_order_relaxed);
    if (id) return id;
    uint64_t want = (((uint64_t)getpid() << 40) ^ pgs_wall_us() ^ (uint64_t)pgs_now_us() << 20) | 1;
    if (atomic_compare_exchange_strong(&instance_id, &id, want)) return want;
    return id;
}

static uint32_t timeout_ms(void)
{
    return g_pgs.cfg->cache.redis_timeout_ms;
}

static void count(_Atomic uint64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* ---------- requests ---------- */

static rredis_req *req_new(rredis *r, rredis_cb cb, void *arg)
{
    rredis_req *q = r->free_reqs;
    if (q) {
        r->free_reqs = q->next;
        r->n_free--;
        /* only the header: n, ids and vers are written before use */
        memset(q, 0, offsetof(rredis_req, n));
        q->raw = NULL;
        q->raw_len = 0;
        q->ping = false;
    } else {
        q = pgs_xcalloc(1, sizeof(*q));
    }
    q->r = r;
    q->cb = cb;
    q->arg = arg;
    q->deadline_us = pgs_now_us() + (uint64_t)timeout_ms() * 1000u;
    return q;
}

static void link_arm(rlink *l);
static void on_timer(uv_timer_t *t);

static void req_push(rlink *l, rredis_req *q)
{
    q->next = NULL;
    if (l->tail)
        l->tail->next = q;
    else
        l->head = q;
    l->tail = q;
    if (l->head == q) link_arm(l);
}

static void req_unlink(rlink *l, rredis_req *q)
{
    rredis_req **pp = &l->head, *prev = NULL;
    while (*pp && *pp != q) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp) return;
    *pp = q->next;
    if (l->tail == q) l->tail = prev;
}

static void req_free(rredis_req *q)
{
    rredis *r = q->r;
    if (r->n_free < FREE_REQS_MAX) {
        q->next = r->free_reqs;
        r->free_reqs = q;
        r->n_free++;
    } else {
        free(q);
    }
}

static void req_finish(rredis_req *q, int status)
{
    if (q->cb) q->cb(q, status, q->arg);
    req_free(q);
}

void rredis_cancel(rredis_req *q)
{
    if (q) q->cb = NULL;
}

/* ---------- connections ---------- */

static void link_connect(rlink *l);

static void set_up(rredis *r, bool up, const char *why)
{
    atomic_store_explicit(&r->up, up, memory_order_relaxed);
    if (r->logged_up == (int)up) return;
    r->logged_up = up;
    if (up)
        log_warn("W-%d: cache Redis tier up (%s)%s", r->w->id, r->where,
                 r->was_up ? ": hits and fills resume" : "");
    else
        log_warn("W-%d: cache Redis tier down (%s): %s; serving no hits and storing nothing "
                 "until it is back",
                 r->w->id, r->where, why);
}

static void link_arm(rlink *l)
{
    if (l->r->stopping) return;
    uint64_t now = pgs_now_us(), at;
    switch (l->st) {
    case L_DOWN:
        at = now + (uint64_t)l->backoff_ms * 1000u;
        break;
    case L_CONNECTING:
        at = l->connect_deadline_us;
        break;
    default:
        if (!l->head) {
            if (l->sub) {
                uv_timer_stop(&l->timer);
                return;
            }
            at = now + KEEPALIVE_MS * 1000u;
            break;
        }
        at = l->head->deadline_us;
        break;
    }
    uv_timer_start(&l->timer, on_timer, at > now ? (at - now + 999) / 1000 : 0, 0);
}

/* The connection is gone or given up: l->ac is NULL (hiredis frees it,
 * or it was freed here), pending requests end, reconnect after backoff. */
static void link_down(rlink *l, const char *why)
{
    rredis *r = l->r;
    l->st = L_DOWN;
    if (!l->sub && r->epoch_sent) {
        /* that INCR may not have landed: the next connection sends it */
        r->dirty = true;
        r->epoch_sent = false;
    }
    if (!l->sub) set_up(r, false, why);
    else if (!r->stopping)
        log_debug("W-%d: cache Redis subscriber lost: %s", r->w->id, why);
    /* A connection that stayed up a while starts the backoff again; one
     * that failed soon after connecting (a Redis slower than the
     * timeout) goes on doubling it, so a flapping tier reconnects, and
     * logs, at most every BACKOFF_MAX_MS. */
    bool lasted = l->up_since_us && pgs_now_us() - l->up_since_us >= STABLE_MS * 1000u;
    l->up_since_us = 0;
    if (lasted || !l->backoff_ms)
        l->backoff_ms = BACKOFF_MIN_MS;
    else
        l->backoff_ms = PGS_MIN(l->backoff_ms * 2, BACKOFF_MAX_MS);
    if (!r->stopping) link_arm(l);
}

/* Gives the connection up from our side. */
static void link_fail(rlink *l, const char *why, int status)
{
    redisAsyncContext *ac = l->ac;
    l->ac = NULL;
    l->st = L_DOWN; /* callbacks run below see the tier down */
    if (!l->sub) atomic_store_explicit(&l->r->up, false, memory_order_relaxed);
    l->fail_status = status;
    /* From inside one of ac's reply callbacks hiredis frees it only once
     * that callback returns, and only then calls the pending ones (with no
     * reply): those requests are still its own until then. */
    bool deferred = ac && (ac->c.flags & REDIS_IN_CALLBACK);
    if (ac) {
        /* Pending callbacks run now with no reply: their requests end
         * with status. */
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    if (!deferred) {
        /* requests hiredis no longer holds (none, normally) */
        while (l->head) {
            rredis_req *q = l->head;
            req_unlink(l, q);
            req_finish(q, status);
        }
        l->fail_status = RREDIS_DOWN;
    }
    link_down(l, why);
}

static void keepalive(rredis *r);

static void on_timer(uv_timer_t *t)
{
    rlink *l = t->data;
    rredis *r = l->r;
    if (r->stopping) return;
    switch (l->st) {
    case L_DOWN:
        link_connect(l);
        break;
    case L_CONNECTING:
        count(&r->errors);
        link_fail(l, l->connect_deadline_us ? "connecting took longer than 1 s"
                                            : "could not send the first commands",
                  RREDIS_DOWN);
        break;
    case L_UP:
        if (l->head && l->head->deadline_us <= pgs_now_us()) {
            count(&r->timeouts);
            link_fail(l, "no answer within cache.redis_timeout", RREDIS_TIMEOUT);
        } else if (!l->head && !l->sub) {
            keepalive(r);
        } else {
            link_arm(l);
        }
        break;
    }
}

/* hiredis is freeing ac (a NULL reply, a failed connect, a disconnect):
 * forget it without freeing it again. */
static rlink *ac_link(const redisAsyncContext *ac, bool *current)
{
    rlink *l = ac->data;
    *current = l && l->ac == ac;
    return l;
}

static void on_req_reply(redisAsyncContext *ac, void *reply, void *privdata);

static bool reply_error(const redisReply *rp)
{
    return !rp || rp->type == REDIS_REPLY_ERROR;
}

/* AUTH, SELECT: any error gives the connection up. */
static void on_setup_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)privdata;
    bool cur;
    rlink *l = ac_link(ac, &cur);
    if (!l || !cur || !reply) return;
    redisReply *rp = reply;
    if (rp->type == REDIS_REPLY_ERROR) {
        char why[200];
        snprintf(why, sizeof(why), "AUTH or SELECT (the user, password or db of REDIS_URL), "
                 "or a first command, failed: %.100s", rp->str);
        count(&l->r->errors);
        link_fail(l, why, RREDIS_DOWN);
    }
}

static void on_ready_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)privdata;
    bool cur;
    rlink *l = ac_link(ac, &cur);
    if (!l || !cur || !reply || l->st != L_CONNECTING) return;
    rredis *r = l->r;
    if (reply_error(reply)) {
        count(&r->errors);
        link_fail(l, "the connection's first command failed", RREDIS_DOWN);
        return;
    }
    l->st = L_UP;
    l->up_since_us = pgs_now_us();
    if (l->sub) {
        link_arm(l);
        return;
    }
    if (r->dirty && redisAsyncCommand(ac, NULL, NULL, "INCR pgscale:epoch") != REDIS_OK) {
        /* a write while connecting; its INCR did not go with the first ones */
        count(&r->errors);
        link_fail(l, "could not send a command", RREDIS_DOWN);
        return;
    }
    if (r->was_up || r->epoch_sent) {
        /* While down, other instances' writes were not heard (nor was a
         * restart of Redis that lost the versions): everything kept here
         * is dropped.  This instance's own writes of that time reached
         * the others through the INCR of the epoch sent before the PING
         * that brought us here. */
        tablever_bump_all();
    }
    r->dirty = r->epoch_sent = false;
    set_up(r, true, NULL);
    r->was_up = true;
    link_arm(l);
}

static void on_message(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)privdata;
    bool cur;
    rlink *l = ac_link(ac, &cur);
    if (!l || !cur || !reply) return;
    redisReply *rp = reply;
    if (rp->type != REDIS_REPLY_ARRAY || rp->elements < 3) return;
    redisReply *kind = rp->element[0], *msg = rp->element[2];
    if (kind->type != REDIS_REPLY_STRING) return;
    if (strcmp(kind->str, "subscribe") == 0) {
        on_ready_reply(ac, &(redisReply){.type = REDIS_REPLY_STATUS}, NULL);
        return;
    }
    if (strcmp(kind->str, "message") != 0 || msg->type != REDIS_REPLY_STRING) return;
    /* "<instance> *" or "<instance> <id> <id>...", ids in hex */
    char *end;
    const char *p = msg->str;
    uint64_t from = strtoull(p, &end, 16);
    if (end == p || from == my_instance()) return;
    p = end;
    uint64_t ids[32];
    size_t n = 0;
    while (*p == ' ') {
        p++;
        if (*p == '*') {
            tablever_bump_all();
            return;
        }
        uint64_t id = strtoull(p, &end, 16);
        if (end == p) break;
        p = end;
        ids[n++] = id ? id : 1;
        if (n == PGS_ARRAY_LEN(ids)) {
            tablever_bump(ids, n);
            n = 0;
        }
    }
    if (n) tablever_bump(ids, n);
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    bool cur;
    rlink *l = ac_link(ac, &cur);
    if (!l || !cur) return;
    rredis *r = l->r;
    if (status != REDIS_OK) {
        /* hiredis frees ac after this */
        l->ac = NULL;
        count(&r->errors);
        char why[200];
        snprintf(why, sizeof(why), "could not connect: %.150s", ac->errstr);
        link_down(l, why);
        return;
    }
    const pgs_redis_url *u = &r->url;
    int rc = REDIS_OK;
    if (u->password) {
        if (u->user)
            rc = redisAsyncCommand(ac, on_setup_reply, NULL, "AUTH %s %s", u->user, u->password);
        else
            rc = redisAsyncCommand(ac, on_setup_reply, NULL, "AUTH %s", u->password);
    }
    if (rc == REDIS_OK && u->db && !l->sub)
        rc = redisAsyncCommand(ac, on_setup_reply, NULL, "SELECT %d", u->db);
    if (l->sub) {
        /* pub/sub ignores the db: the channel is the server's */
        if (rc == REDIS_OK) rc = redisAsyncCommand(ac, on_message, NULL, "SUBSCRIBE " CHANNEL);
    } else {
        /* A reconnect bumps the shared epoch, whether or not this worker
         * wrote meanwhile: Redis may have restarted from an older
         * snapshot (RDB/AOF), with versions gone back to values that
         * entries restored beside them were filled under. */
        /* A missing epoch (a Redis emptied by a restart without
         * persistence, FLUSHALL, eviction) starts at a random value, not
         * at 0: entries kept from before carry an epoch it never comes
         * back to, even as the table versions start again from 0. */
        char seed[24];
        snprintf(seed, sizeof(seed), "%llu",
                 (unsigned long long)((my_instance() ^ (pgs_wall_us() << 16)) >> 4));
        if (rc == REDIS_OK)
            rc = redisAsyncCommand(ac, on_setup_reply, NULL, "SET pgscale:epoch %s NX", seed);
        if (rc == REDIS_OK && (r->dirty || r->was_up)) {
            rc = redisAsyncCommand(ac, on_setup_reply, NULL, "INCR pgscale:epoch");
            r->dirty = false;
            r->epoch_sent = true;
        }
        if (rc == REDIS_OK) rc = redisAsyncCommand(ac, on_ready_reply, NULL, "PING");
    }
    if (rc != REDIS_OK) {
        /* Not freed from here: hiredis goes on using ac after its connect
         * callback returns.  The connect deadline, moved to now, gives it
         * up from the timer. */
        l->connect_deadline_us = 0;
        link_arm(l);
    }
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    (void)status;
    bool cur;
    rlink *l = ac_link(cac, &cur);
    if (!l || !cur) return;
    l->ac = NULL; /* hiredis frees it */
    if (l->r->stopping) return;
    count(&l->r->errors);
    link_down(l, cac->errstr[0] ? cac->errstr : "Redis closed the connection");
}

static void link_connect(rlink *l)
{
    rredis *r = l->r;
    const pgs_redis_url *u = &r->url;
    redisAsyncContext *ac = u->unix_socket ? redisAsyncConnectUnix(u->path)
                                           : redisAsyncConnect(u->host, u->port);
    if (!ac) {
        link_down(l, "out of memory");
        return;
    }
    if (ac->err) {
        char why[200];
        snprintf(why, sizeof(why), "could not connect: %.150s", ac->errstr);
        redisAsyncFree(ac);
        count(&r->errors);
        link_down(l, why);
        return;
    }
    ac->data = l;
    if (redisLibuvAttach(ac, &r->w->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        link_down(l, "could not attach to the event loop");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    l->ac = ac;
    l->st = L_CONNECTING;
    l->fail_status = RREDIS_DOWN;
    l->connect_deadline_us = pgs_now_us() + CONNECT_MS * 1000u;
    link_arm(l);
}

static void link_init(rredis *r, rlink *l, bool sub)
{
    l->r = r;
    l->sub = sub;
    l->st = L_DOWN;
    l->fail_status = RREDIS_DOWN;
    uv_timer_init(&r->w->loop, &l->timer);
    l->timer.data = l;
}

rredis *rredis_start(pgs_worker *w, const pgs_config *k)
{
    if (!k->cache.enabled || !k->cache.redis || !k->redis_url) return NULL;
    rredis *r = pgs_xcalloc(1, sizeof(*r));
    char err[200];
    if (redis_url_parse(k->redis_url, &r->url, err, sizeof(err)) < 0) {
        log_warn("cache Redis tier off: REDIS_URL: %s", err); /* checked at start: unlikely */
        free(r);
        return NULL;
    }
    redis_url_where(&r->url, r->where, sizeof(r->where));
    r->w = w;
    r->logged_up = -1;
    (void)my_instance();
    link_init(r, &r->main, false);
    r->has_sub = w->id == 0;
    if (r->has_sub) link_init(r, &r->sub, true);
    link_connect(&r->main);
    if (r->has_sub) link_connect(&r->sub);
    return r;
}

static void stop_link(rlink *l)
{
    if (l->ac) {
        redisAsyncContext *ac = l->ac;
        l->ac = NULL;
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    while (l->head) {
        rredis_req *q = l->head;
        req_unlink(l, q);
        req_finish(q, RREDIS_DOWN);
    }
    l->st = L_DOWN;
    uv_timer_stop(&l->timer);
    uv_close((uv_handle_t *)&l->timer, NULL);
}

void rredis_stop(rredis *r)
{
    if (!r || r->stopping) return;
    r->stopping = true;
    atomic_store_explicit(&r->up, false, memory_order_relaxed);
    stop_link(&r->main);
    if (r->has_sub) stop_link(&r->sub);
}

void rredis_free(rredis *r)
{
    if (!r) return;
    redis_url_free(&r->url);
    free(r->scratch);
    while (r->free_reqs) {
        rredis_req *q = r->free_reqs;
        r->free_reqs = q->next;
        free(q);
    }
    free(r);
}

bool rredis_up(const rredis *r)
{
    return r && r->main.st == L_UP && r->main.ac && !r->stopping;
}

/* ---------- requests ---------- */

static uint64_t parse_u64(const redisReply *e, bool *ok)
{
    if (e->type == REDIS_REPLY_NIL) return 0;
    if (e->type == REDIS_REPLY_INTEGER) return (uint64_t)e->integer;
    if (e->type != REDIS_REPLY_STRING || e->len == 0 || e->len > 20) {
        *ok = false;
        return 0;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < e->len; i++) {
        if (e->str[i] < '0' || e->str[i] > '9') {
            *ok = false;
            return 0;
        }
        v = v * 10 + (uint64_t)(e->str[i] - '0');
    }
    return v;
}

/* One reply for a request waited for.  A NULL reply: hiredis is freeing
 * the connection (a drop, ours or the server's). */
static void on_req_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    rredis_req *q = privdata;
    rredis *r = q->r;
    rlink *l = &r->main;
    bool cur = l->ac == ac && ac->data == l;
    req_unlink(l, q);
    if (!reply) {
        int st = l->fail_status;
        if (cur) {
            /* hiredis is dropping it: down before anyone is told */
            l->ac = NULL;
            if (!r->stopping) {
                count(&r->errors);
                link_down(l, "the connection was lost");
            }
        }
        req_finish(q, st);
        return;
    }
    redisReply *rp = reply;
    bool ok = rp->type == REDIS_REPLY_ARRAY;
    if (q->ping) {
        ok = rp->type == REDIS_REPLY_STATUS;
    } else if (ok && q->n + 1 <= rp->elements) {
        /* MGET: [entry,] versions..., epoch; EXEC: one reply per command */
        size_t off = rp->elements - (q->n + 1);
        for (size_t i = 0; i < rp->elements && ok; i++)
            if (rp->element[i]->type == REDIS_REPLY_ERROR) ok = false;
        for (unsigned i = 0; i <= q->n && ok; i++) q->vers[i] = parse_u64(rp->element[off + i], &ok);
        if (ok && off == 1 && rp->element[0]->type == REDIS_REPLY_STRING) {
            q->raw = (const uint8_t *)rp->element[0]->str;
            q->raw_len = rp->element[0]->len;
        }
    } else {
        ok = false;
    }
    if (!ok) {
        count(&r->errors);
        req_finish(q, RREDIS_DOWN);
        /* a reply that is not what was asked: Redis and we disagree */
        if (cur) link_fail(l, "an unexpected reply (are the pgscale:* keys used by something "
                              "else?)", RREDIS_DOWN);
        return;
    }
    req_finish(q, RREDIS_OK);
    if (cur) link_arm(l);
}

static void key_v(char *buf, size_t len, uint64_t id)
{
    snprintf(buf, len, "pgscale:v:%016llx", (unsigned long long)id);
}

rredis_req *rredis_bump(rredis *r, const uint64_t *ids, size_t n, bool all, rredis_cb cb,
                        void *arg)
{
    if (!r) return NULL;
    if (!rredis_up(r)) {
        r->dirty = true;
        return NULL;
    }
    redisAsyncContext *ac = r->main.ac;
    char key[48];
    /* "<instance> <id>..." : 17 bytes an id */
    char msg[32 + 17 * RELCAT_IDS_MAX];
    size_t m = (size_t)snprintf(msg, sizeof(msg), "%016llx", (unsigned long long)my_instance());
    int rc = redisAsyncCommand(ac, NULL, NULL, "MULTI");
    if (all || n > RELCAT_IDS_MAX) {
        if (rc == REDIS_OK) rc = redisAsyncCommand(ac, NULL, NULL, "INCR pgscale:epoch");
        m += (size_t)snprintf(msg + m, sizeof(msg) - m, " *");
    } else {
        for (size_t i = 0; i < n && rc == REDIS_OK; i++) {
            key_v(key, sizeof(key), ids[i]);
            rc = redisAsyncCommand(ac, NULL, NULL, "INCR %s", key);
            m += (size_t)snprintf(msg + m, sizeof(msg) - m, " %016llx", (unsigned long long)ids[i]);
        }
    }
    if (rc == REDIS_OK)
        rc = redisAsyncCommand(ac, NULL, NULL, "PUBLISH " CHANNEL " %b", msg, m);
    rredis_req *q = req_new(r, cb, arg);
    q->n = 0; /* EXEC's last reply (PUBLISH's count) lands in vers[0] */
    if (rc == REDIS_OK) rc = redisAsyncCommand(ac, on_req_reply, q, "EXEC");
    if (rc != REDIS_OK) {
        req_free(q);
        r->dirty = true;
        count(&r->errors);
        link_fail(&r->main, "could not send a command", RREDIS_DOWN);
        return NULL;
    }
    req_push(&r->main, q);
    return cb ? q : NULL;
}

/* MGET [entry key] v:ids... epoch, as argv (no formatting of the ids'
 * keys through the variadic API: their number varies). */
static rredis_req *send_mget(rredis *r, const char *entry_key, const uint64_t *ids, size_t n,
                             rredis_cb cb, void *arg)
{
    if (!rredis_up(r) || n > RELCAT_IDS_MAX) return NULL;
    const char *argv[RELCAT_IDS_MAX + 3];
    size_t lens[RELCAT_IDS_MAX + 3];
    char keys[RELCAT_IDS_MAX][32];
    int c = 0;
    argv[c] = "MGET";
    lens[c++] = 4;
    if (entry_key) {
        argv[c] = entry_key;
        lens[c++] = strlen(entry_key);
    }
    for (size_t i = 0; i < n; i++) {
        key_v(keys[i], sizeof(keys[i]), ids[i]);
        argv[c] = keys[i];
        lens[c++] = strlen(keys[i]);
    }
    argv[c] = "pgscale:epoch";
    lens[c++] = strlen("pgscale:epoch");
    rredis_req *q = req_new(r, cb, arg);
    q->n = (unsigned)n;
    if (n) memcpy(q->ids, ids, n * sizeof(uint64_t));
    if (redisAsyncCommandArgv(r->main.ac, on_req_reply, q, c, argv, lens) != REDIS_OK) {
        req_free(q);
        count(&r->errors);
        link_fail(&r->main, "could not send a command", RREDIS_DOWN);
        return NULL;
    }
    req_push(&r->main, q);
    return q;
}

/* A PING waited for by nobody, bounded like any request. */
static void keepalive(rredis *r)
{
    rredis_req *q = req_new(r, NULL, NULL);
    q->ping = true;
    if (redisAsyncCommand(r->main.ac, on_req_reply, q, "PING") != REDIS_OK) {
        req_free(q);
        count(&r->errors);
        link_fail(&r->main, "could not send a command", RREDIS_DOWN);
        return;
    }
    req_push(&r->main, q);
}

rredis_req *rredis_check(rredis *r, const uint64_t *ids, size_t n, rredis_cb cb, void *arg)
{
    return send_mget(r, NULL, ids, n, cb, arg);
}

static void key_e(char *buf, size_t len, uint64_t lo, uint64_t hi)
{
    snprintf(buf, len, "pgscale:e:%016llx%016llx", (unsigned long long)hi,
             (unsigned long long)lo);
}

rredis_req *rredis_lookup(rredis *r, const pgs_cache_key *key, const uint64_t *ids, size_t n,
                          rredis_cb cb, void *arg)
{
    char ek[48];
    key_e(ek, sizeof(ek), key->lo, key->hi);
    return send_mget(r, ek, ids, n, cb, arg);
}

/* The value: magic, n, expiry (wall clock, ms), ids[n], vers[n + 1],
 * material length, material, answer; integers little-endian. */
static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

size_t rredis_entry_size(size_t n, size_t material_len, size_t answer_len)
{
    return 24 + 8 * (2 * n + 1) + 8 + material_len + answer_len;
}

void rredis_entry_encode(uint8_t *p, uint64_t expires_ms, const uint8_t *material,
                         size_t material_len, const uint64_t *ids, const uint64_t *vers, size_t n,
                         const uint8_t *answer, size_t answer_len)
{
    put64(p, ENTRY_MAGIC);
    put64(p + 8, n);
    put64(p + 16, expires_ms);
    p += 24;
    for (size_t i = 0; i < n; i++, p += 8) put64(p, ids[i]);
    for (size_t i = 0; i <= n; i++, p += 8) put64(p, vers[i]);
    put64(p, material_len);
    p += 8;
    if (material_len) memcpy(p, material, material_len);
    p += material_len;
    if (answer_len) memcpy(p, answer, answer_len);
}

const uint8_t *rredis_entry_answer(const rredis_req *q, const uint8_t *material,
                                   size_t material_len, size_t *answer_len, uint64_t *ttl_ms)
{
    const uint8_t *p = q->raw;
    size_t len = q->raw_len, n = q->n;
    size_t head = 24 + 8 * (2 * n + 1) + 8;
    if (!p || len < head) return NULL;
    if (get64(p) != ENTRY_MAGIC || get64(p + 8) != n) return NULL;
    /* what is left of the TTL the filler gave it (wall clocks: instances'
     * clocks are assumed close; a skew only moves the expiry) */
    uint64_t expires = get64(p + 16), now = pgs_wall_us() / 1000u;
    if (expires <= now) return NULL;
    *ttl_ms = expires - now;
    p += 24;
    for (size_t i = 0; i < n; i++, p += 8)
        if (get64(p) != q->ids[i]) return NULL;
    for (size_t i = 0; i <= n; i++, p += 8)
        if (get64(p) != q->vers[i]) return NULL;
    uint64_t mlen = get64(p);
    p += 8;
    if (mlen != material_len || mlen > len - head) return NULL;
    /* the hash found it; the material decides, as in the local store */
    if (mlen && memcmp(p, material, mlen) != 0) return NULL;
    p += mlen;
    *answer_len = len - head - mlen;
    return p;
}

void rredis_store(rredis *r, uint64_t key_lo, uint64_t key_hi, const uint8_t *material,
                  size_t material_len, const uint64_t *ids, const uint64_t *vers, size_t n,
                  const uint8_t *answer, size_t answer_len, uint64_t ttl_ms)
{
    if (!rredis_up(r) || ttl_ms == 0) return;
    size_t need = rredis_entry_size(n, material_len, answer_len);
    if (need > r->scratch_cap) {
        r->scratch = pgs_xrealloc(r->scratch, need);
        r->scratch_cap = need;
    }
    rredis_entry_encode(r->scratch, pgs_wall_us() / 1000u + ttl_ms, material, material_len, ids,
                        vers, n, answer, answer_len);
    char ek[48], px[24];
    key_e(ek, sizeof(ek), key_lo, key_hi);
    snprintf(px, sizeof(px), "%llu", (unsigned long long)ttl_ms);
    const char *argv[5] = {"SET", ek, (const char *)r->scratch, "PX", px};
    size_t lens[5] = {3, strlen(ek), need, 2, strlen(px)};
    if (redisAsyncCommandArgv(r->main.ac, NULL, NULL, 5, argv, lens) != REDIS_OK) {
        count(&r->errors);
        link_fail(&r->main, "could not send a command", RREDIS_DOWN);
    }
    /* A SET's reply is not waited for; a Redis that stops answering
     * shows on the next request waited for. */
    if (r->scratch_cap > (4u << 20)) {
        free(r->scratch);
        r->scratch = NULL;
        r->scratch_cap = 0;
    }
}

/* ---------- counters ---------- */

void rredis_count_check(rredis *r)
{
    count(&r->checks);
}

void rredis_count_hit(rredis *r)
{
    count(&r->hits);
}

void rredis_stats_get(const rredis *r, rredis_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!r) return;
    rredis *m = (rredis *)r;
    out->up = atomic_load_explicit(&m->up, memory_order_relaxed);
    out->errors = atomic_load_explicit(&m->errors, memory_order_relaxed);
    out->timeouts = atomic_load_explicit(&m->timeouts, memory_order_relaxed);
    out->checks = atomic_load_explicit(&m->checks, memory_order_relaxed);
    out->hits = atomic_load_explicit(&m->hits, memory_order_relaxed);
}
