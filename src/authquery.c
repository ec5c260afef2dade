/* The auth.query thread.  libpq is used here, and only here, because the
 * lookup is a plain blocking request/response off the data path: a thread
 * of its own keeps the workers' loops free while it waits. */
#include "authquery.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <libpq-fe.h>
#include <openssl/crypto.h>

#include "tls.h"
#include "worker.h"

#define AQ_MAX_QUEUE 4096    /* lookups waiting; beyond, refused at once */

typedef struct aq_req {
    pgs_list node;
    pgs_worker *w;
    uint32_t client_id;
    authquery_done_fn done;
    char *user;
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

static char *error_text(const char *what, const char *detail)
{
    char msg[600];
    snprintf(msg, sizeof(msg), "%s: %s", what, detail);
    size_t l = strlen(msg);
    while (l > 0 && (msg[l - 1] == '\n' || msg[l - 1] == ' ')) msg[--l] = '\0';
    return pgs_xstrdup(msg);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The server's first answer to the startup packet, read with MSG_PEEK
 * before libpq sees it: 1 when it asks for a cleartext password, 0 when it
 * asks for anything else (or says something else), -1 when it did not
 * come in time.  Right after libpq sent the startup packet it has read
 * nothing, so the first message is whole in the socket. */
static int first_request_is_cleartext(int fd, int64_t deadline)
{
    for (;;) {
        unsigned char h[9];
        ssize_t n = recv(fd, h, sizeof(h), MSG_PEEK | MSG_DONTWAIT);
        if (n == 0 || (n > 0 && h[0] != 'R')) return 0;
        if (n == (ssize_t)sizeof(h)) {
            uint32_t code = (uint32_t)h[5] << 24 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 8 | h[8];
            return code == 3 ? 1 : 0;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return 0;
        int64_t left = deadline - now_ms();
        if (left <= 0) return -1;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        /* part of a message: poll() would say "readable" at once, so wait
         * a little instead */
        if (n > 0) poll(NULL, 0, 5);
        else poll(&p, 1, (int)(left > 1000 ? 1000 : left));
    }
}

/* PQconnectdbParams, step by step, so that the server's first
 * authentication request can be looked at before libpq answers it: libpq 15
 * has no require_auth, and without this it would send the password in
 * clear text to any server (or man in the middle) that asks for it on a
 * connection without TLS.  The same rule as server.c's, the same setting.
 * libpq still answers a cleartext request that comes later in the exchange
 * (after a SASL start), which only a hostile server sends. */
static PGconn *connect_guarded(const char *const *keys, const char *const *vals, char **error)
{
    PGconn *c = PQconnectStartParams(keys, vals, 0);
    if (!c || PQstatus(c) == CONNECTION_BAD) return c;
    bool guard = !qcfg->server_allow_cleartext_password;
    int64_t deadline = now_ms() + (int64_t)qcfg->server_connect_timeout_ms +
                       (int64_t)qcfg->server_login_timeout_ms;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    ConnStatusType last = CONNECTION_STARTED;
    while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        int fd = PQsocket(c);
        int64_t left = deadline - now_ms();
        if (fd < 0 || left <= 0) {
            *error = pgs_xstrdup("auth.query could not connect: timed out");
            PQfinish(c);
            return NULL;
        }
        struct pollfd p = {.fd = fd, .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
        poll(&p, 1, (int)(left > 1000 ? 1000 : left));
        ConnStatusType now = PQstatus(c);
        if (guard && st == PGRES_POLLING_READING && now == CONNECTION_AWAITING_RESPONSE &&
            last != CONNECTION_AWAITING_RESPONSE && !PQsslInUse(c)) {
            int r = first_request_is_cleartext(fd, deadline);
            if (r != 0) {
                char msg[600];
                snprintf(msg, sizeof(msg),
                         r < 0 ? "auth.query could not connect: timed out"
                               : "auth.query could not connect as %s: the server asks for the "
                                 "password in clear text on a connection without TLS; pgscale "
                                 "does not send it (use scram-sha-256 in pg_hba.conf, TLS "
                                 "toward the server, or server_allow_cleartext_password: on)",
                         qcfg->auth.user);
                *error = pgs_xstrdup(msg);
                PQfinish(c);
                return NULL;
            }
        }
        last = now;
        st = PQconnectPoll(c);
    }
    return c;
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
    char port[16];
    snprintf(port, sizeof(port), "%d", qcfg->primary.port ? qcfg->primary.port : 5432);
    char timeout[16];
    snprintf(timeout, sizeof(timeout), "%u", (qcfg->server_connect_timeout_ms + 999) / 1000);
    const pgs_server_tls_config *st = &qcfg->server_tls;
    const char *keys[] = {"host", "port", "dbname", "user", "password", "connect_timeout",
                          "application_name", "sslmode", "channel_binding", "options",
                          "sslrootcert", "sslcert", "sslkey", NULL};
    const char *vals[] = {qcfg->primary.host, port, aq_dbname(), qcfg->auth.user,
                          aq_password(), timeout, "pgscale-auth-query",
                          tls_sslmode_name(st->sslmode),
                          tls_channel_binding_name(st->channel_binding),
                          "-csearch_path=pg_catalog,pg_temp", st->ca, st->cert, st->key, NULL};
    PGconn *c = connect_guarded(keys, vals, error);
    if (!c) {
        if (!*error) *error = pgs_xstrdup("auth.query could not connect: out of memory");
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        char what[300];
        snprintf(what, sizeof(what), "auth.query could not connect as %s to database %s",
                 qcfg->auth.user, aq_dbname());
        *error = error_text(what, PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    PGresult *r = PQexec(c, "SET search_path = pg_catalog, pg_temp");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        *error = error_text("auth.query could not pin search_path", PQresultErrorMessage(r));
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
        error = error_text("auth.query failed", PQresultErrorMessage(r));
    } else if (PQnfields(r) < 2) {
        error = pgs_xstrdup("auth.query must return two columns: user name, password secret");
    } else if (PQntuples(r) >= 1 && !PQgetisnull(r, 0, 1)) {
        secret = pgs_xstrdup(PQgetvalue(r, 0, 1));
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
        free(q->user);
        free(q);
        pthread_mutex_lock(&lock);
    }
    pthread_mutex_unlock(&lock);
    if (conn) PQfinish(conn);
    conn = NULL;
    return NULL;
}

int authquery_start(const pgs_config *cfg, char *err, size_t errlen)
{
    list_init(&queue);
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
}

void authquery_lookup(pgs_worker *w, uint32_t client_id, const char *user,
                      authquery_done_fn done)
{
    aq_req *q = pgs_xcalloc(1, sizeof(*q));
    q->w = w;
    q->client_id = client_id;
    q->done = done;
    q->user = pgs_xstrdup(user);
    pthread_mutex_lock(&lock);
    bool full = queued >= AQ_MAX_QUEUE;
    if (!full) {
        list_add_tail(&queue, &q->node);
        queued++;
        pthread_cond_signal(&cond);
    }
    pthread_mutex_unlock(&lock);
    if (full) {
        post_result(q, NULL, pgs_xstrdup("too many auth.query lookups waiting"));
        free(q->user);
        free(q);
    }
}
