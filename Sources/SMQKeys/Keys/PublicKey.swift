/// A CURVE (Curve25519) public key: 32 bytes, never all zero.
///
/// It is a peer's identity in SecureMQ: the broker's ZAP handler reports it as `User-Id` (its Z85
/// text) and every policy decision is keyed by it.
public struct PublicKey: Hashable, Sendable, CustomStringConvertible {
    /// The 32 key bytes.
    public let bytes: [UInt8]

    /// The size of a CURVE key in bytes.
    public static let byteCount = 32

    /// Wraps 32 key bytes.
    /// - Throws: ``KeyError`` `.badLength` unless there are 32 bytes, `.zeroKey` if all are zero.
    public init(bytes: some Collection<UInt8>) throws(KeyError) {
        let bytes = Array(bytes)
        guard bytes.count == Self.byteCount else {
            throw KeyError(.badLength, "a CURVE key is 32 bytes; got \(bytes.count)")
        }
        guard bytes.contains(where: { $0 != 0 }) else {
            throw KeyError(.zeroKey, "the key is all zeros (invalid Z85 somewhere upstream?)")
        }
        self.bytes = bytes
    }

    /// Parses the 40-character Z85 text of a key.
    /// - Throws: ``KeyError`` `.badLength`, `.badEncoding` or `.zeroKey`.
    public init(z85 text: some StringProtocol) throws(KeyError) {
        guard text.utf8.count == 40 else {
            throw KeyError(.badLength, "a Z85 key is 40 characters; got \(text.utf8.count)")
        }
        let decoded: [UInt8]
        do { decoded = try Z85.decode(text) } catch { throw KeyError(.badEncoding, "invalid Z85 key: \(error.message)") }
        try self.init(bytes: decoded)
    }

    /// The 40-character Z85 text of the key, as certificate files and `User-Id` carry it.
    public var z85: String {
        // 32 bytes is a multiple of 4: encoding cannot fail.
        (try? Z85.encode(bytes)) ?? ""
    }

    /// A short name for logs: the Z85 text of the first 8 bytes (10 characters), the same bytes
    /// that tag the results a worker produced.
    public var fingerprint: String {
        (try? Z85.encode(bytes[0..<8])) ?? ""
    }

    /// The first 8 bytes as a big-endian integer: the tag of a worker's RESULTs in SMQ/1.
    public var tag: UInt64 {
        bytes[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
    }

    public var description: String { z85 }
}
