import Testing
import Glibc
import Synchronization
import Logging
import InMemoryLogging
import SMQProtocol
@testable import SecureMQ

/// Workers that serve several brokers at once (issue 12, PROTOCOL.md C56–C57): in-process
/// brokers on 127.0.0.1, one allowlist for all of them, real CURVE connections.
@Suite(.timeLimit(.minutes(2)))
struct MultiBrokerWorkerTests {
    /// Keys for one worker and one client, allowed by every broker the test starts.
    final class Brokers: @unchecked Sendable {
        let context: SecureContext
        let name: String
        let workerKeys = KeyPair.generate()
        let clientKeys = KeyPair.generate()
        let allowlist: Allowlist
        private(set) var started: [Broker] = []

        init(_ name: String = #function) throws {
            self.name = name
            context = SecureContext(logger: Logger(label: "context \(name)"))
            allowlist = Allowlist(entries: [
                try AllowlistEntry(certificate: Certificate(publicKey: workerKeys.publicKey,
                    metadata: CertificateMetadata(validating: [("name", "w1"), ("role", "worker")]))),
                try AllowlistEntry(certificate: Certificate(publicKey: clientKeys.publicKey,
                    metadata: CertificateMetadata(validating: [("name", "c1"), ("role", "client")]))),
            ])
        }

        /// Starts a broker with `keys` on `endpoint` (a free port by default).
        func start(_ keys: KeyPair = KeyPair.generate(), endpoint: String = "tcp://127.0.0.1:*", allowlist: Allowlist? = nil,
                   configure: (inout BrokerConfiguration) -> Void = { _ in }) async throws -> (Broker, BrokerAddress) {
            var configuration = BrokerConfiguration()
            configuration.endpoints = [endpoint]
            configuration.drainTimeout = .milliseconds(100)
            configure(&configuration)
            // Each broker on a context of its own, as separate broker processes would be.
            let brokerContext = SecureContext(logger: Logger(label: "broker context \(name)"))
            let broker = try await Broker.start(keyPair: keys, allowlist: allowlist ?? self.allowlist, configuration: configuration,
                                                context: brokerContext, logger: Logger(label: "broker") { _ in SwiftLogNoOpLogHandler() })
            started.append(broker)
            return (broker, BrokerAddress(broker.endpoints[0], key: keys.publicKey))
        }

        /// Starts a broker on a port below the kernel's ephemeral range (32768–60999 here), for a
        /// test that stops it and expects the port to stay free: a port another test's broker
        /// bound with `:*` could otherwise be handed out again in between, and the worker would
        /// meet a broker with another key there.
        func startOnSteadyPort(_ keys: KeyPair = KeyPair.generate()) async throws -> (Broker, BrokerAddress) {
            for _ in 0..<50 {
                if let started = try? await start(keys, endpoint: "tcp://127.0.0.1:\(Int.random(in: 20_000..<32_000))") { return started }
            }
            throw SecureMQError(.invalidConfiguration, "no free port found in 20000…31999")
        }

        func client(_ address: BrokerAddress) async throws -> Client {
            var options = Client.Options()
            options.fragmentSize = 64
            return try await Client.connect(to: address.endpoint, brokerKey: address.publicKey, keyPair: clientKeys,
                                            options: options, context: context)
        }

        func worker(_ addresses: [BrokerAddress], credit: Int = 8, logger: Logger = Logger(label: "worker") { _ in SwiftLogNoOpLogHandler() },
                    configure: (inout Worker.Options) -> Void = { _ in }) async throws(SecureMQError) -> Worker {
            var options = Worker.Options()
            options.credit = credit
            options.heartbeatInterval = .milliseconds(200)
            configure(&options)
            return try await Worker.connect(to: addresses, keyPair: workerKeys, service: "echo", options: options,
                                            context: context, logger: logger)
        }

        func stopAll() async {
            for broker in started { await broker.shutdown() }
        }
    }

    /// Every way of serving (async handlers, synchronous ones on the socket thread) takes work
    /// from both brokers.
    @Test(arguments: ["run", "serve", "serveInPlace"])
    func aWorkerGetsWorkFromEveryBroker(_ mode: String) async throws {
        let brokers = try Brokers()
        let (a, addressA) = try await brokers.start()
        let (b, addressB) = try await brokers.start()
        let worker = try await brokers.worker([addressA, addressB])
        let serving = Task {
            switch mode {
            case "run": try await worker.run { $0.body }
            case "serve": try await worker.serve { $0.body }
            default: try await worker.serveInPlace { _, body in Array(body) }
            }
        }
        try await waitFor("both brokers register the worker") {
            let (sa, sb) = (await a.statistics(), await b.statistics())
            return sa.workers == 1 && sb.workers == 1
        }
        #expect(await worker.connectedBrokers() == 2)
        let clientA = try await brokers.client(addressA)
        let clientB = try await brokers.client(addressB)
        let payloadA = patternBytes(64 * 40, seed: 1)
        let payloadB = patternBytes(64 * 40, seed: 2)
        async let resultA = clientA.submit(.bytes(payloadA), to: "echo").collect()
        async let resultB = clientB.submit(.bytes(payloadB), to: "echo").collect()
        #expect(same(try await resultA, payloadA))
        #expect(same(try await resultB, payloadB))
        #expect(await a.statistics().results == 40)
        #expect(await b.statistics().results == 40)
        await clientA.close()
        await clientB.close()
        await worker.close()
        try await serving.value
        await brokers.stopAll()
    }

    @Test func theCreditIsSplitSoTheTotalHeldNeverExceedsIt() async throws {
        let brokers = try Brokers()
        let (a, addressA) = try await brokers.start()
        let (b, addressB) = try await brokers.start()
        let worker = try await brokers.worker([addressA, addressB], credit: 2)
        let gate = Gate()
        let entered = SharedCounter()
        let serving = Task {
            try await worker.run { item in
                entered.increment()
                await gate.wait()
                return item.body
            }
        }
        try await waitFor("both brokers register the worker") {
            let (sa, sb) = (await a.statistics(), await b.statistics())
            return sa.workers == 1 && sb.workers == 1
        }
        let clientA = try await brokers.client(addressA)
        let clientB = try await brokers.client(addressB)
        let payloadA = patternBytes(64 * 10, seed: 3)
        let payloadB = patternBytes(64 * 10, seed: 4)
        let jobA = try await clientA.submit(.bytes(payloadA), to: "echo")
        let jobB = try await clientB.submit(.bytes(payloadB), to: "echo")
        // Each broker was offered 1 of the 2: both hand one fragment out and wait for its answer.
        try await waitFor("one fragment out from each broker") {
            let (sa, sb) = (await a.statistics(), await b.statistics())
            return sa.dispatched == 1 && sb.dispatched == 1 && entered.value == 2
        }
        #expect(await worker.peakHeld() == 2)
        gate.open()
        #expect(same(try await jobA.collect(), payloadA))
        #expect(same(try await jobB.collect(), payloadB))
        #expect(await worker.peakHeld() == 2)
        #expect(entered.value == 20)
        await clientA.close()
        await clientB.close()
        await worker.close()
        try await serving.value
        await brokers.stopAll()
    }

    @Test func aCreditBelowTheBrokerCountIsRefused() async throws {
        let brokers = try Brokers()
        let addresses = (0..<3).map { BrokerAddress("tcp://127.0.0.1:\(1 + $0)", key: KeyPair.generate().publicKey) }
        let error = await #expect(throws: SecureMQError.self) { _ = try await brokers.worker(addresses, credit: 2) }
        #expect(error?.code == .invalidConfiguration)
        #expect(error?.message.contains("cannot be split over 3 brokers") == true, "\(String(describing: error))")
        let none = await #expect(throws: SecureMQError.self) { _ = try await brokers.worker([]) }
        #expect(none?.code == .invalidConfiguration)
    }

    @Test func noBrokerAnsweringNamesEveryBroker() async throws {
        let brokers = try Brokers()
        // Two ports that were just in use and are free now: nothing listens there.
        let (a, addressA) = try await brokers.startOnSteadyPort()
        let (b, addressB) = try await brokers.startOnSteadyPort()
        await a.shutdown()
        await b.shutdown()
        let error = await #expect(throws: SecureMQError.self) {
            _ = try await brokers.worker([addressA, addressB]) { $0.connection.connectTimeout = .milliseconds(500) }
        }
        #expect(error?.code == .unreachable)
        #expect(error?.message.contains(addressA.endpoint) == true && error?.message.contains(addressB.endpoint) == true,
                "\(String(describing: error))")
    }

    @Test func aBrokerDownAtStartIsPickedUpWhenItStarts() async throws {
        let brokers = try Brokers()
        let (a, addressA) = try await brokers.start()
        // B's port and key, with B not running yet.
        let keysB = KeyPair.generate()
        let (early, addressB) = try await brokers.startOnSteadyPort(keysB)
        await early.shutdown()
        let worker = try await brokers.worker([addressA, addressB]) {
            // Refused attempts come fast: many more than the refused-connection limit (3) pass
            // before B starts, and must not end B's link.
            $0.connection.reconnectInterval = .milliseconds(20)
            $0.connection.reconnectIntervalMax = .milliseconds(40)
        }
        let serving = Task { try await worker.run { $0.body } }
        #expect(await worker.connectedBrokers() == 1)
        // A single-broker worker with the same options, started after it, gives up on B's port
        // at the refused-connection limit; by then the two-broker worker has been refused at
        // least as often, and its link to B must still be trying.
        let control = await #expect(throws: SecureMQError.self) {
            var options = Worker.Options()
            options.connection.reconnectInterval = .milliseconds(20)
            options.connection.reconnectIntervalMax = .milliseconds(40)
            _ = try await Worker.connect(to: addressB.endpoint, brokerKey: addressB.publicKey, keyPair: brokers.workerKeys,
                                         service: "echo", options: options, context: brokers.context,
                                         logger: Logger(label: "control") { _ in SwiftLogNoOpLogHandler() })
        }
        #expect(control?.code == .unreachable)
        // A serves meanwhile.
        let clientA = try await brokers.client(addressA)
        let payloadA = patternBytes(64 * 20, seed: 5)
        #expect(same(try await clientA.submit(.bytes(payloadA), to: "echo").collect(), payloadA))
        #expect(a.endpoints == [addressA.endpoint])
        let (b, _) = try await brokers.start(keysB, endpoint: addressB.endpoint)
        try await waitFor("the worker registers with B once it starts") { await b.statistics().workers == 1 }
        let clientB = try await brokers.client(addressB)
        let payloadB = patternBytes(64 * 20, seed: 6)
        #expect(same(try await clientB.submit(.bytes(payloadB), to: "echo").collect(), payloadB))
        #expect(await worker.connectedBrokers() == 2)
        await clientA.close()
        await clientB.close()
        await worker.close()
        try await serving.value
        await brokers.stopAll()
    }

    /// B is stopped while the worker holds one of its fragments and a new B starts on the same
    /// endpoint with the same key: the worker registers with it, drops the old fragment's result
    /// (no stray DONE at the new broker), and A is served all along.
    @Test func aReplacedBrokerGetsTheWorkerAgainAndNoStrayResult() async throws {
        let brokers = try Brokers()
        let (a, addressA) = try await brokers.start()
        let keysB = KeyPair.generate()
        let (oldB, addressB) = try await brokers.startOnSteadyPort(keysB)
        let gate = Gate()
        let held = SharedCounter()
        let hold = Array("HOLD".utf8)
        let worker = try await brokers.worker([addressA, addressB], credit: 4)
        let serving = Task {
            try await worker.run { item in
                if item.body.starts(with: hold) {
                    held.increment()
                    await gate.wait()
                }
                return item.body
            }
        }
        try await waitFor("both brokers register the worker") {
            let (sa, sb) = (await a.statistics(), await oldB.statistics())
            return sa.workers == 1 && sb.workers == 1
        }
        let oldClient = try await brokers.client(addressB)
        var held1 = hold
        held1.append(contentsOf: patternBytes(20))
        let oldJob = try await oldClient.submit(.bytes(held1), to: "echo")
        try await waitFor("the worker holds B's fragment") { held.value == 1 }
        await oldB.shutdown()
        _ = oldJob
        await oldClient.close()

        let clientA = try await brokers.client(addressA)
        let payloadA = patternBytes(64 * 20, seed: 7)
        #expect(same(try await clientA.submit(.bytes(payloadA), to: "echo").collect(), payloadA))

        let (newB, _) = try await brokers.start(keysB, endpoint: addressB.endpoint)
        try await waitFor("the worker registers with the new B") { await newB.statistics().workers == 1 }
        gate.open()
        try await waitFor("the old connection's result is dropped") { await worker.droppedStaleResults() == 1 }
        let clientB = try await brokers.client(addressB)
        let payloadB = patternBytes(64 * 20, seed: 8)
        #expect(same(try await clientB.submit(.bytes(payloadB), to: "echo").collect(), payloadB))
        #expect(await newB.statistics().strayResults == 0)
        #expect(await worker.connectedBrokers() == 2)
        await clientA.close()
        await clientB.close()
        await worker.close()
        try await serving.value
        await brokers.stopAll()
    }
}

extension MultiBrokerWorkerTests {
    /// One broker revokes the worker's key: that link ends for good (the worker logs it as an
    /// error), the other broker goes on being served, and `run` does not end for it.
    @Test func aRevocationEndsOnlyThatBrokersLink() async throws {
        let brokers = try Brokers()
        let directory = "/tmp/smq-multi-revoke-\(UInt64.random(in: 0...UInt64.max))"
        mkdir(directory, 0o755)
        defer { _ = try? removeTree(directory) }
        try Certificate(publicKey: brokers.workerKeys.publicKey, metadata: CertificateMetadata(validating: [("name", "w1"), ("role", "worker")]))
            .save(directory: directory, name: "w1")
        try Certificate(publicKey: brokers.clientKeys.publicKey, metadata: CertificateMetadata(validating: [("name", "c1"), ("role", "client")]))
            .save(directory: directory, name: "c1")
        let revocable = try Allowlist(directory: directory, logger: Logger(label: "allowlist") { _ in SwiftLogNoOpLogHandler() })
        let (a, addressA) = try await brokers.start(allowlist: revocable) { $0.allowlistCheckInterval = .milliseconds(50) }
        let (b, addressB) = try await brokers.start()
        let (logger, logs) = capturingLogger("worker")
        let worker = try await brokers.worker([addressA, addressB], logger: logger)
        let serving = Task { try await worker.run { $0.body } }
        try await waitFor("both brokers register the worker") {
            let (sa, sb) = (await a.statistics(), await b.statistics())
            return sa.workers == 1 && sb.workers == 1
        }
        // Served first, so A's DISCONNECT reads as "reconnect", and ZAP's refusals then as a
        // revocation once `liveness` (3) come in a row.
        let clientA = try await brokers.client(addressA)
        let first = patternBytes(64 * 10, seed: 12)
        #expect(same(try await clientA.submit(.bytes(first), to: "echo").collect(), first))
        await clientA.close()
        unlink(directory + "/w1.key")
        try await waitFor("A revokes the worker") { await a.statistics().revocations == 1 }
        try await waitFor("the worker stops serving A") {
            logs.contains("stopped serving one broker; still serving the others", where: "remaining", is: "1")
        }
        #expect(await worker.connectedBrokers() == 1)
        #expect(logs.contains("a broker that served this worker refused it; asking again", where: "refusals", is: "2"))
        let client = try await brokers.client(addressB)
        let payload = patternBytes(64 * 20, seed: 9)
        #expect(same(try await client.submit(.bytes(payload), to: "echo").collect(), payload))
        await client.close()
        await worker.close()
        // Closed with B still served: run ends without an error, A's refusal was logged.
        try await serving.value
        await brokers.stopAll()
    }
}

extension MultiBrokerWorkerTests {
    /// A broker that served the worker refuses it once and then takes it back (a restart, or a
    /// key revoked and restored in time): the link is asked again and the worker registers anew.
    @Test func aRefusalAfterServiceIsAskedAgain() async throws {
        let brokers = try Brokers()
        let directory = "/tmp/smq-multi-readmit-\(UInt64.random(in: 0...UInt64.max))"
        mkdir(directory, 0o755)
        defer { _ = try? removeTree(directory) }
        let certificate = try Certificate(publicKey: brokers.workerKeys.publicKey,
                                          metadata: CertificateMetadata(validating: [("name", "w1"), ("role", "worker")]))
        try certificate.save(directory: directory, name: "w1")
        try Certificate(publicKey: brokers.clientKeys.publicKey, metadata: CertificateMetadata(validating: [("name", "c1"), ("role", "client")]))
            .save(directory: directory, name: "c1")
        let revocable = try Allowlist(directory: directory, logger: Logger(label: "allowlist") { _ in SwiftLogNoOpLogHandler() })
        let (a, addressA) = try await brokers.start(allowlist: revocable) { $0.allowlistCheckInterval = .milliseconds(50) }
        let (_, addressB) = try await brokers.start()
        let (logger, logs) = capturingLogger("worker")
        // A second between tries, so the key is back well before the third refusal.
        let worker = try await brokers.worker([addressA, addressB], logger: logger) { $0.heartbeatInterval = .seconds(1) }
        let serving = Task { try await worker.run { $0.body } }
        try await waitFor("A registers the worker") { await a.statistics().workers == 1 }
        // Served first: a DISCONNECT before any service is a refusal that ends the link (C31).
        let client = try await brokers.client(addressA)
        let first = patternBytes(64 * 10, seed: 11)
        #expect(same(try await client.submit(.bytes(first), to: "echo").collect(), first))
        unlink(directory + "/w1.key")
        try await waitFor("A refuses the worker once") {
            logs.contains("a broker that served this worker refused it; asking again", where: "refusals", is: "1")
        }
        try certificate.save(directory: directory, name: "w1")
        await a.allowlistChanged()
        try await waitFor("A takes the worker back") {
            let (workers, connected) = (await a.statistics().workers, await worker.connectedBrokers())
            return workers == 1 && connected == 2
        }
        let payload = patternBytes(64 * 10, seed: 10)
        #expect(same(try await client.submit(.bytes(payload), to: "echo").collect(), payload))
        #expect(!logs.contains("stopped serving one broker; still serving the others"))
        await client.close()
        await worker.close()
        try await serving.value
        await brokers.stopAll()
    }
}

extension MultiBrokerWorkerTests {
    /// One broker goes silent (a CURVE server that takes READY and never heartbeats, as a frozen
    /// or cut-off broker looks): after interval × liveness the worker connects to it anew and
    /// registers again, while the real broker beside it goes on being served.
    @Test func aSilentBrokerIsRegisteredWithAgainWhileTheOtherIsServed() async throws {
        let brokers = try Brokers()
        let (_, addressA) = try await brokers.start()
        let silent = try await ServerFixture.make(allowing: [brokers.workerKeys.publicKey])
        let addressSilent = BrokerAddress(silent.endpoint, key: silent.serverKeys.publicKey)
        let worker = try await brokers.worker([addressA, addressSilent], credit: 4)
        let serving = Task { try await worker.run { $0.body } }
        /// The next READY the silent broker receives (the worker's HEARTBEATs are skipped), and
        /// the credit it offers.
        func nextReady() async throws -> (PeerID, UInt32) {
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline {
                let message = try await silent.server.receive(timeout: .seconds(10))
                let credit = try message.body.withUnsafeBytes { bytes throws -> UInt32? in
                    if case .ready(let credit, _, _) = try Message.parse(bytes) { return credit }
                    return nil
                }
                if let credit { return (message.peer, credit) }
            }
            throw SecureMQError(.timedOut, "no READY")
        }
        let (firstPeer, credit) = try await nextReady()
        #expect(credit == 2)
        // The silence (200 ms × 3) ends that connection; a new one registers again.
        let (secondPeer, _) = try await nextReady()
        #expect(secondPeer != firstPeer)
        let client = try await brokers.client(addressA)
        let payload = patternBytes(64 * 20, seed: 13)
        #expect(same(try await client.submit(.bytes(payload), to: "echo").collect(), payload))
        await client.close()
        await worker.close()
        try await serving.value
        await silent.server.close()
        await brokers.stopAll()
    }
}

/// Closed until `open()`: handlers wait on it to hold their fragments.
final class Gate: Sendable {
    private let state = Mutex<(open: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLock { state in
                if state.open { return true }
                state.waiting.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    func open() {
        let waiting = state.withLock { state in
            state.open = true
            defer { state.waiting.removeAll() }
            return state.waiting
        }
        for continuation in waiting { continuation.resume() }
    }
}
