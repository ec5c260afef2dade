/* Unit tests for the pool and the relay's release rules, on the fake
 * network with the fake clock (tests/harness.c): the budget, first come
 * first served, pool_timeout, closing idle overflow servers, a vanished
 * client's unsynced server, a server handed between two workers, and two
 * rules of the relay: a reply nothing was owed for ends the server, and a
 * SET pipelined behind another query is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "pool.h"
#include "topology.h"
#include "worker.h"

static void start(int workers, int size, int overflow, uint32_t timeout_ms, uint32_t overflow_idle_ms)
{
    harness_opts o = {.workers = workers, .pool_size = size, .max_overflow = overflow,
                      .pool_timeout_ms = timeout_ms, .overflow_idle_timeout_ms = overflow_idle_ms};
    pgs_log_level = -1;
    harness_start(&o);
}

static void check(void)
{
    const char *why = harness_check(1u << 20);
    if (why) fail_msg("%s", why);
}

/* Completes every connect pgscale is waiting for (servers log in). */
static int connect_all(void)
{
    int n = 0;
    fn_conn *s;
    while ((s = harness_pending_connect()) != NULL) {
        fakenet_connect_done(s, 0);
        harness_pump();
        check();
        n++;
    }
    return n;
}

/* The server connection client c is linked to (NULL: none). */
static fn_conn *server_of(fn_conn *c)
{
    pgs_client *cl = harness_client_of(c);
    return cl && cl->server ? fakenet_conn_of(&cl->server->s.tcp) : NULL;
}

static void reply(fn_conn *s, const char *tag, char status)
{
    fakepg_send(s->user, 'C', tag, strlen(tag) + 1);
    fakepg_ready(s->user, status);
    harness_pump();
    check();
}

static fn_conn *logged_in_client(int wi)
{
    fn_conn *c = harness_client(wi, "app", "app");
    connect_all();
    assert_int_equal(harness_count_msgs(c, 'Z'), 1);
    harness_clear(c);
    return c;
}

static int open_servers(void)
{
    return atomic_load(&g_pgs.pools->open);
}

static void test_budget_is_never_exceeded(void **state)
{
    (void)state;
    start(1, 2, 1, 30000, 1000);
    fn_conn *c[6];
    for (int i = 0; i < 6; i++) {
        c[i] = logged_in_client(0);
        harness_client_query(c[i], "BEGIN");
        harness_pump();
        check();
        connect_all();
        fn_conn *s = server_of(c[i]);
        if (s) reply(s, "BEGIN", 'T');
        assert_true(open_servers() <= 3);
    }
    assert_int_equal(open_servers(), 3);
    pgs_pool *p = harness_pool(0);
    assert_int_equal(p->n_used, 3);
    assert_int_equal(p->n_waiting, 3);
    assert_null(harness_pending_connect());
    harness_stop();
}

static void test_waiters_are_served_first_come_first_served(void **state)
{
    (void)state;
    start(1, 1, 0, 30000, 1000);
    fn_conn *a = logged_in_client(0);
    harness_client_query(a, "BEGIN");
    harness_pump();
    fn_conn *s = server_of(a);
    assert_non_null(s);
    reply(s, "BEGIN", 'T');
    const char *q[3] = {"SELECT 'b'", "SELECT 'c'", "SELECT 'd'"};
    fn_conn *w[3];
    for (int i = 0; i < 3; i++) {
        w[i] = logged_in_client(0);
        harness_client_query(w[i], q[i]);
        harness_pump();
        check();
        assert_null(server_of(w[i]));
    }
    harness_client_query(a, "COMMIT");
    harness_pump();
    reply(s, "COMMIT", 'I');
    for (int i = 0; i < 3; i++) {
        fakepg *pg = s->user;
        assert_ptr_equal(server_of(w[i]), s);
        assert_string_equal(pg->last_query, q[i]);
        reply(s, "SELECT 1", 'I');
        assert_int_equal(harness_count_msgs(w[i], 'C'), 1);
    }
    harness_stop();
}

static void test_pool_timeout_fails_the_waiter_with_53300_on_time(void **state)
{
    (void)state;
    start(1, 1, 0, 2000, 1000);
    fn_conn *a = logged_in_client(0);
    harness_client_query(a, "BEGIN");
    harness_pump();
    reply(server_of(a), "BEGIN", 'T');
    fn_conn *b = logged_in_client(0);
    harness_client_query(b, "SELECT 1");
    harness_pump();
    harness_advance_ms(1900);
    check();
    assert_false(harness_got_error(b, "53300"));
    assert_false(b->closed);
    harness_advance_ms(200);
    check();
    assert_true(harness_got_error(b, "53300"));
    assert_false(harness_got_error(a, "53300"));
    harness_stop();
}

static void test_idle_overflow_servers_close_after_the_overflow_timeout(void **state)
{
    (void)state;
    start(1, 1, 1, 30000, 1000);
    fn_conn *a = logged_in_client(0), *b = logged_in_client(0);
    harness_client_query(a, "BEGIN");
    harness_pump();
    reply(server_of(a), "BEGIN", 'T');
    harness_client_query(b, "BEGIN");
    harness_pump();
    assert_int_equal(connect_all(), 1);
    fn_conn *sa = server_of(a), *sb = server_of(b);
    assert_non_null(sb);
    reply(sb, "BEGIN", 'T');
    assert_int_equal(open_servers(), 2);
    harness_client_query(a, "COMMIT");
    harness_client_query(b, "COMMIT");
    harness_pump();
    reply(sa, "COMMIT", 'I');
    reply(sb, "COMMIT", 'I');
    assert_int_equal(harness_pool(0)->n_idle, 2);
    harness_advance_ms(500);
    assert_int_equal(open_servers(), 2);
    harness_advance_ms(600);
    check();
    assert_int_equal(open_servers(), 1);
    assert_int_equal(harness_pool(0)->n_idle, 1);
    assert_true(sa->closed != sb->closed);
    harness_stop();
}

static void test_vanished_client_leaves_an_unsynced_server_closed(void **state)
{
    (void)state;
    start(1, 2, 0, 30000, 1000);
    fn_conn *a = logged_in_client(0);
    static const uint8_t parse[] = "\0SELECT 1\0\0";
    static const uint8_t bind[] = {0, 0, 0, 0, 0, 0, 0, 0};
    static const uint8_t exec[] = {0, 0, 0, 0, 0};
    harness_client_msg(a, 'P', parse, sizeof(parse) - 1);
    harness_client_msg(a, 'B', bind, sizeof(bind));
    harness_client_msg(a, 'E', exec, sizeof(exec));
    harness_client_msg(a, 'H', NULL, 0);
    harness_pump();
    check();
    fn_conn *s = server_of(a);
    assert_non_null(s);
    fakepg_send(s->user, '1', NULL, 0);
    fakepg_send(s->user, '2', NULL, 0);
    fakepg_send(s->user, 'C', "SELECT 1", 9);
    harness_pump();
    check();
    fakenet_peer_close(a);
    harness_pump();
    check();
    /* PostgreSQL is still inside the implicit transaction: never pooled */
    assert_true(s->closed);
    assert_int_equal(harness_pool(0)->n_idle, 0);
    harness_stop();
}

static void handed_to_a_waiter_on_another_worker(bool unix_socket)
{
    start(2, 1, 0, 30000, 1000);
    topology_primary()->ep.is_unix = unix_socket;
    fn_conn *a = logged_in_client(0);
    harness_client_query(a, "BEGIN");
    harness_pump();
    fn_conn *s = server_of(a);
    reply(s, "BEGIN", 'T');
    fn_conn *b = harness_client(1, "app", "app");
    harness_pump();
    harness_client_query(b, "SELECT 'b'");
    harness_pump();
    check();
    assert_null(server_of(b));
    assert_null(harness_pending_connect()); /* the budget is spent */
    harness_client_query(a, "COMMIT");
    harness_pump();
    reply(s, "COMMIT", 'I');
    /* the same connection, now on worker 1, runs b's query */
    assert_ptr_equal(server_of(b), s);
    pgs_client *cb = harness_client_of(b);
    assert_int_equal(cb->server->w->id, 1);
    /* reopened on the new worker as the same kind of socket */
    assert_int_equal(cb->server->on_unix, unix_socket);
    assert_int_equal(cb->server->s.tcp.type, unix_socket ? UV_NAMED_PIPE : UV_TCP);
    assert_string_equal(((fakepg *)s->user)->last_query, "SELECT 'b'");
    assert_int_equal(open_servers(), 1);
    reply(s, "SELECT 1", 'I');
    assert_int_equal(harness_count_msgs(b, 'C'), 1);
    harness_stop();
}

static void test_idle_server_is_handed_to_a_waiter_on_another_worker(void **state)
{
    (void)state;
    handed_to_a_waiter_on_another_worker(false);
}

static void test_unix_socket_server_is_handed_over_as_a_pipe(void **state)
{
    (void)state;
    handed_to_a_waiter_on_another_worker(true);
}

static void start_session(void)
{
    harness_opts o = {.workers = 1, .pool_size = 2, .max_overflow = 0, .session_mode = true,
                      .pool_timeout_ms = 30000, .overflow_idle_timeout_ms = 1000};
    pgs_log_level = -1;
    harness_start(&o);
}

static void test_reply_when_nothing_is_owed_ends_the_server(void **state)
{
    (void)state;
    start_session();
    fn_conn *a = logged_in_client(0);
    harness_client_query(a, "SELECT 1");
    harness_pump();
    fn_conn *s = server_of(a);
    assert_non_null(s);
    reply(s, "SELECT 1", 'I');
    assert_ptr_equal(server_of(a), s); /* session mode: still a's */
    static const uint8_t row[] = {0, 1, 0, 0, 0, 1, '1'};
    fakepg_send(s->user, 'D', row, sizeof(row));
    harness_pump();
    check();
    assert_true(s->closed);
    assert_true(harness_got_error(a, "08006"));
    harness_stop();
}

static void test_set_pipelined_behind_a_query_is_refused(void **state)
{
    (void)state;
    start(1, 1, 0, 30000, 1000);
    fn_conn *a = logged_in_client(0);
    harness_client_query(a, "SET app.tenant = 'a'");
    harness_client_query(a, "SET app.tenant = 'b'");
    harness_pump();
    check();
    fn_conn *s = server_of(a);
    assert_non_null(s);
    fakepg *pg = s->user;
    assert_int_equal(pg->n_queries, 1);
    assert_string_equal(pg->last_query, "SET app.tenant = 'a'");
    reply(s, "SET", 'I');
    assert_true(harness_got_error(a, "0A000"));
    assert_int_equal(harness_count_msgs(a, 'Z'), 2);
    assert_int_equal(pg->n_queries, 1);
    harness_stop();
}

/* --- failover: a primary that cannot be reached, with a replica to fail
 * over to (the monitor does not run here: the tests play its part) --- */

static void start_with_replica(int workers, int failover, uint32_t failover_wait_ms)
{
    harness_opts o = {.workers = workers, .pool_size = 2, .max_overflow = 0,
                      .pool_timeout_ms = 60000, .overflow_idle_timeout_ms = 1000, .replicas = 1};
    pgs_log_level = -1;
    harness_start(&o);
    harness_config()->failover = failover;
    harness_config()->failover_wait_ms = failover_wait_ms;
    harness_config()->server_connect_timeout_ms = 5000;
}

/* Every connect pgscale is waiting for is refused. */
static void refuse_all(void)
{
    fn_conn *s;
    while ((s = harness_pending_connect()) != NULL) {
        fakenet_connect_done(s, UV_ECONNREFUSED);
        harness_pump();
        check();
    }
}

/* A logged-in client (the pool knows the server's parameters) whose write
 * then finds the primary unreachable; returns it waiting. */
static fn_conn *writer_waiting(int wi)
{
    fn_conn *c = logged_in_client(wi);
    /* the server the login used goes away with the primary */
    fakenet_peer_close(harness_server_conn(0));
    harness_pump();
    harness_client_query(c, "INSERT INTO t VALUES (1)");
    harness_pump();
    refuse_all();
    assert_null(server_of(c));
    assert_int_equal(harness_client_of(c)->state, CL_WAITING);
    return c;
}

/* Advances the clock in steps, refusing every connect retried meanwhile. */
static void outage_ms(uint64_t ms)
{
    for (uint64_t t = 0; t < ms; t += 100) {
        harness_advance_ms(100);
        refuse_all();
    }
}

/* The switch as monitor.c makes it: node 1 takes the writes, node 0 is
 * fenced, the workers are told. */
static void fail_over_to_replica(void)
{
    pgs_node *old = topology_node(0);
    topology_set_primary(1);
    atomic_store(&old->state, PGS_NODE_FENCED);
    pool_node_fenced(old);
    harness_pump();
    check();
}

static void test_writer_waits_for_failover_past_the_connect_timeout_then_fails_with_08006(
    void **state)
{
    (void)state;
    start_with_replica(1, PGS_FAILOVER_AUTO, 20000);
    fn_conn *c = writer_waiting(0);
    outage_ms(19000); /* far past server_connect_timeout (5 s) */
    assert_false(c->closed);
    assert_false(harness_got_error(c, "08006"));
    outage_ms(1200);
    assert_true(harness_got_error(c, "08006"));
    harness_stop();
}

static void test_without_failover_the_writer_fails_after_the_connect_timeout(void **state)
{
    (void)state;
    /* failover off, and failover_wait 0: as before either way */
    for (int k = 0; k < 2; k++) {
        start_with_replica(1, k ? PGS_FAILOVER_AUTO : PGS_FAILOVER_OFF, k ? 0 : 20000);
        fn_conn *c = writer_waiting(0);
        outage_ms(4800);
        assert_false(harness_got_error(c, "08006"));
        outage_ms(600);
        assert_true(harness_got_error(c, "08006"));
        harness_stop();
    }
}

static void test_waiters_go_to_the_new_primary_at_the_switch(void **state)
{
    (void)state;
    start_with_replica(2, PGS_FAILOVER_AUTO, 20000);
    fn_conn *a = writer_waiting(0);
    fn_conn *b = harness_client(1, "app", "app"); /* no server needed: parameters known */
    harness_pump();
    assert_int_equal(harness_count_msgs(b, 'Z'), 1);
    harness_client_query(b, "INSERT INTO t VALUES (2)");
    harness_pump();
    refuse_all();
    outage_ms(2000);
    assert_int_equal(harness_client_of(b)->state, CL_WAITING);
    fail_over_to_replica();
    /* at once, without the clock moving: servers open on the new primary */
    assert_int_equal(connect_all(), 2);
    fn_conn *w[2] = {a, b};
    const char *q[2] = {"INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)"};
    for (int i = 0; i < 2; i++) {
        pgs_client *cl = harness_client_of(w[i]);
        assert_non_null(cl->server);
        assert_ptr_equal(cl->server->pool->sh->node, topology_node(1));
        assert_string_equal(((fakepg *)server_of(w[i])->user)->last_query, q[i]);
        reply(server_of(w[i]), "INSERT 0 1", 'I');
        assert_int_equal(harness_count_msgs(w[i], 'C'), 1);
        assert_false(harness_got_error(w[i], "08006"));
    }
    harness_stop();
}

static void test_fenced_nodes_servers_are_never_handed_out_again(void **state)
{
    (void)state;
    start_with_replica(1, PGS_FAILOVER_FOLLOW, 20000);
    fn_conn *a = logged_in_client(0), *b = logged_in_client(0);
    harness_client_query(a, "BEGIN");
    harness_pump();
    connect_all();
    fn_conn *busy = server_of(a);
    reply(busy, "BEGIN", 'T');
    /* another server sits idle on the old primary */
    harness_client_query(b, "SELECT 1");
    harness_pump();
    connect_all();
    fn_conn *idle = server_of(b);
    assert_non_null(idle);
    assert_ptr_not_equal(idle, busy);
    reply(idle, "SELECT 1", 'I');
    assert_null(server_of(b));
    assert_false(idle->closed);
    fail_over_to_replica();
    assert_true(idle->closed);
    /* the transaction on the old primary ends: its server is not pooled */
    harness_client_query(a, "COMMIT");
    harness_pump();
    reply(busy, "COMMIT", 'I');
    assert_true(busy->closed);
    /* and the next work of both clients runs on the new primary */
    harness_client_query(b, "INSERT INTO t VALUES (3)");
    harness_pump();
    connect_all();
    assert_ptr_equal(harness_client_of(b)->server->pool->sh->node, topology_node(1));
    reply(server_of(b), "INSERT 0 1", 'I');
    pgs_pool *old = NULL;
    for (pgs_pool *p = harness_worker(0)->pools; p; p = p->next)
        if (p->sh->node == topology_node(0)) old = p;
    assert_non_null(old);
    assert_int_equal(old->n_idle, 0);
    harness_stop();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_is_never_exceeded),
        cmocka_unit_test(test_waiters_are_served_first_come_first_served),
        cmocka_unit_test(test_pool_timeout_fails_the_waiter_with_53300_on_time),
        cmocka_unit_test(test_idle_overflow_servers_close_after_the_overflow_timeout),
        cmocka_unit_test(test_vanished_client_leaves_an_unsynced_server_closed),
        cmocka_unit_test(test_idle_server_is_handed_to_a_waiter_on_another_worker),
        cmocka_unit_test(test_unix_socket_server_is_handed_over_as_a_pipe),
        cmocka_unit_test(test_reply_when_nothing_is_owed_ends_the_server),
        cmocka_unit_test(test_set_pipelined_behind_a_query_is_refused),
        cmocka_unit_test(test_writer_waits_for_failover_past_the_connect_timeout_then_fails_with_08006),
        cmocka_unit_test(test_without_failover_the_writer_fails_after_the_connect_timeout),
        cmocka_unit_test(test_waiters_go_to_the_new_primary_at_the_switch),
        cmocka_unit_test(test_fenced_nodes_servers_are_never_handed_out_again),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
