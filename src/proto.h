/* PostgreSQL v3 wire protocol codec: framing, readers and builders over
 * byte buffers.  No sockets, no event loop, no allocation: it is unit-tested
 * and fuzzed on its own.  Every length from the wire is checked against the
 * bytes present and a caller-given maximum before it is used. */
#ifndef PGS_PROTO_H
#define PGS_PROTO_H

#include "common.h"

#define PROTO_VERSION_3 196608u      /* 3.0 */
#define PROTO_CANCEL_CODE 80877102u
#define PROTO_SSL_CODE 80877103u
#define PROTO_GSSENC_CODE 80877104u
#define PROTO_MAX_STARTUP (1024u * 1024u) /* hard bound; max_startup_packet_size (default 10000, as PostgreSQL) applies below it */

/* Result of looking at the head of a buffer. */
enum {
    PROTO_OK = 0,          /* a header is present; see the out params */
    PROTO_NEED_MORE = 1,   /* not enough bytes yet */
    PROTO_E_BADLEN = -1,   /* length below the minimum or above the maximum */
    PROTO_E_BADTYPE = -2,  /* type byte that no message has */
    PROTO_E_FORMAT = -3,   /* body malformed (missing terminator, bad count) */
};

/* Reads a regular message header (type byte + int32 length).  On PROTO_OK,
 * *type and *len (the length field: includes itself, excludes the type)
 * are set; the whole message spans 1 + len bytes, which may be more than
 * avail.  len is checked: 4 <= len <= max_len. */
PGS_MUSTCHECK int proto_peek_header(const uint8_t *buf, size_t avail, uint32_t max_len,
                                    uint8_t *type, uint32_t *len);

/* Is t a message type a frontend (client) may send after start-up? */
bool proto_is_frontend_type(uint8_t t);
/* Is t a message type a backend (server) may send? */
bool proto_is_backend_type(uint8_t t);

/* --- start-up packets ------------------------------------------------ */

#define PROTO_MAX_STARTUP_PARAMS 64

typedef struct proto_startup {
    uint32_t code;           /* PROTO_VERSION_3, PROTO_SSL_CODE, ... or other */
    uint32_t len;            /* whole packet length */
    /* version 3: name/value pairs pointing into the caller's buffer */
    int n_params;
    const char *names[PROTO_MAX_STARTUP_PARAMS];
    const char *values[PROTO_MAX_STARTUP_PARAMS];
    /* cancel request */
    uint32_t cancel_pid;
    uint32_t cancel_key;
} proto_startup;

/* Parses a start-up packet (no type byte).  Returns PROTO_NEED_MORE until
 * the whole packet is present.  Strings point into buf, which must stay
 * alive; they are NUL-terminated inside the packet (checked). */
PGS_MUSTCHECK int proto_read_startup(const uint8_t *buf, size_t avail, proto_startup *out);
const char *proto_startup_get(const proto_startup *s, const char *name);

/* --- readers of message bodies (body = after the 5-byte header) ------- */

/* Reads a NUL-terminated string at *pos within body[0..len); advances *pos
 * past the NUL.  Returns NULL if no NUL is found. */
const char *proto_get_string(const uint8_t *body, size_t len, size_t *pos);
PGS_MUSTCHECK int proto_get_int32(const uint8_t *body, size_t len, size_t *pos, int32_t *v);
PGS_MUSTCHECK int proto_get_int16(const uint8_t *body, size_t len, size_t *pos, int16_t *v);

/* ErrorResponse/NoticeResponse fields of interest. */
typedef struct proto_error_fields {
    const char *severity;   /* 'S' (localized) or 'V' */
    const char *sqlstate;   /* 'C' */
    const char *message;    /* 'M' */
} proto_error_fields;
PGS_MUSTCHECK int proto_read_error(const uint8_t *body, size_t len, proto_error_fields *out);

/* --- builders --------------------------------------------------------- */

/* A bounded output buffer.  Builders append; on overflow they set
 * overflow and append nothing more, so a caller checks once at the end. */
typedef struct proto_out {
    uint8_t *data;
    size_t len;
    size_t cap;
    bool overflow;
} proto_out;

void proto_out_init(proto_out *o, uint8_t *data, size_t cap);

/* Low-level: begin a message of type t (0 = no type byte, for start-up
 * packets), append fields, then end it (patches the length). */
size_t proto_begin(proto_out *o, uint8_t type);
void proto_put_byte(proto_out *o, uint8_t b);
void proto_put_int16(proto_out *o, int16_t v);
void proto_put_int32(proto_out *o, int32_t v);
void proto_put_bytes(proto_out *o, const void *p, size_t n);
void proto_put_string(proto_out *o, const char *s);      /* with NUL */
void proto_put_stringn(proto_out *o, const char *s, size_t n); /* adds NUL */
void proto_end(proto_out *o, size_t start);

/* Whole messages. */
void proto_error(proto_out *o, const char *severity, const char *sqlstate, const char *msg,
                 const char *hint);
void proto_notice(proto_out *o, const char *severity, const char *sqlstate, const char *msg);
void proto_ready_for_query(proto_out *o, char status);
void proto_auth_request(proto_out *o, int32_t code, const void *extra, size_t extra_len);
void proto_parameter_status(proto_out *o, const char *name, const char *value);
void proto_backend_key(proto_out *o, uint32_t pid, uint32_t key);
void proto_command_complete(proto_out *o, const char *tag);
void proto_empty_query(proto_out *o);
/* RowDescription with n text columns named names[i] (type text, oid 25). */
void proto_row_description_text(proto_out *o, int n, const char *const *names);
/* DataRow of n text values; NULL value -> SQL NULL. */
void proto_data_row_text(proto_out *o, int n, const char *const *values);
void proto_query(proto_out *o, const char *sql);
void proto_terminate(proto_out *o);
void proto_sync(proto_out *o);
void proto_parse_complete(proto_out *o);
void proto_close_complete(proto_out *o);
void proto_password(proto_out *o, const char *pw);
void proto_sasl_initial(proto_out *o, const char *mech, const void *data, size_t len);
void proto_sasl_response(proto_out *o, const void *data, size_t len);
void proto_cancel_request(proto_out *o, uint32_t pid, uint32_t key);
/* StartupMessage v3 with n name/value pairs. */
void proto_startup_message(proto_out *o, int n, const char *const *names,
                           const char *const *values);

static inline uint32_t proto_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void proto_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

#endif
