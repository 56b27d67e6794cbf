#!/usr/bin/env python3
"""Greedy client: keeps the broker's byte budget full (issue 10: one client filling the budget must
not starve the others). Keeps --jobs jobs of --fragments × --size bytes open, sends every fragment
at once, resends a fragment answered BUSY as soon as anything comes back, reads its results and
opens a new job when one ends."""
import collections
import hashlib
import os

import smq1


def extra(parser):
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--fragments", type=int, default=64)
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes per fragment (≤ the broker's max-fragment)")


def run():
    args = smq1.arguments(__doc__, extra)
    peer = smq1.Peer(args)
    prefix = smq1.random_prefix()
    body = os.urandom(max(1, args.size))
    digest = hashlib.sha256(body).digest()
    count = max(1, args.fragments)
    size = len(body)
    next_job = 0
    open_jobs = {}   # job id → results still missing
    pending = collections.deque()  # (job, index) to send
    completed = 0

    def open_job():
        nonlocal next_job
        job = smq1.job_id(prefix, next_job)
        next_job += 1
        open_jobs[job] = count
        pending.extend((job, index) for index in range(count))

    for _ in range(max(1, args.jobs)):
        open_job()
    while peer.alive():
        while pending and peer.alive():
            job, index = pending[0]
            if job not in open_jobs:
                pending.popleft()
                continue
            message = smq1.submit(job, index, count, args.service, body, offset=index * size, total=count * size,
                                  digest=digest, fragment_size=size)
            if not peer.send(message):
                break
            pending.popleft()
            # Read between sends so BUSY answers come back in time to be resent.
            if peer.socket.poll(0, smq1.zmq.POLLIN):
                break
        message, command, fields = peer.receive(timeout_ms=20)
        while message is not None:
            job = fields.get("job")
            if command == smq1.BUSY and job in open_jobs:
                pending.append((job, fields["index"]))
            elif command == smq1.RESULT and job in open_jobs:
                open_jobs[job] -= 1
                if open_jobs[job] == 0:
                    del open_jobs[job]
                    completed += 1
                    open_job()
            elif command == smq1.FAILED and job in open_jobs:
                del open_jobs[job]
                open_job()
            message, command, fields = peer.receive()
    peer.finish(shape="budget-filler", jobs_completed=completed, jobs_opened=next_job)


smq1.main_guard(run)
