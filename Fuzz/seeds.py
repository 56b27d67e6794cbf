#!/usr/bin/env python3
"""Writes valid starting inputs for the libFuzzer targets (scripts/fuzz): SMQ/1 messages built
from docs/PROTOCOL.md §2, so the fuzzer starts from messages whose digests match instead of
having to find a SHA-256 by chance. Usage: seeds.py CODEC_DIR RECEIVE_DIR"""
import hashlib, os, struct, sys

def header(job, index, count, offset, total, body, last=None):
    flags = 1 if (index == count - 1 if last is None else last) else 0
    return (bytes([1, flags]) + b"\0\0" + job + struct.pack(">IIQQI", index, count, offset, total, len(body))
            + hashlib.sha256(body).digest())

def fragment(command, tag, service, hdr, body):
    return b"SMQ\x01" + bytes([command]) + struct.pack(">Q", tag) + bytes([len(service)]) + service + hdr + body

JOB = struct.pack(">QQ", 0x5EC0E00000000001, 2)
SUBMIT, WORK, DONE, RESULT = 0x01, 0x22, 0x23, 0x11

def control(command, payload=b""):
    return b"SMQ\x01" + bytes([command]) + payload

def stream(messages):
    return b"".join(struct.pack(">H", len(m)) + m for m in messages)

codec, receive = sys.argv[1], sys.argv[2]
os.makedirs(codec, exist_ok=True)
os.makedirs(receive, exist_ok=True)
body = b"hello, fragment"
seeds = {
    "submit": fragment(SUBMIT, 0, b"echo", header(JOB, 0, 1, 0, len(body), body), body),
    "work": fragment(WORK, 7, b"echo", header(JOB, 1, 3, 16, 48, body), body),
    "done": fragment(DONE, 7, b"echo", header(JOB, 0, 1, 0, 0, body), body),
    "absurd": fragment(SUBMIT, 0, b"echo", header(JOB, 1, 3, 1 << 63, (1 << 64) - 1, body), body),
    "failed": control(0x12, JOB + struct.pack(">IH", 0, 520) + b"bad\n\x1b[31mthing"),
    "busy": control(0x13, JOB + struct.pack(">II", 0, 100)),
    "disconnect": control(0x26, b"bye\x1b]0;x\x07"),
    "reject": control(0x24, struct.pack(">QHB", 7, 400, 1) + b"nope"),
}
for name, data in seeds.items():
    open(os.path.join(codec, "seed-" + name), "wb").write(data)
# Receive streams: job parameters (count 3, small; window 4; max-fragment 16 * 255 + 1), then
# results in and out of order, a duplicate, a WORK, and control messages.
params = bytes([0, 3, 0, 3, 255, 0])
results = [fragment(RESULT, 0xAB, b"echo", header(JOB, i, 3, 0, 0, bytes([i]) * 5), bytes([i]) * 5) for i in range(3)]
open(os.path.join(receive, "seed-in-order"), "wb").write(params + stream(results))
open(os.path.join(receive, "seed-out-of-order"), "wb").write(params + stream([results[2], results[0], results[0], results[1]]))
open(os.path.join(receive, "seed-mixed"), "wb").write(
    params + stream([seeds["work"], results[1], seeds["failed"], seeds["busy"], results[0], seeds["disconnect"], results[2]]))
