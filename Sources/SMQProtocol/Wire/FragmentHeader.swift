/// The flags byte of a fragment header.
///
/// Bit 0 is LAST; every other bit is reserved and must be 0 (receivers refuse it with `400`), so a
/// future flag needs a new header version.
public struct FragmentFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8

    /// Wraps a flags byte.
    ///
    /// - Parameter rawValue: The byte at offset 1 of the header.
    public init(rawValue: UInt8) {
        self.rawValue = rawValue
    }

    /// The last fragment of the job: set exactly when `index = count − 1`.
    public static let last = FragmentFlags(rawValue: 1 << 0)

    /// Every bit SMQ/1 defines.
    public static let known: FragmentFlags = [.last]
}

/// The 80-byte fragment header of §2.2, as a value.
///
/// Reading one (``init(loadingFrom:at:)``) checks nothing, so a receiver can name the job and
/// index of a bad fragment; ``validate(bodyLength:isRequest:limits:)`` then applies every check of
/// §2.2. The initializer for senders derives the LAST flag, so a sender cannot get it wrong.
public struct FragmentHeader: Hashable, Sendable {
    /// The size of the header on the wire.
    public static let byteCount = 80
    /// The only header version SMQ/1 defines.
    public static let currentVersion: UInt8 = 1

    /// Header version: 1.
    public var version: UInt8
    /// Flags: LAST, the rest 0.
    public var flags: FragmentFlags
    /// Reserved: 0.
    public var reserved: UInt16
    /// The job, chosen by the client.
    public var jobID: JobID
    /// The 0-based fragment index, `index < count`.
    public var index: UInt32
    /// The number of fragments in the job, ≥ 1.
    public var count: UInt32
    /// The fragment's byte offset in the payload; 0 in results.
    public var offset: UInt64
    /// The payload's length in bytes; 0 in results.
    public var totalLength: UInt64
    /// The length of the body.
    public var length: UInt32
    /// SHA-256 of the body.
    public var digest: Digest

    /// Makes a well-formed header: version 1, reserved 0, LAST set exactly on the last index.
    ///
    /// - Parameters:
    ///   - jobID: The job.
    ///   - index: The fragment's index, below `count`.
    ///   - count: The number of fragments in the job.
    ///   - offset: The fragment's offset in the payload (0 for a result).
    ///   - totalLength: The payload's length (0 for a result).
    ///   - length: The body's length.
    ///   - digest: SHA-256 of the body.
    public init(
        jobID: JobID, index: UInt32, count: UInt32, offset: UInt64 = 0, totalLength: UInt64 = 0,
        length: UInt32, digest: Digest
    ) {
        self.version = Self.currentVersion
        self.flags = count > 0 && index == count - 1 ? .last : []
        self.reserved = 0
        self.jobID = jobID
        self.index = index
        self.count = count
        self.offset = offset
        self.totalLength = totalLength
        self.length = length
        self.digest = digest
    }

    /// Reads the 80 bytes as they are, without checking them.
    ///
    /// - Parameters:
    ///   - buffer: The bytes to read from.
    ///   - offset: Where the header starts.
    /// - Precondition: `offset + 80 <= buffer.count`.
    public init(loadingFrom buffer: UnsafeRawBufferPointer, at offset: Int = 0) {
        precondition(offset >= 0 && offset + Self.byteCount <= buffer.count, "buffer too small for a fragment header")
        version = buffer[offset]
        flags = FragmentFlags(rawValue: buffer[offset + 1])
        reserved = buffer.loadBigEndian(at: offset + 2)
        jobID = JobID(loadingFrom: buffer, at: offset + 4)
        index = buffer.loadBigEndian(at: offset + 20)
        count = buffer.loadBigEndian(at: offset + 24)
        self.offset = buffer.loadBigEndian(at: offset + 28)
        totalLength = buffer.loadBigEndian(at: offset + 36)
        length = buffer.loadBigEndian(at: offset + 44)
        digest = Digest(loadingFrom: buffer, at: offset + 48)
    }

    /// Writes the 80 bytes as they are.
    ///
    /// - Parameters:
    ///   - buffer: The destination.
    ///   - offset: Where the header goes.
    /// - Precondition: `offset + 80 <= buffer.count`.
    public func write(to buffer: UnsafeMutableRawBufferPointer, at offset: Int = 0) {
        precondition(offset >= 0 && offset + Self.byteCount <= buffer.count, "buffer too small for a fragment header")
        buffer[offset] = version
        buffer[offset + 1] = flags.rawValue
        buffer.storeBigEndian(reserved, at: offset + 2)
        jobID.write(to: buffer, at: offset + 4)
        buffer.storeBigEndian(index, at: offset + 20)
        buffer.storeBigEndian(count, at: offset + 24)
        buffer.storeBigEndian(self.offset, at: offset + 28)
        buffer.storeBigEndian(totalLength, at: offset + 36)
        buffer.storeBigEndian(length, at: offset + 44)
        digest.write(to: buffer, at: offset + 48)
    }

    /// Whether this is the last fragment of its job, by its flag.
    public var isLast: Bool { flags.contains(.last) }

    /// Applies every receiver check of §2.2, in this order: version, flags, reserved, `index <
    /// count`, LAST exactly on `count − 1`, body ≤ max-fragment, `length` = body bytes, and for
    /// requests `offset + length ≤ total-length`, `total-length ≤ min(count × max-fragment,
    /// 2^63 − 1)`, fragment 0 at offset 0 and the last fragment ending at total-length (C33). The digest is not checked here: the broker does
    /// not hash, and workers and clients compare it with ``SHA256`` on the body.
    ///
    /// - Parameters:
    ///   - bodyLength: The number of bytes that follow the header in the message.
    ///   - isRequest: true for SUBMIT and WORK (the offset check applies), false for DONE and
    ///     RESULT.
    ///   - limits: The receiver's max-fragment.
    /// - Throws: ``ProtocolError`` carrying ``jobID`` and ``index``, with failure code `413` when
    ///   the body exceeds max-fragment and `400` for every other check.
    public func validate(bodyLength: Int, isRequest: Bool, limits: ProtocolLimits) throws(ProtocolError) {
        if version != Self.currentVersion {
            throw failure(.badHeaderVersion, value: UInt64(version))
        }
        if !FragmentFlags.known.isSuperset(of: flags) {
            throw failure(.badFlags, value: UInt64(flags.rawValue))
        }
        if reserved != 0 {
            throw failure(.reservedNotZero, value: UInt64(reserved))
        }
        if index >= count {
            throw failure(.indexOutOfRange, value: UInt64(index), limit: UInt64(count))
        }
        if isLast != (index == count - 1) {
            throw failure(.lastFlagMismatch, value: UInt64(index), limit: UInt64(count))
        }
        // Oversize is judged on the bytes that came, whatever the header claims: they are what the
        // receiver would have to hold. A header that claims more than came is a mismatch (400).
        if bodyLength > limits.maxFragment {
            throw failure(
                .fragmentTooLarge, value: UInt64(bodyLength), limit: UInt64(limits.maxFragment), code: .tooLarge)
        }
        if Int(length) != bodyLength {
            throw failure(.lengthMismatch, value: UInt64(length), limit: UInt64(bodyLength))
        }
        if isRequest {
            // Every later conversion of offset and total-length to Int (a worker's WorkHeader, a
            // gatherer's placement) is safe because of these checks (PROTOCOL.md C33).
            let (end, overflow) = offset.addingReportingOverflow(UInt64(length))
            if overflow || end > totalLength {
                throw failure(.offsetOutOfRange, value: overflow ? UInt64.max : end, limit: totalLength)
            }
            // count < 2^32 and max-fragment < 2^32, so the product fits in 64 bits.
            let carried = min(UInt64(count) &* UInt64(limits.maxFragment), Self.maxTotalLength)
            if totalLength > carried {
                throw failure(.totalLengthOutOfRange, value: totalLength, limit: carried)
            }
            if index == 0 && offset != 0 {
                throw failure(.firstFragmentNotAtStart, value: offset, limit: 0)
            }
            if isLast && end != totalLength {
                throw failure(.lastFragmentNotAtEnd, value: end, limit: totalLength)
            }
        }
    }

    /// The largest total-length a request may carry: 2^63 − 1, so that every offset and length
    /// of a valid request is a non-negative `Int` on a 64-bit receiver.
    public static let maxTotalLength = UInt64(Int64.max)

    private func failure(
        _ code: ProtocolError.Code, value: UInt64, limit: UInt64? = nil, code failureCode: FailureCode = .malformed
    ) -> ProtocolError {
        var error = ProtocolError(code, value: value, limit: limit)
        error.jobID = jobID
        error.index = index
        error.failureCode = failureCode
        return error
    }
}
