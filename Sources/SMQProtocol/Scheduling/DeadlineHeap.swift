/// The non-generic part of ``StrideScheduler``: per-entry virtual start and finish times
/// ("deadlines"), FIFO sequence numbers, strides and weights, and two binary min-heaps of entry
/// indices with one position map for O(log n) removal:
/// - `ready`: the eligible entries (start ≤ now), ordered by (deadline, sequence): picks come
///   from here;
/// - `waiting`: active entries that are not eligible yet (start > now), ordered by (start,
///   sequence): they move to `ready` as virtual time passes their start.
/// Suspended entries are in neither.
///
/// This is WF²Q+ (Bennett and Zhang): picking the earliest deadline among *eligible* entries only
/// keeps every entry within one pick of its ideal share at every step. Plain earliest-deadline
/// (WFQ) lets a heavy entry run ahead by up to half its weight's worth of picks while a crowd of
/// light entries with equal deadlines waits, then serves the crowd in a burst.
struct DeadlineHeap: Sendable {
    /// The virtual time a weight-1 entry's turn takes.
    static let unit: UInt64 = 1 << 32

    var start: [UInt64] = []
    var deadline: [UInt64] = []
    var sequence: [UInt64] = []
    var stride: [UInt64] = []
    var weight: [UInt64] = []
    /// Each entry's slot in its heap, or -1 while suspended.
    var position: [Int] = []
    /// Which heap an active entry is in.
    var isWaiting: [Bool] = []
    var ready: [Int] = []
    var waiting: [Int] = []
    /// Virtual time: advances by `unit / activeWeight` per pick, and jumps to the earliest start
    /// when no active entry is eligible.
    var now: UInt64 = 0
    /// The sum of the active (not suspended) entries' weights.
    var activeWeight: UInt64 = 0
    var nextSequence: UInt64 = 0
    var rebaseThreshold: UInt64 = 1 << 62

    /// Active entries, eligible or waiting.
    var activeCount: Int { ready.count + waiting.count }

    /// Adds a suspended entry that starts now; returns its index.
    mutating func append(stride: UInt64, weight: UInt64) -> Int {
        start.append(now)
        deadline.append(now &+ stride)
        sequence.append(takeSequence())
        self.stride.append(stride)
        self.weight.append(weight)
        position.append(-1)
        isWaiting.append(false)
        return start.count - 1
    }

    /// Removes entry `index`; when another entry moved into its place, returns where it came from.
    mutating func remove(_ index: Int) -> Int? {
        if position[index] >= 0 { deactivate(index) }
        let last = start.count - 1
        var moved: Int?
        if index != last {
            start[index] = start[last]
            deadline[index] = deadline[last]
            sequence[index] = sequence[last]
            stride[index] = stride[last]
            weight[index] = weight[last]
            position[index] = position[last]
            isWaiting[index] = isWaiting[last]
            if position[index] >= 0 {
                if isWaiting[index] { waiting[position[index]] = index } else { ready[position[index]] = index }
            }
            moved = last
        }
        start.removeLast()
        deadline.removeLast()
        sequence.removeLast()
        stride.removeLast()
        weight.removeLast()
        position.removeLast()
        isWaiting.removeLast()
        return moved
    }

    /// A new weight: the entry starts afresh now, with its new stride.
    mutating func restart(_ index: Int, stride newStride: UInt64, weight newWeight: UInt64) {
        let active = position[index] >= 0
        if active { deactivate(index) }
        stride[index] = newStride
        weight[index] = newWeight
        start[index] = now
        deadline[index] = now &+ newStride
        sequence[index] = takeSequence()
        if active { activate(index) }
    }

    /// Back from suspension at `max(its start, now)`: time without credit earns no burst, and an
    /// entry that was ahead of its share stays behind the others until they catch up.
    mutating func resume(_ index: Int) {
        if start[index] < now { start[index] = now }
        deadline[index] = start[index] &+ stride[index]
        sequence[index] = takeSequence()
        activate(index)
    }

    mutating func suspend(_ index: Int) {
        deactivate(index)
    }

    /// Puts an entry (suspended now) into the heap its start says.
    mutating func activate(_ index: Int) {
        activeWeight &+= weight[index]
        push(index, waiting: start[index] > now)
    }

    private mutating func deactivate(_ index: Int) {
        activeWeight &-= weight[index]
        removeFromHeap(index)
    }

    mutating func pick() -> Int? {
        if ready.isEmpty {
            // No active entry is eligible: virtual time jumps to the earliest start.
            guard let first = waiting.first else { return nil }
            now = start[first]
            promote()
        }
        let top = ready[0]
        start[top] = deadline[top]
        deadline[top] = start[top] &+ stride[top]
        sequence[top] = takeSequence()
        now &+= max(1, Self.unit / max(1, activeWeight))
        if start[top] <= now {
            siftDown(0, waiting: false)
        } else {
            removeFromHeap(top)
            push(top, waiting: true)
        }
        promote()
        if now >= rebaseThreshold { rebase() }
        return top
    }

    /// The entry ``pick()`` would return, without picking.
    func peek() -> Int? {
        if let first = ready.first { return first }
        guard let first = waiting.first else { return nil }
        // After the jump every entry starting at the earliest start is eligible.
        var best = first
        for index in waiting where start[index] == start[first] && isEarlier(index, best, waiting: false) { best = index }
        return best
    }

    private mutating func promote() {
        while let first = waiting.first, start[first] <= now {
            removeFromHeap(first)
            push(first, waiting: false)
        }
    }

    private mutating func push(_ index: Int, waiting toWaiting: Bool) {
        isWaiting[index] = toWaiting
        if toWaiting {
            waiting.append(index)
            position[index] = waiting.count - 1
            siftUp(waiting.count - 1, waiting: true)
        } else {
            ready.append(index)
            position[index] = ready.count - 1
            siftUp(ready.count - 1, waiting: false)
        }
    }

    private mutating func removeFromHeap(_ index: Int) {
        let slot = position[index]
        let inWaiting = isWaiting[index]
        let last = inWaiting ? waiting.removeLast() : ready.removeLast()
        position[index] = -1
        let count = inWaiting ? waiting.count : ready.count
        guard slot < count else { return }
        if inWaiting { waiting[slot] = last } else { ready[slot] = last }
        position[last] = slot
        siftUp(slot, waiting: inWaiting)
        siftDown(position[last], waiting: inWaiting)
    }

    private mutating func takeSequence() -> UInt64 {
        defer { nextSequence &+= 1 }
        return nextSequence
    }

    /// Shifts every time down by a base no later than `now` and no later than any eligible
    /// deadline, so no order changes: eligible starts behind the base become 0 (still eligible),
    /// waiting starts stay ahead of `now`, and a suspended entry's start behind the base would be
    /// raised to `now` on resume anyway.
    private mutating func rebase() {
        var base = now
        for index in ready where deadline[index] < base { base = deadline[index] }
        for index in start.indices {
            start[index] = start[index] >= base ? start[index] - base : 0
            deadline[index] = deadline[index] >= base ? deadline[index] - base : 0
        }
        now -= base
    }

    @inline(__always)
    private func isEarlier(_ a: Int, _ b: Int, waiting: Bool) -> Bool {
        if waiting {
            return start[a] < start[b] || (start[a] == start[b] && sequence[a] < sequence[b])
        }
        return deadline[a] < deadline[b] || (deadline[a] == deadline[b] && sequence[a] < sequence[b])
    }

    @inline(__always)
    private func entry(at slot: Int, waiting: Bool) -> Int {
        waiting ? self.waiting[slot] : ready[slot]
    }

    @inline(__always)
    private mutating func place(_ index: Int, at slot: Int, waiting: Bool) {
        if waiting { self.waiting[slot] = index } else { ready[slot] = index }
        position[index] = slot
    }

    private mutating func siftUp(_ from: Int, waiting: Bool) {
        var child = from
        let index = entry(at: child, waiting: waiting)
        while child > 0 {
            let parent = (child - 1) / 2
            let above = entry(at: parent, waiting: waiting)
            guard isEarlier(index, above, waiting: waiting) else { break }
            place(above, at: child, waiting: waiting)
            child = parent
        }
        place(index, at: child, waiting: waiting)
    }

    private mutating func siftDown(_ from: Int, waiting: Bool) {
        var parent = from
        let index = entry(at: parent, waiting: waiting)
        let count = waiting ? self.waiting.count : ready.count
        while true {
            var child = 2 * parent + 1
            guard child < count else { break }
            if child + 1 < count && isEarlier(entry(at: child + 1, waiting: waiting), entry(at: child, waiting: waiting), waiting: waiting) {
                child += 1
            }
            let below = entry(at: child, waiting: waiting)
            guard isEarlier(below, index, waiting: waiting) else { break }
            place(below, at: parent, waiting: waiting)
            parent = child
        }
        place(index, at: parent, waiting: waiting)
    }

    func invariantViolation() -> String? {
        var active = 0
        var weights: UInt64 = 0
        for index in start.indices where position[index] >= 0 {
            active += 1
            weights &+= weight[index]
            let heap = isWaiting[index] ? waiting : ready
            if position[index] >= heap.count || heap[position[index]] != index { return "position map broken at \(index)" }
            if isWaiting[index] && start[index] <= now { return "eligible entry \(index) left waiting" }
            if !isWaiting[index] && start[index] > now { return "entry \(index) picked before its start" }
            if deadline[index] != start[index] &+ stride[index] { return "deadline of \(index) is not start + stride" }
        }
        if active != activeCount { return "heaps hold \(activeCount), positions say \(active)" }
        if weights != activeWeight { return "active weight \(activeWeight), entries say \(weights)" }
        for slot in ready.indices.dropFirst() where isEarlier(ready[slot], ready[(slot - 1) / 2], waiting: false) {
            return "ready heap order broken at \(slot)"
        }
        for slot in waiting.indices.dropFirst() where isEarlier(waiting[slot], waiting[(slot - 1) / 2], waiting: true) {
            return "waiting heap order broken at \(slot)"
        }
        return nil
    }
}
