"""One thread that owns a CURVE DEALER socket: the base of the client and the worker engines.

libzmq sockets are not thread-safe, so every socket belongs to the thread that made it. Callers
never touch it: they put a function in the thread's inbox (``call``) and wake it through a pipe;
answers come back through ``concurrent.futures.Future`` objects or queues, waited on with a
timeout. Timers (heartbeats, BUSY resends, the connect timeout) run on the same thread.

The socket's monitor turns libzmq's silent retries into typed errors, as the Swift
``CurveClientSocket`` does: a ZAP refusal fails at once (:class:`RejectedByServer`), repeated
CURVE handshake failures after ``handshake_failure_limit`` tries (:class:`HandshakeFailed`),
silence after the connect timeout (:class:`Unreachable`).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

import zmq
from zmq.utils.monitor import parse_monitor_message

from .certs import Certificate, z85_encode
from .errors import (
    Closed,
    HandshakeFailed,
    RejectedByServer,
    SecureMQError,
    Unreachable,
)
from .protocol import fingerprint

__all__ = ["ConnectionOptions", "SocketEngine"]

_MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_DISCONNECTED
)


@dataclass
class ConnectionOptions:
    """How a connection is made and when it gives up.

    Attributes:
        connect_timeout: Seconds until :class:`Unreachable` if no handshake ever succeeds.
        handshake_failure_limit: Consecutive failed CURVE handshakes before :class:`HandshakeFailed`.
        reconnect_interval: libzmq's first reconnect delay, seconds (it doubles up to the max).
        reconnect_interval_max: libzmq's longest reconnect delay, seconds.
        handshake_timeout: Seconds a CURVE handshake may take.
        high_water_mark: Messages queued per direction before sends wait (they are kept, never dropped).
        linger: Seconds unsent messages are kept when closing.
    """

    connect_timeout: float = 10.0
    handshake_failure_limit: int = 2
    reconnect_interval: float = 1.0
    reconnect_interval_max: float = 32.0
    handshake_timeout: float = 10.0
    high_water_mark: int = 1000
    linger: float = 0.5


class LogRateLimiter:
    """At most one log line per key per interval; counts what it held back (a flood of bad
    messages must not become a flood of log lines)."""

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._last: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = collections.Counter()

    def allow(self, key: str) -> Tuple[bool, int]:
        """(whether to log now, how many lines were held back since the last one)."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] += 1
            return False, 0
        self._last[key] = now
        return True, self._suppressed.pop(key, 0)


class SocketEngine:
    """The socket thread of a client or a worker. Subclasses implement the ``on_*`` hooks, which
    all run on this thread.

    States: ``connecting`` -> ``connected`` (a CURVE handshake succeeded) -> ``connecting`` (the
    TCP connection dropped; libzmq reconnects) ...; ``failed`` and ``closed`` are final.
    """

    def __init__(self, name: str, endpoint: str, broker_key: bytes, cert: Certificate, max_message_size: int,
                 options: ConnectionOptions, logger: logging.Logger) -> None:
        if cert.secret_key is None:
            raise SecureMQError(f"{cert.path or 'the certificate'} has no secret key: pass the secret certificate "
                                "(NAME.key_secret) that identifies this peer")
        self.endpoint = endpoint
        self.options = options
        self.logger = logger
        self._broker_key = broker_key
        self._cert = cert
        self._max_message_size = max_message_size
        self._context = zmq.Context()
        self._socket: Optional["zmq.Socket[bytes]"] = None
        self._monitor: Optional["zmq.Socket[bytes]"] = None
        self.state = "connecting"
        self.failure: Optional[SecureMQError] = None
        self.ever_connected = False
        #: Whether the broker sent anything but DISCONNECT on this connection (PROTOCOL.md C31).
        self.served = False
        #: Incremented on every new connection (handshake), so work from an old one can be told apart.
        self.epoch = 0
        self._handshake_failures = 0
        self._unsent: Deque[bytes] = collections.deque()
        self._inbox: Deque[Callable[[], None]] = collections.deque()
        # Reentrant: close() from a signal handler may interrupt its own thread inside call().
        self._inbox_lock = threading.RLock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._timers: List[Tuple[float, int, Callable[[], None]]] = []
        self._cancelled_timers: Set[int] = set()
        self._timer_ids = itertools.count(1)
        self._stopping = False
        self._stopped = threading.Event()
        self._connected_waiters: List[Any] = []
        self.rate_limiter = LogRateLimiter()
        self._make_socket()
        self.schedule(options.connect_timeout, self._connect_timed_out)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Starts the socket thread; from then on only it touches the socket and the timers."""
        self._thread.start()

    # -- caller side (any thread) -----------------------------------------------------------

    def call(self, function: Callable[[], None]) -> bool:
        """Runs ``function`` on the socket thread soon; False if the thread has ended."""
        with self._inbox_lock:
            if self._stopped.is_set() or self._stopping:
                return False
            self._inbox.append(function)
            # Under the lock: the thread closes the pipe under it too, so this never writes to a
            # closed (or reused) descriptor.
            try:
                os.write(self._wake_w, b"\x01")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already
        return True

    def wait_connected(self, timeout: float) -> None:
        """Waits until the first handshake succeeded; raises the connection's failure."""
        import concurrent.futures

        future: "concurrent.futures.Future[None]" = concurrent.futures.Future()

        def register() -> None:
            if self.ever_connected:
                # Connected, maybe sent away at once since (a READY refused): connecting
                # succeeded, and the next call reports why the connection ended.
                future.set_result(None)
            elif self.failure is not None:
                future.set_exception(self.failure)
            elif self.state == "closed":
                future.set_exception(Closed("closed before it connected"))
            else:
                self._connected_waiters.append(future)

        if not self.call(register):
            if self.ever_connected:
                return
            raise self.failure or Closed("closed before it connected")
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise Unreachable(f"no SecureMQ broker answered at {self.endpoint} within {timeout:g} s: is it running, "
                              "and is the endpoint right?") from None

    def stop(self, timeout: float = 5.0) -> None:
        """Closes the socket (after ``before_close`` on the thread) and ends the thread."""
        def shut() -> None:
            self.before_close()
            self._set_closed()
            self._stopping = True

        if threading.current_thread() is self._thread:
            shut()
            return
        self.call(shut)
        self._thread.join(timeout)

    # -- thread side ------------------------------------------------------------------------

    def schedule(self, delay: float, function: Callable[[], None]) -> int:
        """Runs ``function`` on the socket thread after ``delay`` seconds; returns an id to cancel."""
        timer_id = next(self._timer_ids)
        heapq.heappush(self._timers, (time.monotonic() + max(0.0, delay), timer_id, function))
        return timer_id

    def cancel_timer(self, timer_id: int) -> None:
        """Cancels a timer that has not run."""
        self._cancelled_timers.add(timer_id)

    def every(self, interval: float, function: Callable[[], None]) -> None:
        """Runs ``function`` every ``interval`` seconds until the thread ends."""
        def tick() -> None:
            function()
            self.schedule(interval, tick)

        self.schedule(interval, tick)

    @property
    def is_connected(self) -> bool:
        return self.state == "connected"

    @property
    def key_fingerprint(self) -> str:
        return fingerprint(self._cert.public_key)

    def send(self, frame: bytes) -> None:
        """Sends a message that must arrive; one libzmq cannot take now waits, in order."""
        if self._socket is None or self.state in ("failed", "closed"):
            return
        if self._unsent:
            self._unsent.append(frame)
            return
        try:
            self._socket.send(frame, zmq.NOBLOCK, copy=len(frame) < 65536)
        except zmq.Again:
            self._unsent.append(frame)  # the loop polls for POLLOUT while anything waits
        except zmq.ZMQError as error:
            self.logger.debug("send failed: %s", error)

    def send_if_connected(self, frame: bytes) -> None:
        """Sends a message that only matters now (PING, HEARTBEAT): dropped if it cannot go at once."""
        if self._socket is None or self.state != "connected" or self._unsent:
            return
        try:
            self._socket.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def reconnect(self, reason: str) -> None:
        """Drops the connection and makes a new one: a new socket, so the broker sees a new peer.
        For a broker gone silent while TCP stays up, which libzmq's own reconnect never notices."""
        if self.state in ("failed", "closed"):
            return
        self.logger.warning("reconnecting to %s: %s", self.endpoint, reason)
        self._teardown(linger=0)
        self._unsent.clear()  # what waited belongs to the old connection; the engines resend what matters
        self._handshake_failures = 0
        try:
            self._make_socket()
        except zmq.ZMQError as error:
            self.fail(SecureMQError(f"cannot make a new socket to reconnect: {error}"))
            return
        self._set_state("connecting")

    def sent_us_away(self, reason: str) -> bool:
        """The broker sent DISCONNECT. After service it is shutting down or dropped us: reconnect
        and return True. Before any service it refused us: return False (C31)."""
        if self.served:
            self.logger.warning("the broker sent us away (%s); reconnecting", reason)
            self.reconnect(f"DISCONNECT: {reason}")
            return True
        self.logger.warning("the broker refused us: %s", reason)
        return False

    def fail(self, error: SecureMQError) -> None:
        """Ends the connection with ``error`` (final)."""
        if self.state in ("failed", "closed"):
            return
        self.logger.info("connection to %s failed: %s", self.endpoint, error)
        self.failure = error
        self._teardown(linger=0)
        self._set_state("failed")
        for waiter in self._connected_waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._connected_waiters.clear()
        self.on_failed(error)
        # Nothing can happen on a failed connection any more: the thread ends and releases the
        # context; later calls are refused with this error.
        self._stopping = True

    def _set_closed(self) -> None:
        if self.state in ("failed", "closed"):
            return
        self._teardown(linger=self.options.linger)
        self._set_state("closed")
        for waiter in self._connected_waiters:
            if not waiter.done():
                waiter.set_exception(Closed("closed before it connected"))
        self._connected_waiters.clear()
        self.on_closed()

    # -- hooks for subclasses ---------------------------------------------------------------

    def on_connected(self) -> None:
        """A CURVE handshake succeeded (first connection or a new one)."""

    def on_message(self, frame: memoryview) -> None:
        """One single-frame message arrived."""

    def on_failed(self, error: SecureMQError) -> None:
        """The connection failed for good."""

    def on_closed(self) -> None:
        """The connection was closed by the caller."""

    def before_close(self) -> None:
        """Runs on the thread just before a requested close (a worker sends DISCONNECT)."""

    # -- internals --------------------------------------------------------------------------

    def _make_socket(self) -> None:
        socket = self._context.socket(zmq.DEALER)
        try:
            socket.curve_serverkey = z85_encode(self._broker_key).encode("ascii")
            socket.curve_publickey = z85_encode(self._cert.public_key).encode("ascii")
            assert self._cert.secret_key is not None
            socket.curve_secretkey = z85_encode(self._cert.secret_key).encode("ascii")
            socket.setsockopt(zmq.MAXMSGSIZE, self._max_message_size)
            socket.setsockopt(zmq.SNDHWM, self.options.high_water_mark)
            socket.setsockopt(zmq.RCVHWM, self.options.high_water_mark)
            socket.setsockopt(zmq.HANDSHAKE_IVL, int(self.options.handshake_timeout * 1000))
            socket.setsockopt(zmq.RECONNECT_IVL, int(self.options.reconnect_interval * 1000))
            socket.setsockopt(zmq.RECONNECT_IVL_MAX, int(self.options.reconnect_interval_max * 1000))
            socket.setsockopt(zmq.LINGER, 0)
            # Monitor first, then connect, so no event is missed.
            monitor = socket.get_monitor_socket(_MONITOR_EVENTS)
            socket.connect(self.endpoint)
        except BaseException:
            socket.close(linger=0)
            raise
        self._socket = socket
        self._monitor = monitor
        self.served = False

    def _teardown(self, linger: float) -> None:
        socket, monitor = self._socket, self._monitor
        self._socket = None
        self._monitor = None
        if socket is None:
            return
        # A monitor's reader closed before the monitored socket can deadlock libzmq's I/O thread:
        # stop the monitor, drain it, close it, then the socket (ZEROMQ-NOTES).
        try:
            socket.disable_monitor()
        except zmq.ZMQError:
            pass
        if monitor is not None:
            try:
                while monitor.poll(0):
                    monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            monitor.close(linger=0)
        socket.close(linger=int(linger * 1000))

    def _set_state(self, state: str) -> None:
        self.state = state

    def _connect_timed_out(self) -> None:
        if self.state == "connecting" and not self.ever_connected:
            self.fail(Unreachable(f"no SecureMQ broker answered at {self.endpoint} within {self.options.connect_timeout:g} s: "
                                  "is it running, and is the endpoint right?"))

    def _handle_monitor(self) -> None:
        monitor = self._monitor
        while monitor is not None and monitor is self._monitor:
            try:
                parts = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            try:
                event = parse_monitor_message(parts)
            except Exception:  # a malformed monitor message is libzmq's bug; nothing to act on
                continue
            code = event["event"]
            if code == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake_failures = 0
                self.ever_connected = True
                self.served = False
                self.epoch += 1
                self.logger.debug("connected to %s", self.endpoint)
                self._set_state("connected")
                for waiter in self._connected_waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                self._connected_waiters.clear()
                self.on_connected()
            elif code == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                # ZAP said no; libzmq will not retry, and neither do we.
                self.fail(RejectedByServer(
                    f"the broker at {self.endpoint} rejected this key ({self.key_fingerprint}): rejected: not on the allowlist "
                    f"(ZAP status {event['value']}); add this key's public certificate to the broker's allowlist directory"))
                return
            elif code in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                self._handshake_failures += 1
                if self._handshake_failures >= self.options.handshake_failure_limit:
                    self.fail(HandshakeFailed(
                        f"the CURVE handshake with {self.endpoint} failed {self._handshake_failures} times in a row: the broker "
                        f"public key ({z85_encode(self._broker_key)[:10]}...) is wrong, or the peer is not a SecureMQ broker"))
                    return
            elif code == zmq.EVENT_DISCONNECTED:
                if self.state == "connected":
                    self.logger.info("disconnected from %s; libzmq reconnects", self.endpoint)
                    self._set_state("connecting")

    def _read_all(self, limit: int = 1024) -> None:
        for _ in range(limit):
            socket = self._socket
            if socket is None:
                return
            try:
                frame = socket.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            if frame.more:
                try:
                    while socket.recv(zmq.NOBLOCK, copy=False).more:
                        pass
                except zmq.ZMQError:
                    pass
                allowed, held = self.rate_limiter.allow("multipart")
                if allowed:
                    self.logger.warning("dropped a multipart message from the broker (SMQ/1 is one frame)%s",
                                        f" ({held} more not logged)" if held else "")
                continue
            self.on_message(frame.buffer)

    def _flush_unsent(self) -> None:
        socket = self._socket
        while socket is not None and self._unsent:
            try:
                socket.send(self._unsent[0], zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                self._unsent.clear()
                return
            self._unsent.popleft()

    def _run_inbox(self) -> None:
        while True:
            with self._inbox_lock:
                if not self._inbox:
                    return
                function = self._inbox.popleft()
            self._guarded(function)

    def _guarded(self, function: Callable[[], None]) -> None:
        try:
            function()
        except Exception:  # a bug in a hook must not kill the socket thread silently
            self.logger.exception("unexpected error on the socket thread")

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, timer_id, function = heapq.heappop(self._timers)
            if timer_id in self._cancelled_timers:
                self._cancelled_timers.discard(timer_id)
                continue
            self._guarded(function)

    def _run(self) -> None:
        try:
            while not self._stopping:
                poller = zmq.Poller()
                poller.register(self._wake_r, zmq.POLLIN)
                socket, monitor = self._socket, self._monitor
                if socket is not None:
                    poller.register(socket, zmq.POLLIN | (zmq.POLLOUT if self._unsent else 0))
                if monitor is not None:
                    poller.register(monitor, zmq.POLLIN)
                timeout_ms: Optional[int] = None
                if self._timers:
                    # Rounded up, so a timer is never woken for early and polled for again at 0 ms.
                    timeout_ms = max(0, math.ceil((self._timers[0][0] - time.monotonic()) * 1000))
                events = dict(poller.poll(timeout_ms))
                if self._wake_r in events:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                self._run_inbox()
                if monitor is not None and monitor is self._monitor and monitor in events:
                    self._guarded(self._handle_monitor)
                if socket is not None and socket is self._socket and socket in events:
                    if events[socket] & zmq.POLLOUT:
                        self._flush_unsent()
                    if events[socket] & zmq.POLLIN:
                        self._guarded(self._read_all)
                # Read before the timers run, so a liveness check sees what waited (C29).
                self._run_timers()
        finally:
            with self._inbox_lock:
                self._stopping = True
                self._stopped.set()
                leftovers = list(self._inbox)
                self._inbox.clear()
                os.close(self._wake_r)
                os.close(self._wake_w)
            if self.state not in ("failed", "closed"):
                self._set_closed()
            for function in leftovers:
                self._guarded(function)
            self._teardown(linger=0)
            self._context.term()

