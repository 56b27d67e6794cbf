import Foundation
import Glibc
import SMQKeys
import Testing

/// Issue 10's promises, tried from outside: a real `secure-broker`, real `smq worker`s and
/// `smq submit`s, and one hostile peer from `scripts/abuse` (pyzmq, CURVE, SMQ/1 bytes built by
/// hand). Each test floods for a few seconds and then checks what the broker paid, as /proc
/// reports it, against generous bounds: memory growth within the byte budget plus a margin, jobs
/// that end (with a code when they fail), another client's honest job that completes, log growth
/// that stays small. Nothing is timed; every wait has a deadline.
///
/// `scripts/soak` runs the same shapes for longer against a release build and prints numbers.
/// Serialized: each test loads both cores with a flood of its own.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct AbuseProcessTests {
    /// The broker's byte budget in these tests, and how far above base + budget its peak RSS may
    /// go: the issue's target is 32 MiB over the budget for a release build; the debug build's
    /// allocations and a loaded machine get twice that.
    static let budget = 16 << 20
    static let margin = 64 << 20
    /// Log bytes the broker may write per second of a flood (the target is 10 KB/s), and
    /// a fixed allowance for the lines every run has (peers joining, leaving, one summary).
    static let logRate = 10_000
    static let logAllowance = 40_000

    /// A broker with a 16 MiB budget, `workers` honest echo workers, an honest client and the
    /// keys of a hostile client and a hostile worker.
    struct Arena {
        let harness: ProcessHarness
        let certs: TestCertificates
        let broker: BrokerProcess
        let workers: [ChildProcess]
        let honest: TestPeer
        let hostileClient: TestPeer
        let hostileWorker: TestPeer
        /// The broker's RSS once every peer is registered.
        let baseRSS: Int

        /// The broker's peak RSS (VmHWM) above `baseRSS`.
        var growth: Int { (ProcStatus(broker.child.pid)?.peakRSS ?? Int.max) - baseRSS }

        /// Bytes the broker has logged so far.
        var logBytes: Int { broker.child.data(.stderr).count }

        /// CPU seconds (user + system) the broker has used so far, from /proc/PID/stat.
        var cpuSeconds: Double {
            guard let stat = try? String(contentsOfFile: "/proc/\(broker.child.pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return .infinity }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return .infinity }
            return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
        }

        /// Runs an honest `smq submit` of `bytes` random bytes and expects it to return them.
        func expectHonestJobCompletes(_ bytes: Int, fragmentSize: String = "64K", name: String = "honest",
                                      timeout: Duration = .seconds(90)) async throws {
            let payload = randomBytes(bytes)
            let output = harness.directory + "/\(name).out"
            let finished = try await harness.submit(try harness.write(payload, to: "\(name).in"), as: honest, certs: certs,
                                                    broker: broker, service: "echo",
                                                    arguments: ["--fragment-size", fragmentSize, "--output", output], timeout: timeout)
            #expect(finished.termination == .exited(0), "\(finished.transcript)")
            let gathered = (try? [UInt8](Data(contentsOf: URL(fileURLWithPath: output)))) ?? []
            let equal = gathered == payload
            #expect(equal, "\(firstDifference(gathered, payload))")
        }

        /// The broker still runs and every honest worker with it.
        func expectEveryoneStanding() {
            #expect(broker.child.isRunning, "\(broker.child.transcript())")
            for worker in workers { #expect(worker.isRunning, "\(worker.transcript())") }
        }
    }

    func arena(_ label: String, workers: Int = 2, brokerArguments: [String] = [], workerArguments: [String] = []) async throws -> Arena {
        let harness = try ProcessHarness(label)
        do {
            let certs = try TestCertificates(in: harness.directory)
            let honest = try certs.client("honest")
            let hostileClient = try certs.client("hostile")
            let hostileWorker = try certs.worker("bad")
            let workerPeers = try (0..<workers).map { try certs.worker("w\($0 + 1)") }
            let broker = try await harness.startBroker(certs, arguments: ["--byte-budget", "\(Self.budget >> 20)M"] + brokerArguments)
            var children: [ChildProcess] = []
            for peer in workerPeers {
                children.append(try await harness.startWorker(peer, certs: certs, broker: broker, service: "echo",
                                                              arguments: ["--credit", "8"] + workerArguments))
            }
            let base = try #require(ProcStatus(broker.child.pid)).rss
            return Arena(harness: harness, certs: certs, broker: broker, workers: children, honest: honest,
                         hostileClient: hostileClient, hostileWorker: hostileWorker, baseRSS: base)
        } catch {
            harness.tearDown()
            throw error
        }
    }

    func expectMemoryBounded(_ a: Arena, _ shape: String) {
        let growth = a.growth
        #expect(growth <= Self.budget + Self.margin,
                "\(shape): the broker grew by \(growth >> 20) MiB (budget \(Self.budget >> 20) MiB + \(Self.margin >> 20) MiB allowed)")
    }

    /// Waits for the `worker ready` line of `peer` (a hostile worker speaks SMQ/1 by hand).
    func waitUntilRegistered(_ a: Arena, _ peer: TestPeer) async throws {
        try await a.broker.child.waitForLine(containing: "worker ready", "key=\(peer.fingerprint) ")
    }

    /// Waits (bounded) until two consecutive `statistics` lines (`--stats-interval 1`) report
    /// the same number of SUBMITs: the broker has worked off what the flood left in its queues.
    func waitUntilQuiet(_ a: Arena, timeout: Duration = .seconds(60)) async throws {
        func submitted(_ line: String) -> Substring? {
            line.split(separator: " ").first { $0.hasPrefix("submitted=") }
        }
        let deadline = ContinuousClock.now + timeout
        var seen = a.broker.child.lines(.stderr).filter { $0.contains("statistics") }.count
        var last: Substring?
        while ContinuousClock.now < deadline {
            let line = try await a.broker.child.waitForLine(in: .stderr, occurrence: seen + 1, timeout: .seconds(10),
                                                            "a statistics line") { $0.contains("statistics") }
            seen += 1
            let count = submitted(line)
            if count != nil && count == last { return }
            last = count
        }
        throw HarnessError("the broker was still reading SUBMITs \(timeout) after the flood ended")
    }

    // MARK: hostile clients

    @Test
    func zeroByteFragmentFloodStaysWithinTheBudget() async throws {
        let a = try await arena("abuse-zero", brokerArguments: ["--service-timeout", "3"])
        defer { a.harness.tearDown() }
        let flood = try a.harness.startAbuse("zero_fragments.py", as: a.hostileClient, certs: a.certs, broker: a.broker, duration: 8)
        try await a.expectHonestJobCompletes(512 << 10)
        let report = try await AbuseReport(flood, timeout: .seconds(60))
        #expect((report.int("sent") ?? 0) > 10_000, "the flood did not flood: \(report)")
        // Its jobs (to a service nobody serves) end: with 404 after the 3 s service timeout, or
        // with the client itself, sent away as a slow consumer when it leaves thousands of BUSY
        // replies unread (PROTOCOL.md C36).
        #expect((report.int("failed_codes", "404") ?? 0) > 0 || (report.int("disconnects") ?? 0) > 0, "\(report)")
        expectMemoryBounded(a, "zero-byte fragments")
        a.expectEveryoneStanding()
    }

    @Test
    func sparseHighIndexesStayWithinTheBudget() async throws {
        let a = try await arena("abuse-sparse")
        defer { a.harness.tearDown() }
        let flood = try a.harness.startAbuse("sparse_indexes.py", as: a.hostileClient, certs: a.certs, broker: a.broker, duration: 8)
        try await a.expectHonestJobCompletes(512 << 10)
        let report = try await AbuseReport(flood, timeout: .seconds(60))
        #expect((report.int("sent") ?? 0) > 10_000, "the flood did not flood: \(report)")
        expectMemoryBounded(a, "sparse high indexes")
        a.expectEveryoneStanding()
    }

    @Test
    func aClientThatNeverReadsIsHeldToItsShare() async throws {
        let a = try await arena("abuse-noread")
        defer { a.harness.tearDown() }
        let flood = try a.harness.startAbuse("no_reader.py", as: a.hostileClient, certs: a.certs, broker: a.broker, duration: 8)
        try await a.expectHonestJobCompletes(512 << 10)
        let report = try await AbuseReport(flood, timeout: .seconds(60))
        #expect((report.int("sent") ?? 0) > 16, "the client sent too little to test anything: \(report)")
        expectMemoryBounded(a, "a client that never reads")
        a.expectEveryoneStanding()
    }

    @Test
    func aNewServicePerJobIsForgottenAndLeavesTheBrokerIdle() async throws {
        let a = try await arena("abuse-services", brokerArguments: ["--stats-interval", "1"])
        defer { a.harness.tearDown() }
        let report = try await a.harness.runAbuse("new_services.py", as: a.hostileClient, certs: a.certs, broker: a.broker, duration: 8)
        #expect((report.int("services") ?? 0) > 1000, "too few services to test anything: \(report)")
        // Every job ended, with a code: each was cancelled, so 410 (or BUSY before it opened).
        #expect((report.int("failed_codes", "410") ?? 0) + (report.int("busy") ?? 0) > 0, "\(report)")
        try await a.expectHonestJobCompletes(256 << 10)
        expectMemoryBounded(a, "a new service per job")
        // Idle afterwards: once the broker has read all the flood (two statistics lines in a row
        // with the same count of SUBMITs), a 3 s measurement window, not a wait for an event. The
        // issue saw 44–51 % of a core here for good; a broker whose timers skip idle records uses
        // next to nothing.
        try await waitUntilQuiet(a)
        let before = a.cpuSeconds
        try await Task.sleep(for: .seconds(3))
        let used = a.cpuSeconds - before
        #expect(used < 0.3, "the idle broker used \(used) CPU seconds in 3 s")
        a.expectEveryoneStanding()
    }

    @Test
    func submitCancelChurnKeepsMemoryAndLogsBounded() async throws {
        let a = try await arena("abuse-churn")
        defer { a.harness.tearDown() }
        let logBefore = a.logBytes
        let duration = 8.0
        let report = try await a.harness.runAbuse("submit_cancel.py", as: a.hostileClient, certs: a.certs, broker: a.broker, duration: duration)
        #expect((report.int("jobs") ?? 0) > 1000, "too little churn to test anything: \(report)")
        #expect((report.int("failed_codes", "410") ?? 0) > 0, "cancelled jobs end with 410: \(report)")
        let logged = a.logBytes - logBefore
        #expect(logged <= Int(duration) * Self.logRate + Self.logAllowance, "the broker logged \(logged) bytes in \(duration) s of churn")
        expectMemoryBounded(a, "SUBMIT + CANCEL churn")
        try await a.expectHonestJobCompletes(256 << 10)
        a.expectEveryoneStanding()
    }

    @Test
    func aClientFillingTheBudgetDoesNotStarveAnother() async throws {
        // Slow workers, so the filler sends faster than they work and the budget stays full; small
        // fragments (16 KiB, 32 MiB outstanding), so it is full to the last gap an honest fragment
        // could slip into.
        let a = try await arena("abuse-filler", brokerArguments: ["--stats-interval", "1"], workerArguments: ["--delay-ms", "100"])
        defer { a.harness.tearDown() }
        let filler = try a.harness.startAbuse("budget_filler.py", as: a.hostileClient, certs: a.certs, broker: a.broker, duration: 60,
                                              arguments: ["--jobs", "8", "--fragments", "256", "--size", "\(16 << 10)"])
        // The budget is full once the broker has answered BUSY.
        try await a.broker.child.waitForLine(in: .stderr, timeout: .seconds(40), "statistics with BUSY answered") { line in
            line.contains("statistics") && line.contains(" busy=") && !line.contains(" busy=0 ")
        }
        // The honest job completes while the filler still floods, and its fragments were hardly
        // refused: a share of the budget is kept for it (not a timing: an order, and a count).
        let payload = randomBytes(2 << 20)
        let finished = try await a.harness.submit(try a.harness.write(payload, to: "honest.in"), as: a.honest, certs: a.certs,
                                                  broker: a.broker, service: "echo",
                                                  arguments: ["--fragment-size", "64K", "--window", "8"], timeout: .seconds(90))
        #expect(finished.termination == .exited(0), "\(finished.transcript)")
        #expect(filler.isRunning, "the filler ended before the honest job: nothing was tested")
        let busy = finished.stderr.split(separator: "\n").first { $0.hasPrefix("busy resends:") }
            .flatMap { Int($0.split(separator: " ").last ?? "") }
        #expect((busy ?? Int.max) <= 64, "the honest client's 32 fragments were refused \(busy.map(String.init) ?? "?") times")
        filler.interrupt()
        expectMemoryBounded(a, "a client filling the budget")
        a.expectEveryoneStanding()
    }

    // MARK: hostile workers

    @Test
    func aWorkerThatNeverAnswersLosesItsWorkToTheLease() async throws {
        let a = try await arena("abuse-silent", workers: 1, brokerArguments: ["--work-lease", "2"])
        defer { a.harness.tearDown() }
        let silent = try a.harness.startAbuse("silent_worker.py", as: a.hostileWorker, certs: a.certs, broker: a.broker, duration: 60,
                                              arguments: ["--credit", "16"])
        try await waitUntilRegistered(a, a.hostileWorker)
        // Within 45 s, while the silent worker (60 s) still heartbeats: what it held came back
        // through the lease, not through its leaving.
        try await a.expectHonestJobCompletes(64 << 10, fragmentSize: "4K", timeout: .seconds(45))
        #expect(silent.isRunning, "the silent worker left before the job completed: nothing was tested")
        silent.interrupt()
        a.expectEveryoneStanding()
    }

    @Test
    func aWorkerAnsweringUnreadableRejectsDoesNotHoldAJob() async throws {
        let a = try await arena("abuse-reject", workers: 1)
        defer { a.harness.tearDown() }
        let rejecter = try a.harness.startAbuse("reject_worker.py", as: a.hostileWorker, certs: a.certs, broker: a.broker, duration: 60)
        try await waitUntilRegistered(a, a.hostileWorker)
        // Every job ends; this one completes, as a retried fragment goes to the worker that is
        // free, within 45 s, while the hostile worker (60 s) is still there or was sent away
        // (not because it left by itself).
        try await a.expectHonestJobCompletes(64 << 10, fragmentSize: "4K", timeout: .seconds(45))
        #expect(rejecter.termination != .exited(0), "the hostile worker left by itself before the job completed: nothing was tested")
        rejecter.interrupt()
        let report = try await AbuseReport(rejecter, timeout: .seconds(30))
        #expect((report.int("rejects") ?? 0) > 0, "the hostile worker was given nothing to reject: nothing was tested: \(report)")
        a.expectEveryoneStanding()
    }

    @Test
    func forgedDonesDoNotFloodTheLog() async throws {
        let a = try await arena("abuse-forged")
        defer { a.harness.tearDown() }
        let logBefore = a.logBytes
        let duration = 8.0
        let flood = try a.harness.startAbuse("forged_done.py", as: a.hostileWorker, certs: a.certs, broker: a.broker, duration: duration)
        try await a.expectHonestJobCompletes(512 << 10)
        let report = try await AbuseReport(flood, timeout: .seconds(60))
        #expect((report.int("forged") ?? 0) > 10_000, "the flood did not flood: \(report)")
        let logged = a.logBytes - logBefore
        #expect(logged <= Int(duration) * Self.logRate + Self.logAllowance, "the broker logged \(logged) bytes in \(duration) s of forged DONEs")
        expectMemoryBounded(a, "forged DONEs")
        a.expectEveryoneStanding()
    }

    // MARK: issue 15

    /// A SUBMIT whose header says offset = 2^63 and total-length = 2^64 − 1, through a real broker
    /// to real `smq worker`s: the job fails with 400 and no worker falls over.
    @Test func anAbsurdFragmentHeaderFailsWith400AndNoWorkerFallsOver() async throws {
        let a = try await arena("abuse-header", brokerArguments: ["--service-timeout", "5"])
        defer { a.harness.tearDown() }
        // PROTOCOL.md C33: the broker answers 400 before any worker sees the header.
        let report = try await a.harness.runAbuse("absurd_header.py", as: a.hostileClient, certs: a.certs, broker: a.broker, duration: 20)
        #expect(report.string("last") == "failed 400", "\(report)")
        for worker in a.workers { #expect(worker.isRunning, "\(worker.transcript())") }
        #expect(a.broker.child.isRunning)
    }
}
