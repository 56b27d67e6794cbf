import Testing
import Foundation
import CoreMetrics
@testable import SecureMQ

/// Several in-process brokers sharing one allowlist, each with its own key and port, that a test
/// can stop and start again on the same endpoint; one single-broker worker per broker.
///
/// They listen on 127.0.0.58, not 127.0.0.1: a port freed by a stopped broker must still be free
/// when it starts again, and other test runs on this machine bind `127.0.0.1:*`.
final class BrokerSet: @unchecked Sendable {
    let context = SecureContext()
    let clientKeys = KeyPair.generate()
    let workerKeys = KeyPair.generate()
    let allowlist: Allowlist
    let brokerKeys: [KeyPair]
    private(set) var brokers: [Broker?]
    private(set) var endpoints: [String]
    private var workers: [[(worker: Worker, task: Task<Void, any Error>)]]
    /// Fragments each broker's worker handled.
    let handled: [SharedCounter]

    init(count: Int) throws {
        var entries: [AllowlistEntry] = []
        for (name, keys) in [("client", clientKeys), ("worker", workerKeys)] {
            let metadata = try CertificateMetadata(validating: [("name", name), ("role", name)])
            entries.append(try AllowlistEntry(certificate: Certificate(publicKey: keys.publicKey, metadata: metadata)))
        }
        allowlist = Allowlist(entries: entries)
        brokerKeys = (0..<count).map { _ in KeyPair.generate() }
        brokers = Array(repeating: nil, count: count)
        endpoints = Array(repeating: "", count: count)
        workers = Array(repeating: [], count: count)
        handled = (0..<count).map { _ in SharedCounter() }
    }

    /// Picks free ports by binding to `*` once; the endpoint is then reused by ``start(_:)``.
    func reserveEndpoints() async throws {
        for i in brokers.indices where endpoints[i].isEmpty {
            try await start(i)
            await stop(i)
        }
    }

    var addresses: [BrokerAddress] { brokers.indices.map { BrokerAddress(endpoints[$0], key: brokerKeys[$0].publicKey) } }

    func start(_ i: Int) async throws {
        var configuration = BrokerConfiguration()
        configuration.endpoints = [endpoints[i].isEmpty ? "tcp://127.0.0.58:*" : endpoints[i]]
        // A stop is a crash, not a drain: the test is about what the client does then.
        configuration.drainTimeout = .zero
        configuration.heartbeatInterval = .milliseconds(250)
        let deadline = ContinuousClock.now + .seconds(10)
        var lastError: (any Error)?
        while ContinuousClock.now < deadline {
            do {
                let broker = try await Broker.start(keyPair: brokerKeys[i], allowlist: allowlist, configuration: configuration, context: context)
                brokers[i] = broker
                endpoints[i] = broker.endpoints[0]
                return
            } catch {
                // The port of a broker just stopped may take a moment to be free again.
                lastError = error
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw lastError ?? SecureMQError(.timedOut, "broker \(i) did not start")
    }

    func stop(_ i: Int) async {
        guard let broker = brokers[i] else { return }
        brokers[i] = nil
        await broker.shutdown()
    }

    /// A single-broker worker on broker `i` that counts what it handles there.
    func startWorker(on i: Int, handler: @escaping @Sendable (WorkItem) async throws -> [UInt8] = { $0.body }) async throws {
        var options = Worker.Options()
        options.credit = 8
        options.heartbeatInterval = .milliseconds(250)
        options.connection.refusedConnectionLimit = nil
        options.connection.connectTimeout = nil
        options.connection.reconnectIntervalMax = .milliseconds(500)
        let worker = try await Worker.connect(to: endpoints[i], brokerKey: brokerKeys[i].publicKey, keyPair: workerKeys,
                                              service: "echo", options: options, context: context)
        let counter = handled[i]
        let task = Task {
            try await worker.run { item in
                counter.increment()
                return try await handler(item)
            }
        }
        workers[i].append((worker: worker, task: task))
    }

    func client(configure: (inout Client.Options) -> Void = { _ in }) async throws -> Client {
        var options = Client.Options()
        options.heartbeatInterval = .milliseconds(250)
        options.liveness = 3
        options.connection.reconnectIntervalMax = .milliseconds(500)
        configure(&options)
        return try await Client.connect(to: addresses, keyPair: clientKeys, options: options, context: context)
    }

    func handledCount(_ i: Int) -> Int { handled[i].value }

    func stopAll() async {
        for list in workers { for entry in list { await entry.worker.close() } }
        for list in workers { for entry in list { _ = try? await entry.task.value } }
        workers = workers.map { _ in [] }
        for i in brokers.indices { await stop(i) }
    }
}

/// Waits (bounded) until `condition` holds; polling, never a fixed sleep as synchronisation.
private func eventually(_ what: String, within limit: Duration = .seconds(20), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    Issue.record("timed out waiting for \(what)")
    throw SecureMQError(.timedOut, "timed out waiting for \(what)")
}

private func waitForBrokers(_ count: Int, _ client: Client) async throws {
    try await eventually("\(count) brokers connected") { await client.connectedBrokers.count == count }
}

/// An echo handler that holds fragments from `index` on until `flag` is set (bounded), so the
/// broker stopped mid-job surely has unanswered fragments of the job when it stops.
private func heldFrom(_ index: Int, until flag: SharedFlag) -> @Sendable (WorkItem) async throws -> [UInt8] {
    { item in
        let deadline = ContinuousClock.now + .seconds(20)
        while item.index >= index && !flag.value && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(2))
        }
        return item.body
    }
}

/// Checks a job's results: every index once, in order, byte-exact.
private func collectChecked(_ job: Job, _ payload: [UInt8]) async throws {
    var gathered: [UInt8] = []
    var expected = 0
    for try await result in job {
        #expect(result.index == expected)
        expected += 1
        gathered.append(contentsOf: result.body)
    }
    #expect(expected == job.fragmentCount)
    #expect(same(gathered, payload))
}

@Suite(.serialized) struct MultiBrokerClientTests {
    @Test func jobsAreSpreadOverTwoBrokers() async throws {
        let set = try BrokerSet(count: 2)
        try await set.start(0)
        try await set.start(1)
        try await set.startWorker(on: 0)
        try await set.startWorker(on: 1)
        let client = try await set.client { $0.fragmentSize = 1024 }
        try await waitForBrokers(2, client)
        let payload = patternBytes(1024 * 40)
        // Open together: the second job goes to the broker with fewer outstanding fragments.
        let jobs = [try await client.submit(.bytes(payload), to: "echo"), try await client.submit(.bytes(payload), to: "echo")]
        for job in jobs { try await collectChecked(job, payload) }
        #expect(set.handledCount(0) >= 40)
        #expect(set.handledCount(1) >= 40)
        // Requests are placed the same way.
        for _ in 0..<8 { #expect(try await client.request([1, 2, 3], service: "echo", timeout: .seconds(20)) == [1, 2, 3]) }
        await client.close()
        await set.stopAll()
    }

    @Test func aBrokerStoppedMidJobLosesNothing() async throws {
        let set = try BrokerSet(count: 2)
        try await set.start(0)
        try await set.start(1)
        let stoppedFlag = SharedFlag()
        try await set.startWorker(on: 0, handler: heldFrom(60, until: stoppedFlag))
        try await set.startWorker(on: 1, handler: heldFrom(60, until: stoppedFlag))
        let client = try await set.client { $0.fragmentSize = 512 }
        try await waitForBrokers(2, client)
        let payload = patternBytes(512 * 400 + 77)
        let job = try await client.submit(.bytes(payload), to: "echo")
        // Whichever broker the job went to is stopped after 50 results.
        var stopped = -1
        var gathered: [UInt8] = []
        var expected = 0
        for try await result in job {
            #expect(result.index == expected)
            expected += 1
            gathered.append(contentsOf: result.body)
            if result.index == 50 {
                stopped = set.handledCount(0) >= set.handledCount(1) ? 0 : 1
                await set.stop(stopped)
                stoppedFlag.set()
            }
        }
        #expect(expected == job.fragmentCount)
        #expect(same(gathered, payload))
        let summary = await job.summary()
        #expect(summary.resubmitted > 0)
        let other = stopped == 0 ? 1 : 0
        #expect(set.handledCount(other) > 0)
        // The moved job is complete at no broker (the survivor saw it from index 50 or so on): the
        // client's CANCEL after completion closes it there, and the 410 it answers is ignored.
        let survivor = try #require(set.brokers[other])
        try await eventually("the survivor to close the moved job") { await survivor.statistics().openJobs == 0 }
        #expect(await survivor.statistics().failedJobs == 1)
        // The client goes on working with the survivor.
        #expect(try await client.request([5], service: "echo", timeout: .seconds(20)) == [5])
        await client.close()
        await set.stopAll()
    }

    @Test func aBrokerDownAtStartIsUsedOnceUp() async throws {
        let set = try BrokerSet(count: 2)
        try await set.reserveEndpoints()
        try await set.start(0)
        try await set.startWorker(on: 0)
        let client = try await set.client()
        #expect(try await client.request([7], service: "echo", timeout: .seconds(20)) == [7])
        try await set.start(1)
        try await set.startWorker(on: 1)
        // Once connected it has no outstanding fragments, so it gets the next jobs.
        try await eventually("broker 1 to get work") {
            _ = try await client.request([9], service: "echo", timeout: .seconds(20))
            return set.handledCount(1) > 0
        }
        await client.close()
        await set.stopAll()
    }

    @Test func aBrokerThatReturnsGetsNewJobs() async throws {
        let set = try BrokerSet(count: 2)
        try await set.start(0)
        try await set.start(1)
        try await set.startWorker(on: 0)
        try await set.startWorker(on: 1)
        let client = try await set.client()
        await set.stop(1)
        // Everything goes to broker 0 while 1 is away.
        for _ in 0..<5 { #expect(try await client.request([1], service: "echo", timeout: .seconds(20)) == [1]) }
        let before = set.handledCount(1)
        try await set.start(1)
        // Its first worker may have ended (sent away before it was served: C31); a new one serves it.
        try await set.startWorker(on: 1)
        try await eventually("broker 1 to get work again") {
            let payload = patternBytes(4096)
            let job = try await client.submit(.bytes(payload), to: "echo")
            try await collectChecked(job, payload)
            return set.handledCount(1) > before
        }
        await client.close()
        await set.stopAll()
    }

    @Test func noBrokerReachableNamesEveryBroker() async throws {
        let set = try BrokerSet(count: 2)
        try await set.reserveEndpoints()
        let error = await #expect(throws: SecureMQError.self) { try await set.client() }
        #expect(error?.code == .unreachable)
        for endpoint in set.endpoints { #expect(error?.message.contains(endpoint) == true) }
    }
}

/// A swift-metrics backend that keeps each counter's and meter's value, by label and dimensions.
final class RecordingMetrics: MetricsFactory, @unchecked Sendable {
    private let lock = NSLock()
    private var values: [String: Double] = [:]

    final class Handle: CounterHandler, MeterHandler, RecorderHandler, TimerHandler, FloatingPointCounterHandler, @unchecked Sendable {
        let key: String
        unowned let owner: RecordingMetrics
        init(key: String, owner: RecordingMetrics) { self.key = key; self.owner = owner }
        func increment(by amount: Int64) { owner.add(key, Double(amount)) }
        func increment(by amount: Double) { owner.add(key, amount) }
        func decrement(by amount: Double) { owner.add(key, -amount) }
        func set(_ value: Int64) { owner.set(key, Double(value)) }
        func set(_ value: Double) { owner.set(key, value) }
        func record(_ value: Int64) { owner.set(key, Double(value)) }
        func record(_ value: Double) { owner.set(key, value) }
        func recordNanoseconds(_ duration: Int64) {}
        func reset() { owner.set(key, 0) }
    }

    private func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        label + dimensions.map { "{\($0.0)=\($0.1)}" }.joined()
    }
    func add(_ key: String, _ amount: Double) { lock.lock(); values[key, default: 0] += amount; lock.unlock() }
    func set(_ key: String, _ value: Double) { lock.lock(); values[key] = value; lock.unlock() }
    func value(_ label: String, _ dimensions: [(String, String)] = []) -> Double {
        lock.lock(); defer { lock.unlock() }
        return values[key(label, dimensions)] ?? 0
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler { Handle(key: key(label, dimensions), owner: self) }
    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler { Handle(key: key(label, dimensions), owner: self) }
    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler { Handle(key: key(label, dimensions), owner: self) }
    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler { Handle(key: key(label, dimensions), owner: self) }
    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler { Handle(key: key(label, dimensions), owner: self) }
    func destroyCounter(_ handler: any CounterHandler) {}
    func destroyMeter(_ handler: any MeterHandler) {}
    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {}
    func destroyRecorder(_ handler: any RecorderHandler) {}
    func destroyTimer(_ handler: any TimerHandler) {}
}

extension MultiBrokerClientTests {
    @Test func metricsCountJobsResubmitsFailoversAndBrokers() async throws {
        let set = try BrokerSet(count: 2)
        try await set.start(0)
        try await set.start(1)
        let stoppedFlag = SharedFlag()
        try await set.startWorker(on: 0, handler: heldFrom(30, until: stoppedFlag))
        try await set.startWorker(on: 1, handler: heldFrom(30, until: stoppedFlag))
        let metrics = RecordingMetrics()
        let client = try await set.client {
            $0.fragmentSize = 512
            $0.metricsFactory = metrics
        }
        try await eventually("both brokers connected") { metrics.value("securemq_client_brokers_connected") == 2 }
        #expect(await client.connectedBrokers == set.addresses)
        let payload = patternBytes(512 * 300)
        let job = try await client.submit(.bytes(payload), to: "echo")
        var gathered: [UInt8] = []
        for try await result in job {
            gathered.append(contentsOf: result.body)
            if result.index == 20 {
                await set.stop(set.handledCount(0) >= set.handledCount(1) ? 0 : 1)
                stoppedFlag.set()
            }
        }
        #expect(same(gathered, payload))
        let failing = try await client.submit(.bytes([1]), to: "no-such-service", deadline: .milliseconds(200))
        await #expect(throws: SecureMQError.self) { _ = try await failing.collect() }
        #expect(metrics.value("securemq_client_jobs_total", [("outcome", "completed")]) == 1)
        #expect(metrics.value("securemq_client_jobs_total", [("outcome", "failed")]) == 1)
        #expect(metrics.value("securemq_client_failovers_total") == 1)
        #expect(metrics.value("securemq_client_fragments_resubmitted_total") >= 1)
        #expect(metrics.value("securemq_client_brokers_connected") == 1)
        await client.close()
        #expect(metrics.value("securemq_client_brokers_connected") == 0)
        await set.stopAll()
    }
}

extension MultiBrokerClientTests {
    /// A broker that completes the handshake and then never answers (a frozen process): after
    /// heartbeat × liveness of silence the job it was given moves to the other broker.
    @Test func aSilentBrokerHasItsWorkMoved() async throws {
        let set = try BrokerSet(count: 1)
        try await set.start(0)
        try await set.startWorker(on: 0)
        let silent = try await ServerFixture.make(allowing: [set.clientKeys.publicKey])
        var options = Client.Options()
        options.heartbeatInterval = .milliseconds(250)
        options.fragmentSize = 512
        let client = try await Client.connect(to: [BrokerAddress(silent.endpoint, key: silent.serverKeys.publicKey)] + set.addresses,
                                              keyPair: set.clientKeys, options: options, context: set.context)
        try await waitForBrokers(2, client)
        // Both idle: the tie goes to the first broker, the silent one.
        let payload = patternBytes(512 * 100)
        let job = try await client.submit(.bytes(payload), to: "echo")
        try await collectChecked(job, payload)
        // The first window was moved whole (more if the loaded machine made a broker look silent
        // again; the gatherer keeps each index once either way).
        #expect(await job.summary().resubmitted >= 32)
        #expect(set.handledCount(0) >= 100)
        await client.close()
        await silent.server.close()
        await set.stopAll()
    }
}
