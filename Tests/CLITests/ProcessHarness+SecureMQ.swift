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
        try await run("smq", ["submit", input, "--service", service, "--quiet"] + peerArguments(peer, certs: certs, broker: broker) + arguments,
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
