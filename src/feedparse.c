/* The change feed's stream reader (see feedparse.h): framing of the
 * backend messages of a replication connection in COPY BOTH mode, and
 * test_decoding's text lines.  Owns no I/O and no policy: what a commit's
 * tables mean for the cache is changefeed.c's business.
 *
 * test_decoding writes, per transaction (include-xids on):
 *     BEGIN 731
 *     table public.orders: INSERT: id[integer]:1 note[text]:'...'
 *     table public."Mixed Case": UPDATE: ...
 *     table public.a, public.b: TRUNCATE: (no-flags)
 *     COMMIT 731
 * and "message: ..." lines for pg_logical_emit_message().  Names are
 * quote_identifier()'s output: bare when they are lower-case letters,
 * digits and underscores (and not keywords), else in double quotes with
 * quotes doubled.  Anything else in a transaction is read as "it may have
 * written anything" (overflow): the safe reading of a line not understood. */
#include "feedparse.h"

#include <stdio.h>
#include <string.h>

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | p[i];
    return v;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

void feedparse_init(feedparse *p)
{
    memset(p, 0, sizeof(*p));
}

static void reset_txn(feedparse *p)
{
    p->n_tables = 0;
    p->overflow = false;
}

static bool starts(const char *s, size_t len, const char *word)
{
    size_t w = strlen(word);
    return len >= w && memcmp(s, word, w) == 0;
}

/* One identifier at s[*pos]: quoted or bare.  false if it is not one, is
 * longer than a PostgreSQL name or holds a NUL (no name does). */
static bool ident(const char *s, size_t len, size_t *pos, char out[FEEDPARSE_NAME])
{
    size_t i = *pos, o = 0;
    if (i < len && s[i] == '"') {
        for (i++;; i++) {
            if (i >= len || s[i] == '\0') return false;
            if (s[i] == '"') {
                if (i + 1 < len && s[i + 1] == '"') i++;
                else break;
            }
            if (o + 1 >= FEEDPARSE_NAME) return false;
            out[o++] = s[i];
        }
        i++; /* the closing quote */
    } else {
        for (; i < len && s[i] != '.' && s[i] != ',' && s[i] != ':' && s[i] != '"' && s[i] != ' ' &&
               s[i] != '\0';
             i++) {
            if (o + 1 >= FEEDPARSE_NAME) return false;
            out[o++] = s[i];
        }
    }
    if (o == 0) return false;
    out[o] = '\0';
    *pos = i;
    return true;
}

static void add_table(feedparse *p, const char *schema, const char *name)
{
    for (int i = p->n_tables - 1; i >= 0; i--)
        if (strcmp(p->tables[i].name, name) == 0 && strcmp(p->tables[i].schema, schema) == 0)
            return;
    if (p->n_tables == FEEDPARSE_TABLES) {
        p->overflow = true;
        return;
    }
    feedparse_table *t = &p->tables[p->n_tables++];
    memcpy(t->schema, schema, strlen(schema) + 1);
    memcpy(t->name, name, strlen(name) + 1);
}

/* "table s.n[, s.n ...]: OP: ..." from after "table ". */
static bool table_line(feedparse *p, const char *s, size_t len)
{
    size_t pos = 0;
    char schema[FEEDPARSE_NAME], name[FEEDPARSE_NAME];
    for (;;) {
        if (!ident(s, len, &pos, schema) || pos >= len || s[pos] != '.') return false;
        pos++;
        if (!ident(s, len, &pos, name)) return false;
        add_table(p, schema, name);
        if (pos < len && s[pos] == ':') return true;
        if (pos + 1 < len && s[pos] == ',' && s[pos + 1] == ' ') {
            pos += 2;
            continue;
        }
        return false;
    }
}

void feedparse_line(feedparse *p, const char *line, size_t len, bool whole, uint64_t lsn,
                    const feedparse_ops *ops)
{
    (void)whole; /* a cut line is read as far as it goes; table_line fails on a cut name */
    if (starts(line, len, "BEGIN") && (len == 5 || line[5] == ' ')) {
        reset_txn(p);
        p->in_txn = true;
    } else if (starts(line, len, "COMMIT") && (len == 6 || line[6] == ' ')) {
        p->in_txn = false;
        if (ops && ops->commit) ops->commit(ops->ctx, p->tables, p->n_tables, p->overflow, lsn);
        reset_txn(p);
    } else if (starts(line, len, "message:")) {
        /* pg_logical_emit_message(): writes no table */
    } else if (starts(line, len, "table ")) {
        if (!table_line(p, line + 6, len - 6)) p->overflow = true;
    } else {
        p->overflow = true;
    }
}

/* An ErrorResponse's message and SQLSTATE, from the kept bytes. */
static void error_fields(feedparse *p)
{
    const char *b = (const char *)p->buf;
    size_t i = 0, n = p->have;
    snprintf(p->error, sizeof(p->error), "the server sent an error");
    p->sqlstate[0] = '\0';
    while (i < n && b[i]) {
        char code = b[i++];
        const char *v = b + i;
        const char *end = memchr(v, '\0', n - i);
        size_t vl = end ? (size_t)(end - v) : n - i;
        if (code == 'M') snprintf(p->error, sizeof(p->error), "%.*s", (int)vl, v);
        else if (code == 'C' && vl == 5) snprintf(p->sqlstate, sizeof(p->sqlstate), "%.5s", v);
        if (!end) break;
        i += vl + 1;
    }
}

static int message_done(feedparse *p, const feedparse_ops *ops)
{
    switch (p->type) {
    case 'W':
        if (ops && ops->started) ops->started(ops->ctx);
        return FEEDPARSE_OK;
    case 'd':
        if (p->have >= 25 && p->buf[0] == 'w') {
            feedparse_line(p, (const char *)p->buf + 25, p->have - 25, p->body_whole,
                           be64(p->buf + 1), ops);
            return FEEDPARSE_OK;
        }
        if (p->have >= 18 && p->buf[0] == 'k') {
            if (ops && ops->keepalive) ops->keepalive(ops->ctx, be64(p->buf + 1), p->buf[17] != 0);
            return FEEDPARSE_OK;
        }
        snprintf(p->error, sizeof(p->error), "a CopyData message that is neither XLogData nor a "
                 "keepalive (%u bytes)", p->have);
        return FEEDPARSE_BAD;
    case 'E':
        error_fields(p);
        return FEEDPARSE_ERROR;
    case 'N':
    case 'S':
        return FEEDPARSE_OK; /* a notice, a parameter status: nothing for the feed */
    case 'c':
    case 'C':
    case 'Z':
        snprintf(p->error, sizeof(p->error), "the server ended the replication stream");
        return FEEDPARSE_ENDED;
    default:
        snprintf(p->error, sizeof(p->error), "unexpected message type 0x%02x in the replication "
                 "stream", p->type);
        return FEEDPARSE_BAD;
    }
}

int feedparse_input(feedparse *p, const uint8_t *data, size_t n, const feedparse_ops *ops)
{
    size_t i = 0;
    while (i < n) {
        if (p->head_have < 5) {
            size_t take = 5 - p->head_have;
            if (take > n - i) take = n - i;
            memcpy(p->head + p->head_have, data + i, take);
            p->head_have += (unsigned)take;
            i += take;
            if (p->head_have < 5) break;
            uint32_t len = (uint32_t)p->head[1] << 24 | (uint32_t)p->head[2] << 16 |
                           (uint32_t)p->head[3] << 8 | p->head[4];
            if (len < 4) {
                snprintf(p->error, sizeof(p->error), "a message length of %u", len);
                return FEEDPARSE_BAD;
            }
            p->type = p->head[0];
            p->body_left = len - 4;
            p->keep = p->body_left < FEEDPARSE_PREFIX ? p->body_left : FEEDPARSE_PREFIX;
            p->body_whole = p->body_left <= FEEDPARSE_PREFIX;
            p->have = 0;
        } else {
            size_t take = p->body_left;
            if (take > n - i) take = n - i;
            if (p->have < p->keep) {
                size_t k = p->keep - p->have;
                if (k > take) k = take;
                memcpy(p->buf + p->have, data + i, k);
                p->have += (uint32_t)k;
            }
            i += take;
            p->body_left -= (uint32_t)take;
        }
        if (p->head_have == 5 && p->body_left == 0) {
            p->head_have = 0;
            int rc = message_done(p, ops);
            if (rc != FEEDPARSE_OK) return rc;
        }
    }
    return FEEDPARSE_OK;
}

void feedparse_status(uint8_t out[FEEDPARSE_STATUS_LEN], uint64_t lsn, int64_t now_us, bool reply)
{
    out[0] = 'd';
    out[1] = 0;
    out[2] = 0;
    out[3] = 0;
    out[4] = FEEDPARSE_STATUS_LEN - 1;
    out[5] = 'r';
    put64(out + 6, lsn);  /* written */
    put64(out + 14, lsn); /* flushed: what the slot may free up to */
    put64(out + 22, lsn); /* applied */
    put64(out + 30, (uint64_t)now_us);
    out[38] = reply ? 1 : 0;
}
