import CoreMetrics
import Foundation
@testable import SMQBroker
import SMQKeys
import SMQProtocol
import Synchronization
import Testing

/// Records what the core times, as a Prometheus histogram would receive it.
final class RecordingTimer: TimerHandler, Sendable {
    let values = Mutex<[Int64]>([])
    func recordNanoseconds(_ duration: Int64) { values.withLock { $0.append(duration) } }
    var recorded: [Int64] { values.withLock { $0 } }
}

/// The figures the metrics endpoint publishes, checked against the core with a manual clock.
@Suite struct BrokerMetricsTests {
    @Test func latenciesAreMeasuredFromSubmitWithTheEventClock() throws {
        let h = CoreHarness()
        let dispatch = RecordingTimer(), result = RecordingTimer()
        h.core.dispatchLatency = Timer(label: "d", dimensions: [], handler: dispatch)
        h.core.resultLatency = Timer(label: "r", dimensions: [], handler: result)
        let client = h.client("c")
        let worker = h.worker("w", credit: 1)
        h.submit(client, job: .n(1), index: 0, count: 2)
        h.submit(client, job: .n(1), index: 1, count: 2)
        let first = h.takeWorks()
        try #require(first.count == 1)
        h.clock += 2_000_000_000
        h.done(worker, first[0])
        // The second fragment waited the 2 s its worker's credit was taken.
        let second = h.takeWorks()
        try #require(second.count == 1)
        h.clock += 500_000_000
        h.done(worker, second[0])
        #expect(dispatch.recorded == [0, 2_000_000_000])
        #expect(result.recorded == [2_000_000_000, 2_500_000_000])
        #expect(h.core.snapshot.completedJobs == 1)
    }

    @Test func aRetryIsNotTimedAsASecondDispatch() throws {
        let h = CoreHarness()
        let dispatch = RecordingTimer()
        h.core.dispatchLatency = Timer(label: "d", dimensions: [], handler: dispatch)
        let client = h.client("c")
        let worker = h.worker("w")
        h.submit(client, job: .n(1))
        let work = try #require(h.takeWorks().first)
        h.reject(worker, work, retryable: true)
        #expect(h.takeWorks().count == 1, "the fragment is delivered again")
        #expect(dispatch.recorded.count == 1)
        #expect(h.core.snapshot.requeuedAttemptFailed == 1)
    }

    @Test func requeuesAndFailuresAreCountedByCause() throws {
        var rules = BrokerRules.small
        rules.maxDeliveries = 2
        let h = CoreHarness(rules: rules)
        let client = h.client("c")
        let worker = h.worker("w")
        h.submit(client, job: .n(1))
        _ = try #require(h.takeWorks().first)
        // The worker leaves holding the fragment: requeued, charged.
        h.send(ControlMessage.disconnect(reason: "bye").encoded(), from: worker)
        #expect(h.core.snapshot.requeuedWorkerGone == 1)
        let second = h.worker("w2")
        let work = try #require(h.takeWorks().first)
        h.reject(second, work, retryable: true)
        // Two deliveries charged: the job fails with 504.
        #expect(h.failures(to: client).contains { $0.2 == 504 })
        let counters = h.core.snapshot
        #expect(counters.failedJobsByCode == [504: 1])
        #expect(counters.failedJobs == 1)
        h.cancel(client, job: .n(2))  // unknown job: nothing counted
        h.submit(client, job: .n(3))
        h.cancel(client, job: .n(3))
        #expect(h.core.snapshot.failedJobsByCode == [504: 1, FailureCode.cancelled.rawValue: 1])
    }

    @Test func theSnapshotNamesWorkersByAllowlistNameAndCountsPerService() throws {
        let h = CoreHarness()
        let client = h.client("c")
        _ = h.worker("fast", service: "echo", credit: 2)
        _ = h.worker("slow", service: "hash", credit: 1)
        for index in 0..<5 { h.submit(client, job: .n(1), index: UInt32(index), count: 5, service: "echo") }
        let snapshot = h.core.metricsSnapshot()
        #expect(snapshot.services.map(\.name) == ["echo", "hash"])
        #expect(snapshot.services[0].queued == 3 && snapshot.services[0].inFlight == 2 && snapshot.services[0].workers == 1)
        #expect(snapshot.services[1].queued == 0 && snapshot.services[1].inFlight == 0)
        #expect(snapshot.workers.map(\.name) == ["fast", "slow"])
        #expect(snapshot.workers[0].inFlight == 2 && snapshot.workers[0].service == "echo")
        #expect(snapshot.clientConnections == 1 && snapshot.workerConnections == 2)
        #expect(snapshot.byteBudget == h.core.rules.byteBudget)
        #expect(snapshot.counters.connectionsAdmitted == 3)
    }

    @Test func aRefusedReadyIsCountedAndLogged() {
        let h = CoreHarness()
        let worker = h.worker("w", service: "hash", services: "echo")
        #expect(h.disconnects(to: worker).count == 1)
        #expect(h.core.snapshot.readyRefused == 1)
        #expect(h.lines.messages.contains("refused READY: service not allowed for this key"))
    }

    @Test func oneLinePerJobEnd() throws {
        let h = CoreHarness()
        let client = h.client("c")
        let worker = h.worker("w")
        h.submit(client, job: .n(1), index: 0, count: 2)
        h.submit(client, job: .n(1), index: 1, count: 2)
        h.done(worker, try #require(h.takeWorks().first))
        h.done(worker, try #require(h.takeWorks().first))
        #expect(h.lines.messages.filter { $0 == "job ended" }.count == 1)
        h.submit(client, job: .n(2))
        h.cancel(client, job: .n(2))
        #expect(h.lines.messages.filter { $0 == "job ended" }.count == 2)
    }

    @Test func mmiStatusListsOnlyTheAskersServices() throws {
        let h = CoreHarness()
        _ = h.worker("e", service: "echo")
        _ = h.worker("x", service: "hash")
        let limited = h.client("limited", services: "echo,mmi.status")
        let body = [UInt8]()
        let header = FragmentHeader(jobID: .n(9), index: 0, count: 1, offset: 0, totalLength: 0, length: 0, digest: SHA256.hash(body))
        h.send(Fragment.encode(command: .submit, tag: 0, service: "mmi.status", header: header, body: body), from: limited)
        let reply = try #require(h.sink.effects.compactMap { effect -> [UInt8]? in
            if case .control(let address, _, let bytes) = effect, address == limited.address { return bytes }
            return nil
        }.last)
        let view = try reply.withUnsafeBytes { raw -> [UInt8] in
            guard case .result(let fragment) = try Message.parse(raw, limits: .default) else { throw CancellationError() }
            return Array(fragment.body)
        }
        let object = try #require(try JSONSerialization.jsonObject(with: Data(view)) as? [String: Any])
        let names = (object["services"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(names == ["echo"])
        #expect(object["truncated"] as? Bool == false)
    }

    @Test func jobLinesFromOneKeyAreBoundedAndSayWhatWasLeftOut() {
        let h = CoreHarness()
        let client = h.client("churn")
        for job in 1...100 {
            h.submit(client, job: .n(UInt64(job)))
            h.cancel(client, job: .n(UInt64(job)))
        }
        #expect(h.lines.messages.filter { $0 == "job ended" }.count == JobLineBudget.burst)
        #expect(h.core.snapshot.suppressedLogLines >= 100 - JobLineBudget.burst)
        h.clock += 5 * JobLineBudget.refillInterval
        for job in 101...110 {
            h.submit(client, job: .n(UInt64(job)))
            h.cancel(client, job: .n(UInt64(job)))
        }
        #expect(h.lines.messages.filter { $0 == "job ended" }.count == JobLineBudget.burst + 5)
    }
}
