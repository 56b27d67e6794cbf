import SMQKeys
import Logging
import SMQProtocol

/// Workers and credit: registration, dispatch in scheduler order, the end of each delivery
/// (result, reject, failure), charges and suspects.
extension BrokerCore {
    func ready(_ connection: PeerConnection, credit: UInt32, heartbeatMs: UInt32, service name: String, mdp: Bool = false) {
        guard connection.worker == nil else {
            counters.readyRefused += 1
            sendAway(connection, reason: "a connection serves one service; READY was sent twice", charge: true)
            return
        }
        guard credit >= 1, ProtocolLimits.heartbeatMilliseconds.contains(heartbeatMs) else {
            counters.readyRefused += 1
            sendAway(connection, reason: "READY needs credit ≥ 1 and heartbeat 100–60000 ms", charge: true)
            return
        }
        if name.hasPrefix("mmi.") {
            counters.readyRefused += 1
            sendAway(connection, reason: "mmi.* services are the broker's own", charge: true)
            return
        }
        if !connection.key.allows(service: name) {
            counters.forbidden += 1
            counters.readyRefused += 1
            // Refused READYs were not logged (issue 13); rate-limited per key like every peer line.
            log.note(.forbidden, key: connection.key.logID, level: .warning, "refused READY: service not allowed for this key", now: now,
                     ["key": "\(connection.key.fingerprint)", "name": "\(connection.key.name)", "service": "\(PeerText.escaped(name))"])
            sendAway(connection, reason: "key \(connection.key.fingerprint) may not serve '\(name)'", charge: true)
            return
        }
        let service = serviceQueue(name)
        let state = WorkerConnectionState(service: service, askedCredit: Int(min(credit, 100_000)),
                                          heartbeatInterval: UInt64(heartbeatMs) * 1_000_000, now: now)
        state.mdp = mdp
        connection.worker = state
        activeWorkers[connection.serial] = connection
        activeClients[connection.serial] = nil
        let slot = service.addWorker(connection, weight: schedulerWeight(connection.key), baseWindow: rules.baseWindow)
        log.note(.workerReady, key: connection.key.logID, level: .info, "worker ready", now: now, [
            "key": "\(connection.key.fingerprint)", "name": "\(connection.key.name)", "service": "\(name)",
            "weight": "\(connection.key.entry.weight)", "credit": "\(slot.cap)",
        ])
        dispatch(service)
    }

    func raiseCredit(_ connection: PeerConnection, to credit: UInt32) {
        guard let state = connection.worker else { return }
        state.askedCredit = max(state.askedCredit, Int(min(credit, 100_000)))
        state.service.creditChanged(connection.key, baseWindow: rules.baseWindow)
        dispatch(state.service)
    }

    // MARK: dispatch

    /// Hands queued fragments to workers with free credit, in scheduler order. Re-entrant calls
    /// (a send that finds a worker gone requeues its work) run after the current pass.
    func dispatch(_ service: ServiceQueue) {
        guard !service.dispatching else {
            service.needsDispatch = true
            return
        }
        service.dispatching = true
        repeat {
            service.needsDispatch = false
            var gone: [PeerConnection] = []
            // A pick moves its key's deadline on: pick only when some fragment may go (not when
            // every client with queued work waits for its outbox), or the shares drift.
            while service.queuedCount > 0, service.hasDispatchableWork, let (slot, connection) = service.pickWorker() {
                guard let fragment = service.dequeue(for: slot, connection: connection) else {
                    service.passOver(slot)
                    continue
                }
                if fragment.deadline != 0, now >= fragment.deadline {
                    // C45: a fragment whose deadline passed is dropped instead of dispatched.
                    counters.deadlineExceeded += 1
                    failJob(fragment.job, index: fragment.index, code: .deadlineExceeded,
                            reason: "the job's deadline passed before fragment \(fragment.index) was dispatched (queued \((now &- fragment.enqueuedAt) / 1_000_000) ms)")
                    continue
                }
                if !deliver(fragment, to: connection, service: service) { gone.append(connection) }
            }
            service.endPass()
            for connection in gone {
                counters.droppedConnections += 1
                log.note(.workerGone, key: connection.key.logID, level: .warning, "could not send WORK; worker gone", now: now,
                         ["worker": "\(connection.key.fingerprint)"])
                service.dispatching = false
                remove(connection, reason: "unreachable", charge: true)
                service.dispatching = true
            }
        } while service.needsDispatch
        service.dispatching = false
    }

    /// Sends one WORK. A full pipe keeps it, in flight, in the connection's pending queue (so
    /// the scheduler's picks stand); it goes as the pipe drains. Returns false when the worker's
    /// connection is gone (the caller removes it after the pass, which requeues the fragment).
    private func deliver(_ fragment: HeldFragment, to connection: PeerConnection, service: ServiceQueue) -> Bool {
        guard let state = connection.worker, let body = fragment.body, !fragment.isDead else { return true }
        let delivery = nextDeliveryID()
        var outcome = SendOutcome.full
        if state.pending.isEmpty {
            if fragment.deadline != 0, connection.worker?.mdp != true {
                // C45: the worker learns the time left just before the WORK (advisory: a WORK
                // that waits for a full pipe goes without it; an MDP worker has no such command).
                let left = UInt32(clamping: (fragment.deadline &- min(now, fragment.deadline)) / 1_000_000)
                _ = sink.send(ControlMessage.deadline(deliveryID: delivery, timeLeftMilliseconds: max(1, left)).encoded(), to: connection.address)
            }
            outcome = sendWork(fragment, body: body, delivery: delivery, to: connection)
        }
        fragment.deliveryID = delivery
        fragment.worker = connection
        fragment.sentAt = now
        if fragment.attempts == 0 { recordDispatchLatency(fragment) }
        fragment.attempts += 1
        fragment.wasSuspectWhenSent = fragment.suspect
        if fragment.suspect { state.suspects += 1 }
        deliveries[delivery] = fragment
        state.deliveries.insert(delivery)
        service.inFlightChanged(connection, by: 1)
        fragment.job.service.clientDelivered(fragment)
        counters.dispatched += 1
        switch outcome {
        case .sent:
            return true
        case .full:
            counters.pipeFull += 1
            state.pending.append((fragment, delivery))
            waitingWorkers[connection.serial] = connection
            return true
        case .gone:
            // Out of the picks for the rest of this pass.
            state.blocked = true
            service.refresh(connection.key)
            return false
        }
    }

    /// Sends the deliveries that waited for a worker's pipe, in order, skipping any whose job
    /// ended meanwhile (nothing of a cancelled job is sent).
    func flushPending(_ connection: PeerConnection) {
        guard let state = connection.worker, !connection.gone else {
            waitingWorkers[connection.serial] = nil
            return
        }
        while let (fragment, delivery) = state.pending.first {
            guard deliveries[delivery] === fragment, let body = fragment.body, !fragment.isDead else {
                state.pending.removeFirst()
                continue
            }
            switch sendWork(fragment, body: body, delivery: delivery, to: connection) {
            case .sent:
                state.pending.removeFirst()
            case .full:
                return
            case .gone:
                waitingWorkers[connection.serial] = nil
                remove(connection, reason: "unreachable", charge: true)
                return
            }
        }
        waitingWorkers[connection.serial] = nil
    }

    /// A delivery ended (result, reject, failed attempt): its worker's credit returns.
    func finishDelivery(_ fragment: HeldFragment, from connection: PeerConnection) {
        fragment.job.service.clientDeliveryEnded(fragment)
        let delivery = fragment.deliveryID
        deliveries[delivery] = nil
        fragment.deliveryID = 0
        fragment.worker = nil
        guard let state = connection.worker, state.deliveries.remove(delivery) != nil else { return }
        if !state.pending.isEmpty {
            // Never sent (its job ended or it failed first): it must not be sent later.
            state.pending.removeAll { $0.delivery == delivery }
            if state.pending.isEmpty { waitingWorkers[connection.serial] = nil }
        }
        if fragment.wasSuspectWhenSent { state.suspects -= 1 }
        state.service.inFlightChanged(connection, by: -1)
    }

    func workerRejected(_ connection: PeerConnection, delivery: UInt64, code: FailureCode, retryable: Bool, reason: String) {
        guard let fragment = deliveries[delivery], fragment.worker === connection else {
            counters.strayResults += 1
            log.note(.strayResult, key: connection.key.logID, level: .info, "dropped a REJECT for an unknown delivery", now: now,
                     ["worker": "\(connection.key.fingerprint)", "delivery": "\(delivery)"])
            return
        }
        if retryable {
            attemptFailed(fragment, code: .retriesExhausted, reason: reason)
        } else {
            finishDelivery(fragment, from: connection)
            let passed = FailureCode.passedThrough(fromWorker: code)
            failJob(fragment.job, index: fragment.index, code: passed, reason: "worker \(connection.key.name): \(reason)")
            if let service = connection.worker?.service { dispatch(service) }
        }
    }

    /// One delivery of a fragment failed: the fragment is charged and retried (first, on another
    /// key when one is free), or its job fails once it was charged max-deliveries times.
    func attemptFailed(_ fragment: HeldFragment, code: FailureCode, reason: String) {
        guard let connection = fragment.worker else { return }
        finishDelivery(fragment, from: connection)
        requeueOrFail(fragment, failedKey: connection.key.serial, reason: reason)
        if let service = connection.worker?.service, service !== fragment.job.service { dispatch(service) }
    }

    func requeueOrFail(_ fragment: HeldFragment, failedKey: Int, reason: String, cause: RequeueCause = .attemptFailed) {
        guard !fragment.isDead else { return }
        fragment.lastFailedKey = failedKey
        if fragment.attempts >= rules.maxDeliveries {
            failJob(fragment.job, index: fragment.index, code: .retriesExhausted,
                    reason: "fragment \(fragment.index) failed \(fragment.attempts) deliveries (last: \(reason))")
            return
        }
        counters.requeued += 1
        switch cause {
        case .workerGone: counters.requeuedWorkerGone += 1
        case .leaseExpired: counters.requeuedLeaseExpired += 1
        case .attemptFailed: counters.requeuedAttemptFailed += 1
        }
        fragment.job.service.enqueue(fragment, now: now, retry: true)
        dispatch(fragment.job.service)
    }

    /// A worker connection that holds work sent a message the broker cannot read: it might be
    /// answering a WORK, so it is sent away and what it held is requeued and charged (C40).
    func unreadableFromWorker(_ connection: PeerConnection) {
        counters.unreadableWorkers += 1
        sendAway(connection, reason: "an unreadable message from a worker that holds work", charge: true)
    }
}
