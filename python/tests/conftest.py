"""Fixtures that run the real SecureMQ binaries: keygen, secure-broker and smq.

The binaries come from ``$SMQ_BIN_DIR``, or from ``swift build --show-bin-path`` in the repository.
Everything binds and connects on 127.0.0.1 only; every wait has a deadline; every process and
every Python peer a test starts is stopped in the fixture's teardown.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

from securemq import Client, Worker  # noqa: E402
from securemq.certs import load_certificate  # noqa: E402

PEERS = Path(__file__).resolve().parent / "peers"


def bin_dir() -> Path:
    """Where the Swift build products are: $SMQ_BIN_DIR, else `swift build --show-bin-path`."""
    configured = os.environ.get("SMQ_BIN_DIR")
    if configured:
        return Path(configured)
    try:
        out = subprocess.run(["swift", "build", "--show-bin-path"], cwd=REPO, capture_output=True, text=True, timeout=60,
                             check=True)
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"set SMQ_BIN_DIR to the Swift build's bin directory (swift build --show-bin-path failed: {error})")
    return Path(out.stdout.strip())


class Proc:
    """A child process whose output lines are collected as they come, so a test can wait for one."""

    def __init__(self, args: List[str], name: str, cwd: Path, env: Optional[Dict[str, str]] = None) -> None:
        self.name = name
        self.args = args
        self._lines: Dict[str, List[str]] = {"stdout": [], "stderr": []}
        self._changed = threading.Condition()
        self.popen = subprocess.Popen(args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=env, start_new_session=True)
        self._readers = [threading.Thread(target=self._read, args=(stream, self.popen.stdout if stream == "stdout" else self.popen.stderr),
                                          daemon=True) for stream in ("stdout", "stderr")]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: str, pipe) -> None:  # type: ignore[no-untyped-def]
        for raw in iter(pipe.readline, b""):
            with self._changed:
                self._lines[stream].append(raw.decode("utf-8", errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def lines(self, stream: str = "stderr") -> List[str]:
        with self._changed:
            return list(self._lines[stream])

    def wait_for_line(self, predicate: Callable[[str], bool], what: str, timeout: float = 20.0,
                      stream: str = "stderr", occurrence: int = 1) -> str:
        """The ``occurrence``-th line of ``stream`` that satisfies ``predicate``; fails at the deadline
        or when the process exits without it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                hits = [line for line in self._lines[stream] if predicate(line)]
                if len(hits) >= occurrence:
                    return hits[occurrence - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: no {what} within {timeout:g} s\n{self.transcript()}")
                if self.popen.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise AssertionError(f"{self.name} exited ({self.popen.returncode}) without {what}\n{self.transcript()}")
                self._changed.wait(min(left, 0.5))

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {timeout:g} s\n{self.transcript()}") from None
        for reader in self._readers:
            reader.join(5)
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill()
                self.popen.wait(5)
        # The readers end at EOF (the process group is gone); closing a pipe under a reader
        # would make it fail instead.
        for reader in self._readers:
            reader.join(5)
        for pipe, reader in zip((self.popen.stdout, self.popen.stderr), self._readers):
            if pipe and not reader.is_alive():
                pipe.close()

    def transcript(self) -> str:
        out = "\n".join(self.lines("stdout")[-40:])
        err = "\n".join(self.lines("stderr")[-60:])
        return f"--- {self.name} {' '.join(self.args[:2])} stdout ---\n{out}\n--- stderr ---\n{err}"


class Key:
    """A peer's certificate pair made by keygen."""

    def __init__(self, name: str, public_path: Path, secret_path: Path) -> None:
        self.name = name
        self.public_path = public_path
        self.secret_path = secret_path
        self.certificate = load_certificate(secret_path)
        self.fingerprint = self.certificate.fingerprint
        self.tag = int.from_bytes(self.certificate.public_key[:8], "big")


class Deployment:
    """One test's world: keys made by keygen, a broker, and the peers the test starts."""

    def __init__(self, root: Path, bins: Path) -> None:
        self.root = root
        self.bins = bins
        self.certs = root / "certs"
        self.allowed = self.certs / "allowed"
        self.allowed.mkdir(parents=True)
        self.procs: List[Proc] = []
        self.workers: List[Worker] = []
        self.worker_threads: List[threading.Thread] = []
        self.clients: List[Client] = []
        self.broker: Optional[Proc] = None
        self.endpoint = ""
        self.broker_key = self.key("broker", allow=False)

    def run(self, program: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bins / program), *args], cwd=self.root, capture_output=True, text=True,
                              timeout=timeout)

    def key(self, name: str, role: Optional[str] = None, weight: Optional[int] = None, allow: bool = True) -> Key:
        """``keygen new NAME`` in certs/, and its public file copied into the allowlist."""
        args = ["new", name, "--dir", str(self.certs)]
        if role:
            args += ["--role", role]
        if weight is not None:
            args += ["--weight", str(weight)]
        done = self.run("keygen", *args)
        assert done.returncode == 0, f"keygen {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
        key = Key(name, self.certs / f"{name}.key", self.certs / f"{name}.key_secret")
        if allow:
            (self.allowed / f"{name}.key").write_bytes(key.public_path.read_bytes())
        return key

    def worker_key(self, name: str, weight: int = 1) -> Key:
        return self.key(name, role="worker", weight=weight)

    def client_key(self, name: str = "client-1") -> Key:
        return self.key(name, role="client")

    def revoke(self, key: Key) -> None:
        (self.allowed / f"{key.name}.key").unlink()

    def start(self, program: str, *args: str, name: Optional[str] = None, env: Optional[Dict[str, str]] = None) -> Proc:
        proc = Proc([str(self.bins / program) if not program.startswith("/") else program, *args], name or program,
                    self.root, env)
        self.procs.append(proc)
        return proc

    def start_broker(self, *args: str, port: Optional[int] = None) -> Proc:
        """secure-broker on 127.0.0.1 (a free port unless ``port``); waits until it listens."""
        requested = f"tcp://127.0.0.1:{port if port else '*'}"
        broker = self.start("secure-broker", "--endpoint", requested, "--cert", str(self.broker_key.secret_path),
                            "--allowlist", str(self.allowed), "--log-level", "info", *args, name="broker")
        line = broker.wait_for_line(lambda l: "listening" in l and "endpoints=tcp://127.0.0.1:" in l, "'listening' line")
        match = re.search(r"endpoints=tcp://127\.0\.0\.1:(\d+)", line)
        assert match, line
        self.broker = broker
        self.endpoint = f"tcp://127.0.0.1:{match.group(1)}"
        return broker

    def peer_args(self, key: Key) -> List[str]:
        return ["--broker", self.endpoint, "--broker-key", str(self.broker_key.public_path), "--cert", str(key.secret_path)]

    def start_smq_worker(self, key: Key, service: str, *args: str) -> Proc:
        return self.start("smq", "worker", "--service", service, *self.peer_args(key), *args, name=f"smq-worker-{key.name}")

    def smq_submit(self, key: Key, input_path: Path, service: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return self.run("smq", "submit", str(input_path), "--service", service, "--quiet", *self.peer_args(key), *args,
                        timeout=timeout)

    def start_python_worker_process(self, key: Key, service: str, mode: str, *args: str) -> Proc:
        """tests/peers/worker_proc.py in its own process (so a test can kill it)."""
        return self.start(sys.executable, str(PEERS / "worker_proc.py"), self.endpoint, str(self.broker_key.public_path),
                          str(key.secret_path), service, mode, *args, name=f"py-worker-{key.name}",
                          env={**os.environ, "PYTHONPATH": str(REPO / "python")})

    def client(self, key: Key, **options: object) -> Client:
        client = Client.connect(self.endpoint, self.broker_key.public_path, key.secret_path, **options)
        self.clients.append(client)
        return client

    def python_worker(self, key: Key, service: str, handler: Callable[..., bytes], credit: int = 8,
                      concurrency: int = 1, pass_item: bool = False, **options: object) -> Worker:
        """A Python worker serving in a thread of this process; its ``run`` outcome is kept in
        ``worker.outcome`` (None, or the exception it raised)."""
        worker = Worker.connect(self.endpoint, self.broker_key.public_path, key.secret_path, service, credit, **options)
        worker.outcome = "running"  # type: ignore[attr-defined]

        def serve() -> None:
            try:
                worker.run(handler, concurrency, pass_item)
                worker.outcome = None  # type: ignore[attr-defined]
            except BaseException as error:  # kept for the test to inspect
                worker.outcome = error  # type: ignore[attr-defined]

        thread = threading.Thread(target=serve, name=f"serve-{key.name}", daemon=True)
        thread.start()
        worker.thread = thread  # type: ignore[attr-defined]
        self.workers.append(worker)
        self.worker_threads.append(thread)
        return worker

    def wait_workers(self, client: Client, service: str, count: int, timeout: float = 20.0) -> None:
        """Waits until the broker counts ``count`` worker keys for ``service`` (``mmi.workers``,
        PROTOCOL.md C23): each check is a round trip to the broker, with a deadline."""
        deadline = time.monotonic() + timeout
        seen = -1
        while time.monotonic() < deadline:
            seen = client.worker_count(service, timeout=5)
            if seen >= count:
                return
            time.sleep(0.02)  # between round trips only: the answer itself is the event
        transcript = self.broker.transcript() if self.broker else ""
        raise AssertionError(f"{seen} of {count} workers for {service} registered within {timeout:g} s\n{transcript}")

    def teardown(self) -> None:
        for client in self.clients:
            client.close()
        for worker in self.workers:
            worker.close(timeout=5)
        for thread in self.worker_threads:
            thread.join(5)
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture(autouse=True)
def no_socket_thread_errors(caplog: pytest.LogCaptureFixture):  # type: ignore[no-untyped-def]
    """The socket threads log an exception in a hook instead of dying: in a test, that is a failure."""
    yield
    errors = [r for r in caplog.records if r.name.startswith("securemq") and "unexpected error on the socket thread" in r.getMessage()]
    assert not errors, "\n".join(caplog.text.splitlines()[-40:])


@pytest.fixture(scope="session")
def bins() -> Path:
    path = bin_dir()
    missing = [p for p in ("secure-broker", "keygen", "smq") if not (path / p).is_file()]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not found in {path}: run `swift build` first (or set SMQ_BIN_DIR)")
    return path


@pytest.fixture
def deployment(tmp_path: Path, bins: Path):  # type: ignore[no-untyped-def]
    world = Deployment(tmp_path, bins)
    try:
        yield world
    finally:
        world.teardown()
