/* crypto.h - the key hierarchy of mcai and libsodium envelope encryption.
 *
 *   master key (32 bytes, from MCAI_MASTER_KEY or a key file, never in the data dir)
 *     |- wrap key   = KDF(master, 1, "mcaiwrap")  wraps every tenant's data key
 *     |- pepper     = KDF(master, 2, "mcaipepr")  keys the BLAKE2b hash of API keys (the
 *     |                                           store keeps it wrapped, so it survives a
 *     |                                           master key rotation)
 *     |- check key  = KDF(master, 3, "mcaichck")  proves a data dir belongs to this master key
 *     `- tenant data key (32 random bytes per tenant, stored wrapped)
 *          `- every tenant-private object, sealed with XChaCha20-Poly1305
 *
 * A sealed buffer is: version byte (1) || nonce (24, random) || ciphertext || tag (16).
 * The associated data is chosen by the caller (store.c uses tenant id, kind and object id)
 * and is authenticated, never stored. Secrets live in sodium_malloc memory (guard pages,
 * mlock'd, wiped on free). Every function here is thread-safe once mc_crypto_init ran. */
#ifndef MC_CRYPTO_H
#define MC_CRYPTO_H

#include "base/err.h"

#include <stddef.h>
#include <stdint.h>

#define MC_CRYPTO_KEY_BYTES   32
#define MC_CRYPTO_NONCE_BYTES 24
#define MC_CRYPTO_TAG_BYTES   16
#define MC_CRYPTO_VERSION     1
/* Bytes a sealed buffer has beyond its plaintext: version + nonce + tag. */
#define MC_CRYPTO_OVERHEAD (1 + MC_CRYPTO_NONCE_BYTES + MC_CRYPTO_TAG_BYTES)
/* A master key must hold at least this many distinct byte values (a random key has ~30). */
#define MC_CRYPTO_MIN_DISTINCT_BYTES 16
/* Name of the environment variable the master key is read from. */
#define MC_MASTER_KEY_ENV "MCAI_MASTER_KEY"

/* The master key and the subkeys derived from it, in one sodium_malloc region. */
struct mc_master_key;

/* Initialises libsodium once per process (safe to call from any thread, any number of
 * times). Returns MC_EINTERNAL if libsodium cannot start. */
int mc_crypto_init(struct mc_err *err);

/* Parses a master key written as 64 hex digits or base64 (standard or URL-safe, padding
 * optional) of exactly 32 bytes; surrounding whitespace is ignored. Refuses a wrong
 * length, an all-zero key and a key with fewer than MC_CRYPTO_MIN_DISTINCT_BYTES distinct
 * byte values (MC_EINVAL, message says which and how to make a good key; the key itself
 * never appears in a message). On success *out is owned by the caller
 * (mc_master_key_free); on failure it is NULL. */
int mc_master_key_parse(const char *text, struct mc_master_key **out, struct mc_err *err);

/* Loads the master key from key_file when it is non-NULL, else from the environment
 * variable MCAI_MASTER_KEY. A key file holds the key as text (as above) or as 32 raw
 * bytes; it must not be readable by group or others, and must not lie inside data_dir
 * (when data_dir is non-NULL), since a key next to the data it protects protects nothing.
 * Returns MC_EINVAL (missing or weak key, bad file mode, file inside data_dir) or MC_EIO. */
int mc_master_key_load(const char *key_file, const char *data_dir, struct mc_master_key **out,
                       struct mc_err *err);

/* Wipes and frees. Accepts NULL. */
void mc_master_key_free(struct mc_master_key *mk);

/* Borrowed pointers to the derived subkeys (MC_CRYPTO_KEY_BYTES each), valid until
 * mc_master_key_free. */
const uint8_t *mc_master_key_wrap_key(const struct mc_master_key *mk);
const uint8_t *mc_master_key_pepper(const struct mc_master_key *mk);
const uint8_t *mc_master_key_check_key(const struct mc_master_key *mk);

/* Seals pt (n_pt bytes) under key with associated data ad (n_ad bytes, may be 0) and a
 * fresh random nonce into out, which must hold n_pt + MC_CRYPTO_OVERHEAD bytes. */
void mc_crypto_seal(const uint8_t key[MC_CRYPTO_KEY_BYTES], const void *ad, size_t n_ad,
                    const void *pt, size_t n_pt, uint8_t *out);

/* Opens a sealed buffer in (n_in bytes) into out (room for n_in - MC_CRYPTO_OVERHEAD
 * bytes); *n_out gets the plaintext length. Returns MC_ECRYPTO when the buffer is too
 * short, has an unknown version, or fails authentication (wrong key, wrong associated
 * data, edited bytes); out is then wiped. */
int mc_crypto_open(const uint8_t key[MC_CRYPTO_KEY_BYTES], const void *ad, size_t n_ad,
                   const uint8_t *in, size_t n_in, uint8_t *out, size_t *n_out, struct mc_err *err);

/* Fills buf with n cryptographically random bytes. */
void mc_crypto_random(void *buf, size_t n);

/* Derives subkey number id of context ctx (8 characters) from key (crypto_kdf). */
void mc_crypto_derive(const uint8_t key[MC_CRYPTO_KEY_BYTES], uint64_t id, const char ctx[8],
                      uint8_t out[MC_CRYPTO_KEY_BYTES]);

/* Keyed BLAKE2b-256 of msg under key (the pepper for API keys). */
void mc_crypto_hash_keyed(const uint8_t key[MC_CRYPTO_KEY_BYTES], const void *msg, size_t n,
                          uint8_t out[32]);

/* Unkeyed BLAKE2b-256 (the audit log chain). */
void mc_crypto_hash(const void *msg, size_t n, uint8_t out[32]);

/* Constant-time equality of two n-byte buffers (sodium_memcmp): true when equal. */
int mc_crypto_equal(const void *a, const void *b, size_t n);
/* How many times mc_crypto_equal has run in this process (lets tests prove that a
 * comparison went through it). */
unsigned long mc_crypto_equal_calls(void);

/* Secure memory for key material: sodium_malloc (guard pages, mlock) and sodium_free
 * (wipes before freeing). mc_secret_free accepts NULL. Each region costs a few pages, so
 * hold few of them; never one per idle tenant. */
void *mc_secret_alloc(size_t n);
void mc_secret_free(void *p);
/* Wipes n bytes (sodium_memzero), which the compiler may not optimise away. */
void mc_crypto_wipe(void *p, size_t n);

/* Lower-case hex of n bytes into out (2n + 1 bytes with the NUL). */
void mc_crypto_hex(const uint8_t *in, size_t n, char *out);

#endif
