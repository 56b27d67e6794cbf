import ArgumentParser
import Foundation
import Logging
import SecureMQ
import Synchronization

/// The main job, as a new user meets it: keys made, a broker and three weighted workers started
/// as real processes on loopback, a payload submitted, gathered and checked, figures printed.
/// With `--brokers N` (issue 12): N brokers, workers serving all of them, the client using all
/// of them, and the broker holding the job killed (SIGKILL) mid-job: the job completes through
/// the others and the demo says how long the failover took.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the whole pipeline on loopback: keys, broker, 3 workers (weights 1, 2, 4), a checked job.",
        discussion: """
            --brokers N (2…9) starts N brokers, each with its own key; the workers serve all of them, \
            the client uses all of them, and a quarter of the way through the job the broker holding \
            it is killed with SIGKILL: the job must still complete byte-exact, and the demo prints \
            how long it took from the kill to the first result through another broker.
            """
    )

    @Option(help: "Payload size, at most 16G. Suffixes K, M, G.")
    var size: String = "64M"

    @Option(help: "Fragment size. Suffixes K, M. (default: 256K; 128K with several brokers, so the job has 512 fragments)")
    var fragmentSize: String?

    @Option(help: "Fragments outstanding at once.")
    var window: Int = 32

    @Option(help: "Milliseconds each worker sleeps per fragment (0: as fast as they go).")
    var delayMs: Int = 0

    @Option(help: "Brokers to start (1…9); with 2 or more, one is killed mid-job.")
    var brokers: Int = 1

    @Option(help: "The client's heartbeat interval in milliseconds: a silent broker is given up after 3 of them.")
    var heartbeatMs: Int = 2500

    @Option(help: "Directory for the demo's keys and logs (default: a new temporary one, removed afterwards).")
    var workdir: String?

    private var fragmentText: String { fragmentSize ?? (brokers > 1 ? "128K" : "256K") }

    func validate() throws {
        let payload = try OptionCheck.size(size, option: "--size", 1...(16 << 30))
        let fragment = try OptionCheck.size(fragmentText, option: "--fragment-size", 1...OptionCheck.maxFragment)
        guard payload / fragment < Int(UInt32.max) else { throw ValidationError("--size / --fragment-size must be under 2^32 fragments: use larger fragments") }
        try OptionCheck.integer(window, option: "--window", 1...65_536)
        try OptionCheck.integer(delayMs, option: "--delay-ms", 0...3_600_000)
        try OptionCheck.integer(brokers, option: "--brokers", 1...9)
        try OptionCheck.integer(heartbeatMs, option: "--heartbeat-ms", 100...60_000)  // §4.1
        if brokers > 1 && (payload + fragment - 1) / fragment < 8 {
            throw ValidationError("with --brokers \(brokers) the job needs at least 8 fragments to kill a broker mid-job: raise --size or lower --fragment-size")
        }
    }

    func run() async throws {
        let payloadSize = try ByteSize.parse(size, option: "--size")
        let fragment = try ByteSize.parse(fragmentText, option: "--fragment-size")
        let fm = FileManager.default
        let dir = workdir ?? fm.temporaryDirectory.appendingPathComponent("smq-demo-\(getpid())").path
        try fm.createDirectory(atPath: dir + "/certs/allowed", withIntermediateDirectories: true)
        let removeDir = workdir == nil
        let children = ChildList()
        // Ctrl-C, SIGTERM, a failure or the normal end: the brokers and workers stop and the
        // keys go, whichever comes first.
        Cleanup.register {
            children.stopAll()
            if removeDir { try? FileManager.default.removeItem(atPath: dir) }
        }
        Cleanup.onTerminationSignals()
        defer { Cleanup.runAll() }
        let several = brokers > 1
        // The client's own account of a failover (a broker lost, its fragments moved) is at
        // warning and notice; connection chatter at info is not the demo's story.
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .notice
            return handler
        }

        // 1. Keys: each broker's pair, three workers with weights 1, 2, 4, one client.
        say("1. keys in \(dir)/certs")
        let certs = dir + "/certs"
        var brokerKeys: [KeyPair] = []
        for number in 1...brokers {
            let name = several ? "broker-\(number)" : "broker"
            let keys = KeyPair.generate()
            try Certificate(keyPair: keys, metadata: CertificateMetadata([("name", name)])).save(directory: certs, name: name)
            brokerKeys.append(keys)
        }
        let weights = [1, 2, 4]
        var workerNames: [UInt64: String] = [:]
        for (number, weight) in weights.enumerated() {
            let name = "worker-\(number + 1)"
            let keys = KeyPair.generate()
            let certificate = Certificate(keyPair: keys, metadata: CertificateMetadata([("name", name), ("role", "worker"), ("weight", "\(weight)")]))
            try certificate.save(directory: certs, name: name)
            try Certificate(publicKey: keys.publicKey, metadata: certificate.metadata).save(directory: certs + "/allowed", name: name)
            workerNames[keys.publicKey.tag] = "\(name) (weight \(weight))"
        }
        let clientKeys = KeyPair.generate()
        let clientCert = Certificate(keyPair: clientKeys, metadata: CertificateMetadata([("name", "client-1"), ("role", "client")]))
        try clientCert.save(directory: certs, name: "client-1")
        try Certificate(publicKey: clientKeys.publicKey, metadata: clientCert.metadata).save(directory: certs + "/allowed", name: "client-1")

        // 2. The brokers and the workers, as separate processes.
        let binDir = URL(fileURLWithPath: try executablePath()).deletingLastPathComponent()
        var addresses: [BrokerAddress] = []
        var brokerProcesses: [Process] = []
        var brokerArguments: [String] = []
        for number in 1...brokers {
            let name = several ? "broker-\(number)" : "broker"
            let endpoint = "tcp://127.0.0.1:\(try freeLoopbackPort())"
            if several && number == 1 { say("2. \(brokers) secure-broker processes, each with its own key, weighted dispatch") }
            say(several ? "   \(name) on \(endpoint)" : "2. secure-broker on \(endpoint), weighted dispatch")
            let process = try spawn(binDir.appendingPathComponent("secure-broker"), [
                "--endpoint", endpoint, "--cert", certs + "/\(name).key_secret", "--allowlist", certs + "/allowed",
            ], log: dir + "/\(name).log")
            children.add(process)
            brokerProcesses.append(process)
            addresses.append(BrokerAddress(endpoint, key: brokerKeys[number - 1].publicKey))
            brokerArguments += ["--broker", endpoint, "--broker-key", certs + "/\(name).key"]
        }
        for number in 1...weights.count {
            say("   worker-\(number) (weight \(weights[number - 1])) joins service sha256\(several ? " at all \(brokers) brokers" : "")")
            var arguments = ["worker"] + brokerArguments + ["--cert", certs + "/worker-\(number).key_secret", "--service", "sha256"]
            if delayMs > 0 { arguments += ["--delay-ms", "\(delayMs)"] }
            children.add(try spawn(binDir.appendingPathComponent("smq"), arguments, log: dir + "/worker-\(number).log"))
        }

        // 3. The payload, and what the results must be, computed here.
        say("3. submitting \(ByteSize.format(payloadSize)) in \(ByteSize.format(fragment)) fragments (window \(window))\(several ? " through \(brokers) brokers" : "")")
        var generator = SystemRandomNumberGenerator()
        var payload = [UInt8](repeating: 0, count: payloadSize)
        payload.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for index in words.indices { words[index] = generator.next() }
        }
        var options = Client.Options()
        options.fragmentSize = fragment
        options.maxFragmentSize = max(options.maxFragmentSize, fragment)
        options.connection.refusedConnectionLimit = nil  // the brokers were just started
        options.window = window
        options.heartbeatInterval = .milliseconds(heartbeatMs)
        // Wait until all three workers are registered at every broker, so the shares show the weights.
        for address in addresses {
            try await waitForWorkers(at: address, keyPair: clientKeys, count: weights.count, children: children.all)
        }
        let client = try await Client.connect(to: addresses, keyPair: clientKeys, options: options)

        let started = ContinuousClock.now
        let job = try await client.submit(.bytes(payload), to: "sha256")
        var mismatches = 0
        var received = 0
        // Several brokers: a quarter of the way in, the broker holding the job is killed. Which
        // one holds it (jobs are placed whole, C58) is asked once the first result is in,
        // while the job runs on.
        let killAt = several ? max(2, job.fragmentCount / 4) : -1
        var victim: Task<Int, Never>?
        var killed: (broker: Int, at: ContinuousClock.Instant)?
        // Bounded: a job that stops making progress ends the demo with its logs, not a hang.
        let progress = Atomic<Int>(0)
        let watchdog = Task.detached {
            var seen = -1, quietSince = ContinuousClock.now
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                let now = progress.load(ordering: .relaxed)
                if now != seen { (seen, quietSince) = (now, ContinuousClock.now) }
                if ContinuousClock.now - quietSince > .seconds(60) {
                    fail("no result for 60 s after \(now) results; logs in \(dir)")
                }
            }
        }
        defer { watchdog.cancel() }
        var lastResult = ContinuousClock.now
        var longestGap: (length: Duration, end: ContinuousClock.Instant)?
        for try await result in job {
            let now = ContinuousClock.now
            if killed != nil, now - lastResult > (longestGap?.length ?? .zero) { longestGap = (now - lastResult, now) }
            lastResult = now
            let start = result.index * fragment
            let expected = payload.withUnsafeBytes { SHA256.hash(UnsafeRawBufferPointer(rebasing: $0[start..<min(start + fragment, payload.count)])) }
            if result.body != expected.bytes { mismatches += 1 }
            received += 1
            progress.store(received, ordering: .relaxed)
            if several && received == 1 {
                let (addresses, keys) = (addresses, clientKeys)
                victim = Task { await brokerHoldingTheJob(addresses, keyPair: keys) }
            }
            if received == killAt, let victim {
                let victim = await victim.value  // asked long before, normally: no pause here
                kill(brokerProcesses[victim].processIdentifier, SIGKILL)
                let at = ContinuousClock.now
                killed = (victim, at)
                lastResult = at
                say("   SIGKILL to broker-\(victim + 1) (\(addresses[victim].endpoint)) after \(received) of \(job.fragmentCount) results")
            }
        }
        let elapsed = ContinuousClock.now - started
        let summary = await job.summary()
        await client.close()

        // 4. Figures.
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        say("4. results")
        say("   fragments:      \(received) of \(job.fragmentCount), in order; \(mismatches) mismatched")
        for (tag, count) in summary.perWorker.sorted(by: { $0.value < $1.value }) {
            let share = 100 * Double(count) / Double(max(1, received))
            say("   \(workerNames[tag] ?? WorkerTag.fingerprint(tag)): \(count) fragments (\(String(format: "%.1f", share)) %)")
        }
        say("   throughput:     \(String(format: "%.1f", Double(payloadSize) / 1_048_576 / seconds)) MiB/s (\(String(format: "%.2f", seconds)) s, CURVE on every hop, SHA-256 per fragment at client and worker)")
        say("   payload digest: \(summary.payloadDigest)")
        say("   result digest:  \(summary.resultDigest)")
        say("   busy resends:   \(summary.busyResends)")
        if several {
            say("   resubmitted:    \(summary.resubmitted) (fragments sent again through another broker)")
            say("   duplicates:     \(summary.duplicates) (late answers dropped by the gatherer)")
        }
        guard mismatches == 0, received == job.fragmentCount else {
            fail("the gathered results do not match the local computation (\(mismatches) mismatched, \(received)/\(job.fragmentCount) received); logs in \(dir)")
        }
        say("OK: every fragment came back, in order, and matches the local SHA-256.")
        if let killed {
            if let longestGap, longestGap.end > killed.at {
                let failover = milliseconds(longestGap.end - killed.at)
                say("OK: broker-\(killed.broker + 1) was killed mid-job; the job completed byte-exact through the other \(brokers - 1).")
                say("   failover:       \(String(format: "%.0f", failover)) ms from the SIGKILL to the first result after the stall (client heartbeat \(heartbeatMs) ms × liveness \(options.liveness))")
            } else {
                say("OK: broker-\(killed.broker + 1) was killed mid-job; the job completed byte-exact through the other \(brokers - 1) without a stall.")
            }
        }
        let statuses = children.stopAll()
        if several {
            let shown = (0..<brokers).map { "broker-\($0 + 1) \(statuses[$0] == SIGKILL && killed?.broker == $0 ? "killed" : "\(statuses[$0])")" }
            say("   brokers exited: \(shown.joined(separator: ", ")) (SIGTERM for the live ones)")
        } else {
            say("   broker exited with status \(statuses.first ?? -1) after SIGTERM")
        }
    }

    private func say(_ line: String) {
        print(line)
        flushStandardOutput()
    }

    /// Asks one broker (`mmi.workers`) until the service has `count` workers.
    private func waitForWorkers(at broker: BrokerAddress, keyPair: KeyPair, count: Int, children: [Process]) async throws {
        var options = Client.Options()
        options.connection.refusedConnectionLimit = nil  // the broker was just started
        let client = try await Client.connect(to: broker.endpoint, brokerKey: broker.publicKey, keyPair: keyPair, options: options)
        defer { Task { await client.close() } }
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            for child in children where !child.isRunning {
                fail("a demo process exited early (status \(child.terminationStatus)); see its log")
            }
            let reply = try await client.request(Array("sha256".utf8), service: "mmi.workers")
            if let text = String(bytes: reply, encoding: .utf8), let ready = Int(text), ready >= count {
                await client.close()
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        fail("the workers did not register at \(broker.endpoint) within 30 s")
    }

    /// The broker with the job open (`mmi.status`: the demo's is the only job), asked through a
    /// client of its own; the first broker when none says so.
    private func brokerHoldingTheJob(_ brokers: [BrokerAddress], keyPair: KeyPair) async -> Int {
        let held = await BrokerProbe.each(brokers) { broker -> Int in
            var options = Client.Options()
            options.connection.connectTimeout = .seconds(2)
            guard let client = try? await Client.connect(to: broker.endpoint, brokerKey: broker.publicKey, keyPair: keyPair, options: options) else { return -1 }
            let answer = await StatusQuery.ask(client, service: "mmi.status", body: [], timeout: 2)
            await client.close()
            guard case .success(let body) = answer,
                  let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else { return -1 }
            return ((object["openJobs"] as? Int) ?? 0) * 1_000_000 + ((object["fragmentsHeld"] as? Int) ?? 0)
        }
        return held.indices.max { held[$0] < held[$1] } ?? 0
    }
}

func spawn(_ executable: URL, _ arguments: [String], log: String) throws -> Process {
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    guard FileManager.default.createFile(atPath: log, contents: nil), let handle = FileHandle(forWritingAtPath: log) else {
        fail("cannot write the log file \(log)")
    }
    process.standardOutput = handle
    process.standardError = handle
    try process.run()
    return process
}

func executablePath() throws -> String {
    try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { fail("socket() failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else { fail("cannot find a free port on 127.0.0.1") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// The demo's child processes, stoppable from a signal handler.
final class ChildList: @unchecked Sendable {
    // @unchecked: every access holds the lock.
    private let lock = NSLock()
    private var processes: [Process] = []

    func add(_ process: Process) {
        lock.lock(); defer { lock.unlock() }
        processes.append(process)
    }

    var all: [Process] {
        lock.lock(); defer { lock.unlock() }
        return processes
    }

    /// SIGTERM to each, SIGKILL to any still running 3 s later; returns their exit statuses.
    @discardableResult
    func stopAll() -> [Int32] {
        let list = all
        for child in list where child.isRunning { child.terminate() }
        let deadline = Date().addingTimeInterval(3)
        while list.contains(where: \.isRunning) && Date() < deadline { usleep(10_000) }
        for child in list where child.isRunning { kill(child.processIdentifier, SIGKILL) }
        for child in list { child.waitUntilExit() }
        return list.map(\.terminationStatus)
    }
}
