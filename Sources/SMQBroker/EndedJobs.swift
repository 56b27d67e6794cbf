import DequeModule

/// Ended (failed or cancelled) job ids, remembered so a stray SUBMIT gets 410 (§3.1, C27): a
/// fixed number of them, for a fixed time, oldest forgotten first (PROTOCOL.md C39). Insertion
/// order is expiry order, so expiry pops from the front: no walk over the table.
struct EndedJobs {
    private var table: [JobKey: (expiry: UInt64, connection: UInt64)] = [:]
    private var order: Deque<(JobKey, UInt64)> = []
    let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    var count: Int { table.count }

    subscript(key: JobKey) -> UInt64? { table[key]?.connection }

    mutating func remember(_ key: JobKey, connection: UInt64, expiry: UInt64) {
        guard capacity > 0 else { return }
        while table.count >= capacity, let (oldest, stamp) = order.popFirst() {
            if table[oldest]?.expiry == stamp { table[oldest] = nil }
        }
        table[key] = (expiry, connection)
        order.append((key, expiry))
        // Re-remembered keys leave stale order entries; keep them from outgrowing the table.
        if order.count > 2 * capacity { compact() }
    }

    mutating func forget(_ key: JobKey) { table[key] = nil }

    mutating func expire(now: UInt64) {
        while let (key, stamp) = order.first, stamp <= now {
            order.removeFirst()
            if table[key]?.expiry == stamp { table[key] = nil }
        }
    }

    private mutating func compact() {
        order = Deque(order.filter { table[$0.0]?.expiry == $0.1 })
    }
}
