#!/usr/bin/env python3
"""Hostile client (issue 15): SUBMITs a fragment whose header says offset = 2^63 and total-length
= 2^64 − 1 (one fragment, index 0, count 1, a 5-byte body with its real digest). The job must fail
with 400 at the broker; a worker that gets it must not fall over. With --repeat it sends a new such
job every time the last one ended, until --duration; otherwise it sends one and waits for its end."""
import smq1

OFFSET = 1 << 63
TOTAL = (1 << 64) - 1


def extra(parser):
    parser.add_argument("--repeat", action="store_true")
    parser.add_argument("--count", type=int, default=1, help="fragments in the job (the one sent is the last)")


def run():
    args = smq1.arguments(__doc__, extra)
    peer = smq1.Peer(args)
    prefix = smq1.random_prefix()
    body = b"hello"
    count = max(1, args.count)
    jobs = 0
    ended = {}
    outcome = None
    while peer.alive():
        job = smq1.job_id(prefix, jobs)
        jobs += 1
        peer.send(smq1.submit(job, count - 1, count, args.service, body, offset=OFFSET, total=TOTAL))
        outcome = None
        while peer.alive() and outcome is None:
            message, command, fields = peer.receive(timeout_ms=100)
            if message is None or fields.get("job") != job:
                if command == smq1.DISCONNECT:
                    outcome = "disconnect"
                continue
            if command == smq1.FAILED:
                outcome = f"failed {fields['code']}"
            elif command == smq1.RESULT:
                outcome = "result"
            elif command == smq1.BUSY:
                outcome = "busy"
        ended[outcome or "no answer"] = ended.get(outcome or "no answer", 0) + 1
        if not args.repeat:
            break
    peer.finish(shape="absurd-header", jobs=jobs, outcomes=ended, last=outcome)


smq1.main_guard(run)
