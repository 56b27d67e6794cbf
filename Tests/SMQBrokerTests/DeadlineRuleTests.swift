import SMQKeys
import SMQProtocol
import Testing
@testable import SMQBroker

/// Issue 11's rules in the core, with a manual clock: deadlines (C45), `mmi.services` (C46) and
/// `mmi.limits` (C47).
@Suite struct DeadlineRuleTests {
    /// A SUBMIT whose tag carries the time left in milliseconds (C45).
    func submit(_ h: CoreHarness, _ client: PeerConnection, job: JobID, timeLeftMs: UInt64, service: String = "echo", body: [UInt8] = Array(repeating: 7, count: 16)) {
        let header = FragmentHeader(jobID: job, index: 0, count: 1, offset: 0, totalLength: UInt64(body.count),
                                    length: UInt32(body.count), digest: SHA256.hash(body))
        h.send(Fragment.encode(command: .submit, tag: timeLeftMs, service: try! ServiceName(validating: service), header: header, body: body), from: client)
    }

    @Test func aFragmentWhoseDeadlinePassedWhileQueuedFailsWith408InsteadOfBeingDispatched() throws {
        let h = CoreHarness()
        let client = h.client("c")
        let worker = h.worker("w", credit: 1)
        h.submit(client, job: .n(1))  // no deadline: holds the worker's only credit
        submit(h, client, job: .n(2), timeLeftMs: 500)
        let first = h.takeWorks()
        try #require(first.count == 1 && first[0].job == .n(1))
        h.clock += 600_000_000  // the deadline passes while job 2 waits
        h.done(worker, first[0])
        #expect(h.takeWorks().isEmpty, "an expired fragment must not be dispatched")
        let failures = h.failures(to: client)
        #expect(failures.count == 1 && failures[0].0 == .n(2) && failures[0].1 == 0 && failures[0].2 == 408, "\(failures)")
        #expect(h.core.snapshot.deadlineExceeded == 1)
        #expect(h.core.jobs.isEmpty && h.core.bytesHeld == 0)
    }

    @Test func aFragmentWithinItsDeadlineGoesAndItsWorkerLearnsTheTimeLeftFirst() throws {
        let h = CoreHarness()
        let client = h.client("c")
        let worker = h.worker("w", credit: 1)
        h.submit(client, job: .n(1))
        submit(h, client, job: .n(2), timeLeftMs: 2000)
        let first = h.takeWorks()
        try #require(first.count == 1)
        h.clock += 500_000_000
        h.done(worker, first[0])
        // The DEADLINE comes right before its WORK, with what is left of the 2 s: 1.5 s.
        let effects = h.sink.take()
        let deadlineAt = effects.firstIndex {
            if case .control(_, .deadline?, _) = $0 { return true }
            return false
        }
        let workAt = effects.firstIndex {
            if case .work = $0 { return true }
            return false
        }
        let d = try #require(deadlineAt), w = try #require(workAt)
        #expect(d < w)
        guard case .control(let address, .deadline(let delivery, let left)?, _) = effects[d], case .work(_, let tag, _) = effects[w] else {
            Issue.record("unexpected effects: \(effects)")
            return
        }
        #expect(address == worker.address && delivery == tag && left == 1500)
    }

    @Test func aFragmentWithoutADeadlineSendsNoDeadline() {
        let h = CoreHarness()
        let client = h.client("c")
        _ = h.worker("w")
        h.submit(client, job: .n(1))
        h.collect()
        #expect(h.works.count == 1)
        #expect(!h.controls.contains { if case .deadline = $0.message { return true }; return false })
    }

    /// The body of the RESULT the core made for an mmi request.
    func mmiAnswer(_ h: CoreHarness, _ client: PeerConnection, service: String, body: [UInt8] = []) -> String? {
        submit(h, client, job: .n(99), timeLeftMs: 0, service: service, body: body)
        for effect in h.sink.take() {
            guard case .control(let address, _, let bytes) = effect, address == client.address else { continue }
            let text: String? = bytes.withUnsafeBytes { raw in
                guard case .result(let view)? = try? Message.parse(raw, limits: .default) else { return nil }
                return String(decoding: view.body, as: UTF8.self)
            }
            if let text { return text }
        }
        return nil
    }

    @Test func mmiServicesNamesTheServicesThatHaveAWorkerSorted() {
        let h = CoreHarness()
        let client = h.client("c")
        _ = h.worker("w1", service: "upper")
        _ = h.worker("w2", service: "echo")
        _ = h.worker("w3", service: "sha256")
        h.submit(client, job: .n(5), service: "nobody")  // a service with queued work, no worker
        #expect(mmiAnswer(h, client, service: "mmi.services") == "echo,sha256,upper")
    }

    @Test func mmiLimitsSaysTheMaxFragment() {
        let h = CoreHarness()
        let client = h.client("c")
        #expect(mmiAnswer(h, client, service: "mmi.limits") == "max-fragment=\(h.core.rules.maxFragment)")
    }

    @Test func theServiceListIsCutToWhatFits() {
        #expect(BrokerCore.serviceList(["b", "a", "c"], limit: 3) == "a,b")
        #expect(BrokerCore.serviceList([], limit: 100) == "")
    }
}
