"""The SMQ/1 client: submit payloads to a service and get the results back in order.

::

    from securemq import Client

    with Client.connect("tcp://127.0.0.1:5555", "certs/broker.key", "certs/client-1.key_secret") as client:
        for result in client.submit(b"..." * 1000, "upper"):
            sink.write(result.body)
        digest = client.request("sha256", b"hello", timeout=5)

All socket work happens on the client's own thread (see :mod:`securemq.transport`); the
methods here may be called from any thread, and every wait has a timeout.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Union

from .certs import Certificate, load_certificate, load_public_key
from .errors import (
    Closed,
    ConfigurationError,
    Disconnected,
    IntegrityError,
    PayloadError,
    SecureMQError,
    SMQError,
    Timeout,
)
from .pipeline import Gatherer, JobIds, Payload, Result, fragment_count, make_request_header
from .protocol import (
    DEFAULT_MAX_FRAGMENT,
    WHOLE_JOB_INDEX,
    Busy,
    Cancel,
    Command,
    Disconnect,
    Failed,
    Fragment,
    FragmentHeader,
    Heartbeat,
    Ping,
    Pong,
    ProtocolError,
    digest,
    encode,
    encode_fragment,
    max_message_size,
    parse,
    validate_service,
)
from .transport import ConnectionOptions, SocketEngine

__all__ = ["Client", "ClientOptions", "Job", "JobStats"]

CertSource = Union[str, "os.PathLike[str]", Certificate]
KeySource = Union[str, bytes, "os.PathLike[str]", Certificate]
Data = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]

_END = object()


@dataclass
class ClientOptions:
    """Windows, fragment sizes and heartbeats.

    Attributes:
        window: Fragments outstanding per job: sent but not yet handed to the caller.
        fragment_size: Payload bytes per fragment (every fragment but the last has this size).
        max_fragment: The largest result body accepted; also the largest fragment size.
        heartbeat_interval: Seconds between PINGs while jobs are open.
        liveness: Intervals without a word from the broker after which the client reconnects
            and resubmits what is unanswered (C29).
        result_timeout: Default seconds a job's iterator waits for its next result.
        connection: How to connect (timeouts, reconnect intervals).
    """

    window: int = 32
    fragment_size: int = 256 << 10
    max_fragment: int = DEFAULT_MAX_FRAGMENT
    heartbeat_interval: float = 2.5
    liveness: int = 3
    result_timeout: float = 60.0
    connection: ConnectionOptions = field(default_factory=ConnectionOptions)


@dataclass
class JobStats:
    """What happened to a job, for logs and tests.

    Attributes:
        fragments: The job's fragment count.
        busy_resends: SUBMITs resent after BUSY.
        resubmitted: SUBMITs resent after a reconnection (C26).
        duplicates: Results that came twice and were dropped.
        per_worker: Results per worker tag (the first 8 bytes of the worker's key, big-endian).
    """

    fragments: int = 0
    busy_resends: int = 0
    resubmitted: int = 0
    duplicates: int = 0
    per_worker: "Counter[int]" = field(default_factory=Counter)


class _JobState:
    """A job on the client's thread: the payload, what is out, what came back."""

    def __init__(self, job_id: bytes, service: bytes, payload: Payload, fragment_size: int, window: int) -> None:
        self.job_id = job_id
        self.service = service
        self.payload = payload
        self.fragment_size = fragment_size
        self.window = window
        self.count = fragment_count(payload.length, fragment_size)
        self.gatherer = Gatherer(job_id, self.count, window)
        self.next_index = 0
        self.handed = 0
        #: SUBMITs sent and not yet answered, kept for BUSY resends and resubmission.
        self.outstanding: Dict[int, bytes] = {}
        self.results: "queue.Queue[object]" = queue.Queue()
        self.failure: Optional[SecureMQError] = None
        self.finished = False
        self.stats = JobStats(fragments=self.count)


class _RequestState:
    def __init__(self, job_id: bytes, message: bytes, future: "concurrent.futures.Future[bytes]") -> None:
        self.job_id = job_id
        self.message = message
        self.future = future


class _ClientEngine(SocketEngine):
    def __init__(self, endpoint: str, broker_key: bytes, cert: Certificate, options: ClientOptions,
                 logger: logging.Logger) -> None:
        self.client_options = options
        self.jobs: Dict[bytes, _JobState] = {}
        self.requests: Dict[bytes, _RequestState] = {}
        self.ids = JobIds()
        self._clock = time.monotonic
        self.last_heard = self._clock()
        super().__init__("securemq-client", endpoint, broker_key, cert, max_message_size(options.max_fragment),
                         options.connection, logger)
        self.every(options.heartbeat_interval, self._heartbeat)
        self.start()

    # -- jobs -------------------------------------------------------------------------------

    def start_job(self, job: _JobState) -> None:
        if self.failure is not None or self.state == "closed":
            self._fail_job(job, self.failure or Closed("the client is closed"))
            return
        if not self.jobs and not self.requests:
            self.last_heard = self._clock()
        self.jobs[job.job_id] = job
        self._pump(job)

    def _pump(self, job: _JobState) -> None:
        """Sends fragments while the job's window has room."""
        while job.failure is None and not job.finished and job.next_index < job.count \
                and job.next_index - job.handed < job.window:
            index = job.next_index
            offset = index * job.fragment_size
            length = min(job.fragment_size, job.payload.length - offset)
            last = index == job.count - 1
            try:
                body = job.payload.read(offset, length, last)
            except PayloadError as error:
                self.send(encode(Cancel(job.job_id)))
                self._fail_job(job, error)
                return
            header = make_request_header(job.job_id, index, job.count, offset, job.payload.length, body)
            message = encode_fragment(Command.SUBMIT, 0, job.service, header, body)
            job.outstanding[index] = message
            job.next_index += 1
            self.send(message)

    def taken(self, job: _JobState) -> None:
        """The caller took a result: the window has room for one more fragment."""
        job.handed += 1
        self._pump(job)

    def cancel(self, job: _JobState) -> None:
        if job.failure is not None or job.finished:
            return
        self.send(encode(Cancel(job.job_id)))
        self._fail_job(job, SMQError(410, "the job was cancelled by the client", None, job.job_id))

    def _finish_job(self, job: _JobState) -> None:
        job.finished = True
        job.outstanding.clear()
        job.payload.close()
        self.jobs.pop(job.job_id, None)
        job.results.put(_END)

    def _fail_job(self, job: _JobState, error: SecureMQError) -> None:
        """Ends a job with ``error``. Results already in order stay: the caller gets them first."""
        if job.failure is not None or job.finished:
            return
        job.failure = error
        job.outstanding.clear()
        job.payload.close()
        self.jobs.pop(job.job_id, None)
        job.results.put(error)

    def _fail_all(self, error: SecureMQError) -> None:
        for job in list(self.jobs.values()):
            self._fail_job(job, error)
        for request in list(self.requests.values()):
            self._finish_request(request, error)

    # -- requests ---------------------------------------------------------------------------

    def start_request(self, service: bytes, body: bytes, future: "concurrent.futures.Future[bytes]") -> bytes:
        """Registers and sends a one-fragment job; returns its id (for cancelling)."""
        job_id = self.ids.next_request()
        header = FragmentHeader.make(job_id, 0, 1, body, offset=0, total_length=len(body))
        message = encode_fragment(Command.SUBMIT, 0, service, header, body)

        def register() -> None:
            if self.failure is not None or self.state == "closed":
                future.set_exception(self.failure or Closed("the client is closed"))
                return
            if not self.jobs and not self.requests:
                self.last_heard = self._clock()
            self.requests[job_id] = _RequestState(job_id, message, future)
            self.send(message)

        if not self.call(register):
            future.set_exception(self.failure or Closed("the client is closed"))
        return job_id

    def cancel_request(self, job_id: bytes) -> None:
        request = self.requests.get(job_id)
        if request is None:
            return
        self.send(encode(Cancel(job_id)))
        self.requests.pop(job_id, None)

    def _finish_request(self, request: _RequestState, outcome: Union[bytes, SecureMQError]) -> None:
        self.requests.pop(request.job_id, None)
        if request.future.done():
            return
        if isinstance(outcome, BaseException):
            request.future.set_exception(outcome)
        else:
            request.future.set_result(outcome)

    # -- connection events ------------------------------------------------------------------

    def on_connected(self) -> None:
        self.last_heard = self._clock()
        if self.epoch > 1:
            self._resubmit_outstanding()

    def _resubmit_outstanding(self) -> None:
        """After a reconnection, what the broker may have lost is sent again (C26, C29). It
        ignores what it still holds, and the gatherer drops results that come twice."""
        count = 0
        for job in self.jobs.values():
            for index in sorted(job.outstanding):
                self.send(job.outstanding[index])
                count += 1
            job.stats.resubmitted += len(job.outstanding)
        for request in self.requests.values():
            self.send(request.message)
            count += 1
        if count:
            self.logger.info("reconnected; resubmitted %d outstanding fragments", count)

    def on_failed(self, error: SecureMQError) -> None:
        self._fail_all(error)

    def on_closed(self) -> None:
        self._fail_all(Closed("the client is closed"))

    def _heartbeat(self) -> None:
        if not self.jobs and not self.requests:
            self.last_heard = self._clock()
            return
        self._read_all()  # what already arrived counts
        silence = self._clock() - self.last_heard
        options = self.client_options
        if silence > options.heartbeat_interval * options.liveness:
            # The broker answers every PING: silence this long means it is gone or frozen.
            self.last_heard = self._clock()
            self.reconnect(f"no answer from the broker for {silence * 1000:.0f} ms")
            return
        self.send_if_connected(encode(Ping()))

    def on_message(self, frame: memoryview) -> None:
        self.last_heard = self._clock()
        try:
            message = parse(frame, self.client_options.max_fragment)
        except ProtocolError as error:
            allowed, held = self.rate_limiter.allow(error.code)
            if allowed:
                self.logger.warning("dropped a malformed message from the broker: %s%s", error,
                                    f" ({held} more not logged)" if held else "")
            if error.job_id is not None and error.command == Command.RESULT:
                job = self.jobs.get(error.job_id)
                if job is not None:
                    self.send(encode(Cancel(job.job_id)))
                    self._fail_job(job, IntegrityError(f"a result of job {error.job_id.hex()} was malformed: {error}", error.index))
                request = self.requests.get(error.job_id)
                if request is not None:
                    self._finish_request(request, IntegrityError(f"the reply was malformed: {error}", error.index))
            return
        if not isinstance(message, Disconnect):
            self.served = True
        if isinstance(message, Fragment) and message.command == Command.RESULT:
            self._on_result(message)
        elif isinstance(message, Failed):
            self._on_failed_message(message)
        elif isinstance(message, Busy):
            self._on_busy(message)
        elif isinstance(message, (Pong, Heartbeat)):
            pass
        elif isinstance(message, Disconnect):
            # After a reconnection, what is unanswered is resent (on_connected).
            if not self.sent_us_away(message.reason):
                self.fail(Disconnected(f"the broker disconnected this client: {message.reason}"))
        else:
            allowed, _ = self.rate_limiter.allow(f"unexpected-{message.command}")
            if allowed:
                self.logger.warning("dropped an unexpected %s from the broker", Command.name(message.command))

    def _on_result(self, fragment: Fragment) -> None:
        header = fragment.header
        request = self.requests.get(header.job_id)
        if request is not None:
            if header.index != 0 or header.count != 1 or digest(fragment.body) != header.digest:
                self._finish_request(request, IntegrityError(f"the reply to request {header.job_id.hex()} failed its checks "
                                                             "(one fragment, SHA-256)", header.index))
            else:
                self._finish_request(request, bytes(fragment.body))
            return
        job = self.jobs.get(header.job_id)
        if job is None:
            return  # a late result of an ended job
        duplicates = job.gatherer.duplicates
        try:
            ready = job.gatherer.accept(header, fragment.body, fragment.tag)
        except IntegrityError as error:
            self.send(encode(Cancel(job.job_id)))
            self._fail_job(job, IntegrityError(f"job {job.job_id.hex()}: {error}", error.index))
            return
        if job.gatherer.duplicates != duplicates:
            job.stats.duplicates += 1
            return
        # In order or held: either way this fragment needs no resend.
        job.outstanding.pop(header.index, None)
        for result in ready:
            job.stats.per_worker[result.worker_tag] += 1
            job.results.put(result)
        if job.gatherer.is_complete:
            self._finish_job(job)

    def _on_failed_message(self, message: Failed) -> None:
        index = None if message.index == WHOLE_JOB_INDEX else message.index
        error = SMQError(message.code, message.reason, index, message.job_id)
        request = self.requests.get(message.job_id)
        if request is not None:
            self._finish_request(request, error)
            return
        job = self.jobs.get(message.job_id)
        if job is not None:
            self._fail_job(job, error)

    def _on_busy(self, message: Busy) -> None:
        delay = max(1, message.retry_after_ms) / 1000.0
        request = self.requests.get(message.job_id)
        if request is not None:
            def resend_request() -> None:
                if self.requests.get(message.job_id) is request:
                    self.send(request.message)

            self.schedule(delay, resend_request)
            return
        job = self.jobs.get(message.job_id)
        if job is None or message.index not in job.outstanding:
            return
        job.stats.busy_resends += 1

        def resend() -> None:
            kept = job.outstanding.get(message.index)
            if job.failure is None and not job.finished and kept is not None:
                self.send(kept)

        self.schedule(delay, resend)


class Job:
    """A submitted job: iterate over it for its results, in index order, each index once.

    Each step waits at most ``timeout`` seconds for the next result (:class:`Timeout`). A
    failed job raises its error (:class:`SMQError` for a FAILED from the broker) after the
    results that were already in order. The client sends a fragment only when the caller has
    taken a result (the window counts fragments not yet handed over), so a slow reader slows
    the sender and memory stays bounded by the window.
    """

    def __init__(self, engine: _ClientEngine, state: _JobState, timeout: float) -> None:
        self._engine = engine
        self._state = state
        self._timeout = timeout
        self._ended: Optional[BaseException] = None
        self._done = False

    @property
    def job_id(self) -> bytes:
        """The job's 16-byte id."""
        return self._state.job_id

    @property
    def count(self) -> int:
        """The number of fragments (and results)."""
        return self._state.count

    @property
    def stats(self) -> JobStats:
        """Counters of what happened (read them after the job ended)."""
        return self._state.stats

    def __iter__(self) -> Job:
        return self

    def __next__(self) -> Result:
        return self.next(self._timeout)

    def next(self, timeout: Optional[float] = None) -> Result:
        """The next result, waiting at most ``timeout`` seconds (default: the job's timeout).

        Raises:
            StopIteration: every result has been handed over.
            Timeout: no result came in time (the job goes on; call again or :meth:`cancel`).
            SMQError: the broker failed the job (code and reason).
            SecureMQError: the connection failed or the client was closed.
        """
        if self._done:
            if self._ended is not None:
                raise self._ended
            raise StopIteration
        wait = self._timeout if timeout is None else timeout
        try:
            item = self._state.results.get(timeout=wait)
        except queue.Empty:
            raise Timeout(f"no result of job {self.job_id.hex()} within {wait:g} s "
                          f"({self._state.handed} of {self.count} handed over)") from None
        if isinstance(item, Result):
            state = self._state
            self._engine.call(lambda: self._engine.taken(state))
            return item
        self._done = True
        if item is _END:
            raise StopIteration
        assert isinstance(item, BaseException)
        self._ended = item
        raise item

    def read(self, timeout: Optional[float] = None) -> bytes:
        """Every result's body, joined in index order.

        Args:
            timeout: Seconds to wait for each result (default: the job's timeout).
        """
        return b"".join(result.body for result in self.results(timeout))

    def results(self, timeout: Optional[float] = None) -> Iterator[Result]:
        """The results, each waited for at most ``timeout`` seconds."""
        while True:
            try:
                yield self.next(timeout)
            except StopIteration:
                return

    def cancel(self) -> None:
        """Ends the job: the broker drops its queued fragments; iterating raises SMQError 410."""
        state = self._state
        self._engine.call(lambda: self._engine.cancel(state))


class Client:
    """An SMQ/1 client connected to a broker over CURVE.

    Use :meth:`connect`; close with :meth:`close` or a ``with`` block.
    """

    def __init__(self, engine: _ClientEngine, options: ClientOptions) -> None:
        self._engine = engine
        self.options = options
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, endpoint: str, broker_key: KeySource, cert: CertSource, *, options: Optional[ClientOptions] = None,
                logger: Optional[logging.Logger] = None, **overrides: object) -> Client:
        """Connects to a broker and waits for the CURVE handshake.

        Args:
            endpoint: The broker, e.g. ``tcp://127.0.0.1:5555``.
            broker_key: The broker's public key: its certificate file (``broker.key``), 40 Z85
                characters, 32 bytes or a :class:`Certificate`.
            cert: This client's secret certificate (``NAME.key_secret``, mode 0600) or a loaded
                :class:`Certificate` with its secret key; its public key must be on the broker's
                allowlist.
            options: Windows, sizes, heartbeats and timeouts.
            logger: Where the client logs (default ``securemq.client``).
            **overrides: Any :class:`ClientOptions` field, e.g. ``window=8``.

        Raises:
            RejectedByServer: the broker's allowlist does not hold this key.
            HandshakeFailed: the broker key is wrong, or the peer is no SecureMQ broker.
            Unreachable: no handshake within ``connect_timeout``.
            CertificateError: a certificate file cannot be used.
            ConfigurationError: an option is out of range.
        """
        opts = _with_overrides(options or ClientOptions(), overrides)
        if "fragment_size" not in overrides and options is None and opts.fragment_size > opts.max_fragment:
            opts.fragment_size = opts.max_fragment  # the default follows a smaller max_fragment
        if opts.window < 1:
            raise ConfigurationError("the window must be at least 1")
        if not 1 <= opts.max_fragment <= 0xFFFFFFFF:
            raise ConfigurationError("max_fragment must be 1 byte to 4 GiB - 1")
        if not 1 <= opts.fragment_size <= opts.max_fragment:
            raise ConfigurationError(f"the fragment size must be 1-{opts.max_fragment} bytes")
        if opts.heartbeat_interval <= 0 or opts.liveness < 1:
            raise ConfigurationError("the heartbeat interval must be positive and the liveness at least 1")
        key = load_public_key(broker_key)
        certificate = cert if isinstance(cert, Certificate) else load_certificate(cert)
        engine = _ClientEngine(endpoint, key, certificate, opts, logger or logging.getLogger("securemq.client"))
        try:
            engine.wait_connected(opts.connection.connect_timeout + 1.0)
        except BaseException:
            engine.stop()
            raise
        return cls(engine, opts)

    def submit(self, data: Data, service: str, *, fragment_size: Optional[int] = None, window: Optional[int] = None,
               timeout: Optional[float] = None) -> Job:
        """Submits a payload as a job and returns it: iterate over it for the results in index
        order, or call :meth:`Job.read` for the joined bytes.

        Args:
            data: The payload: bytes (not copied; do not change them while the job runs), or the
                path of a regular file, read fragment by fragment.
            service: The service to submit to: 1-255 bytes of ``[A-Za-z0-9._-]``.
            fragment_size: Payload bytes per fragment (default ``options.fragment_size``).
            window: Fragments outstanding (default ``options.window``).
            timeout: Seconds each result is waited for (default ``options.result_timeout``).

        Raises:
            ConfigurationError: a bad service name, fragment size or window.
            PayloadError: the file cannot be opened, or is not a regular file.
            SecureMQError: the client is closed or its connection failed.
        """
        service_bytes = validate_service(service)
        size = self.options.fragment_size if fragment_size is None else fragment_size
        if not 1 <= size <= self.options.max_fragment:
            raise ConfigurationError(f"the fragment size must be 1-{self.options.max_fragment} bytes, not {size}")
        win = self.options.window if window is None else window
        if win < 1:
            raise ConfigurationError("the window must be at least 1")
        payload = Payload(data)
        try:
            state = _JobState(self._engine.ids.next_job(), service_bytes, payload, size, win)
        except BaseException:
            payload.close()
            raise
        if not self._engine.call(lambda: self._engine.start_job(state)):
            payload.close()
            raise self._engine.failure or Closed("the client is closed")
        return Job(self._engine, state, self.options.result_timeout if timeout is None else timeout)

    def request(self, service: str, body: bytes, timeout: float = 10.0) -> bytes:
        """Sends ``body`` as a one-fragment job and returns the result's body.

        Args:
            service: The service.
            body: At most ``options.max_fragment`` bytes.
            timeout: Seconds to wait for the answer; then the request is cancelled.

        Raises:
            Timeout: no answer in time.
            SMQError: the broker or the worker failed it (code and reason).
            SecureMQError: the connection failed or the client was closed.
        """
        service_bytes = validate_service(service)
        data = bytes(body)
        if len(data) > self.options.max_fragment:
            raise ConfigurationError(f"a request body is at most {self.options.max_fragment} bytes; use submit() for more")
        future: "concurrent.futures.Future[bytes]" = concurrent.futures.Future()
        engine = self._engine
        job_id = engine.start_request(service_bytes, data, future)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            engine.call(lambda: engine.cancel_request(job_id))
            raise Timeout(f"no answer from service {service!r} within {timeout:g} s") from None

    def worker_count(self, service: str, timeout: float = 5.0) -> int:
        """How many worker keys serve ``service`` now (the broker's ``mmi.workers``, C23)."""
        return int(self.request("mmi.workers", validate_service(service), timeout).decode("ascii"))

    def close(self) -> None:
        """Closes the connection; open jobs and requests fail with :class:`Closed`."""
        self._engine.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _with_overrides(options: ClientOptions, overrides: Dict[str, object]) -> ClientOptions:
    import dataclasses

    if not overrides:
        return options
    known = {f.name for f in dataclasses.fields(ClientOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigurationError(f"unknown client option(s): {', '.join(unknown)}")
    return dataclasses.replace(options, **overrides)  # type: ignore[arg-type]
