/* Unit tests for prepared: statement hashing and server-side names, the
 * per-client name -> statement map (names compared by length and bytes,
 * bodies binary-safe, replacement, deletion by name and by hash), and the
 * per-server statement set with its least-recently-used eviction.  Names
 * and bodies are handed over in exact-size heap copies with no terminator,
 * so ASan reports any read past the length given. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "prepared.h"

static void *dup_exact(const void *p, size_t n)
{
    void *c = malloc(n ? n : 1);
    assert_non_null(c);
    if (n) memcpy(c, p, n);
    return c;
}

/* Lookups and puts through an unterminated heap copy of the name. */
static pgs_stmt *get(pgs_stmt_map *m, const char *name)
{
    size_t n = strlen(name);
    char *c = dup_exact(name, n);
    pgs_stmt *st = stmt_map_get(m, c, n);
    free(c);
    return st;
}

static pgs_stmt *put(pgs_stmt_map **m, const char *name, const uint8_t *body, uint32_t len)
{
    size_t n = strlen(name);
    char *c = dup_exact(name, n);
    uint8_t *b = dup_exact(body, len);
    pgs_stmt *st = stmt_map_put(m, c, n, b, len);
    free(b);
    free(c);
    return st;
}

static void del(pgs_stmt_map *m, const char *name)
{
    size_t n = strlen(name);
    char *c = dup_exact(name, n);
    stmt_map_del(m, c, n);
    free(c);
}

static void assert_stmt_body(const pgs_stmt *st, const uint8_t *body, uint32_t len)
{
    assert_non_null(st);
    assert_int_equal(st->body_len, len);
    assert_memory_equal(st->body, body, len);
    assert_true(st->hash == stmt_hash(body, len));
    char name[STMT_SRV_NAME_LEN];
    stmt_srv_name(st->hash, name);
    assert_string_equal(st->srv_name, name);
}

/* Parse bodies: query\0, int16 parameter count, that many int32 OIDs. */
static const uint8_t body_a[] = "SELECT 1\0\0\0";
static const uint8_t body_b[] = "SELECT 2\0\0\0";
static const uint8_t body_int[] = "SELECT $1\0\0\1\0\0\0\x17";  /* one int4 */
static const uint8_t body_text[] = "SELECT $1\0\0\1\0\0\0\x19"; /* one text */
#define BODY(b) (b), (uint32_t)(sizeof(b) - 1)

/* --- hashing and names --- */

static void test_hash_stable_and_body_sensitive(void **state)
{
    (void)state;
    uint8_t *copy = dup_exact(body_a, sizeof(body_a) - 1);
    uint64_t h = stmt_hash(BODY(body_a));
    assert_true(h == stmt_hash(copy, sizeof(body_a) - 1));
    assert_true(h == stmt_hash(BODY(body_a)));
    free(copy);

    assert_true(h != stmt_hash(BODY(body_b)));
    /* Bodies that differ only after the query's NUL (parameter types). */
    assert_true(stmt_hash(BODY(body_int)) != stmt_hash(BODY(body_text)));
    /* A prefix is a different body. */
    assert_true(h != stmt_hash(body_a, sizeof(body_a) - 2));
    assert_true(h != 0);
    assert_true(stmt_hash(NULL, 0) != 0);
}

static void test_srv_name_is_pgs_and_16_lower_hex(void **state)
{
    (void)state;
    char name[STMT_SRV_NAME_LEN];
    memset(name, 'X', sizeof(name));
    stmt_srv_name(0x0123456789abcdefull, name);
    assert_string_equal(name, "pgs_0123456789abcdef");
    stmt_srv_name(1, name);
    assert_string_equal(name, "pgs_0000000000000001");
    stmt_srv_name(UINT64_MAX, name);
    assert_string_equal(name, "pgs_ffffffffffffffff");
    stmt_srv_name(0xABCDEF0000000000ull, name);
    assert_string_equal(name, "pgs_abcdef0000000000");

    stmt_srv_name(stmt_hash(BODY(body_int)), name);
    assert_int_equal(strlen(name), STMT_SRV_NAME_LEN - 1);
    assert_memory_equal(name, "pgs_", 4);
    for (int i = 4; i < STMT_SRV_NAME_LEN - 1; i++)
        assert_non_null(strchr("0123456789abcdef", name[i]));
}

/* --- the client's map --- */

static void test_map_put_get_count(void **state)
{
    (void)state;
    pgs_stmt_map *m = NULL;
    assert_int_equal(stmt_map_count(m), 0);
    assert_null(get(m, "S_1"));

    assert_stmt_body(put(&m, "S_1", BODY(body_a)), BODY(body_a));
    assert_non_null(m);
    assert_stmt_body(put(&m, "S_2", BODY(body_b)), BODY(body_b));
    assert_stmt_body(put(&m, "", BODY(body_int)), BODY(body_int)); /* the unnamed one */
    assert_int_equal(stmt_map_count(m), 3);
    assert_stmt_body(get(m, "S_1"), BODY(body_a));
    assert_stmt_body(get(m, "S_2"), BODY(body_b));
    assert_stmt_body(get(m, ""), BODY(body_int));
    assert_null(get(m, "S_3"));
    assert_null(get(m, "s_1")); /* names are case-sensitive */
    stmt_map_free(m);
}

static void test_map_put_existing_name_replaces(void **state)
{
    (void)state;
    pgs_stmt_map *m = NULL;
    put(&m, "S_1", BODY(body_a));
    uint64_t old = get(m, "S_1")->hash;
    pgs_stmt *st = put(&m, "S_1", BODY(body_b));
    assert_stmt_body(st, BODY(body_b));
    assert_true(st->hash != old);
    assert_int_equal(stmt_map_count(m), 1);
    assert_ptr_equal(get(m, "S_1"), st);
    assert_stmt_body(get(m, "S_1"), BODY(body_b));

    /* Replacing with the same body keeps one entry too. */
    put(&m, "S_1", BODY(body_b));
    assert_int_equal(stmt_map_count(m), 1);
    stmt_map_free(m);
}

static void test_map_names_compared_by_length_and_bytes(void **state)
{
    (void)state;
    pgs_stmt_map *m = NULL;
    put(&m, "S_10", BODY(body_b));
    assert_null(get(m, "S_1"));  /* a prefix of a stored name is not a match */
    assert_null(get(m, "S_100")); /* nor is a longer name */
    put(&m, "S_1", BODY(body_a));
    assert_int_equal(stmt_map_count(m), 2);
    assert_stmt_body(get(m, "S_1"), BODY(body_a));
    assert_stmt_body(get(m, "S_10"), BODY(body_b));

    /* The length given decides, not a terminator: "S_10" cut to 3 is S_1. */
    assert_stmt_body(stmt_map_get(m, "S_10", 3), BODY(body_a));
    assert_null(stmt_map_get(m, "S_1", 2));

    del(m, "S_1");
    assert_int_equal(stmt_map_count(m), 1);
    assert_null(get(m, "S_1"));
    assert_stmt_body(get(m, "S_10"), BODY(body_b));
    del(m, "S_1"); /* already gone: no-op */
    del(m, "S_");
    assert_int_equal(stmt_map_count(m), 1);
    stmt_map_free(m);
}

static void test_map_bodies_are_binary_safe_copies(void **state)
{
    (void)state;
    uint8_t body[] = {'S', 'E', 'L', 'E', 'C', 'T', ' ', '$', '1', 0,
                      0,   2,   0,   0,   0,   0,   0xff, 0xff, 0xff, 0xfe};
    pgs_stmt_map *m = NULL;
    pgs_stmt *st = put(&m, "bin", body, sizeof(body));
    assert_stmt_body(st, body, sizeof(body));

    uint8_t other[sizeof(body)];
    memcpy(other, body, sizeof(body));
    other[sizeof(body) - 1] = 0xfd; /* differs only in the last OID byte */
    pgs_stmt *st2 = put(&m, "bin2", other, sizeof(other));
    assert_true(st2->hash != get(m, "bin")->hash);
    assert_string_not_equal(st2->srv_name, get(m, "bin")->srv_name);

    /* The map holds its own copy: the caller's buffer can change. */
    memset(body, 0, sizeof(body));
    st = get(m, "bin");
    assert_int_equal(st->body_len, sizeof(body));
    assert_int_equal(st->body[19], 0xfe);
    assert_int_equal(st->body[16], 0xff);
    stmt_map_free(m);
}

static void test_map_del_hash_removes_every_name_with_it(void **state)
{
    (void)state;
    pgs_stmt_map *m = NULL;
    put(&m, "S_1", BODY(body_a));
    put(&m, "S_2", BODY(body_b));
    put(&m, "S_3", BODY(body_a));
    put(&m, "S_4", BODY(body_a));
    stmt_map_del_hash(m, stmt_hash(BODY(body_a)));
    assert_int_equal(stmt_map_count(m), 1);
    assert_null(get(m, "S_1"));
    assert_null(get(m, "S_3"));
    assert_null(get(m, "S_4"));
    assert_stmt_body(get(m, "S_2"), BODY(body_b));
    stmt_map_del_hash(m, stmt_hash(BODY(body_int))); /* not present: no-op */
    assert_int_equal(stmt_map_count(m), 1);
    stmt_map_free(m);
}

static void test_map_clear_and_reuse(void **state)
{
    (void)state;
    pgs_stmt_map *m = NULL;
    char name[16];
    for (int i = 0; i < 40; i++) { /* past several capacity doublings */
        snprintf(name, sizeof(name), "S_%d", i);
        put(&m, name, BODY(body_a));
    }
    assert_int_equal(stmt_map_count(m), 40);
    assert_stmt_body(get(m, "S_0"), BODY(body_a));
    assert_stmt_body(get(m, "S_39"), BODY(body_a));
    stmt_map_clear(m);
    assert_int_equal(stmt_map_count(m), 0);
    assert_null(get(m, "S_0"));
    put(&m, "S_0", BODY(body_b));
    assert_int_equal(stmt_map_count(m), 1);
    assert_stmt_body(get(m, "S_0"), BODY(body_b));
    stmt_map_free(m);
}

static void test_map_functions_accept_null_map(void **state)
{
    (void)state;
    assert_null(stmt_map_get(NULL, "S_1", 3));
    stmt_map_del(NULL, "S_1", 3);
    stmt_map_del_hash(NULL, 1);
    stmt_map_clear(NULL);
    assert_int_equal(stmt_map_count(NULL), 0);
    stmt_map_free(NULL);
}

/* --- the server's set --- */

static void test_set_add_has_del_count_clear(void **state)
{
    (void)state;
    pgs_stmt_set *s = NULL;
    uint64_t ev = 0xdead;
    assert_false(stmt_set_has(s, 1));
    assert_int_equal(stmt_set_count(s), 0);
    assert_false(stmt_set_add(&s, 1, 10, &ev));
    assert_non_null(s);
    assert_false(stmt_set_add(&s, 2, 10, &ev));
    assert_false(stmt_set_add(&s, 3, 10, &ev));
    assert_true(ev == 0xdead); /* untouched without an eviction */
    assert_int_equal(stmt_set_count(s), 3);
    assert_true(stmt_set_has(s, 1));
    assert_true(stmt_set_has(s, 2));
    assert_true(stmt_set_has(s, 3));
    assert_false(stmt_set_has(s, 4));

    stmt_set_del(s, 2);
    assert_int_equal(stmt_set_count(s), 2);
    assert_false(stmt_set_has(s, 2));
    assert_true(stmt_set_has(s, 1));
    assert_true(stmt_set_has(s, 3));
    stmt_set_del(s, 2); /* already gone */
    assert_int_equal(stmt_set_count(s), 2);

    stmt_set_clear(s);
    assert_int_equal(stmt_set_count(s), 0);
    assert_false(stmt_set_has(s, 1));
    assert_false(stmt_set_add(&s, 1, 10, &ev));
    assert_true(stmt_set_has(s, 1));
    assert_int_equal(stmt_set_count(s), 1);
    stmt_set_free(s);

    stmt_set_del(NULL, 1);
    stmt_set_clear(NULL);
    stmt_set_free(NULL);
}

static void test_set_adding_existing_hash_returns_false_and_does_not_grow(void **state)
{
    (void)state;
    pgs_stmt_set *s = NULL;
    uint64_t ev = 0xdead;
    assert_false(stmt_set_add(&s, 7, 2, &ev));
    assert_false(stmt_set_add(&s, 8, 2, &ev));
    /* At max already: an existing hash must not evict anything. */
    assert_false(stmt_set_add(&s, 7, 2, &ev));
    assert_false(stmt_set_add(&s, 8, 2, &ev));
    assert_true(ev == 0xdead);
    assert_int_equal(stmt_set_count(s), 2);
    assert_true(stmt_set_has(s, 7));
    assert_true(stmt_set_has(s, 8));
    stmt_set_free(s);
}

static void test_set_lru_evicts_least_recently_used(void **state)
{
    (void)state;
    pgs_stmt_set *s = NULL;
    uint64_t ev = 0;
    const uint64_t a = 0xa, b = 0xb, c = 0xc, d = 0xd;
    assert_false(stmt_set_add(&s, a, 3, &ev));
    assert_false(stmt_set_add(&s, b, 3, &ev));
    assert_false(stmt_set_add(&s, c, 3, &ev));
    assert_true(stmt_set_has(s, a)); /* a is now more recent than b */
    assert_true(stmt_set_add(&s, d, 3, &ev));
    assert_true(ev == b);
    assert_int_equal(stmt_set_count(s), 3);
    assert_false(stmt_set_has(s, b));
    assert_true(stmt_set_has(s, a));
    assert_true(stmt_set_has(s, c));
    assert_true(stmt_set_has(s, d));
    stmt_set_free(s);
}

static void test_set_lru_without_touch_evicts_oldest(void **state)
{
    (void)state;
    pgs_stmt_set *s = NULL;
    uint64_t ev = 0;
    stmt_set_add(&s, 1, 3, &ev);
    stmt_set_add(&s, 2, 3, &ev);
    stmt_set_add(&s, 3, 3, &ev);
    assert_true(stmt_set_add(&s, 4, 3, &ev));
    assert_true(ev == 1);
    assert_true(stmt_set_add(&s, 5, 3, &ev));
    assert_true(ev == 2);
    assert_int_equal(stmt_set_count(s), 3);
    stmt_set_free(s);
}

/* Re-adding a hash that is present counts as a use, like stmt_set_has. */
static void test_set_lru_readd_counts_as_use(void **state)
{
    (void)state;
    pgs_stmt_set *s = NULL;
    uint64_t ev = 0;
    stmt_set_add(&s, 1, 3, &ev);
    stmt_set_add(&s, 2, 3, &ev);
    stmt_set_add(&s, 3, 3, &ev);
    assert_false(stmt_set_add(&s, 1, 3, &ev));
    assert_true(stmt_set_add(&s, 4, 3, &ev));
    assert_true(ev == 2);
    stmt_set_free(s);
}

/* After a deletion the set is below max: the next add evicts nothing. */
static void test_set_del_makes_room(void **state)
{
    (void)state;
    pgs_stmt_set *s = NULL;
    uint64_t ev = 0xdead;
    stmt_set_add(&s, 1, 2, &ev);
    stmt_set_add(&s, 2, 2, &ev);
    stmt_set_del(s, 1);
    assert_false(stmt_set_add(&s, 3, 2, &ev));
    assert_true(ev == 0xdead);
    assert_true(stmt_set_has(s, 2));
    assert_true(stmt_set_has(s, 3));
    stmt_set_free(s);
}

static void test_set_max_zero_is_unbounded(void **state)
{
    (void)state;
    pgs_stmt_set *s = NULL;
    uint64_t ev = 0xdead;
    for (uint64_t h = 1; h <= 1000; h++) assert_false(stmt_set_add(&s, h, 0, &ev));
    assert_true(ev == 0xdead);
    assert_int_equal(stmt_set_count(s), 1000);
    for (uint64_t h = 1; h <= 1000; h++) assert_true(stmt_set_has(s, h));
    stmt_set_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_stable_and_body_sensitive),
        cmocka_unit_test(test_srv_name_is_pgs_and_16_lower_hex),
        cmocka_unit_test(test_map_put_get_count),
        cmocka_unit_test(test_map_put_existing_name_replaces),
        cmocka_unit_test(test_map_names_compared_by_length_and_bytes),
        cmocka_unit_test(test_map_bodies_are_binary_safe_copies),
        cmocka_unit_test(test_map_del_hash_removes_every_name_with_it),
        cmocka_unit_test(test_map_clear_and_reuse),
        cmocka_unit_test(test_map_functions_accept_null_map),
        cmocka_unit_test(test_set_add_has_del_count_clear),
        cmocka_unit_test(test_set_adding_existing_hash_returns_false_and_does_not_grow),
        cmocka_unit_test(test_set_lru_evicts_least_recently_used),
        cmocka_unit_test(test_set_lru_without_touch_evicts_oldest),
        cmocka_unit_test(test_set_lru_readd_counts_as_use),
        cmocka_unit_test(test_set_del_makes_room),
        cmocka_unit_test(test_set_max_zero_is_unbounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
