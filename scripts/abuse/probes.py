#!/usr/bin/env python3
"""Protocol probes the process tests use where `smq submit` cannot say what happened on the wire.
Each prints one JSON line with what it saw, then exits 0 (the test judges the JSON).

  --case stray-submit   a two-fragment job: fragment 0, CANCEL (→ FAILED 410 for the whole job),
                        then fragment 1 of the same job (a stray SUBMIT after the job ended): its
                        answer is recorded (§3.1: FAILED 410 naming index 1).
  --case max-jobs       opens --jobs jobs (fragment 0 of 2 each, so each stays open) and records
                        which were answered BUSY (§3.1: the first SUBMIT of one job more than
                        max-jobs); then cancels one open job and opens one more, recording its answer.
"""
import smq1


def extra(parser):
    parser.add_argument("--case", required=True, choices=["stray-submit", "max-jobs"])
    parser.add_argument("--jobs", type=int, default=3)


def wait_for(peer, job, want):
    """The first message about `job` among the commands in `want`, until the deadline."""
    while peer.alive():
        message, command, fields = peer.receive(timeout_ms=100)
        if message is not None and command in want and fields.get("job") == job:
            return command, fields
    return None, {}


def describe(command, fields):
    if command is None:
        return {"answer": None}
    answer = {smq1.FAILED: "FAILED", smq1.BUSY: "BUSY", smq1.RESULT: "RESULT"}.get(command, str(command))
    result = {"answer": answer, "index": fields.get("index")}
    if command == smq1.FAILED:
        result["code"] = fields["code"]
    return result


def stray_submit(args, peer, prefix):
    job = smq1.job_id(prefix, 1)
    peer.send(smq1.submit(job, 0, 2, args.service, b"abcd", fragment_size=4))
    peer.send(smq1.cancel(job))
    cancelled = describe(*wait_for(peer, job, {smq1.FAILED}))
    peer.send(smq1.submit(job, 1, 2, args.service, b"efgh", fragment_size=4))
    # The stray fragment's answer: skip a RESULT of fragment 0 that may still come back.
    stray = describe(*wait_for(peer, job, {smq1.FAILED, smq1.BUSY}))
    peer.finish(case="stray-submit", cancelled=cancelled, stray=stray)


def max_jobs(args, peer, prefix):
    answers = []
    opened = []
    for number in range(max(1, args.jobs)):
        job = smq1.job_id(prefix, 100 + number)
        peer.send(smq1.submit(job, 0, 2, args.service, b"abcd", fragment_size=4))
        command, fields = wait_for(peer, job, {smq1.FAILED, smq1.BUSY, smq1.RESULT})
        answers.append(describe(command, fields))
        if command == smq1.RESULT:
            opened.append(job)
    after = {"answer": None}
    if opened:
        peer.send(smq1.cancel(opened[0]))
        wait_for(peer, opened[0], {smq1.FAILED})
        job = smq1.job_id(prefix, 999)
        peer.send(smq1.submit(job, 0, 2, args.service, b"abcd", fragment_size=4))
        after = describe(*wait_for(peer, job, {smq1.FAILED, smq1.BUSY, smq1.RESULT}))
    peer.finish(case="max-jobs", answers=answers, after_cancel=after)


def run():
    args = smq1.arguments(__doc__, extra)
    peer = smq1.Peer(args)
    prefix = smq1.random_prefix()
    {"stray-submit": stray_submit, "max-jobs": max_jobs}[args.case](args, peer, prefix)


smq1.main_guard(run)
