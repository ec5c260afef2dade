/* Server connections: opening (TCP connect, TLS as server_tls.sslmode
 * asks, StartupMessage, the authentication exchange), closing with a
 * reason, and moving an idle connection (with its TLS session) to another
 * worker.  Once logged in, bytes are relay.c's. */
#include "clientauth.h"
#include "server.h"
#include "route.h"
#include "topology.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "client.h"
#include "io.h"
#include "net.h"
#include "params.h"
#include "pool.h"
#include "prepared.h"
#include "proto.h"
#include "relay.h"
#include "tls.h"
#include "worker.h"

#define LOGIN_MAX_MSG (64 * 1024)

static const char *const state_names[] = {"connecting", "login", "idle", "active", "reset",
                                          "closing"};

const char *server_state_name(int state)
{
    if (state < 0 || state >= (int)PGS_ARRAY_LEN(state_names)) return "?";
    return state_names[state];
}

/* Release: SHOW SERVERS (another worker) reads the state with acquire. */
static void set_state(pgs_server *sv, int st)
{
    atomic_store_explicit(&sv->state, st, memory_order_release);
}

static void free_login_params(pgs_server *sv);

/* Server connections by backend pid, for notifications: a client that
 * compares a notification's sender pid with the pid it was given (to skip
 * its own, say) must see the pid pgscale gave the sending client, not the
 * backend's.  A mutex, taken at login, at free and per notification only. */
static htab pid_tab;
static pthread_mutex_t pid_lock = PTHREAD_MUTEX_INITIALIZER;

static void pid_list(pgs_server *sv)
{
    sv->pid_node.hash = pgs_hash64(&sv->backend_pid, sizeof(sv->backend_pid));
    pthread_mutex_lock(&pid_lock);
    htab_insert(&pid_tab, &sv->pid_node);
    pthread_mutex_unlock(&pid_lock);
    sv->pid_listed = true;
}

static void pid_unlist(pgs_server *sv)
{
    if (!sv->pid_listed) return;
    pthread_mutex_lock(&pid_lock);
    htab_remove(&pid_tab, &sv->pid_node);
    pthread_mutex_unlock(&pid_lock);
    sv->pid_listed = false;
}

uint32_t server_sender_pid(uint32_t backend_pid)
{
    uint64_t h = pgs_hash64(&backend_pid, sizeof(backend_pid));
    uint32_t pid = backend_pid;
    pthread_mutex_lock(&pid_lock);
    for (htab_node *n = htab_first(&pid_tab, h); n; n = n->next) {
        pgs_server *sv = htab_entry(n, pgs_server, pid_node);
        if (n->hash == h && sv->backend_pid == backend_pid) {
            uint32_t cp = atomic_load_explicit(&sv->client_pid, memory_order_relaxed);
            if (cp) pid = cp;
            break;
        }
    }
    pthread_mutex_unlock(&pid_lock);
    return pid;
}

static void free_server(uv_handle_t *h)
{
    pgs_server *sv = h->data;
    pgs_worker *w = sv->w;
    pid_unlist(sv);
    free_login_params(sv); /* a login that ended half-way */
    io_buf_free(w, &sv->s);
    exq_free(&sv->exq);
    params_free(sv->params);
    params_free(sv->login_params);
    stmt_set_free(sv->prepared);
    if (sv->scram) OPENSSL_cleanse(sv->scram, sizeof(*sv->scram)); /* holds the password */
    free(sv->scram);
    free(sv->pending_set_name);
    free(sv->pending_set_stmt);
    free(sv);
}

static void unlist(pgs_server *sv)
{
    pgs_pool *p = sv->pool;
    if (sv->node.next != &sv->node) {
        list_del(&sv->node);
        int st = atomic_load_explicit(&sv->state, memory_order_relaxed);
        if (st == SV_IDLE)
            pgs_count(&p->n_idle, -1);
        else if (st == SV_CONNECTING || st == SV_LOGIN)
            pool_login_ended(p);
        else
            pgs_count(&p->n_used, -1);
    }
    pthread_mutex_lock(&sv->w->lock);
    list_del(&sv->all_node);
    pthread_mutex_unlock(&sv->w->lock);
}

/* Where sv connects: its pool's node. */
static const pgs_endpoint *node_ep(const pgs_server *sv)
{
    return &sv->pool->sh->node->ep;
}

void server_close(pgs_server *sv, const char *reason)
{
    if (sv->s.closing) return;
    log_debug("S-%u: closing: %s", sv->id, reason);
    /* a write's position was being read: the client's reads must not
     * trust the replicas until the monitor has read the primary again */
    if (sv->lsn_pending && sv->client) route_lsn_unknown(sv->client);
    if (sv->client) {
        sv->client->server = NULL;
        sv->client = NULL;
    }
    unlist(sv);
    set_state(sv, SV_CLOSING);
    pool_server_gone(sv);
    io_close(&sv->s, free_server);
}

static void login_failed(pgs_server *sv, bool server_error, const char *sqlstate,
                         const char *msg)
{
    if (pool_failure_is_news(sv->pool, msg))
        log_warn("S-%u: login to %s as user=%s db=%s failed: %s", sv->id,
                 node_ep(sv)->text, sv->pool->sh->user, sv->pool->sh->database, msg);
    pool_server_failed(sv->pool, server_error, sqlstate, msg);
    server_close(sv, "login failed");
}

static int send_bytes(pgs_server *sv, const uint8_t *p, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    return io_send(sv->w, &sv->s, &b, 1);
}

static void login_data(pgs_server *sv);

static void send_startup(pgs_server *sv)
{
    const char *names[2] = {"user", "database"};
    const char *values[2] = {sv->pool->sh->user, sv->pool->sh->database};
    /* databases.<name>.dbname: the name on the server */
    const pgs_db_config *dbc = config_find_database(g_pgs.cfg, sv->pool->sh->database);
    if (dbc && dbc->dbname) values[1] = dbc->dbname;
    uint8_t buf[1024];
    proto_out o;
    proto_out_init(&o, buf, sizeof(buf));
    proto_startup_message(&o, 2, names, values);
    if (o.overflow || send_bytes(sv, buf, o.len) < 0)
        login_failed(sv, false, "08006", "could not send the startup message to the server");
}

static void on_connect(uv_connect_t *req, int status)
{
    pgs_server *sv = req->data;
    if (sv->s.closing) return;
    if (status < 0) {
        char msg[600];
        endpoint_connect_error(node_ep(sv), status, msg, sizeof(msg));
        login_failed(sv, false, "08006", msg);
        return;
    }
    if (!sv->on_unix) pgs_net->tcp_nodelay(&sv->s.tcp, 1);
    set_state(sv, SV_LOGIN);
    if (io_read_start(&sv->s) < 0) {
        login_failed(sv, false, "08006", "could not read from the server");
        return;
    }
    /* Over a Unix socket TLS does not apply (libpq does not ask for it
     * there either, whatever sslmode says). */
    if (!sv->on_unix && tls_server_sslmode() != PGS_SSLMODE_DISABLE) {
        /* As libpq: ask for TLS first; the answer is one byte. */
        uint8_t req[8];
        proto_put_be32(req, 8);
        proto_put_be32(req + 4, PROTO_SSL_CODE);
        sv->tls_step = 1;
        if (send_bytes(sv, req, sizeof(req)) < 0)
            login_failed(sv, false, "08006", "could not send SSLRequest to the server");
        return;
    }
    send_startup(sv);
}

/* The server's answer to SSLRequest: 'S' starts the TLS handshake, 'N'
 * goes on in plaintext where server_tls.sslmode allows it. */
static void tls_answer(pgs_server *sv)
{
    pgs_buf *b = &sv->s.rbuf;
    if (!b->data || b->pos >= b->len) return;
    uint8_t answer = b->data[b->pos];
    pgs_sslmode mode = tls_server_sslmode();
    char msg[600];
    if (answer == 'E') {
        /* an error before any negotiation (fork failure, say): read it as
         * a login error */
        sv->tls_step = 0;
        login_data(sv);
        return;
    }
    b->pos++;
    if (answer == 'S') {
        if (b->pos < b->len) {
            /* what came with the 'S' was not encrypted: someone in between */
            login_failed(sv, false, "08P01",
                         "server sent unencrypted data after its answer to SSLRequest");
            return;
        }
        io_buf_release_if_empty(sv->w, &sv->s);
        char err[200], who[16];
        struct ssl_st *ssl = tls_new_connect(err, sizeof(err));
        if (!ssl) {
            login_failed(sv, false, "08006", err);
            return;
        }
        snprintf(who, sizeof(who), "S-%u", sv->id);
        sv->tls_step = 2;
        int rc = io_tls_start(&sv->s, ssl, who);
        if (rc < 0) {
            const char *te = io_tls_error(&sv->s);
            snprintf(msg, sizeof(msg), "TLS handshake with server %s failed: %s",
                     node_ep(sv)->text, te ? te : uv_strerror(rc));
            login_failed(sv, false, "08006", msg);
        }
        return;
    }
    if (answer == 'N' && (mode == PGS_SSLMODE_ALLOW || mode == PGS_SSLMODE_PREFER)) {
        sv->tls_step = 0;
        io_buf_release_if_empty(sv->w, &sv->s);
        send_startup(sv);
        return;
    }
    if (answer == 'N') {
        snprintf(msg, sizeof(msg),
                 "server %s does not accept TLS connections, but server_tls.sslmode is %s; "
                 "turn ssl on in PostgreSQL or lower server_tls.sslmode to prefer",
                 node_ep(sv)->text, tls_sslmode_name(mode));
        login_failed(sv, true, "08006", msg);
        return;
    }
    snprintf(msg, sizeof(msg), "server %s sent an invalid answer to SSLRequest (byte 0x%02x)",
             node_ep(sv)->text, answer);
    login_failed(sv, false, "08P01", msg);
}

void server_on_tls_ready(pgs_server *sv)
{
    sv->tls_step = 0;
    send_startup(sv);
}

void server_open(pgs_pool *p)
{
    pgs_worker *w = p->w;
    pgs_server *sv = pgs_xcalloc(1, sizeof(*sv));
    sv->w = w;
    sv->pool = p;
    sv->id = ++w->next_id;
    sv->transfer_to = -1;
    sv->tx_status = 'I';
    list_init(&sv->node);
    list_init(&sv->all_node);
    sv->on_unix = node_ep(sv)->is_unix;
    io_sock_init(w, &sv->s, PGS_SOCK_SERVER, sv, sv->on_unix);
    sv->connect_us = sv->login_start_us = sv->last_used_us = pgs_now_us();
    set_state(sv, SV_CONNECTING);
    list_add_tail(&p->used, &sv->node);
    pgs_count(&p->n_login, 1);
    pthread_mutex_lock(&w->lock);
    list_add_tail(&w->servers, &sv->all_node);
    pthread_mutex_unlock(&w->lock);
    sv->connect_req.data = sv;
    int rc = endpoint_connect(node_ep(sv), &sv->connect_req, (uv_handle_t *)&sv->s.tcp,
                              on_connect);
    if (rc < 0) {
        char msg[600];
        endpoint_connect_error(node_ep(sv), rc, msg, sizeof(msg));
        login_failed(sv, false, "08006", msg);
    }
}

/* The password to log in with: DATABASE_URL's for its own user, else the
 * users file's or auth.query's (plaintext, or an md5 secret: *is_md5),
 * copied into buf, which the caller wipes. */
#define SERVER_PW_MAX 256
static const char *server_password(pgs_server *sv, bool *is_md5, char *buf)
{
    const pgs_url *u = &g_pgs.cfg->primary;
    *is_md5 = false;
    if (u->password && u->user && strcmp(u->user, sv->pool->sh->user) == 0) return u->password;
    if (u->password && !u->user) return u->password;
    int kind;
    if (!clientauth_user_secret(sv->pool->sh->user, &kind, buf, SERVER_PW_MAX)) return NULL;
    *is_md5 = kind == AUTH_SECRET_MD5;
    return buf;
}

static void no_password(pgs_server *sv)
{
    char msg[400];
    snprintf(msg, sizeof(msg),
             "the server asks for a password for user \"%s\", but pgscale has none for that "
             "user (give it in DATABASE_URL or auth.file, or log in once with SCRAM)",
             sv->pool->sh->user);
    login_failed(sv, true, "28P01", msg);
}

static int need_password(pgs_server *sv, const char **pw, char *buf)
{
    bool is_md5;
    *pw = server_password(sv, &is_md5, buf);
    if (*pw && !is_md5) return 0;
    if (*pw) {
        login_failed(sv, true, "28P01",
                     "the server asks for a password in clear text, but pgscale has only an md5 "
                     "secret for this user");
        return -1;
    }
    no_password(sv);
    return -1;
}

/* Whether the bytes to this server are safe from anyone on the path, so
 * that a password may be sent as it is: TLS, or a Unix socket (only the
 * kernel, and root, sees what crosses one, as PostgreSQL's own "local"
 * lines assume). */
static bool transport_protects_password(const pgs_server *sv)
{
    return sv->on_unix || io_is_tls(&sv->s);
}

/* server_tls.channel_binding=require and this login cannot be bound. */
static void cbind_required(pgs_server *sv, const char *why)
{
    char msg[600];
    snprintf(msg, sizeof(msg),
             "channel binding is required (server_tls.channel_binding=require), but %s; "
             "connect to the server over TLS (server_tls.sslmode=require) with "
             "scram-sha-256 in its pg_hba.conf, or set channel_binding to prefer",
             why);
    login_failed(sv, true, "28000", msg);
}

/* AuthenticationCleartextPassword: the password itself goes on the wire. */
static bool cleartext_allowed(pgs_server *sv)
{
    if (transport_protects_password(sv) || g_pgs.cfg->server_allow_cleartext_password)
        return true;
    char msg[700];
    snprintf(msg, sizeof(msg),
             "server %s asks for the password of user \"%s\" in clear text (pg_hba.conf method "
             "\"password\") on a connection without TLS; pgscale does not send it. Use "
             "scram-sha-256 in pg_hba.conf, or TLS toward the server "
             "(server_tls.sslmode=require), or allow it with server_allow_cleartext_password: "
             "on (PGSCALE_SERVER_ALLOW_CLEARTEXT_PASSWORD=on)",
             node_ep(sv)->text, sv->pool->sh->user);
    login_failed(sv, true, "28000", msg);
    return false;
}

/* AuthenticationSASL: picks the mechanism and the channel-binding flag as
 * libpq does.  SCRAM-SHA-256-PLUS over TLS (unless channel_binding is
 * disable) binds the exchange to the certificate the server presented;
 * -PLUS offered without TLS means TLS was stripped on the way (PostgreSQL
 * only offers it over TLS) and the login is refused; over TLS without
 * -PLUS the flag is 'y', which a server that did offer -PLUS (its offer
 * removed in between) detects as a downgrade.  0 with *mech, *flag and
 * cbind set, or -1 after login_failed. */
static int choose_sasl(pgs_server *sv, const uint8_t *body, uint32_t blen, size_t pos,
                       const char **mech, char *flag, unsigned char *cbind, size_t *cbind_len)
{
    bool plain = false, plus = false;
    const char *m;
    while ((m = proto_get_string(body, blen, &pos)) != NULL && *m) {
        if (strcmp(m, SCRAM_MECH) == 0) plain = true;
        if (strcmp(m, SCRAM_MECH_PLUS) == 0) plus = true;
    }
    bool tls = io_is_tls(&sv->s);
    pgs_channel_binding cb = tls_server_channel_binding();
    char msg[700];
    *cbind_len = 0;
    if (plus && !tls) {
        snprintf(msg, sizeof(msg),
                 "server %s offered SCRAM-SHA-256-PLUS on a connection without TLS (was TLS "
                 "removed by something in between?); refusing to log in",
                 node_ep(sv)->text);
        login_failed(sv, true, "08006", msg);
        return -1;
    }
    if (plus && cb != PGS_CBIND_DISABLE) {
        *cbind_len = tls_peer_cbind_data(io_tls_ssl(&sv->s), cbind);
        if (*cbind_len == 0) {
            snprintf(msg, sizeof(msg),
                     "could not hash the certificate of server %s for SCRAM channel binding "
                     "(its signature algorithm names no digest); set channel_binding to "
                     "disable",
                     node_ep(sv)->text);
            login_failed(sv, true, "28000", msg);
            return -1;
        }
        *mech = SCRAM_MECH_PLUS;
        *flag = 'p';
        return 0;
    }
    if (cb == PGS_CBIND_REQUIRE) {
        cbind_required(sv, !tls ? "the connection to the server does not use TLS"
                                : "the server does not offer SCRAM-SHA-256-PLUS");
        return -1;
    }
    if (!plain) {
        login_failed(sv, true, "28000",
                     "server offers no SASL mechanism pgscale supports (SCRAM-SHA-256)");
        return -1;
    }
    *mech = SCRAM_MECH;
    *flag = tls && cb != PGS_CBIND_DISABLE ? 'y' : 'n';
    return 0;
}

/* One authentication request from the server; pwbuf holds a copy of the
 * password while it is used. */
static int auth_step(pgs_server *sv, const uint8_t *body, uint32_t blen, char *pwbuf)
{
    size_t pos = 0;
    int32_t code;
    if (proto_get_int32(body, blen, &pos, &code) < 0) return -1;
    uint8_t out[2048];
    proto_out o;
    proto_out_init(&o, out, sizeof(out));
    const char *pw;
    bool cb_required = tls_server_channel_binding() == PGS_CBIND_REQUIRE;
    switch (code) {
    case 0: /* AuthenticationOk */
        if (sv->scram) {
            /* SCRAM must have ended with a verified server signature. */
            if (!scram_client_done(sv->scram)) {
                login_failed(sv, false, "28000",
                             "server skipped the SCRAM final message; refusing to trust it");
                return -1;
            }
        }
        /* trust or cert in pg_hba.conf: no exchange, so nothing bound */
        if (cb_required && !(sv->scram && scram_client_bound(sv->scram))) {
            cbind_required(sv, "the server let pgscale in without SCRAM (trust or cert in "
                               "its pg_hba.conf)");
            return -1;
        }
        if (sv->scram) {
            OPENSSL_cleanse(sv->scram, sizeof(*sv->scram));
            free(sv->scram);
            sv->scram = NULL;
        }
        return 0;
    case 3: /* cleartext */
        if (cb_required) {
            cbind_required(sv, "the server asks for the password in clear text");
            return -1;
        }
        if (!cleartext_allowed(sv)) return -1;
        if (need_password(sv, &pw, pwbuf) < 0) return -1;
        proto_password(&o, pw);
        break;
    case 5: { /* md5 */
        if (blen - pos < 4) return -1;
        if (cb_required) {
            cbind_required(sv, "the server asks for md5 authentication");
            return -1;
        }
        bool is_md5;
        pw = server_password(sv, &is_md5, pwbuf);
        if (!pw) {
            no_password(sv);
            return -1;
        }
        char md5[36];
        if (is_md5) {
            if (auth_md5_response_from_hash(pw, body + pos, md5) < 0) return -1;
        } else {
            auth_md5_response(sv->pool->sh->user, pw, body + pos, md5);
        }
        proto_password(&o, md5);
        break;
    }
    case 10: { /* SASL: list of mechanisms */
        const char *mech = NULL;
        char flag = 'n';
        unsigned char cbind[SCRAM_MAX_CBIND_LEN];
        size_t cbind_len = 0;
        if (sv->scram) {
            login_failed(sv, false, "08P01", "server started SASL authentication twice");
            return -1;
        }
        if (choose_sasl(sv, body, blen, pos, &mech, &flag, cbind, &cbind_len) < 0) return -1;
        bool is_md5;
        scram_keys keys;
        bool use_keys = false;
        pw = server_password(sv, &is_md5, pwbuf);
        if (!pw || is_md5) {
            /* no password: the keys of the user's last SCRAM login */
            use_keys = clientauth_user_keys(sv->pool->sh->user, &keys);
            if (!use_keys) {
                no_password(sv);
                return -1;
            }
            pw = "";
        }
        sv->scram = pgs_xcalloc(1, sizeof(scram_client));
        char first[256];
        size_t flen;
        int src = scram_client_init(sv->scram, pw);
        if (src == 0 && use_keys) src = scram_client_set_keys(sv->scram, &keys);
        if (use_keys) OPENSSL_cleanse(&keys, sizeof(keys));
        if (src == 0) src = scram_client_set_cbind(sv->scram, flag, cbind, cbind_len);
        if (src == 0)
            src = scram_client_set_max_iterations(sv->scram,
                                                  g_pgs.cfg->server_scram_max_iterations);
        if (src < 0 || scram_client_first(sv->scram, first, sizeof(first), &flen) < 0) {
            login_failed(sv, false, "28000", "SCRAM initialisation failed");
            return -1;
        }
        proto_sasl_initial(&o, mech, first, flen);
        break;
    }
    case 11: { /* SASLContinue */
        char fin[SCRAM_MAX_MSG];
        size_t flen;
        int frc = sv->scram ? scram_client_final(sv->scram, (const char *)body + pos,
                                                 blen - pos, fin, sizeof(fin), &flen)
                            : -EINVAL;
        if (frc == -ERANGE) {
            char msg[600];
            snprintf(msg, sizeof(msg),
                     "server %s asks for %d SCRAM iterations for user \"%s\", more than "
                     "server_scram_max_iterations (%d); refusing, as computing them would "
                     "stall every client of this worker. If the role's secret really uses "
                     "that many, raise server_scram_max_iterations "
                     "(PGSCALE_SERVER_SCRAM_MAX_ITERATIONS)",
                     node_ep(sv)->text, sv->scram->server_iterations,
                     sv->pool->sh->user, g_pgs.cfg->server_scram_max_iterations);
            login_failed(sv, true, "28000", msg);
            return -1;
        }
        if (frc < 0) {
            login_failed(sv, false, "28000",
                         "invalid SCRAM server-first message (or, logging in with a client's "
                         "SCRAM keys, the users file's secret differs from PostgreSQL's)");
            return -1;
        }
        proto_sasl_response(&o, fin, flen);
        break;
    }
    case 12: /* SASLFinal */
        if (!sv->scram ||
            scram_client_verify(sv->scram, (const char *)body + pos, blen - pos) < 0) {
            login_failed(sv, false, "28000",
                         "the server's SCRAM signature is wrong: it does not know the password");
            return -1;
        }
        return 0;
    default: {
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "server asks for authentication method %d, which pgscale does not support "
                 "(use scram-sha-256, md5, password or trust)",
                 code);
        login_failed(sv, true, "28000", msg);
        return -1;
    }
    }
    if (o.overflow || send_bytes(sv, out, o.len) < 0) {
        login_failed(sv, false, "08006", "could not send authentication to the server");
        return -1;
    }
    return 0;
}

static void login_param(pgs_server *sv, const uint8_t *body, uint32_t blen)
{
    size_t pos = 0;
    const char *name = proto_get_string(body, blen, &pos);
    const char *value = proto_get_string(body, blen, &pos);
    if (!name || !value) return;
    params_set(&sv->params, name, value);
    if (sv->n_login_params >= 64) return;
    int n = sv->n_login_params;
    sv->login_names = pgs_xrealloc(sv->login_names, sizeof(char *) * (size_t)(n + 1));
    sv->login_values = pgs_xrealloc(sv->login_values, sizeof(char *) * (size_t)(n + 1));
    sv->login_names[n] = pgs_xstrdup(name);
    sv->login_values[n] = pgs_xstrdup(value);
    sv->n_login_params = n + 1;
}

/* Whether the server reported name = value at login (before the 'Z'). */
static bool login_param_is(const pgs_server *sv, const char *name, const char *value)
{
    for (int i = 0; i < sv->n_login_params; i++)
        if (strcmp(sv->login_names[i], name) == 0) return strcmp(sv->login_values[i], value) == 0;
    return false;
}

static void free_login_params(pgs_server *sv)
{
    for (int i = 0; i < sv->n_login_params; i++) {
        free(sv->login_names[i]);
        free(sv->login_values[i]);
    }
    free(sv->login_names);
    free(sv->login_values);
    sv->login_names = sv->login_values = NULL;
    sv->n_login_params = 0;
}

/* Reads the server's side of the login until ReadyForQuery. */
static void login_data(pgs_server *sv)
{
    pgs_buf *b = &sv->s.rbuf;
    while (b->pos < b->len) {
        const uint8_t *p = b->data + b->pos;
        uint32_t avail = b->len - b->pos;
        uint8_t type;
        uint32_t len;
        int rc = proto_peek_header(p, avail, LOGIN_MAX_MSG, &type, &len);
        if (rc == PROTO_NEED_MORE) break;
        if (rc < 0) {
            login_failed(sv, false, "08P01", "server sent an invalid message during login");
            return;
        }
        if (avail < 1 + len) {
            if (io_buf_make_room(sv->w, &sv->s, 1 + len) < 0) return;
            break;
        }
        const uint8_t *body = p + 5;
        uint32_t blen = len - 4;
        b->pos += 1 + len;
        switch (type) {
        case 'R': {
            char pwbuf[SERVER_PW_MAX];
            int arc = auth_step(sv, body, blen, pwbuf);
            OPENSSL_cleanse(pwbuf, sizeof(pwbuf));
            if (arc < 0) return;
            break;
        }
        case 'S':
            login_param(sv, body, blen);
            break;
        case 'K':
            if (blen >= 8) {
                /* read by SHOW SERVERS from another worker */
                __atomic_store_n(&sv->backend_pid, proto_be32(body), __ATOMIC_RELAXED);
                sv->backend_key = proto_be32(body + 4);
            }
            break;
        case 'E': {
            proto_error_fields f;
            char msg[400];
            if (proto_read_error(body, blen, &f) < 0 || !f.message) f.message = "(unreadable)";
            snprintf(msg, sizeof(msg), "%s", f.message);
            login_failed(sv, true, f.sqlstate ? f.sqlstate : "08006", msg);
            return;
        }
        case 'N':
            break;
        case 'Z':
            if (len != 5 || (body[0] != 'I' && body[0] != 'T' && body[0] != 'E')) {
                login_failed(sv, false, "08P01", "server sent an invalid ReadyForQuery during login");
                return;
            }
            if (body[0] != 'I') {
                /* a new backend is never in a transaction */
                login_failed(sv, false, "08P01", "server was not idle at the end of login");
                return;
            }
            if (b->pos < b->len) {
                /* PostgreSQL says nothing after its first ReadyForQuery
                 * until asked.  Bytes left here would sit in an idle
                 * server's buffer and be read as its first client's
                 * answer. */
                login_failed(sv, false, "08P01", "server sent data after the end of its login");
                return;
            }
            if (sv->scram) {
                login_failed(sv, false, "28000", "server ended the login before SCRAM finished");
                return;
            }
            /* PostgreSQL 14 and later say at login whether they are in
             * recovery: a demoted primary's server takes no writes */
            if (login_param_is(sv, "in_hot_standby", "on") && pool_standby_refused(sv->pool)) {
                login_failed(sv, false, "08006",
                             "the server is a hot standby (in_hot_standby = on): the primary "
                             "was demoted; waiting for the monitor to follow the new primary");
                return;
            }
            pool_set_welcome(sv->pool->sh, sv->n_login_params, sv->login_names,
                             sv->login_values);
            sv->login_params = params_copy(sv->params);
            free_login_params(sv);
            io_buf_release_if_empty(sv->w, &sv->s);
            log_debug("S-%u: logged in (backend pid %u)", sv->id, sv->backend_pid);
            pid_list(sv);
            pool_server_ready(sv);
            return;
        default:
            login_failed(sv, false, "08P01", "server sent an unexpected message during login");
            return;
        }
    }
    if (b->pos == b->len) io_buf_release_if_empty(sv->w, &sv->s);
}

void server_on_read(pgs_server *sv, ssize_t nread)
{
    int st = atomic_load_explicit(&sv->state, memory_order_relaxed);
    if (nread < 0) {
        if (st == SV_CONNECTING || st == SV_LOGIN) {
            char msg[400];
            const char *te = io_tls_error(&sv->s);
            if (te) {
                /* a certificate that does not verify will not verify on
                 * the next try either: fail the waiting clients now */
                snprintf(msg, sizeof(msg), "TLS handshake with server %s failed: %s (%s=%s)",
                         node_ep(sv)->text, te, "server_tls.sslmode",
                         tls_sslmode_name(tls_server_sslmode()));
                login_failed(sv, true, "08006", msg);
                return;
            }
            snprintf(msg, sizeof(msg), "server %s closed the connection during login: %s",
                     node_ep(sv)->text, uv_strerror((int)nread));
            login_failed(sv, false, "08006", msg);
            return;
        }
        if (sv->client &&
            !relay_retry_read(sv->client, sv, true, "the PostgreSQL server closed the connection",
                              NULL)) {
            client_server_lost(sv->client, "the PostgreSQL server closed the connection");
        }
        server_close(sv, "server closed the connection");
        return;
    }
    switch (st) {
    case SV_CONNECTING:
    case SV_LOGIN:
        if (sv->tls_step == 1)
            tls_answer(sv);
        else
            login_data(sv);
        break;
    case SV_IDLE:
        /* An idle server has nothing to say; a FATAL (admin shutdown,
         * pg_terminate_backend) means it is going away. */
        server_close(sv, "idle server sent data (probably terminating)");
        break;
    default:
        relay_server_data(sv);
        break;
    }
}

void server_on_drain(pgs_server *sv)
{
    /* The server took what the client sent: read from the client again. */
    if (sv->client) relay_client_data(sv->client);
}

void server_on_write_error(pgs_server *sv, int err)
{
    if (sv->client &&
        !relay_retry_read(sv->client, sv, true, "writing to the PostgreSQL server failed", NULL))
        client_server_lost(sv->client, "writing to the PostgreSQL server failed");
    server_close(sv, uv_strerror(err));
}

int server_send_internal(pgs_server *sv, const char *sql, size_t len)
{
    if (exq_push(&sv->exq, EX_INTERNAL, NULL, NULL) < 0) return -1;
    uint8_t hdr[5];
    hdr[0] = 'Q';
    proto_put_be32(hdr + 1, (uint32_t)(len + 5));
    uv_buf_t iov[3] = {uv_buf_init((char *)hdr, 5), uv_buf_init((char *)sql, (unsigned)len),
                       uv_buf_init("", 1)};
    return io_send(sv->w, &sv->s, iov, 3);
}

static void handoff_closed(uv_handle_t *h)
{
    pgs_server *sv = h->data;
    pgs_pool_shared *sh = sv->pool->sh;
    int to = sv->transfer_to;
    pthread_mutex_lock(&sh->lock);
    list_add_tail(&sh->handoff, &sv->node);
    pthread_mutex_unlock(&sh->lock);
    pgs_worker_msg *m = pgs_xcalloc(1, sizeof(*m));
    m->kind = WM_HANDOFF;
    m->pool = sh;
    pool_ref(sh);
    worker_post(&g_pgs.workers[to], m);
}

void server_handoff(pgs_server *sv, int to)
{
    int fd, nfd;
    if (pgs_net->fileno((uv_handle_t *)&sv->s.tcp, &fd) != 0 || (nfd = pgs_net->dup(fd)) < 0) {
        server_close(sv, "could not hand over to another worker");
        return;
    }
    /* The socket keeps its kernel state; only this loop lets go of it.
     * The dup'ed descriptor travels with the struct to worker `to`. */
    unlist(sv);
    io_buf_free(sv->w, &sv->s);
    sv->handoff_tls = io_tls_detach(&sv->s); /* no close_notify: the session goes on */
    log_debug("S-%u: handing over to worker %d%s", sv->id, to, sv->handoff_tls ? " (TLS)" : "");
    sv->transfer_to = to;
    sv->handoff_fd = nfd;
    io_close(&sv->s, handoff_closed);
}

int server_adopt(pgs_worker *w, pgs_pool *p, pgs_server *sv)
{
    int fd = sv->handoff_fd;
    sv->w = w;
    sv->pool = p;
    sv->transfer_to = -1;
    list_init(&sv->node);
    list_init(&sv->all_node);
    memset(&sv->s, 0, sizeof(sv->s));
    sv->bytes_counted = 0; /* the new socket's byte counters start at zero */
    if (sv->on_unix)
        pgs_net->pipe_init(&w->loop, &sv->s.pipe, 0);
    else
        pgs_net->tcp_init(&w->loop, &sv->s.tcp);
    sv->s.tcp.data = sv;
    sv->s.kind = PGS_SOCK_SERVER;
    pthread_mutex_lock(&w->lock);
    list_add_tail(&w->servers, &sv->all_node);
    pthread_mutex_unlock(&w->lock);
    int orc = sv->on_unix ? pgs_net->pipe_open(&sv->s.pipe, fd) : pgs_net->tcp_open(&sv->s.tcp, fd);
    if (orc < 0 || io_read_start(&sv->s) < 0) {
        io_tls_discard(sv->handoff_tls);
        sv->handoff_tls = NULL;
        pgs_net->close_fd(fd);
        atomic_fetch_sub(&p->sh->open, 1);
        pthread_mutex_lock(&w->lock);
        list_del(&sv->all_node);
        pthread_mutex_unlock(&w->lock);
        sv->s.closing = true;
        pgs_net->close((uv_handle_t *)&sv->s.tcp, free_server);
        return -1;
    }
    io_tls_attach(&sv->s, sv->handoff_tls);
    sv->handoff_tls = NULL;
    set_state(sv, SV_ACTIVE);
    return 0;
}

void server_check_login_timeouts(pgs_pool *p, uint64_t now)
{
    const pgs_config *cfg = g_pgs.cfg;
    pgs_list *it = p->used.next;
    while (it != &p->used) {
        pgs_server *sv = list_entry(it, pgs_server, node);
        it = it->next;
        int st = atomic_load_explicit(&sv->state, memory_order_relaxed);
        char msg[400];
        if (st == SV_CONNECTING &&
            pgs_elapsed_us(now, sv->login_start_us) >
                (uint64_t)cfg->server_connect_timeout_ms * 1000u) {
            snprintf(msg, sizeof(msg), "connecting to %s timed out after %u ms",
                     node_ep(sv)->text, cfg->server_connect_timeout_ms);
            login_failed(sv, false, "08006", msg);
        } else if (st == SV_LOGIN && pgs_elapsed_us(now, sv->login_start_us) >
                                         (uint64_t)cfg->server_login_timeout_ms * 1000u) {
            snprintf(msg, sizeof(msg), "logging in to %s timed out after %u ms",
                     node_ep(sv)->text, cfg->server_login_timeout_ms);
            login_failed(sv, false, "08006", msg);
        }
    }
}

void server_close_all(pgs_worker *w)
{
    while (!list_empty(&w->servers)) {
        pgs_server *sv = list_entry(w->servers.next, pgs_server, all_node);
        server_close(sv, "shutting down");
    }
}
