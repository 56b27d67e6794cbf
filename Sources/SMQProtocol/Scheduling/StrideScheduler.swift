/// Picks the worker for the next fragment of a service (§5): a stride / earliest-deadline
/// scheduler on an indexed binary heap.
///
/// Every worker has a virtual deadline; a pick takes the eligible worker with the earliest one
/// (ties: the one that got its deadline first), makes that deadline the scheduler's ``now``, and
/// moves the worker's deadline on by its stride, `2^32 / weight`. A worker therefore gets picks
/// in proportion to its weight, spread evenly (the same shares as nginx's smooth weighted
/// round-robin, never more than one pick ahead or behind it). A worker entering, or changing
/// weight, starts at `now + stride/2`, so it neither jumps the queue nor waits a full turn; a
/// worker whose credit returns re-enters at `max(its deadline, now)`, so time without credit earns
/// it no burst of picks.
///
/// A worker without free credit is ``suspend(_:)``ed (it leaves the heap, keeping its deadline)
/// and ``resume(_:)``d when credit returns. Every operation is O(log n) (``add(_:weight:)``,
/// ``remove(_:)``, ``setWeight(_:weight:)``, ``suspend(_:)``, ``resume(_:)``, ``pick()``) or O(1);
/// picks do not allocate.
public struct StrideScheduler<ID: Hashable> {
    /// How weights count.
    public enum Strategy: Hashable, Sendable {
        /// Picks in proportion to the workers' weights (the default).
        case weighted
        /// Every weight counts as 1: plain turns.
        case roundRobin
    }

    /// The virtual time a weight-1 worker's turn takes: its stride.
    public static var unitStride: UInt64 { 1 << 32 }
    /// The largest weight: its stride is 1.
    public static var maxWeight: Int { 1 << 32 }

    struct Entry {
        var id: ID
        var weight: Int
        var stride: UInt64
        var deadline: UInt64
        var sequence: UInt64
        /// The entry's position in `heap`, or -1 while suspended.
        var heapPosition: Int
    }

    /// The strategy, fixed at creation.
    public let strategy: Strategy
    /// The scheduler's virtual time: the deadline of the last pick.
    public private(set) var now: UInt64 = 0

    // Dense storage; `slots` maps an id to its entry, `heap` orders the eligible entries' indices.
    private(set) var entries: [Entry] = []
    private var slots: [ID: Int] = [:]
    private(set) var heap: [Int] = []
    private var nextSequence: UInt64 = 0

    /// When `now` passes this, every deadline is shifted down so that virtual time never
    /// overflows (a weight-1 worker alone would otherwise reach 2^64 after 2^32 picks: under a day
    /// at 60 k picks/s). Internal so tests can bring it close.
    var rebaseThreshold: UInt64 = 1 << 62

    /// Makes an empty scheduler.
    ///
    /// - Parameter strategy: ``Strategy/weighted`` (default) or ``Strategy/roundRobin``.
    public init(strategy: Strategy = .weighted) {
        self.strategy = strategy
    }

    /// The number of workers, eligible or suspended.
    public var count: Int { entries.count }
    /// The number of workers that can be picked (not suspended).
    public var eligibleCount: Int { heap.count }
    /// Whether no worker is known.
    public var isEmpty: Bool { entries.isEmpty }

    /// Whether `id` is known (eligible or suspended).
    ///
    /// - Parameter id: A worker.
    /// - Returns: true when it was added and not removed.
    public func contains(_ id: ID) -> Bool { slots[id] != nil }

    /// Whether `id` can be picked: known and not suspended.
    ///
    /// - Parameter id: A worker.
    /// - Returns: true when it is in the heap.
    public func isEligible(_ id: ID) -> Bool {
        slots[id].map { entries[$0].heapPosition >= 0 } ?? false
    }

    /// The weight `id` was given (also under ``Strategy/roundRobin``, which ignores it).
    ///
    /// - Parameter id: A worker.
    /// - Returns: Its weight, or nil when unknown.
    public func weight(of id: ID) -> Int? {
        slots[id].map { entries[$0].weight }
    }

    /// The virtual time of `id`'s next turn.
    ///
    /// - Parameter id: A worker.
    /// - Returns: Its deadline, or nil when unknown.
    public func deadline(of id: ID) -> UInt64? {
        slots[id].map { entries[$0].deadline }
    }

    /// The worker ``pick()`` would return, without picking it.
    public var peek: ID? {
        heap.first.map { entries[$0].id }
    }

    /// Adds an eligible worker, starting at `now + stride/2`.
    ///
    /// - Parameters:
    ///   - id: The worker (under §1, a key: its connections share one weight).
    ///   - weight: 1 ... ``maxWeight``.
    /// - Returns: false (and changes nothing) when `id` is already known.
    @discardableResult
    public mutating func add(_ id: ID, weight: Int) -> Bool {
        precondition(weight >= 1 && weight <= Self.maxWeight, "weight must be 1 ... 2^32")
        guard slots[id] == nil else { return false }
        let stride = stride(for: weight)
        let entry = Entry(
            id: id, weight: weight, stride: stride, deadline: now + stride / 2, sequence: takeSequence(),
            heapPosition: -1)
        entries.append(entry)
        slots[id] = entries.count - 1
        push(entries.count - 1)
        return true
    }

    /// Removes a worker, eligible or suspended.
    ///
    /// - Parameter id: The worker.
    /// - Returns: false when `id` was not known.
    @discardableResult
    public mutating func remove(_ id: ID) -> Bool {
        guard let index = slots.removeValue(forKey: id) else { return false }
        if entries[index].heapPosition >= 0 {
            removeFromHeap(at: entries[index].heapPosition)
        }
        // Keep storage dense: the last entry takes the hole.
        let last = entries.count - 1
        if index != last {
            entries[index] = entries[last]
            slots[entries[index].id] = index
            if entries[index].heapPosition >= 0 {
                heap[entries[index].heapPosition] = index
            }
        }
        entries.removeLast()
        return true
    }

    /// Changes a worker's weight; it starts again at `now + stride/2` with its new stride.
    ///
    /// - Parameters:
    ///   - id: The worker.
    ///   - weight: 1 ... ``maxWeight``.
    /// - Returns: false when `id` is not known.
    @discardableResult
    public mutating func setWeight(_ id: ID, weight: Int) -> Bool {
        precondition(weight >= 1 && weight <= Self.maxWeight, "weight must be 1 ... 2^32")
        guard let index = slots[id] else { return false }
        let stride = stride(for: weight)
        entries[index].weight = weight
        entries[index].stride = stride
        entries[index].deadline = now + stride / 2
        entries[index].sequence = takeSequence()
        let position = entries[index].heapPosition
        if position >= 0 {
            siftUp(position)
            siftDown(entries[index].heapPosition)
        }
        return true
    }

    /// Takes a worker out of the picks (it has no free credit); it keeps its deadline.
    ///
    /// - Parameter id: The worker.
    /// - Returns: false when `id` is unknown or already suspended.
    @discardableResult
    public mutating func suspend(_ id: ID) -> Bool {
        guard let index = slots[id], entries[index].heapPosition >= 0 else { return false }
        removeFromHeap(at: entries[index].heapPosition)
        return true
    }

    /// Puts a suspended worker back (its credit returned), at `max(its deadline, now)`.
    ///
    /// - Parameter id: The worker.
    /// - Returns: false when `id` is unknown or not suspended.
    @discardableResult
    public mutating func resume(_ id: ID) -> Bool {
        guard let index = slots[id], entries[index].heapPosition < 0 else { return false }
        entries[index].deadline = max(entries[index].deadline, now)
        entries[index].sequence = takeSequence()
        push(index)
        return true
    }

    /// Picks the eligible worker with the earliest deadline and moves its deadline on by its
    /// stride.
    ///
    /// - Returns: The worker, or nil when no worker is eligible.
    public mutating func pick() -> ID? {
        guard let top = heap.first else { return nil }
        now = entries[top].deadline
        entries[top].deadline += entries[top].stride
        entries[top].sequence = takeSequence()
        siftDown(0)
        let id = entries[top].id
        if now >= rebaseThreshold {
            rebase()
        }
        return id
    }

    // MARK: - Internals

    private func stride(for weight: Int) -> UInt64 {
        switch strategy {
        case .weighted: Self.unitStride / UInt64(weight)
        case .roundRobin: Self.unitStride
        }
    }

    private mutating func takeSequence() -> UInt64 {
        defer { nextSequence &+= 1 }
        return nextSequence
    }

    /// Shifts every deadline down by `now`; order and `max(deadline, now)` are unchanged, since a
    /// deadline behind `now` becomes 0 = the new `now`.
    private mutating func rebase() {
        let base = now
        for index in entries.indices {
            entries[index].deadline = entries[index].deadline >= base ? entries[index].deadline - base : 0
        }
        now = 0
    }

    private func isEarlier(_ a: Int, _ b: Int) -> Bool {
        let x = entries[a]
        let y = entries[b]
        return x.deadline < y.deadline || (x.deadline == y.deadline && x.sequence < y.sequence)
    }

    private mutating func push(_ index: Int) {
        heap.append(index)
        entries[index].heapPosition = heap.count - 1
        siftUp(heap.count - 1)
    }

    private mutating func removeFromHeap(at position: Int) {
        let removed = heap[position]
        let last = heap.removeLast()
        entries[removed].heapPosition = -1
        guard position < heap.count else { return }
        heap[position] = last
        entries[last].heapPosition = position
        siftUp(position)
        siftDown(entries[last].heapPosition)
    }

    private mutating func siftUp(_ start: Int) {
        var child = start
        let index = heap[child]
        while child > 0 {
            let parent = (child - 1) / 2
            guard isEarlier(index, heap[parent]) else { break }
            heap[child] = heap[parent]
            entries[heap[child]].heapPosition = child
            child = parent
        }
        heap[child] = index
        entries[index].heapPosition = child
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        let index = heap[parent]
        let count = heap.count
        while true {
            var child = 2 * parent + 1
            guard child < count else { break }
            if child + 1 < count && isEarlier(heap[child + 1], heap[child]) {
                child += 1
            }
            guard isEarlier(heap[child], index) else { break }
            heap[parent] = heap[child]
            entries[heap[parent]].heapPosition = parent
            parent = child
        }
        heap[parent] = index
        entries[index].heapPosition = parent
    }

    /// Checks the heap order and the position map; for tests.
    func invariantViolation() -> String? {
        if slots.count != entries.count { return "slots \(slots.count) != entries \(entries.count)" }
        for (id, index) in slots where entries[index].id != id { return "slot of \(id) points elsewhere" }
        var inHeap = 0
        for (index, entry) in entries.enumerated() where entry.heapPosition >= 0 {
            inHeap += 1
            if entry.heapPosition >= heap.count || heap[entry.heapPosition] != index { return "position map broken at \(index)" }
            if entry.deadline < now { return "eligible deadline \(entry.deadline) behind now \(now)" }
        }
        if inHeap != heap.count { return "heap holds \(heap.count), entries say \(inHeap)" }
        for position in heap.indices.dropFirst() where isEarlier(heap[position], heap[(position - 1) / 2]) {
            return "heap order broken at \(position)"
        }
        return nil
    }
}

extension StrideScheduler: Sendable where ID: Sendable {}
extension StrideScheduler.Entry: Sendable where ID: Sendable {}
