/* The HTTP listener and the sampler (http.h). */
#include "http.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <openssl/crypto.h>

#include "clientauth.h"
#include "common.h"
#include "metrics.h"
#include "reload.h"
#include "worker.h"

extern const unsigned char pgs_www_index_html[];
extern const size_t pgs_www_index_html_len;

static struct MHD_Daemon *daemon_;
static char address[300];
/* the HTTPS certificate and key, PEM, for as long as the daemon runs */
static char *tls_cert, *tls_key;

/* What http.auth and http.tls_* need, checked before listening. */
static int check_access(const pgs_config *cfg, char *err, size_t errlen)
{
    if (!cfg->http_tls_cert != !cfg->http_tls_key) {
        snprintf(err, errlen, "PGSCALE_HTTP_TLS_CERT and PGSCALE_HTTP_TLS_KEY go together: "
                              "set both for HTTPS, or neither");
        return -1;
    }
    if (cfg->http_tls_cert) {
        size_t n;
        char why[400];
        if (pgs_read_file(cfg->http_tls_cert, 1 << 20, "PGSCALE_HTTP_TLS_CERT", &tls_cert, &n,
                          why, sizeof(why)) < 0 ||
            pgs_read_file(cfg->http_tls_key, 1 << 20, "PGSCALE_HTTP_TLS_KEY", &tls_key, &n, why,
                          sizeof(why)) < 0) {
            snprintf(err, errlen, "the HTTP listener's TLS files: %s", why);
            return -1;
        }
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
            snprintf(err, errlen, "PGSCALE_HTTP_TLS_CERT is set but this libmicrohttpd was built "
                                  "without TLS");
            return -1;
        }
    }
    if (cfg->http_auth && cfg->n_admin_users + cfg->n_stats_users == 0) {
        snprintf(err, errlen, "PGSCALE_HTTP_AUTH is basic but admin_users and stats_users are "
                              "empty: list who may see the status page and /metrics");
        return -1;
    }
    bool local = strcmp(cfg->http_host, "localhost") == 0 || strcmp(cfg->http_host, "::1") == 0 ||
                 strncmp(cfg->http_host, "127.", 4) == 0;
    if (!local && !cfg->http_auth)
        log_warn("http: listening on %s without PGSCALE_HTTP_AUTH: anyone who can reach it sees "
                 "the status page and /metrics (names of databases, users and nodes; no "
                 "passwords)",
                 cfg->http_host);
    if (cfg->http_auth && !cfg->http_tls_cert && !local)
        log_warn("http: basic auth without TLS sends passwords in clear text; set "
                 "PGSCALE_HTTP_TLS_CERT and PGSCALE_HTTP_TLS_KEY unless the listener is on "
                 "localhost");
    return 0;
}

static pthread_t sampler;
static bool sampler_running;
static pthread_mutex_t sampler_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sampler_cond;
static bool sampler_stop;

/* One sample a second, on the second of the monotonic clock. */
static void *sampler_main(void *arg)
{
    PGS_UNUSED(arg);
    pthread_mutex_lock(&sampler_lock);
    while (!sampler_stop) {
        pthread_mutex_unlock(&sampler_lock);
        metrics_sample();
        pthread_mutex_lock(&sampler_lock);
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += 1;
        ts.tv_nsec = 0;
        while (!sampler_stop && pthread_cond_timedwait(&sampler_cond, &sampler_lock, &ts) == 0) {
        }
    }
    pthread_mutex_unlock(&sampler_lock);
    return NULL;
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
                             sbuf *body, bool head)
{
    /* MHD frees the body (MUST_FREE: it was malloc'ed by sbuf) */
    size_t len = body->len;
    char *p = body->p ? body->p : pgs_xstrdup("");
    body->p = NULL;
    body->len = body->cap = 0;
    struct MHD_Response *r = MHD_create_response_from_buffer(len, p, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(p);
        return MHD_NO;
    }
    PGS_UNUSED(head); /* MHD sends no body to a HEAD request itself */
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "X-Frame-Options", "DENY");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    if (strncmp(type, "text/html", 9) == 0)
        MHD_add_response_header(r, "Content-Security-Policy",
                                "default-src 'none'; script-src 'unsafe-inline'; "
                                "style-src 'unsafe-inline'; img-src data:; connect-src 'self'; "
                                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(r, "Allow", "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

/* Basic auth (http.auth: basic): a user of admin_users or stats_users with
 * the password that logs them into pgscale. */
static bool authorized(struct MHD_Connection *conn, const pgs_config *cfg)
{
    char *pass = NULL;
    char *user = MHD_basic_auth_get_username_password(conn, &pass);
    bool ok = false;
    if (user && pass) {
        bool listed = false;
        for (int i = 0; i < cfg->n_admin_users && !listed; i++)
            listed = strcmp(cfg->admin_users[i], user) == 0;
        for (int i = 0; i < cfg->n_stats_users && !listed; i++)
            listed = strcmp(cfg->stats_users[i], user) == 0;
        /* the password is checked for anyone, listed or not: the time
         * taken does not tell who is listed */
        ok = clientauth_check_password(user, pass) && listed;
        if (!ok) log_warn("http: basic auth refused for user \"%s\"", user);
    }
    if (pass) {
        OPENSSL_cleanse(pass, strlen(pass));
        MHD_free(pass);
    }
    if (user) MHD_free(user);
    return ok;
}

static enum MHD_Result route(struct MHD_Connection *conn, const char *url, bool head,
                             const pgs_config *cfg)
{
    sbuf b = {0};
    if (strcmp(url, "/healthz") == 0) {
        /* open without credentials: load balancers ask it */
        char why[300];
        bool ok = metrics_healthy(why, sizeof(why));
        sb_printf(&b, "%s%s\n", ok ? "" : "unavailable: ", why);
        return reply(conn, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE,
                     "text/plain; charset=utf-8", &b, head);
    }
    if (cfg->http_auth && !authorized(conn, cfg)) {
        sb_puts(&b, "pgscale: log in as a user of admin_users or stats_users\n");
        struct MHD_Response *r =
            MHD_create_response_from_buffer(b.len, b.p, MHD_RESPMEM_MUST_FREE);
        if (!r) {
            sb_free(&b);
            return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "text/plain; charset=utf-8");
        enum MHD_Result rc = MHD_queue_basic_auth_fail_response(conn, "pgscale", r);
        MHD_destroy_response(r);
        return rc;
    }
    if (strcmp(url, "/metrics") == 0) {
        metrics_prometheus(&b, cfg);
        return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", &b, head);
    }
    if (strcmp(url, "/api/status") == 0) {
        metrics_status_json(&b, cfg);
        return reply(conn, MHD_HTTP_OK, "application/json", &b, head);
    }
    if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0) {
        sb_putn(&b, (const char *)pgs_www_index_html, pgs_www_index_html_len);
        return reply(conn, MHD_HTTP_OK, "text/html; charset=utf-8", &b, head);
    }
    sb_puts(&b, "not found: pgscale serves /, /api/status, /metrics and /healthz\n");
    return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8", &b, head);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    PGS_UNUSED(cls);
    PGS_UNUSED(version);
    PGS_UNUSED(upload_data);
    bool head = strcmp(method, "HEAD") == 0;
    if (!head && strcmp(method, "GET") != 0) {
        /* a body is not read: the connection is answered at once */
        *upload_data_size = 0;
        sbuf b = {0};
        sb_puts(&b, "only GET and HEAD are served here\n");
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", &b, head);
    }
    if (*con_cls == NULL) {
        /* the first call is for the headers only */
        *con_cls = (void *)1;
        return MHD_YES;
    }
    const pgs_config *cfg = reload_cfg_hold();
    enum MHD_Result rc = route(conn, url, head, cfg);
    reload_cfg_release();
    return rc;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    PGS_UNUSED(cls);
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    log_warn("http: %s", msg);
}

int http_start(const pgs_config *cfg, char *err, size_t errlen)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&sampler_cond, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&sampler, NULL, sampler_main, NULL) == 0) sampler_running = true;
    if (!cfg->http_port) return 0;
    if (check_access(cfg, err, errlen) < 0) return -1;

    char port[16];
    snprintf(port, sizeof(port), "%d", cfg->http_port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int grc = getaddrinfo(cfg->http_host[0] ? cfg->http_host : NULL, port, &hints, &ai);
    if (grc != 0 || !ai) {
        snprintf(err, errlen, "PGSCALE_HTTP_LISTEN: cannot resolve \"%s\": %s", cfg->http_host,
                 gai_strerror(grc));
        return -1;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    /* the same options with and without TLS; the logger first, so that MHD
     * reports a problem with the others through it */
#define COMMON_OPTIONS                                                         \
    MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)64, \
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)32,                      \
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,                           \
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024, MHD_OPTION_END
    if (tls_cert)
        daemon_ = MHD_start_daemon(flags | MHD_USE_TLS, (uint16_t)cfg->http_port, NULL, NULL,
                                   on_request, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                                   MHD_OPTION_HTTPS_MEM_CERT, tls_cert,
                                   MHD_OPTION_HTTPS_MEM_KEY, tls_key, COMMON_OPTIONS);
    else
        daemon_ = MHD_start_daemon(flags, (uint16_t)cfg->http_port, NULL, NULL, on_request,
                                   NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                                   COMMON_OPTIONS);
#undef COMMON_OPTIONS
    int saved = errno;
    freeaddrinfo(ai);
    char where[300];
    snprintf(where, sizeof(where), strchr(cfg->http_host, ':') ? "[%s]:%d" : "%s:%d",
             cfg->http_host, cfg->http_port);
    if (!daemon_) {
        if (!cfg->http_explicit) {
            log_warn("http: could not listen on %s, the default address (%s): no /metrics or "
                     "status page; set PGSCALE_HTTP_LISTEN to a free address, or to off",
                     where, strerror(saved));
            return 0;
        }
        snprintf(err, errlen,
                 "PGSCALE_HTTP_LISTEN: could not listen on %s (%s); choose a free address, or "
                 "set it to off",
                 where, strerror(saved));
        return -1;
    }
    snprintf(address, sizeof(address), "%s", where);
    log_info("http: status page, /metrics, /api/status and /healthz on %s://%s/%s",
             tls_cert ? "https" : "http", where, cfg->http_auth ? " (basic auth)" : "");
    return 0;
}

void http_stop(void)
{
    if (daemon_) {
        MHD_stop_daemon(daemon_);
        daemon_ = NULL;
    }
    if (sampler_running) {
        pthread_mutex_lock(&sampler_lock);
        sampler_stop = true;
        pthread_cond_signal(&sampler_cond);
        pthread_mutex_unlock(&sampler_lock);
        pthread_join(sampler, NULL);
        sampler_running = false;
    }
    address[0] = '\0';
    if (tls_key) OPENSSL_cleanse(tls_key, strlen(tls_key));
    free(tls_cert);
    free(tls_key);
    tls_cert = tls_key = NULL;
}

const char *http_address(void)
{
    return address;
}
