/* Unit tests for common: the elapsed-time helper that every timeout and
 * statistic goes through (a timestamp taken after the caller's clock
 * reading must give an age of 0, not a wrapped one). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common.h"

static void test_elapsed_is_the_difference_when_ordered(void **state)
{
    (void)state;
    assert_true(pgs_elapsed_us(1000, 400) == 600);
    assert_true(pgs_elapsed_us(UINT64_MAX, 0) == UINT64_MAX);
    assert_true(pgs_elapsed_us(5, 5) == 0);
}

static void test_elapsed_is_zero_when_since_is_later_than_now(void **state)
{
    (void)state;
    /* the janitor read now = 1000; a query then started at 1001 */
    assert_true(pgs_elapsed_us(1000, 1001) == 0);
    assert_true(pgs_elapsed_us(0, UINT64_MAX) == 0);
    /* and it is never older than any timeout */
    uint64_t query_timeout = 1000000;
    assert_false(pgs_elapsed_us(1000, 1001) > query_timeout);
}

/* Log lines carry names clients chose: no control character may pass. */
static void test_log_escape_writes_control_characters_as_escapes(void **state)
{
    (void)state;
    char out[64];
    const char in[] = "u\n2026 ERROR x\r\t\x01\x7f\\ \xc3\xa9";
    size_t n = pgs_log_escape(out, sizeof(out), in, sizeof(in) - 1);
    assert_string_equal(out, "u\\n2026 ERROR x\\r\\t\\x01\\x7f\\ \xc3\xa9");
    assert_int_equal(n, strlen(out));
}

static void test_log_escape_cuts_at_a_whole_escape(void **state)
{
    (void)state;
    char out[5];
    /* "ab" fits, "\n" would need 2 more bytes than are left before the NUL */
    assert_int_equal(pgs_log_escape(out, sizeof(out), "abc\n", 4), 3);
    assert_string_equal(out, "abc");
    assert_int_equal(pgs_log_escape(out, sizeof(out), "ab\n\n", 4), 4);
    assert_string_equal(out, "ab\\n");
    assert_int_equal(pgs_log_escape(out, 1, "abc", 3), 0);
    assert_string_equal(out, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_elapsed_is_the_difference_when_ordered),
        cmocka_unit_test(test_elapsed_is_zero_when_since_is_later_than_now),
        cmocka_unit_test(test_log_escape_writes_control_characters_as_escapes),
        cmocka_unit_test(test_log_escape_cuts_at_a_whole_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
