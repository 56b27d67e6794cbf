internal import CZeroMQ
import DequeModule
import Logging
import SMQProtocol

extension BrokerEngine {
    // MARK: clients

    func submit(_ fragment: FragmentView, _ message: ZMQMessage, from client: Connection) {
        let header = fragment.header
        let serviceName = fragment.service.description
        let jobKey = JobKey(client: client.key.serial, jobID: header.jobID)
        if draining {
            send(Wire.failed(jobID: header.jobID, index: header.index, code: .draining, reason: "the broker is draining; submit again later"), to: client)
            return
        }
        if let ended = endedJobs[jobKey] {
            guard ended.connection != client.id else {
                send(Wire.failed(jobID: header.jobID, index: header.index, code: .cancelled, reason: "the job has ended"), to: client)
                return
            }
            // The same key on a new connection: it reconnected and resubmits what it lacks.
            endedJobs[jobKey] = nil
        }
        if let allowed = client.key.entry.services, !allowed.contains(serviceName) {
            statistics.forbidden += 1
            send(Wire.failed(jobID: header.jobID, index: header.index, code: .forbidden,
                             reason: "key \(client.key.fingerprint) may not submit to service '\(serviceName)'"), to: client)
            return
        }
        let job: JobState
        if let existing = jobs[jobKey] {
            job = existing
            guard job.service.name == serviceName, job.count == header.count, job.totalLength == header.totalLength else {
                failJob(job, index: header.index, code: .malformed,
                        reason: "fragment \(header.index) disagrees with the job's service, count or total length")
                return
            }
            if job.replyTo !== client {
                // The client reconnected: results go to the new connection, and results already
                // sent may have been lost with the old one, so done fragments may run again.
                job.replyTo.jobs.remove(jobKey)
                job.replyTo = client
                client.jobs.insert(jobKey)
                job.rerunAllowed = true
            }
        } else {
            if serviceName.hasPrefix("mmi.") {
                answerMMI(fragment, to: client)
                return
            }
            guard jobsPerClient[client.key.serial, default: 0] < configuration.maxJobsPerClient else {
                statistics.busy += 1
                send(Wire.busy(jobID: header.jobID, index: header.index, retryAfterMs: UInt32(configuration.busyRetryAfter.milliseconds)), to: client)
                return
            }
            job = JobState(key: jobKey, service: serviceState(serviceName), count: header.count,
                           totalLength: header.totalLength, replyTo: client)
            jobs[jobKey] = job
            jobsPerClient[client.key.serial, default: 0] += 1
            client.jobs.insert(jobKey)
        }
        if job.rerunAllowed, job.done.contains(header.index) {
            job.done.remove(header.index)
            job.accepted.remove(header.index)
            statistics.reruns += 1
        }
        if job.accepted.contains(header.index) {
            statistics.duplicateSubmits += 1
            logger.debug("duplicate SUBMIT ignored", metadata: ["key": "\(client.key.fingerprint)", "index": "\(header.index)"])
            return
        }
        let length = Int(header.length)
        guard bytesHeld + length <= configuration.byteBudget else {
            statistics.busy += 1
            send(Wire.busy(jobID: header.jobID, index: header.index, retryAfterMs: UInt32(configuration.busyRetryAfter.milliseconds)), to: client)
            if job.live.isEmpty && job.accepted.count == 0 { forget(job) }
            return
        }
        job.accepted.insert(header.index)
        bytesHeld += length
        statistics.peakBytesHeld = max(statistics.peakBytesHeld, bytesHeld)
        statistics.submitted += 1
        let state = FragmentState(job: job, index: header.index, message: message, bodyLength: length, now: Self.now)
        job.live[header.index] = state
        job.service.enqueue(state, client: client.key.serial)
        dispatch(job.service)
    }

    func cancel(_ jobID: JobID, from client: Connection) {
        let key = JobKey(client: client.key.serial, jobID: jobID)
        guard let job = jobs[key] else { return }
        failJob(job, index: Message.wholeJobIndex, code: .cancelled, reason: "cancelled by the client")
    }

    /// Ends a job because of one fragment (or, with `.wholeJob`, as a whole): its queued
    /// fragments are dropped, its late results ignored, one FAILED is sent.
    func failJob(_ job: JobState, index: UInt32, code: FailureCode, reason: String) {
        statistics.failedJobs += 1
        logger.notice("job failed", metadata: [
            "client": "\(job.replyTo.key.fingerprint)", "job": "\(job.key.jobID)", "index": "\(index)",
            "code": "\(code.rawValue)", "reason": "\(reason)",
        ])
        send(Wire.failed(jobID: job.key.jobID, index: index, code: code, reason: reason), to: job.replyTo)
        end(job)
    }

    /// FAILED for a fragment whose job the broker may not know (a malformed first SUBMIT).
    func failJob(client: Connection, jobID: JobID, index: UInt32, code: FailureCode, reason: String) {
        if let job = jobs[JobKey(client: client.key.serial, jobID: jobID)] {
            failJob(job, index: index, code: code, reason: reason)
        } else {
            send(Wire.failed(jobID: jobID, index: index, code: code, reason: reason), to: client)
        }
    }

    /// Removes a job: drops what is queued, forgets what is in flight (late results are ignored
    /// because their delivery ids are gone), remembers the id for a minute (unless the client is
    /// gone: a reconnecting client may then submit it anew).
    func end(_ job: JobState, remember: Bool = true) {
        for fragment in job.live.values {
            fragment.dropped = true
            if fragment.queued {
                // Left in its deque and skipped there; no longer counted.
                fragment.queued = false
                job.service.queuedCount -= 1
            }
            release(fragment)
            if fragment.deliveryID != 0 {
                deliveries[fragment.deliveryID] = nil
                if let worker = fragment.worker { workerFinished(worker, delivery: fragment.deliveryID, suspect: fragment.wasSuspectWhenSent) }
            }
        }
        job.live.removeAll()
        if remember { endedJobs[job.key] = (Self.now &+ 60_000_000_000, job.replyTo.id) }
        forget(job)
    }

    private func forget(_ job: JobState) {
        jobs[job.key] = nil
        job.replyTo.jobs.remove(job.key)
        jobsPerClient[job.key.client, default: 1] -= 1
        if jobsPerClient[job.key.client] == 0 { jobsPerClient[job.key.client] = nil }
        if draining { checkDrained() }
    }

    func release(_ fragment: FragmentState) {
        bytesHeld -= fragment.bodyLength
    }

    // MARK: dispatch

    /// Hands queued fragments to workers with free credit, in scheduler order.
    func dispatch(_ service: ServiceState) {
        while service.queuedCount > 0 {
            guard let serial = service.scheduler.pick() else { return }
            guard let worker = service.workers[serial], let connection = worker.pickConnection() else {
                // The scheduler should only hold keys with credit; one without a usable connection leaves it.
                service.scheduler.suspend(serial)
                service.workers[serial]?.suspended = true
                continue
            }
            // queuedCount counts live fragments only; nil here means only suspects are left and
            // this worker already holds one (§4.1): it waits for its suspect to resolve.
            guard let fragment = service.dequeue(for: connection) else {
                guard service.hasOnlySuspects else {
                    // queuedCount and the deques disagree: a bug, but never a stall.
                    logger.error("queue count out of step; resetting", metadata: ["service": "\(service.name)", "count": "\(service.queuedCount)"])
                    service.queuedCount = 0
                    return
                }
                service.scheduler.suspend(serial)
                worker.suspended = true
                parkedForSuspects.append((service, serial))
                continue
            }
            deliver(fragment, to: connection, worker: worker, service: service)
        }
    }

    private func deliver(_ fragment: FragmentState, to connection: Connection, worker: ServiceWorker, service: ServiceState) {
        let delivery = nextDeliveryID()
        fragment.deliveryID = delivery
        fragment.worker = connection
        fragment.attempts += 1
        fragment.wasSuspectWhenSent = fragment.suspect
        if fragment.suspect { connection.suspects += 1 }
        Wire.rewrite(fragment.message, command: .work, tag: delivery)
        deliveries[delivery] = fragment
        connection.deliveries.insert(delivery)
        connection.inFlight += 1
        worker.inFlight += 1
        if !worker.hasCredit {
            service.scheduler.suspend(worker.key.serial)
            worker.suspended = true
        }
        statistics.dispatched += 1
        if !send(message: fragment.message, to: connection) {
            // The worker's pipe is gone or full: treat it like a lost delivery.
            logger.warning("could not send WORK; requeueing", metadata: ["worker": "\(connection.key.fingerprint)"])
            remove(connection, reason: "unreachable")
        }
    }

    /// A worker's delivery ended (result, reject, job ended): return its credit.
    func workerFinished(_ connection: Connection, delivery: UInt64, suspect: Bool = false) {
        guard connection.deliveries.remove(delivery) != nil else { return }
        connection.inFlight -= 1
        if suspect { connection.suspects -= 1 }
        var resumed: ServiceState?
        if let service = connection.service, let worker = service.workers[connection.key.serial] {
            worker.inFlight -= 1
            if worker.suspended && worker.hasCredit && !connection.key.revoked {
                worker.suspended = false
                service.scheduler.resume(worker.key.serial)
                resumed = service
            }
        }
        // Credit first, then the workers waiting for a suspect to resolve, then new work: a
        // worker that got credit back must be offered work now, whatever path freed it (a
        // result, a reject, a job that ended under it).
        if suspect { unparkSuspectWaiters() }
        if let resumed { dispatch(resumed) }
    }

    /// A suspect resolved somewhere: workers parked because they held one may take one again.
    func unparkSuspectWaiters() {
        guard !parkedForSuspects.isEmpty else { return }
        let parked = parkedForSuspects
        parkedForSuspects.removeAll()
        for (service, serial) in parked {
            guard let worker = service.workers[serial], worker.suspended, worker.hasCredit else { continue }
            worker.suspended = false
            service.scheduler.resume(serial)
            dispatch(service)
        }
    }

    // MARK: workers

    func ready(_ connection: Connection, credit: UInt32, heartbeatMs: UInt32, service name: String) {
        guard connection.service == nil else {
            sendDisconnect(to: connection.address, reason: "a connection serves one service; READY was sent twice")
            remove(connection, reason: "second READY")
            return
        }
        guard credit >= 1, (100...60_000).contains(heartbeatMs) else {
            sendDisconnect(to: connection.address, reason: "READY needs credit ≥ 1 and heartbeat 100–60000 ms")
            remove(connection, reason: "bad READY")
            return
        }
        if name.hasPrefix("mmi.") {
            sendDisconnect(to: connection.address, reason: "mmi.* services are the broker's own")
            remove(connection, reason: "mmi service")
            return
        }
        if let allowed = connection.key.entry.services, !allowed.contains(name) {
            statistics.forbidden += 1
            sendDisconnect(to: connection.address, reason: "key \(connection.key.fingerprint) may not serve '\(name)'")
            remove(connection, reason: "service not allowed")
            return
        }
        let service = serviceState(name)
        connection.service = service
        connection.askedCredit = Int(min(credit, 100_000))
        connection.heartbeatInterval = UInt64(heartbeatMs) * 1_000_000
        connection.lastHeartbeatSent = Self.now
        let worker: ServiceWorker
        let weight = configuration.strategy == .roundRobin ? 1 : connection.key.entry.weight
        if let existing = service.workers[connection.key.serial] {
            worker = existing
        } else {
            worker = ServiceWorker(key: connection.key)
            service.workers[connection.key.serial] = worker
            service.scheduler.add(connection.key.serial, weight: weight)
            worker.suspended = false
        }
        worker.connections.append(connection)
        worker.recomputeCap(weight: connection.key.entry.weight, baseWindow: configuration.baseWindow)
        if worker.suspended && worker.hasCredit {
            worker.suspended = false
            service.scheduler.resume(connection.key.serial)
        }
        logger.info("worker ready", metadata: [
            "key": "\(connection.key.fingerprint)", "name": "\(connection.key.name)", "service": "\(name)",
            "weight": "\(connection.key.entry.weight)", "credit": "\(worker.cap)",
        ])
        dispatch(service)
    }

    func raiseCredit(_ connection: Connection, to credit: UInt32) {
        guard let service = connection.service, let worker = service.workers[connection.key.serial] else { return }
        connection.askedCredit = max(connection.askedCredit, Int(min(credit, 100_000)))
        worker.recomputeCap(weight: connection.key.entry.weight, baseWindow: configuration.baseWindow)
        if worker.suspended && worker.hasCredit {
            worker.suspended = false
            service.scheduler.resume(connection.key.serial)
        }
        dispatch(service)
    }

    func weightChanged(_ key: KeyState) {
        let weight = configuration.strategy == .roundRobin ? 1 : key.entry.weight
        for service in services.values {
            guard let worker = service.workers[key.serial] else { continue }
            service.scheduler.setWeight(key.serial, weight: weight)
            worker.recomputeCap(weight: key.entry.weight, baseWindow: configuration.baseWindow)
            dispatch(service)
        }
    }

    func done(_ result: FragmentView, _ message: ZMQMessage, from connection: Connection) {
        guard let fragment = deliveries[result.tag], fragment.worker === connection else {
            statistics.strayResults += 1
            logger.info("dropped a result for an unknown delivery", metadata: ["worker": "\(connection.key.fingerprint)", "delivery": "\(result.tag)"])
            return
        }
        let job = fragment.job
        let header = result.header
        guard header.jobID == job.key.jobID, header.index == fragment.index, header.count == job.count,
              result.service.description == job.service.name else {
            statistics.strayResults += 1
            logger.warning("dropped a result that does not match its delivery", metadata: ["worker": "\(connection.key.fingerprint)", "delivery": "\(result.tag)"])
            attemptFailed(fragment, connection: connection, code: .malformed, reason: "the worker's result did not match its delivery")
            return
        }
        deliveries[result.tag] = nil
        workerFinished(connection, delivery: result.tag, suspect: fragment.wasSuspectWhenSent)
        job.live[fragment.index] = nil
        release(fragment)
        Wire.rewrite(message, command: .result, tag: connection.key.publicKey.tag)
        let sentMessage = message
        if !sendKept(sentMessage, to: job.replyTo) {
            logger.warning("client unreachable; dropping its job", metadata: ["client": "\(job.replyTo.key.fingerprint)"])
            end(job, remember: false)
        } else {
            statistics.results += 1
            job.done.insert(fragment.index)
            if job.done.count == Int(job.count) {
                statistics.completedJobs += 1
                // A completed job is not remembered: at tens of thousands of one-fragment jobs a
                // second, a minute of ids was 100 MiB (PROTOCOL.md C30).
                jobs[job.key] = nil
                job.replyTo.jobs.remove(job.key)
                jobsPerClient[job.key.client, default: 1] -= 1
                if jobsPerClient[job.key.client] == 0 { jobsPerClient[job.key.client] = nil }
                if draining { checkDrained() }
            }
        }
        if let service = connection.service { dispatch(service) }
    }

    /// Sends a received message on, consuming it (no copy).
    private func sendKept(_ message: ZMQMessage, to connection: Connection) -> Bool {
        do {
            guard try server.socket.send(connection.address, more: true) else { return false }
            return try server.socket.send(message)
        } catch {
            return false
        }
    }

    /// A DONE that failed a check (§2.2) where the delivery could be read: a failed attempt.
    func workerSentBadResult(_ connection: Connection, tag: UInt64?, code: FailureCode, reason: String) {
        guard let tag, let fragment = deliveries[tag], fragment.worker === connection else { return }
        attemptFailed(fragment, connection: connection, code: code, reason: reason)
    }

    func workerRejected(_ connection: Connection, delivery: UInt64, code: FailureCode, retryable: Bool, reason: String) {
        guard let fragment = deliveries[delivery], fragment.worker === connection else {
            statistics.strayResults += 1
            logger.info("dropped a REJECT for an unknown delivery", metadata: ["worker": "\(connection.key.fingerprint)", "delivery": "\(delivery)"])
            return
        }
        if retryable {
            attemptFailed(fragment, connection: connection, code: .retriesExhausted, reason: reason)
        } else {
            deliveries[delivery] = nil
            workerFinished(connection, delivery: delivery, suspect: fragment.wasSuspectWhenSent)
            let passed = FailureCode.passedThrough(fromWorker: code)
            failJob(fragment.job, index: fragment.index, code: passed, reason: "worker \(connection.key.name): \(reason)")
            if let service = connection.service { dispatch(service) }
        }
    }

    /// One delivery of a fragment failed: requeue it at the front, or fail its job once it has
    /// been charged max-deliveries times.
    func attemptFailed(_ fragment: FragmentState, connection: Connection?, code: FailureCode, reason: String,
                       markSuspect: Bool = false) {
        if fragment.deliveryID != 0 {
            deliveries[fragment.deliveryID] = nil
            if let connection { workerFinished(connection, delivery: fragment.deliveryID, suspect: fragment.wasSuspectWhenSent) }
        }
        fragment.deliveryID = 0
        fragment.worker = nil
        if markSuspect { fragment.suspect = true }
        if fragment.attempts >= configuration.maxDeliveries {
            failJob(fragment.job, index: fragment.index, code: .retriesExhausted,
                    reason: "fragment \(fragment.index) failed \(fragment.attempts) deliveries (last: \(reason))")
            return
        }
        statistics.requeued += 1
        fragment.enqueuedAt = Self.now
        fragment.job.service.enqueue(fragment, client: fragment.job.key.client, front: true)
        dispatch(fragment.job.service)
    }

    /// A connection is gone (DISCONNECT, dead, revoked, unreachable): requeue what it held,
    /// drop a client's queued work and jobs.
    func remove(_ connection: Connection, reason: String) {
        guard connections.removeValue(forKey: connection.id) != nil else { return }
        connection.key.connections[connection.id] = nil
        if let service = connection.service, let worker = service.workers[connection.key.serial] {
            worker.connections.removeAll { $0 === connection }
            worker.recomputeCap(weight: connection.key.entry.weight, baseWindow: configuration.baseWindow)
            if worker.connections.isEmpty {
                service.workers[connection.key.serial] = nil
                service.scheduler.remove(connection.key.serial)
            }
            // Every fragment the worker held is charged, and becomes a suspect (§4.1).
            for delivery in connection.deliveries {
                guard let fragment = deliveries[delivery] else { continue }
                attemptFailed(fragment, connection: connection, code: .retriesExhausted, reason: "worker \(connection.key.name) \(reason)",
                              markSuspect: true)
            }
            connection.service = nil
        }
        for jobKey in connection.jobs {
            guard let job = jobs[jobKey] else { continue }
            // Another connection of the same key may carry on with the job.
            if let other = connection.key.connections.values.first(where: { !$0.isWorker }) {
                job.replyTo = other
                other.jobs.insert(jobKey)
            } else {
                statistics.abandonedJobs += 1
                end(job, remember: false)
            }
        }
        connection.jobs.removeAll()
    }

    // MARK: mmi

    /// `mmi.service` (RFC 8) as a one-fragment job: a RESULT whose body is the status code;
    /// `mmi.workers` (ours) answers the number of worker keys serving the service named in the body.
    private func answerMMI(_ fragment: FragmentView, to client: Connection) {
        let header = fragment.header
        guard header.count == 1 else {
            send(Wire.failed(jobID: header.jobID, index: header.index, code: .malformed, reason: "mmi requests are one fragment"), to: client)
            return
        }
        var code = "501"
        let serviceName = fragment.service.description
        let name = String(decoding: fragment.body, as: UTF8.self)
        if serviceName == "mmi.service" {
            code = (services[name]?.workers.isEmpty == false) ? "200" : "404"
        } else if serviceName == "mmi.workers" {
            // SecureMQ's extension: how many worker keys serve the service now.
            code = "\(services[name]?.workers.count ?? 0)"
        }
        send(Wire.mmiResult(jobID: header.jobID, service: serviceName, body: Array(code.utf8)), to: client)
    }

    // MARK: timers

    func tick() {
        let now = Self.now
        checkAllowlist()
        // Heartbeats and dead workers.
        for connection in Array(connections.values) {
            if connection.isWorker {
                let interval = connection.heartbeatInterval
                if now &- connection.lastSeen > interval &* UInt64(configuration.liveness) {
                    statistics.deadWorkers += 1
                    logger.warning("worker silent; presumed dead", metadata: [
                        "key": "\(connection.key.fingerprint)", "name": "\(connection.key.name)", "inFlight": "\(connection.inFlight)",
                    ])
                    remove(connection, reason: "went silent")
                    continue
                }
                if now &- connection.lastHeartbeatSent >= interval {
                    connection.lastHeartbeatSent = now
                    send(Wire.heartbeat(), to: connection)
                }
            } else if !connection.jobs.isEmpty,
                      now &- connection.lastSeen > configuration.heartbeatInterval.nanoseconds &* UInt64(configuration.liveness) {
                logger.warning("client silent; dropping its jobs", metadata: ["key": "\(connection.key.fingerprint)", "name": "\(connection.key.name)"])
                remove(connection, reason: "went silent")
            }
        }
        // Fragments waiting for a service that has no worker.
        let timeout = configuration.serviceTimeout.nanoseconds
        for service in services.values where service.workers.isEmpty && service.queuedCount > 0 {
            while let oldest = service.oldestQueued(), now &- oldest.enqueuedAt > timeout {
                failJob(oldest.job, index: oldest.index, code: .noWorker,
                        reason: "no worker serves '\(service.name)' (waited \(configuration.serviceTimeout))")
            }
        }
        if !endedJobs.isEmpty, now &- lastEndedPrune >= 1_000_000_000 {
            lastEndedPrune = now
            endedJobs = endedJobs.filter { $0.value.expiry > now }
        }
        // A safety net: every path that frees credit dispatches, but work must never wait on a
        // path that was missed.
        for service in services.values where service.queuedCount > 0 && service.scheduler.eligibleCount > 0 {
            dispatch(service)
        }
    }

    // MARK: drain

    func startDrain() {
        draining = true
        checkDrained()
    }

    /// Drained: nothing in flight and nothing queued (jobs whose client has not sent every
    /// fragment stay open; their next SUBMIT gets 503).
    func checkDrained() {
        guard draining, deliveries.isEmpty, services.values.allSatisfy({ $0.queuedCount == 0 }) else { return }
        let waiters = drainWaiters
        drainWaiters.removeAll()
        for waiter in waiters { waiter.resume() }
    }
}
