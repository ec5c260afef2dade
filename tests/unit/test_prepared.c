/* Unit tests for prepared: statement hashing and server-side names, the
 * per-worker interning table (identity is the full body: a forced hash
 * collision never makes two texts share an id or a server-side name), the
 * per-client name -> statement map (names compared by length and bytes,
 * bodies binary-safe, replacement, deletion by name and by id, count and
 * byte bounds), the statements and portals answered locally, and the
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

static pgs_stmt_tab *g_tab; /* one table per test (setup/teardown) */

static int tab_setup(void **state)
{
    (void)state;
    g_tab = stmt_tab_new(NULL);
    return 0;
}

static int tab_teardown(void **state)
{
    (void)state;
    assert_int_equal(stmt_tab_count(g_tab), 0); /* every reference given back */
    stmt_tab_free(g_tab);
    g_tab = NULL;
    return 0;
}

static int put_limited(pgs_stmt_map **m, const char *name, const uint8_t *body, uint32_t len,
                       uint32_t max_count, uint64_t max_bytes, pgs_stmt **out)
{
    size_t n = strlen(name);
    char *c = dup_exact(name, n);
    uint8_t *b = dup_exact(body, len);
    int rc = stmt_map_put(m, g_tab, c, n, b, len, max_count, max_bytes, out);
    free(b);
    free(c);
    return rc;
}

static pgs_stmt *put(pgs_stmt_map **m, const char *name, const uint8_t *body, uint32_t len)
{
    pgs_stmt *st = NULL;
    assert_int_equal(put_limited(m, name, body, len, 0, 0, &st), 0);
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
    assert_true(st->hnode.hash == stmt_hash(body, len));
    char name[STMT_SRV_NAME_LEN];
    stmt_srv_name(st->id, name);
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

    stmt_srv_name(12345, name);
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
    uint64_t old = get(m, "S_1")->id;
    pgs_stmt *st = put(&m, "S_1", BODY(body_b));
    assert_stmt_body(st, BODY(body_b));
    assert_true(st->id != old);
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
    assert_true(st2->id != get(m, "bin")->id);
    assert_string_not_equal(st2->srv_name, get(m, "bin")->srv_name);

    /* The map holds its own copy: the caller's buffer can change. */
    memset(body, 0, sizeof(body));
    st = get(m, "bin");
    assert_int_equal(st->body_len, sizeof(body));
    assert_int_equal(st->body[19], 0xfe);
    assert_int_equal(st->body[16], 0xff);
    stmt_map_free(m);
}

static void test_map_del_id_removes_every_name_with_it(void **state)
{
    (void)state;
    pgs_stmt_map *m = NULL;
    put(&m, "S_1", BODY(body_a));
    put(&m, "S_2", BODY(body_b));
    put(&m, "S_3", BODY(body_a));
    put(&m, "S_4", BODY(body_a));
    uint64_t id_a = get(m, "S_1")->id;
    assert_true(get(m, "S_3")->id == id_a); /* one body, one id */
    assert_ptr_equal(get(m, "S_3"), get(m, "S_1"));
    stmt_map_del_id(m, id_a);
    assert_int_equal(stmt_map_count(m), 1);
    assert_null(get(m, "S_1"));
    assert_null(get(m, "S_3"));
    assert_null(get(m, "S_4"));
    assert_stmt_body(get(m, "S_2"), BODY(body_b));
    stmt_map_del_id(m, id_a + 1000000); /* not present: no-op */
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
    stmt_map_del_id(NULL, 1);
    assert_null(stmt_map_name_of(NULL, 1));
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

/* --- identity: the full body, never the hash alone --- */

static uint64_t colliding_hash(const uint8_t *body, uint32_t len)
{
    (void)body;
    (void)len;
    return 42; /* every body collides */
}

static void test_colliding_hashes_never_share_a_statement(void **state)
{
    (void)state;
    pgs_stmt_tab *t = stmt_tab_new(colliding_hash);
    pgs_stmt *a = stmt_intern(t, BODY(body_a));
    pgs_stmt *b = stmt_intern(t, BODY(body_b));
    pgs_stmt *i = stmt_intern(t, BODY(body_int));
    pgs_stmt *x = stmt_intern(t, BODY(body_text));
    assert_true(a->hnode.hash == b->hnode.hash);
    assert_true(a != b && a->id != b->id && i->id != x->id && a->id != i->id);
    assert_string_not_equal(a->srv_name, b->srv_name);
    assert_string_not_equal(i->srv_name, x->srv_name); /* differ in parameter types only */
    assert_memory_equal(b->body, body_b, sizeof(body_b) - 1);
    assert_int_equal(stmt_tab_count(t), 4);

    /* The same body again finds its own entry, not a colliding one. */
    pgs_stmt *b2 = stmt_intern(t, BODY(body_b));
    assert_ptr_equal(b2, b);
    assert_int_equal(b->refs, 2);
    stmt_unref(t, b2);

    /* Dropping one of the chain keeps the others findable. */
    uint64_t a_id = a->id;
    stmt_unref(t, a);
    assert_int_equal(stmt_tab_count(t), 3);
    pgs_stmt *x2 = stmt_intern(t, BODY(body_text));
    assert_ptr_equal(x2, x);
    stmt_unref(t, x2);
    /* A body interned again after it was freed gets a new id: a server
     * that still has the old name can never run it for another text. */
    pgs_stmt *a2 = stmt_intern(t, BODY(body_a));
    assert_true(a2->id != a_id);
    assert_true(a2->id > x->id);
    stmt_unref(t, a2);
    stmt_unref(t, b);
    stmt_unref(t, i);
    stmt_unref(t, x);
    assert_int_equal(stmt_tab_count(t), 0);
    stmt_tab_free(t);
}

/* Two clients' maps over one colliding table: each Bind of S_1 resolves to
 * its own client's text, and the server set tells them apart. */
static void test_collision_two_clients_two_server_statements(void **state)
{
    (void)state;
    pgs_stmt_tab *t = stmt_tab_new(colliding_hash);
    pgs_stmt_map *c1 = NULL, *c2 = NULL;
    pgs_stmt *s1 = NULL, *s2 = NULL;
    assert_int_equal(stmt_map_put(&c1, t, "S_1", 3, BODY(body_a), 0, 0, &s1), 0);
    assert_int_equal(stmt_map_put(&c2, t, "S_1", 3, BODY(body_b), 0, 0, &s2), 0);
    assert_true(s1->id != s2->id);
    pgs_stmt_set *srv = NULL;
    uint64_t ev;
    assert_false(stmt_set_add(&srv, s1->id, 10, &ev));
    assert_false(stmt_set_has(srv, s2->id)); /* client 2's text is not prepared */
    assert_memory_equal(stmt_map_get(c2, "S_1", 3)->body, body_b, sizeof(body_b) - 1);
    assert_memory_equal(stmt_map_get(c1, "S_1", 3)->body, body_a, sizeof(body_a) - 1);
    stmt_set_free(srv);
    stmt_map_free(c1);
    stmt_map_free(c2);
    assert_int_equal(stmt_tab_count(t), 0);
    stmt_tab_free(t);
}

static void test_map_many_names_found_after_growth(void **state)
{
    (void)state;
    pgs_stmt_map *m = NULL;
    char name[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof(name), "S_%d", i);
        put(&m, name, BODY(body_int));
    }
    assert_int_equal(stmt_map_count(m), 5000);
    assert_int_equal(stmt_tab_count(g_tab), 1); /* one body shared by all names */
    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof(name), "S_%d", i);
        assert_non_null(get(m, name));
    }
    assert_string_equal(stmt_map_name_of(m, get(m, "S_7")->id) ? "found" : "", "found");
    stmt_map_free(m);
}

static void test_map_count_bound(void **state)
{
    (void)state;
    pgs_stmt_map *m = NULL;
    pgs_stmt *st = NULL;
    assert_int_equal(put_limited(&m, "S_1", BODY(body_a), 2, 0, &st), 0);
    assert_int_equal(put_limited(&m, "S_2", BODY(body_b), 2, 0, &st), 0);
    assert_int_equal(put_limited(&m, "S_3", BODY(body_a), 2, 0, &st), STMT_LIMIT_COUNT);
    assert_int_equal(stmt_map_count(m), 2);
    assert_null(get(m, "S_3"));
    /* replacing an existing name is not a new statement */
    assert_int_equal(put_limited(&m, "S_1", BODY(body_int), 2, 0, &st), 0);
    del(m, "S_2");
    assert_int_equal(put_limited(&m, "S_3", BODY(body_a), 2, 0, &st), 0);
    stmt_map_free(m);
}

static void test_map_byte_bound_counts_names_and_bodies(void **state)
{
    (void)state;
    pgs_stmt_map *m = NULL;
    pgs_stmt *st = NULL;
    const uint64_t one = 3 + sizeof(body_a) - 1; /* "S_1" + body */
    assert_int_equal(put_limited(&m, "S_1", BODY(body_a), 0, 2 * one, &st), 0);
    assert_int_equal(put_limited(&m, "S_2", BODY(body_a), 0, 2 * one, &st), 0);
    assert_true(stmt_map_bytes(m) == 2 * one);
    assert_int_equal(put_limited(&m, "S_3", BODY(body_a), 0, 2 * one, &st), STMT_LIMIT_BYTES);
    assert_int_equal(stmt_map_count(m), 2);
    /* a longer body under an existing name goes past the bound too */
    assert_int_equal(put_limited(&m, "S_1", BODY(body_int), 0, 2 * one, &st), STMT_LIMIT_BYTES);
    assert_stmt_body(get(m, "S_1"), BODY(body_a));
    stmt_map_clear(m);
    assert_true(stmt_map_bytes(m) == 0);
    stmt_map_free(m);
}

/* --- statements pgscale answers itself --- */

static void test_local_kind_of_clearing_commands(void **state)
{
    (void)state;
    char name[64];
    static const uint8_t dall[] = "  /* c */ deallocate   ALL ;\0\0\0";
    static const uint8_t dprep[] = "DEALLOCATE PREPARE S_1\0\0\0";
    static const uint8_t dname[] = "-- x\nDeAllocate \"My\"\0\0\0";
    static const uint8_t disc[] = "DISCARD ALL\0\0\0";
    static const uint8_t plans[] = "DISCARD PLANS\0\0\0";
    static const uint8_t sel[] = "SELECT 'DEALLOCATE ALL'\0\0\0";
    assert_int_equal(stmt_local_kind(BODY(dall), name), STMT_DEALLOCATE_ALL);
    assert_int_equal(stmt_local_kind(BODY(dprep), name), STMT_DEALLOCATE);
    assert_string_equal(name, "s_1");
    assert_int_equal(stmt_local_kind(BODY(dname), name), STMT_DEALLOCATE);
    assert_string_equal(name, "My");
    assert_int_equal(stmt_local_kind(BODY(disc), name), STMT_DISCARD_ALL);
    assert_int_equal(stmt_local_kind(BODY(plans), name), STMT_SERVER);
    assert_int_equal(stmt_local_kind(BODY(sel), name), STMT_SERVER);
    pgs_stmt *st = stmt_intern(g_tab, BODY(dall));
    assert_int_equal(st->local, STMT_DEALLOCATE_ALL);
    stmt_unref(g_tab, st);
}

static void test_local_unnamed_and_portals_hold_references(void **state)
{
    (void)state;
    static const uint8_t dall[] = "DEALLOCATE ALL\0\0\0";
    struct pgs_local_ext *lx = NULL;
    assert_false(stmt_local_any_portal(lx));
    pgs_stmt *st = stmt_intern(g_tab, BODY(dall));
    stmt_local_set_unnamed(&lx, g_tab, st);
    assert_ptr_equal(stmt_local_unnamed(lx), st);
    st->refs++;
    stmt_local_bind(&lx, g_tab, "", 0, st);
    st->refs++;
    stmt_local_bind(&lx, g_tab, "p1", 2, st);
    assert_true(stmt_local_any_portal(lx));
    assert_ptr_equal(stmt_local_portal(lx, "", 0), st);
    assert_ptr_equal(stmt_local_portal(lx, "p1", 2), st);
    assert_null(stmt_local_portal(lx, "p", 1));
    assert_int_equal(st->refs, 3);
    stmt_local_unbind(lx, "", 0);
    assert_null(stmt_local_portal(lx, "", 0));
    stmt_local_set_unnamed(&lx, g_tab, NULL);
    assert_null(stmt_local_unnamed(lx));
    assert_int_equal(stmt_tab_count(g_tab), 1); /* p1 still holds it */
    stmt_local_free(lx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hash_stable_and_body_sensitive, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_srv_name_is_pgs_and_16_lower_hex, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_map_put_get_count, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_map_put_existing_name_replaces, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_map_names_compared_by_length_and_bytes, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_map_bodies_are_binary_safe_copies, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_map_del_id_removes_every_name_with_it, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_map_clear_and_reuse, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_map_functions_accept_null_map, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_set_add_has_del_count_clear, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_set_adding_existing_hash_returns_false_and_does_not_grow, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_set_lru_evicts_least_recently_used, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_set_lru_without_touch_evicts_oldest, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_set_lru_readd_counts_as_use, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_set_del_makes_room, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_set_max_zero_is_unbounded, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_colliding_hashes_never_share_a_statement, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_collision_two_clients_two_server_statements, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_map_many_names_found_after_growth, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_map_count_bound, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_map_byte_bound_counts_names_and_bodies, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_local_kind_of_clearing_commands, tab_setup, tab_teardown),
        cmocka_unit_test_setup_teardown(test_local_unnamed_and_portals_hold_references, tab_setup, tab_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
