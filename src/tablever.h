/* Table versions for the result cache: one process-wide table of
 * (table id -> version) and a global epoch, read without locks by every
 * worker and bumped when a writing transaction commits.  A cached answer
 * keeps the versions of the tables it read, snapshot before its query was
 * sent; it is valid only while every one of them (and the epoch) is
 * unchanged.  See tablever.c for the memory-ordering argument. */
#ifndef PGS_TABLEVER_H
#define PGS_TABLEVER_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* Slots in the table (a power of two).  Ids beyond what fits share one
 * overflow version: safe (a bump of any of them kills the answers that
 * read any of them), only coarser. */
#ifndef PGS_TABLEVER_CAPACITY
#define PGS_TABLEVER_CAPACITY 65536
#endif

/* Never 0 (0 marks a free slot). */
typedef uint64_t pgs_table_id;

/* The id of a table named `name`, the bare name lower-cased (ASCII).
 * `schema` is ignored on purpose: an unqualified name may resolve to any
 * schema through search_path (and a qualified one is the same table as an
 * unqualified one that resolved there), so versions are kept per bare
 * name: a write to a.t bumps every t, which over-invalidates b.t but can
 * never miss the table a reader actually read.  For the same reason a
 * quoted mixed-case name ("Users") shares the id of users.  name NULL or
 * empty gives the id of the empty name (still a valid id). */
pgs_table_id tablever_id(const char *schema, const char *name);
/* The same from a name of len bytes (not NUL-terminated). */
pgs_table_id tablever_id_n(const char *name, size_t len);

/* The current epoch: bumped by writes whose targets are unknown (DDL,
 * volatile functions, CALL/DO, too many targets).  Read it before the
 * versions (tablever_snapshot does both). */
uint64_t tablever_epoch(void);

/* The current version of each of the n ids into out_versions, and the
 * epoch into *out_epoch (may be NULL).  An id never bumped is version 0.
 * Lock-free and allocation-free; call it BEFORE sending the query whose
 * answer is to be cached. */
void tablever_snapshot(const pgs_table_id *ids, size_t n, uint64_t *out_versions,
                       uint64_t *out_epoch);

/* Bumps the version of each of the n ids.  Call it after the write is
 * known committed (the COMMIT's CommandComplete, or an autocommit
 * statement's ReadyForQuery) and before the writer's ReadyForQuery is
 * forwarded to it. */
void tablever_bump(const pgs_table_id *ids, size_t n);
/* Bumps the global epoch: every answer cached before is dead. */
void tablever_bump_all(void);

/* True when the epoch is still `epoch` and each id still has the version
 * in versions[]. */
bool tablever_valid(const pgs_table_id *ids, const uint64_t *versions, size_t n,
                    uint64_t epoch);

typedef struct pgs_tablever_stats {
    uint64_t ids;       /* slots taken */
    uint64_t overflow;  /* bumps that went to the shared overflow slot */
    uint64_t epoch;
} pgs_tablever_stats;

void tablever_stats(pgs_tablever_stats *out);

/* Empties the table and zeroes the epoch.  Tests only: no other thread
 * may use the table meanwhile. */
void tablever_reset_for_tests(void);

#endif
