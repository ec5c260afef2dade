/* Unit tests for auth: the md5 response and the SCRAM-SHA-256 client against
 * the RFC 7677 vector, plus rejection of malformed or hostile server
 * messages and of calls made out of order.  Server messages are always
 * handed over in exact-size heap copies so ASan catches any read past len. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "auth.h"

#define RFC_PASSWORD "pencil"
#define RFC_NONCE "rOprNGfwEbeRWgbNEkqO"
#define RFC_SERVER_NONCE RFC_NONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_SALT "W22ZaJ0SNY7soEsUEjb6gQ=="
#define RFC_SERVER_FIRST "r=" RFC_SERVER_NONCE ",s=" RFC_SALT ",i=4096"
#define RFC_CLIENT_FINAL                                                                  \
    "c=biws,r=" RFC_SERVER_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
/* As printed in RFC 7677 section 3, and recomputed independently:
 * python3 -c 'import hashlib,hmac,base64
 *   sp=hashlib.pbkdf2_hmac("sha256",b"pencil",base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="),4096)
 *   am=b"n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
 *      b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
 *   sk=hmac.new(sp,b"Server Key",hashlib.sha256).digest()
 *   print(base64.b64encode(hmac.new(sk,am,hashlib.sha256).digest()))' */
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

/* Calls with an exact-size, non-NUL-terminated copy of msg[0..len). */
static int final_exact(scram_client *sc, const char *msg, size_t len, char *out, size_t cap,
                       size_t *outlen)
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, msg, len);
    int r = scram_client_final(sc, copy, len, out, cap, outlen);
    free(copy);
    return r;
}

static int verify_exact(scram_client *sc, const char *msg, size_t len)
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, msg, len);
    int r = scram_client_verify(sc, copy, len);
    free(copy);
    return r;
}

/* init with the RFC nonce and user "user", then send client-first. */
static void start_rfc(scram_client *sc)
{
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    assert_int_equal(scram_client_init_nonce(sc, RFC_PASSWORD, RFC_NONCE), 0);
    assert_int_equal(scram_client_set_user(sc, "user"), 0);
    assert_int_equal(scram_client_first(sc, out, sizeof(out), &ol), 0);
    assert_string_equal(out, "n,,n=user,r=" RFC_NONCE);
    assert_int_equal(ol, strlen(out));
}

/* Runs client-final on msg from a fresh exchange and returns its result. */
static int final_from_fresh(const char *msg, size_t len)
{
    scram_client sc;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    start_rfc(&sc);
    return final_exact(&sc, msg, len, out, sizeof(out), &ol);
}

static int final_str(const char *msg)
{
    return final_from_fresh(msg, strlen(msg));
}

/* Brings an exchange to the point where the server-final is expected. */
static void finish_rfc_final(scram_client *sc)
{
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    start_rfc(sc);
    assert_int_equal(final_exact(sc, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out,
                                 sizeof(out), &ol),
                     0);
}

/* ---- md5 ----------------------------------------------------------------- */

static void test_md5_response_matches_independent_computation(void **state)
{
    (void)state;
    /* python3 -c 'import hashlib; a=hashlib.md5(b"secret"+b"postgres").hexdigest();
     *   print("md5"+hashlib.md5(a.encode()+bytes([1,2,3,4])).hexdigest())' */
    static const uint8_t salt[4] = {0x01, 0x02, 0x03, 0x04};
    char out[36];
    memset(out, 'X', sizeof(out));
    auth_md5_response("postgres", "secret", salt, out);
    assert_string_equal(out, "md5bb41a296aab6baccb36ff243a562abff");
    assert_int_equal(strlen(out), 35);
}

static void test_md5_response_from_stored_hash_equals_from_password(void **state)
{
    (void)state;
    static const uint8_t salt[4] = {0x01, 0x02, 0x03, 0x04};
    char out[36];
    /* "md5" + md5hex("secret" || "postgres"), as pg_authid stores it */
    assert_int_equal(auth_md5_response_from_hash("md553f48b7c4b76a86ce72276c5755f217d", salt, out),
                     0);
    assert_string_equal(out, "md5bb41a296aab6baccb36ff243a562abff");
    assert_int_equal(auth_md5_response_from_hash("md5short", salt, out), -EINVAL);
    assert_int_equal(auth_md5_response_from_hash("secret", salt, out), -EINVAL);
}

/* ---- SCRAM happy path ---------------------------------------------------- */

static void test_scram_rfc7677_vector(void **state)
{
    (void)state;
    scram_client sc;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    start_rfc(&sc);
    assert_int_equal(final_exact(&sc, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out,
                                 sizeof(out), &ol),
                     0);
    assert_string_equal(out, RFC_CLIENT_FINAL);
    assert_int_equal(ol, strlen(RFC_CLIENT_FINAL));
    assert_int_equal(verify_exact(&sc, RFC_SERVER_FINAL, strlen(RFC_SERVER_FINAL)), 0);
}

static void test_scram_client_first_has_empty_user_by_default(void **state)
{
    (void)state;
    scram_client sc;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    assert_int_equal(scram_client_init_nonce(&sc, "pw", "abcDEF012+/"), 0);
    assert_int_equal(scram_client_first(&sc, out, sizeof(out), &ol), 0);
    assert_string_equal(out, "n,,n=,r=abcDEF012+/");
    assert_int_equal(ol, strlen(out));
}

static void test_scram_set_user_escapes_comma_and_equals(void **state)
{
    (void)state;
    scram_client sc;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    assert_int_equal(scram_client_init_nonce(&sc, "pw", "nonce"), 0);
    assert_int_equal(scram_client_set_user(&sc, "a,b=c"), 0);
    assert_int_equal(scram_client_first(&sc, out, sizeof(out), &ol), 0);
    assert_string_equal(out, "n,,n=a=2Cb=3Dc,r=nonce");
}

static void test_scram_random_nonce_is_32_base64_chars_and_fresh(void **state)
{
    (void)state;
    scram_client a, b;
    char fa[SCRAM_MAX_MSG], fb[SCRAM_MAX_MSG];
    size_t la = 0, lb = 0;
    assert_int_equal(scram_client_init(&a, "pw"), 0);
    assert_int_equal(scram_client_init(&b, "pw"), 0);
    assert_int_equal(scram_client_first(&a, fa, sizeof(fa), &la), 0);
    assert_int_equal(scram_client_first(&b, fb, sizeof(fb), &lb), 0);
    assert_int_equal(la, strlen("n,,n=,r=") + 32);
    assert_memory_equal(fa, "n,,n=,r=", 8);
    for (size_t i = 8; i < la; i++) {
        char c = fa[i];
        assert_true((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '+' || c == '/');
    }
    assert_string_not_equal(fa, fb);
}

static void test_scram_password_of_255_bytes_is_accepted(void **state)
{
    (void)state;
    scram_client sc;
    char pw[256];
    memset(pw, 'p', 255);
    pw[255] = '\0';
    assert_int_equal(scram_client_init_nonce(&sc, pw, "nonce"), 0);
}

/* ---- SCRAM rejections: server-first -------------------------------------- */

static void test_scram_rejects_server_nonce_not_extending_client_nonce(void **state)
{
    (void)state;
    assert_int_equal(final_str("r=XOprNGfwEbeRWgbNEkqO%hvYDpWUa2,s=" RFC_SALT ",i=4096"),
                     -EPROTO);
    /* A prefix of ours, or exactly ours, is not an extension either. */
    assert_int_equal(final_str("r=rOprNGfwEbeRWgbNEkq,s=" RFC_SALT ",i=4096"), -EPROTO);
    assert_int_equal(final_str("r=" RFC_NONCE ",s=" RFC_SALT ",i=4096"), -EPROTO);
}

static void test_scram_rejects_nonprintable_server_nonce(void **state)
{
    (void)state;
    assert_int_equal(final_str("r=" RFC_NONCE "ab\x01" "cd,s=" RFC_SALT ",i=4096"), -EPROTO);
    assert_int_equal(final_str("r=" RFC_NONCE "ab cd,s=" RFC_SALT ",i=4096"), -EPROTO);
}

static void test_scram_rejects_missing_salt(void **state)
{
    (void)state;
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",i=4096"), -EPROTO);
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",s=,i=4096"), -EPROTO);
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",S=" RFC_SALT ",i=4096"), -EPROTO);
}

static void test_scram_rejects_bad_base64_salt(void **state)
{
    (void)state;
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ=,i=4096"),
                     -EPROTO); /* length not a multiple of 4 */
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",s=W22Za*0SNY7soEsUEjb6gQ==,i=4096"),
                     -EPROTO); /* character outside the alphabet */
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",s=W22=aJ0SNY7soEsUEjb6gQ==,i=4096"),
                     -EPROTO); /* padding in the middle */
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6g===,i=4096"),
                     -EPROTO); /* three padding characters */
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",s= W22ZaJ0SNY7soEsUEjb6gQ=,i=4096"),
                     -EPROTO); /* whitespace EVP_DecodeBlock would skip */
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",s====,i=4096"), -EPROTO);
}

static void test_scram_rejects_iteration_count_zero(void **state)
{
    (void)state;
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",s=" RFC_SALT ",i=0"), -EPROTO);
}

static void test_scram_rejects_iteration_count_too_large(void **state)
{
    (void)state;
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",s=" RFC_SALT ",i=99999999999"),
                     -EPROTO);
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",s=" RFC_SALT ",i=10000001"), -EPROTO);
    assert_int_equal(
        final_str("r=" RFC_SERVER_NONCE ",s=" RFC_SALT ",i=999999999999999999999999999999"),
        -EPROTO);
}

static void test_scram_rejects_non_decimal_iteration_count(void **state)
{
    (void)state;
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",s=" RFC_SALT ",i="), -EPROTO);
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",s=" RFC_SALT ",i=-1"), -EPROTO);
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",s=" RFC_SALT ",i=+4096"), -EPROTO);
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",s=" RFC_SALT ",i=40a6"), -EPROTO);
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",s=" RFC_SALT ",i= 4096"), -EPROTO);
}

static void test_scram_rejects_every_truncation_before_iteration_digits(void **state)
{
    (void)state;
    const char *msg = RFC_SERVER_FIRST;
    /* Prefixes that end inside "4096" are well-formed (i=4, i=40, i=409), so
     * cut anywhere up to and including "i=". */
    size_t upto = (size_t)(strstr(msg, ",i=") - msg) + 3;
    for (size_t len = 0; len <= upto; len++) assert_int_equal(final_from_fresh(msg, len), -EPROTO);
}

static void test_scram_rejects_embedded_nul(void **state)
{
    (void)state;
    static const char with_nul[] = "r=" RFC_SERVER_NONCE "\0x,s=" RFC_SALT ",i=4096";
    assert_int_equal(final_from_fresh(with_nul, sizeof(with_nul) - 1), -EPROTO);
    /* A well-formed message followed by its terminator counted in len. */
    assert_int_equal(final_from_fresh(RFC_SERVER_FIRST, sizeof(RFC_SERVER_FIRST)), -EPROTO);
}

static void test_scram_rejects_extensions_and_trailing_garbage(void **state)
{
    (void)state;
    assert_int_equal(final_str(RFC_SERVER_FIRST ","), -EPROTO);
    assert_int_equal(final_str(RFC_SERVER_FIRST ",x=ext"), -EPROTO);
    assert_int_equal(final_str("m=ext," RFC_SERVER_FIRST), -EPROTO);
    assert_int_equal(final_str("r=" RFC_SERVER_NONCE ",i=4096,s=" RFC_SALT), -EPROTO);
}

static void test_scram_rejects_oversized_server_first(void **state)
{
    (void)state;
    char big[2 * SCRAM_MAX_MSG];
    int n = snprintf(big, sizeof(big), "r=" RFC_NONCE "%0*d,s=" RFC_SALT ",i=4096",
                     SCRAM_MAX_MSG, 7);
    assert_true(n > 0);
    assert_int_equal(final_from_fresh(big, strlen(big)), -EPROTO);
}

static void test_scram_rejects_too_small_output_buffer(void **state)
{
    (void)state;
    scram_client sc;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    assert_int_equal(scram_client_init_nonce(&sc, "pw", "nonce"), 0);
    assert_int_equal(scram_client_first(&sc, out, 5, &ol), -ENOBUFS);
    start_rfc(&sc);
    /* Exactly the message without room for its terminator. */
    assert_int_equal(final_exact(&sc, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out,
                                 strlen(RFC_CLIENT_FINAL), &ol),
                     -ENOBUFS);
}

/* ---- SCRAM rejections: server-final -------------------------------------- */

static void test_scram_rejects_wrong_server_signature(void **state)
{
    (void)state;
    scram_client sc;
    finish_rfc_final(&sc);
    /* Last significant base64 digit changed ('4' -> '8'): one bit of the
     * final signature byte differs. */
    const char *bad = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G8=";
    assert_int_equal(verify_exact(&sc, bad, strlen(bad)), -EACCES);
}

static void test_scram_rejects_server_error(void **state)
{
    (void)state;
    scram_client sc;
    finish_rfc_final(&sc);
    assert_int_equal(verify_exact(&sc, "e=invalid-proof", strlen("e=invalid-proof")), -EACCES);
}

static void test_scram_rejects_malformed_server_final(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "v",
        "v=",
        "x=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4", /* truncated */
        "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95A==", /* first 31 bytes */
        "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4A", /* 33 bytes */
        (RFC_SERVER_FINAL ",x=ext"),
        (" " RFC_SERVER_FINAL),
    };
    for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++) {
        scram_client sc;
        finish_rfc_final(&sc);
        assert_int_not_equal(verify_exact(&sc, bad[i], strlen(bad[i])), 0);
    }
    /* The right signature with its terminator counted in len. */
    scram_client sc;
    finish_rfc_final(&sc);
    assert_int_not_equal(verify_exact(&sc, RFC_SERVER_FINAL, sizeof(RFC_SERVER_FINAL)), 0);
}

/* ---- order of calls ------------------------------------------------------ */

static void test_scram_rejects_calls_out_of_order(void **state)
{
    (void)state;
    scram_client sc;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;

    /* Nothing works on a zeroed, never-initialised struct. */
    memset(&sc, 0, sizeof(sc));
    assert_int_equal(scram_client_first(&sc, out, sizeof(out), &ol), -EINVAL);
    assert_int_equal(scram_client_set_user(&sc, "u"), -EINVAL);

    /* final and verify before first. */
    assert_int_equal(scram_client_init_nonce(&sc, RFC_PASSWORD, RFC_NONCE), 0);
    assert_int_equal(final_exact(&sc, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out,
                                 sizeof(out), &ol),
                     -EINVAL);
    assert_int_equal(verify_exact(&sc, RFC_SERVER_FINAL, strlen(RFC_SERVER_FINAL)), -EINVAL);

    /* verify before final; first twice; set_user after first. */
    assert_int_equal(scram_client_first(&sc, out, sizeof(out), &ol), 0);
    assert_int_equal(verify_exact(&sc, RFC_SERVER_FINAL, strlen(RFC_SERVER_FINAL)), -EINVAL);
    assert_int_equal(scram_client_first(&sc, out, sizeof(out), &ol), -EINVAL);
    assert_int_equal(scram_client_set_user(&sc, "u"), -EINVAL);

    /* final twice; verify twice. */
    finish_rfc_final(&sc);
    assert_int_equal(final_exact(&sc, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out,
                                 sizeof(out), &ol),
                     -EINVAL);
    assert_int_equal(verify_exact(&sc, RFC_SERVER_FINAL, strlen(RFC_SERVER_FINAL)), 0);
    assert_int_equal(verify_exact(&sc, RFC_SERVER_FINAL, strlen(RFC_SERVER_FINAL)), -EINVAL);
}

static void test_scram_exchange_is_dead_after_a_failure(void **state)
{
    (void)state;
    scram_client sc;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    start_rfc(&sc);
    assert_int_equal(final_exact(&sc, "garbage", 7, out, sizeof(out), &ol), -EPROTO);
    /* A good server-first after a bad one must not be taken. */
    assert_int_equal(final_exact(&sc, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out,
                                 sizeof(out), &ol),
                     -EINVAL);

    /* Nor a correct signature after a wrong one. */
    finish_rfc_final(&sc);
    assert_int_equal(verify_exact(&sc, "v=AAAA", 6), -EPROTO);
    assert_int_equal(verify_exact(&sc, RFC_SERVER_FINAL, strlen(RFC_SERVER_FINAL)), -EINVAL);
}

static void test_scram_rejects_password_over_255_bytes(void **state)
{
    (void)state;
    scram_client sc;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    char pw[300];
    memset(pw, 'p', 256);
    pw[256] = '\0';
    assert_int_equal(scram_client_init_nonce(&sc, pw, "nonce"), -EINVAL);
    assert_int_equal(scram_client_init(&sc, pw), -EINVAL);
    /* And the failed init leaves nothing usable behind. */
    assert_int_equal(scram_client_first(&sc, out, sizeof(out), &ol), -EINVAL);
}

static void test_scram_rejects_bad_client_nonce(void **state)
{
    (void)state;
    scram_client sc;
    char longn[100];
    memset(longn, 'n', 99);
    longn[99] = '\0';
    assert_int_equal(scram_client_init_nonce(&sc, "pw", ""), -EINVAL);
    assert_int_equal(scram_client_init_nonce(&sc, "pw", "a,b"), -EINVAL);
    assert_int_equal(scram_client_init_nonce(&sc, "pw", longn), -EINVAL);
}

/* ---- channel binding and the iteration bound ----------------------------- */

/* One whole exchange between the client and pgscale's own verifier: the
 * client binds to ccb (flag 'p' when ccb_len, else cflag), the verifier
 * offers -PLUS with scb when scb_len.  Returns the verifier's final result
 * (or its first's), and checks the client accepts a successful end. */
static int exchange(char cflag, const unsigned char *ccb, size_t ccb_len,
                    const unsigned char *scb, size_t scb_len, char *first_out)
{
    scram_secret sec;
    scram_server ss;
    scram_client sc;
    char cf[SCRAM_MAX_MSG], sf[SCRAM_MAX_MSG], fin[SCRAM_MAX_MSG], sfin[SCRAM_MAX_MSG];
    size_t cl, sl, fl, sfl;
    assert_int_equal(scram_secret_from_password("pw", &sec), 0);
    assert_int_equal(scram_server_init(&ss, &sec, scb, scb_len), 0);
    assert_int_equal(scram_client_init(&sc, "pw"), 0);
    assert_int_equal(scram_client_set_cbind(&sc, cflag, ccb, ccb_len), 0);
    assert_int_equal(scram_client_first(&sc, cf, sizeof(cf), &cl), 0);
    if (first_out) strcpy(first_out, cf);
    const char *mech = cflag == 'p' ? SCRAM_MECH_PLUS : SCRAM_MECH;
    int r = scram_server_first(&ss, mech, strlen(mech), cf, cl, sf, sizeof(sf), &sl);
    if (r < 0) return r;
    assert_int_equal(final_exact(&sc, sf, sl, fin, sizeof(fin), &fl), 0);
    r = scram_server_final(&ss, fin, fl, sfin, sizeof(sfin), &sfl);
    if (r == 0) {
        assert_int_equal(verify_exact(&sc, sfin, sfl), 0);
        assert_true(scram_client_bound(&sc) == (cflag == 'p'));
    }
    scram_server_clear(&ss);
    return r;
}

static void test_scram_plus_binds_to_the_certificate_hash(void **state)
{
    (void)state;
    unsigned char cert[32], other[32];
    char first[SCRAM_MAX_MSG];
    memset(cert, 0xab, sizeof(cert));
    memset(other, 0xcd, sizeof(other));
    /* the gs2 header names tls-server-end-point */
    assert_int_equal(exchange('p', cert, sizeof(cert), cert, sizeof(cert), first), 0);
    assert_memory_equal(first, "p=tls-server-end-point,,n=,r=", 29);
    /* a man in the middle with another certificate: the verifier sees it */
    assert_int_equal(exchange('p', other, sizeof(other), cert, sizeof(cert), NULL), -EPROTO);
}

static void test_scram_c_attribute_carries_gs2_header_and_hash(void **state)
{
    (void)state;
    scram_client sc;
    unsigned char cert[3] = {1, 2, 3};
    char out[SCRAM_MAX_MSG];
    size_t ol;
    assert_int_equal(scram_client_init_nonce(&sc, RFC_PASSWORD, RFC_NONCE), 0);
    assert_int_equal(scram_client_set_cbind(&sc, 'p', cert, sizeof(cert)), 0);
    assert_int_equal(scram_client_first(&sc, out, sizeof(out), &ol), 0);
    assert_string_equal(out, "p=tls-server-end-point,,n=,r=" RFC_NONCE);
    assert_int_equal(final_exact(&sc, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out,
                                 sizeof(out), &ol),
                     0);
    /* python3 -c 'import base64; print(base64.b64encode(b"p=tls-server-end-point,,\x01\x02\x03"))' */
    assert_memory_equal(out, "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCwsAQID,r=", 41);

    /* 'y': "y,," in both places */
    assert_int_equal(scram_client_init_nonce(&sc, RFC_PASSWORD, RFC_NONCE), 0);
    assert_int_equal(scram_client_set_cbind(&sc, 'y', NULL, 0), 0);
    assert_int_equal(scram_client_first(&sc, out, sizeof(out), &ol), 0);
    assert_string_equal(out, "y,,n=,r=" RFC_NONCE);
    assert_int_equal(final_exact(&sc, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out,
                                 sizeof(out), &ol),
                     0);
    assert_memory_equal(out, "c=eSws,r=", 9);

    /* bad calls: 'p' without data, data too long, after first */
    assert_int_equal(scram_client_init_nonce(&sc, RFC_PASSWORD, RFC_NONCE), 0);
    assert_int_equal(scram_client_set_cbind(&sc, 'p', NULL, 0), -EINVAL);
    unsigned char big[SCRAM_MAX_CBIND_LEN + 1] = {0};
    assert_int_equal(scram_client_set_cbind(&sc, 'p', big, sizeof(big)), -EINVAL);
    assert_int_equal(scram_client_set_cbind(&sc, 'x', NULL, 0), -EINVAL);
    assert_int_equal(scram_client_first(&sc, out, sizeof(out), &ol), 0);
    assert_int_equal(scram_client_set_cbind(&sc, 'n', NULL, 0), -EINVAL);
}

static void test_scram_y_flag_is_a_downgrade_when_plus_was_offered(void **state)
{
    (void)state;
    unsigned char cert[32];
    memset(cert, 7, sizeof(cert));
    /* the server offered -PLUS, the client was told it did not */
    assert_int_equal(exchange('y', NULL, 0, cert, sizeof(cert), NULL), -EPROTO);
    /* a server without -PLUS accepts 'y' and 'n' */
    assert_int_equal(exchange('y', NULL, 0, NULL, 0, NULL), 0);
    assert_int_equal(exchange('n', NULL, 0, NULL, 0, NULL), 0);
}

static void test_scram_iteration_count_above_the_bound_is_refused_unspent(void **state)
{
    (void)state;
    scram_client sc;
    char out[SCRAM_MAX_MSG];
    size_t ol;
    static const char hostile[] = "r=" RFC_SERVER_NONCE ",s=" RFC_SALT ",i=9999999";
    start_rfc(&sc);
    assert_int_equal(scram_client_set_max_iterations(&sc, 100000), 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(final_exact(&sc, hostile, strlen(hostile), out, sizeof(out), &ol), -ERANGE);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    /* refused before PBKDF2: 9,999,999 iterations would take seconds */
    assert_true((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 < 200);
    assert_int_equal(sc.server_iterations, 9999999);
    /* the exchange is dead afterwards */
    assert_int_equal(final_exact(&sc, hostile, strlen(hostile), out, sizeof(out), &ol), -EINVAL);

    /* at the bound: accepted (the RFC vector's 4096) */
    start_rfc(&sc);
    assert_int_equal(scram_client_set_max_iterations(&sc, 4096), 0);
    assert_int_equal(final_exact(&sc, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out,
                                 sizeof(out), &ol),
                     0);
    assert_string_equal(out, RFC_CLIENT_FINAL);
    /* one below: refused */
    start_rfc(&sc);
    assert_int_equal(scram_client_set_max_iterations(&sc, 4095), 0);
    assert_int_equal(final_exact(&sc, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out,
                                 sizeof(out), &ol),
                     -ERANGE);
    /* out of range settings */
    start_rfc(&sc);
    assert_int_equal(scram_client_set_max_iterations(&sc, 0), -EINVAL);
    assert_int_equal(scram_client_set_max_iterations(&sc, SCRAM_MAX_ITERATIONS + 1), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scram_plus_binds_to_the_certificate_hash),
        cmocka_unit_test(test_scram_c_attribute_carries_gs2_header_and_hash),
        cmocka_unit_test(test_scram_y_flag_is_a_downgrade_when_plus_was_offered),
        cmocka_unit_test(test_scram_iteration_count_above_the_bound_is_refused_unspent),
        cmocka_unit_test(test_md5_response_matches_independent_computation),
        cmocka_unit_test(test_md5_response_from_stored_hash_equals_from_password),
        cmocka_unit_test(test_scram_rfc7677_vector),
        cmocka_unit_test(test_scram_client_first_has_empty_user_by_default),
        cmocka_unit_test(test_scram_set_user_escapes_comma_and_equals),
        cmocka_unit_test(test_scram_random_nonce_is_32_base64_chars_and_fresh),
        cmocka_unit_test(test_scram_password_of_255_bytes_is_accepted),
        cmocka_unit_test(test_scram_rejects_server_nonce_not_extending_client_nonce),
        cmocka_unit_test(test_scram_rejects_nonprintable_server_nonce),
        cmocka_unit_test(test_scram_rejects_missing_salt),
        cmocka_unit_test(test_scram_rejects_bad_base64_salt),
        cmocka_unit_test(test_scram_rejects_iteration_count_zero),
        cmocka_unit_test(test_scram_rejects_iteration_count_too_large),
        cmocka_unit_test(test_scram_rejects_non_decimal_iteration_count),
        cmocka_unit_test(test_scram_rejects_every_truncation_before_iteration_digits),
        cmocka_unit_test(test_scram_rejects_embedded_nul),
        cmocka_unit_test(test_scram_rejects_extensions_and_trailing_garbage),
        cmocka_unit_test(test_scram_rejects_oversized_server_first),
        cmocka_unit_test(test_scram_rejects_too_small_output_buffer),
        cmocka_unit_test(test_scram_rejects_wrong_server_signature),
        cmocka_unit_test(test_scram_rejects_server_error),
        cmocka_unit_test(test_scram_rejects_malformed_server_final),
        cmocka_unit_test(test_scram_rejects_calls_out_of_order),
        cmocka_unit_test(test_scram_exchange_is_dead_after_a_failure),
        cmocka_unit_test(test_scram_rejects_password_over_255_bytes),
        cmocka_unit_test(test_scram_rejects_bad_client_nonce),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
