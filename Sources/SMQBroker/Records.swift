import DequeModule
public import SMQKeys
import SMQProtocol

/// One allowlisted key as the core knows it: policy from its allowlist entry, its connections,
/// and what it holds. Weight and credit belong to the key, not to a connection (§1).
public final class PeerKey {
    let serial: Int
    /// The key.
    public let publicKey: PublicKey
    /// The key's Z85 text as C bytes: the adapter compares each message's `User-Id` with it
    /// without allocating.
    public let userID: [CChar]
    var entry: AllowlistEntry
    var role: PeerRole
    var connections: [UInt64: PeerConnection] = [:]
    var revoked = false
    /// Its entry's name and its fingerprint, escaped once for log lines (certificate metadata can
    /// hold control characters).
    private(set) var name: String
    let fingerprint: String
    /// Log lines are limited per key by this, not by `serial`: a key that is forgotten and comes
    /// back (a flood of reconnections) keeps its place in the rate limiter.
    let logID: Int
    /// What this key holds as a client (PROTOCOL.md C36).
    var account = ClientAccount()
    /// Its budget of per-job log lines (BrokerCore+Metrics.swift): a key that churns jobs cannot
    /// flood the log (C41), one that runs a few per second gets every line.
    var jobLines = JobLineBudget()

    init(serial: Int, entry: AllowlistEntry, role: PeerRole) {
        self.serial = serial
        publicKey = entry.publicKey
        userID = Array(entry.publicKey.z85.utf8CString)
        self.entry = entry
        self.role = role
        name = PeerText.escaped(entry.name)
        fingerprint = entry.publicKey.fingerprint
        logID = Int(truncatingIfNeeded: entry.publicKey.tag)
    }

    func update(entry: AllowlistEntry, role: PeerRole) {
        self.entry = entry
        self.role = role
        name = PeerText.escaped(entry.name)
    }

    func allows(service: String) -> Bool { entry.services?.contains(service) ?? true }
}

/// What one client key holds: counted where it changes, read by the budget and the share rule.
struct ClientAccount {
    /// Budget units of its fragments queued and in flight and of its results waiting in outboxes.
    var bytes = 0
    var fragments = 0
    var openJobs = 0
    /// Results and control messages waiting in its connections' outboxes.
    var outboxItems = 0
    var isBlocked: Bool { outboxItems > 0 }
    var isActive: Bool { fragments > 0 }
}

/// One ROUTER peer connection.
public final class PeerConnection {
    let serial: UInt64
    /// The routing id.
    public let id: RoutingID
    /// The routing id's bytes, to address the peer.
    public let address: [UInt8]
    /// The key that connected.
    public let key: PeerKey
    var lastSeen: UInt64
    /// Set after READY.
    var worker: WorkerConnectionState?
    // As a client:
    var jobs: Set<JobKey> = []
    var outbox: Deque<OutboxItem> = []
    /// When its outbox last stopped moving (0 while it is empty).
    var outboxStuckSince: UInt64 = 0
    var gone = false
    /// Admitted with a 7/MDP message: it speaks only 7/MDP (PROTOCOL.md §7, C50).
    public internal(set) var speaksMDP = false

    init(serial: UInt64, id: RoutingID, address: [UInt8], key: PeerKey, now: UInt64) {
        self.serial = serial
        self.id = id
        self.address = address
        self.key = key
        lastSeen = now
    }

    var isWorker: Bool { worker != nil }
}

/// A worker connection's side: the service it serves and what it holds.
final class WorkerConnectionState {
    let service: ServiceQueue
    var askedCredit: Int
    var inFlight = 0
    let heartbeatInterval: UInt64
    var lastHeartbeatSent: UInt64
    var deliveries: Set<UInt64> = []
    /// Suspects held: never more than one (§4.1).
    var suspects = 0
    /// Its pipe is gone: no WORK for the rest of the dispatch pass (it is removed after it).
    var blocked = false
    /// Deliveries its pipe could not take yet, in order: in flight (they count against its
    /// credit and their lease runs), sent as the pipe drains. Bounded by its credit.
    var pending: Deque<(fragment: HeldFragment, delivery: UInt64)> = []
    /// An MDPW01 worker: credit 1, MDP frames, not expired on silence while busy (C52).
    var mdp = false

    init(service: ServiceQueue, askedCredit: Int, heartbeatInterval: UInt64, now: UInt64) {
        self.service = service
        self.askedCredit = askedCredit
        self.heartbeatInterval = heartbeatInterval
        lastHeartbeatSent = now
    }
}

/// A job is scoped by the client key that opened it.
struct JobKey: Hashable {
    let client: Int
    let jobID: JobID
}

/// A message waiting for a client that does not read fast enough.
enum OutboxItem {
    case result(body: AnyObject, tag: UInt64, cost: Int)
    case control([UInt8])
}

final class Job {
    let key: JobKey
    let service: ServiceQueue
    let owner: PeerKey
    let count: UInt32
    let totalLength: UInt64
    /// The connection results go to: the one that sent the latest SUBMIT.
    var replyTo: PeerConnection
    /// Queued and in-flight fragments by index: the job's state is proportional to these.
    var live: [UInt32: HeldFragment] = [:]
    /// Every index below this one is done.
    var doneBelow: UInt32 = 0
    /// Done indexes above `doneBelow` (bounded by `maxDoneAhead`).
    var doneAhead: Set<UInt32> = []
    var doneCount: UInt64 = 0
    /// Set once the client resubmitted from a new connection: done fragments may run again (C26).
    var rerunAllowed = false
    var ended = false
    /// About to end with others (a revoked client's jobs): nothing of it may be dispatched while
    /// the jobs before it end and free their workers' credit.
    var doomed = false

    init(key: JobKey, service: ServiceQueue, owner: PeerKey, count: UInt32, totalLength: UInt64, replyTo: PeerConnection) {
        self.key = key
        self.service = service
        self.owner = owner
        self.count = count
        self.totalLength = totalLength
        self.replyTo = replyTo
    }

    func isDone(_ index: UInt32) -> Bool { index < doneBelow || doneAhead.contains(index) }

    /// Records a result; returns false when the index was done already.
    func markDone(_ index: UInt32) -> Bool {
        if isDone(index) { return false }
        doneCount += 1
        if index == doneBelow {
            doneBelow += 1
            while doneAhead.remove(doneBelow) != nil { doneBelow += 1 }
        } else {
            doneAhead.insert(index)
        }
        return true
    }

    var isComplete: Bool { doneCount == UInt64(count) }

    /// When its first SUBMIT arrived (the per-job log line's duration).
    var openedAt: UInt64 = 0
}

/// A fragment the broker holds: the SUBMIT exactly as received (an adapter handle), rewritten in
/// place into WORK for each delivery, so the body is never copied.
final class HeldFragment {
    let job: Job
    let index: UInt32
    /// Released the moment the job ends, even if the record still sits in a queue.
    var body: AnyObject?
    let cost: Int
    var attempts = 0
    var suspect = false
    var enqueuedAt: UInt64
    /// When the client's deadline passes (C45: `now` + SUBMIT's tag in ms), 0 for none.
    var deadline: UInt64 = 0
    var deliveryID: UInt64 = 0
    var worker: PeerConnection?
    var sentAt: UInt64 = 0
    /// When its SUBMIT arrived (for the SUBMIT → dispatch and SUBMIT → RESULT histograms).
    let submittedAt: UInt64
    var queued = false
    var wasSuspectWhenSent = false
    /// The key whose delivery last failed: the retry goes to another key when one is free.
    var lastFailedKey = 0
    /// Counted in its client's in-flight fragments of the service (``ServiceQueue``'s dispatch
    /// order): set when delivered, cleared when the delivery ends, so it is counted once.
    var countedInFlight = false
    /// 0: the body is an SMQ/1 SUBMIT; n ≥ 1: an MDP request of n body frames (more than one
    /// goes to MDP workers only: C51).
    var mdpFrames = 0

    init(job: Job, index: UInt32, body: AnyObject, cost: Int, now: UInt64) {
        self.job = job
        self.index = index
        self.body = body
        self.cost = cost
        enqueuedAt = now
        submittedAt = now
    }

    var isDead: Bool { body == nil || job.ended || job.doomed }
}
