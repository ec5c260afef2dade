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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
