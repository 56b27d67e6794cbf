/// How a ``Broker`` dispatches, what it admits and the bounds it keeps.
public struct BrokerConfiguration: Sendable {
    /// How fragments are spread over a service's workers.
    public struct Strategy: Hashable, Sendable, CustomStringConvertible {
        public let name: String
        public var description: String { name }
        /// Every worker key counts as weight 1.
        public static let roundRobin = Strategy(name: "round-robin")
        /// Shares follow each key's allowlist `weight` (stride scheduling, PROTOCOL.md §5).
        public static let weighted = Strategy(name: "weighted")

        public init?(_ name: String) {
            switch name {
            case "round-robin", "roundrobin", "rr": self = .roundRobin
            case "weighted", "wrr": self = .weighted
            default: return nil
            }
        }

        private init(name: String) { self.name = name }
    }

    /// Endpoints to bind.
    public var endpoints: [String] = ["tcp://*:5555"]
    public var strategy: Strategy = .weighted
    /// Fragments in flight per worker key = min(asked credit, weight × baseWindow).
    public var baseWindow: Int = 32
    /// Fragment bodies held (queued and in flight) at most; beyond it SUBMIT gets BUSY.
    public var byteBudget: Int = 256 << 20
    /// The largest fragment body accepted, requests and results alike.
    public var maxFragmentSize: Int = 1 << 20
    /// The role of an allowlisted key whose certificate names none.
    public var defaultRole: PeerRole = .client
    /// Open jobs per client at once.
    public var maxJobsPerClient: Int = 64
    /// How long a fragment waits for a service that has no worker before its job fails with 404.
    public var serviceTimeout: Duration = .seconds(10)
    /// Heartbeat interval expected of clients (workers announce their own in READY).
    public var heartbeatInterval: Duration = .milliseconds(2500)
    /// Intervals of silence after which a peer counts as dead.
    public var liveness: Int = 3
    /// Deliveries of one fragment before its job fails with 504 (poison).
    public var maxDeliveries: Int = 5
    /// How often the allowlist directory is checked for changed contents.
    public var allowlistCheckInterval: Duration = .seconds(1)
    /// How long BUSY asks a client to wait before resending.
    public var busyRetryAfter: Duration = .milliseconds(50)
    /// How long a graceful shutdown waits for in-flight fragments.
    public var drainTimeout: Duration = .seconds(10)

    public init() {}

    /// Checks the values against their documented ranges.
    /// - Throws: ``SecureMQError`` `.invalidConfiguration` naming the bad value.
    public func validate() throws(SecureMQError) {
        func check(_ ok: Bool, _ message: String) throws(SecureMQError) {
            if !ok { throw SecureMQError(.invalidConfiguration, message) }
        }
        try check(!endpoints.isEmpty, "the broker needs at least one endpoint")
        try check(baseWindow >= 1 && baseWindow <= 100_000, "base window must be 1…100000, got \(baseWindow)")
        try check(maxFragmentSize >= 1 && maxFragmentSize <= 256 << 20, "max fragment size must be 1 B…256 MiB, got \(maxFragmentSize)")
        try check(byteBudget >= maxFragmentSize, "the byte budget (\(byteBudget)) must be at least the max fragment size (\(maxFragmentSize))")
        try check(maxJobsPerClient >= 1, "max jobs per client must be at least 1")
        try check(liveness >= 1, "liveness must be at least 1")
        try check(maxDeliveries >= 1, "max deliveries must be at least 1")
        try check(heartbeatInterval >= .milliseconds(100) && heartbeatInterval <= .seconds(60), "heartbeat interval must be 100 ms…60 s")
    }
}
