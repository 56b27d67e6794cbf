import SMQBroker

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
    /// A key pair per endpoint, for rotating the broker's key without downtime: empty (the
    /// default) and every endpoint serves the key pair given to ``Broker/start(keyPair:allowlist:configuration:context:logger:)``;
    /// otherwise exactly one per entry of ``endpoints``, paired in order. Serve the old key on one
    /// endpoint and the new on another, move peers to the new one, then drop the old
    /// (docs/ARCHITECTURE.md, "Endpoints, keys and I/O threads").
    public var endpointKeyPairs: [KeyPair] = []
    public var strategy: Strategy = .weighted
    /// Fragments in flight per worker key = min(asked credit, weight × baseWindow).
    public var baseWindow: Int = 32
    /// Budget held at most (fragments queued and in flight, results waiting for their client);
    /// each fragment costs max(body, 1 KiB). Beyond it, or beyond a client's share, SUBMIT gets BUSY.
    public var byteBudget: Int = 256 << 20
    /// Fragments held at most (queued, in flight, results waiting), whatever their size.
    public var maxFragments: Int = 65_536
    /// The largest fragment body accepted, requests and results alike.
    public var maxFragmentSize: Int = 1 << 20
    /// The role of an allowlisted key whose certificate names none.
    public var defaultRole: PeerRole = .client
    /// Open jobs per client at once.
    public var maxJobsPerClient: Int = 64
    /// Ended (failed or cancelled) job ids remembered for stray SUBMITs, at most.
    public var maxEndedJobs: Int = 16_384
    /// Connections one key may have open at once.
    public var maxConnectionsPerKey: Int = 16
    /// How long a fragment waits for a service that has no worker before its job fails with 404.
    public var serviceTimeout: Duration = .seconds(10)
    /// Heartbeat interval expected of clients (workers announce their own in READY).
    public var heartbeatInterval: Duration = .milliseconds(2500)
    /// Intervals of silence after which a peer counts as dead.
    public var liveness: Int = 3
    /// Deliveries of one fragment before its job fails with 504 (poison).
    public var maxDeliveries: Int = 5
    /// How long a worker may hold one delivery before it is sent away and the fragment requeued
    /// and charged.
    public var workLease: Duration = .seconds(300)
    /// How long a client's results may wait unread before the client is dropped.
    public var slowClientTimeout: Duration = .seconds(60)
    /// Messages libzmq queues per peer connection, each way (ZMQ_SNDHWM and ZMQ_RCVHWM of the
    /// broker's ROUTER, set before it binds): what a client that does not read can leave in
    /// libzmq, and what a peer can park in the broker's receive queue.
    public var peerHighWaterMark: Int = 32
    /// Replies one client connection may leave unread in the broker (beyond libzmq's queue)
    /// before it is dropped as a slow consumer.
    public var maxOutbox: Int = 4096
    /// How often the allowlist directory is checked for changed contents.
    public var allowlistCheckInterval: Duration = .seconds(1)
    /// How long BUSY asks a client to wait before resending.
    public var busyRetryAfter: Duration = .milliseconds(50)
    /// How long a graceful shutdown waits for in-flight fragments.
    public var drainTimeout: Duration = .seconds(10)
    /// The shortest time between two log lines of one kind about one peer key.
    public var logInterval: Duration = .seconds(10)

    public init() {}

    /// Each endpoint with the key pair it serves: `keyPair` for all of them unless
    /// ``endpointKeyPairs`` names one per endpoint.
    public func listeners(defaultKeyPair keyPair: KeyPair) -> [(endpoint: String, keyPair: KeyPair)] {
        endpointKeyPairs.count == endpoints.count ? zip(endpoints, endpointKeyPairs).map { ($0, $1) } : endpoints.map { ($0, keyPair) }
    }

    /// Checks the values against their documented ranges.
    /// - Throws: ``SecureMQError`` `.invalidConfiguration` naming the bad value.
    public func validate() throws(SecureMQError) {
        _ = try rules()
        guard !endpoints.isEmpty else { throw SecureMQError(.invalidConfiguration, "the broker needs at least one endpoint") }
        guard endpointKeyPairs.isEmpty || endpointKeyPairs.count == endpoints.count else {
            throw SecureMQError(.invalidConfiguration,
                                "give one key pair per endpoint or none (\(endpoints.count) endpoints, \(endpointKeyPairs.count) key pairs)")
        }
        guard (1...100_000).contains(peerHighWaterMark) else {
            throw SecureMQError(.invalidConfiguration, "the peer high-water mark must be 1…100000, got \(peerHighWaterMark)")
        }
        guard drainTimeout >= .zero && drainTimeout <= .seconds(86_400) else {
            throw SecureMQError(.invalidConfiguration, "the drain timeout must be 0 s…24 h")
        }
        guard allowlistCheckInterval >= .milliseconds(10) && allowlistCheckInterval <= .seconds(3600) else {
            throw SecureMQError(.invalidConfiguration, "the allowlist check interval must be 10 ms…1 h")
        }
    }

    /// The core's rules; every duration is range-checked before it is converted.
    func rules() throws(SecureMQError) -> BrokerRules {
        func nanos(_ value: Duration, _ name: String) throws(SecureMQError) -> UInt64 {
            guard value >= .zero && value <= .seconds(30 * 86_400) else {
                throw SecureMQError(.invalidConfiguration, "\(name) must be between 0 and 30 days, got \(value)")
            }
            return value.nanoseconds
        }
        var rules = BrokerRules()
        rules.strategy = strategy == .roundRobin ? .roundRobin : .weighted
        rules.baseWindow = baseWindow
        rules.byteBudget = byteBudget
        rules.maxFragments = maxFragments
        rules.maxFragment = maxFragmentSize
        rules.defaultRole = defaultRole
        rules.maxJobsPerClient = maxJobsPerClient
        rules.maxEndedJobs = maxEndedJobs
        rules.maxConnectionsPerKey = maxConnectionsPerKey
        rules.serviceTimeout = try nanos(serviceTimeout, "the service timeout")
        rules.heartbeatInterval = try nanos(heartbeatInterval, "the heartbeat interval")
        rules.maxOutbox = maxOutbox
        rules.liveness = liveness
        rules.maxDeliveries = maxDeliveries
        rules.workLease = try nanos(workLease, "the work lease")
        rules.slowClientTimeout = try nanos(slowClientTimeout, "the slow-client timeout")
        let retry = try nanos(busyRetryAfter, "the BUSY retry-after") / 1_000_000
        rules.busyRetryAfterMilliseconds = UInt32(clamping: retry)
        rules.logInterval = try nanos(logInterval, "the log interval")
        do {
            try rules.validate()
        } catch {
            throw SecureMQError(.invalidConfiguration, error.message)
        }
        return rules
    }
}
