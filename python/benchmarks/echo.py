"""How fast the Python client goes through secure-broker, to a Swift and to a Python echo worker.

Usage (from the repository root, after `swift build` or `swift build -c release`):

    SMQ_BIN_DIR=$(swift build --show-bin-path) .venv/bin/python python/benchmarks/echo.py

Prints sequential one-fragment requests per second (1 KiB each, one at a time: latency bound)
and the throughput of one 64 MiB job in 256 KiB fragments (window 32), each checked byte for byte.
Everything runs on 127.0.0.1 with fresh keys in a temporary directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

from securemq import Client, Worker  # noqa: E402


def main() -> None:
    bins = Path(os.environ.get("SMQ_BIN_DIR") or subprocess.run(
        ["swift", "build", "--show-bin-path"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip())
    root = Path(tempfile.mkdtemp(prefix="smq-py-bench-"))
    certs = root / "certs"
    (certs / "allowed").mkdir(parents=True)

    def key(name: str, role: str = "") -> Path:
        subprocess.run([str(bins / "keygen"), "new", name, "--dir", str(certs)] + (["--role", role] if role else []),
                       check=True, capture_output=True)
        if role:
            (certs / "allowed" / f"{name}.key").write_bytes((certs / f"{name}.key").read_bytes())
        return certs / f"{name}.key_secret"

    key("broker")
    client_cert, swift_cert, python_cert = key("client", "client"), key("swift", "worker"), key("python", "worker")
    broker_key = certs / "broker.key"
    broker = subprocess.Popen([str(bins / "secure-broker"), "--endpoint", "tcp://127.0.0.1:*", "--cert",
                               str(certs / "broker.key_secret"), "--allowlist", str(certs / "allowed"), "--log-level", "info"],
                              stderr=subprocess.PIPE, text=True)
    endpoint = ""
    assert broker.stderr is not None
    for line in broker.stderr:
        match = re.search(r"endpoints=(tcp://127\.0\.0\.1:\d+)", line)
        if match:
            endpoint = match.group(1)
            break
    threading.Thread(target=lambda: [None for _ in broker.stderr], daemon=True).start()  # type: ignore[union-attr]
    swift = subprocess.Popen([str(bins / "smq"), "worker", "--service", "echo", "--broker", endpoint, "--broker-key",
                              str(broker_key), "--cert", str(swift_cert)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = Client.connect(endpoint, broker_key, client_cert)
    worker = Worker.connect(endpoint, broker_key, python_cert, "pyecho", credit=32)
    threading.Thread(target=worker.run, args=(lambda body: body,), daemon=True).start()
    try:
        for service, label in (("echo", "Swift worker (smq worker)"), ("pyecho", "Python worker")):
            deadline = time.monotonic() + 20
            while client.worker_count(service) < 1:
                assert time.monotonic() < deadline, f"no {service} worker registered"
                time.sleep(0.02)
            count = 2000
            started = time.perf_counter()
            for _ in range(count):
                client.request(service, b"x" * 1024, timeout=10)
            per_second = count / (time.perf_counter() - started)
            data = os.urandom(64 << 20)
            started = time.perf_counter()
            echoed = client.submit(data, service, fragment_size=256 << 10, window=32).read(timeout=120)
            mib_per_second = 64 / (time.perf_counter() - started)
            assert echoed == data
            print(f"Python client -> {label}: {per_second:,.0f} sequential 1 KiB requests/s; "
                  f"64 MiB job, 256 KiB fragments: {mib_per_second:,.0f} MiB/s", flush=True)
    finally:
        client.close()
        worker.close()
        swift.terminate()
        broker.terminate()
        swift.wait(10)
        broker.wait(20)


if __name__ == "__main__":
    main()
