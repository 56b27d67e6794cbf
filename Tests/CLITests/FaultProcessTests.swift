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

    @Test func killingOneOfThreeWorkersMidJobLosesNothing() async throws {
        let harness = try ProcessHarness("kill9")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let peers = try (1...3).map { try certs.worker("w\($0)") }
        let broker = try await harness.startBroker(certs)
        var workers: [ChildProcess] = []
        for peer in peers {
            workers.append(try await harness.startWorker(peer, certs: certs, broker: broker, service: "echo",
                                                         arguments: ["--delay-ms", "20", "--credit", "4"]))
        }
        let payload = randomBytes(300 * 1024)
        let (submit, output) = try startSubmit(harness, certs, broker, client, payload: payload, name: "job")
        try await waitUntil("50 results") { fileSize(output) >= 50 * 1024 }
        workers[1].kill()
        let finished = try await submit.waitForExit(timeout: .seconds(60))
        #expect(finished.succeeded, "\(submit.transcript())")
        let gathered = try [UInt8](Data(contentsOf: URL(fileURLWithPath: output)))
        let equal = gathered == payload
        #expect(equal, "\(firstDifference(gathered, payload))")
        #expect(submit.output(.stderr).contains("duplicates:     0"))
        #expect(broker.child.output(.stderr).contains("peer connection dropped"))
        broker.child.terminate()
        #expect(try await broker.child.waitForExit(timeout: .seconds(15)).succeeded)
        #expect((stoppedStatistic(broker, "requeued") ?? 0) > 0, "\(broker.child.transcript())")
    }

    @Test func stoppedWorkerLosesItsWorkAndItsLateResultsAreDiscarded() async throws {
        let harness = try ProcessHarness("sigstop")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let frozen = try certs.worker("w1")
        let other = try certs.worker("w2")
        let broker = try await harness.startBroker(certs)
        let w1 = try await harness.startWorker(frozen, certs: certs, broker: broker, service: "echo",
                                               arguments: ["--delay-ms", "20", "--credit", "4", "--heartbeat-ms", "200"])
        _ = try await harness.startWorker(other, certs: certs, broker: broker, service: "echo",
                                          arguments: ["--delay-ms", "20", "--credit", "4", "--heartbeat-ms", "200"])
        let payload = randomBytes(300 * 1024)
        let (submit, output) = try startSubmit(harness, certs, broker, client, payload: payload, name: "job")
        try await waitUntil("50 results") { fileSize(output) >= 50 * 1024 }
        w1.send(SIGSTOP)
        // Silent for 3 × 200 ms: the broker gives its fragments to w2.
        try await broker.child.waitForLine(containing: "presumed dead", "key=\(frozen.fingerprint)")
        w1.resume()
        let finished = try await submit.waitForExit(timeout: .seconds(60))
        #expect(finished.succeeded, "\(submit.transcript())")
        let gathered = try [UInt8](Data(contentsOf: URL(fileURLWithPath: output)))
        let equal = gathered == payload
        #expect(equal, "\(firstDifference(gathered, payload))")
        // Its late results never reached the client.
        #expect(submit.output(.stderr).contains("duplicates:     0"))
        try await broker.child.waitForLine(containing: "dropped a result for an unknown delivery", "worker=\(frozen.fingerprint)")
        broker.child.terminate()
        #expect(try await broker.child.waitForExit(timeout: .seconds(15)).succeeded)
        #expect(stoppedStatistic(broker, "deadWorkers") == 1)
    }

    @Test func poisonFragmentFailsItsJobWith504WhileAnotherJobCompletes() async throws {
        let harness = try ProcessHarness("poison")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let peers = try (1...4).map { try certs.worker("w\($0)") }
        let broker = try await harness.startBroker(certs, arguments: ["--max-deliveries", "3"])
        for peer in peers {
            _ = try await harness.startWorker(peer, certs: certs, broker: broker, service: "echo",
                                              arguments: ["--crash-on-prefix", "POISON", "--delay-ms", "5", "--credit", "2"])
        }
        var poison = randomBytes(20 * 1024)
        poison.replaceSubrange(5 * 1024..<5 * 1024 + 6, with: Array("POISON".utf8))
        let healthyPayload = randomBytes(200 * 1024)
        let (poisoned, _) = try startSubmit(harness, certs, broker, client, payload: poison, name: "poison")
        let (healthy, healthyOutput) = try startSubmit(harness, certs, broker, client, payload: healthyPayload, name: "healthy")
        let poisonEnd = try await poisoned.waitForExit(timeout: .seconds(60))
        #expect(!poisonEnd.succeeded)
        #expect(poisoned.output(.stderr).contains("504"), "\(poisoned.transcript())")
        let healthyEnd = try await healthy.waitForExit(timeout: .seconds(60))
        #expect(healthyEnd.succeeded, "\(healthy.transcript())")
        let healthyEqual = try [UInt8](Data(contentsOf: URL(fileURLWithPath: healthyOutput))) == healthyPayload
        #expect(healthyEqual)
        // The broker is still up and serving.
        #expect(broker.child.isRunning)
        broker.child.terminate()
        #expect(try await broker.child.waitForExit(timeout: .seconds(15)).succeeded)
        #expect(stoppedStatistic(broker, "failedJobs") == 1)
    }

    @Test func revokedBusyWorkerIsCutOffAndTheJobCompletesOnTheOthers() async throws {
        let harness = try ProcessHarness("revoke")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let revoked = try certs.worker("w1")
        let other = try certs.worker("w2")
        let broker = try await harness.startBroker(certs)
        let w1 = try await harness.startWorker(revoked, certs: certs, broker: broker, service: "echo",
                                               arguments: ["--delay-ms", "20", "--credit", "4"])
        _ = try await harness.startWorker(other, certs: certs, broker: broker, service: "echo",
                                          arguments: ["--delay-ms", "20", "--credit", "4"])
        let payload = randomBytes(300 * 1024)
        let (submit, output) = try startSubmit(harness, certs, broker, client, payload: payload, name: "job")
        try await waitUntil("50 results") { fileSize(output) >= 50 * 1024 }
        try certs.revoke(revoked)
        // The broker sees the change by content within about a second, and sends w1 away.
        try await broker.child.waitForLine(containing: "key revoked", "key=\(revoked.fingerprint)")
        let w1End = try await w1.waitForExit(timeout: .seconds(15))
        #expect(!w1End.succeeded)
        #expect(w1.output(.stderr).contains("revoked"))
        let finished = try await submit.waitForExit(timeout: .seconds(60))
        #expect(finished.succeeded, "\(submit.transcript())")
        let equal = try [UInt8](Data(contentsOf: URL(fileURLWithPath: output))) == payload
        #expect(equal)
        #expect(submit.output(.stderr).contains("duplicates:     0"))
    }

    @Test func jobSurvivesABrokerKilledAndRestarted() async throws {
        let harness = try ProcessHarness("restart")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let peers = try (1...2).map { try certs.worker("w\($0)") }
        let broker = try await harness.startBroker(certs)
        for peer in peers {
            _ = try await harness.startWorker(peer, certs: certs, broker: broker, service: "echo",
                                              arguments: ["--delay-ms", "20", "--credit", "4"])
        }
        let payload = randomBytes(300 * 1024)
        let (submit, output) = try startSubmit(harness, certs, broker, client, payload: payload, name: "job")
        try await waitUntil("50 results") { fileSize(output) >= 50 * 1024 }
        broker.child.kill()
        _ = try await broker.child.waitForExit(timeout: .seconds(10))
        let restarted = try await harness.startBroker(certs, port: broker.port, name: "broker-again")
        let finished = try await submit.waitForExit(timeout: .seconds(90))
        #expect(finished.succeeded, "\(submit.transcript())\n\(restarted.child.transcript())")
        let gathered = try [UInt8](Data(contentsOf: URL(fileURLWithPath: output)))
        let equal = gathered == payload
        #expect(equal, "\(firstDifference(gathered, payload))")
        #expect(!submit.output(.stderr).contains("resubmitted:    0"), "the client resubmitted what the dead broker held")
    }

    @Test func sigtermDrainsInFlightWorkAndRefusesTheRest() async throws {
        let harness = try ProcessHarness("drain")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let worker = try certs.worker("w1")
        let broker = try await harness.startBroker(certs, arguments: ["--drain-timeout", "5"])
        _ = try await harness.startWorker(worker, certs: certs, broker: broker, service: "echo",
                                          arguments: ["--delay-ms", "50", "--credit", "4"])
        let payload = randomBytes(200 * 1024)
        let (submit, output) = try startSubmit(harness, certs, broker, client, payload: payload, name: "job")
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
