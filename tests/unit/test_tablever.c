/* Unit tests for tablever: ids from bare lower-cased names, versions and
 * the epoch, validity of a snapshot, the overflow slot once the table is
 * full, and one thread bumping while others snapshot and check validity
 * (every bump that happened-before a snapshot is seen by it). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tablever.h"

static int reset(void **state)
{
    (void)state;
    tablever_reset_for_tests();
    return 0;
}

static void test_id_is_the_lower_cased_bare_name(void **state)
{
    (void)state;
    pgs_table_id users = tablever_id(NULL, "users");
    assert_int_equal(tablever_id("public", "users"), users);
    assert_int_equal(tablever_id("app", "Users"), users);
    assert_int_equal(tablever_id_n("USERS", 5), users);
    assert_int_not_equal(tablever_id(NULL, "user"), users);
    assert_int_not_equal(tablever_id(NULL, "users2"), users);
    assert_int_not_equal(tablever_id(NULL, ""), 0);
    assert_int_equal(tablever_id(NULL, NULL), tablever_id(NULL, ""));
}

static void test_unbumped_table_is_version_zero_and_bump_moves_it(void **state)
{
    (void)state;
    pgs_table_id ids[2] = {tablever_id(NULL, "a"), tablever_id(NULL, "b")};
    uint64_t v[2], e;
    tablever_snapshot(ids, 2, v, &e);
    assert_int_equal(v[0], 0);
    assert_int_equal(v[1], 0);
    assert_true(tablever_valid(ids, v, 2, e));

    tablever_bump(&ids[1], 1);
    assert_false(tablever_valid(ids, v, 2, e));
    assert_true(tablever_valid(ids, v, 1, e)); /* a alone did not move */

    uint64_t w[2];
    tablever_snapshot(ids, 2, w, NULL);
    assert_int_equal(w[0], 0);
    assert_int_equal(w[1], 1);
    assert_true(tablever_valid(ids, w, 2, e));
}

static void test_epoch_bump_invalidates_every_snapshot(void **state)
{
    (void)state;
    pgs_table_id id = tablever_id(NULL, "t");
    uint64_t v, e;
    tablever_snapshot(&id, 1, &v, &e);
    assert_true(tablever_valid(&id, &v, 1, e));
    assert_true(tablever_valid(NULL, NULL, 0, e));
    tablever_bump_all();
    assert_false(tablever_valid(&id, &v, 1, e));
    assert_false(tablever_valid(NULL, NULL, 0, e));
    assert_int_equal(tablever_epoch(), e + 1);
}

static void test_full_table_overflow_is_used_and_coarse(void **state)
{
    (void)state;
    for (uint64_t i = 0; i < PGS_TABLEVER_CAPACITY; i++) {
        /* Every id hashes to slot i exactly: the table is full after. */
        pgs_table_id id = ((uint64_t)(i + 1) << 32) | i;
        tablever_bump(&id, 1);
    }
    pgs_tablever_stats st;
    tablever_stats(&st);
    assert_int_equal(st.ids, PGS_TABLEVER_CAPACITY);
    assert_int_equal(st.overflow, 0);

    pgs_table_id a = tablever_id(NULL, "late_a"), b = tablever_id(NULL, "late_b");
    uint64_t va, vb, e;
    tablever_snapshot(&a, 1, &va, &e);
    tablever_snapshot(&b, 1, &vb, NULL);
    assert_int_equal(va, vb); /* both read the overflow version */
    tablever_bump(&b, 1);
    tablever_stats(&st);
    assert_int_equal(st.overflow, 1);
    /* A bump of b kills answers over a too: coarser, never wrong. */
    assert_false(tablever_valid(&a, &va, 1, e));
    assert_false(tablever_valid(&b, &vb, 1, e));

    /* An id placed before the table filled keeps its own slot. */
    pgs_table_id first = (uint64_t)1 << 32;
    uint64_t vf;
    tablever_snapshot(&first, 1, &vf, NULL);
    assert_int_equal(vf, 1);
    assert_true(tablever_valid(&first, &vf, 1, e));
}

/* One thread bumps ids round-robin and, after each bump, publishes how
 * many bumps of that id are done (release).  Readers take that count
 * (acquire), then a snapshot: the snapshot must show at least that many
 * bumps, and a snapshot older than a later published count is invalid. */
#define MT_IDS 8
#define MT_BUMPS 20000
#define MT_READERS 2

static _Atomic uint64_t published[MT_IDS];
static _Atomic int writer_done;
static pgs_table_id mt_ids[MT_IDS];

static void *bumper(void *arg)
{
    (void)arg;
    for (int i = 0; i < MT_BUMPS; i++) {
        int k = i % MT_IDS;
        tablever_bump(&mt_ids[k], 1);
        atomic_fetch_add_explicit(&published[k], 1, memory_order_release);
        if (i % 1000 == 999) tablever_bump_all();
    }
    atomic_store_explicit(&writer_done, 1, memory_order_release);
    return NULL;
}

static void *reader(void *arg)
{
    long *failures = arg;
    uint64_t last[MT_IDS] = {0};
    while (!atomic_load_explicit(&writer_done, memory_order_acquire)) {
        uint64_t seen[MT_IDS], v[MT_IDS], e;
        for (int k = 0; k < MT_IDS; k++)
            seen[k] = atomic_load_explicit(&published[k], memory_order_acquire);
        tablever_snapshot(mt_ids, MT_IDS, v, &e);
        for (int k = 0; k < MT_IDS; k++) {
            if (v[k] < seen[k]) (*failures)++; /* a bump that happened-before was missed */
            if (v[k] < last[k]) (*failures)++; /* versions never go back */
            last[k] = v[k];
        }
        /* Once a later bump is published, the snapshot must be invalid. */
        for (int k = 0; k < MT_IDS; k++) {
            uint64_t now = atomic_load_explicit(&published[k], memory_order_acquire);
            if (now > v[k] && tablever_valid(mt_ids, v, MT_IDS, e)) (*failures)++;
        }
    }
    return NULL;
}

static void test_bumps_on_one_thread_are_seen_by_snapshots_on_others(void **state)
{
    (void)state;
    for (int k = 0; k < MT_IDS; k++) {
        char name[16];
        snprintf(name, sizeof(name), "mt_%d", k);
        mt_ids[k] = tablever_id(NULL, name);
        atomic_store(&published[k], 0);
    }
    atomic_store(&writer_done, 0);
    pthread_t w, r[MT_READERS];
    long failures[MT_READERS] = {0};
    for (int i = 0; i < MT_READERS; i++)
        assert_int_equal(pthread_create(&r[i], NULL, reader, &failures[i]), 0);
    assert_int_equal(pthread_create(&w, NULL, bumper, NULL), 0);
    pthread_join(w, NULL);
    for (int i = 0; i < MT_READERS; i++) {
        pthread_join(r[i], NULL);
        assert_int_equal(failures[i], 0);
    }
    uint64_t v[MT_IDS];
    tablever_snapshot(mt_ids, MT_IDS, v, NULL);
    for (int k = 0; k < MT_IDS; k++) assert_int_equal(v[k], MT_BUMPS / MT_IDS);
    assert_int_equal(tablever_epoch(), MT_BUMPS / 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_id_is_the_lower_cased_bare_name, reset),
        cmocka_unit_test_setup(test_unbumped_table_is_version_zero_and_bump_moves_it, reset),
        cmocka_unit_test_setup(test_epoch_bump_invalidates_every_snapshot, reset),
        cmocka_unit_test_setup(test_full_table_overflow_is_used_and_coarse, reset),
        cmocka_unit_test_setup(test_bumps_on_one_thread_are_seen_by_snapshots_on_others, reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
