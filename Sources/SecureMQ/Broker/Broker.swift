public import Logging
internal import CZeroMQ
import SMQBroker

/// The SecureMQ broker engine: admits only allowlisted keys, takes each peer's role, weight and
/// services from its allowlist entry, and dispatches fragments over workers by weight with
/// credit windows, byte budgets, retries and typed failures (SMQ/1, docs/PROTOCOL.md).
///
/// It runs on a thread of its own; `secure-broker` is a thin daemon around it, and tests and
/// benchmarks embed it directly.
///
/// ```swift
/// let broker = try await Broker.start(keyPair: brokerKeys, allowlist: allowlist)
/// // …
/// await broker.shutdown()
/// ```
public final class Broker: Sendable {
    /// The endpoints bound (ports resolved).
    public let endpoints: [String]
    /// The public key each endpoint serves, in the order of ``endpoints``.
    public let endpointKeys: [PublicKey]
    let thread: SocketThread
    nonisolated(unsafe) let engine: BrokerEngine
    /// Its context: the ZAP handler's handshake counts (Broker+Metrics.swift).
    let context: SecureContext

    private init(endpoints: [String], endpointKeys: [PublicKey], thread: SocketThread, engine: BrokerEngine, context: SecureContext) {
        self.endpoints = endpoints
        self.endpointKeys = endpointKeys
        self.thread = thread
        self.engine = engine
        self.context = context
    }

    deinit {
        thread.requestStop()
    }

    /// Binds the broker's ROUTER socket and starts serving.
    /// - Parameters:
    ///   - keyPair: the broker's identity; clients and workers need its public key. Endpoints
    ///     named in ``BrokerConfiguration/endpointKeyPairs`` serve their own key pair instead.
    ///   - allowlist: the keys admitted, with their roles, weights and services.
    ///   - configuration: endpoints, strategy, windows, budgets, timeouts.
    ///   - context: the ZeroMQ context (default: the process-wide one).
    ///   - logger: peers joining and leaving, rejections, failures.
    /// - Throws: ``SecureMQError`` `.invalidConfiguration` for bad settings or endpoints.
    public static func start(
        keyPair: KeyPair, allowlist: Allowlist, configuration: BrokerConfiguration = BrokerConfiguration(),
        context: SecureContext = .shared, logger: Logger = Logger(label: "securemq.broker")
    ) async throws(SecureMQError) -> Broker {
        try configuration.validate()
        let rules = try configuration.rules()
        let thread = try SocketThread(name: "securemq-broker")
        do {
            let engine = try thread.runAndWait { () throws(SecureMQError) in
                let server = try CurveServerSocket(
                    context: context, listeners: configuration.listeners(defaultKeyPair: keyPair), allowlist: allowlist,
                    maxMessageSize: Wire.maxMessageSize(forFragment: configuration.maxFragmentSize),
                    // A small queue per peer, each way, set before the socket binds (a listener
                    // copies the options it binds with; setting them later changes nothing for
                    // peers that connect after). A client that does not read fills its send queue
                    // soon, and its results then wait in the core's outbox, counted against it
                    // (C36): with ZMQ_ROUTER_MANDATORY a send to a full pipe fails with EAGAIN.
                    highWaterMark: Int32(configuration.peerHighWaterMark), logger: logger)
                let engine = BrokerEngine(server: server, context: context, allowlist: allowlist, configuration: configuration,
                                          rules: rules, thread: thread, logger: logger)
                thread.onStop { engine.close() }
                return engine
            }
            return Broker(endpoints: engine.server.endpoints, endpointKeys: engine.server.endpointKeys, thread: thread, engine: engine, context: context)
        } catch {
            thread.requestStop()
            throw error
        }
    }

    /// A snapshot of the broker's counters.
    public func statistics() async -> BrokerStatistics {
        let box = UncheckedBox(engine)
        return (try? await thread.run { () throws(SecureMQError) in box.value.snapshot() }) ?? BrokerStatistics()
    }

    /// Whether a shutdown has begun (new SUBMITs get `503`).
    public var isDraining: Bool {
        get async {
            let box = UncheckedBox(engine)
            return (try? await thread.run { () throws(SecureMQError) in box.value.core.draining }) ?? true
        }
    }

    /// Re-reads the allowlist now and applies it to live peers (revoked keys are cut off).
    public func allowlistChanged() async {
        let box = UncheckedBox(engine)
        _ = try? await thread.run { () throws(SecureMQError) in box.value.checkAllowlist(force: true) }
    }

    /// Drains and stops: new SUBMITs get `503`, in-flight fragments may finish until the drain
    /// timeout, then every peer gets DISCONNECT and the socket closes.
    public func shutdown() async {
        let box = UncheckedBox(engine)
        let timeout = engine.configuration.drainTimeout
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let accepted = thread.execute {
                let engine = box.value
                engine.drainWaiters.append(continuation)
                engine.thread.schedule(after: timeout) {
                    let waiters = engine.drainWaiters
                    engine.drainWaiters.removeAll()
                    for waiter in waiters { waiter.resume() }
                }
                engine.startDrain()
            }
            if !accepted { continuation.resume() }
        }
        await thread.shutdown()
    }
}

extension BrokerEngine {
    func snapshot() -> BrokerStatistics { BrokerStatistics(core.snapshot) }
}
