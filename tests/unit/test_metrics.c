/* Unit tests for what /metrics and /api/status compute without I/O: the
 * histogram buckets and their quantiles, SQLSTATE classes, and the JSON
 * string escaping of text that comes from servers and clients. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"

static void test_hist_index_bounds_are_inclusive(void **state)
{
    (void)state;
    assert_int_equal(pgs_hist_index(0), 0);
    assert_int_equal(pgs_hist_index(100), 0);   /* le="0.0001" holds 100 µs */
    assert_int_equal(pgs_hist_index(101), 1);
    assert_int_equal(pgs_hist_index(1000), 3);
    assert_int_equal(pgs_hist_index(10000000), PGS_HIST_BUCKETS - 2);
    assert_int_equal(pgs_hist_index(10000001), PGS_HIST_BUCKETS - 1); /* +Inf */
    assert_int_equal(pgs_hist_index(UINT64_MAX), PGS_HIST_BUCKETS - 1);
    for (uint64_t us = 1; us < 20000000; us = us * 3 + 1)
        assert_true(pgs_hist_index(us) >= pgs_hist_index(us - 1));
}

static void test_quantile_interpolates_within_a_bucket(void **state)
{
    (void)state;
    uint64_t h[PGS_HIST_BUCKETS] = {0};
    assert_true(isnan(metrics_hist_quantile(h, 0.5)));
    /* 100 transactions between 1 ms and 2.5 ms (bucket 4) */
    h[4] = 100;
    assert_true(fabs(metrics_hist_quantile(h, 0.5) - 0.00175) < 1e-9);
    assert_true(fabs(metrics_hist_quantile(h, 1.0) - 0.0025) < 1e-9);
    /* 90 fast, 10 slow: p50 in the fast bucket, p99 in the slow one */
    memset(h, 0, sizeof(h));
    h[0] = 90;
    h[9] = 10; /* 50..100 ms */
    assert_true(metrics_hist_quantile(h, 0.5) <= 0.0001);
    double p99 = metrics_hist_quantile(h, 0.99);
    assert_true(p99 > 0.05 && p99 <= 0.1);
    /* everything above the last bound: the last bound, as Prometheus says */
    memset(h, 0, sizeof(h));
    h[PGS_HIST_BUCKETS - 1] = 5;
    assert_true(fabs(metrics_hist_quantile(h, 0.9) - 10.0) < 1e-9);
}

static void test_error_classes(void **state)
{
    (void)state;
    assert_string_equal(metrics_err_class_name(metrics_err_class("22012")), "22");
    assert_string_equal(metrics_err_class_name(metrics_err_class("42P01")), "42");
    assert_string_equal(metrics_err_class_name(metrics_err_class("57P01")), "57");
    assert_string_equal(metrics_err_class_name(metrics_err_class("0A000")), "0A");
    assert_string_equal(metrics_err_class_name(metrics_err_class("XX000")), "XX");
    assert_string_equal(metrics_err_class_name(metrics_err_class("ZZ999")), "other");
    assert_string_equal(metrics_err_class_name(metrics_err_class("4")), "other");
    assert_string_equal(metrics_err_class_name(metrics_err_class("")), "other");
    assert_string_equal(metrics_err_class_name(metrics_err_class(NULL)), "other");
    assert_int_equal(metrics_err_class("ZZ999"), PGS_ERR_CLASSES - 1);
    /* every class has its own slot */
    for (unsigned i = 0; i + 1 < PGS_ERR_CLASSES; i++) {
        char st[6];
        memcpy(st, metrics_err_class_name(i), 2);
        memcpy(st + 2, "000", 4);
        assert_int_equal(metrics_err_class(st), i);
    }
}

static void json_is(const char *in, const char *want)
{
    sbuf b = {0};
    metrics_json_str(&b, in);
    assert_string_equal(sb_str(&b), want);
    sb_free(&b);
}

static void test_json_strings_are_always_valid_json(void **state)
{
    (void)state;
    json_is(NULL, "null");
    json_is("", "\"\"");
    json_is("plain", "\"plain\"");
    json_is("a\"b\\c", "\"a\\\"b\\\\c\"");
    json_is("line\nnext\ttab\x01", "\"line\\u000anext\\u0009tab\\u0001\"");
    json_is("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
    /* LATIN1 bytes, a truncated sequence, an overlong lead, a lone
     * continuation byte: each replaced, nothing swallowed after it */
    json_is("caf\xe9!", "\"caf\\ufffd!\"");
    json_is("\xe2\x82", "\"\\ufffd\\ufffd\"");
    json_is("\xc0\xaf", "\"\\ufffd\\ufffd\"");
    json_is("\x80x", "\"\\ufffdx\"");
    /* an overlong 3-byte form, a UTF-16 surrogate, past U+10FFFF */
    json_is("\xe0\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\"");
    json_is("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"");
    json_is("\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
    json_is("</script>", "\"</script>\"");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hist_index_bounds_are_inclusive),
        cmocka_unit_test(test_quantile_interpolates_within_a_bucket),
        cmocka_unit_test(test_error_classes),
        cmocka_unit_test(test_json_strings_are_always_valid_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
