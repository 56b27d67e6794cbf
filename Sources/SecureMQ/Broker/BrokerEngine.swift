internal import CZeroMQ
import Glibc
import Logging
import SMQBroker
import SMQProtocol

/// The broker's ZeroMQ adapter: one ROUTER socket (CURVE server behind the ZAP handler) on one
/// ``SocketThread``. It only moves bytes: receive → parse → ``BrokerCore`` → carry out what the
/// core decides (``BrokerSink``). Every rule lives in the core (ARCHITECTURE.md, "The broker core").
final class BrokerEngine: BrokerSink {
    let configuration: BrokerConfiguration
    let server: CurveServerSocket
    let allowlist: Allowlist
    let logger: Logger
    let thread: SocketThread
    private(set) var core: BrokerCore!
    var drainWaiters: [CheckedContinuation<Void, Never>] = []

    private var lastAllowlistCheck: UInt64 = 0
    private var allowlistGeneration: UInt64 = 0
    private var registration: SocketThread.Registration?
    /// Reused for every routing-id frame; bodies get a message of their own (the core may keep them).
    private let routingFrame = ZMQMessage()
    private var spareBody: ZMQMessage?
    let sendScratch = ZMQMessage()
    private var monitor: SocketMonitor?
    private let heartbeat = ControlMessage.heartbeat.encoded()
    let limits: ProtocolLimits

    init(server: CurveServerSocket, context: SecureContext, allowlist: Allowlist, configuration: BrokerConfiguration,
         rules: BrokerRules, thread: SocketThread, logger: Logger) {
        self.server = server
        self.allowlist = allowlist
        self.configuration = configuration
        self.thread = thread
        self.logger = logger
        limits = ProtocolLimits(maxFragment: configuration.maxFragmentSize)
        allowlistGeneration = allowlist.generation
        core = BrokerCore(rules: rules, sink: self, logger: logger, lookup: { [allowlist] in allowlist.entry(for: $0) })
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

    static var now: UInt64 { SocketThread.now() }

    /// Sends HEARTBEAT to every connection; one whose pipe is gone fails with EHOSTUNREACH and
    /// the core hears that it is gone.
    func probePeers() {
        let now = Self.now
        for connection in core.allConnections {
            let outcome: SendOutcome
            if connection.speaksMDP {
                // An MDP client has no message it would not misread; it is forgotten when idle (C54).
                guard core.isMDPWorker(connection) else { continue }
                outcome = sendMDP(MDP.heartbeatFrames, to: connection.address)
            } else {
                outcome = send(heartbeat, to: connection.address)
            }
            if outcome == .gone { core.connectionGone(connection, now: now) }
        }
    }

    // MARK: receiving

    /// Reads what is queued, a bounded batch per wake-up so timers still run under load.
    private func readAll() {
        defer {
            // Results that found a client's pipe full wait in its outbox and hold back its work.
            // Under load the broker wakes here far more often than the retry timer fires, so try
            // them now (1 KiB requests ran 15 % slower with a timer-only retry at --peer-hwm 32),
            // but at most every 250 µs: a retry walks every blocked connection, and a peer that
            // sends one message per wake must not buy one pass over them per message.
            let now = Self.now
            if core.hasFullPipes, now &- lastReadRetry >= 250_000 {
                lastReadRetry = now
                _ = core.retryFullPipes(now: now)
            }
            scheduleFlush()
        }
        for _ in 0..<4096 {
            do {
                guard try server.socket.receive(into: routingFrame) else { return }
            } catch {
                logger.error("receive failed", metadata: ["error": "\(error)"])
                return
            }
            // A body message may be kept by the core, so each needs its own; made only when a
            // message has actually arrived.
            var body = spareBody ?? ZMQMessage()
            spareBody = nil
            do {
                guard routingFrame.hasMore, try server.socket.receive(into: body) else { spareBody = body; continue }
            } catch {
                logger.error("receive failed", metadata: ["error": "\(error)"])
                return
            }
            let now = Self.now
            if body.hasMore && body.count == 0 {
                // An empty first frame is the delimiter of 7/MDP (§7).
                receiveMDP(routing: routingFrame, first: body, now: now)
                continue
            }
            if body.hasMore {
                // SMQ/1 messages are one frame: read the rest and drop it all.
                let rest = ZMQMessage()
                var parts = 2
                while (try? server.socket.receive(into: rest)) == true && rest.hasMore { parts += 1 }
                if let connection = connection(routingFrame, body, now: now) {
                    core.receiveMultipart(parts: parts, from: connection, now: now)
                }
                continue
            }
            guard let connection = connection(routingFrame, body, now: now) else {
                spareBody = body
                continue
            }
            do throws(ProtocolError) {
                let message = try Message.parse(body.bytes, limits: limits)
                core.receive(message, body: body, from: connection, now: now)
            } catch {
                core.receiveMalformed(error, from: connection, now: now)
            }
            // A body nobody kept (a control message, a result sent on) takes the next message.
            if isKnownUniquelyReferenced(&body) { spareBody = body }
        }
    }

    /// The connection a message came on. `User-Id` is compared with the connection's key on
    /// every message (a `strcmp`, no allocation); a mismatch ends the registration (C34).
    func connection(_ routing: ZMQMessage, _ body: ZMQMessage, now: UInt64, mdp: Bool = false) -> PeerConnection? {
        let id = RoutingID(routing.bytes)
        if let connection = core.connection(for: id) {
            if core.isRevoked(connection) { return connection }  // the core drops it, quietly
            let same = body.withProperty("User-Id") { value -> Bool in
                guard let value else { return false }
                return connection.key.userID.withUnsafeBufferPointer { strcmp($0.baseAddress!, value) == 0 }
            }
            guard same else {
                core.userIDMismatch(connection, now: now)
                return nil
            }
            return connection
        }
        return core.admit(id: id, address: Array(routing.bytes), userID: body.property("User-Id"), now: now, mdp: mdp)
    }

    // MARK: BrokerSink

    func forward(_ body: AnyObject, as command: Command, tag: UInt64, keep: Bool, to address: [UInt8]) -> SendOutcome {
        let message = unsafeDowncast(body, to: ZMQMessage.self)
        Fragment.rewriteCommandAndTag(in: message.mutableBytes, command: command, tag: tag)
        do throws(SecureMQError) {
            guard try sendAddress(address) else { return .full }
            if keep {
                // A reference, not a copy: zmq_msg_copy shares the buffer; the original stays for requeue.
                zmq_msg_copy(sendScratch.pointer, message.pointer)
                return try server.socket.send(sendScratch) ? .sent : .full
            }
            return try server.socket.send(message) ? .sent : .full
        } catch {
            return outcome(of: error)
        }
    }

    func send(_ bytes: [UInt8], to address: [UInt8]) -> SendOutcome {
        do throws(SecureMQError) {
            guard try sendAddress(address) else { return .full }
            return try server.socket.send(bytes) ? .sent : .full
        } catch {
            return outcome(of: error)
        }
    }

    /// The routing-id frame, which is where ZMQ_ROUTER_MANDATORY reports a full pipe. libzmq
    /// learns that the I/O thread has drained a pipe only when the socket processes its commands,
    /// which a send does at most about once a millisecond: in a burst a pipe looks full long
    /// after it emptied. So a full pipe is believed only after a `ZMQ_EVENTS` query has processed
    /// the pending commands and one more try failed. (The retry touches the socket again, so the
    /// thread's loop still asks `ZMQ_EVENTS` before it sleeps.)
    func sendAddress(_ address: [UInt8]) throws(SecureMQError) -> Bool {
        if try server.socket.send(address, more: true) { return true }
        _ = server.socket.hasMessage
        return try server.socket.send(address, more: true)
    }

    func outcome(of error: SecureMQError) -> SendOutcome {
        if error.errno == EAGAIN { return .full }
        if error.errno != EHOSTUNREACH { logger.error("send failed", metadata: ["error": "\(error)"]) }
        return .gone
    }

    func drained() {
        let waiters = drainWaiters
        drainWaiters.removeAll()
        for waiter in waiters { waiter.resume() }
    }

    // MARK: timers and lifecycle

    private var flushScheduled = false
    private var lastReadRetry: UInt64 = 0
    private var flushDelay: Duration = .milliseconds(1)

    /// While results wait in outboxes (or a worker's pipe was full), try again soon: 1 ms after a flush that moved
    /// something, backing off to 64 ms while nothing moves (a client that does not read costs
    /// one failed send per backoff step, not a busy loop).
    private func scheduleFlush() {
        guard core.hasFullPipes, !flushScheduled else { return }
        flushScheduled = true
        thread.schedule(after: flushDelay) { [weak self] in
            guard let self else { return }
            self.flushScheduled = false
            let moved = self.core.retryFullPipes(now: Self.now)
            self.flushDelay = moved ? .milliseconds(1) : min(self.flushDelay * 2, .milliseconds(64))
            self.scheduleFlush()
        }
    }

    private func tick() {
        checkAllowlist()
        core.tick(now: Self.now)
        scheduleFlush()
    }

    func checkAllowlist(force: Bool = false) {
        let now = Self.now
        guard force || now &- lastAllowlistCheck >= configuration.allowlistCheckInterval.nanoseconds else { return }
        lastAllowlistCheck = now
        if !force { _ = allowlist.reloadIfChanged() }
        guard allowlist.generation != allowlistGeneration || force else { return }
        allowlistGeneration = allowlist.generation
        core.allowlistChanged(now: now)
    }

    func startDrain() {
        core.startDrain(now: Self.now)
    }

    func close() {
        monitor?.stop()
        monitor = nil
        core.disconnectAll(reason: "broker shutting down")
        server.close(linger: .milliseconds(500))
    }
}
