import Foundation
import Testing

/// Issue 5: every fragment of a job is delivered exactly once, in order, or the job fails with a
/// cause, whatever happens to the processes around it. Real processes, killed and stopped.
@Suite(.timeLimit(.minutes(2)))
struct FaultProcessTests {
    /// Waits until `condition` holds (polling, with a deadline): for an event, not a guessed time.
    func waitUntil(_ what: String, timeout: Duration = .seconds(30), _ condition: () throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try condition() { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw HarnessError("timed out waiting for \(what)")
    }

    func fileSize(_ path: String) -> Int {
        (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
    }

    /// The value of `key=` in the broker's last `stopped` log line.
    func stoppedStatistic(_ broker: BrokerProcess, _ key: String) -> Int? {
        guard let line = broker.child.lines(.stderr).last(where: { $0.contains("stopped") && $0.contains("requeued=") }) else { return nil }
        guard let field = line.split(separator: " ").first(where: { $0.hasPrefix(key + "=") }) else { return nil }
        return Int(field.dropFirst(key.count + 1))
    }

    /// Starts `smq submit` in the background on `payload`, echo service, 1 KiB fragments.
    func startSubmit(_ harness: ProcessHarness, _ certs: TestCertificates, _ broker: BrokerProcess, _ client: TestPeer,
                     payload: [UInt8], name: String, window: Int = 16) throws -> (ChildProcess, output: String) {
        let input = try harness.write(payload, to: "\(name).in")
        let output = harness.directory + "/\(name).out"
        let child = try harness.start("smq", ["submit", input, "--service", "echo", "--quiet", "--fragment-size", "1K",
                                              "--window", "\(window)", "--output", output]
                                      + harness.peerArguments(client, certs: certs, broker: broker), name: "submit-\(name)")
        return (child, output)
    }

    /// A broker, `workers` echo workers (`w1`, `w2`, …) started with `workerArguments`, and a
    /// client key: every test here starts from one. Keys are made before the broker starts, so its
    /// first read of the allowlist has them all.
    struct Cluster {
        let harness: ProcessHarness
        let certs: TestCertificates
        let client: TestPeer
        let peers: [TestPeer]
        let broker: BrokerProcess
        let workers: [ChildProcess]
    }

    func cluster(_ label: String, workers count: Int, brokerArguments: [String] = [],
                 workerArguments: [String]) async throws -> Cluster {
        let harness = try ProcessHarness(label)
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let peers = try (1...count).map { try certs.worker("w\($0)") }
        let broker = try await harness.startBroker(certs, arguments: brokerArguments)
        var workers: [ChildProcess] = []
        for peer in peers {
            workers.append(try await harness.startWorker(peer, certs: certs, broker: broker, service: "echo",
                                                         arguments: workerArguments))
        }
        return Cluster(harness: harness, certs: certs, client: client, peers: peers, broker: broker, workers: workers)
    }

    /// The submit ended well, wrote exactly `payload`, and its caller saw no duplicate.
    func expectDeliveredExactlyOnce(_ submit: ChildProcess, output: String, payload: [UInt8], timeout: Duration = .seconds(60)) async throws {
        let finished = try await submit.waitForExit(timeout: timeout)
        #expect(finished.succeeded, "\(submit.transcript())")
        let gathered = try [UInt8](Data(contentsOf: URL(fileURLWithPath: output)))
        let equal = gathered == payload  // a Bool first: Swift Testing's diff of megabytes never ends
        #expect(equal, "\(firstDifference(gathered, payload))")
        #expect(submit.output(.stderr).contains("duplicates:     0"))
    }

    @Test func killingOneOfThreeWorkersMidJobLosesNothing() async throws {
        let c = try await cluster("kill9", workers: 3, workerArguments: ["--delay-ms", "20", "--credit", "4"])
        defer { c.harness.tearDown() }
        let payload = randomBytes(300 * 1024)
        let (submit, output) = try startSubmit(c.harness, c.certs, c.broker, c.client, payload: payload, name: "job")
        try await waitUntil("50 results") { fileSize(output) >= 50 * 1024 }
        c.workers[1].kill()
        try await expectDeliveredExactlyOnce(submit, output: output, payload: payload)
        #expect(c.broker.child.output(.stderr).contains("peer connection dropped"))
        c.broker.child.terminate()
        #expect(try await c.broker.child.waitForExit(timeout: .seconds(15)).succeeded)
        #expect((stoppedStatistic(c.broker, "requeued") ?? 0) > 0, "\(c.broker.child.transcript())")
    }

    @Test func stoppedWorkerLosesItsWorkAndItsLateResultsAreDiscarded() async throws {
        let c = try await cluster("sigstop", workers: 2, workerArguments: ["--delay-ms", "20", "--credit", "4", "--heartbeat-ms", "200"])
        defer { c.harness.tearDown() }
        let frozen = c.peers[0]
        let payload = randomBytes(300 * 1024)
        let (submit, output) = try startSubmit(c.harness, c.certs, c.broker, c.client, payload: payload, name: "job")
        try await waitUntil("50 results") { fileSize(output) >= 50 * 1024 }
        c.workers[0].send(SIGSTOP)
        // Silent for 3 × 200 ms: the broker gives its fragments to w2.
        try await c.broker.child.waitForLine(containing: "presumed dead", "key=\(frozen.fingerprint)")
        c.workers[0].resume()
        // Byte-exact with no duplicate: its late results never reached the client…
        try await expectDeliveredExactlyOnce(submit, output: output, payload: payload)
        // …because the broker dropped them.
        try await c.broker.child.waitForLine(containing: "dropped a result for an unknown delivery", "worker=\(frozen.fingerprint)")
        c.broker.child.terminate()
        #expect(try await c.broker.child.waitForExit(timeout: .seconds(15)).succeeded)
        #expect(stoppedStatistic(c.broker, "deadWorkers") == 1)
    }

    @Test func poisonFragmentFailsItsJobWith504WhileAnotherJobCompletes() async throws {
        let c = try await cluster("poison", workers: 4, brokerArguments: ["--max-deliveries", "3"],
                                  workerArguments: ["--crash-on-prefix", "POISON", "--delay-ms", "5", "--credit", "2"])
        defer { c.harness.tearDown() }
        var poison = randomBytes(20 * 1024)
        poison.replaceSubrange(5 * 1024..<5 * 1024 + 6, with: Array("POISON".utf8))
        let healthyPayload = randomBytes(200 * 1024)
        let (poisoned, _) = try startSubmit(c.harness, c.certs, c.broker, c.client, payload: poison, name: "poison")
        let (healthy, healthyOutput) = try startSubmit(c.harness, c.certs, c.broker, c.client, payload: healthyPayload, name: "healthy")
        let poisonEnd = try await poisoned.waitForExit(timeout: .seconds(60))
        #expect(!poisonEnd.succeeded)
        #expect(poisoned.output(.stderr).contains("504"), "\(poisoned.transcript())")
        try await expectDeliveredExactlyOnce(healthy, output: healthyOutput, payload: healthyPayload)
        // The broker is still up and serving.
        #expect(c.broker.child.isRunning)
        c.broker.child.terminate()
        #expect(try await c.broker.child.waitForExit(timeout: .seconds(15)).succeeded)
        #expect(stoppedStatistic(c.broker, "failedJobs") == 1)
    }

    @Test func revokedBusyWorkerIsCutOffAndTheJobCompletesOnTheOthers() async throws {
        let c = try await cluster("revoke", workers: 2, workerArguments: ["--delay-ms", "20", "--credit", "4"])
        defer { c.harness.tearDown() }
        let revoked = c.peers[0]
        let payload = randomBytes(300 * 1024)
        let (submit, output) = try startSubmit(c.harness, c.certs, c.broker, c.client, payload: payload, name: "job")
        try await waitUntil("50 results") { fileSize(output) >= 50 * 1024 }
        try c.certs.revoke(revoked)
        // The broker sees the change by content within about a second, and sends w1 away.
        try await c.broker.child.waitForLine(containing: "key revoked", "key=\(revoked.fingerprint)")
        let w1End = try await c.workers[0].waitForExit(timeout: .seconds(15))
        #expect(!w1End.succeeded)
        #expect(c.workers[0].output(.stderr).contains("revoked"))
        try await expectDeliveredExactlyOnce(submit, output: output, payload: payload)
    }

    @Test func jobSurvivesABrokerKilledAndRestarted() async throws {
        // 40 ms per fragment, 8 at a time: the 250 fragments after the 50th take over a second, so
        // the kill lands mid-job even when a loaded machine is slow to notice the 50th.
        let c = try await cluster("restart", workers: 2, workerArguments: ["--delay-ms", "40", "--credit", "4"])
        defer { c.harness.tearDown() }
        let payload = randomBytes(300 * 1024)
        let (submit, output) = try startSubmit(c.harness, c.certs, c.broker, c.client, payload: payload, name: "job")
        try await waitUntil("50 results") { fileSize(output) >= 50 * 1024 }
        c.broker.child.kill()
        #expect(fileSize(output) < payload.count, "the job ended before the broker was killed: nothing was tested")
        _ = try await c.broker.child.waitForExit(timeout: .seconds(10))
        _ = try await c.harness.startBroker(c.certs, port: c.broker.port, name: "broker-again")
        try await expectDeliveredExactlyOnce(submit, output: output, payload: payload, timeout: .seconds(90))
        #expect(!submit.output(.stderr).contains("resubmitted:    0"), "the client resubmitted what the dead broker held")
    }

    @Test func sigtermDrainsInFlightWorkAndRefusesTheRest() async throws {
        let c = try await cluster("drain", workers: 1, brokerArguments: ["--drain-timeout", "5"],
                                  workerArguments: ["--delay-ms", "50", "--credit", "4"])
        defer { c.harness.tearDown() }
        let broker = c.broker
        let payload = randomBytes(200 * 1024)
        let (submit, output) = try startSubmit(c.harness, c.certs, broker, c.client, payload: payload, name: "job")
        try await waitUntil("20 results") { fileSize(output) >= 20 * 1024 }
        let signalled = ContinuousClock.now
        broker.child.terminate()
        let brokerEnd = try await broker.child.waitForExit(timeout: .seconds(15))
        #expect(brokerEnd.succeeded, "\(broker.child.transcript())")
        #expect(ContinuousClock.now - signalled < .seconds(8), "the broker exits within the drain timeout")
        // What was in flight came back; what came after was refused with 503, and said so.
        let finished = try await submit.waitForExit(timeout: .seconds(30))
        #expect(!finished.succeeded)
        #expect(submit.output(.stderr).contains("503"), "\(submit.transcript())")
        let gathered = try [UInt8](Data(contentsOf: URL(fileURLWithPath: output)))
        #expect(gathered.count >= 20 * 1024)
        let prefixEqual = Array(payload.prefix(gathered.count)) == gathered
        #expect(prefixEqual, "what arrived is a correct prefix")
    }
}

extension Termination {
    var succeeded: Bool { self == .exited(0) }
}
