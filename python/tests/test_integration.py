"""The Python client and worker against the real secure-broker, beside the Swift smq peers.

Every test starts its own broker on 127.0.0.1 (a free port), makes its keys with keygen, and
waits for readiness with a deadline: the broker's "listening" line, then ``mmi.workers``
(PROTOCOL.md C23) until the workers are registered.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from securemq import (
    ConnectionOptions,
    Disconnected,
    HandshakeFailed,
    Reject,
    RejectedByServer,
    SMQError,
    Unreachable,
    Client,
    WorkItem,
)

from conftest import Deployment

# Lines the broker writes when a peer sends something it cannot accept: none may come from us.
COMPLAINTS = ("dropped malformed message", "bad fragment", "does not match its delivery", "role violation")


def assert_broker_accepted_everything(deployment: Deployment) -> None:
    assert deployment.broker is not None
    bad = [line for line in deployment.broker.lines() if any(c in line for c in COMPLAINTS)]
    assert not bad, "the broker refused messages:\n" + "\n".join(bad)


def upper(body: bytes) -> bytes:
    return body.upper()


class LogEvents(logging.Handler):
    """Collects the records of some loggers, so a test can wait for one (with a deadline)."""

    def __init__(self, *names: str) -> None:
        super().__init__(logging.DEBUG)
        self.records: list = []
        self.changed = threading.Condition()
        for name in names:
            logger = logging.getLogger(name)
            logger.addHandler(self)
            logger.setLevel(logging.DEBUG)

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.records.append(record)
            self.changed.notify_all()

    def wait(self, logger: str, text: str, timeout: float) -> None:
        with self.changed:
            found = self.changed.wait_for(
                lambda: any(r.name == logger and text in r.getMessage() for r in self.records), timeout)
        assert found, f"{logger} never logged {text!r} within {timeout:g} s: {[r.getMessage() for r in self.records]}"


def per_worker_counts(stderr: str) -> dict:
    """``smq submit --per-worker``'s lines ``worker <fingerprint>: <n> fragments``."""
    counts = {}
    for line in stderr.splitlines():
        if line.startswith("worker ") and line.endswith(" fragments"):
            name, count = line[len("worker "):-len(" fragments")].rsplit(": ", 1)
            counts[name] = int(count)
    return counts


def random_text(size: int) -> bytes:
    """Random lower-case letters and digits: upper() changes them, so a wrong path shows."""
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789"
    return bytes(alphabet[b % len(alphabet)] for b in os.urandom(size))


# -- mixed fleets ----------------------------------------------------------------------------


def test_python_client_served_by_swift_workers(deployment: Deployment, tmp_path: Path) -> None:
    w1, w2, w3 = deployment.worker_key("swift-1"), deployment.worker_key("swift-2"), deployment.worker_key("swift-3")
    client_key = deployment.client_key()
    deployment.start_broker()
    deployment.start_smq_worker(w1, "echo")
    deployment.start_smq_worker(w2, "echo")
    deployment.start_smq_worker(w3, "sha256")
    client = deployment.client(client_key)
    deployment.wait_workers(client, "echo", 2)
    deployment.wait_workers(client, "sha256", 1)

    # Bytes: 75 fragments through two Swift echo workers come back byte-exact and in order.
    payload = os.urandom(300 * 1024)
    job = client.submit(payload, "echo", fragment_size=4096, window=16)
    results = list(job.results(timeout=30))
    assert [r.index for r in results] == list(range(75))
    assert b"".join(r.body for r in results) == payload
    assert set(job.stats.per_worker) == {w1.tag, w2.tag}, "both Swift workers took part"

    # A file: each fragment's SHA-256, computed by the Swift worker, in index order.
    path = tmp_path / "input.bin"
    path.write_bytes(payload[:100_000])
    digests = client.submit(path, "sha256", fragment_size=10_000).read(timeout=30)
    expected = b"".join(hashlib.sha256(payload[i:i + 10_000]).digest() for i in range(0, 100_000, 10_000))
    assert digests == expected

    assert client.request("sha256", b"abc", timeout=10) == hashlib.sha256(b"abc").digest()
    assert_broker_accepted_everything(deployment)


def test_swift_client_served_by_python_workers(deployment: Deployment, tmp_path: Path) -> None:
    p1, p2 = deployment.worker_key("py-1"), deployment.worker_key("py-2")
    client_key, probe = deployment.client_key(), deployment.client_key("probe")
    deployment.start_broker()
    deployment.python_worker(p1, "upper", upper, credit=8)
    deployment.python_worker(p2, "upper", upper, credit=8)
    deployment.wait_workers(deployment.client(probe), "upper", 2)

    payload = random_text(256 * 1024)
    source, output = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_bytes(payload)
    done = deployment.smq_submit(client_key, source, "upper", "--fragment-size", "4K", "--window", "16",
                                 "--output", str(output), "--per-worker")
    assert done.returncode == 0, done.stdout + done.stderr
    assert output.read_bytes() == payload.upper()
    # smq names the workers by key fingerprint: both Python workers served it.
    counts = per_worker_counts(done.stderr)
    assert set(counts) == {p1.fingerprint, p2.fingerprint}, done.stderr
    assert sum(counts.values()) == 64
    assert_broker_accepted_everything(deployment)

    # close() leaves (DISCONNECT, then the socket closes): the broker forgets the worker at once,
    # not after heartbeat silence (2.5 s x 3 by default; the deadline here is shorter).
    deployment.workers[0].close()
    probe_client = deployment.clients[0]
    deadline = time.monotonic() + 2.0
    while probe_client.worker_count("upper") != 1:
        assert time.monotonic() < deadline, "the broker still counts the closed worker"
        time.sleep(0.02)  # between round trips; each answer is the event


def test_python_client_and_python_workers_multi_fragment_in_order(deployment: Deployment, tmp_path: Path) -> None:
    keys = [deployment.worker_key(f"py-{i}") for i in range(3)]
    client_key = deployment.client_key()
    deployment.start_broker()
    # Uneven speeds, so results arrive out of order and the client must put them back in order.
    delays = {0: 0.0, 1: 0.002, 2: 0.005}

    def slow_upper(worker: int):  # type: ignore[no-untyped-def]
        def handle(body: bytes) -> bytes:
            if delays[worker]:
                time.sleep(delays[worker])  # plays a slower machine, not synchronisation
            return body.upper()
        return handle

    for i, key in enumerate(keys):
        deployment.python_worker(key, "upper", slow_upper(i), credit=8, concurrency=2)
    client = deployment.client(client_key)
    deployment.wait_workers(client, "upper", 3)

    payload = random_text(200 * 1000 + 17)
    job = client.submit(payload, "upper", fragment_size=1000, window=24)
    indices, chunks = [], []
    for result in job.results(timeout=30):
        indices.append(result.index)
        chunks.append(result.body)
    assert indices == list(range(201))
    assert b"".join(chunks) == payload.upper()
    assert job.stats.duplicates == 0
    assert sum(job.stats.per_worker.values()) == 201

    # An empty payload is one empty fragment with one result (C14).
    empty = client.submit(b"", "upper")
    assert [(r.index, r.body) for r in empty.results(timeout=10)] == [(0, b"")]

    # A file, read fragment by fragment.
    path = tmp_path / "payload.txt"
    path.write_bytes(payload)
    assert client.submit(path, "upper", fragment_size=7777).read(timeout=30) == payload.upper()

    # One client, many threads: requests and jobs at once, each answer to its own caller.
    failures: list = []

    def caller(number: int) -> None:
        try:
            for i in range(40):
                text = f"thread {number} request {i}".encode()
                assert client.request("upper", text, timeout=20) == text.upper()
            data = random_text(5000)
            assert client.submit(data, "upper", fragment_size=500, window=4).read(timeout=20) == data.upper()
        except BaseException as error:  # reported below, in the test's thread
            failures.append(error)

    callers = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(60)
    assert not failures, failures
    assert not any(thread.is_alive() for thread in callers)
    assert_broker_accepted_everything(deployment)


# -- failures reach the client typed -----------------------------------------------------------


def test_worker_reject_reaches_the_client_as_smqerror(deployment: Deployment) -> None:
    worker_key, client_key = deployment.worker_key("picky"), deployment.client_key()
    deployment.start_broker("--max-deliveries", "2")

    def picky(item: WorkItem) -> bytes:
        body = item.body
        if item.count > 1 and body.startswith(b"bad"):
            assert item.index == 4 and item.offset == 24
        if body.startswith(b"bad"):
            raise Reject(422, retryable=False, reason="no bad input, please")
        if body.startswith(b"flaky"):
            raise Reject(503, retryable=True, reason="try elsewhere")
        if body.startswith(b"boom"):
            raise ValueError("the handler broke")
        return body.upper()

    deployment.python_worker(worker_key, "picky", picky, pass_item=True)
    client = deployment.client(client_key)
    deployment.wait_workers(client, "picky", 1)

    # A worker's own 4xx passes through, with its reason and the fragment that failed.
    job = client.submit(b"good.." * 4 + b"bad..." + b"more.." * 4, "picky", fragment_size=6, window=1)
    got = []
    with pytest.raises(SMQError) as failure:
        for result in job.results(timeout=10):
            got.append(result.body)
    assert failure.value.code == 422
    assert failure.value.index == 4
    assert "no bad input, please" in failure.value.reason
    assert got == [b"GOOD.."] * 4, "the results before the failure are handed over first"

    # A retryable REJECT is tried max-deliveries times, then the job fails with 504.
    with pytest.raises(SMQError) as failure:
        client.request("picky", b"flaky", timeout=10)
    assert failure.value.code == 504

    # A handler's exception is a non-retryable 520 that says what broke.
    with pytest.raises(SMQError) as failure:
        client.request("picky", b"boom", timeout=10)
    assert failure.value.code == 520
    assert "the handler broke" in failure.value.reason


def test_no_worker_and_cancel_are_typed(deployment: Deployment) -> None:
    client_key, worker_key = deployment.client_key(), deployment.worker_key("holder")
    deployment.start_broker("--service-timeout", "1")
    client = deployment.client(client_key)
    with pytest.raises(SMQError) as failure:
        client.request("nobody-serves-this", b"x", timeout=10)
    assert failure.value.code == 404

    release = threading.Event()
    started = threading.Event()

    def hold(body: bytes) -> bytes:
        started.set()
        release.wait(10)
        return body

    deployment.python_worker(worker_key, "hold", hold)
    deployment.wait_workers(client, "hold", 1)
    job = client.submit(b"x" * 10, "hold", fragment_size=5)
    assert started.wait(10)
    job.cancel()
    with pytest.raises(SMQError) as failure:
        job.read(timeout=10)
    assert failure.value.code == 410
    release.set()


def test_busy_under_a_small_byte_budget(deployment: Deployment) -> None:
    worker_key, client_key = deployment.worker_key("py"), deployment.client_key()
    deployment.start_broker("--byte-budget", "32K", "--max-fragment", "16K")
    deployment.python_worker(worker_key, "upper", upper, credit=4)
    client = deployment.client(client_key, max_fragment=16 * 1024)
    deployment.wait_workers(client, "upper", 1)

    payload = random_text(512 * 1024)
    # 32 fragments of 8 KiB sent at once: 256 KiB against a 32 KiB budget.
    job = client.submit(payload, "upper", fragment_size=8 * 1024, window=32)
    assert job.read(timeout=60) == payload.upper()
    assert job.stats.busy_resends > 0, "the broker never said BUSY: the budget did not bite"
    assert_broker_accepted_everything(deployment)


@pytest.mark.parametrize("light_worker", ["python", "swift"])
def test_weights_are_respected_across_languages(deployment: Deployment, light_worker: str) -> None:
    light, heavy = deployment.worker_key("light", weight=1), deployment.worker_key("heavy", weight=3)
    client_key = deployment.client_key()
    deployment.start_broker()
    # Credit above weight x base-window for both, and a client window no larger than the light
    # worker's grant: neither runs out of credit, so the scheduler's weights alone decide.
    if light_worker == "python":
        deployment.python_worker(light, "upper", upper, credit=64)
    else:
        deployment.start_smq_worker(light, "upper", "--credit", "64")
    deployment.python_worker(heavy, "upper", upper, credit=128)
    client = deployment.client(client_key)
    deployment.wait_workers(client, "upper", 2)

    payload = random_text(400 * 256)
    job = client.submit(payload, "upper", fragment_size=256, window=32)
    assert job.read(timeout=60) == payload.upper()
    counts = job.stats.per_worker
    assert set(counts) == {light.tag, heavy.tag}
    # The stride scheduler keeps every worker within one pick of the exact share (C20); 1 % slack.
    assert abs(counts[heavy.tag] - 300) <= 4, f"weight 3 of 4 took {counts[heavy.tag]} of 400 ({dict(counts)})"

    # The same pool seen by the Swift client.
    source = deployment.root / "weights.txt"
    source.write_bytes(payload)
    done = deployment.smq_submit(client_key, source, "upper", "--fragment-size", "256", "--window", "32", "--per-worker")
    assert done.returncode == 0, done.stdout + done.stderr
    per_worker = per_worker_counts(done.stderr)
    assert set(per_worker) == {light.fingerprint, heavy.fingerprint}, done.stderr
    assert sum(per_worker.values()) == 400
    assert abs(per_worker[heavy.fingerprint] - 300) <= 4, f"weight 3 of 4 for smq submit: {per_worker}"


# -- faults --------------------------------------------------------------------------------------


def test_a_killed_python_workers_fragments_complete_elsewhere(deployment: Deployment) -> None:
    doomed, survivor = deployment.worker_key("doomed"), deployment.worker_key("survivor")
    client_key = deployment.client_key()
    deployment.start_broker()
    holder = deployment.start_python_worker_process(doomed, "upper", "hold")
    holder.wait_for_line(lambda l: l == "connected", "'connected'", stream="stdout")
    client = deployment.client(client_key)
    deployment.wait_workers(client, "upper", 1)

    payload = random_text(3000)
    job = client.submit(payload, "upper", fragment_size=1000)
    holder.wait_for_line(lambda l: l.startswith("got "), "a fragment", stream="stdout")
    deployment.python_worker(survivor, "upper", upper)
    deployment.wait_workers(client, "upper", 2)
    holder.kill()  # SIGKILL while it holds the job's fragments
    holder.wait_exit(10)

    assert job.read(timeout=30) == payload.upper()
    assert set(job.stats.per_worker) == {survivor.tag}


def test_sigterm_closes_a_python_worker_process_cleanly(deployment: Deployment) -> None:
    worker_key, client_key = deployment.worker_key("py"), deployment.client_key()
    deployment.start_broker()
    process = deployment.start_python_worker_process(worker_key, "upper", "upper")
    process.wait_for_line(lambda l: l == "connected", "'connected'", stream="stdout")
    client = deployment.client(client_key)
    deployment.wait_workers(client, "upper", 1)
    assert client.request("upper", b"served", timeout=10) == b"SERVED"
    # close() from the signal handler, while run() waits for work in the same thread.
    process.kill(signal.SIGTERM)
    assert process.wait_exit(10) == 0, process.transcript()
    assert process.lines("stdout")[-1] == "closed"
    # Gone from the broker (test_engines checks the DISCONNECT bytes themselves).
    deadline = time.monotonic() + 5.0
    while client.worker_count("upper") != 0:
        assert time.monotonic() < deadline, "the broker still counts the closed worker"
        time.sleep(0.02)  # between round trips; each answer is the event


def test_a_slow_handler_never_looks_dead(deployment: Deployment) -> None:
    worker_key, client_key = deployment.worker_key("slow"), deployment.client_key()
    deployment.start_broker()

    def slow(body: bytes) -> bytes:
        time.sleep(1.5)  # five heartbeat intervals of work, longer than interval x liveness
        return body.upper()

    worker = deployment.python_worker(worker_key, "slow", slow, heartbeat_interval=0.1)
    client = deployment.client(client_key)
    deployment.wait_workers(client, "slow", 1)
    assert client.request("slow", b"patience", timeout=20) == b"PATIENCE"
    assert worker.processed == 1, "the fragment was delivered again: the broker took the worker for dead"
    assert not any("presumed dead" in line for line in deployment.broker.lines())  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["killed", "shut down"])
def test_jobs_survive_a_broker_restart(deployment: Deployment, how: str) -> None:
    worker_key, client_key = deployment.worker_key("py"), deployment.client_key()
    broker = deployment.start_broker("--drain-timeout", "1")
    port = int(deployment.endpoint.rsplit(":", 1)[1])
    fast = ConnectionOptions(reconnect_interval=0.1, reconnect_interval_max=0.5)
    release, started = threading.Event(), threading.Event()

    def gated(body: bytes) -> bytes:
        started.set()
        release.wait(20)
        return body.upper()

    worker = deployment.python_worker(worker_key, "upper", gated, credit=4, heartbeat_interval=0.2,
                                      connection=fast)
    client = deployment.client(client_key, heartbeat_interval=0.2, connection=fast)
    deployment.wait_workers(client, "upper", 1)

    payload = random_text(4000)
    job = client.submit(payload, "upper", fragment_size=1000)
    assert started.wait(10)
    if how == "killed":
        broker.kill()
    else:
        # A graceful shutdown ends with DISCONNECT to peers it had served: they reconnect (C31).
        broker.kill(signal.SIGTERM)
    broker.wait_exit(15)
    deployment.start_broker(port=port)
    # The worker's answer to the old broker's delivery is dropped; both peers reconnect, the
    # worker says READY again and the client resubmits what is unanswered (C26, C29).
    release.set()
    assert job.read(timeout=30) == payload.upper()
    assert job.stats.resubmitted > 0
    assert worker.outcome == "running"  # type: ignore[attr-defined]


def test_peers_reconnect_when_the_broker_falls_silent(deployment: Deployment) -> None:
    worker_key, client_key = deployment.worker_key("py"), deployment.client_key()
    broker = deployment.start_broker()
    heard = LogEvents("securemq.client", "securemq.worker")
    release, started = threading.Event(), threading.Event()

    def gated(body: bytes) -> bytes:
        started.set()
        release.wait(20)
        return body.upper()

    deployment.python_worker(worker_key, "upper", gated, credit=4, heartbeat_interval=0.2)
    client = deployment.client(client_key, heartbeat_interval=0.2)
    deployment.wait_workers(client, "upper", 1)
    payload = random_text(3000)
    job = client.submit(payload, "upper", fragment_size=1000)
    assert started.wait(10)
    # A stopped broker keeps its TCP connections: only silence tells (C29).
    broker.kill(signal.SIGSTOP)
    try:
        heard.wait("securemq.client", "reconnecting", timeout=10)
        heard.wait("securemq.worker", "reconnecting", timeout=10)
    finally:
        broker.kill(signal.SIGCONT)
    release.set()
    assert job.read(timeout=30) == payload.upper()
    assert job.stats.resubmitted > 0


# -- admission -----------------------------------------------------------------------------------


def test_a_key_off_the_allowlist_is_refused(deployment: Deployment) -> None:
    stranger = deployment.key("stranger", role="client", allow=False)
    deployment.start_broker()
    with pytest.raises(RejectedByServer) as refusal:
        Client.connect(deployment.endpoint, deployment.broker_key.public_path, stranger.secret_path)
    assert "allowlist" in str(refusal.value) and stranger.fingerprint in str(refusal.value)


def test_a_revoked_worker_is_cut_off_and_refused(deployment: Deployment) -> None:
    worker_key, client_key = deployment.worker_key("revoked"), deployment.client_key()
    deployment.start_broker()
    worker = deployment.python_worker(worker_key, "upper", upper, heartbeat_interval=0.2)
    client = deployment.client(client_key)
    deployment.wait_workers(client, "upper", 1)
    assert client.request("upper", b"before", timeout=10) == b"BEFORE"

    deployment.revoke(worker_key)
    # The broker sees the allowlist change within about a second and sends DISCONNECT; the
    # worker had been served, so it reconnects, and ZAP refuses the key: run() ends typed.
    worker.thread.join(15)  # type: ignore[attr-defined]
    assert not worker.thread.is_alive(), "the revoked worker is still running"  # type: ignore[attr-defined]
    assert isinstance(worker.outcome, RejectedByServer), repr(worker.outcome)  # type: ignore[attr-defined]
    assert "allowlist" in str(worker.outcome)  # type: ignore[attr-defined]
    assert client.worker_count("upper") == 0


def test_a_revoked_client_loses_its_jobs_and_is_refused(deployment: Deployment) -> None:
    worker_key, client_key = deployment.worker_key("py"), deployment.client_key()
    deployment.start_broker()
    release, started = threading.Event(), threading.Event()

    def gated(body: bytes) -> bytes:
        started.set()
        release.wait(20)
        return body

    deployment.python_worker(worker_key, "hold", gated)
    client = deployment.client(client_key)
    deployment.wait_workers(client, "hold", 1)
    job = client.submit(b"x" * 100, "hold", fragment_size=10)
    assert started.wait(10)
    deployment.revoke(client_key)
    # Within about a second: FAILED 403 for the open job (§1), then DISCONNECT; the client had
    # been served, so it reconnects, and ZAP refuses it. (The broker of this checkout sends the
    # DISCONNECT alone: the job then ends with the refusal, just as typed.)
    with pytest.raises((SMQError, RejectedByServer)) as failure:
        job.read(timeout=15)
    if isinstance(failure.value, SMQError):
        assert failure.value.code == 403
    release.set()
    with pytest.raises(RejectedByServer):
        for _ in range(100):  # each request is bounded; the refusal ends the client
            client.request("hold", b"again", timeout=5)


def test_a_client_key_cannot_serve(deployment: Deployment) -> None:
    client_key = deployment.client_key()
    deployment.start_broker()
    # DISCONNECT before any service is a refusal (C31): run() ends with it, no reconnection.
    worker = deployment.python_worker(client_key, "upper", upper)
    worker.thread.join(10)  # type: ignore[attr-defined]
    assert isinstance(worker.outcome, Disconnected), repr(worker.outcome)  # type: ignore[attr-defined]


def test_a_wrong_broker_key_and_no_broker_are_typed(deployment: Deployment) -> None:
    client_key, impostor = deployment.client_key(), deployment.key("impostor", allow=False)
    deployment.start_broker()
    with pytest.raises(HandshakeFailed):
        Client.connect(deployment.endpoint, impostor.public_path, client_key.secret_path,
                       connection=ConnectionOptions(connect_timeout=10, reconnect_interval=0.1))
    with pytest.raises(Unreachable) as silence:
        Client.connect("tcp://127.0.0.1:1", deployment.broker_key.public_path, client_key.secret_path,
                       connection=ConnectionOptions(connect_timeout=0.5))
    assert "tcp://127.0.0.1:1" in str(silence.value)
