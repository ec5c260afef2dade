/* Worker threads: one libuv loop each, with its own listening socket
 * (SO_REUSEPORT), clients, per-worker pool parts, buffer pool and
 * janitor timer.  Workers talk to each other only through messages. */
#ifndef PGS_WORKER_H
#define PGS_WORKER_H

#include "endpoint.h"
#include "types.h"

#define PGS_BUF_SIZE (16 * 1024)
#define PGS_SCRATCH_SIZE (64 * 1024)
#define PGS_MAX_WORKERS 64

enum worker_msg_kind {
    WM_CANCEL = 1,     /* forward a cancel for one of our clients */
    WM_HANDOFF,        /* a server was handed over to us: adopt it */
    WM_WANT_SERVER,    /* another worker has waiters in pool: give idle ones */
    WM_SHUTDOWN,       /* stop accepting, drain */
    WM_STOP,           /* stop now */
    WM_CALL,           /* run fn(worker, arg) on the worker's thread */
    /* Control messages from the admin console / SIGHUP, sent to every worker
     * by worker_broadcast_ctl; each carries a generation the worker
     * acknowledges (ctl_seen) once it has acted on it. */
    WM_CONFIG,         /* a new configuration snapshot is published */
    WM_PAUSE,          /* PAUSE name: the pools' paused flags are set */
    WM_RESUME,         /* RESUME: serve the clients that waited */
    WM_KILL,           /* KILL name: close its clients and servers */
    WM_WAIT_CLOSE,     /* WAIT_CLOSE name: close its old idle servers */
    WM_PING,           /* nothing: the acknowledgement shows the loop turns (watchdog) */
};

typedef struct pgs_worker_msg {
    pgs_list node;
    int kind;
    uint32_t a, b;
    pgs_pool_shared *pool;
    void (*fn)(pgs_worker *w, void *arg); /* WM_CALL */
    void *arg;
    char *name;           /* control messages: database name, NULL = all (owned) */
    uint64_t gen;         /* control messages: generation to acknowledge */
} pgs_worker_msg;

struct pgs_worker {
    int id;
    uv_loop_t loop;
    uv_thread_t thread;
    /* listening sockets: TCP ones in every worker (SO_REUSEPORT), Unix
     * ones in worker 0 only (a socket file can be bound once) */
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } listeners[PGS_MAX_LISTEN];
    char *unix_paths[PGS_MAX_LISTEN]; /* socket files to remove at exit */
    int n_listeners;
    uv_async_t async;
    uv_timer_t janitor;
    uv_timer_t drain_timer;
    const pgs_config *cfg;
    /* The parse cache of routing (route.c), made on first use; this
     * worker's alone (classify.h). */
    struct pgs_classify_cache *classify;
    /* The result cache's store and counters (rcache.c), made on first use;
     * published once (other threads read its counters for SHOW CACHE). */
    struct rcache_worker *rcache;

    /* Membership of these lists changes only when a connection opens or
     * closes; lock guards it so the admin console (another thread) can walk
     * them.  Per-transaction state changes do not take the lock. */
    pthread_mutex_t lock;
    pgs_list clients;
    pgs_list servers;     /* via server->all_node */
    pgs_pool *pools;
    _Atomic int n_clients;

    /* cross-thread inbox */
    pthread_mutex_t inbox_lock;
    pgs_list inbox;

    /* free read buffers (PGS_BUF_SIZE each) */
    void *free_bufs;
    int n_free_bufs;
    /* free write states (io.c's pgs_wreq), for sockets with a write pending */
    void *free_wreqs;
    int n_free_wreqs;

    /* scratch for rewritten/synthesized messages while one batch is built */
    uint8_t scratch[PGS_SCRATCH_SIZE];
    uint32_t scratch_len;

    bool listening;
    bool draining;
    bool stopping;
    _Atomic bool finished;  /* the thread has left its loop */
    int spare_fd;         /* kept to refuse clients politely at EMFILE */
    uint32_t next_id;
    /* statement bodies this worker's clients prepared (prepared.h), created
     * on first use */
    struct pgs_stmt_tab *stmt_tab;
    /* Statements whose body a batch being built points at (send_parse):
     * each holds a reference until that batch has been written or copied,
     * so a Close or DEALLOCATE later in the same batch cannot free it. */
    struct pgs_stmt *batch_pins[32];
    int n_batch_pins;
    /* The last control message this worker has acted on (see
     * worker_broadcast_ctl). */
    _Atomic uint64_t ctl_seen;
};

typedef struct pgs_global {
    /* The configuration snapshot in effect: swapped atomically by reload.c
     * (see its header for when an old snapshot may be freed).  Read it
     * inside a callback; do not keep the pointer across callbacks. */
    const pgs_config *_Atomic cfg;
    pgs_worker *workers;
    int n_workers;
    pthread_mutex_t pools_lock;
    pgs_pool_shared *pools;
    _Atomic int total_clients;      /* every accepted connection */
    _Atomic int logged_in_clients;  /* held to max_client_conn (console clients aside) */
    _Atomic int pending_logins;     /* not logged in yet: held to max_pending_logins */
    int fd_limit;               /* RLIMIT_NOFILE soft limit after start-up */
    _Atomic int shutting_down;  /* 1 = draining (SIGTERM) */
    uint64_t start_wall_us;
} pgs_global;

extern pgs_global g_pgs;

/* Makes the workers (loop, inbox, buffers) and, with listen, their
 * listening sockets and janitor timers.  worker_start_all() does that and
 * starts one thread per worker; a test harness calls worker_init_all(cfg,
 * false) instead and drives one thread's loops itself (UV_RUN_NOWAIT for
 * messages between workers, worker_janitor() with its own clock). */
PGS_MUSTCHECK int worker_init_all(const pgs_config *cfg, bool listen);
PGS_MUSTCHECK int worker_start_all(const pgs_config *cfg);
/* Every time bound of worker w, as its janitor timer runs them. */
void worker_janitor(pgs_worker *w, uint64_t now);
/* Frees the workers and every pool once their connections are closed and
 * freed (no thread running; for tests and harnesses). */
void worker_free_all(void);
void worker_broadcast(int kind);
void worker_join_all(void);
bool worker_all_finished(void);
void worker_post(pgs_worker *w, pgs_worker_msg *m);   /* takes ownership of m */
/* Sends control message `kind` (about database `name`, NULL = all) to
 * every worker and returns its generation.  Any thread.  Generations are
 * handed out and posted under one lock, so every worker sees them in
 * increasing order. */
uint64_t worker_broadcast_ctl(int kind, const char *name);
/* True once every worker has acted on control message `gen` (a worker
 * that has stopped counts as done). */
bool worker_ctl_done(uint64_t gen);

uint8_t *worker_buf_get(pgs_worker *w);
void worker_buf_put(pgs_worker *w, uint8_t *b);

/* Looks up the client whose BackendKeyData carried pid/key and asks its
 * worker to forward a cancel.  Any thread. */
void worker_route_cancel(uint32_t pid, uint32_t key);
/* Encodes worker index and client id into the pid handed to clients. */
uint32_t worker_client_pid(const pgs_client *c);

#endif
