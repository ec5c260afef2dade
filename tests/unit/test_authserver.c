/* Unit tests for the server side of auth: SCRAM secrets (PostgreSQL's
 * format, checked against secrets PostgreSQL 15 made), the SCRAM verifier
 * (RFC 7677 vector, channel binding, mock users, malformed input), the
 * client's ClientKey/ServerKey mode, and md5 verification.  Client messages
 * are handed over in exact-size heap copies so ASan catches reads past len.
 * Proofs for hand-made messages come from ref_final(), a few lines of
 * OpenSSL calls that do not go through auth.c. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "auth.h"

/* RFC 7677 section 3. */
#define RFC_USER "user"
#define RFC_PASSWORD "pencil"
#define RFC_NONCE "rOprNGfwEbeRWgbNEkqO"
#define RFC_SNONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_SALT "W22ZaJ0SNY7soEsUEjb6gQ=="
#define RFC_CLIENT_FIRST "n,,n=user,r=" RFC_NONCE
#define RFC_SERVER_FIRST "r=" RFC_NONCE RFC_SNONCE ",s=" RFC_SALT ",i=4096"
#define RFC_CLIENT_FINAL                                                                  \
    "c=biws,r=" RFC_NONCE RFC_SNONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
/* The RFC's password and salt in PostgreSQL's secret format, and its
 * ClientKey, computed independently:
 * python3 -c 'import hashlib,hmac,base64
 *   sp=hashlib.pbkdf2_hmac("sha256",b"pencil",base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="),4096)
 *   ck=hmac.new(sp,b"Client Key",hashlib.sha256).digest()
 *   sk=hmac.new(sp,b"Server Key",hashlib.sha256).digest()
 *   print(*map(lambda x: base64.b64encode(x).decode(), (hashlib.sha256(ck).digest(),sk,ck)))' */
#define RFC_SECRET                                                                        \
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:" \
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
#define RFC_CLIENT_KEY "pg/JI9Z+hkSpLRa5btpe9GVrDHJcSEN0viVTVXaZbos="

/* Made by PostgreSQL 15.x itself: SET password_encryption = 'scram-sha-256';
 * CREATE ROLE u PASSWORD 'x'; and with 'md5', CREATE ROLE m PASSWORD 'x';
 * then SELECT rolpassword FROM pg_authid. */
#define PG15_SCRAM_X                                                                      \
    "SCRAM-SHA-256$4096:mCinF9DvCeL3tNMWFfGvkw==$UC2MwHouz1lZJNUEqYKPuRdpz8S23G8P85t/DFREZyI=:" \
    "IwfUjTGAoKcSUur0944juVtm0NPUY/4ngntof4YSyUw="
#define PG15_MD5_M_X "md58f0168b67e1484c7d4e363b9f091ed2f"

static const unsigned char MOCK_KEY[32] = "0123456789abcdef0123456789abcde";
static const unsigned char CERT_HASH[32] = {
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
    0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16,
    0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20};

/* ---- helpers ------------------------------------------------------------- */

static scram_secret secret_of(const char *text)
{
    scram_secret s;
    const char *why = NULL;
    assert_int_equal(scram_secret_parse(text, strlen(text), &s, &why), 0);
    assert_null(why);
    return s;
}

static void decode32(const char *b64, unsigned char out[32])
{
    unsigned char tmp[48];
    assert_int_equal(EVP_DecodeBlock(tmp, (const unsigned char *)b64, (int)strlen(b64)), 33);
    memcpy(out, tmp, 32);
}

static int first_exact(scram_server *ss, const char *mech, const char *msg, size_t len,
                       char *out, size_t cap, size_t *ol)
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, msg, len);
    int r = scram_server_first(ss, mech, strlen(mech), copy, len, out, cap, ol);
    free(copy);
    return r;
}

static int final_exact(scram_server *ss, const char *msg, size_t len, char *out, size_t cap,
                       size_t *ol)
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, msg, len);
    int r = scram_server_final(ss, copy, len, out, cap, ol);
    free(copy);
    return r;
}

/* The client-final a correct client with ClientKey ck would send, given the
 * bare client-first, the server-first and the final without its proof. */
static void ref_final(const unsigned char ck[32], const char *bare, const char *server_first,
                      const char *without_proof, char *out, size_t cap)
{
    char am[4 * SCRAM_MAX_MSG];
    unsigned char stored[32], sig[32], proof[32], b64[64];
    unsigned int sl = 0;
    int n = snprintf(am, sizeof(am), "%s,%s,%s", bare, server_first, without_proof);
    assert_true(n > 0 && (size_t)n < sizeof(am));
    SHA256(ck, 32, stored);
    assert_non_null(HMAC(EVP_sha256(), stored, 32, (unsigned char *)am, (size_t)n, sig, &sl));
    for (int i = 0; i < 32; i++) proof[i] = ck[i] ^ sig[i];
    EVP_EncodeBlock(b64, proof, 32);
    n = snprintf(out, cap, "%s,p=%s", without_proof, (char *)b64);
    assert_true(n > 0 && (size_t)n < cap);
}

/* Starts an RFC-secret verifier with the RFC server nonce; cbind optional. */
static void rfc_server(scram_server *ss, const unsigned char *cb, size_t cbl)
{
    scram_secret s = secret_of(RFC_SECRET);
    assert_int_equal(scram_server_init(ss, &s, cb, cbl), 0);
    assert_int_equal(scram_server_set_nonce(ss, RFC_SNONCE), 0);
}

/* Runs client-first msg on a fresh RFC verifier and returns the result. */
static int first_on_fresh(const char *mech, const char *msg, size_t len, const unsigned char *cb,
                          size_t cbl)
{
    scram_server ss;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    rfc_server(&ss, cb, cbl);
    int r = first_exact(&ss, mech, msg, len, out, sizeof(out), &ol);
    if (r < 0) {
        assert_non_null(scram_server_error(&ss));
        assert_false(scram_server_done(&ss));
    }
    return r;
}

static int first_str(const char *msg)
{
    return first_on_fresh(SCRAM_MECH, msg, strlen(msg), NULL, 0);
}

/* An RFC verifier that has answered the RFC client-first. */
static void rfc_after_first(scram_server *ss)
{
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    rfc_server(ss, NULL, 0);
    assert_int_equal(first_exact(ss, SCRAM_MECH, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST),
                                 out, sizeof(out), &ol),
                     0);
    assert_string_equal(out, RFC_SERVER_FIRST);
}

static int final_on_fresh(const char *msg, size_t len)
{
    scram_server ss;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    rfc_after_first(&ss);
    int r = final_exact(&ss, msg, len, out, sizeof(out), &ol);
    if (r < 0) assert_non_null(scram_server_error(&ss));
    return r;
}

static int final_str(const char *msg)
{
    return final_on_fresh(msg, strlen(msg));
}

/* A full exchange of the existing scram_client (password) against ss.
 * Returns the verifier's final result; on success also checks that the
 * client accepts the server signature. */
static int run_client(scram_client *sc, scram_server *ss)
{
    char c1[SCRAM_MAX_MSG], s1[SCRAM_MAX_MSG], c2[SCRAM_MAX_MSG], s2[SCRAM_MAX_MSG];
    size_t l1 = 0, l2 = 0, l3 = 0, l4 = 0;
    assert_int_equal(scram_client_first(sc, c1, sizeof(c1), &l1), 0);
    assert_int_equal(first_exact(ss, SCRAM_MECH, c1, l1, s1, sizeof(s1), &l2), 0);
    int r = scram_client_final(sc, s1, l2, c2, sizeof(c2), &l3);
    if (r < 0) return r;
    r = final_exact(ss, c2, l3, s2, sizeof(s2), &l4);
    if (r == 0) {
        assert_int_equal(l4, strlen(s2));
        assert_int_equal(scram_client_verify(sc, s2, l4), 0);
        assert_true(scram_client_done(sc));
        assert_true(scram_server_done(ss));
    }
    return r;
}

static int login_with_password(const scram_secret *s, const char *password)
{
    scram_client sc;
    scram_server ss;
    assert_int_equal(scram_client_init(&sc, password), 0);
    assert_int_equal(scram_server_init(&ss, s, NULL, 0), 0);
    int r = run_client(&sc, &ss);
    scram_server_clear(&ss);
    return r;
}

/* ---- secrets ------------------------------------------------------------- */

static void test_secret_parse_reads_postgres15_secret_and_formats_it_back(void **state)
{
    (void)state;
    scram_secret s = secret_of(PG15_SCRAM_X);
    assert_int_equal(s.iterations, 4096);
    assert_int_equal(s.salt_len, 16);
    char text[SCRAM_SECRET_MAX_TEXT];
    assert_int_equal(scram_secret_format(&s, text, sizeof(text)), strlen(PG15_SCRAM_X));
    assert_string_equal(text, PG15_SCRAM_X);
    assert_int_equal(scram_secret_format(&s, text, strlen(PG15_SCRAM_X)), -ENOBUFS);
}

static void test_secret_derive_matches_independent_computation(void **state)
{
    (void)state;
    unsigned char salt[16];
    assert_int_equal(EVP_DecodeBlock(salt, (const unsigned char *)RFC_SALT, 24), 18);
    scram_secret s;
    char text[SCRAM_SECRET_MAX_TEXT];
    assert_int_equal(scram_secret_derive(RFC_PASSWORD, salt, 16, 4096, &s), 0);
    assert_true(scram_secret_format(&s, text, sizeof(text)) > 0);
    assert_string_equal(text, RFC_SECRET);
}

static void test_secret_derive_reproduces_postgres15_secret(void **state)
{
    (void)state;
    scram_secret pg = secret_of(PG15_SCRAM_X), s;
    assert_int_equal(scram_secret_derive("x", pg.salt, pg.salt_len, pg.iterations, &s), 0);
    assert_int_equal(s.iterations, pg.iterations);
    assert_int_equal(s.salt_len, pg.salt_len);
    assert_memory_equal(s.salt, pg.salt, s.salt_len);
    assert_memory_equal(s.stored_key, pg.stored_key, 32);
    assert_memory_equal(s.server_key, pg.server_key, 32);
}

static void test_secret_from_password_has_fresh_16_byte_salt_and_4096_iterations(void **state)
{
    (void)state;
    scram_secret a, b;
    assert_int_equal(scram_secret_from_password("pw", &a), 0);
    assert_int_equal(scram_secret_from_password("pw", &b), 0);
    assert_int_equal(a.salt_len, 16);
    assert_int_equal(a.iterations, 4096);
    assert_memory_not_equal(a.salt, b.salt, 16);
    assert_memory_not_equal(a.stored_key, b.stored_key, 32);
    assert_int_equal(login_with_password(&a, "pw"), 0);
}

static void test_secret_derive_rejects_bad_salt_and_iterations(void **state)
{
    (void)state;
    unsigned char salt[SCRAM_MAX_SALT_LEN + 1] = {0};
    scram_secret s;
    assert_int_equal(scram_secret_derive("pw", salt, 0, 4096, &s), -EINVAL);
    assert_int_equal(scram_secret_derive("pw", salt, sizeof(salt), 4096, &s), -EINVAL);
    assert_int_equal(scram_secret_derive("pw", salt, 16, 0, &s), -EINVAL);
    assert_int_equal(scram_secret_derive("pw", salt, 16, SCRAM_MAX_ITERATIONS + 1, &s), -EINVAL);
}

static void test_secret_parse_rejects_malformed_secrets_with_reason(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        const char *why; /* a word the reason must contain */
    } bad[] = {
        {"", "does not start"},
        {"SCRAM-SHA-1$4096:W22ZaJ0SNY7soEsUEjb6gQ==$a:b", "does not start"},
        {"scram-sha-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$a:b", "does not start"},
        {"SCRAM-SHA-256$4096", "no ':' after the iteration count"},
        {"SCRAM-SHA-256$:W22ZaJ0SNY7soEsUEjb6gQ==$x:y", "empty iteration count"},
        {"SCRAM-SHA-256$40x6:W22ZaJ0SNY7soEsUEjb6gQ==$x:y", "not a decimal"},
        {"SCRAM-SHA-256$-1:W22ZaJ0SNY7soEsUEjb6gQ==$x:y", "not a decimal"},
        {"SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==$x:y", "out of range"},
        {"SCRAM-SHA-256$10000001:W22ZaJ0SNY7soEsUEjb6gQ==$x:y", "out of range"},
        {"SCRAM-SHA-256$99999999999999999999999:W22ZaJ0SNY7soEsUEjb6gQ==$x:y", "out of range"},
        {"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==", "no '$' after the salt"},
        {"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ=$x:y", "salt is not valid base64"},
        {"SCRAM-SHA-256$4096:$x:y", "salt is empty"},
        {"SCRAM-SHA-256$4096:" /* 66 bytes of salt */
         "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
         "$x:y",
         "longer than 64"},
        {"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
         "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=",
         "no ':' between"},
        {"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
         "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4Q==:"
         "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
         "StoredKey"},
        {"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
         "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
         "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU",
         "ServerKey"},
        {RFC_SECRET ":extra", "ServerKey"},
        {RFC_SECRET " ", "ServerKey"},
    };
    for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++) {
        scram_secret s;
        const char *why = NULL;
        size_t len = strlen(bad[i].text);
        char *copy = malloc(len ? len : 1);
        memcpy(copy, bad[i].text, len);
        assert_int_equal(scram_secret_parse(copy, len, &s, &why), -EINVAL);
        free(copy);
        assert_non_null(why);
        if (strstr(why, bad[i].why) == NULL) fail_msg("'%s': reason '%s'", bad[i].text, why);
    }
    /* Embedded NUL; and over 256 bytes. */
    scram_secret s;
    const char *why = NULL;
    assert_int_equal(scram_secret_parse(RFC_SECRET, sizeof(RFC_SECRET), &s, &why), -EINVAL);
    assert_non_null(strstr(why, "NUL"));
    char big[400];
    memset(big, 'A', sizeof(big));
    memcpy(big, RFC_SECRET, strlen(RFC_SECRET));
    assert_int_equal(scram_secret_parse(big, sizeof(big), &s, &why), -EINVAL);
    assert_non_null(strstr(why, "longer than 256"));
}

static void test_secret_classify_follows_postgres(void **state)
{
    (void)state;
    assert_int_equal(auth_secret_classify(PG15_MD5_M_X), AUTH_SECRET_MD5);
    assert_int_equal(auth_secret_classify(PG15_SCRAM_X), AUTH_SECRET_SCRAM);
    assert_int_equal(auth_secret_classify("SCRAM-SHA-256$garbage"), AUTH_SECRET_SCRAM);
    assert_int_equal(auth_secret_classify("pencil"), AUTH_SECRET_PLAIN);
    assert_int_equal(auth_secret_classify("md5"), AUTH_SECRET_PLAIN);
    /* Uppercase hex, a digit short or long, a non-hex digit: plaintext. */
    assert_int_equal(auth_secret_classify("md58F0168B67E1484C7D4E363B9F091ED2F"), AUTH_SECRET_PLAIN);
    assert_int_equal(auth_secret_classify("md58f0168b67e1484c7d4e363b9f091ed2"), AUTH_SECRET_PLAIN);
    assert_int_equal(auth_secret_classify("md58f0168b67e1484c7d4e363b9f091ed2ff"), AUTH_SECRET_PLAIN);
    assert_int_equal(auth_secret_classify("md58f0168b67e1484c7d4e363b9f091ed2g"), AUTH_SECRET_PLAIN);
}

/* ---- verifier: happy paths ----------------------------------------------- */

static void test_server_rfc7677_full_exchange(void **state)
{
    (void)state;
    scram_server ss;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    rfc_after_first(&ss);
    assert_int_equal(final_exact(&ss, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), out,
                                 sizeof(out), &ol),
                     0);
    assert_string_equal(out, RFC_SERVER_FINAL);
    assert_int_equal(ol, strlen(RFC_SERVER_FINAL));
    assert_true(scram_server_done(&ss));
    assert_null(scram_server_error(&ss));

    /* The recovered ClientKey is the one PBKDF2 gives for "pencil". */
    scram_keys k;
    unsigned char ck[32];
    decode32(RFC_CLIENT_KEY, ck);
    assert_int_equal(scram_server_keys(&ss, &k), 0);
    assert_memory_equal(k.client_key, ck, 32);
    scram_secret s = secret_of(RFC_SECRET);
    assert_memory_equal(k.server_key, s.server_key, 32);
    assert_int_equal(k.salt_len, 16);
    assert_memory_equal(k.salt, s.salt, 16);
    assert_int_equal(k.iterations, 4096);
    scram_server_clear(&ss);
    assert_false(scram_server_done(&ss));
}

static void test_server_verifies_postgres15_secret_against_scram_client(void **state)
{
    (void)state;
    scram_secret s = secret_of(PG15_SCRAM_X);
    assert_int_equal(login_with_password(&s, "x"), 0);
}

static void test_server_random_nonce_extends_client_nonce_by_24_chars(void **state)
{
    (void)state;
    scram_secret s = secret_of(PG15_SCRAM_X);
    scram_server a, b;
    char fa[SCRAM_MAX_MSG], fb[SCRAM_MAX_MSG];
    size_t la = 0, lb = 0;
    assert_int_equal(scram_server_init(&a, &s, NULL, 0), 0);
    assert_int_equal(scram_server_init(&b, &s, NULL, 0), 0);
    assert_int_equal(first_exact(&a, SCRAM_MECH, "n,,n=,r=abc", 11, fa, sizeof(fa), &la), 0);
    assert_int_equal(first_exact(&b, SCRAM_MECH, "n,,n=,r=abc", 11, fb, sizeof(fb), &lb), 0);
    const char *comma = strchr(fa, ',');
    assert_int_equal(comma - fa, strlen("r=abc") + 24);
    assert_string_equal(comma, ",s=mCinF9DvCeL3tNMWFfGvkw==,i=4096");
    assert_string_not_equal(fa, fb);
}

static void test_server_accepts_y_flag_when_binding_not_offered(void **state)
{
    (void)state;
    scram_server ss;
    char out[SCRAM_MAX_MSG], fin[SCRAM_MAX_MSG];
    size_t ol = 0;
    unsigned char ck[32];
    decode32(RFC_CLIENT_KEY, ck);
    rfc_server(&ss, NULL, 0);
    assert_int_equal(first_exact(&ss, SCRAM_MECH, "y,,n=,r=abc", 11, out, sizeof(out), &ol), 0);
    ref_final(ck, "n=,r=abc", out, "c=eSws,r=abc" RFC_SNONCE, fin, sizeof(fin));
    assert_int_equal(final_exact(&ss, fin, strlen(fin), out, sizeof(out), &ol), 0);
}

static void test_server_plus_accepts_matching_certificate_hash(void **state)
{
    (void)state;
    scram_server ss;
    char out[SCRAM_MAX_MSG], fin[SCRAM_MAX_MSG], wp[SCRAM_MAX_MSG];
    unsigned char cbin[64], cb64[128];
    size_t ol = 0;
    unsigned char ck[32];
    decode32(RFC_CLIENT_KEY, ck);
    rfc_server(&ss, CERT_HASH, sizeof(CERT_HASH));
    const char *first = "p=tls-server-end-point,,n=,r=abc";
    assert_int_equal(first_exact(&ss, SCRAM_MECH_PLUS, first, strlen(first), out, sizeof(out), &ol),
                     0);
    memcpy(cbin, "p=tls-server-end-point,,", 24);
    memcpy(cbin + 24, CERT_HASH, 32);
    EVP_EncodeBlock(cb64, cbin, 56);
    snprintf(wp, sizeof(wp), "c=%s,r=abc%s", (char *)cb64, RFC_SNONCE);
    ref_final(ck, "n=,r=abc", out, wp, fin, sizeof(fin));
    assert_int_equal(final_exact(&ss, fin, strlen(fin), out, sizeof(out), &ol), 0);
    assert_true(scram_server_done(&ss));
}

static void test_server_plus_rejects_other_certificate_hash(void **state)
{
    (void)state;
    scram_server ss;
    char out[SCRAM_MAX_MSG], fin[SCRAM_MAX_MSG], wp[SCRAM_MAX_MSG];
    unsigned char cbin[64], cb64[128];
    size_t ol = 0;
    unsigned char ck[32];
    decode32(RFC_CLIENT_KEY, ck);
    rfc_server(&ss, CERT_HASH, sizeof(CERT_HASH));
    const char *first = "p=tls-server-end-point,,n=,r=abc";
    assert_int_equal(first_exact(&ss, SCRAM_MECH_PLUS, first, strlen(first), out, sizeof(out), &ol),
                     0);
    /* The client saw another certificate (a TLS proxy in between); its
     * proof is right for what it saw, the binding still fails. */
    memcpy(cbin, "p=tls-server-end-point,,", 24);
    memcpy(cbin + 24, CERT_HASH, 32);
    cbin[24 + 31] ^= 1;
    EVP_EncodeBlock(cb64, cbin, 56);
    snprintf(wp, sizeof(wp), "c=%s,r=abc%s", (char *)cb64, RFC_SNONCE);
    ref_final(ck, "n=,r=abc", out, wp, fin, sizeof(fin));
    assert_int_equal(final_exact(&ss, fin, strlen(fin), out, sizeof(out), &ol), -EPROTO);
    assert_non_null(strstr(scram_server_error(&ss), "channel binding check failed"));
}

static void test_server_ignores_extensions_but_signs_them(void **state)
{
    (void)state;
    scram_server ss;
    char out[SCRAM_MAX_MSG], fin[SCRAM_MAX_MSG], s1[SCRAM_MAX_MSG];
    size_t ol = 0;
    unsigned char ck[32];
    decode32(RFC_CLIENT_KEY, ck);
    rfc_server(&ss, NULL, 0);
    const char *first = "n,,n=someone,r=abc,x=ext1,y=";
    assert_int_equal(first_exact(&ss, SCRAM_MECH, first, strlen(first), s1, sizeof(s1), &ol), 0);
    ref_final(ck, first + 3, s1, "c=biws,r=abc" RFC_SNONCE ",z=ext2", fin, sizeof(fin));
    assert_int_equal(final_exact(&ss, fin, strlen(fin), out, sizeof(out), &ol), 0);

    /* The same proof with the extension dropped is not valid. */
    rfc_server(&ss, NULL, 0);
    assert_int_equal(first_exact(&ss, SCRAM_MECH, first, strlen(first), s1, sizeof(s1), &ol), 0);
    char *z = strstr(fin, ",z=ext2");
    memmove(z, z + 7, strlen(z + 7) + 1);
    assert_int_equal(final_exact(&ss, fin, strlen(fin), out, sizeof(out), &ol), -EACCES);
}

/* ---- verifier: failures -------------------------------------------------- */

static void test_server_rejects_wrong_password(void **state)
{
    (void)state;
    scram_secret s = secret_of(PG15_SCRAM_X);
    scram_client sc;
    scram_server ss;
    scram_keys k;
    assert_int_equal(scram_client_init(&sc, "y"), 0);
    assert_int_equal(scram_server_init(&ss, &s, NULL, 0), 0);
    assert_int_equal(run_client(&sc, &ss), -EACCES);
    assert_false(scram_server_done(&ss));
    assert_non_null(strstr(scram_server_error(&ss), "proof does not match"));
    assert_int_equal(scram_server_keys(&ss, &k), -EINVAL);
}

static void test_server_rejects_rfc_proof_with_one_bit_changed(void **state)
{
    (void)state;
    /* 'Q' -> 'U' flips one bit of the last proof byte.  ('R' would not:
     * it only changes the two padding bits, which decode to nothing.) */
    assert_int_equal(
        final_str("c=biws,r=" RFC_NONCE RFC_SNONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVU="),
        -EACCES);
}

static void test_server_rejects_tampered_nonce(void **state)
{
    (void)state;
    /* The right proof with the nonce changed, shortened or extended. */
    const char *p = ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    char m[SCRAM_MAX_MSG];
    snprintf(m, sizeof(m), "c=biws,r=X%s%s", RFC_NONCE RFC_SNONCE, p);
    assert_int_equal(final_str(m), -EPROTO);
    snprintf(m, sizeof(m), "c=biws,r=" RFC_NONCE "%s", p);
    assert_int_equal(final_str(m), -EPROTO);
    snprintf(m, sizeof(m), "c=biws,r=%sx%s", RFC_NONCE RFC_SNONCE, p);
    assert_int_equal(final_str(m), -EPROTO);
    snprintf(m, sizeof(m), "c=biws,r=" RFC_NONCE "%%hvYDpWUa2RaTCAfuxFIlj)hNlF$k1%s", p);
    assert_int_equal(final_str(m), -EPROTO);
}

static void test_server_rejects_tampered_channel_binding(void **state)
{
    (void)state;
    const char *rest = ",r=" RFC_NONCE RFC_SNONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    static const char *const cb[] = {
        "eSws",     /* "y,," after "n,," */
        "cCws",     /* "p,," */
        "bixhPXUs", /* "n,a=u," */
        "biw=",     /* "n," */
        "",
        "biws!",
    };
    for (size_t i = 0; i < PGS_ARRAY_LEN(cb); i++) {
        char m[SCRAM_MAX_MSG];
        snprintf(m, sizeof(m), "c=%s%s", cb[i], rest);
        assert_int_equal(final_str(m), -EPROTO);
    }
}

static void test_server_rejects_channel_binding_downgrade(void **state)
{
    (void)state;
    /* -PLUS offered, client says "y": it can bind but was told we cannot. */
    assert_int_equal(first_on_fresh(SCRAM_MECH, "y,,n=,r=abc", 11, CERT_HASH, 32), -EPROTO);
    /* "n" (client cannot bind) is fine. */
    assert_int_equal(first_on_fresh(SCRAM_MECH, "n,,n=,r=abc", 11, CERT_HASH, 32), 0);
}

static void test_server_rejects_inconsistent_mechanism_and_gs2_flag(void **state)
{
    (void)state;
    const char *p = "p=tls-server-end-point,,n=,r=abc";
    /* -PLUS not offered. */
    assert_int_equal(first_on_fresh(SCRAM_MECH_PLUS, p, strlen(p), NULL, 0), -EPROTO);
    /* -PLUS chosen without binding data in the message. */
    assert_int_equal(first_on_fresh(SCRAM_MECH_PLUS, "n,,n=,r=abc", 11, CERT_HASH, 32), -EPROTO);
    assert_int_equal(first_on_fresh(SCRAM_MECH_PLUS, "y,,n=,r=abc", 11, CERT_HASH, 32), -EPROTO);
    /* Binding data without -PLUS. */
    assert_int_equal(first_on_fresh(SCRAM_MECH, p, strlen(p), CERT_HASH, 32), -EPROTO);
    /* Other binding types. */
    const char *u = "p=tls-unique,,n=,r=abc";
    assert_int_equal(first_on_fresh(SCRAM_MECH_PLUS, u, strlen(u), CERT_HASH, 32), -EPROTO);
    const char *e = "p=,,n=,r=abc";
    assert_int_equal(first_on_fresh(SCRAM_MECH_PLUS, e, strlen(e), CERT_HASH, 32), -EPROTO);
    /* Unknown mechanisms. */
    assert_int_equal(first_on_fresh("SCRAM-SHA-1", "n,,n=,r=abc", 11, NULL, 0), -EPROTO);
    assert_int_equal(first_on_fresh("", "n,,n=,r=abc", 11, NULL, 0), -EPROTO);
    assert_int_equal(first_on_fresh("SCRAM-SHA-256\n", "n,,n=,r=abc", 11, NULL, 0), -EPROTO);
}

static void test_server_rejects_malformed_client_first(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "n",
        "n,",
        "n,,",
        "x,,n=,r=abc",
        "N,,n=,r=abc",
        "n,a=someone,n=,r=abc",   /* authzid */
        "n;,n=,r=abc",
        "n,,m=ext,n=,r=abc",      /* mandatory extension */
        "n,,r=abc",               /* no user attribute */
        "n,,n=",
        "n,,n=u",
        "n,,n=u,",
        "n,,n=u,r=",
        "n,,n=u,x=abc",
        "n,,n=u,r=a b",
        "n,,n=u,r=a\x01" "b",
        "n,,n=u,r=a\x7f",
        "n,,n=u,r=\xc3\xa9",
        "n,,n=u,r=abc,",          /* trailing comma */
        "n,,n=u,r=abc,1=x",       /* extension name not a letter */
        "n,,n=u,r=abc,x",
        "n,,n=u,r=abc,,x=1",
    };
    for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++)
        if (first_str(bad[i]) != -EPROTO) fail_msg("accepted '%s'", bad[i]);

    static const char nul[] = "n,,n=u\0,r=abc";
    assert_int_equal(first_on_fresh(SCRAM_MECH, nul, sizeof(nul) - 1, NULL, 0), -EPROTO);
    assert_int_equal(first_on_fresh(SCRAM_MECH, "n,,n=,r=abc", 12, NULL, 0), -EPROTO);
}

static void test_server_rejects_oversized_client_first_and_nonce(void **state)
{
    (void)state;
    char m[2 * SCRAM_MAX_MSG];
    /* A 512-byte nonce is accepted, 513 is not. */
    snprintf(m, sizeof(m), "n,,n=,r=%0*d", 512, 7);
    assert_int_equal(first_str(m), 0);
    snprintf(m, sizeof(m), "n,,n=,r=%0*d", 513, 7);
    assert_int_equal(first_str(m), -EPROTO);
    /* A message of 1024 bytes or more, however made up. */
    snprintf(m, sizeof(m), "n,,n=%0*d,r=abc", SCRAM_MAX_MSG, 7);
    assert_int_equal(first_str(m), -EPROTO);
}

static void test_server_rejects_every_prefix_of_client_first_without_nonce(void **state)
{
    (void)state;
    const char *msg = RFC_CLIENT_FIRST;
    size_t upto = (size_t)(strstr(msg, ",r=") - msg) + 3;
    for (size_t len = 0; len <= upto; len++)
        assert_int_equal(first_on_fresh(SCRAM_MECH, msg, len, NULL, 0), -EPROTO);
}

static void test_server_rejects_malformed_client_final(void **state)
{
    (void)state;
#define R ",r=" RFC_NONCE RFC_SNONCE
#define P ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    static const char *const bad[] = {
        "",
        "c",
        "c=biws",
        "c=biws,",
        "r=" RFC_NONCE RFC_SNONCE P,             /* no c= */
        "c=biws" P,                               /* no r= */
        "c=biws" R,                               /* no p= */
        "c=biws" R ",",
        "c=biws" R ",p=",
        "c=biws" R P ",x=ext",                    /* p= not last */
        "c=biws" R P ",",
        "c=biws" R ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndV==", /* 31 bytes */
        "c=biws" R ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=AAAA",
        "c=biws" R ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7And*Q=",
        "c=biws" R ",p= HzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "c=biws" R ",1=x" P,                      /* extension name not a letter */
        "c=biws" R ",," P,
        " c=biws" R P,
        "C=biws" R P,
    };
    for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++)
        if (final_str(bad[i]) != -EPROTO) fail_msg("accepted '%s'", bad[i]);
    static const char nul[] = "c=biws" R "\0" P;
    assert_int_equal(final_on_fresh(nul, sizeof(nul) - 1), -EPROTO);
    assert_int_equal(final_on_fresh(RFC_CLIENT_FINAL, sizeof(RFC_CLIENT_FINAL)), -EPROTO);
    char big[2 * SCRAM_MAX_MSG];
    snprintf(big, sizeof(big), "c=biws,r=%s,x=%0*d%s", RFC_NONCE RFC_SNONCE, SCRAM_MAX_MSG, 7, P);
    assert_int_equal(final_str(big), -EPROTO);
#undef R
#undef P
}

static void test_server_every_truncation_of_client_final_fails(void **state)
{
    (void)state;
    for (size_t len = 0; len < strlen(RFC_CLIENT_FINAL); len++) {
        int r = final_on_fresh(RFC_CLIENT_FINAL, len);
        assert_true(r == -EPROTO || r == -EACCES);
    }
}

static void test_server_rejects_calls_out_of_order(void **state)
{
    (void)state;
    scram_server ss;
    scram_keys k;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;

    memset(&ss, 0, sizeof(ss));
    assert_int_equal(first_exact(&ss, SCRAM_MECH, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST), out,
                                 sizeof(out), &ol),
                     -EINVAL);
    assert_int_equal(scram_server_set_nonce(&ss, "abc"), -EINVAL);

    rfc_server(&ss, NULL, 0);
    assert_int_equal(final_exact(&ss, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), out,
                                 sizeof(out), &ol),
                     -EINVAL);
    assert_int_equal(scram_server_keys(&ss, &k), -EINVAL);

    rfc_after_first(&ss);
    assert_int_equal(scram_server_set_nonce(&ss, "abc"), -EINVAL);
    assert_int_equal(first_exact(&ss, SCRAM_MECH, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST), out,
                                 sizeof(out), &ol),
                     -EINVAL);
    assert_int_equal(scram_server_keys(&ss, &k), -EINVAL);
    /* A call out of order does not end the exchange. */
    assert_int_equal(final_exact(&ss, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), out,
                                 sizeof(out), &ol),
                     0);
    assert_int_equal(final_exact(&ss, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), out,
                                 sizeof(out), &ol),
                     -EINVAL);
}

static void test_server_exchange_is_dead_after_a_failure(void **state)
{
    (void)state;
    scram_server ss;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    rfc_after_first(&ss);
    assert_int_equal(final_exact(&ss, "c=eSws", 6, out, sizeof(out), &ol), -EPROTO);
    assert_int_equal(final_exact(&ss, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), out,
                                 sizeof(out), &ol),
                     -EINVAL);

    rfc_server(&ss, NULL, 0);
    assert_int_equal(first_exact(&ss, SCRAM_MECH, "garbage", 7, out, sizeof(out), &ol), -EPROTO);
    assert_int_equal(first_exact(&ss, SCRAM_MECH, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST), out,
                                 sizeof(out), &ol),
                     -EINVAL);
}

static void test_server_rejects_too_small_output_buffers(void **state)
{
    (void)state;
    scram_server ss;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    rfc_server(&ss, NULL, 0);
    assert_int_equal(first_exact(&ss, SCRAM_MECH, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST), out,
                                 strlen(RFC_SERVER_FIRST), &ol),
                     -ENOBUFS);
    rfc_after_first(&ss);
    assert_int_equal(final_exact(&ss, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), out,
                                 strlen(RFC_SERVER_FINAL), &ol),
                     -ENOBUFS);
    assert_false(scram_server_done(&ss));
}

static void test_server_init_rejects_bad_arguments(void **state)
{
    (void)state;
    scram_server ss;
    scram_secret s = secret_of(RFC_SECRET);
    unsigned char cb[SCRAM_MAX_CBIND_LEN + 1] = {0};
    assert_int_equal(scram_server_init(&ss, &s, cb, sizeof(cb)), -EINVAL);
    assert_int_equal(scram_server_init(&ss, &s, NULL, 32), -EINVAL);
    assert_int_equal(scram_server_init(&ss, NULL, NULL, 0), -EINVAL);
    s.iterations = 0;
    assert_int_equal(scram_server_init(&ss, &s, NULL, 0), -EINVAL);
    s = secret_of(RFC_SECRET);
    s.salt_len = 0;
    assert_int_equal(scram_server_init(&ss, &s, NULL, 0), -EINVAL);
    s = secret_of(RFC_SECRET);
    assert_int_equal(scram_server_init(&ss, &s, NULL, 0), 0);
    assert_int_equal(scram_server_set_nonce(&ss, ""), -EINVAL);
    assert_int_equal(scram_server_set_nonce(&ss, "a,b"), -EINVAL);
    assert_int_equal(scram_server_set_nonce(&ss, "a b"), -EINVAL);
    char longn[80];
    memset(longn, 'n', 64);
    longn[64] = '\0';
    assert_int_equal(scram_server_set_nonce(&ss, longn), -EINVAL);
}

/* ---- mock users ---------------------------------------------------------- */

static void test_mock_user_exchange_has_real_shape_and_fails_at_the_end(void **state)
{
    (void)state;
    unsigned char salt[16];
    char b64salt[32];
    assert_int_equal(scram_mock_salt("ghost", MOCK_KEY, sizeof(MOCK_KEY), salt), 0);
    EVP_EncodeBlock((unsigned char *)b64salt, salt, 16);

    /* A real user with a PostgreSQL-made secret, and a mock one. */
    scram_secret real = secret_of(PG15_SCRAM_X);
    scram_server rs, ms;
    scram_client rc, mc;
    char c1[SCRAM_MAX_MSG], rs1[SCRAM_MAX_MSG], ms1[SCRAM_MAX_MSG];
    char rc2[SCRAM_MAX_MSG], mc2[SCRAM_MAX_MSG], out[SCRAM_MAX_MSG];
    size_t l1 = 0, rl = 0, ml = 0, rl2 = 0, ml2 = 0, ol = 0;
    assert_int_equal(scram_server_init(&rs, &real, NULL, 0), 0);
    assert_int_equal(scram_server_init_mock(&ms, "ghost", MOCK_KEY, sizeof(MOCK_KEY), NULL, 0), 0);
    assert_int_equal(scram_client_init_nonce(&rc, "x", "samenonce"), 0);
    assert_int_equal(scram_client_init_nonce(&mc, "x", "samenonce"), 0);
    assert_int_equal(scram_client_first(&rc, c1, sizeof(c1), &l1), 0);
    assert_int_equal(scram_client_first(&mc, c1, sizeof(c1), &l1), 0);
    assert_int_equal(first_exact(&rs, SCRAM_MECH, c1, l1, rs1, sizeof(rs1), &rl), 0);
    assert_int_equal(first_exact(&ms, SCRAM_MECH, c1, l1, ms1, sizeof(ms1), &ml), 0);

    /* Same length, same layout; only nonce and salt bytes differ. */
    assert_int_equal(rl, ml);
    char want[SCRAM_MAX_MSG];
    snprintf(want, sizeof(want), ",s=%s,i=4096", b64salt);
    assert_string_equal(strchr(ms1, ','), want);
    assert_memory_equal(ms1, "r=samenonce", 11);

    /* The client cannot tell either: both get a client-final. */
    assert_int_equal(scram_client_final(&rc, rs1, rl, rc2, sizeof(rc2), &rl2), 0);
    assert_int_equal(scram_client_final(&mc, ms1, ml, mc2, sizeof(mc2), &ml2), 0);
    assert_int_equal(rl2, ml2);

    /* The mock fails with the code and reason a wrong password gets. */
    assert_int_equal(final_exact(&ms, mc2, ml2, out, sizeof(out), &ol), -EACCES);
    scram_server ws;
    scram_client wc;
    assert_int_equal(scram_client_init(&wc, "wrong"), 0);
    assert_int_equal(scram_server_init(&ws, &real, NULL, 0), 0);
    assert_int_equal(run_client(&wc, &ws), -EACCES);
    assert_string_equal(scram_server_error(&ms), scram_server_error(&ws));
    assert_false(scram_server_done(&ms));
    scram_keys k;
    assert_int_equal(scram_server_keys(&ms, &k), -EINVAL);

    /* And the real one still works. */
    assert_int_equal(final_exact(&rs, rc2, rl2, out, sizeof(out), &ol), 0);
}

static void test_mock_user_fails_even_with_a_proof_for_its_zero_keys(void **state)
{
    (void)state;
    /* The mock's StoredKey is zero; no ClientKey hashes to it, but make
     * sure the refusal does not depend on that. */
    scram_server ms;
    char s1[SCRAM_MAX_MSG], fin[SCRAM_MAX_MSG], out[SCRAM_MAX_MSG];
    size_t ol = 0;
    unsigned char ck[32] = {0};
    assert_int_equal(scram_server_init_mock(&ms, "ghost", MOCK_KEY, sizeof(MOCK_KEY), NULL, 0), 0);
    assert_int_equal(scram_server_set_nonce(&ms, "SN"), 0);
    assert_int_equal(first_exact(&ms, SCRAM_MECH, "n,,n=,r=abc", 11, s1, sizeof(s1), &ol), 0);
    ref_final(ck, "n=,r=abc", s1, "c=biws,r=abcSN", fin, sizeof(fin));
    assert_int_equal(final_exact(&ms, fin, strlen(fin), out, sizeof(out), &ol), -EACCES);
}

static void test_mock_salt_is_stable_per_user_and_key(void **state)
{
    (void)state;
    unsigned char a[16], b[16], c[16], d[16];
    unsigned char key2[32];
    memcpy(key2, MOCK_KEY, 32);
    key2[0] ^= 1;
    assert_int_equal(scram_mock_salt("ghost", MOCK_KEY, 32, a), 0);
    assert_int_equal(scram_mock_salt("ghost", MOCK_KEY, 32, b), 0);
    assert_int_equal(scram_mock_salt("ghost2", MOCK_KEY, 32, c), 0);
    assert_int_equal(scram_mock_salt("ghost", key2, 32, d), 0);
    assert_memory_equal(a, b, 16);
    assert_memory_not_equal(a, c, 16);
    assert_memory_not_equal(a, d, 16);
}

static void test_mock_salt_requires_a_key_of_16_bytes(void **state)
{
    (void)state;
    unsigned char salt[16];
    scram_server ss;
    assert_int_equal(scram_mock_salt("ghost", MOCK_KEY, 15, salt), -EINVAL);
    assert_int_equal(scram_mock_salt("ghost", NULL, 0, salt), -EINVAL);
    assert_int_equal(scram_server_init_mock(&ss, "ghost", MOCK_KEY, 0, NULL, 0), -EINVAL);
    assert_int_equal(scram_mock_salt("ghost", MOCK_KEY, 16, salt), 0);
}

/* ---- client with ClientKey/ServerKey ------------------------------------- */

static void test_client_keys_reproduce_rfc7677_vector(void **state)
{
    (void)state;
    scram_secret s = secret_of(RFC_SECRET);
    scram_keys k;
    memset(&k, 0, sizeof(k));
    decode32(RFC_CLIENT_KEY, k.client_key);
    memcpy(k.server_key, s.server_key, 32);
    memcpy(k.salt, s.salt, s.salt_len);
    k.salt_len = s.salt_len;
    k.iterations = s.iterations;

    scram_client sc;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    assert_int_equal(scram_client_init_nonce(&sc, "", RFC_NONCE), 0);
    assert_int_equal(scram_client_set_user(&sc, RFC_USER), 0);
    assert_int_equal(scram_client_set_keys(&sc, &k), 0);
    assert_int_equal(scram_client_first(&sc, out, sizeof(out), &ol), 0);
    assert_string_equal(out, RFC_CLIENT_FIRST);
    assert_int_equal(scram_client_final(&sc, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out,
                                        sizeof(out), &ol),
                     0);
    assert_string_equal(out, RFC_CLIENT_FINAL);
    assert_int_equal(scram_client_verify(&sc, RFC_SERVER_FINAL, strlen(RFC_SERVER_FINAL)), 0);
    assert_true(scram_client_done(&sc));
}

static void test_client_key_passthrough_logs_in_without_password(void **state)
{
    (void)state;
    /* A client logs into the verifier with its password... */
    scram_secret s = secret_of(PG15_SCRAM_X);
    scram_client sc;
    scram_server ss;
    scram_keys k;
    assert_int_equal(scram_client_init(&sc, "x"), 0);
    assert_int_equal(scram_server_init(&ss, &s, NULL, 0), 0);
    assert_int_equal(run_client(&sc, &ss), 0);
    assert_int_equal(scram_server_keys(&ss, &k), 0);
    scram_server_clear(&ss);

    /* ...and pgscale logs in as that user with the recovered keys only,
     * against a server that has the same secret. */
    scram_client pc;
    scram_server pg;
    assert_int_equal(scram_client_init(&pc, ""), 0);
    assert_int_equal(scram_client_set_keys(&pc, &k), 0);
    assert_int_equal(scram_server_init(&pg, &s, NULL, 0), 0);
    assert_int_equal(run_client(&pc, &pg), 0);
    /* The keys it passes on work again. */
    scram_keys k2;
    assert_int_equal(scram_server_keys(&pg, &k2), 0);
    assert_memory_equal(k.client_key, k2.client_key, 32);
    assert_memory_equal(k.server_key, k2.server_key, 32);
    assert_int_equal(k.salt_len, k2.salt_len);
    assert_memory_equal(k.salt, k2.salt, k.salt_len);
    assert_int_equal(k.iterations, k2.iterations);
}

static void test_client_keys_against_another_salt_fail_with_ekeyrejected(void **state)
{
    (void)state;
    /* The role's password was set again on the server: same password, new
     * salt.  The old keys cannot answer; the error says so up front. */
    scram_secret s = secret_of(PG15_SCRAM_X), renewed;
    scram_keys k;
    scram_client sc;
    scram_server ss;
    assert_int_equal(scram_client_init(&sc, "x"), 0);
    assert_int_equal(scram_server_init(&ss, &s, NULL, 0), 0);
    assert_int_equal(run_client(&sc, &ss), 0);
    assert_int_equal(scram_server_keys(&ss, &k), 0);

    assert_int_equal(scram_secret_from_password("x", &renewed), 0);
    assert_int_equal(scram_client_init(&sc, ""), 0);
    assert_int_equal(scram_client_set_keys(&sc, &k), 0);
    assert_int_equal(scram_server_init(&ss, &renewed, NULL, 0), 0);
    assert_int_equal(run_client(&sc, &ss), -EKEYREJECTED);

    /* Same salt, other iteration count. */
    assert_int_equal(scram_secret_derive("x", s.salt, s.salt_len, 4097, &renewed), 0);
    assert_int_equal(scram_client_init(&sc, ""), 0);
    assert_int_equal(scram_client_set_keys(&sc, &k), 0);
    assert_int_equal(scram_server_init(&ss, &renewed, NULL, 0), 0);
    assert_int_equal(run_client(&sc, &ss), -EKEYREJECTED);
}

static void test_client_keys_with_wrong_client_key_are_refused_by_server(void **state)
{
    (void)state;
    scram_secret s = secret_of(PG15_SCRAM_X);
    scram_keys k;
    memset(&k, 0, sizeof(k));
    memcpy(k.server_key, s.server_key, 32);
    memcpy(k.salt, s.salt, s.salt_len);
    k.salt_len = s.salt_len;
    k.iterations = s.iterations;
    k.client_key[0] = 1;
    scram_client sc;
    scram_server ss;
    assert_int_equal(scram_client_init(&sc, ""), 0);
    assert_int_equal(scram_client_set_keys(&sc, &k), 0);
    assert_int_equal(scram_server_init(&ss, &s, NULL, 0), 0);
    assert_int_equal(run_client(&sc, &ss), -EACCES);
}

static void test_client_set_keys_rejects_bad_calls(void **state)
{
    (void)state;
    scram_client sc;
    scram_keys k;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    memset(&k, 0, sizeof(k));
    k.salt_len = 16;
    k.iterations = 4096;
    memset(&sc, 0, sizeof(sc));
    assert_int_equal(scram_client_set_keys(&sc, &k), -EINVAL);
    assert_int_equal(scram_client_init(&sc, ""), 0);
    assert_int_equal(scram_client_set_keys(&sc, NULL), -EINVAL);
    k.salt_len = 0;
    assert_int_equal(scram_client_set_keys(&sc, &k), -EINVAL);
    k.salt_len = SCRAM_MAX_SALT_LEN + 1;
    assert_int_equal(scram_client_set_keys(&sc, &k), -EINVAL);
    k.salt_len = 16;
    k.iterations = 0;
    assert_int_equal(scram_client_set_keys(&sc, &k), -EINVAL);
    k.iterations = 4096;
    assert_int_equal(scram_client_first(&sc, out, sizeof(out), &ol), 0);
    assert_int_equal(scram_client_set_keys(&sc, &k), -EINVAL);
}

/* ---- md5 ----------------------------------------------------------------- */

static void test_md5_verify_accepts_postgres15_hash_and_plaintext(void **state)
{
    (void)state;
    /* python3 -c 'import hashlib; a=hashlib.md5(b"xm").hexdigest();
     *   print("md5"+hashlib.md5(a.encode()+bytes([0xde,0xad,0xbe,0xef])).hexdigest())' */
    static const uint8_t salt[4] = {0xde, 0xad, 0xbe, 0xef};
    const char *resp = "md5ad7647df637c122e7da7ed3e7a185f8f";
    assert_int_equal(auth_md5_verify("m", PG15_MD5_M_X, salt, resp, 35), 0);
    assert_int_equal(auth_md5_verify("m", "x", salt, resp, 35), 0);
    /* And what our own client side answers verifies. */
    char mine[36];
    auth_md5_response("m", "x", salt, mine);
    assert_string_equal(mine, resp);
}

static void test_md5_verify_rejects_wrong_password_user_or_salt(void **state)
{
    (void)state;
    static const uint8_t salt[4] = {0xde, 0xad, 0xbe, 0xef};
    static const uint8_t salt2[4] = {0xde, 0xad, 0xbe, 0xee};
    const char *resp = "md5ad7647df637c122e7da7ed3e7a185f8f";
    assert_int_equal(auth_md5_verify("m", "y", salt, resp, 35), -EACCES);
    assert_int_equal(auth_md5_verify("n", "x", salt, resp, 35), -EACCES);
    assert_int_equal(auth_md5_verify("m", PG15_MD5_M_X, salt2, resp, 35), -EACCES);
    /* The md5 hash itself is not a password (pass-the-hash gets nowhere
     * without the salt round). */
    assert_int_equal(auth_md5_verify("m", PG15_MD5_M_X, salt, PG15_MD5_M_X, 35), -EACCES);
}

static void test_md5_verify_rejects_malformed_responses(void **state)
{
    (void)state;
    static const uint8_t salt[4] = {0xde, 0xad, 0xbe, 0xef};
    static const char *const bad[] = {
        "",
        "md5",
        "md5ad7647df637c122e7da7ed3e7a185f8",   /* 34 */
        "md5ad7647df637c122e7da7ed3e7a185f8f0", /* 36 */
        "MD5ad7647df637c122e7da7ed3e7a185f8f",
        "md5AD7647DF637C122E7DA7ED3E7A185F8F",
        "xxxad7647df637c122e7da7ed3e7a185f8f",
    };
    for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++)
        assert_int_equal(auth_md5_verify("m", PG15_MD5_M_X, salt, bad[i], strlen(bad[i])),
                         -EACCES);
    /* The right response with its NUL counted. */
    assert_int_equal(auth_md5_verify("m", PG15_MD5_M_X, salt,
                                     "md5ad7647df637c122e7da7ed3e7a185f8f", 36),
                     -EACCES);
}

static void test_md5_verify_cannot_use_scram_secret(void **state)
{
    (void)state;
    static const uint8_t salt[4] = {0xde, 0xad, 0xbe, 0xef};
    assert_int_equal(auth_md5_verify("u", PG15_SCRAM_X, salt,
                                     "md5ad7647df637c122e7da7ed3e7a185f8f", 35),
                     -EOPNOTSUPP);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_secret_parse_reads_postgres15_secret_and_formats_it_back),
        cmocka_unit_test(test_secret_derive_matches_independent_computation),
        cmocka_unit_test(test_secret_derive_reproduces_postgres15_secret),
        cmocka_unit_test(test_secret_from_password_has_fresh_16_byte_salt_and_4096_iterations),
        cmocka_unit_test(test_secret_derive_rejects_bad_salt_and_iterations),
        cmocka_unit_test(test_secret_parse_rejects_malformed_secrets_with_reason),
        cmocka_unit_test(test_secret_classify_follows_postgres),
        cmocka_unit_test(test_server_rfc7677_full_exchange),
        cmocka_unit_test(test_server_verifies_postgres15_secret_against_scram_client),
        cmocka_unit_test(test_server_random_nonce_extends_client_nonce_by_24_chars),
        cmocka_unit_test(test_server_accepts_y_flag_when_binding_not_offered),
        cmocka_unit_test(test_server_plus_accepts_matching_certificate_hash),
        cmocka_unit_test(test_server_plus_rejects_other_certificate_hash),
        cmocka_unit_test(test_server_ignores_extensions_but_signs_them),
        cmocka_unit_test(test_server_rejects_wrong_password),
        cmocka_unit_test(test_server_rejects_rfc_proof_with_one_bit_changed),
        cmocka_unit_test(test_server_rejects_tampered_nonce),
        cmocka_unit_test(test_server_rejects_tampered_channel_binding),
        cmocka_unit_test(test_server_rejects_channel_binding_downgrade),
        cmocka_unit_test(test_server_rejects_inconsistent_mechanism_and_gs2_flag),
        cmocka_unit_test(test_server_rejects_malformed_client_first),
        cmocka_unit_test(test_server_rejects_oversized_client_first_and_nonce),
        cmocka_unit_test(test_server_rejects_every_prefix_of_client_first_without_nonce),
        cmocka_unit_test(test_server_rejects_malformed_client_final),
        cmocka_unit_test(test_server_every_truncation_of_client_final_fails),
        cmocka_unit_test(test_server_rejects_calls_out_of_order),
        cmocka_unit_test(test_server_exchange_is_dead_after_a_failure),
        cmocka_unit_test(test_server_rejects_too_small_output_buffers),
        cmocka_unit_test(test_server_init_rejects_bad_arguments),
        cmocka_unit_test(test_mock_user_exchange_has_real_shape_and_fails_at_the_end),
        cmocka_unit_test(test_mock_user_fails_even_with_a_proof_for_its_zero_keys),
        cmocka_unit_test(test_mock_salt_is_stable_per_user_and_key),
        cmocka_unit_test(test_mock_salt_requires_a_key_of_16_bytes),
        cmocka_unit_test(test_client_keys_reproduce_rfc7677_vector),
        cmocka_unit_test(test_client_key_passthrough_logs_in_without_password),
        cmocka_unit_test(test_client_keys_against_another_salt_fail_with_ekeyrejected),
        cmocka_unit_test(test_client_keys_with_wrong_client_key_are_refused_by_server),
        cmocka_unit_test(test_client_set_keys_rejects_bad_calls),
        cmocka_unit_test(test_md5_verify_accepts_postgres15_hash_and_plaintext),
        cmocka_unit_test(test_md5_verify_rejects_wrong_password_user_or_salt),
        cmocka_unit_test(test_md5_verify_rejects_malformed_responses),
        cmocka_unit_test(test_md5_verify_cannot_use_scram_secret),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
