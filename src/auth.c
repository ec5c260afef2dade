/* Authentication, both ways.  Toward PostgreSQL servers: the md5 password
 * response and the SCRAM-SHA-256 client (RFC 5802/7677, as PostgreSQL speaks
 * it), with a password or with recovered keys.  Toward pgscale's own
 * clients: md5 verification, SCRAM secrets (parse, format, derive) and the
 * SCRAM verifier, mock users included.  Pure functions over byte buffers,
 * crypto from OpenSSL.  It does not frame or send protocol messages
 * (proto/client/server do) and does not read users files (authfile does). */
#include "auth.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#define SHA256_LEN 32

/* Exchange steps; a call that does not match the current step fails and
 * leaves the state alone, except that a failure inside the exchange is
 * final (SC_FAILED): the caller must start over with scram_client_init. */
enum {
    SC_NONE = 0,    /* zeroed struct: nothing initialised */
    SC_INIT,        /* nonce and password set, client-first not sent */
    SC_FIRST_SENT,  /* waiting for server-first */
    SC_FINAL_SENT,  /* waiting for server-final */
    SC_DONE,        /* server signature verified */
    SC_FAILED,
};

/* ---- md5 ----------------------------------------------------------------- */

static void hex32(const unsigned char d[16], char out[33])
{
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[2 * i] = hx[d[i] >> 4];
        out[2 * i + 1] = hx[d[i] & 15];
    }
    out[32] = '\0';
}

/* md5 over two pieces without concatenating them into a bounded buffer:
 * passwords have no length limit here. */
static int md5_two(const void *a, size_t alen, const void *b, size_t blen, unsigned char d[16])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int dlen = 0;
    int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_md5(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, a, alen) == 1 && EVP_DigestUpdate(ctx, b, blen) == 1 &&
             EVP_DigestFinal_ex(ctx, d, &dlen) == 1 && dlen == 16;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : -EIO;
}

int auth_md5_response_from_hash(const char *secret, const uint8_t salt[4], char out[36])
{
    unsigned char d[16];
    out[0] = '\0';
    if (strlen(secret) != 35 || strncmp(secret, "md5", 3) != 0) return -EINVAL;
    if (md5_two(secret + 3, 32, salt, 4, d) < 0) return -EIO;
    memcpy(out, "md5", 3);
    hex32(d, out + 3);
    OPENSSL_cleanse(d, sizeof(d));
    return 0;
}

void auth_md5_response(const char *user, const char *password, const uint8_t salt[4],
                       char out[36])
{
    unsigned char d[16];
    char inner[33];

    /* An OpenSSL without MD5 (FIPS-only providers) leaves out empty: the
     * server then rejects the login, which is the safe way to fail. */
    out[0] = '\0';
    if (md5_two(password, strlen(password), user, strlen(user), d) < 0) goto fail;
    hex32(d, inner);
    if (md5_two(inner, 32, salt, 4, d) < 0) goto fail;
    memcpy(out, "md5", 3);
    hex32(d, out + 3);
    OPENSSL_cleanse(inner, sizeof(inner));
    OPENSSL_cleanse(d, sizeof(d));
    return;
fail:
    out[0] = '\0';
    OPENSSL_cleanse(inner, sizeof(inner));
    OPENSSL_cleanse(d, sizeof(d));
    log_error("md5 digest unavailable in this OpenSSL; cannot answer md5 auth");
}

/* ---- base64 -------------------------------------------------------------- */

static bool b64_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '/';
}

/* Strict base64 decode of untrusted text: length a multiple of 4, only the
 * alphabet, '=' only as the last one or two characters.  EVP_DecodeBlock
 * would skip whitespace and count padding as zero bytes, so the checks and
 * the real length are ours.  Returns the decoded length or negative. */
static int b64_decode(const char *in, size_t len, unsigned char *out, size_t outcap)
{
    if (len % 4 != 0 || len > (size_t)1 << 20) return -EPROTO;
    size_t pad = 0;
    if (len > 0 && in[len - 1] == '=') pad++;
    if (len > 1 && in[len - 2] == '=') pad++;
    for (size_t i = 0; i < len - pad; i++)
        if (!b64_char((unsigned char)in[i])) return -EPROTO;
    size_t n = len / 4 * 3 - pad;
    if (len / 4 * 3 > outcap) return -ENOBUFS;
    if (len == 0) return 0;
    int r = EVP_DecodeBlock(out, (const unsigned char *)in, (int)len);
    if (r < 0 || (size_t)r != len / 4 * 3) return -EPROTO;
    return (int)n;
}

/* Encodes into out (NUL-terminated); returns the text length or negative. */
static int b64_encode(const unsigned char *in, size_t len, char *out, size_t outcap)
{
    if ((len + 2) / 3 * 4 + 1 > outcap) return -ENOBUFS;
    return EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

/* ---- SCRAM-SHA-256 ------------------------------------------------------- */

/* The gs2 header of an exchange bound to the TLS server certificate (the
 * only channel-binding type PostgreSQL knows). */
#define CBIND_HEADER "p=tls-server-end-point,,"

/* The attribute values we accept as nonces: printable ASCII except ','
 * (RFC 5802 "printable"). */
static bool nonce_char(unsigned char c)
{
    return c >= 0x21 && c <= 0x7e && c != ',';
}

static int hmac256(const void *key, size_t keylen, const void *msg, size_t msglen,
                   unsigned char out[SHA256_LEN])
{
    unsigned int olen = 0;
    if (HMAC(EVP_sha256(), key, (int)keylen, msg, msglen, out, &olen) == NULL ||
        olen != SHA256_LEN)
        return -EIO;
    return 0;
}

static int sha256(const void *msg, size_t len, unsigned char out[SHA256_LEN])
{
    unsigned int olen = 0;
    if (EVP_Digest(msg, len, out, &olen, EVP_sha256(), NULL) != 1 || olen != SHA256_LEN)
        return -EIO;
    return 0;
}

/* Builds "n=<saslname>,r=<nonce>" with ',' and '=' escaped as RFC 5802 asks. */
static int build_first_bare(scram_client *sc, const char *user)
{
    char *o = sc->client_first_bare;
    size_t cap = sizeof(sc->client_first_bare), n = 0;
    const char *nonce = sc->client_nonce;

    if (cap < 3) return -ENOBUFS;
    memcpy(o, "n=", 2);
    n = 2;
    for (const char *u = user; *u; u++) {
        const char *esc = *u == ',' ? "=2C" : *u == '=' ? "=3D" : NULL;
        size_t el = esc ? 3 : 1;
        if (n + el >= cap) return -ENOBUFS;
        if (esc)
            memcpy(o + n, esc, 3);
        else
            o[n] = *u;
        n += el;
    }
    size_t nl = strlen(nonce);
    if (n + 3 + nl >= cap) return -ENOBUFS;
    memcpy(o + n, ",r=", 3);
    memcpy(o + n + 3, nonce, nl);
    o[n + 3 + nl] = '\0';
    return 0;
}

int scram_client_init_nonce(scram_client *sc, const char *password, const char *nonce)
{
    OPENSSL_cleanse(sc, sizeof(*sc));
    sc->state = SC_NONE;

    size_t pl = strlen(password);
    size_t nl = strlen(nonce);
    if (pl >= sizeof(sc->password)) return -EINVAL;
    if (nl == 0 || nl >= sizeof(sc->client_nonce)) return -EINVAL;
    for (size_t i = 0; i < nl; i++)
        if (!nonce_char((unsigned char)nonce[i])) return -EINVAL;

    /* PostgreSQL runs the password through SASLprep (RFC 4013) before
     * PBKDF2.  For a pure-ASCII password SASLprep is the identity in
     * PostgreSQL (pg_saslprep returns ASCII input unchanged), so using the
     * bytes as they are is exact.  For anything else we also use the raw
     * bytes: that matches PostgreSQL when the password is not valid UTF-8 or
     * contains characters SASLprep prohibits (both then fall back to the raw
     * bytes), but for valid non-ASCII UTF-8 real SASLprep would be needed —
     * NFKC normalisation, non-ASCII spaces mapped to U+0020, "mapped to
     * nothing" characters removed — and a password that those steps change
     * will fail to authenticate here.  This limitation is deliberate until a
     * SASLprep implementation is worth carrying. */
    memcpy(sc->password, password, pl + 1);
    memcpy(sc->client_nonce, nonce, nl + 1);
    sc->cbind_flag = 'n';

    int r = build_first_bare(sc, ""); /* PostgreSQL ignores the SCRAM user name */
    if (r < 0) {
        OPENSSL_cleanse(sc, sizeof(*sc));
        return r;
    }
    sc->state = SC_INIT;
    return 0;
}

int scram_client_init(scram_client *sc, const char *password)
{
    unsigned char raw[SCRAM_NONCE_LEN];
    char nonce[(SCRAM_NONCE_LEN + 2) / 3 * 4 + 1];

    OPENSSL_cleanse(sc, sizeof(*sc));
    if (RAND_bytes(raw, sizeof(raw)) != 1) return -EIO;
    if (b64_encode(raw, sizeof(raw), nonce, sizeof(nonce)) < 0) return -EIO;
    OPENSSL_cleanse(raw, sizeof(raw));
    return scram_client_init_nonce(sc, password, nonce);
}

int scram_client_set_user(scram_client *sc, const char *user)
{
    if (sc->state != SC_INIT) return -EINVAL;
    char saved[sizeof(sc->client_first_bare)];
    memcpy(saved, sc->client_first_bare, sizeof(saved));
    int r = build_first_bare(sc, user);
    if (r < 0) memcpy(sc->client_first_bare, saved, sizeof(saved));
    return r;
}

int scram_client_set_keys(scram_client *sc, const scram_keys *keys)
{
    if (sc->state != SC_INIT || keys == NULL) return -EINVAL;
    if (keys->salt_len == 0 || keys->salt_len > sizeof(keys->salt) || keys->iterations < 1 ||
        keys->iterations > SCRAM_MAX_ITERATIONS)
        return -EINVAL;
    OPENSSL_cleanse(sc->password, sizeof(sc->password));
    memcpy(&sc->keys, keys, sizeof(sc->keys));
    sc->use_keys = true;
    return 0;
}

int scram_client_set_cbind(scram_client *sc, char flag, const unsigned char *data, size_t len)
{
    if (sc->state != SC_INIT) return -EINVAL;
    switch (flag) {
    case 'n':
    case 'y':
        if (len != 0) return -EINVAL;
        break;
    case 'p':
        if (data == NULL || len == 0 || len > sizeof(sc->cbind)) return -EINVAL;
        memcpy(sc->cbind, data, len);
        break;
    default:
        return -EINVAL;
    }
    sc->cbind_flag = flag;
    sc->cbind_len = len;
    return 0;
}

bool scram_client_bound(const scram_client *sc)
{
    return sc->state == SC_DONE && sc->cbind_flag == 'p';
}

int scram_client_set_max_iterations(scram_client *sc, int max)
{
    if (sc->state != SC_INIT && sc->state != SC_FIRST_SENT) return -EINVAL;
    if (max < 1 || max > SCRAM_MAX_ITERATIONS) return -EINVAL;
    sc->max_iterations = max;
    return 0;
}

/* The gs2 header as sent in client-first-message and repeated in c=. */
static const char *gs2_header(const scram_client *sc)
{
    switch (sc->cbind_flag) {
    case 'p': return CBIND_HEADER;
    case 'y': return "y,,";
    default: return "n,,";
    }
}

int scram_client_first(scram_client *sc, char *out, size_t outcap, size_t *outlen)
{
    if (sc->state != SC_INIT) return -EINVAL;
    /* gs2-header: the channel-binding flag, no authzid. */
    const char *gs2 = gs2_header(sc);
    size_t gl = strlen(gs2);
    size_t bl = strlen(sc->client_first_bare);
    if (gl + bl + 1 > outcap) return -ENOBUFS;
    memcpy(out, gs2, gl);
    memcpy(out + gl, sc->client_first_bare, bl + 1);
    *outlen = gl + bl;
    sc->state = SC_FIRST_SENT;
    return 0;
}

/* server-first-message = "r=" nonce ",s=" salt ",i=" iteration-count.
 * Extensions are not accepted: PostgreSQL sends none, and libpq also treats
 * anything after the iteration count as garbage. */
typedef struct {
    const char *nonce;
    size_t nonce_len;
    unsigned char salt[SCRAM_MAX_MSG];
    size_t salt_len;
    int iterations;
} server_first_msg;

/* Finds the value of attribute `attr` at *p ("a=value" up to ',' or end). */
static int take_attr(const char **p, const char *end, char attr, const char **val,
                     size_t *vlen)
{
    const char *s = *p;
    if (end - s < 2 || s[0] != attr || s[1] != '=') return -EPROTO;
    s += 2;
    const char *comma = memchr(s, ',', (size_t)(end - s));
    const char *stop = comma ? comma : end;
    *val = s;
    *vlen = (size_t)(stop - s);
    *p = comma ? comma + 1 : end;
    return 0;
}

static int parse_server_first(const scram_client *sc, const char *msg, size_t len,
                              server_first_msg *m)
{
    const char *p = msg, *end = msg + len, *v;
    size_t vl;

    if (take_attr(&p, end, 'r', &v, &vl) < 0 || p == end) return -EPROTO;
    size_t cl = strlen(sc->client_nonce);
    /* The server appends its own part; a nonce that does not extend ours is
     * a replay or a confused server. */
    if (vl <= cl || memcmp(v, sc->client_nonce, cl) != 0) return -EPROTO;
    for (size_t i = 0; i < vl; i++)
        if (!nonce_char((unsigned char)v[i])) return -EPROTO;
    m->nonce = v;
    m->nonce_len = vl;

    if (take_attr(&p, end, 's', &v, &vl) < 0 || p == end) return -EPROTO;
    int sl = b64_decode(v, vl, m->salt, sizeof(m->salt));
    if (sl <= 0) return -EPROTO;
    m->salt_len = (size_t)sl;

    if (take_attr(&p, end, 'i', &v, &vl) < 0 || p != end) return -EPROTO;
    /* p == end can also mean a trailing ',' was consumed: take_attr leaves
     * p past the comma, so check the value really ended the message. */
    if (v + vl != end || vl == 0) return -EPROTO;
    long it = 0;
    for (size_t i = 0; i < vl; i++) {
        if (v[i] < '0' || v[i] > '9') return -EPROTO;
        it = it * 10 + (v[i] - '0');
        if (it > 10000000) return -EPROTO; /* also stops overflow */
    }
    if (it < 1) return -EPROTO;
    m->iterations = (int)it;
    return 0;
}

/* Appends s (n bytes) at *pos in buf, keeping room for a terminator. */
static int append(char *buf, size_t cap, size_t *pos, const char *s, size_t n)
{
    if (*pos + n + 1 > cap) return -ENOBUFS;
    memcpy(buf + *pos, s, n);
    *pos += n;
    buf[*pos] = '\0';
    return 0;
}

/* SaltedPassword costs `iterations` HMACs (4096 by default: ~10 ms of one
 * core).  A server sends the same salt and count on every login of the same
 * user, so the result is remembered: pool growth and reconnects then cost
 * microseconds instead of blocking a worker's loop.  PgBouncer does the same.
 * The cache is keyed by a SHA-256 of password, salt and count, holds a few
 * entries, and is shared by the worker threads under a mutex (login path
 * only, never the data path). */
#define SALT_CACHE_SIZE 16

typedef struct salt_cache_entry {
    unsigned char key[SHA256_LEN];
    unsigned char value[SHA256_LEN];
    bool used;
} salt_cache_entry;

static salt_cache_entry salt_cache[SALT_CACHE_SIZE];
static unsigned salt_cache_next;
static pthread_mutex_t salt_cache_lock = PTHREAD_MUTEX_INITIALIZER;

void scram_client_cache_wipe(void)
{
    pthread_mutex_lock(&salt_cache_lock);
    OPENSSL_cleanse(salt_cache, sizeof(salt_cache));
    pthread_mutex_unlock(&salt_cache_lock);
}

static int salted_password(const char *password, const unsigned char *salt, size_t salt_len,
                           int iterations, unsigned char out[SHA256_LEN])
{
    unsigned char key[SHA256_LEN];
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int klen = 0;
    uint32_t it = (uint32_t)iterations;
    size_t pl = strlen(password);
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, &pl, sizeof(pl)) == 1 &&
             EVP_DigestUpdate(ctx, password, pl) == 1 &&
             EVP_DigestUpdate(ctx, salt, salt_len) == 1 &&
             EVP_DigestUpdate(ctx, &it, sizeof(it)) == 1 &&
             EVP_DigestFinal_ex(ctx, key, &klen) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok) return -EIO;
    pthread_mutex_lock(&salt_cache_lock);
    for (int i = 0; i < SALT_CACHE_SIZE; i++) {
        if (salt_cache[i].used && CRYPTO_memcmp(salt_cache[i].key, key, SHA256_LEN) == 0) {
            memcpy(out, salt_cache[i].value, SHA256_LEN);
            pthread_mutex_unlock(&salt_cache_lock);
            OPENSSL_cleanse(key, sizeof(key));
            return 0;
        }
    }
    pthread_mutex_unlock(&salt_cache_lock);
    if (PKCS5_PBKDF2_HMAC(password, (int)pl, salt, (int)salt_len, iterations, EVP_sha256(),
                          SHA256_LEN, out) != 1) {
        OPENSSL_cleanse(key, sizeof(key));
        return -EIO;
    }
    pthread_mutex_lock(&salt_cache_lock);
    salt_cache_entry *e = &salt_cache[salt_cache_next++ % SALT_CACHE_SIZE];
    memcpy(e->key, key, SHA256_LEN);
    memcpy(e->value, out, SHA256_LEN);
    e->used = true;
    pthread_mutex_unlock(&salt_cache_lock);
    OPENSSL_cleanse(key, sizeof(key));
    return 0;
}

static int scram_final(scram_client *sc, const char *msg, size_t len, char *out,
                       size_t outcap, size_t *outlen)
{
    server_first_msg m;
    unsigned char client_key[SHA256_LEN], stored_key[SHA256_LEN], client_sig[SHA256_LEN];
    unsigned char proof[SHA256_LEN], server_key[SHA256_LEN];
    char auth_msg[3 * SCRAM_MAX_MSG + 2];
    char proof_b64[(SHA256_LEN + 2) / 3 * 4 + 1];
    size_t al = 0, fl = 0;
    int r;

    if (len == 0 || len >= sizeof(sc->server_first) || memchr(msg, '\0', len) != NULL)
        return -EPROTO;
    if ((r = parse_server_first(sc, msg, len, &m)) < 0) return r;
    sc->server_iterations = m.iterations;
    /* The bound protects the caller's thread from PBKDF2 with a count the
     * server chose; with keys nothing is derived, so nothing to protect. */
    int max = sc->max_iterations > 0 ? sc->max_iterations : SCRAM_MAX_ITERATIONS;
    if (!sc->use_keys && m.iterations > max) return -ERANGE;
    memcpy(sc->server_first, msg, len);
    sc->server_first[len] = '\0';

    char *cf = sc->client_final_without_proof;
    size_t cfcap = sizeof(sc->client_final_without_proof);
    cf[0] = '\0';
    /* c= is the gs2 header echoed back ("biws" is base64("n,,")) followed,
     * with channel binding, by the hash of the certificate the server
     * presented on this connection: a man in the middle terminating TLS
     * with another certificate makes the server see a different c=. */
    unsigned char cbin[sizeof(CBIND_HEADER) + SCRAM_MAX_CBIND_LEN];
    char cb64[(sizeof(cbin) + 2) / 3 * 4 + 1];
    const char *gs2 = gs2_header(sc);
    size_t cbl = strlen(gs2);
    memcpy(cbin, gs2, cbl);
    if (sc->cbind_flag == 'p') {
        memcpy(cbin + cbl, sc->cbind, sc->cbind_len);
        cbl += sc->cbind_len;
    }
    int c64 = b64_encode(cbin, cbl, cb64, sizeof(cb64));
    if (c64 < 0) {
        r = -EIO;
        goto out;
    }
    if ((r = append(cf, cfcap, &fl, "c=", 2)) < 0 ||
        (r = append(cf, cfcap, &fl, cb64, (size_t)c64)) < 0 ||
        (r = append(cf, cfcap, &fl, ",r=", 3)) < 0 ||
        (r = append(cf, cfcap, &fl, m.nonce, m.nonce_len)) < 0)
        goto out;

    size_t bl = strlen(sc->client_first_bare);
    if ((r = append(auth_msg, sizeof(auth_msg), &al, sc->client_first_bare, bl)) < 0 ||
        (r = append(auth_msg, sizeof(auth_msg), &al, ",", 1)) < 0 ||
        (r = append(auth_msg, sizeof(auth_msg), &al, sc->server_first, len)) < 0 ||
        (r = append(auth_msg, sizeof(auth_msg), &al, ",", 1)) < 0 ||
        (r = append(auth_msg, sizeof(auth_msg), &al, cf, fl)) < 0)
        goto out;

    if (sc->use_keys) {
        /* Keys are bound to the salt and count they were made with; with
         * another salt the proof would be wrong and the server would only
         * say "password authentication failed", so say why here. */
        if (m.salt_len != sc->keys.salt_len || m.iterations != sc->keys.iterations ||
            memcmp(m.salt, sc->keys.salt, m.salt_len) != 0) {
            r = -EKEYREJECTED;
            goto out;
        }
        memcpy(client_key, sc->keys.client_key, SHA256_LEN);
        memcpy(server_key, sc->keys.server_key, SHA256_LEN);
    } else {
        r = -EIO;
        if (salted_password(sc->password, m.salt, m.salt_len, m.iterations,
                            sc->salted_password) < 0 ||
            hmac256(sc->salted_password, SHA256_LEN, "Client Key", 10, client_key) < 0 ||
            hmac256(sc->salted_password, SHA256_LEN, "Server Key", 10, server_key) < 0)
            goto out;
    }
    r = -EIO;
    if (sha256(client_key, SHA256_LEN, stored_key) < 0 ||
        hmac256(stored_key, SHA256_LEN, auth_msg, al, client_sig) < 0 ||
        hmac256(server_key, SHA256_LEN, auth_msg, al, sc->auth_message_sig) < 0)
        goto out;
    for (int i = 0; i < SHA256_LEN; i++) proof[i] = client_key[i] ^ client_sig[i];
    if (b64_encode(proof, SHA256_LEN, proof_b64, sizeof(proof_b64)) < 0) goto out;

    size_t ol = 0;
    if (fl + 3 + strlen(proof_b64) + 1 > outcap) {
        r = -ENOBUFS;
        goto out;
    }
    memcpy(out, cf, fl);
    ol = fl;
    memcpy(out + ol, ",p=", 3);
    ol += 3;
    memcpy(out + ol, proof_b64, strlen(proof_b64) + 1);
    ol += strlen(proof_b64);
    *outlen = ol;
    r = 0;

out:
    /* Only the expected ServerSignature is needed from here on. */
    OPENSSL_cleanse(sc->password, sizeof(sc->password));
    OPENSSL_cleanse(sc->salted_password, sizeof(sc->salted_password));
    OPENSSL_cleanse(&sc->keys, sizeof(sc->keys));
    OPENSSL_cleanse(client_key, sizeof(client_key));
    OPENSSL_cleanse(stored_key, sizeof(stored_key));
    OPENSSL_cleanse(client_sig, sizeof(client_sig));
    OPENSSL_cleanse(server_key, sizeof(server_key));
    OPENSSL_cleanse(proof, sizeof(proof));
    OPENSSL_cleanse(proof_b64, sizeof(proof_b64));
    return r;
}

int scram_client_final(scram_client *sc, const char *server_first, size_t len, char *out,
                       size_t outcap, size_t *outlen)
{
    if (sc->state != SC_FIRST_SENT) return -EINVAL;
    int r = scram_final(sc, server_first, len, out, outcap, outlen);
    if (r < 0) {
        OPENSSL_cleanse(sc->password, sizeof(sc->password));
        OPENSSL_cleanse(&sc->keys, sizeof(sc->keys));
        OPENSSL_cleanse(sc->auth_message_sig, sizeof(sc->auth_message_sig));
        sc->state = SC_FAILED;
        return r;
    }
    sc->state = SC_FINAL_SENT;
    return 0;
}

int scram_client_verify(scram_client *sc, const char *server_final, size_t len)
{
    unsigned char sig[SCRAM_MAX_MSG];
    int r = -EPROTO;

    if (sc->state != SC_FINAL_SENT) return -EINVAL;
    if (len >= 2 && server_final[0] == 'e' && server_final[1] == '=') {
        r = -EACCES; /* server-error, e.g. "e=invalid-proof" */
        goto out;
    }
    if (len < 2 || len > SCRAM_MAX_MSG || server_final[0] != 'v' || server_final[1] != '=' ||
        memchr(server_final, '\0', len) != NULL)
        goto out;
    /* No extensions after the verifier either: a ',' fails the base64 check. */
    int n = b64_decode(server_final + 2, len - 2, sig, sizeof(sig));
    if (n != SHA256_LEN) goto out;
    r = CRYPTO_memcmp(sig, sc->auth_message_sig, SHA256_LEN) == 0 ? 0 : -EACCES;

out:
    OPENSSL_cleanse(sc->auth_message_sig, sizeof(sc->auth_message_sig));
    sc->state = r == 0 ? SC_DONE : SC_FAILED;
    return r;
}

bool scram_client_done(const scram_client *sc)
{
    return sc->state == SC_DONE;
}

/* ==== server side: verifying pgscale's own clients ======================== */

/* ---- stored secrets and md5 ---------------------------------------------- */

static bool md5_hash_text(const char *s, size_t n)
{
    if (n != 35 || memcmp(s, "md5", 3) != 0) return false;
    for (size_t i = 3; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

auth_secret_kind auth_secret_classify(const char *secret)
{
    /* PostgreSQL's get_password_type: lowercase hex only, exact length. */
    if (md5_hash_text(secret, strlen(secret))) return AUTH_SECRET_MD5;
    if (strncmp(secret, "SCRAM-SHA-256$", 14) == 0) return AUTH_SECRET_SCRAM;
    return AUTH_SECRET_PLAIN;
}

int auth_random_bytes(void *buf, size_t len)
{
    if (len > INT32_MAX) return -EINVAL;
    return RAND_bytes(buf, (int)len) == 1 ? 0 : -EIO;
}

int auth_md5_verify(const char *user, const char *secret, const uint8_t salt[4],
                    const char *response, size_t len)
{
    unsigned char d[16];
    char inner[33], expect[36];
    int r = -EIO;

    switch (auth_secret_classify(secret)) {
    case AUTH_SECRET_SCRAM:
        return -EOPNOTSUPP;
    case AUTH_SECRET_MD5:
        memcpy(inner, secret + 3, 32);
        inner[32] = '\0';
        break;
    case AUTH_SECRET_PLAIN:
    default:
        if (md5_two(secret, strlen(secret), user, strlen(user), d) < 0) goto out;
        hex32(d, inner);
        break;
    }
    if (md5_two(inner, 32, salt, 4, d) < 0) goto out;
    memcpy(expect, "md5", 3);
    hex32(d, expect + 3);
    /* The length is not secret (every good answer has 35 bytes); the bytes
     * are compared in constant time. */
    r = len == 35 && CRYPTO_memcmp(expect, response, 35) == 0 ? 0 : -EACCES;
out:
    OPENSSL_cleanse(d, sizeof(d));
    OPENSSL_cleanse(inner, sizeof(inner));
    OPENSSL_cleanse(expect, sizeof(expect));
    return r;
}

/* Decodes exactly want bytes of base64 from text[0..len). */
static bool b64_exact(const char *text, size_t len, unsigned char *out, size_t want)
{
    unsigned char tmp[SCRAM_MAX_MSG];
    if (len > SCRAM_MAX_MSG) return false;
    int n = b64_decode(text, len, tmp, sizeof(tmp));
    bool ok = n >= 0 && (size_t)n == want;
    if (ok) memcpy(out, tmp, want);
    OPENSSL_cleanse(tmp, sizeof(tmp));
    return ok;
}

int scram_secret_parse(const char *text, size_t len, scram_secret *out, const char **why)
{
    static const char prefix[] = "SCRAM-SHA-256$";
    const char *dummy;
    if (!why) why = &dummy;
    memset(out, 0, sizeof(*out));

    if (len > SCRAM_SECRET_MAX_TEXT) {
        *why = "SCRAM secret is longer than 256 bytes";
        return -EINVAL;
    }
    if (memchr(text, '\0', len) != NULL) {
        *why = "SCRAM secret contains a NUL byte";
        return -EINVAL;
    }
    if (len < sizeof(prefix) - 1 || memcmp(text, prefix, sizeof(prefix) - 1) != 0) {
        *why = "SCRAM secret does not start with \"SCRAM-SHA-256$\"";
        return -EINVAL;
    }
    const char *p = text + sizeof(prefix) - 1, *end = text + len;

    const char *colon = memchr(p, ':', (size_t)(end - p));
    if (!colon) {
        *why = "SCRAM secret has no ':' after the iteration count";
        return -EINVAL;
    }
    long it = 0;
    if (colon == p) {
        *why = "SCRAM secret has an empty iteration count";
        return -EINVAL;
    }
    for (const char *q = p; q < colon; q++) {
        if (*q < '0' || *q > '9') {
            *why = "SCRAM secret's iteration count is not a decimal number";
            return -EINVAL;
        }
        it = it * 10 + (*q - '0');
        if (it > SCRAM_MAX_ITERATIONS) break; /* also stops overflow */
    }
    if (it < 1 || it > SCRAM_MAX_ITERATIONS) {
        *why = "SCRAM secret's iteration count is out of range (1..10000000)";
        return -EINVAL;
    }
    p = colon + 1;

    const char *dollar = memchr(p, '$', (size_t)(end - p));
    if (!dollar) {
        *why = "SCRAM secret has no '$' after the salt";
        return -EINVAL;
    }
    unsigned char salt[SCRAM_MAX_MSG];
    int sl = b64_decode(p, (size_t)(dollar - p), salt, sizeof(salt));
    if (sl < 0) {
        *why = "SCRAM secret's salt is not valid base64";
        return -EINVAL;
    }
    if (sl <= 0 || sl > SCRAM_MAX_SALT_LEN) {
        *why = "SCRAM secret's salt is empty or longer than 64 bytes";
        return -EINVAL;
    }
    p = dollar + 1;

    colon = memchr(p, ':', (size_t)(end - p));
    if (!colon) {
        *why = "SCRAM secret has no ':' between StoredKey and ServerKey";
        return -EINVAL;
    }
    if (!b64_exact(p, (size_t)(colon - p), out->stored_key, SCRAM_KEY_LEN)) {
        *why = "SCRAM secret's StoredKey is not 32 bytes of base64";
        memset(out, 0, sizeof(*out));
        return -EINVAL;
    }
    p = colon + 1;
    if (!b64_exact(p, (size_t)(end - p), out->server_key, SCRAM_KEY_LEN)) {
        *why = "SCRAM secret's ServerKey is not 32 bytes of base64";
        OPENSSL_cleanse(out, sizeof(*out));
        return -EINVAL;
    }
    out->iterations = (int)it;
    out->salt_len = (size_t)sl;
    memcpy(out->salt, salt, (size_t)sl);
    *why = NULL;
    return 0;
}

int scram_secret_format(const scram_secret *s, char *out, size_t outcap)
{
    char salt[(SCRAM_MAX_SALT_LEN + 2) / 3 * 4 + 1];
    char sk[(SCRAM_KEY_LEN + 2) / 3 * 4 + 1], svk[sizeof(sk)];
    if (s->salt_len == 0 || s->salt_len > SCRAM_MAX_SALT_LEN) return -EINVAL;
    if (b64_encode(s->salt, s->salt_len, salt, sizeof(salt)) < 0 ||
        b64_encode(s->stored_key, SCRAM_KEY_LEN, sk, sizeof(sk)) < 0 ||
        b64_encode(s->server_key, SCRAM_KEY_LEN, svk, sizeof(svk)) < 0)
        return -EIO;
    int n = snprintf(out, outcap, "SCRAM-SHA-256$%d:%s$%s:%s", s->iterations, salt, sk, svk);
    if (n < 0) return -EIO;
    if ((size_t)n >= outcap) {
        if (outcap > 0) out[0] = '\0';
        return -ENOBUFS;
    }
    return n;
}

int scram_secret_derive(const char *password, const unsigned char *salt, size_t salt_len,
                        int iterations, scram_secret *out)
{
    unsigned char sp[SHA256_LEN], ck[SHA256_LEN];
    int r = -EIO;

    memset(out, 0, sizeof(*out));
    if (salt_len == 0 || salt_len > SCRAM_MAX_SALT_LEN || iterations < 1 ||
        iterations > SCRAM_MAX_ITERATIONS)
        return -EINVAL;
    size_t pl = strlen(password);
    if (pl > INT32_MAX) return -EINVAL;
    /* Not through salted_password(): its small cache is there for the
     * server logins pgscale repeats, and many client users would evict
     * those entries. */
    if (PKCS5_PBKDF2_HMAC(password, (int)pl, salt, (int)salt_len, iterations, EVP_sha256(),
                          SHA256_LEN, sp) != 1 ||
        hmac256(sp, SHA256_LEN, "Client Key", 10, ck) < 0 ||
        sha256(ck, SHA256_LEN, out->stored_key) < 0 ||
        hmac256(sp, SHA256_LEN, "Server Key", 10, out->server_key) < 0) {
        OPENSSL_cleanse(out, sizeof(*out));
        goto done;
    }
    out->iterations = iterations;
    out->salt_len = salt_len;
    memcpy(out->salt, salt, salt_len);
    r = 0;
done:
    OPENSSL_cleanse(sp, sizeof(sp));
    OPENSSL_cleanse(ck, sizeof(ck));
    return r;
}

int scram_secret_from_password(const char *password, scram_secret *out)
{
    unsigned char salt[SCRAM_DEFAULT_SALT_LEN];
    memset(out, 0, sizeof(*out));
    if (RAND_bytes(salt, sizeof(salt)) != 1) return -EIO;
    return scram_secret_derive(password, salt, sizeof(salt), SCRAM_DEFAULT_ITERATIONS, out);
}

int scram_mock_salt(const char *user, const unsigned char *key, size_t keylen,
                    unsigned char salt[SCRAM_DEFAULT_SALT_LEN])
{
    unsigned char mac[SHA256_LEN];
    /* A short or empty key would make the salt of every name computable,
     * and with it which names are real. */
    if (key == NULL || keylen < 16 || keylen > 1024) return -EINVAL;
    if (hmac256(key, keylen, user, strlen(user), mac) < 0) return -EIO;
    memcpy(salt, mac, SCRAM_DEFAULT_SALT_LEN);
    OPENSSL_cleanse(mac, sizeof(mac));
    return 0;
}

/* ---- SCRAM verifier ------------------------------------------------------ */

enum {
    SS_NONE = 0,   /* zeroed struct */
    SS_INIT,       /* waiting for client-first */
    SS_FIRST_SENT, /* server-first written, waiting for client-final */
    SS_DONE,       /* proof verified */
    SS_FAILED,
};

#define SERVER_NONCE_RAW 18 /* 24 base64 characters, as PostgreSQL */
#define MAX_CLIENT_NONCE 512

/* Every failure inside the exchange ends it and forgets the secret.  The
 * same reason text serves a wrong password and a mock user: it goes to the
 * log, and it must not matter if it ever reaches a client. */
static int ss_fail(scram_server *ss, int r, const char *why)
{
    OPENSSL_cleanse(&ss->secret, sizeof(ss->secret));
    OPENSSL_cleanse(ss->client_key, sizeof(ss->client_key));
    ss->reason = why;
    ss->state = SS_FAILED;
    return r;
}

static int ss_start(scram_server *ss, const unsigned char *cbind, size_t cbind_len)
{
    unsigned char raw[SERVER_NONCE_RAW];
    if (cbind_len > SCRAM_MAX_CBIND_LEN || (cbind_len > 0 && cbind == NULL)) return -EINVAL;
    if (RAND_bytes(raw, sizeof(raw)) != 1) return -EIO;
    if (b64_encode(raw, sizeof(raw), ss->server_nonce, sizeof(ss->server_nonce)) < 0)
        return -EIO;
    if (cbind_len > 0) memcpy(ss->cbind, cbind, cbind_len);
    ss->cbind_len = cbind_len;
    return 0;
}

int scram_server_init(scram_server *ss, const scram_secret *secret, const unsigned char *cbind,
                      size_t cbind_len)
{
    OPENSSL_cleanse(ss, sizeof(*ss));
    if (secret == NULL || secret->salt_len == 0 || secret->salt_len > SCRAM_MAX_SALT_LEN ||
        secret->iterations < 1 || secret->iterations > SCRAM_MAX_ITERATIONS)
        return -EINVAL;
    int r = ss_start(ss, cbind, cbind_len);
    if (r < 0) return r;
    memcpy(&ss->secret, secret, sizeof(ss->secret));
    ss->state = SS_INIT;
    return 0;
}

int scram_server_init_mock(scram_server *ss, const char *user, const unsigned char *key,
                           size_t keylen, const unsigned char *cbind, size_t cbind_len)
{
    OPENSSL_cleanse(ss, sizeof(*ss));
    int r = scram_mock_salt(user, key, keylen, ss->secret.salt);
    if (r < 0) return r;
    if ((r = ss_start(ss, cbind, cbind_len)) < 0) return r;
    /* As PostgreSQL's mock_scram_secret: the keys stay zero, the proof is
     * still computed and compared, and final fails because of `mock`. */
    ss->secret.salt_len = SCRAM_DEFAULT_SALT_LEN;
    ss->secret.iterations = SCRAM_DEFAULT_ITERATIONS;
    ss->mock = true;
    ss->state = SS_INIT;
    return 0;
}

int scram_server_set_nonce(scram_server *ss, const char *nonce)
{
    if (ss->state != SS_INIT) return -EINVAL;
    size_t n = strlen(nonce);
    if (n == 0 || n >= sizeof(ss->server_nonce)) return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!nonce_char((unsigned char)nonce[i])) return -EINVAL;
    memcpy(ss->server_nonce, nonce, n + 1);
    return 0;
}

static bool is_letter(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* An optional extension attribute "x=value" (any letter). */
static int take_any_attr(const char **p, const char *end, const char **val, size_t *vlen)
{
    if (end - *p < 2 || !is_letter((unsigned char)(*p)[0])) return -EPROTO;
    return take_attr(p, end, (*p)[0], val, vlen);
}

static bool mech_is(const char *mech, size_t len, const char *name)
{
    return mech != NULL && len == strlen(name) && memcmp(mech, name, len) == 0;
}

int scram_server_first(scram_server *ss, const char *mech, size_t mech_len,
                       const char *msg, size_t len, char *out, size_t outcap, size_t *outlen)
{
    const char *v;
    size_t vl;

    if (ss->state != SS_INIT) {
        ss->reason = "SCRAM step out of order";
        return -EINVAL;
    }
    bool plus;
    if (mech_is(mech, mech_len, SCRAM_MECH)) {
        plus = false;
    } else if (mech_is(mech, mech_len, SCRAM_MECH_PLUS)) {
        if (ss->cbind_len == 0)
            return ss_fail(ss, -EPROTO,
                           "client selected SCRAM-SHA-256-PLUS, which was not offered "
                           "(no channel binding on this connection)");
        plus = true;
    } else {
        return ss_fail(ss, -EPROTO, "client selected an unsupported SASL mechanism");
    }
    if (msg == NULL || len == 0 || len >= SCRAM_MAX_MSG)
        return ss_fail(ss, -EPROTO, "client-first-message is empty or longer than 1023 bytes");
    if (memchr(msg, '\0', len) != NULL)
        return ss_fail(ss, -EPROTO, "client-first-message contains a NUL byte");

    const char *p = msg, *end = msg + len;
    char flag = *p;
    /* gs2-header: cbind-flag "," [authzid] "," */
    switch (flag) {
    case 'n':
    case 'y':
        if (end - p < 2 || p[1] != ',')
            return ss_fail(ss, -EPROTO,
                           "malformed gs2 header: no ',' after the channel-binding flag");
        p += 2;
        if (plus)
            return ss_fail(ss, -EPROTO,
                           "client selected SCRAM-SHA-256-PLUS, but its message does not "
                           "include channel binding");
        /* "y": the client could bind but believes we cannot.  We offered
         * -PLUS, so someone in between removed it: a downgrade. */
        if (flag == 'y' && ss->cbind_len > 0)
            return ss_fail(ss, -EPROTO,
                           "SCRAM channel binding negotiation error: the client supports "
                           "channel binding but thinks the server does not, though "
                           "SCRAM-SHA-256-PLUS was offered");
        break;
    case 'p':
        if (take_attr(&p, end, 'p', &v, &vl) < 0 || v + vl == end)
            return ss_fail(ss, -EPROTO, "malformed gs2 header: bad channel-binding type");
        if (!plus)
            return ss_fail(ss, -EPROTO,
                           "client selected SCRAM-SHA-256 without channel binding, but its "
                           "message includes channel binding data");
        if (vl != strlen("tls-server-end-point") || memcmp(v, "tls-server-end-point", vl) != 0)
            return ss_fail(ss, -EPROTO,
                           "unsupported SCRAM channel-binding type (only "
                           "tls-server-end-point is supported)");
        break;
    default:
        return ss_fail(ss, -EPROTO, "malformed gs2 header: unexpected channel-binding flag");
    }
    if (p < end && *p == 'a')
        return ss_fail(ss, -EPROTO,
                       "client uses an authorization identity (a=), which is not supported");
    if (p == end || *p != ',')
        return ss_fail(ss, -EPROTO, "malformed gs2 header: no ',' after the authzid field");
    p++;

    const char *bare = p;
    if (p < end && *p == 'm')
        return ss_fail(ss, -EPROTO, "client requires an unsupported SCRAM extension (m=)");
    /* The SCRAM user name is ignored, as PostgreSQL does: the startup
     * packet's user is the one being authenticated. */
    if (take_attr(&p, end, 'n', &v, &vl) < 0 || v + vl == end)
        return ss_fail(ss, -EPROTO, "client-first-message has no user name attribute (n=)");
    if (take_attr(&p, end, 'r', &v, &vl) < 0 || vl == 0)
        return ss_fail(ss, -EPROTO, "client-first-message has no nonce (r=)");
    if (vl > MAX_CLIENT_NONCE)
        return ss_fail(ss, -EPROTO, "client nonce is longer than 512 bytes");
    for (size_t i = 0; i < vl; i++)
        if (!nonce_char((unsigned char)v[i]))
            return ss_fail(ss, -EPROTO, "non-printable characters in SCRAM nonce");
    const char *cnonce = v;
    size_t cnl = vl;
    /* Optional extensions after the nonce are ignored (PostgreSQL does the
     * same); they are still part of the AuthMessage the proof covers. */
    while (v + vl < end) { /* a ',' followed the last value: another attribute */
        if (take_any_attr(&p, end, &v, &vl) < 0)
            return ss_fail(ss, -EPROTO, "malformed attribute in client-first-message");
    }

    size_t bl = (size_t)(end - bare);
    memcpy(ss->client_first_bare, bare, bl);
    ss->client_first_bare[bl] = '\0';

    size_t snl = strlen(ss->server_nonce);
    memcpy(ss->nonce, cnonce, cnl);
    memcpy(ss->nonce + cnl, ss->server_nonce, snl + 1);

    char salt[(SCRAM_MAX_SALT_LEN + 2) / 3 * 4 + 1];
    if (b64_encode(ss->secret.salt, ss->secret.salt_len, salt, sizeof(salt)) < 0)
        return ss_fail(ss, -EIO, "base64 encoding failed");
    int n = snprintf(ss->server_first, sizeof(ss->server_first), "r=%s,s=%s,i=%d", ss->nonce,
                     salt, ss->secret.iterations);
    if (n < 0 || (size_t)n >= sizeof(ss->server_first))
        return ss_fail(ss, -EPROTO, "client nonce is too long");
    if ((size_t)n + 1 > outcap)
        return ss_fail(ss, -ENOBUFS, "output buffer too small for server-first-message");
    memcpy(out, ss->server_first, (size_t)n + 1);
    *outlen = (size_t)n;
    ss->plus = plus;
    ss->cbind_flag = flag;
    ss->state = SS_FIRST_SENT;
    return 0;
}

/* The bytes c= must carry: the gs2 header the client sent (it had no
 * authzid, so it is one of three) and, with -PLUS, the certificate hash. */
static size_t expected_cbind(const scram_server *ss, unsigned char *out)
{
    if (ss->cbind_flag == 'p') {
        memcpy(out, CBIND_HEADER, strlen(CBIND_HEADER));
        memcpy(out + strlen(CBIND_HEADER), ss->cbind, ss->cbind_len);
        return strlen(CBIND_HEADER) + ss->cbind_len;
    }
    out[0] = (unsigned char)ss->cbind_flag;
    out[1] = ',';
    out[2] = ',';
    return 3;
}

static int server_final(scram_server *ss, const char *msg, size_t len, char *out,
                        size_t outcap, size_t *outlen)
{
    const char *v;
    size_t vl;

    if (msg == NULL || len == 0 || len >= SCRAM_MAX_MSG)
        return ss_fail(ss, -EPROTO, "client-final-message is empty or longer than 1023 bytes");
    if (memchr(msg, '\0', len) != NULL)
        return ss_fail(ss, -EPROTO, "client-final-message contains a NUL byte");
    const char *p = msg, *end = msg + len;

    unsigned char cb[SCRAM_MAX_MSG], want[sizeof(CBIND_HEADER) + SCRAM_MAX_CBIND_LEN];
    if (take_attr(&p, end, 'c', &v, &vl) < 0 || v + vl == end)
        return ss_fail(ss, -EPROTO, "client-final-message has no channel binding (c=)");
    int cbl = b64_decode(v, vl, cb, sizeof(cb));
    if (cbl < 0)
        return ss_fail(ss, -EPROTO, "channel binding (c=) is not valid base64");
    size_t wl = expected_cbind(ss, want);
    if ((size_t)cbl != wl || memcmp(cb, want, wl) != 0)
        return ss_fail(ss, -EPROTO,
                       ss->cbind_flag == 'p'
                           ? "SCRAM channel binding check failed: the client saw another "
                             "server certificate (a TLS proxy in between?)"
                           : "channel binding (c=) does not repeat the gs2 header of "
                             "client-first-message");

    if (take_attr(&p, end, 'r', &v, &vl) < 0 || v + vl == end)
        return ss_fail(ss, -EPROTO, "client-final-message has no nonce (r=)");
    if (vl != strlen(ss->nonce) || memcmp(v, ss->nonce, vl) != 0)
        return ss_fail(ss, -EPROTO, "nonce in client-final-message does not match");

    /* Extensions may come before the proof; the proof is last. */
    const char *proof_at;
    for (;;) {
        proof_at = p;
        if (end - p >= 2 && p[0] == 'p' && p[1] == '=') break;
        if (take_any_attr(&p, end, &v, &vl) < 0 || v + vl == end)
            return ss_fail(ss, -EPROTO, "client-final-message has no proof (p=)");
    }
    if (take_attr(&p, end, 'p', &v, &vl) < 0 || v + vl != end)
        return ss_fail(ss, -EPROTO, "garbage after the proof in client-final-message");
    unsigned char proof[SHA256_LEN];
    if (!b64_exact(v, vl, proof, SHA256_LEN))
        return ss_fail(ss, -EPROTO, "proof (p=) is not 32 bytes of base64");

    /* AuthMessage = client-first-message-bare "," server-first-message ","
     * client-final-message-without-proof (everything before ",p="). */
    char am[3 * SCRAM_MAX_MSG + 2];
    size_t al = 0;
    if (append(am, sizeof(am), &al, ss->client_first_bare, strlen(ss->client_first_bare)) < 0 ||
        append(am, sizeof(am), &al, ",", 1) < 0 ||
        append(am, sizeof(am), &al, ss->server_first, strlen(ss->server_first)) < 0 ||
        append(am, sizeof(am), &al, ",", 1) < 0 ||
        append(am, sizeof(am), &al, msg, (size_t)(proof_at - 1 - msg)) < 0)
        return ss_fail(ss, -EPROTO, "SCRAM messages too long");

    unsigned char sig[SHA256_LEN], ck[SHA256_LEN], h[SHA256_LEN];
    int r;
    if (hmac256(ss->secret.stored_key, SHA256_LEN, am, al, sig) < 0) {
        r = ss_fail(ss, -EIO, "HMAC failed");
        goto out;
    }
    for (int i = 0; i < SHA256_LEN; i++) ck[i] = proof[i] ^ sig[i];
    if (sha256(ck, SHA256_LEN, h) < 0) {
        r = ss_fail(ss, -EIO, "SHA-256 failed");
        goto out;
    }
    bool match = CRYPTO_memcmp(h, ss->secret.stored_key, SHA256_LEN) == 0;
    if (!match || ss->mock) {
        r = ss_fail(ss, -EACCES, "SCRAM proof does not match (wrong password or unknown user)");
        goto out;
    }
    unsigned char ssig[SHA256_LEN];
    char sb64[(SHA256_LEN + 2) / 3 * 4 + 1];
    if (hmac256(ss->secret.server_key, SHA256_LEN, am, al, ssig) < 0 ||
        b64_encode(ssig, SHA256_LEN, sb64, sizeof(sb64)) < 0) {
        r = ss_fail(ss, -EIO, "HMAC failed");
        goto out;
    }
    size_t sl = strlen(sb64);
    if (2 + sl + 1 > outcap) {
        r = ss_fail(ss, -ENOBUFS, "output buffer too small for server-final-message");
        goto out;
    }
    memcpy(out, "v=", 2);
    memcpy(out + 2, sb64, sl + 1);
    *outlen = 2 + sl;
    memcpy(ss->client_key, ck, SHA256_LEN);
    ss->state = SS_DONE;
    r = 0;
out:
    OPENSSL_cleanse(proof, sizeof(proof));
    OPENSSL_cleanse(sig, sizeof(sig));
    OPENSSL_cleanse(ck, sizeof(ck));
    OPENSSL_cleanse(h, sizeof(h));
    return r;
}

int scram_server_final(scram_server *ss, const char *client_final, size_t len, char *out,
                       size_t outcap, size_t *outlen)
{
    if (ss->state != SS_FIRST_SENT) {
        ss->reason = "SCRAM step out of order";
        return -EINVAL;
    }
    return server_final(ss, client_final, len, out, outcap, outlen);
}

bool scram_server_done(const scram_server *ss)
{
    return ss->state == SS_DONE;
}

int scram_server_keys(const scram_server *ss, scram_keys *out)
{
    if (ss->state != SS_DONE) return -EINVAL;
    memcpy(out->client_key, ss->client_key, SCRAM_KEY_LEN);
    memcpy(out->server_key, ss->secret.server_key, SCRAM_KEY_LEN);
    memcpy(out->salt, ss->secret.salt, ss->secret.salt_len);
    out->salt_len = ss->secret.salt_len;
    out->iterations = ss->secret.iterations;
    return 0;
}

const char *scram_server_error(const scram_server *ss)
{
    return ss->reason;
}

void scram_server_clear(scram_server *ss)
{
    OPENSSL_cleanse(ss, sizeof(*ss));
}
