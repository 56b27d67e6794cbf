/// Encoding of the fragment messages — SUBMIT, WORK, DONE, RESULT — which share one layout (§2.1):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 5 | `SMQ`, version 1, command |
/// | 5 | 8 | tag |
/// | 13 | 1 + L | service |
/// | 14 + L | 80 | fragment header |
/// | 94 + L | length | body |
///
/// Everything before the body is written by ``write(into:command:tag:service:header:)``, so a
/// sender places the body itself straight after it (a client reads a file chunk directly into its
/// outgoing message buffer). The broker forwards without copying by rewriting only the command and
/// the tag of the message it received (``rewriteCommandAndTag(in:command:tag:)``).
public enum Fragment {
    /// Where the 8-byte tag starts.
    public static let tagOffset = 5
    /// Where the service's length byte is.
    public static let serviceOffset = 13
    /// The bytes of a fragment message besides the service name and the body.
    public static let overhead = 14 + FragmentHeader.byteCount

    /// Where the body starts for a service name of `serviceLength` bytes.
    ///
    /// - Parameter serviceLength: The service name's length in bytes (1–255).
    /// - Returns: The offset of the body: `94 + serviceLength`.
    public static func bodyOffset(serviceLength: Int) -> Int {
        overhead + serviceLength
    }

    /// The size of a whole fragment message.
    ///
    /// - Parameters:
    ///   - serviceLength: The service name's length in bytes (1–255).
    ///   - bodyLength: The body's length.
    /// - Returns: `94 + serviceLength + bodyLength`.
    public static func encodedSize(serviceLength: Int, bodyLength: Int) -> Int {
        overhead + serviceLength + bodyLength
    }

    /// Writes everything before the body: envelope, tag, service and header.
    ///
    /// The caller then puts exactly `header.length` body bytes at the returned offset, and sends
    /// `returned offset + header.length` bytes.
    ///
    /// - Parameters:
    ///   - buffer: The message buffer, at least ``encodedSize(serviceLength:bodyLength:)`` bytes
    ///     if the body is to follow in it.
    ///   - command: SUBMIT, WORK, DONE or RESULT.
    ///   - tag: 0 for SUBMIT, the delivery id for WORK and DONE, the worker tag for RESULT.
    ///   - service: The service.
    ///   - header: The fragment header; its `length` must be the body's length.
    /// - Returns: The offset where the body goes.
    /// - Precondition: `command.isFragment`, and the buffer holds everything before the body.
    @discardableResult
    public static func write(
        into buffer: UnsafeMutableRawBufferPointer, command: Command, tag: UInt64, service: ServiceName,
        header: FragmentHeader
    ) -> Int {
        precondition(command.isFragment, "\(command) does not use the fragment layout")
        precondition(buffer.count >= bodyOffset(serviceLength: service.byteCount), "buffer too small for the fragment")
        Message.writeEnvelope(command, to: buffer)
        buffer.storeBigEndian(tag, at: tagOffset)
        let headerOffset = service.write(to: buffer, at: serviceOffset)
        header.write(to: buffer, at: headerOffset)
        return headerOffset + FragmentHeader.byteCount
    }

    /// Turns a received fragment message into the one the broker sends on, in place: SUBMIT into
    /// WORK (tag = delivery id), DONE into RESULT (tag = worker tag). Nothing else changes, so the
    /// same buffer (the received `zmq_msg_t`) is sent on without copying the body.
    ///
    /// - Parameters:
    ///   - buffer: A fragment message that ``Message/parse(_:limits:)`` accepted.
    ///   - command: The new command.
    ///   - tag: The new tag.
    /// - Precondition: `command.isFragment` and the buffer holds at least the envelope and tag.
    public static func rewriteCommandAndTag(in buffer: UnsafeMutableRawBufferPointer, command: Command, tag: UInt64) {
        precondition(command.isFragment, "\(command) does not use the fragment layout")
        precondition(buffer.count >= tagOffset + 8, "buffer too small for a fragment message")
        buffer[4] = command.rawValue
        buffer.storeBigEndian(tag, at: tagOffset)
    }

    /// Encodes a whole fragment message into a new array: for tests and cold paths.
    ///
    /// - Parameters:
    ///   - command: SUBMIT, WORK, DONE or RESULT.
    ///   - tag: The tag.
    ///   - service: The service.
    ///   - header: The header; its `length` should be `body.count` for a valid message.
    ///   - body: The body.
    /// - Returns: The message's bytes.
    public static func encode(
        command: Command, tag: UInt64, service: ServiceName, header: FragmentHeader, body: UnsafeRawBufferPointer
    ) -> [UInt8] {
        let size = encodedSize(serviceLength: service.byteCount, bodyLength: body.count)
        return [UInt8](unsafeUninitializedCapacity: size) { storage, initialized in
            let buffer = UnsafeMutableRawBufferPointer(storage)
            let bodyOffset = write(into: buffer, command: command, tag: tag, service: service, header: header)
            buffer.copyBytes(from: body, at: bodyOffset)
            initialized = size
        }
    }

    /// Encodes a whole fragment message into a new array: for tests and cold paths.
    ///
    /// - Parameters:
    ///   - command: SUBMIT, WORK, DONE or RESULT.
    ///   - tag: The tag.
    ///   - service: The service.
    ///   - header: The header.
    ///   - body: The body.
    /// - Returns: The message's bytes.
    public static func encode(
        command: Command, tag: UInt64, service: ServiceName, header: FragmentHeader, body: [UInt8]
    ) -> [UInt8] {
        body.withUnsafeBytes { encode(command: command, tag: tag, service: service, header: header, body: $0) }
    }

    /// The tag of a worker's RESULTs: the first 8 bytes of its public key, read big-endian so that
    /// writing the tag puts those same bytes on the wire.
    ///
    /// - Parameter publicKey: The worker's 32-byte CURVE public key (at least 8 bytes).
    /// - Returns: The tag.
    public static func workerTag(publicKey: UnsafeRawBufferPointer) -> UInt64 {
        precondition(publicKey.count >= 8, "a worker tag needs 8 bytes of the key")
        return publicKey.loadBigEndian(at: 0)
    }
}

/// A received fragment message (SUBMIT, WORK, DONE or RESULT): offsets into the caller's buffer and
/// the parsed header, never a copy of the body.
///
/// Valid only while the buffer it was parsed from is alive and unchanged; ``serviceRange`` and
/// ``bodyRange`` stay meaningful for the same bytes at another address.
public struct FragmentView {
    /// The whole message.
    public let bytes: UnsafeRawBufferPointer
    /// SUBMIT, WORK, DONE or RESULT.
    public let command: Command
    /// 0 in SUBMIT, the delivery id in WORK and DONE, the worker tag in RESULT.
    public let tag: UInt64
    /// Where the service name's bytes are (after its length byte).
    public let serviceRange: Range<Int>
    /// The fragment header, checked against §2.2.
    public let header: FragmentHeader

    init(bytes: UnsafeRawBufferPointer, command: Command, tag: UInt64, serviceRange: Range<Int>, header: FragmentHeader) {
        self.bytes = bytes
        self.command = command
        self.tag = tag
        self.serviceRange = serviceRange
        self.header = header
    }

    /// Where the body is: from after the header to the end of the message.
    public var bodyRange: Range<Int> {
        (serviceRange.upperBound + FragmentHeader.byteCount)..<bytes.count
    }

    /// The service name.
    public var service: ServiceView {
        ServiceView(bytes: UnsafeRawBufferPointer(rebasing: bytes[serviceRange]))
    }

    /// The body, in the message buffer.
    public var body: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: bytes[bodyRange])
    }

    /// Whether this is a request (SUBMIT, WORK) rather than a result (DONE, RESULT).
    public var isRequest: Bool { command.isRequest }
}
