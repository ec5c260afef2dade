/* The change feed's reader (changefeed.h), without I/O: the backend
 * messages of a logical replication stream in COPY BOTH mode, framed from
 * whatever bytes arrive, and test_decoding's lines turned into "these
 * tables were written by a transaction that committed at this position".
 *
 * Bounded whatever the stream holds: it keeps at most the first
 * FEEDPARSE_PREFIX bytes of each message (enough for a line's "table
 * schema.name: UPDATE:" head; the row data after it is skipped as it
 * arrives, however large), and at most FEEDPARSE_TABLES names per
 * transaction (past that the transaction says overflow).  It allocates
 * nothing. */
#ifndef PGS_FEEDPARSE_H
#define PGS_FEEDPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes of a message kept: XLogData's 25-byte header and the start of its
 * line.  A line whose table names do not end inside it (a TRUNCATE of
 * many tables) makes its transaction overflow. */
#define FEEDPARSE_PREFIX 2048
/* Distinct tables remembered per transaction. */
#define FEEDPARSE_TABLES 32
/* NAMEDATALEN - 1, and its NUL. */
#define FEEDPARSE_NAME 64

typedef struct feedparse_table {
    char schema[FEEDPARSE_NAME];
    char name[FEEDPARSE_NAME];
} feedparse_table;

/* What the stream said; the callbacks get the reader's own state. */
typedef struct feedparse_ops {
    void *ctx;
    /* The server answered START_REPLICATION (CopyBothResponse). */
    void (*started)(void *ctx);
    /* A transaction committed at lsn (the COMMIT line's XLogData start):
     * the tables its changes named, n of them; overflow: it named more, or
     * a line that could not be read, so it may have written anything. */
    void (*commit)(void *ctx, const feedparse_table *tables, int n, bool overflow, uint64_t lsn);
    /* A primary keepalive: the server's WAL end; reply: it asks for a
     * status update now. */
    void (*keepalive)(void *ctx, uint64_t wal_end, bool reply);
} feedparse_ops;

enum {
    FEEDPARSE_OK = 0,
    FEEDPARSE_ERROR = -1,  /* the server sent an ErrorResponse: see error */
    FEEDPARSE_ENDED = -2,  /* the server ended the stream (CopyDone, CommandComplete) */
    FEEDPARSE_BAD = -3,    /* not a replication stream: see error */
};

typedef struct feedparse {
    /* framing: the 5-byte header, then the body (len - 4 bytes) */
    uint8_t head[5];
    unsigned head_have;
    uint8_t type;
    uint32_t body_left;     /* bytes of the body not read yet */
    uint32_t keep;          /* bytes of the body kept: min(body, FEEDPARSE_PREFIX) */
    uint32_t have;          /* ... kept so far */
    bool body_whole;        /* the kept bytes are the whole body */
    uint8_t buf[FEEDPARSE_PREFIX];
    /* the transaction being read */
    feedparse_table tables[FEEDPARSE_TABLES];
    int n_tables;
    bool overflow;
    bool in_txn;            /* a BEGIN was read and its COMMIT not yet */
    /* after an error: why (the server's message, or what was wrong) */
    char error[256];
    char sqlstate[6];
} feedparse;

void feedparse_init(feedparse *p);

/* Reads n bytes of the stream, calling ops as messages complete.
 * FEEDPARSE_OK when all were read; otherwise the stream is over (the
 * bytes after the message that ended it are not read). */
int feedparse_input(feedparse *p, const uint8_t *data, size_t n, const feedparse_ops *ops);

/* One test_decoding line (without its XLogData header), for the tests:
 * updates the transaction in p, calls ops->commit at its COMMIT. */
void feedparse_line(feedparse *p, const char *line, size_t len, bool whole, uint64_t lsn,
                    const feedparse_ops *ops);

/* A standby status update (CopyData 'r'): written, flushed and applied up
 * to lsn, at now_us (microseconds since 2000-01-01), asking the server to
 * answer at once when reply.  Writes FEEDPARSE_STATUS_LEN bytes to out. */
#define FEEDPARSE_STATUS_LEN 39
void feedparse_status(uint8_t out[FEEDPARSE_STATUS_LEN], uint64_t lsn, int64_t now_us, bool reply);

#endif
