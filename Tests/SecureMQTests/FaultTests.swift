import Testing
import Glibc
import Synchronization
@testable import SecureMQ

/// Faults inside one process: workers leaving, poison fragments, revocation, draining.
/// (The same faults with killed and stopped processes are in CLITests.)
@Suite(.timeLimit(.minutes(2)))
struct FaultTests {
    @Test func workerLeavingMidJobHasItsFragmentsRequeued() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("w1", "worker", 1), ("w2", "worker", 1)])
        let taken = SharedCounter()
        // w1 never finishes a fragment: whatever it takes it still holds when it leaves, so the
        // job can only complete through the requeue, however loaded the machine. (A handler
        // that slept 300 ms and a close after 20 results let a loaded full run close w1 while it
        // held nothing.)
        let (gate, open) = AsyncStream<Void>.makeStream()
        let leaving = try await fixture.startWorker("w1", credit: 8, handler: { item in
            taken.increment()
            for await _ in gate {}
            return item.body
        })
        try await fixture.startWorker("w2", credit: 8)
        let client = try await fixture.client("client-1") { $0.fragmentSize = 1024; $0.window = 64 }
        try await fixture.waitForWorkers(2, using: client)
        let payload = patternBytes(1024 * 400)
        let job = try await client.submit(.bytes(payload), to: "echo")
        try await waitFor("w1 holds work") { taken.value >= 1 }
        await leaving.close()
        open.finish()  // its handlers end now, their results have nowhere to go
        var gathered: [UInt8] = []
        var indexes: [Int] = []
        for try await result in job {
            indexes.append(result.index)
            gathered.append(contentsOf: result.body)
        }
        #expect(same(gathered, payload))
        #expect(indexes == Array(0..<400))
        let statistics = await fixture.broker.statistics()
        #expect(statistics.requeued >= 1)
        await client.close()
        await fixture.stop()
    }

    @Test func poisonFragmentFailsItsJobWith504AndAnotherJobCompletes() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("w1", "worker", 1), ("w2", "worker", 1)]) {
            $0.maxDeliveries = 3
        }
        // The poison is in the content, as in real life: this handler fails on it every time.
        let marker = Array("POISON".utf8)
        let handler: @Sendable (WorkItem) async throws -> [UInt8] = { item in
            if item.body.starts(with: marker) {
                throw WorkRejection(code: 500, retryable: true, reason: "handler crashed on this input")
            }
            return item.body
        }
        try await fixture.startWorker("w1", handler: handler)
        try await fixture.startWorker("w2", handler: handler)
        let client = try await fixture.client("client-1") { $0.fragmentSize = 100 }
        var poison = patternBytes(1000)
        poison.replaceSubrange(200..<206, with: marker)
        let poisoned = try await client.submit(.bytes(poison), to: "echo")
        let healthy = try await client.submit(.bytes(patternBytes(5000, seed: 7)), to: "echo")
        let error = await #expect(throws: SecureMQError.self) { _ = try await poisoned.collect() }
        #expect(error?.status == 504)
        #expect(error?.fragmentIndex == 2)
        #expect(same(try await healthy.collect(), patternBytes(5000, seed: 7)))
        await client.close()
        await fixture.stop()
    }

    @Test func revokedWorkerIsCutOffAndTheJobCompletesOnTheOthers() async throws {
        let directory = "/tmp/smq-revoke-\(UInt64.random(in: 0...UInt64.max))"
        mkdir(directory, 0o755)
        defer { _ = try? removeTree(directory) }
        let brokerKeys = KeyPair.generate()
        let names = ["client-1", "w1", "w2"]
        var keys: [String: KeyPair] = [:]
        for name in names {
            let pair = KeyPair.generate()
            keys[name] = pair
            let role = name.hasPrefix("w") ? "worker" : "client"
            try Certificate(publicKey: pair.publicKey, metadata: CertificateMetadata(validating: [("name", name), ("role", role)]))
                .save(directory: directory, name: name)
        }
        let context = SecureContext()
        let (logger, logs) = capturingLogger("broker")
        let allowlist = try Allowlist(directory: directory, logger: logger)
        var configuration = BrokerConfiguration()
        configuration.endpoints = ["tcp://127.0.0.1:*"]
        configuration.allowlistCheckInterval = .milliseconds(50)
        let broker = try await Broker.start(keyPair: brokerKeys, allowlist: allowlist, configuration: configuration,
                                            context: context, logger: logger)
        let endpoint = broker.endpoints[0]
        let afterRevocation = SharedCounter()
        let revoked = SharedFlag()
        var tasks: [Task<Void, any Error>] = []
        var workers: [Worker] = []
        for name in ["w1", "w2"] {
            let worker = try await Worker.connect(to: endpoint, brokerKey: brokerKeys.publicKey, keyPair: keys[name]!,
                                                  service: "echo", context: context)
            workers.append(worker)
            let isW1 = name == "w1"
            tasks.append(Task {
                try await worker.run { item in
                    if isW1 && revoked.value { afterRevocation.increment() }
                    try await Task.sleep(for: .milliseconds(2))
                    return item.body
                }
            })
        }
        let client = try await Client.connect(to: endpoint, brokerKey: brokerKeys.publicKey, keyPair: keys["client-1"]!,
                                              options: { var o = Client.Options(); o.fragmentSize = 512; return o }(), context: context)
        let payload = patternBytes(512 * 600)
        let job = try await client.submit(.bytes(payload), to: "echo")
        var gathered: [UInt8] = []
        var seen = 0
        for try await result in job {
            gathered.append(contentsOf: result.body)
            seen += 1
            if seen == 50 {
                unlink(directory + "/w1.key")
                // Wait until the broker has applied it (its content check runs every 50 ms).
                try await waitFor("revocation") { await broker.statistics().revocations == 1 }
                revoked.set()
            }
        }
        #expect(same(gathered, payload))
        // w1 may finish what it already held, but gets nothing new.
        #expect(afterRevocation.value <= 32)
        let w1Result = await #expect(throws: SecureMQError.self) { try await tasks[0].value }
        // Sent away, it connects again to register anew, and ZAP refuses the revoked key.
        #expect(w1Result?.code == .rejectedByServer)
        #expect(logs.contains("key revoked", where: "name", is: "w1"))
        let summary = await job.summary()
        #expect(summary.duplicates == 0)
        await client.close()
        for worker in workers { await worker.close() }
        try await tasks[1].value  // w2 was never revoked: an error of its own fails the test
        await broker.shutdown()
    }

    @Test func drainingBrokerAnswers503ToNewJobs() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("client-2", "client", 1), ("w1", "worker", 1)]) {
            $0.drainTimeout = .seconds(20)
        }
        // The worker holds the in-flight fragment until the new job has been refused, so the drain
        // is still on when the new job arrives, whatever the machine's load.
        let (gate, open) = AsyncStream<Void>.makeStream()
        try await fixture.startWorker("w1") { item in
            for await _ in gate { break }
            return item.body
        }
        let client = try await fixture.client("client-1")
        try await fixture.waitForWorkers(1, using: client)
        let inFlight = try await client.submit(.bytes([1, 2, 3]), to: "echo")
        try await waitFor("dispatch") { await fixture.broker.statistics().dispatched >= 1 }
        // Connected before the drain: a new job of a client the broker already knows.
        let other = try await fixture.client("client-2")
        #expect(try await other.request(Array("echo".utf8), service: "mmi.service") == Array("200".utf8))
        let shutdown = Task { await fixture.broker.shutdown() }
        try await waitFor("draining") { await fixture.broker.isDraining }
        let newJob = try await other.submit(.bytes(patternBytes(3000)), to: "echo")
        let refusal = await #expect(throws: SecureMQError.self) { _ = try await newJob.collect() }
        #expect(refusal?.status == 503, "\(String(describing: refusal))")
        // Refused at once: nothing of it was queued or dispatched.
        #expect(await fixture.broker.statistics().dispatched == 1)
        // …and the in-flight fragment still completes while the broker drains.
        open.yield()
        open.finish()
        #expect(try await inFlight.collect() == [1, 2, 3])
        await shutdown.value
        await client.close()
        await other.close()
        await fixture.stopWorkers(brokerGone: true)
    }

    @Test func drainRefusesNewSubmits() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("w1", "worker", 1)]) {
            $0.drainTimeout = .seconds(5)
        }
        // The worker holds the first fragment until the test has seen the late one refused, so
        // the drain cannot finish early whatever the machine's load.
        let (gate, open) = AsyncStream<Void>.makeStream()
        try await fixture.startWorker("w1") { item in
            for await _ in gate { break }
            return item.body
        }
        let client = try await fixture.client("client-1")
        try await fixture.waitForWorkers(1, using: client)
        let first = try await client.submit(.bytes([1]), to: "echo")
        try await waitFor("dispatch") { await fixture.broker.statistics().dispatched >= 1 }
        let shutdown = Task { await fixture.broker.shutdown() }
        try await waitFor("draining") { await fixture.broker.isDraining }
        let late = try await client.submit(.bytes([2]), to: "echo")
        let error = await #expect(throws: SecureMQError.self) { _ = try await late.collect() }
        #expect(error?.status == 503)
        open.yield()
        open.finish()
        #expect(try await first.collect() == [1])
        await shutdown.value
        await client.close()
        await fixture.stopWorkers(brokerGone: true)
    }
}

final class SharedCounter: Sendable {
    private let count = Atomic<Int>(0)
    func increment() { _ = count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}

final class SharedFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .relaxed) }
    var value: Bool { flag.load(ordering: .relaxed) }
}
