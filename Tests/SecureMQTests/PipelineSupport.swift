import Testing
import Logging
import InMemoryLogging
@testable import SecureMQ

/// A broker, its keys and allowlist, embedded in the test process on a context of its own,
/// with helpers to add workers and clients as real CURVE peers on 127.0.0.1.
final class PipelineFixture: @unchecked Sendable {
    let context = SecureContext()
    let brokerKeys = KeyPair.generate()
    let broker: Broker
    let allowlist: Allowlist
    let logs: InMemoryLogHandler
    /// Each worker's serving task, and whether the test expects it to end with an error (a
    /// revoked or refused worker): any other error fails the test in ``stop()``.
    private var workerTasks: [(name: String, expectsError: Bool, task: Task<Void, any Error>)] = []
    private(set) var workers: [Worker] = []

    struct Peer {
        let keys: KeyPair
        let role: String?
        let weight: Int
        let name: String
    }

    let peers: [Peer]

    /// - Parameter peers: (name, role, weight) for every key on the allowlist.
    init(peers specs: [(String, String?, Int)], configure: (inout BrokerConfiguration) -> Void = { _ in }) async throws {
        peers = specs.map { Peer(keys: KeyPair.generate(), role: $0.1, weight: $0.2, name: $0.0) }
        allowlist = Allowlist(entries: try peers.map { peer in
            var metadata: [(String, String)] = [("name", peer.name), ("weight", "\(peer.weight)")]
            if let role = peer.role { metadata.append(("role", role)) }
            return try AllowlistEntry(certificate: Certificate(publicKey: peer.keys.publicKey, metadata: CertificateMetadata(validating: metadata)))
        })
        var configuration = BrokerConfiguration()
        configuration.endpoints = ["tcp://127.0.0.1:*"]
        configure(&configuration)
        let (logger, logs) = capturingLogger("broker")
        self.logs = logs
        broker = try await Broker.start(keyPair: brokerKeys, allowlist: allowlist, configuration: configuration,
                                        context: context, logger: logger)
    }

    var endpoint: String { broker.endpoints[0] }

    func keys(_ name: String) -> KeyPair { peers.first { $0.name == name }!.keys }

    /// Starts a worker that runs `handler` until the fixture stops.
    /// - Parameter expectsError: the test expects this worker's `run` to throw (it is revoked,
    ///   refused or sent away); otherwise an error it throws fails the test when the fixture stops.
    @discardableResult
    func startWorker(_ name: String, service: String = "echo", credit: Int = 8, expectsError: Bool = false,
                     handler: @escaping @Sendable (WorkItem) async throws -> [UInt8] = { $0.body },
                     configure: (inout Worker.Options) -> Void = { _ in }) async throws -> Worker {
        var options = Worker.Options()
        options.credit = credit
        configure(&options)
        let worker = try await Worker.connect(to: endpoint, brokerKey: brokerKeys.publicKey, keyPair: keys(name),
                                              service: service, options: options, context: context)
        workers.append(worker)
        workerTasks.append((name, expectsError, Task { try await worker.run(handler) }))
        return worker
    }

    func client(_ name: String, configure: (inout Client.Options) -> Void = { _ in }) async throws -> Client {
        var options = Client.Options()
        configure(&options)
        return try await Client.connect(to: endpoint, brokerKey: brokerKeys.publicKey, keyPair: keys(name),
                                        options: options, context: context)
    }

    /// Waits (bounded) until `count` worker keys serve `service` at the broker.
    func waitForWorkers(_ count: Int, service: String = "echo", using client: Client) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            let reply = try await client.request(Array(service.utf8), service: "mmi.workers")
            if Int(String(decoding: reply, as: UTF8.self)) ?? 0 >= count { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw SecureMQError(.timedOut, "workers did not register")
    }

    /// Closes every worker and waits for its serving task: an error a worker's `run` threw that
    /// the test did not expect fails the test (a worker that fell over must not go unseen).
    /// - Parameter brokerGone: the broker has already shut down (a drain test). Its DISCONNECT
    ///   sends the workers to connect anew (C31), and the port may by then belong to another
    ///   test's broker, whose ZAP refuses them: that refusal is not this test's business.
    func stopWorkers(brokerGone: Bool = false) async {
        for worker in workers { await worker.close() }
        for entry in workerTasks {
            do {
                try await entry.task.value
            } catch where entry.expectsError {
                // The test said this worker ends with an error, and checks which itself.
            } catch let error as SecureMQError where brokerGone && error.code == .rejectedByServer {
                // Reconnected to a port another test's broker took over (see above).
            } catch {
                Issue.record("worker \(entry.name) failed: \(error)")
            }
        }
        workerTasks.removeAll()
    }

    func stop() async {
        await stopWorkers()
        await broker.shutdown()
    }
}

/// Byte-for-byte equality as a Bool: a failed `#expect(a == b)` on megabytes makes Swift Testing
/// compute a diff that does not finish, so large payloads are compared first and reported short.
func same(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    if a == b { return true }
    let at = zip(a, b).enumerated().first { $0.element.0 != $0.element.1 }?.offset
    Issue.record("payloads differ: \(a.count) vs \(b.count) bytes, first difference at \(at.map(String.init) ?? "the end")")
    return false
}

/// Deterministic bytes for payloads.
func patternBytes(_ count: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    var state = seed
    bytes.withUnsafeMutableBytes { raw in
        var offset = 0
        while offset < raw.count {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            withUnsafeBytes(of: state) { word in
                let n = min(8, raw.count - offset)
                raw.baseAddress!.advanced(by: offset).copyMemory(from: word.baseAddress!, byteCount: n)
            }
            offset += 8
        }
    }
    return bytes
}
