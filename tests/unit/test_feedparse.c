/* Unit tests for feedparse: test_decoding's lines (names bare and quoted,
 * TRUNCATE of several tables, the per-transaction bound, lines not
 * understood), and the framing of a replication stream fed in pieces of
 * every size, with a message far larger than the reader keeps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "feedparse.h"

typedef struct seen {
    int started, commits, keepalives;
    int n;
    bool overflow, reply;
    uint64_t lsn, wal_end;
    feedparse_table tables[FEEDPARSE_TABLES];
} seen;

static void on_started(void *ctx)
{
    ((seen *)ctx)->started++;
}

static void on_commit(void *ctx, const feedparse_table *t, int n, bool overflow, uint64_t lsn)
{
    seen *s = ctx;
    s->commits++;
    s->n = n;
    s->overflow = overflow;
    s->lsn = lsn;
    memcpy(s->tables, t, (size_t)n * sizeof(*t));
}

static void on_keepalive(void *ctx, uint64_t wal_end, bool reply)
{
    seen *s = ctx;
    s->keepalives++;
    s->wal_end = wal_end;
    s->reply = reply;
}

static void line(feedparse *p, const char *text, const feedparse_ops *ops)
{
    feedparse_line(p, text, strlen(text), true, 0x100, ops);
}

static void test_a_transaction_gives_its_tables_at_commit(void **state)
{
    (void)state;
    feedparse p;
    feedparse_init(&p);
    seen s = {0};
    feedparse_ops ops = {.ctx = &s, .commit = on_commit};
    line(&p, "BEGIN 731", &ops);
    line(&p, "table public.orders: INSERT: id[integer]:1 note[text]:'a: b'", &ops);
    line(&p, "table public.orders: UPDATE: id[integer]:1", &ops);
    line(&p, "table shop.\"Line \"\"Items\"\"\": DELETE: id[integer]:2", &ops);
    assert_int_equal(s.commits, 0);
    line(&p, "COMMIT 731", &ops);
    assert_int_equal(s.commits, 1);
    assert_false(s.overflow);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.tables[0].schema, "public");
    assert_string_equal(s.tables[0].name, "orders");
    assert_string_equal(s.tables[1].schema, "shop");
    assert_string_equal(s.tables[1].name, "Line \"Items\"");
    /* the next transaction starts empty */
    line(&p, "BEGIN 732", &ops);
    line(&p, "COMMIT 732", &ops);
    assert_int_equal(s.commits, 2);
    assert_int_equal(s.n, 0);
}

static void test_truncate_names_every_table(void **state)
{
    (void)state;
    feedparse p;
    feedparse_init(&p);
    seen s = {0};
    feedparse_ops ops = {.ctx = &s, .commit = on_commit};
    line(&p, "BEGIN", &ops);
    line(&p, "table public.a, \"S\".\"b,c\", public.d: TRUNCATE: restart_seqs cascade", &ops);
    line(&p, "COMMIT", &ops);
    assert_false(s.overflow);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.tables[1].schema, "S");
    assert_string_equal(s.tables[1].name, "b,c");
    assert_string_equal(s.tables[2].name, "d");
}

static void test_lines_not_understood_write_everything(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "table public: INSERT: x",             /* no schema */
        "table public.\"unclosed: INSERT: x",  /* a quote that does not end */
        "table public.t INSERT",               /* no colon */
        "something new: public.t",             /* a line of a kind not known */
        "table public.a, public.",             /* cut in the middle of a name */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        feedparse p;
        feedparse_init(&p);
        seen s = {0};
        feedparse_ops ops = {.ctx = &s, .commit = on_commit};
        line(&p, "BEGIN 1", &ops);
        line(&p, bad[i], &ops);
        line(&p, "COMMIT 1", &ops);
        if (!s.overflow) fail_msg("not read as writing everything: %s", bad[i]);
    }
    /* a name longer than PostgreSQL allows */
    char longname[200] = "table public.";
    memset(longname + strlen(longname), 'x', 100);
    strcat(longname, ": INSERT: x");
    feedparse p;
    feedparse_init(&p);
    seen s = {0};
    feedparse_ops ops = {.ctx = &s, .commit = on_commit};
    line(&p, "BEGIN 1", &ops);
    line(&p, longname, &ops);
    line(&p, "COMMIT 1", &ops);
    assert_true(s.overflow);
    /* a NUL inside a name (no PostgreSQL name has one; found by fuzz_feedparse) */
    static const char nul[] = "table public.\"a\0b\": INSERT: x";
    line(&p, "BEGIN 1", &ops);
    feedparse_line(&p, nul, sizeof(nul) - 1, true, 1, &ops);
    line(&p, "COMMIT 1", &ops);
    assert_true(s.overflow);
    /* a logical message writes no table */
    line(&p, "BEGIN 2", &ops);
    line(&p, "message: transactional: 1 prefix: x, sz: 1 content:y", &ops);
    line(&p, "COMMIT 2", &ops);
    assert_false(s.overflow);
    assert_int_equal(s.n, 0);
}

static void test_more_tables_than_the_bound_overflow(void **state)
{
    (void)state;
    feedparse p;
    feedparse_init(&p);
    seen s = {0};
    feedparse_ops ops = {.ctx = &s, .commit = on_commit};
    char l[128];
    line(&p, "BEGIN 9", &ops);
    for (int i = 0; i < FEEDPARSE_TABLES; i++) {
        snprintf(l, sizeof(l), "table public.t%d: INSERT: x", i);
        line(&p, l, &ops);
        line(&p, l, &ops); /* the same table again takes no room */
    }
    line(&p, "COMMIT 9", &ops);
    assert_false(s.overflow);
    assert_int_equal(s.n, FEEDPARSE_TABLES);
    line(&p, "BEGIN 10", &ops);
    for (int i = 0; i <= FEEDPARSE_TABLES; i++) {
        snprintf(l, sizeof(l), "table public.t%d: INSERT: x", i);
        line(&p, l, &ops);
    }
    line(&p, "COMMIT 10", &ops);
    assert_true(s.overflow);
}

/* ---- framing ---- */

typedef struct wbuf {
    uint8_t *p;
    size_t len, cap;
} wbuf;

static void wput(wbuf *b, const void *d, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void wbe(wbuf *b, uint64_t v, int bytes)
{
    uint8_t t[8];
    for (int i = bytes - 1; i >= 0; i--) {
        t[i] = (uint8_t)v;
        v >>= 8;
    }
    wput(b, t, (size_t)bytes);
}

static void msg(wbuf *b, char type, const void *body, size_t n)
{
    wput(b, &type, 1);
    wbe(b, n + 4, 4);
    wput(b, body, n);
}

static void xlogdata(wbuf *b, uint64_t lsn, const char *text, size_t pad)
{
    size_t tl = strlen(text);
    size_t n = 1 + 24 + tl + pad;
    uint8_t *body = calloc(1, n);
    body[0] = 'w';
    for (int i = 0; i < 8; i++) body[1 + i] = (uint8_t)(lsn >> (56 - 8 * i));
    memcpy(body + 25, text, tl);
    memset(body + 25 + tl, 'z', pad);
    msg(b, 'd', body, n);
    free(body);
}

static wbuf stream(void)
{
    wbuf b = {0};
    msg(&b, 'W', "\0\0\0", 3);
    msg(&b, 'N', "SWARNING\0Mhello\0\0", 17);
    xlogdata(&b, 0x10, "BEGIN 5", 0);
    /* a row of a megabyte: kept only up to the prefix, the rest skipped */
    xlogdata(&b, 0x11, "table public.big: INSERT: data[text]:'", 1 << 20);
    xlogdata(&b, 0x12, "table public.small: DELETE: id[integer]:1", 0);
    xlogdata(&b, 0x16F00000001ull, "COMMIT 5", 0);
    uint8_t k[18] = {'k', 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    msg(&b, 'd', k, sizeof(k));
    return b;
}

static void test_stream_in_pieces_of_any_size(void **state)
{
    (void)state;
    wbuf b = stream();
    static const size_t steps[] = {1, 2, 3, 5, 7, 64, 4096, 1 << 21};
    for (size_t si = 0; si < sizeof(steps) / sizeof(steps[0]); si++) {
        feedparse *p = malloc(sizeof(*p));
        feedparse_init(p);
        seen s = {0};
        feedparse_ops ops = {.ctx = &s, .started = on_started, .commit = on_commit,
                             .keepalive = on_keepalive};
        for (size_t i = 0; i < b.len; i += steps[si]) {
            size_t n = b.len - i < steps[si] ? b.len - i : steps[si];
            assert_int_equal(feedparse_input(p, b.p + i, n, &ops), FEEDPARSE_OK);
        }
        assert_int_equal(s.started, 1);
        assert_int_equal(s.commits, 1);
        assert_int_equal(s.n, 2);
        assert_false(s.overflow);
        assert_string_equal(s.tables[0].name, "big");
        assert_string_equal(s.tables[1].name, "small");
        assert_true(s.lsn == 0x16F00000001ull);
        assert_int_equal(s.keepalives, 1);
        assert_true(s.wal_end == 0x2000);
        assert_true(s.reply);
        free(p);
    }
    free(b.p);
}

static void test_error_and_end_of_stream(void **state)
{
    (void)state;
    feedparse p;
    feedparse_init(&p);
    wbuf b = {0};
    static const char err[] = "SFATAL\0VFATAL\0C57P01\0Mterminating connection due to "
                              "administrator command\0\0";
    msg(&b, 'E', err, sizeof(err) - 1);
    assert_int_equal(feedparse_input(&p, b.p, b.len, NULL), FEEDPARSE_ERROR);
    assert_string_equal(p.sqlstate, "57P01");
    assert_string_equal(p.error, "terminating connection due to administrator command");
    free(b.p);

    feedparse_init(&p);
    b = (wbuf){0};
    msg(&b, 'c', "", 0);
    assert_int_equal(feedparse_input(&p, b.p, b.len, NULL), FEEDPARSE_ENDED);
    free(b.p);

    /* a length below 4, a message that is no part of the stream */
    feedparse_init(&p);
    static const uint8_t bad_len[] = {'d', 0, 0, 0, 3};
    assert_int_equal(feedparse_input(&p, bad_len, sizeof(bad_len), NULL), FEEDPARSE_BAD);
    feedparse_init(&p);
    b = (wbuf){0};
    msg(&b, 'D', "\0\0", 2);
    assert_int_equal(feedparse_input(&p, b.p, b.len, NULL), FEEDPARSE_BAD);
    free(b.p);
}

static void test_status_update_layout(void **state)
{
    (void)state;
    uint8_t out[FEEDPARSE_STATUS_LEN];
    feedparse_status(out, 0x0102030405060708ull, 42, true);
    assert_int_equal(out[0], 'd');
    assert_int_equal(out[4], FEEDPARSE_STATUS_LEN - 1);
    assert_int_equal(out[5], 'r');
    for (int f = 0; f < 3; f++)
        for (int i = 0; i < 8; i++) assert_int_equal(out[6 + 8 * f + i], i + 1);
    assert_int_equal(out[37], 42);
    assert_int_equal(out[38], 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_transaction_gives_its_tables_at_commit),
        cmocka_unit_test(test_truncate_names_every_table),
        cmocka_unit_test(test_lines_not_understood_write_everything),
        cmocka_unit_test(test_more_tables_than_the_bound_overflow),
        cmocka_unit_test(test_stream_in_pieces_of_any_size),
        cmocka_unit_test(test_error_and_end_of_stream),
        cmocka_unit_test(test_status_update_layout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
