import DequeModule
import Logging
import SMQProtocol

/// One job on the client's thread: the payload's reader, what is out, what came back.
final class ClientJob {
    let jobID: JobID
    let service: ServiceName
    let count: UInt32
    let totalLength: UInt64
    let fragmentSize: Int
    let reader: PayloadReader
    let consumers: Waiters<JobResult?>
    var fragmenter: Fragmenter
    var gatherer: Gatherer
    /// Worker tags of results the gatherer holds out of order.
    var heldTags: [UInt32: UInt64] = [:]
    var nextIndex: UInt32 { fragmenter.nextIndex }
    /// Results handed to the caller; the window is `nextIndex - handed`.
    var handed: UInt32 = 0
    /// SUBMITs sent and not yet answered, kept for BUSY resends and resubmission.
    var outstanding: [UInt32: ZMQMessage] = [:]
    /// In-order results waiting for the caller (at most the window).
    var ready: Deque<JobResult> = []
    var failure: SecureMQError?
    var stats = JobSummary()
    let started = SocketThread.now()
    var finishedAt: UInt64?
    /// The job's deadline timer (``Client/submit(_:to:deadline:)``), cancelled when it ends.
    var deadlineTimer: SocketThread.TimerID?
    var deadline: Duration?
    /// When the deadline passes, in ``SocketThread/now()`` nanoseconds.
    var deadlineAt: UInt64?

    /// The time left in milliseconds for a SUBMIT's tag (PROTOCOL.md C45): 0 = no deadline,
    /// at least 1 while one is set.
    func timeLeftMilliseconds() -> UInt64 {
        guard let deadlineAt else { return 0 }  // no clock read on the common path
        let now = SocketThread.now()
        return max(1, (deadlineAt &- min(now, deadlineAt)) / 1_000_000)
    }

    init(jobID: JobID, service: ServiceName, reader: PayloadReader, fragmentSize: Int, window: Int,
         limits: ProtocolLimits, thread: SocketThread) throws(PipelineError) {
        self.jobID = jobID
        self.service = service
        self.reader = reader
        self.fragmentSize = fragmentSize
        totalLength = UInt64(reader.length)
        // An empty payload is one empty fragment, so every job has a result to wait for.
        fragmenter = try Fragmenter(jobID: jobID, totalLength: totalLength, fragmentSize: fragmentSize, limits: limits)
        count = fragmenter.count
        consumers = Waiters(thread: thread)
        gatherer = Gatherer(jobID: jobID, count: count, window: window)
        stats.fragments = Int(count)
        stats.payloadBytes = reader.length
    }

    var isFinished: Bool { handed == count }

    func summary() -> JobSummary {
        var copy = stats
        copy.elapsed = .nanoseconds(Int64((finishedAt ?? SocketThread.now()) &- started))
        return copy
    }
}

/// The owner-thread side of a ``Client``.
final class ClientEngine: ConnectingEngine {
    let client: CurveClientSocket
    let connectWaiters: Waiters<Bool>
    let options: Client.Options
    let logger: Logger
    private let thread: SocketThread
    private let limits: ProtocolLimits
    private var jobs: [JobID: ClientJob] = [:]
    private let received = ZMQMessage()
    private let sendScratch = ZMQMessage()
    /// One-fragment requests (``Client/request(_:service:)``): no job machinery; one thread
    /// crossing each way, or none for a task on the client's executor.
    private var requests: [JobID: PendingRequest] = [:]
    private var hasher = SHA256()
    /// The last service a request named, validated: requests usually name the same one.
    private var lastService: (string: String, name: ServiceName)?
    /// Job ids: a random half per engine and a counter, so making one costs no system call.
    private let jobIDPrefix = UInt64.random(in: 0...UInt64.max)
    private var jobIDCounter: UInt64 = 0
    private var lastHeard: UInt64 = SocketThread.now()
    private var everConnected = false
    /// Reconnections that resent fragments with no RESULT or FAILED in between
    /// (``Client/Options/maxResubmitsWithoutProgress``).
    private var resubmitsWithoutProgress = 0
    /// The broker's max-fragment, from `mmi.limits` (C47); nil when it did not say.
    var brokerMaxFragment: Int?

    init(socket: CurveClientSocket, thread: SocketThread, options: Client.Options, logger: Logger) {
        client = socket
        self.thread = thread
        self.options = options
        self.logger = logger
        limits = ProtocolLimits(maxFragment: options.maxFragmentSize)
        connectWaiters = Waiters(thread: thread)
        socket.attach(onReadable: { [unowned self] in self.readAll() },
                      onStateChange: { [unowned self] state in self.stateChanged(state) })
        thread.schedule(after: options.heartbeatInterval, every: options.heartbeatInterval) { [unowned self] in self.heartbeat() }
    }

    private var connectionFailure: SecureMQError? {
        switch client.state {
        case .failed(let error): return error
        case .closed: return SecureMQError(.closed, "the client is closed")
        default: return nil
        }
    }

    private func stateChanged(_ state: CurveClientSocket.State) {
        switch state {
        case .connected:
            lastHeard = SocketThread.now()
            if everConnected { resubmitOutstanding() }
            everConnected = true
            while connectWaiters.resumeFirst(true) {}
        case .failed(let error):
            failAll(error)
        case .closed:
            failAll(SecureMQError(.closed, "the client is closed"))
        case .connecting:
            break
        }
    }

    func waitConnected(id: Int, _ continuation: Waiters<Bool>.Continuation) {
        if let failure = connectionFailure { return continuation.resume(returning: .failure(failure)) }
        if client.isConnected { return continuation.resume(returning: .success(true)) }
        connectWaiters.add(id: id, continuation, timeout: nil) { SecureMQError(.timedOut, "connect timed out") }
    }

    // MARK: jobs

    func startJob(_ payload: Payload, service: String, fragmentSize: Int, deadline: Duration? = nil) throws(SecureMQError) -> ClientJob {
        if let failure = connectionFailure { throw failure }
        let name: ServiceName
        do { name = try ServiceName(validating: service) } catch {
            throw SecureMQError(.invalidConfiguration, "'\(PeerText.escaped(service))' is not a valid service name: 1–255 bytes of A-Z a-z 0-9 . _ -")
        }
        let reader = try PayloadReader(payload)
        if let limit = brokerMaxFragment, min(fragmentSize, reader.length) > limit {
            throw SecureMQError(.jobFailed,
                "413: fragments of \(min(fragmentSize, reader.length)) bytes are larger than the broker's max-fragment (\(limit) bytes): use a fragment size of at most \(limit) bytes",
                status: FailureCode.tooLarge.rawValue)
        }
        let job: ClientJob
        do {
            job = try ClientJob(jobID: nextJobID(), service: name, reader: reader, fragmentSize: fragmentSize,
                                window: options.window, limits: limits, thread: thread)
        } catch {
            throw SecureMQError(.invalidConfiguration, "cannot split the payload: \(error)")
        }
        if jobs.isEmpty { lastHeard = SocketThread.now() }
        jobs[job.jobID] = job
        if let deadline {
            job.deadline = deadline
            job.deadlineAt = SocketThread.now() &+ deadline.nanoseconds
            job.deadlineTimer = thread.schedule(after: deadline) { [weak self, weak job] in
                guard let self, let job else { return }
                job.deadlineTimer = nil
                self.deadlinePassed(job)
            }
        }
        pump(job)
        return job
    }

    private func nextJobID() -> JobID {
        jobIDCounter &+= 1
        return JobID(high: jobIDPrefix, low: jobIDCounter)
    }

    /// A request's job id comes from its waiter's id (unique in the process), with the top bit
    /// set so it never meets a job's counter: cancelling finds the request without a second map.
    private func requestJobID(waiter: Int) -> JobID {
        JobID(high: jobIDPrefix, low: 1 << 63 | UInt64(truncatingIfNeeded: waiter))
    }

    // MARK: one-fragment requests

    /// Stored in the dictionary itself: no allocation of its own.
    struct PendingRequest {
        let jobID: JobID
        let message: ZMQMessage
        let continuation: Waiters<[UInt8]>.Continuation
        /// Only for a request with a timeout.
        var timer: SocketThread.TimerID?
    }

    /// Sends `body` as a one-fragment job; the continuation gets the result's body, or
    /// `.deadlineExceeded` once `timeout` has passed.
    func request(_ body: [UInt8], service: String, waiter: Int, timeout: Duration? = nil, _ continuation: Waiters<[UInt8]>.Continuation) {
        if let failure = connectionFailure { return continuation.resume(returning: .failure(failure)) }
        let name: ServiceName
        if let last = lastService, last.string == service {
            name = last.name
        } else if let valid = try? ServiceName(validating: service) {
            name = valid
            lastService = (service, valid)
        } else {
            return continuation.resume(returning: .failure(SecureMQError(.invalidConfiguration,
                "'\(PeerText.escaped(service))' is not a valid service name: 1–255 bytes of A-Z a-z 0-9 . _ -")))
        }
        if let limit = brokerMaxFragment, body.count > limit {
            return continuation.resume(returning: .failure(SecureMQError(.jobFailed,
                "413: a request of \(body.count) bytes is larger than the broker's max-fragment (\(limit) bytes)", status: FailureCode.tooLarge.rawValue)))
        }
        let jobID = requestJobID(waiter: waiter)
        let message = ZMQMessage(size: Fragment.encodedSize(serviceLength: name.byteCount, bodyLength: body.count))
        let buffer = message.mutableBytes
        let header = body.withUnsafeBytes { bytes in
            FragmentHeader(jobID: jobID, index: 0, count: 1, offset: 0, totalLength: UInt64(bytes.count),
                           length: UInt32(bytes.count), digest: hasher.digest(of: bytes))
        }
        let timeLeft = timeout.map { max(1, $0.nanoseconds / 1_000_000) } ?? 0  // C45
        let bodyOffset = Fragment.write(into: buffer, command: .submit, tag: timeLeft, service: name, header: header)
        body.withUnsafeBytes { bytes in
            if let base = bytes.baseAddress { buffer.baseAddress!.advanced(by: bodyOffset).copyMemory(from: base, byteCount: bytes.count) }
        }
        if requests.isEmpty && jobs.isEmpty { lastHeard = SocketThread.now() }
        var pending = PendingRequest(jobID: jobID, message: message, continuation: continuation)
        if let timeout {
            pending.timer = thread.schedule(after: timeout) { [weak self] in
                guard let self, let pending = self.requests[jobID] else { return }
                self.requests[jobID]?.timer = nil
                self.client.send(ControlMessage.cancel(jobID: jobID).encoded())
                self.finish(pending, .failure(SecureMQError(.deadlineExceeded,
                    "no reply within the request's timeout (\(timeout)); the broker was told to drop it",
                    status: FailureCode.deadlineExceeded.rawValue)))
            }
        }
        requests[jobID] = pending
        send(copyOf: message)
    }

    func cancelRequest(waiter: Int) {
        let jobID = requestJobID(waiter: waiter)
        guard let pending = requests[jobID] else { return }
        client.send(ControlMessage.cancel(jobID: jobID).encoded())
        finish(pending, .failure(SecureMQError(.cancelled, "the request was cancelled")))
    }

    private func finish(_ pending: PendingRequest, _ result: Result<[UInt8], SecureMQError>) {
        if let timer = requests[pending.jobID]?.timer { thread.cancel(timer) }
        requests[pending.jobID] = nil
        pending.continuation.resume(returning: result)
    }

    /// Sends fragments while the job's window has room.
    private func pump(_ job: ClientJob) {
        while job.failure == nil, job.nextIndex < job.count, Int(job.nextIndex - job.handed) < options.window {
            let index = job.nextIndex
            let message: ZMQMessage
            do { message = try makeSubmit(job, index: index) } catch {
                fail(job, error)
                return
            }
            job.outstanding[index] = message
            send(copyOf: message)
        }
    }

    /// Builds SUBMIT `index` in a message of its own: the body is read straight into it.
    private func makeSubmit(_ job: ClientJob, index: UInt32) throws(SecureMQError) -> ZMQMessage {
        let offset = Int(index) * job.fragmentSize
        let length = min(job.fragmentSize, job.reader.length - offset)
        let size = Fragment.encodedSize(serviceLength: job.service.byteCount, bodyLength: length)
        let message = ZMQMessage(size: size)
        let buffer = message.mutableBytes
        let bodyOffset = Fragment.bodyOffset(serviceLength: job.service.byteCount)
        let body = UnsafeMutableRawBufferPointer(rebasing: buffer[bodyOffset..<bodyOffset + length])
        try job.reader.read(at: offset, into: body)
        let header: FragmentHeader
        do { header = try job.fragmenter.header(forNextBody: UnsafeRawBufferPointer(body)) } catch {
            throw SecureMQError(.integrity, "fragment \(index): \(error)")
        }
        // The tag carries the time left (C45); a resend reuses this message, so a resent SUBMIT
        // names a later deadline than the real one: the client's own timer still ends the job.
        Fragment.write(into: buffer, command: .submit, tag: job.timeLeftMilliseconds(), service: job.service, header: header)
        return message
    }

    /// Sends a kept message; zmq_msg_copy shares the buffer, so nothing is copied.
    private func send(copyOf message: ZMQMessage) {
        // One reused message: zmq_msg_copy releases what it held, a successful send empties it;
        // if the send queue is full, the copy waits in a message of its own.
        let outgoing = sendScratch
        outgoing.copy(from: message)
        if (try? client.socket.send(outgoing)) == false {
            let waiting = ZMQMessage()
            waiting.copy(from: message)
            client.send(waiting)
        }
    }

    func next(_ job: ClientJob, id: Int, _ continuation: Waiters<JobResult?>.Continuation) {
        if let result = job.ready.popFirst() {
            handOver(job, result, continuation)
            return
        }
        if let failure = job.failure { return continuation.resume(returning: .failure(failure)) }
        if job.isFinished { return continuation.resume(returning: .success(nil)) }
        job.consumers.add(id: id, continuation, timeout: nil) { SecureMQError(.timedOut, "no result in time") }
    }

    private func handOver(_ job: ClientJob, _ result: JobResult, _ continuation: Waiters<JobResult?>.Continuation) {
        job.handed += 1
        if job.isFinished { finish(job) }
        continuation.resume(returning: .success(result))
        pump(job)
    }

    private func deliverReady(_ job: ClientJob) {
        while !job.consumers.isEmpty, let result = job.ready.popFirst() {
            job.handed += 1
            if job.isFinished { finish(job) }
            job.consumers.resumeFirst(result)
        }
        if job.isFinished { while job.consumers.resumeFirst(nil) {} }
        pump(job)
    }

    private func finish(_ job: ClientJob) {
        guard job.finishedAt == nil else { return }
        job.finishedAt = SocketThread.now()
        if let timer = job.deadlineTimer { thread.cancel(timer) }
        job.deadlineTimer = nil
        job.stats.payloadDigest = job.fragmenter.jobDigest?.description ?? ""
        job.stats.resultDigest = job.gatherer.jobDigest?.description ?? ""
        jobs[job.jobID] = nil
    }

    func cancel(_ job: ClientJob) {
        guard job.failure == nil, !job.isFinished else { return }
        client.send(ControlMessage.cancel(jobID: job.jobID).encoded())
        fail(job, SecureMQError(.jobFailed, "the job was cancelled", status: FailureCode.cancelled.rawValue))
    }

    /// Ends a job with `error`. Results already received stay: the caller gets them, in
    /// order, before the error (nothing that arrived is thrown away).
    private func fail(_ job: ClientJob, _ error: SecureMQError) {
        guard job.failure == nil, job.finishedAt == nil else { return }
        job.failure = error
        if let timer = job.deadlineTimer { thread.cancel(timer) }
        job.deadlineTimer = nil
        job.outstanding.removeAll()
        job.finishedAt = SocketThread.now()
        jobs[job.jobID] = nil
        if job.ready.isEmpty { job.consumers.failAll(error) }
    }

    /// The job's own timer: the job fails here whatever the broker does (it may be gone, or
    /// silent); the broker is told to drop what it still holds, and its answer (410) finds no job.
    private func deadlinePassed(_ job: ClientJob) {
        guard job.failure == nil, job.finishedAt == nil else { return }
        client.send(ControlMessage.cancel(jobID: job.jobID).encoded())
        let received = Int(job.handed) + job.ready.count
        fail(job, SecureMQError(.deadlineExceeded,
            "the job's deadline (\(job.deadline.map { "\($0)" } ?? "?")) passed with \(received) of \(job.count) results in; the broker was told to drop the rest",
            status: FailureCode.deadlineExceeded.rawValue))
    }

    private func failAll(_ error: SecureMQError) {
        connectWaiters.failAll(error)
        for job in Array(jobs.values) { fail(job, error) }
        for pending in Array(requests.values) { finish(pending, .failure(error)) }
    }

    // MARK: receiving

    private func heartbeat() {
        guard !jobs.isEmpty || !requests.isEmpty else {
            lastHeard = SocketThread.now()
            return
        }
        readAll()  // what already arrived counts (see WorkerEngine.heartbeat)
        let silence = SocketThread.now() &- lastHeard
        if silence > options.heartbeatInterval.nanoseconds &* UInt64(options.liveness) {
            // The broker answers every PING; silence this long means it is gone or frozen.
            lastHeard = SocketThread.now()
            client.reconnect(because: "no answer from the broker for \(silence / 1_000_000) ms")
            return
        }
        guard client.isConnected else { return }
        _ = try? client.socket.send(Wire.ping())
    }

    /// After a reconnection: what the broker may have lost (it restarted, or the old connection
    /// took queued fragments or results with it) is sent again from the kept SUBMITs. The broker
    /// ignores what it still holds, and the gatherer drops results that come twice.
    private func resubmitOutstanding() {
        let waiting = jobs.values.contains { $0.failure == nil && !$0.outstanding.isEmpty } || !requests.isEmpty
        if waiting {
            resubmitsWithoutProgress += 1
            if resubmitsWithoutProgress > options.maxResubmitsWithoutProgress {
                giveUpResubmitting()
                return
            }
        }
        var count = 0
        for job in jobs.values where job.failure == nil {
            for index in job.outstanding.keys.sorted() {
                send(copyOf: job.outstanding[index]!)
                count += 1
            }
            job.stats.resubmitted += job.outstanding.count
        }
        for pending in requests.values {
            send(copyOf: pending.message)
            count += 1
        }
        if count > 0 { logger.notice("reconnected; resubmitted outstanding fragments", metadata: ["fragments": "\(count)"]) }
    }

    /// The connection keeps dropping while fragments are out and nothing comes back: resending
    /// them again would loop for ever. The likeliest cause is a fragment larger than the broker
    /// accepts (libzmq drops a peer that sends a frame over its ZMQ_MAXMSGSIZE), so say so.
    private func giveUpResubmitting() {
        let cycles = resubmitsWithoutProgress - 1
        resubmitsWithoutProgress = 0
        for job in Array(jobs.values) where job.failure == nil && !job.outstanding.isEmpty {
            let largest = job.outstanding.values.map { $0.count }.max() ?? 0
            let body = largest - Fragment.bodyOffset(serviceLength: job.service.byteCount)
            fail(job, SecureMQError(.jobFailed,
                "the broker dropped the connection \(cycles) times while this job's fragments were out, with no result in between: a fragment of \(body) bytes is probably larger than the broker's max-fragment (the connection limit dropped it); use a smaller fragment size (the broker's default max-fragment is 1 MiB)",
                status: FailureCode.tooLarge.rawValue))
        }
        for pending in Array(requests.values) {
            finish(pending, .failure(SecureMQError(.jobFailed,
                "the broker dropped the connection \(cycles) times while this request was out, with no reply in between: the request (\(pending.message.count - Fragment.overhead) bytes or so) is probably larger than the broker's max-fragment",
                status: FailureCode.tooLarge.rawValue)))
        }
    }

    private func readAll() {
        client.receiveEach(into: received) { message in
            lastHeard = SocketThread.now()
            handle(message.bytes)
        }
    }

    private func handle(_ bytes: UnsafeRawBufferPointer) {
        let message: Message
        do throws(ProtocolError) {
            message = try Message.parse(bytes, limits: limits)
        } catch {
            logger.warning("dropped a malformed message from the broker", metadata: ["reason": "\(error)"])
            if let jobID = error.jobID, error.command == .result, let job = jobs[jobID] {
                fail(job, SecureMQError(.integrity, "a result of job \(jobID) was malformed: \(error)"))
            }
            return
        }
        if message.command != .disconnect { client.noteServed() }
        if message.command == .result || message.command == .failed { resubmitsWithoutProgress = 0 }
        switch message {
        case .result(let fragment):
            if let pending = requests[fragment.header.jobID] {
                let header = fragment.header
                guard header.index == 0, header.count == 1, hasher.digest(of: fragment.body) == header.digest else {
                    finish(pending, .failure(SecureMQError(.integrity, "the reply to request \(header.jobID) failed its SHA-256 check")))
                    return
                }
                finish(pending, .success(Array(fragment.body)))
                return
            }
            guard let job = jobs[fragment.header.jobID] else { return } // late result of an ended job
            accept(fragment, for: job)
        case .failed(let jobID, let index, let code, let reason):
            let kind: SecureMQError.Code = code == .deadlineExceeded ? .deadlineExceeded : .jobFailed
            if let pending = requests[jobID] {
                finish(pending, .failure(SecureMQError(kind, "the request failed with \(code.rawValue) \(code.name ?? ""): \(reason.string)",
                                                       status: code.rawValue, fragmentIndex: index == Message.wholeJobIndex ? nil : index)))
                return
            }
            guard let job = jobs[jobID] else { return }
            let which = index == Message.wholeJobIndex ? "the job" : "fragment \(index)"
            fail(job, SecureMQError(kind, "\(which) failed with \(code.rawValue) \(code.name ?? ""): \(reason.string)",
                                    status: code.rawValue, fragmentIndex: index == Message.wholeJobIndex ? nil : index))
        case .busy(let jobID, let index, let retryAfter):
            if requests[jobID] != nil {
                thread.schedule(after: .milliseconds(Int(max(1, retryAfter)))) { [weak self] in
                    guard let self, let pending = self.requests[jobID] else { return }
                    self.send(copyOf: pending.message)
                }
                return
            }
            guard let job = jobs[jobID], job.outstanding[index] != nil else { return }
            job.stats.busyResends += 1
            thread.schedule(after: .milliseconds(Int(max(1, retryAfter)))) { [weak self, weak job] in
                guard let self, let job, job.failure == nil, let kept = job.outstanding[index] else { return }
                self.send(copyOf: kept)
            }
        case .pong, .heartbeat:
            break
        case .disconnect(let reason):
            // After a reconnection, what is unanswered is resent (resubmitOutstanding).
            if !client.serverSentUsAway(reason: reason.string) {
                failAll(SecureMQError(.disconnected, "the broker disconnected this client: \(reason.string)"))
                client.close()
            }
        default:
            logger.warning("dropped an unexpected message from the broker", metadata: ["command": "\(message.command)"])
        }
    }

    private func accept(_ fragment: FragmentView, for job: ClientJob) {
        let index = fragment.header.index
        let outcome: Gatherer.Outcome
        do throws(PipelineError) {
            outcome = try job.gatherer.accept(header: fragment.header, body: fragment.body)
        } catch {
            client.send(ControlMessage.cancel(jobID: job.jobID).encoded())
            fail(job, SecureMQError(.integrity, "job \(job.jobID): \(error)", fragmentIndex: error.index))
            return
        }
        switch outcome {
        case .duplicate:
            job.stats.duplicates += 1
            return
        case .held:
            job.heldTags[index] = fragment.tag
        case .deliverNow:
            append(job, index: index, body: fragment.body, tag: fragment.tag)
            while job.gatherer.deliverNextHeld({ next, body in
                append(job, index: next, body: body, tag: job.heldTags.removeValue(forKey: next) ?? 0)
            }) {}
        }
        job.outstanding[index] = nil
        job.stats.perWorker[fragment.tag, default: 0] += 1
        // Every result is here: the job is done, whatever happens to the connection while the
        // caller is still reading them.
        if job.gatherer.isComplete { finish(job) }
        deliverReady(job)
    }

    private func append(_ job: ClientJob, index: UInt32, body: UnsafeRawBufferPointer, tag: UInt64) {
        job.stats.resultBytes += body.count
        job.ready.append(JobResult(index: Int(index), body: Array(body), workerTag: tag))
    }

    func close() {
        client.close()
        failAll(SecureMQError(.closed, "the client is closed"))
    }
}
