/* libFuzzer driver for classify(): arbitrary bytes as a statement text,
 * through a small cache so that hits, misses and evictions all run.  The
 * input is copied into a buffer of exactly its size so ASan flags any read
 * past len; the facts are checked for the invariants callers rely on. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "classify.h"

static pgs_classify_cache *cache;

static void check(const pgs_stmt_facts *f)
{
    bool read = f->flags & PGS_FACT_READ, write = f->flags & PGS_FACT_WRITE;
    if (read == write) abort();                                          /* exactly one */
    if ((f->flags & PGS_FACT_CACHEABLE) && !read) abort();
    if ((f->flags & PGS_FACT_PARSE_ERROR) && !write) abort();
    if ((f->flags & PGS_FACT_USES_VOLATILE) && read) abort();
    if (f->n_reads > PGS_CLASSIFY_NAMES || f->n_writes > PGS_CLASSIFY_NAMES ||
        f->n_funcs > PGS_CLASSIFY_NAMES)
        abort();
    for (unsigned i = 0; i < f->n_reads; i++)
        if (!f->reads[i].name || !f->reads[i].name[0]) abort();
    for (unsigned i = 0; i < f->n_funcs; i++)
        if (!f->funcs[i].name || !f->funcs[i].name[0]) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!cache) cache = classify_cache_new(64, 64 * 1024);
    char *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);

    const pgs_stmt_facts *f = classify(cache, buf, size);
    check(f);
    uint32_t flags = f->flags;
    /* The same text again (a hit when it was cached): the same answer. */
    f = classify(cache, buf, size);
    check(f);
    if (f->flags != flags) abort();

    free(buf);
    return 0;
}
