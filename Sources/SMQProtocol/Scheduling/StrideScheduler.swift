/// Picks the worker for the next fragment of a service (§5): a stride / earliest-deadline
/// scheduler on an indexed binary heap.
///
/// Every worker has a virtual start and a virtual deadline = start + stride, `2^32 / weight`. A
/// pick takes, among the workers whose start has come (start ≤ ``now``), the one with the earliest
/// deadline (ties: the one that got its deadline first), and moves it on by its stride; ``now``
/// advances by `2^32 / (sum of the active workers' weights)` per pick (WF²Q+). A worker therefore
/// gets picks in proportion to its weight, spread evenly: at every step within one pick of its
/// ideal share and of nginx's smooth weighted round-robin (PROTOCOL.md C20, C44). A worker
/// entering, or changing weight, starts at ``now``; a worker whose credit returns re-enters at
/// `max(its start, now)`, so time without credit earns it no burst of picks.
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

    /// The strategy, fixed at creation.
    public let strategy: Strategy

    // Struct of arrays: the heap works on concrete UInt64 arrays only (fast even where this
    // generic type is not specialized); `ids`, `weights` and `slots` are touched once per call.
    private(set) var core = DeadlineHeap()
    private var ids: [ID] = []
    private var weights: [Int] = []
    private var slots: [ID: Int] = [:]

    /// The scheduler's virtual time.
    public var now: UInt64 { core.now }

    /// When `now` passes this, every deadline is shifted down so that virtual time never
    /// overflows (a weight-1 worker alone would otherwise reach 2^64 after 2^32 picks: under a day
    /// at 60 k picks/s). Internal so tests can bring it close.
    var rebaseThreshold: UInt64 {
        get { core.rebaseThreshold }
        set { core.rebaseThreshold = newValue }
    }

    /// Makes an empty scheduler.
    ///
    /// - Parameter strategy: ``Strategy/weighted`` (default) or ``Strategy/roundRobin``.
    public init(strategy: Strategy = .weighted) {
        self.strategy = strategy
    }

    /// The number of workers, eligible or suspended.
    public var count: Int { ids.count }
    /// The number of workers that can be picked (not suspended).
    public var eligibleCount: Int { core.activeCount }
    /// Whether no worker is known.
    public var isEmpty: Bool { ids.isEmpty }

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
        slots[id].map { core.position[$0] >= 0 } ?? false
    }

    /// The weight `id` was given (also under ``Strategy/roundRobin``, which ignores it).
    ///
    /// - Parameter id: A worker.
    /// - Returns: Its weight, or nil when unknown.
    public func weight(of id: ID) -> Int? {
        slots[id].map { weights[$0] }
    }

    /// The virtual time of `id`'s next turn.
    ///
    /// - Parameter id: A worker.
    /// - Returns: Its deadline, or nil when unknown.
    public func deadline(of id: ID) -> UInt64? {
        slots[id].map { core.deadline[$0] }
    }

    /// The worker ``pick()`` would return, without picking it.
    public var peek: ID? {
        core.peek().map { ids[$0] }
    }

    /// Adds an eligible worker, starting at ``now``.
    ///
    /// - Parameters:
    ///   - id: The worker (under §1, a key: its connections share one weight).
    ///   - weight: 1 ... ``maxWeight``.
    /// - Returns: false (and changes nothing) when `id` is already known.
    @discardableResult
    public mutating func add(_ id: ID, weight: Int) -> Bool {
        precondition(weight >= 1 && weight <= Self.maxWeight, "weight must be 1 ... 2^32")
        guard slots[id] == nil else { return false }
        let index = core.append(stride: stride(for: weight), weight: effectiveWeight(weight))
        ids.append(id)
        weights.append(weight)
        slots[id] = index
        core.activate(index)
        return true
    }

    /// Removes a worker, eligible or suspended.
    ///
    /// - Parameter id: The worker.
    /// - Returns: false when `id` was not known.
    @discardableResult
    public mutating func remove(_ id: ID) -> Bool {
        guard let index = slots.removeValue(forKey: id) else { return false }
        // Storage stays dense: the last entry takes the hole.
        if let moved = core.remove(index) {
            ids[index] = ids[moved]
            weights[index] = weights[moved]
            slots[ids[index]] = index
        }
        ids.removeLast()
        weights.removeLast()
        return true
    }

    /// Changes a worker's weight; it starts again at ``now`` with its new stride.
    ///
    /// - Parameters:
    ///   - id: The worker.
    ///   - weight: 1 ... ``maxWeight``.
    /// - Returns: false when `id` is not known.
    @discardableResult
    public mutating func setWeight(_ id: ID, weight: Int) -> Bool {
        precondition(weight >= 1 && weight <= Self.maxWeight, "weight must be 1 ... 2^32")
        guard let index = slots[id] else { return false }
        weights[index] = weight
        core.restart(index, stride: stride(for: weight), weight: effectiveWeight(weight))
        return true
    }

    /// Takes a worker out of the picks (it has no free credit); it keeps its deadline.
    ///
    /// - Parameter id: The worker.
    /// - Returns: false when `id` is unknown or already suspended.
    @discardableResult
    public mutating func suspend(_ id: ID) -> Bool {
        guard let index = slots[id], core.position[index] >= 0 else { return false }
        core.suspend(index)
        return true
    }

    /// Puts a suspended worker back (its credit returned), starting at `max(its start, now)`.
    ///
    /// - Parameter id: The worker.
    /// - Returns: false when `id` is unknown or not suspended.
    @discardableResult
    public mutating func resume(_ id: ID) -> Bool {
        guard let index = slots[id], core.position[index] < 0 else { return false }
        core.resume(index)
        return true
    }

    /// Picks, among the workers whose start has come, the one with the earliest deadline, and
    /// moves it on by its stride.
    ///
    /// - Returns: The worker, or nil when no worker is eligible.
    public mutating func pick() -> ID? {
        core.pick().map { ids[$0] }
    }

    private func effectiveWeight(_ weight: Int) -> UInt64 {
        switch strategy {
        case .weighted: UInt64(weight)
        case .roundRobin: 1
        }
    }

    private func stride(for weight: Int) -> UInt64 {
        switch strategy {
        case .weighted: Self.unitStride / UInt64(weight)
        case .roundRobin: Self.unitStride
        }
    }

    /// Checks the heap order and the position maps; for tests.
    func invariantViolation() -> String? {
        if slots.count != ids.count || weights.count != ids.count || core.deadline.count != ids.count {
            return "storage sizes differ"
        }
        for (id, index) in slots where ids[index] != id { return "slot of \(id) points elsewhere" }
        return core.invariantViolation()
    }
}

extension StrideScheduler: Sendable where ID: Sendable {}
