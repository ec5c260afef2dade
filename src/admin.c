/* The admin console: clients of the virtual database "pgscale" send simple
 * queries (SHOW POOLS, SHOW CLIENTS, SHOW SERVERS, SHOW STATS, SHOW CONFIG)
 * and get ordinary row sets built from every worker's lists and counters.
 * Lists are walked under each worker's list lock; counters are read with
 * relaxed atomics, so figures are a moment's snapshot. */
#include "admin.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "client.h"
#include "io.h"
#include "proto.h"
#include "server.h"
#include "worker.h"

/* A growing reply buffer: admin output is off the data path, so it may
 * allocate. */
typedef struct reply {
    uint8_t *data;
    size_t len, cap;
} reply;

static proto_out *reply_out(reply *r, proto_out *o, size_t need)
{
    if (r->cap - r->len < need) {
        while (r->cap - r->len < need) r->cap = r->cap ? r->cap * 2 : 8192;
        r->data = pgs_xrealloc(r->data, r->cap);
    }
    proto_out_init(o, r->data + r->len, r->cap - r->len);
    return o;
}

static void reply_commit(reply *r, proto_out *o)
{
    r->len += o->len;
}

static void row(reply *r, int n, const char *const *vals)
{
    size_t need = 16;
    for (int i = 0; i < n; i++) need += 4 + (vals[i] ? strlen(vals[i]) : 0);
    proto_out o;
    reply_out(r, &o, need);
    proto_data_row_text(&o, n, vals);
    reply_commit(r, &o);
}

static void header(reply *r, int n, const char *const *names)
{
    proto_out o;
    reply_out(r, &o, 64 + (size_t)n * 64);
    proto_row_description_text(&o, n, names);
    reply_commit(r, &o);
}

static void complete(reply *r, const char *tag)
{
    proto_out o;
    reply_out(r, &o, 64);
    proto_command_complete(&o, tag);
    reply_commit(r, &o);
}

static void error(reply *r, const char *sqlstate, const char *msg, const char *hint)
{
    proto_out o;
    reply_out(r, &o, 128 + strlen(msg) + (hint ? strlen(hint) : 0));
    proto_error(&o, "ERROR", sqlstate, msg, hint);
    reply_commit(r, &o);
}

static void fmt_time(char *out, size_t n, uint64_t mono_us)
{
    /* monotonic -> wall clock */
    uint64_t wall = pgs_wall_us() - (pgs_now_us() - mono_us);
    time_t t = (time_t)(wall / 1000000u);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%d %H:%M:%S", &tm);
}

#define U64(buf, v) (snprintf(buf, sizeof(buf), "%llu", (unsigned long long)(v)), buf)
#define I32(buf, v) (snprintf(buf, sizeof(buf), "%d", (int)(v)), buf)

static int ld(const int *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static uint64_t rd(_Atomic uint64_t *p)
{
    return atomic_load_explicit(p, memory_order_relaxed);
}

static void show_pools(reply *r)
{
    static const char *const cols[] = {"database", "user", "cl_active", "cl_waiting",
                                       "sv_active", "sv_idle", "sv_login", "sv_total",
                                       "sv_overflow", "max_total", "maxwait_ms", "pool_mode"};
    header(r, 12, cols);
    int rows = 0;
    uint64_t now = pgs_now_us();
    pthread_mutex_lock(&g_pgs.pools_lock);
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next) {
        int cl_active = 0, cl_waiting = 0, sv_active = 0, sv_idle = 0, sv_login = 0;
        uint64_t maxwait = 0;
        for (int i = 0; i < g_pgs.n_workers; i++) {
            pgs_worker *w = &g_pgs.workers[i];
            pgs_pool *p = __atomic_load_n(&sh->locals[i], __ATOMIC_ACQUIRE);
            if (!p) continue;
            cl_waiting += ld(&p->n_waiting);
            cl_active += ld(&p->n_active_clients) - ld(&p->n_waiting);
            sv_idle += ld(&p->n_idle);
            sv_login += ld(&p->n_login);
            sv_active += ld(&p->n_used);
            /* the oldest waiter's wait, read under the worker's lock */
            pthread_mutex_lock(&w->lock);
            for (pgs_list *it = w->clients.next; it != &w->clients; it = it->next) {
                pgs_client *c = list_entry(it, pgs_client, node);
                if (c->pool == p &&
                    atomic_load_explicit(&c->state, memory_order_relaxed) == CL_WAITING) {
                    uint64_t ws = __atomic_load_n(&c->wait_start_us, __ATOMIC_RELAXED);
                    if (ws && now > ws && now - ws > maxwait) maxwait = now - ws;
                }
            }
            pthread_mutex_unlock(&w->lock);
        }
        int total = atomic_load(&sh->open);
        char b[8][24];
        const char *v[12] = {sh->database,
                             sh->user,
                             I32(b[0], cl_active < 0 ? 0 : cl_active),
                             I32(b[1], cl_waiting),
                             I32(b[2], sv_active),
                             I32(b[3], sv_idle),
                             I32(b[4], sv_login),
                             I32(b[5], total),
                             I32(b[6], total > sh->pool_size ? total - sh->pool_size : 0),
                             I32(b[7], sh->max_total),
                             NULL,
                             g_pgs.cfg->pool_mode == PGS_POOL_SESSION ? "session"
                                                                      : "transaction"};
        char mw[24];
        v[10] = U64(mw, maxwait / 1000u);
        row(r, 12, v);
        rows++;
    }
    pthread_mutex_unlock(&g_pgs.pools_lock);
    char tag[32];
    snprintf(tag, sizeof(tag), "SHOW");
    PGS_UNUSED(rows);
    complete(r, tag);
}

static void show_clients(reply *r)
{
    static const char *const cols[] = {"id",    "worker",       "database", "user",
                                       "application_name", "addr", "port", "state",
                                       "connect_time", "wait_ms", "server_id"};
    header(r, 11, cols);
    uint64_t now = pgs_now_us();
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker *w = &g_pgs.workers[i];
        pthread_mutex_lock(&w->lock);
        for (pgs_list *it = w->clients.next; it != &w->clients; it = it->next) {
            pgs_client *c = list_entry(it, pgs_client, node);
            int st = atomic_load_explicit(&c->state, memory_order_relaxed);
            if (st == CL_STARTUP) continue; /* names not known yet */
            char b[6][32];
            uint64_t ws = __atomic_load_n(&c->wait_start_us, __ATOMIC_RELAXED);
            uint32_t sid = atomic_load_explicit(&c->server_id, memory_order_relaxed);
            fmt_time(b[3], sizeof(b[3]), c->connect_us);
            const char *v[11] = {U64(b[0], c->id),
                                 I32(b[1], w->id),
                                 c->database,
                                 c->user,
                                 c->app_name,
                                 c->addr,
                                 I32(b[2], c->port),
                                 client_state_name(st),
                                 b[3],
                                 U64(b[4], st == CL_WAITING && ws ? (now - ws) / 1000u : 0),
                                 sid ? U64(b[5], sid) : NULL};
            row(r, 11, v);
        }
        pthread_mutex_unlock(&w->lock);
    }
    complete(r, "SHOW");
}

static void show_servers(reply *r)
{
    static const char *const cols[] = {"id",          "worker",       "database",
                                       "user",        "addr",         "port",
                                       "state",       "connect_time", "backend_pid",
                                       "client_id",   "prepared"};
    header(r, 11, cols);
    const pgs_url *u = &g_pgs.cfg->primary;
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker *w = &g_pgs.workers[i];
        pthread_mutex_lock(&w->lock);
        for (pgs_list *it = w->servers.next; it != &w->servers; it = it->next) {
            pgs_server *sv = list_entry(it, pgs_server, all_node);
            int st = atomic_load_explicit(&sv->state, memory_order_relaxed);
            char b[7][32];
            uint32_t cid = atomic_load_explicit(&sv->client_id, memory_order_relaxed);
            fmt_time(b[2], sizeof(b[2]), sv->connect_us);
            const char *v[11] = {U64(b[0], sv->id),
                                 I32(b[1], w->id),
                                 sv->pool->sh->database,
                                 sv->pool->sh->user,
                                 u->host ? u->host : "localhost",
                                 I32(b[3], u->port ? u->port : 5432),
                                 server_state_name(st),
                                 b[2],
                                 sv->backend_pid ? U64(b[4], sv->backend_pid) : NULL,
                                 cid ? U64(b[5], cid) : NULL,
                                 U64(b[6], atomic_load_explicit(&sv->n_prepared,
                                                                memory_order_relaxed))};
            row(r, 11, v);
        }
        pthread_mutex_unlock(&w->lock);
    }
    complete(r, "SHOW");
}

static void show_stats(reply *r)
{
    static const char *const cols[] = {"database",  "user",        "xact_count",
                                       "query_count", "bytes_received", "bytes_sent",
                                       "avg_xact_us", "avg_query_us", "avg_wait_us",
                                       "total_wait_us"};
    header(r, 10, cols);
    pthread_mutex_lock(&g_pgs.pools_lock);
    for (pgs_pool_shared *sh = g_pgs.pools; sh; sh = sh->next) {
        uint64_t xc = 0, qc = 0, bi = 0, bo = 0, xu = 0, qu = 0, wu = 0, wc = 0;
        for (int i = 0; i < g_pgs.n_workers; i++) {
            pgs_pool *p = __atomic_load_n(&sh->locals[i], __ATOMIC_ACQUIRE);
            if (!p) continue;
            xc += rd(&p->stats.xact_count);
            qc += rd(&p->stats.query_count);
            bi += rd(&p->stats.bytes_in);
            bo += rd(&p->stats.bytes_out);
            xu += rd(&p->stats.xact_us);
            qu += rd(&p->stats.query_us);
            wu += rd(&p->stats.wait_us);
            wc += rd(&p->stats.wait_count);
        }
        char b[8][24];
        const char *v[10] = {sh->database,         sh->user,
                             U64(b[0], xc),        U64(b[1], qc),
                             U64(b[2], bi),        U64(b[3], bo),
                             U64(b[4], xc ? xu / xc : 0), U64(b[5], qc ? qu / qc : 0),
                             U64(b[6], wc ? wu / wc : 0), U64(b[7], wu)};
        row(r, 10, v);
    }
    pthread_mutex_unlock(&g_pgs.pools_lock);
    complete(r, "SHOW");
}

typedef struct cfg_ctx {
    reply *r;
} cfg_ctx;

static void cfg_emit(void *ctx, const char *name, const char *value, const char *def)
{
    cfg_ctx *cc = ctx;
    const char *v[3] = {name, value, def};
    row(cc->r, 3, v);
}

static void show_config(reply *r)
{
    static const char *const cols[] = {"key", "value", "default"};
    header(r, 3, cols);
    cfg_ctx cc = {r};
    config_describe(g_pgs.cfg, cfg_emit, &cc);
    config_describe_file(g_pgs.cfg, cfg_emit, &cc);
    complete(r, "SHOW");
}

static const char commands_hint[] =
    "available commands: SHOW POOLS, SHOW CLIENTS, SHOW SERVERS, SHOW STATS, SHOW CONFIG";

/* Runs one admin statement (already trimmed, without ';'). */
static void run_command(reply *r, const char *sql)
{
    char words[3][32];
    int n = 0;
    const char *s = sql;
    while (*s && n < 3) {
        while (isspace((unsigned char)*s)) s++;
        if (!*s) break;
        size_t l = 0;
        while (*s && !isspace((unsigned char)*s)) {
            if (l < sizeof(words[0]) - 1) words[n][l++] = *s;
            s++;
        }
        words[n][l] = '\0';
        n++;
    }
    if (n == 0) {
        proto_out o;
        reply_out(r, &o, 16);
        proto_empty_query(&o);
        reply_commit(r, &o);
        return;
    }
    if (n == 2 && strcasecmp(words[0], "SHOW") == 0) {
        if (strcasecmp(words[1], "POOLS") == 0) return show_pools(r);
        if (strcasecmp(words[1], "CLIENTS") == 0) return show_clients(r);
        if (strcasecmp(words[1], "SERVERS") == 0) return show_servers(r);
        if (strcasecmp(words[1], "STATS") == 0) return show_stats(r);
        if (strcasecmp(words[1], "CONFIG") == 0) return show_config(r);
    }
    char msg[200];
    snprintf(msg, sizeof(msg), "unknown admin command \"%.100s\"", sql);
    error(r, "42601", msg, commands_hint);
}

void admin_welcome(pgs_client *c)
{
    reply r = {0};
    proto_out o;
    reply_out(&r, &o, 1024);
    proto_auth_request(&o, 0, NULL, 0);
    proto_parameter_status(&o, "server_version", "15.0 (pgscale " "0.1.0" ")");
    proto_parameter_status(&o, "server_encoding", "UTF8");
    proto_parameter_status(&o, "client_encoding", "UTF8");
    proto_parameter_status(&o, "DateStyle", "ISO, MDY");
    proto_parameter_status(&o, "integer_datetimes", "on");
    proto_parameter_status(&o, "standard_conforming_strings", "on");
    proto_parameter_status(&o, "TimeZone", "UTC");
    proto_backend_key(&o, worker_client_pid(c), c->cancel_key);
    proto_ready_for_query(&o, 'I');
    reply_commit(&r, &o);
    uv_buf_t b = uv_buf_init((char *)r.data, (unsigned)r.len);
    if (io_send(c->w, &c->s, &b, 1) < 0) client_close(c, "write failed");
    free(r.data);
    admin_data(c);
}

void admin_data(pgs_client *c)
{
    pgs_buf *b = &c->s.rbuf;
    reply r = {0};
    while (b->data && b->pos < b->len) {
        uint8_t type;
        uint32_t len;
        int rc = proto_peek_header(b->data + b->pos, b->len - b->pos, 1u << 20, &type, &len);
        if (rc == PROTO_NEED_MORE) break;
        if (rc < 0) {
            free(r.data);
            client_fail(c, "08P01", "invalid message length", NULL);
            return;
        }
        if (b->len - b->pos < len + 1) {
            if (io_buf_make_room(c->w, &c->s, len + 1) < 0) return;
            break;
        }
        const uint8_t *body = b->data + b->pos + 5;
        b->pos += len + 1;
        if (type == 'X') {
            free(r.data);
            client_close(c, "admin client left");
            return;
        }
        if (type == 'Q') {
            char *sql = pgs_xstrndup((const char *)body, len - 4);
            /* several statements separated by ';' */
            char *save = NULL;
            bool any = false;
            for (char *stmt = strtok_r(sql, ";", &save); stmt; stmt = strtok_r(NULL, ";", &save)) {
                char *t = stmt;
                while (isspace((unsigned char)*t)) t++;
                if (!*t) continue;
                any = true;
                run_command(&r, t);
            }
            if (!any) run_command(&r, "");
            free(sql);
        } else if (type == 'S') {
            /* fall through to ReadyForQuery */
        } else if (type == 'H') {
            continue;
        } else {
            error(&r, "0A000", "the admin console supports the simple query protocol only",
                  "use psql, or your driver's simple-query mode");
            if (type != 'P' && type != 'B' && type != 'D' && type != 'E' && type != 'C') {
                /* fall through */
            } else {
                continue; /* wait for Sync */
            }
        }
        proto_out o;
        reply_out(&r, &o, 16);
        proto_ready_for_query(&o, 'I');
        reply_commit(&r, &o);
    }
    if (r.len) {
        uv_buf_t ub = uv_buf_init((char *)r.data, (unsigned)r.len);
        if (io_send(c->w, &c->s, &ub, 1) < 0) {
            free(r.data);
            client_close(c, "write failed");
            return;
        }
    }
    free(r.data);
    io_buf_release_if_empty(c->w, &c->s);
}
