"""A Python SMQ/1 worker in a process of its own, for tests that kill or stop it.

Usage: worker_proc.py ENDPOINT BROKER_KEY CERT SERVICE MODE [HEARTBEAT_SECONDS]

Modes:
  upper   answers every fragment upper-cased
  hold    prints "got <first bytes>" for each fragment, then blocks until killed (a worker that
          dies holding work)

Prints "connected" once the CURVE handshake succeeded; exits 1 with "Error: ..." on a
SecureMQError. SIGTERM closes the worker from the signal handler (DISCONNECT, then run() returns)
and the process exits 0.
"""

from __future__ import annotations

import signal
import sys
import threading

from securemq import SecureMQError, Worker


def main() -> int:
    endpoint, broker_key, cert, service, mode = sys.argv[1:6]
    heartbeat = float(sys.argv[6]) if len(sys.argv) > 6 else 2.5
    try:
        worker = Worker.connect(endpoint, broker_key, cert, service, credit=4, heartbeat_interval=heartbeat)
    except SecureMQError as error:
        print(f"Error: {error}", flush=True)
        return 1
    print("connected", flush=True)
    forever = threading.Event()
    signal.signal(signal.SIGTERM, lambda number, frame: worker.close())

    def handle(body: bytes) -> bytes:
        if mode == "hold":
            print(f"got {body[:16].hex()}", flush=True)
            forever.wait()  # until the test kills this process
        return body.upper()

    try:
        worker.run(handle)
    except SecureMQError as error:
        print(f"Error: {error}", flush=True)
        return 1
    print("closed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
