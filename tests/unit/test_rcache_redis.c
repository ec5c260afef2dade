/* Unit tests for the Redis tier's shared-entry value (rcache_redis.h): an
 * answer stored by one instance is handed to another only for the same key
 * material, the same table ids, exactly the Redis versions read now, and
 * before its expiry; anything else, a truncated or foreign value included,
 * is no answer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rcache_redis.h"

static const uint8_t material[] = "\x01\x03\x00\x00\x00" "app" "\x04\x08\x00\x00\x00" "SELECT 1";
static const uint64_t ids[2] = {0x1111, 0x2222};
static const uint64_t vers[3] = {5, 7, 2}; /* ids', then the epoch */
static const uint8_t answer[] = "T...D...C...";

/* A value as rredis_store writes it, expiring `in_ms` from now (wall). */
static uint8_t *encode(size_t *len, int64_t in_ms)
{
    *len = rredis_entry_size(2, sizeof(material), sizeof(answer));
    uint8_t *v = malloc(*len);
    rredis_entry_encode(v, (uint64_t)((int64_t)(pgs_wall_us() / 1000u) + in_ms), material,
                        sizeof(material), ids, vers, 2, answer, sizeof(answer));
    return v;
}

/* A lookup's request as it is after Redis answered versions `now` and the
 * value v. */
static void answered(rredis_req *q, const uint64_t *now, const uint8_t *v, size_t len)
{
    memset(q, 0, sizeof(*q));
    q->n = 2;
    memcpy(q->ids, ids, sizeof(ids));
    memcpy(q->vers, now, 3 * sizeof(uint64_t));
    q->raw = v;
    q->raw_len = len;
}

static void test_same_key_ids_and_versions_give_the_answer(void **state)
{
    (void)state;
    size_t len, alen;
    uint64_t ttl = 0;
    uint8_t *v = encode(&len, 60000);
    rredis_req q;
    answered(&q, vers, v, len);
    const uint8_t *a = rredis_entry_answer(&q, material, sizeof(material), &alen, &ttl);
    assert_non_null(a);
    assert_int_equal(alen, sizeof(answer));
    assert_memory_equal(a, answer, sizeof(answer));
    assert_true(ttl > 50000 && ttl <= 60000);
    free(v);
}

static void test_other_material_of_the_same_length_is_no_answer(void **state)
{
    (void)state;
    size_t len, alen;
    uint64_t ttl;
    uint8_t *v = encode(&len, 60000);
    uint8_t other[sizeof(material)];
    memcpy(other, material, sizeof(material));
    other[sizeof(other) - 2] ^= 1; /* "SELECT 0": another user's rows, say */
    rredis_req q;
    answered(&q, vers, v, len);
    assert_null(rredis_entry_answer(&q, other, sizeof(other), &alen, &ttl));
    assert_null(rredis_entry_answer(&q, material, sizeof(material) - 1, &alen, &ttl));
    free(v);
}

static void test_a_moved_version_or_epoch_is_no_answer(void **state)
{
    (void)state;
    size_t len, alen;
    uint64_t ttl;
    uint8_t *v = encode(&len, 60000);
    for (int i = 0; i < 3; i++) {
        uint64_t now[3] = {vers[0], vers[1], vers[2]};
        now[i]++;
        rredis_req q;
        answered(&q, now, v, len);
        assert_null(rredis_entry_answer(&q, material, sizeof(material), &alen, &ttl));
    }
    free(v);
}

static void test_other_ids_are_no_answer(void **state)
{
    (void)state;
    size_t len, alen;
    uint64_t ttl;
    uint8_t *v = encode(&len, 60000);
    rredis_req q;
    answered(&q, vers, v, len);
    q.ids[1] = 0x3333; /* this instance's catalog expands the read otherwise */
    assert_null(rredis_entry_answer(&q, material, sizeof(material), &alen, &ttl));
    answered(&q, vers, v, len);
    q.n = 1;
    assert_null(rredis_entry_answer(&q, material, sizeof(material), &alen, &ttl));
    free(v);
}

static void test_expired_truncated_or_foreign_values_are_no_answer(void **state)
{
    (void)state;
    size_t len, alen;
    uint64_t ttl;
    uint8_t *v = encode(&len, -1);
    rredis_req q;
    answered(&q, vers, v, len);
    assert_null(rredis_entry_answer(&q, material, sizeof(material), &alen, &ttl));
    free(v);
    v = encode(&len, 60000);
    /* cut anywhere before the answer: never read past the value */
    size_t head = len - sizeof(answer);
    for (size_t cut = 0; cut < head; cut++) {
        uint8_t *t = malloc(cut ? cut : 1);
        memcpy(t, v, cut);
        answered(&q, vers, t, cut);
        assert_null(rredis_entry_answer(&q, material, sizeof(material), &alen, &ttl));
        free(t);
    }
    v[0] ^= 0xff; /* not our magic */
    answered(&q, vers, v, len);
    assert_null(rredis_entry_answer(&q, material, sizeof(material), &alen, &ttl));
    answered(&q, vers, NULL, 0); /* no value in Redis */
    assert_null(rredis_entry_answer(&q, material, sizeof(material), &alen, &ttl));
    free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_key_ids_and_versions_give_the_answer),
        cmocka_unit_test(test_other_material_of_the_same_length_is_no_answer),
        cmocka_unit_test(test_a_moved_version_or_epoch_is_no_answer),
        cmocka_unit_test(test_other_ids_are_no_answer),
        cmocka_unit_test(test_expired_truncated_or_foreign_values_are_no_answer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
