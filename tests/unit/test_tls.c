/* tls.c without sockets: contexts built from the config, what each mode
 * verifies (chain, host name or IP, client certificate and its CN), the
 * channel-binding data, and start-up errors that name the file.  Keys and
 * certificates are made here with OpenSSL; handshakes run over a BIO pair. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "tls.h"

static char dir[64];
static long serial = 1;

typedef struct pki {
    EVP_PKEY *key;
    X509 *cert;
    char crt_path[128], key_path[128];
} pki;

static pki ca, otherca, server, client_app, client_nul;

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    assert_non_null(e);
    assert_int_equal(X509_add_ext(x, e, -1), 1);
    X509_EXTENSION_free(e);
}

/* cn_len < 0: cn is a C string. */
static void make(pki *p, const char *name, const char *cn, int cn_len, const pki *issuer,
                 const char *san)
{
    p->key = EVP_EC_gen("P-256");
    assert_non_null(p->key);
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, p->key);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, cn_len, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer->cert) : n);
    if (!issuer) {
        add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
    }
    if (san) add_ext(x, issuer ? issuer->cert : x, NID_subject_alt_name, san);
    assert_true(X509_sign(x, issuer ? issuer->key : p->key, EVP_sha256()) > 0);
    p->cert = x;
    snprintf(p->crt_path, sizeof(p->crt_path), "%s/%s.crt", dir, name);
    snprintf(p->key_path, sizeof(p->key_path), "%s/%s.key", dir, name);
    FILE *f = fopen(p->crt_path, "w");
    assert_non_null(f);
    PEM_write_X509(f, x);
    fclose(f);
    f = fopen(p->key_path, "w");
    assert_non_null(f);
    PEM_write_PrivateKey(f, p->key, NULL, NULL, 0, NULL, NULL);
    fclose(f);
}

static int setup_all(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/pgs-test-tls-XXXXXX");
    if (!mkdtemp(dir)) return -1;
    make(&ca, "ca", "test ca", -1, NULL, NULL);
    make(&otherca, "otherca", "other ca", -1, NULL, NULL);
    make(&server, "server", "localhost", -1, &ca, "DNS:localhost,IP:127.0.0.1");
    make(&client_app, "client_app", "app", -1, &ca, NULL);
    make(&client_nul, "client_nul", "app\0evil", 8, &ca, NULL);
    return 0;
}

static void free_pki(pki *p)
{
    unlink(p->crt_path);
    unlink(p->key_path);
    X509_free(p->cert);
    EVP_PKEY_free(p->key);
}

static int teardown_all(void **state)
{
    (void)state;
    free_pki(&ca);
    free_pki(&otherca);
    free_pki(&server);
    free_pki(&client_app);
    free_pki(&client_nul);
    rmdir(dir);
    return 0;
}

static int teardown_each(void **state)
{
    (void)state;
    tls_shutdown();
    return 0;
}

/* A config with TLS for clients (mode, pgscale's server certificate) and
 * toward servers (sslmode, ca). */
static void cfg_for(pgs_config *cfg, pgs_tls_mode mode, pgs_sslmode sslmode, const char *ca_path,
                    const char *host)
{
    config_defaults(cfg);
    cfg->tls.mode = mode;
    cfg->tls.cert = server.crt_path;
    cfg->tls.key = server.key_path;
    cfg->tls.ca = ca.crt_path;
    cfg->tls.min_protocol = 0x0303;
    cfg->server_tls.sslmode = sslmode;
    cfg->server_tls.ca = (char *)ca_path;
    cfg->primary.host = (char *)host;
}

/* Runs a handshake between a connect-side and an accept-side SSL.
 * Returns 0, or 1 / 2 when the client / server side failed, with the
 * reason in why. */
static int handshake(SSL *cl, SSL *sv, char *why, size_t n, SSL **failed)
{
    BIO *b1, *b2;
    assert_int_equal(BIO_new_bio_pair(&b1, 0, &b2, 0), 1);
    SSL_set_bio(cl, b1, b1);
    SSL_set_bio(sv, b2, b2);
    why[0] = '\0';
    bool cl_done = false, sv_done = false;
    for (int i = 0; i < 20; i++) {
        ERR_clear_error();
        int rc = cl_done ? 1 : SSL_do_handshake(cl);
        if (rc == 1) cl_done = true;
        if (rc <= 0) {
            int e = SSL_get_error(cl, rc);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                tls_error_text(cl, rc, why, n);
                *failed = cl;
                return 1;
            }
        }
        ERR_clear_error();
        int rs = sv_done ? 1 : SSL_do_handshake(sv);
        if (rs == 1) sv_done = true;
        if (rs <= 0) {
            int e = SSL_get_error(sv, rs);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                tls_error_text(sv, rs, why, n);
                *failed = sv;
                return 2;
            }
        }
        if (cl_done && sv_done) {
            /* TLS 1.3: a refused client certificate shows on the next read */
            char b;
            ERR_clear_error();
            int r = SSL_read(sv, &b, 1);
            if (r <= 0 && SSL_get_error(sv, r) == SSL_ERROR_SSL) {
                tls_error_text(sv, r, why, n);
                return 2;
            }
            r = SSL_read(cl, &b, 1);
            if (r <= 0 && SSL_get_error(cl, r) == SSL_ERROR_SSL) {
                tls_error_text(cl, r, why, n);
                return 1;
            }
            return 0;
        }
    }
    return -1;
}

static int connect_to_pgscale(const pgs_config *cfg, char *why, size_t n, SSL **accepted)
{
    char err[300];
    assert_int_equal(tls_init(cfg, err, sizeof(err)), 0);
    SSL *cl = tls_new_connect(err, sizeof(err));
    assert_non_null(cl);
    SSL *sv = tls_new_accept();
    assert_non_null(sv);
    SSL *failed = NULL;
    int rc = handshake(cl, sv, why, n, &failed);
    SSL_free(cl);
    if (accepted)
        *accepted = sv;
    else
        SSL_free(sv);
    return rc;
}

static void test_disabled_everywhere_builds_nothing(void **state)
{
    (void)state;
    pgs_config cfg;
    cfg_for(&cfg, PGS_TLS_DISABLE, PGS_SSLMODE_DISABLE, NULL, "localhost");
    char err[300];
    assert_int_equal(tls_init(&cfg, err, sizeof(err)), 0);
    assert_false(tls_accepting());
    assert_int_equal(tls_client_mode(), PGS_TLS_DISABLE);
    assert_null(tls_new_accept());
    assert_null(tls_new_connect(err, sizeof(err)));
    assert_non_null(strstr(err, "server_tls.sslmode=disable"));
    size_t len = 1;
    assert_null(tls_cbind_data(&len));
    assert_int_equal(len, 0);
}

static void test_cbind_data_is_sha256_of_the_certificate(void **state)
{
    (void)state;
    pgs_config cfg;
    cfg_for(&cfg, PGS_TLS_REQUIRE, PGS_SSLMODE_DISABLE, NULL, "localhost");
    char err[300];
    assert_int_equal(tls_init(&cfg, err, sizeof(err)), 0);
    assert_true(tls_accepting());
    assert_int_equal(tls_client_mode(), PGS_TLS_REQUIRE);
    size_t len = 0;
    const unsigned char *cb = tls_cbind_data(&len);
    unsigned char want[EVP_MAX_MD_SIZE];
    unsigned int wl = 0;
    assert_int_equal(X509_digest(server.cert, EVP_sha256(), want, &wl), 1);
    assert_non_null(cb);
    assert_int_equal(len, wl);
    assert_memory_equal(cb, want, wl);
}

static void test_start_errors_name_the_key_and_file(void **state)
{
    (void)state;
    pgs_config cfg;
    char err[300];
    cfg_for(&cfg, PGS_TLS_REQUIRE, PGS_SSLMODE_DISABLE, NULL, "localhost");
    cfg.tls.cert = "/nonexistent/server.crt";
    assert_int_equal(tls_init(&cfg, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "tls.cert: /nonexistent/server.crt"));
    assert_false(tls_accepting());

    cfg_for(&cfg, PGS_TLS_REQUIRE, PGS_SSLMODE_DISABLE, NULL, "localhost");
    cfg.tls.key = client_app.key_path; /* another certificate's key */
    assert_int_equal(tls_init(&cfg, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "does not match the certificate"));

    cfg_for(&cfg, PGS_TLS_REQUIRE, PGS_SSLMODE_DISABLE, NULL, "localhost");
    cfg.tls.ciphers = "NO-SUCH-CIPHER";
    assert_int_equal(tls_init(&cfg, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "tls.ciphers"));
}

static void test_verify_full_accepts_the_names_in_the_certificate(void **state)
{
    (void)state;
    static const char *const hosts[] = {"localhost", "127.0.0.1"};
    for (size_t i = 0; i < 2; i++) {
        pgs_config cfg;
        char why[200];
        cfg_for(&cfg, PGS_TLS_REQUIRE, PGS_SSLMODE_VERIFY_FULL, ca.crt_path, hosts[i]);
        assert_int_equal(connect_to_pgscale(&cfg, why, sizeof(why), NULL), 0);
        tls_shutdown();
    }
}

static void test_verify_full_refuses_another_host_name_or_address(void **state)
{
    (void)state;
    pgs_config cfg;
    char why[200];
    cfg_for(&cfg, PGS_TLS_REQUIRE, PGS_SSLMODE_VERIFY_FULL, ca.crt_path, "db.example.com");
    assert_int_equal(connect_to_pgscale(&cfg, why, sizeof(why), NULL), 1);
    assert_string_equal(why, "certificate verify failed: hostname mismatch");
    tls_shutdown();
    cfg_for(&cfg, PGS_TLS_REQUIRE, PGS_SSLMODE_VERIFY_FULL, ca.crt_path, "10.1.2.3");
    assert_int_equal(connect_to_pgscale(&cfg, why, sizeof(why), NULL), 1);
    assert_string_equal(why, "certificate verify failed: IP address mismatch");
    tls_shutdown();
    /* verify-ca checks the chain only */
    cfg_for(&cfg, PGS_TLS_REQUIRE, PGS_SSLMODE_VERIFY_CA, ca.crt_path, "db.example.com");
    assert_int_equal(connect_to_pgscale(&cfg, why, sizeof(why), NULL), 0);
}

static void test_verify_modes_refuse_a_certificate_from_another_ca(void **state)
{
    (void)state;
    pgs_config cfg;
    char why[200];
    cfg_for(&cfg, PGS_TLS_REQUIRE, PGS_SSLMODE_VERIFY_CA, otherca.crt_path, "localhost");
    assert_int_equal(connect_to_pgscale(&cfg, why, sizeof(why), NULL), 1);
    /* (pgscale sends its chain: the CA the test made is in it, untrusted) */
    assert_non_null(strstr(why, "certificate verify failed: "));
    tls_shutdown();
    /* require with a CA file verifies the chain, as libpq does */
    cfg_for(&cfg, PGS_TLS_REQUIRE, PGS_SSLMODE_REQUIRE, otherca.crt_path, "localhost");
    assert_int_equal(connect_to_pgscale(&cfg, why, sizeof(why), NULL), 1);
    tls_shutdown();
    /* require and prefer without one only encrypt */
    cfg_for(&cfg, PGS_TLS_REQUIRE, PGS_SSLMODE_REQUIRE, NULL, "db.example.com");
    assert_int_equal(connect_to_pgscale(&cfg, why, sizeof(why), NULL), 0);
    tls_shutdown();
    cfg_for(&cfg, PGS_TLS_REQUIRE, PGS_SSLMODE_PREFER, NULL, "db.example.com");
    assert_int_equal(connect_to_pgscale(&cfg, why, sizeof(why), NULL), 0);
}

static void test_verify_ca_for_clients_requires_a_certificate(void **state)
{
    (void)state;
    pgs_config cfg;
    char why[200];
    cfg_for(&cfg, PGS_TLS_VERIFY_CA, PGS_SSLMODE_REQUIRE, NULL, "localhost");
    assert_int_equal(connect_to_pgscale(&cfg, why, sizeof(why), NULL), 2);
    assert_non_null(strstr(why, "certificate"));
    tls_shutdown();
    /* pgscale's own client certificate (server_tls.cert) is what the
     * connect side presents here */
    cfg_for(&cfg, PGS_TLS_VERIFY_FULL, PGS_SSLMODE_REQUIRE, NULL, "localhost");
    cfg.server_tls.cert = client_app.crt_path;
    cfg.server_tls.key = client_app.key_path;
    SSL *accepted = NULL;
    assert_int_equal(connect_to_pgscale(&cfg, why, sizeof(why), &accepted), 0);
    char cn[64];
    assert_int_equal(tls_peer_cn(accepted, cn, sizeof(cn)), 0);
    assert_string_equal(cn, "app");
    assert_int_equal(tls_peer_cn(accepted, cn, 3), -1); /* does not fit */
    SSL_free(accepted);
}

static void test_peer_cn_with_a_nul_byte_is_refused(void **state)
{
    (void)state;
    pgs_config cfg;
    char why[200];
    cfg_for(&cfg, PGS_TLS_VERIFY_FULL, PGS_SSLMODE_REQUIRE, NULL, "localhost");
    cfg.server_tls.cert = client_nul.crt_path;
    cfg.server_tls.key = client_nul.key_path;
    SSL *accepted = NULL;
    assert_int_equal(connect_to_pgscale(&cfg, why, sizeof(why), &accepted), 0);
    char cn[64];
    assert_int_equal(tls_peer_cn(accepted, cn, sizeof(cn)), -1);
    SSL_free(accepted);
}

static void test_min_protocol_tls13_refuses_a_tls12_client(void **state)
{
    (void)state;
    pgs_config cfg;
    char err[300], why[200];
    cfg_for(&cfg, PGS_TLS_REQUIRE, PGS_SSLMODE_REQUIRE, NULL, "localhost");
    cfg.tls.min_protocol = 0x0304;
    assert_int_equal(tls_init(&cfg, err, sizeof(err)), 0);
    SSL *cl = tls_new_connect(err, sizeof(err));
    assert_non_null(cl);
    SSL_set_max_proto_version(cl, TLS1_2_VERSION);
    SSL *sv = tls_new_accept();
    SSL *failed = NULL;
    assert_int_not_equal(handshake(cl, sv, why, sizeof(why), &failed), 0);
    char desc[96];
    tls_describe(sv, desc, sizeof(desc));
    SSL_free(cl);
    SSL_free(sv);
}

static void test_mode_names(void **state)
{
    (void)state;
    assert_string_equal(tls_mode_name(PGS_TLS_VERIFY_FULL), "verify-full");
    assert_string_equal(tls_mode_name(PGS_TLS_REQUIRE), "require");
    assert_string_equal(tls_sslmode_name(PGS_SSLMODE_PREFER), "prefer");
    assert_string_equal(tls_sslmode_name(PGS_SSLMODE_VERIFY_CA), "verify-ca");
    assert_string_equal(tls_sslmode_name((pgs_sslmode)42), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_disabled_everywhere_builds_nothing, teardown_each),
        cmocka_unit_test_teardown(test_cbind_data_is_sha256_of_the_certificate, teardown_each),
        cmocka_unit_test_teardown(test_start_errors_name_the_key_and_file, teardown_each),
        cmocka_unit_test_teardown(test_verify_full_accepts_the_names_in_the_certificate,
                                  teardown_each),
        cmocka_unit_test_teardown(test_verify_full_refuses_another_host_name_or_address,
                                  teardown_each),
        cmocka_unit_test_teardown(test_verify_modes_refuse_a_certificate_from_another_ca,
                                  teardown_each),
        cmocka_unit_test_teardown(test_verify_ca_for_clients_requires_a_certificate,
                                  teardown_each),
        cmocka_unit_test_teardown(test_peer_cn_with_a_nul_byte_is_refused, teardown_each),
        cmocka_unit_test_teardown(test_min_protocol_tls13_refuses_a_tls12_client, teardown_each),
        cmocka_unit_test(test_mode_names),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
