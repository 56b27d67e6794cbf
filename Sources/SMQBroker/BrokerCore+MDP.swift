import Logging
import SMQKeys
public import SMQProtocol

/// 7/MDP 0.1 (Majordomo) as a second adapter's events into the same policy (PROTOCOL.md §7,
/// C50–C54): admission, roles and services, budget and max-jobs, fair queues, leases and logs are
/// SMQ/1's. What differs: an MDP request is a one-fragment job whose id the broker makes, an MDP
/// worker holds credit 1 and is not expired on silence while busy, and an MDP client gets no reply
/// where SMQ/1 would send FAILED or BUSY (the reason is logged, rate-limited).
extension BrokerCore {
    /// Job ids the broker makes for MDP requests start with these 8 bytes ("MDP\0" and a mark),
    /// so they can never collide with a client's (they are scoped by the client key anyway).
    static let mdpJobMark: UInt64 = 0x4D44_5000_0000_0001

    /// A parsed 7/MDP message from a known connection (one admitted with `mdp: true`).
    ///
    /// - Parameters:
    ///   - message: The parsed message.
    ///   - body: The adapter's handle to its body frames; kept for a request (until its reply is
    ///     sent or its job ends) and for a reply (until it is sent on).
    ///   - bodyBytes: The body frames' total size (the budget counts it).
    ///   - connection: Who sent it.
    ///   - now: The time.
    public func receiveMDP(_ message: MDP.Message, body: AnyObject, bodyBytes: Int, from connection: PeerConnection, now: UInt64) {
        self.now = now
        if connection.key.revoked {
            droppedFromRevoked(connection.key)
            return
        }
        guard !connection.gone else { return }
        if !connection.speaksMDP {
            guard connection.holdsNothing else {
                receiveMDPMalformed(MDP.ParseError("a 7/MDP message on an SMQ/1 connection that holds work"), from: connection, now: now)
                return
            }
            // Nothing depends on its protocol yet (a first message that was garbage): it speaks MDP now.
            connection.speaksMDP = true
        }
        connection.lastSeen = now
        switch message {
        case .request(let service, _, let frames, let argument):
            guard allow(connection, .client, .submit) else { return }
            mdpRequest(service: service.description, frames: frames, bodyBytes: bodyBytes, mmiArgument: argument, body: body, from: connection)
        case .ready(let service):
            guard allow(connection, .worker, .ready) else { return }
            if let state = connection.worker {
                // RFC 7: a READY from a registered worker is a protocol error. It leaves alone,
                // its request requeued uncharged (it did not fail it); nobody else notices (C53).
                log.note(.roleViolation, key: connection.key.logID, level: .warning, "MDP worker sent READY twice; disconnected", now: now, [
                    "key": "\(connection.key.fingerprint)", "service": "\(state.service.name)", "again": "\(service)",
                ])
                sendAway(connection, reason: "READY was sent twice", charge: false)
                return
            }
            mdpClients[connection.serial] = nil
            ready(connection, credit: 1, heartbeatMs: UInt32(clamping: rules.heartbeatInterval / 1_000_000), service: service.description, mdp: true)
        case .reply(let delivery, _, let frames):
            guard allow(connection, .worker, .done) else { return }
            mdpReply(delivery: delivery, frames: frames, bodyBytes: bodyBytes, body: body, from: connection)
        case .heartbeat:
            break
        case .disconnect:
            log.note(.peerLeft, key: connection.key.logID, level: .info, "MDP peer left", now: now,
                     ["key": "\(connection.key.fingerprint)", "name": "\(connection.key.name)"])
            remove(connection, reason: "disconnected", charge: true)
        }
    }

    /// A message on an MDP connection that is not 7/MDP the broker accepts: logged
    /// (rate-limited), counted and dropped, like an unreadable SMQ/1 message (§2.3, C40).
    public func receiveMDPMalformed(_ error: MDP.ParseError, from connection: PeerConnection, now: UInt64) {
        receiveMalformed(ProtocolError(.truncated, value: 0), reason: "7/MDP: \(error.reason)", from: connection, now: now)
    }

    /// Whether this connection is an MDP worker (the adapter probes it with an MDP HEARTBEAT;
    /// MDP clients have no message that is safe to send unasked, so they are not probed: C54).
    public func isMDPWorker(_ connection: PeerConnection) -> Bool { connection.speaksMDP && connection.worker != nil }

    // MARK: requests

    private func mdpRequest(service name: String, frames: Int, bodyBytes: Int, mmiArgument: String?, body: AnyObject, from client: PeerConnection) {
        mdpClients[client.serial] = client
        if !client.key.allows(service: name) {
            counters.forbidden += 1
            mdpNoReply(client, "key \(client.key.fingerprint) may not submit to service '\(name)' (SMQ/1: FAILED 403)")
            return
        }
        if name.hasPrefix("mmi.") {
            answerMMI(service: name, argument: mmiArgument ?? "", to: client)
            return
        }
        if draining {
            mdpNoReply(client, "the broker is draining (SMQ/1: FAILED 503)")
            return
        }
        if frames > 1, !(services[name]?.hasMDPWorker ?? false) {
            // Several frames go only to MDP workers (C51): none now, so it would block its client's queue.
            mdpNoReply(client, "a request of \(frames) frames, and no MDP worker serves '\(name)' (SMQ/1: FAILED 404)")
            return
        }
        guard bodyBytes <= rules.maxFragment else {
            mdpNoReply(client, "a request of \(bodyBytes) bytes is larger than max-fragment \(rules.maxFragment) (SMQ/1: FAILED 413)")
            return
        }
        guard client.key.account.openJobs < rules.maxJobsPerClient else {
            counters.busy += 1
            mdpNoReply(client, "the client has \(rules.maxJobsPerClient) requests open (max-jobs; SMQ/1: BUSY)")
            return
        }
        // Each body frame is a libzmq message held: at least the fragment floor each.
        let cost = max(BrokerRules.cost(ofBody: bodyBytes), BrokerRules.fragmentFloor &* frames)
        guard admits(cost: cost, for: client.key) else {
            counters.busy += 1
            mdpNoReply(client, "the byte budget or the client's share of it is full (SMQ/1: BUSY)")
            return
        }
        let service = serviceQueue(name)
        let jobKey = JobKey(client: client.key.serial, jobID: JobID(high: Self.mdpJobMark, low: nextDeliveryID()))
        let job = Job(key: jobKey, service: service, owner: client.key, count: 1, totalLength: UInt64(bodyBytes), replyTo: client)
        jobs[jobKey] = job
        service.openJobs += 1
        client.key.account.openJobs += 1
        client.jobs.insert(jobKey)
        activeClients[client.serial] = client
        hold(cost: cost, for: client.key)
        counters.submitted += 1
        let fragment = HeldFragment(job: job, index: 0, body: body, cost: cost, now: now)
        fragment.mdpFrames = frames
        job.live[0] = fragment
        service.enqueue(fragment, now: now)
        dispatch(service)
    }

    /// RFC 8: `mmi.service` answers 200 or 404 for the service named in the body; `mmi.workers`
    /// (C23) the number of worker keys; any other `mmi.*` 501. The reply's service frame is the
    /// request's.
    private func answerMMI(service name: String, argument: String, to client: PeerConnection) {
        var code = "501"
        if name == "mmi.service" {
            code = (services[argument]?.workers.isEmpty == false) ? "200" : "404"
        } else if name == "mmi.workers" {
            code = "\(services[argument]?.workers.count ?? 0)"
        }
        var frames = [[], MDP.clientHeader, Array(name.utf8)]
        frames.append(Array(code.utf8))
        mdpSend(frames, to: client)
    }

    // MARK: replies

    private func mdpReply(delivery: UInt64, frames: Int, bodyBytes: Int, body: AnyObject, from connection: PeerConnection) {
        guard let fragment = deliveries[delivery], fragment.worker === connection else {
            counters.strayResults += 1
            log.note(.strayResult, key: connection.key.logID, level: .info, "dropped an MDP reply for an unknown delivery", now: now,
                     ["worker": "\(connection.key.fingerprint)", "delivery": "\(delivery)"])
            return
        }
        let job = fragment.job
        guard bodyBytes <= rules.maxFragment else {
            attemptFailed(fragment, code: .tooLarge, reason: "an MDP reply of \(bodyBytes) bytes is larger than max-fragment")
            return
        }
        let client = job.replyTo
        var converted: AnyObject?
        if !client.speaksMDP {
            // Multi-frame bodies pass only between MDP peers (C51); one frame becomes a DONE with
            // its digest, then travels like any result.
            converted = frames == 1 ? sink.smqFragment(fromMDP: body, command: .done, service: job.service.name,
                                                       jobID: job.key.jobID, index: fragment.index, count: job.count) : nil
            guard converted != nil else {
                finishDelivery(fragment, from: connection)
                failJob(job, index: fragment.index, code: .workerFailure,
                        reason: "an MDP worker replied with \(frames) body frames; an SMQ/1 result is one")
                if let service = connection.worker?.service { dispatch(service) }
                return
            }
        }
        finishDelivery(fragment, from: connection)
        job.live[fragment.index] = nil
        fragment.body = nil
        release(cost: fragment.cost, for: job.owner)
        _ = job.markDone(fragment.index)
        if job.doneAhead.count > rules.maxDoneAhead {
            failJob(job, index: fragment.index, code: .malformed,
                    reason: "results completed more than \(rules.maxDoneAhead) fragments ahead of the first missing one")
            dispatch(connection.worker?.service ?? job.service)
            return
        }
        deliverResult(converted ?? body, tag: connection.key.publicKey.tag, cost: BrokerRules.cost(ofBody: bodyBytes), job: job)
        if job.isComplete, !job.ended {
            counters.completedJobs += 1
            forget(job)
        }
        if let service = connection.worker?.service { dispatch(service) }
        if draining { checkDrained() }
    }

    /// A result (an SMQ/1 DONE or an MDP reply) for an MDP client. MDP has no outbox semantics:
    /// a reply its pipe cannot take is dropped and logged; the MDP client retries (C50).
    func deliverMDPResult(_ body: AnyObject, job: Job) {
        let client = job.replyTo
        switch sink.sendMDPReply(body, service: job.service.name, to: client.address) {
        case .sent:
            counters.results += 1
        case .full:
            counters.pipeFull += 1
            mdpNoReply(client, "its pipe is full: the reply is dropped (an MDP client retries)")
        case .gone:
            counters.droppedConnections += 1
            remove(client, reason: "unreachable", charge: false)
        }
    }

    // MARK: workers

    /// Sends one delivery to a worker in its protocol: REQUEST to an MDP worker; WORK to an SMQ/1
    /// worker, built once from a one-frame MDP request (with its digest) when it came from MDP.
    func sendWork(_ fragment: HeldFragment, body: AnyObject, delivery: UInt64, to connection: PeerConnection) -> SendOutcome {
        if connection.worker?.mdp == true {
            return sink.sendMDPRequest(body, delivery: delivery, to: connection.address)
        }
        var body = body
        if fragment.mdpFrames > 0 {
            guard fragment.mdpFrames == 1,
                  let converted = sink.smqFragment(fromMDP: body, command: .submit, service: fragment.job.service.name,
                                                   jobID: fragment.job.key.jobID, index: fragment.index, count: fragment.job.count)
            else {
                // The queue never offers a multi-frame request to an SMQ/1 worker (C51).
                logger.error("an MDP request could not be made an SMQ/1 WORK", metadata: ["frames": "\(fragment.mdpFrames)"])
                return .sent
            }
            fragment.body = converted
            fragment.mdpFrames = 0
            body = converted
        }
        return sink.forward(body, as: .work, tag: delivery, keep: true, to: connection.address)
    }

    /// Whether a queued fragment may go to this worker connection: a multi-frame MDP request
    /// only to an MDP worker (C51).
    static func canTake(_ fragment: HeldFragment, _ connection: PeerConnection) -> Bool {
        fragment.mdpFrames <= 1 || connection.worker?.mdp == true
    }

    // MARK: sending

    /// DISCONNECT in the connection's protocol: MDP workers get MDPW01 DISCONNECT, MDP clients
    /// nothing (MDP has no message for it).
    func sendDisconnect(_ reason: String, to connection: PeerConnection) {
        if connection.speaksMDP {
            if connection.worker != nil { _ = sink.sendMDP(MDP.disconnectFrames, to: connection.address) }
            return
        }
        _ = sink.send(ControlMessage.disconnect(reason: Reason.truncated(reason)).encoded(), to: connection.address)
    }

    func mdpSend(_ frames: [[UInt8]], to connection: PeerConnection) {
        switch sink.sendMDP(frames, to: connection.address) {
        case .sent: break
        case .full:
            counters.pipeFull += 1
            mdpNoReply(connection, "its pipe is full: the reply is dropped (an MDP client retries)")
        case .gone:
            counters.droppedConnections += 1
            remove(connection, reason: "unreachable", charge: false)
        }
    }

    /// Where SMQ/1 would answer FAILED or BUSY, an MDP client gets nothing (MDP has no error
    /// reply); the broker says why in its log, rate-limited per key.
    func mdpNoReply(_ client: PeerConnection, _ why: @autoclosure () -> String) {
        log.note(.mdpNoReply, key: client.key.logID, level: .notice, "no reply to an MDP client", now: now,
                 ["key": "\(client.key.fingerprint)", "name": "\(client.key.name)", "why": "\(why())"])
    }

    /// MDP clients are not probed and never PING: one with nothing open that has been quiet for
    /// heartbeat × liveness is forgotten (it is admitted again with its next request), so its
    /// reconnections cannot use up its key's connections (C54).
    func expireIdleMDPClients() {
        guard !mdpClients.isEmpty else { return }
        let silence = rules.heartbeatInterval &* UInt64(rules.liveness)
        for (serial, client) in mdpClients {
            if client.gone || client.worker != nil || !client.speaksMDP {
                mdpClients[serial] = nil
            } else if client.jobs.isEmpty, now &- client.lastSeen > silence {
                mdpClients[serial] = nil
                remove(client, reason: "idle", charge: false)
            }
        }
    }
}

extension PeerConnection {
    /// No work, jobs or replies depend on it: its protocol may still change (C50).
    var holdsNothing: Bool { worker == nil && jobs.isEmpty && outbox.isEmpty }
}

extension ServiceQueue {
    /// Whether an MDP worker serves it now (the only ones that take several body frames: C51).
    var hasMDPWorker: Bool { workers.values.contains { $0.connections.contains { $0.worker?.mdp == true } } }
}
