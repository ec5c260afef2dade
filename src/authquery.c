/* The auth.query thread.  libpq is used here, and only here, because the
 * lookup is a plain blocking request/response off the data path: a thread
 * of its own keeps the workers' loops free while it waits. */
#include "authquery.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <libpq-fe.h>

#include "worker.h"

#define AQ_MAX_CONNS 16      /* databases with an open lookup connection */
#define AQ_MAX_QUEUE 4096    /* lookups waiting; beyond, refused at once */

typedef struct aq_req {
    pgs_list node;
    pgs_worker *w;
    uint32_t client_id;
    authquery_done_fn done;
    char *user, *database;
} aq_req;

typedef struct aq_conn {
    char *database;
    PGconn *conn;
} aq_conn;

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
static aq_conn conns[AQ_MAX_CONNS];
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

static PGconn *conn_for(const char *database, char **error)
{
    aq_conn *free_slot = NULL;
    for (int i = 0; i < AQ_MAX_CONNS; i++) {
        if (conns[i].database && strcmp(conns[i].database, database) == 0) {
            if (PQstatus(conns[i].conn) == CONNECTION_OK) return conns[i].conn;
            PQfinish(conns[i].conn);
            free(conns[i].database);
            conns[i].database = NULL;
            conns[i].conn = NULL;
        }
        if (!conns[i].database && !free_slot) free_slot = &conns[i];
    }
    if (!free_slot) {
        /* all slots busy: drop the first one (least likely to matter) */
        free_slot = &conns[0];
        PQfinish(free_slot->conn);
        free(free_slot->database);
    }
    char port[16];
    snprintf(port, sizeof(port), "%d", qcfg->primary.port ? qcfg->primary.port : 5432);
    char timeout[16];
    snprintf(timeout, sizeof(timeout), "%u", (qcfg->server_connect_timeout_ms + 999) / 1000);
    const char *keys[] = {"host", "port", "dbname", "user", "password", "connect_timeout",
                          "application_name", "sslmode", NULL};
    const char *vals[] = {qcfg->primary.host, port, database, qcfg->auth.user, aq_password(),
                          timeout, "pgscale-auth-query", "prefer", NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 0);
    if (PQstatus(c) != CONNECTION_OK) {
        char msg[600];
        snprintf(msg, sizeof(msg), "auth.query could not connect as %s to database %s: %s",
                 qcfg->auth.user, database, PQerrorMessage(c));
        size_t l = strlen(msg);
        while (l > 0 && (msg[l - 1] == '\n' || msg[l - 1] == ' ')) msg[--l] = '\0';
        *error = pgs_xstrdup(msg);
        PQfinish(c);
        free_slot->database = NULL;
        free_slot->conn = NULL;
        return NULL;
    }
    free_slot->database = pgs_xstrdup(database);
    free_slot->conn = c;
    return c;
}

static void run_one(aq_req *q)
{
    char *error = NULL;
    PGconn *c = conn_for(q->database, &error);
    if (!c) {
        post_result(q, NULL, error);
        return;
    }
    const char *params[] = {q->user};
    const char *sql = qcfg->auth.query ? qcfg->auth.query : PGS_DEFAULT_AUTH_QUERY;
    PGresult *r = PQexecParams(c, sql, 1, NULL, params, NULL, NULL, 0);
    char *secret = NULL;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        char msg[600];
        snprintf(msg, sizeof(msg), "auth.query failed: %s", PQresultErrorMessage(r));
        size_t l = strlen(msg);
        while (l > 0 && (msg[l - 1] == '\n' || msg[l - 1] == ' ')) msg[--l] = '\0';
        error = pgs_xstrdup(msg);
    } else if (PQnfields(r) < 2) {
        error = pgs_xstrdup("auth.query must return two columns: user name, password secret");
    } else if (PQntuples(r) >= 1 && !PQgetisnull(r, 0, 1)) {
        secret = pgs_xstrdup(PQgetvalue(r, 0, 1));
    }
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
    for (int i = 0; i < AQ_MAX_CONNS; i++) {
        if (conns[i].conn) PQfinish(conns[i].conn);
        free(conns[i].database);
        conns[i].conn = NULL;
        conns[i].database = NULL;
    }
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

void authquery_lookup(pgs_worker *w, uint32_t client_id, const char *user, const char *database,
                      authquery_done_fn done)
{
    size_t ul = strlen(user), dl = strlen(database);
    aq_req *q = pgs_xcalloc(1, sizeof(*q));
    q->w = w;
    q->client_id = client_id;
    q->done = done;
    q->user = pgs_xmalloc(ul + dl + 2); /* one allocation: user, then database */
    memcpy(q->user, user, ul + 1);
    q->database = q->user + ul + 1;
    memcpy(q->database, database, dl + 1);
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
