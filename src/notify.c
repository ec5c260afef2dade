/* sd_notify messages to the service manager (Type=notify): readiness,
 * reloads, stopping, and the watchdog's pings.  This module only reports;
 * when pgscale is ready, reloaded or stopping is decided by main.c and
 * reload.c. */
#include "notify.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-daemon.h>

#include "worker.h"

/* Set once by notify_ready (main thread, before any reload can report);
 * read by reload_run on any thread. */
static char listening_text[1024];
static atomic_bool ready;

/* The client count the last stop or drain message gave (main thread). */
static int draining_told = -1;

static uv_timer_t watchdog_timer;
static uint64_t watchdog_probe;  /* the WM_PING generation last sent */

/* sd_notify's result only says whether the message went out; there is no
 * one to tell when it did not (no socket is the normal case outside
 * systemd), so it is not looked at. */
static void tell(const char *msg)
{
    (void)sd_notify(0, msg);
}

void notify_ready(const char *listening)
{
    snprintf(listening_text, sizeof(listening_text), "%s", listening);
    atomic_store(&ready, true);
    char msg[1200];
    snprintf(msg, sizeof(msg), "READY=1\nSTATUS=accepting connections on %s", listening_text);
    tell(msg);
}

void notify_reloading(void)
{
    if (!atomic_load(&ready)) return;
    /* systemd >= 253 pairs RELOADING=1 with the time the reload began
     * (Type=notify-reload requires it); older versions ignore the field. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char msg[100];
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
    tell(msg);
}

void notify_reloaded(const char *who, const char *err)
{
    if (!atomic_load(&ready)) return;
    char msg[2600];
    if (!err) {
        snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s: configuration reloaded; accepting "
                 "connections on %s", who, listening_text);
    } else {
        /* STATUS is one line: a newline in the reason would start a
         * field of its own */
        char reason[1200];
        pgs_log_escape(reason, sizeof(reason), err, strlen(err));
        snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s: reload refused: %s; accepting "
                 "connections on %s", who, reason, listening_text);
    }
    tell(msg);
}

void notify_stopping(int clients, uint32_t drain_ms)
{
    draining_told = clients;
    char msg[200];
    if (drain_ms)
        snprintf(msg, sizeof(msg), "STOPPING=1\nSTATUS=draining %d client%s (no new ones; up to "
                 "%u ms for their transactions to finish)", clients, clients == 1 ? "" : "s",
                 drain_ms);
    else
        snprintf(msg, sizeof(msg), "STOPPING=1\nSTATUS=stopping now, closing %d client%s",
                 clients, clients == 1 ? "" : "s");
    tell(msg);
}

void notify_draining(int clients)
{
    if (clients == draining_told) return;
    draining_told = clients;
    char msg[100];
    snprintf(msg, sizeof(msg), "STATUS=draining %d client%s", clients, clients == 1 ? "" : "s");
    tell(msg);
}

static void on_watchdog(uv_timer_t *t)
{
    PGS_UNUSED(t);
    /* Each worker acknowledges a WM_PING between two callbacks; if the
     * previous one is not acknowledged yet, some worker has not come back
     * to its loop for a whole third of the interval: no ping this time.
     * Two missed rounds in a row and systemd's timer runs out. */
    if (watchdog_probe && !worker_ctl_done(watchdog_probe)) {
        log_warn("watchdog: a worker has not answered within %llu ms; not telling systemd that "
                 "pgscale is alive",
                 (unsigned long long)uv_timer_get_repeat(&watchdog_timer));
        return;
    }
    tell("WATCHDOG=1");
    watchdog_probe = worker_broadcast_ctl(WM_PING, NULL);
}

int notify_watchdog_start(uv_loop_t *loop)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return 0;
    uint64_t every_ms = usec / 3000;
    if (every_ms == 0) every_ms = 1;
    int rc = uv_timer_init(loop, &watchdog_timer);
    if (rc == 0) rc = uv_timer_start(&watchdog_timer, on_watchdog, 0, every_ms);
    if (rc < 0) return rc;
    /* the timer alone would keep the loop running after the workers end */
    uv_unref((uv_handle_t *)&watchdog_timer);
    log_info("watchdog: telling systemd every %llu ms (WatchdogSec=%llu ms)",
             (unsigned long long)every_ms, (unsigned long long)(usec / 1000));
    return 0;
}
