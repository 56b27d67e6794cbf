import Logging
import SMQProtocol

/// What time does: heartbeats and dead peers, leases, slow clients, service timeouts, ended ids,
/// summaries of suppressed log lines. Timers walk only active records: worker connections,
/// clients with jobs or an outbox, and services that exist (C38).
extension BrokerCore {
    /// The clock moved (the adapter calls it every 100 ms).
    public func tick(now: UInt64) {
        self.now = now
        // Pipes that were full get another try.
        if hasFullPipes { retryFullPipes(now: now) }
        for connection in Array(activeWorkers.values) where !connection.gone {
            guard let state = connection.worker else { continue }
            // An MDP worker cannot heartbeat while it handles a request: busy, only the work
            // lease bounds it (C52).
            if !(state.mdp && state.inFlight > 0), now &- connection.lastSeen > state.heartbeatInterval &* UInt64(rules.liveness) {
                counters.deadWorkers += 1
                log.note(.workerGone, key: connection.key.logID, level: .warning, "worker silent; presumed dead", now: now, [
                    "key": "\(connection.key.fingerprint)", "name": "\(connection.key.name)", "inFlight": "\(state.inFlight)",
                ])
                remove(connection, reason: "went silent", charge: true)
                continue
            }
            if now &- state.lastHeartbeatSent >= state.heartbeatInterval {
                state.lastHeartbeatSent = now
                let outcome = state.mdp ? sink.sendMDP(MDP.heartbeatFrames, to: connection.address) : sink.send(heartbeat, to: connection.address)
                if outcome == .gone {
                    remove(connection, reason: "unreachable", charge: true)
                }
            }
        }
        if now &- lastLeaseCheck >= 1_000_000_000 {
            lastLeaseCheck = now
            checkLeases()
        }
        let silence = rules.heartbeatInterval &* UInt64(rules.liveness)
        for client in Array(activeClients.values) where !client.gone {
            if !client.outbox.isEmpty {
                flushOutbox(client)
                if !client.gone, !client.outbox.isEmpty, now &- client.outboxStuckSince > rules.slowClientTimeout {
                    counters.slowClients += 1
                    log.note(.clientGone, key: client.key.logID, level: .warning, "client does not read its results; dropping its jobs", now: now,
                             ["key": "\(client.key.fingerprint)", "name": "\(client.key.name)", "waiting": "\(client.outbox.count)"])
                    sendAway(client, reason: "results not read for \(rules.slowClientTimeout / 1_000_000_000) s", charge: false)
                    continue
                }
            }
            // MDP clients have no PING: their requests end by result, lease or service timeout.
            if !client.gone, !client.speaksMDP, !client.jobs.isEmpty, now &- client.lastSeen > silence {
                log.note(.clientGone, key: client.key.logID, level: .warning, "client silent; dropping its jobs", now: now,
                         ["key": "\(client.key.fingerprint)", "name": "\(client.key.name)"])
                remove(client, reason: "went silent", charge: false)
            }
        }
        for service in Array(services.values) {
            if service.workers.isEmpty && service.queuedCount > 0 {
                while let oldest = service.oldestQueued(), now &- oldest.enqueuedAt > rules.serviceTimeout {
                    failJob(oldest.job, index: oldest.index, code: .noWorker,
                            reason: "no worker serves '\(service.name)' (waited \(rules.serviceTimeout / 1_000_000) ms)")
                }
            }
            // A safety net: every path that frees credit dispatches, but work must never wait on
            // a path that was missed.
            if service.queuedCount > 0 && service.scheduler.eligibleCount > 0 { dispatch(service) }
            service.purgeEmptyQueues()
            forgetIfIdle(service)
        }
        expireIdleMDPClients()
        endedJobs.expire(now: now)
        log.flush(now: now)
    }

    /// A delivery held longer than the work lease: its worker is sent away, that fragment is
    /// charged, the worker's other work requeued uncharged (C40). Walks in-flight work only, once
    /// a second.
    private func checkLeases() {
        for connection in Array(activeWorkers.values) where !connection.gone {
            guard let state = connection.worker, !state.deliveries.isEmpty else { continue }
            var expired: HeldFragment?
            for delivery in state.deliveries {
                if let fragment = deliveries[delivery], now &- fragment.sentAt > rules.workLease {
                    expired = fragment
                    break
                }
            }
            guard let expired else { continue }
            counters.leasesExpired += 1
            log.note(.workerGone, key: connection.key.logID, level: .warning, "worker held a delivery past the work lease", now: now, [
                "key": "\(connection.key.fingerprint)", "name": "\(connection.key.name)", "delivery": "\(expired.deliveryID)",
            ])
            // The worker leaves first (its other work requeued uncharged), so the expired
            // fragment, charged, cannot go straight back to it.
            expired.lastFailedKey = connection.key.serial
            finishDelivery(expired, from: connection)
            sendAway(connection, reason: "a delivery was held past the work lease (\(rules.workLease / 1_000_000_000) s)", charge: false)
            requeueOrFail(expired, failedKey: connection.key.serial, reason: "worker \(connection.key.name) held it past the work lease", cause: .leaseExpired)
        }
    }
}
