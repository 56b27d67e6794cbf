"""The SMQ/1 codec: round trips, every check of §2 and §2.2 in the order of C7 and C33, and the
C-entries' edge cases. No sockets."""

from __future__ import annotations

import hashlib
import struct

import pytest

from securemq.errors import ConfigurationError
from securemq.protocol import (
    EMPTY_DIGEST,
    HEADER_SIZE,
    MAX_REASON_BYTES,
    MAX_TOTAL_LENGTH,
    WHOLE_JOB_INDEX,
    Busy,
    Cancel,
    Command,
    Credit,
    Disconnect,
    Failed,
    Fragment,
    FragmentHeader,
    Heartbeat,
    Ping,
    Pong,
    ProtocolError,
    Ready,
    Reject,
    encode,
    encode_fragment,
    escape_peer_text,
    fingerprint,
    max_message_size,
    parse,
    truncate_reason,
)

JOB = bytes(range(16))
MAX = 1 << 20


def header(index: int = 0, count: int = 1, body: bytes = b"hello", offset: int = 0, total: int = None, **changes: int) -> FragmentHeader:  # type: ignore[assignment]
    h = FragmentHeader.make(JOB, index, count, body, offset=offset, total_length=len(body) + offset if total is None else total)
    if changes:
        fields = {**h.__dict__, **changes}
        h = FragmentHeader(**fields)
    return h


def fragment_bytes(command: int = Command.SUBMIT, h: FragmentHeader = None, body: bytes = b"hello", tag: int = 0,  # type: ignore[assignment]
                   service: bytes = b"echo") -> bytes:
    """A fragment message assembled by hand, so any header (valid or not) can be sent."""
    h = h or header(body=body)
    return b"SMQ\x01" + bytes((command,)) + struct.pack(">Q", tag) + bytes((len(service),)) + service + h.pack() + body


def refused(frame: bytes, max_fragment: int = MAX) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse(frame, max_fragment)
    return caught.value


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("message", [
    Cancel(JOB),
    Ping(),
    Pong(),
    Heartbeat(),
    Failed(JOB, 3, 413, "too big"),
    Failed(JOB, WHOLE_JOB_INDEX, 503, ""),
    Busy(JOB, 7, 250),
    Ready(32, 2500, b"sha256"),
    Reject(0x0102030405060708, 422, True, "nope"),
    Reject(1, 500, False, ""),
    Disconnect("broker shutting down"),
    Disconnect(""),
    Credit(64),
])
def test_control_messages_round_trip(message: object) -> None:
    assert parse(encode(message)) == message  # type: ignore[arg-type]


@pytest.mark.parametrize("command", [Command.SUBMIT, Command.WORK, Command.DONE, Command.RESULT])
def test_fragments_round_trip(command: int) -> None:
    body = b"some fragment bytes"
    is_request = command in (Command.SUBMIT, Command.WORK)
    h = FragmentHeader.make(JOB, 2, 5, body, offset=20 if is_request else 0, total_length=100 if is_request else 0)
    frame = encode_fragment(command, 0xDEADBEEF, "a.b_c-9", h, body)
    message = parse(frame)
    assert isinstance(message, Fragment)
    assert (message.command, message.tag, message.service, message.header, bytes(message.body)) == \
        (command, 0xDEADBEEF, b"a.b_c-9", h, body)
    assert len(frame) == 94 + len(b"a.b_c-9") + len(body)


def test_wire_layout_is_the_documented_one() -> None:
    # §2.1: envelope, tag at 5, service at 13, header at 14 + L, body at 94 + L; C1: 413 = 01 9D.
    h = FragmentHeader.make(JOB, 0, 1, b"xy", offset=0, total_length=2)
    frame = encode_fragment(Command.SUBMIT, 0, "ab", h, b"xy")
    assert frame[:5] == b"SMQ\x01\x01"
    assert frame[5:13] == bytes(8)
    assert frame[13:16] == b"\x02ab"
    assert frame[16:16 + HEADER_SIZE] == (b"\x01\x01\x00\x00" + JOB + struct.pack(">IIQQI", 0, 1, 0, 2, 2)
                                          + hashlib.sha256(b"xy").digest())
    assert frame[96:] == b"xy"
    assert encode(Failed(JOB, 0, 413, ""))[25:27] == b"\x01\x9d"
    assert encode(Reject(9, 413, True, "r")) == b"SMQ\x01\x24" + struct.pack(">Q", 9) + b"\x01\x9d\x01r"


def test_an_empty_payload_is_one_empty_fragment() -> None:
    # C14: index 0, count 1, LAST, offset 0, total 0, length 0, digest of nothing.
    h = FragmentHeader.make(JOB, 0, 1, b"", offset=0, total_length=0)
    assert h.is_last and h.length == 0 and h.digest == EMPTY_DIGEST
    assert EMPTY_DIGEST.hex().startswith("e3b0c442") and EMPTY_DIGEST.hex().endswith("b855")
    message = parse(encode_fragment(Command.SUBMIT, 0, "x", h, b""))
    assert isinstance(message, Fragment) and bytes(message.body) == b""


def test_submit_tag_is_not_checked() -> None:
    # C11: a non-zero SUBMIT tag is not an error.
    assert parse(fragment_bytes(tag=42)).tag == 42  # type: ignore[union-attr]


# -- envelopes (§2.3 first class: unreadable) ---------------------------------------------------


@pytest.mark.parametrize("frame, code", [
    (b"", "truncated"),  # as the Swift codec: a prefix of the signature, however short
    (b"S", "truncated"),
    (b"SMQ\x01", "truncated"),
    (b"XYZ\x01\x03", "badSignature"),
    (b"SMQ\x02\x03", "unsupportedVersion"),
    (b"SMQ\x01\x7f", "unknownCommand"),
    (b"SMQ\x01\x00", "unknownCommand"),
])
def test_unreadable_envelopes(frame: bytes, code: str) -> None:
    error = refused(frame)
    assert error.code == code
    assert error.is_unreadable and error.failure_code is None


@pytest.mark.parametrize("command, size", [
    (Command.CANCEL, 21), (Command.PING, 5), (Command.PONG, 5), (Command.HEARTBEAT, 5), (Command.BUSY, 29),
    (Command.CREDIT, 9),
])
def test_commands_without_a_body_have_an_exact_length(command: int, size: int) -> None:
    # C8: one byte more or less is unreadable.
    exact = b"SMQ\x01" + bytes((command,)) + bytes(size - 5)
    parse(exact)
    assert refused(exact + b"\x00").code == "trailingBytes"
    if size > 5:
        assert refused(exact[:-1]).code == "truncated"


def test_ready_is_exactly_its_service_long() -> None:
    ready = encode(Ready(1, 2500, b"svc"))
    assert len(ready) == 14 + 3
    assert refused(ready + b"x").code == "trailingBytes"
    assert refused(ready[:14]).code == "truncated"
    # C12: credit 0 and a heartbeat outside 100-60000 are readable (the broker's rule, not the codec's).
    assert parse(encode(Ready(0, 5, b"svc"))) == Ready(0, 5, b"svc")


@pytest.mark.parametrize("service", [b"", b"has space", b"slash/", b"\xc3\xa9", b"nul\x00"])
def test_bad_service_names_are_unreadable(service: bytes) -> None:
    # C10, in every message that carries a service.
    error = refused(fragment_bytes(service=service))
    assert error.code == "badServiceName" and error.is_unreadable
    ready = b"SMQ\x01\x21" + struct.pack(">II", 1, 2500) + bytes((len(service),)) + service
    # An empty READY service is also shorter than the smallest READY.
    assert refused(ready).code == ("truncated" if not service else "badServiceName")
    assert refused(ready + b"x" if not service else ready).is_unreadable


def test_a_service_longer_than_the_message_is_unreadable() -> None:
    frame = b"SMQ\x01\x21" + struct.pack(">II", 1, 2500) + b"\x09abc"
    assert refused(frame).code == "truncated"
    assert refused(fragment_bytes()[:17]).code == "truncated"


def test_services_of_255_bytes_are_fine_and_sender_side_validation_is_typed() -> None:
    long = "s" * 255
    assert parse(encode(Ready(1, 100, long.encode()))).service == long.encode()  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError):
        encode(Ready(1, 100, b"s" * 256))
    with pytest.raises(ConfigurationError):
        encode_fragment(Command.SUBMIT, 0, "bad name", header(), b"hello")


def test_reasons_are_bounded_and_repaired() -> None:
    # C9: 1,024 bytes are fine, 1,025 unreadable; invalid UTF-8 becomes U+FFFD.
    ok = b"SMQ\x01\x26" + b"r" * MAX_REASON_BYTES
    assert parse(ok) == Disconnect("r" * MAX_REASON_BYTES)
    assert refused(ok + b"r").code == "reasonTooLong"
    failed = b"SMQ\x01\x12" + JOB + struct.pack(">IH", 0, 520) + b"bad \xff byte"
    assert parse(failed).reason == "bad \ufffd byte"  # type: ignore[union-attr]
    assert refused(b"SMQ\x01\x12" + JOB + struct.pack(">I", 0) + b"\x02").code == "truncated"


def test_senders_cut_reasons_on_a_character_boundary() -> None:
    # C9: the longest prefix of at most 1,024 bytes that ends on a scalar boundary.
    assert truncate_reason("a" * 2000) == b"a" * 1024
    cut = truncate_reason("a" * 1023 + "é" + "z")
    assert cut == b"a" * 1023
    cut = truncate_reason("a" * 1022 + "€")  # 3 bytes: does not fit after 1,022
    assert cut == b"a" * 1022
    assert len(encode(Disconnect("é" * 1000))) == 5 + 1024
    parse(encode(Failed(JOB, 0, 500, "€" * 1000)))


def test_peer_text_is_escaped() -> None:
    reason = "line\nforged\x1b[31m\u202eevil\\"
    assert escape_peer_text(reason) == "line\\nforged\\u{1B}[31m\\u{202E}evil\\\\"
    assert escape_peer_text("plain ascii") == "plain ascii"
    assert escape_peer_text("héllo wörld") == "héllo wörld"
    assert parse(encode(Disconnect(reason))).reason == escape_peer_text(reason)  # type: ignore[union-attr]


def test_reject_retryable_is_zero_or_one() -> None:
    # C2: any other byte makes the message unreadable.
    frame = bytearray(encode(Reject(5, 500, True, "")))
    frame[15] = 2
    error = refused(bytes(frame))
    assert error.code == "badField" and error.value == 2 and error.is_unreadable
    assert refused(bytes(frame[:15])).code == "truncated"


def test_codes_are_an_open_set() -> None:
    # C1: any two-byte code is carried through.
    assert parse(encode(Failed(JOB, 1, 0xFFFF, ""))).code == 0xFFFF  # type: ignore[union-attr]
    assert parse(encode(Reject(1, 299, False, ""))).code == 299  # type: ignore[union-attr]


# -- fragment header checks (§2.2, C3-C7, C33) ---------------------------------------------------


def assert_answerable(error: ProtocolError, code: str, failure: int = 400, command: int = Command.SUBMIT) -> None:
    assert error.code == code, error
    assert error.failure_code == failure
    assert error.job_id == JOB and error.command == command
    assert not error.is_unreadable


@pytest.mark.parametrize("changes, code", [
    ({"version": 2}, "badHeaderVersion"),          # C4
    ({"flags": 0x03}, "badFlags"),                 # C3
    ({"flags": 0x80 | 0x01}, "badFlags"),
    ({"reserved": 1}, "reservedNotZero"),          # C5
])
def test_header_version_flags_and_reserved(changes: dict, code: str) -> None:
    assert_answerable(refused(fragment_bytes(h=header(**changes))), code)


def test_index_and_count() -> None:
    # C7: count 0 fails as index >= count; LAST exactly on count - 1.
    assert_answerable(refused(fragment_bytes(h=header(count=0, flags=0))), "indexOutOfRange")
    assert_answerable(refused(fragment_bytes(h=header(index=3, count=3, flags=1))), "indexOutOfRange")
    assert_answerable(refused(fragment_bytes(h=header(index=0, count=2, flags=1))), "lastFlagMismatch")
    assert_answerable(refused(fragment_bytes(h=header(index=1, count=2, flags=0, offset=5, total=10))), "lastFlagMismatch")
    assert refused(fragment_bytes(h=header(count=0, flags=0))).index == 0


def test_the_check_order_of_c7() -> None:
    # Every check fails at once: the first one in C7's order wins.
    everything = header(version=9, flags=0x06, reserved=7, index=5, count=2)
    assert refused(fragment_bytes(h=everything)).code == "badHeaderVersion"
    assert refused(fragment_bytes(h=header(flags=0x06, reserved=7, index=5, count=2))).code == "badFlags"
    assert refused(fragment_bytes(h=header(reserved=7, index=5, count=2, flags=0))).code == "reservedNotZero"
    assert refused(fragment_bytes(h=header(index=5, count=2, flags=0))).code == "indexOutOfRange"
    # Oversize (413) comes before the length check (400) ...
    body = b"x" * 20
    big = header(body=body, length=999)
    assert_answerable(refused(fragment_bytes(h=big, body=body), max_fragment=10), "fragmentTooLarge", 413)
    # ... and is judged on the bytes that came: a header claiming more than came is a mismatch.
    claims = header(body=b"x" * 5, length=50)
    assert_answerable(refused(fragment_bytes(h=claims, body=b"x" * 5), max_fragment=10), "lengthMismatch")
    # The request checks come after the length check.
    assert refused(fragment_bytes(h=header(length=4, offset=1, total=2))).code == "lengthMismatch"


def test_max_fragment_applies_to_results_too() -> None:
    body = b"y" * 11
    done = fragment_bytes(Command.DONE, FragmentHeader.make(JOB, 0, 1, body), body, tag=77)
    error = refused(done, max_fragment=10)
    assert_answerable(error, "fragmentTooLarge", 413, Command.DONE)
    assert error.tag == 77
    parse(done, max_fragment=11)


def test_request_offsets() -> None:
    body = b"hello"
    # offset + length <= total-length.
    assert_answerable(refused(fragment_bytes(h=header(index=1, count=2, offset=10, total=12))), "offsetOutOfRange")
    # An addition that overflows 64 bits fails it too.
    error = refused(fragment_bytes(h=header(index=1, count=2, offset=(1 << 64) - 2, total=(1 << 64) - 1)))
    assert_answerable(error, "offsetOutOfRange")
    assert error.value == (1 << 64) - 1
    parse(fragment_bytes(h=header(index=1, count=3, offset=5, total=15, body=body), body=body))


def test_c33_total_length_and_anchoring() -> None:
    body = b"hello"
    # total-length <= count x max-fragment ...
    assert_answerable(refused(fragment_bytes(h=header(index=0, count=2, total=21, flags=0)), max_fragment=10),
                      "totalLengthOutOfRange")
    parse(fragment_bytes(h=header(index=0, count=2, total=20, flags=0)), max_fragment=10)
    # ... and <= 2^63 - 1 whatever the count.
    error = refused(fragment_bytes(h=header(index=0, count=0xFFFFFFFF, total=MAX_TOTAL_LENGTH + 1, flags=0)),
                    max_fragment=0xFFFFFFFF)
    assert_answerable(error, "totalLengthOutOfRange")
    assert error.limit == MAX_TOTAL_LENGTH
    # Fragment 0 starts at offset 0.
    assert_answerable(refused(fragment_bytes(h=header(index=0, count=2, offset=1, total=10, flags=0))),
                      "firstFragmentNotAtStart")
    # The last fragment ends at total-length.
    assert_answerable(refused(fragment_bytes(h=header(index=1, count=2, offset=5, total=11, body=body), body=body)),
                      "lastFragmentNotAtEnd")
    # Order within C33: total-length before anchoring.
    error = refused(fragment_bytes(h=header(index=0, count=1, offset=0, total=100)), max_fragment=10)
    assert error.code == "totalLengthOutOfRange"


def test_results_do_not_check_offsets() -> None:
    # C6: offset and total-length are 0 in results and not checked.
    body = b"result"
    odd = FragmentHeader(JOB, 0, 1, offset=999, total_length=3, length=len(body), digest=hashlib.sha256(body).digest(),
                         flags=1)
    for command in (Command.DONE, Command.RESULT):
        assert parse(fragment_bytes(command, odd, body)).header == odd  # type: ignore[union-attr]
    assert refused(fragment_bytes(Command.WORK, odd, body)).code == "offsetOutOfRange"


def test_the_digest_is_not_the_codecs_business() -> None:
    # The broker does not hash: parse accepts a wrong digest; clients and workers check it.
    h = header(digest=bytes(32))
    assert parse(fragment_bytes(h=h)).header.digest == bytes(32)  # type: ignore[union-attr]


def test_fragment_errors_carry_what_a_receiver_needs() -> None:
    error = refused(fragment_bytes(Command.WORK, header(reserved=1), tag=0xABC))
    assert (error.command, error.tag, error.job_id, error.index) == (Command.WORK, 0xABC, JOB, 0)
    assert "reservedNotZero" in str(error) and "WORK" in str(error) and "FAILED 400" in str(error)


def test_helpers() -> None:
    # C16: ZMQ_MAXMSGSIZE = max(max-fragment, 1 KiB) + 1 KiB.
    assert max_message_size(1 << 20) == (1 << 20) + 1024
    assert max_message_size(10) == 2048
    # The fingerprint is Z85 of the first 8 bytes: the test vector of RFC 32.
    assert fingerprint(bytes.fromhex("864FD26FB559F75B") + bytes(24)) == "HelloWorld"
