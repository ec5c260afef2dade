/* Client side of authentication toward PostgreSQL servers: the md5 password
 * response and the SCRAM-SHA-256 SASL exchange (RFC 5802/7677, as PostgreSQL
 * speaks it).  Pure functions over byte buffers, crypto from OpenSSL.  It does
 * not frame or send protocol messages (proto/server do) and does not
 * authenticate clients of the pooler. */
#include "auth.h"

#include <errno.h>
#include <pthread.h>
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

int scram_client_first(scram_client *sc, char *out, size_t outcap, size_t *outlen)
{
    if (sc->state != SC_INIT) return -EINVAL;
    /* gs2-header "n,," — no channel binding, no authzid. */
    size_t bl = strlen(sc->client_first_bare);
    if (bl + 3 + 1 > outcap) return -ENOBUFS;
    memcpy(out, "n,,", 3);
    memcpy(out + 3, sc->client_first_bare, bl + 1);
    *outlen = bl + 3;
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
    memcpy(sc->server_first, msg, len);
    sc->server_first[len] = '\0';

    char *cf = sc->client_final_without_proof;
    size_t cfcap = sizeof(sc->client_final_without_proof);
    cf[0] = '\0';
    /* "biws" is base64("n,,"): the gs2-header echoed back, no binding. */
    if ((r = append(cf, cfcap, &fl, "c=biws,r=", 9)) < 0 ||
        (r = append(cf, cfcap, &fl, m.nonce, m.nonce_len)) < 0)
        goto out;

    size_t bl = strlen(sc->client_first_bare);
    if ((r = append(auth_msg, sizeof(auth_msg), &al, sc->client_first_bare, bl)) < 0 ||
        (r = append(auth_msg, sizeof(auth_msg), &al, ",", 1)) < 0 ||
        (r = append(auth_msg, sizeof(auth_msg), &al, sc->server_first, len)) < 0 ||
        (r = append(auth_msg, sizeof(auth_msg), &al, ",", 1)) < 0 ||
        (r = append(auth_msg, sizeof(auth_msg), &al, cf, fl)) < 0)
        goto out;

    r = -EIO;
    if (salted_password(sc->password, m.salt, m.salt_len, m.iterations, sc->salted_password) < 0)
        goto out;
    if (hmac256(sc->salted_password, SHA256_LEN, "Client Key", 10, client_key) < 0 ||
        sha256(client_key, SHA256_LEN, stored_key) < 0 ||
        hmac256(stored_key, SHA256_LEN, auth_msg, al, client_sig) < 0 ||
        hmac256(sc->salted_password, SHA256_LEN, "Server Key", 10, server_key) < 0 ||
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
