#!/usr/bin/env python3
"""Hostile client: submits one-fragment jobs of --size bytes and never reads what comes back
(a receive high-water mark of 1 and a 4 KiB kernel buffer; issue 10: results waiting for a client
must count against it, and a client that does not read must stop getting work dispatched)."""
import hashlib
import os

import smq1


def extra(parser):
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes per job (one fragment; ≤ the broker's max-fragment)")


def run():
    args = smq1.arguments(__doc__, extra)
    peer = smq1.Peer(args, rcvhwm=1)
    prefix = smq1.random_prefix()
    body = os.urandom(max(0, args.size))
    digest = hashlib.sha256(body).digest()
    jobs = 0
    while peer.alive():
        message = smq1.submit(smq1.job_id(prefix, jobs), 0, 1, args.service, body, offset=0, total=len(body), digest=digest)
        if peer.send(message):
            jobs += 1
    # Never read: what the broker sent is still queued somewhere, which is the point.
    peer.finish(shape="no-reader", jobs_sent=jobs)


smq1.main_guard(run)
