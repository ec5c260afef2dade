/* Unit tests for the result cache's store and key: part boundaries in the
 * key material, the material compared when two keys share a hash, hits
 * returning the stored bytes, segmented-LRU eviction order, the byte bound
 * honoured exactly, too-big answers refused while being copied, TTL,
 * entries made dead by table-version and epoch bumps (also during the
 * fill), single-flight waiters served on commit and released on abort or
 * refusal, and pinned entries outliving eviction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cache.h"

#define SEC 1000000ULL
#define TTL (300 * SEC)
#define T0 (1000 * SEC)

static pgs_cache_key_builder kb;

static int setup(void **state)
{
    (void)state;
    tablever_reset_for_tests();
    cache_key_init(&kb, 1 << 16);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cache_key_free(&kb);
    return 0;
}

/* A key from one text part; material lives in the builder until the next
 * reset, so callers that need two keys at once copy one (key_copy). */
static pgs_cache_key key_of(const char *text)
{
    cache_key_reset(&kb);
    cache_key_part(&kb, PGS_CKEY_DATABASE, "app", 3);
    cache_key_part(&kb, PGS_CKEY_TEXT, text, strlen(text));
    pgs_cache_key k;
    assert_int_equal(cache_key_finish(&kb, &k), 0);
    return k;
}

typedef struct owned_key {
    pgs_cache_key k;
    uint8_t buf[256];
} owned_key;

static void key_copy(owned_key *o, pgs_cache_key k)
{
    assert_true(k.len <= sizeof(o->buf));
    memcpy(o->buf, k.material, k.len);
    o->k = k;
    o->k.material = o->buf;
}

/* Fills key with answer, depending on the given tables (snapshot now). */
static int put(pgs_cache *c, const pgs_cache_key *k, const char *answer, const pgs_table_id *ids,
               size_t n, uint64_t now)
{
    uint64_t v[8], e;
    tablever_snapshot(ids, n, v, &e);
    pgs_cache_fill *f;
    int rc = cache_fill_begin(c, k, ids, v, n, e, TTL, now, &f);
    if (rc) return rc;
    rc = cache_fill_append(f, answer, strlen(answer));
    if (rc) {
        cache_fill_abort(f);
        return rc;
    }
    return cache_fill_commit(f, now);
}

/* Looks k up; on a hit compares the answer with `want` and releases. */
static enum pgs_cache_result get(pgs_cache *c, const pgs_cache_key *k, uint64_t now,
                                 const char *want)
{
    pgs_cache_lookup_result r;
    enum pgs_cache_result res = cache_lookup(c, k, now, &r);
    if (res == PGS_CACHE_HIT) {
        size_t len;
        const uint8_t *a = cache_entry_answer(r.entry, &len);
        if (want) {
            assert_int_equal(len, strlen(want));
            assert_memory_equal(a, want, len);
        }
        cache_entry_release(c, r.entry);
    }
    return res;
}

static void test_key_parts_are_length_prefixed(void **state)
{
    (void)state;
    pgs_cache_key_builder b2;
    cache_key_init(&b2, 1024);

    cache_key_reset(&kb);
    cache_key_part(&kb, PGS_CKEY_PARAM, "ab", 2);
    cache_key_part(&kb, PGS_CKEY_PARAM, "c", 1);
    pgs_cache_key k1;
    assert_int_equal(cache_key_finish(&kb, &k1), 0);

    cache_key_part(&b2, PGS_CKEY_PARAM, "a", 1);
    cache_key_part(&b2, PGS_CKEY_PARAM, "bc", 2);
    pgs_cache_key k2;
    assert_int_equal(cache_key_finish(&b2, &k2), 0);
    assert_int_equal(k1.len, k2.len);
    assert_memory_not_equal(k1.material, k2.material, k1.len);
    assert_true(k1.lo != k2.lo || k1.hi != k2.hi);

    /* NULL is not the empty value; the tag is part of the key. */
    cache_key_reset(&kb);
    cache_key_null(&kb, PGS_CKEY_PARAM);
    assert_int_equal(cache_key_finish(&kb, &k1), 0);
    cache_key_reset(&b2);
    cache_key_part(&b2, PGS_CKEY_PARAM, "", 0);
    assert_int_equal(cache_key_finish(&b2, &k2), 0);
    assert_true(k1.lo != k2.lo || k1.hi != k2.hi);
    cache_key_reset(&b2);
    cache_key_part(&b2, PGS_CKEY_USER, "x", 1);
    assert_int_equal(cache_key_finish(&b2, &k2), 0);
    cache_key_reset(&kb);
    cache_key_part(&kb, PGS_CKEY_DATABASE, "x", 1);
    assert_int_equal(cache_key_finish(&kb, &k1), 0);
    assert_true(k1.lo != k2.lo || k1.hi != k2.hi);

    /* The same parts give the same key, whatever the builder's past. */
    cache_key_reset(&kb);
    cache_key_part(&kb, PGS_CKEY_TEXT, "select 1", 8);
    assert_int_equal(cache_key_finish(&kb, &k1), 0);
    cache_key_reset(&b2);
    cache_key_part(&b2, PGS_CKEY_TEXT, "select 1", 8);
    assert_int_equal(cache_key_finish(&b2, &k2), 0);
    assert_int_equal(k1.lo, k2.lo);
    assert_int_equal(k1.hi, k2.hi);
    assert_int_equal(k1.len, 5 + 8);
    cache_key_free(&b2);
}

static void test_key_longer_than_its_bound_is_not_cacheable(void **state)
{
    (void)state;
    pgs_cache_key_builder b;
    cache_key_init(&b, 64);
    char big[100];
    memset(big, 'x', sizeof(big));
    cache_key_part(&b, PGS_CKEY_TEXT, big, 59); /* 5 + 59 = 64: fits */
    pgs_cache_key k;
    assert_int_equal(cache_key_finish(&b, &k), 0);
    assert_int_equal(k.len, 64);
    cache_key_part(&b, PGS_CKEY_PARAM, "", 0);
    assert_int_equal(cache_key_finish(&b, &k), PGS_CACHE_E_TOO_BIG);
    /* A reset makes it usable again. */
    cache_key_reset(&b);
    cache_key_part(&b, PGS_CKEY_TEXT, big, 10);
    assert_int_equal(cache_key_finish(&b, &k), 0);
    cache_key_free(&b);
}

static void test_hit_returns_the_stored_answer(void **state)
{
    (void)state;
    pgs_cache *c = cache_new(1 << 20, 1 << 16);
    pgs_table_id t = tablever_id(NULL, "users");
    pgs_cache_key k = key_of("select * from users");
    size_t key_len = k.len;
    assert_int_equal(get(c, &k, T0, NULL), PGS_CACHE_MISS);
    assert_int_equal(put(c, &k, "T...D...C...", &t, 1, T0), 0);
    k = key_of("select * from users");
    assert_int_equal(get(c, &k, T0 + 1, "T...D...C..."), PGS_CACHE_HIT);
    assert_int_equal(get(c, &k, T0 + 2, "T...D...C..."), PGS_CACHE_HIT);
    k = key_of("select * from users where true");
    assert_int_equal(get(c, &k, T0 + 2, NULL), PGS_CACHE_MISS);
    pgs_cache_stats st;
    cache_stats(c, &st);
    assert_int_equal(st.hits, 2);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.stored, 1);
    assert_int_equal(st.bytes, cache_entry_cost(key_len, 1, 12));
    cache_free(c);
}

static void test_same_hash_different_material_is_a_miss(void **state)
{
    (void)state;
    pgs_cache *c = cache_new(1 << 20, 1 << 16);
    owned_key a;
    key_copy(&a, key_of("select secret from alice"));
    owned_key b;
    key_copy(&b, key_of("select secret from bob"));
    /* Force a full 128-bit collision. */
    b.k.lo = a.k.lo;
    b.k.hi = a.k.hi;
    assert_int_equal(put(c, &a.k, "alice's rows", NULL, 0, T0), 0);
    assert_int_equal(get(c, &b.k, T0, NULL), PGS_CACHE_MISS);
    assert_int_equal(put(c, &b.k, "bob's rows", NULL, 0, T0), 0);
    assert_int_equal(get(c, &a.k, T0, "alice's rows"), PGS_CACHE_HIT);
    assert_int_equal(get(c, &b.k, T0, "bob's rows"), PGS_CACHE_HIT);
    /* Same length, one byte apart. */
    owned_key d;
    key_copy(&d, key_of("select secret from alicf"));
    d.k.lo = a.k.lo;
    d.k.hi = a.k.hi;
    assert_int_equal(get(c, &d.k, T0, NULL), PGS_CACHE_MISS);
    /* A pending fill is found by material too: no waiting on another's key. */
    pgs_cache_fill *f;
    assert_int_equal(cache_fill_begin(c, &d.k, NULL, NULL, 0, 0, TTL, T0, &f), 0);
    pgs_cache_lookup_result r;
    assert_int_equal(cache_lookup(c, &a.k, T0, &r), PGS_CACHE_HIT);
    cache_entry_release(c, r.entry);
    assert_int_equal(cache_lookup(c, &d.k, T0, &r), PGS_CACHE_PENDING);
    assert_ptr_equal(r.fill, f);
    cache_fill_abort(f);
    cache_free(c);
}

/* Room for exactly `n` entries of answer "xxxx...": each key has the same
 * length ("q0".."q9") so each entry costs the same. */
static size_t one_cost(void)
{
    pgs_cache_key k = key_of("q0");
    return cache_entry_cost(k.len, 0, 10);
}

static void put_q(pgs_cache *c, int i)
{
    char text[16];
    snprintf(text, sizeof(text), "q%d", i);
    pgs_cache_key k = key_of(text);
    assert_int_equal(put(c, &k, "0123456789", NULL, 0, T0), 0);
}

static bool has_q(pgs_cache *c, int i)
{
    char text[16];
    snprintf(text, sizeof(text), "q%d", i);
    pgs_cache_key k = key_of(text);
    return get(c, &k, T0, NULL) == PGS_CACHE_HIT;
}

static void test_byte_bound_is_honoured_exactly(void **state)
{
    (void)state;
    size_t cost = one_cost();
    pgs_cache *c = cache_new(3 * cost, 1 << 16);
    pgs_cache_stats st;
    for (int i = 0; i < 3; i++) put_q(c, i);
    cache_stats(c, &st);
    assert_int_equal(st.entries, 3);
    assert_int_equal(st.bytes, 3 * cost);
    assert_int_equal(st.evictions, 0);
    for (int i = 3; i < 10; i++) {
        put_q(c, i);
        cache_stats(c, &st);
        assert_int_equal(st.bytes, 3 * cost);
        assert_int_equal(st.entries, 3);
    }
    assert_int_equal(st.evictions, 7);
    /* One byte less: only two fit. */
    cache_set_limits(c, 3 * cost - 1, 1 << 16);
    cache_stats(c, &st);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.bytes, 2 * cost);
    cache_free(c);
}

static void test_eviction_spares_entries_hit_again(void **state)
{
    (void)state;
    size_t cost = one_cost();
    /* 5 entries: the protected segment holds at most 4 (80 %). */
    pgs_cache *c = cache_new(5 * cost, 1 << 16);
    for (int i = 0; i < 5; i++) put_q(c, i);
    assert_true(has_q(c, 0)); /* q0 and q1 promoted */
    assert_true(has_q(c, 1));
    /* A scan of one-off answers evicts q2, q3, q4 (oldest first) and then
     * the scan's own entries, never q0 or q1. */
    for (int i = 5; i < 9; i++) put_q(c, i);
    assert_false(has_q(c, 2));
    assert_false(has_q(c, 3));
    assert_false(has_q(c, 4));
    assert_true(has_q(c, 0));
    assert_true(has_q(c, 1));
    pgs_cache_stats st;
    cache_stats(c, &st);
    assert_int_equal(st.evictions, 4); /* q2, q3, q4, q5 */
    assert_true(has_q(c, 8));
    cache_free(c);
}

static void test_protected_overflow_is_demoted_not_dropped(void **state)
{
    (void)state;
    size_t cost = one_cost();
    pgs_cache *c = cache_new(5 * cost, 1 << 16);
    for (int i = 0; i < 5; i++) put_q(c, i);
    /* Hit all five: the protected segment takes four, the least recent
     * (q0) goes back to probation, first in line for eviction. */
    for (int i = 0; i < 5; i++) assert_true(has_q(c, i));
    put_q(c, 5);
    pgs_cache_stats st;
    cache_stats(c, &st);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.entries, 5);
    assert_false(has_q(c, 0));
    for (int i = 1; i < 6; i++) assert_true(has_q(c, i));
    cache_free(c);
}

typedef struct waiter_box {
    pgs_cache_waiter w;
    pgs_cache *c;
    int calls;
    bool got_entry;
    char answer[64];
} waiter_box;

static void on_fill(pgs_cache_waiter *w, pgs_cache_entry *e)
{
    waiter_box *b = (waiter_box *)w;
    b->calls++;
    b->got_entry = e != NULL;
    if (e) {
        size_t len;
        const uint8_t *a = cache_entry_answer(e, &len);
        assert_true(len < sizeof(b->answer));
        memcpy(b->answer, a, len);
        b->answer[len] = '\0';
        cache_entry_release(b->c, e);
    }
}

static void box_init(waiter_box *b, pgs_cache *c)
{
    memset(b, 0, sizeof(*b));
    b->w.cb = on_fill;
    b->c = c;
}

static void test_answer_above_max_entry_is_refused_while_copying(void **state)
{
    (void)state;
    pgs_cache *c = cache_new(1 << 20, 4096);
    pgs_cache_key k = key_of("select big");
    pgs_cache_fill *f;
    assert_int_equal(cache_fill_begin(c, &k, NULL, NULL, 0, 0, TTL, T0, &f), 0);
    waiter_box wb;
    box_init(&wb, c);
    cache_wait(f, &wb.w);
    char chunk[1000];
    memset(chunk, 'r', sizeof(chunk));
    int rc = 0, appended = 0;
    while ((rc = cache_fill_append(f, chunk, sizeof(chunk))) == 0) appended++;
    assert_int_equal(rc, PGS_CACHE_E_TOO_BIG);
    size_t room = 4096 - cache_entry_cost(k.len, 0, 0);
    assert_int_equal(appended, room / sizeof(chunk));
    /* Refused at once: the waiter goes to the database, lookups miss. */
    assert_int_equal(wb.calls, 1);
    assert_false(wb.got_entry);
    assert_int_equal(get(c, &k, T0, NULL), PGS_CACHE_MISS);
    assert_int_equal(cache_fill_append(f, chunk, 1), PGS_CACHE_E_TOO_BIG);
    assert_int_equal(cache_fill_commit(f, T0), PGS_CACHE_E_TOO_BIG);
    pgs_cache_stats st;
    cache_stats(c, &st);
    assert_int_equal(st.refused, 1);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.fills_pending, 0);

    /* A key that alone passes max_entry is refused at the start. */
    pgs_cache *tiny = cache_new(1 << 20, cache_entry_cost(k.len, 0, 0) - 1);
    assert_int_equal(cache_fill_begin(tiny, &k, NULL, NULL, 0, 0, TTL, T0, &f),
                     PGS_CACHE_E_TOO_BIG);
    assert_null(f);
    cache_free(tiny);

    /* Exactly max_entry fits. */
    char *exact = malloc(room + 1);
    memset(exact, 'e', room);
    exact[room] = '\0';
    assert_int_equal(put(c, &k, exact, NULL, 0, T0), 0);
    cache_stats(c, &st);
    assert_int_equal(st.bytes, 4096);
    assert_int_equal(get(c, &k, T0, NULL), PGS_CACHE_HIT);
    free(exact);
    cache_free(c);
}

static void test_answer_grown_over_many_appends_is_intact(void **state)
{
    (void)state;
    pgs_cache *c = cache_new(1 << 22, 1 << 20);
    pgs_cache_key k = key_of("select many");
    pgs_cache_fill *f;
    assert_int_equal(cache_fill_begin(c, &k, NULL, NULL, 0, 0, TTL, T0, &f), 0);
    uint8_t msg[37];
    for (int i = 0; i < 10000; i++) {
        memset(msg, (uint8_t)i, sizeof(msg));
        assert_int_equal(cache_fill_append(f, msg, sizeof(msg)), 0);
    }
    assert_int_equal(cache_fill_commit(f, T0), 0);
    pgs_cache_lookup_result r;
    assert_int_equal(cache_lookup(c, &k, T0, &r), PGS_CACHE_HIT);
    size_t len;
    const uint8_t *a = cache_entry_answer(r.entry, &len);
    assert_int_equal(len, 37 * 10000);
    for (int i = 0; i < 10000; i++) assert_int_equal(a[i * 37 + 36], (uint8_t)i);
    cache_entry_release(c, r.entry);
    pgs_cache_stats st;
    cache_stats(c, &st);
    assert_int_equal(st.bytes, cache_entry_cost(k.len, 0, 370000));
    cache_free(c);
}

static void test_entry_expires_after_its_ttl(void **state)
{
    (void)state;
    pgs_cache *c = cache_new(1 << 20, 1 << 16);
    pgs_cache_key k = key_of("select 1");
    assert_int_equal(put(c, &k, "one", NULL, 0, T0), 0);
    assert_int_equal(get(c, &k, T0 + TTL - 1, "one"), PGS_CACHE_HIT);
    assert_int_equal(get(c, &k, T0 + TTL, NULL), PGS_CACHE_MISS);
    pgs_cache_stats st;
    cache_stats(c, &st);
    assert_int_equal(st.expired, 1);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    cache_free(c);
}

static void test_bump_of_a_table_read_makes_the_entry_stale(void **state)
{
    (void)state;
    pgs_cache *c = cache_new(1 << 20, 1 << 16);
    pgs_table_id t[2] = {tablever_id(NULL, "orders"), tablever_id(NULL, "customers")};
    pgs_table_id other = tablever_id(NULL, "products");
    owned_key k;
    key_copy(&k, key_of("select from orders join customers"));
    assert_int_equal(put(c, &k.k, "rows", t, 2, T0), 0);
    tablever_bump(&other, 1);
    assert_int_equal(get(c, &k.k, T0, "rows"), PGS_CACHE_HIT);
    tablever_bump(&t[1], 1);
    assert_int_equal(get(c, &k.k, T0, NULL), PGS_CACHE_MISS);
    pgs_cache_stats st;
    cache_stats(c, &st);
    assert_int_equal(st.invalidations, 1);
    assert_int_equal(st.entries, 0);
    /* Filled again under the new versions, it is good again. */
    assert_int_equal(put(c, &k.k, "rows2", t, 2, T0), 0);
    assert_int_equal(get(c, &k.k, T0, "rows2"), PGS_CACHE_HIT);
    cache_free(c);
}

static void test_bump_during_fill_stores_nothing(void **state)
{
    (void)state;
    pgs_cache *c = cache_new(1 << 20, 1 << 16);
    pgs_table_id t = tablever_id(NULL, "accounts");
    pgs_cache_key k = key_of("select balance from accounts");
    uint64_t v, e;
    tablever_snapshot(&t, 1, &v, &e); /* before the query is sent */
    pgs_cache_fill *f;
    assert_int_equal(cache_fill_begin(c, &k, &t, &v, 1, e, TTL, T0, &f), 0);
    waiter_box wb;
    box_init(&wb, c);
    cache_wait(f, &wb.w);
    assert_int_equal(cache_fill_append(f, "old balance", 11), 0);
    tablever_bump(&t, 1); /* a write commits while the answer streams */
    assert_int_equal(cache_fill_commit(f, T0), PGS_CACHE_E_STALE);
    /* The waiter may have seen that write acknowledged: not served. */
    assert_int_equal(wb.calls, 1);
    assert_false(wb.got_entry);
    assert_int_equal(get(c, &k, T0, NULL), PGS_CACHE_MISS);
    pgs_cache_stats st;
    cache_stats(c, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.invalidations, 1);
    cache_free(c);
}

static void test_epoch_bump_kills_every_entry(void **state)
{
    (void)state;
    pgs_cache *c = cache_new(1 << 20, 1 << 16);
    pgs_table_id t = tablever_id(NULL, "a");
    for (int i = 0; i < 3; i++) put_q(c, i);
    pgs_cache_key k = key_of("select from a");
    assert_int_equal(put(c, &k, "a rows", &t, 1, T0), 0);
    assert_true(has_q(c, 1));
    tablever_bump_all();
    for (int i = 0; i < 3; i++) assert_false(has_q(c, i));
    k = key_of("select from a");
    assert_int_equal(get(c, &k, T0, NULL), PGS_CACHE_MISS);
    pgs_cache_stats st;
    cache_stats(c, &st);
    assert_int_equal(st.invalidations, 4);
    assert_int_equal(st.entries, 0);
    cache_free(c);
}

static void test_waiters_are_served_on_commit(void **state)
{
    (void)state;
    pgs_cache *c = cache_new(1 << 20, 1 << 16);
    owned_key k;
    key_copy(&k, key_of("select dashboard"));
    pgs_cache_fill *f;
    assert_int_equal(cache_fill_begin(c, &k.k, NULL, NULL, 0, 0, TTL, T0, &f), 0);
    pgs_cache_fill *f2;
    assert_int_equal(cache_fill_begin(c, &k.k, NULL, NULL, 0, 0, TTL, T0, &f2),
                     PGS_CACHE_E_EXISTS);

    waiter_box w[3];
    for (int i = 0; i < 3; i++) {
        box_init(&w[i], c);
        pgs_cache_lookup_result r;
        assert_int_equal(cache_lookup(c, &k.k, T0, &r), PGS_CACHE_PENDING);
        assert_ptr_equal(r.fill, f);
        cache_wait(r.fill, &w[i].w);
    }
    cache_unwait(&w[1].w); /* its timer fired */
    cache_unwait(&w[1].w); /* twice is harmless */
    assert_int_equal(cache_fill_append(f, "T", 1), 0);
    assert_int_equal(cache_fill_append(f, "DDD", 3), 0);
    assert_int_equal(cache_fill_append(f, "C", 1), 0);
    assert_int_equal(cache_fill_commit(f, T0), 0);
    assert_int_equal(w[0].calls, 1);
    assert_true(w[0].got_entry);
    assert_string_equal(w[0].answer, "TDDDC");
    assert_int_equal(w[1].calls, 0);
    assert_int_equal(w[2].calls, 1);
    assert_string_equal(w[2].answer, "TDDDC");
    assert_int_equal(get(c, &k.k, T0, "TDDDC"), PGS_CACHE_HIT);
    pgs_cache_stats st;
    cache_stats(c, &st);
    assert_int_equal(st.pending, 3);
    assert_int_equal(st.fills, 1);
    assert_int_equal(st.fills_pending, 0);
    cache_free(c);
}

static void test_waiters_are_released_on_abort(void **state)
{
    (void)state;
    pgs_cache *c = cache_new(1 << 20, 1 << 16);
    pgs_cache_key k = key_of("select failing");
    pgs_cache_fill *f;
    assert_int_equal(cache_fill_begin(c, &k, NULL, NULL, 0, 0, TTL, T0, &f), 0);
    waiter_box w[2];
    for (int i = 0; i < 2; i++) {
        box_init(&w[i], c);
        cache_wait(f, &w[i].w);
    }
    assert_int_equal(cache_fill_append(f, "partial", 7), 0);
    cache_fill_abort(f);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(w[i].calls, 1);
        assert_false(w[i].got_entry);
    }
    assert_int_equal(get(c, &k, T0, NULL), PGS_CACHE_MISS);
    /* A new fill of the same key may start. */
    assert_int_equal(put(c, &k, "ok", NULL, 0, T0), 0);
    pgs_cache_stats st;
    cache_stats(c, &st);
    assert_int_equal(st.fills_pending, 0);
    assert_int_equal(st.entries, 1);
    cache_free(c);
}

static void clear_after(pgs_cache_waiter *w, pgs_cache_entry *e)
{
    on_fill(w, e);
    cache_clear(((waiter_box *)w)->c);
}

static void test_waiter_callback_may_clear_the_store(void **state)
{
    (void)state;
    pgs_cache *c = cache_new(1 << 20, 1 << 16);
    pgs_cache_key k = key_of("select shared");
    pgs_cache_fill *f;
    assert_int_equal(cache_fill_begin(c, &k, NULL, NULL, 0, 0, TTL, T0, &f), 0);
    waiter_box w[2];
    box_init(&w[0], c);
    box_init(&w[1], c);
    w[0].w.cb = clear_after;
    cache_wait(f, &w[0].w);
    cache_wait(f, &w[1].w);
    assert_int_equal(cache_fill_append(f, "rows", 4), 0);
    assert_int_equal(cache_fill_commit(f, T0), 0);
    /* The first callback dropped the entry; the second still read it. */
    assert_string_equal(w[0].answer, "rows");
    assert_string_equal(w[1].answer, "rows");
    pgs_cache_stats st;
    cache_stats(c, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    cache_free(c);
}

static void test_pinned_entry_outlives_eviction_and_keeps_its_bytes(void **state)
{
    (void)state;
    size_t cost = one_cost();
    pgs_cache *c = cache_new(2 * cost, 1 << 16);
    put_q(c, 0);
    pgs_cache_key k = key_of("q0");
    pgs_cache_lookup_result r;
    assert_int_equal(cache_lookup(c, &k, T0, &r), PGS_CACHE_HIT);
    cache_clear(c); /* q0 is being written out: it must stay readable */
    pgs_cache_stats st;
    cache_stats(c, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, cost);
    put_q(c, 1);
    /* q0's bytes still count: q2 takes q1's room. */
    k = key_of("q2");
    assert_int_equal(put(c, &k, "0123456789", NULL, 0, T0), 0); /* evicts q1 */
    cache_stats(c, &st);
    assert_int_equal(st.bytes, 2 * cost);
    assert_int_equal(st.evictions, 1);
    cache_set_limits(c, cost, 1 << 16); /* evicts q2; q0 still pinned */
    /* Now nothing but the pinned q0 holds the room: refused, not over the bound. */
    k = key_of("q3");
    assert_int_equal(put(c, &k, "0123456789", NULL, 0, T0), PGS_CACHE_E_NO_ROOM);
    cache_stats(c, &st);
    assert_int_equal(st.bytes, cost);
    assert_int_equal(st.no_room, 1);
    size_t len;
    const uint8_t *a = cache_entry_answer(r.entry, &len);
    assert_int_equal(len, 10);
    assert_memory_equal(a, "0123456789", 10);
    cache_entry_release(c, r.entry);
    cache_stats(c, &st);
    assert_int_equal(st.bytes, 0);
    cache_free(c);
}

/* The Redis tier keeps the Redis versions of a fill's snapshot beside the
 * entry: written during the fill, read back from the hit, counted in the
 * entry's cost; the key, the answer and the deps stay intact; an entry
 * dropped from outside is a miss afterwards. */
static void test_aux_words_are_kept_with_the_entry(void **state)
{
    (void)state;
    pgs_cache *c = cache_new(1 << 20, 1 << 16);
    owned_key k;
    key_copy(&k, key_of("SELECT 1"));
    pgs_table_id ids[2] = {tablever_id(NULL, "a"), tablever_id(NULL, "b")};
    uint64_t v[2], e;
    tablever_snapshot(ids, 2, v, &e);
    pgs_cache_fill *f;
    assert_int_equal(cache_fill_begin_aux(c, &k.k, ids, v, 2, e, 3, TTL, T0, &f), 0);
    size_t n;
    uint64_t *aux = cache_fill_aux(f, &n);
    assert_int_equal(n, 3);
    assert_true(aux[0] == 0 && aux[1] == 0 && aux[2] == 0);
    aux[0] = 7, aux[1] = 8, aux[2] = 9;
    size_t mlen;
    const uint8_t *m = cache_fill_key(f, &mlen);
    assert_int_equal(mlen, k.k.len);
    assert_memory_equal(m, k.k.material, mlen);
    assert_int_equal(cache_fill_append(f, "answer", 6), 0);
    cache_fill_cap_expiry(f, T0 + SEC);
    assert_int_equal(cache_fill_commit(f, T0), 0);

    pgs_cache_lookup_result r;
    assert_int_equal(cache_lookup(c, &k.k, T0 + 1, &r), PGS_CACHE_HIT);
    size_t alen;
    const uint8_t *a = cache_entry_answer(r.entry, &alen);
    assert_int_equal(alen, 6);
    assert_memory_equal(a, "answer", 6);
    const uint64_t *got = cache_entry_aux(r.entry, &n);
    assert_int_equal(n, 3);
    assert_true(got[0] == 7 && got[1] == 8 && got[2] == 9);
    const uint64_t *deps = cache_entry_deps(r.entry, &n);
    assert_int_equal(n, 2);
    assert_true(deps[0] == ids[0] && deps[1] == ids[1]);
    assert_true(cache_entry_expires(r.entry) == T0 + SEC);
    pgs_cache_stats st;
    cache_stats(c, &st);
    assert_int_equal(st.bytes, cache_entry_cost(k.k.len, 2, 6) + 3 * sizeof(uint64_t));

    cache_entry_drop(c, r.entry);
    cache_entry_release(c, r.entry);
    assert_int_equal(cache_lookup(c, &k.k, T0 + 2, &r), PGS_CACHE_MISS);
    cache_stats(c, &st);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.invalidations, 1);
    cache_free(c);
}

/* cache_key_of_material gives the key cache_key_finish gave. */
static void test_key_of_material_matches_the_builder(void **state)
{
    (void)state;
    pgs_cache_key k = key_of("SELECT 2"), again;
    cache_key_of_material(k.material, k.len, &again);
    assert_true(again.lo == k.lo && again.hi == k.hi && again.len == k.len);
}


/* Counters per class (SHOW CACHE's rows per rule): each class counts its
 * own lookups and entries, evictions are charged to the evicted entry's
 * class, the classes add up to the totals, and a pinned entry's bytes
 * stay with its class until its release, even across a reset. */
static void test_counters_are_kept_per_class(void **state)
{
    (void)state;
    size_t cost = one_cost();
    pgs_cache *c = cache_new(3 * cost, 1 << 16);
    (void)cache_class_dirty(c);
    char text[16];
    for (int i = 0; i < 3; i++) {
        snprintf(text, sizeof(text), "q%d", i);
        pgs_cache_key k = key_of(text);
        k.cls = (uint8_t)(i == 0 ? 5 : 9); /* q0 in class 5, q1 and q2 in 9 */
        assert_int_equal(put(c, &k, "0123456789", NULL, 0, T0), 0);
    }
    assert_int_equal(cache_class_dirty(c), (1ull << 5) | (1ull << 9));
    assert_int_equal(cache_class_dirty(c), 0);
    pgs_cache_key k0 = key_of("q0");
    k0.cls = 5;
    assert_int_equal(get(c, &k0, T0, NULL), PGS_CACHE_HIT);
    pgs_cache_key k1 = key_of("q1");
    k1.cls = 9;
    pgs_cache_lookup_result r;
    assert_int_equal(cache_lookup(c, &k1, T0, &r), PGS_CACHE_HIT); /* pinned */
    pgs_cache_key k7 = key_of("q7");
    k7.cls = 9;
    assert_int_equal(get(c, &k7, T0, NULL), PGS_CACHE_MISS);
    pgs_cache_stats s5, s9, all;
    cache_class_stats(c, 5, &s5);
    cache_class_stats(c, 9, &s9);
    assert_int_equal(s5.hits, 1);
    assert_int_equal(s5.misses, 0);
    assert_int_equal(s5.entries, 1);
    assert_int_equal(s5.bytes, cost);
    assert_int_equal(s9.hits, 1);
    assert_int_equal(s9.misses, 1);
    assert_int_equal(s9.entries, 2);
    assert_int_equal(s9.stored, 2);
    /* a class-3 entry evicts the least recent one, q2 (class 9) */
    pgs_cache_key k3 = key_of("q3");
    k3.cls = 3;
    assert_int_equal(put(c, &k3, "0123456789", NULL, 0, T0), 0);
    cache_class_stats(c, 9, &s9);
    assert_int_equal(s9.evictions, 1);
    assert_int_equal(s9.entries, 1);
    cache_stats(c, &all);
    uint64_t entries = 0, bytes = 0, hits = 0;
    for (unsigned k = 0; k < PGS_CACHE_CLASSES; k++) {
        pgs_cache_stats s;
        cache_class_stats(c, k, &s);
        entries += s.entries;
        bytes += s.bytes;
        hits += s.hits;
    }
    assert_int_equal(entries, all.entries);
    assert_int_equal(bytes, all.bytes);
    assert_int_equal(hits, all.hits);
    /* cleared while q1 is pinned: its bytes stay with class 9 until released */
    cache_clear(c);
    cache_class_reset(c);
    cache_class_stats(c, 9, &s9);
    assert_int_equal(s9.entries, 0);
    assert_int_equal(s9.hits, 0);
    assert_int_equal(s9.bytes, cost);
    cache_entry_release(c, r.entry);
    cache_class_stats(c, 9, &s9);
    assert_int_equal(s9.bytes, 0);
    /* an out-of-range class is counted in the last one, never past it */
    pgs_cache_key kx = key_of("qx");
    kx.cls = 200;
    assert_int_equal(get(c, &kx, T0, NULL), PGS_CACHE_MISS);
    pgs_cache_stats last;
    cache_class_stats(c, PGS_CACHE_CLASSES - 1, &last);
    assert_int_equal(last.misses, 1);
    cache_free(c);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_key_parts_are_length_prefixed),
        T(test_key_longer_than_its_bound_is_not_cacheable),
        T(test_hit_returns_the_stored_answer),
        T(test_same_hash_different_material_is_a_miss),
        T(test_byte_bound_is_honoured_exactly),
        T(test_eviction_spares_entries_hit_again),
        T(test_protected_overflow_is_demoted_not_dropped),
        T(test_answer_above_max_entry_is_refused_while_copying),
        T(test_answer_grown_over_many_appends_is_intact),
        T(test_entry_expires_after_its_ttl),
        T(test_bump_of_a_table_read_makes_the_entry_stale),
        T(test_bump_during_fill_stores_nothing),
        T(test_epoch_bump_kills_every_entry),
        T(test_aux_words_are_kept_with_the_entry),
        T(test_key_of_material_matches_the_builder),
        T(test_waiters_are_served_on_commit),
        T(test_waiters_are_released_on_abort),
        T(test_waiter_callback_may_clear_the_store),
        T(test_pinned_entry_outlives_eviction_and_keeps_its_bytes),
        T(test_counters_are_kept_per_class),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
