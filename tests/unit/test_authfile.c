/* Unit tests for the users file: the userlist.txt format (quotes, escapes,
 * comments, line endings), every error with its line number, the size
 * bounds, lookup, and which methods each kind of secret allows.  Input is
 * handed over in exact-size heap copies so ASan catches reads past len. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "authfile.h"

/* Made by PostgreSQL 15 (see test_authserver.c): role u / password x
 * (SCRAM) and role m / password x (md5). */
#define PG15_SCRAM_X                                                                      \
    "SCRAM-SHA-256$4096:mCinF9DvCeL3tNMWFfGvkw==$UC2MwHouz1lZJNUEqYKPuRdpz8S23G8P85t/DFREZyI=:" \
    "IwfUjTGAoKcSUur0944juVtm0NPUY/4ngntof4YSyUw="
#define PG15_MD5_M_X "md58f0168b67e1484c7d4e363b9f091ed2f"

static const unsigned char KEY[32] = "0123456789abcdef0123456789abcde";

static int parse_n(const char *data, size_t len, authfile **f, char *err, size_t errlen)
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, data, len);
    err[0] = '\0';
    int r = authfile_parse("users.txt", copy, len, f, err, errlen);
    free(copy);
    return r;
}

static authfile *parse_ok(const char *data)
{
    authfile *f = NULL;
    char err[512];
    int r = parse_n(data, strlen(data), &f, err, sizeof(err));
    if (r != 0) fail_msg("parse failed: %s", err);
    assert_non_null(f);
    return f;
}

/* Parses data, expects failure, and checks the exact message. */
static void parse_fails(const char *data, const char *want)
{
    authfile *f = (authfile *)1;
    char err[512];
    assert_int_not_equal(parse_n(data, strlen(data), &f, err, sizeof(err)), 0);
    assert_null(f);
    assert_string_equal(err, want);
}

/* ---- format -------------------------------------------------------------- */

static void test_parses_users_comments_and_blank_lines(void **state)
{
    (void)state;
    authfile *f = parse_ok("# users of pgscale\n"
                           "\n"
                           "; PgBouncer-style comment\n"
                           "\"alice\" \"wonderland\"\n"
                           "   \t\n"
                           "  \"m\"\t\"" PG15_MD5_M_X "\"  # trailing comment\n"
                           "\"u\" \"" PG15_SCRAM_X "\"\n");
    assert_int_equal(authfile_count(f), 3);
    const authfile_entry *a = authfile_lookup(f, "alice");
    assert_non_null(a);
    assert_string_equal(a->secret, "wonderland");
    assert_int_equal(a->kind, AUTH_SECRET_PLAIN);
    assert_int_equal(a->line, 4);
    assert_string_equal(a->file, "users.txt");
    assert_null(a->scram);
    const authfile_entry *m = authfile_lookup(f, "m");
    assert_int_equal(m->kind, AUTH_SECRET_MD5);
    assert_int_equal(m->line, 6);
    const authfile_entry *u = authfile_lookup(f, "u");
    assert_int_equal(u->kind, AUTH_SECRET_SCRAM);
    assert_non_null(u->scram);
    assert_int_equal(u->scram->iterations, 4096);
    assert_string_equal(u->secret, PG15_SCRAM_X);
    authfile_free(f);
}

static void test_doubled_quote_is_a_quote(void **state)
{
    (void)state;
    authfile *f = parse_ok("\"o\"\"brien\" \"say \"\"hi\"\"\"\n\"\"\"\" \"q\"");
    const authfile_entry *e = authfile_lookup(f, "o\"brien");
    assert_non_null(e);
    assert_string_equal(e->secret, "say \"hi\"");
    e = authfile_lookup(f, "\"");
    assert_non_null(e);
    assert_string_equal(e->secret, "q");
    authfile_free(f);
}

static void test_spaces_and_hashes_inside_quotes_are_kept(void **state)
{
    (void)state;
    authfile *f = parse_ok("\"a b\" \" p#w ;x \"\n");
    assert_string_equal(authfile_lookup(f, "a b")->secret, " p#w ;x ");
    authfile_free(f);
}

static void test_crlf_bom_and_missing_final_newline(void **state)
{
    (void)state;
    authfile *f = parse_ok("\xEF\xBB\xBF\"a\" \"1\"\r\n\r\n\"b\" \"2\"");
    assert_int_equal(authfile_count(f), 2);
    assert_string_equal(authfile_lookup(f, "a")->secret, "1");
    assert_string_equal(authfile_lookup(f, "b")->secret, "2");
    assert_int_equal(authfile_lookup(f, "b")->line, 3);
    authfile_free(f);
}

static void test_extra_quoted_fields_are_ignored(void **state)
{
    (void)state;
    /* PgBouncer's mkauth.py writes a third, empty field. */
    authfile *f = parse_ok("\"a\" \"1\" \"\"\n\"b\" \"2\" \"x\" \"y\";c\n");
    assert_int_equal(authfile_count(f), 2);
    assert_string_equal(authfile_lookup(f, "a")->secret, "1");
    authfile_free(f);
}

static void test_empty_and_comment_only_files_have_no_users(void **state)
{
    (void)state;
    authfile *f = parse_ok("");
    assert_int_equal(authfile_count(f), 0);
    assert_null(authfile_lookup(f, "a"));
    authfile_free(f);
    f = parse_ok("# nobody\n\n;\n");
    assert_int_equal(authfile_count(f), 0);
    authfile_free(f);
}

static void test_lookup_is_exact_and_case_sensitive(void **state)
{
    (void)state;
    authfile *f = parse_ok("\"Bob\" \"1\"\n\"bob\" \"2\"\n\"bo\" \"3\"\n");
    assert_string_equal(authfile_lookup(f, "Bob")->secret, "1");
    assert_string_equal(authfile_lookup(f, "bob")->secret, "2");
    assert_string_equal(authfile_lookup(f, "bo")->secret, "3");
    assert_null(authfile_lookup(f, "b"));
    assert_null(authfile_lookup(f, "bobb"));
    assert_null(authfile_lookup(f, "BOB"));
    assert_null(authfile_lookup(NULL, "bob"));
    authfile_free(f);
}

static void test_lookup_finds_every_user_of_a_large_file(void **state)
{
    (void)state;
    size_t n = 5000, cap = n * 40, len = 0;
    char *buf = malloc(cap);
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(buf + len, cap - len, "\"user%zu\" \"pw%zu\"\n", (i * 7919) % n, i);
    authfile *f = NULL;
    char err[256];
    assert_int_equal(parse_n(buf, len, &f, err, sizeof(err)), 0);
    free(buf);
    assert_int_equal(authfile_count(f), n);
    for (size_t i = 0; i < n; i++) {
        char u[32];
        snprintf(u, sizeof(u), "user%zu", i);
        const authfile_entry *e = authfile_lookup(f, u);
        assert_non_null(e);
        assert_string_equal(e->user, u);
    }
    authfile_free(f);
}

/* ---- errors, each with its line ------------------------------------------ */

static void test_unterminated_quoted_string(void **state)
{
    (void)state;
    parse_fails("\"a\" \"1\"\n# ok\n\"b\" \"2\n\"c\" \"3\"\n",
                "users.txt:3: unterminated quoted string");
    parse_fails("\"a\" \"1\"\n\"b", "users.txt:2: unterminated quoted string");
    parse_fails("\"a\" \"1\"\"", "users.txt:1: unterminated quoted string");
}

static void test_unquoted_user(void **state)
{
    (void)state;
    parse_fails("\n\nalice \"1\"\n",
                "users.txt:3: expected a quoted user name (\"user\" \"secret\")");
    parse_fails("'a' '1'", "users.txt:1: expected a quoted user name (\"user\" \"secret\")");
}

static void test_empty_user(void **state)
{
    (void)state;
    parse_fails("\"a\" \"1\"\n\"\" \"2\"\n", "users.txt:2: empty user name");
}

static void test_no_space_after_user(void **state)
{
    (void)state;
    parse_fails("\"a\"x \"1\"\n", "users.txt:1: expected a space after the user name");
}

static void test_missing_secret(void **state)
{
    (void)state;
    parse_fails("\"a\" \"1\"\n\"b\"\n", "users.txt:2: no secret for user \"b\"");
    parse_fails("\"b\"   # forgot\n", "users.txt:1: no secret for user \"b\"");
}

static void test_unquoted_secret(void **state)
{
    (void)state;
    parse_fails("\"a\" secret\n", "users.txt:1: expected a quoted secret after the user name");
}

static void test_empty_secret(void **state)
{
    (void)state;
    parse_fails("\n\"a\" \"\"\n", "users.txt:2: empty secret for user \"a\"");
}

static void test_text_after_secret(void **state)
{
    (void)state;
    parse_fails("\"a\" \"1\" x\n", "users.txt:1: unexpected text after the secret");
    parse_fails("\"a\" \"1\"x\n", "users.txt:1: unexpected text after the secret");
    parse_fails("\"a\" \"1\" \"x\n", "users.txt:1: unterminated quoted string");
}

static void test_nul_byte(void **state)
{
    (void)state;
    authfile *f = (authfile *)1;
    char err[256];
    static const char data[] = "\"a\" \"1\"\n\"b\0\" \"2\"\n";
    assert_int_equal(parse_n(data, sizeof(data) - 1, &f, err, sizeof(err)), -EINVAL);
    assert_null(f);
    assert_string_equal(err, "users.txt:2: NUL byte in quoted string");
    /* NUL outside quotes is text where none belongs. */
    static const char data2[] = "\"a\" \"1\"\0\n";
    assert_int_equal(parse_n(data2, sizeof(data2) - 1, &f, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "users.txt:1: unexpected text after the secret");
}

static void test_malformed_scram_secret(void **state)
{
    (void)state;
    parse_fails("\"a\" \"1\"\n\"u\" \"SCRAM-SHA-256$4096:abc$x:y\"\n",
                "users.txt:2: malformed SCRAM secret for user \"u\": SCRAM secret's salt is not "
                "valid base64");
    parse_fails("\"u\" \"SCRAM-SHA-256$\"",
                "users.txt:1: malformed SCRAM secret for user \"u\": SCRAM secret has no ':' "
                "after the iteration count");
}

static void test_password_over_255_bytes(void **state)
{
    (void)state;
    char buf[400];
    snprintf(buf, sizeof(buf), "\"a\" \"%0*d\"\n", 255, 7);
    authfile *f = parse_ok(buf);
    authfile_free(f);
    snprintf(buf, sizeof(buf), "\n\"a\" \"%0*d\"\n", 256, 7);
    parse_fails(buf, "users.txt:2: password for user \"a\" is longer than 255 bytes");
}

static void test_duplicate_user(void **state)
{
    (void)state;
    parse_fails("\"a\" \"1\"\n\"b\" \"2\"\n\"c\" \"3\"\n\"b\" \"4\"\n\"a\" \"5\"\n",
                "users.txt:4: user \"b\" is already defined on line 2");
}

static void test_user_names_in_messages_are_sanitised(void **state)
{
    (void)state;
    parse_fails("\"a\x1b[2J\"\n", "users.txt:1: no secret for user \"a?[2J\"");
    char buf[300];
    snprintf(buf, sizeof(buf), "\"%0*d\"\n", 100, 7);
    char want[200];
    snprintf(want, sizeof(want), "users.txt:1: no secret for user \"%0*d...\"", 64, 0);
    parse_fails(buf, want);
}

static void test_line_over_8_kib(void **state)
{
    (void)state;
    size_t n = AUTHFILE_MAX_LINE;
    char *buf = malloc(n + 64);
    /* Exactly 8 KiB on line 2 is fine (a long comment)... */
    memcpy(buf, "\"a\" \"1\"\n#", 9);
    memset(buf + 9, 'x', n - 1);
    memcpy(buf + 8 + n, "\n", 2);
    authfile *f = parse_ok(buf);
    authfile_free(f);
    /* ...one more byte is not, even before any quote is read. */
    memset(buf + 8, '#', n + 1);
    memcpy(buf + 9 + n, "\n", 2);
    parse_fails(buf, "users.txt:2: line is longer than 8 KiB");
    free(buf);
}

static void test_file_over_10_mib(void **state)
{
    (void)state;
    size_t n = AUTHFILE_MAX_BYTES + 1;
    char *buf = malloc(n);
    memset(buf, '\n', n);
    authfile *f = (authfile *)1;
    char err[256];
    assert_int_equal(authfile_parse("users.txt", buf, n, &f, err, sizeof(err)), -EFBIG);
    assert_null(f);
    assert_string_equal(err, "users.txt: file is larger than 10 MiB (10485761 bytes)");
    /* 10 MiB exactly is read. */
    assert_int_equal(authfile_parse("users.txt", buf, n - 1, &f, err, sizeof(err)), 0);
    authfile_free(f);
    free(buf);
}

/* ---- loading ------------------------------------------------------------- */

static void test_load_reads_a_file_and_reports_its_path(void **state)
{
    (void)state;
    char path[] = "/tmp/pgscale_users_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "\"a\" \"1\"\n\"b\" \"2\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    authfile *f = (authfile *)1;
    char err[512], want[512];
    assert_int_equal(authfile_load(path, &f, err, sizeof(err)), -EINVAL);
    assert_null(f);
    snprintf(want, sizeof(want), "%s:2: unterminated quoted string", path);
    assert_string_equal(err, want);

    fd = open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, 8), 8);
    close(fd);
    assert_int_equal(authfile_load(path, &f, err, sizeof(err)), 0);
    assert_int_equal(authfile_count(f), 1);
    assert_string_equal(authfile_lookup(f, "a")->file, path);
    authfile_free(f);
    unlink(path);

    assert_int_equal(authfile_load(path, &f, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "cannot open"));
    assert_int_equal(authfile_load("/tmp", &f, err, sizeof(err)), -EISDIR);
    assert_non_null(strstr(err, "is a directory"));
}

/* ---- methods ------------------------------------------------------------- */

static void test_methods_each_secret_allows(void **state)
{
    (void)state;
    authfile *f = parse_ok("\"p\" \"x\"\n\"m\" \"" PG15_MD5_M_X "\"\n\"u\" \"" PG15_SCRAM_X "\"\n");
    char err[512];
    const authfile_entry *p = authfile_lookup(f, "p"), *m = authfile_lookup(f, "m"),
                         *u = authfile_lookup(f, "u");
    assert_int_equal(authfile_check_method(p, AUTH_METHOD_MD5, err, sizeof(err)), 0);
    assert_int_equal(authfile_check_method(p, AUTH_METHOD_SCRAM, err, sizeof(err)), 0);
    assert_int_equal(authfile_check_method(m, AUTH_METHOD_MD5, err, sizeof(err)), 0);
    assert_int_equal(authfile_check_method(u, AUTH_METHOD_SCRAM, err, sizeof(err)), 0);

    assert_int_equal(authfile_check_method(m, AUTH_METHOD_SCRAM, err, sizeof(err)), -EOPNOTSUPP);
    assert_non_null(strstr(err, "users.txt:2: user \"m\" has an md5 secret"));
    assert_int_equal(authfile_check_method(u, AUTH_METHOD_MD5, err, sizeof(err)), -EOPNOTSUPP);
    assert_non_null(strstr(err, "users.txt:3: user \"u\" has a SCRAM secret"));
    assert_non_null(strstr(err, "md5 cannot be verified from a SCRAM secret"));
    authfile_free(f);
}

static void test_md5_verify_through_the_file(void **state)
{
    (void)state;
    static const uint8_t salt[4] = {0xde, 0xad, 0xbe, 0xef};
    authfile *f = parse_ok("\"m\" \"x\"\n\"n\" \"" PG15_MD5_M_X "\"\n\"u\" \"" PG15_SCRAM_X "\"\n");
    char err[512], resp[36];
    auth_md5_response("m", "x", salt, resp);
    assert_int_equal(authfile_md5_verify(authfile_lookup(f, "m"), salt, resp, 35, err, sizeof(err)),
                     0);
    /* The stored hash is for user "m": user "n" with it fails. */
    auth_md5_response("n", "x", salt, resp);
    assert_int_equal(authfile_md5_verify(authfile_lookup(f, "n"), salt, resp, 35, err, sizeof(err)),
                     -EACCES);
    assert_string_equal(err, "password authentication failed for user \"n\" (md5)");
    auth_md5_response("u", "x", salt, resp);
    assert_int_equal(authfile_md5_verify(authfile_lookup(f, "u"), salt, resp, 35, err, sizeof(err)),
                     -EOPNOTSUPP);
    assert_non_null(strstr(err, "md5 cannot be verified from a SCRAM secret"));
    authfile_free(f);
}

/* A full SCRAM login of the password client against the secret. */
static int scram_login(const scram_secret *s, const char *password)
{
    scram_client sc;
    scram_server ss;
    char c1[SCRAM_MAX_MSG], s1[SCRAM_MAX_MSG], c2[SCRAM_MAX_MSG], s2[SCRAM_MAX_MSG];
    size_t l1 = 0, l2 = 0, l3 = 0, l4 = 0;
    assert_int_equal(scram_client_init(&sc, password), 0);
    assert_int_equal(scram_server_init(&ss, s, NULL, 0), 0);
    assert_int_equal(scram_client_first(&sc, c1, sizeof(c1), &l1), 0);
    assert_int_equal(scram_server_first(&ss, SCRAM_MECH, strlen(SCRAM_MECH), c1, l1, s1,
                                        sizeof(s1), &l2),
                     0);
    assert_int_equal(scram_client_final(&sc, s1, l2, c2, sizeof(c2), &l3), 0);
    int r = scram_server_final(&ss, c2, l3, s2, sizeof(s2), &l4);
    if (r == 0) assert_int_equal(scram_client_verify(&sc, s2, l4), 0);
    scram_server_clear(&ss);
    return r;
}

static void test_scram_secret_for_plaintext_user_uses_the_mock_salt(void **state)
{
    (void)state;
    authfile *f = parse_ok("\"p\" \"x\"\n");
    const authfile_entry *p = authfile_lookup(f, "p");
    scram_secret a, b;
    char err[256];
    unsigned char salt[16];
    assert_int_equal(authfile_scram_secret(p, KEY, sizeof(KEY), &a, err, sizeof(err)), 0);
    assert_int_equal(authfile_scram_secret(p, KEY, sizeof(KEY), &b, err, sizeof(err)), 0);
    /* Stable from one login to the next, and what a mock "p" would show. */
    assert_int_equal(scram_mock_salt("p", KEY, sizeof(KEY), salt), 0);
    assert_int_equal(a.salt_len, 16);
    assert_int_equal(a.iterations, 4096);
    assert_memory_equal(a.salt, salt, 16);
    assert_memory_equal(a.stored_key, b.stored_key, 32);
    assert_int_equal(scram_login(&a, "x"), 0);
    assert_int_equal(scram_login(&a, "y"), -EACCES);
    assert_int_equal(authfile_scram_secret(p, KEY, 8, &a, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "shorter than 16 bytes"));
    authfile_free(f);
}

static void test_precomputed_scram_secret_equals_the_derived_one(void **state)
{
    (void)state;
    authfile *f = parse_ok("\"p\" \"x\"\n\"m\" \"" PG15_MD5_M_X "\"\n");
    scram_secret before, after;
    char err[256];
    const authfile_entry *p = authfile_lookup(f, "p");
    assert_null(p->scram);
    assert_int_equal(authfile_scram_secret(p, KEY, sizeof(KEY), &before, err, sizeof(err)), 0);
    assert_int_equal(authfile_precompute_scram(f, KEY, sizeof(KEY), err, sizeof(err)), 0);
    assert_non_null(p->scram);                        /* logins now skip PBKDF2 */
    assert_null(authfile_lookup(f, "m")->scram);      /* md5 secrets cannot do SCRAM */
    assert_int_equal(authfile_scram_secret(p, KEY, sizeof(KEY), &after, err, sizeof(err)), 0);
    assert_memory_equal(&before, &after, sizeof(before));
    assert_int_equal(scram_login(&after, "x"), 0);
    authfile_free(f);
}

static void test_scram_secret_for_scram_and_md5_users(void **state)
{
    (void)state;
    authfile *f = parse_ok("\"u\" \"" PG15_SCRAM_X "\"\n\"m\" \"" PG15_MD5_M_X "\"\n");
    scram_secret s;
    char err[512];
    assert_int_equal(
        authfile_scram_secret(authfile_lookup(f, "u"), KEY, sizeof(KEY), &s, err, sizeof(err)), 0);
    assert_int_equal(scram_login(&s, "x"), 0);
    assert_int_equal(
        authfile_scram_secret(authfile_lookup(f, "m"), KEY, sizeof(KEY), &s, err, sizeof(err)),
        -EOPNOTSUPP);
    assert_non_null(strstr(err, "users.txt:2: user \"m\" has an md5 secret"));
    authfile_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parses_users_comments_and_blank_lines),
        cmocka_unit_test(test_doubled_quote_is_a_quote),
        cmocka_unit_test(test_spaces_and_hashes_inside_quotes_are_kept),
        cmocka_unit_test(test_crlf_bom_and_missing_final_newline),
        cmocka_unit_test(test_extra_quoted_fields_are_ignored),
        cmocka_unit_test(test_empty_and_comment_only_files_have_no_users),
        cmocka_unit_test(test_lookup_is_exact_and_case_sensitive),
        cmocka_unit_test(test_lookup_finds_every_user_of_a_large_file),
        cmocka_unit_test(test_unterminated_quoted_string),
        cmocka_unit_test(test_unquoted_user),
        cmocka_unit_test(test_empty_user),
        cmocka_unit_test(test_no_space_after_user),
        cmocka_unit_test(test_missing_secret),
        cmocka_unit_test(test_unquoted_secret),
        cmocka_unit_test(test_empty_secret),
        cmocka_unit_test(test_text_after_secret),
        cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_malformed_scram_secret),
        cmocka_unit_test(test_password_over_255_bytes),
        cmocka_unit_test(test_duplicate_user),
        cmocka_unit_test(test_user_names_in_messages_are_sanitised),
        cmocka_unit_test(test_line_over_8_kib),
        cmocka_unit_test(test_file_over_10_mib),
        cmocka_unit_test(test_load_reads_a_file_and_reports_its_path),
        cmocka_unit_test(test_methods_each_secret_allows),
        cmocka_unit_test(test_md5_verify_through_the_file),
        cmocka_unit_test(test_scram_secret_for_plaintext_user_uses_the_mock_salt),
        cmocka_unit_test(test_precomputed_scram_secret_equals_the_derived_one),
        cmocka_unit_test(test_scram_secret_for_scram_and_md5_users),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
