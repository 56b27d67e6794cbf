public import SMQKeys
public import SMQProtocol

/// Everything the broker core decides by: dispatch strategy, windows, every bound on what a peer
/// can make it hold, and every timeout. Times are in nanoseconds (the core reads no clock).
///
/// ``validate()`` checks each value against its documented range, so nothing later traps on a
/// value a user typed (a negative size, a timeout that overflows 64 bits).
public struct BrokerRules: Sendable, Hashable {
    /// Weighted (by allowlist weight) or round-robin (every weight 1).
    public var strategy: StrideScheduler<Int>.Strategy = .weighted
    /// Fragments in flight per worker key = min(asked credit, weight × baseWindow).
    public var baseWindow = 32
    /// Budget units held at once, queued, in flight and waiting in client outboxes; a fragment
    /// costs ``cost(ofBody:)``.
    public var byteBudget = 256 << 20
    /// Fragments held at once (queued, in flight, results waiting in outboxes).
    public var maxFragments = 65_536
    /// The largest fragment body accepted, requests and results alike.
    public var maxFragment = 1 << 20
    /// The role of a key whose certificate names none.
    public var defaultRole: PeerRole = .client
    /// Open jobs per client key.
    public var maxJobsPerClient = 64
    /// Out-of-order completed fragments remembered per job (fragments done above the first
    /// index not yet done); a job that needs more fails with 400.
    public var maxDoneAhead = 65_536
    /// Ended (failed or cancelled) job ids remembered, at most, for stray SUBMITs (oldest forgotten first).
    public var maxEndedJobs = 16_384
    /// How long an ended job id is remembered.
    public var endedJobMemory: UInt64 = 60_000_000_000
    /// Connections one key may have open at once.
    public var maxConnectionsPerKey = 16
    /// How long a fragment waits for a service that has no worker before its job fails with 404.
    public var serviceTimeout: UInt64 = 10_000_000_000
    /// Heartbeat interval expected of clients (workers announce theirs in READY).
    public var heartbeatInterval: UInt64 = 2_500_000_000
    /// Intervals of silence after which a peer counts as dead.
    public var liveness = 3
    /// Deliveries of one fragment before its job fails with 504.
    public var maxDeliveries = 5
    /// How long a worker may hold one delivery; past it the worker is sent away and the fragment
    /// requeued and charged.
    public var workLease: UInt64 = 300_000_000_000
    /// How long a client's outbox may stay blocked (results it does not read) before the client
    /// is dropped like a vanished one.
    public var slowClientTimeout: UInt64 = 60_000_000_000
    /// Messages one connection's outbox may hold (results and control messages its pipe could not
    /// take); one more and the client is dropped as a slow consumer.
    public var maxOutbox = 4096
    /// How long BUSY asks a client to wait.
    public var busyRetryAfterMilliseconds: UInt32 = 50
    /// The shortest time between two log lines of one kind about one key.
    public var logInterval: UInt64 = 10_000_000_000

    /// A fragment's bookkeeping (its record, its message's header and libzmq's allocation) costs
    /// this much of the budget even when its body is empty.
    public static let fragmentFloor = 1024

    public init() {}

    /// What a fragment with `body` bytes costs of the budget: max(body, 1 KiB).
    @inlinable
    public static func cost(ofBody body: Int) -> Int { max(body, fragmentFloor) }

    /// Budget units one fragment of the largest size costs.
    public var maxFragmentCost: Int { Self.cost(ofBody: maxFragment) }

    /// Why a configuration was refused: one sentence naming the setting.
    public struct Invalid: Error, Hashable, Sendable, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    /// Checks every value against its range.
    /// - Throws: ``Invalid`` naming the first bad value.
    public func validate() throws(Invalid) {
        func check(_ ok: Bool, _ message: @autoclosure () -> String) throws(Invalid) {
            if !ok { throw Invalid(message: message()) }
        }
        let hour: UInt64 = 3_600_000_000_000
        try check((1...100_000).contains(baseWindow), "base window must be 1…100000, got \(baseWindow)")
        try check((1...(256 << 20)).contains(maxFragment), "max fragment size must be 1 B…256 MiB, got \(maxFragment)")
        try check(byteBudget >= maxFragmentCost && byteBudget <= 1 << 40,
                  "the byte budget must be at least the max fragment size (\(maxFragmentCost)) and at most 1 TiB, got \(byteBudget)")
        try check((1...(1 << 24)).contains(maxFragments), "max fragments must be 1…16777216, got \(maxFragments)")
        try check((1...100_000).contains(maxJobsPerClient), "max jobs per client must be 1…100000, got \(maxJobsPerClient)")
        try check((1...(1 << 24)).contains(maxDoneAhead), "max done-ahead must be 1…16777216, got \(maxDoneAhead)")
        try check((0...(1 << 24)).contains(maxEndedJobs), "max ended jobs must be 0…16777216, got \(maxEndedJobs)")
        try check((1...100_000).contains(maxConnectionsPerKey), "max connections per key must be 1…100000, got \(maxConnectionsPerKey)")
        try check((1...(1 << 24)).contains(maxOutbox), "max outbox must be 1…16777216, got \(maxOutbox)")
        try check((1...1000).contains(liveness), "liveness must be 1…1000, got \(liveness)")
        try check((1...1000).contains(maxDeliveries), "max deliveries must be 1…1000, got \(maxDeliveries)")
        try check(heartbeatInterval >= 100_000_000 && heartbeatInterval <= 60_000_000_000, "heartbeat interval must be 100 ms…60 s")
        try check(serviceTimeout >= 1_000_000 && serviceTimeout <= 24 * hour, "service timeout must be 1 ms…24 h")
        try check(workLease >= 1_000_000_000 && workLease <= 7 * 24 * hour, "work lease must be 1 s…7 days")
        try check(slowClientTimeout >= 1_000_000_000 && slowClientTimeout <= 24 * hour, "slow-client timeout must be 1 s…24 h")
        try check(endedJobMemory <= 24 * hour, "ended-job memory must be at most 24 h")
        try check(busyRetryAfterMilliseconds >= 1 && busyRetryAfterMilliseconds <= 60_000, "BUSY retry-after must be 1…60000 ms")
        try check(logInterval >= 1_000_000 && logInterval <= hour, "log interval must be 1 ms…1 h")
    }

    /// Seconds as a user typed them (a command-line flag), as nanoseconds within `range`:
    /// NaN, infinities, negatives and values past the range are refused, never trapped on.
    ///
    /// - Parameters:
    ///   - seconds: The value.
    ///   - range: Allowed seconds.
    /// - Returns: Nanoseconds, or nil when the value is not a number in `range`.
    public static func nanoseconds(fromSeconds seconds: Double, in range: ClosedRange<Double>) -> UInt64? {
        guard seconds.isFinite, range.contains(seconds), range.upperBound <= 1e9 else { return nil }
        let nanos = (seconds * 1e9).rounded()
        guard nanos >= 0, nanos < 1.8e19 else { return nil }
        return UInt64(nanos)
    }
}
