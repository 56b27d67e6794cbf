#ifndef SECUREMQ_CCRYPTO_SHIM_H
#define SECUREMQ_CCRYPTO_SHIM_H
// OpenSSL's libcrypto only for SHA-256: it uses SHA-NI where the CPU has it (1.8 GB/s per core
// here, four times libsodium's portable code).
//
// The digest functions below wrap OpenSSL's low-level SHA256_* calls. OpenSSL 3 marks them
// deprecated in favour of EVP, but they run the same SHA-NI code with the whole state in a
// 112-byte struct: no allocation and no provider dispatch per digest, where EVP_DigestInit_ex2
// allocates and frees a provider context every time (measured: 0.60 against 0.65 µs per KiB).
// The deprecation is silenced here only, so Swift sees plain inline functions.
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <openssl/sha.h>

_Static_assert(SHA256_DIGEST_LENGTH == 32, "SHA-256 digests are 32 bytes");

typedef SHA256_CTX smq_sha256_state;

static inline void smq_sha256_init(smq_sha256_state *state) {
    SHA256_Init(state);
}

static inline void smq_sha256_update(smq_sha256_state *state, const void *bytes, size_t count) {
    SHA256_Update(state, bytes, count);
}

static inline void smq_sha256_final(smq_sha256_state *state, unsigned char out[32]) {
    SHA256_Final(out, state);
}

static inline void smq_sha256(const void *bytes, size_t count, unsigned char out[32]) {
    SHA256_CTX state;
    SHA256_Init(&state);
    SHA256_Update(&state, bytes, count);
    SHA256_Final(out, &state);
}
#endif
