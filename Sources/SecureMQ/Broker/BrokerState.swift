import DequeModule
import SMQProtocol

/// Everything the broker knows about one allowlisted key: policy from its allowlist entry, and
/// the connections it has. Weight and credit belong to the key, not to a connection.
final class KeyState {
    let serial: Int
    let publicKey: PublicKey
    /// Z85 text as C bytes, compared with each message's `User-Id` without allocating.
    let userID: [CChar]
    var entry: AllowlistEntry
    var role: PeerRole
    var connections: [RoutingID: Connection] = [:]
    var revoked = false
    var lastRevocationLog: UInt64 = 0

    init(serial: Int, entry: AllowlistEntry, role: PeerRole) {
        self.serial = serial
        publicKey = entry.publicKey
        userID = Array(entry.publicKey.z85.utf8CString)
        self.entry = entry
        self.role = role
    }

    var name: String { entry.name }
    var fingerprint: String { publicKey.fingerprint }
}

/// One ROUTER peer connection.
final class Connection {
    let id: RoutingID
    let address: [UInt8]
    unowned let key: KeyState
    var lastSeen: UInt64
    // As a worker (after READY):
    var service: ServiceState?
    var askedCredit = 0
    var inFlight = 0
    var heartbeatInterval: UInt64 = 0
    var lastHeartbeatSent: UInt64 = 0
    var deliveries: Set<UInt64> = []
    /// Suspects held (fragments whose earlier worker died): never more than one (§4.1).
    var suspects = 0
    // As a client:
    var jobs: Set<JobKey> = []
    var pingSeen = false

    init(id: RoutingID, address: [UInt8], key: KeyState, now: UInt64) {
        self.id = id
        self.address = address
        self.key = key
        lastSeen = now
    }

    var isWorker: Bool { service != nil }
}

/// A job is scoped by the client key that opened it.
struct JobKey: Hashable {
    let client: Int
    let jobID: JobID
}

final class JobState {
    let key: JobKey
    unowned let service: ServiceState
    let count: UInt32
    let totalLength: UInt64
    /// The connection results go to: the one that sent the latest SUBMIT.
    var replyTo: Connection
    /// Indexes queued, in flight or done.
    var accepted = SparseBitSet()
    /// Indexes whose result was sent.
    var done = SparseBitSet()
    /// Set once the client resubmitted from a new connection: done fragments may run again.
    var rerunAllowed = false
    /// Queued and in-flight fragments, to drop them when the job ends.
    var live: [UInt32: FragmentState] = [:]

    init(key: JobKey, service: ServiceState, count: UInt32, totalLength: UInt64, replyTo: Connection) {
        self.key = key
        self.service = service
        self.count = count
        self.totalLength = totalLength
        self.replyTo = replyTo
    }
}

/// A fragment the broker holds: the SUBMIT exactly as received, rewritten in place into WORK for
/// each delivery, so the body is never copied in Swift.
final class FragmentState {
    unowned let job: JobState
    let index: UInt32
    let message: ZMQMessage
    let bodyLength: Int
    var attempts = 0
    var suspect = false
    var enqueuedAt: UInt64
    var deliveryID: UInt64 = 0
    weak var worker: Connection?
    /// In a service queue now (counted in its `queuedCount`).
    var queued = false
    /// Whether the current delivery counts against its worker's one-suspect limit.
    var wasSuspectWhenSent = false
    var dropped = false

    init(job: JobState, index: UInt32, message: ZMQMessage, bodyLength: Int, now: UInt64) {
        self.job = job
        self.index = index
        self.message = message
        self.bodyLength = bodyLength
        enqueuedAt = now
    }
}

/// A service's worker keys (the scheduler's items) and its queue, fair across clients.
final class ServiceState {
    let name: String
    var scheduler: StrideScheduler<Int>
    /// Per worker key serial: the connections READY for this service, and the key's credit.
    var workers: [Int: ServiceWorker] = [:]
    /// Queued fragments per client key, served round-robin so one big job starves nobody.
    var queues: [Int: Deque<FragmentState>] = [:]
    var clientOrder: Deque<Int> = []
    /// Fragments charged by a worker's death, served first, one per worker at a time.
    var suspects: Deque<FragmentState> = []
    var queuedCount = 0

    init(name: String, strategy: BrokerConfiguration.Strategy) {
        self.name = name
        scheduler = StrideScheduler(strategy: strategy == .roundRobin ? .roundRobin : .weighted)
    }

    func enqueue(_ fragment: FragmentState, client: Int, front: Bool = false) {
        fragment.queued = true
        if fragment.suspect {
            suspects.append(fragment)
            queuedCount += 1
            return
        }
        if queues[client] == nil { queues[client] = [] }
        if queues[client]!.isEmpty { clientOrder.append(client) }
        if front { queues[client]!.prepend(fragment) } else { queues[client]!.append(fragment) }
        queuedCount += 1
    }

    /// The next fragment for `worker`: a suspect first if it holds none, else round-robin over
    /// clients; skips fragments whose job has ended.
    func dequeue(for worker: Connection) -> FragmentState? {
        if worker.suspects == 0 {
            while let next = suspects.popFirst() {
                if !next.dropped { queuedCount -= 1; next.queued = false; return next }
            }
        }
        return dequeue()
    }

    /// Live suspects waiting.
    var hasOnlySuspects: Bool {
        suspects.contains { !$0.dropped } && queues.values.allSatisfy { $0.allSatisfy(\.dropped) }
    }

    /// The next fragment, round-robin over clients; skips fragments whose job has ended.
    func dequeue() -> FragmentState? {
        while let client = clientOrder.popFirst() {
            var found: FragmentState?
            var empty = true
            // Mutated in place: no copy of the deque, and an emptied deque keeps its storage for
            // the client's next SUBMIT.
            if queues[client] != nil {
                while let next = queues[client]!.popFirst() {
                    // Dropped fragments were already taken off queuedCount when their job ended.
                    if !next.dropped { queuedCount -= 1; next.queued = false; found = next; break }
                }
                empty = queues[client]!.isEmpty
            }
            if !empty { clientOrder.append(client) }
            if let found { return found }
        }
        return nil
    }

    /// Drops queued fragments that match (a job ended, a client left); they are skipped lazily.
    func oldestQueued() -> FragmentState? {
        var oldest: FragmentState? = suspects.first { !$0.dropped }
        for queue in queues.values {
            if let head = queue.first(where: { !$0.dropped }), oldest == nil || head.enqueuedAt < oldest!.enqueuedAt { oldest = head }
        }
        return oldest
    }
}

/// One worker key within one service.
final class ServiceWorker {
    unowned let key: KeyState
    var connections: [Connection] = []
    var next = 0
    var inFlight = 0
    var cap = 0
    var suspended = false

    init(key: KeyState) { self.key = key }

    /// The key's credit cap: min(asked by its connections, weight × base window).
    func recomputeCap(weight: Int, baseWindow: Int) {
        let asked = connections.reduce(0) { $0 + $1.askedCredit }
        cap = min(asked, weight * baseWindow)
    }

    var hasCredit: Bool { inFlight < cap }

    /// The key's connections take turns; one with free credit of its own.
    func pickConnection() -> Connection? {
        guard !connections.isEmpty else { return nil }
        for step in 0..<connections.count {
            let candidate = connections[(next + step) % connections.count]
            if candidate.inFlight < candidate.askedCredit {
                next = (next + step + 1) % connections.count
                return candidate
            }
        }
        return nil
    }
}
