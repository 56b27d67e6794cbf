#!/usr/bin/env python3
"""Hostile client: fragments at sparse, high indexes of open jobs whose count is 2^32 − 1
(issue 10: job state must be proportional to what is held, never to the highest index seen).

Each of --jobs jobs gets fragments at indexes 2^32 − 2, 2^32 − 2 − stride, … (never the last
index, so the job stays open), zero-byte bodies at offset 0 (valid for every such index)."""
import smq1

COUNT = 0xFFFFFFFF


def extra(parser):
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--stride", type=int, default=65537, help="distance between indexes sent")


def run():
    args = smq1.arguments(__doc__, extra)
    peer = smq1.Peer(args)
    prefix = smq1.random_prefix()
    next_job = 0
    jobs = {}

    def open_job():
        nonlocal next_job
        jobs[smq1.job_id(prefix, next_job)] = COUNT - 2
        next_job += 1

    for _ in range(max(1, args.jobs)):
        open_job()
    stride = max(1, args.stride)
    while peer.alive():
        for job in list(jobs):
            index = jobs[job]
            if index < 1:  # index 0 would need the first-fragment anchor: start a new job instead
                del jobs[job]
                open_job()
                continue
            head = smq1.header(job, index, COUNT, 0, 0, 0, smq1.EMPTY_DIGEST)
            if not peer.send(smq1.fragment(smq1.SUBMIT, 0, args.service, head)):
                break
            jobs[job] = index - stride
        while True:
            message, command, fields = peer.receive()
            if message is None:
                break
            if command == smq1.FAILED and fields.get("job") in jobs:
                del jobs[fields["job"]]
                open_job()
    peer.finish(shape="sparse-indexes", jobs_opened=next_job)


smq1.main_guard(run)
