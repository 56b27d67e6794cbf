import Foundation
import SMQKeys
import Testing

/// `secure-broker --metrics-endpoint`: scraped over HTTP by Python's urllib and parsed by
/// `prometheus_client.parser` (the reference text-format parser), while real `smq` processes run
/// jobs through the broker.
@Suite struct MetricsProcessTests {
    /// One scrape, as scripts/ops/scrape_metrics.py read it.
    struct Scrape {
        let contentType: String
        let families: [String: String]
        let samples: [String: Double]
        let body: String

        subscript(_ sample: String) -> Double? { samples[sample] }
    }

    static func scrape(_ harness: ProcessHarness, _ url: String) async throws -> Scrape {
        let script = AbusePeers.packageRoot + "/scripts/ops/scrape_metrics.py"
        let run = try await harness.run(executable: try AbusePeers.python(), [script, url], name: "scrape")
        #expect(run.termination == .exited(0), "the scrape did not parse:\n\(run.transcript)")
        let parsed = try? JSONSerialization.jsonObject(with: run.stdout)
        let object = try #require(parsed as? [String: Any], "\(run.transcript)")
        return Scrape(contentType: object["contentType"] as? String ?? "", families: object["families"] as? [String: String] ?? [:],
                      samples: object["samples"] as? [String: Double] ?? [:], body: object["body"] as? String ?? "")
    }

    static func scrape(_ harness: ProcessHarness, _ url: String, until done: (Scrape) -> Bool) async throws -> Scrape {
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            let scrape = try await scrape(harness, url)
            if done(scrape) || ContinuousClock.now >= deadline { return scrape }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// Starts a broker serving metrics on a port of its choosing and returns it with the URL it logged.
    static func startBroker(_ harness: ProcessHarness, _ certs: TestCertificates, arguments: [String] = []) async throws -> (BrokerProcess, String) {
        let broker = try await harness.startBroker(certs, arguments: ["--metrics-endpoint", "127.0.0.1:0"] + arguments)
        let line = try await broker.child.waitForLine(containing: "metrics endpoint listening", "url=http://127.0.0.1:")
        let field = line.split(separator: " ").first { $0.hasPrefix("url=") }.map { String($0.dropFirst(4)) }
        let url = try #require(field, "\(line)")
        return (broker, url)
    }

    @Test(.timeLimit(.minutes(2)))
    func countersMoveAsAJobRunsAndTheBodyParses() async throws {
        let harness = try ProcessHarness("metrics")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let worker = try certs.worker("metrics-worker", weight: 2)
        let client = try certs.client("metrics-client")
        let (broker, url) = try await Self.startBroker(harness, certs, arguments: ["--byte-budget", "64M"])

        let idle = try await Self.scrape(harness, url)
        #expect(idle.contentType.hasPrefix("text/plain; version=0.0.4"), "\(idle.contentType)")
        #expect(idle["securemq_broker_budget_bytes"] == Double(64 << 20), "\(idle.body)")
        #expect(idle["securemq_broker_jobs_open"] == 0)
        #expect((idle["securemq_broker_jobs_completed_total"] ?? 0) == 0)
        #expect(idle["securemq_broker_info{version=\(try await Self.version(harness))}"] == 1, "\(idle.body)")
        #expect(idle.families["securemq_broker_submit_to_result_seconds"] == "histogram", "\(idle.families)")
        #expect(idle.families["securemq_broker_jobs_completed"] == "counter", "\(idle.families)")

        _ = try await harness.startWorker(worker, certs: certs, broker: broker, service: "upper")
        let input = try harness.write(randomBytes(300_000), to: "input.bin")
        let result = try await harness.submit(input, as: client, certs: certs, broker: broker, service: "upper",
                                              arguments: ["--output", harness.directory + "/out.bin", "--fragment-size", "64K"])
        #expect(result.termination == .exited(0), "\(result.transcript)")

        // Scrapes within 250 ms of the previous one get its body (a flood must not load the
        // broker): scrape until the job shows, with a deadline.
        let after = try await Self.scrape(harness, url, until: { $0["securemq_broker_jobs_completed_total"] == 1 })
        #expect(after["securemq_broker_jobs_completed_total"] == 1, "\(after.body)")
        #expect(after["securemq_broker_fragments_submitted_total"] == 5, "\(after.body)")
        #expect((after["securemq_broker_deliveries_total"] ?? 0) >= 5)
        #expect(after["securemq_broker_results_total"] == 5)
        #expect(after["securemq_broker_submit_to_dispatch_seconds_count"] == 5, "\(after.body)")
        #expect(after["securemq_broker_submit_to_result_seconds_count"] == 5, "\(after.body)")
        #expect(after["securemq_broker_connections{role=worker}"] == 1, "\(after.body)")
        #expect(after["securemq_broker_service_workers{service=upper}"] == 1, "\(after.body)")
        #expect(after["securemq_broker_worker_connections{service=upper,worker=metrics-worker}"] == 1, "\(after.body)")
        #expect(after["securemq_broker_worker_in_flight{service=upper,worker=metrics-worker}"] == 0)
        #expect(after["securemq_broker_fragments_queued{service=upper}"] == 0)
        #expect((after["securemq_broker_handshakes_admitted_total"] ?? 0) >= 2, "\(after.body)")
        #expect(after["securemq_broker_held_bytes"] == 0)
        #expect(after["securemq_broker_jobs_open"] == 0)
        // Labels carry allowlist names, never keys.
        #expect(!after.body.contains(worker.publicKey.z85) && !after.body.contains(worker.fingerprint), "\(after.body)")

        // Operators' logs: one line for the job's end; the client's normal exit is not a warning.
        let ended = try await broker.child.waitForLine(containing: "job ended", "outcome=completed")
        for field in ["client=metrics-client", "fragments=5", "bytes=300000", "service=upper"] {
            #expect(ended.contains(field), "\(ended)")
        }
        try await broker.child.waitForLine(containing: "client disconnected", "name=metrics-client")
        let warnings = broker.child.lines(.stderr).filter { $0.contains("warning") && $0.contains("metrics-client") }
        #expect(warnings.isEmpty, "\(warnings)")
    }

    @Test(.timeLimit(.minutes(2)))
    func failedJobsAreCountedByCodeAndRefusedHandshakesByReason() async throws {
        let harness = try ProcessHarness("metrics-fail")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("metrics-client")
        let stranger = try certs.client("stranger", allowed: false)
        let (broker, url) = try await Self.startBroker(harness, certs, arguments: ["--service-timeout", "0.2"])

        // No worker for the service: the job fails with 404 after the service timeout.
        let input = try harness.write(randomBytes(1000), to: "input.bin")
        let failed = try await harness.submit(input, as: client, certs: certs, broker: broker, service: "nobody")
        #expect(failed.termination != .exited(0), "\(failed.transcript)")
        try await broker.child.waitForLine(containing: "job ended", "outcome=failed", "code=404")
        // A key not on the allowlist: refused in the handshake.
        let refused = try await harness.submit(input, as: stranger, certs: certs, broker: broker, service: "nobody",
                                               arguments: ["--connect-timeout", "1"])
        #expect(refused.termination != .exited(0))

        let scrape = try await Self.scrape(harness, url)
        #expect(scrape["securemq_broker_jobs_failed_total{code=404}"] == 1, "\(scrape.body)")
        #expect((scrape["securemq_broker_handshakes_refused_total{reason=unknown_key}"] ?? 0) >= 1, "\(scrape.body)")
        #expect(scrape["securemq_broker_jobs_completed_total"] == 0)
    }

    @Test(.timeLimit(.minutes(1)))
    func aBadMetricsEndpointIsRefusedWithOneErrorLine() async throws {
        let harness = try ProcessHarness("metrics-bad")
        defer { harness.tearDown() }
        for bad in ["9464", "example.com:9464", "127.0.0.1:99999", "127.0.0.1:"] {
            let run = try await harness.run("secure-broker", ["--metrics-endpoint", bad])
            #expect(run.termination == .exited(64), "\(bad): \(run.transcript)")
            #expect(run.stderr.contains("--metrics-endpoint must be HOST:PORT"), "\(bad): \(run.transcript)")
            #expect(!crashMarkers.contains { run.stderr.contains($0) })
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aMetricsPortInUseStopsTheBrokerWithOneErrorLine() async throws {
        let harness = try ProcessHarness("metrics-taken")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let (_, url) = try await Self.startBroker(harness, certs)
        let taken = url.replacingOccurrences(of: "http://", with: "").replacingOccurrences(of: "/metrics", with: "")
        let second = try await harness.run("secure-broker", [
            "--endpoint", "tcp://127.0.0.1:*", "--cert", certs.broker.secretPath, "--allowlist", certs.allowlist, "--metrics-endpoint", taken,
        ], timeout: .seconds(20))
        #expect(second.termination == .exited(1), "\(second.transcript)")
        #expect(second.errorLines.count == 1 && second.errorLines[0].contains("cannot serve metrics on \(taken)"), "\(second.transcript)")
    }

    static func version(_ harness: ProcessHarness) async throws -> String {
        let run = try await harness.run("secure-broker", ["--version"])
        return run.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
