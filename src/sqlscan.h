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
    SQL_DISCARD_OTHER,  /* DISCARD PLANS */
    SQL_DISCARD_TEMP,   /* DISCARD {TEMP|TEMPORARY} */
    SQL_DEALLOCATE,     /* DEALLOCATE [PREPARE] name; name in info.name */
    SQL_DEALLOCATE_ALL, /* DEALLOCATE [PREPARE] ALL */
    SQL_LISTEN,         /* LISTEN channel */
    SQL_UNLISTEN,       /* UNLISTEN channel */
    SQL_UNLISTEN_ALL,   /* UNLISTEN * */
    SQL_PREPARE,        /* PREPARE name [(types)] AS ... */
    SQL_CREATE_TEMP,    /* CREATE [GLOBAL|LOCAL] {TEMP|TEMPORARY} TABLE/VIEW/SEQUENCE ... */
    SQL_DECLARE_HOLD,   /* DECLARE name ... WITH HOLD ... */
    SQL_BEGIN,          /* BEGIN / START TRANSACTION */
    SQL_CLOSE_ALL,      /* CLOSE ALL (every cursor) */
    SQL_DISCARD_SEQUENCES, /* DISCARD SEQUENCES */
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
    /* The text calls pg_advisory_unlock_all, with the same rules. */
    bool unlock_all;
    /* SQL_CREATE_TEMP: the statement says ON COMMIT DROP. */
    bool on_commit_drop;
    /* The text may call set_config(name, value, is_local) with is_local
     * other than the constant true: a session-level setting.  Unquoted
     * set_config or "set_config", with or without pg_catalog., outside
     * quotes and comments; a call inside a function body is not seen. */
    bool config_session;
    /* ... and for one of those calls pgscale cannot know what it sets: an
     * argument that is not a string literal (a parameter, a column, an
     * expression), an is_local that is not a constant, a call that is not
     * a whole item of a plain SELECT list (nested, conditional, in a
     * statement with FROM or WHERE, in INSERT ...), another schema's
     * set_config, more than SQLSCAN_SETCFG_MAX calls, or several
     * statements in the text.  When config_session is set and this is not,
     * sqlscan_set_configs() lists what the statement sets. */
    bool config_unseen;
    /* The text may create a temporary object without starting with CREATE
     * TEMP: SELECT ... INTO {TEMP|TEMPORARY}, or a name qualified with the
     * pg_temp schema (CREATE TABLE pg_temp.t ...).  Outside quotes and
     * comments; a false positive only costs a pinned client. */
    bool temp_object;
} sql_info;

/* One session-level set_config call with constant arguments. */
#define SQLSCAN_SETCFG_MAX 8
typedef struct sql_setcfg {
    char name[SQLSCAN_NAME_MAX];  /* the setting's name, lower-cased */
    size_t value_off, value_len;  /* the value's string literal, as written in the text */
} sql_setcfg;

/* The session-level set_config calls of a text classified with
 * config_session set and config_unseen clear, in text order, into out[]
 * (room for SQLSCAN_SETCFG_MAX); returns how many. */
int sqlscan_set_configs(const char *sql, size_t len, sql_setcfg *out);

/* Classifies the first statement of sql[0..len).  Leading blanks, "--" and
 * nested block comments are skipped.  Never reads past len; sql need not be
 * NUL-terminated and may contain any bytes. */
void sqlscan_classify(const char *sql, size_t len, sql_info *out);

/* Where the statement after the first one starts: just past the first ';'
 * outside quotes, comments and dollar-quoted strings, or len when there is
 * none.  Walking a multi-statement query with it and sqlscan_classify
 * classifies each statement. */
size_t sqlscan_next_statement(const char *sql, size_t len);

/* A comment anywhere in sql[0..len) contains word (lower-case ASCII,
 * matched case-insensitively): "--" and nested block comments count, the
 * inside of strings, dollar quotes and quoted identifiers does not.  How
 * the classifier finds the "pgscale:primary" routing hint, which the
 * parser drops with the other comments. */
bool sqlscan_comment_has(const char *sql, size_t len, const char *word);
/* The same, from offset from on: the offset of the first such word in
 * *at, and in *gap_end where the blanks and comments around it end (what
 * follows the word up to there is comment text too; the cache hints read
 * their "ttl=" from it). */
bool sqlscan_comment_find(const char *sql, size_t len, const char *word, size_t from,
                          size_t *at, size_t *gap_end);

/* Session state a text creates that cannot follow a client to another
 * server connection: a mask of the reasons to pin it to its server. */
enum {
    SQLSCAN_STATE_TEMP = 1 << 0,    /* temporary table, view or sequence */
    SQLSCAN_STATE_HOLD = 1 << 1,    /* WITH HOLD cursor */
    SQLSCAN_STATE_LISTEN = 1 << 2,  /* LISTEN */
    SQLSCAN_STATE_LOCK = 1 << 3,    /* session-level advisory lock */
    SQLSCAN_STATE_PREPARE = 1 << 4, /* SQL PREPARE */
    SQLSCAN_STATE_CONFIG = 1 << 5,  /* a session-level set_config pgscale cannot carry */
    /* lastval()/currval() read the session's sequence state (never
     * returned by sqlscan_session_state: the relay decides, see relay.c) */
    SQLSCAN_STATE_SEQUENCE = 1 << 6,
    SQLSCAN_STATE_ALL = (1 << 7) - 1,
};

/* The session state every statement of sql[0..len) may create (0: none).
 * A CREATE TEMP ... ON COMMIT DROP creates none: the object ends with the
 * transaction.  Any session-level set_config counts (SQLSCAN_STATE_CONFIG):
 * this is what Parse texts and multi-statement queries are judged by, and
 * their settings cannot be recorded.  Errs on the side of a reason: pinning a client that did
 * not need it only costs a server connection, missing one hands another
 * client a server carrying someone's state. */
unsigned sqlscan_session_state(const char *sql, size_t len);
/* The same for a text already classified into *info, when info->multi is
 * false (one statement: nothing is scanned again), run as a simple query:
 * a set_config counts only when config_unseen (the others can be recorded
 * from the text). */
unsigned sqlscan_state_of(const sql_info *info);

/* How a text uses the session's sequence state (a mask):
 * SQLSCAN_SEQ_NEXT: it may call nextval() or setval() -- it names one, or
 * it is an INSERT, UPDATE, DELETE, MERGE, COPY, CALL, DO or EXECUTE (serial
 * and identity defaults, triggers), or it calls a function that is not a
 * known built-in (which may call nextval itself).  Errs on the side of yes.
 * SQLSCAN_SEQ_LASTVAL / SQLSCAN_SEQ_CURRVAL: it calls lastval() /
 * currval(), pg_catalog-qualified or not, any case, outside quotes and
 * comments. */
enum {
    SQLSCAN_SEQ_NEXT = 1 << 0,
    SQLSCAN_SEQ_LASTVAL = 1 << 1,
    SQLSCAN_SEQ_CURRVAL = 1 << 2,
};
unsigned sqlscan_sequence_use(const char *sql, size_t len);

#endif
