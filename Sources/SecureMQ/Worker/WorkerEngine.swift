import Logging
import CoreMetrics
import SMQProtocol

/// The owner-thread side of a ``Worker``: one link per broker, all served from one handler loop.
final class WorkerEngine: ConnectingEngine {
    struct Pending: Sendable {
        let work: WorkItem
        var header: WorkHeader { work.header }
        let delivery: UInt64
        let jobID: JobID
        let index: UInt32
        let count: UInt32
        /// The broker link the WORK came from, and which of its connections (C57): a result for
        /// a connection since replaced is dropped, not sent to the new one as a stray DONE.
        let link: Int
        let generation: UInt64
    }

    /// One broker: its connection, its share of the credit, what it told us last.
    final class Link {
        let address: BrokerAddress
        /// Replaced when a refusal after service is tried again (C57).
        var client: CurveClientSocket
        /// This broker's static share of ``Worker/Options/credit`` (C56).
        let credit: Int
        var lastHeard: UInt64
        /// Bumped whenever the connection goes down or comes up: a WORK's result goes back only
        /// on the connection that delivered it.
        var generation: UInt64 = 0
        /// Why the link ended for good (a refusal, a revocation), once it has.
        var failure: SecureMQError?
        var ended = false
        /// Whether any connection of this link ever completed a handshake.
        var hasConnected = false
        /// Refusals in a row since this broker last accepted a handshake (C57).
        var refusals = 0
        /// Whether this link is counted in `securemq_worker_brokers_connected` now.
        var counted = false
        /// Time left per delivery id, from a DEADLINE that came before its WORK (C45). Delivery
        /// ids are the broker's: one table per link.
        var deadlines: [UInt64: (received: ContinuousClock.Instant, milliseconds: UInt32)] = [:]

        init(address: BrokerAddress, client: CurveClientSocket, credit: Int) {
            self.address = address
            self.client = client
            self.credit = credit
            lastHeard = SocketThread.now()
        }
    }

    let links: [Link]
    /// Makes a new connection to a broker, for a link whose refusal is tried again.
    private let makeSocket: (BrokerAddress) throws(SecureMQError) -> CurveClientSocket
    let connectWaiters: Waiters<Bool>
    let service: ServiceName
    let options: Worker.Options
    let logger: Logger
    let metrics: WorkerMetrics
    private let thread: SocketThread
    private let limits: ProtocolLimits
    private var continuation: AsyncStream<Pending>.Continuation?
    private var backlog: [Pending] = []
    private(set) var endReason: SecureMQError?
    private var ended = false
    /// A handler run right here on the socket thread (``Worker/serve(_:)``), and who waits for the end.
    private var inlineHandler: (@Sendable (WorkHeader, UnsafeRawBufferPointer) throws -> [UInt8])?
    private var endWaiters: [CheckedContinuation<Void, Never>] = []
    private(set) var processed = 0
    /// Results dropped because the broker connection that sent their WORK was replaced (C57).
    private(set) var staleResults = 0
    /// Fragments received and not yet answered, and the most ever at once: never above the credit.
    private(set) var held = 0
    private(set) var heldPeak = 0
    private let received = ZMQMessage()
    private var hasher = SHA256()
    private var connectTimer: SocketThread.TimerID?

    /// The credit each of `count` brokers gets: `credit / count`, the remainder one each to the
    /// first ones, so the shares add up to `credit` (C56).
    static func shares(credit: Int, count: Int) -> [Int] {
        (0..<count).map { credit / count + ($0 < credit % count ? 1 : 0) }
    }

    /// - Parameter sockets: one connecting socket per broker, in the caller's order.
    init(brokers: [(BrokerAddress, CurveClientSocket)], thread: SocketThread, service: ServiceName, options: Worker.Options,
         metrics: WorkerMetrics, logger: Logger, makeSocket: @escaping (BrokerAddress) throws(SecureMQError) -> CurveClientSocket) {
        self.makeSocket = makeSocket
        let shares = Self.shares(credit: options.credit, count: brokers.count)
        links = brokers.enumerated().map { Link(address: $0.element.0, client: $0.element.1, credit: shares[$0.offset]) }
        self.thread = thread
        self.service = service
        self.options = options
        self.logger = logger
        self.metrics = metrics
        limits = ProtocolLimits(maxFragment: options.maxFragmentSize)
        connectWaiters = Waiters(thread: thread)
        for index in links.indices { attach(index) }
        thread.schedule(after: options.heartbeatInterval, every: options.heartbeatInterval) { [unowned self] in self.heartbeat() }
        // Silence is judged ten times per interval, not only when a heartbeat goes out (which
        // found a silent broker up to one interval late), as the client does.
        let tick = ClientEngine.silenceCheckInterval(options.heartbeatInterval)
        thread.schedule(after: tick, every: tick) { [unowned self] in self.watchSilence() }
        // With several brokers each socket keeps trying for ever (one that is down at start is
        // picked up when it starts); the connect timeout then applies to the first of them.
        if links.count > 1, let timeout = options.connection.connectTimeout {
            connectTimer = thread.schedule(after: timeout) { [unowned self] in
                self.connectTimer = nil
                let waiting = self.links.filter { !$0.hasConnected }
                guard waiting.count == self.links.count else {
                    // Served by another broker: these keep trying, but say so once.
                    for link in waiting where !link.ended {
                        self.logger.warning("a broker has not answered yet; still trying", metadata: ["broker": "\(link.address)", "waited": "\(timeout)"])
                    }
                    return
                }
                let tried = self.links.map { link in "\(link.address): \(link.failure?.message ?? "no answer")" }
                let error = SecureMQError(.unreachable, "no SecureMQ broker completed a handshake within \(timeout): \(tried.joined(separator: "; ")); are the brokers running, and are the endpoints and keys right?")
                self.end(error)
                for link in self.links { link.client.fail(error) }
            }
        }
    }

    private func attach(_ index: Int) {
        links[index].client.attach(onReadable: { [unowned self] in self.readAll(index) },
                                   onStateChange: { [unowned self] state in self.stateChanged(index, state) })
    }

    private func stateChanged(_ index: Int, _ state: CurveClientSocket.State) {
        let link = links[index]
        if case .connected = state {
            if !link.counted { metrics.brokersConnected.increment() }
            link.counted = true
        } else if link.counted {
            metrics.brokersConnected.decrement()
            link.counted = false
        }
        switch state {
        case .connected:
            // First connection, or libzmq reconnected (a new connection to the broker): announce
            // the service again; the broker knows connections, not workers.
            link.generation &+= 1
            link.hasConnected = true
            link.refusals = 0
            link.lastHeard = SocketThread.now()
            link.deadlines.removeAll()
            sendReady(link)
            while connectWaiters.resumeFirst(true) {}
        case .connecting:
            link.generation &+= 1
        case .failed(let error):
            link.generation &+= 1
            if links.count > 1, link.hasConnected, !ended, link.failure == nil,
               error.code == .rejectedByServer || error.code == .handshakeFailed, link.refusals + 1 < options.liveness {
                // A broker that served us and now refuses is revoking us or restarting: a broker
                // shutting down still accepts handshakes for a moment after it dropped its ZAP
                // domain, and a new one may not be listening yet. Ask again each heartbeat
                // interval; only `liveness` refusals in a row end this link for good (C57).
                link.refusals += 1
                logger.warning("a broker that served this worker refused it; asking again",
                               metadata: ["broker": "\(link.address)", "error": "\(error.message)", "refusals": "\(link.refusals)"])
                thread.schedule(after: options.heartbeatInterval) { [unowned self] in self.reopen(index) }
                return
            }
            if link.failure == nil { link.failure = error }
            linkEnded(index)
        case .closed:
            link.generation &+= 1
            linkEnded(index)
        }
    }

    /// A new connection for a link whose broker refused it after serving it.
    private func reopen(_ index: Int) {
        let link = links[index]
        guard !ended, !link.ended else { return }
        do throws(SecureMQError) {
            link.client = try makeSocket(link.address)
        } catch {
            link.failure = error
            return linkEnded(index)
        }
        attach(index)
    }

    /// One broker is done with for good; the worker ends when every one is.
    private func linkEnded(_ index: Int) {
        let link = links[index]
        guard !link.ended else { return }
        link.ended = true
        let open = links.filter { !$0.ended }
        if open.isEmpty {
            if links.count == 1 { return end(link.failure) }
            let failures = links.compactMap { link in link.failure.map { "\(link.address): \($0.message)" } }
            guard let last = links.last(where: { $0.failure != nil })?.failure else { return end(nil) }
            return end(SecureMQError(last.code, "every broker link ended: \(failures.joined(separator: "; "))"))
        }
        if let failure = link.failure, !ended {
            // The others keep being served; this broker's share stays idle (C57).
            logger.error("stopped serving one broker; still serving the others",
                         metadata: ["broker": "\(link.address)", "error": "\(failure.message)", "remaining": "\(open.count)"])
        }
    }

    func waitConnected(id: Int, _ continuation: Waiters<Bool>.Continuation) {
        // Connected, then sent away before the caller's wait arrived (a READY refused at once):
        // connect succeeded, and run() or serve() reports why the worker ended.
        if links.contains(where: { link in
            if case .failed = link.client.state { return false }
            return link.hasConnected
        }) {
            return continuation.resume(returning: .success(true))
        }
        if links.allSatisfy({ $0.ended }) {
            return continuation.resume(returning: .failure(endReason ?? SecureMQError(.closed, "the worker is closed")))
        }
        connectWaiters.add(id: id, continuation, timeout: nil) { SecureMQError(.timedOut, "connect timed out") }
    }

    private var isOpen: Bool { !ended && links.contains { !$0.ended } }

    func start() -> AsyncStream<Pending> {
        let (stream, continuation) = AsyncStream<Pending>.makeStream()
        // A second run() takes over; the first one's stream ends.
        self.continuation?.finish()
        self.continuation = continuation
        for item in backlog { continuation.yield(item) }
        backlog.removeAll()
        if !isOpen { continuation.finish() }
        return stream
    }

    /// Serves with `handler` on this thread until the worker ends; `done` is resumed then.
    func startInline(_ handler: @escaping @Sendable (WorkHeader, UnsafeRawBufferPointer) throws -> [UInt8],
                     done: CheckedContinuation<Void, Never>) {
        guard isOpen else { return done.resume() }
        inlineHandler = handler
        endWaiters.append(done)
        let waiting = backlog
        backlog.removeAll()
        for item in waiting {
            let outcome = item.work.body.withUnsafeBytes { runInline(item.header, $0) }
            finish(item, outcome)
        }
    }

    private func runInline(_ header: WorkHeader, _ body: UnsafeRawBufferPointer) -> Result<[UInt8], WorkRejection> {
        guard let handler = inlineHandler else { return .failure(WorkRejection(code: 500, reason: "no handler")) }
        let started = SocketThread.now()
        defer { metrics.handlerTime.recordNanoseconds(SocketThread.now() &- started) }
        do {
            return .success(try handler(header, body))
        } catch let rejection as WorkRejection {
            return .failure(rejection)
        } catch {
            return .failure(WorkRejection(handlerError: error))
        }
    }

    private func sendReady(_ link: Link) {
        let ready = ControlMessage.ready(credit: UInt32(link.credit), heartbeatMilliseconds: UInt32(options.heartbeatInterval.milliseconds),
                                         service: service)
        link.client.send(ready.encoded())
        logger.info("ready", metadata: ["service": "\(service)", "credit": "\(link.credit)", "broker": "\(link.address)"])
    }

    /// Brokers whose connection is up now.
    var connectedCount: Int { links.reduce(0) { $0 + ($1.client.isConnected ? 1 : 0) } }

    private func heartbeat() {
        for link in links where link.client.isConnected {
            _ = try? link.client.socket.send(Wire.heartbeat())
        }
    }

    /// A broker silent for interval × liveness is gone, frozen, or expired this connection (the
    /// worker was stopped): a new connection re-registers with READY.
    private func watchSilence() {
        let limit = options.heartbeatInterval.nanoseconds &* UInt64(options.liveness)
        for index in links.indices {
            let link = links[index]
            guard link.client.isConnected else { continue }
            // Read what already arrived before judging silence: after a pause (SIGSTOP, a long
            // stall) the timer can fire before the poll reports the messages waiting.
            readAll(index)
            let silence = SocketThread.now() &- link.lastHeard
            if silence > limit {
                link.lastHeard = SocketThread.now()
                link.client.reconnect(because: "no message from the broker for \(silence / 1_000_000) ms")
            }
        }
    }

    private func readAll(_ index: Int) {
        let link = links[index]
        // handle() copies what it keeps, so the same message takes the next one.
        link.client.receiveEach(into: received) { message in
            link.lastHeard = SocketThread.now()
            handle(message, from: index)
        }
    }

    private func handle(_ message: ZMQMessage, from index: Int) {
        let link = links[index]
        let parsed: Message
        do throws(ProtocolError) {
            parsed = try Message.parse(message.bytes, limits: limits)
        } catch {
            logger.warning("dropped a malformed message from the broker", metadata: ["reason": "\(error)", "broker": "\(link.address)"])
            if let delivery = error.tag, error.command == .work {
                reject(link, delivery, code: error.failureCode ?? .malformed, retryable: false, reason: error.description)
            }
            return
        }
        switch parsed {
        case .work(let fragment):
            link.client.noteServed()
            let header = fragment.header
            // The receive step the fuzzer runs (scripts/fuzz receive): the digest, and every header
            // field as an Int without a trap whatever the broker sent (PROTOCOL.md C33).
            let work: ReceivedWork
            do throws(ProtocolError) {
                work = try ReceivedWork(fragment, hasher: &hasher)
            } catch {
                let what = error.code == .digestMismatch ? "failed its SHA-256 check" : "has an impossible place: \(error)"
                reject(link, fragment.tag, code: .malformed, retryable: false, reason: "fragment \(header.index) \(what)")
                return
            }
            var workHeader = WorkHeader(id: work.jobID, index: work.index, count: work.count,
                                        offset: work.offset,
                                        // Valid names are [A-Za-z0-9._-], but it is the broker's text: escaped all
                                        // the same, and only on the rare path where it differs from ours.
                                        service: fragment.service.matches(service) ? service.string : PeerText.escaped(fragment.service.description))
            if !link.deadlines.isEmpty, let left = link.deadlines.removeValue(forKey: fragment.tag) {
                workHeader.deadline = left.received + .milliseconds(Int(left.milliseconds))
            }
            held += 1
            if held > heldPeak { heldPeak = held }
            if inlineHandler != nil {
                // In place: the handler reads the body where libzmq put it.
                let outcome = runInline(workHeader, fragment.body)
                finish(fragment.tag, header.jobID, header.index, header.count, link: index, generation: link.generation, outcome)
                return
            }
            let pending = Pending(work: WorkItem(header: workHeader, body: Array(fragment.body)), delivery: fragment.tag,
                                  jobID: header.jobID, index: header.index, count: header.count,
                                  link: index, generation: link.generation)
            if let continuation {
                continuation.yield(pending)
            } else {
                backlog.append(pending)
            }
        case .deadline(let delivery, let milliseconds):
            // C45: the time left for the WORK that follows. Bounded: a broker that sends
            // DEADLINEs without WORK cannot grow this beyond a few times the credit.
            link.client.noteServed()
            if link.deadlines.count >= 4 * max(1, link.credit) { link.deadlines.removeAll() }
            link.deadlines[delivery] = (ContinuousClock.now, milliseconds)
        case .heartbeat:
            link.client.noteServed()
        case .disconnect(let reason):
            // After service: the broker is shutting down or dropped us; the link reconnects and
            // registers again (stateChanged sends READY), and a revoked key is then refused by
            // ZAP, which ends this link only (C57). Before service: refused, the link ends.
            if !link.client.serverSentUsAway(reason: reason.string) {
                link.failure = SecureMQError(.disconnected, links.count == 1
                    ? "the broker disconnected this worker: \(reason.string)"
                    : "the broker \(link.address) disconnected this worker: \(reason.string)")
                link.client.close()
            }
        default:
            logger.warning("dropped an unexpected message from the broker", metadata: ["command": "\(parsed.command)", "broker": "\(link.address)"])
        }
    }

    /// Sends a handler's outcome: DONE with the result, or REJECT.
    func finish(_ item: Pending, _ outcome: Result<[UInt8], WorkRejection>) {
        finish(item.delivery, item.jobID, item.index, item.count, link: item.link, generation: item.generation, outcome)
    }

    private func finish(_ delivery: UInt64, _ jobID: JobID, _ index: UInt32, _ count: UInt32, link linkIndex: Int, generation: UInt64,
                        _ outcome: Result<[UInt8], WorkRejection>) {
        processed += 1
        held -= 1
        let link = links[linkIndex]
        guard link.client.socket.isOpen else { return }
        guard link.generation == generation else {
            // The connection that delivered this WORK is gone; the broker requeued the fragment
            // when it lost it, and the new connection has never heard of this delivery (C57).
            staleResults += 1
            metrics.dropped.increment()
            logger.debug("dropped a result for a broker connection since replaced", metadata: ["broker": "\(link.address)", "delivery": "\(delivery)"])
            return
        }
        switch outcome {
        case .success(let body):
            guard body.count <= options.maxFragmentSize else {
                reject(link, delivery, code: .tooLarge, retryable: false,
                       reason: "result of \(body.count) bytes exceeds max-fragment \(options.maxFragmentSize)")
                return
            }
            let header = body.withUnsafeBytes { bytes in
                FragmentHeader(jobID: jobID, index: index, count: count, length: UInt32(bytes.count), digest: hasher.digest(of: bytes))
            }
            let size = Fragment.encodedSize(serviceLength: service.byteCount, bodyLength: body.count)
            let message = ZMQMessage(size: size)
            let buffer = message.mutableBytes
            let bodyOffset = Fragment.write(into: buffer, command: .done, tag: delivery, service: service, header: header)
            body.withUnsafeBytes { buffer.baseAddress!.advanced(by: bodyOffset).copyMemory(from: $0.baseAddress ?? UnsafeRawPointer(buffer.baseAddress!), byteCount: $0.count) }
            link.client.send(message)
            metrics.done.increment()
        case .failure(let rejection):
            reject(link, delivery, code: FailureCode(rawValue: rejection.code), retryable: rejection.retryable, reason: rejection.reason)
        }
    }

    private func reject(_ link: Link, _ delivery: UInt64, code: FailureCode, retryable: Bool, reason: String) {
        let message = ControlMessage.reject(deliveryID: delivery, code: code, retryable: retryable, reason: Reason.truncated(reason))
        link.client.send(message.encoded())
        metrics.rejected.increment()
    }

    /// Tells every broker we leave, so each requeues what we hold at once.
    func leave() {
        for link in links where link.client.isConnected {
            _ = try? link.client.socket.send(Wire.disconnect(reason: "worker closing"))
        }
    }

    private func end(_ reason: SecureMQError?) {
        guard !ended else { return }
        ended = true
        endReason = reason
        if let connectTimer { thread.cancel(connectTimer) }
        connectTimer = nil
        connectWaiters.failAll(reason ?? SecureMQError(.closed, "the worker is closed"))
        continuation?.finish()
        let waiters = endWaiters
        endWaiters.removeAll()
        for waiter in waiters { waiter.resume() }
    }

    func close() {
        // Ended first: closing the links one by one must not read as brokers failing.
        end(nil)
        for link in links { link.client.close() }
    }
}
