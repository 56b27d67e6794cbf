import Logging
import SMQKeys
import SMQProtocol

/// Admission and revocation: who may connect, what each role may send, and what happens to a
/// connection whose key leaves the allowlist, narrows its rights, or sends as another key.
extension BrokerCore {
    /// A message on a routing id the core does not know yet.
    ///
    /// - Parameters:
    ///   - id: The routing id.
    ///   - address: Its bytes.
    ///   - userID: The message's ZAP `User-Id` (the key's Z85 text), if it has one.
    ///   - now: The time.
    /// - Returns: The new connection, or nil when the message is to be dropped (no or an unknown
    ///   key, a revoked key — told once with DISCONNECT —, too many connections of one key).
    ///   - mdp: The message is 7/MDP: the connection speaks MDP, and a refusal sends nothing
    ///     (an SMQ/1 DISCONNECT would be garbage to an MDP peer).
    public func admit(id: RoutingID, address: [UInt8], userID: String?, now: UInt64, mdp: Bool = false) -> PeerConnection? {
        self.now = now
        guard let userID, let publicKey = try? PublicKey(z85: userID) else {
            counters.connectionsRefusedNoUserID += 1
            log.note(.unknownKey, key: 0, level: .error, "dropped a message without a ZAP User-Id", now: now)
            return nil
        }
        guard let entry = lookup(publicKey) else {
            if let known = keys[publicKey] {
                droppedFromRevoked(known)
            } else {
                counters.revokedMessages += 1
                log.note(.revokedMessage, key: 0, level: .warning, "dropping messages from a key not on the allowlist", now: now,
                         ["key": "\(publicKey.fingerprint)"])
            }
            if !mdp { _ = sink.send(ControlMessage.disconnect(reason: "key revoked").encoded(), to: address) }
            return nil
        }
        let key: PeerKey
        if let known = keys[publicKey], !known.revoked {
            key = known
            if known.entry != entry { apply(entry, to: known) }
        } else {
            key = makeKey(entry: entry)
            keys[publicKey] = key
        }
        guard key.connections.count < rules.maxConnectionsPerKey else {
            counters.connectionsRefusedTooMany += 1
            log.note(.tooManyConnections, key: key.logID, level: .warning, "refused a connection: too many for one key", now: now,
                     ["key": "\(key.fingerprint)", "limit": "\(rules.maxConnectionsPerKey)"])
            if !mdp {
                _ = sink.send(ControlMessage.disconnect(reason: "too many connections for key \(key.fingerprint) (limit \(rules.maxConnectionsPerKey))").encoded(), to: address)
            }
            return nil
        }
        let connection = makeConnection(id: id, address: address, key: key)
        connection.speaksMDP = mdp
        connections[id] = connection
        key.connections[connection.serial] = connection
        counters.connectionsAdmitted += 1
        log.note(.peerJoined, key: key.logID, level: .info, "peer joined", now: now, [
            "key": "\(key.fingerprint)", "name": "\(key.name)", "role": "\(key.role)", "weight": "\(key.entry.weight)",
        ])
        return connection
    }

    /// A message on this connection carried another key's `User-Id`: the connection's
    /// registration ends (its work requeued, its jobs dropped) and the message is dropped (C34).
    public func userIDMismatch(_ connection: PeerConnection, now: UInt64) {
        self.now = now
        guard !connection.gone else { return }
        counters.userIDMismatches += 1
        log.note(.userIDMismatch, key: connection.key.logID, level: .warning,
                 "a message's User-Id does not match its connection's key; registration ended", now: now,
                 ["key": "\(connection.key.fingerprint)", "name": "\(connection.key.name)"])
        remove(connection, reason: "sent as another key", charge: false)
    }

    /// The allowlist changed: revoked keys are cut off, and narrowed rights apply to live
    /// connections like a revocation (C35).
    public func allowlistChanged(now: UInt64) {
        self.now = now
        for key in Array(keys.values) {
            guard let entry = lookup(key.publicKey) else {
                revoke(key)
                continue
            }
            if entry != key.entry { apply(entry, to: key) }
        }
    }

    /// A key's entry changed: weight, role, services. Connections that may no longer do what
    /// they do are sent away; jobs on services no longer allowed fail with 403.
    func apply(_ entry: AllowlistEntry, to key: PeerKey) {
        let oldWeight = key.entry.weight
        key.update(entry: entry, role: entry.role ?? rules.defaultRole)
        for connection in Array(key.connections.values) {
            if let state = connection.worker {
                if !key.role.allows(.worker) {
                    sendAway(connection, reason: "key \(key.fingerprint) is no longer a worker", charge: false)
                } else if !key.allows(service: state.service.name) {
                    counters.forbidden += 1
                    sendAway(connection, reason: "key \(key.fingerprint) may no longer serve '\(state.service.name)'", charge: false)
                }
            } else if !key.role.allows(.client) {
                if !connection.jobs.isEmpty || !connection.outbox.isEmpty {
                    failJobs(Array(connection.jobs), code: .forbidden, reason: "key \(key.fingerprint) is no longer a client")
                    sendAway(connection, reason: "key \(key.fingerprint) is no longer a client", charge: false)
                }
            } else {
                let refused = connection.jobs.filter { jobs[$0].map { !key.allows(service: $0.service.name) } ?? false }
                counters.forbidden += refused.count
                for jobKey in refused {
                    guard let job = jobs[jobKey] else { continue }
                    job.doomed = true
                }
                for jobKey in refused {
                    guard let job = jobs[jobKey] else { continue }
                    failJob(job, index: Message.wholeJobIndex, code: .forbidden,
                            reason: "key \(key.fingerprint) may no longer submit to '\(job.service.name)'")
                }
            }
        }
        if entry.weight != oldWeight {
            for service in Array(services.values) {
                service.setWeight(key, schedulerWeight: schedulerWeight(key), baseWindow: rules.baseWindow)
                dispatch(service)
            }
        }
    }

    /// A key left the allowlist: stop dispatching to it, requeue its work, end its jobs, tell it.
    func revoke(_ key: PeerKey) {
        guard !key.revoked else { return }
        key.revoked = true
        counters.revocations += 1
        logger.warning("key revoked", metadata: ["key": "\(key.fingerprint)", "name": "\(key.name)", "connections": "\(key.connections.count)"])
        let connections = Array(key.connections.values)
        // Every job of the key is doomed before the first ends (its freed credit must not go to
        // the next one), then each fails with 403.
        failJobs(connections.flatMap { Array($0.jobs) }, code: .forbidden, reason: "key \(key.fingerprint) was revoked")
        for connection in connections { sendAway(connection, reason: "key revoked", charge: false) }
    }

    func droppedFromRevoked(_ key: PeerKey) {
        counters.revokedMessages += 1
        log.note(.revokedMessage, key: key.logID, level: .warning, "dropping messages from a revoked key", now: now,
                 ["key": "\(key.fingerprint)", "name": "\(key.name)"])
    }

    /// Role check (§3.2): a command the key's role does not allow gets DISCONNECT; so does a
    /// client command on a worker connection (C24).
    func allow(_ connection: PeerConnection, _ role: PeerRole, _ command: Command) -> Bool {
        guard connection.key.role.allows(role) else {
            counters.roleViolations += 1
            log.note(.roleViolation, key: connection.key.logID, level: .warning, "role violation", now: now, [
                "key": "\(connection.key.fingerprint)", "name": "\(connection.key.name)",
                "role": "\(connection.key.role)", "command": "\(command)",
            ])
            sendAway(connection, reason: "key \(connection.key.fingerprint) is a \(connection.key.role) and may not send \(command)", charge: true)
            return false
        }
        if role == .client, connection.isWorker {
            sendAway(connection, reason: "a worker connection may not send \(command)", charge: true)
            return false
        }
        return true
    }

    /// DISCONNECT, then forget the connection.
    func sendAway(_ connection: PeerConnection, reason: String, charge: Bool) {
        sendDisconnect(reason, to: connection)
        remove(connection, reason: reason, charge: charge)
    }

    /// A connection is gone (DISCONNECT, dead, revoked, unreachable, sent away): a worker's work
    /// is requeued — charged and suspect when it may have died of it (`charge`), as it was
    /// otherwise —; a client's jobs move to another connection of its key or are dropped.
    func remove(_ connection: PeerConnection, reason: String, charge: Bool) {
        guard !connection.gone else { return }
        connection.gone = true
        // A revoked key's connection stays known, so its later messages are dropped quietly.
        if !connection.key.revoked { connections[connection.id] = nil }
        connection.key.connections[connection.serial] = nil
        activeWorkers[connection.serial] = nil
        activeClients[connection.serial] = nil
        waitingWorkers[connection.serial] = nil
        connection.worker?.pending.removeAll()
        if let state = connection.worker {
            let service = state.service
            let held = state.deliveries.compactMap { deliveries[$0] }
            for fragment in held { deliveries[fragment.deliveryID] = nil }
            state.deliveries.removeAll()
            service.removeWorker(connection, baseWindow: rules.baseWindow)
            state.inFlight = 0
            state.suspects = 0
            for fragment in held {
                fragment.job.service.clientDeliveryEnded(fragment)
                fragment.deliveryID = 0
                fragment.worker = nil
            }
            for fragment in held.sorted(by: { $0.index < $1.index }) where !fragment.isDead {
                if charge {
                    fragment.suspect = true
                    requeueOrFail(fragment, failedKey: connection.key.serial, reason: "worker \(connection.key.name) \(reason)", cause: .workerGone)
                } else {
                    fragment.attempts -= 1
                    fragment.job.service.enqueue(fragment, now: now, retry: true)
                }
            }
            dispatch(service)
            forgetIfIdle(service)
        }
        dropOutbox(connection)
        let heir = connection.key.connections.values.first(where: { !$0.isWorker && !$0.gone })
        if heir == nil {
            // All its jobs end: doomed first, so the credit one frees goes to none of the others.
            for jobKey in connection.jobs { jobs[jobKey]?.doomed = true }
        }
        for jobKey in connection.jobs {
            guard let job = jobs[jobKey] else { continue }
            if let other = heir {
                job.replyTo = other
                other.jobs.insert(jobKey)
                activeClients[other.serial] = other
            } else {
                counters.abandonedJobs += 1
                logJobEnd(job, outcome: "abandoned", code: nil)
                end(job, remember: false)
            }
        }
        connection.jobs.removeAll()
        if connection.key.connections.isEmpty, connection.key.account.openJobs == 0, !connection.key.revoked {
            // A key with nothing open and no connection is forgotten; it is made anew if it returns.
            keys[connection.key.publicKey] = nil
        }
        checkDrained()
    }
}
