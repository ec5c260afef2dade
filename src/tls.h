/* TLS contexts: the OpenSSL settings for clients (tls.*) and for the
 * connections to PostgreSQL (server_tls.*), built once at start, and the
 * per-connection SSL objects made from them.  Moving bytes through an SSL
 * object is io.c's job; this module only decides how TLS is set up and
 * checked. */
#ifndef PGS_TLS_H
#define PGS_TLS_H

#include "auth.h"
#include "config.h"

struct ssl_st;

/* Builds the contexts the configuration asks for (none when TLS is off on
 * both sides).  0, or -1 with a one-line reason in err. */
PGS_MUSTCHECK int tls_init(const pgs_config *cfg, char *err, size_t errlen);
void tls_shutdown(void);

/* Does pgscale answer SSLRequest with 'S' (tls.mode other than disable)? */
bool tls_accepting(void);
/* tls.mode as it was at start (a reload does not rebuild the contexts). */
pgs_tls_mode tls_client_mode(void);
const char *tls_mode_name(pgs_tls_mode m);
/* A new SSL object for an accepted client (server role), or NULL. */
struct ssl_st *tls_new_accept(void);
/* server_tls.sslmode as it was at start (what the context was built for). */
pgs_sslmode tls_server_sslmode(void);
const char *tls_sslmode_name(pgs_sslmode m);
/* A new SSL object for a connection to PostgreSQL (client role), for the
 * host DATABASE_URL names: SNI when it is a name, the host name or IP
 * address checked against the certificate with verify-full.  NULL with a
 * reason in err. */
struct ssl_st *tls_new_connect(char *err, size_t errlen);

/* The tls-server-end-point channel binding data of our certificate (RFC
 * 5929: its hash, with SHA-256 for MD5/SHA-1 signed certificates); NULL
 * when clients are not served TLS. */
const unsigned char *tls_cbind_data(size_t *len);

/* The same for the certificate the peer presented on ssl (a PostgreSQL
 * server, for SCRAM-SHA-256-PLUS toward it): the length written to out,
 * 0 when there is no certificate or its signature names no digest. */
size_t tls_peer_cbind_data(struct ssl_st *ssl, unsigned char out[SCRAM_MAX_CBIND_LEN]);
/* server_tls.channel_binding as it was at start. */
pgs_channel_binding tls_server_channel_binding(void);
const char *tls_channel_binding_name(pgs_channel_binding m);

/* Common name of the peer's certificate into buf (NUL-terminated).  0, or
 * -1 when there is no certificate, no CN, or a CN with a NUL byte. */
PGS_MUSTCHECK int tls_peer_cn(struct ssl_st *ssl, char *buf, size_t n);

/* Why an OpenSSL call on ssl failed (ret and the thread's error queue):
 * the library's reason, and the certificate check's when that failed. */
void tls_error_text(struct ssl_st *ssl, int ret, char *buf, size_t n);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384", for logs. */
void tls_describe(struct ssl_st *ssl, char *buf, size_t n);

#endif
