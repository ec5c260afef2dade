/* Logging, clocks, allocation wrappers and hashing shared by all modules. */

#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

int pgs_log_level = PGS_LOG_INFO;

static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

size_t pgs_log_escape(char *dst, size_t cap, const char *src, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0) return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)src[i];
        char esc[4];
        size_t el = 0;
        if (ch == '\n') {
            esc[0] = '\\', esc[1] = 'n', el = 2;
        } else if (ch == '\r') {
            esc[0] = '\\', esc[1] = 'r', el = 2;
        } else if (ch == '\t') {
            esc[0] = '\\', esc[1] = 't', el = 2;
        } else if (ch < 0x20 || ch == 0x7f) {
            esc[0] = '\\', esc[1] = 'x', esc[2] = hex[ch >> 4], esc[3] = hex[ch & 15], el = 4;
        } else {
            esc[0] = (char)ch, el = 1;
        }
        if (o + el >= cap) break; /* cut at a whole escape, never half of one */
        memcpy(dst + o, esc, el);
        o += el;
    }
    dst[o] = '\0';
    return o;
}

/* Log lines carry names a client chose (user, database, application_name,
 * option values, statement text): a newline in one would end the line and
 * let the client write a line of its own that looks like ours.  Escaping
 * the formatted message as a whole, here, rather than each value at each
 * call site, means no log call can forget it, including ones written
 * later.  The cost is that a message can never span lines on purpose; none
 * does (multi-line text is for the client, in its ErrorResponse).  Only
 * control characters are escaped: UTF-8 names stay readable, and a
 * backslash the client sent stays as it was (it cannot end a line). */
void pgs_log_write(int level, const char *fmt, ...)
{
    char msg[1024], line[1024 + 64];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02d %02d:%02d:%02d.%03ld UTC %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, level_names[level & 3]);
    if (n < 0 || (size_t)n >= sizeof(line)) n = 0;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    size_t mlen = m < 0 ? 0 : PGS_MIN((size_t)m, sizeof(msg) - 1);
    /* two bytes kept for the newline and the terminator */
    size_t len = (size_t)n + pgs_log_escape(line + n, sizeof(line) - 1 - (size_t)n, msg, mlen);
    /* One fputs per line keeps lines from different threads whole. */
    line[len] = '\n';
    line[len + 1] = '\0';
    fputs(line, stderr);
}

static uint64_t fake_now_us;

void pgs_set_fake_now_us(uint64_t now)
{
    fake_now_us = now;
}

uint64_t pgs_now_us(void)
{
    if (PGS_UNLIKELY(fake_now_us)) return fake_now_us;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t pgs_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void oom(size_t n)
{
    fprintf(stderr, "pgscale: out of memory allocating %zu bytes\n", n);
    abort();
}

void *pgs_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}

void *pgs_xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) oom(n * sz);
    return p;
}

void *pgs_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) oom(n);
    return q;
}

char *pgs_xstrdup(const char *s)
{
    return pgs_xstrndup(s, strlen(s));
}

char *pgs_xstrndup(const char *s, size_t n)
{
    char *p = pgs_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

uint64_t pgs_hash64(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

int pgs_read_file(const char *path, size_t max, const char *what, char **out, size_t *len,
                  char *err, size_t errlen)
{
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        close(fd);
        snprintf(err, errlen, "%s: is a directory, not %s", path, what);
        return -EISDIR;
    }
    /* Grow as bytes arrive, up to one byte past the limit. */
    size_t cap = 64 * 1024, n = 0, limit = max + 1;
    if (cap > limit) cap = limit;
    char *buf = pgs_xmalloc(cap);
    for (;;) {
        if (n == cap) {
            if (cap == limit) break;
            cap = cap * 2 < limit ? cap * 2 : limit;
            buf = pgs_xrealloc(buf, cap);
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            memset(buf, 0, n);
            free(buf);
            close(fd);
            snprintf(err, errlen, "%s: cannot read: %s", path, strerror(e));
            return -e;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    *out = buf;
    *len = n;
    return 0;
}

void pgs_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void sb_putn(sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) cap *= 2;
        b->p = pgs_xrealloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void sb_putc(sbuf *b, char c) { sb_putn(b, &c, 1); }
void sb_puts(sbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }

void sb_printf(sbuf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof(small)) {
        sb_putn(b, small, (size_t)n);
        return;
    }
    char *big = pgs_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_putn(b, big, (size_t)n);
    free(big);
}

void sb_reset(sbuf *b)
{
    b->len = 0;
    if (b->p) b->p[0] = '\0';
}

const char *sb_str(sbuf *b)
{
    if (!b->p) sb_putn(b, "", 0);
    return b->p;
}

void sb_free(sbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}
