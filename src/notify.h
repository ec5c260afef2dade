/* The service manager's readiness protocol (sd_notify): what pgscale tells
 * systemd about starting, reloading and stopping, and the watchdog.
 * Without $NOTIFY_SOCKET (not started by systemd) every call does nothing. */
#ifndef PGS_NOTIFY_H
#define PGS_NOTIFY_H

#include <uv.h>

#include "common.h"

/* READY=1: every listener is bound and the workers run.  `listening` (the
 * addresses, as in the start-up log line) is kept for the STATUS lines
 * that follow.  Reload and stop messages before this are not sent, so
 * that a RELOAD during start-up does not signal readiness early. */
void notify_ready(const char *listening);

/* RELOADING=1 with MONOTONIC_USEC, then READY=1 with a STATUS saying
 * whether the configuration was applied (err NULL) or refused (err says
 * why; the running configuration stays).  Any thread. */
void notify_reloading(void);
void notify_reloaded(const char *who, const char *err);

/* STOPPING=1 (draining: `clients` connections still open, `drain_ms` the
 * bound; or stopping at once when drain_ms is 0), and while the drain goes
 * on a STATUS line each time the count has changed.  Main thread. */
void notify_stopping(int clients, uint32_t drain_ms);
void notify_draining(int clients);

/* With WatchdogSec= set (WATCHDOG_USEC), a timer on `loop` (the main
 * thread's, off the data path) sends WATCHDOG=1 at a third of the interval,
 * but only while every worker keeps answering: a worker stuck in a loop
 * stops the pings and systemd restarts pgscale.  0 when there is no
 * watchdog or the timer runs. */
PGS_MUSTCHECK int notify_watchdog_start(uv_loop_t *loop);

#endif
