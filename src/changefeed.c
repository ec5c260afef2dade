/* The change feed (see changefeed.h): its thread, its replication
 * connection and what a committed transaction's tables mean for the table
 * versions.  The stream's bytes are feedparse's to read; the versions are
 * tablever's; which ids a written name stands for is relcat's.
 *
 * Why test_decoding and not pgoutput: pgoutput sends only the tables of a
 * publication, which someone must create (CREATE PUBLICATION ... FOR ALL
 * TABLES needs a superuser) in every database, and kept in step with new
 * tables; test_decoding needs nothing but the slot, ships with PostgreSQL's
 * contrib (Debian's postgresql-15 has it), and names each table in plain
 * text at the head of every change line.  Its row data is skipped unread.
 *
 * libpq opens the connection (TLS, SCRAM, the cleartext-password guard of
 * pqconn.c) and runs CREATE_REPLICATION_SLOT; the stream after
 * START_REPLICATION is read from the socket here, into a fixed buffer,
 * because libpq would hold each CopyData message whole (a 100 MB row
 * would cost 100 MB) and allocate a copy of each one.
 *
 * Ordering: a table's version is bumped after PostgreSQL committed the
 * write and decoded it, so a fill that took its snapshot before the bump
 * is dead after it, and one that took it after sends its query after the
 * commit and sees the write.  What the feed cannot promise is when: a
 * direct write's client hears "COMMIT" before the feed has read it, so
 * another client may be served the old answer for a short while (the
 * delay is measured in docs/cache.md). */
#include "changefeed.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include "feedparse.h"
#include "pqconn.h"
#include "relcat.h"
#include "route.h"
#include "tablever.h"
#include "topology.h"

#define BACKOFF_MIN_MS 100u
#define BACKOFF_MAX_MS 5000u
#define STEP_MS 100           /* poll bound: how soon a stop or a failover is seen */
#define STATUS_EVERY_MS 1000  /* standby status updates (they ask for a keepalive back) */
#define SILENCE_MIN_MS 5000u  /* nothing heard for this long (at least): the primary is gone */
#define READS_PER_STEP 64     /* reads of RX_BUF before looking at the clock again */
#define RX_BUF 16384
#define SLOT_WAIT_MS 60000    /* CREATE_REPLICATION_SLOT, at most (see exec_slot) */

/* What ended an attempt; the log says each once until it changes. */
enum reason {
    R_STREAMING = 0, /* not an end: the stream began */
    R_STOP,
    R_CONNECT,
    R_PRIVILEGE,
    R_WAL_LEVEL,
    R_SLOTS,
    R_SENDERS,
    R_PLUGIN,
    R_STREAM,
    R_PRIMARY,
    R_OTHER,
};

static pthread_t thread;
static bool started;
static _Atomic bool stopping;
static const pgs_config *start_cfg;
static _Atomic int state;
static _Atomic uint64_t n_bumps, n_bumps_all, read_lsn;
static char instance_tag[9]; /* 8 random hex digits: this process's slots */
static unsigned slot_seq;

typedef struct session {
    pgs_node *node;
    PGconn *conn;
    SSL *ssl; /* NULL: the socket itself */
    int fd;
    char slot[64];
    bool streaming;
    bool reply_due;
    uint64_t confirmed;      /* the position status updates report */
    int64_t last_rx_ms, next_status_ms;
    uint8_t out[FEEDPARSE_STATUS_LEN];
    size_t out_len, out_off;
    int *logged;
    feedparse parse;
} session;

static relcat_ref cat_ref; /* the feed thread's hold on the catalog */

const char *changefeed_state_name(int s)
{
    switch (s) {
    case CHANGEFEED_CONNECTING: return "connecting";
    case CHANGEFEED_STREAMING: return "streaming";
    case CHANGEFEED_ERROR: return "error";
    default: return "off";
    }
}

void changefeed_stats_get(changefeed_stats *out)
{
    out->state = atomic_load(&state);
    out->bumps = atomic_load(&n_bumps);
    out->bumps_all = atomic_load(&n_bumps_all);
    out->lsn = atomic_load(&read_lsn);
}

static int64_t now_ms(void)
{
    return pqconn_now_ms();
}

/* Writes may have been missed: every cached answer is dead. */
static void gap_bump(void)
{
    if (route_active()) route_cache_write_unknown();
    tablever_bump_all();
    atomic_fetch_add(&n_bumps_all, 1);
}

static void advance(session *s, uint64_t lsn)
{
    if (lsn <= s->confirmed) return;
    s->confirmed = lsn;
    atomic_store(&read_lsn, lsn);
}

/* ---- what the stream says ---- */

static void on_started(void *ctx)
{
    session *s = ctx;
    s->streaming = true;
    s->next_status_ms = 0;
    atomic_store(&state, CHANGEFEED_STREAMING);
    char pos[32];
    topology_format_lsn(s->confirmed, pos, sizeof(pos));
    if (*s->logged != R_STREAMING)
        log_info("change feed: streaming from %s (%s), slot %s from %s; every cached answer "
                 "older than the slot was dropped",
                 s->node->name, s->node->ep.text, s->slot, pos);
    *s->logged = R_STREAMING;
}

/* A transaction committed on the primary: bump what it wrote.  A trigger's
 * or a rule's writes are changes of their own in the stream, so a relation
 * with side effects needs no epoch bump here (the relay's writes do, since
 * it sees only the statement); a name the catalog does not know, or too
 * many, do. */
static void on_commit(void *ctx, const feedparse_table *t, int n, bool overflow, uint64_t lsn)
{
    session *s = ctx;
    bool all = overflow;
    relcat_ids ids;
    memset(&ids, 0, sizeof(ids));
    if (!all) {
        const pgs_relcat *cat = relcat_get(&cat_ref);
        for (int i = 0; i < n; i++) relcat_expand_write(cat, t[i].schema, t[i].name, &ids);
        if (ids.flags & (RELCAT_UNKNOWN | RELCAT_OVERFLOW)) all = true;
    }
    if (all || ids.n) {
        /* a replica's fill must not be stored before it replays this
         * commit: the same rule as a write through pgscale whose
         * position is not read */
        if (route_active()) route_cache_write_unknown();
        if (all) {
            tablever_bump_all();
            atomic_fetch_add(&n_bumps_all, 1);
        } else {
            tablever_bump(ids.ids, ids.n);
            atomic_fetch_add(&n_bumps, 1);
        }
    }
    advance(s, lsn);
}

static void on_keepalive(void *ctx, uint64_t wal_end, bool reply)
{
    session *s = ctx;
    /* between transactions every commit before wal_end has been sent to
     * us: the slot may move on */
    if (!s->parse.in_txn) advance(s, wal_end);
    if (reply) s->reply_due = true;
}

/* ---- the socket (or libpq's TLS session on it) ---- */

/* > 0 bytes read, 0 nothing now, -1 closed or broken. */
static ssize_t rx(session *s, uint8_t *buf, size_t cap)
{
    if (s->ssl) {
        ERR_clear_error();
        int r = SSL_read(s->ssl, buf, (int)cap);
        if (r > 0) return r;
        int e = SSL_get_error(s->ssl, r);
        return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 0 : -1;
    }
    ssize_t r = recv(s->fd, buf, cap, 0);
    if (r > 0) return r;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
    return -1;
}

/* Sends what is left of out: 0 all sent, 1 some left, -1 broken. */
static int tx(session *s)
{
    while (s->out_off < s->out_len) {
        const uint8_t *p = s->out + s->out_off;
        size_t n = s->out_len - s->out_off;
        if (s->ssl) {
            ERR_clear_error();
            int r = SSL_write(s->ssl, p, (int)n);
            if (r <= 0) {
                int e = SSL_get_error(s->ssl, r);
                return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 1 : -1;
            }
            s->out_off += (size_t)r;
        } else {
            ssize_t r = send(s->fd, p, n, MSG_NOSIGNAL);
            if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 1 : -1;
            s->out_off += (size_t)r;
        }
    }
    s->out_len = s->out_off = 0;
    return 0;
}

/* ---- one attempt: connect, slot, stream ---- */

static bool has(const char *s, const char *what)
{
    return s && strstr(s, what) != NULL;
}

static const char *role_of(const pgs_node *n)
{
    return n->url->user ? n->url->user : "(the default user)";
}

/* Whose user that is: the feed logs in as the pools do on that node. */
static const char *url_of(const pgs_node *n)
{
    return n->index == 0 ? "DATABASE_URL's user" : "the user of its URL";
}

/* Why the connection was refused. */
static int connect_reason(const pgs_node *n, const char *err, char *why, size_t wl)
{
    if (has(err, "replication role") || has(err, "REPLICATION attribute") ||
        has(err, "start WAL sender") || has(err, "start walsender")) {
        snprintf(why, wl, "the role %s (%s) may not open a replication connection to %s: give "
                 "it the REPLICATION attribute (ALTER ROLE %s REPLICATION) or switch "
                 "cache.change_feed off (%s)",
                 role_of(n), url_of(n), n->name, role_of(n), err);
        return R_PRIVILEGE;
    }
    if (has(err, "max_wal_senders")) {
        snprintf(why, wl, "%s has no WAL sender free: raise max_wal_senders (each pgscale "
                 "instance with the change feed takes one) (%s)", n->name, err);
        return R_SENDERS;
    }
    snprintf(why, wl, "could not connect to %s: %s", n->name, err);
    return R_CONNECT;
}

/* Why CREATE_REPLICATION_SLOT failed. */
static int slot_reason(const pgs_node *n, const PGresult *r, char *why, size_t wl)
{
    const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    if (!st) st = "";
    if (!msg) msg = PQresultErrorMessage(r);
    if (strcmp(st, "55000") == 0 && has(msg, "wal_level")) {
        snprintf(why, wl, "%s does not have wal_level=logical: set wal_level=logical and restart "
                 "PostgreSQL (%s)", n->name, msg);
        return R_WAL_LEVEL;
    }
    if (strcmp(st, "53400") == 0 || has(msg, "max_replication_slots")) {
        snprintf(why, wl, "%s has no replication slot free: raise max_replication_slots (each "
                 "pgscale instance with the change feed takes one) (%s)", n->name, msg);
        return R_SLOTS;
    }
    if (strcmp(st, "42501") == 0) {
        snprintf(why, wl, "the role %s (%s) may not create a replication slot on %s: give it "
                 "the REPLICATION attribute (ALTER ROLE %s REPLICATION) (%s)",
                 role_of(n), url_of(n), n->name, role_of(n), msg);
        return R_PRIVILEGE;
    }
    if (strcmp(st, "58P01") == 0 || has(msg, "test_decoding")) {
        snprintf(why, wl, "%s cannot load the test_decoding plugin: install PostgreSQL's "
                 "contrib modules there (%s)", n->name, msg);
        return R_PLUGIN;
    }
    snprintf(why, wl, "could not create a replication slot on %s: %s", n->name, msg);
    return R_OTHER;
}

static void end_session(session *s)
{
    if (s->conn) PQfinish(s->conn); /* Terminate: the walsender exits, the slot goes */
    s->conn = NULL;
    s->ssl = NULL;
}

/* libpq's messages end with a newline and may hold more ("...\n\tIs the
 * server running ..."): one line for the log. */
static void one_line(char *s)
{
    char *o = s;
    for (const char *p = s; *p; p++) {
        char c = *p == '\n' || *p == '\t' || *p == '\r' ? ' ' : *p;
        if (c == ' ' && (o == s || o[-1] == ' ')) continue;
        *o++ = c;
    }
    while (o > s && o[-1] == ' ') o--;
    *o = '\0';
}

/* CREATE_REPLICATION_SLOT waits until every transaction that was running
 * when it began has ended (logical decoding needs a consistent start), so
 * it may take as long as the oldest open transaction on the primary.
 * pqconn_exec's bound (a health check's) is too short for that; this one
 * is long, and a stop ends it at once.  NULL with *error (NULL: stopping). */
static PGresult *exec_slot(PGconn *c, const char *sql, char **error)
{
    *error = NULL;
    if (!PQsendQuery(c, sql)) {
        *error = pqconn_error_text("could not send CREATE_REPLICATION_SLOT", PQerrorMessage(c));
        return NULL;
    }
    int64_t deadline = now_ms() + SLOT_WAIT_MS;
    PGresult *res = NULL;
    for (;;) {
        while (!PQisBusy(c)) {
            PGresult *r = PQgetResult(c);
            if (!r) return res;
            if (res) PQclear(res);
            res = r;
        }
        if (atomic_load(&stopping)) break;
        if (now_ms() > deadline) {
            char msg[300];
            snprintf(msg, sizeof(msg), "CREATE_REPLICATION_SLOT did not finish in %d s: it waits "
                     "for every transaction open when it began to end (look for long or idle "
                     "in transaction sessions in pg_stat_activity)", SLOT_WAIT_MS / 1000);
            *error = pgs_xstrdup(msg);
            break;
        }
        struct pollfd p = {.fd = PQsocket(c), .events = POLLIN};
        if (p.fd < 0) break;
        poll(&p, 1, STEP_MS);
        if (!PQconsumeInput(c)) {
            *error = pqconn_error_text("connection lost", PQerrorMessage(c));
            break;
        }
    }
    if (res) PQclear(res);
    return NULL;
}

static int stream(session *s, char *why, size_t wl)
{
    static uint8_t buf[RX_BUF];
    feedparse_ops ops = {.ctx = s, .started = on_started, .commit = on_commit,
                         .keepalive = on_keepalive};
    uint32_t silence = PGS_MAX(SILENCE_MIN_MS, 2 * start_cfg->health_check_timeout_ms);
    s->last_rx_ms = now_ms();
    for (;;) {
        if (atomic_load(&stopping)) return R_STOP;
        if (topology_primary() != s->node) {
            snprintf(why, wl, "the primary is %s (%s) now, in place of %s", topology_primary()->name,
                     topology_primary()->ep.text, s->node->name);
            return R_PRIMARY;
        }
        for (int i = 0; i < READS_PER_STEP; i++) {
            ssize_t n = rx(s, buf, sizeof(buf));
            if (n == 0) break;
            if (n < 0) {
                snprintf(why, wl, "the replication connection to %s was lost", s->node->name);
                return R_STREAM;
            }
            s->last_rx_ms = now_ms();
            int rc = feedparse_input(&s->parse, buf, (size_t)n, &ops);
            if (rc != FEEDPARSE_OK) {
                snprintf(why, wl, "the replication stream from %s ended: %s%s%s%s", s->node->name,
                         s->parse.error, s->parse.sqlstate[0] ? " (SQLSTATE " : "",
                         s->parse.sqlstate, s->parse.sqlstate[0] ? ")" : "");
                return s->streaming ? R_STREAM : R_OTHER;
            }
        }
        int64_t now = now_ms();
        if (s->streaming && s->out_len == 0 && (s->reply_due || now >= s->next_status_ms)) {
            /* every update asks for a keepalive back: silence then means
             * the primary (or the network to it) is gone */
            int64_t us = (int64_t)pgs_wall_us() - 946684800000000LL; /* since 2000-01-01 */
            feedparse_status(s->out, s->confirmed, us, true);
            s->out_len = sizeof(s->out);
            s->reply_due = false;
            s->next_status_ms = now + STATUS_EVERY_MS;
        }
        int t = tx(s);
        if (t < 0) {
            snprintf(why, wl, "the replication connection to %s was lost", s->node->name);
            return R_STREAM;
        }
        if (now - s->last_rx_ms > (int64_t)silence) {
            snprintf(why, wl, "nothing heard from %s for %u ms on the replication connection",
                     s->node->name, silence);
            return s->streaming ? R_STREAM : R_OTHER;
        }
        if (s->ssl && SSL_pending(s->ssl) > 0) continue;
        struct pollfd p = {.fd = s->fd, .events = POLLIN | (t > 0 ? POLLOUT : 0)};
        poll(&p, 1, STEP_MS);
    }
}

/* One attempt on node: connect, create the slot, stream until something
 * ends it.  *slot_made: the slot existed (and the gap before it was
 * bumped). */
static int attempt(pgs_node *node, int *logged, bool *slot_made, char *why, size_t wl)
{
    static session s; /* one feed thread; the parser's buffers are not for the stack */
    memset(&s, 0, sizeof(s));
    feedparse_init(&s.parse);
    s.node = node;
    s.logged = logged;
    uint32_t tmo = PGS_MAX(start_cfg->health_check_timeout_ms, 2000u);
    pqconn_params pp;
    memset(&pp, 0, sizeof(pp));
    pp.cfg = start_cfg;
    pp.url = node->url;
    pp.user = node->url->user;
    pp.password = node->url->password;
    pp.dbname = node->url->dbname;
    pp.sslmode = config_url_param(node->url, "sslmode");
    pp.application_name = "pgscale-change-feed";
    pp.replication = "database";
    pp.timeout_ms = tmo;
    char what[64];
    snprintf(what, sizeof(what), "change feed: %s", node->name);
    pp.what = what;
    char *err = NULL;
    s.conn = pqconn_open(&pp, &err);
    if (!s.conn) {
        int r = connect_reason(node, err, why, wl);
        free(err);
        return r;
    }
    if (PQgssEncInUse(s.conn)) {
        snprintf(why, wl, "%s: the change feed does not read a GSSAPI-encrypted connection "
                 "(set gssencmode=disable in DATABASE_URL)", node->name);
        end_session(&s);
        return R_OTHER;
    }
    snprintf(s.slot, sizeof(s.slot), "pgscale_feed_%s_%u", instance_tag, ++slot_seq);
    char sql[320];
    /* the options in the form PostgreSQL 10 to 17 all take */
    snprintf(sql, sizeof(sql),
             "CREATE_REPLICATION_SLOT %s TEMPORARY LOGICAL test_decoding NOEXPORT_SNAPSHOT",
             s.slot);
    PGresult *r = exec_slot(s.conn, sql, &err);
    if (!r) {
        snprintf(why, wl, "%s: %s", node->name, err ? err : "stopping");
        free(err);
        end_session(&s);
        return atomic_load(&stopping) ? R_STOP : R_CONNECT;
    }
    uint64_t from = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) < 2 ||
        topology_parse_lsn(PQgetvalue(r, 0, 1), &from) != 0) {
        int rc = PQresultStatus(r) == PGRES_TUPLES_OK
                     ? (snprintf(why, wl, "%s: CREATE_REPLICATION_SLOT answered an unexpected row",
                                 node->name), R_OTHER)
                     : slot_reason(node, r, why, wl);
        one_line(why);
        PQclear(r);
        end_session(&s);
        return rc;
    }
    PQclear(r);
    /* Every commit from `from` on will be decoded; the ones before were
     * not seen by this slot. */
    *slot_made = true;
    gap_bump();
    s.confirmed = from;
    atomic_store(&read_lsn, from);
    char pos[32];
    topology_format_lsn(from, pos, sizeof(pos));
    snprintf(sql, sizeof(sql),
             "START_REPLICATION SLOT %s LOGICAL %s (\"include-xids\" '1', \"skip-empty-xacts\" '1')",
             s.slot, pos);
    if (!PQsendQuery(s.conn, sql)) {
        snprintf(why, wl, "%s: could not send START_REPLICATION: %s", node->name,
                 PQerrorMessage(s.conn));
        one_line(why);
        end_session(&s);
        return R_CONNECT;
    }
    s.fd = PQsocket(s.conn);
    s.ssl = PQsslInUse(s.conn) ? PQsslStruct(s.conn, "OpenSSL") : NULL;
    int fl = fcntl(s.fd, F_GETFL);
    if (fl >= 0) (void)fcntl(s.fd, F_SETFL, fl | O_NONBLOCK);
    int rc = stream(&s, why, wl);
    end_session(&s);
    return rc;
}

static void sleep_ms(uint32_t ms)
{
    for (uint32_t done = 0; done < ms && !atomic_load(&stopping); done += 50) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static void *feed_main(void *arg)
{
    PGS_UNUSED(arg);
    pthread_setname_np(pthread_self(), "pgs-feed");
    int logged = -1; /* the reason last logged (R_STREAMING: the stream began) */
    uint32_t backoff = 0;
    while (!atomic_load(&stopping)) {
        pgs_node *node = topology_primary();
        if (atomic_load(&state) != CHANGEFEED_ERROR) atomic_store(&state, CHANGEFEED_CONNECTING);
        char why[900] = "";
        bool slot_made = false;
        int r = attempt(node, &logged, &slot_made, why, sizeof(why));
        if (slot_made) gap_bump(); /* from here until the next slot, nothing is seen */
        if (r == R_STOP) break;
        if (slot_made) backoff = 0;
        one_line(why);
        atomic_store(&state, r == R_PRIMARY ? CHANGEFEED_CONNECTING : CHANGEFEED_ERROR);
        if (r != logged) {
            switch (r) {
            case R_PRIMARY:
                log_warn("change feed: %s; every cached answer was dropped, reading a new slot "
                         "there", why);
                break;
            case R_STREAM:
                log_warn("change feed: %s; every cached answer was dropped, reconnecting "
                         "(until then writes made around pgscale are not seen)", why);
                break;
            case R_CONNECT:
            case R_OTHER:
                log_warn("change feed: %s; retrying (until it streams, writes made around "
                         "pgscale end cached answers only at their TTL)", why);
                break;
            default:
                log_error("change feed: %s; retrying (until it streams, writes made around "
                          "pgscale end cached answers only at their TTL)", why);
                break;
            }
            logged = r;
        }
        if (r == R_PRIMARY) continue;
        backoff = backoff ? PGS_MIN(backoff * 2, BACKOFF_MAX_MS) : BACKOFF_MIN_MS;
        sleep_ms(backoff);
    }
    relcat_put(&cat_ref);
    atomic_store(&state, CHANGEFEED_OFF);
    return NULL;
}

int changefeed_start(const pgs_config *cfg, char *err, size_t errlen)
{
    start_cfg = cfg;
    uint8_t rnd[4];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        unsigned pid = (unsigned)getpid();
        memcpy(rnd, &pid, sizeof(rnd));
    }
    snprintf(instance_tag, sizeof(instance_tag), "%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2],
             rnd[3]);
    atomic_store(&stopping, false);
    atomic_store(&state, CHANGEFEED_CONNECTING);
    if (pthread_create(&thread, NULL, feed_main, NULL) != 0) {
        snprintf(err, errlen, "could not start the change feed's thread");
        atomic_store(&state, CHANGEFEED_OFF);
        return -1;
    }
    started = true;
    return 0;
}

void changefeed_stop(void)
{
    if (!started) return;
    atomic_store(&stopping, true);
    pthread_join(thread, NULL);
    started = false;
}
