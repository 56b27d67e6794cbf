"""SMQ/1 bytes built by hand from docs/PROTOCOL.md §2, and the CURVE peer plumbing the hostile
peers in this directory share. Not the library's codec on purpose: a hostile peer writes what it
likes, including what the codec would never produce.

Every peer here:
- connects only to 127.0.0.0/8 (it refuses any other endpoint);
- uses a key pair made by `keygen` (the ZPL files pyzmq's zmq.auth reads) and the broker's public key;
- runs for --duration seconds and stops by itself: every loop checks the deadline, every send and
  receive has a timeout;
- prints one JSON line of counters on stdout when it ends (the soak script and the process tests
  read it).
"""

import argparse
import hashlib
import ipaddress
import json
import os
import signal
import struct
import sys
import time

import zmq
import zmq.auth

SIGNATURE = b"SMQ\x01"

SUBMIT, CANCEL, PING, PONG = 0x01, 0x02, 0x03, 0x04
RESULT, FAILED, BUSY = 0x11, 0x12, 0x13
READY, WORK, DONE, REJECT, HEARTBEAT, DISCONNECT, CREDIT = 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27

WHOLE_JOB = 0xFFFFFFFF
FLAG_LAST = 0x01
HEADER_SIZE = 80
EMPTY_DIGEST = hashlib.sha256(b"").digest()


def header(job_id, index, count, offset, total, length, digest, flags=None, version=1):
    """The 80-byte fragment header of §2.2; flags default to LAST exactly on count − 1."""
    if flags is None:
        flags = FLAG_LAST if index == count - 1 else 0
    return struct.pack(">BBH16sIIQQI32s", version, flags, 0, job_id, index, count, offset, total, length, digest)


def service_bytes(name):
    raw = name.encode() if isinstance(name, str) else name
    return bytes([len(raw)]) + raw


def fragment(command, tag, service, head, body=b""):
    """SUBMIT, WORK, DONE and RESULT share this layout (§2.1)."""
    return SIGNATURE + bytes([command]) + struct.pack(">Q", tag) + service_bytes(service) + head + body


def submit(job_id, index, count, service, body=b"", offset=None, total=None, digest=None, fragment_size=None):
    """A SUBMIT of `body` as fragment `index` of `count`; offset and total-length default to a job
    of `count` fragments of `fragment_size` (default len(body)) bytes each."""
    size = len(body) if fragment_size is None else fragment_size
    if offset is None:
        offset = index * size
    if total is None:
        total = offset + len(body) if index == count - 1 else count * size
    head = header(job_id, index, count, offset, total, len(body), digest or hashlib.sha256(body).digest())
    return fragment(SUBMIT, 0, service, head, body)


def cancel(job_id):
    return SIGNATURE + bytes([CANCEL]) + job_id


def ping():
    return SIGNATURE + bytes([PING])


def heartbeat():
    return SIGNATURE + bytes([HEARTBEAT])


def ready(service, credit, heartbeat_ms):
    return SIGNATURE + bytes([READY]) + struct.pack(">II", credit, heartbeat_ms) + service_bytes(service)


def reject(delivery, code, retryable, reason):
    return SIGNATURE + bytes([REJECT]) + struct.pack(">QHB", delivery, code, 1 if retryable else 0) + reason


def parse(message):
    """(command, fields) of a message from the broker; fields is a dict, {} when not parsed."""
    if len(message) < 5 or message[:4] != SIGNATURE:
        return None, {}
    command = message[4]
    fields = {}
    try:
        if command == FAILED:
            job_id, index, code = struct.unpack(">16sIH", message[5:27])
            fields = {"job": job_id, "index": index, "code": code, "reason": message[27:]}
        elif command == BUSY:
            job_id, index, retry = struct.unpack(">16sII", message[5:29])
            fields = {"job": job_id, "index": index, "retry_ms": retry}
        elif command in (RESULT, WORK):
            tag = struct.unpack(">Q", message[5:13])[0]
            length = message[13]
            service = message[14:14 + length]
            head = message[14 + length:14 + length + HEADER_SIZE]
            _, flags, _, job_id, index, count, offset, total, body_length, digest = struct.unpack(">BBH16sIIQQI32s", head)
            fields = {"tag": tag, "service": service, "job": job_id, "index": index, "count": count, "offset": offset,
                      "total": total, "length": body_length, "digest": digest, "flags": flags,
                      "body_at": 14 + length + HEADER_SIZE}
        elif command == DISCONNECT:
            fields = {"reason": message[5:]}
    except struct.error:
        return command, {}
    return command, fields


def done_for(work_message, fields, body):
    """A DONE answering `work_message` (a WORK) with `body`: the WORK's tag, service and job fields."""
    service = fields["service"]
    head = header(fields["job"], fields["index"], fields["count"], 0, 0, len(body), hashlib.sha256(body).digest(),
                  flags=fields["flags"])
    return fragment(DONE, fields["tag"], service, head, body)


def job_id(prefix, counter):
    """16 bytes: an 8-byte random prefix per process, then a counter (C32)."""
    return prefix + struct.pack(">Q", counter)


def loopback_only(endpoint):
    """Refuses any endpoint that is not tcp://127.x.y.z:PORT: these peers never leave the machine."""
    if not endpoint.startswith("tcp://"):
        raise SystemExit(f"Error: {endpoint}: only tcp://127.x.y.z:PORT endpoints")
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
    try:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError
    except ValueError:
        raise SystemExit(f"Error: {endpoint}: only loopback (127.0.0.0/8) endpoints")
    return endpoint


def arguments(description, extra=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--broker", required=True, help="tcp://127.0.0.1:PORT")
    parser.add_argument("--broker-key", required=True, help="the broker's public certificate (keygen's NAME.key)")
    parser.add_argument("--cert", required=True, help="this peer's secret certificate (keygen's NAME.key_secret)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run (then it stops by itself)")
    parser.add_argument("--service", default="echo")
    if extra:
        extra(parser)
    args = parser.parse_args()
    if not (0 < args.duration <= 3600):
        parser.error("--duration must be in (0, 3600] seconds")
    loopback_only(args.broker)
    return args


class Peer:
    """One CURVE DEALER connected to the broker, with a deadline."""

    def __init__(self, args, rcvhwm=None, sndhwm=None):
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        server_public, _ = zmq.auth.load_certificate(args.broker_key)
        public, secret = zmq.auth.load_certificate(args.cert)
        if secret is None:
            raise SystemExit(f"Error: {args.cert} holds no secret key")
        self.socket.curve_serverkey = server_public
        self.socket.curve_publickey = public
        self.socket.curve_secretkey = secret
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDTIMEO, 200)
        self.socket.setsockopt(zmq.RCVTIMEO, 0)
        if rcvhwm is not None:
            self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
            self.socket.setsockopt(zmq.RCVBUF, 4096)
        if sndhwm is not None:
            self.socket.setsockopt(zmq.SNDHWM, sndhwm)
        self.socket.connect(args.broker)
        self.started = time.monotonic()
        self.deadline = self.started + args.duration
        self.counts = {"sent": 0, "send_timeouts": 0, "received": 0}
        self.codes = {}
        # SIGINT or SIGTERM ends the run early but cleanly: the loops see the deadline passed and
        # the report is printed as usual.
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._stop_now)

    def _stop_now(self, number, frame):
        self.deadline = 0.0
        self.counts["stopped_by_signal"] = number

    def alive(self):
        return time.monotonic() < self.deadline

    def send(self, message):
        """Sends unless the socket stays full for 200 ms; returns whether it went."""
        try:
            self.socket.send(message, copy=False)
            self.counts["sent"] += 1
            return True
        except zmq.Again:
            self.counts["send_timeouts"] += 1
            return False

    def receive(self, timeout_ms=0):
        """One message from the broker, or None; counts FAILED codes, BUSY and DISCONNECT."""
        if timeout_ms and not self.socket.poll(timeout_ms, zmq.POLLIN):
            return None, None, {}
        try:
            message = self.socket.recv(zmq.NOBLOCK)
        except zmq.Again:
            return None, None, {}
        self.counts["received"] += 1
        command, fields = parse(message)
        if command == FAILED:
            key = str(fields.get("code"))
            self.codes[key] = self.codes.get(key, 0) + 1
        elif command == BUSY:
            self.counts["busy"] = self.counts.get("busy", 0) + 1
        elif command == DISCONNECT:
            self.counts["disconnects"] = self.counts.get("disconnects", 0) + 1
        elif command == RESULT:
            self.counts["results"] = self.counts.get("results", 0) + 1
        return message, command, fields

    def drain(self, limit=10000):
        """Reads what is waiting (at most `limit` messages), without blocking."""
        for _ in range(limit):
            message, _, _ = self.receive()
            if message is None:
                return

    def finish(self, **extra):
        """Prints the counters as one JSON line and closes the socket."""
        report = dict(self.counts)
        report["failed_codes"] = self.codes
        report["seconds"] = round(time.monotonic() - self.started, 3)
        report.update(extra)
        print(json.dumps(report, sort_keys=True), flush=True)
        self.socket.close(0)
        self.context.term()


def random_prefix():
    return os.urandom(8)


def main_guard(run):
    """Runs `run` and turns Ctrl-C into a clean stop (the deadline is the normal one)."""
    try:
        run()
    except KeyboardInterrupt:
        sys.exit(130)
