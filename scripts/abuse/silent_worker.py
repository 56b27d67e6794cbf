#!/usr/bin/env python3
"""Hostile worker: registers with credit --credit, heartbeats on time and never answers a WORK
(issue 10: a delivery held longer than the work lease must be requeued and charged)."""
import time

import smq1


def extra(parser):
    parser.add_argument("--credit", type=int, default=16)
    parser.add_argument("--heartbeat-ms", type=int, default=500)


def run():
    args = smq1.arguments(__doc__, extra)
    peer = smq1.Peer(args)
    peer.send(smq1.ready(args.service, args.credit, args.heartbeat_ms))
    interval = args.heartbeat_ms / 1000
    next_beat = time.monotonic() + interval
    works = 0
    while peer.alive():
        message, command, _ = peer.receive(timeout_ms=50)
        if command == smq1.WORK:
            works += 1
        if time.monotonic() >= next_beat:
            peer.send(smq1.heartbeat())
            next_beat = time.monotonic() + interval
    peer.finish(shape="silent-worker", works_held=works)


smq1.main_guard(run)
