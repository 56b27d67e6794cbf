import ArgumentParser
import Foundation
import Glibc
import SecureMQ
import Synchronization

/// `smq bench`: the shapes of the C reference program `rr` (../shared/bench), with SecureMQ's
/// broker (`secure-broker`), workers and clients as separate processes on loopback, CURVE and ZAP
/// on every hop. The orchestrator takes each child's CPU from `wait4` (as rr does) and the
/// broker's peak RSS from /proc/PID/status just before stopping it; its last line is `key=value`
/// pairs with rr's key names, so one script can parse both.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "End-to-end benchmark: broker, workers and clients as separate processes (the shapes of the C rr program).",
        subcommands: [BenchRun.self, BenchWorker.self, BenchClient.self],
        defaultSubcommand: BenchRun.self
    )
}

/// How a bench client keeps requests in flight.
enum BenchClientMode: String, ExpressibleByArgument, CaseIterable {
    /// `--inflight` concurrent tasks, each looping `Client.request` (a one-fragment job per
    /// request): independent request/reply, as rr's DEALER client does.
    case request
    /// One job per client over a payload of `count × size` bytes, fragment size = request size,
    /// window = `--inflight`: the pipeline's own streaming shape.
    case job
}

/// Where a bench client's request tasks run.
enum BenchClientExecutor: String, ExpressibleByArgument, CaseIterable {
    /// On the client's socket thread (`withTaskExecutorPreference(client.executor)`): no thread
    /// hand-off per request, as a single-threaded C client.
    case socket
    /// On Swift's global concurrent executor: each request hands its message to the socket
    /// thread and is resumed from it.
    case global
}

/// What every role of one run agrees on.
struct BenchShape: ParsableArguments {
    @Option(name: [.customShort("b"), .long], help: "Request bytes (≥ 16).")
    var size: Int = 1024

    @Option(name: [.customShort("r"), .long], help: "Reply bytes (0 = echo the request; else ≥ 16, carrying the request's first 16 bytes).")
    var replySize: Int = 0

    @Option(name: [.customShort("i"), .long], help: "Requests in flight per client (1 = one round trip at a time).")
    var inflight: Int = 100

    @Option(name: [.customShort("t"), .long], help: "Measured seconds per client, after the warm-up.")
    var seconds: Double = 2

    @Option(name: [.customShort("u"), .long], help: "Warm-up seconds, not counted.")
    var warmup: Double = 0.5

    @Option(name: [.customShort("n"), .long], help: "Instead of --seconds: each client sends exactly this many requests (fragments in job mode); no warm-up.")
    var count: Int = 0

    @Option(help: "request: concurrent Client.request calls; job: one streaming job per client (fragment = request).")
    var clientMode: BenchClientMode = .request

    @Option(help: "socket: the client's tasks run on its socket thread (Client.executor); global: on Swift's default executor.")
    var clientExecutor: BenchClientExecutor = .socket

    @Option(help: "The service the bench workers serve.")
    var service: String = "bench"

    func validate() throws {
        guard size >= 16 else { throw ValidationError("--size must be at least 16 (the request carries a timestamp and a sequence number)") }
        try OptionCheck.integer(size, option: "--size", 16...(1 << 30))
        guard replySize == 0 || replySize >= 16 else { throw ValidationError("--reply-size must be 0 (echo) or at least 16") }
        try OptionCheck.integer(replySize, option: "--reply-size", 0...(1 << 30))
        try OptionCheck.integer(inflight, option: "--inflight", 1...100_000)
        try OptionCheck.integer(count, option: "--count", 0...Int(UInt32.max))
        try OptionCheck.seconds(seconds, option: "--seconds")
        try OptionCheck.seconds(warmup, option: "--warmup", allowZero: true)
    }

    /// The largest fragment either way.
    var maxFragment: Int { max(1 << 20, size, replySize) }
}

// MARK: - orchestrator

struct BenchRun: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Start a broker, workers and clients as processes, run one shape, print rr-style key=value results.",
        discussion: """
            Examples (the shapes of docs/BENCHMARKS.md):
              smq bench run -b 1024 -w 2 -c 2 -i 100 -k 100 -t 2
              smq bench run -b 1024 -w 1 -c 1 -i 1 -t 2
              smq bench run --client-mode job -b 1048576 -r 16 -w 2 -c 1 -i 10 -k 1 -n 1024 --byte-budget 64M
            """
    )

    @OptionGroup var shape: BenchShape

    @Option(name: [.customShort("w"), .long], help: "Worker processes (one key each, weight 1).")
    var workers: Int = 2

    @Option(name: [.customShort("c"), .long], help: "Client processes (one key each).")
    var clients: Int = 2

    @Option(help: "Brokers (1…9): every worker serves all of them, every client uses all of them (client i lists broker i mod N first).")
    var brokers: Int = 1

    @Option(help: "SIGKILL the last broker this many seconds after the clients start, and print failover_ms: from the kill to the answer of the last request outstanding at the kill (request mode only).")
    var killBrokerAfter: Double?

    @Option(help: "The signal --kill-broker-after sends: KILL (the broker's connections drop at once) or STOP (it hangs with its connections up: clients notice only its silence, after heartbeat × liveness).")
    var killSignal: BenchKillSignal = .kill

    @Option(name: [.customShort("k"), .long], help: "Credit each worker asks for in READY (the broker's base window is raised to match).")
    var credit: Int = 100

    @Option(help: "The broker's byte budget (bodies queued and in flight). Suffixes K, M, G.")
    var byteBudget: String = "256M"

    @Option(help: "Open jobs per client at the broker (default: enough for --inflight one-request jobs).")
    var maxJobs: Int?

    @Option(help: "Give up (and kill every child) after this many seconds.")
    var timeout: Double = 300

    @Option(help: "Keep keys and logs in this directory (default: a temporary one, removed afterwards).")
    var workdir: String?

    @Option(help: "Log level of the children (their logs go to files in the work directory).")
    var logLevel: String = "warning"

    @Option(help: "The clients' heartbeat interval in milliseconds (a silent broker is given up after liveness × this). (default: the library's)")
    var clientHeartbeatMs: Int?

    @Option(name: .customLong("wrap"), help: ArgumentHelp(
        "Run a role under a profiler: ROLE=COMMAND, e.g. broker='valgrind --tool=callgrind'. {i} in COMMAND becomes the process's number. Repeatable.",
        valueName: "role=command"))
    var wraps: [String] = []

    /// The wrapper command's words for `role`'s process `index`, or none.
    private func wrapper(_ role: BenchRole, _ index: Int) -> [String] {
        for wrap in wraps where wrap.hasPrefix(role.rawValue + "=") {
            return wrap.dropFirst(role.rawValue.count + 1).split(separator: " ").map { $0.replacingOccurrences(of: "{i}", with: "\(index)") }
        }
        return []
    }

    func validate() throws {
        guard (1...64).contains(workers), (1...64).contains(clients) else { throw ValidationError("--workers and --clients must be 1…64") }
        try OptionCheck.integer(brokers, option: "--brokers", 1...9)
        if let clientHeartbeatMs { try OptionCheck.integer(clientHeartbeatMs, option: "--client-heartbeat-ms", 100...60_000) }
        guard credit >= brokers else { throw ValidationError("--credit must be at least --brokers: a worker splits its credit over the brokers") }
        if let killBrokerAfter {
            try OptionCheck.seconds(killBrokerAfter, option: "--kill-broker-after", allowZero: true)
            guard brokers >= 2 else { throw ValidationError("--kill-broker-after needs --brokers 2 or more: the work must have somewhere to go") }
            // A job is placed whole on one broker (C58), which need not be the one killed.
            guard shape.clientMode == .request else { throw ValidationError("--kill-broker-after measures request mode (--client-mode request)") }
        }
        try OptionCheck.integer(credit, option: "--credit", 1...65_536)
        _ = try ByteSize.parse(byteBudget, option: "--byte-budget")
        if let maxJobs { try OptionCheck.integer(maxJobs, option: "--max-jobs", 1...1_000_000) }
        try OptionCheck.seconds(timeout, option: "--timeout")
        for wrap in wraps where !BenchRole.allCases.contains(where: { wrap.hasPrefix($0.rawValue + "=") }) {
            throw ValidationError("--wrap takes ROLE=COMMAND with ROLE broker, worker or client; got '\(wrap)'")
        }
    }

    func run() async throws {
        let fm = FileManager.default
        let dir = workdir ?? fm.temporaryDirectory.appendingPathComponent("smq-bench-\(getpid())").path
        let certs = dir + "/certs"
        try fm.createDirectory(atPath: certs + "/allowed", withIntermediateDirectories: true)
        var children = ChildSet()
        defer {
            children.killAll()
            if workdir == nil { try? fm.removeItem(atPath: dir) }
        }

        // Keys: the broker, one per worker, one per client, one for the readiness probe.
        let brokerKeys = KeyPair.generate()
        try Certificate(keyPair: brokerKeys, metadata: CertificateMetadata([("name", "broker")])).save(directory: certs, name: "broker")
        func peer(_ name: String, role: String) throws -> KeyPair {
            let keys = KeyPair.generate()
            let metadata = CertificateMetadata([("name", name), ("role", role)])
            try Certificate(keyPair: keys, metadata: metadata).save(directory: certs, name: name)
            try Certificate(publicKey: keys.publicKey, metadata: metadata).save(directory: certs + "/allowed", name: name)
            return keys
        }
        for index in 0..<workers { _ = try peer("worker-\(index)", role: "worker") }
        for index in 0..<clients { _ = try peer("client-\(index)", role: "client") }
        let probeKeys = try peer("probe", role: "client")

        var endpoints: [String] = []
        for _ in 0..<brokers { endpoints.append("tcp://127.0.0.1:\(try freeLoopbackPort())") }
        let binDir = URL(fileURLWithPath: try executablePath()).deletingLastPathComponent()
        let smq = binDir.appendingPathComponent("smq").path
        let brokerPath = binDir.appendingPathComponent("secure-broker").path
        let jobs = maxJobs ?? (shape.clientMode == .request ? shape.inflight + 16 : 64)
        let started = ContinuousClock.now
        let deadline = started + OptionCheck.duration(seconds: timeout)

        // One key for every broker: the shape measured is the brokers' work, not key handling.
        var brokerChildren: [Child] = []
        for (index, endpoint) in endpoints.enumerated() {
            brokerChildren.append(try children.spawn(wrapper(.broker, index), brokerPath, [
                "--endpoint", endpoint, "--cert", certs + "/broker.key_secret", "--allowlist", certs + "/allowed",
                "--base-window", "\(max(32, credit))", "--byte-budget", byteBudget, "--max-fragment", "\(shape.maxFragment)",
                "--max-jobs", "\(jobs)", "--drain-timeout", "2", "--log-level", logLevel,
            ], log: dir + (brokers == 1 ? "/broker.log" : "/broker-\(index).log"), role: .broker))
        }
        let broker = brokerChildren[0]

        /// Every broker, starting with broker `first`: clients spread their first choice.
        func brokerArguments(first: Int) -> [String] {
            (0..<brokers).flatMap { ["--broker", endpoints[(first + $0) % brokers]] } + ["--broker-key", certs + "/broker.key"]
        }
        let common = ["--log-level", logLevel]
        let shapeArguments = [
            "--size", "\(shape.size)", "--reply-size", "\(shape.replySize)", "--inflight", "\(shape.inflight)",
            "--seconds", "\(shape.seconds)", "--warmup", "\(shape.warmup)", "--count", "\(shape.count)",
            "--client-mode", shape.clientMode.rawValue, "--client-executor", shape.clientExecutor.rawValue,
            "--service", shape.service,
        ]
        for index in 0..<workers {
            _ = try children.spawn(wrapper(.worker, index), smq, ["bench", "worker"] + brokerArguments(first: 0) + common + shapeArguments + [
                "--cert", certs + "/worker-\(index).key_secret", "--credit", "\(credit)",
            ], log: dir + "/worker-\(index).log", role: .worker)
        }

        // Wait until every worker has said READY, so the clients meet the whole pool.
        for endpoint in endpoints {
            try await waitForWorkers(endpoint: endpoint, brokerKey: brokerKeys.publicKey, probe: probeKeys, children: children, deadline: deadline)
        }

        // Job mode reads its payload from a file: write it now (not counted: this process is not
        // measured), fsync'd so no writeback runs during the measurement.
        var clientArguments: [String] = []
        if shape.clientMode == .job {
            let fragments = shape.count > 0 ? shape.count : max(1, min(4_000_000, (256 << 20) / shape.size))
            let path = dir + "/payload"
            writePayload(path: path, bytes: fragments * shape.size)
            clientArguments = ["--payload", path]
        }

        var fds: [Int32] = [0, 0]
        // Close-on-exec: only the clients get the write end (as their stdout), so EOF means all are done.
        guard pipe(&fds) == 0, fcntl(fds[0], F_SETFD, FD_CLOEXEC) == 0, fcntl(fds[1], F_SETFD, FD_CLOEXEC) == 0 else {
            fail("pipe failed: errno \(errno)")
        }
        for index in 0..<clients {
            _ = try children.spawn(wrapper(.client, index), smq, ["bench", "client"] + brokerArguments(first: index % brokers) + common + shapeArguments + [
                "--cert", certs + "/client-\(index).key_secret", "--index", "\(index)",
            ] + (clientHeartbeatMs.map { ["--heartbeat-ms", "\($0)"] } ?? [])
              + (killBrokerAfter != nil ? ["--kill-mark", dir + "/kill-mark"] : []) + clientArguments, log: dir + "/client-\(index).log", role: .client, stdout: fds[1])
        }
        close(fds[1])
        let victim = killBrokerAfter.map { (at: ContinuousClock.now + OptionCheck.duration(seconds: $0), child: brokerChildren[brokers - 1]) }
        var killedAt: UInt64?
        let lines = readLines(fd: fds[0], until: deadline, children: &children, kill: victim, killedAt: &killedAt,
                              mark: dir + "/kill-mark")
        close(fds[0])

        // Clients are done: reap them, take the broker's peak RSS while it still runs, stop the rest.
        var usage = RoleUsage()
        var failed = false
        for child in children.all where child.role == .client {
            let result = children.reap(child, grace: .seconds(5))
            usage.add(child.role, result)
            if result.status != 0 { failed = true }
        }
        let vmHWM = readVmHWM(pid: broker.pid)
        for child in children.all where child.role == .worker { child.signal(SIGTERM) }
        // A profiler wrapping a role needs time to write its data after the role exits.
        let grace: Duration = wraps.isEmpty ? .seconds(3) : .seconds(60)
        for child in children.all where child.role == .worker { usage.add(child.role, children.reap(child, grace: grace)) }
        // A stopped broker would hold SIGTERM pending until the reap's grace ran out.
        for child in brokerChildren { child.signal(killedAt != nil && child.pid == victim?.child.pid && killSignal == .stop ? SIGKILL : SIGTERM) }
        for child in brokerChildren { usage.add(.broker, children.reap(child, grace: grace + .seconds(2))) }

        let reports = lines.compactMap(ClientReport.init(line:))
        guard reports.count == clients, !failed else {
            FileHandle.standardError.write(Data("smq bench: \(reports.count)/\(clients) client results; logs in \(dir)\n".utf8))
            for line in lines { FileHandle.standardError.write(Data("  \(line)\n".utf8)) }
            if workdir == nil { print("(re-run with --workdir DIR to keep the logs)") }
            throw ExitCode(2)
        }

        // Aggregate as rr does: rate = Σ window_n / window_s; CPU per request over every request sent.
        let rate = reports.reduce(0.0) { $0 + ($1.windowSeconds > 0 ? Double($1.windowCount) / $1.windowSeconds : 0) }
        let total = reports.reduce(0) { $0 + $1.total }
        let errors = reports.reduce(0) { $0 + $1.errors }
        let first = reports.first { $0.index == 0 } ?? reports[0]
        let maxP99 = reports.map(\.p99).max() ?? 0
        let per = total > 0 ? 1e6 / Double(total) : 0
        let fields: [(String, String)] = [
            ("mode", shape.clientMode.rawValue), ("executor", shape.clientExecutor.rawValue), ("sec", "curve"), ("size", "\(shape.size)"), ("reply", "\(shape.replySize)"),
            ("brokers", "\(brokers)"), ("workers", "\(workers)"), ("clients", "\(clients)"), ("inflight", "\(shape.inflight)"), ("credit", "\(credit)"),
            ("req_per_s", f(rate, 0)), ("MB_per_s_each_way", f(rate * Double(shape.size) / 1e6, 1)),
            ("c0_window_s", f(first.windowSeconds, 2)), ("c0_p50_us", f(first.p50, 1)), ("c0_p99_us", f(first.p99, 1)),
            ("c0_p999_us", f(first.p999, 1)), ("max_client_p99_us", f(maxP99, 1)), ("machine_busy_pct", f(first.busy, 0)),
            ("total_req", "\(total)"), ("errors", "\(errors)"),
            ("cpu_us_per_req_client", f(usage.cpu[.client, default: 0] * per, 1)),
            ("cpu_us_per_req_broker", f(usage.cpu[.broker, default: 0] * per, 1)),
            ("cpu_us_per_req_workers", f(usage.cpu[.worker, default: 0] * per, 1)),
            ("cpu_us_per_req_total", f(usage.cpu.values.reduce(0, +) * per, 1)),
            ("broker_maxrss_kib", "\(usage.maxRSS[.broker, default: 0])"), ("broker_vmhwm_kib", "\(vmHWM)"),
            ("worker_max_maxrss_kib", "\(usage.maxRSS[.worker, default: 0])"),
            ("client_max_maxrss_kib", "\(usage.maxRSS[.client, default: 0])"),
            ("byte_budget", "\(try ByteSize.parse(byteBudget, option: "--byte-budget"))"),
            ("broker_exit", "\(usage.brokerStatus)"),
        ] + failoverFields(reports, killedAt: killedAt)
        print("smq " + fields.map { "\($0.0)=\($0.1)" }.joined(separator: " "))
        flushStandardOutput()
    }

    /// `failover_ms`: the largest of the clients' `failover_us` (see `BenchClient.failover`);
    /// -1 when no client measured one.
    private func failoverFields(_ reports: [ClientReport], killedAt: UInt64?) -> [(String, String)] {
        guard killBrokerAfter != nil else { return [] }
        guard killedAt != nil else { return [("failover_ms", "-1"), ("kill", "not_reached")] }
        let worst = reports.map(\.failoverMicroseconds).max() ?? -1
        return [("failover_ms", worst < 0 ? "-1" : f(worst / 1e3, 1))]
    }

    private func waitForWorkers(endpoint: String, brokerKey: PublicKey, probe: KeyPair, children: ChildSet,
                                deadline: ContinuousClock.Instant) async throws {
        var options = Client.Options()
        options.connection.connectTimeout = .seconds(10)
        options.connection.refusedConnectionLimit = nil  // the broker was just started
        let client: Client
        do { client = try await Client.connect(to: endpoint, brokerKey: brokerKey, keyPair: probe, options: options) } catch {
            fail("cannot reach the bench broker: \(error.message)")
        }
        defer { Task { await client.close() } }
        while ContinuousClock.now < deadline {
            if let dead = children.firstExited() { fail("a bench process exited early (\(dead)); re-run with --workdir to keep its log") }
            let reply = try? await client.request(Array(shape.service.utf8), service: "mmi.workers")
            if let reply, let text = String(bytes: reply, encoding: .utf8), let ready = Int(text), ready >= workers {
                await client.close()
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        fail("the bench workers did not register in time")
    }

    /// Reads the clients' result lines until every writer has closed the pipe (or the deadline).
    /// With `kill`, SIGKILLs that child at its instant and stores the time (SocketClock) in `killedAt`.
    private func readLines(fd: Int32, until deadline: ContinuousClock.Instant, children: inout ChildSet,
                           kill: (at: ContinuousClock.Instant, child: Child)?, killedAt: inout UInt64?, mark: String) -> [String] {
        var data = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            if let kill, killedAt == nil, ContinuousClock.now >= kill.at {
                let now = SocketClock.now()
                killedAt = now
                kill.child.signal(killSignal.number)
                // The clients read the kill's time at their end, to tell failover from the rest.
                _ = FileManager.default.createFile(atPath: mark, contents: Data("\(now)\n".utf8))
            }
            var left = deadline - ContinuousClock.now
            if let kill, killedAt == nil { left = Swift.min(left, Swift.max(.milliseconds(1), kill.at - ContinuousClock.now)) }
            guard ContinuousClock.now < deadline else {
                FileHandle.standardError.write(Data("smq bench: timed out; stopping every process\n".utf8))
                children.killAll()
                break
            }
            var item = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&item, 1, Int32(min(1000, max(1, (left / .milliseconds(1)).rounded(.up)))))
            if ready < 0 && errno == EINTR { continue }
            if ready == 0 { continue }
            let n = read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            data.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init)
    }
}

/// A payload file of `bytes` pseudo-random bytes, flushed to disk and left in the page cache.
private func writePayload(path: String, bytes: Int) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { fail("cannot create \(path): errno \(errno)") }
    defer { close(fd) }
    var chunk = [UInt64](repeating: 0, count: 1 << 17)  // 1 MiB
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    var written = 0
    while written < bytes {
        for index in chunk.indices {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            chunk[index] = state
        }
        let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress, min($0.count, bytes - written)) }
        guard n > 0 else { fail("cannot write \(path): errno \(errno)") }
        written += n
    }
    fsync(fd)
}

private func f(_ value: Double, _ decimals: Int) -> String { String(format: "%.\(decimals)f", value) }

/// Peak resident set size (KiB) of a live process, from /proc/PID/status.
func readVmHWM(pid: pid_t) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0
    }
    return 0
}

/// One client's result line: `C idx total=… window_n=… window_s=… p50_us=… … busy=… errors=…`.
struct ClientReport {
    let index: Int
    let total: Int
    let windowCount: Int
    let windowSeconds: Double
    let p50, p90, p99, p999, max, busy: Double
    let errors: Int
    /// `failover_us`, or -1.
    let failoverMicroseconds: Double

    init?(line: String) {
        let parts = line.split(separator: " ")
        guard parts.count >= 3, parts[0] == "C", let index = Int(parts[1]) else { return nil }
        var values: [String: Double] = [:]
        for part in parts.dropFirst(2) {
            let pair = part.split(separator: "=", maxSplits: 1)
            if pair.count == 2, let value = Double(pair[1]) { values[String(pair[0])] = value }
        }
        guard let total = values["total"], let n = values["window_n"], let seconds = values["window_s"] else { return nil }
        self.index = index
        self.total = Int(total)
        windowCount = Int(n)
        windowSeconds = seconds
        p50 = values["p50_us"] ?? 0
        p90 = values["p90_us"] ?? 0
        p99 = values["p99_us"] ?? 0
        p999 = values["p999_us"] ?? 0
        max = values["max_us"] ?? 0
        busy = values["busy"] ?? 0
        errors = Int(values["errors"] ?? 0)
        failoverMicroseconds = values["failover_us"] ?? -1
    }
}

// MARK: - child processes (posix_spawn + wait4: Foundation's Process reaps children itself and
// would hide their rusage)

enum BenchRole: String, Hashable, CaseIterable { case broker, worker, client }

struct Child: CustomStringConvertible {
    let pid: pid_t
    let role: BenchRole
    let name: String
    /// Started under a wrapper (a profiler) in its own process group: signals go to the group,
    /// so the role stops too, not only the wrapper (strace detaches on SIGTERM).
    var grouped = false
    var description: String { "\(name), pid \(pid)" }

    func signal(_ number: Int32) {
        kill(grouped ? -pid : pid, number)
    }
}

struct ReapResult {
    var cpuSeconds: Double
    var maxRSS: Int
    var status: Int32
}

struct RoleUsage {
    var cpu: [BenchRole: Double] = [:]
    var maxRSS: [BenchRole: Int] = [:]
    var brokerStatus: Int32 = 0

    mutating func add(_ role: BenchRole, _ result: ReapResult) {
        cpu[role, default: 0] += result.cpuSeconds
        maxRSS[role] = Swift.max(maxRSS[role, default: 0], result.maxRSS)
        if role == .broker { brokerStatus = result.status }
    }
}

struct ChildSet {
    private(set) var all: [Child] = []
    private var reaped: Set<pid_t> = []

    mutating func spawn(_ wrapper: [String], _ path: String, _ arguments: [String], log: String, role: BenchRole,
                        stdout: Int32? = nil) throws -> Child {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        if let stdout {
            posix_spawn_file_actions_adddup2(&actions, stdout, 1)
        } else {
            posix_spawn_file_actions_adddup2(&actions, 2, 1)
        }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        let words = wrapper + [path] + arguments
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        if !wrapper.isEmpty {
            posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))
            posix_spawnattr_setpgroup(&attributes, 0)
        }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, words[0], &actions, &attributes, argv, environ)
        guard rc == 0 else { fail("cannot start \(words[0]): \(String(cString: strerror(rc)))") }
        let child = Child(pid: pid, role: role, name: URL(fileURLWithPath: log).deletingPathExtension().lastPathComponent,
                          grouped: !wrapper.isEmpty)
        all.append(child)
        return child
    }

    /// The first child that has already exited, without reaping it.
    func firstExited() -> Child? {
        for child in all where !reaped.contains(child.pid) {
            var info = siginfo_t()
            if waitid(P_PID, id_t(child.pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info._sifields._sigchld.si_pid == child.pid {
                return child
            }
        }
        return nil
    }

    /// Waits for a child to exit (SIGKILL after `grace`), returning its CPU and peak RSS.
    mutating func reap(_ child: Child, grace: Duration) -> ReapResult {
        let until = ContinuousClock.now + grace
        var status: Int32 = 0
        var usage = rusage()
        while true {
            let r = wait4(child.pid, &status, WNOHANG, &usage)
            if r == child.pid { break }
            if r < 0 { return ReapResult(cpuSeconds: 0, maxRSS: 0, status: -1) }
            if ContinuousClock.now > until {
                child.signal(SIGKILL)
                _ = wait4(child.pid, &status, 0, &usage)
                break
            }
            usleep(2000)
        }
        reaped.insert(child.pid)
        let cpu = Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) * 1e-6
            + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) * 1e-6
        let exited = status & 0x7F == 0
        return ReapResult(cpuSeconds: cpu, maxRSS: usage.ru_maxrss, status: exited ? (status >> 8) & 0xFF : 128 + (status & 0x7F))
    }

    mutating func killAll() {
        for child in all where !reaped.contains(child.pid) {
            child.signal(SIGKILL)
            var status: Int32 = 0
            _ = waitpid(child.pid, &status, 0)
            reaped.insert(child.pid)
        }
    }
}

enum BenchKillSignal: String, ExpressibleByArgument, CaseIterable {
    case kill = "KILL", stop = "STOP"
    var number: Int32 { self == .kill ? SIGKILL : SIGSTOP }
}

// MARK: - worker

struct BenchWorker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "A bench worker: echoes the request, or replies --reply-size bytes carrying the request's first 16."
    )

    @OptionGroup var peer: PeerOptions
    @OptionGroup var shape: BenchShape

    @Option(help: "Fragments held at once (the broker caps it at weight × base window).")
    var credit: Int = 100

    func validate() throws {
        try OptionCheck.integer(credit, option: "--credit", 1...65_536)
    }

    func run() async throws {
        let (brokers, keyPair, logger) = try peer.load()
        var options = Worker.Options()
        options.credit = credit
        options.maxFragmentSize = shape.maxFragment
        options.connection = peer.connectionOptions(waitForBroker: true)
        let worker: Worker
        do {
            worker = try await Worker.connect(to: brokers, keyPair: keyPair, service: shape.service,
                                              options: options, logger: logger)
        } catch {
            fail(error.message)
        }
        let replySize = shape.replySize
        let stop = Task {
            await waitForTerminationSignal()
            await worker.close()
        }
        do throws(SecureMQError) {
            try await worker.serveInPlace { _, body in
                guard replySize > 0 else { return Array(body) }
                var reply = [UInt8](repeating: 0, count: replySize)
                let carried = Swift.min(16, body.count)
                reply.withUnsafeMutableBytes { out in
                    out.copyMemory(from: UnsafeRawBufferPointer(rebasing: body[0..<carried]))
                }
                return reply
            }
        } catch {
            if error.code != .closed { fail(error.message) }
        }
        stop.cancel()
    }
}

// MARK: - client

/// One lane's (task's) measurements: no sharing, no locks on the hot path.
struct BenchLane: Sendable {
    var total = 0
    var measured = 0
    var errors = 0
    var first: UInt64 = .max
    var last: UInt64 = 0
    var latencies: [UInt64] = []
    var lastError = ""
    /// With `--kill-mark` (request mode): every request's (sent, answered), to measure failover with.
    var spans: [(from: UInt64, to: UInt64)] = []
}

final class SharedCounter: Sendable {
    let value = Atomic<Int>(0)
    /// Claims one more request; false once `limit` have been claimed.
    func claim(limit: Int) -> Bool { value.add(1, ordering: .relaxed).newValue <= limit }
}

struct BenchClient: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client",
        abstract: "A bench client: keeps --inflight requests going and prints one rr-style result line on stdout."
    )

    @OptionGroup var peer: PeerOptions
    @OptionGroup var shape: BenchShape

    @Option(help: "This client's number in the result line.")
    var index: Int = 0

    @Option(help: "Heartbeat interval in milliseconds (default: the library's).")
    var heartbeatMs: Int?

    @Option(help: "A file where the orchestrator writes when it killed a broker (CLOCK_MONOTONIC ns): read at the end to print failover_us.")
    var killMark: String?

    private var trackSpans: Bool { killMark != nil }

    /// From the kill to the answer of the last request outstanding at it: the ones the killed
    /// broker held are answered only once moved to another (an upper bound: requests at the
    /// live brokers end within their usual latency). Microseconds; -1 without a kill.
    private func failoverMicroseconds(_ lanes: [BenchLane], mark: String) -> Double {
        guard let text = try? String(contentsOfFile: mark, encoding: .utf8),
              let kill = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { return -1 }
        let spans = lanes.lazy.flatMap(\.spans)
        guard let end = spans.filter({ $0.from <= kill && $0.to > kill }).map(\.to).max() else { return -1 }
        return Double(end - kill) / 1e3
    }

    func validate() throws {
        try OptionCheck.integer(index, option: "--index", 0...1_000_000)
        if let heartbeatMs { try OptionCheck.integer(heartbeatMs, option: "--heartbeat-ms", 100...60_000) }  // §4.1
    }

    @Option(help: "Job mode: the payload file (count × size bytes; with --seconds the job is cancelled when time is up).")
    var payload: String?

    func run() async throws {
        let (brokers, keyPair, logger) = try peer.load()
        var options = Client.Options()
        options.maxFragmentSize = shape.maxFragment
        options.connection = peer.connectionOptions()
        if let heartbeatMs { options.heartbeatInterval = .milliseconds(heartbeatMs) }
        if shape.clientMode == .job {
            options.fragmentSize = shape.size
            options.window = shape.inflight
        }
        let client: Client
        do {
            client = try await Client.connect(to: brokers, keyPair: keyPair, options: options, logger: logger)
        } catch {
            fail(error.message)
        }
        let before = CPUStat.read()
        let start = SocketClock.now()
        let executor: (any TaskExecutor)? = shape.clientExecutor == .socket ? client.executor : nil
        let lanes: [BenchLane] = await withTaskExecutorPreference(executor) {
            switch shape.clientMode {
            case .request: return await runRequests(client, start: start)
            case .job: return [await runJob(client, start: start)]
            }
        }
        let after = CPUStat.read()
        await client.close()

        var latencies = lanes.flatMap(\.latencies)
        latencies.sort()
        let total = lanes.reduce(0) { $0 + $1.total }
        let measured = lanes.reduce(0) { $0 + $1.measured }
        let errors = lanes.reduce(0) { $0 + $1.errors }
        let first = lanes.map(\.first).min() ?? 0
        let last = lanes.map(\.last).max() ?? 0
        // As rr: the measured window, or in count mode everything from the start.
        var window = last > first ? Double(last - first) / 1e9 : 0
        if shape.count > 0 && last > start { window = Double(last - start) / 1e9 }
        if errors > 0, let sample = lanes.first(where: { $0.errors > 0 })?.lastError {
            FileHandle.standardError.write(Data("client \(index): \(errors) failed requests, e.g. \(sample)\n".utf8))
        }
        func p(_ q: Double) -> String { String(format: "%.1f", Double(percentile(latencies, q)) / 1e3) }
        let failover = killMark.map { failoverMicroseconds(lanes, mark: $0) } ?? -1
        print("C \(index) total=\(total) window_n=\(measured) window_s=\(String(format: "%.4f", window)) p50_us=\(p(50)) p90_us=\(p(90)) p99_us=\(p(99)) p999_us=\(p(99.9)) max_us=\(String(format: "%.1f", Double(latencies.last ?? 0) / 1e3)) busy=\(String(format: "%.0f", CPUStat.busyPercent(before, after))) errors=\(errors)\(killMark != nil ? " failover_us=\(String(format: "%.1f", failover))" : "")")
        flushStandardOutput()
        if errors > 0 && measured == 0 { throw ExitCode(3) }
    }

    /// `--inflight` tasks, each looping `Client.request`; latency is measured around the call.
    private func runRequests(_ client: Client, start: UInt64) async -> [BenchLane] {
        let measureFrom = shape.count > 0 ? start : start + UInt64(shape.warmup * 1e9)
        let stopAt = measureFrom + UInt64(shape.seconds * 1e9)
        let claimed = SharedCounter()
        let (count, size, service) = (shape.count, shape.size, shape.service)
        let trackSpans = trackSpans
        return await withTaskGroup(of: BenchLane.self) { group in
            for lane in 0..<shape.inflight {
                group.addTask {
                    var state = BenchLane()
                    state.latencies.reserveCapacity(1 << 16)
                    var body = [UInt8](repeating: 0, count: size)
                    var sequence = UInt64(lane) << 40
                    while true {
                        if count > 0 {
                            guard claimed.claim(limit: count) else { break }
                        } else if SocketClock.now() >= stopAt {
                            break
                        }
                        let sent = SocketClock.now()
                        body.withUnsafeMutableBytes { raw in
                            raw.storeBytes(of: sent, toByteOffset: 0, as: UInt64.self)
                            raw.storeBytes(of: sequence, toByteOffset: 8, as: UInt64.self)
                        }
                        sequence += 1
                        do {
                            _ = try await client.request(body, service: service)
                        } catch {
                            state.errors += 1
                            state.lastError = describe(error)
                            if state.errors > 1000 { break }
                            continue
                        }
                        let now = SocketClock.now()
                        if trackSpans { state.spans.append((sent, now)) }
                        state.total += 1
                        if now >= measureFrom {
                            state.measured += 1
                            state.first = Swift.min(state.first, now)
                            state.last = now
                            state.latencies.append(now - sent)
                        }
                    }
                    return state
                }
            }
            var lanes: [BenchLane] = []
            for await lane in group { lanes.append(lane) }
            return lanes
        }
    }

    /// One job over the payload file the orchestrator wrote (in the page cache, so reading a
    /// fragment costs one copy, as the C client's zmq_send copies its buffer). Not a sparse file:
    /// ext4 zero-fills the page cache for holes on every read, which was half this client's CPU.
    /// Latency of fragment j ≈ its hand-over time minus the hand-over of fragment j − window, the
    /// moment the library sent j (the window counts fragments not yet handed to the caller).
    private func runJob(_ client: Client, start: UInt64) async -> BenchLane {
        var state = BenchLane()
        guard let path = payload else { fail("job mode needs --payload FILE (smq bench run writes one)") }
        let fragments = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int).flatMap { $0 }.map { $0 / shape.size } ?? 0
        guard fragments >= 1 else { fail("the payload \(path) is missing or shorter than one request") }
        let measureFrom = shape.count > 0 ? start : start + UInt64(shape.warmup * 1e9)
        let stopAt = measureFrom + UInt64(shape.seconds * 1e9)
        var handed: [UInt64] = []
        handed.reserveCapacity(Swift.min(fragments, 1 << 22))
        let window = shape.inflight
        let job: Job
        do { job = try await client.submit(.file(path), to: shape.service) } catch {
            state.errors += 1
            state.lastError = error.message
            return state
        }
        do {
            for try await _ in job {
                let now = SocketClock.now()
                let j = handed.count
                handed.append(now)
                state.total += 1
                if now >= measureFrom {
                    state.measured += 1
                    state.first = Swift.min(state.first, now)
                    state.last = now
                    state.latencies.append(now - (j >= window ? handed[j - window] : start))
                }
                if shape.count == 0 && now >= stopAt {
                    await job.cancel()
                    break
                }
            }
        } catch {
            state.errors += 1
            state.lastError = error.message
        }
        return state
    }
}

enum SocketClock {
    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }
}

/// rr's percentile of a sorted array.
func percentile(_ sorted: [UInt64], _ p: Double) -> UInt64 {
    guard !sorted.isEmpty else { return 0 }
    let index = Swift.min(sorted.count - 1, Int(p / 100 * Double(sorted.count - 1) + 0.5))
    return sorted[index]
}

/// Machine-wide busy time from /proc/stat, as the C reference reports it (percent of one core).
struct CPUStat {
    var busy: UInt64 = 0
    var total: UInt64 = 0

    static func read() -> CPUStat {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
              let line = text.split(separator: "\n").first, line.hasPrefix("cpu ") else { return CPUStat() }
        let values = line.split(separator: " ").dropFirst().prefix(8).compactMap { UInt64($0) }
        guard values.count >= 5 else { return CPUStat() }
        let total = values.reduce(0, +)
        return CPUStat(busy: total - values[3] - values[4], total: total)
    }

    static func busyPercent(_ a: CPUStat, _ b: CPUStat) -> Double {
        let total = Double(b.total &- a.total)
        guard total > 0 else { return 0 }
        return 100 * Double(b.busy &- a.busy) / total * Double(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    }
}
