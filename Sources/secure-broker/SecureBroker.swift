import ArgumentParser
import Glibc
import Logging
import SecureMQ
import ServiceLifecycle
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
            """
    )

    @Option(name: .customLong("endpoint"), help: "Endpoint to bind; repeat for several. (default: tcp://*:5555)")
    var endpoints: [String] = []

    @Option(help: "The broker's secret certificate file (mode 0600).")
    var cert: String = "certs/broker.key_secret"

    @Option(help: "Directory of the public certificates allowed in.")
    var allowlist: String = "certs/allowed"

    @Option(help: "Dispatch strategy: weighted (by allowlist weight) or round-robin.")
    var strategy: String = "weighted"

    @Option(help: "Fragments in flight per worker key: min(asked credit, weight × base-window).")
    var baseWindow: Int = 32

    @Option(help: "Bytes of fragment bodies held (queued and in flight) before SUBMIT gets BUSY. Suffixes K, M, G.")
    var byteBudget: String = "256M"

    @Option(help: "Largest fragment body accepted (requests and results). Suffixes K, M.")
    var maxFragment: String = "1M"

    @Option(help: "Role of an allowlisted key whose certificate names none: client, worker or both.")
    var defaultRole: String = "client"

    @Option(help: "Open jobs per client at once.")
    var maxJobs: Int = 64

    @Option(help: "Seconds a fragment waits for a service with no worker before its job fails with 404.")
    var serviceTimeout: Double = 10

    @Option(help: "Heartbeat interval expected of clients, in milliseconds.")
    var heartbeatMs: Int = 2500

    @Option(help: "Intervals of silence after which a peer is dead.")
    var liveness: Int = 3

    @Option(help: "Deliveries of one fragment before its job fails with 504.")
    var maxDeliveries: Int = 5

    @Option(help: "Seconds a graceful shutdown waits for in-flight fragments.")
    var drainTimeout: Double = 10

    @Option(help: "Seconds between statistics log lines.")
    var statsInterval: Int = 60

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "info"

    @Flag(help: "Load the secret certificate even if group/world can read it.")
    var allowInsecureSecret = false

    func validate() throws {
        guard BrokerConfiguration.Strategy(strategy) != nil else {
            throw ValidationError("--strategy must be 'weighted' or 'round-robin', not '\(strategy)'")
        }
        guard PeerRole(rawValue: defaultRole) != nil else {
            throw ValidationError("--default-role must be client, worker or both, not '\(defaultRole)'")
        }
        guard statsInterval >= 1 else { throw ValidationError("--stats-interval must be at least 1 second") }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        _ = try ByteSize.parse(byteBudget, option: "--byte-budget")
        _ = try ByteSize.parse(maxFragment, option: "--max-fragment")
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "secure-broker")

        var configuration = BrokerConfiguration()
        configuration.endpoints = endpoints.isEmpty ? ["tcp://*:5555"] : endpoints
        configuration.strategy = BrokerConfiguration.Strategy(strategy)!
        configuration.baseWindow = baseWindow
        configuration.byteBudget = try ByteSize.parse(byteBudget, option: "--byte-budget")
        configuration.maxFragmentSize = try ByteSize.parse(maxFragment, option: "--max-fragment")
        configuration.defaultRole = PeerRole(rawValue: defaultRole)!
        configuration.maxJobsPerClient = maxJobs
        configuration.serviceTimeout = .milliseconds(Int(serviceTimeout * 1000))
        configuration.heartbeatInterval = .milliseconds(heartbeatMs)
        configuration.liveness = liveness
        configuration.maxDeliveries = maxDeliveries
        configuration.drainTimeout = .milliseconds(Int(drainTimeout * 1000))

        do {
            try configuration.validate()
            let certificate = try Certificate.load(path: cert, allowInsecurePermissions: allowInsecureSecret)
            let keyPair = try certificate.keyPair()
            let allowed = try Allowlist(directory: allowlist, logger: logger)
            let service = BrokerService(statsInterval: .seconds(statsInterval), keyPair: keyPair, allowlist: allowed, configuration: configuration, logger: logger)
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
    let logger: Logger

    func run() async throws {
        let broker = try await Broker.start(keyPair: keyPair, allowlist: allowlist, configuration: configuration, logger: logger)
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
            "revocations": "\(statistics.revocations)", "bytesHeld": "\(statistics.bytesHeld)", "peakBytesHeld": "\(statistics.peakBytesHeld)",
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
