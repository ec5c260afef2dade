/* Stateful fuzz target for the relay: the input is a script of operations
 * on clients and servers (connect, send, vanish, stall, drain, a server's
 * replies, its death, the clock moving) played against the real client,
 * relay and pool code over the in-memory network of tests/fakenet.c, with
 * the invariants of tests/harness.c checked after every operation (a
 * violation traps).  Byte 0 picks the configuration; each operation is an
 * opcode byte and its operands; missing bytes read as zero. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "worker.h"

typedef struct rd {
    const uint8_t *p;
    size_t n;
} rd;

static uint8_t u8(rd *r)
{
    if (!r->n) return 0;
    r->n--;
    return *r->p++;
}

static size_t bytes(rd *r, uint8_t *out, size_t want)
{
    size_t k = want < r->n ? want : r->n;
    memcpy(out, r->p, k);
    r->p += k;
    r->n -= k;
    return k;
}

#define MAX_CLIENTS 8

static fn_conn *clients[MAX_CLIENTS];
static int n_clients;
static uint64_t client_bytes;

static void client_send(fn_conn *c, const void *p, size_t n)
{
    client_bytes += n;
    fakenet_send(c, p, n);
}

static void client_msg(fn_conn *c, char type, const void *body, size_t len)
{
    uint8_t buf[600];
    size_t n = fakepg_msg(buf, sizeof(buf), type, body, len);
    if (n) client_send(c, buf, n);
}

static fn_conn *pick_client(rd *r)
{
    if (!n_clients) {
        u8(r);
        return NULL;
    }
    return clients[u8(r) % n_clients];
}

static fn_conn *pick_server(rd *r)
{
    uint8_t k = u8(r);
    int n = 0;
    while (harness_server_conn(n)) n++;
    return n ? harness_server_conn(k % n) : NULL;
}

static const char *const sqls[] = {
    "SELECT 1", "BEGIN", "COMMIT", "ROLLBACK", "SET search_path = a",
    "RESET ALL", "DISCARD ALL", "PREPARE p AS SELECT 1", "DEALLOCATE p", "DEALLOCATE ALL",
    "LISTEN x", "COPY t FROM STDIN", "SELECT pg_advisory_lock(1)",
    "CREATE TEMP TABLE t(a int)", "SET LOCAL x = 1", "EXECUTE p", "SELECT set_config('a.b', '1', false)",
};
static const char *const names[] = {"", "s1", "s2", "p"};

/* A frontend message of a realistic shape. */
static void client_structured(fn_conn *c, rd *r)
{
    uint8_t kind = u8(r), a = u8(r);
    uint8_t b[600];
    size_t n = 0;
    const char *sql = sqls[a % PGS_ARRAY_LEN(sqls)];
    const char *name = names[(a >> 5) % PGS_ARRAY_LEN(names)];
    switch (kind % 9) {
    case 0: /* Query */
        client_msg(c, 'Q', sql, strlen(sql) + 1);
        return;
    case 1: /* Parse name sql 0 */
        n = (size_t)sprintf((char *)b, "%s", name) + 1;
        n += (size_t)sprintf((char *)b + n, "%s", sql) + 1;
        b[n++] = 0, b[n++] = 0;
        client_msg(c, 'P', b, n);
        return;
    case 2: /* Bind "" name, no params, no result formats */
        b[n++] = 0;
        n += (size_t)sprintf((char *)b + n, "%s", name) + 1;
        memset(b + n, 0, 6), n += 6;
        client_msg(c, 'B', b, n);
        return;
    case 3: /* Execute "" 0 */
        memset(b, 0, 5);
        client_msg(c, 'E', b, 5);
        return;
    case 4: /* Describe */
    case 5: /* Close */
        b[n++] = (a & 1) ? 'P' : 'S';
        n += (size_t)sprintf((char *)b + n, "%s", name) + 1;
        client_msg(c, kind % 9 == 4 ? 'D' : 'C', b, n);
        return;
    case 6:
        client_msg(c, 'S', NULL, 0);
        return;
    case 7:
        client_msg(c, 'H', NULL, 0);
        return;
    case 8: /* CopyData, CopyDone, CopyFail */
        if (a % 3 == 0) client_msg(c, 'd', "1\t2\n", 4);
        if (a % 3 == 1) client_msg(c, 'c', NULL, 0);
        if (a % 3 == 2) client_msg(c, 'f', "no\0", 3);
        return;
    }
}

static void server_msg(fn_conn *s, char type, const void *body, size_t len)
{
    fakepg_send(s->user, type, body, len);
}

/* A backend reply of a realistic shape. */
static void server_structured(fn_conn *s, rd *r)
{
    uint8_t kind = u8(r);
    static const char err[] = "SERROR\0C42601\0Msyntax error\0";
    static const char err26[] = "SERROR\0C26000\0Mprepared statement does not exist\0";
    static const uint8_t rowdesc[] = {0, 1, 'a', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4,
                                      0xff, 0xff, 0xff, 0xff, 0, 0};
    static const uint8_t row[] = {0, 1, 0, 0, 0, 1, '1'};
    switch (kind % 12) {
    case 0: server_msg(s, 'C', "SELECT 1", 9); fakepg_ready(s->user, 'I'); break;
    case 1: server_msg(s, 'C', "BEGIN", 6); fakepg_ready(s->user, 'T'); break;
    case 2: fakepg_ready(s->user, 'E'); break;
    case 3: server_msg(s, 'E', err, sizeof(err)); fakepg_ready(s->user, 'I'); break;
    case 4:
        server_msg(s, 'T', rowdesc, sizeof(rowdesc));
        server_msg(s, 'D', row, sizeof(row));
        server_msg(s, 'C', "SELECT 1", 9);
        fakepg_ready(s->user, 'I');
        break;
    case 5: server_msg(s, '1', NULL, 0); break;
    case 6: server_msg(s, '2', NULL, 0); break;
    case 7: server_msg(s, 'G', "\0\0\0", 3); break;
    case 8: server_msg(s, 'H', "\0\0\0", 3); server_msg(s, 'd', "1\n", 2); server_msg(s, 'c', NULL, 0); break;
    case 9: server_msg(s, 'E', err26, sizeof(err26)); break;
    case 10: server_msg(s, 'n', NULL, 0); break;
    case 11: server_msg(s, 'S', "TimeZone\0UTC\0", 13); break;
    }
}

static const uint64_t clock_steps_ms[] = {1, 50, 120, 300, 1100, 5100, 10100, 30100, 61000, 601000};

static void run(rd *r)
{
    uint8_t cfg = u8(r);
    harness_opts o = {
        .workers = (cfg & 2) ? 2 : 1,
        .pool_size = 2,
        .max_overflow = 1,
        .session_mode = cfg & 1,
        .pool_timeout_ms = 30000,
        .overflow_idle_timeout_ms = (cfg & 4) ? 0 : 1000,
        .login_mode = FAKEPG_LOGIN_OK,
    };
    harness_start(&o);
    n_clients = 0;
    client_bytes = 0;
    uint8_t buf[512];
    int ops = 0;
    while (r->n && ops++ < 400) {
        uint8_t op = u8(r);
        fn_conn *c, *s;
        switch (op % 16) {
        case 0: { /* a client connects and sends its start-up message */
            uint8_t a = u8(r);
            if (n_clients == MAX_CLIENTS) break;
            c = fakenet_client_connect(harness_worker((a & 1) % g_pgs.n_workers));
            clients[n_clients++] = c;
            size_t n = fakepg_startup(buf, sizeof(buf), "app", (a & 2) ? "db2" : "app");
            client_send(c, buf, n);
            break;
        }
        case 1: { /* a client sends a framed message of any type */
            c = pick_client(r);
            uint8_t type = u8(r), len = u8(r);
            size_t n = bytes(r, buf, len);
            if (c) client_msg(c, (char)type, buf, n);
            break;
        }
        case 2:
            c = pick_client(r);
            if (c) client_structured(c, r);
            break;
        case 3: { /* raw bytes from a client */
            c = pick_client(r);
            size_t n = bytes(r, buf, u8(r) % 64);
            if (c) client_send(c, buf, n);
            break;
        }
        case 4: /* a client vanishes */
            c = pick_client(r);
            if (c && (u8(r) & 1))
                fakenet_peer_reset(c);
            else if (c)
                fakenet_peer_close(c);
            break;
        case 5: { /* a client stops reading, reads a little, or drains */
            c = pick_client(r);
            uint8_t v = u8(r);
            if (c) fakenet_set_limit(c, v == 255 ? SIZE_MAX : (size_t)v * 64);
            break;
        }
        case 6: { /* a server sends a framed message of a backend type */
            static const char types[] = "123CDTEZInsSNAGHWcdtKR";
            s = pick_server(r);
            uint8_t t = u8(r), len = u8(r);
            size_t n = bytes(r, buf, len);
            if (s) server_msg(s, types[t % (sizeof(types) - 1)], buf, n);
            break;
        }
        case 7:
            s = pick_server(r);
            if (s) server_structured(s, r);
            break;
        case 8: { /* raw bytes from a server */
            s = pick_server(r);
            size_t n = bytes(r, buf, u8(r) % 64);
            if (s) fakenet_send(s, buf, n);
            break;
        }
        case 9: /* a server dies */
            s = pick_server(r);
            if (s && (u8(r) & 1))
                fakenet_peer_reset(s);
            else if (s)
                fakenet_peer_close(s);
            break;
        case 10: { /* a server stops reading, or drains */
            s = pick_server(r);
            uint8_t v = u8(r);
            if (s) fakenet_set_limit(s, v == 255 ? SIZE_MAX : (size_t)v * 64);
            break;
        }
        case 11: /* time passes; the janitors run */
            harness_advance_ms(clock_steps_ms[u8(r) % PGS_ARRAY_LEN(clock_steps_ms)]);
            break;
        case 12: { /* a pending connect completes or fails */
            uint8_t v = u8(r);
            s = harness_pending_connect();
            if (!s) break;
            fakepg *pg = s->user;
            if (v % 5 == 3) {
                fakenet_connect_done(s, UV_ECONNREFUSED);
                break;
            }
            pg->login_mode = v % 5 == 1 ? FAKEPG_LOGIN_ERROR
                             : v % 5 == 2 ? FAKEPG_LOGIN_SILENT
                                          : FAKEPG_LOGIN_OK;
            fakenet_connect_done(s, 0);
            break;
        }
        case 13: { /* a server sends many rows */
            s = pick_server(r);
            unsigned k = (unsigned)u8(r) * 16u;
            uint8_t row[110] = {0, 1, 0, 0, 0, 100};
            memset(row + 6, 'x', 100);
            for (unsigned i = 0; s && i < k; i++) server_msg(s, 'D', row, 106);
            break;
        }
        case 14: { /* a client sends many messages */
            c = pick_client(r);
            unsigned k = (unsigned)u8(r) * 8u;
            uint8_t t = u8(r);
            for (unsigned i = 0; c && i < k; i++) {
                if (t & 1)
                    client_msg(c, 'd', "0123456789abcdef0123456789abcdef", 32);
                else
                    client_msg(c, 'Q', "SELECT 1", 9);
            }
            break;
        }
        case 15: { /* a cancel request for one of the clients */
            c = pick_client(r);
            pgs_client *cl = harness_client_of(c);
            if (!cl || n_clients == MAX_CLIENTS) break;
            uint8_t cr[16] = {0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e};
            uint32_t pid = worker_client_pid(cl), key = cl->cancel_key;
            for (int i = 0; i < 4; i++) {
                cr[8 + i] = (uint8_t)(pid >> (24 - 8 * i));
                cr[12 + i] = (uint8_t)(key >> (24 - 8 * i));
            }
            fn_conn *cc = fakenet_client_connect(harness_worker(0));
            clients[n_clients++] = cc;
            client_send(cc, cr, 16);
            break;
        }
        }
        harness_pump();
        const char *bad = harness_check(client_bytes);
        if (bad) {
            fprintf(stderr, "fuzz_relay: invariant broken after operation %d (opcode %u): %s\n",
                    ops, op % 16, bad);
            __builtin_trap();
        }
        for (int i = 0; i < n_clients; i++) harness_clear(clients[i]);
    }
    harness_stop();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *lv = getenv("FUZZ_RELAY_LOG");
    pgs_log_level = lv ? atoi(lv) : -1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rd r = {data, size};
    run(&r);
    return 0;
}
