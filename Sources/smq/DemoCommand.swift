import ArgumentParser
import Foundation
import SecureMQ

/// The main job, as a new user meets it: keys made, a broker and three weighted workers started
/// as real processes on loopback, a payload submitted, gathered and checked, figures printed.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the whole pipeline on loopback: keys, broker, 3 workers (weights 1, 2, 4), a checked job."
    )

    @Option(help: "Payload size, at most 16G. Suffixes K, M, G.")
    var size: String = "64M"

    @Option(help: "Fragment size. Suffixes K, M.")
    var fragmentSize: String = "256K"

    @Option(help: "Fragments outstanding at once.")
    var window: Int = 32

    @Option(help: "Milliseconds each worker sleeps per fragment (0: as fast as they go).")
    var delayMs: Int = 0

    @Option(help: "Directory for the demo's keys and logs (default: a new temporary one, removed afterwards).")
    var workdir: String?

    func validate() throws {
        let payload = try OptionCheck.size(size, option: "--size", 1...(16 << 30))
        let fragment = try OptionCheck.size(fragmentSize, option: "--fragment-size", 1...OptionCheck.maxFragment)
        guard payload / fragment < Int(UInt32.max) else { throw ValidationError("--size / --fragment-size must be under 2^32 fragments: use larger fragments") }
        try OptionCheck.integer(window, option: "--window", 1...65_536)
        try OptionCheck.integer(delayMs, option: "--delay-ms", 0...3_600_000)
    }

    func run() async throws {
        let payloadSize = try ByteSize.parse(size, option: "--size")
        let fragment = try ByteSize.parse(fragmentSize, option: "--fragment-size")
        let fm = FileManager.default
        let dir = workdir ?? fm.temporaryDirectory.appendingPathComponent("smq-demo-\(getpid())").path
        try fm.createDirectory(atPath: dir + "/certs/allowed", withIntermediateDirectories: true)
        let removeDir = workdir == nil
        let children = ChildList()
        // Ctrl-C, SIGTERM, a failure or the normal end: the broker and workers stop and the
        // keys go, whichever comes first.
        Cleanup.register {
            children.stopAll()
            if removeDir { try? FileManager.default.removeItem(atPath: dir) }
        }
        Cleanup.onTerminationSignals()
        defer { Cleanup.runAll() }

        // 1. Keys: the broker's pair, three workers with weights 1, 2, 4, one client.
        say("1. keys in \(dir)/certs")
        let certs = dir + "/certs"
        let brokerKeys = KeyPair.generate()
        try Certificate(keyPair: brokerKeys, metadata: CertificateMetadata([("name", "broker")])).save(directory: certs, name: "broker")
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

        // 2. The broker and the workers, as separate processes.
        let port = try freeLoopbackPort()
        let endpoint = "tcp://127.0.0.1:\(port)"
        let binDir = URL(fileURLWithPath: try executablePath()).deletingLastPathComponent()
        say("2. secure-broker on \(endpoint), weighted dispatch")
        let brokerLog = dir + "/broker.log"
        children.add(try spawn(binDir.appendingPathComponent("secure-broker"), [
            "--endpoint", endpoint, "--cert", certs + "/broker.key_secret", "--allowlist", certs + "/allowed",
        ], log: brokerLog))
        for number in 1...weights.count {
            say("   worker-\(number) (weight \(weights[number - 1])) joins service sha256")
            var arguments = ["worker", "--broker", endpoint, "--broker-key", certs + "/broker.key",
                             "--cert", certs + "/worker-\(number).key_secret", "--service", "sha256"]
            if delayMs > 0 { arguments += ["--delay-ms", "\(delayMs)"] }
            children.add(try spawn(binDir.appendingPathComponent("smq"), arguments, log: dir + "/worker-\(number).log"))
        }

        // 3. The payload, and what the results must be, computed here.
        say("3. submitting \(ByteSize.format(payloadSize)) in \(ByteSize.format(fragment)) fragments (window \(window))")
        var generator = SystemRandomNumberGenerator()
        var payload = [UInt8](repeating: 0, count: payloadSize)
        payload.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for index in words.indices { words[index] = generator.next() }
        }
        var options = Client.Options()
        options.fragmentSize = fragment
        options.maxFragmentSize = max(options.maxFragmentSize, fragment)
        options.connection.refusedConnectionLimit = nil  // the broker was just started
        options.window = window
        let client = try await Client.connect(to: endpoint, brokerKey: brokerKeys.publicKey, keyPair: clientKeys, options: options)
        // Wait until all three workers are registered, so the shares show the weights.
        try await waitForWorkers(client: client, count: weights.count, children: children.all)

        let started = ContinuousClock.now
        let job = try await client.submit(.bytes(payload), to: "sha256")
        var mismatches = 0
        var received = 0
        for try await result in job {
            let start = result.index * fragment
            let expected = payload.withUnsafeBytes { SHA256.hash(UnsafeRawBufferPointer(rebasing: $0[start..<min(start + fragment, payload.count)])) }
            if result.body != expected.bytes { mismatches += 1 }
            received += 1
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
        guard mismatches == 0, received == job.fragmentCount else {
            fail("the gathered results do not match the local computation (\(mismatches) mismatched, \(received)/\(job.fragmentCount) received); logs in \(dir)")
        }
        say("OK: every fragment came back, in order, and matches the local SHA-256.")
        let brokerStatus = children.stopAll().first ?? -1
        say("   broker exited with status \(brokerStatus) after SIGTERM")
    }

    private func say(_ line: String) {
        print(line)
        flushStandardOutput()
    }

    /// Asks the broker (mmi.service-style, through the pipeline) until the service answers, and
    /// gives the workers a moment to all register.
    private func waitForWorkers(client: Client, count: Int, children: [Process]) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            for child in children where !child.isRunning {
                fail("a demo process exited early (status \(child.terminationStatus)); see its log")
            }
            let reply = try await client.request(Array("sha256".utf8), service: "mmi.workers")
            if let text = String(bytes: reply, encoding: .utf8), let ready = Int(text), ready >= count { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        fail("the workers did not register within 30 s")
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
