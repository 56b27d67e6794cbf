import DequeModule
import SMQKeys
import Logging
import SMQProtocol

/// Jobs: opening one, taking its fragments (within the budget and the client's share), ending
/// it, and sending its results on.
extension BrokerCore {
    func submit(_ fragment: FragmentView, body: AnyObject, from client: PeerConnection) {
        let header = fragment.header
        let jobKey = JobKey(client: client.key.serial, jobID: header.jobID)
        if draining {
            sendFailed(jobID: header.jobID, index: header.index, code: .draining, reason: "the broker is draining; submit again later", to: client)
            return
        }
        if let endedOn = endedJobs[jobKey] {
            guard endedOn != client.serial else {
                sendFailed(jobID: header.jobID, index: header.index, code: .cancelled, reason: "the job has ended", to: client)
                return
            }
            // The same key on a new connection: it reconnected and resubmits what it lacks (C27).
            endedJobs.forget(jobKey)
        }
        let job: Job
        if let existing = jobs[jobKey] {
            job = existing
            guard fragment.service.bytes.elementsEqual(job.service.name.utf8), job.count == header.count, job.totalLength == header.totalLength else {
                failJob(job, index: header.index, code: .malformed,
                        reason: "fragment \(header.index) disagrees with the job's service, count or total length")
                return
            }
            if job.replyTo !== client {
                // The client reconnected: results go to the new connection, and results already
                // sent may have been lost with the old one, so done fragments may run again (C26).
                job.replyTo.jobs.remove(jobKey)
                job.replyTo = client
                client.jobs.insert(jobKey)
                activeClients[client.serial] = client
                job.rerunAllowed = true
            }
        } else {
            let serviceName = fragment.service.description
            if !client.key.allows(service: serviceName) {
                counters.forbidden += 1
                sendFailed(jobID: header.jobID, index: header.index, code: .forbidden,
                           reason: "key \(client.key.fingerprint) may not submit to service '\(serviceName)'", to: client)
                return
            }
            if serviceName.hasPrefix("mmi.") {
                answerMMI(fragment, service: serviceName, to: client)
                return
            }
            guard client.key.account.openJobs < rules.maxJobsPerClient else {
                sendBusy(jobID: header.jobID, index: header.index, to: client)
                return
            }
            let service = serviceQueue(serviceName)
            job = Job(key: jobKey, service: service, owner: client.key, count: header.count, totalLength: header.totalLength, replyTo: client)
            job.openedAt = now
            jobs[jobKey] = job
            service.openJobs += 1
            client.key.account.openJobs += 1
            client.jobs.insert(jobKey)
            activeClients[client.serial] = client
        }
        if job.live[header.index] != nil || (job.isDone(header.index) && !job.rerunAllowed) {
            counters.duplicateSubmits += 1
            log.note(.duplicateSubmit, key: client.key.logID, level: .debug, "duplicate SUBMIT ignored", now: now,
                     ["key": "\(client.key.fingerprint)", "index": "\(header.index)"])
            return
        }
        if job.isDone(header.index) { counters.reruns += 1 }
        let cost = BrokerRules.cost(ofBody: Int(header.length))
        guard admits(cost: cost, for: client.key) else {
            sendBusy(jobID: header.jobID, index: header.index, to: client)
            if job.live.isEmpty && job.doneCount == 0 { forget(job) }
            return
        }
        hold(cost: cost, for: client.key)
        counters.submitted += 1
        let state = HeldFragment(job: job, index: header.index, body: body, cost: cost, now: now)
        // SUBMIT's tag is the time left in ms (C45); at most 2^32 − 1, so no overflow.
        if fragment.tag != 0 { state.deadline = now &+ min(fragment.tag, UInt64(UInt32.max)) &* 1_000_000 }
        job.live[header.index] = state
        job.service.enqueue(state, now: now)
        dispatch(job.service)
    }

    func cancel(_ jobID: JobID, from client: PeerConnection) {
        guard let job = jobs[JobKey(client: client.key.serial, jobID: jobID)] else { return }
        counters.failedJobs += 1
        counters.failedJobsByCode[FailureCode.cancelled.rawValue, default: 0] += 1
        logJobEnd(job, outcome: "cancelled", code: .cancelled)
        log.note(.cancel, key: client.key.logID, level: .debug, "job cancelled", now: now,
                 ["client": "\(client.key.fingerprint)", "job": "\(jobID)"])
        sendFailed(jobID: jobID, index: Message.wholeJobIndex, code: .cancelled, reason: "cancelled by the client", to: job.replyTo)
        end(job)
    }

    /// Ends a job because of one fragment (or, with `.wholeJob`, as a whole): its queued
    /// fragments are dropped, its late results ignored, one FAILED is sent.
    func failJob(_ job: Job, index: UInt32, code: FailureCode, reason: String) {
        counters.failedJobs += 1
        counters.failedJobsByCode[code.rawValue, default: 0] += 1
        logJobEnd(job, outcome: "failed", code: code)
        log.note(.jobFailed, key: job.owner.logID, level: .notice, "job failed", now: now, [
            "client": "\(job.owner.fingerprint)", "job": "\(job.key.jobID)", "index": "\(index)",
            "code": "\(code.rawValue)", "reason": "\(reason)",
        ])
        sendFailed(jobID: job.key.jobID, index: index, code: code, reason: reason, to: job.replyTo)
        end(job)
    }

    /// Ends several jobs at once: all are doomed before the first ends, so the credit one frees
    /// never goes to a fragment of the next.
    func failJobs(_ keys: [JobKey], code: FailureCode, reason: String) {
        let doomed = keys.compactMap { jobs[$0] }
        for job in doomed { job.doomed = true }
        for job in doomed { failJob(job, index: Message.wholeJobIndex, code: code, reason: reason) }
    }

    /// FAILED for a fragment whose job the broker may not know (a malformed first SUBMIT).
    func failJob(client: PeerConnection, jobID: JobID, index: UInt32, code: FailureCode, reason: String) {
        if let job = jobs[JobKey(client: client.key.serial, jobID: jobID)] {
            failJob(job, index: index, code: code, reason: reason)
        } else {
            sendFailed(jobID: jobID, index: index, code: code, reason: reason, to: client)
        }
    }

    /// Removes a job. It is marked ended *first*, so nothing of it can be dispatched by what the
    /// ending itself frees (a worker's credit returning used to dispatch the job's next queued
    /// fragment before that fragment was dropped); then every fragment is released, and only
    /// then do the freed workers get other work.
    func end(_ job: Job, remember: Bool = true) {
        guard !job.ended else { return }
        job.ended = true
        var freed: [PeerConnection] = []
        for fragment in job.live.values {
            job.service.dropQueued(fragment)
            fragment.body = nil
            release(cost: fragment.cost, for: job.owner)
            job.service.clientDeliveryEnded(fragment)
            if fragment.deliveryID != 0 {
                if let worker = fragment.worker {
                    finishDelivery(fragment, from: worker)
                    freed.append(worker)
                }
                deliveries[fragment.deliveryID] = nil
                fragment.deliveryID = 0
                fragment.worker = nil
            }
        }
        job.live.removeAll()
        if remember { endedJobs.remember(job.key, connection: job.replyTo.serial, expiry: now &+ rules.endedJobMemory) }
        forget(job)
        if !freed.isEmpty { dispatch(job.service) }
        for worker in freed where worker.worker?.service !== job.service {
            if let service = worker.worker?.service { dispatch(service) }
        }
    }

    func forget(_ job: Job) {
        guard jobs[job.key] === job else { return }
        job.ended = true
        jobs[job.key] = nil
        job.replyTo.jobs.remove(job.key)
        job.owner.account.openJobs -= 1
        job.service.openJobs -= 1
        if job.replyTo.jobs.isEmpty && job.replyTo.outbox.isEmpty { activeClients[job.replyTo.serial] = nil }
        forgetIfIdle(job.service)
        checkDrained()
    }

    // MARK: results

    func done(_ result: FragmentView, body: AnyObject, from connection: PeerConnection) {
        guard let fragment = deliveries[result.tag], fragment.worker === connection else {
            counters.strayResults += 1
            log.note(.strayResult, key: connection.key.logID, level: .info, "dropped a result for an unknown delivery", now: now,
                     ["worker": "\(connection.key.fingerprint)", "delivery": "\(result.tag)"])
            return
        }
        let job = fragment.job
        let header = result.header
        guard header.jobID == job.key.jobID, header.index == fragment.index, header.count == job.count,
              result.service.bytes.elementsEqual(job.service.name.utf8) else {
            counters.strayResults += 1
            log.note(.mismatchedResult, key: connection.key.logID, level: .warning, "dropped a result that does not match its delivery", now: now,
                     ["worker": "\(connection.key.fingerprint)", "delivery": "\(result.tag)"])
            attemptFailed(fragment, code: .malformed, reason: "the worker's result did not match its delivery")
            return
        }
        finishDelivery(fragment, from: connection)
        job.live[fragment.index] = nil
        fragment.body = nil
        release(cost: fragment.cost, for: job.owner)
        let firstTime = job.markDone(fragment.index)
        if !firstTime && !job.rerunAllowed {
            // Cannot happen: a done index is not accepted again without a rerun.
            counters.duplicateSubmits += 1
        }
        if job.doneAhead.count > rules.maxDoneAhead {
            failJob(job, index: fragment.index, code: .malformed,
                    reason: "results completed more than \(rules.maxDoneAhead) fragments ahead of the first missing one")
            dispatch(connection.worker?.service ?? job.service)
            return
        }
        let cost = BrokerRules.cost(ofBody: Int(header.length))
        deliverResult(body, tag: connection.key.publicKey.tag, cost: cost, job: job)
        recordResultLatency(fragment)
        if job.isComplete, !job.ended {
            counters.completedJobs += 1
            logJobEnd(job, outcome: "completed", code: nil)
            // A completed job is not remembered (C30).
            forget(job)
        }
        if let service = connection.worker?.service { dispatch(service) }
        if draining { checkDrained() }
    }

    /// Sends a RESULT, or keeps it in the client's outbox when its pipe is full; while an outbox
    /// holds anything, the client's work is not dispatched (C36).
    func deliverResult(_ body: AnyObject, tag: UInt64, cost: Int, job: Job) {
        let client = job.replyTo
        if client.speaksMDP { return deliverMDPResult(body, job: job) }
        if client.outbox.isEmpty {
            switch sink.forward(body, as: .result, tag: tag, keep: false, to: client.address) {
            case .sent:
                counters.results += 1
                return
            case .gone:
                log.note(.clientGone, key: client.key.logID, level: .warning, "client unreachable; dropping its jobs", now: now,
                         ["client": "\(client.key.fingerprint)"])
                counters.droppedConnections += 1
                remove(client, reason: "unreachable", charge: false)
                return
            case .full:
                counters.pipeFull += 1
            }
        }
        enqueueOutbox(.result(body: body, tag: tag, cost: cost), to: client)
    }

    func enqueueOutbox(_ item: OutboxItem, to client: PeerConnection) {
        guard client.outbox.count < rules.maxOutbox else {
            // A slow consumer (NATS's term): it sends faster than it reads what it is answered.
            // Its replies are not kept without bound; it is dropped like a vanished client.
            counters.slowClients += 1
            log.note(.clientGone, key: client.key.logID, level: .warning, "client does not read its replies; dropping it", now: now,
                     ["key": "\(client.key.fingerprint)", "name": "\(client.key.name)", "waiting": "\(client.outbox.count)"])
            sendAway(client, reason: "more than \(rules.maxOutbox) replies unread", charge: false)
            return
        }
        if client.outbox.isEmpty {
            client.outboxStuckSince = now
            waitingOutboxes[client.serial] = client
        }
        client.outbox.append(item)
        client.key.account.outboxItems += 1
        if case .result(_, _, let cost) = item { hold(cost: cost, for: client.key) }
        activeClients[client.serial] = client
    }

    /// Sends what waits in a client's outbox, in order, until its pipe is full again. Returns
    /// true when the outbox emptied (its work may be dispatched again).
    @discardableResult
    func flushOutbox(_ client: PeerConnection) -> Bool {
        var moved = false
        while let item = client.outbox.first {
            let outcome: SendOutcome
            switch item {
            case .result(let body, let tag, _): outcome = sink.forward(body, as: .result, tag: tag, keep: false, to: client.address)
            case .control(let bytes): outcome = sink.send(bytes, to: client.address)
            }
            switch outcome {
            case .full:
                if moved { client.outboxStuckSince = now }
                return false
            case .gone:
                counters.droppedConnections += 1
                remove(client, reason: "unreachable", charge: false)
                return false
            case .sent:
                moved = true
                client.outbox.removeFirst()
                client.key.account.outboxItems -= 1
                if case .result(_, _, let cost) = item {
                    counters.results += 1
                    release(cost: cost, for: client.key)
                }
            }
        }
        client.outboxStuckSince = 0
        waitingOutboxes[client.serial] = nil
        if client.jobs.isEmpty { activeClients[client.serial] = nil }
        // Its queued work may go again.
        if !client.key.account.isBlocked {
            for jobKey in client.jobs { if let job = jobs[jobKey] { dispatch(job.service) } }
        }
        return true
    }

    func dropOutbox(_ client: PeerConnection) {
        waitingOutboxes[client.serial] = nil
        while let item = client.outbox.popFirst() {
            client.key.account.outboxItems -= 1
            if case .result(_, _, let cost) = item { release(cost: cost, for: client.key) }
        }
    }

    // MARK: sending to clients

    /// Sends a control message to a client, through its outbox when one is waiting or its pipe is
    /// full: a FAILED is never lost to a full pipe.
    func sendControl(_ bytes: [UInt8], to client: PeerConnection) {
        if client.outbox.isEmpty {
            switch sink.send(bytes, to: client.address) {
            case .sent: return
            case .gone:
                counters.droppedConnections += 1
                remove(client, reason: "unreachable", charge: false)
                return
            case .full:
                counters.pipeFull += 1
            }
        }
        // Control messages are small; a client that never reads is dropped after the slow-client
        // timeout, and the budget's share bounds the results that can make one wait.
        enqueueOutbox(.control(bytes), to: client)
    }

    func sendFailed(jobID: JobID, index: UInt32, code: FailureCode, reason: String, to client: PeerConnection) {
        if client.speaksMDP { return mdpNoReply(client, "FAILED \(code.rawValue): \(reason)") }
        sendControl(ControlMessage.failed(jobID: jobID, index: index, code: code, reason: Reason.truncated(reason)).encoded(), to: client)
    }

    func sendBusy(jobID: JobID, index: UInt32, to client: PeerConnection) {
        counters.busy += 1
        if client.speaksMDP { return mdpNoReply(client, "BUSY: the byte budget or a limit is full") }
        sendControl(ControlMessage.busy(jobID: jobID, index: index, retryAfterMilliseconds: rules.busyRetryAfterMilliseconds).encoded(), to: client)
    }

    // MARK: mmi

    /// Service names joined by commas, as many as fit in `limit` bytes (and 64 KiB), sorted.
    static func serviceList(_ names: [String], limit: Int) -> String {
        var text = ""
        for name in names.sorted() {
            let needed = text.utf8.count + (text.isEmpty ? 0 : 1) + name.utf8.count
            guard needed <= min(limit, 64 << 10) else { break }
            text += text.isEmpty ? name : "," + name
        }
        return text
    }

    /// `mmi.service` (RFC 8) as a one-fragment job: a RESULT whose body is the status code;
    /// `mmi.workers` (C23) answers the number of worker keys serving the service named in the body.
    private func answerMMI(_ fragment: FragmentView, service serviceName: String, to client: PeerConnection) {
        let header = fragment.header
        guard header.count == 1 else {
            sendFailed(jobID: header.jobID, index: header.index, code: .malformed, reason: "mmi requests are one fragment", to: client)
            return
        }
        var code = "501"
        let name = String(decoding: fragment.body, as: UTF8.self)
        if serviceName == "mmi.service" {
            code = (services[name]?.workers.isEmpty == false) ? "200" : "404"
        } else if serviceName == "mmi.workers" {
            code = "\(services[name]?.workers.count ?? 0)"
        } else if serviceName == "mmi.services" {
            // C46: the services with a worker now, sorted, comma-separated, cut to what one
            // result may carry (a client names them when its job failed 404).
            code = Self.serviceList(services.values.filter { !$0.workers.isEmpty }.map(\.name), limit: limits.maxFragment)
        } else if serviceName == "mmi.limits" {
            // C47: what a client must know before it sends (a fragment over max-fragment makes
            // libzmq drop the connection, so the client could not even be told 413).
            code = "max-fragment=\(limits.maxFragment)"
        } else if serviceName == "mmi.status" {
            code = statusReport(for: client.key)
        }
        let body = Array(code.utf8)
        let result = FragmentHeader(jobID: header.jobID, index: 0, count: 1, offset: 0, totalLength: 0,
                                    length: UInt32(body.count), digest: SHA256.hash(body))
        let service = (try? ServiceName(validating: serviceName)) ?? "mmi.service"
        sendControl(Fragment.encode(command: .result, tag: 0, service: service, header: result, body: body), to: client)
    }
}
