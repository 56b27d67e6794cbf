/// The non-generic part of ``StrideScheduler``: per-entry deadlines, FIFO sequence numbers and
/// strides, and a binary min-heap of entry indices with a position map for O(log n) removal.
struct DeadlineHeap: Sendable {
    var deadline: [UInt64] = []
    var sequence: [UInt64] = []
    var stride: [UInt64] = []
    /// Each entry's position in `heap`, or -1 while suspended.
    var position: [Int] = []
    var heap: [Int] = []
    var now: UInt64 = 0
    var nextSequence: UInt64 = 0
    var rebaseThreshold: UInt64 = 1 << 62

    /// Adds a suspended entry starting at `now + stride/2`; returns its index.
    mutating func append(stride: UInt64) -> Int {
        deadline.append(now + stride / 2)
        sequence.append(takeSequence())
        self.stride.append(stride)
        position.append(-1)
        return deadline.count - 1
    }

    /// Removes entry `index`; when another entry moved into its place, returns where it came from.
    mutating func remove(_ index: Int) -> Int? {
        if position[index] >= 0 {
            removeFromHeap(at: position[index])
        }
        let last = deadline.count - 1
        var moved: Int?
        if index != last {
            deadline[index] = deadline[last]
            sequence[index] = sequence[last]
            stride[index] = stride[last]
            position[index] = position[last]
            if position[index] >= 0 { heap[position[index]] = index }
            moved = last
        }
        deadline.removeLast()
        sequence.removeLast()
        stride.removeLast()
        position.removeLast()
        return moved
    }

    mutating func restart(_ index: Int, stride newStride: UInt64) {
        stride[index] = newStride
        deadline[index] = now + newStride / 2
        sequence[index] = takeSequence()
        if position[index] >= 0 {
            siftUp(position[index])
            siftDown(position[index])
        }
    }

    mutating func resume(_ index: Int) {
        deadline[index] = max(deadline[index], now)
        sequence[index] = takeSequence()
        push(index)
    }

    mutating func pick() -> Int? {
        guard let top = heap.first else { return nil }
        now = deadline[top]
        deadline[top] += stride[top]
        sequence[top] = takeSequence()
        siftDown(0)
        if now >= rebaseThreshold {
            rebase()
        }
        return top
    }

    mutating func push(_ index: Int) {
        heap.append(index)
        position[index] = heap.count - 1
        siftUp(heap.count - 1)
    }

    mutating func removeFromHeap(at slot: Int) {
        let removed = heap[slot]
        let last = heap.removeLast()
        position[removed] = -1
        guard slot < heap.count else { return }
        heap[slot] = last
        position[last] = slot
        siftUp(slot)
        siftDown(position[last])
    }

    private mutating func takeSequence() -> UInt64 {
        defer { nextSequence &+= 1 }
        return nextSequence
    }

    /// Shifts every deadline down by `now`; order and `max(deadline, now)` are unchanged, since a
    /// deadline behind `now` becomes 0 = the new `now`.
    private mutating func rebase() {
        let base = now
        for index in deadline.indices {
            deadline[index] = deadline[index] >= base ? deadline[index] - base : 0
        }
        now = 0
    }

    @inline(__always)
    private func isEarlier(_ a: Int, _ b: Int) -> Bool {
        deadline[a] < deadline[b] || (deadline[a] == deadline[b] && sequence[a] < sequence[b])
    }

    private mutating func siftUp(_ start: Int) {
        var child = start
        let index = heap[child]
        while child > 0 {
            let parent = (child - 1) / 2
            guard isEarlier(index, heap[parent]) else { break }
            heap[child] = heap[parent]
            position[heap[child]] = child
            child = parent
        }
        heap[child] = index
        position[index] = child
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
            position[heap[parent]] = parent
            parent = child
        }
        heap[parent] = index
        position[index] = parent
    }

    func invariantViolation() -> String? {
        var inHeap = 0
        for index in deadline.indices where position[index] >= 0 {
            inHeap += 1
            if position[index] >= heap.count || heap[position[index]] != index { return "position map broken at \(index)" }
            if deadline[index] < now { return "eligible deadline \(deadline[index]) behind now \(now)" }
        }
        if inHeap != heap.count { return "heap holds \(heap.count), positions say \(inHeap)" }
        for slot in heap.indices.dropFirst() where isEarlier(heap[slot], heap[(slot - 1) / 2]) {
            return "heap order broken at \(slot)"
        }
        return nil
    }
}
