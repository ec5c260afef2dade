/* Micro-benchmark of the classifier: nanoseconds per statement on a parse
 * cache hit and on a miss (a parse), for a few typical statements.  Built
 * with the tests, run by hand: build/classify_bench [iterations]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classify.h"

static const char *const stmts[] = {
    "SELECT id, name, email FROM users WHERE id = $1",
    "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id "
    "WHERE o.created_at > now() - interval '1 day' ORDER BY o.total DESC LIMIT 20",
    "INSERT INTO events (kind, payload, created_at) VALUES ($1, $2, now()) RETURNING id",
    "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
    "WITH recent AS (SELECT * FROM orders WHERE created_at > $1) "
    "SELECT customer_id, count(*), sum(total) FROM recent GROUP BY customer_id",
    "BEGIN READ ONLY",
};

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 200000;
    if (iters < 1) iters = 1;
    printf("%-60s %6s %10s %10s\n", "statement", "bytes", "hit ns", "miss ns");
    for (size_t s = 0; s < sizeof(stmts) / sizeof(stmts[0]); s++) {
        const char *sql = stmts[s];
        size_t len = strlen(sql);
        pgs_classify_cache *c = classify_cache_new(1024, 1 << 20);
        uint32_t sink = classify(c, sql, len)->flags;

        uint64_t t0 = pgs_now_us();
        for (long i = 0; i < iters; i++) sink ^= classify(c, sql, len)->flags;
        double hit_ns = (double)(pgs_now_us() - t0) * 1000.0 / (double)iters;

        /* A cache of zero entries: every call parses. */
        pgs_classify_cache *nc = classify_cache_new(0, 0);
        long miss_iters = iters / 50 > 0 ? iters / 50 : 1;
        t0 = pgs_now_us();
        for (long i = 0; i < miss_iters; i++) sink ^= classify(nc, sql, len)->flags;
        double miss_ns = (double)(pgs_now_us() - t0) * 1000.0 / (double)miss_iters;

        printf("%-60.60s %6zu %10.1f %10.1f%s\n", sql, len, hit_ns, miss_ns, sink == 0xdeadbeef ? " " : "");
        classify_cache_free(c);
        classify_cache_free(nc);
    }
    classify_shutdown();
    return 0;
}
