import SMQKeys
import DequeModule
import SMQProtocol

/// One service: its worker keys in a stride scheduler and its queued fragments, fair across
/// clients. The only owner of the scheduler and of whether a worker key may be picked: every
/// change to a key's credit, connections or standing goes through here and ends in ``sync(_:)``,
/// which derives "eligible" from the facts instead of keeping a flag in step by hand.
final class ServiceQueue {
    let name: String
    private(set) var scheduler: StrideScheduler<Int>
    /// Per worker key serial.
    private(set) var workers: [Int: WorkerSlot] = [:]
    /// Queued fragments per client key, served round-robin so one big job starves nobody.
    private var clients: [Int: ClientQueue] = [:]
    /// Fragments of each client in flight to this service's workers (clients with none are not
    /// in the table): dispatch serves the client with the fewest first (C37).
    private var clientInFlight: [Int: Int] = [:]
    private var clientOrder: Deque<Int> = []
    /// Fragments whose delivery failed (charged) and suspects: served first, each to another key
    /// than the one that failed it when one is free.
    private var retries: Deque<HeldFragment> = []
    /// Live queued fragments.
    private(set) var queuedCount = 0
    /// Jobs open on this service; a service with no worker, no queued fragment and no open job
    /// is forgotten (PROTOCOL.md C38).
    var openJobs = 0
    /// Dispatch in progress (a send that fails may requeue; that dispatches again afterwards).
    var dispatching = false
    var needsDispatch = false
    /// Keys passed over in the current dispatch (nothing they may take): eligible again after it.
    private var passedOver: [Int] = []

    /// The virtual time of the fair queue over clients: the finish time of the last client served.
    private var virtualNow: UInt64 = 0

    init(name: String, strategy: StrideScheduler<Int>.Strategy) {
        self.name = name
        scheduler = StrideScheduler(strategy: strategy)
    }

    var isIdle: Bool { workers.isEmpty && queuedCount == 0 && openJobs == 0 }

    // MARK: workers and credit

    /// Adds a worker connection to its key's slot (made on first use).
    func addWorker(_ connection: PeerConnection, weight: Int, baseWindow: Int) -> WorkerSlot {
        let serial = connection.key.serial
        let slot: WorkerSlot
        if let existing = workers[serial] {
            slot = existing
        } else {
            slot = WorkerSlot(key: connection.key)
            workers[serial] = slot
            scheduler.add(serial, weight: weight)
            slot.eligible = true
        }
        slot.connections.append(connection)
        slot.recomputeCap(weight: connection.key.entry.weight, baseWindow: baseWindow)
        sync(slot)
        return slot
    }

    /// Removes a worker connection; its key leaves the scheduler with its last connection.
    func removeWorker(_ connection: PeerConnection, baseWindow: Int) {
        let serial = connection.key.serial
        guard let slot = workers[serial] else { return }
        slot.connections.removeAll { $0 === connection }
        slot.inFlight -= connection.worker?.inFlight ?? 0
        if slot.connections.isEmpty {
            workers[serial] = nil
            scheduler.remove(serial)
            return
        }
        slot.recomputeCap(weight: connection.key.entry.weight, baseWindow: baseWindow)
        sync(slot)
    }

    func setWeight(_ key: PeerKey, schedulerWeight: Int, baseWindow: Int) {
        guard let slot = workers[key.serial] else { return }
        scheduler.setWeight(key.serial, weight: schedulerWeight)
        slot.recomputeCap(weight: key.entry.weight, baseWindow: baseWindow)
        sync(slot)
    }

    func creditChanged(_ key: PeerKey, baseWindow: Int) {
        guard let slot = workers[key.serial] else { return }
        slot.recomputeCap(weight: key.entry.weight, baseWindow: baseWindow)
        sync(slot)
    }

    /// Every client's fragments in flight to this service, as counted for dispatch (for tests).
    var clientsInFlight: [Int: Int] { clientInFlight }

    /// A fragment of `client` was delivered to a worker of this service.
    func clientDelivered(_ fragment: HeldFragment) {
        guard !fragment.countedInFlight else { return }
        fragment.countedInFlight = true
        clientInFlight[fragment.job.key.client, default: 0] += 1
    }

    /// A delivery of `fragment` ended (result, reject, requeue, worker gone, job ended).
    func clientDeliveryEnded(_ fragment: HeldFragment) {
        guard fragment.countedInFlight else { return }
        fragment.countedInFlight = false
        let client = fragment.job.key.client
        guard let count = clientInFlight[client] else { return }
        clientInFlight[client] = count > 1 ? count - 1 : nil
    }

    /// A delivery to `connection` began (`delta` 1) or ended (`delta` -1).
    func inFlightChanged(_ connection: PeerConnection, by delta: Int) {
        guard let state = connection.worker, let slot = workers[connection.key.serial] else { return }
        state.inFlight += delta
        slot.inFlight += delta
        sync(slot)
    }

    /// Re-derives whether a key may be picked (after a pipe unblocked, a revocation…).
    func refresh(_ key: PeerKey) {
        guard let slot = workers[key.serial] else { return }
        sync(slot)
    }

    /// The one place suspension is decided: a key is in the scheduler's heap exactly when it is
    /// not revoked, has free credit and has a connection that can take a fragment now.
    private func sync(_ slot: WorkerSlot) {
        let eligible = !slot.key.revoked && slot.inFlight < slot.cap && !slot.passedOver && slot.usableConnection() != nil
        guard eligible != slot.eligible else { return }
        slot.eligible = eligible
        if eligible { scheduler.resume(slot.key.serial) } else { scheduler.suspend(slot.key.serial) }
    }

    /// Picks the next worker key and a connection of it, or nil when none is eligible.
    func pickWorker() -> (WorkerSlot, PeerConnection)? {
        while let serial = scheduler.pick() {
            guard let slot = workers[serial] else { scheduler.remove(serial); continue }
            if let connection = slot.pickConnection() { return (slot, connection) }
            sync(slot)
        }
        return nil
    }

    /// Nothing queued fits this key now (suspects it may not take, or only blocked clients): it
    /// sits out the rest of this dispatch.
    func passOver(_ slot: WorkerSlot) {
        slot.passedOver = true
        passedOver.append(slot.key.serial)
        sync(slot)
    }

    func endPass() {
        for serial in passedOver {
            guard let slot = workers[serial] else { continue }
            slot.passedOver = false
            sync(slot)
        }
        passedOver.removeAll(keepingCapacity: true)
    }

    // MARK: queues

    /// Queues a fragment: a retried one (charged, or a suspect) in the retry queue, served first;
    /// a new one at the end of its client's queue.
    func enqueue(_ fragment: HeldFragment, now: UInt64, retry: Bool = false) {
        guard !fragment.isDead, !fragment.queued else { return }
        fragment.queued = true
        fragment.enqueuedAt = now
        queuedCount += 1
        if retry || fragment.suspect {
            retries.append(fragment)
            return
        }
        let client = fragment.job.key.client
        let queue: ClientQueue
        if let existing = clients[client] {
            queue = existing
        } else {
            queue = ClientQueue(owner: fragment.job.owner)
            clients[client] = queue
        }
        queue.fragments.append(fragment)
        if !queue.inOrder {
            // A client that (re)starts sending begins at the service's virtual time: no credit
            // saved from idleness, no debt kept from long ago.
            queue.inOrder = true
            queue.finish = max(queue.finish, virtualNow)
            clientOrder.append(client)
        }
    }

    /// A queued fragment's job ended: it is no longer counted; its record is skipped when met and
    /// queues are compacted when dead records outnumber live ones, so they cannot pile up.
    func dropQueued(_ fragment: HeldFragment) {
        guard fragment.queued else { return }
        fragment.queued = false
        queuedCount -= 1
        if fragment.suspect || retries.contains(where: { $0 === fragment }) {
            retries.removeAll { $0 === fragment }
            return
        }
        guard let queue = clients[fragment.job.key.client] else { return }
        queue.dead += 1
        if queue.dead > 64 && queue.dead * 2 > queue.fragments.count {
            queue.fragments.removeAll { $0.isDead || !$0.queued }
            queue.dead = 0
        }
        if queue.fragments.isEmpty { forgetClient(fragment.job.key.client) }
    }

    private func forgetClient(_ client: Int) {
        clients[client] = nil
        clientOrder.removeAll { $0 == client }
    }

    /// The next fragment `connection` (of key `slot`) may take: a retry first (not a second suspect,
    /// not back to the key that failed it while another key is free, not for a blocked client),
    /// else round-robin over clients that are not blocked.
    func dequeue(for slot: WorkerSlot, connection: PeerConnection) -> HeldFragment? {
        guard queuedCount > 0 else { return nil }
        let holdsSuspect = (connection.worker?.suspects ?? 0) > 0
        let othersFree = scheduler.eligibleCount > 1
        var position = 0
        while position < retries.count {
            let fragment = retries[position]
            if !fragment.queued || fragment.isDead {
                retries.remove(at: position)
                if fragment.queued { fragment.queued = false; queuedCount -= 1 }
                continue
            }
            if (fragment.suspect && holdsSuspect) || (fragment.lastFailedKey == slot.key.serial && othersFree)
                || fragment.job.owner.account.isBlocked || !BrokerCore.canTake(fragment, connection) {
                position += 1
                continue
            }
            retries.remove(at: position)
            return take(fragment)
        }
        // Fair over clients (PROTOCOL.md C37): the next fragment comes from the client with the
        // fewest fragments in flight to this service's workers (an equal share of worker slots:
        // a client that arrives while another fills every slot gets the next ones that free),
        // then by turns (start-time fair queueing with one unit per fragment: each client's
        // queue has a virtual finish time that grows by one per fragment it was served, ties to
        // the one that waited longest, and a client that (re)starts sending begins at the current
        // virtual time, so it banks no turns while idle). Turns, not bytes: credit is counted in
        // fragments and a worker's time per fragment is unknown; the budget share (bytes)
        // bounds what a client with large fragments holds. O(clients with queued work) per pick.
        var best: ClientQueue?
        var bestInFlight = 0
        var bestPosition = 0
        position = 0
        while position < clientOrder.count {
            let client = clientOrder[position]
            guard let queue = clients[client] else {
                clientOrder.remove(at: position)
                continue
            }
            while let head = queue.fragments.first, !head.queued || head.isDead {
                queue.fragments.removeFirst()
                if head.queued { head.queued = false; queuedCount -= 1 } else if queue.dead > 0 { queue.dead -= 1 }
            }
            if queue.fragments.isEmpty {
                // Kept (with its storage) for the client's next SUBMIT: a queue that empties at
                // every dispatch must not cost two allocations per fragment. Emptied queues are
                // dropped by `purgeEmptyQueues` at the next tick.
                queue.inOrder = false
                clientOrder.remove(at: position)
                continue
            }
            if !queue.owner.account.isBlocked, let head = queue.fragments.first, BrokerCore.canTake(head, connection) {
                let inFlight = clientInFlight[client] ?? 0
                if best == nil || inFlight < bestInFlight || (inFlight == bestInFlight && queue.finish < best!.finish) {
                    best = queue
                    bestInFlight = inFlight
                    bestPosition = position
                }
            }
            position += 1
        }
        guard let queue = best else { return nil }
        let fragment = queue.fragments.removeFirst()
        virtualNow = queue.finish
        queue.finish &+= 1
        // It goes behind the others with its new finish time (ties go to who waited longer).
        let client = clientOrder.remove(at: bestPosition)
        if queue.fragments.isEmpty {
            queue.inOrder = false
        } else {
            clientOrder.append(client)
        }
        return take(fragment)
    }

    private func take(_ fragment: HeldFragment) -> HeldFragment {
        fragment.queued = false
        queuedCount -= 1
        return fragment
    }

    /// Drops every record (all dead: the service is idle) when the service is forgotten.
    func clearRecords() {
        retries.removeAll()
        clients.removeAll()
        clientOrder.removeAll()
        passedOver.removeAll()
    }

    /// Forgets client queues that are empty (once per tick, so a busy client keeps its queue
    /// between SUBMITs and an idle one costs nothing for long).
    func purgeEmptyQueues() {
        guard clients.count > clientOrder.count else { return }
        for (client, queue) in clients where queue.fragments.isEmpty && !queue.inOrder { clients[client] = nil }
    }

    /// Whether a queued fragment may be dispatched now: a retry, or a client queue whose client's
    /// outbox is empty (stops at the first such client: usually the first one).
    var hasDispatchableWork: Bool {
        if !retries.isEmpty { return true }
        for client in clientOrder {
            if let queue = clients[client], !queue.owner.account.isBlocked, !queue.fragments.isEmpty { return true }
        }
        return false
    }

    /// The live queued fragment that has waited longest (for the service timeout).
    func oldestQueued() -> HeldFragment? {
        var oldest: HeldFragment?
        for fragment in retries where fragment.queued && !fragment.isDead {
            if oldest == nil || fragment.enqueuedAt < oldest!.enqueuedAt { oldest = fragment }
        }
        for queue in clients.values {
            guard let head = queue.fragments.first(where: { $0.queued && !$0.isDead }) else { continue }
            if oldest == nil || head.enqueuedAt < oldest!.enqueuedAt { oldest = head }
        }
        return oldest
    }

    /// Records in the queues, live or dead (for tests of the bounds).
    var recordCount: Int { retries.count + clients.values.reduce(0) { $0 + $1.fragments.count } }
}

/// One client's queued fragments within a service.
final class ClientQueue {
    let owner: PeerKey
    var fragments: Deque<HeldFragment> = []
    var dead = 0
    var inOrder = false
    /// Fair queueing: its virtual finish time (the cost it was served, from when it started).
    var finish: UInt64 = 0

    init(owner: PeerKey) { self.owner = owner }
}

/// One worker key within one service: its connections and its credit.
final class WorkerSlot {
    let key: PeerKey
    var connections: [PeerConnection] = []
    var next = 0
    var inFlight = 0
    var cap = 0
    /// In the scheduler's heap now (kept by ``ServiceQueue/sync(_:)`` only).
    var eligible = false
    var passedOver = false

    init(key: PeerKey) { self.key = key }

    /// The key's credit cap: min(asked by its connections, weight × base window).
    func recomputeCap(weight: Int, baseWindow: Int) {
        let asked = connections.reduce(0) { $0 + ($1.worker?.askedCredit ?? 0) }
        cap = min(asked, weight * baseWindow)
    }

    private func usable(_ connection: PeerConnection) -> Bool {
        guard let state = connection.worker, !connection.gone else { return false }
        return state.inFlight < state.askedCredit && !state.blocked
    }

    func usableConnection() -> PeerConnection? { connections.first(where: usable) }

    /// The key's connections take turns; one with free credit of its own.
    func pickConnection() -> PeerConnection? {
        guard !connections.isEmpty else { return nil }
        for step in 0..<connections.count {
            let candidate = connections[(next + step) % connections.count]
            if usable(candidate) {
                next = (next + step + 1) % connections.count
                return candidate
            }
        }
        return nil
    }
}
