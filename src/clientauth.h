/* Authentication of pgscale's own clients: which method applies (auth.hba
 * rules, else auth.type), and the md5 / SCRAM-SHA-256 exchanges against the
 * users file (auth.file).  The exchanges themselves are in auth.c; this
 * module drives them over a client connection. */
#ifndef PGS_CLIENTAUTH_H
#define PGS_CLIENTAUTH_H

#include "types.h"

struct authfile;

/* Loads what client authentication needs at start (the users file, a
 * server-wide random key for mock SCRAM salts).  0, or -1 with the reason
 * in err. */
PGS_MUSTCHECK int clientauth_init(const pgs_config *cfg, char *err, size_t errlen);
void clientauth_shutdown(void);
/* Reads the users file at path again and puts it in effect (RELOAD,
 * SIGHUP).  0, or -1 with the reason in err (the old one stays). */
PGS_MUSTCHECK int clientauth_reload(const char *path, char *err, size_t errlen);

/* After the start-up packet: decides the method for the client's user,
 * database and address.  Returns 0 when the client is authenticated (trust),
 * 1 when an exchange was started (the client is in CL_AUTH; feed it with
 * clientauth_data), -1 when the client was refused (already failed). */
int clientauth_begin(pgs_client *c);

/* Bytes arrived from a client in CL_AUTH.  0: authenticated; 1: more to
 * come; -1: refused or failed (the client was already failed). */
int clientauth_data(pgs_client *c);

/* True when c came over one of pgscale's own Unix sockets from a process
 * of the OS user pgscale runs as (the kernel vouches for the peer,
 * SO_PEERCRED): whoever can read pgscale's environment and signal it
 * anyway. */
bool clientauth_peer_is_self(const pgs_client *c);

/* Frees an unfinished exchange (client closing). */
void clientauth_free(pgs_client *c);

/* What pgscale can log into PostgreSQL with as `user` when DATABASE_URL has
 * no password for that user (any thread):
 * - the users file's plaintext password, or its md5 secret (answers md5);
 * - the SCRAM keys recovered from that user's last successful SCRAM login
 *   to pgscale (PgBouncer's way: they work when the users file holds the
 *   same SCRAM secret as PostgreSQL, i.e. same salt and iterations).
 * Secrets learnt through auth.query do not expire and never
 * replace what the users file vouched for.  The secret is copied into buf
 * (false: none, or longer than buflen). */
bool clientauth_user_secret(const char *user, int *kind, char *buf, size_t buflen);
struct scram_keys;
bool clientauth_user_keys(const char *user, struct scram_keys *out);
/* Whether password is user's, by the secret that verifies user's logins
 * to pgscale (the users file's, else DATABASE_URL's): HTTP basic auth of
 * the status page.  Any thread; a SCRAM secret costs one PBKDF2. */
bool clientauth_check_password(const char *user, const char *password);

#endif
