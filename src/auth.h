/* Authentication, both ways: pgscale logging into PostgreSQL (md5 response,
 * SCRAM-SHA-256 client) and pgscale verifying its own clients (md5 check,
 * SCRAM-SHA-256 verifier, stored secrets).  Pure functions over byte
 * buffers; the crypto is OpenSSL's. */
#ifndef PGS_AUTH_H
#define PGS_AUTH_H

#include "common.h"

/* "md5" + md5hex(md5hex(password || user) || salt), NUL-terminated (36 bytes). */
void auth_md5_response(const char *user, const char *password, const uint8_t salt[4],
                       char out[36]);
/* The same from a stored secret "md5" + md5hex(password || user) (PostgreSQL's
 * pg_authid format), so a login works without the plaintext password.
 * 0, or -EINVAL when secret is not such a hash. */
PGS_MUSTCHECK int auth_md5_response_from_hash(const char *secret, const uint8_t salt[4],
                                              char out[36]);

#define SCRAM_NONCE_LEN 24      /* raw random bytes before base64 */
#define SCRAM_MAX_MSG 1024
#define SCRAM_KEY_LEN 32        /* SHA-256 */
#define SCRAM_MAX_SALT_LEN 64   /* decoded; PostgreSQL makes 16 */
#define SCRAM_DEFAULT_SALT_LEN 16
#define SCRAM_DEFAULT_ITERATIONS 4096
#define SCRAM_MAX_ITERATIONS 10000000
#define SCRAM_MAX_CBIND_LEN 64  /* tls-server-end-point hash: up to SHA-512 */
#define SCRAM_SECRET_MAX_TEXT 256
#define SCRAM_MECH "SCRAM-SHA-256"
#define SCRAM_MECH_PLUS "SCRAM-SHA-256-PLUS"

/* What a ClientKey/ServerKey login needs: the keys recovered by the
 * verifier from a client's proof, plus the salt and iteration count they
 * belong to (a server using another salt cannot be answered with them). */
typedef struct scram_keys {
    unsigned char client_key[SCRAM_KEY_LEN];
    unsigned char server_key[SCRAM_KEY_LEN];
    unsigned char salt[SCRAM_MAX_SALT_LEN];
    size_t salt_len;
    int iterations;
} scram_keys;

typedef struct scram_client {
    char password[256];
    char client_nonce[64];                 /* base64 text */
    char client_first_bare[SCRAM_MAX_MSG]; /* "n=,r=<nonce>" */
    char server_first[SCRAM_MAX_MSG];
    char client_final_without_proof[SCRAM_MAX_MSG];
    unsigned char salted_password[32];
    unsigned char auth_message_sig[32];    /* expected ServerSignature */
    scram_keys keys;                       /* when use_keys: instead of password */
    bool use_keys;
    char cbind_flag;                       /* gs2 flag: 'n' (default), 'y' or 'p' */
    unsigned char cbind[SCRAM_MAX_CBIND_LEN]; /* with 'p': tls-server-end-point data */
    size_t cbind_len;
    int max_iterations;                    /* 0: SCRAM_MAX_ITERATIONS */
    int server_iterations;                 /* what server-first asked for, once seen */
    int state;
} scram_client;

/* The SCRAM functions fail with: -EINVAL for a call out of order or a bad
 * argument (password over 255 bytes), -EPROTO for a malformed server
 * message, -ERANGE for a server-first-message whose iteration count is
 * above the bound (scram_client_set_max_iterations), -EACCES for a server
 * error ("e=...") or a wrong server signature, -ENOBUFS when out is too
 * small, -EIO when OpenSSL fails.  After a failure
 * in final or verify the exchange is dead: start again with init.  With
 * keys set (scram_client_set_keys), final fails with -EKEYREJECTED when the
 * server's salt or iteration count differ from the keys'.  Output
 * messages are NUL-terminated (outcap must leave room); *outlen excludes it. */

/* Starts an exchange with a fresh random nonce.  Fails if the password is
 * longer than 255 bytes or the RNG fails. */
PGS_MUSTCHECK int scram_client_init(scram_client *sc, const char *password);
/* Same with a given nonce (base64 text), for tests against known vectors. */
PGS_MUSTCHECK int scram_client_init_nonce(scram_client *sc, const char *password,
                                          const char *nonce);
/* Sets the SCRAM user name sent in client-first-message (escaped per RFC
 * 5802); only between init and first.  PostgreSQL ignores it and the default
 * is empty ("n="), which is what pgscale sends; this exists so that the RFC
 * 7677 test vector, which uses "n=user", can be reproduced. */
PGS_MUSTCHECK int scram_client_set_user(scram_client *sc, const char *user);
/* Logs in with a ClientKey and ServerKey (from scram_server_keys, or any
 * other source) instead of a password, as PgBouncer does with the keys it
 * recovered from its own client's proof: ClientProof = ClientKey XOR
 * HMAC(H(ClientKey), AuthMessage), and the server is checked with
 * HMAC(ServerKey, AuthMessage).  Only between init (any password, e.g. "";
 * it is wiped) and first.  This works only while the server's secret for the
 * role has the same salt and iteration count as the keys: keys are bound to
 * one secret, so after ALTER ROLE ... PASSWORD on the server (new salt) or
 * with a users-file secret that is not a copy of the server's pg_authid
 * entry, final fails with -EKEYREJECTED.  Fails with -EINVAL on a bad
 * call or keys with no salt or an iteration count out of range. */
PGS_MUSTCHECK int scram_client_set_keys(scram_client *sc, const scram_keys *keys);
/* Channel binding (RFC 5802 section 6, as libpq does it); only between
 * init and first.  flag 'n': no binding (the default); 'y': the client could
 * bind but the server did not offer SCRAM-SHA-256-PLUS (a server that did
 * offer it then detects the downgrade); 'p': SCRAM-SHA-256-PLUS with
 * tls-server-end-point, data being the hash of the server's certificate
 * (1..SCRAM_MAX_CBIND_LEN bytes).  The gs2 header becomes "n,,", "y,,"
 * or "p=tls-server-end-point,," and c= carries it (and data) in base64. */
PGS_MUSTCHECK int scram_client_set_cbind(scram_client *sc, char flag, const unsigned char *data,
                                         size_t len);
/* True once an exchange that used channel binding ('p') has verified the
 * server's signature: the server proved it saw the same certificate. */
bool scram_client_bound(const scram_client *sc);
/* The largest iteration count accepted from server-first-message
 * (1..SCRAM_MAX_ITERATIONS; the default is SCRAM_MAX_ITERATIONS).  PBKDF2
 * costs one HMAC per iteration on the caller's thread, so a server that
 * asks for more makes final fail with -ERANGE before any of it is spent
 * (the count asked for is then in sc->server_iterations).  Logins with keys
 * (scram_client_set_keys) compute nothing and are not bound.  Any time
 * before final. */
PGS_MUSTCHECK int scram_client_set_max_iterations(scram_client *sc, int max);
/* client-first-message "<gs2 header>n=,r=<nonce>" into out; *outlen set. */
PGS_MUSTCHECK int scram_client_first(scram_client *sc, char *out, size_t outcap,
                                     size_t *outlen);
/* Takes server-first-message (not NUL-terminated, len bytes: untrusted),
 * checks it (nonce prefix, salt, iteration count 1..10,000,000 and under
 * the bound), and writes client-final-message into out. */
PGS_MUSTCHECK int scram_client_final(scram_client *sc, const char *server_first, size_t len,
                                     char *out, size_t outcap, size_t *outlen);
/* Checks server-final-message "v=<signature>" (or "e=<error>": fails). */
PGS_MUSTCHECK int scram_client_verify(scram_client *sc, const char *server_final, size_t len);
/* True once the server signature was verified. */
bool scram_client_done(const scram_client *sc);

/* ==== server side: verifying pgscale's own clients ========================= */

/* The kinds of stored secret, classified as PostgreSQL does for pg_authid:
 * "md5" followed by exactly 32 lowercase hex digits is an md5 hash; text
 * beginning "SCRAM-SHA-256$" is a SCRAM secret (well-formed or not: parse it
 * to know); anything else is a plaintext password. */
typedef enum auth_secret_kind {
    AUTH_SECRET_PLAIN = 0,
    AUTH_SECRET_MD5,
    AUTH_SECRET_SCRAM,
} auth_secret_kind;

auth_secret_kind auth_secret_classify(const char *secret);

/* Random bytes from OpenSSL's CSPRNG (md5 salts, the mock-user key);
 * -EIO when it fails. */
PGS_MUSTCHECK int auth_random_bytes(void *buf, size_t len);

/* Checks a client's md5 PasswordMessage (len bytes, without the NUL;
 * untrusted) against salt and a stored secret that is either the plaintext
 * password or PostgreSQL's "md5" + md5hex(password || user).  The compare
 * is constant-time.  0 when it matches, -EACCES when not (also for a
 * malformed response: PostgreSQL treats that as a wrong password), and
 * -EOPNOTSUPP when the secret is a SCRAM secret: md5 cannot be verified
 * from a SCRAM secret (it holds no md5 hash and no password).  For an
 * unknown user, ask for md5 all the same and call this with any plaintext
 * dummy secret, then fail whatever it says: the exchange and its cost are
 * then those of a real user. */
PGS_MUSTCHECK int auth_md5_verify(const char *user, const char *secret, const uint8_t salt[4],
                                  const char *response, size_t len);

/* A SCRAM-SHA-256 secret as PostgreSQL stores it:
 * "SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>". */
typedef struct scram_secret {
    int iterations;
    size_t salt_len;
    unsigned char salt[SCRAM_MAX_SALT_LEN];
    unsigned char stored_key[SCRAM_KEY_LEN];
    unsigned char server_key[SCRAM_KEY_LEN];
} scram_secret;

/* Parses len bytes of secret text (untrusted: strict base64, iterations
 * 1..SCRAM_MAX_ITERATIONS, salt 1..SCRAM_MAX_SALT_LEN bytes, keys exactly 32
 * bytes).  0, or -EINVAL with *why (if given) set to a static reason. */
PGS_MUSTCHECK int scram_secret_parse(const char *text, size_t len, scram_secret *out,
                                     const char **why);
/* Formats a secret in PostgreSQL's text form into out (NUL-terminated;
 * SCRAM_SECRET_MAX_TEXT always suffices).  Returns the length or -ENOBUFS. */
PGS_MUSTCHECK int scram_secret_format(const scram_secret *s, char *out, size_t outcap);
/* Derives a secret from a plaintext password with the given salt and
 * iteration count (PBKDF2-HMAC-SHA-256: ~1-5 ms at 4096 iterations, so call
 * it at load time or accept the cost per login).  The password is used as
 * raw bytes, like the client side: exact for ASCII, but PostgreSQL clients
 * SASLprep non-ASCII passwords, so a non-ASCII password that SASLprep
 * changes (NFKC) will not verify. */
PGS_MUSTCHECK int scram_secret_derive(const char *password, const unsigned char *salt,
                                      size_t salt_len, int iterations, scram_secret *out);
/* Same with a fresh random 16-byte salt and 4096 iterations, PostgreSQL's
 * defaults. */
PGS_MUSTCHECK int scram_secret_from_password(const char *password, scram_secret *out);
/* The salt pgscale shows for user when it has no SCRAM secret of its own:
 * the first 16 bytes of HMAC-SHA-256(key, user).  key is a server-wide
 * random secret (at least 16 bytes; -EINVAL otherwise) made once at start,
 * so the salt is stable per user, unpredictable without the key, and the
 * same for an unknown user (mock exchange) as for a plaintext-password user
 * whose secret is derived with it. */
PGS_MUSTCHECK int scram_mock_salt(const char *user, const unsigned char *key, size_t keylen,
                                  unsigned char salt[SCRAM_DEFAULT_SALT_LEN]);

/* The verifier for one client's SASL exchange (RFC 5802/7677 as PostgreSQL
 * 15 speaks it): init, first (SASLInitialResponse in, server-first out),
 * final (SASLResponse in, server-final out), then keys.  Functions fail
 * with: -EINVAL for a call out of order or a bad argument, -EPROTO for a
 * malformed or inconsistent client message (wrong channel binding, nonce
 * mismatch: PostgreSQL answers those with 08P01), -EACCES when the proof
 * does not match or the exchange is a mock (28P01 "password authentication
 * failed for user ..." — the same message for both, so that a client cannot
 * tell unknown users from wrong passwords), -ENOBUFS when out is too small,
 * -EIO when OpenSSL fails.  Any failure after init kills the exchange;
 * scram_server_error then gives a reason for the log (never the same text
 * for the client: 28P01's message is the caller's).  Output messages are
 * NUL-terminated; *outlen excludes the NUL.  The struct holds secrets:
 * scram_server_clear wipes it. */
typedef struct scram_server {
    scram_secret secret;
    unsigned char cbind[SCRAM_MAX_CBIND_LEN]; /* tls-server-end-point hash */
    size_t cbind_len;                         /* 0: -PLUS not offered */
    bool mock;
    bool plus;       /* client chose SCRAM-SHA-256-PLUS */
    char cbind_flag; /* gs2 flag the client sent: 'n', 'y' or 'p' */
    char server_nonce[64];
    char nonce[SCRAM_MAX_MSG]; /* client nonce + server nonce */
    char client_first_bare[SCRAM_MAX_MSG];
    char server_first[SCRAM_MAX_MSG];
    unsigned char client_key[SCRAM_KEY_LEN];
    const char *reason;
    int state;
} scram_server;

/* Starts an exchange for a user with secret, with a fresh 24-character
 * server nonce.  cbind/cbind_len: the tls-server-end-point hash of the
 * certificate pgscale presented (RFC 5929) when it offers
 * SCRAM-SHA-256-PLUS on this TLS connection; NULL/0 when it does not. */
PGS_MUSTCHECK int scram_server_init(scram_server *ss, const scram_secret *secret,
                                    const unsigned char *cbind, size_t cbind_len);
/* Starts a mock exchange for a user that does not exist (or cannot use
 * SCRAM): salt from scram_mock_salt(user, key), 4096 iterations, and a
 * proof that never matches.  Every message has the same shape and costs
 * the same as a real user's; only final fails, with -EACCES. */
PGS_MUSTCHECK int scram_server_init_mock(scram_server *ss, const char *user,
                                         const unsigned char *key, size_t keylen,
                                         const unsigned char *cbind, size_t cbind_len);
/* Replaces the random server nonce (printable ASCII but ',', 1..63 bytes);
 * only between init and first.  For tests against known vectors. */
PGS_MUSTCHECK int scram_server_set_nonce(scram_server *ss, const char *nonce);
/* Takes the SASLInitialResponse: the mechanism name (mech_len bytes, e.g.
 * SCRAM_MECH or SCRAM_MECH_PLUS) and its data, client-first-message (len
 * bytes, untrusted).  Checks the gs2 header against what was offered
 * (channel binding is required with -PLUS, refused without it, and a "y"
 * flag is a downgrade when -PLUS was offered), ignores the SCRAM user name
 * (PostgreSQL uses the startup packet's), refuses authzid and mandatory
 * extensions, and writes server-first-message "r=...,s=...,i=..." to out. */
PGS_MUSTCHECK int scram_server_first(scram_server *ss, const char *mech, size_t mech_len,
                                     const char *client_first, size_t len, char *out,
                                     size_t outcap, size_t *outlen);
/* Takes client-final-message (len bytes, untrusted): channel binding must
 * repeat the gs2 header (and, with -PLUS, the certificate hash), the nonce
 * must be the combined one, and the proof is checked in constant time.  On
 * success writes server-final-message "v=<ServerSignature>" to out. */
PGS_MUSTCHECK int scram_server_final(scram_server *ss, const char *client_final, size_t len,
                                     char *out, size_t outcap, size_t *outlen);
/* True once a client's proof was verified. */
bool scram_server_done(const scram_server *ss);
/* After success: the ClientKey recovered from the proof, the secret's
 * ServerKey, salt and iterations, for scram_client_set_keys.  -EINVAL
 * before success. */
PGS_MUSTCHECK int scram_server_keys(const scram_server *ss, scram_keys *out);
/* Why the last call failed (a static string), or NULL. */
const char *scram_server_error(const scram_server *ss);
/* Wipes the secret material from the struct. */
void scram_server_clear(scram_server *ss);

/* Wipes the remembered SaltedPassword values (at exit). */
void scram_client_cache_wipe(void);

#endif
