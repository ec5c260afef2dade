/* The auth.query thread.  libpq is used here, and only here, because the
 * lookup is a plain blocking request/response off the data path: a thread
 * of its own keeps the workers' loops free while it waits.  Also what keeps
 * that one thread from being flooded: a bound on lookups per client
 * address and a short memory of names PostgreSQL said it does not know. */
#include "authquery.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>
#include <openssl/crypto.h>

#include "htab.h"
#include "pqconn.h"
#include "worker.h"

#define AQ_MAX_QUEUE 4096    /* lookups waiting; beyond, refused at once */
#define AQ_NEG_MAX 10000     /* names remembered as unknown; the oldest go first */

/* Lookups of one client address.  The single lookup thread serves its
 * queue in order, so without a bound one host sending logins as made-up
 * names fills it, and everyone else's login waits behind thousands of
 * lookups.  At most query_max_per_address lookups of an address are in the
 * queue (or running); the address's others wait in `parked`, in order, and
 * enter the queue one by one as its lookups finish.  A real login from
 * another address so waits behind a few lookups per address that is
 * logging in, never behind a flood; a parked lookup whose client leaves is
 * dropped before PostgreSQL sees it. */
typedef struct aq_addr {
    htab_node hnode;
    int n;                   /* in the queue or running */
    pgs_list parked;         /* aq_req, waiting for n to drop */
    int n_parked;
    int burst;               /* lookups parked since the address was last idle */
    char addr[64];
} aq_addr;

/* A name PostgreSQL said it does not know, until `expires`.  Entries are
 * kept in insertion order (all live query_negative_ttl), so the oldest --
 * the first to expire and the first to evict -- is the list's head. */
typedef struct aq_neg {
    htab_node hnode;
    pgs_list order;
    uint64_t expires_us;
    char user[];
} aq_neg;

typedef struct aq_req {
    pgs_list node;
    pgs_worker *w;
    uint32_t client_id;
    authquery_done_fn done;
    char *user;
    aq_addr *addr;           /* its address; NULL: no per-address bound */
    uint64_t neg_gen;        /* neg_gen when queued */
} aq_req;

typedef struct aq_result {
    uint32_t client_id;
    authquery_done_fn done;
    char *secret, *error;
} aq_result;

static pthread_t thread;
static bool running;
static bool stopping;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static pgs_list queue;
static int queued;
static PGconn *conn;         /* to auth.dbname; the lookup thread's only */
static const pgs_config *qcfg;
/* under lock: */
static htab addr_tab;
static htab neg_tab;
static pgs_list neg_order;
static uint64_t neg_gen;     /* bumped by authquery_forget */

static aq_addr *addr_find(const char *addr, uint64_t h)
{
    for (htab_node *n = htab_first(&addr_tab, h); n; n = n->next) {
        aq_addr *e = htab_entry(n, aq_addr, hnode);
        if (n->hash == h && strcmp(e->addr, addr) == 0) return e;
    }
    return NULL;
}

static aq_neg *neg_find(const char *user, uint64_t h)
{
    for (htab_node *n = htab_first(&neg_tab, h); n; n = n->next) {
        aq_neg *e = htab_entry(n, aq_neg, hnode);
        if (n->hash == h && strcmp(e->user, user) == 0) return e;
    }
    return NULL;
}

static void neg_drop(aq_neg *e)
{
    htab_remove(&neg_tab, &e->hnode);
    list_del(&e->order);
    free(e);
}

/* Drops what has expired (the oldest entries).  Caller holds lock. */
static void neg_expire(uint64_t now)
{
    while (!list_empty(&neg_order)) {
        aq_neg *e = list_entry(neg_order.next, aq_neg, order);
        if (e->expires_us > now) break;
        neg_drop(e);
    }
}

/* Remembers that user is unknown.  Caller holds lock. */
static void neg_add(const char *user)
{
    uint64_t now = pgs_now_us();
    uint64_t h = pgs_hash64(user, strlen(user));
    neg_expire(now);
    aq_neg *e = neg_find(user, h);
    if (e) neg_drop(e);
    if (neg_tab.count >= AQ_NEG_MAX) neg_drop(list_entry(neg_order.next, aq_neg, order));
    size_t len = strlen(user);
    e = pgs_xmalloc(sizeof(*e) + len + 1);
    memcpy(e->user, user, len + 1);
    e->expires_us = now + (uint64_t)qcfg->auth.query_negative_ttl_ms * 1000u;
    e->hnode.hash = h;
    htab_insert(&neg_tab, &e->hnode);
    list_add_tail(&neg_order, &e->order);
}

static void neg_clear(void)
{
    while (!list_empty(&neg_order)) neg_drop(list_entry(neg_order.next, aq_neg, order));
    htab_free(&neg_tab);
}

bool authquery_enabled(void)
{
    return running;
}

static void deliver(pgs_worker *w, void *arg)
{
    aq_result *r = arg;
    r->done(w, r->client_id, r->secret, r->error);
    free(r);
}

static void post_result(aq_req *q, char *secret, char *error)
{
    aq_result *r = pgs_xcalloc(1, sizeof(*r));
    r->client_id = q->client_id;
    r->done = q->done;
    r->secret = secret;
    r->error = error;
    pgs_worker_msg *m = pgs_xcalloc(1, sizeof(*m));
    m->kind = WM_CALL;
    m->fn = deliver;
    m->arg = r;
    worker_post(q->w, m);
}

static void req_free(aq_req *q)
{
    free(q->user);
    free(q);
}

/* Puts q in the lookup queue, or answers it at once (the negative cache
 * knows the name; the queue is full).  Caller holds lock. */
static void enqueue(aq_req *q)
{
    if (neg_find(q->user, pgs_hash64(q->user, strlen(q->user)))) {
        post_result(q, NULL, NULL);
        req_free(q);
        return;
    }
    if (queued >= AQ_MAX_QUEUE) {
        post_result(q, NULL, pgs_xstrdup("too many auth.query lookups waiting"));
        req_free(q);
        return;
    }
    if (q->addr) q->addr->n++;
    list_add_tail(&queue, &q->node);
    queued++;
    pthread_cond_signal(&cond);
}

/* One of a's lookups left the queue (ran, or its client left): the next
 * parked ones take its place; a is freed when nothing of it is left, and
 * *burst_end is then how many lookups of it had to wait (0: it is not
 * idle yet, or none waited), for the caller to log with addr.  Caller
 * holds lock. */
static void addr_release(aq_addr *a, int *burst_end, char *addr, size_t addrlen)
{
    *burst_end = 0;
    a->n--;
    neg_expire(pgs_now_us());
    while (a->n < qcfg->auth.query_max_per_address && !list_empty(&a->parked)) {
        aq_req *q = list_entry(a->parked.next, aq_req, node);
        list_del(&q->node);
        a->n_parked--;
        enqueue(q);
    }
    if (a->n > 0 || a->n_parked > 0) return;
    *burst_end = a->burst;
    snprintf(addr, addrlen, "%s", a->addr);
    htab_remove(&addr_tab, &a->hnode);
    free(a);
}

static void log_burst_end(int waited, const char *addr)
{
    if (waited)
        log_info("auth.query: the lookups from %s are done; %d of them waited their turn "
                 "(auth.query_max_per_address is %d)",
                 addr, waited, qcfg->auth.query_max_per_address);
}

/* The password for auth.user: DATABASE_URL's when it is the same user. */
static const char *aq_password(void)
{
    const pgs_url *u = &qcfg->primary;
    if (u->password && (!u->user || strcmp(u->user, qcfg->auth.user) == 0)) return u->password;
    return NULL;
}

static const char *aq_dbname(void)
{
    return qcfg->auth.dbname ? qcfg->auth.dbname : PGS_DEFAULT_AUTH_DBNAME;
}

/* The lookup connection, opened on first use and again after it broke.
 * search_path is pinned to pg_catalog (pg_temp last) twice over: as a
 * startup option, which outranks ALTER DATABASE / ALTER ROLE ... SET, and
 * by a SET afterwards, so that an unqualified name in a custom auth.query
 * still finds PostgreSQL's own catalog before anything a user created.
 * TLS and channel binding follow server_tls, as the pools' logins do. */
static PGconn *lookup_conn(char **error)
{
    if (conn && PQstatus(conn) == CONNECTION_OK) return conn;
    if (conn) PQfinish(conn);
    conn = NULL;
    pqconn_params pp = {
        .cfg = qcfg,
        .url = &qcfg->primary,
        .user = qcfg->auth.user,
        .password = aq_password(),
        .dbname = aq_dbname(),
        .application_name = "pgscale-auth-query",
        .options = "-csearch_path=pg_catalog,pg_temp",
        .timeout_ms = qcfg->server_connect_timeout_ms + qcfg->server_login_timeout_ms,
        .what = "auth.query",
    };
    PGconn *c = pqconn_open(&pp, error);
    if (!c) return NULL;
    PGresult *r = PQexec(c, "SET search_path = pg_catalog, pg_temp");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        *error = pqconn_error_text("auth.query could not pin search_path", PQresultErrorMessage(r));
        PQclear(r);
        PQfinish(c);
        return NULL;
    }
    PQclear(r);
    conn = c;
    return c;
}

static void run_one(aq_req *q)
{
    char *error = NULL;
    PGconn *c = lookup_conn(&error);
    if (!c) {
        post_result(q, NULL, error);
        return;
    }
    const char *params[] = {q->user};
    const char *sql = qcfg->auth.query ? qcfg->auth.query : PGS_DEFAULT_AUTH_QUERY;
    PGresult *r = PQexecParams(c, sql, 1, NULL, params, NULL, NULL, 0);
    char *secret = NULL;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        error = pqconn_error_text("auth.query failed", PQresultErrorMessage(r));
    } else if (PQnfields(r) < 2) {
        error = pgs_xstrdup("auth.query must return two columns: user name, password secret");
    } else if (PQntuples(r) >= 1 && !PQgetisnull(r, 0, 1)) {
        secret = pgs_xstrdup(PQgetvalue(r, 0, 1));
    } else if (qcfg->auth.query_negative_ttl_ms > 0) {
        /* not remembered when a RELOAD came in meanwhile: the answer may
         * predate a user created before that RELOAD */
        pthread_mutex_lock(&lock);
        if (q->neg_gen == neg_gen) neg_add(q->user);
        pthread_mutex_unlock(&lock);
    }
    /* libpq does not wipe a result it frees */
    for (int i = 0; i < PQntuples(r) && PQnfields(r) >= 2; i++)
        if (!PQgetisnull(r, i, 1))
            OPENSSL_cleanse(PQgetvalue(r, i, 1), (size_t)PQgetlength(r, i, 1));
    PQclear(r);
    post_result(q, secret, error);
}

static void *aq_main(void *arg)
{
    PGS_UNUSED(arg);
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!stopping && list_empty(&queue)) pthread_cond_wait(&cond, &lock);
        if (stopping) break;
        aq_req *q = list_entry(queue.next, aq_req, node);
        list_del(&q->node);
        queued--;
        pthread_mutex_unlock(&lock);
        run_one(q);
        int waited = 0;
        char addr[64];
        pthread_mutex_lock(&lock);
        if (q->addr) addr_release(q->addr, &waited, addr, sizeof(addr));
        if (waited) {
            pthread_mutex_unlock(&lock);
            log_burst_end(waited, addr);
            pthread_mutex_lock(&lock);
        }
        req_free(q);
    }
    pthread_mutex_unlock(&lock);
    if (conn) PQfinish(conn);
    conn = NULL;
    return NULL;
}

int authquery_start(const pgs_config *cfg, char *err, size_t errlen)
{
    list_init(&queue);
    list_init(&neg_order);
    if (!cfg->auth.user) return 0;
    qcfg = cfg;
    if (pthread_create(&thread, NULL, aq_main, NULL) != 0) {
        snprintf(err, errlen, "could not start the auth.query thread");
        return -1;
    }
    running = true;
    return 0;
}

void authquery_stop(void)
{
    if (!running) return;
    pthread_mutex_lock(&lock);
    stopping = true;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
    pthread_join(thread, NULL);
    running = false;
    while (!list_empty(&queue)) {
        aq_req *q = list_entry(queue.next, aq_req, node);
        list_del(&q->node);
        free(q->user);
        free(q);
    }
    for (htab_node *n = htab_next(&addr_tab, NULL), *next; n; n = next) {
        next = htab_next(&addr_tab, n);
        aq_addr *a = htab_entry(n, aq_addr, hnode);
        while (!list_empty(&a->parked)) {
            aq_req *q = list_entry(a->parked.next, aq_req, node);
            list_del(&q->node);
            req_free(q);
        }
        htab_remove(&addr_tab, n);
        free(a);
    }
    htab_free(&addr_tab);
    neg_clear();
}

void authquery_forget(void)
{
    if (!running) return;
    pthread_mutex_lock(&lock);
    size_t n = neg_tab.count;
    neg_clear();
    neg_gen++;
    pthread_mutex_unlock(&lock);
    if (n) log_info("auth.query: forgot %zu name(s) remembered as unknown", n);
}

int authquery_lookup(pgs_worker *w, uint32_t client_id, const char *user, const char *addr,
                     authquery_done_fn done)
{
    int per_addr = qcfg->auth.query_max_per_address;
    bool bounded = addr && per_addr > 0;
    uint64_t ah = bounded ? pgs_hash64(addr, strlen(addr)) : 0;
    pthread_mutex_lock(&lock);
    neg_expire(pgs_now_us());
    if (neg_find(user, pgs_hash64(user, strlen(user)))) {
        pthread_mutex_unlock(&lock);
        return AQ_NO_USER;
    }
    aq_req *q = pgs_xcalloc(1, sizeof(*q));
    q->w = w;
    q->client_id = client_id;
    q->done = done;
    q->user = pgs_xstrdup(user);
    q->neg_gen = neg_gen;
    aq_addr *a = bounded ? addr_find(addr, ah) : NULL;
    if (bounded && !a) {
        a = pgs_xcalloc(1, sizeof(*a));
        snprintf(a->addr, sizeof(a->addr), "%s", addr);
        list_init(&a->parked);
        a->hnode.hash = ah;
        htab_insert(&addr_tab, &a->hnode);
    }
    q->addr = a;
    bool warn = false;
    if (a && a->n >= per_addr) {
        /* waits its turn; the client's login waits with it (bounded by
         * max_pending_logins_per_address and client_login_timeout) */
        list_add_tail(&a->parked, &q->node);
        a->n_parked++;
        warn = a->burst++ == 0;
    } else {
        enqueue(q);
    }
    pthread_mutex_unlock(&lock);
    if (warn)
        log_warn("auth.query: %s has %d lookups waiting or running (auth.query_max_per_address); "
                 "its further logins as users not in the users file wait their turn",
                 addr, per_addr);
    return AQ_QUEUED;
}

void authquery_cancel(pgs_worker *w, uint32_t client_id, const char *addr)
{
    if (!running) return;
    int per_addr = qcfg->auth.query_max_per_address;
    aq_req *found = NULL;
    int waited = 0;
    char a_name[64];
    pthread_mutex_lock(&lock);
    /* parked first (where a flood's lookups are), then the queue; a
     * running lookup finishes, and its answer finds no client */
    aq_addr *a = addr && per_addr > 0 ? addr_find(addr, pgs_hash64(addr, strlen(addr))) : NULL;
    if (a) {
        for (pgs_list *it = a->parked.next; it != &a->parked; it = it->next) {
            aq_req *q = list_entry(it, aq_req, node);
            if (q->w == w && q->client_id == client_id) {
                list_del(&q->node);
                a->n_parked--;
                found = q;
                break;
            }
        }
    }
    if (!found) {
        for (pgs_list *it = queue.next; it != &queue; it = it->next) {
            aq_req *q = list_entry(it, aq_req, node);
            if (q->w == w && q->client_id == client_id) {
                list_del(&q->node);
                queued--;
                found = q;
                if (q->addr) addr_release(q->addr, &waited, a_name, sizeof(a_name));
                break;
            }
        }
    }
    pthread_mutex_unlock(&lock);
    if (waited) log_burst_end(waited, a_name);
    if (found) req_free(found);
}
