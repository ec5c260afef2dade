/* Shared basics for every module: error-return convention, logging and
 * clocks.  Nothing here knows about connections or the protocol. */
#ifndef PGS_COMMON_H
#define PGS_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdlib.h>

/* Functions that can fail return int: 0 on success, a negative code on
 * failure (libuv style).  Callers must look at the result. */
#define PGSCALE_VERSION "0.1.0"

#define PGS_MUSTCHECK __attribute__((warn_unused_result))
#define PGS_UNUSED(x) ((void)(x))
#define PGS_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define PGS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PGS_MAX(a, b) ((a) > (b) ? (a) : (b))
#define PGS_LIKELY(x) __builtin_expect(!!(x), 1)
#define PGS_UNLIKELY(x) __builtin_expect(!!(x), 0)

enum pgs_log_level { PGS_LOG_ERROR = 0, PGS_LOG_WARN = 1, PGS_LOG_INFO = 2, PGS_LOG_DEBUG = 3 };

extern int pgs_log_level;

/* Writes one line to stderr.  Control characters in the formatted message
 * (a newline in a user name a client sent, say) are escaped, so that no
 * value can end the line or forge another: log values from the network
 * as they are, without escaping them first. */
void pgs_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Formats an error message into err[0..errlen) (nothing when err is NULL
 * or errlen 0): the err/errlen out-parameters of the parsers. */
void pgs_seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Copies len bytes of src to dst (cap bytes, NUL-terminated) with control
 * characters written as \n, \r, \t or \xNN; stops before an escape that
 * would not fit.  Returns the length written. */
size_t pgs_log_escape(char *dst, size_t cap, const char *src, size_t len);

/* Every line names the connection it is about ("C-17", "S-4") so that one
 * client's story can be grepped out of the log. */
/* The level is read atomically: RELOAD (any thread) changes it while the
 * workers log. */
#define pgs_log(level, ...)                                                    \
    do {                                                                       \
        if ((level) <= __atomic_load_n(&pgs_log_level, __ATOMIC_RELAXED))      \
            pgs_log_write((level), __VA_ARGS__);                               \
    } while (0)
#define log_error(...) pgs_log(PGS_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) pgs_log(PGS_LOG_WARN, __VA_ARGS__)
#define log_info(...) pgs_log(PGS_LOG_INFO, __VA_ARGS__)
#define log_debug(...) pgs_log(PGS_LOG_DEBUG, __VA_ARGS__)

/* Monotonic clock in microseconds / wall clock in microseconds. */
uint64_t pgs_now_us(void);
/* The clock seam: while set (non-zero), pgs_now_us() returns this instead
 * of the monotonic clock, so that tests drive every time bound (pool
 * timeout, overflow idle timeout, login timeouts) by hand.  Tests only. */
void pgs_set_fake_now_us(uint64_t now);
uint64_t pgs_wall_us(void);

/* Time from `since` to `now`, 0 when since is later.  Timestamps are
 * unsigned and taken at different moments (the janitor reads its clock
 * once, then starts work that stamps connections after that reading), so
 * `now - since` would wrap to centuries and fire every timeout at once.
 * Every age is computed through this. */
static inline uint64_t pgs_elapsed_us(uint64_t now, uint64_t since)
{
    return now > since ? now - since : 0;
}

/* Allocation that aborts on failure: out-of-memory is not a condition this
 * daemon can recover from meaningfully, and checking every small allocation
 * would hide the real error handling.  Use only for bounded sizes. */
void *pgs_xmalloc(size_t n);
void *pgs_xcalloc(size_t n, size_t sz);
void *pgs_xrealloc(void *p, size_t n);
char *pgs_xstrdup(const char *s);
char *pgs_xstrndup(const char *s, size_t n);

/* Reads a whole file of at most max bytes (pipes too: it does not trust
 * st_size) into *out (malloc'ed; *len bytes, one more allowed so that the
 * caller's parser can report "too large").  what names the file's kind in
 * messages ("a .env file").  0, or -errno with "PATH: reason" in err.
 * The buffer is wiped before being freed on error (it may hold secrets). */
PGS_MUSTCHECK int pgs_read_file(const char *path, size_t max, const char *what, char **out,
                                size_t *len, char *err, size_t errlen);

/* 64-bit FNV-1a; used for statement-text keys. */
uint64_t pgs_hash64(const void *data, size_t len);

/* A growable string (the config's describe output, .env values, the HTTP
 * listener's pages); always NUL-terminated once written to. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;
void sb_putn(sbuf *b, const char *s, size_t n);
void sb_putc(sbuf *b, char c);
void sb_puts(sbuf *b, const char *s);
void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_reset(sbuf *b);
const char *sb_str(sbuf *b);
void sb_free(sbuf *b);

#endif
