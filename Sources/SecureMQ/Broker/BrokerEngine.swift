internal import CZeroMQ
import Glibc
import DequeModule
import Logging
import SMQProtocol

/// The broker: one ROUTER socket (CURVE server behind the ZAP handler) and all of SMQ/1's state,
/// confined to one ``SocketThread``. Messages are handled where they are read, without a hop.
final class BrokerEngine {
    let configuration: BrokerConfiguration
    let server: CurveServerSocket
    let allowlist: Allowlist
    let logger: Logger
    let thread: SocketThread
    var statistics = BrokerStatistics()

    var keys: [PublicKey: KeyState] = [:]
    var connections: [RoutingID: Connection] = [:]
    var services: [String: ServiceState] = [:]
    var jobs: [JobKey: JobState] = [:]
    var jobsPerClient: [Int: Int] = [:]
    /// Ended job ids, for a minute: expiry and the connection that ran them (a SUBMIT for one from
    /// that connection gets 410; from another connection of the key it starts the job anew: the
    /// client reconnected and lost results on the way).
    var endedJobs: [JobKey: (expiry: UInt64, connection: RoutingID)] = [:]
    var deliveries: [UInt64: FragmentState] = [:]
    var bytesHeld = 0
    var draining = false
    /// Workers suspended because only suspects are queued and they hold one already.
    var parkedForSuspects: [(ServiceState, Int)] = []
    var lastEndedPrune: UInt64 = 0
    var drainWaiters: [CheckedContinuation<Void, Never>] = []

    private var nextKeySerial = 1
    private var nextDelivery: UInt64 = 1
    private var registration: SocketThread.Registration?
    private var lastAllowlistCheck: UInt64 = 0
    private var allowlistGeneration: UInt64 = 0
    /// Reused for every routing-id frame; bodies get a message of their own (they may be kept).
    private let routingFrame = ZMQMessage()
    private var spareBody: ZMQMessage?
    private let sendScratch = ZMQMessage()
    private var monitor: SocketMonitor?
    let limits: ProtocolLimits

    init(server: CurveServerSocket, context: SecureContext, allowlist: Allowlist, configuration: BrokerConfiguration,
         thread: SocketThread, logger: Logger) {
        self.server = server
        self.allowlist = allowlist
        self.configuration = configuration
        self.thread = thread
        self.logger = logger
        limits = ProtocolLimits(maxFragment: configuration.maxFragmentSize)
        allowlistGeneration = allowlist.generation
        registration = thread.register(server.socket, onReadable: { [unowned self] in self.readAll() })
        thread.schedule(after: .milliseconds(100), every: .milliseconds(100)) { [unowned self] in self.tick() }
        // libzmq 4.3.4 (no DRAFT API) has no per-peer disconnect notice on a ROUTER. Its monitor
        // says *that* a connection dropped, not which: probe the peers then, and a send to a
        // dropped peer fails at once with EHOSTUNREACH (ZMQ_ROUTER_MANDATORY).
        monitor = try? SocketMonitor(socket: server.socket, context: context.handle, thread: thread,
                                     events: ZMQ_EVENT_DISCONNECTED) { [unowned self] _ in
            self.probePeers()
            // The pipe's end can reach the socket a little after the event: look again shortly.
            self.thread.schedule(after: .milliseconds(20)) { [weak self] in self?.probePeers() }
            self.thread.schedule(after: .milliseconds(250)) { [weak self] in self?.probePeers() }
        }
    }

    /// Sends HEARTBEAT to every connection; one whose pipe is gone fails with EHOSTUNREACH and
    /// is removed at once: a killed worker's fragments are requeued without waiting for its
    /// heartbeats to stop, a vanished client's work is dropped.
    func probePeers() {
        let heartbeat = Wire.heartbeat()
        for connection in Array(connections.values) {
            do throws(SecureMQError) {
                let sent = try server.socket.send(connection.address, more: true)
                if sent { _ = try server.socket.send(heartbeat) }
            } catch {
                guard error.errno == EHOSTUNREACH else {
                    logger.error("probe failed", metadata: ["error": "\(error)"])
                    continue
                }
                statistics.droppedConnections += 1
                logger.warning("peer connection dropped", metadata: [
                    "key": "\(connection.key.fingerprint)", "name": "\(connection.key.name)",
                    "role": "\(connection.isWorker ? "worker" : "client")", "inFlight": "\(connection.inFlight)",
                ])
                remove(connection, reason: "dropped its connection")
            }
        }
    }

    static var now: UInt64 { SocketThread.now() }

    // MARK: receiving

    /// Reads what is queued, a bounded batch per wake-up so timers still run under load.
    private func readAll() {
        for _ in 0..<4096 {
            // A body message is kept with its fragment, so each needs its own; make one only
            // when a message has actually arrived.
            do {
                guard try server.socket.receive(into: routingFrame) else { return }
            } catch {
                logger.error("receive failed", metadata: ["error": "\(error)"])
                return
            }
            var body = spareBody ?? ZMQMessage()
            spareBody = nil
            do {
                guard routingFrame.hasMore, try server.socket.receive(into: body) else { spareBody = body; continue }
            } catch {
                logger.error("receive failed", metadata: ["error": "\(error)"])
                return
            }
            if body.hasMore {
                // SMQ/1 messages are one frame: read the rest and drop it all.
                let rest = ZMQMessage()
                var parts = 2
                while (try? server.socket.receive(into: rest)) == true && rest.hasMore { parts += 1 }
                guard let connection = admit(routingFrame, body) else { continue }
                reject(connection, "a message of \(parts) frames (SMQ/1 messages are one frame)")
                continue
            }
            guard let connection = admit(routingFrame, body) else {
                spareBody = body
                continue
            }
            handle(body, from: connection)
            // A body nobody kept (a control message, a result sent on) takes the next message:
            // zmq_msg_recv releases what it held.
            if isKnownUniquelyReferenced(&body) { spareBody = body }
        }
    }

    /// Finds or creates the connection a message came on, checking `User-Id` against the
    /// current allowlist on every message (revocation works on live peers).
    private func admit(_ routing: ZMQMessage, _ body: ZMQMessage) -> Connection? {
        let id = RoutingID(routing.bytes)
        let now = Self.now
        if let connection = connections[id] {
            let same = body.withProperty("User-Id") { value -> Bool in
                guard let value else { return false }
                return connection.key.userID.withUnsafeBufferPointer { strcmp($0.baseAddress!, value) == 0 }
            }
            guard same, !connection.key.revoked else {
                dropFromRevoked(connection.key)
                return nil
            }
            connection.lastSeen = now
            return connection
        }
        guard let userID = body.property("User-Id"), let publicKey = try? PublicKey(z85: userID) else {
            logger.error("dropped a message without a ZAP User-Id")
            return nil
        }
        guard let entry = allowlist.entry(for: publicKey) else {
            // Admitted by ZAP but revoked since: drop, tell it once.
            let key = keys[publicKey]
            if let key { dropFromRevoked(key) } else {
                statistics.revokedMessages += 1
                sendDisconnect(to: Array(routing.bytes), reason: "key revoked")
            }
            return nil
        }
        let key: KeyState
        if let known = keys[publicKey], !known.revoked {
            key = known
        } else {
            key = KeyState(serial: nextKeySerial, entry: entry, role: entry.role ?? configuration.defaultRole)
            nextKeySerial += 1
            keys[publicKey] = key
        }
        let connection = Connection(id: id, address: Array(routing.bytes), key: key, now: now)
        connections[id] = connection
        key.connections[id] = connection
        logger.info("peer joined", metadata: [
            "key": "\(key.fingerprint)", "name": "\(key.name)", "role": "\(key.role)", "weight": "\(key.entry.weight)",
        ])
        return connection
    }

    private func handle(_ body: ZMQMessage, from connection: Connection) {
        let message: Message
        do throws(ProtocolError) {
            message = try Message.parse(body.bytes, limits: limits)
        } catch {
            guard let code = error.failureCode, let jobID = error.jobID, let index = error.index else {
                reject(connection, error.description)
                return
            }
            statistics.malformed += 1
            logger.warning("bad fragment", metadata: ["key": "\(connection.key.fingerprint)", "reason": "\(error)"])
            if error.command == .submit, connection.key.role.allows(.client), !connection.isWorker {
                failJob(client: connection, jobID: jobID, index: index, code: code, reason: error.description)
            } else if error.command == .done, connection.isWorker {
                workerSentBadResult(connection, tag: error.tag, code: code, reason: error.description)
            }
            return
        }
        switch message {
        case .submit(let fragment):
            guard allow(connection, .client, .submit) else { return }
            submit(fragment, body, from: connection)
        case .done(let fragment):
            guard allow(connection, .worker, .done) else { return }
            done(fragment, body, from: connection)
        case .cancel(let jobID):
            guard allow(connection, .client, .cancel) else { return }
            cancel(jobID, from: connection)
        case .ping:
            guard allow(connection, .client, .ping) else { return }
            send(Wire.pong(), to: connection)
        case .heartbeat:
            break // lastSeen is already updated: any message counts
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
            logger.info("peer left", metadata: ["key": "\(connection.key.fingerprint)", "name": "\(connection.key.name)", "reason": "\(reason.string)"])
            remove(connection, reason: "disconnected")
        case .pong, .result, .failed, .busy, .work:
            // Commands a broker sends, never receives (§3.2): the sender is confused or hostile.
            statistics.roleViolations += 1
            logger.warning("role violation", metadata: ["key": "\(connection.key.fingerprint)", "command": "\(message.command)"])
            sendDisconnect(to: connection.address, reason: "\(message.command) is sent by a broker, not to it")
            remove(connection, reason: "role violation")
        }
    }

    /// Role check (§3.2): a command the key's role does not allow gets DISCONNECT.
    private func allow(_ connection: Connection, _ role: PeerRole, _ command: Command) -> Bool {
        guard connection.key.role.allows(role) else {
            statistics.roleViolations += 1
            logger.warning("role violation", metadata: [
                "key": "\(connection.key.fingerprint)", "name": "\(connection.key.name)",
                "role": "\(connection.key.role)", "command": "\(command)",
            ])
            sendDisconnect(to: connection.address, reason: "key \(connection.key.fingerprint) is a \(connection.key.role) and may not send \(command)")
            remove(connection, reason: "role violation")
            return false
        }
        // A key with role both uses one connection per role.
        if role == .client, connection.isWorker {
            sendDisconnect(to: connection.address, reason: "a worker connection may not send \(command)")
            remove(connection, reason: "role violation")
            return false
        }
        return true
    }

    /// An unreadable message: dropped, one log line, counted (§2.3).
    func reject(_ connection: Connection, _ reason: String) {
        statistics.malformed += 1
        logger.warning("dropped malformed message", metadata: ["key": "\(connection.key.fingerprint)", "reason": "\(reason)"])
    }

    // MARK: sending

    @discardableResult
    func send(_ bytes: [UInt8], to connection: Connection) -> Bool {
        send(bytes, toAddress: connection.address)
    }

    @discardableResult
    func send(_ bytes: [UInt8], toAddress address: [UInt8]) -> Bool {
        do {
            guard try server.socket.send(address, more: true) else { return false }
            return try server.socket.send(bytes)
        } catch {
            return false
        }
    }

    /// Sends a kept message without copying its body: a zmq_msg_copy shares the buffer.
    func send(message: ZMQMessage, to connection: Connection) -> Bool {
        // One reused message: zmq_msg_copy releases what it held, a successful send empties it.
        let outgoing = sendScratch
        zmq_msg_copy(outgoing.pointer, message.pointer)
        do {
            guard try server.socket.send(connection.address, more: true) else { return false }
            return try server.socket.send(outgoing)
        } catch {
            return false
        }
    }

    func sendDisconnect(to address: [UInt8], reason: String) {
        send(Wire.disconnect(reason: reason), toAddress: address)
    }

    // MARK: lifecycle

    func close() {
        monitor?.stop()
        monitor = nil
        for connection in connections.values {
            sendDisconnect(to: connection.address, reason: "broker shutting down")
        }
        server.close(linger: .milliseconds(500))
    }

    func nextDeliveryID() -> UInt64 {
        // Never 0, never reused while in flight (a 64-bit counter does not wrap in practice).
        defer { nextDelivery &+= 1; if nextDelivery == 0 { nextDelivery = 1 } }
        return nextDelivery
    }

    func serviceState(_ name: String) -> ServiceState {
        if let existing = services[name] { return existing }
        let created = ServiceState(name: name, strategy: configuration.strategy)
        services[name] = created
        return created
    }

    // MARK: allowlist

    func checkAllowlist(force: Bool = false) {
        let now = Self.now
        guard force || now &- lastAllowlistCheck >= configuration.allowlistCheckInterval.nanoseconds else { return }
        lastAllowlistCheck = now
        if !force { _ = allowlist.reloadIfChanged() }
        guard allowlist.generation != allowlistGeneration || force else { return }
        allowlistGeneration = allowlist.generation
        for key in Array(keys.values) {
            guard let entry = allowlist.entry(for: key.publicKey) else {
                revoke(key)
                continue
            }
            if entry != key.entry {
                let oldWeight = key.entry.weight
                key.entry = entry
                key.role = entry.role ?? configuration.defaultRole
                if entry.weight != oldWeight { weightChanged(key) }
            }
        }
    }

    /// A key left the allowlist: stop dispatching to it, requeue its work, end its jobs, tell it.
    func revoke(_ key: KeyState) {
        guard !key.revoked else { return }
        key.revoked = true
        statistics.revocations += 1
        logger.warning("key revoked", metadata: ["key": "\(key.fingerprint)", "name": "\(key.name)", "connections": "\(key.connections.count)"])
        for connection in Array(key.connections.values) {
            sendDisconnect(to: connection.address, reason: "key revoked")
            remove(connection, reason: "revoked")
        }
    }

    private func dropFromRevoked(_ key: KeyState) {
        statistics.revokedMessages += 1
        let now = Self.now
        if now &- key.lastRevocationLog >= 60_000_000_000 {
            key.lastRevocationLog = now
            logger.warning("dropping messages from a revoked key", metadata: ["key": "\(key.fingerprint)", "name": "\(key.name)"])
        }
    }
}
