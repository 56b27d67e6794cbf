"""Fragmenting a payload and gathering its results: pure values, no sockets.

The client's socket thread feeds these and carries out what they decide, so every rule here is
tested without a network (tests/test_pipeline.py).
"""

from __future__ import annotations

import itertools
import os
import secrets
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from .errors import ConfigurationError, IntegrityError, PayloadError
from .protocol import FragmentHeader, digest
from .certs import z85_encode

__all__ = ["Result", "JobIds", "Payload", "fragment_count", "Gatherer"]

MAX_COUNT = 0xFFFFFFFF


@dataclass(frozen=True)
class Result:
    """One fragment's result, handed over in index order.

    Attributes:
        index: The fragment's 0-based index.
        body: The worker's answer (its SHA-256 was checked against the header).
        worker_tag: The first 8 bytes of the worker's public key, big-endian (0 for a result the
            broker made, such as ``mmi.workers``).
    """

    index: int
    body: bytes
    worker_tag: int

    @property
    def worker_fingerprint(self) -> str:
        """The worker's key fingerprint as the broker logs it (``key=...``)."""
        return z85_encode(self.worker_tag.to_bytes(8, "big"))


class JobIds:
    """Job ids unique per client (PROTOCOL.md C32): 8 random bytes chosen once, then an 8-byte
    counter. One-fragment requests set the counter's top bit, so they never meet a job's id."""

    _REQUEST_BIT = 1 << 63

    def __init__(self, prefix: Optional[bytes] = None) -> None:
        self._prefix = prefix if prefix is not None else secrets.token_bytes(8)
        if len(self._prefix) != 8:
            raise ValueError("the job id prefix is 8 bytes")
        # itertools.count: next() is one step under the GIL, so callers on several threads never
        # draw the same number.
        self._jobs = itertools.count(1)
        self._requests = itertools.count(1)

    def next_job(self) -> bytes:
        """A fresh id for a job."""
        return self._prefix + struct.pack(">Q", next(self._jobs) & (self._REQUEST_BIT - 1))

    def next_request(self) -> bytes:
        """A fresh id for a one-fragment request."""
        return self._prefix + struct.pack(">Q", self._REQUEST_BIT | (next(self._requests) & (self._REQUEST_BIT - 1)))


def fragment_count(total_length: int, fragment_size: int) -> int:
    """How many fragments a payload takes: every one but the last ``fragment_size`` bytes, and an
    empty payload one empty fragment (C14, C15)."""
    if fragment_size < 1:
        raise ConfigurationError("the fragment size must be at least 1 byte")
    count = max(1, -(-total_length // fragment_size))
    if count > MAX_COUNT:
        raise ConfigurationError(
            f"a payload of {total_length} bytes in fragments of {fragment_size} bytes needs {count} fragments; "
            f"a job has at most {MAX_COUNT}: use larger fragments")
    return count


class Payload:
    """What a job sends: bytes in memory, or a regular file read by offset (C18).

    A file's length is taken once, when the job starts (``fstat``); each fragment is read with
    ``pread``. If the file shrinks, reading comes up short; if it grows, reading past the end of
    the last fragment finds data: both raise :class:`PayloadError` before the last fragment is
    sent, so the broker never sees a complete job with a wrong-sized payload.
    """

    def __init__(self, source: Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]) -> None:
        self._fd: Optional[int] = None
        self._view: Optional[memoryview] = None
        self.path: Optional[str] = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._view = memoryview(source).cast("B")
            self.length = len(self._view)
            return
        path = os.fspath(source)
        self.path = path
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below anyway.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as error:
            raise PayloadError(f"{path}: cannot open the payload: {error.strerror}") from None
        try:
            info = os.fstat(fd)
        except OSError as error:
            os.close(fd)
            raise PayloadError(f"{path}: cannot stat the payload: {error.strerror}") from None
        import stat

        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise PayloadError(f"{path}: not a regular file (its length must be known before the first fragment: "
                               "read a pipe into bytes first)")
        self._fd = fd
        self.length = info.st_size

    def read(self, offset: int, length: int, last: bool) -> Union[bytes, memoryview]:
        """The ``length`` bytes at ``offset``; for the last fragment also checks end-of-file."""
        if self._view is not None:
            return self._view[offset:offset + length]
        assert self._fd is not None
        try:
            data = os.pread(self._fd, length, offset)
            if len(data) < length:
                raise PayloadError(f"{self.path}: the file shrank while it was sent: {offset + len(data)} bytes, "
                                   f"{self.length} when the job started")
            if last and os.pread(self._fd, 1, offset + length):
                raise PayloadError(f"{self.path}: the file grew while it was sent (it had {self.length} bytes when the job started)")
        except OSError as error:
            raise PayloadError(f"{self.path}: cannot read the payload: {error.strerror}") from None
        return data

    def close(self) -> None:
        """Releases the file, if there is one."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Gatherer:
    """Checks a job's results and puts them in index order, each index once (PROTOCOL.md C19).

    The client keeps at most ``window`` fragments outstanding, counting every fragment sent but
    not yet handed to the caller, so a result can only be for an index in
    ``next_index <= i < next_index + window``. A result beyond that, one whose body does not hash
    to its digest, whose count differs from the job's or whose index is not below the count
    raises :class:`IntegrityError` (the job fails); a result for an index already accepted is a
    duplicate, dropped and counted.
    """

    def __init__(self, job_id: bytes, count: int, window: int) -> None:
        if count < 1 or window < 1:
            raise ValueError("count and window are at least 1")
        self.job_id = job_id
        self.count = count
        self.window = window
        #: The index of the next result to put in order.
        self.next_index = 0
        #: Duplicate results dropped.
        self.duplicates = 0
        self._held: Dict[int, Tuple[bytes, int]] = {}

    @property
    def is_complete(self) -> bool:
        """Whether every result has been put in order."""
        return self.next_index == self.count

    @property
    def held(self) -> int:
        """Results waiting out of order."""
        return len(self._held)

    def accept(self, header: FragmentHeader, body: Union[bytes, bytearray, memoryview], tag: int = 0) -> List[Result]:
        """Checks one result and returns the results that are now in order (maybe none).

        Checks, in order: job id, count, ``index < count``, body length, duplicate, window, and
        the SHA-256 of the body (duplicates are not hashed).

        Raises:
            IntegrityError: the job must fail; the error names the index.
        """
        index = header.index
        if header.job_id != self.job_id:
            raise IntegrityError(f"a result for job {header.job_id.hex()} reached job {self.job_id.hex()}", index)
        if header.count != self.count:
            raise IntegrityError(f"result {index} says the job has {header.count} fragments, it has {self.count}", index)
        if index >= self.count:
            raise IntegrityError(f"result index {index} is not below the count {self.count}", index)
        if len(body) != header.length:
            raise IntegrityError(f"result {index} has {len(body)} body bytes, its header says {header.length}", index)
        if index < self.next_index or index in self._held:
            self.duplicates += 1
            return []
        if index - self.next_index >= self.window:
            raise IntegrityError(
                f"result {index} is outside the window (next {self.next_index}, window {self.window}): the broker "
                "broke the window contract", index)
        if digest(body) != header.digest:
            raise IntegrityError(f"result {index} failed its SHA-256 check", index)
        if index != self.next_index:
            self._held[index] = (bytes(body), tag)
            return []
        ready = [Result(index, bytes(body), tag)]
        self.next_index += 1
        while self.next_index in self._held:
            held_body, held_tag = self._held.pop(self.next_index)
            ready.append(Result(self.next_index, held_body, held_tag))
            self.next_index += 1
        return ready

    def first_missing(self) -> Optional[int]:
        """The first index not yet in order, or None when complete."""
        return None if self.is_complete else self.next_index


def make_request_header(job_id: bytes, index: int, count: int, offset: int, total: int,
                        body: Union[bytes, memoryview]) -> FragmentHeader:
    """The header of a SUBMIT: fragment ``index`` of ``count`` at ``offset`` in ``total`` bytes."""
    return FragmentHeader.make(job_id, index, count, body, offset=offset, total_length=total)
