import CoreMetrics
import Logging
import SMQProtocol

/// Why a fragment went back to its queue (the `cause` label of the requeue counter).
enum RequeueCause {
    case workerGone, leaseExpired, attemptFailed
}

/// What a metrics exporter reads from the core at scrape time: the counters, the figures held
/// now per service and per worker key, and the limits they are measured against.
///
/// The core keeps nothing for it per message beyond the counters it already increments in
/// place; this snapshot is built on the core's thread when asked (one walk over services and
/// worker connections), so a scrape costs the broker's loop one short pause, never the hot path.
public struct BrokerMetricsSnapshot: Sendable {
    /// One service's queue and work in flight.
    public struct Service: Sendable, Hashable {
        public var name: String
        public var queued: Int
        public var inFlight: Int
        public var workers: Int
    }

    /// One worker key on one service, labelled by its allowlist name (never a key or secret).
    public struct Worker: Sendable, Hashable {
        public var name: String
        public var service: String
        public var connections: Int
        public var inFlight: Int
    }

    public var counters: BrokerCounters
    public var services: [Service]
    public var workers: [Worker]
    /// Live connections by role now.
    public var clientConnections: Int
    public var workerConnections: Int
    /// Connections that have not sent READY (or SUBMIT) yet count as clients until they do.
    public var byteBudget: Int
    public var maxFragments: Int
    public var draining: Bool
}

extension BrokerCore {
    /// A fragment's first dispatch: how long it queued. One optional check when metrics are off.
    @inline(__always)
    func recordDispatchLatency(_ fragment: HeldFragment) {
        dispatchLatency?.recordNanoseconds(Int64(truncatingIfNeeded: now &- fragment.submittedAt))
    }

    @inline(__always)
    func recordResultLatency(_ fragment: HeldFragment) {
        resultLatency?.recordNanoseconds(Int64(truncatingIfNeeded: now &- fragment.submittedAt))
    }

    /// The figures a metrics exporter publishes; see ``BrokerMetricsSnapshot``.
    public func metricsSnapshot() -> BrokerMetricsSnapshot {
        var services: [BrokerMetricsSnapshot.Service] = []
        services.reserveCapacity(self.services.count)
        var inFlightByService: [String: (inFlight: Int, workers: Int)] = [:]
        var workers: [String: BrokerMetricsSnapshot.Worker] = [:]
        var clientConnections = 0
        var workerConnections = 0
        for connection in connections.values where !connection.gone {
            guard let state = connection.worker else {
                clientConnections += 1
                continue
            }
            workerConnections += 1
            let service = state.service.name
            inFlightByService[service, default: (0, 0)].inFlight += state.inFlight
            inFlightByService[service, default: (0, 0)].workers += 1
            let id = "\(connection.key.name)\u{0}\(service)"
            workers[id, default: .init(name: connection.key.name, service: service, connections: 0, inFlight: 0)].connections += 1
            workers[id]?.inFlight += state.inFlight
        }
        for (name, queue) in self.services {
            let figures = inFlightByService[name] ?? (0, 0)
            services.append(.init(name: name, queued: queue.queuedCount, inFlight: figures.inFlight, workers: figures.workers))
        }
        return BrokerMetricsSnapshot(
            counters: snapshot, services: services.sorted { $0.name < $1.name },
            workers: workers.values.sorted { ($0.name, $0.service) < ($1.name, $1.service) },
            clientConnections: clientConnections, workerConnections: workerConnections,
            byteBudget: rules.byteBudget, maxFragments: rules.maxFragments, draining: draining)
    }

    /// One info line per job end (issue 13): what an operator greps for when a user asks
    /// "what happened to my job". Per job, never per fragment; nothing is built when info is off.
    /// Each client key has a budget (``JobLineBudget``): beyond it lines are left out, counted in
    /// the suppressed-lines figure, and the key's next line says how many.
    func logJobEnd(_ job: Job, outcome: String, code: FailureCode?) {
        guard logger.logLevel <= .info else { return }
        guard let suppressed = job.owner.jobLines.admit(now: now) else {
            counters.suppressedLogLines += 1
            return
        }
        let duration = Double(now &- job.openedAt) / 1e9
        var metadata: Logger.Metadata = [
            "job": "\(Self.shortJobID(job.key.jobID))", "client": "\(job.owner.name)", "service": "\(PeerText.escaped(job.service.name))",
            "fragments": "\(job.count)", "bytes": "\(job.totalLength)",
            "seconds": "\((duration * 1000).rounded() / 1000)", "outcome": "\(outcome)",
        ]
        if let code { metadata["code"] = "\(code.rawValue)" }
        if suppressed > 0 { metadata["suppressed"] = "\(suppressed)" }
        logger.info("job ended", metadata: metadata)
    }

    /// The first 8 hex digits of a job id: enough to tell jobs apart in a log, short enough to read.
    static func shortJobID(_ id: JobID) -> String {
        String("\(id)".prefix(8))
    }
}

/// A token bucket for one key's job-end lines: a burst of ``burst`` lines, refilled at one line
/// per ``refillInterval``. At 200-odd bytes a line, a key that ends jobs as fast as it can costs
/// the log about 200 B/s, within the broker's bound for peer-caused lines (issue 10).
struct JobLineBudget {
    static let burst = 20
    static let refillInterval: UInt64 = 1_000_000_000

    private var tokens = JobLineBudget.burst
    private var refilledAt: UInt64 = 0
    private var suppressed = 0

    /// nil when the line is to be left out; else how many were left out before it.
    mutating func admit(now: UInt64) -> Int? {
        if refilledAt == 0 { refilledAt = now }
        let earned = now > refilledAt ? (now - refilledAt) / Self.refillInterval : 0
        if earned >= UInt64(Self.burst) {
            tokens = Self.burst
            refilledAt = now
        } else if earned > 0 {
            tokens = min(Self.burst, tokens + Int(earned))
            refilledAt += earned * Self.refillInterval
        }
        guard tokens > 0 else {
            suppressed += 1
            return nil
        }
        tokens -= 1
        defer { suppressed = 0 }
        return suppressed
    }
}
