#!/usr/bin/env python3
"""Hostile worker: answers every WORK with a REJECT whose reason is --reason-bytes long (over the
1,024-byte limit of C9, so the broker cannot read it; issue 10: an unreadable message from a
registered worker needs a defined outcome that frees what it held)."""
import time

import smq1


def extra(parser):
    parser.add_argument("--credit", type=int, default=16)
    parser.add_argument("--heartbeat-ms", type=int, default=500)
    parser.add_argument("--reason-bytes", type=int, default=1500)


def run():
    args = smq1.arguments(__doc__, extra)
    peer = smq1.Peer(args)
    peer.send(smq1.ready(args.service, args.credit, args.heartbeat_ms))
    reason = b"r" * max(0, args.reason_bytes)
    interval = args.heartbeat_ms / 1000
    next_beat = time.monotonic() + interval
    rejects = 0
    while peer.alive():
        message, command, fields = peer.receive(timeout_ms=50)
        while message is not None:
            if command == smq1.WORK:
                peer.send(smq1.reject(fields["tag"], 500, True, reason))
                rejects += 1
            message, command, fields = peer.receive()
        if time.monotonic() >= next_beat:
            peer.send(smq1.heartbeat())
            next_beat = time.monotonic() + interval
    peer.finish(shape="unreadable-reject-worker", rejects=rejects)


smq1.main_guard(run)
