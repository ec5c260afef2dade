/* What pgscale shows machines and people (docs/monitoring.md): the
 * Prometheus text of /metrics, the JSON of /api/status with one sample
 * per second of the last five minutes, /healthz's verdict, and the recent
 * errors and reloads they report.  Rendering runs on the HTTP listener's
 * threads and reads what the workers publish (relaxed atomics, the pools
 * lock as SHOW POOLS takes it); nothing here stops a worker. */
#ifndef PGS_METRICS_H
#define PGS_METRICS_H

#include "common.h"
#include "types.h"

#define METRICS_HISTORY 300 /* samples kept: 5 minutes at one a second */

/* The class of a SQLSTATE (its first two characters) as an index below
 * PGS_ERR_CLASSES: PostgreSQL's classes, then one for anything else. */
unsigned metrics_err_class(const char *sqlstate);
const char *metrics_err_class_name(unsigned i);

/* An error sent to a client of pool p: the server's, relayed, or one
 * pgscale made (worker thread; p may be NULL before login).  Counted per
 * pool (p's worker writes p's counters) or, without a pool, in a global
 * count; kept among the recent errors unless another thread is writing
 * that list at the same moment (the count is exact, the list best-effort:
 * the data path never waits for it).  msg may be NULL. */
void metrics_note_error(pgs_pool *p, const char *sqlstate, const char *msg,
                        const char *database, const char *user);
/* A configuration reload ended (reload.c): ok, or refused with why. */
void metrics_note_reload(bool ok, const char *why);

/* The q-quantile (0..1) of a histogram's counts per bucket (the
 * PGS_HIST_BUCKETS of pgs_hist_index), in seconds, interpolated within its
 * bucket as Prometheus's histogram_quantile does; NAN when it is empty. */
double metrics_hist_quantile(const uint64_t *counts, double q);
/* s as a JSON string (NULL: null): quotes, backslashes and control
 * characters escaped, bytes that are not UTF-8 replaced by U+FFFD (error
 * messages come from servers in any encoding). */
void metrics_json_str(sbuf *b, const char *s);

/* One sample for the history (the listener's sampler thread, once a
 * second). */
void metrics_sample(void);

/* The bodies of /metrics and /api/status, under configuration cfg (held:
 * reload_cfg_hold). */
void metrics_prometheus(sbuf *out, const pgs_config *cfg);
void metrics_status_json(sbuf *out, const pgs_config *cfg);
/* /healthz: true when pgscale can serve (listening, not draining, the
 * primary answering); otherwise false with the reason in why. */
bool metrics_healthy(char *why, size_t whylen);

#endif
