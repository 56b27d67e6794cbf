"""The client and worker engines against a scripted broker: a real pyzmq ROUTER with CURVE on
127.0.0.1 that sends exactly the bytes a test chooses, including ones a correct broker never
sends (bad digests, results outside the window, garbage). Every receive has a deadline."""

from __future__ import annotations

import struct
import threading
import time
from typing import Iterator, List, Optional, Tuple

import pytest
import zmq

from securemq import Client, Closed, Disconnected, IntegrityError, PayloadError, Reject, SMQError, Worker
from securemq.certs import Certificate, z85_decode
from securemq.protocol import (
    WHOLE_JOB_INDEX,
    Busy,
    Cancel,
    Command,
    Disconnect,
    Failed,
    Fragment,
    FragmentHeader,
    Heartbeat,
    Message,
    Ping,
    Pong,
    Ready,
    encode,
    encode_fragment,
    parse,
)
from securemq.protocol import Reject as RejectMessage


def certificate() -> Certificate:
    public, secret = zmq.curve_keypair()
    return Certificate(public_key=z85_decode(public.decode()), secret_key=z85_decode(secret.decode()))


class ScriptedBroker:
    """A CURVE ROUTER that a test drives message by message."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        public, secret = zmq.curve_keypair()
        self.public_key = z85_decode(public.decode())
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.curve_server = True
        self.socket.curve_secretkey = secret
        self.socket.curve_publickey = public
        self.socket.linger = 0
        self.socket.bind("tcp://127.0.0.1:*")
        self.endpoint = self.socket.last_endpoint.decode()

    def receive(self, timeout: float = 10.0) -> Tuple[bytes, Message]:
        """The next SMQ/1 message and who sent it (a multipart message fails the test)."""
        if not self.socket.poll(int(timeout * 1000)):
            raise AssertionError(f"nothing arrived within {timeout:g} s")
        identity, *frames = self.socket.recv_multipart()
        assert len(frames) == 1, f"a peer sent {len(frames)} frames: SMQ/1 is one frame"
        return identity, parse(frames[0])

    def expect(self, kind: type, timeout: float = 10.0, skip: Tuple[type, ...] = (Ping, Heartbeat)) -> Tuple[bytes, Message]:
        """The next message of ``kind``, skipping liveness messages."""
        deadline = time.monotonic() + timeout
        while True:
            identity, message = self.receive(max(0.01, deadline - time.monotonic()))
            if isinstance(message, kind):
                return identity, message
            assert isinstance(message, skip), f"expected {kind.__name__}, got {message}"

    def fragment(self, kind: type = Fragment, command: int = Command.SUBMIT, timeout: float = 10.0) -> Tuple[bytes, Fragment]:
        identity, message = self.expect(Fragment, timeout)
        assert isinstance(message, Fragment) and message.command == command, message
        return identity, message

    def nothing_for(self, seconds: float, ignore: Tuple[type, ...] = (Ping, Heartbeat)) -> None:
        """Fails if anything but liveness arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.socket.poll(int(left * 1000) + 1):
                _, message = self.receive(1)
                assert isinstance(message, ignore), f"unexpected {message}"

    def send(self, identity: bytes, frame: bytes) -> None:
        self.socket.send_multipart([identity, frame])

    def result(self, identity: bytes, submit: Fragment, body: bytes, tag: int = 7, **changes: object) -> None:
        header = FragmentHeader.make(submit.header.job_id, submit.header.index, submit.header.count, body)
        if changes:
            header = FragmentHeader(**{**header.__dict__, **changes})
        self.send(identity, encode_fragment(Command.RESULT, tag, submit.service, header, body))

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


@pytest.fixture
def broker() -> Iterator[ScriptedBroker]:
    scripted = ScriptedBroker()
    yield scripted
    scripted.close()


@pytest.fixture
def peers() -> Iterator[List[object]]:
    opened: List[object] = []
    yield opened
    for peer in opened:
        peer.close()  # type: ignore[attr-defined]


def connect_client(broker: ScriptedBroker, peers: List[object], **options: object) -> Client:
    client = Client.connect(broker.endpoint, broker.public_key, certificate(), **options)
    peers.append(client)
    return client


def connect_worker(broker: ScriptedBroker, peers: List[object], service: str = "svc", credit: int = 3,
                   **options: object) -> Worker:
    worker = Worker.connect(broker.endpoint, broker.public_key, certificate(), service, credit, **options)
    peers.append(worker)
    return worker


# -- client ------------------------------------------------------------------------------------


def test_submits_are_well_formed_and_the_window_counts_what_the_caller_has_not_taken(broker: ScriptedBroker, peers: list) -> None:
    client = connect_client(broker, peers)
    payload = bytes(range(256)) * 40  # 10,240 bytes
    job = client.submit(payload, "svc", fragment_size=1024, window=4)
    received = [broker.fragment() for _ in range(4)]
    identity, submits = received[0][0], [submit for _, submit in received]
    broker.nothing_for(0.3)
    for index, submit in enumerate(submits):
        h = submit.header
        assert (submit.tag, submit.service, h.index, h.count, h.offset, h.total_length) == (0, b"svc", index, 10, index * 1024, 10240)
        assert bytes(submit.body) == payload[index * 1024:(index + 1) * 1024]
    # All four answered, but the caller has taken none: still no fifth SUBMIT.
    for index, submit in enumerate(submits):
        broker.result(identity, submit, f"R{index}".encode())
    broker.nothing_for(0.3)
    first = job.next(timeout=5)
    assert first.index == 0 and first.body == b"R0"
    _, fifth = broker.fragment()
    assert fifth.header.index == 4


def _swallow(call) -> None:  # type: ignore[no-untyped-def]
    try:
        call()
    except Exception:
        pass


def start_job(broker: ScriptedBroker, client: Client, count: int, window: int = 8) -> Tuple[object, bytes, List[Fragment]]:
    job = client.submit(b"x" * count, "svc", fragment_size=1, window=window)
    first_identity, first = broker.fragment()
    submits = [first] + [broker.fragment()[1] for _ in range(min(count, window) - 1)]
    return job, first_identity, submits


def test_results_are_put_in_order_and_duplicates_dropped(broker: ScriptedBroker, peers: list) -> None:
    client = connect_client(broker, peers)
    job, identity, submits = start_job(broker, client, 3)
    broker.result(identity, submits[2], b"c", tag=3)
    broker.result(identity, submits[0], b"a", tag=1)
    broker.result(identity, submits[0], b"a", tag=1)  # a duplicate
    broker.result(identity, submits[1], b"b", tag=2)
    results = list(job.results(timeout=5))  # type: ignore[attr-defined]
    assert [(r.index, r.body, r.worker_tag) for r in results] == [(0, b"a", 1), (1, b"b", 2), (2, b"c", 3)]
    assert job.stats.duplicates == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("tamper, what", [
    ({"digest": bytes(32)}, "SHA-256"),
    ({"count": 4, "flags": 0}, "fragments"),
])
def test_a_bad_result_fails_the_job_and_cancels_it(broker: ScriptedBroker, peers: list, tamper: dict, what: str) -> None:
    client = connect_client(broker, peers)
    job, identity, submits = start_job(broker, client, 3)
    broker.result(identity, submits[0], b"fine")
    broker.result(identity, submits[1], b"tampered", **tamper)
    assert job.next(timeout=5).body == b"fine"  # type: ignore[attr-defined]
    with pytest.raises(IntegrityError, match=what):
        job.next(timeout=5)  # type: ignore[attr-defined]
    _, cancel = broker.expect(Cancel)
    assert cancel.job_id == submits[0].header.job_id  # type: ignore[attr-defined]


def test_a_result_outside_the_window_fails_the_job(broker: ScriptedBroker, peers: list) -> None:
    client = connect_client(broker, peers)
    job, identity, submits = start_job(broker, client, 10, window=2)
    beyond = FragmentHeader.make(submits[0].header.job_id, 5, 10, b"z")
    broker.send(identity, encode_fragment(Command.RESULT, 1, "svc", beyond, b"z"))
    with pytest.raises(IntegrityError, match="window"):
        job.next(timeout=5)  # type: ignore[attr-defined]


def test_busy_resends_the_same_submit(broker: ScriptedBroker, peers: list) -> None:
    client = connect_client(broker, peers)
    job, identity, submits = start_job(broker, client, 2)
    broker.send(identity, encode(Busy(submits[1].header.job_id, 1, 50)))
    _, again = broker.fragment()
    assert again.header == submits[1].header and bytes(again.body) == bytes(submits[1].body)
    broker.result(identity, submits[0], b"0")
    broker.result(identity, again, b"1")
    assert job.read(timeout=5) == b"01"  # type: ignore[attr-defined]
    assert job.stats.busy_resends == 1  # type: ignore[attr-defined]


def test_failed_is_typed_for_a_fragment_and_for_the_whole_job(broker: ScriptedBroker, peers: list) -> None:
    client = connect_client(broker, peers)
    job, identity, submits = start_job(broker, client, 2)
    broker.send(identity, encode(Failed(submits[0].header.job_id, 1, 422, "line\nbreak")))
    with pytest.raises(SMQError) as failure:
        job.read(timeout=5)  # type: ignore[attr-defined]
    assert (failure.value.code, failure.value.index, failure.value.reason) == (422, 1, "line\\nbreak")

    job, identity, submits = start_job(broker, client, 1)
    broker.send(identity, encode(Failed(submits[0].header.job_id, WHOLE_JOB_INDEX, 503, "draining")))
    with pytest.raises(SMQError) as failure:
        job.read(timeout=5)  # type: ignore[attr-defined]
    assert (failure.value.code, failure.value.index) == (503, None)
    assert "503 draining" in str(failure.value)


def test_garbage_is_dropped_and_the_client_goes_on(broker: ScriptedBroker, peers: list) -> None:
    client = connect_client(broker, peers)
    job, identity, submits = start_job(broker, client, 1)
    for frame in (b"", b"MDP", b"SMQ\x02\x11", b"SMQ\x01\x7f", encode(Pong()) + b"x"):
        broker.send(identity, frame)
    broker.socket.send_multipart([identity, b"SMQ\x01\x04", b"second frame"])
    broker.result(identity, submits[0], b"still fine")
    assert job.read(timeout=5) == b"still fine"  # type: ignore[attr-defined]


def test_disconnect_before_service_is_a_refusal(broker: ScriptedBroker, peers: list) -> None:
    client = connect_client(broker, peers)
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(_capture(lambda: client.request("svc", b"x", timeout=10))))
    thread.start()
    identity, _ = broker.fragment()
    broker.send(identity, encode(Disconnect("role violation")))
    thread.join(10)
    assert isinstance(outcome[0], Disconnected) and "role violation" in str(outcome[0])


def test_disconnect_after_service_reconnects_and_resubmits(broker: ScriptedBroker, peers: list) -> None:
    client = connect_client(broker, peers, connection=_fast())
    job, identity, submits = start_job(broker, client, 2)
    broker.result(identity, submits[0], b"0")
    broker.send(identity, encode(Disconnect("broker shutting down")))
    # A new connection (a new routing id) resends what is unanswered: fragment 1 only (C26).
    new_identity, again = broker.fragment()
    assert new_identity != identity and again.header.index == 1
    broker.result(new_identity, again, b"1")
    assert job.read(timeout=5) == b"01"  # type: ignore[attr-defined]
    assert job.stats.resubmitted == 1  # type: ignore[attr-defined]


def test_a_silent_broker_is_left_and_the_job_resubmitted(broker: ScriptedBroker, peers: list) -> None:
    client = connect_client(broker, peers, heartbeat_interval=0.1, liveness=3, connection=_fast())
    job, identity, submits = start_job(broker, client, 1)
    # The client PINGs; this broker never answers: after 3 intervals it connects anew (C29).
    _, ping = broker.expect(Ping, skip=())
    new_identity, again = broker.fragment()
    assert new_identity != identity and again.header == submits[0].header
    broker.result(new_identity, again, b"back")
    assert job.read(timeout=5) == b"back"  # type: ignore[attr-defined]


def _capture(call) -> object:  # type: ignore[no-untyped-def]
    try:
        return call()
    except Exception as error:
        return error


def _fast():  # type: ignore[no-untyped-def]
    from securemq import ConnectionOptions

    return ConnectionOptions(reconnect_interval=0.05, reconnect_interval_max=0.2)


# -- worker ------------------------------------------------------------------------------------


def work(job_id: bytes, index: int, count: int, body: bytes, offset: int = 0, total: Optional[int] = None,
         delivery: int = 99, service: str = "svc", **changes: object) -> bytes:
    header = FragmentHeader.make(job_id, index, count, body, offset=offset, total_length=len(body) + offset if total is None else total)
    if changes:
        header = FragmentHeader(**{**header.__dict__, **changes})
    return encode_fragment(Command.WORK, delivery, service, header, body)


def serve(worker: Worker, handler, **kwargs) -> threading.Thread:  # type: ignore[no-untyped-def]
    thread = threading.Thread(target=lambda: _swallow(lambda: worker.run(handler, **kwargs)), daemon=True)
    thread.start()
    return thread


def test_the_worker_announces_itself_and_answers_work(broker: ScriptedBroker, peers: list) -> None:
    worker = connect_worker(broker, peers, credit=3, heartbeat_interval=0.25)
    identity, ready = broker.expect(Ready)
    assert ready == Ready(3, 250, b"svc")
    serve(worker, lambda body: body[::-1])
    job = b"J" * 16
    broker.send(identity, work(job, 1, 3, b"abc", offset=3, total=9, delivery=0xABCDEF))
    _, done = broker.fragment(command=Command.DONE)
    h = done.header
    assert (done.tag, done.service, h.job_id, h.index, h.count, h.offset, h.total_length, bytes(done.body)) == \
        (0xABCDEF, b"svc", job, 1, 3, 0, 0, b"cba")


@pytest.mark.parametrize("frame, code", [
    (work(b"J" * 16, 0, 1, b"abc", digest=bytes(32)), 400),        # a body that fails its SHA-256
    (work(b"J" * 16, 0, 1, b"abc", reserved=1), 400),              # a header check (C5)
    (work(b"J" * 16, 0, 1, b"x" * 600), 413),                      # larger than the worker's max-fragment
])
def test_bad_work_is_rejected_not_run(broker: ScriptedBroker, peers: list, frame: bytes, code: int) -> None:
    worker = connect_worker(broker, peers, max_fragment=512)
    identity, _ = broker.expect(Ready)
    ran = threading.Event()
    serve(worker, lambda body: ran.set() or body)
    broker.send(identity, frame)
    _, reject = broker.expect(RejectMessage)
    assert (reject.delivery_id, reject.code, reject.retryable) == (99, code, False)  # type: ignore[attr-defined]
    assert not ran.is_set()


def test_handler_outcomes(broker: ScriptedBroker, peers: list) -> None:
    worker = connect_worker(broker, peers, max_fragment=512)
    identity, _ = broker.expect(Ready)

    def handler(body: bytes) -> bytes:
        if body == b"reject":
            raise Reject(409, retryable=True, reason="busy elsewhere")
        if body == b"crash":
            raise KeyError("missing")
        if body == b"huge":
            return b"y" * 513
        return body

    serve(worker, handler)
    for delivery, body in ((1, b"reject"), (2, b"crash"), (3, b"huge")):
        broker.send(identity, work(b"J" * 16, 0, 1, body, delivery=delivery))
    rejects = {r.delivery_id: r for r in (broker.expect(RejectMessage)[1] for _ in range(3))}  # type: ignore[attr-defined]
    assert (rejects[1].code, rejects[1].retryable, rejects[1].reason) == (409, True, "busy elsewhere")
    assert (rejects[2].code, rejects[2].retryable) == (520, False) and "KeyError" in rejects[2].reason
    assert rejects[3].code == 413


def test_heartbeats_flow_while_the_handler_works(broker: ScriptedBroker, peers: list) -> None:
    worker = connect_worker(broker, peers, heartbeat_interval=0.1)
    identity, _ = broker.expect(Ready)
    release = threading.Event()
    serve(worker, lambda body: release.wait(10) and body)
    broker.send(identity, work(b"J" * 16, 0, 1, b"slow"))
    for _ in range(5):  # five intervals' worth while the handler is blocked
        broker.expect(Heartbeat, skip=())
        broker.send(identity, encode(Heartbeat()))
    release.set()
    _, done = broker.fragment(command=Command.DONE)
    assert bytes(done.body) == b"slow"


def test_disconnect_after_service_makes_the_worker_register_again(broker: ScriptedBroker, peers: list) -> None:
    worker = connect_worker(broker, peers, connection=_fast())
    identity, _ = broker.expect(Ready)
    serve(worker, lambda body: body)
    broker.send(identity, encode(Heartbeat()))
    broker.send(identity, encode(Disconnect("broker shutting down")))
    new_identity, ready = broker.expect(Ready)
    assert new_identity != identity and ready == Ready(3, 2500, b"svc")  # type: ignore[attr-defined]


def test_close_says_goodbye(broker: ScriptedBroker, peers: list) -> None:
    worker = connect_worker(broker, peers)
    broker.expect(Ready)
    thread = serve(worker, lambda body: body)
    worker.close()
    _, goodbye = broker.expect(Disconnect)
    assert goodbye == Disconnect("worker closing")
    thread.join(5)
    assert not thread.is_alive()


def test_a_refused_worker_stops(broker: ScriptedBroker, peers: list) -> None:
    worker = connect_worker(broker, peers)
    identity, _ = broker.expect(Ready)
    broker.send(identity, encode(Disconnect("key may not serve svc")))
    with pytest.raises(Disconnected, match="may not serve"):
        worker.run(lambda body: body)


def test_requests_use_ids_apart_from_jobs(broker: ScriptedBroker, peers: list) -> None:
    # C32: one random half per client, a counter; requests set the counter's top bit.
    client = connect_client(broker, peers)
    client.submit(b"a", "svc")
    _, job = broker.fragment()
    threading.Thread(target=lambda: _swallow(lambda: client.request("svc", b"b", timeout=2)), daemon=True).start()
    _, request = broker.fragment()
    job_id, request_id = job.header.job_id, request.header.job_id
    assert job_id[:8] == request_id[:8]
    assert struct.unpack(">Q", job_id[8:])[0] == 1 and request_id[8] & 0x80


def test_a_file_that_grows_while_it_is_sent_fails_before_its_last_fragment(broker: ScriptedBroker, peers: list, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # C18: the broker never sees a complete job with a wrong-sized payload.
    client = connect_client(broker, peers)
    path = tmp_path / "growing.bin"
    path.write_bytes(b"a" * 30)
    job = client.submit(path, "svc", fragment_size=10, window=1)
    identity, first = broker.fragment()
    with open(path, "ab") as handle:
        handle.write(b"more")
    broker.result(identity, first, b"0")
    assert job.next(timeout=5).body == b"0"
    _, second = broker.fragment()
    broker.result(identity, second, b"1")
    assert job.next(timeout=5).body == b"1"
    with pytest.raises(PayloadError, match="grew"):
        job.next(timeout=5)
    _, cancel = broker.expect(Cancel)
    assert cancel.job_id == first.header.job_id  # type: ignore[attr-defined]


def test_closing_the_client_ends_a_waiting_iterator(broker: ScriptedBroker, peers: list) -> None:
    client = connect_client(broker, peers)
    job = client.submit(b"abc", "svc")
    broker.fragment()
    outcome: list = []
    reader = threading.Thread(target=lambda: outcome.append(_capture(lambda: job.read(timeout=10))))
    reader.start()
    client.close()
    reader.join(10)
    assert isinstance(outcome[0], Closed)
    with pytest.raises(Closed):
        client.submit(b"x", "svc")
