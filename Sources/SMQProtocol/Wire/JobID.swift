/// A job's 16-byte id: random, chosen by the client; the broker scopes it by client key.
///
/// Held inline (two words in wire order), so it is a cheap dictionary key and never allocates.
public struct JobID: Hashable, Sendable, CustomStringConvertible {
    /// The number of bytes in a job id.
    public static let byteCount = 16

    var storage: (UInt64, UInt64)

    /// Makes a job id from 16 bytes.
    ///
    /// - Parameter bytes: The id's bytes in wire order.
    /// - Returns: nil unless `bytes` holds exactly 16 bytes.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == Self.byteCount else { return nil }
        self = Array(bytes).withUnsafeBytes { JobID(loadingFrom: $0) }
    }

    /// Makes a job id whose bytes are `high` then `low`, each big-endian: readable ids for tests.
    ///
    /// - Parameters:
    ///   - high: The first 8 bytes.
    ///   - low: The last 8 bytes.
    public init(high: UInt64, low: UInt64) {
        storage = (high.bigEndian, low.bigEndian)
    }

    /// Reads a job id from 16 bytes of a buffer.
    ///
    /// - Parameters:
    ///   - buffer: The bytes to read from.
    ///   - offset: Where the 16 bytes start.
    /// - Precondition: `offset + 16 <= buffer.count`.
    public init(loadingFrom buffer: UnsafeRawBufferPointer, at offset: Int = 0) {
        precondition(offset >= 0 && offset + Self.byteCount <= buffer.count, "buffer too small for a job id")
        storage = buffer.loadUnaligned(fromByteOffset: offset, as: (UInt64, UInt64).self)
    }

    /// Parses 32 hex digits, as ``description`` prints them.
    ///
    /// - Parameter hex: 32 hex digits, either case.
    /// - Returns: nil when `hex` is not 32 hex digits.
    public init?(hex: some StringProtocol) {
        guard let bytes = parseHex(hex, count: Self.byteCount) else { return nil }
        self.init(bytes: bytes)
    }

    /// A fresh random id from the system's secure generator (`getrandom` on Linux), so ids of
    /// different clients and runs do not collide in practice.
    ///
    /// - Returns: A new job id.
    public static func random() -> JobID {
        var generator = SystemRandomNumberGenerator()
        return JobID(storage: (generator.next(), generator.next()))
    }

    init(storage: (UInt64, UInt64)) {
        self.storage = storage
    }

    /// Writes the 16 bytes into a buffer.
    ///
    /// - Parameters:
    ///   - buffer: The destination.
    ///   - offset: Where the 16 bytes go.
    /// - Precondition: `offset + 16 <= buffer.count`.
    public func write(to buffer: UnsafeMutableRawBufferPointer, at offset: Int = 0) {
        precondition(offset >= 0 && offset + Self.byteCount <= buffer.count, "buffer too small for a job id")
        buffer.storeBytes(of: storage, toByteOffset: offset, as: (UInt64, UInt64).self)
    }

    /// The 16 bytes as an array, for tests and cold paths.
    public var bytes: [UInt8] {
        var copy = storage
        return Swift.withUnsafeBytes(of: &copy) { Array($0) }
    }

    /// Lower-case hex, 32 digits.
    public var description: String {
        var copy = storage
        return Swift.withUnsafeBytes(of: &copy) { hexString($0) }
    }

    public static func == (lhs: JobID, rhs: JobID) -> Bool {
        lhs.storage.0 == rhs.storage.0 && lhs.storage.1 == rhs.storage.1
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(storage.0)
        hasher.combine(storage.1)
    }
}
