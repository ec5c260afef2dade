/* topology: WAL positions read from PostgreSQL's "X/Y" text and written
 * back the same way (SHOW NODES), and the primary switch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "topology.h"

static void lsn_ok(const char *s, uint64_t want)
{
    uint64_t v = 1;
    if (topology_parse_lsn(s, &v) != 0) fail_msg("'%s' rejected", s);
    if (v != want) fail_msg("'%s' read as %llx", s, (unsigned long long)v);
}

static void lsn_bad(const char *s)
{
    uint64_t v = 7;
    if (topology_parse_lsn(s, &v) == 0) fail_msg("'%s' accepted", s);
    assert_true(v == 7); /* untouched */
}

static void test_lsn_parse(void **state)
{
    (void)state;
    lsn_ok("0/0", 0);
    lsn_ok("0/3000060", 0x3000060);
    lsn_ok("16/B374D848", 0x16B374D848ull);
    lsn_ok("16/b374d848", 0x16B374D848ull);
    lsn_ok("FFFFFFFF/FFFFFFFF", UINT64_MAX);
    lsn_bad("");
    lsn_bad("/");
    lsn_bad("0/");
    lsn_bad("/0");
    lsn_bad("16");
    lsn_bad("16/B374D848 ");
    lsn_bad("1/2/3");
    lsn_bad("100000000/0");   /* a half wider than 32 bits */
    lsn_bad("0/100000000");
    lsn_bad("-1/0");
    lsn_bad("G/0");
}

static void test_lsn_format_round_trips(void **state)
{
    (void)state;
    char buf[32];
    topology_format_lsn(0, buf, sizeof(buf));
    assert_string_equal(buf, "0/0");
    topology_format_lsn(0x16B374D848ull, buf, sizeof(buf));
    assert_string_equal(buf, "16/B374D848");
    topology_format_lsn(UINT64_MAX, buf, sizeof(buf));
    assert_string_equal(buf, "FFFFFFFF/FFFFFFFF");
    const uint64_t samples[] = {1, 0xffffffffu, 0x100000000ull, 0x123456789abcdefull};
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        uint64_t back = 0;
        topology_format_lsn(samples[i], buf, sizeof(buf));
        assert_int_equal(topology_parse_lsn(buf, &back), 0);
        assert_true(back == samples[i]);
    }
}

/* The node list from a configuration (addresses that need no DNS), the
 * weights copied, and the primary switched by index. */
static void test_nodes_weights_and_primary_switch(void **state)
{
    (void)state;
    pgs_config cfg;
    config_defaults(&cfg);
    char err[256];
    assert_int_equal(config_parse_url("postgresql://127.0.0.1:5432/db", &cfg.primary, err,
                                      sizeof(err)), 0);
    cfg.n_replicas = 2;
    cfg.replicas = calloc(2, sizeof(pgs_url));
    cfg.replica_weights = calloc(2, sizeof(int));
    assert_int_equal(config_parse_url("postgresql://127.0.0.1:5433/db", &cfg.replicas[0], err,
                                      sizeof(err)), 0);
    assert_int_equal(config_parse_url("postgresql://127.0.0.1:5434/db", &cfg.replicas[1], err,
                                      sizeof(err)), 0);
    cfg.replica_weights[0] = 3;
    cfg.replica_weights[1] = 1;
    assert_int_equal(topology_init(&cfg, err, sizeof(err)), 0);
    assert_int_equal(topology_count(), 3);
    assert_string_equal(topology_node(1)->name, "replica1");
    assert_int_equal(topology_node(0)->weight, 1);
    assert_int_equal(topology_node(1)->weight, 3);
    assert_int_equal(topology_node(2)->weight, 1);
    assert_ptr_equal(topology_primary(), topology_node(0));
    topology_set_primary(2);
    assert_ptr_equal(topology_primary(), topology_node(2));
    topology_set_primary(7); /* no such node: ignored */
    assert_ptr_equal(topology_primary(), topology_node(2));
    topology_free();
    config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lsn_parse),
        cmocka_unit_test(test_lsn_format_round_trips),
        cmocka_unit_test(test_nodes_weights_and_primary_switch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
