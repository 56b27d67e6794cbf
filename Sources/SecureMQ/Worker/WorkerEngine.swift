import Logging
import SMQProtocol

/// The owner-thread side of a ``Worker``.
final class WorkerEngine: ConnectingEngine {
    struct Pending: Sendable {
        let work: WorkItem
        var header: WorkHeader { work.header }
        let delivery: UInt64
        let jobID: JobID
        let index: UInt32
        let count: UInt32
    }

    let client: CurveClientSocket
    let connectWaiters: Waiters<Bool>
    let service: ServiceName
    let options: Worker.Options
    let logger: Logger
    private let thread: SocketThread
    private let limits: ProtocolLimits
    private var continuation: AsyncStream<Pending>.Continuation?
    private var backlog: [Pending] = []
    private(set) var endReason: SecureMQError?
    /// A handler run right here on the socket thread (``Worker/serve(_:)``), and who waits for the end.
    private var inlineHandler: (@Sendable (WorkHeader, UnsafeRawBufferPointer) throws -> [UInt8])?
    private var endWaiters: [CheckedContinuation<Void, Never>] = []
    private(set) var processed = 0
    private var lastHeard: UInt64
    private let received = ZMQMessage()
    private var hasher = SHA256()
    /// Time left per delivery id, from a DEADLINE that came before its WORK (C45).
    private var deadlines: [UInt64: (received: ContinuousClock.Instant, milliseconds: UInt32)] = [:]

    init(socket: CurveClientSocket, thread: SocketThread, service: ServiceName, options: Worker.Options, logger: Logger) {
        client = socket
        self.thread = thread
        self.service = service
        self.options = options
        self.logger = logger
        limits = ProtocolLimits(maxFragment: options.maxFragmentSize)
        connectWaiters = Waiters(thread: thread)
        lastHeard = SocketThread.now()
        socket.attach(onReadable: { [unowned self] in self.readAll() },
                      onStateChange: { [unowned self] state in self.stateChanged(state) })
        thread.schedule(after: options.heartbeatInterval, every: options.heartbeatInterval) { [unowned self] in self.heartbeat() }
    }

    private func stateChanged(_ state: CurveClientSocket.State) {
        switch state {
        case .connected:
            // First connection, or libzmq reconnected (a new connection to the broker): announce
            // the service again; the broker knows connections, not workers.
            lastHeard = SocketThread.now()
            sendReady()
            while connectWaiters.resumeFirst(true) {}
        case .failed(let error):
            end(error)
        case .closed:
            end(nil)
        case .connecting:
            break
        }
    }

    func waitConnected(id: Int, _ continuation: Waiters<Bool>.Continuation) {
        switch client.state {
        case .failed(let error): return continuation.resume(returning: .failure(error))
        case .closed:
            // Connected, then sent away before the caller's wait arrived (a READY refused at
            // once): connect succeeded, and run() or serve() reports why the worker ended.
            if endReason != nil && client.hasConnected { return continuation.resume(returning: .success(true)) }
            return continuation.resume(returning: .failure(endReason ?? SecureMQError(.closed, "the worker is closed")))
        case .connected: return continuation.resume(returning: .success(true))
        case .connecting: connectWaiters.add(id: id, continuation, timeout: nil) { SecureMQError(.timedOut, "connect timed out") }
        }
    }

    func start() -> AsyncStream<Pending> {
        let (stream, continuation) = AsyncStream<Pending>.makeStream()
        // A second run() takes over; the first one's stream ends.
        self.continuation?.finish()
        self.continuation = continuation
        for item in backlog { continuation.yield(item) }
        backlog.removeAll()
        if endReason != nil || !client.socket.isOpen { continuation.finish() }
        return stream
    }

    /// Serves with `handler` on this thread until the worker ends; `done` is resumed then.
    func startInline(_ handler: @escaping @Sendable (WorkHeader, UnsafeRawBufferPointer) throws -> [UInt8],
                     done: CheckedContinuation<Void, Never>) {
        guard endReason == nil, client.socket.isOpen else { return done.resume() }
        inlineHandler = handler
        endWaiters.append(done)
        let waiting = backlog
        backlog.removeAll()
        for item in waiting {
            let outcome = item.work.body.withUnsafeBytes { runInline(item.header, $0) }
            finish(item.delivery, item.jobID, item.index, item.count, outcome)
        }
    }

    private func runInline(_ header: WorkHeader, _ body: UnsafeRawBufferPointer) -> Result<[UInt8], WorkRejection> {
        guard let handler = inlineHandler else { return .failure(WorkRejection(code: 500, reason: "no handler")) }
        do {
            return .success(try handler(header, body))
        } catch let rejection as WorkRejection {
            return .failure(rejection)
        } catch {
            return .failure(WorkRejection(handlerError: error))
        }
    }

    private func sendReady() {
        let ready = ControlMessage.ready(credit: UInt32(options.credit), heartbeatMilliseconds: UInt32(options.heartbeatInterval.milliseconds),
                                         service: service)
        client.send(ready.encoded())
        logger.info("ready", metadata: ["service": "\(service)", "credit": "\(options.credit)"])
    }

    private func heartbeat() {
        guard client.isConnected else { return }
        _ = try? client.socket.send(Wire.heartbeat())
        // Read what already arrived before judging silence: after a pause (SIGSTOP, a long GC-like
        // stall) the timer can fire before the poll reports the messages waiting.
        readAll()
        let silence = SocketThread.now() &- lastHeard
        let limit = options.heartbeatInterval.nanoseconds &* UInt64(options.liveness)
        if silence > limit {
            // The broker stopped heartbeating us: it is gone, frozen, or it expired this
            // connection (we were stopped). A new connection re-registers with READY.
            lastHeard = SocketThread.now()
            client.reconnect(because: "no message from the broker for \(silence / 1_000_000) ms")
        }
    }

    private func readAll() {
        // handle() copies what it keeps, so the same message takes the next one.
        client.receiveEach(into: received) { message in
            lastHeard = SocketThread.now()
            handle(message)
        }
    }

    private func handle(_ message: ZMQMessage) {
        let parsed: Message
        do throws(ProtocolError) {
            parsed = try Message.parse(message.bytes, limits: limits)
        } catch {
            logger.warning("dropped a malformed message from the broker", metadata: ["reason": "\(error)"])
            if let delivery = error.tag, error.command == .work {
                reject(delivery, code: error.failureCode ?? .malformed, retryable: false, reason: error.description)
            }
            return
        }
        switch parsed {
        case .work(let fragment):
            client.noteServed()
            let header = fragment.header
            // The receive step the fuzzer runs (scripts/fuzz receive): the digest, and every header
            // field as an Int without a trap whatever the broker sent (PROTOCOL.md C33).
            let work: ReceivedWork
            do throws(ProtocolError) {
                work = try ReceivedWork(fragment, hasher: &hasher)
            } catch {
                let what = error.code == .digestMismatch ? "failed its SHA-256 check" : "has an impossible place: \(error)"
                reject(fragment.tag, code: .malformed, retryable: false, reason: "fragment \(header.index) \(what)")
                return
            }
            var workHeader = WorkHeader(id: work.jobID, index: work.index, count: work.count,
                                        offset: work.offset,
                                        // Valid names are [A-Za-z0-9._-], but it is the broker's text: escaped all
                                        // the same, and only on the rare path where it differs from ours.
                                        service: fragment.service.matches(service) ? service.string : PeerText.escaped(fragment.service.description))
            if !deadlines.isEmpty, let left = deadlines.removeValue(forKey: fragment.tag) {
                workHeader.deadline = left.received + .milliseconds(Int(left.milliseconds))
            }
            if inlineHandler != nil {
                // In place: the handler reads the body where libzmq put it.
                let outcome = runInline(workHeader, fragment.body)
                finish(fragment.tag, header.jobID, header.index, header.count, outcome)
                return
            }
            let pending = Pending(work: WorkItem(header: workHeader, body: Array(fragment.body)), delivery: fragment.tag,
                                  jobID: header.jobID, index: header.index, count: header.count)
            if let continuation {
                continuation.yield(pending)
            } else {
                backlog.append(pending)
            }
        case .deadline(let delivery, let milliseconds):
            // C45: the time left for the WORK that follows. Bounded: a broker that sends
            // DEADLINEs without WORK cannot grow this beyond a few times the credit.
            client.noteServed()
            if deadlines.count >= 4 * max(1, options.credit) { deadlines.removeAll() }
            deadlines[delivery] = (ContinuousClock.now, milliseconds)
        case .heartbeat:
            client.noteServed()
        case .disconnect(let reason):
            // After a reconnection the worker registers again (stateChanged sends READY).
            if !client.serverSentUsAway(reason: reason.string) {
                end(SecureMQError(.disconnected, "the broker disconnected this worker: \(reason.string)"))
                client.close()
            }
        default:
            logger.warning("dropped an unexpected message from the broker", metadata: ["command": "\(parsed.command)"])
        }
    }

    /// Sends a handler's outcome: DONE with the result, or REJECT.
    func finish(_ item: Pending, _ outcome: Result<[UInt8], WorkRejection>) {
        finish(item.delivery, item.jobID, item.index, item.count, outcome)
    }

    private func finish(_ delivery: UInt64, _ jobID: JobID, _ index: UInt32, _ count: UInt32, _ outcome: Result<[UInt8], WorkRejection>) {
        processed += 1
        guard client.socket.isOpen else { return }
        switch outcome {
        case .success(let body):
            guard body.count <= options.maxFragmentSize else {
                reject(delivery, code: .tooLarge, retryable: false,
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
            client.send(message)
        case .failure(let rejection):
            reject(delivery, code: FailureCode(rawValue: rejection.code), retryable: rejection.retryable, reason: rejection.reason)
        }
    }

    private func reject(_ delivery: UInt64, code: FailureCode, retryable: Bool, reason: String) {
        let message = ControlMessage.reject(deliveryID: delivery, code: code, retryable: retryable, reason: Reason.truncated(reason))
        client.send(message.encoded())
    }

    /// Tells the broker we leave, so it requeues what we hold at once.
    func leave() {
        guard client.isConnected else { return }
        _ = try? client.socket.send(Wire.disconnect(reason: "worker closing"))
    }

    private func end(_ reason: SecureMQError?) {
        if endReason == nil { endReason = reason }
        connectWaiters.failAll(reason ?? SecureMQError(.closed, "the worker is closed"))
        continuation?.finish()
        let waiters = endWaiters
        endWaiters.removeAll()
        for waiter in waiters { waiter.resume() }
    }

    func close() {
        client.close()
        end(nil)
    }
}
