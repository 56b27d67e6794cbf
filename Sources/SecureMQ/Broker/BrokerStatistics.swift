import SMQBroker

/// What a broker has done since it started, and what it holds now.
public struct BrokerStatistics: Sendable, Hashable {
    public var submitted = 0
    public var dispatched = 0
    public var results = 0
    public var requeued = 0
    public var completedJobs = 0
    public var failedJobs = 0
    public var abandonedJobs = 0
    public var busy = 0
    public var malformed = 0
    public var roleViolations = 0
    public var forbidden = 0
    public var duplicateSubmits = 0
    public var strayResults = 0
    public var deadWorkers = 0
    /// Connections found dropped (a killed process, a network cut).
    public var droppedConnections = 0
    /// Fragments run again because their client reconnected and may have lost the result.
    public var reruns = 0
    public var revocations = 0
    public var revokedMessages = 0
    /// Connections whose messages carried another key's `User-Id` (their registration ended).
    public var userIDMismatches = 0
    /// Deliveries held past the work lease.
    public var leasesExpired = 0
    /// Worker connections sent away for an unreadable message while holding work.
    public var unreadableWorkers = 0
    /// Sends that found a peer's pipe full.
    public var pipeFull = 0
    /// Clients dropped because they did not read their results.
    public var slowClients = 0
    /// Log lines left out by the rate limiter.
    public var suppressedLogLines = 0
    /// Budget held now (queued, in flight, results waiting), in bytes (each fragment at least 1 KiB).
    public var bytesHeld = 0
    /// The most budget held at once.
    public var peakBytesHeld = 0
    /// Fragments held now, and the most at once.
    public var fragmentsHeld = 0
    public var peakFragmentsHeld = 0
    /// Services known now, open jobs now, ended job ids remembered now.
    public var services = 0
    public var openJobs = 0
    public var endedJobsRemembered = 0
    /// Worker keys and client keys connected now.
    public var workers = 0
    public var clients = 0

    public init() {}

    init(_ c: BrokerCounters) {
        submitted = c.submitted; dispatched = c.dispatched; results = c.results; requeued = c.requeued
        completedJobs = c.completedJobs; failedJobs = c.failedJobs; abandonedJobs = c.abandonedJobs; busy = c.busy
        malformed = c.malformed; roleViolations = c.roleViolations; forbidden = c.forbidden
        duplicateSubmits = c.duplicateSubmits; strayResults = c.strayResults; deadWorkers = c.deadWorkers
        droppedConnections = c.droppedConnections; reruns = c.reruns; revocations = c.revocations
        revokedMessages = c.revokedMessages; userIDMismatches = c.userIDMismatches; leasesExpired = c.leasesExpired
        unreadableWorkers = c.unreadableWorkers; pipeFull = c.pipeFull; slowClients = c.slowClients
        suppressedLogLines = c.suppressedLogLines; bytesHeld = c.bytesHeld; peakBytesHeld = c.peakBytesHeld
        fragmentsHeld = c.fragmentsHeld; peakFragmentsHeld = c.peakFragmentsHeld; services = c.services
        openJobs = c.openJobs; endedJobsRemembered = c.endedJobsRemembered; workers = c.workers; clients = c.clients
    }
}
