import Testing
import Synchronization
import CoreMetrics
import Logging
@testable import SecureMQ

/// What a worker records with swift-metrics (issue 13), read through a collecting factory given
/// in ``Worker/Options/metricsFactory``.
@Suite(.timeLimit(.minutes(2)))
struct WorkerMetricsTests {
    @Test func aWorkerCountsOutcomesHandlerTimesAndConnectedBrokers() async throws {
        let brokers = try MultiBrokerWorkerTests.Brokers()
        let (_, addressA) = try await brokers.start()
        let (b, addressB) = try await brokers.start()
        let metrics = CollectingMetrics()
        let worker = try await brokers.worker([addressA, addressB]) { $0.metricsFactory = metrics }
        let refuse = Array("NO".utf8)
        let serving = Task {
            try await worker.run { item in
                if item.body.starts(with: refuse) { throw WorkRejection(code: 422, reason: "refused on purpose") }
                return item.body
            }
        }
        try await waitFor("both brokers connected") { metrics.value("securemq_worker_brokers_connected") == 2 }
        try await waitFor("B registers the worker") { await b.statistics().workers == 1 }
        let clientA = try await brokers.client(addressA)
        let clientB = try await brokers.client(addressB)
        let payload = patternBytes(64 * 10)
        #expect(same(try await clientA.submit(.bytes(payload), to: "echo").collect(), payload))
        let refused = await #expect(throws: SecureMQError.self) {
            _ = try await clientB.submit(.bytes(refuse + patternBytes(30)), to: "echo").collect()
        }
        #expect(refused?.status == 422)
        #expect(metrics.value("securemq_worker_fragments_total", ("outcome", "done")) == 10)
        #expect(metrics.value("securemq_worker_fragments_total", ("outcome", "rejected")) == 1)
        #expect(metrics.value("securemq_worker_fragments_total", ("outcome", "dropped")) == 0)
        #expect(metrics.count("securemq_worker_handler_seconds") == 11)
        await clientA.close()
        await clientB.close()
        await worker.close()
        try await serving.value
        #expect(metrics.value("securemq_worker_brokers_connected") == 0)
        await brokers.stopAll()
    }
}

/// A swift-metrics factory that keeps every value in memory, for tests to read.
final class CollectingMetrics: MetricsFactory {
    final class Series: CounterHandler, MeterHandler, RecorderHandler, TimerHandler {
        private let state = Mutex<(value: Double, count: Int)>((0, 0))
        var value: Double { state.withLock { $0.value } }
        var count: Int { state.withLock { $0.count } }
        private func add(_ amount: Double) { state.withLock { $0.value += amount; $0.count += 1 } }
        private func put(_ amount: Double) { state.withLock { $0.value = amount; $0.count += 1 } }
        func increment(by amount: Int64) { add(Double(amount)) }
        func reset() { state.withLock { $0 = (0, 0) } }
        func set(_ value: Int64) { put(Double(value)) }
        func set(_ value: Double) { put(value) }
        func increment(by amount: Double) { add(amount) }
        func decrement(by amount: Double) { add(-amount) }
        func record(_ value: Int64) { put(Double(value)) }
        func record(_ value: Double) { put(value) }
        func recordNanoseconds(_ duration: Int64) { add(Double(duration) / 1e9) }
    }

    private let series = Mutex<[String: Series]>([:])

    private static func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        ([label] + dimensions.map { "\($0.0)=\($0.1)" }).joined(separator: ",")
    }

    private func make(_ label: String, _ dimensions: [(String, String)]) -> Series {
        series.withLock { all in
            let key = Self.key(label, dimensions)
            if let found = all[key] { return found }
            let made = Series()
            all[key] = made
            return made
        }
    }

    /// The series' value (0 when never made).
    func value(_ label: String, _ dimensions: (String, String)...) -> Double {
        series.withLock { $0[Self.key(label, dimensions)] }?.value ?? 0
    }

    /// How many values the series recorded.
    func count(_ label: String, _ dimensions: (String, String)...) -> Int {
        series.withLock { $0[Self.key(label, dimensions)] }?.count ?? 0
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler { make(label, dimensions) }
    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler { make(label, dimensions) }
    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler { make(label, dimensions) }
    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler { make(label, dimensions) }
    func destroyCounter(_ handler: any CounterHandler) {}
    func destroyMeter(_ handler: any MeterHandler) {}
    func destroyRecorder(_ handler: any RecorderHandler) {}
    func destroyTimer(_ handler: any TimerHandler) {}
}
