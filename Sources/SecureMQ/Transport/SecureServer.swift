internal import CZeroMQ
public import Logging

/// A peer of a ``SecureServer``: the ROUTER's routing id of one connection.
public struct PeerID: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]
    public var description: String { bytes.map { String($0, radix: 16) }.joined() }
}

/// One message received by a ``SecureServer``.
public struct ServerMessage: Sendable {
    /// The connection it came on; reply with ``SecureServer/send(_:to:)``.
    public let peer: PeerID
    /// Who sent it: the CURVE key the ZAP handler admitted (`User-Id`), never anything the
    /// peer claimed in its handshake metadata.
    public let publicKey: PublicKey
    public let body: [UInt8]
}

/// A CURVE server socket (ROUTER) that admits only the keys of an ``Allowlist``.
///
/// ```swift
/// let server = try await SecureServer.bind(["tcp://127.0.0.1:*"], keyPair: serverKeys, allowlist: allowlist)
/// let request = try await server.receive()
/// try await server.send(request.body, to: request.peer)
/// ```
public final class SecureServer: Sendable {
    /// The endpoints bound, with the ports chosen for `tcp://…:*`.
    public let endpoints: [String]
    private let thread: SocketThread
    private nonisolated(unsafe) let core: Core

    private init(endpoints: [String], thread: SocketThread, core: Core) {
        self.endpoints = endpoints
        self.thread = thread
        self.core = core
    }

    deinit {
        thread.requestStop()
    }

    /// Binds a CURVE server socket behind the library's ZAP handler.
    /// - Parameters:
    ///   - endpoints: e.g. `["tcp://127.0.0.1:*"]`.
    ///   - keyPair: the server's identity; clients need its public key.
    ///   - allowlist: the keys admitted (checked by ZAP at every handshake).
    ///   - context: the ZeroMQ context (default: the process-wide one).
    ///   - maxMessageSize: the largest message accepted, in bytes.
    ///   - allowlistCheckInterval: how often a directory allowlist is re-read (by content) so
    ///     added keys get in and removed keys no longer complete a handshake.
    ///   - logger: where admissions, denials and dropped messages are logged.
    /// - Throws: ``SecureMQError`` `.invalidConfiguration` when an endpoint cannot be bound.
    public static func bind(
        _ endpoints: [String], keyPair: KeyPair, allowlist: Allowlist, context: SecureContext = .shared,
        maxMessageSize: Int = 1_048_576 + 1024, allowlistCheckInterval: Duration = .seconds(1),
        logger: Logger = Logger(label: "securemq.server")
    ) async throws(SecureMQError) -> SecureServer {
        let thread = try SocketThread(name: "securemq-server")
        do {
            let core = try thread.runAndWait { () throws(SecureMQError) in
                let server = try CurveServerSocket(context: context, endpoints: endpoints, keyPair: keyPair, allowlist: allowlist,
                                                   maxMessageSize: maxMessageSize, highWaterMark: 1000, logger: logger)
                let core = Core(server: server, allowlist: allowlist, reloadInterval: allowlistCheckInterval, thread: thread, logger: logger)
                thread.onStop { core.close() }
                return core
            }
            return SecureServer(endpoints: core.server.endpoints, thread: thread, core: core)
        } catch {
            thread.requestStop()
            throw error
        }
    }

    /// The thread that owns this server's socket, as a task executor: see ``Client/executor``
    /// (a receive-and-reply loop on it makes no thread hand-off per message).
    public var executor: any TaskExecutor { thread }

    /// Waits for the next message from any admitted peer.
    /// - Parameter timeout: give up with `.timedOut` after this long (nil: wait).
    public func receive(timeout: Duration? = nil) async throws(SecureMQError) -> ServerMessage {
        let box = UncheckedBox(core)
        return try await thread.wait(register: { id, continuation in
            box.value.receive(id: id, continuation, timeout: timeout)
        }, cancel: { id in box.value.receivers.cancel(id: id) })
    }

    /// Sends one message to a peer.
    /// - Throws: ``SecureMQError`` `.peerUnreachable` when that connection is gone or its queue is full.
    public func send(_ bytes: [UInt8], to peer: PeerID) async throws(SecureMQError) {
        let box = UncheckedBox(core)
        try await thread.run { () throws(SecureMQError) in try box.value.send(bytes, to: peer) }
    }

    /// Closes the socket and leaves the ZAP handler.
    public func close() async {
        await thread.shutdown()
    }

    final class Core {
        let server: CurveServerSocket
        let receivers: Waiters<ServerMessage>
        private var registration: SocketThread.Registration?
        private let logger: Logger
        private var closed = false

        init(server: CurveServerSocket, allowlist: Allowlist, reloadInterval: Duration, thread: SocketThread, logger: Logger) {
            self.server = server
            self.logger = logger
            receivers = Waiters(thread: thread)
            registration = thread.register(server.socket, read: false, onReadable: { [unowned self] in self.deliver() })
            // ZAP reads the allowlist at every handshake; keep it current with the directory.
            if allowlist.directory != nil {
                thread.schedule(after: reloadInterval, every: reloadInterval) { _ = allowlist.reloadIfChanged() }
            }
        }

        func receive(id: Int, _ continuation: Waiters<ServerMessage>.Continuation, timeout: Duration?) {
            guard !closed else { return continuation.resume(returning: .failure(SecureMQError(.closed, "the server is closed"))) }
            receivers.add(id: id, continuation, timeout: timeout) { SecureMQError(.timedOut, "no message within \(timeout ?? .zero)") }
            registration?.wantsRead = true
            deliver()
        }

        private func deliver() {
            while !receivers.isEmpty {
                let received: (parts: [ZMQMessage], truncated: Bool)?
                do { received = try server.socket.receiveMultipart(maxParts: 3) } catch {
                    receivers.failAll(error)
                    return
                }
                guard let (parts, truncated) = received else { break }
                guard parts.count == 2, !truncated else {
                    logger.warning("dropped a multipart message: SecureMQ messages are one frame")
                    continue
                }
                guard let userID = parts[1].property("User-Id"), let key = try? PublicKey(z85: userID) else {
                    // Cannot happen behind our ZAP handler; refuse rather than trust anything else.
                    logger.error("dropped a message without a ZAP User-Id")
                    continue
                }
                receivers.resumeFirst(ServerMessage(peer: PeerID(bytes: parts[0].array), publicKey: key, body: parts[1].array))
            }
            registration?.wantsRead = !receivers.isEmpty
        }

        func send(_ bytes: [UInt8], to peer: PeerID) throws(SecureMQError) {
            guard !closed else { throw SecureMQError(.closed, "the server is closed") }
            let sent: Bool
            do throws(SecureMQError) {
                let head = try server.socket.send(peer.bytes, more: true)
                sent = try head ? server.socket.send(bytes) : false
            } catch {
                if error.errno == EHOSTUNREACH { throw SecureMQError(.peerUnreachable, "peer \(peer) is not connected") }
                throw error
            }
            guard sent else { throw SecureMQError(.peerUnreachable, "the send queue to peer \(peer) is full") }
        }

        func close() {
            guard !closed else { return }
            closed = true
            receivers.failAll(SecureMQError(.closed, "the server is closed"))
            server.close(linger: .milliseconds(200))
        }
    }
}
