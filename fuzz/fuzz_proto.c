/* libFuzzer target for proto: the input is read once as a start-up packet
 * and once as a stream of regular messages, and every complete message of a
 * type the relay looks inside is picked apart with the bounded readers.
 * Each body is handed over in its own exact-size heap copy, so a reader that
 * strays even one byte past its message (into the next one) trips ASan. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

#define MAX_MSG (1u << 20)

/* Invariants the readers promise; a violation is a bug, so stop loudly. */
#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) __builtin_trap();                                                  \
    } while (0)

static uint8_t *dup_exact(const uint8_t *p, size_t n)
{
    uint8_t *c = malloc(n ? n : 1);
    if (!c) abort();
    if (n) memcpy(c, p, n);
    return c;
}

/* A string the readers returned must end in a NUL at body[*pos - 1]. */
static void check_string(const uint8_t *body, size_t len, const char *s, size_t pos)
{
    CHECK((const uint8_t *)s >= body && pos <= len && pos >= 1);
    CHECK(body[pos - 1] == 0);
    CHECK(strlen(s) == (size_t)(body + pos - 1 - (const uint8_t *)s));
}

static void check_field(const uint8_t *body, size_t len, const char *s)
{
    if (!s) return;
    CHECK((const uint8_t *)s >= body && (const uint8_t *)s < body + len);
    CHECK(memchr(s, 0, (size_t)(body + len - (const uint8_t *)s)) != NULL);
}

static void fuzz_startup(const uint8_t *buf, size_t size)
{
    proto_startup st;
    int r = proto_read_startup(buf, size, &st);
    if (r != PROTO_OK) return;
    CHECK(st.len >= 8 && st.len <= PROTO_MAX_STARTUP && st.len <= size);
    CHECK(st.n_params >= 0 && st.n_params <= PROTO_MAX_STARTUP_PARAMS);
    for (int i = 0; i < st.n_params; i++) {
        const uint8_t *n = (const uint8_t *)st.names[i];
        const uint8_t *v = (const uint8_t *)st.values[i];
        CHECK(n >= buf + 8 && n < buf + st.len && v > n && v < buf + st.len);
        /* both strings are NUL-terminated inside the packet */
        CHECK(memchr(n, 0, (size_t)(buf + st.len - n)) != NULL);
        CHECK(memchr(v, 0, (size_t)(buf + st.len - v)) != NULL);
    }
    (void)proto_startup_get(&st, "user");

    /* Differential check: a plain v3 packet re-built from what was parsed
     * must give back the same bytes. */
    if (st.code == PROTO_VERSION_3) {
        uint8_t *out = malloc(st.len);
        if (!out) abort();
        proto_out o;
        proto_out_init(&o, out, st.len);
        proto_startup_message(&o, st.n_params, st.names, st.values);
        CHECK(!o.overflow && o.len == st.len && memcmp(out, buf, st.len) == 0);
        free(out);
    }
}

static void fuzz_error(const uint8_t *body, size_t len)
{
    proto_error_fields f;
    if (proto_read_error(body, len, &f) != 0) return;
    check_field(body, len, f.severity);
    check_field(body, len, f.sqlstate);
    check_field(body, len, f.message);
}

static void fuzz_query(const uint8_t *body, size_t len)
{
    size_t pos = 0;
    const char *q = proto_get_string(body, len, &pos);
    if (!q) return;
    check_string(body, len, q, pos);
    if (pos == len) {
        /* the whole body is the query: re-building it must round-trip */
        uint8_t out[5 + 64];
        size_t need = 5 + len;
        uint8_t *o_buf = need <= sizeof(out) ? out : malloc(need);
        if (!o_buf) abort();
        proto_out o;
        proto_out_init(&o, o_buf, need);
        proto_query(&o, q);
        CHECK(!o.overflow && o.len == need && o_buf[0] == 'Q');
        CHECK(proto_be32(o_buf + 1) == len + 4 && memcmp(o_buf + 5, body, len) == 0);
        if (o_buf != out) free(o_buf);
    }
}

static void fuzz_parse(const uint8_t *body, size_t len)
{
    size_t pos = 0;
    const char *name = proto_get_string(body, len, &pos);
    if (!name) return;
    check_string(body, len, name, pos);
    const char *query = proto_get_string(body, len, &pos);
    if (!query) return;
    check_string(body, len, query, pos);
    int16_t n;
    if (proto_get_int16(body, len, &pos, &n) != 0) return;
    CHECK(pos <= len);
    for (int i = 0; i < n; i++) {
        int32_t oid;
        if (proto_get_int32(body, len, &pos, &oid) != 0) return;
        CHECK(pos <= len);
    }
}

static void fuzz_bind(const uint8_t *body, size_t len)
{
    size_t pos = 0;
    const char *portal = proto_get_string(body, len, &pos);
    if (!portal) return;
    check_string(body, len, portal, pos);
    const char *stmt = proto_get_string(body, len, &pos);
    if (!stmt) return;
    check_string(body, len, stmt, pos);
}

static void fuzz_stream(const uint8_t *buf, size_t size)
{
    size_t off = 0;
    while (off < size) {
        uint8_t type;
        uint32_t len;
        int r = proto_peek_header(buf + off, size - off, MAX_MSG, &type, &len);
        if (r != PROTO_OK) {
            CHECK(r == PROTO_NEED_MORE ? size - off < 5 : r == PROTO_E_BADLEN);
            return;
        }
        CHECK(len >= 4 && len <= MAX_MSG);
        if (size - off - 1 < len) return; /* the rest has not "arrived" */
        size_t blen = (size_t)len - 4;
        uint8_t *body = dup_exact(buf + off + 5, blen);
        switch (type) {
        case 'E':
        case 'N': fuzz_error(body, blen); break;
        case 'Q': fuzz_query(body, blen); break;
        case 'P': fuzz_parse(body, blen); break;
        case 'B': fuzz_bind(body, blen); break;
        default: break;
        }
        (void)proto_is_frontend_type(type);
        (void)proto_is_backend_type(type);
        free(body);
        off += 1 + (size_t)len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = dup_exact(data, size);
    fuzz_startup(buf, size);
    fuzz_stream(buf, size);
    free(buf);
    return 0;
}
