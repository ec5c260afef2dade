/* Micro-benchmark of the result cache's hit path, for answers of 1 row and
 * of 100 rows in a store of 10,000 entries.  Columns: "key ns" builds the
 * key (database, user, session settings, statement text, two parameters;
 * XXH3-128 over ~360 bytes); "lookup ns" is the lookup alone (bucket,
 * material compare, TTL, table versions of 2 tables, LRU touch, pin and
 * release) cycling over 64 keys, so warm in the CPU caches; "hit ns" is
 * key + lookup cycling over all 10,000 entries, so mostly cold lines: the
 * figure a busy worker sees.  Built with the tests, run by hand:
 * build/cache_bench [iterations]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"

static const char settings[] =
    "DateStyle=ISO, MDY\0IntervalStyle=postgres\0TimeZone=UTC\0client_encoding=UTF8\0"
    "extra_float_digits=1\0bytea_output=hex\0search_path=\"$user\", public\0"
    "standard_conforming_strings=on";
static const char sql[] =
    "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id "
    "WHERE o.customer_id = $1 AND o.status = $2";

/* The first parameter of key i, formatted once: the relay gets it as
 * bytes from Bind, so formatting is no part of the measured cost. */
#define NPARAMS 10000
static char params[NPARAMS][8];
static size_t param_len[NPARAMS];

static void build_key(pgs_cache_key_builder *kb, long i, pgs_cache_key *k)
{
    const char *p1 = params[i % NPARAMS];
    size_t n1 = param_len[i % NPARAMS];
    cache_key_reset(kb);
    cache_key_part(kb, PGS_CKEY_DATABASE, "app", 3);
    cache_key_part(kb, PGS_CKEY_USER, "web", 3);
    cache_key_part(kb, PGS_CKEY_SETTINGS, settings, sizeof(settings) - 1);
    cache_key_part(kb, PGS_CKEY_TEXT, sql, sizeof(sql) - 1);
    cache_key_part(kb, PGS_CKEY_PARAM_FORMATS, "\0\0", 2);
    cache_key_part(kb, PGS_CKEY_PARAM, p1, n1);
    cache_key_part(kb, PGS_CKEY_PARAM, "shipped", 7);
    cache_key_part(kb, PGS_CKEY_RESULT_FORMATS, "", 0);
    if (cache_key_finish(kb, k) != 0) abort();
}

/* An answer of `rows` DataRows of 3 columns (~40 bytes each) with its
 * RowDescription and CommandComplete. */
static size_t answer_bytes(int rows)
{
    return 90 + (size_t)rows * 40 + 16;
}

static void fill(pgs_cache *c, pgs_cache_key_builder *kb, long i, int rows,
                 const pgs_table_id *ids)
{
    pgs_cache_key k;
    build_key(kb, i, &k);
    uint64_t v[2], e;
    tablever_snapshot(ids, 2, v, &e);
    pgs_cache_fill *f;
    if (cache_fill_begin(c, &k, ids, v, 2, e, 300000000ULL, 1, &f) != 0) abort();
    static uint8_t junk[1 << 16];
    if (cache_fill_append(f, junk, answer_bytes(rows)) != 0) abort();
    if (cache_fill_commit(f, 1) != 0) abort();
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 2000000;
    if (iters < 1) iters = 1;
    for (int i = 0; i < NPARAMS; i++)
        param_len[i] = (size_t)snprintf(params[i], sizeof(params[i]), "%d", i);
    pgs_table_id ids[2] = {tablever_id(NULL, "orders"), tablever_id(NULL, "customers")};
    tablever_bump(ids, 2);
    printf("%-8s %8s %12s %12s %12s\n", "rows", "bytes", "key ns", "lookup ns", "hit ns");
    const int row_counts[] = {1, 100};
    for (size_t r = 0; r < 2; r++) {
        int rows = row_counts[r];
        pgs_cache *c = cache_new((size_t)1 << 30, (size_t)1 << 20);
        pgs_cache_key_builder kb;
        cache_key_init(&kb, 1 << 16);
        for (long i = 0; i < NPARAMS; i++) fill(c, &kb, i, rows, ids);

        /* Key building alone. */
        pgs_cache_key k;
        uint64_t sink = 0;
        uint64_t t0 = pgs_now_us();
        for (long i = 0; i < iters; i++) {
            build_key(&kb, i % NPARAMS, &k);
            sink ^= k.lo;
        }
        double key_ns = (double)(pgs_now_us() - t0) * 1000.0 / (double)iters;

        /* The lookup alone, over keys built beforehand (a round of 64). */
        enum { NKEYS = 64 };
        static uint8_t mat[NKEYS][512];
        pgs_cache_key keys[NKEYS];
        for (int j = 0; j < NKEYS; j++) {
            build_key(&kb, j * 151 % NPARAMS, &keys[j]);
            memcpy(mat[j], keys[j].material, keys[j].len);
            keys[j].material = mat[j];
        }
        t0 = pgs_now_us();
        for (long i = 0; i < iters; i++) {
            pgs_cache_lookup_result res;
            if (cache_lookup(c, &keys[i % NKEYS], 2, &res) != PGS_CACHE_HIT) abort();
            size_t len;
            sink ^= cache_entry_answer(res.entry, &len)[0] + len;
            cache_entry_release(c, res.entry);
        }
        double lookup_ns = (double)(pgs_now_us() - t0) * 1000.0 / (double)iters;

        /* Both, as the relay will do them. */
        t0 = pgs_now_us();
        for (long i = 0; i < iters; i++) {
            build_key(&kb, i * 151 % NPARAMS, &k);
            pgs_cache_lookup_result res;
            if (cache_lookup(c, &k, 2, &res) != PGS_CACHE_HIT) abort();
            size_t len;
            sink ^= cache_entry_answer(res.entry, &len)[0] + len;
            cache_entry_release(c, res.entry);
        }
        double hit_ns = (double)(pgs_now_us() - t0) * 1000.0 / (double)iters;

        pgs_cache_stats st;
        cache_stats(c, &st);
        printf("%-8d %8zu %12.1f %12.1f %12.1f%s\n", rows, answer_bytes(rows), key_ns, lookup_ns,
               hit_ns, sink == 0xdeadbeef ? " " : "");
        printf("         (%llu entries, %llu bytes, key %zu bytes)\n",
               (unsigned long long)st.entries, (unsigned long long)st.bytes, k.len);
        cache_key_free(&kb);
        cache_free(c);
    }
    return 0;
}
