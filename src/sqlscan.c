/* sqlscan: tells the transaction-mode pooler which of the few session-state
 * statements it must act on (SET, RESET, DISCARD, DEALLOCATE, LISTEN,
 * PREPARE, temp tables, WITH HOLD cursors, BEGIN), and flags texts that hold
 * several statements or call a session advisory lock.  It lexes at the
 * keyword level only: no expression parsing, no validation, no allocation. */
#include "sqlscan.h"

#include <string.h>

/* ---------------------------------------------------------------------------
 * Lexer
 *
 * Tokens follow PostgreSQL's scan.l closely enough that quotes, comments and
 * dollar quotes begin and end where the server thinks they do; that is what
 * makes the ';' and advisory-lock findings trustworthy.  Two deliberate
 * simplifications: numbers are lexed loosely (they only need to not start
 * anything), and plain '...' strings assume standard_conforming_strings=on,
 * the default since 9.1.
 * ------------------------------------------------------------------------- */

typedef enum tk_kind {
    TK_END = 0,
    TK_WORD,    /* unquoted identifier or keyword */
    TK_QIDENT,  /* "quoted identifier": off/n cover the text between the quotes */
    TK_LITERAL, /* string, E-string, dollar-quoted string or number */
    TK_PUNCT,   /* any other single byte, in ch */
} tk_kind;

typedef struct token {
    tk_kind kind;
    unsigned char ch;
    bool bad; /* TK_QIDENT without its closing quote */
    size_t off, n;
} token;

typedef struct lexer {
    const unsigned char *s;
    size_t len, pos;
    /* Statement-separator tracking is done as tokens are produced, so every
     * token counts exactly once however the classifier below peeks. */
    bool after_semi, multi, lock;
    bool unlock_all;     /* pg_advisory_unlock_all seen */
    bool temp_object;    /* INTO TEMP or pg_temp. seen (see sqlscan.h) */
    bool set_config;     /* the name set_config seen */
    bool on_commit_drop; /* set by classify_create */
    uint8_t prev;        /* what the previous token was, for the two-token patterns */
    uint32_t n_semis;    /* ';' tokens produced */
    bool peeked;
    token la;
} lexer;

static inline bool is_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r'); /* \t \n \v \f \r, as scan.l */
}

static inline bool is_ident_start(unsigned char c)
{
    unsigned char l = c | 0x20;
    return (l >= 'a' && l <= 'z') || c == '_' || c >= 0x80;
}

/* Dollar-quote tags may not contain '$'; identifiers may. */
static inline bool is_tag_cont(unsigned char c)
{
    return is_ident_start(c) || (c >= '0' && c <= '9');
}

static inline bool is_ident_cont(unsigned char c)
{
    return is_tag_cont(c) || c == '$';
}

static inline unsigned char ascii_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* p[0..n) equals the lower-case literal lit, ASCII case folded. */
static bool eq_fold(const unsigned char *p, const char *lit, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (ascii_lower(p[k]) != (unsigned char)lit[k]) return false;
    return true;
}

/* i is just past the opening "/ *"; block comments nest in PostgreSQL. */
static size_t skip_block_comment(const unsigned char *s, size_t len, size_t i)
{
    size_t depth = 1;
    while (i < len) {
        if (s[i] == '*' && i + 1 < len && s[i + 1] == '/') {
            i += 2;
            if (--depth == 0) return i;
        } else if (s[i] == '/' && i + 1 < len && s[i + 1] == '*') {
            i += 2;
            depth++;
        } else {
            i++;
        }
    }
    return len;
}

static size_t skip_blanks(const unsigned char *s, size_t len, size_t i)
{
    for (;;) {
        while (i < len && is_space(s[i])) i++;
        if (i + 1 >= len) return i;
        if (s[i] == '-' && s[i + 1] == '-') {
            i += 2;
            while (i < len && s[i] != '\n' && s[i] != '\r') i++;
        } else if (s[i] == '/' && s[i + 1] == '*') {
            i = skip_block_comment(s, len, i + 2);
        } else {
            return i;
        }
    }
}

/* i is just past an opening quote q; a doubled q stands for itself.  Returns
 * the index just past the closing quote, or len when there is none. */
static size_t skip_quoted(const unsigned char *s, size_t len, size_t i, unsigned char q,
                          bool *closed)
{
    while (i < len) {
        const unsigned char *p = memchr(s + i, q, len - i);
        if (!p) break;
        i = (size_t)(p - s) + 1;
        if (i < len && s[i] == q) {
            i++;
            continue;
        }
        *closed = true;
        return i;
    }
    *closed = false;
    return len;
}

/* E'...': backslash escapes anything, including the quote. */
static size_t skip_estring(const unsigned char *s, size_t len, size_t i)
{
    while (i < len) {
        unsigned char c = s[i];
        if (c == '\\') {
            i += 2;
        } else if (c == '\'') {
            if (i + 1 < len && s[i + 1] == '\'')
                i += 2;
            else
                return i + 1;
        } else {
            i++;
        }
    }
    return len;
}

/* s[i] == '$'.  When a dollar quote ($$ or $tag$) opens here, sets *end past
 * its closing delimiter (or to len) and returns true; "$1" and a lone '$'
 * are not quotes. */
static bool skip_dollar_quote(const unsigned char *s, size_t len, size_t i, size_t *end)
{
    size_t j = i + 1;
    if (j >= len) return false;
    if (s[j] != '$') {
        if (!is_ident_start(s[j])) return false;
        while (j < len && is_tag_cont(s[j])) j++;
        if (j >= len || s[j] != '$') return false;
    }
    const unsigned char *tag = s + i;
    size_t taglen = j + 1 - i;
    size_t k = j + 1;
    while (k < len) {
        const unsigned char *p = memchr(s + k, '$', len - k);
        if (!p) break;
        size_t at = (size_t)(p - s);
        if (len - at >= taglen && memcmp(p, tag, taglen) == 0) {
            *end = at + taglen;
            return true;
        }
        k = at + 1;
    }
    *end = len;
    return true;
}

static const struct {
    const char *name;
    size_t len;
} lock_funcs[] = {
#define LOCK_FUNC(s) {s, sizeof(s) - 1}
    LOCK_FUNC("pg_advisory_lock"),
    LOCK_FUNC("pg_advisory_lock_shared"),
    LOCK_FUNC("pg_try_advisory_lock"),
    LOCK_FUNC("pg_try_advisory_lock_shared"),
#undef LOCK_FUNC
};

/* Unquoted names fold case like the server does; a quoted name resolves to
 * the function only when spelled exactly in lower case.  A match does not
 * require a following '(': a false positive only pins one client, a miss
 * would hand a locked server connection to someone else. */
static bool is_lock_func(const unsigned char *p, size_t n, bool fold)
{
    if (n != 16 && n != 20 && n != 23 && n != 27) return false;
    for (size_t k = 0; k < PGS_ARRAY_LEN(lock_funcs); k++) {
        const char *f = lock_funcs[k].name;
        if (lock_funcs[k].len != n) continue;
        if (fold ? eq_fold(p, f, n) : memcmp(p, f, n) == 0) return true;
    }
    return false;
}

static bool is_unlock_all_func(const unsigned char *p, size_t n, bool fold)
{
    static const char f[] = "pg_advisory_unlock_all";
    if (n != sizeof(f) - 1) return false;
    return fold ? eq_fold(p, f, n) : memcmp(p, f, n) == 0;
}

static bool is_name10(const unsigned char *p, size_t n, bool fold, const char *f)
{
    if (n != 10) return false;
    return fold ? eq_fold(p, f, n) : memcmp(p, f, n) == 0;
}

enum { PREV_OTHER = 0, PREV_INTO, PREV_PG_TEMP };

/* The two-token patterns behind temp_object: INTO {TEMP|TEMPORARY}
 * (SELECT ... INTO TEMP t) and pg_temp '.' (a name in the session's own
 * temporary schema). */
static void note_temp_patterns(lexer *lx, const token *t)
{
    const unsigned char *p = lx->s + t->off;
    uint8_t prev = lx->prev;
    lx->prev = PREV_OTHER;
    if (t->kind == TK_WORD) {
        if (prev == PREV_INTO && ((t->n == 4 && eq_fold(p, "temp", 4)) ||
                                  (t->n == 9 && eq_fold(p, "temporary", 9))))
            lx->temp_object = true;
        if (t->n == 4 && eq_fold(p, "into", 4)) lx->prev = PREV_INTO;
        if (t->n == 7 && eq_fold(p, "pg_temp", 7)) lx->prev = PREV_PG_TEMP;
    } else if (t->kind == TK_QIDENT && !t->bad) {
        if (t->n == 7 && memcmp(p, "pg_temp", 7) == 0) lx->prev = PREV_PG_TEMP;
    } else if (t->kind == TK_PUNCT && t->ch == '.' && prev == PREV_PG_TEMP) {
        lx->temp_object = true;
    }
}

static token lex(lexer *lx)
{
    const unsigned char *s = lx->s;
    size_t len = lx->len;
    size_t i = skip_blanks(s, len, lx->pos);
    token t = {.kind = TK_END, .off = i};
    if (i >= len) {
        lx->pos = len;
        return t;
    }
    unsigned char c = s[i];
    if (is_ident_start(c)) {
        size_t j = i + 1;
        while (j < len && is_ident_cont(s[j])) j++;
        if (j == i + 1 && (c == 'e' || c == 'E') && j < len && s[j] == '\'') {
            t.kind = TK_LITERAL;
            lx->pos = skip_estring(s, len, j + 1);
            t.n = lx->pos - i;
        } else {
            t.kind = TK_WORD;
            t.n = j - i;
            lx->pos = j;
            if (is_lock_func(s + i, t.n, true)) lx->lock = true;
            if (is_unlock_all_func(s + i, t.n, true)) lx->unlock_all = true;
            if (is_name10(s + i, t.n, true, "set_config")) lx->set_config = true;
        }
    } else if (c == '"') {
        bool closed;
        size_t end = skip_quoted(s, len, i + 1, '"', &closed);
        t.kind = TK_QIDENT;
        t.bad = !closed;
        t.off = i + 1;
        t.n = end - (i + 1) - (closed ? 1 : 0);
        lx->pos = end;
        if (closed && is_lock_func(s + t.off, t.n, false)) lx->lock = true;
        if (closed && is_unlock_all_func(s + t.off, t.n, false)) lx->unlock_all = true;
        if (closed && is_name10(s + t.off, t.n, false, "set_config")) lx->set_config = true;
    } else if (c == '\'') {
        bool closed;
        t.kind = TK_LITERAL;
        lx->pos = skip_quoted(s, len, i + 1, '\'', &closed);
        t.n = lx->pos - i;
    } else if (c == '$' && skip_dollar_quote(s, len, i, &lx->pos)) {
        t.kind = TK_LITERAL;
        t.n = lx->pos - i;
    } else if (c >= '0' && c <= '9') {
        size_t j = i + 1;
        while (j < len && ((s[j] >= '0' && s[j] <= '9') || s[j] == '.')) j++;
        t.kind = TK_LITERAL;
        t.n = j - i;
        lx->pos = j;
    } else {
        t.kind = TK_PUNCT;
        t.ch = c;
        lx->pos = i + 1;
    }

    note_temp_patterns(lx, &t);
    if (t.kind == TK_PUNCT && c == ';') {
        lx->after_semi = true;
        lx->n_semis++;
    }
    else if (lx->after_semi)
        lx->multi = true;
    return t;
}

static token next(lexer *lx)
{
    if (lx->peeked) {
        lx->peeked = false;
        return lx->la;
    }
    return lex(lx);
}

static const token *peek(lexer *lx)
{
    if (!lx->peeked) {
        lx->la = lex(lx);
        lx->peeked = true;
    }
    return &lx->la;
}

/* ---------------------------------------------------------------------------
 * Classifier: a few hand-written productions of gram.y, keyword by keyword.
 * ------------------------------------------------------------------------- */

static inline bool kw_n(const lexer *lx, const token *t, const char *lit, size_t n)
{
    return t->kind == TK_WORD && t->n == n && eq_fold(lx->s + t->off, lit, n);
}

/* Keyword test against a lower-case string literal. */
#define kw(lx, t, lit) kw_n((lx), (t), "" lit, sizeof(lit) - 1)

static bool is_punct(const token *t, unsigned char ch)
{
    return t->kind == TK_PUNCT && t->ch == ch;
}

static bool is_stmt_end(const token *t)
{
    return t->kind == TK_END || is_punct(t, ';');
}

static bool next_is_end(lexer *lx)
{
    token t = next(lx);
    return is_stmt_end(&t);
}

static bool is_ident(const token *t)
{
    return t->kind == TK_WORD || (t->kind == TK_QIDENT && !t->bad);
}

/* Appends one identifier to name[0..*n): folded if unquoted, verbatim with
 * "" undoubled if quoted.  Fails on overflow of SQLSCAN_NAME_MAX-1 bytes, on
 * "" (which the server rejects), and on a NUL byte, which the NUL-terminated
 * name could not carry faithfully. */
static bool append_ident(const lexer *lx, const token *t, char *name, size_t *n)
{
    const unsigned char *p = lx->s + t->off;
    const size_t room = SQLSCAN_NAME_MAX - 1 - *n;
    if (t->kind == TK_WORD) {
        if (t->n > room) return false;
        for (size_t k = 0; k < t->n; k++) name[(*n)++] = (char)ascii_lower(p[k]);
    } else if (t->kind == TK_QIDENT && !t->bad && t->n > 0) {
        size_t used = 0;
        for (size_t k = 0; k < t->n; k++) {
            unsigned char c = p[k];
            if (c == '\0' || used == room) return false;
            if (c == '"') k++; /* the closed token holds only doubled quotes */
            name[(*n)++] = (char)c;
            used++;
        }
    } else {
        return false;
    }
    name[*n] = '\0';
    return true;
}

/* name ['.' name]... starting with the already-read token first. */
static bool read_dotted_name(lexer *lx, const token *first, char *name)
{
    size_t n = 0;
    if (!append_ident(lx, first, name, &n)) return false;
    while (is_punct(peek(lx), '.')) {
        (void)next(lx);
        token part = next(lx);
        if (n >= SQLSCAN_NAME_MAX - 1) return false;
        name[n++] = '.';
        if (!append_ident(lx, &part, name, &n)) return false;
    }
    return true;
}

static sql_kind set_name(char *name, const char *lit)
{
    size_t n = strlen(lit);
    memcpy(name, lit, n + 1);
    return SQL_SET;
}

/* A keyword that is followed by '.', '=' or TO is really the first part of a
 * parameter name ("SET session.user_id = 1", "SET role = x"). */
static bool starts_generic(lexer *lx)
{
    const token *p = peek(lx);
    return is_punct(p, '.') || is_punct(p, '=') || kw(lx, p, "to");
}

/* After "SET" has been read. */
static sql_kind classify_set(lexer *lx, char *name)
{
    token t = next(lx);
    bool after_scope = false;

    if (kw(lx, &t, "local") && !starts_generic(lx))
        return is_stmt_end(peek(lx)) ? SQL_OTHER : SQL_SET_LOCAL;
    if (kw(lx, &t, "constraints") && !starts_generic(lx))
        return is_stmt_end(peek(lx)) ? SQL_OTHER : SQL_SET_LOCAL;

    for (;;) {
        if (!kw(lx, &t, "session") || starts_generic(lx)) break;
        /* SESSION is either the scope ("SET SESSION x = 1") or the start
         * of SESSION AUTHORIZATION / SESSION CHARACTERISTICS. */
        const token *p = peek(lx);
        if (kw(lx, p, "authorization")) {
            (void)next(lx);
            return next_is_end(lx) ? SQL_OTHER : set_name(name, "session_authorization");
        }
        if (kw(lx, p, "characteristics")) {
            (void)next(lx);
            token as = next(lx), tr = next(lx);
            if (!kw(lx, &as, "as") || !kw(lx, &tr, "transaction")) return SQL_OTHER;
            return set_name(name, "transaction_characteristics");
        }
        if (after_scope) break; /* "SET SESSION SESSION x": not valid SQL */
        after_scope = true;
        t = next(lx);
    }

    if (!is_ident(&t)) return SQL_OTHER;
    if (t.kind == TK_WORD && !starts_generic(lx)) {
        /* SET [SESSION] TRANSACTION ... is transaction-scoped either way. */
        if (kw(lx, &t, "transaction"))
            return is_stmt_end(peek(lx)) ? SQL_OTHER : SQL_SET_LOCAL;
        if (kw(lx, &t, "time") && kw(lx, peek(lx), "zone")) {
            (void)next(lx);
            return next_is_end(lx) ? SQL_OTHER : set_name(name, "timezone");
        }
        if (kw(lx, &t, "names")) return set_name(name, "client_encoding"); /* value optional */
        if (kw(lx, &t, "schema"))
            return next_is_end(lx) ? SQL_OTHER : set_name(name, "search_path");
        if (kw(lx, &t, "role")) return next_is_end(lx) ? SQL_OTHER : set_name(name, "role");
        if (kw(lx, &t, "xml") && kw(lx, peek(lx), "option")) {
            (void)next(lx);
            return next_is_end(lx) ? SQL_OTHER : set_name(name, "xmloption");
        }
    }

    if (!read_dotted_name(lx, &t, name)) return SQL_OTHER;
    token op = next(lx);
    if (kw(lx, &op, "to") || is_punct(&op, '=')) return next_is_end(lx) ? SQL_OTHER : SQL_SET;
    if (kw(lx, &op, "from")) {
        token cur = next(lx);
        if (kw(lx, &cur, "current")) return SQL_SET;
    }
    return SQL_OTHER;
}

/* After "RESET" has been read. */
static sql_kind classify_reset(lexer *lx, char *name)
{
    token t = next(lx);
    if (kw(lx, &t, "all")) return next_is_end(lx) ? SQL_RESET_ALL : SQL_OTHER;

    if (kw(lx, &t, "time") && kw(lx, peek(lx), "zone")) {
        (void)next(lx);
        set_name(name, "timezone");
    } else if (kw(lx, &t, "session") && kw(lx, peek(lx), "authorization")) {
        (void)next(lx);
        set_name(name, "session_authorization");
    } else if (kw(lx, &t, "transaction") && kw(lx, peek(lx), "isolation")) {
        (void)next(lx);
        token level = next(lx);
        if (!kw(lx, &level, "level")) return SQL_OTHER;
        set_name(name, "transaction_isolation");
    } else if (!read_dotted_name(lx, &t, name)) {
        return SQL_OTHER;
    }
    return next_is_end(lx) ? SQL_RESET : SQL_OTHER;
}

static sql_kind classify_discard(lexer *lx)
{
    token t = next(lx);
    sql_kind k = SQL_OTHER;
    if (kw(lx, &t, "all"))
        k = SQL_DISCARD_ALL;
    else if (kw(lx, &t, "plans"))
        k = SQL_DISCARD_OTHER;
    else if (kw(lx, &t, "sequences"))
        k = SQL_DISCARD_SEQUENCES;
    else if (kw(lx, &t, "temp") || kw(lx, &t, "temporary"))
        k = SQL_DISCARD_TEMP;
    return (k != SQL_OTHER && next_is_end(lx)) ? k : SQL_OTHER;
}

static sql_kind classify_deallocate(lexer *lx, char *name)
{
    token t = next(lx);
    /* "DEALLOCATE prepare" deallocates a statement named prepare. */
    if (kw(lx, &t, "prepare") && !is_stmt_end(peek(lx))) t = next(lx);
    if (kw(lx, &t, "all")) return next_is_end(lx) ? SQL_DEALLOCATE_ALL : SQL_OTHER;
    size_t n = 0;
    if (!append_ident(lx, &t, name, &n)) return SQL_OTHER;
    return next_is_end(lx) ? SQL_DEALLOCATE : SQL_OTHER;
}

static sql_kind classify_prepare(lexer *lx, char *name)
{
    token t = next(lx);
    size_t n = 0;
    if (!append_ident(lx, &t, name, &n)) return SQL_OTHER;
    /* Requiring '(' or AS also keeps PREPARE TRANSACTION 'gid' out. */
    token after = next(lx);
    return (is_punct(&after, '(') || kw(lx, &after, "as")) ? SQL_PREPARE : SQL_OTHER;
}

static sql_kind classify_create(lexer *lx)
{
    token t = next(lx);
    if (kw(lx, &t, "or")) {
        token r = next(lx);
        if (!kw(lx, &r, "replace")) return SQL_OTHER;
        t = next(lx);
    }
    if (kw(lx, &t, "global") || kw(lx, &t, "local")) t = next(lx);
    if (!kw(lx, &t, "temp") && !kw(lx, &t, "temporary")) return SQL_OTHER;
    if (is_stmt_end(peek(lx))) return SQL_OTHER;
    /* The rest of the statement, for ON COMMIT DROP (after the column list
     * or before AS; the three words cannot appear together elsewhere
     * outside quotes). */
    int seen = 0; /* 1: ON, 2: ON COMMIT */
    for (;;) {
        token u = next(lx);
        if (is_stmt_end(&u)) break;
        if (seen == 2 && kw(lx, &u, "drop")) lx->on_commit_drop = true;
        seen = kw(lx, &u, "on") ? 1 : (seen == 1 && kw(lx, &u, "commit")) ? 2 : 0;
    }
    return SQL_CREATE_TEMP;
}

/* DECLARE name cursor_options CURSOR [{WITH|WITHOUT} HOLD] FOR query, where
 * cursor_options is any sequence of BINARY, ASENSITIVE, INSENSITIVE,
 * [NO] SCROLL (gram.y accepts them in any order). */
static sql_kind classify_declare(lexer *lx)
{
    token t = next(lx);
    if (!is_ident(&t)) return SQL_OTHER;
    for (;;) {
        t = next(lx);
        if (kw(lx, &t, "binary") || kw(lx, &t, "asensitive") || kw(lx, &t, "insensitive") ||
            kw(lx, &t, "scroll"))
            continue;
        if (kw(lx, &t, "no")) {
            token s = next(lx);
            if (kw(lx, &s, "scroll")) continue;
            return SQL_OTHER;
        }
        break;
    }
    if (!kw(lx, &t, "cursor")) return SQL_OTHER;
    token w = next(lx), h = next(lx), f = next(lx);
    return (kw(lx, &w, "with") && kw(lx, &h, "hold") && kw(lx, &f, "for")) ? SQL_DECLARE_HOLD
                                                                         : SQL_OTHER;
}

static sql_kind classify_first(lexer *lx, const token *first, char *name)
{
    const token *t = first;
    switch (ascii_lower(lx->s[t->off])) {
    case 'b':
        if (kw(lx, t, "begin")) return SQL_BEGIN;
        break;
    case 'c':
        if (kw(lx, t, "create")) return classify_create(lx);
        if (kw(lx, t, "close") && kw(lx, peek(lx), "all")) {
            (void)next(lx);
            return next_is_end(lx) ? SQL_CLOSE_ALL : SQL_OTHER;
        }
        break;
    case 'd':
        if (kw(lx, t, "discard")) return classify_discard(lx);
        if (kw(lx, t, "deallocate")) return classify_deallocate(lx, name);
        if (kw(lx, t, "declare")) return classify_declare(lx);
        break;
    case 'l':
        if (kw(lx, t, "listen")) return is_ident(peek(lx)) ? SQL_LISTEN : SQL_OTHER;
        break;
    case 'p':
        if (kw(lx, t, "prepare")) return classify_prepare(lx, name);
        break;
    case 'r':
        if (kw(lx, t, "reset")) return classify_reset(lx, name);
        break;
    case 's':
        if (kw(lx, t, "set")) return classify_set(lx, name);
        if (kw(lx, t, "start")) return kw(lx, peek(lx), "transaction") ? SQL_BEGIN : SQL_OTHER;
        break;
    case 'u':
        if (kw(lx, t, "unlisten")) {
            if (is_punct(peek(lx), '*')) {
                (void)next(lx);
                return next_is_end(lx) ? SQL_UNLISTEN_ALL : SQL_OTHER;
            }
            return is_ident(peek(lx)) ? SQL_UNLISTEN : SQL_OTHER;
        }
        break;
    default:
        break;
    }
    return SQL_OTHER;
}

/* ---------------------------------------------------------------------------
 * Whole-text flags
 *
 * The classifier reads only a statement's first few tokens.  The rest of the
 * text matters for the two flags, but most texts can be cleared without
 * lexing it: no ';' followed by anything but blanks means no second
 * statement, and no "advisory" anywhere means no lock call.  Only when one of
 * those cheap tests is inconclusive is the remainder lexed, which is what
 * tells a ';' or a function name in code from one in a string or comment.
 * ------------------------------------------------------------------------- */

static bool only_blanks_or_semis(const unsigned char *s, size_t from, size_t len)
{
    for (size_t i = from; i < len; i++)
        if (!is_space(s[i]) && s[i] != ';') return false;
    return true;
}

static bool advisory_at(const unsigned char *s, size_t n, size_t v)
{
    /* v indexes the 'v' of "advisory" */
    return v >= 2 && n - v >= 6 && eq_fold(s + v - 2, "advisory", 8);
}

/* Case-insensitive search for "advisory", eight bytes at a time for its
 * rarest letter 'v' (0x56 | 0x20 == 0x76 == 'v'; no other byte folds there). */
static bool has_advisory(const unsigned char *s, size_t n)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    const uint64_t vs = 0x7676767676767676ull, fold = 0x2020202020202020ull;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        uint64_t x = (w | fold) ^ vs;
        if (((x - ones) & ~x & highs) == 0) continue;
        for (size_t k = i; k < i + 8; k++)
            if ((s[k] | 0x20) == 'v' && advisory_at(s, n, k)) return true;
    }
    for (; i < n; i++)
        if ((s[i] | 0x20) == 'v' && advisory_at(s, n, i)) return true;
    return false;
}

/* Case-insensitive search for "set_config". */
static bool has_set_config(const unsigned char *s, size_t n)
{
    size_t i = 3;
    while (i + 7 <= n) {
        const unsigned char *p = memchr(s + i, '_', n - 7 + 1 - i);
        if (!p) return false;
        i = (size_t)(p - s);
        if (eq_fold(s + i - 3, "set_config", 10)) return true;
        i++;
    }
    return false;
}

/* Case-insensitive search for "temp" (temporary, pg_temp): without it
 * neither INTO TEMP nor pg_temp. can be in the text. */
static bool has_temp(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i + 4 <= n; i++)
        if ((s[i] | 0x20) == 't' && eq_fold(s + i, "temp", 4)) return true;
    return false;
}

static void finish_flags(lexer *lx)
{
    const unsigned char *s = lx->s;
    size_t len = lx->len, pos = lx->pos;

    bool need_multi = false;
    if (!lx->multi) {
        size_t from = pos;
        if (!lx->after_semi) {
            const unsigned char *p = pos < len ? memchr(s + pos, ';', len - pos) : NULL;
            from = p ? (size_t)(p - s) + 1 : len;
        }
        need_multi = (lx->after_semi || from < len) && !only_blanks_or_semis(s, from, len);
    }
    /* The advisory functions: lock and unlock_all both want the whole rest
     * lexed when "advisory" is in it. */
    bool need_lock = (!lx->lock || !lx->unlock_all) && has_advisory(s + pos, len - pos);
    bool need_temp = !lx->temp_object && has_temp(s + pos, len - pos);
    bool need_cfg = !lx->set_config && has_set_config(s + pos, len - pos);

    while ((need_multi && !lx->multi) || (need_lock && (!lx->lock || !lx->unlock_all)) ||
           (need_temp && !lx->temp_object) || (need_cfg && !lx->set_config)) {
        token t = next(lx);
        if (t.kind == TK_END) break;
    }
}

/* ---------------------------------------------------------------------------
 * set_config calls
 *
 * A session-level set_config(name, value, false) changes the session like
 * SET does, so pgscale carries it the same way, but only when the text says
 * exactly what it sets: a plain SELECT whose list items are whole calls
 * with string-literal name and value and a constant is_local.  Anything
 * less certain (a parameter, a nested or conditional call, a FROM clause
 * that may run it any number of times) is reported as unseen.
 * ------------------------------------------------------------------------- */

/* The text of a string literal token (plain, E'' without backslashes, or
 * dollar-quoted) into out[0..cap) with its NUL, lower-cased when fold
 * (out NULL: only checked).  False when it is another kind of literal, is
 * not closed, holds a NUL or does not fit. */
static bool decode_string(const unsigned char *p, size_t n, char *out, size_t cap, bool fold)
{
    size_t o = 0;
    if (n >= 2 && p[0] == '$') {
        const unsigned char *tag_end = memchr(p + 1, '$', n - 1);
        if (!tag_end) return false;
        size_t tag = (size_t)(tag_end - p) + 1;
        if (n < 2 * tag || memcmp(p, p + n - tag, tag) != 0) return false;
        for (size_t k = tag; k < n - tag; k++) {
            if (p[k] == '\0' || (out && o + 1 >= cap)) return false;
            if (out) out[o] = (char)(fold ? ascii_lower(p[k]) : p[k]);
            o++;
        }
        if (out) out[o] = '\0';
        return true;
    }
    size_t k = 0;
    if (n >= 1 && (p[0] == 'e' || p[0] == 'E')) {
        if (memchr(p, '\\', n)) return false;
        k = 1;
    }
    if (n < k + 2 || p[k] != '\'' || p[n - 1] != '\'') return false;
    for (k++; k < n - 1; k++) {
        unsigned char c = p[k];
        if (c == '\'') {
            if (k + 1 >= n - 1 || p[k + 1] != '\'') return false; /* not closed here */
            k++;
        }
        if (c == '\0' || (out && o + 1 >= cap)) return false;
        if (out) out[o] = (char)(fold ? ascii_lower(c) : c);
        o++;
    }
    if (out) out[o] = '\0';
    return true;
}

/* What PostgreSQL's boolin makes of a string: 1 true, 0 false, -1 neither. */
static int text_bool(const char *v)
{
    while (is_space((unsigned char)*v)) v++;
    size_t n = strlen(v);
    while (n > 0 && is_space((unsigned char)v[n - 1])) n--;
    if (n == 0) return -1;
    static const struct {
        const char *word;
        size_t min;
        int val;
    } forms[] = {{"true", 1, 1}, {"false", 1, 0}, {"yes", 1, 1}, {"no", 1, 0},
                 {"on", 2, 1},   {"off", 2, 0},   {"1", 1, 1},   {"0", 1, 0}};
    for (size_t i = 0; i < PGS_ARRAY_LEN(forms); i++)
        if (n >= forms[i].min && n <= strlen(forms[i].word) && strncmp(v, forms[i].word, n) == 0)
            return forms[i].val;
    return -1;
}

static bool is_clause_word(const lexer *lx, const token *t)
{
    static const char *const words[] = {"from",  "where",     "group",  "having", "window",
                                        "limit", "offset",    "fetch",  "union",  "intersect",
                                        "except", "into",     "for"};
    if (t->kind != TK_WORD) return false;
    for (size_t i = 0; i < PGS_ARRAY_LEN(words); i++)
        if (kw_n(lx, t, words[i], strlen(words[i]))) return true;
    return false;
}

typedef struct cfg_arg {
    int ntok;      /* tokens in the argument */
    token first;   /* its first token */
} cfg_arg;

enum { CFG_LOCAL, CFG_SESSION, CFG_UNKNOWN };

/* is_local's argument: constant true (CFG_LOCAL), constant false or NULL
 * (CFG_SESSION), or anything else (CFG_UNKNOWN). */
static int cfg_scope(const lexer *lx, const cfg_arg *a)
{
    if (a->ntok != 1) return CFG_UNKNOWN;
    const token *t = &a->first;
    if (kw(lx, t, "true")) return CFG_LOCAL;
    if (kw(lx, t, "false") || kw(lx, t, "null")) return CFG_SESSION;
    char v[16];
    if (t->kind != TK_LITERAL || !decode_string(lx->s + t->off, t->n, v, sizeof(v), true))
        return CFG_UNKNOWN;
    int b = text_bool(v);
    return b == 1 ? CFG_LOCAL : b == 0 ? CFG_SESSION : CFG_UNKNOWN;
}

/* Walks the whole text.  *session: some call may set a session-level
 * value; *unseen: one of them cannot be recorded.  The calls that can go
 * to out[] (when out is not NULL); returns how many. */
static int scan_configs(const char *sql, size_t len, sql_setcfg *out, bool *session,
                        bool *unseen)
{
    lexer lx = {.s = (const unsigned char *)sql, .len = sql ? len : 0};
    int n = 0;
    *session = *unseen = false;
    token t = next(&lx);
    bool select = kw(&lx, &t, "select");
    bool clause = false;    /* FROM, WHERE, UNION ... at depth 0 */
    int depth = 0;          /* parentheses, brackets and CASE ... END */
    bool item_start = select;
    int qual = 0;           /* 1: pg_catalog, 2: pg_catalog '.', 3: other '.' */
    bool qual_item_start = false;
    int after = 0;          /* after a call: 1, 2 (AS), 3 (alias) */
    if (select) t = next(&lx);
    for (; t.kind != TK_END; t = next(&lx)) {
        if (after) {
            bool end = is_stmt_end(&t) || (is_punct(&t, ',') && depth == 0);
            if ((after == 1 || after == 3) && end)
                after = 0;
            else if (after == 1 && kw(&lx, &t, "as"))
                after = 2;
            else if ((after == 1 || after == 2) && is_ident(&t) && !is_clause_word(&lx, &t))
                after = 3;
            else {
                after = 0;
                *unseen = true;
            }
        }
        bool at_item = item_start;
        item_start = false;
        int q = qual;
        qual = 0;
        if (is_punct(&t, ';')) {
            /* what follows makes the text multi: judged at the end */
            select = false;
            continue;
        }
        if (is_punct(&t, '(') || is_punct(&t, '[') || kw(&lx, &t, "case")) {
            depth++;
            continue;
        }
        if (is_punct(&t, ')') || is_punct(&t, ']') || kw(&lx, &t, "end")) {
            if (depth > 0) depth--;
            continue;
        }
        if (is_punct(&t, ',')) {
            item_start = depth == 0;
            continue;
        }
        if (depth == 0 && is_clause_word(&lx, &t)) clause = true;
        if (t.kind == TK_WORD || t.kind == TK_QIDENT) {
            const unsigned char *p = lx.s + t.off;
            bool fold = t.kind == TK_WORD;
            if (!t.bad && is_name10(p, t.n, fold, "pg_catalog") && is_punct(peek(&lx), '.')) {
                qual = 1;
                qual_item_start = at_item;
                continue;
            }
            if (t.bad || !is_name10(p, t.n, fold, "set_config")) continue;
        } else if (is_punct(&t, '.')) {
            qual = q == 1 ? 2 : 3;
            continue;
        } else {
            continue;
        }
        /* the name set_config */
        if (!is_punct(peek(&lx), '(')) continue; /* a column or such */
        (void)next(&lx);
        cfg_arg args[3] = {{0}};
        int nargs = 0, d = 0;
        bool nested = false, closed = false, extra = false;
        for (;;) {
            token a = next(&lx);
            if (is_stmt_end(&a)) break;
            if (d == 0 && is_punct(&a, ')')) {
                closed = true;
                break;
            }
            if (d == 0 && is_punct(&a, ',')) {
                if (++nargs >= 3) extra = true;
                continue;
            }
            if (is_punct(&a, '(') || is_punct(&a, '[') || kw(&lx, &a, "case")) d++;
            if ((is_punct(&a, ')') || is_punct(&a, ']') || kw(&lx, &a, "end")) && d > 0) d--;
            if ((a.kind == TK_WORD || a.kind == TK_QIDENT) && !a.bad &&
                is_name10(lx.s + a.off, a.n, a.kind == TK_WORD, "set_config"))
                nested = true;
            if (!extra && nargs < 3 && args[nargs].ntok++ == 0) args[nargs].first = a;
        }
        if (closed && !extra) nargs++;
        int scope = closed && !extra && nargs == 3 && q != 3 ? cfg_scope(&lx, &args[2])
                                                              : CFG_UNKNOWN;
        if (scope == CFG_LOCAL && !nested) continue;
        *session = true;
        bool whole_item = select && depth == 0 && (q == 2 ? qual_item_start : q == 0 && at_item);
        char name[SQLSCAN_NAME_MAX];
        const token *nt = &args[0].first, *vt = &args[1].first;
        bool consts = args[0].ntok == 1 && args[1].ntok == 1 && nt->kind == TK_LITERAL &&
                      vt->kind == TK_LITERAL &&
                      decode_string(lx.s + nt->off, nt->n, name, sizeof(name), true) && name[0] &&
                      /* a valid string, whatever its length: it is replayed as written */
                      decode_string(lx.s + vt->off, vt->n, NULL, 0, false);
        if (scope != CFG_SESSION || nested || !whole_item || !consts || n == SQLSCAN_SETCFG_MAX) {
            *unseen = true;
            continue;
        }
        if (out) {
            memcpy(out[n].name, name, sizeof(name));
            out[n].value_off = vt->off;
            out[n].value_len = vt->n;
        }
        n++;
        after = 1;
    }
    if (after == 2) *unseen = true; /* "AS" and nothing */
    if (*session && (clause || lx.multi)) *unseen = true;
    return *unseen ? 0 : n;
}

int sqlscan_set_configs(const char *sql, size_t len, sql_setcfg *out)
{
    bool session, unseen;
    return scan_configs(sql, len, out, &session, &unseen);
}

void sqlscan_classify(const char *sql, size_t len, sql_info *out)
{
    lexer lx = {.s = (const unsigned char *)sql, .len = sql ? len : 0};

    out->name[0] = '\0';
    token first = next(&lx);
    sql_kind kind = first.kind == TK_WORD ? classify_first(&lx, &first, out->name) : SQL_OTHER;
    /* Failed productions may have left a partial name behind. */
    if (kind != SQL_SET && kind != SQL_RESET && kind != SQL_DEALLOCATE && kind != SQL_PREPARE)
        out->name[0] = '\0';

    finish_flags(&lx);
    out->config_session = out->config_unseen = false;
    if (lx.set_config) (void)scan_configs(sql, len, NULL, &out->config_session, &out->config_unseen);
    out->kind = kind;
    out->multi = lx.multi;
    out->session_lock = lx.lock;
    out->unlock_all = lx.unlock_all;
    out->on_commit_drop = kind == SQL_CREATE_TEMP && lx.on_commit_drop;
    out->temp_object = lx.temp_object;
}

static unsigned state_of(sql_kind kind, bool on_commit_drop)
{
    switch (kind) {
    case SQL_LISTEN: return SQLSCAN_STATE_LISTEN;
    case SQL_PREPARE: return SQLSCAN_STATE_PREPARE;
    case SQL_DECLARE_HOLD: return SQLSCAN_STATE_HOLD;
    case SQL_CREATE_TEMP: return on_commit_drop ? 0 : SQLSCAN_STATE_TEMP;
    default: return 0;
    }
}

unsigned sqlscan_state_of(const sql_info *info)
{
    return state_of(info->kind, info->on_commit_drop) |
           (info->session_lock ? SQLSCAN_STATE_LOCK : 0u) |
           (info->temp_object ? SQLSCAN_STATE_TEMP : 0u) |
           (info->config_unseen ? SQLSCAN_STATE_CONFIG : 0u);
}

/* Several statements: one pass of the lexer over the whole text, each
 * statement's first tokens through the classifier, so the cost stays linear
 * in the text however many statements it holds. */
unsigned sqlscan_session_state(const char *sql, size_t len)
{
    /* One statement (the usual case): the classifier's cheap whole-text
     * tests already tell. */
    sql_info info;
    sqlscan_classify(sql, len, &info);
    unsigned config = info.config_session ? SQLSCAN_STATE_CONFIG : 0u;
    if (!info.multi) return sqlscan_state_of(&info) | config;

    lexer lx = {.s = (const unsigned char *)sql, .len = sql ? len : 0};
    unsigned m = 0;
    char name[SQLSCAN_NAME_MAX];
    for (;;) {
        token first = next(&lx);
        if (first.kind == TK_END) break;
        if (is_punct(&first, ';')) continue;
        uint32_t semis = lx.n_semis;
        lx.on_commit_drop = false;
        sql_kind k = first.kind == TK_WORD ? classify_first(&lx, &first, name) : SQL_OTHER;
        m |= state_of(k, lx.on_commit_drop);
        /* on to the end of this statement, unless the classifier got there */
        while (lx.n_semis == semis) {
            token t = next(&lx);
            if (t.kind == TK_END) break;
        }
    }
    if (lx.lock) m |= SQLSCAN_STATE_LOCK;
    if (lx.temp_object) m |= SQLSCAN_STATE_TEMP;
    return m | config;
}

size_t sqlscan_next_statement(const char *sql, size_t len)
{
    lexer lx = {.s = (const unsigned char *)sql, .len = sql ? len : 0};
    for (;;) {
        token t = lex(&lx);
        if (t.kind == TK_END) return lx.len;
        if (t.kind == TK_PUNCT && t.ch == ';') return lx.pos;
    }
}

/* The bytes between two tokens are blanks and comments only (lex skips
 * nothing else), so a word found there is inside a comment: never in a
 * string, a dollar-quoted body or a quoted identifier. */
static bool gap_has(const unsigned char *s, size_t from, size_t to, const char *word, size_t wlen,
                    size_t *at)
{
    for (size_t i = from; i + wlen <= to; i++) {
        if (eq_fold(s + i, word, wlen)) {
            *at = i;
            return true;
        }
    }
    return false;
}

bool sqlscan_comment_find(const char *sql, size_t len, const char *word, size_t from,
                          size_t *at, size_t *gap_end)
{
    size_t wlen = strlen(word);
    lexer lx = {.s = (const unsigned char *)sql, .len = sql ? len : 0};
    if (wlen == 0) return false;
    for (;;) {
        size_t gap_start = lx.pos;
        token t = lex(&lx);
        /* A quoted identifier's off is past its opening quote. */
        size_t tok_start = t.kind == TK_QIDENT ? t.off - 1 : t.off;
        if (tok_start > from &&
            gap_has(lx.s, gap_start > from ? gap_start : from, tok_start, word, wlen, at)) {
            *gap_end = tok_start;
            return true;
        }
        if (t.kind == TK_END) return false;
    }
}

bool sqlscan_comment_has(const char *sql, size_t len, const char *word)
{
    size_t at, end;
    return sqlscan_comment_find(sql, len, word, 0, &at, &end);
}

/* ---------------------------------------------------------------------------
 * Sequence state
 *
 * lastval() and currval() read state that nextval() leaves in the session.
 * Which statements may call nextval cannot be told from the text in general
 * (a serial or identity default, a trigger, a function), so the test errs
 * on the side of yes: every write, and every call of a function that is not
 * one of the common built-ins below (none of which touches a sequence).
 * Keywords that a '(' may follow are listed too.
 * ------------------------------------------------------------------------- */

static const char *const no_nextval_calls[] = {
    /* keywords */
    "all", "and", "any", "array", "as", "between", "by", "case", "cast", "coalesce", "cube",
    "else", "except", "exists", "extract", "filter", "from", "greatest", "group", "grouping",
    "having", "ilike", "in", "intersect", "is", "join", "lateral", "least", "like", "limit",
    "not", "nullif", "offset", "on", "or", "order", "over", "overlay", "partition", "position",
    "returning", "rollup", "row", "rows", "select", "sets", "similar", "some", "substring",
    "table", "then", "trim", "union", "using", "values", "when", "where", "window", "with",
    "within", "xmlelement",
    /* type names with a modifier */
    "bit", "char", "character", "decimal", "float", "interval", "numeric", "time",
    "timestamp", "timestamptz", "varchar", "varbit",
    /* common built-ins */
    "abs", "age", "array_agg", "array_length", "avg", "bool_and", "bool_or", "ceil",
    "char_length", "clock_timestamp", "concat", "concat_ws", "count", "current_database",
    "current_setting", "date_part", "date_trunc", "floor", "format", "generate_series",
    "gen_random_uuid", "json_agg", "json_build_object", "jsonb_agg", "jsonb_build_object",
    "left", "length", "lower", "max", "md5", "min", "mod", "now", "pg_backend_pid",
    "pg_sleep", "power", "random", "rank", "regexp_replace", "replace", "right", "round",
    "row_number", "split_part", "sqrt", "statement_timestamp", "string_agg", "sum",
    "to_char", "to_date", "to_json", "to_jsonb", "to_number", "to_timestamp",
    "transaction_timestamp", "trunc", "unnest", "upper", "version",
    /* the readers themselves */
    "currval", "lastval",
};

static bool word_is(const unsigned char *p, size_t n, bool fold, const char *lit)
{
    size_t l = strlen(lit);
    return n == l && (fold ? eq_fold(p, lit, n) : memcmp(p, lit, n) == 0);
}

/* What a call of the function named p[0..n) does to sequence state. */
static unsigned call_use(const unsigned char *p, size_t n, bool fold)
{
    if (word_is(p, n, fold, "lastval")) return SQLSCAN_SEQ_LASTVAL;
    if (word_is(p, n, fold, "currval")) return SQLSCAN_SEQ_CURRVAL;
    for (size_t k = 0; k < PGS_ARRAY_LEN(no_nextval_calls); k++)
        if (word_is(p, n, fold, no_nextval_calls[k])) return 0;
    return SQLSCAN_SEQ_NEXT; /* nextval, setval, or a function that may call them */
}

static bool writes(const unsigned char *p, size_t n)
{
    static const char *const w[] = {"insert", "update", "delete", "merge",
                                    "copy",   "call",   "do",     "execute"};
    for (size_t k = 0; k < PGS_ARRAY_LEN(w); k++)
        if (word_is(p, n, true, w[k])) return true;
    return false;
}

unsigned sqlscan_sequence_use(const char *sql, size_t len)
{
    lexer lx = {.s = (const unsigned char *)sql, .len = sql ? len : 0};
    unsigned m = 0;
    bool at_start = true; /* the next token begins a statement */
    token prev = {.kind = TK_END};
    for (;;) {
        token t = lex(&lx);
        if (t.kind == TK_END) break;
        if (t.kind == TK_PUNCT && t.ch == '(' &&
            (prev.kind == TK_WORD || (prev.kind == TK_QIDENT && !prev.bad)))
            m |= call_use(lx.s + prev.off, prev.n, prev.kind == TK_WORD);
        /* a WITH ... INSERT, an EXPLAIN ANALYZE INSERT: a write anywhere */
        if (t.kind == TK_WORD && (at_start || word_is(lx.s + t.off, t.n, true, "insert") ||
                                  word_is(lx.s + t.off, t.n, true, "merge")) &&
            writes(lx.s + t.off, t.n))
            m |= SQLSCAN_SEQ_NEXT;
        at_start = t.kind == TK_PUNCT && t.ch == ';';
        prev = t;
    }
    return m;
}
