/* pgscale without threads on the fake network: the workers' structures
 * and loops (no listeners, no janitor timer), a fake clock, fakenet for
 * sockets and fakepg for every server connection pgscale opens.  Used by
 * the relay fuzz target and the pool/relay unit tests. */
#ifndef PGS_HARNESS_H
#define PGS_HARNESS_H

#include "fakenet.h"
#include "fakepg.h"
#include "types.h"

typedef struct harness_opts {
    int workers;
    int pool_size, max_overflow;
    bool session_mode;
    uint32_t pool_timeout_ms;
    uint32_t overflow_idle_timeout_ms;
    int login_mode;          /* how fakepg answers the logins it sees (FAKEPG_LOGIN_*) */
    int replicas;            /* nodes besides the primary (no monitor runs) */
} harness_opts;

void harness_start(const harness_opts *o);
/* Closes every connection, runs what is deferred, frees everything. */
void harness_stop(void);
/* Runs deferred callbacks, deliveries and the workers' messages until
 * nothing moves; attaches fakepg to new server connections. */
void harness_pump(void);
/* Advances the fake clock and runs every worker's janitor. */
void harness_advance_ms(uint64_t ms);
uint64_t harness_now_us(void);

pgs_config *harness_config(void);
pgs_worker *harness_worker(int i);
/* A client on worker wi that sends its start-up message. */
fn_conn *harness_client(int wi, const char *user, const char *db);
/* A frontend message from a client. */
void harness_client_msg(fn_conn *c, char type, const void *body, size_t len);
void harness_client_query(fn_conn *c, const char *sql);
/* Server connections waiting for their connect to complete, oldest first. */
fn_conn *harness_pending_connect(void);
/* The n-th server connection made (0-based), or NULL. */
fn_conn *harness_server_conn(int n);
/* The pgscale client / server bound to a fake connection (NULL: none). */
pgs_client *harness_client_of(fn_conn *c);
pgs_server *harness_server_of(fn_conn *c);
/* The first pool part of worker wi (NULL: none). */
pgs_pool *harness_pool(int wi);
/* Whether the peer has received an ErrorResponse with this SQLSTATE. */
bool harness_got_error(fn_conn *c, const char *sqlstate);
/* How many messages of this type the peer has received (since harness_clear). */
int harness_count_msgs(fn_conn *c, char type);
/* The peer takes everything pgscale sent it. */
void harness_clear(fn_conn *c);

#endif

/* Checks the invariants below over every worker, pool and connection and
 * returns NULL, or what is wrong.  client_bytes: what all clients sent so
 * far (bounds the expected-response queues).
 * - a server is on an idle list only if fakepg's own record says it is idle;
 * - one server, one client: links are mutual, no server has two clients,
 *   idle servers have none;
 * - the pools' counters are what their lists and the live sockets say,
 *   and the budget (pool_size + max_overflow) is kept;
 * - memory is bounded: read buffers, pending output, expected responses. */
const char *harness_check(uint64_t client_bytes);
/* The bound on one socket's pending output that harness_check enforces. */
#define HARNESS_OUT_BOUND ((128u + 64u + 64u) * 1024u)
