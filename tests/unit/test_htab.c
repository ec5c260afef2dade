/* Unit tests for htab: entries found after insert and gone after remove,
 * every entry still found after the table grows, entries whose hashes are
 * equal told apart by the caller's key, and a walk that may remove. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "htab.h"

typedef struct item {
    int key;
    htab_node hnode;
} item;

static item *find(const htab *t, uint64_t hash, int key)
{
    for (htab_node *n = htab_first(t, hash); n; n = n->next) {
        item *it = htab_entry(n, item, hnode);
        if (n->hash == hash && it->key == key) return it;
    }
    return NULL;
}

static void put(htab *t, item *it, int key, uint64_t hash)
{
    it->key = key;
    it->hnode.hash = hash;
    htab_insert(t, &it->hnode);
}

static void test_finds_inserted_and_not_removed(void **state)
{
    (void)state;
    htab t = {0};
    item a, b;
    assert_null(find(&t, 1, 1));
    assert_false(htab_remove(&t, &a.hnode)); /* empty, no buckets yet */
    put(&t, &a, 1, 11);
    put(&t, &b, 2, 22);
    assert_int_equal(t.count, 2);
    assert_int_equal(t.n_buckets, HTAB_DEFAULT_BUCKETS);
    assert_ptr_equal(find(&t, 11, 1), &a);
    assert_ptr_equal(find(&t, 22, 2), &b);
    assert_null(find(&t, 11, 2));
    assert_null(find(&t, 33, 3));
    assert_true(htab_remove(&t, &a.hnode));
    assert_false(htab_remove(&t, &a.hnode)); /* not there any more: no effect */
    assert_int_equal(t.count, 1);
    assert_null(find(&t, 11, 1));
    assert_ptr_equal(find(&t, 22, 2), &b);
    htab_free(&t);
    assert_null(t.buckets);
    assert_int_equal(t.n_buckets, 0);
}

#define N 5000

static void test_growth_keeps_every_entry_findable(void **state)
{
    (void)state;
    htab t;
    htab_init(&t, 8);
    static item all[N];
    for (int i = 0; i < N; i++) {
        /* sequential hashes, as statement ids are */
        put(&t, &all[i], i, (uint64_t)i);
        assert_true(t.count <= t.n_buckets); /* doubled before outnumbered */
    }
    assert_int_equal(t.count, N);
    assert_int_equal(t.n_buckets, 8192);
    for (int i = 0; i < N; i++) assert_ptr_equal(find(&t, (uint64_t)i, i), &all[i]);
    for (int i = N - 1; i >= 0; i -= 2) assert_true(htab_remove(&t, &all[i].hnode));
    assert_int_equal(t.count, N / 2);
    for (int i = 0; i < N; i++) {
        if (i % 2)
            assert_null(find(&t, (uint64_t)i, i));
        else
            assert_ptr_equal(find(&t, (uint64_t)i, i), &all[i]);
    }
    htab_free(&t);
}

static void test_colliding_hashes_are_told_apart_by_key(void **state)
{
    (void)state;
    htab t = {0};
    static item all[300];
    for (int i = 0; i < 300; i++) put(&t, &all[i], i, 42); /* one hash for all, through growth */
    assert_int_equal(t.count, 300);
    for (int i = 0; i < 300; i++) assert_ptr_equal(find(&t, 42, i), &all[i]);
    assert_null(find(&t, 42, 300));
    assert_true(htab_remove(&t, &all[150].hnode));
    assert_null(find(&t, 42, 150));
    assert_ptr_equal(find(&t, 42, 149), &all[149]);
    assert_ptr_equal(find(&t, 42, 151), &all[151]);
    htab_free(&t);
}

static void test_walk_visits_each_entry_once_and_may_remove(void **state)
{
    (void)state;
    htab t = {0};
    assert_null(htab_next(&t, NULL));
    static item all[1000];
    static int seen[1000];
    for (int i = 0; i < 1000; i++) put(&t, &all[i], i, (uint64_t)(i % 37));
    for (htab_node *n = htab_next(&t, NULL), *next; n; n = next) {
        next = htab_next(&t, n);
        item *it = htab_entry(n, item, hnode);
        seen[it->key]++;
        if (it->key % 3 == 0) assert_true(htab_remove(&t, n));
    }
    for (int i = 0; i < 1000; i++) assert_int_equal(seen[i], 1);
    assert_int_equal(t.count, 1000 - 334);
    int left = 0;
    for (htab_node *n = htab_next(&t, NULL); n; n = htab_next(&t, n)) {
        assert_true(htab_entry(n, item, hnode)->key % 3 != 0);
        left++;
    }
    assert_int_equal(left, 1000 - 334);
    htab_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_finds_inserted_and_not_removed),
        cmocka_unit_test(test_growth_keeps_every_entry_findable),
        cmocka_unit_test(test_colliding_hashes_are_told_apart_by_key),
        cmocka_unit_test(test_walk_visits_each_entry_once_and_may_remove),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
