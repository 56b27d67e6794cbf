#!/usr/bin/env python3
"""Hostile client: floods zero-byte fragments of open jobs (issue 10: the byte budget counts body
bytes only, so each costs the broker its bookkeeping and nothing against the budget).

Keeps --jobs jobs of --count fragments open, each fragment length 0 (offset 0, total-length 0,
which every header check accepts), sent round robin; a job that ends (FAILED) is replaced."""
import smq1


def extra(parser):
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--count", type=int, default=1 << 20, help="fragments per job (index < count)")
    parser.set_defaults(service="nobody")  # no worker: every fragment stays queued


def run():
    args = smq1.arguments(__doc__, extra)
    peer = smq1.Peer(args)
    prefix = smq1.random_prefix()
    next_job = 0
    jobs = {}
    for _ in range(max(1, args.jobs)):
        jobs[smq1.job_id(prefix, next_job)] = 0
        next_job += 1
    count = max(2, min(args.count, 0xFFFFFFFF))
    while peer.alive():
        for job in list(jobs):
            index = jobs[job]
            if index >= count - 1:  # never the last: the job stays open
                del jobs[job]
                jobs[smq1.job_id(prefix, next_job)] = 0
                next_job += 1
                continue
            # length 0, offset 0, total-length 0: valid for every index but the last.
            head = smq1.header(job, index, count, 0, 0, 0, smq1.EMPTY_DIGEST)
            if not peer.send(smq1.fragment(smq1.SUBMIT, 0, args.service, head)):
                break
            jobs[job] = index + 1
        while True:
            message, command, fields = peer.receive()
            if message is None:
                break
            if command == smq1.FAILED and fields.get("job") in jobs:
                del jobs[fields["job"]]
                jobs[smq1.job_id(prefix, next_job)] = 0
                next_job += 1
    peer.finish(shape="zero-fragments", jobs_opened=next_job)


smq1.main_guard(run)
