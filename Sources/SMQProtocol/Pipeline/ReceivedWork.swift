/// What a worker takes from a WORK the codec accepted: the body checked against its digest, and
/// every header field a handler sees as an `Int`.
///
/// This is the worker's receive step, kept apart from its socket so that the libFuzzer target
/// (`scripts/fuzz receive`) runs exactly what a worker runs. The codec's checks (C33) already
/// make every conversion safe; this step converts with `Int(exactly:)` all the same and refuses
/// what does not fit, so no header a peer can write makes a worker trap.
public struct ReceivedWork: Hashable, Sendable {
    /// The job.
    public let jobID: JobID
    /// The fragment's index, below ``count``.
    public let index: Int
    /// The job's fragment count.
    public let count: Int
    /// The fragment's offset in the payload.
    public let offset: Int
    /// The payload's length.
    public let totalLength: Int
    /// The delivery id, to answer with.
    public let deliveryID: UInt64

    /// Checks a WORK's body against its digest and reads its header.
    ///
    /// - Parameters:
    ///   - fragment: A WORK that ``Message/parse(_:limits:)`` accepted.
    ///   - hasher: The worker's reusable SHA-256 context.
    /// - Throws: ``ProtocolError`` with failure code `400` (``ProtocolError/Code/digestMismatch``
    ///   or ``ProtocolError/Code/totalLengthOutOfRange``) naming the job and index; the worker
    ///   REJECTs the delivery with it.
    public init(_ fragment: FragmentView, hasher: inout SHA256) throws(ProtocolError) {
        let header = fragment.header
        func failure(_ code: ProtocolError.Code, value: UInt64? = nil) -> ProtocolError {
            var error = ProtocolError(code, command: fragment.command, value: value)
            error.jobID = header.jobID
            error.index = header.index
            error.tag = fragment.tag
            error.failureCode = .malformed
            return error
        }
        guard hasher.digest(of: fragment.body) == header.digest else { throw failure(.digestMismatch) }
        guard let offset = Int(exactly: header.offset), let total = Int(exactly: header.totalLength) else {
            throw failure(.totalLengthOutOfRange, value: header.totalLength)
        }
        jobID = header.jobID
        index = Int(header.index)
        count = Int(header.count)
        self.offset = offset
        totalLength = total
        deliveryID = fragment.tag
    }
}
