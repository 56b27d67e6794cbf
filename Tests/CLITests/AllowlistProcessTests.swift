import Foundation
import Glibc
import Testing

/// Issue 15: the allowlist fails closed, seen from outside. A real `secure-broker`, `smq worker`
/// and `smq submit`, keys made on disk, and an operator who renames files in `allowed/`.
@Suite(.timeLimit(.minutes(2)))
struct AllowlistProcessTests {
    /// The broker re-reads the allowlist by content every second; this bounds how long a change
    /// may take to reach a peer (generous for a loaded machine, never a sleep).
    static let reloadBound: Duration = .seconds(20)

    @Test func renamingAWorkersKeyFileRevokesItsLiveConnection() async throws {
        let harness = try ProcessHarness("rename-revokes")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let worker = try certs.worker("w1")
        let broker = try await harness.startBroker(certs)
        let workerProcess = try await harness.startWorker(worker, certs: certs, broker: broker, service: "echo")

        // The worker serves a client first: the key works before it is revoked.
        let input = try harness.write(randomBytes(4000), to: "input.bin")
        let before = try await harness.submit(input, as: client, certs: certs, broker: broker, service: "echo")
        #expect(before.termination == .exited(0), "\(before.transcript)")

        // The operator's reflex: rename, not delete.
        let path = certs.allowlistPath(of: worker)
        #expect(rename(path, path + ".revoked") == 0)

        try await broker.child.waitForLine(containing: "key revoked", "key=\(worker.fingerprint)", timeout: Self.reloadBound)
        try await broker.child.waitForLine(containing: "skipping an allowlist entry that is not a certificate", "w1.key.revoked",
                                           timeout: Self.reloadBound)
        let ended = try await workerProcess.waitForExit(timeout: Self.reloadBound)
        #expect(ended != .exited(0), "\(workerProcess.transcript())")
        let said = workerProcess.output(.stderr)
        #expect(said.contains("revoked") || said.contains("rejected") || said.contains("allowlist"), "\(workerProcess.transcript())")
        // The skip is logged by the reload that saw the rename, not by the polls after it (the
        // unit tests pin "once" down exactly; here it must at least not have repeated yet).
        let skips = broker.child.lines(.stderr).filter { $0.contains("skipping an allowlist entry") && $0.contains("w1.key.revoked") }
        #expect(skips.count == 1, "\(broker.child.transcript())")
        #expect(broker.child.isRunning)
    }

    @Test func aDirectoryWithNoValidKeyRefusesANewClient() async throws {
        let harness = try ProcessHarness("no-valid-key")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let worker = try certs.worker("w1")
        let broker = try await harness.startBroker(certs)
        let workerProcess = try await harness.startWorker(worker, certs: certs, broker: broker, service: "echo")
        let input = try harness.write(randomBytes(1000), to: "input.bin")
        let before = try await harness.submit(input, as: client, certs: certs, broker: broker, service: "echo")
        #expect(before.termination == .exited(0), "\(before.transcript)")

        // Every key renamed away, a README left behind: no valid certificate remains.
        for name in try FileManager.default.contentsOfDirectory(atPath: certs.allowlist) {
            let path = certs.allowlist + "/" + name
            #expect(rename(path, path + ".disabled") == 0)
        }
        try "Public certificates of the peers this broker admits.\n".write(toFile: certs.allowlist + "/README", atomically: false, encoding: .utf8)
        try await broker.child.waitForLine(containing: "the allowlist admits no one", timeout: Self.reloadBound)

        let after = try await harness.submit(input, as: client, certs: certs, broker: broker, service: "echo",
                                             timeout: Self.reloadBound)
        #expect(after.termination == .exited(1), "\(after.transcript)")
        let error = try #require(after.errorLines.first, "no 'Error: ' line\n\(after.transcript)")
        #expect(error.contains("allowlist"), "'\(error)' does not say the allowlist refused it")
        // Refused handshakes are logged once per address and reason per interval (the worker's
        // reconnections may have taken this address's line), so any refusal line will do.
        try await broker.child.waitForLine(containing: "peer denied", timeout: Self.reloadBound)
        // The worker, gone from the allowlist too, was sent away.
        #expect(try await workerProcess.waitForExit(timeout: Self.reloadBound) != .exited(0))
        #expect(broker.child.isRunning)
    }
}
