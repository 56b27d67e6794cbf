/// What the broker core has done since it started, and what it holds now.
public struct BrokerCounters: Sendable, Hashable {
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
    public var droppedConnections = 0
    public var reruns = 0
    public var revocations = 0
    public var revokedMessages = 0
    /// Connections whose messages carried another key's `User-Id` (their registration ended).
    public var userIDMismatches = 0
    /// Deliveries held past the work lease.
    public var leasesExpired = 0
    /// Worker connections removed for an unreadable message while holding work.
    public var unreadableWorkers = 0
    /// Sends that found a peer's pipe full (results and control messages kept in an outbox,
    /// WORK requeued).
    public var pipeFull = 0
    /// Clients dropped because their outbox did not move for the slow-client timeout.
    public var slowClients = 0
    /// Fragments dropped at dispatch because their job's deadline had passed (C45).
    public var deadlineExceeded = 0
    /// Log lines left out by the rate limiter.
    public var suppressedLogLines = 0
    /// Budget units held now (queued, in flight and in outboxes).
    public var bytesHeld = 0
    public var peakBytesHeld = 0
    /// Fragments held now.
    public var fragmentsHeld = 0
    public var peakFragmentsHeld = 0
    /// Services known now (ones with a worker, queued work or an open job).
    public var services = 0
    /// Open jobs now.
    public var openJobs = 0
    /// Ended job ids remembered now.
    public var endedJobsRemembered = 0
    public var workers = 0
    public var clients = 0

    // Issue 13 (metrics): the same in-place counters, split where an operator needs the cause.
    /// Connections admitted (an allowlisted key's first message on a new routing id).
    public var connectionsAdmitted = 0
    /// First messages refused by the core: too many connections for one key, or no usable
    /// `User-Id` (the ZAP handler's refusals are counted by the adapter).
    public var connectionsRefusedTooMany = 0
    public var connectionsRefusedNoUserID = 0
    /// READY messages refused (a service the key may not serve, an `mmi.*` name, bad credit or
    /// heartbeat, READY twice).
    public var readyRefused = 0
    /// Failed jobs by failure code (cancelled jobs count under their code too). Keys are few
    /// (the codes): incrementing an existing key does not allocate.
    public var failedJobsByCode: [UInt16: Int] = [:]
    /// Requeues by cause: the worker's connection went (dead, dropped, sent away), the work
    /// lease expired, or the attempt failed (a retryable REJECT, a result that did not match).
    public var requeuedWorkerGone = 0
    public var requeuedLeaseExpired = 0
    public var requeuedAttemptFailed = 0

    public init() {}
}
