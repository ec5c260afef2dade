/* The YAML configuration file (--config FILE): read with libyaml into the
 * pgs_config snapshot that config.c then layers the .env file and the
 * environment on.  See docs/configuration.md, "Configuration file". */
#ifndef PGS_CONFIG_YAML_H
#define PGS_CONFIG_YAML_H

#include "config.h"

#define CONFIG_YAML_MAX_BYTES (1u << 20) /* a larger file is refused unread */
#define CONFIG_YAML_MAX_DEPTH 16         /* nested mappings and lists */
#define CONFIG_YAML_MAX_ITEMS 10000      /* entries in one list or mapping */

/* What the file set, for the decisions config_load_files takes after the
 * environment is in. */
typedef struct config_yaml_seen {
    bool primary; /* nodes.primary */
    bool sslmode; /* server_tls.sslmode */
    bool channel_binding; /* server_tls.channel_binding */
    /* Lines for the password-source check, which needs DATABASE_URL (it
     * may come from the environment): auth.type's, and the first auth.hba
     * rule's that asks for a password (0 = none) with its index. */
    int auth_type_line;
    int hba_password_line, hba_password_index;
} config_yaml_seen;

/* Applies the file on top of *cfg (normally fresh defaults).  Errors are
 * one line, "FILE:LINE: key.path: reason".  On failure *cfg may hold part
 * of the file: the caller frees it with config_free.  seen may be NULL. */
PGS_MUSTCHECK int config_yaml_load(const char *path, pgs_config *cfg, config_yaml_seen *seen,
                                   char *err, size_t errlen);
/* The same from memory; name is used in messages and its directory to
 * resolve relative paths (users file, certificates) in the file. */
PGS_MUSTCHECK int config_yaml_parse(const char *name, const char *data, size_t len,
                                    pgs_config *cfg, config_yaml_seen *seen, char *err,
                                    size_t errlen);

#endif
