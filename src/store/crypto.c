/* crypto.c - master key loading and checks, subkey derivation, sealing (see crypto.h).
 *
 * This file is the only one that calls libsodium's AEAD and KDF directly. The master key
 * and its three subkeys share one sodium_malloc region (4 x 32 bytes), made read-only
 * after derivation. Parsing accepts hex or base64 text so the key can travel in an
 * environment variable; a raw 32-byte key file is accepted too.
 *
 * It does not decide what is associated data for an object (store.c does) and never
 * writes a key to disk or to a message. */
#include "store/crypto.h"

#include "base/mem.h"

#include <sodium.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_FILE_MAX 4096 /* bytes read from a key file */

struct mc_master_key {
    uint8_t master[MC_CRYPTO_KEY_BYTES];
    uint8_t wrap[MC_CRYPTO_KEY_BYTES];
    uint8_t pepper[MC_CRYPTO_KEY_BYTES];
    uint8_t check[MC_CRYPTO_KEY_BYTES];
};

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_rc;

static void init_sodium(void) {
    init_rc = sodium_init() < 0 ? MC_EINTERNAL : MC_OK;
}

int mc_crypto_init(struct mc_err *err) {
    pthread_once(&init_once, init_sodium);
    if (init_rc != MC_OK)
        return mc_err_set(err, MC_EINTERNAL, "libsodium failed to initialise");
    return MC_OK;
}

/* ---------------------------------------------------------------------------------------
 * Master key */

static const char KEY_HINT[] = "make one with: head -c 32 /dev/urandom | base64";

/* Decodes text (whitespace trimmed) as hex or base64 into key. Returns MC_OK, or
 * MC_EINVAL with a message that says what was wrong but not what the text was. */
static int decode_key_text(const char *text, uint8_t key[MC_CRYPTO_KEY_BYTES], struct mc_err *err) {
    while (*text == ' ' || *text == '\t' || *text == '\n' || *text == '\r')
        text++;
    size_t n = strlen(text);
    while (n > 0 && (text[n - 1] == ' ' || text[n - 1] == '\t' || text[n - 1] == '\n' ||
                     text[n - 1] == '\r'))
        n--;
    if (n == 0)
        return mc_err_set(err, MC_EINVAL, "master key is empty; %s", KEY_HINT);

    size_t n_hex = 0;
    while (n_hex < n && strchr("0123456789abcdefABCDEF", text[n_hex]))
        n_hex++;
    if (n_hex == n && n != 2 * MC_CRYPTO_KEY_BYTES && n > 8)
        return mc_err_set(err, MC_EINVAL, "master key has %zu hex digits, expected %d; %s", n,
                          2 * MC_CRYPTO_KEY_BYTES, KEY_HINT);

    uint8_t buf[64];
    size_t got = 0;
    const char *end = NULL;
    if (n == 2 * MC_CRYPTO_KEY_BYTES &&
        sodium_hex2bin(buf, sizeof(buf), text, n, NULL, &got, &end) == 0 && end == text + n) {
        /* decoded as hex */
    } else {
        static const int variants[] = {
            sodium_base64_VARIANT_ORIGINAL, sodium_base64_VARIANT_ORIGINAL_NO_PADDING,
            sodium_base64_VARIANT_URLSAFE, sodium_base64_VARIANT_URLSAFE_NO_PADDING};
        int ok = 0;
        for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]) && !ok; i++) {
            ok = sodium_base642bin(buf, sizeof(buf), text, n, NULL, &got, &end, variants[i]) == 0 &&
                 end == text + n;
        }
        if (!ok) {
            sodium_memzero(buf, sizeof(buf));
            return mc_err_set(err, MC_EINVAL,
                              "master key (%zu characters) is neither 64 hex digits nor "
                              "base64 of 32 bytes; %s",
                              n, KEY_HINT);
        }
    }
    if (got != MC_CRYPTO_KEY_BYTES) {
        sodium_memzero(buf, sizeof(buf));
        return mc_err_set(err, MC_EINVAL, "master key decodes to %zu bytes, expected %d; %s", got,
                          MC_CRYPTO_KEY_BYTES, KEY_HINT);
    }
    memcpy(key, buf, MC_CRYPTO_KEY_BYTES);
    sodium_memzero(buf, sizeof(buf));
    return MC_OK;
}

/* Refuses keys that cannot have come from a random source. */
static int check_key_strength(const uint8_t key[MC_CRYPTO_KEY_BYTES], struct mc_err *err) {
    uint8_t seen[256] = {0};
    int distinct = 0;
    for (int i = 0; i < MC_CRYPTO_KEY_BYTES; i++) {
        if (!seen[key[i]]++)
            distinct++;
    }
    sodium_memzero(seen, sizeof(seen));
    if (sodium_is_zero(key, MC_CRYPTO_KEY_BYTES))
        return mc_err_set(err, MC_EINVAL, "master key is all zero bytes; %s", KEY_HINT);
    if (distinct < MC_CRYPTO_MIN_DISTINCT_BYTES)
        return mc_err_set(err, MC_EINVAL,
                          "master key is weak: %d distinct byte values, at least %d "
                          "required (a random key has about 30); %s",
                          distinct, MC_CRYPTO_MIN_DISTINCT_BYTES, KEY_HINT);
    return MC_OK;
}

/* Builds the key object from 32 checked bytes: derives the subkeys, then locks the page. */
static int master_from_bytes(const uint8_t key[MC_CRYPTO_KEY_BYTES], struct mc_master_key **out,
                             struct mc_err *err) {
    struct mc_master_key *mk = sodium_malloc(sizeof(*mk));
    if (!mk)
        return mc_err_set(err, MC_ENOMEM, "cannot allocate secure memory for the master key");
    memcpy(mk->master, key, MC_CRYPTO_KEY_BYTES);
    crypto_kdf_derive_from_key(mk->wrap, sizeof(mk->wrap), 1, "mcaiwrap", mk->master);
    crypto_kdf_derive_from_key(mk->pepper, sizeof(mk->pepper), 2, "mcaipepr", mk->master);
    crypto_kdf_derive_from_key(mk->check, sizeof(mk->check), 3, "mcaichck", mk->master);
    sodium_mprotect_readonly(mk);
    *out = mk;
    return MC_OK;
}

int mc_master_key_parse(const char *text, struct mc_master_key **out, struct mc_err *err) {
    *out = NULL;
    int rc = mc_crypto_init(err);
    if (rc != MC_OK)
        return rc;
    if (!text)
        return mc_err_set(err, MC_EINVAL, "master key is missing; %s", KEY_HINT);

    uint8_t key[MC_CRYPTO_KEY_BYTES];
    rc = decode_key_text(text, key, err);
    if (rc == MC_OK)
        rc = check_key_strength(key, err);
    if (rc == MC_OK)
        rc = master_from_bytes(key, out, err);
    sodium_memzero(key, sizeof(key));
    return rc;
}

/* True when path lies inside dir (both resolved); false when either cannot be resolved. */
static int path_is_inside(const char *path, const char *dir) {
    char rp[PATH_MAX], rd[PATH_MAX];
    if (!realpath(path, rp) || !realpath(dir, rd))
        return 0;
    size_t n = strlen(rd);
    if (n == 1) /* the root directory contains everything */
        return 1;
    return strncmp(rp, rd, n) == 0 && rp[n] == '/';
}

/* Reads the whole key file (at most KEY_FILE_MAX bytes) into secure memory. */
static int read_key_file(const char *path, char **buf_out, size_t *n_out, struct mc_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mc_err_set(err, MC_EIO, "cannot open master key file %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return mc_err_set(err, MC_EINVAL, "master key file %s is not a regular file", path);
    }
    if (st.st_mode & 077) {
        close(fd);
        return mc_err_set(err, MC_EINVAL,
                          "master key file %s is readable by group or others (mode %04o); "
                          "run: chmod 600 %s",
                          path, (unsigned)(st.st_mode & 07777), path);
    }
    char *buf = sodium_malloc(KEY_FILE_MAX + 1);
    if (!buf) {
        close(fd);
        return mc_err_set(err, MC_ENOMEM, "cannot allocate secure memory for the master key");
    }
    size_t n = 0;
    while (n < KEY_FILE_MAX) {
        ssize_t r = read(fd, buf + n, KEY_FILE_MAX - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            sodium_free(buf);
            return mc_err_set(err, MC_EIO, "cannot read master key file %s: %s", path, strerror(e));
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *buf_out = buf;
    *n_out = n;
    return MC_OK;
}

int mc_master_key_load(const char *key_file, const char *data_dir, struct mc_master_key **out,
                       struct mc_err *err) {
    *out = NULL;
    int rc = mc_crypto_init(err);
    if (rc != MC_OK)
        return rc;
    if (!key_file) {
        const char *env = getenv(MC_MASTER_KEY_ENV);
        if (!env || !*env)
            return mc_err_set(err, MC_EINVAL, "no master key: set %s or pass --master-key-file; %s",
                              MC_MASTER_KEY_ENV, KEY_HINT);
        rc = mc_master_key_parse(env, out, err);
        if (rc != MC_OK)
            mc_err_prefix(err, "%s", MC_MASTER_KEY_ENV);
        return rc;
    }

    if (data_dir && path_is_inside(key_file, data_dir))
        return mc_err_set(err, MC_EINVAL,
                          "master key file %s lies inside the data directory %s; keep it "
                          "elsewhere, a key stored with the data protects nothing",
                          key_file, data_dir);
    char *buf = NULL;
    size_t n = 0;
    rc = read_key_file(key_file, &buf, &n, err);
    if (rc != MC_OK)
        return rc;

    /* 32 bytes that are not all printable are a raw key; anything else is text. */
    int raw = 0;
    if (n == MC_CRYPTO_KEY_BYTES) {
        for (size_t i = 0; i < n && !raw; i++)
            raw = (unsigned char)buf[i] < 0x20 || (unsigned char)buf[i] > 0x7e;
    }
    if (raw) {
        rc = check_key_strength((const uint8_t *)buf, err);
        if (rc == MC_OK)
            rc = master_from_bytes((const uint8_t *)buf, out, err);
    } else {
        rc = mc_master_key_parse(buf, out, err);
    }
    sodium_free(buf);
    if (rc != MC_OK)
        mc_err_prefix(err, "%s", key_file);
    return rc;
}

void mc_master_key_free(struct mc_master_key *mk) {
    if (mk)
        sodium_free(mk); /* sodium_free wipes the region, read-only or not */
}

const uint8_t *mc_master_key_wrap_key(const struct mc_master_key *mk) {
    return mk->wrap;
}

const uint8_t *mc_master_key_pepper(const struct mc_master_key *mk) {
    return mk->pepper;
}

const uint8_t *mc_master_key_check_key(const struct mc_master_key *mk) {
    return mk->check;
}

/* ---------------------------------------------------------------------------------------
 * Sealing */

void mc_crypto_seal(const uint8_t key[MC_CRYPTO_KEY_BYTES], const void *ad, size_t n_ad,
                    const void *pt, size_t n_pt, uint8_t *out) {
    out[0] = MC_CRYPTO_VERSION;
    uint8_t *nonce = out + 1;
    randombytes_buf(nonce, MC_CRYPTO_NONCE_BYTES);
    unsigned long long n_ct = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + 1 + MC_CRYPTO_NONCE_BYTES, &n_ct, pt, n_pt, ad,
                                               n_ad, NULL, nonce, key);
}

int mc_crypto_open(const uint8_t key[MC_CRYPTO_KEY_BYTES], const void *ad, size_t n_ad,
                   const uint8_t *in, size_t n_in, uint8_t *out, size_t *n_out,
                   struct mc_err *err) {
    *n_out = 0;
    if (n_in < MC_CRYPTO_OVERHEAD)
        return mc_err_set(err, MC_ECRYPTO, "sealed data of %zu bytes is shorter than %d", n_in,
                          MC_CRYPTO_OVERHEAD);
    if (in[0] != MC_CRYPTO_VERSION)
        return mc_err_set(err, MC_ECRYPTO, "sealed data has unknown version %u", in[0]);
    unsigned long long n_pt = 0;
    const uint8_t *nonce = in + 1;
    const uint8_t *ct = in + 1 + MC_CRYPTO_NONCE_BYTES;
    size_t n_ct = n_in - 1 - MC_CRYPTO_NONCE_BYTES;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(out, &n_pt, NULL, ct, n_ct, ad, n_ad, nonce,
                                                   key) != 0) {
        sodium_memzero(out, n_ct - MC_CRYPTO_TAG_BYTES);
        return mc_err_set(err, MC_ECRYPTO,
                          "sealed data failed authentication (wrong key, wrong owner or "
                          "edited bytes)");
    }
    *n_out = (size_t)n_pt;
    return MC_OK;
}

void mc_crypto_random(void *buf, size_t n) {
    randombytes_buf(buf, n);
}

void mc_crypto_derive(const uint8_t key[MC_CRYPTO_KEY_BYTES], uint64_t id, const char ctx[8],
                      uint8_t out[MC_CRYPTO_KEY_BYTES]) {
    crypto_kdf_derive_from_key(out, MC_CRYPTO_KEY_BYTES, id, ctx, key);
}

void mc_crypto_hash_keyed(const uint8_t key[MC_CRYPTO_KEY_BYTES], const void *msg, size_t n,
                          uint8_t out[32]) {
    crypto_generichash(out, 32, msg, n, key, MC_CRYPTO_KEY_BYTES);
}

void mc_crypto_hash(const void *msg, size_t n, uint8_t out[32]) {
    crypto_generichash(out, 32, msg, n, NULL, 0);
}

static _Atomic unsigned long n_equal_calls;

int mc_crypto_equal(const void *a, const void *b, size_t n) {
    n_equal_calls++;
    return sodium_memcmp(a, b, n) == 0;
}

unsigned long mc_crypto_equal_calls(void) {
    return n_equal_calls;
}

void *mc_secret_alloc(size_t n) {
    return sodium_malloc(n);
}

void mc_secret_free(void *p) {
    if (p)
        sodium_free(p);
}

void mc_crypto_wipe(void *p, size_t n) {
    sodium_memzero(p, n);
}

void mc_crypto_hex(const uint8_t *in, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}
