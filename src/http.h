/* The HTTP listener (PGSCALE_HTTP_LISTEN, docs/monitoring.md): libmicrohttpd
 * on its own thread, off the data path, serving /metrics (Prometheus),
 * /api/status (JSON), /healthz and the status page at /; and the sampler
 * thread that keeps /api/status's history (metrics.h). */
#ifndef PGS_HTTP_H
#define PGS_HTTP_H

#include <stddef.h>

#include "config.h"

/* Starts the listener and the sampler (after the workers).  A listener
 * that cannot bind is an error when PGSCALE_HTTP_LISTEN was set, and a
 * warning for the default address (another pgscale on the machine may
 * have it).  0, or -1 with the reason in err. */
int http_start(const pgs_config *cfg, char *err, size_t errlen);
void http_stop(void);
/* The address it listens on ("127.0.0.1:9930"), or "" when it does not. */
const char *http_address(void);

#endif
