/* The users file: who may log into pgscale and with what secret, in
 * PgBouncer's userlist.txt format.  Reading, lookup, and which methods
 * each secret allows; the crypto is auth's. */
#ifndef PGS_AUTHFILE_H
#define PGS_AUTHFILE_H

#include "auth.h"

#define AUTHFILE_MAX_BYTES (10u << 20) /* 10 MiB */
#define AUTHFILE_MAX_LINE 8192         /* bytes, without the line break */
#define AUTHFILE_MAX_PASSWORD 255      /* what scram_client can log in with */

typedef struct authfile authfile;

/* One user.  Strings are NUL-terminated and owned by the authfile. */
typedef struct authfile_entry {
    const char *user;
    const char *secret;         /* as written: password, md5 hash or SCRAM secret */
    auth_secret_kind kind;
    const scram_secret *scram;  /* parsed, when kind == AUTH_SECRET_SCRAM */
    const char *file;           /* the file's name, for messages */
    int line;
} authfile_entry;

/* The password-exchange methods a client can be asked for. */
typedef enum auth_method {
    AUTH_METHOD_MD5 = 0,
    AUTH_METHOD_SCRAM,
} auth_method;

/* Parses a users file held in memory (len bytes, untrusted; name is used
 * in messages).  The format:
 *
 *     # comment (also ';'), blank lines ignored
 *     "user" "secret"
 *     "o""brien" "pass ""quoted"""    -- "" is a quote inside a quoted string
 *
 * Further quoted fields after the secret are ignored (PgBouncer's mkauth.py
 * writes a third, empty one), as is a trailing comment.  The secret is a
 * plaintext password (at most 255 bytes), "md5" + 32 hex digits, or a
 * SCRAM-SHA-256 secret; text that starts "SCRAM-SHA-256$" but does not
 * parse is an error rather than a password.  Empty user names and secrets
 * and a user defined twice are errors.  Lines over 8 KiB and files over
 * 10 MiB are refused.  On error returns a negative code and writes
 * "FILE:LINE: reason" (or "FILE: reason") to err. */
PGS_MUSTCHECK int authfile_parse(const char *name, const char *data, size_t len,
                                 authfile **out, char *err, size_t errlen);
/* Reads path (at most 10 MiB) and parses it. */
PGS_MUSTCHECK int authfile_load(const char *path, authfile **out, char *err, size_t errlen);
/* A one-user table holding a plaintext password as it is (any bytes but
 * NUL; never classified as an md5 hash or SCRAM secret): DATABASE_URL's
 * user and password, which answer like a users file's entry.  name is used
 * in messages. */
authfile *authfile_from_password(const char *name, const char *user, const char *password);
void authfile_free(authfile *f);

size_t authfile_count(const authfile *f);
/* The entry for user (exact, case-sensitive, as PostgreSQL role names), or
 * NULL.  O(log n). */
const authfile_entry *authfile_lookup(const authfile *f, const char *user);

/* Whether e's secret can verify method: a plaintext password can do both,
 * an md5 hash only md5, a SCRAM secret only SCRAM.  0, or -EOPNOTSUPP with
 * the reason (naming the file and line) in err. */
PGS_MUSTCHECK int authfile_check_method(const authfile_entry *e, auth_method method, char *err,
                                        size_t errlen);
/* Checks a client's md5 response for e (see auth_md5_verify).  0, -EACCES
 * on a wrong password, -EOPNOTSUPP for a SCRAM secret; err says which. */
PGS_MUSTCHECK int authfile_md5_verify(const authfile_entry *e, const uint8_t salt[4],
                                      const char *response, size_t len, char *err,
                                      size_t errlen);
/* Derives, once, the SCRAM secret of every plaintext-password entry (with
 * its mock salt and key), so that logins never run PBKDF2: a known user's
 * exchange then costs what an unknown user's does.  Costs one PBKDF2 per
 * plaintext user at load.  0, or -1 with err. */
PGS_MUSTCHECK int authfile_precompute_scram(authfile *f, const unsigned char *key, size_t keylen,
                                            char *err, size_t errlen);
/* The SCRAM secret to verify e with: the stored one, the one
 * authfile_precompute_scram derived, or for a plaintext password one derived
 * now (PBKDF2, ~ms) with the user's mock salt (scram_mock_salt with key):
 * the salt is then the same on every login and the same as an unknown
 * user's would be, so salts reveal nothing.  -EINVAL on a bad key,
 * -EOPNOTSUPP for an md5 secret. */
PGS_MUSTCHECK int authfile_scram_secret(const authfile_entry *e, const unsigned char *key,
                                        size_t keylen, scram_secret *out, char *err,
                                        size_t errlen);

#endif
