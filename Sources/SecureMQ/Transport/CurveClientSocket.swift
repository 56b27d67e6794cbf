internal import CZeroMQ
import Logging

/// A DEALER socket connected as a CURVE client, whose monitor turns libzmq's silent retries into
/// typed errors: a ZAP refusal ends it at once, repeated handshake failures after
/// ``ConnectionOptions/handshakeFailureLimit`` tries, silence after the connect timeout.
/// Confined to its ``SocketThread``.
final class CurveClientSocket {
    enum State {
        case connecting
        case connected
        case failed(SecureMQError)
        case closed
    }

    private(set) var socket: ZMQSocket
    let endpoint: String
    private(set) var state: State = .connecting
    private var monitor: SocketMonitor?
    private var handshakeFailures = 0
    /// ZAP 500 answers in a row (C68): a server shutting down gives them for a moment only.
    private var temporaryRefusals = 0
    static let temporaryRefusalLimit = 10
    /// Connection attempts refused (nothing listening) since the last TCP connection; counted
    /// only before the first handshake, so a broker restart is still waited for.
    private var refusedAttempts = 0
    private var tcpConnected = false
    private let connectStarted = ContinuousClock.now
    private var everConnected = false
    private var connectTimer: SocketThread.TimerID?
    private let thread: SocketThread
    private let serverKey: PublicKey
    private let keyPair: KeyPair
    private let options: ConnectionOptions
    private let logger: Logger
    /// Called on the owner thread on every state change.
    var onStateChange: (State) -> Void = { _ in }

    private let context: SecureContext
    private var readable: (() -> Void)?
    /// Whether the server answered anything but DISCONNECT on this connection (PROTOCOL.md C31).
    private var served = false
    /// Messages libzmq refused because the send queue was full (its high-water mark): kept in
    /// order and retried, never dropped. Empty in normal operation.
    private var unsent: [ZMQMessage] = []
    private var retryScheduled = false
    private var registration: SocketThread.Registration?

    init(context: SecureContext, thread: SocketThread, endpoint: String, serverKey: PublicKey, keyPair: KeyPair,
         options: ConnectionOptions, logger: Logger) throws(SecureMQError) {
        self.thread = thread
        self.endpoint = endpoint
        self.serverKey = serverKey
        self.keyPair = keyPair
        self.options = options
        self.logger = logger
        self.context = context
        try Endpoint.validate(endpoint, for: .connect)
        socket = try Self.makeSocket(context: context, serverKey: serverKey, keyPair: keyPair, options: options)
        try startMonitorAndConnect()
        if let timeout = options.connectTimeout {
            connectTimer = thread.schedule(after: timeout) { [unowned self] in
                guard case .connecting = self.state, !self.everConnected else { return }
                self.fail(SecureMQError(.unreachable, "no SecureMQ server answered at \(endpoint) within \(timeout): is it running, and is the endpoint right?"))
            }
        }
    }

    private static func makeSocket(context: SecureContext, serverKey: PublicKey, keyPair: KeyPair,
                                   options: ConnectionOptions) throws(SecureMQError) -> ZMQSocket {
        let socket = try ZMQSocket(context: context.handle, kind: .dealer)
        do {
            try socket.configureCurveClient(keyPair: keyPair, serverKey: serverKey)
            try socket.configureLimits(maxMessageSize: options.maxMessageSize, highWaterMark: options.highWaterMark,
                                       handshakeTimeout: options.handshakeTimeout,
                                       reconnectInterval: options.reconnectInterval,
                                       reconnectIntervalMax: options.reconnectIntervalMax)
            for (name, value) in options.handshakeProperties {
                // ZMQ_METADATA (95): in libzmq 4.3.4's DRAFT section of zmq.h, but built in.
                try socket.set(95, string: "\(name):\(value)")
            }
        } catch {
            socket.close(linger: .zero)
            throw error
        }
        return socket
    }

    /// Monitors the socket, then connects it, so no event is missed.
    private func startMonitorAndConnect() throws(SecureMQError) {
        do {
            let events = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
                | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_DISCONNECTED
                | ZMQ_EVENT_CONNECTED | ZMQ_EVENT_CONNECT_RETRIED
            monitor = try SocketMonitor(socket: socket, context: context.handle, thread: thread, events: events) { [unowned self] event in
                self.handle(event)
            }
            try socket.connect(endpoint)
        } catch {
            monitor?.stop()
            monitor = nil
            socket.close(linger: .zero)
            throw error
        }
    }

    /// Drops the connection and makes a new one: a new socket, so the server sees a new peer.
    /// For a server gone silent while TCP stays up (a stopped process), which libzmq's own
    /// reconnect never notices.
    func reconnect(because reason: String) {
        switch state {
        case .failed, .closed: return
        default: break
        }
        logger.warning("reconnecting", metadata: ["endpoint": "\(endpoint)", "reason": "\(reason)"])
        monitor?.stop()
        monitor = nil
        socket.close(linger: .zero)
        // What waited belongs to the old connection; the engines resend what matters
        // (a client its unanswered SUBMITs, a worker its READY).
        unsent.removeAll()
        do {
            socket = try Self.makeSocket(context: context, serverKey: serverKey, keyPair: keyPair, options: options)
            try startMonitorAndConnect()
        } catch {
            // The new socket may exist: close it now, since close() skips a failed connection and
            // an open socket would keep zmq_ctx_term waiting for ever.
            teardown(linger: .zero)
            set(.failed(error))
            return
        }
        handshakeFailures = 0
        if let registration { thread.unregister(registration) }
        if let readable { registration = thread.register(socket, onReadable: readable) }
        set(.connecting)
    }

    /// Polls the socket, and each socket that replaces it, calling `onReadable` when messages
    /// wait; `onStateChange` hears every state change.
    func attach(onReadable: @escaping () -> Void, onStateChange: @escaping (State) -> Void) {
        readable = onReadable
        registration = thread.register(socket, onReadable: onReadable)
        self.onStateChange = onStateChange
    }

    /// Sends a message that must arrive (SUBMIT, DONE, REJECT, READY, CANCEL). A message sent
    /// successfully is emptied (libzmq took it); one that would block waits in order for room.
    func send(_ message: ZMQMessage) {
        guard unsent.isEmpty else {
            unsent.append(message)
            return
        }
        switch (try? socket.send(message)) {
        case true?: return
        case false?: unsent.append(message); scheduleRetry()
        case nil: return  // the socket is closed or failed: the state change reports it
        }
    }

    /// The same for bytes; they are copied into a message only if they must wait.
    func send(_ bytes: [UInt8]) {
        if unsent.isEmpty, (try? socket.send(bytes)) != false { return }
        let message = ZMQMessage(size: bytes.count)
        bytes.withUnsafeBytes { if let base = $0.baseAddress { message.mutableBytes.baseAddress!.copyMemory(from: base, byteCount: $0.count) } }
        send(message)
    }

    private func scheduleRetry() {
        guard !retryScheduled else { return }
        retryScheduled = true
        thread.schedule(after: .milliseconds(1)) { [weak self] in
            guard let self else { return }
            self.retryScheduled = false
            while let first = self.unsent.first {
                switch (try? self.socket.send(first)) {
                case true?: self.unsent.removeFirst()
                case false?: self.scheduleRetry(); return
                case nil: self.unsent.removeAll(); return
                }
            }
        }
    }

    /// Notes that the server served this connection (a message other than DISCONNECT came).
    func noteServed() { served = true }

    /// The server sent DISCONNECT. After service it is shutting down or dropped us: reconnect
    /// (a revoked key is then refused by ZAP with a clear error) and return true. Before any
    /// service it refused us, and asking again would be refused again: return false, and the
    /// caller ends with the reason (PROTOCOL.md C31).
    func serverSentUsAway(reason: String) -> Bool {
        if served {
            logger.warning("the server sent us away; reconnecting", metadata: ["endpoint": "\(endpoint)", "reason": "\(reason)"])
            reconnect(because: "DISCONNECT: \(reason)")
            return true
        }
        logger.warning("the server refused us", metadata: ["endpoint": "\(endpoint)", "reason": "\(reason)"])
        return false
    }

    /// Reads what is queued (a bounded batch, so timers still run under load) and hands each
    /// one-frame message to `body`, in the one reused `buffer`; multipart messages are read to
    /// their end and dropped with a log line (SMQ/1 messages are one frame).
    func receiveEach(into buffer: ZMQMessage, limit: Int = 1024, _ body: (ZMQMessage) -> Void) {
        for _ in 0..<limit {
            guard (try? socket.receive(into: buffer)) == true else { return }
            if buffer.hasMore {
                while (try? socket.receive(into: buffer)) == true && buffer.hasMore {}
                logger.warning("dropped a multipart message", metadata: ["endpoint": "\(endpoint)"])
                continue
            }
            body(buffer)
        }
    }

    /// Whether a CURVE handshake ever succeeded on this connection (or a socket before it).
    var hasConnected: Bool { everConnected }

    var isConnected: Bool {
        if case .connected = state { return true }
        return false
    }

    private func handle(_ event: SocketMonitor.Event) {
        switch event.code {
        case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
            handshakeFailures = 0
            everConnected = true
            if let connectTimer { thread.cancel(connectTimer) }
            connectTimer = nil
            logger.debug("connected", metadata: ["endpoint": "\(endpoint)", "server": "\(serverKey.fingerprint)"])
            served = false
            temporaryRefusals = 0
            set(.connected)
        case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH where event.value == 500 && temporaryRefusals < Self.temporaryRefusalLimit:
            // "Internal error" (ZAP 500): a SecureMQ server says so while it is shutting down
            // (C68). Ask again after the reconnect interval, a bounded number of times in a row.
            temporaryRefusals += 1
            logger.debug("server refused for now (ZAP 500); asking again", metadata: [
                "endpoint": "\(endpoint)", "refusals": "\(temporaryRefusals)"])
            thread.schedule(after: options.reconnectInterval) { [weak self] in
                self?.reconnect(because: "the server could not decide (ZAP 500): shutting down?")
            }
        case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
            // ZAP said no (400, or 500 too many times in a row); we do not retry.
            if event.value == 500 {
                fail(SecureMQError(.rejectedByServer,
                    "the server at \(endpoint) could not check this key (\(keyPair.publicKey.fingerprint)) \(temporaryRefusals + 1) times in a row (ZAP status 500): it is shutting down or broken; see its log"))
            } else {
                fail(SecureMQError(.rejectedByServer,
                    "the server at \(endpoint) rejected this key (\(keyPair.publicKey.fingerprint)): it is not on the server's allowlist (ZAP status \(event.value)); add this key's public certificate to the server's allowlist directory"))
            }
        case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL, ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
            handshakeFailures += 1
            logger.debug("handshake failed", metadata: ["endpoint": "\(endpoint)", "failures": "\(handshakeFailures)"])
            if handshakeFailures >= options.handshakeFailureLimit {
                fail(SecureMQError(.handshakeFailed,
                    "the CURVE handshake with \(endpoint) failed \(handshakeFailures) times in a row: the server public key (\(serverKey.fingerprint)…) is wrong, or the peer is not a SecureMQ server"))
            }
        case ZMQ_EVENT_CONNECTED:
            // TCP is up: a later retry is not a refusal (a handshake failure counts on its own).
            tcpConnected = true
            refusedAttempts = 0
        case ZMQ_EVENT_CONNECT_RETRIED:
            // libzmq retries a refused connection silently; before the first handshake nothing
            // will change by waiting the whole connect timeout, so fail fast (issue 11).
            guard !everConnected, !tcpConnected, let limit = options.refusedConnectionLimit else { break }
            refusedAttempts += 1
            logger.debug("connection refused", metadata: ["endpoint": "\(endpoint)", "attempts": "\(refusedAttempts)"])
            if refusedAttempts >= limit {
                let elapsed = ContinuousClock.now - connectStarted
                let ms = elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000
                fail(SecureMQError(.unreachable,
                    "nothing is listening at \(endpoint) (connection refused \(refusedAttempts) times in \(ms) ms): is the broker running, and is the endpoint right?"))
            }
        case ZMQ_EVENT_DISCONNECTED:
            tcpConnected = false
            if case .connected = state {
                logger.info("disconnected; reconnecting", metadata: ["endpoint": "\(endpoint)"])
                set(.connecting)
            }
        default:
            break
        }
    }

    private func set(_ newState: State) {
        state = newState
        onStateChange(newState)
    }

    /// Ends the connection with `error`: libzmq stops retrying because the socket is closed.
    func fail(_ error: SecureMQError) {
        switch state {
        case .failed, .closed: return
        default: break
        }
        // The error is thrown to the caller, who reports it; logging it loudly too says it twice.
        logger.notice("connection failed", metadata: ["endpoint": "\(endpoint)", "error": "\(error.message)"])
        teardown(linger: .zero)
        set(.failed(error))
    }

    func close() {
        switch state {
        case .failed, .closed: return
        default: break
        }
        teardown(linger: options.linger)
        set(.closed)
    }

    private func teardown(linger: Duration) {
        if let registration { thread.unregister(registration) }
        registration = nil
        if let connectTimer { thread.cancel(connectTimer) }
        connectTimer = nil
        monitor?.stop()
        monitor = nil
        socket.close(linger: linger)
    }
}
