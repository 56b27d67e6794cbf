/// A validated service name: 1–255 bytes of `[A-Za-z0-9._-]`.
///
/// On the wire it is one length byte followed by the bytes. The owned form is for keys and
/// configuration; a received message exposes a ``ServiceView`` over its own bytes instead.
public struct ServiceName: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// The longest name a length byte can announce.
    public static let maxByteCount = 255

    /// The name (ASCII, so its UTF-8 bytes are the wire bytes).
    public let string: String

    /// Validates a name.
    ///
    /// Labelled so that `ServiceName("literal")` cannot be mistaken for it: that form is the
    /// (trapping) literal initializer.
    ///
    /// - Parameter string: The name.
    /// - Throws: ``ProtocolError`` with ``ProtocolError/Code/badServiceName`` when it is empty,
    ///   longer than 255 bytes, or holds a byte outside `[A-Za-z0-9._-]`.
    public init(validating string: String) throws(ProtocolError) {
        var copy = string
        let valid = copy.withUTF8 { ServiceName.isValid(UnsafeRawBufferPointer($0)) }
        guard valid else { throw ProtocolError(.badServiceName) }
        self.string = copy
    }

    /// A name written in the source; traps when it is not a valid service name.
    ///
    /// - Parameter value: The literal.
    public init(stringLiteral value: String) {
        do {
            try self.init(validating: value)
        } catch {
            preconditionFailure("invalid service name literal \"\(value)\"")
        }
    }

    init(validatedBytes bytes: UnsafeRawBufferPointer) {
        string = String(decoding: bytes, as: UTF8.self)
    }

    /// The number of bytes the name takes after its length byte.
    public var byteCount: Int { string.utf8.count }

    /// Whether `bytes` is a valid service name (1–255 bytes of `[A-Za-z0-9._-]`).
    ///
    /// - Parameter bytes: The candidate name, without its length byte.
    /// - Returns: true when it is valid.
    public static func isValid(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard (1...maxByteCount).contains(bytes.count) else { return false }
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
                continue
            default:
                return false
            }
        }
        return true
    }

    /// Writes the length byte and the name at `offset`.
    ///
    /// - Parameters:
    ///   - buffer: The destination.
    ///   - offset: Where the length byte goes.
    /// - Returns: The offset just past the name.
    @discardableResult
    func write(to buffer: UnsafeMutableRawBufferPointer, at offset: Int) -> Int {
        let count = byteCount
        precondition(offset >= 0 && offset + 1 + count <= buffer.count, "buffer too small for the service")
        buffer[offset] = UInt8(count)
        var copy = string
        copy.withUTF8 { buffer.copyBytes(from: UnsafeRawBufferPointer($0), at: offset + 1) }
        return offset + 1 + count
    }

    public var description: String { string }
}

/// A service name inside a received message: a view of its bytes, already validated.
///
/// Valid only while the message buffer it was parsed from is alive and unchanged.
public struct ServiceView: CustomStringConvertible {
    /// The name's bytes (without the length byte), inside the message buffer.
    public let bytes: UnsafeRawBufferPointer

    init(bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    /// Whether this is the service `name`; compares bytes, allocates nothing.
    ///
    /// - Parameter name: The service to compare with.
    /// - Returns: true when the bytes are equal.
    public func matches(_ name: ServiceName) -> Bool {
        name.string.utf8.elementsEqual(bytes)
    }

    /// An owned copy, e.g. to key a new job or a worker's registration.
    public var name: ServiceName {
        ServiceName(validatedBytes: bytes)
    }

    /// The name as text.
    public var description: String {
        String(decoding: bytes, as: UTF8.self)
    }
}
