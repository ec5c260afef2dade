/* pgscale on the fake network, one thread, fake clock (harness.h). */
#include "harness.h"
#include "topology.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "io.h"
#include "pool.h"
#include "server.h"
#include "worker.h"

static pgs_config cfg;
static int login_mode;
static uint64_t now_us;

pgs_config *harness_config(void)
{
    return &cfg;
}

pgs_worker *harness_worker(int i)
{
    return i < g_pgs.n_workers ? &g_pgs.workers[i] : NULL;
}

uint64_t harness_now_us(void)
{
    return now_us;
}

void harness_start(const harness_opts *o)
{
    config_defaults(&cfg);
    cfg.workers = o->workers > 0 ? o->workers : 1;
    cfg.pool_size = o->pool_size;
    cfg.max_overflow = o->max_overflow;
    cfg.pool_mode = o->session_mode ? PGS_POOL_SESSION : PGS_POOL_TRANSACTION;
    if (o->pool_timeout_ms) cfg.pool_timeout_ms = o->pool_timeout_ms;
    cfg.overflow_idle_timeout_ms = o->overflow_idle_timeout_ms;
    cfg.server_tls.sslmode = PGS_SSLMODE_DISABLE;
    /* the scripted servers answer only what each test sends (the reset
     * between clients is tested against PostgreSQL) */
    cfg.server_reset_settings = PGS_RESET_OFF;
    /* the pool and relay are under test, not client authentication */
    cfg.auth.type = PGS_AUTH_TRUST;
    cfg.auth.type_set = true;
    login_mode = o->login_mode;
    fakenet_install();
    now_us = 1000000000000ull;
    pgs_set_fake_now_us(now_us);
    g_pgs.pools = NULL;
    atomic_store(&g_pgs.total_clients, 0);
    /* the fake network does not look at the nodes' addresses */
    cfg.primary.host = pgs_xstrdup("127.0.0.1");
    if (o->replicas > 0) {
        cfg.replicas = pgs_xcalloc((size_t)o->replicas, sizeof(*cfg.replicas));
        for (int i = 0; i < o->replicas; i++) cfg.replicas[i].host = pgs_xstrdup("127.0.0.1");
        cfg.n_replicas = o->replicas;
    }
    char err[256];
    if (topology_init(&cfg, err, sizeof(err)) < 0) abort();
    if (worker_init_all(&cfg, false) < 0) abort();
}

static pgs_server *find_server(fn_conn *c)
{
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker *w = &g_pgs.workers[i];
        for (pgs_list *it = w->servers.next; it != &w->servers; it = it->next) {
            pgs_server *sv = list_entry(it, pgs_server, all_node);
            if (fakenet_conn_of(&sv->s.tcp) == c) return sv;
        }
    }
    return NULL;
}

pgs_server *harness_server_of(fn_conn *c)
{
    return c && c->role == FN_SERVER ? find_server(c) : NULL;
}

pgs_client *harness_client_of(fn_conn *c)
{
    for (int i = 0; c && i < g_pgs.n_workers; i++) {
        pgs_worker *w = &g_pgs.workers[i];
        for (pgs_list *it = w->clients.next; it != &w->clients; it = it->next) {
            pgs_client *cl = list_entry(it, pgs_client, node);
            if (fakenet_conn_of(&cl->s.tcp) == c) return cl;
        }
    }
    return NULL;
}

/* New connections pgscale made: servers get a fakepg; cancel requests
 * connect at once (their peer only listens). */
static bool classify(void)
{
    size_t n;
    fn_conn **all = fakenet_conns(&n);
    bool moved = false;
    for (size_t i = 0; i < n; i++) {
        fn_conn *c = all[i];
        if (c->role == FN_UNKNOWN) {
            if (find_server(c)) {
                fakepg_attach(c, login_mode);
            } else {
                c->role = FN_CANCEL;
                fakenet_connect_done(c, 0);
                moved = true;
            }
        }
        if (c->role != FN_CLIENT && c->out_len) fakenet_take(c, c->out_len);
    }
    return moved;
}

static bool inbox_busy(pgs_worker *w)
{
    pthread_mutex_lock(&w->inbox_lock);
    bool busy = !list_empty(&w->inbox);
    pthread_mutex_unlock(&w->inbox_lock);
    return busy;
}

void harness_pump(void)
{
    for (int guard = 0; guard < 1000; guard++) {
        bool moved = fakenet_step();
        moved |= classify();
        for (int i = 0; i < g_pgs.n_workers; i++) {
            pgs_worker *w = &g_pgs.workers[i];
            if (!inbox_busy(w)) continue;
            moved = true;
            uv_run(&w->loop, UV_RUN_NOWAIT);
        }
        if (!moved) return;
    }
}

void harness_advance_ms(uint64_t ms)
{
    now_us += ms * 1000u;
    pgs_set_fake_now_us(now_us);
    for (int i = 0; i < g_pgs.n_workers; i++) worker_janitor(&g_pgs.workers[i], now_us);
    harness_pump();
}

static bool everything_closed(void)
{
    if (fakenet_closing_count()) return false;
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker *w = &g_pgs.workers[i];
        if (!list_empty(&w->clients) || !list_empty(&w->servers) || inbox_busy(w)) return false;
    }
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next)
        if (!list_empty(&sh->handoff)) return false;
    return true;
}

void harness_stop(void)
{
    for (int round = 0; round < 100 && !everything_closed(); round++) {
        for (int i = 0; i < g_pgs.n_workers; i++) {
            client_close_all(&g_pgs.workers[i]);
            server_close_all(&g_pgs.workers[i]);
        }
        harness_pump();
    }
    if (!everything_closed()) {
        fprintf(stderr, "harness: connections left after closing everything\n");
        abort();
    }
    worker_free_all();
    size_t n;
    fn_conn **all = fakenet_conns(&n);
    for (size_t i = 0; i < n; i++) fakepg_free(all[i]);
    fakenet_reset();
    fakenet_uninstall();
    topology_free();
    config_free(&cfg);
    pgs_set_fake_now_us(0);
}

fn_conn *harness_client(int wi, const char *user, const char *db)
{
    fn_conn *c = fakenet_client_connect(harness_worker(wi));
    uint8_t buf[512];
    size_t n = fakepg_startup(buf, sizeof(buf), user, db);
    fakenet_send(c, buf, n);
    harness_pump();
    return c;
}

void harness_client_msg(fn_conn *c, char type, const void *body, size_t len)
{
    uint8_t hdr[5];
    hdr[0] = (uint8_t)type;
    uint32_t l = (uint32_t)len + 4;
    hdr[1] = (uint8_t)(l >> 24);
    hdr[2] = (uint8_t)(l >> 16);
    hdr[3] = (uint8_t)(l >> 8);
    hdr[4] = (uint8_t)l;
    fakenet_send(c, hdr, 5);
    if (len) fakenet_send(c, body, len);
}

void harness_client_query(fn_conn *c, const char *sql)
{
    harness_client_msg(c, 'Q', sql, strlen(sql) + 1);
}

fn_conn *harness_pending_connect(void)
{
    size_t n;
    fn_conn **all = fakenet_conns(&n);
    for (size_t i = 0; i < n; i++)
        if (all[i]->role == FN_SERVER && all[i]->connecting) return all[i];
    return NULL;
}

fn_conn *harness_server_conn(int k)
{
    size_t n;
    fn_conn **all = fakenet_conns(&n);
    for (size_t i = 0; i < n; i++)
        if (all[i]->role == FN_SERVER && k-- == 0) return all[i];
    return NULL;
}

pgs_pool *harness_pool(int wi)
{
    pgs_worker *w = harness_worker(wi);
    return w ? w->pools : NULL;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Walks the messages pgscale sent to a client. */
static int scan(fn_conn *c, char type, const char *sqlstate)
{
    int k = 0;
    size_t pos = 0;
    while (pos + 5 <= c->out_len) {
        uint32_t len = be32(c->out + pos + 1);
        if (len < 4 || pos + 1 + len > c->out_len) break;
        const uint8_t *body = c->out + pos + 5;
        size_t blen = len - 4;
        if (c->out[pos] == (uint8_t)type) {
            if (!sqlstate) {
                k++;
            } else {
                for (size_t i = 0; i + 7 <= blen; i++)
                    if (body[i] == 'C' && memcmp(body + i + 1, sqlstate, 5) == 0 &&
                        body[i + 6] == 0 && (i == 0 || body[i - 1] == 0))
                        k++;
            }
        }
        pos += 1 + len;
    }
    return k;
}

bool harness_got_error(fn_conn *c, const char *sqlstate)
{
    return scan(c, 'E', sqlstate) > 0;
}

int harness_count_msgs(fn_conn *c, char type)
{
    return scan(c, type, NULL);
}

void harness_clear(fn_conn *c)
{
    fakenet_take(c, c->out_len);
}

/* ---------------------------------------------------------------------
 * Invariants
 * ------------------------------------------------------------------- */

static char why[256];

#define FAIL(...)                                                              \
    do {                                                                       \
        snprintf(why, sizeof(why), __VA_ARGS__);                               \
        return why;                                                            \
    } while (0)

typedef struct transit_ctx {
    pgs_pool_shared *sh;
    int n;
} transit_ctx;

/* A server handed to another worker is between a closing handle and the
 * hand-over list for a moment; it still holds its budget. */
static void count_transit(uv_handle_t *h, void *arg)
{
    transit_ctx *t = arg;
    pgs_sock *s = (pgs_sock *)h;   /* the handle is a pgs_sock's first member */
    if (h->data == (void *)h) return; /* a cancel request's handle owns itself */
    if (s->kind != PGS_SOCK_SERVER) return;
    pgs_server *sv = h->data;
    if (sv->transfer_to >= 0 && sv->pool->sh == t->sh) t->n++;
}

static uint64_t rbuf_bound(const pgs_sock *s)
{
    const fn_conn *c = fakenet_conn_of(&s->tcp);
    uint64_t d = c ? c->delivered : 0;
    return PGS_MAX((uint64_t)PGS_BUF_SIZE, 2 * d);
}

static const char *check_socket(const pgs_sock *s, const char *what, uint32_t id)
{
    if (s->rbuf.cap > rbuf_bound(s))
        FAIL("%s-%u: read buffer of %u bytes for %llu bytes read", what, id, s->rbuf.cap,
             (unsigned long long)rbuf_bound(s));
    if (s->rbuf.len > s->rbuf.cap || s->rbuf.pos > s->rbuf.len)
        FAIL("%s-%u: read buffer positions out of range", what, id);
    if (io_pending_bytes(s) > HARNESS_OUT_BOUND)
        FAIL("%s-%u: %zu bytes of output pending", what, id, io_pending_bytes(s));
    return NULL;
}

const char *harness_check(uint64_t client_bytes)
{
    /* one server, one client */
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker *w = &g_pgs.workers[i];
        for (pgs_list *it = w->servers.next; it != &w->servers; it = it->next) {
            pgs_server *sv = list_entry(it, pgs_server, all_node);
            if (sv->s.closing) FAIL("S-%u: closing but still listed", sv->id);
            if (sv->w != w) FAIL("S-%u: on worker %d's list but owned by another", sv->id, i);
            if (sv->client && sv->client->server != sv)
                FAIL("S-%u: linked to C-%u, which is linked to another", sv->id,
                     sv->client->id);
            const char *e = check_socket(&sv->s, "S", sv->id);
            if (e) return e;
            if (sv->exq.cap > (1u << 20) || sv->exq.count > client_bytes / 5 + 16)
                FAIL("S-%u: %u expected responses for %llu client bytes", sv->id,
                     sv->exq.count, (unsigned long long)client_bytes);
        }
        for (pgs_list *it = w->clients.next; it != &w->clients; it = it->next) {
            pgs_client *c = list_entry(it, pgs_client, node);
            if (c->s.closing) FAIL("C-%u: closing but still listed", c->id);
            const char *e = check_socket(&c->s, "C", c->id);
            if (e) return e;
            pgs_server *sv = c->server;
            if (!sv) continue;
            if (sv->client != c) FAIL("C-%u: linked to S-%u, which is not linked back", c->id, sv->id);
            if (sv->s.closing) FAIL("C-%u: linked to closing S-%u", c->id, sv->id);
            if (sv->w != w) FAIL("C-%u: linked to S-%u of another worker", c->id, sv->id);
            for (pgs_list *jt = it->next; jt != &w->clients; jt = jt->next) {
                pgs_client *d = list_entry(jt, pgs_client, node);
                if (d->server == sv) FAIL("S-%u: used by C-%u and C-%u", sv->id, c->id, d->id);
            }
        }
    }
    /* pools: lists, counters, budget, idleness */
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next) {
        int open = 0, waiting = 0, clients = 0;
        for (int i = 0; i < g_pgs.n_workers; i++) {
            pgs_worker *w = &g_pgs.workers[i];
            pgs_pool *p = sh->locals[i];
            for (pgs_list *it = w->servers.next; it != &w->servers; it = it->next)
                if (list_entry(it, pgs_server, all_node)->pool->sh == sh) open++;
            int n_cl = 0;
            for (pgs_list *it = w->clients.next; it != &w->clients; it = it->next) {
                pgs_client *c = list_entry(it, pgs_client, node);
                if (c->pool && c->pool->sh == sh) {
                    n_cl++;
                    if (c->pool != p) FAIL("C-%u: in a pool part of another worker", c->id);
                }
            }
            clients += n_cl;
            if (!p) {
                if (n_cl) FAIL("worker %d: clients of a pool without a part", i);
                continue;
            }
            if (p->n_active_clients != n_cl)
                FAIL("worker %d: n_active_clients %d, clients %d", i, p->n_active_clients, n_cl);
            int n_idle = 0, n_used = 0, n_login = 0, n_wait = 0;
            for (pgs_list *it = p->idle.next; it != &p->idle; it = it->next) {
                pgs_server *sv = list_entry(it, pgs_server, node);
                n_idle++;
                if (sv->pool != p) FAIL("S-%u: on the idle list of another pool", sv->id);
                if (sv->client) FAIL("S-%u: idle but linked to C-%u", sv->id, sv->client->id);
                if (atomic_load(&sv->state) != SV_IDLE) FAIL("S-%u: on the idle list in state %d", sv->id, atomic_load(&sv->state));
                fn_conn *fc = fakenet_conn_of(&sv->s.tcp);
                if (!fc || fc->role != FN_SERVER) FAIL("S-%u: idle without a connection", sv->id);
                const fakepg *pg = fc->user;
                if (!fakepg_idle(pg))
                    FAIL("S-%u: idle in the pool but not idle on the server (last '%c' status '%c', "
                         "%d ReadyForQuery owed%s, %llu bytes written after it%s)",
                         sv->id, pg->last_type ? pg->last_type : '?',
                         pg->last_status ? pg->last_status : '?', pg->owed,
                         pg->unsynced ? ", unsynced" : "",
                         (unsigned long long)(fc->submitted - pg->submitted_at_ready),
                         pg->wrote_after_ready ? ", a request among them" : "");
            }
            for (pgs_list *it = p->used.next; it != &p->used; it = it->next) {
                pgs_server *sv = list_entry(it, pgs_server, node);
                int st = atomic_load(&sv->state);
                if (sv->pool != p) FAIL("S-%u: on the used list of another pool", sv->id);
                if (st == SV_CONNECTING || st == SV_LOGIN)
                    n_login++;
                else if (st == SV_IDLE || st == SV_CLOSING)
                    FAIL("S-%u: on the used list in state %d", sv->id, st);
                else
                    n_used++;
            }
            for (pgs_list *it = p->waiting.next; it != &p->waiting; it = it->next) n_wait++;
            if (n_idle != p->n_idle || n_used != p->n_used || n_login != p->n_login ||
                n_wait != p->n_waiting || p->n_connecting != p->n_login)
                FAIL("worker %d pool: counters idle %d/%d used %d/%d login %d/%d waiting %d/%d "
                     "connecting %d",
                     i, p->n_idle, n_idle, p->n_used, n_used, p->n_login, n_login, p->n_waiting,
                     n_wait, p->n_connecting);
            waiting += n_wait;
        }
        pthread_mutex_lock(&sh->lock);
        for (pgs_list *it = sh->handoff.next; it != &sh->handoff; it = it->next) open++;
        pthread_mutex_unlock(&sh->lock);
        transit_ctx t = {sh, 0};
        fakenet_each_closing(count_transit, &t);
        open += t.n;
        if (atomic_load(&sh->open) != open)
            FAIL("pool: open is %d, %d server connections exist", atomic_load(&sh->open), open);
        if (open > atomic_load(&sh->max_total))
            FAIL("pool: %d server connections over a budget of %d", open, atomic_load(&sh->max_total));
        if (atomic_load(&sh->waiting) != waiting)
            FAIL("pool: waiting is %d, %d clients wait", atomic_load(&sh->waiting), waiting);
        if (atomic_load(&sh->n_clients) != clients)
            FAIL("pool: n_clients is %d, %d clients", atomic_load(&sh->n_clients), clients);
    }
    return NULL;
}
