import Foundation
import Testing

/// `smq` given several brokers (issue 12): `--broker` repeated with one `--broker-key` for all or
/// one per broker, `--brokers FILE`, comma-separated `SMQ_BROKER`/`SMQ_BROKER_KEY`. The rules are
/// read back through `--print-config` (no broker needed); the commands then run against live and
/// dead brokers.
@Suite struct SeveralBrokersOptionTests {
    /// No variable of the test runner's leaks into the child: empty means unset to `smq`.
    static let clean = ["SMQ_BROKER": "", "SMQ_BROKER_KEY": "", "SMQ_CERT": ""]

    /// The `  ENDPOINT KEYFILE` lines of `--print-config`, and its `brokers (from …):` heading.
    struct Printed {
        let source: String
        let pairs: [[String]]

        init(_ result: Finished) throws {
            let lines = result.stdoutText.split(separator: "\n").map(String.init)
            let heading = try #require(lines.first { $0.hasPrefix("brokers (from ") }, "no brokers heading\n\(result.transcript)")
            source = String(heading.dropFirst("brokers (from ".count).dropLast(2))
            pairs = lines.filter { $0.hasPrefix("  ") }.map { $0.split(separator: " ").map(String.init) }
        }
    }

    func printConfig(_ harness: ProcessHarness, _ arguments: [String], environment: [String: String] = [:]) async throws -> Finished {
        try await harness.run("smq", ["ping", "--print-config", "--cert", "me.key_secret"] + arguments,
                              environment: Self.clean.merging(environment) { $1 })
    }

    /// Exit 64 (a usage error), exactly one `Error:` line, containing every one of `parts`.
    func expectUsageError(_ result: Finished, _ parts: String..., sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.termination == .exited(64), "\(result.transcript)", sourceLocation: sourceLocation)
        #expect(result.errorLines.count == 1, "\(result.transcript)", sourceLocation: sourceLocation)
        for part in parts {
            #expect(result.errorLines.first?.contains(part) == true, "no '\(part)' in the error\n\(result.transcript)", sourceLocation: sourceLocation)
        }
        #expect(result.stdout.isEmpty, "\(result.transcript)", sourceLocation: sourceLocation)
    }

    @Test(.timeLimit(.minutes(2)))
    func oneKeyServesEveryBrokerOrOneKeyPerBrokerInOrder() async throws {
        let harness = try ProcessHarness("brokers-pairing")
        defer { harness.tearDown() }
        let shared = try await printConfig(harness, ["--broker", "tcp://127.0.0.1:7001", "--broker", "tcp://127.0.0.1:7002", "--broker-key", "k.key"])
        #expect(shared.termination == .exited(0), "\(shared.transcript)")
        let sharedPrinted = try Printed(shared)
        #expect(sharedPrinted.pairs == [["tcp://127.0.0.1:7001", "k.key"], ["tcp://127.0.0.1:7002", "k.key"]], "\(shared.transcript)")
        #expect(sharedPrinted.source == "--broker, keys from --broker-key", "\(shared.transcript)")

        let paired = try await printConfig(harness, ["--broker", "tcp://127.0.0.1:7001", "--broker-key", "a.key",
                                                     "--broker", "tcp://127.0.0.1:7002", "--broker-key", "b.key",
                                                     "--broker", "ipc:///tmp/c", "--broker-key", "c.key"])
        #expect(paired.termination == .exited(0), "\(paired.transcript)")
        #expect(try Printed(paired).pairs == [["tcp://127.0.0.1:7001", "a.key"], ["tcp://127.0.0.1:7002", "b.key"], ["ipc:///tmp/c", "c.key"]],
                "\(paired.transcript)")

        // Three brokers, two keys: which key belongs to which broker cannot be guessed.
        let mismatched = try await printConfig(harness, ["--broker", "tcp://127.0.0.1:7001", "--broker", "tcp://127.0.0.1:7002",
                                                         "--broker", "tcp://127.0.0.1:7003", "--broker-key", "a.key", "--broker-key", "b.key"])
        expectUsageError(mismatched, "3 brokers (--broker) but 2 keys (--broker-key)", "one key for all brokers, or exactly one per broker")
        // One broker, two keys: as wrong.
        let extraKey = try await printConfig(harness, ["--broker", "tcp://127.0.0.1:7001", "--broker-key", "a.key", "--broker-key", "b.key"])
        expectUsageError(extraKey, "1 broker (--broker) but 2 keys")

        let twice = try await printConfig(harness, ["--broker", "tcp://127.0.0.1:7001", "--broker", "tcp://127.0.0.1:7001", "--broker-key", "a.key"])
        expectUsageError(twice, "tcp://127.0.0.1:7001 is given twice")
    }

    @Test(.timeLimit(.minutes(2)))
    func aBrokersFileNamesEndpointsAndKeysWithCommentsAndAnErrorNamesItsLine() async throws {
        let harness = try ProcessHarness("brokers-file")
        defer { harness.tearDown() }
        let file = try harness.write(Array("""
            # production brokers
            tcp://10.0.0.1:5555 keys/broker-a.key

            tcp://10.0.0.2:5555\t/etc/smq/broker-b.key   # the new key
            \ttcp://10.0.0.3:5555 keys/b#c.key\r

            """.utf8), to: "brokers.txt")
        let read = try await printConfig(harness, ["--brokers", file])
        #expect(read.termination == .exited(0), "\(read.transcript)")
        let printed = try Printed(read)
        // A relative key is relative to the file's directory; '#' inside a word is not a comment.
        #expect(printed.pairs == [["tcp://10.0.0.1:5555", harness.directory + "/keys/broker-a.key"],
                                  ["tcp://10.0.0.2:5555", "/etc/smq/broker-b.key"],
                                  ["tcp://10.0.0.3:5555", harness.directory + "/keys/b#c.key"]], "\(read.transcript)")
        #expect(printed.source == "--brokers \(file)", "\(read.transcript)")

        let bad = try harness.write(Array("tcp://10.0.0.1:5555 a.key\n# fine\ntcp://10.0.0.2:5555\n".utf8), to: "bad.txt")
        expectUsageError(try await printConfig(harness, ["--brokers", bad]), "\(bad):3: expected 'ENDPOINT KEYFILE', got 1 field")
        let three = try harness.write(Array("tcp://10.0.0.1:5555 a.key extra\n".utf8), to: "three.txt")
        expectUsageError(try await printConfig(harness, ["--brokers", three]), "\(three):1: expected 'ENDPOINT KEYFILE', got 3 fields")
        let repeated = try harness.write(Array("tcp://10.0.0.1:5555 a.key\n\ntcp://10.0.0.1:5555 b.key\n".utf8), to: "repeated.txt")
        expectUsageError(try await printConfig(harness, ["--brokers", repeated]), "\(repeated):3: tcp://10.0.0.1:5555 is already listed on line 1")
        let empty = try harness.write(Array("# nothing yet\n\n".utf8), to: "empty.txt")
        expectUsageError(try await printConfig(harness, ["--brokers", empty]), "lists no brokers")
        expectUsageError(try await printConfig(harness, ["--brokers", harness.directory + "/missing.txt"]), "cannot read --brokers", "missing.txt")
        // The file is the whole list: mixing it with the flags is a mistake, said at once.
        expectUsageError(try await printConfig(harness, ["--brokers", file, "--broker", "tcp://10.0.0.9:5555"]),
                         "either with --brokers FILE or with --broker/--broker-key, not both")
        // ... and the environment is not read (a flag wins over its variable).
        let withEnvironment = try await printConfig(harness, ["--brokers", file], environment: ["SMQ_BROKER": "tcp://10.9.9.9:1"])
        #expect(try Printed(withEnvironment).pairs.map { $0[0] } == ["tcp://10.0.0.1:5555", "tcp://10.0.0.2:5555", "tcp://10.0.0.3:5555"],
                "\(withEnvironment.transcript)")
    }


    @Test(.timeLimit(.minutes(2)))
    func theEnvironmentTakesCommaSeparatedListsWithTheSamePairingAndFlagsWin() async throws {
        let harness = try ProcessHarness("brokers-env")
        defer { harness.tearDown() }
        let both = try await printConfig(harness, [], environment: [
            "SMQ_BROKER": "tcp://127.0.0.1:7001, tcp://127.0.0.1:7002", "SMQ_BROKER_KEY": "a.key,b.key",
        ])
        #expect(both.termination == .exited(0), "\(both.transcript)")
        let printed = try Printed(both)
        #expect(printed.pairs == [["tcp://127.0.0.1:7001", "a.key"], ["tcp://127.0.0.1:7002", "b.key"]], "\(both.transcript)")
        #expect(printed.source == "SMQ_BROKER, keys from SMQ_BROKER_KEY", "\(both.transcript)")

        expectUsageError(try await printConfig(harness, [], environment: ["SMQ_BROKER": "tcp://127.0.0.1:7001,,tcp://127.0.0.1:7002"]),
                         "SMQ_BROKER has an empty item")
        expectUsageError(try await printConfig(harness, [], environment: [
            "SMQ_BROKER": "tcp://127.0.0.1:7001,tcp://127.0.0.1:7002,tcp://127.0.0.1:7003", "SMQ_BROKER_KEY": "a.key,b.key",
        ]), "3 brokers (SMQ_BROKER) but 2 keys (SMQ_BROKER_KEY)")

        // Flags win, endpoints and keys each on their own: two --broker flags with the variable's two keys.
        let mixed = try await printConfig(harness, ["--broker", "tcp://127.0.0.1:8001", "--broker", "tcp://127.0.0.1:8002"], environment: [
            "SMQ_BROKER": "tcp://127.0.0.1:7001", "SMQ_BROKER_KEY": "a.key,b.key",
        ])
        #expect(try Printed(mixed).pairs == [["tcp://127.0.0.1:8001", "a.key"], ["tcp://127.0.0.1:8002", "b.key"]], "\(mixed.transcript)")
        // Nothing given: today's single default broker.
        let defaults = try await printConfig(harness, [])
        #expect(try Printed(defaults).pairs == [["tcp://127.0.0.1:5555", "certs/broker.key"]], "\(defaults.transcript)")
    }
}

/// The commands that connect, against live and dead brokers.
@Suite struct SeveralBrokersProcessTests {
    @Test(.timeLimit(.minutes(2)))
    func pingAndStatusAskEveryBrokerAndFailWhenOneIsSilent() async throws {
        let harness = try ProcessHarness("ping-several")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("ping-client")
        let worker = try certs.worker("ping-worker")
        let first = try await harness.startBroker(certs, name: "broker-1")
        let second = try await harness.startBroker(certs, name: "broker-2")
        _ = try await harness.startWorker(worker, certs: certs, broker: second, service: "upper")
        let key = ["--broker-key", certs.broker.publicPath, "--cert", client.secretPath, "--connect-timeout", "2"]

        let both = try await harness.run("smq", ["ping", "--broker", first.endpoint, "--broker", second.endpoint] + key)
        #expect(both.termination == .exited(0), "\(both.transcript)")
        let lines = both.stdoutText.split(separator: "\n")
        #expect(lines.count == 2 && lines[0].hasPrefix("pong from \(first.endpoint): round trip ")
                && lines[1].hasPrefix("pong from \(second.endpoint): round trip "), "\(both.transcript)")

        let status = try await harness.run("smq", ["status", "--json", "--broker", first.endpoint, "--broker", second.endpoint] + key)
        #expect(status.termination == .exited(0), "\(status.transcript)")
        let reports = status.stdoutText.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(reports.map { $0["broker"] as? String } == [first.endpoint, second.endpoint], "\(status.transcript)")
        let services = reports.map { (($0["status"] as? [String: Any])?["services"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String } }
        #expect(services == [[], ["upper"]], "\(status.transcript)")

        // Nothing listens at port 1: that broker gets its line, and the exit status says so.
        let dead = "tcp://127.0.0.1:1"
        let partly = try await harness.run("smq", ["ping", "--broker", first.endpoint, "--broker", dead] + key)
        #expect(partly.termination == .exited(1), "\(partly.transcript)")
        let partlyLines = partly.stdoutText.split(separator: "\n")
        #expect(partlyLines.count == 2 && partlyLines[0].hasPrefix("pong from \(first.endpoint)")
                && partlyLines[1].hasPrefix("no answer from \(dead): "), "\(partly.transcript)")
        #expect(partly.errorLines == ["Error: 1 of 2 brokers did not answer"], "\(partly.transcript)")
        let partlyStatus = try await harness.run("smq", ["status", "--broker", dead, "--broker", second.endpoint] + key)
        #expect(partlyStatus.termination == .exited(1), "\(partlyStatus.transcript)")
        #expect(partlyStatus.stdoutText.contains("broker \(dead): no answer: "), "\(partlyStatus.transcript)")
        #expect(partlyStatus.stdoutText.contains("broker \(second.endpoint):\n  SERVICE"), "\(partlyStatus.transcript)")
        #expect(partlyStatus.errorLines.count == 1, "\(partlyStatus.transcript)")
    }

    @Test(.timeLimit(.minutes(3)))
    func submitWithALiveBrokerAndADeadEndpointCompletesThroughTheLiveOne() async throws {
        let harness = try ProcessHarness("submit-several")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("several-client")
        let worker = try certs.worker("several-worker")
        let broker = try await harness.startBroker(certs)
        _ = try await harness.startWorker(worker, certs: certs, broker: broker, service: "upper")
        let payload = randomBytes(300 * 4096 + 17)
        let input = try harness.write(payload, to: "input.bin")
        let output = harness.directory + "/output.bin"
        // The dead endpoint first: a client that used only the first broker would fail here.
        let result = try await harness.run("smq", [
            "submit", input, "--service", "upper", "--output", output, "--fragment-size", "4K",
            "--broker", "tcp://127.0.0.1:1", "--broker", broker.endpoint, "--broker-key", certs.broker.publicPath,
            "--cert", client.secretPath, "--connect-timeout", "20",
        ], name: "submit", environment: SeveralBrokersOptionTests.clean, timeout: .seconds(90))
        #expect(result.termination == .exited(0), "\(result.transcript)")
        let produced = [UInt8]((try? Data(contentsOf: URL(fileURLWithPath: output))) ?? Data())
        let upperCased = produced == payload.map { $0 >= 0x61 && $0 <= 0x7A ? $0 - 0x20 : $0 }
        #expect(upperCased, "output is not the input upper-cased: \(firstDifference(produced, payload))\n\(result.transcript)")
        #expect(result.stderr.contains("fragments:      301\n"), "\(result.transcript)")
    }

    /// One `smq worker` given two brokers (one key each, paired in order) registers at both and
    /// serves a job submitted through either.
    @Test(.timeLimit(.minutes(3)))
    func oneWorkerServesTwoBrokersWithTheirOwnKeys() async throws {
        let harness = try ProcessHarness("worker-several")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let second = try TestCertificates(in: harness.directory + "/second")
        let worker = try certs.worker("two-broker-worker")
        let client = try certs.client("two-broker-client")
        try second.allow(worker)
        try second.allow(client)
        let first = try await harness.startBroker(certs, name: "broker-1")
        let other = try await harness.startBroker(second, name: "broker-2")
        let brokers = try harness.write(Array("""
            # the second broker has a key of its own
            \(first.endpoint) \(certs.broker.publicPath)
            \(other.endpoint) \(second.broker.publicPath)

            """.utf8), to: "brokers.txt")
        let child = try harness.start("smq", ["worker", "--service", "upper", "--brokers", brokers, "--cert", worker.secretPath],
                                      name: worker.name, environment: SeveralBrokersOptionTests.clean)
        for broker in [first, other] {
            try await broker.child.waitForLine(containing: "worker ready", "key=\(worker.fingerprint) ", "service=upper ")
        }
        _ = try await child.waitForLine(containing: "split over 2 brokers", in: .stdout)
        for (broker, keys) in [(first, certs), (other, second)] {
            let input = try harness.write(Array("through \(broker.endpoint)".utf8), to: "input-\(broker.port)")
            let result = try await harness.run("smq", [
                "submit", input, "--service", "upper", "--output", "-", "--broker", broker.endpoint,
                "--broker-key", keys.broker.publicPath, "--cert", client.secretPath,
            ], name: "submit-\(broker.port)", environment: SeveralBrokersOptionTests.clean)
            #expect(result.termination == .exited(0), "\(result.transcript)")
            #expect(result.stdoutText == "THROUGH \(broker.endpoint.uppercased())", "\(result.transcript)")
        }
    }

    /// `smq demo --brokers 3`: three brokers, the one holding the job killed with SIGKILL a
    /// quarter of the way through a 320-fragment job; the job completes byte-exact through the
    /// others (the loopback variant of issue 12's kill -9 check).
    @Test(.timeLimit(.minutes(3)))
    func theDemoKillsTheBrokerHoldingTheJobAndTheJobCompletesThroughTheOthers() async throws {
        let harness = try ProcessHarness("demo-brokers")
        defer { harness.tearDown() }
        let temporary = harness.directory + "/tmp"
        try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: true)
        let result = try await harness.run("smq", ["demo", "--brokers", "3", "--size", "10M", "--fragment-size", "32K", "--heartbeat-ms", "500"],
                                           environment: ["TMPDIR": temporary], timeout: .seconds(150))
        #expect(result.termination == .exited(0), "\(result.transcript)")
        let lines = result.stdoutText.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.hasPrefix("   SIGKILL to broker-") && $0.contains("after 80 of 320 results") }, "\(result.transcript)")
        #expect(lines.contains { $0.contains("fragments:      320 of 320, in order; 0 mismatched") }, "\(result.transcript)")
        #expect(lines.contains { $0.hasPrefix("OK: every fragment came back, in order, and matches the local SHA-256.") }, "\(result.transcript)")
        #expect(lines.contains { $0.hasPrefix("OK: broker-") && $0.contains("was killed mid-job; the job completed byte-exact through the other 2") },
                "\(result.transcript)")
        #expect(lines.contains { $0.hasPrefix("   brokers exited: ") && $0.contains("killed") }, "\(result.transcript)")
        // The killed broker held fragments in flight: they were sent again through another one.
        let resubmitted = lines.first { $0.hasPrefix("   resubmitted:") }.flatMap { Int($0.split(separator: " ")[1]) }
        #expect((resubmitted ?? 0) > 0, "\(result.transcript)")
        #expect(result.stderr.contains("broker lost; moving its unanswered fragments"), "\(result.transcript)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: temporary).isEmpty, "the demo left files behind")
    }
}
