import Foundation
import SMQKeys
import Testing

/// `secure-broker --config FILE`, SMQ_BROKER_* variables and flags (issue 13): the precedence
/// flags > environment > file > defaults, seen through `--print-config`, and a bad file refused
/// with one `Error:` line. Real processes.
@Suite(.timeLimit(.minutes(2)))
struct BrokerConfigProcessTests {
    func writeConfig(_ harness: ProcessHarness, _ text: String, name: String = "broker.json") throws -> String {
        try harness.write(Array(text.utf8), to: name)
    }

    func printedConfig(_ result: Finished) throws -> [String: Any] {
        #expect(result.termination == .exited(0), "\(result.transcript)")
        let object = try JSONSerialization.jsonObject(with: result.stdout)
        return try #require(object as? [String: Any], "--print-config printed no JSON object:\n\(result.transcript)")
    }

    @Test func flagsBeatEnvironmentBeatFileBeatDefaults() async throws {
        let harness = try ProcessHarness("broker-config")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let file = try writeConfig(harness, """
            {"max-jobs": 10, "liveness": 4, "base-window": 8, "byte-budget": "64M",
             "endpoint": ["tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"], "cert": "\(certs.broker.secretPath)",
             "allowlist": "\(certs.allowlist)", "io-threads": 2}
            """)
        let environment = ["SMQ_BROKER_MAX_JOBS": "20", "SMQ_BROKER_LIVENESS": "5", "SMQ_BROKER_MAX_OUTBOX": "100",
                           // smq's variables share the prefix and are no broker setting: ignored, not an error.
                           "SMQ_BROKER_KEY": "/nonexistent/broker.key"]
        let result = try await harness.run("secure-broker", ["--config", file, "--max-jobs", "30", "--print-config"],
                                           environment: environment)
        let settings = try printedConfig(result)
        #expect(settings["max-jobs"] as? Int == 30, "flag over environment and file")
        #expect(settings["liveness"] as? Int == 5, "environment over file")
        #expect(settings["max-outbox"] as? Int == 100, "environment over default")
        #expect(settings["base-window"] as? Int == 8, "file over default")
        #expect(settings["io-threads"] as? Int == 2, "file over default")
        #expect(settings["byte-budget"] as? String == "64M")
        #expect(settings["heartbeat-ms"] as? Int == 2500, "default")
        #expect(settings["endpoint"] as? [String] == ["tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"])
        #expect(settings["cert"] as? [String] == [certs.broker.secretPath], "a single string is a list of one")
        // Paths only: the secret key itself never appears.
        let secret = try #require(try Certificate.load(path: certs.broker.secretPath).secretKey)
        #expect(!result.stdoutText.contains(secret.z85Text))
        #expect(!result.stderr.contains("listening"), "--print-config started the broker")

        // The output is itself a configuration file that gives the same settings.
        let again = try writeConfig(harness, result.stdoutText, name: "printed.json")
        let reread = try await harness.run("secure-broker", ["--config", again, "--print-config"])
        #expect(reread.stdoutText == result.stdoutText, "\(reread.transcript)")

        // A list from the environment is comma-separated, and replaces the file's whole.
        let listed = try await harness.run("secure-broker", ["--config", file, "--print-config"],
                                           environment: ["SMQ_BROKER_ENDPOINT": "tcp://127.0.0.1:7003,tcp://127.0.0.1:7004"])
        #expect(try printedConfig(listed)["endpoint"] as? [String] == ["tcp://127.0.0.1:7003", "tcp://127.0.0.1:7004"])
    }

    @Test func aBrokerRunsFromAFileAndSaysSoAtStartup() async throws {
        let harness = try ProcessHarness("broker-config-run")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let file = try writeConfig(harness, """
            {"endpoint": ["tcp://127.0.0.1:*"], "cert": ["\(certs.broker.secretPath)"], "allowlist": "\(certs.allowlist)",
             "max-jobs": 7, "io-threads": 2}
            """)
        let broker = try harness.start("secure-broker", ["--config", file])
        let line = try await broker.waitForLine(containing: "secure-broker starting")
        #expect(line.contains("config=\(file)") && line.contains("max-jobs=7") && line.contains("io-threads=2") && line.contains("version="), "\(line)")
        let listening = try await broker.waitForLine(containing: "listening", "endpoints=tcp://127.0.0.1:")
        #expect(listening.contains("ioThreads=2"), "\(listening)")
        #expect(listening.contains("key=\(certs.broker.fingerprint)"), "\(listening)")
        try await broker.stop()
    }

    /// deploy/secure-broker.json is a configuration the broker accepts, and says what it claims.
    @Test func theExampleConfigurationIsValid() async throws {
        let harness = try ProcessHarness("broker-config-example")
        defer { harness.tearDown() }
        let example = AbusePeers.packageRoot + "/deploy/secure-broker.json"
        let result = try await harness.run("secure-broker", ["--config", example, "--print-config"])
        let settings = try printedConfig(result)
        #expect(settings["cert"] as? [String] == ["/etc/securemq/broker.key_secret"])
        #expect(settings["metrics-endpoint"] as? String == "127.0.0.1:9464")
        #expect(settings["log-format"] as? String == "json")
    }

    /// Each mistake in a file: one `Error:` line naming the key (and the file), a non-zero exit,
    /// no broker started.
    @Test(arguments: [
        (#"{"max-jobz": 5}"#, "max-jobz"),
        (#"{"--max-jobs": 5}"#, "without the dashes"),
        (#"{"max-jobs": "5"}"#, "'max-jobs'"),
        (#"{"max-jobs": 2.5}"#, "'max-jobs'"),
        (#"{"max-jobs": 0}"#, "--max-jobs must be 1–100000"),
        (#"{"service-timeout": -1}"#, "--service-timeout"),
        (#"{"strategy": "fastest"}"#, "--strategy"),
        (#"{"io-threads": 65}"#, "--io-threads"),
        (#"{"endpoint": ["tcp://127.0.0.1:*", "tcp://127.0.0.1:*"], "cert": ["a", "b", "c"]}"#, "--cert given 3 times"),
        (#"{"limits": {"max-jobs": 5}}"#, "limits"),
        (#"{"liveness": {"value": 5}}"#, "'liveness'"),
        (#"["max-jobs", 5]"#, "not a JSON object"),
        ("max-jobs: 5", "not a JSON object"),
    ])
    func aBadFileIsOneClearError(_ text: String, _ culprit: String) async throws {
        let harness = try ProcessHarness("broker-config-bad")
        defer { harness.tearDown() }
        let file = try writeConfig(harness, text)
        let result = try await harness.run("secure-broker", ["--config", file], timeout: .seconds(20))
        guard case .exited(let status) = result.termination else {
            Issue.record("secure-broker \(result.termination)\n\(result.transcript)")
            return
        }
        #expect(status == 64, "\(text): exit status \(status), not EX_USAGE\n\(result.transcript)")
        #expect(result.errorLines.count == 1, "\(result.transcript)")
        let error = result.errorLines.first ?? ""
        #expect(error.contains(culprit), "'\(error)' does not name '\(culprit)'")
        if !culprit.hasPrefix("--cert") && !culprit.contains("JSON object") {
            #expect(error.contains(file), "'\(error)' does not name the file")
        }
        for marker in crashMarkers { #expect(!result.stderr.contains(marker), "\(result.transcript)") }
        #expect(!result.stderr.contains("listening"), "the broker started anyway")
        #expect(result.stdout.isEmpty)
    }

    @Test func aBadEnvironmentVariableIsOneClearError() async throws {
        let harness = try ProcessHarness("broker-config-env")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        for (name, value, culprit) in [("SMQ_BROKER_MAX_JOBS", "many", "SMQ_BROKER_MAX_JOBS"), ("SMQ_BROKER_LIVENESS", "0", "SMQ_BROKER_LIVENESS")] {
            let result = try await harness.run("secure-broker", ["--allowlist", certs.allowlist, "--cert", certs.broker.secretPath],
                                               environment: [name: value], timeout: .seconds(20))
            #expect(result.termination != .exited(0), "\(result.transcript)")
            #expect(result.errorLines.count == 1 && result.errorLines[0].contains(culprit), "\(result.transcript)")
            #expect(!result.stderr.contains("listening"))
        }
    }
}
