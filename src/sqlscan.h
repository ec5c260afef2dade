/* A light SQL scanner for the few statement kinds a transaction-mode pooler
 * must notice (SET, RESET, DISCARD, DEALLOCATE, LISTEN, PREPARE, temp
 * tables, WITH HOLD cursors, session advisory locks).  It reads keywords
 * only; it is not a parser and never allocates. */
#ifndef PGS_SQLSCAN_H
#define PGS_SQLSCAN_H

#include "common.h"

typedef enum sql_kind {
    SQL_OTHER = 0,
    SQL_SET,            /* SET [SESSION] name {TO|=} ...; name in info.name */
    SQL_SET_LOCAL,      /* SET LOCAL ... / SET TRANSACTION ... (transaction-scoped) */
    SQL_RESET,          /* RESET name */
    SQL_RESET_ALL,      /* RESET ALL */
    SQL_DISCARD_ALL,    /* DISCARD ALL */
    SQL_DISCARD_OTHER,  /* DISCARD PLANS / SEQUENCES / TEMP */
    SQL_DEALLOCATE,     /* DEALLOCATE [PREPARE] name; name in info.name */
    SQL_DEALLOCATE_ALL, /* DEALLOCATE [PREPARE] ALL */
    SQL_LISTEN,         /* LISTEN channel */
    SQL_UNLISTEN,       /* UNLISTEN ... */
    SQL_PREPARE,        /* PREPARE name [(types)] AS ... */
    SQL_CREATE_TEMP,    /* CREATE [GLOBAL|LOCAL] {TEMP|TEMPORARY} TABLE/VIEW/SEQUENCE ... */
    SQL_DECLARE_HOLD,   /* DECLARE name ... WITH HOLD ... */
    SQL_BEGIN,          /* BEGIN / START TRANSACTION */
} sql_kind;

#define SQLSCAN_NAME_MAX 64

typedef struct sql_info {
    sql_kind kind;
    /* SET/RESET: the parameter name, lower-cased unless it was a quoted
     * identifier; "time zone" -> "timezone", "names" -> "client_encoding",
     * "schema" -> "search_path", "role" -> "role", "session authorization"
     * -> "session_authorization", "session characteristics" ->
     * "transaction_characteristics".  DEALLOCATE/PREPARE: the statement
     * name with the same case rules.  Empty when not applicable or when the
     * name is longer than SQLSCAN_NAME_MAX-1 (then kind is SQL_OTHER). */
    char name[SQLSCAN_NAME_MAX];
    /* More than one statement in the text: a ';' outside quotes, comments
     * and dollar-quoted strings followed by anything but blanks/comments. */
    bool multi;
    /* The text calls a session-level advisory lock function
     * (pg_advisory_lock, pg_advisory_lock_shared, pg_try_advisory_lock,
     * pg_try_advisory_lock_shared), case-insensitively, outside quotes and
     * comments.  The _xact_ variants do not count. */
    bool session_lock;
} sql_info;

/* Classifies the first statement of sql[0..len).  Leading blanks, "--" and
 * nested block comments are skipped.  Never reads past len; sql need not be
 * NUL-terminated and may contain any bytes. */
void sqlscan_classify(const char *sql, size_t len, sql_info *out);

/* Where the statement after the first one starts: just past the first ';'
 * outside quotes, comments and dollar-quoted strings, or len when there is
 * none.  Walking a multi-statement query with it and sqlscan_classify
 * classifies each statement. */
size_t sqlscan_next_statement(const char *sql, size_t len);

#endif
