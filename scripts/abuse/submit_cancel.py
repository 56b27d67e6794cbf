#!/usr/bin/env python3
"""Hostile client: SUBMIT then CANCEL, with a new job id every time (issue 10: remembered job ids
need a fixed bound, and a cancel must not cost a log line)."""
import smq1


def run():
    args = smq1.arguments(__doc__)
    peer = smq1.Peer(args)
    prefix = smq1.random_prefix()
    jobs = 0
    while peer.alive():
        job = smq1.job_id(prefix, jobs)
        if not peer.send(smq1.submit(job, 0, 2, args.service, b"abcd", fragment_size=4)):
            peer.drain()
            continue
        peer.send(smq1.cancel(job))
        jobs += 1
        if jobs % 64 == 0:
            peer.drain()
    peer.drain()
    peer.finish(shape="submit-cancel", jobs=jobs)


smq1.main_guard(run)
