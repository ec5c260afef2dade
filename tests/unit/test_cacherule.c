/* Unit tests for cacherule: the whole precedence of cache_decide (nocache
 * hint, the per-database/user switch, CACHEABLE, the cache hint, the rules,
 * the default), table rules (every table read listed, case, schemas,
 * overflow), fingerprint rules, database/user scoping, and the fingerprint
 * helper.  Facts come from the real classifier, so the names and flags are
 * the ones the relay will pass. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cacherule.h"
#include "classify.h"

static pgs_classify_cache *cc_parse;

static const pgs_stmt_facts *cls(const char *sql)
{
    return classify(cc_parse, sql, strlen(sql));
}

static char *tables_buf[8][8];

static pgs_cache_rule table_rule(int slot, uint32_t ttl_ms, const char *const *names)
{
    pgs_cache_rule r = {.kind = PGS_CACHE_RULE_TABLES, .ttl_ms = ttl_ms};
    r.tables = tables_buf[slot];
    while (names[r.n_tables]) {
        tables_buf[slot][r.n_tables] = (char *)names[r.n_tables];
        r.n_tables++;
    }
    return r;
}

static uint64_t fp(const char *sql)
{
    uint64_t x = 0;
    char why[256];
    assert_int_equal(cacherule_fingerprint(sql, &x, why, sizeof(why)), 0);
    assert_true(x != 0);
    return x;
}

static pgs_cache_config on_no_rules(void)
{
    return (pgs_cache_config){.enabled = true, .ttl_ms = 300000};
}

static uint32_t decide(const pgs_cache_config *c, const char *sql)
{
    return cache_decide(c, "app", "web", true, cls(sql), NULL);
}

static void test_off_caches_nothing(void **state)
{
    (void)state;
    pgs_cache_config c = on_no_rules();
    c.enabled = false;
    assert_int_equal(decide(&c, "SELECT * FROM products"), 0);
    assert_int_equal(decide(&c, "/* pgscale:cache ttl=10s */ SELECT * FROM products"), 0);
}

static void test_default_caches_every_cacheable_statement_with_cache_ttl(void **state)
{
    (void)state;
    pgs_cache_config c = on_no_rules();
    assert_int_equal(decide(&c, "SELECT * FROM products WHERE id = $1"), 300000);
    assert_int_equal(decide(&c, "SELECT 1"), 300000);
}

static void test_not_cacheable_is_never_cached(void **state)
{
    (void)state;
    const char *tables[] = {"products", NULL};
    pgs_cache_rule r = table_rule(0, 60000, tables);
    pgs_cache_config c = on_no_rules();
    const char *never[] = {
        "SELECT now(), * FROM products",
        "SELECT random() FROM products",
        "SELECT * FROM products FOR UPDATE",
        "UPDATE products SET price = 1",
        "SELECT current_user FROM products",
        "SELECT * FROM pg_class",
        "SELECT * FROM products; SELECT * FROM products",
        "SELEC broken",
    };
    for (int with_rules = 0; with_rules < 2; with_rules++) {
        c.rules = with_rules ? &r : NULL;
        c.n_rules = with_rules;
        for (size_t i = 0; i < sizeof(never) / sizeof(never[0]); i++) {
            char hinted[256];
            snprintf(hinted, sizeof(hinted), "/* pgscale:cache ttl=30s */ %s", never[i]);
            assert_int_equal(decide(&c, never[i]), 0);
            assert_int_equal(decide(&c, hinted), 0);
        }
    }
}

static void test_nocache_hint_wins_over_everything(void **state)
{
    (void)state;
    const char *tables[] = {"products", NULL};
    pgs_cache_rule r = table_rule(0, 60000, tables);
    pgs_cache_config c = on_no_rules();
    assert_int_equal(decide(&c, "SELECT * FROM products /* pgscale:nocache */"), 0);
    c.rules = &r;
    c.n_rules = 1;
    assert_int_equal(decide(&c, "-- pgscale:nocache\nSELECT * FROM products"), 0);
    assert_int_equal(
        decide(&c, "/* pgscale:cache ttl=5s */ /* pgscale:nocache */ SELECT * FROM products"), 0);
    /* ttl=0 is a nocache */
    assert_int_equal(decide(&c, "/* pgscale:cache ttl=0 */ SELECT * FROM products"), 0);
}

static void test_database_or_user_off_wins_over_hint_and_rules(void **state)
{
    (void)state;
    const char *tables[] = {"products", NULL};
    pgs_cache_rule r = table_rule(0, 60000, tables);
    pgs_cache_config c = on_no_rules();
    c.rules = &r;
    c.n_rules = 1;
    const pgs_stmt_facts *f = cls("SELECT * FROM products");
    assert_int_equal(cache_decide(&c, "app", "web", false, f, NULL), 0);
    f = cls("/* pgscale:cache ttl=9s */ SELECT * FROM products");
    assert_int_equal(cache_decide(&c, "app", "web", false, f, NULL), 0);
    assert_int_equal(cache_decide(&c, "app", "web", true, f, NULL), 9000);
}

static void test_cache_hint_beats_rules_and_default(void **state)
{
    (void)state;
    const char *tables[] = {"products", NULL};
    pgs_cache_rule r = table_rule(0, 60000, tables);
    pgs_cache_config c = on_no_rules();
    assert_int_equal(decide(&c, "/* pgscale:cache ttl=42 */ SELECT * FROM orders"), 42000);
    c.rules = &r;
    c.n_rules = 1;
    /* no rule for orders: the hint alone caches it */
    int rule = 7;
    const pgs_stmt_facts *f = cls("/* pgscale:cache ttl=500ms */ SELECT * FROM orders");
    assert_int_equal(cache_decide(&c, "app", "web", true, f, &rule), 500);
    assert_int_equal(rule, -1);
    /* the rule would say 60 s; the hint says otherwise */
    assert_int_equal(decide(&c, "/* pgscale:cache ttl=2min */ SELECT * FROM products"), 120000);
    /* a hint without ttl= takes cache.ttl */
    assert_int_equal(decide(&c, "SELECT * FROM orders -- pgscale:cache"), 300000);
}

static void test_rules_decide_when_present(void **state)
{
    (void)state;
    const char *t1[] = {"products", "categories", NULL};
    const char *t2[] = {"orders", NULL};
    pgs_cache_rule rules[3];
    rules[0] = table_rule(0, 60000, t1);
    rules[1] = (pgs_cache_rule){.kind = PGS_CACHE_RULE_FINGERPRINT,
                                .fingerprint = fp("SELECT count(*) FROM orders WHERE day = 1"),
                                .ttl_ms = 10000};
    rules[2] = table_rule(1, 0, t2); /* no ttl: cache.ttl */
    pgs_cache_config c = on_no_rules();
    c.rules = rules;
    c.n_rules = 3;
    int rule = -5;
    const pgs_stmt_facts *f =
        cls("SELECT p.* FROM products p JOIN categories c ON c.id = p.category_id");
    assert_int_equal(cache_decide(&c, "app", "web", true, f, &rule), 60000);
    assert_int_equal(rule, 0);
    /* first match wins: the fingerprint rule comes before the orders rule */
    f = cls("select count(*)  from orders where day = 42");
    assert_int_equal(cache_decide(&c, "app", "web", true, f, &rule), 10000);
    assert_int_equal(rule, 1);
    f = cls("SELECT * FROM orders");
    assert_int_equal(cache_decide(&c, "app", "web", true, f, &rule), 300000);
    assert_int_equal(rule, 2);
    /* matched by nothing: not cached, although CACHEABLE */
    f = cls("SELECT * FROM customers");
    assert_true(f->flags & PGS_FACT_CACHEABLE);
    assert_int_equal(cache_decide(&c, "app", "web", true, f, &rule), 0);
    assert_int_equal(rule, -1);
}

static void test_table_rule_needs_every_table_listed(void **state)
{
    (void)state;
    const char *t[] = {"products", NULL};
    pgs_cache_rule r = table_rule(0, 60000, t);
    pgs_cache_config c = on_no_rules();
    c.rules = &r;
    c.n_rules = 1;
    assert_int_equal(decide(&c, "SELECT * FROM products WHERE id IN (SELECT product_id FROM "
                                "order_lines)"),
                     0);
    assert_int_equal(decide(&c, "SELECT * FROM products a JOIN products b ON a.id = b.parent"),
                     60000);
    /* reads no table: a rule about tables says nothing about it */
    assert_int_equal(decide(&c, "SELECT 1"), 0);
}

static void test_table_rule_case_and_schemas(void **state)
{
    (void)state;
    const char *bare[] = {"Products", NULL};
    const char *qual[] = {"shop.products", NULL};
    pgs_cache_rule rb = table_rule(0, 1000, bare), rq = table_rule(1, 2000, qual);
    pgs_cache_config c = on_no_rules();
    c.rules = &rb;
    c.n_rules = 1;
    /* a bare name matches in any schema, and case does not matter */
    assert_int_equal(decide(&c, "SELECT * FROM PRODUCTS"), 1000);
    assert_int_equal(decide(&c, "SELECT * FROM shop.products"), 1000);
    assert_int_equal(decide(&c, "SELECT * FROM \"Products\""), 1000);
    c.rules = &rq;
    /* a qualified name only where the statement qualifies it the same way */
    assert_int_equal(decide(&c, "SELECT * FROM Shop.Products"), 2000);
    assert_int_equal(decide(&c, "SELECT * FROM products"), 0);
    assert_int_equal(decide(&c, "SELECT * FROM other.products"), 0);
}

static void test_table_rule_refuses_overflowing_read_list(void **state)
{
    (void)state;
    /* more tables than the classifier lists: it cannot prove all listed */
    char sql[4096] = "SELECT 1 FROM t0";
    for (int i = 1; i < PGS_CLASSIFY_NAMES + 4; i++)
        snprintf(sql + strlen(sql), sizeof(sql) - strlen(sql), ", t%d", i);
    const char *names[PGS_CLASSIFY_NAMES + 8];
    char nb[PGS_CLASSIFY_NAMES + 8][8];
    for (int i = 0; i < PGS_CLASSIFY_NAMES + 4; i++) {
        snprintf(nb[i], sizeof(nb[i]), "t%d", i);
        names[i] = nb[i];
    }
    pgs_cache_rule r = {.kind = PGS_CACHE_RULE_TABLES, .ttl_ms = 1000,
                        .tables = (char **)names, .n_tables = PGS_CLASSIFY_NAMES + 4};
    pgs_cache_config c = on_no_rules();
    c.rules = &r;
    c.n_rules = 1;
    const pgs_stmt_facts *f = cls(sql);
    assert_true(f->flags & PGS_FACT_READS_OVERFLOW);
    assert_int_equal(cache_decide(&c, "app", "web", true, f, NULL), 0);
}

static void test_rule_scoped_to_database_and_user(void **state)
{
    (void)state;
    const char *t[] = {"products", NULL};
    pgs_cache_rule r = table_rule(0, 1000, t);
    r.database = "app";
    r.user = "web";
    pgs_cache_config c = on_no_rules();
    c.rules = &r;
    c.n_rules = 1;
    const pgs_stmt_facts *f = cls("SELECT * FROM products");
    assert_int_equal(cache_decide(&c, "app", "web", true, f, NULL), 1000);
    assert_int_equal(cache_decide(&c, "app", "batch", true, f, NULL), 0);
    assert_int_equal(cache_decide(&c, "other", "web", true, f, NULL), 0);
    assert_int_equal(cache_decide(&c, NULL, NULL, true, f, NULL), 0);
}

static void test_fingerprint_ignores_constants_and_layout(void **state)
{
    (void)state;
    uint64_t a = fp("SELECT * FROM t WHERE id = 1");
    assert_true(a == fp("select *\n  from t  where id = 99 /* c */"));
    assert_true(a != fp("SELECT * FROM u WHERE id = 1"));
    assert_true(cls("SELECT * FROM t WHERE id = 5")->fingerprint == a);
    uint64_t x;
    char why[256];
    assert_int_equal(cacherule_fingerprint("SELEC 1", &x, why, sizeof(why)), -EINVAL);
    assert_non_null(strstr(why, "does not parse"));
    /* the message quotes the text near the error; it stays one line */
    assert_int_equal(cacherule_fingerprint("SELECT 'a\nb\r\tc", &x, why, sizeof(why)), -EINVAL);
    assert_null(strpbrk(why, "\n\r\t"));
}

static int setup(void **state)
{
    (void)state;
    cc_parse = classify_cache_new(256, 1 << 20);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    classify_cache_free(cc_parse);
    classify_shutdown();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_off_caches_nothing),
        cmocka_unit_test(test_default_caches_every_cacheable_statement_with_cache_ttl),
        cmocka_unit_test(test_not_cacheable_is_never_cached),
        cmocka_unit_test(test_nocache_hint_wins_over_everything),
        cmocka_unit_test(test_database_or_user_off_wins_over_hint_and_rules),
        cmocka_unit_test(test_cache_hint_beats_rules_and_default),
        cmocka_unit_test(test_rules_decide_when_present),
        cmocka_unit_test(test_table_rule_needs_every_table_listed),
        cmocka_unit_test(test_table_rule_case_and_schemas),
        cmocka_unit_test(test_table_rule_refuses_overflowing_read_list),
        cmocka_unit_test(test_rule_scoped_to_database_and_user),
        cmocka_unit_test(test_fingerprint_ignores_constants_and_layout),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
