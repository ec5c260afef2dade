/* The users file (PgBouncer's userlist.txt format): parsing from memory
 * with FILE:LINE errors, loading from disk with a size bound, lookup by
 * user name, and the rules for which method each kind of secret allows.
 * It verifies nothing itself (auth does the crypto) and knows nothing of
 * connections. */
#include "authfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

struct authfile {
    char *name;
    authfile_entry *v; /* sorted by user */
    size_t n;
};


/* A user name as it may appear in a message: printable ASCII, other bytes
 * as '?', cut at 64 bytes. */
static const char *shown(const char *s, char *buf, size_t cap)
{
    size_t n = 0;
    for (; *s && n + 4 < cap && n < 64; s++)
        buf[n++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    if (*s) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Reads a quoted string starting at s[*i] == '"' within s[0..len) (one
 * line), "" standing for a quote.  On success *out is a new NUL-terminated
 * string and *i is past the closing quote. */
static const char *read_quoted(const char *s, size_t len, size_t *i, char **out)
{
    size_t j = *i + 1, n = 0;
    char *buf = pgs_xmalloc(len + 1); /* the unescaped text is never longer */
    for (;;) {
        if (j == len) {
            free(buf);
            return "unterminated quoted string";
        }
        if (s[j] == '\0') {
            free(buf);
            return "NUL byte in quoted string";
        }
        if (s[j] == '"') {
            if (j + 1 < len && s[j + 1] == '"') {
                buf[n++] = '"';
                j += 2;
                continue;
            }
            j++;
            break;
        }
        buf[n++] = s[j++];
    }
    buf[n] = '\0';
    *i = j;
    *out = buf;
    return NULL;
}

static void entry_free(authfile_entry *e)
{
    if (e->secret) OPENSSL_cleanse((void *)e->secret, strlen(e->secret));
    if (e->scram) OPENSSL_cleanse((void *)e->scram, sizeof(*e->scram));
    free((void *)e->user);
    free((void *)e->secret);
    free((void *)e->scram);
}

void authfile_free(authfile *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) entry_free(&f->v[i]);
    free(f->v);
    free(f->name);
    free(f);
}

/* Parses one line (without its line break) into *e.  Returns NULL and sets
 * *has_entry, or the reason it is malformed. */
static const char *parse_line(const char *s, size_t len, authfile_entry *e, bool *has_entry,
                              char *why, size_t whycap)
{
    char ub[80];
    char *user = NULL, *secret = NULL, *extra = NULL;
    const char *r;
    size_t i = 0;

    *has_entry = false;
    if (len > 0 && s[len - 1] == '\r') len--;
    while (i < len && is_blank(s[i])) i++;
    if (i == len || s[i] == '#' || s[i] == ';') return NULL;
    if (s[i] != '"') return "expected a quoted user name (\"user\" \"secret\")";
    if ((r = read_quoted(s, len, &i, &user)) != NULL) return r;
    if (user[0] == '\0') {
        r = "empty user name";
        goto fail;
    }
    if (i < len && !is_blank(s[i])) {
        r = "expected a space after the user name";
        goto fail;
    }
    while (i < len && is_blank(s[i])) i++;
    if (i == len || s[i] == '#' || s[i] == ';') {
        snprintf(why, whycap, "no secret for user \"%s\"", shown(user, ub, sizeof(ub)));
        r = why;
        goto fail;
    }
    if (s[i] != '"') {
        r = "expected a quoted secret after the user name";
        goto fail;
    }
    if ((r = read_quoted(s, len, &i, &secret)) != NULL) goto fail;
    if (secret[0] == '\0') {
        snprintf(why, whycap, "empty secret for user \"%s\"", shown(user, ub, sizeof(ub)));
        r = why;
        goto fail;
    }
    /* Further quoted fields are ignored, but must be well-formed. */
    for (;;) {
        if (i < len && !is_blank(s[i]) && s[i] != '#' && s[i] != ';') {
            r = "unexpected text after the secret";
            goto fail;
        }
        while (i < len && is_blank(s[i])) i++;
        if (i == len || s[i] == '#' || s[i] == ';') break;
        if (s[i] != '"') {
            r = "unexpected text after the secret";
            goto fail;
        }
        if ((r = read_quoted(s, len, &i, &extra)) != NULL) goto fail;
        free(extra);
        extra = NULL;
    }

    memset(e, 0, sizeof(*e));
    e->kind = auth_secret_classify(secret);
    if (e->kind == AUTH_SECRET_SCRAM) {
        scram_secret *sc = pgs_xmalloc(sizeof(*sc));
        const char *bad = NULL;
        if (scram_secret_parse(secret, strlen(secret), sc, &bad) < 0) {
            free(sc);
            snprintf(why, whycap, "malformed SCRAM secret for user \"%s\": %s",
                     shown(user, ub, sizeof(ub)), bad ? bad : "unparsable");
            r = why;
            goto fail;
        }
        e->scram = sc;
    } else if (e->kind == AUTH_SECRET_PLAIN && strlen(secret) > AUTHFILE_MAX_PASSWORD) {
        snprintf(why, whycap, "password for user \"%s\" is longer than 255 bytes",
                 shown(user, ub, sizeof(ub)));
        r = why;
        goto fail;
    }
    e->user = user;
    e->secret = secret;
    *has_entry = true;
    return NULL;

fail:
    free(user);
    if (secret) OPENSSL_cleanse(secret, strlen(secret));
    free(secret);
    return r;
}

static int by_user(const void *a, const void *b)
{
    const authfile_entry *x = a, *y = b;
    int c = strcmp(x->user, y->user);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

int authfile_parse(const char *name, const char *data, size_t len, authfile **out, char *err,
                   size_t errlen)
{
    char why[256];
    *out = NULL;
    if (!name) name = "(users)";
    if (len > 0 && !data) {
        pgs_seterr(err, errlen, "%s: no data", name);
        return -EINVAL;
    }
    if (len > AUTHFILE_MAX_BYTES) {
        pgs_seterr(err, errlen, "%s: file is larger than 10 MiB (%zu bytes)", name, len);
        return -EFBIG;
    }

    authfile *f = pgs_xcalloc(1, sizeof(*f));
    f->name = pgs_xstrdup(name);
    size_t cap = 0, i = 0;
    int line = 0;
    if (len >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0) i = 3; /* UTF-8 BOM */
    while (i < len) {
        line++;
        const char *nl = memchr(data + i, '\n', len - i);
        size_t ll = nl ? (size_t)(nl - (data + i)) : len - i;
        if (ll > AUTHFILE_MAX_LINE) {
            pgs_seterr(err, errlen, "%s:%d: line is longer than 8 KiB", name, line);
            goto fail;
        }
        authfile_entry e;
        bool has = false;
        const char *r = parse_line(data + i, ll, &e, &has, why, sizeof(why));
        if (r) {
            pgs_seterr(err, errlen, "%s:%d: %s", name, line, r);
            goto fail;
        }
        i += ll + 1;
        if (!has) continue;
        e.line = line;
        e.file = f->name;
        if (f->n == cap) {
            cap = cap ? cap * 2 : 16;
            f->v = pgs_xrealloc(f->v, cap * sizeof(*f->v));
        }
        f->v[f->n++] = e;
    }

    if (f->n > 1) {
        qsort(f->v, f->n, sizeof(*f->v), by_user);
        /* Report the earliest line that repeats a user. */
        size_t dup = f->n;
        for (size_t k = 1; k < f->n; k++)
            if (strcmp(f->v[k - 1].user, f->v[k].user) == 0 &&
                (dup == f->n || f->v[k].line < f->v[dup].line))
                dup = k;
        if (dup < f->n) {
            char ub[80];
            pgs_seterr(err, errlen, "%s:%d: user \"%s\" is already defined on line %d", name,
                       f->v[dup].line, shown(f->v[dup].user, ub, sizeof(ub)), f->v[dup - 1].line);
            goto fail;
        }
    }
    *out = f;
    return 0;

fail:
    authfile_free(f);
    return -EINVAL;
}

int authfile_load(const char *path, authfile **out, char *err, size_t errlen)
{
    *out = NULL;
    char *buf;
    size_t n;
    int r = pgs_read_file(path, AUTHFILE_MAX_BYTES, "a users file", &buf, &n, err, errlen);
    if (r < 0) return r;
    int rc = authfile_parse(path, buf, n, out, err, errlen);
    OPENSSL_cleanse(buf, n);
    free(buf);
    return rc;
}

authfile *authfile_from_password(const char *name, const char *user, const char *password)
{
    authfile *f = pgs_xcalloc(1, sizeof(*f));
    f->name = pgs_xstrdup(name);
    f->v = pgs_xcalloc(1, sizeof(*f->v));
    f->n = 1;
    authfile_entry *e = &f->v[0];
    e->user = pgs_xstrdup(user);
    e->secret = pgs_xstrdup(password);
    e->kind = AUTH_SECRET_PLAIN;
    e->file = f->name;
    return f;
}

size_t authfile_count(const authfile *f)
{
    return f ? f->n : 0;
}

static int key_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const authfile_entry *)elem)->user);
}

const authfile_entry *authfile_lookup(const authfile *f, const char *user)
{
    if (!f || f->n == 0) return NULL;
    return bsearch(user, f->v, f->n, sizeof(*f->v), key_cmp);
}

int authfile_check_method(const authfile_entry *e, auth_method method, char *err,
                          size_t errlen)
{
    char ub[80];
    if (method == AUTH_METHOD_MD5 && e->kind == AUTH_SECRET_SCRAM) {
        pgs_seterr(err, errlen,
                   "%s:%d: user \"%s\" has a SCRAM secret, and md5 cannot be verified from a "
                   "SCRAM secret; ask this user for SCRAM (auth type scram-sha-256), or store "
                   "the plaintext password or its md5 hash",
                   e->file, e->line, shown(e->user, ub, sizeof(ub)));
        return -EOPNOTSUPP;
    }
    if (method == AUTH_METHOD_SCRAM && e->kind == AUTH_SECRET_MD5) {
        pgs_seterr(err, errlen,
                   "%s:%d: user \"%s\" has an md5 secret, and SCRAM cannot be verified from an "
                   "md5 hash; ask this user for md5, or store the plaintext password or a SCRAM "
                   "secret",
                   e->file, e->line, shown(e->user, ub, sizeof(ub)));
        return -EOPNOTSUPP;
    }
    return 0;
}

int authfile_md5_verify(const authfile_entry *e, const uint8_t salt[4], const char *response,
                        size_t len, char *err, size_t errlen)
{
    char ub[80];
    int r = authfile_check_method(e, AUTH_METHOD_MD5, err, errlen);
    if (r < 0) return r;
    r = auth_md5_verify(e->user, e->secret, salt, response, len);
    if (r == -EACCES)
        pgs_seterr(err, errlen, "password authentication failed for user \"%s\" (md5)",
                   shown(e->user, ub, sizeof(ub)));
    else if (r < 0)
        pgs_seterr(err, errlen, "md5 is unavailable in this OpenSSL");
    return r;
}

int authfile_scram_secret(const authfile_entry *e, const unsigned char *key, size_t keylen,
                          scram_secret *out, char *err, size_t errlen)
{
    int r = authfile_check_method(e, AUTH_METHOD_SCRAM, err, errlen);
    if (r < 0) return r;
    if (e->scram) { /* stored, or derived by authfile_precompute_scram */
        memcpy(out, e->scram, sizeof(*out));
        return 0;
    }
    unsigned char salt[SCRAM_DEFAULT_SALT_LEN];
    if ((r = scram_mock_salt(e->user, key, keylen, salt)) < 0) {
        pgs_seterr(err, errlen,
                   "the server-wide SCRAM salt key is missing or shorter than 16 bytes");
        return r;
    }
    r = scram_secret_derive(e->secret, salt, sizeof(salt), SCRAM_DEFAULT_ITERATIONS, out);
    if (r < 0) pgs_seterr(err, errlen, "deriving a SCRAM secret failed (OpenSSL error)");
    return r;
}

int authfile_precompute_scram(authfile *f, const unsigned char *key, size_t keylen, char *err,
                              size_t errlen)
{
    for (size_t i = 0; f && i < f->n; i++) {
        authfile_entry *e = &f->v[i];
        if (e->kind != AUTH_SECRET_PLAIN || e->scram) continue;
        scram_secret *s = pgs_xmalloc(sizeof(*s));
        if (authfile_scram_secret(e, key, keylen, s, err, errlen) < 0) {
            free(s);
            return -1;
        }
        e->scram = s;
    }
    return 0;
}
