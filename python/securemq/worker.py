"""The SMQ/1 worker: serve one service at the broker with a handler per fragment.

::

    from securemq import Worker, Reject

    def upper(body: bytes) -> bytes:
        if not body:
            raise Reject(422, retryable=False, reason="empty input")
        return body.upper()

    worker = Worker.connect("tcp://127.0.0.1:5555", "certs/broker.key", "certs/worker-1.key_secret",
                            service="upper", credit=8)
    worker.run(upper)          # until worker.close() (from another thread or a signal handler)

The socket, its heartbeats and reconnection live on the worker's own thread, so a slow handler
never makes the worker look dead; the handler runs on the thread that called :meth:`Worker.run`
(or on ``concurrency`` threads).
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from .certs import Certificate, load_certificate, load_public_key
from .errors import ConfigurationError, Disconnected, Reject, SecureMQError
from .protocol import (
    DEFAULT_MAX_FRAGMENT,
    HEARTBEAT_MS_RANGE,
    Command,
    Disconnect,
    FailureCode,
    Fragment,
    FragmentHeader,
    Heartbeat,
    ProtocolError,
    Ready,
    digest,
    encode,
    encode_fragment,
    max_message_size,
    parse,
    validate_service,
)
from .protocol import Reject as RejectMessage
from .transport import ConnectionOptions, SocketEngine

__all__ = ["Worker", "WorkerOptions", "WorkItem", "Handler"]

Handler = Callable[[bytes], Union[bytes, bytearray, memoryview]]
CertSource = Union[str, "os.PathLike[str]", Certificate]
KeySource = Union[str, bytes, "os.PathLike[str]", Certificate]

_END = object()


@dataclass
class WorkerOptions:
    """Credit, heartbeats and limits.

    Attributes:
        credit: Fragments the worker can hold at once (the broker grants at most
            weight x base-window of them).
        heartbeat_interval: Seconds between HEARTBEATs, announced in READY (0.1-60 s).
        liveness: Intervals without a word from the broker after which the worker reconnects and
            sends READY again (C29).
        max_fragment: The largest fragment (request or result) accepted.
        connection: How to connect (timeouts, reconnect intervals).
    """

    credit: int = 1
    heartbeat_interval: float = 2.5
    liveness: int = 3
    max_fragment: int = DEFAULT_MAX_FRAGMENT
    connection: ConnectionOptions = field(default_factory=ConnectionOptions)


@dataclass(frozen=True)
class WorkItem:
    """One fragment to process, as the worker's thread received it.

    Attributes:
        job_id: The job (16 bytes; scoped by the client's key at the broker).
        index: The fragment's index in the job.
        count: The job's fragment count.
        offset: The fragment's offset in the client's payload.
        body: The fragment's bytes (its SHA-256 was checked).
        delivery_id: The broker's handle for this delivery (the WORK's tag).
        epoch: The connection it came on (a result for an older connection is not sent).
    """

    job_id: bytes
    index: int
    count: int
    offset: int
    body: bytes
    delivery_id: int
    epoch: int


class _WorkerEngine(SocketEngine):
    def __init__(self, endpoint: str, broker_key: bytes, cert: Certificate, service: bytes, options: WorkerOptions,
                 logger: logging.Logger) -> None:
        self.service = service
        self.worker_options = options
        self.work: "queue.Queue[object]" = queue.Queue()
        #: Set when the worker ends: fragments still queued are not processed (the broker requeues them).
        self.ended = threading.Event()
        self.end_reason: Optional[SecureMQError] = None
        self.processed = 0
        self.last_heard = time.monotonic()
        super().__init__("securemq-worker", endpoint, broker_key, cert, max_message_size(options.max_fragment),
                         options.connection, logger)
        self.every(options.heartbeat_interval, self._heartbeat)
        self.start()

    def on_connected(self) -> None:
        # A first connection or a new one: the broker knows connections, not workers, so the
        # service is announced again.
        self.last_heard = time.monotonic()
        heartbeat_ms = int(round(self.worker_options.heartbeat_interval * 1000))
        self.send(encode(Ready(self.worker_options.credit, heartbeat_ms, self.service)))
        self.logger.info("ready for %s (credit %d)", self.service.decode(), self.worker_options.credit)

    def _heartbeat(self) -> None:
        if not self.is_connected:
            return
        self.send_if_connected(encode(Heartbeat()))
        # Read what already arrived before judging silence: after a pause the timer can fire
        # before the poll reports the messages that waited.
        self._read_all()
        silence = time.monotonic() - self.last_heard
        options = self.worker_options
        if silence > options.heartbeat_interval * options.liveness:
            self.last_heard = time.monotonic()
            self.reconnect(f"no message from the broker for {silence * 1000:.0f} ms")

    def on_message(self, frame: memoryview) -> None:
        self.last_heard = time.monotonic()
        try:
            message = parse(frame, self.worker_options.max_fragment)
        except ProtocolError as error:
            allowed, held = self.rate_limiter.allow(error.code)
            if allowed:
                self.logger.warning("dropped a malformed message from the broker: %s%s", error,
                                    f" ({held} more not logged)" if held else "")
            if error.tag is not None and error.command == Command.WORK:
                self._reject(error.tag, error.failure_code or FailureCode.MALFORMED, False, str(error))
            return
        if isinstance(message, Fragment) and message.command == Command.WORK:
            self.served = True
            header = message.header
            if digest(message.body) != header.digest:
                self._reject(message.tag, FailureCode.MALFORMED, False, f"fragment {header.index} failed its SHA-256 check")
                return
            self.work.put(WorkItem(header.job_id, header.index, header.count, header.offset, bytes(message.body),
                                   message.tag, self.epoch))
        elif isinstance(message, Heartbeat):
            self.served = True
        elif isinstance(message, Disconnect):
            # After service: reconnect, READY again (on_connected). Before: a refusal.
            if not self.sent_us_away(message.reason):
                self.fail(Disconnected(f"the broker disconnected this worker: {message.reason}"))
        else:
            allowed, _ = self.rate_limiter.allow(f"unexpected-{message.command}")
            if allowed:
                self.logger.warning("dropped an unexpected %s from the broker", Command.name(message.command))

    def finish(self, item: WorkItem, outcome: Union[bytes, Reject]) -> None:
        """Sends a handler's outcome: DONE with the result, or REJECT."""
        self.processed += 1
        if item.epoch != self.epoch or not self.is_connected:
            # The delivery belonged to a connection that is gone: the broker requeued it, and
            # would drop this answer as coming from another connection.
            self.logger.debug("dropped the result of delivery %d from an old connection", item.delivery_id)
            return
        if isinstance(outcome, Reject):
            self._reject(item.delivery_id, outcome.code, outcome.retryable, outcome.reason)
            return
        if len(outcome) > self.worker_options.max_fragment:
            self._reject(item.delivery_id, FailureCode.TOO_LARGE, False,
                         f"result of {len(outcome)} bytes exceeds max-fragment {self.worker_options.max_fragment}")
            return
        header = FragmentHeader.make(item.job_id, item.index, item.count, outcome)
        self.send(encode_fragment(Command.DONE, item.delivery_id, self.service, header, outcome))

    def _reject(self, delivery_id: int, code: int, retryable: bool, reason: str) -> None:
        self.send(encode(RejectMessage(delivery_id, code, retryable, reason)))

    def before_close(self) -> None:
        # The broker requeues what we hold at once, instead of after heartbeat silence.
        if self.is_connected:
            self.send(encode(Disconnect("worker closing")))

    def on_failed(self, error: SecureMQError) -> None:
        self.end_reason = error
        self.ended.set()
        self.work.put(_END)

    def on_closed(self) -> None:
        self.ended.set()
        self.work.put(_END)


class Worker:
    """An SMQ/1 worker connected to a broker over CURVE, serving one service.

    Use :meth:`connect`, then :meth:`run`; :meth:`close` (from any thread) sends DISCONNECT
    and makes :meth:`run` return.
    """

    def __init__(self, engine: _WorkerEngine, service: str, options: WorkerOptions) -> None:
        self._engine = engine
        self.service = service
        self.options = options

    @classmethod
    def connect(cls, endpoint: str, broker_key: KeySource, cert: CertSource, service: str, credit: int = 1, *,
                options: Optional[WorkerOptions] = None, logger: Optional[logging.Logger] = None,
                **overrides: object) -> Worker:
        """Connects to a broker, waits for the CURVE handshake and sends READY.

        Args:
            endpoint: The broker, e.g. ``tcp://127.0.0.1:5555``.
            broker_key: The broker's public key: its certificate file, 40 Z85 characters, 32
                bytes or a :class:`Certificate`.
            cert: This worker's secret certificate (``NAME.key_secret``, mode 0600); its public
                key must be on the allowlist with role ``worker`` (or ``both``).
            service: The service to serve: 1-255 bytes of ``[A-Za-z0-9._-]``.
            credit: Fragments held at once (overrides ``options.credit``).
            options: Heartbeats, limits and timeouts.
            logger: Where the worker logs (default ``securemq.worker``).
            **overrides: Any :class:`WorkerOptions` field, e.g. ``heartbeat_interval=0.5``.

        Raises:
            RejectedByServer, HandshakeFailed, Unreachable, CertificateError, ConfigurationError.
        """
        import dataclasses

        opts = options or WorkerOptions()
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(WorkerOptions)})
        if unknown:
            raise ConfigurationError(f"unknown worker option(s): {', '.join(unknown)}")
        opts = dataclasses.replace(opts, credit=credit, **overrides)  # type: ignore[arg-type]
        service_bytes = validate_service(service)
        if not 1 <= opts.credit <= 0xFFFFFFFF:
            raise ConfigurationError("the credit must be at least 1")
        if int(round(opts.heartbeat_interval * 1000)) not in HEARTBEAT_MS_RANGE:
            raise ConfigurationError("the heartbeat interval must be 0.1-60 seconds (the broker refuses others)")
        if opts.liveness < 1:
            raise ConfigurationError("the liveness must be at least 1")
        key = load_public_key(broker_key)
        certificate = cert if isinstance(cert, Certificate) else load_certificate(cert)
        engine = _WorkerEngine(endpoint, key, certificate, service_bytes, opts, logger or logging.getLogger("securemq.worker"))
        try:
            engine.wait_connected(opts.connection.connect_timeout + 1.0)
        except BaseException:
            engine.stop()
            raise
        return cls(engine, service, opts)

    @property
    def processed(self) -> int:
        """Fragments answered (DONE or REJECT) so far."""
        return self._engine.processed

    def run(self, handler: Union[Handler, Callable[[WorkItem], Union[bytes, bytearray, memoryview]]],
            concurrency: int = 1, pass_item: bool = False) -> None:
        """Serves fragments with ``handler`` until :meth:`close`.

        The handler gets a fragment's bytes and returns the result's bytes; it refuses a
        fragment by raising :class:`Reject`. Any other exception is reported to the broker as a
        non-retryable REJECT 520 with the exception as the reason (and logged).

        Args:
            handler: ``bytes -> bytes``.
            concurrency: Threads running the handler at once (at most the credit is useful).
            pass_item: Give the handler the :class:`WorkItem` (job id, index, count, offset and
                body) instead of the body alone.

        Raises:
            RejectedByServer: the key was revoked (it is refused on reconnection).
            Disconnected: the broker refused this worker (its role or service).
            SecureMQError: the connection failed otherwise.
        """
        if concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if concurrency == 1:
            self._serve(handler, pass_item)
        else:
            threads = [threading.Thread(target=self._serve, args=(handler, pass_item), name=f"securemq-handler-{i}", daemon=True)
                       for i in range(concurrency)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        if self._engine.end_reason is not None:
            raise self._engine.end_reason

    def _serve(self, handler: Callable[..., Union[bytes, bytearray, memoryview]], pass_item: bool) -> None:
        engine = self._engine
        while True:
            item = engine.work.get()
            if item is _END or engine.ended.is_set():
                engine.work.put(_END)  # for the other handler threads
                return
            assert isinstance(item, WorkItem)
            outcome: Union[bytes, Reject]
            try:
                outcome = bytes(handler(item if pass_item else item.body))
            except Reject as rejection:
                outcome = rejection
            except Exception as error:  # the handler's bug: the client hears of it, the log keeps it
                engine.logger.exception("the handler failed on fragment %d", item.index)
                outcome = Reject(FailureCode.WORKER_FAILURE, False, f"{type(error).__name__}: {error}")
            engine.call(functools.partial(engine.finish, item, outcome))

    def close(self, timeout: float = 5.0) -> None:
        """Sends DISCONNECT (the broker requeues what this worker holds), closes the socket and
        makes :meth:`run` return. Waits at most ``timeout`` seconds for the socket thread."""
        self._engine.stop(timeout)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
