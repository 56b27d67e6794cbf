"""The SMQ/1 codec: every message of docs/PROTOCOL.md, encoded and parsed, with its checks.

Pure values, no sockets. Every SMQ/1 message is one ZeroMQ frame (§2)::

    "SMQ" | version 0x01 | command | fields ...

:func:`parse` applies every check of §2 and §2.2 in the order the protocol fixes (C7, then C33)
and raises :class:`ProtocolError`. Its :attr:`ProtocolError.failure_code` tells the two classes of
§2.3 apart: ``None`` for an unreadable message (drop it and log one line), 400 or 413 for a
fragment whose job-id and index could be read (answer it: FAILED, REJECT, or fail the job).

Digests are not checked by :func:`parse` (the broker does not hash); workers and clients compare
:func:`digest` of the body with the header's.
"""

from __future__ import annotations

import hashlib
import struct
import unicodedata
from dataclasses import dataclass, field
from typing import Dict, Optional, Union

__all__ = [
    "VERSION",
    "SIGNATURE",
    "ENVELOPE_SIZE",
    "HEADER_SIZE",
    "MAX_REASON_BYTES",
    "WHOLE_JOB_INDEX",
    "DEFAULT_MAX_FRAGMENT",
    "MAX_TOTAL_LENGTH",
    "HEARTBEAT_MS_RANGE",
    "EMPTY_DIGEST",
    "Command",
    "FailureCode",
    "ProtocolError",
    "FragmentHeader",
    "Fragment",
    "Cancel",
    "Ping",
    "Pong",
    "Failed",
    "Busy",
    "Ready",
    "Reject",
    "Heartbeat",
    "Disconnect",
    "Credit",
    "Message",
    "parse",
    "encode",
    "encode_fragment",
    "digest",
    "is_valid_service",
    "validate_service",
    "truncate_reason",
    "escape_peer_text",
    "failure_code_name",
    "max_message_size",
    "fingerprint",
]

#: The protocol version byte (offset 3).
VERSION = 0x01
#: The first three bytes of every SMQ/1 message.
SIGNATURE = b"SMQ"
#: Signature, version and command.
ENVELOPE_SIZE = 5
#: The fragment header of §2.2.
HEADER_SIZE = 80
#: The only fragment header version SMQ/1 defines.
HEADER_VERSION = 1
#: The most bytes a reason may take (C9).
MAX_REASON_BYTES = 1024
#: The index of a FAILED that fails the whole job.
WHOLE_JOB_INDEX = 0xFFFFFFFF
#: The default max-fragment: 1 MiB.
DEFAULT_MAX_FRAGMENT = 1 << 20
#: The largest total-length a request may carry: 2^63 - 1 (C33).
MAX_TOTAL_LENGTH = (1 << 63) - 1
#: The heartbeat intervals a READY may announce (§4.1).
HEARTBEAT_MS_RANGE = range(100, 60_001)
#: SHA-256 of nothing: the digest of an empty fragment (C14).
EMPTY_DIGEST = hashlib.sha256(b"").digest()

LAST_FLAG = 0x01
TAG_OFFSET = 5
SERVICE_OFFSET = 13
#: Bytes of a fragment message besides the service name and the body.
FRAGMENT_OVERHEAD = 14 + HEADER_SIZE

_HEADER = struct.Struct(">BBH16sIIQQI32s")
assert _HEADER.size == HEADER_SIZE
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Command:
    """The command bytes (offset 4). An open set: any byte can be named in a log line."""

    SUBMIT = 0x01
    CANCEL = 0x02
    PING = 0x03
    PONG = 0x04
    RESULT = 0x11
    FAILED = 0x12
    BUSY = 0x13
    READY = 0x21
    WORK = 0x22
    DONE = 0x23
    REJECT = 0x24
    HEARTBEAT = 0x25
    DISCONNECT = 0x26
    CREDIT = 0x27

    NAMES: Dict[int, str] = {
        0x01: "SUBMIT", 0x02: "CANCEL", 0x03: "PING", 0x04: "PONG", 0x11: "RESULT", 0x12: "FAILED",
        0x13: "BUSY", 0x21: "READY", 0x22: "WORK", 0x23: "DONE", 0x24: "REJECT", 0x25: "HEARTBEAT",
        0x26: "DISCONNECT", 0x27: "CREDIT",
    }
    FRAGMENTS = frozenset({SUBMIT, WORK, DONE, RESULT})
    REQUESTS = frozenset({SUBMIT, WORK})

    @classmethod
    def name(cls, command: Optional[int]) -> str:
        """The protocol's name for a command byte, or its hex for an unknown one (``"0x7f"``)."""
        if command is None:
            return "?"
        return cls.NAMES.get(command, f"0x{command:02x}")


class FailureCode:
    """The codes of FAILED and REJECT (two bytes, big-endian: C1). An open set."""

    MALFORMED = 400
    FORBIDDEN = 403
    NO_WORKER = 404
    CANCELLED = 410
    TOO_LARGE = 413
    INTERNAL_ERROR = 500
    DRAINING = 503
    RETRIES_EXHAUSTED = 504
    WORKER_FAILURE = 520

    NAMES: Dict[int, str] = {
        400: "malformed", 403: "forbidden", 404: "no worker", 410: "cancelled", 413: "too large",
        500: "internal error", 503: "draining", 504: "retries exhausted", 520: "worker failure",
    }


def failure_code_name(code: int) -> Optional[str]:
    """The name SMQ/1 gives a failure code (``"too large"`` for 413), or None."""
    return FailureCode.NAMES.get(code)


class ProtocolError(Exception):
    """Why a message was refused (PROTOCOL.md §2.3).

    Attributes:
        code: What was wrong, a stable name a program can compare (``"badSignature"``,
            ``"lengthMismatch"``, ...: the same names as the Swift ``ProtocolError.Code``).
        command: The command byte, when the envelope was read that far.
        tag: The fragment's tag (a WORK's delivery id), when it could be read.
        job_id: The fragment's job id (16 bytes), when its header could be read.
        index: The fragment's index, when its header could be read.
        value: The offending value, when there is one.
        limit: The bound the value broke, when there is one.
        failure_code: None for an unreadable message (drop and log); 400 or 413 for a fragment
            that fails a check (answer with that code).
    """

    def __init__(
        self,
        code: str,
        command: Optional[int] = None,
        value: Optional[int] = None,
        limit: Optional[int] = None,
        *,
        tag: Optional[int] = None,
        job_id: Optional[bytes] = None,
        index: Optional[int] = None,
        failure_code: Optional[int] = None,
    ) -> None:
        self.code = code
        self.command = command
        self.value = value
        self.limit = limit
        self.tag = tag
        self.job_id = job_id
        self.index = index
        self.failure_code = failure_code
        super().__init__(self._describe())

    @property
    def is_unreadable(self) -> bool:
        """Whether the message is dropped (and logged) rather than answered."""
        return self.failure_code is None

    def _describe(self) -> str:
        v = "?" if self.value is None else str(self.value)
        lim = "?" if self.limit is None else str(self.limit)
        summaries = {
            "badSignature": "not an SMQ/1 message (no 'SMQ' signature)",
            "unsupportedVersion": f"protocol version {v}, this peer speaks 1",
            "unknownCommand": f"unknown command byte {v}",
            "truncated": f"message of {v} bytes is too short for its command (needs {lim})",
            "trailingBytes": f"message of {v} bytes is longer than its command's {lim}",
            "badServiceName": "service name must be 1-255 bytes of [A-Za-z0-9._-]",
            "reasonTooLong": f"reason of {v} bytes exceeds {lim}",
            "badField": f"field value {v} not allowed",
            "badHeaderVersion": f"fragment header version {v}, expected 1",
            "badFlags": f"fragment flags {v} set bits other than LAST",
            "reservedNotZero": f"fragment header reserved bytes are {v}, must be 0",
            "indexOutOfRange": f"fragment index {v} is not below count {lim}",
            "lastFlagMismatch": f"LAST flag must be set exactly on index count-1 (count {lim})",
            "lengthMismatch": f"header length {v} but {lim} body bytes follow",
            "fragmentTooLarge": f"fragment body of {v} bytes exceeds max-fragment {lim}",
            "offsetOutOfRange": f"offset + length = {v} exceeds total-length {lim}",
            "totalLengthOutOfRange": f"total-length {v} exceeds {lim}, the most this job's fragments can carry",
            "firstFragmentNotAtStart": f"fragment 0 must start at offset 0, not {v}",
            "lastFragmentNotAtEnd": f"the last fragment must end at total-length {lim}, not at {v}",
            "digestMismatch": "the body does not match its SHA-256 digest",
        }
        text = f"{self.code}: {summaries.get(self.code, 'protocol violation')}"
        if self.command is not None:
            text += f" (command {Command.name(self.command)})"
        if self.job_id is not None:
            text += f" (job {self.job_id.hex()}" + (f", index {self.index}" if self.index is not None else "") + ")"
        if self.failure_code is not None:
            text += f" -> FAILED {self.failure_code}"
        return text


def digest(body: Union[bytes, bytearray, memoryview]) -> bytes:
    """SHA-256 of a fragment body, as the header's digest field holds it."""
    return hashlib.sha256(body).digest()


def fingerprint(public_key: bytes) -> str:
    """A key's fingerprint as the broker logs it: Z85 of its first 8 bytes (10 characters)."""
    from zmq.utils import z85

    return z85.encode(public_key[:8]).decode("ascii")


def max_message_size(max_fragment: int) -> int:
    """The ``ZMQ_MAXMSGSIZE`` for a max-fragment (§6, C16): max(max-fragment, 1 KiB) + 1 KiB."""
    return max(max_fragment, 1024) + 1024


# -- services and reasons --------------------------------------------------------------------

_SERVICE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def is_valid_service(name: Union[bytes, bytearray, memoryview]) -> bool:
    """Whether ``name`` is a valid service: 1-255 bytes of ``[A-Za-z0-9._-]`` (C10)."""
    return 1 <= len(name) <= 255 and all(b in _SERVICE_BYTES for b in bytes(name))


def validate_service(service: Union[str, bytes]) -> bytes:
    """Returns the service's wire bytes, or raises ConfigurationError naming the rule."""
    from .errors import ConfigurationError

    raw = service.encode("utf-8") if isinstance(service, str) else bytes(service)
    if not is_valid_service(raw):
        raise ConfigurationError(f"{service!r} is not a valid service name: 1-255 bytes of A-Z a-z 0-9 . _ -")
    return raw


def truncate_reason(text: str) -> bytes:
    """A reason as a sender puts it on the wire: UTF-8, cut to the longest prefix of at most
    1,024 bytes that ends on a character boundary (C9)."""
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= MAX_REASON_BYTES:
        return raw
    cut = MAX_REASON_BYTES
    # Back off continuation bytes (10xxxxxx) so the cut lands before a character's first byte.
    while cut > 0 and (raw[cut] & 0xC0) == 0x80:
        cut -= 1
    return raw[:cut]


_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn", "Co"})
_SIMPLE_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape_peer_text(text: Union[str, bytes, bytearray, memoryview]) -> str:
    """Text from a peer made safe for a log line, a terminal or another peer (as the Swift
    ``PeerText.escaped``): invalid UTF-8 becomes U+FFFD; control characters, invisible format
    characters (bidi overrides, zero-width joiners), line and paragraph separators and the
    backslash are written as visible escapes (``\\n``, ``\\u{1B}``), so the result is one line."""
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8", errors="replace")
    if all(0x20 <= ord(c) < 0x7F and c != "\\" for c in text):
        return text
    out = []
    for c in text:
        simple = _SIMPLE_ESCAPES.get(c)
        if simple is not None:
            out.append(simple)
            continue
        point = ord(c)
        if point < 0x20 or 0x7F <= point <= 0x9F:
            out.append(f"\\u{{{point:X}}}")
        elif point < 0x80:
            out.append(c)
        elif unicodedata.category(c) in _ESCAPED_CATEGORIES:
            out.append(f"\\u{{{point:X}}}")
        else:
            out.append(c)
    return "".join(out)


# -- the fragment header ---------------------------------------------------------------------


@dataclass(frozen=True)
class FragmentHeader:
    """The 80-byte fragment header of §2.2, read as it is (no checks until :meth:`validate`).

    The constructor's defaults make a well-formed header; use :meth:`make` to derive the LAST
    flag from index and count, so a sender cannot get it wrong.
    """

    job_id: bytes
    index: int
    count: int
    offset: int
    total_length: int
    length: int
    digest: bytes
    flags: int = 0
    version: int = HEADER_VERSION
    reserved: int = 0

    @classmethod
    def make(
        cls, job_id: bytes, index: int, count: int, body: Union[bytes, bytearray, memoryview],
        offset: int = 0, total_length: int = 0, body_digest: Optional[bytes] = None,
    ) -> FragmentHeader:
        """A well-formed header for ``body``: version 1, LAST exactly on ``count - 1``, the
        body's length and SHA-256 (``body_digest`` when the caller already has it)."""
        return cls(
            job_id=bytes(job_id), index=index, count=count, offset=offset, total_length=total_length,
            length=len(body), digest=body_digest if body_digest is not None else digest(body),
            flags=LAST_FLAG if count > 0 and index == count - 1 else 0,
        )

    @property
    def is_last(self) -> bool:
        """Whether the LAST flag is set."""
        return bool(self.flags & LAST_FLAG)

    def pack(self) -> bytes:
        """The 80 bytes, as they are."""
        return _HEADER.pack(
            self.version, self.flags, self.reserved, self.job_id, self.index, self.count, self.offset,
            self.total_length, self.length, self.digest,
        )

    @classmethod
    def unpack(cls, data: Union[bytes, bytearray, memoryview], offset: int = 0) -> FragmentHeader:
        """Reads 80 bytes at ``offset`` without checking them."""
        (version, flags, reserved, job_id, index, count, frag_offset, total, length, dig) = _HEADER.unpack_from(data, offset)
        return cls(
            job_id=job_id, index=index, count=count, offset=frag_offset, total_length=total, length=length,
            digest=dig, flags=flags, version=version, reserved=reserved,
        )

    def validate(self, body_length: int, is_request: bool, max_fragment: int = DEFAULT_MAX_FRAGMENT,
                 *, command: Optional[int] = None, tag: Optional[int] = None) -> None:
        """Applies every receiver check of §2.2 in the order of C7 and C33: version, flags,
        reserved, ``index < count``, LAST exactly on ``count - 1``, body <= max-fragment (413),
        ``length`` = body bytes, and for requests ``offset + length <= total-length``,
        ``total-length <= min(count * max-fragment, 2^63 - 1)``, fragment 0 at offset 0 and the
        last fragment ending at total-length.

        Raises:
            ProtocolError: carrying the job id and index, failure code 413 for an oversized body
                and 400 for every other check.
        """

        def fail(code: str, value: int, limit: Optional[int] = None, failure: int = FailureCode.MALFORMED) -> ProtocolError:
            return ProtocolError(code, command, value, limit, tag=tag, job_id=self.job_id, index=self.index, failure_code=failure)

        if self.version != HEADER_VERSION:
            raise fail("badHeaderVersion", self.version)
        if self.flags & ~LAST_FLAG:
            raise fail("badFlags", self.flags)
        if self.reserved != 0:
            raise fail("reservedNotZero", self.reserved)
        if self.index >= self.count:
            raise fail("indexOutOfRange", self.index, self.count)
        if self.is_last != (self.index == self.count - 1):
            raise fail("lastFlagMismatch", self.index, self.count)
        # Oversize is judged on the bytes that came (C7): a header claiming more is a mismatch.
        if body_length > max_fragment:
            raise fail("fragmentTooLarge", body_length, max_fragment, FailureCode.TOO_LARGE)
        if self.length != body_length:
            raise fail("lengthMismatch", self.length, body_length)
        if is_request:
            end = self.offset + self.length
            if end > 0xFFFFFFFFFFFFFFFF or end > self.total_length:
                raise fail("offsetOutOfRange", min(end, 0xFFFFFFFFFFFFFFFF), self.total_length)
            carried = min(self.count * max_fragment, MAX_TOTAL_LENGTH)
            if self.total_length > carried:
                raise fail("totalLengthOutOfRange", self.total_length, carried)
            if self.index == 0 and self.offset != 0:
                raise fail("firstFragmentNotAtStart", self.offset, 0)
            if self.is_last and end != self.total_length:
                raise fail("lastFragmentNotAtEnd", end, self.total_length)


# -- messages --------------------------------------------------------------------------------

Bytes = Union[bytes, bytearray, memoryview]


@dataclass(frozen=True)
class Fragment:
    """SUBMIT, WORK, DONE or RESULT: the shared layout of §2.1.

    ``tag`` is 0 in SUBMIT, the delivery id in WORK and DONE, the worker's tag (the first 8 bytes
    of its public key, big-endian) in RESULT. ``body`` is a view into the received frame.
    """

    command: int
    tag: int
    service: bytes
    header: FragmentHeader
    body: Bytes


@dataclass(frozen=True)
class Cancel:
    """CANCEL (client to broker): end the job."""

    job_id: bytes
    command: int = field(default=Command.CANCEL, init=False)


@dataclass(frozen=True)
class Ping:
    """PING: client liveness; the broker answers PONG."""

    command: int = field(default=Command.PING, init=False)


@dataclass(frozen=True)
class Pong:
    """PONG: the broker's answer to PING."""

    command: int = field(default=Command.PONG, init=False)


@dataclass(frozen=True)
class Failed:
    """FAILED (broker to client): the job failed because of fragment ``index``, or as a whole
    when ``index`` is :data:`WHOLE_JOB_INDEX`. ``reason`` is escaped (:func:`escape_peer_text`)."""

    job_id: bytes
    index: int
    code: int
    reason: str
    command: int = field(default=Command.FAILED, init=False)


@dataclass(frozen=True)
class Busy:
    """BUSY (broker to client): the byte budget is full; resend fragment ``index`` later."""

    job_id: bytes
    index: int
    retry_after_ms: int
    command: int = field(default=Command.BUSY, init=False)


@dataclass(frozen=True)
class Ready:
    """READY (worker to broker): join ``service`` with ``credit``, heartbeating every
    ``heartbeat_ms`` (C12: any value is readable; the broker judges it)."""

    credit: int
    heartbeat_ms: int
    service: bytes
    command: int = field(default=Command.READY, init=False)


@dataclass(frozen=True)
class Reject:
    """REJECT (worker to broker): delivery ``delivery_id`` failed with ``code``."""

    delivery_id: int
    code: int
    retryable: bool
    reason: str
    command: int = field(default=Command.REJECT, init=False)


@dataclass(frozen=True)
class Heartbeat:
    """HEARTBEAT: liveness between broker and worker."""

    command: int = field(default=Command.HEARTBEAT, init=False)


@dataclass(frozen=True)
class Disconnect:
    """DISCONNECT: the sender is leaving, or the peer must leave."""

    reason: str
    command: int = field(default=Command.DISCONNECT, init=False)


@dataclass(frozen=True)
class Credit:
    """CREDIT (worker to broker): raise the credit asked for."""

    credit: int
    command: int = field(default=Command.CREDIT, init=False)


Message = Union[Fragment, Cancel, Ping, Pong, Failed, Busy, Ready, Reject, Heartbeat, Disconnect, Credit]


def _envelope(command: int) -> bytes:
    return SIGNATURE + bytes((VERSION, command))


def encode_fragment(command: int, tag: int, service: Union[str, bytes], header: FragmentHeader, body: Bytes) -> bytes:
    """Encodes SUBMIT, WORK, DONE or RESULT: envelope, tag, service, header, body (one copy of
    the body)."""
    if command not in Command.FRAGMENTS:
        raise ValueError(f"{Command.name(command)} does not use the fragment layout")
    service_bytes = validate_service(service)
    return b"".join((_envelope(command), _U64.pack(tag), bytes((len(service_bytes),)), service_bytes, header.pack(), body))


def encode(message: Message) -> bytes:
    """Encodes any message (reasons cut to 1 KiB on a UTF-8 boundary)."""
    if isinstance(message, Fragment):
        return encode_fragment(message.command, message.tag, message.service, message.header, message.body)
    if isinstance(message, (Ping, Pong, Heartbeat)):
        return _envelope(message.command)
    if isinstance(message, Cancel):
        return _envelope(Command.CANCEL) + _job_id(message.job_id)
    if isinstance(message, Failed):
        return (_envelope(Command.FAILED) + _job_id(message.job_id) + _U32.pack(message.index)
                + _U16.pack(message.code) + truncate_reason(message.reason))
    if isinstance(message, Busy):
        return _envelope(Command.BUSY) + _job_id(message.job_id) + _U32.pack(message.index) + _U32.pack(message.retry_after_ms)
    if isinstance(message, Ready):
        service = validate_service(message.service)
        return (_envelope(Command.READY) + _U32.pack(message.credit) + _U32.pack(message.heartbeat_ms)
                + bytes((len(service),)) + service)
    if isinstance(message, Reject):
        return (_envelope(Command.REJECT) + _U64.pack(message.delivery_id) + _U16.pack(message.code)
                + (b"\x01" if message.retryable else b"\x00") + truncate_reason(message.reason))
    if isinstance(message, Disconnect):
        return _envelope(Command.DISCONNECT) + truncate_reason(message.reason)
    if isinstance(message, Credit):
        return _envelope(Command.CREDIT) + _U32.pack(message.credit)
    raise TypeError(f"not an SMQ/1 message: {message!r}")


def _job_id(job_id: bytes) -> bytes:
    if len(job_id) != 16:
        raise ValueError(f"a job id is 16 bytes, not {len(job_id)}")
    return bytes(job_id)


# -- parsing ---------------------------------------------------------------------------------


def parse(frame: Bytes, max_fragment: int = DEFAULT_MAX_FRAGMENT) -> Message:
    """Parses one SMQ/1 message (one ZeroMQ frame), applying every check of §2.

    Fragment bodies are views (memoryview) into ``frame``: nothing is copied.

    Args:
        frame: The received frame.
        max_fragment: The receiver's max-fragment: larger bodies fail with 413.

    Raises:
        ProtocolError: unreadable (``failure_code`` None: drop and log), or for a fragment whose
            header could be read, with the job id, index and the code (400 or 413) to answer.
    """
    data = memoryview(frame).cast("B") if not isinstance(frame, memoryview) else frame.cast("B")
    size = len(data)
    if size < ENVELOPE_SIZE:
        if bytes(data[:3]) == SIGNATURE[: min(3, size)]:
            raise ProtocolError("truncated", None, size, ENVELOPE_SIZE)
        raise ProtocolError("badSignature")
    if bytes(data[:3]) != SIGNATURE:
        raise ProtocolError("badSignature")
    if data[3] != VERSION:
        raise ProtocolError("unsupportedVersion", None, data[3])
    command = data[4]

    def require(at_least: int) -> None:
        if size < at_least:
            raise ProtocolError("truncated", command, size, at_least)

    def exactly(n: int) -> None:
        require(n)
        if size != n:
            raise ProtocolError("trailingBytes", command, size, n)

    def reason(start: int) -> str:
        length = size - start
        if length > MAX_REASON_BYTES:
            raise ProtocolError("reasonTooLong", command, length, MAX_REASON_BYTES)
        return escape_peer_text(bytes(data[start:]))

    def service_end() -> int:
        length = data[SERVICE_OFFSET]
        if length == 0:
            raise ProtocolError("badServiceName", command, 0)
        end = SERVICE_OFFSET + 1 + length
        require(end)
        if not is_valid_service(data[SERVICE_OFFSET + 1:end]):
            raise ProtocolError("badServiceName", command)
        return end

    if command in Command.FRAGMENTS:
        # The smallest fragment message: a 1-byte service and an empty body.
        require(FRAGMENT_OVERHEAD + 1)
        tag = _U64.unpack_from(data, TAG_OFFSET)[0]
        header_at = service_end()
        require(header_at + HEADER_SIZE)
        header = FragmentHeader.unpack(data, header_at)
        body = data[header_at + HEADER_SIZE:]
        header.validate(len(body), command in Command.REQUESTS, max_fragment, command=command, tag=tag)
        return Fragment(command, tag, bytes(data[SERVICE_OFFSET + 1:header_at]), header, body)
    if command == Command.CANCEL:
        exactly(21)
        return Cancel(bytes(data[5:21]))
    if command == Command.PING:
        exactly(5)
        return Ping()
    if command == Command.PONG:
        exactly(5)
        return Pong()
    if command == Command.HEARTBEAT:
        exactly(5)
        return Heartbeat()
    if command == Command.FAILED:
        require(27)
        return Failed(bytes(data[5:21]), _U32.unpack_from(data, 21)[0], _U16.unpack_from(data, 25)[0], reason(27))
    if command == Command.BUSY:
        exactly(29)
        return Busy(bytes(data[5:21]), _U32.unpack_from(data, 21)[0], _U32.unpack_from(data, 25)[0])
    if command == Command.READY:
        require(15)
        end = service_end()
        exactly(end)
        return Ready(_U32.unpack_from(data, 5)[0], _U32.unpack_from(data, 9)[0], bytes(data[SERVICE_OFFSET + 1:end]))
    if command == Command.REJECT:
        require(16)
        retryable = data[15]
        if retryable > 1:
            raise ProtocolError("badField", command, retryable)
        return Reject(_U64.unpack_from(data, 5)[0], _U16.unpack_from(data, 13)[0], retryable == 1, reason(16))
    if command == Command.DISCONNECT:
        return Disconnect(reason(5))
    if command == Command.CREDIT:
        exactly(9)
        return Credit(_U32.unpack_from(data, 5)[0])
    raise ProtocolError("unknownCommand", command, command)
