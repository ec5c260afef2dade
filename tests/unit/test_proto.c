/* Unit tests for proto: header framing, start-up packets, the bounded body
 * readers, every builder against hand-written wire bytes, the proto_out
 * overflow contract, and build-then-parse round trips.  Wire input is always
 * handed over in exact-size heap copies so ASan catches any read past avail. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto.h"

/* A string literal as (bytes, length) without the compiler's trailing NUL:
 * every NUL that belongs on the wire is written out in the literal. */
#define LIT(s) (const uint8_t *)(s), (sizeof(s) - 1)

#define assert_out_bytes(o, lit)                                                        \
    do {                                                                                \
        assert_false((o)->overflow);                                                    \
        assert_int_equal((o)->len, sizeof(lit) - 1);                                    \
        assert_memory_equal((o)->data, (lit), sizeof(lit) - 1);                         \
    } while (0)

static uint8_t *dup_exact(const uint8_t *p, size_t n)
{
    uint8_t *c = malloc(n ? n : 1);
    assert_non_null(c);
    if (n) memcpy(c, p, n);
    return c;
}

static int peek_exact(const uint8_t *p, size_t n, uint32_t max_len, uint8_t *type,
                      uint32_t *len)
{
    uint8_t *c = dup_exact(p, n);
    int r = proto_peek_header(c, n, max_len, type, len);
    free(c);
    return r;
}

/* Parses an exact-size copy; *keep receives the copy (the parsed strings
 * point into it) and must be freed by the caller. */
static int startup_exact(const uint8_t *p, size_t n, proto_startup *s, uint8_t **keep)
{
    *keep = dup_exact(p, n);
    return proto_read_startup(*keep, n, s);
}

static int startup_rc(const uint8_t *p, size_t n)
{
    proto_startup s;
    uint8_t *keep;
    int r = startup_exact(p, n, &s, &keep);
    free(keep);
    return r;
}

/* Writes a start-up packet whose length field says len_field (normally
 * 8 + blen): int32 length, int32 code, body.  Returns the bytes written. */
static size_t mk_startup_len(uint8_t *buf, uint32_t len_field, uint32_t code,
                             const uint8_t *body, size_t blen)
{
    proto_put_be32(buf, len_field);
    proto_put_be32(buf + 4, code);
    if (blen) memcpy(buf + 8, body, blen);
    return 8 + blen;
}

static size_t mk_startup(uint8_t *buf, uint32_t code, const uint8_t *body, size_t blen)
{
    return mk_startup_len(buf, (uint32_t)(8 + blen), code, body, blen);
}

static int error_rc(const uint8_t *p, size_t n, proto_error_fields *f)
{
    uint8_t *c = dup_exact(p, n);
    int r = proto_read_error(c, n, f);
    free(c);
    return r;
}

/* --- headers ------------------------------------------------------------ */

static void test_header_needs_more_for_0_to_4_bytes(void **state)
{
    (void)state;
    static const uint8_t q[] = {'Q', 0, 0, 0, 9, 'x', 'y', 'z', 0};
    for (size_t n = 0; n <= 4; n++) {
        uint8_t t = 0;
        uint32_t l = 0;
        assert_int_equal(peek_exact(q, n, 1u << 20, &t, &l), PROTO_NEED_MORE);
    }
}

static void test_header_reads_type_and_length(void **state)
{
    (void)state;
    static const uint8_t q[] = {'Q', 0, 0, 0, 9, 'x', 'y', 'z', 0};
    uint8_t t = 0;
    uint32_t l = 0;
    assert_int_equal(peek_exact(q, sizeof(q), 1u << 20, &t, &l), PROTO_OK);
    assert_int_equal(t, 'Q');
    assert_int_equal(l, 9);
}

static void test_header_ok_before_body_has_arrived(void **state)
{
    (void)state;
    /* The header alone is enough: the caller learns how much to wait for. */
    static const uint8_t d[] = {'D', 0, 0, 0x10, 0};
    uint8_t t = 0;
    uint32_t l = 0;
    assert_int_equal(peek_exact(d, sizeof(d), 1u << 20, &t, &l), PROTO_OK);
    assert_int_equal(t, 'D');
    assert_int_equal(l, 0x1000);
}

static void test_header_accepts_minimum_length_4(void **state)
{
    (void)state;
    static const uint8_t s[] = {'S', 0, 0, 0, 4};
    uint8_t t = 0;
    uint32_t l = 0;
    assert_int_equal(peek_exact(s, sizeof(s), 1u << 20, &t, &l), PROTO_OK);
    assert_int_equal(t, 'S');
    assert_int_equal(l, 4);
}

static void test_header_rejects_length_below_4(void **state)
{
    (void)state;
    for (uint8_t v = 0; v < 4; v++) {
        const uint8_t h[] = {'Q', 0, 0, 0, v};
        uint8_t t;
        uint32_t l;
        assert_int_equal(peek_exact(h, sizeof(h), 1u << 20, &t, &l), PROTO_E_BADLEN);
    }
}

static void test_header_rejects_length_above_max(void **state)
{
    (void)state;
    static const uint8_t h[] = {'Q', 0, 0, 0x01, 0x01}; /* 257 */
    uint8_t t;
    uint32_t l;
    assert_int_equal(peek_exact(h, sizeof(h), 256, &t, &l), PROTO_E_BADLEN);
}

static void test_header_accepts_length_equal_to_max(void **state)
{
    (void)state;
    static const uint8_t h[] = {'Q', 0, 0, 0x01, 0x00}; /* 256 */
    uint8_t t = 0;
    uint32_t l = 0;
    assert_int_equal(peek_exact(h, sizeof(h), 256, &t, &l), PROTO_OK);
    assert_int_equal(l, 256);
}

static void test_header_rejects_negative_length_even_with_huge_max(void **state)
{
    (void)state;
    /* The length is an Int32 on the wire: top bit set means negative, which
     * must not pass as a 2-4 GiB message even if the caller's max allows. */
    static const uint8_t min_neg[] = {'D', 0x80, 0, 0, 0};
    static const uint8_t minus_one[] = {'D', 0xff, 0xff, 0xff, 0xff};
    uint8_t t;
    uint32_t l;
    assert_int_equal(peek_exact(min_neg, 5, UINT32_MAX, &t, &l), PROTO_E_BADLEN);
    assert_int_equal(peek_exact(minus_one, 5, UINT32_MAX, &t, &l), PROTO_E_BADLEN);
    assert_int_equal(peek_exact(min_neg, 5, 1u << 20, &t, &l), PROTO_E_BADLEN);
}

static void test_header_accepts_int32_max_when_max_allows(void **state)
{
    (void)state;
    static const uint8_t h[] = {'D', 0x7f, 0xff, 0xff, 0xff};
    uint8_t t = 0;
    uint32_t l = 0;
    assert_int_equal(peek_exact(h, 5, UINT32_MAX, &t, &l), PROTO_OK);
    assert_int_equal(l, 0x7fffffffu);
}

/* --- start-up packets ---------------------------------------------------- */

static void test_startup_v3_reads_params(void **state)
{
    (void)state;
    uint8_t buf[128];
    size_t n = mk_startup(buf, PROTO_VERSION_3,
                          LIT("user\0alice\0database\0app\0application_name\0\0\0"));
    proto_startup s;
    uint8_t *keep;
    assert_int_equal(startup_exact(buf, n, &s, &keep), PROTO_OK);
    assert_int_equal(s.code, PROTO_VERSION_3);
    assert_int_equal(s.len, n);
    assert_int_equal(s.n_params, 3);
    assert_string_equal(s.names[0], "user");
    assert_string_equal(s.values[0], "alice");
    assert_string_equal(s.names[1], "database");
    assert_string_equal(s.values[1], "app");
    assert_string_equal(s.names[2], "application_name");
    assert_string_equal(s.values[2], "");
    assert_string_equal(proto_startup_get(&s, "database"), "app");
    assert_string_equal(proto_startup_get(&s, "application_name"), "");
    assert_null(proto_startup_get(&s, "options"));
    free(keep);
}

static void test_startup_v3_without_params(void **state)
{
    (void)state;
    uint8_t buf[16];
    size_t n = mk_startup(buf, PROTO_VERSION_3, LIT("\0"));
    proto_startup s;
    uint8_t *keep;
    assert_int_equal(startup_exact(buf, n, &s, &keep), PROTO_OK);
    assert_int_equal(s.n_params, 0);
    assert_int_equal(s.len, 9);
    free(keep);
}

static void test_startup_v3_minor_version_parses_params(void **state)
{
    (void)state;
    /* 3.2 has the 3.0 layout; the caller negotiates the minor version. */
    uint8_t buf[64];
    size_t n = mk_startup(buf, PROTO_VERSION_3 + 2, LIT("user\0bob\0\0"));
    proto_startup s;
    uint8_t *keep;
    assert_int_equal(startup_exact(buf, n, &s, &keep), PROTO_OK);
    assert_int_equal(s.code, PROTO_VERSION_3 + 2);
    assert_int_equal(s.n_params, 1);
    assert_string_equal(proto_startup_get(&s, "user"), "bob");
    free(keep);
}

static void test_startup_ignores_bytes_after_packet(void **state)
{
    (void)state;
    uint8_t buf[64];
    size_t n = mk_startup(buf, PROTO_VERSION_3, LIT("user\0bob\0\0"));
    memcpy(buf + n, "Q\0\0\0\x05" "x", 6);
    proto_startup s;
    uint8_t *keep;
    assert_int_equal(startup_exact(buf, n + 6, &s, &keep), PROTO_OK);
    assert_int_equal(s.len, n);
    assert_int_equal(s.n_params, 1);
    free(keep);
}

static void test_startup_ssl_request(void **state)
{
    (void)state;
    static const uint8_t ssl[] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
    proto_startup s;
    uint8_t *keep;
    assert_int_equal(startup_exact(ssl, sizeof(ssl), &s, &keep), PROTO_OK);
    assert_int_equal(s.code, PROTO_SSL_CODE);
    assert_int_equal(s.len, 8);
    assert_int_equal(s.n_params, 0);
    free(keep);
}

static void test_startup_ssl_request_followed_by_tls_hello(void **state)
{
    (void)state;
    /* A client may pipeline its TLS ClientHello right after SSLRequest. */
    static const uint8_t b[] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f, 0x16, 0x03, 0x01};
    proto_startup s;
    uint8_t *keep;
    assert_int_equal(startup_exact(b, sizeof(b), &s, &keep), PROTO_OK);
    assert_int_equal(s.code, PROTO_SSL_CODE);
    assert_int_equal(s.len, 8);
    free(keep);
}

static void test_startup_ssl_request_with_wrong_length(void **state)
{
    (void)state;
    uint8_t buf[16];
    size_t n = mk_startup(buf, PROTO_SSL_CODE, LIT("\0\0\0\0"));
    assert_int_equal(startup_rc(buf, n), PROTO_E_BADLEN);
}

static void test_startup_gssenc_request(void **state)
{
    (void)state;
    static const uint8_t gss[] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30};
    proto_startup s;
    uint8_t *keep;
    assert_int_equal(startup_exact(gss, sizeof(gss), &s, &keep), PROTO_OK);
    assert_int_equal(s.code, PROTO_GSSENC_CODE);
    assert_int_equal(s.len, 8);
    free(keep);
}

static void test_startup_gssenc_request_with_wrong_length(void **state)
{
    (void)state;
    uint8_t buf[16];
    size_t n = mk_startup(buf, PROTO_GSSENC_CODE, LIT("\0\0\0\0"));
    assert_int_equal(startup_rc(buf, n), PROTO_E_BADLEN);
}

static void test_startup_cancel_request(void **state)
{
    (void)state;
    static const uint8_t c[] = {0,    0,    0,    16,   0x04, 0xd2, 0x16, 0x2e,
                                0x00, 0x00, 0x30, 0x39, 0xde, 0xad, 0xbe, 0xef};
    proto_startup s;
    uint8_t *keep;
    assert_int_equal(startup_exact(c, sizeof(c), &s, &keep), PROTO_OK);
    assert_int_equal(s.code, PROTO_CANCEL_CODE);
    assert_int_equal(s.len, 16);
    assert_int_equal(s.cancel_pid, 12345);
    assert_int_equal(s.cancel_key, 0xdeadbeefu);
    free(keep);
}

static void test_startup_cancel_request_too_short(void **state)
{
    (void)state;
    uint8_t buf[16];
    size_t n = mk_startup(buf, PROTO_CANCEL_CODE, LIT("\0\0\0\x01"));
    assert_int_equal(startup_rc(buf, n), PROTO_E_BADLEN);
}

static void test_startup_cancel_request_too_long(void **state)
{
    (void)state;
    uint8_t buf[32];
    size_t n = mk_startup(buf, PROTO_CANCEL_CODE, LIT("\0\0\0\x01" "\0\0\0\x02" "\0\0\0\x03"));
    assert_int_equal(startup_rc(buf, n), PROTO_E_BADLEN);
}

static void test_startup_rejects_missing_final_nul(void **state)
{
    (void)state;
    uint8_t buf[64];
    size_t n = mk_startup(buf, PROTO_VERSION_3, LIT("user\0alice\0"));
    assert_int_equal(startup_rc(buf, n), PROTO_E_FORMAT);
}

static void test_startup_rejects_v3_with_no_body(void **state)
{
    (void)state;
    uint8_t buf[8];
    size_t n = mk_startup(buf, PROTO_VERSION_3, NULL, 0);
    assert_int_equal(startup_rc(buf, n), PROTO_E_FORMAT);
}

static void test_startup_does_not_read_terminator_past_len(void **state)
{
    (void)state;
    /* The terminator the packet lacks is sitting right after it in the
     * buffer; it belongs to the next bytes, not to this packet. */
    uint8_t buf[64];
    size_t n = mk_startup(buf, PROTO_VERSION_3, LIT("user\0alice\0"));
    buf[n] = 0;
    assert_int_equal(startup_rc(buf, n + 1), PROTO_E_FORMAT);
}

static void test_startup_rejects_name_without_value(void **state)
{
    (void)state;
    uint8_t buf[64];
    size_t n = mk_startup(buf, PROTO_VERSION_3, LIT("user\0"));
    assert_int_equal(startup_rc(buf, n), PROTO_E_FORMAT);
    n = mk_startup(buf, PROTO_VERSION_3, LIT("user\0alice\0database\0"));
    assert_int_equal(startup_rc(buf, n), PROTO_E_FORMAT);
    /* "user", value "", and then no terminator */
    n = mk_startup(buf, PROTO_VERSION_3, LIT("user\0\0"));
    assert_int_equal(startup_rc(buf, n), PROTO_E_FORMAT);
}

static void test_startup_rejects_unterminated_name(void **state)
{
    (void)state;
    uint8_t buf[64];
    size_t n = mk_startup(buf, PROTO_VERSION_3, LIT("user"));
    assert_int_equal(startup_rc(buf, n), PROTO_E_FORMAT);
}

static void test_startup_rejects_bytes_after_terminator(void **state)
{
    (void)state;
    uint8_t buf[64];
    size_t n = mk_startup(buf, PROTO_VERSION_3, LIT("user\0bob\0\0junk"));
    assert_int_equal(startup_rc(buf, n), PROTO_E_FORMAT);
}

static void test_startup_rejects_length_below_8(void **state)
{
    (void)state;
    for (uint32_t l = 0; l < 8; l++) {
        uint8_t buf[8];
        size_t n = mk_startup_len(buf, l, PROTO_VERSION_3, NULL, 0);
        assert_int_equal(startup_rc(buf, n), PROTO_E_BADLEN);
    }
}

/* A v3 packet of exactly total bytes: "user\0" + 'x'*k + "\0\0". */
static uint8_t *mk_big_startup(size_t total)
{
    uint8_t *buf = malloc(total);
    assert_non_null(buf);
    proto_put_be32(buf, (uint32_t)total);
    proto_put_be32(buf + 4, PROTO_VERSION_3);
    memcpy(buf + 8, "user", 5);
    size_t k = total - 8 - 5 - 2;
    memset(buf + 13, 'x', k);
    buf[13 + k] = 0;
    buf[14 + k] = 0;
    return buf;
}

static void test_startup_accepts_exactly_max_bytes(void **state)
{
    (void)state;
    uint8_t *buf = mk_big_startup(PROTO_MAX_STARTUP);
    proto_startup s;
    assert_int_equal(proto_read_startup(buf, PROTO_MAX_STARTUP, &s), PROTO_OK);
    assert_int_equal(s.n_params, 1);
    assert_int_equal(strlen(s.values[0]), PROTO_MAX_STARTUP - 15);
    free(buf);
}

static void test_startup_rejects_over_max_bytes(void **state)
{
    (void)state;
    uint8_t *buf = mk_big_startup(PROTO_MAX_STARTUP + 1);
    assert_int_equal(startup_rc(buf, PROTO_MAX_STARTUP + 1), PROTO_E_BADLEN);
    /* Rejected as soon as the length is seen, not after waiting for 10 kB. */
    assert_int_equal(startup_rc(buf, 8), PROTO_E_BADLEN);
    free(buf);
    static const uint8_t huge[] = {0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0};
    assert_int_equal(startup_rc(huge, sizeof(huge)), PROTO_E_BADLEN);
    static const uint8_t neg[] = {0xff, 0xff, 0xff, 0xff, 0, 3, 0, 0};
    assert_int_equal(startup_rc(neg, sizeof(neg)), PROTO_E_BADLEN);
}

/* A v3 body of n params "p<i>\0v\0" plus terminator; returns the length. */
static size_t mk_many_params(uint8_t *buf, int n)
{
    size_t pos = 8;
    for (int i = 0; i < n; i++) {
        int w = sprintf((char *)buf + pos, "p%d", i);
        pos += (size_t)w + 1;
        buf[pos++] = 'v';
        buf[pos++] = 0;
    }
    buf[pos++] = 0;
    proto_put_be32(buf, (uint32_t)pos);
    proto_put_be32(buf + 4, PROTO_VERSION_3);
    return pos;
}

static void test_startup_accepts_64_params(void **state)
{
    (void)state;
    uint8_t buf[1024];
    size_t n = mk_many_params(buf, PROTO_MAX_STARTUP_PARAMS);
    proto_startup s;
    uint8_t *keep;
    assert_int_equal(startup_exact(buf, n, &s, &keep), PROTO_OK);
    assert_int_equal(s.n_params, PROTO_MAX_STARTUP_PARAMS);
    assert_string_equal(s.names[63], "p63");
    assert_string_equal(s.values[63], "v");
    free(keep);
}

static void test_startup_rejects_more_than_64_params(void **state)
{
    (void)state;
    uint8_t buf[1024];
    size_t n = mk_many_params(buf, PROTO_MAX_STARTUP_PARAMS + 1);
    assert_int_equal(startup_rc(buf, n), PROTO_E_FORMAT);
}

static void test_startup_truncated_needs_more(void **state)
{
    (void)state;
    uint8_t buf[64];
    size_t n = mk_startup(buf, PROTO_VERSION_3, LIT("user\0alice\0database\0app\0\0"));
    for (size_t k = 0; k < n; k++) assert_int_equal(startup_rc(buf, k), PROTO_NEED_MORE);
    static const uint8_t c[] = {0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2};
    for (size_t k = 0; k < sizeof(c); k++) assert_int_equal(startup_rc(c, k), PROTO_NEED_MORE);
}

static void test_startup_bad_length_is_refused_from_four_bytes(void **state)
{
    (void)state;
    static const uint8_t tiny[] = {0, 0, 0, 7};
    static const uint8_t huge[] = {0x7f, 0xff, 0xff, 0xff};
    static const uint8_t negative[] = {0xff, 0xff, 0xff, 0xf8};
    assert_int_equal(startup_rc(tiny, 4), PROTO_E_BADLEN);
    assert_int_equal(startup_rc(huge, 4), PROTO_E_BADLEN);
    assert_int_equal(startup_rc(negative, 4), PROTO_E_BADLEN);
    assert_int_equal(startup_rc(tiny, 3), PROTO_NEED_MORE);
}

static void test_startup_unknown_version_is_ok_for_caller_to_reject(void **state)
{
    (void)state;
    static const uint32_t codes[] = {
        2u << 16,                 /* protocol 2.0 */
        4u << 16,                 /* 4.0 */
        (1234u << 16) | 5681u,    /* a future special request (5678-5680 are taken) */
        0,
    };
    for (size_t i = 0; i < PGS_ARRAY_LEN(codes); i++) {
        uint8_t buf[64];
        size_t n = mk_startup(buf, codes[i], LIT("whatever\0"));
        proto_startup s;
        uint8_t *keep;
        assert_int_equal(startup_exact(buf, n, &s, &keep), PROTO_OK);
        assert_int_equal(s.code, codes[i]);
        assert_int_equal(s.len, n);
        assert_int_equal(s.n_params, 0);
        free(keep);
    }
}

/* --- body readers -------------------------------------------------------- */

static void test_get_string_reads_and_advances(void **state)
{
    (void)state;
    uint8_t *b = dup_exact(LIT("ab\0\0cd\0"));
    size_t pos = 0;
    assert_string_equal(proto_get_string(b, 7, &pos), "ab");
    assert_int_equal(pos, 3);
    assert_string_equal(proto_get_string(b, 7, &pos), "");
    assert_int_equal(pos, 4);
    assert_string_equal(proto_get_string(b, 7, &pos), "cd");
    assert_int_equal(pos, 7);
    assert_null(proto_get_string(b, 7, &pos));
    assert_int_equal(pos, 7);
    free(b);
}

static void test_get_string_without_nul_returns_null(void **state)
{
    (void)state;
    uint8_t *b = dup_exact(LIT("abc"));
    size_t pos = 0;
    assert_null(proto_get_string(b, 3, &pos));
    assert_int_equal(pos, 0);
    pos = 1;
    assert_null(proto_get_string(b, 3, &pos));
    assert_int_equal(pos, 1);
    free(b);
}

static void test_get_string_ignores_nul_past_len(void **state)
{
    (void)state;
    uint8_t *b = dup_exact(LIT("abc\0"));
    size_t pos = 0;
    assert_null(proto_get_string(b, 3, &pos));
    assert_int_equal(pos, 0);
    free(b);
}

static void test_get_string_pos_past_len_returns_null(void **state)
{
    (void)state;
    uint8_t *b = dup_exact(LIT("a\0"));
    size_t pos = 5;
    assert_null(proto_get_string(b, 2, &pos));
    assert_int_equal(pos, 5);
    pos = SIZE_MAX;
    assert_null(proto_get_string(b, 2, &pos));
    assert_int_equal(pos, SIZE_MAX);
    free(b);
}

static void test_get_int32_reads_big_endian_signed(void **state)
{
    (void)state;
    uint8_t *b = dup_exact(LIT("\0\0\x01\0" "\xff\xff\xff\xfe"));
    size_t pos = 0;
    int32_t v = 0;
    assert_int_equal(proto_get_int32(b, 8, &pos, &v), 0);
    assert_int_equal(v, 256);
    assert_int_equal(pos, 4);
    assert_int_equal(proto_get_int32(b, 8, &pos, &v), 0);
    assert_int_equal(v, -2);
    assert_int_equal(pos, 8);
    assert_int_equal(proto_get_int32(b, 8, &pos, &v), PROTO_E_FORMAT);
    assert_int_equal(pos, 8);
    free(b);
}

static void test_get_int32_rejects_short_and_out_of_range(void **state)
{
    (void)state;
    uint8_t *b = dup_exact(LIT("\x01\x02\x03"));
    size_t pos = 0;
    int32_t v = 0;
    assert_int_equal(proto_get_int32(b, 3, &pos, &v), PROTO_E_FORMAT);
    assert_int_equal(pos, 0);
    pos = 4;
    assert_int_equal(proto_get_int32(b, 3, &pos, &v), PROTO_E_FORMAT);
    assert_int_equal(pos, 4);
    pos = SIZE_MAX - 1; /* pos + 4 would wrap */
    assert_int_equal(proto_get_int32(b, 3, &pos, &v), PROTO_E_FORMAT);
    assert_int_equal(pos, SIZE_MAX - 1);
    free(b);
}

static void test_get_int16_reads_big_endian_signed(void **state)
{
    (void)state;
    uint8_t *b = dup_exact(LIT("\0\x05" "\xff\xff" "\x80\0"));
    size_t pos = 0;
    int16_t v = 0;
    assert_int_equal(proto_get_int16(b, 6, &pos, &v), 0);
    assert_int_equal(v, 5);
    assert_int_equal(proto_get_int16(b, 6, &pos, &v), 0);
    assert_int_equal(v, -1);
    assert_int_equal(proto_get_int16(b, 6, &pos, &v), 0);
    assert_int_equal(v, -32768);
    assert_int_equal(pos, 6);
    assert_int_equal(proto_get_int16(b, 6, &pos, &v), PROTO_E_FORMAT);
    assert_int_equal(pos, 6);
    free(b);
}

static void test_get_int16_rejects_short_and_out_of_range(void **state)
{
    (void)state;
    uint8_t *b = dup_exact(LIT("\x01"));
    size_t pos = 0;
    int16_t v = 0;
    assert_int_equal(proto_get_int16(b, 1, &pos, &v), PROTO_E_FORMAT);
    assert_int_equal(pos, 0);
    pos = 2;
    assert_int_equal(proto_get_int16(b, 1, &pos, &v), PROTO_E_FORMAT);
    pos = SIZE_MAX;
    assert_int_equal(proto_get_int16(b, 1, &pos, &v), PROTO_E_FORMAT);
    assert_int_equal(pos, SIZE_MAX);
    free(b);
}

/* What PostgreSQL 16 sends for SELECT * FROM nope (body only). */
#define REAL_ERROR_BODY                                                                 \
    "SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0P15\0"               \
    "Fparse_relation.c\0L1392\0RparserOpenTable\0\0"

/* Reads an exact-size copy of a literal body; keep holds the copy that the
 * returned fields point into. */
#define READ_ERROR_LIT(lit, f, keep) \
    ((keep) = dup_exact(LIT(lit)), proto_read_error((keep), sizeof(lit) - 1, (f)))

static void test_read_error_real_error_response(void **state)
{
    (void)state;
    uint8_t *keep;
    proto_error_fields f;
    assert_int_equal(READ_ERROR_LIT(REAL_ERROR_BODY, &f, keep), 0);
    assert_string_equal(f.severity, "ERROR");
    assert_string_equal(f.sqlstate, "42P01");
    assert_string_equal(f.message, "relation \"nope\" does not exist");
    free(keep);
}

static void test_read_error_prefers_v_over_localized_s(void **state)
{
    (void)state;
    uint8_t *keep;
    proto_error_fields f;
    assert_int_equal(READ_ERROR_LIT("SFEHLER\0VERROR\0C22012\0MDivision durch Null\0\0", &f, keep),
                     0);
    assert_string_equal(f.severity, "ERROR");
    assert_string_equal(f.sqlstate, "22012");
    free(keep);
    /* 'V' first, localized 'S' after: 'V' still wins */
    assert_int_equal(READ_ERROR_LIT("VFATAL\0SSCHWERWIEGEND\0C57P01\0Mbye\0\0", &f, keep), 0);
    assert_string_equal(f.severity, "FATAL");
    free(keep);
}

static void test_read_error_uses_s_when_no_v(void **state)
{
    (void)state;
    /* Servers before 9.6 send no 'V'. */
    uint8_t *keep;
    proto_error_fields f;
    assert_int_equal(READ_ERROR_LIT("SWARNING\0C01000\0Mold server\0\0", &f, keep), 0);
    assert_string_equal(f.severity, "WARNING");
    assert_string_equal(f.sqlstate, "01000");
    assert_string_equal(f.message, "old server");
    free(keep);
}

static void test_read_error_missing_fields_are_null(void **state)
{
    (void)state;
    uint8_t *keep;
    proto_error_fields f;
    assert_int_equal(READ_ERROR_LIT("Donly detail\0\0", &f, keep), 0);
    assert_null(f.severity);
    assert_null(f.sqlstate);
    assert_null(f.message);
    free(keep);
}

static void test_read_error_truncated_is_format_error(void **state)
{
    (void)state;
    static const uint8_t body[] = REAL_ERROR_BODY;
    const size_t n = sizeof(body) - 1;
    for (size_t k = 0; k < n; k++) {
        proto_error_fields f;
        assert_int_equal(error_rc(body, k, &f), PROTO_E_FORMAT);
    }
}

/* --- builders, byte for byte --------------------------------------------- */

#define OUT(name, size)                                                                 \
    uint8_t name##_buf[size];                                                           \
    proto_out name;                                                                     \
    proto_out_init(&name, name##_buf, sizeof(name##_buf))

static void test_build_error_response(void **state)
{
    (void)state;
    OUT(o, 128);
    proto_error(&o, "FATAL", "53300", "too many", "raise it");
    assert_out_bytes(&o, "E\0\0\0\x2e"
                         "SFATAL\0VFATAL\0C53300\0Mtoo many\0Hraise it\0\0");
}

static void test_build_error_response_skips_null_fields(void **state)
{
    (void)state;
    OUT(o, 128);
    proto_error(&o, "ERROR", NULL, "m", NULL);
    assert_out_bytes(&o, "E\0\0\0\x16"
                         "SERROR\0VERROR\0Mm\0\0");
}

static void test_build_notice_response(void **state)
{
    (void)state;
    OUT(o, 128);
    proto_notice(&o, "WARNING", "01000", "careful");
    assert_out_bytes(&o, "N\0\0\0\x27"
                         "SWARNING\0VWARNING\0C01000\0Mcareful\0\0");
}

static void test_build_ready_for_query(void **state)
{
    (void)state;
    OUT(o, 16);
    proto_ready_for_query(&o, 'T');
    assert_out_bytes(&o, "Z\0\0\0\x05"
                         "T");
}

static void test_build_parameter_status(void **state)
{
    (void)state;
    OUT(o, 64);
    proto_parameter_status(&o, "client_encoding", "UTF8");
    assert_out_bytes(&o, "S\0\0\0\x19"
                         "client_encoding\0UTF8\0");
}

static void test_build_backend_key_data(void **state)
{
    (void)state;
    OUT(o, 32);
    proto_backend_key(&o, 0x01020304u, 0xdeadbeefu);
    assert_out_bytes(&o, "K\0\0\0\x0c"
                         "\x01\x02\x03\x04\xde\xad\xbe\xef");
}

static void test_build_command_complete(void **state)
{
    (void)state;
    OUT(o, 32);
    proto_command_complete(&o, "SELECT 1");
    assert_out_bytes(&o, "C\0\0\0\x0d"
                         "SELECT 1\0");
}

static void test_build_row_description_two_text_columns(void **state)
{
    (void)state;
    OUT(o, 128);
    const char *const names[] = {"a", "bc"};
    proto_row_description_text(&o, 2, names);
    /* per column: name, table oid 0, attnum 0, type oid 25, typlen -1,
     * typmod -1, format 0 (text) */
    assert_out_bytes(&o, "T\0\0\0\x2f"
                         "\0\x02"
                         "a\0" "\0\0\0\0" "\0\0" "\0\0\0\x19" "\xff\xff" "\xff\xff\xff\xff" "\0\0"
                         "bc\0" "\0\0\0\0" "\0\0" "\0\0\0\x19" "\xff\xff" "\xff\xff\xff\xff" "\0\0");
}

static void test_build_data_row_with_null(void **state)
{
    (void)state;
    OUT(o, 64);
    const char *const vals[] = {"1", NULL, ""};
    proto_data_row_text(&o, 3, vals);
    assert_out_bytes(&o, "D\0\0\0\x13"
                         "\0\x03"
                         "\0\0\0\x01" "1"
                         "\xff\xff\xff\xff"
                         "\0\0\0\0");
}

static void test_build_query(void **state)
{
    (void)state;
    OUT(o, 32);
    proto_query(&o, "SELECT 1");
    assert_out_bytes(&o, "Q\0\0\0\x0d"
                         "SELECT 1\0");
}

static void test_build_startup_message(void **state)
{
    (void)state;
    OUT(o, 64);
    const char *const names[] = {"user", "database"};
    const char *const vals[] = {"alice", "app"};
    proto_startup_message(&o, 2, names, vals);
    assert_out_bytes(&o, "\0\0\0\x21"
                         "\0\x03\0\0"
                         "user\0alice\0database\0app\0\0");
}

static void test_build_cancel_request(void **state)
{
    (void)state;
    OUT(o, 32);
    proto_cancel_request(&o, 0x01020304u, 0x0a0b0c0du);
    assert_out_bytes(&o, "\0\0\0\x10"
                         "\x04\xd2\x16\x2e"
                         "\x01\x02\x03\x04"
                         "\x0a\x0b\x0c\x0d");
}

static void test_build_sasl_initial_response(void **state)
{
    (void)state;
    OUT(o, 64);
    proto_sasl_initial(&o, "SCRAM-SHA-256", "n,,n=,r=abc", 11);
    assert_out_bytes(&o, "p\0\0\0\x21"
                         "SCRAM-SHA-256\0"
                         "\0\0\0\x0b"
                         "n,,n=,r=abc");
}

static void test_build_sasl_response(void **state)
{
    (void)state;
    OUT(o, 32);
    proto_sasl_response(&o, "c=biws", 6);
    assert_out_bytes(&o, "p\0\0\0\x0a"
                         "c=biws");
}

static void test_build_password(void **state)
{
    (void)state;
    OUT(o, 32);
    proto_password(&o, "secret");
    assert_out_bytes(&o, "p\0\0\0\x0b"
                         "secret\0");
}

static void test_build_auth_ok(void **state)
{
    (void)state;
    OUT(o, 32);
    proto_auth_request(&o, 0, NULL, 0);
    assert_out_bytes(&o, "R\0\0\0\x08"
                         "\0\0\0\0");
}

static void test_build_auth_sasl(void **state)
{
    (void)state;
    OUT(o, 64);
    proto_auth_request(&o, 10, "SCRAM-SHA-256\0", 15);
    assert_out_bytes(&o, "R\0\0\0\x17"
                         "\0\0\0\x0a"
                         "SCRAM-SHA-256\0\0");
}

static void test_build_empty_messages(void **state)
{
    (void)state;
    OUT(o, 64);
    proto_empty_query(&o);
    proto_terminate(&o);
    proto_sync(&o);
    proto_parse_complete(&o);
    proto_close_complete(&o);
    assert_out_bytes(&o, "I\0\0\0\x04"
                         "X\0\0\0\x04"
                         "S\0\0\0\x04"
                         "1\0\0\0\x04"
                         "3\0\0\0\x04");
}

static void test_build_appends_after_existing_bytes(void **state)
{
    (void)state;
    /* proto_end must patch the length of its own message, not offset 0. */
    OUT(o, 64);
    proto_ready_for_query(&o, 'I');
    proto_query(&o, "SELECT 1");
    proto_cancel_request(&o, 1, 2);
    assert_out_bytes(&o, "Z\0\0\0\x05"
                         "I"
                         "Q\0\0\0\x0d"
                         "SELECT 1\0"
                         "\0\0\0\x10"
                         "\x04\xd2\x16\x2e"
                         "\0\0\0\x01"
                         "\0\0\0\x02");
}

/* --- overflow ------------------------------------------------------------ */

static void b_error(proto_out *o) { proto_error(o, "FATAL", "53300", "too many", "raise it"); }
static void b_notice(proto_out *o) { proto_notice(o, "WARNING", "01000", "careful"); }
static void b_rfq(proto_out *o) { proto_ready_for_query(o, 'I'); }
static void b_auth(proto_out *o) { proto_auth_request(o, 10, "SCRAM-SHA-256\0", 15); }
static void b_param(proto_out *o) { proto_parameter_status(o, "TimeZone", "UTC"); }
static void b_key(proto_out *o) { proto_backend_key(o, 1, 2); }
static void b_cc(proto_out *o) { proto_command_complete(o, "INSERT 0 1"); }
static void b_empty(proto_out *o) { proto_empty_query(o); }
static void b_terminate(proto_out *o) { proto_terminate(o); }
static void b_sync(proto_out *o) { proto_sync(o); }
static void b_pc(proto_out *o) { proto_parse_complete(o); }
static void b_clc(proto_out *o) { proto_close_complete(o); }
static void b_rowdesc(proto_out *o)
{
    const char *const names[] = {"a", "bc"};
    proto_row_description_text(o, 2, names);
}
static void b_datarow(proto_out *o)
{
    const char *const vals[] = {"1", NULL, "xyz"};
    proto_data_row_text(o, 3, vals);
}
static void b_query(proto_out *o) { proto_query(o, "SELECT 1"); }
static void b_password(proto_out *o) { proto_password(o, "secret"); }
static void b_sasl_init(proto_out *o) { proto_sasl_initial(o, "SCRAM-SHA-256", "n,,n=,r=abc", 11); }
static void b_sasl_resp(proto_out *o) { proto_sasl_response(o, "c=biws", 6); }
static void b_cancel(proto_out *o) { proto_cancel_request(o, 1, 2); }
static void b_startup(proto_out *o)
{
    const char *const names[] = {"user", "database"};
    const char *const vals[] = {"alice", "app"};
    proto_startup_message(o, 2, names, vals);
}

static const struct {
    const char *name;
    void (*build)(proto_out *);
    size_t hdr; /* bytes up to and including the length field */
} builders[] = {
    {"error", b_error, 5},         {"notice", b_notice, 5},     {"rfq", b_rfq, 5},
    {"auth", b_auth, 5},           {"param", b_param, 5},       {"key", b_key, 5},
    {"cc", b_cc, 5},               {"empty", b_empty, 5},       {"terminate", b_terminate, 5},
    {"sync", b_sync, 5},           {"pc", b_pc, 5},             {"clc", b_clc, 5},
    {"rowdesc", b_rowdesc, 5},     {"datarow", b_datarow, 5},   {"query", b_query, 5},
    {"password", b_password, 5},   {"sasl_init", b_sasl_init, 5},
    {"sasl_resp", b_sasl_resp, 5}, {"cancel", b_cancel, 4},     {"startup", b_startup, 4},
};

#define GUARD 32

static void test_builders_never_write_past_cap(void **state)
{
    (void)state;
    for (size_t i = 0; i < PGS_ARRAY_LEN(builders); i++) {
        uint8_t full_buf[256];
        proto_out full;
        proto_out_init(&full, full_buf, sizeof(full_buf));
        builders[i].build(&full);
        assert_false(full.overflow);
        assert_true(full.len >= builders[i].hdr);

        for (size_t cap = 0; cap <= full.len; cap++) {
            uint8_t buf[256 + GUARD];
            memset(buf, 0xAA, sizeof(buf));
            proto_out o;
            proto_out_init(&o, buf, cap);
            builders[i].build(&o);
            for (size_t j = cap; j < cap + GUARD; j++) {
                if (buf[j] != 0xAA)
                    fail_msg("%s: cap %zu: byte %zu written past cap", builders[i].name, cap, j);
            }
            assert_true(o.len <= cap);
            if (cap < full.len) {
                if (!o.overflow) fail_msg("%s: cap %zu: no overflow", builders[i].name, cap);
                /* proto_end must leave the length unpatched on overflow */
                if (cap >= builders[i].hdr) {
                    static const uint8_t zero[4];
                    assert_memory_equal(buf + builders[i].hdr - 4, zero, 4);
                }
            } else {
                assert_false(o.overflow);
                assert_int_equal(o.len, full.len);
                assert_memory_equal(buf, full_buf, full.len);
            }
        }
    }
}

static void test_builders_overflow_with_zero_capacity_null_data(void **state)
{
    (void)state;
    for (size_t i = 0; i < PGS_ARRAY_LEN(builders); i++) {
        proto_out o;
        proto_out_init(&o, NULL, 0);
        builders[i].build(&o);
        assert_true(o.overflow);
        assert_int_equal(o.len, 0);
    }
}

static void test_end_does_nothing_on_overflow(void **state)
{
    (void)state;
    uint8_t buf[5 + GUARD];
    memset(buf, 0xAA, sizeof(buf));
    proto_out o;
    proto_out_init(&o, buf, 5);
    size_t st = proto_begin(&o, 'Q');
    assert_int_equal(st, 1);
    assert_false(o.overflow);
    proto_put_string(&o, "SELECT 1");
    assert_true(o.overflow);
    proto_end(&o, st);
    assert_int_equal(o.len, 5);
    assert_memory_equal(buf, "Q\0\0\0\0", 5);
    assert_int_equal(buf[5], 0xAA);
}

static void test_overflow_is_sticky(void **state)
{
    (void)state;
    uint8_t buf[8];
    memset(buf, 0xAA, sizeof(buf));
    proto_out o;
    proto_out_init(&o, buf, 3);
    proto_put_int32(&o, 7);
    assert_true(o.overflow);
    assert_int_equal(o.len, 0);
    /* a byte would fit, but a message with a hole in it is worse than none */
    proto_put_byte(&o, 'x');
    proto_put_bytes(&o, "", 0);
    assert_true(o.overflow);
    assert_int_equal(o.len, 0);
    assert_int_equal(buf[0], 0xAA);
    proto_out_init(&o, buf, 3);
    assert_false(o.overflow);
    proto_put_byte(&o, 'x');
    assert_int_equal(o.len, 1);
}

/* --- round trips --------------------------------------------------------- */

static void test_startup_message_round_trip(void **state)
{
    (void)state;
    const char *const names[] = {"user", "database", "application_name", "options"};
    const char *const vals[] = {"web", "app", "", "-c search_path=s1,public"};
    OUT(o, 256);
    proto_startup_message(&o, 4, names, vals);
    assert_false(o.overflow);
    proto_startup s;
    uint8_t *keep;
    assert_int_equal(startup_exact(o.data, o.len, &s, &keep), PROTO_OK);
    assert_int_equal(s.code, PROTO_VERSION_3);
    assert_int_equal(s.len, o.len);
    assert_int_equal(s.n_params, 4);
    for (int i = 0; i < 4; i++) {
        assert_string_equal(s.names[i], names[i]);
        assert_string_equal(s.values[i], vals[i]);
        assert_string_equal(proto_startup_get(&s, names[i]), vals[i]);
    }
    free(keep);
}

static void test_cancel_request_round_trip(void **state)
{
    (void)state;
    OUT(o, 32);
    proto_cancel_request(&o, 0x80000001u, 0xfffffffeu);
    proto_startup s;
    uint8_t *keep;
    assert_int_equal(startup_exact(o.data, o.len, &s, &keep), PROTO_OK);
    assert_int_equal(s.code, PROTO_CANCEL_CODE);
    assert_int_equal(s.cancel_pid, 0x80000001u);
    assert_int_equal(s.cancel_key, 0xfffffffeu);
    free(keep);
}

static void test_error_response_round_trip(void **state)
{
    (void)state;
    OUT(o, 256);
    proto_error(&o, "FATAL", "53300", "pool for db=app user=web is full", "raise DB_POOL_SIZE");
    uint8_t t = 0;
    uint32_t l = 0;
    assert_int_equal(peek_exact(o.data, o.len, 1u << 20, &t, &l), PROTO_OK);
    assert_int_equal(t, 'E');
    assert_int_equal(1 + (size_t)l, o.len);
    uint8_t *body = dup_exact(o.data + 5, l - 4);
    proto_error_fields f;
    assert_int_equal(proto_read_error(body, l - 4, &f), 0);
    assert_string_equal(f.severity, "FATAL");
    assert_string_equal(f.sqlstate, "53300");
    assert_string_equal(f.message, "pool for db=app user=web is full");
    free(body);
}

/* --- type predicates ----------------------------------------------------- */

static void test_frontend_types_are_exactly_the_v3_set(void **state)
{
    (void)state;
    static const char fe[] = "BCdcfDEHFPpQSX";
    for (int t = 0; t < 256; t++) {
        bool want = t != 0 && memchr(fe, t, sizeof(fe) - 1) != NULL;
        if (proto_is_frontend_type((uint8_t)t) != want)
            fail_msg("frontend type 0x%02x ('%c'): got %d", t, t >= 32 && t < 127 ? t : '?',
                     !want);
    }
}

static void test_backend_types_are_exactly_the_v3_set(void **state)
{
    (void)state;
    static const char be[] = "RK23CdcGHWDIEVvnNAtS1sZT";
    for (int t = 0; t < 256; t++) {
        bool want = t != 0 && memchr(be, t, sizeof(be) - 1) != NULL;
        if (proto_is_backend_type((uint8_t)t) != want)
            fail_msg("backend type 0x%02x ('%c'): got %d", t, t >= 32 && t < 127 ? t : '?',
                     !want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_needs_more_for_0_to_4_bytes),
        cmocka_unit_test(test_header_reads_type_and_length),
        cmocka_unit_test(test_header_ok_before_body_has_arrived),
        cmocka_unit_test(test_header_accepts_minimum_length_4),
        cmocka_unit_test(test_header_rejects_length_below_4),
        cmocka_unit_test(test_header_rejects_length_above_max),
        cmocka_unit_test(test_header_accepts_length_equal_to_max),
        cmocka_unit_test(test_header_rejects_negative_length_even_with_huge_max),
        cmocka_unit_test(test_header_accepts_int32_max_when_max_allows),

        cmocka_unit_test(test_startup_v3_reads_params),
        cmocka_unit_test(test_startup_bad_length_is_refused_from_four_bytes),
        cmocka_unit_test(test_startup_v3_without_params),
        cmocka_unit_test(test_startup_v3_minor_version_parses_params),
        cmocka_unit_test(test_startup_ignores_bytes_after_packet),
        cmocka_unit_test(test_startup_ssl_request),
        cmocka_unit_test(test_startup_ssl_request_followed_by_tls_hello),
        cmocka_unit_test(test_startup_ssl_request_with_wrong_length),
        cmocka_unit_test(test_startup_gssenc_request),
        cmocka_unit_test(test_startup_gssenc_request_with_wrong_length),
        cmocka_unit_test(test_startup_cancel_request),
        cmocka_unit_test(test_startup_cancel_request_too_short),
        cmocka_unit_test(test_startup_cancel_request_too_long),
        cmocka_unit_test(test_startup_rejects_missing_final_nul),
        cmocka_unit_test(test_startup_rejects_v3_with_no_body),
        cmocka_unit_test(test_startup_does_not_read_terminator_past_len),
        cmocka_unit_test(test_startup_rejects_name_without_value),
        cmocka_unit_test(test_startup_rejects_unterminated_name),
        cmocka_unit_test(test_startup_rejects_bytes_after_terminator),
        cmocka_unit_test(test_startup_rejects_length_below_8),
        cmocka_unit_test(test_startup_accepts_exactly_max_bytes),
        cmocka_unit_test(test_startup_rejects_over_max_bytes),
        cmocka_unit_test(test_startup_accepts_64_params),
        cmocka_unit_test(test_startup_rejects_more_than_64_params),
        cmocka_unit_test(test_startup_truncated_needs_more),
        cmocka_unit_test(test_startup_unknown_version_is_ok_for_caller_to_reject),

        cmocka_unit_test(test_get_string_reads_and_advances),
        cmocka_unit_test(test_get_string_without_nul_returns_null),
        cmocka_unit_test(test_get_string_ignores_nul_past_len),
        cmocka_unit_test(test_get_string_pos_past_len_returns_null),
        cmocka_unit_test(test_get_int32_reads_big_endian_signed),
        cmocka_unit_test(test_get_int32_rejects_short_and_out_of_range),
        cmocka_unit_test(test_get_int16_reads_big_endian_signed),
        cmocka_unit_test(test_get_int16_rejects_short_and_out_of_range),
        cmocka_unit_test(test_read_error_real_error_response),
        cmocka_unit_test(test_read_error_prefers_v_over_localized_s),
        cmocka_unit_test(test_read_error_uses_s_when_no_v),
        cmocka_unit_test(test_read_error_missing_fields_are_null),
        cmocka_unit_test(test_read_error_truncated_is_format_error),

        cmocka_unit_test(test_build_error_response),
        cmocka_unit_test(test_build_error_response_skips_null_fields),
        cmocka_unit_test(test_build_notice_response),
        cmocka_unit_test(test_build_ready_for_query),
        cmocka_unit_test(test_build_parameter_status),
        cmocka_unit_test(test_build_backend_key_data),
        cmocka_unit_test(test_build_command_complete),
        cmocka_unit_test(test_build_row_description_two_text_columns),
        cmocka_unit_test(test_build_data_row_with_null),
        cmocka_unit_test(test_build_query),
        cmocka_unit_test(test_build_startup_message),
        cmocka_unit_test(test_build_cancel_request),
        cmocka_unit_test(test_build_sasl_initial_response),
        cmocka_unit_test(test_build_sasl_response),
        cmocka_unit_test(test_build_password),
        cmocka_unit_test(test_build_auth_ok),
        cmocka_unit_test(test_build_auth_sasl),
        cmocka_unit_test(test_build_empty_messages),
        cmocka_unit_test(test_build_appends_after_existing_bytes),

        cmocka_unit_test(test_builders_never_write_past_cap),
        cmocka_unit_test(test_builders_overflow_with_zero_capacity_null_data),
        cmocka_unit_test(test_end_does_nothing_on_overflow),
        cmocka_unit_test(test_overflow_is_sticky),

        cmocka_unit_test(test_startup_message_round_trip),
        cmocka_unit_test(test_cancel_request_round_trip),
        cmocka_unit_test(test_error_response_round_trip),

        cmocka_unit_test(test_frontend_types_are_exactly_the_v3_set),
        cmocka_unit_test(test_backend_types_are_exactly_the_v3_set),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
