/// Gathers a job's results and hands their bodies to the caller in index order, each index
/// exactly once, checking every result on the way.
///
/// The client keeps at most `window` fragments outstanding, counting every fragment sent but not
/// yet handed to the caller, so a result can only be for an index in
/// `nextIndex ..< nextIndex + window`, and at most `window − 1` results wait out of order. A
/// result beyond that range means the peer broke the window contract: an error, not something to
/// buffer.
///
/// Use it in two steps per received RESULT, so the in-order body goes straight from the message
/// buffer to the caller without a copy:
/// ```swift
/// switch try gatherer.accept(header: view.header, body: view.body) {
/// case .deliverNow: try sink.write(view.body)       // result `nextIndex - 1`, in order
/// case .held, .duplicate: break
/// }
/// while try gatherer.deliverNextHeld({ _, body in try sink.write(body) }) {}
/// ```
/// Only a result that arrives early is copied, once, into storage the gatherer owns (and reuses).
///
/// The result job digest is SHA-256 of the result digests in index order.
public struct Gatherer: Sendable {
    /// What ``accept(header:body:)`` did with a result.
    public enum Outcome: Hashable, Sendable {
        /// The result is the next in order: the caller must consume the body now, then call
        /// ``deliverNextHeld(_:)`` until it returns false.
        case deliverNow
        /// The result came early: it was copied and will come out of ``deliverNextHeld(_:)``.
        case held
        /// The index was already accepted: the result was dropped (and counted in
        /// ``duplicates``), not an error.
        case duplicate
    }

    private struct Held: Sendable {
        var digest: Digest
        var body: [UInt8]
    }

    /// The job.
    public let jobID: JobID
    /// The number of results the job has.
    public let count: UInt32
    /// The most fragments the client keeps outstanding.
    public let window: Int
    /// The index of the next result to hand to the caller.
    public private(set) var nextIndex: UInt32 = 0
    /// How many duplicate results were dropped.
    public private(set) var duplicates = 0
    /// How many results wait out of order.
    public private(set) var heldCount = 0
    /// SHA-256 of the result digests in index order; set once every result has been handed over.
    public private(set) var jobDigest: Digest?

    private var slots: [Held?]
    private var spareBuffers: [[UInt8]] = []
    private var bodyHasher = SHA256()
    private var jobHasher = SHA256()

    /// Starts gathering a job's results.
    ///
    /// - Parameters:
    ///   - jobID: The job whose results are accepted.
    ///   - count: The job's fragment count, ≥ 1.
    ///   - window: The client's window, ≥ 1.
    public init(jobID: JobID, count: UInt32, window: Int) {
        precondition(count >= 1, "a job has at least one fragment")
        precondition(window >= 1, "the window must be at least 1")
        self.jobID = jobID
        self.count = count
        self.window = window
        slots = Array(repeating: nil, count: min(window, Int(count)))
    }

    /// Whether every result has been handed over.
    public var isComplete: Bool { nextIndex == count }

    /// Whether ``deliverNextHeld(_:)`` has a result to hand over.
    public var hasDeliverable: Bool {
        !isComplete && heldCount > 0 && slots[slot(nextIndex)] != nil
    }

    /// Checks a result and decides what to do with it.
    ///
    /// Checks, in order: job id, count, `index < count`, body length, duplicate, window, and
    /// SHA-256 of the body against the header's digest (duplicates are not hashed).
    ///
    /// - Parameters:
    ///   - header: The result's header (from a RESULT the codec accepted).
    ///   - body: The result's body.
    /// - Returns: ``Outcome/deliverNow`` (consume `body` now), ``Outcome/held`` or
    ///   ``Outcome/duplicate``.
    /// - Throws: ``PipelineError``: ``PipelineError/Code/jobMismatch``,
    ///   ``PipelineError/Code/countMismatch``, ``PipelineError/Code/indexOutOfRange``,
    ///   ``PipelineError/Code/lengthMismatch``, ``PipelineError/Code/windowExceeded`` or
    ///   ``PipelineError/Code/digestMismatch``; each ends the job.
    public mutating func accept(header: FragmentHeader, body: UnsafeRawBufferPointer) throws(PipelineError) -> Outcome {
        let index = header.index
        guard header.jobID == jobID else { throw PipelineError(.jobMismatch, index: index) }
        guard header.count == count else {
            throw PipelineError(.countMismatch, index: index, expected: UInt64(count), actual: UInt64(header.count))
        }
        guard index < count else {
            throw PipelineError(.indexOutOfRange, index: index, expected: UInt64(count), actual: UInt64(index))
        }
        guard body.count == Int(header.length) else {
            throw PipelineError(.lengthMismatch, index: index, expected: UInt64(header.length), actual: UInt64(body.count))
        }
        if index < nextIndex {
            duplicates += 1
            return .duplicate
        }
        guard UInt64(index - nextIndex) < UInt64(window) else {
            throw PipelineError(.windowExceeded, index: index, expected: UInt64(nextIndex), actual: UInt64(index))
        }
        let slot = slot(index)
        if index != nextIndex && slots[slot] != nil {
            duplicates += 1
            return .duplicate
        }
        let digest = bodyHasher.digest(of: body)
        guard digest == header.digest else { throw PipelineError(.digestMismatch, index: index) }
        if index == nextIndex {
            advance(past: digest)
            return .deliverNow
        }
        var storage = spareBuffers.popLast() ?? []
        storage.append(contentsOf: body)
        slots[slot] = Held(digest: digest, body: storage)
        heldCount += 1
        return .held
    }

    /// Hands the next result over if it is waiting.
    ///
    /// Call it until it returns false after every ``Outcome/deliverNow`` (and after a
    /// ``Outcome/held``, which cannot make anything deliverable but costs nothing to check).
    ///
    /// - Parameter consume: Receives the index and the body, valid only during the call. If it
    ///   throws, the result still counts as handed over; the caller ends the job.
    /// - Returns: true when a result was handed over.
    /// - Throws: What `consume` throws.
    public mutating func deliverNextHeld<E: Error>(_ consume: (UInt32, UnsafeRawBufferPointer) throws(E) -> Void)
        throws(E) -> Bool
    {
        guard hasDeliverable, let held = slots[slot(nextIndex)] else { return false }
        slots[slot(nextIndex)] = nil
        heldCount -= 1
        let index = nextIndex
        advance(past: held.digest)
        var body = held.body
        defer {
            body.removeAll(keepingCapacity: true)
            spareBuffers.append(body)
        }
        // Array.withUnsafeBytes only rethrows untyped errors; a Result carries E through it.
        let outcome: Result<Void, E> = body.withUnsafeBytes { raw in
            do throws(E) {
                try consume(index, raw)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try outcome.get()
        return true
    }

    /// Ends gathering and returns the result job digest.
    ///
    /// - Returns: SHA-256 of the result digests in index order.
    /// - Throws: ``PipelineError`` ``PipelineError/Code/incomplete`` naming the first missing
    ///   index when not every result has been handed over: never a silently short result.
    public func finish() throws(PipelineError) -> Digest {
        guard let jobDigest, isComplete else {
            throw PipelineError(
                .incomplete, index: nextIndex, expected: UInt64(count), actual: UInt64(nextIndex) + UInt64(heldCount))
        }
        return jobDigest
    }

    private func slot(_ index: UInt32) -> Int {
        Int(index) % slots.count
    }

    private mutating func advance(past digest: Digest) {
        jobHasher.update(digest)
        nextIndex += 1
        if isComplete {
            jobDigest = jobHasher.finalize()
        }
    }
}
