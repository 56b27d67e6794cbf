#ifndef SECUREMQ_CZEROMQ_SHIM_H
#define SECUREMQ_CZEROMQ_SHIM_H
// Why a shim and not `pkg-config libzmq`: pkg-config drags in `-isystem /usr/include/mit-krb5`,
// which SwiftPM warns about on every build. The header lives in /usr/include anyway.
#include <zmq.h>
// Glibc's Swift overlay does not export eventfd; the socket owner thread needs it to be woken.
#include <sys/eventfd.h>
#include <errno.h>
#include <stdint.h>
// Naming the socket owner threads (ps -L, perf, gdb): PR_SET_NAME needs no _GNU_SOURCE.
#include <sys/prctl.h>

_Static_assert(sizeof(zmq_msg_t) == 64, "zmq_msg_t is 64 bytes in libzmq 4.x");

// Function-like macros do not import into Swift.
static inline int smq_zmq_version_major(void) { int a, b, c; zmq_version(&a, &b, &c); return a; }
static inline int smq_errno(void) { return errno; }
static inline void smq_name_this_thread(const char *name) { prctl(PR_SET_NAME, name, 0, 0, 0); }

#endif
