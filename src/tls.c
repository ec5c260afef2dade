/* TLS contexts for both sides, built once at start from tls.* and
 * server_tls.*: certificates, keys, CAs, protocol floor, ciphers and what
 * is verified.  Per-connection SSL objects are made here and then driven
 * by io.c over the libuv stream; this module never touches a socket. */
#include "tls.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "auth.h"

static SSL_CTX *accept_ctx;   /* pgscale as TLS server, for its clients */
static SSL_CTX *connect_ctx;  /* pgscale as TLS client, toward PostgreSQL */
static bool server_verify_host;
/* What the contexts were built for: a reload does not rebuild them, so the
 * connections keep following these (tls settings need a restart). */
static pgs_sslmode server_sslmode;
static pgs_channel_binding server_cbind;
static pgs_tls_mode client_mode;
static char server_host[256];
static unsigned char cbind[SCRAM_MAX_CBIND_LEN];
static size_t cbind_len;

/* The reason of the last OpenSSL error of this thread, for start-up messages. */
static const char *last_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown OpenSSL error";
}

static int fail(char *err, size_t errlen, const char *what, const char *path)
{
    unsigned long e = ERR_peek_last_error();
    if (path && ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH)
        snprintf(err, errlen, "%s: %s does not match the certificate", what, path);
    else if (path)
        snprintf(err, errlen, "%s: %s: %s", what, path, last_reason());
    else
        snprintf(err, errlen, "%s: %s", what, last_reason());
    ERR_clear_error();
    return -1;
}

/* Options both contexts share.  Renegotiation is refused: it is gone from
 * TLS 1.3, PostgreSQL stopped using it long ago, and a client-initiated
 * one costs the server a handshake per request.  Compression is off
 * (CRIME).  SSL_MODE_RELEASE_BUFFERS lets OpenSSL free its record buffers
 * while a connection is quiet, so an idle TLS connection holds no I/O
 * buffer either. */
static void common_options(SSL_CTX *ctx)
{
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
}

/* tls-server-end-point (RFC 5929 section 4.1): the certificate's hash with
 * its signature's digest, SHA-256 when that is MD5 or SHA-1.  Certificates
 * whose signature names no digest (Ed25519) have no such hash: no -PLUS
 * for them, as in PostgreSQL (be_tls_get_certificate_hash) and libpq
 * (pgtls_get_peer_certificate_hash).  Returns the length, 0 when none. */
static size_t cert_cbind(X509 *cert, unsigned char out[SCRAM_MAX_CBIND_LEN])
{
    int algo = NID_undef;
    if (!cert || !OBJ_find_sigid_algs(X509_get_signature_nid(cert), &algo, NULL)) return 0;
    const EVP_MD *md = algo == NID_md5 || algo == NID_sha1 ? EVP_sha256()
                                                           : EVP_get_digestbynid(algo);
    unsigned int len = 0;
    unsigned char buf[EVP_MAX_MD_SIZE];
    if (!md || !X509_digest(cert, md, buf, &len) || len == 0 || len > SCRAM_MAX_CBIND_LEN) {
        ERR_clear_error();
        return 0;
    }
    memcpy(out, buf, len);
    return len;
}

static void compute_cbind(SSL_CTX *ctx)
{
    cbind_len = cert_cbind(SSL_CTX_get0_certificate(ctx), cbind);
}

static int init_accept(const pgs_tls_config *t, char *err, size_t errlen)
{
    accept_ctx = SSL_CTX_new(TLS_server_method());
    if (!accept_ctx) return fail(err, errlen, "tls", NULL);
    common_options(accept_ctx);
    /* No session tickets and no session cache: clients of a pooler connect
     * once and stay, and a ticket would be data sent after the handshake
     * that nobody asked for. */
    SSL_CTX_set_options(accept_ctx, SSL_OP_NO_TICKET | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_num_tickets(accept_ctx, 0);
    SSL_CTX_set_session_cache_mode(accept_ctx, SSL_SESS_CACHE_OFF);
    int minv = t->min_protocol >= TLS1_3_VERSION ? TLS1_3_VERSION : TLS1_2_VERSION;
    if (!SSL_CTX_set_min_proto_version(accept_ctx, minv))
        return fail(err, errlen, "tls.min_protocol", NULL);
    if (t->ciphers && !SSL_CTX_set_cipher_list(accept_ctx, t->ciphers))
        return fail(err, errlen, "tls.ciphers", t->ciphers);
    if (SSL_CTX_use_certificate_chain_file(accept_ctx, t->cert) != 1)
        return fail(err, errlen, "tls.cert", t->cert);
    if (SSL_CTX_use_PrivateKey_file(accept_ctx, t->key, SSL_FILETYPE_PEM) != 1)
        return fail(err, errlen, "tls.key", t->key);
    if (SSL_CTX_check_private_key(accept_ctx) != 1) {
        snprintf(err, errlen, "tls.key: %s does not match the certificate in %s", t->key,
                 t->cert);
        ERR_clear_error();
        return -1;
    }
    if (t->ca) {
        if (SSL_CTX_load_verify_locations(accept_ctx, t->ca, NULL) != 1)
            return fail(err, errlen, "tls.ca", t->ca);
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(t->ca);
        if (!names) return fail(err, errlen, "tls.ca", t->ca);
        SSL_CTX_set_client_CA_list(accept_ctx, names);
    }
    if (t->mode == PGS_TLS_VERIFY_CA || t->mode == PGS_TLS_VERIFY_FULL)
        SSL_CTX_set_verify(accept_ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    else
        SSL_CTX_set_verify(accept_ctx, SSL_VERIFY_NONE, NULL);
    compute_cbind(accept_ctx);
    return 0;
}

static int init_connect(const pgs_server_tls_config *t, char *err, size_t errlen)
{
    connect_ctx = SSL_CTX_new(TLS_client_method());
    if (!connect_ctx) return fail(err, errlen, "server_tls", NULL);
    common_options(connect_ctx);
    if (!SSL_CTX_set_min_proto_version(connect_ctx, TLS1_2_VERSION))
        return fail(err, errlen, "server_tls", NULL);
    if (t->ca && SSL_CTX_load_verify_locations(connect_ctx, t->ca, NULL) != 1)
        return fail(err, errlen, "server_tls.ca", t->ca);
    if (t->cert) {
        if (SSL_CTX_use_certificate_chain_file(connect_ctx, t->cert) != 1)
            return fail(err, errlen, "server_tls.cert", t->cert);
        if (SSL_CTX_use_PrivateKey_file(connect_ctx, t->key, SSL_FILETYPE_PEM) != 1)
            return fail(err, errlen, "server_tls.key", t->key);
        if (SSL_CTX_check_private_key(connect_ctx) != 1) {
            snprintf(err, errlen, "server_tls.key: %s does not match the certificate in %s",
                     t->key, t->cert);
            ERR_clear_error();
            return -1;
        }
    }
    /* As libpq: verify-ca and verify-full check the chain, and so does
     * require when a CA file is given (libpq does that when a root
     * certificate is present); allow and prefer never do. */
    bool verify = t->sslmode == PGS_SSLMODE_VERIFY_CA || t->sslmode == PGS_SSLMODE_VERIFY_FULL ||
                  (t->sslmode == PGS_SSLMODE_REQUIRE && t->ca);
    SSL_CTX_set_verify(connect_ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    server_verify_host = t->sslmode == PGS_SSLMODE_VERIFY_FULL;
    return 0;
}

int tls_init(const pgs_config *cfg, char *err, size_t errlen)
{
    server_sslmode = cfg->server_tls.sslmode;
    server_cbind = cfg->server_tls.channel_binding;
    client_mode = cfg->tls.mode;
    /* the host DATABASE_URL names, as main.c resolves it */
    const char *host = cfg->primary.host && *cfg->primary.host ? cfg->primary.host : "localhost";
    snprintf(server_host, sizeof(server_host), "%s", host);
    if (cfg->tls.mode != PGS_TLS_DISABLE && init_accept(&cfg->tls, err, errlen) < 0) {
        tls_shutdown();
        return -1;
    }
    if (cfg->server_tls.sslmode != PGS_SSLMODE_DISABLE &&
        init_connect(&cfg->server_tls, err, errlen) < 0) {
        tls_shutdown();
        return -1;
    }
    return 0;
}

void tls_shutdown(void)
{
    SSL_CTX_free(accept_ctx);
    SSL_CTX_free(connect_ctx);
    accept_ctx = connect_ctx = NULL;
    cbind_len = 0;
}

bool tls_accepting(void)
{
    return accept_ctx != NULL;
}

pgs_tls_mode tls_client_mode(void)
{
    return accept_ctx ? client_mode : PGS_TLS_DISABLE;
}

const char *tls_mode_name(pgs_tls_mode m)
{
    static const char *const names[] = {"disable", "allow", "require", "verify-ca",
                                        "verify-full"};
    return (unsigned)m < PGS_ARRAY_LEN(names) ? names[m] : "?";
}

SSL *tls_new_accept(void)
{
    SSL *ssl = accept_ctx ? SSL_new(accept_ctx) : NULL;
    if (ssl) SSL_set_accept_state(ssl);
    ERR_clear_error();
    return ssl;
}

static bool is_ip_literal(const char *host)
{
    unsigned char a[16];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

pgs_sslmode tls_server_sslmode(void)
{
    return server_sslmode;
}

const char *tls_sslmode_name(pgs_sslmode m)
{
    static const char *const names[] = {"disable", "allow", "prefer",
                                        "require", "verify-ca", "verify-full"};
    return (unsigned)m < PGS_ARRAY_LEN(names) ? names[m] : "?";
}

SSL *tls_new_connect(char *err, size_t errlen)
{
    const char *host = server_host;
    if (!connect_ctx) {
        snprintf(err, errlen, "TLS toward servers is disabled (server_tls.sslmode=disable)");
        return NULL;
    }
    SSL *ssl = SSL_new(connect_ctx);
    if (!ssl) {
        fail(err, errlen, "could not create a TLS session", NULL);
        return NULL;
    }
    SSL_set_connect_state(ssl);
    bool ip = is_ip_literal(host);
    /* SNI names a host, never an address (RFC 6066), as libpq's sslsni. */
    if (!ip && SSL_set_tlsext_host_name(ssl, host) != 1) {
        fail(err, errlen, "could not set the TLS server name", NULL);
        SSL_free(ssl);
        return NULL;
    }
    if (server_verify_host) {
        int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host)
                    : SSL_set1_host(ssl, host);
        if (ok != 1) {
            fail(err, errlen, "could not set the host name to verify", NULL);
            SSL_free(ssl);
            return NULL;
        }
    }
    return ssl;
}

size_t tls_peer_cbind_data(struct ssl_st *ssl, unsigned char out[SCRAM_MAX_CBIND_LEN])
{
    return ssl ? cert_cbind(SSL_get0_peer_certificate(ssl), out) : 0;
}

pgs_channel_binding tls_server_channel_binding(void)
{
    return server_cbind;
}

const char *tls_channel_binding_name(pgs_channel_binding m)
{
    static const char *const names[] = {"disable", "prefer", "require"};
    return (unsigned)m < PGS_ARRAY_LEN(names) ? names[m] : "?";
}

const unsigned char *tls_cbind_data(size_t *len)
{
    *len = cbind_len;
    return cbind_len ? cbind : NULL;
}

int tls_peer_cn(SSL *ssl, char *buf, size_t n)
{
    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (!cert || n == 0) return -1;
    X509_NAME *name = X509_get_subject_name(cert);
    int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
    if (idx < 0) return -1;
    ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
    const unsigned char *p = ASN1_STRING_get0_data(s);
    int len = ASN1_STRING_length(s);
    /* a CN with a NUL inside would compare equal to its prefix */
    if (len < 0 || (size_t)len >= n || memchr(p, '\0', (size_t)len)) return -1;
    memcpy(buf, p, (size_t)len);
    buf[len] = '\0';
    return 0;
}

void tls_error_text(SSL *ssl, int ret, char *buf, size_t n)
{
    int e = SSL_get_error(ssl, ret);
    unsigned long code = ERR_peek_last_error();
    long vr = SSL_get_verify_result(ssl);
    if (code && ERR_GET_REASON(code) == SSL_R_CERTIFICATE_VERIFY_FAILED && vr != X509_V_OK) {
        snprintf(buf, n, "certificate verify failed: %s", X509_verify_cert_error_string(vr));
    } else if (code && ERR_reason_error_string(code)) {
        snprintf(buf, n, "%s", ERR_reason_error_string(code));
    } else if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_SSL) {
        snprintf(buf, n, "TLS protocol error");
    } else {
        snprintf(buf, n, "TLS error %d", e);
    }
    ERR_clear_error();
}

void tls_describe(SSL *ssl, char *buf, size_t n)
{
    snprintf(buf, n, "%s %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
}
