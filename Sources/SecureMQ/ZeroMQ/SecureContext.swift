internal import CZeroMQ
public import Logging
import Synchronization

/// The ZeroMQ context of a process, with SecureMQ's ZAP handler.
///
/// Use one per process (``shared``); tests make their own so they run in parallel. The ZAP handler
/// belongs to the context (libzmq asks `inproc://zeromq.zap.01` of the socket's context), so it
/// starts with the first server socket, before that socket binds.
///
/// `@unchecked Sendable`: libzmq's context is thread-safe by contract (zmq_ctx_new(3)); the rest
/// is behind a Mutex.
public final class SecureContext: @unchecked Sendable {
    /// The process-wide context. It is never terminated.
    public static let shared = SecureContext()

    let handle: UnsafeMutableRawPointer
    let logger: Logger
    private let zap = Mutex<ZAPHandler?>(nil)
    private let domainCounter = Atomic<Int>(0)

    /// Makes a new ZeroMQ context.
    /// - Parameter logger: where the ZAP handler logs malformed requests; each server's own
    ///   decisions go to that server's logger.
    public init(logger: Logger = Logger(label: "securemq.context")) {
        handle = zmq_ctx_new()
        self.logger = logger
    }

    deinit {
        zap.withLock { $0 }?.stop()
        // Every socket is closed by its owner thread (with a bounded linger) before the objects
        // that own them release this context, so this does not wait long.
        while zmq_ctx_term(handle) != 0 && zmq_errno() == EINTR {}
    }

    /// The running ZAP handler, started on first use (a thread and an inproc bind: microseconds,
    /// so holding the lock while it starts is fine and makes two racing servers share one).
    func zapHandler() throws(SecureMQError) -> ZAPHandler {
        let result: Result<ZAPHandler, SecureMQError> = zap.withLock { running in
            if let running { return .success(running) }
            do throws(SecureMQError) {
                let handler = try ZAPHandler(context: handle, logger: logger)
                running = handler
                return .success(handler)
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// A fresh ZAP domain name for a server socket.
    func makeDomain(_ base: String) -> String {
        "\(base).\(domainCounter.add(1, ordering: .relaxed).newValue)"
    }
}
