/* Unit tests for common: the elapsed-time helper that every timeout and
 * statistic goes through (a timestamp taken after the caller's clock
 * reading must give an age of 0, not a wrapped one). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_elapsed_is_the_difference_when_ordered),
        cmocka_unit_test(test_elapsed_is_zero_when_since_is_later_than_now),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
