import FlyingFox
import FlyingSocks
import Foundation
import Logging
import Metrics
import Prometheus
import SecureMQ
import SMQBroker
import SMQProtocol
import Synchronization

/// `--metrics-endpoint HOST:PORT`: an IPv4 literal (or `localhost`) and a port (0: any free one,
/// logged once bound).
struct MetricsAddress: Equatable {
    var host: String
    var port: UInt16

    init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        var host = String(text[..<colon])
        if host == "localhost" { host = "127.0.0.1" }
        var address = in_addr()
        guard inet_pton(AF_INET, host, &address) == 1, let port = UInt16(text[text.index(after: colon)...]) else { return nil }
        self.host = host
        self.port = port
    }
}

/// Turns a broker's snapshot into Prometheus metrics, at scrape time. Counters move by the
/// difference from the previous scrape, gauges are set, and labelled gauges whose label is gone
/// (a service forgotten, a worker key left) are removed rather than left stale.
final class BrokerMetricsPublisher: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let state = Mutex(State())

    private struct State {
        var counters: [String: (Prometheus.Counter, Int)] = [:]
        var gauges: [String: Prometheus.Gauge] = [:]
        var lastBody: (at: ContinuousClock.Instant, body: [UInt8])?
    }

    /// Scrapes closer together than this get the previous body: a snapshot pauses the broker's
    /// thread briefly, and a client hammering the endpoint must not turn that into a load.
    static let minimumInterval: Duration = .milliseconds(250)

    /// Buckets for both latency histograms: 100 µs to 60 s, roughly ×2.5 apart.
    static let latencyBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30), .seconds(60),
    ]

    /// The two histograms the broker's core records into, once per fragment.
    func latencyTimers() -> (dispatch: Metrics.Timer, result: Metrics.Timer) {
        let dispatch = registry.makeDurationHistogram(
            descriptor: Self.descriptor("securemq_broker_submit_to_dispatch_seconds", "Time from a fragment's SUBMIT to its first dispatch to a worker."),
            buckets: Self.latencyBuckets)
        let result = registry.makeDurationHistogram(
            descriptor: Self.descriptor("securemq_broker_submit_to_result_seconds",
                                        "Time from a fragment's SUBMIT to its RESULT being sent on (or queued) to the client."),
            buckets: Self.latencyBuckets)
        return (Metrics.Timer(label: "securemq_broker_submit_to_dispatch_seconds", dimensions: [], handler: dispatch),
                Metrics.Timer(label: "securemq_broker_submit_to_result_seconds", dimensions: [], handler: result))
    }

    /// The body for one scrape: a fresh snapshot from `fetch`, published and rendered, unless
    /// the last one is younger than ``minimumInterval``.
    func body(_ fetch: () async -> BrokerMetrics?) async -> [UInt8] {
        let now = ContinuousClock.now
        if let last = state.withLock({ $0.lastBody }), now - last.at < Self.minimumInterval { return last.body }
        if let metrics = await fetch() { publish(metrics) }
        let body = registry.emitToBuffer()
        state.withLock { $0.lastBody = (now, body) }
        return body
    }

    private func publish(_ m: BrokerMetrics) {
        let c = m.core.counters
        state.withLock { state in
            var seen = Set<String>()
            func counter(_ name: String, _ labels: [(String, String)] = [], _ value: Int, _ help: String) {
                let id = Self.id(name, labels)
                if state.counters[id] == nil {
                    state.counters[id] = (registry.makeCounter(descriptor: Self.descriptor(name, help), labels: labels), 0)
                }
                let (metric, last) = state.counters[id]!
                if value > last { metric.increment(by: Int64(value - last)) }
                state.counters[id] = (metric, max(value, last))
            }
            func gauge(_ name: String, _ labels: [(String, String)] = [], _ value: Int, _ help: String) {
                let id = Self.id(name, labels)
                seen.insert(id)
                let metric = state.gauges[id] ?? registry.makeGauge(descriptor: Self.descriptor(name, help), labels: labels)
                state.gauges[id] = metric
                metric.set(Double(value))
            }
            gauge("securemq_broker_info", [("version", SecureMQVersion.current)], 1, "The broker's version (always 1).")
            gauge("securemq_broker_connections", [("role", "client")], m.core.clientConnections, "Live connections by role.")
            gauge("securemq_broker_connections", [("role", "worker")], m.core.workerConnections, "Live connections by role.")
            counter("securemq_broker_connections_admitted_total", [], c.connectionsAdmitted, "Connections admitted (first message from an allowlisted key).")
            counter("securemq_broker_connections_refused_total", [("reason", "too_many_for_key")], c.connectionsRefusedTooMany,
                    "Connections refused after the handshake, by reason.")
            counter("securemq_broker_connections_refused_total", [("reason", "no_user_id")], c.connectionsRefusedNoUserID,
                    "Connections refused after the handshake, by reason.")
            counter("securemq_broker_handshakes_admitted_total", [], m.handshakesAdmitted, "CURVE handshakes the ZAP handler admitted.")
            for (reason, value) in [("unknown_key", m.handshakesRefusedUnknownKey), ("not_curve", m.handshakesRefusedNotCurve),
                                    ("malformed", m.handshakesMalformed)] {
                counter("securemq_broker_handshakes_refused_total", [("reason", reason)], value, "Handshakes the ZAP handler refused, by reason.")
            }
            gauge("securemq_broker_jobs_open", [], m.core.counters.openJobs, "Jobs open now.")
            counter("securemq_broker_jobs_completed_total", [], c.completedJobs, "Jobs whose every fragment got its result.")
            for (code, value) in c.failedJobsByCode {
                counter("securemq_broker_jobs_failed_total", [("code", "\(code)")], value, "Jobs failed or cancelled, by failure code.")
            }
            counter("securemq_broker_jobs_abandoned_total", [], c.abandonedJobs, "Jobs dropped because their client went away.")
            counter("securemq_broker_fragments_submitted_total", [], c.submitted, "Fragments accepted from clients.")
            counter("securemq_broker_deliveries_total", [], c.dispatched, "WORK deliveries to workers (retries included).")
            counter("securemq_broker_results_total", [], c.results, "RESULTs sent to clients.")
            counter("securemq_broker_busy_replies_total", [], c.busy, "SUBMITs answered BUSY (budget, share or open-job limit).")
            for (cause, value) in [("worker_gone", c.requeuedWorkerGone), ("lease_expired", c.requeuedLeaseExpired),
                                   ("attempt_failed", c.requeuedAttemptFailed)] {
                counter("securemq_broker_requeues_total", [("cause", cause)], value, "Fragments requeued, by cause.")
            }
            counter("securemq_broker_revocations_total", [], c.revocations, "Keys revoked while connected.")
            counter("securemq_broker_worker_expiries_total", [], c.deadWorkers, "Workers declared dead after missed heartbeats.")
            counter("securemq_broker_leases_expired_total", [], c.leasesExpired, "Deliveries held past the work lease.")
            counter("securemq_broker_ready_refused_total", [], c.readyRefused, "READY messages refused.")
            counter("securemq_broker_malformed_messages_total", [], c.malformed, "Messages dropped as unreadable.")
            counter("securemq_broker_role_violations_total", [], c.roleViolations, "Messages a peer's role does not allow.")
            counter("securemq_broker_dropped_connections_total", [], c.droppedConnections, "Connections found gone without DISCONNECT.")
            counter("securemq_broker_slow_clients_total", [], c.slowClients, "Clients dropped for not reading their results.")
            counter("securemq_broker_pipe_full_total", [], c.pipeFull, "Sends that found a peer's pipe full.")
            counter("securemq_broker_suppressed_log_lines_total", [], c.suppressedLogLines, "Log lines left out by the rate limiter.")
            gauge("securemq_broker_held_bytes", [], c.bytesHeld, "Budget held now (queued, in flight, unread results); each fragment at least 1 KiB.")
            gauge("securemq_broker_budget_bytes", [], m.core.byteBudget, "The byte budget (--byte-budget).")
            gauge("securemq_broker_fragments_held", [], c.fragmentsHeld, "Fragments held now.")
            gauge("securemq_broker_fragments_limit", [], m.core.maxFragments, "Fragments that may be held at once (--max-fragments).")
            gauge("securemq_broker_draining", [], m.core.draining ? 1 : 0, "1 while a graceful shutdown drains.")
            for service in m.core.services {
                let labels = [("service", service.name)]
                gauge("securemq_broker_fragments_queued", labels, service.queued, "Fragments waiting for a worker, per service.")
                gauge("securemq_broker_fragments_in_flight", labels, service.inFlight, "Fragments at workers, per service.")
                gauge("securemq_broker_service_workers", labels, service.workers, "Worker connections, per service.")
            }
            for worker in m.core.workers {
                let labels = [("worker", worker.name), ("service", worker.service)]
                gauge("securemq_broker_worker_in_flight", labels, worker.inFlight, "Fragments at one worker key (by allowlist name), per service.")
                gauge("securemq_broker_worker_connections", labels, worker.connections, "Connections of one worker key (by allowlist name), per service.")
            }
            for (id, metric) in state.gauges where !seen.contains(id) {
                registry.unregisterGauge(metric)
                state.gauges[id] = nil
            }
        }
    }

    private static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    private static func id(_ name: String, _ labels: [(String, String)]) -> String {
        ([name] + labels.map { "\($0.0)=\($0.1)" }).joined(separator: "\u{0}")
    }
}

/// Serves `GET /metrics` (Prometheus text format 0.0.4) with FlyingFox until cancelled.
struct MetricsServer {
    let address: MetricsAddress
    let publisher: BrokerMetricsPublisher
    let broker: Broker
    let logger: Logger

    func run() async throws {
        let server = HTTPServer(address: try .inet(ip4: address.host, port: address.port), timeout: 15,
                                logger: FlyingFoxLog(logger: logger))
        let publisher = self.publisher
        let broker = self.broker
        await server.appendRoute("GET /metrics") { _ in
            let body = await publisher.body { await broker.metrics() }
            return HTTPResponse(statusCode: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"], body: Data(body))
        }
        let logger = self.logger
        let address = self.address
        let announce = Task {
            try await server.waitUntilListening()
            var port = address.port
            if case .ip4(_, let bound)? = await server.listeningAddress { port = bound }
            logger.info("metrics endpoint listening", metadata: ["url": "http://\(address.host):\(port)/metrics"])
        }
        defer { announce.cancel() }
        try await server.run()
    }
}

/// FlyingFox's own log lines, through swift-log at debug (connection chatter) and above.
struct FlyingFoxLog: FlyingSocks.Logging {
    let logger: Logger
    func logDebug(_ debug: @autoclosure () -> String) { logger.debug("\(debug())") }
    func logInfo(_ info: @autoclosure () -> String) { logger.debug("\(info())") }
    func logWarning(_ warning: @autoclosure () -> String) { logger.warning("\(warning())") }
    func logError(_ error: @autoclosure () -> String) { logger.error("\(error())") }
    func logCritical(_ critical: @autoclosure () -> String) { logger.critical("\(critical())") }
}
