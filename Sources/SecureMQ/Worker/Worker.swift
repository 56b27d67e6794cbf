public import Logging
public import CoreMetrics
import SMQProtocol

/// Where a fragment belongs: its job, its place, its service.
public struct WorkHeader: Sendable {
    /// The job's id (hex).
    public var jobID: String { id.description }
    let id: JobID
    /// The fragment's index in the job, and the job's fragment count.
    public let index: Int
    public let count: Int
    /// The fragment's byte offset in the client's payload.
    public let offset: Int
    /// The service the fragment was submitted to.
    public let service: String
    /// When the client's deadline for this fragment's job passes, on this machine's clock, or
    /// nil when the job has none (or the broker did not say: PROTOCOL.md C45). A handler can
    /// give up early: its result would arrive after the client stopped waiting.
    public var deadline: ContinuousClock.Instant? = nil

    /// The time left before ``deadline`` (zero once it has passed), or nil without one.
    public var timeLeft: Duration? {
        deadline.map { max(.zero, $0 - .now) }
    }
}

/// One fragment for a worker's handler.
public struct WorkItem: Sendable {
    public let header: WorkHeader
    /// The fragment's bytes, already checked against their SHA-256.
    public let body: [UInt8]

    /// The job's id (hex).
    public var jobID: String { header.jobID }
    /// The fragment's place in the job.
    public var index: Int { header.index }
    public var count: Int { header.count }
    /// The fragment's byte offset in the client's payload.
    public var offset: Int { header.offset }
    /// The service the fragment was submitted to.
    public var service: String { header.service }
    /// The time left before the client's deadline, or nil without one (see ``WorkHeader/timeLeft``).
    public var timeLeft: Duration? { header.timeLeft }
}

/// Thrown by a handler to refuse a fragment with a code and a reason the client will see.
public struct WorkRejection: Error, Sendable {
    /// A 4xx code is passed to the client as is; anything else becomes 520.
    public var code: UInt16
    /// A retryable rejection sends the fragment to another delivery (charged against max-deliveries).
    public var retryable: Bool
    public var reason: String

    public init(code: UInt16 = 520, retryable: Bool = false, reason: String) {
        self.code = code
        self.retryable = retryable
        self.reason = reason
    }

    /// A non-retryable 520 for an error a handler threw that is not a ``WorkRejection``: its
    /// description, cut to what a REJECT carries (``Reason/maxByteCount``), so a huge
    /// description costs no more than that once it leaves the handler.
    init(handlerError error: any Error) {
        self.init(code: 520, retryable: false, reason: Reason.truncated(String(describing: error)))
    }
}

/// A SecureMQ worker: joins one service at one or several brokers and runs a handler for each fragment,
/// up to its credit at once. Heartbeats come from its socket thread, so a slow handler never
/// looks dead.
///
/// ```swift
/// let worker = try await Worker.connect(to: "tcp://127.0.0.1:5555", brokerKey: brokerKey,
///                                       keyPair: myKeys, service: "upper")
/// try await worker.run { item in item.body.map { ($0 >= 97 && $0 <= 122) ? $0 - 32 : $0 } }
/// ```
public final class Worker: Sendable {
    public struct Options: Sendable {
        /// Fragments this worker may hold at once. The broker grants min(credit, weight × base
        /// window), so a large credit lets the allowlist's weight decide a busy worker's share;
        /// lower it for handlers that must not run that many at once. With several brokers it is
        /// split among them (`credit / N` each, the remainder to the first ones), so it stays the
        /// total the worker holds.
        public var credit: Int = 256
        /// Heartbeat interval announced in READY; the broker expects one at least this often.
        public var heartbeatInterval: Duration = .milliseconds(2500)
        /// Intervals of broker silence after which the broker counts as gone.
        public var liveness: Int = 3
        /// The largest fragment accepted (and result sent).
        public var maxFragmentSize: Int = 1 << 20
        public var connection = ConnectionOptions()
        /// Where the worker's metrics go (`securemq_worker_fragments_total{outcome}`,
        /// `securemq_worker_handler_seconds`, `securemq_worker_brokers_connected`): nil for the
        /// process-wide `MetricsSystem` (a no-op until the application bootstraps one).
        public var metricsFactory: (any MetricsFactory)? = nil

        public init() {}
    }

    private let thread: SocketThread
    private nonisolated(unsafe) let engine: WorkerEngine
    private let metrics: WorkerMetrics
    public let service: String

    private init(thread: SocketThread, engine: WorkerEngine, metrics: WorkerMetrics, service: String) {
        self.thread = thread
        self.engine = engine
        self.metrics = metrics
        self.service = service
    }

    deinit {
        thread.requestStop()
    }

    /// Connects to the broker, waits for the CURVE handshake and announces the service.
    /// - Parameters:
    ///   - service: the service to serve: 1–255 bytes of `[A-Za-z0-9._-]`.
    /// - Throws: ``SecureMQError``: `.rejectedByServer`, `.handshakeFailed`, `.unreachable`, `.invalidConfiguration`.
    public static func connect(
        to endpoint: String, brokerKey: PublicKey, keyPair: KeyPair, service: String, options: Options = Options(),
        context: SecureContext = .shared, logger: Logger = Logger(label: "securemq.worker")
    ) async throws(SecureMQError) -> Worker {
        try await connect(to: [BrokerAddress(endpoint, key: brokerKey)], keyPair: keyPair, service: service,
                          options: options, context: context, logger: logger)
    }

    /// Connects to several brokers and serves them all from one handler loop (PROTOCOL.md C56–C57).
    ///
    /// The credit is split statically: each broker is offered `credit / brokers.count` fragments
    /// (the remainder one each to the first brokers), so the worker never holds more than
    /// `options.credit` in total; a broker that is down leaves its share idle until it returns.
    /// Connecting succeeds as soon as one broker has completed the handshake; the others keep
    /// connecting in the background, for as long as the worker runs, and a broker that goes
    /// away and comes back gets the worker again. A broker that served the worker and then
    /// refuses its key is asked again each heartbeat interval (a broker shutting down refuses
    /// for a moment); `liveness` refusals in a row (a revocation), or a refusal before any
    /// service, end that broker's link only: it is logged as an error, and the others go on
    /// being served. Results for a connection that has since been replaced are dropped
    /// (``droppedStaleResults()``).
    /// - Parameters:
    ///   - brokers: one or more brokers, each an endpoint and its public key.
    ///   - service: the service to serve: 1–255 bytes of `[A-Za-z0-9._-]`.
    /// - Throws: ``SecureMQError``: `.invalidConfiguration` (no broker, a credit below the number
    ///   of brokers, a bad option); `.unreachable` when no broker completed the handshake within
    ///   the connect timeout; with one broker also `.rejectedByServer`, `.handshakeFailed`.
    public static func connect(
        to brokers: [BrokerAddress], keyPair: KeyPair, service: String, options: Options = Options(),
        context: SecureContext = .shared, logger: Logger = Logger(label: "securemq.worker")
    ) async throws(SecureMQError) -> Worker {
        let serviceName: ServiceName
        do { serviceName = try ServiceName(validating: service) } catch {
            throw SecureMQError(.invalidConfiguration, "'\(PeerText.escaped(service))' is not a valid service name: 1–255 bytes of A-Z a-z 0-9 . _ -")
        }
        guard !brokers.isEmpty else { throw SecureMQError(.invalidConfiguration, "a worker needs at least one broker") }
        guard (1...Int(UInt32.max)).contains(options.credit) else { throw SecureMQError(.invalidConfiguration, "credit must be 1…\(UInt32.max)") }
        guard options.credit >= brokers.count else {
            throw SecureMQError(.invalidConfiguration, "a credit of \(options.credit) cannot be split over \(brokers.count) brokers: each broker needs at least 1 (the credit is split statically so the total held never exceeds it); raise the credit to at least \(brokers.count)")
        }
        guard (1...Int(UInt32.max)).contains(options.maxFragmentSize) else {
            throw SecureMQError(.invalidConfiguration, "the max fragment size must be 1…\(UInt32.max) bytes (the header's length field is 4 bytes); got \(options.maxFragmentSize)")
        }
        guard options.heartbeatInterval >= .milliseconds(100) && options.heartbeatInterval <= .seconds(60) else {
            throw SecureMQError(.invalidConfiguration, "the heartbeat interval must be 100 ms…60 s")
        }
        var connectionOptions = options.connection
        connectionOptions.maxMessageSize = Wire.maxMessageSize(forFragment: options.maxFragmentSize)
        if brokers.count > 1 {
            // Each link keeps trying until its broker answers (one down at start is picked up when
            // it starts); the engine applies the connect timeout to the first handshake of any.
            connectionOptions.connectTimeout = nil
            connectionOptions.refusedConnectionLimit = nil
        }
        let metrics = WorkerMetrics(factory: options.metricsFactory)
        let (thread, engine) = try await SocketThread.startConnected(name: "securemq-worker") { (thread) throws(SecureMQError) in
            var sockets: [(BrokerAddress, CurveClientSocket)] = []
            do throws(SecureMQError) {
                for broker in brokers {
                    let socket = try CurveClientSocket(context: context, thread: thread, endpoint: broker.endpoint, serverKey: broker.publicKey,
                                                       keyPair: keyPair, options: connectionOptions, logger: logger)
                    sockets.append((broker, socket))
                }
            } catch {
                for (_, socket) in sockets { socket.fail(error) }
                throw error
            }
            return WorkerEngine(brokers: sockets, thread: thread, service: serviceName, options: options, metrics: metrics, logger: logger) {
                (broker) throws(SecureMQError) in
                try CurveClientSocket(context: context, thread: thread, endpoint: broker.endpoint, serverKey: broker.publicKey,
                                      keyPair: keyPair, options: connectionOptions, logger: logger)
            }
        }
        return Worker(thread: thread, engine: engine, metrics: metrics, service: service)
    }

    /// Serves fragments until the worker is closed or every broker has sent it away for good
    /// (with several brokers, a broker that refuses or revokes this worker ends its link only).
    ///
    /// The handler runs for up to `credit` fragments at once. What it returns goes back as the
    /// fragment's result; a ``WorkRejection`` it throws becomes a REJECT with that code, any other
    /// error a non-retryable REJECT 520 with the error's description.
    /// - Throws: ``SecureMQError`` `.disconnected` when the broker sent this worker away, or the
    ///   connection's failure; with several brokers, once every link has ended, an error naming
    ///   each broker's reason.
    public func run(_ handler: @escaping @Sendable (WorkItem) async throws -> [UInt8]) async throws(SecureMQError) {
        let box = UncheckedBox(engine)
        let thread = self.thread
        let handlerTime = metrics.handlerTime
        let stream = try await thread.run { () throws(SecureMQError) in box.value.start() }
        await withTaskGroup(of: Void.self) { group in
            for await item in stream {
                group.addTask {
                    let outcome: Result<[UInt8], WorkRejection>
                    let started = SocketThread.now()
                    do {
                        outcome = .success(try await handler(item.work))
                    } catch let rejection as WorkRejection {
                        outcome = .failure(rejection)
                    } catch {
                        outcome = .failure(WorkRejection(handlerError: error))
                    }
                    handlerTime.recordNanoseconds(SocketThread.now() &- started)
                    let result = UncheckedBox(outcome)
                    thread.execute { box.value.finish(item, result.value) }
                }
            }
        }
        let ending = try? await thread.run { () throws(SecureMQError) in box.value.endReason }
        if let failure = ending ?? nil { throw failure }
    }

    /// Serves fragments with a synchronous handler run on the worker's socket thread, one at a
    /// time, until the worker is closed or sent away: no task, stream or thread hop per fragment.
    ///
    /// For handlers that are quick and never block (a digest, a transform of a small fragment):
    /// while one runs the worker neither receives nor heartbeats, so a handler that can take
    /// longer than the heartbeat interval belongs in ``run(_:)``.
    /// - Throws: as ``run(_:)``.
    public func serve(_ handler: @escaping @Sendable (WorkItem) throws -> [UInt8]) async throws(SecureMQError) {
        try await serveInPlace { header, body in try handler(WorkItem(header: header, body: Array(body))) }
    }

    /// Like ``serve(_:)``, but the handler reads the fragment where it arrived, without a copy:
    /// the buffer is valid only during the call (copy what must outlive it).
    ///
    /// For large fragments whose result is small (a digest, a count), this saves the one copy
    /// of each body that the `[UInt8]` of a ``WorkItem`` costs.
    /// - Throws: as ``run(_:)``.
    public func serveInPlace(_ handler: @escaping @Sendable (WorkHeader, UnsafeRawBufferPointer) throws -> [UInt8]) async throws(SecureMQError) {
        let box = UncheckedBox(engine)
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            let accepted = thread.execute { box.value.startInline(handler, done: done) }
            if !accepted { done.resume() }
        }
        let ending = try? await thread.run { () throws(SecureMQError) in box.value.endReason }
        if let failure = ending ?? nil { throw failure }
    }

    /// Fragments this worker has answered (results and rejections).
    public func processed() async -> Int {
        let box = UncheckedBox(engine)
        return (try? await thread.run { () throws(SecureMQError) in box.value.processed }) ?? 0
    }

    /// Results dropped because the broker connection that delivered their WORK had been replaced
    /// by then (the broker was restarted, or went silent and was reconnected): the broker
    /// requeued those fragments when it lost the connection (PROTOCOL.md C57).
    public func droppedStaleResults() async -> Int {
        let box = UncheckedBox(engine)
        return (try? await thread.run { () throws(SecureMQError) in box.value.staleResults }) ?? 0
    }

    /// Brokers whose connection is up now (of those given to ``connect(to:keyPair:service:options:context:logger:)``).
    public func connectedBrokers() async -> Int {
        let box = UncheckedBox(engine)
        return (try? await thread.run { () throws(SecureMQError) in box.value.connectedCount }) ?? 0
    }

    /// The most fragments this worker has held at once (received, not yet answered): never
    /// above its credit, however many brokers it serves.
    public func peakHeld() async -> Int {
        let box = UncheckedBox(engine)
        return (try? await thread.run { () throws(SecureMQError) in box.value.heldPeak }) ?? 0
    }

    /// Leaves the service (DISCONNECT to every broker) and closes; `run` returns once running handlers finish.
    public func close() async {
        let box = UncheckedBox(engine)
        _ = try? await thread.run { () throws(SecureMQError) in box.value.leave() }
        await thread.shutdown()
    }
}
