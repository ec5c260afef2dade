/* Client authentication: method choice and the md5 / SCRAM exchanges over
 * a client connection.  PostgreSQL's behaviour is the model: the same
 * 28P01 message for an unknown user and a wrong password, and for SCRAM a
 * mock exchange with a stable per-user salt, so neither the messages nor
 * the salts tell whether a user exists. */
#include "clientauth.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "auth.h"
#include "authfile.h"
#include "authquery.h"
#include "client.h"
#include "io.h"
#include "proto.h"
#include "tls.h"
#include "worker.h"

/* A password or SASL message is small; anything longer is not one. */
#define AUTH_MSG_MAX 8192u

#define AUTH_SASL 10
#define AUTH_SASL_CONTINUE 11
#define AUTH_SASL_FINAL 12
#define AUTH_MD5 5

typedef struct pgs_client_auth {
    pgs_auth_method method;
    int step;                 /* SCRAM: 0 = want initial response, 1 = want final */
    bool pending;             /* waiting for auth.query */
    char *secret;             /* from auth.query (NULL: none) */
    bool by_query;            /* the secret in use came from auth.query */
    bool verified_by_query;   /* a plaintext secret from auth.query is in use */
    scram_secret qscram;      /* secret, parsed, when it is a SCRAM secret */
    uint8_t salt[4];          /* md5 */
    scram_server scram;
} pgs_client_auth;

static int send_request(pgs_client *c);
static void lookup_done(pgs_worker *w, uint32_t client_id, char *secret, char *error);

/* The users file in effect: swapped whole by clientauth_reload (atomic
 * pointer); a replaced one is freed at the reload after (by then no worker
 * can still be inside a login step that looked it up). */
static authfile *users;
static authfile *users_retired;

static const authfile *cur_users(void)
{
    return __atomic_load_n(&users, __ATOMIC_ACQUIRE);
}
static unsigned char mock_key[32];

/* DATABASE_URL's user with DATABASE_URL's password, answering like a users
 * file entry: the application already holds that password, so pointing it
 * at pgscale needs no other secret.  The users file's own entry for the
 * user outranks it.  NULL when the URL carries no password.  Set once at
 * start (the URL does not change on reload). */
static authfile *url_user;

/* The entry that verifies user's password: the users file's, else
 * DATABASE_URL's; NULL for anyone else (auth.query may still know them). */
static const authfile_entry *known_entry(const char *user)
{
    const authfile *u = cur_users();
    const authfile_entry *e = u ? authfile_lookup(u, user) : NULL;
    return e ? e : authfile_lookup(url_user, user);
}

/* Neither auth.type nor auth.hba given (PGSCALE_AUTH_TYPE counts as
 * auth.type): the zero-config start, where two rules for DATABASE_URL's
 * user come on top of SCRAM (see clientauth_begin). */
static bool implicit_rules(const pgs_config *cfg)
{
    return !cfg->auth.type_set && cfg->auth.n_hba == 0;
}

static bool is_url_user(const pgs_config *cfg, const char *user)
{
    return cfg->primary.user && strcmp(cfg->primary.user, user) == 0;
}

bool clientauth_peer_is_self(const pgs_client *c)
{
    if (!c->unix_socket) return false;
    uv_os_fd_t fd;
    if (uv_fileno((const uv_handle_t *)&c->s.pipe, &fd) != 0) return false;
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof(cred))
        return false;
    return cred.uid == geteuid();
}

/* What the server login as a user can use, learnt from that user's last
 * successful login to pgscale: the SCRAM keys its proof revealed, and a
 * plaintext or md5 secret auth.query returned.  A small table under a
 * mutex (login path only), the oldest entry replaced.
 *
 * Each successful login replaces its user's entry whole, so a secret that
 * a later login did not confirm never lingers next to newer keys.  What a
 * login checked against auth.query taught is trusted less than what the
 * users file vouched for: it never replaces an entry of the latter kind.
 * Entries do not expire: they serve server logins as the user (a pool that
 * grows an hour after its clients logged in needs them), and a secret that
 * PostgreSQL no longer accepts only makes such a server login fail until
 * the user's next login replaces it -- it never lets anyone into pgscale,
 * which checks every client login afresh. */
#define KEYTAB_SIZE 256
typedef struct keytab_entry {
    char user[64];
    scram_keys keys;
    bool has_keys;
    char secret[128];         /* a plaintext or md5 secret from auth.query */
    int secret_kind;
    bool from_query;          /* learnt at a login checked against auth.query */
    uint64_t stamp;           /* 0 = free */
} keytab_entry;
static keytab_entry *keytab; /* KEYTAB_SIZE entries, kept out of core dumps */
static uint64_t keytab_clock;
static pthread_mutex_t keytab_lock = PTHREAD_MUTEX_INITIALIZER;

static void keytab_wipe(keytab_entry *e)
{
    OPENSSL_cleanse(e, sizeof(*e));
}

/* The entry of user, or NULL.  Caller holds keytab_lock. */
static keytab_entry *keytab_find(const char *user)
{
    if (!keytab) return NULL; /* before clientauth_init */
    for (int i = 0; i < KEYTAB_SIZE; i++) {
        keytab_entry *e = &keytab[i];
        if (e->stamp && strcmp(e->user, user) == 0) return e;
    }
    return NULL;
}

/* Remembers what a successful login of user proved: k (if given) and/or a
 * non-SCRAM secret (if given); from_query when the login was checked
 * against a secret from auth.query. */
static void keys_remember(const char *user, const scram_keys *k, const char *secret, int kind,
                          bool from_query)
{
    if (strlen(user) >= sizeof(keytab[0].user)) return;
    if (secret && strlen(secret) >= sizeof(keytab[0].secret)) secret = NULL;
    if (!k && !secret) return;
    pthread_mutex_lock(&keytab_lock);
    if (!keytab) {
        pthread_mutex_unlock(&keytab_lock);
        return;
    }
    keytab_entry *slot = keytab_find(user);
    if (slot && !slot->from_query && from_query) {
        /* the users file's word outranks a lookup's */
        pthread_mutex_unlock(&keytab_lock);
        return;
    }
    if (!slot) {
        slot = &keytab[0];
        for (int i = 0; i < KEYTAB_SIZE && slot->stamp; i++) {
            keytab_entry *e = &keytab[i];
            if (!e->stamp || e->stamp < slot->stamp) slot = e;
        }
    }
    keytab_wipe(slot);
    snprintf(slot->user, sizeof(slot->user), "%s", user);
    if (k) {
        slot->keys = *k;
        slot->has_keys = true;
    }
    if (secret) {
        snprintf(slot->secret, sizeof(slot->secret), "%s", secret);
        slot->secret_kind = kind;
    }
    slot->from_query = from_query;
    slot->stamp = ++keytab_clock;
    pthread_mutex_unlock(&keytab_lock);
}

bool clientauth_user_keys(const char *user, scram_keys *out)
{
    bool found = false;
    pthread_mutex_lock(&keytab_lock);
    keytab_entry *e = keytab_find(user);
    if (e && e->has_keys) {
        *out = e->keys;
        found = true;
    }
    pthread_mutex_unlock(&keytab_lock);
    return found;
}

bool clientauth_user_secret(const char *user, int *kind, char *buf, size_t buflen)
{
    bool found = false;
    const authfile *u = cur_users();
    const authfile_entry *e = u ? authfile_lookup(u, user) : NULL;
    if (e) {
        if (e->kind == AUTH_SECRET_SCRAM || strlen(e->secret) >= buflen) return false;
        memcpy(buf, e->secret, strlen(e->secret) + 1);
        *kind = (int)e->kind;
        return true;
    }
    /* from auth.query: copied out under the lock, as a newer login (or
     * eviction) may overwrite the slot the moment it is released */
    pthread_mutex_lock(&keytab_lock);
    keytab_entry *k = keytab_find(user);
    if (k && k->secret[0] && strlen(k->secret) < buflen) {
        memcpy(buf, k->secret, strlen(k->secret) + 1);
        *kind = k->secret_kind;
        found = true;
    }
    pthread_mutex_unlock(&keytab_lock);
    return found;
}

/* Says at start who may log in without a password, where that is anyone. */
static void warn_config(const pgs_config *cfg)
{
    const pgs_auth_config *a = &cfg->auth;
    const char *user = cfg->primary.user;
    if (a->type_set && a->type == PGS_AUTH_TRUST && a->n_hba == 0) {
        log_warn("auth.type is trust: every client that reaches pgscale may log in as any user "
                 "without a password%s%s%s; remove auth.type (and PGSCALE_AUTH_TYPE) to have "
                 "clients authenticate with SCRAM-SHA-256 against DATABASE_URL's password",
                 user ? ", including \"" : "", user ? user : "",
                 user ? "\", who may run every admin console command (SHUTDOWN too)" : "");
        return;
    }
    if (!implicit_rules(cfg)) return;
    if (!user) {
        log_warn("DATABASE_URL names no user: clients can log into pgscale only as users of the "
                 "users file (auth.file) or auth.query; put the application's user and password "
                 "in DATABASE_URL (postgresql://USER:PASSWORD@host/db)");
        return;
    }
    const authfile *u = cur_users();
    if (!cfg->primary.password && !(u && authfile_lookup(u, user))) {
        log_warn("DATABASE_URL has no password: user \"%s\" may log into pgscale without one "
                 "from every address pgscale listens on, and run every admin console command "
                 "(SHUTDOWN too); other users need a password; to require one for \"%s\", put "
                 "the password in DATABASE_URL (postgresql://%s:PASSWORD@host/db) or give the "
                 "user an entry in a users file (auth.file)",
                 user, user, user);
        return;
    }
    log_info("clients authenticate with SCRAM-SHA-256: user \"%s\" with %s password%s; the "
             "same OS user as pgscale may log in as \"%s\" over its Unix socket without one",
             user, u && authfile_lookup(u, user) ? "the users file's" : "DATABASE_URL's",
             u ? ", the users file's users with theirs" : "", user);
}

int clientauth_init(const pgs_config *cfg, char *err, size_t errlen)
{
    /* Pages of their own, so that MADV_DONTDUMP leaves the keys out of a
     * core file even when allow_core_dumps is on. */
    if (!keytab) {
        void *p = mmap(NULL, KEYTAB_SIZE * sizeof(keytab_entry), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            snprintf(err, errlen, "no memory for the key table");
            return -1;
        }
        madvise(p, KEYTAB_SIZE * sizeof(keytab_entry), MADV_DONTDUMP);
        keytab = p;
    }
    if (auth_random_bytes(mock_key, sizeof(mock_key)) < 0) {
        snprintf(err, errlen, "no random bytes for the SCRAM mock key");
        return -1;
    }
    if (cfg->auth.file && (authfile_load(cfg->auth.file, &users, err, errlen) < 0 ||
                           authfile_precompute_scram(users, mock_key, sizeof(mock_key), err,
                                                     errlen) < 0))
        return -1;
    const pgs_url *url = &cfg->primary;
    if (url->user && url->password) {
        url_user = authfile_from_password("DATABASE_URL", url->user, url->password);
        if (authfile_precompute_scram(url_user, mock_key, sizeof(mock_key), err, errlen) < 0)
            return -1;
    }
    warn_config(cfg);
    return 0;
}

void clientauth_shutdown(void)
{
    scram_client_cache_wipe();
    authfile_free(users);
    authfile_free(users_retired);
    authfile_free(url_user);
    users = users_retired = url_user = NULL;
    pthread_mutex_lock(&keytab_lock);
    if (keytab) {
        for (int i = 0; i < KEYTAB_SIZE; i++) keytab_wipe(&keytab[i]);
        munmap(keytab, KEYTAB_SIZE * sizeof(keytab_entry));
        keytab = NULL;
    }
    pthread_mutex_unlock(&keytab_lock);
}

int clientauth_reload(const char *path, char *err, size_t errlen)
{
    if (!path) return 0;
    authfile *fresh;
    if (authfile_load(path, &fresh, err, errlen) < 0) return -1;
    if (authfile_precompute_scram(fresh, mock_key, sizeof(mock_key), err, errlen) < 0) {
        authfile_free(fresh);
        return -1;
    }
    authfile_free(users_retired);
    users_retired = __atomic_exchange_n(&users, fresh, __ATOMIC_ACQ_REL);
    log_info("users file %s reloaded: %zu users", path, authfile_count(fresh));
    return 0;
}

static bool addr_matches(const pgs_hba_rule *r, const pgs_client *c)
{
    if (r->family == AF_UNSPEC) return true;
    uint8_t a[16];
    int len;
    if (r->family == AF_INET && inet_pton(AF_INET, c->addr, a) == 1) {
        len = 4;
    } else if (r->family == AF_INET6 && inet_pton(AF_INET6, c->addr, a) == 1) {
        len = 16;
    } else {
        return false;
    }
    int bits = r->prefix;
    for (int i = 0; i < len && bits > 0; i++, bits -= 8) {
        uint8_t mask = bits >= 8 ? 0xff : (uint8_t)(0xff << (8 - bits));
        if ((a[i] & mask) != (r->addr[i] & mask)) return false;
    }
    return true;
}

/* The method for this client: the first matching auth.hba rule, else
 * auth.type.  *rule_line is the rule's line (0 = no rule matched). */
static int choose_method(const pgs_client *c, int *rule_line)
{
    const pgs_auth_config *a = &g_pgs.cfg->auth;
    bool tls = io_is_tls(&c->s);
    *rule_line = 0;
    if (a->n_hba == 0) return a->type;
    for (int i = 0; i < a->n_hba; i++) {
        const pgs_hba_rule *r = &a->hba[i];
        /* host: TCP with or without TLS; hostssl: TLS only; hostnossl:
         * plain TCP only; local: Unix sockets */
        if ((r->type == PGS_HBA_LOCAL) != c->unix_socket) continue;
        if (r->type == PGS_HBA_HOSTSSL && !tls) continue;
        if (r->type == PGS_HBA_HOSTNOSSL && tls) continue;
        if (r->database && strcmp(r->database, c->database) != 0) continue;
        if (r->user && strcmp(r->user, c->user) != 0) continue;
        if (!addr_matches(r, c)) continue;
        *rule_line = r->line;
        return r->method;
    }
    return -1;
}

static int send_auth(pgs_client *c, int32_t code, const void *extra, size_t len)
{
    uint8_t buf[AUTH_MSG_MAX + 64];
    proto_out o;
    proto_out_init(&o, buf, sizeof(buf));
    proto_auth_request(&o, code, extra, len);
    if (o.overflow) return -1;
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)o.len);
    return io_send(c->w, &c->s, &b, 1);
}

static void fail_password(pgs_client *c, const char *why)
{
    char msg[200];
    log_info("C-%u: authentication of user=%s db=%s failed: %s", c->id, c->user, c->database,
             why);
    snprintf(msg, sizeof(msg), "password authentication failed for user \"%s\"", c->user);
    client_fail(c, "28P01", msg, NULL);
}

int clientauth_begin(pgs_client *c)
{
    int line;
    int m = choose_method(c, &line);
    char msg[400];
    if (m < 0 || m == PGS_AUTH_REJECT) {
        snprintf(msg, sizeof(msg), "%s for host \"%s\", user \"%s\", database \"%s\", %s",
                 m < 0 ? "no auth.hba rule" : "auth.hba rejects connection", c->addr, c->user,
                 c->database, io_is_tls(&c->s) ? "SSL encryption" : "no encryption");
        if (m < 0)
            log_info("C-%u: %s", c->id, msg);
        else
            log_info("C-%u: %s (rule at %s:%d)", c->id, msg, g_pgs.cfg->config_file, line);
        client_fail(c, "28000", msg, NULL);
        return -1;
    }
    if (m == PGS_AUTH_TRUST) return 0;
    const pgs_config *cfg = g_pgs.cfg;
    if (implicit_rules(cfg) && is_url_user(cfg, c->user)) {
        /* The zero-config start lets DATABASE_URL's user in without a
         * password in two cases, neither of which gives away anything:
         * - the client is the OS user pgscale runs as, on pgscale's Unix
         *   socket (PostgreSQL's "peer"): it can read the password from
         *   pgscale's environment (/proc/PID/environ) anyway;
         * - DATABASE_URL has no password (PostgreSQL trusts pgscale's
         *   connections) and no users file entry asks for one: there is
         *   nothing to check it against.  warn_config said so at start. */
        const authfile *u = cur_users();
        const char *why = NULL;
        if (clientauth_peer_is_self(c))
            why = "same OS user as pgscale, over its Unix socket";
        else if (!cfg->primary.password && !(u && authfile_lookup(u, c->user)))
            why = "DATABASE_URL has no password";
        if (why) {
            log_info("C-%u: user=%s db=%s logged in without a password (%s)", c->id, c->user,
                     c->database, why);
            return 0;
        }
    }
    pgs_client_auth *a = pgs_xcalloc(1, sizeof(*a));
    a->method = (pgs_auth_method)m;
    c->auth = a;
    /* The first request (the SASL mechanisms, or md5 with a fresh salt)
     * does not depend on the user, so it goes out at once for everyone: if
     * it waited for the lookup, its delay would tell a prober which names
     * the users file lacks.  The lookup runs meanwhile; the client's answer
     * waits for it only if it arrives first (clientauth_data). */
    if (send_request(c) < 0) return -1;
    if (!known_entry(c->user) && authquery_enabled() &&
        authquery_lookup(c->w, c->id, c->user, c->unix_socket ? NULL : c->addr, lookup_done) ==
            AQ_QUEUED)
        a->pending = true;
    return 1;
}

/* The first authentication request: md5 with a fresh salt, or SASL. */
static int send_request(pgs_client *c)
{
    pgs_client_auth *a = c->auth;
    int rc;
    if (a->method == PGS_AUTH_MD5) {
        if (auth_random_bytes(a->salt, sizeof(a->salt)) < 0) {
            client_fail(c, "XX000", "no random bytes for the md5 salt", NULL);
            return -1;
        }
        rc = send_auth(c, AUTH_MD5, a->salt, sizeof(a->salt));
    } else {
        /* -PLUS (channel binding to our certificate) on TLS only */
        static const char mechs[] = SCRAM_MECH "\0";
        static const char mechs_plus[] = SCRAM_MECH_PLUS "\0" SCRAM_MECH "\0";
        size_t cb_len = 0;
        bool plus = io_is_tls(&c->s) && tls_cbind_data(&cb_len) != NULL;
        rc = plus ? send_auth(c, AUTH_SASL, mechs_plus, sizeof(mechs_plus))
                  : send_auth(c, AUTH_SASL, mechs, sizeof(mechs));
    }
    if (rc < 0) {
        client_close(c, "write failed");
        return -1;
    }
    return 0;
}

static void lookup_done(pgs_worker *w, uint32_t client_id, char *secret, char *error)
{
    pgs_client *c = NULL;
    for (pgs_list *it = w->clients.next; it != &w->clients; it = it->next) {
        pgs_client *x = list_entry(it, pgs_client, node);
        if (x->id == client_id) {
            c = x;
            break;
        }
    }
    if (!c || !c->auth || !c->auth->pending || c->s.closing) {
        if (secret) OPENSSL_cleanse(secret, strlen(secret));
        free(secret);
        free(error);
        return; /* the client left meanwhile */
    }
    if (error) {
        log_warn("C-%u: %s", c->id, error);
        client_fail(c, "08006", "could not look up the password (auth.query failed)",
                    "see pgscale's log");
        if (secret) OPENSSL_cleanse(secret, strlen(secret));
        free(secret);
        free(error);
        return;
    }
    c->auth->pending = false;
    c->auth->secret = secret; /* NULL: no such user; the exchange fails at its end */
    /* the client's answer to the first request may be waiting already */
    if (c->s.rbuf.data && c->s.rbuf.pos < c->s.rbuf.len && clientauth_data(c) == 0)
        client_after_auth(c);
}

void clientauth_free(pgs_client *c)
{
    if (!c->auth) return;
    if (c->auth->pending) authquery_cancel(c->w, c->id, c->unix_socket ? NULL : c->addr);
    scram_server_clear(&c->auth->scram);
    if (c->auth->secret) OPENSSL_cleanse(c->auth->secret, strlen(c->auth->secret));
    free(c->auth->secret);
    OPENSSL_cleanse(&c->auth->qscram, sizeof(c->auth->qscram));
    free(c->auth);
    c->auth = NULL;
}

/* The client's secret: from the users file, else DATABASE_URL's for its
 * user, else from auth.query (as a temporary entry in *tmp), else NULL. */
static const authfile_entry *user_entry(pgs_client *c, authfile_entry *tmp)
{
    const authfile_entry *e = known_entry(c->user);
    pgs_client_auth *a = c->auth;
    if (e || !a->secret) return e;
    memset(tmp, 0, sizeof(*tmp));
    tmp->user = c->user;
    tmp->secret = a->secret;
    tmp->kind = auth_secret_classify(a->secret);
    tmp->file = "auth.query";
    if (tmp->kind == AUTH_SECRET_SCRAM) {
        const char *why;
        if (scram_secret_parse(a->secret, strlen(a->secret), &a->qscram, &why) < 0) return NULL;
        tmp->scram = &a->qscram;
    }
    return tmp;
}

static int md5_step(pgs_client *c, const uint8_t *body, uint32_t blen)
{
    size_t pos = 0;
    const char *resp = proto_get_string(body, blen, &pos);
    if (!resp || pos != blen) {
        client_fail(c, "08P01", "malformed password message", NULL);
        return -1;
    }
    authfile_entry tmp;
    const authfile_entry *e = user_entry(c, &tmp);
    char err[300] = "no such user";
    if (!e || authfile_md5_verify(e, c->auth->salt, resp, strlen(resp), err, sizeof(err)) != 0) {
        fail_password(c, err);
        return -1;
    }
    if (e == &tmp) keys_remember(c->user, NULL, tmp.secret, (int)tmp.kind, true);
    return 0;
}

static int scram_step(pgs_client *c, const uint8_t *body, uint32_t blen)
{
    pgs_client_auth *a = c->auth;
    char out[1024];
    size_t outlen = 0;
    int rc;
    if (a->step == 0) {
        /* SASLInitialResponse: mechanism, int32 length, data */
        size_t pos = 0;
        const char *mech = proto_get_string(body, blen, &pos);
        int32_t dlen;
        if (!mech || proto_get_int32(body, blen, &pos, &dlen) < 0 || dlen < 0 ||
            (size_t)dlen != blen - pos) {
            client_fail(c, "08P01", "malformed SASL initial response", NULL);
            return -1;
        }
        authfile_entry tmp;
        const authfile_entry *e = user_entry(c, &tmp);
        a->by_query = e == &tmp;
        a->verified_by_query = e == &tmp && tmp.kind == AUTH_SECRET_PLAIN;
        scram_secret secret;
        char err[300];
        /* tls-server-end-point data when -PLUS was offered (TLS), else none */
        size_t cb_len = 0;
        const unsigned char *cb = io_is_tls(&c->s) ? tls_cbind_data(&cb_len) : NULL;
        if (!cb) cb_len = 0;
        if (e && authfile_scram_secret(e, mock_key, sizeof(mock_key), &secret, err,
                                       sizeof(err)) == 0) {
            rc = scram_server_init(&a->scram, &secret, cb, cb_len);
        } else {
            rc = scram_server_init_mock(&a->scram, c->user, mock_key, sizeof(mock_key), cb,
                                        cb_len);
        }
        OPENSSL_cleanse(&secret, sizeof(secret));
        if (rc == 0)
            rc = scram_server_first(&a->scram, mech, strlen(mech), (const char *)body + pos,
                                    (size_t)dlen, out, sizeof(out), &outlen);
        if (rc < 0) {
            client_fail(c, "08P01", "invalid SCRAM exchange", NULL);
            return -1;
        }
        a->step = 1;
        if (send_auth(c, AUTH_SASL_CONTINUE, out, outlen) < 0) {
            client_close(c, "write failed");
            return -1;
        }
        return 1;
    }
    rc = scram_server_final(&a->scram, (const char *)body, blen, out, sizeof(out), &outlen);
    if (rc == -EACCES) {
        fail_password(c, scram_server_error(&a->scram) ? scram_server_error(&a->scram)
                                                        : "wrong password or unknown user");
        return -1;
    }
    if (rc < 0) {
        client_fail(c, "08P01", "invalid SCRAM exchange", NULL);
        return -1;
    }
    scram_keys keys;
    if (scram_server_keys(&a->scram, &keys) == 0) {
        /* the keys, and a plaintext password from auth.query, serve the
         * login to PostgreSQL as this user */
        keys_remember(c->user, &keys, a->verified_by_query ? a->secret : NULL, AUTH_SECRET_PLAIN,
                      a->by_query);
        OPENSSL_cleanse(&keys, sizeof(keys));
    }
    if (send_auth(c, AUTH_SASL_FINAL, out, outlen) < 0) {
        client_close(c, "write failed");
        return -1;
    }
    return 0;
}

/* Anything but a password / SASL message where one is expected: refused
 * with PostgreSQL's own words (a driver that pipelines a query or a
 * Terminate after its start-up packet gets the same answer as from
 * PostgreSQL).  True when the client was failed. */
static bool refuse_non_answer(pgs_client *c)
{
    pgs_buf *b = &c->s.rbuf;
    if (!b->data || b->pos >= b->len || b->data[b->pos] == 'p') return false;
    char msg[80];
    snprintf(msg, sizeof(msg), "expected %s response, got message type %d",
             c->auth && c->auth->method == PGS_AUTH_MD5 ? "password" : "SASL",
             b->data[b->pos]);
    client_fail(c, "08P01", msg, NULL);
    return true;
}

int clientauth_data(pgs_client *c)
{
    pgs_buf *b = &c->s.rbuf;
    if (refuse_non_answer(c)) return -1;
    if (c->auth && c->auth->pending) {
        /* The answer needs the secret the lookup is still fetching: it
         * stays in the buffer until lookup_done.  What cannot be an answer
         * is refused now. */
        uint8_t type;
        uint32_t len;
        int rc = b->data && b->pos < b->len
                     ? proto_peek_header(b->data + b->pos, b->len - b->pos, AUTH_MSG_MAX, &type,
                                         &len)
                     : PROTO_NEED_MORE;
        if (rc == PROTO_NEED_MORE) return 1;
        if (rc < 0 || type != 'p') {
            client_fail(c, "08P01", "expected a password or SASL response message", NULL);
            return -1;
        }
        return 1;
    }
    while (c->auth && b->data && b->pos < b->len) {
        uint8_t type;
        uint32_t len;
        int rc = proto_peek_header(b->data + b->pos, b->len - b->pos, AUTH_MSG_MAX, &type, &len);
        if (rc == PROTO_NEED_MORE) return 1;
        if (refuse_non_answer(c)) return -1;
        if (rc < 0) {
            client_fail(c, "08P01", "expected a password or SASL response message", NULL);
            return -1;
        }
        if (b->len - b->pos < len + 1) return 1;
        const uint8_t *body = b->data + b->pos + 5;
        b->pos += len + 1;
        rc = c->auth->method == PGS_AUTH_MD5 ? md5_step(c, body, len - 4)
                                             : scram_step(c, body, len - 4);
        if (rc <= 0) {
            clientauth_free(c);
            return rc;
        }
    }
    return 1;
}

bool clientauth_check_password(const char *user, const char *password)
{
    /* (an entry of a users file replaced by a reload is freed at the
     * reload after; two reloads within one check do not happen) */
    const authfile_entry *e = known_entry(user);
    if (!e) return false;
    if (e->kind == AUTH_SECRET_SCRAM) {
        scram_secret d;
        bool ok = e->scram &&
                  scram_secret_derive(password, e->scram->salt, e->scram->salt_len,
                                      e->scram->iterations, &d) == 0 &&
                  CRYPTO_memcmp(d.stored_key, e->scram->stored_key, SCRAM_KEY_LEN) == 0;
        OPENSSL_cleanse(&d, sizeof(d));
        return ok;
    }
    /* plaintext or md5 secret: answer an md5 challenge as a client with
     * this password would, and check the answer as a login does */
    uint8_t salt[4];
    char resp[40];
    if (auth_random_bytes(salt, sizeof(salt)) < 0) return false;
    auth_md5_response(user, password, salt, resp);
    bool ok = auth_md5_verify(user, e->secret, salt, resp, strlen(resp)) == 0;
    OPENSSL_cleanse(resp, sizeof(resp));
    return ok;
}
