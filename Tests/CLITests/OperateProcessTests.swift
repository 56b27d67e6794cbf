import Foundation
import Testing

/// What an operator runs and reads (issue 13): `--version`, `smq ping`, `smq status`, the
/// broker's JSON log format and the lines it writes about refusals.
@Suite struct OperateProcessTests {
    @Test(.timeLimit(.minutes(1)))
    func everyToolPrintsTheSameVersion() async throws {
        let harness = try ProcessHarness("version")
        defer { harness.tearDown() }
        var versions: Set<String> = []
        for tool in ["keygen", "secure-broker", "smq"] {
            let run = try await harness.run(tool, ["--version"])
            #expect(run.termination == .exited(0), "\(run.transcript)")
            let version = run.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(version.split(separator: ".").count == 3 && version.split(separator: ".").allSatisfy { Int($0) != nil },
                    "\(tool): '\(version)' is not MAJOR.MINOR.PATCH")
            versions.insert(version)
        }
        #expect(versions.count == 1, "\(versions)")
    }

    @Test(.timeLimit(.minutes(2)))
    func pingAndStatusAgainstALiveBrokerThenAGoneOne() async throws {
        let harness = try ProcessHarness("ping")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let worker = try certs.worker("status-worker")
        let client = try certs.client("status-client")
        let broker = try await harness.startBroker(certs)
        _ = try await harness.startWorker(worker, certs: certs, broker: broker, service: "upper")
        let peer = harness.peerArguments(client, certs: certs, broker: broker)

        let ping = try await harness.run("smq", ["ping"] + peer)
        #expect(ping.termination == .exited(0), "\(ping.transcript)")
        #expect(ping.stdoutText.hasPrefix("pong from \(broker.endpoint): round trip "), "\(ping.transcript)")
        let pingJSON = try await harness.run("smq", ["ping", "--json"] + peer)
        let pong = try JSONSerialization.jsonObject(with: pingJSON.stdout) as? [String: Any]
        #expect(pong?["broker"] as? String == broker.endpoint, "\(pingJSON.transcript)")
        #expect((pong?["round_trip_ms"] as? Double ?? -1) >= 0, "\(pingJSON.transcript)")

        let status = try await harness.run("smq", ["status", "--json"] + peer)
        #expect(status.termination == .exited(0), "\(status.transcript)")
        let report = try JSONSerialization.jsonObject(with: status.stdout) as? [String: Any]
        let services = report?["services"] as? [[String: Any]] ?? []
        #expect(services.count == 1, "\(status.transcript)")
        #expect(services.first?["name"] as? String == "upper")
        #expect(services.first?["workers"] as? Int == 1)
        #expect(services.first?["queued"] as? Int == 0)
        #expect(report?["draining"] as? Bool == false)
        let table = try await harness.run("smq", ["status"] + peer)
        #expect(table.termination == .exited(0), "\(table.transcript)")
        let lines = table.stdoutText.split(separator: "\n")
        #expect(lines.first?.hasPrefix("SERVICE") == true && lines.dropFirst().first?.hasPrefix("upper") == true, "\(table.transcript)")

        broker.child.terminate()
        _ = try await broker.child.waitForExit(timeout: .seconds(15))
        let gone = try await harness.run("smq", ["ping", "--connect-timeout", "1"] + peer)
        #expect(gone.termination == .exited(1), "\(gone.transcript)")
        #expect(gone.errorLines.count == 1, "\(gone.transcript)")
        let goneStatus = try await harness.run("smq", ["status", "--connect-timeout", "1"] + peer)
        #expect(goneStatus.termination == .exited(1), "\(goneStatus.transcript)")
    }

    @Test(.timeLimit(.minutes(2)))
    func statusListsOnlyTheServicesTheKeyMayUse() async throws {
        let harness = try ProcessHarness("status-scope")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let upper = try certs.worker("w-upper")
        let echo = try certs.worker("w-echo")
        let limited = try certs.peer("limited", metadata: [("name", "limited"), ("role", "client"), ("services", "echo,mmi.status")])
        let broker = try await harness.startBroker(certs)
        _ = try await harness.startWorker(upper, certs: certs, broker: broker, service: "upper")
        _ = try await harness.startWorker(echo, certs: certs, broker: broker, service: "echo")
        let status = try await harness.run("smq", ["status", "--json"] + harness.peerArguments(limited, certs: certs, broker: broker))
        #expect(status.termination == .exited(0), "\(status.transcript)")
        let report = try JSONSerialization.jsonObject(with: status.stdout) as? [String: Any]
        let names = (report?["services"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(names == ["echo"], "\(status.transcript)")
    }

    @Test(.timeLimit(.minutes(2)))
    func jsonLogsAndARefusedReadyIsLogged() async throws {
        let harness = try ProcessHarness("json-log")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let worker = try certs.worker("echo-only", services: "echo")
        let child = try harness.start("secure-broker", [
            "--endpoint", "tcp://127.0.0.1:*", "--cert", certs.broker.secretPath, "--allowlist", certs.allowlist, "--log-format", "json",
        ], name: "broker")
        let listening = try await child.waitForLine(containing: "\"msg\":\"listening\"")
        let fields = try JSONSerialization.jsonObject(with: Data(listening.utf8)) as? [String: Any]
        let endpoint = try #require(fields?["endpoints"] as? String, "\(listening)")
        let broker = BrokerProcess(child: child, endpoint: endpoint, port: Int(endpoint.split(separator: ":").last ?? "") ?? 0)

        // A worker whose allowlist entry forbids the service it asks for: refused, and logged.
        let refused = try await harness.run("smq", ["worker", "--service", "upper"] + harness.peerArguments(worker, certs: certs, broker: broker),
                                            timeout: .seconds(20))
        #expect(refused.termination != .exited(0), "\(refused.transcript)")
        let line = try await child.waitForLine(containing: "refused READY", "\"service\":\"upper\"", "\"name\":\"echo-only\"")
        #expect(line.contains("\"level\":\"warning\""), "\(line)")
        child.terminate()
        _ = try await child.waitForExit(timeout: .seconds(15))
        let lines = child.lines(.stderr).filter { !$0.isEmpty }
        #expect(lines.count >= 3)
        for line in lines {
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object?["msg"] is String && object?["level"] is String && object?["ts"] is String, "not a JSON log line: \(line)")
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func smqReadsTheBrokerAndKeysFromTheEnvironmentAndFlagsWin() async throws {
        let harness = try ProcessHarness("smq-env")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("env-client")
        let broker = try await harness.startBroker(certs)
        let environment = ["SMQ_BROKER": broker.endpoint, "SMQ_BROKER_KEY": certs.broker.publicPath, "SMQ_CERT": client.secretPath]
        let fromEnvironment = try await harness.run("smq", ["ping"], environment: environment)
        #expect(fromEnvironment.termination == .exited(0), "\(fromEnvironment.transcript)")
        #expect(fromEnvironment.stdoutText.contains(broker.endpoint))
        // A flag wins over its variable: a wrong endpoint in the environment, the right one as a flag.
        var wrong = environment
        wrong["SMQ_BROKER"] = "tcp://127.0.0.1:1"
        let flagWins = try await harness.run("smq", ["ping", "--broker", broker.endpoint], environment: wrong)
        #expect(flagWins.termination == .exited(0), "\(flagWins.transcript)")
        let envUsed = try await harness.run("smq", ["ping", "--connect-timeout", "1"], environment: wrong)
        #expect(envUsed.termination == .exited(1), "\(envUsed.transcript)")
        #expect(envUsed.stderr.contains("tcp://127.0.0.1:1"), "\(envUsed.transcript)")
        let none = try await harness.run("smq", ["ping"], environment: ["SMQ_CERT": ""])
        #expect(none.termination == .exited(64), "\(none.transcript)")
        #expect(none.stderr.contains("SMQ_CERT"), "\(none.transcript)")
    }
}
