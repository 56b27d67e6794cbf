public import CoreMetrics
public import Logging
public import SMQKeys
public import SMQProtocol

/// The broker's whole policy as a state machine with no socket: admission and revocation, jobs,
/// fair queues, credit, suspects and charges, the budget and its per-client shares, leases, drain.
///
/// Events come in as calls — a parsed message from a connection (with an opaque handle to its
/// body), a connection gone, the allowlist changed, ``tick(now:)`` — and effects go out at once
/// through a ``BrokerSink``. The core reads no clock (every event carries `now`, nanoseconds on
/// any monotonic origin) and never reads or copies a body, so every rule is tested with a manual
/// clock and a recording sink, and the ZeroMQ adapter stays a loop of receive → parse → core.
public final class BrokerCore {
    public let rules: BrokerRules
    let limits: ProtocolLimits
    let lookup: (PublicKey) -> AllowlistEntry?
    unowned(unsafe) var sink: any BrokerSink
    var log: PeerLog
    var counters = BrokerCounters()
    /// SUBMIT → first dispatch and SUBMIT → RESULT, recorded once per fragment when set (the
    /// daemon sets them when it serves metrics; see BrokerCore+Metrics.swift).
    public var dispatchLatency: CoreMetrics.Timer?
    public var resultLatency: CoreMetrics.Timer?

    var keys: [PublicKey: PeerKey] = [:]
    var connections: [RoutingID: PeerConnection] = [:]
    /// Worker connections and client connections with jobs or an outbox: the only ones timers walk.
    var activeWorkers: [UInt64: PeerConnection] = [:]
    var activeClients: [UInt64: PeerConnection] = [:]
    /// Client connections whose outbox holds something.
    var waitingOutboxes: [UInt64: PeerConnection] = [:]
    var services: [String: ServiceQueue] = [:]
    var jobs: [JobKey: Job] = [:]
    var deliveries: [UInt64: HeldFragment] = [:]
    var endedJobs: EndedJobs
    /// Budget units and fragments held by all clients.
    var bytesHeld = 0
    var fragmentsHeld = 0
    /// Client keys holding at least one fragment (for the per-client share).
    var holdingClients = 0
    /// Worker connections with deliveries waiting for their pipe.
    var waitingWorkers: [UInt64: PeerConnection] = [:]
    /// MDP client connections, forgotten when idle (BrokerCore+MDP.swift, C54).
    var mdpClients: [UInt64: PeerConnection] = [:]
    public private(set) var draining = false
    var now: UInt64 = 0
    var lastLeaseCheck: UInt64 = 0

    private var nextKeySerial = 1
    private var nextConnectionSerial: UInt64 = 1
    private var nextDelivery: UInt64 = 1
    let heartbeat = ControlMessage.heartbeat.encoded()
    let pong = ControlMessage.pong.encoded()

    /// - Parameters:
    ///   - rules: Validated rules (see ``BrokerRules/validate()``).
    ///   - sink: Where effects go; not retained (the adapter owns both).
    ///   - logger: Peer-triggered lines are rate-limited per key and kind.
    ///   - lookup: The allowlist: a key's entry, or nil when it is not (or no longer) admitted.
    public init(rules: BrokerRules, sink: any BrokerSink, logger: Logger, lookup: @escaping (PublicKey) -> AllowlistEntry?) {
        self.rules = rules
        limits = ProtocolLimits(maxFragment: rules.maxFragment)
        self.sink = sink
        self.lookup = lookup
        log = PeerLog(logger: logger, interval: rules.logInterval)
        endedJobs = EndedJobs(capacity: rules.maxEndedJobs)
    }

    var logger: Logger { log.logger }

    // MARK: events

    /// The connection a routing id names, if the core knows it. The adapter compares the
    /// message's `User-Id` with ``PeerKey/userID`` and calls ``userIDMismatch(_:now:)`` when
    /// they differ.
    public func connection(for id: RoutingID) -> PeerConnection? { connections[id] }

    /// Whether messages from this connection's key are dropped (revoked since it connected).
    public func isRevoked(_ connection: PeerConnection) -> Bool { connection.key.revoked }

    /// A parsed message from a known connection.
    ///
    /// - Parameters:
    ///   - message: The parsed view (valid during the call).
    ///   - body: The adapter's handle to the message; kept for a SUBMIT (until its result is sent
    ///     or its job ends) and for a DONE (until its RESULT is sent).
    ///   - connection: Who sent it.
    ///   - now: The time.
    public func receive(_ message: Message, body: AnyObject, from connection: PeerConnection, now: UInt64) {
        self.now = now
        if connection.key.revoked {
            droppedFromRevoked(connection.key)
            return
        }
        guard !connection.gone else { return }
        if connection.speaksMDP {
            guard connection.holdsNothing else {
                receiveMDPMalformed(MDP.ParseError("an SMQ/1 message on a 7/MDP connection that holds work"), from: connection, now: now)
                return
            }
            connection.speaksMDP = false
        }
        connection.lastSeen = now
        switch message {
        case .submit(let fragment):
            guard allow(connection, .client, .submit) else { return }
            submit(fragment, body: body, from: connection)
        case .done(let fragment):
            guard allow(connection, .worker, .done) else { return }
            done(fragment, body: body, from: connection)
        case .cancel(let jobID):
            guard allow(connection, .client, .cancel) else { return }
            cancel(jobID, from: connection)
        case .ping:
            guard allow(connection, .client, .ping) else { return }
            sendControl(pong, to: connection)
        case .heartbeat:
            break
        case .ready(let credit, let heartbeatMs, let service):
            guard allow(connection, .worker, .ready) else { return }
            ready(connection, credit: credit, heartbeatMs: heartbeatMs, service: service.description)
        case .reject(let delivery, let code, let retryable, let reason):
            guard allow(connection, .worker, .reject) else { return }
            workerRejected(connection, delivery: delivery, code: code, retryable: retryable, reason: reason.string)
        case .credit(let credit):
            guard allow(connection, .worker, .credit) else { return }
            raiseCredit(connection, to: credit)
        case .disconnect(let reason):
            log.note(.peerLeft, key: connection.key.logID, level: .info, "peer left", now: now,
                     ["key": "\(connection.key.fingerprint)", "name": "\(connection.key.name)", "reason": "\(reason.string)"])
            remove(connection, reason: "disconnected", charge: true)
        case .pong, .result, .failed, .busy, .work, .deadline:
            counters.roleViolations += 1
            log.note(.roleViolation, key: connection.key.logID, level: .warning, "role violation", now: now,
                     ["key": "\(connection.key.fingerprint)", "command": "\(message.command)"])
            sendAway(connection, reason: "\(message.command) is sent by a broker, not to it", charge: true)
        }
    }

    /// A message from a known connection that could not be parsed (§2.3).
    ///
    /// An unreadable message from a worker connection that holds work ends that connection:
    /// DISCONNECT, and what it held is requeued and charged (C40). A fragment that fails a header
    /// check fails its job (SUBMIT) or counts as a failed attempt (DONE).
    public func receiveMalformed(_ error: ProtocolError, from connection: PeerConnection, now: UInt64) {
        receiveMalformed(error, reason: error.description, from: connection, now: now)
    }

    func receiveMalformed(_ error: ProtocolError, reason: @autoclosure () -> String, from connection: PeerConnection, now: UInt64) {
        self.now = now
        if connection.key.revoked {
            droppedFromRevoked(connection.key)
            return
        }
        guard !connection.gone else { return }
        connection.lastSeen = now
        counters.malformed += 1
        log.note(.malformed, key: connection.key.logID, level: .warning, "dropped malformed message", now: now,
                 ["key": "\(connection.key.fingerprint)", "reason": "\(reason())"])
        if let code = error.failureCode, let jobID = error.jobID, let index = error.index {
            if error.command == .submit, connection.key.role.allows(.client), !connection.isWorker {
                failJob(client: connection, jobID: jobID, index: index, code: code, reason: error.description)
                return
            }
            if error.command == .done, let state = connection.worker {
                if let tag = error.tag, let fragment = deliveries[tag], fragment.worker === connection {
                    attemptFailed(fragment, code: code, reason: error.description)
                } else if !state.deliveries.isEmpty {
                    unreadableFromWorker(connection)
                }
                return
            }
        }
        if let state = connection.worker, !state.deliveries.isEmpty {
            unreadableFromWorker(connection)
        }
    }

    /// A message of several frames (SMQ/1 messages are one frame): unreadable.
    public func receiveMultipart(parts: Int, from connection: PeerConnection, now: UInt64) {
        receiveMalformed(ProtocolError(.truncated, value: UInt64(parts)), reason: "a message of \(parts) frames (SMQ/1 messages are one frame)",
                         from: connection, now: now)
    }

    /// The transport says the connection is gone (its pipe closed, a send failed with EHOSTUNREACH).
    public func connectionGone(_ connection: PeerConnection, now: UInt64) {
        self.now = now
        guard !connection.gone else {
            // A revoked key's connection was kept only to drop its messages quietly; its pipe is
            // gone now, so nothing more can come.
            if connections[connection.id] === connection { connections[connection.id] = nil }
            return
        }
        counters.droppedConnections += 1
        // A client that closes with nothing open is a normal exit (issue 13): info, not a warning.
        let normalExit = !connection.isWorker && connection.key.role != .worker && connection.jobs.isEmpty && connection.outbox.isEmpty
        log.note(connection.isWorker ? .workerGone : .clientGone, key: connection.key.logID, level: normalExit ? .info : .warning,
                 normalExit ? "client disconnected" : "peer connection dropped", now: now,
                 ["key": "\(connection.key.fingerprint)", "name": "\(connection.key.name)",
                  "role": "\(connection.isWorker ? "worker" : "client")"])
        remove(connection, reason: "dropped its connection", charge: true)
    }

    /// Whether a peer's pipe was found full: results wait in a client's outbox, or WORK for a
    /// worker. The adapter then calls ``retryFullPipes(now:)`` soon (a pipe drains as libzmq
    /// writes to the socket).
    public var hasFullPipes: Bool { !waitingOutboxes.isEmpty || !waitingWorkers.isEmpty }

    /// Sends what waits for full pipes, as far as each pipe takes it.
    /// - Returns: Whether anything moved.
    @discardableResult
    public func retryFullPipes(now: UInt64) -> Bool {
        self.now = now
        var moved = false
        for client in Array(waitingOutboxes.values) {
            let before = client.outbox.count
            flushOutbox(client)
            if client.outbox.count != before { moved = true }
        }
        for worker in Array(waitingWorkers.values) {
            let before = worker.worker?.pending.count ?? 0
            flushPending(worker)
            if (worker.worker?.pending.count ?? 0) != before { moved = true }
        }
        return moved
    }

    /// Every connection the core knows (for the adapter's probe of dropped pipes).
    public var allConnections: [PeerConnection] { Array(connections.values) }

    /// Begins draining: new SUBMITs get 503; ``BrokerSink/drained()`` once nothing is queued or in flight.
    public func startDrain(now: UInt64) {
        self.now = now
        draining = true
        checkDrained()
    }

    func checkDrained() {
        guard draining, deliveries.isEmpty, services.values.allSatisfy({ $0.queuedCount == 0 }) else { return }
        sink.drained()
    }

    /// Sends DISCONNECT to every connection (the broker is shutting down).
    public func disconnectAll(reason: String) {
        let bytes = ControlMessage.disconnect(reason: Reason.truncated(reason)).encoded()
        for connection in connections.values {
            if connection.speaksMDP { sendDisconnect(reason, to: connection) } else { _ = sink.send(bytes, to: connection.address) }
        }
    }

    /// The counters, with what is held now.
    public var snapshot: BrokerCounters {
        var copy = counters
        copy.bytesHeld = bytesHeld
        copy.fragmentsHeld = fragmentsHeld
        copy.services = services.count
        copy.openJobs = jobs.count
        copy.endedJobsRemembered = endedJobs.count
        copy.suppressedLogLines = counters.suppressedLogLines + log.suppressed
        copy.workers = keys.values.filter { $0.connections.values.contains { $0.isWorker } }.count
        copy.clients = keys.values.filter { $0.connections.values.contains { !$0.isWorker } }.count
        return copy
    }

    // MARK: helpers

    func nextDeliveryID() -> UInt64 {
        defer { nextDelivery &+= 1; if nextDelivery == 0 { nextDelivery = 1 } }
        return nextDelivery
    }

    func makeKey(entry: AllowlistEntry) -> PeerKey {
        defer { nextKeySerial += 1 }
        return PeerKey(serial: nextKeySerial, entry: entry, role: entry.role ?? rules.defaultRole)
    }

    func makeConnection(id: RoutingID, address: [UInt8], key: PeerKey) -> PeerConnection {
        defer { nextConnectionSerial += 1 }
        return PeerConnection(serial: nextConnectionSerial, id: id, address: address, key: key, now: now)
    }

    func serviceQueue(_ name: String) -> ServiceQueue {
        if let existing = services[name] { return existing }
        let created = ServiceQueue(name: name, strategy: rules.strategy)
        services[name] = created
        return created
    }

    /// Forgets a service that has no worker, no queued fragment and no open job (C38).
    func forgetIfIdle(_ service: ServiceQueue) {
        guard service.isIdle, services[service.name] === service else { return }
        services[service.name] = nil
        // Dead records still in its queues hold their jobs, which hold the service: a cycle
        // that would leak every forgotten service (C38).
        service.clearRecords()
    }

    func schedulerWeight(_ key: PeerKey) -> Int { rules.strategy == .roundRobin ? 1 : key.entry.weight }
}
