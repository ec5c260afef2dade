/* libFuzzer driver for the server side of auth.  The whole input goes to
 * the users-file reader and to the SCRAM secret parser.  Then the input is
 * read as a SCRAM exchange: the first byte picks the mechanism, whether
 * channel binding is offered and whether the user is a mock; up to the
 * first '\n' is client-first-message, the rest client-final-message.  The
 * server nonce is fixed ("SN") so that the fuzzer can reach the proof check
 * by echoing the combined nonce, and the secret needs no PBKDF2, so runs
 * are fast.  Every message goes in as an exact-size heap copy so ASan sees
 * any read past its length; everything is freed, so LeakSanitizer reports
 * leaks on error paths. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "authfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The RFC 7677 password "pencil" as a PostgreSQL secret. */
static const char SECRET[] =
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
static const unsigned char KEY[16] = "fuzz-mock-key-16";
static const unsigned char CBIND[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};

static char *dup_exact(const uint8_t *p, size_t n)
{
    char *c = malloc(n ? n : 1);
    if (n) memcpy(c, p, n);
    return c;
}

static void fuzz_users_file(const uint8_t *data, size_t size)
{
    char err[256];
    authfile *f = NULL;
    char *buf = dup_exact(data, size);
    if (authfile_parse("fuzz.txt", buf, size, &f, err, sizeof(err)) == 0) {
        /* Look up the first user name-like token, then walk the methods of
         * whatever is found; md5 checks are cheap, SCRAM derivation of a
         * plaintext secret is not (PBKDF2), so only stored SCRAM secrets
         * go through authfile_scram_secret. */
        const authfile_entry *e = authfile_lookup(f, "u");
        if (!e && authfile_count(f) > 0) e = authfile_lookup(f, "a");
        if (e) {
            static const uint8_t salt[4] = {1, 2, 3, 4};
            (void)authfile_check_method(e, AUTH_METHOD_MD5, err, sizeof(err));
            (void)authfile_check_method(e, AUTH_METHOD_SCRAM, err, sizeof(err));
            (void)authfile_md5_verify(e, salt, "md5", 3, err, sizeof(err));
            if (e->kind == AUTH_SECRET_SCRAM) {
                scram_secret s;
                (void)authfile_scram_secret(e, KEY, sizeof(KEY), &s, err, sizeof(err));
            }
        }
        authfile_free(f);
    }
    free(buf);
}

static void fuzz_secret(const uint8_t *data, size_t size)
{
    scram_secret s;
    const char *why;
    char *buf = dup_exact(data, size);
    if (scram_secret_parse(buf, size, &s, &why) == 0) {
        char text[SCRAM_SECRET_MAX_TEXT];
        int n = scram_secret_format(&s, text, sizeof(text));
        /* Whatever parses formats back to something that parses. */
        if (n < 0 || scram_secret_parse(text, (size_t)n, &s, &why) != 0) abort();
    }
    free(buf);
}

static void fuzz_exchange(const uint8_t *data, size_t size)
{
    if (size < 1) return;
    uint8_t mode = data[0];
    data++;
    size--;
    const uint8_t *nl = memchr(data, '\n', size);
    size_t l1 = nl ? (size_t)(nl - data) : size;
    const uint8_t *d2 = nl ? nl + 1 : NULL;
    size_t l2 = nl ? size - l1 - 1 : 0;

    scram_server ss;
    scram_secret sec;
    const unsigned char *cb = (mode & 2) ? CBIND : NULL;
    size_t cbl = (mode & 2) ? sizeof(CBIND) : 0;
    int r;
    if (mode & 4) {
        r = scram_server_init_mock(&ss, "ghost", KEY, sizeof(KEY), cb, cbl);
    } else {
        if (scram_secret_parse(SECRET, strlen(SECRET), &sec, NULL) != 0) abort();
        r = scram_server_init(&ss, &sec, cb, cbl);
    }
    if (r != 0 || scram_server_set_nonce(&ss, "SN") != 0) abort();

    const char *mech = (mode & 1) ? SCRAM_MECH_PLUS : SCRAM_MECH;
    char out[SCRAM_MAX_MSG];
    size_t ol = 0;
    char *m1 = dup_exact(data, l1);
    r = scram_server_first(&ss, mech, strlen(mech), m1, l1, out, sizeof(out), &ol);
    free(m1);
    if (r == 0) {
        if (ol != strlen(out)) abort();
        if (d2) {
            char *m2 = dup_exact(d2, l2);
            r = scram_server_final(&ss, m2, l2, out, sizeof(out), &ol);
            free(m2);
            scram_keys k;
            if (r == 0 && (scram_server_keys(&ss, &k) != 0 || (mode & 4))) abort();
        }
    }
    if (r != 0 && scram_server_error(&ss) == NULL) abort();
    scram_server_clear(&ss);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_users_file(data, size);
    fuzz_secret(data, size);
    fuzz_exchange(data, size);
    return 0;
}
