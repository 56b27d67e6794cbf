import Foundation

/// A running `secure-broker` and the endpoint it bound.
struct BrokerProcess: Sendable {
    let child: ChildProcess
    /// `tcp://127.0.0.1:PORT`, the port resolved.
    let endpoint: String
    let port: Int
}

extension ProcessHarness {
    /// Starts `secure-broker` on 127.0.0.1 with `certs`' broker key and allowlist, and waits
    /// until it listens.
    /// - Parameters:
    ///   - port: the port to bind; nil binds `tcp://127.0.0.1:*` and reads the port the broker
    ///     reports (no race with other tests). Pass the old port to restart a broker in its place.
    ///   - arguments: more flags (`--strategy round-robin`, `--drain-timeout 2`, …).
    func startBroker(_ certs: TestCertificates, port: Int? = nil, arguments: [String] = [],
                     name: String = "broker") async throws -> BrokerProcess {
        let requested = "tcp://127.0.0.1:" + (port.map(String.init) ?? "*")
        let child = try start("secure-broker", [
            "--endpoint", requested, "--cert", certs.broker.secretPath, "--allowlist", certs.allowlist, "--log-level", "info",
        ] + arguments, name: name)
        let line = try await child.waitForLine(containing: "listening", "endpoints=")
        // `… endpoints=tcp://127.0.0.1:40123 key=… [secure_broker] listening`
        guard let field = line.split(separator: " ").first(where: { $0.hasPrefix("endpoints=tcp://127.0.0.1:") }),
              let bound = Int(field.split(separator: ":").last ?? "") else {
            throw HarnessError("\(child) listens, but its log names no 127.0.0.1 endpoint: \(line)\n\(child.transcript())")
        }
        return BrokerProcess(child: child, endpoint: "tcp://127.0.0.1:\(bound)", port: bound)
    }

    /// The flags `smq worker` and `smq submit` share: where the broker is and who we are.
    func peerArguments(_ peer: TestPeer, certs: TestCertificates, broker: BrokerProcess) -> [String] {
        ["--broker", broker.endpoint, "--broker-key", certs.broker.publicPath, "--cert", peer.secretPath]
    }

    /// Starts `smq worker` for `peer` and, unless `waitUntilReady` is false, waits until the
    /// broker logs it ready for `service` (the worker's own "ready" line comes before the broker
    /// has registered it).
    func startWorker(_ peer: TestPeer, certs: TestCertificates, broker: BrokerProcess, service: String,
                     arguments: [String] = [], waitUntilReady: Bool = true) async throws -> ChildProcess {
        let parts = ["worker ready", "key=\(peer.fingerprint) ", "service=\(service) "]
        let seen = broker.child.lines(.stderr).filter { line in parts.allSatisfy { line.contains($0) } }.count
        let child = try start("smq", ["worker", "--service", service] + peerArguments(peer, certs: certs, broker: broker) + arguments,
                              name: peer.name)
        if waitUntilReady {
            do {
                try await broker.child.waitForLine(in: .stderr, occurrence: seen + 1, "'worker ready' for \(peer) and \(service)") { line in
                    parts.allSatisfy { line.contains($0) }
                }
            } catch let error as HarnessError {
                throw HarnessError("\(error.description)\n\(child.transcript())")
            }
        }
        return child
    }

    /// Runs `smq submit INPUT` as `peer` and returns how it ended.
    func submit(_ input: String, as peer: TestPeer, certs: TestCertificates, broker: BrokerProcess, service: String,
                arguments: [String] = [], stdin: String? = nil, environment: [String: String] = [:],
                timeout: Duration = ChildProcess.defaultTimeout) async throws -> Finished {
        // No --quiet: it hides the summary the tests read (no progress line without a terminal).
        try await run("smq", ["submit", input, "--service", service] + peerArguments(peer, certs: certs, broker: broker) + arguments,
                      name: "submit-\(peer.name)", stdin: stdin, environment: environment, timeout: timeout)
    }

    /// Writes `bytes` to a file in the scratch directory and returns its path.
    func write(_ bytes: [UInt8], to name: String) throws -> String {
        let path = directory + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }
}

/// Random bytes, quickly (a debug build draws one `UInt64` per 8 bytes).
func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    var bytes = [UInt8](repeating: 0, count: (count + 7) / 8 * 8)
    bytes.withUnsafeMutableBytes { raw in
        let words = raw.bindMemory(to: UInt64.self)
        for index in words.indices { words[index] = generator.next() }
    }
    return Array(bytes.prefix(count))
}

/// Where two byte strings first differ, for a readable failure instead of two megabytes.
func firstDifference(_ a: some Collection<UInt8>, _ b: some Collection<UInt8>) -> String {
    guard a.count == b.count else { return "sizes differ: \(a.count) vs \(b.count) bytes" }
    guard let index = zip(a, b).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset else { return "equal" }
    return "first difference at byte \(index)"
}

/// The hostile and probing peers of `scripts/abuse` (pyzmq, CURVE, SMQ/1 bytes built by hand).
enum AbusePeers {
    /// The package root: three levels above this file (Tests/CLITests/ProcessHarness+SecureMQ.swift).
    static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// A Python with pyzmq: `SMQ_PYTHON` (scripts/test sets it), else the package's `.venv`.
    /// - Throws: naming what to run when there is none: a test that needs it never passes silently.
    static func python() throws -> String {
        let candidates = [ProcessInfo.processInfo.environment["SMQ_PYTHON"], packageRoot + "/.venv/bin/python"]
            .compactMap { $0 }.filter { !$0.isEmpty }
        guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw HarnessError("no Python with pyzmq (tried \(candidates)): run scripts/ensure-deps --test, or set SMQ_PYTHON")
        }
        return found
    }

    static func script(_ name: String) -> String { packageRoot + "/scripts/abuse/" + name }
}

extension ProcessHarness {
    /// Starts `scripts/abuse/SCRIPT` as `peer` against `broker`; it stops by itself after `duration`.
    func startAbuse(_ script: String, as peer: TestPeer, certs: TestCertificates, broker: BrokerProcess,
                    duration: Double, arguments: [String] = [], name: String? = nil) throws -> ChildProcess {
        try start(executable: try AbusePeers.python(),
                  ["-u", AbusePeers.script(script)] + peerArguments(peer, certs: certs, broker: broker)
                  + ["--duration", "\(duration)"] + arguments,
                  name: name ?? (script.replacingOccurrences(of: ".py", with: "") + "-" + peer.name))
    }

    /// Runs `scripts/abuse/SCRIPT` to its end and returns the JSON object it printed last.
    /// - Throws: when it does not end within `duration` + `grace`, fails, or prints no JSON.
    func runAbuse(_ script: String, as peer: TestPeer, certs: TestCertificates, broker: BrokerProcess,
                  duration: Double, arguments: [String] = [], grace: Duration = .seconds(30)) async throws -> AbuseReport {
        let child = try startAbuse(script, as: peer, certs: certs, broker: broker, duration: duration, arguments: arguments)
        return try await AbuseReport(child, timeout: .milliseconds(Int(duration * 1000)) + grace)
    }
}

/// The one JSON line a peer of `scripts/abuse` prints when it ends.
struct AbuseReport: Sendable, CustomStringConvertible {
    let object: [String: any Sendable]
    let transcript: String

    init(_ child: ChildProcess, timeout: Duration) async throws {
        let ended = try await child.waitForExit(timeout: timeout)
        guard ended == .exited(0) else { throw HarnessError("\(child) \(ended)\n\(child.transcript())") }
        guard let line = child.lines(.stdout).last(where: { $0.hasPrefix("{") }),
              let parsed = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw HarnessError("\(child) printed no JSON report\n\(child.transcript())")
        }
        object = parsed.mapValues { Self.sendable($0) }
        transcript = child.transcript()
    }

    private static func sendable(_ value: Any) -> any Sendable {
        switch value {
        case let number as NSNumber: return number.intValue
        case let text as String: return text
        case let dictionary as [String: Any]: return dictionary.mapValues { sendable($0) }
        case let array as [Any]: return array.map { sendable($0) }
        default: return "\(value)"
        }
    }

    /// An integer at a path of keys (`["failed_codes", "410"]`), or nil.
    func int(_ path: String...) -> Int? { value(path) as? Int }
    func string(_ path: String...) -> String? { value(path) as? String }
    func dictionary(_ path: String...) -> [String: any Sendable]? { value(path) as? [String: any Sendable] }
    func array(_ path: String...) -> [any Sendable]? { value(path) as? [any Sendable] }

    private func value(_ path: [String]) -> (any Sendable)? {
        var current: (any Sendable)? = object
        for key in path { current = (current as? [String: any Sendable])?[key] }
        return current
    }

    var description: String { "\(object)\n\(transcript)" }
}

/// Memory and CPU of a running process, from /proc (Linux).
struct ProcStatus: Sendable {
    /// Resident set size now, and its peak over the process's life (VmHWM), in bytes.
    let rss: Int
    let peakRSS: Int

    init?(_ pid: pid_t) {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        func kilobytes(_ field: String) -> Int? {
            text.split(separator: "\n").first { $0.hasPrefix(field + ":") }
                .flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") }
        }
        guard let rss = kilobytes("VmRSS"), let peak = kilobytes("VmHWM") else { return nil }
        self.rss = rss * 1024
        peakRSS = peak * 1024
    }
}
