public import Logging

/// An encrypted, authenticated connection to a SecureMQ server socket (``SecureServer`` or a
/// broker): a DEALER socket as a CURVE client, owned by its own thread.
///
/// ```swift
/// let connection = try await SecureConnection.connect(
///     to: "tcp://127.0.0.1:5555", serverKey: brokerKey, keyPair: myKeys)
/// try await connection.send(Array("hello".utf8))
/// let reply = try await connection.receive()
/// ```
///
/// `connect` returns once the CURVE handshake has succeeded, or throws a ``SecureMQError`` that
/// says what to fix: `.rejectedByServer` (our key is not on the server's allowlist),
/// `.handshakeFailed` (wrong server key, or not a SecureMQ server), `.unreachable`.
public final class SecureConnection: Sendable {
    /// The endpoint connected to.
    public let endpoint: String
    private let thread: SocketThread
    // Confined to `thread`; only touched from closures that run there.
    private nonisolated(unsafe) let core: Core

    private init(endpoint: String, thread: SocketThread, core: Core) {
        self.endpoint = endpoint
        self.thread = thread
        self.core = core
    }

    deinit {
        thread.requestStop()
    }

    /// Connects and waits for the CURVE handshake.
    /// - Parameters:
    ///   - endpoint: e.g. `tcp://127.0.0.1:5555`.
    ///   - serverKey: the server's public key (from its public certificate).
    ///   - keyPair: our identity; the server must have our public key on its allowlist.
    ///   - context: the ZeroMQ context (default: the process-wide one).
    ///   - options: timeouts, limits, reconnect intervals.
    ///   - logger: where connection events are logged.
    /// - Returns: the connected connection.
    /// - Throws: ``SecureMQError`` with `.rejectedByServer`, `.handshakeFailed`, `.unreachable`,
    ///   `.invalidConfiguration` or `.cancelled`.
    public static func connect(
        to endpoint: String, serverKey: PublicKey, keyPair: KeyPair, context: SecureContext = .shared,
        options: ConnectionOptions = ConnectionOptions(), logger: Logger = Logger(label: "securemq.connection")
    ) async throws(SecureMQError) -> SecureConnection {
        let (thread, core) = try await SocketThread.startConnected(name: "securemq-connection") { (thread) throws(SecureMQError) in
            let client = try CurveClientSocket(context: context, thread: thread, endpoint: endpoint, serverKey: serverKey,
                                               keyPair: keyPair, options: options, logger: logger)
            return Core(client: client, thread: thread, maxMessageSize: options.maxMessageSize, logger: logger)
        }
        return SecureConnection(endpoint: endpoint, thread: thread, core: core)
    }

    /// The thread that owns this connection's socket, as a task executor: see
    /// ``Client/executor`` (sends and receives from tasks on it make no thread hand-off).
    public var executor: any TaskExecutor { thread }

    /// Sends one message (one frame).
    /// - Throws: ``SecureMQError``: `.messageTooLarge`, `.closed`, or the connection's failure.
    public func send(_ bytes: [UInt8]) async throws(SecureMQError) {
        let box = UncheckedBox(core)
        try await thread.run { () throws(SecureMQError) in try box.value.send(bytes) }
    }

    /// Waits for the next message.
    /// - Parameter timeout: give up with `.timedOut` after this long (nil: wait).
    /// - Returns: the message's bytes.
    /// - Throws: ``SecureMQError``: `.timedOut`, `.cancelled`, `.closed`, or the connection's failure.
    public func receive(timeout: Duration? = nil) async throws(SecureMQError) -> [UInt8] {
        let box = UncheckedBox(core)
        return try await thread.wait(register: { id, continuation in
            box.value.receive(id: id, continuation, timeout: timeout)
        }, cancel: { id in box.value.receivers.cancel(id: id) })
    }

    /// Closes the connection; unsent messages get the linger time, waiting receivers `.closed`.
    public func close() async {
        await thread.shutdown()
    }

    /// The owner-thread side.
    final class Core: ConnectingEngine {
        let client: CurveClientSocket
        let connectWaiters: Waiters<Bool>
        let receivers: Waiters<[UInt8]>
        private var registration: SocketThread.Registration?
        private let logger: Logger
        private let maxMessageSize: Int

        init(client: CurveClientSocket, thread: SocketThread, maxMessageSize: Int, logger: Logger) {
            self.client = client
            self.logger = logger
            self.maxMessageSize = maxMessageSize
            connectWaiters = Waiters(thread: thread)
            receivers = Waiters(thread: thread)
            registration = thread.register(client.socket, read: false, onReadable: { [unowned self] in self.deliver() })
            client.onStateChange = { [unowned self] state in
                switch state {
                case .connected:
                    while self.connectWaiters.resumeFirst(true) {}
                case .failed(let error):
                    self.connectWaiters.failAll(error)
                    self.receivers.failAll(error)
                    if let registration = self.registration { thread.unregister(registration) }
                case .closed:
                    let error = SecureMQError(.closed, "the connection is closed")
                    self.connectWaiters.failAll(error)
                    self.receivers.failAll(error)
                    if let registration = self.registration { thread.unregister(registration) }
                case .connecting:
                    break
                }
            }
        }

        private var failure: SecureMQError? {
            switch client.state {
            case .failed(let error): return error
            case .closed: return SecureMQError(.closed, "the connection is closed")
            default: return nil
            }
        }

        func waitConnected(id: Int, _ continuation: Waiters<Bool>.Continuation) {
            if let failure { return continuation.resume(returning: .failure(failure)) }
            if client.isConnected { return continuation.resume(returning: .success(true)) }
            connectWaiters.add(id: id, continuation, timeout: nil) { SecureMQError(.timedOut, "connect timed out") }
        }

        func send(_ bytes: [UInt8]) throws(SecureMQError) {
            if let failure { throw failure }
            guard bytes.count <= maxMessageSize else {
                throw SecureMQError(.messageTooLarge, "a message of \(bytes.count) bytes is above the limit of \(maxMessageSize) bytes")
            }
            // A DEALER queues while reconnecting, up to its high-water mark; beyond it the send
            // would block, which a caller must hear about rather than lose the message.
            guard try client.socket.send(bytes) else {
                throw SecureMQError(.timedOut, "the send queue to \(client.endpoint) is full (peer not reading or not connected)")
            }
        }

        func receive(id: Int, _ continuation: Waiters<[UInt8]>.Continuation, timeout: Duration?) {
            if let failure { return continuation.resume(returning: .failure(failure)) }
            receivers.add(id: id, continuation, timeout: timeout) {
                SecureMQError(.timedOut, "no message within \(timeout ?? .zero)")
            }
            registration?.wantsRead = true
            deliver()
        }

        /// Reads only while someone waits, so unread messages stay in libzmq (bounded by its HWM).
        private func deliver() {
            while !receivers.isEmpty {
                let received: (parts: [ZMQMessage], truncated: Bool)?
                do { received = try client.socket.receiveMultipart(maxParts: 2) } catch {
                    receivers.failAll(error)
                    return
                }
                guard let (parts, truncated) = received else { break }
                guard parts.count == 1, !truncated else {
                    logger.warning("dropped a multipart message: SecureMQ messages are one frame", metadata: ["endpoint": "\(client.endpoint)"])
                    continue
                }
                receivers.resumeFirst(parts[0].array)
            }
            registration?.wantsRead = !receivers.isEmpty
        }

        func close() {
            client.close()
        }
    }
}
