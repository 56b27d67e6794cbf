/// A ROUTER routing id as a hashable value without a heap allocation for libzmq's own ids
/// (5 bytes: a zero and a 32-bit counter). Ids a peer chose itself (up to 255 bytes) fall back
/// to an array.
public struct RoutingID: Hashable, Sendable, CustomStringConvertible {
    private let packed: UInt64
    private let length: UInt8
    private let long: [UInt8]?

    /// - Parameter bytes: The routing-id frame.
    public init(_ bytes: UnsafeRawBufferPointer) {
        if bytes.count <= 8 {
            var value: UInt64 = 0
            for byte in bytes { value = value << 8 | UInt64(byte) }
            packed = value
            length = UInt8(bytes.count)
            long = nil
        } else {
            packed = 0
            length = UInt8(truncatingIfNeeded: bytes.count)
            long = Array(bytes)
        }
    }

    /// - Parameter bytes: The routing id's bytes.
    public init(_ bytes: [UInt8]) {
        self = bytes.withUnsafeBytes { RoutingID($0) }
    }

    /// The id's bytes, to address the peer.
    public var bytes: [UInt8] {
        if let long { return long }
        return (0..<Int(length)).map { UInt8(truncatingIfNeeded: packed >> (8 * UInt64(Int(length) - 1 - $0))) }
    }

    public var description: String { bytes.map { String($0, radix: 16) }.joined() }
}
