import CoreMetrics
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
    /// The broker the job is placed on (whole: see ``BrokerLink``); nil while no broker is live,
    /// its fragments then wait in `outstanding` until one is.
    var link: BrokerLink?
    /// Bit `i`: the job was ever sent to broker `i`, which may still hold part of it.
    var touched: UInt64 = 0
    /// Times the job waited for its only broker after a `503` (draining, C67): bounded by
    /// `maxResubmitsWithoutProgress`, so a broker that refuses and never goes away ends it.
    var drainWaits = 0

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

/// The owner-thread side of a ``Client``: one connection per broker (``BrokerLink``), jobs and
/// requests placed on the live ones, and moved when one fails (PROTOCOL.md C58–C60).
final class ClientEngine: ConnectingEngine {
    let links: [BrokerLink]
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
    private var everConnected = false
    /// Set once the client as a whole has failed (every broker refused it, or it was closed).
    private var terminalFailure: SecureMQError?
    private var closing = false
    /// Where the next tie between equally loaded brokers starts (round-robin).
    private var nextLink = 0
    /// Jobs and requests waiting for a live broker (their broker failed and none other is live).
    private var strandedWork = false
    /// Times stranded work was resent with no RESULT or FAILED in between
    /// (``Client/Options/maxResubmitsWithoutProgress``).
    private var resubmitsWithoutProgress = 0
    /// Builds a broker's socket again after it failed before its first handshake: it then keeps
    /// connecting in the background (no connect timeout, no refusal limit).
    private let remake: (BrokerAddress) throws(SecureMQError) -> CurveClientSocket
    /// The broker's max-fragment, from `mmi.limits` (C47); nil when it did not say.
    var brokerMaxFragment: Int?
    private let metrics: ClientMetrics

    init(sockets: [(BrokerAddress, CurveClientSocket)], thread: SocketThread, options: Client.Options, logger: Logger,
         remake: @escaping (BrokerAddress) throws(SecureMQError) -> CurveClientSocket) {
        links = sockets.enumerated().map { BrokerLink(index: $0.offset, address: $0.element.0, socket: $0.element.1) }
        self.thread = thread
        self.options = options
        self.logger = logger
        self.remake = remake
        metrics = ClientMetrics(factory: options.metricsFactory)
        limits = ProtocolLimits(maxFragment: options.maxFragmentSize)
        connectWaiters = Waiters(thread: thread)
        for link in links { attach(link) }
        thread.schedule(after: options.heartbeatInterval, every: options.heartbeatInterval) { [unowned self] in self.heartbeat() }
        let tick = Self.silenceCheckInterval(options.heartbeatInterval)
        thread.schedule(after: tick, every: tick) { [unowned self] in self.watchSilence() }
    }

    /// How often silence is judged: a tenth of the heartbeat interval (10 ms at least), so a
    /// silent broker is found within interval × liveness + a tenth of an interval. Checking only
    /// when a PING goes out found it up to one whole interval late (9.2 s instead of 7.5 s after
    /// a cut link, in SeveralBrokersHostTests).
    static func silenceCheckInterval(_ heartbeat: Duration) -> Duration {
        max(.milliseconds(10), heartbeat / 10)
    }

    private func attach(_ link: BrokerLink) {
        link.socket.attach(onReadable: { [unowned self, unowned link] in self.readAll(link) },
                           onStateChange: { [unowned self, unowned link] state in self.stateChanged(link, state) })
    }

    private var connectionFailure: SecureMQError? { terminalFailure }

    private func setLive(_ link: BrokerLink, _ live: Bool) {
        guard link.live != live else { return }
        link.live = live
        if live { metrics.brokersConnected.increment() } else { metrics.brokersConnected.decrement() }
    }

    private func stateChanged(_ link: BrokerLink, _ state: CurveClientSocket.State) {
        switch state {
        case .connected:
            link.lastHeard = SocketThread.now()
            setLive(link, true)
            everConnected = true
            if links.count > 1 { logger.info("broker connected", metadata: ["broker": "\(link.address)"]) }
            while connectWaiters.resumeFirst(true) {}
            placeStranded()
        case .connecting:
            // Dropped, or sent to connect anew (silence, DISCONNECT): what it held moves on.
            guard link.live else { return }
            setLive(link, false)
            strand(link, because: link.lostReason ?? "the connection dropped")
            link.lostReason = nil
        case .failed(let error):
            linkFailed(link, error)
        case .closed:
            guard !closing else { return }
            linkFailed(link, SecureMQError(.closed, "the connection to \(link.address) was closed"))
        }
    }

    /// A broker's connection ended for good. With one broker the client ends with it (as it
    /// always did); with several, a broker not reached yet keeps being tried in the background,
    /// one that refused this client is left, and the client ends only when none is left.
    private func linkFailed(_ link: BrokerLink, _ error: SecureMQError) {
        setLive(link, false)
        if links.count == 1 {
            // The first reason stays (a refusal's DISCONNECT, then the close that follows it).
            if terminalFailure == nil { terminalFailure = error }
            failAll(error)
            return
        }
        if link.firstError == nil { link.firstError = error }
        if error.code == .unreachable && !closing {
            do {
                link.socket = try remake(link.address)
                attach(link)
                logger.notice("broker not reached; connecting in the background", metadata: ["broker": "\(link.address)", "error": "\(error.message)"])
            } catch {
                link.dead = true
            }
        } else {
            link.dead = true
            logger.error("broker refused this client; not using it", metadata: ["broker": "\(link.address)", "error": "\(error.message)"])
        }
        let noneReached = !everConnected && links.allSatisfy { $0.firstError != nil }
        if noneReached || links.allSatisfy(\.dead) {
            let each = links.map { "\($0.address): \($0.firstError?.message ?? "refused")" }.joined(separator: "; ")
            let code = links.allSatisfy { $0.firstError?.code == error.code } ? error.code : .unreachable
            let failure = SecureMQError(code, "no broker could be used (\(links.count) tried): \(each)")
            terminalFailure = failure
            failAll(failure)
            return
        }
        strand(link, because: error.message)
    }

    func waitConnected(id: Int, _ continuation: Waiters<Bool>.Continuation) {
        if let failure = connectionFailure { return continuation.resume(returning: .failure(failure)) }
        if links.contains(where: \.live) { return continuation.resume(returning: .success(true)) }
        connectWaiters.add(id: id, continuation, timeout: nil) { SecureMQError(.timedOut, "connect timed out") }
    }

    // MARK: placement

    /// The live broker with the fewest outstanding fragments; ties go round-robin.
    private func pickLink() -> BrokerLink? {
        var best: BrokerLink?
        let count = links.count
        for step in 0..<count {
            let link = links[(nextLink + step) % count]
            guard link.live else { continue }
            if best == nil || link.outstanding < best!.outstanding { best = link }
        }
        if let best { nextLink = (best.index + 1) % count }
        return best
    }

    /// Places a job whole on `link`: it is counted there, and its next fragments go there.
    private func place(_ job: ClientJob, on link: BrokerLink) {
        if link.outstanding == 0 { link.lastHeard = SocketThread.now() }
        job.link = link
        job.touched |= 1 << UInt64(link.index)
        link.outstanding += job.outstanding.count
    }

    /// A broker failed: every job and request on it waits for another live broker, and goes to
    /// one at once if there is one.
    private func strand(_ link: BrokerLink, because reason: String) {
        var moved = 0
        for job in jobs.values where job.link === link {
            job.link = nil
            moved += job.outstanding.count
            strandedWork = true
        }
        for (id, pending) in requests where pending.link == link.index {
            requests[id]?.link = -1
            moved += 1
            strandedWork = true
        }
        link.outstanding = 0
        if moved > 0 && links.count > 1 {
            metrics.failovers.increment()
            logger.warning("broker lost; moving its unanswered fragments", metadata: [
                "broker": "\(link.address)", "reason": "\(reason)", "fragments": "\(moved)"])
        }
        placeStranded()
    }

    /// Whether a `503` (draining) from `link` moves its work instead of failing the job: always
    /// when another broker is live (C58); with none, only for a job that was already running
    /// there (a fragment after its first refused), whose client would otherwise lose a job to a
    /// `systemctl restart`: it waits for the broker to return, as after a crash (C67). A job the
    /// draining broker never took (its first fragment refused) fails with `503` at once, so a
    /// client is told rather than kept waiting for a broker that may be going away for good.
    /// A job waits at most `maxResubmitsWithoutProgress` times: a broker that keeps answering
    /// `503` (it drains for longer than that, or is broken) fails it with that `503` then.
    private func drainMovesWork(job: ClientJob?, index: UInt32, from link: BrokerLink) -> Bool {
        if links.contains(where: { $0.live && $0 !== link }) { return true }
        guard let job, job.link === link, index != Message.wholeJobIndex, index > 0 else { return false }
        job.drainWaits += 1
        return job.drainWaits <= options.maxResubmitsWithoutProgress
    }

    /// A broker set aside for draining is used again after its new handshake. One that drains
    /// but keeps the connection open (a drain longer than interval × liveness, or a broken
    /// broker) would never give one: it is connected to anew then, so the wait is bounded.
    private func setAsideUntilReconnected(_ link: BrokerLink) {
        thread.schedule(after: options.heartbeatInterval * options.liveness) { [weak self, weak link] in
            guard let self, let link, !self.closing, !link.live, !link.dead, link.socket.isConnected else { return }
            link.socket.reconnect(because: "the broker answered 503 (draining) and kept the connection")
        }
    }

    /// Sends stranded work to live brokers: what the failed broker may have lost is sent again
    /// from the kept SUBMITs. A broker that still holds some ignores it, and the gatherer drops
    /// results that come twice (C26, C58).
    private func placeStranded() {
        guard strandedWork, links.contains(where: \.live) else { return }
        strandedWork = false
        let waiting = jobs.values.contains { $0.link == nil && $0.failure == nil && !$0.outstanding.isEmpty }
            || requests.values.contains { $0.link < 0 }
        if waiting {
            resubmitsWithoutProgress += 1
            if resubmitsWithoutProgress > options.maxResubmitsWithoutProgress {
                giveUpResubmitting()
            }
        }
        var count = 0
        var brokers = Set<Int>()
        for job in jobs.values where job.link == nil && job.failure == nil {
            guard let link = pickLink() else { return }
            place(job, on: link)
            for index in job.outstanding.keys.sorted() {
                send(copyOf: job.outstanding[index]!, on: link)
                count += 1
            }
            job.stats.resubmitted += job.outstanding.count
            brokers.insert(link.index)
        }
        for (id, pending) in requests where pending.link < 0 {
            guard let link = pickLink() else { return }
            if link.outstanding == 0 { link.lastHeard = SocketThread.now() }
            requests[id]?.link = link.index
            link.outstanding += 1
            send(copyOf: pending.message, on: link)
            count += 1
            brokers.insert(link.index)
        }
        if count > 0 {
            metrics.fragmentsResubmitted.increment(by: count)
            let to = brokers.sorted().map { "\(links[$0].address)" }.joined(separator: ", ")
            logger.notice("resubmitted outstanding fragments", metadata: ["fragments": "\(count)", "to": "\(to)"])
        }
    }

    /// Tells every broker that may hold part of the job to drop it (CANCEL). A broker that does
    /// not know the job, or has ended it, ignores it or answers 410 for a job the client has
    /// forgotten, which is ignored too.
    private func cancelEverywhere(_ job: ClientJob) {
        let cancel = ControlMessage.cancel(jobID: job.jobID).encoded()
        for link in links where job.touched & (1 << UInt64(link.index)) != 0 && !link.dead {
            link.socket.send(cancel)
        }
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
        jobs[job.jobID] = job
        if let link = pickLink() { place(job, on: link) } else { strandedWork = true }
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
        /// The broker it was sent to, by index; -1 while it waits for a live one.
        var link: Int
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
        let link = pickLink()
        var pending = PendingRequest(jobID: jobID, message: message, continuation: continuation, link: link?.index ?? -1)
        if let timeout {
            pending.timer = thread.schedule(after: timeout) { [weak self] in
                guard let self, let pending = self.requests[jobID] else { return }
                self.requests[jobID]?.timer = nil
                if pending.link >= 0 { self.links[pending.link].socket.send(ControlMessage.cancel(jobID: jobID).encoded()) }
                self.finish(pending, .failure(SecureMQError(.deadlineExceeded,
                    "no reply within the request's timeout (\(timeout)); the broker was told to drop it",
                    status: FailureCode.deadlineExceeded.rawValue)))
            }
        }
        requests[jobID] = pending
        if let link {
            if link.outstanding == 0 { link.lastHeard = SocketThread.now() }
            link.outstanding += 1
            send(copyOf: message, on: link)
        } else {
            strandedWork = true
        }
    }

    func cancelRequest(waiter: Int) {
        let jobID = requestJobID(waiter: waiter)
        guard let pending = requests[jobID] else { return }
        if pending.link >= 0 { links[pending.link].socket.send(ControlMessage.cancel(jobID: jobID).encoded()) }
        finish(pending, .failure(SecureMQError(.cancelled, "the request was cancelled")))
    }

    private func finish(_ pending: PendingRequest, _ result: Result<[UInt8], SecureMQError>) {
        guard let current = requests.removeValue(forKey: pending.jobID) else { return }
        if let timer = current.timer { thread.cancel(timer) }
        if current.link >= 0 { links[current.link].outstanding -= 1 }
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
            if let link = job.link {
                link.outstanding += 1
                send(copyOf: message, on: link)
            }
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
    private func send(copyOf message: ZMQMessage, on link: BrokerLink) {
        // One reused message: zmq_msg_copy releases what it held, a successful send empties it;
        // if the send queue is full, the copy waits in a message of its own.
        let outgoing = sendScratch
        outgoing.copy(from: message)
        if (try? link.socket.socket.send(outgoing)) == false {
            let waiting = ZMQMessage()
            waiting.copy(from: message)
            link.socket.send(waiting)
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
        metrics.jobsCompleted.increment()
        job.finishedAt = SocketThread.now()
        if let timer = job.deadlineTimer { thread.cancel(timer) }
        job.deadlineTimer = nil
        job.stats.payloadDigest = job.fragmenter.jobDigest?.description ?? ""
        job.stats.resultDigest = job.gatherer.jobDigest?.description ?? ""
        job.link?.outstanding -= job.outstanding.count
        job.outstanding.removeAll()
        jobs[job.jobID] = nil
        // A job moved between brokers is complete at none of them (each saw some of its
        // indexes): without CANCEL each would hold it open until this client leaves (C59).
        if job.touched.nonzeroBitCount > 1 { cancelEverywhere(job) }
    }

    func cancel(_ job: ClientJob) {
        guard job.failure == nil, !job.isFinished else { return }
        cancelEverywhere(job)
        fail(job, SecureMQError(.jobFailed, "the job was cancelled", status: FailureCode.cancelled.rawValue))
    }

    /// Ends a job with `error`. Results already received stay: the caller gets them, in
    /// order, before the error (nothing that arrived is thrown away).
    private func fail(_ job: ClientJob, _ error: SecureMQError) {
        guard job.failure == nil, job.finishedAt == nil else { return }
        metrics.jobsFailed.increment()
        job.failure = error
        if let timer = job.deadlineTimer { thread.cancel(timer) }
        job.deadlineTimer = nil
        job.link?.outstanding -= job.outstanding.count
        job.outstanding.removeAll()
        job.finishedAt = SocketThread.now()
        jobs[job.jobID] = nil
        if job.ready.isEmpty { job.consumers.failAll(error) }
    }

    /// The job's own timer: the job fails here whatever the broker does (it may be gone, or
    /// silent); the broker is told to drop what it still holds, and its answer (410) finds no job.
    private func deadlinePassed(_ job: ClientJob) {
        guard job.failure == nil, job.finishedAt == nil else { return }
        cancelEverywhere(job)
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

    /// The brokers the client has work at (bit i: link i), or waits for (stranded work keeps
    /// every broker watched, as one broker always was).
    private func watchedLinks() -> UInt64 {
        if strandedWork { return ~0 }
        var busy: UInt64 = 0
        for job in jobs.values { if let link = job.link { busy |= 1 << UInt64(link.index) } }
        for link in links where link.outstanding > 0 { busy |= 1 << UInt64(link.index) }
        return busy
    }

    /// Per broker: PING every interval while the client has work there (the broker answers
    /// every PING, so silence means something).
    private func heartbeat() {
        let watched = watchedLinks()
        for link in links where !link.dead && watched & (1 << UInt64(link.index)) != 0 && link.socket.isConnected {
            _ = try? link.socket.socket.send(Wire.ping())
        }
    }

    /// A broker silent for interval × liveness while the client has work there is connected to
    /// anew, which moves its work to another live broker (C58). Idle brokers are not judged.
    private func watchSilence() {
        let watched = watchedLinks()
        let limit = options.heartbeatInterval.nanoseconds &* UInt64(options.liveness)
        for link in links where !link.dead {
            guard watched & (1 << UInt64(link.index)) != 0 else {
                link.lastHeard = SocketThread.now()
                continue
            }
            readAll(link)  // what already arrived counts (see WorkerEngine.watchSilence)
            let silence = SocketThread.now() &- link.lastHeard
            if silence > limit {
                // The broker answers every PING; silence this long means it is gone or frozen.
                link.lastHeard = SocketThread.now()
                link.lostReason = "no answer from the broker for \(silence / 1_000_000) ms"
                link.socket.reconnect(because: link.lostReason!)
            }
        }
    }

    /// The connection keeps dropping while fragments are out and nothing comes back: resending
    /// them again would loop for ever. The likeliest cause is a fragment larger than the broker
    /// accepts (libzmq drops a peer that sends a frame over its ZMQ_MAXMSGSIZE), so say so.
    private func giveUpResubmitting() {
        let cycles = resubmitsWithoutProgress - 1
        resubmitsWithoutProgress = 0
        for job in Array(jobs.values) where job.failure == nil && job.link == nil && !job.outstanding.isEmpty {
            let largest = job.outstanding.values.map { $0.count }.max() ?? 0
            let body = largest - Fragment.bodyOffset(serviceLength: job.service.byteCount)
            fail(job, SecureMQError(.jobFailed,
                "the broker dropped the connection \(cycles) times while this job's fragments were out, with no result in between: a fragment of \(body) bytes is probably larger than the broker's max-fragment (the connection limit dropped it); use a smaller fragment size (the broker's default max-fragment is 1 MiB)",
                status: FailureCode.tooLarge.rawValue))
        }
        for pending in Array(requests.values) where pending.link < 0 {
            finish(pending, .failure(SecureMQError(.jobFailed,
                "the broker dropped the connection \(cycles) times while this request was out, with no reply in between: the request (\(pending.message.count - Fragment.overhead) bytes or so) is probably larger than the broker's max-fragment",
                status: FailureCode.tooLarge.rawValue)))
        }
    }

    private func readAll(_ link: BrokerLink) {
        link.socket.receiveEach(into: received) { message in
            link.lastHeard = SocketThread.now()
            handle(message.bytes, from: link)
        }
    }

    private func handle(_ bytes: UnsafeRawBufferPointer, from link: BrokerLink) {
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
        if message.command != .disconnect { link.socket.noteServed() }
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
            if code == .draining, link.live, drainMovesWork(job: jobs[jobID], index: index, from: link) {
                // That broker is shutting down: its work goes to another broker instead of
                // failing (C58), or, with no other broker, waits for this one to come back, as
                // after a restart (C67); it is used again once it reconnects.
                setLive(link, false)
                strand(link, because: "the broker is draining")
                setAsideUntilReconnected(link)
                return
            }
            let kind: SecureMQError.Code = code == .deadlineExceeded ? .deadlineExceeded : .jobFailed
            // A job or request moved away from this broker is no longer its business: what it
            // says about the copy left there (410 for a CANCEL, 404 from a restarted broker that
            // got stale SUBMITs) must not end work that goes on elsewhere (C59).
            if let pending = requests[jobID], pending.link != link.index { return }
            if let job = jobs[jobID], job.link !== link { return }
            if let pending = requests[jobID] {
                finish(pending, .failure(SecureMQError(kind, "the request failed with \(code.rawValue) \(code.name ?? ""): \(reason.string)",
                                                       status: code.rawValue, fragmentIndex: index == Message.wholeJobIndex ? nil : index)))
                return
            }
            guard let job = jobs[jobID] else { return }  // e.g. 410 for a CANCEL after completion (C59)
            if job.touched & ~(1 << UInt64(link.index)) != 0 { cancelEverywhere(job) }
            let which = index == Message.wholeJobIndex ? "the job" : "fragment \(index)"
            fail(job, SecureMQError(kind, "\(which) failed with \(code.rawValue) \(code.name ?? ""): \(reason.string)",
                                    status: code.rawValue, fragmentIndex: index == Message.wholeJobIndex ? nil : index))
        case .busy(let jobID, let index, let retryAfter):
            if let pending = requests[jobID], pending.link != link.index { return }  // moved on (C59)
            if let job = jobs[jobID], job.link !== link { return }
            if requests[jobID] != nil {
                thread.schedule(after: .milliseconds(Int(max(1, retryAfter)))) { [weak self] in
                    guard let self, let pending = self.requests[jobID], pending.link >= 0 else { return }
                    self.send(copyOf: pending.message, on: self.links[pending.link])
                }
                return
            }
            guard let job = jobs[jobID], job.outstanding[index] != nil else { return }
            job.stats.busyResends += 1
            thread.schedule(after: .milliseconds(Int(max(1, retryAfter)))) { [weak self, weak job] in
                guard let self, let job, job.failure == nil, let kept = job.outstanding[index], let link = job.link else { return }
                self.send(copyOf: kept, on: link)
            }
        case .pong, .heartbeat:
            break
        case .disconnect(let reason):
            // After a reconnection, what is unanswered is resent (placeStranded).
            if !link.socket.serverSentUsAway(reason: reason.string) {
                let error = SecureMQError(.disconnected, "the broker disconnected this client: \(reason.string)")
                if links.count == 1 {
                    terminalFailure = error
                    failAll(error)
                    link.socket.close()
                } else {
                    // With several brokers this one is left for now, not for good: a broker
                    // shutting down sends DISCONNECT to clients it never served too (C60).
                    logger.warning("broker sent this client away before serving it; trying it again later",
                                   metadata: ["broker": "\(link.address)", "reason": "\(reason.string)"])
                    if link.live {
                        setLive(link, false)
                        strand(link, because: error.message)
                    }
                    let retry = options.heartbeatInterval * options.liveness
                    thread.schedule(after: retry) { [weak self, weak link] in
                        guard let self, let link, !self.closing, !link.dead, !link.live else { return }
                        link.socket.reconnect(because: "trying again a broker that sent this client away")
                    }
                }
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
            cancelEverywhere(job)
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
        if job.outstanding.removeValue(forKey: index) != nil { job.link?.outstanding -= 1 }
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
        closing = true
        let error = SecureMQError(.closed, "the client is closed")
        if terminalFailure == nil { terminalFailure = error }
        for link in links {
            setLive(link, false)
            link.socket.close()
        }
        failAll(error)
    }
}

/// One broker of a client: its connection and what the client has placed there.
///
/// Jobs are placed whole on one broker, never spread fragment by fragment: the broker tracks a
/// job's completion by its indexes (`markDone`, `doneAhead`, `isComplete`, at most
/// `maxDoneAhead` = 65,536 done out of order), so a job spread over several brokers would be a
/// partial job at every one of them (PROTOCOL.md C58).
final class BrokerLink {
    let index: Int
    let address: BrokerAddress
    var socket: CurveClientSocket
    /// Handshake done and not dropped or sent to reconnect since.
    var live = false
    /// Refused this client (ZAP, wrong key): not tried again.
    var dead = false
    /// Fragments and requests sent here and not yet answered: the placement's measure.
    var outstanding = 0
    var lastHeard = SocketThread.now()
    /// Why it first failed, for the error when no broker could be reached.
    var firstError: SecureMQError?
    /// Why the client is about to connect to it anew (silence), for the log line that moves its work.
    var lostReason: String?

    init(index: Int, address: BrokerAddress, socket: CurveClientSocket) {
        self.index = index
        self.address = address
        self.socket = socket
    }
}
