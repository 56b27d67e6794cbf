import Foundation
import Glibc
import Testing

/// `secure-broker`, `smq worker` and `smq submit` as separate processes on 127.0.0.1, with a
/// real allowlist directory: the way a user runs them.
@Suite struct SMQPipelineTests {
    @Test(.timeLimit(.minutes(2)))
    func submitAFileToUpperAndStopTheBrokerWithSIGTERM() async throws {
        let harness = try ProcessHarness("upper")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let worker = try certs.worker("upper-1", weight: 2)
        let client = try certs.client("client-1")
        let broker = try await harness.startBroker(certs)
        _ = try await harness.startWorker(worker, certs: certs, broker: broker, service: "upper")

        // Every byte value, a ragged last fragment: only a-z may change.
        let payload = randomBytes(1 << 20 + 4321)
        let input = try harness.write(payload, to: "input.bin")
        let output = harness.directory + "/output.bin"
        let result = try await harness.submit(input, as: client, certs: certs, broker: broker, service: "upper",
                                              arguments: ["--output", output, "--fragment-size", "64K"])
        #expect(result.termination == .exited(0), "\(result.transcript)")
        let expected = payload.map { $0 >= 0x61 && $0 <= 0x7A ? $0 - 0x20 : $0 }
        let produced = [UInt8]((try? Data(contentsOf: URL(fileURLWithPath: output))) ?? Data())
        // A Bool, not `produced == expected`: on failure Swift Testing would diff two megabytes.
        let upperCased = produced == expected
        #expect(upperCased, "OUT is not INPUT upper-cased: \(firstDifference(produced, expected))")
        #expect(result.stderr.contains("fragments:      17\n"), "\(result.transcript)")
        #expect(result.errorLines.isEmpty, "\(result.transcript)")

        // The broker says who joined, as what: key fingerprint, name, role, weight.
        let log = broker.child
        try await log.waitForLine(containing: "peer joined", "key=\(worker.fingerprint) ", "name=upper-1 ", "role=worker ", "weight=2")
        try await log.waitForLine(containing: "worker ready", "key=\(worker.fingerprint) ", "name=upper-1 ", "service=upper ", "weight=2")
        try await log.waitForLine(containing: "peer joined", "key=\(client.fingerprint) ", "name=client-1 ", "role=client ")

        log.terminate()
        let ended = try await log.waitForExit(timeout: .seconds(15))
        #expect(ended == .exited(0), "\(log.transcript())")
        try await log.waitForLine(containing: "stopped")
    }

    @Test(.timeLimit(.minutes(2)))
    func submitFromStdinToStdoutGivesEachFragmentsSHA256() async throws {
        let harness = try ProcessHarness("stdin")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let worker = try certs.worker("hash-1")
        let client = try certs.client("client-1")
        let broker = try await harness.startBroker(certs)
        _ = try await harness.startWorker(worker, certs: certs, broker: broker, service: "sha256")

        let fragment = 64 << 10
        let payload = randomBytes(4 * fragment + 37_857)
        let stdin = try harness.write(payload, to: "stdin.bin")
        // The expected digests from coreutils, one chunk file per fragment.
        var chunks: [String] = []
        for (number, start) in stride(from: 0, to: payload.count, by: fragment).enumerated() {
            chunks.append(try harness.write(Array(payload[start..<min(start + fragment, payload.count)]), to: "chunk-\(number)"))
        }
        let sums = try await harness.run(executable: "/usr/bin/sha256sum", chunks, name: "sha256sum")
        #expect(sums.termination == .exited(0), "\(sums.transcript)")
        let expected = try sums.stdoutText.split(separator: "\n").flatMap { line in
            try #require(Hex.bytes(line.prefix(64)), "sha256sum printed '\(line)'")
        }
        #expect(expected.count == 5 * 32)

        // smq spools stdin to a temporary file: keep it where this test can see it is removed.
        let temporary = harness.directory + "/tmp"
        try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: true)
        let result = try await harness.submit("-", as: client, certs: certs, broker: broker, service: "sha256",
                                              arguments: ["--output", "-", "--fragment-size", "64K"], stdin: stdin,
                                              environment: ["TMPDIR": temporary])
        #expect(result.termination == .exited(0), "\(result.transcript)")
        let digests = [UInt8](result.stdout) == expected
        #expect(digests, "stdout is not the fragments' SHA-256s: \(firstDifference([UInt8](result.stdout), expected))")
        #expect(result.stderr.contains("fragments:      5\n"), "\(result.transcript)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: temporary).isEmpty, "smq left its stdin spool behind")
    }

    @Test(.timeLimit(.minutes(2)))
    func perWorkerCountsAddUpToTheFragmentCount() async throws {
        let harness = try ProcessHarness("per-worker")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let light = try certs.worker("light", weight: 1)
        let heavy = try certs.worker("heavy", weight: 3)
        let client = try certs.client("client-1")
        let broker = try await harness.startBroker(certs)
        _ = try await harness.startWorker(light, certs: certs, broker: broker, service: "sha256")
        _ = try await harness.startWorker(heavy, certs: certs, broker: broker, service: "sha256")

        let input = try harness.write(randomBytes(2 << 20), to: "input.bin")
        let result = try await harness.submit(input, as: client, certs: certs, broker: broker, service: "sha256",
                                              arguments: ["--per-worker", "--fragment-size", "32K"])
        #expect(result.termination == .exited(0), "\(result.transcript)")
        let fragments = try #require(Summary.value("fragments", in: result.stderr), "no fragment count\n\(result.transcript)")
        #expect(fragments == 64)

        // "worker <fingerprint>: <n> fragments", one line per worker key.
        var counts: [String: Int] = [:]
        for line in result.stderr.split(separator: "\n") where line.hasPrefix("worker ") && line.hasSuffix(" fragments") {
            let body = line.dropFirst("worker ".count).dropLast(" fragments".count)
            guard let colon = body.range(of: ": ", options: .backwards), let count = Int(body[colon.upperBound...]) else {
                Issue.record("unreadable per-worker line '\(line)'")
                continue
            }
            counts[String(body[..<colon.lowerBound]), default: 0] += count
        }
        #expect(counts.values.reduce(0, +) == fragments, "\(counts)\n\(result.transcript)")
        #expect(Set(counts.keys) == [light.fingerprint, heavy.fingerprint],
                "per-worker lines name \(counts.keys.sorted()), the workers are \(light) and \(heavy)\n\(result.transcript)")
    }
}

@Suite struct SMQRefusalTests {
    @Test(.timeLimit(.minutes(2)))
    func aClientOffTheAllowlistIsRefused() async throws {
        let harness = try ProcessHarness("stranger")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let stranger = try certs.client("stranger", allowed: false)
        _ = try certs.client("client-1")
        let broker = try await harness.startBroker(certs)
        let input = try harness.write(randomBytes(1000), to: "input.bin")

        let result = try await harness.submit(input, as: stranger, certs: certs, broker: broker, service: "sha256")
        #expect(result.termination == .exited(1), "\(result.transcript)")
        let error = try #require(result.errorLines.first, "no 'Error: ' line\n\(result.transcript)")
        #expect(error.contains("allowlist"), "'\(error)' does not mention the allowlist")
        #expect(error.contains(stranger.fingerprint), "'\(error)' does not say which key was refused")
        try await broker.child.waitForLine(containing: "peer denied", "key=\(stranger.fingerprint) ", "not on the allowlist")
        #expect(!broker.child.output(.stderr).contains("peer joined"), "\(broker.child.transcript())")
    }

    @Test(.timeLimit(.minutes(2)))
    func aWrongBrokerKeyFailsTheHandshake() async throws {
        let harness = try ProcessHarness("wrong-key")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let impostor = try certs.client("impostor", allowed: false)
        let broker = try await harness.startBroker(certs)
        let input = try harness.write(randomBytes(1000), to: "input.bin")

        let result = try await harness.run("smq", [
            "submit", input, "--service", "sha256", "--quiet",
            "--broker", broker.endpoint, "--broker-key", impostor.publicPath, "--cert", client.secretPath,
        ], timeout: .seconds(60))
        #expect(result.termination == .exited(1), "\(result.transcript)")
        let error = try #require(result.errorLines.first, "no 'Error: ' line\n\(result.transcript)")
        #expect(error.contains("handshake"), "'\(error)' does not mention the handshake")
        #expect(!broker.child.output(.stderr).contains("peer joined"), "\(broker.child.transcript())")
    }

    @Test(.timeLimit(.minutes(2)))
    func anUnreachableBrokerIsReportedWithinTheConnectTimeout() async throws {
        let harness = try ProcessHarness("unreachable")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let input = try harness.write(randomBytes(1000), to: "input.bin")
        // Port 1: nothing listens there, and no other test can bind it between a "free port" probe
        // and this connect (a fresh-clone CI run once met another test's broker on such a port).
        let endpoint = "tcp://127.0.0.1:1"

        let result = try await harness.run("smq", [
            "submit", input, "--quiet", "--connect-timeout", "1",
            "--broker", endpoint, "--broker-key", certs.broker.publicPath, "--cert", client.secretPath,
        ])
        #expect(result.termination == .exited(1), "\(result.transcript)")
        let error = try #require(result.errorLines.first, "no 'Error: ' line\n\(result.transcript)")
        // Refused outright (issue 11: "nothing is listening", within about a second) or, on a
        // loaded machine, the 1 s connect timeout first: either way the endpoint and the question.
        #expect(error.contains(endpoint) && error.contains("running"), "'\(error)'")
    }

    @Test(.timeLimit(.minutes(2)))
    func aWorkerWithAClientKeyIsSentAway() async throws {
        let harness = try ProcessHarness("client-as-worker")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let broker = try await harness.startBroker(certs)

        let worker = try await harness.startWorker(client, certs: certs, broker: broker, service: "upper", waitUntilReady: false)
        let ended = try await worker.waitForExit()
        #expect(ended == .exited(1), "\(worker.transcript())")
        let errors = worker.lines(.stderr).filter { $0.hasPrefix("Error: ") }
        let error = try #require(errors.first, "no 'Error: ' line\n\(worker.transcript())")
        #expect(error.contains("client"), "'\(error)' does not say the key is a client's")
        try await broker.child.waitForLine(containing: "role violation", "key=\(client.fingerprint) ", "role=client")
        #expect(!broker.child.output(.stderr).contains("worker ready"), "\(broker.child.transcript())")
    }
}

@Suite struct SMQDemoTests {
    @Test(.timeLimit(.minutes(2)))
    func theDemoRunsEndToEnd() async throws {
        let harness = try ProcessHarness("demo")
        defer { harness.tearDown() }
        let temporary = harness.directory + "/tmp"
        try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: true)
        let result = try await harness.run("smq", ["demo", "--size", "4M"], environment: ["TMPDIR": temporary], timeout: .seconds(90))
        #expect(result.termination == .exited(0), "\(result.transcript)")
        let lines = result.stdoutText.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.hasPrefix("OK:") }, "\(result.transcript)")
        #expect(lines.contains { $0.contains("fragments:      16 of 16, in order; 0 mismatched") }, "\(result.transcript)")

        // "   worker-2 (weight 2): 5 fragments (31.2 %)"
        var counts: [String: Int] = [:]
        for line in lines {
            let words = line.split(separator: " ")
            guard words.count >= 5, words[0].hasPrefix("worker-"), words[1] == "(weight", words[4] == "fragments",
                  let count = Int(words[3]) else { continue }
            counts["\(words[0]) \(words[1]) \(words[2])"] = count
        }
        #expect(Set(counts.keys) == ["worker-1 (weight 1):", "worker-2 (weight 2):", "worker-3 (weight 4):"], "\(result.transcript)")
        #expect(counts.values.reduce(0, +) == 16, "\(counts)")
        #expect(lines.contains { $0.contains("broker exited with status 0") }, "\(result.transcript)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: temporary).isEmpty, "the demo left files behind")
    }
}

/// `smq submit`'s summary on stderr: `name:   value`.
enum Summary {
    static func value(_ name: String, in text: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + ":") {
            return Int(line.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces))
        }
        return nil
    }
}

enum Hex {
    static func bytes(_ text: some StringProtocol) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        for index in stride(from: 0, to: digits.count, by: 2) {
            guard let value = UInt8(String(decoding: digits[index...index + 1], as: UTF8.self), radix: 16) else { return nil }
            bytes.append(value)
        }
        return bytes
    }
}
