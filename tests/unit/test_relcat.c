/* Unit tests for relcat: a synthetic catalog published from rows, and the
 * expansion rules -- views of views down to tables, partition and
 * inheritance families (reads go down, writes go up and down, never
 * sideways), names in two schemas, unknown names, materialized views,
 * triggers, cascading foreign keys, foreign tables, the caps, a catalog
 * marked stale, and refs across a new generation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "relcat.h"

static const relcat_rel rels[] = {
    {1, "public", "t", 'r', 0},
    {2, "public", "v1", 'v', 0},
    {3, "public", "v2", 'v', 0},
    {4, "public", "u", 'r', 0},
    {10, "public", "meas", 'p', 0},
    {11, "public", "meas_2024", 'p', 0},
    {12, "public", "meas_2024_q1", 'r', 0},
    {13, "public", "meas_2025", 'r', 0},
    {20, "public", "animal", 'r', 0},
    {21, "public", "dog", 'r', 0},
    {22, "public", "puppy", 'r', 0},
    {30, "a", "dup", 'r', 0},
    {31, "b", "dup", 'r', 0},
    {32, "b", "dup_child", 'r', 0},
    {40, "public", "mv", 'm', 0},
    {41, "public", "stamped", 'v', RELCAT_REL_USES_STABLE},
    {42, "public", "rnd", 'v', RELCAT_REL_USES_VOLATILE},
    {50, "public", "audited", 'r', RELCAT_REL_SIDE_EFFECTS},
    {60, "public", "orders", 'r', 0},
    {61, "public", "lines", 'r', 0},
    {62, "public", "line_notes", 'r', 0},
    {70, "public", "ft", 'f', 0},
    {80, "public", "sysv", 'v', 0},
    {90, "public", "uv", 'v', 0},
    {91, "public", "Mixed", 'r', 0},
    {92, "public", "activity", 'v', RELCAT_REL_READS_SYSTEM},
};

static const relcat_link links[] = {
    {'v', 2, 1},   /* v1 reads t */
    {'v', 3, 2},   /* v2 reads v1 */
    {'v', 3, 4},   /* and u */
    {'i', 10, 11}, /* meas: meas_2024 (itself partitioned), meas_2025 */
    {'i', 11, 12}, {'i', 10, 13},
    {'i', 20, 21}, /* animal <- dog <- puppy */
    {'i', 21, 22},
    {'i', 31, 32},   /* b.dup <- dup_child */
    {'v', 40, 1},    /* mv over t */
    {'v', 41, 1},    /* stamped over t */
    {'v', 42, 4},    /* rnd over u */
    {'f', 60, 61},   /* deleting an order deletes its lines */
    {'f', 61, 62},   /* ... and their notes */
    {'v', 80, 1259}, /* a view over pg_class, which is not loaded */
    {'v', 90, 10},   /* an updatable view over meas */
};

static void publish_all(void)
{
    relcat_input in = {.rels = rels, .n_rels = PGS_ARRAY_LEN(rels), .links = links,
                       .n_links = PGS_ARRAY_LEN(links), .stale_seen = relcat_stale_count()};
    (void)relcat_publish(&in);
}

static relcat_ref ref;

static const pgs_relcat *cat(void)
{
    return relcat_get(&ref);
}

static relcat_ids rd(const char *schema, const char *name)
{
    relcat_ids o = {0};
    relcat_expand_read(cat(), schema, name, &o);
    return o;
}

static relcat_ids wr(const char *schema, const char *name)
{
    relcat_ids o = {0};
    relcat_expand_write(cat(), schema, name, &o);
    return o;
}

/* o holds exactly the ids of the space-separated names. */
static void expect_ids(const relcat_ids *o, const char *names)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", names);
    unsigned n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, " ", &save); tok;
         tok = strtok_r(NULL, " ", &save)) {
        uint64_t id = relcat_table_id(tok);
        bool in = false;
        for (unsigned i = 0; i < o->n; i++) in |= o->ids[i] == id;
        if (!in) fail_msg("expected %s among the %u ids (%s)", tok, o->n, names);
        n++;
    }
    if (n != o->n) fail_msg("%u ids, expected %u (%s)", o->n, n, names);
}

static void test_nothing_loaded_everything_unknown(void **state)
{
    (void)state;
    assert_int_equal(relcat_generation(), 0);
    relcat_ids o = rd(NULL, "t");
    expect_ids(&o, "t");
    assert_int_equal(o.flags, RELCAT_UNKNOWN);
    o = wr("public", "t");
    expect_ids(&o, "t");
    assert_int_equal(o.flags, RELCAT_UNKNOWN);
    publish_all();
}

static void test_table_id_is_bare_lowercased_name(void **state)
{
    (void)state;
    assert_true(relcat_table_id("Orders") == relcat_table_id("orders"));
    assert_true(relcat_table_id("orders") != relcat_table_id("order"));
    /* a quoted mixed-case name is found as written; its id is the lower-cased one */
    relcat_ids o = rd(NULL, "Mixed");
    expect_ids(&o, "mixed");
    assert_int_equal(o.flags, 0);
    o = rd(NULL, "mixed");
    assert_int_equal(o.flags, RELCAT_UNKNOWN);
}

static void test_plain_table_reads_itself(void **state)
{
    (void)state;
    relcat_ids o = rd(NULL, "t");
    expect_ids(&o, "t");
    assert_int_equal(o.flags, 0);
    o = rd("public", "t");
    expect_ids(&o, "t");
    assert_int_equal(o.flags, 0);
}

static void test_view_of_view_resolves_to_tables(void **state)
{
    (void)state;
    relcat_ids o = rd(NULL, "v2");
    expect_ids(&o, "v2 v1 t u");
    assert_int_equal(o.flags, 0);
    o = rd(NULL, "v1");
    expect_ids(&o, "v1 t");
}

static void test_write_through_view_bumps_base_table(void **state)
{
    (void)state;
    relcat_ids o = wr(NULL, "v1");
    expect_ids(&o, "v1 t");
    assert_int_equal(o.flags, 0);
    /* through a view onto a partitioned table: the whole family below */
    o = wr(NULL, "uv");
    expect_ids(&o, "uv meas meas_2024 meas_2024_q1 meas_2025");
}

static void test_reading_partition_parent_reads_every_partition(void **state)
{
    (void)state;
    relcat_ids o = rd(NULL, "meas");
    expect_ids(&o, "meas meas_2024 meas_2024_q1 meas_2025");
    o = rd(NULL, "meas_2024");
    expect_ids(&o, "meas_2024 meas_2024_q1");
    o = rd(NULL, "meas_2025");
    expect_ids(&o, "meas_2025");
}

static void test_write_to_partition_bumps_ancestors_not_siblings(void **state)
{
    (void)state;
    relcat_ids o = wr(NULL, "meas_2024_q1");
    expect_ids(&o, "meas_2024_q1 meas_2024 meas");
    o = wr(NULL, "meas_2024");
    expect_ids(&o, "meas_2024 meas_2024_q1 meas");
    o = wr(NULL, "meas");
    expect_ids(&o, "meas meas_2024 meas_2024_q1 meas_2025");
}

static void test_multi_level_inheritance(void **state)
{
    (void)state;
    relcat_ids o = rd(NULL, "animal");
    expect_ids(&o, "animal dog puppy");
    o = rd(NULL, "dog");
    expect_ids(&o, "dog puppy");
    o = wr(NULL, "puppy");
    expect_ids(&o, "puppy dog animal");
    o = wr(NULL, "dog");
    expect_ids(&o, "dog puppy animal");
}

static void test_ambiguous_name_takes_every_schemas_relation(void **state)
{
    (void)state;
    relcat_ids o = rd(NULL, "dup");
    expect_ids(&o, "dup dup_child");
    assert_int_equal(o.flags, 0);
    o = rd("a", "dup");
    expect_ids(&o, "dup");
    o = rd("b", "dup");
    expect_ids(&o, "dup dup_child");
    o = wr(NULL, "dup_child");
    expect_ids(&o, "dup_child dup");
}

static void test_unknown_name_keeps_its_id_and_says_unknown(void **state)
{
    (void)state;
    relcat_ids o = rd(NULL, "recent_cte");
    expect_ids(&o, "recent_cte");
    assert_int_equal(o.flags, RELCAT_UNKNOWN);
    /* a known name in a schema that does not have it */
    o = rd("other", "t");
    expect_ids(&o, "t");
    assert_int_equal(o.flags, RELCAT_UNKNOWN);
    o = wr(NULL, "recent_cte");
    assert_true(o.flags & RELCAT_WRITE_ALL);
    o = rd(NULL, NULL);
    assert_int_equal(o.flags, RELCAT_UNKNOWN);
}

static void test_view_over_unloaded_or_system_relation_is_unknown(void **state)
{
    (void)state;
    relcat_ids o = rd(NULL, "sysv");
    assert_true(o.flags & RELCAT_UNKNOWN);
    /* pinned catalogs have no link: the definition's text says it */
    o = rd(NULL, "activity");
    expect_ids(&o, "activity");
    assert_int_equal(o.flags, RELCAT_UNKNOWN);
}

static void test_materialized_view_reads_only_itself(void **state)
{
    (void)state;
    relcat_ids o = rd(NULL, "mv");
    expect_ids(&o, "mv");
    assert_int_equal(o.flags, 0);
    /* a write to its base table leaves it alone (REFRESH changes it) */
    o = wr(NULL, "t");
    expect_ids(&o, "t");
}

static void test_view_calling_stable_or_volatile_functions_is_flagged(void **state)
{
    (void)state;
    relcat_ids o = rd(NULL, "stamped");
    expect_ids(&o, "stamped t");
    assert_int_equal(o.flags, RELCAT_USES_STABLE);
    o = rd(NULL, "rnd");
    assert_int_equal(o.flags, RELCAT_USES_VOLATILE);
    assert_true(o.flags & RELCAT_READ_NOCACHE);
}

static void test_trigger_or_rule_makes_a_write_bump_everything(void **state)
{
    (void)state;
    relcat_ids o = wr(NULL, "audited");
    assert_int_equal(o.flags, RELCAT_SIDE_EFFECTS);
    assert_true(o.flags & RELCAT_WRITE_ALL);
    o = rd(NULL, "audited");
    assert_int_equal(o.flags, 0);
}

static void test_cascading_foreign_key_bumps_referencing_tables(void **state)
{
    (void)state;
    relcat_ids o = wr(NULL, "orders");
    expect_ids(&o, "orders lines line_notes");
    o = rd(NULL, "orders");
    expect_ids(&o, "orders");
    o = wr(NULL, "line_notes");
    expect_ids(&o, "line_notes");
}

static void test_foreign_table_is_flagged(void **state)
{
    (void)state;
    relcat_ids o = rd(NULL, "ft");
    assert_int_equal(o.flags, RELCAT_FOREIGN);
    assert_true(o.flags & RELCAT_READ_NOCACHE);
    o = wr(NULL, "ft");
    assert_int_equal(o.flags, 0);
}

static void test_several_names_share_one_set(void **state)
{
    (void)state;
    relcat_ids o = {0};
    relcat_expand_read(cat(), NULL, "v1", &o);
    relcat_expand_read(cat(), NULL, "t", &o);
    relcat_expand_read(cat(), NULL, "v2", &o);
    expect_ids(&o, "v1 t v2 u");
}

static void test_stale_catalog_says_unknown_until_reloaded(void **state)
{
    (void)state;
    relcat_mark_stale();
    relcat_ids o = rd(NULL, "t");
    expect_ids(&o, "t");
    assert_int_equal(o.flags, RELCAT_UNKNOWN);
    /* a load that read its rows before the mark is no better */
    relcat_input in = {.rels = rels, .n_rels = PGS_ARRAY_LEN(rels), .links = links,
                       .n_links = PGS_ARRAY_LEN(links), .stale_seen = relcat_stale_count() - 1};
    (void)relcat_publish(&in);
    o = rd(NULL, "t");
    assert_int_equal(o.flags, RELCAT_UNKNOWN);
    publish_all();
    o = rd(NULL, "t");
    assert_int_equal(o.flags, 0);
}

static void test_relation_cap_leaves_the_rest_unknown(void **state)
{
    (void)state;
    /* the three lowest oids: t, v1, v2; v2 also reads u, left out */
    relcat_input in = {.rels = rels, .n_rels = PGS_ARRAY_LEN(rels), .links = links,
                       .n_links = PGS_ARRAY_LEN(links), .max_rels = 3,
                       .stale_seen = relcat_stale_count()};
    (void)relcat_publish(&in);
    assert_true(relcat_truncated(cat()));
    assert_int_equal(relcat_count(cat()), 3);
    relcat_ids o = rd(NULL, "v1");
    expect_ids(&o, "v1 t");
    assert_int_equal(o.flags, 0);
    o = rd(NULL, "v2");
    assert_true(o.flags & RELCAT_UNKNOWN);
    o = rd(NULL, "u");
    assert_int_equal(o.flags, RELCAT_UNKNOWN);
    o = wr(NULL, "meas");
    assert_int_equal(o.flags, RELCAT_UNKNOWN);
    publish_all();
    assert_false(relcat_truncated(cat()));
}

static void test_link_cap_makes_everything_unknown(void **state)
{
    (void)state;
    relcat_input in = {.rels = rels, .n_rels = PGS_ARRAY_LEN(rels), .links = links,
                       .n_links = PGS_ARRAY_LEN(links), .max_links = 4,
                       .stale_seen = relcat_stale_count()};
    (void)relcat_publish(&in);
    assert_true(relcat_truncated(cat()));
    relcat_ids o = rd(NULL, "t");
    assert_int_equal(o.flags, RELCAT_UNKNOWN);
    publish_all();
}

static void test_large_family_overflows(void **state)
{
    (void)state;
    enum { N = 300 };
    relcat_rel *big = calloc(N + 1, sizeof(*big));
    relcat_link *bl = calloc(N, sizeof(*bl));
    char(*names)[16] = calloc(N + 1, sizeof(*names));
    big[0] = (relcat_rel){1, "public", "events", 'p', 0};
    for (int i = 1; i <= N; i++) {
        snprintf(names[i], sizeof(names[i]), "events_%d", i);
        big[i] = (relcat_rel){(uint32_t)(1 + i), "public", names[i], 'r', 0};
        bl[i - 1] = (relcat_link){'i', 1, (uint32_t)(1 + i)};
    }
    relcat_input in = {.rels = big, .n_rels = N + 1, .links = bl, .n_links = N,
                       .stale_seen = relcat_stale_count()};
    (void)relcat_publish(&in);
    free(big); /* the catalog holds its own copies */
    free(bl);
    free(names);
    relcat_ids o = rd(NULL, "events");
    assert_true(o.flags & RELCAT_OVERFLOW);
    assert_int_equal(o.n, RELCAT_IDS_MAX);
    o = wr(NULL, "events_7");
    expect_ids(&o, "events_7 events");
    assert_int_equal(o.flags, 0);
    publish_all();
}

static void test_ref_keeps_its_catalog_across_a_new_generation(void **state)
{
    (void)state;
    relcat_ref mine = {0};
    const pgs_relcat *old = relcat_get(&mine);
    uint64_t g = relcat_generation();
    assert_true(relcat_get(&mine) == old);
    publish_all();
    assert_int_equal(relcat_generation(), g + 1);
    /* still readable (ASan would see a freed catalog) */
    relcat_ids o = {0};
    relcat_expand_read(old, NULL, "v2", &o);
    expect_ids(&o, "v2 v1 t u");
    const pgs_relcat *fresh = relcat_get(&mine);
    o = (relcat_ids){0};
    relcat_expand_read(fresh, NULL, "v2", &o);
    expect_ids(&o, "v2 v1 t u");
    relcat_put(&mine);
}

static int teardown(void **state)
{
    (void)state;
    relcat_put(&ref);
    relcat_shutdown();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nothing_loaded_everything_unknown),
        cmocka_unit_test(test_table_id_is_bare_lowercased_name),
        cmocka_unit_test(test_plain_table_reads_itself),
        cmocka_unit_test(test_view_of_view_resolves_to_tables),
        cmocka_unit_test(test_write_through_view_bumps_base_table),
        cmocka_unit_test(test_reading_partition_parent_reads_every_partition),
        cmocka_unit_test(test_write_to_partition_bumps_ancestors_not_siblings),
        cmocka_unit_test(test_multi_level_inheritance),
        cmocka_unit_test(test_ambiguous_name_takes_every_schemas_relation),
        cmocka_unit_test(test_unknown_name_keeps_its_id_and_says_unknown),
        cmocka_unit_test(test_view_over_unloaded_or_system_relation_is_unknown),
        cmocka_unit_test(test_materialized_view_reads_only_itself),
        cmocka_unit_test(test_view_calling_stable_or_volatile_functions_is_flagged),
        cmocka_unit_test(test_trigger_or_rule_makes_a_write_bump_everything),
        cmocka_unit_test(test_cascading_foreign_key_bumps_referencing_tables),
        cmocka_unit_test(test_foreign_table_is_flagged),
        cmocka_unit_test(test_several_names_share_one_set),
        cmocka_unit_test(test_stale_catalog_says_unknown_until_reloaded),
        cmocka_unit_test(test_relation_cap_leaves_the_rest_unknown),
        cmocka_unit_test(test_link_cap_makes_everything_unknown),
        cmocka_unit_test(test_large_family_overflows),
        cmocka_unit_test(test_ref_keeps_its_catalog_across_a_new_generation),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
