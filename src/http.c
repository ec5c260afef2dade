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

#include "common.h"
#include "metrics.h"
#include "worker.h"

extern const unsigned char pgs_www_index_html[];
extern const size_t pgs_www_index_html_len;

static struct MHD_Daemon *daemon_;
static char address[300];

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

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    PGS_UNUSED(cls);
    PGS_UNUSED(version);
    PGS_UNUSED(upload_data);
    sbuf b = {0};
    bool head = strcmp(method, "HEAD") == 0;
    if (!head && strcmp(method, "GET") != 0) {
        /* a body is not read: the connection is answered at once */
        *upload_data_size = 0;
        sb_puts(&b, "only GET and HEAD are served here\n");
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", &b, head);
    }
    if (*con_cls == NULL) {
        /* the first call is for the headers only */
        *con_cls = (void *)1;
        return MHD_YES;
    }
    const pgs_config *cfg = atomic_load(&g_pgs.cfg);
    if (strcmp(url, "/metrics") == 0) {
        metrics_prometheus(&b, cfg->http_max_pools);
        return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", &b, head);
    }
    if (strcmp(url, "/api/status") == 0) {
        metrics_status_json(&b, cfg->http_max_pools);
        return reply(conn, MHD_HTTP_OK, "application/json", &b, head);
    }
    if (strcmp(url, "/healthz") == 0) {
        char why[300];
        bool ok = metrics_healthy(why, sizeof(why));
        sb_printf(&b, "%s%s\n", ok ? "" : "unavailable: ", why);
        return reply(conn, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE,
                     "text/plain; charset=utf-8", &b, head);
    }
    if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0) {
        sb_putn(&b, (const char *)pgs_www_index_html, pgs_www_index_html_len);
        return reply(conn, MHD_HTTP_OK, "text/html; charset=utf-8", &b, head);
    }
    sb_puts(&b, "not found: pgscale serves /, /api/status, /metrics and /healthz\n");
    return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8", &b, head);
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
    daemon_ = MHD_start_daemon(flags, (uint16_t)cfg->http_port, NULL, NULL, on_request, NULL,
                               MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                               MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                               MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                               MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)32,
                               MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                               MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
                               MHD_OPTION_END);
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
    log_info("http: status page, /metrics, /api/status and /healthz on http://%s/", where);
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
}

const char *http_address(void)
{
    return address;
}
