extension Message {
    /// Parses one SMQ/1 message (one ZeroMQ frame) in place, applying every check of §2.
    ///
    /// Nothing is copied: fragment bodies, services and reasons are views into `bytes`. The
    /// fragment digest is not checked (the broker does not hash; workers and clients do, with
    /// ``SHA256``).
    ///
    /// - Parameters:
    ///   - bytes: The received frame.
    ///   - limits: The receiver's limits (max-fragment).
    /// - Returns: The message, valid while `bytes` is.
    /// - Throws: ``ProtocolError``: unreadable (``ProtocolError/isUnreadable``: drop and log), or,
    ///   for a fragment whose header could be read, with the job id, index and the failure code
    ///   (`400`, or `413` for an oversized body) to answer with.
    public static func parse(_ bytes: UnsafeRawBufferPointer, limits: ProtocolLimits = .default) throws(ProtocolError)
        -> Message
    {
        guard bytes.count >= envelopeSize else {
            let signature: [UInt8] = [0x53, 0x4D, 0x51]
            if bytes.prefix(3).elementsEqual(signature.prefix(min(3, bytes.count))) {
                throw ProtocolError(.truncated, value: UInt64(bytes.count), limit: UInt64(envelopeSize))
            }
            throw ProtocolError(.badSignature)
        }
        guard hasSignature(bytes) else { throw ProtocolError(.badSignature) }
        guard bytes[3] == SMQProtocolVersion.current else {
            throw ProtocolError(.unsupportedVersion, value: UInt64(bytes[3]))
        }
        let command = Command(rawValue: bytes[4])
        switch command {
        case .submit:
            return .submit(try parseFragment(bytes, command: command, limits: limits))
        case .work:
            return .work(try parseFragment(bytes, command: command, limits: limits))
        case .done:
            return .done(try parseFragment(bytes, command: command, limits: limits))
        case .result:
            return .result(try parseFragment(bytes, command: command, limits: limits))
        case .cancel:
            try requireSize(bytes, exactly: 21, command: command)
            return .cancel(jobID: JobID(loadingFrom: bytes, at: 5))
        case .ping:
            try requireSize(bytes, exactly: 5, command: command)
            return .ping
        case .pong:
            try requireSize(bytes, exactly: 5, command: command)
            return .pong
        case .heartbeat:
            try requireSize(bytes, exactly: 5, command: command)
            return .heartbeat
        case .failed:
            try requireSize(bytes, atLeast: 27, command: command)
            return .failed(
                jobID: JobID(loadingFrom: bytes, at: 5),
                index: bytes.loadBigEndian(at: 21),
                code: FailureCode(rawValue: bytes.loadBigEndian(at: 25)),
                reason: try reason(bytes, from: 27, command: command))
        case .busy:
            try requireSize(bytes, exactly: 29, command: command)
            return .busy(
                jobID: JobID(loadingFrom: bytes, at: 5),
                index: bytes.loadBigEndian(at: 21),
                retryAfterMilliseconds: bytes.loadBigEndian(at: 25))
        case .ready:
            try requireSize(bytes, atLeast: 15, command: command)
            let service = try serviceRange(bytes, command: command)
            try requireSize(bytes, exactly: service.upperBound, command: command)
            return .ready(
                credit: bytes.loadBigEndian(at: 5),
                heartbeatMilliseconds: bytes.loadBigEndian(at: 9),
                service: ServiceView(bytes: UnsafeRawBufferPointer(rebasing: bytes[service])))
        case .reject:
            try requireSize(bytes, atLeast: 16, command: command)
            let retryable = bytes[15]
            guard retryable <= 1 else { throw ProtocolError(.badField, command: command, value: UInt64(retryable)) }
            return .reject(
                deliveryID: bytes.loadBigEndian(at: 5),
                code: FailureCode(rawValue: bytes.loadBigEndian(at: 13)),
                retryable: retryable == 1,
                reason: try reason(bytes, from: 16, command: command))
        case .disconnect:
            return .disconnect(reason: try reason(bytes, from: 5, command: command))
        case .credit:
            try requireSize(bytes, exactly: 9, command: command)
            return .credit(bytes.loadBigEndian(at: 5))
        case .deadline:
            try requireSize(bytes, exactly: 17, command: command)
            return .deadline(deliveryID: bytes.loadBigEndian(at: 5), timeLeftMilliseconds: bytes.loadBigEndian(at: 13))
        default:
            throw ProtocolError(.unknownCommand, command: command, value: UInt64(command.rawValue))
        }
    }

    /// The command of a frame that has the SMQ/1 envelope, without parsing the rest: e.g. to
    /// check a peer's role before anything else.
    ///
    /// - Parameter bytes: A received frame.
    /// - Returns: The command byte, or nil when the frame has no SMQ/1 version-1 envelope.
    public static func peekCommand(_ bytes: UnsafeRawBufferPointer) -> Command? {
        guard bytes.count >= envelopeSize, hasSignature(bytes), bytes[3] == SMQProtocolVersion.current else {
            return nil
        }
        return Command(rawValue: bytes[4])
    }

    private static func parseFragment(_ bytes: UnsafeRawBufferPointer, command: Command, limits: ProtocolLimits)
        throws(ProtocolError) -> FragmentView
    {
        // The smallest fragment message: a 1-byte service and an empty body.
        try requireSize(bytes, atLeast: Fragment.bodyOffset(serviceLength: 1), command: command)
        let tag: UInt64 = bytes.loadBigEndian(at: Fragment.tagOffset)
        let service = try serviceRange(bytes, command: command)
        let headerOffset = service.upperBound
        try requireSize(bytes, atLeast: headerOffset + FragmentHeader.byteCount, command: command)
        let header = FragmentHeader(loadingFrom: bytes, at: headerOffset)
        let bodyLength = bytes.count - headerOffset - FragmentHeader.byteCount
        do {
            try header.validate(bodyLength: bodyLength, isRequest: command.isRequest, limits: limits)
        } catch {
            var error = error
            error.command = command
            error.tag = tag
            throw error
        }
        return FragmentView(bytes: bytes, command: command, tag: tag, serviceRange: service, header: header)
    }

    /// The range of the service name whose length byte is at offset 13 (READY and fragments).
    private static func serviceRange(_ bytes: UnsafeRawBufferPointer, command: Command) throws(ProtocolError)
        -> Range<Int>
    {
        let lengthOffset = Fragment.serviceOffset
        let length = Int(bytes[lengthOffset])
        let range = (lengthOffset + 1)..<(lengthOffset + 1 + length)
        guard length > 0 else { throw ProtocolError(.badServiceName, command: command, value: 0) }
        try requireSize(bytes, atLeast: range.upperBound, command: command)
        guard ServiceName.isValid(UnsafeRawBufferPointer(rebasing: bytes[range])) else {
            throw ProtocolError(.badServiceName, command: command)
        }
        return range
    }

    private static func reason(_ bytes: UnsafeRawBufferPointer, from offset: Int, command: Command)
        throws(ProtocolError) -> ReasonView
    {
        let length = bytes.count - offset
        guard length <= Reason.maxByteCount else {
            throw ProtocolError(
                .reasonTooLong, command: command, value: UInt64(length), limit: UInt64(Reason.maxByteCount))
        }
        return ReasonView(bytes: UnsafeRawBufferPointer(rebasing: bytes[offset...]))
    }

    private static func requireSize(_ bytes: UnsafeRawBufferPointer, atLeast size: Int, command: Command)
        throws(ProtocolError)
    {
        guard bytes.count >= size else {
            throw ProtocolError(.truncated, command: command, value: UInt64(bytes.count), limit: UInt64(size))
        }
    }

    private static func requireSize(_ bytes: UnsafeRawBufferPointer, exactly size: Int, command: Command)
        throws(ProtocolError)
    {
        try requireSize(bytes, atLeast: size, command: command)
        guard bytes.count == size else {
            throw ProtocolError(.trailingBytes, command: command, value: UInt64(bytes.count), limit: UInt64(size))
        }
    }
}
