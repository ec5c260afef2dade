/* libFuzzer driver for the YAML config reader: the whole input is a config
 * file.  When it is accepted, the result is described (every string is
 * touched) and the pool settings are resolved for a database and a user it
 * names; everything is freed, so LeakSanitizer reports a leak on any error
 * path.  The reader refuses aliases and bounds depth and item counts, so no
 * input may take long or much memory. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "config_yaml.h"

static void touch(void *ctx, const char *name, const char *value, const char *def)
{
    (void)ctx;
    volatile size_t n = strlen(name) + strlen(value) + strlen(def);
    (void)n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    /* Exact-size copy, so ASan sees any read past len. */
    char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    pgs_config cfg;
    config_defaults(&cfg);
    config_yaml_seen seen;
    if (config_yaml_parse("fuzz.yaml", buf, size, &cfg, &seen, err, sizeof(err)) == 0) {
        config_describe(&cfg, touch, NULL);
        config_describe_file(&cfg, touch, NULL);
        pgs_pool_settings ps;
        config_pool_settings(&cfg, cfg.n_databases ? cfg.databases[0].name : "db",
                             cfg.n_users ? cfg.users[0].name : "user", &ps);
    } else {
        /* One line, always. */
        if (memchr(err, '\n', strnlen(err, sizeof(err)))) abort();
    }
    config_free(&cfg);
    free(buf);
    return 0;
}
