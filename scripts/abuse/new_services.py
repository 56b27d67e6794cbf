#!/usr/bin/env python3
"""Hostile client: every job goes to a service name never used before (issue 10: service records
must be forgotten when they have no worker and no work, and timers must not walk idle ones).
Each job is cancelled at once, so max-jobs never stops the churn."""
import smq1


def extra(parser):
    parser.add_argument("--no-cancel", action="store_true", help="leave each job open (max-jobs then bounds it)")


def run():
    args = smq1.arguments(__doc__, extra)
    peer = smq1.Peer(args)
    prefix = smq1.random_prefix()
    tag = prefix.hex()[:8]
    jobs = 0
    while peer.alive():
        job = smq1.job_id(prefix, jobs)
        service = f"abuse-{tag}-{jobs}"
        if not peer.send(smq1.submit(job, 0, 1, service, b"x")):
            peer.drain()
            continue
        if not args.no_cancel:
            peer.send(smq1.cancel(job))
        jobs += 1
        if jobs % 64 == 0:
            peer.drain()
    peer.drain()
    peer.finish(shape="new-services", services=jobs)


smq1.main_guard(run)
