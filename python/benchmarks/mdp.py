"""zguide-style synchronous 7/MDP requests through secure-broker: one MDP client, one MDP worker.

Usage (from the repository root, after `swift build -c release`):

    SMQ_BIN_DIR=$(swift build -c release --show-bin-path) .venv/bin/python python/benchmarks/mdp.py [REQUESTS]

The client and worker are written from RFC 7/MDP with pyzmq (DEALER sockets, CURVE with keys made
by keygen, admitted by the broker's ZAP allowlist), as zguide's mdclient/mdworker do it: one
request ("Hello world") at a time, the next sent when the reply came. Prints requests per second.
The worker runs in its own process so the client and the worker do not share one GIL.
Everything runs on 127.0.0.1 with fresh keys in a temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

from securemq.certs import load_certificate  # noqa: E402


def socket_for(context: zmq.Context, endpoint: str, secret: Path, broker_public: Path) -> zmq.Socket:
    mine, broker = load_certificate(secret), load_certificate(broker_public)
    socket = context.socket(zmq.DEALER)
    socket.linger = 0
    socket.curve_secretkey, socket.curve_publickey = mine.secret_key, mine.public_key
    socket.curve_serverkey = broker.public_key
    socket.connect(endpoint)
    return socket


def worker(endpoint: str, secret: str, broker_public: str) -> None:
    """An echo MDP worker (RFC 7): READY, then REPLY to every REQUEST, HEARTBEAT while idle."""
    socket = socket_for(zmq.Context.instance(), endpoint, Path(secret), Path(broker_public))
    socket.send_multipart([b"", b"MDPW01", b"\x01", b"echo"])
    last = time.monotonic()
    while True:
        if socket.poll(1000):
            frames = socket.recv_multipart()
            if frames[2] == b"\x02":
                socket.send_multipart([b"", b"MDPW01", b"\x03", frames[3], b"", *frames[5:]])
            elif frames[2] == b"\x05":
                return
        if time.monotonic() - last > 1.0:
            socket.send_multipart([b"", b"MDPW01", b"\x04"])
            last = time.monotonic()


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:])
        return
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    bins = Path(os.environ.get("SMQ_BIN_DIR") or subprocess.run(
        ["swift", "build", "--show-bin-path"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip())
    root = Path(tempfile.mkdtemp(prefix="smq-mdp-bench-"))
    certs = root / "certs"
    (certs / "allowed").mkdir(parents=True)

    def key(name: str, role: str = "") -> Path:
        subprocess.run([str(bins / "keygen"), "new", name, "--dir", str(certs)] + (["--role", role] if role else []),
                       check=True, capture_output=True)
        if role:
            (certs / "allowed" / f"{name}.key").write_bytes((certs / f"{name}.key").read_bytes())
        return certs / f"{name}.key_secret"

    broker_secret, client_secret, worker_secret = key("broker"), key("client", "client"), key("worker", "worker")
    log = open(root / "broker.log", "w")
    broker = subprocess.Popen([str(bins / "secure-broker"), "--endpoint", "tcp://127.0.0.1:*", "--cert", str(broker_secret),
                               "--allowlist", str(certs / "allowed"), "--log-level", "info"],
                              stdout=log, stderr=subprocess.STDOUT)
    procs = [broker]
    try:
        endpoint = ""
        deadline = time.monotonic() + 20
        while not endpoint and time.monotonic() < deadline and broker.poll() is None:
            match = re.search(r"endpoints=(tcp://127\.0\.0\.1:\d+)", (root / "broker.log").read_text())
            endpoint = match.group(1) if match else ""
            time.sleep(0.05)  # polling a log file for the broker's first line, with a deadline
        if not endpoint:
            raise SystemExit("Error: secure-broker did not say where it listens within 20 s")
        broker_public = certs / "broker.key"
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", endpoint, str(worker_secret), str(broker_public)]))
        client = socket_for(zmq.Context.instance(), endpoint, client_secret, broker_public)

        def request(service: bytes, body: bytes) -> bytes:
            client.send_multipart([b"", b"MDPC01", service, body])
            if not client.poll(10_000):
                raise SystemExit(f"Error: no reply from {service.decode()} within 10 s")
            return client.recv_multipart()[3]

        deadline = time.monotonic() + 20
        while request(b"mmi.service", b"echo") != b"200":
            if time.monotonic() > deadline:
                raise SystemExit("Error: the MDP worker did not register within 20 s")
            time.sleep(0.02)
        for _ in range(1000):  # warm-up
            request(b"echo", b"Hello world")
        start = time.perf_counter()
        for _ in range(requests):
            if request(b"echo", b"Hello world") != b"Hello world":
                raise SystemExit("Error: a reply differs from its request")
        elapsed = time.perf_counter() - start
        print(f"7/MDP synchronous requests through secure-broker (CURVE): {requests} in {elapsed:.2f} s = "
              f"{requests / elapsed:,.0f} req/s")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
