/* libFuzzer target for feedparse: the input is a replication stream, read
 * whole and again in pieces whose sizes the first byte chooses (a reader
 * that keeps state across pieces wrongly gives other callbacks), and each
 * of its lines is also read as a test_decoding line on its own, in an
 * exact-size heap copy so that a read one byte past it trips ASan.  What
 * the callbacks get must be within the bounds feedparse.h promises. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "feedparse.h"

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) __builtin_trap();                                                  \
    } while (0)

typedef struct tally {
    unsigned commits, keepalives, started;
    uint64_t sum;
} tally;

static void on_started(void *ctx)
{
    ((tally *)ctx)->started++;
}

static void on_commit(void *ctx, const feedparse_table *t, int n, bool overflow, uint64_t lsn)
{
    tally *s = ctx;
    CHECK(n >= 0 && n <= FEEDPARSE_TABLES);
    for (int i = 0; i < n; i++) {
        size_t sl = strnlen(t[i].schema, FEEDPARSE_NAME), nl = strnlen(t[i].name, FEEDPARSE_NAME);
        CHECK(sl > 0 && sl < FEEDPARSE_NAME && nl > 0 && nl < FEEDPARSE_NAME);
    }
    s->commits++;
    s->sum += lsn + (uint64_t)n + overflow;
}

static void on_keepalive(void *ctx, uint64_t wal_end, bool reply)
{
    tally *s = ctx;
    s->keepalives++;
    s->sum += wal_end + reply;
}

static int run(const uint8_t *data, size_t size, size_t step, tally *t)
{
    static feedparse p;
    feedparse_init(&p);
    feedparse_ops ops = {.ctx = t, .started = on_started, .commit = on_commit,
                         .keepalive = on_keepalive};
    for (size_t i = 0; i < size; i += step) {
        size_t n = size - i < step ? size - i : step;
        int rc = feedparse_input(&p, data + i, n, &ops);
        if (rc != FEEDPARSE_OK) {
            CHECK(memchr(p.error, 0, sizeof(p.error)) != NULL);
            return rc;
        }
    }
    return FEEDPARSE_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    size_t step = (size_t)data[0] % 17 + 1;
    tally whole = {0}, pieces = {0};
    int a = run(data + 1, size - 1, size, &whole);
    int b = run(data + 1, size - 1, step, &pieces);
    CHECK(a == b);
    CHECK(whole.commits == pieces.commits && whole.keepalives == pieces.keepalives &&
          whole.started == pieces.started && whole.sum == pieces.sum);

    static feedparse p;
    feedparse_init(&p);
    feedparse_ops ops = {.ctx = &whole, .commit = on_commit};
    const uint8_t *s = data + 1, *end = data + size;
    while (s < end) {
        const uint8_t *nl = memchr(s, '\n', (size_t)(end - s));
        size_t len = nl ? (size_t)(nl - s) : (size_t)(end - s);
        char *line = malloc(len ? len : 1);
        if (!line) abort();
        memcpy(line, s, len);
        feedparse_line(&p, line, len, true, 1, &ops);
        free(line);
        s += len + (nl ? 1 : 0);
    }
    return 0;
}
