#ifndef SECUREMQ_CSODIUM_SHIM_H
#define SECUREMQ_CSODIUM_SHIM_H
// libsodium: CURVE key pairs (crypto_box_keypair, crypto_scalarmult_base), randombytes, and
// sodium_memzero to wipe secrets (a plain memset may be optimised away).
#include <sodium.h>

// CURVE keys are Curve25519 keys of 32 bytes; the Swift side hard-codes that size.
_Static_assert(crypto_box_PUBLICKEYBYTES == 32, "CURVE public keys are 32 bytes");
_Static_assert(crypto_box_SECRETKEYBYTES == 32, "CURVE secret keys are 32 bytes");
#endif
