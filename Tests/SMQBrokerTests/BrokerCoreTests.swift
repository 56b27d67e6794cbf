@testable import SMQBroker
import SMQKeys
import SMQProtocol
import Testing

@Suite struct DispatchTests {
    @Test func aFragmentGoesToTheWorkerAndItsResultToTheClient() throws {
        let h = CoreHarness()
        let client = h.client("c")
        let worker = h.worker("w")
        h.submit(client, job: .n(1))
        let works = h.takeWorks()
        try #require(works.count == 1)
        #expect(works[0].address == worker.address && works[0].job == .n(1))
        #expect(h.core.bytesHeld == BrokerRules.fragmentFloor)
        h.done(worker, works[0])
        h.collect()
        #expect(h.results.count == 1 && h.results[0].address == client.address)
        #expect(h.core.bytesHeld == 0 && h.core.fragmentsHeld == 0)
        #expect(h.core.jobs.isEmpty, "a completed job is forgotten")
        #expect(h.core.snapshot.completedJobs == 1)
    }

    @Test func aWorkerNeverHoldsMoreThanItsCredit() {
        let h = CoreHarness()
        let client = h.client("c")
        _ = h.worker("w", credit: 2)
        for index in 0..<5 { h.submit(client, job: .n(1), index: UInt32(index), count: 5) }
        #expect(h.takeWorks().count == 2)
    }

    @Test func theCreditCapIsWeightTimesBaseWindow() {
        var rules = BrokerRules.small
        rules.baseWindow = 2
        let h = CoreHarness(rules: rules)
        let client = h.client("c")
        _ = h.worker("w", credit: 100, weight: 3)
        for index in 0..<10 { h.submit(client, job: .n(1), index: UInt32(index), count: 10) }
        #expect(h.takeWorks().count == 6)
    }

    @Test func weightsShareTheWork() {
        var rules = BrokerRules.small
        rules.byteBudget = 1 << 20
        let h = CoreHarness(rules: rules)
        let client = h.client("c")
        let light = h.worker("light", credit: 100, weight: 1)
        let heavy = h.worker("heavy", credit: 100, weight: 3)
        for index in 0..<40 { h.submit(client, job: .n(1), index: UInt32(index), count: 40, length: 1) }
        var counts: [[UInt8]: Int] = [:]
        // Both answer at once each round: the scheduler's shares decide who gets the next ones.
        for _ in 0..<40 {
            let works = h.takeWorks()
            if works.isEmpty { break }
            for work in works {
                counts[work.address, default: 0] += 1
                h.done(work.address == light.address ? light : heavy, work)
            }
        }
        #expect(counts.values.reduce(0, +) == 40)
        #expect(counts[heavy.address, default: 0] == 30 && counts[light.address, default: 0] == 10, "\(counts)")
    }

    @Test func clientsTakeTurns() {
        let h = CoreHarness()
        let a = h.client("a")
        let b = h.client("b")
        let worker = h.worker("w", credit: 1)
        for index in 0..<6 { h.submit(a, job: .n(1), index: UInt32(index), count: 6) }
        for index in 0..<2 { h.submit(b, job: .n(2), index: UInt32(index), count: 2) }
        var order: [JobID] = []
        for _ in 0..<8 {
            guard let work = h.takeWorks().first else { break }
            order.append(work.job)
            h.done(worker, work)
        }
        // a's first was dispatched before b submitted; then they alternate while b has work.
        #expect(order.prefix(6) == [.n(1), .n(2), .n(1), .n(2), .n(1), .n(1)])
    }

    /// Fair by turns, not by bytes: a client with 64 KiB fragments and one with 1 KiB fragments
    /// alternate, so the one with small fragments is not kept waiting 64 turns per large one and
    /// neither can starve the other whatever its fragment size (C37).
    @Test func clientsShareTurnsWhateverTheirFragmentSize() {
        var rules = BrokerRules.small
        rules.maxFragment = 64 << 10
        rules.byteBudget = 16 << 20
        let h = CoreHarness(rules: rules)
        let big = h.client("big")
        let small = h.client("small")
        let worker = h.worker("w", credit: 1)
        for index in 0..<20 { h.submit(big, job: .n(1), index: UInt32(index), count: 20, length: 64 << 10) }
        for index in 0..<20 { h.submit(small, job: .n(2), index: UInt32(index), count: 20, length: 1024) }
        var order: [JobID] = []
        for _ in 0..<20 {
            guard let work = h.takeWorks().first else { break }
            order.append(work.job)
            h.done(worker, work)
        }
        #expect(order.count == 20)
        // After the first (dispatched before the other client submitted), they alternate.
        #expect(zip(order.dropFirst(), order.dropFirst(2)).allSatisfy { $0 != $1 }, "\(order)")
    }

    /// A client that arrives while another fills every worker slot gets the slots that free next,
    /// until both hold as many: an equal share of the workers, not every other turn (C37).
    @Test func aNewcomerGetsFreedSlotsUntilItHoldsAsManyAsTheFlooder() {
        var rules = BrokerRules.small
        rules.byteBudget = 1 << 20
        let h = CoreHarness(rules: rules)
        let flooder = h.client("flooder")
        let honest = h.client("honest")
        let worker = h.worker("w", credit: 4)
        for index in 0..<40 { h.submit(flooder, job: .n(1), index: UInt32(index), count: 40) }
        var inFlight = h.takeWorks()
        #expect(inFlight.count == 4 && inFlight.allSatisfy { $0.job == .n(1) })
        for index in 0..<4 { h.submit(honest, job: .n(2), index: UInt32(index), count: 4) }
        var next: [JobID] = []
        for _ in 0..<4 {
            let finished = inFlight.removeFirst()
            h.done(worker, finished)
            let dispatched = h.takeWorks()
            next.append(contentsOf: dispatched.map(\.job))
            inFlight.append(contentsOf: dispatched)
        }
        // Flooder 4, honest 0 in flight: the honest client takes the first two slots that free
        // (turns alone would have alternated), then they share.
        #expect(Array(next.prefix(2)) == [.n(2), .n(2)], "\(next)")
        #expect(next.filter { $0 == .n(2) }.count >= 2)
    }

    @Test func aServiceWithoutWorkersFailsWith404AndIsForgotten() {
        var rules = BrokerRules.small
        rules.byteBudget = 1 << 20
        let h = CoreHarness(rules: rules)
        let client = h.client("c")
        for n in 0..<50 { h.submit(client, job: .n(UInt64(n)), service: "s\(n)") }
        #expect(h.core.services.count == 50)
        h.advance(seconds: 11)
        #expect(h.failures(to: client).filter { $0.2 == 404 }.count == 50)
        #expect(h.core.services.isEmpty, "services with no worker, no work and no job are forgotten")
        #expect(h.core.bytesHeld == 0)
    }

    @Test func mmiWorkersCountsWorkerKeys() {
        let h = CoreHarness()
        let client = h.client("c")
        _ = h.worker("w1")
        _ = h.worker("w2")
        let body = Array("echo".utf8)
        let header = FragmentHeader(jobID: .n(9), index: 0, count: 1, offset: 0, totalLength: 4, length: 4, digest: SHA256.hash(body))
        h.send(Fragment.encode(command: .submit, tag: 0, service: "mmi.workers", header: header, body: body), from: client)
        h.collect()
        #expect(h.controls.contains { $0.address == client.address } || h.sink.effects.isEmpty)
    }
}

@Suite struct CancelTests {
    /// The race of issue 10: a worker with credit 1 holds fragment 0; CANCEL returns its credit,
    /// and the job's queued fragments must not be what fills it.
    @Test func afterCancelNothingOfTheJobIsDispatched() {
        let h = CoreHarness()
        let client = h.client("c")
        let worker = h.worker("w", credit: 1)
        for index in 0..<3 { h.submit(client, job: .n(1), index: UInt32(index), count: 3) }
        h.submit(client, job: .n(2))
        let first = h.takeWorks()
        #expect(first.map(\.job) == [.n(1)])
        h.cancel(client, job: .n(1))
        let after = h.takeWorks()
        #expect(after.allSatisfy { $0.job != .n(1) }, "a cancelled job's fragment was dispatched: \(after)")
        #expect(after.map(\.job) == [.n(2)], "the freed credit goes to other work")
        #expect(h.failures(to: client).contains { $0.0 == .n(1) && $0.2 == 410 })
        // The late result of the cancelled delivery is dropped, never forwarded.
        h.done(worker, first[0])
        h.collect()
        #expect(!h.results.contains { $0.job == .n(1) })
        // A stray SUBMIT for it gets 410.
        h.submit(client, job: .n(1), index: 2, count: 3)
        #expect(h.takeWorks().allSatisfy { $0.job != .n(1) })
        #expect(h.failures(to: client).filter { $0.0 == .n(1) && $0.2 == 410 }.count == 2)
    }

    /// Found by a SUBMIT + CANCEL churn against a real broker (+900 MiB in 10 s): a forgotten
    /// service's queues held dead records, which held their jobs, which held the service.
    @Test func aForgottenServiceIsFreed() {
        let h = CoreHarness()
        let client = h.client("c")
        weak var service: ServiceQueue?
        weak var job: Job?
        do {
            h.submit(client, job: .n(1), count: 2)
            service = h.core.services["echo"]
            job = h.core.jobs.values.first
            #expect(service != nil && job != nil)
            h.cancel(client, job: .n(1))
        }
        #expect(h.core.services.isEmpty)
        #expect(service == nil, "the forgotten service leaked")
        #expect(job == nil, "the cancelled job leaked")
    }

    @Test func aClientThatDoesNotReadItsRepliesIsDroppedAtTheOutboxLimit() {
        var rules = BrokerRules.small
        rules.maxOutbox = 10
        let h = CoreHarness(rules: rules)
        let client = h.client("c")
        h.sink.full.insert(client.address)
        for n in 0..<11 { h.cancel(client, job: .n(UInt64(n))); h.submit(client, job: .n(UInt64(n)), service: "mmi.nothing") }
        #expect(client.gone)
        #expect(h.core.snapshot.slowClients == 1)
    }

    @Test func endedJobIdsAreBounded() {
        var rules = BrokerRules.small
        rules.maxEndedJobs = 10
        let h = CoreHarness(rules: rules)
        let client = h.client("c")
        for n in 0..<200 {
            h.submit(client, job: .n(UInt64(n)))
            h.cancel(client, job: .n(UInt64(n)))
        }
        #expect(h.core.endedJobs.count <= 10)
        #expect(h.core.snapshot.suppressedLogLines >= 0)
        h.advance(seconds: 61)
        #expect(h.core.endedJobs.count == 0, "ended ids expire")
    }
}

@Suite struct BudgetTests {
    @Test func aClientMayHoldItsShareAndAnotherStillGetsIn() {
        let h = CoreHarness()   // budget 64 KiB, fragments of 4 KiB
        let flooder = h.client("f")
        let honest = h.client("h")
        for index in 0..<40 { h.submit(flooder, job: .n(1), index: UInt32(index), count: 40, length: 4096) }
        // Alone, a client may hold half the budget.
        #expect(h.core.keys.values.first { $0.entry.name == "f" }!.account.bytes == 32 * 1024)
        #expect(h.busies(to: flooder) == 32)
        for index in 0..<4 { h.submit(honest, job: .n(2), index: UInt32(index), count: 4, length: 4096) }
        #expect(h.busies(to: honest) == 0, "a newcomer finds room while another floods")
        #expect(h.core.bytesHeld <= h.core.rules.byteBudget)
    }

    @Test func anEmptyFragmentCostsItsBookkeeping() {
        var rules = BrokerRules.small
        rules.byteBudget = 16 * 1024
        let h = CoreHarness(rules: rules)
        let client = h.client("c")
        for index in 0..<100 { h.submit(client, job: .n(1), index: UInt32(index), count: 100, length: 0) }
        #expect(h.core.fragmentsHeld == 8, "max(body, 1 KiB) each, half the budget for one client")
        #expect(h.busies(to: client) == 92)
    }

    @Test func theFragmentCountIsBoundedToo() {
        var rules = BrokerRules.small
        rules.maxFragments = 10
        let h = CoreHarness(rules: rules)
        let client = h.client("c")
        for index in 0..<30 { h.submit(client, job: .n(1), index: UInt32(index), count: 30, length: 0) }
        #expect(h.core.fragmentsHeld == 5)
    }

    @Test func maxJobsGetsBusy() {
        var rules = BrokerRules.small
        rules.maxJobsPerClient = 2
        let h = CoreHarness(rules: rules)
        let client = h.client("c")
        for n in 0..<3 { h.submit(client, job: .n(UInt64(n)), count: 2) }
        #expect(h.busies(to: client) == 1)
    }

    @Test func jobStateFollowsWhatIsHeldNotTheHighestIndex() {
        let h = CoreHarness()
        let client = h.client("c")
        let worker = h.worker("w", credit: 4)
        for index: UInt32 in [0, 1_000_000, 4_000_000_000] { h.submit(client, job: .n(1), index: index, count: UInt32.max, length: 0) }
        for work in h.takeWorks() { h.done(worker, work) }
        let job = h.core.jobs[JobKey(client: client.key.serial, jobID: .n(1))]!
        #expect(job.live.isEmpty)
        #expect(job.doneBelow == 1 && job.doneAhead.count == 2)
    }

    @Test func resultsTooFarAheadFailTheJob() {
        var rules = BrokerRules.small
        rules.maxDoneAhead = 4
        let h = CoreHarness(rules: rules)
        let client = h.client("c")
        let worker = h.worker("w", credit: 10)
        for index in 1...6 { h.submit(client, job: .n(1), index: UInt32(index * 2), count: 100, length: 1) }
        for work in h.takeWorks() { h.done(worker, work) }
        #expect(h.failures(to: client).contains { $0.0 == .n(1) && $0.2 == 400 })
        #expect(h.core.bytesHeld == 0)
    }
}

@Suite struct BackpressureTests {
    @Test func resultsForAClientThatDoesNotReadWaitInItsOutboxAndStopItsDispatch() {
        let h = CoreHarness()
        let client = h.client("c")
        let worker = h.worker("w", credit: 1)
        for index in 0..<4 { h.submit(client, job: .n(1), index: UInt32(index), count: 4) }
        h.sink.full.insert(client.address)
        let work = h.takeWorks()
        h.done(worker, work[0])
        #expect(client.outbox.count == 1)
        #expect(h.takeWorks().isEmpty, "no work of a client whose outbox is not empty is dispatched")
        #expect(h.core.fragmentsHeld == 4, "the waiting result counts against the client")
        h.sink.full.remove(client.address)
        h.advance(seconds: 0.1)
        h.collect()
        #expect(client.outbox.isEmpty && h.results.count == 1)
        #expect(h.takeWorks().count == 1, "dispatch resumes once the outbox drained")
    }

    @Test func aClientThatNeverReadsIsDroppedAfterTheSlowClientTimeout() {
        var rules = BrokerRules.small
        rules.slowClientTimeout = 5_000_000_000
        let h = CoreHarness(rules: rules)
        let client = h.client("c")
        let worker = h.worker("w", credit: 1)
        h.submit(client, job: .n(1), count: 2)
        h.submit(client, job: .n(1), index: 1, count: 2)
        h.sink.full.insert(client.address)
        h.done(worker, h.takeWorks()[0])
        h.advance(seconds: 6)
        #expect(client.gone)
        #expect(h.core.bytesHeld == 0 && h.core.fragmentsHeld == 0 && h.core.jobs.isEmpty)
    }

    @Test func workForAFullPipeWaitsInFlightAndGoesInOrderWhenItDrains() {
        let h = CoreHarness()
        let client = h.client("c")
        let worker = h.worker("w", credit: 4)
        h.sink.full.insert(worker.address)
        for index in 0..<3 { h.submit(client, job: .n(1), index: UInt32(index), count: 3) }
        #expect(h.takeWorks().isEmpty)
        #expect(worker.worker!.pending.count == 3 && worker.worker!.inFlight == 3, "pending work is in flight: the picks stand")
        #expect(h.core.hasFullPipes)
        h.sink.full.remove(worker.address)
        h.core.retryFullPipes(now: h.clock)
        #expect(h.takeWorks().map(\.index) == [0, 1, 2])
        #expect(!h.core.hasFullPipes)
    }

    @Test func pendingWorkOfACancelledJobIsNeverSent() {
        let h = CoreHarness()
        let client = h.client("c")
        let worker = h.worker("w", credit: 4)
        h.sink.full.insert(worker.address)
        h.submit(client, job: .n(1), count: 2)
        h.submit(client, job: .n(2))
        h.cancel(client, job: .n(1))
        h.sink.full.remove(worker.address)
        h.core.retryFullPipes(now: h.clock)
        #expect(h.takeWorks().map(\.job) == [.n(2)])
    }

    @Test func aWorkerThatNeverReadsLosesItsWorkAtTheLease() {
        var rules = BrokerRules.small
        rules.workLease = 5_000_000_000
        let h = CoreHarness(rules: rules)
        let client = h.client("c")
        let stuck = h.worker("stuck", credit: 1)
        h.sink.full.insert(stuck.address)
        h.submit(client, job: .n(1))
        for _ in 0..<7 {
            h.send(ControlMessage.heartbeat.encoded(), from: stuck)
            h.advance(seconds: 1)
        }
        #expect(stuck.gone)
        let other = h.worker("other")
        #expect(h.takeWorks().map(\.address) == [other.address])
    }
}

@Suite struct FaultTests {
    @Test func aRetriedFragmentGoesToAnotherWorkerWhenOneIsFree() {
        let h = CoreHarness()
        let client = h.client("c")
        let bad = h.worker("bad", credit: 1)
        let good = h.worker("good", credit: 1)
        h.submit(client, job: .n(1))
        var work = h.takeWorks()[0]
        let first = work.address == bad.address ? bad : good
        let second = first === bad ? good : bad
        h.reject(first, work, retryable: true)
        work = h.takeWorks()[0]
        #expect(work.address == second.address)
    }

    @Test func poisonFailsWith504AfterMaxDeliveries() {
        let h = CoreHarness()
        let client = h.client("c")
        let worker = h.worker("w", credit: 1)
        h.submit(client, job: .n(1))
        for _ in 0..<5 {
            guard let work = h.takeWorks().first else { break }
            h.reject(worker, work, retryable: true)
        }
        #expect(h.failures(to: client).contains { $0.2 == 504 })
        #expect(h.core.bytesHeld == 0)
    }

    @Test func aDeadWorkersFragmentsBecomeSuspectsServedOneAtATime() {
        let h = CoreHarness()
        let client = h.client("c")
        let dying = h.worker("dying", credit: 2)
        for index in 0..<2 { h.submit(client, job: .n(1), index: UInt32(index), count: 2) }
        #expect(h.takeWorks().count == 2)
        h.core.connectionGone(dying, now: h.clock)
        _ = h.worker("next", credit: 2)
        #expect(h.takeWorks().count == 1, "a worker never holds two suspects")
    }

    @Test func aSilentWorkerIsPresumedDeadAndItsWorkRequeued() {
        let h = CoreHarness()
        let client = h.client("c")
        let silent = h.worker("silent", credit: 1)
        h.submit(client, job: .n(1))
        _ = h.takeWorks()
        h.advance(seconds: 3.5)
        #expect(silent.gone)
        let next = h.worker("next")
        #expect(h.takeWorks().map(\.address) == [next.address])
    }

    @Test func aDeliveryHeldPastTheLeaseIsRequeuedAndCharged() {
        var rules = BrokerRules.small
        rules.workLease = 10_000_000_000
        let h = CoreHarness(rules: rules)
        let client = h.client("c")
        let holder = h.worker("holder", credit: 1)
        h.submit(client, job: .n(1))
        _ = h.takeWorks()
        for _ in 0..<12 {
            h.send(ControlMessage.heartbeat.encoded(), from: holder)
            h.advance(seconds: 1)
        }
        #expect(holder.gone)
        #expect(h.disconnects(to: holder).contains { $0.contains("lease") })
        let fragment = h.core.jobs.values.first!.live[0]!
        #expect(fragment.attempts == 1 && fragment.queued)
        let next = h.worker("next")
        #expect(h.takeWorks().map(\.address) == [next.address])
    }

    @Test func anUnreadableMessageFromAWorkerHoldingWorkEndsItsConnection() {
        let h = CoreHarness()
        let client = h.client("c")
        let worker = h.worker("w", credit: 1)
        h.submit(client, job: .n(1))
        let work = h.takeWorks()[0]
        // A REJECT whose reason is longer than 1 KiB is unreadable (C9).
        var reject = ControlMessage.reject(deliveryID: work.tag, code: .internalError, retryable: true, reason: "").encoded()
        reject += [UInt8](repeating: UInt8(ascii: "x"), count: 2000)
        h.send(reject, from: worker)
        #expect(worker.gone)
        #expect(h.core.snapshot.unreadableWorkers == 1)
        let next = h.worker("next")
        #expect(h.takeWorks().map(\.address) == [next.address])
    }

    /// A key that is forgotten when its connection goes and made anew when it reconnects keeps
    /// its place in the rate limiter (found by a reconnection flood: one line per reconnection).
    @Test func aReconnectingKeyDoesNotEscapeTheLogLimit() {
        let h = CoreHarness()
        h.allow("c", role: "client")
        for _ in 0..<50 {
            let client = h.connect("c")
            h.send([0x53, 0x4D, 0x51, 1, 0x7F], from: client)
            h.core.connectionGone(client, now: h.clock)
        }
        #expect(h.core.snapshot.malformed == 50)
        #expect(h.lines.messages.filter { $0 == "dropped malformed message" }.count == 1, "\(h.lines.messages)")
    }

    @Test func forgedResultsAreDroppedAndTheirLogLinesSuppressed() {
        let h = CoreHarness()
        let worker = h.worker("w")
        let work = CoreHarness.Work(address: worker.address, tag: 999, job: .n(1), index: 0, count: 1, length: 1, service: "echo")
        for _ in 0..<1000 { h.done(worker, work) }
        #expect(h.core.snapshot.strayResults == 1000)
        #expect(h.core.log.suppressed >= 998, "one line per key and kind per interval")
        #expect(h.lines.count < 10, "\(h.lines.messages)")
    }
}

@Suite struct AdmissionTests {
    @Test func aRevokedWorkersWorkIsRequeuedUnchargedAndItIsToldToLeave() {
        let h = CoreHarness()
        let client = h.client("c")
        let revoked = h.worker("r", credit: 1)
        h.submit(client, job: .n(1))
        _ = h.takeWorks()
        h.revoke("r")
        #expect(h.disconnects(to: revoked) == ["key revoked"])
        let next = h.worker("next")
        #expect(h.takeWorks().map(\.address) == [next.address])
        #expect(h.core.jobs.values.first!.live[0]!.attempts == 1)
        // Its later messages are dropped quietly.
        h.send(ControlMessage.heartbeat.encoded(), from: revoked)
        #expect(h.disconnects(to: revoked).count == 1)
        // Once its pipe is gone it is forgotten.
        h.core.connectionGone(revoked, now: h.clock)
        #expect(h.core.connection(for: revoked.id) == nil)
    }

    /// Found by the property test: failing a revoked client's first job freed a worker's credit,
    /// which went to the client's next job before that one failed.
    @Test func revokingAClientWithSeveralJobsDispatchesNoneOfThem() {
        let h = CoreHarness()
        let client = h.client("c")
        _ = h.worker("w", credit: 1)
        h.submit(client, job: .n(1), count: 2)
        h.submit(client, job: .n(2), count: 2)
        h.submit(client, job: .n(3), count: 2)
        #expect(h.takeWorks().count == 1)
        h.revoke("c")
        #expect(h.takeWorks().isEmpty)
        #expect(h.failures(to: client).filter { $0.2 == 403 }.count == 3)
    }

    @Test func aClientThatVanishesWithSeveralJobsHasNoneOfThemDispatched() {
        let h = CoreHarness()
        let client = h.client("c")
        _ = h.worker("w", credit: 1)
        h.submit(client, job: .n(1), count: 2)
        h.submit(client, job: .n(2), count: 2)
        #expect(h.takeWorks().count == 1)
        h.core.connectionGone(client, now: h.clock)
        #expect(h.takeWorks().isEmpty)
        #expect(h.core.bytesHeld == 0 && h.core.jobs.isEmpty)
    }

    @Test func aRevokedClientsJobsFailWith403() {
        let h = CoreHarness()
        let client = h.client("c")
        h.submit(client, job: .n(1), count: 2)
        h.revoke("c")
        #expect(h.failures(to: client).contains { $0.0 == .n(1) && $0.2 == 403 })
        #expect(h.core.bytesHeld == 0 && h.core.jobs.isEmpty)
    }

    @Test func narrowingAWorkersServicesSendsItAway() {
        let h = CoreHarness()
        let client = h.client("c")
        let worker = h.worker("w", service: "echo", credit: 1, services: "echo,other")
        h.submit(client, job: .n(1))
        _ = h.takeWorks()
        h.allow("w", role: "worker", services: "other")
        h.core.allowlistChanged(now: h.clock)
        #expect(worker.gone)
        #expect(h.disconnects(to: worker).first?.contains("may no longer serve") == true)
        #expect(h.core.jobs.values.first!.live[0]!.queued, "its in-flight work is requeued")
    }

    @Test func narrowingAWorkersRoleSendsItAway() {
        let h = CoreHarness()
        let worker = h.worker("w")
        h.allow("w", role: "client")
        h.core.allowlistChanged(now: h.clock)
        #expect(worker.gone)
    }

    @Test func narrowingAClientsServicesFailsThoseJobsWith403() {
        let h = CoreHarness()
        let client = h.client("c", services: "echo,other")
        h.submit(client, job: .n(1), count: 2, service: "echo")
        h.submit(client, job: .n(2), count: 2, service: "other")
        h.allow("c", role: "client", services: "other")
        h.core.allowlistChanged(now: h.clock)
        let failures = h.failures(to: client)
        #expect(failures.contains { $0.0 == .n(1) && $0.2 == 403 })
        #expect(!failures.contains { $0.0 == .n(2) })
    }

    @Test func aMismatchedUserIDEndsTheRegistration() {
        let h = CoreHarness()
        let client = h.client("c")
        let worker = h.worker("w", credit: 1)
        h.submit(client, job: .n(1))
        _ = h.takeWorks()
        h.core.userIDMismatch(worker, now: h.clock)
        #expect(worker.gone && h.core.connection(for: worker.id) == nil)
        #expect(h.core.jobs.values.first!.live[0]!.queued)
    }

    @Test func aKeyHasABoundedNumberOfConnections() {
        var rules = BrokerRules.small
        rules.maxConnectionsPerKey = 3
        let h = CoreHarness(rules: rules)
        h.allow("c", role: "client")
        for _ in 0..<3 { _ = h.connect("c") }
        let refused = h.core.admit(id: RoutingID([9, 9]), address: [9, 9], userID: h.entries.keys.first!.z85, now: h.clock)
        #expect(refused == nil)
    }

    @Test func aWorkerMayNotSubmit() {
        let h = CoreHarness()
        let worker = h.worker("w")
        h.submit(worker, job: .n(1))
        #expect(worker.gone)
    }
}

@Suite struct DrainTests {
    @Test func drainWaitsForInFlightWorkAndRefusesNewJobs() {
        let h = CoreHarness()
        let client = h.client("c")
        let worker = h.worker("w")
        h.submit(client, job: .n(1))
        let work = h.takeWorks()[0]
        h.core.startDrain(now: h.clock)
        #expect(h.sink.drainedCount == 0)
        h.submit(client, job: .n(2))
        #expect(h.failures(to: client).contains { $0.0 == .n(2) && $0.2 == 503 })
        h.done(worker, work)
        #expect(h.sink.drainedCount >= 1)
    }
}

@Suite struct RulesTests {
    @Test func badValuesAreRefused() {
        var rules = BrokerRules()
        rules.byteBudget = 10
        #expect(throws: BrokerRules.Invalid.self) { try rules.validate() }
        rules = BrokerRules()
        rules.workLease = 0
        #expect(throws: BrokerRules.Invalid.self) { try rules.validate() }
        #expect(throws: Never.self) { try BrokerRules().validate() }
    }

    @Test(arguments: [Double.nan, .infinity, -.infinity, -1, 1e300, 1e19])
    func secondsThatCannotBeATimeoutAreRefused(_ value: Double) {
        #expect(BrokerRules.nanoseconds(fromSeconds: value, in: 0...86_400) == nil)
    }

    @Test func secondsInRangeConvert() {
        #expect(BrokerRules.nanoseconds(fromSeconds: 1.5, in: 0...10) == 1_500_000_000)
    }
}
