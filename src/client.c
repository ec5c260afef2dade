/* Client connections: accepting, the start-up packet (TLS negotiation,
 * cancel requests, protocol version, parameters), the welcome with the
 * server's parameters and our own backend key, errors and disconnects with
 * a reason, and the client-side time bounds.  Relaying is relay.c's. */
#include "metrics.h"
#include "client.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <openssl/rand.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "admin.h"
#include "clientauth.h"
#include "htab.h"
#include "io.h"
#include "net.h"
#include "params.h"
#include "rcache.h"
#include "pool.h"
#include "route.h"
#include "topology.h"
#include "prepared.h"
#include "proto.h"
#include "relay.h"
#include "server.h"
#include "tls.h"
#include "worker.h"

/* Descriptors kept free for server connections and cancel requests when
 * clients would take the last ones: 1/16 of the limit, 8 to 256. */
static int fd_reserve(void)
{
    int r = g_pgs.fd_limit / 16;
    return r < 8 ? 8 : r > 256 ? 256 : r;
}

/* indexed by enum client_state */
static const char *const state_names[] = {"startup", "auth",  "welcome", "idle",
                                          "waiting", "active", "admin",  "closing"};

const char *client_state_name(int state)
{
    if (state < 0 || state >= (int)PGS_ARRAY_LEN(state_names)) return "?";
    return state_names[state];
}

/* Release: the admin console (another worker) reads the state with acquire,
 * and then the fields written before it (names, pool). */
static void set_state(pgs_client *c, int st)
{
    atomic_store_explicit(&c->state, st, memory_order_release);
}

/* --- connections still logging in ---
 *
 * A connection that has not logged in has proved nothing, so it must not
 * take what logged-in clients need: it is not counted against
 * max_client_conn (only a login is), and connections still logging in are
 * bounded on their own, overall (max_pending_logins) and per source address
 * (max_pending_logins_per_address), so that one host cannot take every
 * slot.  The per-address counts live in one small table under a mutex,
 * touched at accept and at the end of a login only, never on the data path;
 * an address's entry exists while it has a login in progress, so the table
 * holds at most max_pending_logins entries. */
typedef struct pending_addr {
    htab_node hnode;    /* hash: of addr */
    int n;
    char addr[48];
} pending_addr;

static htab pending_tab;
static pthread_mutex_t pending_lock = PTHREAD_MUTEX_INITIALIZER;

/* The entry of addr (hash h), or NULL.  Caller holds pending_lock. */
static pending_addr *pending_find(const char *addr, uint64_t h)
{
    for (htab_node *n = htab_first(&pending_tab, h); n; n = n->next) {
        pending_addr *e = htab_entry(n, pending_addr, hnode);
        if (n->hash == h && strcmp(e->addr, addr) == 0) return e;
    }
    return NULL;
}

enum { REFUSED_PENDING = 1, REFUSED_PENDING_ADDR = 2 };

/* How long a refused connection may take to send its first packet (so
 * that it can be told why in a form its driver shows) before it is told
 * anyway and closed: short, as it holds a descriptor and counts nowhere. */
#define REFUSED_WAIT_US 1000000u

/* Counts c as logging in; otherwise (nothing counted) a bound is reached
 * and the REFUSED_* reason is returned. */
static int pending_begin(pgs_client *c)
{
    const pgs_config *cfg = g_pgs.cfg;
    int per_addr = cfg->max_pending_logins_per_address;
    if (atomic_fetch_add(&g_pgs.pending_logins, 1) >= cfg->max_pending_logins) {
        atomic_fetch_sub(&g_pgs.pending_logins, 1);
        return REFUSED_PENDING;
    }
    /* Unix socket clients all share "[local]" and are local processes:
     * only the overall bound applies to them. */
    if (!c->unix_socket && per_addr > 0) {
        uint64_t h = pgs_hash64(c->addr, strlen(c->addr));
        pthread_mutex_lock(&pending_lock);
        pending_addr *e = pending_find(c->addr, h);
        if (e && e->n >= per_addr) {
            pthread_mutex_unlock(&pending_lock);
            atomic_fetch_sub(&g_pgs.pending_logins, 1);
            return REFUSED_PENDING_ADDR;
        }
        if (!e) {
            e = pgs_xcalloc(1, sizeof(*e));
            snprintf(e->addr, sizeof(e->addr), "%s", c->addr);
            e->hnode.hash = h;
            htab_insert(&pending_tab, &e->hnode);
        }
        e->n++;
        pthread_mutex_unlock(&pending_lock);
    }
    c->login_pending = true;
    return 0;
}

/* Tells a connection refused by pending_begin why, and closes it. */
static void refuse_pending(pgs_client *c)
{
    const pgs_config *cfg = g_pgs.cfg;
    char msg[200];
    if (c->refused == REFUSED_PENDING_ADDR) {
        snprintf(msg, sizeof(msg),
                 "too many connections from %s are still logging in "
                 "(max_pending_logins_per_address is %d)",
                 c->addr, cfg->max_pending_logins_per_address);
        client_fail(c, "53300", msg,
                    "finish or close the connections from this address that have not logged "
                    "in, or raise PGSCALE_MAX_PENDING_LOGINS_PER_ADDRESS");
    } else {
        snprintf(msg, sizeof(msg),
                 "too many connections are still logging in (max_pending_logins is %d)",
                 cfg->max_pending_logins);
        client_fail(c, "53300", msg, "retry shortly, or raise PGSCALE_MAX_PENDING_LOGINS");
    }
}

/* c has logged in, or is gone.  A RELOAD may have changed the per-address
 * bound since c was counted, so the entry is looked up whatever it is now. */
static void pending_end(pgs_client *c)
{
    if (!c->login_pending) return;
    c->login_pending = false;
    atomic_fetch_sub(&g_pgs.pending_logins, 1);
    if (c->unix_socket) return;
    uint64_t h = pgs_hash64(c->addr, strlen(c->addr));
    pthread_mutex_lock(&pending_lock);
    pending_addr *e = pending_find(c->addr, h);
    if (e && --e->n <= 0) {
        htab_remove(&pending_tab, &e->hnode);
        free(e);
    }
    pthread_mutex_unlock(&pending_lock);
}

/* A database name ending so asks for a replica (route.c). */
#define REPLICA_SUFFIX "@replica"
#define REPLICA_SUFFIX_LEN (sizeof(REPLICA_SUFFIX) - 1)

/* --- cancel requests for session-mode clients ---
 *
 * A session-mode client's BackendKeyData carries its server's real pid, so
 * that pg_backend_pid() and the driver's backend pid agree; the secret key
 * stays our own random per-client key, so a cancel request still passes
 * our check and never reaches PostgreSQL with a key a client could know.
 * A real pid says nothing about which worker owns the client, so such
 * cancel requests are routed by key: this table maps key (and pid) to
 * client under a mutex, touched at login, at close and by cancel requests,
 * never on the data path.  Transaction-mode clients keep pids that encode
 * their worker and id (worker_client_pid) and are not in it. */
static htab cancel_tab;
static pthread_mutex_t cancel_lock = PTHREAD_MUTEX_INITIALIZER;

static void cancel_register(pgs_client *c, uint32_t pid)
{
    c->real_pid = pid;
    c->cancel_node.hash = pgs_hash64(&c->cancel_key, sizeof(c->cancel_key));
    pthread_mutex_lock(&cancel_lock);
    htab_insert(&cancel_tab, &c->cancel_node);
    pthread_mutex_unlock(&cancel_lock);
}

static void cancel_unregister(pgs_client *c)
{
    if (!c->real_pid) return;
    pthread_mutex_lock(&cancel_lock);
    htab_remove(&cancel_tab, &c->cancel_node);
    pthread_mutex_unlock(&cancel_lock);
    c->real_pid = 0;
}

/* A cancel request for a session-mode client goes to its worker (as one
 * with our own pid would); false when no such client has this key and pid.
 * The worker checks the key again against the client it finds. */
static bool cancel_route_session(uint32_t pid, uint32_t key)
{
    uint64_t h = pgs_hash64(&key, sizeof(key));
    uint32_t wid = 0, id = 0;
    bool found = false;
    pthread_mutex_lock(&cancel_lock);
    for (htab_node *n = htab_first(&cancel_tab, h); n; n = n->next) {
        pgs_client *c = htab_entry(n, pgs_client, cancel_node);
        if (n->hash == h && c->cancel_key == key && c->real_pid == pid) {
            wid = (uint32_t)c->w->id;
            id = c->id;
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&cancel_lock);
    if (found) worker_route_cancel(wid << 24 | (id & 0xffffffu), key);
    return found;
}

static void free_client(uv_handle_t *h)
{
    pgs_client *c = h->data;
    io_buf_free(c->w, &c->s);
    params_free(c->params);
    stmt_local_free(c->lx);
    stmt_map_free(c->stmts);
    free(c->tx_lost);
    free(c->user);
    free(c);
}

/* Closing a TCP socket with unread bytes in its receive queue sends a
 * reset, and a reset makes the peer's kernel drop what it had not yet
 * delivered, often our ErrorResponse explaining the close (a client that
 * sent an oversized message, say).  Discarding what has arrived first lets
 * the close be an orderly FIN.  Bounded: a peer still sending gets its
 * reset. */
static void discard_unread(pgs_client *c)
{
    char junk[16384];
    for (int i = 0; i < 64; i++) {
        ssize_t n = pgs_net->recv((uv_handle_t *)&c->s.tcp, junk, sizeof(junk), MSG_DONTWAIT);
        if (n <= 0) break;
    }
}

void client_close(pgs_client *c, const char *reason)
{
    if (c->s.closing) return;
    log_debug("C-%u: closing: %s", c->id, reason);
    pool_cancel_wait(c);
    clientauth_free(c);
    pending_end(c);
    cancel_unregister(c);
    if (c->counted) atomic_fetch_sub(&g_pgs.logged_in_clients, 1);
    c->counted = false;
    if (c->is_admin) admin_client_gone(c);
    if (c->server) relay_client_gone(c);
    relay_retry_drop(c);
    rcache_client_gone(c);
    relay_unpin_all(c);
    route_client_gone(c);
    if (c->pool) pool_client_left(c->pool);
    set_state(c, CL_CLOSING);
    pgs_worker *w = c->w;
    pthread_mutex_lock(&w->lock);
    list_del(&c->node);
    pthread_mutex_unlock(&w->lock);
    atomic_fetch_sub(&w->n_clients, 1);
    atomic_fetch_sub(&g_pgs.total_clients, 1);
    discard_unread(c);
    io_close(&c->s, free_client);
}

static void send_then_close(pgs_client *c, const uint8_t *msg, size_t len, const char *reason)
{
    if (c->s.closing) return;
    io_send_quiet(c->w, &c->s, msg, len);
    pool_cancel_wait(c);
    if (c->s.wb.pending) {
        /* close once the error has reached the kernel */
        c->want_close = true;
        io_read_stop(&c->s);
        if (c->server) relay_client_gone(c);
        return;
    }
    client_close(c, reason);
}

void client_fail(pgs_client *c, const char *sqlstate, const char *msg, const char *hint)
{
    uint8_t buf[1200];
    proto_out o;
    proto_out_init(&o, buf, sizeof(buf));
    proto_error(&o, "FATAL", sqlstate, msg, hint);
    if (o.overflow) {
        proto_out_init(&o, buf, sizeof(buf));
        proto_error(&o, "FATAL", sqlstate, "error message too long", NULL);
    }
    log_info("C-%u: %s: %s", c->id, sqlstate, msg);
    metrics_note_error(c->pool, sqlstate, msg, c->database, c->user);
    send_then_close(c, buf, o.len, msg);
}

void client_server_lost(pgs_client *c, const char *why)
{
    pgs_server *sv = c->server;
    if (sv && sv->fatal_relayed) {
        /* The server said why it ended (pg_terminate_backend, an admin
         * shutdown) and the client has that FATAL: as from PostgreSQL,
         * nothing follows it but the close. */
        sv->client = NULL;
        c->server = NULL;
        rcache_unlinked(c);
        log_info("C-%u: closing after the server's FATAL: %s", c->id, why);
        if (c->s.wb.pending) {
            c->want_close = true;
            io_read_stop(&c->s);
            return;
        }
        client_close(c, why);
        return;
    }
    rcache_unlinked(c);
    if (sv) {
        /* The server is being closed by the caller; do not reset it. */
        sv->client = NULL;
        c->server = NULL;
    }
    char msg[400];
    snprintf(msg, sizeof(msg),
             "server connection lost: %s; if a transaction was in progress its outcome is "
             "unknown",
             why);
    client_fail(c, "08006", msg, "reconnect and retry the transaction");
}

void client_on_drain(pgs_client *c)
{
    if (c->want_close) {
        client_close(c, "error sent");
        return;
    }
    /* The client took what the server sent: read from the server again. */
    pgs_server *sv = c->server;
    if (!sv) {
        /* requests that arrived while the client was slow to read */
        if (!c->s.rbuf.data || c->s.rbuf.pos >= c->s.rbuf.len) return;
        int st = atomic_load_explicit(&c->state, memory_order_relaxed);
        if (st == CL_ADMIN)
            admin_data(c);
        else if (st == CL_IDLE || st == CL_ACTIVE)
            relay_client_data(c);
        return;
    }
    if (!sv->s.closing) {
        if (sv->s.rbuf.data && sv->s.rbuf.pos < sv->s.rbuf.len) relay_server_data(sv);
        if (c->server == sv && !c->s.wb.pending && !sv->s.closing &&
            io_read_start(&sv->s) < 0)
            server_close(sv, "read failed");
    }
}

void client_on_write_error(pgs_client *c, int err)
{
    client_close(c, uv_strerror(err));
}

/* --- start-up --- */

static void add_startup_setting(pgs_client *c, const char *name, const char *value)
{
    if (params_reported_index(name) >= 0) {
        params_set(&c->params, name, value);
        return;
    }
    /* A start-up parameter means what set_config() means; replay it so. */
    char stmt[1024];
    size_t len = 0;
    len += (size_t)snprintf(stmt, sizeof(stmt), "SELECT pg_catalog.set_config(E'");
    for (const char *s = name; *s && len < sizeof(stmt) - 8; s++) {
        if (*s == '\'' || *s == '\\') stmt[len++] = *s;
        stmt[len++] = *s;
    }
    len += (size_t)snprintf(stmt + len, sizeof(stmt) - len, "', E'");
    for (const char *s = value; *s && len < sizeof(stmt) - 16; s++) {
        if (*s == '\'' || *s == '\\') stmt[len++] = *s;
        stmt[len++] = *s;
    }
    if (len >= sizeof(stmt) - 16) return;
    snprintf(stmt + len, sizeof(stmt) - len, "', false)");
    char lname[128];
    size_t i;
    for (i = 0; name[i] && i < sizeof(lname) - 1; i++) lname[i] = (char)tolower((unsigned char)name[i]);
    lname[i] = '\0';
    params_set_extra(&c->params, lname, stmt);
}

/* "-c name=value --name=value" as libpq's options parameter carries them. */
static int parse_options(pgs_client *c, const char *opts)
{
    char tok[1024];
    const char *s = opts;
    bool want_c = false;
    while (*s) {
        while (*s == ' ' || *s == '\t') s++;
        if (!*s) break;
        size_t n = 0;
        while (*s && *s != ' ' && *s != '\t') {
            if (*s == '\\' && s[1]) s++;
            if (n < sizeof(tok) - 1) tok[n++] = *s;
            s++;
        }
        tok[n] = '\0';
        const char *kv = NULL;
        if (want_c) {
            kv = tok;
            want_c = false;
        } else if (strcmp(tok, "-c") == 0) {
            want_c = true;
            continue;
        } else if (strncmp(tok, "-c", 2) == 0) {
            kv = tok + 2;
        } else if (strncmp(tok, "--", 2) == 0) {
            kv = tok + 2;
        } else {
            return -1;
        }
        char *eq = strchr(kv, '=');
        if (!eq || eq == kv) return -1;
        *eq = '\0';
        for (char *d = (char *)kv; *d; d++)
            if (*d == '-') *d = '_';
        add_startup_setting(c, kv, eq + 1);
    }
    return want_c ? -1 : 0;
}

/* AuthenticationOk, the parameters, BackendKeyData with `pid` and our
 * key, ReadyForQuery.  -1 when the client was failed or closed instead. */
static int write_welcome(pgs_client *c, uint32_t pid)
{
    pgs_pool_shared *sh = c->pool->sh;
    uint8_t buf[8192];
    proto_out o;
    proto_out_init(&o, buf, sizeof(buf));
    proto_auth_request(&o, 0, NULL, 0);
    pthread_mutex_lock(&sh->lock);
    /* An idle client should cost little: one that brought no settings
     * shares its worker's copy of the welcome parameters until it sets
     * something; one that did gets the rest filled in. */
    if (!c->pool->welcome_params)
        c->pool->welcome_params = params_from_lists(sh->n_welcome, sh->welcome_names,
                                                    sh->welcome_values);
    if (!c->params)
        c->params = params_ref(c->pool->welcome_params);
    else
        params_fill_from(&c->params, c->pool->welcome_params);
    for (int i = 0; i < sh->n_welcome; i++) {
        const char *name = sh->welcome_names[i];
        const char *mine = params_get(c->params, name);
        proto_parameter_status(&o, name, mine ? mine : sh->welcome_values[i]);
    }
    pthread_mutex_unlock(&sh->lock);
    proto_backend_key(&o, pid, c->cancel_key);
    proto_ready_for_query(&o, 'I');
    if (o.overflow) {
        client_fail(c, "54000", "server parameters too large to relay", NULL);
        return -1;
    }
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)o.len);
    if (io_send(c->w, &c->s, &b, 1) < 0) {
        client_close(c, "write failed");
        return -1;
    }
    return 0;
}

/* Transaction mode: the welcome with our own pid; a server is taken at
 * the first request. */
static void send_welcome(pgs_client *c)
{
    if (write_welcome(c, worker_client_pid(c)) < 0) return;
    set_state(c, CL_IDLE);
    c->tx_status = 'I';
    log_debug("C-%u: logged in as user=%s db=%s", c->id, c->user, c->database);
    relay_client_data(c); /* anything pipelined after the start-up packet */
}

void client_reroute(pgs_client *c)
{
    if (c->login_checkout || atomic_load_explicit(&c->state, memory_order_relaxed) == CL_WELCOME) {
        /* Still logging in: it waited for a server of its own pool (its
         * session's, or one to learn the welcome's parameters from), on a
         * node that cannot serve it now.  It belongs to the pool of the
         * node routing gives now, and waits there. */
        pgs_pool *p = pool_get(c->w, route_home_node(c), c->user, c->database);
        if (p != c->pool) {
            char msg[400], hint[300];
            pool_client_left(c->pool);
            c->pool = NULL;
            if (pool_admit_client(p, msg, sizeof(msg), hint, sizeof(hint)) < 0) {
                client_fail(c, "53300", msg, hint);
                return;
            }
            c->pool = p;
        }
        bool welcome = !c->login_checkout;
        if (welcome && pool_has_welcome(c->pool->sh)) {
            send_welcome(c);
            return;
        }
        pool_checkout(c->pool, c);
        if (welcome && atomic_load_explicit(&c->state, memory_order_relaxed) == CL_WAITING)
            set_state(c, CL_WELCOME);
        return;
    }
    atomic_store_explicit(&c->state, CL_IDLE, memory_order_relaxed);
    relay_client_data(c);
}

void client_server_ready(pgs_client *c, pgs_server *sv)
{
    if (c->login_checkout) {
        /* Session mode: this server is the client's for its whole session,
         * as a backend is a direct connection's, and its pid is the one
         * the client is told.  The welcome goes first; then the link,
         * which restores the start-up settings and forwards whatever the
         * client pipelined after its start-up packet. */
        c->login_checkout = false;
        if (write_welcome(c, sv->backend_pid) < 0) {
            pool_release(sv);
            return;
        }
        cancel_register(c, sv->backend_pid);
        c->tx_status = 'I';
        log_debug("C-%u: logged in as user=%s db=%s on S-%u (backend pid %u)", c->id, c->user,
                  c->database, sv->id, sv->backend_pid);
        relay_link(c, sv);
        return;
    }
    if (atomic_load_explicit(&c->state, memory_order_relaxed) == CL_WELCOME) {
        /* We only needed the server's parameters. */
        pool_release(sv);
        send_welcome(c);
        return;
    }
    relay_link(c, sv);
}

static void send_negotiate(pgs_client *c, const proto_startup *su)
{
    /* A newer minor version or _pq_ options: answer like PostgreSQL does. */
    uint8_t buf[2048];
    proto_out o;
    proto_out_init(&o, buf, sizeof(buf));
    size_t st = proto_begin(&o, 'v');
    proto_put_int32(&o, (int32_t)PROTO_VERSION_3);
    int n = 0;
    for (int i = 0; i < su->n_params; i++)
        if (strncmp(su->names[i], "_pq_.", 5) == 0) n++;
    proto_put_int32(&o, n);
    for (int i = 0; i < su->n_params; i++)
        if (strncmp(su->names[i], "_pq_.", 5) == 0) proto_put_string(&o, su->names[i]);
    proto_end(&o, st);
    if (!o.overflow) io_send_quiet(c->w, &c->s, buf, o.len);
}


/* SSLRequest with TLS on: answer 'S'; everything after it is TLS. */
static void start_tls(pgs_client *c)
{
    uv_buf_t sb = uv_buf_init("S", 1);
    if (io_send(c->w, &c->s, &sb, 1) < 0) {
        client_close(c, "write failed");
        return;
    }
    struct ssl_st *ssl = tls_new_accept();
    char who[16];
    snprintf(who, sizeof(who), "C-%u", c->id);
    if (!ssl || io_tls_start(&c->s, ssl, who) < 0) client_close(c, "could not start TLS");
}

/* tls.mode require and up: a client without TLS is told what to change. */
static void refuse_plaintext(pgs_client *c)
{
    pgs_tls_mode m = tls_client_mode();
    char msg[200];
    snprintf(msg, sizeof(msg), "pgscale requires TLS (tls.mode=%s); connect with sslmode=require",
             tls_mode_name(m));
    client_fail(c, "28000", msg,
                m >= PGS_TLS_VERIFY_CA ? "present a client certificate signed by the CA in "
                                         "tls.ca (sslcert and sslkey)"
                                       : NULL);
}

/* tls.mode verify-full: the certificate's common name is the user name. */
static int check_cert_user(pgs_client *c, const char *user)
{
    char cn[256], msg[600];
    struct ssl_st *ssl = io_tls_ssl(&c->s);
    if (!ssl || tls_peer_cn(ssl, cn, sizeof(cn)) < 0) {
        snprintf(msg, sizeof(msg),
                 "certificate authentication failed for user \"%s\": the client certificate has "
                 "no usable common name (tls.mode=verify-full)",
                 user);
        client_fail(c, "28000", msg, NULL);
        return -1;
    }
    if (strcmp(cn, user) != 0) {
        snprintf(msg, sizeof(msg),
                 "certificate authentication failed for user \"%s\": the client certificate is "
                 "for \"%s\" (tls.mode=verify-full needs its common name to be the user name)",
                 user, cn);
        client_fail(c, "28000", msg, NULL);
        return -1;
    }
    return 0;
}

static void handle_startup(pgs_client *c)
{
    pgs_buf *b = &c->s.rbuf;
    for (;;) {
        if (!b->data || b->pos >= b->len) return;
        proto_startup su;
        if (b->len - b->pos >= 4 &&
            proto_be32(b->data + b->pos) > g_pgs.cfg->max_startup_packet_size) {
            client_fail(c, "08P01", "startup packet too long",
                        "max_startup_packet_size in the configuration file sets the limit");
            return;
        }
        int rc = proto_read_startup(b->data + b->pos, b->len - b->pos, &su);
        if (rc == PROTO_NEED_MORE) return;
        if (rc < 0) {
            client_fail(c, "08P01", "invalid startup packet layout or length", NULL);
            return;
        }
        if (c->refused && su.code != PROTO_CANCEL_CODE) {
            /* no TLS for a refused connection: 'N', then the refusal */
            if ((su.code == PROTO_SSL_CODE || su.code == PROTO_GSSENC_CODE) &&
                !io_is_tls(&c->s)) {
                b->pos += su.len;
                io_send_quiet(c->w, &c->s, (const uint8_t *)"N", 1);
                continue;
            }
            refuse_pending(c);
            return;
        }
        if (su.code == PROTO_SSL_CODE && !io_is_tls(&c->s) && tls_accepting() &&
            !c->unix_socket) {
            b->pos += su.len;
            start_tls(c);
            return;
        }
        if ((su.code == PROTO_SSL_CODE || su.code == PROTO_GSSENC_CODE) && io_is_tls(&c->s)) {
            client_fail(c, "08P01", "encryption requested on a connection that already uses TLS",
                        NULL);
            return;
        }
        if (su.code == PROTO_SSL_CODE || su.code == PROTO_GSSENC_CODE) {
            b->pos += su.len;
            uv_buf_t nb = uv_buf_init("N", 1);
            if (io_send(c->w, &c->s, &nb, 1) < 0) {
                client_close(c, "write failed");
                return;
            }
            continue;
        }
        if (su.code == PROTO_CANCEL_CODE) {
            if (!cancel_route_session(su.cancel_pid, su.cancel_key))
                worker_route_cancel(su.cancel_pid, su.cancel_key);
            client_close(c, "cancel request handled");
            return;
        }
        if (su.code >> 16 != 3) {
            char msg[160];
            snprintf(msg, sizeof(msg),
                     "unsupported frontend protocol %u.%u: pgscale supports 3.0",
                     su.code >> 16, su.code & 0xffff);
            client_fail(c, "08P01", msg, NULL);
            return;
        }
        if (!io_is_tls(&c->s) && !c->unix_socket && tls_client_mode() >= PGS_TLS_REQUIRE) {
            refuse_plaintext(c);
            return;
        }
        bool negotiate = (su.code & 0xffff) != 0;
        const char *user = proto_startup_get(&su, "user");
        const char *db = proto_startup_get(&su, "database");
        const char *app = proto_startup_get(&su, "application_name");
        if (!user || !*user) {
            client_fail(c, "28000", "no PostgreSQL user name specified in startup packet", NULL);
            return;
        }
        if (!db || !*db) db = user;
        if (tls_client_mode() == PGS_TLS_VERIFY_FULL && check_cert_user(c, user) < 0) return;
        if (proto_startup_get(&su, "replication")) {
            const char *r = proto_startup_get(&su, "replication");
            if (strcmp(r, "false") != 0 && strcmp(r, "0") != 0 && strcmp(r, "off") != 0) {
                client_fail(c, "08P01", "replication connections are not supported by pgscale",
                            "connect replication clients to PostgreSQL directly");
                return;
            }
        }
        size_t ul = strlen(user), dl = strlen(db), al = app ? strlen(app) : 0;
        /* "app@replica": database app, on a replica for the whole session
         * (route.c); the rest of pgscale (hba rules, pools, the server)
         * sees the name without the suffix */
        if (dl > REPLICA_SUFFIX_LEN &&
            strcmp(db + dl - REPLICA_SUFFIX_LEN, REPLICA_SUFFIX) == 0) {
            dl -= REPLICA_SUFFIX_LEN;
            c->want_replica = true;
        }
        c->user = pgs_xmalloc(ul + dl + al + 3);
        memcpy(c->user, user, ul + 1);
        c->database = c->user + ul + 1;
        memcpy(c->database, db, dl);
        c->database[dl] = '\0';
        c->app_name = c->database + dl + 1;
        memcpy(c->app_name, app ? app : "", al + 1);
        for (int i = 0; i < su.n_params; i++) {
            const char *n = su.names[i];
            if (!strcmp(n, "user") || !strcmp(n, "database") || !strcmp(n, "replication") ||
                !strncmp(n, "_pq_.", 5))
                continue;
            if (!strcmp(n, "options")) {
                if (parse_options(c, su.values[i]) < 0) {
                    client_fail(c, "08P01", "invalid command-line options in startup packet",
                                "use -c name=value");
                    return;
                }
                continue;
            }
            add_startup_setting(c, n, su.values[i]);
        }
        b->pos += su.len;
        if (negotiate) send_negotiate(c, &su);
        int ar = clientauth_begin(c);
        if (ar == 1) {
            set_state(c, CL_AUTH);
            /* A client that knows the method may send its answer in the
             * start-up packet's segment, as PostgreSQL accepts: it is read
             * now, not when (if ever) more bytes arrive. */
            if (b->data && b->pos < b->len && clientauth_data(c) == 0) client_after_auth(c);
        }
        if (ar == 0) client_after_auth(c);
        return;
    }
}

/* The client is who it says: admin console, or a pool. */
void client_after_auth(pgs_client *c)
{
    pending_end(c);
    if (strcmp(c->database, ADMIN_DBNAME) == 0) {
        /* admin_users / stats_users decide by name; refused: already failed */
        if (admin_login(c) < 0) return;
        set_state(c, CL_ADMIN);
        c->is_admin = true;
        admin_welcome(c);
        return;
    }
    /* Only logged-in clients count: connections still logging in have
     * their own bounds (pending_begin), so that they cannot lock out
     * clients that can log in. */
    c->counted = true;
    if (atomic_fetch_add(&g_pgs.logged_in_clients, 1) >= g_pgs.cfg->max_client_conn) {
        char msg[200];
        snprintf(msg, sizeof(msg), "too many clients already (max_client_conn is %d)",
                 g_pgs.cfg->max_client_conn);
        client_fail(c, "53300", msg, "raise PGSCALE_MAX_CLIENT_CONN");
        return;
    }
    pgs_pool *p = pool_get(c->w, route_home_node(c), c->user, c->database);
    char msg[400], hint[300];
    if (pool_admit_client(p, msg, sizeof(msg), hint, sizeof(hint)) < 0) {
        client_fail(c, "53300", msg, hint);
        return;
    }
    c->pool = p;
    /* fixed for the client's lifetime: a RELOAD that changes the mode
     * applies to clients that log in after it */
    c->pool_mode = (uint8_t)atomic_load(&p->sh->pool_mode);
    if (c->pool_mode == PGS_POOL_SESSION) {
        /* The server comes first (client_server_ready): a client that
         * waits for it is queued like any other (pool_timeout and its
         * error apply), and stays read so that one that leaves is noticed
         * and taken out of the queue. */
        c->login_checkout = true;
        pool_checkout(c->pool, c);
        return;
    }
    if (pool_has_welcome(c->pool->sh)) {
        send_welcome(c);
    } else {
        set_state(c, CL_WELCOME);
        io_read_stop(&c->s);
        pool_checkout(c->pool, c);
        /* pool_checkout sets CL_WAITING when it queues; keep WELCOME */
        if (atomic_load_explicit(&c->state, memory_order_relaxed) == CL_WAITING)
            set_state(c, CL_WELCOME);
    }
}

void client_on_read(pgs_client *c, ssize_t nread)
{
    if (nread == UV_ENOBUFS) {
        /* The read buffer is full (a client that pipelines more than a
         * buffer while it waits for a server): stop reading until what it
         * holds is forwarded; relay_client_data reads again after that. */
        io_read_stop(&c->s);
        return;
    }
    if (nread < 0) {
        client_close(c, nread == UV_EOF ? "client disconnected" : uv_strerror((int)nread));
        return;
    }
    c->last_activity_us = pgs_now_us();
    switch (atomic_load_explicit(&c->state, memory_order_relaxed)) {
    case CL_STARTUP:
        handle_startup(c);
        break;
    case CL_AUTH:
        if (clientauth_data(c) == 0) client_after_auth(c);
        break;
    case CL_ADMIN:
        admin_data(c);
        break;
    case CL_WELCOME:
        io_read_stop(&c->s);
        break;
    case CL_WAITING:
        /* Keep reading while queued (a client that leaves is noticed at
         * once, and stopping and restarting costs two epoll_ctl calls per
         * wait); stop only when the buffer fills. */
        if (c->s.rbuf.cap - (c->s.rbuf.len - c->s.rbuf.pos) < c->s.rbuf.cap / 2)
            io_read_stop(&c->s);
        break;
    case CL_IDLE:
    case CL_ACTIVE:
        relay_client_data(c);
        break;
    default:
        break;
    }
}

void client_accept(pgs_worker *w, uv_stream_t *listener)
{
    pgs_client *c = pgs_xcalloc(1, sizeof(*c));
    c->w = w;
    c->id = ++w->next_id;
    list_init(&c->node);
    list_init(&c->wait_node);
    c->unix_socket = listener->type == UV_NAMED_PIPE;
    io_sock_init(w, &c->s, PGS_SOCK_CLIENT, c, c->unix_socket);
    if (pgs_net->accept(listener, (uv_stream_t *)&c->s.tcp) < 0) {
        c->s.closing = true;
        pgs_net->close((uv_handle_t *)&c->s.tcp, free_client);
        return;
    }
    /* Descriptors are handed out lowest first, so a high one means few are
     * left: keep those for server connections and cancels, and tell this
     * client why it is refused (libuv's own out-of-descriptors handling
     * would close it without a word). */
    int fd;
    if (g_pgs.fd_limit > 0 && pgs_net->fileno((uv_handle_t *)&c->s.tcp, &fd) == 0 &&
        fd >= g_pgs.fd_limit - fd_reserve()) {
        uint8_t buf[256];
        proto_out o;
        proto_out_init(&o, buf, sizeof(buf));
        proto_error(&o, "FATAL", "53300",
                    "pgscale is out of file descriptors and cannot accept more clients",
                    "raise the open-files limit (ulimit -n) of pgscale");
        ssize_t wr = write(fd, buf, o.len);
        PGS_UNUSED(wr);
        log_warn("worker %d: near the open-files limit (%d); refused a client", w->id,
                 g_pgs.fd_limit);
        c->s.closing = true;
        pgs_net->close((uv_handle_t *)&c->s.tcp, free_client);
        return;
    }
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    if (c->unix_socket)
        snprintf(c->addr, sizeof(c->addr), "[local]");
    else
        pgs_net->tcp_nodelay(&c->s.tcp, 1);
    if (!c->unix_socket && pgs_net->tcp_getpeername(&c->s.tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&ss, c->addr, sizeof(c->addr));
            c->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
            c->port = ntohs(s6->sin6_port);
            if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
                /* An IPv4 client of a dual-stack ([::]) listener arrives
                 * as ::ffff:a.b.c.d.  It is an IPv4 client: auth.hba's IPv4
                 * rules (a reject among them) must match it, and logs and
                 * SHOW CLIENTS must name it as such. */
                struct sockaddr_in s4 = {.sin_family = AF_INET, .sin_port = s6->sin6_port};
                memcpy(&s4.sin_addr, &s6->sin6_addr.s6_addr[12], 4);
                uv_ip4_name(&s4, c->addr, sizeof(c->addr));
            } else {
                uv_ip6_name(s6, c->addr, sizeof(c->addr));
            }
        }
    }
    if (RAND_bytes((unsigned char *)&c->cancel_key, sizeof(c->cancel_key)) != 1)
        c->cancel_key = (uint32_t)pgs_now_us() ^ 0x5bd1e995u;
    c->connect_us = c->last_activity_us = pgs_now_us();
    c->tx_status = 'I';
    set_state(c, CL_STARTUP);
    pthread_mutex_lock(&w->lock);
    list_add_tail(&w->clients, &c->node);
    pthread_mutex_unlock(&w->lock);
    atomic_fetch_add(&w->n_clients, 1);
    atomic_fetch_add(&g_pgs.total_clients, 1);
    /* A refused connection is told why at its first packet, not at once:
     * libpq (sslmode=prefer, its default) first sends an SSLRequest and
     * shows an error that answers it only as "error response during SSL
     * exchange".  Until then it is read, but has no login slot. */
    c->refused = (uint8_t)pending_begin(c);
    if (io_read_start(&c->s) < 0) client_close(c, "read failed");
}

/* --- cancel --- */

typedef struct cancel_req {
    union {                 /* as the server's node: TCP or Unix socket */
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    };
    uv_connect_t conn;
    uv_write_t wr;
    uint8_t buf[16];
} cancel_req;

static void cancel_closed(uv_handle_t *h)
{
    free(h->data);
}

/* The loop may be shutting down and have closed the handle already. */
static void cancel_done(cancel_req *r)
{
    if (!pgs_net->is_closing((uv_handle_t *)&r->tcp)) pgs_net->close((uv_handle_t *)&r->tcp, cancel_closed);
}

static void cancel_written(uv_write_t *wr, int status)
{
    PGS_UNUSED(status);
    cancel_done(wr->data);
}

static void cancel_connected(uv_connect_t *conn, int status)
{
    cancel_req *r = conn->data;
    if (status < 0) {
        cancel_done(r);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)r->buf, 16);
    r->wr.data = r;
    if (pgs_net->write(&r->wr, (uv_stream_t *)&r->tcp, &b, 1, cancel_written) < 0) cancel_done(r);
}

void client_forward_cancel(pgs_client *c)
{
    pgs_server *sv = c->server;
    /* Only a query that is running on a server for this client is
     * cancelled; otherwise a cancel could hit another client's query. */
    if (!sv || sv->exq.count == 0) return;
    cancel_req *r = pgs_xcalloc(1, sizeof(*r));
    proto_out o;
    proto_out_init(&o, r->buf, sizeof(r->buf));
    proto_cancel_request(&o, sv->backend_pid, sv->backend_key);
    /* to the node the server is on */
    const pgs_endpoint *ep = &sv->pool->sh->node->ep;
    endpoint_handle_init(ep, &c->w->loop, (uv_handle_t *)&r->tcp);
    r->tcp.data = r;
    r->conn.data = r;
    log_info("C-%u: forwarding cancel to S-%u (backend pid %u)", c->id, sv->id, sv->backend_pid);
    sv->cancelled_us = pgs_now_us();
    if (endpoint_connect(ep, &r->conn, (uv_handle_t *)&r->tcp, cancel_connected) < 0)
        pgs_net->close((uv_handle_t *)&r->tcp, cancel_closed);
}

/* --- time bounds --- */

/* While draining, a client quiet this long between requests is closed. */
#define DRAIN_IDLE_US 250000u

void client_janitor(pgs_worker *w, uint64_t now)
{
    const pgs_config *cfg = w->cfg;
    uint64_t login_to = (uint64_t)cfg->client_login_timeout_ms * 1000u;
    uint64_t startup_to = (uint64_t)cfg->client_startup_timeout_ms * 1000u;
    uint64_t idle_tx_to = (uint64_t)cfg->idle_transaction_timeout_ms * 1000u;
    uint64_t idle_to = (uint64_t)cfg->client_idle_timeout_ms * 1000u;
    uint64_t query_to = (uint64_t)cfg->query_timeout_ms * 1000u;
    pgs_list *it = w->clients.next;
    while (it != &w->clients) {
        pgs_client *c = list_entry(it, pgs_client, node);
        it = it->next;
        int st = atomic_load_explicit(&c->state, memory_order_relaxed);
        uint64_t quiet = pgs_elapsed_us(now, c->last_activity_us);
        /* between transactions: in transaction mode CL_IDLE; in session
         * mode the client keeps its server and is CL_ACTIVE */
        bool between = st == CL_IDLE || (st == CL_ACTIVE && c->server &&
                                         c->server->exq.count == 0 && c->tx_status == 'I' &&
                                         c->fwd_remaining == 0);
        if (st == CL_STARTUP && c->refused &&
            pgs_elapsed_us(now, c->connect_us) > PGS_MIN(REFUSED_WAIT_US, startup_to)) {
            refuse_pending(c);
        } else if ((st == CL_STARTUP || st == CL_AUTH) &&
                   pgs_elapsed_us(now, c->connect_us) > login_to) {
            client_fail(c, "08006", "client did not finish logging in in time",
                        "raise PGSCALE_CLIENT_LOGIN_TIMEOUT");
        } else if (st == CL_STARTUP && pgs_elapsed_us(now, c->connect_us) > startup_to) {
            /* A real client sends its start-up packet (after TLS, if it
             * asks for it) at once; one that has not is holding a slot of
             * max_pending_logins, so it gets a shorter bound than a client
             * that is answering a password request. */
            client_fail(c, "08006", "client did not send a complete startup packet in time",
                        "raise PGSCALE_CLIENT_STARTUP_TIMEOUT");
        } else if (st == CL_ACTIVE && idle_tx_to && c->server && c->server->exq.count == 0 &&
                   c->tx_status != 'I' && quiet > idle_tx_to) {
            client_fail(c, "25P03",
                        "terminating connection due to idle-in-transaction timeout",
                        "commit or roll back sooner, or raise "
                        "PGSCALE_IDLE_TRANSACTION_TIMEOUT");
        } else if (st == CL_ACTIVE && query_to && c->server && c->server->exq.count > 0 &&
                   c->query_start_us && pgs_elapsed_us(now, c->query_start_us) > query_to &&
                   !c->cancel_sent) {
            c->cancel_sent = true;
            client_forward_cancel(c);
        } else if ((between || (st == CL_ADMIN && !c->admin_wait)) && idle_to &&
                   quiet > idle_to) {
            /* (a console client waiting for PAUSE / WAIT_CLOSE is not idle) */
            client_fail(c, "57P05", "terminating connection due to client idle timeout",
                        "raise PGSCALE_CLIENT_IDLE_TIMEOUT");
        } else if (w->draining &&
                   (((between || st == CL_ADMIN) && quiet > DRAIN_IDLE_US) ||
                    ((st == CL_STARTUP || st == CL_AUTH) &&
                     pgs_elapsed_us(now, c->connect_us) > DRAIN_IDLE_US))) {
            /* Draining: a request that arrives is still served (an error
             * would reach the application; a closed idle connection is
             * only reconnected, to the next instance); connections are
             * closed at their first pause between requests, and one still
             * logging in after a quarter of a second (a password exchange
             * the peer does not finish would otherwise hold the old
             * instance for the whole login timeout) is told to reconnect. */
            client_fail(c, "57P01", "terminating connection because pgscale is shutting down",
                        NULL);
        }
    }
}

void client_close_all(pgs_worker *w)
{
    while (!list_empty(&w->clients)) {
        pgs_client *c = list_entry(w->clients.next, pgs_client, node);
        client_close(c, "shutting down");
    }
}
