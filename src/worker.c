/* Worker threads: each runs its own libuv loop with its own listening
 * socket (SO_REUSEPORT spreads new connections over the workers), its
 * clients, its half of every pool, a read-buffer pool and a janitor timer
 * for every time bound.  Workers share nothing on the data path; they post
 * messages to each other's inbox (mutex-protected list + uv_async). */
#include "worker.h"
#include "classify.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "admin.h"
#include "client.h"
#include "pool.h"
#include "rcache.h"
#include "prepared.h"
#include "proto.h"
#include "reload.h"
#include "server.h"

pgs_global g_pgs;

#define JANITOR_MS 100
#define MAX_FREE_BUFS 256

uint8_t *worker_buf_get(pgs_worker *w)
{
    if (w->free_bufs) {
        void *b = w->free_bufs;
        w->free_bufs = *(void **)b;
        pgs_count(&w->n_free_bufs, -1);
        return b;
    }
    return pgs_xmalloc(PGS_BUF_SIZE);
}

void worker_buf_put(pgs_worker *w, uint8_t *b)
{
    if (w->n_free_bufs >= MAX_FREE_BUFS) {
        free(b);
        return;
    }
    *(void **)b = w->free_bufs;
    w->free_bufs = b;
    pgs_count(&w->n_free_bufs, 1);
}

uint32_t worker_client_pid(const pgs_client *c)
{
    /* Clients get our own "backend pid": the worker in the top bits, the
     * client id below.  PostgreSQL pids are positive int32, so keep bit 31
     * clear for drivers that store it signed. */
    return ((uint32_t)c->w->id << 24 | (c->id & 0xffffffu)) & 0x7fffffffu;
}

void worker_post(pgs_worker *w, pgs_worker_msg *m)
{
    pthread_mutex_lock(&w->inbox_lock);
    list_add_tail(&w->inbox, &m->node);
    pthread_mutex_unlock(&w->inbox_lock);
    uv_async_send(&w->async);
}

void worker_route_cancel(uint32_t pid, uint32_t key)
{
    uint32_t wid = pid >> 24;
    if ((int)wid >= g_pgs.n_workers) return;
    pgs_worker_msg *m = pgs_xcalloc(1, sizeof(*m));
    m->kind = WM_CANCEL;
    m->a = pid & 0xffffffu;
    m->b = key;
    worker_post(&g_pgs.workers[wid], m);
}

void worker_broadcast(int kind)
{
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker_msg *m = pgs_xcalloc(1, sizeof(*m));
        m->kind = kind;
        worker_post(&g_pgs.workers[i], m);
    }
}

/* Control generations are taken and posted under one lock: a worker's
 * inbox is FIFO, so each worker then sees them in increasing order and
 * ctl_seen >= g means it has acted on every message up to g. */
static pthread_mutex_t ctl_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t ctl_gen;

uint64_t worker_broadcast_ctl(int kind, const char *name)
{
    pthread_mutex_lock(&ctl_lock);
    uint64_t gen = ++ctl_gen;
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker_msg *m = pgs_xcalloc(1, sizeof(*m));
        m->kind = kind;
        m->gen = gen;
        m->name = name ? pgs_xstrdup(name) : NULL;
        worker_post(&g_pgs.workers[i], m);
    }
    pthread_mutex_unlock(&ctl_lock);
    return gen;
}

bool worker_ctl_done(uint64_t gen)
{
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker *w = &g_pgs.workers[i];
        if (atomic_load_explicit(&w->ctl_seen, memory_order_acquire) < gen &&
            !atomic_load(&w->finished))
            return false;
    }
    return true;
}

static void stop_loop(pgs_worker *w);

static void handle_cancel(pgs_worker *w, uint32_t id, uint32_t key)
{
    pgs_list *it;
    for (it = w->clients.next; it != &w->clients; it = it->next) {
        pgs_client *c = list_entry(it, pgs_client, node);
        if ((c->id & 0xffffffu) == id) {
            if (c->cancel_key == key && c->is_admin)
                admin_cancel(c);
            else if (c->cancel_key == key)
                client_forward_cancel(c);
            else
                log_info("C-%u: cancel request with a wrong key ignored", c->id);
            return;
        }
    }
}

static void close_listeners(pgs_worker *w);

static void start_drain(pgs_worker *w)
{
    if (w->draining) return;
    w->draining = true;
    close_listeners(w);
    log_info("worker %d: draining: not accepting new clients", w->id);
}

static void on_async(uv_async_t *a)
{
    pgs_worker *w = a->data;
    pgs_list batch;
    list_init(&batch);
    pthread_mutex_lock(&w->inbox_lock);
    if (!list_empty(&w->inbox)) {
        batch.next = w->inbox.next;
        batch.prev = w->inbox.prev;
        batch.next->prev = &batch;
        batch.prev->next = &batch;
        list_init(&w->inbox);
    }
    pthread_mutex_unlock(&w->inbox_lock);
    while (!list_empty(&batch)) {
        pgs_worker_msg *m = list_entry(batch.next, pgs_worker_msg, node);
        list_del(&m->node);
        switch (m->kind) {
        case WM_CANCEL: handle_cancel(w, m->a, m->b); break;
        case WM_HANDOFF:
            pool_adopt_handoffs(w, m->pool);
            pool_unref(m->pool);
            break;
        case WM_WANT_SERVER:
            pool_give_idle(w, m->pool);
            pool_unref(m->pool);
            break;
        case WM_SHUTDOWN: start_drain(w); break;
        case WM_STOP: stop_loop(w); break;
        case WM_CALL: m->fn(w, m->arg); break;
        case WM_CONFIG: reload_worker_apply(w); break;
        case WM_PAUSE: break; /* the flags are set; the acknowledgement is what counts */
        case WM_RESUME: pool_serve_resumed(w); break;
        case WM_KILL: pool_kill_local(w, m->name); break;
        case WM_WAIT_CLOSE: pool_close_old_idle(w); break;
        case WM_PING: break;
        default: break;
        }
        /* Acknowledged after acting on it: whatever the message changed is
         * now visible to a thread that sees ctl_seen >= gen. */
        if (m->gen) atomic_store_explicit(&w->ctl_seen, m->gen, memory_order_release);
        free(m->name);
        free(m);
    }
}

void worker_janitor(pgs_worker *w, uint64_t now)
{
    pool_janitor(w, now);
    client_janitor(w, now);
    admin_janitor(w, now);
    if (w->draining && list_empty(&w->clients)) stop_loop(w);
}

static void on_janitor(uv_timer_t *t)
{
    worker_janitor(t->data, pgs_now_us());
}

static void close_walk(uv_handle_t *h, void *arg)
{
    PGS_UNUSED(arg);
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void stop_loop(pgs_worker *w)
{
    if (w->stopping) return;
    w->stopping = true;
    close_listeners(w);
    /* Connections are freed in their close callbacks; closing every handle
     * through their owners first keeps that rule. */
    client_close_all(w);
    server_close_all(w);
    rcache_worker_stop(w);
    uv_stop(&w->loop);
}

static void refuse_emfile(pgs_worker *w)
{
    /* Out of descriptors: free the spare one, accept, tell the client why,
     * close, and take the spare back.  Better than leaving the client
     * hanging in the listen backlog. */
    if (w->spare_fd >= 0) close(w->spare_fd);
    int lfd;
    if (w->n_listeners > 0 && uv_fileno((uv_handle_t *)&w->listeners[0], &lfd) == 0) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            uint8_t buf[512];
            proto_out o;
            proto_out_init(&o, buf, sizeof(buf));
            proto_error(&o, "FATAL", "53300",
                        "pgscale is out of file descriptors and cannot accept more clients",
                        "raise the open-files limit (ulimit -n) of pgscale");
            ssize_t wr = write(fd, buf, o.len);
            PGS_UNUSED(wr);
            close(fd);
        }
    }
    w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    log_warn("worker %d: out of file descriptors; refused a client", w->id);
}

static void on_connection(uv_stream_t *server, int status)
{
    pgs_worker *w = server->data;
    if (status == UV_EMFILE || status == UV_ENFILE) {
        refuse_emfile(w);
        return;
    }
    if (status < 0) {
        log_warn("worker %d: accept failed: %s", w->id, uv_strerror(status));
        return;
    }
    if (w->draining) return;
    client_accept(w, server);
}

static int open_tcp_listener(pgs_worker *w, const pgs_listen_addr *a)
{
    struct sockaddr_storage ss;
    int rc;
    if (strchr(a->host, ':'))
        rc = uv_ip6_addr(a->host, a->port, (struct sockaddr_in6 *)&ss);
    else
        rc = uv_ip4_addr(a->host, a->port, (struct sockaddr_in *)&ss);
    if (rc < 0) {
        log_error("listen: '%s' is not an IP address: %s", a->host, uv_strerror(rc));
        return rc;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* Each worker binds its own socket to the same address; the kernel
     * spreads new connections over them, so no accept lock is needed. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    socklen_t sl = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                            : sizeof(struct sockaddr_in);
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0) {
        int e = -errno;
        log_error("cannot listen on %s:%d: %s (is another process using the port? set "
                  "PGSCALE_LISTEN)",
                  a->host, a->port, strerror(errno));
        close(fd);
        return e;
    }
    uv_tcp_t *l = &w->listeners[w->n_listeners].tcp;
    uv_tcp_init(&w->loop, l);
    l->data = w;
    w->n_listeners++;
    rc = uv_tcp_open(l, fd);
    if (rc == 0) rc = uv_listen((uv_stream_t *)l, 4096, on_connection);
    if (rc < 0) {
        log_error("cannot listen on %s:%d: %s", a->host, a->port, uv_strerror(rc));
        return rc;
    }
    return 0;
}

/* unix_socket_group and unix_socket_permissions, as PostgreSQL applies
 * its settings of the same names. */
static int set_socket_access(const char *path, const pgs_config *cfg)
{
    if (cfg->unix_socket_group && *cfg->unix_socket_group) {
        struct group gr, *found = NULL;
        char buf[4096];
        int e = getgrnam_r(cfg->unix_socket_group, &gr, buf, sizeof(buf), &found);
        if (e != 0 || !found) {
            log_error("listen: unix_socket_group \"%s\" is not a group on this system",
                      cfg->unix_socket_group);
            return -EINVAL;
        }
        if (chown(path, (uid_t)-1, found->gr_gid) != 0) {
            int err = errno;
            log_error("listen: cannot give %s to group %s: %s (pgscale must be a member of the "
                      "group)", path, cfg->unix_socket_group, strerror(err));
            return -err;
        }
    }
    if (chmod(path, (mode_t)cfg->unix_socket_permissions) != 0) {
        int err = errno;
        log_error("listen: cannot set the mode of %s: %s", path, strerror(err));
        return -err;
    }
    return 0;
}

/* A Unix socket <dir>/.s.PGSQL.<port>, as PostgreSQL names it, so that
 * psql -h <dir> -p <port> finds it. */
static int open_unix_listener(pgs_worker *w, const pgs_listen_addr *a, const pgs_config *cfg)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    char path[sizeof(sun.sun_path)];
    if (snprintf(path, sizeof(path), "%s/.s.PGSQL.%d", a->host, a->port) >= (int)sizeof(path)) {
        log_error("listen: socket path %s/.s.PGSQL.%d is too long (at most %zu bytes)", a->host,
                  a->port, sizeof(path) - 1);
        return -ENAMETOOLONG;
    }
    memcpy(sun.sun_path, path, sizeof(path));
    struct stat st;
    if (lstat(path, &st) == 0) {
        /* a socket file left by a pgscale that did not exit cleanly: if
         * nothing answers on it, it is stale */
        if (!S_ISSOCK(st.st_mode)) {
            log_error("listen: %s exists and is not a socket", path);
            return -EEXIST;
        }
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool live = probe >= 0 && connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0;
        if (probe >= 0) close(probe);
        if (live) {
            log_error("cannot listen on %s: another process is listening there", path);
            return -EADDRINUSE;
        }
        unlink(path);
    }
    uv_pipe_t *l = &w->listeners[w->n_listeners].pipe;
    uv_pipe_init(&w->loop, l, 0);
    l->data = w;
    w->n_listeners++;
    int rc = uv_pipe_bind(l, path);
    if (rc == 0) {
        w->unix_paths[w->n_listeners - 1] = pgs_xstrdup(path);
        /* Before listen(): nobody can connect while the mode is still the
         * umask's.  connect() needs write permission on the socket file. */
        rc = set_socket_access(path, cfg);
        if (rc == 0) rc = uv_listen((uv_stream_t *)l, 4096, on_connection);
    }
    if (rc < 0) {
        log_error("cannot listen on %s: %s", path, uv_strerror(rc));
        return rc;
    }
    return 0;
}

static int open_listeners(pgs_worker *w, const pgs_config *cfg)
{
    for (int i = 0; i < cfg->n_listen; i++) {
        const pgs_listen_addr *a = &cfg->listen[i];
        int rc = 0;
        if (!a->is_unix)
            rc = open_tcp_listener(w, a);
        else if (w->id == 0)
            rc = open_unix_listener(w, a, cfg);
        if (rc < 0) return rc;
    }
    w->listening = w->n_listeners > 0;
    return 0;
}

static void close_listeners(pgs_worker *w)
{
    for (int i = 0; i < w->n_listeners; i++) {
        uv_handle_t *h = (uv_handle_t *)&w->listeners[i];
        if (!uv_is_closing(h)) uv_close(h, NULL);
        if (w->unix_paths[i]) {
            unlink(w->unix_paths[i]);
            free(w->unix_paths[i]);
            w->unix_paths[i] = NULL;
        }
    }
    w->listening = false;
}

static void worker_main(void *arg)
{
    pgs_worker *w = arg;
    /* top -H and the watchdog's test tell the workers apart by name */
    char name[16];
    snprintf(name, sizeof(name), "pgs-worker-%d", w->id);
    pthread_setname_np(pthread_self(), name);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    /* let close callbacks run */
    uv_walk(&w->loop, close_walk, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    atomic_store(&w->finished, true);
}

bool worker_all_finished(void)
{
    for (int i = 0; i < g_pgs.n_workers; i++)
        if (!atomic_load(&g_pgs.workers[i].finished)) return false;
    return true;
}

int worker_init_all(const pgs_config *cfg, bool listen)
{
    g_pgs.cfg = cfg;
    g_pgs.n_workers = PGS_MIN(cfg->workers, PGS_MAX_WORKERS);
    g_pgs.workers = pgs_xcalloc((size_t)g_pgs.n_workers, sizeof(pgs_worker));
    g_pgs.start_wall_us = pgs_wall_us();
    pthread_mutex_init(&g_pgs.pools_lock, NULL);
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker *w = &g_pgs.workers[i];
        w->id = i;
        w->cfg = cfg;
        uv_loop_init(&w->loop);
        w->loop.data = w;
        pthread_mutex_init(&w->lock, NULL);
        pthread_mutex_init(&w->inbox_lock, NULL);
        list_init(&w->clients);
        list_init(&w->servers);
        list_init(&w->inbox);
        uv_async_init(&w->loop, &w->async, on_async);
        w->async.data = w;
        w->spare_fd = -1;
        if (!listen) continue;
        uv_timer_init(&w->loop, &w->janitor);
        w->janitor.data = w;
        uv_timer_start(&w->janitor, on_janitor, JANITOR_MS, JANITOR_MS);
        w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        int rc = open_listeners(w, cfg);
        if (rc < 0) return rc;
        rcache_worker_start(w);
    }
    return 0;
}

int worker_start_all(const pgs_config *cfg)
{
    int rc = worker_init_all(cfg, true);
    if (rc < 0) return rc;
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker *w = &g_pgs.workers[i];
        int rc = uv_thread_create(&w->thread, worker_main, w);
        if (rc < 0) return rc;
    }
    return 0;
}

void worker_free_all(void)
{
    for (int i = 0; i < g_pgs.n_workers; i++) {
        pgs_worker *w = &g_pgs.workers[i];
        while (!list_empty(&w->inbox)) {
            pgs_worker_msg *m = list_entry(w->inbox.next, pgs_worker_msg, node);
            list_del(&m->node);
            if (m->pool) pool_unref(m->pool);
            free(m->name);
            free(m);
        }
        uv_walk(&w->loop, close_walk, NULL);
        uv_run(&w->loop, UV_RUN_DEFAULT);
        (void)uv_loop_close(&w->loop);
        while (w->free_bufs) {
            void *b = w->free_bufs;
            w->free_bufs = *(void **)b;
            free(b);
        }
        while (w->free_wreqs) {
            void *r = w->free_wreqs;
            w->free_wreqs = *(void **)r;
            free(r);
        }
        if (w->stmt_tab) stmt_tab_free(w->stmt_tab);
        if (w->classify) classify_cache_free(w->classify);
        rcache_worker_free(w);
        w->classify = NULL;
        if (w->spare_fd >= 0) close(w->spare_fd);
        pthread_mutex_destroy(&w->lock);
        pthread_mutex_destroy(&w->inbox_lock);
    }
    pool_free_all();
    free(g_pgs.workers);
    g_pgs.workers = NULL;
    g_pgs.n_workers = 0;
    pthread_mutex_destroy(&g_pgs.pools_lock);
}

void worker_join_all(void)
{
    for (int i = 0; i < g_pgs.n_workers; i++) uv_thread_join(&g_pgs.workers[i].thread);
}
