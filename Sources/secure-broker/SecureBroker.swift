import ArgumentParser
import Configuration
import Foundation
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

            Settings: flags > environment variables (SMQ_BROKER_ + the flag's name in capitals, - as _: \
            SMQ_BROKER_MAX_JOBS=64, lists comma-separated) > the --config JSON file (keys are the flags' names: \
            {"max-jobs": 64, "endpoint": ["tcp://*:5555"]}) > defaults. --print-config shows the result.
            """,
        version: SecureMQVersion.current
    )

    @Option(name: .customLong("endpoint"), help: "Endpoint to bind; repeat for several. (default: tcp://*:5555)")
    var endpoints: [String] = []

    @Option(name: .customLong("cert"), help: "The broker's secret certificate file (mode 0600). One serves every endpoint; or repeat it, one per --endpoint, paired in order, to rotate keys: the old key on one endpoint, the new on another. (default: certs/broker.key_secret)")
    var certs: [String] = []

    @Option(help: "Directory of the public certificates allowed in. (default: certs/allowed)")
    var allowlist: String?

    @Option(help: "libzmq I/O threads (they do the CURVE encryption; each connection stays on one). 1–64. (default: one per 4 cores, 1–4: \(SecureBroker.defaultIOThreads) here)")
    var ioThreads: Int?

    @Option(help: "Dispatch strategy: weighted (by allowlist weight) or round-robin. (default: weighted)")
    var strategy: String?

    @Option(help: "Fragments in flight per worker key: min(asked credit, weight × base-window). 1–100000. (default: 32)")
    var baseWindow: Int?

    @Option(help: "Budget of fragments held (queued, in flight, results a client has not read yet); each costs max(body, 1 KiB). Beyond it, or beyond a client's share (budget / (other clients holding work + 2)), SUBMIT gets BUSY. Suffixes K, M, G. (default: 256M)")
    var byteBudget: String?

    @Option(help: "Fragments held at once, whatever their size, shared by clients like the byte budget; beyond it SUBMIT gets BUSY. 1–16777216. (default: 65536)")
    var maxFragments: Int?

    @Option(help: "Largest fragment body accepted (requests and results). Suffixes K, M; at most 256M. (default: 1M)")
    var maxFragment: String?

    @Option(help: "Role of an allowlisted key whose certificate names none: client, worker or both. (default: client)")
    var defaultRole: String?

    @Option(help: "Open jobs per client at once (one more gets BUSY). 1–100000. (default: 64)")
    var maxJobs: Int?

    @Option(help: "Ended (failed or cancelled) job ids remembered so stray SUBMITs get 410; oldest forgotten first. 0–16777216. (default: 16384)")
    var maxEndedJobs: Int?

    @Option(help: "Connections one key may have open at once; more get DISCONNECT. 1–100000. (default: 16)")
    var maxConnectionsPerKey: Int?

    @Option(help: "Seconds a fragment waits for a service with no worker before its job fails with 404. 0.001–86400. (default: 10)")
    var serviceTimeout: Double?

    @Option(help: "Seconds a worker may hold one fragment; past it the worker gets DISCONNECT and the fragment is requeued and charged (504 after max-deliveries). 1–604800. (default: 300)")
    var workLease: Double?

    @Option(help: "Seconds a client may leave its results unread (its work is not dispatched meanwhile) before it is dropped like a vanished client. 1–86400. (default: 60)")
    var slowClientTimeout: Double?

    @Option(help: "Messages libzmq queues per peer connection each way (ZMQ_SNDHWM and ZMQ_RCVHWM of the ROUTER); beyond it results wait in that client's outbox, counted against it, and a peer that sends faster than the broker reads waits in TCP. 1–100000. (default: 32)")
    var peerHwm: Int?

    @Option(help: "Replies (results, FAILED, BUSY) one client connection may leave unread in the broker beyond libzmq's queue; one more and it gets DISCONNECT as a slow consumer. 1–16777216. (default: 4096)")
    var maxOutbox: Int?

    @Option(help: "Heartbeat interval expected of clients, in milliseconds. 100–60000. (default: 2500)")
    var heartbeatMs: Int?

    @Option(help: "Intervals of silence after which a peer is dead. 1–1000. (default: 3)")
    var liveness: Int?

    @Option(help: "Deliveries of one fragment before its job fails with 504. 1–1000. (default: 5)")
    var maxDeliveries: Int?

    @Option(help: "Seconds a graceful shutdown waits for in-flight fragments. 0–86400. (default: 10)")
    var drainTimeout: Double?

    @Option(help: "Seconds between two log lines of one kind about one peer key; the next line says how many were suppressed. 0.001–3600. (default: 10)")
    var logInterval: Double?

    @Option(help: "Seconds between statistics log lines. 1–86400. (default: 60)")
    var statsInterval: Int?

    @Option(help: "Log level: trace, debug, info, notice, warning, error. (default: info)")
    var logLevel: String?

    @Option(help: "Serve Prometheus metrics at http://HOST:PORT/metrics (an IPv4 address or localhost; port 0 picks one and logs it). Off by default; keep it on a private interface.")
    var metricsEndpoint: String?

    @Option(help: "Log format: text (one readable line per event) or json (one JSON object per line, for log shippers). (default: text)")
    var logFormat: String?

    @Flag(help: "Load the secret certificate even if group/world can read it.")
    var allowInsecureSecret = false

    @Option(help: "A JSON file of settings keyed by the flags' names ({\"max-jobs\": 64, \"endpoint\": [\"tcp://*:5555\"]}); an unknown key, a wrong type or a value out of range is an error. Flags > environment (SMQ_BROKER_MAX_JOBS=64, …) > this file > defaults. Also SMQ_BROKER_CONFIG.")
    var config: String?

    @Flag(help: "Print the effective settings (flags > environment > file > defaults) as JSON, a valid --config file, and exit. Certificates appear as paths only.")
    var printConfig = false

    /// libzmq I/O threads when neither flag, environment nor file says: one per 4 online cores,
    /// 1 to 4. The broker's own socket thread takes a core, and on a 2-core host a second I/O
    /// thread bought nothing (docs/ARCHITECTURE.md, "Endpoints, keys and I/O threads"); a host
    /// with many cores gets more threads for CURVE, which is where one broker's time goes.
    static let defaultIOThreads = ioThreads(forCores: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))

    static func ioThreads(forCores cores: Int) -> Int {
        min(4, max(1, cores / 4))
    }

    /// The settings given as flags, by name: the top layer of ``BrokerSettings``.
    func flagLayer() -> [String: ConfigContent] {
        var layer: [String: ConfigContent] = [:]
        func put(_ key: String, _ value: ConfigContent?) { if let value { layer[key] = value } }
        if !endpoints.isEmpty { layer["endpoint"] = .stringArray(endpoints) }
        if !certs.isEmpty { layer["cert"] = .stringArray(certs) }
        put("allowlist", allowlist.map(ConfigContent.string))
        put("io-threads", ioThreads.map(ConfigContent.int))
        put("strategy", strategy.map(ConfigContent.string))
        put("base-window", baseWindow.map(ConfigContent.int))
        put("byte-budget", byteBudget.map(ConfigContent.string))
        put("max-fragments", maxFragments.map(ConfigContent.int))
        put("max-fragment", maxFragment.map(ConfigContent.string))
        put("default-role", defaultRole.map(ConfigContent.string))
        put("max-jobs", maxJobs.map(ConfigContent.int))
        put("max-ended-jobs", maxEndedJobs.map(ConfigContent.int))
        put("max-connections-per-key", maxConnectionsPerKey.map(ConfigContent.int))
        put("service-timeout", serviceTimeout.map(ConfigContent.double))
        put("work-lease", workLease.map(ConfigContent.double))
        put("slow-client-timeout", slowClientTimeout.map(ConfigContent.double))
        put("peer-hwm", peerHwm.map(ConfigContent.int))
        put("max-outbox", maxOutbox.map(ConfigContent.int))
        put("heartbeat-ms", heartbeatMs.map(ConfigContent.int))
        put("liveness", liveness.map(ConfigContent.int))
        put("max-deliveries", maxDeliveries.map(ConfigContent.int))
        put("drain-timeout", drainTimeout.map(ConfigContent.double))
        put("log-interval", logInterval.map(ConfigContent.double))
        put("stats-interval", statsInterval.map(ConfigContent.int))
        put("log-level", logLevel.map(ConfigContent.string))
        put("log-format", logFormat.map(ConfigContent.string))
        put("metrics-endpoint", metricsEndpoint.map(ConfigContent.string))
        if allowInsecureSecret { layer["allow-insecure-secret"] = .bool(true) }
        return layer
    }

    /// Seconds from a setting as a duration: NaN, infinities, negatives and values out of range are
    /// refused with the flag's name, never converted (converting 1e300 would trap).
    private static func seconds(_ value: Double, _ flag: String, _ range: ClosedRange<Double>) throws -> Duration {
        guard let nanos = BrokerRules.nanoseconds(fromSeconds: value, in: range) else {
            throw ValidationError("\(flag) must be a number of seconds from \(range.lowerBound) to \(range.upperBound), got \(value)")
        }
        return .nanoseconds(Int64(nanos))
    }

    private static func within(_ value: Int, _ flag: String, _ range: ClosedRange<Int>) throws -> Int {
        guard range.contains(value) else { throw ValidationError("\(flag) must be \(range.lowerBound)–\(range.upperBound), got \(value)") }
        return value
    }

    /// Every setting checked and turned into the library's configuration (endpoint key pairs
    /// are added once the certificates are loaded).
    static func makeConfiguration(_ s: BrokerSettings) throws -> BrokerConfiguration {
        guard PeerRole(rawValue: s.string("default-role")) != nil else {
            throw ValidationError("--default-role must be client, worker or both, not '\(s.string("default-role"))'")
        }
        _ = try within(s.int("stats-interval"), "--stats-interval", 1...86_400)
        guard Logger.Level(rawValue: s.string("log-level")) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        guard ["text", "json"].contains(s.string("log-format")) else { throw ValidationError("--log-format must be text or json, not '\(s.string("log-format"))'") }
        if let metricsEndpoint = s.optionalString("metrics-endpoint"), MetricsAddress(metricsEndpoint) == nil {
            throw ValidationError("--metrics-endpoint must be HOST:PORT with an IPv4 address or localhost, such as 127.0.0.1:9464; got '\(metricsEndpoint)'")
        }
        _ = try within(s.int("io-threads"), "--io-threads", SecureContext.ioThreadRange)
        let endpoints = s.strings("endpoint")
        let certs = s.strings("cert")
        guard !endpoints.isEmpty else { throw ValidationError("--endpoint: give at least one endpoint") }
        guard certs.count == 1 || certs.count == endpoints.count else {
            throw ValidationError("--cert given \(certs.count) times for \(endpoints.count) --endpoint: give one certificate for every endpoint, or exactly one per --endpoint, paired in order")
        }
        guard let strategy = BrokerConfiguration.Strategy(s.string("strategy")) else {
            throw ValidationError("--strategy must be 'weighted' or 'round-robin', not '\(s.string("strategy"))'")
        }
        var configuration = BrokerConfiguration()
        configuration.endpoints = endpoints
        configuration.strategy = strategy
        configuration.baseWindow = try within(s.int("base-window"), "--base-window", 1...100_000)
        let byteBudget = s.string("byte-budget"), maxFragment = s.string("max-fragment")
        configuration.byteBudget = try ByteSize.parse(byteBudget, option: "--byte-budget")
        configuration.maxFragments = try within(s.int("max-fragments"), "--max-fragments", 1...(1 << 24))
        configuration.maxFragmentSize = try ByteSize.parse(maxFragment, option: "--max-fragment")
        guard configuration.maxFragmentSize <= 256 << 20 else { throw ValidationError("--max-fragment must be at most 256M, got '\(maxFragment)'") }
        guard configuration.byteBudget <= 1 << 40 else { throw ValidationError("--byte-budget must be at most 1024G, got '\(byteBudget)'") }
        guard configuration.byteBudget >= max(configuration.maxFragmentSize, BrokerRules.fragmentFloor) else {
            throw ValidationError("--byte-budget (\(byteBudget)) must be at least --max-fragment (\(maxFragment)) and 1K")
        }
        configuration.defaultRole = PeerRole(rawValue: s.string("default-role")) ?? .client
        configuration.maxJobsPerClient = try within(s.int("max-jobs"), "--max-jobs", 1...100_000)
        configuration.maxEndedJobs = try within(s.int("max-ended-jobs"), "--max-ended-jobs", 0...(1 << 24))
        configuration.maxConnectionsPerKey = try within(s.int("max-connections-per-key"), "--max-connections-per-key", 1...100_000)
        configuration.serviceTimeout = try seconds(s.double("service-timeout"), "--service-timeout", 0.001...86_400)
        configuration.workLease = try seconds(s.double("work-lease"), "--work-lease", 1...604_800)
        configuration.slowClientTimeout = try seconds(s.double("slow-client-timeout"), "--slow-client-timeout", 1...86_400)
        configuration.peerHighWaterMark = try within(s.int("peer-hwm"), "--peer-hwm", 1...100_000)
        configuration.maxOutbox = try within(s.int("max-outbox"), "--max-outbox", 1...(1 << 24))
        configuration.heartbeatInterval = .milliseconds(try within(s.int("heartbeat-ms"), "--heartbeat-ms", 100...60_000))
        configuration.liveness = try within(s.int("liveness"), "--liveness", 1...1000)
        configuration.maxDeliveries = try within(s.int("max-deliveries"), "--max-deliveries", 1...1000)
        configuration.drainTimeout = try seconds(s.double("drain-timeout"), "--drain-timeout", 0...86_400)
        configuration.logInterval = try seconds(s.double("log-interval"), "--log-interval", 0.001...3600)
        do {
            try configuration.validate()
        } catch {
            throw ValidationError(error.message)
        }
        return configuration
    }

    func run() async throws {
        let settings: BrokerSettings
        var configuration: BrokerConfiguration
        do {
            settings = try await BrokerSettings.resolve(flags: flagLayer(), configFile: config ?? ProcessInfo.processInfo.environment["SMQ_BROKER_CONFIG"])
        } catch let error as SettingsError {
            fail(error.message, status: usageError)
        }
        do {
            configuration = try Self.makeConfiguration(settings)
        } catch {
            let message = (error as? ValidationError)?.message ?? "\(error)"
            fail(message + settings.origin(ofSettingIn: message), status: usageError)
        }
        if printConfig {
            print(settings.json())
            return
        }

        let level = Logger.Level(rawValue: settings.string("log-level")) ?? .info
        let json = settings.string("log-format") == "json"
        LoggingSystem.bootstrap { label in
            if json { return JSONLogHandler(label: label, level: level) }
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "secure-broker")

        do {
            // One load per file: the same certificate named for two endpoints is one key pair.
            var loaded: [String: KeyPair] = [:]
            var pairs: [KeyPair] = []
            for path in settings.strings("cert") {
                if let pair = loaded[path] {
                    pairs.append(pair)
                    continue
                }
                let certificate = try Certificate.load(path: path, allowInsecurePermissions: settings.bool("allow-insecure-secret"))
                let pair = try certificate.keyPair()
                loaded[path] = pair
                pairs.append(pair)
            }
            if pairs.count > 1 { configuration.endpointKeyPairs = pairs }
            let allowed = try Allowlist(directory: settings.string("allowlist"), logger: logger)
            let context = try SecureContext(ioThreads: settings.int("io-threads"), logger: logger)
            logger.info("secure-broker starting", metadata: [
                "version": "\(SecureMQVersion.current)", "settings": "\(effectiveSettings(configuration, settings))",
            ])
            let service = BrokerService(statsInterval: .seconds(settings.int("stats-interval")), keyPair: pairs[0], allowlist: allowed,
                                        configuration: configuration, context: context, certs: settings.strings("cert"),
                                        metrics: settings.optionalString("metrics-endpoint").flatMap(MetricsAddress.init), logger: logger)
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
    let context: SecureContext
    /// The certificate file behind each endpoint (one for all, or one each).
    let certs: [String]
    let metrics: MetricsAddress?
    let logger: Logger

    func run() async throws {
        let broker = try await Broker.start(keyPair: keyPair, allowlist: allowlist, configuration: configuration,
                                            context: context, logger: logger)
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
        // Which key each endpoint serves: during a rotation an operator checks here that the old
        // and the new key are both up before moving peers (docs/ARCHITECTURE.md).
        for (index, (endpoint, key)) in zip(broker.endpoints, broker.endpointKeys).enumerated() {
            logger.info("serving endpoint", metadata: [
                "endpoint": "\(endpoint)", "key": "\(key.fingerprint)", "cert": "\(certs[certs.count == 1 ? 0 : index])",
            ])
        }
        logger.info("listening", metadata: [
            "endpoints": "\(broker.endpoints.joined(separator: " "))", "strategy": "\(configuration.strategy)",
            "key": "\(Set(broker.endpointKeys).count == 1 ? keyPair.publicKey.fingerprint : broker.endpointKeys.map(\.fingerprint).joined(separator: ","))",
            "ioThreads": "\(context.ioThreads)",
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

/// The exit status of a bad setting, whether from a flag, a variable or the file: EX_USAGE (64),
/// as ArgumentParser exits for a flag it cannot parse.
let usageError: Int32 = 64

/// Prints `Error: …` to stderr and exits (1 unless told): user mistakes get a sentence, not a
/// stack trace.
func fail(_ message: String, status: Int32 = 1) -> Never {
    let line = "Error: \(message)\n"
    _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
    exit(status)
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
    /// certificates' paths, never their contents), with the configuration file read if any.
    func effectiveSettings(_ c: BrokerConfiguration, _ s: BrokerSettings) -> String {
        [
            "endpoints=\(c.endpoints.joined(separator: ","))", "cert=\(s.strings("cert").joined(separator: ","))",
            "allowlist=\(s.string("allowlist"))", "io-threads=\(s.int("io-threads"))", "strategy=\(c.strategy)",
            "base-window=\(c.baseWindow)", "byte-budget=\(c.byteBudget)", "max-fragments=\(c.maxFragments)",
            "max-fragment=\(c.maxFragmentSize)", "default-role=\(c.defaultRole)", "max-jobs=\(c.maxJobsPerClient)",
            "max-ended-jobs=\(c.maxEndedJobs)", "max-connections-per-key=\(c.maxConnectionsPerKey)",
            "service-timeout=\(Self.seconds(c.serviceTimeout))", "work-lease=\(Self.seconds(c.workLease))", "slow-client-timeout=\(Self.seconds(c.slowClientTimeout))",
            "peer-hwm=\(c.peerHighWaterMark)", "max-outbox=\(c.maxOutbox)", "heartbeat=\(Self.seconds(c.heartbeatInterval))",
            "liveness=\(c.liveness)", "max-deliveries=\(c.maxDeliveries)", "drain-timeout=\(Self.seconds(c.drainTimeout))",
            "log-interval=\(Self.seconds(c.logInterval))", "stats-interval=\(s.int("stats-interval"))s", "log-level=\(s.string("log-level"))",
            "log-format=\(s.string("log-format"))", "metrics-endpoint=\(s.optionalString("metrics-endpoint") ?? "off")",
            "config=\(s.configFile ?? "none")",
        ].joined(separator: " ")
    }

    /// `2.5s`, not `2.5 seconds`: a settings line is split on spaces by people and tools.
    static func seconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let value = Double(seconds) + Double(attoseconds) / 1e18
        return (value == value.rounded() ? "\(Int64(value))" : "\(value)") + "s"
    }
}
