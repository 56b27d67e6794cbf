"""7/MDP 0.1 (Majordomo) peers against the real secure-broker (PROTOCOL.md §7, C50–C54).

The MDP client and worker here are written from RFC 7/MDP and 8/MMI with pyzmq, over CURVE with
keys from keygen, so they pass the broker's ZAP allowlist like any SMQ/1 peer. Every wait has a
deadline; readiness is an answer from the broker (``mmi.service`` says 200), never a sleep.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional

import pytest
import zmq

from conftest import Deployment, Key

C_CLIENT = b"MDPC01"
W_WORKER = b"MDPW01"
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"


def curve_socket(deployment: Deployment, key: Key) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.linger = 0
    socket.curve_secretkey = key.certificate.secret_key
    socket.curve_publickey = key.certificate.public_key
    socket.curve_serverkey = deployment.broker_key.certificate.public_key
    socket.connect(deployment.endpoint)
    return socket


class MDPClient:
    """An MDPC01 client on a DEALER socket (RFC 7: the DEALER sends the empty delimiter itself)."""

    def __init__(self, deployment: Deployment, key: Key) -> None:
        self.socket = curve_socket(deployment, key)

    def send(self, service: bytes, *body: bytes) -> None:
        self.socket.send_multipart([b"", C_CLIENT, service, *body])

    def send_raw(self, frames: List[bytes]) -> None:
        self.socket.send_multipart(frames)

    def receive(self, timeout: float) -> Optional[List[bytes]]:
        """The next reply's [service, body…], or None at the deadline."""
        if not self.socket.poll(int(timeout * 1000)):
            return None
        frames = self.socket.recv_multipart()
        assert frames[0] == b"" and frames[1] == C_CLIENT, f"not an MDP reply: {frames!r}"
        return frames[2:]

    def request(self, service: bytes, *body: bytes, timeout: float = 10.0) -> List[bytes]:
        self.send(service, *body)
        reply = self.receive(timeout)
        assert reply is not None, f"no reply from {service!r} within {timeout:g} s"
        assert reply[0] == service, reply
        return reply[1:]

    def close(self) -> None:
        self.socket.close(0)


class MDPWorker:
    """An MDPW01 worker in a thread of its own (the socket never leaves it): READY, then REQUEST →
    handler → REPLY, HEARTBEAT every ``heartbeat`` seconds while idle (it cannot while the
    handler runs, as RFC 7 workers are written)."""

    def __init__(self, deployment: Deployment, key: Key, service: bytes,
                 handler: Callable[[List[bytes]], List[bytes]], heartbeat: float = 1.0, ready_twice: bool = False) -> None:
        self.deployment, self.key, self.service, self.handler = deployment, key, service, handler
        self.heartbeat, self.ready_twice = heartbeat, ready_twice
        self.requests = 0
        self.broker_heartbeats = 0
        self.disconnected = threading.Event()
        self.stopping = threading.Event()
        self.commands: List[List[bytes]] = []  # (from the test's thread) frames to send
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"mdp-worker-{key.name}")
        self.thread.start()

    def send(self, frames: List[bytes]) -> None:
        with self.lock:
            self.commands.append(frames)

    def _run(self) -> None:
        socket = curve_socket(self.deployment, self.key)
        try:
            socket.send_multipart([b"", W_WORKER, READY, self.service])
            last_sent = time.monotonic()
            while not self.stopping.is_set():
                with self.lock:
                    pending, self.commands = self.commands, []
                for frames in pending:
                    socket.send_multipart(frames)
                if socket.poll(50):
                    frames = socket.recv_multipart()
                    assert frames[0] == b"" and frames[1] == W_WORKER, f"not MDPW01: {frames!r}"
                    command = frames[2]
                    if command == REQUEST:
                        address, empty, body = frames[3], frames[4], frames[5:]
                        assert empty == b""
                        self.requests += 1
                        reply = self.handler(body)
                        socket.send_multipart([b"", W_WORKER, REPLY, address, b"", *reply])
                        if self.ready_twice and self.requests == 1:
                            socket.send_multipart([b"", W_WORKER, READY, self.service])
                        last_sent = time.monotonic()
                    elif command == HEARTBEAT:
                        self.broker_heartbeats += 1
                    elif command == DISCONNECT:
                        self.disconnected.set()
                        return
                if time.monotonic() - last_sent >= self.heartbeat:
                    socket.send_multipart([b"", W_WORKER, HEARTBEAT])
                    last_sent = time.monotonic()
        finally:
            socket.close(0)

    def disconnect(self) -> None:
        self.send([b"", W_WORKER, DISCONNECT])

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)


class MDPWorld:
    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.clients: List[MDPClient] = []
        self.workers: List[MDPWorker] = []

    def client(self, key: Key) -> MDPClient:
        client = MDPClient(self.deployment, key)
        self.clients.append(client)
        return client

    def worker(self, key: Key, service: bytes, handler: Callable[[List[bytes]], List[bytes]], **options) -> MDPWorker:  # type: ignore[no-untyped-def]
        worker = MDPWorker(self.deployment, key, service, handler, **options)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        for client in self.clients:
            client.close()


@pytest.fixture
def mdp(deployment: Deployment):  # type: ignore[no-untyped-def]
    world = MDPWorld(deployment)
    try:
        yield world
    finally:
        world.close()


def upper(frames: List[bytes]) -> List[bytes]:
    return [frame.upper() for frame in frames]


def wait_service(client: MDPClient, service: bytes, timeout: float = 20.0) -> None:
    """Asks ``mmi.service`` until it answers 200: the worker is registered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.request(b"mmi.service", service, timeout=5) == [b"200"]:
            return
        time.sleep(0.02)  # between round trips only: the answer itself is the event
    raise AssertionError(f"{service!r} not registered within {timeout:g} s")


def broker_lines(deployment: Deployment, text: str) -> List[str]:
    assert deployment.broker is not None
    return [line for line in deployment.broker.lines() if text in line]


# -- MDP ↔ MDP --------------------------------------------------------------------------------------

def test_mdp_client_and_worker_over_curve(deployment: Deployment, mdp: MDPWorld) -> None:
    client_key, worker_key = deployment.client_key(), deployment.worker_key("w1")
    deployment.start_broker()
    client = mdp.client(client_key)
    mdp.worker(worker_key, b"upper", upper)
    wait_service(client, b"upper")
    for index in range(50):
        assert client.request(b"upper", b"hello %d" % index) == [b"HELLO %d" % index]
    # Several body frames pass between MDP peers unchanged.
    assert client.request(b"upper", b"a", b"", b"c" * 5000) == [b"A", b"", b"C" * 5000]


def test_mmi_service_and_other_mmi(deployment: Deployment, mdp: MDPWorld) -> None:
    client_key, worker_key = deployment.client_key(), deployment.worker_key("w1")
    deployment.start_broker()
    client = mdp.client(client_key)
    assert client.request(b"mmi.service", b"echo") == [b"404"]
    mdp.worker(worker_key, b"echo", lambda body: body)
    wait_service(client, b"echo")
    assert client.request(b"mmi.service", b"echo") == [b"200"]
    assert client.request(b"mmi.nothing", b"echo") == [b"501"]


def test_a_key_not_on_the_allowlist_gets_nothing(deployment: Deployment, mdp: MDPWorld) -> None:
    stranger = deployment.key("stranger", role="client", allow=False)
    member_key, impostor = deployment.client_key(), deployment.client_key("not-a-worker")
    deployment.start_broker()
    client = mdp.client(stranger)
    client.send(b"mmi.service", b"echo")
    assert client.receive(1.5) is None
    # Roles come from the allowlist: a client key may not register as a worker.
    member = mdp.client(member_key)
    mdp.worker(impostor, b"echo", lambda body: body)
    deployment.broker.wait_for_line(lambda l: "role violation" in l, "role violation for READY from a client key")
    assert member.request(b"mmi.service", b"echo") == [b"404"]


# -- mixed fleets -------------------------------------------------------------------------------------

def test_mdp_client_served_by_an_smq_worker(deployment: Deployment, mdp: MDPWorld) -> None:
    swift, client_key = deployment.worker_key("swift"), deployment.client_key()
    deployment.start_broker()
    deployment.start_smq_worker(swift, "upper")
    client = mdp.client(client_key)
    wait_service(client, b"upper")
    for index in range(20):
        assert client.request(b"upper", b"mixed %d" % index) == [b"MIXED %d" % index]
    # A multi-frame body is for MDP workers only: none here, so no reply (and no crash).
    client.send(b"upper", b"a", b"b")
    assert client.receive(1.0) is None
    assert client.request(b"upper", b"still served") == [b"STILL SERVED"]


def test_smq_client_served_by_an_mdp_worker(deployment: Deployment, mdp: MDPWorld, tmp_path: Path) -> None:
    worker_key, client_key, prober = deployment.worker_key("w1"), deployment.client_key(), deployment.client_key("prober")
    deployment.start_broker()
    mdp.worker(worker_key, b"upper", upper)
    wait_service(mdp.client(prober), b"upper")
    # The Python SMQ/1 client (one-fragment requests): the broker builds the RESULT's digest.
    smq = deployment.client(client_key)
    assert smq.request("upper", b"from smq/1") == b"FROM SMQ/1"
    # smq submit, one fragment: the Swift client checks the digest of every result.
    source = tmp_path / "in.txt"
    payload = os.urandom(300).hex().encode()
    source.write_bytes(payload)
    output = tmp_path / "out.txt"
    done = deployment.smq_submit(client_key, source, "upper", "--output", str(output))
    assert done.returncode == 0, done.stdout + done.stderr
    assert output.read_bytes() == payload.upper()
    assert hashlib.sha256(output.read_bytes()).digest() == hashlib.sha256(payload.upper()).digest()
    # Each fragment of a larger SMQ/1 job is one request to the MDP worker (C51).
    output.unlink()
    done = deployment.smq_submit(client_key, source, "upper", "--fragment-size", "100", "--output", str(output))
    assert done.returncode == 0, done.stdout + done.stderr
    assert output.read_bytes() == payload.upper()


def test_mdp_requests_count_towards_max_jobs(deployment: Deployment, mdp: MDPWorld) -> None:
    client_key, worker_key = deployment.client_key(), deployment.worker_key("w1")
    deployment.start_broker("--max-jobs", "2")
    release = threading.Event()

    def slow(body: List[bytes]) -> List[bytes]:
        release.wait(10)
        return body

    client = mdp.client(client_key)
    mdp.worker(worker_key, b"slow", slow)
    wait_service(client, b"slow")
    for index in range(3):
        client.send(b"slow", b"%d" % index)
    # The third request is over max-jobs: no reply for it (MDP has no BUSY), and the broker says why.
    deployment.broker.wait_for_line(lambda l: "no reply to an MDP client" in l and "max-jobs" in l, "max-jobs line")
    release.set()
    replies = [client.receive(10) for _ in range(2)]
    assert sorted(r[1] for r in replies if r) == [b"0", b"1"]
    assert client.receive(0.5) is None


# -- malformed MDP --------------------------------------------------------------------------------------

MALFORMED = {
    "no delimiter": [C_CLIENT, b"echo", b"body"],
    "empty frame": [b""],
    "unknown header": [b"", b"MDPX99", b"echo", b"body"],
    "missing command": [b"", W_WORKER],
    "missing service": [b"", C_CLIENT],
    "ready without service": [b"", W_WORKER, READY],
    "request without body": [b"", C_CLIENT, b"echo"],
    "random frames": [os.urandom(7), os.urandom(300), os.urandom(1)],
    "unknown worker command": [b"", W_WORKER, b"\x09"],
    "reply to nobody": [b"", W_WORKER, REPLY, b"\x00" * 8, b"", b"x"],
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_mdp_is_dropped_and_service_goes_on(deployment: Deployment, mdp: MDPWorld, kind: str) -> None:
    worker_key, client_key = deployment.worker_key("w1"), deployment.client_key()
    offender_key = deployment.key("offender", role="both")
    deployment.start_broker()
    worker = mdp.worker(worker_key, b"echo", lambda body: body)
    client = mdp.client(client_key)
    wait_service(client, b"echo")
    offender = mdp.client(offender_key)
    offender.send_raw(MALFORMED[kind])
    # The worker connection itself sends garbage too: it holds no work, so it stays.
    worker.send(MALFORMED[kind])
    deployment.broker.wait_for_line(lambda l: "dropped" in l or "role violation" in l, f"a log line for {kind}")
    assert offender.receive(0.3) is None
    assert client.request(b"echo", b"after " + kind.encode()) == [b"after " + kind.encode()]
    assert offender.request(b"echo", b"offender too") == [b"offender too"]
    assert deployment.broker.popen.poll() is None


# -- workers leaving, READY twice, busy ------------------------------------------------------------------------

def test_worker_disconnect_and_second_ready_disturb_nobody(deployment: Deployment, mdp: MDPWorld) -> None:
    client_key = deployment.client_key()
    keys = {name: deployment.worker_key(name) for name in ("polite", "twice", "steady")}
    deployment.start_broker()
    client = mdp.client(client_key)
    polite = mdp.worker(keys["polite"], b"echo", lambda body: [b"polite"])
    wait_service(client, b"echo")
    polite.disconnect()
    deployment.broker.wait_for_line(lambda l: "MDP peer left" in l, "MDP peer left")
    assert client.request(b"mmi.service", b"echo") == [b"404"]
    # READY twice: that worker is disconnected (RFC 7), its request goes to another worker.
    twice = mdp.worker(keys["twice"], b"echo", lambda body: [b"twice"], ready_twice=True)
    wait_service(client, b"echo")
    assert client.request(b"echo", b"x") == [b"twice"]  # its second READY follows the reply
    assert twice.disconnected.wait(10), "no DISCONNECT after a second READY"
    steady = mdp.worker(keys["steady"], b"echo", lambda body: [b"steady"])
    wait_service(client, b"echo")
    for _ in range(5):
        assert client.request(b"echo", b"x") == [b"steady"]
    assert deployment.broker.popen.poll() is None


def test_a_busy_mdp_worker_is_not_expired(deployment: Deployment, mdp: MDPWorld) -> None:
    # Heartbeat 200 ms × liveness 3: a worker silent for 0.6 s is dead, unless it is busy.
    client_key, worker_key = deployment.client_key(), deployment.worker_key("w1")
    deployment.start_broker("--heartbeat-ms", "200", "--liveness", "3")

    def busy(body: List[bytes]) -> List[bytes]:
        time.sleep(2.0)  # the work itself: no heartbeats while it runs (RFC 7 workers cannot)
        return [b"done"]

    client = mdp.client(client_key)
    worker = mdp.worker(worker_key, b"busy", busy, heartbeat=0.2)
    wait_service(client, b"busy")
    assert client.request(b"busy", b"x", timeout=10) == [b"done"]
    assert not broker_lines(deployment, "presumed dead"), deployment.broker.transcript()
    assert not worker.disconnected.is_set()
    # An idle worker that goes silent is expired as RFC 7 says.
    assert worker.broker_heartbeats > 0
    worker.stopping.set()
    deployment.broker.wait_for_line(lambda l: "presumed dead" in l or "peer connection dropped" in l, "the silent worker expired")
