/* Authentication toward PostgreSQL servers: md5 and SCRAM-SHA-256 (client
 * side of the SASL exchange).  Pure functions over byte buffers; the crypto
 * is OpenSSL's. */
#ifndef PGS_AUTH_H
#define PGS_AUTH_H

#include "common.h"

/* "md5" + md5hex(md5hex(password || user) || salt), NUL-terminated (36 bytes). */
void auth_md5_response(const char *user, const char *password, const uint8_t salt[4],
                       char out[36]);

#define SCRAM_NONCE_LEN 24      /* raw random bytes before base64 */
#define SCRAM_MAX_MSG 1024

typedef struct scram_client {
    char password[256];
    char client_nonce[64];                 /* base64 text */
    char client_first_bare[SCRAM_MAX_MSG]; /* "n=,r=<nonce>" */
    char server_first[SCRAM_MAX_MSG];
    char client_final_without_proof[SCRAM_MAX_MSG];
    unsigned char salted_password[32];
    unsigned char auth_message_sig[32];    /* expected ServerSignature */
    int state;
} scram_client;

/* The SCRAM functions fail with: -EINVAL for a call out of order or a bad
 * argument (password over 255 bytes), -EPROTO for a malformed server
 * message, -EACCES for a server error ("e=...") or a wrong server signature,
 * -ENOBUFS when out is too small, -EIO when OpenSSL fails.  After a failure
 * in final or verify the exchange is dead: start again with init.  Output
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
/* client-first-message "n,,n=,r=<nonce>" into out; *outlen set. */
PGS_MUSTCHECK int scram_client_first(scram_client *sc, char *out, size_t outcap,
                                     size_t *outlen);
/* Takes server-first-message (not NUL-terminated, len bytes: untrusted),
 * checks it (nonce prefix, salt, iteration count 1..10,000,000), and writes
 * client-final-message into out. */
PGS_MUSTCHECK int scram_client_final(scram_client *sc, const char *server_first, size_t len,
                                     char *out, size_t outcap, size_t *outlen);
/* Checks server-final-message "v=<signature>" (or "e=<error>": fails). */
PGS_MUSTCHECK int scram_client_verify(scram_client *sc, const char *server_final, size_t len);
/* True once the server signature was verified. */
bool scram_client_done(const scram_client *sc);

#endif
