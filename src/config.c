/* Configuration: builds the immutable pgs_config snapshot from defaults, an
 * optional YAML file (read by config_yaml.c), an optional .env file and the
 * process environment, validates every value, and describes the result back
 * (SHOW CONFIG, --check-config).  It owns URL, value and .env parsing; it
 * applies nothing itself (log level, listeners, pools are set up by main and
 * the workers from the snapshot). */
#include "config.h"
#include "endpoint.h"
#include "config_yaml.h"
#include "auth.h"
#include "redis.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define ENVFILE_MAX_BYTES (1u << 20)     /* 1 MiB */
#define ENVFILE_MAX_LINE (64u * 1024)    /* 64 KiB per physical line */
#define MAX_WORKERS 64
#define OVERFLOW_UNLIMITED 10000         /* what DB_MAX_OVERFLOW=-1 maps to */

/* The environment's name for auth.type (the only auth setting it has). */
#define AUTH_TYPE_VAR "PGSCALE_AUTH_TYPE"

static const char database_url_hint[] =
    "point it at your PostgreSQL primary, e.g. postgresql://user:pass@host:5432/db";

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */


/* ASCII-only classifiers: the C library's depend on the locale, and a
 * config value must mean the same thing whatever LANG says. */
static bool is_digit(int c) { return c >= '0' && c <= '9'; }
static bool is_alpha(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static bool is_alnum(int c) { return is_digit(c) || is_alpha(c); }
/* Horizontal white space in a .env line; '\r' counts so CRLF files work. */
static bool is_blank(int c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Renders a user-supplied value for an error message: at most 60 bytes and
 * no control characters, so a stray newline or escape sequence in a value
 * cannot forge or garble log lines.  Never call it on a password. */
static const char *shown(const char *v, char *buf, size_t n)
{
    size_t j = 0, limit = n > 4 ? n - 4 : 0;
    if (limit > 60) limit = 60;
    for (size_t i = 0; v[i] && j + 1 < n; i++) {
        if (j >= limit) {
            if (n - j >= 4) memcpy(buf + j, "...", 3), j += 3;
            break;
        }
        unsigned char c = (unsigned char)v[i];
        buf[j++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (n) buf[j < n ? j : n - 1] = '\0';
    return buf;
}

static const char *const sslmode_names[] = {"disable", "allow", "prefer",
                                            "require", "verify-ca", "verify-full"};

int config_parse_sslmode(const char *v, pgs_sslmode *out, char *why, size_t whylen)
{
    for (size_t i = 0; i < PGS_ARRAY_LEN(sslmode_names); i++) {
        if (strcmp(v, sslmode_names[i]) == 0) {
            *out = (pgs_sslmode)i;
            return 0;
        }
    }
    char sb[80];
    pgs_seterr(why, whylen,
               "'%s' is not an SSL mode (expected disable, allow, prefer, require, verify-ca or "
               "verify-full)",
               shown(v, sb, sizeof(sb)));
    return -EINVAL;
}

static const char *const cbind_names[] = {"disable", "prefer", "require"};

int config_parse_channel_binding(const char *v, pgs_channel_binding *out, char *why,
                                 size_t whylen)
{
    for (size_t i = 0; i < PGS_ARRAY_LEN(cbind_names); i++) {
        if (strcmp(v, cbind_names[i]) == 0) {
            *out = (pgs_channel_binding)i;
            return 0;
        }
    }
    char sb[80];
    pgs_seterr(why, whylen,
               "'%s' is not a channel binding mode (expected disable, prefer or require)",
               shown(v, sb, sizeof(sb)));
    return -EINVAL;
}

int config_parse_bool(const char *v, bool *out, char *why, size_t whylen)
{
    static const char *const yes[] = {"on", "true", "yes", "1"};
    static const char *const no[] = {"off", "false", "no", "0"};
    for (size_t i = 0; i < PGS_ARRAY_LEN(yes); i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    char sb[80];
    pgs_seterr(why, whylen, "'%s' is not on or off (expected on/off, true/false, yes/no, 1/0)",
               shown(v, sb, sizeof(sb)));
    return -EINVAL;
}

/* ------------------------------------------------------------------------ */
/* Defaults                                                                 */
/* ------------------------------------------------------------------------ */

void config_defaults(pgs_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->listen_host, sizeof(cfg->listen_host), "%s", "127.0.0.1");
    cfg->listen_port = 6432;
    snprintf(cfg->http_host, sizeof(cfg->http_host), "127.0.0.1");
    cfg->http_port = 9930;
    cfg->http_max_pools = 1000;
    cfg->pool_mode = PGS_POOL_TRANSACTION;

    /* One worker per core, clamped to what PGSCALE_WORKERS accepts so the
     * default is always a value the user could also have written. */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->workers = cores < 1 ? 1 : cores > MAX_WORKERS ? MAX_WORKERS : (int)cores;

    cfg->pool_size = 20;
    cfg->max_overflow = 10;
    cfg->pool_timeout_ms = 30 * 1000;
    cfg->pinning = true;
    cfg->max_pinned = 0;
    cfg->server_reset_settings = PGS_RESET_ALL;

    cfg->consistency = PGS_CONSISTENCY_SESSION;
    cfg->failover = PGS_FAILOVER_AUTO;
    cfg->max_replica_lag_bytes = 0;
    cfg->max_replica_lag_ms = 10 * 1000;
    cfg->read_from_primary = false;
    cfg->cache.enabled = false;
    cfg->cache.ttl_ms = 300000;                 /* the seed's hand-written 5 minutes */
    cfg->cache.max_memory = 256ull << 20;
    cfg->cache.max_entry_size = 1u << 20;
    cfg->cache.fill_wait_ms = 1000;
    cfg->cache.redis = true;
    cfg->cache.redis_timeout_ms = 50;
    cfg->load_balance = PGS_BALANCE_ROUND_ROBIN;
    cfg->monitor_interval_ms = 100;
    cfg->health_check_timeout_ms = 2 * 1000;
    cfg->failover_timeout_ms = 10 * 1000;
    /* the default failover_timeout, plus time to notice the primary failing
     * (up to health_check_timeout, 2 s) and to promote (pg_promote() returns
     * in well under a second on a replica that has replayed its WAL), with
     * slack for a busy host: long enough that a client waiting from the
     * first failed connect sees the new primary */
    cfg->failover_wait_ms = 20 * 1000;

    cfg->server_connect_timeout_ms = 5 * 1000;
    cfg->server_login_timeout_ms = 10 * 1000;
    cfg->server_lifetime_ms = 3600 * 1000;
    cfg->server_idle_timeout_ms = 600 * 1000;
    cfg->overflow_idle_timeout_ms = 1000;
    cfg->server_check_delay_ms = 30 * 1000;
    cfg->unused_pool_timeout_ms = 60 * 1000;
    cfg->idle_transaction_timeout_ms = 0;
    cfg->client_idle_timeout_ms = 0;
    cfg->query_timeout_ms = 0;
    cfg->client_login_timeout_ms = 60 * 1000;
    cfg->client_startup_timeout_ms = 10 * 1000;
    cfg->shutdown_timeout_ms = 30 * 1000;

    cfg->max_client_conn = 10000;
    cfg->max_pending_logins = 2000;
    cfg->max_pending_logins_per_address = 200;
    cfg->max_prepared_statements = 200;
    cfg->max_client_prepared_statements = 10000;
    cfg->max_client_prepared_bytes = 64u * 1024 * 1024;
    cfg->max_message_size = 1073741824u;

    cfg->redis_url = NULL;
    cfg->log_level = PGS_LOG_INFO;
    cfg->unix_socket_permissions = 0700;
    cfg->unix_socket_group = NULL;
    cfg->allow_core_dumps = false;

    cfg->n_listen = 1;
    cfg->listen[0].is_unix = false;
    snprintf(cfg->listen[0].host, sizeof(cfg->listen[0].host), "%s", cfg->listen_host);
    cfg->listen[0].port = cfg->listen_port;
    cfg->max_startup_packet_size = 10000;
    cfg->auth.type = PGS_AUTH_SCRAM;
    cfg->auth.query_max_per_address = 4;
    cfg->auth.query_negative_ttl_ms = 30000;
    cfg->tls.mode = PGS_TLS_DISABLE;
    cfg->tls.min_protocol = 0x0303;
    cfg->server_tls.sslmode = PGS_SSLMODE_PREFER;
    cfg->server_tls.channel_binding = PGS_CBIND_PREFER;
    /* PostgreSQL makes 4096; this leaves room for roles given a stronger
     * secret while keeping one login's PBKDF2 to tens of milliseconds. */
    cfg->server_scram_max_iterations = 100000;
    cfg->server_allow_cleartext_password = false;
}

/* ------------------------------------------------------------------------ */
/* postgresql:// URLs                                                       */
/* ------------------------------------------------------------------------ */

void config_url_free(pgs_url *u)
{
    if (!u) return;
    free(u->user);
    free(u->password);
    free(u->host);
    free(u->dbname);
    for (int i = 0; i < u->n_params && i < PGS_URL_MAX_PARAMS; i++) {
        free(u->params[i].key);
        free(u->params[i].value);
    }
    memset(u, 0, sizeof(*u));
}

const char *config_url_param(const pgs_url *u, const char *key)
{
    /* The last occurrence wins, as it does when libpq reads the URL. */
    for (int i = u->n_params - 1; i >= 0; i--)
        if (strcmp(u->params[i].key, key) == 0) return u->params[i].value;
    return NULL;
}

/* Percent-decodes s[0..n).  Returns 0, -1 for a malformed escape, -2 for an
 * escape that decodes to NUL (it would silently truncate the C string). */
static int pct_decode(const char *s, size_t n, char **out)
{
    char *d = pgs_xmalloc(n + 1);
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            int hi = n - i >= 3 ? hexval((unsigned char)s[i + 1]) : -1;
            int lo = n - i >= 3 ? hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                free(d);
                return -1;
            }
            c = (unsigned char)(hi * 16 + lo);
            if (c == 0) {
                free(d);
                return -2;
            }
            i += 2;
        }
        d[j++] = (char)c;
    }
    d[j] = '\0';
    *out = d;
    return 0;
}

/* Decodes one URL component.  Empty components stay NULL ("not given"), as
 * libpq ignores an empty user or password.  Messages name the component but
 * never echo it: the component may be (part of) a password. */
static int decode_part(const char *s, size_t n, const char *what, char **out, char *err,
                       size_t errlen)
{
    *out = NULL;
    if (n == 0) return 0;
    int rc = pct_decode(s, n, out);
    if (rc == -1) {
        pgs_seterr(err, errlen,
                   "bad percent-escape in %s (use %%XX with two hex digits; write a literal "
                   "'%%' as %%25)",
                   what);
        return -EINVAL;
    }
    if (rc == -2) {
        pgs_seterr(err, errlen, "%s contains an encoded NUL byte (%%00)", what);
        return -EINVAL;
    }
    return 0;
}

/* Port: digits only, 1..65535.  Returns the port or -1. */
static int parse_port(const char *s, size_t n)
{
    if (n == 0 || n > 5) return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit((unsigned char)s[i])) return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v >= 1 && v <= 65535 ? v : -1;
}

/* An IPv6 literal, optionally with a zone ("fe80::1%eth0"). */
static bool valid_ipv6(const char *h)
{
    char buf[INET6_ADDRSTRLEN + 1];
    const char *pct = strchr(h, '%');
    size_t n = pct ? (size_t)(pct - h) : strlen(h);
    if (n == 0 || n >= sizeof(buf)) return false;
    if (pct && pct[1] == '\0') return false;
    memcpy(buf, h, n);
    buf[n] = '\0';
    struct in6_addr a;
    return inet_pton(AF_INET6, buf, &a) == 1;
}

static int set_part(char **field, char *value)
{
    free(*field);
    *field = value;
    return 0;
}

/* Query parameters that libpq treats as the URL's own parts: they override
 * what the authority and path said, and are not kept in params[] (they are
 * not server parameters, and "password" must not be displayed). */
static int apply_param(pgs_url *u, char *key, char *value, char *err, size_t errlen)
{
    char **field = NULL;
    if (strcmp(key, "host") == 0) field = &u->host;
    else if (strcmp(key, "user") == 0) field = &u->user;
    else if (strcmp(key, "password") == 0) field = &u->password;
    else if (strcmp(key, "dbname") == 0) field = &u->dbname;

    if (field) {
        free(key);
        if (value && value[0] == '\0') {
            free(value);
            value = NULL;
        }
        if (field == &u->host && value && strchr(value, ',')) {
            free(value);
            pgs_seterr(err, errlen,
                       "multiple hosts (host1,host2) in the 'host' query parameter are not "
                       "supported yet; give one host");
            return -EINVAL;
        }
        return set_part(field, value);
    }
    if (strcmp(key, "port") == 0) {
        free(key);
        int port = 0;
        if (value && value[0]) {
            port = parse_port(value, strlen(value));
            if (port < 0) {
                char sb[80];
                pgs_seterr(err, errlen,
                           "query parameter 'port': '%s' is not a port (expected digits, "
                           "1..65535)",
                           shown(value, sb, sizeof(sb)));
                free(value);
                return -EINVAL;
            }
        }
        free(value);
        u->port = port;
        return 0;
    }
    if (strcmp(key, "sslmode") == 0 && value && value[0]) {
        /* Checked here, as libpq does, because it also sets
         * server_tls.sslmode when the config file does not. */
        pgs_sslmode m;
        char why[200];
        if (config_parse_sslmode(value, &m, why, sizeof(why)) < 0) {
            pgs_seterr(err, errlen, "query parameter 'sslmode': %s", why);
            free(key);
            free(value);
            return -EINVAL;
        }
    }
    if (strcmp(key, "channel_binding") == 0 && value && value[0]) {
        pgs_channel_binding m;
        char why[200];
        if (config_parse_channel_binding(value, &m, why, sizeof(why)) < 0) {
            pgs_seterr(err, errlen, "query parameter 'channel_binding': %s", why);
            free(key);
            free(value);
            return -EINVAL;
        }
    }
    if (u->n_params >= PGS_URL_MAX_PARAMS) {
        free(key);
        free(value);
        pgs_seterr(err, errlen, "too many query parameters (at most %d)", PGS_URL_MAX_PARAMS);
        return -EINVAL;
    }
    u->params[u->n_params].key = key;
    u->params[u->n_params].value = value ? value : pgs_xstrdup("");
    u->n_params++;
    return 0;
}

static int parse_query(pgs_url *u, const char *q, char *err, size_t errlen)
{
    while (*q) {
        size_t seg = strcspn(q, "&");
        if (seg > 0) { /* empty segments ("a=1&&b=2", trailing '&') are skipped */
            const char *eq = memchr(q, '=', seg);
            char kb[80];
            if (!eq) {
                char *key = NULL;
                if (decode_part(q, seg, "a query parameter name", &key, err, errlen) == 0) {
                    pgs_seterr(err, errlen, "query parameter '%s' has no '=value'",
                               shown(key, kb, sizeof(kb)));
                    free(key);
                }
                return -EINVAL;
            }
            size_t kn = (size_t)(eq - q);
            if (kn == 0) {
                pgs_seterr(err, errlen, "query parameter with an empty name");
                return -EINVAL;
            }
            char *key = NULL, *value = NULL;
            if (decode_part(q, kn, "a query parameter name", &key, err, errlen) < 0)
                return -EINVAL;
            char what[128];
            snprintf(what, sizeof(what), "the value of query parameter '%s'",
                     shown(key, kb, sizeof(kb)));
            if (decode_part(eq + 1, seg - kn - 1, what, &value, err, errlen) < 0) {
                free(key);
                return -EINVAL;
            }
            int rc = apply_param(u, key, value, err, errlen);
            if (rc < 0) return rc;
        }
        q += seg;
        if (*q == '&') q++;
    }
    return 0;
}

/* Accepts postgresql, postgres, and either with a "+driver" suffix as
 * SQLAlchemy writes them (postgresql+asyncpg, postgres+psycopg2). */
static int check_scheme(const char *s, size_t n, char *err, size_t errlen)
{
    const char *plus = memchr(s, '+', n);
    size_t base = plus ? (size_t)(plus - s) : n;
    bool ok = (base == 10 && strncasecmp(s, "postgresql", 10) == 0) ||
              (base == 8 && strncasecmp(s, "postgres", 8) == 0);
    if (ok && plus) {
        size_t dn = n - base - 1;
        if (dn == 0) {
            pgs_seterr(err, errlen, "URL scheme '%.*s://' has an empty driver name after '+'",
                       (int)n, s);
            return -EINVAL;
        }
        for (size_t i = 0; i < dn; i++) {
            int c = (unsigned char)plus[1 + i];
            if (!is_alnum(c) && c != '_') {
                ok = false;
                break;
            }
        }
    }
    if (!ok) {
        char sb[80], tmp[64];
        snprintf(tmp, sizeof(tmp), "%.*s", (int)PGS_MIN(n, sizeof(tmp) - 1), s);
        pgs_seterr(err, errlen,
                   "URL scheme '%s://' is not supported; use postgresql:// or postgres:// "
                   "(a driver suffix such as postgresql+asyncpg:// is fine)",
                   shown(tmp, sb, sizeof(sb)));
        return -EINVAL;
    }
    return 0;
}

static int parse_url(const char *s, pgs_url *u, char *err, size_t errlen)
{
    if (!s || !*s) {
        pgs_seterr(err, errlen, "URL is empty");
        return -EINVAL;
    }
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c < 0x20 || c == 0x7f) {
            pgs_seterr(err, errlen,
                       "URL contains a control character at offset %zu (a stray newline or "
                       "tab?)",
                       (size_t)(p - s));
            return -EINVAL;
        }
    }

    /* Scheme: letters, digits, '+', '-', '.' (RFC 3986), then "://". */
    const char *p = s;
    if (is_alpha((unsigned char)*p))
        while (is_alnum((unsigned char)*p) || *p == '+' || *p == '-' || *p == '.') p++;
    if (p == s || strncmp(p, "://", 3) != 0) {
        pgs_seterr(err, errlen,
                   "URL must start with postgresql:// or postgres:// (a driver suffix such as "
                   "postgresql+asyncpg:// is fine)");
        return -EINVAL;
    }
    if (check_scheme(s, (size_t)(p - s), err, errlen) < 0) return -EINVAL;
    const char *auth = p + 3;
    const char *auth_end = auth + strcspn(auth, "/?");

    /* user:password@ -- split at the last '@' of the authority: a host can
     * never contain one, so an unencoded '@' in a password still parses. */
    const char *hostport = auth;
    const char *at = NULL;
    for (const char *q = auth; q < auth_end; q++)
        if (*q == '@') at = q;
    if (at) {
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        const char *user_end = colon ? colon : at;
        if (decode_part(auth, (size_t)(user_end - auth), "the user name", &u->user, err,
                        errlen) < 0)
            return -EINVAL;
        if (colon && decode_part(colon + 1, (size_t)(at - colon - 1), "the password",
                                 &u->password, err, errlen) < 0)
            return -EINVAL;
        hostport = at + 1;
    }

    size_t hpn = (size_t)(auth_end - hostport);
    if (memchr(hostport, ',', hpn)) {
        pgs_seterr(err, errlen,
                   "multiple hosts (host1,host2) in the URL are not supported yet; give one "
                   "host");
        return -EINVAL;
    }
    const char *port_str = NULL;
    if (hpn > 0 && hostport[0] == '[') {
        const char *close = memchr(hostport, ']', hpn);
        if (!close) {
            pgs_seterr(err, errlen, "IPv6 host is missing its closing ']'");
            return -EINVAL;
        }
        if (decode_part(hostport + 1, (size_t)(close - hostport - 1), "the host", &u->host,
                        err, errlen) < 0)
            return -EINVAL;
        if (!u->host || !valid_ipv6(u->host)) {
            pgs_seterr(err, errlen, "the host in [brackets] is not an IPv6 address");
            return -EINVAL;
        }
        if (close + 1 < auth_end) {
            if (close[1] != ':') {
                pgs_seterr(err, errlen,
                           "unexpected text after the IPv6 host's ']' (expected ':port')");
                return -EINVAL;
            }
            port_str = close + 2;
        }
    } else {
        const char *colon = memchr(hostport, ':', hpn);
        size_t hn = colon ? (size_t)(colon - hostport) : hpn;
        if (colon && memchr(colon + 1, ':', (size_t)(auth_end - colon - 1))) {
            pgs_seterr(err, errlen,
                       "host has more than one ':'; write an IPv6 host in brackets, e.g. "
                       "postgresql://[::1]:5432/db");
            return -EINVAL;
        }
        if (decode_part(hostport, hn, "the host", &u->host, err, errlen) < 0) return -EINVAL;
        if (colon) port_str = colon + 1;
    }
    if (u->host && strchr(u->host, ',')) {
        pgs_seterr(err, errlen,
                   "multiple hosts (host1,host2) in the URL are not supported yet; give one "
                   "host");
        return -EINVAL;
    }
    if (port_str) {
        /* The port text is not echoed: if a password held an unencoded '/',
         * what looks like host:port here is really user:password. */
        u->port = parse_port(port_str, (size_t)(auth_end - port_str));
        if (u->port < 0) {
            u->port = 0;
            pgs_seterr(err, errlen, "invalid port in URL (expected digits, 1..65535)");
            return -EINVAL;
        }
    }

    const char *rest = auth_end;
    if (*rest == '/') {
        const char *db = rest + 1;
        size_t dn = strcspn(db, "?");
        if (decode_part(db, dn, "the database name", &u->dbname, err, errlen) < 0)
            return -EINVAL;
        rest = db + dn;
    }
    if (*rest == '?') return parse_query(u, rest + 1, err, errlen);
    return 0;
}

int config_parse_url(const char *s, pgs_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    int rc = parse_url(s, out, err, errlen);
    /* a socket directory is checked now, where the error can name the line */
    if (rc == 0) rc = endpoint_check_host(out->host, out->port, err, errlen);
    if (rc < 0) config_url_free(out); /* leaves *out zeroed: safe to free again */
    return rc;
}

/* Writes u back as a URL with the password (and any *password* parameter)
 * replaced by ****; re-encodes what needs it so the result parses again. */
static void sb_pct(sbuf *b, const char *s, const char *keep)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (is_alnum(c) || strchr("-._~", c) || (keep && c && strchr(keep, c))) {
            sb_putc(b, (char)c);
        } else {
            char hex[4];
            snprintf(hex, sizeof(hex), "%%%02X", c);
            sb_puts(b, hex);
        }
    }
}

static void url_format_masked(sbuf *b, const pgs_url *u)
{
    sb_puts(b, "postgresql://");
    if (u->user || u->password) {
        if (u->user) sb_pct(b, u->user, NULL);
        if (u->password) sb_puts(b, ":****");
        sb_putc(b, '@');
    }
    if (u->host) {
        if (strchr(u->host, ':')) { /* IPv6; only a zone's '%' needs escaping */
            sb_putc(b, '[');
            sb_pct(b, u->host, ":");
            sb_putc(b, ']');
        } else {
            sb_pct(b, u->host, NULL);
        }
    }
    if (u->port) {
        char pb[16];
        snprintf(pb, sizeof(pb), ":%d", u->port);
        sb_puts(b, pb);
    }
    if (u->dbname) {
        sb_putc(b, '/');
        sb_pct(b, u->dbname, NULL);
    }
    for (int i = 0; i < u->n_params; i++) {
        sb_putc(b, i == 0 ? '?' : '&');
        sb_pct(b, u->params[i].key, NULL);
        sb_putc(b, '=');
        if (strstr(u->params[i].key, "password")) sb_puts(b, "****");
        else sb_pct(b, u->params[i].value, NULL);
    }
}

/* Is a URL query key one that carries a secret (password=, pass=,
 * sslpassword=, secret=, token=, in any case)? */
static bool secret_key(const char *k, size_t n)
{
    static const char *const words[] = {"pass", "secret", "token", "auth"};
    for (size_t w = 0; w < PGS_ARRAY_LEN(words); w++) {
        size_t wl = strlen(words[w]);
        for (size_t i = 0; i + wl <= n; i++)
            if (strncasecmp(k + i, words[w], wl) == 0) return true;
    }
    return false;
}

/* Masks every secret of a redis:// URL for display: the password of
 * user:password@ (a lone userinfo too, which some clients read as the
 * password), and the value of any query parameter that names one
 * (redis://host/0?password=...). */
static void redis_format_masked(sbuf *b, const char *url)
{
    const char *auth = strstr(url, "://");
    if (!auth) {
        sb_puts(b, "****");
        return;
    }
    auth += 3;
    const char *end = auth + strcspn(auth, "/?#");
    const char *at = NULL;
    for (const char *q = auth; q < end; q++)
        if (*q == '@') at = q;
    const char *rest = auth;
    if (at) {
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        sb_putn(b, url, (size_t)((colon ? colon + 1 : auth) - url));
        sb_puts(b, "****");
        rest = at;
    } else {
        sb_putn(b, url, (size_t)(auth - url));
    }
    const char *q = strchr(rest, '?');
    if (!q) {
        sb_puts(b, rest);
        return;
    }
    sb_putn(b, rest, (size_t)(q + 1 - rest));
    for (const char *p = q + 1; *p;) {
        size_t len = strcspn(p, "&#");
        const char *eq = memchr(p, '=', len);
        if (eq && secret_key(p, (size_t)(eq - p))) {
            sb_putn(b, p, (size_t)(eq + 1 - p));
            sb_puts(b, "****");
        } else {
            sb_putn(b, p, len);
        }
        p += len;
        if (*p == '#') {
            sb_puts(b, p);
            break;
        }
        if (*p == '&') sb_putc(b, *p++);
    }
}

/* ------------------------------------------------------------------------ */
/* Value parsers: each returns 0 or -EINVAL with a reason (without the       */
/* variable name, which the caller puts in front).                          */
/* ------------------------------------------------------------------------ */

/* Strict integer: the whole string, no leading blanks, no overflow.
 * Returns 0, -1 (not an integer) or -2 (does not fit in a long). */
static int parse_long(const char *v, long *out)
{
    if (!*v || *v == ' ' || *v == '\t' || (unsigned char)*v < 0x20) return -1;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end != '\0') return -1;
    if (errno == ERANGE) return -2;
    *out = x;
    return 0;
}

static int parse_int_range(const char *v, long min, long max, const char *expect, int *out,
                           char *why, size_t whylen)
{
    char sb[80];
    long x;
    int rc = parse_long(v, &x);
    if (rc == -1) {
        pgs_seterr(why, whylen, "'%s' is not an integer (expected %s)", shown(v, sb, sizeof(sb)),
                   expect);
        return -EINVAL;
    }
    if (rc == -2 || x < min || x > max) {
        pgs_seterr(why, whylen, "'%s' is out of range (expected %s)", shown(v, sb, sizeof(sb)),
                   expect);
        return -EINVAL;
    }
    *out = (int)x;
    return 0;
}

/* Durations: "30" (seconds), "2.5s", "500ms", "1min", "1h".  Fixed-point
 * arithmetic, so "0.1s" is exactly 100 ms.  Returns 0; -1 syntax; -2 too
 * large for uint32 milliseconds; -3 non-zero but rounds to 0 ms;
 * -4 negative. */
static int parse_duration_ms(const char *v, uint32_t *out)
{
    const char *p = v;
    if (*p == '-') return -4;
    uint64_t ip = 0, frac = 0, scale = 1;
    int nd_int = 0, nd_frac = 0;
    bool huge = false;
    for (; is_digit((unsigned char)*p); p++, nd_int++) {
        if (ip > 100000000000ull) huge = true; /* far beyond any valid value */
        else ip = ip * 10 + (uint64_t)(*p - '0');
    }
    if (*p == '.') {
        p++;
        for (; is_digit((unsigned char)*p); p++, nd_frac++) {
            if (scale < 1000000000ull) {
                frac = frac * 10 + (uint64_t)(*p - '0');
                scale *= 10;
            }
        }
        if (nd_frac == 0) return -1;
    }
    if (nd_int + nd_frac == 0) return -1;
    while (*p == ' ') p++;
    uint64_t unit;
    if (*p == '\0' || strcasecmp(p, "s") == 0) unit = 1000;
    else if (strcasecmp(p, "ms") == 0) unit = 1;
    else if (strcasecmp(p, "min") == 0) unit = 60000;
    else if (strcasecmp(p, "h") == 0) unit = 3600000;
    else return -1;
    if (huge) return -2;
    uint64_t ms = ip * unit + (frac * unit + scale / 2) / scale;
    if (ms > UINT32_MAX) return -2;
    if (ms == 0 && (ip || frac)) return -3;
    *out = (uint32_t)ms;
    return 0;
}

static int parse_duration_setting(const char *v, bool zero_is_off, uint32_t *out, char *why,
                                  size_t whylen)
{
    char sb[80];
    uint32_t ms = 0;
    switch (parse_duration_ms(v, &ms)) {
    case 0:
        break;
    case -2:
        pgs_seterr(why, whylen, "'%s' is too long (at most 4294967295ms, about 49 days)",
                   shown(v, sb, sizeof(sb)));
        return -EINVAL;
    case -3:
        pgs_seterr(why, whylen, "'%s' is shorter than 1ms", shown(v, sb, sizeof(sb)));
        return -EINVAL;
    case -4:
        pgs_seterr(why, whylen,
                   "'%s' is negative (expected a duration%s)", shown(v, sb, sizeof(sb)),
                   zero_is_off ? ", or 0 for off" : " greater than 0");
        return -EINVAL;
    default:
        pgs_seterr(why, whylen,
                   "'%s' is not a duration (expected seconds, or a number with a unit ms, s, "
                   "min or h, e.g. 500ms, 2.5s, 1min%s)",
                   shown(v, sb, sizeof(sb)), zero_is_off ? "; 0 turns it off" : "");
        return -EINVAL;
    }
    if (ms == 0 && !zero_is_off) {
        pgs_seterr(why, whylen, "'%s' is not allowed: this timeout cannot be turned off (expected "
                            "a duration greater than 0)",
                   shown(v, sb, sizeof(sb)));
        return -EINVAL;
    }
    *out = ms;
    return 0;
}

/* A byte count in the largest unit that divides it exactly: 64MB, 1kB, 10000. */
static void format_size(uint64_t n, char *buf, size_t len)
{
    if (n && n % (1u << 30) == 0) snprintf(buf, len, "%lluGB", (unsigned long long)(n >> 30));
    else if (n && n % (1u << 20) == 0) snprintf(buf, len, "%lluMB", (unsigned long long)(n >> 20));
    else if (n && n % (1u << 10) == 0) snprintf(buf, len, "%llukB", (unsigned long long)(n >> 10));
    else snprintf(buf, len, "%llu", (unsigned long long)n);
}

/* Sizes in bytes with an optional B, kB, MB or GB suffix (1024-based, as
 * PostgreSQL's own memory settings are). */
static int parse_bytes64(const char *v, uint64_t min, uint64_t max, uint64_t *out, char *why,
                         size_t whylen)
{
    char sb[80], lo[32], hi[32];
    format_size(min, lo, sizeof(lo));
    format_size(max, hi, sizeof(hi));
    const char *p = v;
    uint64_t n = 0;
    bool huge = false;
    int nd = 0;
    for (; is_digit((unsigned char)*p); p++, nd++) {
        if (n > 1000000000000000ull) huge = true;
        else n = n * 10 + (uint64_t)(*p - '0');
    }
    while (*p == ' ') p++;
    uint64_t mul = 0;
    if (*p == '\0' || strcasecmp(p, "B") == 0) mul = 1;
    else if (strcasecmp(p, "kB") == 0) mul = 1024;
    else if (strcasecmp(p, "MB") == 0) mul = 1024 * 1024;
    else if (strcasecmp(p, "GB") == 0) mul = 1024 * 1024 * 1024;
    if (nd == 0 || mul == 0) {
        pgs_seterr(why, whylen,
                   "'%s' is not a size (expected bytes, optionally with kB, MB or GB, e.g. "
                   "64MB; range %s..%s)",
                   shown(v, sb, sizeof(sb)), lo, hi);
        return -EINVAL;
    }
    if (huge || n > max / mul || n * mul < min) {
        pgs_seterr(why, whylen, "'%s' is out of range (expected %s..%s, i.e. %llu..%llu bytes)",
                   shown(v, sb, sizeof(sb)), lo, hi, (unsigned long long)min,
                   (unsigned long long)max);
        return -EINVAL;
    }
    *out = n * mul;
    return 0;
}

static int parse_bytes(const char *v, uint64_t min, uint64_t max, uint32_t *out, char *why,
                       size_t whylen)
{
    uint64_t x;
    if (parse_bytes64(v, min, max < UINT32_MAX ? max : UINT32_MAX, &x, why, whylen) < 0)
        return -EINVAL;
    *out = (uint32_t)x;
    return 0;
}

/* A size needs a unit here (a bare number could be seconds or bytes); the
 * unit decides which of the two limits the value sets. */
int config_parse_replica_lag(const char *v, uint64_t *bytes, uint32_t *ms, char *why,
                             size_t whylen)
{
    char sb[80];
    const char *p = v;
    while (is_digit((unsigned char)*p) || *p == '.') p++;
    if (p != v && *p == '\0') {
        if (strspn(v, "0") == strlen(v)) {
            *bytes = 0;
            *ms = 0;
            return 0;
        }
        pgs_seterr(why, whylen, "'%s' needs a unit: a size (e.g. 16MB) or a duration (e.g. 10s), "
                            "or 0 for no limit", shown(v, sb, sizeof(sb)));
        return -EINVAL;
    }
    while (*p == ' ') p++;
    if (strcasecmp(p, "B") == 0 || strcasecmp(p, "kB") == 0 || strcasecmp(p, "MB") == 0 ||
        strcasecmp(p, "GB") == 0) {
        uint64_t b;
        if (parse_bytes64(v, 0, 1024ull << 30, &b, why, whylen) < 0) return -EINVAL;
        *bytes = b;
        *ms = 0;
        return 0;
    }
    uint32_t d = 0;
    if (parse_duration_ms(v, &d) < 0) {
        pgs_seterr(why, whylen, "'%s' is neither a size (e.g. 16MB) nor a duration (e.g. 10s, "
                            "500ms); 0 means no limit", shown(v, sb, sizeof(sb)));
        return -EINVAL;
    }
    *bytes = 0;
    *ms = d;
    return 0;
}

static bool valid_listen_host(const char *h)
{
    if (!*h) return false;
    for (; *h; h++)
        if (!is_alnum((unsigned char)*h) && *h != '.' && *h != '-' && *h != '_') return false;
    return true;
}

/* PGSCALE_LISTEN: "host:port", "[v6]:port", ":port" or "port" (keep the
 * host), or "host" (keep the port).  ":port" deliberately keeps the default
 * 127.0.0.1 instead of meaning "all interfaces": opening a database proxy
 * to the network should take an explicit 0.0.0.0 or [::]. */
/* host_io holds 256 bytes: pgs_config.listen_host and pgs_listen_addr.host. */
_Static_assert(sizeof(((pgs_config *)0)->listen_host) == 256, "listen_host size");
_Static_assert(sizeof(((pgs_listen_addr *)0)->host) == 256, "listen address size");

static int parse_listen_hp(const char *v, char *host_io, int *port_io, char *why,
                           size_t whylen)
{
    char sb[80];
    char host[256];
    snprintf(host, sizeof(host), "%s", host_io);
    int port = *port_io;
    const char *port_str = NULL;
    size_t vn = strlen(v);

    if (v[0] == '[') {
        const char *close = strchr(v, ']');
        size_t hn = close ? (size_t)(close - v - 1) : 0;
        if (!close || hn == 0 || hn >= sizeof(host)) {
            pgs_seterr(why, whylen, "'%s' has an unterminated or empty [IPv6] address",
                       shown(v, sb, sizeof(sb)));
            return -EINVAL;
        }
        memcpy(host, v + 1, hn);
        host[hn] = '\0';
        if (!valid_ipv6(host)) {
            pgs_seterr(why, whylen, "'%s' does not hold an IPv6 address in [brackets]",
                       shown(v, sb, sizeof(sb)));
            return -EINVAL;
        }
        if (close[1] == ':') port_str = close + 2;
        else if (close[1] != '\0') {
            pgs_seterr(why, whylen, "'%s' has unexpected text after ']' (expected [addr]:port)",
                       shown(v, sb, sizeof(sb)));
            return -EINVAL;
        }
    } else {
        const char *colon = strchr(v, ':');
        bool all_digits = vn > 0;
        for (size_t i = 0; i < vn; i++)
            if (!is_digit((unsigned char)v[i])) all_digits = false;
        if (all_digits) {
            port_str = v;
        } else if (colon && strchr(colon + 1, ':')) {
            pgs_seterr(why, whylen,
                       "'%s' looks like an IPv6 address; write it in brackets, e.g. [::1]:6432",
                       shown(v, sb, sizeof(sb)));
            return -EINVAL;
        } else {
            size_t hn = colon ? (size_t)(colon - v) : vn;
            if (hn >= sizeof(host)) {
                pgs_seterr(why, whylen, "host in '%s' is too long", shown(v, sb, sizeof(sb)));
                return -EINVAL;
            }
            if (hn > 0) {
                memcpy(host, v, hn);
                host[hn] = '\0';
                if (!valid_listen_host(host)) {
                    pgs_seterr(why, whylen, "'%s' does not start with a valid host name or address",
                               shown(v, sb, sizeof(sb)));
                    return -EINVAL;
                }
            }
            if (colon) port_str = colon + 1;
        }
    }
    if (port_str) {
        port = parse_port(port_str, strlen(port_str));
        if (port < 0) {
            pgs_seterr(why, whylen,
                       "'%s' has an invalid port (expected host:port with port 1..65535)",
                       shown(v, sb, sizeof(sb)));
            return -EINVAL;
        }
    }
    snprintf(host_io, 256, "%s", host);
    *port_io = port;
    return 0;
}

/* PGSCALE_LISTEN sets the one address, replacing a listen: list. */
static int parse_listen(const char *v, pgs_config *cfg, char *why, size_t whylen)
{
    if (parse_listen_hp(v, cfg->listen_host, &cfg->listen_port, why, whylen) < 0) return -EINVAL;
    memset(cfg->listen, 0, sizeof(cfg->listen));
    snprintf(cfg->listen[0].host, sizeof(cfg->listen[0].host), "%s", cfg->listen_host);
    cfg->listen[0].port = cfg->listen_port;
    cfg->n_listen = 1;
    return 0;
}

/* The socket file is <dir>/.s.PGSQL.<port>, and sockaddr_un holds 108 bytes. */
#define UNIX_DIR_MAX (108 - sizeof("/.s.PGSQL.65535"))

int config_parse_listen_addr(const char *v, pgs_listen_addr *out, char *why, size_t whylen)
{
    char sb[80];
    if (strncmp(v, "unix:", 5) != 0) {
        if (parse_listen_hp(v, out->host, &out->port, why, whylen) < 0) return -EINVAL;
        out->is_unix = false;
        return 0;
    }
    const char *dir = v + 5;
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--; /* "unix:/run/pgscale/" is the same directory */
    if (dir[0] != '/') {
        pgs_seterr(why, whylen,
                   "'%s' is not an absolute directory (expected unix:/path/to/dir, e.g. "
                   "unix:/run/pgscale)",
                   shown(v, sb, sizeof(sb)));
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)dir[i] < 0x20 || dir[i] == 0x7f) {
            pgs_seterr(why, whylen, "'%s' contains a control character", shown(v, sb, sizeof(sb)));
            return -EINVAL;
        }
    }
    if (n > UNIX_DIR_MAX) {
        pgs_seterr(why, whylen,
                   "'%s': the directory is longer than %zu bytes (the socket path "
                   "<dir>/.s.PGSQL.<port> must fit in 107 bytes)",
                   shown(v, sb, sizeof(sb)), (size_t)UNIX_DIR_MAX);
        return -EINVAL;
    }
    out->is_unix = true;
    snprintf(out->host, sizeof(out->host), "%.*s", (int)n, dir);
    return 0;
}

void config_format_listen(const pgs_listen_addr *a, char *buf, size_t n)
{
    if (a->is_unix) snprintf(buf, n, "unix:%s", a->host);
    else snprintf(buf, n, strchr(a->host, ':') ? "[%s]:%d" : "%s:%d", a->host, a->port);
}

void config_format_listen_list(const pgs_config *cfg, char *buf, size_t n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < cfg->n_listen; i++) {
        char one[300];
        config_format_listen(&cfg->listen[i], one, sizeof(one));
        int w = snprintf(buf + used, n - used, "%s%s", i ? ", " : "", one);
        if (w < 0 || (size_t)w >= n - used) break; /* truncated: stop there */
        used += (size_t)w;
    }
}

/* READ_REPLICA_URLS: a comma splits the list only where the next item
 * starts with a scheme ("scheme://") or the list ends.  A comma anywhere
 * else belongs to the URL, so "postgresql://h1,h2/db" reaches the URL
 * parser whole and gets its "multiple hosts" message rather than a
 * confusing one about a URL "h2/db". */
static const char *next_list_item(const char *p)
{
    for (; *p; p++) {
        if (*p != ',') continue;
        const char *q = p + 1;
        while (*q == ' ' || *q == '\t') q++;
        if (*q == '\0') return p;
        const char *r = q;
        if (is_alpha((unsigned char)*r)) {
            while (is_alnum((unsigned char)*r) || *r == '+' || *r == '-' || *r == '.') r++;
            if (strncmp(r, "://", 3) == 0) return p;
        }
    }
    return p;
}

static int parse_url_list(const char *v, pgs_url **out, int *n_out, char *why, size_t whylen)
{
    pgs_url *list = NULL;
    int n = 0;
    const char *p = v;
    char reason[512];
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        if (!*p) break;
        const char *end = next_list_item(p);
        size_t len = (size_t)(end - p);
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
        char *item = pgs_xstrndup(p, len);
        list = pgs_xrealloc(list, sizeof(*list) * (size_t)(n + 1));
        int rc = config_parse_url(item, &list[n], reason, sizeof(reason));
        free(item);
        if (rc < 0) {
            pgs_seterr(why, whylen, "URL %d: %s", n + 1, reason);
            for (int i = 0; i < n; i++) config_url_free(&list[i]);
            free(list);
            return -EINVAL;
        }
        n++;
        p = end;
    }
    *out = list;
    *n_out = n;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The table of settings: drives apply, describe and the known-name check.  */
/* ------------------------------------------------------------------------ */

enum kind {
    K_URL,       /* pgs_url */
    K_URL_LIST,  /* pgs_url *replicas + n_replicas */
    K_LISTEN,    /* listen_host + listen_port */
    K_HTTP,      /* http_host + http_port, or off */
    K_POOL_MODE, /* pgs_pool_mode */
    K_INT,       /* int in [min, max] */
    K_OVERFLOW,  /* int in [0, max], -1 = unlimited */
    K_DURATION,  /* uint32_t milliseconds */
    K_BYTES,     /* uint32_t bytes in [min, max] */
    K_BYTES64,   /* uint64_t bytes in [min, max] */
    K_REDIS,     /* char * */
    K_LOG_LEVEL, /* int, PGS_LOG_* */
    K_FILE_MODE, /* int, permission bits 0..0777, written in octal */
    K_NAME,      /* char *, a plain name without control characters */
    K_BOOL,      /* bool: on/off, true/false, yes/no, 1/0 */
    K_ENUM,      /* int: the index of the value in names */
    K_LAG,       /* max_replica_lag_bytes + max_replica_lag_ms */
};

struct setting {
    const char *name; /* the environment variable */
    const char *key;  /* the config file key */
    enum kind kind;
    size_t off;
    long min, max;    /* K_INT, K_OVERFLOW, K_BYTES, K_BYTES64 */
    bool zero_is_off; /* K_DURATION */
    const char *const *names; /* K_ENUM: the values, NULL-terminated */
    const char *what;         /* K_ENUM: "a reset mode", for messages */
};

static const char *const reset_names[] = {"off", "all", NULL};
static const char *const consistency_names[] = {"session", "strict", "eventual", NULL};
static const char *const failover_names[] = {"auto", "follow", "off", NULL};
static const char *const http_auth_names[] = {"off", "basic", NULL};
static const char *const balance_names[] = {"round_robin", "least_outstanding", "weighted",
                                            NULL};

#define F(field) offsetof(pgs_config, field)
#define DUR(n, k, field, zoff) \
    {.name = n, .key = k, .kind = K_DURATION, .off = F(field), .zero_is_off = zoff}
#define ENUM(n, k, field, list, w) \
    {.name = n, .key = k, .kind = K_ENUM, .off = F(field), .names = list, .what = w}
static const struct setting settings[] = {
    {.name = "DATABASE_URL", .key = "nodes.primary", .kind = K_URL, .off = F(primary)},
    {.name = "READ_REPLICA_URLS", .key = "nodes.replicas", .kind = K_URL_LIST,
     .off = F(replicas)},
    {.name = "PGSCALE_LISTEN", .key = "listen", .kind = K_LISTEN, .off = F(listen_host)},
    {.name = "PGSCALE_HTTP_LISTEN", .key = "http.listen", .kind = K_HTTP, .off = F(http_host)},
    {.name = "PGSCALE_HTTP_MAX_POOLS", .key = "http.max_pools", .kind = K_INT,
     .off = F(http_max_pools), .min = 1, .max = 1000000},
    ENUM("PGSCALE_HTTP_AUTH", "http.auth", http_auth, http_auth_names,
         "an HTTP authentication method"),
    {.name = "PGSCALE_HTTP_TLS_CERT", .key = "http.tls_cert", .kind = K_NAME,
     .off = F(http_tls_cert)},
    {.name = "PGSCALE_HTTP_TLS_KEY", .key = "http.tls_key", .kind = K_NAME,
     .off = F(http_tls_key)},
    {.name = "PGSCALE_POOL_MODE", .key = "pool_mode", .kind = K_POOL_MODE, .off = F(pool_mode)},
    {.name = "PGSCALE_WORKERS", .key = "workers", .kind = K_INT, .off = F(workers), .min = 1,
     .max = MAX_WORKERS},
    {.name = "DB_POOL_SIZE", .key = "pool_size", .kind = K_INT, .off = F(pool_size), .min = 1,
     .max = 10000},
    {.name = "DB_MAX_OVERFLOW", .key = "max_overflow", .kind = K_OVERFLOW,
     .off = F(max_overflow), .min = -1, .max = OVERFLOW_UNLIMITED},
    DUR("DB_POOL_TIMEOUT", "pool_timeout", pool_timeout_ms, false),
    {.name = "PGSCALE_PINNING", .key = "pinning", .kind = K_BOOL, .off = F(pinning)},
    {.name = "PGSCALE_MAX_PINNED", .key = "max_pinned", .kind = K_INT, .off = F(max_pinned),
     .min = 0, .max = 10000},
    ENUM("PGSCALE_SERVER_RESET_SETTINGS", "server_reset_settings", server_reset_settings,
         reset_names, "a reset mode"),
    DUR("PGSCALE_SERVER_CONNECT_TIMEOUT", "server_connect_timeout", server_connect_timeout_ms,
        false),
    DUR("PGSCALE_SERVER_LOGIN_TIMEOUT", "server_login_timeout", server_login_timeout_ms, false),
    DUR("PGSCALE_SERVER_LIFETIME", "server_lifetime", server_lifetime_ms, false),
    DUR("PGSCALE_SERVER_IDLE_TIMEOUT", "server_idle_timeout", server_idle_timeout_ms, false),
    DUR("PGSCALE_OVERFLOW_IDLE_TIMEOUT", "overflow_idle_timeout", overflow_idle_timeout_ms,
        true),
    DUR("PGSCALE_SERVER_CHECK_DELAY", "server_check_delay", server_check_delay_ms, false),
    DUR("PGSCALE_UNUSED_POOL_TIMEOUT", "unused_pool_timeout", unused_pool_timeout_ms, true),
    DUR("PGSCALE_IDLE_TRANSACTION_TIMEOUT", "idle_transaction_timeout",
        idle_transaction_timeout_ms, true),
    DUR("PGSCALE_CLIENT_IDLE_TIMEOUT", "client_idle_timeout", client_idle_timeout_ms, true),
    DUR("PGSCALE_QUERY_TIMEOUT", "query_timeout", query_timeout_ms, true),
    DUR("PGSCALE_CLIENT_LOGIN_TIMEOUT", "client_login_timeout", client_login_timeout_ms, false),
    DUR("PGSCALE_CLIENT_STARTUP_TIMEOUT", "client_startup_timeout", client_startup_timeout_ms,
        false),
    DUR("PGSCALE_SHUTDOWN_TIMEOUT", "shutdown_timeout", shutdown_timeout_ms, false),
    {.name = "PGSCALE_MAX_CLIENT_CONN", .key = "max_client_conn", .kind = K_INT,
     .off = F(max_client_conn), .min = 1, .max = 1000000},
    {.name = "PGSCALE_MAX_PENDING_LOGINS", .key = "max_pending_logins", .kind = K_INT,
     .off = F(max_pending_logins), .min = 1, .max = 1000000},
    {.name = "PGSCALE_MAX_PENDING_LOGINS_PER_ADDRESS", .key = "max_pending_logins_per_address",
     .kind = K_INT, .off = F(max_pending_logins_per_address), .min = 0, .max = 1000000},
    {.name = "PGSCALE_MAX_PREPARED_STATEMENTS", .key = "max_prepared_statements", .kind = K_INT,
     .off = F(max_prepared_statements), .min = 0, .max = 100000},
    {.name = "PGSCALE_MAX_CLIENT_PREPARED_STATEMENTS", .key = "max_client_prepared_statements",
     .kind = K_INT, .off = F(max_client_prepared_statements), .min = 1, .max = 10000000},
    {.name = "PGSCALE_MAX_CLIENT_PREPARED_BYTES", .key = "max_client_prepared_bytes",
     .kind = K_BYTES, .off = F(max_client_prepared_bytes), .min = 1024, .max = 1073741824L},
    {.name = "PGSCALE_MAX_MESSAGE_SIZE", .key = "max_message_size", .kind = K_BYTES,
     .off = F(max_message_size), .min = 1024, .max = 1073741824L},
    {.name = "REDIS_URL", .key = "redis_url", .kind = K_REDIS, .off = F(redis_url)},
    {.name = "PGSCALE_LOG_LEVEL", .key = "log_level", .kind = K_LOG_LEVEL, .off = F(log_level)},
    {.name = "PGSCALE_UNIX_SOCKET_PERMISSIONS", .key = "unix_socket_permissions",
     .kind = K_FILE_MODE, .off = F(unix_socket_permissions)},
    {.name = "PGSCALE_UNIX_SOCKET_GROUP", .key = "unix_socket_group", .kind = K_NAME,
     .off = F(unix_socket_group)},
    {.name = "PGSCALE_ALLOW_CORE_DUMPS", .key = "allow_core_dumps", .kind = K_BOOL,
     .off = F(allow_core_dumps)},
    {.name = "PGSCALE_SERVER_SCRAM_MAX_ITERATIONS", .key = "server_scram_max_iterations",
     .kind = K_INT, .off = F(server_scram_max_iterations), .min = 1,
     .max = SCRAM_MAX_ITERATIONS},
    {.name = "PGSCALE_SERVER_ALLOW_CLEARTEXT_PASSWORD", .key = "server_allow_cleartext_password",
     .kind = K_BOOL, .off = F(server_allow_cleartext_password)},
    ENUM("PGSCALE_CONSISTENCY", "consistency", consistency, consistency_names,
         "a consistency mode"),
    ENUM("PGSCALE_FAILOVER", "failover", failover, failover_names, "a failover mode"),
    {.name = "PGSCALE_MAX_REPLICA_LAG", .key = "max_replica_lag", .kind = K_LAG,
     .off = F(max_replica_lag_bytes)},
    {.name = "PGSCALE_READ_FROM_PRIMARY", .key = "read_from_primary", .kind = K_BOOL,
     .off = F(read_from_primary)},
    ENUM("PGSCALE_LOAD_BALANCE", "load_balance", load_balance, balance_names,
         "a load-balancing method"),
    DUR("PGSCALE_MONITOR_INTERVAL", "monitor_interval", monitor_interval_ms, false),
    DUR("PGSCALE_HEALTH_CHECK_TIMEOUT", "health_check_timeout", health_check_timeout_ms, false),
    DUR("PGSCALE_FAILOVER_TIMEOUT", "failover_timeout", failover_timeout_ms, false),
    DUR("PGSCALE_FAILOVER_WAIT", "failover_wait", failover_wait_ms, true),
    /* The result cache (docs/cache.md); the rules are in the file only. */
    {.name = "PGSCALE_CACHE", .key = "cache.enabled", .kind = K_BOOL, .off = F(cache.enabled)},
    DUR("PGSCALE_CACHE_TTL", "cache.ttl", cache.ttl_ms, false),
    {.name = "PGSCALE_CACHE_MAX_MEMORY", .key = "cache.max_memory", .kind = K_BYTES64,
     .off = F(cache.max_memory), .min = 1L << 20, .max = 1L << 40},
    {.name = "PGSCALE_CACHE_MAX_ENTRY_SIZE", .key = "cache.max_entry_size", .kind = K_BYTES,
     .off = F(cache.max_entry_size), .min = 1024, .max = 1073741824L},
    DUR("PGSCALE_CACHE_FILL_WAIT", "cache.fill_wait", cache.fill_wait_ms, true),
    {.name = "PGSCALE_CACHE_CHANGE_FEED", .key = "cache.change_feed", .kind = K_BOOL,
     .off = F(cache.change_feed)},
    {.name = "PGSCALE_CACHE_REDIS", .key = "cache.redis", .kind = K_BOOL, .off = F(cache.redis)},
    DUR("PGSCALE_CACHE_REDIS_TIMEOUT", "cache.redis_timeout", cache.redis_timeout_ms, false),
};
#undef ENUM
#undef DUR
#undef F

static const char *const log_level_names[] = {"error", "warn", "info", "debug"};

/* An enum value: case-insensitive, and '-' may stand for '_'
 * (least-outstanding), as people write either. */
static bool enum_word_eq(const char *v, const char *name)
{
    for (; *v && *name; v++, name++) {
        char a = (char)tolower((unsigned char)*v), b = *name;
        if (a == '-') a = '_';
        if (a != b) return false;
    }
    return *v == *name;
}

static int parse_enum(const char *v, const char *const *names, const char *what, int *out,
                      char *why, size_t whylen)
{
    char sb[80], list[256] = "";
    int n = 0;
    while (names[n]) n++;
    for (int i = 0; i < n; i++) {
        if (enum_word_eq(v, names[i])) {
            *out = i;
            return 0;
        }
    }
    for (int i = 0; i < n; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                 i == 0 ? "" : i + 1 == n ? " or " : ", ", names[i]);
    pgs_seterr(why, whylen, "'%s' is not %s (expected %s)", shown(v, sb, sizeof(sb)), what, list);
    return -EINVAL;
}

static const char *const route_names[] = {"auto", "primary", NULL};

int config_parse_route(const char *v, int *out, char *why, size_t whylen)
{
    return parse_enum(v, route_names, "a route", out, why, whylen);
}

static int enum_count(const char *const *names)
{
    int n = 0;
    while (names[n]) n++;
    return n;
}

#define FIELD(cfg, s, type) ((type *)(void *)((char *)(cfg) + (s)->off))
#define CFIELD(cfg, s, type) ((const type *)(const void *)((const char *)(cfg) + (s)->off))

/* A text setting: any bytes but control characters (a value cut from a
 * file with a stray newline is an error, not a name). */
static int set_text(char **field, const char *v, char *why, size_t whylen)
{
    for (const char *p = v; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            pgs_seterr(why, whylen, "contains a control character (a stray newline?)");
            return -EINVAL;
        }
    }
    free(*field);
    *field = pgs_xstrdup(v);
    return 0;
}

static int apply_one(pgs_config *cfg, const struct setting *s, const char *v, char *why,
                     size_t whylen)
{
    char sb[80];
    char range[64];
    switch (s->kind) {
    case K_URL: {
        pgs_url u;
        if (config_parse_url(v, &u, why, whylen) < 0) return -EINVAL;
        config_url_free(FIELD(cfg, s, pgs_url));
        *FIELD(cfg, s, pgs_url) = u;
        return 0;
    }
    case K_URL_LIST: {
        pgs_url *list;
        int n;
        if (parse_url_list(v, &list, &n, why, whylen) < 0) return -EINVAL;
        for (int i = 0; i < cfg->n_replicas; i++) config_url_free(&cfg->replicas[i]);
        free(cfg->replicas);
        free(cfg->replica_weights);
        cfg->replicas = list;
        cfg->n_replicas = n;
        /* the variable has no weights: every replica weighs 1 */
        cfg->replica_weights = pgs_xcalloc(n ? (size_t)n : 1, sizeof(int));
        for (int i = 0; i < n; i++) cfg->replica_weights[i] = 1;
        return 0;
    }
    case K_LISTEN:
        return parse_listen(v, cfg, why, whylen);
    case K_HTTP:
        cfg->http_explicit = true;
        if (strcasecmp(v, "off") == 0) {
            cfg->http_port = 0;
            return 0;
        }
        if (cfg->http_port == 0) cfg->http_port = 9930;
        return parse_listen_hp(v, cfg->http_host, &cfg->http_port, why, whylen);
    case K_POOL_MODE:
        return config_parse_pool_mode(v, FIELD(cfg, s, pgs_pool_mode), why, whylen);
    case K_INT:
        snprintf(range, sizeof(range), "%ld..%ld", s->min, s->max);
        return parse_int_range(v, s->min, s->max, range, FIELD(cfg, s, int), why, whylen);
    case K_OVERFLOW:
        return config_parse_overflow(v, FIELD(cfg, s, int), why, whylen);
    case K_DURATION:
        return parse_duration_setting(v, s->zero_is_off, FIELD(cfg, s, uint32_t), why, whylen);
    case K_BYTES:
        return parse_bytes(v, (uint64_t)s->min, (uint64_t)s->max, FIELD(cfg, s, uint32_t), why,
                           whylen);
    case K_BYTES64:
        return parse_bytes64(v, (uint64_t)s->min, (uint64_t)s->max, FIELD(cfg, s, uint64_t), why,
                             whylen);
    case K_REDIS: {
        /* The value is never echoed: a Redis URL usually carries a password.
         * Parsed here so that a bad one stops pgscale at start, not at the
         * first failover; its users parse the text kept again. */
        pgs_redis_url u;
        int rc = redis_url_parse(v, &u, why, whylen);
        if (rc) return rc;
        redis_url_free(&u);
        return set_text(FIELD(cfg, s, char *), v, why, whylen);
    }
    case K_LOG_LEVEL:
        for (int i = 0; i < (int)PGS_ARRAY_LEN(log_level_names); i++) {
            if (strcasecmp(v, log_level_names[i]) == 0) {
                *FIELD(cfg, s, int) = i;
                return 0;
            }
        }
        if (strcasecmp(v, "warning") == 0) {
            *FIELD(cfg, s, int) = PGS_LOG_WARN;
            return 0;
        }
        pgs_seterr(why, whylen, "'%s' is not a log level (expected error, warn, info or debug)",
                   shown(v, sb, sizeof(sb)));
        return -EINVAL;
    case K_FILE_MODE: {
        /* octal, as chmod and PostgreSQL's unix_socket_permissions write it */
        char *end;
        errno = 0;
        long m = strtol(v, &end, 8);
        if (!*v || *end || errno || m < 0 || m > 0777) {
            pgs_seterr(why, whylen,
                       "'%s' is not a permission mode (expected octal 0000..0777, such "
                       "as 0700 or 0770)",
                       shown(v, sb, sizeof(sb)));
            return -EINVAL;
        }
        *FIELD(cfg, s, int) = (int)m;
        return 0;
    }
    case K_NAME:
        return set_text(FIELD(cfg, s, char *), v, why, whylen);
    case K_BOOL:
        return config_parse_bool(v, FIELD(cfg, s, bool), why, whylen);
    case K_ENUM:
        return parse_enum(v, s->names, s->what, FIELD(cfg, s, int), why, whylen);
    case K_LAG:
        return config_parse_replica_lag(v, &cfg->max_replica_lag_bytes,
                                        &cfg->max_replica_lag_ms, why, whylen);
    }
    return -EINVAL;
}

int config_apply_env(pgs_config *cfg, pgs_env_lookup lookup, void *ctx, char *err,
                     size_t errlen)
{
    /* Each variable is looked up and validated before the next is looked up;
     * config_load relies on this to tell which variable (and which .env
     * line) an error is about. */
    for (size_t i = 0; i < PGS_ARRAY_LEN(settings); i++) {
        const struct setting *s = &settings[i];
        const char *v = lookup(ctx, s->name);
        if (!v) continue;
        if (!*v) {
            if (s->kind == K_URL) {
                pgs_seterr(err, errlen, "%s is empty; %s", s->name, database_url_hint);
                return -EINVAL;
            }
            continue; /* empty means unset, as it does for most tools */
        }
        char why[768];
        if (apply_one(cfg, s, v, why, sizeof(why)) < 0) {
            pgs_seterr(err, errlen, "%s: %s", s->name, why);
            return -EINVAL;
        }
    }
    /* auth.type is the one auth setting an environment-only start may need
     * (to say trust explicitly); the file shows it as auth.type. */
    const char *v = lookup(ctx, AUTH_TYPE_VAR);
    if (v && *v) {
        char why[200];
        if (config_parse_auth_type(v, &cfg->auth.type, why, sizeof(why)) < 0) {
            pgs_seterr(err, errlen, "%s: %s", AUTH_TYPE_VAR, why);
            return -EINVAL;
        }
        cfg->auth.type_set = true;
    }
    return 0;
}

int config_parse_auth_type(const char *v, pgs_auth_method *out, char *why, size_t whylen)
{
    static const char *const names[] = {"trust", "md5", "scram-sha-256"};
    char sb[80];
    for (int i = 0; i < (int)PGS_ARRAY_LEN(names); i++) {
        if (strcasecmp(v, names[i]) == 0) {
            *out = (pgs_auth_method)i;
            return 0;
        }
    }
    pgs_seterr(why, whylen, "'%s' is not an auth type (expected trust, md5 or scram-sha-256)",
               shown(v, sb, sizeof(sb)));
    return -EINVAL;
}

/* ------------------------------------------------------------------------ */
/* The same parsers for the YAML reader                                     */
/* ------------------------------------------------------------------------ */

static const struct setting *setting_by_name(const char *name)
{
    for (size_t i = 0; i < PGS_ARRAY_LEN(settings); i++)
        if (strcmp(settings[i].name, name) == 0) return &settings[i];
    return NULL;
}

const char *config_setting_for_key(const char *key, pgs_value_kind *kind)
{
    for (size_t i = 0; i < PGS_ARRAY_LEN(settings); i++) {
        const struct setting *s = &settings[i];
        if (strcmp(s->key, key) != 0) continue;
        switch (s->kind) {
        case K_URL:
        case K_URL_LIST:
        case K_LISTEN:
            return NULL; /* structured in the file: nodes:, listen: */
        case K_HTTP: *kind = PGS_VALUE_TEXT; break;
        case K_INT:
        case K_OVERFLOW: *kind = PGS_VALUE_INT; break;
        case K_DURATION: *kind = PGS_VALUE_DURATION; break;
        case K_BYTES:
        case K_BYTES64: *kind = PGS_VALUE_SIZE; break;
        case K_BOOL: *kind = PGS_VALUE_BOOL; break;
        case K_REDIS: *kind = PGS_VALUE_SECRET; break;
        case K_POOL_MODE:
        case K_ENUM:
        case K_LAG:
        case K_LOG_LEVEL:
        case K_FILE_MODE:
        case K_NAME: *kind = PGS_VALUE_TEXT; break;
        }
        return s->name;
    }
    return NULL;
}

const char *config_key_for_setting(const char *env_name)
{
    const struct setting *s = setting_by_name(env_name);
    return s ? s->key : NULL;
}

int config_apply_setting(pgs_config *cfg, const char *env_name, const char *v, char *why,
                         size_t whylen)
{
    const struct setting *s = setting_by_name(env_name);
    if (!s) {
        pgs_seterr(why, whylen, "unknown setting");
        return -EINVAL;
    }
    return apply_one(cfg, s, v, why, whylen);
}

int config_parse_int(const char *v, long min, long max, int *out, char *why, size_t whylen)
{
    char range[64];
    snprintf(range, sizeof(range), "%ld..%ld", min, max);
    return parse_int_range(v, min, max, range, out, why, whylen);
}

int config_parse_overflow(const char *v, int *out, char *why, size_t whylen)
{
    /* SQLAlchemy's max_overflow=-1 means "no limit"; a proxy still needs a
     * bound, so it becomes the largest value we accept. */
    int x;
    char range[64];
    snprintf(range, sizeof(range), "0..%d, or -1 for no limit", OVERFLOW_UNLIMITED);
    if (parse_int_range(v, -1, OVERFLOW_UNLIMITED, range, &x, why, whylen) < 0) return -EINVAL;
    *out = x < 0 ? OVERFLOW_UNLIMITED : x;
    return 0;
}

int config_parse_duration(const char *v, bool zero_is_off, uint32_t *out, char *why,
                          size_t whylen)
{
    return parse_duration_setting(v, zero_is_off, out, why, whylen);
}

int config_parse_size(const char *v, uint32_t min, uint32_t max, uint32_t *out, char *why,
                      size_t whylen)
{
    return parse_bytes(v, min, max, out, why, whylen);
}

int config_parse_pool_mode(const char *v, pgs_pool_mode *out, char *why, size_t whylen)
{
    char sb[80];
    if (strcasecmp(v, "transaction") == 0) *out = PGS_POOL_TRANSACTION;
    else if (strcasecmp(v, "session") == 0) *out = PGS_POOL_SESSION;
    else {
        pgs_seterr(why, whylen, "'%s' is not a pool mode (expected transaction or session)",
                   shown(v, sb, sizeof(sb)));
        return -EINVAL;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* .env files                                                               */
/* ------------------------------------------------------------------------ */

struct envfile_entry {
    char *key;
    char *value;
    int line;
};

struct pgs_envfile {
    char *name;
    struct envfile_entry *v;
    size_t n, cap;
};

void config_envfile_free(pgs_envfile *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) {
        free(f->v[i].key);
        free(f->v[i].value);
    }
    free(f->v);
    free(f->name);
    free(f);
}

static const struct envfile_entry *envfile_find(const pgs_envfile *f, const char *key)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->v[i].key, key) == 0) return &f->v[i];
    return NULL;
}

const char *config_envfile_get(pgs_envfile *f, const char *name)
{
    if (!f) return NULL;
    const struct envfile_entry *e = envfile_find(f, name);
    return e ? e->value : NULL;
}

/* A later line for the same key wins, as with python-dotenv and sh. */
static void envfile_set(pgs_envfile *f, const char *key, size_t kn, char *value, int line)
{
    for (size_t i = 0; i < f->n; i++) {
        if (strlen(f->v[i].key) == kn && memcmp(f->v[i].key, key, kn) == 0) {
            free(f->v[i].value);
            f->v[i].value = value;
            f->v[i].line = line;
            return;
        }
    }
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 16;
        f->v = pgs_xrealloc(f->v, f->cap * sizeof(*f->v));
    }
    f->v[f->n].key = pgs_xstrndup(key, kn);
    f->v[f->n].value = value;
    f->v[f->n].line = line;
    f->n++;
}

/* Keys are any printable ASCII but '=', '#' and quotes: a .env file is
 * usually the application's, and its other keys are not ours to police. */
static bool is_keychar(int c)
{
    return c > 0x20 && c < 0x7f && c != '=' && c != '#' && c != '"' && c != '\'';
}

int config_envfile_parse(const char *name, const char *data, size_t len, pgs_envfile **out,
                         char *err, size_t errlen)
{
    *out = NULL;
    if (!name) name = "(env)";
    if (len > 0 && !data) {
        pgs_seterr(err, errlen, "%s: no data", name);
        return -EINVAL;
    }
    if (len > ENVFILE_MAX_BYTES) {
        pgs_seterr(err, errlen, "%s: file is larger than 1 MiB (%zu bytes)", name, len);
        return -EFBIG;
    }
    /* Physical line lengths first, so the limit holds inside quoted values
     * too and the error points at the line itself. */
    {
        size_t i = 0;
        int line = 1;
        while (i < len) {
            const char *nl = memchr(data + i, '\n', len - i);
            size_t ll = nl ? (size_t)(nl - (data + i)) : len - i;
            if (ll > ENVFILE_MAX_LINE) {
                pgs_seterr(err, errlen, "%s:%d: line is longer than 64 KiB", name, line);
                return -EINVAL;
            }
            i += ll + 1;
            line++;
        }
    }

    pgs_envfile *f = pgs_xcalloc(1, sizeof(*f));
    f->name = pgs_xstrdup(name);
    const char *d = data;
    size_t i = 0;
    int line = 1;
    sbuf val = {0};
    char kb[80];
    if (len >= 3 && memcmp(d, "\xEF\xBB\xBF", 3) == 0) i = 3; /* UTF-8 BOM */

    while (i < len) {
        while (i < len && is_blank((unsigned char)d[i])) i++;
        if (i == len) break;
        if (d[i] == '\n') {
            line++;
            i++;
            continue;
        }
        if (d[i] == '#') {
            while (i < len && d[i] != '\n') i++;
            continue;
        }
        int entry_line = line;

        if (len - i > 6 && memcmp(d + i, "export", 6) == 0 && (d[i + 6] == ' ' || d[i + 6] == '\t')) {
            size_t j = i + 6;
            while (j < len && is_blank((unsigned char)d[j])) j++;
            if (j < len && is_keychar((unsigned char)d[j])) i = j;
        }
        size_t ks = i;
        while (i < len && is_keychar((unsigned char)d[i])) i++;
        size_t kn = i - ks;
        if (kn == 0) {
            pgs_seterr(err, errlen, "%s:%d: expected KEY=VALUE", name, entry_line);
            goto fail;
        }
        char key[128];
        snprintf(key, sizeof(key), "%.*s", (int)PGS_MIN(kn, sizeof(key) - 1), d + ks);
        while (i < len && is_blank((unsigned char)d[i])) i++;
        if (i >= len || d[i] != '=') {
            pgs_seterr(err, errlen, "%s:%d: expected '=' after '%s' (lines are KEY=VALUE)", name,
                       entry_line, shown(key, kb, sizeof(kb)));
            goto fail;
        }
        i++; /* '=' */
        while (i < len && is_blank((unsigned char)d[i])) i++;

        sb_reset(&val);
        sb_putn(&val, "", 0);
        if (i < len && (d[i] == '\'' || d[i] == '"')) {
            char q = d[i++];
            bool closed = false;
            while (i < len) {
                char c = d[i++];
                if (c == q) {
                    closed = true;
                    break;
                }
                if (c == '\n') line++;
                if (c == '\\' && q == '"' && i < len) {
                    char e = d[i++];
                    switch (e) {
                    case 'n': c = '\n'; break;
                    case 't': c = '\t'; break;
                    case 'r': c = '\r'; break;
                    case '"': c = '"'; break;
                    case '\\': c = '\\'; break;
                    case '$': c = '$'; break;
                    default: /* unknown escapes stay as written, like python-dotenv */
                        sb_putc(&val, '\\');
                        c = e;
                        if (c == '\n') line++;
                        break;
                    }
                }
                sb_putc(&val, c);
            }
            if (!closed) {
                pgs_seterr(err, errlen, "%s:%d: unterminated %s quote in the value of '%s'", name,
                           entry_line, q == '"' ? "double" : "single", shown(key, kb, sizeof(kb)));
                goto fail;
            }
            while (i < len && is_blank((unsigned char)d[i])) i++;
            if (i < len && d[i] != '\n' && d[i] != '#') {
                pgs_seterr(err, errlen, "%s:%d: unexpected text after the closing quote of '%s'",
                           name, line, shown(key, kb, sizeof(kb)));
                goto fail;
            }
            while (i < len && d[i] != '\n') i++;
        } else {
            /* Unquoted: up to the end of the line or a " #" comment; a '#'
             * inside a word (a password like "pa#ss") is kept.  d[ve - 1]
             * is at worst the '=' itself, so "KEY=#x" keeps "#x"
             * while "KEY= #x" is an empty value and a comment, as in sh. */
            size_t vs = i, ve = i;
            while (ve < len && d[ve] != '\n') {
                if (d[ve] == '#' && is_blank((unsigned char)d[ve - 1])) break;
                ve++;
            }
            i = ve;
            while (i < len && d[i] != '\n') i++;
            while (ve > vs && is_blank((unsigned char)d[ve - 1])) ve--;
            sb_putn(&val, d + vs, ve - vs);
        }
        if (memchr(val.p, '\0', val.len)) {
            pgs_seterr(err, errlen, "%s:%d: the value of '%s' contains a NUL byte", name,
                       entry_line, shown(key, kb, sizeof(kb)));
            goto fail;
        }
        envfile_set(f, d + ks, kn, pgs_xstrndup(val.p, val.len), entry_line);
    }
    free(val.p);
    *out = f;
    return 0;

fail:
    free(val.p);
    config_envfile_free(f);
    return -EINVAL;
}

int config_envfile_load(const char *path, pgs_envfile **out, char *err, size_t errlen)
{
    *out = NULL;
    char *buf;
    size_t n;
    int r = pgs_read_file(path, ENVFILE_MAX_BYTES, "a .env file", &buf, &n, err, errlen);
    if (r < 0) return r;
    int rc = config_envfile_parse(path, buf, n, out, err, errlen);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Full load                                                                */
/* ------------------------------------------------------------------------ */

/* The process environment over the .env file.  A variable that is set in
 * the environment wins even when empty (dotenv's rule); the lookup notes
 * where each answer came from so errors can point at the .env line. */
struct layered {
    pgs_envfile *file;
    int last_line; /* .env line of the last answer, 0 if from the environment */
};

static const char *layered_lookup(void *ctx, const char *name)
{
    struct layered *l = ctx;
    l->last_line = 0;
    const char *v = getenv(name);
    if (v) return v;
    if (l->file) {
        const struct envfile_entry *e = envfile_find(l->file, name);
        if (e) {
            l->last_line = e->line;
            return e->value;
        }
    }
    return NULL;
}

static bool known_setting(const char *name)
{
    if (strcmp(name, AUTH_TYPE_VAR) == 0) return true;
    for (size_t i = 0; i < PGS_ARRAY_LEN(settings); i++)
        if (strcmp(settings[i].name, name) == 0) return true;
    return false;
}

/* A .env file is shared with the application, so foreign keys are fine;
 * but PGSCALE_* is our namespace, and a misspelt one is rejected rather
 * than silently ignored. */
static int check_unknown_keys(const pgs_envfile *f, char *err, size_t errlen)
{
    for (size_t i = 0; i < f->n; i++) {
        const char *k = f->v[i].key;
        if (strcmp(k, "PGSCALE_CONFIG") == 0) {
            /* The .env file is read after the config file, so it cannot
             * choose it; say so rather than "unknown variable". */
            pgs_seterr(err, errlen,
                       "%s:%d: PGSCALE_CONFIG is read from the environment only (a .env file "
                       "cannot choose the config file); use --config FILE",
                       f->name, f->v[i].line);
            return -EINVAL;
        }
        if (strncmp(k, "PGSCALE_", 8) == 0 && !known_setting(k)) {
            char kb[80];
            pgs_seterr(err, errlen,
                       "%s:%d: unknown variable '%s' (see docs/configuration.md for the "
                       "PGSCALE_* variables)",
                       f->name, f->v[i].line, shown(k, kb, sizeof(kb)));
            return -EINVAL;
        }
    }
    return 0;
}

/* What is settled only once every source is in. */
static int finish_load(pgs_config *cfg, const config_yaml_seen *seen, const char *config_path,
                       bool env_auth_type, char *err, size_t errlen)
{
    /* The primary URL's ?sslmode= stands for server_tls.sslmode unless the
     * file set that explicitly: an operator's server_tls is not weakened
     * by a URL copied from an application's settings.  The value was
     * checked when the URL was parsed. */
    const char *m = config_url_param(&cfg->primary, "sslmode");
    if (!seen->sslmode && m && *m) {
        char why[200];
        if (config_parse_sslmode(m, &cfg->server_tls.sslmode, why, sizeof(why)) < 0) {
            pgs_seterr(err, errlen, "DATABASE_URL: query parameter 'sslmode': %s", why);
            return -EINVAL;
        }
    }
    /* ?channel_binding= the same way: the file's setting wins. */
    const char *cb = config_url_param(&cfg->primary, "channel_binding");
    if (!seen->channel_binding && cb && *cb) {
        char why[200];
        if (config_parse_channel_binding(cb, &cfg->server_tls.channel_binding, why,
                                         sizeof(why)) < 0) {
            pgs_seterr(err, errlen, "DATABASE_URL: query parameter 'channel_binding': %s", why);
            return -EINVAL;
        }
    }
    /* An answer bigger than a worker's share of the store could never be
     * kept; more likely one of the two sizes is a typo. */
    if (cfg->cache.max_entry_size > cfg->cache.max_memory) {
        char a[32], b[32];
        format_size(cfg->cache.max_entry_size, a, sizeof(a));
        format_size(cfg->cache.max_memory, b, sizeof(b));
        pgs_seterr(err, errlen,
                   "cache.max_entry_size (%s) is larger than cache.max_memory (%s); lower "
                   "PGSCALE_CACHE_MAX_ENTRY_SIZE or raise PGSCALE_CACHE_MAX_MEMORY",
                   a, b);
        return -EINVAL;
    }
    /* Every request that meets the Redis tier may wait this long: a bound
     * meant to be small (a cached answer is worth ~1 ms), never minutes. */
    if (cfg->cache.redis_timeout_ms < 1 || cfg->cache.redis_timeout_ms > 10000) {
        pgs_seterr(err, errlen,
                   "cache.redis_timeout must be between 1ms and 10s; set "
                   "PGSCALE_CACHE_REDIS_TIMEOUT (default 50ms)");
        return -EINVAL;
    }
    /* md5 and SCRAM check a password: the users file's, auth.query's, or
     * the one DATABASE_URL carries for its own user.  With none of them no
     * client could ever log in, so say so now.  (Without an explicit
     * auth.type, a DATABASE_URL without a password lets its user in
     * without one instead; clientauth warns about it at start.) */
    const pgs_auth_config *a = &cfg->auth;
    if (a->file || a->user || (cfg->primary.user && cfg->primary.password)) return 0;
    static const char fix[] =
        "needs passwords: set auth.file (a users file) or auth.user (to look them up with "
        "auth.query), or put the password in DATABASE_URL";
    if (a->type_set && (a->type == PGS_AUTH_MD5 || a->type == PGS_AUTH_SCRAM)) {
        const char *t = a->type == PGS_AUTH_MD5 ? "md5" : "scram-sha-256";
        if (seen->auth_type_line && !env_auth_type)
            pgs_seterr(err, errlen,
                       "%s:%d: auth.type: '%s' %s", config_path, seen->auth_type_line, t,
                       fix);
        else
            pgs_seterr(err, errlen, "%s: '%s' %s", AUTH_TYPE_VAR, t, fix);
        return -EINVAL;
    }
    if (seen->hba_password_line) {
        const pgs_hba_rule *r = &a->hba[seen->hba_password_index];
        pgs_seterr(err, errlen, "%s:%d: auth.hba[%d].method: '%s' %s", config_path,
                   seen->hba_password_line, seen->hba_password_index,
                   r->method == PGS_AUTH_MD5 ? "md5" : "scram-sha-256", fix);
        return -EINVAL;
    }
    return 0;
}

int config_load_files(pgs_config *cfg, const char *config_path, const char *envfile_path,
                      char *err, size_t errlen)
{
    config_defaults(cfg);
    config_yaml_seen seen = {0};
    pgs_envfile *f = NULL;
    int rc;
    if (config_path) {
        rc = config_yaml_load(config_path, cfg, &seen, err, errlen);
        if (rc < 0) goto out;
        cfg->config_file = pgs_xstrdup(config_path);
    }
    if (envfile_path) {
        rc = config_envfile_load(envfile_path, &f, err, errlen);
        if (rc < 0) goto out;
        rc = check_unknown_keys(f, err, errlen);
        if (rc < 0) goto out;
    }

    struct layered l = {.file = f};
    if (!seen.primary && !layered_lookup(&l, "DATABASE_URL")) {
        if (config_path)
            pgs_seterr(err, errlen, "DATABASE_URL is not set and %s has no nodes.primary; %s",
                       config_path, database_url_hint);
        else
            pgs_seterr(err, errlen, "DATABASE_URL is not set; %s", database_url_hint);
        rc = -EINVAL;
        goto out;
    }
    char why[1024];
    rc = config_apply_env(cfg, layered_lookup, &l, why, sizeof(why));
    if (rc < 0) {
        if (l.last_line > 0) pgs_seterr(err, errlen, "%s:%d: %s", f->name, l.last_line, why);
        else pgs_seterr(err, errlen, "%s", why);
        goto out;
    }
    const char *at = layered_lookup(&l, AUTH_TYPE_VAR);
    rc = finish_load(cfg, &seen, config_path, at && *at, err, errlen);
out:
    config_envfile_free(f);
    if (rc < 0) config_free(cfg);
    return rc;
}

int config_load(pgs_config *cfg, const char *envfile_path, char *err, size_t errlen)
{
    return config_load_files(cfg, NULL, envfile_path, err, errlen);
}

int config_reload(pgs_config *fresh, const char *config_path, const char *envfile_path,
                  char *err, size_t errlen)
{
    /* A reload is a full load into a snapshot of its own: nothing is shared
     * with the running one, so a failure anywhere leaves it as it was. */
    return config_load_files(fresh, config_path, envfile_path, err, errlen);
}

static void free_strv(char ***v, int *n)
{
    for (int i = 0; i < *n; i++) free((*v)[i]);
    free(*v);
    *v = NULL;
    *n = 0;
}

void config_free_reloadable(pgs_config *cfg)
{
    for (int i = 0; i < cfg->n_databases; i++) {
        free(cfg->databases[i].name);
        free(cfg->databases[i].dbname);
    }
    free(cfg->databases);
    cfg->databases = NULL;
    cfg->n_databases = 0;
    for (int i = 0; i < cfg->n_users; i++) free(cfg->users[i].name);
    free(cfg->users);
    cfg->users = NULL;
    cfg->n_users = 0;
    free_strv(&cfg->admin_users, &cfg->n_admin_users);
    free_strv(&cfg->stats_users, &cfg->n_stats_users);
    config_cache_rules_free(&cfg->cache);
}

void config_cache_rules_free(pgs_cache_config *c)
{
    for (int i = 0; i < c->n_rules; i++) {
        pgs_cache_rule *r = &c->rules[i];
        free_strv(&r->tables, &r->n_tables);
        free(r->query);
        free(r->database);
        free(r->user);
    }
    free(c->rules);
    c->rules = NULL;
    c->n_rules = 0;
}

void config_free(pgs_config *cfg)
{
    if (!cfg) return;
    config_free_reloadable(cfg);
    config_url_free(&cfg->primary);
    for (int i = 0; i < cfg->n_replicas; i++) config_url_free(&cfg->replicas[i]);
    free(cfg->replicas);
    free(cfg->replica_weights);
    cfg->replicas = NULL;
    cfg->replica_weights = NULL;
    cfg->n_replicas = 0;
    free(cfg->redis_url);
    cfg->redis_url = NULL;
    free(cfg->unix_socket_group);
    cfg->unix_socket_group = NULL;
    free(cfg->http_tls_cert);
    cfg->http_tls_cert = NULL;
    free(cfg->http_tls_key);
    cfg->http_tls_key = NULL;

    pgs_auth_config *a = &cfg->auth;
    free(a->file);
    free(a->query);
    free(a->user);
    free(a->dbname);
    for (int i = 0; i < a->n_hba; i++) {
        free(a->hba[i].database);
        free(a->hba[i].user);
    }
    free(a->hba);
    memset(a, 0, sizeof(*a));

    free(cfg->tls.cert);
    free(cfg->tls.key);
    free(cfg->tls.ca);
    free(cfg->tls.ciphers);
    cfg->tls.cert = cfg->tls.key = cfg->tls.ca = cfg->tls.ciphers = NULL;
    free(cfg->server_tls.ca);
    free(cfg->server_tls.cert);
    free(cfg->server_tls.key);
    cfg->server_tls.ca = cfg->server_tls.cert = cfg->server_tls.key = NULL;

    free(cfg->config_file);
    cfg->config_file = NULL;
}

/* ------------------------------------------------------------------------ */
/* Per-database and per-user overrides                                      */
/* ------------------------------------------------------------------------ */

const pgs_db_config *config_find_database(const pgs_config *cfg, const char *name)
{
    for (int i = 0; name && i < cfg->n_databases; i++)
        if (strcmp(cfg->databases[i].name, name) == 0) return &cfg->databases[i];
    return NULL;
}

const pgs_user_config *config_find_user(const pgs_config *cfg, const char *name)
{
    for (int i = 0; name && i < cfg->n_users; i++)
        if (strcmp(cfg->users[i].name, name) == 0) return &cfg->users[i];
    return NULL;
}

void config_pool_settings(const pgs_config *cfg, const char *database, const char *user,
                          pgs_pool_settings *out)
{
    out->pool_size = cfg->pool_size;
    out->max_overflow = cfg->max_overflow;
    out->pool_mode = cfg->pool_mode;
    out->pool_timeout_ms = cfg->pool_timeout_ms;
    out->max_db_connections = 0;
    out->max_user_connections = 0;
    out->pinning = cfg->pinning;
    out->max_pinned = cfg->max_pinned;
    out->force_primary = false;
    out->cache = cfg->cache.enabled;
    out->server_dbname = database;

    const pgs_db_config *d = config_find_database(cfg, database);
    if (d) {
        if (d->pool_size >= 0) out->pool_size = d->pool_size;
        if (d->max_overflow >= 0) out->max_overflow = d->max_overflow;
        if (d->pool_mode >= 0) out->pool_mode = (pgs_pool_mode)d->pool_mode;
        if (d->pool_timeout_ms > 0) out->pool_timeout_ms = d->pool_timeout_ms;
        out->max_db_connections = d->max_db_connections;
        if (d->pinning >= 0) out->pinning = d->pinning;
        if (d->max_pinned >= 0) out->max_pinned = d->max_pinned;
        if (d->route >= 0) out->force_primary = d->route == PGS_ROUTE_PRIMARY;
        if (d->dbname) out->server_dbname = d->dbname;
    }
    const pgs_user_config *u = config_find_user(cfg, user);
    if (u) {
        if (u->pool_size >= 0) out->pool_size = u->pool_size;
        if (u->max_overflow >= 0) out->max_overflow = u->max_overflow;
        if (u->pool_mode >= 0) out->pool_mode = (pgs_pool_mode)u->pool_mode;
        out->max_user_connections = u->max_user_connections;
        if (u->pinning >= 0) out->pinning = u->pinning;
        if (u->max_pinned >= 0) out->max_pinned = u->max_pinned;
        if (u->route >= 0) out->force_primary = u->route == PGS_ROUTE_PRIMARY;
    }
    /* cache: off in either section wins over on in the other: switching
     * the cache off for a database is a promise about its data that a
     * user's section must not break (and the other way round).  Neither
     * switches it on when cache.enabled is off. */
    if ((d && d->cache == 0) || (u && u->cache == 0)) out->cache = false;
    /* 0: half the pool, so that pinned clients never hold every server */
    if (out->max_pinned <= 0) out->max_pinned = out->pool_size / 2 > 0 ? out->pool_size / 2 : 1;
}

/* ------------------------------------------------------------------------ */
/* Describe                                                                 */
/* ------------------------------------------------------------------------ */

/* 0, or whole seconds as "10s", else milliseconds as "250ms". */
static void sb_duration_text(uint32_t ms, char *tmp, size_t n)
{
    if (ms == 0) snprintf(tmp, n, "0");
    else if (ms % 1000 == 0) snprintf(tmp, n, "%us", (unsigned)(ms / 1000));
    else snprintf(tmp, n, "%ums", (unsigned)ms);
}

static void format_setting(sbuf *b, const pgs_config *cfg, const struct setting *s,
                           bool is_default)
{
    char tmp[320];
    tmp[0] = '\0';
    switch (s->kind) {
    case K_URL:
        if (!is_default) url_format_masked(b, CFIELD(cfg, s, pgs_url));
        return;
    case K_URL_LIST:
        for (int i = 0; !is_default && i < cfg->n_replicas; i++) {
            if (i) sb_putc(b, ',');
            url_format_masked(b, &cfg->replicas[i]);
        }
        return;
    case K_LISTEN:
        snprintf(tmp, sizeof(tmp), strchr(cfg->listen_host, ':') ? "[%s]:%d" : "%s:%d",
                 cfg->listen_host, cfg->listen_port);
        break;
    case K_HTTP:
        if (!cfg->http_port) snprintf(tmp, sizeof(tmp), "off");
        else
            snprintf(tmp, sizeof(tmp), strchr(cfg->http_host, ':') ? "[%s]:%d" : "%s:%d",
                     cfg->http_host, cfg->http_port);
        break;
    case K_POOL_MODE:
        snprintf(tmp, sizeof(tmp), "%s",
                 cfg->pool_mode == PGS_POOL_SESSION ? "session" : "transaction");
        break;
    case K_INT:
    case K_OVERFLOW:
        snprintf(tmp, sizeof(tmp), "%d", *CFIELD(cfg, s, int));
        break;
    case K_DURATION:
        sb_duration_text(*CFIELD(cfg, s, uint32_t), tmp, sizeof(tmp));
        break;
    case K_BYTES:
        format_size(*CFIELD(cfg, s, uint32_t), tmp, sizeof(tmp));
        break;
    case K_BYTES64:
        format_size(*CFIELD(cfg, s, uint64_t), tmp, sizeof(tmp));
        break;
    case K_REDIS: {
        const char *r = *CFIELD(cfg, s, char *);
        if (r) redis_format_masked(b, r);
        return;
    }
    case K_LOG_LEVEL: {
        int lv = *CFIELD(cfg, s, int);
        snprintf(tmp, sizeof(tmp), "%s",
                 lv >= 0 && lv < (int)PGS_ARRAY_LEN(log_level_names) ? log_level_names[lv] : "?");
        break;
    }
    case K_FILE_MODE:
        snprintf(tmp, sizeof(tmp), "%04o", (unsigned)*CFIELD(cfg, s, int));
        break;
    case K_NAME: {
        const char *n = *CFIELD(cfg, s, char *);
        if (n) sb_puts(b, n);
        return;
    }
    case K_BOOL:
        snprintf(tmp, sizeof(tmp), "%s", *CFIELD(cfg, s, bool) ? "on" : "off");
        break;
    case K_ENUM: {
        int r = *CFIELD(cfg, s, int);
        snprintf(tmp, sizeof(tmp), "%s", r >= 0 && r < enum_count(s->names) ? s->names[r] : "?");
        break;
    }
    case K_LAG:
        if (cfg->max_replica_lag_bytes) format_size(cfg->max_replica_lag_bytes, tmp, sizeof(tmp));
        else if (cfg->max_replica_lag_ms) sb_duration_text(cfg->max_replica_lag_ms, tmp, sizeof(tmp));
        else snprintf(tmp, sizeof(tmp), "0");
        break;
    }
    sb_puts(b, tmp);
}

static const char *const auth_method_names[] = {"trust", "md5", "scram-sha-256", "reject"};

void config_describe(const pgs_config *cfg, pgs_config_emit emit, void *ctx)
{
    pgs_config def;
    config_defaults(&def);
    sbuf vb = {0}, db = {0};
    for (size_t i = 0; i < PGS_ARRAY_LEN(settings); i++) {
        sb_reset(&vb);
        sb_reset(&db);
        format_setting(&vb, cfg, &settings[i], false);
        format_setting(&db, &def, &settings[i], true);
        emit(ctx, settings[i].name, sb_str(&vb), sb_str(&db));
    }
    free(vb.p);
    free(db.p);
    /* the same value as auth.type (config_describe_file), under the name an
     * environment-only start knows it by */
    emit(ctx, AUTH_TYPE_VAR, auth_method_names[cfg->auth.type], auth_method_names[def.auth.type]);
}

/* ------------------------------------------------------------------------ */
/* Describe: the settings only the config file has                          */
/* ------------------------------------------------------------------------ */

static const char *const hba_type_names[] = {"host", "hostssl", "hostnossl", "local"};
static const char *const tls_mode_names[] = {"disable", "allow", "require", "verify-ca",
                                             "verify-full"};

static void emit_str(pgs_config_emit emit, void *ctx, const char *name, const char *v,
                     const char *def)
{
    emit(ctx, name, v ? v : "", def ? def : "");
}

static void sb_duration(sbuf *b, uint32_t ms)
{
    char tmp[32];
    if (ms % 1000 == 0) snprintf(tmp, sizeof(tmp), "%us", (unsigned)(ms / 1000));
    else snprintf(tmp, sizeof(tmp), "%ums", (unsigned)ms);
    sb_puts(b, tmp);
}

static void sb_kv_int(sbuf *b, const char *k, int v)
{
    char tmp[64];
    snprintf(tmp, sizeof(tmp), "%s%s=%d", b->len ? " " : "", k, v);
    sb_puts(b, tmp);
}

static void sb_kv_str(sbuf *b, const char *k, const char *v)
{
    if (b->len) sb_putc(b, ' ');
    sb_puts(b, k);
    sb_putc(b, '=');
    sb_puts(b, v);
}

static void sb_names(sbuf *b, char *const *v, int n)
{
    for (int i = 0; i < n; i++) {
        if (i) sb_puts(b, ", ");
        sb_puts(b, v[i]);
    }
}

/* One hba rule in pg_hba.conf column order: type database user [address] method. */
static void sb_hba(sbuf *b, const pgs_hba_rule *r)
{
    sb_puts(b, hba_type_names[r->type]);
    sb_putc(b, ' ');
    sb_puts(b, r->database ? r->database : "all");
    sb_putc(b, ' ');
    sb_puts(b, r->user ? r->user : "all");
    if (r->type != PGS_HBA_LOCAL) {
        char a[INET6_ADDRSTRLEN + 8];
        if (r->family == AF_UNSPEC) snprintf(a, sizeof(a), "all");
        else if (inet_ntop(r->family, r->addr, a, sizeof(a)))
            snprintf(a + strlen(a), sizeof(a) - strlen(a), "/%d", r->prefix);
        else snprintf(a, sizeof(a), "?");
        sb_putc(b, ' ');
        sb_puts(b, a);
    }
    sb_putc(b, ' ');
    sb_puts(b, auth_method_names[r->method]);
}

void config_describe_file(const pgs_config *cfg, pgs_config_emit emit, void *ctx)
{
    pgs_config def;
    config_defaults(&def);
    sbuf b = {0};
    char tmp[320], dtmp[64], name[PGS_NAME_MAX + 32];

    char list[PGS_MAX_LISTEN * 300];
    config_format_listen_list(cfg, list, sizeof(list));
    config_format_listen(&def.listen[0], dtmp, sizeof(dtmp));
    emit(ctx, "listen", list, dtmp);

    format_size(cfg->max_startup_packet_size, tmp, sizeof(tmp));
    format_size(def.max_startup_packet_size, dtmp, sizeof(dtmp));
    emit(ctx, "max_startup_packet_size", tmp, dtmp);

    /* the replicas' URLs are READ_REPLICA_URLS; their weights, in order */
    sb_reset(&b);
    for (int i = 0; i < cfg->n_replicas; i++) {
        snprintf(tmp, sizeof(tmp), "%s%d", i ? ", " : "",
                 cfg->replica_weights ? cfg->replica_weights[i] : 1);
        sb_puts(&b, tmp);
    }
    emit(ctx, "nodes.replicas.weight", sb_str(&b), "");

    for (int i = 0; i < cfg->n_databases; i++) {
        const pgs_db_config *d = &cfg->databases[i];
        sb_reset(&b);
        if (d->dbname) sb_kv_str(&b, "dbname", d->dbname);
        if (d->pool_size >= 0) sb_kv_int(&b, "pool_size", d->pool_size);
        if (d->max_overflow >= 0) sb_kv_int(&b, "max_overflow", d->max_overflow);
        if (d->pool_mode >= 0)
            sb_kv_str(&b, "pool_mode", d->pool_mode == PGS_POOL_SESSION ? "session" : "transaction");
        if (d->pool_timeout_ms > 0) {
            sb_kv_str(&b, "pool_timeout", "");
            sb_duration(&b, d->pool_timeout_ms);
        }
        if (d->max_db_connections > 0) sb_kv_int(&b, "max_db_connections", d->max_db_connections);
        if (d->pinning >= 0) sb_kv_str(&b, "pinning", d->pinning ? "on" : "off");
        if (d->max_pinned >= 0) sb_kv_int(&b, "max_pinned", d->max_pinned);
        if (d->route >= 0) sb_kv_str(&b, "route", route_names[d->route]);
        if (d->cache >= 0) sb_kv_str(&b, "cache", d->cache ? "on" : "off");
        snprintf(name, sizeof(name), "databases.%s", d->name);
        emit(ctx, name, sb_str(&b), "");
    }
    for (int i = 0; i < cfg->n_users; i++) {
        const pgs_user_config *u = &cfg->users[i];
        sb_reset(&b);
        if (u->pool_size >= 0) sb_kv_int(&b, "pool_size", u->pool_size);
        if (u->max_overflow >= 0) sb_kv_int(&b, "max_overflow", u->max_overflow);
        if (u->pool_mode >= 0)
            sb_kv_str(&b, "pool_mode", u->pool_mode == PGS_POOL_SESSION ? "session" : "transaction");
        if (u->max_user_connections > 0)
            sb_kv_int(&b, "max_user_connections", u->max_user_connections);
        if (u->pinning >= 0) sb_kv_str(&b, "pinning", u->pinning ? "on" : "off");
        if (u->max_pinned >= 0) sb_kv_int(&b, "max_pinned", u->max_pinned);
        if (u->route >= 0) sb_kv_str(&b, "route", route_names[u->route]);
        if (u->cache >= 0) sb_kv_str(&b, "cache", u->cache ? "on" : "off");
        snprintf(name, sizeof(name), "users.%s", u->name);
        emit(ctx, name, sb_str(&b), "");
    }

    for (int i = 0; i < cfg->cache.n_rules; i++) {
        const pgs_cache_rule *r = &cfg->cache.rules[i];
        sb_reset(&b);
        if (r->kind == PGS_CACHE_RULE_TABLES) {
            sb_puts(&b, "tables=");
            for (int t = 0; t < r->n_tables; t++) {
                if (t) sb_putc(&b, ',');
                sb_puts(&b, r->tables[t]);
            }
        } else {
            snprintf(tmp, sizeof(tmp), "fingerprint=%016llx",
                     (unsigned long long)r->fingerprint);
            sb_puts(&b, tmp);
        }
        /* no ttl: the rule takes cache.ttl, which PGSCALE_CACHE_TTL shows */
        if (r->ttl_ms) {
            sb_kv_str(&b, "ttl", "");
            sb_duration(&b, r->ttl_ms);
        }
        if (r->database) sb_kv_str(&b, "database", r->database);
        if (r->user) sb_kv_str(&b, "user", r->user);
        snprintf(name, sizeof(name), "cache.rules[%d]", i);
        emit(ctx, name, sb_str(&b), "");
    }
    if (cfg->cache.n_rules == 0) emit(ctx, "cache.rules", "", "");

    const pgs_auth_config *a = &cfg->auth;
    emit(ctx, "auth.type", auth_method_names[a->type], auth_method_names[def.auth.type]);
    emit_str(emit, ctx, "auth.file", a->file, NULL);
    emit_str(emit, ctx, "auth.query", a->query ? a->query : PGS_DEFAULT_AUTH_QUERY,
             PGS_DEFAULT_AUTH_QUERY);
    emit_str(emit, ctx, "auth.user", a->user, NULL);
    emit_str(emit, ctx, "auth.dbname", a->dbname ? a->dbname : PGS_DEFAULT_AUTH_DBNAME,
             PGS_DEFAULT_AUTH_DBNAME);
    char num[32], defnum[32];
    snprintf(num, sizeof(num), "%d", a->query_max_per_address);
    snprintf(defnum, sizeof(defnum), "%d", def.auth.query_max_per_address);
    emit(ctx, "auth.query_max_per_address", num, defnum);
    sb_reset(&b);
    sb_duration(&b, a->query_negative_ttl_ms);
    snprintf(num, sizeof(num), "%s", sb_str(&b));
    sb_reset(&b);
    sb_duration(&b, def.auth.query_negative_ttl_ms);
    emit(ctx, "auth.query_negative_ttl", num, sb_str(&b));
    if (a->n_hba == 0) emit(ctx, "auth.hba", "", "");
    for (int i = 0; i < a->n_hba; i++) {
        sb_reset(&b);
        sb_hba(&b, &a->hba[i]);
        snprintf(name, sizeof(name), "auth.hba[%d]", i);
        emit(ctx, name, sb_str(&b), "");
    }

    const pgs_tls_config *t = &cfg->tls;
    emit(ctx, "tls.mode", tls_mode_names[t->mode], tls_mode_names[def.tls.mode]);
    emit_str(emit, ctx, "tls.cert", t->cert, NULL);
    emit_str(emit, ctx, "tls.key", t->key, NULL);
    emit_str(emit, ctx, "tls.ca", t->ca, NULL);
    emit(ctx, "tls.min_protocol", t->min_protocol == 0x0304 ? "TLSv1.3" : "TLSv1.2", "TLSv1.2");
    emit_str(emit, ctx, "tls.ciphers", t->ciphers, NULL);

    const pgs_server_tls_config *st = &cfg->server_tls;
    emit(ctx, "server_tls.sslmode", sslmode_names[st->sslmode],
         sslmode_names[def.server_tls.sslmode]);
    emit(ctx, "server_tls.channel_binding", cbind_names[st->channel_binding],
         cbind_names[def.server_tls.channel_binding]);
    emit_str(emit, ctx, "server_tls.ca", st->ca, NULL);
    emit_str(emit, ctx, "server_tls.cert", st->cert, NULL);
    emit_str(emit, ctx, "server_tls.key", st->key, NULL);

    sb_reset(&b);
    sb_names(&b, cfg->admin_users, cfg->n_admin_users);
    emit(ctx, "admin_users", sb_str(&b), "");
    sb_reset(&b);
    sb_names(&b, cfg->stats_users, cfg->n_stats_users);
    emit(ctx, "stats_users", sb_str(&b), "");
    free(b.p);
}
