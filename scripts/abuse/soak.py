#!/usr/bin/env python3
"""Runs each abuse shape of scripts/abuse against a release secure-broker and prints what the
broker paid for it. Called by scripts/soak (which builds first); see `scripts/soak --help`.

For every shape: a fresh broker (so VmHWM is that shape's peak) with --byte-budget, two honest
echo workers, the hostile peer for --duration seconds while an honest client submits 1 MiB jobs
in a loop, then --idle seconds of nothing. Measured from /proc/PID of the broker:
- peak RSS: VmHWM at the end, and the largest VmRSS sampled every 100 ms; both also as growth over
  the RSS before the shape started (base);
- CPU (utime + stime) as % of one core, during the abuse and over the idle window that starts
  1 s after the hostile peer has stopped;
- log bytes per second written by the broker during the abuse;
- honest jobs: how many completed, failed (with the CLI's Error line) or did not end in time;
- for budget-filler: an honest client's 8 MiB job, quiet (median of three) and while the filler
  floods (median of as many as fit in --duration, at most three; one that ends only after the
  flood did is marked: its time is then a lower bound), and their ratio.
Only 127.0.0.1 is used."""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TICKS = os.sysconf("SC_CLK_TCK")

# name → (script, role of its key, extra arguments, the honest workers' delay per fragment in ms
# or None for --worker-delay-ms). budget-filler's workers are slow on purpose: the filler must be
# able to send faster than they work, or the budget never fills and nothing is measured; and its
# fragments are small (16 KiB, 128 MiB outstanding), so the budget is full to the last gap an honest
# fragment could slip into.
SHAPES = {
    "zero-fragments": ("zero_fragments.py", "client", [], None),
    "sparse-indexes": ("sparse_indexes.py", "client", [], None),
    "no-reader": ("no_reader.py", "client", [], None),
    "new-services": ("new_services.py", "client", [], None),
    "submit-cancel": ("submit_cancel.py", "client", [], None),
    "budget-filler": ("budget_filler.py", "client", ["--jobs", "32", "--fragments", "256", "--size", "16384"], 200),
    "silent-worker": ("silent_worker.py", "worker", [], None),
    "unreadable-reject": ("reject_worker.py", "worker", [], None),
    "forged-done": ("forged_done.py", "worker", [], None),
    "absurd-header": ("absurd_header.py", "client", ["--repeat"], None),
}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def proc_status(pid):
    values = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    values[line.split(":")[0]] = int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return values


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15)
    except (FileNotFoundError, IndexError):
        return None


def mib(value):
    return f"{value / (1 << 20):.1f}"


class Sampler(threading.Thread):
    """Samples the broker's VmRSS every 100 ms until stopped."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            rss = proc_status(self.pid).get("VmRSS")
            if rss:
                self.peak = max(self.peak, rss)
            self.stopping.wait(0.1)


class Deployment:
    def __init__(self, options, directory):
        self.options = options
        self.directory = directory
        self.bin = options.bin_dir
        self.certs = os.path.join(directory, "certs")
        os.makedirs(os.path.join(self.certs, "allowed"), exist_ok=True)
        self.keygen("broker")
        for name, role in [("honest", "client"), ("hostile", "client"), ("w1", "worker"), ("w2", "worker"),
                           ("bad", "worker")]:
            self.keygen(name, role)
            shutil.copy(os.path.join(self.certs, name + ".key"), os.path.join(self.certs, "allowed"))
        self.children = []

    def keygen(self, name, role=None):
        command = [os.path.join(self.bin, "keygen"), "new", name, "--dir", self.certs]
        if role:
            command += ["--role", role]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=30)

    def spawn(self, command, log):
        child = subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        self.children.append(child)
        return child

    def start_broker(self, label, worker_delay_ms):
        port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.broker_log = os.path.join(self.directory, f"broker-{label}.log")
        command = [os.path.join(self.bin, "secure-broker"), "--endpoint", self.endpoint,
                   "--cert", os.path.join(self.certs, "broker.key_secret"),
                   "--allowlist", os.path.join(self.certs, "allowed"),
                   "--byte-budget", self.options.byte_budget, "--log-level", "info"] + self.options.broker_arg
        self.broker = self.spawn(command, self.broker_log)
        wait_for(lambda: "listening" in read(self.broker_log), 30, "the broker to listen", self.broker_log)
        self.workers = [self.start_worker(name, label, worker_delay_ms) for name in ("w1", "w2")]
        wait_for(lambda: read(self.broker_log).count("worker ready") >= 2, 30, "two workers", self.broker_log)

    def start_worker(self, name, label, delay_ms):
        return self.spawn([os.path.join(self.bin, "smq"), "worker", "--service", "echo", "--handler", "echo",
                           "--credit", "8", "--delay-ms", str(delay_ms)] + self.peer(name),
                          os.path.join(self.directory, f"{name}-{label}.log"))

    def peer(self, name):
        return ["--broker", self.endpoint, "--broker-key", os.path.join(self.certs, "broker.key"),
                "--cert", os.path.join(self.certs, name + ".key_secret")]

    def stop_broker(self):
        for child in [self.broker] + self.workers:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)

    def submit(self, path, timeout):
        """Runs one honest `smq submit`: (seconds, outcome) with outcome ok / failed: … / timeout."""
        started = time.monotonic()
        try:
            run = subprocess.run([os.path.join(self.bin, "smq"), "submit", path, "--service", "echo", "--quiet"]
                                 + self.peer("honest"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 timeout=timeout)
        except subprocess.TimeoutExpired:
            return time.monotonic() - started, "timeout"
        seconds = time.monotonic() - started
        if run.returncode == 0:
            return seconds, "ok"
        errors = [line for line in run.stderr.decode(errors="replace").splitlines() if line.startswith("Error")]
        return seconds, "failed: " + (errors[-1][:120] if errors else f"status {run.returncode}")

    def kill_all(self):
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass


def read(path):
    try:
        with open(path, errors="replace") as file:
            return file.read()
    except FileNotFoundError:
        return ""


def wait_for(condition, timeout, what, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise SystemExit(f"Error: timed out waiting for {what}" + (f"\n{read(log)[-3000:]}" if log else ""))


class HonestLoop(threading.Thread):
    """Submits a 1 MiB job again and again while the abuse runs; every job must end. Records each
    outcome, the longest job, and the job still running when the abuse ended (and since when)."""

    def __init__(self, deployment, path, timeout):
        super().__init__(daemon=True)
        self.deployment, self.path, self.timeout = deployment, path, timeout
        self.outcomes = {}
        self.longest = 0.0
        self.current_started = None
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            self.current_started = time.monotonic()
            seconds, outcome = self.deployment.submit(self.path, self.timeout)
            self.current_started = None
            self.longest = max(self.longest, seconds)
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def running_for(self):
        started = self.current_started
        return None if started is None else round(time.monotonic() - started, 1)


def run_shape(options, deployment, name, payloads):
    script, role, extra, delay = SHAPES[name]
    delay = options.worker_delay_ms if delay is None else delay
    deployment.start_broker(name, delay)
    pid = deployment.broker.pid
    report = {"shape": name}
    if name == "budget-filler":
        quiet = [deployment.submit(payloads["8M"], 120) for _ in range(3)]
        report["quiet_8MiB_s"] = round(statistics.median(seconds for seconds, _ in quiet), 2)
        report["quiet_outcomes"] = [outcome for _, outcome in quiet]
    time.sleep(0.5)  # let start-up allocations settle before the base is read
    base = proc_status(pid).get("VmRSS", 0)
    sampler = Sampler(pid)
    sampler.start()
    cpu_start, log_start, started = cpu_seconds(pid), os.path.getsize(deployment.broker_log), time.monotonic()
    key = "hostile" if role == "client" else "bad"
    hostile_log = os.path.join(deployment.directory, f"hostile-{name}.log")
    hostile = subprocess.Popen([options.python, os.path.join(HERE, script)] + deployment.peer(key)
                               + ["--duration", str(options.duration)] + extra,
                               stdout=subprocess.PIPE, stderr=open(hostile_log, "wb"), stdin=subprocess.DEVNULL)
    honest = HonestLoop(deployment, payloads["1M"], options.job_timeout)
    if name == "budget-filler":
        time.sleep(min(2.0, options.duration / 4))  # let the filler fill the budget first
        flooded = []
        for _ in range(3):
            if time.monotonic() - started > options.duration - 1:
                break
            seconds, outcome = deployment.submit(payloads["8M"], max(5, options.duration + 10))
            if hostile.poll() is not None:
                outcome += " (ended after the flood stopped: its time is a lower bound)"
            flooded.append((seconds, outcome))
        report["flooded_8MiB_s"] = round(statistics.median(seconds for seconds, _ in flooded), 2) if flooded else None
        report["flooded_outcomes"] = [outcome for _, outcome in flooded]
        if report["flooded_8MiB_s"] and report["quiet_8MiB_s"]:
            report["fairness_ratio"] = round(report["flooded_8MiB_s"] / report["quiet_8MiB_s"], 2)
    else:
        honest.start()
    try:
        output, _ = hostile.communicate(timeout=options.duration + 30)
    except subprocess.TimeoutExpired:
        hostile.kill()
        output, _ = hostile.communicate()
        report["hostile_overran"] = True
    ended = time.monotonic()
    cpu_end, log_end = cpu_seconds(pid), os.path.getsize(deployment.broker_log)
    honest_running_at_end = honest.running_for()
    honest.stopping.set()
    if honest.is_alive():
        honest.join(timeout=options.job_timeout + 5)
    time.sleep(1.0)
    idle_cpu_start, idle_started = cpu_seconds(pid), time.monotonic()
    time.sleep(options.idle)
    idle_cpu_end, idle_ended = cpu_seconds(pid), time.monotonic()
    sampler.stopping.set()
    sampler.join()
    status = proc_status(pid)
    report.update({
        "base_rss": base,
        "peak_hwm": status.get("VmHWM"),
        "peak_rss_sampled": sampler.peak,
        "rss_after_idle": status.get("VmRSS"),
        "cpu_during_pct": None if cpu_end is None else round(100 * (cpu_end - cpu_start) / (ended - started), 1),
        "cpu_idle_pct": None if idle_cpu_end is None else round(100 * (idle_cpu_end - idle_cpu_start) / (idle_ended - idle_started), 1),
        "log_bytes_per_s": round((log_end - log_start) / (ended - started)),
        "honest_jobs": honest.outcomes,
        "honest_longest_s": round(honest.longest, 2),
        "honest_running_at_abuse_end_s": honest_running_at_end,
        "worker_delay_ms": delay,
        "broker_alive": deployment.broker.poll() is None,
        "workers_died": sum(1 for worker in deployment.workers if worker.poll() is not None),
        "worker_exit_codes": [worker.poll() for worker in deployment.workers if worker.poll() is not None],
    })
    try:
        report["hostile"] = json.loads(output.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        report["hostile"] = {"error": read(hostile_log)[-400:]}
    deployment.stop_broker()
    return report


def print_report(report, budget_bytes):
    base, hwm = report["base_rss"], report["peak_hwm"] or 0
    print(f"== {report['shape']}")
    print(f"   broker RSS: base {mib(base)} MiB, peak VmHWM {mib(hwm)} MiB (+{mib(hwm - base)}), "
          f"peak sampled {mib(report['peak_rss_sampled'])} MiB, after idle {mib(report['rss_after_idle'] or 0)} MiB; "
          f"target VmHWM ≤ base + budget + 32 MiB = {mib(base + budget_bytes + (32 << 20))} MiB: "
          f"{'met' if hwm <= base + budget_bytes + (32 << 20) else 'MISSED'}")
    print(f"   broker CPU: {report['cpu_during_pct']} % of a core during, {report['cpu_idle_pct']} % idle after (target < 2 %)")
    print(f"   broker log: {report['log_bytes_per_s']} bytes/s during the abuse")
    if "fairness_ratio" in report or "quiet_8MiB_s" in report:
        print(f"   honest 8 MiB job: quiet {report.get('quiet_8MiB_s', 0):.2f} s {report.get('quiet_outcomes')}, "
              f"while flooded {report.get('flooded_8MiB_s')} s {report.get('flooded_outcomes')}, "
              f"ratio {report.get('fairness_ratio')} (target ≤ 2)")
    else:
        print(f"   honest 1 MiB jobs meanwhile: {report['honest_jobs']}, longest {report['honest_longest_s']} s; "
              f"one had been running {report['honest_running_at_abuse_end_s']} s when the abuse ended"
              if report['honest_running_at_abuse_end_s'] is not None else
              f"   honest 1 MiB jobs meanwhile: {report['honest_jobs']}, longest {report['honest_longest_s']} s")
    print(f"   broker alive: {report['broker_alive']}; honest workers died: {report['workers_died']} {report['worker_exit_codes']}")
    print(f"   hostile peer: {json.dumps(report['hostile'], sort_keys=True)}")
    sys.stdout.flush()


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", default=os.path.join(ROOT, ".build", "release"))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of abuse per shape")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measured after each shape")
    parser.add_argument("--byte-budget", default="64M")
    parser.add_argument("--worker-delay-ms", type=int, default=20,
                        help="the honest echo workers' delay per fragment (budget-filler uses 200)")
    parser.add_argument("--job-timeout", type=float, default=60.0, help="seconds an honest 1 MiB job may take")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated, from: " + ", ".join(SHAPES))
    parser.add_argument("--broker-arg", action="append", default=[], help="one more secure-broker argument (repeat)")
    parser.add_argument("--json", help="also write the reports to this file")
    options = parser.parse_args()
    shapes = [shape.strip() for shape in options.shapes.split(",") if shape.strip()]
    unknown = [shape for shape in shapes if shape not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")
    if not (0 < options.duration <= 3600 and 0 < options.idle <= 600):
        parser.error("--duration must be in (0, 3600] and --idle in (0, 600]")
    directory = tempfile.mkdtemp(prefix="smq-soak-")
    deployment = Deployment(options, directory)
    payloads = {}
    for label, size in (("1M", 1 << 20), ("8M", 8 << 20)):
        payloads[label] = os.path.join(directory, f"payload-{label}")
        with open(payloads[label], "wb") as file:
            file.write(os.urandom(size))
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"soak: scripts at commit {commit}, binaries from {options.bin_dir}, {options.duration:g} s per shape, "
          f"byte budget {options.byte_budget}, broker flags {options.broker_arg}, logs in {directory}")
    reports = []
    try:
        for shape in shapes:
            report = run_shape(options, deployment, shape, payloads)
            reports.append(report)
            print_report(report, parse_size(options.byte_budget))
    finally:
        deployment.kill_all()
    if options.json:
        with open(options.json, "w") as file:
            json.dump(reports, file, indent=1)
    print(f"soak: done; broker logs kept in {directory}")


if __name__ == "__main__":
    main()
