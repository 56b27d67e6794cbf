/// What a broker has done since it started.
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
    /// Fragment bodies held now (queued and in flight), in bytes.
    public var bytesHeld = 0
    /// The most bytes held at once.
    public var peakBytesHeld = 0
    /// Worker keys connected now, and their dispatch counts by key fingerprint.
    public var workers = 0
    public var clients = 0

    public init() {}
}
