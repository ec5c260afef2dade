/* PostgreSQL v3 wire protocol codec: header framing, start-up packet
 * parsing, body readers and message builders.  It owns no I/O and no
 * memory; connections (client.c, server.c, relay.c) drive it. */
#include "proto.h"

#include <string.h>

int proto_peek_header(const uint8_t *buf, size_t avail, uint32_t max_len, uint8_t *type,
                      uint32_t *len)
{
    if (avail < 5) return PROTO_NEED_MORE;
    uint32_t l = proto_be32(buf + 1);
    /* The length is signed on the wire; anything >= 2^31 is "negative". */
    if (l < 4 || l > max_len || l > 0x7fffffffu) return PROTO_E_BADLEN;
    *type = buf[0];
    *len = l;
    return PROTO_OK;
}

bool proto_is_frontend_type(uint8_t t)
{
    switch (t) {
    case 'B': case 'C': case 'd': case 'c': case 'f': case 'D': case 'E':
    case 'H': case 'F': case 'P': case 'p': case 'Q': case 'S': case 'X':
        return true;
    default:
        return false;
    }
}

bool proto_is_backend_type(uint8_t t)
{
    switch (t) {
    case 'R': case 'K': case '2': case '3': case 'C': case 'd': case 'c':
    case 'G': case 'H': case 'W': case 'D': case 'I': case 'E': case 'V':
    case 'v': case 'n': case 'N': case 'A': case 't': case 'S': case '1':
    case 's': case 'Z': case 'T':
        return true;
    default:
        return false;
    }
}

int proto_read_startup(const uint8_t *buf, size_t avail, proto_startup *out)
{
    if (avail < 4) return PROTO_NEED_MORE;
    uint32_t len = proto_be32(buf); /* a bad length is refused at once */
    if (len < 8 || len > PROTO_MAX_STARTUP) return PROTO_E_BADLEN;
    if (avail < 8) return PROTO_NEED_MORE;
    if (avail < len) return PROTO_NEED_MORE;
    memset(out, 0, sizeof(*out));
    out->len = len;
    out->code = proto_be32(buf + 4);
    if (out->code == PROTO_CANCEL_CODE) {
        if (len != 16) return PROTO_E_BADLEN;
        out->cancel_pid = proto_be32(buf + 8);
        out->cancel_key = proto_be32(buf + 12);
        return PROTO_OK;
    }
    if (out->code == PROTO_SSL_CODE || out->code == PROTO_GSSENC_CODE) {
        return len == 8 ? PROTO_OK : PROTO_E_BADLEN;
    }
    if (out->code >> 16 != 3) return PROTO_OK; /* caller rejects the version */
    /* name\0value\0 ... \0 */
    size_t pos = 8;
    for (;;) {
        if (pos >= len) return PROTO_E_FORMAT;
        if (buf[pos] == '\0') {
            if (pos + 1 != len) return PROTO_E_FORMAT;
            break;
        }
        const uint8_t *n = buf + pos;
        const uint8_t *nz = memchr(n, 0, len - pos);
        if (!nz) return PROTO_E_FORMAT;
        pos = (size_t)(nz - buf) + 1;
        if (pos >= len) return PROTO_E_FORMAT;
        const uint8_t *v = buf + pos;
        const uint8_t *vz = memchr(v, 0, len - pos);
        if (!vz) return PROTO_E_FORMAT;
        pos = (size_t)(vz - buf) + 1;
        if (out->n_params >= PROTO_MAX_STARTUP_PARAMS) return PROTO_E_FORMAT;
        out->names[out->n_params] = (const char *)n;
        out->values[out->n_params] = (const char *)v;
        out->n_params++;
    }
    return PROTO_OK;
}

const char *proto_startup_get(const proto_startup *s, const char *name)
{
    for (int i = 0; i < s->n_params; i++)
        if (strcmp(s->names[i], name) == 0) return s->values[i];
    return NULL;
}

const char *proto_get_string(const uint8_t *body, size_t len, size_t *pos)
{
    if (*pos >= len) return NULL;
    const uint8_t *s = body + *pos;
    const uint8_t *z = memchr(s, 0, len - *pos);
    if (!z) return NULL;
    *pos = (size_t)(z - body) + 1;
    return (const char *)s;
}

int proto_get_int32(const uint8_t *body, size_t len, size_t *pos, int32_t *v)
{
    if (*pos > len || len - *pos < 4) return PROTO_E_FORMAT;
    *v = (int32_t)proto_be32(body + *pos);
    *pos += 4;
    return 0;
}

int proto_get_int16(const uint8_t *body, size_t len, size_t *pos, int16_t *v)
{
    if (*pos > len || len - *pos < 2) return PROTO_E_FORMAT;
    *v = (int16_t)(((uint16_t)body[*pos] << 8) | body[*pos + 1]);
    *pos += 2;
    return 0;
}

int proto_read_error(const uint8_t *body, size_t len, proto_error_fields *out)
{
    memset(out, 0, sizeof(*out));
    size_t pos = 0;
    while (pos < len) {
        uint8_t code = body[pos++];
        if (code == 0) return 0;
        const char *s = proto_get_string(body, len, &pos);
        if (!s) return PROTO_E_FORMAT;
        switch (code) {
        case 'S': if (!out->severity) out->severity = s; break;
        case 'V': out->severity = s; break;
        case 'C': out->sqlstate = s; break;
        case 'M': out->message = s; break;
        default: break;
        }
    }
    return PROTO_E_FORMAT;
}

/* --- builders --- */

void proto_out_init(proto_out *o, uint8_t *data, size_t cap)
{
    o->data = data;
    o->len = 0;
    o->cap = cap;
    o->overflow = false;
}

void proto_put_bytes(proto_out *o, const void *p, size_t n)
{
    if (o->overflow || o->cap - o->len < n) {
        o->overflow = true;
        return;
    }
    if (n) memcpy(o->data + o->len, p, n);
    o->len += n;
}

void proto_put_byte(proto_out *o, uint8_t b)
{
    proto_put_bytes(o, &b, 1);
}

void proto_put_int16(proto_out *o, int16_t v)
{
    uint8_t b[2] = {(uint8_t)((uint16_t)v >> 8), (uint8_t)v};
    proto_put_bytes(o, b, 2);
}

void proto_put_int32(proto_out *o, int32_t v)
{
    uint8_t b[4];
    proto_put_be32(b, (uint32_t)v);
    proto_put_bytes(o, b, 4);
}

void proto_put_stringn(proto_out *o, const char *s, size_t n)
{
    proto_put_bytes(o, s, n);
    proto_put_byte(o, 0);
}

void proto_put_string(proto_out *o, const char *s)
{
    proto_put_stringn(o, s, strlen(s));
}

size_t proto_begin(proto_out *o, uint8_t type)
{
    if (type) proto_put_byte(o, type);
    size_t start = o->len;
    proto_put_int32(o, 0);
    return start;
}

void proto_end(proto_out *o, size_t start)
{
    if (o->overflow) return;
    proto_put_be32(o->data + start, (uint32_t)(o->len - start));
}

static void put_field(proto_out *o, char code, const char *s)
{
    if (!s) return;
    proto_put_byte(o, (uint8_t)code);
    proto_put_string(o, s);
}

void proto_error(proto_out *o, const char *severity, const char *sqlstate, const char *msg,
                 const char *hint)
{
    size_t st = proto_begin(o, 'E');
    put_field(o, 'S', severity);
    put_field(o, 'V', severity);
    put_field(o, 'C', sqlstate);
    put_field(o, 'M', msg);
    put_field(o, 'H', hint);
    proto_put_byte(o, 0);
    proto_end(o, st);
}

void proto_notice(proto_out *o, const char *severity, const char *sqlstate, const char *msg)
{
    size_t st = proto_begin(o, 'N');
    put_field(o, 'S', severity);
    put_field(o, 'V', severity);
    put_field(o, 'C', sqlstate);
    put_field(o, 'M', msg);
    proto_put_byte(o, 0);
    proto_end(o, st);
}

void proto_ready_for_query(proto_out *o, char status)
{
    size_t st = proto_begin(o, 'Z');
    proto_put_byte(o, (uint8_t)status);
    proto_end(o, st);
}

void proto_auth_request(proto_out *o, int32_t code, const void *extra, size_t extra_len)
{
    size_t st = proto_begin(o, 'R');
    proto_put_int32(o, code);
    proto_put_bytes(o, extra, extra_len);
    proto_end(o, st);
}

void proto_parameter_status(proto_out *o, const char *name, const char *value)
{
    size_t st = proto_begin(o, 'S');
    proto_put_string(o, name);
    proto_put_string(o, value);
    proto_end(o, st);
}

void proto_backend_key(proto_out *o, uint32_t pid, uint32_t key)
{
    size_t st = proto_begin(o, 'K');
    proto_put_int32(o, (int32_t)pid);
    proto_put_int32(o, (int32_t)key);
    proto_end(o, st);
}

void proto_command_complete(proto_out *o, const char *tag)
{
    size_t st = proto_begin(o, 'C');
    proto_put_string(o, tag);
    proto_end(o, st);
}

static void empty_message(proto_out *o, uint8_t type)
{
    size_t st = proto_begin(o, type);
    proto_end(o, st);
}

void proto_empty_query(proto_out *o) { empty_message(o, 'I'); }
void proto_terminate(proto_out *o) { empty_message(o, 'X'); }
void proto_sync(proto_out *o) { empty_message(o, 'S'); }
void proto_parse_complete(proto_out *o) { empty_message(o, '1'); }
void proto_close_complete(proto_out *o) { empty_message(o, '3'); }

void proto_row_description_text(proto_out *o, int n, const char *const *names)
{
    size_t st = proto_begin(o, 'T');
    proto_put_int16(o, (int16_t)n);
    for (int i = 0; i < n; i++) {
        proto_put_string(o, names[i]);
        proto_put_int32(o, 0);  /* table oid */
        proto_put_int16(o, 0);  /* column number */
        proto_put_int32(o, 25); /* text */
        proto_put_int16(o, -1);
        proto_put_int32(o, -1);
        proto_put_int16(o, 0);  /* text format */
    }
    proto_end(o, st);
}

void proto_data_row_text(proto_out *o, int n, const char *const *values)
{
    size_t st = proto_begin(o, 'D');
    proto_put_int16(o, (int16_t)n);
    for (int i = 0; i < n; i++) {
        if (!values[i]) {
            proto_put_int32(o, -1);
            continue;
        }
        size_t l = strlen(values[i]);
        proto_put_int32(o, (int32_t)l);
        proto_put_bytes(o, values[i], l);
    }
    proto_end(o, st);
}

void proto_query(proto_out *o, const char *sql)
{
    size_t st = proto_begin(o, 'Q');
    proto_put_string(o, sql);
    proto_end(o, st);
}

void proto_password(proto_out *o, const char *pw)
{
    size_t st = proto_begin(o, 'p');
    proto_put_string(o, pw);
    proto_end(o, st);
}

void proto_sasl_initial(proto_out *o, const char *mech, const void *data, size_t len)
{
    size_t st = proto_begin(o, 'p');
    proto_put_string(o, mech);
    proto_put_int32(o, (int32_t)len);
    proto_put_bytes(o, data, len);
    proto_end(o, st);
}

void proto_sasl_response(proto_out *o, const void *data, size_t len)
{
    size_t st = proto_begin(o, 'p');
    proto_put_bytes(o, data, len);
    proto_end(o, st);
}

void proto_cancel_request(proto_out *o, uint32_t pid, uint32_t key)
{
    size_t st = proto_begin(o, 0);
    proto_put_int32(o, (int32_t)PROTO_CANCEL_CODE);
    proto_put_int32(o, (int32_t)pid);
    proto_put_int32(o, (int32_t)key);
    proto_end(o, st);
}

void proto_startup_message(proto_out *o, int n, const char *const *names,
                           const char *const *values)
{
    size_t st = proto_begin(o, 0);
    proto_put_int32(o, (int32_t)PROTO_VERSION_3);
    for (int i = 0; i < n; i++) {
        proto_put_string(o, names[i]);
        proto_put_string(o, values[i]);
    }
    proto_put_byte(o, 0);
    proto_end(o, st);
}
