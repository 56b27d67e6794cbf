internal import CZeroMQ
public import Logging
import Synchronization
import Dispatch
import Glibc

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
    private let terminationWait: Duration
    private let zapRefusalLogInterval: Duration

    /// Makes a new ZeroMQ context.
    /// - Parameter logger: where the ZAP handler logs malformed requests; each server's own
    ///   decisions go to that server's logger.
    public convenience init(logger: Logger = Logger(label: "securemq.context")) {
        self.init(logger: logger, terminationWait: .seconds(5))
    }

    /// The I/O threads a context may be given (``init(ioThreads:logger:)``).
    public static let ioThreadRange = 1...64

    /// Makes a new ZeroMQ context with `ioThreads` libzmq I/O threads (ZMQ_IO_THREADS).
    ///
    /// libzmq does the CURVE encryption of every connection on an I/O thread, and spreads
    /// connections over them (one connection stays on one thread); the default is one. Set before
    /// any socket exists, as libzmq requires: a context's threads start with its first socket.
    /// - Throws: ``SecureMQError`` `.invalidConfiguration` outside ``ioThreadRange``.
    public convenience init(ioThreads: Int, logger: Logger = Logger(label: "securemq.context")) throws(SecureMQError) {
        guard Self.ioThreadRange.contains(ioThreads) else {
            throw SecureMQError(.invalidConfiguration,
                                "I/O threads must be \(Self.ioThreadRange.lowerBound)–\(Self.ioThreadRange.upperBound), got \(ioThreads)")
        }
        self.init(logger: logger, terminationWait: .seconds(5))
        guard zmq_ctx_set(handle, ZMQ_IO_THREADS, Int32(ioThreads)) == 0 else {
            throw SecureMQError(.invalidConfiguration, "libzmq refused \(ioThreads) I/O threads (errno \(zmq_errno()))")
        }
    }

    /// The libzmq I/O threads of this context (ZMQ_IO_THREADS).
    public var ioThreads: Int { Int(zmq_ctx_get(handle, ZMQ_IO_THREADS)) }

    /// How long deinit waits for zmq_ctx_term before it logs and leaves it to finish, and how
    /// long one refused-handshake log line stands for the others like it (tests set both).
    init(logger: Logger, terminationWait: Duration, zapRefusalLogInterval: Duration = ZAPHandler.refusalLogInterval) {
        handle = zmq_ctx_new()
        self.logger = logger
        self.terminationWait = terminationWait
        self.zapRefusalLogInterval = zapRefusalLogInterval
    }

    deinit {
        zap.withLock { $0 }?.stop()
        // Every socket is closed by its owner thread (with a bounded linger) before the objects
        // that own them release this context, so termination does not wait long. It still runs
        // on a thread of its own: zmq_ctx_term waits for ever for a socket left open, and a
        // deinit must not hang whichever thread released the last reference. A wait that lasts
        // is logged, since it means a socket leaked.
        let termination = ContextTermination(handle: handle)
        guard termination.start() else {
            while zmq_ctx_term(handle) != 0 && zmq_errno() == EINTR {}
            return
        }
        if termination.done.wait(timeout: .now() + .nanoseconds(Int(terminationWait.nanoseconds))) == .timedOut {
            logger.error("the ZeroMQ context still waits for a socket that was never closed; it is left to terminate in the background")
        }
    }

    /// The running ZAP handler, started on first use (a thread and an inproc bind: microseconds,
    /// so holding the lock while it starts is fine and makes two racing servers share one).
    func zapHandler() throws(SecureMQError) -> ZAPHandler {
        let result: Result<ZAPHandler, SecureMQError> = zap.withLock { running in
            if let running { return .success(running) }
            do throws(SecureMQError) {
                let handler = try ZAPHandler(context: handle, logger: logger, refusalLogInterval: zapRefusalLogInterval)
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

/// zmq_ctx_term on a detached thread, signalling `done` when it returns.
private final class ContextTermination: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer
    let done = DispatchSemaphore(value: 0)

    init(handle: UnsafeMutableRawPointer) {
        self.handle = handle
    }

    func start() -> Bool {
        let box = Unmanaged.passRetained(self)
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let me = Unmanaged<ContextTermination>.fromOpaque(raw!).takeRetainedValue()
            while zmq_ctx_term(me.handle) != 0 && zmq_errno() == EINTR {}
            me.done.signal()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            return false
        }
        pthread_detach(thread)
        return true
    }
}
