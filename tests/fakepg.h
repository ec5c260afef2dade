/* A scripted PostgreSQL server on a fakenet connection.  It answers the
 * login by itself (trust: AuthenticationOk, a few ParameterStatus,
 * BackendKeyData, ReadyForQuery 'I'), after which the test sends what the
 * server says.  It keeps its own record of the conversation, independent
 * of pgscale's bookkeeping: the frontend messages pgscale wrote, the
 * backend messages pgscale was given, so that a test can ask whether the
 * server is idle as PostgreSQL itself would see it. */
#ifndef PGS_FAKEPG_H
#define PGS_FAKEPG_H

#include "fakenet.h"

enum { FAKEPG_LOGIN_OK = 0, FAKEPG_LOGIN_ERROR, FAKEPG_LOGIN_SILENT };

typedef struct fakepg_framer {
    uint8_t hdr[5];
    int have;            /* header bytes seen of the current message */
    uint32_t remaining;  /* body bytes still to come */
    uint8_t type;
    bool untyped;        /* the next message has no type byte (start-up) */
    bool bad;            /* a length that cannot be */
    uint8_t body[256];   /* the start of the current body */
    uint32_t body_len;
} fakepg_framer;

typedef struct fakepg {
    fn_conn *c;
    int login_mode;
    bool answered;        /* the login was answered */
    bool logged_in;       /* pgscale was given the login's ReadyForQuery */
    fakepg_framer fe;     /* what pgscale wrote */
    fakepg_framer be;     /* what pgscale was given */
    int owed;             /* ReadyForQuery owed: Query, Sync, FunctionCall written */
    bool unsynced;        /* Parse/Bind/Execute/Describe/Close since the last Sync or Query */
    char last_type;       /* the last whole message pgscale was given */
    char last_status;     /* of the last ReadyForQuery given */
    uint64_t submitted_at_ready; /* bytes pgscale had written when it got that ReadyForQuery */
    bool wrote_after_ready; /* pgscale wrote a message after it (other than the
                             * ones PostgreSQL ignores when idle: Flush, and
                             * CopyData/CopyDone/CopyFail outside COPY) */
    uint32_t n_queries;   /* Query messages written after login */
    uint32_t n_syncs;     /* Sync messages written after login */
    char last_query[256]; /* the text of the last Query written (truncated) */
    uint32_t n_terminate;
} fakepg;

/* Makes c a PostgreSQL server (c->user). */
fakepg *fakepg_attach(fn_conn *c, int login_mode);
void fakepg_free(fn_conn *c);
/* The server sends a message. */
void fakepg_send(fakepg *pg, char type, const void *body, size_t len);
void fakepg_ready(fakepg *pg, char status);
/* PostgreSQL's own view: its last message given to pgscale was
 * ReadyForQuery 'I', no reply is owed, pgscale wrote nothing after it
 * that PostgreSQL would act on, and
 * no message is half-way in either direction. */
bool fakepg_idle(const fakepg *pg);

/* A client's start-up message for user/database (into buf; its length). */
size_t fakepg_startup(uint8_t *buf, size_t cap, const char *user, const char *db);
/* One frontend/backend message: type, length, body (into buf; its length). */
size_t fakepg_msg(uint8_t *buf, size_t cap, char type, const void *body, size_t len);

#endif
