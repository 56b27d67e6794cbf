import ArgumentParser
import Glibc
import Logging
import SecureMQ
import SMQBroker
import ServiceLifecycle
import SMQProtocol
import UnixSignals

@main
struct SecureBroker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secure-broker",
        abstract: "The SecureMQ broker: admits only allowlisted CURVE keys and dispatches fragments to workers by weight.",
        discussion: """
            Every connection is CURVE-encrypted; every peer is authenticated by the broker's ZAP handler against \
            the certificate files in the allowlist directory. A peer's role (client, worker, both), weight and \
            allowed services come from its allowlist entry, never from what it sends. The allowlist is reloaded when \
            its files' contents change and on SIGHUP; a removed key loses its live connections' rights within \
            about one check interval. SIGTERM or SIGINT drains in-flight work, then exits 0.
            """,
        version: SecureMQVersion.current
    )

    @Option(name: .customLong("endpoint"), help: "Endpoint to bind; repeat for several. (default: tcp://*:5555)")
    var endpoints: [String] = []

    @Option(help: "The broker's secret certificate file (mode 0600).")
    var cert: String = "certs/broker.key_secret"

    @Option(help: "Directory of the public certificates allowed in.")
    var allowlist: String = "certs/allowed"

    @Option(help: "Dispatch strategy: weighted (by allowlist weight) or round-robin.")
    var strategy: String = "weighted"

    @Option(help: "Fragments in flight per worker key: min(asked credit, weight × base-window). 1–100000.")
    var baseWindow: Int = 32

    @Option(help: "Budget of fragments held (queued, in flight, results a client has not read yet); each costs max(body, 1 KiB). Beyond it, or beyond a client's share (budget / (other clients holding work + 2)), SUBMIT gets BUSY. Suffixes K, M, G.")
    var byteBudget: String = "256M"

    @Option(help: "Fragments held at once, whatever their size, shared by clients like the byte budget; beyond it SUBMIT gets BUSY. 1–16777216.")
    var maxFragments: Int = 65_536

    @Option(help: "Largest fragment body accepted (requests and results). Suffixes K, M; at most 256M.")
    var maxFragment: String = "1M"

    @Option(help: "Role of an allowlisted key whose certificate names none: client, worker or both.")
    var defaultRole: String = "client"

    @Option(help: "Open jobs per client at once (one more gets BUSY). 1–100000.")
    var maxJobs: Int = 64

    @Option(help: "Ended (failed or cancelled) job ids remembered so stray SUBMITs get 410; oldest forgotten first. 0–16777216.")
    var maxEndedJobs: Int = 16_384

    @Option(help: "Connections one key may have open at once; more get DISCONNECT. 1–100000.")
    var maxConnectionsPerKey: Int = 16

    @Option(help: "Seconds a fragment waits for a service with no worker before its job fails with 404. 0.001–86400.")
    var serviceTimeout: Double = 10

    @Option(help: "Seconds a worker may hold one fragment; past it the worker gets DISCONNECT and the fragment is requeued and charged (504 after max-deliveries). 1–604800.")
    var workLease: Double = 300

    @Option(help: "Seconds a client may leave its results unread (its work is not dispatched meanwhile) before it is dropped like a vanished client. 1–86400.")
    var slowClientTimeout: Double = 60

    @Option(help: "Messages libzmq queues per peer connection each way (ZMQ_SNDHWM and ZMQ_RCVHWM of the ROUTER); beyond it results wait in that client's outbox, counted against it, and a peer that sends faster than the broker reads waits in TCP. 1–100000.")
    var peerHwm: Int = 32

    @Option(help: "Replies (results, FAILED, BUSY) one client connection may leave unread in the broker beyond libzmq's queue; one more and it gets DISCONNECT as a slow consumer. 1–16777216.")
    var maxOutbox: Int = 4096

    @Option(help: "Heartbeat interval expected of clients, in milliseconds. 100–60000.")
    var heartbeatMs: Int = 2500

    @Option(help: "Intervals of silence after which a peer is dead. 1–1000.")
    var liveness: Int = 3

    @Option(help: "Deliveries of one fragment before its job fails with 504. 1–1000.")
    var maxDeliveries: Int = 5

    @Option(help: "Seconds a graceful shutdown waits for in-flight fragments. 0–86400.")
    var drainTimeout: Double = 10

    @Option(help: "Seconds between two log lines of one kind about one peer key; the next line says how many were suppressed. 0.001–3600.")
    var logInterval: Double = 10

    @Option(help: "Seconds between statistics log lines. 1–86400.")
    var statsInterval: Int = 60

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "info"

    @Option(help: "Serve Prometheus metrics at http://HOST:PORT/metrics (an IPv4 address or localhost; port 0 picks one and logs it). Off by default; keep it on a private interface.")
    var metricsEndpoint: String?

    @Option(help: "Log format: text (one readable line per event) or json (one JSON object per line, for log shippers).")
    var logFormat: String = "text"

    @Flag(help: "Load the secret certificate even if group/world can read it.")
    var allowInsecureSecret = false

    func validate() throws {
        guard PeerRole(rawValue: defaultRole) != nil else {
            throw ValidationError("--default-role must be client, worker or both, not '\(defaultRole)'")
        }
        guard (1...86_400).contains(statsInterval) else { throw ValidationError("--stats-interval must be 1–86400 seconds, got \(statsInterval)") }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        guard ["text", "json"].contains(logFormat) else { throw ValidationError("--log-format must be text or json, not '\(logFormat)'") }
        if let metricsEndpoint, MetricsAddress(metricsEndpoint) == nil {
            throw ValidationError("--metrics-endpoint must be HOST:PORT with an IPv4 address or localhost, such as 127.0.0.1:9464; got '\(metricsEndpoint)'")
        }
        _ = try makeConfiguration()
    }

    /// Seconds from a flag as a duration: NaN, infinities, negatives and values out of range are
    /// refused with the flag's name, never converted (converting 1e300 would trap).
    private func seconds(_ value: Double, _ flag: String, _ range: ClosedRange<Double>) throws -> Duration {
        guard let nanos = BrokerRules.nanoseconds(fromSeconds: value, in: range) else {
            throw ValidationError("\(flag) must be a number of seconds from \(range.lowerBound) to \(range.upperBound), got \(value)")
        }
        return .nanoseconds(Int64(nanos))
    }

    private func within(_ value: Int, _ flag: String, _ range: ClosedRange<Int>) throws -> Int {
        guard range.contains(value) else { throw ValidationError("\(flag) must be \(range.lowerBound)–\(range.upperBound), got \(value)") }
        return value
    }

    /// Every flag checked and turned into the library's configuration.
    func makeConfiguration() throws -> BrokerConfiguration {
        guard let strategy = BrokerConfiguration.Strategy(strategy) else {
            throw ValidationError("--strategy must be 'weighted' or 'round-robin', not '\(self.strategy)'")
        }
        var configuration = BrokerConfiguration()
        configuration.endpoints = endpoints.isEmpty ? ["tcp://*:5555"] : endpoints
        configuration.strategy = strategy
        configuration.baseWindow = try within(baseWindow, "--base-window", 1...100_000)
        configuration.byteBudget = try ByteSize.parse(byteBudget, option: "--byte-budget")
        configuration.maxFragments = try within(maxFragments, "--max-fragments", 1...(1 << 24))
        configuration.maxFragmentSize = try ByteSize.parse(maxFragment, option: "--max-fragment")
        guard configuration.maxFragmentSize <= 256 << 20 else { throw ValidationError("--max-fragment must be at most 256M, got '\(maxFragment)'") }
        guard configuration.byteBudget <= 1 << 40 else { throw ValidationError("--byte-budget must be at most 1024G, got '\(byteBudget)'") }
        guard configuration.byteBudget >= max(configuration.maxFragmentSize, BrokerRules.fragmentFloor) else {
            throw ValidationError("--byte-budget (\(byteBudget)) must be at least --max-fragment (\(maxFragment)) and 1K")
        }
        configuration.defaultRole = PeerRole(rawValue: defaultRole) ?? .client
        configuration.maxJobsPerClient = try within(maxJobs, "--max-jobs", 1...100_000)
        configuration.maxEndedJobs = try within(maxEndedJobs, "--max-ended-jobs", 0...(1 << 24))
        configuration.maxConnectionsPerKey = try within(maxConnectionsPerKey, "--max-connections-per-key", 1...100_000)
        configuration.serviceTimeout = try seconds(serviceTimeout, "--service-timeout", 0.001...86_400)
        configuration.workLease = try seconds(workLease, "--work-lease", 1...604_800)
        configuration.slowClientTimeout = try seconds(slowClientTimeout, "--slow-client-timeout", 1...86_400)
        configuration.peerHighWaterMark = try within(peerHwm, "--peer-hwm", 1...100_000)
        configuration.maxOutbox = try within(maxOutbox, "--max-outbox", 1...(1 << 24))
        configuration.heartbeatInterval = .milliseconds(try within(heartbeatMs, "--heartbeat-ms", 100...60_000))
        configuration.liveness = try within(liveness, "--liveness", 1...1000)
        configuration.maxDeliveries = try within(maxDeliveries, "--max-deliveries", 1...1000)
        configuration.drainTimeout = try seconds(drainTimeout, "--drain-timeout", 0...86_400)
        configuration.logInterval = try seconds(logInterval, "--log-interval", 0.001...3600)
        do {
            try configuration.validate()
        } catch {
            throw ValidationError(error.message)
        }
        return configuration
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        let json = logFormat == "json"
        LoggingSystem.bootstrap { label in
            if json { return JSONLogHandler(label: label, level: level) }
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "secure-broker")

        let configuration: BrokerConfiguration
        do {
            configuration = try makeConfiguration()
        } catch {
            fail((error as? ValidationError)?.message ?? "\(error)")
        }

        do {
            let certificate = try Certificate.load(path: cert, allowInsecurePermissions: allowInsecureSecret)
            let keyPair = try certificate.keyPair()
            let allowed = try Allowlist(directory: allowlist, logger: logger)
            logger.info("secure-broker starting", metadata: [
                "version": "\(SecureMQVersion.current)", "settings": "\(effectiveSettings(configuration))",
            ])
            let service = BrokerService(statsInterval: .seconds(statsInterval), keyPair: keyPair, allowlist: allowed, configuration: configuration,
                                        metrics: metricsEndpoint.flatMap(MetricsAddress.init), logger: logger)
            let group = ServiceGroup(configuration: .init(
                services: [.init(service: service)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            ))
            try await group.run()
        } catch {
            fail((error as? SecureMQError)?.message ?? "\(error)")
        }
    }
}

/// Runs the library's ``Broker`` until a graceful shutdown, then drains it.
struct BrokerService: Service {
    let statsInterval: Duration
    let keyPair: KeyPair
    let allowlist: Allowlist
    let configuration: BrokerConfiguration
    let metrics: MetricsAddress?
    let logger: Logger

    func run() async throws {
        let broker = try await Broker.start(keyPair: keyPair, allowlist: allowlist, configuration: configuration, logger: logger)
        var metricsTask: Task<Void, Never>?
        if let metrics {
            let publisher = BrokerMetricsPublisher()
            let timers = publisher.latencyTimers()
            await broker.recordLatencies(dispatch: timers.dispatch, result: timers.result)
            let server = MetricsServer(address: metrics, publisher: publisher, broker: broker, logger: logger)
            let logger = self.logger
            metricsTask = Task {
                do { try await server.run() } catch where !Task.isCancelled {
                    // Asked for metrics and cannot serve them (the port is taken): stop, as nginx
                    // does for a listen directive it cannot bind, rather than run unobserved.
                    logger.error("metrics endpoint failed", metadata: ["endpoint": "\(metrics.host):\(metrics.port)", "error": "\(error)"])
                    fail("cannot serve metrics on \(metrics.host):\(metrics.port): \(error)")
                } catch {}
            }
        }
        defer { metricsTask?.cancel() }
        logger.info("listening", metadata: [
            "endpoints": "\(broker.endpoints.joined(separator: " "))", "strategy": "\(configuration.strategy)",
            "key": "\(keyPair.publicKey.fingerprint)",
        ])
        // SIGHUP: reload the allowlist now (it is also checked by content every second).
        let reloads = Task {
            for await _ in await UnixSignalsSequence(trapping: .sighup) {
                let report = allowlist.reload()
                logger.info("allowlist reloaded on SIGHUP", metadata: [
                    "added": "\(report.added.count)", "removed": "\(report.removed.count)", "problems": "\(report.problems.count)",
                ])
                await broker.allowlistChanged()
            }
        }
        defer { reloads.cancel() }
        let stats = Task {
            while !Task.isCancelled {
                try await Task.sleep(for: statsInterval)
                log(await broker.statistics(), as: "statistics")
            }
        }
        defer { stats.cancel() }
        try? await gracefulShutdown()
        logger.info("draining", metadata: ["timeout": "\(configuration.drainTimeout)"])
        let final = await broker.statistics()
        await broker.shutdown()
        log(final, as: "stopped")
    }

    private func log(_ statistics: BrokerStatistics, as message: Logger.Message) {
        logger.info(message, metadata: [
            "submitted": "\(statistics.submitted)", "dispatched": "\(statistics.dispatched)", "results": "\(statistics.results)",
            "requeued": "\(statistics.requeued)", "completedJobs": "\(statistics.completedJobs)", "failedJobs": "\(statistics.failedJobs)",
            "busy": "\(statistics.busy)", "malformed": "\(statistics.malformed)", "strayResults": "\(statistics.strayResults)",
            "deadWorkers": "\(statistics.deadWorkers)", "droppedConnections": "\(statistics.droppedConnections)",
            "revocations": "\(statistics.revocations)", "userIDMismatches": "\(statistics.userIDMismatches)",
            "leasesExpired": "\(statistics.leasesExpired)", "unreadableWorkers": "\(statistics.unreadableWorkers)", "pipeFull": "\(statistics.pipeFull)",
            "slowClients": "\(statistics.slowClients)", "suppressedLogLines": "\(statistics.suppressedLogLines)",
            "fragmentsHeld": "\(statistics.fragmentsHeld)", "services": "\(statistics.services)", "openJobs": "\(statistics.openJobs)",
            "bytesHeld": "\(statistics.bytesHeld)", "peakBytesHeld": "\(statistics.peakBytesHeld)",
            "workers": "\(statistics.workers)", "clients": "\(statistics.clients)",
        ])
    }
}

/// Prints `Error: …` to stderr and exits 1: user mistakes get a sentence, not a stack trace.
func fail(_ message: String) -> Never {
    let line = "Error: \(message)\n"
    _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
    exit(1)
}

enum ByteSize {
    /// A size option (`256M`, `1M`), or a validation error naming the option.
    static func parse(_ text: String, option: String) throws -> Int {
        guard let bytes = ByteCount.parse(text) else {
            throw ValidationError("\(option) must be a positive size such as 262144, 256K or 1M; got '\(text)'")
        }
        return bytes
    }
}

extension SecureBroker {
    /// The settings in effect, in one line an operator can read and diff (no secret: the
    /// certificate's path, never its contents).
    func effectiveSettings(_ c: BrokerConfiguration) -> String {
        [
            "endpoints=\(c.endpoints.joined(separator: ","))", "cert=\(cert)", "allowlist=\(allowlist)", "strategy=\(c.strategy)",
            "base-window=\(c.baseWindow)", "byte-budget=\(c.byteBudget)", "max-fragments=\(c.maxFragments)",
            "max-fragment=\(c.maxFragmentSize)", "default-role=\(c.defaultRole)", "max-jobs=\(c.maxJobsPerClient)",
            "max-ended-jobs=\(c.maxEndedJobs)", "max-connections-per-key=\(c.maxConnectionsPerKey)",
            "service-timeout=\(Self.seconds(c.serviceTimeout))", "work-lease=\(Self.seconds(c.workLease))", "slow-client-timeout=\(Self.seconds(c.slowClientTimeout))",
            "peer-hwm=\(c.peerHighWaterMark)", "max-outbox=\(c.maxOutbox)", "heartbeat=\(Self.seconds(c.heartbeatInterval))",
            "liveness=\(c.liveness)", "max-deliveries=\(c.maxDeliveries)", "drain-timeout=\(Self.seconds(c.drainTimeout))",
            "log-interval=\(Self.seconds(c.logInterval))", "stats-interval=\(statsInterval)s", "log-level=\(logLevel)", "log-format=\(logFormat)",
            "metrics-endpoint=\(metricsEndpoint ?? "off")",
        ].joined(separator: " ")
    }

    /// `2.5s`, not `2.5 seconds`: a settings line is split on spaces by people and tools.
    static func seconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let value = Double(seconds) + Double(attoseconds) / 1e18
        return (value == value.rounded() ? "\(Int64(value))" : "\(value)") + "s"
    }
}
