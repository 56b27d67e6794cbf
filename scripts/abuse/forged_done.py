#!/usr/bin/env python3
"""Hostile worker: registers, then sends DONEs whose delivery ids the broker never gave out, as
fast as it can (issue 10: log growth under a flood of forged messages ≤ 10 KB/s). Real WORK it is
given is answered properly (echo), so the forged DONEs are the only abuse."""
import hashlib
import os
import struct
import time

import smq1


def extra(parser):
    parser.add_argument("--heartbeat-ms", type=int, default=500)


def run():
    args = smq1.arguments(__doc__, extra)
    peer = smq1.Peer(args)
    peer.send(smq1.ready(args.service, 1, args.heartbeat_ms))
    prefix = smq1.random_prefix()
    body = b"forged"
    head = smq1.header(smq1.job_id(prefix, 0), 0, 1, 0, 0, len(body), hashlib.sha256(body).digest())
    # Delivery ids from the top of the range: a broker counting up from 1 never reaches them.
    tag = 0xF000_0000_0000_0000 | (struct.unpack(">Q", os.urandom(8))[0] >> 8)
    interval = args.heartbeat_ms / 1000
    next_beat = time.monotonic() + interval
    forged = 0
    while peer.alive():
        for _ in range(256):
            if not peer.send(smq1.fragment(smq1.DONE, tag, args.service, head, body)):
                break
            tag += 1
            forged += 1
        for _ in range(100):
            message, command, fields = peer.receive()
            if message is None:
                break
            if command == smq1.WORK:
                peer.send(smq1.done_for(message, fields, bytes(message[fields["body_at"]:])))
        if time.monotonic() >= next_beat:
            peer.send(smq1.heartbeat())
            next_beat = time.monotonic() + interval
    peer.finish(shape="forged-done", forged=forged)


smq1.main_guard(run)
