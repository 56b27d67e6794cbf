import Foundation
import Glibc
import Testing

/// Issue 11: what a user meets when something goes wrong — bad input, no broker, a job that
/// takes too long, Ctrl-C — tried with the real binaries on 127.0.0.1. Every wait is bounded;
/// speed is measured in the report, not asserted here.
@Suite struct UserFailureProcessTests {
    /// Each of these trapped (SIGILL), hung or spooled without bound before; now each is one
    /// `Error:` line and ArgumentParser's validation status, 64, before anything is opened.
    @Test(.timeLimit(.minutes(2)), arguments: [
        ["submit", "f", "--fragment-size", "5G"],
        ["submit", "f", "--fragment-size", "0"],
        ["submit", "f", "--connect-timeout", "1e300"],
        ["submit", "f", "--connect-timeout", "nan"],
        ["submit", "f", "--connect-timeout", "inf"],
        ["submit", "f", "--connect-timeout=-1"],
        ["submit", "f", "--window", "0"],
        ["submit", "f", "--window", "99999999999999999999"],
        ["submit", "f", "--deadline", "0"],
        ["submit", "f", "--deadline", "-inf"],
        ["submit", "f", "--deadline", "1e300"],
        ["submit", "f", "--stdin-limit", "9999999999999999999999G"],
        ["worker", "--heartbeat-ms", "5"],
        ["worker", "--credit", "9223372036854775807"],
        ["worker", "--delay-ms=-1"],
        ["demo", "--size", "1e300"],
        ["demo", "--window", "0"],
        ["bench", "run", "--seconds", "inf"],
        ["bench", "run", "--size", "5000000000"],
        ["bench", "run", "--timeout", "nan"],
    ])
    func trapInputsEndWithOneErrorLineAndStatus64(arguments: [String]) async throws {
        let harness = try ProcessHarness("traps")
        defer { harness.tearDown() }
        let needsPeer = arguments.first == "submit" || arguments.first == "worker"
        let result = try await harness.run("smq", arguments + (needsPeer ? ["--cert", "/nonexistent/key_secret"] : []), name: "smq")
        #expect(result.termination == .exited(64), "\(result.transcript)")
        #expect(result.errorLines.count == 1, "\(result.transcript)")
    }

    /// A malformed endpoint is named, with the form to use, by the library (so every role says
    /// it), not `errno 22`.
    @Test(.timeLimit(.minutes(2)), arguments: ["127.0.0.1:5555", "tcp//127.0.0.1:5555", "tcp://127.0.0.1", "tcp://127.0.0.1:99999"])
    func aMalformedEndpointSaysUseTcpHostPort(endpoint: String) async throws {
        let harness = try ProcessHarness("endpoint")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let input = try harness.write([1, 2, 3], to: "input.bin")
        for role in [["submit", input], ["worker"]] {
            let result = try await harness.run("smq", role + ["--broker", endpoint, "--broker-key", certs.broker.publicPath, "--cert", client.secretPath],
                                               name: "smq", timeout: .seconds(30))
            #expect(result.termination == .exited(1), "\(result.transcript)")
            let error = try #require(result.errorLines.first, "\(result.transcript)")
            #expect(result.errorLines.count == 1 && error.contains("use tcp://HOST:PORT"), "\(result.transcript)")
        }
    }

    /// Nothing listening: the refusal is reported as such, long before the 60 s connect timeout
    /// (the wait below would fail first), and an existing --output file is untouched.
    @Test(.timeLimit(.minutes(2)))
    func aRefusedConnectionIsReportedAsNothingListening() async throws {
        let harness = try ProcessHarness("refused")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let input = try harness.write(randomBytes(1000), to: "input.bin")
        let kept = randomBytes(8192)
        let output = try harness.write(kept, to: "keep.bin")
        let port = try freeLoopbackPort()
        let result = try await harness.run("smq", [
            "submit", input, "--quiet", "--output", output, "--broker", "tcp://127.0.0.1:\(port)", "--broker-key", certs.broker.publicPath,
            "--cert", client.secretPath, "--connect-timeout", "60",
        ], name: "submit", timeout: .seconds(30))
        #expect(result.termination == .exited(1), "\(result.transcript)")
        let error = try #require(result.errorLines.first, "\(result.transcript)")
        #expect(error.contains("nothing is listening at tcp://127.0.0.1:\(port)"), "\(error)")
        #expect(error.contains("keep.bin was left as it was"), "\(error)")
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: output))) == kept)
        #expect(try Self.strays(in: harness.directory).isEmpty)
    }

    /// A 2 s deadline on a job whose worker takes 5 s per fragment: the job fails with 408 (the
    /// client's own timer, whatever the broker says), --output stays byte for byte as it was
    /// and no partial file is left beside it.
    @Test(.timeLimit(.minutes(2)))
    func aDeadlineFailsTheJobWith408AndKeepsTheOutputFile() async throws {
        let harness = try ProcessHarness("deadline")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let worker = try certs.worker("slow-1")
        let client = try certs.client("client-1")
        let broker = try await harness.startBroker(certs)
        let slow = try await harness.startWorker(worker, certs: certs, broker: broker, service: "echo", arguments: ["--delay-ms", "5000"])
        let input = try harness.write(randomBytes(3 << 10), to: "input.bin")
        let kept = randomBytes(8192)
        let output = try harness.write(kept, to: "keep.bin")
        let result = try await harness.submit(input, as: client, certs: certs, broker: broker, service: "echo",
                                              arguments: ["--output", output, "--fragment-size", "1K", "--deadline", "2"],
                                              timeout: .seconds(30))
        #expect(result.termination == .exited(1), "\(result.transcript)")
        let error = try #require(result.errorLines.first, "\(result.transcript)")
        #expect(error.contains("deadline") && error.contains("keep.bin was left as it was"), "\(error)")
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: output))) == kept)
        #expect(try Self.strays(in: harness.directory).isEmpty)
        // The worker saw the time left (DEADLINE before WORK, C45) and gave up at the deadline.
        let line = try await slow.waitForLine(containing: "ms left before its deadline", in: .stdout, timeout: .seconds(20))
        #expect(line.contains("fragment 0 of job"), "\(line)")
    }

    /// A typo in the service name: a warning at once naming what the broker serves (C46), and
    /// the 404 names them too.
    @Test(.timeLimit(.minutes(2)))
    func anUnknownServiceIsNamedWithTheServicesTheBrokerKnows() async throws {
        let harness = try ProcessHarness("unknown-service")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        // Keys first: the broker's first read of the allowlist has them all.
        let workers = try [("w-echo", "echo"), ("w-sha", "sha256"), ("w-upper", "upper")].map { (try certs.worker($0.0), $0.1) }
        let broker = try await harness.startBroker(certs, arguments: ["--service-timeout", "1"])
        for (worker, service) in workers {
            _ = try await harness.startWorker(worker, certs: certs, broker: broker, service: service)
        }
        let input = try harness.write(randomBytes(100), to: "input.bin")
        let result = try await harness.submit(input, as: client, certs: certs, broker: broker, service: "sha265", timeout: .seconds(30))
        #expect(result.termination == .exited(1), "\(result.transcript)")
        #expect(result.stderr.contains("warning: no worker serves 'sha265' now (known: echo, sha256, upper)"), "\(result.transcript)")
        let error = try #require(result.errorLines.first, "\(result.transcript)")
        #expect(error.contains("404") && error.contains("(known: echo, sha256, upper)"), "\(error)")
    }

    /// Ctrl-C during a job: the progress line ends, what was done is said, --output is as it was.
    @Test(.timeLimit(.minutes(2)))
    func sigintDuringASubmitLeavesTheOutputFileAndSaysWhatWasDone() async throws {
        let harness = try ProcessHarness("sigint")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let worker = try certs.worker("slow-1")
        let client = try certs.client("client-1")
        let broker = try await harness.startBroker(certs)
        _ = try await harness.startWorker(worker, certs: certs, broker: broker, service: "echo", arguments: ["--delay-ms", "5000"])
        let input = try harness.write(randomBytes(3 << 10), to: "input.bin")
        let kept = randomBytes(8192)
        let output = try harness.write(kept, to: "keep.bin")
        let submit = try harness.start("smq", ["submit", input, "--service", "echo", "--output", output, "--fragment-size", "1K"]
                                           + harness.peerArguments(client, certs: certs, broker: broker), name: "submit")
        // The job is out once the worker holds a fragment: it logs nothing, the broker does.
        try await broker.child.waitForLine(containing: "peer joined", "key=\(client.fingerprint) ")
        let partial = try await Self.waitForPartialFile(in: harness.directory)
        #expect(partial.hasPrefix(".keep.bin.smq-partial-"))
        submit.interrupt()
        let ended = try await submit.waitForExit(timeout: .seconds(20))
        #expect(ended == .exited(128 + SIGINT), "\(submit.transcript())")
        let stderr = submit.output(.stderr)
        #expect(stderr.contains("interrupted after 0 of "), "\(submit.transcript())")
        #expect(stderr.contains("keep.bin was left as it was; the partial output was removed"), "\(submit.transcript())")
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: output))) == kept)
        #expect(try Self.strays(in: harness.directory).isEmpty)
    }

    /// stdin longer than --stdin-limit: a clear error, and nothing left in TMPDIR.
    @Test(.timeLimit(.minutes(2)))
    func stdinOverItsLimitFailsWithoutLeavingASpool() async throws {
        let harness = try ProcessHarness("stdin-limit")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let stdin = try harness.write(randomBytes(2 << 20), to: "stdin.bin")
        let temporary = harness.directory + "/tmp"
        try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: true)
        let result = try await harness.run("smq", [
            "submit", "-", "--stdin-limit", "1M", "--broker", "tcp://127.0.0.1:\(try freeLoopbackPort())",
            "--broker-key", certs.broker.publicPath, "--cert", client.secretPath,
        ], name: "submit", stdin: stdin, environment: ["TMPDIR": temporary])
        #expect(result.termination == .exited(1), "\(result.transcript)")
        let error = try #require(result.errorLines.first, "\(result.transcript)")
        #expect(error.contains("stdin is longer than --stdin-limit (1.0 MiB)"), "\(error)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: temporary).isEmpty)
    }

    /// A fragment above the broker's max-fragment: it looped for ever before (libzmq drops the
    /// connection on each oversized frame, the client resent it). Now the client learns the
    /// broker's max-fragment when it connects (C47) and fails at once with 413 naming both sizes.
    @Test(.timeLimit(.minutes(2)))
    func anOversizedFragmentEndsWith413InsteadOfLooping() async throws {
        let harness = try ProcessHarness("oversize")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let worker = try certs.worker("echo-1")
        let client = try certs.client("client-1")
        let broker = try await harness.startBroker(certs, arguments: ["--max-fragment", "64K"])
        _ = try await harness.startWorker(worker, certs: certs, broker: broker, service: "echo")
        let input = try harness.write(randomBytes(256 << 10), to: "input.bin")
        let result = try await harness.submit(input, as: client, certs: certs, broker: broker, service: "echo",
                                              arguments: ["--fragment-size", "128K"], timeout: .seconds(60))
        #expect(result.termination == .exited(1), "\(result.transcript)")
        let error = try #require(result.errorLines.first, "\(result.transcript)")
        #expect(error.contains("413") && error.contains("131072") && error.contains("65536"), "\(error)")
    }

    /// Under a pseudo-terminal (Python's pty, as a user's shell): the progress line shows bytes
    /// of the total, percent, rate and time left, and ends with a newline before the summary.
    @Test(.timeLimit(.minutes(2)))
    func theProgressLineShowsBytesRateAndTimeLeftOnATerminal() async throws {
        let harness = try ProcessHarness("progress")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let worker = try certs.worker("echo-1")
        let client = try certs.client("client-1")
        let broker = try await harness.startBroker(certs)
        _ = try await harness.startWorker(worker, certs: certs, broker: broker, service: "echo", arguments: ["--delay-ms", "20", "--credit", "4"])
        let input = try harness.write(randomBytes(128 << 10), to: "input.bin")
        let smq = try BuiltProduct.path("smq")
        let result = try await harness.run(executable: try AbusePeers.python(), [
            "-c", "import pty, sys; sys.exit(pty.spawn(sys.argv[1:]) >> 8)",
            smq, "submit", input, "--service", "echo", "--fragment-size", "1K", "--window", "8",
            "--worker-names", certs.allowlist, "--per-worker",
        ] + harness.peerArguments(client, certs: certs, broker: broker), name: "pty-submit", timeout: .seconds(60))
        #expect(result.termination == .exited(0), "\(result.transcript)")
        // Through the pty, stdout and stderr arrive together on the Python's stdout.
        let screen = result.stdoutText
        #expect(screen.contains(" / 128.0 KiB  "), "\(screen)")
        #expect(screen.contains("%  ") && screen.contains("/s  "), "\(screen)")
        #expect(screen.contains(" left"), "no time left shown: \(screen)")
        #expect(screen.contains("128.0 KiB / 128.0 KiB  100%"), "\(screen)")
        #expect(screen.contains("\nfragments:      128"), "the summary starts on a line of its own: \(screen)")
        #expect(screen.contains("worker echo-1: 128 fragments"), "--per-worker names the worker by its certificate: \(screen)")
    }

    /// --json: the summary as one JSON object on stdout; --quiet: nothing but errors.
    @Test(.timeLimit(.minutes(2)))
    func jsonPrintsTheSummaryAsJSONAndQuietPrintsNothing() async throws {
        let harness = try ProcessHarness("json")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let worker = try certs.worker("echo-1")
        let client = try certs.client("client-1")
        let broker = try await harness.startBroker(certs)
        _ = try await harness.startWorker(worker, certs: certs, broker: broker, service: "echo")
        let input = try harness.write(randomBytes(10_000), to: "input.bin")
        let json = try await harness.submit(input, as: client, certs: certs, broker: broker, service: "echo",
                                            arguments: ["--fragment-size", "1K", "--json", "--worker-names", certs.allowlist])
        #expect(json.termination == .exited(0), "\(json.transcript)")
        let object = try #require(try JSONSerialization.jsonObject(with: json.stdout) as? [String: Any], "\(json.transcript)")
        #expect(object["fragments"] as? Int == 10 && object["payload_bytes"] as? Int == 10_000, "\(object)")
        let workers = try #require(object["workers"] as? [[String: Any]])
        #expect(workers.count == 1 && workers[0]["name"] as? String == "echo-1" && workers[0]["fragments"] as? Int == 10, "\(workers)")
        let quiet = try await harness.submit(input, as: client, certs: certs, broker: broker, service: "echo", arguments: ["--quiet"])
        #expect(quiet.termination == .exited(0) && quiet.stderr.isEmpty && quiet.stdout.isEmpty, "\(quiet.transcript)")
    }

    /// Files beside the output that are not the test's own: partial outputs, spools.
    static func strays(in directory: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.contains("smq-partial") || $0.contains("smq-stdin") }
    }

    /// Waits (bounded) until submit has made its partial output file.
    static func waitForPartialFile(in directory: String) async throws -> String {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if let name = try strays(in: directory).first { return name }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw HarnessError("no partial output file appeared in \(directory)")
    }
}
