/* REDIS_URL's parser and a blocking hiredis connection (see redis.h).
 * Owns nothing but the URL's meaning and the connect/AUTH/SELECT steps;
 * what is stored in Redis is its callers' (failover_lock.c). */
#include "redis.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>


static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into a new string (NULL when n is 0).  The
 * message names `what` and never the text: it may be a password. */
static int decode(const char *s, size_t n, const char *what, char **out, char *err,
                  size_t errlen)
{
    *out = NULL;
    if (n == 0) return 0;
    char *d = pgs_xmalloc(n + 1);
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            int hi = n - i >= 3 ? hexval((unsigned char)s[i + 1]) : -1;
            int lo = n - i >= 3 ? hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || hi * 16 + lo == 0) {
                free(d);
                pgs_seterr(err, errlen, "bad percent-escape in the %s (use %%XX with two hex "
                           "digits, not %%00)", what);
                return -EINVAL;
            }
            c = hi * 16 + lo;
            i += 2;
        }
        d[j++] = (char)c;
    }
    d[j] = '\0';
    *out = d;
    return 0;
}

/* A whole decimal number in [lo, hi] from s[0..n). */
static bool number(const char *s, size_t n, long lo, long hi, int *out)
{
    if (n == 0 || n > 9) return false;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

/* userinfo "user:password", ":password" or "password" (the form from
 * before Redis had users). */
static int parse_userinfo(const char *s, size_t n, pgs_redis_url *u, char *err, size_t errlen)
{
    const char *colon = memchr(s, ':', n);
    if (!colon) return decode(s, n, "password", &u->password, err, errlen);
    int rc = decode(s, (size_t)(colon - s), "user name", &u->user, err, errlen);
    if (rc == 0)
        rc = decode(colon + 1, n - (size_t)(colon + 1 - s), "password", &u->password, err,
                    errlen);
    return rc;
}

/* host, host:port, [v6] or [v6]:port */
static int parse_hostport(const char *s, size_t n, pgs_redis_url *u, char *err, size_t errlen)
{
    const char *end = s + n, *port = NULL;
    const char *h = s, *he;
    if (n > 0 && s[0] == '[') {
        const char *rb = memchr(s, ']', n);
        if (!rb) {
            pgs_seterr(err, errlen, "an IPv6 host must be written [addr] (no ']' found)");
            return -EINVAL;
        }
        h = s + 1;
        he = rb;
        if (rb + 1 < end) {
            if (rb[1] != ':') {
                pgs_seterr(err, errlen, "only ':port' may follow an IPv6 host's ']'");
                return -EINVAL;
            }
            port = rb + 2;
        }
    } else {
        const char *colon = memchr(s, ':', n);
        he = colon ? colon : end;
        if (colon) port = colon + 1;
    }
    if (he == h) {
        pgs_seterr(err, errlen, "has no host (redis://host:6379/0)");
        return -EINVAL;
    }
    u->port = 6379;
    if (port && !number(port, (size_t)(end - port), 1, 65535, &u->port)) {
        pgs_seterr(err, errlen, "the port must be a number 1..65535");
        return -EINVAL;
    }
    return decode(h, (size_t)(he - h), "host", &u->host, err, errlen);
}

static int parse_query(const char *q, pgs_redis_url *u, char *err, size_t errlen)
{
    for (const char *p = q; *p;) {
        size_t len = strcspn(p, "&");
        const char *eq = memchr(p, '=', len);
        size_t klen = eq ? (size_t)(eq - p) : len;
        const char *v = eq ? eq + 1 : p + len;
        size_t vlen = (size_t)(p + len - v);
        if (klen == 2 && strncmp(p, "db", 2) == 0) {
            if (!number(v, vlen, 0, 1000000, &u->db)) {
                pgs_seterr(err, errlen, "db must be a number (0, 1, ...)");
                return -EINVAL;
            }
        } else if (klen == 8 && strncmp(p, "password", 8) == 0) {
            free(u->password);
            int rc = decode(v, vlen, "password", &u->password, err, errlen);
            if (rc) return rc;
        } else if (klen > 0) {
            /* the parameter's name only, cut short: never its value */
            pgs_seterr(err, errlen, "unknown parameter '%.*s' (pgscale reads db and password)",
                       (int)PGS_MIN(klen, 40u), p);
            return -EINVAL;
        }
        p += len;
        if (*p == '&') p++;
    }
    return 0;
}

static int parse(const char *text, pgs_redis_url *u, char *err, size_t errlen)
{
    const char *rest;
    if (strncasecmp(text, "redis://", 8) == 0) {
        rest = text + 8;
    } else if (strncasecmp(text, "unix://", 7) == 0) {
        rest = text + 7;
        u->unix_socket = true;
    } else if (strncasecmp(text, "rediss://", 9) == 0) {
        pgs_seterr(err, errlen, "rediss:// (Redis over TLS) is not supported: the Redis client "
                   "pgscale is built with (hiredis) has no TLS; use redis:// on a trusted network, "
                   "a unix:// socket, or a local TLS tunnel to Redis");
        return -EINVAL;
    } else {
        pgs_seterr(err, errlen, "must start with redis:// or unix://");
        return -EINVAL;
    }
    if (strchr(rest, '#')) {
        pgs_seterr(err, errlen, "a '#' must be written %%23 (fragments are not allowed)");
        return -EINVAL;
    }
    const char *q = strchr(rest, '?');
    const char *end = q ? q : rest + strlen(rest);
    /* userinfo: up to the last '@' of the authority (a password may hold
     * '@' unescaped; a '/' in it must be %2F) */
    const char *auth_end = u->unix_socket ? end : rest + strcspn(rest, "/?");
    const char *at = NULL;
    for (const char *p = rest; p < auth_end; p++)
        if (*p == '@') at = p;
    int rc = 0;
    if (at) {
        rc = parse_userinfo(rest, (size_t)(at - rest), u, err, errlen);
        if (rc) return rc;
        rest = at + 1;
    }
    if (u->unix_socket) {
        if (rest >= end || *rest != '/') {
            pgs_seterr(err, errlen, "a unix:// URL needs an absolute socket path "
                       "(unix:///run/redis/redis.sock)");
            return -EINVAL;
        }
        rc = decode(rest, (size_t)(end - rest), "socket path", &u->path, err, errlen);
    } else {
        const char *slash = rest + strcspn(rest, "/?");
        rc = parse_hostport(rest, (size_t)(slash - rest), u, err, errlen);
        if (rc == 0 && slash < end) {
            /* "/" or "/N" */
            size_t dn = (size_t)(end - slash - 1);
            if (dn > 0 && !number(slash + 1, dn, 0, 1000000, &u->db)) {
                pgs_seterr(err, errlen, "the database after the host must be a number "
                           "(redis://host:6379/0)");
                return -EINVAL;
            }
        }
    }
    if (rc == 0 && q) rc = parse_query(q + 1, u, err, errlen);
    return rc;
}

int redis_url_parse(const char *text, pgs_redis_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    int rc = parse(text, out, err, errlen);
    if (rc) redis_url_free(out);
    return rc;
}

void redis_url_free(pgs_redis_url *u)
{
    free(u->host);
    free(u->path);
    free(u->user);
    free(u->password);
    memset(u, 0, sizeof(*u));
}

void redis_url_where(const pgs_redis_url *u, char *buf, size_t len)
{
    int n;
    if (u->unix_socket) n = snprintf(buf, len, "%s", u->path);
    else if (strchr(u->host, ':')) n = snprintf(buf, len, "[%s]:%d", u->host, u->port);
    else n = snprintf(buf, len, "%s:%d", u->host, u->port);
    if (u->db && n >= 0 && (size_t)n < len) snprintf(buf + n, len - (size_t)n, " db %d", u->db);
}

/* A reply that is not an error: freed and 0, else the reason. */
static int expect_ok(redisContext *c, redisReply *r, const char *step, const char *where,
                     char *err, size_t errlen)
{
    if (!r) {
        pgs_seterr(err, errlen, "Redis at %s: %s failed: %s", where, step,
                   c->errstr[0] ? c->errstr : "no reply");
        return -EIO;
    }
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        pgs_seterr(err, errlen, "Redis at %s refused %s: %.200s", where, step, r->str);
        rc = -EACCES;
    }
    freeReplyObject(r);
    return rc;
}

int redis_connect(const pgs_redis_url *u, uint32_t timeout_ms, struct redisContext **out,
                  char *err, size_t errlen)
{
    *out = NULL;
    char where[300];
    redis_url_where(u, where, sizeof(where));
    struct timeval tv = {.tv_sec = (time_t)(timeout_ms / 1000),
                         .tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000};
    redisContext *c = u->unix_socket ? redisConnectUnixWithTimeout(u->path, tv)
                                     : redisConnectWithTimeout(u->host, u->port, tv);
    if (!c) {
        pgs_seterr(err, errlen, "Redis at %s: out of memory", where);
        return -ENOMEM;
    }
    if (c->err) {
        pgs_seterr(err, errlen, "could not connect to Redis at %s: %s", where, c->errstr);
        redisFree(c);
        return -ECONNREFUSED;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        pgs_seterr(err, errlen, "Redis at %s: could not set its timeout", where);
        redisFree(c);
        return -EIO;
    }
    int rc = 0;
    if (u->password) {
        redisReply *r = u->user ? redisCommand(c, "AUTH %s %s", u->user, u->password)
                                : redisCommand(c, "AUTH %s", u->password);
        rc = expect_ok(c, r, "AUTH (the user or password of REDIS_URL)", where, err, errlen);
    }
    if (rc == 0 && u->db) {
        redisReply *r = redisCommand(c, "SELECT %d", u->db);
        rc = expect_ok(c, r, "SELECT (the db of REDIS_URL)", where, err, errlen);
    }
    if (rc) {
        redisFree(c);
        return rc;
    }
    *out = c;
    return 0;
}
