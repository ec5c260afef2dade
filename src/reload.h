/* Configuration reload (RELOAD in the admin console, SIGHUP): reads the
 * configuration again and publishes it as a new immutable snapshot. */
#ifndef PGS_RELOAD_H
#define PGS_RELOAD_H

#include "types.h"

/* Remembers where the configuration came from (for the next reload) and
 * the first snapshot, which the caller keeps alive until exit. */
void reload_init(pgs_config *first, const char *config_path, const char *envfile_path);

/* Receives one line for each setting that changed but only takes effect
 * at restart (listen addresses, servers, auth, TLS, ...). */
typedef void (*reload_note_fn)(void *ctx, const char *msg);

/* Reloads: 0 when the new snapshot is published (note() got what it does
 * not apply), -1 with the reason in err when the configuration was
 * refused (the running one stays).  Any thread; reloads are serialized. */
PGS_MUSTCHECK int reload_run(const char *who, reload_note_fn note, void *ctx, char *err,
                             size_t errlen);

/* WM_CONFIG on worker w: switches the worker to the current snapshot and
 * applies the new pool sizes. */
void reload_worker_apply(pgs_worker *w);

/* The snapshot in effect, for a thread that is not a worker (the HTTP
 * listener): held until reload_cfg_release, it is not freed meanwhile
 * (workers acknowledge snapshots; other threads hold them).  Pairs must
 * not nest and must not span a reload run by the same thread. */
const pgs_config *reload_cfg_hold(void);
void reload_cfg_release(void);

/* The shutdown timeout in effect (SIGTERM, PAUSE and WAIT_CLOSE bounds). */
uint32_t reload_shutdown_timeout_ms(void);

#endif
