import Foundation
import SMQKeys
import Testing

/// A rolling rotation of the broker's key (issue 12), with real `secure-broker` and `smq`
/// processes on 127.0.0.1: serve the old and the new key on two endpoints, move the worker to
/// the new one, then restart the broker with the new key only. Jobs running throughout complete
/// byte-exact, and afterwards the old key no longer completes a handshake.
@Suite(.timeLimit(.minutes(3)))
struct KeyRotationProcessTests {
    /// `--broker ENDPOINT --broker-key KEY --cert PEER`: one endpoint and the key it serves.
    func peerArguments(_ peer: TestPeer, endpoint: String, brokerKey: TestPeer) -> [String] {
        ["--broker", endpoint, "--broker-key", brokerKey.publicPath, "--cert", peer.secretPath]
    }

    /// Starts `secure-broker` on fixed ports (a restart takes the same ones) and waits until it listens.
    func startBroker(_ harness: ProcessHarness, _ certs: TestCertificates, _ endpoints: [(port: Int, key: TestPeer)],
                     name: String) async throws -> ChildProcess {
        var arguments = ["--allowlist", certs.allowlist, "--log-level", "info"]
        for (port, _) in endpoints { arguments += ["--endpoint", "tcp://127.0.0.1:\(port)"] }
        for (_, key) in endpoints { arguments += ["--cert", key.secretPath] }
        let broker = try harness.start("secure-broker", arguments, name: name)
        _ = try await broker.waitForLine(containing: "listening", "endpoints=")
        // Each endpoint is logged with the key it serves.
        for (port, key) in endpoints {
            let line = try #require(broker.lines(.stderr).first { $0.contains("serving endpoint") && $0.contains("endpoint=tcp://127.0.0.1:\(port) ") })
            #expect(line.contains("key=\(key.fingerprint)") && line.contains("cert=\(key.secretPath)"), "\(line)")
        }
        return broker
    }

    func startWorker(_ harness: ProcessHarness, _ broker: ChildProcess, _ peer: TestPeer, endpoint: String, brokerKey: TestPeer) async throws -> ChildProcess {
        let parts = ["worker ready", "key=\(peer.fingerprint) ", "service=echo "]
        let seen = broker.lines(.stderr).filter { line in parts.allSatisfy { line.contains($0) } }.count
        let worker = try harness.start("smq", ["worker", "--service", "echo", "--delay-ms", "20", "--credit", "4"]
                                       + peerArguments(peer, endpoint: endpoint, brokerKey: brokerKey), name: peer.name)
        try await broker.waitForLine(in: .stderr, occurrence: seen + 1, "'worker ready' for \(peer)") { line in parts.allSatisfy { line.contains($0) } }
        return worker
    }

    func startSubmit(_ harness: ProcessHarness, _ client: TestPeer, endpoint: String, brokerKey: TestPeer,
                     payload: [UInt8], name: String) throws -> (ChildProcess, output: String) {
        let input = try harness.write(payload, to: "\(name).in")
        let child = try harness.start("smq", ["submit", input, "--service", "echo", "--fragment-size", "1K", "--window", "16", "--output", "-"]
                                      + peerArguments(client, endpoint: endpoint, brokerKey: brokerKey), name: "submit-\(name)")
        return (child, child.stdoutPath)
    }

    func expectDeliveredExactlyOnce(_ submit: ChildProcess, output: String, payload: [UInt8], timeout: Duration = .seconds(90)) async throws {
        let finished = try await submit.waitForExit(timeout: timeout)
        #expect(finished == .exited(0), "\(submit.transcript())")
        let gathered = try [UInt8](Data(contentsOf: URL(fileURLWithPath: output)))
        let equal = gathered == payload
        #expect(equal, "\(firstDifference(gathered, payload))")
        #expect(submit.output(.stderr).contains("duplicates:     0"), "\(submit.transcript())")
    }

    @Test func aRollingRotationLosesNoJob() async throws {
        let harness = try ProcessHarness("key-rotation")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let old = certs.broker
        let new = try certs.peer("broker-new", metadata: [("name", "broker-new")], allowed: false)
        let client = try certs.client("client-1")
        let w1 = try certs.worker("w1")
        let w2 = try certs.worker("w2")
        let (oldPort, newPort) = (try freeLoopbackPort(), try freeLoopbackPort())
        let oldEndpoint = "tcp://127.0.0.1:\(oldPort)", newEndpoint = "tcp://127.0.0.1:\(newPort)"

        // 1. The broker serves the old key and, from now on, the new one beside it.
        let broker = try await startBroker(harness, certs, [(oldPort, old), (newPort, new)], name: "broker")
        let worker1 = try await startWorker(harness, broker, w1, endpoint: oldEndpoint, brokerKey: old)

        // 2. A job through the old endpoint (a client not yet moved), one through the new (moved).
        let jobA = randomBytes(300 * 1024), jobB = randomBytes(1500 * 1024)
        let (submitA, outputA) = try startSubmit(harness, client, endpoint: oldEndpoint, brokerKey: old, payload: jobA, name: "a")
        let (submitB, outputB) = try startSubmit(harness, client, endpoint: newEndpoint, brokerKey: new, payload: jobB, name: "b")
        try await waitUntil("30 results of job A") { fileSize(outputA) >= 30 * 1024 }

        // 3. The worker moves over: a new one on the new key, then the old one leaves (SIGTERM:
        //    it hands its fragments back, and the broker requeues them to the new worker).
        let worker2 = try await startWorker(harness, broker, w2, endpoint: newEndpoint, brokerKey: new)
        worker1.terminate()
        _ = try await worker1.waitForExit(timeout: .seconds(20))
        #expect(submitA.isRunning || fileSize(outputA) == jobA.count)
        try await expectDeliveredExactlyOnce(submitA, output: outputA, payload: jobA)

        // 4. Drop the old key: the broker comes back serving the new key only, on the same port.
        //    Job B spans the restart and completes through resubmission (a kill, as a crash would
        //    be; a SIGTERM restart keeps a running job too, C67, tested in FaultProcessTests).
        #expect(submitB.isRunning && fileSize(outputB) < jobB.count, "job B ended before the restart: nothing was tested")
        broker.kill()
        _ = try await broker.waitForExit(timeout: .seconds(10))
        let restarted = try await startBroker(harness, certs, [(newPort, new)], name: "broker-new-only")
        try await expectDeliveredExactlyOnce(submitB, output: outputB, payload: jobB, timeout: .seconds(120))
        #expect(worker2.isRunning, "the moved worker stays through the restart\n\(worker2.transcript())")

        // 5. After the rotation: a job with the new key runs; the old key fails its handshake on
        //    the new endpoint, and the old endpoint is gone.
        let jobC = randomBytes(20 * 1024)
        let (submitC, outputC) = try startSubmit(harness, client, endpoint: newEndpoint, brokerKey: new, payload: jobC, name: "c")
        try await expectDeliveredExactlyOnce(submitC, output: outputC, payload: jobC)
        let stale = try await harness.run("smq", ["submit", try harness.write(jobC, to: "stale.in"), "--service", "echo"]
                                          + peerArguments(client, endpoint: newEndpoint, brokerKey: old), name: "stale", timeout: .seconds(60))
        #expect(stale.termination != .exited(0), "\(stale.transcript)")
        #expect(stale.errorLines.first?.contains("handshake") == true, "\(stale.transcript)")
        #expect(!restarted.output(.stderr).contains(oldEndpoint))
        try await restarted.stop()
    }
}
