/* Types shared by the connection modules (client, server, relay, pool,
 * worker, admin).  Kept in one small header so that those headers do not
 * include each other in circles. */
#ifndef PGS_TYPES_H
#define PGS_TYPES_H

#include <stdatomic.h>
#include <pthread.h>
#include <uv.h>

#include "common.h"
#include "config.h"
#include "htab.h"

typedef struct pgs_worker pgs_worker;
typedef struct pgs_client pgs_client;
typedef struct pgs_server pgs_server;
typedef struct pgs_pool pgs_pool;
typedef struct pgs_pool_shared pgs_pool_shared;
typedef struct pgs_stmt pgs_stmt;
typedef struct pgs_stmt_map pgs_stmt_map;
typedef struct pgs_stmt_set pgs_stmt_set;
typedef struct pgs_params pgs_params;

/* Intrusive doubly-linked list (a node that is not on a list points at
 * itself, so removal is always safe). */
typedef struct pgs_list {
    struct pgs_list *prev, *next;
} pgs_list;

static inline void list_init(pgs_list *l) { l->prev = l->next = l; }
static inline bool list_empty(const pgs_list *l) { return l->next == l; }
static inline void list_del(pgs_list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}
static inline void list_add_tail(pgs_list *head, pgs_list *n)
{
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}
static inline void list_add_head(pgs_list *head, pgs_list *n)
{
    n->next = head->next;
    n->prev = head;
    head->next->prev = n;
    head->next = n;
}
#define list_entry(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* Read buffer.  data is NULL while the connection is idle: buffers are
 * borrowed from the worker's pool only while bytes are in flight. */
typedef struct pgs_buf {
    uint8_t *data;
    uint32_t cap;
    uint32_t len;   /* bytes held */
    uint32_t pos;   /* bytes consumed */
} pgs_buf;

/* What a socket is writing but the kernel has not taken yet.  An idle
 * connection holds no write state at all: io.c takes a pgs_wreq (the libuv
 * write request and the copied-aside bytes) from the worker's free list
 * when the kernel refuses bytes, and gives it back once they are written.
 * While a write is pending, the peer that feeds this socket stops reading
 * (back-pressure), and a client socket whose own pending output passes a
 * high-water mark stops being read itself (see io.c). */
typedef struct pgs_wreq pgs_wreq;
typedef struct pgs_wbuf {
    pgs_wreq *req;          /* non-NULL exactly while a write is pending */
    bool pending;
} pgs_wbuf;

/* Nodes pgscale can know (topology.h's PGS_MAX_NODES). */
#define PGS_MAX_NODES_T 16

/* One socket plus its buffers; both client and server embed one. */
enum { PGS_SOCK_CLIENT = 0, PGS_SOCK_SERVER = 1 };
typedef struct pgs_sock {
    /* First member (io.c finds the pgs_sock from the handle).  A client on
     * a Unix socket uses `pipe`; everything else is TCP.  Stream calls go
     * through `tcp` for both: the two share libuv's stream layout. */
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    };
    uint8_t kind;           /* PGS_SOCK_CLIENT or PGS_SOCK_SERVER */
    pgs_buf rbuf;
    pgs_wbuf wb;
    bool reading;           /* libuv is reading the socket */
    bool read_wanted;       /* the owner wants it read (io_read_start) */
    bool throttled;         /* too much output pending: reading paused */
    bool closing;
    struct pgs_tls *tls;    /* NULL: plain TCP; else io.c's TLS state */
    uint64_t bytes_in, bytes_out;
} pgs_sock;

enum client_state {
    CL_STARTUP = 0,   /* reading the start-up packet */
    CL_AUTH,          /* password / SASL exchange with the client */
    CL_WELCOME,       /* waiting for a server to learn its parameters */
    CL_IDLE,          /* logged in, no server */
    CL_WAITING,       /* queued for a server connection */
    CL_ACTIVE,        /* linked to a server */
    CL_ADMIN,         /* admin console */
    CL_CLOSING,
};

enum server_state {
    SV_CONNECTING = 0,
    SV_LOGIN,
    SV_IDLE,
    SV_ACTIVE,        /* linked to a client */
    SV_RESET,         /* running our own reset/sync query */
    SV_CLOSING,
};

/* Expected responses from a server, in request order.  RUN entries stand
 * for `count` ordinary extended-protocol requests whose completions are
 * relayed untouched; the others need an action when their response (or
 * their turn, for the fake ones that are never sent) arrives. */
enum expect_kind {
    EX_RUN = 0,        /* count requests relayed as they are */
    EX_SYNC,           /* Sync: ends with ReadyForQuery */
    EX_QUERY,          /* simple Query / FunctionCall: ends with ReadyForQuery */
    EX_INTERNAL,       /* our own simple Query: swallow everything up to 'Z' */
    EX_PARSE,          /* client's named Parse, sent renamed: on error forget it */
    EX_PARSE_SWALLOW,  /* Parse we injected: swallow ParseComplete */
    EX_CLOSE_SWALLOW,  /* Close we injected (eviction): swallow CloseComplete */
    EX_FAKE_PARSE,     /* not sent (server had it): emit ParseComplete */
    EX_FAKE_CLOSE,     /* not sent: emit CloseComplete */
    EX_FAKE_QUERY,     /* simple query answered by us (DEALLOCATE): tag + Z */
    EX_FAKE_ERROR,     /* simple query refused by us: ErrorResponse 0A000 + Z */
    EX_STMT_RUN,       /* Bind/Describe of a renamed statement (id): like one RUN,
                        * but a 26000 error means the server lost it */
    EX_FAKE_BIND,      /* extended protocol, statement answered by us: BindComplete */
    EX_FAKE_DESC_STMT, /* ... Describe statement: ParameterDescription + NoData */
    EX_FAKE_NODATA,    /* ... Describe portal: NoData */
    EX_FAKE_EXEC,      /* ... Execute: CommandComplete tag */
    EX_FAKE_EXT_ERROR, /* extended request refused by us: ErrorResponse 54000 (no Z:
                        * the client's messages up to Sync are dropped) */
};

typedef struct pgs_expect {
    uint8_t kind;
    uint32_t count;          /* EX_RUN only */
    uint64_t id;             /* EX_PARSE*, EX_CLOSE_SWALLOW, EX_STMT_RUN: statement id */
    const char *tag;         /* EX_FAKE_QUERY, EX_FAKE_EXEC: tag; EX_FAKE_*ERROR: message,
                              * for EX_FAKE_EXT_ERROR after its 5-character SQLSTATE */
    char *owned;             /* a message built for this entry (freed with it) */
} pgs_expect;

typedef struct pgs_expect_q {
    pgs_expect *items;
    uint32_t cap, head, count;
} pgs_expect_q;

/* Counters a worker owns and writes without locks; the admin console reads
 * them with relaxed atomics from another thread. */
/* Histogram buckets (upper bounds in µs, metrics.c's pgs_hist_bounds_us)
 * and SQLSTATE classes (metrics.c's table) kept per pool for /metrics. */
#define PGS_HIST_BUCKETS 17   /* 16 bounds from 100 µs to 10 s, then +Inf */
#define PGS_ERR_CLASSES 44    /* PostgreSQL's 43 classes, then any other */

typedef struct pgs_pool_stats {
    _Atomic uint64_t xact_count, query_count, bytes_in, bytes_out;
    _Atomic uint64_t xact_us, query_us, wait_us, wait_count;
    _Atomic uint64_t checkouts;      /* clients that asked this pool for a server */
    _Atomic uint64_t pool_timeouts;  /* of them, failed after pool_timeout */
    _Atomic uint64_t xact_hist[PGS_HIST_BUCKETS]; /* transaction time, per bucket */
    _Atomic uint64_t wait_hist[PGS_HIST_BUCKETS]; /* checkout wait, per bucket */
    _Atomic uint64_t errors[PGS_ERR_CLASSES];     /* errors sent to clients, per class */
} pgs_pool_stats;

struct pgs_client {
    pgs_list node;            /* worker->clients */
    pgs_list wait_node;       /* wait_pool->waiting */
    struct pgs_pool *wait_pool; /* the pool c waits in: its own, or another node's */
    pgs_sock s;
    pgs_worker *w;
    pgs_pool *pool;
    pgs_server *server;       /* linked server, if any */
    const pgs_server *last_server; /* the last one linked; only compared (relay_link) */
    uint32_t id;
    _Atomic int state;
    _Atomic uint32_t server_id;   /* for SHOW CLIENTS */
    uint32_t cancel_key;
    uint32_t fwd_remaining;   /* rest of a message being streamed to the server */
    uint32_t skip_remaining;  /* rest of a refused message to drop */
    uint64_t bytes_counted;   /* s.bytes_in already added to pool stats */
    char tx_status;           /* last ReadyForQuery status seen by the client */
    bool is_admin;
    uint8_t pool_mode;        /* the pool's mode when the client logged in: a RELOAD
                               * that changes it applies to clients that log in after */
    bool want_close;          /* close once pending writes drain */
    bool cancel_sent;         /* query_timeout already cancelled this query */
    /* Transaction mode: session state on its server that cannot follow it
     * (SQLSCAN_STATE_* reasons) pins the client to that server until the
     * state is gone.  Non-zero exactly while it holds a slot of its pool's
     * max_pinned.  Read by SHOW CLIENTS from another thread. */
    _Atomic uint8_t pin;
    uint8_t pin_logged;       /* reasons already logged for this client */
    /* Transaction mode, sequence state (relay.c, "sequence state"):
     * seq_uid names this client to the servers it uses (never reused);
     * seq_run is the server run (see pgs_server) of its last statement
     * that may have called nextval (0: none since login or DISCARD);
     * seq_split: such statements ran in more than one run; seq_reader: it
     * has called lastval()/currval(); seq_lost: a read was refused and no
     * statement that may call nextval followed yet; unnamed_seq:
     * SQLSCAN_SEQ_* of its unnamed prepared statement. */
    uint64_t seq_uid, seq_run;
    bool seq_split, seq_reader, seq_lost;
    uint8_t unnamed_seq;
    uint8_t close_reason_set;
    uint64_t connect_us, wait_start_us, active_us, xact_start_us, query_start_us;
    uint64_t last_activity_us;
    char *user, *database, *app_name;  /* one allocation, user owns it */
    pgs_params *params;       /* session settings to carry (NULL = none) */
    pgs_stmt_map *stmts;      /* named prepared statements (transaction mode) */
    struct pgs_local_ext *lx; /* statements/portals answered by pgscale (NULL: none) */
    bool ext_skip;            /* a request was refused: drop messages up to Sync */
    bool pipeline_full;       /* too many requests in flight: not read until answered */
    struct pgs_client_auth *auth; /* during CL_AUTH only */
    bool unix_socket;         /* connected through a Unix socket */
    bool login_pending;       /* counted in g_pgs.pending_logins (and its address's count) */
    bool counted;             /* counted in g_pgs.logged_in_clients */
    uint8_t refused;          /* a pending-login bound refused it (enum in client.c):
                               * told so at its first packet */
    struct pgs_admin_wait *admin_wait; /* admin console: a PAUSE / WAIT_CLOSE in progress */
    /* Session mode: the client gets its server at login, and its
     * BackendKeyData carries that server's real pid (with our own key).
     * login_checkout: that server is being waited for.  real_pid: the pid
     * handed out (0: our own, transaction mode), and cancel_node links the
     * client into client.c's table that routes cancel requests by key. */
    bool login_checkout;
    uint32_t real_pid;
    htab_node cancel_node;
    /* Transaction mode: the server of the client's transaction ended with
     * a FATAL while no request was in flight.  The SQLSTATE (5 bytes) and
     * the message for the client's next request, which gets it as an
     * ERROR (relay.c); tx_lost_sent: that ERROR went, the Sync of its
     * extended-protocol sequence is still to be answered. */
    char *tx_lost;
    bool tx_lost_sent;
    /* Routing (route.c), with replicas only.  need_lsn: the primary's WAL
     * position after this client's last write (read-your-writes: its
     * reads go only where that is replayed).  tx_wrote: what runs on the
     * primary now may have written.  replica_tx: a BEGIN READ ONLY
     * transaction is open on the linked replica. */
    bool tx_wrote;
    bool replica_tx;
    bool strict_pending;      /* counted in route.c's writes in flight (strict) */
    bool want_replica;        /* logged in to "<db>@replica": reads only, on replicas */
    bool ran_ddl;             /* DDL went to the primary: reread volatility at release */
    uint64_t need_lsn;
    uint64_t lsn_unknown_us;  /* need_lsn is UINT64_MAX since: see route_lsn_unknown */
    /* Retrying a read (relay.c, "retrying a read").  unit_retryable: what
     * route_unit_allowed said of the unit it just let through (a proven
     * read on a replica, outside any transaction).  retry_buf: a copy of
     * that unit's request bytes (retry_len of them) while no byte of its
     * answer has gone to the client (s.bytes_out still retry_mark); NULL
     * when it cannot be retried.  retry_from: the node a retried unit
     * failed on (route.c does not pick it again), retry_state its FATAL's
     * SQLSTATE ("" for a lost connection), both for the one log line. */
    bool unit_retryable;
    uint32_t retry_len;
    uint8_t *retry_buf;
    uint64_t retry_mark;
    const struct pgs_node *retry_from;
    char retry_state[6];
    /* The result cache (rcache.c): the fill this client's Query feeds
     * (NULL: none; the relay copies the server's answer into it), and the
     * client's other cache state (NULL until the cache first sees it). */
    struct pgs_cache_fill *cfill;
    struct pgs_client_cache *ccache;
    char addr[48];
    uint16_t port;
};

struct pgs_server {
    pgs_list node;            /* pool->idle or pool->used / login */
    pgs_sock s;
    uv_connect_t connect_req;
    pgs_worker *w;
    pgs_pool *pool;
    pgs_client *client;
    pgs_list all_node;        /* worker->servers */
    uint32_t id;
    _Atomic int state;
    _Atomic uint32_t client_id;   /* for SHOW SERVERS */
    _Atomic uint32_t n_prepared;  /* for SHOW SERVERS */
    bool query_failed;        /* an ErrorResponse in the current request */
    /* Pin reasons the simple query in flight ends when it succeeds outside a
     * transaction block (DISCARD TEMP, UNLISTEN *, CLOSE ALL, ...). */
    uint8_t pending_unpin;
    /* Sequence state (transaction mode): the client whose session's
     * sequence values the server holds (its seq_uid), the run -- a
     * process-unique number taken each time the server passes to another
     * client -- and whether a statement that may call nextval ran in it. */
    uint64_t seq_owner, seq_run;
    bool seq_dirty;
    bool pending_seq_reset;   /* DISCARD SEQUENCES/ALL in flight: forget the history */
    char *pending_set_name;   /* SET/RESET to record once it succeeds */
    char *pending_set_stmt;
    int pending_set_kind;
    uint32_t backend_pid, backend_key;
    /* The pid the client it serves, or served last, was given when that
     * client is in transaction mode (pgscale's own); 0 when the backend's
     * real pid stands (a session-mode client knows that one).  Read by
     * other workers translating a notification's sender (server_sender_pid). */
    _Atomic uint32_t client_pid;
    htab_node pid_node;       /* in the backend-pid table, once logged in */
    bool pid_listed;
    uint32_t fwd_remaining;   /* rest of a message being streamed to the client */
    bool fwd_drop;            /* the message being streamed is swallowed */
    uint64_t bytes_counted;   /* s.bytes_in already added to pool stats */
    char tx_status;
    bool broken;              /* must not go back to the pool */
    bool fatal_relayed;       /* its FATAL went to the client as it was (session mode):
                               * the close that follows adds nothing */
    bool reset_pending;       /* DISCARD ALL on next release (session mode) */
    /* An extended-protocol message (Parse, Bind, Execute, Describe, Close)
     * went to the server after its last Sync or Query: it may be inside an
     * implicit transaction that the next simple Query or Sync would commit,
     * whatever its last ReadyForQuery said. */
    bool unsynced;
    bool unsynced_run;        /* ... and a Bind, Execute or Close among them */
    bool lsn_pending;         /* our pg_current_wal_lsn() query is out (route.c) */
    bool lsn_seen;            /* ... and its row was read */
    /* our Sync is out: it ends the implicit transaction that the client's
     * Parse, Describe and Flush opened, whose next request the result
     * cache answered (rcache_serve, RCACHE_SYNC) */
    bool cache_sync;
    /* The client's settings are being restored (relay_link): its requests
     * wait until the server confirms them, so that none runs under the
     * previous client's settings.  The restore is an EX_INTERNAL entry in
     * exq, so a restoring server is never idle by the queue alone. */
    bool restoring;
    /* A RESET ALL (server_reset_settings) was sent ahead of the client's
     * requests, without waiting for it: its failure ends the link. */
    bool resetting;
    uint64_t connect_us, last_used_us, login_start_us;
    uint64_t cancelled_us;    /* when a cancel request was last sent for it */
    pgs_expect_q exq;
    pgs_params *params;       /* settings currently in effect on the server */
    pgs_params *login_params; /* its reported parameters right after login (RESET ALL's) */
    /* The client it served last; only compared, never followed (with the
     * client's last_server, it tells that no one else used it since). */
    const pgs_client *last_client;
    pgs_stmt_set *prepared;   /* statements prepared on this server */
    struct scram_client *scram; /* during SCRAM login only */
    int n_login_params;       /* ParameterStatus seen during login */
    char **login_names, **login_values;
    int transfer_to;          /* worker index during a hand-over, else -1 */
    int handoff_fd;       /* the dup()ed socket during a hand-over */
    struct pgs_tls *handoff_tls; /* its TLS session, travelling with it */
    uint8_t tls_step;         /* login: 1 = SSLRequest sent, 2 = TLS handshake */
    bool on_unix;             /* connected over a Unix socket (s.pipe), not TCP */
};

/* Cross-worker part of a pool: the connection budget.  Only the slow path
 * (opening, closing, handing over a server) writes it.  The settings are
 * atomics because RELOAD and the admin console (any thread) rewrite them
 * while workers read them (an atomic load of an int is a plain load on
 * x86). */
struct pgs_pool_shared {
    char *user, *database;
    struct pgs_node *node;        /* the PostgreSQL node it connects to (topology.h) */
    int node_index;
    _Atomic int open;             /* server connections open or opening, all workers */
    _Atomic int waiting;          /* clients queued, all workers */
    _Atomic int max_total;        /* pool_size + max_overflow */
    _Atomic int pool_size;
    _Atomic int pool_mode;        /* for clients that log in from now on */
    _Atomic uint32_t pool_timeout_ms;
    _Atomic int paused;           /* PAUSE / KILL: no server is handed out */
    /* KILL / WAIT_CLOSE: servers connected before this time are closed as
     * soon as they are idle (0: none). */
    _Atomic uint64_t close_before_us;
    /* Connect back-off, shared by the workers: one worker's successful
     * login ends every worker's wait (a restarted server is used at once),
     * one's failure delays every worker's next attempt. */
    _Atomic uint64_t retry_at_us;     /* no connect attempt before this (0: any time) */
    _Atomic uint32_t retry_delay_us;  /* the last back-off (0: the last attempt succeeded) */
    _Atomic int n_clients;        /* logged-in clients, all workers */
    /* Pinning (transaction mode): whether session state pins a client to
     * its server, at most how many may be pinned, and how many are (a
     * slot is taken with a compare-and-swap, by any worker). */
    _Atomic int pinning;
    _Atomic int max_pinned;
    _Atomic int force_primary;    /* route: primary for this database/user */
    _Atomic int cache;            /* result cache on for this database/user */
    _Atomic int pinned;
    pthread_mutex_t lock;         /* protects the hand-over queue */
    pgs_list handoff;             /* servers on their way to another worker */
    pgs_pool *locals[64];         /* per-worker part, index = worker id */
    /* A worker's part that went unused is moved here (pool.c explains why
     * it is kept until the whole pool is freed); reused if needed again. */
    pgs_pool *retired[64];
    /* Control messages (WM_HANDOFF, WM_WANT_SERVER) naming this pool that
     * are not handled yet: the pool is not freed while any is on its way. */
    _Atomic int refs;
    /* Parameters the server announced at login: sent to clients at start. */
    int n_welcome;
    char **welcome_names, **welcome_values;
    pgs_pool_shared *next;        /* g_pgs.pools, under pools_lock */
    pgs_pool_shared **pprev;      /* the pointer to this one in that list */
    htab_node hnode;              /* the lookup table's (pooltab.c); hash: pooltab_hash */
};

/* Per-worker part of a pool. */
struct pgs_pool {
    pgs_pool_shared *sh;
    pgs_worker *w;
    /* The same (user, database) on the other nodes, on this worker: found
     * once (pool_for_node) and held with a reference on their shared part
     * until this part is retired. */
    struct pgs_pool *node_pool[PGS_MAX_NODES_T];
    pgs_list idle;        /* idle servers, most recently used first */
    pgs_list used;        /* linked, logging in or resetting */
    pgs_list waiting;     /* clients waiting, FIFO */
    /* Written by this worker only, with pgs_count(); read by others. */
    int n_idle, n_used, n_login, n_waiting, n_active_clients;
    int n_connecting;     /* servers being opened for waiters */
    /* When the first client in `waiting` started to wait (0: nobody
     * waits); read by other workers to keep service first come, first
     * served across workers. */
    _Atomic uint64_t head_wait_us;
    uint64_t last_connect_fail_us;
    char last_error[512]; /* why the last connect/login failed */
    char last_sqlstate[6];
    uint32_t fail_log_repeats;  /* identical failures not logged since fail_log_since_us */
    uint64_t fail_log_since_us; /* when the current run of failures was logged (0: none) */
    pgs_pool_stats stats;
    uint64_t unused_since_us; /* janitor: when it found nothing in the pool (0: in use) */
    /* The welcome parameters as one shared block: clients that bring no
     * settings of their own point at it (client.c, copy on write). */
    pgs_params *welcome_params;
    pgs_pool *next;       /* worker's pool list */
};

/* Changes a counter that one thread writes and others read: a pool's n_*
 * counters (its worker writes them; SHOW POOLS and the cross-worker
 * balancing in pool.c read them), a worker's n_free_bufs.  A single writer
 * needs no read-modify-write: a relaxed load and store are plain moves, but
 * being atomic they are no data race with the readers' relaxed atomic
 * loads (C11, and what ThreadSanitizer checks).  Only the owner calls it. */
static inline void pgs_count(int *counter, int delta)
{
    __atomic_store_n(counter, __atomic_load_n(counter, __ATOMIC_RELAXED) + delta,
                     __ATOMIC_RELAXED);
}

/* The same for a pool's statistics (pgs_pool_stats): one writer, its
 * worker, so a relaxed load and store, no read-modify-write. */
static inline void pgs_stat_add(_Atomic uint64_t *ctr, uint64_t v)
{
    atomic_store_explicit(ctr, atomic_load_explicit(ctr, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

/* The histogram bucket of a duration in µs: upper bounds 100 µs, 250 µs,
 * 500 µs, 1 ms ... 10 s (1-2.5-5 steps), then +Inf (metrics.c exports them
 * in seconds). */
static inline unsigned pgs_hist_index(uint64_t us)
{
    static const uint32_t bounds[PGS_HIST_BUCKETS - 1] = {
        100,    250,    500,     1000,    2500,    5000,    10000,   25000,
        50000,  100000, 250000,  500000,  1000000, 2500000, 5000000, 10000000};
    unsigned i = 0;
    while (i < PGS_HIST_BUCKETS - 1 && us > bounds[i]) i++;
    return i;
}

#endif
