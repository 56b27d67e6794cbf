public import CoreMetrics
public import Logging
import SMQProtocol

/// A SecureMQ client: submits payloads to a service through the broker and gets the results
/// back in order, as an async sequence.
///
/// ```swift
/// let client = try await Client.connect(to: "tcp://127.0.0.1:5555", brokerKey: brokerKey, keyPair: myKeys)
/// let job = try await client.submit(.file("big.bin"), to: "sha256")
/// for try await result in job { handle(result.body) }
/// ```
public final class Client: Sendable {
    /// Windows, fragment sizes and heartbeats.
    public struct Options: Sendable {
        /// Fragments outstanding per job: sent but not yet handed to the caller.
        public var window: Int = 32
        /// Payload bytes per fragment.
        public var fragmentSize: Int = 256 << 10
        /// The largest fragment body accepted from the broker (results).
        public var maxFragmentSize: Int = 1 << 20
        /// PING interval, to each broker the client has work at.
        public var heartbeatInterval: Duration = .milliseconds(2500)
        /// Intervals without an answer from a broker that holds work of this client after which
        /// the client connects to it anew and resubmits what is outstanding there: to another
        /// live broker at once when it has several, else to the same one once it is back.
        public var liveness: Int = 3
        /// Resubmissions (after a reconnection, or a move to another broker) after which a job
        /// (or request) whose fragments were all resent fails,
        /// when no result or failure came in between. A fragment over the broker's max-fragment
        /// makes libzmq drop the connection; without this bound the client would reconnect and
        /// resend it for ever.
        public var maxResubmitsWithoutProgress: Int = 3
        /// Ask the broker its limits when connecting (`mmi.limits`, PROTOCOL.md C47), so a
        /// fragment or request it would refuse fails at once with 413 naming both sizes. Off by
        /// default: it costs a round trip in ``Client/connect(to:brokerKey:keyPair:options:context:logger:)``,
        /// and the first message a broker sees is then that query. `smq submit` turns it on.
        /// With several brokers one of them is asked, and its limit is taken for all (brokers of
        /// one deployment share their configuration).
        public var learnBrokerLimits = false
        public var connection = ConnectionOptions()
        /// Where the client's metrics go (`securemq_client_*`, see the README); nil: the
        /// process's `MetricsSystem` (a no-op until one is bootstrapped).
        public var metricsFactory: (any MetricsFactory)?

        public init() {}
    }

    private let thread: SocketThread
    private nonisolated(unsafe) let engine: ClientEngine
    public let options: Options

    private init(thread: SocketThread, engine: ClientEngine, options: Options) {
        self.thread = thread
        self.engine = engine
        self.options = options
    }

    deinit {
        thread.requestStop()
    }

    /// The thread that owns this client's socket, as a task executor.
    ///
    /// Code that makes many calls can run on it, so that each call reaches the socket with no
    /// thread hand-off and each reply resumes the caller on the same thread, between polls:
    ///
    /// ```swift
    /// await withTaskExecutorPreference(client.executor) {
    ///     await withTaskGroup(of: Void.self) { group in
    ///         for request in requests { group.addTask { _ = try? await client.request(request, service: "echo") } }
    ///     }
    /// }
    /// ```
    ///
    /// Child tasks inherit the preference; unstructured `Task {}` does not. Keep such code short
    /// and never block in it: while it runs, the socket waits (replies, heartbeats). CPU-heavy
    /// work belongs on the default executor. After ``close()`` the tasks move to the global
    /// executor, so nothing waits on a stopped thread.
    public var executor: any TaskExecutor { thread }

    /// Connects to a broker and waits for the CURVE handshake: ``connect(to:keyPair:options:context:logger:)``
    /// with one broker.
    /// - Parameters:
    ///   - endpoint: the broker, e.g. `tcp://127.0.0.1:5555`.
    ///   - brokerKey: the broker's public key (certs/broker.key).
    ///   - keyPair: this client's identity; its public key must be on the broker's allowlist.
    /// - Throws: ``SecureMQError``: `.rejectedByServer`, `.handshakeFailed`, `.unreachable`, `.invalidConfiguration`.
    public static func connect(
        to endpoint: String, brokerKey: PublicKey, keyPair: KeyPair, options: Options = Options(),
        context: SecureContext = .shared, logger: Logger = Logger(label: "securemq.client")
    ) async throws(SecureMQError) -> Client {
        try await connect(to: [BrokerAddress(endpoint, key: brokerKey)], keyPair: keyPair, options: options,
                          context: context, logger: logger)
    }

    /// The most brokers one client uses (a job remembers which ones it touched in one word).
    public static let maxBrokers = 64

    /// Connects to several brokers and returns once one has completed its CURVE handshake; the
    /// others keep connecting in the background, and a broker that is down now is used once it
    /// is up.
    ///
    /// Each job (and each request) is placed whole on the live broker with the fewest
    /// outstanding fragments, ties taken in turn. When a broker drops the client, refuses its
    /// connection, or is silent for ``Options/heartbeatInterval`` × ``Options/liveness`` while
    /// the client has work there, every fragment placed there and not yet answered is sent
    /// again through another live broker; the job's results still come once each, in order.
    /// With one broker this is the single-broker client: it reconnects and resubmits.
    /// - Parameters:
    ///   - brokers: 1…``maxBrokers`` brokers, each an endpoint and its public key.
    ///   - keyPair: this client's identity; its public key must be on every broker's allowlist.
    /// - Throws: ``SecureMQError``: `.invalidConfiguration`; when no broker completes a handshake
    ///   within ``ConnectionOptions/connectTimeout`` (or each refused), one error naming each
    ///   broker and why (`.unreachable`, or `.rejectedByServer`/`.handshakeFailed` when every
    ///   broker said so).
    public static func connect(
        to brokers: [BrokerAddress], keyPair: KeyPair, options: Options = Options(),
        context: SecureContext = .shared, logger: Logger = Logger(label: "securemq.client")
    ) async throws(SecureMQError) -> Client {
        guard (1...maxBrokers).contains(brokers.count) else {
            throw SecureMQError(.invalidConfiguration, "a client needs 1…\(maxBrokers) brokers; got \(brokers.count)")
        }
        guard Set(brokers.map(\.endpoint)).count == brokers.count else {
            throw SecureMQError(.invalidConfiguration, "a broker endpoint is listed twice: \(brokers.map(\.description).joined(separator: ", "))")
        }
        guard options.window >= 1 else { throw SecureMQError(.invalidConfiguration, "the window must be at least 1") }
        guard (1...Int(UInt32.max)).contains(options.maxFragmentSize) else {
            throw SecureMQError(.invalidConfiguration, "the max fragment size must be 1…\(UInt32.max) bytes (the header's length field is 4 bytes); got \(options.maxFragmentSize)")
        }
        guard options.maxResubmitsWithoutProgress >= 1, options.liveness >= 1 else {
            throw SecureMQError(.invalidConfiguration, "liveness and maxResubmitsWithoutProgress must be at least 1")
        }
        guard (1...Int(UInt32.max)).contains(options.fragmentSize), (1...options.maxFragmentSize).contains(options.fragmentSize) else {
            throw SecureMQError(.invalidConfiguration, "the fragment size must be 1…\(options.maxFragmentSize) bytes")
        }
        var connectionOptions = options.connection
        connectionOptions.maxMessageSize = Wire.maxMessageSize(forFragment: options.maxFragmentSize)
        // A broker not reached at first is tried on for as long as the client lives.
        var background = connectionOptions
        background.connectTimeout = nil
        background.refusedConnectionLimit = nil
        let (thread, engine) = try await SocketThread.startConnected(name: "securemq-client") { (thread) throws(SecureMQError) in
            var sockets: [(BrokerAddress, CurveClientSocket)] = []
            for broker in brokers {
                do throws(SecureMQError) {
                    sockets.append((broker, try CurveClientSocket(context: context, thread: thread, endpoint: broker.endpoint, serverKey: broker.publicKey,
                                                                  keyPair: keyPair, options: connectionOptions, logger: logger)))
                } catch {
                    for (_, socket) in sockets { socket.close() }
                    throw error
                }
            }
            return ClientEngine(sockets: sockets, thread: thread, options: options, logger: logger) { (broker) throws(SecureMQError) in
                try CurveClientSocket(context: context, thread: thread, endpoint: broker.endpoint, serverKey: broker.publicKey,
                                      keyPair: keyPair, options: background, logger: logger)
            }
        }
        let client = Client(thread: thread, engine: engine, options: options)
        if options.learnBrokerLimits { await client.learnLimits() }
        return client
    }

    /// Asks the broker its limits (`mmi.limits`, PROTOCOL.md C47), so a fragment it would
    /// refuse fails at once with 413 instead of being sent. A broker that does not answer it
    /// (an older one says 501) leaves them unknown: nothing is checked before sending then.
    private func learnLimits() async {
        guard let reply = try? await request([], service: "mmi.limits", timeout: options.connection.connectTimeout ?? .seconds(10)) else { return }
        let text = String(decoding: reply, as: UTF8.self)
        guard text.hasPrefix("max-fragment="), let value = Int(text.dropFirst("max-fragment=".count)), value > 0 else { return }
        let box = UncheckedBox(engine)
        _ = try? await thread.run { () throws(SecureMQError) in box.value.brokerMaxFragment = value }
    }

    /// The largest fragment the broker accepts, as it said when the client connected, or nil
    /// when it was not asked (``Options/learnBrokerLimits``) or did not say (an older broker).
    public var brokerMaxFragmentSize: Int? {
        get async {
            let box = UncheckedBox(engine)
            return (try? await thread.run { () throws(SecureMQError) in box.value.brokerMaxFragment }) ?? nil
        }
    }

    /// The brokers this client can place work on now (connected, and not set aside), in the
    /// order they were given to ``connect(to:keyPair:options:context:logger:)``.
    public var connectedBrokers: [BrokerAddress] {
        get async {
            let box = UncheckedBox(engine)
            return (try? await thread.run { () throws(SecureMQError) in box.value.links.filter(\.live).map(\.address) }) ?? []
        }
    }

    /// The services that have a worker at the broker now (`mmi.services`, PROTOCOL.md C46; with
    /// several brokers, at the one the query is placed on),
    /// sorted: what to suggest when a service name gets `404`.
    /// - Throws: ``SecureMQError`` `.jobFailed` with status 501 from a broker that does not
    ///   answer it.
    public func services() async throws(SecureMQError) -> [String] {
        let reply = try await request([], service: "mmi.services", timeout: .seconds(10))
        let text = String(decoding: reply, as: UTF8.self)
        if text == "501" { throw SecureMQError(.jobFailed, "the broker does not answer mmi.services (an older broker)", status: 501) }
        return text.split(separator: ",").map { PeerText.escaped(String($0)) }
    }

    /// Starts a job: the payload is split into fragments and sent as the window allows.
    /// - Parameters:
    ///   - payload: bytes or a file.
    ///   - service: the service whose workers process it.
    ///   - deadline: how long the job may take, from now (nil: as long as it takes). When it
    ///     passes, the job fails with `.deadlineExceeded` (status 408), whatever the broker
    ///     says, and the broker is told to drop what it still holds of it (CANCEL). Results
    ///     that came before stay readable, in order, before the error.
    /// - Returns: the job, an async sequence of its results in index order.
    /// - Throws: ``SecureMQError`` for an unreadable file, a bad service name or a deadline
    ///   that is not positive.
    public func submit(_ payload: Payload, to service: String, deadline: Duration? = nil) async throws(SecureMQError) -> Job {
        if let deadline { try Self.check(deadline) }
        let box = UncheckedBox(engine)
        let options = self.options
        let state = try await thread.run { () throws(SecureMQError) in
            UncheckedBox(try box.value.startJob(payload, service: service, fragmentSize: options.fragmentSize, deadline: deadline))
        }
        return Job(thread: thread, engine: engine, state: state.value)
    }

    /// Starts a job that must be done by `deadline`; the same as passing the time left as a `Duration`.
    public func submit(_ payload: Payload, to service: String, deadline: ContinuousClock.Instant) async throws(SecureMQError) -> Job {
        try await submit(payload, to: service, deadline: max(.nanoseconds(1), deadline - .now))
    }

    /// Sends one request as a one-fragment job and returns the reply.
    /// - Parameters:
    ///   - body: the request, at most ``Options/maxFragmentSize`` bytes.
    ///   - service: the service whose workers answer it.
    ///   - timeout: how long to wait for the reply (nil: as long as it takes). When it passes,
    ///     the call throws `.deadlineExceeded` (status 408) and the broker is told to drop the
    ///     request (CANCEL).
    /// - Throws: ``SecureMQError`` `.jobFailed` with the broker's or worker's status and reason,
    ///   `.deadlineExceeded` after `timeout`.
    public func request(_ body: [UInt8], service: String, timeout: Duration? = nil) async throws(SecureMQError) -> [UInt8] {
        guard body.count <= options.maxFragmentSize else {
            throw SecureMQError(.messageTooLarge, "a request of \(body.count) bytes is above the fragment limit (\(options.maxFragmentSize)); use submit")
        }
        if let timeout { try Self.check(timeout) }
        let box = UncheckedBox(engine)
        return try await thread.wait(register: { id, continuation in
            box.value.request(body, service: service, waiter: id, timeout: timeout, continuation)
        }, cancel: { id in box.value.cancelRequest(waiter: id) })
    }

    /// A deadline must be positive and at most about 49 days, what SMQ/1 can carry in
    /// milliseconds (PROTOCOL.md C45).
    private static func check(_ deadline: Duration) throws(SecureMQError) {
        guard deadline > .zero, deadline <= .milliseconds(Int(UInt32.max)) else {
            throw SecureMQError(.invalidConfiguration, "a deadline must be more than 0 and at most \(UInt32.max) ms (about 49 days); got \(deadline)")
        }
    }

    /// Closes the connection; open jobs fail with `.closed`.
    public func close() async {
        await thread.shutdown()
    }
}

/// A submitted job: iterate it for the results, in index order, each index exactly once.
///
/// The iteration throws ``SecureMQError`` when the job fails (`.jobFailed` with the status and
/// reason from the broker or a worker, `.integrity` for a result that fails its digest).
public final class Job: AsyncSequence, Sendable {
    public typealias Element = JobResult
    public typealias Failure = SecureMQError

    /// The job id (hex), as the broker logs it.
    public var id: String { jobID.description }
    private let jobID: JobID
    /// Fragments in the job.
    public let fragmentCount: Int
    /// Payload bytes.
    public let payloadLength: Int

    private let thread: SocketThread
    private nonisolated(unsafe) let engine: ClientEngine
    private nonisolated(unsafe) let state: ClientJob

    init(thread: SocketThread, engine: ClientEngine, state: ClientJob) {
        self.thread = thread
        self.engine = engine
        self.state = state
        jobID = state.jobID
        fragmentCount = Int(state.count)
        payloadLength = Int(state.totalLength)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let job: Job
        public mutating func next() async throws(SecureMQError) -> JobResult? {
            try await job.nextResult()
        }

        public mutating func next(isolation actor: isolated (any Actor)?) async throws(SecureMQError) -> JobResult? {
            try await job.nextResult()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(job: self) }

    func nextResult() async throws(SecureMQError) -> JobResult? {
        let box = UncheckedBox((engine, state))
        return try await thread.wait(register: { id, continuation in
            box.value.0.next(box.value.1, id: id, continuation)
        }, cancel: { id in box.value.1.consumers.cancel(id: id) })
    }

    /// Cancels the job: the broker drops its queued fragments; iteration ends with `.jobFailed` 410.
    public func cancel() async {
        let box = UncheckedBox((engine, state))
        _ = try? await thread.run { () throws(SecureMQError) in box.value.0.cancel(box.value.1) }
    }

    /// What the job did; complete once the iteration has ended.
    public func summary() async -> JobSummary {
        let box = UncheckedBox(state)
        return (try? await thread.run { () throws(SecureMQError) in box.value.summary() }) ?? JobSummary()
    }

    /// Collects every result body, concatenated in index order.
    public func collect() async throws(SecureMQError) -> [UInt8] {
        var out: [UInt8] = []
        for try await result in self { out.append(contentsOf: result.body) }
        return out
    }
}
