/* Unit tests for pooltab: pools found by (user, database) through growth,
 * removal in any order, and names that differ only in where user ends and
 * database begins. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pooltab.h"

static pgs_pool_shared *make(const char *user, const char *db)
{
    pgs_pool_shared *sh = calloc(1, sizeof(*sh));
    assert_non_null(sh);
    sh->user = strdup(user);
    sh->database = strdup(db);
    sh->hnode.hash = pooltab_hash(sh->node_index, user, db);
    return sh;
}

static void drop(pgs_pool_shared *sh)
{
    free(sh->user);
    free(sh->database);
    free(sh);
}

#define N 5000

static void test_finds_every_pool_through_growth_and_removal(void **state)
{
    (void)state;
    pgs_pooltab t = {0};
    static pgs_pool_shared *all[N];
    char u[32], d[32];
    assert_null(pooltab_find(&t, 0, "app", "app"));
    for (int i = 0; i < N; i++) {
        snprintf(u, sizeof(u), "user%d", i);
        snprintf(d, sizeof(d), "db%d", i % 7);
        all[i] = make(u, d);
        pooltab_insert(&t, all[i]);
    }
    assert_int_equal(t.count, N);
    assert_true(t.n_buckets >= N); /* grew: chains stay short */
    for (int i = 0; i < N; i++) {
        snprintf(u, sizeof(u), "user%d", i);
        snprintf(d, sizeof(d), "db%d", i % 7);
        assert_ptr_equal(pooltab_find(&t, 0, u, d), all[i]);
        snprintf(d, sizeof(d), "db%d", (i + 1) % 7);
        assert_null(pooltab_find(&t, 0, u, d));
    }
    /* remove the odd ones, newest first */
    for (int i = N - 1; i >= 0; i--)
        if (i % 2) pooltab_remove(&t, all[i]);
    assert_int_equal(t.count, N / 2);
    for (int i = 0; i < N; i++) {
        snprintf(u, sizeof(u), "user%d", i);
        snprintf(d, sizeof(d), "db%d", i % 7);
        if (i % 2)
            assert_null(pooltab_find(&t, 0, u, d));
        else
            assert_ptr_equal(pooltab_find(&t, 0, u, d), all[i]);
    }
    for (int i = 0; i < N; i++)
        if (i % 2 == 0) pooltab_remove(&t, all[i]);
    assert_int_equal(t.count, 0);
    for (int i = 0; i < N; i++) drop(all[i]);
    pooltab_free(&t);
}

static void test_user_and_database_boundary_matters(void **state)
{
    (void)state;
    pgs_pooltab t = {0};
    pgs_pool_shared *a = make("ab", "c"), *b = make("a", "bc");
    pooltab_insert(&t, a);
    assert_null(pooltab_find(&t, 0, "a", "bc"));
    pooltab_insert(&t, b);
    assert_ptr_equal(pooltab_find(&t, 0, "ab", "c"), a);
    assert_ptr_equal(pooltab_find(&t, 0, "a", "bc"), b);
    pooltab_remove(&t, a);
    pooltab_remove(&t, a); /* not there any more: no effect */
    assert_int_equal(t.count, 1);
    assert_ptr_equal(pooltab_find(&t, 0, "a", "bc"), b);
    drop(a);
    drop(b);
    pooltab_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_finds_every_pool_through_growth_and_removal),
        cmocka_unit_test(test_user_and_database_boundary_matters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
