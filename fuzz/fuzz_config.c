/* libFuzzer driver for the config reader: the whole input goes to the .env
 * parser (and, when it parses, through config_apply_env and describe); the
 * first line, NUL-terminated, goes to the URL parser.  Everything is freed,
 * so LeakSanitizer reports any leak on an error path. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

static const char *envfile_lookup(void *ctx, const char *name)
{
    return config_envfile_get(ctx, name);
}

static void ignore(void *ctx, const char *name, const char *value, const char *def)
{
    (void)ctx;
    /* Touch the strings so a dangling pointer would be caught. */
    volatile size_t n = strlen(name) + strlen(value) + strlen(def);
    (void)n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];

    /* Exact-size copy so ASan sees any read past len. */
    char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    pgs_envfile *f = NULL;
    if (config_envfile_parse("fuzz.env", buf, size, &f, err, sizeof(err)) == 0) {
        pgs_config cfg;
        config_defaults(&cfg);
        if (config_apply_env(&cfg, envfile_lookup, f, err, sizeof(err)) == 0)
            config_describe(&cfg, ignore, NULL);
        config_free(&cfg);
        config_envfile_free(f);
    }
    free(buf);

    const uint8_t *nl = memchr(data, '\n', size);
    size_t n = nl ? (size_t)(nl - data) : size;
    char *line = malloc(n + 1);
    memcpy(line, data, n);
    line[n] = '\0';
    pgs_url u;
    if (config_parse_url(line, &u, err, sizeof(err)) == 0) {
        (void)config_url_param(&u, "sslmode");
        config_url_free(&u);
    }
    free(line);
    return 0;
}
