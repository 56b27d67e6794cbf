"""SecureMQ for Python: SMQ/1 clients and workers over ZeroMQ with CURVE.

The package speaks SMQ/1 (docs/PROTOCOL.md in the SecureMQ repository) to a ``secure-broker``:

- :class:`Client` submits payloads (bytes or files) to a service and gets the results back in
  order, with BUSY handling, heartbeats and reconnection with resubmission.
- :class:`Worker` serves a service with a handler per fragment, heartbeating from its own thread.
- :mod:`securemq.certs` reads the certificate files keygen, pyzmq and CZMQ write.
- :mod:`securemq.protocol` is the SMQ/1 codec, usable on its own.
"""

from .certs import Certificate, CertificateError, load_certificate, load_public_key
from .client import Client, ClientOptions, Job, JobStats
from .errors import (
    Closed,
    ConfigurationError,
    Disconnected,
    HandshakeFailed,
    IntegrityError,
    PayloadError,
    Reject,
    RejectedByServer,
    SecureMQError,
    SMQError,
    Timeout,
    Unreachable,
)
from .pipeline import Result
from .transport import ConnectionOptions
from .worker import Worker, WorkerOptions, WorkItem

__version__ = "0.1.0"

__all__ = [
    "Certificate",
    "CertificateError",
    "Client",
    "ClientOptions",
    "Closed",
    "ConfigurationError",
    "ConnectionOptions",
    "Disconnected",
    "HandshakeFailed",
    "IntegrityError",
    "Job",
    "JobStats",
    "PayloadError",
    "Reject",
    "RejectedByServer",
    "Result",
    "SecureMQError",
    "SMQError",
    "Timeout",
    "Unreachable",
    "Worker",
    "WorkerOptions",
    "WorkItem",
    "load_certificate",
    "load_public_key",
]
