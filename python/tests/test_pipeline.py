"""Fragmenting and gathering without sockets: job ids (C32), counts (C14, C15), payload files
(C18) and the gatherer's rules (C19)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from securemq.errors import ConfigurationError, IntegrityError, PayloadError
from securemq.pipeline import Gatherer, JobIds, Payload, fragment_count
from securemq.protocol import FragmentHeader

JOB = b"J" * 16


def result(index: int, count: int = 5, body: bytes = None, job: bytes = JOB, **changes: object) -> tuple:  # type: ignore[assignment]
    body = body if body is not None else f"result {index}".encode()
    header = FragmentHeader.make(job, index, count, body)
    if changes:
        header = FragmentHeader(**{**header.__dict__, **changes})
    return header, body


def test_results_come_out_in_order_each_once() -> None:
    gatherer = Gatherer(JOB, count=5, window=4)
    assert gatherer.accept(*result(2), tag=22) == []
    assert gatherer.accept(*result(1), tag=11) == []
    assert gatherer.held == 2
    ready = gatherer.accept(*result(0), tag=10)
    assert [(r.index, r.body, r.worker_tag) for r in ready] == [(0, b"result 0", 10), (1, b"result 1", 11), (2, b"result 2", 22)]
    # Duplicates, of an index handed over or of one held, are dropped and counted.
    assert gatherer.accept(*result(1)) == []
    assert gatherer.accept(*result(4)) == []
    assert gatherer.accept(*result(4)) == []
    assert gatherer.duplicates == 2
    assert [r.index for r in gatherer.accept(*result(3))] == [3, 4]
    assert gatherer.is_complete and gatherer.first_missing() is None


@pytest.mark.parametrize("bad, what", [
    (result(1, body=b"x", digest=bytes(32)), "SHA-256"),
    (result(1, count=6), "fragments"),
    (result(7, count=5, flags=0), "not below"),
    (result(1, job=b"K" * 16), "job"),
    (result(1, body=b"abc", length=4), "body bytes"),
    (result(4), "window"),  # next 0, window 4: index 4 is outside
])
def test_violations_fail_the_job(bad: tuple, what: str) -> None:
    gatherer = Gatherer(JOB, count=5, window=4)
    with pytest.raises(IntegrityError) as failure:
        gatherer.accept(*bad)
    assert what in str(failure.value)
    assert failure.value.index == bad[0].index


def test_the_window_moves_with_what_was_handed_over() -> None:
    gatherer = Gatherer(JOB, count=10, window=2)
    gatherer.accept(*result(0, count=10))
    gatherer.accept(*result(2, count=10))  # next 1, window 2: 1 and 2 are inside
    with pytest.raises(IntegrityError):
        gatherer.accept(*result(3, count=10))


def test_duplicates_are_not_hashed() -> None:
    gatherer = Gatherer(JOB, count=2, window=2)
    gatherer.accept(*result(0, count=2))
    # A duplicate with a wrong digest is still only a duplicate.
    assert gatherer.accept(*result(0, count=2, digest=bytes(32))) == []
    assert gatherer.duplicates == 1


def test_fragment_counts() -> None:
    assert fragment_count(0, 100) == 1  # C14
    assert fragment_count(1, 100) == 1
    assert fragment_count(100, 100) == 1
    assert fragment_count(101, 100) == 2
    with pytest.raises(ConfigurationError):
        fragment_count(1 << 40, 1)  # C15: at most 2^32 - 1 fragments
    with pytest.raises(ConfigurationError):
        fragment_count(10, 0)


def test_job_ids_are_unique_per_client() -> None:
    # C32: a random half once, a counter; requests set the top bit.
    ids = JobIds()
    jobs = [ids.next_job() for _ in range(1000)]
    requests = [ids.next_request() for _ in range(1000)]
    assert len(set(jobs + requests)) == 2000
    assert all(len(i) == 16 and i[:8] == jobs[0][:8] for i in jobs + requests)
    assert all(r[8] & 0x80 for r in requests) and not any(j[8] & 0x80 for j in jobs)
    assert JobIds().next_job()[:8] != jobs[0][:8]


def test_a_payload_in_memory_is_not_copied() -> None:
    data = bytearray(b"0123456789")
    payload = Payload(data)
    view = payload.read(2, 3, last=False)
    data[2] = ord("X")
    assert bytes(view) == b"X34"


def test_a_file_payload_is_read_by_offset(tmp_path: Path) -> None:
    path = tmp_path / "p.bin"
    path.write_bytes(b"abcdefghij")
    payload = Payload(path)
    assert payload.length == 10
    assert payload.read(0, 4, last=False) == b"abcd"
    assert payload.read(8, 2, last=True) == b"ij"
    payload.close()


def test_a_file_that_changes_length_fails(tmp_path: Path) -> None:
    # C18: reading short of the end is an error, and reading past the last fragment must find EOF.
    path = tmp_path / "p.bin"
    path.write_bytes(b"abcdefghij")
    grows = Payload(path)
    with open(path, "ab") as handle:
        handle.write(b"k")
    with pytest.raises(PayloadError, match="grew"):
        grows.read(5, 5, last=True)
    shrinks = Payload(path)
    os.truncate(path, 4)
    with pytest.raises(PayloadError, match="shrank"):
        shrinks.read(0, 8, last=False)


def test_only_regular_files_are_payloads(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(PayloadError, match="regular file"):
        Payload(fifo)  # refused at once, not a wait for a writer
    with pytest.raises(PayloadError, match="cannot open"):
        Payload(tmp_path / "missing")
