"""The exceptions of the securemq package.

Every error a caller can meet is a :class:`SecureMQError`; the subclasses say what happened so a
program can catch exactly what it can handle, and each message says what a person can do about it.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "SecureMQError",
    "ConfigurationError",
    "RejectedByServer",
    "HandshakeFailed",
    "Unreachable",
    "Disconnected",
    "Closed",
    "Timeout",
    "IntegrityError",
    "PayloadError",
    "SMQError",
    "Reject",
]


class SecureMQError(Exception):
    """The base class of every error the package raises (certificate errors included)."""


class ConfigurationError(SecureMQError, ValueError):
    """An argument the caller gave cannot work (a bad service name, a window of 0, ...)."""


class RejectedByServer(SecureMQError):
    """The broker's ZAP handler refused this key: it is not (or no longer) on the allowlist.

    libzmq does not retry after a ZAP refusal, and neither does this package.
    """


class HandshakeFailed(SecureMQError):
    """The CURVE handshake failed repeatedly: the broker's public key is wrong, or the peer at the
    endpoint is not a SecureMQ broker."""


class Unreachable(SecureMQError):
    """No CURVE handshake succeeded within the connect timeout: nothing answers at the endpoint."""


class Disconnected(SecureMQError):
    """The broker sent DISCONNECT before serving this connection: a refusal (a role that may not
    send what was sent, a service the key may not serve). Trying again would be refused again."""


class Closed(SecureMQError):
    """The client or worker was closed while the call waited, or before it was made."""


class Timeout(SecureMQError, TimeoutError):
    """A bounded wait ended before the event it waited for."""


class IntegrityError(SecureMQError):
    """A message from the broker failed a check: a result whose body does not match its SHA-256
    digest, a result outside the window, a malformed result. The job it belongs to is failed."""

    def __init__(self, message: str, index: Optional[int] = None) -> None:
        super().__init__(message)
        #: The fragment index concerned, when one is.
        self.index = index


class PayloadError(SecureMQError):
    """The payload could not be read, or a file changed its length while it was sent (C18)."""


class SMQError(SecureMQError):
    """A job or request failed at the broker or at a worker: the broker's FAILED (PROTOCOL.md §3).

    Attributes:
        code: The SMQ/1 failure code (400 malformed, 403 forbidden, 404 no worker, 410 cancelled,
            413 too large, 500, 503 draining, 504 retries exhausted, 520 worker failure, or a
            worker's own 4xx code).
        reason: The reason the broker or the worker gave, escaped for printing.
        index: The fragment that failed the job, or None when the job failed as a whole.
        job_id: The job's 16-byte id.
    """

    def __init__(self, code: int, reason: str, index: Optional[int] = None, job_id: Optional[bytes] = None) -> None:
        from .protocol import failure_code_name  # no import cycle at module load

        self.code = code
        self.reason = reason
        self.index = index
        self.job_id = job_id
        name = failure_code_name(code)
        which = "the job" if index is None else f"fragment {index}"
        text = f"{which} failed with {code}" + (f" {name}" if name else "")
        if reason:
            text += f": {reason}"
        super().__init__(text)


class Reject(Exception):
    """Raised by a worker's handler to refuse a fragment: the worker sends REJECT (PROTOCOL.md §4).

    The broker passes a 4xx code through to the client unchanged and turns any other code into
    520. A retryable rejection is delivered to another worker (up to the broker's
    max-deliveries, then the job fails with 504); a non-retryable one fails the job at once.

    Args:
        code: The failure code, 0-65535 (use 4xx for "the request is at fault").
        retryable: Whether another attempt (maybe on another worker) could succeed.
        reason: Text for the client; cut to 1 KiB on a UTF-8 boundary.
    """

    def __init__(self, code: int = 520, retryable: bool = False, reason: str = "") -> None:
        if not 0 <= code <= 0xFFFF:
            raise ConfigurationError(f"a REJECT code is 2 bytes (0-65535), not {code}")
        super().__init__(f"{code}: {reason}" if reason else str(code))
        self.code = code
        self.retryable = retryable
        self.reason = reason
