/* The YAML configuration file.  libyaml's event parser builds a small tree
 * here (refusing anchors, aliases, tags, documents over 1 MiB, nesting over
 * 16 levels and more than 10000 entries in a list or mapping), which is then
 * walked against the schema of known keys into pgs_config, followed by the
 * rules that tie keys together.  The syntax of values (durations, sizes,
 * URLs, addresses) belongs to config.c, so a value means the same thing in
 * the file as in the environment; layering the environment on top is
 * config_load_files' job, not this module's. */
#include "config_yaml.h"

#include "cacherule.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#define PATH_BUF 512 /* key paths in messages: "databases.app.pool_size" */

/* ------------------------------------------------------------------------ */
/* The document tree                                                        */
/* ------------------------------------------------------------------------ */

typedef enum nkind { N_SCALAR, N_SEQ, N_MAP } nkind;

typedef struct node {
    nkind kind;
    int line;           /* 1-based line where the node starts */
    bool plain;         /* plain scalar (unquoted): only these can be null or boolean */
    char *str;          /* scalar text; NUL-free, so a C string */
    size_t len;
    struct node **kids; /* list items, or key, value, key, value, ... */
    size_t n, cap;
} node;

static void node_free(node *n)
{
    if (!n) return;
    for (size_t i = 0; i < n->n; i++) node_free(n->kids[i]);
    free(n->kids);
    free(n->str);
    free(n);
}

static void node_add(node *parent, node *kid)
{
    if (parent->n == parent->cap) {
        parent->cap = parent->cap ? parent->cap * 2 : 8;
        parent->kids = pgs_xrealloc(parent->kids, parent->cap * sizeof(*parent->kids));
    }
    parent->kids[parent->n++] = kid;
}

/* ------------------------------------------------------------------------ */
/* Context and errors                                                       */
/* ------------------------------------------------------------------------ */

typedef struct yctx {
    const char *name;   /* the file, as given: the FILE of FILE:LINE */
    char dir[PATH_MAX]; /* its directory with a trailing '/', for relative paths */
    const char *data;
    size_t len;
    pgs_config *cfg;
    config_yaml_seen seen;
    char *err;
    size_t errlen;
    /* Where keys that rules between keys point at were set (0 = not set). */
    int l_auth_type, l_auth_query, l_auth_dbname;
    int l_tls_mode, l_tls_cert, l_tls_key;
    int l_stls_sslmode, l_stls_cert, l_stls_key;
    int *l_hba_type, *l_hba_method; /* per auth.hba rule */
} yctx;

static int fail(yctx *c, int line, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(yctx *c, int line, const char *path, const char *fmt, ...)
{
    if (!c->err || c->errlen == 0) return -EINVAL;
    char why[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (path && *path) snprintf(c->err, c->errlen, "%s:%d: %s: %s", c->name, line, path, why);
    else snprintf(c->err, c->errlen, "%s:%d: %s", c->name, line, why);
    return -EINVAL;
}

/* A value for a message: at most 60 bytes, control characters as '?', so
 * that a value cannot forge or garble a log line.  Never used on secrets. */
static const char *show(const char *v, char *buf, size_t n)
{
    size_t j = 0, limit = n > 4 ? n - 4 : 0;
    if (limit > 60) limit = 60;
    for (size_t i = 0; v[i] && j + 1 < n; i++) {
        if (j >= limit) {
            if (n - j >= 4) memcpy(buf + j, "...", 3), j += 3;
            break;
        }
        unsigned char ch = (unsigned char)v[i];
        buf[j++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    if (n) buf[j < n ? j : n - 1] = '\0';
    return buf;
}

/* path + "." + key, or path + "[i]"; a path too long for the buffer is
 * cut (it is only ever shown). */
static void path_key(char *out, size_t n, const char *path, const char *key)
{
    char kb[80];
    int w = snprintf(out, n, "%s%s%s", path, *path ? "." : "", show(key, kb, sizeof(kb)));
    if (w < 0) out[0] = '\0';
}

static void path_index(char *out, size_t n, const char *path, size_t i)
{
    int w = snprintf(out, n, "%s[%zu]", path, i);
    if (w < 0) out[0] = '\0';
}

static const char *type_name(const node *n)
{
    switch (n->kind) {
    case N_MAP: return "a mapping";
    case N_SEQ: return "a list";
    case N_SCALAR: break;
    }
    return "text";
}

/* YAML 1.2 core schema: which plain scalars are not text. */
static bool is_null(const node *n)
{
    if (n->kind != N_SCALAR || !n->plain) return false;
    return n->len == 0 || strcmp(n->str, "~") == 0 || strcmp(n->str, "null") == 0 ||
           strcmp(n->str, "Null") == 0 || strcmp(n->str, "NULL") == 0;
}

static bool is_bool(const node *n)
{
    if (n->kind != N_SCALAR || !n->plain) return false;
    static const char *const b[] = {"true", "True", "TRUE", "false", "False", "FALSE"};
    for (size_t i = 0; i < PGS_ARRAY_LEN(b); i++)
        if (strcmp(n->str, b[i]) == 0) return true;
    return false;
}

/* ------------------------------------------------------------------------ */
/* Building the tree from libyaml events                                    */
/* ------------------------------------------------------------------------ */

/* The key path of the node on top of the stack: stack[i + 1] is always the
 * last child of stack[i] (a collection is attached before it is pushed). */
static void stack_path(node **stack, int depth, char *buf, size_t n)
{
    buf[0] = '\0';
    char tmp[PATH_BUF];
    for (int i = 0; i + 1 < depth; i++) {
        node *p = stack[i];
        snprintf(tmp, sizeof(tmp), "%s", buf);
        if (p->kind == N_MAP) path_key(buf, n, tmp, p->kids[p->n - 2]->str);
        else path_index(buf, n, tmp, p->n - 1);
    }
}

/* The key path where a node arriving now would go. */
static void incoming_path(node **stack, int depth, char *buf, size_t n)
{
    stack_path(stack, depth, buf, n);
    if (depth == 0) return;
    node *t = stack[depth - 1];
    char tmp[PATH_BUF];
    snprintf(tmp, sizeof(tmp), "%s", buf);
    if (t->kind == N_SEQ) path_index(buf, n, tmp, t->n);
    else if (t->n % 2 == 1) path_key(buf, n, tmp, t->kids[t->n - 1]->str);
}

static int count_lines(const char *data, size_t upto)
{
    int line = 1;
    for (size_t i = 0; i < upto; i++)
        if (data[i] == '\n') line++;
    return line;
}

static int syntax_error(yctx *c, const yaml_parser_t *p)
{
    if (p->error == YAML_MEMORY_ERROR) return fail(c, 1, NULL, "out of memory reading the file");
    if (p->error == YAML_READER_ERROR) {
        /* Bad encoding: libyaml gives a byte offset, not a mark. */
        size_t off = p->problem_offset < c->len ? p->problem_offset : c->len;
        return fail(c, count_lines(c->data, off), NULL,
                    "invalid YAML: %s (the file must be UTF-8 text)",
                    p->problem ? p->problem : "cannot decode the text");
    }
    int line = (int)p->problem_mark.line + 1;
    const char *problem = p->problem ? p->problem : "syntax error";
    if (p->context) {
        int cl = (int)p->context_mark.line + 1;
        if (cl != line)
            return fail(c, line, NULL, "invalid YAML: %s %s started at line %d", problem,
                        p->context, cl);
        return fail(c, line, NULL, "invalid YAML: %s %s", problem, p->context);
    }
    return fail(c, line, NULL, "invalid YAML: %s", problem);
}

static int check_anchor_tag(yctx *c, node **stack, int depth, int line,
                            const yaml_char_t *anchor, const yaml_char_t *tag)
{
    char path[PATH_BUF], sb[80];
    if (!anchor && !tag) return 0;
    incoming_path(stack, depth, path, sizeof(path));
    if (anchor)
        return fail(c, line, path,
                    "anchors (&%s) are not supported: write each value out (anchors and "
                    "aliases are refused rather than expanded)",
                    show((const char *)anchor, sb, sizeof(sb)));
    /* libyaml hands over the resolved tag; show it the way it was written. */
    static const char core[] = "tag:yaml.org,2002:";
    const char *t = (const char *)tag;
    bool is_core = strncmp(t, core, sizeof(core) - 1) == 0;
    return fail(c, line, path, "tags (%s%s) are not supported; quote a value to make it text",
                is_core ? "!!" : "", show(is_core ? t + sizeof(core) - 1 : t, sb, sizeof(sb)));
}

static int cmp_keys(const void *a, const void *b)
{
    const node *x = *(node *const *)a, *y = *(node *const *)b;
    int r = strcmp(x->str, y->str);
    return r ? r : (x->line > y->line) - (x->line < y->line);
}

/* Duplicate keys make a YAML document invalid, yet libyaml lets them
 * through; the later one would silently win.  Sorting keeps a 10000-key
 * mapping cheap to check. */
static int check_duplicates(yctx *c, node **stack, int depth)
{
    node *m = stack[depth - 1];
    size_t nk = m->n / 2;
    if (nk < 2) return 0;
    node **keys = pgs_xmalloc(nk * sizeof(*keys));
    for (size_t i = 0; i < nk; i++) keys[i] = m->kids[2 * i];
    qsort(keys, nk, sizeof(*keys), cmp_keys);
    int rc = 0;
    for (size_t i = 1; i < nk; i++) {
        if (strcmp(keys[i - 1]->str, keys[i]->str) == 0) {
            char base[PATH_BUF], path[PATH_BUF];
            stack_path(stack, depth, base, sizeof(base));
            path_key(path, sizeof(path), base, keys[i]->str);
            rc = fail(c, keys[i]->line, path, "duplicate key (first at line %d)",
                      keys[i - 1]->line);
            break;
        }
    }
    free(keys);
    return rc;
}

static node *new_node(nkind kind, int line)
{
    node *n = pgs_xcalloc(1, sizeof(*n));
    n->kind = kind;
    n->line = line;
    return n;
}

/* Attaches nn where the stack says and pushes it when it is a collection. */
static int attach(yctx *c, node **stack, int *depth, node **root, node *nn)
{
    char path[PATH_BUF];
    int line = nn->line;
    if (*depth == 0) {
        *root = nn;
    } else {
        node *t = stack[*depth - 1];
        if (t->kind == N_MAP && t->n % 2 == 0 && nn->kind != N_SCALAR) {
            node_free(nn);
            stack_path(stack, *depth, path, sizeof(path));
            return fail(c, line, path, "a key must be plain text, not a list or mapping");
        }
        size_t limit = t->kind == N_MAP ? 2u * CONFIG_YAML_MAX_ITEMS : CONFIG_YAML_MAX_ITEMS;
        if (t->n >= limit) {
            node_free(nn);
            stack_path(stack, *depth, path, sizeof(path));
            return fail(c, line, path, "more than %d %s", CONFIG_YAML_MAX_ITEMS,
                        t->kind == N_MAP ? "entries in one mapping" : "items in one list");
        }
        incoming_path(stack, *depth, path, sizeof(path));
        node_add(t, nn);
    }
    if (nn->kind != N_SCALAR) {
        if (*depth >= CONFIG_YAML_MAX_DEPTH) {
            /* nn is in the tree (a depth limit is never hit at the root),
             * so it is freed with it. */
            return fail(c, line, path, "nested deeper than %d levels", CONFIG_YAML_MAX_DEPTH);
        }
        stack[(*depth)++] = nn;
    }
    return 0;
}

static int build_tree(yctx *c, node **out)
{
    *out = NULL;
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) return fail(c, 1, NULL, "out of memory reading the file");
    yaml_parser_set_input_string(&p, (const unsigned char *)c->data, c->len);

    node *stack[CONFIG_YAML_MAX_DEPTH];
    int depth = 0, docs = 0, rc = 0;
    node *root = NULL;
    bool done = false;
    while (!done && rc == 0) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            rc = syntax_error(c, &p);
            break;
        }
        int line = (int)ev.start_mark.line + 1;
        node *nn = NULL;
        char path[PATH_BUF], sb[80];
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1)
                rc = fail(c, line, NULL,
                          "a second YAML document ('---') in the file; put every setting in "
                          "one document");
            break;
        case YAML_ALIAS_EVENT:
            incoming_path(stack, depth, path, sizeof(path));
            rc = fail(c, line, path,
                      "aliases (*%s) are not supported: write the value out (anchors and "
                      "aliases are refused rather than expanded)",
                      show((const char *)ev.data.alias.anchor, sb, sizeof(sb)));
            break;
        case YAML_SCALAR_EVENT:
            rc = check_anchor_tag(c, stack, depth, line, ev.data.scalar.anchor,
                                  ev.data.scalar.tag);
            if (rc < 0) break;
            if (memchr(ev.data.scalar.value, '\0', ev.data.scalar.length)) {
                incoming_path(stack, depth, path, sizeof(path));
                rc = fail(c, line, path, "contains a NUL byte");
                break;
            }
            nn = new_node(N_SCALAR, line);
            nn->str = pgs_xstrndup((const char *)ev.data.scalar.value, ev.data.scalar.length);
            nn->len = ev.data.scalar.length;
            nn->plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
            rc = attach(c, stack, &depth, &root, nn);
            break;
        case YAML_SEQUENCE_START_EVENT:
            rc = check_anchor_tag(c, stack, depth, line, ev.data.sequence_start.anchor,
                                  ev.data.sequence_start.tag);
            if (rc == 0) rc = attach(c, stack, &depth, &root, new_node(N_SEQ, line));
            break;
        case YAML_MAPPING_START_EVENT:
            rc = check_anchor_tag(c, stack, depth, line, ev.data.mapping_start.anchor,
                                  ev.data.mapping_start.tag);
            if (rc == 0) rc = attach(c, stack, &depth, &root, new_node(N_MAP, line));
            break;
        case YAML_MAPPING_END_EVENT:
            rc = check_duplicates(c, stack, depth);
            depth--;
            break;
        case YAML_SEQUENCE_END_EVENT:
            depth--;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    if (rc < 0) {
        node_free(root);
        return rc;
    }
    *out = root;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Typed values                                                             */
/* ------------------------------------------------------------------------ */

static const char *kind_name(pgs_value_kind k)
{
    switch (k) {
    case PGS_VALUE_INT: return "an integer";
    case PGS_VALUE_DURATION: return "a duration";
    case PGS_VALUE_SIZE: return "a size";
    case PGS_VALUE_BOOL: return "on or off";
    case PGS_VALUE_TEXT:
    case PGS_VALUE_SECRET: break;
    }
    return "text";
}

/* The text of a scalar that should hold a value of the given kind, after
 * the checks the YAML type allows: collections, null and booleans are never
 * a setting's value, and an integer written in quotes is a string. */
static int scalar(yctx *c, const node *n, const char *path, pgs_value_kind kind,
                  const char **out)
{
    char sb[80];
    if (n->kind != N_SCALAR)
        return fail(c, n->line, path, "expected %s, got %s", kind_name(kind), type_name(n));
    if (is_null(n))
        return fail(c, n->line, path, "has no value (expected %s; leave the key out to use "
                                      "the default)",
                    kind_name(kind));
    if (is_bool(n) && kind != PGS_VALUE_BOOL)
        return fail(c, n->line, path, "expected %s, got the boolean %s%s", kind_name(kind),
                    n->str,
                    kind == PGS_VALUE_TEXT || kind == PGS_VALUE_SECRET
                        ? " (quote it if you mean the text)"
                        : "");
    if (kind == PGS_VALUE_INT && !n->plain) {
        return fail(c, n->line, path, "expected an integer, got the quoted string '%s' (write "
                                      "numbers without quotes)",
                    show(n->str, sb, sizeof(sb)));
    }
    *out = n->str;
    return 0;
}

/* Text without control characters (newline and tab allowed when multiline). */
static int text(yctx *c, const node *n, const char *path, bool multiline, const char **out)
{
    if (scalar(c, n, path, PGS_VALUE_TEXT, out) < 0) return -EINVAL;
    for (const char *p = *out; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if ((ch < 0x20 || ch == 0x7f) && !(multiline && (ch == '\n' || ch == '\t' || ch == '\r')))
            return fail(c, n->line, path, "contains a control character");
    }
    if (!**out) return fail(c, n->line, path, "is empty");
    return 0;
}

/* A database or user name: what a client sends in its startup packet. */
static int name_text(yctx *c, const node *n, const char *path, const char **out)
{
    if (text(c, n, path, false, out) < 0) return -EINVAL;
    if (strlen(*out) > PGS_NAME_MAX)
        return fail(c, n->line, path,
                    "'%.20s...' is longer than %d bytes (PostgreSQL's limit for names)", *out,
                    PGS_NAME_MAX);
    return 0;
}

/* One of a fixed set of words; returns the index. */
static int one_of(yctx *c, const node *n, const char *path, const char *const *words,
                  size_t nwords, const char *what, int *out)
{
    const char *v;
    if (text(c, n, path, false, &v) < 0) return -EINVAL;
    for (size_t i = 0; i < nwords; i++) {
        if (strcmp(v, words[i]) == 0) {
            *out = (int)i;
            return 0;
        }
    }
    char list[256] = "", sb[80];
    for (size_t i = 0; i < nwords; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                 i == 0 ? "" : i + 1 == nwords ? " or " : ", ", words[i]);
    return fail(c, n->line, path, "'%s' is not %s (expected %s)", show(v, sb, sizeof(sb)), what,
                list);
}

static int int_value(yctx *c, const node *n, const char *path, long min, long max, int *out)
{
    const char *v;
    char why[256];
    if (scalar(c, n, path, PGS_VALUE_INT, &v) < 0) return -EINVAL;
    if (config_parse_int(v, min, max, out, why, sizeof(why)) < 0)
        return fail(c, n->line, path, "%s", why);
    return 0;
}

/* A file the running pgscale will need: resolved against the config
 * file's directory when relative, and checked now, so a typo stops the
 * start instead of the first TLS handshake. */
/* Replaces a string setting (a later occurrence wins). */
static void set_text(char **field, const char *value)
{
    free(*field);
    *field = pgs_xstrdup(value);
}

static int file_path(yctx *c, const node *n, const char *path, char **out)
{
    const char *v;
    if (text(c, n, path, false, &v) < 0) return -EINVAL;
    char full[PATH_MAX + 1];
    int w = snprintf(full, sizeof(full), "%s%s", v[0] == '/' ? "" : c->dir, v);
    if (w < 0 || (size_t)w >= sizeof(full))
        return fail(c, n->line, path, "the path is too long");
    /* stat before open: opening a device or FIFO can block or act. */
    struct stat st;
    if (stat(full, &st) < 0)
        return fail(c, n->line, path, "%s: %s", full, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return fail(c, n->line, path, "%s: is a directory, not a file", full);
    if (!S_ISREG(st.st_mode)) return fail(c, n->line, path, "%s: is not a regular file", full);
    int fd = open(full, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return fail(c, n->line, path, "%s: cannot read: %s", full, strerror(errno));
    close(fd);
    set_text(out, full);
    return 0;
}

static int want_map(yctx *c, const node *n, const char *path)
{
    if (n->kind == N_MAP) return 0;
    if (is_null(n))
        return fail(c, n->line, path, "has no value (expected a mapping of keys; write {} for "
                                      "none)");
    return fail(c, n->line, path, "expected a mapping of keys, got %s", type_name(n));
}

static int want_seq(yctx *c, const node *n, const char *path)
{
    if (n->kind == N_SEQ) return 0;
    if (is_null(n)) return fail(c, n->line, path, "has no value (expected a list; write [] for none)");
    return fail(c, n->line, path, "expected a list, got %s", type_name(n));
}

/* ------------------------------------------------------------------------ */
/* Unknown keys                                                             */
/* ------------------------------------------------------------------------ */

/* Edit distance, for "did you mean"; keys are short, longer ones are not
 * worth a suggestion. */
static int distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 40 || lb > 40) return 99;
    int row[41];
    for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j];
            int sub = diag + ((a[i - 1] | 0x20) != (b[j - 1] | 0x20));
            int best = PGS_MIN(up + 1, row[j - 1] + 1);
            row[j] = PGS_MIN(best, sub);
            diag = up;
        }
    }
    return row[lb];
}

static int unknown_key(yctx *c, const node *key, const char *path, const char *const *known,
                       size_t nknown, bool list_known)
{
    const char *best = NULL;
    int bd = 3;
    for (size_t i = 0; i < nknown; i++) {
        int d = distance(key->str, known[i]);
        if (d < bd) {
            bd = d;
            best = known[i];
        }
    }
    if (best) return fail(c, key->line, path, "unknown key (did you mean %s?)", best);
    const char *fk = config_key_for_setting(key->str);
    if (fk)
        return fail(c, key->line, path,
                    "unknown key: %s is an environment variable; in the config file write %s",
                    key->str, fk);
    if (!list_known)
        return fail(c, key->line, path,
                    "unknown key (docs/configuration.md lists the keys of the config file)");
    char list[512] = "";
    for (size_t i = 0; i < nknown; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "",
                 known[i]);
    return fail(c, key->line, path, "unknown key (expected one of: %s)", list);
}

static int find_word(const char *const *words, size_t n, const char *w)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(words[i], w) == 0) return (int)i;
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Sections                                                                 */
/* ------------------------------------------------------------------------ */

static int do_setting(yctx *c, const node *v, const char *path, const char *env,
                      pgs_value_kind kind)
{
    const char *s;
    char why[1024];
    if (scalar(c, v, path, kind, &s) < 0) return -EINVAL;
    if (config_apply_setting(c->cfg, env, s, why, sizeof(why)) < 0)
        return fail(c, v->line, path, "%s", why);
    return 0;
}

static int listen_one(yctx *c, const node *n, const char *path, pgs_listen_addr *a)
{
    const char *s;
    char why[512];
    if (text(c, n, path, false, &s) < 0) return -EINVAL;
    memset(a, 0, sizeof(*a));
    snprintf(a->host, sizeof(a->host), "127.0.0.1");
    a->port = 6432;
    if (config_parse_listen_addr(s, a, why, sizeof(why)) < 0)
        return fail(c, n->line, path, "%s", why);
    return 0;
}

static bool same_listen(const pgs_listen_addr *a, const pgs_listen_addr *b)
{
    return a->is_unix == b->is_unix && strcmp(a->host, b->host) == 0 &&
           (a->is_unix || a->port == b->port);
}

/* listen: one address or a list.  A Unix-socket directory takes the port of
 * the first TCP address (6432 without one), as PostgreSQL names its socket
 * after its one port. */
static int do_listen(yctx *c, const node *v, const char *path)
{
    pgs_config *cfg = c->cfg;
    const node *one = v;
    size_t n = 1;
    if (v->kind == N_MAP)
        return fail(c, v->line, path, "expected an address or a list of addresses, got a mapping");
    if (v->kind == N_SEQ) {
        n = v->n;
        if (n == 0) return fail(c, v->line, path, "the list is empty; give at least one address");
        if (n > PGS_MAX_LISTEN)
            return fail(c, v->line, path, "more than %d addresses", PGS_MAX_LISTEN);
    }
    pgs_listen_addr list[PGS_MAX_LISTEN];
    int lines[PGS_MAX_LISTEN];
    int first_tcp = -1;
    for (size_t i = 0; i < n; i++) {
        const node *item = v->kind == N_SEQ ? v->kids[i] : one;
        char ip[PATH_BUF];
        if (v->kind == N_SEQ) path_index(ip, sizeof(ip), path, i);
        else snprintf(ip, sizeof(ip), "%s", path);
        if (listen_one(c, item, ip, &list[i]) < 0) return -EINVAL;
        lines[i] = item->line;
        if (!list[i].is_unix && first_tcp < 0) first_tcp = (int)i;
    }
    int port = first_tcp >= 0 ? list[first_tcp].port : 6432;
    for (size_t i = 0; i < n; i++) {
        if (list[i].is_unix) list[i].port = port;
        for (size_t j = 0; j < i; j++) {
            if (same_listen(&list[i], &list[j])) {
                char ip[PATH_BUF];
                path_index(ip, sizeof(ip), path, i);
                return fail(c, lines[i], ip, "the same address as line %d", lines[j]);
            }
        }
    }
    memcpy(cfg->listen, list, n * sizeof(list[0]));
    cfg->n_listen = (int)n;
    if (first_tcp >= 0) {
        snprintf(cfg->listen_host, sizeof(cfg->listen_host), "%s", list[first_tcp].host);
        cfg->listen_port = list[first_tcp].port;
    }
    return 0;
}

/* One nodes.replicas entry: a URL, or {url: ..., weight: N}. */
static int replica_entry(yctx *c, const node *n, const char *path, pgs_url *u, int *weight)
{
    static const char *const keys[] = {"url", "weight"};
    char why[512], kp[PATH_BUF];
    const char *s;
    *weight = 1;
    if (n->kind != N_MAP) {
        if (scalar(c, n, path, PGS_VALUE_SECRET, &s) < 0) return -EINVAL;
        if (config_parse_url(s, u, why, sizeof(why)) < 0)
            return fail(c, n->line, path, "%s", why);
        return 0;
    }
    const node *url = NULL;
    for (size_t i = 0; i < n->n; i += 2) {
        const node *k = n->kids[i], *val = n->kids[i + 1];
        path_key(kp, sizeof(kp), path, k->str);
        switch (find_word(keys, PGS_ARRAY_LEN(keys), k->str)) {
        case 0: url = val; break;
        case 1:
            if (int_value(c, val, kp, 1, PGS_MAX_REPLICA_WEIGHT, weight) < 0) return -EINVAL;
            break;
        default: return unknown_key(c, k, kp, keys, PGS_ARRAY_LEN(keys), true);
        }
    }
    if (!url) return fail(c, n->line, path, "has no url (write {url: postgresql://..., weight: N})");
    path_key(kp, sizeof(kp), path, "url");
    if (scalar(c, url, kp, PGS_VALUE_SECRET, &s) < 0) return -EINVAL;
    if (config_parse_url(s, u, why, sizeof(why)) < 0) return fail(c, url->line, kp, "%s", why);
    return 0;
}

static int route_value(yctx *c, const node *n, const char *path, int *out)
{
    const char *s;
    char why[256];
    if (text(c, n, path, false, &s) < 0) return -EINVAL;
    if (config_parse_route(s, out, why, sizeof(why)) < 0) return fail(c, n->line, path, "%s", why);
    return 0;
}

static int do_nodes(yctx *c, const node *v, const char *path)
{
    static const char *const keys[] = {"primary", "replicas"};
    if (want_map(c, v, path) < 0) return -EINVAL;
    pgs_config *cfg = c->cfg;
    char why[512], kp[PATH_BUF], ip[PATH_BUF];
    for (size_t i = 0; i < v->n; i += 2) {
        const node *k = v->kids[i], *val = v->kids[i + 1];
        path_key(kp, sizeof(kp), path, k->str);
        const char *s;
        switch (find_word(keys, PGS_ARRAY_LEN(keys), k->str)) {
        case 0: {
            if (scalar(c, val, kp, PGS_VALUE_SECRET, &s) < 0) return -EINVAL;
            pgs_url u;
            if (config_parse_url(s, &u, why, sizeof(why)) < 0)
                return fail(c, val->line, kp, "%s", why);
            config_url_free(&cfg->primary);
            cfg->primary = u;
            c->seen.primary = true;
            break;
        }
        case 1: {
            if (want_seq(c, val, kp) < 0) return -EINVAL;
            pgs_url *list = val->n ? pgs_xcalloc(val->n, sizeof(*list)) : NULL;
            int *weights = pgs_xcalloc(val->n ? val->n : 1, sizeof(int));
            for (size_t j = 0; j < val->n; j++) {
                path_index(ip, sizeof(ip), kp, j);
                int rc = replica_entry(c, val->kids[j], ip, &list[j], &weights[j]);
                if (rc < 0) {
                    for (size_t x = 0; x < j; x++) config_url_free(&list[x]);
                    free(list);
                    free(weights);
                    return -EINVAL;
                }
            }
            for (int j = 0; j < cfg->n_replicas; j++) config_url_free(&cfg->replicas[j]);
            free(cfg->replicas);
            free(cfg->replica_weights);
            cfg->replicas = list;
            cfg->replica_weights = weights;
            cfg->n_replicas = (int)val->n;
            break;
        }
        default:
            return unknown_key(c, k, kp, keys, PGS_ARRAY_LEN(keys), true);
        }
    }
    return 0;
}

static int pool_mode_value(yctx *c, const node *n, const char *path, int *out)
{
    const char *s;
    char why[256];
    pgs_pool_mode m;
    if (text(c, n, path, false, &s) < 0) return -EINVAL;
    if (config_parse_pool_mode(s, &m, why, sizeof(why)) < 0)
        return fail(c, n->line, path, "%s", why);
    *out = (int)m;
    return 0;
}

/* on/off as an int (0/1) for the overrides, where -1 means "not set". */
static int bool_value(yctx *c, const node *n, const char *path, int *out)
{
    const char *v;
    char why[256];
    bool b;
    if (scalar(c, n, path, PGS_VALUE_BOOL, &v) < 0) return -EINVAL;
    if (config_parse_bool(v, &b, why, sizeof(why)) < 0) return fail(c, n->line, path, "%s", why);
    *out = b ? 1 : 0;
    return 0;
}

static int overflow_value(yctx *c, const node *n, const char *path, int *out)
{
    const char *s;
    char why[256];
    if (scalar(c, n, path, PGS_VALUE_INT, &s) < 0) return -EINVAL;
    if (config_parse_overflow(s, out, why, sizeof(why)) < 0)
        return fail(c, n->line, path, "%s", why);
    return 0;
}

/* A databases: or users: entry's name: what a client sends at login. */
static int check_entry_name(yctx *c, const node *k, const char *path, bool is_database)
{
    const char *s;
    if (name_text(c, k, path, &s) < 0) return -EINVAL;
    if (is_database && strcmp(s, "pgscale") == 0)
        return fail(c, k->line, path, "the database name 'pgscale' is the admin console's");
    return 0;
}

static int do_databases(yctx *c, const node *v, const char *path)
{
    static const char *const keys[] = {"pool_size",          "max_overflow", "pool_mode",
                                       "pool_timeout",       "max_db_connections", "dbname",
                                       "pinning",            "max_pinned",   "route",
                                       "cache"};
    if (want_map(c, v, path) < 0) return -EINVAL;
    pgs_config *cfg = c->cfg;
    size_t n = v->n / 2;
    cfg->databases = pgs_xcalloc(n ? n : 1, sizeof(*cfg->databases));
    char ep[PATH_BUF], kp[PATH_BUF], why[512];
    for (size_t i = 0; i < n; i++) {
        const node *name = v->kids[2 * i], *body = v->kids[2 * i + 1];
        path_key(ep, sizeof(ep), path, name->str);
        if (check_entry_name(c, name, ep, true) < 0) return -EINVAL;
        pgs_db_config *d = &cfg->databases[cfg->n_databases++];
        d->name = pgs_xstrdup(name->str);
        d->pool_size = d->max_overflow = d->pool_mode = d->pinning = d->max_pinned = -1;
        d->route = d->cache = -1;
        d->line = name->line;
        if (want_map(c, body, ep) < 0) return -EINVAL;
        for (size_t j = 0; j < body->n; j += 2) {
            const node *k = body->kids[j], *val = body->kids[j + 1];
            path_key(kp, sizeof(kp), ep, k->str);
            const char *s;
            int rc;
            switch (find_word(keys, PGS_ARRAY_LEN(keys), k->str)) {
            case 0: rc = int_value(c, val, kp, 1, 10000, &d->pool_size); break;
            case 1: rc = overflow_value(c, val, kp, &d->max_overflow); break;
            case 2: rc = pool_mode_value(c, val, kp, &d->pool_mode); break;
            case 3:
                rc = scalar(c, val, kp, PGS_VALUE_DURATION, &s);
                if (rc == 0 && config_parse_duration(s, false, &d->pool_timeout_ms, why,
                                                     sizeof(why)) < 0)
                    rc = fail(c, val->line, kp, "%s", why);
                break;
            case 4: rc = int_value(c, val, kp, 0, 1000000, &d->max_db_connections); break;
            case 5:
                rc = name_text(c, val, kp, &s);
                if (rc == 0) set_text(&d->dbname, s);
                break;
            case 6: rc = bool_value(c, val, kp, &d->pinning); break;
            case 7: rc = int_value(c, val, kp, 0, 10000, &d->max_pinned); break;
            case 8: rc = route_value(c, val, kp, &d->route); break;
            case 9: rc = bool_value(c, val, kp, &d->cache); break;
            default: rc = unknown_key(c, k, kp, keys, PGS_ARRAY_LEN(keys), true); break;
            }
            if (rc < 0) return rc;
        }
    }
    return 0;
}

static int do_users(yctx *c, const node *v, const char *path)
{
    static const char *const keys[] = {"pool_size", "max_overflow", "pool_mode",
                                       "max_user_connections", "pinning", "max_pinned",
                                       "route", "cache"};
    if (want_map(c, v, path) < 0) return -EINVAL;
    pgs_config *cfg = c->cfg;
    size_t n = v->n / 2;
    cfg->users = pgs_xcalloc(n ? n : 1, sizeof(*cfg->users));
    char ep[PATH_BUF], kp[PATH_BUF];
    for (size_t i = 0; i < n; i++) {
        const node *name = v->kids[2 * i], *body = v->kids[2 * i + 1];
        path_key(ep, sizeof(ep), path, name->str);
        if (check_entry_name(c, name, ep, false) < 0) return -EINVAL;
        pgs_user_config *u = &cfg->users[cfg->n_users++];
        u->name = pgs_xstrdup(name->str);
        u->pool_size = u->max_overflow = u->pool_mode = u->pinning = u->max_pinned = -1;
        u->route = u->cache = -1;
        u->line = name->line;
        if (want_map(c, body, ep) < 0) return -EINVAL;
        for (size_t j = 0; j < body->n; j += 2) {
            const node *k = body->kids[j], *val = body->kids[j + 1];
            path_key(kp, sizeof(kp), ep, k->str);
            int rc;
            switch (find_word(keys, PGS_ARRAY_LEN(keys), k->str)) {
            case 0: rc = int_value(c, val, kp, 1, 10000, &u->pool_size); break;
            case 1: rc = overflow_value(c, val, kp, &u->max_overflow); break;
            case 2: rc = pool_mode_value(c, val, kp, &u->pool_mode); break;
            case 3: rc = int_value(c, val, kp, 0, 1000000, &u->max_user_connections); break;
            case 4: rc = bool_value(c, val, kp, &u->pinning); break;
            case 5: rc = int_value(c, val, kp, 0, 10000, &u->max_pinned); break;
            case 6: rc = route_value(c, val, kp, &u->route); break;
            case 7: rc = bool_value(c, val, kp, &u->cache); break;
            default: rc = unknown_key(c, k, kp, keys, PGS_ARRAY_LEN(keys), true); break;
            }
            if (rc < 0) return rc;
        }
    }
    return 0;
}

static const char *const auth_types[] = {"trust", "md5", "scram-sha-256"};
static const char *const hba_methods[] = {"trust", "md5", "scram-sha-256", "reject"};
static const char *const hba_types[] = {"host", "hostssl", "hostnossl", "local"};

/* "all", an address (a single host) or address/prefix, with no host bits
 * set beyond the prefix (10.0.0.1/8 is almost certainly a typo). */
static int hba_address(yctx *c, const node *n, const char *path, pgs_hba_rule *r)
{
    const char *s;
    char sb[80];
    if (text(c, n, path, false, &s) < 0) return -EINVAL;
    if (strcmp(s, "all") == 0) {
        r->family = AF_UNSPEC;
        r->prefix = 0;
        return 0;
    }
    char ab[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(s, '/');
    size_t an = slash ? (size_t)(slash - s) : strlen(s);
    if (an == 0 || an >= sizeof(ab)) goto bad;
    memcpy(ab, s, an);
    ab[an] = '\0';
    int maxp;
    if (inet_pton(AF_INET, ab, r->addr) == 1) r->family = AF_INET, maxp = 32;
    else if (inet_pton(AF_INET6, ab, r->addr) == 1) r->family = AF_INET6, maxp = 128;
    else goto bad;
    r->prefix = maxp;
    if (slash) {
        const char *p = slash + 1;
        int v = 0, nd = 0;
        for (; *p >= '0' && *p <= '9' && nd < 4; p++, nd++) v = v * 10 + (*p - '0');
        if (nd == 0 || *p || v > maxp)
            return fail(c, n->line, path, "'%s' has a bad prefix length (expected /0../%d)",
                        show(s, sb, sizeof(sb)), maxp);
        r->prefix = v;
    }
    for (int bit = r->prefix; bit < maxp; bit++) {
        if (r->addr[bit / 8] & (0x80 >> (bit % 8))) {
            return fail(c, n->line, path,
                        "'%s' has bits set beyond the /%d prefix (write the network address, "
                        "e.g. the first address of the range)",
                        show(s, sb, sizeof(sb)), r->prefix);
        }
    }
    return 0;
bad:
    return fail(c, n->line, path,
                "'%s' is not an address (expected CIDR such as 10.0.0.0/8 or fd00::/8, a "
                "single address, or all)",
                show(s, sb, sizeof(sb)));
}

static int hba_rule(yctx *c, const node *v, const char *path, pgs_hba_rule *r, int *type_line,
                    int *method_line)
{
    static const char *const keys[] = {"type", "database", "user", "address", "method"};
    if (want_map(c, v, path) < 0) return -EINVAL;
    r->line = v->line;
    const node *type_n = NULL, *method_n = NULL, *addr_n = NULL;
    char kp[PATH_BUF];
    for (size_t j = 0; j < v->n; j += 2) {
        const node *k = v->kids[j], *val = v->kids[j + 1];
        path_key(kp, sizeof(kp), path, k->str);
        const char *s;
        int rc = 0, w;
        switch (find_word(keys, PGS_ARRAY_LEN(keys), k->str)) {
        case 0:
            rc = one_of(c, val, kp, hba_types, PGS_ARRAY_LEN(hba_types), "a rule type", &w);
            r->type = (pgs_hba_type)w;
            type_n = val;
            *type_line = val->line;
            break;
        case 1:
        case 2: {
            char **f = k->str[0] == 'd' ? &r->database : &r->user;
            rc = name_text(c, val, kp, &s);
            free(*f);
            *f = rc == 0 && strcmp(s, "all") != 0 ? pgs_xstrdup(s) : NULL;
            break;
        }
        case 3: addr_n = val; break; /* parsed once the type is known */
        case 4:
            rc = one_of(c, val, kp, hba_methods, PGS_ARRAY_LEN(hba_methods), "a method", &w);
            r->method = (pgs_auth_method)w;
            method_n = val;
            *method_line = val->line;
            break;
        default: rc = unknown_key(c, k, kp, keys, PGS_ARRAY_LEN(keys), true); break;
        }
        if (rc < 0) return rc;
    }
    if (!type_n)
        return fail(c, v->line, path, "the rule has no type (host, hostssl, hostnossl or local)");
    if (!method_n)
        return fail(c, v->line, path,
                    "the rule has no method (trust, md5, scram-sha-256 or reject)");
    path_key(kp, sizeof(kp), path, "address");
    if (r->type == PGS_HBA_LOCAL) {
        if (addr_n)
            return fail(c, addr_n->line, kp, "local rules (Unix sockets) take no address");
        r->family = AF_UNSPEC;
    } else {
        if (!addr_n)
            return fail(c, v->line, path,
                        "%s rules need an address (CIDR such as 10.0.0.0/8, or all)",
                        hba_types[r->type]);
        if (hba_address(c, addr_n, kp, r) < 0) return -EINVAL;
    }
    return 0;
}

static int do_auth(yctx *c, const node *v, const char *path)
{
    static const char *const keys[] = {"type", "file", "query", "user", "hba", "dbname",
                                       "query_max_per_address", "query_negative_ttl"};
    if (want_map(c, v, path) < 0) return -EINVAL;
    pgs_auth_config *a = &c->cfg->auth;
    char kp[PATH_BUF], ip[PATH_BUF];
    for (size_t i = 0; i < v->n; i += 2) {
        const node *k = v->kids[i], *val = v->kids[i + 1];
        path_key(kp, sizeof(kp), path, k->str);
        const char *s;
        int rc = 0, w;
        switch (find_word(keys, PGS_ARRAY_LEN(keys), k->str)) {
        case 0:
            rc = one_of(c, val, kp, auth_types, PGS_ARRAY_LEN(auth_types), "an auth type", &w);
            a->type = (pgs_auth_method)w;
            a->type_set = true;
            c->l_auth_type = val->line;
            break;
        case 1: rc = file_path(c, val, kp, &a->file); break;
        case 2:
            rc = text(c, val, kp, true, &s);
            if (rc == 0 && !strstr(s, "$1"))
                rc = fail(c, val->line, kp, "the query must take the user name as $1");
            if (rc == 0) {
                set_text(&a->query, s);
                c->l_auth_query = val->line;
            }
            break;
        case 3:
            rc = name_text(c, val, kp, &s);
            if (rc == 0) set_text(&a->user, s);
            break;
        case 4:
            rc = want_seq(c, val, kp);
            if (rc < 0) break;
            a->hba = val->n ? pgs_xcalloc(val->n, sizeof(*a->hba)) : NULL;
            c->l_hba_type = pgs_xcalloc(val->n + 1, sizeof(int));
            c->l_hba_method = pgs_xcalloc(val->n + 1, sizeof(int));
            for (size_t j = 0; j < val->n && rc == 0; j++) {
                path_index(ip, sizeof(ip), kp, j);
                a->n_hba++;
                rc = hba_rule(c, val->kids[j], ip, &a->hba[j], &c->l_hba_type[j],
                              &c->l_hba_method[j]);
            }
            break;
        case 5:
            rc = name_text(c, val, kp, &s);
            /* the admin console's name: a database of that name on the
             * server is anyone's with CREATEDB to create, never a place to
             * read secrets from */
            if (rc == 0 && strcmp(s, "pgscale") == 0)
                rc = fail(c, val->line, kp,
                          "'pgscale' is the admin console's name; name a database that only "
                          "a superuser owns (default: postgres)");
            if (rc == 0) {
                set_text(&a->dbname, s);
                c->l_auth_dbname = val->line;
            }
            break;
        case 6: rc = int_value(c, val, kp, 0, 1000000, &a->query_max_per_address); break;
        case 7: {
            char why[256];
            rc = scalar(c, val, kp, PGS_VALUE_DURATION, &s);
            if (rc == 0 &&
                config_parse_duration(s, true, &a->query_negative_ttl_ms, why, sizeof(why)) < 0)
                rc = fail(c, val->line, kp, "%s", why);
            break;
        }
        default: rc = unknown_key(c, k, kp, keys, PGS_ARRAY_LEN(keys), true); break;
        }
        if (rc < 0) return rc;
    }
    return 0;
}

static const char *const tls_modes[] = {"disable", "allow", "require", "verify-ca",
                                        "verify-full"};

static int do_tls(yctx *c, const node *v, const char *path)
{
    static const char *const keys[] = {"cert", "key", "ca", "mode", "min_protocol", "ciphers"};
    static const char *const protos[] = {"TLSv1.2", "TLSv1.3"};
    if (want_map(c, v, path) < 0) return -EINVAL;
    pgs_tls_config *t = &c->cfg->tls;
    char kp[PATH_BUF];
    for (size_t i = 0; i < v->n; i += 2) {
        const node *k = v->kids[i], *val = v->kids[i + 1];
        path_key(kp, sizeof(kp), path, k->str);
        const char *s;
        int rc = 0, w;
        switch (find_word(keys, PGS_ARRAY_LEN(keys), k->str)) {
        case 0:
            rc = file_path(c, val, kp, &t->cert);
            c->l_tls_cert = val->line;
            break;
        case 1:
            rc = file_path(c, val, kp, &t->key);
            c->l_tls_key = val->line;
            break;
        case 2: rc = file_path(c, val, kp, &t->ca); break;
        case 3:
            rc = one_of(c, val, kp, tls_modes, PGS_ARRAY_LEN(tls_modes), "a TLS mode", &w);
            t->mode = (pgs_tls_mode)w;
            c->l_tls_mode = val->line;
            break;
        case 4:
            rc = one_of(c, val, kp, protos, PGS_ARRAY_LEN(protos), "a TLS version", &w);
            t->min_protocol = w == 0 ? 0x0303 : 0x0304;
            break;
        case 5:
            rc = text(c, val, kp, false, &s);
            if (rc == 0) set_text(&t->ciphers, s);
            break;
        default: rc = unknown_key(c, k, kp, keys, PGS_ARRAY_LEN(keys), true); break;
        }
        if (rc < 0) return rc;
    }
    return 0;
}

static int do_server_tls(yctx *c, const node *v, const char *path)
{
    static const char *const keys[] = {"sslmode", "ca", "cert", "key", "channel_binding"};
    if (want_map(c, v, path) < 0) return -EINVAL;
    pgs_server_tls_config *t = &c->cfg->server_tls;
    char kp[PATH_BUF], why[256];
    for (size_t i = 0; i < v->n; i += 2) {
        const node *k = v->kids[i], *val = v->kids[i + 1];
        path_key(kp, sizeof(kp), path, k->str);
        const char *s;
        int rc = 0;
        switch (find_word(keys, PGS_ARRAY_LEN(keys), k->str)) {
        case 0:
            rc = text(c, val, kp, false, &s);
            if (rc == 0 && config_parse_sslmode(s, &t->sslmode, why, sizeof(why)) < 0)
                rc = fail(c, val->line, kp, "%s", why);
            c->seen.sslmode = true;
            c->l_stls_sslmode = val->line;
            break;
        case 1: rc = file_path(c, val, kp, &t->ca); break;
        case 2:
            rc = file_path(c, val, kp, &t->cert);
            c->l_stls_cert = val->line;
            break;
        case 3:
            rc = file_path(c, val, kp, &t->key);
            c->l_stls_key = val->line;
            break;
        case 4:
            rc = text(c, val, kp, false, &s);
            if (rc == 0 &&
                config_parse_channel_binding(s, &t->channel_binding, why, sizeof(why)) < 0)
                rc = fail(c, val->line, kp, "%s", why);
            c->seen.channel_binding = true;
            break;
        default: rc = unknown_key(c, k, kp, keys, PGS_ARRAY_LEN(keys), true); break;
        }
        if (rc < 0) return rc;
    }
    return 0;
}

static int do_names(yctx *c, const node *v, const char *path, char ***out, int *n_out)
{
    if (want_seq(c, v, path) < 0) return -EINVAL;
    char ip[PATH_BUF];
    *out = v->n ? pgs_xcalloc(v->n, sizeof(**out)) : NULL;
    for (size_t i = 0; i < v->n; i++) {
        const char *s;
        path_index(ip, sizeof(ip), path, i);
        if (name_text(c, v->kids[i], ip, &s) < 0) return -EINVAL;
        (*out)[(*n_out)++] = pgs_xstrdup(s);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* cache:                                                                   */
/* ------------------------------------------------------------------------ */

/* A table name in a rule: "name" or "schema.name", as the classifier
 * reports names (docs/cache.md, "Rules"). */
static int rule_table(yctx *c, const node *n, const char *path, const char **out)
{
    if (text(c, n, path, false, out) < 0) return -EINVAL;
    const char *v = *out, *dot = strchr(v, '.');
    char sb[80];
    if (dot && strchr(dot + 1, '.'))
        return fail(c, n->line, path, "'%s' has more than one '.' (expected name or schema.name)",
                    show(v, sb, sizeof(sb)));
    size_t a = dot ? (size_t)(dot - v) : strlen(v), b = dot ? strlen(dot + 1) : 1;
    if (a == 0 || b == 0)
        return fail(c, n->line, path, "'%s' is not a table name (expected name or schema.name)",
                    show(v, sb, sizeof(sb)));
    if (a > PGS_NAME_MAX || (dot && b > PGS_NAME_MAX))
        return fail(c, n->line, path, "'%s' is longer than %d bytes (PostgreSQL's limit for names)",
                    show(v, sb, sizeof(sb)), PGS_NAME_MAX);
    return 0;
}

/* "0123456789abcdef": the 16 hex digits pg_query_fingerprint prints. */
static int rule_fingerprint(yctx *c, const node *n, const char *path, uint64_t *out)
{
    const char *v;
    char sb[80];
    if (text(c, n, path, false, &v) < 0) return -EINVAL;
    uint64_t x = 0;
    size_t i = 0;
    for (; v[i] && i < 17; i++) {
        char ch = v[i];
        int d = ch >= '0' && ch <= '9'   ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                         : -1;
        if (d < 0) break;
        x = x << 4 | (uint64_t)d;
    }
    if (i != 16 || v[i])
        return fail(c, n->line, path,
                    "'%s' is not a fingerprint (expected the 16 hex digits of "
                    "pg_query_fingerprint, e.g. \"5e0b9c1d2f3a4b6c\"; or write query: with the "
                    "statement)",
                    show(v, sb, sizeof(sb)));
    if (x == 0) return fail(c, n->line, path, "the fingerprint 0 matches no statement");
    *out = x;
    return 0;
}

static int cache_rule(yctx *c, const node *v, const char *path, pgs_cache_rule *r)
{
    static const char *const keys[] = {"tables", "fingerprint", "query", "ttl", "database",
                                       "user"};
    if (want_map(c, v, path) < 0) return -EINVAL;
    r->line = v->line;
    char kp[PATH_BUF], ip[PATH_BUF], why[512];
    int chosen = -1; /* which of tables, fingerprint, query */
    int chosen_line = 0;
    for (size_t j = 0; j < v->n; j += 2) {
        const node *k = v->kids[j], *val = v->kids[j + 1];
        path_key(kp, sizeof(kp), path, k->str);
        int w = find_word(keys, PGS_ARRAY_LEN(keys), k->str);
        if (w >= 0 && w <= 2) {
            if (chosen >= 0)
                return fail(c, k->line, kp,
                            "a rule matches by one of tables, fingerprint or query; this one "
                            "already has %s (line %d): split it into two rules",
                            keys[chosen], chosen_line);
            chosen = w;
            chosen_line = k->line;
        }
        const char *s;
        int rc = 0;
        switch (w) {
        case 0:
            r->kind = PGS_CACHE_RULE_TABLES;
            if (want_seq(c, val, kp) < 0) return -EINVAL;
            if (val->n == 0)
                return fail(c, val->line, kp, "is empty (list the tables the statements read)");
            if (val->n > PGS_CACHE_RULE_TABLES_MAX)
                return fail(c, val->line, kp, "has %zu tables (at most %d in one rule)", val->n,
                            PGS_CACHE_RULE_TABLES_MAX);
            r->tables = pgs_xcalloc(val->n, sizeof(*r->tables));
            for (size_t t = 0; t < val->n; t++) {
                path_index(ip, sizeof(ip), kp, t);
                if (rule_table(c, val->kids[t], ip, &s) < 0) return -EINVAL;
                r->tables[r->n_tables++] = pgs_xstrdup(s);
            }
            break;
        case 1:
            r->kind = PGS_CACHE_RULE_FINGERPRINT;
            rc = rule_fingerprint(c, val, kp, &r->fingerprint);
            break;
        case 2:
            r->kind = PGS_CACHE_RULE_FINGERPRINT;
            rc = text(c, val, kp, true, &s);
            if (rc == 0 && cacherule_fingerprint(s, &r->fingerprint, why, sizeof(why)) < 0)
                rc = fail(c, val->line, kp, "%s", why);
            if (rc == 0) set_text(&r->query, s);
            break;
        case 3:
            rc = scalar(c, val, kp, PGS_VALUE_DURATION, &s);
            if (rc == 0 && config_parse_duration(s, false, &r->ttl_ms, why, sizeof(why)) < 0)
                rc = fail(c, val->line, kp, "%s", why);
            break;
        case 4:
            rc = name_text(c, val, kp, &s);
            if (rc == 0) set_text(&r->database, s);
            break;
        case 5:
            rc = name_text(c, val, kp, &s);
            if (rc == 0) set_text(&r->user, s);
            break;
        default: rc = unknown_key(c, k, kp, keys, PGS_ARRAY_LEN(keys), true); break;
        }
        if (rc < 0) return rc;
    }
    if (chosen < 0)
        return fail(c, v->line, path,
                    "a rule needs tables: [...], fingerprint: \"<hex>\" or query: \"SELECT "
                    "...\"");
    return 0;
}

/* A scalar key k of section `section` (cache:, http:) that mirrors an
 * environment variable: section.key in config.c's table. */
static int section_setting(yctx *c, const char *section, const node *k, const node *val,
                           const char *kp, const char *const *keys, size_t n_keys)
{
    pgs_value_kind kind;
    char full[64];
    snprintf(full, sizeof(full), "%s.%s", section, k->str);
    const char *env = config_setting_for_key(full, &kind);
    return env ? do_setting(c, val, kp, env, kind) : unknown_key(c, k, kp, keys, n_keys, true);
}

static int do_cache(yctx *c, const node *v, const char *path)
{
    static const char *const keys[] = {"enabled",     "ttl",   "max_memory",    "max_entry_size",
                                       "fill_wait",   "redis", "redis_timeout", "change_feed",
                                       "rules"};
    if (want_map(c, v, path) < 0) return -EINVAL;
    pgs_cache_config *cc = &c->cfg->cache;
    char kp[PATH_BUF], ip[PATH_BUF];
    for (size_t j = 0; j < v->n; j += 2) {
        const node *k = v->kids[j], *val = v->kids[j + 1];
        path_key(kp, sizeof(kp), path, k->str);
        int w = find_word(keys, PGS_ARRAY_LEN(keys), k->str);
        int rc;
        if (w < 0) {
            rc = unknown_key(c, k, kp, keys, PGS_ARRAY_LEN(keys), true);
        } else if (strcmp(k->str, "rules") == 0) {
            if (want_seq(c, val, kp) < 0) return -EINVAL;
            config_cache_rules_free(cc);
            cc->rules = val->n ? pgs_xcalloc(val->n, sizeof(*cc->rules)) : NULL;
            rc = 0;
            for (size_t i = 0; i < val->n && rc == 0; i++) {
                path_index(ip, sizeof(ip), kp, i);
                /* counted before it is filled, so that a failure frees it */
                rc = cache_rule(c, val->kids[i], ip, &cc->rules[cc->n_rules++]);
            }
        } else {
            /* the scalar settings mirror PGSCALE_CACHE_* (config.c) */
            rc = section_setting(c, "cache", k, val, kp, keys, PGS_ARRAY_LEN(keys));
        }
        if (rc < 0) return rc;
    }
    return 0;
}

/* http: listen, max_pools, auth, tls_cert, tls_key (PGSCALE_HTTP_*). */
static int do_http(yctx *c, const node *v, const char *path)
{
    static const char *const keys[] = {"listen", "max_pools", "auth", "tls_cert", "tls_key"};
    if (want_map(c, v, path) < 0) return -EINVAL;
    char kp[PATH_BUF];
    for (size_t j = 0; j < v->n; j += 2) {
        const node *k = v->kids[j];
        path_key(kp, sizeof(kp), path, k->str);
        int w = find_word(keys, PGS_ARRAY_LEN(keys), k->str);
        int rc = w < 0    ? unknown_key(c, k, kp, keys, PGS_ARRAY_LEN(keys), true)
                 : w == 3 ? file_path(c, v->kids[j + 1], kp, &c->cfg->http_tls_cert)
                 : w == 4 ? file_path(c, v->kids[j + 1], kp, &c->cfg->http_tls_key)
                          : section_setting(c, "http", k, v->kids[j + 1], kp, keys,
                                            PGS_ARRAY_LEN(keys));
        if (rc < 0) return rc;
    }
    return 0;
}

static int do_size(yctx *c, const node *v, const char *path, uint32_t min, uint32_t max,
                   uint32_t *out)
{
    const char *s;
    char why[256];
    if (scalar(c, v, path, PGS_VALUE_SIZE, &s) < 0) return -EINVAL;
    if (config_parse_size(s, min, max, out, why, sizeof(why)) < 0)
        return fail(c, v->line, path, "%s", why);
    return 0;
}

/* Every top-level key.  The ones config_setting_for_key() knows mirror an
 * environment variable and are parsed by config.c exactly as it parses
 * the variable. */
static const char *const top_keys[] = {
    "listen", "pool_mode", "workers", "pool_size", "max_overflow", "pool_timeout", "pinning",
    "max_pinned", "server_reset_settings",
    "server_connect_timeout", "server_login_timeout", "server_lifetime", "server_idle_timeout",
    "overflow_idle_timeout", "server_check_delay", "unused_pool_timeout",
    "idle_transaction_timeout",
    "client_idle_timeout", "query_timeout", "client_login_timeout", "client_startup_timeout",
    "shutdown_timeout", "max_client_conn", "max_pending_logins", "max_pending_logins_per_address", "max_prepared_statements", "max_client_prepared_statements",
    "max_client_prepared_bytes", "max_message_size",
    "max_startup_packet_size", "redis_url", "log_level", "unix_socket_permissions",
    "unix_socket_group", "allow_core_dumps", "server_scram_max_iterations",
    "server_allow_cleartext_password", "consistency", "failover", "max_replica_lag",
    "read_from_primary", "load_balance", "monitor_interval", "health_check_timeout",
    "failover_timeout", "failover_wait", "nodes", "databases", "users", "auth",
    "tls", "server_tls", "admin_users", "stats_users", "cache", "http",
};

static int do_top(yctx *c, const node *root)
{
    if (!root || is_null(root)) return 0; /* an empty file: every default */
    if (root->kind != N_MAP)
        return fail(c, root->line, NULL,
                    "the file must be a mapping of settings (key: value lines), not %s",
                    type_name(root));
    pgs_config *cfg = c->cfg;
    for (size_t i = 0; i < root->n; i += 2) {
        const node *k = root->kids[i], *v = root->kids[i + 1];
        const char *key = k->str;
        char path[PATH_BUF];
        path_key(path, sizeof(path), "", key);
        pgs_value_kind kind;
        const char *env;
        int rc;
        if (find_word(top_keys, PGS_ARRAY_LEN(top_keys), key) < 0)
            rc = unknown_key(c, k, path, top_keys, PGS_ARRAY_LEN(top_keys), false);
        else if (strcmp(key, "listen") == 0) rc = do_listen(c, v, path);
        else if (strcmp(key, "nodes") == 0) rc = do_nodes(c, v, path);
        else if (strcmp(key, "databases") == 0) rc = do_databases(c, v, path);
        else if (strcmp(key, "users") == 0) rc = do_users(c, v, path);
        else if (strcmp(key, "auth") == 0) rc = do_auth(c, v, path);
        else if (strcmp(key, "cache") == 0) rc = do_cache(c, v, path);
        else if (strcmp(key, "http") == 0) rc = do_http(c, v, path);
        else if (strcmp(key, "tls") == 0) rc = do_tls(c, v, path);
        else if (strcmp(key, "server_tls") == 0) rc = do_server_tls(c, v, path);
        else if (strcmp(key, "admin_users") == 0)
            rc = do_names(c, v, path, &cfg->admin_users, &cfg->n_admin_users);
        else if (strcmp(key, "stats_users") == 0)
            rc = do_names(c, v, path, &cfg->stats_users, &cfg->n_stats_users);
        else if (strcmp(key, "max_startup_packet_size") == 0)
            rc = do_size(c, v, path, 1024, 1024 * 1024, &cfg->max_startup_packet_size);
        else if ((env = config_setting_for_key(key, &kind)) != NULL)
            rc = do_setting(c, v, path, env, kind);
        else
            rc = unknown_key(c, k, path, top_keys, PGS_ARRAY_LEN(top_keys), false);
        if (rc < 0) return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Rules between keys                                                       */
/* ------------------------------------------------------------------------ */

static int check_rules(yctx *c)
{
    pgs_config *cfg = c->cfg;
    pgs_auth_config *a = &cfg->auth;
    pgs_tls_config *t = &cfg->tls;
    pgs_server_tls_config *st = &cfg->server_tls;

    if (t->cert && !t->key) return fail(c, c->l_tls_cert, "tls.cert", "needs tls.key as well");
    if (t->key && !t->cert) return fail(c, c->l_tls_key, "tls.key", "needs tls.cert as well");
    if (t->mode != PGS_TLS_DISABLE && !t->cert)
        return fail(c, c->l_tls_mode, "tls.mode", "'%s' needs tls.cert and tls.key",
                    tls_modes[t->mode]);
    if ((t->mode == PGS_TLS_VERIFY_CA || t->mode == PGS_TLS_VERIFY_FULL) && !t->ca)
        return fail(c, c->l_tls_mode, "tls.mode",
                    "'%s' needs tls.ca (the CA that signs client certificates)",
                    tls_modes[t->mode]);

    if (st->cert && !st->key)
        return fail(c, c->l_stls_cert, "server_tls.cert", "needs server_tls.key as well");
    if (st->key && !st->cert)
        return fail(c, c->l_stls_key, "server_tls.key", "needs server_tls.cert as well");
    if (c->seen.sslmode &&
        (st->sslmode == PGS_SSLMODE_VERIFY_CA || st->sslmode == PGS_SSLMODE_VERIFY_FULL) &&
        !st->ca)
        return fail(c, c->l_stls_sslmode, "server_tls.sslmode",
                    "'%s' needs server_tls.ca (the CA that signs the servers' certificates)",
                    st->sslmode == PGS_SSLMODE_VERIFY_CA ? "verify-ca" : "verify-full");

    if (a->query && !a->user)
        return fail(c, c->l_auth_query, "auth.query",
                    "needs auth.user (the user that runs the query)");
    if (a->dbname && !a->user)
        return fail(c, c->l_auth_dbname, "auth.dbname",
                    "needs auth.user (the user that runs the query)");
    /* Whether md5 / SCRAM have any password to check against (a users file,
     * auth.query, or DATABASE_URL's password) is settled once the
     * environment is in (config.c, finish_load); the lines go with it. */
    if (c->l_auth_type) c->seen.auth_type_line = c->l_auth_type;
    for (int i = 0; i < a->n_hba; i++) {
        const pgs_hba_rule *r = &a->hba[i];
        char p[64];
        if (r->type == PGS_HBA_HOSTSSL && t->mode == PGS_TLS_DISABLE) {
            snprintf(p, sizeof(p), "auth.hba[%d].type", i);
            return fail(c, c->l_hba_type[i], p,
                        "hostssl rules need TLS for clients (set tls.mode, tls.cert and "
                        "tls.key)");
        }
        if ((r->method == PGS_AUTH_MD5 || r->method == PGS_AUTH_SCRAM) &&
            !c->seen.hba_password_line) {
            c->seen.hba_password_line = c->l_hba_method[i];
            c->seen.hba_password_index = i;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Entry points                                                             */
/* ------------------------------------------------------------------------ */

int config_yaml_parse(const char *name, const char *data, size_t len, pgs_config *cfg,
                      config_yaml_seen *seen, char *err, size_t errlen)
{
    yctx c;
    memset(&c, 0, sizeof(c));
    c.name = name ? name : "(config)";
    c.data = data;
    c.len = len;
    c.cfg = cfg;
    c.err = err;
    c.errlen = errlen;
    if (err && errlen) err[0] = '\0';
    /* c.dir keeps the trailing '/': "conf/pgscale.yaml" -> "conf/", and a
     * name without one leaves relative paths as they are (the working
     * directory is then the file's directory too). */
    const char *slash = strrchr(c.name, '/');
    if (slash && (size_t)(slash - c.name) + 1 < sizeof(c.dir))
        snprintf(c.dir, sizeof(c.dir), "%.*s", (int)(slash - c.name) + 1, c.name);

    if (len > CONFIG_YAML_MAX_BYTES)
        return fail(&c, 1, NULL, "the file is larger than 1 MiB (%zu bytes)", len);
    if (len > 0 && !data) return fail(&c, 1, NULL, "no data");

    node *root = NULL;
    int rc = build_tree(&c, &root);
    if (rc == 0) rc = do_top(&c, root);
    if (rc == 0) rc = check_rules(&c);
    node_free(root);
    free(c.l_hba_type);
    free(c.l_hba_method);
    if (seen) *seen = c.seen;
    return rc;
}

int config_yaml_load(const char *path, pgs_config *cfg, config_yaml_seen *seen, char *err,
                     size_t errlen)
{
    char *buf;
    size_t n;
    int r = pgs_read_file(path, CONFIG_YAML_MAX_BYTES, "a config file", &buf, &n, err, errlen);
    if (r < 0) return r;
    int rc = config_yaml_parse(path, buf, n, cfg, seen, err, errlen);
    free(buf);
    return rc;
}
