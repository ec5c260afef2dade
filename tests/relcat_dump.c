/* relcat_dump: loads the relation catalog from a PostgreSQL and prints the
 * expansion of each name given, for tests/integration/test_relcat.py.
 *
 *   relcat_dump CONNINFO r:NAME w:SCHEMA.NAME ...
 *
 * prints, per argument, "ARG -> name name ... | flag flag": the bare names
 * of the catalog's relations whose ids the expansion holds (sorted, each
 * once; "?" for an id no relation has), and the flags set. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "classify.h"
#include "relcat.h"

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void print_expansion(const pgs_relcat *cat, const char *arg)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", arg + 2);
    char *dot = strchr(buf, '.');
    const char *schema = NULL, *name = buf;
    if (dot) {
        *dot = '\0';
        schema = buf;
        name = dot + 1;
    }
    relcat_ids ids = {0};
    if (arg[0] == 'w') relcat_expand_write(cat, schema, name, &ids);
    else relcat_expand_read(cat, schema, name, &ids);

    const char *names[RELCAT_IDS_MAX];
    size_t n = 0;
    for (unsigned i = 0; i < ids.n; i++) {
        const char *found = "?";
        for (size_t j = 0; j < relcat_count(cat); j++) {
            const relcat_rel *r = relcat_rel_at(cat, j);
            if (relcat_table_id(r->name) == ids.ids[i]) {
                found = r->name;
                break;
            }
        }
        names[n++] = found;
    }
    qsort(names, n, sizeof(names[0]), cmp_str);
    printf("%s ->", arg);
    for (size_t i = 0; i < n; i++) printf(" %s", names[i]);
    printf(" |");
    static const struct {
        unsigned flag;
        const char *word;
    } words[] = {{RELCAT_UNKNOWN, "unknown"},       {RELCAT_OVERFLOW, "overflow"},
                 {RELCAT_SIDE_EFFECTS, "side_effects"}, {RELCAT_USES_STABLE, "stable"},
                 {RELCAT_USES_VOLATILE, "volatile"}, {RELCAT_FOREIGN, "foreign"}};
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (ids.flags & words[i].flag) printf(" %s", words[i].word);
    printf("\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: relcat_dump CONNINFO r:NAME|w:NAME ...\n");
        return 2;
    }
    PGconn *conn = PQconnectdb(argv[1]);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "relcat_dump: %s", PQerrorMessage(conn));
        PQfinish(conn);
        return 1;
    }
    char err[512];
    /* as the monitor's primary hook does: volatility first, then the
     * catalog, whose views are classified with it */
    if (classify_volatility_load(conn, err, sizeof(err)) < 0 ||
        relcat_load(conn, err, sizeof(err)) < 0) {
        fprintf(stderr, "relcat_dump: %s\n", err);
        PQfinish(conn);
        return 1;
    }
    PQfinish(conn);
    relcat_ref ref = {0};
    const pgs_relcat *cat = relcat_get(&ref);
    printf("generation %llu relations %zu%s\n", (unsigned long long)relcat_generation(),
           relcat_count(cat), relcat_truncated(cat) ? " truncated" : "");
    for (int i = 2; i < argc; i++) {
        if ((argv[i][0] != 'r' && argv[i][0] != 'w') || argv[i][1] != ':') {
            fprintf(stderr, "relcat_dump: %s: want r:NAME or w:NAME\n", argv[i]);
            relcat_put(&ref);
            return 2;
        }
        print_expansion(cat, argv[i]);
    }
    relcat_put(&ref);
    relcat_shutdown();
    classify_shutdown();
    return 0;
}
