/// A SHA-256 digest: 32 bytes held inline, so making, comparing and hashing one never allocates.
///
/// The bytes are kept in wire order (the order SHA-256 produces them); ``description`` is the usual
/// lower-case hex, as `sha256sum` prints it.
public struct Digest: Hashable, Sendable, CustomStringConvertible {
    /// The number of bytes in a digest.
    public static let byteCount = 32

    // Four words in memory order: loading and storing are plain 32-byte copies.
    var storage: (UInt64, UInt64, UInt64, UInt64)

    /// The all-zero digest: a placeholder, never the digest of any input in practice.
    public static let zero = Digest(storage: (0, 0, 0, 0))

    init(storage: (UInt64, UInt64, UInt64, UInt64)) {
        self.storage = storage
    }

    /// Reads a digest from 32 bytes of a buffer.
    ///
    /// - Parameters:
    ///   - buffer: The bytes to read from.
    ///   - offset: Where the 32 bytes start.
    /// - Precondition: `offset + 32 <= buffer.count`.
    public init(loadingFrom buffer: UnsafeRawBufferPointer, at offset: Int = 0) {
        precondition(offset >= 0 && offset + Self.byteCount <= buffer.count, "buffer too small for a digest")
        storage = buffer.loadUnaligned(fromByteOffset: offset, as: (UInt64, UInt64, UInt64, UInt64).self)
    }

    /// Makes a digest from exactly 32 bytes.
    ///
    /// - Parameter bytes: The digest's bytes in wire order.
    /// - Returns: nil when `bytes` does not hold exactly 32 bytes.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == Self.byteCount else { return nil }
        let array = Array(bytes)
        self = array.withUnsafeBytes { Digest(loadingFrom: $0) }
    }

    /// Parses 64 hex digits, as ``description`` prints them.
    ///
    /// - Parameter hex: 64 hex digits, either case.
    /// - Returns: nil when `hex` is not 64 hex digits.
    public init?(hex: some StringProtocol) {
        guard let bytes = parseHex(hex, count: Self.byteCount) else { return nil }
        self.init(bytes: bytes)
    }

    /// Writes the 32 bytes into a buffer.
    ///
    /// - Parameters:
    ///   - buffer: The destination.
    ///   - offset: Where the 32 bytes go.
    /// - Precondition: `offset + 32 <= buffer.count`.
    public func write(to buffer: UnsafeMutableRawBufferPointer, at offset: Int = 0) {
        precondition(offset >= 0 && offset + Self.byteCount <= buffer.count, "buffer too small for a digest")
        buffer.storeBytes(of: storage, toByteOffset: offset, as: (UInt64, UInt64, UInt64, UInt64).self)
    }

    /// Calls `body` with the digest's 32 bytes, without copying them to the heap.
    ///
    /// - Parameter body: Reads the bytes; they are valid only during the call.
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        var copy = storage
        return try Swift.withUnsafeBytes(of: &copy) { (raw) throws(E) -> R in try body(raw) }
    }

    /// The 32 bytes as an array, for tests and cold paths.
    public var bytes: [UInt8] {
        withUnsafeBytes { Array($0) }
    }

    /// Lower-case hex, 64 digits.
    public var description: String {
        withUnsafeBytes { hexString($0) }
    }

    public static func == (lhs: Digest, rhs: Digest) -> Bool {
        lhs.storage.0 == rhs.storage.0 && lhs.storage.1 == rhs.storage.1
            && lhs.storage.2 == rhs.storage.2 && lhs.storage.3 == rhs.storage.3
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(storage.0)
        hasher.combine(storage.1)
        hasher.combine(storage.2)
        hasher.combine(storage.3)
    }
}
