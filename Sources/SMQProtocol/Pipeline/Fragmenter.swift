/// Splits a payload into the fragments of one job, in index order, and computes each fragment's
/// header (index, count, offset, total-length, length, LAST, SHA-256 of the body) and the job
/// digest.
///
/// The payload's length must be known upfront: the job's count is fixed by its first SUBMIT. All
/// fragments but the last have exactly ``fragmentSize`` bytes; an empty payload is one fragment of
/// length 0 (so every job has at least one fragment, as `count ≥ 1` requires).
///
/// Three ways to feed it, all without copying the payload:
/// - from bytes in memory: ``next(in:)`` returns the header and the body's range;
/// - from a file: ``next(from:into:)`` reads each body straight into the caller's buffer — e.g. the
///   outgoing message buffer just after ``Fragment/write(into:command:tag:service:header:)``'s
///   prefix (write the prefix once the header is known, or reserve
///   ``Fragment/bodyOffset(serviceLength:)`` bytes before);
/// - from any reader: ``next(into:fill:)``.
///
/// The job digest is SHA-256 of the fragment digests concatenated in index order, so it costs no
/// second pass over the payload.
public struct Fragmenter: Sendable {
    /// The default fragment size: 256 KiB.
    public static let defaultFragmentSize = 256 * 1024

    /// The job.
    public let jobID: JobID
    /// The payload's length.
    public let totalLength: UInt64
    /// The length of every fragment but the last.
    public let fragmentSize: Int
    /// The number of fragments: `max(1, ⌈totalLength / fragmentSize⌉)`.
    public let count: UInt32
    /// The index of the next fragment to produce.
    public private(set) var nextIndex: UInt32 = 0
    /// SHA-256 of the fragment digests in index order; set once the last fragment is produced.
    public private(set) var jobDigest: Digest?

    private var bodyHasher = SHA256()
    private var jobHasher = SHA256()

    /// Plans the fragments of a payload.
    ///
    /// - Parameters:
    ///   - jobID: The job (``JobID/random()`` for a new one).
    ///   - totalLength: The payload's length in bytes.
    ///   - fragmentSize: The fragment size, 1 byte to `limits.maxFragment`.
    ///   - limits: The limits the fragments must respect.
    /// - Throws: ``PipelineError`` ``PipelineError/Code/invalidFragmentSize``, or
    ///   ``PipelineError/Code/tooManyFragments`` when more than 2^32 − 1 fragments would be needed.
    public init(
        jobID: JobID, totalLength: UInt64, fragmentSize: Int = Fragmenter.defaultFragmentSize,
        limits: ProtocolLimits = .default
    ) throws(PipelineError) {
        guard fragmentSize >= 1 && fragmentSize <= limits.maxFragment else {
            throw PipelineError(.invalidFragmentSize, expected: UInt64(limits.maxFragment), actual: UInt64(max(0, fragmentSize)))
        }
        let size = UInt64(fragmentSize)
        let fragments = totalLength == 0 ? 1 : totalLength / size + (totalLength % size == 0 ? 0 : 1)
        guard fragments <= UInt64(UInt32.max) else {
            throw PipelineError(.tooManyFragments, expected: UInt64(UInt32.max), actual: fragments)
        }
        self.jobID = jobID
        self.totalLength = totalLength
        self.fragmentSize = fragmentSize
        self.count = UInt32(fragments)
    }

    /// Whether every fragment has been produced.
    public var isFinished: Bool { nextIndex == count }

    /// Where fragment `index` lies in the payload.
    ///
    /// - Parameter index: A fragment index below ``count``.
    /// - Returns: Its byte range in the payload.
    public func range(ofFragment index: UInt32) -> Range<UInt64> {
        precondition(index < count, "fragment index out of range")
        let start = UInt64(index) * UInt64(fragmentSize)
        return start..<min(start + UInt64(fragmentSize), totalLength)
    }

    /// The length of the next fragment's body, or nil when every fragment has been produced: the
    /// number of bytes the caller must provide next.
    public var nextLength: Int? {
        isFinished ? nil : range(ofFragment: nextIndex).count
    }

    /// Produces the header of the next fragment, whose body the caller already holds.
    ///
    /// - Parameter body: Exactly ``nextLength`` bytes: the next fragment's body.
    /// - Returns: Its header, with its SHA-256 digest.
    /// - Throws: ``PipelineError`` ``PipelineError/Code/alreadyFinished`` or
    ///   ``PipelineError/Code/payloadLengthMismatch``.
    public mutating func header(forNextBody body: UnsafeRawBufferPointer) throws(PipelineError) -> FragmentHeader {
        guard let length = nextLength else { throw PipelineError(.alreadyFinished) }
        guard body.count == length else {
            throw PipelineError(.payloadLengthMismatch, index: nextIndex, expected: UInt64(length), actual: UInt64(body.count))
        }
        let digest = bodyHasher.digest(of: body)
        let header = FragmentHeader(
            jobID: jobID, index: nextIndex, count: count, offset: range(ofFragment: nextIndex).lowerBound,
            totalLength: totalLength, length: UInt32(length), digest: digest)
        jobHasher.update(digest)
        nextIndex += 1
        if isFinished {
            jobDigest = jobHasher.finalize()
        }
        return header
    }

    /// Produces the next fragment of a payload held in memory.
    ///
    /// - Parameter payload: The whole payload (``totalLength`` bytes), the same at every call.
    /// - Returns: The next fragment's header and its body's range in `payload`, or nil when every
    ///   fragment has been produced.
    /// - Throws: ``PipelineError`` ``PipelineError/Code/payloadLengthMismatch`` when `payload`
    ///   is not ``totalLength`` bytes.
    public mutating func next(in payload: UnsafeRawBufferPointer) throws(PipelineError)
        -> (header: FragmentHeader, body: Range<Int>)?
    {
        guard UInt64(payload.count) == totalLength else {
            throw PipelineError(.payloadLengthMismatch, expected: totalLength, actual: UInt64(payload.count))
        }
        guard !isFinished else { return nil }
        let range = range(ofFragment: nextIndex)
        let body = Int(range.lowerBound)..<Int(range.upperBound)
        let header = try header(forNextBody: UnsafeRawBufferPointer(rebasing: payload[body]))
        return (header, body)
    }

    /// Produces the next fragment by letting `fill` write its body into `destination`.
    ///
    /// `fill` is called until the body is complete (short reads are fine) and must return 0 only
    /// at the end of the source. After the last fragment, `fill` is asked for one more byte: a
    /// source that still has bytes grew while it was read, and the job fails before its last
    /// fragment is sent, so it can never complete with the wrong payload.
    ///
    /// - Parameters:
    ///   - destination: Where the body goes: its first ``nextLength`` bytes.
    ///   - fill: Writes up to `buffer.count` bytes of the source into `buffer`, returns how many.
    /// - Returns: The header of the fragment now in `destination[0..<header.length]`, or nil when
    ///   every fragment has been produced.
    /// - Throws: ``PipelineError`` ``PipelineError/Code/sourceShrank``,
    ///   ``PipelineError/Code/sourceGrew``, or what `fill` throws.
    public mutating func next(
        into destination: UnsafeMutableRawBufferPointer,
        fill: (UnsafeMutableRawBufferPointer) throws(PipelineError) -> Int
    ) throws(PipelineError) -> FragmentHeader? {
        guard let length = nextLength else { return nil }
        precondition(destination.count >= length, "destination smaller than the next fragment")
        var filled = 0
        while filled < length {
            let n = try fill(UnsafeMutableRawBufferPointer(rebasing: destination[filled..<length]))
            precondition(n >= 0 && n <= length - filled, "fill returned an impossible count")
            if n == 0 {
                throw PipelineError(
                    .sourceShrank, index: nextIndex, expected: totalLength,
                    actual: range(ofFragment: nextIndex).lowerBound + UInt64(filled))
            }
            filled += n
        }
        if nextIndex == count - 1 {
            var probe: UInt8 = 0
            let extra = try withUnsafeMutableBytes(of: &probe) { (byte) throws(PipelineError) -> Int in try fill(byte) }
            if extra > 0 {
                throw PipelineError(.sourceGrew, index: nextIndex, expected: totalLength)
            }
        }
        return try header(forNextBody: UnsafeRawBufferPointer(rebasing: destination[0..<length]))
    }

    /// Produces the next fragment by reading its body from a file straight into `destination`.
    ///
    /// - Parameters:
    ///   - file: The payload, opened when the fragmenter was made with `totalLength: file.size`.
    ///   - destination: Where the body goes: its first ``nextLength`` bytes.
    /// - Returns: The header of the fragment now in `destination[0..<header.length]`, or nil when
    ///   every fragment has been produced.
    /// - Throws: ``PipelineError``: ``PipelineError/Code/readFailed``, or
    ///   ``PipelineError/Code/sourceShrank`` / ``PipelineError/Code/sourceGrew`` when the file
    ///   changed length while it was read.
    public mutating func next(from file: borrowing PayloadFile, into destination: UnsafeMutableRawBufferPointer)
        throws(PipelineError) -> FragmentHeader?
    {
        let path = file.path
        let fd = file.fileDescriptor
        do {
            return try next(into: destination) { (buffer) throws(PipelineError) -> Int in
                try PayloadFile.read(fd, into: buffer, path: path)
            }
        } catch {
            var error = error
            error.path = error.path ?? path
            throw error
        }
    }
}
